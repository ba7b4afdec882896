//! A shard: one core's executor and the partitions it owns.
//!
//! Lifecycle: one `Shard` exists per executor thread for the life of the process. It owns the
//! logs of the partitions [`owner_of`] assigns to it; only it appends to, reads and trims
//! them. Other shards reach those partitions by sending a [`ShardMessage`] over the channel
//! mesh; the reply comes back on a oneshot channel carried in the message.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use futures::channel::oneshot;
use uuid::Uuid;

use super::controller::{Controller, ControllerRequest, ControllerResponse};
use super::coordinator::{self, Coordinator, GroupAnswer, GroupWork, ListedGroup};
use super::work::{self, FetchWork, ListOffsetsWork, ProduceWork, WaitWork};
use crate::cluster::TopicMeta;
use crate::cluster::quorum::MetadataImage;
use crate::config::BrokerConfig;
use crate::replication::replica::Replica;
use crate::runtime::{Semaphore, Senders, spawn_local};
use crate::storage::{LogConfig, PartitionLog};

/// Work sent from one shard to another. Each variant carries the channel its answer goes
/// back on, typed by what the answer is.
pub enum ShardMessage {
    Produce(ProduceWork, oneshot::Sender<Vec<work::ProduceOutcome>>),
    Fetch(FetchWork, oneshot::Sender<Vec<work::FetchOutcome>>),
    WaitForData(WaitWork, oneshot::Sender<()>),
    ListOffsets(
        ListOffsetsWork,
        oneshot::Sender<Vec<work::ListOffsetsOutcome>>,
    ),
    /// To shard 0 only: a metadata change.
    Controller(ControllerRequest, oneshot::Sender<ControllerResponse>),
    /// From shard 0: the new metadata; the reply says the shard's logs match it.
    ApplyMetadata(Arc<MetadataImage>, oneshot::Sender<()>),
    /// To the shard owning the group's offsets partition.
    Group(GroupWork, oneshot::Sender<GroupAnswer>),
    /// The groups this shard coordinates.
    ListGroups(oneshot::Sender<Vec<ListedGroup>>),
}

/// The shard whose core owns `partition` of `topic`: partitions of one topic go round-robin
/// over the shards, starting at a shard chosen by the topic id so topics do not pile up on
/// shard 0.
pub fn owner_of(topic_id: Uuid, partition: i32, shard_count: usize) -> usize {
    let start = topic_id.as_u64_pair().0 as usize;
    start.wrapping_add(partition as usize) % shard_count
}

type LogKey = (String, i32);

/// A per-partition outcome that knows its place in the request.
pub trait Slotted {
    fn slot(&self) -> usize;
}

/// Puts a shard's outcomes at their slots; a missing reply (a stopping shard) leaves the
/// slots as they were.
pub fn place<O: Slotted>(outcomes: &mut [O], reply: Option<Vec<O>>) {
    for outcome in reply.unwrap_or_default() {
        let slot = outcome.slot();
        outcomes[slot] = outcome;
    }
}

pub struct Shard {
    pub id: usize,
    pub count: usize,
    pub config: BrokerConfig,
    metadata: RefCell<Arc<MetadataImage>>,
    /// Metadata images are applied one at a time, in offset order.
    applying: Semaphore,
    /// The replicas this shard owns. A topic deleted and created again under the same name
    /// gets a new id and a fresh log.
    replicas: RefCell<HashMap<LogKey, Rc<Replica>>>,
    /// Leaders this shard runs a fetch loop for.
    pub following: RefCell<HashSet<i32>>,
    mesh: Senders<ShardMessage>,
    /// Shard 0's controller; `None` on the others.
    pub controller: Option<Controller>,
    /// The consumer groups of the offsets partitions this shard leads.
    pub coordinator: Coordinator,
    /// Fired by the first image in which this broker is registered and live.
    first_metadata: RefCell<Option<oneshot::Sender<()>>>,
    pub stopping: Cell<bool>,
}

impl Shard {
    pub fn new(
        config: BrokerConfig,
        mesh: Senders<ShardMessage>,
        controller: Option<Controller>,
        first_metadata: oneshot::Sender<()>,
    ) -> Rc<Self> {
        let empty = MetadataImage {
            metadata: crate::cluster::ClusterMetadata::new(String::new()),
            offset: 0,
            controller_id: -1,
        };
        Rc::new(Self {
            id: mesh.peer_id(),
            count: mesh.nr_consumers(),
            controller,
            config,
            metadata: RefCell::new(Arc::new(empty)),
            applying: Semaphore::new(1),
            replicas: RefCell::new(HashMap::new()),
            following: RefCell::new(HashSet::new()),
            mesh,
            coordinator: Coordinator::default(),
            first_metadata: RefCell::new(Some(first_metadata)),
            stopping: Cell::new(false),
        })
    }

    /// The current metadata image (cheap: an `Arc` clone).
    pub fn metadata(&self) -> Arc<MetadataImage> {
        self.metadata.borrow().clone()
    }

    pub fn node_id(&self) -> i32 {
        self.config.node_id()
    }

