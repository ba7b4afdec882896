//! One partition replica on the shard that owns it: its log, its replication state (a
//! [`Partition`], the pure decisions) and the shell that carries the decisions out: appends
//! and reads on the log, acks answered on channels, ISR changes sent to the controller.
//!
//! Lifecycle: created when a metadata image first assigns the partition to this broker,
//! re-labelled leader or follower by every later image (`apply`), dropped when the topic is
//! deleted. Lives on exactly one shard; never shared across cores. No `RefCell` borrow of it
//! is held across an `.await`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::future::{Either, LocalBoxFuture, select};
use uuid::Uuid;

use super::partition::{
    AckId, Effects, FollowerFetch, FollowerRead, IsrAnswer, IsrNext, IsrProposal, Partition,
};
use crate::cluster::PartitionState;
use crate::cluster::commands::{IsrChange, OfflinePartition};
use crate::protocol::ErrorCode;
use crate::protocol::record_batch::BatchInfo;
use crate::runtime::{delay, spawn_local};
use crate::storage::{AppendError, PartitionLog, ReadBatches, Records, StorageError, now_ms};

const NONE: i16 = 0;

/// Sends an ISR change to the active controller and reports its answer.
pub type AlterPartition = Rc<dyn Fn(IsrChange) -> LocalBoxFuture<'static, IsrAnswer>>;

/// Reports this broker's replica of a partition offline to the active controller; resolves
/// with whether the controller committed the report.
pub type ReportOffline = Rc<dyn Fn(OfflinePartition) -> LocalBoxFuture<'static, bool>>;

/// How long an offline replica waits before reporting again after a report failed.
const OFFLINE_REPORT_RETRY: Duration = Duration::from_millis(200);

/// What a replica needs from the broker around it.
pub struct ReplicaHost {
    pub node_id: i32,
    pub alter_partition: AlterPartition,
    pub report_offline: ReportOffline,
    pub stopping: std::cell::Cell<bool>,
    /// What fetchers connect to leaders with when the inter-broker listener is TLS.
    pub inter_broker_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl ReplicaHost {
    /// Reports an offline replica (a log a storage error failed, or one that could not be
    /// opened) until the controller commits it, so its leadership and ISR membership move
    /// to healthy replicas (Kafka's log directory failure handling, KIP-112).
    pub async fn report_offline_until_committed(&self, partition: OfflinePartition, reason: &str) {
        tracing::error!(
            topic = partition.topic,
            partition = partition.partition,
            reason,
            "replica offline; reporting it to the controller"
        );
        while !self.stopping.get() {
            if (self.report_offline)(partition.clone()).await {
                tracing::info!(
                    topic = partition.topic,
                    partition = partition.partition,
                    "the controller took the offline replica out of the ISR"
                );
                return;
            }
            delay(OFFLINE_REPORT_RETRY).await;
        }
    }
}

pub struct Replica {
    pub topic: String,
    pub partition: i32,
    pub topic_id: Uuid,
    pub log: Rc<PartitionLog>,
    state: RefCell<Partition>,
    /// acks=all produces waiting for the partition's answer.
    waiting: RefCell<HashMap<AckId, oneshot::Sender<i16>>>,
    host: Rc<ReplicaHost>,
}

/// A produce's batches appended to the leader's log; its answer is still to come.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub base_offset: i64,
    pub log_start_offset: i64,
    end_offset: i64,
    leader_epoch: i32,
}

/// How much one partition's read may return (KIP-74).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadLimit {
    pub max_bytes: usize,
    /// Whether one whole batch is returned even if larger than `max_bytes`: only until some
    /// partition of the response returned data, so a consumer always makes progress.
    pub min_one: bool,
}

impl ReadLimit {
    fn is_spent(&self) -> bool {
        self.max_bytes == 0 && !self.min_one
    }
}

/// One partition of a fetch answer, as read on the owning shard.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    pub error: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// Whole batches as read (tail-cache entries, disk reads): the response splices them
    /// in as they are.
    pub records: ReadBatches,
    /// For a follower whose log diverged: the epoch and end offset to truncate to.
    pub diverging_epoch: Option<(i32, i64)>,
}

impl Fetched {
    pub fn error(code: i16) -> Self {
        Self {
            error: code,
            high_watermark: -1,
            log_start_offset: -1,
            ..Self::default()
        }
    }
}

impl Replica {
    pub fn new(
        topic: String,
        partition: i32,
        topic_id: Uuid,
        log: Rc<PartitionLog>,
        host: Rc<ReplicaHost>,
    ) -> Self {
        Self {
            topic,
            partition,
            topic_id,
            log,
            state: RefCell::new(Partition::new(host.node_id)),
            waiting: RefCell::new(HashMap::new()),
            host,
        }
    }

    /// This replica as a report of it offline names it.
    pub fn offline_partition(&self) -> OfflinePartition {
        OfflinePartition {
            topic: self.topic.clone(),
            topic_id: self.topic_id,
            partition: self.partition,
        }
    }

