//! [`PartitionLog`]: the segmented log of one partition replica on one shard.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{Either, select};

use super::checkpoint::{self, EpochCache};
use super::disk::{Disk, DiskFile};
use super::env::LogEnv;
use super::producer_snapshot;
use super::producer_state::{ProducerBatch, ProducerStateMap};
use super::records::{BatchBytes, Records};
use super::recovery::{self, EpochStarts, RecoveryEnv, RecoveryInfo, RecoveryStart, Replay};
use super::recovery_points::ShardRecoveryPoints;
use super::segment::{BatchFacts, SCAN_WINDOW, Segment, read_batches};
use super::state::{LogState, Offsets, Waiters};
use super::tail_cache::{PartitionTailCache, ShardTailCache};
use super::{
    AppendError, AppendInfo, LogConfig, MAX_SEGMENT_BYTES, ReadBatches, ReplicaAppendError,
    StorageError,
};
use crate::protocol::record_batch::{
    BATCH_HEADER_LEN, BatchHeader, BatchInfo, first_record_at_or_after, scan_batches,
};

/// What one flush round does: writes `ops` (the log is then written up to `end`),
/// acknowledges on write or after the sync, syncs or not.
struct FlushRound {
    ops: Vec<PendingOp>,
    end: i64,
    /// The epoch cache to checkpoint after the data, if it changed.
    epochs: Option<EpochCache>,
    acknowledge_written: bool,
    sync: bool,
    /// Produce batches among `ops` (counted once acknowledged).
    batches: u64,
    /// A segment was rolled: the producer-state snapshot at `end`, written once synced.
    snapshot: Option<Vec<u8>>,
}

/// Work queued for the flusher, in append order.
enum PendingOp {
    Write(Rc<Segment>, Bytes),
    /// The segment was rolled: after its data is durable, truncate padding, persist indexes.
    Seal(Rc<Segment>),
}

/// How often, at most, the flusher rewrites `<dir>/high-watermark` of a replicated log
/// whose high watermark moved (Kafka: `replica.high.watermark.checkpoint.interval.ms`).
pub const HW_CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

struct Inner {
    config: LogConfig,
    /// Where new segments are created.
    disk: Rc<dyn Disk>,
    /// Ascending by base offset; the last one is active. Never empty.
    segments: Vec<Rc<Segment>>,
    offsets: Offsets,
    state: LogState,
    /// Single-replica mode: every flush moves HW to the durable end.
    hw_follows_durable: bool,
    /// Nothing happened since open (no append, HW change or truncation): switching to
    /// replicated mode starts from the checkpointed HW.
    fresh: bool,
    /// `<dir>/high-watermark` as read at open.
    checkpoint_hw: Option<i64>,
    hw_checkpointed: i64,
    hw_checkpoint_at: Instant,
    /// When the last fdatasync of the flusher (or the open) was: `flush.ms` counts from it.
    last_sync_at: Instant,
    /// The owner sleeps until a sync may be due (see `run_flusher`); one timer at a time.
    sync_timer_armed: bool,
    /// Batches appended by produce requests since the flusher last took the queue.
    produced_batches: u64,
    /// This log history's id in `<dir>/recovery-point-offset-checkpoint` (new at every
    /// truncation): the shard's recovery-point file records `synced_end` under it.
    incarnation: u64,
    /// What the open found.
    recovery: RecoveryInfo,
    /// Opened after a clean shutdown and not written since: the files are as the close
    /// left them (marker, this active segment's indexes) until the first change.
    clean_files: Option<Rc<Segment>>,
    epochs: EpochCache,
    /// The epoch cache changed; the flusher rewrites its checkpoint after the data.
    epochs_dirty: bool,
    producers: ProducerStateMap,
    cache: PartitionTailCache,
    pending: Vec<PendingOp>,
    waiters: Waiters,
}

/// The log of one partition. Lives on one shard (`!Send`), shared through `Rc`.
pub struct PartitionLog {
    dir: PathBuf,
    env: LogEnv,
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
        self.segments.push(Rc::new(Segment::new(
            &self.disk,
            dir,
            self.offsets.log_end(),
            now,
        )));
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

