//! Topic creation and deletion rules, as pure functions over [`ClusterMetadata`].

use uuid::Uuid;

use super::{ClusterMetadata, TopicMeta, is_valid_topic_name};
use crate::config::TopicConfig;
use crate::protocol::ErrorCode;

/// A CreateTopics entry, with -1 meaning "the broker's default" as in Kafka.
#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    /// Replica lists by partition, when the client assigns replicas itself.
    pub assignment: Option<Vec<Vec<i32>>>,
    pub configs: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub enum TopicRef {
    Name(String),
    Id(Uuid),
}

#[derive(Debug, Clone, PartialEq)]
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

/// What placement needs to know about the cluster.
pub struct Defaults {
    pub partitions: i32,
    pub replication_factor: i16,
    pub brokers: Vec<i32>,
}

/// Checks a CreateTopics entry against the metadata and returns the topic to add.
pub fn plan_create(
    meta: &ClusterMetadata,
    topic: &NewTopic,
    defaults: &Defaults,
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
    let partitions = match &topic.assignment {
        Some(assignment) => check_assignment(topic, assignment, &defaults.brokers)?,
        None => check_counts(topic, defaults)?,
    };
    let config =
        TopicConfig::from_pairs(topic.configs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| TopicError::new(ErrorCode::InvalidConfig, e.to_string()))?;
    Ok(TopicMeta {
        name: topic.name.clone(),
        id: Uuid::new_v4(),
        partitions,
        config,
    })
}

fn check_counts(topic: &NewTopic, defaults: &Defaults) -> Result<i32, TopicError> {
    let partitions = match topic.partitions {
        -1 => defaults.partitions,
        n if n > 0 => n,
        n => {
            return Err(TopicError::new(
                ErrorCode::InvalidPartitions,
                format!("number of partitions must be larger than 0, got {n}"),
            ));
        }
    };
    let replication_factor = match topic.replication_factor {
        -1 => defaults.replication_factor,
        n => n,
    };
    let brokers = defaults.brokers.len();
    if replication_factor < 1 || replication_factor as usize > brokers {
        return Err(TopicError::new(
            ErrorCode::InvalidReplicationFactor,
            format!(
                "replication factor {replication_factor} is not between 1 and the {brokers} available broker(s)"
            ),
        ));
    }
    Ok(partitions)
}

fn check_assignment(
    topic: &NewTopic,
    assignment: &[Vec<i32>],
    brokers: &[i32],
) -> Result<i32, TopicError> {
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
    Ok(assignment.len() as i32)
}

/// Finds the topic a DeleteTopics entry names.
pub fn find<'a>(meta: &'a ClusterMetadata, topic: &TopicRef) -> Result<&'a TopicMeta, TopicError> {
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

    fn new_topic(name: &str, partitions: i32, rf: i16) -> NewTopic {
        NewTopic {
            name: name.into(),
            partitions,
            replication_factor: rf,
            assignment: None,
            configs: vec![],
        }
    }

    fn defaults() -> Defaults {
        Defaults {
            partitions: 3,
            replication_factor: 1,
            brokers: vec![1],
        }
    }

    fn code(r: Result<TopicMeta, TopicError>) -> i16 {
        r.err().map_or(0, |e| e.code)
    }

    #[test]
    fn applies_defaults_and_kafka_errors() {
        let meta = ClusterMetadata::new();
        let t = plan_create(&meta, &new_topic("a", -1, -1), &defaults()).unwrap();
        assert_eq!(t.partitions, 3);
        assert_eq!(
            code(plan_create(&meta, &new_topic("a", 0, 1), &defaults())),
            37
        );
        assert_eq!(
            code(plan_create(&meta, &new_topic("a", 1, 3), &defaults())),
            38
        );
        assert_eq!(
            code(plan_create(&meta, &new_topic("a", 1, 0), &defaults())),
            38
        );
        assert_eq!(
            code(plan_create(&meta, &new_topic("a/b", 1, 1), &defaults())),
            17
        );
        let mut bad_config = new_topic("a", 1, 1);
        bad_config
            .configs
            .push(("segment.bytes".into(), "x".into()));
        assert_eq!(code(plan_create(&meta, &bad_config, &defaults())), 40);
    }

    #[test]
    fn existing_topics_and_manual_assignments() {
        let mut meta = ClusterMetadata::new();
        let t = plan_create(&meta, &new_topic("a", 2, 1), &defaults()).unwrap();
        meta.topics.insert("a".into(), t);
        assert_eq!(
            code(plan_create(&meta, &new_topic("a", 2, 1), &defaults())),
            36
        );
        let mut manual = new_topic("b", -1, -1);
        manual.assignment = Some(vec![vec![1], vec![1]]);
        assert_eq!(
            plan_create(&meta, &manual, &defaults()).unwrap().partitions,
            2
        );
        manual.assignment = Some(vec![vec![1, 2]]);
        assert_eq!(code(plan_create(&meta, &manual, &defaults())), 39);
    }
}