    /// Waits until a storage error takes the log offline, then reports it; ends without a
    /// report when the log closes healthy (shutdown, topic deleted).
    pub async fn report_when_offline(self: Rc<Self>) {
        if let Some(reason) = self.log.wait_offline().await {
            self.host
                .report_offline_until_committed(self.offline_partition(), &reason)
                .await;
        }
    }

    /// The leader this follower replicates from and its epoch, if it follows one.
    pub fn following(&self) -> Option<(i32, i32)> {
        self.state.borrow().following()
    }

    /// The leader epoch, when leading.
    pub fn leader_epoch(&self) -> Option<i32> {
        self.state.borrow().leader_epoch()
    }

    /// Follows the controller's latest decision for this partition. A single-replica
    /// partition's high watermark follows its durable end; a replicated one's moves only
    /// with the ISR's progress.
    pub fn apply(self: &Rc<Self>, state: &PartitionState, now_ms: i64, min_isr: usize) {
        let leads = state.leader == self.host.node_id;
        self.log
            .set_hw_follows_durable_end(state.replicas.len() == 1 && leads);
        let (durable_end, high_watermark) = (self.log.durable_end(), self.log.high_watermark());
        let effects = self.state.borrow_mut().on_metadata(
            state,
            durable_end,
            high_watermark,
            now_ms,
            min_isr,
        );
        self.carry_out(effects);
    }

    /// Appends a produce's validated batches, synchronously so requests keep their order,
    /// stamped with this leadership's epoch. A retried batch already in the log answers
    /// as the first time would.
    pub fn append(
        &self,
        acks: i16,
        records: impl Into<Records>,
        infos: &[BatchInfo],
    ) -> Result<Appended, i16> {
        let leader_epoch = self
            .state
            .borrow()
            .check_produce(acks)
            .map_err(|e| e.code())?;
        let count: i64 = infos
            .iter()
            .map(|b| i64::from(b.last_offset_delta) + 1)
            .sum();
        let log_start_offset = self.log.log_start_offset();
        let base_offset = match self.log.append(records, infos, leader_epoch) {
            Ok(info) => info.base_offset,
            Err(AppendError::DuplicateSequence { base_offset }) => base_offset,
            Err(e) => return Err(append_error_code(&e)),
        };
        Ok(Appended {
            base_offset,
            log_start_offset,
            end_offset: base_offset + count,
            leader_epoch,
        })
    }

    /// The answer to an appended produce: once it is on the leader's disk (acks=1), and with
    /// acks=-1 once the partition says the ISR has it, within `timeout`.
    pub async fn complete(
        self: &Rc<Self>,
        appended: Appended,
        acks: i16,
        timeout: Duration,
    ) -> i16 {
        let deadline = Instant::now() + timeout;
        let deadline_ms = now_ms() + timeout.as_millis() as i64;
        if let Err(e) = self.log.wait_durable(appended.end_offset).await {
            tracing::error!("append not made durable: {e}");
            return ErrorCode::KafkaStorageError.code();
        }
        let effects = self.state.borrow_mut().on_durable(self.log.durable_end());
        self.carry_out(effects);
        if acks != -1 {
            return NONE;
        }
        let awaited = self.state.borrow_mut().await_commit(
            appended.end_offset,
            appended.leader_epoch,
            deadline_ms,
        );
        let id = match awaited {
            Ok(code) => return code,
            Err(id) => id,
        };
        let (tx, mut rx) = oneshot::channel();
        self.waiting.borrow_mut().insert(id, tx);
        let timer = Box::pin(delay(deadline.saturating_duration_since(Instant::now())));
        let answer = match select(&mut rx, timer).await {
            Either::Left((answer, _)) => answer,
            Either::Right(_) => {
                // The deadline came: the partition answers what it decides at that time.
                let effects = self.state.borrow_mut().expire(deadline_ms);
                self.carry_out(effects);
                rx.await
            }
        };
        // A dropped sender: the replica went away with its topic.
        answer.unwrap_or_else(|_| ErrorCode::NotLeaderOrFollower.code())
    }

    /// An acks=0 append has no answer to wait for, but on a replicated partition the
    /// leader's own fdatasync may be the event that moves the high watermark (its followers
    /// may have the batch first): a task waits for it, as an acks=1 answer would.
    pub fn advance_when_durable(self: &Rc<Self>, appended: Appended) {
        if !self.state.borrow().leads_followers() {
            return;
        }
        let replica = self.clone();
        spawn_local(async move {
            replica.complete(appended, 0, Duration::ZERO).await;
        })
        .detach();
    }

