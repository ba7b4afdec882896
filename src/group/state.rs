//! One consumer group under the classic rebalance protocol: JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup and the membership check of OffsetCommit (Kafka's `GroupCoordinator`,
//! `GroupMetadata` and `MemberMetadata`, with KIP-345 static members and KIP-394 member ids).
//!
//! Pure state: time comes in as `now_ms`, fresh member ids in the request. Where Kafka parks a
//! request in a purgatory, the call returns a `oneshot::Receiver`, answered as soon as the
//! group can. Kafka's delayed operations (DelayedJoin, InitialDelayedJoin, DelayedSync,
//! DelayedHeartbeat) are deadlines here: every call first fires those that came due, in
//! deadline order, and `tick` does the same between requests. What they schedule counts
//! from the moment they fire.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::{Buf, Bytes};
use futures::channel::oneshot;
use kafka_protocol::messages::ConsumerProtocolSubscription;
use kafka_protocol::protocol::Decodable;

use super::{StoredGroup, StoredMember};
use crate::protocol::ErrorCode;

/// How long a member added by a JoinGroup may wait for the rebalance before it is dropped:
/// it cannot heartbeat yet, and a client that gave up would otherwise linger (Kafka's
/// `GroupCoordinator.NewMemberJoinTimeoutMs`).
pub const NEW_MEMBER_JOIN_TIMEOUT_MS: i64 = 5 * 60 * 1000;

/// The protocol type of Kafka's consumers, whose subscriptions we can read.
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// The broker's group settings, by their Kafka names.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    /// group.min.session.timeout.ms
    pub min_session_timeout_ms: i32,
    /// group.max.session.timeout.ms
    pub max_session_timeout_ms: i32,
    /// group.initial.rebalance.delay.ms
    pub initial_rebalance_delay_ms: i64,
    /// group.max.size
    pub max_size: usize,
}

impl Default for GroupConfig {
    /// Kafka's defaults.
    fn default() -> Self {
        GroupConfig {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            max_size: i32::MAX as usize,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No members (offsets may remain).
    Empty,
    /// Waiting for the members to (re)join.
    PreparingRebalance,
    /// Waiting for the leader's assignment.
    CompletingRebalance,
    Stable,
    /// Deleted or moved to another coordinator.
    Dead,
}

impl Phase {
    /// Kafka's name, as DescribeGroups and ListGroups show it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Empty => "Empty",
            Phase::PreparingRebalance => "PreparingRebalance",
            Phase::CompletingRebalance => "CompletingRebalance",
            Phase::Stable => "Stable",
            Phase::Dead => "Dead",
        }
    }
}

#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// "" for a new member.
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    /// The handler sets it to the session timeout for JoinGroup v0.
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    /// (name, metadata), in the member's preference order.
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+ (KIP-394): a new dynamic member first gets MEMBER_ID_REQUIRED with its id.
    pub requires_known_member_id: bool,
    /// Drawn by the caller, used when the member needs a new id. Kafka draws
    /// `client_id-uuid`, or `group_instance_id-uuid` for a static member.
    pub fresh_member_id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JoinResponse {
    pub error: i16,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Only the leader gets the members, with their metadata for the selected protocol.
    pub members: Vec<JoinedMember>,
}

#[derive(Debug, Clone)]
pub struct SyncRequest {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub generation_id: i32,
    /// v5+: must match the group's, else INCONSISTENT_GROUP_PROTOCOL.
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// From the leader only.
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncResponse {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// The selected protocol's metadata; empty unless Stable (as Kafka).
    pub metadata: Bytes,
    /// Empty unless Stable (as Kafka).
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupDescription {
    pub phase: Phase,
    pub protocol_type: String,
    /// "" unless Stable (as Kafka).
    pub protocol_name: String,
    pub members: Vec<GroupMember>,
}

type JoinSender = oneshot::Sender<JoinResponse>;
type SyncSender = oneshot::Sender<SyncResponse>;

#[derive(Debug)]
struct Member {
    member_id: String,
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    rebalance_timeout_ms: i32,
    session_timeout_ms: i32,
    /// (name, metadata) in preference order.
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    /// The parked JoinGroup, while the group prepares a rebalance.
    awaiting_join: Option<JoinSender>,
    /// The parked SyncGroup, while the group waits for the leader's assignment.
    awaiting_sync: Option<SyncSender>,
    /// Added during this rebalance: it may expire even while its JoinGroup is parked.
    is_new: bool,
    /// When the session expires unless the member shows up (Kafka's DelayedHeartbeat).
    expires_at_ms: Option<i64>,
}

impl Member {
    fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(name, _)| name == protocol)
    }

    fn metadata(&self, protocol: &str) -> Bytes {
        let found = self.protocols.iter().find(|(name, _)| name == protocol);
        found
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }

    /// The member's most preferred protocol among the candidates.
    fn vote<'a>(&'a self, candidates: &[&str]) -> Option<&'a str> {
        let mut names = self.protocols.iter().map(|(name, _)| name.as_str());
        names.find(|name| candidates.contains(name))
    }

    fn touch(&mut self, now_ms: i64) {
        self.expires_at_ms = Some(now_ms + i64::from(self.session_timeout_ms));
    }
}

/// The deadline of the join phase.
#[derive(Debug, Clone, Copy)]
enum JoinTimer {
    /// DelayedJoin: also completes as soon as every member rejoined.
    Rebalance { deadline_ms: i64 },
    /// InitialDelayedJoin, for the first rebalance out of Empty: never completes early, and
    /// waits again (up to the rebalance timeout) while new members keep arriving.
    Initial {
        deadline_ms: i64,
        configured_delay_ms: i64,
        delay_ms: i64,
        remaining_ms: i64,
    },
}

impl JoinTimer {
    fn deadline_ms(self) -> i64 {
        match self {
            JoinTimer::Rebalance { deadline_ms } | JoinTimer::Initial { deadline_ms, .. } => {
                deadline_ms
            }
        }
    }
}

