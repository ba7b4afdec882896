//! The KRaft-style controller quorum: a `raft` crate `RawNode` on shard 0 of every voter,
//! its log persisted in a [`wal::RaftWal`], messages carried by a [`transport::Transport`].
//!
//! Lifecycle: started once per voter process on shard 0, lives until the process exits. The
//! driver task is the only owner of the `RawNode` and the WAL; everything else talks to it
//! through its inbox. Every voter applies the committed [`MetadataCommand`]s to its own
//! [`ClusterMetadata`] and publishes the result as an immutable [`MetadataImage`].
//!
//! The leader also watches broker liveness: brokers heartbeat to it, and a broker silent
//! for `broker.session.timeout.ms` is fenced through the log (and unfenced when it is heard
//! again).

mod store;
pub mod transport;
pub mod wal;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use raft::eraftpb::{Entry, EntryType, Message};
use raft::{RawNode, StateRole, Storage};
use serde::{Deserialize, Serialize};

use super::ClusterMetadata;
use super::commands::{CommandOutcome, MetadataCommand};
use crate::runtime::{LocalReceiver, LocalSender, delay, local_bounded, spawn_local};
use store::QuorumStore;
use transport::{Heartbeat, Incoming, Transport};
use wal::RaftWal;

/// Raft ticks: elections after 10-20 ticks (1-2 s), leader heartbeats every 2 (200 ms).
const TICK: Duration = Duration::from_millis(100);
const ELECTION_TICKS: usize = 10;
const HEARTBEAT_TICKS: usize = 2;
const INBOX_CAPACITY: usize = 4096;
/// Applied entries between metadata snapshots (each snapshot compacts the log and the WAL).
const SNAPSHOT_EVERY_ENTRIES: u64 = if cfg!(test) { 16 } else { 4096 };

/// What every shard reads: the metadata at one log offset, and who leads the quorum.
#[derive(Debug)]
pub struct MetadataImage {
    pub metadata: ClusterMetadata,
    /// The last applied log index: images only move forward.
    pub offset: u64,
    /// The active controller's node id, or -1 while there is none.
    pub controller_id: i32,
}

impl Deref for MetadataImage {
    type Target = ClusterMetadata;
    fn deref(&self) -> &ClusterMetadata {
        &self.metadata
    }
}

pub struct QuorumConfig {
    pub node_id: u64,
    /// Every voter's controller address, this node's included.
    pub voters: BTreeMap<u64, SocketAddr>,
    pub dir: PathBuf,
    pub cluster_id: String,
    pub session_timeout: Duration,
}

/// A command in the log, tagged so that its proposer can find its outcome.
#[derive(Serialize, Deserialize)]
struct Proposal {
    request_id: u64,
    command: MetadataCommand,
}

enum Input {
    Tick,
    Peer(Incoming),
    Propose(Proposal, oneshot::Sender<CommandOutcome>),
}

pub struct Quorum {
    node_id: u64,
    inbox: Rc<LocalSender<Input>>,
    transport: Option<Rc<Transport>>,
    /// The other voters.
    peers: Vec<u64>,
    leader: Cell<u64>,
    is_leader: Cell<bool>,
    next_request: Cell<u64>,
    image: RefCell<Arc<MetadataImage>>,
    liveness: RefCell<Liveness>,
    /// Called with each new image.
    publish: Box<dyn Fn(Arc<MetadataImage>)>,
}

/// The leader's view of broker heartbeats.
struct Liveness {
    session_timeout: Duration,
    /// When each broker was last heard from, and the metadata offset it had applied then.
    last_heard: HashMap<i32, (Instant, u64)>,
    /// For each fenced broker, the metadata offset it must reach to be unfenced: at least
    /// the entry that fenced it (Kafka unfences only brokers caught up with the log).
    fenced_at: HashMap<i32, u64>,
    /// Fence/unfence commands proposed and not yet applied, so each is proposed once.
    in_flight: HashSet<i32>,
}

