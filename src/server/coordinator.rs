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

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::shard::Shard;
use super::work::{self, ProducePart, ProduceWork};
use crate::group::offsets::{Loader, PartitionGroups, TopicPartition};
use crate::group::records::{CommittedOffset, OffsetsRecord};
use crate::group::state::{
    GroupConfig, GroupDescription, JoinRequest, JoinResponse, Phase, SyncRequest, SyncResponse,
};
use crate::group::{OFFSETS_TOPIC, StoredGroup};
use crate::protocol::ErrorCode;
use crate::protocol::record_batch::validate_batches;
use crate::replication::replica::Replica;
use crate::runtime::{delay, spawn_local};
use crate::storage::now_ms;

const NONE: i16 = 0;
/// How often group timers (sessions, rebalance deadlines) are checked.
const TICK: Duration = Duration::from_millis(100);
/// How much of the log one read brings back while loading.
const LOAD_CHUNK_BYTES: usize = 1 << 20;
/// Kafka's `offset.metadata.max.bytes`.
const MAX_OFFSET_METADATA_BYTES: usize = 4096;

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

/// The groups of one offsets partition, for one leadership of it.
struct OffsetsPartition {
    index: i32,
    leader_epoch: i32,
    replica: Rc<Replica>,
    /// None while the partition's records are being replayed.
    groups: RefCell<Option<PartitionGroups>>,
    /// The stored form of each group as last written, so only changes are written.
    written: RefCell<HashMap<String, StoredGroup>>,
}

#[derive(Default)]
pub struct Coordinator {
    partitions: RefCell<HashMap<i32, Rc<OffsetsPartition>>>,
    ticking: Cell<bool>,
}