    fn append_one(&mut self, dir: &Path, batch: BatchBytes, base: i64, info: &BatchInfo, now: i64) {
        let last = base + i64::from(info.last_offset_delta);
        let facts = BatchFacts {
            base_offset: base,
            last_offset: last,
            max_timestamp: info.max_timestamp,
            len: batch.len() as u64,
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
        for piece in batch.pieces() {
            self.pending
                .push(PendingOp::Write(seg.clone(), piece.clone()));
        }
        self.cache.push(base, last, info.max_timestamp, batch);
        self.offsets.appended(last + 1);
        self.waiters.appended();
    }

    /// The flush policy acknowledges batches once written, before fdatasync
    /// (`flush.messages` > 1).
    fn acks_before_sync(&self) -> bool {
        self.config.flush_messages > 1
    }

    /// Whether a flush that leaves the log written up to `end` must fdatasync: always
    /// under the default policy, else once `flush.messages` offsets are unsynced or
    /// `flush.ms` passed since the last sync (Kafka's `unflushedMessages` and
    /// `timeSinceLastFlush`).
    fn sync_due(&self, end: i64, now: Instant) -> bool {
        let unsynced = u64::try_from(end - self.offsets.synced_end()).unwrap_or(0);
        !self.acks_before_sync()
            || unsynced >= self.config.flush_messages
            || now.saturating_duration_since(self.last_sync_at)
                >= Duration::from_millis(self.config.flush_ms)
    }

    /// Work for the flusher: pending writes, or written data whose sync is due.
    fn flush_due(&self, now: Instant) -> bool {
        let written = self.offsets.written_end();
        !self.pending.is_empty()
            || (written > self.offsets.synced_end() && self.sync_due(written, now))
    }

    /// Takes the queue for one flush round.
    fn next_round(&mut self, now: Instant) -> FlushRound {
        let ops = std::mem::take(&mut self.pending);
        let end = self.offsets.pending_end();
        // A rolled segment is synced before it is sealed (Kafka flushes on roll too).
        let rolled = ops.iter().any(|op| matches!(op, PendingOp::Seal(_)));
        FlushRound {
            ops,
            end,
            epochs: std::mem::take(&mut self.epochs_dirty).then(|| self.epochs.clone()),
            acknowledge_written: self.acks_before_sync(),
            sync: rolled || self.sync_due(end, now),
            batches: std::mem::take(&mut self.produced_batches),
            // The producer state covers every batch appended so far, i.e. below `end`.
            snapshot: rolled.then(|| producer_snapshot::encode(&self.producers, end)),
        }
    }

    /// A sync timer for the owner when written data waits for `flush.ms`, unless one is
    /// armed (or there is nothing to sync, or the log closed or failed).
    fn arm_sync_timer(&mut self, at: Option<Instant>) -> Option<Instant> {
        let unsynced = self.offsets.written_end() > self.offsets.synced_end();
        let live = !self.state.is_closed() && self.state.failure().is_none();
        if self.sync_timer_armed || !unsynced || !live || !self.acks_before_sync() {
            return None;
        }
        // Kafka's Long.MAX_VALUE: no sync by time (an instant that far may still exist).
        if self.config.flush_ms >= i64::MAX as u64 {
            return None;
        }
        let at = at.or_else(|| {
            self.last_sync_at
                .checked_add(Duration::from_millis(self.config.flush_ms))
        })?;
        self.sync_timer_armed = true;
        Some(at)
    }

    /// Wakes who waits for the acknowledged end when it moved past `before`.
    fn on_ack_moved(&mut self, before: i64, hw_moved: bool) {
        if hw_moved {
            self.waiters.hw_moved();
        }
        let ack = self.offsets.ack_end();
        if ack > before {
            self.waiters.durable_moved(ack);
        }
    }

    /// The data below `end` is in its segment files: readable from them (the tail cache may
    /// let it go) and, when `acknowledge`, acknowledged.
    fn on_written(&mut self, end: i64, acknowledge: bool) {
        let before = self.offsets.ack_end();
        let hw_moved = self
            .offsets
            .written(end, acknowledge, self.hw_follows_durable);
        self.on_ack_moved(before, hw_moved);
        let written = self.offsets.written_end();
        self.cache.on_durable(written, self.config.tail_cache_bytes);
    }

    /// The data below `end` is fdatasync'ed: the recovery point moves, and it is
    /// acknowledged.
    fn on_synced(&mut self, end: i64, now: Instant) {
        let before = self.offsets.ack_end();
        let hw_moved = self.offsets.synced(end, self.hw_follows_durable);
        self.on_ack_moved(before, hw_moved);
        self.last_sync_at = now;
    }

    fn on_failed(&mut self, msg: String) {
        tracing::error!(error = %msg, "log write failed; log is offline");
        self.waiters.fail_durable_offsets(&msg);
        self.state.fail(msg);
        self.pending.clear();
        self.waiters.wake_positions();
        self.waiters.failed_or_closed();
    }

    fn out_of_range(&self, offset: i64) -> StorageError {
        StorageError::OffsetOutOfRange {
            offset,
            log_start: self.offsets.log_start(),
            log_end: self.offsets.log_end(),
        }
    }

    /// Lowers every end-of-log position to `end` after a truncation.
    fn truncate_offsets(&mut self, end: i64) {
        self.offsets.truncate_to(end);
        self.fresh = false;
        self.waiters.forget_beyond(end);
        self.waiters.wake_positions();
    }
}
/// Recovers the segments and the producer state, from the newest snapshot the log may
/// trust (at or below the recovery point after a crash), or from scratch when that
/// snapshot claims more than the recovered log holds (files changed behind the log's back).
async fn recover_state(
    env: &RecoveryEnv<'_>,
    dir: &Path,
    start: RecoveryStart,
    all_epochs: bool,
) -> Result<
    (
        Vec<Rc<Segment>>,
        RecoveryInfo,
        ProducerStateMap,
        EpochStarts,
    ),
    StorageError,
> {
    let trusted_end = if start.clean_shutdown {
        i64::MAX
    } else {
        start.recovery_point
    };
    let mut snapshot = producer_snapshot::load_newest(&**env.disk, dir, trusted_end).await?;
    loop {
        let (from, mut producers) = snapshot.take().unwrap_or_default();
        let mut epochs = Vec::new();
        let mut replay = Replay {
            producers: &mut producers,
            producers_from: from,
            all_epochs,
            epochs: &mut epochs,
        };
        let (segments, info) = recovery::recover(env, dir, start, &mut replay).await?;
        let log_end = segments.last().map_or(0, |s| s.meta.borrow().next_offset);
        if from <= log_end {
            return Ok((segments, info, producers, epochs));
        }
        tracing::warn!(dir = %dir.display(), snapshot = from, log_end, "producer-state snapshot past the end of the log ignored; replaying the log");
    }
}

/// The log's incarnation (None: its file is missing, damaged or of the older format) and
/// the recovery point to trust: the larger of its own file's and the shard file's entry
/// for that incarnation.
async fn trusted_recovery_point(
    env: &LogEnv,
    own: Option<checkpoint::RecoveryPointFile>,
) -> (Option<u64>, i64) {
    let Some(own) = own else {
        return (None, 0);
    };
    let Some(incarnation) = own.incarnation else {
        return (None, own.offset);
    };
    let shard = env.recovery_points.get(&*env.disk, incarnation).await;
    (
        Some(incarnation),
        shard.map_or(own.offset, |s| s.max(own.offset)),
    )
}

/// Checks that `infos` describe whole batches of a buffer of `len` bytes.
fn check_infos(infos: &[BatchInfo], len: usize) -> Result<(), AppendError> {
    if infos.is_empty() {
        return Err(AppendError::InvalidBatch);
    }
    for info in infos {
        let end = info.offset_in_buf.checked_add(info.len);
        if end.is_none_or(|e| e > len) || info.len < BATCH_HEADER_LEN || info.last_offset_delta < 0
        {
            return Err(AppendError::InvalidBatch);
        }
    }
    Ok(())
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
    /// Opens (creating if needed) the log in `dir` on the broker's O_DIRECT files
    /// ([`LogEnv::production`]) with a tail cache of its own, bounded only by
    /// `config.tail_cache_bytes`, and no shard recovery-point file (its own file alone
    /// says how far it is trusted); see [`open_with`](Self::open_with).
    pub async fn open(dir: &Path, config: LogConfig) -> Result<Rc<PartitionLog>, StorageError> {
        let unbounded = ShardTailCache::new(usize::MAX);
        let env = LogEnv::production(unbounded, ShardRecoveryPoints::default());
        Self::open_with(&env, dir, config).await
    }

    /// Opens (creating if needed) the log in `dir` on `env`'s disk and recovers it. The log
    /// starts in single-replica mode (HW = durable end = recovered end); see
    /// [`set_hw_follows_durable_end`](Self::set_hw_follows_durable_end).
    pub async fn open_with(
        env: &LogEnv,
        dir: &Path,
        config: LogConfig,
    ) -> Result<Rc<PartitionLog>, StorageError> {
        let disk = &env.disk;
        disk.create_dir_all(dir).await?;
        let loaded = checkpoint::read_epoch_checkpoint(&**disk, dir).await;
        let recovery_env = RecoveryEnv {
            disk,
            config: &config,
            now_ms: env.clock.now_ms(),
        };
        let own = checkpoint::read_recovery_point(&**disk, dir).await;
        let (incarnation, recovery_point) = trusted_recovery_point(env, own).await;
        let start = RecoveryStart {
            recovery_point,
            clean_shutdown: checkpoint::has_clean_shutdown_marker(&**disk, dir),
        };
        let (segments, recovery, producers, scanned) =
            match recover_state(&recovery_env, dir, start, loaded.is_none()).await {
                Ok(recovered) => recovered,
                Err(e) => {
                    if let Some(incarnation) = incarnation {
                        env.recovery_points
                            .keep_unopened(incarnation, recovery_point);
                    }
                    return Err(e);
                }
            };
        if recovery.clean_shutdown {
            tracing::info!(dir = %dir.display(), "log opened without a recovery scan (clean shutdown)");
        }
        let log_start = segments.first().map_or(0, |s| s.base_offset);
        let log_end = segments.last().map_or(0, |s| s.meta.borrow().next_offset);
        // The checkpoint may name epochs whose data a crash lost, and lack the epochs of
        // the tail written after it: trim it to the log, then add what the scan saw.
        let mut epochs = loaded.clone().unwrap_or_default();
        epochs.truncate_from_end(log_end);
        for (e, o) in scanned {
            epochs.assign(e, o);
        }
        epochs.truncate_from_start(log_start);
        let epochs_changed = loaded.as_ref() != Some(&epochs);
        let incarnation = match incarnation {
            Some(incarnation) => incarnation,
            None => {
                // A new log (or one without a readable file): from now on the shard's file
                // may vouch for it. The epoch file's directory fsync makes the name durable.
                let incarnation = rand::random();
                let file = (incarnation, start.recovery_point.min(log_end));
                checkpoint::write_recovery_point(&**disk, dir, file, !epochs_changed).await?;
                incarnation
            }
        };
        if epochs_changed {
            checkpoint::write_epoch_checkpoint(&**disk, dir, &epochs).await?;
        }
        let checkpoint_hw = checkpoint::read_hw_checkpoint(&**disk, dir).await;
        let clean_files = segments.last().filter(|_| recovery.clean_shutdown).cloned();
        let recovery_point = if recovery.clean_shutdown {
            log_end
        } else {
            start.recovery_point.min(log_end)
        };
        let inner = Inner {
            config,
            disk: disk.clone(),
            segments,
            offsets: Offsets::recovered(log_start, log_end, recovery_point),
            state: LogState::open(),
            hw_follows_durable: true,
            fresh: true,
            checkpoint_hw,
            hw_checkpointed: checkpoint_hw.unwrap_or(-1),
            hw_checkpoint_at: env.clock.now(),
            last_sync_at: env.clock.now(),
            sync_timer_armed: false,
            produced_batches: 0,
            incarnation,
            recovery,
            clean_files,
            epochs,
            epochs_dirty: false,
            producers,
            cache: env.tail_cache.partition(),
            pending: Vec::new(),
            waiters: Waiters::default(),
        };
        let log = Rc::new_cyclic(|me| PartitionLog {
            dir: dir.to_path_buf(),
            env: env.clone(),
            me: me.clone(),
            inner: RefCell::new(inner),
            sync_count: Cell::new(0),
        });
        env.recovery_points.register(&log);
        Ok(log)
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
        self.inner.borrow().offsets.log_start()
    }

    pub fn log_end_offset(&self) -> i64 {
        self.inner.borrow().offsets.log_end()
    }

    /// The acknowledged end: the log's durable end under its flush policy. Every offset
    /// below is fdatasync'ed (the default, `flush.messages=1`), or, when the policy
    /// acknowledges before fdatasync, written to its segment file (it survives a crash of
    /// the process, as Kafka's page cache does, not a power loss). Produce acks wait for
    /// it, and a replica reports this, not its LEO, as its replicated position.
    pub fn durable_end(&self) -> i64 {
        self.inner.borrow().offsets.ack_end()
    }

    /// What consumers may read (`<= durable_end()`). In single-replica mode (the default)
    /// it is the durable end; in replicated mode it is moved by
    /// [`set_high_watermark`](Self::set_high_watermark).
    pub fn high_watermark(&self) -> i64 {
        self.inner.borrow().offsets.high_watermark()
    }

    /// Replicated mode: the replication layer's high watermark (min LEO over the ISR, or
    /// the leader's value on a follower). Monotonic: a lower value is ignored (only a
    /// truncation lowers the HW). Clamped to the durable end; the rest is remembered, so
    /// the HW follows later flushes up to `hw`. Wakes `wait_for_data`. In single-replica
    /// mode the HW is already the durable end, so this changes nothing visible.
    pub fn set_high_watermark(&self, hw: i64) {
        let mut inner = self.inner.borrow_mut();
        inner.fresh = false;
        if inner.offsets.raise_hw_target(hw) {
            inner.waiters.hw_moved();
        }
    }

    /// On (the default): single-replica behaviour, every completed flush moves the HW to
    /// the durable end. Off: a replicated partition, only `set_high_watermark` moves it.
    ///
    /// Turning it off before anything else happened since open (no append, no HW set, no
    /// truncation) starts the HW from the checkpoint: min(recovered durable end,
    /// `<dir>/high-watermark`), or the log start offset without a checkpoint, because the
    /// recovered tail may hold data that was never committed. Later, turning it off keeps
    /// the current HW. Turning it on moves the HW to the durable end.
    pub fn set_hw_follows_durable_end(&self, on: bool) {
        let mut inner = self.inner.borrow_mut();
        if on {
            inner.hw_follows_durable = true;
            if inner.offsets.follow_ack_end() {
                inner.waiters.hw_moved();
            }
            return;
        }
        if inner.hw_follows_durable && inner.fresh {
            let hw = inner.checkpoint_hw.unwrap_or(inner.offsets.log_start());
            inner.offsets.restart_hw(hw);
        }
        inner.hw_follows_durable = false;
        inner.fresh = false;
    }

    pub fn hw_follows_durable_end(&self) -> bool {
        self.inner.borrow().hw_follows_durable
    }

    /// Number of fdatasync calls that made this log's appended data durable (the shard's
    /// sum is in [`LogEnv::counters`]).
    pub fn sync_count(&self) -> u64 {
        self.sync_count.get()
    }

    /// What opening the log found: clean shutdown, recovery point, segments scanned.
    pub fn recovery_info(&self) -> RecoveryInfo {
        self.inner.borrow().recovery
    }

    /// Every offset below it is fdatasync'ed; a crash never truncates below the
    /// checkpointed value of it.
    pub fn recovery_point(&self) -> i64 {
        self.inner.borrow().offsets.synced_end()
    }

    /// (incarnation, recovery point): this log's entry in the shard's recovery-point file.
    pub(crate) fn recovery_checkpoint(&self) -> (u64, i64) {
        let inner = self.inner.borrow();
        (inner.incarnation, inner.offsets.synced_end())
    }

    /// Number of segments, including the active one.
    pub fn segment_count(&self) -> usize {
        self.inner.borrow().segments.len()
    }

    /// Bytes currently held by the tail cache.
    pub fn tail_cache_bytes(&self) -> usize {
        self.inner.borrow().cache.bytes()
    }

    /// The latest leader epoch of a batch in this log.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.inner.borrow().epochs.latest_epoch()
    }

