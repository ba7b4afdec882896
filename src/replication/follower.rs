//! The follower's side: what to ask the leader for, and what to do with its answer
//! (Kafka's `ReplicaFetcherThread`, with Fetch v12's DivergingEpoch truncation).

use bytes::BytesMut;

use super::fetch_session::{FetchPartition, FetchedPartition};
use super::replica::Replica;
use crate::protocol::ErrorCode;
use crate::protocol::record_batch::validate_batches;

/// The fetch position of a follower: its log end, which is durable (the follower waits for
/// its appends to be on disk before fetching again, so the leader counts only durable data).
pub fn fetch_position(replica: &Replica, leader_epoch: i32) -> FetchPartition {
    FetchPartition {
        topic: replica.topic.clone(),
        topic_id: replica.topic_id,
        partition: replica.partition,
        fetch_offset: replica.log.log_end_offset(),
        last_fetched_epoch: replica.log.latest_epoch().unwrap_or(-1),
        current_leader_epoch: leader_epoch,
        log_start_offset: replica.log.log_start_offset(),
    }
}

/// What became of one partition's answer.
#[derive(Debug, PartialEq)]
pub enum Applied {
    /// Records appended (possibly none); wait for them to be durable, then fetch again.
    Appended,
    /// The log was truncated to where it agrees with the leader; fetch again.
    Truncated,
    /// An error the next metadata image should resolve (leader moved, epoch changed).
    Backoff(i16),
}

/// Applies the leader's answer for one partition to the follower's log.
pub async fn apply(replica: &Replica, asked: &FetchPartition, answer: FetchedPartition) -> Applied {
    let log = &replica.log;
    if answer.error_code == ErrorCode::OffsetOutOfRange.code() {
        // Below the leader's log start (retention moved it): restart the log there.
        if answer.log_start_offset > asked.fetch_offset {
            if let Err(e) = log
                .truncate_fully_and_start_at(answer.log_start_offset)
                .await
            {
                tracing::error!(
                    "{}-{}: reset to the leader's log start failed: {e}",
                    replica.topic,
                    replica.partition
                );
                return Applied::Backoff(answer.error_code);
            }
            return Applied::Truncated;
        }
        return Applied::Backoff(answer.error_code);
    }
    if answer.error_code != 0 {
        return Applied::Backoff(answer.error_code);
    }
    if let Some((epoch, end_offset)) = answer.diverging_epoch {
        // Keep what both logs agree on: up to the end of the leader's copy of that epoch,
        // and no further than our own copy of it (KIP-101, KIP-320).
        let ours = log
            .end_offset_for_epoch(epoch)
            .map_or(end_offset, |(_, end)| end.min(end_offset));
        let target = ours.min(log.log_end_offset());
        tracing::info!(
            "{}-{}: diverged from the leader at epoch {epoch}; truncating to {target}",
            replica.topic,
            replica.partition
        );
        return match log.truncate_to(target).await {
            Ok(_) => Applied::Truncated,
            Err(e) => {
                tracing::error!(
                    "{}-{}: truncation failed: {e}",
                    replica.topic,
                    replica.partition
                );
                Applied::Backoff(ErrorCode::KafkaStorageError.code())
            }
        };
    }
    if !answer.records.is_empty() {
        let infos = match validate_batches(&answer.records) {
            Ok(infos) => infos,
            Err(e) => {
                tracing::error!(
                    "{}-{}: corrupt batch from the leader: {e}",
                    replica.topic,
                    replica.partition
                );
                return Applied::Backoff(ErrorCode::CorruptMessage.code());
            }
        };
        if let Err(e) = log.append_replicated(BytesMut::from(&answer.records[..]), &infos) {
            tracing::warn!(
                "{}-{}: replicated append refused: {e}",
                replica.topic,
                replica.partition
            );
            return Applied::Backoff(ErrorCode::KafkaStorageError.code());
        }
    }
    // A follower's high watermark: the leader's, as far as it has the data.
    log.set_high_watermark(answer.high_watermark.min(log.log_end_offset()));
    Applied::Appended
}
