//! Deterministic seeded simulation of the pure replication and controller state machines
//! (DESIGN.md section 8): one `ClusterMetadata` as the controller (its Raft log is assumed
//! correct, so commands are applied in one order), three brokers with in-memory model logs
//! (one leader epoch per record, a durable prefix that survives crashes), one partition with
//! RF=3 and min.insync.replicas=2, and the leader's `LeaderState`. Random steps: appends,
//! flushes, follower fetches (with DivergingEpoch-style truncation), high-watermark advances,
//! ISR shrinks and expansions (AlterPartition, one in flight, answered later), clock ticks,
//! crashes (fencing) and restarts (unfencing). Invariants are checked after every step.

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
    /// An AlterPartition sent by the leader and not yet applied by the controller.
    in_flight: Option<IsrChange>,
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
            "simulation seed {} step {}: {what}\nlast steps:\n{}\nmeta: {:?}\nleader: {:?}\nlogs: {:?}\nacknowledged: {:?}",
            self.seed,
            self.step,
            self.trace[start..].join("\n"),
            self.partition(),
            self.leader,
            self.brokers,
            self.acknowledged
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
        match roll {
            0..=24 => {
                if let Some(l) = leader {
                    let epoch = self.partition().leader_epoch;
                    let b = self.brokers.get_mut(&l).unwrap();
                    b.log.push(epoch);
                    let offset = b.log.len() as i64 - 1;
                    self.pending.push((offset, epoch));
                    self.trace.push(format!("append {l} @{offset} e{epoch}"));
                }
            }
            25..=34 => {
                if let Some(l) = leader {
                    let b = self.brokers.get_mut(&l).unwrap();
                    b.durable = b.log.len();
                    self.trace.push(format!("flush {l} -> {}", b.durable));
                }
            }
            35..=64 => {
                let f = BROKERS[self.rng.below(3) as usize];
                self.fetch(f);
            }
            65..=69 => {
                if let Some(l) = leader {
                    let end = self.brokers[&l].durable as i64;
                    let (_, s) = self.leader.as_mut().unwrap();
                    s.advance_high_watermark(end, MIN_ISR);
                    self.trace.push(format!("advance hw {l} end {end}"));
                    self.after_hw();
                }
            }
            70..=74 => {
                if let Some((l, s)) = &mut self.leader
                    && let Some(isr) = s.shrunk_isr(self.now_ms, LAG_MS)
                {
                    let l = *l;
                    self.trace.push(format!("shrink proposal by {l}: {isr:?}"));
                    self.propose(isr);
                }
            }
            75..=80 => self.controller_answers(),
            81..=89 => {
                let dt = self.rng.below(4_000) as i64;
                self.now_ms += dt;
                self.trace.push(format!("tick +{dt} -> {}", self.now_ms));
            }
            90..=94 => {
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

    /// The leader sends an AlterPartition; the controller applies it in a later step.
    fn propose(&mut self, isr: Vec<i32>) {
        let p = self.partition().clone();
        let (l, s) = self.leader.as_mut().unwrap();
        s.propose_isr(isr.clone());
        self.in_flight = Some(IsrChange {
            topic: TOPIC.into(),
            partition: 0,
            leader: *l,
            leader_epoch: s.leader_epoch,
            partition_epoch: s.partition_epoch,
            isr,
        });
        debug_assert_eq!(p.leader, *l);
    }

    fn controller_answers(&mut self) {
        let Some(change) = self.in_flight.take() else {
            return;
        };
        let outcome = self.apply(MetadataCommand::AlterPartition(change.clone()));
        self.sync_leadership();
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

    fn fetch(&mut self, f: i32) {
        let Some((l, _)) = &self.leader else {
            return;
        };
        let l = *l;
        if f == l || self.brokers[&f].crashed {
            return;
        }
        let leader_log = self.brokers[&l].log.clone();
        let leader_durable = self.brokers[&l].durable;
        let b = self.brokers.get_mut(&f).unwrap();
        // DivergingEpoch: the follower's log must be a prefix of the leader's; otherwise it
        // truncates to the largest prefix where the epochs match, and fetches again later.
        let common = b
            .log
            .iter()
            .zip(&leader_log)
            .take_while(|(a, c)| a == c)
            .count();
        if common < b.log.len() {
            self.trace.push(format!(
                "fetch {f}: diverges, truncate {} -> {common}",
                b.log.len()
            ));
            b.log.truncate(common);
            b.durable = b.durable.min(common);
            return;
        }
        let from = b.log.len();
        let upto = leader_durable.max(from);
        let batch = self.rng.below(4) as usize + 1;
        let upto = upto.min(from + batch);
        b.log.extend_from_slice(&leader_log[from..upto]);
        b.durable = b.log.len();
        let fetch_offset = b.log.len() as i64;
        let (_, s) = self.leader.as_mut().unwrap();
        s.on_follower_fetch(f, fetch_offset, leader_durable as i64, self.now_ms, MIN_ISR);
        let hw = s.high_watermark();
        let b = self.brokers.get_mut(&f).unwrap();
        b.known_hw = b.known_hw.max(hw.min(fetch_offset));
        self.trace.push(format!(
            "fetch {f} from {l}: end {fetch_offset}, leader durable {leader_durable}, hw {hw}"
        ));
        self.after_hw();
        let live = self.meta.is_live(f);
        let (_, s) = self.leader.as_ref().unwrap();
        if let Some(isr) = s.expanded_isr(f, live, self.now_ms) {
            self.trace.push(format!("expand proposal: {isr:?}"));
            self.propose(isr);
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
        if self.leader.as_ref().is_some_and(|(n, _)| *n == id) {
            // Its in-flight AlterPartition dies with it.
            self.in_flight = None;
            self.leader = None;
        }
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

fn run(seed: u64, steps: usize) {
    let mut sim = Sim::new(seed);
    for _ in 0..steps {
        sim.run_step();
    }
}

#[test]
fn seeded_runs_keep_the_replication_invariants() {
    for seed in 0..1_500 {
        run(seed, 400);
    }
}
