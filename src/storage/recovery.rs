//! Opening a log directory after a clean shutdown or a crash (Kafka's `LogLoader`).
//!
//! Two facts say how far the log can be trusted (see [`checkpoint`]): the recovery point
//! (every offset below it was fdatasync'ed, so it must be there and valid; the caller takes
//! it from the shard's file and the log's own, see `recovery_points`) and the clean-shutdown
//! marker next to the segments (everything is). A segment wholly below the
//! recovery point, or any segment after a clean shutdown, loads its persisted indexes
//! after a sanity check (or is rebuilt by a CRC scan when they are missing). The others
//! (after a crash: the active segment) are read as Kafka's recovery reads them, except
//! that their batches below the recovery point are only walked header to header (framing
//! and offsets checked, one small read per large batch, no CRC: that data was fdatasync'ed);
//! from the recovery point on they are scanned with CRC checks and truncated at the first
//! torn, corrupt, incomplete or non-contiguous batch, which also drops the zero padding of
//! O_DIRECT writes. Damage found below the recovery point truncates nothing: the open fails
//! with [`StorageError::Corrupt`] naming the file and offset, before any file was changed
//! (all repairs are planned first and applied once every segment was checked).
//!
//! Producer state starts from the snapshot the caller loaded (`producer_snapshot`) and
//! replays the batches from its offset on: segments below it are not read at all (unless
//! the epoch checkpoint is missing: then every batch header is walked for its epoch). After
//! a crash the active segment's persisted indexes are deleted here: it is written to again,
//! so they would soon be stale (after a clean shutdown the log does it before its first
//! write, see `PartitionLog`).
//!
//! [`checkpoint`]: super::checkpoint

use std::path::Path;
use std::rc::Rc;

use super::disk::{Disk, DiskFile, OpenMode};
use super::index::{OffsetIndex, SegmentSummary, TimeIndex};
use super::producer_state::{ProducerBatch, ProducerStateMap};
use super::segment::{BatchFacts, SCAN_WINDOW, Segment, SegmentMeta, for_each_batch};
use super::{LogConfig, StorageError};
use crate::protocol::record_batch::{BATCH_HEADER_LEN, BatchHeader, MAGIC_V2};

/// (leader epoch, base offset) of scanned batches, recorded when the epoch changes.
pub(crate) type EpochStarts = Vec<(i32, i64)>;

fn note_epoch(epochs: &mut EpochStarts, h: &BatchHeader) {
    let e = h.partition_leader_epoch.get();
    if epochs.last().is_none_or(|&(last, _)| last != e) {
        epochs.push((e, h.base_offset()));
    }
}

fn replay_producer(producers: &mut ProducerStateMap, h: &BatchHeader) {
    if !h.is_control() {
        let b = ProducerBatch {
            producer_id: h.producer_id.get(),
            epoch: h.producer_epoch.get(),
            base_sequence: h.base_sequence.get(),
            last_offset_delta: h.last_offset_delta.get(),
        };
        producers.replay(&b, h.base_offset());
    }
}

/// Base offsets of the `<20 digits>.log` files in `dir`, ascending.
pub(crate) fn list_segments(disk: &dyn Disk, dir: &Path) -> Result<Vec<i64>, StorageError> {
    let mut bases = Vec::new();
    for name in disk.list_dir(dir)? {
        let Some(stem) = name.strip_suffix(".log") else {
            continue;
        };
        if stem.len() == 20
            && stem.bytes().all(|b| b.is_ascii_digit())
            && let Ok(base) = stem.parse::<i64>()
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// What recovery needs besides the directory: the disk, the log's settings and the time
/// (creation time of the segments it opens).
pub(crate) struct RecoveryEnv<'a> {
    pub disk: &'a Rc<dyn Disk>,
    pub config: &'a LogConfig,
    pub now_ms: i64,
}

/// How far the log is trusted, as the files next to it say.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecoveryStart {
    pub recovery_point: i64,
    pub clean_shutdown: bool,
}

impl RecoveryStart {
    /// Offsets below this must be present and valid.
    fn must_hold_below(&self) -> i64 {
        if self.clean_shutdown {
            i64::MAX
        } else {
            self.recovery_point
        }
    }
}

/// What rebuilding the log's state replays into: producer state (restored from a snapshot
/// at `producers_from`: only batches from there on are replayed), and the epoch starts of
/// the scanned batches (of every batch with `all_epochs`).
pub(crate) struct Replay<'a> {
    pub producers: &'a mut ProducerStateMap,
    pub producers_from: i64,
    pub all_epochs: bool,
    pub epochs: &'a mut EpochStarts,
}

