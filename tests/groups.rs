//! Consumer groups (issue 5): librdkafka high-level consumers (`group.id` + `subscribe`) and
//! raw group requests against real `corelog serve` processes.
//!
//! What is checked:
//! - three consumers of one group, joining one at a time, split a 12-partition topic (each
//!   partition owned by exactly one of them, as their `assignment()` and DescribeGroups both
//!   say) and consume every message exactly once (offsets are committed when partitions are
//!   revoked, so a partition's next owner starts where its previous one stopped);
//! - a member that leaves (close: LeaveGroup) and one that is killed with SIGKILL (a child
//!   process, this binary re-run as `child_consumer_process`) are replaced: the survivor owns
//!   every partition, after a leave faster than the session timeout, after a death within the
//!   session timeout plus slack;
//! - a group stopped and started again resumes at its committed offsets;
//! - in a 3-broker cluster (`__consumer_offsets` with RF 3) the coordinator's broker is killed
//!   with SIGKILL: a new coordinator serves the committed offsets and the group consumes on
//!   from them; non-coordinators answer NOT_COORDINATOR;
//! - the error codes of the classic protocol over raw requests (MEMBER_ID_REQUIRED,
//!   ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, INVALID_SESSION_TIMEOUT, NON_EMPTY_GROUP,
//!   GROUP_ID_NOT_FOUND), on a broker with the default 50 offsets partitions;
//! - the offsets of an empty group survive broker restarts (clean and kill -9), and
//!   DeleteGroups removes them for good.
//!
//! Brokers run with `group.initial.rebalance.delay.ms=0` and 6 offsets partitions (but for
//! the raw-protocol test, which keeps the default 50). Consumers use `session.timeout.ms=6000`,
//! `heartbeat.interval.ms=500` and manual commits. The tests run one at a time (`serial()`);
//! every wait polls with a generous deadline and prints how long it took.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::*;
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
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

/// `session.timeout.ms` of every consumer here.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// What a rebalance after a member's death may take beyond its session timeout (detection
/// granularity, the survivors' heartbeat, rejoin and sync on a loaded 2-core machine).
const DEATH_SLACK: Duration = Duration::from_secs(24);
/// Deadline for a group to settle, a coordinator to be found, offsets to show.
const GROUP_DEADLINE: Duration = Duration::from_secs(90);
/// Deadline for a failover (fencing, leader election, loading the offsets partition).
const FAILOVER_DEADLINE: Duration = Duration::from_secs(60);
/// Consumption fails when no new message arrives for this long.
const STALL: Duration = Duration::from_secs(90);
/// Set (to a `|`-separated spec) in the environment of a child consumer process.
const CHILD_ENV: &str = "CORELOG_GROUPS_CHILD";
/// A child consumer leaves on its own after this long, so it cannot outlive a crashed test.
const CHILD_LIFETIME_SECS: u64 = 150;

// Kafka error codes of the group APIs.
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const INVALID_SESSION_TIMEOUT: i16 = 26;
const NON_EMPTY_GROUP: i16 = 68;
const GROUP_ID_NOT_FOUND: i16 = 69;
const MEMBER_ID_REQUIRED: i16 = 79;

/// Errors meaning "ask again (maybe elsewhere) in a moment".
const RETRIABLE: [i16; 3] = [
    COORDINATOR_LOAD_IN_PROGRESS,
    COORDINATOR_NOT_AVAILABLE,
    NOT_COORDINATOR,
];

/// One test of this binary at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Broker settings for fast group tests.
fn group_broker_opts() -> BrokerOpts {
    BrokerOpts::new()
        .set("group.initial.rebalance.delay.ms", 0)
        .set("offsets.topic.num.partitions", 6)
}

