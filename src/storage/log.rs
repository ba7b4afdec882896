//! [`PartitionLog`]: the segmented log of one partition replica on one shard.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use futures::future::{Either, select};

use super::producer_state::{ProducerBatch, ProducerStateMap};
use super::recovery;
use super::segment::{BatchFacts, SCAN_WINDOW, Segment, read_batches};
use super::tail_cache::TailCache;
use super::{
    AppendError, AppendInfo, LogConfig, MAX_SEGMENT_BYTES, ReadBatches, StorageError, io_err,
    now_ms,
};
use crate::protocol::record_batch::{
    BATCH_HEADER_LEN, BatchInfo, first_record_at_or_after, patch_batch, scan_batches,
};
use crate::runtime::{DmaFile, spawn_local};

/// Work queued for the flusher, in append order.
enum PendingOp {
    Write(Rc<Segment>, Bytes),
    /// The segment was rolled: after its data is durable, truncate padding, persist indexes.
    Seal(Rc<Segment>),
}

struct Inner {
    config: LogConfig,
    /// Ascending by base offset; the last one is active. Never empty.
    segments: Vec<Rc<Segment>>,
    log_start: i64,
    log_end: i64,
    /// Every offset below is fdatasync'ed: the high watermark of this replica.
    durable_end: i64,
    producers: ProducerStateMap,
    cache: TailCache,
    pending: Vec<PendingOp>,
    pending_end: i64,
    flushing: bool,
    durable_waiters: Vec<(i64, oneshot::Sender<Result<(), String>>)>,
    data_waiters: Vec<oneshot::Sender<()>>,
    idle_waiters: Vec<oneshot::Sender<()>>,
    failed: Option<String>,
    closed: bool,
}

/// The log of one partition. Lives on one shard (`!Send`), shared through `Rc`.
pub struct PartitionLog {
    dir: PathBuf,
    me: Weak<PartitionLog>,
    inner: RefCell<Inner>,
    sync_count: Cell<u64>,
}

impl Inner {
    fn active(&self) -> &Rc<Segment> {
        // Invariant: `segments` is never empty.
        &self.segments[self.segments.len() - 1]
    }

    fn roll(&mut self, dir: &Path, now: i64) {
        let old = self.active().clone();
        self.pending.push(PendingOp::Seal(old));
        self.segments
            .push(Rc::new(Segment::new(dir, self.log_end, now)));
    }

    fn should_roll(&self, len: u64, last_offset: i64, now: i64) -> bool {
        let seg = self.active();
        let m = seg.meta.borrow();
        if m.size == 0 {
            return false;
        }
        let max = self.config.segment_bytes.clamp(1, MAX_SEGMENT_BYTES);
        let segment_ms = i64::try_from(self.config.segment_ms).unwrap_or(i64::MAX);
        m.size + len > max
            || now.saturating_sub(m.created_ms) >= segment_ms
            || last_offset - seg.base_offset > i64::from(u32::MAX)
    }

    fn append_one(&mut self, dir: &Path, bytes: Bytes, base: i64, info: &BatchInfo, now: i64) {
        let last = base + i64::from(info.last_offset_delta);
        let facts = BatchFacts {
            base_offset: base,
            last_offset: last,
            max_timestamp: info.max_timestamp,
            len: bytes.len() as u64,
        };
        if self.should_roll(facts.len, last, now) {
            self.roll(dir, now);
        }
        let seg = self.active().clone();
        {
            let mut m = seg.meta.borrow_mut();
            let pos = m.size;
            m.on_batch(
                seg.base_offset,
                facts,
                pos,
                self.config.index_interval_bytes,
            );
        }
        self.cache
            .push(base, last, info.max_timestamp, bytes.clone());
        self.pending.push(PendingOp::Write(seg, bytes));
        self.log_end = last + 1;
        self.pending_end = last + 1;
    }

    fn wake_data_waiters(&mut self) {
        for w in self.data_waiters.drain(..) {
            let _ = w.send(());
        }
    }

