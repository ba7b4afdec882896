//! Per-partition work a connection's shard hands to the owning shard, and how the owner does
//! it. One message carries every partition of a request that the target shard owns.
//!
//! `slot` is the partition's place in the request, so the connection's shard can put each
//! outcome back where the response expects it.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::{FutureExt, LocalBoxFuture};

use super::replicator::send_isr_change;
use super::shard::{Shard, Slotted};
use crate::protocol::ErrorCode;
use crate::protocol::record_batch::BatchInfo;
use crate::replication::divergence::diverging_epoch;
use crate::replication::replica::Replica;
use crate::storage::{AppendError, StorageError};

const NONE: i16 = 0;

pub struct ProducePart {
    pub slot: usize,
    pub topic: String,
    pub partition: i32,
    pub records: BytesMut,
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
    waits: Vec<Wait>,
}

/// An append whose answer waits: for the leader's disk, and with acks=-1 for the ISR.
struct Wait {
    index: usize,
    replica: Rc<Replica>,
    end_offset: i64,
    min_isr: usize,
    /// The leader epoch the batch was appended in: only that leadership may acknowledge it.
    leader_epoch: i32,
}

/// How often an acks=all wait checks that this broker still leads the partition.
const LEADERSHIP_CHECK: Duration = Duration::from_millis(100);

/// Appends every part in order, synchronously: the order in which produce requests reach
/// this shard is the order their batches get offsets.
pub fn append(shard: &Shard, work: ProduceWork) -> PendingProduce {
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
        let min_isr = shard.min_isr(&part.topic);
        match shard.replica(&part.topic, part.partition) {
            None => outcome.error = ErrorCode::UnknownTopicOrPartition.code(),
            Some(replica) if replica.leader_epoch().is_none() => {
                outcome.error = ErrorCode::NotLeaderOrFollower.code()
            }
            // Refused before appending when the ISR is already too small (acks=all only).
            Some(replica) if work.acks == -1 && replica.isr_len() < Some(min_isr) => {
                outcome.error = ErrorCode::NotEnoughReplicas.code()
            }
            Some(replica) => {
                let log = &replica.log;
                // The owner's own view of its leadership stamps the batch (KIP-101) and decides
                // its fate.
                let leader_epoch = replica.leader_epoch().unwrap_or_default();
                let records: i64 = part
                    .infos
                    .iter()
                    .map(|b| i64::from(b.last_offset_delta) + 1)
                    .sum();
                outcome.log_start_offset = log.log_start_offset();
                let appended = match log.append(part.records, &part.infos, leader_epoch) {
                    Ok(info) => Some(info.base_offset),
                    // A retried batch already in the log: answered as the first time, once
                    // committed as the first time would have been.
                    Err(AppendError::DuplicateSequence { base_offset }) => Some(base_offset),
                    Err(e) => {
                        outcome.error = append_error_code(&e);
                        None
                    }
                };
                if let Some(base_offset) = appended {
                    outcome.base_offset = base_offset;
                    if work.acks != 0 {
                        pending.waits.push(Wait {
                            index: pending.outcomes.len(),
                            replica: replica.clone(),
                            end_offset: base_offset + records,
                            min_isr,
                            leader_epoch,
                        });
                    }
                }
            }
        }
        pending.outcomes.push(outcome);
    }
    pending
}

impl PendingProduce {
    /// Waits until every appended batch is durable (one fdatasync serves many appends),
    /// and with acks=-1 until the high watermark passed it.
    pub async fn finish(mut self) -> Vec<ProduceOutcome> {
        let waits = std::mem::take(&mut self.waits);
        let deadline = Instant::now() + self.timeout;
        let (acks, outcomes) = (self.acks, &mut self.outcomes);
        let results =
            futures::future::join_all(waits.iter().map(|w| w.complete(acks, deadline))).await;
        for (wait, result) in waits.iter().zip(results) {
            outcomes[wait.index].error = result;
        }
        self.outcomes
    }
}

impl Wait {
    /// The error code this append is answered with.
    async fn complete(&self, acks: i16, deadline: Instant) -> i16 {
        let log = &self.replica.log;
        if let Err(e) = log.wait_durable(self.end_offset).await {
            tracing::error!("append not made durable: {e}");
            return ErrorCode::KafkaStorageError.code();
        }
        self.replica.on_durable(self.min_isr);
        if acks != -1 {
            return NONE;
        }
        loop {
            // A leader that lost its leadership may see its high watermark pass these offsets
            // with a new leader's data after truncating the batch away: only the leadership
            // that appended it may say it is committed (Kafka's DelayedProduce does the same).
            if self.replica.leader_epoch() != Some(self.leader_epoch) {
                return ErrorCode::NotLeaderOrFollower.code();
            }
            if log.high_watermark() >= self.end_offset {
                break;
            }
            if Instant::now() >= deadline {
                return ErrorCode::RequestTimedOut.code();
            }
            let wake = deadline.min(Instant::now() + LEADERSHIP_CHECK);
            log.wait_for_data(self.end_offset - 1, wake).await;
        }
        // Committed, but by fewer replicas than the topic asks for: the ISR shrank meanwhile.
        match self.replica.isr_len() {
            Some(isr) if isr >= self.min_isr => NONE,
            _ => ErrorCode::NotEnoughReplicasAfterAppend.code(),
        }
    }
}