impl Coordinator {
    /// Follows the replicas' roles after a metadata image: starts loading the offsets
    /// partitions this shard now leads, drops the ones it no longer leads.
    pub fn on_roles(&self, shard: &Rc<Shard>) {
        let mut leading = HashMap::new();
        for replica in shard.all_replicas() {
            if replica.topic == OFFSETS_TOPIC
                && let Some(epoch) = replica.leader_epoch()
            {
                leading.insert(replica.partition, (replica, epoch));
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
            spawn_local(tick_loop(shard.clone())).detach();
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
}

/// Serves one group request on the shard that owns the group's offsets partition.
pub async fn handle(shard: &Rc<Shard>, work: GroupWork) -> GroupAnswer {
    let p = match shard.coordinator.partition(work.partition) {
        Ok(p) => p,
        Err(code) => return GroupAnswer::Error(code),
    };
    let config = group_config(shard);
    let now = now_ms();
    let gid = work.group_id;
    match work.call {
        GroupCall::Join(req) => {
            let unknown_member = !req.member_id.is_empty() && !p.with(|g| g.knows(&gid));
            if unknown_member {
                return GroupAnswer::Join(join_error(req, ErrorCode::UnknownMemberId));
            }
            let rx = p.with(|g| g.group_or_new(&gid).join(req, now, &config));
            let answer = rx.await.unwrap_or_else(|_| not_coordinator_join());
            persist_if_settled(shard, &p, &gid).await;
            GroupAnswer::Join(answer)
        }
        GroupCall::Sync(req) => {
            let (rx, persist) = match p.with(|g| g.group_mut(&gid).map(|g| g.sync(req, now))) {
                Some(outcome) => outcome,
                None => return GroupAnswer::Sync(sync_error(ErrorCode::UnknownMemberId)),
            };
            if let Some(generation) = persist {
                let stored = p.with(|g| g.group_mut(&gid).map(|g| g.stored()));
                let code = match stored {
                    Some(stored) => write_group(shard, &p, &gid, stored).await,
                    None => ErrorCode::NotCoordinator.code(),
                };
                p.with(|g| {
                    if let Some(g) = g.group_mut(&gid) {
                        g.sync_persisted(generation, code, now_ms());
                    }
                });
            }
            GroupAnswer::Sync(
                rx.await
                    .unwrap_or_else(|_| sync_error(ErrorCode::NotCoordinator)),
            )
        }
        GroupCall::Heartbeat {
            member_id,
            group_instance_id,
            generation_id,
        } => GroupAnswer::Code(p.with(|g| match g.group_mut(&gid) {
            Some(g) => g.heartbeat(&member_id, group_instance_id.as_deref(), generation_id, now),
            None => ErrorCode::UnknownMemberId.code(),
        })),
        GroupCall::Leave(members) => {
            let codes = p.with(|g| match g.group_mut(&gid) {
                Some(g) => g.leave(&members, now),
                None => vec![ErrorCode::UnknownMemberId.code(); members.len()],
            });
            persist_if_settled(shard, &p, &gid).await;
            GroupAnswer::Codes(codes)
        }
        GroupCall::Commit {
            member_id,
            group_instance_id,
            generation_id,
            offsets,
        } => {
            let allowed = p.with(|g| {
                let exists = g.group_mut(&gid).is_some_and(|g| g.phase() != Phase::Dead);
                if !exists && generation_id >= 0 {
                    // A generation the coordinator never gave out (Kafka does the same).
                    return Err(ErrorCode::IllegalGeneration.code());
                }
                g.group_or_new(&gid).check_commit(
                    &member_id,
                    group_instance_id.as_deref(),
                    generation_id,
                    now,
                )
            });
            match allowed {
                Err(code) => GroupAnswer::Codes(vec![code; offsets.len()]),
                Ok(()) => GroupAnswer::Codes(commit(shard, &p, &gid, offsets).await),
            }
        }
        GroupCall::FetchOffsets(wanted) => GroupAnswer::Offsets(p.with(|g| {
            match wanted {
                None => g
                    .all_committed(&gid)
                    .into_iter()
                    .map(|(tp, c)| (tp, Some(c)))
                    .collect(),
                Some(wanted) => wanted
                    .into_iter()
                    .map(|tp| {
                        let c = g.committed(&gid, &tp).cloned();
                        (tp, c)
                    })
                    .collect(),
            }
        })),
        GroupCall::Describe => GroupAnswer::Describe(p.with(|g| {
            if !g.knows(&gid) {
                return None;
            }
            Some(
                g.group_mut(&gid)
                    .map_or_else(empty_description, |g| g.describe()),
            )
        })),
        GroupCall::Delete => {
            let deletable = p.with(|g| {
                if !g.knows(&gid) {
                    return Err(ErrorCode::GroupIdNotFound.code());
                }
                match g.group_mut(&gid) {
                    Some(group) => group.delete().map(|()| g.deletion(&gid)),
                    None => Ok(g.deletion(&gid)),
                }
            });
            match deletable {
                Err(code) => GroupAnswer::Code(code),
                Ok(records) => GroupAnswer::Code(write_and_apply(shard, &p, records).await),
            }
        }
        GroupCall::DeleteOffsets(partitions) => {
            let checked = p.with(|g| {
                if !g.knows(&gid) {
                    return Err(ErrorCode::GroupIdNotFound.code());
                }
                let subscribed = match g.group_mut(&gid) {
                    Some(group) if group.phase() != Phase::Empty => match group.subscribed_topics()
                    {
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
                    .collect::<Vec<i16>>())
            });
            let codes = match checked {
                Err(code) => return GroupAnswer::Error(code),
                Ok(codes) => codes,
            };
            let records: Vec<OffsetsRecord> = partitions
                .iter()
                .zip(&codes)
                .filter(|(_, code)| **code == NONE)
                .map(|((topic, partition), _)| OffsetsRecord::Offset {
                    group: gid.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    value: None,
                })
                .collect();
            if records.is_empty() {
                return GroupAnswer::Codes(codes);
            }
            match write_and_apply(shard, &p, records).await {
                NONE => GroupAnswer::Codes(codes),
                code => GroupAnswer::Error(code),
            }
        }
    }
}

impl OffsetsPartition {
    /// Runs `f` on the loaded groups. Never held across an await.
    fn with<R>(&self, f: impl FnOnce(&mut PartitionGroups) -> R) -> R {
        let mut groups = self.groups.borrow_mut();
        let groups = groups.get_or_insert_with(PartitionGroups::default);
        f(groups)
    }

    fn is_current(&self, shard: &Shard) -> bool {
        shard
            .coordinator
            .partitions
            .borrow()
            .get(&self.index)
            .is_some_and(|p| std::ptr::eq(Rc::as_ptr(p), self))
    }
}

fn group_config(shard: &Shard) -> GroupConfig {
    let c = &shard.config;
    GroupConfig {
        min_session_timeout_ms: c.int("group.min.session.timeout.ms") as i32,
        max_session_timeout_ms: c.int("group.max.session.timeout.ms") as i32,
        initial_rebalance_delay_ms: c.int("group.initial.rebalance.delay.ms"),
        max_size: c.int("group.max.size") as usize,
    }
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

/// Commits offsets: one batch, acks=all, then the offsets become visible to OffsetFetch.
async fn commit(
    shard: &Rc<Shard>,
    p: &Rc<OffsetsPartition>,
    gid: &str,
    offsets: Vec<(TopicPartition, CommittedOffset)>,
) -> Vec<i16> {
    let mut codes = vec![NONE; offsets.len()];
    let mut records = Vec::new();
    for (code, ((topic, partition), value)) in codes.iter_mut().zip(offsets) {
        if value.metadata.len() > MAX_OFFSET_METADATA_BYTES {
            *code = ErrorCode::OffsetMetadataTooLarge.code();
            continue;
        }
        records.push(OffsetsRecord::Offset {
            group: gid.to_string(),
            topic,
            partition,
            value: Some(value),
        });
    }
    if records.is_empty() {
        return codes;
    }
    let code = write_and_apply(shard, p, records).await;
    for c in codes.iter_mut().filter(|c| **c == NONE) {
        *c = code;
    }
    codes
}

/// Writes records and, once committed, applies them to the partition's groups.
async fn write_and_apply(
    shard: &Rc<Shard>,
    p: &Rc<OffsetsPartition>,
    records: Vec<OffsetsRecord>,
) -> i16 {
    match write(shard, p, &records).await {
        Ok(base_offset) => {
            p.with(|g| {
                for (record, offset) in records.into_iter().zip(base_offset..) {
                    g.apply_written(record, offset);
                }
            });
            NONE
        }
        Err(code) => code,
    }
}

/// Writes a group's stored form; the error code members are answered with.
async fn write_group(
    shard: &Rc<Shard>,
    p: &Rc<OffsetsPartition>,
    gid: &str,
    stored: StoredGroup,
) -> i16 {
    // Marked before the write completes, so concurrent callers do not write it again.
    p.written
        .borrow_mut()
        .insert(gid.to_string(), stored.clone());
    let record = OffsetsRecord::Group {
        group: gid.to_string(),
        value: Some(stored),
    };
    match write(shard, p, std::slice::from_ref(&record)).await {
        Ok(_) => NONE,
        Err(code) => {
            p.written.borrow_mut().remove(gid);
            code
        }
    }
}

/// Writes a Stable or Empty group whose stored form changed (members left, sessions
/// expired, a rebalance ended with nobody): a new coordinator then starts from it.
async fn persist_if_settled(shard: &Rc<Shard>, p: &Rc<OffsetsPartition>, gid: &str) {
    let changed = p.with(|g| {
        let group = g.group_mut(gid)?;
        if !matches!(group.phase(), Phase::Stable | Phase::Empty) {
            return None;
        }
        let stored = group.stored();
        (p.written.borrow().get(gid) != Some(&stored)).then_some(stored)
    });
    if let Some(stored) = changed {
        let code = write_group(shard, p, gid, stored).await;
        if code != NONE {
            tracing::warn!(group = gid, code, "storing group metadata failed");
        }
    }
}

/// Appends records to the offsets partition as one batch and waits until the ISR has it
/// (acks=all). Returns the first record's offset, or the error Kafka's coordinator answers
/// for the append's failure.
async fn write(
    shard: &Rc<Shard>,
    p: &Rc<OffsetsPartition>,
    records: &[OffsetsRecord],
) -> Result<i64, i16> {
    let batch = encode_batch(records).map_err(|e| {
        tracing::error!("cannot encode offsets records: {e}");
        ErrorCode::UnknownServerError.code()
    })?;
    let infos = validate_batches(&batch).map_err(|e| {
        tracing::error!("encoded offsets batch is invalid: {e}");
        ErrorCode::UnknownServerError.code()
    })?;
    let work = ProduceWork {
        acks: -1,
        timeout: Duration::from_millis(shard.config.int("offsets.commit.timeout.ms") as u64),
        parts: vec![ProducePart {
            slot: 0,
            topic: OFFSETS_TOPIC.to_string(),
            partition: p.index,
            records: batch,
            infos,
        }],
    };
    let outcome = work::append(shard, work).finish().await;
    let Some(outcome) = outcome.into_iter().next() else {
        return Err(ErrorCode::UnknownServerError.code());
    };
    match ErrorCode::try_from_code(outcome.error) {
        None => Ok(outcome.base_offset),
        Some(e) => Err(coordinator_error(e).code()),
    }
}

/// Kafka's mapping of a failed offsets append to what the group's clients are told.
fn coordinator_error(e: ErrorCode) -> ErrorCode {
    match e {
        ErrorCode::UnknownTopicOrPartition
        | ErrorCode::NotEnoughReplicas
        | ErrorCode::NotEnoughReplicasAfterAppend
        | ErrorCode::RequestTimedOut => ErrorCode::CoordinatorNotAvailable,
        ErrorCode::NotLeaderOrFollower | ErrorCode::KafkaStorageError => ErrorCode::NotCoordinator,
        ErrorCode::MessageTooLarge | ErrorCode::RecordListTooLarge => {
            ErrorCode::InvalidCommitOffsetSize
        }
        _ => ErrorCode::UnknownServerError,
    }
}

fn encode_batch(records: &[OffsetsRecord]) -> anyhow::Result<BytesMut> {
    let timestamp = now_ms();
    let records: Vec<Record> = (0..)
        .zip(records)
        .map(|(delta, r)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: delta,
            sequence: -1,
            timestamp,
            key: Some(r.key()),
            value: r.value(),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )?;
    Ok(buf)
}

/// Replays the partition's records from its log start to its log end, then serves.
async fn load(p: Rc<OffsetsPartition>) {
    let started = std::time::Instant::now();
    let log = p.replica.log.clone();
    let end = log.log_end_offset();
    let mut next = log.log_start_offset();
    let mut loader = Loader::default();
    let mut records = 0usize;
    while next < end {
        let read = match log.read(next, LOAD_CHUNK_BYTES, end).await {
            Ok(read) => read,
            Err(e) => {
                // The partition stays loading (clients retry); a new leadership retries.
                tracing::error!("{OFFSETS_TOPIC}-{}: cannot load: {e}", p.index);
                return;
            }
        };
        let mut bytes = BytesMut::with_capacity(read.total_len);
        for chunk in &read.chunks {
            bytes.extend_from_slice(chunk);
        }
        let before = next;
        for (offset, key, value) in batch_records(&bytes.freeze(), &mut next) {
            records += 1;
            match OffsetsRecord::decode(&key, value.as_deref()) {
                Ok(record) => loader.apply(record, offset),
                Err(e) => tracing::warn!(
                    "{OFFSETS_TOPIC}-{} offset {offset}: skipping a bad record: {e}",
                    p.index
                ),
            }
        }
        if next <= before {
            break;
        }
    }
    let groups = loader.finish(now_ms());
    p.written.replace(
        groups
            .groups
            .iter()
            .map(|(id, g)| (id.clone(), g.stored()))
            .collect(),
    );
    p.groups.replace(Some(groups));
    tracing::info!(
        "{OFFSETS_TOPIC}-{}: loaded {records} records up to offset {end} in {:?} (epoch {})",
        p.index,
        started.elapsed(),
        p.leader_epoch
    );
}

/// The (offset, key, value) of every record in a run of batches; moves `next` past the
/// last batch.
fn batch_records(bytes: &Bytes, next: &mut i64) -> Vec<(i64, Bytes, Option<Bytes>)> {
    let Ok(infos) = validate_batches(bytes) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for info in infos {
        let mut batch = bytes.slice(info.offset_in_buf..info.offset_in_buf + info.len);
        let Some(base) = batch.get(..8).and_then(|b| b.try_into().ok()) else {
            break;
        };
        *next = i64::from_be_bytes(base) + i64::from(info.last_offset_delta) + 1;
        if info.is_control {
            continue;
        }
        match RecordBatchDecoder::decode(&mut batch) {
            Ok(set) => out.extend(
                set.records
                    .into_iter()
                    .filter_map(|r| Some((r.offset, r.key?, r.value))),
            ),
            Err(e) => tracing::warn!("undecodable batch in {OFFSETS_TOPIC}: {e}"),
        }
    }
    out
}

/// Advances group timers on every loaded partition of the shard, writes what changed, and
/// expires old offsets every `offsets.retention.check.interval.ms`.
async fn tick_loop(shard: Rc<Shard>) {
    let retention_ms = shard.config.int("offsets.retention.minutes") * 60_000;
    let check_every = shard.config.int("offsets.retention.check.interval.ms");
    let mut next_expiry = now_ms() + check_every;
    while !shard.stopping.get() {
        delay(TICK).await;
        let config = group_config(&shard);
        let partitions: Vec<_> = shard
            .coordinator
            .partitions
            .borrow()
            .values()
            .cloned()
            .collect();
        for p in partitions {
            if p.groups.borrow().is_none() || !p.is_current(&shard) {
                continue;
            }
            let now = now_ms();
            let ticked: Vec<String> = p.with(|g| {
                g.groups
                    .iter_mut()
                    .filter_map(|(id, group)| group.tick(now, &config).then(|| id.clone()))
                    .collect()
            });
            for gid in &ticked {
                persist_if_settled(&shard, &p, gid).await;
            }
            if now >= next_expiry {
                let expired = p.with(|g| g.expired(now, retention_ms));
                if !expired.is_empty() {
                    let count = expired.len();
                    let code = write_and_apply(&shard, &p, expired).await;
                    tracing::info!(
                        "{OFFSETS_TOPIC}-{}: expired {count} offsets/groups (code {code})",
                        p.index
                    );
                }
            }
        }
        if now_ms() >= next_expiry {
            next_expiry = now_ms() + check_every;
        }
    }
}
