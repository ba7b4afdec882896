//! The persisted Raft log of one controller voter (runs on shard 0).
//!
//! One append-only file, `<dir>/raft.wal`, of records
//! `[u32 len][u32 crc32c(kind + payload)][u8 kind][payload]` (big endian; `len` counts the kind
//! byte and the payload). Kinds: 1 = `Entry`, 2 = `HardState`, 3 = `Snapshot`, each as its
//! protobuf bytes. Replay applies the records in order:
//! - an entry whose index is at or below the last kept entry's replaces the tail from that
//!   index (Raft log truncation after a leader change);
//! - the last hard state wins;
//! - a snapshot drops every entry up to its index.
//!
//! A torn or corrupt tail (a crash in the middle of a write, so a bad length or CRC) is cut off
//! at open: nothing after it was ever acknowledged as durable. [`RaftWal::compact`] rewrites
//! the file atomically as snapshot + hard state + later entries.

use std::io;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, Snapshot};

use crate::runtime::{BufferedFile, OpenOptions};
use crate::storage::test_faults::{self, FileOp};

const FILE_NAME: &str = "raft.wal";
const TEMP_NAME: &str = "raft.wal.tmp";

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_SNAPSHOT: u8 = 3;

/// `len` + `crc` before the kind byte.
const HEADER_LEN: usize = 8;
/// A record longer than this is taken as a corrupt length, not a real record.
const MAX_RECORD_LEN: usize = 1 << 30;
/// Reads of the file at open are done in chunks of this size.
const READ_CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("raft wal: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("raft wal: cannot encode a {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: protobuf::ProtobufError,
    },
    #[error("raft wal: a {what} of {len} bytes is over the 1 GiB record limit")]
    TooLarge { what: &'static str, len: usize },
    /// Whole, checksummed records that do not make a Raft log (e.g. a gap between indexes).
    #[error("raft wal {path}: inconsistent log: {reason}")]
    Inconsistent { path: PathBuf, reason: String },
}

/// What [`RaftWal::open`] found on disk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovered {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    /// Contiguous entries, all after the snapshot's index when there is a snapshot.
    pub entries: Vec<Entry>,
}

/// The open log file; appends go at its end.
pub struct RaftWal {
    dir: PathBuf,
    file: BufferedFile,
    len: u64,
    /// Index of the last entry in the log (or of the snapshot when no entry follows it); 0
    /// when the log is empty. Used to refuse appends that would leave a gap.
    last_index: u64,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> WalError {
    let path = path.to_path_buf();
    move |source| WalError::Io { op, path, source }
}

impl RaftWal {
    /// Opens (creating) `<dir>/raft.wal` and replays it. A torn or corrupt tail record is
    /// truncated away (and the truncation made durable), not reported as an error.
    pub async fn open(dir: &Path) -> Result<(RaftWal, Recovered), WalError> {
        std::fs::create_dir_all(dir).map_err(io_err("creating directory", dir))?;
        let path = dir.join(FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .buffered_open(&path)
            .await
            .map_err(|e| io_err("opening", &path)(e))?;
        let bytes = read_all(&file, &path).await?;
        let (recovered, valid) = replay(&bytes, &path)?;
        if valid < bytes.len() {
            tracing::warn!(
                "{}: dropping {} bytes of torn or corrupt tail after offset {valid}",
                path.display(),
                bytes.len() - valid
            );
            file.truncate(valid as u64)
                .await
                .map_err(|e| io_err("truncating", &path)(e))?;
            sync_file(&file, &path).await?;
        }
        let last_index = recovered.entries.last().map_or_else(
            || {
                recovered
                    .snapshot
                    .as_ref()
                    .map_or(0, |s| s.get_metadata().get_index())
            },
            Entry::get_index,
        );
        let wal = RaftWal {
            dir: dir.to_path_buf(),
            file,
            len: valid as u64,
            last_index,
        };
        Ok((wal, recovered))
    }

    /// Appends the entries, then the hard state; durable (fdatasync) when it returns.
    ///
    /// `entries` must be contiguous and start at most one past the last index (an earlier
    /// start replaces the tail from there), else nothing is written and the error is
    /// `Inconsistent`. After an I/O error the file's state is unknown: treat it as fatal for
    /// this voter (reopening recovers the durable prefix).
    pub async fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), WalError> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        let path = self.dir.join(FILE_NAME);
        let buf = persist_bytes(entries, hard_state, self.last_index, &path)?;
        let written = buf.len() as u64;
        if let Err(e) = write_all_at(&self.file, buf, self.len, &path).await {
            // Whatever part of the write landed is garbage at the tail: cut it so a later
            // append is not hidden behind it at replay.
            let _ = self.file.truncate(self.len).await;
            return Err(e);
        }
        sync_file(&self.file, &path).await?;
        self.len += written;
        if let Some(last) = entries.last() {
            self.last_index = last.get_index();
        }
        Ok(())
    }

