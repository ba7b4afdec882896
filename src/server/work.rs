//! Per-partition work a connection's shard hands to the owning shard, and how the owner does
//! it. One message carries every partition of a request that the target shard owns.
//!
//! `slot` is the partition's place in the request, so the connection's shard can put each
//! outcome back where the response expects it.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::{FutureExt, LocalBoxFuture};

use crate::protocol::ErrorCode;
use crate::protocol::record_batch::BatchInfo;
use crate::replication::partition::FollowerFetch as ReplicaFetch;
use crate::replication::replica::{Appended, Fetched, ReadLimit, Replica};
use crate::replication::replicas::ReplicaSet;
use crate::storage::{ReadBatches, Records};

const NONE: i16 = 0;

pub struct ProducePart {
    pub slot: usize,
    pub topic: String,
    pub partition: i32,
    /// A slice of the request frame, with that frame's memory.
    pub records: Records,
    pub infos: Vec<BatchInfo>,
}

pub struct ProduceWork {
    /// 0 answers right after the append; 1 after the batch is on the leader's disk; -1
    /// once the high watermark (every ISR member's durable log end) passed it.
    pub acks: i16,
    /// How long acks=-1 may wait for the ISR.
    pub timeout: Duration,
    pub parts: Vec<ProducePart>,
}

#[derive(Debug, Clone)]
pub struct ProduceOutcome {
    pub slot: usize,
    pub error: i16,
    pub base_offset: i64,
    pub log_start_offset: i64,
}

/// Appends done, durability not yet awaited.
pub struct PendingProduce {
    acks: i16,
    timeout: Duration,
    outcomes: Vec<ProduceOutcome>,
    /// The appended parts whose answer waits: (outcome index, replica, what was appended).
    waits: Vec<(usize, Rc<Replica>, Appended)>,
}

/// Appends every part in order, synchronously: the order in which produce requests reach
/// this shard is the order their batches get offsets.
pub fn append(replicas: &ReplicaSet, work: ProduceWork) -> PendingProduce {
    let mut pending = PendingProduce {
        acks: work.acks,
        timeout: work.timeout,
        outcomes: Vec::with_capacity(work.parts.len()),
        waits: Vec::new(),
    };
    for part in work.parts {
        let mut outcome = ProduceOutcome {
            slot: part.slot,
            error: NONE,
            base_offset: -1,
            log_start_offset: -1,
        };
        match replicas.serving(&part.topic, part.partition) {
            Err(code) => outcome.error = code.code(),
            Ok(replica) => match replica.append(work.acks, part.records, &part.infos) {
                Ok(appended) => {
                    outcome.base_offset = appended.base_offset;
                    outcome.log_start_offset = appended.log_start_offset;
                    if work.acks != 0 {
                        pending
                            .waits
                            .push((pending.outcomes.len(), replica, appended));
                    } else {
                        replica.advance_when_durable(appended);
                    }
                }
                Err(code) => outcome.error = code,
            },
        }
        pending.outcomes.push(outcome);
    }
    pending
}

impl PendingProduce {
    /// Waits until every appended batch is durable (one fdatasync serves many appends),
    /// and with acks=-1 until its partition says the ISR has it.
    pub async fn finish(mut self) -> Vec<ProduceOutcome> {
        let (acks, timeout) = (self.acks, self.timeout);
        let waits = std::mem::take(&mut self.waits);
        let answers = waits
            .iter()
            .map(|(_, replica, appended)| replica.complete(*appended, acks, timeout));
        let codes = futures::future::join_all(answers).await;
        for ((index, _, _), code) in waits.iter().zip(codes) {
            self.outcomes[*index].error = code;
        }
        self.outcomes
    }
}

pub struct FetchPart {
    pub slot: usize,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub max_bytes: usize,
    /// Set when a follower fetches: its broker id and the epoch of its last batch.
    pub follower: Option<FollowerFetch>,
}

