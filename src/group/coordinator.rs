//! The group coordinator of one shard: the groups of every `__consumer_offsets` partition
//! this shard owns and whose leader this broker is (Kafka's `GroupCoordinator` +
//! `GroupMetadataManager`).
//!
//! Lifecycle of a partition's groups: when a metadata image makes this broker the leader of
//! an offsets partition, its records are replayed from the log (requests meanwhile get
//! COORDINATOR_LOAD_IN_PROGRESS); from then on every change is written to the partition
//! with acks=all before it is answered; when leadership moves the groups are dropped and
//! waiting members are told NOT_COORDINATOR, to find the new coordinator, which replays the
//! same records.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use super::OFFSETS_TOPIC;
use super::offsets::TopicPartition;
use super::offsets_log::{
    OffsetsPartition, commit, load, persist_if_settled, write_and_apply, write_group,
};
use super::records::{CommittedOffset, OffsetsRecord};
use super::state::{
    GroupConfig, GroupDescription, JoinRequest, JoinResponse, Phase, SyncRequest, SyncResponse,
};
use crate::config::BrokerSettings;
use crate::protocol::ErrorCode;
use crate::replication::replica::Replica;
use crate::runtime::{delay, spawn_local};
use crate::storage::now_ms;

const NONE: i16 = 0;
/// How often group timers (sessions, rebalance deadlines) are checked.
const TICK: Duration = Duration::from_millis(100);

/// A request for a group, sent to the shard that owns its offsets partition.
pub struct GroupWork {
    pub partition: i32,
    pub group_id: String,
    pub call: GroupCall,
}

pub enum GroupCall {
    Join(JoinRequest),
    Sync(SyncRequest),
    Heartbeat {
        member_id: String,
        group_instance_id: Option<String>,
        generation_id: i32,
    },
    Leave(Vec<(String, Option<String>)>),
    Commit {
        member_id: String,
        group_instance_id: Option<String>,
        generation_id: i32,
        offsets: Vec<(TopicPartition, CommittedOffset)>,
    },
    /// None: every committed offset of the group.
    FetchOffsets(Option<Vec<TopicPartition>>),
    Describe,
    Delete,
    DeleteOffsets(Vec<TopicPartition>),
}

pub enum GroupAnswer {
    /// The coordinator cannot take the request (NOT_COORDINATOR, loading, ...).
    Error(i16),
    Join(JoinResponse),
    Sync(SyncResponse),
    Code(i16),
    /// One code per member or partition, in request order.
    Codes(Vec<i16>),
    Offsets(Vec<(TopicPartition, Option<CommittedOffset>)>),
    Describe(Option<GroupDescription>),
}

/// One line of ListGroups.
pub struct ListedGroup {
    pub group_id: String,
    pub protocol_type: String,
    pub state: &'static str,
}

/// The coordinator's settings, read once from the broker's configuration.
pub struct CoordinatorConfig {
    pub groups: GroupConfig,
    /// `offsets.commit.timeout.ms`: how long a write waits for the ISR.
    pub commit_timeout: Duration,
    /// `offsets.retention.minutes`, in ms.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`.
    pub retention_check_ms: i64,
}

impl CoordinatorConfig {
    pub fn of(s: &BrokerSettings) -> Self {
        Self {
            groups: GroupConfig {
                min_session_timeout_ms: s.group_min_session_timeout_ms,
                max_session_timeout_ms: s.group_max_session_timeout_ms,
                initial_rebalance_delay_ms: s.group_initial_rebalance_delay_ms,
                max_size: s.group_max_size,
            },
            commit_timeout: s.offsets_commit_timeout,
            offsets_retention_ms: s.offsets_retention_ms,
            retention_check_ms: s.offsets_retention_check_interval_ms,
        }
    }
}

pub struct Coordinator {
    pub(super) config: CoordinatorConfig,
    partitions: RefCell<HashMap<i32, Rc<OffsetsPartition>>>,
    ticking: Cell<bool>,
    stopping: Cell<bool>,
}

impl Coordinator {
    pub fn new(config: CoordinatorConfig) -> Rc<Self> {
        Rc::new(Self {
            config,
            partitions: RefCell::new(HashMap::new()),
            ticking: Cell::new(false),
            stopping: Cell::new(false),
        })
    }

    /// Ends the timer loop.
    pub fn stop(&self) {
        self.stopping.set(true);
    }

