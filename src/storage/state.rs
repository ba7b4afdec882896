//! The state of a [`PartitionLog`](super::PartitionLog) in three small types: its positions
//! ([`Offsets`], ordered, checked after every change), what runs on its files
//! ([`LogState`], transitions that assert where they come from) and who waits for what
//! ([`Waiters`]). These checks are `assert!`s: they stay on in release builds, since a log
//! that breaks one would show consumers data that is not durable, or lose data.

use futures::channel::oneshot;

use super::AppendError;

/// The positions of a log. Always `log_start <= high_watermark <= ack_end <= written_end
/// <= pending_end <= log_end` and `synced_end <= ack_end`; every mutation ends by
/// asserting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Offsets {
    log_start: i64,
    /// What consumers may read.
    high_watermark: i64,
    /// Last value asked by `set_high_watermark`; in replicated mode the HW follows the
    /// acknowledged end up to it.
    hw_target: i64,
    /// What the log acknowledges (produce acks, a replica's reported position, the HW's
    /// bound): the synced end under the default flush policy, the written end when the
    /// policy acknowledges before fdatasync. Never lowered but by a truncation, also when
    /// the policy turns strict again.
    ack_end: i64,
    /// Every offset below is fdatasync'ed: the recovery point.
    synced_end: i64,
    /// Every offset below was written to its segment file (it survives a crash of the
    /// process, not a power loss, until it is synced).
    written_end: i64,
    /// End of what was handed to the flusher (appended, maybe not yet written).
    pending_end: i64,
    log_end: i64,
}

impl Offsets {
    /// A log recovered from disk: everything found is written, acknowledged and visible;
    /// synced below `synced_end` (clamped to the log).
    pub fn recovered(log_start: i64, log_end: i64, synced_end: i64) -> Self {
        let offsets = Offsets {
            log_start,
            high_watermark: log_end,
            hw_target: log_end,
            ack_end: log_end,
            synced_end: synced_end.clamp(0, log_end),
            written_end: log_end,
            pending_end: log_end,
            log_end,
        };
        offsets.check();
        offsets
    }

