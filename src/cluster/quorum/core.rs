//! One controller voter's logic, without I/O: the `RawNode`, the metadata it applies, the
//! order in which a `Ready` is sent, persisted and applied, snapshots, and the active
//! controller's broker-liveness duty.
//!
//! The driver in `mod.rs` feeds it from the transport and a timer and persists through the
//! WAL; the replication simulation feeds it from a simulated network, clock and disk. The
//! shells only move messages and bytes; every decision is made here (or in `raft`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use raft::eraftpb::{Entry, EntryType, HardState, Message, Snapshot};
use raft::{RawNode, Ready, Storage};
use serde::{Deserialize, Serialize};

use super::store::QuorumStore;
use super::transport::Heartbeat;
use super::validate::{self, MAX_ENTRY_BYTES, Refusal};
use super::wal::Recovered;
use crate::cluster::ClusterMetadata;
use crate::cluster::commands::{CommandOutcome, MetadataCommand};
use crate::protocol::ErrorCode;

/// Raft ticks: elections after 10-20 ticks (1-2 s), leader heartbeats every 2 (200 ms).
pub(crate) const TICK: Duration = Duration::from_millis(100);
pub(crate) const ELECTION_TICKS: usize = 10;
pub(crate) const HEARTBEAT_TICKS: usize = 2;
/// Applied entries between metadata snapshots (each snapshot compacts the log and the WAL).
pub(crate) const SNAPSHOT_EVERY_ENTRIES: u64 = if cfg!(test) { 16 } else { 4096 };

/// The `raft` settings of every voter.
pub(crate) fn raft_config(id: u64) -> raft::Config {
    raft::Config {
        id,
        election_tick: ELECTION_TICKS,
        heartbeat_tick: HEARTBEAT_TICKS,
        check_quorum: true,
        pre_vote: true,
        max_inflight_msgs: 256,
        ..Default::default()
    }
}

/// Whether `metadata` holds the registration of broker `node`'s current process
/// (`incarnation`). A process publishes no image to its shards before: until then, the log
/// it replays says what its previous process led, and acting on that would revive
/// leaderships that registering again ends (`RegisterBroker`; simulation seed 1155, now `seed_606_*`).
pub(crate) fn registered(metadata: &ClusterMetadata, node: i32, incarnation: u64) -> bool {
    metadata
        .brokers
        .get(&node)
        .is_some_and(|b| b.incarnation == incarnation)
}

/// A command in the log, tagged so that its proposer can find its outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Proposal {
    pub request_id: u64,
    pub command: MetadataCommand,
}

