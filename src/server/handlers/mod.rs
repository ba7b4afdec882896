//! One module per Kafka API. `dispatch` routes a decoded request to its handler.
//!
//! Every handler but Produce runs to completion before the connection reads its next
//! request, as a Kafka broker does. Produce returns once its batches are appended in order
//! and leaves the wait for durability pending, so a pipelining producer keeps the disk busy.

mod acls;
mod admin;
mod api_versions;
pub(super) mod authz;
mod fetch;
mod groups;
mod list_offsets;
pub(super) mod metadata;
mod offset_for_leader_epoch;
mod produce;
mod users;

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::rc::Rc;

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, RequestKind, ResponseKind, SaslAuthenticateResponse,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

use self::authz::Authorizer;
use super::memory::HeldResponseMemory;
use super::shard::Shard;
use crate::cluster::quorum::MetadataImage;
use crate::cluster::{ClusterMetadata, NO_LEADER, PartitionState, TopicMeta};
use crate::protocol::pieces::Pieces;
use crate::protocol::{self, ErrorCode, Request};
use crate::replication::fetch_session::{BROKER_IDENTITY_TAG, BrokerIdentity};
use crate::runtime::Closed;
use crate::security::Principal;
use crate::security::listener::Endpoint;

/// What the connection does once a request is done.
pub enum Reply {
    Send(Bytes),
    /// Send these pieces (a Fetch response's, its records where they were read), holding
    /// their memory until written.
    SendHolding(Pieces, HeldResponseMemory),
    /// acks=0 produce: no response.
    Nothing,
    /// Write this, then close: the protocol cannot continue.
    SendAndClose(Bytes),
    Close,
}

impl Reply {
    /// What the connection writes for this reply, in one buffer.
    #[cfg(test)]
    pub fn written(&self) -> Bytes {
        match self {
            Reply::Send(b) | Reply::SendAndClose(b) => b.clone(),
            Reply::SendHolding(pieces, _) => pieces.concat().into(),
            Reply::Nothing | Reply::Close => Bytes::new(),
        }
    }
}

/// A request's reply, ready or still waiting (a produce's durability).
pub type PendingReply = LocalBoxFuture<'static, Reply>;

/// Who is at the other end of a connection, as far as the broker knows.
pub struct Peer {
    /// The peer's address as Kafka shows it (`/127.0.0.1`).
    pub host: String,
    /// The listener the connection came in on.
    listener: Rc<Endpoint>,
    /// Who the connection authenticated as (`User:ANONYMOUS` until it does).
    principal: RefCell<Principal>,
    /// The broker this connection's ApiVersions named, if any (a follower's fetch
    /// connection does); checked against the metadata at every replica fetch.
    broker: RefCell<Option<BrokerIdentity>>,
}

impl Peer {
    pub fn new(host: String, listener: Rc<Endpoint>) -> Self {
        Self {
            host,
            listener,
            principal: RefCell::new(Principal::anonymous()),
            broker: RefCell::new(None),
        }
    }

    /// The listener the connection came in on (its name and security protocol).
    pub fn listener(&self) -> &Endpoint {
        &self.listener
    }

    pub fn principal(&self) -> Principal {
        self.principal.borrow().clone()
    }

    /// Set once the connection authenticated (TLS client certificate, SASL).
    pub fn set_principal(&self, principal: Principal) {
        *self.principal.borrow_mut() = principal;
    }

    /// Whether this connection may fetch as replica `replica_id`: it named that broker, of
    /// this cluster, in the process the metadata has registered (Kafka requires the
    /// CLUSTER_ACTION permission; without authentication this is what is known).
    fn is_broker(&self, replica_id: i32, meta: &ClusterMetadata) -> bool {
        self.broker.borrow().as_ref().is_some_and(|b| {
            b.node_id == replica_id
                && b.cluster_id == meta.cluster_id
                && meta
                    .brokers
                    .get(&replica_id)
                    .is_some_and(|r| r.incarnation == b.incarnation)
        })
    }

    /// Whether this connection named a broker the metadata has registered, in its current
    /// process.
    fn named_registered_broker(&self, meta: &ClusterMetadata) -> bool {
        let node_id = self.broker.borrow().as_ref().map(|b| b.node_id);
        node_id.is_some_and(|id| self.is_broker(id, meta))
    }

    fn name_broker(&self, request: &ApiVersionsRequest) {
        let named = request.unknown_tagged_fields.get(&BROKER_IDENTITY_TAG);
        *self.broker.borrow_mut() = named.and_then(|b| BrokerIdentity::decode(b));
    }
}

/// Whether `frame`, a connection's first request, is an ApiVersions naming a broker of
/// this cluster in the process the metadata registered (how a replica fetcher opens its
/// connection).
pub fn names_registered_broker(shard: &Shard, frame: &Bytes, peer: &Peer) -> bool {
    match protocol::decode_request(frame.clone()) {
        Ok(Request {
            body: RequestKind::ApiVersions(r),
            ..
        }) => {
            peer.name_broker(&r);
            peer.named_registered_broker(&shard.metadata())
        }
        _ => false,
    }
}

/// Whether `peer` named, in an ApiVersions it sent, a broker of this cluster in the process
/// the metadata registered (asked of a SASL connection once it authenticated).
pub fn named_registered_broker(shard: &Shard, peer: &Peer) -> bool {
    peer.named_registered_broker(&shard.metadata())
}