fn append_error_code(e: &AppendError) -> i16 {
    match e {
        AppendError::OutOfOrderSequence => ErrorCode::OutOfOrderSequenceNumber.code(),
        AppendError::InvalidProducerEpoch => ErrorCode::InvalidProducerEpoch.code(),
        AppendError::DuplicateSequence { .. } => NONE,
        AppendError::InvalidBatch => ErrorCode::CorruptMessage.code(),
        AppendError::Offline(_) => ErrorCode::KafkaStorageError.code(),
        AppendError::Closed => ErrorCode::NotLeaderOrFollower.code(),
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
}

pub struct FetchWork {
    pub parts: Vec<FetchPart>,
}

#[derive(Debug, Clone)]
pub struct FetchOutcome {
    pub slot: usize,
    pub error: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub records: Bytes,
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
            records: Bytes::new(),
            diverging_epoch: None,
        }
    }
}

/// Reads every part, each up to its own byte limit: consumers never above the high
/// watermark, followers up to the durable log end.
pub async fn read(shard: &Rc<Shard>, work: FetchWork) -> Vec<FetchOutcome> {
    let mut outcomes = Vec::with_capacity(work.parts.len());
    for part in work.parts {
        outcomes.push(read_part(shard, part).await);
    }
    outcomes
}

async fn read_part(shard: &Rc<Shard>, part: FetchPart) -> FetchOutcome {
    let mut outcome = FetchOutcome::empty(part.slot, NONE);
    let Some(replica) = shard.replica(&part.topic, part.partition) else {
        outcome.error = ErrorCode::UnknownTopicOrPartition.code();
        return outcome;
    };
    let log = &replica.log;
    let visible_end = match part.follower {
        Some(follower) => {
            if let Some(diverging) = diverging_epoch(
                log.as_ref(),
                part.offset,
                follower.last_fetched_epoch,
                replica.leader_epoch(),
            ) {
                outcome.diverging_epoch = Some(diverging);
                outcome.high_watermark = log.high_watermark();
                return outcome;
            }
            let min_isr = shard.min_isr(&part.topic);
            let now_ms = crate::storage::now_ms();
            let image = shard.metadata();
            let id = follower.replica_id;
            let live = image.is_live(id) && !image.shutting_down.contains(&id);
            if let Some(p) = replica.on_follower_fetch(id, part.offset, live, now_ms, min_isr) {
                send_isr_change(shard, replica.clone(), p);
            }
            log.durable_end()
        }
        None => log.high_watermark(),
    };
    outcome.high_watermark = log.high_watermark();
    outcome.log_start_offset = log.log_start_offset();
    // Between the visible end and the log end the data exists but is not yet visible.
    if part.offset >= visible_end && part.offset <= log.log_end_offset() {
        return outcome;
    }
    match log.read(part.offset, part.max_bytes, visible_end).await {
        Ok(batches) => outcome.records = concat(batches.chunks, batches.total_len),
        Err(StorageError::OffsetOutOfRange { .. }) => {
            outcome.error = ErrorCode::OffsetOutOfRange.code()
        }
        Err(e) => {
            tracing::error!("read of {}-{} failed: {e}", part.topic, part.partition);
            outcome.error = ErrorCode::KafkaStorageError.code();
        }
    }
    outcome
}

fn concat(chunks: Vec<Bytes>, total_len: usize) -> Bytes {
    if chunks.len() == 1 {
        return chunks.into_iter().next().unwrap_or_default();
    }
    let mut out = BytesMut::with_capacity(total_len);
    for chunk in chunks {
        out.extend_from_slice(&chunk);
    }
    out.freeze()
}

pub struct WaitWork {
    /// (topic, partition, offset the fetch wants next)
    pub parts: Vec<(String, i32, i64)>,
    pub deadline: Instant,
    /// A follower's fetch waits for durable data; a consumer's for the high watermark.
    pub follower: bool,
}

/// Resolves as soon as any of the partitions has data at or past its offset, or at the
/// deadline. Woken by appends becoming visible, not by polling.
pub async fn wait_for_data(shard: &Shard, work: WaitWork) {
    let waits: Vec<LocalBoxFuture<'static, ()>> = work
        .parts
        .iter()
        .filter_map(|(topic, partition, offset)| {
            let log = shard.log(topic, *partition)?;
            let (offset, deadline, follower) = (*offset, work.deadline, work.follower);
            Some(
                async move {
                    if follower {
                        log.wait_for_durable(offset, deadline).await
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

pub async fn list_offsets(shard: &Shard, work: ListOffsetsWork) -> Vec<ListOffsetsOutcome> {
    let mut outcomes = Vec::with_capacity(work.parts.len());
    for part in work.parts {
        let mut outcome = ListOffsetsOutcome::empty(part.slot, NONE);
        match (shard.log(&part.topic, part.partition), part.query) {
            (None, _) => outcome.error = ErrorCode::UnknownTopicOrPartition.code(),
            (Some(log), OffsetQuery::EpochEnd(epoch)) => {
                if let Some((epoch, end)) = log.end_offset_for_epoch(epoch) {
                    outcome.leader_epoch = epoch;
                    outcome.offset = end;
                }
            }
            (Some(log), OffsetQuery::Timestamp(timestamp)) => match timestamp {
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