    pub fn log_start(&self) -> i64 {
        self.log_start
    }
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }
    pub fn ack_end(&self) -> i64 {
        self.ack_end
    }
    pub fn synced_end(&self) -> i64 {
        self.synced_end
    }
    pub fn written_end(&self) -> i64 {
        self.written_end
    }
    pub fn pending_end(&self) -> i64 {
        self.pending_end
    }
    pub fn log_end(&self) -> i64 {
        self.log_end
    }

    /// Batches up to `end` (exclusive) were appended and queued for the flusher.
    pub fn appended(&mut self, end: i64) {
        assert!(
            end > self.log_end,
            "append does not extend the log: {end} {self:?}"
        );
        self.log_end = end;
        self.pending_end = end;
        self.check();
    }

    /// Everything below `end` was written to the segment files; with `acknowledge` (a
    /// flush policy that acknowledges before fdatasync) it is acknowledged too. Returns
    /// whether the HW moved.
    pub fn written(&mut self, end: i64, acknowledge: bool, hw_follows_ack: bool) -> bool {
        self.written_end = self.written_end.max(end);
        let ack = if acknowledge {
            self.written_end
        } else {
            self.ack_end
        };
        self.acknowledge(ack, hw_follows_ack)
    }

    /// An fdatasync made everything below `end` durable, so acknowledged. Returns whether
    /// the HW moved.
    pub fn synced(&mut self, end: i64, hw_follows_ack: bool) -> bool {
        self.synced_end = self.synced_end.max(end);
        self.acknowledge(self.synced_end, hw_follows_ack)
    }

    fn acknowledge(&mut self, end: i64, hw_follows_ack: bool) -> bool {
        self.ack_end = self.ack_end.max(end);
        let hw = if hw_follows_ack {
            self.ack_end
        } else {
            self.hw_target.min(self.ack_end)
        };
        self.raise_hw(hw)
    }

    /// Replicated mode: the replication layer's HW; never lowers the target, clamped to the
    /// acknowledged end. Returns whether the HW moved.
    pub fn raise_hw_target(&mut self, hw: i64) -> bool {
        self.hw_target = self.hw_target.max(hw);
        self.raise_hw(self.hw_target.min(self.ack_end))
    }

    /// Back to single-replica mode: the HW is the acknowledged end. Returns whether it
    /// moved.
    pub fn follow_ack_end(&mut self) -> bool {
        self.hw_target = self.hw_target.max(self.ack_end);
        self.raise_hw(self.ack_end)
    }

    /// Replicated mode from a freshly opened log: the HW restarts at `hw` (the checkpoint,
    /// clamped to what the log holds), which may be below the recovered acknowledged end.
    pub fn restart_hw(&mut self, hw: i64) {
        let hw = hw.clamp(self.log_start, self.ack_end.max(self.log_start));
        self.high_watermark = hw;
        self.hw_target = hw;
        self.check();
    }

    /// Retention deleted everything below `start`.
    pub fn advance_start(&mut self, start: i64) {
        assert!(
            start >= self.log_start,
            "log start moves back: {start} {self:?}"
        );
        self.log_start = start;
        self.check();
    }

    /// Before a truncation to `end` removes data: nothing at or past `end` counts as synced.
    pub fn lower_synced_end(&mut self, end: i64) {
        self.synced_end = self.synced_end.min(end);
        self.check();
    }

    /// A truncation removed everything at or after `end` (never below the log start).
    pub fn truncate_to(&mut self, end: i64) {
        assert!(
            end <= self.log_end,
            "truncation extends the log: {end} {self:?}"
        );
        self.log_end = end;
        self.pending_end = end;
        self.written_end = self.written_end.min(end);
        self.ack_end = self.ack_end.min(end);
        self.synced_end = self.synced_end.min(end);
        self.high_watermark = self.high_watermark.min(end);
        self.hw_target = self.hw_target.min(end);
        self.check();
    }

    /// The log was emptied and starts again at `offset`: every position is `offset`.
    pub fn start_at(&mut self, offset: i64) {
        *self = Offsets::recovered(offset, offset, offset);
    }

    fn raise_hw(&mut self, hw: i64) -> bool {
        let moved = hw > self.high_watermark;
        if moved {
            self.high_watermark = hw;
        }
        self.check();
        moved
    }

    fn check(&self) {
        assert!(
            0 <= self.log_start
                && self.log_start <= self.high_watermark
                && self.high_watermark <= self.ack_end
                && self.ack_end <= self.written_end
                && self.written_end <= self.pending_end
                && self.pending_end <= self.log_end
                && 0 <= self.synced_end
                && self.synced_end <= self.ack_end,
            "log offsets out of order: {self:?}"
        );
    }
}

/// What runs on the log's files. The flusher and a truncation never write at the same
/// time: a truncation that starts while a flush runs waits for it to drain, and no flush
/// starts while a truncation holds the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activity {
    Idle,
    Flushing,
    /// Appends are refused. `flush_draining`: the flush it waits for still runs.
    Truncating {
        flush_draining: bool,
    },
}

/// The lifecycle of a log: [`Activity`], whether it was closed, and whether a storage
/// error took it offline (for good: a failed write or fdatasync is never retried).
#[derive(Debug)]
pub(crate) struct LogState {
    activity: Activity,
    closed: bool,
    failure: Option<String>,
}