/// Kinds of deadline, in the order they fire when due at the same ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Pending,
    Session,
    Sync,
    Join,
}

#[derive(Debug)]
pub struct Group {
    group_id: String,
    phase: Phase,
    /// When the group entered its phase (Kafka's currentStateTimestamp); unknown for a group
    /// loaded from a record that did not carry it.
    state_timestamp_ms: Option<i64>,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    generation_id: i32,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// group.instance.id -> member id.
    static_members: HashMap<String, String>,
    /// KIP-394 member ids handed out but not joined yet, and when they expire.
    pending_members: BTreeMap<String, i64>,
    join_timer: Option<JoinTimer>,
    /// A member joined during the initial delay of a new group (generation 0).
    new_member_added: bool,
    /// Members that have not sent SyncGroup for this generation, and until when they may.
    pending_sync: BTreeSet<String>,
    sync_deadline_ms: Option<i64>,
    /// The leader's assignment (every member, missing ones empty) while it is persisted.
    pending_assignment: Option<BTreeMap<String, Bytes>>,
    /// For consumer groups, computed at each generation (and on load) like Kafka.
    subscribed_topics: Option<BTreeSet<String>>,
    /// Loaded from the log and not yet checked against group.max.size.
    loaded: bool,
    /// `stored()` changed outside of a sync and must be appended to the log.
    persist_needed: bool,
}

impl Group {
    /// A new group: Empty, generation 0.
    pub fn new(group_id: String) -> Group {
        Group {
            group_id,
            phase: Phase::Empty,
            state_timestamp_ms: None,
            protocol_type: None,
            protocol_name: None,
            generation_id: 0,
            leader: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending_members: BTreeMap::new(),
            join_timer: None,
            new_member_added: false,
            pending_sync: BTreeSet::new(),
            sync_deadline_ms: None,
            pending_assignment: None,
            subscribed_topics: None,
            loaded: false,
            persist_needed: false,
        }
    }

    /// A group as read back from the offsets topic: Stable with its members (each with a full
    /// session from now), or Empty without. Over group.max.size it rebalances at the first
    /// `join` or `tick` (Kafka's onGroupLoaded).
    pub fn from_stored(group_id: String, stored: StoredGroup, now_ms: i64) -> Group {
        let mut group = Group::new(group_id);
        group.generation_id = stored.generation_id;
        group.protocol_type = Some(stored.protocol_type).filter(|t| !t.is_empty());
        group.protocol_name = stored.protocol_name;
        group.state_timestamp_ms = Some(stored.state_timestamp_ms).filter(|&ms| ms >= 0);
        for stored_member in stored.members {
            let member = loaded_member(stored_member, group.protocol_name.as_deref(), now_ms);
            if let Some(instance_id) = &member.group_instance_id {
                group
                    .static_members
                    .insert(instance_id.clone(), member.member_id.clone());
            }
            group.members.insert(member.member_id.clone(), member);
        }
        group.leader = stored
            .leader
            .or_else(|| group.members.keys().next().cloned());
        if !group.members.is_empty() {
            group.phase = Phase::Stable;
            group.loaded = true;
        }
        group.subscribed_topics = group.compute_subscribed_topics();
        group
    }

    /// What to persist (Kafka's GroupMetadataValue). While the leader's assignment is being
    /// persisted, that assignment.
    pub fn stored(&self) -> StoredGroup {
        let protocol = self.protocol_name.as_deref().unwrap_or_default();
        let members = self.members.values().map(|member| {
            let pending = self.pending_assignment.as_ref();
            let assignment = pending.and_then(|assignments| assignments.get(&member.member_id));
            StoredMember {
                member_id: member.member_id.clone(),
                group_instance_id: member.group_instance_id.clone(),
                client_id: member.client_id.clone(),
                client_host: member.client_host.clone(),
                rebalance_timeout_ms: member.rebalance_timeout_ms,
                session_timeout_ms: member.session_timeout_ms,
                subscription: member.metadata(protocol),
                assignment: assignment.unwrap_or(&member.assignment).clone(),
            }
        });
        StoredGroup {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation_id: self.generation_id,
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone(),
            state_timestamp_ms: self.state_timestamp_ms.unwrap_or(-1),
            members: members.collect(),
        }
    }

    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn generation_id(&self) -> i32 {
        self.generation_id
    }

    pub fn protocol_type(&self) -> Option<&str> {
        self.protocol_type.as_deref()
    }

    pub fn protocol_name(&self) -> Option<&str> {
        self.protocol_name.as_deref()
    }

    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    /// JoinGroup (Kafka's handleJoinGroup). The caller answers UNKNOWN_MEMBER_ID itself when
    /// the group does not exist and `member_id` is not "".
    pub fn join(
        &mut self,
        req: JoinRequest,
        now_ms: i64,
        config: &GroupConfig,
    ) -> oneshot::Receiver<JoinResponse> {
        let (tx, rx) = oneshot::channel();
        self.advance(now_ms);
        self.check_loaded_capacity(now_ms, config.max_size);
        let timeouts = config.min_session_timeout_ms..=config.max_session_timeout_ms;
        if !timeouts.contains(&req.session_timeout_ms) {
            let error = ErrorCode::InvalidSessionTimeout;
            reply(tx, join_error(req.member_id, error));
        } else if !self.accepts_joining(&req.member_id, config.max_size) {
            // The member must start over (and may find room later).
            self.remove(&req.member_id);
            reply(
                tx,
                join_error(String::new(), ErrorCode::GroupMaxSizeReached),
            );
        } else if req.member_id.is_empty() {
            self.join_new_member(req, tx, now_ms, config);
        } else {
            self.join_known_member(req, tx, now_ms, config);
        }
        self.maybe_complete_join(now_ms);
        rx
    }