    /// Follows the replicas' roles after a metadata image: starts loading the offsets
    /// partitions this shard now leads, drops the ones it no longer leads.
    pub fn on_roles(self: &Rc<Self>, replicas: &[Rc<Replica>]) {
        let mut leading = HashMap::new();
        for replica in replicas {
            if replica.topic == OFFSETS_TOPIC
                && let Some(epoch) = replica.leader_epoch()
            {
                leading.insert(replica.partition, (replica.clone(), epoch));
            }
        }
        let mut partitions = self.partitions.borrow_mut();
        partitions.retain(|index, p| {
            let keep = leading
                .get(index)
                .is_some_and(|(r, epoch)| *epoch == p.leader_epoch && Rc::ptr_eq(r, &p.replica));
            if !keep && let Some(groups) = p.groups.borrow_mut().as_mut() {
                groups.shutdown();
            }
            keep
        });
        for (index, (replica, leader_epoch)) in leading {
            if partitions.contains_key(&index) {
                continue;
            }
            let partition = Rc::new(OffsetsPartition {
                index,
                leader_epoch,
                replica,
                groups: RefCell::new(None),
                written: RefCell::new(HashMap::new()),
            });
            partitions.insert(index, partition.clone());
            spawn_local(load(partition)).detach();
        }
        if !partitions.is_empty() && !self.ticking.replace(true) {
            spawn_local(self.clone().tick_loop()).detach();
        }
    }

    fn partition(&self, index: i32) -> Result<Rc<OffsetsPartition>, i16> {
        let p = self
            .partitions
            .borrow()
            .get(&index)
            .cloned()
            .ok_or(ErrorCode::NotCoordinator.code())?;
        if p.groups.borrow().is_none() {
            return Err(ErrorCode::CoordinatorLoadInProgress.code());
        }
        Ok(p)
    }

    /// The groups of every loaded partition of this shard.
    pub fn list(&self) -> Vec<ListedGroup> {
        let partitions: Vec<_> = self.partitions.borrow().values().cloned().collect();
        let mut listed = Vec::new();
        for p in partitions {
            if let Some(groups) = p.groups.borrow().as_ref() {
                listed.extend(groups.listed().into_iter().map(
                    |(group_id, protocol_type, phase)| ListedGroup {
                        group_id,
                        protocol_type,
                        state: phase.name(),
                    },
                ));
            }
        }
        listed
    }

    /// Serves one group request on the shard that owns the group's offsets partition.
    pub async fn handle(&self, work: GroupWork) -> GroupAnswer {
        let p = match self.partition(work.partition) {
            Ok(p) => p,
            Err(code) => return GroupAnswer::Error(code),
        };
        let gid = work.group_id;
        let now = now_ms();
        match work.call {
            GroupCall::Join(req) => GroupAnswer::Join(self.join(&p, &gid, req, now).await),
            GroupCall::Sync(req) => GroupAnswer::Sync(self.sync(&p, &gid, req, now).await),
            GroupCall::Heartbeat {
                member_id,
                group_instance_id,
                generation_id,
            } => GroupAnswer::Code(p.with(|g| match g.group_mut(&gid) {
                Some(g) => {
                    g.heartbeat(&member_id, group_instance_id.as_deref(), generation_id, now)
                }
                None => ErrorCode::UnknownMemberId.code(),
            })),
            GroupCall::Leave(members) => {
                let codes = p.with(|g| match g.group_mut(&gid) {
                    Some(g) => g.leave(&members, now),
                    None => vec![ErrorCode::UnknownMemberId.code(); members.len()],
                });
                persist_if_settled(self.config.commit_timeout, &p, &gid).await;
                GroupAnswer::Codes(codes)
            }
            GroupCall::Commit {
                member_id,
                group_instance_id,
                generation_id,
                offsets,
            } => {
                let member = (
                    member_id.as_str(),
                    group_instance_id.as_deref(),
                    generation_id,
                );
                GroupAnswer::Codes(self.commit(&p, &gid, member, offsets, now).await)
            }
            GroupCall::FetchOffsets(wanted) => {
                GroupAnswer::Offsets(fetch_offsets(&p, &gid, wanted))
            }
            GroupCall::Describe => GroupAnswer::Describe(describe(&p, &gid)),
            GroupCall::Delete => GroupAnswer::Code(self.delete(&p, &gid).await),
            GroupCall::DeleteOffsets(partitions) => self.delete_offsets(&p, &gid, partitions).await,
        }
    }

