//! Consumer groups as an admin client sees them (what `corelog groups` needs, like Kafka's
//! `Admin` under kafka-consumer-groups.sh): FindCoordinator, ListGroups on every broker,
//! DescribeGroups, OffsetFetch and DeleteGroups on each group's coordinator, and ListOffsets
//! (latest) on partition leaders for the lag. Works against any Kafka broker.
//!
//! Coordinator requests go through [`Client::on_coordinators`]: the groups are looked up
//! (one batched FindCoordinator v4+, else one v0-3 request per group), grouped by
//! coordinator, and sent one request per coordinator. A group whose coordinator is loading,
//! unavailable or moved (COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE,
//! NOT_COORDINATOR), or whose connection failed, is looked up again and retried with backoff
//! until the caller's timeout; then it keeps its last error.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::delete_groups_response::DeleteGroupsResponse;
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::describe_groups_response::{DescribeGroupsResponse, DescribedGroup};
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::FindCoordinatorResponse;
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::list_groups_response::ListGroupsResponse;
use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequest, OffsetFetchRequestGroup};
use kafka_protocol::messages::offset_fetch_response::OffsetFetchResponse;
use kafka_protocol::messages::{ApiKey, ConsumerProtocolAssignment, GroupId};
use kafka_protocol::protocol::{Decodable, Message as _, StrBytes};

use super::error::{Error, Result, check};
use super::versions::{Versions, api_versions};
use super::wire::Conn;
use super::{Client, Metadata, is_retriable_leader_error, list_offsets};

/// FindCoordinator key type of a consumer group.
pub const KEY_TYPE_GROUP: i8 = 0;
/// The protocol type consumers join with; their assignments are `ConsumerProtocolAssignment`s.
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";
/// What DescribeGroups (before v6) says of a group the coordinator does not know.
pub const STATE_DEAD: &str = "Dead";
/// ListOffsets timestamp asking for the log end (the high watermark).
const LATEST_TIMESTAMP: i64 = -1;
/// First and last pause between retries of a coordinator or leader request.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A broker, as FindCoordinator names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub id: i32,
    pub host: String,
    pub port: i32,
}

impl Node {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: topic.to_string(),
            partition,
        }
    }
}

/// One group of a ListGroups answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    /// `consumer` for consumers; empty for a group that only stores offsets.
    pub protocol_type: String,
    /// The group's state (ListGroups v4+).
    pub state: Option<String>,
}

impl GroupListing {
    /// What Kafka's admin client counts as a consumer group: protocol type `consumer`, or
    /// none (a group used only to commit offsets).
    pub fn is_consumer_group(&self) -> bool {
        self.protocol_type.is_empty() || self.protocol_type == CONSUMER_PROTOCOL_TYPE
    }
}

/// One member of a described group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    /// As the broker saw the member's connection, e.g. `/127.0.0.1`.
    pub host: String,
    /// The partitions its consumer-protocol assignment gives it, sorted; empty before the
    /// group's first SyncGroup or for a group of another protocol type.
    pub assignment: Vec<TopicPartition>,
}

/// DescribeGroups of one group, with the coordinator that answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    /// `Stable`, `Empty`, `PreparingRebalance`, `CompletingRebalance` or `Dead`.
    pub state: String,
    pub protocol_type: String,
    /// The partition assignor in use (`range`, `cooperative-sticky`, ...), empty if none.
    pub assignment_strategy: String,
    pub members: Vec<MemberDescription>,
    pub coordinator: Node,
}

impl GroupDescription {
    /// False for a group the coordinator does not know (state `Dead`).
    pub fn exists(&self) -> bool {
        self.state != STATE_DEAD
    }
}

/// A committed offset (OffsetFetch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    /// The leader epoch committed with it (OffsetFetch v5+), if any.
    pub leader_epoch: Option<i32>,
    pub metadata: Option<String>,
}

/// Per group (in the order asked, without repeats): its result.
pub type PerGroup<T> = Vec<(String, Result<T>)>;

/// Errors after which a group's coordinator is looked up again and the request retried.
pub fn is_retriable_coordinator_error(e: &Error) -> bool {
    matches!(
        e.kafka(),
        Some(
            ResponseError::CoordinatorLoadInProgress
                | ResponseError::CoordinatorNotAvailable
                | ResponseError::NotCoordinator
        )
    ) || is_transport_error(e)
}

fn is_transport_error(e: &Error) -> bool {
    matches!(e, Error::Io { .. } | Error::Stream(_))
}