impl LogState {
    pub fn open() -> Self {
        LogState {
            activity: Activity::Idle,
            closed: false,
            failure: None,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }
    pub fn is_flushing(&self) -> bool {
        matches!(
            self.activity,
            Activity::Flushing
                | Activity::Truncating {
                    flush_draining: true
                }
        )
    }
    pub fn is_truncating(&self) -> bool {
        matches!(self.activity, Activity::Truncating { .. })
    }
    /// No flush or truncation runs.
    pub fn is_idle(&self) -> bool {
        self.activity == Activity::Idle
    }

    /// Appends are accepted only on an open, healthy log that no truncation holds.
    pub fn check_writable(&self) -> Result<(), AppendError> {
        if self.closed || self.is_truncating() {
            return Err(AppendError::Closed);
        }
        if let Some(msg) = &self.failure {
            return Err(AppendError::Offline(msg.clone()));
        }
        Ok(())
    }

    /// Idle -> Flushing.
    pub fn start_flush(&mut self) {
        assert_eq!(self.activity, Activity::Idle, "flush started while busy");
        self.activity = Activity::Flushing;
    }

    /// Flushing -> Idle, or a waiting truncation takes over.
    pub fn end_flush(&mut self) {
        self.activity = match self.activity {
            Activity::Flushing => Activity::Idle,
            Activity::Truncating {
                flush_draining: true,
            } => Activity::Truncating {
                flush_draining: false,
            },
            other => panic!("flush ended while none ran: {other:?}"),
        };
    }

    /// Idle or Flushing -> Truncating, on an open, healthy log.
    pub fn begin_truncation(&mut self) {
        assert!(
            !self.closed && self.failure.is_none(),
            "truncation of a closed or failed log"
        );
        self.activity = match self.activity {
            Activity::Idle => Activity::Truncating {
                flush_draining: false,
            },
            Activity::Flushing => Activity::Truncating {
                flush_draining: true,
            },
            other => panic!("truncation started while one runs: {other:?}"),
        };
    }

    /// Truncating -> Idle (or back to Flushing if the flush it waited for still runs).
    pub fn end_truncation(&mut self) {
        self.activity = match self.activity {
            Activity::Truncating { flush_draining } if flush_draining => Activity::Flushing,
            Activity::Truncating { .. } => Activity::Idle,
            other => panic!("truncation ended while none ran: {other:?}"),
        };
    }

    /// Idempotent: `remove` closes a log that may already be closed.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Healthy -> Failed; a log fails once.
    pub fn fail(&mut self, msg: String) {
        assert!(
            self.failure.is_none(),
            "log failed twice: {:?}, then {msg}",
            self.failure
        );
        self.failure = Some(msg);
    }
}

/// Everyone waiting on a log, by what they wait for.
#[derive(Default)]
pub(crate) struct Waiters {
    /// `wait_durable`: answered once the durable end reaches the offset, or with the
    /// failure.
    durable_offsets: Vec<(i64, oneshot::Sender<Result<(), String>>)>,
    /// `wait_for_data`: woken when the HW moves.
    hw_moved: Vec<oneshot::Sender<()>>,
    /// `wait_for_appended`: woken when the log end moves.
    appended: Vec<oneshot::Sender<()>>,
    /// Truncation and close: woken when the flusher stops.
    flush_idle: Vec<oneshot::Sender<()>>,
    /// Truncation and close: woken when a truncation ends.
    truncation_done: Vec<oneshot::Sender<()>>,
    /// `wait_offline`: woken when the log fails or closes.
    failed_or_closed: Vec<oneshot::Sender<()>>,
}

fn wake(list: &mut Vec<oneshot::Sender<()>>) {
    for w in list.drain(..) {
        let _ = w.send(());
    }
}

fn register(list: &mut Vec<oneshot::Sender<()>>) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    list.push(tx);
    rx
}

