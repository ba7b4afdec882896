//! Fetch: read each partition on its owning shard; if fewer than `min_bytes` came back, wait
//! until any of them gets data (or `max_wait_ms` passes) and read again.

use std::rc::Rc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_response::{
    EpochEndOffset, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{FetchRequest, FetchResponse};

use super::super::shard::{Shard, ShardMessage};
use super::super::work::{FetchOutcome, FetchPart, FetchWork, FollowerFetch, WaitWork};
use super::{check_leader_epoch, in_request_order, led_partition};
use crate::protocol::ErrorCode;

/// A partition of the request: its owner shard, or the error that answers it.
struct Target {
    topic: String,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    owner: Result<usize, ErrorCode>,
    follower: Option<FollowerFetch>,
}

pub async fn handle(shard: &Rc<Shard>, request: FetchRequest) -> FetchResponse {
    let deadline = Instant::now() + Duration::from_millis(request.max_wait_ms.max(0) as u64);
    let targets = resolve(shard, &request);
    let min_bytes = request.min_bytes.max(0) as usize;
    let max_bytes = request.max_bytes.max(0) as usize;
    loop {
        let mut outcomes = read_all(shard, &targets, max_bytes).await;
        let total = limit_total_bytes(&mut outcomes, max_bytes);
        let any_error = outcomes
            .iter()
            .any(|o| o.error != 0 || o.diverging_epoch.is_some());
        if total >= min_bytes || any_error || Instant::now() >= deadline {
            return response(&request, &outcomes);
        }
        wait_for_data(shard, &targets, &outcomes, deadline).await;
    }
}

fn resolve(shard: &Shard, request: &FetchRequest) -> Vec<Target> {
    let meta = shard.metadata();
    let mut targets = Vec::new();
    for topic in &request.topics {
        for p in &topic.partitions {
            let owner = led_partition(&meta, shard.node_id(), topic.topic.as_str(), p.partition)
                .and_then(|(t, state)| {
                    check_leader_epoch(state, p.current_leader_epoch)?;
                    Ok(shard.owner(t, p.partition))
                });
            let follower = (request.replica_id.0 >= 0).then_some(FollowerFetch {
                replica_id: request.replica_id.0,
                last_fetched_epoch: p.last_fetched_epoch,
            });
            targets.push(Target {
                topic: topic.topic.to_string(),
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
                owner,
                follower,
            });
        }
    }
    targets
}

/// Reads every target, one message per owning shard, outcomes in request order.
async fn read_all(shard: &Rc<Shard>, targets: &[Target], max_bytes: usize) -> Vec<FetchOutcome> {
    let mut outcomes: Vec<FetchOutcome> = targets
        .iter()
        .enumerate()
        .map(|(slot, t)| FetchOutcome::empty(slot, t.owner.err().map_or(0, |e| e.code())))
        .collect();
    let mut by_shard = shard.per_shard::<FetchPart>();
    for (slot, t) in targets.iter().enumerate() {
        if let Ok(owner) = t.owner {
            by_shard[owner].push(FetchPart {
                slot,
                topic: t.topic.clone(),
                partition: t.partition,
                offset: t.offset,
                max_bytes: t.max_bytes.min(max_bytes),
                follower: t.follower,
            });
        }
    }
    let fetch = |parts, tx| ShardMessage::Fetch(FetchWork { parts }, tx);
    shard.scatter(by_shard, fetch, &mut outcomes).await;
    outcomes
}

/// Keeps the response within `max_bytes`, but always returns the first partition's data
/// even if larger (KIP-74: a consumer must be able to make progress). Returns the bytes kept.
fn limit_total_bytes(outcomes: &mut [FetchOutcome], max_bytes: usize) -> usize {
    let mut total = 0;
    for o in outcomes.iter_mut() {
        let len = o.records.len();
        if total > 0 && total + len > max_bytes {
            o.records = bytes::Bytes::new();
        } else {
            total += len;
        }
    }
    total
}

async fn wait_for_data(
    shard: &Rc<Shard>,
    targets: &[Target],
    outcomes: &[FetchOutcome],
    deadline: Instant,
) {
    let follower = targets.iter().any(|t| t.follower.is_some());
    let mut by_shard = shard.per_shard::<(String, i32, i64)>();
    for (t, o) in targets.iter().zip(outcomes) {
        if let (Ok(owner), 0) = (t.owner, o.error) {
            // Wake on data beyond what this round already saw, or min_bytes would spin.
            let seen = t.offset.max(o.high_watermark);
            by_shard[owner].push((t.topic.clone(), t.partition, seen));
        }
    }
    let waits: Vec<_> = by_shard
        .into_iter()
        .enumerate()
        .filter(|(_, parts)| !parts.is_empty())
        .map(|(target, parts)| {
            Box::pin(shard.call(target, move |tx| {
                ShardMessage::WaitForData(
                    WaitWork {
                        parts,
                        deadline,
                        follower,
                    },
                    tx,
                )
            }))
        })
        .collect();
    if waits.is_empty() {
        crate::runtime::delay(deadline.saturating_duration_since(Instant::now())).await;
    } else {
        futures::future::select_all(waits).await;
    }
}

fn response(request: &FetchRequest, outcomes: &[FetchOutcome]) -> FetchResponse {
    let responses = in_request_order(
        &request.topics,
        |t| &t.partitions,
        outcomes,
        |p, o| {
            PartitionData::default()
                .with_partition_index(p.partition)
                .with_error_code(o.error)
                .with_high_watermark(o.high_watermark)
                .with_last_stable_offset(o.high_watermark)
                .with_log_start_offset(o.log_start_offset)
                .with_records(Some(o.records.clone()))
                .with_diverging_epoch(diverging(o.diverging_epoch))
        },
        |t, partitions| {
            FetchableTopicResponse::default()
                .with_topic(t.topic.clone())
                .with_topic_id(t.topic_id)
                .with_partitions(partitions)
        },
    );
    FetchResponse::default().with_responses(responses)
}

/// Fetch v12's DivergingEpoch field; the default (-1, -1) means "no divergence".
fn diverging(epoch: Option<(i32, i64)>) -> EpochEndOffset {
    match epoch {
        Some((epoch, end_offset)) => EpochEndOffset::default()
            .with_epoch(epoch)
            .with_end_offset(end_offset),
        None => EpochEndOffset::default(),
    }
}
