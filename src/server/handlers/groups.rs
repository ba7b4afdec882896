//! The consumer-group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, DescribeGroups, ListGroups, DeleteGroups, OffsetDelete.
//!
//! A group's coordinator is the leader of partition `partition_for(group)` of
//! `__consumer_offsets`; on that broker the request goes to the shard owning that partition
//! (`group::coordinator`). Any other broker answers NOT_COORDINATOR.

use std::rc::Rc;

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::super::shard::{Shard, ShardMessage};
use super::str_bytes;
use crate::cluster::NO_LEADER;
use crate::cluster::controller::{ControllerRequest, ControllerResponse};
use crate::cluster::topics::NewTopic;
use crate::group::coordinator::{GroupAnswer, GroupCall, GroupWork};
use crate::group::offsets::TopicPartition;
use crate::group::records::{CommittedOffset, MAX_STRING_BYTES};
use crate::group::state::{JoinRequest, SyncRequest};
use crate::group::{OFFSETS_TOPIC, partition_for};
use crate::protocol::ErrorCode;
use crate::storage::now_ms;

const NONE: i16 = 0;
/// FindCoordinator's key type of a consumer group (1 is a transactional id).
const KEY_TYPE_GROUP: i8 = 0;

/// Where a group's coordinator is on the listener named `listener`: (node, host, port), or
/// why it cannot be told.
async fn find(
    shard: &Rc<Shard>,
    key: &str,
    listener: &str,
) -> Result<(i32, String, i32), ErrorCode> {
    let image = shard.metadata();
    let Some(topic) = image.topics.get(OFFSETS_TOPIC) else {
        // Created on first use, as Kafka does; the client retries.
        create_offsets_topic(shard).await;
        return Err(ErrorCode::CoordinatorNotAvailable);
    };
    let partition = partition_for(key, topic.partitions.len() as i32);
    let leader = topic.partition(partition).map_or(NO_LEADER, |p| p.leader);
    match image.brokers.get(&leader).filter(|b| !b.fenced) {
        Some(b) => match b.endpoint(listener) {
            Some((host, port)) => Ok((b.id, host.to_string(), i32::from(port))),
            None => Err(ErrorCode::CoordinatorNotAvailable),
        },
        None => Err(ErrorCode::CoordinatorNotAvailable),
    }
}

/// `__consumer_offsets` with `offsets.topic.num.partitions` partitions and
/// `offsets.topic.replication.factor` replicas (at most the live brokers), kept forever
/// (records are superseded, not expired by time).
async fn create_offsets_topic(shard: &Rc<Shard>) {
    let live = shard.metadata().live_brokers().len().max(1);
    let replication_factor = (shard.settings.offsets_topic_replication_factor as usize).min(live);
    let topic = NewTopic {
        name: OFFSETS_TOPIC.to_string(),
        partitions: shard.settings.offsets_topic_num_partitions,
        replication_factor: replication_factor as i16,
        assignment: None,
        configs: vec![
            ("retention.ms".into(), "-1".into()),
            (
                "segment.bytes".into(),
                shard.settings.offsets_topic_segment_bytes.to_string(),
            ),
        ],
    };
    let request = ControllerRequest::CreateTopics {
        topics: vec![topic],
        validate_only: false,
    };
    if let Some(ControllerResponse::Topics(results)) = shard
        .call(0, |tx| ShardMessage::Controller(request, tx))
        .await
    {
        for e in results.into_iter().filter_map(Result::err) {
            tracing::debug!("creating {OFFSETS_TOPIC}: {}", e.message);
        }
    }
}

pub async fn find_coordinator(
    shard: &Rc<Shard>,
    request: FindCoordinatorRequest,
    version: i16,
    listener: &str,
) -> FindCoordinatorResponse {
    let keys = if version >= 4 {
        request.coordinator_keys.clone()
    } else {
        vec![request.key.clone()]
    };
    let mut coordinators = Vec::with_capacity(keys.len());
    for key in keys {
        let mut c = Coordinator::default()
            .with_node_id(BrokerId(-1))
            .with_port(-1);
        let found = if request.key_type == KEY_TYPE_GROUP {
            find(shard, &key, listener).await
        } else {
            // No transactions: no transaction coordinator.
            Err(ErrorCode::CoordinatorNotAvailable)
        };
        match found {
            Ok((node, host, port)) => {
                c.node_id = BrokerId(node);
                c.host = str_bytes(host);
                c.port = port;
            }
            Err(e) => {
                c.error_code = e.code();
                c.error_message = Some(str_bytes(e.to_string()));
            }
        }
        c.key = key;
        coordinators.push(c);
    }
    let mut response = FindCoordinatorResponse::default();
    if version >= 4 {
        response.coordinators = coordinators;
    } else if let Some(c) = coordinators.pop() {
        response.error_code = c.error_code;
        response.error_message = c.error_message;
        response.node_id = c.node_id;
        response.host = c.host;
        response.port = c.port;
    }
    response
}

