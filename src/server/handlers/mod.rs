//! One module per Kafka API. `dispatch` routes a decoded request to its handler.
//!
//! Every handler but Produce runs to completion before the connection reads its next
//! request, as a Kafka broker does. Produce returns once its batches are appended in order
//! and leaves the wait for durability pending, so a pipelining producer keeps the disk busy.

mod admin;
mod api_versions;
mod fetch;
mod groups;
mod list_offsets;
mod metadata;
mod offset_for_leader_epoch;
mod produce;

use std::rc::Rc;

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;

use super::shard::Shard;
use crate::cluster::quorum::MetadataImage;
use crate::cluster::{NO_LEADER, PartitionState, TopicMeta};
use crate::protocol::{self, ErrorCode, Request};

/// What the connection does once a request is done.
pub enum Reply {
    Send(Bytes),
    /// acks=0 produce: no response.
    Nothing,
    /// Write this, then close: the protocol cannot continue.
    SendAndClose(Bytes),
    Close,
}

/// A request's reply, ready or still waiting (a produce's durability).
pub type PendingReply = LocalBoxFuture<'static, Reply>;

/// `client_host` is the peer's address as Kafka shows it (`/127.0.0.1`).
pub async fn dispatch(shard: &Rc<Shard>, request: Request, client_host: &str) -> PendingReply {
    let version = request.version();
    let client_id = request
        .header
        .client_id
        .as_ref()
        .map_or_else(String::new, |c| c.to_string());
    let correlation_id = request.header.correlation_id;
    let api_key = request.api_key;
    let response = match request.body {
        RequestKind::Produce(r) => {
            let pending = produce::handle(shard, r).await;
            return Box::pin(async move {
                match pending.await {
                    Some(body) => encode(
                        api_key,
                        version,
                        correlation_id,
                        ResponseKind::Produce(body),
                    ),
                    None => Reply::Nothing,
                }
            });
        }
        RequestKind::Fetch(r) => ResponseKind::Fetch(fetch::handle(shard, r).await),
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(list_offsets::handle(shard, r, version).await)
        }
        RequestKind::Metadata(r) => {
            ResponseKind::Metadata(metadata::handle(shard, r, version).await)
        }
        RequestKind::OffsetForLeaderEpoch(r) => {
            ResponseKind::OffsetForLeaderEpoch(offset_for_leader_epoch::handle(shard, r).await)
        }
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions::handle()),
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(admin::create_topics(shard, r).await)
        }
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(admin::create_partitions(shard, r).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(admin::delete_topics(shard, r, version).await)
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(admin::describe_configs(shard, r))
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(admin::init_producer_id(shard, r).await)
        }
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(groups::find_coordinator(shard, r, version).await)
        }
        RequestKind::JoinGroup(r) => ResponseKind::JoinGroup(
            groups::join_group(shard, r, version, &client_id, client_host).await,
        ),
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(groups::sync_group(shard, r).await),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(groups::heartbeat(shard, r).await),
        RequestKind::LeaveGroup(r) => {
            ResponseKind::LeaveGroup(groups::leave_group(shard, r, version).await)
        }
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(groups::offset_commit(shard, r).await)
        }
        RequestKind::OffsetFetch(r) => {
            ResponseKind::OffsetFetch(groups::offset_fetch(shard, r, version).await)
        }
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(groups::describe_groups(shard, r).await)
        }
        RequestKind::ListGroups(r) => ResponseKind::ListGroups(groups::list_groups(shard, r).await),
        RequestKind::DeleteGroups(r) => {
            ResponseKind::DeleteGroups(groups::delete_groups(shard, r).await)
        }
        RequestKind::OffsetDelete(r) => {
            ResponseKind::OffsetDelete(groups::offset_delete(shard, r).await)
        }
        other => {
            // decode_request only lets served APIs through.
            tracing::error!("no handler for {other:?}");
            return Box::pin(async { Reply::Close });
        }
    };
    let reply = encode(api_key, version, correlation_id, response);
    Box::pin(async move { reply })
}

fn encode(api_key: ApiKey, version: i16, correlation_id: i32, body: ResponseKind) -> Reply {
    match protocol::encode_response(api_key, version, correlation_id, &body) {
        Ok(bytes) => Reply::Send(bytes),
        Err(e) => {
            tracing::error!(?api_key, version, "cannot encode response: {e}");
            Reply::Close
        }
    }
}

/// A partition this broker must lead to serve a client: its topic and state, or the error
/// that sends the client to the leader.
fn led_partition<'a>(
    image: &'a MetadataImage,
    node: i32,
    topic: &str,
    partition: i32,
) -> Result<(&'a TopicMeta, &'a PartitionState), ErrorCode> {
    let t = image
        .topics
        .get(topic)
        .ok_or(ErrorCode::UnknownTopicOrPartition)?;
    let p = t
        .partition(partition)
        .ok_or(ErrorCode::UnknownTopicOrPartition)?;
    match p.leader {
        NO_LEADER => Err(ErrorCode::LeaderNotAvailable),
        leader if leader != node => Err(ErrorCode::NotLeaderOrFollower),
        _ => Ok((t, p)),
    }
}

/// A client's `current_leader_epoch` (-1: not given) against the partition's (KIP-320).
fn check_leader_epoch(p: &PartitionState, client_epoch: i32) -> Result<(), ErrorCode> {
    match client_epoch {
        e if e < 0 || e == p.leader_epoch => Ok(()),
        e if e < p.leader_epoch => Err(ErrorCode::FencedLeaderEpoch),
        _ => Err(ErrorCode::UnknownLeaderEpoch),
    }
}

/// Builds a response's topic list in request order from per-partition answers given in the
/// same order (request topics, then their partitions).
fn in_request_order<T, P, A, R, TR>(
    topics: &[T],
    partitions: impl Fn(&T) -> &[P],
    answers: impl IntoIterator<Item = A>,
    partition_response: impl Fn(&P, A) -> R,
    topic_response: impl Fn(&T, Vec<R>) -> TR,
) -> Vec<TR> {
    let mut answers = answers.into_iter();
    topics
        .iter()
        .map(|topic| {
            let responses = partitions(topic)
                .iter()
                .zip(answers.by_ref())
                .map(|(p, a)| partition_response(p, a))
                .collect();
            topic_response(topic, responses)
        })
        .collect()
}

fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}
