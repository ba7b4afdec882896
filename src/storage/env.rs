//! What a [`PartitionLog`] is opened with besides its directory and settings: the disk it
//! stores its files on, the clock it reads, how its flusher gets to run, and the shard's tail
//! caches it joins. The log reads no clock and spawns no task by itself, so a simulation can
//! drive it from its own clock and events.

use std::rc::Rc;
use std::time::Instant;

use futures::FutureExt;
use futures::future::LocalBoxFuture;

use super::PartitionLog;
use super::counters::StorageCounters;
use super::disk::{Disk, DmaDisk};
use super::recovery_points::ShardRecoveryPoints;
use super::tail_cache::ShardTailCache;

/// Time as the log sees it.
pub trait Clock {
    /// Wall-clock milliseconds since the epoch: segment ages, `segment.ms` rolls.
    fn now_ms(&self) -> i64;
    /// Monotonic time: deadlines of `wait_for_data`, the HW checkpoint interval.
    fn now(&self) -> Instant;
    /// Resolves at `deadline` (at once if it passed).
    fn sleep_until(&self, deadline: Instant) -> LocalBoxFuture<'static, ()>;
}

/// The machine's clocks and the runtime's timer.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        super::now_ms()
    }
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep_until(&self, deadline: Instant) -> LocalBoxFuture<'static, ()> {
        crate::runtime::sleep(deadline.saturating_duration_since(Instant::now()))
            .map(|_| ())
            .boxed_local()
    }
}

/// Called when a log has pending writes (or a sync is due) and no flusher runs: the owner
/// must make [`PartitionLog::run_flusher`] run once for this call (production: a task on
/// the runtime; a simulation: records that a flush is due and runs it when it chooses).
/// When `run_flusher` returns an instant (written data waits for `flush.ms`), the owner
/// calls [`PartitionLog::sync_timer_fired`] at that time, and again at the instant it
/// returns.
pub type FlushHook = Rc<dyn Fn(Rc<PartitionLog>)>;

/// The log's surroundings. [`LogEnv::production`] is the broker's; a test or a simulation
/// builds its own (e.g. over `mem_disk::MemDisk`).
#[derive(Clone)]
pub struct LogEnv {
    pub disk: Rc<dyn Disk>,
    pub clock: Rc<dyn Clock>,
    pub start_flusher: FlushHook,
    /// The shard's tail caches: every log opened on this env shares its budget.
    pub tail_cache: ShardTailCache,
    /// The shard's counters: every log opened on this env adds to them.
    pub counters: Rc<StorageCounters>,
    /// The shard's recovery-point checkpoint: every log opened on this env starts from it
    /// and is written to it.
    pub recovery_points: Rc<ShardRecoveryPoints>,
}

impl LogEnv {
    /// O_DIRECT files, the system clock, the flusher spawned as a detached task on the
    /// current shard (it owns an `Rc` of the log until the queue is empty and the sync
    /// timer it asked for fired), the shard's `tail_cache` and `recovery_points`, with
    /// fresh counters.
    pub fn production(tail_cache: ShardTailCache, recovery_points: ShardRecoveryPoints) -> Self {
        LogEnv {
            disk: Rc::new(DmaDisk),
            clock: Rc::new(SystemClock),
            start_flusher: Rc::new(|log: Rc<PartitionLog>| {
                drop(crate::runtime::spawn_local(flush_and_time_syncs(log)).detach());
            }),
            tail_cache,
            counters: Rc::default(),
            recovery_points: Rc::new(recovery_points),
        }
    }

    /// Rewrites the shard's recovery-point file if a recovery point moved (the owner calls
    /// it every `log.flush.offset.checkpoint.interval.ms`). Returns whether it wrote.
    pub async fn checkpoint_recovery_points(&self) -> Result<bool, super::StorageError> {
        self.recovery_points.write_if_changed(&*self.disk).await
    }
}

/// One run of the flusher, then the sync timer it may ask for (at most one per log).
async fn flush_and_time_syncs(log: Rc<PartitionLog>) {
    let mut timer = log.clone().run_flusher().await;
    while let Some(at) = timer {
        SystemClock.sleep_until(at).await;
        timer = log.sync_timer_fired();
    }
}
