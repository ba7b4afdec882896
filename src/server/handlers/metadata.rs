//! Metadata: the broker, and every requested topic with its partitions' leader and replicas.
//! Unknown topics are created when the client allows it and `auto.create.topics.enable`.

use std::rc::Rc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};

use super::super::controller::{ControllerRequest, ControllerResponse};
use super::super::shard::{Shard, ShardMessage};
use super::str_bytes;
use crate::cluster::topics::NewTopic;
use crate::cluster::{TopicMeta, is_valid_topic_name};
use crate::protocol::ErrorCode;

/// Kafka's value for "authorized operations were not requested".
const OPERATIONS_OMITTED: i32 = i32::MIN;

pub async fn handle(shard: &Rc<Shard>, request: MetadataRequest, version: i16) -> MetadataResponse {
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
        && shard.config.bool("auto.create.topics.enable");
    if let (Some(names), true) = (&requested, allow_create) {
        auto_create(shard, names).await;
    }
    let meta = shard.metadata();
    let node_id = shard.config.node_id();
    let topics = match requested {
        None => meta.topics.values().map(|t| topic(t, node_id)).collect(),
        Some(names) => names
            .iter()
            .map(|name| match meta.topics.get(name) {
                Some(t) => topic(t, node_id),
                None => missing(name),
            })
            .collect(),
    };
    MetadataResponse::default()
        .with_brokers(vec![broker(shard)])
        .with_cluster_id(Some(str_bytes(meta.cluster_id.clone())))
        .with_controller_id(BrokerId(node_id))
        .with_topics(topics)
        .with_cluster_authorized_operations(OPERATIONS_OMITTED)
}

async fn auto_create(shard: &Rc<Shard>, names: &[String]) {
    let meta = shard.metadata();
    let topics: Vec<NewTopic> = names
        .iter()
        .filter(|n| is_valid_topic_name(n) && !meta.topics.contains_key(*n))
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
    if let Some(ControllerResponse::CreateTopics(results)) = shard
        .call(0, |tx| ShardMessage::Controller(request, tx))
        .await
    {
        for e in results.into_iter().filter_map(Result::err) {
            tracing::debug!("auto-creation failed: {}", e.message);
        }
    }
}

fn broker(shard: &Shard) -> MetadataResponseBroker {
    let listen = shard.config.listen;
    let host = if listen.ip().is_unspecified() {
        "localhost".to_string()
    } else {
        listen.ip().to_string()
    };
    MetadataResponseBroker::default()
        .with_node_id(BrokerId(shard.config.node_id()))
        .with_host(str_bytes(host))
        .with_port(listen.port() as i32)
}

fn topic(t: &TopicMeta, node_id: i32) -> MetadataResponseTopic {
    let partitions = (0..t.partitions)
        .map(|p| {
            MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_id(BrokerId(node_id))
                .with_leader_epoch(0)
                .with_replica_nodes(vec![BrokerId(node_id)])
                .with_isr_nodes(vec![BrokerId(node_id)])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(t.name.clone()))))
        .with_topic_id(t.id)
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
