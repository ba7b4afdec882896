//! Raw group requests on fresh connections, and checks of what they answer.

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ConsumerProtocolAssignment, ConsumerProtocolSubscription, DeleteGroupsRequest,
    DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, ResponseHeader,
    SyncGroupRequest, SyncGroupResponse, consumer_protocol_assignment,
    join_group_request::JoinGroupRequestProtocol,
    leave_group_request::MemberIdentity,
    offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
    offset_fetch_request::OffsetFetchRequestTopic,
    sync_group_request::SyncGroupRequestAssignment,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::*;
use crate::common::*;

pub fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub fn group_id(s: &str) -> GroupId {
    GroupId(sb(s))
}

/// One request on a fresh connection to `addr`; errors (connection, decoding) come back as
/// `Err` instead of panicking, so callers can retry across failovers.
pub fn raw_call<Req: Encodable, Resp: Decodable>(
    addr: SocketAddr,
    key: ApiKey,
    version: i16,
    body: &Req,
) -> Result<Resp, String> {
    let what = format!("{key:?} v{version} to {addr}");
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("{what}: connect: {e}"))?;
    let timeout = Some(Duration::from_secs(30));
    stream
        .set_read_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(timeout)
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let mut c = RawClient::from_stream(stream);
    let corr = c
        .send_request(key, version, body)
        .map_err(|e| format!("{what}: send: {e}"))?;
    let mut resp = c
        .read_frame()
        .map_err(|e| format!("{what}: read: {e}"))?
        .ok_or_else(|| format!("{what}: connection closed without an answer"))?;
    let header = ResponseHeader::decode(&mut resp, key.response_header_version(version))
        .map_err(|e| format!("{what}: response header: {e}"))?;
    if header.correlation_id != corr {
        return Err(format!(
            "{what}: correlation id {} != {corr}",
            header.correlation_id
        ));
    }
    let r = Resp::decode(&mut resp, version).map_err(|e| format!("{what}: response: {e}"))?;
    if resp.has_remaining() {
        return Err(format!(
            "{what}: {} trailing bytes in the response",
            resp.remaining()
        ));
    }
    Ok(r)
}

/// Like `raw_call`, panicking on a transport or decoding failure.
pub fn call<Req: Encodable, Resp: Decodable>(
    addr: SocketAddr,
    key: ApiKey,
    version: i16,
    body: &Req,
) -> Resp {
    raw_call(addr, key, version, body).unwrap_or_else(|e| panic!("{e}"))
}

/// FindCoordinator v3 for a group: (error code, node id, port).
pub fn find_coordinator(addr: SocketAddr, group: &str) -> Result<(i16, i32, u16), String> {
    let mut req = FindCoordinatorRequest::default();
    req.key = sb(group);
    req.key_type = 0;
    let resp: FindCoordinatorResponse = raw_call(addr, ApiKey::FindCoordinator, 3, &req)?;
    Ok((resp.error_code, resp.node_id.0, resp.port as u16))
}

/// Waits until every broker of `addrs` names the same coordinator for `group` (error 0) and
/// `ok` accepts its node id; returns (node id, its address).
pub fn wait_coordinator(
    what: &str,
    addrs: &[SocketAddr],
    group: &str,
    deadline: Duration,
    ok: impl Fn(i32) -> bool,
) -> (i32, SocketAddr) {
    poll_until(what, deadline, || {
        let mut found: Option<(i32, u16)> = None;
        for &addr in addrs {
            let (err, node, port) = find_coordinator(addr, group)?;
            if err != NONE {
                return Err(format!("FindCoordinator({group}) at {addr}: error {err}"));
            }
            if !ok(node) {
                return Err(format!(
                    "FindCoordinator({group}) at {addr}: node {node} not acceptable"
                ));
            }
            match found {
                None => found = Some((node, port)),
                Some(f) if f == (node, port) => {}
                Some(f) => {
                    return Err(format!(
                        "brokers disagree on the coordinator of {group}: {f:?} vs {:?}",
                        (node, port)
                    ));
                }
            }
        }
        let (node, port) = found.ok_or("no broker asked")?;
        Ok((node, SocketAddr::from(([127, 0, 0, 1], port))))
    })
    .0
}