    /// Reads for a consumer (up to the high watermark) or, with `follower`, for a replica
    /// (up to the leader's log end, after the partition's checks and the follower's
    /// bookkeeping), within `limit`.
    pub async fn read(
        self: &Rc<Self>,
        offset: i64,
        limit: ReadLimit,
        follower: Option<FollowerFetch>,
    ) -> Fetched {
        let log = &self.log;
        let mut fetched = Fetched {
            high_watermark: log.high_watermark(),
            log_start_offset: log.log_start_offset(),
            ..Fetched::error(NONE)
        };
        let visible_end = match follower.map(|fetch| self.on_follower_fetch(fetch)) {
            Some(FollowerRead::Diverging { epoch, end_offset }) => {
                fetched.diverging_epoch = Some((epoch, end_offset));
                return fetched;
            }
            Some(FollowerRead::Refused(code)) => {
                fetched.error = code.code();
                return fetched;
            }
            Some(FollowerRead::Records { end }) => end,
            None => log.high_watermark(),
        };
        // Between the visible end and the log end the data exists but is not yet visible;
        // a spent budget reads nothing either (Kafka's limitBytes of 0).
        let in_log = offset >= log.log_start_offset() && offset <= log.log_end_offset();
        if in_log && (offset >= visible_end || limit.is_spent()) {
            return fetched;
        }
        match log.read(offset, limit.max_bytes, visible_end).await {
            // One batch larger than what is left: for a later fetch (Kafka answers such a
            // partition empty once an earlier one returned data).
            Ok(batches) if !limit.min_one && batches.total_len > limit.max_bytes => {}
            Ok(batches) => fetched.records = batches,
            Err(StorageError::OffsetOutOfRange { .. }) => {
                fetched.error = ErrorCode::OffsetOutOfRange.code()
            }
            Err(e) => {
                tracing::error!("read of {}-{} failed: {e}", self.topic, self.partition);
                fetched.error = ErrorCode::KafkaStorageError.code();
            }
        }
        fetched
    }

    fn on_follower_fetch(self: &Rc<Self>, fetch: FollowerFetch) -> FollowerRead {
        let durable_end = self.log.durable_end();
        let (read, effects) = self.state.borrow_mut().on_follower_fetch(
            fetch,
            self.log.as_ref(),
            durable_end,
            now_ms(),
        );
        self.carry_out(effects);
        read
    }

    /// Every `replica.lag.time.max.ms / 2`: drops followers that stopped catching up.
    pub fn shrink_check(self: &Rc<Self>, now_ms: i64, lag_max_ms: i64) {
        let effects = self.state.borrow_mut().shrink_check(now_ms, lag_max_ms);
        self.carry_out(effects);
    }

    /// Publishes the high watermark, answers the decided acks, sends an ISR change.
    fn carry_out(self: &Rc<Self>, effects: Effects) {
        if let Some(hw) = effects.high_watermark {
            self.log.set_high_watermark(hw);
        }
        for (id, code) in effects.acks {
            let waiting = self.waiting.borrow_mut().remove(&id);
            if let Some(tx) = waiting {
                let _ = tx.send(code);
            }
        }
        if let Some(proposal) = effects.propose_isr {
            spawn_local(send_isr_change(self.clone(), proposal)).detach();
        }
    }
}

/// Sends an ISR change to the controller until the partition says it is settled
/// ([`Partition::on_isr_answer`] decides; this loop only carries it).
async fn send_isr_change(replica: Rc<Replica>, proposal: IsrProposal) {
    tracing::info!(
        topic = replica.topic,
        partition = replica.partition,
        isr = ?proposal.isr,
        "proposing an ISR change"
    );
    while replica.state.borrow().is_pending(&proposal) && !replica.host.stopping.get() {
        let change = IsrChange {
            topic: replica.topic.clone(),
            partition: replica.partition,
            leader: replica.host.node_id,
            leader_epoch: proposal.leader_epoch,
            partition_epoch: proposal.partition_epoch,
            isr: proposal.isr.clone(),
        };
        let answer = (replica.host.alter_partition)(change).await;
        if let IsrAnswer::Refused(code) = answer {
            tracing::info!(code, "ISR change refused");
        }
        let now = now_ms();
        let next = replica
            .state
            .borrow_mut()
            .on_isr_answer(&proposal, answer, now);
        match next {
            IsrNext::Done => return,
            IsrNext::ResendAt(at) => delay(Duration::from_millis((at - now).max(0) as u64)).await,
        }
    }
}

pub(crate) fn append_error_code(e: &AppendError) -> i16 {
    match e {
        AppendError::OutOfOrderSequence => ErrorCode::OutOfOrderSequenceNumber.code(),
        AppendError::InvalidProducerEpoch => ErrorCode::InvalidProducerEpoch.code(),
        AppendError::DuplicateSequence { .. } => NONE,
        AppendError::InvalidBatch => ErrorCode::CorruptMessage.code(),
        AppendError::Offline(_) => ErrorCode::KafkaStorageError.code(),
        AppendError::Closed => ErrorCode::NotLeaderOrFollower.code(),
    }
}
