//! CreateTopics, DeleteTopics, DescribeConfigs and InitProducerId: requests answered by, or
//! forwarded to, the controller on shard 0.

use std::rc::Rc;
use std::sync::Arc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    InitProducerIdRequest, InitProducerIdResponse, ProducerId, TopicName,
};

use super::super::shard::{Shard, ShardMessage};
use super::str_bytes;
use crate::cluster::controller::{ControllerRequest, ControllerResponse};
use crate::cluster::topics::{NewTopic, TopicError, TopicRef};
use crate::cluster::{TopicMeta, limits};
use crate::config::{TOPIC_PROPERTIES, Value};
use crate::group::OFFSETS_TOPIC;
use crate::protocol::ErrorCode;

/// Kafka's ConfigSource values.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;
/// Kafka's ConfigType values.
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_LONG: i8 = 5;
/// Kafka's ConfigResource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

pub(super) async fn controller(
    shard: &Rc<Shard>,
    request: ControllerRequest,
) -> Option<ControllerResponse> {
    shard
        .call(0, |tx| ShardMessage::Controller(request, tx))
        .await
}

pub(super) fn not_available() -> TopicError {
    TopicError::new(ErrorCode::NotController, "the controller is not available")
}

/// Internal topics are the broker's: created by the coordinator that needs them, never
/// deleted or grown by a client (Kafka answers a client creating its own internal
/// `__cluster_metadata` this way).
fn internal_topic_refusal(name: &str, what: &str) -> Option<TopicError> {
    (name == OFFSETS_TOPIC).then(|| {
        TopicError::new(
            ErrorCode::InvalidRequest,
            format!("{what} of internal topic {name} is prohibited."),
        )
    })
}

/// The controller's per-topic answers to a request about `asked` topics.
fn topic_results(
    answer: Option<ControllerResponse>,
    asked: usize,
) -> Vec<Result<Arc<TopicMeta>, TopicError>> {
    match answer {
        Some(ControllerResponse::Topics(results)) => results,
        Some(ControllerResponse::Done(Err(e))) => (0..asked).map(|_| Err(e.clone())).collect(),
        _ => (0..asked).map(|_| Err(not_available())).collect(),
    }
}

/// The controller's answers for the topics it was asked about, with the refused ones put
/// back at their places in the request.
fn with_refusals<T>(
    refused: Vec<Option<TopicError>>,
    answered: Vec<Result<T, TopicError>>,
) -> Vec<Result<T, TopicError>> {
    let mut answered = answered.into_iter();
    refused
        .into_iter()
        .map(|refusal| match refusal {
            Some(e) => Err(e),
            None => answered.next().unwrap_or_else(|| Err(not_available())),
        })
        .collect()
}