/// A consumer-protocol subscription (version 0) to `topic`.
pub fn subscription_bytes(topic: &str) -> Bytes {
    let mut s = ConsumerProtocolSubscription::default();
    s.topics = vec![sb(topic)];
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    s.encode(&mut buf, 0).expect("encode subscription");
    buf.freeze()
}

/// A consumer-protocol assignment (version 0) of `partitions` of `topic`.
pub fn assignment_bytes(topic: &str, partitions: &[i32]) -> Bytes {
    let mut tp = consumer_protocol_assignment::TopicPartition::default();
    tp.topic = topic_name(topic);
    tp.partitions = partitions.to_vec();
    let mut a = ConsumerProtocolAssignment::default();
    a.assigned_partitions = vec![tp];
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    a.encode(&mut buf, 0).expect("encode assignment");
    buf.freeze()
}

/// The partitions of `topic` in a consumer-protocol assignment (empty bytes: none).
pub fn decode_assignment(bytes: &Bytes, topic: &str) -> Result<Vec<i32>, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut b = bytes.clone();
    if b.remaining() < 2 {
        return Err(format!("assignment of {} bytes", bytes.len()));
    }
    let version = b.get_i16().clamp(0, 3);
    let a = ConsumerProtocolAssignment::decode(&mut b, version)
        .map_err(|e| format!("decode assignment: {e}"))?;
    let mut parts: Vec<i32> = a
        .assigned_partitions
        .iter()
        .filter(|tp| tp.topic.0.as_str() == topic)
        .flat_map(|tp| tp.partitions.iter().copied())
        .collect();
    parts.sort_unstable();
    Ok(parts)
}

pub fn join_group_req(
    group: &str,
    member_id: &str,
    session_ms: i32,
    topic: &str,
) -> JoinGroupRequest {
    let mut p = JoinGroupRequestProtocol::default();
    p.name = sb("range");
    p.metadata = subscription_bytes(topic);
    let mut req = JoinGroupRequest::default();
    req.group_id = group_id(group);
    req.session_timeout_ms = session_ms;
    req.rebalance_timeout_ms = 30_000;
    req.member_id = sb(member_id);
    req.protocol_type = sb("consumer");
    req.protocols = vec![p];
    req
}

/// JoinGroup v5.
pub fn join_group(
    addr: SocketAddr,
    group: &str,
    member_id: &str,
    session_ms: i32,
    topic: &str,
) -> JoinGroupResponse {
    call(
        addr,
        ApiKey::JoinGroup,
        5,
        &join_group_req(group, member_id, session_ms, topic),
    )
}

/// SyncGroup v3; returns (error code, assignment).
pub fn sync_group(
    addr: SocketAddr,
    group: &str,
    generation: i32,
    member_id: &str,
    assignments: &[(&str, Bytes)],
) -> (i16, Bytes) {
    let mut req = SyncGroupRequest::default();
    req.group_id = group_id(group);
    req.generation_id = generation;
    req.member_id = sb(member_id);
    req.assignments = assignments
        .iter()
        .map(|(m, a)| {
            let mut x = SyncGroupRequestAssignment::default();
            x.member_id = sb(m);
            x.assignment = a.clone();
            x
        })
        .collect();
    let resp: SyncGroupResponse = call(addr, ApiKey::SyncGroup, 3, &req);
    (resp.error_code, resp.assignment)
}

/// Heartbeat v3; returns the error code.
pub fn heartbeat(addr: SocketAddr, group: &str, generation: i32, member_id: &str) -> i16 {
    let mut req = HeartbeatRequest::default();
    req.group_id = group_id(group);
    req.generation_id = generation;
    req.member_id = sb(member_id);
    let resp: HeartbeatResponse = call(addr, ApiKey::Heartbeat, 3, &req);
    resp.error_code
}