    async fn join(
        &self,
        p: &Rc<OffsetsPartition>,
        gid: &str,
        req: JoinRequest,
        now: i64,
    ) -> JoinResponse {
        let unknown_member = !req.member_id.is_empty() && !p.with(|g| g.knows(gid));
        if unknown_member {
            return join_error(req, ErrorCode::UnknownMemberId);
        }
        let config = &self.config.groups;
        let rx = p.with(|g| g.group_or_new(gid).join(req, now, config));
        let answer = rx.await.unwrap_or_else(|_| not_coordinator_join());
        persist_if_settled(self.config.commit_timeout, p, gid).await;
        answer
    }

    /// The leader's assignment is written (acks=all) before any member gets it.
    async fn sync(
        &self,
        p: &Rc<OffsetsPartition>,
        gid: &str,
        req: SyncRequest,
        now: i64,
    ) -> SyncResponse {
        let (rx, persist) = match p.with(|g| g.group_mut(gid).map(|g| g.sync(req, now))) {
            Some(outcome) => outcome,
            None => return sync_error(ErrorCode::UnknownMemberId),
        };
        if let Some(generation) = persist {
            let stored = p.with(|g| g.group_mut(gid).map(|g| g.stored()));
            let code = match stored {
                Some(stored) => write_group(self.config.commit_timeout, p, gid, stored).await,
                None => ErrorCode::NotCoordinator.code(),
            };
            p.with(|g| {
                if let Some(g) = g.group_mut(gid) {
                    g.sync_persisted(generation, code, now_ms());
                }
            });
        }
        rx.await
            .unwrap_or_else(|_| sync_error(ErrorCode::NotCoordinator))
    }

    /// OffsetCommit: the member's right to commit, then the write.
    async fn commit(
        &self,
        p: &Rc<OffsetsPartition>,
        gid: &str,
        (member_id, group_instance_id, generation_id): (&str, Option<&str>, i32),
        offsets: Vec<(TopicPartition, CommittedOffset)>,
        now: i64,
    ) -> Vec<i16> {
        let allowed = p.with(|g| {
            let exists = g.group_mut(gid).is_some_and(|g| g.phase() != Phase::Dead);
            if !exists && generation_id >= 0 {
                // A generation the coordinator never gave out (Kafka does the same).
                return Err(ErrorCode::IllegalGeneration.code());
            }
            g.group_or_new(gid)
                .check_commit(member_id, group_instance_id, generation_id, now)
        });
        match allowed {
            Err(code) => vec![code; offsets.len()],
            Ok(()) => commit(self.config.commit_timeout, p, gid, offsets).await,
        }
    }

    async fn delete(&self, p: &Rc<OffsetsPartition>, gid: &str) -> i16 {
        let deletable = p.with(|g| {
            if !g.knows(gid) {
                return Err(ErrorCode::GroupIdNotFound.code());
            }
            match g.group_mut(gid) {
                Some(group) => group.delete().map(|()| g.deletion(gid)),
                None => Ok(g.deletion(gid)),
            }
        });
        match deletable {
            Err(code) => code,
            Ok(records) => write_and_apply(self.config.commit_timeout, p, records).await,
        }
    }

    /// OffsetDelete: refused for the topics the group's members are subscribed to.
    async fn delete_offsets(
        &self,
        p: &Rc<OffsetsPartition>,
        gid: &str,
        partitions: Vec<TopicPartition>,
    ) -> GroupAnswer {
        let codes = match deletable_offsets(p, gid, &partitions) {
            Err(code) => return GroupAnswer::Error(code),
            Ok(codes) => codes,
        };
        let records: Vec<OffsetsRecord> = partitions
            .iter()
            .zip(&codes)
            .filter(|(_, code)| **code == NONE)
            .map(|((topic, partition), _)| OffsetsRecord::Offset {
                group: gid.to_string(),
                topic: topic.clone(),
                partition: *partition,
                value: None,
            })
            .collect();
        if records.is_empty() {
            return GroupAnswer::Codes(codes);
        }
        match write_and_apply(self.config.commit_timeout, p, records).await {
            NONE => GroupAnswer::Codes(codes),
            code => GroupAnswer::Error(code),
        }
    }

    fn is_current(&self, p: &Rc<OffsetsPartition>) -> bool {
        self.partitions
            .borrow()
            .get(&p.index)
            .is_some_and(|current| Rc::ptr_eq(current, p))
    }