    /// Replaces the file with: the snapshot, the hard state and `later_entries` (entries after
    /// the snapshot's index; earlier ones are skipped, and the rest must be contiguous from
    /// `index + 1`). Atomic: temp file, fdatasync, rename, fsync of the directory. After an
    /// I/O error, treat the log as unusable for this voter, like [`RaftWal::persist`].
    pub async fn compact(
        &mut self,
        snapshot: &Snapshot,
        hard_state: &HardState,
        later_entries: &[Entry],
    ) -> Result<(), WalError> {
        let (buf, last_index) = compacted_bytes(
            snapshot,
            hard_state,
            later_entries,
            &self.dir.join(FILE_NAME),
        )?;
        let len = buf.len() as u64;

        let tmp_path = self.dir.join(TEMP_NAME);
        let path = self.dir.join(FILE_NAME);
        let mut tmp = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .buffered_open(&tmp_path)
            .await
            .map_err(|e| io_err("creating", &tmp_path)(e))?;
        write_all_at(&tmp, buf, 0, &tmp_path).await?;
        sync_file(&tmp, &tmp_path).await?;
        tmp.rename(&path)
            .await
            .map_err(|e| io_err("renaming to raft.wal", &tmp_path)(e))?;
        sync_dir(&self.dir).await?;

        let old = std::mem::replace(&mut self.file, tmp);
        self.len = len;
        self.last_index = last_index;
        if let Err(e) = old.close().await {
            tracing::warn!("{}: closing the replaced log: {e}", path.display());
        }
        Ok(())
    }

    /// Bytes in the file now.
    pub fn size(&self) -> u64 {
        self.len
    }
}

/// `entries` are consecutive indexes and the first one passes `first_ok`.
/// The records [`RaftWal::persist`] appends after the entry at `last_index`.
fn persist_bytes(
    entries: &[Entry],
    hard_state: Option<&HardState>,
    last_index: u64,
    path: &Path,
) -> Result<Vec<u8>, WalError> {
    check_contiguous(
        entries,
        |first| last_index == 0 || first <= last_index + 1,
        path,
    )?;
    let mut buf = Vec::new();
    for e in entries {
        encode_record(&mut buf, KIND_ENTRY, e, "log entry")?;
    }
    if let Some(hs) = hard_state {
        encode_record(&mut buf, KIND_HARD_STATE, hs, "hard state")?;
    }
    Ok(buf)
}

/// The whole file [`RaftWal::compact`] writes, and the index of its last entry (or of the
/// snapshot when no entry follows it).
fn compacted_bytes(
    snapshot: &Snapshot,
    hard_state: &HardState,
    later_entries: &[Entry],
    path: &Path,
) -> Result<(Vec<u8>, u64), WalError> {
    let snap_index = snapshot.get_metadata().get_index();
    let skip = later_entries
        .iter()
        .take_while(|e| e.get_index() <= snap_index)
        .count();
    let later = &later_entries[skip..];
    check_contiguous(later, |first| first == snap_index + 1, path)?;
    let mut buf = Vec::new();
    encode_record(&mut buf, KIND_SNAPSHOT, snapshot, "snapshot")?;
    encode_record(&mut buf, KIND_HARD_STATE, hard_state, "hard state")?;
    for e in later {
        encode_record(&mut buf, KIND_ENTRY, e, "log entry")?;
    }
    Ok((buf, later.last().map_or(snap_index, Entry::get_index)))
}

/// A WAL file as bytes in memory, written and replayed with [`RaftWal`]'s format and rules:
/// the simulation's disk for a controller voter. Every write is durable when it returns
/// (`RaftWal` fdatasyncs before acknowledging); [`MemWal::tear`] models a crash in the middle
/// of the last write.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub(crate) struct MemWal {
    bytes: Vec<u8>,
    last_index: u64,
}