pub async fn create_topics(
    shard: &Rc<Shard>,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let refused: Vec<Option<TopicError>> = request
        .topics
        .iter()
        .map(|t| internal_topic_refusal(t.name.as_str(), "Creation"))
        .collect();
    let topics: Vec<NewTopic> = request
        .topics
        .iter()
        .zip(&refused)
        .filter(|(_, refusal)| refusal.is_none())
        .map(|(t, _)| NewTopic {
            name: t.name.to_string(),
            partitions: t.num_partitions,
            replication_factor: t.replication_factor,
            assignment: (!t.assignments.is_empty()).then(|| {
                let mut a = t.assignments.clone();
                a.sort_by_key(|p| p.partition_index);
                a.iter()
                    .map(|p| p.broker_ids.iter().map(|b| b.0).collect())
                    .collect()
            }),
            configs: t
                .configs
                .iter()
                .map(|c| {
                    let value = c.value.as_ref().map_or("", |v| v.as_str());
                    (c.name.to_string(), value.to_string())
                })
                .collect(),
        })
        .collect();
    let asked = topics.len();
    let create = ControllerRequest::CreateTopics {
        topics,
        validate_only: request.validate_only,
    };
    let results = match asked {
        0 => Vec::new(),
        _ => topic_results(controller(shard, create).await, asked),
    };
    let results = with_refusals(refused, results);
    let topics = request
        .topics
        .iter()
        .zip(results)
        .map(|(t, result)| match result {
            Ok(meta) => CreatableTopicResult::default()
                .with_name(t.name.clone())
                .with_topic_id(meta.id)
                .with_num_partitions(meta.partition_count())
                .with_replication_factor(meta.replication_factor())
                .with_configs(Some(topic_configs(shard, &meta))),
            Err(e) => CreatableTopicResult::default()
                .with_name(t.name.clone())
                .with_error_code(e.code)
                .with_error_message(Some(str_bytes(e.message)))
                .with_num_partitions(-1)
                .with_replication_factor(-1),
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

fn topic_configs(shard: &Shard, meta: &TopicMeta) -> Vec<CreatableTopicConfigs> {
    TOPIC_PROPERTIES
        .iter()
        .map(|(p, _)| {
            let (value, own) = meta.config.resolve(p.name, &shard.config);
            CreatableTopicConfigs::default()
                .with_name(str_bytes(p.name))
                .with_value(Some(str_bytes(value.to_string())))
                .with_config_source(if own { SOURCE_TOPIC } else { SOURCE_DEFAULT })
        })
        .collect()
}

/// CreatePartitions: each topic grows to its new count, one metadata change per topic.
pub async fn create_partitions(
    shard: &Rc<Shard>,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    let whole = check_partitions_request(shard, &request);
    for topic in &request.topics {
        let refusal = internal_topic_refusal(topic.name.as_str(), "Adding partitions to");
        let result = if let Err(e) = &whole {
            Err(e.clone())
        } else if let Some(refusal) = refusal {
            Err(refusal)
        } else if topic.assignments.is_some() {
            Err(TopicError::new(
                ErrorCode::InvalidRequest,
                "manual assignment of new partitions is not supported",
            ))
        } else {
            let change = ControllerRequest::CreatePartitions {
                topic: topic.name.to_string(),
                count: topic.count,
                validate_only: request.validate_only,
            };
            match controller(shard, change).await {
                Some(ControllerResponse::Done(result)) => result,
                _ => Err(not_available()),
            }
        };
        let entry = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        results.push(match result {
            Ok(()) => entry,
            Err(e) => entry
                .with_error_code(e.code)
                .with_error_message(Some(str_bytes(e.message))),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}

/// Kafka refuses, as a whole, an operation adding more than
/// [`limits::MAX_PARTITIONS_PER_REQUEST`] partitions (counted against this shard's metadata;
/// the controller checks each topic again).
fn check_partitions_request(
    shard: &Shard,
    request: &CreatePartitionsRequest,
) -> Result<(), TopicError> {
    let meta = shard.metadata();
    limits::check_request_size(request.topics.iter().map(|t| {
        let current = meta
            .topics
            .get(t.name.as_str())
            .map_or(0, |t| t.partition_count());
        u64::try_from(t.count.saturating_sub(current)).unwrap_or(0)
    }))
}

pub async fn delete_topics(
    shard: &Rc<Shard>,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let refs: Vec<TopicRef> = if version >= 6 {
        request
            .topics
            .iter()
            .map(|t| match &t.name {
                Some(name) => TopicRef::Name(name.to_string()),
                None => TopicRef::Id(t.topic_id),
            })
            .collect()
    } else {
        request
            .topic_names
            .iter()
            .map(|n| TopicRef::Name(n.to_string()))
            .collect()
    };
    let meta = shard.metadata();
    let refused: Vec<Option<TopicError>> = refs
        .iter()
        .map(|r| {
            let name = match r {
                TopicRef::Name(name) => Some(name.as_str()),
                TopicRef::Id(id) => meta.topic_by_id(*id).map(|t| t.name.as_str()),
            };
            name.and_then(|name| internal_topic_refusal(name, "Deletion"))
        })
        .collect();
    let deletable: Vec<TopicRef> = refs
        .iter()
        .zip(&refused)
        .filter(|(_, refusal)| refusal.is_none())
        .map(|(r, _)| r.clone())
        .collect();
    let asked = deletable.len();
    let results = match asked {
        0 => Vec::new(),
        _ => {
            let answer = controller(shard, ControllerRequest::DeleteTopics(deletable)).await;
            topic_results(answer, asked)
        }
    };
    let results = with_refusals(refused, results);
    let responses = refs
        .iter()
        .zip(results)
        .map(|(r, result)| {
            let named = match r {
                TopicRef::Name(n) => {
                    DeletableTopicResult::default().with_name(Some(TopicName(str_bytes(n.clone()))))
                }
                TopicRef::Id(id) => DeletableTopicResult::default().with_topic_id(id.to_owned()),
            };
            match result {
                Ok(meta) => named
                    .with_name(Some(TopicName(str_bytes(meta.name.clone()))))
                    .with_topic_id(meta.id),
                Err(e) => named
                    .with_error_code(e.code)
                    .with_error_message(Some(str_bytes(e.message))),
            }
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

pub fn describe_configs(shard: &Shard, request: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let results = request
        .resources
        .iter()
        .map(|resource| {
            let wanted = |name: &str| {
                resource
                    .configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
            };
            let base = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match describe(
                shard,
                resource.resource_type,
                resource.resource_name.as_str(),
            ) {
                Ok(entries) => base.with_configs(
                    entries
                        .into_iter()
                        .filter(|(name, _, _)| wanted(name))
                        .map(|(name, value, source)| config_entry(name, &value, source))
                        .collect(),
                ),
                Err(e) => base
                    .with_error_code(e.code)
                    .with_error_message(Some(str_bytes(e.message))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// (name, value, source) of every config of a topic or of this broker.
fn describe(
    shard: &Shard,
    resource_type: i8,
    name: &str,
) -> Result<Vec<(&'static str, Value, i8)>, TopicError> {
    match resource_type {
        RESOURCE_TOPIC => {
            let meta = shard.metadata();
            let topic = meta.topics.get(name).ok_or_else(|| {
                TopicError::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("topic '{name}' does not exist"),
                )
            })?;
            Ok(TOPIC_PROPERTIES
                .iter()
                .map(|(p, _)| {
                    let (value, own) = topic.config.resolve(p.name, &shard.config);
                    (
                        p.name,
                        value,
                        if own { SOURCE_TOPIC } else { SOURCE_DEFAULT },
                    )
                })
                .collect())
        }
        RESOURCE_BROKER if name.is_empty() || name == shard.settings.node_id.to_string() => {
            Ok(shard
                .config
                .entries()
                .into_iter()
                .map(|(name, value, default)| {
                    let source = if default {
                        SOURCE_DEFAULT
                    } else {
                        SOURCE_STATIC_BROKER
                    };
                    (name, value, source)
                })
                .collect())
        }
        RESOURCE_BROKER => Err(TopicError::new(
            ErrorCode::InvalidRequest,
            format!("this is broker {}, not {name}", shard.settings.node_id),
        )),
        other => Err(TopicError::new(
            ErrorCode::InvalidRequest,
            format!("resource type {other} is not served"),
        )),
    }
}

fn config_entry(name: &str, value: &Value, source: i8) -> DescribeConfigsResourceResult {
    let config_type = match value {
        Value::Int(_) => TYPE_LONG,
        Value::Bool(_) => TYPE_BOOLEAN,
        Value::Str(_) => TYPE_STRING,
    };
    DescribeConfigsResourceResult::default()
        .with_name(str_bytes(name))
        .with_value(Some(str_bytes(value.to_string())))
        .with_config_source(source)
        .with_config_type(config_type)
}

/// Idempotent producers get a fresh id (epoch 0); one re-initializing with its id and epoch
/// (v3+) keeps the id with the epoch bumped. Transactions are not served.
pub async fn init_producer_id(
    shard: &Rc<Shard>,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let fail = |code: ErrorCode| {
        InitProducerIdResponse::default()
            .with_error_code(code.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if request.transactional_id.is_some() {
        tracing::debug!("transactional producer refused: transactions are not served");
        return fail(ErrorCode::InvalidRequest);
    }
    let (id, epoch) = (request.producer_id.0, request.producer_epoch);
    if id >= 0 && (0..i16::MAX).contains(&epoch) {
        return InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch + 1);
    }
    match controller(shard, ControllerRequest::AllocateProducerId).await {
        Some(ControllerResponse::ProducerId(Ok(id))) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Some(ControllerResponse::ProducerId(Err(e))) => {
            tracing::error!("producer id allocation failed: {}", e.message);
            fail(ErrorCode::KafkaStorageError)
        }
        _ => fail(ErrorCode::NotCoordinator),
    }
}
