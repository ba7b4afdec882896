//! OffsetForLeaderEpoch: where a leader epoch ends on the partition's leader, so a consumer
//! can tell whether the log it read was truncated (KIP-101, KIP-320).

use std::rc::Rc;

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use super::super::shard::Shard;
use super::super::work::OffsetQuery;
use super::authz::Authorizer;
use super::in_request_order;
use super::list_offsets::{OffsetLookup, lookup};
use crate::security::acl::Operation;

/// Authorization as Kafka's: CLUSTER_ACTION on the cluster allows every partition; a
/// consumer may instead DESCRIBE the topic (KIP-320). A follower (`replica_id` >= 0) must
/// have CLUSTER_ACTION.
pub async fn handle(
    shard: &Rc<Shard>,
    request: OffsetForLeaderEpochRequest,
    auth: &Authorizer,
) -> OffsetForLeaderEpochResponse {
    let cluster_action = auth.cluster(Operation::ClusterAction);
    let as_follower = request.replica_id.0 >= 0;
    let lookups: Vec<OffsetLookup> = request
        .topics
        .iter()
        .flat_map(|t| {
            let authorized = cluster_action
                || (!as_follower && auth.topic(Operation::Describe, t.topic.as_str()));
            t.partitions.iter().map(move |p| OffsetLookup {
                authorized,
                topic: t.topic.as_str(),
                partition: p.partition,
                current_leader_epoch: p.current_leader_epoch,
                query: OffsetQuery::EpochEnd(p.leader_epoch),
            })
        })
        .collect();
    let answers = lookup(shard, &lookups).await;
    let topics = in_request_order(
        &request.topics,
        |t| &t.partitions,
        answers,
        |p, (o, _)| {
            EpochEndOffset::default()
                .with_partition(p.partition)
                .with_error_code(o.error)
                .with_leader_epoch(o.leader_epoch)
                .with_end_offset(o.offset)
        },
        |t, partitions| {
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic.clone())
                .with_partitions(partitions)
        },
    );
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