    fn on_flushed(&mut self, end: i64) {
        self.durable_end = self.durable_end.max(end);
        let durable = self.durable_end;
        let (done, waiting) = std::mem::take(&mut self.durable_waiters)
            .into_iter()
            .partition::<Vec<_>, _>(|(e, _)| *e <= durable);
        self.durable_waiters = waiting;
        for (_, tx) in done {
            let _ = tx.send(Ok(()));
        }
        self.wake_data_waiters();
        let budget = self.config.tail_cache_bytes;
        self.cache.evict(budget, durable);
    }

    fn on_failed(&mut self, msg: String) {
        tracing::error!(error = %msg, "log write failed; log is offline");
        for (_, tx) in self.durable_waiters.drain(..) {
            let _ = tx.send(Err(msg.clone()));
        }
        self.failed = Some(msg);
        self.pending.clear();
        self.wake_data_waiters();
    }
}

fn producer_batch(info: &BatchInfo) -> ProducerBatch {
    ProducerBatch {
        // Control batches (transaction markers) carry no sequence.
        producer_id: if info.is_control {
            -1
        } else {
            info.producer_id
        },
        epoch: info.producer_epoch,
        base_sequence: info.base_sequence,
        last_offset_delta: info.last_offset_delta,
    }
}

impl PartitionLog {
    /// Opens (creating if needed) the log in `dir` and recovers it.
    pub async fn open(dir: &Path, config: LogConfig) -> Result<Rc<PartitionLog>, StorageError> {
        // Directory creation and listing are rare metadata operations: blocking is fine.
        std::fs::create_dir_all(dir)?;
        crate::runtime::prepare_dma_dir(dir).await?;
        let mut producers = ProducerStateMap::default();
        let segments = recovery::recover(dir, &config, &mut producers).await?;
        let log_start = segments.first().map_or(0, |s| s.base_offset);
        let log_end = segments.last().map_or(0, |s| s.meta.borrow().next_offset);
        let inner = Inner {
            config,
            segments,
            log_start,
            log_end,
            durable_end: log_end,
            producers,
            cache: TailCache::default(),
            pending: Vec::new(),
            pending_end: log_end,
            flushing: false,
            durable_waiters: Vec::new(),
            data_waiters: Vec::new(),
            idle_waiters: Vec::new(),
            failed: None,
            closed: false,
        };
        Ok(Rc::new_cyclic(|me| PartitionLog {
            dir: dir.to_path_buf(),
            me: me.clone(),
            inner: RefCell::new(inner),
            sync_count: Cell::new(0),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn set_config(&self, config: LogConfig) {
        self.inner.borrow_mut().config = config;
    }

    pub fn config(&self) -> LogConfig {
        self.inner.borrow().config.clone()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.inner.borrow().log_start
    }

    pub fn log_end_offset(&self) -> i64 {
        self.inner.borrow().log_end
    }

    pub fn high_watermark(&self) -> i64 {
        self.inner.borrow().durable_end
    }

    /// Number of fdatasync calls made by the flusher (group-commit observability).
    pub fn sync_count(&self) -> u64 {
        self.sync_count.get()
    }

    /// Number of segments, including the active one.
    pub fn segment_count(&self) -> usize {
        self.inner.borrow().segments.len()
    }

    /// Bytes currently held by the tail cache.
    pub fn tail_cache_bytes(&self) -> usize {
        self.inner.borrow().cache.bytes()
    }

    /// Appends one validated Produce payload (see `validate_batches`): checks idempotent
    /// sequences (all batches or none), assigns offsets, patches `baseOffset` and
    /// `partitionLeaderEpoch` in place and queues the same bytes for the tail cache and the
    /// flusher. Synchronous so appends keep request order.
    pub fn append(
        &self,
        batches: BytesMut,
        infos: &[BatchInfo],
        leader_epoch: i32,
    ) -> Result<AppendInfo, AppendError> {
        let mut inner = self.inner.borrow_mut();
        if inner.closed {
            return Err(AppendError::Closed);
        }
        if let Some(msg) = &inner.failed {
            return Err(AppendError::Offline(msg.clone()));
        }
        if infos.is_empty() {
            return Err(AppendError::InvalidBatch);
        }
        let mut offsets = Vec::with_capacity(infos.len());
        let mut next = inner.log_end;
        for info in infos {
            let end = info.offset_in_buf.checked_add(info.len);
            if end.is_none_or(|e| e > batches.len())
                || info.len < BATCH_HEADER_LEN
                || info.last_offset_delta < 0
            {
                return Err(AppendError::InvalidBatch);
            }
            offsets.push(next);
            next += i64::from(info.last_offset_delta) + 1;
        }
        let pbs: Vec<ProducerBatch> = infos.iter().map(producer_batch).collect();
        let updates = inner.producers.check_append(&pbs, &offsets)?;
        let mut buf = batches;
        for (info, &base) in infos.iter().zip(&offsets) {
            patch_batch(
                &mut buf[info.offset_in_buf..info.offset_in_buf + info.len],
                base,
                leader_epoch,
            );
        }
        let frozen = buf.freeze();
        let now = now_ms();
        for (info, &base) in infos.iter().zip(&offsets) {
            let bytes = frozen.slice(info.offset_in_buf..info.offset_in_buf + info.len);
            inner.append_one(&self.dir, bytes, base, info, now);
        }
        inner.producers.commit(updates);
        let info = AppendInfo {
            base_offset: offsets[0],
            last_offset: next - 1,
            log_start_offset: inner.log_start,
        };
        let start = !inner.flushing;
        inner.flushing = true;
        drop(inner);
        if start {
            self.start_flusher();
        }
        Ok(info)
    }

    fn start_flusher(&self) {
        match self.me.upgrade() {
            Some(me) => {
                // Detached: the task owns an Rc of the log until the queue is empty.
                drop(spawn_local(async move { me.flush_loop().await }).detach());
            }
            None => self.inner.borrow_mut().flushing = false,
        }
    }

    /// The flusher: takes everything pending, writes it (one DMA write per segment touched),
    /// fdatasyncs once, completes waiters; repeats while appends arrived meanwhile.
    async fn flush_loop(self: Rc<Self>) {
        loop {
            let (ops, end) = {
                let mut inner = self.inner.borrow_mut();
                if inner.pending.is_empty() || inner.failed.is_some() {
                    inner.flushing = false;
                    for w in inner.idle_waiters.drain(..) {
                        let _ = w.send(());
                    }
                    return;
                }
                (std::mem::take(&mut inner.pending), inner.pending_end)
            };
            match self.flush_ops(ops).await {
                Ok(()) => self.inner.borrow_mut().on_flushed(end),
                Err(e) => self.inner.borrow_mut().on_failed(e.to_string()),
            }
        }
    }

    async fn flush_ops(&self, ops: Vec<PendingOp>) -> Result<(), StorageError> {
        let mut groups: Vec<(Rc<Segment>, Vec<Bytes>)> = Vec::new();
        let mut seals = Vec::new();
        for op in ops {
            match op {
                PendingOp::Write(seg, bytes) => match groups.last_mut() {
                    Some((s, v)) if Rc::ptr_eq(s, &seg) => v.push(bytes),
                    _ => groups.push((seg, vec![bytes])),
                },
                PendingOp::Seal(seg) => seals.push(seg),
            }
        }
        let mut files: Vec<Rc<DmaFile>> = Vec::new();
        for (seg, data) in &groups {
            files.push(seg.write(data).await?);
        }
        for f in files {
            f.fdatasync().await.map_err(io_err)?;
            self.sync_count.set(self.sync_count.get() + 1);
        }
        for seg in seals {
            seg.seal().await?;
        }
        Ok(())
    }

    /// Resolves once every offset below `end_offset` is on disk (fdatasync'ed).
    pub async fn wait_durable(&self, end_offset: i64) -> Result<(), StorageError> {
        let rx = {
            let mut inner = self.inner.borrow_mut();
            if inner.durable_end >= end_offset {
                return Ok(());
            }
            if let Some(msg) = &inner.failed {
                return Err(StorageError::Offline(msg.clone()));
            }
            if inner.closed && !inner.flushing {
                return Err(StorageError::Closed);
            }
            let (tx, rx) = oneshot::channel();
            inner.durable_waiters.push((end_offset, tx));
            rx
        };
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(StorageError::Offline(msg)),
            Err(_) => Err(StorageError::Closed),
        }
    }

    /// Whole batches from the one containing `offset`, up to `max_bytes` but at least one
    /// batch (KIP-74), none starting at or after `max_offset` (the caller's visibility
    /// bound, usually the high watermark; clamped to the log end). Served from the tail
    /// cache when possible, else read from the segment file.
    pub async fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        max_offset: i64,
    ) -> Result<ReadBatches, StorageError> {
        let (seg, file, pos, limit, max_offset, window) = {
            let inner = self.inner.borrow();
            if offset < inner.log_start || offset > inner.log_end {
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    log_start: inner.log_start,
                    log_end: inner.log_end,
                });
            }
            let max_offset = max_offset.min(inner.log_end);
            if offset >= max_offset {
                return Ok(ReadBatches::default());
            }
            if let Some(r) = inner.cache.read(offset, max_bytes, max_offset) {
                return Ok(r);
            }
            let i = inner.segments.partition_point(|s| s.base_offset <= offset);
            let Some(seg) = i
                .checked_sub(1)
                .and_then(|i| inner.segments.get(i))
                .cloned()
            else {
                return Ok(ReadBatches::default());
            };
            let Some(file) = seg.file() else {
                return Ok(ReadBatches::default());
            };
            let rel = u32::try_from(offset - seg.base_offset).unwrap_or(u32::MAX);
            let pos = u64::from(seg.meta.borrow().offset_index.lookup(rel));
            let limit = seg.writer.borrow().flushed_size;
            // Enough for the index gap plus max_bytes in one read, usually.
            let window = max_bytes
                .saturating_add(inner.config.index_interval_bytes as usize + BATCH_HEADER_LEN)
                .clamp(64 << 10, SCAN_WINDOW);
            (seg, file, pos, limit, max_offset, window)
        };
        let r = read_batches(&file, pos, limit, offset, max_bytes, max_offset, window).await?;
        drop(seg);
        Ok(r)
    }

