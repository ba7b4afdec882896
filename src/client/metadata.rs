//! Metadata requests and what they say about brokers, topics and partitions.

use std::collections::{BTreeMap, HashMap};

use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::metadata_response::MetadataResponse;

use super::admin::topic_name;
use super::error::{Result, check};
use super::versions::Versions;
use super::wire::Conn;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerMeta {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

impl BrokerMeta {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionMeta {
    pub index: i32,
    /// -1 when there is none.
    pub leader: i32,
    pub error: i16,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline: Vec<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicMeta {
    pub name: String,
    /// Nil before Metadata v10.
    pub id: uuid::Uuid,
    pub internal: bool,
    pub error: i16,
    /// Sorted by index.
    pub partitions: Vec<PartitionMeta>,
}

/// One Metadata response.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    pub brokers: BTreeMap<i32, BrokerMeta>,
    pub controller: i32,
    pub cluster_id: Option<String>,
    /// In the broker's order.
    pub topics: Vec<TopicMeta>,
}

impl Metadata {
    pub fn broker_addr(&self, node_id: i32) -> Option<String> {
        self.brokers.get(&node_id).map(BrokerMeta::addr)
    }

    pub fn topic(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.iter().find(|t| t.name == name)
    }
}

/// Metadata request for `topics` (`None`: all), never auto-creating where the version lets
/// us say so (v4+).
pub(crate) fn fetch(
    conn: &mut Conn,
    versions: &Versions,
    topics: Option<&[String]>,
) -> Result<Metadata> {
    let version = versions.pick(ApiKey::Metadata, 1, 13)?;
    let mut req = MetadataRequest::default().with_topics(topics.map(|ts| {
        ts.iter()
            .map(|t| MetadataRequestTopic::default().with_name(Some(topic_name(t))))
            .collect()
    }));
    if version >= 4 {
        req = req.with_allow_auto_topic_creation(false);
    }
    let resp: MetadataResponse = conn.call(ApiKey::Metadata, version, &req)?;
    if version >= 13 {
        check(resp.error_code, None, None)?;
    }
    let brokers = resp
        .brokers
        .iter()
        .map(|b| {
            (
                b.node_id.0,
                BrokerMeta {
                    node_id: b.node_id.0,
                    host: b.host.to_string(),
                    port: b.port,
                    rack: b.rack.as_ref().map(|r| r.to_string()),
                },
            )
        })
        .collect();
    let topics = resp
        .topics
        .iter()
        .map(|t| {
            let mut partitions: Vec<PartitionMeta> = t
                .partitions
                .iter()
                .map(|p| PartitionMeta {
                    index: p.partition_index,
                    leader: p.leader_id.0,
                    error: p.error_code,
                    replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                    isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                    offline: p.offline_replicas.iter().map(|b| b.0).collect(),
                })
                .collect();
            partitions.sort_by_key(|p| p.index);
            TopicMeta {
                name: t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
                id: t.topic_id,
                internal: t.is_internal,
                error: t.error_code,
                partitions,
            }
        })
        .collect();
    Ok(Metadata {
        brokers,
        controller: resp.controller_id.0,
        cluster_id: resp.cluster_id.as_ref().map(|c| c.to_string()),
        topics,
    })
}

/// What a producer or consumer needs about one topic.
#[derive(Clone, Debug, Default)]
pub struct ClusterMeta {
    /// node id -> `host:port`.
    pub brokers: HashMap<i32, String>,
    pub controller: i32,
    /// Error code of the topic (0 if fine; UNKNOWN_TOPIC_OR_PARTITION if absent).
    pub topic_error: i16,
    /// Partitions sorted by index.
    pub partitions: Vec<PartitionMeta>,
}

impl ClusterMeta {
    pub fn of(meta: Metadata, topic: &str) -> ClusterMeta {
        let found = meta.topics.into_iter().find(|t| t.name == topic);
        ClusterMeta {
            brokers: meta
                .brokers
                .values()
                .map(|b| (b.node_id, b.addr()))
                .collect(),
            controller: meta.controller,
            topic_error: found.as_ref().map_or(3, |t| t.error),
            partitions: found.map(|t| t.partitions).unwrap_or_default(),
        }
    }

    pub fn leader_addr(&self, partition: i32) -> Option<(i32, String)> {
        let p = self.partitions.iter().find(|p| p.index == partition)?;
        let addr = self.brokers.get(&p.leader)?;
        Some((p.leader, addr.clone()))
    }

    /// All partitions have a known leader.
    pub fn ready(&self) -> bool {
        self.topic_error == 0
            && !self.partitions.is_empty()
            && self
                .partitions
                .iter()
                .all(|p| p.leader >= 0 && self.brokers.contains_key(&p.leader))
    }
}
