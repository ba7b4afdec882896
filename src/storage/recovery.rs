//! Opening a log directory after a clean shutdown or a crash.
//!
//! Sealed segments load their persisted indexes when present and consistent, else are
//! rebuilt by a header scan. The tail (last) segment is always scanned with CRC checks and
//! truncated at the first torn, corrupt, incomplete or non-contiguous batch; this also
//! drops the zero padding of O_DIRECT writes. Producer state is rebuilt from every batch
//! (segments whose indexes were loaded get a header scan: no producer snapshots yet). The
//! leader epochs of the batches scanned are reported (every segment's when the epoch
//! checkpoint is missing).
//! The active segment's persisted indexes are deleted: it is written to again, so they
//! would soon be stale, and a stale index that still looked consistent after a crash
//! between a roll and the seal of the old segment would cut that segment short.

use std::path::Path;
use std::rc::Rc;

use super::disk::{Disk, OpenMode};
use super::producer_state::{ProducerBatch, ProducerStateMap};
use super::segment::{BatchFacts, SCAN_WINDOW, Segment, for_each_batch};
use super::{LogConfig, StorageError};
use crate::protocol::record_batch::BatchHeader;

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

/// Recovers every segment of `dir`; returns them ascending (never empty). Epoch starts of
/// the scanned batches go to `epochs`; with `scan_all_epochs`, segments whose indexes are
/// loaded are also scanned for them (header scan, no CRC).
pub(crate) async fn recover(
    env: &RecoveryEnv<'_>,
    dir: &Path,
    producers: &mut ProducerStateMap,
    scan_all_epochs: bool,
    epochs: &mut EpochStarts,
) -> Result<Vec<Rc<Segment>>, StorageError> {
    let disk = env.disk;
    let bases = list_segments(&**disk, dir)?;
    let mut segments: Vec<Rc<Segment>> = Vec::with_capacity(bases.len());
    for (i, &base) in bases.iter().enumerate() {
        let is_tail = i + 1 == bases.len();
        if let Some(prev) = segments.last()
            && prev.meta.borrow().next_offset != base
        {
            // A hole (corrupt sealed segment): everything after it is unusable.
            tracing::warn!(
                ?dir,
                base,
                "log segment does not follow its predecessor; dropping it and later ones"
            );
            for &later in &bases[i..] {
                Segment::new(disk, dir, later, 0).delete_files()?;
            }
            break;
        }
        let seg = Rc::new(Segment::new(disk, dir, base, env.now_ms));
        recover_segment(env, &seg, is_tail, producers, scan_all_epochs, epochs).await?;
        segments.push(seg);
    }
    if segments.is_empty() {
        segments.push(Rc::new(Segment::new(disk, dir, 0, env.now_ms)));
    }
    if let Some(last) = segments.last() {
        // The active segment is writable again: it is no longer sealed.
        last.writer.borrow_mut().sealed = false;
        if last.delete_index_files()? {
            disk.sync_dir(dir)?;
        }
        load_tail_block(last).await?;
    }
    Ok(segments)
}

async fn recover_segment(
    env: &RecoveryEnv<'_>,
    seg: &Segment,
    is_tail: bool,
    producers: &mut ProducerStateMap,
    scan_epochs: bool,
    epochs: &mut EpochStarts,
) -> Result<(), StorageError> {
    let file = env.disk.open(&seg.path("log"), OpenMode::ReadWrite).await?;
    *seg.file.borrow_mut() = Some(file.clone());
    let file_size = file.size().await?;
    if !is_tail && let Some((oi, ti, summary)) = seg.load_indexes(file_size).await {
        if file_size > summary.log_size {
            file.truncate(summary.log_size).await?;
        }
        {
            let mut m = seg.meta.borrow_mut();
            m.size = summary.log_size;
            m.next_offset = summary.next_offset;
            m.max_timestamp = summary.max_timestamp;
            m.offset_index = oi;
            m.time_index = ti;
            let mut w = seg.writer.borrow_mut();
            w.flushed_size = summary.log_size;
            w.sealed = true;
        }
        // A header scan all the same: a producer whose last batches are in this segment
        // must still be known, or its retry of them is appended twice (found by the
        // simulation).
        for_each_batch(
            &*file,
            0,
            summary.log_size,
            false,
            SCAN_WINDOW,
            |_, h, _| {
                replay_producer(producers, h);
                if scan_epochs {
                    note_epoch(epochs, h);
                }
                true
            },
        )
        .await?;
        return Ok(());
    }
    let base = seg.base_offset;
    let mut meta = super::segment::SegmentMeta::new(base, env.now_ms);
    let mut expected = base;
    let end = for_each_batch(&*file, 0, file_size, is_tail, SCAN_WINDOW, |pos, h, _| {
        let in_range = h.last_offset() - base <= i64::from(u32::MAX);
        if h.base_offset() != expected || h.last_offset() < h.base_offset() || !in_range {
            return false;
        }
        let len = h.total_len().unwrap_or(0);
        meta.on_batch(
            base,
            BatchFacts::of(h, len),
            pos,
            env.config.index_interval_bytes,
        );
        replay_producer(producers, h);
        note_epoch(epochs, h);
        expected = h.last_offset() + 1;
        true
    })
    .await?;
    if end < file_size {
        tracing::warn!(path = ?seg.path("log"), end, file_size, "truncating torn or padded log tail");
        file.truncate(end).await?;
        file.fdatasync().await?;
    }
    *seg.meta.borrow_mut() = meta;
    seg.writer.borrow_mut().flushed_size = end;
    if !is_tail {
        seg.persist_indexes().await?;
        seg.writer.borrow_mut().sealed = true;
    }
    Ok(())
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
