//! The KRaft-style controller quorum: a `raft` crate `RawNode` on shard 0 of every voter,
//! its log persisted in a [`wal::RaftWal`], messages carried by a [`transport::Transport`].
//!
//! Lifecycle: started once per voter process on shard 0, lives until the process exits. The
//! driver task is the only owner of the `RawNode` and the WAL; everything else talks to it
//! through its inbox. Every voter applies the committed [`MetadataCommand`]s to its own
//! [`ClusterMetadata`] and publishes the result as an immutable [`MetadataImage`] (from the
//! image that holds this process's registration on: before, its replayed log describes the
//! previous process's leaderships).
//!
//! The leader also watches broker liveness: brokers heartbeat to it, and a broker silent
//! for `broker.session.timeout.ms` is fenced through the log (and unfenced when it is heard
//! again).
//!
//! The decisions (the order of a `Ready`'s sends, writes and applies, snapshots, liveness)
//! are in [`core`], without I/O, which the replication simulation drives too; this module is
//! the async shell (on the runtime) around it.

pub(crate) mod core;
pub(crate) mod store;
pub mod transport;
pub mod validate;
pub mod wal;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use raft::StateRole;
use raft::eraftpb::Message;

use self::core::{Liveness, Proposal, TICK, Voter, raft_config};
use super::ClusterMetadata;
use super::commands::{CommandOutcome, MetadataCommand};
use crate::runtime::{LocalReceiver, LocalSender, delay, local_bounded, spawn_local};
use transport::{Heartbeat, Incoming, Received, Transport};
use wal::RaftWal;

const INBOX_CAPACITY: usize = 4096;

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

enum Input {
    Tick,
    Peer(Received),
    Propose(Proposal, oneshot::Sender<CommandOutcome>),
}

