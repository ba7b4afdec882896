//! Small per-log state files next to the segments, and the leader epoch cache.
//!
//! - `<dir>/leader-epoch-checkpoint`: the [`EpochCache`] (Kafka's file of the same name,
//!   KIP-101/KIP-279). Rewritten atomically (temporary file, fdatasync, rename, directory
//!   fsync) by the flusher after the data it describes is durable, and by truncation. Rare:
//!   once per leader change. Missing or corrupt: rebuilt at open by scanning every batch
//!   header of the log.
//! - `<dir>/high-watermark`: the last checkpointed high watermark (Kafka's
//!   `replication-offset-checkpoint`, one file per partition here). Written in place; a torn
//!   write fails its CRC and counts as missing (the safe direction: a lower HW).
//! - `<dir>/recovery-point-offset-checkpoint`: the log's *incarnation* (a random 64-bit id)
//!   and a recovery point (every offset below it was fdatasync'ed and must be valid, so
//!   recovery never truncates below it). Written when the log is created (or found without
//!   one) and, durably before any data goes, by every truncation, which draws a new
//!   incarnation: the shard's recovery-point file (`recovery_points`, rewritten every few
//!   seconds) names logs by incarnation, so its entries for a log are trusted only while the
//!   log has not lost data since they were written. Rewritten atomically like the epoch
//!   file; missing, torn or corrupt = no incarnation and recovery point 0 (scan everything,
//!   the conservative answer).
//! - `<dir>/clean-shutdown`: empty marker (Kafka's `.kafka_cleanshutdown`) written after a
//!   clean close, removed before the log's files change again: while present the log needs
//!   no recovery scan.
//!
//! Formats (big endian, zero padded to the O_DIRECT alignment by the writer):
//! epoch file: `magic "CLEP" u32, version u32, count u32, crc32c(entries) u32` then `count`
//! entries `(epoch i32, start offset i64)`; HW file: `magic u32 ("CLHW"), offset i64,
//! crc32c(first 12 bytes) u32`; recovery point file: `magic u32 ("CLRI"), incarnation u64,
//! offset i64, crc32c(first 20 bytes) u32` (the older `"CLRP"` form, an offset alone like
//! the HW file, is read as a recovery point without an incarnation).

use std::path::{Path, PathBuf};

use super::StorageError;
use super::disk::{Disk, OpenMode, read_small_file, write_small_file};

pub(crate) const EPOCH_FILE: &str = "leader-epoch-checkpoint";
pub(crate) const HW_FILE: &str = "high-watermark";
pub(crate) const RECOVERY_POINT_FILE: &str = "recovery-point-offset-checkpoint";
pub(crate) const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";
const EPOCH_MAGIC: u32 = u32::from_be_bytes(*b"CLEP");
const HW_MAGIC: u32 = u32::from_be_bytes(*b"CLHW");
const RECOVERY_POINT_MAGIC: u32 = u32::from_be_bytes(*b"CLRP");
const INCARNATION_MAGIC: u32 = u32::from_be_bytes(*b"CLRI");
const INCARNATION_FILE_LEN: usize = 24;
const VERSION: u32 = 1;
const EPOCH_HEADER_LEN: usize = 16;
const EPOCH_ENTRY_LEN: usize = 12;

/// Kafka's `UNDEFINED_EPOCH` / `UNDEFINED_EPOCH_OFFSET`.
pub const UNDEFINED_EPOCH: i32 = -1;
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;

/// Leader epoch -> first offset of that epoch in this log (Kafka's `LeaderEpochFileCache`).
/// Entries ascend strictly on both fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<(i32, i64)>,
}