    pub fn owner(&self, topic: &TopicMeta, partition: i32) -> usize {
        owner_of(topic.id, partition, self.count)
    }

    pub fn log(&self, topic: &str, partition: i32) -> Option<Rc<PartitionLog>> {
        self.replica(topic, partition).map(|r| r.log.clone())
    }

    pub fn replica(&self, topic: &str, partition: i32) -> Option<Rc<Replica>> {
        self.replicas
            .borrow()
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// The replicas of this shard that follow `leader`, with the leader epoch they follow.
    pub fn replicas_following(&self, leader: i32) -> Vec<(Rc<Replica>, i32)> {
        self.replicas
            .borrow()
            .values()
            .filter_map(|r| match r.following() {
                Some((l, epoch)) if l == leader => Some((r.clone(), epoch)),
                _ => None,
            })
            .collect()
    }

    /// Every replica this shard owns.
    pub fn all_replicas(&self) -> Vec<Rc<Replica>> {
        self.replicas.borrow().values().cloned().collect()
    }

    /// Sends `message` to shard `target` (or runs it here when `target` is this shard).
    /// Returns once the message is queued, so a caller that sends in order has its work
    /// started in order; the answer arrives on the receiver held by the caller.
    pub async fn send(self: &Rc<Self>, target: usize, message: ShardMessage) {
        if target == self.id {
            self.handle(message);
        } else if let Err(e) = self.mesh.send_to(target, message).await {
            // Only at shutdown: the message (and its reply sender) is dropped, which the
            // caller sees as a closed reply channel.
            tracing::debug!(target, "shard channel closed: {e}");
        }
    }

    /// Sends the same request to shard `target` and waits for its answer.
    pub async fn call<R>(
        self: &Rc<Self>,
        target: usize,
        make: impl FnOnce(oneshot::Sender<R>) -> ShardMessage,
    ) -> Option<R> {
        let (tx, rx) = oneshot::channel();
        self.send(target, make(tx)).await;
        rx.await.ok()
    }

    /// One empty list per shard, to sort a request's partitions by owner.
    pub fn per_shard<T>(&self) -> Vec<Vec<T>> {
        (0..self.count).map(|_| Vec::new()).collect()
    }

    /// Sends each shard its parts in one message, waits for all answers and puts every
    /// outcome back at its slot.
    pub async fn scatter<P, O: Slotted>(
        self: &Rc<Self>,
        by_shard: Vec<Vec<P>>,
        make: impl Fn(Vec<P>, oneshot::Sender<Vec<O>>) -> ShardMessage,
        outcomes: &mut [O],
    ) {
        let calls = by_shard
            .into_iter()
            .enumerate()
            .filter(|(_, parts)| !parts.is_empty())
            .map(|(target, parts)| self.call(target, |tx| make(parts, tx)));
        for reply in futures::future::join_all(calls).await {
            place(outcomes, reply);
        }
    }

    /// Handles a message from any shard. The synchronous part (a produce's appends) runs
    /// before this returns, preserving arrival order; waiting runs in a spawned task.
    pub fn handle(self: &Rc<Self>, message: ShardMessage) {
        match message {
            ShardMessage::Produce(w, reply) => {
                let pending = work::append(self, w);
                spawn_local(async move {
                    let _ = reply.send(pending.finish().await);
                })
                .detach();
            }
            ShardMessage::Fetch(w, reply) => {
                let shard = self.clone();
                spawn_local(async move {
                    let _ = reply.send(work::read(&shard, w).await);
                })
                .detach();
            }
            ShardMessage::WaitForData(w, reply) => {
                let shard = self.clone();
                spawn_local(async move {
                    work::wait_for_data(&shard, w).await;
                    let _ = reply.send(());
                })
                .detach();
            }
            ShardMessage::ListOffsets(w, reply) => {
                let shard = self.clone();
                spawn_local(async move {
                    let _ = reply.send(work::list_offsets(&shard, w).await);
                })
                .detach();
            }
            ShardMessage::Controller(request, reply) => {
                let shard = self.clone();
                spawn_local(async move {
                    let response = match &shard.controller {
                        Some(c) => c.handle(&shard, request).await,
                        None => ControllerResponse::NotController,
                    };
                    let _ = reply.send(response);
                })
                .detach();
            }
            ShardMessage::Group(w, reply) => {
                let shard = self.clone();
                spawn_local(async move {
                    let _ = reply.send(coordinator::handle(&shard, w).await);
                })
                .detach();
            }
            ShardMessage::ListGroups(reply) => {
                let _ = reply.send(self.coordinator.list());
            }
            ShardMessage::ApplyMetadata(snapshot, reply) => {
                let shard = self.clone();
                spawn_local(async move {
                    shard.apply_metadata(snapshot).await;
                    let _ = reply.send(());
                })
                .detach();
            }
        }
    }

    /// Sends a metadata image to every shard (this one included) and waits until all of
    /// them have opened or removed their logs to match it.
    pub async fn broadcast_metadata(self: &Rc<Self>, snapshot: Arc<MetadataImage>) {
        let calls = (0..self.count).map(|target| {
            let snapshot = snapshot.clone();
            self.call(target, move |tx| ShardMessage::ApplyMetadata(snapshot, tx))
        });
        futures::future::join_all(calls).await;
    }

    /// Makes this shard's logs match `snapshot`: removes the logs of deleted topics, opens
    /// (and recovers) the logs of the replicas it owns that are not open yet. An image older
    /// than the one applied is ignored (broadcasts may overtake each other).
    async fn apply_metadata(self: &Rc<Self>, snapshot: Arc<MetadataImage>) {
        let Ok(_turn) = self.applying.acquire_permit(1).await else {
            return;
        };
        if snapshot.offset < self.metadata.borrow().offset {
            return;
        }
        self.metadata.replace(snapshot.clone());
        let stale: Vec<Rc<Replica>> = {
            let mut replicas = self.replicas.borrow_mut();
            let keys: Vec<LogKey> = replicas
                .iter()
                .filter(|((name, _), r)| {
                    snapshot.topics.get(name).is_none_or(|t| t.id != r.topic_id)
                })
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| replicas.remove(k)).collect()
        };
        for replica in stale {
            if let Err(e) = replica.log.clone().remove().await {
                tracing::error!("removing a deleted partition's log failed: {e}");
            }
        }
        let node = self.node_id();
        for topic in snapshot.topics.values() {
            for (partition, state) in (0..).zip(&topic.partitions) {
                if state.replicas.contains(&node)
                    && self.owner(topic, partition) == self.id
                    && self.log(&topic.name, partition).is_none()
                {
                    self.open_log(topic, partition).await;
                }
            }
        }
        self.apply_roles(&snapshot);
        if snapshot.is_live(node)
            && let Some(first) = self.first_metadata.borrow_mut().take()
        {
            let _ = first.send(());
        }
    }