    /// First offset of `epoch` in this log, if the epoch has a batch here.
    pub fn epoch_start_offset(&self, epoch: i32) -> Option<i64> {
        self.inner.borrow().epochs.start_offset(epoch)
    }

    /// The epoch cache: `(epoch, start offset)` ascending.
    pub fn epoch_entries(&self) -> Vec<(i32, i64)> {
        self.inner.borrow().epochs.entries().to_vec()
    }

    /// OffsetForLeaderEpoch / DivergingEpoch, Kafka's `LeaderEpochFileCache.endOffsetFor`:
    /// requested == latest epoch -> (latest, LEO); else (largest cached epoch <= requested,
    /// start offset of the next higher cached epoch); requested below the first cached
    /// epoch -> (requested, first epoch's start offset). None = Kafka's
    /// (UNDEFINED_EPOCH -1, UNDEFINED_EPOCH_OFFSET -1): negative request, empty cache or
    /// an epoch above the latest.
    pub fn end_offset_for_epoch(&self, requested_epoch: i32) -> Option<(i32, i64)> {
        let inner = self.inner.borrow();
        inner
            .epochs
            .end_offset_for(requested_epoch, inner.offsets.log_end())
    }

    /// Appends one validated Produce payload (see `validate_batches`): checks idempotent
    /// sequences (all batches or none), assigns offsets, and queues each batch for the tail
    /// cache and the flusher with `baseOffset` and `partitionLeaderEpoch` patched in a copy
    /// of its header (the rest stays the request's bytes, see [`Records`]). Synchronous so
    /// appends keep request order. Refused with `Closed` while a truncation runs (only a
    /// follower truncates).
    pub fn append(
        &self,
        batches: impl Into<Records>,
        infos: &[BatchInfo],
        leader_epoch: i32,
    ) -> Result<AppendInfo, AppendError> {
        let batches = batches.into();
        let mut inner = self.inner.borrow_mut();
        inner.state.check_writable()?;
        check_infos(infos, batches.len())?;
        let mut offsets = Vec::with_capacity(infos.len());
        let mut next = inner.offsets.log_end();
        for info in infos {
            offsets.push(next);
            next += i64::from(info.last_offset_delta) + 1;
        }
        let pbs: Vec<ProducerBatch> = infos.iter().map(producer_batch).collect();
        let updates = inner.producers.check_append(&pbs, &offsets)?;
        let now = self.env.clock.now_ms();
        for (info, &base) in infos.iter().zip(&offsets) {
            let batch = batches.patched(info, base, leader_epoch);
            inner.append_one(&self.dir, batch, base, info, now);
        }
        inner.producers.commit(updates);
        inner.produced_batches += infos.len() as u64;
        if inner.epochs.assign(leader_epoch, offsets[0]) {
            inner.epochs_dirty = true;
        }
        inner.fresh = false;
        let info = AppendInfo {
            base_offset: offsets[0],
            last_offset: next - 1,
            log_start_offset: inner.offsets.log_start(),
        };
        drop(inner);
        self.kick_flusher();
        Ok(info)
    }

