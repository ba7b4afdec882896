//! PartitionLog over [`MemDisk`]: no runtime, no files, no wall clock. Every operation
//! completes at once, so each future is driven with `now_or_never`, flushes run when the
//! test says so, and a crash keeps only what was fdatasync'ed: the real append, group
//! commit, recovery, truncation and checkpoints, deterministically.

use std::cell::RefCell;
use std::future::Future;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use futures::FutureExt;

use super::disk::Disk;
use super::env::{Clock, LogEnv};
use super::mem_disk::{ManualClock, MemDisk};
use super::tail_cache::ShardTailCache;
use super::tests::{append_in_epoch, concat, expected_batch, idem_batch, small_config};
use super::*;

pub(super) const DIR: &str = "/data/topic-0";
/// The data directory: where the shard's recovery-point file is.
pub(super) const DATA_DIR: &str = "/data";

/// One simulated machine: a disk, a clock, and the logs whose flush is due.
pub(super) struct Machine {
    pub disk: MemDisk,
    clock: Rc<ManualClock>,
    flush_due: Rc<RefCell<Vec<Rc<PartitionLog>>>>,
    /// The counters of every log opened on this machine.
    pub counters: Rc<StorageCounters>,
    /// The sync timers flushers asked for, as the production hook keeps them.
    sync_timers: RefCell<Vec<(Rc<PartitionLog>, Instant)>>,
    /// The process's shard recovery points (new at every crash, kill or restart).
    recovery_points: RefCell<Rc<ShardRecoveryPoints>>,
}

/// Drives a future over MemDisk: it must complete without waiting.
pub(super) fn ready<T>(f: impl Future<Output = T>) -> T {
    f.now_or_never().expect("completes at once over MemDisk")
}

impl Machine {
    pub fn new() -> Self {
        Machine {
            disk: MemDisk::new(),
            clock: Rc::new(ManualClock::new(Instant::now(), 1_000_000)),
            flush_due: Rc::default(),
            counters: Rc::default(),
            sync_timers: RefCell::default(),
            recovery_points: RefCell::new(Rc::new(ShardRecoveryPoints::new(
                Path::new(DATA_DIR),
                0,
            ))),
        }
    }

    /// A new process whose logs are on `shard` (the shard count changed): its recovery
    /// points are that shard's file.
    pub fn restart_as_shard(&self, shard: usize) {
        let points = ShardRecoveryPoints::new(Path::new(DATA_DIR), shard);
        *self.recovery_points.borrow_mut() = Rc::new(points);
    }

    /// The shard's periodic recovery-point checkpoint; returns whether it wrote.
    pub fn checkpoint(&self) -> bool {
        ready(self.env().checkpoint_recovery_points()).expect("checkpoint")
    }

    pub fn env(&self) -> LogEnv {
        let due = self.flush_due.clone();
        LogEnv {
            disk: Rc::new(self.disk.clone()),
            clock: self.clock.clone(),
            start_flusher: Rc::new(move |log| due.borrow_mut().push(log)),
            tail_cache: ShardTailCache::new(usize::MAX),
            counters: self.counters.clone(),
            recovery_points: self.recovery_points.borrow().clone(),
        }
    }

    pub fn open(&self) -> Rc<PartitionLog> {
        self.open_with(small_config())
    }

    pub fn open_with(&self, config: LogConfig) -> Rc<PartitionLog> {
        ready(PartitionLog::open_with(&self.env(), Path::new(DIR), config)).expect("open")
    }

    /// Runs every due flusher; returns how many ran.
    pub fn flush(&self) -> usize {
        let due = std::mem::take(&mut *self.flush_due.borrow_mut());
        let n = due.len();
        for log in due {
            if let Some(at) = ready(log.clone().run_flusher()) {
                self.sync_timers.borrow_mut().push((log, at));
            }
        }
        n
    }

    /// Fires the sync timers whose time came, as the production hook does; returns how
    /// many fired.
    pub fn fire_sync_timers(&self) -> usize {
        let now = self.clock.now();
        let (due, later) = std::mem::take(&mut *self.sync_timers.borrow_mut())
            .into_iter()
            .partition::<Vec<_>, _>(|(_, at)| *at <= now);
        *self.sync_timers.borrow_mut() = later;
        for (log, _) in &due {
            if let Some(at) = log.sync_timer_fired() {
                self.sync_timers.borrow_mut().push((log.clone(), at));
            }
        }
        due.len()
    }

    /// The sync timers waiting.
    pub fn sync_timers(&self) -> Vec<Instant> {
        self.sync_timers
            .borrow()
            .iter()
            .map(|(_, at)| *at)
            .collect()
    }