impl Replay<'_> {
    fn batch(&mut self, h: &BatchHeader, scanned: bool) {
        if h.base_offset() >= self.producers_from {
            replay_producer(self.producers, h);
        }
        if scanned || self.all_epochs {
            note_epoch(self.epochs, h);
        }
    }

    /// Whether a segment whose indexes were loaded must be walked: it holds batches the
    /// snapshot does not cover, or every epoch is wanted.
    fn needs_walk(&self, next_offset: i64) -> bool {
        self.all_epochs || next_offset > self.producers_from
    }
}

/// What an open of the log found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryInfo {
    /// The clean-shutdown marker was there: no segment needed a recovery scan.
    pub clean_shutdown: bool,
    /// The recovery point trusted: the larger of the log's own file's and the shard
    /// file's entry for the log's incarnation (0 when neither is there and intact).
    pub recovery_point: i64,
    /// Segments scanned with CRC checks (at or past the recovery point, or whose indexes
    /// were missing).
    pub segments_scanned: usize,
    /// Bytes cut past the recovery point (torn or invalid batches, padding).
    pub truncated_bytes: u64,
    /// Segments deleted because an earlier one ended before them (past the recovery point).
    pub segments_dropped: usize,
}

/// A change to the files that recovery decided on; applied only once every segment was
/// checked, so a `Corrupt` open leaves every file as it was.
enum Repair {
    /// The segment, its valid end, the file's size.
    Truncate(Rc<Segment>, u64, u64),
    PersistIndexes(Rc<Segment>),
    Delete(Segment),
}

/// The `Corrupt` error (logged at ERROR) when `offset` is below `limit`, the offset below
/// which data must be present and valid.
fn ensure_not_below(
    start: RecoveryStart,
    limit: i64,
    path: &Path,
    offset: i64,
    what: &str,
) -> Result<(), StorageError> {
    if offset >= limit {
        return Ok(());
    }
    let path = path.display();
    let rp = start.recovery_point;
    let clean = start.clean_shutdown;
    tracing::error!(%path, offset, recovery_point = rp, clean_shutdown = clean,
        "{what} in data that was fdatasync'ed; the partition's files are kept as they are and its log is not opened");
    Err(StorageError::Corrupt(format!(
        "{path}: {what} at offset {offset}, below the recovery point {rp} (clean shutdown: {clean})"
    )))
}

/// Recovers every segment of `dir`; returns them ascending (never empty) and what was done.
pub(crate) async fn recover(
    env: &RecoveryEnv<'_>,
    dir: &Path,
    start: RecoveryStart,
    replay: &mut Replay<'_>,
) -> Result<(Vec<Rc<Segment>>, RecoveryInfo), StorageError> {
    let disk = env.disk;
    let bases = list_segments(&**disk, dir)?;
    let mut info = RecoveryInfo {
        clean_shutdown: start.clean_shutdown,
        recovery_point: start.recovery_point,
        ..RecoveryInfo::default()
    };
    let mut segments: Vec<Rc<Segment>> = Vec::with_capacity(bases.len());
    let mut repairs = Vec::new();
    for (i, &base) in bases.iter().enumerate() {
        if let Some(prev) = segments.last() {
            let end = prev.meta.borrow().next_offset;
            if end != base {
                let what = format!("the log ends before the next segment ({base})");
                ensure_not_below(
                    start,
                    start.must_hold_below(),
                    &prev.path("log"),
                    end,
                    &what,
                )?;
                tracing::warn!(
                    ?dir,
                    base,
                    end,
                    "log segment does not follow its predecessor; dropping it and later ones"
                );
                info.segments_dropped = bases.len() - i;
                let drop = bases[i..].iter().map(|&b| Segment::new(disk, dir, b, 0));
                repairs.extend(drop.map(Repair::Delete));
                break;
            }
        }
        let seg = Rc::new(Segment::new(disk, dir, base, env.now_ms));
        let next_base = bases.get(i + 1).copied();
        recover_segment(env, &seg, start, next_base, replay, &mut info, &mut repairs).await?;
        segments.push(seg);
    }
    // Everything below the recovery point was there when it was checkpointed.
    let rp = start.recovery_point;
    match segments.last() {
        Some(last) => {
            let end = last.meta.borrow().next_offset;
            ensure_not_below(start, rp, &last.path("log"), end, "the log ends")?;
        }
        None => ensure_not_below(start, rp, dir, 0, "no segment holds the log")?,
    }
    apply_repairs(disk, dir, repairs).await?;
    if segments.is_empty() {
        segments.push(Rc::new(Segment::new(disk, dir, 0, env.now_ms)));
    }
    if let Some(last) = segments.last() {
        // The active segment is writable again: it is no longer sealed. After a clean
        // shutdown its files stay as they are until the log's first write.
        last.writer.borrow_mut().sealed = false;
        if !start.clean_shutdown {
            if last.delete_index_files()? {
                disk.sync_dir(dir)?;
            }
            load_tail_block(last).await?;
        }
    }
    Ok((segments, info))
}