    /// Follower append of batches fetched from the leader: stored byte for byte (their
    /// `baseOffset` and `partitionLeaderEpoch` are kept), no sequence checks, but producer
    /// state is updated (a follower that becomes leader deduplicates retries) and the epoch
    /// cache learns new epochs. The first batch must start at `log_end_offset()` and each
    /// next one right after the previous one, else `NonContiguous` and nothing is appended.
    /// Same group commit, tail cache and segment rolls as [`append`](Self::append).
    pub fn append_replicated(
        &self,
        batches: impl Into<Records>,
        infos: &[BatchInfo],
    ) -> Result<AppendInfo, ReplicaAppendError> {
        let batches = batches.into();
        let mut inner = self.inner.borrow_mut();
        inner.state.check_writable()?;
        check_infos(infos, batches.len())?;
        let mut placed = Vec::with_capacity(infos.len());
        let mut next = inner.offsets.log_end();
        for info in infos {
            let h = BatchHeader::parse(batches.batch(info)).ok_or(AppendError::InvalidBatch)?;
            if h.last_offset_delta.get() != info.last_offset_delta
                || h.total_len() != Some(info.len)
            {
                return Err(AppendError::InvalidBatch.into());
            }
            let base = h.base_offset();
            if base != next {
                return Err(ReplicaAppendError::NonContiguous {
                    expected: next,
                    got: base,
                });
            }
            placed.push((base, h.partition_leader_epoch.get()));
            next = base + i64::from(info.last_offset_delta) + 1;
        }
        let now = self.env.clock.now_ms();
        for (info, &(base, epoch)) in infos.iter().zip(&placed) {
            inner.append_one(&self.dir, batches.stored(info), base, info, now);
            inner.producers.replay(&producer_batch(info), base);
            if inner.epochs.assign(epoch, base) {
                inner.epochs_dirty = true;
            }
        }
        inner.fresh = false;
        let info = AppendInfo {
            base_offset: placed[0].0,
            last_offset: next - 1,
            log_start_offset: inner.offsets.log_start(),
        };
        drop(inner);
        self.kick_flusher();
        Ok(info)
    }