/// A copy of `e` for every group that shares one failed request (`Error` holds an
/// `io::Error`, which is not `Clone`).
fn duplicate(e: &Error) -> Error {
    match e {
        Error::Io { addr, source } => Error::Io {
            addr: addr.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::Stream(source) => {
            Error::Stream(std::io::Error::new(source.kind(), source.to_string()))
        }
        Error::Protocol(m) => Error::Protocol(m.clone()),
        Error::UnsupportedApi { api } => Error::UnsupportedApi { api: *api },
        Error::NoCommonVersion { api, broker, ours } => Error::NoCommonVersion {
            api: *api,
            broker: *broker,
            ours: *ours,
        },
        Error::Broker(b) => Error::Broker(b.clone()),
        Error::NoBroker(m) => Error::NoBroker(m.clone()),
    }
}

fn group_id(g: &str) -> GroupId {
    GroupId(StrBytes::from_string(g.to_string()))
}

fn text(s: &Option<StrBytes>) -> Option<String> {
    s.as_ref().map(|s| s.to_string())
}

/// The groups in order, each once.
fn unique(groups: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    groups
        .iter()
        .filter(|g| seen.insert(g.as_str()))
        .cloned()
        .collect()
}

/// Doubles the pause up to [`BACKOFF_MAX`], never sleeping past `deadline`.
fn pause(backoff: &mut Duration, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    std::thread::sleep((*backoff).min(left));
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

/// Connections opened for one operation, by `host:port`, each with what its broker
/// advertised (brokers of one cluster may run different versions).
#[derive(Default)]
struct Pool {
    conns: HashMap<String, (Conn, Versions)>,
}

impl Pool {
    fn get(&mut self, addr: &str) -> Result<&mut (Conn, Versions)> {
        if !self.conns.contains_key(addr) {
            let mut conn = Conn::connect(addr)?;
            let versions = api_versions(&mut conn)?;
            self.conns.insert(addr.to_string(), (conn, versions));
        }
        Ok(self.conns.get_mut(addr).expect("inserted above"))
    }

    /// Runs `f` on a connection to `addr`; a transport error closes it (the next call opens
    /// a new one).
    fn call<T>(
        &mut self,
        addr: &str,
        f: impl FnOnce(&mut Conn, &Versions) -> Result<T>,
    ) -> Result<T> {
        let result = self.get(addr).and_then(|(c, v)| f(c, v));
        if let Err(e) = &result
            && is_transport_error(e)
        {
            self.conns.remove(addr);
        }
        result
    }
}

/// The partitions of a member's assignment: a `ConsumerProtocolAssignment` prefixed by its
/// i16 version. Empty bytes (no assignment yet) give none. A version above the codec's is
/// read as the codec's highest: newer versions only append fields, as Kafka's own client
/// assumes.
pub fn decode_assignment(bytes: &[u8]) -> Result<Vec<TopicPartition>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let bad = |why: String| Error::Protocol(format!("undecodable consumer assignment: {why}"));
    let mut buf = Bytes::copy_from_slice(bytes);
    if buf.len() < 2 {
        return Err(bad(format!("{} byte(s)", bytes.len())));
    }
    let version = buf.get_i16();
    if version < 0 {
        return Err(bad(format!("version {version}")));
    }
    let max = ConsumerProtocolAssignment::VERSIONS.max;
    let assignment = ConsumerProtocolAssignment::decode(&mut buf, version.min(max))
        .map_err(|e| bad(e.to_string()))?;
    let mut partitions: Vec<TopicPartition> = assignment
        .assigned_partitions
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|&p| TopicPartition::new(t.topic.0.as_str(), p))
        })
        .collect();
    partitions.sort();
    partitions.dedup();
    Ok(partitions)
}

/// FindCoordinator for groups on `conn`: all in one v4+ request (batched keys), else one
/// v0-3 request per group. Per group: its coordinator or the broker's error for it.
fn find_coordinators(
    conn: &mut Conn,
    versions: &Versions,
    groups: &[String],
) -> Result<PerGroup<Node>> {
    let version = versions.negotiate(ApiKey::FindCoordinator)?;
    if version < 4 {
        return groups
            .iter()
            .map(|g| Ok((g.clone(), find_coordinator_single(conn, version, g)?)))
            .collect();
    }
    let req = FindCoordinatorRequest::default()
        .with_key_type(KEY_TYPE_GROUP)
        .with_coordinator_keys(
            groups
                .iter()
                .map(|g| StrBytes::from_string(g.clone()))
                .collect(),
        );
    let resp: FindCoordinatorResponse = conn.call(ApiKey::FindCoordinator, version, &req)?;
    Ok(groups
        .iter()
        .map(|g| {
            let found = resp.coordinators.iter().find(|c| c.key.as_str() == g);
            let result = match found {
                None => Err(Error::Protocol(format!(
                    "FindCoordinator response lacks group {g}"
                ))),
                Some(c) => check(c.error_code, text(&c.error_message), Some(g)).map(|()| Node {
                    id: c.node_id.0,
                    host: c.host.to_string(),
                    port: c.port,
                }),
            };
            (g.clone(), result)
        })
        .collect())
}

/// FindCoordinator v0-3 for one group: `Err` only for a failed request; the broker's error
/// for the group is the inner result.
fn find_coordinator_single(conn: &mut Conn, version: i16, group: &str) -> Result<Result<Node>> {
    let req = FindCoordinatorRequest::default()
        .with_key(StrBytes::from_string(group.to_string()))
        .with_key_type(KEY_TYPE_GROUP);
    let resp: FindCoordinatorResponse = conn.call(ApiKey::FindCoordinator, version, &req)?;
    Ok(
        check(resp.error_code, text(&resp.error_message), Some(group)).map(|()| Node {
            id: resp.node_id.0,
            host: resp.host.to_string(),
            port: resp.port,
        }),
    )
}