impl EpochCache {
    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|&(e, _)| e)
    }

    pub fn start_offset(&self, epoch: i32) -> Option<i64> {
        self.entries
            .iter()
            .find(|&&(e, _)| e == epoch)
            .map(|&(_, o)| o)
    }

    /// Records that a batch of `epoch` starts at `start_offset` (called for every appended
    /// batch, in log order). Returns true if the cache changed: only an epoch above the
    /// latest one, starting after the latest entry, adds an entry. Negative epochs (old
    /// message formats) and lower epochs (never in a well-formed log; also what recovery
    /// replays over a loaded checkpoint) are ignored.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        if epoch < 0 || start_offset < 0 {
            return false;
        }
        if self
            .entries
            .last()
            .is_some_and(|&(e, o)| epoch <= e || start_offset <= o)
        {
            return false;
        }
        self.entries.push((epoch, start_offset));
        true
    }

    /// Kafka's `LeaderEpochFileCache.endOffsetFor`: `(epoch, end offset)` for a requested
    /// epoch, where the end offset is the start offset of the first epoch above the
    /// requested one, or `log_end` when the requested epoch is the latest one. The epoch
    /// returned is the largest cached epoch <= the requested one, or the requested epoch
    /// itself when it is below every cached epoch (history removed by retention: the end
    /// offset is then the first cached epoch's start). None stands for Kafka's
    /// `(UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)` = (-1, -1): requested epoch -1 (or any
    /// negative), empty cache, or an epoch above the latest.
    pub fn end_offset_for(&self, requested: i32, log_end: i64) -> Option<(i32, i64)> {
        if requested < 0 {
            return None;
        }
        if self.latest_epoch() == Some(requested) {
            return Some((requested, log_end));
        }
        let higher = self.entries.iter().find(|&&(e, _)| e > requested)?;
        let floor = self.entries.iter().rev().find(|&&(e, _)| e <= requested);
        Some(match floor {
            Some(&(e, _)) => (e, higher.1),
            None => (requested, higher.1),
        })
    }

    /// Drops entries starting at or after `end` (truncation of the log's end). Returns true
    /// if the cache changed.
    pub fn truncate_from_end(&mut self, end: i64) -> bool {
        let keep = self.entries.partition_point(|&(_, o)| o < end);
        let changed = keep < self.entries.len();
        self.entries.truncate(keep);
        changed
    }

    /// The log now starts at `start` (retention): entries wholly below it go, except the
    /// last one starting at or below `start`, which is moved to `start` (Kafka's
    /// `truncateFromStart`). Returns true if the cache changed.
    pub fn truncate_from_start(&mut self, start: i64) -> bool {
        let below = self.entries.partition_point(|&(_, o)| o <= start);
        if below == 0 {
            return false;
        }
        let (epoch, old) = self.entries[below - 1];
        if below == 1 && old == start {
            return false;
        }
        self.entries.drain(..below);
        self.entries.insert(0, (epoch, start));
        true
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.entries.len() * EPOCH_ENTRY_LEN);
        for &(e, o) in &self.entries {
            body.extend_from_slice(&e.to_be_bytes());
            body.extend_from_slice(&o.to_be_bytes());
        }
        let mut out = Vec::with_capacity(EPOCH_HEADER_LEN + body.len());
        out.extend_from_slice(&EPOCH_MAGIC.to_be_bytes());
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Parses a checkpoint; None if it is damaged or not strictly ascending.
    pub fn decode(buf: &[u8]) -> Option<EpochCache> {
        let word = |i: usize| {
            buf.get(i..i + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
        };
        if word(0)? != EPOCH_MAGIC || word(4)? != VERSION {
            return None;
        }
        let count = word(8)? as usize;
        let len = count.checked_mul(EPOCH_ENTRY_LEN)?;
        let body = buf.get(EPOCH_HEADER_LEN..EPOCH_HEADER_LEN.checked_add(len)?)?;
        if crc32c::crc32c(body) != word(12)? {
            return None;
        }
        let mut cache = EpochCache::default();
        for e in body.chunks_exact(EPOCH_ENTRY_LEN) {
            let epoch = i32::from_be_bytes(e[0..4].try_into().ok()?);
            let start = i64::from_be_bytes(e[4..12].try_into().ok()?);
            if epoch < 0
                || start < 0
                || cache
                    .entries
                    .last()
                    .is_some_and(|&(le, lo)| epoch <= le || start <= lo)
            {
                return None;
            }
            cache.entries.push((epoch, start));
        }
        Some(cache)
    }
}