    /// Resolves when `high_watermark() > offset`, at `deadline`, or when the log closes.
    /// Woken by the flusher, not by polling.
    pub async fn wait_for_data(&self, offset: i64, deadline: Instant) {
        loop {
            let rx = {
                let mut inner = self.inner.borrow_mut();
                if inner.durable_end > offset || inner.closed || inner.failed.is_some() {
                    return;
                }
                inner.data_waiters.retain(|tx| !tx.is_canceled());
                let (tx, rx) = oneshot::channel();
                inner.data_waiters.push(tx);
                rx
            };
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            let timer = Box::pin(crate::runtime::sleep(deadline - now));
            if let Either::Right(_) = select(rx, timer).await {
                return;
            }
        }
    }

    /// ListOffsets by timestamp, as Kafka answers it: (offset, timestamp) of the first record
    /// below the high watermark whose timestamp is >= `ts` (in a LogAppendTime batch every
    /// record has the batch's max timestamp; a compressed batch answers with its base offset
    /// and max timestamp, see [`first_record_at_or_after`]). Kafka's special timestamps (-1
    /// latest, -2 earliest) are the caller's business.
    pub async fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, StorageError> {
        let (mut from, hw) = {
            let inner = self.inner.borrow();
            let seg = inner
                .segments
                .iter()
                .find(|s| s.meta.borrow().max_timestamp >= ts);
            let Some(seg) = seg else { return Ok(None) };
            let rel = seg.meta.borrow().time_index.lookup(ts);
            (seg.base_offset + i64::from(rel), inner.durable_end)
        };
        while from < hw {
            {
                // Only when the cache covers `from`: an older match may sit on disk.
                let inner = self.inner.borrow();
                if inner.cache.start_offset().is_some_and(|s| s <= from) {
                    return Ok(inner.cache.find_timestamp(from, ts, hw));
                }
            }
            let r = self.read(from, 1 << 20, hw).await?;
            if r.is_empty() {
                return Ok(None);
            }
            for chunk in &r.chunks {
                for b in scan_batches(chunk, false) {
                    if b.header.max_timestamp.get() >= ts
                        && let Some(found) = first_record_at_or_after(b.bytes, ts)
                    {
                        return Ok(Some(found));
                    }
                    from = b.header.last_offset() + 1;
                }
            }
        }
        Ok(None)
    }

