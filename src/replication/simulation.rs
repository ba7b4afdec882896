//! Deterministic seeded simulation of the pure replication and controller state machines
//! (DESIGN.md section 8): one `ClusterMetadata` as the controller (its Raft log is assumed
//! correct, so commands are applied in one order), three brokers with in-memory model logs
//! (one leader epoch per record, a durable prefix that survives crashes), one partition with
//! RF=3 and min.insync.replicas=2, and the leader's `LeaderState`. Random steps: appends,
//! flushes, high-watermark advances, ISR shrinks and expansions, clock ticks, crashes
//! (fencing) and restarts (unfencing). Invariants are checked after every step.
//!
//! A simulated network, driven by the same seed, carries follower Fetch requests, the
//! leader's responses (records, HW, or a DivergingEpoch answer) and AlterPartition requests:
//! every message gets a random delay, any queued message may be delivered next (reordering),
//! some are dropped, and a broker may be cut off from the others (and the controller) for a
//! while. The leader handles a Fetch when it arrives, fencing requests of another leader
//! epoch; a follower keeps one fetch in flight and applies a response only while it still
//! follows that leader at that epoch and its log end is still the request's fetch offset.

#![cfg(test)]

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::cluster::commands::{CommandOutcome, IsrChange, MetadataCommand};
use crate::cluster::topics::NewTopic;
use crate::cluster::{BrokerInfo, ClusterMetadata, NO_LEADER, PartitionState};
use crate::replication::leader::{Assignment, LeaderState};

const TOPIC: &str = "sim";
const MIN_ISR: usize = 2;
const LAG_MS: i64 = 10_000;
const BROKERS: [i32; 3] = [1, 2, 3];
/// A follower sends a new fetch when the one in flight got no answer for this long.
const FETCH_TIMEOUT_MS: i64 = 2_000;
/// A leader gives up on an unanswered AlterPartition after this long.
const ALTER_TIMEOUT_MS: i64 = 3_000;
/// Per mille of messages lost.
const DROP_PER_MILLE: u64 = 50;
const MAX_DELAY_MS: u64 = 60;

/// What the leader answers to a Fetch.
#[derive(Debug, Clone)]
enum FetchAnswer {
    /// Records from the fetch offset, and the leader's HW, when it handled the request.
    Records { records: Vec<i32>, hw: i64 },
    /// The follower's log diverges: the leader's log below the fetch offset, to truncate to
    /// the common prefix (the outcome of Kafka's DivergingEpoch / epoch end offset walk).
    Diverging { leader_prefix: Vec<i32> },
    /// FENCED_LEADER_EPOCH / NOT_LEADER_OR_FOLLOWER.
    Fenced,
}

#[derive(Debug, Clone)]
enum Payload {
    FetchRequest {
        id: u64,
        fetch_offset: i64,
        last_fetched_epoch: i32,
        leader_epoch: i32,
        sent_ms: i64,
    },
    FetchResponse {
        id: u64,
        fetch_offset: i64,
        leader_epoch: i32,
        answer: FetchAnswer,
    },
    /// To the controller (`to` is 0).
    AlterPartition { id: u64, change: IsrChange },
}

#[derive(Debug, Clone)]
struct Message {
    from: i32,
    to: i32,
    deliver_at: i64,
    payload: Payload,
}

/// The controller's address in messages.
const CONTROLLER: i32 = 0;

/// splitmix64: a tiny deterministic PRNG.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One broker's model log: entry i holds the leader epoch of the record at offset i.
#[derive(Debug, Clone, Default)]
struct Broker {
    log: Vec<i32>,
    durable: usize,
    /// The high watermark this broker last learned (as leader or from fetch responses).
    known_hw: i64,
    crashed: bool,
    /// The fetch in flight as a follower: (request id, sent at).
    fetch_in_flight: Option<(u64, i64)>,
}