    /// SyncGroup. Returns Some(generation) when the leader's assignment must be persisted
    /// (append `stored()`, then call `sync_persisted`) before anybody is answered.
    pub fn sync(
        &mut self,
        req: SyncRequest,
        now_ms: i64,
    ) -> (oneshot::Receiver<SyncResponse>, Option<i32>) {
        let (tx, rx) = oneshot::channel();
        self.advance(now_ms);
        let persist = match self.validate_sync(&req) {
            Err(error) => {
                reply(tx, sync_error(error));
                None
            }
            Ok(()) => self.sync_member(req, tx, now_ms),
        };
        (rx, persist)
    }

    /// The outcome of persisting the leader's assignment (error 0: stored). Stored: the group
    /// is Stable and the waiting members get their assignments. Failed: they get the error
    /// and the group rebalances. Ignored once the generation moved on.
    pub fn sync_persisted(&mut self, generation_id: i32, error: i16, now_ms: i64) {
        self.advance(now_ms);
        if self.phase != Phase::CompletingRebalance || generation_id != self.generation_id {
            return;
        }
        let Some(assignments) = self.pending_assignment.take() else {
            return;
        };
        if let Some(error) = ErrorCode::try_from_code(error) {
            self.reset_and_propagate_assignment_error(error, now_ms);
            self.prepare_rebalance(now_ms);
        } else {
            for member in self.members.values_mut() {
                let assignment = assignments.get(&member.member_id);
                member.assignment = assignment.cloned().unwrap_or_default();
            }
            self.propagate_assignment(None, now_ms);
            self.transition(Phase::Stable, now_ms);
        }
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
        now_ms: i64,
    ) -> i16 {
        self.advance(now_ms);
        let accepted = self.accept_heartbeat(member_id, group_instance_id, generation_id, now_ms);
        error_code(accepted)
    }

    /// LeaveGroup (v3+ batched): (member_id, group_instance_id) each; a static member may be
    /// removed by its instance id with member_id "". One error per member.
    pub fn leave(&mut self, members: &[(String, Option<String>)], now_ms: i64) -> Vec<i16> {
        self.advance(now_ms);
        let leave = |(member_id, instance_id): &(String, Option<String>)| {
            error_code(self.leave_one(member_id, instance_id.as_deref(), now_ms))
        };
        members.iter().map(leave).collect()
    }

    /// OffsetCommit's membership check (Kafka's validateOffsetCommit and doCommitOffsets),
    /// refreshing the member's session like a heartbeat. Generation -1 with member_id "" is a
    /// "simple" commit, allowed only while the group is Empty.
    pub fn check_commit(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
        now_ms: i64,
    ) -> Result<(), i16> {
        self.advance(now_ms);
        self.accept_commit(member_id, group_instance_id, generation_id, now_ms)
            .map_err(|error| error.code())
    }

    /// Fires the deadlines that came due: sessions, KIP-394 pending members, the join phase
    /// (removing members that did not rejoin), members that never synced. Returns true when
    /// `stored()` changed in a way that must be persisted (see `take_persist_needed`).
    pub fn tick(&mut self, now_ms: i64, config: &GroupConfig) -> bool {
        self.advance(now_ms);
        self.check_loaded_capacity(now_ms, config.max_size);
        self.take_persist_needed()
    }

    /// True (once) when `stored()` changed outside of a leader's sync and must be appended:
    /// the group became Empty (a generation completed without members), or a static member
    /// replaced its member id without a rebalance. `tick` reports it too.
    pub fn take_persist_needed(&mut self) -> bool {
        std::mem::take(&mut self.persist_needed)
    }

    /// When the group became Empty (offsets retention, KIP-211); None unless Empty.
    pub fn empty_since(&self) -> Option<i64> {
        self.state_timestamp_ms
            .filter(|_| self.phase == Phase::Empty)
    }

    /// For a consumer group: the topics its members subscribed to, as of the current
    /// generation. None when not a consumer group or a subscription is unreadable.
    pub fn subscribed_topics(&self) -> Option<BTreeSet<String>> {
        self.subscribed_topics.clone()
    }

    /// DescribeGroups' view (Kafka's GroupMetadata.summary).
    pub fn describe(&self) -> GroupDescription {
        let stable = self.phase == Phase::Stable;
        let protocol = self
            .protocol_name
            .clone()
            .filter(|_| stable)
            .unwrap_or_default();
        let members = self.members.values().map(|member| GroupMember {
            member_id: member.member_id.clone(),
            group_instance_id: member.group_instance_id.clone(),
            client_id: member.client_id.clone(),
            client_host: member.client_host.clone(),
            metadata: if stable {
                member.metadata(&protocol)
            } else {
                Bytes::new()
            },
            assignment: if stable {
                member.assignment.clone()
            } else {
                Bytes::new()
            },
        });
        GroupDescription {
            phase: self.phase,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            members: members.collect(),
            protocol_name: protocol,
        }
    }

    /// DeleteGroups: only an Empty group may go (it becomes Dead).
    pub fn delete(&mut self) -> Result<(), i16> {
        match self.phase {
            Phase::Empty => {
                self.mark_dead();
                Ok(())
            }
            Phase::Dead => Err(ErrorCode::GroupIdNotFound.code()),
            _ => Err(ErrorCode::NonEmptyGroup.code()),
        }
    }

    /// The group's offsets partition moved away (Kafka's onGroupUnloaded): the group is Dead
    /// and every parked JoinGroup or SyncGroup gets NOT_COORDINATOR.
    pub fn shutdown(&mut self) {
        let not_coordinator = ErrorCode::NotCoordinator;
        for member in self.members.values_mut() {
            if let Some(tx) = member.awaiting_join.take() {
                reply(tx, join_error(member.member_id.clone(), not_coordinator));
            }
            if let Some(tx) = member.awaiting_sync.take() {
                reply(tx, sync_error(not_coordinator));
            }
        }
        self.mark_dead();
    }

    fn mark_dead(&mut self) {
        self.phase = Phase::Dead;
        self.join_timer = None;
        self.sync_deadline_ms = None;
        self.pending_sync.clear();
        self.pending_members.clear();
        self.pending_assignment = None;
        for member in self.members.values_mut() {
            member.expires_at_ms = None;
        }
    }

