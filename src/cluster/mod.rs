//! Cluster metadata: brokers, topics, partitions with their replicas, leader, epoch and ISR.
//!
//! The metadata is a deterministic state machine over [`commands::MetadataCommand`]s: the
//! controller quorum (`quorum`) orders the commands in a Raft log and every voter applies them
//! in that order, so all voters hold the same [`ClusterMetadata`]. Shard 0 of each broker
//! pushes an immutable snapshot of it to the broker's other shards.
//!
//! Topics are shared between successive metadata versions (`Arc` per topic): applying a
//! command copies only the topics it changes (`Arc::make_mut`), so an image costs the
//! topic map (pointers), not every partition. A topic serializes as before (serde's `rc`
//! feature writes the value behind an `Arc`), so snapshots keep their format.
//!
//! Architecture invariant: everything here but `quorum` and `controller` (the broker's side
//! of the control plane) is pure (no I/O, no clock, no
//! randomness: a command carries the random choices made by its proposer).

pub mod commands;
pub mod controller;
pub mod limits;
pub mod placement;
pub mod quorum;
pub mod topics;
pub mod users;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::TopicConfig;
use crate::security::listener::Endpoint;
use crate::security::scram::{ScramCredential, ScramMechanism};

/// Kafka's "no leader".
pub const NO_LEADER: i32 = -1;

/// A registered broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub id: i32,
    pub host: String,
    pub port: u16,
    /// Shards (cores) of the broker: its partitions spread over them.
    pub shards: u32,
    /// Changes at every start of the broker process.
    pub incarnation: u64,
    /// Fenced brokers lead nothing and are not listed to clients.
    pub fenced: bool,
    /// Every advertised listener. Empty in registrations from before listeners existed:
    /// `host` and `port` are then the broker's one PLAINTEXT listener.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Endpoint>,
}

impl BrokerInfo {
    /// Where the broker's listener `name` is reached, if the broker has one so named.
    pub fn endpoint(&self, name: &str) -> Option<(&str, u16)> {
        if self.listeners.is_empty() {
            return (name == "PLAINTEXT").then_some((self.host.as_str(), self.port));
        }
        let found = self.listeners.iter().find(|e| e.name == name);
        found.map(|e| (e.host.as_str(), e.port))
    }
}

/// One partition's replica set and leadership.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Assignment order: the preferred leader first.
    pub replicas: Vec<i32>,
    pub leader: i32,
    /// Bumped at every leader change; batches carry it.
    pub leader_epoch: i32,
    pub isr: Vec<i32>,
    /// Bumped at every change of this partition.
    pub partition_epoch: i32,
    /// Replicas whose broker reported their log offline after a storage error (KIP-112):
    /// never elected, never in the ISR again until that broker registers anew.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offline: Vec<i32>,
}

/// One topic as every shard sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    pub partitions: Vec<PartitionState>,
    pub config: TopicConfig,
}

impl TopicMeta {
    pub fn partition_count(&self) -> i32 {
        self.partitions.len() as i32
    }

    pub fn partition(&self, index: i32) -> Option<&PartitionState> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }

    /// `unclean.leader.election.enable`, a topic-level setting only: every voter must decide
    /// elections alike, so they may not read their own broker configs.
    pub fn unclean_election(&self) -> bool {
        matches!(
            self.config.overrides.get("unclean.leader.election.enable"),
            Some(crate::config::Value::Bool(true))
        )
    }

    pub fn replication_factor(&self) -> i16 {
        self.partitions
            .first()
            .map_or(0, |p| p.replicas.len() as i16)
    }
}

