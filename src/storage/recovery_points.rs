//! The shard's recovery-point checkpoint: Kafka's per-log-directory
//! `recovery-point-offset-checkpoint`, here one file per shard (each shard writes only its
//! own logs', so shards share nothing), `<data dir>/recovery-point-offset-checkpoint.shard<N>`.
//! The owner rewrites it every `log.flush.offset.checkpoint.interval.ms` when a recovery
//! point moved ([`ShardRecoveryPoints::write_if_changed`]), so after a crash a log is
//! CRC-scanned only from where it was a few seconds before, not from its last roll.
//!
//! An entry names a log by its *incarnation* (see [`checkpoint`]), not by its directory: a
//! truncation durably draws a new incarnation before it removes data, and a topic created
//! again under the same name starts a new one, so an entry is trusted only for the very
//! log history it was written for. Within one incarnation, data below a recorded recovery
//! point is never removed (but by retention, from the start), so an entry stays a true
//! promise however old it is: one left in the file of another shard (the shard count
//! changed) or by an earlier run is safe too.
//!
//! Format (big endian): `magic "CLRS" u32, version u32, count u32, crc32c(entries) u32`,
//! then `count` entries `(incarnation u64, recovery point i64)`, sorted by incarnation.
//! Written atomically (temporary file, fdatasync, rename, directory fsync). Missing, short,
//! damaged or over [`MAX_FILE_BYTES`]: ignored with a warning (every log falls back to its
//! own file, i.e. a longer scan), never a failure.
//!
//! [`checkpoint`]: super::checkpoint

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};

use super::checkpoint::replace_file;
use super::disk::{Disk, read_small_file_up_to};
use super::{PartitionLog, StorageError};

const MAGIC: u32 = u32::from_be_bytes(*b"CLRS");
const VERSION: u32 = 1;
const HEADER_LEN: usize = 16;
const ENTRY_LEN: usize = 16;

/// The largest file read: 1M entries, beyond any shard's partition limit
/// (`corelog.max.partitions.per.shard` is at most 1,000,000).
pub const MAX_FILE_BYTES: u64 = (HEADER_LEN + ENTRY_LEN * 1_000_000) as u64;

/// The file's name for `shard`.
pub fn file_name(shard: usize) -> String {
    format!("recovery-point-offset-checkpoint.shard{shard}")
}