    /// Power loss: unsynced bytes are gone and no flush will run.
    pub fn crash(&self, log: Rc<PartitionLog>) {
        self.flush_due.borrow_mut().clear();
        self.sync_timers.borrow_mut().clear();
        drop(log);
        self.disk.crash();
        self.restart_as_shard(0);
    }

    /// The process dies (kill -9): what was written stays in the files, synced or not; no
    /// flush will run.
    pub fn kill(&self, log: Rc<PartitionLog>) {
        self.flush_due.borrow_mut().clear();
        self.sync_timers.borrow_mut().clear();
        drop(log);
        self.restart_as_shard(0);
    }

    pub fn advance(&self, ms: i64) {
        self.clock.set(self.clock.ms() + ms);
    }
}

/// Every batch of the log, by base offset and leader epoch (a read stops at the end of
/// a segment: read on from there).
pub(super) fn batches(log: &PartitionLog) -> Vec<(i64, i32)> {
    let (mut from, end) = (log.log_start_offset(), log.log_end_offset());
    let mut out = Vec::new();
    while from < end {
        let r = ready(log.read(from, usize::MAX, end)).unwrap();
        assert!(!r.is_empty(), "no batch at {from}");
        for b in crate::protocol::record_batch::scan_batches(&r.contiguous(), false) {
            out.push((
                b.header.base_offset(),
                b.header.partition_leader_epoch.get(),
            ));
            from = b.header.last_offset() + 1;
        }
    }
    out
}

#[test]
fn append_flush_and_read_back() {
    let m = Machine::new();
    let log = m.open();
    let bases: Vec<i64> = (0..3)
        .map(|_| append_in_epoch(&log, 3, 100, 5).base_offset)
        .collect();
    assert_eq!(bases, [0, 3, 6]);
    assert_eq!((log.durable_end(), log.high_watermark()), (0, 0));
    assert_eq!(
        super::tests::batch_count(&ready(log.read(0, 1 << 20, 9)).unwrap()),
        3
    );

    // One flush is due for the three appends: one write and one fdatasync (group commit).
    assert_eq!(m.flush(), 1);
    assert_eq!(log.sync_count(), 1);
    assert_eq!((log.durable_end(), log.high_watermark()), (9, 9));
    assert_eq!(log.tail_cache_bytes(), 0, "durable data leaves the cache");
    ready(log.wait_durable(9)).unwrap();

    // Read back from the simulated disk.
    let r = ready(log.read(0, 1 << 20, log.high_watermark())).unwrap();
    let want: Vec<u8> = bases
        .iter()
        .flat_map(|&b| expected_batch(b, 3, 100, 7).to_vec())
        .collect();
    assert_eq!(concat(&r), want);
    assert_eq!(m.flush(), 0, "nothing pending, no flush due");
}

#[test]
fn a_crash_loses_unsynced_batches_and_recovery_keeps_the_synced_prefix() {
    let m = Machine::new();
    let log = m.open();
    let (b, i) = idem_batch(7, 0, 0, 3);
    assert_eq!(log.append(b, &i, 5).unwrap().base_offset, 0);
    append_in_epoch(&log, 2, 50, 5);
    m.flush();
    assert_eq!(log.durable_end(), 5);
    // Not flushed: a new epoch and the producer's next batch.
    append_in_epoch(&log, 2, 50, 6);
    let (b, i) = idem_batch(7, 0, 3, 1);
    assert_eq!(log.append(b, &i, 6).unwrap().base_offset, 7);
    assert_eq!(log.epoch_entries(), [(5, 0), (6, 5)]);
    m.crash(log);

    let log = m.open();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 5));
    assert_eq!(log.high_watermark(), 5);
    assert_eq!(batches(&log), [(0, 5), (3, 5)]);
    // The epoch cache and producer state are those of the synced prefix.
    assert_eq!(log.epoch_entries(), [(5, 0)]);
    assert_eq!(log.end_offset_for_epoch(5), Some((5, 5)));
    let (b, i) = idem_batch(7, 0, 0, 3);
    assert_eq!(
        log.append(b, &i, 6),
        Err(AppendError::DuplicateSequence { base_offset: 0 })
    );
    let (b, i) = idem_batch(7, 0, 3, 1);
    assert_eq!(log.append(b, &i, 6).unwrap().base_offset, 5);
    m.flush();
    assert_eq!(log.epoch_entries(), [(5, 0), (6, 5)]);
}