/// Sends a group request to its coordinator shard on this broker.
async fn call(shard: &Rc<Shard>, group_id: &str, call: GroupCall) -> GroupAnswer {
    let image = shard.metadata();
    let Some(topic) = image.topics.get(OFFSETS_TOPIC) else {
        return GroupAnswer::Error(ErrorCode::CoordinatorNotAvailable.code());
    };
    let partition = partition_for(group_id, topic.partitions.len() as i32);
    match topic.partition(partition) {
        Some(p) if p.leader == shard.node_id() => {}
        Some(p) if p.leader == NO_LEADER => {
            return GroupAnswer::Error(ErrorCode::CoordinatorNotAvailable.code());
        }
        _ => return GroupAnswer::Error(ErrorCode::NotCoordinator.code()),
    }
    let owner = shard.owner(topic, partition);
    let work = GroupWork {
        partition,
        group_id: group_id.to_string(),
        call,
    };
    shard
        .call(owner, |tx| ShardMessage::Group(work, image.offset, tx))
        .await
        .unwrap_or(GroupAnswer::Error(
            ErrorCode::CoordinatorNotAvailable.code(),
        ))
}

fn opt_string(s: &Option<StrBytes>) -> Option<String> {
    s.as_ref().map(|s| s.to_string())
}

fn opt_str_bytes(s: Option<String>) -> Option<StrBytes> {
    s.map(str_bytes)
}

/// A group id a group can have: not empty (Kafka's rule), and short enough for the offsets
/// records that store it (Kafka's would fail to write it).
fn valid_group_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_STRING_BYTES
}

/// Whether every string a join stores in the group's record fits there: the member id built
/// from a client or instance id, the instance id, the protocol type and names.
fn join_fits_a_record(req: &JoinRequest) -> bool {
    let strings = [
        Some(&req.fresh_member_id),
        req.group_instance_id.as_ref(),
        Some(&req.client_id),
        Some(&req.client_host),
        Some(&req.protocol_type),
    ];
    strings
        .into_iter()
        .flatten()
        .all(|s| s.len() <= MAX_STRING_BYTES)
        && req
            .protocols
            .iter()
            .all(|(name, _)| name.len() <= MAX_STRING_BYTES)
}

fn unexpected() -> i16 {
    tracing::error!("the coordinator answered with another kind of answer");
    ErrorCode::UnknownServerError.code()
}

pub async fn join_group(
    shard: &Rc<Shard>,
    request: JoinGroupRequest,
    version: i16,
    client_id: &str,
    client_host: &str,
) -> JoinGroupResponse {
    let group_id = request.group_id.to_string();
    let member_id = request.member_id.to_string();
    let error = |code: i16| {
        JoinGroupResponse::default()
            .with_error_code(code)
            .with_generation_id(-1)
            .with_member_id(str_bytes(member_id.clone()))
    };
    if !valid_group_id(&group_id) {
        return error(ErrorCode::InvalidGroupId.code());
    }
    let req = JoinRequest {
        member_id: member_id.clone(),
        group_instance_id: opt_string(&request.group_instance_id),
        client_id: client_id.to_string(),
        client_host: client_host.to_string(),
        session_timeout_ms: request.session_timeout_ms,
        // v0 has no rebalance timeout: the session timeout serves as both.
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        requires_known_member_id: version >= 4,
        // Kafka names a static member after its instance, a dynamic one after its client.
        fresh_member_id: format!(
            "{}-{}",
            request
                .group_instance_id
                .as_ref()
                .map_or(client_id, |i| i.as_str()),
            uuid::Uuid::new_v4()
        ),
    };
    if !join_fits_a_record(&req) {
        return error(ErrorCode::InvalidRequest.code());
    }
    match call(shard, &group_id, GroupCall::Join(req)).await {
        GroupAnswer::Join(r) => JoinGroupResponse::default()
            .with_error_code(r.error)
            .with_generation_id(r.generation_id)
            .with_protocol_type(opt_str_bytes(r.protocol_type))
            .with_protocol_name(opt_str_bytes(r.protocol_name))
            .with_leader(str_bytes(r.leader))
            .with_member_id(str_bytes(r.member_id))
            .with_members(
                r.members
                    .into_iter()
                    .map(|m| {
                        JoinGroupResponseMember::default()
                            .with_member_id(str_bytes(m.member_id))
                            .with_group_instance_id(opt_str_bytes(m.group_instance_id))
                            .with_metadata(m.metadata)
                    })
                    .collect(),
            ),
        GroupAnswer::Error(code) => error(code),
        _ => error(unexpected()),
    }
}

