//! The follower's side: what to ask the leader for, and what to do with its answer
//! (Kafka's `ReplicaFetcherThread`, with Fetch v12's DivergingEpoch truncation).
//!
//! The decision is pure ([`decide`], over an [`EpochLog`]) so that the simulation runs it
//! on a model log; [`apply`] carries it out on the replica's `PartitionLog`.

use super::divergence::EpochLog;
use super::fetch_session::{FetchPartition, FetchedPartition};
use super::replica::Replica;
use crate::protocol::ErrorCode;
use crate::protocol::record_batch::{BatchError, BatchInfo, validate_batches};

/// The fetch position of a follower: its log end, which is durable (the follower waits for
/// its appends to be on disk before fetching again, so the leader counts only durable data).
pub fn fetch_position(replica: &Replica, leader_epoch: i32) -> FetchPartition {
    let (fetch_offset, last_fetched_epoch) = fetch_point(replica.log.as_ref());
    FetchPartition {
        topic: replica.topic.clone(),
        topic_id: replica.topic_id,
        partition: replica.partition,
        fetch_offset,
        last_fetched_epoch,
        current_leader_epoch: leader_epoch,
        log_start_offset: replica.log.log_start_offset(),
    }
}

/// The fetch offset (the log end) and the last fetched epoch (-1: none) of a follower.
pub fn fetch_point(log: &impl EpochLog) -> (i64, i32) {
    (log.log_end_offset(), log.latest_epoch().unwrap_or(-1))
}

/// What to do with the leader's answer for one partition.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// The fetch offset is below the leader's log start (retention moved it): restart the
    /// log, empty, at this offset.
    ResetTo(i64),
    /// The log diverged from the leader's at `epoch`: truncate it to `offset`, where the two
    /// agree.
    TruncateTo { epoch: i32, offset: i64 },
    /// Append the answer's batches (possibly none), then take the leader's high watermark as
    /// far as the log goes ([`follower_high_watermark`]).
    Append {
        batches: Vec<BatchInfo>,
        leader_high_watermark: i64,
    },
    /// The leader sent a batch that fails validation.
    Corrupt(BatchError),
    /// The answer is to a fetch of another leadership, or from another log end: the replica
    /// moved on since it asked, so the answer is dropped.
    Stale,
    /// An error the next metadata image should resolve (leader moved, epoch changed).
    Backoff(i16),
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

/// Decides what the leader's answer to the fetch `asked` means for a replica that now
/// follows a leader of `following_epoch` (None: it follows no one, or leads), with a log
/// that answers `log`'s lookups.
///
/// Kafka's fetcher drops an answer when the partition's leader epoch or fetch offset changed
/// since the request. Without that, a deposed leader's late answer (a long poll, a paused
/// process) made a replica that already followed the next leader truncate records below
/// its high watermark (found by the simulation; see its `seed_88_*` regression test).
pub fn decide(
    asked: &FetchPartition,
    following_epoch: Option<i32>,
    answer: &FetchedPartition,
    log: &impl EpochLog,
) -> Action {
    if following_epoch != Some(asked.current_leader_epoch)
        || log.log_end_offset() != asked.fetch_offset
    {
        return Action::Stale;
    }
    let fetch_offset = asked.fetch_offset;
    if answer.error_code == ErrorCode::OffsetOutOfRange.code() {
        // Below the leader's log start: restart the log there.
        if answer.log_start_offset > fetch_offset {
            return Action::ResetTo(answer.log_start_offset);
        }
        return Action::Backoff(answer.error_code);
    }
    if answer.error_code != 0 {
        return Action::Backoff(answer.error_code);
    }
    if let Some((epoch, end_offset)) = answer.diverging_epoch {
        // Keep what both logs agree on: up to the end of the leader's copy of that epoch,
        // and no further than our own copy of it (KIP-101, KIP-320).
        let ours = log
            .end_offset_for_epoch(epoch)
            .map_or(end_offset, |(_, end)| end.min(end_offset));
        let offset = ours.min(log.log_end_offset());
        return Action::TruncateTo { epoch, offset };
    }
    let batches = if answer.records.is_empty() {
        Vec::new()
    } else {
        // Header, CRC and uncompressed records only: compressed batches are not
        // decompressed here. The leader validated every record on produce (LogValidator);
        // the follower trusts it, and the CRC guards the bytes in between.
        match validate_batches(&answer.records) {
            Ok(infos) => infos,
            Err(e) => return Action::Corrupt(e),
        }
    };
    Action::Append {
        batches,
        leader_high_watermark: answer.high_watermark,
    }
}