    async fn open_log(&self, topic: &TopicMeta, partition: i32) {
        let dir = self.partition_dir(&topic.name, partition);
        match PartitionLog::open(&dir, self.log_config(topic)).await {
            Ok(log) => {
                let replica = Replica::new(topic.name.clone(), partition, topic.id, log);
                self.replicas
                    .borrow_mut()
                    .insert((topic.name.clone(), partition), Rc::new(replica));
            }
            // The partition stays unavailable (clients get KAFKA_STORAGE_ERROR-like errors
            // as UNKNOWN_TOPIC_OR_PARTITION) rather than the broker dying on a bad disk.
            Err(e) => tracing::error!("cannot open {}: {e}", dir.display()),
        }
    }

    /// Where clients reach this broker: `advertised.listeners` (`[PLAINTEXT://]host:port`),
    /// else the listen address (`localhost` when listening on every interface).
    pub fn advertised_address(&self) -> (String, u16) {
        let advertised = self.config.text("advertised.listeners");
        let advertised = advertised.rsplit("://").next().unwrap_or_default();
        if let Some((host, port)) = advertised.rsplit_once(':')
            && let Ok(port) = port.parse()
        {
            return (host.to_string(), port);
        }
        let listen = self.config.listen;
        let host = if listen.ip().is_unspecified() {
            "localhost".to_string()
        } else {
            listen.ip().to_string()
        };
        (host, listen.port())
    }

    pub fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.config.data_dir.join(format!("{topic}-{partition}"))
    }

    /// The storage settings of a topic: its own configs over the broker's defaults.
    pub fn log_config(&self, topic: &TopicMeta) -> LogConfig {
        let get = |key| topic.config.int(key, &self.config);
        LogConfig {
            segment_bytes: get("segment.bytes") as u64,
            segment_ms: get("segment.ms") as u64,
            retention_ms: get("retention.ms"),
            retention_bytes: get("retention.bytes"),
            index_interval_bytes: self.config.int("log.index.interval.bytes") as u32,
            tail_cache_bytes: self.config.int("corelog.tail.cache.bytes") as usize,
        }
    }

    /// Every log this shard owns.
    pub fn all_logs(&self) -> Vec<Rc<PartitionLog>> {
        self.replicas
            .borrow()
            .values()
            .map(|r| r.log.clone())
            .collect()
    }

    /// Makes every replica leader or follower as the image says, and starts a fetch loop
    /// for each leader that this shard now follows.
    fn apply_roles(self: &Rc<Self>, image: &MetadataImage) {
        let node = self.node_id();
        let now_ms = crate::storage::now_ms();
        for replica in self.all_replicas() {
            let Some(topic) = image.topics.get(&replica.topic) else {
                continue;
            };
            let Some(state) = topic.partition(replica.partition) else {
                continue;
            };
            let min_isr = topic.config.int("min.insync.replicas", &self.config) as usize;
            replica.apply(node, state, now_ms, min_isr);
            if let Some((leader, _)) = replica.following()
                && self.following.borrow_mut().insert(leader)
            {
                spawn_local(super::replicator::follow(self.clone(), leader)).detach();
            }
        }
        self.coordinator.on_roles(self);
    }

    /// `min.insync.replicas` of a topic.
    pub fn min_isr(&self, topic: &str) -> usize {
        self.metadata().topics.get(topic).map_or(1, |t| {
            t.config.int("min.insync.replicas", &self.config) as usize
        })
    }
}