#[test]
fn recovery_across_rolled_segments() {
    let m = Machine::new();
    let log = m.open();
    for _ in 0..20 {
        append_in_epoch(&log, 3, 100, 5);
    }
    m.flush();
    assert!(log.segment_count() > 3, "segments: {}", log.segment_count());
    // Unsynced data in a new segment is lost whole.
    m.advance(7 * 24 * 3600 * 1000);
    append_in_epoch(&log, 3, 100, 6);
    let segments = log.segment_count();
    m.crash(log);

    let log = m.open();
    assert_eq!(log.log_end_offset(), 60);
    assert_eq!(log.segment_count(), segments - 1);
    assert_eq!(batches(&log).len(), 20);
}

#[test]
fn truncation_is_durable() {
    let m = Machine::new();
    let log = m.open();
    for epoch in [5, 5, 6, 6] {
        append_in_epoch(&log, 3, 100, epoch);
    }
    m.flush();
    assert_eq!(log.epoch_entries(), [(5, 0), (6, 6)]);
    // Inside the third batch: Kafka truncates at the batch boundary.
    assert_eq!(ready(log.truncate_to(7)).unwrap(), 6);
    assert_eq!((log.log_end_offset(), log.high_watermark()), (6, 6));
    assert_eq!(log.epoch_entries(), [(5, 0)]);
    m.crash(log);

    let log = m.open();
    assert_eq!(batches(&log), [(0, 5), (3, 5)]);
    assert_eq!(log.epoch_entries(), [(5, 0)]);
    append_in_epoch(&log, 1, 10, 7);
    m.flush();
    assert_eq!(batches(&log), [(0, 5), (3, 5), (6, 7)]);

    ready(log.truncate_fully_and_start_at(100)).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (100, 100));
    m.crash(log);
    let log = m.open();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (100, 100));
    assert!(log.epoch_entries().is_empty());
}

#[test]
fn high_watermark_checkpoint_follows_the_clock() {
    let m = Machine::new();
    let log = m.open();
    log.set_hw_follows_durable_end(false);
    assert_eq!(log.high_watermark(), 0);
    append_in_epoch(&log, 3, 10, 5);
    m.flush();
    log.set_high_watermark(2);
    assert_eq!((log.durable_end(), log.high_watermark()), (3, 2));

    // Before the interval, a flush does not rewrite the checkpoint.
    append_in_epoch(&log, 3, 10, 5);
    m.flush();
    assert!(!m.disk.exists(&Path::new(DIR).join(checkpoint::HW_FILE)));
    // After it, the next flush does.
    m.advance(HW_CHECKPOINT_INTERVAL.as_millis() as i64);
    log.set_high_watermark(4);
    append_in_epoch(&log, 3, 10, 5);
    m.flush();
    assert_eq!(log.high_watermark(), 4);
    m.crash(log);

    let log = m.open();
    assert_eq!(
        log.high_watermark(),
        9,
        "single-replica mode: the recovered end"
    );
    log.set_hw_follows_durable_end(false);
    assert_eq!(log.high_watermark(), 4, "replicated mode: the checkpoint");
}

#[test]
fn a_failed_flush_takes_the_log_offline() {
    let m = Machine::new();
    let log = m.open();
    append_in_epoch(&log, 3, 10, 5);
    m.flush();
    append_in_epoch(&log, 3, 10, 5);
    // The segment's handle dies with the crash, so the flusher's write fails.
    let mut offline = Box::pin(log.wait_offline());
    assert!(
        (&mut offline).now_or_never().is_none(),
        "healthy until the flush fails"
    );
    m.disk.crash();
    m.flush();
    assert_eq!(log.durable_end(), 3);
    let reason = ready(offline).expect("the failure, not a close");
    assert_eq!(log.offline_reason(), Some(reason));
    assert!(log.is_offline());
    assert!(matches!(
        ready(log.wait_durable(6)),
        Err(StorageError::Offline(_))
    ));
    let b = expected_batch(0, 1, 10, 7);
    let infos = crate::protocol::record_batch::validate_batches(&b).unwrap();
    assert!(matches!(
        log.append(bytes::BytesMut::from(&b[..]), &infos, 5),
        Err(AppendError::Offline(_))
    ));
}

#[test]
fn a_log_closed_healthy_is_never_offline() {
    let m = Machine::new();
    let log = m.open();
    append_in_epoch(&log, 3, 10, 5);
    m.flush();
    let mut offline = Box::pin(log.wait_offline());
    assert!((&mut offline).now_or_never().is_none());
    ready(log.close()).unwrap();
    assert_eq!(ready(offline), None);
    assert_eq!(log.offline_reason(), None);
}