#[cfg(test)]
impl MemWal {
    pub fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), WalError> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        let buf = persist_bytes(entries, hard_state, self.last_index, Path::new(FILE_NAME))?;
        self.bytes.extend_from_slice(&buf);
        if let Some(last) = entries.last() {
            self.last_index = last.get_index();
        }
        Ok(())
    }

    pub fn compact(
        &mut self,
        snapshot: &Snapshot,
        hard_state: &HardState,
        later_entries: &[Entry],
    ) -> Result<(), WalError> {
        let (buf, last_index) =
            compacted_bytes(snapshot, hard_state, later_entries, Path::new(FILE_NAME))?;
        self.bytes = buf;
        self.last_index = last_index;
        Ok(())
    }

    /// Appends the first `keep` bytes of what `persist(entries, hard_state)` would write:
    /// a write cut short by a crash.
    pub fn tear(&mut self, entries: &[Entry], hard_state: Option<&HardState>, keep: usize) {
        if let Ok(buf) = persist_bytes(entries, hard_state, self.last_index, Path::new(FILE_NAME)) {
            self.bytes.extend_from_slice(&buf[..keep.min(buf.len())]);
        }
    }

    /// What [`RaftWal::open`] recovers from these bytes; like it, cuts a torn tail off.
    pub fn recover(&mut self) -> Result<Recovered, WalError> {
        let (recovered, valid) = replay(&self.bytes, Path::new(FILE_NAME))?;
        self.bytes.truncate(valid);
        self.last_index = recovered
            .entries
            .last()
            .map(Entry::get_index)
            .or_else(|| {
                recovered
                    .snapshot
                    .as_ref()
                    .map(|s| s.get_metadata().get_index())
            })
            .unwrap_or(0);
        Ok(recovered)
    }
}

fn check_contiguous(
    entries: &[Entry],
    first_ok: impl FnOnce(u64) -> bool,
    path: &Path,
) -> Result<(), WalError> {
    let Some(first) = entries.first() else {
        return Ok(());
    };
    let inconsistent = |reason: String| WalError::Inconsistent {
        path: path.to_path_buf(),
        reason,
    };
    if !first_ok(first.get_index()) {
        return Err(inconsistent(format!(
            "appending entry {} would leave a gap",
            first.get_index()
        )));
    }
    for pair in entries.windows(2) {
        if pair[1].get_index() != pair[0].get_index() + 1 {
            return Err(inconsistent(format!(
                "entry {} follows entry {}",
                pair[1].get_index(),
                pair[0].get_index()
            )));
        }
    }
    Ok(())
}

async fn read_all(file: &BufferedFile, path: &Path) -> Result<Vec<u8>, WalError> {
    let size = file
        .file_size()
        .await
        .map_err(|e| io_err("sizing", path)(e))?;
    let mut bytes = Vec::with_capacity(size as usize);
    loop {
        let chunk = file
            .read_at(bytes.len() as u64, READ_CHUNK)
            .await
            .map_err(|e| io_err("reading", path)(e))?;
        if chunk.is_empty() {
            return Ok(bytes);
        }
        bytes.extend_from_slice(&chunk);
    }
}

async fn write_all_at(
    file: &BufferedFile,
    mut buf: Vec<u8>,
    mut pos: u64,
    path: &Path,
) -> Result<(), WalError> {
    test_faults::check(FileOp::Write, path).map_err(io_err("writing", path))?;
    while !buf.is_empty() {
        let n = file
            .write_at(buf.clone(), pos)
            .await
            .map_err(|e| io_err("writing", path)(e))?;
        if n == 0 {
            return Err(io_err("writing", path)(io::ErrorKind::WriteZero.into()));
        }
        buf.drain(..n);
        pos += n as u64;
    }
    Ok(())
}

async fn sync_file(file: &BufferedFile, path: &Path) -> Result<(), WalError> {
    test_faults::check(FileOp::Fdatasync, path).map_err(io_err("syncing", path))?;
    file.fdatasync().await.map_err(io_err("syncing", path))
}

/// Makes a rename inside `dir` durable.
async fn sync_dir(dir: &Path) -> Result<(), WalError> {
    let d = BufferedFile::open(dir)
        .await
        .map_err(|e| io_err("opening directory", dir)(e))?;
    let synced = sync_file(&d, dir).await;
    let _ = d.close().await;
    synced
}