/// Polls `f` every 100 ms until it returns `Ok`; panics after `deadline` with its last error.
/// Prints and returns how long it took.
fn poll_until<T>(
    what: &str,
    deadline: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => {
                let took = start.elapsed();
                eprintln!("[test] {what}: ok after {took:?}");
                return (v, took);
            }
            Err(e) => {
                if start.elapsed() > deadline {
                    panic!(
                        "[test] {what}: not done after {:?}; last: {e}",
                        start.elapsed()
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Raw group requests
// ---------------------------------------------------------------------------------------------

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn group_id(s: &str) -> GroupId {
    GroupId(sb(s))
}

/// One request on a fresh connection to `addr`; errors (connection, decoding) come back as
/// `Err` instead of panicking, so callers can retry across failovers.
fn raw_call<Req: Encodable, Resp: Decodable>(
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
fn call<Req: Encodable, Resp: Decodable>(
    addr: SocketAddr,
    key: ApiKey,
    version: i16,
    body: &Req,
) -> Resp {
    raw_call(addr, key, version, body).unwrap_or_else(|e| panic!("{e}"))
}

/// FindCoordinator v3 for a group: (error code, node id, port).
fn find_coordinator(addr: SocketAddr, group: &str) -> Result<(i16, i32, u16), String> {
    let mut req = FindCoordinatorRequest::default();
    req.key = sb(group);
    req.key_type = 0;
    let resp: FindCoordinatorResponse = raw_call(addr, ApiKey::FindCoordinator, 3, &req)?;
    Ok((resp.error_code, resp.node_id.0, resp.port as u16))
}

/// Waits until every broker of `addrs` names the same coordinator for `group` (error 0) and
/// `ok` accepts its node id; returns (node id, its address).
fn wait_coordinator(
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
fn subscription_bytes(topic: &str) -> Bytes {
    let mut s = ConsumerProtocolSubscription::default();
    s.topics = vec![sb(topic)];
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    s.encode(&mut buf, 0).expect("encode subscription");
    buf.freeze()
}

/// A consumer-protocol assignment (version 0) of `partitions` of `topic`.
fn assignment_bytes(topic: &str, partitions: &[i32]) -> Bytes {
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
fn decode_assignment(bytes: &Bytes, topic: &str) -> Result<Vec<i32>, String> {
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

fn join_group_req(group: &str, member_id: &str, session_ms: i32, topic: &str) -> JoinGroupRequest {
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
fn join_group(
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
fn sync_group(
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
fn heartbeat(addr: SocketAddr, group: &str, generation: i32, member_id: &str) -> i16 {
    let mut req = HeartbeatRequest::default();
    req.group_id = group_id(group);
    req.generation_id = generation;
    req.member_id = sb(member_id);
    let resp: HeartbeatResponse = call(addr, ApiKey::Heartbeat, 3, &req);
    resp.error_code
}

/// LeaveGroup v3 of one member; returns (top-level error, member error).
fn leave_group(addr: SocketAddr, group: &str, member_id: &str) -> (i16, Option<i16>) {
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
fn offset_commit(
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
fn offset_fetch(
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
fn wait_offsets(what: &str, coord: SocketAddr, group: &str, topic: &str, want: &[i64]) -> Duration {
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
fn delete_group(addr: SocketAddr, group: &str) -> i16 {
    let mut req = DeleteGroupsRequest::default();
    req.groups_names = vec![group_id(group)];
    let resp: DeleteGroupsResponse = call(addr, ApiKey::DeleteGroups, 2, &req);
    assert_eq!(resp.results.len(), 1, "DeleteGroups: {resp:?}");
    resp.results[0].error_code
}

/// A group as DescribeGroups (v5) shows it.
#[derive(Debug)]
struct GroupView {
    state: String,
    protocol_type: String,
    protocol: String,
    members: Vec<MemberView>,
}

#[derive(Debug)]
struct MemberView {
    member_id: String,
    client_id: String,
    /// The partitions of the test's topic in the member's assignment.
    partitions: Vec<i32>,
}

fn describe_group(coord: SocketAddr, group: &str, topic: &str) -> Result<GroupView, String> {
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
fn check(fails: &mut Vec<String>, what: &str, got: i16, want: i16) {
    eprintln!("[test] {what}: error {got} (want {want})");
    if got != want {
        fails.push(format!("{what}: error {got}, want {want}"));
    }
}

/// `Ok` when `assignments` give each of `0..partitions` to exactly one of them and none is
/// empty.
fn check_partitioned(assignments: &[Vec<i32>], partitions: i32) -> Result<(), String> {
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
fn check_stable(
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

// ---------------------------------------------------------------------------------------------
// librdkafka group members
// ---------------------------------------------------------------------------------------------

/// Configuration of a group member.
fn member_config(bootstrap: &str, group: &str, client_id: &str) -> ClientConfig {
    let mut c = base_config(bootstrap);
    c.set("group.id", group)
        .set("client.id", client_id)
        .set(
            "session.timeout.ms",
            SESSION_TIMEOUT.as_millis().to_string(),
        )
        .set("heartbeat.interval.ms", "500")
        .set("max.poll.interval.ms", "30000")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "200");
    c.set_log_level(RDKafkaLogLevel::Warning);
    c
}

/// Logs a member's rebalances and, if asked, commits its consumed positions synchronously
/// before its partitions are revoked (so the next owner starts after them).
struct GroupContext {
    name: String,
    commit_on_revoke: bool,
    rebalances: AtomicUsize,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            eprintln!("[librdkafka {} {level:?} {fac}] {message}", self.name);
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                eprintln!("[{}] assigned {parts:?}", self.name);
            }
            Rebalance::Revoke(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                eprintln!("[{}] revoking {parts:?}", self.name);
                if self.commit_on_revoke {
                    match consumer.commit_consumer_state(CommitMode::Sync) {
                        Ok(()) => eprintln!("[{}] committed before revoke", self.name),
                        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                        Err(e) => eprintln!("[{}] commit before revoke failed: {e}", self.name),
                    }
                }
            }
            Rebalance::Error(e) => eprintln!("[{}] rebalance error: {e}", self.name),
        }
    }
}

/// A consumed message: where it was and which produced message (index) it is.
#[derive(Clone, Copy, Debug)]
struct Got {
    partition: i32,
    offset: i64,
    index: u64,
}

/// A subscribed group member, polled by the test thread (`pump`).
struct Member {
    name: String,
    topic: String,
    seed: u64,
    consumer: BaseConsumer<GroupContext>,
    got: Vec<Got>,
    errors: usize,
}

impl Member {
    fn new(
        bootstrap: &str,
        group: &str,
        name: &str,
        topic: &str,
        seed: u64,
        commit_on_revoke: bool,
    ) -> Member {
        let ctx = GroupContext {
            name: name.to_string(),
            commit_on_revoke,
            rebalances: AtomicUsize::new(0),
        };
        let consumer: BaseConsumer<GroupContext> = member_config(bootstrap, group, name)
            .create_with_context(ctx)
            .unwrap_or_else(|e| panic!("create consumer {name}: {e}"));
        consumer
            .subscribe(&[topic])
            .unwrap_or_else(|e| panic!("{name}: subscribe {topic}: {e}"));
        Member {
            name: name.to_string(),
            topic: topic.to_string(),
            seed,
            consumer,
            got: Vec::new(),
            errors: 0,
        }
    }

    /// Serves the consumer's events and takes every message ready (waiting up to 20 ms for
    /// the first); checks each is a message `message(seed, i)` produced. Returns the count.
    fn pump(&mut self) -> usize {
        let mut n = 0;
        let mut timeout = Duration::from_millis(20);
        while n < 2000 {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Err(e)) => {
                    self.errors += 1;
                    if self.errors <= 20 {
                        eprintln!("[{}] consumer error: {e}", self.name);
                    }
                    break;
                }
                Some(Ok(m)) => {
                    assert_eq!(
                        m.topic(),
                        self.topic,
                        "{}: message of another topic",
                        self.name
                    );
                    let value = m.payload().unwrap_or(&[]);
                    assert!(
                        value.len() >= 8,
                        "{}: {}[{}]@{}: value of {} bytes",
                        self.name,
                        m.topic(),
                        m.partition(),
                        m.offset(),
                        value.len()
                    );
                    let index = index_of(value);
                    let key = format!("key-{}-{index}", self.seed);
                    assert_eq!(
                        m.key(),
                        Some(key.as_bytes()),
                        "{}: [{}]@{}: key does not match message {index}",
                        self.name,
                        m.partition(),
                        m.offset()
                    );
                    self.got.push(Got {
                        partition: m.partition(),
                        offset: m.offset(),
                        index,
                    });
                    n += 1;
                }
            }
            timeout = Duration::ZERO;
        }
        n
    }

    /// The partitions of the topic this member holds now, sorted.
    fn assignment(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .consumer
            .assignment()
            .map(|tpl| {
                tpl.elements_for_topic(&self.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect()
            })
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    fn rebalances(&self) -> usize {
        self.consumer.context().rebalances.load(Ordering::Relaxed)
    }

    /// Commits `offsets` (partition, next offset to consume) synchronously.
    fn commit(&self, offsets: &[(i32, i64)]) -> Result<(), String> {
        let mut tpl = TopicPartitionList::new();
        for &(p, o) in offsets {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(o))
                .map_err(|e| e.to_string())?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| format!("{}: commit {offsets:?}: {e}", self.name))
    }

    /// The group's committed offsets of partitions `0..partitions` as this consumer fetches
    /// them (OffsetFetch through librdkafka); `None` for a partition without one.
    fn committed(&self, partitions: i32) -> Result<Vec<Option<i64>>, String> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&self.topic, p);
        }
        let got = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .map_err(|e| format!("{}: committed offsets: {e}", self.name))?;
        (0..partitions)
            .map(|p| {
                let e = got
                    .find_partition(&self.topic, p)
                    .ok_or_else(|| format!("no partition {p} in {got:?}"))?;
                e.error().map_err(|err| format!("partition {p}: {err}"))?;
                Ok(match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
            })
            .collect()
    }
}

/// Pumps `members` until `check` (given each member's assignment) accepts; panics after
/// `deadline` with its last error. Prints and returns the time taken.
fn wait_group<T>(
    what: &str,
    members: &mut [Member],
    deadline: Duration,
    mut check: impl FnMut(&[Vec<i32>]) -> Result<T, String>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        for m in members.iter_mut() {
            m.pump();
        }
        let assignments: Vec<Vec<i32>> = members.iter().map(Member::assignment).collect();
        match check(&assignments) {
            Ok(v) => {
                let took = start.elapsed();
                eprintln!("[test] {what}: ok after {took:?} (assignments {assignments:?})");
                return (v, took);
            }
            Err(e) => {
                if start.elapsed() > deadline {
                    panic!(
                        "[test] {what}: not done after {:?}; last: {e}; assignments {assignments:?}",
                        start.elapsed()
                    );
                }
            }
        }
    }
}

/// Pumps `members` until `done` (given everything they consumed so far) says so; fails when
/// nothing new arrives for `STALL`.
fn consume_until(what: &str, members: &mut [Member], mut done: impl FnMut(&[&Member]) -> bool) {
    let start = Instant::now();
    let mut last_progress = Instant::now();
    loop {
        let mut n = 0;
        for m in members.iter_mut() {
            n += m.pump();
        }
        if n > 0 {
            last_progress = Instant::now();
        }
        let refs: Vec<&Member> = members.iter().collect();
        if done(&refs) {
            let total: usize = members.iter().map(|m| m.got.len()).sum();
            eprintln!(
                "[test] {what}: done after {:?} ({total} messages consumed in all)",
                start.elapsed()
            );
            return;
        }
        if last_progress.elapsed() > STALL {
            let counts: Vec<(String, usize, Vec<i32>)> = members
                .iter()
                .map(|m| (m.name.clone(), m.got.len(), m.assignment()))
                .collect();
            panic!(
                "[test] {what}: nothing new for {:?}; (member, consumed, assignment): {counts:?}",
                last_progress.elapsed()
            );
        }
    }
}

/// Next offset per partition after the messages `deliveries` reports.
fn end_offsets(deliveries: &[(i32, i64)], partitions: i32) -> Vec<i64> {
    let mut ends = vec![0i64; partitions as usize];
    for &(p, o) in deliveries {
        ends[p as usize] = ends[p as usize].max(o + 1);
    }
    ends
}

// ---------------------------------------------------------------------------------------------
// A group member in a child process (to be killed with SIGKILL)
// ---------------------------------------------------------------------------------------------

/// Runs this test binary as a child that acts as a group member (see
/// `child_consumer_process`); killed with SIGKILL on drop.
struct ChildConsumer {
    child: Option<Child>,
    name: String,
    log_path: PathBuf,
    _tmp: tempfile::TempDir,
}

impl ChildConsumer {
    fn spawn(bootstrap: &str, group: &str, topic: &str, name: &str) -> ChildConsumer {
        let tmp = tempfile::Builder::new()
            .prefix("corelog-groups-child-")
            .tempdir()
            .expect("tempdir");
        let log_path = tmp.path().join("child.log");
        let log = File::create(&log_path).expect("child log");
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(exe);
        cmd.args([
            "child_consumer_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CHILD_ENV,
            format!("{bootstrap}|{group}|{topic}|{name}|{CHILD_LIFETIME_SECS}"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().expect("clone log")))
        .stderr(Stdio::from(log));
        let child = cmd.spawn().expect("spawn child consumer");
        eprintln!("[test] child consumer {name} started (pid {})", child.id());
        ChildConsumer {
            child: Some(child),
            name: name.to_string(),
            log_path,
            _tmp: tmp,
        }
    }

    /// `Err` if the child has exited.
    fn check_running(&mut self) -> Result<(), String> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => Ok(()),
            other => Err(format!(
                "child consumer {} is not running ({other:?}); log:\n{}",
                self.name,
                self.log_tail(40)
            )),
        }
    }

    /// SIGKILL and reap; returns when the signal was sent.
    fn kill9(&mut self) -> Instant {
        let mut c = self.child.take().expect("child not running");
        let at = Instant::now();
        unsafe {
            libc::kill(c.id() as i32, libc::SIGKILL);
        }
        let status = c.wait().expect("wait for child");
        eprintln!("[test] child consumer {} killed ({status})", self.name);
        at
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ChildConsumer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGKILL);
            }
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- child consumer {} log tail -----\n{}\n----- end -----",
                self.name,
                self.log_tail(60)
            );
        }
    }
}

/// Does nothing unless `CORELOG_GROUPS_CHILD` is set: then it is a group member of another
/// test (which started this binary as its child), subscribing and polling until it is killed,
/// its parent is gone, or `CHILD_LIFETIME_SECS` have passed.
#[test]
fn child_consumer_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let fields: Vec<&str> = spec.split('|').collect();
    let &[bootstrap, group, topic, name, secs] = fields.as_slice() else {
        panic!("bad {CHILD_ENV}: {spec:?}");
    };
    let lifetime = Duration::from_secs(secs.parse().expect("lifetime seconds"));
    let parent = unsafe { libc::getppid() };
    let ctx = GroupContext {
        name: name.to_string(),
        commit_on_revoke: false,
        rebalances: AtomicUsize::new(0),
    };
    let consumer: BaseConsumer<GroupContext> = member_config(bootstrap, group, name)
        .create_with_context(ctx)
        .expect("create child consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    eprintln!("[child {name}] subscribed to {topic} in group {group}");
    let start = Instant::now();
    let mut last: Option<Vec<i32>> = None;
    let mut consumed = 0u64;
    while start.elapsed() < lifetime {
        if unsafe { libc::getppid() } != parent {
            eprintln!("[child {name}] parent gone, leaving");
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => consumed += 1,
            Some(Err(e)) => eprintln!("[child {name}] consumer error: {e}"),
            None => {}
        }
        let mut a: Vec<i32> = consumer
            .assignment()
            .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        a.sort_unstable();
        if last.as_ref() != Some(&a) {
            eprintln!(
                "[child {name}] assignment {a:?} after {:?} ({consumed} consumed)",
                start.elapsed()
            );
            last = Some(a);
        }
    }
    eprintln!("[child {name}] done after {:?}", start.elapsed());
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// Three members, joining one at a time, end up splitting 12 partitions; 3,000 keyed messages
/// (produced before the members join, between the joins and while the full group consumes)
/// are consumed exactly once across them, thanks to the commits made before each revocation.
#[test]
fn three_members_split_partitions_and_consume_every_message_once() {
    let _serial = serial();
    let broker = Broker::start(group_broker_opts());
    let bs = broker.bootstrap();
    let topic = "g1-topic";
    let group = "g1";
    let seed = 11u64;
    create_topic(&bs, topic, 12);
    let mut deliveries = produce_messages(&producer_config(&bs, "all"), topic, seed, 0..1000);

    let (_, coord) = wait_coordinator(
        "coordinator of g1",
        &[broker.addr()],
        group,
        GROUP_DEADLINE,
        |_| true,
    );
    // The members join one at a time, each once the others have consumed what is there
    // (messages 0..1000 by the first, 1000..2000 by the first two), so partitions change owner
    // in eager rebalances after their messages were consumed: the commit a member makes before
    // its partitions are revoked is all that keeps the next owner from consuming them again.
    let names = ["g1-a", "g1-b", "g1-c"];
    let mut members: Vec<Member> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let n = i + 1;
        members.push(Member::new(&bs, group, name, topic, seed, true));
        wait_group(
            &format!("{n} member(s) stable over 12 partitions"),
            &mut members,
            GROUP_DEADLINE,
            |a| {
                check_partitioned(a, 12)?;
                if a.iter().any(|x| x.len() != 12 / n) {
                    return Err(format!("want {} partitions each: {a:?}", 12 / n));
                }
                let local: Vec<(&str, &[i32])> = names
                    .iter()
                    .zip(a)
                    .map(|(n, x)| (*n, x.as_slice()))
                    .collect();
                check_stable(coord, group, topic, 12, &names[..n], &local)
            },
        );
        if n == 2 {
            deliveries.extend(produce_messages(
                &producer_config(&bs, "all"),
                topic,
                seed,
                1000..2000,
            ));
        }
        if n < 3 {
            let upto = deliveries.len();
            consume_until(
                &format!("{n} member(s) consumed messages 0..{upto}"),
                &mut members,
                |ms| {
                    let distinct: BTreeSet<u64> = ms
                        .iter()
                        .flat_map(|m| m.got.iter().map(|g| g.index))
                        .collect();
                    distinct.len() >= upto
                },
            );
        }
    }
    let stable_rebalances: Vec<usize> = members.iter().map(Member::rebalances).collect();

    // The second half while the group consumes.
    let producer = {
        let config = producer_config(&bs, "all");
        std::thread::spawn(move || produce_messages(&config, topic, seed, 2000..3000))
    };
    consume_until("all 3000 messages consumed", &mut members, |ms| {
        let distinct: BTreeSet<u64> = ms
            .iter()
            .flat_map(|m| m.got.iter().map(|g| g.index))
            .collect();
        distinct.len() >= 3000
    });
    deliveries.extend(
        producer
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e)),
    );
    // Anything still in flight (a duplicate would be) shows up within a few more polls.
    for _ in 0..10 {
        for m in &mut members {
            m.pump();
        }
    }

    let after: Vec<usize> = members.iter().map(Member::rebalances).collect();
    eprintln!(
        "[test] rebalance callbacks per member: {stable_rebalances:?} when stable, {after:?} at the end"
    );
    assert!(
        stable_rebalances[0] >= 3,
        "g1-a saw {} rebalance callbacks: its partitions never moved to the later members",
        stable_rebalances[0]
    );
    let mut seen: HashMap<(i32, i64), Vec<&str>> = HashMap::new();
    for m in &members {
        eprintln!("[test] {} consumed {} messages", m.name, m.got.len());
        for g in &m.got {
            let want = deliveries[g.index as usize];
            assert_eq!(
                (g.partition, g.offset),
                want,
                "{}: message {} consumed at {:?}, produced at {want:?}",
                m.name,
                g.index,
                (g.partition, g.offset)
            );
            seen.entry((g.partition, g.offset))
                .or_default()
                .push(&m.name);
        }
    }
    let dups: Vec<_> = seen.iter().filter(|(_, v)| v.len() > 1).take(10).collect();
    assert!(
        dups.is_empty(),
        "{} messages consumed more than once, e.g. {dups:?}",
        seen.values().filter(|v| v.len() > 1).count()
    );
    assert_eq!(seen.len(), 3000, "distinct messages consumed");

    // Every member commits what it consumed; the group's offsets are then the log ends.
    for m in &members {
        m.consumer
            .commit_consumer_state(CommitMode::Sync)
            .unwrap_or_else(|e| panic!("{}: commit: {e}", m.name));
    }
    let ends = end_offsets(&deliveries, 12);
    let want: Vec<Option<i64>> = ends.iter().map(|&e| Some(e)).collect();
    poll_until("committed offsets are the log ends", GROUP_DEADLINE, || {
        let got = members[0].committed(12)?;
        if got == want {
            Ok(())
        } else {
            Err(format!("committed {got:?}, want {want:?}"))
        }
    });
    wait_offsets(
        "OffsetFetch (raw) shows the log ends",
        coord,
        group,
        topic,
        &ends,
    );
}

/// One member leaves (close: LeaveGroup), one is killed with SIGKILL (a child process): the
/// survivors take over every partition, within the session timeout after the leave and
/// within session timeout + slack after the death.
#[test]
fn left_and_killed_members_are_replaced() {
    let _serial = serial();
    let broker = Broker::start(group_broker_opts());
    let bs = broker.bootstrap();
    let topic = "g2-topic";
    let group = "g2";
    let seed = 22u64;
    create_topic(&bs, topic, 12);
    produce_messages(&producer_config(&bs, "all"), topic, seed, 0..600);
    let (_, coord) = wait_coordinator(
        "coordinator of g2",
        &[broker.addr()],
        group,
        GROUP_DEADLINE,
        |_| true,
    );

    let mut child = ChildConsumer::spawn(&bs, group, topic, "g2-child");
    let mut members = vec![
        Member::new(&bs, group, "g2-a", topic, seed, false),
        Member::new(&bs, group, "g2-b", topic, seed, false),
    ];
    wait_group(
        "3 members (one a child process) stable over 12 partitions",
        &mut members,
        GROUP_DEADLINE,
        |a| {
            child.check_running()?;
            if a.iter().any(|x| x.len() != 4) {
                return Err(format!("want 4 partitions each: {a:?}"));
            }
            check_stable(
                coord,
                group,
                topic,
                12,
                &["g2-a", "g2-b", "g2-child"],
                &[("g2-a", a[0].as_slice()), ("g2-b", a[1].as_slice())],
            )
        },
    );

    // g2-b leaves.
    let left_at = Instant::now();
    let b = members.remove(1);
    drop(b);
    eprintln!("[test] g2-b closed in {:?}", left_at.elapsed());
    wait_group(
        "g2-a and g2-child share the 12 partitions after g2-b left",
        &mut members,
        GROUP_DEADLINE,
        |a| {
            child.check_running()?;
            if a[0].len() != 6 {
                return Err(format!("g2-a holds {:?}, want 6 partitions", a[0]));
            }
            check_stable(
                coord,
                group,
                topic,
                12,
                &["g2-a", "g2-child"],
                &[("g2-a", a[0].as_slice())],
            )
        },
    );
    let leave_took = left_at.elapsed();
    eprintln!(
        "[test] rebalance after LeaveGroup: survivors own all partitions {leave_took:?} after the close began"
    );
    assert!(
        leave_took < SESSION_TIMEOUT,
        "the rebalance after a LeaveGroup took {leave_took:?}, not faster than the session \
         timeout {SESSION_TIMEOUT:?}: was the leave ignored and the member expired instead?"
    );

    // g2-child dies without a LeaveGroup.
    let killed_at = child.kill9();
    wait_group(
        "g2-a owns all 12 partitions after g2-child was killed",
        &mut members,
        SESSION_TIMEOUT + DEATH_SLACK + Duration::from_secs(30),
        |a| {
            if a[0] != (0..12).collect::<Vec<i32>>() {
                return Err(format!("g2-a holds {:?}", a[0]));
            }
            check_stable(
                coord,
                group,
                topic,
                12,
                &["g2-a"],
                &[("g2-a", a[0].as_slice())],
            )
        },
    );
    let death_took = killed_at.elapsed();
    eprintln!(
        "[test] kill -9 of a member to the survivor owning every partition: {death_took:?} \
         (session.timeout.ms {SESSION_TIMEOUT:?})"
    );
    assert!(
        death_took < SESSION_TIMEOUT + DEATH_SLACK,
        "the survivor owned every partition {death_took:?} after the kill, more than the \
         session timeout {SESSION_TIMEOUT:?} + {DEATH_SLACK:?}"
    );
}

/// A group commits, stops entirely, and starts again with new members: consumption resumes
/// exactly at the committed offsets (nothing before them again; everything after them, also
/// what was produced while the group was down).
#[test]
fn restarted_group_resumes_at_committed_offsets() {
    let _serial = serial();
    let broker = Broker::start(group_broker_opts());
    let bs = broker.bootstrap();
    let topic = "g3-topic";
    let group = "g3";
    let seed = 33u64;
    let parts = 4;
    create_topic(&bs, topic, parts);
    let first = produce_messages(&producer_config(&bs, "all"), topic, seed, 0..1000);
    let ends1 = end_offsets(&first, parts);
    let (_, coord) = wait_coordinator(
        "coordinator of g3",
        &[broker.addr()],
        group,
        GROUP_DEADLINE,
        |_| true,
    );

    // First incarnation: consume everything, but commit only the middle of each partition.
    let mut members = vec![
        Member::new(&bs, group, "g3-a", topic, seed, false),
        Member::new(&bs, group, "g3-b", topic, seed, false),
    ];
    wait_group(
        "g3-a and g3-b split 4 partitions",
        &mut members,
        GROUP_DEADLINE,
        |a| {
            check_partitioned(a, parts)?;
            check_stable(
                coord,
                group,
                topic,
                parts,
                &["g3-a", "g3-b"],
                &[("g3-a", a[0].as_slice()), ("g3-b", a[1].as_slice())],
            )
        },
    );
    consume_until("first 1000 messages consumed", &mut members, |ms| {
        ms.iter()
            .flat_map(|m| m.got.iter().map(|g| g.index))
            .collect::<BTreeSet<u64>>()
            .len()
            >= 1000
    });
    let commit: Vec<i64> = ends1.iter().map(|&e| e / 2).collect();
    eprintln!("[test] log ends {ends1:?}, committing {commit:?}");
    poll_until(
        "each member commits the middle of its partitions",
        GROUP_DEADLINE,
        || {
            for m in &mut members {
                m.pump();
            }
            for m in &members {
                let mine: Vec<(i32, i64)> = m
                    .assignment()
                    .into_iter()
                    .map(|p| (p, commit[p as usize]))
                    .collect();
                m.commit(&mine)?;
            }
            let got = members[0].committed(parts)?;
            let want: Vec<Option<i64>> = commit.iter().map(|&c| Some(c)).collect();
            if got == want {
                Ok(())
            } else {
                Err(format!("committed {got:?}, want {want:?}"))
            }
        },
    );

    // Stop the whole group.
    let stop = Instant::now();
    drop(members);
    eprintln!("[test] group g3 stopped in {:?}", stop.elapsed());
    poll_until("g3 is Empty", GROUP_DEADLINE, || {
        let v = describe_group(coord, group, topic)?;
        if v.state == "Empty" && v.members.is_empty() {
            Ok(())
        } else {
            Err(format!("{v:?}"))
        }
    });
    wait_offsets(
        "g3's offsets while it is down",
        coord,
        group,
        topic,
        &commit,
    );
    let second = produce_messages(&producer_config(&bs, "all"), topic, seed, 1000..1500);
    let mut all = first.clone();
    all.extend(second);
    let ends2 = end_offsets(&all, parts);

    // Second incarnation.
    let mut members = vec![
        Member::new(&bs, group, "g3-c", topic, seed, false),
        Member::new(&bs, group, "g3-d", topic, seed, false),
    ];
    let want: Vec<Option<i64>> = commit.iter().map(|&c| Some(c)).collect();
    let (got, _) = poll_until(
        "the new members see the committed offsets",
        GROUP_DEADLINE,
        || {
            for m in &mut members {
                m.pump();
            }
            members[1].committed(parts)
        },
    );
    assert_eq!(got, want, "committed offsets seen by the restarted group");
    consume_until(
        "the restarted group consumed every message from the commit point on",
        &mut members,
        |ms| {
            let have: BTreeSet<(i32, i64)> = ms
                .iter()
                .flat_map(|m| m.got.iter().map(|g| (g.partition, g.offset)))
                .collect();
            (0..parts)
                .all(|p| (commit[p as usize]..ends2[p as usize]).all(|o| have.contains(&(p, o))))
        },
    );
    let mut first_seen: BTreeMap<i32, i64> = BTreeMap::new();
    for m in &members {
        for g in &m.got {
            assert!(
                g.offset >= commit[g.partition as usize],
                "{}: re-delivered [{}]@{} (message {}) before the commit point {}",
                m.name,
                g.partition,
                g.offset,
                g.index,
                commit[g.partition as usize]
            );
            assert_eq!(
                all[g.index as usize],
                (g.partition, g.offset),
                "message {} position",
                g.index
            );
            let e = first_seen.entry(g.partition).or_insert(g.offset);
            *e = (*e).min(g.offset);
        }
    }
    let starts: Vec<i64> = (0..parts).map(|p| first_seen[&p]).collect();
    assert_eq!(
        starts, commit,
        "first offset consumed per partition after the restart"
    );
    let new_seen: BTreeSet<u64> = members
        .iter()
        .flat_map(|m| m.got.iter().map(|g| g.index))
        .filter(|&i| i >= 1000)
        .collect();
    assert_eq!(
        new_seen.len(),
        500,
        "messages produced while the group was down"
    );
}

/// 3 brokers, `__consumer_offsets` with RF 3: non-coordinators answer NOT_COORDINATOR; the
/// coordinator's broker is killed with SIGKILL after a commit; a new coordinator serves the
/// committed offsets (to the live member and to a new one) and the group consumes on from
/// them.
#[test]
fn coordinator_failover_keeps_committed_offsets() {
    let _serial = serial();
    let mut cluster = Cluster::start_with(
        ClusterOpts::new(3)
            .set("group.initial.rebalance.delay.ms", 0)
            .set("offsets.topic.num.partitions", 6)
            .set("offsets.topic.replication.factor", 3),
    );
    let bs = cluster.bootstrap();
    let topic = "g4-topic";
    let group = "g4";
    let seed = 44u64;
    let parts = 6;
    {
        let admin = admin(&bs);
        let opts =
            rdkafka::admin::AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let t =
            rdkafka::admin::NewTopic::new(topic, parts, rdkafka::admin::TopicReplication::Fixed(3));
        let res = futures::executor::block_on(admin.create_topics(&[t], &opts))
            .unwrap_or_else(|e| panic!("CreateTopics {topic}: {e}"));
        if let Err((t, code)) = &res[0] {
            panic!("CreateTopics {t}: {code:?}");
        }
    }
    wait_full_isr(&mut cluster, topic, parts as usize);
    let first = produce_messages(&producer_config(&bs, "all"), topic, seed, 0..600);
    let ends1 = end_offsets(&first, parts);

    let addrs: Vec<SocketAddr> = (0..3).map(|i| cluster.addr(i)).collect();
    let (coord_node, coord) = wait_coordinator(
        "all brokers name the coordinator of g4",
        &addrs,
        group,
        GROUP_DEADLINE,
        |n| (1..=3).contains(&n),
    );
    let coord_idx = Cluster::index_of(coord_node);
    assert_eq!(
        coord,
        cluster.addr(coord_idx),
        "coordinator address of node {coord_node}"
    );
    eprintln!("[test] coordinator of {group}: node {coord_node}");
    wait_full_isr(&mut cluster, "__consumer_offsets", 6);

    // Group requests to a broker that is not the coordinator.
    let other = cluster.addr((coord_idx + 1) % 3);
    let mut fails: Vec<String> = Vec::new();
    let mut expect = |what: &str, got: i16| {
        check(
            &mut fails,
            &format!("{what} at a non-coordinator"),
            got,
            NOT_COORDINATOR,
        )
    };
    let j: JoinGroupResponse = call(
        other,
        ApiKey::JoinGroup,
        5,
        &join_group_req(group, "", 10_000, topic),
    );
    expect("JoinGroup", j.error_code);
    expect("Heartbeat", heartbeat(other, group, 1, "not-a-member"));
    expect(
        "SyncGroup",
        sync_group(other, group, 1, "not-a-member", &[]).0,
    );
    let oc = offset_commit(other, group, 1, "not-a-member", topic, &[(0, 1)])
        .unwrap_or_else(|e| panic!("{e}"));
    expect("OffsetCommit", oc[0]);
    let (of, _) = offset_fetch(other, group, topic, parts).unwrap_or_else(|e| panic!("{e}"));
    expect("OffsetFetch", of);
    let mut dreq = DescribeGroupsRequest::default();
    dreq.groups = vec![group_id(group)];
    let d: DescribeGroupsResponse = call(other, ApiKey::DescribeGroups, 5, &dreq);
    expect(
        "DescribeGroups",
        d.groups.first().map_or(-1, |g| g.error_code),
    );
    expect("LeaveGroup", leave_group(other, group, "not-a-member").0);
    expect("DeleteGroups", delete_group(other, group));
    assert!(
        fails.is_empty(),
        "NOT_COORDINATOR checks failed:\n{}",
        fails.join("\n")
    );

    // A member consumes everything and commits a third of each partition.
    let mut members = vec![Member::new(&bs, group, "g4-a", topic, seed, false)];
    consume_until("g4-a consumed the first 600 messages", &mut members, |ms| {
        ms[0]
            .got
            .iter()
            .map(|g| g.index)
            .collect::<BTreeSet<u64>>()
            .len()
            >= 600
    });
    let commit: Vec<i64> = ends1.iter().map(|&e| e / 3).collect();
    poll_until("g4-a commits", GROUP_DEADLINE, || {
        members[0].pump();
        let all: Vec<(i32, i64)> = (0..parts).map(|p| (p, commit[p as usize])).collect();
        members[0].commit(&all)
    });
    wait_offsets(
        "the coordinator serves g4's offsets",
        coord,
        group,
        topic,
        &commit,
    );

    // Kill the coordinator's broker.
    cluster.kill9(coord_idx);
    let killed_at = Instant::now();
    let survivors: Vec<SocketAddr> = cluster
        .running()
        .into_iter()
        .map(|i| cluster.addr(i))
        .collect();
    let (new_node, new_coord) = wait_coordinator(
        "the survivors name a new coordinator of g4",
        &survivors,
        group,
        FAILOVER_DEADLINE,
        |n| n != coord_node && (1..=3).contains(&n),
    );
    eprintln!(
        "[test] new coordinator: node {new_node}, {:?} after the kill",
        killed_at.elapsed()
    );
    wait_offsets(
        "the new coordinator serves g4's offsets",
        new_coord,
        group,
        topic,
        &commit,
    );
    eprintln!(
        "[test] committed offsets served again {:?} after the kill",
        killed_at.elapsed()
    );
    let want: Vec<Option<i64>> = commit.iter().map(|&c| Some(c)).collect();
    poll_until(
        "g4-a (alive through the failover) fetches the committed offsets",
        FAILOVER_DEADLINE,
        || {
            members[0].pump();
            let got = members[0].committed(parts)?;
            if got == want {
                Ok(())
            } else {
                Err(format!("committed {got:?}, want {want:?}"))
            }
        },
    );
    drop(members);

    // More data, then a new member of the same group consumes from the commit point.
    let bs2 = cluster.bootstrap();
    let second = produce_messages(&producer_config(&bs2, "all"), topic, seed, 600..800);
    let mut all = first.clone();
    all.extend(second);
    let ends2 = end_offsets(&all, parts);
    let mut members = vec![Member::new(&bs2, group, "g4-b", topic, seed, false)];
    let (got, _) = poll_until("g4-b fetches the committed offsets", GROUP_DEADLINE, || {
        members[0].pump();
        members[0].committed(parts)
    });
    assert_eq!(
        got, want,
        "committed offsets after the coordinator failover"
    );
    consume_until(
        "g4-b consumed from the commit point to the end",
        &mut members,
        |ms| {
            let have: BTreeSet<(i32, i64)> =
                ms[0].got.iter().map(|g| (g.partition, g.offset)).collect();
            (0..parts)
                .all(|p| (commit[p as usize]..ends2[p as usize]).all(|o| have.contains(&(p, o))))
        },
    );
    let mut first_seen = vec![i64::MAX; parts as usize];
    for g in &members[0].got {
        assert_eq!(
            all[g.index as usize],
            (g.partition, g.offset),
            "message {} position",
            g.index
        );
        first_seen[g.partition as usize] = first_seen[g.partition as usize].min(g.offset);
    }
    assert_eq!(
        first_seen, commit,
        "first offset consumed per partition after the failover"
    );
    let (_, view) = poll_until(
        "g4 Stable with g4-b at the new coordinator",
        GROUP_DEADLINE,
        || {
            members[0].pump();
            check_stable(new_coord, group, topic, parts, &["g4-b"], &[])
        },
    );
    eprintln!("[test] {view:?}");
}

/// Waits until every running member shows `topic` with `partitions` partitions, each led and
/// with its three replicas all in the ISR.
fn wait_full_isr(cluster: &mut Cluster, topic: &str, partitions: usize) {
    let sorted = |v: &[i32]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    };
    cluster.wait_metadata(
        &format!("{topic}: {partitions} partitions, RF 3, full ISR"),
        GROUP_DEADLINE,
        Some(&[topic]),
        |_, md| {
            topic_views(md).get(topic).is_some_and(|ps| {
                ps.len() == partitions
                    && ps.iter().all(|p| {
                        p.error == NONE
                            && p.leader >= 0
                            && p.replicas.len() == 3
                            && sorted(&p.isr) == sorted(&p.replicas)
                    })
            })
        },
    );
}

/// The classic protocol's error codes over raw requests, on a broker with the default 50
/// offsets partitions.
#[test]
fn raw_protocol_errors() {
    let _serial = serial();
    let broker = Broker::start(BrokerOpts::new().set("group.initial.rebalance.delay.ms", 0));
    let bs = broker.bootstrap();
    let topic = "raw-topic";
    let group = "raw-group";
    create_topic(&bs, topic, 3);
    let (node, coord) = wait_coordinator(
        "coordinator of raw-group",
        &[broker.addr()],
        group,
        GROUP_DEADLINE,
        |_| true,
    );
    assert_eq!(coord, broker.addr(), "coordinator (node {node}) address");
    // The offsets topic with its default 50 partitions, RF capped at the one live broker.
    let (parts, _) = poll_until(
        "__consumer_offsets has 50 led partitions",
        GROUP_DEADLINE,
        || {
            let md = try_metadata(
                broker.addr(),
                Some(&["__consumer_offsets"]),
                Duration::from_secs(10),
            )
            .map_err(|e| e.to_string())?;
            let views = topic_views(&md);
            let ps = views
                .get("__consumer_offsets")
                .ok_or("no __consumer_offsets")?;
            if ps.iter().all(|p| p.leader >= 0 && p.error == NONE) {
                Ok(ps.clone())
            } else {
                Err(format!("{ps:?}"))
            }
        },
    );
    assert_eq!(parts.len(), 50, "__consumer_offsets partitions (default)");
    assert!(
        parts.iter().all(|p| p.replicas.len() == 1),
        "RF capped at 1 live broker: {parts:?}"
    );

    let mut fails: Vec<String> = Vec::new();

    // Session timeouts outside [group.min.session.timeout.ms, group.max.session.timeout.ms].
    let r = join_group(coord, group, "", 1_000, topic);
    check(
        &mut fails,
        "JoinGroup with session timeout 1000 ms",
        r.error_code,
        INVALID_SESSION_TIMEOUT,
    );
    let r = join_group(coord, group, "", 1_800_001, topic);
    check(
        &mut fails,
        "JoinGroup with session timeout 1800001 ms",
        r.error_code,
        INVALID_SESSION_TIMEOUT,
    );

    // JoinGroup v5 without a member id: MEMBER_ID_REQUIRED with one to use.
    let r = join_group(coord, group, "", 30_000, topic);
    assert_eq!(
        r.error_code, MEMBER_ID_REQUIRED,
        "first JoinGroup v5: {r:?}"
    );
    let me = r.member_id.to_string();
    assert!(
        !me.is_empty(),
        "MEMBER_ID_REQUIRED without a member id: {r:?}"
    );
    let r = join_group(coord, group, &me, 30_000, topic);
    assert_eq!(
        r.error_code, NONE,
        "JoinGroup with the given member id: {r:?}"
    );
    let generation = r.generation_id;
    assert!(generation >= 1, "generation {generation}");
    assert_eq!(r.member_id.as_str(), me, "member id kept");
    assert_eq!(r.leader.as_str(), me, "the only member leads");
    assert_eq!(
        r.protocol_name.as_ref().map(|p| p.as_str()),
        Some("range"),
        "protocol"
    );
    assert_eq!(r.members.len(), 1, "leader sees its member: {r:?}");
    assert_eq!(r.members[0].member_id.as_str(), me);
    assert_eq!(
        r.members[0].metadata,
        subscription_bytes(topic),
        "subscription echoed"
    );

    // SyncGroup as the leader.
    let mine = assignment_bytes(topic, &[0, 1, 2]);
    let (err, got) = sync_group(
        coord,
        group,
        generation,
        &me,
        &[(me.as_str(), mine.clone())],
    );
    assert_eq!(err, NONE, "SyncGroup as leader");
    assert_eq!(got, mine, "the leader's own assignment comes back");
    check(
        &mut fails,
        "Heartbeat of the member",
        heartbeat(coord, group, generation, &me),
        NONE,
    );

    // Stale and unknown.
    check(
        &mut fails,
        "Heartbeat with the previous generation",
        heartbeat(coord, group, generation - 1, &me),
        ILLEGAL_GENERATION,
    );
    check(
        &mut fails,
        "Heartbeat with a future generation",
        heartbeat(coord, group, generation + 1, &me),
        ILLEGAL_GENERATION,
    );
    check(
        &mut fails,
        "Heartbeat of an unknown member",
        heartbeat(coord, group, generation, "nobody"),
        UNKNOWN_MEMBER_ID,
    );
    check(
        &mut fails,
        "SyncGroup of an unknown member",
        sync_group(coord, group, generation, "nobody", &[]).0,
        UNKNOWN_MEMBER_ID,
    );
    check(
        &mut fails,
        "SyncGroup with the previous generation",
        sync_group(coord, group, generation - 1, &me, &[]).0,
        ILLEGAL_GENERATION,
    );
    let oc = offset_commit(coord, group, generation, "nobody", topic, &[(0, 1)])
        .unwrap_or_else(|e| panic!("{e}"));
    check(
        &mut fails,
        "OffsetCommit of an unknown member",
        oc[0],
        UNKNOWN_MEMBER_ID,
    );
    let oc = offset_commit(coord, group, generation - 1, &me, topic, &[(0, 1)])
        .unwrap_or_else(|e| panic!("{e}"));
    check(
        &mut fails,
        "OffsetCommit with the previous generation",
        oc[0],
        ILLEGAL_GENERATION,
    );
    let r = join_group(coord, group, "nobody", 30_000, topic);
    check(
        &mut fails,
        "JoinGroup with an unknown member id",
        r.error_code,
        UNKNOWN_MEMBER_ID,
    );

    // A valid commit, visible to OffsetFetch.
    let oc = offset_commit(
        coord,
        group,
        generation,
        &me,
        topic,
        &[(0, 0), (1, 0), (2, 0)],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    check(
        &mut fails,
        "OffsetCommit of the member",
        oc.iter().copied().find(|&e| e != NONE).unwrap_or(NONE),
        NONE,
    );
    let (err, offsets) = offset_fetch(coord, group, topic, 3).unwrap_or_else(|e| panic!("{e}"));
    check(&mut fails, "OffsetFetch", err, NONE);
    if offsets != vec![Ok(0), Ok(0), Ok(0)] {
        fails.push(format!(
            "OffsetFetch after a commit of 0, 0, 0: {offsets:?}"
        ));
    }

    // DeleteGroups.
    check(
        &mut fails,
        "DeleteGroups of a group with a member",
        delete_group(coord, group),
        NON_EMPTY_GROUP,
    );
    check(
        &mut fails,
        "DeleteGroups of an unknown group",
        delete_group(coord, "no-such-group"),
        GROUP_ID_NOT_FOUND,
    );

    // DescribeGroups, then leave.
    match describe_group(coord, group, topic) {
        Ok(v) => {
            let ok = v.state == "Stable"
                && v.protocol_type == "consumer"
                && v.protocol == "range"
                && v.members.len() == 1
                && v.members[0].member_id == me
                && v.members[0].partitions == vec![0, 1, 2];
            if !ok {
                fails.push(format!("DescribeGroups of the stable group: {v:?}"));
            }
        }
        Err(e) => fails.push(e),
    }
    let (err, member_err) = leave_group(coord, group, &me);
    check(&mut fails, "LeaveGroup", err, NONE);
    check(
        &mut fails,
        "LeaveGroup (member)",
        member_err.unwrap_or(-1),
        NONE,
    );
    match describe_group(coord, group, topic) {
        Ok(v) if v.state == "Empty" && v.members.is_empty() => {}
        Ok(v) => fails.push(format!("DescribeGroups after the leave: {v:?}")),
        Err(e) => fails.push(e),
    }
    check(
        &mut fails,
        "Heartbeat after leaving",
        heartbeat(coord, group, generation, &me),
        UNKNOWN_MEMBER_ID,
    );
    assert!(
        fails.is_empty(),
        "group protocol checks failed:\n{}",
        fails.join("\n")
    );
}

/// The committed offsets of an empty group survive broker restarts (clean and kill -9);
/// DeleteGroups removes them for good.
#[test]
fn empty_group_offsets_survive_restart_and_delete_groups_removes_them() {
    let _serial = serial();
    let mut broker = Broker::start(group_broker_opts());
    let bs = broker.bootstrap();
    let topic = "g6-topic";
    let group = "g6";
    let seed = 66u64;
    let parts = 3;
    create_topic(&bs, topic, parts);
    let deliveries = produce_messages(&producer_config(&bs, "all"), topic, seed, 0..300);
    let ends = end_offsets(&deliveries, parts);
    let commit: Vec<i64> = ends.iter().map(|&e| e / 3 + 1).collect();
    let (_, coord) = wait_coordinator(
        "coordinator of g6",
        &[broker.addr()],
        group,
        GROUP_DEADLINE,
        |_| true,
    );

    {
        let mut members = vec![Member::new(&bs, group, "g6-a", topic, seed, false)];
        wait_group(
            "g6-a holds all 3 partitions",
            &mut members,
            GROUP_DEADLINE,
            |a| check_partitioned(a, parts),
        );
        poll_until("g6-a commits", GROUP_DEADLINE, || {
            members[0].pump();
            let all: Vec<(i32, i64)> = (0..parts).map(|p| (p, commit[p as usize])).collect();
            members[0].commit(&all)
        });
    }
    poll_until("g6 is Empty", GROUP_DEADLINE, || {
        let v = describe_group(coord, group, topic)?;
        if v.state == "Empty" && v.members.is_empty() {
            Ok(())
        } else {
            Err(format!("{v:?}"))
        }
    });
    wait_offsets(
        "g6's offsets before any restart",
        coord,
        group,
        topic,
        &commit,
    );

    broker.restart();
    wait_offsets(
        "g6's offsets after a clean restart",
        coord,
        group,
        topic,
        &commit,
    );
    broker.kill9();
    broker.restart();
    wait_offsets(
        "g6's offsets after kill -9 and restart",
        coord,
        group,
        topic,
        &commit,
    );

    let (err, _) = poll_until("DeleteGroups(g6)", GROUP_DEADLINE, || {
        let e = delete_group(coord, group);
        if RETRIABLE.contains(&e) {
            Err(format!("error {e}"))
        } else {
            Ok(e)
        }
    });
    assert_eq!(err, NONE, "DeleteGroups of an empty group");
    let none = vec![-1i64; parts as usize];
    wait_offsets(
        "g6's offsets are gone after DeleteGroups",
        coord,
        group,
        topic,
        &none,
    );
    assert_eq!(
        delete_group(coord, group),
        GROUP_ID_NOT_FOUND,
        "DeleteGroups again"
    );

    broker.restart();
    wait_offsets(
        "g6's offsets are still gone after a restart",
        coord,
        group,
        topic,
        &none,
    );
    let (err, _) = poll_until("DeleteGroups(g6) after the restart", GROUP_DEADLINE, || {
        let e = delete_group(coord, group);
        if RETRIABLE.contains(&e) {
            Err(format!("error {e}"))
        } else {
            Ok(e)
        }
    });
    assert_eq!(
        err, GROUP_ID_NOT_FOUND,
        "the deleted group stays deleted across a restart"
    );
}

/// `offsets.retention.minutes`: offsets committed without a group membership (generation -1,
/// as a standalone consumer or a tool commits) are removed once retention has passed since
/// their commit, and the group is gone; a later commit starts a new life. The broker's
/// minimum retention is one minute, so this test waits about that long.
#[test]
fn offsets_expire_after_retention() {
    let _serial = serial();
    let broker = Broker::start(
        group_broker_opts()
            .set("offsets.retention.minutes", 1)
            .set("offsets.retention.check.interval.ms", 500),
    );
    let topic = "g7-topic";
    let group = "g7";
    create_topic(&broker.bootstrap(), topic, 2);
    let (_, coord) = wait_coordinator(
        "coordinator of g7",
        &[broker.addr()],
        group,
        GROUP_DEADLINE,
        |_| true,
    );
    let committed_at = Instant::now();
    let (codes, _) = poll_until("standalone OffsetCommit(g7)", GROUP_DEADLINE, || {
        let codes = offset_commit(coord, group, -1, "", topic, &[(0, 5), (1, 7)])?;
        if codes.iter().any(|c| RETRIABLE.contains(c)) {
            return Err(format!("retriable {codes:?}"));
        }
        Ok(codes)
    });
    assert_eq!(codes, vec![NONE, NONE], "standalone commit");
    wait_offsets("g7's offsets are served", coord, group, topic, &[5, 7]);

    let gone_after = poll_until("g7's offsets expire", Duration::from_secs(150), || {
        let (err, got) = offset_fetch(coord, group, topic, 2)?;
        match (err, got.as_slice()) {
            (NONE, [Ok(-1), Ok(-1)]) => Ok(committed_at.elapsed()),
            _ => Err(format!("error {err}, offsets {got:?}")),
        }
    })
    .0;
    eprintln!("[test] g7's offsets expired {gone_after:?} after the commit");
    assert!(
        gone_after >= Duration::from_secs(59),
        "offsets expired before offsets.retention.minutes=1 passed: {gone_after:?}"
    );
    assert_eq!(
        delete_group(coord, group),
        GROUP_ID_NOT_FOUND,
        "expired group"
    );
}
