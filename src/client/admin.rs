//! CreateTopics, DeleteTopics, CreatePartitions and DescribeConfigs on one connection.

use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsRequest, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_partitions_response::CreatePartitionsResponse;
use kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
};
use kafka_protocol::messages::create_topics_response::CreateTopicsResponse;
use kafka_protocol::messages::delete_topics_request::{DeleteTopicState, DeleteTopicsRequest};
use kafka_protocol::messages::delete_topics_response::DeleteTopicsResponse;
use kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResponse;
use kafka_protocol::messages::{ApiKey, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::error::{Error, Result, check};
use super::versions::Versions;
use super::wire::Conn;

/// Timeout given to the broker for admin operations.
pub const ADMIN_TIMEOUT_MS: i32 = 30_000;
/// DescribeConfigs resource type of a topic.
const RESOURCE_TOPIC: i8 = 2;

/// `config_source` values of DescribeConfigs v1+.
pub mod config_source {
    pub const UNKNOWN: i8 = 0;
    pub const DYNAMIC_TOPIC_CONFIG: i8 = 1;
    pub const DYNAMIC_BROKER_CONFIG: i8 = 2;
    pub const DYNAMIC_DEFAULT_BROKER_CONFIG: i8 = 3;
    pub const STATIC_BROKER_CONFIG: i8 = 4;
    pub const DEFAULT_CONFIG: i8 = 5;
    pub const DYNAMIC_BROKER_LOGGER_CONFIG: i8 = 6;
}

pub(crate) fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// A topic to create. -1 partitions or replication factor: the broker's default.
#[derive(Clone, Debug)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: Vec<(String, String)>,
}

impl NewTopic {
    pub fn new(name: &str, partitions: i32, replication_factor: i16) -> NewTopic {
        NewTopic {
            name: name.to_string(),
            partitions,
            replication_factor,
            configs: Vec::new(),
        }
    }
}

/// What CreateTopics answered (partitions and replication factor are -1 before v5).
#[derive(Clone, Debug)]
pub struct CreatedTopic {
    pub id: uuid::Uuid,
    pub partitions: i32,
    pub replication_factor: i16,
}

/// One entry of DescribeConfigs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    pub source: i8,
    pub read_only: bool,
    pub sensitive: bool,
}

pub(crate) fn create_topic(
    conn: &mut Conn,
    versions: &Versions,
    t: &NewTopic,
) -> Result<CreatedTopic> {
    let version = versions.negotiate(ApiKey::CreateTopics)?;
    let req = CreateTopicsRequest::default()
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(topic_name(&t.name))
                .with_num_partitions(t.partitions)
                .with_replication_factor(t.replication_factor)
                .with_configs(
                    t.configs
                        .iter()
                        .map(|(k, v)| {
                            CreatableTopicConfig::default()
                                .with_name(StrBytes::from_string(k.clone()))
                                .with_value(Some(StrBytes::from_string(v.clone())))
                        })
                        .collect(),
                ),
        ])
        .with_timeout_ms(ADMIN_TIMEOUT_MS);
    let resp: CreateTopicsResponse = conn.call(ApiKey::CreateTopics, version, &req)?;
    let r = resp
        .topics
        .iter()
        .find(|r| r.name.0.as_str() == t.name)
        .ok_or_else(|| Error::Protocol(format!("CreateTopics response lacks topic {}", t.name)))?;
    check(
        r.error_code,
        r.error_message.as_ref().map(|m| m.to_string()),
        Some(&t.name),
    )?;
    Ok(CreatedTopic {
        id: r.topic_id,
        partitions: r.num_partitions,
        replication_factor: r.replication_factor,
    })
}

pub(crate) fn delete_topic(conn: &mut Conn, versions: &Versions, topic: &str) -> Result<()> {
    let version = versions.negotiate(ApiKey::DeleteTopics)?;
    let mut req = DeleteTopicsRequest::default().with_timeout_ms(ADMIN_TIMEOUT_MS);
    if version >= 6 {
        req = req.with_topics(vec![
            DeleteTopicState::default().with_name(Some(topic_name(topic))),
        ]);
    } else {
        req = req.with_topic_names(vec![topic_name(topic)]);
    }
    let resp: DeleteTopicsResponse = conn.call(ApiKey::DeleteTopics, version, &req)?;
    let r = resp
        .responses
        .iter()
        .find(|r| r.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
        .or_else(|| resp.responses.first())
        .ok_or_else(|| Error::Protocol(format!("DeleteTopics response lacks topic {topic}")))?;
    check(
        r.error_code,
        r.error_message.as_ref().map(|m| m.to_string()),
        Some(topic),
    )
}

pub(crate) fn create_partitions(
    conn: &mut Conn,
    versions: &Versions,
    topic: &str,
    count: i32,
) -> Result<()> {
    let version = versions.negotiate(ApiKey::CreatePartitions)?;
    let req = CreatePartitionsRequest::default()
        .with_topics(vec![
            CreatePartitionsTopic::default()
                .with_name(topic_name(topic))
                .with_count(count)
                .with_assignments(None),
        ])
        .with_timeout_ms(ADMIN_TIMEOUT_MS);
    let resp: CreatePartitionsResponse = conn.call(ApiKey::CreatePartitions, version, &req)?;
    let r = resp
        .results
        .iter()
        .find(|r| r.name.0.as_str() == topic)
        .ok_or_else(|| Error::Protocol(format!("CreatePartitions response lacks topic {topic}")))?;
    check(
        r.error_code,
        r.error_message.as_ref().map(|m| m.to_string()),
        Some(topic),
    )
}

pub(crate) fn describe_topic_configs(
    conn: &mut Conn,
    versions: &Versions,
    topics: &[String],
) -> Result<Vec<(String, Result<Vec<ConfigEntry>>)>> {
    if topics.is_empty() {
        return Ok(Vec::new());
    }
    let version = versions.negotiate(ApiKey::DescribeConfigs)?;
    let req = DescribeConfigsRequest::default().with_resources(
        topics
            .iter()
            .map(|t| {
                DescribeConfigsResource::default()
                    .with_resource_type(RESOURCE_TOPIC)
                    .with_resource_name(StrBytes::from_string(t.clone()))
                    .with_configuration_keys(None)
            })
            .collect(),
    );
    let resp: DescribeConfigsResponse = conn.call(ApiKey::DescribeConfigs, version, &req)?;
    Ok(topics
        .iter()
        .map(|t| {
            let result = match resp
                .results
                .iter()
                .find(|r| r.resource_type == RESOURCE_TOPIC && r.resource_name.as_str() == t)
            {
                None => Err(Error::Protocol(format!(
                    "DescribeConfigs response lacks topic {t}"
                ))),
                Some(r) => check(
                    r.error_code,
                    r.error_message.as_ref().map(|m| m.to_string()),
                    Some(t),
                )
                .map(|()| {
                    r.configs
                        .iter()
                        .map(|c| ConfigEntry {
                            name: c.name.to_string(),
                            value: c.value.as_ref().map(|v| v.to_string()),
                            source: c.config_source,
                            read_only: c.read_only,
                            sensitive: c.is_sensitive,
                        })
                        .collect()
                }),
            };
            (t.clone(), result)
        })
        .collect())
}