/// A follower's high watermark: the leader's, as far as its own log goes.
pub fn follower_high_watermark(leader_high_watermark: i64, log_end: i64) -> i64 {
    leader_high_watermark.min(log_end)
}

/// Applies the leader's answer for one partition to the follower's log.
pub async fn apply(replica: &Replica, asked: &FetchPartition, answer: FetchedPartition) -> Applied {
    let log = &replica.log;
    let (topic, partition) = (&replica.topic, replica.partition);
    let following_epoch = replica.following().map(|(_, epoch)| epoch);
    match decide(asked, following_epoch, &answer, log.as_ref()) {
        Action::ResetTo(start) => match log.truncate_fully_and_start_at(start).await {
            Ok(()) => Applied::Truncated,
            Err(e) => {
                tracing::error!("{topic}-{partition}: reset to the leader's log start failed: {e}");
                Applied::Backoff(ErrorCode::OffsetOutOfRange.code())
            }
        },
        Action::TruncateTo { epoch, offset } => {
            tracing::info!(
                "{topic}-{partition}: diverged from the leader at epoch {epoch}; truncating to {offset}"
            );
            match log.truncate_to(offset).await {
                Ok(_) => Applied::Truncated,
                Err(e) => {
                    tracing::error!("{topic}-{partition}: truncation failed: {e}");
                    Applied::Backoff(ErrorCode::KafkaStorageError.code())
                }
            }
        }
        Action::Append {
            batches,
            leader_high_watermark,
        } => {
            if !batches.is_empty()
                && let Err(e) = log.append_replicated(answer.stored_records(), &batches)
            {
                tracing::warn!("{topic}-{partition}: replicated append refused: {e}");
                return Applied::Backoff(ErrorCode::KafkaStorageError.code());
            }
            log.set_high_watermark(follower_high_watermark(
                leader_high_watermark,
                log.log_end_offset(),
            ));
            Applied::Appended
        }
        Action::Corrupt(e) => {
            tracing::error!("{topic}-{partition}: corrupt batch from the leader: {e}");
            Applied::Backoff(ErrorCode::CorruptMessage.code())
        }
        // The next round fetches for the replica's current leadership, if it still
        // follows this leader at all.
        Action::Stale => Applied::Backoff(ErrorCode::FencedLeaderEpoch.code()),
        Action::Backoff(code) => Applied::Backoff(code),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::replication::divergence::test_log::log;

    fn asked(fetch_offset: i64, current_leader_epoch: i32) -> FetchPartition {
        FetchPartition {
            topic: "t".into(),
            topic_id: uuid::Uuid::nil(),
            partition: 0,
            fetch_offset,
            last_fetched_epoch: 0,
            current_leader_epoch,
            log_start_offset: 0,
        }
    }

    fn answer(high_watermark: i64, diverging_epoch: Option<(i32, i64)>) -> FetchedPartition {
        FetchedPartition {
            topic: "t".into(),
            partition: 0,
            error_code: 0,
            high_watermark,
            log_start_offset: 0,
            records: Bytes::new(),
            frame_bytes: 0,
            diverging_epoch,
        }
    }

    #[test]
    fn divergence_truncates_to_where_both_logs_agree() {
        // Ours: epoch 0 up to 26, epoch 1 from 26 to 30. The leader's epoch 0 ends at 83.
        let ours = log(&[(0, 0), (1, 26)], 30);
        assert_eq!(
            decide(&asked(30, 2), Some(2), &answer(80, Some((0, 83))), &ours),
            Action::TruncateTo {
                epoch: 0,
                offset: 26
            }
        );
        assert_eq!(follower_high_watermark(80, 26), 26);
    }

    /// As the simulation first found it: the replica asked leader 5 at epoch 1 from offset 174, then
    /// followed leader 1 at epoch 2 (truncated to 14, caught up to 75); leader 5, paused
    /// meanwhile, then answered the old fetch with DivergingEpoch (0, 14).
    #[test]
    fn an_answer_to_an_earlier_leadership_is_dropped() {
        let now = log(&[(0, 0), (2, 14)], 75);
        let late = answer(13, Some((0, 14)));
        assert_eq!(decide(&asked(174, 1), Some(2), &late, &now), Action::Stale);
        // Same epoch, but the log moved since the request (it led in between).
        assert_eq!(decide(&asked(70, 2), Some(2), &late, &now), Action::Stale);
        // Leading now.
        assert_eq!(decide(&asked(75, 2), None, &late, &now), Action::Stale);
        assert_eq!(
            decide(&asked(75, 2), Some(2), &answer(75, None), &now),
            Action::Append {
                batches: vec![],
                leader_high_watermark: 75
            }
        );
    }
}