async fn apply_repairs(
    disk: &Rc<dyn Disk>,
    dir: &Path,
    repairs: Vec<Repair>,
) -> Result<(), StorageError> {
    let mut deleted = false;
    for repair in repairs {
        match repair {
            Repair::Truncate(seg, end, size) => {
                let Some(file) = seg.file() else { continue };
                // After every crash: the O_DIRECT zero padding of the last block.
                if file.align_up(end) >= size {
                    tracing::debug!(path = ?seg.path("log"), end, "truncating the zero padding after the last batch");
                } else {
                    tracing::warn!(path = ?seg.path("log"), end, size, "truncating torn or invalid data past the recovery point");
                }
                file.truncate(end).await?;
                file.fdatasync().await?;
            }
            Repair::PersistIndexes(seg) => seg.persist_indexes().await?,
            Repair::Delete(seg) => {
                seg.delete_files()?;
                deleted = true;
            }
        }
    }
    if deleted {
        disk.sync_dir(dir)?;
    }
    Ok(())
}

/// Loads (below the recovery point) or scans one segment; `next_base` is the next
/// segment's base offset, None for the last one. File changes go to `repairs`.
async fn recover_segment(
    env: &RecoveryEnv<'_>,
    seg: &Rc<Segment>,
    start: RecoveryStart,
    next_base: Option<i64>,
    replay: &mut Replay<'_>,
    info: &mut RecoveryInfo,
    repairs: &mut Vec<Repair>,
) -> Result<(), StorageError> {
    let file = env.disk.open(&seg.path("log"), OpenMode::ReadWrite).await?;
    *seg.file.borrow_mut() = Some(file.clone());
    let file_size = file.size().await?;
    let below = start.clean_shutdown || next_base.is_some_and(|n| n <= start.recovery_point);
    if below && let Some(indexes) = seg.load_indexes(file_size).await {
        let log_size = indexes.2.log_size;
        load_segment(seg, &*file, indexes, start, replay).await?;
        if file_size > log_size {
            repairs.push(Repair::Truncate(seg.clone(), log_size, file_size));
        }
        return Ok(());
    }
    info.segments_scanned += 1;
    // The recovery point may fall in the active segment; a segment whose indexes are
    // missing is CRC-scanned whole, as their loss is itself a sign of damage.
    let trusted_below = match next_base {
        None if !start.clean_shutdown => start.recovery_point,
        _ => seg.base_offset,
    };
    let (meta, end) = scan_segment(env, seg, &*file, (file_size, trusted_below), replay).await?;
    if end < file_size {
        let what = format!("invalid or incomplete batch at position {end}");
        let limit = start.must_hold_below();
        ensure_not_below(start, limit, &seg.path("log"), meta.next_offset, &what)?;
        info.truncated_bytes += file_size - end;
        repairs.push(Repair::Truncate(seg.clone(), end, file_size));
    }
    *seg.meta.borrow_mut() = meta;
    seg.writer.borrow_mut().flushed_size = end;
    if next_base.is_some() {
        seg.writer.borrow_mut().sealed = true;
        repairs.push(Repair::PersistIndexes(seg.clone()));
    }
    Ok(())
}

/// A segment with sane persisted indexes: their metadata, and, when the producer snapshot
/// does not cover it, a header walk (producer state, epochs) that must agree with them.
async fn load_segment(
    seg: &Segment,
    file: &dyn DiskFile,
    (oi, ti, summary): (OffsetIndex, TimeIndex, SegmentSummary),
    start: RecoveryStart,
    replay: &mut Replay<'_>,
) -> Result<(), StorageError> {
    if replay.needs_walk(summary.next_offset) {
        walk_loaded(seg, file, &oi, summary, start, replay).await?;
    }
    let mut m = seg.meta.borrow_mut();
    m.size = summary.log_size;
    m.next_offset = summary.next_offset;
    m.max_timestamp = summary.max_timestamp;
    m.offset_index = oi;
    m.time_index = ti;
    let mut w = seg.writer.borrow_mut();
    w.flushed_size = summary.log_size;
    w.sealed = true;
    Ok(())
}