/// A committed command, applied.
#[derive(Debug, Clone)]
pub(crate) struct AppliedCommand {
    // The index and the command are read by the simulation's checks only.
    #[cfg_attr(not(test), allow(dead_code))]
    pub index: u64,
    pub request_id: u64,
    #[cfg_attr(not(test), allow(dead_code))]
    pub command: MetadataCommand,
    pub outcome: CommandOutcome,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProposeError {
    #[error("cannot encode a metadata command: {0}")]
    Encode(#[from] serde_json::Error),
    /// Over what voters accept in one entry ([`MAX_ENTRY_BYTES`]).
    #[error("a metadata command of {0} bytes is over {MAX_ENTRY_BYTES}")]
    TooLarge(usize),
    /// No leader known yet, or a leader transfer: the proposer times out and retries.
    #[error("proposal dropped: {0}")]
    Dropped(#[from] raft::Error),
}

/// One `Ready` being handled: what the shell sends and persists before
/// [`Voter::finish_ready`].
pub(crate) struct ReadyIo {
    ready: Ready,
    /// To send now, before persisting (a leader's appends go out while it writes).
    pub messages: Vec<Message>,
    /// A snapshot from the leader (this voter fell behind its compacted log), already
    /// installed in memory: to persist with the hard state, replacing the whole log.
    pub snapshot: Option<(Snapshot, HardState)>,
    /// Entries and hard state to make durable before `finish_ready`.
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    applied: Vec<AppliedCommand>,
    applied_index: Option<u64>,
}

/// What a handled `Ready` produced.
pub(crate) struct ReadyDone {
    /// To send now that the entries are durable.
    pub messages: Vec<Message>,
    /// The commands applied, in log order.
    pub applied: Vec<AppliedCommand>,
    /// The last applied index, if anything was applied (or a snapshot installed).
    pub applied_index: Option<u64>,
}

/// A snapshot of the metadata that compacted the in-memory log: the WAL is to be rewritten
/// as it and the entries after it.
pub(crate) struct Compaction {
    pub snapshot: Snapshot,
    pub hard_state: HardState,
    pub entries: Vec<Entry>,
}

/// One voter: its Raft node and the metadata its committed entries built.
pub(crate) struct Voter {
    pub node: RawNode<QuorumStore>,
    pub metadata: ClusterMetadata,
    /// The last applied log index.
    pub applied: u64,
    /// Every configured voter, this one included.
    voters: Vec<u64>,
}

impl Voter {
    /// Recovers a voter from what its WAL held: the snapshot's metadata, then the entries and
    /// hard state, with `config` (`raft_config`, its `applied` set here). A quorum of one
    /// campaigns at once.
    pub fn recover(
        mut config: raft::Config,
        voters: &[u64],
        cluster_id: &str,
        recovered: Recovered,
    ) -> anyhow::Result<Self> {
        let storage = QuorumStore::new(voters.to_vec());
        let (metadata, applied) = match recovered.snapshot {
            Some(snapshot) => {
                let index = snapshot.get_metadata().index;
                (storage.install(snapshot)?, index)
            }
            None => (ClusterMetadata::new(cluster_id.to_string()), 0),
        };
        storage.mem.wl().append(&recovered.entries)?;
        storage.mem.wl().set_hardstate(recovered.hard_state);
        config.applied = applied;
        config.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut node = RawNode::new(&config, storage, &logger)?;
        if voters.len() == 1 {
            // A quorum of one need not wait an election timeout to lead.
            node.campaign()?;
        }
        Ok(Self {
            node,
            metadata,
            applied,
            voters: voters.to_vec(),
        })
    }

    /// Proposes a command (a follower's `RawNode` forwards it to the leader).
    pub fn propose(&mut self, proposal: &Proposal) -> Result<(), ProposeError> {
        let data = serde_json::to_vec(proposal)?;
        // Followers would refuse the entry, and the log could not move past it.
        if data.len() > MAX_ENTRY_BYTES {
            return Err(ProposeError::TooLarge(data.len()));
        }
        self.node.propose(vec![], data)?;
        Ok(())
    }

    /// Steps a message from a peer, after [`validate::check`]: a refused one changes nothing.
    pub fn step_checked(&mut self, msg: Message) -> Result<(), Refusal> {
        let raft = &self.node.raft;
        validate::check(
            &msg,
            &validate::Receiver {
                id: raft.id,
                voters: &self.voters,
                cluster_id: &self.metadata.cluster_id,
                term: raft.term,
                last_index: raft.raft_log.last_index(),
                leader: raft.state == raft::StateRole::Leader,
            },
        )?;
        if let Err(e) = self.node.step(msg) {
            tracing::debug!("raft step: {e}");
        }
        Ok(())
    }

    /// Takes the node's `Ready` (call only when `node.has_ready()`): installs a snapshot the
    /// leader sent and applies the committed entries, and returns what to send at once and
    /// what to persist.
    pub fn begin_ready(&mut self) -> anyhow::Result<ReadyIo> {
        let mut ready = self.node.ready();
        let messages = ready.take_messages();
        let mut applied_index = None;
        let snapshot = if ready.snapshot().is_empty() {
            None
        } else {
            let snapshot = ready.snapshot().clone();
            self.metadata = self.node.store().install(snapshot.clone())?;
            let index = snapshot.get_metadata().index;
            self.applied = index;
            applied_index = Some(index);
            let hard_state = self.node.store().initial_state()?.hard_state;
            Some((snapshot, hard_state))
        };
        let mut applied = Vec::new();
        if let Some(index) = self.apply(ready.take_committed_entries(), &mut applied) {
            applied_index = Some(index);
        }
        let entries = ready.take_entries();
        let hard_state = ready.hs().cloned();
        Ok(ReadyIo {
            ready,
            messages,
            snapshot,
            entries,
            hard_state,
            applied,
            applied_index,
        })
    }

    /// Completes a `Ready` once the shell made `io`'s snapshot, entries and hard state
    /// durable: the in-memory log takes them, the node advances, and the newly committed
    /// entries are applied.
    pub fn finish_ready(&mut self, io: ReadyIo) -> anyhow::Result<ReadyDone> {
        let ReadyIo {
            mut ready,
            entries,
            hard_state,
            mut applied,
            mut applied_index,
            ..
        } = io;
        if !entries.is_empty() || hard_state.is_some() {
            let mem = &self.node.store().mem;
            mem.wl().append(&entries)?;
            if let Some(hs) = hard_state {
                mem.wl().set_hardstate(hs);
            }
        }
        let mut messages = ready.take_persisted_messages();
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node
                .store()
                .mem
                .wl()
                .mut_hard_state()
                .set_commit(commit);
        }
        messages.extend(light.take_messages());
        if let Some(index) = self.apply(light.take_committed_entries(), &mut applied) {
            applied_index = Some(index);
        }
        self.node.advance_apply();
        Ok(ReadyDone {
            messages,
            applied,
            applied_index,
        })
    }

    /// Every `SNAPSHOT_EVERY_ENTRIES` applied entries: snapshots the metadata and compacts
    /// the in-memory log; the shell then rewrites the WAL the same way.
    pub fn compaction_due(&mut self) -> anyhow::Result<Option<Compaction>> {
        let store = self.node.store();
        if self.applied < store.snapshot_index() + SNAPSHOT_EVERY_ENTRIES {
            return Ok(None);
        }
        let snapshot = store.compact(&self.metadata, self.applied)?;
        let hard_state = store.initial_state()?.hard_state;
        let entries = store.entries_after(self.applied)?;
        Ok(Some(Compaction {
            snapshot,
            hard_state,
            entries,
        }))
    }

    /// Applies committed entries in order. Returns the last index, if any.
    fn apply(&mut self, entries: Vec<Entry>, applied: &mut Vec<AppliedCommand>) -> Option<u64> {
        let mut last = None;
        for entry in entries {
            last = Some(entry.index);
            self.applied = entry.index;
            if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Proposal>(&entry.data) {
                Ok(proposal) => {
                    let outcome = self.metadata.apply(&proposal.command);
                    log_refusals(entry.index, &proposal.command, &outcome);
                    applied.push(AppliedCommand {
                        index: entry.index,
                        request_id: proposal.request_id,
                        command: proposal.command,
                        outcome,
                    });
                }
                // Every voter skips the same unreadable entry, so they stay identical.
                Err(e) => tracing::error!(index = entry.index, "unreadable metadata entry: {e}"),
            }
        }
        last
    }
}

/// A committed command refused on apply changed nothing; what a proposer should have caught
/// (a limit, a malformed command) is logged as an error, routine refusals quietly.
fn log_refusals(index: u64, command: &MetadataCommand, outcome: &CommandOutcome) {
    let alarming = [
        ErrorCode::PolicyViolation,
        ErrorCode::InvalidPartitions,
        ErrorCode::InvalidRequest,
    ]
    .map(|c| c.code());
    for error in outcome.errors() {
        if alarming.contains(&error.code) {
            tracing::error!(
                index,
                code = error.code,
                "committed metadata command {} refused on apply (a no-op): {}",
                command.kind(),
                error.message
            );
        } else {
            tracing::debug!(
                index,
                code = error.code,
                "{}: {}",
                command.kind(),
                error.message
            );
        }
    }
}

/// The active controller's view of broker heartbeats (every voter records them, so a new
/// leader already knows who is alive).
pub(crate) struct Liveness {
    session_timeout: Duration,
    /// When each broker was last heard from, and the metadata offset it had applied then.
    last_heard: HashMap<i32, (Instant, u64)>,
    /// For each fenced broker, the metadata offset it must reach to be unfenced: at least
    /// the entry that fenced it (Kafka unfences only brokers caught up with the log).
    fenced_at: HashMap<i32, u64>,
    /// Fence/unfence commands proposed and not yet settled, so each is proposed once.
    in_flight: HashSet<i32>,
}

impl Liveness {
    pub fn new(session_timeout: Duration) -> Self {
        Self {
            session_timeout,
            last_heard: HashMap::new(),
            fenced_at: HashMap::new(),
            in_flight: HashSet::new(),
        }
    }

    /// Records a heartbeat of the process registered in `metadata`. One naming another
    /// incarnation (a previous process, or a forger, who cannot know the random incarnation)
    /// is ignored, as Kafka ignores a stale broker epoch: it never keeps a broker unfenced.
    pub fn heard(&mut self, heartbeat: &Heartbeat, metadata: &ClusterMetadata, now: Instant) {
        let id = heartbeat.broker_id;
        if !registered(metadata, id, heartbeat.incarnation) {
            tracing::debug!(
                broker = id,
                incarnation = heartbeat.incarnation,
                "heartbeat of an unregistered incarnation ignored"
            );
            return;
        }
        self.last_heard.insert(id, (now, heartbeat.metadata_offset));
    }

    /// Leader duty at every tick, against the metadata at log `offset`: fence brokers not
    /// heard from within the session timeout (counted from when this voter first saw them,
    /// at the latest), unfence fenced brokers heard from again once they caught up. The
    /// commands returned are in flight until [`Liveness::settled`].
    pub fn due(
        &mut self,
        metadata: &ClusterMetadata,
        offset: u64,
        now: Instant,
    ) -> Vec<(i32, MetadataCommand)> {
        let mut changes = Vec::new();
        for broker in metadata.brokers.values() {
            if self.in_flight.contains(&broker.id) {
                continue;
            }
            if !broker.fenced {
                self.fenced_at.remove(&broker.id);
            }
            // A broker registered since this voter leads gets a full session from now, as
            // one known when it began to lead: its first heartbeat may still be on the way.
            let (at, heard_offset) = *self.last_heard.entry(broker.id).or_insert((now, 0));
            let heard = (now.duration_since(at) < self.session_timeout).then_some(heard_offset);
            let stopping = metadata.shutting_down.contains(&broker.id);
            let command = match (broker.fenced, heard) {
                (false, None) => MetadataCommand::FenceBroker { id: broker.id },
                (true, Some(heard_offset)) if !stopping => {
                    let needed = *self.fenced_at.entry(broker.id).or_insert(offset);
                    if heard_offset < needed {
                        continue;
                    }
                    MetadataCommand::UnfenceBroker { id: broker.id }
                }
                _ => continue,
            };
            self.in_flight.insert(broker.id);
            changes.push((broker.id, command));
        }
        changes
    }

    /// The fence/unfence proposal for `broker` was applied or timed out.
    pub fn settled(&mut self, broker: i32) {
        self.in_flight.remove(&broker);
    }

    /// On becoming leader: brokers this voter never heard from get a full session before
    /// they can be fenced; after this process was `paused`, every broker does (its
    /// heartbeats were not being read).
    pub fn on_leadership(&mut self, metadata: &ClusterMetadata, paused: bool, now: Instant) {
        if paused {
            self.last_heard.clear();
        }
        for id in metadata.brokers.keys() {
            self.last_heard.entry(*id).or_insert((now, 0));
        }
        self.fenced_at.clear();
        self.in_flight.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::BrokerInfo;

    const SESSION: Duration = Duration::from_millis(1_500);

    fn heartbeat(broker_id: i32, metadata_offset: u64) -> Heartbeat {
        Heartbeat {
            broker_id,
            incarnation: 1,
            metadata_offset,
        }
    }

    fn metadata(brokers: &[(i32, bool)]) -> ClusterMetadata {
        let mut m = ClusterMetadata::new("c".into());
        for (id, fenced) in brokers {
            m.brokers.insert(
                *id,
                BrokerInfo {
                    id: *id,
                    host: "h".into(),
                    port: 1,
                    shards: 1,
                    incarnation: 1,
                    fenced: *fenced,
                    listeners: Vec::new(),
                },
            );
        }
        m
    }

    #[test]
    fn a_broker_registered_after_the_leadership_began_gets_a_session() {
        let t0 = Instant::now();
        let mut live = Liveness::new(SESSION);
        live.on_leadership(&metadata(&[(1, false)]), false, t0);
        live.heard(&heartbeat(1, 5), &metadata(&[(1, false)]), t0);
        // Broker 2 registers; its first heartbeat is not here yet (the simulation saw the
        // controller fence it one tick after its registration).
        let m = metadata(&[(1, false), (2, false)]);
        let soon = t0 + Duration::from_millis(100);
        assert_eq!(live.due(&m, 6, soon), vec![]);
        // Silent for a whole session: fenced.
        let later = soon + SESSION;
        live.heard(&heartbeat(1, 6), &m, later);
        assert_eq!(
            live.due(&m, 6, later),
            vec![(2, MetadataCommand::FenceBroker { id: 2 })]
        );
    }

    #[test]
    fn a_fenced_broker_is_unfenced_once_caught_up_with_its_fencing() {
        let t0 = Instant::now();
        let mut live = Liveness::new(SESSION);
        let m = metadata(&[(1, false), (2, true)]);
        live.on_leadership(&m, false, t0);
        live.heard(&heartbeat(2, 9), &m, t0);
        // Fenced at offset 10 (the first check that sees it fenced): not caught up yet.
        assert_eq!(live.due(&m, 10, t0), vec![]);
        live.heard(&heartbeat(2, 10), &m, t0);
        assert_eq!(
            live.due(&m, 11, t0),
            vec![(2, MetadataCommand::UnfenceBroker { id: 2 })]
        );
        // In flight until settled.
        assert_eq!(live.due(&m, 11, t0), vec![]);
        live.settled(2);
        assert_eq!(live.due(&m, 11, t0).len(), 1);
    }

    #[test]
    fn heartbeats_of_another_incarnation_keep_no_broker_unfenced() {
        let t0 = Instant::now();
        let mut live = Liveness::new(SESSION);
        let m = metadata(&[(1, false), (2, false)]);
        live.on_leadership(&m, false, t0);
        // Broker 2 stopped; a forger keeps heartbeating for it with a guessed incarnation.
        let later = t0 + SESSION;
        let forged = Heartbeat {
            incarnation: 12_345,
            ..heartbeat(2, 100)
        };
        live.heard(&forged, &m, later);
        live.heard(&heartbeat(1, 6), &m, later);
        assert_eq!(
            live.due(&m, 6, later),
            vec![(2, MetadataCommand::FenceBroker { id: 2 })]
        );
        // Fenced, it stays fenced while only forged heartbeats come.
        live.settled(2);
        let fenced = metadata(&[(1, false), (2, true)]);
        live.heard(&forged, &fenced, later);
        assert_eq!(live.due(&fenced, 7, later), vec![]);
        live.heard(&heartbeat(2, 7), &fenced, later);
        assert_eq!(
            live.due(&fenced, 7, later),
            vec![(2, MetadataCommand::UnfenceBroker { id: 2 })]
        );
    }

    /// An entry committed before limits existed (or forged into the log) that asks for
    /// 2^31-1 partitions, and an unreadable one: replaying them is a logged no-op, and
    /// later entries still apply.
    #[test]
    fn replaying_old_bad_entries_changes_nothing() {
        use crate::cluster::topics::NewTopic;
        let proposal = |request_id, command| {
            serde_json::to_vec(&Proposal {
                request_id,
                command,
            })
            .unwrap()
        };
        let huge = MetadataCommand::CreateTopics {
            topics: vec![NewTopic {
                name: "huge".into(),
                partitions: i32::MAX,
                replication_factor: 1,
                assignment: None,
                configs: vec![],
            }],
            ids: vec![uuid::Uuid::from_u128(1)],
            placement_seed: 0,
            limits: Default::default(),
        };
        let datas = [
            proposal(1, huge),
            b"{not a proposal".to_vec(),
            proposal(3, MetadataCommand::AllocateProducerIds),
        ];
        let entries: Vec<Entry> = datas
            .into_iter()
            .zip(1..)
            .map(|(data, index)| Entry {
                index,
                term: 1,
                data: data.into(),
                ..Default::default()
            })
            .collect();
        let hard_state = HardState {
            term: 1,
            commit: 3,
            ..Default::default()
        };
        let recovered = Recovered {
            hard_state,
            snapshot: None,
            entries,
        };
        let mut voter = Voter::recover(raft_config(1), &[1], "c", recovered).unwrap();
        let io = voter.begin_ready().unwrap();
        let done = voter.finish_ready(io).unwrap();
        let outcomes: Vec<_> = done.applied.iter().map(|a| &a.outcome).collect();
        assert_eq!(outcomes.len(), 2, "{outcomes:?}");
        assert_eq!(
            outcomes[0].errors()[0].code,
            ErrorCode::PolicyViolation.code()
        );
        assert!(matches!(outcomes[1], CommandOutcome::ProducerIdBlock(0)));
        assert!(voter.metadata.topics.is_empty());
        assert!(voter.applied >= 3, "{}", voter.applied);
    }
}
