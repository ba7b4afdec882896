//! Per-partition work a connection's shard hands to the owning shard, and how the owner does
//! it. One message carries every partition of a request that the target shard owns.
//!
//! `slot` is the partition's place in the request, so the connection's shard can put each
//! outcome back where the response expects it.

use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::future::{FutureExt, LocalBoxFuture};

use super::shard::{Shard, Slotted};
use crate::protocol::ErrorCode;
use crate::protocol::record_batch::BatchInfo;
use crate::storage::{AppendError, PartitionLog, StorageError};

const NONE: i16 = 0;

pub struct ProducePart {
    pub slot: usize,
    pub topic: String,
    pub partition: i32,
    pub records: BytesMut,
    pub infos: Vec<BatchInfo>,
    /// Written into every batch (KIP-101).
    pub leader_epoch: i32,
}

pub struct ProduceWork {
    /// 0 answers right after the append; 1 and -1 after the batch is on disk.
    pub acks: i16,
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
    outcomes: Vec<ProduceOutcome>,
    /// (index into `outcomes`, log, end offset that must become durable)
    waits: Vec<(usize, Rc<PartitionLog>, i64)>,
}

/// Appends every part in order, synchronously: the order in which produce requests reach
/// this shard is the order their batches get offsets.
pub fn append(shard: &Shard, work: ProduceWork) -> PendingProduce {
    let mut pending = PendingProduce {
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
        match shard.log(&part.topic, part.partition) {
            None => outcome.error = ErrorCode::UnknownTopicOrPartition.code(),
            Some(log) => {
                outcome.log_start_offset = log.log_start_offset();
                match log.append(part.records, &part.infos, part.leader_epoch) {
                    Ok(info) => {
                        outcome.base_offset = info.base_offset;
                        if work.acks != 0 {
                            let index = pending.outcomes.len();
                            pending.waits.push((index, log, info.last_offset + 1));
                        }
                    }
                    Err(AppendError::DuplicateSequence { base_offset }) => {
                        // A retried batch already in the log: answer as the first time.
                        outcome.base_offset = base_offset;
                    }
                    Err(e) => outcome.error = append_error_code(&e),
                }
            }
        }
        pending.outcomes.push(outcome);
    }
    pending
}

impl PendingProduce {
    /// Waits until every appended batch is durable (one fdatasync serves many appends).
    pub async fn finish(mut self) -> Vec<ProduceOutcome> {
        let waits = std::mem::take(&mut self.waits);
        let results =
            futures::future::join_all(waits.iter().map(|(_, log, end)| log.wait_durable(*end)))
                .await;
        for ((index, _, _), result) in waits.iter().zip(results) {
            if let Err(e) = result {
                tracing::error!("append not made durable: {e}");
                self.outcomes[*index].error = ErrorCode::KafkaStorageError.code();
            }
        }
        self.outcomes
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
}

/// Reads every part, each up to its own byte limit and never above the high watermark.
pub async fn read(shard: &Shard, work: FetchWork) -> Vec<FetchOutcome> {
    let mut outcomes = Vec::with_capacity(work.parts.len());
    for part in work.parts {
        outcomes.push(read_part(shard, part).await);
    }
    outcomes
}

async fn read_part(shard: &Shard, part: FetchPart) -> FetchOutcome {
    let mut outcome = FetchOutcome {
        slot: part.slot,
        error: NONE,
        high_watermark: -1,
        log_start_offset: -1,
        records: Bytes::new(),
    };
    let Some(log) = shard.log(&part.topic, part.partition) else {
        outcome.error = ErrorCode::UnknownTopicOrPartition.code();
        return outcome;
    };
    let high_watermark = log.high_watermark();
    outcome.high_watermark = high_watermark;
    outcome.log_start_offset = log.log_start_offset();
    // Between the high watermark and the log end the data exists but is not yet visible.
    if part.offset >= high_watermark && part.offset <= log.log_end_offset() {
        return outcome;
    }
    match log.read(part.offset, part.max_bytes, high_watermark).await {
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
}

/// Resolves as soon as any of the partitions has data at or past its offset, or at the
/// deadline. Woken by appends becoming visible, not by polling.
pub async fn wait_for_data(shard: &Shard, work: WaitWork) {
    let waits: Vec<LocalBoxFuture<'static, ()>> = work
        .parts
        .iter()
        .filter_map(|(topic, partition, offset)| {
            let log = shard.log(topic, *partition)?;
            let (offset, deadline) = (*offset, work.deadline);
            Some(async move { log.wait_for_data(offset, deadline).await }.boxed_local())
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
    /// -1 latest, -2 earliest, otherwise a timestamp in ms.
    pub timestamp: i64,
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
}

pub const LATEST_TIMESTAMP: i64 = -1;
pub const EARLIEST_TIMESTAMP: i64 = -2;

pub async fn list_offsets(shard: &Shard, work: ListOffsetsWork) -> Vec<ListOffsetsOutcome> {
    let mut outcomes = Vec::with_capacity(work.parts.len());
    for part in work.parts {
        let mut outcome = ListOffsetsOutcome {
            slot: part.slot,
            error: NONE,
            offset: -1,
            timestamp: -1,
        };
        match shard.log(&part.topic, part.partition) {
            None => outcome.error = ErrorCode::UnknownTopicOrPartition.code(),
            Some(log) => match part.timestamp {
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