#[derive(Debug, Clone, Copy)]
pub struct FollowerFetch {
    pub replica_id: i32,
    pub last_fetched_epoch: i32,
    pub current_leader_epoch: i32,
}

pub struct FetchWork {
    pub parts: Vec<FetchPart>,
    /// What is left of the response's byte budget when this shard's turn comes.
    pub budget: FetchBudget,
}

/// The bytes a fetch response may still take (Kafka's `limitBytes` in
/// `ReplicaManager.readFromLog`): spent as partitions are read, in request order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FetchBudget {
    pub bytes_left: usize,
    /// No partition returned data yet: the next one returns at least a whole batch.
    pub min_one: bool,
}

impl FetchBudget {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            bytes_left: max_bytes,
            min_one: true,
        }
    }

    /// What a partition with its own limit `partition_max_bytes` may read now.
    pub fn limit(&self, partition_max_bytes: usize) -> ReadLimit {
        ReadLimit {
            max_bytes: partition_max_bytes.min(self.bytes_left),
            min_one: self.min_one,
        }
    }

    /// A partition returned `len` bytes.
    pub fn spend(&mut self, len: usize) {
        if len > 0 {
            self.min_one = false;
            self.bytes_left = self.bytes_left.saturating_sub(len);
        }
    }
}

#[derive(Debug, Clone)]
pub struct FetchOutcome {
    pub slot: usize,
    pub error: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// As read: chunks, never copied together.
    pub records: ReadBatches,
    /// For a follower whose log diverged: the epoch and end offset to truncate to.
    pub diverging_epoch: Option<(i32, i64)>,
}

impl FetchOutcome {
    pub fn empty(slot: usize, error: i16) -> Self {
        Self {
            slot,
            error,
            high_watermark: -1,
            log_start_offset: -1,
            records: ReadBatches::default(),
            diverging_epoch: None,
        }
    }
}

/// Reads the parts in order, each up to its own byte limit and to what is left of the
/// response's budget: consumers never above the high watermark, followers up to the log end.
pub async fn read(replicas: Rc<ReplicaSet>, work: FetchWork) -> Vec<FetchOutcome> {
    let image = replicas.image();
    let mut budget = work.budget;
    let mut outcomes = Vec::with_capacity(work.parts.len());
    for part in work.parts {
        let fetched = match replicas.serving(&part.topic, part.partition) {
            Err(code) => Fetched::error(code.code()),
            Ok(replica) => {
                let follower = part.follower.map(|f| ReplicaFetch {
                    replica_id: f.replica_id,
                    fetch_offset: part.offset,
                    last_fetched_epoch: f.last_fetched_epoch,
                    current_leader_epoch: f.current_leader_epoch,
                    live: image.is_live(f.replica_id)
                        && !image.shutting_down.contains(&f.replica_id),
                });
                let limit = budget.limit(part.max_bytes);
                replica.read(part.offset, limit, follower).await
            }
        };
        budget.spend(fetched.records.total_len);
        outcomes.push(FetchOutcome {
            slot: part.slot,
            error: fetched.error,
            high_watermark: fetched.high_watermark,
            log_start_offset: fetched.log_start_offset,
            records: fetched.records,
            diverging_epoch: fetched.diverging_epoch,
        });
    }
    outcomes
}

pub struct WaitWork {
    /// (topic, partition, offset the fetch wants next)
    pub parts: Vec<(String, i32, i64)>,
    pub deadline: Instant,
    /// A follower's fetch waits for appended data; a consumer's for the high watermark.
    pub follower: bool,
}

/// Resolves as soon as any of the partitions has data at or past its offset, or at the
/// deadline. Woken by appends becoming visible, not by polling.
pub async fn wait_for_data(replicas: Rc<ReplicaSet>, work: WaitWork) {
    let waits: Vec<LocalBoxFuture<'static, ()>> = work
        .parts
        .iter()
        .filter_map(|(topic, partition, offset)| {
            let log = replicas.get(topic, *partition)?.log.clone();
            let (offset, deadline, follower) = (*offset, work.deadline, work.follower);
            Some(
                async move {
                    if follower {
                        log.wait_for_appended(offset, deadline).await
                    } else {
                        log.wait_for_data(offset, deadline).await
                    }
                }
                .boxed_local(),
            )
        })
        .collect();
    if !waits.is_empty() {
        futures::future::select_all(waits).await;
    }
}