/// What one DescribeGroups entry says, with its members' assignments decoded.
fn group_description(g: &DescribedGroup, coordinator: &Node) -> Result<GroupDescription> {
    let consumer = g.protocol_type.as_str() == CONSUMER_PROTOCOL_TYPE;
    let members = g
        .members
        .iter()
        .map(|m| {
            let assignment = if consumer {
                decode_assignment(&m.member_assignment).map_err(|e| {
                    Error::Protocol(format!(
                        "group {}, member {}: {e}",
                        g.group_id.0, m.member_id
                    ))
                })?
            } else {
                Vec::new()
            };
            Ok(MemberDescription {
                member_id: m.member_id.to_string(),
                group_instance_id: text(&m.group_instance_id),
                client_id: m.client_id.to_string(),
                host: m.client_host.to_string(),
                assignment,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(GroupDescription {
        group_id: g.group_id.0.to_string(),
        state: g.group_state.to_string(),
        protocol_type: g.protocol_type.to_string(),
        assignment_strategy: g.protocol_data.to_string(),
        members,
        coordinator: coordinator.clone(),
    })
}

fn describe_on(
    conn: &mut Conn,
    versions: &Versions,
    node: &Node,
    groups: &[String],
) -> Result<PerGroup<GroupDescription>> {
    let version = versions.negotiate(ApiKey::DescribeGroups)?;
    let req =
        DescribeGroupsRequest::default().with_groups(groups.iter().map(|g| group_id(g)).collect());
    let resp: DescribeGroupsResponse = conn.call(ApiKey::DescribeGroups, version, &req)?;
    Ok(resp
        .groups
        .iter()
        .map(|g| {
            let id = g.group_id.0.to_string();
            let result = check(g.error_code, text(&g.error_message), Some(&id))
                .and_then(|()| group_description(g, node));
            (id, result)
        })
        .collect())
}

/// The partitions of OffsetFetch topics as [`FetchedPartition`]s (the topic and partition
/// types differ before and after v8, their fields do not).
macro_rules! fetched {
    ($topics:expr) => {
        $topics.iter().flat_map(|t| {
            t.partitions.iter().map(move |p| {
                let epoch = p.committed_leader_epoch;
                let name = t.name.0.as_str();
                (
                    name,
                    p.partition_index,
                    p.error_code,
                    p.committed_offset,
                    epoch,
                    &p.metadata,
                )
            })
        })
    };
}

/// OffsetFetch of every committed offset of `groups`: one request with all of them (v8+), else
/// one per group. Partitions with an error or without an offset are left out, as Kafka's
/// admin client does.
fn offsets_on(
    conn: &mut Conn,
    versions: &Versions,
    groups: &[String],
) -> Result<PerGroup<BTreeMap<TopicPartition, CommittedOffset>>> {
    // v1 cannot ask for "all topics" (null topics is v2+); v10 names topics by id only.
    let version = versions.pick(ApiKey::OffsetFetch, 2, 9)?;
    if version < 8 {
        return groups
            .iter()
            .map(|g| {
                let req = OffsetFetchRequest::default()
                    .with_group_id(group_id(g))
                    .with_topics(None);
                let resp: OffsetFetchResponse = conn.call(ApiKey::OffsetFetch, version, &req)?;
                let result = check(resp.error_code, None, Some(g))
                    .map(|()| committed(fetched!(resp.topics)));
                Ok((g.clone(), result))
            })
            .collect();
    }
    let all_topics = |g: &String| {
        OffsetFetchRequestGroup::default()
            .with_group_id(group_id(g))
            .with_topics(None)
    };
    let req = OffsetFetchRequest::default().with_groups(groups.iter().map(all_topics).collect());
    let resp: OffsetFetchResponse = conn.call(ApiKey::OffsetFetch, version, &req)?;
    Ok(resp
        .groups
        .iter()
        .map(|g| {
            let id = g.group_id.0.to_string();
            let result =
                check(g.error_code, None, Some(&id)).map(|()| committed(fetched!(g.topics)));
            (id, result)
        })
        .collect())
}

/// (topic, partition, error code, offset, leader epoch, metadata) of an OffsetFetch answer.
type FetchedPartition<'a> = (&'a str, i32, i16, i64, i32, &'a Option<StrBytes>);

fn committed<'a>(
    parts: impl Iterator<Item = FetchedPartition<'a>>,
) -> BTreeMap<TopicPartition, CommittedOffset> {
    parts
        .filter(|&(_, _, error, offset, _, _)| error == 0 && offset >= 0)
        .map(|(topic, partition, _, offset, epoch, metadata)| {
            (
                TopicPartition::new(topic, partition),
                CommittedOffset {
                    offset,
                    leader_epoch: (epoch >= 0).then_some(epoch),
                    metadata: text(metadata),
                },
            )
        })
        .collect()
}

fn delete_on(conn: &mut Conn, versions: &Versions, groups: &[String]) -> Result<PerGroup<()>> {
    let version = versions.negotiate(ApiKey::DeleteGroups)?;
    let req = DeleteGroupsRequest::default()
        .with_groups_names(groups.iter().map(|g| group_id(g)).collect());
    let resp: DeleteGroupsResponse = conn.call(ApiKey::DeleteGroups, version, &req)?;
    Ok(resp
        .results
        .iter()
        .map(|r| {
            let id = r.group_id.0.to_string();
            let result = check(r.error_code, None, Some(&id));
            (id, result)
        })
        .collect())
}

/// ListGroups on one broker: every group it coordinates.
fn list_on(conn: &mut Conn, versions: &Versions) -> Result<Vec<GroupListing>> {
    let version = versions.negotiate(ApiKey::ListGroups)?;
    let resp: ListGroupsResponse =
        conn.call(ApiKey::ListGroups, version, &ListGroupsRequest::default())?;
    check(resp.error_code, None, Some(&conn.addr))?;
    Ok(resp
        .groups
        .iter()
        .map(|g| GroupListing {
            group_id: g.group_id.0.to_string(),
            protocol_type: g.protocol_type.to_string(),
            state: (version >= 4).then(|| g.group_state.to_string()),
        })
        .collect())
}

impl Client {
    /// FindCoordinator for groups on the bootstrap connection, reconnecting once if it broke.
    /// Per group: its coordinator or the broker's error for it.
    pub fn find_group_coordinators(&mut self, groups: &[String]) -> Result<PerGroup<Node>> {
        match find_coordinators(&mut self.conn, &self.versions, groups) {
            Err(e) if is_transport_error(&e) => {
                self.reconnect()?;
                find_coordinators(&mut self.conn, &self.versions, groups)
            }
            r => r,
        }
    }

    /// Every group of the cluster: ListGroups on each broker Metadata names (a group is
    /// listed by its coordinator), sorted by id. Brokers still loading their groups are
    /// asked again until `timeout`; a broker that still fails fails the listing.
    pub fn list_groups(&mut self, timeout: Duration) -> Result<Vec<GroupListing>> {
        // Check the bootstrap broker first, so an unsupported API fails before anything else.
        self.versions.negotiate(ApiKey::ListGroups)?;
        let deadline = Instant::now() + timeout;
        let brokers: Vec<String> = self
            .cluster_metadata(Some(&[]))?
            .brokers
            .values()
            .map(|b| b.addr())
            .collect();
        let mut pool = Pool::default();
        let mut found: BTreeMap<String, GroupListing> = BTreeMap::new();
        let mut pending = brokers;
        let mut backoff = BACKOFF_MIN;
        loop {
            let mut failed = Vec::new();
            for addr in pending {
                match pool.call(&addr, list_on) {
                    Ok(groups) => found.extend(groups.into_iter().map(|g| (g.group_id.clone(), g))),
                    Err(e) if is_retriable_coordinator_error(&e) && Instant::now() < deadline => {
                        failed.push(addr)
                    }
                    Err(e) => return Err(e),
                }
            }
            if failed.is_empty() {
                return Ok(found.into_values().collect());
            }
            pending = failed;
            pause(&mut backoff, deadline);
        }
    }

    /// DescribeGroups on each group's coordinator. A group the coordinator does not know
    /// comes back in state `Dead` (before v6) or as GROUP_ID_NOT_FOUND (v6+).
    pub fn describe_groups(
        &mut self,
        groups: &[String],
        timeout: Duration,
    ) -> Result<PerGroup<GroupDescription>> {
        self.versions.negotiate(ApiKey::FindCoordinator)?;
        self.on_coordinators(groups, timeout, describe_on)
    }

    /// Every committed offset of each group (OffsetFetch on its coordinator).
    pub fn committed_offsets(
        &mut self,
        groups: &[String],
        timeout: Duration,
    ) -> Result<PerGroup<BTreeMap<TopicPartition, CommittedOffset>>> {
        self.versions.negotiate(ApiKey::FindCoordinator)?;
        self.on_coordinators(groups, timeout, |c, v, _, gs| offsets_on(c, v, gs))
    }

    /// DeleteGroups on each group's coordinator (a group with members gets NON_EMPTY_GROUP,
    /// an unknown one GROUP_ID_NOT_FOUND).
    pub fn delete_groups(&mut self, groups: &[String], timeout: Duration) -> Result<PerGroup<()>> {
        self.versions.negotiate(ApiKey::FindCoordinator)?;
        self.on_coordinators(groups, timeout, |c, v, _, gs| delete_on(c, v, gs))
    }

    /// Runs `request` on the coordinators of `groups`, one call per coordinator with all of
    /// its groups, retrying groups with a coordinator error (see the module doc) until
    /// `timeout`. `Err` only when no coordinator can be asked at all (e.g. the API is not
    /// supported); otherwise one result per group, in the order given.
    pub fn on_coordinators<T>(
        &mut self,
        groups: &[String],
        timeout: Duration,
        mut request: impl FnMut(&mut Conn, &Versions, &Node, &[String]) -> Result<PerGroup<T>>,
    ) -> Result<PerGroup<T>> {
        let deadline = Instant::now() + timeout;
        let wanted = unique(groups);
        let mut pool = Pool::default();
        let mut done: HashMap<String, Result<T>> = HashMap::new();
        let mut pending = wanted.clone();
        let mut backoff = BACKOFF_MIN;
        while !pending.is_empty() {
            let round = self.coordinator_round(&pending, &mut pool, &mut request)?;
            pending.clear();
            for (group, result) in round {
                match result {
                    Err(e) if is_retriable_coordinator_error(&e) && Instant::now() < deadline => {
                        pending.push(group)
                    }
                    r => {
                        done.insert(group, r);
                    }
                }
            }
            if !pending.is_empty() {
                pause(&mut backoff, deadline);
            }
        }
        Ok(wanted
            .into_iter()
            .map(|g| {
                let r = done
                    .remove(&g)
                    .unwrap_or_else(|| Err(Error::Protocol(format!("no answer for group {g}"))));
                (g, r)
            })
            .collect())
    }

    /// One lookup-and-request pass over `groups`: a result for each of them.
    fn coordinator_round<T>(
        &mut self,
        groups: &[String],
        pool: &mut Pool,
        request: &mut impl FnMut(&mut Conn, &Versions, &Node, &[String]) -> Result<PerGroup<T>>,
    ) -> Result<PerGroup<T>> {
        let found = match self.find_group_coordinators(groups) {
            Ok(found) => found,
            Err(e) if is_retriable_coordinator_error(&e) => {
                return Ok(groups
                    .iter()
                    .map(|g| (g.clone(), Err(duplicate(&e))))
                    .collect());
            }
            Err(e) => return Err(e),
        };
        let mut out = Vec::with_capacity(groups.len());
        let mut by_node: BTreeMap<i32, (Node, Vec<String>)> = BTreeMap::new();
        for (group, coordinator) in found {
            match coordinator {
                Ok(node) => by_node
                    .entry(node.id)
                    .or_insert_with(|| (node, Vec::new()))
                    .1
                    .push(group),
                Err(e) => out.push((group, Err(e))),
            }
        }
        for (node, node_groups) in by_node.into_values() {
            match pool.call(&node.addr(), |c, v| request(c, v, &node, &node_groups)) {
                Ok(mut results) => {
                    results.retain(|(g, _)| node_groups.contains(g));
                    for g in &node_groups {
                        if !results.iter().any(|(r, _)| r == g) {
                            results.push((
                                g.clone(),
                                Err(Error::Protocol(format!(
                                    "the coordinator's answer lacks group {g}"
                                ))),
                            ));
                        }
                    }
                    out.extend(results);
                }
                // Every group of a failed request shares its error.
                Err(e) => out.extend(node_groups.iter().map(|g| (g.clone(), Err(duplicate(&e))))),
            }
        }
        Ok(out)
    }

    /// The log end offset (ListOffsets latest, i.e. the high watermark) of each partition, on
    /// its leader. Partitions with a leader error are asked again after a metadata refresh
    /// until `timeout`; a partition whose end stays unknown (no leader, unknown topic) is
    /// left out.
    pub fn log_end_offsets(
        &mut self,
        partitions: &[TopicPartition],
        timeout: Duration,
    ) -> Result<HashMap<TopicPartition, i64>> {
        let deadline = Instant::now() + timeout;
        let mut pool = Pool::default();
        let mut ends = HashMap::new();
        let mut pending: Vec<TopicPartition> = partitions.to_vec();
        pending.sort();
        pending.dedup();
        let mut backoff = BACKOFF_MIN;
        while !pending.is_empty() {
            let retry = self.log_end_round(&pending, &mut pool, &mut ends)?;
            if retry.is_empty() || Instant::now() >= deadline {
                break;
            }
            pending = retry;
            pause(&mut backoff, deadline);
        }
        Ok(ends)
    }

    /// One metadata-and-ListOffsets pass: records what is known in `ends` and returns the
    /// partitions worth asking again.
    fn log_end_round(
        &mut self,
        partitions: &[TopicPartition],
        pool: &mut Pool,
        ends: &mut HashMap<TopicPartition, i64>,
    ) -> Result<Vec<TopicPartition>> {
        let mut topics: Vec<String> = partitions.iter().map(|tp| tp.topic.clone()).collect();
        topics.sort();
        topics.dedup();
        // Metadata before v4 cannot refuse to auto-create the topics it names: ask for all.
        let named = self.versions.pick(ApiKey::Metadata, 1, 13)? >= 4;
        let meta = self.cluster_metadata(named.then_some(topics.as_slice()))?;
        let (by_leader, mut retry) = by_leader(&meta, partitions);
        for (addr, topics) in by_leader {
            for (topic, parts) in topics {
                let asked = pool.call(&addr, |c, v| {
                    list_offsets(c, v, &topic, &parts, LATEST_TIMESTAMP)
                });
                match asked {
                    Ok(answers) => {
                        for (partition, error, offset) in answers {
                            let tp = TopicPartition::new(&topic, partition);
                            if error == 0 && offset >= 0 {
                                ends.insert(tp, offset);
                            } else if is_retriable_leader_error(error) {
                                retry.push(tp);
                            }
                        }
                    }
                    Err(e) if is_transport_error(&e) => {
                        retry.extend(parts.iter().map(|&p| TopicPartition::new(&topic, p)))
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(retry)
    }
}

/// Leader address -> topic -> partitions.
type ByLeader = BTreeMap<String, BTreeMap<String, Vec<i32>>>;

/// Partitions by leader address, then topic; and the partitions without a leader right now
/// (an election), worth asking again. Partitions Metadata does not know (any more) are in
/// neither: their end stays unknown.
fn by_leader(meta: &Metadata, partitions: &[TopicPartition]) -> (ByLeader, Vec<TopicPartition>) {
    let mut by_leader = ByLeader::new();
    let mut leaderless = Vec::new();
    for tp in partitions {
        let Some(p) = meta
            .topic(&tp.topic)
            .and_then(|t| t.partitions.iter().find(|p| p.index == tp.partition))
        else {
            continue;
        };
        match meta.broker_addr(p.leader).filter(|_| p.leader >= 0) {
            Some(addr) => by_leader
                .entry(addr)
                .or_default()
                .entry(tp.topic.clone())
                .or_default()
                .push(tp.partition),
            None => leaderless.push(tp.clone()),
        }
    }
    (by_leader, leaderless)
}

#[cfg(test)]
pub(crate) mod tests {
    //! The client against a fake broker on 127.0.0.1 that answers each request from a
    //! test's handler, so version choice, batching and retries are checked without a
    //! coordinator.

    use std::io::Write as _;
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
    use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
    use kafka_protocol::messages::describe_groups_response::DescribedGroupMember;
    use kafka_protocol::messages::find_coordinator_response::Coordinator;
    use kafka_protocol::messages::list_groups_response::ListedGroup;
    use kafka_protocol::messages::list_offsets_request::ListOffsetsRequest;
    use kafka_protocol::messages::list_offsets_response::{
        ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
    };
    use kafka_protocol::messages::metadata_response::{
        MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::offset_fetch_response::{
        OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
        OffsetFetchResponseTopic, OffsetFetchResponseTopics,
    };
    use kafka_protocol::messages::{RequestHeader, ResponseHeader, TopicName};
    use kafka_protocol::protocol::Encodable;

    use super::*;
    use crate::client::read_frame;

    /// Answers one request (API, version, body after the header) with an encoded body.
    pub(crate) type Handler = Box<dyn FnMut(ApiKey, i16, &mut Bytes) -> Vec<u8> + Send>;

    /// Requests the fake broker received, as (API, version).
    pub(crate) type Log = Arc<Mutex<Vec<(ApiKey, i16)>>>;

    fn encode<M: Encodable>(m: &M, version: i16) -> Vec<u8> {
        let mut buf = BytesMut::new();
        m.encode(&mut buf, version).expect("encode fake response");
        buf.to_vec()
    }

    fn decode<M: Decodable>(body: &mut Bytes, version: i16) -> M {
        M::decode(body, version).expect("decode request at the fake broker")
    }

    fn s(text: &str) -> StrBytes {
        StrBytes::from_string(text.to_string())
    }

    /// Starts a fake broker advertising `apis` (ApiVersions 0-3 is added); `make` gets its
    /// port and returns the handler of every other request. Returns its address and log.
    pub(crate) fn fake_broker(
        apis: &[(ApiKey, i16, i16)],
        make: impl FnOnce(i32) -> Handler,
    ) -> (String, Log) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handler = Arc::new(Mutex::new(make(i32::from(port))));
        let log: Log = Arc::default();
        let mut advertised = vec![ApiVersion::default().with_api_key(18).with_max_version(3)];
        advertised.extend(apis.iter().map(|&(api, min, max)| {
            ApiVersion::default()
                .with_api_key(api as i16)
                .with_min_version(min)
                .with_max_version(max)
        }));
        let versions = ApiVersionsResponse::default().with_api_keys(advertised);
        let server_log = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let (handler, log, versions) =
                    (handler.clone(), server_log.clone(), versions.clone());
                std::thread::spawn(move || {
                    while let Ok(mut frame) = read_frame(&mut stream) {
                        let key =
                            ApiKey::try_from(i16::from_be_bytes([frame[0], frame[1]])).unwrap();
                        let version = i16::from_be_bytes([frame[2], frame[3]]);
                        let header =
                            RequestHeader::decode(&mut frame, key.request_header_version(version))
                                .unwrap();
                        let body = if key == ApiKey::ApiVersions {
                            encode(&versions, version)
                        } else {
                            log.lock().unwrap().push((key, version));
                            (handler.lock().unwrap())(key, version, &mut frame)
                        };
                        let mut out = BytesMut::new();
                        out.put_i32(0);
                        ResponseHeader::default()
                            .with_correlation_id(header.correlation_id)
                            .encode(&mut out, key.response_header_version(version))
                            .unwrap();
                        out.extend_from_slice(&body);
                        let len = (out.len() - 4) as i32;
                        out[..4].copy_from_slice(&len.to_be_bytes());
                        if stream.write_all(&out).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (format!("127.0.0.1:{port}"), log)
    }

    fn count(log: &Log, api: ApiKey) -> Vec<i16> {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(a, _)| *a == api)
            .map(|(_, v)| *v)
            .collect()
    }

    /// A consumer-protocol assignment as a consumer sends it: i16 version, then the body.
    fn assignment_bytes(version: i16, topics: &[(&str, &[i32])]) -> Bytes {
        let a = ConsumerProtocolAssignment::default().with_assigned_partitions(
            topics
                .iter()
                .map(|(t, ps)| {
                    AssignedTopic::default()
                        .with_topic(TopicName(s(t)))
                        .with_partitions(ps.to_vec())
                })
                .collect(),
        );
        let mut buf = version.to_be_bytes().to_vec();
        buf.extend(encode(&a, version));
        Bytes::from(buf)
    }

    fn metadata(port: i32) -> Vec<u8> {
        let partition = |i: i32| {
            MetadataResponsePartition::default()
                .with_partition_index(i)
                .with_leader_id(1.into())
        };
        let topic = |name: &str, n: i32| {
            MetadataResponseTopic::default()
                .with_name(Some(TopicName(s(name))))
                .with_partitions((0..n).map(partition).collect())
        };
        let resp = MetadataResponse::default()
            .with_brokers(vec![
                MetadataResponseBroker::default()
                    .with_node_id(1.into())
                    .with_host(s("127.0.0.1"))
                    .with_port(port),
            ])
            .with_topics(vec![topic("t", 2), topic("u", 1)]);
        encode(&resp, 12)
    }

    /// A Kafka 3.x-like broker: FindCoordinator v4 (batched), OffsetFetch v8 (batched).
    /// The coordinator is first unavailable, then moves once (NOT_COORDINATOR); the leader
    /// of u-0 first answers NOT_LEADER_OR_FOLLOWER.
    pub(crate) fn kafka3_handler(port: i32) -> Handler {
        let mut lookups = 0;
        let mut describes = 0;
        let mut u_asked = 0;
        Box::new(move |api, v, body| match api {
            ApiKey::FindCoordinator => {
                lookups += 1;
                kafka3_find_coordinator(decode(body, v), v, port, lookups)
            }
            ApiKey::DescribeGroups => {
                describes += 1;
                kafka3_describe_groups(decode(body, v), v, describes)
            }
            ApiKey::OffsetFetch => kafka3_offset_fetch(decode(body, v), v),
            ApiKey::Metadata => metadata(port),
            ApiKey::ListOffsets => kafka3_list_offsets(decode(body, v), v, &mut u_asked),
            ApiKey::ListGroups => kafka3_list_groups(v),
            ApiKey::DeleteGroups => kafka3_delete_groups(decode(body, v), v),
            other => panic!("unexpected {other:?}"),
        })
    }

    /// The first lookup finds no coordinator (COORDINATOR_NOT_AVAILABLE), later ones broker 1.
    fn kafka3_find_coordinator(
        req: FindCoordinatorRequest,
        v: i16,
        port: i32,
        lookups: usize,
    ) -> Vec<u8> {
        let coordinators = req.coordinator_keys.iter().map(|k| {
            let c = Coordinator::default().with_key(k.clone());
            if lookups == 1 {
                c.with_error_code(15).with_node_id((-1).into())
            } else {
                c.with_node_id(1.into())
                    .with_host(s("127.0.0.1"))
                    .with_port(port)
            }
        });
        encode(
            &FindCoordinatorResponse::default().with_coordinators(coordinators.collect()),
            v,
        )
    }

    /// `g` is first NOT_COORDINATOR, then Stable with one member; `o` is Empty.
    fn kafka3_describe_groups(req: DescribeGroupsRequest, v: i16, describes: usize) -> Vec<u8> {
        let groups = req.groups.iter().map(|g| {
            let d = DescribedGroup::default().with_group_id(g.clone());
            match (g.0.as_str(), describes) {
                ("g", 1) => d.with_error_code(16),
                ("g", _) => d
                    .with_group_state(s("Stable"))
                    .with_protocol_type(s("consumer"))
                    .with_protocol_data(s("range"))
                    .with_members(vec![
                        DescribedGroupMember::default()
                            .with_member_id(s("m1"))
                            .with_client_id(s("c1"))
                            .with_client_host(s("/127.0.0.1"))
                            .with_member_assignment(assignment_bytes(
                                1,
                                &[("u", &[0]), ("t", &[1, 0])],
                            )),
                    ]),
                ("o", _) => d
                    .with_group_state(s("Empty"))
                    .with_protocol_type(s("consumer")),
                _ => d.with_group_state(s("Dead")),
            }
        });
        encode(
            &DescribeGroupsResponse::default().with_groups(groups.collect()),
            v,
        )
    }

    fn kafka3_offset_fetch(req: OffsetFetchRequest, v: i16) -> Vec<u8> {
        assert!(
            req.groups.iter().all(|g| g.topics.is_none()),
            "asks for all topics"
        );
        let partition = |i: i32, offset: i64, error: i16| {
            OffsetFetchResponsePartitions::default()
                .with_partition_index(i)
                .with_committed_offset(offset)
                .with_error_code(error)
        };
        let groups = req.groups.iter().map(|g| {
            OffsetFetchResponseGroup::default()
                .with_group_id(g.group_id.clone())
                .with_topics(vec![
                    OffsetFetchResponseTopics::default()
                        .with_name(TopicName(s("t")))
                        .with_partitions(vec![
                            partition(0, 5, 0),
                            partition(1, -1, 0),
                            partition(2, 9, 3),
                        ]),
                ])
        });
        encode(
            &OffsetFetchResponse::default().with_groups(groups.collect()),
            v,
        )
    }

    /// Latest offsets: t-0 is at 7, t-1 at 3; u-0 is first NOT_LEADER_OR_FOLLOWER, then 9.
    fn kafka3_list_offsets(req: ListOffsetsRequest, v: i16, u_asked: &mut usize) -> Vec<u8> {
        let topics = req.topics.iter().map(|t| {
            let parts = t.partitions.iter().map(|p| {
                assert_eq!(p.timestamp, LATEST_TIMESTAMP);
                let r =
                    ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
                match (t.name.0.as_str(), p.partition_index) {
                    ("u", _) => {
                        *u_asked += 1;
                        if *u_asked == 1 {
                            r.with_error_code(6)
                        } else {
                            r.with_offset(9)
                        }
                    }
                    (_, 0) => r.with_offset(7),
                    _ => r.with_offset(3),
                }
            });
            ListOffsetsTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(parts.collect())
        });
        encode(
            &ListOffsetsResponse::default().with_topics(topics.collect()),
            v,
        )
    }

    fn kafka3_list_groups(v: i16) -> Vec<u8> {
        let listed = |id: &str, protocol: &str, state: &str| {
            ListedGroup::default()
                .with_group_id(group_id(id))
                .with_protocol_type(s(protocol))
                .with_group_state(s(state))
        };
        let groups = vec![
            listed("o", "", "Empty"),
            listed("g", "consumer", "Stable"),
            listed("c", "connect", "Stable"),
        ];
        encode(&ListGroupsResponse::default().with_groups(groups), v)
    }

    /// Deleting `g` fails with NON_EMPTY_GROUP; any other group is deleted.
    fn kafka3_delete_groups(req: DeleteGroupsRequest, v: i16) -> Vec<u8> {
        let results = req.groups_names.iter().map(|g| {
            let code = if g.0.as_str() == "g" { 68 } else { 0 };
            DeletableGroupResult::default()
                .with_group_id(g.clone())
                .with_error_code(code)
        });
        encode(
            &DeleteGroupsResponse::default().with_results(results.collect()),
            v,
        )
    }

    pub(crate) const KAFKA3: &[(ApiKey, i16, i16)] = &[
        (ApiKey::Metadata, 0, 12),
        (ApiKey::ListOffsets, 1, 7),
        (ApiKey::FindCoordinator, 0, 4),
        (ApiKey::DescribeGroups, 0, 5),
        (ApiKey::OffsetFetch, 1, 8),
        (ApiKey::ListGroups, 0, 4),
        (ApiKey::DeleteGroups, 0, 2),
    ];

    const TIMEOUT: Duration = Duration::from_secs(30);

    fn names(gs: &[&str]) -> Vec<String> {
        gs.iter().map(|g| g.to_string()).collect()
    }

    #[test]
    fn batched_lookups_retry_and_decode_assignments() {
        let (addr, log) = fake_broker(KAFKA3, kafka3_handler);
        let mut client = Client::bootstrap(&addr).unwrap();

        let described = client
            .describe_groups(&names(&["g", "gone", "g"]), TIMEOUT)
            .unwrap();
        let ids: Vec<&str> = described.iter().map(|(g, _)| g.as_str()).collect();
        assert_eq!(ids, ["g", "gone"], "in order, each once");
        let g = described[0].1.as_ref().unwrap();
        assert_eq!(
            (g.state.as_str(), g.assignment_strategy.as_str()),
            ("Stable", "range")
        );
        assert_eq!(g.coordinator.addr(), addr);
        let m = &g.members[0];
        assert_eq!(
            (m.member_id.as_str(), m.client_id.as_str(), m.host.as_str()),
            ("m1", "c1", "/127.0.0.1")
        );
        let expected = vec![
            TopicPartition::new("t", 0),
            TopicPartition::new("t", 1),
            TopicPartition::new("u", 0),
        ];
        assert_eq!(m.assignment, expected);
        assert!(
            !described[1].1.as_ref().unwrap().exists(),
            "Dead = unknown group"
        );
        // Unavailable, then found; NOT_COORDINATOR from the coordinator: looked up again.
        assert_eq!(count(&log, ApiKey::FindCoordinator), [4, 4, 4]);
        assert_eq!(count(&log, ApiKey::DescribeGroups), [5, 5]);

        let offsets = client.committed_offsets(&names(&["g"]), TIMEOUT).unwrap();
        let committed = offsets[0].1.as_ref().unwrap();
        assert_eq!(
            committed.keys().cloned().collect::<Vec<_>>(),
            [TopicPartition::new("t", 0)],
            "no offset or an error: left out"
        );
        assert_eq!(committed[&TopicPartition::new("t", 0)].offset, 5);
        assert_eq!(count(&log, ApiKey::OffsetFetch), [8]);

        let ends = client.log_end_offsets(&expected, TIMEOUT).unwrap();
        assert_eq!(
            (ends[&expected[0]], ends[&expected[1]], ends[&expected[2]]),
            (7, 3, 9)
        );

        let listed = client.list_groups(TIMEOUT).unwrap();
        let ids: Vec<&str> = listed.iter().map(|g| g.group_id.as_str()).collect();
        assert_eq!(ids, ["c", "g", "o"]);
        let consumers: Vec<&str> = listed
            .iter()
            .filter(|g| g.is_consumer_group())
            .map(|g| g.group_id.as_str())
            .collect();
        assert_eq!(consumers, ["g", "o"]);
        assert_eq!(listed[1].state.as_deref(), Some("Stable"));

        let deleted = client.delete_groups(&names(&["g", "o"]), TIMEOUT).unwrap();
        assert_eq!(
            deleted[0].1.as_ref().unwrap_err().kafka(),
            Some(ResponseError::NonEmptyGroup)
        );
        assert!(deleted[1].1.is_ok());
    }

    /// FindCoordinator v3 and OffsetFetch v7: one request per group.
    #[test]
    fn single_key_lookups_before_v4() {
        let apis = [(ApiKey::FindCoordinator, 0, 3), (ApiKey::OffsetFetch, 1, 7)];
        let (addr, log) = fake_broker(&apis, |port| {
            Box::new(move |api, v, body| match api {
                ApiKey::FindCoordinator => {
                    let req: FindCoordinatorRequest = decode(body, v);
                    assert!(req.coordinator_keys.is_empty() && !req.key.is_empty());
                    let resp = FindCoordinatorResponse::default()
                        .with_node_id(1.into())
                        .with_host(s("127.0.0.1"))
                        .with_port(port);
                    encode(&resp, v)
                }
                ApiKey::OffsetFetch => {
                    let req: OffsetFetchRequest = decode(body, v);
                    assert!(req.topics.is_none(), "asks for all topics");
                    let offset = if req.group_id.0.as_str() == "a" { 1 } else { 2 };
                    let resp = OffsetFetchResponse::default().with_topics(vec![
                        OffsetFetchResponseTopic::default()
                            .with_name(TopicName(s("t")))
                            .with_partitions(vec![
                                OffsetFetchResponsePartition::default()
                                    .with_committed_offset(offset),
                            ]),
                    ]);
                    encode(&resp, v)
                }
                other => panic!("unexpected {other:?}"),
            })
        });
        let mut client = Client::bootstrap(&addr).unwrap();
        let offsets = client
            .committed_offsets(&names(&["a", "b"]), TIMEOUT)
            .unwrap();
        let got: Vec<i64> = offsets
            .iter()
            .map(|(_, r)| r.as_ref().unwrap()[&TopicPartition::new("t", 0)].offset)
            .collect();
        assert_eq!(got, [1, 2]);
        assert_eq!(count(&log, ApiKey::FindCoordinator), [3, 3]);
        assert_eq!(count(&log, ApiKey::OffsetFetch), [7, 7]);
    }

    /// A coordinator that stays loading: retried until the timeout, then its error.
    #[test]
    fn retries_stop_at_the_timeout() {
        let apis = [
            (ApiKey::FindCoordinator, 0, 4),
            (ApiKey::DescribeGroups, 0, 5),
        ];
        let (addr, log) = fake_broker(&apis, |_| {
            Box::new(|_, v, body| {
                let req: FindCoordinatorRequest = decode(body, v);
                let c = req.coordinator_keys.iter().map(|k| {
                    Coordinator::default()
                        .with_key(k.clone())
                        .with_error_code(14)
                });
                encode(
                    &FindCoordinatorResponse::default().with_coordinators(c.collect()),
                    v,
                )
            })
        });
        let mut client = Client::bootstrap(&addr).unwrap();
        let start = Instant::now();
        let described = client
            .describe_groups(&names(&["g"]), Duration::from_millis(500))
            .unwrap();
        let e = described[0].1.as_ref().unwrap_err();
        assert_eq!(
            e.kafka(),
            Some(ResponseError::CoordinatorLoadInProgress),
            "{e}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        assert!(count(&log, ApiKey::FindCoordinator).len() >= 2, "retried");
    }

    #[test]
    fn unsupported_api_fails_before_any_request() {
        let (addr, log) = fake_broker(&[(ApiKey::Metadata, 0, 12)], |_| {
            Box::new(|api, _, _| panic!("unexpected {api:?}"))
        });
        let mut client = Client::bootstrap(&addr).unwrap();
        let e = client.describe_groups(&names(&["g"]), TIMEOUT).unwrap_err();
        assert!(
            matches!(
                e,
                Error::UnsupportedApi {
                    api: ApiKey::FindCoordinator
                }
            ),
            "{e}"
        );
        let e = client.list_groups(TIMEOUT).unwrap_err();
        assert!(e.to_string().contains("not supported by the broker"), "{e}");
        assert!(log.lock().unwrap().is_empty());
    }

    #[test]
    fn assignments_of_every_version() {
        for version in 0..=3 {
            let bytes = assignment_bytes(version, &[("b", &[2, 0]), ("a", &[1])]);
            let got = decode_assignment(&bytes).unwrap();
            let want = [
                TopicPartition::new("a", 1),
                TopicPartition::new("b", 0),
                TopicPartition::new("b", 2),
            ];
            assert_eq!(got, want, "version {version}");
        }
        // A newer version is read as the newest known one (fields are only appended).
        let mut newer = assignment_bytes(3, &[("a", &[0])]).to_vec();
        newer[..2].copy_from_slice(&7i16.to_be_bytes());
        assert_eq!(
            decode_assignment(&newer).unwrap(),
            [TopicPartition::new("a", 0)]
        );
        assert_eq!(decode_assignment(&[]).unwrap(), []);
        assert!(decode_assignment(&[0]).is_err());
        assert!(decode_assignment(&[0, 0, 0, 0, 0, 9]).is_err(), "truncated");
    }
}