    fn transition(&mut self, phase: Phase, now_ms: i64) {
        self.phase = phase;
        self.state_timestamp_ms = Some(now_ms);
    }

    // ---- JoinGroup ----

    /// Room for the member (Kafka's acceptJoiningMember). While rebalancing, members already
    /// rejoined are counted, so the last ones to rejoin an oversized group are turned away.
    fn accepts_joining(&self, member_id: &str, max_size: usize) -> bool {
        let member = self.members.get(member_id);
        match self.phase {
            Phase::Empty | Phase::Dead => true,
            Phase::PreparingRebalance => {
                member.is_some_and(|m| m.awaiting_join.is_some()) || self.awaiting_join() < max_size
            }
            Phase::CompletingRebalance | Phase::Stable => {
                member.is_some() || self.members.len() < max_size
            }
        }
    }

    fn join_new_member(
        &mut self,
        req: JoinRequest,
        tx: JoinSender,
        now_ms: i64,
        config: &GroupConfig,
    ) {
        let known_instance = req.group_instance_id.as_ref();
        let old_member_id = known_instance
            .and_then(|id| self.static_members.get(id))
            .cloned();
        if self.phase == Phase::Dead {
            // The group just moved or was deleted: the client looks for its coordinator again.
            reply(
                tx,
                join_error(String::new(), ErrorCode::CoordinatorNotAvailable),
            );
        } else if !self.supports_protocols(&req.protocol_type, &req.protocols) {
            let error = ErrorCode::InconsistentGroupProtocol;
            reply(tx, join_error(String::new(), error));
        } else if let Some(old_member_id) = old_member_id {
            self.replace_static_member_and_rebalance(old_member_id, req, tx, now_ms);
        } else if req.group_instance_id.is_none() && req.requires_known_member_id {
            // KIP-394: hand out the id first, so a client that times out in JoinGroup rejoins
            // as the same member instead of piling up new ones.
            let member_id = req.fresh_member_id;
            let expires_at_ms = now_ms + i64::from(req.session_timeout_ms);
            self.pending_members
                .insert(member_id.clone(), expires_at_ms);
            reply(tx, join_error(member_id, ErrorCode::MemberIdRequired));
        } else {
            let member_id = req.fresh_member_id.clone();
            self.add_member_and_rebalance(member_id, req, tx, now_ms, config);
        }
    }

    fn join_known_member(
        &mut self,
        req: JoinRequest,
        tx: JoinSender,
        now_ms: i64,
        config: &GroupConfig,
    ) {
        let member_id = req.member_id.clone();
        if self.phase == Phase::Dead {
            reply(
                tx,
                join_error(member_id, ErrorCode::CoordinatorNotAvailable),
            );
        } else if !self.supports_protocols(&req.protocol_type, &req.protocols) {
            reply(
                tx,
                join_error(member_id, ErrorCode::InconsistentGroupProtocol),
            );
        } else if self.pending_members.contains_key(&member_id) {
            if req.group_instance_id.is_some() {
                // Pending ids are only handed to dynamic members: Kafka fails the request.
                reply(tx, join_error(member_id, ErrorCode::UnknownServerError));
            } else {
                self.add_member_and_rebalance(member_id, req, tx, now_ms, config);
            }
        } else {
            let instance_id = req.group_instance_id.as_deref();
            match self.validate_current_member(&member_id, instance_id) {
                Err(error) => reply(tx, join_error(member_id, error)),
                Ok(()) => self.rejoin(req, tx, now_ms),
            }
        }
    }