    /// Rolls the active segment when older than `segment.ms`, then deletes the oldest
    /// sealed, durable segments per `retention.ms` (largest timestamp older than
    /// `now_ms - retention.ms`) and `retention.bytes`; never the active segment. Advances
    /// the log start offset. Returns the number of segments deleted.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize, StorageError> {
        let victims = {
            let mut inner = self.inner.borrow_mut();
            if inner.closed {
                return Err(StorageError::Closed);
            }
            if inner.should_roll(0, inner.log_end, now_ms) && inner.failed.is_none() {
                inner.roll(&self.dir, now_ms);
                if !inner.flushing {
                    inner.flushing = true;
                    drop(inner);
                    self.start_flusher();
                    inner = self.inner.borrow_mut();
                }
            }
            self.select_victims(&mut inner, now_ms)
        };
        for seg in &victims {
            seg.delete_files()?;
        }
        Ok(victims.len())
    }

    fn select_victims(&self, inner: &mut Inner, now_ms: i64) -> Vec<Rc<Segment>> {
        let cfg = inner.config.clone();
        let mut total: u64 = inner.segments.iter().map(|s| s.meta.borrow().size).sum();
        let mut victims = Vec::new();
        while inner.segments.len() > 1 {
            let seg = &inner.segments[0];
            let (size, next, max_ts) = {
                let m = seg.meta.borrow();
                (m.size, m.next_offset, m.max_timestamp)
            };
            if !seg.writer.borrow().sealed || next > inner.durable_end {
                break;
            }
            let by_time = cfg.retention_ms >= 0 && max_ts < now_ms.saturating_sub(cfg.retention_ms);
            let by_size = cfg.retention_bytes >= 0 && total - size >= cfg.retention_bytes as u64;
            if !(by_time || by_size) {
                break;
            }
            total -= size;
            victims.push(inner.segments.remove(0));
        }
        if !victims.is_empty() {
            inner.log_start = inner.segments[0].base_offset;
            let start = inner.log_start;
            inner.cache.drop_below(start);
        }
        victims
    }

    /// Flushes and fdatasyncs everything, truncates the active segment's padding and
    /// persists its indexes. Later appends fail with `AppendError::Closed`.
    pub async fn close(&self) -> Result<(), StorageError> {
        let idle = {
            let mut inner = self.inner.borrow_mut();
            inner.closed = true;
            inner.flushing.then(|| {
                let (tx, rx) = oneshot::channel();
                inner.idle_waiters.push(tx);
                rx
            })
        };
        if let Some(rx) = idle {
            let _ = rx.await;
        }
        let active = {
            let mut inner = self.inner.borrow_mut();
            inner.wake_data_waiters();
            if let Some(msg) = &inner.failed {
                return Err(StorageError::Offline(msg.clone()));
            }
            inner.active().clone()
        };
        active.seal().await
    }

    /// Deletes the partition: closes the log and removes its directory.
    pub async fn remove(self: Rc<Self>) -> Result<(), StorageError> {
        let closed = self.close().await;
        {
            let mut inner = self.inner.borrow_mut();
            inner.cache.clear();
            inner.durable_waiters.clear();
            for seg in &inner.segments {
                seg.file.borrow_mut().take();
            }
        }
        // Rare metadata operation: blocking unlinks are acceptable here.
        std::fs::remove_dir_all(&self.dir)?;
        match closed {
            Err(StorageError::Offline(_)) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