    /// Starts the flusher unless it runs (or a truncation holds it back).
    fn kick_flusher(&self) {
        let now = self.env.clock.now();
        let start = {
            let mut inner = self.inner.borrow_mut();
            let start = inner.state.is_idle() && inner.flush_due(now);
            if start {
                inner.state.start_flush();
            }
            start
        };
        if start {
            self.start_flusher();
        }
    }

    /// Hands the flush to the owner's hook ([`LogEnv::start_flusher`]).
    fn start_flusher(&self) {
        match self.me.upgrade() {
            Some(me) => (self.env.start_flusher)(me),
            None => self.inner.borrow_mut().state.end_flush(),
        }
    }

    /// The flusher: takes everything pending, writes it (one DMA write per segment touched),
    /// fdatasyncs once when the flush policy says so (always by default), rewrites the
    /// epoch checkpoint if it changed, completes waiters; repeats while appends arrived
    /// meanwhile, then returns. Now and then checkpoints the HW of a replicated log. Run it
    /// exactly once per call of the [`LogEnv::start_flusher`] hook, never otherwise (the
    /// log marks itself flushing before it calls the hook).
    ///
    /// Returns when the owner should call [`sync_timer_fired`](Self::sync_timer_fired):
    /// written data waits for `flush.ms` (never under the default policy).
    pub async fn run_flusher(self: Rc<Self>) -> Option<Instant> {
        loop {
            let now = self.env.clock.now();
            let round = {
                let mut inner = self.inner.borrow_mut();
                if inner.state.failure().is_some() || !inner.flush_due(now) {
                    inner.state.end_flush();
                    inner.waiters.flush_idle();
                    return inner.arm_sync_timer(None);
                }
                inner.next_round(now)
            };
            let flushed = match self.flush_round(round).await {
                Ok(()) => self.checkpoint_hw_if_due().await,
                Err(e) => Err(e),
            };
            if let Err(e) = flushed {
                self.inner.borrow_mut().on_failed(e.to_string());
            }
        }
    }

    /// The time [`run_flusher`](Self::run_flusher) (or this) returned has come: starts the
    /// flusher if a sync is due. Returns when to call again (`None`: not needed, a
    /// running flusher or a later flush asks again).
    pub fn sync_timer_fired(&self) -> Option<Instant> {
        let now = self.env.clock.now();
        {
            let mut inner = self.inner.borrow_mut();
            inner.sync_timer_armed = false;
            // A closing log syncs by itself; a running flusher arms the timer again.
            if inner.state.is_closed() || inner.state.is_flushing() {
                return None;
            }
            if inner.state.is_truncating() {
                // Rare; look again a `flush.ms` later (at least 1 ms: never a busy loop).
                let wait = Duration::from_millis(inner.config.flush_ms.max(1));
                return inner.arm_sync_timer(now.checked_add(wait));
            }
            if !inner.flush_due(now) {
                return inner.arm_sync_timer(None);
            }
            inner.state.start_flush();
        }
        self.start_flusher();
        None
    }
    /// After a flush: the HW checkpoint of a replicated log, when it moved and its
    /// interval passed. (The recovery point is the shard's file's, see `recovery_points`.)
    async fn checkpoint_hw_if_due(&self) -> Result<(), StorageError> {
        let hw = {
            let inner = self.inner.borrow();
            if inner.state.failure().is_some() {
                return Ok(());
            }
            let now = self.env.clock.now();
            let hw = inner.offsets.high_watermark();
            let due = !inner.hw_follows_durable
                && hw != inner.hw_checkpointed
                && now.saturating_duration_since(inner.hw_checkpoint_at) >= HW_CHECKPOINT_INTERVAL;
            due.then_some(hw)
        };
        match hw {
            Some(hw) => self.checkpoint_hw(hw).await,
            None => Ok(()),
        }
    }

    /// Before a truncation to `end` removes data: the recovery point drops to `end` (in
    /// memory) and the log starts a new incarnation, durably, with that recovery point in
    /// its own file. From then on nothing the shard's file recorded for the old
    /// incarnation is trusted, so a crash in the middle, or an old entry in any shard's
    /// file, never claims data the truncation removed.
    async fn start_new_incarnation(&self, end: i64) -> Result<(), StorageError> {
        let recovery_point = {
            let mut inner = self.inner.borrow_mut();
            inner.offsets.lower_synced_end(end);
            inner.offsets.synced_end()
        };
        let incarnation = rand::random();
        let file = (incarnation, recovery_point);
        checkpoint::write_recovery_point(&*self.env.disk, &self.dir, file, true).await?;
        self.inner.borrow_mut().incarnation = incarnation;
        Ok(())
    }

    async fn checkpoint_hw(&self, hw: i64) -> Result<(), StorageError> {
        checkpoint::write_hw_checkpoint(&*self.env.disk, &self.dir, hw).await?;
        let mut inner = self.inner.borrow_mut();
        inner.hw_checkpointed = hw;
        inner.hw_checkpoint_at = self.env.clock.now();
        Ok(())
    }