fn encode_record(
    out: &mut Vec<u8>,
    kind: u8,
    msg: &dyn protobuf::Message,
    what: &'static str,
) -> Result<(), WalError> {
    let payload = msg
        .write_to_bytes()
        .map_err(|source| WalError::Encode { what, source })?;
    let len = 1 + payload.len();
    if len > MAX_RECORD_LEN {
        return Err(WalError::TooLarge { what, len });
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[kind]), &payload);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&crc.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&payload);
    Ok(())
}

/// One whole, checksummed record.
enum Record {
    Entry(Entry),
    HardState(HardState),
    Snapshot(Snapshot),
}

/// Parses the record at the start of `bytes`: the record and its total size, or `None` when
/// it is torn, corrupt or undecodable (the end of the valid log).
fn parse_record(bytes: &[u8]) -> Option<(Record, usize)> {
    let header = bytes.get(..HEADER_LEN)?;
    let len = u32::from_be_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(header[4..8].try_into().ok()?);
    if len == 0 || len > MAX_RECORD_LEN {
        return None;
    }
    let body = bytes.get(HEADER_LEN..HEADER_LEN + len)?;
    if crc32c::crc32c(body) != crc {
        return None;
    }
    let (kind, payload) = body.split_first()?;
    let record = match *kind {
        KIND_ENTRY => Record::Entry(Entry::parse_from_bytes(payload).ok()?),
        KIND_HARD_STATE => Record::HardState(HardState::parse_from_bytes(payload).ok()?),
        KIND_SNAPSHOT => Record::Snapshot(Snapshot::parse_from_bytes(payload).ok()?),
        _ => return None,
    };
    Some((record, HEADER_LEN + len))
}

