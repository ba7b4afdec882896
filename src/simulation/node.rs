//! One simulated broker process, which is also a controller voter (every broker is one in
//! production). The decisions are the production code's: the voter is a
//! `quorum::core::Voter` (a `raft::RawNode` over `QuorumStore`) with the active
//! controller's `Liveness`; the partition's replica is a `replica::Role` (`LeaderState`
//! inside); a follower decides with `follower::decide`, a leader with
//! `divergence::diverging_epoch`. What is modelled here is the glue around them, each piece
//! named after the production shell it stands for: `quorum::drive` and `handle_ready`, the
//! shard's `apply_roles`, `replicator::follow` and `send_isr_change`, the Fetch handler's
//! leader check and long poll, `work::read_part`, the produce path's acks=all wait, the
//! controller's registration and heartbeat loops, and the flusher.

use std::collections::BTreeMap;

use bytes::Bytes;
use raft::StateRole;

use uuid::Uuid;

use super::Ctx;
use super::log::ModelLog;
use super::net::{FetchRequest, Payload};
use crate::cluster::commands::{CommandOutcome, IsrChange, MetadataCommand};
use crate::cluster::quorum::core::{Liveness, Proposal, TICK, Voter, raft_config, registered};
use crate::cluster::quorum::transport::Heartbeat;
use crate::cluster::quorum::wal::MemWal;
use crate::cluster::{BrokerInfo, ClusterMetadata, NO_LEADER, PartitionState};
use crate::protocol::ErrorCode;
use crate::replication::fetch_session::{FetchPartition, FetchedPartition};
use crate::replication::follower::{self, Action, Applied};
use crate::replication::partition::{
    AckId, Effects, FollowerFetch, FollowerRead, IsrAnswer, IsrNext, IsrProposal, Partition,
};

pub const TOPIC: &str = "sim";
pub const CLUSTER_ID: &str = "sim";
pub const MIN_ISR: usize = 2;
const TICK_MS: i64 = TICK.as_millis() as i64;
/// `replicator::BACKOFF`.
const BACKOFF_MS: i64 = 100;
/// The controller's `PROPOSAL_TIMEOUT`; `check_liveness` waits `TICK * 30`.
const PROPOSAL_TIMEOUT_MS: i64 = 5_000;
const LIVENESS_TIMEOUT_MS: i64 = 30 * TICK_MS;
/// `Controller::register` retries after this.
const REGISTER_RETRY_MS: i64 = 200;

/// The metadata image the broker acts on (`quorum::MetadataImage`).
pub struct Image {
    pub metadata: ClusterMetadata,
    pub offset: u64,
    pub controller_id: i32,
}

/// What a proposal is for, to route its outcome.
#[derive(Debug, Clone, Copy)]
enum Purpose {
    Register,
    Liveness(i32),
    /// The ISR task with this id.
    Isr(u64),
    Admin,
}

struct Waiting {
    purpose: Purpose,
    deadline: i64,
}

/// One follower fetch loop (`replicator::follow`) for one leader.
#[derive(Debug)]
enum Fetcher {
    /// Fetches at this time.
    Idle(i64),
    InFlight {
        id: u64,
        asked: FetchPartition,
        deadline: i64,
    },
    /// Waits for the appended records to be durable before fetching again.
    Durable { target: i64, backoff: bool },
}

/// A follower's fetch long-polling at this leader (the Fetch handler's `wait_for_data`).
struct Parked {
    from: i32,
    request: FetchRequest,
    /// Wakes when the durable end passes this.
    seen: i64,
    deadline: i64,
}

/// An ISR change being sent to the controller (`replicator::send_isr_change`).
struct IsrTask {
    id: u64,
    proposal: IsrProposal,
    /// Next attempt, or None while a proposal is waiting.
    retry_at: Option<i64>,
}

/// An acks=all produce waiting for its answer (`Replica::complete`): first for its record to
/// be durable, then for the partition's decision.
#[derive(Debug, Clone)]
pub struct PendingAck {
    pub offset: i64,
    pub epoch: i32,
    pub id: u64,
    deadline: i64,
}

/// What is lost when the process dies.
pub struct Process {
    pub voter: Voter,
    liveness: Liveness,
    /// The voter was the Raft leader after the last `Ready`.
    was_leader: bool,
    pub image: Image,
    last_tick: i64,
    next_tick: i64,
    next_register: Option<i64>,
    next_heartbeat: Option<i64>,
    proposals: BTreeMap<u64, Waiting>,
    /// The replica's decisions: the production `Partition`.
    pub partition: Option<Partition>,
    fetchers: BTreeMap<i32, Fetcher>,
    parked: Vec<Parked>,
    isr_tasks: Vec<IsrTask>,
    next_shrink: i64,
    flush_at: Option<i64>,
    /// Appended, not yet durable.
    pub acks: Vec<PendingAck>,
    /// Durable, waiting for the partition (`Partition::await_commit`).
    committing: BTreeMap<AckId, PendingAck>,
}