    /// One flush round: writes, acknowledges what the policy lets it, syncs when due.
    async fn flush_round(&self, round: FlushRound) -> Result<(), StorageError> {
        self.leave_clean_state().await?;
        let mut groups: Vec<(Rc<Segment>, Vec<Bytes>)> = Vec::new();
        let mut seals = Vec::new();
        for op in round.ops {
            match op {
                PendingOp::Write(seg, bytes) => match groups.last_mut() {
                    Some((s, v)) if Rc::ptr_eq(s, &seg) => v.push(bytes),
                    _ => groups.push((seg, vec![bytes])),
                },
                PendingOp::Seal(seg) => seals.push(seg),
            }
        }
        for (seg, data) in &groups {
            seg.write(data).await?;
        }
        self.inner
            .borrow_mut()
            .on_written(round.end, round.acknowledge_written);
        if round.acknowledge_written {
            self.env.counters.add_acknowledged_batches(round.batches);
        }
        if round.sync {
            self.sync_written().await?;
        }
        // After the data it describes, before a seal persists indexes that would spare the
        // sealed segment from the recovery scan that could rebuild the entry.
        if let Some(epochs) = round.epochs {
            checkpoint::write_epoch_checkpoint(&*self.env.disk, &self.dir, &epochs).await?;
        }
        let rolled = !seals.is_empty() || round.snapshot.is_some();
        for seg in seals {
            seg.seal().await?;
        }
        // A roll syncs (see `next_round`): the snapshot's batches are durable.
        if let Some(data) = round.snapshot {
            producer_snapshot::write(&*self.env.disk, &self.dir, &data, round.end).await?;
        }
        if rolled {
            // The names of the sealed segment's indexes and of the snapshot (once per roll:
            // a blocking metadata call is fine): a power loss keeps them, so the sealed
            // segment is never scanned again.
            self.env.disk.sync_dir(&self.dir)?;
        }
        if round.sync {
            let now = self.env.clock.now();
            self.inner.borrow_mut().on_synced(round.end, now);
            if !round.acknowledge_written {
                self.env.counters.add_acknowledged_batches(round.batches);
            }
        }
        Ok(())
    }

    /// After an open that found a clean shutdown, before the log's files first change (a
    /// write, a truncation): removes the clean-shutdown marker and the active segment's
    /// persisted indexes, which a write would make stale, with one directory fsync for
    /// both (from then on a crash needs a recovery scan, and the scan must not find those
    /// indexes), and loads that segment's last block for the next write. Deferred to here
    /// so that opening and closing a log nobody wrote to cost no fsync.
    async fn leave_clean_state(&self) -> Result<(), StorageError> {
        let Some(active) = self.inner.borrow_mut().clean_files.take() else {
            return Ok(());
        };
        active.delete_index_files()?;
        checkpoint::remove_clean_shutdown_marker(&*self.env.disk, &self.dir)?;
        self.env.disk.sync_dir(&self.dir)?;
        recovery::load_tail_block(&active).await
    }

    /// fdatasyncs every segment holding written data past the synced end (usually the
    /// active one alone; after an unclean open, also those recovered past the recovery
    /// point, as Kafka's flush covers every segment from its recovery point).
    async fn sync_written(&self) -> Result<(), StorageError> {
        let files: Vec<Rc<dyn DiskFile>> = {
            let inner = self.inner.borrow();
            let synced = inner.offsets.synced_end();
            let first = inner
                .segments
                .partition_point(|s| s.meta.borrow().next_offset <= synced);
            inner.segments[first..]
                .iter()
                .filter_map(|s| s.file())
                .collect()
        };
        for f in files {
            f.fdatasync().await?;
            self.sync_count.set(self.sync_count.get() + 1);
            self.env.counters.add_fdatasync();
        }
        Ok(())
    }