/// Replays the records; returns the recovered state and the length of the valid prefix.
fn replay(bytes: &[u8], path: &Path) -> Result<(Recovered, usize), WalError> {
    let mut rec = Recovered::default();
    let mut pos = 0;
    while let Some((record, size)) = bytes.get(pos..).and_then(parse_record) {
        match record {
            Record::HardState(hs) => rec.hard_state = hs,
            Record::Snapshot(snap) => {
                let index = snap.get_metadata().get_index();
                rec.entries.retain(|e| e.get_index() > index);
                if rec
                    .entries
                    .first()
                    .is_some_and(|e| e.get_index() != index + 1)
                {
                    rec.entries.clear();
                }
                rec.snapshot = Some(snap);
            }
            Record::Entry(entry) => {
                let index = entry.get_index();
                let snap_index = rec.snapshot.as_ref().map(|s| s.get_metadata().get_index());
                // An entry covered by the snapshot is committed, so nothing to keep.
                if snap_index.is_none_or(|s| index > s) {
                    if let Some(first) = rec.entries.first().map(Entry::get_index)
                        && index <= rec.entries.last().map_or(0, Entry::get_index)
                    {
                        // A new leader's entry replaces our tail from `index` on.
                        rec.entries.truncate(index.saturating_sub(first) as usize);
                    }
                    let expected = match (rec.entries.last(), snap_index) {
                        (Some(last), _) => Some(last.get_index() + 1),
                        (None, Some(s)) => Some(s + 1),
                        (None, None) => None,
                    };
                    if let Some(expected) = expected
                        && index != expected
                    {
                        return Err(WalError::Inconsistent {
                            path: path.to_path_buf(),
                            reason: format!(
                                "entry {index} at offset {pos} follows index {}",
                                expected - 1
                            ),
                        });
                    }
                    rec.entries.push(entry);
                }
            }
        }
        pos += size;
    }
    Ok((rec, pos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::block_on;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.set_index(index);
        e.set_term(term);
        e.set_data(format!("data-{index}-{term}").into_bytes().into());
        e
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        let mut hs = HardState::default();
        hs.set_term(term);
        hs.set_vote(vote);
        hs.set_commit(commit);
        hs
    }

    fn snapshot(index: u64, term: u64) -> Snapshot {
        let mut s = Snapshot::default();
        s.set_data(b"metadata image".to_vec().into());
        s.mut_metadata().set_index(index);
        s.mut_metadata().set_term(term);
        s.mut_metadata().mut_conf_state().set_voters(vec![1, 2, 3]);
        s
    }

    fn indexes_terms(entries: &[Entry]) -> Vec<(u64, u64)> {
        entries
            .iter()
            .map(|e| (e.get_index(), e.get_term()))
            .collect()
    }

    #[test]
    fn persists_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        block_on(async move {
            let (mut wal, rec) = RaftWal::open(&path).await.unwrap();
            assert_eq!(rec, Recovered::default());
            assert_eq!(wal.size(), 0);
            let entries: Vec<Entry> = (1..=3).map(|i| entry(i, 1)).collect();
            wal.persist(&entries, Some(&hard_state(1, 2, 0)))
                .await
                .unwrap();
            wal.persist(&[entry(4, 1)], None).await.unwrap();
            wal.persist(&[], Some(&hard_state(1, 2, 3))).await.unwrap();
            let size = wal.size();
            assert_eq!(size, std::fs::metadata(path.join(FILE_NAME)).unwrap().len());
            drop(wal);

            let (wal, rec) = RaftWal::open(&path).await.unwrap();
            assert_eq!(wal.size(), size);
            assert_eq!(rec.hard_state, hard_state(1, 2, 3));
            assert_eq!(rec.snapshot, None);
            let mut expected = entries.clone();
            expected.push(entry(4, 1));
            assert_eq!(rec.entries, expected);
        });
    }

    #[test]
    fn a_new_leaders_entries_replace_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        block_on(async move {
            let (mut wal, _) = RaftWal::open(&path).await.unwrap();
            let first: Vec<Entry> = (1..=5).map(|i| entry(i, 1)).collect();
            wal.persist(&first, Some(&hard_state(1, 1, 3)))
                .await
                .unwrap();
            let second: Vec<Entry> = (4..=6).map(|i| entry(i, 2)).collect();
            wal.persist(&second, Some(&hard_state(2, 2, 3)))
                .await
                .unwrap();
            drop(wal);

            let (_, rec) = RaftWal::open(&path).await.unwrap();
            assert_eq!(
                indexes_terms(&rec.entries),
                vec![(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
            );
            assert_eq!(rec.entries[3], entry(4, 2));
            assert_eq!(rec.hard_state, hard_state(2, 2, 3));
        });
    }

    #[test]
    fn torn_tail_is_cut_and_appending_continues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        block_on(async move {
            let file = path.join(FILE_NAME);
            let (mut wal, _) = RaftWal::open(&path).await.unwrap();
            wal.persist(&[entry(1, 1), entry(2, 1)], Some(&hard_state(1, 1, 1)))
                .await
                .unwrap();
            let good = wal.size();
            wal.persist(&[entry(3, 1)], None).await.unwrap();
            drop(wal);

            // Cut the last record in the middle.
            let cut = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
            cut.set_len(good + 5).unwrap();
            drop(cut);
            let (mut wal, rec) = RaftWal::open(&path).await.unwrap();
            assert_eq!(indexes_terms(&rec.entries), vec![(1, 1), (2, 1)]);
            assert_eq!(rec.hard_state, hard_state(1, 1, 1));
            assert_eq!(wal.size(), good);
            assert_eq!(std::fs::metadata(&file).unwrap().len(), good);

            // Appending continues after the cut.
            wal.persist(&[entry(3, 2)], Some(&hard_state(2, 1, 2)))
                .await
                .unwrap();
            let good = wal.size();
            drop(wal);

            // Garbage after the last whole record: a plausible length with a bad CRC, then
            // random bytes.
            let mut bytes = std::fs::read(&file).unwrap();
            bytes.extend_from_slice(&[0, 0, 0, 9, 1, 2, 3, 4, 1, 0xff, 0xee]);
            std::fs::write(&file, &bytes).unwrap();
            let (mut wal, rec) = RaftWal::open(&path).await.unwrap();
            assert_eq!(indexes_terms(&rec.entries), vec![(1, 1), (2, 1), (3, 2)]);
            assert_eq!(rec.hard_state, hard_state(2, 1, 2));
            assert_eq!(wal.size(), good);
            wal.persist(&[entry(4, 2)], None).await.unwrap();
            drop(wal);

            // A flipped bit in the last record's payload fails its CRC.
            let mut bytes = std::fs::read(&file).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0x40;
            std::fs::write(&file, &bytes).unwrap();
            let (wal, rec) = RaftWal::open(&path).await.unwrap();
            assert_eq!(indexes_terms(&rec.entries), vec![(1, 1), (2, 1), (3, 2)]);
            assert_eq!(wal.size(), good);

            // A huge length is a torn record too, not an allocation.
            drop(wal);
            let mut bytes = std::fs::read(&file).unwrap();
            bytes.extend_from_slice(&[0xff; 12]);
            std::fs::write(&file, &bytes).unwrap();
            let (wal, rec) = RaftWal::open(&path).await.unwrap();
            assert_eq!(rec.entries.len(), 3);
            assert_eq!(wal.size(), good);
        });
    }

    #[test]
    fn compaction_keeps_the_snapshot_and_later_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        block_on(async move {
            let (mut wal, _) = RaftWal::open(&path).await.unwrap();
            let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1)).collect();
            wal.persist(&entries, Some(&hard_state(1, 1, 8)))
                .await
                .unwrap();
            let before = wal.size();
            wal.compact(&snapshot(7, 1), &hard_state(1, 1, 8), &entries[7..])
                .await
                .unwrap();
            assert!(wal.size() < before);
            assert_eq!(
                wal.size(),
                std::fs::metadata(path.join(FILE_NAME)).unwrap().len()
            );
            assert!(!path.join(TEMP_NAME).exists());
            // Appends go to the new file.
            wal.persist(&[entry(11, 2)], Some(&hard_state(2, 3, 10)))
                .await
                .unwrap();
            drop(wal);

            let (wal, rec) = RaftWal::open(&path).await.unwrap();
            assert_eq!(rec.snapshot, Some(snapshot(7, 1)));
            assert_eq!(rec.hard_state, hard_state(2, 3, 10));
            assert_eq!(
                indexes_terms(&rec.entries),
                vec![(8, 1), (9, 1), (10, 1), (11, 2)]
            );
            assert_eq!(
                wal.size(),
                std::fs::metadata(path.join(FILE_NAME)).unwrap().len()
            );

            // Compacting past every entry (e.g. a snapshot received from the leader).
            let mut wal = wal;
            wal.compact(&snapshot(20, 3), &hard_state(3, 0, 20), &[])
                .await
                .unwrap();
            wal.persist(&[entry(21, 3)], None).await.unwrap();
            drop(wal);
            let (_, rec) = RaftWal::open(&path).await.unwrap();
            assert_eq!(rec.snapshot, Some(snapshot(20, 3)));
            assert_eq!(indexes_terms(&rec.entries), vec![(21, 3)]);
        });
    }

    #[test]
    fn appends_that_would_leave_a_gap_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        block_on(async move {
            let (mut wal, _) = RaftWal::open(&path).await.unwrap();
            wal.persist(&[entry(1, 1), entry(2, 1)], None)
                .await
                .unwrap();
            let size = wal.size();
            let gap = wal.persist(&[entry(4, 1)], None).await;
            assert!(matches!(gap, Err(WalError::Inconsistent { .. })));
            let holes = wal.persist(&[entry(3, 1), entry(5, 1)], None).await;
            assert!(matches!(holes, Err(WalError::Inconsistent { .. })));
            assert_eq!(wal.size(), size);
            let bad = wal
                .compact(&snapshot(1, 1), &hard_state(1, 0, 1), &[entry(3, 1)])
                .await;
            assert!(matches!(bad, Err(WalError::Inconsistent { .. })));
            // Entries the snapshot covers are skipped, not an error.
            wal.compact(
                &snapshot(1, 1),
                &hard_state(1, 0, 1),
                &[entry(1, 1), entry(2, 1)],
            )
            .await
            .unwrap();
            wal.persist(&[entry(3, 1)], None).await.unwrap();
            drop(wal);
            let (wal, rec) = RaftWal::open(&path).await.unwrap();
            assert_eq!(indexes_terms(&rec.entries), vec![(2, 1), (3, 1)]);
            // Reopened, the last index is known again.
            let mut wal = wal;
            let gap = wal.persist(&[entry(5, 1)], None).await;
            assert!(matches!(gap, Err(WalError::Inconsistent { .. })));
        });
    }

    #[test]
    fn a_gap_between_whole_records_is_an_error() {
        let path = Path::new("raft.wal");
        let mut bytes = Vec::new();
        encode_record(&mut bytes, KIND_ENTRY, &entry(1, 1), "e").unwrap();
        encode_record(&mut bytes, KIND_ENTRY, &entry(3, 1), "e").unwrap();
        assert!(matches!(
            replay(&bytes, path),
            Err(WalError::Inconsistent { .. })
        ));
    }
}
