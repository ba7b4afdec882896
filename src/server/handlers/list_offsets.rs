//! ListOffsets: earliest (-2), latest (-1, the high watermark) or the first offset at or
//! after a timestamp, per partition, on the owning shards. OffsetForLeaderEpoch asks the
//! same shards for the end of a leader epoch.

use std::rc::Rc;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::super::shard::{Shard, ShardMessage};
use super::super::work::{ListOffsetsOutcome, ListOffsetsPart, ListOffsetsWork, OffsetQuery};
use super::authz::Authorizer;
use super::{check_leader_epoch, duplicated, in_request_order, led_partition};
use crate::protocol::ErrorCode;
use crate::security::acl::Operation;

/// One partition's question: topic, partition, the client's current leader epoch (-1: not
/// given) and what it asks.
pub struct OffsetLookup<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub current_leader_epoch: i32,
    pub query: OffsetQuery,
    /// Whether the principal may ask (else TOPIC_AUTHORIZATION_FAILED).
    pub authorized: bool,
}

/// Answers every lookup on the partition's leader shard, in request order, each with the
/// partition's leader epoch (-1 when not led here). A partition asked twice is
/// INVALID_REQUEST (Kafka's `duplicatePartitions`).
pub async fn lookup(
    shard: &Rc<Shard>,
    lookups: &[OffsetLookup<'_>],
) -> Vec<(ListOffsetsOutcome, i32)> {
    let meta = shard.metadata();
    let mut outcomes = Vec::with_capacity(lookups.len());
    let mut leader_epochs = Vec::with_capacity(lookups.len());
    let mut by_shard = shard.per_shard::<ListOffsetsPart>();
    let duplicates = duplicated(lookups.iter().map(|l| (l.topic, l.partition)));
    for ((slot, l), duplicate) in lookups.iter().enumerate().zip(duplicates) {
        let led = if !l.authorized {
            Err(ErrorCode::TopicAuthorizationFailed)
        } else if duplicate {
            Err(ErrorCode::InvalidRequest)
        } else {
            led_partition(&meta, shard.node_id(), l.topic, l.partition).and_then(|(t, state)| {
                check_leader_epoch(state, l.current_leader_epoch)?;
                Ok((t, state.leader_epoch))
            })
        };
        match led {
            Ok((t, epoch)) => {
                leader_epochs.push(epoch);
                outcomes.push(ListOffsetsOutcome::empty(slot, 0));
                by_shard[shard.owner(t, l.partition)].push(ListOffsetsPart {
                    slot,
                    topic: t.name.clone(),
                    partition: l.partition,
                    query: l.query,
                });
            }
            Err(code) => {
                leader_epochs.push(-1);
                outcomes.push(ListOffsetsOutcome::empty(slot, code.code()));
            }
        }
    }
    let list = |parts, tx| ShardMessage::ListOffsets(ListOffsetsWork { parts }, tx);
    shard.scatter(by_shard, list, &mut outcomes).await;
    outcomes.into_iter().zip(leader_epochs).collect()
}

pub async fn handle(
    shard: &Rc<Shard>,
    request: ListOffsetsRequest,
    version: i16,
    auth: &Authorizer,
) -> ListOffsetsResponse {
    let lookups: Vec<OffsetLookup> = request
        .topics
        .iter()
        .flat_map(|t| {
            let authorized = auth.topic(Operation::Describe, t.name.as_str());
            t.partitions.iter().map(move |p| OffsetLookup {
                authorized,
                topic: t.name.as_str(),
                partition: p.partition_index,
                current_leader_epoch: p.current_leader_epoch,
                query: OffsetQuery::Timestamp(p.timestamp),
            })
        })
        .collect();
    let answers = lookup(shard, &lookups).await;
    let topics = in_request_order(
        &request.topics,
        |t| &t.partitions,
        answers,
        |p, (o, leader_epoch)| {
            ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_error_code(o.error)
                .with_offset(o.offset)
                .with_timestamp(o.timestamp)
                // The field exists from v4 on.
                .with_leader_epoch(if version >= 4 { leader_epoch } else { -1 })
        },
        |t, partitions| {
            ListOffsetsTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        },
    );
    ListOffsetsResponse::default().with_topics(topics)
}