pub struct Node {
    pub id: i32,
    /// Bumped at every start.
    pub incarnation: u64,
    /// The voter's disk.
    pub wal: MemWal,
    /// The partition's log (the broker's disk).
    pub log: ModelLog,
    /// This voter's election timeout, in ticks (fixed per node: `raft` draws it from the
    /// thread's RNG, which would make runs irreproducible).
    election_ticks: usize,
    pub proc: Option<Process>,
    /// The process is stopped (SIGSTOP, a stalled VM) until then: no timer fires, messages
    /// to it wait.
    pub paused_until: i64,
}

impl Node {
    pub fn new(id: i32, election_ticks: usize) -> Self {
        Self {
            id,
            incarnation: 0,
            wal: MemWal::default(),
            log: ModelLog::default(),
            election_ticks,
            proc: None,
            paused_until: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.proc.is_some()
    }

    /// Starts the process: the voter recovers from its WAL (`Quorum::start`), the broker
    /// registers (`Controller::register`).
    pub fn start(&mut self, ctx: &mut Ctx, voters: &[u64]) {
        let recovered = self
            .wal
            .recover()
            .unwrap_or_else(|e| panic!("node {}: the WAL does not recover: {e}", self.id));
        let mut config = raft_config(self.id as u64);
        config.min_election_tick = self.election_ticks;
        config.max_election_tick = self.election_ticks + 1;
        let voter = Voter::recover(config, voters, CLUSTER_ID, recovered)
            .unwrap_or_else(|e| panic!("node {}: the voter does not start: {e}", self.id));
        self.incarnation += 1;
        self.paused_until = 0;
        ctx.seen.started(self.id, self.incarnation, voter.applied);
        let now = ctx.now;
        ctx.note(|| format!("start {} (applied {})", self.id, voter.applied));
        self.proc = Some(Process {
            image: Image {
                metadata: voter.metadata.clone(),
                offset: voter.applied,
                controller_id: -1,
            },
            voter,
            liveness: Liveness::new(std::time::Duration::from_millis(
                ctx.settings.session_timeout_ms as u64,
            )),
            was_leader: false,
            last_tick: now,
            next_tick: now + TICK_MS + ctx.rng.between(0, TICK_MS - 1),
            next_register: Some(now),
            next_heartbeat: None,
            proposals: BTreeMap::new(),
            partition: None,
            fetchers: BTreeMap::new(),
            parked: Vec::new(),
            isr_tasks: Vec::new(),
            next_shrink: now + ctx.settings.lag_ms / 2,
            flush_at: None,
            acks: Vec::new(),
            committing: BTreeMap::new(),
        });
    }

    /// The process dies: memory is lost, the disks keep what was synced.
    pub fn crash(&mut self, ctx: &mut Ctx) {
        if self.proc.take().is_none() {
            return;
        }
        self.log.crash();
        ctx.net.drop_to(self.id);
        ctx.note(|| format!("crash {}: log keeps {}", self.id, self.log.end()));
    }

    /// The earliest time one of this process's timers fires.
    pub fn next_event(&self) -> Option<i64> {
        let p = self.proc.as_ref()?;
        let fetchers = p.fetchers.values().map(|f| match f {
            Fetcher::Idle(at) => *at,
            Fetcher::InFlight { deadline, .. } => *deadline,
            Fetcher::Durable { .. } => i64::MAX,
        });
        [
            Some(p.next_tick),
            p.next_register,
            p.next_heartbeat,
            Some(p.next_shrink),
            p.flush_at,
            p.proposals.values().map(|w| w.deadline).min(),
            p.parked.iter().map(|w| w.deadline).min(),
            p.isr_tasks.iter().filter_map(|t| t.retry_at).min(),
            p.committing.values().map(|a| a.deadline).min(),
            fetchers.min(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.max(self.paused_until))
    }

    pub fn is_paused(&self, now: i64) -> bool {
        now < self.paused_until
    }

    /// Runs every timer due by `ctx.now`.
    pub fn fire(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        if p.flush_at.is_some_and(|t| t <= now) {
            self.flush(ctx);
        }
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        if p.next_tick <= now {
            p.next_tick = now + TICK_MS + ctx.rng.between(0, 2);
            self.tick(ctx);
        }
        self.fire_proposal_timeouts(ctx);
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        if p.next_register.is_some_and(|t| t <= now) {
            p.next_register = None;
            self.register(ctx);
        }
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        if p.next_heartbeat.is_some_and(|t| t <= now) {
            p.next_heartbeat = Some(now + ctx.settings.heartbeat_ms);
            self.heartbeat(ctx);
        }
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        if p.next_shrink <= now {
            p.next_shrink = now + ctx.settings.lag_ms / 2;
            let effects = p
                .partition
                .as_mut()
                .map(|r| r.shrink_check(now, ctx.settings.lag_ms));
            self.carry_out(ctx, effects.unwrap_or_default());
        }
        self.fire_isr_tasks(ctx);
        self.fire_fetchers(ctx);
        self.fire_parked(ctx, true);
        let effects = self
            .proc
            .as_mut()
            .and_then(|p| Some(p.partition.as_mut()?.expire(now)));
        self.carry_out(ctx, effects.unwrap_or_default());
    }

    // ---- The controller voter (`quorum::drive`) ------------------------------------------

    fn tick(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        let p = self.proc.as_mut().unwrap();
        p.voter.node.tick();
        if now - p.last_tick > 5 * TICK_MS {
            p.liveness
                .on_leadership(&p.image.metadata, true, ctx.instant());
        }
        p.last_tick = now;
        let due = if p.voter.node.raft.state == StateRole::Leader {
            p.liveness
                .due(&p.image.metadata, p.image.offset, ctx.instant())
        } else {
            Vec::new()
        };
        self.handle_ready(ctx);
        for (id, command) in due {
            ctx.note(|| format!("{}: liveness proposes {command:?}", self.id));
            self.propose(ctx, command, Purpose::Liveness(id), LIVENESS_TIMEOUT_MS);
        }
    }

    /// A message from another voter.
    pub fn on_raft(&mut self, ctx: &mut Ctx, message: raft::eraftpb::Message) {
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        // Errors are stale or unexpected messages, ignored as the driver does.
        let _ = p.voter.node.step(message);
        self.handle_ready(ctx);
    }

    pub fn on_heartbeat(&mut self, ctx: &mut Ctx, heartbeat: Heartbeat) {
        if let Some(p) = self.proc.as_mut() {
            p.liveness.heard(&heartbeat, ctx.instant());
            // Every input of the driver ends with the node's `Ready`, if it has one.
            self.handle_ready(ctx);
        }
    }

    /// `Quorum::propose`: the outcome comes when this voter applies the entry, or `None`
    /// at once (dropped: no leader known) or after `timeout_ms`.
    fn propose(
        &mut self,
        ctx: &mut Ctx,
        command: MetadataCommand,
        purpose: Purpose,
        timeout_ms: i64,
    ) {
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        let request_id = ctx.id();
        let proposal = Proposal {
            request_id,
            command,
        };
        match p.voter.propose(&proposal) {
            Ok(()) => {
                p.proposals.insert(
                    request_id,
                    Waiting {
                        purpose,
                        deadline: ctx.now + timeout_ms,
                    },
                );
                self.handle_ready(ctx);
            }
            Err(_) => {
                self.handle_ready(ctx);
                self.outcome(ctx, purpose, None);
            }
        }
    }

    /// Proposes an admin command (a CreateTopics the test sends to this broker).
    pub fn propose_admin(&mut self, ctx: &mut Ctx, command: MetadataCommand) {
        self.propose(ctx, command, Purpose::Admin, PROPOSAL_TIMEOUT_MS);
    }

    fn fire_proposal_timeouts(&mut self, ctx: &mut Ctx) {
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        let now = ctx.now;
        let expired: Vec<u64> = p
            .proposals
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(w) = self.proc.as_mut().and_then(|p| p.proposals.remove(&id)) {
                self.outcome(ctx, w.purpose, None);
            }
        }
    }

    /// `quorum::handle_ready` and the rest of a `drive` iteration: send, persist (the WAL
    /// on this node's disk, sometimes torn by a crash), apply, publish, answer proposals.
    fn handle_ready(&mut self, ctx: &mut Ctx) {
        let id = self.id;
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        if !p.voter.node.has_ready() {
            return;
        }
        let before = p.voter.applied;
        let mut io = p
            .voter
            .begin_ready()
            .unwrap_or_else(|e| panic!("{id}: ready: {e}"));
        // Entries applied from a snapshot on are reported from its index.
        let from = io
            .snapshot
            .as_ref()
            .map_or(before, |(s, _)| s.get_metadata().index);
        send_raft(ctx, id, std::mem::take(&mut io.messages));
        if let Some((snapshot, hard_state)) = &io.snapshot {
            ctx.seen.counts.snapshots_installed += 1;
            self.wal
                .compact(snapshot, hard_state, &[])
                .unwrap_or_else(|e| panic!("{id}: WAL compaction: {e}"));
        }
        if !io.entries.is_empty() || io.hard_state.is_some() {
            if ctx.rng.chance(ctx.settings.torn_write_per_mille) {
                let keep = ctx.rng.below(64) as usize;
                self.wal.tear(&io.entries, io.hard_state.as_ref(), keep);
                ctx.note(|| format!("{id}: crash in the middle of a WAL write"));
                ctx.seen.counts.torn_writes += 1;
                self.crash(ctx);
                return;
            }
            self.wal
                .persist(&io.entries, io.hard_state.as_ref())
                .unwrap_or_else(|e| panic!("{id}: WAL write: {e}"));
        }
        let done = p
            .voter
            .finish_ready(io)
            .unwrap_or_else(|e| panic!("{id}: ready: {e}"));
        send_raft(ctx, id, done.messages);
        if done.applied_index.is_some() {
            ctx.seen
                .applied(id, self.incarnation, from, p.voter.applied, &done.applied);
        }
        self.after_ready(ctx, done.applied_index.is_some());
        for a in done.applied {
            let waiting = self
                .proc
                .as_mut()
                .and_then(|p| p.proposals.remove(&a.request_id));
            if let Some(w) = waiting {
                self.outcome(ctx, w.purpose, Some(a.outcome));
            }
        }
    }

    /// The end of a `drive` iteration: leadership bookkeeping, a snapshot when due, and the
    /// new image, published from this process's registration on.
    fn after_ready(&mut self, ctx: &mut Ctx, applied: bool) {
        let id = self.id;
        let p = self.proc.as_mut().unwrap();
        let leader = p.voter.node.raft.leader_id;
        let is_leader = p.voter.node.raft.state == StateRole::Leader;
        if is_leader && !p.was_leader {
            ctx.note(|| format!("{id} became the active controller"));
            p.liveness
                .on_leadership(&p.image.metadata, false, ctx.instant());
        }
        p.was_leader = is_leader;
        if applied
            && let Some(c) = p
                .voter
                .compaction_due()
                .unwrap_or_else(|e| panic!("{id}: snapshot: {e}"))
        {
            self.wal
                .compact(&c.snapshot, &c.hard_state, &c.entries)
                .unwrap_or_else(|e| panic!("{id}: WAL compaction: {e}"));
        }
        let controller_id = if leader == raft::INVALID_ID {
            -1
        } else {
            leader as i32
        };
        if applied || p.image.controller_id != controller_id {
            p.image = Image {
                metadata: p.voter.metadata.clone(),
                offset: p.voter.applied,
                controller_id,
            };
            if registered(&p.image.metadata, id, self.incarnation) {
                ctx.seen.published(id, &p.image);
                self.apply_roles(ctx);
            }
        }
    }

    fn outcome(&mut self, ctx: &mut Ctx, purpose: Purpose, outcome: Option<CommandOutcome>) {
        let now = ctx.now;
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        match purpose {
            Purpose::Register => match outcome {
                Some(CommandOutcome::Done(Ok(()))) => {
                    ctx.note(|| format!("{} registered", self.id));
                    p.next_heartbeat = Some(now);
                }
                _ => p.next_register = Some(now + REGISTER_RETRY_MS),
            },
            Purpose::Liveness(broker) => p.liveness.settled(broker),
            Purpose::Isr(task) => self.isr_outcome(ctx, task, outcome),
            Purpose::Admin => {}
        }
    }

    // ---- Broker control plane (`Controller::register`, `heartbeat_loop`) -------------------

    fn register(&mut self, ctx: &mut Ctx) {
        let info = BrokerInfo {
            id: self.id,
            host: "127.0.0.1".into(),
            port: 9092,
            shards: 1,
            incarnation: self.incarnation,
            fenced: false,
        };
        self.propose(
            ctx,
            MetadataCommand::RegisterBroker(info),
            Purpose::Register,
            PROPOSAL_TIMEOUT_MS,
        );
    }

    /// `Quorum::heartbeat`: recorded here and sent to every other voter.
    fn heartbeat(&mut self, ctx: &mut Ctx) {
        let p = self.proc.as_mut().unwrap();
        let heartbeat = Heartbeat {
            broker_id: self.id,
            incarnation: self.incarnation,
            metadata_offset: p.image.offset,
        };
        p.liveness.heard(&heartbeat, ctx.instant());
        for peer in ctx.settings.voters.clone() {
            if peer != self.id as u64 {
                ctx.send(self.id, peer as i32, Payload::Heartbeat(heartbeat));
            }
        }
    }

    // ---- The replica (`Shard::apply_roles`, `Replica`) --------------------------------------

    fn partition_state(image: &Image) -> Option<&PartitionState> {
        image.metadata.topics.get(TOPIC)?.partitions.first()
    }

    /// Every published image: the replica follows the partition's state (`Replica::apply`)
    /// and a fetch loop starts for a leader this broker now follows.
    fn apply_roles(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        let p = self.proc.as_mut().unwrap();
        let Some(state) = Self::partition_state(&p.image) else {
            return;
        };
        if p.partition.is_none() && !state.replicas.contains(&self.id) {
            return;
        }
        let partition = p.partition.get_or_insert(Partition::new(self.id));
        let before = partition.leader_epoch();
        let (durable, hw) = (self.log.durable_end(), self.log.high_watermark());
        let effects = partition.on_metadata(state, durable, hw, now, MIN_ISR);
        if partition.leader_epoch() != before {
            ctx.note(|| format!("{}: role {:?}", self.id, partition.role()));
        }
        if let Some((leader, _)) = partition.following() {
            p.fetchers.entry(leader).or_insert(Fetcher::Idle(now));
        }
        self.carry_out(ctx, effects);
    }

    /// What `Replica::carry_out` does with the partition's effects: publish the high
    /// watermark, answer the decided acks, send the ISR change.
    fn carry_out(&mut self, ctx: &mut Ctx, effects: Effects) {
        if let Some(hw) = effects.high_watermark {
            self.log.set_high_watermark(hw);
        }
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        for (id, code) in effects.acks {
            if let Some(ack) = p.committing.remove(&id) {
                answer_ack(ctx, self.id, &ack, code);
            }
        }
        if let Some(proposal) = effects.propose_isr {
            self.start_isr_task(ctx, proposal);
        }
    }

    /// A client's acks=all produce of one record (`Replica::append`): accepted by a leader
    /// whose ISR is at least `min.insync.replicas`.
    pub fn produce(&mut self, ctx: &mut Ctx, id: u64) -> bool {
        let now = ctx.now;
        let Some(p) = self.proc.as_mut() else {
            return false;
        };
        let Some(Ok(epoch)) = p.partition.as_ref().map(|r| r.check_produce(-1)) else {
            return false;
        };
        let offset = self.log.append_leader(epoch, id);
        p.acks.push(PendingAck {
            offset,
            epoch,
            id,
            deadline: now + ctx.settings.produce_timeout_ms,
        });
        schedule_flush(p, ctx);
        ctx.note(|| format!("{}: produce #{id} @{offset} e{epoch}", self.id));
        true
    }

    /// `Replica::complete` once the records are durable: the partition learns the durable
    /// end, then answers each ack now or later (`Effects::acks`).
    fn durable_acks(&mut self, ctx: &mut Ctx) {
        let durable = self.log.durable_end();
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        let (done, waiting): (Vec<PendingAck>, Vec<PendingAck>) = std::mem::take(&mut p.acks)
            .into_iter()
            .partition(|a| a.offset < durable);
        p.acks = waiting;
        let Some(partition) = p.partition.as_mut() else {
            return;
        };
        let mut effects = partition.on_durable(durable);
        for ack in done {
            match partition.await_commit(ack.offset + 1, ack.epoch, ack.deadline) {
                Ok(code) => answer_ack(ctx, self.id, &ack, code),
                Err(id) => {
                    p.committing.insert(id, ack);
                }
            }
        }
        effects.acks.extend(partition.expire(ctx.now).acks);
        self.carry_out(ctx, effects);
    }

    // ---- Disk (the log's flusher) -----------------------------------------------------------

    fn flush(&mut self, ctx: &mut Ctx) {
        let p = self.proc.as_mut().unwrap();
        p.flush_at = None;
        self.log.flush(ctx.now);
        let had_acks = !p.acks.is_empty();
        let durable = self.log.durable_end();
        let now = ctx.now;
        for f in p.fetchers.values_mut() {
            if let Fetcher::Durable { target, backoff } = *f
                && durable >= target
            {
                *f = Fetcher::Idle(now + if backoff { BACKOFF_MS } else { 0 });
            }
        }
        if had_acks {
            self.durable_acks(ctx);
        }
        self.fire_parked(ctx, false);
    }

    // ---- The leader's Fetch handling (`handlers::fetch`, `work::read_part`) ----------------

    pub fn on_fetch(&mut self, ctx: &mut Ctx, from: i32, request: FetchRequest) {
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        let asked = &request.asked;
        if let Err(code) = resolve(&p.image, self.id, asked.current_leader_epoch) {
            ctx.note(|| {
                format!(
                    "{}: fetch #{} from {from}: error {code}",
                    self.id, request.id
                )
            });
            let answer = error_answer(code);
            ctx.send(self.id, from, fetch_response(request.id, answer));
            return;
        }
        let (answer, effects) = self.read_part(ctx, &request);
        let p = self.proc.as_mut().unwrap();
        if answer.error_code != 0 || answer.diverging_epoch.is_some() || !answer.records.is_empty()
        {
            ctx.send(self.id, from, fetch_response(request.id, answer));
        } else {
            let seen = request.asked.fetch_offset.max(answer.high_watermark);
            p.parked.push(Parked {
                from,
                request,
                seen,
                deadline: ctx.now + ctx.settings.fetch_wait_ms,
            });
        }
        // The ISR change is sent by a task of its own, after this answer.
        self.carry_out(ctx, effects);
    }

    /// Answers the parked fetches whose wait is over: data durable past what they saw, or
    /// (`deadlines`) their `max_wait_ms` passed.
    fn fire_parked(&mut self, ctx: &mut Ctx, deadlines: bool) {
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        let (now, durable) = (ctx.now, self.log.durable_end());
        let (due, waiting): (Vec<Parked>, Vec<Parked>) = std::mem::take(&mut p.parked)
            .into_iter()
            .partition(|w| durable > w.seen || (deadlines && w.deadline <= now));
        p.parked = waiting;
        let mut after = Vec::new();
        for w in due {
            let (answer, effects) = self.read_part(ctx, &w.request);
            ctx.send(self.id, w.from, fetch_response(w.request.id, answer));
            after.push(effects);
        }
        for effects in after {
            self.carry_out(ctx, effects);
        }
    }

    /// `Replica::read` for a follower: the partition's divergence check and bookkeeping of
    /// the follower's position (`Partition::on_follower_fetch`), then the records up to the
    /// durable end. Returns the answer and the effects still to carry out (acks, an ISR
    /// change), the high watermark already published.
    fn read_part(&mut self, ctx: &mut Ctx, request: &FetchRequest) -> (FetchedPartition, Effects) {
        let p = self.proc.as_mut().unwrap();
        let from = request.replica_id;
        let asked = &request.asked;
        let mut answer = error_answer(0);
        let Some(partition) = p.partition.as_mut() else {
            answer.error_code = ErrorCode::UnknownTopicOrPartition.code();
            return (answer, Effects::default());
        };
        let image = &p.image.metadata;
        let fetch = FollowerFetch {
            replica_id: from,
            fetch_offset: asked.fetch_offset,
            last_fetched_epoch: asked.last_fetched_epoch,
            live: image.is_live(from) && !image.shutting_down.contains(&from),
        };
        let log = &mut self.log;
        let (read, mut effects) =
            partition.on_follower_fetch(fetch, &*log, log.durable_end(), ctx.now);
        if let Some(hw) = effects.high_watermark.take() {
            log.set_high_watermark(hw);
        }
        let visible_end = match read {
            FollowerRead::Diverging { epoch, end_offset } => {
                ctx.note(|| {
                    format!(
                        "{}: fetch #{} from {from} @{} e{}: diverging ({epoch}, {end_offset})",
                        self.id, request.id, asked.fetch_offset, asked.last_fetched_epoch
                    )
                });
                ctx.seen.counts.diverging_answers += 1;
                answer.diverging_epoch = Some((epoch, end_offset));
                answer.high_watermark = log.high_watermark();
                return (answer, effects);
            }
            FollowerRead::Records { end } => end,
        };
        answer.high_watermark = log.high_watermark();
        answer.log_start_offset = 0;
        let offset = asked.fetch_offset;
        if offset >= visible_end && offset <= log.end() {
            // Nothing durable to send yet.
        } else if offset < 0 || offset > log.end() {
            answer.error_code = ErrorCode::OffsetOutOfRange.code();
        } else {
            // Everything durable (as up to `replica.fetch.max.bytes`) or, to vary the
            // interleavings, a few batches.
            let max = if ctx.rng.chance(500) {
                usize::MAX
            } else {
                ctx.rng.between(1, 8) as usize
            };
            answer.records = log.read(offset, visible_end, max);
        }
        ctx.note(|| {
            format!(
                "{}: fetch #{} from {from} @{offset}: {} bytes, hw {}",
                self.id,
                request.id,
                answer.records.len(),
                answer.high_watermark
            )
        });
        (answer, effects)
    }

    // ---- The follower's fetch loops (`replicator::follow`) ---------------------------------

    fn fire_fetchers(&mut self, ctx: &mut Ctx) {
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        let now = ctx.now;
        let leaders: Vec<i32> = p.fetchers.keys().copied().collect();
        for leader in leaders {
            let p = self.proc.as_mut().unwrap();
            match p.fetchers[&leader] {
                Fetcher::Idle(at) if at <= now => self.fetch(ctx, leader),
                Fetcher::InFlight { deadline, id, .. } if deadline <= now => {
                    ctx.note(|| format!("{}: fetch #{id} from {leader} failed", self.id));
                    p.fetchers.insert(leader, Fetcher::Idle(now + BACKOFF_MS));
                }
                _ => {}
            }
        }
    }

    /// One round of the loop: ends it if this broker follows `leader` no more, else sends a
    /// Fetch from the log end.
    fn fetch(&mut self, ctx: &mut Ctx, leader: i32) {
        let p = self.proc.as_mut().unwrap();
        let following = p.partition.as_ref().and_then(Partition::following);
        let Some((_, epoch)) = following.filter(|(l, _)| *l == leader) else {
            p.fetchers.remove(&leader);
            return;
        };
        if !p.image.metadata.brokers.contains_key(&leader) {
            p.fetchers
                .insert(leader, Fetcher::Idle(ctx.now + BACKOFF_MS));
            return;
        }
        let (fetch_offset, last_fetched_epoch) = follower::fetch_point(&self.log);
        let asked = FetchPartition {
            topic: TOPIC.into(),
            topic_id: Uuid::nil(),
            partition: 0,
            fetch_offset,
            last_fetched_epoch,
            current_leader_epoch: epoch,
            log_start_offset: 0,
        };
        let id = ctx.id();
        let deadline = ctx.now + ctx.settings.fetch_wait_ms + ctx.settings.fetch_slack_ms;
        p.fetchers.insert(
            leader,
            Fetcher::InFlight {
                id,
                asked: asked.clone(),
                deadline,
            },
        );
        let request = FetchRequest {
            id,
            replica_id: self.id,
            asked,
        };
        ctx.send(self.id, leader, Payload::Fetch(request));
    }

    /// The leader's answer: `follower::apply` (the production decision, carried out on the
    /// model log), then wait for the appends to be durable before the next round.
    pub fn on_fetch_response(
        &mut self,
        ctx: &mut Ctx,
        leader: i32,
        id: u64,
        answer: FetchedPartition,
    ) {
        let now = ctx.now;
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        let asked = match p.fetchers.get(&leader) {
            Some(Fetcher::InFlight { id: i, asked, .. }) if *i == id => asked.clone(),
            // Its fetch timed out: the loop went on.
            _ => return,
        };
        let following = p
            .partition
            .as_ref()
            .and_then(Partition::following)
            .map(|(_, e)| e);
        let action = follower::decide(&asked, following, &answer, &self.log);
        ctx.note(|| {
            format!(
                "{}: answer #{id} from {leader} @{} (log end {}): {action:?}",
                self.id,
                asked.fetch_offset,
                self.log.end()
            )
        });
        let applied = match action {
            Action::ResetTo(start) => panic!("reset to {start}: no retention in the simulation"),
            Action::Corrupt(e) => panic!("corrupt batch from leader {leader}: {e}"),
            Action::TruncateTo { offset, .. } => match self.log.truncate_to(offset, now) {
                Ok(end) if end < asked.fetch_offset => {
                    ctx.seen.counts.truncations += 1;
                    Applied::Truncated
                }
                Ok(_) => Applied::Truncated,
                Err(_) => Applied::Backoff(ErrorCode::KafkaStorageError.code()),
            },
            Action::Append {
                batches,
                leader_high_watermark,
            } => {
                if !batches.is_empty()
                    && let Err(e) = self.log.append_replicated(&answer.records, &batches)
                {
                    ctx.note(|| format!("{}: replicated append refused: {e}", self.id));
                    Applied::Backoff(ErrorCode::KafkaStorageError.code())
                } else {
                    let end = self.log.end();
                    self.log
                        .set_high_watermark(follower::follower_high_watermark(
                            leader_high_watermark,
                            end,
                        ));
                    Applied::Appended
                }
            }
            Action::Stale => Applied::Backoff(ErrorCode::FencedLeaderEpoch.code()),
            Action::Backoff(code) => Applied::Backoff(code),
        };
        let backoff = matches!(applied, Applied::Backoff(_));
        let target = self.log.end();
        let p = self.proc.as_mut().unwrap();
        let next = if self.log.durable_end() >= target {
            Fetcher::Idle(now + if backoff { BACKOFF_MS } else { 0 })
        } else {
            schedule_flush(p, ctx);
            Fetcher::Durable { target, backoff }
        };
        p.fetchers.insert(leader, next);
    }

    // ---- ISR changes (`replicator::send_isr_change`) ----------------------------------------

    fn start_isr_task(&mut self, ctx: &mut Ctx, proposal: IsrProposal) {
        let p = self.proc.as_mut().unwrap();
        ctx.note(|| format!("{}: proposes ISR {:?}", self.id, proposal));
        p.isr_tasks.push(IsrTask {
            id: ctx.id(),
            proposal,
            retry_at: Some(ctx.now),
        });
        self.fire_isr_tasks(ctx);
    }

    fn fire_isr_tasks(&mut self, ctx: &mut Ctx) {
        let Some(p) = self.proc.as_mut() else {
            return;
        };
        let now = ctx.now;
        let due: Vec<u64> = p
            .isr_tasks
            .iter()
            .filter(|t| t.retry_at.is_some_and(|at| at <= now))
            .map(|t| t.id)
            .collect();
        for task in due {
            let Some(p) = self.proc.as_mut() else {
                return;
            };
            let i = p.isr_tasks.iter().position(|t| t.id == task).unwrap();
            let pending = p
                .partition
                .as_ref()
                .is_some_and(|r| r.is_pending(&p.isr_tasks[i].proposal));
            if !pending {
                p.isr_tasks.remove(i);
                continue;
            }
            p.isr_tasks[i].retry_at = None;
            let proposal = &p.isr_tasks[i].proposal;
            let change = IsrChange {
                topic: TOPIC.into(),
                partition: 0,
                leader: self.id,
                leader_epoch: proposal.leader_epoch,
                partition_epoch: proposal.partition_epoch,
                isr: proposal.isr.clone(),
            };
            self.propose(
                ctx,
                MetadataCommand::AlterPartition(change),
                Purpose::Isr(task),
                PROPOSAL_TIMEOUT_MS,
            );
        }
    }

    /// `send_isr_change`: the partition decides what the answer means
    /// (`Partition::on_isr_answer`).
    fn isr_outcome(&mut self, ctx: &mut Ctx, task: u64, outcome: Option<CommandOutcome>) {
        let now = ctx.now;
        let p = self.proc.as_mut().unwrap();
        let Some(i) = p.isr_tasks.iter().position(|t| t.id == task) else {
            return;
        };
        ctx.note(|| format!("{}: ISR change answered {outcome:?}", self.id));
        let answer = match outcome {
            Some(CommandOutcome::Done(Ok(()))) => IsrAnswer::Committed,
            Some(CommandOutcome::Done(Err(e))) => IsrAnswer::Refused(e.code),
            _ => IsrAnswer::Unknown,
        };
        let next = match p.partition.as_mut() {
            Some(partition) => partition.on_isr_answer(&p.isr_tasks[i].proposal, answer, now),
            None => IsrNext::Done,
        };
        match next {
            IsrNext::Done => {
                p.isr_tasks.remove(i);
            }
            IsrNext::ResendAt(at) => p.isr_tasks[i].retry_at = Some(at),
        }
    }
}

/// The Fetch handler's leader check against the broker's image (`led_partition` and
/// `check_leader_epoch`).
fn resolve(image: &Image, node: i32, client_epoch: i32) -> Result<(), i16> {
    let p = Node::partition_state(image).ok_or(ErrorCode::UnknownTopicOrPartition.code())?;
    match p.leader {
        NO_LEADER => return Err(ErrorCode::LeaderNotAvailable.code()),
        leader if leader != node => return Err(ErrorCode::NotLeaderOrFollower.code()),
        _ => {}
    }
    match client_epoch {
        e if e < 0 || e == p.leader_epoch => Ok(()),
        e if e < p.leader_epoch => Err(ErrorCode::FencedLeaderEpoch.code()),
        _ => Err(ErrorCode::UnknownLeaderEpoch.code()),
    }
}

fn error_answer(code: i16) -> FetchedPartition {
    FetchedPartition {
        topic: TOPIC.into(),
        partition: 0,
        error_code: code,
        high_watermark: -1,
        log_start_offset: -1,
        records: Bytes::new(),
        diverging_epoch: None,
    }
}

/// The answer as the follower decodes it: Fetch v12 carries "no divergence" as epoch -1, so
/// a DivergingEpoch of (-1, -1) reads as none (`fetch::diverging`, `FetchSession`).
fn fetch_response(id: u64, mut answer: FetchedPartition) -> Payload {
    answer.diverging_epoch = answer.diverging_epoch.filter(|(epoch, _)| *epoch >= 0);
    Payload::FetchResponse { id, answer }
}

fn send_raft(ctx: &mut Ctx, from: i32, messages: Vec<raft::eraftpb::Message>) {
    for m in messages {
        let to = m.to as i32;
        ctx.send(from, to, Payload::Raft(Box::new(m)));
    }
}

/// The flusher writes what is pending within a few ms (group commit).
fn schedule_flush(p: &mut Process, ctx: &mut Ctx) {
    if p.flush_at.is_none() {
        p.flush_at = Some(ctx.now + ctx.rng.between(1, 5));
    }
}

/// The client's view of an acks=all answer: only success counts as acknowledged.
fn answer_ack(ctx: &mut Ctx, node: i32, ack: &PendingAck, code: i16) {
    if code == 0 {
        ctx.seen.acknowledged(node, ack);
    }
}