/// The header walk of a segment whose indexes were loaded, from the indexed batch at or
/// below the producer snapshot's offset (from the start when every epoch is wanted): a
/// producer whose last batches are in this segment must be known, or its retry of them is
/// appended twice (found by the simulation).
async fn walk_loaded(
    seg: &Segment,
    file: &dyn DiskFile,
    oi: &OffsetIndex,
    summary: SegmentSummary,
    start: RecoveryStart,
    replay: &mut Replay<'_>,
) -> Result<(), StorageError> {
    let base = seg.base_offset;
    let from = if replay.all_epochs {
        0
    } else {
        let rel = (replay.producers_from - base).clamp(0, i64::from(u32::MAX));
        u64::from(oi.lookup(rel as u32))
    };
    let mut expected = (from == 0).then_some(base);
    let end = walk_headers(file, from, summary.log_size, |_, h| {
        if expected.is_some_and(|e| e != h.base_offset()) {
            return false;
        }
        replay.batch(h, false);
        expected = Some(h.last_offset() + 1);
        true
    })
    .await?;
    if end != summary.log_size || expected != Some(summary.next_offset) {
        let what = format!("batches disagree with the index at position {end}");
        let reached = expected.unwrap_or(base);
        let limit = start.must_hold_below();
        ensure_not_below(start, limit, &seg.path("log"), reached, &what)?;
    }
    Ok(())
}

/// Scan of a whole segment file: the metadata of its valid contiguous batches from the
/// start, and the position where they end. Batches wholly below `trusted_below` are walked
/// header to header; the rest are CRC-checked.
async fn scan_segment(
    env: &RecoveryEnv<'_>,
    seg: &Segment,
    file: &dyn DiskFile,
    (file_size, trusted_below): (u64, i64),
    replay: &mut Replay<'_>,
) -> Result<(SegmentMeta, u64), StorageError> {
    let base = seg.base_offset;
    let mut meta = SegmentMeta::new(base, env.now_ms);
    let mut expected = base;
    let mut take = |pos: u64, h: &BatchHeader, len: usize| {
        let in_range = h.last_offset() - base <= i64::from(u32::MAX);
        if h.base_offset() != expected || h.last_offset() < h.base_offset() || !in_range {
            return false;
        }
        let facts = BatchFacts::of(h, len);
        meta.on_batch(base, facts, pos, env.config.index_interval_bytes);
        replay.batch(h, true);
        expected = h.last_offset() + 1;
        true
    };
    let trusted_end = walk_headers(file, 0, file_size, |pos, h| {
        let len = h.total_len().unwrap_or(0);
        h.last_offset() < trusted_below && take(pos, h, len)
    })
    .await?;
    let end = for_each_batch(
        file,
        trusted_end,
        file_size,
        true,
        SCAN_WINDOW,
        |pos, h, b| take(pos, h, b.len()),
    )
    .await?;
    Ok((meta, end))
}

/// The first read of [`walk_headers`], and its read after a batch larger than a read.
const WALK_MIN_READ: usize = 4 << 10;

/// Calls `f(position, header)` for each batch of `file` in `[pos, limit)` whose framing is
/// sound (magic 2, a legal length, ending by `limit`) until `f` returns false or the
/// framing fails; returns the position after the last batch `f` accepted. Reads headers,
/// not bodies: after a batch larger than the read the next read starts at the next
/// header, so large batches cost one small read each; runs of small batches are read in
/// growing windows (up to [`SCAN_WINDOW`]).
async fn walk_headers<F>(
    file: &dyn DiskFile,
    mut pos: u64,
    limit: u64,
    mut f: F,
) -> Result<u64, StorageError>
where
    F: FnMut(u64, &BatchHeader) -> bool,
{
    let mut window = WALK_MIN_READ;
    loop {
        if pos + BATCH_HEADER_LEN as u64 > limit {
            return Ok(pos);
        }
        let want = (window as u64).min(limit - pos) as usize;
        let buf = file.read_at(pos, want).await?;
        let mut at = 0usize;
        while let Some(h) = buf.get(at..).and_then(BatchHeader::parse) {
            let here = pos + at as u64;
            let Some(len) = h.total_len() else {
                return Ok(here);
            };
            if h.magic != MAGIC_V2 || here + len as u64 > limit || !f(here, h) {
                return Ok(here);
            }
            at += len;
        }
        if at == 0 {
            return Ok(pos); // the file ends inside a header
        }
        window = if at > buf.len() {
            WALK_MIN_READ
        } else {
            (window * 4).min(SCAN_WINDOW)
        };
        pos += at as u64;
    }
}

/// Loads the last partial aligned block of the active segment: the next O_DIRECT write
/// rewrites it together with new data.
pub(crate) async fn load_tail_block(seg: &Segment) -> Result<(), StorageError> {
    let Some(file) = seg.file() else {
        return Ok(());
    };
    let end = seg.writer.borrow().flushed_size;
    let start = file.align_down(end);
    let want = (end - start) as usize;
    let block = if want > 0 {
        file.read_at(start, want).await?.to_vec()
    } else {
        Vec::new()
    };
    if block.len() != want {
        return Err(StorageError::Corrupt(format!(
            "{:?}: short read of the tail block ({} of {want} bytes)",
            seg.path("log"),
            block.len()
        )));
    }
    seg.writer.borrow_mut().tail_block = block;
    Ok(())
}