    /// A current member joins again.
    fn rejoin(&mut self, req: JoinRequest, tx: JoinSender, now_ms: i64) {
        let member_id = req.member_id.clone();
        let unchanged = self.members[&member_id].protocols == req.protocols;
        let is_leader = self.leader.as_deref() == Some(member_id.as_str());
        match self.phase {
            Phase::PreparingRebalance => self.update_member(&member_id, req, tx),
            // It missed the JoinGroup answer of this generation: the same answer again.
            Phase::CompletingRebalance if unchanged => {
                reply(tx, self.join_result(&member_id, is_leader));
            }
            // A follower with nothing new goes on to SyncGroup. The leader rejoining forces a
            // rebalance: that is how it reacts to changes the metadata does not show (topics).
            Phase::Stable if unchanged && !is_leader => {
                reply(tx, self.join_result(&member_id, false));
            }
            Phase::CompletingRebalance | Phase::Stable => {
                self.update_member(&member_id, req, tx);
                self.prepare_rebalance(now_ms);
            }
            Phase::Empty | Phase::Dead => {
                reply(tx, join_error(member_id, ErrorCode::UnknownMemberId));
            }
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        member_id: String,
        req: JoinRequest,
        tx: JoinSender,
        now_ms: i64,
        config: &GroupConfig,
    ) {
        let member = Member {
            member_id,
            group_instance_id: req.group_instance_id,
            client_id: req.client_id,
            client_host: req.client_host,
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            session_timeout_ms: req.session_timeout_ms,
            protocols: req.protocols,
            assignment: Bytes::new(),
            awaiting_join: Some(tx),
            awaiting_sync: None,
            is_new: true,
            expires_at_ms: Some(now_ms + NEW_MEMBER_JOIN_TIMEOUT_MS),
        };
        if self.phase == Phase::PreparingRebalance && self.generation_id == 0 {
            self.new_member_added = true;
        }
        self.add(member, req.protocol_type);
        match self.phase {
            Phase::Empty => self.start_initial_rebalance(now_ms, config.initial_rebalance_delay_ms),
            Phase::Stable | Phase::CompletingRebalance => self.prepare_rebalance(now_ms),
            Phase::PreparingRebalance | Phase::Dead => {}
        }
    }

    /// A known static member restarted (it joins with member id ""): it takes a new member id
    /// and the old one is fenced (Kafka's updateStaticMemberAndRebalance).
    fn replace_static_member_and_rebalance(
        &mut self,
        old_member_id: String,
        req: JoinRequest,
        tx: JoinSender,
        now_ms: i64,
    ) {
        let new_member_id = req.fresh_member_id.clone();
        let old_leader = self.leader.clone();
        self.replace_static_member(&old_member_id, &new_member_id);
        self.touch(&new_member_id, now_ms);
        self.update_member(&new_member_id, req, tx);
        match self.phase {
            // Unless the selected protocol would change, it gets the current generation back
            // without a rebalance.
            Phase::Stable if self.select_protocol() == self.protocol_name => {
                let mut response = self.join_result(&new_member_id, false);
                // The old leader id: a restarted leader then sees itself as a follower and does
                // not compute an assignment that a Stable group would ignore; it syncs and
                // gets its current one. (JoinGroup v9's SkipAssignment is not served.)
                response.leader = old_leader.unwrap_or_default();
                let member = self.members.get_mut(&new_member_id);
                if let Some(tx) = member.and_then(|m| m.awaiting_join.take()) {
                    reply(tx, response);
                }
                // Kafka persists the new member id before answering; here the caller does it
                // after (the revert on a failed write is not modelled).
                self.persist_needed = true;
            }
            // The leader may already be assigning to the old member id.
            Phase::Stable | Phase::CompletingRebalance => self.prepare_rebalance(now_ms),
            Phase::PreparingRebalance | Phase::Empty | Phase::Dead => {}
        }
    }

    fn replace_static_member(&mut self, old_member_id: &str, new_member_id: &str) {
        let Some(mut member) = self.members.remove(old_member_id) else {
            return;
        };
        // Whoever still uses the old id is a zombie: fence its parked requests at once.
        let fenced = ErrorCode::FencedInstanceId;
        if let Some(tx) = member.awaiting_join.take() {
            reply(tx, join_error(old_member_id.to_string(), fenced));
        }
        if let Some(tx) = member.awaiting_sync.take() {
            reply(tx, sync_error(fenced));
        }
        member.member_id = new_member_id.to_string();
        if let Some(instance_id) = &member.group_instance_id {
            self.static_members
                .insert(instance_id.clone(), new_member_id.to_string());
        }
        if self.leader.as_deref() == Some(old_member_id) {
            self.leader = Some(new_member_id.to_string());
        }
        // Like Kafka, a pending SyncGroup stays expected from the old id.
        self.members.insert(new_member_id.to_string(), member);
    }

    fn update_member(&mut self, member_id: &str, req: JoinRequest, tx: JoinSender) {
        if let Some(member) = self.members.get_mut(member_id) {
            member.protocols = req.protocols;
            member.rebalance_timeout_ms = req.rebalance_timeout_ms;
            member.session_timeout_ms = req.session_timeout_ms;
            // A JoinGroup parked before is dropped unanswered, as Kafka does.
            member.awaiting_join = Some(tx);
        }
    }

    fn add(&mut self, member: Member, protocol_type: String) {
        if self.members.is_empty() {
            self.protocol_type = Some(protocol_type);
        }
        if let Some(instance_id) = &member.group_instance_id {
            self.static_members
                .insert(instance_id.clone(), member.member_id.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(member.member_id.clone());
        }
        self.pending_members.remove(&member.member_id);
        self.members.insert(member.member_id.clone(), member);
    }

    fn remove(&mut self, member_id: &str) {
        let removed = self.members.remove(member_id);
        if let Some(instance_id) = removed.and_then(|m| m.group_instance_id) {
            self.static_members.remove(&instance_id);
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = self.members.keys().next().cloned();
        }
        self.pending_members.remove(member_id);
        self.pending_sync.remove(member_id);
    }

    /// Removes a member that left or died; its parked JoinGroup learns it is gone.
    fn remove_member_and_update(&mut self, member_id: &str, now_ms: i64) {
        let member = self.members.get_mut(member_id);
        if let Some(tx) = member.and_then(|m| m.awaiting_join.take()) {
            reply(tx, join_error(String::new(), ErrorCode::UnknownMemberId));
        }
        self.remove(member_id);
        match self.phase {
            Phase::Stable | Phase::CompletingRebalance => self.prepare_rebalance(now_ms),
            Phase::PreparingRebalance => self.maybe_complete_join(now_ms),
            Phase::Empty | Phase::Dead => {}
        }
    }

    /// The protocol type must be the group's, and one of the protocols shared by all members.
    fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.phase == Phase::Empty {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        let shared = |name: &str| self.members.values().all(|m| m.supports(name));
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols.iter().any(|(name, _)| shared(name))
    }

    /// Every member votes for its most preferred protocol among those all support; the most
    /// votes win (ties, which Kafka breaks by hash order, go to the smallest name).
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let shared = |name: &&str| self.members.values().all(|m| m.supports(name));
        let names = first.protocols.iter().map(|(name, _)| name.as_str());
        let candidates: Vec<&str> = names.filter(shared).collect();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for vote in self.members.values().filter_map(|m| m.vote(&candidates)) {
            *votes.entry(vote).or_default() += 1;
        }
        let most = votes
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)));
        most.map(|(name, _)| name.to_string())
    }

    fn join_result(&self, member_id: &str, with_members: bool) -> JoinResponse {
        let protocol = self.protocol_name.as_deref().unwrap_or_default();
        let members = self
            .members
            .values()
            .filter(|_| with_members)
            .map(|m| JoinedMember {
                member_id: m.member_id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                metadata: m.metadata(protocol),
            });
        JoinResponse {
            error: 0,
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: members.collect(),
        }
    }

    // ---- Rebalance ----

    /// Starts a join phase out of Stable or CompletingRebalance (Kafka's prepareRebalance with
    /// a DelayedJoin): syncs waiting for the leader must rejoin instead.
    fn prepare_rebalance(&mut self, now_ms: i64) {
        if self.phase == Phase::CompletingRebalance {
            self.reset_and_propagate_assignment_error(ErrorCode::RebalanceInProgress, now_ms);
        }
        self.pending_sync.clear();
        self.sync_deadline_ms = None;
        self.pending_assignment = None;
        let deadline_ms = now_ms + self.rebalance_timeout_ms();
        self.join_timer = Some(JoinTimer::Rebalance { deadline_ms });
        self.transition(Phase::PreparingRebalance, now_ms);
        self.maybe_complete_join(now_ms);
    }

    /// The first join of an Empty group waits group.initial.rebalance.delay.ms, so the
    /// members of a starting application land in one generation (InitialDelayedJoin).
    fn start_initial_rebalance(&mut self, now_ms: i64, delay_ms: i64) {
        self.join_timer = Some(JoinTimer::Initial {
            deadline_ms: now_ms + delay_ms,
            configured_delay_ms: delay_ms,
            delay_ms,
            remaining_ms: (self.rebalance_timeout_ms() - delay_ms).max(0),
        });
        self.transition(Phase::PreparingRebalance, now_ms);
    }

    /// The join phase ends early once every member (and every KIP-394 pending member) joined.
    fn maybe_complete_join(&mut self, now_ms: i64) {
        let all_joined = self.members.values().all(|m| m.awaiting_join.is_some())
            && self.pending_members.is_empty();
        let early = matches!(self.join_timer, Some(JoinTimer::Rebalance { .. }));
        if self.phase == Phase::PreparingRebalance && early && all_joined {
            self.complete_join(now_ms);
        }
    }

    fn expire_join(&mut self, now_ms: i64) {
        match self.join_timer {
            Some(JoinTimer::Initial {
                configured_delay_ms,
                delay_ms,
                remaining_ms,
                ..
            }) if self.new_member_added && remaining_ms != 0 => {
                self.new_member_added = false;
                let delay = configured_delay_ms.min(remaining_ms);
                self.join_timer = Some(JoinTimer::Initial {
                    deadline_ms: now_ms + delay,
                    configured_delay_ms,
                    delay_ms: delay,
                    // Kafka subtracts the delay that just passed.
                    remaining_ms: (remaining_ms - delay_ms).max(0),
                });
            }
            _ => self.complete_join(now_ms),
        }
    }

    /// Ends the join phase (Kafka's onCompleteJoin): dynamic members that did not rejoin are
    /// dropped (static ones stay until their session expires), then the next generation.
    fn complete_join(&mut self, now_ms: i64) {
        self.join_timer = None;
        let absent = self.members.values().filter(|m| m.awaiting_join.is_none());
        let dropped: Vec<String> = absent
            .filter(|m| m.group_instance_id.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for member_id in &dropped {
            self.remove(member_id);
        }
        if !self.elect_joined_leader() && !self.members.is_empty() {
            // Only static members that have not rejoined are left: give them another rebalance
            // timeout (a purgatory timer fires no sooner than the next ms).
            let deadline_ms = now_ms + self.rebalance_timeout_ms().max(1);
            self.join_timer = Some(JoinTimer::Rebalance { deadline_ms });
            return;
        }
        self.init_next_generation(now_ms);
        if self.phase == Phase::Empty {
            self.persist_needed = true;
        } else {
            self.answer_joins(now_ms);
        }
    }

    /// Keeps the leader if it rejoined, else picks a member that did. False when nobody did.
    fn elect_joined_leader(&mut self) -> bool {
        let Some(leader) = &self.leader else {
            return false;
        };
        if self
            .members
            .get(leader)
            .is_some_and(|m| m.awaiting_join.is_some())
        {
            return true;
        }
        match self.members.values().find(|m| m.awaiting_join.is_some()) {
            Some(member) => {
                self.leader = Some(member.member_id.clone());
                true
            }
            None => false,
        }
    }

    fn init_next_generation(&mut self, now_ms: i64) {
        self.generation_id += 1;
        self.protocol_name = self.select_protocol();
        self.subscribed_topics = self.compute_subscribed_topics();
        self.pending_sync.clear();
        let phase = if self.members.is_empty() {
            Phase::Empty
        } else {
            Phase::CompletingRebalance
        };
        self.transition(phase, now_ms);
    }

    /// Answers every parked JoinGroup with the new generation (the leader gets the members),
    /// restarts every session, and expects a SyncGroup from everyone within the rebalance
    /// timeout.
    fn answer_joins(&mut self, now_ms: i64) {
        let leader = self.leader.clone().unwrap_or_default();
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for member_id in ids {
            let response = self.join_result(&member_id, member_id == leader);
            let member = self.members.get_mut(&member_id).expect("listed above");
            if let Some(tx) = member.awaiting_join.take() {
                reply(tx, response);
            }
            member.touch(now_ms);
            member.is_new = false;
            self.pending_sync.insert(member_id);
        }
        self.sync_deadline_ms = Some(now_ms + self.rebalance_timeout_ms());
    }

    // ---- SyncGroup ----

    fn validate_sync(&self, req: &SyncRequest) -> Result<(), ErrorCode> {
        if self.phase == Phase::Dead {
            return Err(ErrorCode::CoordinatorNotAvailable);
        }
        self.validate_current_member(&req.member_id, req.group_instance_id.as_deref())?;
        let inconsistent =
            |theirs: &Option<String>, ours: &Option<String>| theirs.is_some() && theirs != ours;
        if req.generation_id != self.generation_id {
            Err(ErrorCode::IllegalGeneration)
        } else if inconsistent(&req.protocol_type, &self.protocol_type)
            || inconsistent(&req.protocol_name, &self.protocol_name)
        {
            Err(ErrorCode::InconsistentGroupProtocol)
        } else {
            Ok(())
        }
    }

    fn sync_member(&mut self, req: SyncRequest, tx: SyncSender, now_ms: i64) -> Option<i32> {
        match self.phase {
            Phase::Empty | Phase::Dead => reply(tx, sync_error(ErrorCode::UnknownMemberId)),
            Phase::PreparingRebalance => {
                reply(tx, sync_error(ErrorCode::RebalanceInProgress));
            }
            Phase::CompletingRebalance => return self.await_assignment(req, tx),
            Phase::Stable => {
                self.synced(&req.member_id);
                let member = self.members.get_mut(&req.member_id).expect("validated");
                let assignment = member.assignment.clone();
                member.touch(now_ms);
                reply(tx, self.sync_result(assignment));
            }
        }
        None
    }

    /// Parks the member's SyncGroup until the leader's assignment is persisted.
    fn await_assignment(&mut self, req: SyncRequest, tx: SyncSender) -> Option<i32> {
        self.synced(&req.member_id);
        let member = self.members.get_mut(&req.member_id).expect("validated");
        // A SyncGroup parked before is dropped unanswered, as Kafka does.
        member.awaiting_sync = Some(tx);
        if self.leader.as_deref() != Some(req.member_id.as_str()) {
            return None;
        }
        let assignments: HashMap<String, Bytes> = req.assignments.into_iter().collect();
        // Members the leader left out get an empty assignment.
        let all = self.members.keys().map(|member_id| {
            let assignment = assignments.get(member_id).cloned().unwrap_or_default();
            (member_id.clone(), assignment)
        });
        self.pending_assignment = Some(all.collect());
        Some(self.generation_id)
    }

    fn synced(&mut self, member_id: &str) {
        self.pending_sync.remove(member_id);
        if self.pending_sync.is_empty() {
            self.sync_deadline_ms = None;
        }
    }

    fn sync_result(&self, assignment: Bytes) -> SyncResponse {
        SyncResponse {
            error: 0,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment,
        }
    }

    fn reset_and_propagate_assignment_error(&mut self, error: ErrorCode, now_ms: i64) {
        for member in self.members.values_mut() {
            member.assignment = Bytes::new();
        }
        self.propagate_assignment(Some(error), now_ms);
    }

    /// Answers the parked SyncGroups; each answered member's session restarts, since it may
    /// have run out while the member waited.
    fn propagate_assignment(&mut self, error: Option<ErrorCode>, now_ms: i64) {
        let ok = error.is_none();
        let protocol_type = self.protocol_type.clone().filter(|_| ok);
        let protocol_name = self.protocol_name.clone().filter(|_| ok);
        for member in self.members.values_mut() {
            if let Some(tx) = member.awaiting_sync.take() {
                reply(
                    tx,
                    SyncResponse {
                        error: error.map_or(0, |error| error.code()),
                        protocol_type: protocol_type.clone(),
                        protocol_name: protocol_name.clone(),
                        assignment: member.assignment.clone(),
                    },
                );
                member.touch(now_ms);
            }
        }
    }

    // ---- LeaveGroup, heartbeats, commits ----

    fn leave_one(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now_ms: i64,
    ) -> Result<(), ErrorCode> {
        if self.phase == Phase::Dead {
            return Err(ErrorCode::CoordinatorNotAvailable);
        }
        let member_id = if member_id.is_empty() {
            // An administrator removes a static member by its instance id alone.
            let current = instance_id.and_then(|id| self.static_members.get(id));
            current.ok_or(ErrorCode::UnknownMemberId)?.clone()
        } else if self.pending_members.remove(member_id).is_some() {
            self.maybe_complete_join(now_ms);
            return Ok(());
        } else {
            self.validate_current_member(member_id, instance_id)?;
            member_id.to_string()
        };
        self.remove_member_and_update(&member_id, now_ms);
        Ok(())
    }

    fn accept_heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation_id: i32,
        now_ms: i64,
    ) -> Result<(), ErrorCode> {
        if self.phase == Phase::Dead {
            return Err(ErrorCode::CoordinatorNotAvailable);
        }
        self.validate_current_member(member_id, instance_id)?;
        if generation_id != self.generation_id {
            return Err(ErrorCode::IllegalGeneration);
        }
        match self.phase {
            Phase::Empty | Phase::Dead => Err(ErrorCode::UnknownMemberId),
            Phase::PreparingRebalance => {
                self.touch(member_id, now_ms);
                // How members learn that they must rejoin.
                Err(ErrorCode::RebalanceInProgress)
            }
            Phase::CompletingRebalance | Phase::Stable => {
                self.touch(member_id, now_ms);
                Ok(())
            }
        }
    }

    fn accept_commit(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation_id: i32,
        now_ms: i64,
    ) -> Result<(), ErrorCode> {
        self.validate_commit(member_id, instance_id, generation_id)?;
        match self.phase {
            Phase::Empty => Ok(()),
            // Commits of the previous generation are still welcome while members rejoin.
            Phase::Stable | Phase::PreparingRebalance => {
                self.touch(member_id, now_ms);
                Ok(())
            }
            // The member knows the new generation but has no assignment yet.
            Phase::CompletingRebalance => Err(ErrorCode::RebalanceInProgress),
            Phase::Dead => Err(ErrorCode::CoordinatorNotAvailable),
        }
    }

    /// The member exists and, for a static member, is the instance's current member id.
    fn validate_current_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), ErrorCode> {
        if let Some(instance_id) = instance_id {
            match self.static_members.get(instance_id) {
                Some(current) if current != member_id => {
                    return Err(ErrorCode::FencedInstanceId);
                }
                Some(_) => {}
                None => return Err(ErrorCode::UnknownMemberId),
            }
        }
        if self.members.contains_key(member_id) {
            Ok(())
        } else {
            Err(ErrorCode::UnknownMemberId)
        }
    }

    fn validate_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation_id: i32,
    ) -> Result<(), ErrorCode> {
        if self.phase == Phase::Dead {
            Err(ErrorCode::CoordinatorNotAvailable)
        } else if generation_id < 0 && self.phase == Phase::Empty {
            // An admin client or a consumer without group management.
            Ok(())
        } else if generation_id >= 0 || !member_id.is_empty() || instance_id.is_some() {
            self.validate_current_member(member_id, instance_id)?;
            if generation_id != self.generation_id {
                return Err(ErrorCode::IllegalGeneration);
            }
            Ok(())
        } else {
            // Once the group has members, only they may commit.
            Err(ErrorCode::UnknownMemberId)
        }
    }

    fn touch(&mut self, member_id: &str, now_ms: i64) {
        if let Some(member) = self.members.get_mut(member_id) {
            member.touch(now_ms);
        }
    }

    fn rebalance_timeout_ms(&self) -> i64 {
        let timeouts = self
            .members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms));
        timeouts.max().unwrap_or(0)
    }

    fn awaiting_join(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.awaiting_join.is_some())
            .count()
    }

    /// A group loaded over group.max.size rebalances, so the members that rejoin last are
    /// turned away (they may still commit their offsets first).
    fn check_loaded_capacity(&mut self, now_ms: i64, max_size: usize) {
        if std::mem::take(&mut self.loaded)
            && self.phase == Phase::Stable
            && self.members.len() > max_size
        {
            self.prepare_rebalance(now_ms);
        }
    }

    // ---- Deadlines ----

    /// Fires every deadline due by `now_ms`, earliest first.
    fn advance(&mut self, now_ms: i64) {
        while let Some((timer, member_id)) = self.next_due(now_ms) {
            match timer {
                Timer::Pending => {
                    self.pending_members.remove(&member_id);
                    self.maybe_complete_join(now_ms);
                }
                Timer::Session => self.expire_session(&member_id, now_ms),
                Timer::Sync => self.expire_sync(now_ms),
                Timer::Join => self.expire_join(now_ms),
            }
        }
    }

    /// The earliest deadline due by `now_ms` (with the member it concerns, if any).
    fn next_due(&self, now_ms: i64) -> Option<(Timer, String)> {
        let join = self.join_timer.map(|t| (t.deadline_ms(), Timer::Join, ""));
        let sync = self.sync_deadline_ms.map(|at| (at, Timer::Sync, ""));
        let sessions = self.members.values().filter_map(|m| {
            let at = m.expires_at_ms?;
            Some((at, Timer::Session, m.member_id.as_str()))
        });
        let pending = self
            .pending_members
            .iter()
            .map(|(id, &at)| (at, Timer::Pending, id.as_str()));
        let all = join.into_iter().chain(sync).chain(sessions).chain(pending);
        let (at, timer, member_id) = all.min()?;
        (at <= now_ms).then(|| (timer, member_id.to_string()))
    }

    /// A session ran out. A member parked in JoinGroup or SyncGroup counts as alive (unless it
    /// is new in this rebalance); its session restarts when it is answered.
    fn expire_session(&mut self, member_id: &str, now_ms: i64) {
        let Some(member) = self.members.get_mut(member_id) else {
            return;
        };
        let parked = member.awaiting_join.is_some() || member.awaiting_sync.is_some();
        if parked && !member.is_new {
            member.expires_at_ms = None;
        } else {
            self.remove_member_and_update(member_id, now_ms);
        }
    }

    /// Members that never sent SyncGroup for this generation are removed (Kafka's DelayedSync).
    fn expire_sync(&mut self, now_ms: i64) {
        self.sync_deadline_ms = None;
        let syncing = matches!(self.phase, Phase::CompletingRebalance | Phase::Stable);
        if !syncing || self.pending_sync.is_empty() {
            return;
        }
        for member_id in std::mem::take(&mut self.pending_sync) {
            self.remove(&member_id);
        }
        self.prepare_rebalance(now_ms);
    }

    fn compute_subscribed_topics(&self) -> Option<BTreeSet<String>> {
        if self.protocol_type.as_deref() != Some(CONSUMER_PROTOCOL_TYPE) {
            return None;
        }
        let mut topics = BTreeSet::new();
        if self.members.is_empty() {
            return Some(topics);
        }
        let protocol = self.protocol_name.as_deref()?;
        for member in self.members.values() {
            topics.extend(subscription_topics(member.metadata(protocol))?);
        }
        Some(topics)
    }
}