struct Sim {
    seed: u64,
    step: usize,
    rng: Rng,
    now_ms: i64,
    meta: ClusterMetadata,
    brokers: BTreeMap<i32, Broker>,
    /// The current leader's state, built when it became leader.
    leader: Option<(i32, LeaderState)>,
    /// The leader's AlterPartition in flight: (request id, sent at). The message itself may
    /// be queued, delayed or lost.
    in_flight: Option<(u64, i64, IsrChange)>,
    network: Vec<Message>,
    next_id: u64,
    /// A broker cut off from the others and the controller, until then.
    cut: Option<(i32, i64)>,
    /// Statistics: messages dropped, fetch requests fenced, stale responses ignored.
    dropped: usize,
    fenced_fetches: usize,
    ignored_responses: usize,
    /// acks=all records waiting for the high watermark: (offset, epoch).
    pending: Vec<(i64, i32)>,
    acknowledged: Vec<(i64, i32)>,
    /// Invariant 1: every leader epoch ever seen, with its leader.
    epoch_leaders: BTreeMap<i32, i32>,
    /// Invariant 2: the last high watermark seen per leader epoch.
    last_hw: Option<(i32, i64)>,
    trace: Vec<String>,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut meta = ClusterMetadata::new("sim".into());
        for id in BROKERS {
            meta.apply(&MetadataCommand::RegisterBroker(BrokerInfo {
                id,
                host: "127.0.0.1".into(),
                port: 9092,
                shards: 1,
                incarnation: 1,
                fenced: false,
            }));
        }
        let created = meta.apply(&MetadataCommand::CreateTopics {
            topics: vec![NewTopic {
                name: TOPIC.into(),
                partitions: 1,
                replication_factor: 3,
                assignment: None,
                configs: vec![("min.insync.replicas".into(), "2".into())],
            }],
            ids: vec![Uuid::from_u128(u128::from(seed) + 1)],
            placement_seed: seed,
        });
        assert!(
            matches!(&created, CommandOutcome::Topics(r) if r.len() == 1 && r[0].is_ok()),
            "seed {seed}: topic creation failed: {created:?}"
        );
        let mut sim = Self {
            seed,
            step: 0,
            rng: Rng(seed),
            now_ms: 1_000,
            meta,
            brokers: BROKERS.iter().map(|b| (*b, Broker::default())).collect(),
            leader: None,
            in_flight: None,
            network: Vec::new(),
            next_id: 0,
            cut: None,
            dropped: 0,
            fenced_fetches: 0,
            ignored_responses: 0,
            pending: Vec::new(),
            acknowledged: Vec::new(),
            epoch_leaders: BTreeMap::new(),
            last_hw: None,
            trace: Vec::new(),
        };
        sim.sync_leadership();
        sim.check();
        sim
    }

    fn partition(&self) -> &PartitionState {
        &self.meta.topics[TOPIC].partitions[0]
    }

    fn fail(&self, what: String) -> ! {
        let start = self.trace.len().saturating_sub(30);
        panic!(
            "simulation seed {} step {} (t={}ms): {what}\nlast steps:\n{}\nmeta: {:?}\nleader: {:?}\nlogs: {:?}\nacknowledged: {:?}\ncut: {:?}\nnetwork: {:?}",
            self.seed,
            self.step,
            self.now_ms,
            self.trace[start..].join("\n"),
            self.partition(),
            self.leader,
            self.brokers,
            self.acknowledged,
            self.cut,
            self.network
        );
    }

    fn apply(&mut self, command: MetadataCommand) -> CommandOutcome {
        let outcome = self.meta.apply(&command);
        self.trace
            .push(format!("  apply {command:?} -> {outcome:?}"));
        outcome
    }

    /// After every controller command: the partition's leader (and the metadata it pushes to
    /// the leader) as the controller decided. A new leader or leader epoch gets a fresh
    /// `LeaderState`; the same leader learns a new partition epoch via `update_assignment`.
    fn sync_leadership(&mut self) {
        let p = self.partition().clone();
        if p.leader != NO_LEADER
            && let Some(prev) = self.epoch_leaders.insert(p.leader_epoch, p.leader)
            && prev != p.leader
        {
            self.fail(format!(
                "leader epoch {} had leader {prev}, now {}",
                p.leader_epoch, p.leader
            ));
        }
        let assignment = Assignment {
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            replicas: p.replicas.clone(),
            isr: p.isr.clone(),
        };
        let same = self
            .leader
            .as_ref()
            .is_some_and(|(n, s)| *n == p.leader && s.leader_epoch == p.leader_epoch);
        if same {
            let (_, state) = self.leader.as_mut().unwrap();
            if state.partition_epoch != p.partition_epoch {
                state.update_assignment(assignment);
            }
            return;
        }
        // Leadership changed: pending acks=all requests of the old leader fail.
        self.pending.clear();
        if p.leader == NO_LEADER {
            self.leader = None;
            return;
        }
        let b = &self.brokers[&p.leader];
        let state = LeaderState::new(
            p.leader,
            assignment,
            b.log.len() as i64,
            b.known_hw,
            self.now_ms,
        );
        self.leader = Some((p.leader, state));
    }

    /// Records the high watermark and acknowledges the pending records below it.
    fn after_hw(&mut self) {
        let Some((node, state)) = &self.leader else {
            return;
        };
        let p = self.partition();
        let still_leader = p.leader == *node && p.leader_epoch == state.leader_epoch;
        let hw = state.high_watermark();
        let epoch = state.leader_epoch;
        let node = *node;
        if let Some((e, last)) = self.last_hw
            && e == epoch
            && hw < last
        {
            self.fail(format!(
                "high watermark went back from {last} to {hw} at epoch {epoch}"
            ));
        }
        self.last_hw = Some((epoch, hw));
        let b = self.brokers.get_mut(&node).unwrap();
        b.known_hw = b.known_hw.max(hw);
        if !still_leader {
            return;
        }
        let (done, rest): (Vec<_>, Vec<_>) = self
            .pending
            .iter()
            .partition(|(offset, e)| *offset < hw && *e == epoch);
        self.pending = rest;
        self.acknowledged.extend(done);
    }

    fn run_step(&mut self) {
        self.step += 1;
        let roll = self.rng.below(100);
        let leader = self.leader.as_ref().map(|(n, _)| *n);
        self.heal_and_time_out();
        match roll {
            0..=29 => {
                if let Some(l) = leader {
                    let epoch = self.partition().leader_epoch;
                    let b = self.brokers.get_mut(&l).unwrap();
                    b.log.push(epoch);
                    let offset = b.log.len() as i64 - 1;
                    self.pending.push((offset, epoch));
                    self.trace.push(format!("append {l} @{offset} e{epoch}"));
                }
            }
            30..=39 => {
                if let Some(l) = leader {
                    let b = self.brokers.get_mut(&l).unwrap();
                    b.durable = b.log.len();
                    self.trace.push(format!("flush {l} -> {}", b.durable));
                }
            }
            40..=49 => {
                for f in BROKERS {
                    self.send_fetch(f);
                }
            }
            50..=71 => self.deliver(),
            72..=75 => {
                if let Some(l) = leader {
                    let end = self.brokers[&l].durable as i64;
                    let (_, s) = self.leader.as_mut().unwrap();
                    s.advance_high_watermark(end, MIN_ISR);
                    self.trace.push(format!("advance hw {l} end {end}"));
                    self.after_hw();
                }
            }
            76..=79 => {
                if let Some((l, s)) = &mut self.leader
                    && let Some(isr) = s.shrunk_isr(self.now_ms, LAG_MS)
                {
                    let l = *l;
                    self.trace.push(format!("shrink proposal by {l}: {isr:?}"));
                    self.propose(isr);
                }
            }
            80..=81 => self.cut_off(),
            82..=89 => {
                let dt = self.rng.below(3_000) as i64;
                self.now_ms += dt;
                self.trace.push(format!("tick +{dt} -> {}", self.now_ms));
            }
            90..=92 => {
                let b = BROKERS[self.rng.below(3) as usize];
                self.crash(b);
            }
            _ => {
                let b = BROKERS[self.rng.below(3) as usize];
                self.restart(b);
            }
        }
        self.check();
    }

    /// The leader sends an AlterPartition through the network; the controller applies it
    /// when it is delivered.
    fn propose(&mut self, isr: Vec<i32>) {
        let (l, s) = self.leader.as_mut().unwrap();
        let l = *l;
        s.propose_isr(isr.clone());
        let change = IsrChange {
            topic: TOPIC.into(),
            partition: 0,
            leader: l,
            leader_epoch: s.leader_epoch,
            partition_epoch: s.partition_epoch,
            isr,
        };
        let id = self.new_id();
        self.in_flight = Some((id, self.now_ms, change.clone()));
        self.send(l, CONTROLLER, Payload::AlterPartition { id, change });
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn is_cut(&self, node: i32) -> bool {
        self.cut.is_some_and(|(c, _)| c == node)
    }

    /// Queues a message with a random delay, or loses it.
    fn send(&mut self, from: i32, to: i32, payload: Payload) {
        if self.rng.below(1_000) < DROP_PER_MILLE || self.is_cut(from) || self.is_cut(to) {
            self.dropped += 1;
            self.trace.push(format!("  lost {from}->{to}: {payload:?}"));
            return;
        }
        let deliver_at = self.now_ms + self.rng.below(MAX_DELAY_MS + 1) as i64;
        self.network.push(Message {
            from,
            to,
            deliver_at,
            payload,
        });
    }

    /// Heals an expired network partition; times out the fetches and the AlterPartition that
    /// got no answer.
    fn heal_and_time_out(&mut self) {
        if let Some((c, until)) = self.cut
            && self.now_ms >= until
        {
            self.cut = None;
            self.trace.push(format!("heal {c}"));
        }
        let now = self.now_ms;
        for (id, b) in &mut self.brokers {
            if let Some((_, sent)) = b.fetch_in_flight
                && now - sent >= FETCH_TIMEOUT_MS
            {
                b.fetch_in_flight = None;
                self.trace.push(format!("fetch of {id} timed out"));
            }
        }
        // Kafka's AlterPartitionManager resends an unanswered AlterPartition; the change
        // stays pending (the HW keeps counting a member being added), because the first copy
        // may still be applied. Giving up here (`isr_rejected`) would let the HW pass the
        // log end of a replica the controller then adds (seed 77 found it).
        if let Some((_, sent, change)) = self.in_flight.clone()
            && now - sent >= ALTER_TIMEOUT_MS
        {
            let id = self.new_id();
            self.in_flight = Some((id, now, change.clone()));
            self.trace.push(format!(
                "AlterPartition of {} timed out: resent",
                change.leader
            ));
            self.send(
                change.leader,
                CONTROLLER,
                Payload::AlterPartition { id, change },
            );
        }
    }

    /// Cuts a random broker off from the others and the controller for up to 15 s.
    fn cut_off(&mut self) {
        if self.cut.is_some() {
            return;
        }
        let b = BROKERS[self.rng.below(3) as usize];
        let until = self.now_ms + 500 + self.rng.below(15_000) as i64;
        self.cut = Some((b, until));
        self.trace.push(format!("cut {b} until {until}"));
    }

    /// Delivers a queued message chosen at random (so messages overtake each other); the
    /// clock moves to its delivery time if that is later.
    fn deliver(&mut self) {
        if self.network.is_empty() {
            return;
        }
        let i = self.rng.below(self.network.len() as u64) as usize;
        let m = self.network.swap_remove(i);
        self.now_ms = self.now_ms.max(m.deliver_at);
        if self.is_cut(m.from) || self.is_cut(m.to) {
            self.dropped += 1;
            self.trace
                .push(format!("  cut {}->{}: {:?}", m.from, m.to, m.payload));
            return;
        }
        match m.payload {
            Payload::FetchRequest {
                id,
                fetch_offset,
                last_fetched_epoch,
                leader_epoch,
                sent_ms,
            } => self.handle_fetch(
                m.to,
                m.from,
                id,
                fetch_offset,
                last_fetched_epoch,
                leader_epoch,
                sent_ms,
            ),
            Payload::FetchResponse {
                id,
                fetch_offset,
                leader_epoch,
                answer,
            } => self.apply_fetch_response(m.to, m.from, id, fetch_offset, leader_epoch, answer),
            Payload::AlterPartition { id, change } => self.controller_answers(id, change),
        }
    }

    /// The controller applies an AlterPartition; its answer (and the new partition state)
    /// reaches the leader at once.
    fn controller_answers(&mut self, id: u64, change: IsrChange) {
        let outcome = self.apply(MetadataCommand::AlterPartition(change.clone()));
        self.sync_leadership();
        // Only the answer to the request still in flight settles it: an older one that
        // timed out was already given up.
        if self.in_flight.as_ref().is_some_and(|(i, _, _)| *i == id) {
            self.in_flight = None;
            if let Some((l, s)) = &mut self.leader
                && *l == change.leader
                && s.leader_epoch == change.leader_epoch
            {
                match outcome {
                    CommandOutcome::Done(Ok(())) => {
                        // sync_leadership already pushed the new partition state.
                    }
                    _ => s.isr_rejected(self.now_ms),
                }
            }
        }
    }

    /// A follower sends a Fetch to the leader it knows (the controller's metadata), unless
    /// one is in flight.
    fn send_fetch(&mut self, f: i32) {
        let p = self.partition();
        let (l, epoch) = (p.leader, p.leader_epoch);
        let b = &self.brokers[&f];
        if l == NO_LEADER || f == l || b.crashed || b.fetch_in_flight.is_some() {
            return;
        }
        let fetch_offset = b.log.len() as i64;
        let last_fetched_epoch = b.log.last().copied().unwrap_or(-1);
        let id = self.new_id();
        let now = self.now_ms;
        self.brokers.get_mut(&f).unwrap().fetch_in_flight = Some((id, now));
        self.trace.push(format!(
            "send fetch #{id} {f}->{l} @{fetch_offset} last e{last_fetched_epoch} epoch {epoch}"
        ));
        self.send(
            f,
            l,
            Payload::FetchRequest {
                id,
                fetch_offset,
                last_fetched_epoch,
                leader_epoch: epoch,
                sent_ms: now,
            },
        );
    }

    /// The leader `l` handles a Fetch of follower `f` when it arrives.
    #[allow(clippy::too_many_arguments)]
    fn handle_fetch(
        &mut self,
        l: i32,
        f: i32,
        id: u64,
        fetch_offset: i64,
        last_fetched_epoch: i32,
        leader_epoch: i32,
        sent_ms: i64,
    ) {
        if self.brokers[&l].crashed {
            self.trace
                .push(format!("fetch #{id} {f}->{l}: {l} is down"));
            return;
        }
        let leads = self
            .leader
            .as_ref()
            .is_some_and(|(n, s)| *n == l && s.leader_epoch == leader_epoch);
        if !leads {
            self.fenced_fetches += 1;
            self.trace
                .push(format!("fetch #{id} {f}->{l} epoch {leader_epoch}: fenced"));
            self.send(
                l,
                f,
                Payload::FetchResponse {
                    id,
                    fetch_offset,
                    leader_epoch,
                    answer: FetchAnswer::Fenced,
                },
            );
            return;
        }
        let leader_log = &self.brokers[&l].log;
        let leader_durable = self.brokers[&l].durable;
        let at = fetch_offset as usize;
        // Kafka: the follower's last fetched epoch must end at or past the fetch offset in
        // the leader's log; by the log matching property, comparing the entry just below it
        // is enough.
        let diverges =
            at > leader_log.len() || (at > 0 && leader_log[at - 1] != last_fetched_epoch);
        if diverges {
            let leader_prefix = leader_log[..at.min(leader_log.len())].to_vec();
            self.trace.push(format!(
                "fetch #{id} {f}->{l} @{fetch_offset} e{last_fetched_epoch}: diverges"
            ));
            // Kafka does not update the follower's fetch state on a DivergingEpoch answer.
            self.send(
                l,
                f,
                Payload::FetchResponse {
                    id,
                    fetch_offset,
                    leader_epoch,
                    answer: FetchAnswer::Diverging { leader_prefix },
                },
            );
            return;
        }
        let batch = self.rng.below(10) as usize + 1;
        let upto = leader_durable.max(at).min(at + batch);
        let records = leader_log[at..upto].to_vec();
        let (_, s) = self.leader.as_mut().unwrap();
        s.on_follower_fetch(f, fetch_offset, leader_durable as i64, self.now_ms, MIN_ISR);
        let hw = s.high_watermark();
        self.trace.push(format!(
            "fetch #{id} {f}->{l} @{fetch_offset} (sent at {sent_ms}): {} records, leader durable {leader_durable}, hw {hw}",
            records.len()
        ));
        self.after_hw();
        let live = self.meta.is_live(f);
        let (_, s) = self.leader.as_ref().unwrap();
        if let Some(isr) = s.expanded_isr(f, live, self.now_ms) {
            self.trace.push(format!("expand proposal: {isr:?}"));
            self.propose(isr);
        }
        self.send(
            l,
            f,
            Payload::FetchResponse {
                id,
                fetch_offset,
                leader_epoch,
                answer: FetchAnswer::Records { records, hw },
            },
        );
    }

    /// Follower `f` gets the answer of leader `l` to its fetch `id`.
    fn apply_fetch_response(
        &mut self,
        f: i32,
        l: i32,
        id: u64,
        fetch_offset: i64,
        leader_epoch: i32,
        answer: FetchAnswer,
    ) {
        let p = self.partition();
        let follows = p.leader == l && p.leader_epoch == leader_epoch;
        let b = self.brokers.get_mut(&f).unwrap();
        if b.crashed {
            return;
        }
        if b.fetch_in_flight.is_some_and(|(i, _)| i == id) {
            b.fetch_in_flight = None;
        }
        if !follows || b.log.len() as i64 != fetch_offset {
            self.ignored_responses += 1;
            self.trace.push(format!(
                "response #{id} {l}->{f} @{fetch_offset} e{leader_epoch}: ignored (log end {})",
                b.log.len()
            ));
            return;
        }
        match answer {
            FetchAnswer::Fenced => {
                self.trace.push(format!("response #{id} {l}->{f}: fenced"));
            }
            FetchAnswer::Diverging { leader_prefix } => {
                let common = b
                    .log
                    .iter()
                    .zip(&leader_prefix)
                    .take_while(|(a, c)| a == c)
                    .count();
                self.trace.push(format!(
                    "response #{id} {l}->{f}: diverges, truncate {} -> {common}",
                    b.log.len()
                ));
                b.log.truncate(common);
                b.durable = b.durable.min(common);
            }
            FetchAnswer::Records { records, hw } => {
                b.log.extend_from_slice(&records);
                b.durable = b.log.len();
                let end = b.log.len() as i64;
                b.known_hw = b.known_hw.max(hw.min(end));
                self.trace.push(format!(
                    "response #{id} {l}->{f} @{fetch_offset}: +{} -> end {end}, hw {hw}",
                    records.len()
                ));
            }
        }
    }

    fn crash(&mut self, id: i32) {
        let b = self.brokers.get_mut(&id).unwrap();
        if b.crashed {
            return;
        }
        b.crashed = true;
        b.log.truncate(b.durable);
        self.trace
            .push(format!("crash {id}: log keeps {}", b.durable));
        b.fetch_in_flight = None;
        if self.leader.as_ref().is_some_and(|(n, _)| *n == id) {
            // Its in-flight AlterPartition dies with it (a queued copy may still arrive:
            // the controller fences it by epoch).
            self.in_flight = None;
            self.leader = None;
        }
        // Its connections close: what was on the way to it is lost.
        self.network.retain(|m| m.to != id);
        self.apply(MetadataCommand::FenceBroker { id });
        self.sync_leadership();
    }

    fn restart(&mut self, id: i32) {
        let b = self.brokers.get_mut(&id).unwrap();
        if !b.crashed {
            return;
        }
        b.crashed = false;
        self.trace.push(format!("restart {id}"));
        self.apply(MetadataCommand::UnfenceBroker { id });
        self.sync_leadership();
    }

    fn check(&self) {
        let p = self.partition();
        if p.leader != NO_LEADER {
            // (4) the ISR holds the leader.
            if !p.isr.contains(&p.leader) {
                self.fail(format!("ISR {:?} lacks leader {}", p.isr, p.leader));
            }
            let Some((node, state)) = &self.leader else {
                self.fail("the controller has a leader without leader state".into());
            };
            if *node != p.leader || !state.isr.contains(node) {
                self.fail(format!("leader state of {node} has ISR {:?}", state.isr));
            }
            // (3) no acknowledged record lost: in the leader's log and every ISR member's.
            let hw = state.high_watermark().max(0) as usize;
            let leader_log = &self.brokers[node].log;
            for m in &p.isr {
                let log = &self.brokers[m].log;
                for (offset, epoch) in &self.acknowledged {
                    if log.get(*offset as usize) != Some(epoch) {
                        self.fail(format!(
                            "acknowledged record @{offset} e{epoch} missing on {m} (leader {node})"
                        ));
                    }
                }
                if log.len() < hw || log[..hw] != leader_log[..hw] {
                    self.fail(format!(
                        "ISR member {m} disagrees with leader {node} below the HW {hw}"
                    ));
                }
            }
        }
    }
}

/// Runs one seed; returns (acknowledged records, dropped messages, fenced fetches, ignored
/// responses).
fn run(seed: u64, steps: usize) -> [usize; 4] {
    let mut sim = Sim::new(seed);
    for _ in 0..steps {
        sim.run_step();
    }
    [
        sim.acknowledged.len(),
        sim.dropped,
        sim.fenced_fetches,
        sim.ignored_responses,
    ]
}

#[test]
fn seeded_runs_keep_the_replication_invariants() {
    const SEEDS: u64 = 1_500;
    let started = std::time::Instant::now();
    let mut totals = [0usize; 4];
    for seed in 0..SEEDS {
        for (t, n) in totals.iter_mut().zip(run(seed, 500)) {
            *t += n;
        }
    }
    let avg = |n: usize| n as f64 / SEEDS as f64;
    eprintln!(
        "replication simulation: {SEEDS} seeds in {:?}; per seed: {:.1} acknowledged, {:.1} messages lost, {:.1} fetches fenced, {:.1} responses ignored",
        started.elapsed(),
        avg(totals[0]),
        avg(totals[1]),
        avg(totals[2]),
        avg(totals[3])
    );
    assert!(totals[0] > 0, "no record was ever acknowledged");
}