pub async fn dispatch(shard: &Rc<Shard>, request: Request, peer: &Peer) -> PendingReply {
    let client_host = peer.host.as_str();
    let version = request.version();
    let client_id = request
        .header
        .client_id
        .as_ref()
        .map_or_else(String::new, |c| c.to_string());
    let correlation_id = request.header.correlation_id;
    let api_key = request.api_key;
    let auth = &Authorizer::new(&shard.settings.authorizer, &shard.metadata().metadata, peer);
    let response = match request.body {
        RequestKind::Produce(r) => {
            let pending = produce::handle(shard, r, request.frame_len, auth).await;
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
        RequestKind::Fetch(r) => {
            let Ok((body, splicer, mut held)) = fetch::handle(shard, r, peer, auth).await else {
                return Box::pin(async { Reply::Close });
            };
            let reply = match splicer.encode_fetch(version, correlation_id, &body) {
                Ok(pieces) => match held.resize(pieces.iter().map(Bytes::len).sum()).await {
                    Ok(()) => Reply::SendHolding(pieces, held),
                    Err(Closed) => Reply::Close,
                },
                Err(e) => {
                    tracing::error!(version, "cannot encode a fetch response: {e}");
                    Reply::Close
                }
            };
            return Box::pin(async move { reply });
        }
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(list_offsets::handle(shard, r, version, auth).await)
        }
        RequestKind::Metadata(r) => {
            ResponseKind::Metadata(metadata::handle(shard, r, version, peer, auth).await)
        }
        RequestKind::OffsetForLeaderEpoch(r) => ResponseKind::OffsetForLeaderEpoch(
            offset_for_leader_epoch::handle(shard, r, auth).await,
        ),
        RequestKind::ApiVersions(r) => {
            peer.name_broker(&r);
            ResponseKind::ApiVersions(api_versions::handle())
        }
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(admin::create_topics(shard, r, auth).await)
        }
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(admin::create_partitions(shard, r, auth).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(admin::delete_topics(shard, r, version, auth).await)
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(admin::describe_configs(shard, r, auth))
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(admin::init_producer_id(shard, r, auth).await)
        }
        RequestKind::FindCoordinator(r) => ResponseKind::FindCoordinator(
            groups::find_coordinator(shard, r, version, &peer.listener().name, auth).await,
        ),
        RequestKind::JoinGroup(r) => ResponseKind::JoinGroup(
            groups::join_group(shard, r, version, &client_id, client_host, auth).await,
        ),
        RequestKind::SyncGroup(r) => {
            ResponseKind::SyncGroup(groups::sync_group(shard, r, auth).await)
        }
        RequestKind::Heartbeat(r) => {
            ResponseKind::Heartbeat(groups::heartbeat(shard, r, auth).await)
        }
        RequestKind::LeaveGroup(r) => {
            ResponseKind::LeaveGroup(groups::leave_group(shard, r, version, auth).await)
        }
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(groups::offset_commit(shard, r, auth).await)
        }
        RequestKind::OffsetFetch(r) => {
            ResponseKind::OffsetFetch(groups::offset_fetch(shard, r, version, auth).await)
        }
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(groups::describe_groups(shard, r, auth).await)
        }
        RequestKind::ListGroups(r) => {
            ResponseKind::ListGroups(groups::list_groups(shard, r, auth).await)
        }
        RequestKind::DeleteGroups(r) => {
            ResponseKind::DeleteGroups(groups::delete_groups(shard, r, auth).await)
        }
        RequestKind::AlterUserScramCredentials(r) => {
            ResponseKind::AlterUserScramCredentials(users::alter(shard, r, auth).await)
        }
        RequestKind::DescribeUserScramCredentials(r) => {
            ResponseKind::DescribeUserScramCredentials(users::describe(shard, r, auth))
        }
        RequestKind::OffsetDelete(r) => {
            ResponseKind::OffsetDelete(groups::offset_delete(shard, r, auth).await)
        }
        RequestKind::CreateAcls(r) => {
            ResponseKind::CreateAcls(acls::create_acls(shard, r, auth).await)
        }
        RequestKind::DescribeAcls(r) => {
            ResponseKind::DescribeAcls(acls::describe_acls(shard, r, auth))
        }
        RequestKind::DeleteAcls(r) => {
            ResponseKind::DeleteAcls(acls::delete_acls(shard, r, auth).await)
        }
        // After authenticating, or on a listener without SASL, as Kafka answers.
        RequestKind::SaslHandshake(_) => ResponseKind::SaslHandshake(
            SaslHandshakeResponse::default().with_error_code(ErrorCode::IllegalSaslState.code()),
        ),
        RequestKind::SaslAuthenticate(_) => ResponseKind::SaslAuthenticate(
            SaslAuthenticateResponse::default()
                .with_error_code(ErrorCode::IllegalSaslState.code())
                .with_error_message(Some(str_bytes(
                    "SaslAuthenticate request received after successful authentication",
                ))),
        ),
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
/// that sends the client to the leader (or KAFKA_STORAGE_ERROR for a replica offline here).
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
    // This broker's replica is offline (KIP-112): Kafka answers so whoever leads.
    if p.offline.contains(&node) {
        return Err(ErrorCode::KafkaStorageError);
    }
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

/// For each key of a request (a (topic, partition), a user), in order, whether the request
/// names it more than once. Kafka answers every such partition INVALID_REQUEST
/// (`ListOffsetsRequest.duplicatePartitions`); the other APIs do the same here rather than
/// keep one of the copies.
fn duplicated<K: Eq + Hash>(keys: impl Iterator<Item = K>) -> Vec<bool> {
    let keys: Vec<K> = keys.collect();
    let mut counts: HashMap<&K, usize> = HashMap::with_capacity(keys.len());
    for key in &keys {
        *counts.entry(key).or_default() += 1;
    }
    keys.iter().map(|key| counts[key] > 1).collect()
}

fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}
