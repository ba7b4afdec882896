//! One simulated broker process, which is also a controller voter (every broker is one in
//! production). The decisions are the production code's: the voter is a
//! `quorum::core::Voter` (a `raft::RawNode` over `QuorumStore`) with the active
//! controller's `Liveness`; each partition replica is a `partition::Partition`. What is
//! modelled here is the glue around the voter, each piece named after the production shell
//! it stands for: `quorum::drive` and `handle_ready`, the controller's registration and
//! heartbeat loops; the replicas' glue is in `replica.rs`.

use std::collections::BTreeMap;
use std::rc::Rc;

use raft::StateRole;

use super::log::SimLog;
use super::net::Payload;
use super::replica_state::{Fetcher, IsrTask, Parked, Replica};
use super::{Ctx, PARTITIONS};
use crate::cluster::BrokerInfo;
use crate::cluster::ClusterMetadata;
use crate::cluster::commands::{CommandOutcome, MetadataCommand};
use crate::cluster::quorum::core::{Liveness, Proposal, TICK, Voter, raft_config, registered};
use crate::cluster::quorum::transport::Heartbeat;
use crate::cluster::quorum::wal::MemWal;
use crate::storage::mem_disk::ManualClock;
use crate::storage::mem_disk::MemDisk;

pub const TOPIC: &str = "sim";
pub const CLUSTER_ID: &str = "sim";
pub const MIN_ISR: usize = 2;
const TICK_MS: i64 = TICK.as_millis() as i64;
/// The controller's `PROPOSAL_TIMEOUT`; `check_liveness` waits `TICK * 30`.
pub const PROPOSAL_TIMEOUT_MS: i64 = 5_000;
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
pub enum Purpose {
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
    /// Per partition, the replica on this broker.
    pub replicas: BTreeMap<i32, Replica>,
    /// Per leader followed, its fetch loop.
    pub fetchers: BTreeMap<i32, Fetcher>,
    pub parked: Vec<Parked>,
    pub isr_tasks: Vec<IsrTask>,
    next_shrink: i64,
}

impl Process {
    /// The partition's replica decisions, if this broker has a replica of it.
    pub fn partition(&self, partition: i32) -> Option<&crate::replication::partition::Partition> {
        self.replicas.get(&partition).map(|r| &r.partition)
    }
}

pub struct Node {
    pub id: i32,
    /// Bumped at every start.
    pub incarnation: u64,
    /// The voter's disk.
    pub wal: MemWal,
    /// The broker's disk, with a log per partition.
    disk: MemDisk,
    pub logs: Vec<SimLog>,
    clock: Rc<ManualClock>,
    /// This voter's election timeout, in ticks (fixed per node: `raft` draws it from the
    /// thread's RNG, which would make runs irreproducible).
    election_ticks: usize,
    pub proc: Option<Process>,
    /// The process is stopped (SIGSTOP, a stalled VM) until then: no timer fires, messages
    /// to it wait.
    pub paused_until: i64,
}

impl Node {
    pub fn new(id: i32, election_ticks: usize, clock: Rc<ManualClock>) -> Self {
        Self {
            id,
            incarnation: 0,
            wal: MemWal::default(),
            disk: MemDisk::new(),
            logs: (0..PARTITIONS).map(SimLog::new).collect(),
            clock,
            election_ticks,
            proc: None,
            paused_until: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.proc.is_some()
    }

    /// The log of `partition`.
    pub fn log(&self, partition: i32) -> &SimLog {
        &self.logs[partition as usize]
    }

    pub fn log_mut(&mut self, partition: i32) -> &mut SimLog {
        &mut self.logs[partition as usize]
    }

    /// Starts the process: the voter recovers from its WAL (`Quorum::start`), the logs
    /// from the disk (`PartitionLog::open`), the broker registers (`Controller::register`).
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
        for log in &mut self.logs {
            log.open(&self.disk, self.clock.clone());
        }
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
            replicas: BTreeMap::new(),
            fetchers: BTreeMap::new(),
            parked: Vec::new(),
            isr_tasks: Vec::new(),
            next_shrink: now + ctx.settings.lag_ms / 2,
        });
    }

    /// The process dies: memory is lost, the disks keep what was synced.
    pub fn crash(&mut self, ctx: &mut Ctx) {
        if self.proc.take().is_none() {
            return;
        }
        for log in &mut self.logs {
            log.crash();
        }
        self.disk.crash();
        ctx.net.drop_to(self.id);
        let kept: Vec<usize> = self.logs.iter().map(|l| l.records().len()).collect();
        ctx.note(|| format!("crash {}: logs keep {kept:?}", self.id));
    }

    /// The earliest time one of this process's timers fires.
    pub fn next_event(&self) -> Option<i64> {
        let p = self.proc.as_ref()?;
        let fetchers = p.fetchers.values().filter_map(Fetcher::next_event);
        let replicas = p.replicas.values().filter_map(Replica::next_event);
        [
            Some(p.next_tick),
            p.next_register,
            p.next_heartbeat,
            Some(p.next_shrink),
            p.proposals.values().map(|w| w.deadline).min(),
            p.parked.iter().map(|w| w.deadline).min(),
            p.isr_tasks.iter().filter_map(|t| t.retry_at).min(),
            replicas.min(),
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
        self.fire_flushes(ctx);
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
            self.shrink_checks(ctx);
        }
        self.fire_isr_tasks(ctx);
        self.fire_fetchers(ctx);
        self.fire_parked(ctx, true);
        self.expire_acks(ctx);
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
        // The simulated voters are honest: the checks the driver makes before stepping must
        // never refuse what they send.
        let described = format!("{message:?}");
        if let Err(refusal) = p.voter.step_checked(message) {
            panic!(
                "{}: refused an honest message ({refusal}): {described}",
                self.id
            );
        }
        self.handle_ready(ctx);
    }

    pub fn on_heartbeat(&mut self, ctx: &mut Ctx, heartbeat: Heartbeat) {
        if let Some(p) = self.proc.as_mut() {
            p.liveness
                .heard(&heartbeat, &p.voter.metadata, ctx.instant());
            // Every input of the driver ends with the node's `Ready`, if it has one.
            self.handle_ready(ctx);
        }
    }

    /// `Quorum::propose`: the outcome comes when this voter applies the entry, or `None`
    /// at once (dropped: no leader known) or after `timeout_ms`.
    pub(super) fn propose(
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
            listeners: Vec::new(),
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
        p.liveness
            .heard(&heartbeat, &p.voter.metadata, ctx.instant());
        for peer in ctx.settings.voters.clone() {
            if peer != self.id as u64 {
                ctx.send(self.id, peer as i32, Payload::Heartbeat(heartbeat));
            }
        }
    }
}

fn send_raft(ctx: &mut Ctx, from: i32, messages: Vec<raft::eraftpb::Message>) {
    for m in messages {
        let to = m.to as i32;
        ctx.send(from, to, Payload::Raft(Box::new(m)));
    }
}