/// The cluster's metadata at one point of the metadata log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterMetadata {
    pub cluster_id: String,
    pub brokers: BTreeMap<i32, BrokerInfo>,
    /// Ordered by name (every voter iterates alike); a topic no command changed is the
    /// same allocation as in the metadata it came from.
    pub topics: BTreeMap<String, Arc<TopicMeta>>,
    /// Producer ids below this have been handed out in blocks.
    pub producer_id_block_end: i64,
    /// Brokers in controlled shutdown: fenced, and not unfenced by their last heartbeats.
    #[serde(default)]
    pub shutting_down: BTreeSet<i32>,
    /// SCRAM credentials by user and mechanism (KIP-554): every broker authenticates every
    /// user from the same replicated store.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scram_credentials: BTreeMap<String, BTreeMap<ScramMechanism, ScramCredential>>,
}

/// Producer ids are handed to brokers in blocks, one metadata command per block.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

impl ClusterMetadata {
    pub fn new(cluster_id: String) -> Self {
        Self {
            cluster_id,
            brokers: BTreeMap::new(),
            topics: BTreeMap::new(),
            producer_id_block_end: 0,
            shutting_down: BTreeSet::new(),
            scram_credentials: BTreeMap::new(),
        }
    }

    pub fn scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Option<&ScramCredential> {
        self.scram_credentials.get(user)?.get(&mechanism)
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<&Arc<TopicMeta>> {
        self.topics.values().find(|t| t.id == id)
    }

    /// Brokers that are registered and not fenced, in id order.
    pub fn live_brokers(&self) -> Vec<i32> {
        self.brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| b.id)
            .collect()
    }

    pub fn is_live(&self, broker: i32) -> bool {
        self.brokers.get(&broker).is_some_and(|b| !b.fenced)
    }
}

/// Kafka's rule: 1-249 characters of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka() {
        assert!(is_valid_topic_name("orders.v1_eu-west"));
        assert!(!is_valid_topic_name(""));
        assert!(!is_valid_topic_name(".."));
        assert!(!is_valid_topic_name("bad/name"));
        assert!(!is_valid_topic_name(&"x".repeat(250)));
        assert!(is_valid_topic_name(&"x".repeat(249)));
    }

    #[test]
    fn a_registration_without_listeners_is_one_plaintext_listener() {
        let old = r#"{"id":1,"host":"h","port":9092,"shards":2,"incarnation":7,"fenced":false}"#;
        let info: BrokerInfo = serde_json::from_str(old).unwrap();
        assert_eq!(info.endpoint("PLAINTEXT"), Some(("h", 9092)));
        assert_eq!(info.endpoint("SSL"), None);
        let with = BrokerInfo {
            listeners: vec![Endpoint {
                name: "SSL".into(),
                host: "s".into(),
                port: 9093,
                protocol: crate::security::listener::SecurityProtocol::Ssl,
            }],
            ..info
        };
        let back: BrokerInfo = serde_json::from_slice(&serde_json::to_vec(&with).unwrap()).unwrap();
        assert_eq!(back, with);
        assert_eq!(back.endpoint("SSL"), Some(("s", 9093)));
        assert_eq!(back.endpoint("PLAINTEXT"), None);
    }

    #[test]
    fn snapshot_round_trips_through_json() {
        let mut meta = ClusterMetadata::new("c".into());
        meta.topics.insert(
            "t".into(),
            Arc::new(TopicMeta {
                name: "t".into(),
                id: Uuid::new_v4(),
                partitions: vec![PartitionState {
                    replicas: vec![1],
                    leader: 1,
                    leader_epoch: 0,
                    isr: vec![1],
                    partition_epoch: 0,
                    offline: vec![2],
                }],
                config: TopicConfig::from_pairs([("segment.bytes", "65536")]).unwrap(),
            }),
        );
        let json = serde_json::to_vec(&meta).unwrap();
        assert_eq!(
            serde_json::from_slice::<ClusterMetadata>(&json).unwrap(),
            meta
        );
        // A topic behind its `Arc` is written as the topic itself: snapshots of the
        // version that held topics by value read alike.
        let plain: BTreeMap<&String, &TopicMeta> =
            meta.topics.iter().map(|(k, v)| (k, &**v)).collect();
        let text = String::from_utf8(json).unwrap();
        assert!(text.contains(&serde_json::to_string(&plain).unwrap()));
    }
}
