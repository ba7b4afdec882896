//! Producer-state snapshots: `<dir>/<20-digit offset>.snapshot` holds the idempotent
//! producers' state after every batch below `offset` (Kafka's `ProducerStateManager`
//! snapshot files). Written when a segment is rolled (after its data is fdatasync'ed) and at
//! a clean close; an open loads the newest usable one and replays only the batches from its
//! offset on, instead of reading every segment's batch headers.
//!
//! Trust: a snapshot is input from disk like any other. A damaged, truncated or implausible
//! one (magic, version, CRC, offset, counts, offsets) is ignored, and an older one or a
//! replay of the whole log is used instead. A snapshot describes the log below its offset:
//! a truncation below that offset deletes it (durably, before new data is written);
//! retention leaves it (its producers are still the log's); an open ignores snapshots below
//! the log start or past the data it may trust. The two newest are kept.
//!
//! Durability: the file is fdatasync'ed, its directory entry is not: a lost snapshot only
//! costs a longer replay, and the log's next directory fsync (the recovery-point checkpoint
//! after a roll, the clean-shutdown marker) makes it durable.
//!
//! Format (big endian): `magic "CLPS" u32, version u32, offset i64, count u32,
//! crc32c(body) u32`, then `count` producers `(id i64, epoch i16, n u8)`, each followed by
//! its `n` (1 to `MAX_CACHED_BATCHES`) batches `(first_seq i32, last_seq i32, base_offset
//! i64, last_offset i64)`, ascending.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use super::StorageError;
use super::disk::{Disk, OpenMode, write_small_file};
use super::producer_state::{BatchMeta, MAX_CACHED_BATCHES, ProducerEntry, ProducerStateMap};

const MAGIC: u32 = u32::from_be_bytes(*b"CLPS");
const VERSION: u32 = 1;
const HEADER_LEN: usize = 24;
const EXT: &str = "snapshot";
/// Larger snapshots (about 500,000 producers) are neither written nor read: the state is
/// then rebuilt from the log, and a damaged size field never makes an open allocate more.
const MAX_SNAPSHOT_BYTES: u64 = 64 << 20;
/// Snapshots kept: the newest may be past the recovery point after a crash, the one
/// before it is not (a roll checkpoints the recovery point right after its snapshot).
const KEPT: usize = 2;

fn path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{offset:020}.{EXT}"))
}

/// Offsets of the snapshot files of `dir`, ascending.
pub(crate) fn list(disk: &dyn Disk, dir: &Path) -> Result<Vec<i64>, StorageError> {
    let mut offsets: Vec<i64> = disk
        .list_dir(dir)?
        .iter()
        .filter_map(|name| name.strip_suffix(".snapshot"))
        .filter(|stem| stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|stem| stem.parse().ok())
        .collect();
    offsets.sort_unstable();
    Ok(offsets)
}

