//! Produce: validate each partition's batches here, append them on the owning shards, answer
//! once they are durable (acks=1/-1) or not at all (acks=0).

use std::rc::Rc;

use futures::future::LocalBoxFuture;
use kafka_protocol::messages::produce_request::PartitionProduceData;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;

use super::super::shard::{Shard, ShardMessage};
use super::super::work::place;
use super::super::work::{ProduceOutcome, ProducePart, ProduceWork};
use super::authz::Authorizer;
use super::{duplicated, in_request_order, led_partition};
use crate::cluster::TopicMeta;
use crate::cluster::quorum::MetadataImage;
use crate::group::OFFSETS_TOPIC;
use crate::protocol::record_batch::{BatchError, BatchInfo, validate_produce_batches};
use crate::protocol::{ErrorCode, frame};
use crate::security::acl::{Operation, ResourceType};
use crate::storage::Records;

/// A compressed batch may decompress to at most this many times the topic's
/// `max.message.bytes` (a decompression bomb is refused with RECORD_LIST_TOO_LARGE).
pub const MAX_DECOMPRESSION_RATIO: usize = 16;

/// Why a partition's records were refused, with what Produce v8+ tells the producer.
struct Refusal {
    code: ErrorCode,
    message: Option<String>,
    /// Index in its batch of the record at fault (`record_errors`).
    record: Option<i32>,
}

impl From<ErrorCode> for Refusal {
    fn from(code: ErrorCode) -> Self {
        Refusal {
            code,
            message: None,
            record: None,
        }
    }
}

impl From<BatchError> for Refusal {
    fn from(e: BatchError) -> Self {
        tracing::debug!("rejecting produce: {e}");
        Refusal {
            code: e.kafka_error(),
            record: e.record_index(),
            message: Some(e.to_string()),
        }
    }
}

/// Validates and appends; the returned future resolves to the response (`None` for acks=0).
pub async fn handle(
    shard: &Rc<Shard>,
    request: ProduceRequest,
    frame_len: usize,
    auth: &Authorizer,
) -> LocalBoxFuture<'static, Option<ProduceResponse>> {
    // Kafka: a transactional produce needs WRITE on its transactional id, then each topic
    // WRITE.
    let transaction_allowed = request
        .transactional_id
        .as_ref()
        .is_none_or(|id| auth.allows(Operation::Write, ResourceType::TransactionalId, id.as_str()));
    let acks = request.acks;
    let timeout = std::time::Duration::from_millis(request.timeout_ms.max(0) as u64);
    let mut outcomes = Vec::new();
    let mut refusals = Vec::new();
    let mut by_shard = shard.per_shard::<ProducePart>();
    let keys = request.topic_data.iter().flat_map(|t| {
        t.partition_data
            .iter()
            .map(move |p| (t.name.as_str(), p.index))
    });
    let mut duplicates = duplicated(keys).into_iter();
    let meta = shard.metadata();
    let frame_bytes = frame::buffer_bytes(frame_len);
    for topic in &request.topic_data {
        let authorization = if !transaction_allowed {
            Err(ErrorCode::TransactionalIdAuthorizationFailed)
        } else if !auth.topic(Operation::Write, topic.name.as_str()) {
            Err(ErrorCode::TopicAuthorizationFailed)
        } else {
            Ok(())
        };
        for partition in &topic.partition_data {
            let slot = outcomes.len();
            outcomes.push(ProduceOutcome {
                slot,
                error: 0,
                base_offset: -1,
                log_start_offset: -1,
            });
            let duplicate = duplicates.next().unwrap_or(false);
            let checked = authorization.map_err(Refusal::from).and_then(|()| {
                check_partition(shard, &meta, acks, &topic.name, partition, duplicate)
            });
            match checked {
                Ok((t, infos)) => {
                    let records = partition.records.clone().unwrap_or_default();
                    by_shard[shard.owner(t, partition.index)].push(ProducePart {
                        slot,
                        topic: t.name.clone(),
                        partition: partition.index,
                        // Slices of the request, not copies: the log patches a copy of
                        // each batch's header.
                        records: Records::in_frame(records, frame_bytes),
                        infos,
                    });
                }
                Err(refusal) => {
                    outcomes[slot].error = refusal.code.code();
                    refusals.push((slot, refusal));
                }
            }
        }
    }
    let mut replies = Vec::new();
    for (target, parts) in by_shard.into_iter().enumerate() {
        if parts.is_empty() {
            continue;
        }
        let (tx, rx) = futures::channel::oneshot::channel();
        shard
            .send(
                target,
                ShardMessage::Produce(
                    ProduceWork {
                        acks,
                        timeout,
                        parts,
                    },
                    tx,
                ),
            )
            .await;
        replies.push(rx);
    }
    Box::pin(async move {
        for reply in futures::future::join_all(replies).await {
            place(&mut outcomes, reply.ok());
        }
        (acks != 0).then(|| response(&request, &outcomes, refusals))
    })
}