/// One non-negative offset with its magic and a CRC (HW and recovery point files).
fn encode_offset(magic: u32, offset: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&magic.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn decode_offset(magic: u32, buf: &[u8]) -> Option<i64> {
    let b = buf.get(..16)?;
    if u32::from_be_bytes(b[0..4].try_into().ok()?) != magic
        || u32::from_be_bytes(b[12..16].try_into().ok()?) != crc32c::crc32c(&b[..12])
    {
        return None;
    }
    let offset = i64::from_be_bytes(b[4..12].try_into().ok()?);
    (offset >= 0).then_some(offset)
}

pub(crate) fn encode_hw(hw: i64) -> Vec<u8> {
    encode_offset(HW_MAGIC, hw)
}

pub(crate) fn decode_hw(buf: &[u8]) -> Option<i64> {
    decode_offset(HW_MAGIC, buf)
}

/// Atomic replacement of `<dir>/<name>`: temporary file, fdatasync, rename, directory
/// fsync (unless `sync_dir` is false: a later directory fsync of the caller's makes the
/// rename durable). A crash leaves the old or the new file, never a mix; a torn temporary
/// file is never read. The directory fsync also makes every earlier change of `dir`'s
/// entries durable (new index files, for one).
pub(crate) async fn replace_file(
    disk: &dyn Disk,
    dir: &Path,
    (name, sync_dir): (&str, bool),
    data: &[u8],
) -> Result<(), StorageError> {
    let tmp: PathBuf = dir.join(format!("{name}.tmp"));
    write_small_file(disk, &tmp, data).await?;
    // Rare (leader changes, truncations, rolls, a timer): blocking metadata calls are fine.
    disk.rename(&tmp, &dir.join(name))?;
    if sync_dir {
        disk.sync_dir(dir)?;
    }
    Ok(())
}

pub(crate) async fn read_epoch_checkpoint(disk: &dyn Disk, dir: &Path) -> Option<EpochCache> {
    EpochCache::decode(&read_small_file(disk, &dir.join(EPOCH_FILE)).await?)
}

pub(crate) async fn write_epoch_checkpoint(
    disk: &dyn Disk,
    dir: &Path,
    cache: &EpochCache,
) -> Result<(), StorageError> {
    replace_file(disk, dir, (EPOCH_FILE, true), &cache.encode()).await
}

pub(crate) async fn read_hw_checkpoint(disk: &dyn Disk, dir: &Path) -> Option<i64> {
    decode_hw(&read_small_file(disk, &dir.join(HW_FILE)).await?)
}

pub(crate) async fn write_hw_checkpoint(
    disk: &dyn Disk,
    dir: &Path,
    hw: i64,
) -> Result<(), StorageError> {
    let path = dir.join(HW_FILE);
    let created = !disk.exists(&path);
    write_small_file(disk, &path, &encode_hw(hw)).await?;
    if created {
        // Written in place from now on; only its name needs this, once.
        disk.sync_dir(dir)?;
    }
    Ok(())
}

/// What `<dir>/recovery-point-offset-checkpoint` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecoveryPointFile {
    /// None in the older format: the shard's file is then not consulted for this log.
    pub incarnation: Option<u64>,
    pub offset: i64,
}