pub(crate) fn encode(producers: &ProducerStateMap, offset: i64) -> Vec<u8> {
    let mut ids: Vec<(i64, &ProducerEntry)> = producers.iter().collect();
    ids.sort_unstable_by_key(|&(id, _)| id);
    let mut body = Vec::new();
    for (id, entry) in ids {
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(&entry.epoch.to_be_bytes());
        body.push(entry.batches.len() as u8);
        for b in &entry.batches {
            body.extend_from_slice(&b.first_seq.to_be_bytes());
            body.extend_from_slice(&b.last_seq.to_be_bytes());
            body.extend_from_slice(&b.base_offset.to_be_bytes());
            body.extend_from_slice(&b.last_offset.to_be_bytes());
        }
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&(producers.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads big-endian fields off the front of a buffer; None once it runs out.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn i16(&mut self) -> Option<i16> {
        self.take().map(i16::from_be_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take().map(i32::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_be_bytes)
    }
}

/// The state a snapshot file named for `offset` holds; None if anything in it is wrong.
/// Bytes after the body (the writer's zero padding) are ignored.
pub(crate) fn decode(buf: &[u8], offset: i64) -> Option<ProducerStateMap> {
    let mut header = Fields(buf.get(..HEADER_LEN)?);
    if header.u32()? != MAGIC || header.u32()? != VERSION || header.i64()? != offset {
        return None;
    }
    let count = header.u32()?;
    let crc = header.u32()?;
    let mut body = Fields(&buf[HEADER_LEN..]);
    let start = body.0;
    let mut producers = ProducerStateMap::default();
    for _ in 0..count {
        let (id, entry) = decode_producer(&mut body, offset)?;
        if id < 0 || producers.get(id).is_some() {
            return None;
        }
        producers.restore(id, entry);
    }
    let used = start.len() - body.0.len();
    (crc32c::crc32c(&start[..used]) == crc).then_some(producers)
}

fn decode_producer(f: &mut Fields<'_>, offset: i64) -> Option<(i64, ProducerEntry)> {
    let id = f.i64()?;
    let epoch = f.i16()?;
    let n = usize::from(f.u8()?);
    if n == 0 || n > MAX_CACHED_BATCHES {
        return None;
    }
    let mut batches = VecDeque::with_capacity(n);
    for _ in 0..n {
        let b = BatchMeta {
            first_seq: f.i32()?,
            last_seq: f.i32()?,
            base_offset: f.i64()?,
            last_offset: f.i64()?,
        };
        let after_previous = batches
            .back()
            .is_none_or(|p: &BatchMeta| b.base_offset > p.last_offset);
        if b.base_offset < 0 || b.last_offset < b.base_offset || b.last_offset >= offset {
            return None;
        }
        if !after_previous {
            return None;
        }
        batches.push_back(b);
    }
    Some((id, ProducerEntry { epoch, batches }))
}

/// Writes the snapshot of `producers` at `offset` and deletes all but the newest ones.
/// Skipped (with the older snapshots kept) past [`MAX_SNAPSHOT_BYTES`].
pub(crate) async fn write(
    disk: &dyn Disk,
    dir: &Path,
    data: &[u8],
    offset: i64,
) -> Result<(), StorageError> {
    if data.len() as u64 > MAX_SNAPSHOT_BYTES {
        tracing::info!(dir = %dir.display(), bytes = data.len(), "producer state too large for a snapshot; recovery will replay the log");
        return Ok(());
    }
    write_small_file(disk, &path(dir, offset), data).await?;
    let offsets = list(disk, dir)?;
    // Losing these unlinks to a crash is harmless: an older snapshot stays true.
    for &old in offsets.iter().rev().skip(KEPT) {
        remove(disk, dir, old)?;
    }
    Ok(())
}

fn remove(disk: &dyn Disk, dir: &Path, offset: i64) -> Result<(), StorageError> {
    match disk.remove_file(&path(dir, offset)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Deletes the snapshots past `end` (a truncation to `end`). Returns whether one was
/// deleted: the caller makes the directory durable before the log is written again, or a
/// crash could bring back a snapshot of data that no longer exists.
pub(crate) fn delete_after(disk: &dyn Disk, dir: &Path, end: i64) -> Result<bool, StorageError> {
    let after: Vec<i64> = list(disk, dir)?.into_iter().filter(|&o| o > end).collect();
    for &o in &after {
        remove(disk, dir, o)?;
    }
    Ok(!after.is_empty())
}

/// The newest snapshot at or below `highest` that reads back whole, with its offset; the
/// damaged ones are skipped (logged).
pub(crate) async fn load_newest(
    disk: &dyn Disk,
    dir: &Path,
    highest: i64,
) -> Result<Option<(i64, ProducerStateMap)>, StorageError> {
    for offset in list(disk, dir)?.into_iter().rev() {
        if offset > highest {
            continue;
        }
        match read_capped(disk, &path(dir, offset))
            .await
            .and_then(|b| decode(&b, offset))
        {
            Some(state) => return Ok(Some((offset, state))),
            None => {
                tracing::warn!(dir = %dir.display(), offset, "damaged producer-state snapshot ignored; replaying the log instead")
            }
        }
    }
    Ok(None)
}

async fn read_capped(disk: &dyn Disk, path: &Path) -> Option<Vec<u8>> {
    let file = disk.open(path, OpenMode::ReadOnly).await.ok()?;
    let size = file.size().await.ok()?;
    let data = if size <= MAX_SNAPSHOT_BYTES {
        file.read_at(0, size as usize)
            .await
            .ok()
            .map(|b| b.to_vec())
    } else {
        None
    };
    let _ = file.close().await;
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::producer_state::ProducerBatch;

    fn state() -> ProducerStateMap {
        let mut m = ProducerStateMap::default();
        for (pid, base) in [(7, 0), (7, 3), (9, 5), (7, 6)] {
            let b = ProducerBatch {
                producer_id: pid,
                epoch: 2,
                base_sequence: base as i32,
                last_offset_delta: 2,
            };
            m.replay(&b, base);
        }
        m
    }

    fn entries(m: &ProducerStateMap) -> Vec<(i64, ProducerEntry)> {
        let mut v: Vec<_> = m.iter().map(|(id, e)| (id, e.clone())).collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    #[test]
    fn roundtrip_with_padding() {
        let m = state();
        let mut bytes = encode(&m, 9);
        bytes.resize(4096, 0);
        let back = decode(&bytes, 9).expect("decodes");
        assert_eq!(entries(&back), entries(&m));
        let empty = encode(&ProducerStateMap::default(), 0);
        assert!(decode(&empty, 0).expect("empty decodes").is_empty());
    }

    #[test]
    fn every_damage_is_refused() {
        let bytes = encode(&state(), 9);
        assert!(decode(&bytes, 10).is_none(), "named for another offset");
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], 9).is_none(), "truncated at {cut}");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad, 9).is_none(), "byte {i} flipped");
        }
        // A batch at or past the snapshot's own offset is impossible.
        assert!(decode(&encode(&state(), 8), 8).is_none());
        // A huge claimed count allocates nothing and fails.
        let mut big = bytes.clone();
        big[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&big, 9).is_none());
    }
}