/// Whether a partition's batches may be appended, in Kafka's order of checks: acks, a
/// partition named twice (INVALID_REQUEST), an internal topic (only its coordinator
/// appends there: INVALID_TOPIC_EXCEPTION, as `ReplicaManager.appendToLocalLog` answers a
/// client), leadership, then the batches themselves.
fn check_partition<'a>(
    shard: &Shard,
    meta: &'a MetadataImage,
    acks: i16,
    topic: &str,
    partition: &PartitionProduceData,
    duplicate: bool,
) -> Result<(&'a TopicMeta, Vec<BatchInfo>), Refusal> {
    if !matches!(acks, -1..=1) {
        return Err(ErrorCode::InvalidRequiredAcks.into());
    }
    if duplicate {
        return Err(ErrorCode::InvalidRequest.into());
    }
    if topic == OFFSETS_TOPIC {
        tracing::debug!("refused a client's produce to {topic}");
        return Err(ErrorCode::InvalidTopicException.into());
    }
    let (t, _) = led_partition(meta, shard.node_id(), topic, partition.index)?;
    let max = shard
        .topic_settings(&t.name)
        .ok_or(ErrorCode::UnknownTopicOrPartition)?
        .max_message_bytes;
    let infos = check_records(partition.records.as_deref(), max)?;
    Ok((t, infos))
}

/// The partition's records must be whole, valid v2 batches (compressed ones included, see
/// [`validate_produce_batches`]), each within the topic's size limit.
fn check_records(
    records: Option<&[u8]>,
    max_batch_bytes: usize,
) -> Result<Vec<BatchInfo>, Refusal> {
    let records = records.ok_or(ErrorCode::CorruptMessage)?;
    let max_decompressed = max_batch_bytes.saturating_mul(MAX_DECOMPRESSION_RATIO);
    let infos = validate_produce_batches(records, max_decompressed)?;
    if infos.iter().any(|b| b.len > max_batch_bytes) {
        return Err(ErrorCode::MessageTooLarge.into());
    }
    Ok(infos)
}

fn response(
    request: &ProduceRequest,
    outcomes: &[ProduceOutcome],
    refusals: Vec<(usize, Refusal)>,
) -> ProduceResponse {
    let mut by_slot: Vec<Option<Refusal>> = outcomes.iter().map(|_| None).collect();
    for (slot, refusal) in refusals {
        by_slot[slot] = Some(refusal);
    }
    let responses = in_request_order(
        &request.topic_data,
        |t| &t.partition_data,
        outcomes.iter().zip(by_slot),
        |p, (o, refusal): (&ProduceOutcome, Option<Refusal>)| {
            let answer = PartitionProduceResponse::default()
                .with_index(p.index)
                .with_error_code(o.error)
                .with_base_offset(o.base_offset)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(o.log_start_offset);
            match refusal {
                Some(refusal) => with_refusal(answer, refusal),
                None => answer,
            }
        },
        |t, partitions| {
            TopicProduceResponse::default()
                .with_name(t.name.clone())
                .with_partition_responses(partitions)
        },
    );
    ProduceResponse::default().with_responses(responses)
}

/// Adds the refusal's message and failing record (Produce v8+; older versions drop them).
fn with_refusal(answer: PartitionProduceResponse, refusal: Refusal) -> PartitionProduceResponse {
    let message = refusal.message.map(StrBytes::from_string);
    let record_errors = refusal
        .record
        .map(|index| {
            BatchIndexAndErrorMessage::default()
                .with_batch_index(index)
                .with_batch_index_error_message(message.clone())
        })
        .into_iter()
        .collect();
    answer
        .with_record_errors(record_errors)
        .with_error_message(message)
}