pub async fn sync_group(shard: &Rc<Shard>, request: SyncGroupRequest) -> SyncGroupResponse {
    let group_id = request.group_id.to_string();
    if !valid_group_id(&group_id) {
        return SyncGroupResponse::default().with_error_code(ErrorCode::InvalidGroupId.code());
    }
    let req = SyncRequest {
        member_id: request.member_id.to_string(),
        group_instance_id: opt_string(&request.group_instance_id),
        generation_id: request.generation_id,
        protocol_type: opt_string(&request.protocol_type),
        protocol_name: opt_string(&request.protocol_name),
        assignments: request
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
            .collect(),
    };
    match call(shard, &group_id, GroupCall::Sync(req)).await {
        GroupAnswer::Sync(r) => SyncGroupResponse::default()
            .with_error_code(r.error)
            .with_protocol_type(opt_str_bytes(r.protocol_type))
            .with_protocol_name(opt_str_bytes(r.protocol_name))
            .with_assignment(r.assignment),
        GroupAnswer::Error(code) => SyncGroupResponse::default().with_error_code(code),
        _ => SyncGroupResponse::default().with_error_code(unexpected()),
    }
}

pub async fn heartbeat(shard: &Rc<Shard>, request: HeartbeatRequest) -> HeartbeatResponse {
    let group_id = request.group_id.to_string();
    let code = if !valid_group_id(&group_id) {
        ErrorCode::InvalidGroupId.code()
    } else {
        let beat = GroupCall::Heartbeat {
            member_id: request.member_id.to_string(),
            group_instance_id: opt_string(&request.group_instance_id),
            generation_id: request.generation_id,
        };
        match call(shard, &group_id, beat).await {
            GroupAnswer::Code(code) | GroupAnswer::Error(code) => code,
            _ => unexpected(),
        }
    };
    HeartbeatResponse::default().with_error_code(code)
}

pub async fn leave_group(
    shard: &Rc<Shard>,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group_id = request.group_id.to_string();
    // v3+ leaves a batch of members, each by member id or (static) instance id.
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| (m.member_id.to_string(), opt_string(&m.group_instance_id)))
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    if !valid_group_id(&group_id) {
        return LeaveGroupResponse::default().with_error_code(ErrorCode::InvalidGroupId.code());
    }
    let codes = match call(shard, &group_id, GroupCall::Leave(members.clone())).await {
        GroupAnswer::Codes(codes) => codes,
        GroupAnswer::Error(code) => {
            return LeaveGroupResponse::default().with_error_code(code);
        }
        _ => return LeaveGroupResponse::default().with_error_code(unexpected()),
    };
    if version < 3 {
        return LeaveGroupResponse::default().with_error_code(codes.first().copied().unwrap_or(0));
    }
    LeaveGroupResponse::default().with_members(
        members
            .into_iter()
            .zip(codes)
            .map(|((member_id, instance_id), code)| {
                MemberResponse::default()
                    .with_member_id(str_bytes(member_id))
                    .with_group_instance_id(opt_str_bytes(instance_id))
                    .with_error_code(code)
            })
            .collect(),
    )
}