impl Quorum {
    /// Recovers the log, starts the transport (when there are other voters) and the driver.
    pub async fn start(
        config: QuorumConfig,
        publish: impl Fn(Arc<MetadataImage>) + 'static,
    ) -> anyhow::Result<Rc<Quorum>> {
        let (wal, recovered) = RaftWal::open(&config.dir)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the metadata log: {e}"))?;
        let voters: Vec<u64> = config.voters.keys().copied().collect();
        let storage = QuorumStore::new(voters.clone());
        let (metadata, applied) = match recovered.snapshot {
            Some(snapshot) => {
                let index = snapshot.get_metadata().index;
                (storage.install(snapshot)?, index)
            }
            None => (ClusterMetadata::new(config.cluster_id.clone()), 0),
        };
        storage.mem.wl().append(&recovered.entries)?;
        storage.mem.wl().set_hardstate(recovered.hard_state);
        let raft_config = raft::Config {
            id: config.node_id,
            applied,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            check_quorum: true,
            pre_vote: true,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        raft_config.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut node = RawNode::new(&raft_config, storage, &logger)?;
        if voters.len() == 1 {
            // A quorum of one need not wait an election timeout to lead.
            node.campaign()?;
        }
        let (inbox, receiver) = local_bounded(INBOX_CAPACITY);
        let inbox = Rc::new(inbox);
        let transport = if voters.len() > 1 {
            let listen = config.voters[&config.node_id];
            let peers = config
                .voters
                .iter()
                .filter(|(id, _)| **id != config.node_id)
                .map(|(id, addr)| (*id, *addr))
                .collect();
            let (peer_tx, peer_rx) = local_bounded(INBOX_CAPACITY);
            let transport = Transport::start(config.node_id, listen, peers, peer_tx)?;
            spawn_local(forward_peers(peer_rx, inbox.clone())).detach();
            Some(transport)
        } else {
            None
        };
        let image = MetadataImage {
            metadata,
            offset: applied,
            controller_id: -1,
        };
        let quorum = Rc::new(Quorum {
            peers: voters
                .iter()
                .copied()
                .filter(|id| *id != config.node_id)
                .collect(),
            node_id: config.node_id,
            inbox: inbox.clone(),
            transport,
            leader: Cell::new(raft::INVALID_ID),
            is_leader: Cell::new(false),
            next_request: Cell::new(rand::random::<u64>() >> 16),
            image: RefCell::new(Arc::new(image)),
            liveness: RefCell::new(Liveness {
                session_timeout: config.session_timeout,
                last_heard: HashMap::new(),
                fenced_at: HashMap::new(),
                in_flight: HashSet::new(),
            }),
            publish: Box::new(publish),
        });
        spawn_local(tick(inbox)).detach();
        spawn_local(drive(quorum.clone(), node, wal, receiver)).detach();
        Ok(quorum)
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    /// The active controller, if one is known.
    pub fn leader(&self) -> Option<u64> {
        let leader = self.leader.get();
        (leader != raft::INVALID_ID).then_some(leader)
    }

    /// Proposes `command`; resolves with its outcome once this node applied it, or `None`
    /// after `timeout` (no leader, or the entry was lost in a leader change).
    pub async fn propose(
        &self,
        command: MetadataCommand,
        timeout: Duration,
    ) -> Option<CommandOutcome> {
        let request_id = self.next_request.get();
        self.next_request.set(request_id.wrapping_add(1));
        let (tx, rx) = oneshot::channel();
        let proposal = Proposal {
            request_id,
            command,
        };
        self.inbox.send(Input::Propose(proposal, tx)).await.ok()?;
        let timer = delay(timeout);
        futures::pin_mut!(timer);
        match futures::future::select(rx, timer).await {
            futures::future::Either::Left((Ok(outcome), _)) => Some(outcome),
            _ => None,
        }
    }

    /// This broker's heartbeat: recorded here and sent to every other voter, so whichever
    /// voter leads next already knows who is alive and need not wait a whole session
    /// before fencing a dead broker (the old controller, typically).
    pub fn heartbeat(&self, heartbeat: Heartbeat) {
        self.record_heartbeat(heartbeat);
        if let Some(t) = &self.transport {
            for peer in &self.peers {
                t.send_heartbeat(*peer, heartbeat);
            }
        }
    }

    fn record_heartbeat(&self, heartbeat: Heartbeat) {
        self.liveness.borrow_mut().last_heard.insert(
            heartbeat.broker_id,
            (Instant::now(), heartbeat.metadata_offset),
        );
    }

    fn send(&self, messages: Vec<Message>) {
        if let Some(t) = &self.transport {
            for m in messages {
                t.send_raft(m);
            }
        }
    }

    /// Leader duty at every tick: fence brokers not heard from within the session timeout,
    /// unfence fenced brokers heard from again.
    fn check_liveness(self: &Rc<Self>) {
        let image = self.image();
        let now = Instant::now();
        let mut changes = Vec::new();
        {
            let mut live = self.liveness.borrow_mut();
            let timeout = live.session_timeout;
            for broker in image.brokers.values() {
                if live.in_flight.contains(&broker.id) {
                    continue;
                }
                if !broker.fenced {
                    live.fenced_at.remove(&broker.id);
                }
                let heard = live
                    .last_heard
                    .get(&broker.id)
                    .filter(|(t, _)| now.duration_since(*t) < timeout)
                    .map(|(_, offset)| *offset);
                let stopping = image.shutting_down.contains(&broker.id);
                let command = match (broker.fenced, heard) {
                    (false, None) => MetadataCommand::FenceBroker { id: broker.id },
                    (true, Some(offset)) if !stopping => {
                        let needed = *live.fenced_at.entry(broker.id).or_insert(image.offset);
                        if offset < needed {
                            continue;
                        }
                        MetadataCommand::UnfenceBroker { id: broker.id }
                    }
                    _ => continue,
                };
                live.in_flight.insert(broker.id);
                changes.push((broker.id, command));
            }
        }
        for (id, command) in changes {
            tracing::info!(broker = id, ?command, "broker liveness changed");
            let quorum = self.clone();
            spawn_local(async move {
                quorum.propose(command, TICK * 30).await;
                quorum.liveness.borrow_mut().in_flight.remove(&id);
            })
            .detach();
        }
    }

    /// On becoming leader: brokers this voter never heard from get a full session before
    /// they can be fenced; after this process was paused, every broker does (its
    /// heartbeats were not being read).
    fn on_leadership(&self, paused: bool) {
        let image = self.image();
        let now = Instant::now();
        let mut live = self.liveness.borrow_mut();
        if paused {
            live.last_heard.clear();
        }
        for id in image.brokers.keys() {
            live.last_heard.entry(*id).or_insert((now, 0));
        }
        live.fenced_at.clear();
        live.in_flight.clear();
    }
}

async fn tick(inbox: Rc<LocalSender<Input>>) {
    loop {
        delay(TICK).await;
        if inbox.send(Input::Tick).await.is_err() {
            return;
        }
    }
}

async fn forward_peers(peers: LocalReceiver<Incoming>, inbox: Rc<LocalSender<Input>>) {
    while let Some(message) = peers.recv().await {
        if inbox.send(Input::Peer(message)).await.is_err() {
            return;
        }
    }
}

/// The driver: feeds inputs to the `RawNode` and handles its `Ready`s.
async fn drive(
    quorum: Rc<Quorum>,
    mut node: RawNode<QuorumStore>,
    mut wal: RaftWal,
    inbox: LocalReceiver<Input>,
) {
    let mut pending: HashMap<u64, oneshot::Sender<CommandOutcome>> = HashMap::new();
    let mut metadata = quorum.image().metadata.clone();
    let mut applied = quorum.image().offset;
    let mut last_tick = Instant::now();
    while let Some(input) = inbox.recv().await {
        match input {
            Input::Tick => {
                node.tick();
                // A process that was paused (SIGSTOP, a stalled VM) has not been reading
                // heartbeats: give every broker a fresh session rather than fence them all.
                if last_tick.elapsed() > TICK * 5 {
                    quorum.on_leadership(true);
                }
                last_tick = Instant::now();
                if node.raft.state == StateRole::Leader {
                    quorum.check_liveness();
                }
            }
            Input::Peer(Incoming::Raft(m)) => {
                if let Err(e) = node.step(m) {
                    tracing::debug!("raft step: {e}");
                }
            }
            Input::Peer(Incoming::Heartbeat(heartbeat)) => {
                quorum.record_heartbeat(heartbeat);
            }
            Input::Propose(proposal, reply) => match serde_json::to_vec(&proposal) {
                Ok(data) => match node.propose(vec![], data) {
                    Ok(()) => {
                        pending.insert(proposal.request_id, reply);
                    }
                    // Dropped (no leader known yet): the proposer times out and retries.
                    Err(e) => tracing::debug!("proposal dropped: {e}"),
                },
                Err(e) => tracing::error!("cannot encode a metadata command: {e}"),
            },
        }
        if !node.has_ready() {
            continue;
        }
        let changed =
            match handle_ready(&quorum, &mut node, &mut wal, &mut metadata, &mut pending).await {
                Ok(changed) => changed,
                Err(e) => {
                    // The log cannot be persisted: stop taking part rather than vote or ack
                    // without durability.
                    tracing::error!("metadata log failed, this controller stops: {e}");
                    return;
                }
            };
        let leader = node.raft.leader_id;
        let was_leader = quorum.is_leader.get();
        quorum.leader.set(leader);
        quorum.is_leader.set(node.raft.state == StateRole::Leader);
        if quorum.is_leader.get() && !was_leader {
            tracing::info!(
                node = quorum.node_id,
                term = node.raft.term,
                "became the active controller"
            );
            quorum.on_leadership(false);
        }
        if let Some(index) = changed {
            applied = index;
            if let Err(e) = snapshot_if_due(&mut node, &mut wal, &metadata, applied).await {
                tracing::error!("metadata snapshot failed, this controller stops: {e}");
                return;
            }
        }
        let image = quorum.image();
        if changed.is_some() || image.controller_id != leader as i32 {
            let fresh = Arc::new(MetadataImage {
                metadata: metadata.clone(),
                offset: applied,
                controller_id: if leader == raft::INVALID_ID {
                    -1
                } else {
                    leader as i32
                },
            });
            quorum.image.replace(fresh.clone());
            (quorum.publish)(fresh);
        }
    }
}

/// Every `SNAPSHOT_EVERY_ENTRIES`, snapshots the metadata and compacts the log and WAL.
async fn snapshot_if_due(
    node: &mut RawNode<QuorumStore>,
    wal: &mut RaftWal,
    metadata: &ClusterMetadata,
    applied: u64,
) -> anyhow::Result<()> {
    let store = node.store();
    if applied < store.snapshot_index() + SNAPSHOT_EVERY_ENTRIES {
        return Ok(());
    }
    let snapshot = store.compact(metadata, applied)?;
    let hard_state = store.initial_state()?.hard_state;
    wal.compact(&snapshot, &hard_state, &store.entries_after(applied)?)
        .await?;
    tracing::info!(index = applied, "metadata snapshot written, log compacted");
    Ok(())
}

/// Persists, sends and applies one `Ready`. Returns the last applied index if any entry
/// was applied.
async fn handle_ready(
    quorum: &Quorum,
    node: &mut RawNode<QuorumStore>,
    wal: &mut RaftWal,
    metadata: &mut ClusterMetadata,
    pending: &mut HashMap<u64, oneshot::Sender<CommandOutcome>>,
) -> anyhow::Result<Option<u64>> {
    let mut ready = node.ready();
    quorum.send(ready.take_messages());
    let mut applied = None;
    if !ready.snapshot().is_empty() {
        // Sent by the leader because this node fell behind its compacted log.
        let snapshot = ready.snapshot().clone();
        *metadata = node.store().install(snapshot.clone())?;
        let hard_state = node.store().initial_state()?.hard_state;
        wal.compact(&snapshot, &hard_state, &[]).await?;
        applied = Some(snapshot.get_metadata().index);
    }
    if let Some(index) = apply(ready.take_committed_entries(), metadata, pending) {
        applied = Some(index);
    }
    let entries = ready.take_entries();
    let hard_state = ready.hs().cloned();
    if !entries.is_empty() || hard_state.is_some() {
        wal.persist(&entries, hard_state.as_ref()).await?;
        let mem = &node.store().mem;
        mem.wl().append(&entries)?;
        if let Some(hs) = hard_state {
            mem.wl().set_hardstate(hs);
        }
    }
    quorum.send(ready.take_persisted_messages());
    let mut light = node.advance(ready);
    if let Some(commit) = light.commit_index() {
        node.store().mem.wl().mut_hard_state().set_commit(commit);
    }
    quorum.send(light.take_messages());
    if let Some(index) = apply(light.take_committed_entries(), metadata, pending) {
        applied = Some(index);
    }
    node.advance_apply();
    Ok(applied)
}

/// Applies committed entries in order; answers the proposals this node made.
fn apply(
    entries: Vec<Entry>,
    metadata: &mut ClusterMetadata,
    pending: &mut HashMap<u64, oneshot::Sender<CommandOutcome>>,
) -> Option<u64> {
    let mut last = None;
    for entry in entries {
        last = Some(entry.index);
        if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Proposal>(&entry.data) {
            Ok(proposal) => {
                let outcome = metadata.apply(&proposal.command);
                if let Some(reply) = pending.remove(&proposal.request_id) {
                    let _ = reply.send(outcome);
                }
            }
            // Every voter skips the same unreadable entry, so they stay identical.
            Err(e) => tracing::error!(index = entry.index, "unreadable metadata entry: {e}"),
        }
    }
    last
}

/// Parses `controller.quorum.voters` (`id@host:port,...`).
pub fn parse_voters(text: &str) -> Result<BTreeMap<u64, SocketAddr>, String> {
    let mut voters = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('@')
            .ok_or_else(|| format!("'{item}' is not id@host:port"))?;
        let id: u64 = id.parse().map_err(|_| format!("'{id}' is not a node id"))?;
        let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| format!("'{addr}' is not a host:port"))?;
        if voters.insert(id, addr).is_some() {
            return Err(format!("voter {id} is listed twice"));
        }
    }
    Ok(voters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single_voter(dir: &std::path::Path) -> QuorumConfig {
        QuorumConfig {
            node_id: 1,
            voters: [(1, "127.0.0.1:1".parse().unwrap())].into_iter().collect(),
            dir: dir.to_path_buf(),
            cluster_id: "test".into(),
            session_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_restarted_voter_recovers_from_snapshot_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        crate::runtime::block_on(async move {
            let quorum = Quorum::start(single_voter(&path), |_| {}).await.unwrap();
            for i in 0..40 {
                let outcome = quorum
                    .propose(
                        MetadataCommand::AllocateProducerIds,
                        Duration::from_secs(10),
                    )
                    .await;
                assert_eq!(
                    outcome,
                    Some(CommandOutcome::ProducerIdBlock(
                        i * super::super::PRODUCER_ID_BLOCK
                    ))
                );
            }
            let before = quorum.image();
            assert!(before.offset >= 40);
            drop(quorum);
            // The snapshot compacted the WAL: it holds a snapshot and the entries after it.
            let (_, recovered) = RaftWal::open(&path).await.unwrap();
            let snapshot_index = recovered.snapshot.as_ref().unwrap().get_metadata().index;
            assert!(snapshot_index >= SNAPSHOT_EVERY_ENTRIES, "{snapshot_index}");
            assert!(recovered.entries.iter().all(|e| e.index > snapshot_index));
        });
        let path = dir.path().to_path_buf();
        crate::runtime::block_on(async move {
            let quorum = Quorum::start(single_voter(&path), |_| {}).await.unwrap();
            // One more command: applied after the snapshot and the replayed entries.
            let next = quorum
                .propose(
                    MetadataCommand::AllocateProducerIds,
                    Duration::from_secs(10),
                )
                .await;
            assert_eq!(
                next,
                Some(CommandOutcome::ProducerIdBlock(
                    40 * super::super::PRODUCER_ID_BLOCK
                ))
            );
        });
    }

    #[test]
    fn parses_voters() {
        let v = parse_voters("1@127.0.0.1:9093, 2@127.0.0.1:9094").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[&2].port(), 9094);
        assert!(parse_voters("1@127.0.0.1:1,1@127.0.0.1:2").is_err());
        assert!(parse_voters("x@127.0.0.1:1").is_err());
        assert!(parse_voters("1-127.0.0.1:1").is_err());
        assert!(parse_voters("1@nowhere").is_err());
    }
}