    /// Advances group timers on every loaded partition of the shard, writes what changed,
    /// and expires old offsets every `offsets.retention.check.interval.ms`.
    async fn tick_loop(self: Rc<Self>) {
        let check_every = self.config.retention_check_ms;
        let mut next_expiry = now_ms() + check_every;
        while !self.stopping.get() {
            delay(TICK).await;
            let partitions: Vec<_> = self.partitions.borrow().values().cloned().collect();
            for p in partitions {
                if p.groups.borrow().is_none() || !self.is_current(&p) {
                    continue;
                }
                self.tick(&p, now_ms() >= next_expiry).await;
            }
            if now_ms() >= next_expiry {
                next_expiry = now_ms() + check_every;
            }
        }
    }

    async fn tick(&self, p: &Rc<OffsetsPartition>, expire_offsets: bool) {
        let now = now_ms();
        let config = &self.config.groups;
        let ticked: Vec<String> = p.with(|g| {
            g.groups
                .iter_mut()
                .filter_map(|(id, group)| group.tick(now, config).then(|| id.clone()))
                .collect()
        });
        for gid in &ticked {
            persist_if_settled(self.config.commit_timeout, p, gid).await;
        }
        if !expire_offsets {
            return;
        }
        let expired = p.with(|g| g.expired(now, self.config.offsets_retention_ms));
        if !expired.is_empty() {
            let count = expired.len();
            let code = write_and_apply(self.config.commit_timeout, p, expired).await;
            tracing::info!(
                "{OFFSETS_TOPIC}-{}: expired {count} offsets/groups (code {code})",
                p.index
            );
        }
    }
}

fn fetch_offsets(
    p: &OffsetsPartition,
    gid: &str,
    wanted: Option<Vec<TopicPartition>>,
) -> Vec<(TopicPartition, Option<CommittedOffset>)> {
    p.with(|g| match wanted {
        None => g
            .all_committed(gid)
            .into_iter()
            .map(|(tp, c)| (tp, Some(c)))
            .collect(),
        Some(wanted) => wanted
            .into_iter()
            .map(|tp| {
                let c = g.committed(gid, &tp).cloned();
                (tp, c)
            })
            .collect(),
    })
}

fn describe(p: &OffsetsPartition, gid: &str) -> Option<GroupDescription> {
    p.with(|g| {
        if !g.knows(gid) {
            return None;
        }
        Some(
            g.group_mut(gid)
                .map_or_else(empty_description, |g| g.describe()),
        )
    })
}

/// Per partition: deletable (0) or GROUP_SUBSCRIBED_TO_TOPIC; or why nothing is.
fn deletable_offsets(
    p: &OffsetsPartition,
    gid: &str,
    partitions: &[TopicPartition],
) -> Result<Vec<i16>, i16> {
    p.with(|g| {
        if !g.knows(gid) {
            return Err(ErrorCode::GroupIdNotFound.code());
        }
        let subscribed = match g.group_mut(gid) {
            Some(group) if group.phase() != Phase::Empty => match group.subscribed_topics() {
                Some(topics) => topics,
                // A non-consumer group with members: its offsets are in use.
                None => return Err(ErrorCode::NonEmptyGroup.code()),
            },
            _ => Default::default(),
        };
        Ok(partitions
            .iter()
            .map(|(topic, _)| {
                if subscribed.contains(topic) {
                    ErrorCode::GroupSubscribedToTopic.code()
                } else {
                    NONE
                }
            })
            .collect())
    })
}

fn join_error(req: JoinRequest, code: ErrorCode) -> JoinResponse {
    JoinResponse {
        error: code.code(),
        generation_id: -1,
        protocol_type: None,
        protocol_name: None,
        leader: String::new(),
        member_id: req.member_id,
        members: Vec::new(),
    }
}

fn not_coordinator_join() -> JoinResponse {
    JoinResponse {
        error: ErrorCode::NotCoordinator.code(),
        generation_id: -1,
        protocol_type: None,
        protocol_name: None,
        leader: String::new(),
        member_id: String::new(),
        members: Vec::new(),
    }
}

fn sync_error(code: ErrorCode) -> SyncResponse {
    SyncResponse {
        error: code.code(),
        protocol_type: None,
        protocol_name: None,
        assignment: Bytes::new(),
    }
}

fn empty_description() -> GroupDescription {
    GroupDescription {
        phase: Phase::Empty,
        protocol_type: String::new(),
        protocol_name: String::new(),
        members: Vec::new(),
    }
}
