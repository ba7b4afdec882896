//! Metadata: the broker, and every requested topic with its partitions' leader and replicas.
//! Unknown topics are created when the client allows it and `auto.create.topics.enable`.

use std::rc::Rc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};

use super::super::shard::{Shard, ShardMessage};
use super::{Peer, str_bytes};
use crate::cluster::NO_LEADER;
use crate::cluster::controller::{ControllerRequest, ControllerResponse};
use crate::cluster::quorum::MetadataImage;
use crate::cluster::topics::NewTopic;
use crate::cluster::{TopicMeta, is_valid_topic_name};
use crate::protocol::ErrorCode;

/// Kafka's value for "authorized operations were not requested".
const OPERATIONS_OMITTED: i32 = i32::MIN;

pub async fn handle(
    shard: &Rc<Shard>,
    request: MetadataRequest,
    version: i16,
    peer: &Peer,
) -> MetadataResponse {
    // v0 has no null topic list: an empty one means all topics.
    let requested: Option<Vec<String>> = match &request.topics {
        Some(topics) if !(version == 0 && topics.is_empty()) => Some(
            topics
                .iter()
                .map(|t| match &t.name {
                    Some(name) => name.to_string(),
                    None => shard
                        .metadata()
                        .topic_by_id(t.topic_id)
                        .map_or_else(String::new, |m| m.name.clone()),
                })
                .collect(),
        ),
        _ => None,
    };
    let allow_create = (version < 4 || request.allow_auto_topic_creation)
        && shard.settings.auto_create_topics_enable;
    if let (Some(names), true) = (&requested, allow_create) {
        auto_create(shard, names).await;
    }
    response(&shard.metadata(), requested, &peer.listener().name)
}

/// The answer from `meta` about the `requested` topics (`None`: every topic), to a client
/// of the listener named `listener`: brokers are listed at that listener's endpoint, and a
/// broker without it is left out (as Kafka does).
pub fn response(
    meta: &MetadataImage,
    requested: Option<Vec<String>>,
    listener: &str,
) -> MetadataResponse {
    let topics = match requested {
        None => meta.topics.values().map(|t| topic(t, meta)).collect(),
        Some(names) => names
            .iter()
            .map(|name| match meta.topics.get(name) {
                Some(t) => topic(t, meta),
                None => missing(name),
            })
            .collect(),
    };
    let brokers = meta
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .filter_map(|b| {
            let (host, port) = b.endpoint(listener)?;
            let broker = MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.id))
                .with_host(str_bytes(host))
                .with_port(i32::from(port));
            Some(broker)
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(str_bytes(meta.cluster_id.clone())))
        .with_controller_id(BrokerId(meta.controller_id))
        .with_topics(topics)
        .with_cluster_authorized_operations(OPERATIONS_OMITTED)
}

async fn auto_create(shard: &Rc<Shard>, names: &[String]) {
    let meta = shard.metadata();
    let topics: Vec<NewTopic> = names
        .iter()
        // Internal topics are created by the broker that needs them, with their own settings.
        .filter(|n| is_valid_topic_name(n) && !meta.topics.contains_key(*n))
        .filter(|n| n.as_str() != crate::group::OFFSETS_TOPIC)
        .map(|name| NewTopic {
            name: name.clone(),
            partitions: -1,
            replication_factor: -1,
            assignment: None,
            configs: Vec::new(),
        })
        .collect();
    if topics.is_empty() {
        return;
    }
    let request = ControllerRequest::CreateTopics {
        topics,
        validate_only: false,
    };
    if let Some(ControllerResponse::Topics(results)) = shard
        .call(0, |tx| ShardMessage::Controller(request, tx))
        .await
    {
        for e in results.into_iter().filter_map(Result::err) {
            tracing::debug!("auto-creation failed: {}", e.message);
        }
    }
}

fn topic(t: &TopicMeta, meta: &MetadataImage) -> MetadataResponseTopic {
    let ids = |brokers: &[i32]| brokers.iter().map(|b| BrokerId(*b)).collect::<Vec<_>>();
    let partitions = (0..)
        .zip(&t.partitions)
        .map(|(index, p)| {
            let offline: Vec<i32> = p
                .replicas
                .iter()
                .copied()
                .filter(|r| !meta.is_live(*r) || p.offline.contains(r))
                .collect();
            let error = if p.leader == NO_LEADER {
                ErrorCode::LeaderNotAvailable.code()
            } else {
                0
            };
            MetadataResponsePartition::default()
                .with_error_code(error)
                .with_partition_index(index)
                .with_leader_id(BrokerId(p.leader))
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(ids(&p.replicas))
                .with_isr_nodes(ids(&p.isr))
                .with_offline_replicas(ids(&offline))
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(t.name.clone()))))
        .with_topic_id(t.id)
        .with_is_internal(t.name == crate::group::OFFSETS_TOPIC)
        .with_partitions(partitions)
        .with_topic_authorized_operations(OPERATIONS_OMITTED)
}

fn missing(name: &str) -> MetadataResponseTopic {
    let code = if is_valid_topic_name(name) {
        ErrorCode::UnknownTopicOrPartition
    } else {
        ErrorCode::InvalidTopicException
    };
    MetadataResponseTopic::default()
        .with_error_code(code.code())
        .with_name(Some(TopicName(str_bytes(name))))
        .with_topic_authorized_operations(OPERATIONS_OMITTED)
}