fn loaded_member(stored: StoredMember, protocol: Option<&str>, now_ms: i64) -> Member {
    let protocols = protocol.map(|name| vec![(name.to_string(), stored.subscription)]);
    let mut member = Member {
        member_id: stored.member_id,
        group_instance_id: stored.group_instance_id,
        client_id: stored.client_id,
        client_host: stored.client_host,
        rebalance_timeout_ms: stored.rebalance_timeout_ms,
        session_timeout_ms: stored.session_timeout_ms,
        protocols: protocols.unwrap_or_default(),
        assignment: stored.assignment,
        awaiting_join: None,
        awaiting_sync: None,
        is_new: false,
        expires_at_ms: None,
    };
    member.touch(now_ms);
    member
}

/// The topics of a consumer's subscription. Every version begins with version 0's fields, so
/// like Kafka we read those: subscriptions of newer clients stay readable.
fn subscription_topics(mut metadata: Bytes) -> Option<Vec<String>> {
    if metadata.remaining() < 2 || metadata.get_i16() < 0 {
        return None;
    }
    let subscription = ConsumerProtocolSubscription::decode(&mut metadata, 0).ok()?;
    Some(
        subscription
            .topics
            .iter()
            .map(|topic| topic.to_string())
            .collect(),
    )
}

fn join_error(member_id: String, error: ErrorCode) -> JoinResponse {
    JoinResponse {
        error: error.code(),
        generation_id: -1,
        protocol_type: None,
        protocol_name: None,
        leader: String::new(),
        member_id,
        members: Vec::new(),
    }
}

fn sync_error(error: ErrorCode) -> SyncResponse {
    SyncResponse {
        error: error.code(),
        protocol_type: None,
        protocol_name: None,
        assignment: Bytes::new(),
    }
}

fn error_code(result: Result<(), ErrorCode>) -> i16 {
    result.err().map_or(0, |error| error.code())
}

/// Answers a parked request; a client that went away does not matter.
fn reply<T>(tx: oneshot::Sender<T>, response: T) {
    let _ = tx.send(response);
}

#[cfg(test)]
mod tests;