pub async fn offset_commit(
    shard: &Rc<Shard>,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let group_id = request.group_id.to_string();
    let image = shard.metadata();
    let now = now_ms();
    // Offsets of partitions that do not exist are refused one by one, as Kafka does.
    let mut codes: Vec<Vec<i16>> = Vec::new();
    let mut offsets = Vec::new();
    for topic in &request.topics {
        let known = image.topics.get(topic.name.as_str());
        codes.push(
            topic
                .partitions
                .iter()
                .map(|p| {
                    if known.and_then(|t| t.partition(p.partition_index)).is_none() {
                        return ErrorCode::UnknownTopicOrPartition.code();
                    }
                    offsets.push((
                        (topic.name.to_string(), p.partition_index),
                        CommittedOffset {
                            offset: p.committed_offset,
                            leader_epoch: p.committed_leader_epoch,
                            metadata: opt_string(&p.committed_metadata).unwrap_or_default(),
                            commit_timestamp_ms: now,
                        },
                    ));
                    NONE
                })
                .collect(),
        );
    }
    let results: Vec<i16> = if !valid_group_id(&group_id) {
        vec![ErrorCode::InvalidGroupId.code(); offsets.len()]
    } else if offsets.is_empty() {
        Vec::new()
    } else {
        let count = offsets.len();
        let commit = GroupCall::Commit {
            member_id: request.member_id.to_string(),
            group_instance_id: opt_string(&request.group_instance_id),
            generation_id: request.generation_id_or_member_epoch,
            offsets,
        };
        match call(shard, &group_id, commit).await {
            GroupAnswer::Codes(codes) => codes,
            GroupAnswer::Error(code) => vec![code; count],
            _ => vec![unexpected(); count],
        }
    };
    let mut results = results.into_iter();
    let topics = request
        .topics
        .iter()
        .zip(codes)
        .map(|(topic, codes)| {
            let partitions = topic
                .partitions
                .iter()
                .zip(codes)
                .map(|(p, code)| {
                    let code = if code == NONE {
                        results.next().unwrap_or_else(unexpected)
                    } else {
                        code
                    };
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// One group's committed offsets: the requested partitions (None: all), or the group-level
/// error.
async fn fetch_offsets(
    shard: &Rc<Shard>,
    group_id: &str,
    wanted: Option<Vec<TopicPartition>>,
) -> Result<Vec<(TopicPartition, Option<CommittedOffset>)>, i16> {
    match call(shard, group_id, GroupCall::FetchOffsets(wanted)).await {
        GroupAnswer::Offsets(offsets) => Ok(offsets),
        GroupAnswer::Error(code) => Err(code),
        _ => Err(unexpected()),
    }
}

/// Groups (topic, partition) pairs by topic, keeping the first-seen topic order.
fn by_topic<T>(items: Vec<(TopicPartition, T)>) -> Vec<(String, Vec<(i32, T)>)> {
    let mut topics: Vec<(String, Vec<(i32, T)>)> = Vec::new();
    for ((topic, partition), item) in items {
        match topics.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, partitions)) => partitions.push((partition, item)),
            None => topics.push((topic, vec![(partition, item)])),
        }
    }
    topics
}

/// (offset, leader epoch, metadata) of an OffsetFetch answer; no commit is -1, -1, "".
fn committed_fields(c: Option<CommittedOffset>) -> (i64, i32, StrBytes) {
    match c {
        Some(c) => (c.offset, c.leader_epoch, str_bytes(c.metadata)),
        None => (-1, -1, str_bytes("")),
    }
}

pub async fn offset_fetch(
    shard: &Rc<Shard>,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::with_capacity(request.groups.len());
        for g in &request.groups {
            let wanted = g.topics.as_ref().map(|topics| {
                topics
                    .iter()
                    .flat_map(|t| t.partition_indexes.iter().map(|p| (t.name.to_string(), *p)))
                    .collect()
            });
            let mut group = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
            match fetch_offsets(shard, &g.group_id, wanted).await {
                Ok(offsets) => {
                    group.topics = by_topic(offsets)
                        .into_iter()
                        .map(|(name, partitions)| {
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(str_bytes(name)))
                                .with_partitions(
                                    partitions
                                        .into_iter()
                                        .map(|(index, c)| {
                                            let (offset, epoch, metadata) = committed_fields(c);
                                            OffsetFetchResponsePartitions::default()
                                                .with_partition_index(index)
                                                .with_committed_offset(offset)
                                                .with_committed_leader_epoch(epoch)
                                                .with_metadata(Some(metadata))
                                        })
                                        .collect(),
                                )
                        })
                        .collect();
                }
                Err(code) => group.error_code = code,
            }
            groups.push(group);
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    // v1 asks for named partitions; v2+ may ask for all (null topics).
    let requested: Option<Vec<TopicPartition>> = request.topics.as_ref().map(|topics| {
        topics
            .iter()
            .flat_map(|t| t.partition_indexes.iter().map(|p| (t.name.to_string(), *p)))
            .collect()
    });
    let (offsets, error) = match fetch_offsets(shard, &request.group_id, requested.clone()).await {
        Ok(offsets) => (offsets, NONE),
        // v1 has no group-level error: each requested partition carries it.
        Err(code) => (
            requested
                .unwrap_or_default()
                .into_iter()
                .map(|tp| (tp, None))
                .collect(),
            code,
        ),
    };
    let partition_error = if version < 2 { error } else { NONE };
    let topics = by_topic(offsets)
        .into_iter()
        .map(|(name, partitions)| {
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(str_bytes(name)))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(index, c)| {
                            let (offset, epoch, metadata) = committed_fields(c);
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(index)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(epoch)
                                .with_metadata(Some(metadata))
                                .with_error_code(partition_error)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default()
        .with_topics(topics)
        .with_error_code(error)
}

pub async fn describe_groups(
    shard: &Rc<Shard>,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut groups = Vec::with_capacity(request.groups.len());
    for group_id in request.groups {
        let mut described = DescribedGroup::default()
            .with_group_id(group_id.clone())
            .with_authorized_operations(i32::MIN);
        match call(shard, &group_id, GroupCall::Describe).await {
            GroupAnswer::Describe(Some(d)) => {
                described.group_state = str_bytes(d.phase.name());
                described.protocol_type = str_bytes(d.protocol_type);
                described.protocol_data = str_bytes(d.protocol_name);
                described.members = d
                    .members
                    .into_iter()
                    .map(|m| {
                        DescribedGroupMember::default()
                            .with_member_id(str_bytes(m.member_id))
                            .with_group_instance_id(opt_str_bytes(m.group_instance_id))
                            .with_client_id(str_bytes(m.client_id))
                            .with_client_host(str_bytes(m.client_host))
                            .with_member_metadata(m.metadata)
                            .with_member_assignment(m.assignment)
                    })
                    .collect();
            }
            // Kafka describes an unknown group as Dead, without an error (before v6).
            GroupAnswer::Describe(None) => described.group_state = str_bytes("Dead"),
            GroupAnswer::Error(code) => described.error_code = code,
            _ => described.error_code = unexpected(),
        }
        groups.push(described);
    }
    DescribeGroupsResponse::default().with_groups(groups)
}

pub async fn list_groups(shard: &Rc<Shard>, request: ListGroupsRequest) -> ListGroupsResponse {
    let calls = (0..shard.count).map(|target| shard.call(target, ShardMessage::ListGroups));
    let wanted_states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.to_lowercase())
        .collect();
    let groups = futures::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .flatten()
        .filter(|g| wanted_states.is_empty() || wanted_states.contains(&g.state.to_lowercase()))
        .map(|g| {
            kafka_protocol::messages::list_groups_response::ListedGroup::default()
                .with_group_id(GroupId(str_bytes(g.group_id)))
                .with_protocol_type(str_bytes(g.protocol_type))
                .with_group_state(str_bytes(g.state))
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

pub async fn delete_groups(
    shard: &Rc<Shard>,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for group_id in request.groups_names {
        let code = match call(shard, &group_id, GroupCall::Delete).await {
            GroupAnswer::Code(code) | GroupAnswer::Error(code) => code,
            _ => unexpected(),
        };
        results.push(
            kafka_protocol::messages::delete_groups_response::DeletableGroupResult::default()
                .with_group_id(group_id)
                .with_error_code(code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

pub async fn offset_delete(
    shard: &Rc<Shard>,
    request: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let partitions: Vec<TopicPartition> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.to_string(), p.partition_index))
        })
        .collect();
    let codes = match call(
        shard,
        &request.group_id,
        GroupCall::DeleteOffsets(partitions.clone()),
    )
    .await
    {
        GroupAnswer::Codes(codes) => codes,
        GroupAnswer::Error(code) => return OffsetDeleteResponse::default().with_error_code(code),
        _ => return OffsetDeleteResponse::default().with_error_code(unexpected()),
    };
    let topics = by_topic(partitions.into_iter().zip(codes).collect())
        .into_iter()
        .map(|(name, partitions)| {
            OffsetDeleteResponseTopic::default()
                .with_name(TopicName(str_bytes(name)))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(index, code)| {
                            OffsetDeleteResponsePartition::default()
                                .with_partition_index(index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}