impl Waiters {
    pub fn wait_durable_offset(&mut self, end: i64) -> oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        self.durable_offsets.push((end, tx));
        rx
    }

    /// `log_end`: for the log end to move, else for the HW to move. Drops the senders of
    /// waiters that gave up (their deadline passed) so the lists stay short.
    pub fn wait_position(&mut self, log_end: bool) -> oneshot::Receiver<()> {
        let list = if log_end {
            &mut self.appended
        } else {
            &mut self.hw_moved
        };
        list.retain(|tx| !tx.is_canceled());
        register(list)
    }

    pub fn wait_flush_idle(&mut self) -> oneshot::Receiver<()> {
        register(&mut self.flush_idle)
    }

    pub fn wait_truncation_done(&mut self) -> oneshot::Receiver<()> {
        register(&mut self.truncation_done)
    }

    pub fn wait_failed_or_closed(&mut self) -> oneshot::Receiver<()> {
        register(&mut self.failed_or_closed)
    }

    pub fn failed_or_closed(&mut self) {
        wake(&mut self.failed_or_closed);
    }

    pub fn hw_moved(&mut self) {
        wake(&mut self.hw_moved);
    }

    /// The log end moved.
    pub fn appended(&mut self) {
        wake(&mut self.appended);
    }

    /// The durable end moved to `durable_end`.
    pub fn durable_moved(&mut self, durable_end: i64) {
        let (done, waiting) = std::mem::take(&mut self.durable_offsets)
            .into_iter()
            .partition::<Vec<_>, _>(|(e, _)| *e <= durable_end);
        self.durable_offsets = waiting;
        for (_, tx) in done {
            let _ = tx.send(Ok(()));
        }
    }

    /// Wakes every position waiter (they recheck and return: closed, failed, truncated).
    pub fn wake_positions(&mut self) {
        wake(&mut self.hw_moved);
        wake(&mut self.appended);
    }

    pub fn fail_durable_offsets(&mut self, msg: &str) {
        for (_, tx) in self.durable_offsets.drain(..) {
            let _ = tx.send(Err(msg.to_string()));
        }
    }

    /// Waiters for truncated offsets would be completed by different data later: they get
    /// `Closed`.
    pub fn forget_beyond(&mut self, end: i64) {
        self.durable_offsets.retain(|(e, _)| *e <= end);
    }

    pub fn forget_durable_offsets(&mut self) {
        self.durable_offsets.clear();
    }

    pub fn flush_idle(&mut self) {
        wake(&mut self.flush_idle);
    }

    pub fn truncation_done(&mut self) {
        wake(&mut self.truncation_done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_keep_their_order() {
        let mut o = Offsets::recovered(0, 10, 10);
        o.appended(15);
        assert_eq!((o.ack_end(), o.pending_end(), o.log_end()), (10, 15, 15));
        // The default policy: written is not acknowledged, synced is.
        assert!(!o.written(15, false, true));
        assert_eq!((o.written_end(), o.ack_end()), (15, 10));
        assert!(!o.synced(15, false) && o.raise_hw_target(20));
        assert_eq!((o.high_watermark(), o.synced_end()), (15, 15));
        o.truncate_to(12);
        assert_eq!(
            (o.high_watermark(), o.ack_end(), o.synced_end(), o.log_end()),
            (12, 12, 12, 12)
        );
        o.start_at(30);
        assert_eq!(
            (o.log_start(), o.high_watermark(), o.log_end()),
            (30, 30, 30)
        );
    }

    #[test]
    fn a_relaxed_policy_acknowledges_the_written_end_ahead_of_the_synced_end() {
        let mut o = Offsets::recovered(0, 10, 4);
        assert_eq!((o.synced_end(), o.ack_end()), (4, 10));
        o.appended(20);
        assert!(o.written(20, true, true));
        assert_eq!(
            (o.high_watermark(), o.ack_end(), o.synced_end()),
            (20, 20, 4)
        );
        // The policy turns strict: what was acknowledged stays so.
        o.appended(25);
        assert!(!o.written(25, false, true));
        assert_eq!((o.ack_end(), o.written_end()), (20, 25));
        assert!(!o.synced(12, true));
        assert!(o.synced(25, true));
        assert_eq!((o.high_watermark(), o.synced_end()), (25, 25));
        o.lower_synced_end(22);
        assert_eq!((o.synced_end(), o.ack_end()), (22, 25));
    }

    #[test]
    #[should_panic(expected = "log offsets out of order")]
    fn a_log_start_past_the_high_watermark_trips_the_assertion() {
        let mut o = Offsets::recovered(0, 10, 10);
        o.restart_hw(0);
        o.advance_start(5);
    }

    #[test]
    #[should_panic(expected = "log offsets out of order")]
    fn a_write_past_the_log_end_trips_the_assertion() {
        let mut o = Offsets::recovered(0, 10, 10);
        o.written(11, true, true);
    }

    #[test]
    #[should_panic(expected = "log offsets out of order")]
    fn a_sync_past_the_written_end_trips_the_assertion() {
        let mut o = Offsets::recovered(0, 10, 10);
        o.appended(12);
        o.synced(12, true);
    }

    #[test]
    #[should_panic(expected = "flush started while busy")]
    fn no_flush_starts_while_a_truncation_holds_the_log() {
        let mut s = LogState::open();
        s.begin_truncation();
        s.start_flush();
    }

    #[test]
    fn a_truncation_waits_for_the_running_flush() {
        let mut s = LogState::open();
        s.start_flush();
        s.begin_truncation();
        assert!(s.is_flushing() && s.is_truncating());
        assert_eq!(s.check_writable(), Err(AppendError::Closed));
        s.end_flush();
        assert!(!s.is_flushing() && s.is_truncating());
        s.end_truncation();
        assert!(s.is_idle());
    }

    #[test]
    #[should_panic(expected = "log failed twice")]
    fn a_log_fails_once() {
        let mut s = LogState::open();
        s.fail("a".into());
        s.fail("b".into());
    }
}