pub struct Quorum {
    node_id: u64,
    /// Drawn at every start of the process: the broker registers with it.
    incarnation: u64,
    inbox: Rc<LocalSender<Input>>,
    transport: Option<Rc<Transport>>,
    /// The other voters.
    peers: Vec<u64>,
    leader: Cell<u64>,
    is_leader: Cell<bool>,
    next_request: Cell<u64>,
    image: RefCell<Arc<MetadataImage>>,
    liveness: RefCell<Liveness>,
    /// Called with each new image, once the metadata holds this process's registration
    /// (`core::registered`).
    publish: Box<dyn Fn(Arc<MetadataImage>)>,
    /// Told why, once the metadata log can no longer be written ([`Quorum::log_failure`]).
    log_failed: RefCell<Vec<oneshot::Sender<String>>>,
    /// This node's metadata log held nothing when the process started: a new node (of a
    /// new cluster, unless it joins an existing one).
    started_empty: bool,
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
        let started_empty = recovered.snapshot.is_none() && recovered.entries.is_empty();
        let voters: Vec<u64> = config.voters.keys().copied().collect();
        let voter = Voter::recover(
            raft_config(config.node_id),
            &voters,
            &config.cluster_id,
            recovered,
        )?;
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
            let transport =
                Transport::start(config.node_id, &config.cluster_id, listen, peers, peer_tx)?;
            spawn_local(forward_peers(peer_rx, inbox.clone())).detach();
            Some(transport)
        } else {
            None
        };
        let image = MetadataImage {
            metadata: voter.metadata.clone(),
            offset: voter.applied,
            controller_id: -1,
        };
        let quorum = Rc::new(Quorum {
            peers: voters
                .iter()
                .copied()
                .filter(|id| *id != config.node_id)
                .collect(),
            node_id: config.node_id,
            incarnation: rand::random(),
            inbox: inbox.clone(),
            transport,
            leader: Cell::new(raft::INVALID_ID),
            is_leader: Cell::new(false),
            next_request: Cell::new(rand::random::<u64>() >> 16),
            image: RefCell::new(Arc::new(image)),
            liveness: RefCell::new(Liveness::new(config.session_timeout)),
            publish: Box::new(publish),
            log_failed: RefCell::default(),
            started_empty,
        });
        spawn_local(tick(inbox)).detach();
        spawn_local(drive(quorum.clone(), voter, wal, receiver)).detach();
        Ok(quorum)
    }

    /// Resolves with the reason once a write or fsync of the metadata log (its WAL or a
    /// snapshot) failed: this voter has stopped, and a broker that went on would serve
    /// frozen metadata, so the broker around it must stop too.
    pub fn log_failure(&self) -> oneshot::Receiver<String> {
        let (tx, rx) = oneshot::channel();
        self.log_failed.borrow_mut().push(tx);
        rx
    }

    fn fail_log(&self, reason: String) {
        tracing::error!("{reason}");
        for tx in self.log_failed.borrow_mut().drain(..) {
            let _ = tx.send(reason.clone());
        }
    }

    /// Whether this node's metadata log was empty when the process started.
    pub fn started_empty(&self) -> bool {
        self.started_empty
    }

    /// This process's incarnation, which its broker registers with.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
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
        let image = self.image();
        self.liveness
            .borrow_mut()
            .heard(&heartbeat, &image.metadata, Instant::now());
    }

    /// Closes the inbound connection a refused message came on.
    fn close(&self, conn: transport::ConnId, reason: &str) {
        if let Some(t) = &self.transport {
            t.close(conn, reason);
        }
    }

    fn send(&self, messages: Vec<Message>) {
        if let Some(t) = &self.transport {
            for m in messages {
                t.send_raft(m);
            }
        }
    }

    /// Leader duty at every tick: fence brokers not heard from within the session timeout,
    /// unfence fenced brokers heard from again ([`Liveness::due`]).
    fn check_liveness(self: &Rc<Self>) {
        let image = self.image();
        let changes = self
            .liveness
            .borrow_mut()
            .due(&image.metadata, image.offset, Instant::now());
        for (id, command) in changes {
            tracing::info!(broker = id, ?command, "broker liveness changed");
            let quorum = self.clone();
            spawn_local(async move {
                quorum.propose(command, TICK * 30).await;
                quorum.liveness.borrow_mut().settled(id);
            })
            .detach();
        }
    }

    /// On becoming leader (or after a pause): see [`Liveness::on_leadership`].
    fn on_leadership(&self, paused: bool) {
        let image = self.image();
        self.liveness
            .borrow_mut()
            .on_leadership(&image.metadata, paused, Instant::now());
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

async fn forward_peers(peers: LocalReceiver<Received>, inbox: Rc<LocalSender<Input>>) {
    while let Some(message) = peers.recv().await {
        if inbox.send(Input::Peer(message)).await.is_err() {
            return;
        }
    }
}

/// The driver: feeds inputs to the `RawNode` and handles its `Ready`s.
async fn drive(
    quorum: Rc<Quorum>,
    mut voter: Voter,
    mut wal: RaftWal,
    inbox: LocalReceiver<Input>,
) {
    let mut pending: HashMap<u64, oneshot::Sender<CommandOutcome>> = HashMap::new();
    let mut last_tick = Instant::now();
    while let Some(input) = inbox.recv().await {
        match input {
            Input::Tick => {
                voter.node.tick();
                // A process that was paused (SIGSTOP, a stalled VM) has not been reading
                // heartbeats: give every broker a fresh session rather than fence them all.
                if last_tick.elapsed() > TICK * 5 {
                    quorum.on_leadership(true);
                }
                last_tick = Instant::now();
                if voter.node.raft.state == StateRole::Leader {
                    quorum.check_liveness();
                }
            }
            Input::Peer(Received {
                conn,
                incoming: Incoming::Raft(m),
            }) => {
                let from = m.from;
                if let Err(refusal) = voter.step_checked(m) {
                    quorum.close(conn, &format!("controller {from} sent {refusal}"));
                }
            }
            Input::Peer(Received {
                incoming: Incoming::Heartbeat(heartbeat),
                ..
            }) => {
                quorum.record_heartbeat(heartbeat);
            }
            Input::Propose(proposal, reply) => match voter.propose(&proposal) {
                Ok(()) => {
                    pending.insert(proposal.request_id, reply);
                }
                // Dropped (no leader known yet): the proposer times out and retries.
                Err(e @ core::ProposeError::Dropped(_)) => tracing::debug!("{e}"),
                Err(e) => tracing::error!("{e}"),
            },
        }
        if !voter.node.has_ready() {
            continue;
        }
        let changed = match handle_ready(&quorum, &mut voter, &mut wal, &mut pending).await {
            Ok(changed) => changed,
            Err(e) => {
                // The log cannot be persisted: stop taking part rather than vote or ack
                // without durability.
                quorum.fail_log(format!("metadata log failed, this controller stops: {e}"));
                return;
            }
        };
        let leader = voter.node.raft.leader_id;
        let was_leader = quorum.is_leader.get();
        quorum.leader.set(leader);
        quorum
            .is_leader
            .set(voter.node.raft.state == StateRole::Leader);
        if quorum.is_leader.get() && !was_leader {
            tracing::info!(
                node = quorum.node_id,
                term = voter.node.raft.term,
                "became the active controller"
            );
            quorum.on_leadership(false);
        }
        if changed.is_some()
            && let Err(e) = snapshot_if_due(&mut voter, &mut wal).await
        {
            quorum.fail_log(format!(
                "metadata snapshot failed, this controller stops: {e}"
            ));
            return;
        }
        let image = quorum.image();
        if changed.is_some() || image.controller_id != leader as i32 {
            let fresh = Arc::new(MetadataImage {
                metadata: voter.metadata.clone(),
                offset: voter.applied,
                controller_id: if leader == raft::INVALID_ID {
                    -1
                } else {
                    leader as i32
                },
            });
            quorum.image.replace(fresh.clone());
            if core::registered(&fresh.metadata, quorum.node_id as i32, quorum.incarnation) {
                (quorum.publish)(fresh);
            }
        }
    }
}

/// Every `SNAPSHOT_EVERY_ENTRIES`, snapshots the metadata and compacts the log and WAL.
async fn snapshot_if_due(voter: &mut Voter, wal: &mut RaftWal) -> anyhow::Result<()> {
    let Some(c) = voter.compaction_due()? else {
        return Ok(());
    };
    wal.compact(&c.snapshot, &c.hard_state, &c.entries).await?;
    tracing::info!(
        index = voter.applied,
        "metadata snapshot written, log compacted"
    );
    Ok(())
}

/// Sends, persists and applies one `Ready` ([`Voter::begin_ready`], the WAL writes,
/// [`Voter::finish_ready`]); answers the proposals this node made. Returns the last applied
/// index if any entry was applied.
async fn handle_ready(
    quorum: &Quorum,
    voter: &mut Voter,
    wal: &mut RaftWal,
    pending: &mut HashMap<u64, oneshot::Sender<CommandOutcome>>,
) -> anyhow::Result<Option<u64>> {
    let mut io = voter.begin_ready()?;
    quorum.send(std::mem::take(&mut io.messages));
    if let Some((snapshot, hard_state)) = &io.snapshot {
        wal.compact(snapshot, hard_state, &[]).await?;
    }
    if !io.entries.is_empty() || io.hard_state.is_some() {
        wal.persist(&io.entries, io.hard_state.as_ref()).await?;
    }
    let done = voter.finish_ready(io)?;
    quorum.send(done.messages);
    for applied in done.applied {
        if let Some(reply) = pending.remove(&applied.request_id) {
            let _ = reply.send(applied.outcome);
        }
    }
    Ok(done.applied_index)
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
            assert!(
                snapshot_index >= core::SNAPSHOT_EVERY_ENTRIES,
                "{snapshot_index}"
            );
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