fn encode_recovery_point(incarnation: u64, offset: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(INCARNATION_FILE_LEN);
    out.extend_from_slice(&INCARNATION_MAGIC.to_be_bytes());
    out.extend_from_slice(&incarnation.to_be_bytes());
    out.extend_from_slice(&offset.max(0).to_be_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn decode_recovery_point(buf: &[u8]) -> Option<RecoveryPointFile> {
    if let Some(offset) = decode_offset(RECOVERY_POINT_MAGIC, buf) {
        return Some(RecoveryPointFile {
            incarnation: None,
            offset,
        });
    }
    let b = buf.get(..INCARNATION_FILE_LEN)?;
    let word = |i: usize| b[i..i + 8].try_into().ok().map(u64::from_be_bytes);
    if u32::from_be_bytes(b[0..4].try_into().ok()?) != INCARNATION_MAGIC
        || u32::from_be_bytes(b[20..24].try_into().ok()?) != crc32c::crc32c(&b[..20])
    {
        return None;
    }
    let offset = word(12)? as i64;
    (offset >= 0).then_some(RecoveryPointFile {
        incarnation: Some(word(4)?),
        offset,
    })
}

/// The log's recovery point file; None if missing or damaged (a warning then: the open
/// falls back to scanning).
pub(crate) async fn read_recovery_point(disk: &dyn Disk, dir: &Path) -> Option<RecoveryPointFile> {
    let path = dir.join(RECOVERY_POINT_FILE);
    let file = read_small_file(disk, &path).await;
    let decoded = file.as_deref().and_then(decode_recovery_point);
    if file.is_some() && decoded.is_none() {
        tracing::warn!(path = %path.display(), "damaged recovery point checkpoint ignored");
    }
    decoded
}

/// `sync_dir` false: the rename may be lost to a power failure until the caller's next
/// directory fsync. Safe only when losing it loses no promise: the file names a new log
/// (no file means no incarnation, so nothing in the shard's file is trusted for it). A
/// truncation's new incarnation must be durable before data goes.
pub(crate) async fn write_recovery_point(
    disk: &dyn Disk,
    dir: &Path,
    (incarnation, offset): (u64, i64),
    sync_dir: bool,
) -> Result<(), StorageError> {
    let data = encode_recovery_point(incarnation, offset);
    replace_file(disk, dir, (RECOVERY_POINT_FILE, sync_dir), &data).await
}

pub(crate) fn has_clean_shutdown_marker(disk: &dyn Disk, dir: &Path) -> bool {
    disk.exists(&dir.join(CLEAN_SHUTDOWN_FILE))
}

/// After a clean close, once the log's data and the files describing it were fdatasync'ed:
/// everything the log holds is durable and valid. The marker is empty (only its name
/// counts, so its content is never synced); the one directory fsync makes it and the
/// names the close created or renamed durable. If a power failure kept the marker but
/// lost one of those names, the open falls back to what that file's absence means (a
/// CRC scan for missing indexes, a replay for a missing snapshot, an older recovery
/// point): never less checking.
pub(crate) async fn write_clean_shutdown_marker(
    disk: &dyn Disk,
    dir: &Path,
) -> Result<(), StorageError> {
    let marker = disk
        .open(&dir.join(CLEAN_SHUTDOWN_FILE), OpenMode::Replace)
        .await?;
    marker.close().await?;
    disk.sync_dir(dir)?;
    Ok(())
}

/// Before the log's files change again: a crash from then on needs a recovery scan. The
/// caller makes the removal durable (a directory fsync) before the first change.
pub(crate) fn remove_clean_shutdown_marker(
    disk: &dyn Disk,
    dir: &Path,
) -> Result<(), StorageError> {
    match disk.remove_file(&dir.join(CLEAN_SHUTDOWN_FILE)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => Ok(r?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> EpochCache {
        let mut c = EpochCache::default();
        for &(e, o) in entries {
            assert!(c.assign(e, o));
        }
        c
    }

    #[test]
    fn assign_only_moves_forward() {
        let mut c = EpochCache::default();
        assert!(c.assign(0, 0));
        assert!(!c.assign(0, 5));
        assert!(!c.assign(-1, 6));
        assert!(c.assign(2, 7));
        assert!(!c.assign(1, 9)); // backwards: ignored
        assert!(!c.assign(3, 7)); // start offset not increasing: ignored
        assert_eq!(c.entries(), &[(0, 0), (2, 7)]);
        assert_eq!(c.start_offset(2), Some(7));
        assert_eq!(c.start_offset(1), None);
    }

    #[test]
    fn end_offset_for_matches_kafka() {
        let c = cache(&[(1, 10), (2, 20), (5, 30)]);
        assert_eq!(c.end_offset_for(-1, 40), None);
        assert_eq!(c.end_offset_for(0, 40), Some((0, 10))); // below the first epoch
        assert_eq!(c.end_offset_for(1, 40), Some((1, 20)));
        assert_eq!(c.end_offset_for(3, 40), Some((2, 30)));
        assert_eq!(c.end_offset_for(5, 40), Some((5, 40)));
        assert_eq!(c.end_offset_for(6, 40), None);
        assert_eq!(EpochCache::default().end_offset_for(0, 40), None);
    }

    #[test]
    fn truncation() {
        let mut c = cache(&[(1, 10), (2, 20), (5, 30)]);
        assert!(!c.truncate_from_end(31));
        assert!(c.truncate_from_end(30));
        assert_eq!(c.entries(), &[(1, 10), (2, 20)]);
        assert!(!c.truncate_from_start(5));
        assert!(!c.truncate_from_start(10));
        assert!(c.truncate_from_start(25));
        assert_eq!(c.entries(), &[(2, 25)]);
        assert!(c.truncate_from_end(0));
        assert_eq!(c.latest_epoch(), None);
    }

    #[test]
    fn roundtrip_and_corruption() {
        let c = cache(&[(0, 0), (3, 100), (7, 1 << 40)]);
        let mut bytes = c.encode();
        bytes.resize(4096, 0);
        assert_eq!(EpochCache::decode(&bytes), Some(c.clone()));
        let mut bad = bytes.clone();
        bad[EPOCH_HEADER_LEN + 2] ^= 1;
        assert_eq!(EpochCache::decode(&bad), None);
        assert_eq!(EpochCache::decode(&bytes[..20]), None);
        assert_eq!(EpochCache::decode(&[0u8; 512]), None);
        assert_eq!(
            EpochCache::decode(&EpochCache::default().encode()),
            Some(EpochCache::default())
        );

        let mut hw = encode_hw(12345);
        hw.resize(512, 0);
        assert_eq!(decode_hw(&hw), Some(12345));
        hw[5] ^= 1;
        assert_eq!(decode_hw(&hw), None);
        assert_eq!(decode_hw(&[0u8; 512]), None);
    }

    #[test]
    fn recovery_point_file_roundtrip_old_format_and_damage() {
        let mut file = encode_recovery_point(0xdead_beef_0123, 77);
        file.resize(512, 0);
        let expected = RecoveryPointFile {
            incarnation: Some(0xdead_beef_0123),
            offset: 77,
        };
        assert_eq!(decode_recovery_point(&file), Some(expected));
        for i in 0..INCARNATION_FILE_LEN {
            let mut bad = file.clone();
            bad[i] ^= 0x10;
            assert_eq!(decode_recovery_point(&bad), None, "byte {i} flipped");
        }
        assert_eq!(
            decode_recovery_point(&file[..INCARNATION_FILE_LEN - 1]),
            None
        );
        assert_eq!(decode_recovery_point(&[0u8; 512]), None);
        let old = encode_offset(RECOVERY_POINT_MAGIC, 42);
        let read = decode_recovery_point(&old);
        assert_eq!(read.map(|f| (f.incarnation, f.offset)), Some((None, 42)));
    }
}