fn encode(entries: &[(u64, i64)]) -> Vec<u8> {
    let mut body = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for &(incarnation, offset) in entries {
        body.extend_from_slice(&incarnation.to_be_bytes());
        body.extend_from_slice(&offset.to_be_bytes());
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// None if damaged: wrong magic or version, short, bad CRC, a negative offset.
fn decode(buf: &[u8]) -> Option<HashMap<u64, i64>> {
    let word = |i: usize| {
        buf.get(i..i + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
    };
    if word(0)? != MAGIC || word(4)? != VERSION {
        return None;
    }
    let len = (word(8)? as usize).checked_mul(ENTRY_LEN)?;
    let body = buf.get(HEADER_LEN..HEADER_LEN.checked_add(len)?)?;
    if crc32c::crc32c(body) != word(12)? {
        return None;
    }
    let mut entries = HashMap::with_capacity(body.len() / ENTRY_LEN);
    for e in body.chunks_exact(ENTRY_LEN) {
        let incarnation = u64::from_be_bytes(e[0..8].try_into().ok()?);
        let offset = i64::from_be_bytes(e[8..16].try_into().ok()?);
        if offset < 0 {
            return None;
        }
        entries.insert(incarnation, offset);
    }
    Some(entries)
}

/// One shard's recovery points: what its file held at start, and the logs whose recovery
/// points it writes. Lives on its shard (`!Send`); every log opened with the same
/// [`LogEnv`](super::LogEnv) shares it.
#[derive(Default)]
pub struct ShardRecoveryPoints {
    /// The file (directory, name); None: no shard file (a log alone, in tests).
    file: Option<(PathBuf, String)>,
    /// What the file held, read at the first open (at most [`MAX_FILE_BYTES`] of it).
    loaded: futures::lock::Mutex<Option<HashMap<u64, i64>>>,
    /// The open logs, by directory.
    logs: RefCell<HashMap<PathBuf, Weak<PartitionLog>>>,
    /// Entries of logs that failed to open (their files are kept as they are): written on,
    /// so a later open still refuses the damage below their recovery point.
    unopened: RefCell<HashMap<u64, i64>>,
    /// What the file holds since the last write of this process.
    written: RefCell<Vec<(u64, i64)>>,
    writing: Cell<bool>,
}

impl ShardRecoveryPoints {
    /// The recovery points of `shard`'s logs, in `data_dir`.
    pub fn new(data_dir: &Path, shard: usize) -> Self {
        Self {
            file: Some((data_dir.to_path_buf(), file_name(shard))),
            ..Self::default()
        }
    }

    /// The recovery point the file held for `incarnation` when this process started (read
    /// at the first call).
    pub(crate) async fn get(&self, disk: &dyn Disk, incarnation: u64) -> Option<i64> {
        let (dir, name) = self.file.as_ref()?;
        let mut loaded = self.loaded.lock().await;
        if loaded.is_none() {
            let path = dir.join(name);
            let file = read_small_file_up_to(disk, &path, MAX_FILE_BYTES).await;
            let decoded = file.as_deref().and_then(decode);
            if decoded.is_none() && disk.exists(&path) {
                tracing::warn!(path = %path.display(), "damaged or oversized shard recovery-point checkpoint ignored; logs are scanned from their own recovery points");
            }
            *loaded = Some(decoded.unwrap_or_default());
        }
        loaded.as_ref()?.get(&incarnation).copied()
    }

    /// From now on `log`'s recovery point is written with the others.
    pub(crate) fn register(&self, log: &Rc<PartitionLog>) {
        self.logs
            .borrow_mut()
            .insert(log.dir().to_path_buf(), Rc::downgrade(log));
    }

    /// The log in `dir` was removed.
    pub(crate) fn forget(&self, dir: &Path) {
        self.logs.borrow_mut().remove(dir);
    }

    /// A log of `incarnation` failed to open: its entry stays in the file.
    pub(crate) fn keep_unopened(&self, incarnation: u64, offset: i64) {
        self.unopened.borrow_mut().insert(incarnation, offset);
    }

    /// Every open log's (incarnation, recovery point), with the unopened ones', sorted.
    fn entries(&self) -> Vec<(u64, i64)> {
        let mut logs = self.logs.borrow_mut();
        logs.retain(|_, log| log.strong_count() > 0);
        let mut entries: Vec<(u64, i64)> = logs
            .values()
            .filter_map(Weak::upgrade)
            .map(|log| log.recovery_checkpoint())
            .chain(self.unopened.borrow().iter().map(|(&i, &o)| (i, o)))
            .collect();
        entries.sort_unstable();
        entries
    }

    /// Rewrites the file if a recovery point moved since the last write. Returns whether it
    /// wrote. A call while another one writes does nothing (the owner calls it again at
    /// its next interval).
    pub async fn write_if_changed(&self, disk: &dyn Disk) -> Result<bool, StorageError> {
        let Some((dir, name)) = &self.file else {
            return Ok(false);
        };
        if self.writing.replace(true) {
            return Ok(false);
        }
        let _done = WritingGuard(&self.writing);
        let entries = self.entries();
        if *self.written.borrow() == entries {
            return Ok(false);
        }
        replace_file(disk, dir, (name, true), &encode(&entries)).await?;
        *self.written.borrow_mut() = entries;
        Ok(true)
    }
}

/// Clears the writing flag however the write ends (also if its future is dropped).
struct WritingGuard<'a>(&'a Cell<bool>);

impl Drop for WritingGuard<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_damage() {
        let entries = [(1, 0), (7, 1 << 40), (u64::MAX, 12)];
        let mut bytes = encode(&entries);
        bytes.resize(4096, 0);
        let decoded = decode(&bytes).map(|m| {
            let mut v: Vec<(u64, i64)> = m.into_iter().collect();
            v.sort_unstable();
            v
        });
        assert_eq!(decoded.as_deref(), Some(&entries[..]));
        for i in 0..HEADER_LEN + 3 * ENTRY_LEN {
            let mut bad = bytes.clone();
            bad[i] ^= 0x04;
            assert_eq!(decode(&bad), None, "byte {i} flipped");
        }
        assert_eq!(decode(&bytes[..HEADER_LEN + 2 * ENTRY_LEN]), None, "short");
        assert_eq!(decode(&[0u8; 64]), None);
        assert_eq!(decode(&encode(&[])), Some(HashMap::new()));
        // A count that claims more than the file holds allocates nothing.
        let mut huge = encode(&[]);
        huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&huge), None);
        assert_eq!(decode(&encode(&[(3, -1)])), None, "negative offset");
    }
}
