//! Topic creation and deletion rules, as pure functions over [`ClusterMetadata`].

use std::sync::Arc;

use uuid::Uuid;

use serde::{Deserialize, Serialize};

use super::placement::{assign_replicas, elect_leader};
use super::{ClusterMetadata, PartitionState, TopicMeta, is_valid_topic_name};
use crate::config::TopicConfig;
use crate::protocol::ErrorCode;

/// A CreateTopics entry. -1 means "the broker's default" as in Kafka; the proposing broker
/// resolves it (`with_defaults`) so that every voter applies the same numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    /// Replica lists by partition, when the client assigns replicas itself.
    pub assignment: Option<Vec<Vec<i32>>>,
    pub configs: Vec<(String, String)>,
}

impl NewTopic {
    /// Replaces -1 partitions / replication factor by the broker's defaults (unless the
    /// client assigned replicas itself, where both must stay -1).
    pub fn with_defaults(mut self, partitions: i32, replication_factor: i16) -> Self {
        if self.assignment.is_none() {
            if self.partitions == -1 {
                self.partitions = partitions;
            }
            if self.replication_factor == -1 {
                self.replication_factor = replication_factor;
            }
        }
        self
    }

    /// How many partitions this entry asks for (0 for a count that is refused anyway).
    pub fn requested_partitions(&self) -> u64 {
        match &self.assignment {
            Some(assignment) => assignment.len() as u64,
            None => u64::try_from(self.partitions).unwrap_or(0),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TopicRef {
    Name(String),
    Id(Uuid),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicError {
    pub code: i16,
    pub message: String,
}

impl TopicError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code.code(),
            message: message.into(),
        }
    }
}

/// Checks a CreateTopics entry (defaults already resolved) against the metadata and
/// returns the topic to add: replicas placed on live brokers, leaders elected.
pub fn plan_create(
    meta: &ClusterMetadata,
    topic: &NewTopic,
    id: Uuid,
    seed: u64,
) -> Result<TopicMeta, TopicError> {
    if !is_valid_topic_name(&topic.name) {
        return Err(TopicError::new(
            ErrorCode::InvalidTopicException,
            format!(
                "topic name '{}' is not 1-249 characters of [a-zA-Z0-9._-]",
                topic.name
            ),
        ));
    }
    if meta.topics.contains_key(&topic.name) {
        return Err(TopicError::new(
            ErrorCode::TopicAlreadyExists,
            format!("topic '{}' already exists", topic.name),
        ));
    }
    let registered: Vec<i32> = meta.brokers.keys().copied().collect();
    let assignment = match &topic.assignment {
        Some(assignment) => {
            check_assignment(topic, assignment, &registered)?;
            assignment.clone()
        }
        None => {
            let live = meta.live_brokers();
            let (partitions, replication_factor) = check_counts(topic, live.len())?;
            assign_replicas(&live, partitions, replication_factor, 0, seed)
        }
    };
    let config =
        TopicConfig::from_pairs(topic.configs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| TopicError::new(ErrorCode::InvalidConfig, e.to_string()))?;
    Ok(TopicMeta {
        name: topic.name.clone(),
        id,
        partitions: new_partitions(meta, assignment),
        config,
    })
}

/// Fresh partitions over the given replica lists: ISR = all replicas, leader elected.
pub fn new_partitions(meta: &ClusterMetadata, assignment: Vec<Vec<i32>>) -> Vec<PartitionState> {
    assignment
        .into_iter()
        .map(|replicas| {
            let mut p = PartitionState {
                isr: replicas.clone(),
                replicas,
                leader: super::NO_LEADER,
                leader_epoch: 0,
                partition_epoch: 0,
                offline: Vec::new(),
            };
            p.leader = elect_leader(&p, meta);
            p
        })
        .collect()
}

fn check_counts(topic: &NewTopic, brokers: usize) -> Result<(usize, usize), TopicError> {
    let partitions = match topic.partitions {
        n if n > 0 => n as usize,
        n => {
            return Err(TopicError::new(
                ErrorCode::InvalidPartitions,
                format!("number of partitions must be larger than 0, got {n}"),
            ));
        }
    };
    let replication_factor = topic.replication_factor;
    if replication_factor < 1 || replication_factor as usize > brokers {
        return Err(TopicError::new(
            ErrorCode::InvalidReplicationFactor,
            format!(
                "replication factor {replication_factor} is not between 1 and the {brokers} available broker(s)"
            ),
        ));
    }
    Ok((partitions, replication_factor as usize))
}

fn check_assignment(
    topic: &NewTopic,
    assignment: &[Vec<i32>],
    brokers: &[i32],
) -> Result<(), TopicError> {
    if topic.partitions != -1 || topic.replication_factor != -1 {
        return Err(TopicError::new(
            ErrorCode::InvalidRequest,
            "both a replica assignment and a partition count or replication factor were given",
        ));
    }
    let invalid = |m: String| TopicError::new(ErrorCode::InvalidReplicaAssignment, m);
    if assignment.is_empty() {
        return Err(invalid("the replica assignment is empty".into()));
    }
    for (partition, replicas) in assignment.iter().enumerate() {
        let mut sorted = replicas.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if replicas.is_empty() || sorted.len() != replicas.len() {
            return Err(invalid(format!(
                "partition {partition}: replicas {replicas:?} are empty or repeat a broker"
            )));
        }
        if let Some(unknown) = replicas.iter().find(|b| !brokers.contains(b)) {
            return Err(invalid(format!(
                "partition {partition}: broker {unknown} is not registered"
            )));
        }
    }
    Ok(())
}

/// Finds the topic a DeleteTopics entry names.
pub fn find<'a>(
    meta: &'a ClusterMetadata,
    topic: &TopicRef,
) -> Result<&'a Arc<TopicMeta>, TopicError> {
    let found = match topic {
        TopicRef::Name(name) => meta.topics.get(name),
        TopicRef::Id(id) => meta.topic_by_id(*id),
    };
    found.ok_or_else(|| match topic {
        TopicRef::Name(name) => TopicError::new(
            ErrorCode::UnknownTopicOrPartition,
            format!("topic '{name}' does not exist"),
        ),
        TopicRef::Id(id) => {
            TopicError::new(ErrorCode::UnknownTopicId, format!("no topic with id {id}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::BrokerInfo;

    fn new_topic(name: &str, partitions: i32, rf: i16) -> NewTopic {
        NewTopic {
            name: name.into(),
            partitions,
            replication_factor: rf,
            assignment: None,
            configs: vec![],
        }
    }

    fn cluster(brokers: &[i32]) -> ClusterMetadata {
        let mut meta = ClusterMetadata::new("c".into());
        for &id in brokers {
            meta.brokers.insert(
                id,
                BrokerInfo {
                    id,
                    host: "127.0.0.1".into(),
                    port: 9092,
                    shards: 1,
                    incarnation: 1,
                    fenced: false,
                    listeners: Vec::new(),
                },
            );
        }
        meta
    }

    fn code(r: Result<TopicMeta, TopicError>) -> i16 {
        r.err().map_or(0, |e| e.code)
    }

    fn plan(meta: &ClusterMetadata, t: &NewTopic) -> Result<TopicMeta, TopicError> {
        plan_create(meta, t, Uuid::new_v4(), 42)
    }

    #[test]
    fn applies_defaults_and_kafka_errors() {
        let meta = cluster(&[1]);
        let t = plan(&meta, &new_topic("a", -1, -1).with_defaults(3, 1)).unwrap();
        assert_eq!(t.partition_count(), 3);
        assert_eq!(t.partitions[0].leader, 1);
        assert_eq!(code(plan(&meta, &new_topic("a", 0, 1))), 37);
        assert_eq!(code(plan(&meta, &new_topic("a", 1, 3))), 38);
        assert_eq!(code(plan(&meta, &new_topic("a", 1, 0))), 38);
        assert_eq!(code(plan(&meta, &new_topic("a/b", 1, 1))), 17);
        let mut bad_config = new_topic("a", 1, 1);
        bad_config
            .configs
            .push(("segment.bytes".into(), "x".into()));
        assert_eq!(code(plan(&meta, &bad_config)), 40);
    }

    #[test]
    fn replicas_land_on_distinct_live_brokers() {
        let mut meta = cluster(&[1, 2, 3]);
        let t = plan(&meta, &new_topic("a", 6, 3)).unwrap();
        for p in &t.partitions {
            assert_eq!(p.isr, p.replicas);
            assert_eq!(p.leader, p.replicas[0]);
        }
        meta.brokers.get_mut(&3).unwrap().fenced = true;
        assert_eq!(code(plan(&meta, &new_topic("b", 1, 3))), 38);
        let t = plan(&meta, &new_topic("b", 4, 2)).unwrap();
        assert!(t.partitions.iter().all(|p| !p.replicas.contains(&3)));
    }

    #[test]
    fn existing_topics_and_manual_assignments() {
        let mut meta = cluster(&[1]);
        let t = plan(&meta, &new_topic("a", 2, 1)).unwrap();
        meta.topics.insert("a".into(), Arc::new(t));
        assert_eq!(code(plan(&meta, &new_topic("a", 2, 1))), 36);
        let mut manual = new_topic("b", -1, -1);
        manual.assignment = Some(vec![vec![1], vec![1]]);
        assert_eq!(plan(&meta, &manual).unwrap().partition_count(), 2);
        manual.assignment = Some(vec![vec![1, 2]]);
        assert_eq!(code(plan(&meta, &manual)), 39);
    }
}