pub struct ListOffsetsPart {
    pub slot: usize,
    pub topic: String,
    pub partition: i32,
    pub query: OffsetQuery,
}

/// What offset a ListOffsets or OffsetForLeaderEpoch request asks for.
#[derive(Debug, Clone, Copy)]
pub enum OffsetQuery {
    /// -1 latest, -2 earliest, otherwise a timestamp in ms.
    Timestamp(i64),
    /// The end of a leader epoch: the start of the next one, or the log end (KIP-101).
    EpochEnd(i32),
}

pub struct ListOffsetsWork {
    pub parts: Vec<ListOffsetsPart>,
}

#[derive(Debug, Clone)]
pub struct ListOffsetsOutcome {
    pub slot: usize,
    pub error: i16,
    pub offset: i64,
    pub timestamp: i64,
    /// The epoch an EpochEnd query resolved to.
    pub leader_epoch: i32,
}

impl ListOffsetsOutcome {
    pub fn empty(slot: usize, error: i16) -> Self {
        Self {
            slot,
            error,
            offset: -1,
            timestamp: -1,
            leader_epoch: -1,
        }
    }
}

pub const LATEST_TIMESTAMP: i64 = -1;
pub const EARLIEST_TIMESTAMP: i64 = -2;

pub async fn list_offsets(
    replicas: Rc<ReplicaSet>,
    work: ListOffsetsWork,
) -> Vec<ListOffsetsOutcome> {
    let mut outcomes = Vec::with_capacity(work.parts.len());
    for part in work.parts {
        let mut outcome = ListOffsetsOutcome::empty(part.slot, NONE);
        let log = replicas
            .serving(&part.topic, part.partition)
            .map(|r| r.log.clone());
        match (log, part.query) {
            (Err(code), _) => outcome.error = code.code(),
            (Ok(log), OffsetQuery::EpochEnd(epoch)) => {
                if let Some((epoch, end)) = log.end_offset_for_epoch(epoch) {
                    outcome.leader_epoch = epoch;
                    outcome.offset = end;
                }
            }
            (Ok(log), OffsetQuery::Timestamp(timestamp)) => match timestamp {
                LATEST_TIMESTAMP => outcome.offset = log.high_watermark(),
                EARLIEST_TIMESTAMP => outcome.offset = log.log_start_offset(),
                ts if ts >= 0 => match log.offset_for_timestamp(ts).await {
                    // Only visible data is an answer.
                    Ok(Some((offset, timestamp))) if offset < log.high_watermark() => {
                        outcome.offset = offset;
                        outcome.timestamp = timestamp;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!("offset lookup failed: {e}");
                        outcome.error = ErrorCode::KafkaStorageError.code();
                    }
                },
                _ => outcome.error = ErrorCode::InvalidRequest.code(),
            },
        }
        outcomes.push(outcome);
    }
    outcomes
}

macro_rules! slotted {
    ($($outcome:ty),*) => {
        $(impl Slotted for $outcome {
            fn slot(&self) -> usize {
                self.slot
            }
        })*
    };
}
slotted!(ProduceOutcome, FetchOutcome, ListOffsetsOutcome);

/// A per-partition outcome that knows its place in the request.
pub trait Slotted {
    fn slot(&self) -> usize;
}

/// Puts a shard's outcomes at their slots; a missing reply (a stopping shard) leaves the
/// slots as they were.
pub fn place<O: Slotted>(outcomes: &mut [O], reply: Option<Vec<O>>) {
    for outcome in reply.unwrap_or_default() {
        let slot = outcome.slot();
        outcomes[slot] = outcome;
    }
}