    /// Resolves once every offset below `end_offset` is on disk (fdatasync'ed).
    pub async fn wait_durable(&self, end_offset: i64) -> Result<(), StorageError> {
        let rx = {
            let mut inner = self.inner.borrow_mut();
            if inner.offsets.ack_end() >= end_offset {
                return Ok(());
            }
            if let Some(msg) = inner.state.failure() {
                return Err(StorageError::Offline(msg.to_string()));
            }
            if inner.state.is_closed() && !inner.state.is_flushing() {
                return Err(StorageError::Closed);
            }
            inner.waiters.wait_durable_offset(end_offset)
        };
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(StorageError::Offline(msg)),
            Err(_) => Err(StorageError::Closed),
        }
    }

    /// Whole batches from the one containing `offset`, up to `max_bytes` but at least one
    /// batch (KIP-74), none starting at or after `max_offset` (the caller's visibility
    /// bound: the high watermark for consumers, the log end for followers; clamped to the
    /// log end). Served from the tail cache when possible, else read from the segment file.
    pub async fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        max_offset: i64,
    ) -> Result<ReadBatches, StorageError> {
        let (seg, file, pos, limit, max_offset, window) = {
            let inner = self.inner.borrow();
            if offset < inner.offsets.log_start() || offset > inner.offsets.log_end() {
                return Err(inner.out_of_range(offset));
            }
            let max_offset = max_offset.min(inner.offsets.log_end());
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
        let r = read_batches(&*file, pos, limit, offset, max_bytes, max_offset, window).await?;
        drop(seg);
        Ok(r)
    }

    /// Resolves when `high_watermark() > offset`, at `deadline`, or when the log closes.
    /// Woken by the flusher (or `set_high_watermark`), not by polling.
    pub async fn wait_for_data(&self, offset: i64, deadline: Instant) {
        self.wait_until(offset, deadline, false).await
    }

    /// Resolves when `log_end_offset() > offset`, at `deadline`, or when the log closes:
    /// the long poll of followers' fetches, which read up to the log end (appended batches
    /// stay in the tail cache until written, so they can be read at once).
    pub async fn wait_for_appended(&self, offset: i64, deadline: Instant) {
        self.wait_until(offset, deadline, true).await
    }

    async fn wait_until(&self, offset: i64, deadline: Instant, log_end: bool) {
        loop {
            let rx = {
                let mut inner = self.inner.borrow_mut();
                let end = if log_end {
                    inner.offsets.log_end()
                } else {
                    inner.offsets.high_watermark()
                };
                if end > offset || inner.state.is_closed() || inner.state.failure().is_some() {
                    return;
                }
                inner.waiters.wait_position(log_end)
            };
            if self.env.clock.now() >= deadline {
                return;
            }
            let timer = self.env.clock.sleep_until(deadline);
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
            (
                seg.base_offset + i64::from(rel),
                inner.offsets.high_watermark(),
            )
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
            let batches = r.contiguous();
            for b in scan_batches(&batches, false) {
                if b.header.max_timestamp.get() >= ts
                    && let Some(found) = first_record_at_or_after(b.bytes, ts)
                {
                    return Ok(Some(found));
                }
                from = b.header.last_offset() + 1;
            }
        }
        Ok(None)
    }

    /// Rolls the active segment when older than `segment.ms`, then deletes the oldest
    /// sealed segments below the high watermark per `retention.ms` (largest timestamp older
    /// than `now_ms - retention.ms`) and `retention.bytes`; never the active segment.
    /// Advances the log start offset. Returns the number of segments deleted (0 while a
    /// truncation runs).
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize, StorageError> {
        let victims = {
            let mut inner = self.inner.borrow_mut();
            if inner.state.is_closed() {
                return Err(StorageError::Closed);
            }
            if inner.state.is_truncating() {
                return Ok(0);
            }
            let log_end = inner.offsets.log_end();
            if inner.should_roll(0, log_end, now_ms) && inner.state.failure().is_none() {
                inner.roll(&self.dir, now_ms);
                drop(inner);
                self.kick_flusher();
                inner = self.inner.borrow_mut();
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
            if !seg.writer.borrow().sealed || next > inner.offsets.high_watermark() {
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
            let start = inner.segments[0].base_offset;
            inner.offsets.advance_start(start);
            inner.cache.drop_below(start);
            // In memory only: recovery trims the checkpoint to the log start again.
            inner.epochs.truncate_from_start(start);
        }
        victims
    }

    /// Truncates the log to `offset` (a follower whose log diverged from the leader's):
    /// removes every batch at or after it. Kafka truncates at batch boundaries: when
    /// `offset` falls inside a batch, that whole batch goes too. Returns the new log end
    /// offset (the effective truncation point; `offset` or below). Nothing to do when
    /// `offset >= log_end_offset()`; below the log start it is
    /// [`truncate_fully_and_start_at`](Self::truncate_fully_and_start_at)`(offset)`, as in
    /// Kafka.
    ///
    /// Waits for the in-flight flush first; appends are refused (`Closed`) meanwhile.
    /// Drops whole later segments and truncates the one holding `offset` (file, indexes,
    /// tail block), the tail cache, producer state entries of removed batches, epoch cache
    /// entries starting at or after the new end, and clamps the durable end and the HW. It
    /// is durable before it returns (file truncated and fdatasync'ed, deletions and
    /// checkpoints synced): a crash afterwards never brings the data back. Costs a scan of
    /// the truncated segment up to `offset` (to rebuild its indexes exactly) unless
    /// `offset` is the segment's base. An I/O error leaves the log offline.
    pub async fn truncate_to(&self, offset: i64) -> Result<i64, StorageError> {
        self.begin_truncation().await?;
        let r = self.truncate_to_locked(offset).await;
        self.end_truncation(r.as_ref().err());
        r
    }

    /// Deletes every segment and starts an empty log at `offset` (log start = log end =
    /// HW = `offset`): a follower whose fetch offset is below the leader's log start
    /// (Kafka's OffsetOutOfRange handling). Clears producer state and the epoch cache.
    /// Durable before it returns (an empty `<offset>.log` records the start).
    pub async fn truncate_fully_and_start_at(&self, offset: i64) -> Result<(), StorageError> {
        self.begin_truncation().await?;
        let r = self.truncate_fully_locked(offset).await;
        self.end_truncation(r.as_ref().err());
        r
    }

    /// Takes the truncation "lock" and waits until the flusher is idle (nothing pending:
    /// appends are refused from now on).
    async fn begin_truncation(&self) -> Result<(), StorageError> {
        loop {
            let rx = {
                let mut inner = self.inner.borrow_mut();
                if inner.state.is_closed() {
                    return Err(StorageError::Closed);
                }
                if let Some(msg) = inner.state.failure() {
                    return Err(StorageError::Offline(msg.to_string()));
                }
                if !inner.state.is_truncating() {
                    inner.state.begin_truncation();
                    break;
                }
                inner.waiters.wait_truncation_done()
            };
            let _ = rx.await;
        }
        loop {
            let rx = {
                let mut inner = self.inner.borrow_mut();
                if let Some(msg) = inner.state.failure() {
                    let msg = msg.to_string();
                    drop(inner);
                    self.end_truncation(None);
                    return Err(StorageError::Offline(msg));
                }
                if !inner.state.is_flushing() {
                    return Ok(());
                }
                inner.waiters.wait_flush_idle()
            };
            let _ = rx.await;
        }
    }

    fn end_truncation(&self, err: Option<&StorageError>) {
        let mut inner = self.inner.borrow_mut();
        if let Some(e) = err
            && inner.state.failure().is_none()
            && !matches!(e, StorageError::OffsetOutOfRange { .. })
        {
            inner.on_failed(format!("truncation failed: {e}"));
        }
        inner.state.end_truncation();
        inner.waiters.truncation_done();
    }

    async fn truncate_to_locked(&self, offset: i64) -> Result<i64, StorageError> {
        let (i, seg, log_start, log_end, interval) = {
            let inner = self.inner.borrow();
            let i = inner
                .segments
                .partition_point(|s| s.base_offset <= offset)
                .saturating_sub(1);
            (
                i,
                inner.segments[i].clone(),
                inner.offsets.log_start(),
                inner.offsets.log_end(),
                inner.config.index_interval_bytes,
            )
        };
        if offset >= log_end {
            return Ok(log_end);
        }
        if offset < log_start {
            self.truncate_fully_locked(offset).await?;
            return Ok(offset);
        }
        self.leave_clean_state().await?;
        let file = seg
            .file()
            .ok_or_else(|| StorageError::Corrupt(format!("{:?} has no file", seg.path("log"))))?;
        let (meta, pos, end) = seg.scan_to_cut(&*file, offset, interval).await?;
        if end != offset {
            tracing::info!(dir = ?self.dir, offset, end, "truncating at the batch boundary below the requested offset");
        }
        self.start_new_incarnation(end).await?;
        // In memory first: readers stop seeing the removed data at once.
        let (victims, epochs, hw) = {
            let mut inner = self.inner.borrow_mut();
            let victims = inner.segments.split_off(i + 1);
            *seg.meta.borrow_mut() = meta;
            {
                let mut w = seg.writer.borrow_mut();
                w.flushed_size = pos;
                w.tail_block.clear();
                w.sealed = false;
            }
            inner.cache.truncate_from(end);
            inner.producers.truncate_from(end);
            inner.epochs.truncate_from_end(end);
            inner.epochs_dirty = false;
            inner.truncate_offsets(end);
            (
                victims,
                inner.epochs.clone(),
                inner.offsets.high_watermark(),
            )
        };
        for v in victims.iter().rev() {
            v.delete_files()?;
            v.file.borrow_mut().take();
        }
        file.truncate(pos).await?;
        file.fdatasync().await?;
        seg.delete_index_files()?;
        // Durable with the rest (the directory fsync) before the log is written again.
        producer_snapshot::delete_after(&*self.env.disk, &self.dir, end)?;
        self.env.disk.sync_dir(&self.dir)?;
        recovery::load_tail_block(&seg).await?;
        checkpoint::write_epoch_checkpoint(&*self.env.disk, &self.dir, &epochs).await?;
        self.checkpoint_hw(hw).await?;
        Ok(end)
    }

    async fn truncate_fully_locked(&self, offset: i64) -> Result<(), StorageError> {
        if offset < 0 {
            return Err(self.inner.borrow().out_of_range(offset));
        }
        self.leave_clean_state().await?;
        self.start_new_incarnation(offset).await?;
        let seg = Rc::new(Segment::new(
            &self.env.disk,
            &self.dir,
            offset,
            self.env.clock.now_ms(),
        ));
        let victims = {
            let mut inner = self.inner.borrow_mut();
            let victims = std::mem::replace(&mut inner.segments, vec![seg.clone()]);
            inner.cache.clear();
            inner.producers.clear();
            inner.epochs.clear();
            inner.epochs_dirty = false;
            inner.waiters.forget_durable_offsets();
            inner.offsets.start_at(offset);
            inner.fresh = false;
            inner.waiters.wake_positions();
            victims
        };
        for v in victims.iter().rev() {
            v.delete_files()?;
            v.file.borrow_mut().take();
        }
        let file = seg.ensure_file().await?;
        file.fdatasync().await?;
        // Every snapshot describes data that is gone.
        producer_snapshot::delete_after(&*self.env.disk, &self.dir, -1)?;
        self.env.disk.sync_dir(&self.dir)?;
        checkpoint::write_epoch_checkpoint(&*self.env.disk, &self.dir, &EpochCache::default())
            .await?;
        self.checkpoint_hw(offset).await
    }

    /// Why a storage error took the log offline, if one did (for good: KIP-112's offline
    /// replica).
    pub fn offline_reason(&self) -> Option<String> {
        self.inner.borrow().state.failure().map(str::to_string)
    }

    pub fn is_offline(&self) -> bool {
        self.inner.borrow().state.failure().is_some()
    }

    /// Resolves with the reason once a storage error takes the log offline, or with `None`
    /// once the log is closed (shutdown, topic deleted) while healthy.
    pub async fn wait_offline(&self) -> Option<String> {
        loop {
            let rx = {
                let mut inner = self.inner.borrow_mut();
                if let Some(reason) = inner.state.failure() {
                    return Some(reason.to_string());
                }
                if inner.state.is_closed() {
                    return None;
                }
                inner.waiters.wait_failed_or_closed()
            };
            let _ = rx.await;
        }
    }

    /// Flushes and fdatasyncs everything, truncates the active segment's padding and
    /// persists its indexes, the HW and recovery point checkpoints (when they moved), the
    /// producer-state snapshot and last the clean-shutdown marker (the next open skips the
    /// recovery scan and the producer replay). A log opened after a clean shutdown and
    /// never written keeps its files as they are. Waits for a running truncation. Later
    /// appends fail with `AppendError::Closed`.
    pub async fn close(&self) -> Result<(), StorageError> {
        loop {
            let rx = {
                let mut inner = self.inner.borrow_mut();
                inner.state.close();
                if inner.state.is_flushing() {
                    inner.waiters.wait_flush_idle()
                } else if inner.state.is_truncating() {
                    inner.waiters.wait_truncation_done()
                } else {
                    break;
                }
            };
            let _ = rx.await;
        }
        let (active, written, untouched) = {
            let mut inner = self.inner.borrow_mut();
            inner.waiters.wake_positions();
            inner.waiters.failed_or_closed();
            if let Some(msg) = inner.state.failure() {
                return Err(StorageError::Offline(msg.to_string()));
            }
            let untouched = inner.clean_files.is_some();
            (
                inner.active().clone(),
                inner.offsets.written_end(),
                untouched,
            )
        };
        if untouched {
            // Opened after a clean shutdown, never written: its files are as that close
            // left them, marker included.
            return self.checkpoint_hw_if_moved().await;
        }
        // Whatever the flush policy left unsynced.
        self.sync_written().await?;
        let snapshot = {
            let mut inner = self.inner.borrow_mut();
            inner.on_synced(written, self.env.clock.now());
            // Nothing is pending once closed and idle, unless a flush failed (returned above).
            let whole = written == inner.offsets.log_end();
            whole.then(|| producer_snapshot::encode(&inner.producers, written))
        };
        // What the marker vouches for, fdatasync'ed one file at a time: the data and the
        // size of the active segment with its indexes (seal), then the files the next
        // open reads. Their names are made durable by the marker's directory fsync.
        active.seal().await?;
        self.checkpoint_hw_if_moved().await?;
        if let Some(data) = snapshot {
            producer_snapshot::write(&*self.env.disk, &self.dir, &data, written).await?;
        }
        checkpoint::write_clean_shutdown_marker(&*self.env.disk, &self.dir).await
    }

    async fn checkpoint_hw_if_moved(&self) -> Result<(), StorageError> {
        let (hw, checkpointed) = {
            let inner = self.inner.borrow();
            (inner.offsets.high_watermark(), inner.hw_checkpointed)
        };
        if hw == checkpointed {
            return Ok(());
        }
        self.checkpoint_hw(hw).await
    }

    /// Deletes the partition: closes the log and removes its directory.
    pub async fn remove(self: Rc<Self>) -> Result<(), StorageError> {
        let closed = self.close().await;
        {
            let mut inner = self.inner.borrow_mut();
            inner.cache.clear();
            inner.waiters.forget_durable_offsets();
            for seg in &inner.segments {
                seg.file.borrow_mut().take();
            }
        }
        self.env.recovery_points.forget(&self.dir);
        // Rare metadata operation: blocking unlinks are acceptable here.
        self.env.disk.remove_dir_all(&self.dir)?;
        match closed {
            Err(StorageError::Offline(_)) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