/// LeaveGroup v3 of one member; returns (top-level error, member error).
pub fn leave_group(addr: SocketAddr, group: &str, member_id: &str) -> (i16, Option<i16>) {
    let mut m = MemberIdentity::default();
    m.member_id = sb(member_id);
    let mut req = LeaveGroupRequest::default();
    req.group_id = group_id(group);
    req.members = vec![m];
    let resp: LeaveGroupResponse = call(addr, ApiKey::LeaveGroup, 3, &req);
    (resp.error_code, resp.members.first().map(|m| m.error_code))
}

/// OffsetCommit v8 of `offsets` (partition, offset) of `topic`; returns the error code per
/// partition, in request order.
pub fn offset_commit(
    addr: SocketAddr,
    group: &str,
    generation: i32,
    member_id: &str,
    topic: &str,
    offsets: &[(i32, i64)],
) -> Result<Vec<i16>, String> {
    let mut t = OffsetCommitRequestTopic::default();
    t.name = topic_name(topic);
    t.partitions = offsets
        .iter()
        .map(|&(p, o)| {
            let mut x = OffsetCommitRequestPartition::default();
            x.partition_index = p;
            x.committed_offset = o;
            x.committed_leader_epoch = -1;
            x.committed_metadata = Some(sb(""));
            x
        })
        .collect();
    let mut req = OffsetCommitRequest::default();
    req.group_id = group_id(group);
    req.generation_id_or_member_epoch = generation;
    req.member_id = sb(member_id);
    req.topics = vec![t];
    let resp: OffsetCommitResponse = raw_call(addr, ApiKey::OffsetCommit, 8, &req)?;
    let mut by_partition: HashMap<i32, i16> = HashMap::new();
    for t in &resp.topics {
        for p in &t.partitions {
            by_partition.insert(p.partition_index, p.error_code);
        }
    }
    offsets
        .iter()
        .map(|(p, _)| {
            by_partition
                .get(p)
                .copied()
                .ok_or_else(|| format!("OffsetCommit response lacks partition {p}: {resp:?}"))
        })
        .collect()
}

