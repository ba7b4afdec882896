//! Fetch: read each partition on its owning shard; if fewer than `min_bytes` came back, wait
//! until any of them gets data (or `max_wait_ms` passes) and read again.
//!
//! A response holds at most `fetch.max.bytes` (or the request's smaller `max_bytes`) of
//! records, spent while reading as Kafka's `ReplicaManager.readFromLog` does: the owning
//! shards read one after another, each given what is left, and once a partition returned
//! data no other may exceed its share (the first may, by one batch: KIP-74).
//!
//! Before each read the fetch takes its largest response from the shard's Fetch response
//! memory ([`ResponseMemory`]), keeps what it read and holds it until the response is
//! written; a fetch that waits for data holds none.
//!
//! The records stay the chunks they were read as: the response's records fields are
//! placeholders a [`RecordSplicer`] replaces by those chunks when it encodes.

use std::rc::Rc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_response::{
    EpochEndOffset, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{FetchRequest, FetchResponse};

use super::super::shard::{Shard, ShardMessage};
use super::super::work::{
    FetchBudget, FetchOutcome, FetchPart, FetchWork, FollowerFetch, WaitWork, place,
};
use super::authz::Authorizer;
use super::{Peer, check_leader_epoch, duplicated, in_request_order, led_partition};
use crate::protocol::ErrorCode;
use crate::protocol::pieces::RecordSplicer;
use crate::runtime::Closed;
use crate::security::acl::Operation;
use crate::server::memory::{FETCH_RESPONSE_BYTES_PER_PARTITION, HeldResponseMemory};

/// A partition of the request: its owner shard, or the error that answers it.
struct Target {
    topic: String,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    owner: Result<usize, ErrorCode>,
    follower: Option<FollowerFetch>,
}

/// The response, the record chunks its placeholders stand for, and the memory it holds
/// until written. `Err`: the shard stopped granting response memory.
pub async fn handle(
    shard: &Rc<Shard>,
    request: FetchRequest,
    peer: &Peer,
    auth: &Authorizer,
) -> Result<(FetchResponse, RecordSplicer, HeldResponseMemory), Closed> {
    let deadline = Instant::now() + Duration::from_millis(request.max_wait_ms.max(0) as u64);
    let targets = resolve(shard, &request, peer, auth);
    // Kafka: the broker's limit caps the request's, and min_bytes never exceeds either.
    let max_bytes = (request.max_bytes.max(0) as usize).min(shard.settings.fetch_max_bytes);
    let min_bytes = (request.min_bytes.max(0) as usize).min(max_bytes);
    let overhead = targets
        .len()
        .saturating_mul(FETCH_RESPONSE_BYTES_PER_PARTITION);
    loop {
        let mut memory = shard
            .fetch_responses
            .take(max_bytes.saturating_add(overhead))
            .await?;
        let outcomes = read_all(shard, &targets, max_bytes).await;
        let total: usize = outcomes.iter().map(|o| o.records.total_len).sum();
        let any_error = outcomes
            .iter()
            .any(|o| o.error != 0 || o.diverging_epoch.is_some());
        if total >= min_bytes || any_error || Instant::now() >= deadline {
            memory.resize(total.saturating_add(overhead)).await?;
            let (response, splicer) = response(&request, outcomes);
            return Ok((response, splicer, memory));
        }
        drop(memory);
        wait_for_data(shard, &targets, &outcomes, deadline).await;
    }
}

/// Each partition's owner shard, or its error: a partition named twice is INVALID_REQUEST,
/// and a replica fetch (`replica_id` >= 0) from a connection that is not that replica's
/// broker, or without the CLUSTER_ACTION permission, is refused as Kafka refuses one
/// without that permission; a consumer needs READ on each topic.
fn resolve(shard: &Shard, request: &FetchRequest, peer: &Peer, auth: &Authorizer) -> Vec<Target> {
    let meta = shard.metadata();
    let replica_id = request.replica_id.0;
    let refused = replica_id >= 0
        && !(peer.is_broker(replica_id, &meta) && auth.cluster(Operation::ClusterAction));
    if refused {
        tracing::info!(
            replica_id,
            host = peer.host,
            principal = %peer.principal(),
            "replica fetch refused: not that broker, or not allowed CLUSTER_ACTION"
        );
    }
    let keys = request.topics.iter().flat_map(|t| {
        t.partitions
            .iter()
            .map(move |p| (t.topic.as_str(), p.partition))
    });
    let mut duplicates = duplicated(keys).into_iter();
    let mut targets = Vec::new();
    for topic in &request.topics {
        let readable = replica_id >= 0 || auth.topic(Operation::Read, topic.topic.as_str());
        for p in &topic.partitions {
            let owner = match duplicates.next() {
                _ if refused || !readable => Err(ErrorCode::TopicAuthorizationFailed),
                Some(true) => Err(ErrorCode::InvalidRequest),
                _ => led_partition(&meta, shard.node_id(), topic.topic.as_str(), p.partition)
                    .and_then(|(t, state)| {
                        check_leader_epoch(state, p.current_leader_epoch)?;
                        Ok(shard.owner(t, p.partition))
                    }),
            };
            let follower = (replica_id >= 0).then_some(FollowerFetch {
                replica_id,
                last_fetched_epoch: p.last_fetched_epoch,
                current_leader_epoch: p.current_leader_epoch,
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

/// Reads every target within `max_bytes`, outcomes in request order: one message per owning
/// shard, the shards in the order the request first names them, each given the budget the
/// previous ones left.
async fn read_all(shard: &Rc<Shard>, targets: &[Target], max_bytes: usize) -> Vec<FetchOutcome> {
    let mut outcomes: Vec<FetchOutcome> = targets
        .iter()
        .enumerate()
        .map(|(slot, t)| FetchOutcome::empty(slot, t.owner.err().map_or(0, |e| e.code())))
        .collect();
    let mut order = Vec::new();
    let mut by_shard = shard.per_shard::<FetchPart>();
    for (slot, t) in targets.iter().enumerate() {
        if let Ok(owner) = t.owner {
            if by_shard[owner].is_empty() {
                order.push(owner);
            }
            by_shard[owner].push(FetchPart {
                slot,
                topic: t.topic.clone(),
                partition: t.partition,
                offset: t.offset,
                max_bytes: t.max_bytes,
                follower: t.follower,
            });
        }
    }
    let mut budget = FetchBudget::new(max_bytes);
    for owner in order {
        let parts = std::mem::take(&mut by_shard[owner]);
        let work = FetchWork { parts, budget };
        let reply = shard.call(owner, |tx| ShardMessage::Fetch(work, tx)).await;
        for o in reply.iter().flatten() {
            budget.spend(o.records.total_len);
        }
        place(&mut outcomes, reply);
    }
    outcomes
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

fn response(request: &FetchRequest, outcomes: Vec<FetchOutcome>) -> (FetchResponse, RecordSplicer) {
    let mut splicer = RecordSplicer::new();
    let answers: Vec<_> = outcomes
        .into_iter()
        .map(|mut o| {
            let read = std::mem::take(&mut o.records);
            (splicer.records(read.chunks, read.total_len), o)
        })
        .collect();
    let responses = in_request_order(
        &request.topics,
        |t| &t.partitions,
        answers,
        |p, (records, o)| {
            PartitionData::default()
                .with_partition_index(p.partition)
                .with_error_code(o.error)
                .with_high_watermark(o.high_watermark)
                .with_last_stable_offset(o.high_watermark)
                .with_log_start_offset(o.log_start_offset)
                .with_records(Some(records))
                .with_diverging_epoch(diverging(o.diverging_epoch))
        },
        |t, partitions| {
            FetchableTopicResponse::default()
                .with_topic(t.topic.clone())
                .with_topic_id(t.topic_id)
                .with_partitions(partitions)
        },
    );
    let response = FetchResponse::default().with_responses(responses);
    (response, splicer)
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