/// OffsetFetch v7 of partitions `0..partitions` of `topic`: (top-level error, committed
/// offset or per-partition error by partition).
pub fn offset_fetch(
    addr: SocketAddr,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<(i16, Vec<Result<i64, i16>>), String> {
    let mut t = OffsetFetchRequestTopic::default();
    t.name = topic_name(topic);
    t.partition_indexes = (0..partitions).collect();
    let mut req = OffsetFetchRequest::default();
    req.group_id = group_id(group);
    req.topics = Some(vec![t]);
    let resp: OffsetFetchResponse = raw_call(addr, ApiKey::OffsetFetch, 7, &req)?;
    let mut got: HashMap<i32, Result<i64, i16>> = HashMap::new();
    for t in &resp.topics {
        if t.name.0.as_str() != topic {
            continue;
        }
        for p in &t.partitions {
            let v = if p.error_code == NONE {
                Ok(p.committed_offset)
            } else {
                Err(p.error_code)
            };
            got.insert(p.partition_index, v);
        }
    }
    if resp.error_code != NONE {
        return Ok((resp.error_code, Vec::new()));
    }
    let v = (0..partitions)
        .map(|p| {
            got.get(&p)
                .copied()
                .ok_or_else(|| format!("OffsetFetch response lacks partition {p}: {resp:?}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((NONE, v))
}

/// Polls OffsetFetch at `coord` until it answers without a (retriable) error and the offsets
/// equal `want`.
pub fn wait_offsets(
    what: &str,
    coord: SocketAddr,
    group: &str,
    topic: &str,
    want: &[i64],
) -> Duration {
    poll_until(what, GROUP_DEADLINE, || {
        let (err, got) = offset_fetch(coord, group, topic, want.len() as i32)?;
        if err != NONE {
            return Err(format!("OffsetFetch({group}) error {err}"));
        }
        let got: Vec<i64> = got
            .into_iter()
            .map(|r| r.map_err(|e| format!("partition error {e}")))
            .collect::<Result<_, _>>()?;
        if got == want {
            Ok(())
        } else {
            Err(format!("committed offsets {got:?}, want {want:?}"))
        }
    })
    .1
}

/// DeleteGroups v2 of one group; returns its error code.
pub fn delete_group(addr: SocketAddr, group: &str) -> i16 {
    let mut req = DeleteGroupsRequest::default();
    req.groups_names = vec![group_id(group)];
    let resp: DeleteGroupsResponse = call(addr, ApiKey::DeleteGroups, 2, &req);
    assert_eq!(resp.results.len(), 1, "DeleteGroups: {resp:?}");
    resp.results[0].error_code
}

/// A group as DescribeGroups (v5) shows it.
#[derive(Debug)]
pub struct GroupView {
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberView>,
}

#[derive(Debug)]
pub struct MemberView {
    pub member_id: String,
    client_id: String,
    /// The partitions of the test's topic in the member's assignment.
    pub partitions: Vec<i32>,
}

pub fn describe_group(coord: SocketAddr, group: &str, topic: &str) -> Result<GroupView, String> {
    let mut req = DescribeGroupsRequest::default();
    req.groups = vec![group_id(group)];
    let resp: DescribeGroupsResponse = raw_call(coord, ApiKey::DescribeGroups, 5, &req)?;
    let g = resp.groups.first().ok_or("DescribeGroups: no group")?;
    if g.error_code != NONE {
        return Err(format!("DescribeGroups({group}): error {}", g.error_code));
    }
    let members = g
        .members
        .iter()
        .map(|m| {
            Ok(MemberView {
                member_id: m.member_id.to_string(),
                client_id: m.client_id.to_string(),
                partitions: decode_assignment(&m.member_assignment, topic)?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(GroupView {
        state: g.group_state.to_string(),
        protocol_type: g.protocol_type.to_string(),
        protocol: g.protocol_data.to_string(),
        members,
    })
}

/// Records a mismatch of an error code (checked together at the end, so that one mismatch
/// does not hide the others).
pub fn check(fails: &mut Vec<String>, what: &str, got: i16, want: i16) {
    eprintln!("[test] {what}: error {got} (want {want})");
    if got != want {
        fails.push(format!("{what}: error {got}, want {want}"));
    }
}

/// `Ok` when `assignments` give each of `0..partitions` to exactly one of them and none is
/// empty.
pub fn check_partitioned(assignments: &[Vec<i32>], partitions: i32) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for (i, a) in assignments.iter().enumerate() {
        if a.is_empty() {
            return Err(format!("assignment {i} is empty: {assignments:?}"));
        }
        for &p in a {
            if !seen.insert(p) {
                return Err(format!("partition {p} assigned twice: {assignments:?}"));
            }
        }
    }
    if seen != (0..partitions).collect::<BTreeSet<i32>>() {
        return Err(format!(
            "assignments {assignments:?} do not cover 0..{partitions}"
        ));
    }
    Ok(())
}

/// `Ok` when DescribeGroups shows the group Stable with exactly the members `clients` (by
/// client id), whose assignments split `0..partitions`, and each member of `local` (client
/// id, its own `assignment()`) holds what the coordinator says it was given.
pub fn check_stable(
    coord: SocketAddr,
    group: &str,
    topic: &str,
    partitions: i32,
    clients: &[&str],
    local: &[(&str, &[i32])],
) -> Result<GroupView, String> {
    let view = describe_group(coord, group, topic)?;
    if view.state != "Stable" {
        return Err(format!(
            "group state {} (want Stable): {view:?}",
            view.state
        ));
    }
    let mut ids: Vec<&str> = view.members.iter().map(|m| m.client_id.as_str()).collect();
    ids.sort_unstable();
    let mut want = clients.to_vec();
    want.sort_unstable();
    if ids != want {
        return Err(format!("members {ids:?}, want {want:?}: {view:?}"));
    }
    let assigned: Vec<Vec<i32>> = view.members.iter().map(|m| m.partitions.clone()).collect();
    check_partitioned(&assigned, partitions).map_err(|e| format!("coordinator's view: {e}"))?;
    for (client, parts) in local {
        let m = view
            .members
            .iter()
            .find(|m| m.client_id == *client)
            .ok_or_else(|| format!("no member {client}"))?;
        if m.partitions != *parts {
            return Err(format!(
                "{client} holds {parts:?} but was assigned {:?}",
                m.partitions
            ));
        }
    }
    Ok(view)
}
