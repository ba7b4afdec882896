//! A shard: one core's executor, and the routing between it and the other shards.
//!
//! Lifecycle: one `Shard` exists per executor thread for the life of the process. It owns
//! the replicas of the partitions the placement assigns to its core (a `ReplicaSet`), the
//! group coordinator of the offsets partitions among them, and on shard 0 the broker's
//! controller glue. Other shards reach them by sending a [`ShardMessage`] over the channel
//! mesh; the reply comes back on a oneshot channel carried in the message.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;

use futures::FutureExt;
use futures::channel::oneshot;

use super::memory::ResponseMemory;
use super::work::{self, FetchWork, ListOffsetsWork, ProduceWork, Slotted, WaitWork, place};
use crate::cluster::TopicMeta;
use crate::cluster::commands::{IsrChange, OfflinePartition};
use crate::cluster::controller::{Controller, ControllerRequest, ControllerResponse};
use crate::cluster::quorum::{MetadataImage, Quorum};
use crate::config::{BrokerConfig, BrokerSettings, TopicSettings};
use crate::group::coordinator::{
    Coordinator, CoordinatorConfig, GroupAnswer, GroupWork, ListedGroup,
};
use crate::replication::fetcher;
use crate::replication::partition::IsrAnswer;
use crate::replication::replica::ReplicaHost;
use crate::replication::replicas::ReplicaSet;
use crate::runtime::{Semaphore, Senders, spawn_local};

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
    /// To the shard owning the group's offsets partition, routed by the sender's metadata
    /// image at this offset.
    Group(GroupWork, u64, oneshot::Sender<GroupAnswer>),
    /// The groups this shard coordinates.
    ListGroups(oneshot::Sender<Vec<ListedGroup>>),
}

pub struct Shard {
    pub id: usize,
    pub count: usize,
    pub config: BrokerConfig,
    /// `config` resolved once, for request handling.
    pub settings: BrokerSettings,
    pub replicas: Rc<ReplicaSet>,
    /// The consumer groups of the offsets partitions this shard leads.
    pub coordinator: Rc<Coordinator>,
    /// Memory of the Fetch responses of this shard's connections.
    pub fetch_responses: Rc<ResponseMemory>,
    /// Shard 0's controller glue; `None` on the others.
    pub controller: Option<Rc<Controller>>,
    mesh: Senders<ShardMessage>,
    /// Metadata images are applied one at a time, in offset order.
    applying: Semaphore,
    /// Fired by the first image in which this broker is registered and live.
    first_metadata: RefCell<Option<oneshot::Sender<()>>>,
    /// The offset of the last image this shard applied in full (logs, roles, coordinator),
    /// and the work waiting for a later one.
    applied: Cell<u64>,
    applied_waiters: RefCell<Vec<(u64, oneshot::Sender<()>)>>,
}

impl Shard {
    /// `quorum`: shard 0's controller quorum member; `None` on the other shards.
    pub fn new(
        config: BrokerConfig,
        mesh: Senders<ShardMessage>,
        quorum: Option<Rc<Quorum>>,
        first_metadata: oneshot::Sender<()>,
        inter_broker_tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Rc<Self> {
        let (id, count) = (mesh.peer_id(), mesh.nr_consumers());
        let settings = config.settings();
        Rc::new_cyclic(|me: &Weak<Shard>| {
            let host = ReplicaHost {
                node_id: settings.node_id,
                alter_partition: alter_partition(me.clone()),
                report_offline: report_offline(me.clone()),
                stopping: Cell::new(false),
                inter_broker_tls,
            };
            let controller = quorum.map(|quorum| {
                let broadcast = broadcast(me.clone());
                Rc::new(Controller::new(quorum, settings.clone(), count, broadcast))
            });
            Self {
                id,
                count,
                replicas: ReplicaSet::new(id, count, &config, Rc::new(host)),
                coordinator: Coordinator::new(CoordinatorConfig::of(&settings)),
                fetch_responses: ResponseMemory::new(settings.fetch_response_bytes_per_shard),
                settings,
                controller,
                config,
                mesh,
                applying: Semaphore::new(1),
                first_metadata: RefCell::new(Some(first_metadata)),
                applied: Cell::new(0),
                applied_waiters: RefCell::new(Vec::new()),
            }
        })
    }

    /// The current metadata image (cheap: an `Arc` clone).
    pub fn metadata(&self) -> Arc<MetadataImage> {
        self.replicas.image()
    }

    pub fn node_id(&self) -> i32 {
        self.settings.node_id
    }

    /// A topic's resolved settings, `None` for a topic the applied metadata does not have.
    pub fn topic_settings(&self, topic: &str) -> Option<TopicSettings> {
        self.replicas.topic_settings(topic)
    }

    pub fn owner(&self, topic: &TopicMeta, partition: i32) -> usize {
        self.replicas.owner(topic, partition)
    }

    /// Stops the background loops: fetchers, ISR changes, group timers, heartbeats.
    pub fn stop(&self) {
        self.replicas.stop();
        self.coordinator.stop();
        if let Some(controller) = &self.controller {
            controller.stop();
        }
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
                let pending = work::append(&self.replicas, w);
                answer(reply, pending.finish());
            }
            ShardMessage::Fetch(w, reply) => answer(reply, work::read(self.replicas.clone(), w)),
            ShardMessage::WaitForData(w, reply) => {
                answer(reply, work::wait_for_data(self.replicas.clone(), w))
            }
            ShardMessage::ListOffsets(w, reply) => {
                answer(reply, work::list_offsets(self.replicas.clone(), w))
            }
            ShardMessage::Controller(request, reply) => {
                let controller = self.controller.clone();
                answer(reply, async move {
                    match controller {
                        Some(c) => c.handle(request).await,
                        None => ControllerResponse::NotController,
                    }
                })
            }
            ShardMessage::Group(w, routed_at, reply) => {
                let shard = self.clone();
                answer(reply, async move {
                    // Shards apply an image each on its own: the sender may be ahead.
                    shard.caught_up(routed_at).await;
                    shard.coordinator.handle(w).await
                })
            }
            ShardMessage::ListGroups(reply) => {
                let _ = reply.send(self.coordinator.list());
            }
            ShardMessage::ApplyMetadata(image, reply) => {
                let shard = self.clone();
                answer(reply, async move { shard.apply_metadata(image).await })
            }
        }
    }

    /// Sends a metadata image to every shard (this one included) and waits until all of
    /// them have opened or removed their logs to match it.
    pub async fn broadcast_metadata(self: &Rc<Self>, image: Arc<MetadataImage>) {
        let calls = (0..self.count).map(|target| {
            let image = image.clone();
            self.call(target, move |tx| ShardMessage::ApplyMetadata(image, tx))
        });
        futures::future::join_all(calls).await;
    }

    /// Brings this shard's replicas and coordinator in line with `image`, one image at a
    /// time; the first image that lists this broker as live lets the shard accept clients.
    pub(super) async fn apply_metadata(self: &Rc<Self>, image: Arc<MetadataImage>) {
        let Ok(_turn) = self.applying.acquire_permit(1).await else {
            return;
        };
        for leader in self.replicas.apply(image.clone()).await {
            spawn_local(fetcher::follow(self.replicas.clone(), leader)).detach();
        }
        // Only the offsets topic's replicas matter to the coordinator.
        let offsets = self.replicas.of_topic(crate::group::OFFSETS_TOPIC);
        self.coordinator.on_roles(&offsets);
        self.applied.set(self.applied.get().max(image.offset));
        let applied = self.applied.get();
        self.applied_waiters
            .borrow_mut()
            .retain_mut(|(offset, _)| *offset > applied);
        if image.is_live(self.node_id())
            && let Some(first) = self.first_metadata.borrow_mut().take()
        {
            let _ = first.send(());
        }
    }
}

impl Shard {
    /// Resolves once this shard applied the image at `offset` in full, or after
    /// `CATCH_UP_WAIT` (the image may have been superseded; the work then runs on what is
    /// applied).
    async fn caught_up(&self, offset: u64) {
        if self.applied.get() >= offset {
            return;
        }
        let (tx, rx) = oneshot::channel();
        self.applied_waiters.borrow_mut().push((offset, tx));
        let timer = Box::pin(crate::runtime::delay(CATCH_UP_WAIT));
        let _ = futures::future::select(rx, timer).await;
    }
}

/// How long work routed by a newer image waits for its shard to apply that image.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `work` in its own task and sends its outcome back.
fn answer<T: 'static>(reply: oneshot::Sender<T>, work: impl Future<Output = T> + 'static) {
    spawn_local(async move {
        let _ = reply.send(work.await);
    })
    .detach();
}

/// How replicas send ISR changes: to shard 0's controller, over the mesh.
fn alter_partition(shard: Weak<Shard>) -> crate::replication::replica::AlterPartition {
    Rc::new(move |change: IsrChange| {
        let shard = shard.clone();
        async move {
            let request = ControllerRequest::AlterPartition(change);
            match ask_controller(&shard, request).await {
                Some(ControllerResponse::Done(Ok(()))) => IsrAnswer::Committed,
                Some(ControllerResponse::Done(Err(e))) => IsrAnswer::Refused(e.code),
                // No controller reached, or an answer of another kind: try again.
                _ => IsrAnswer::Unknown,
            }
        }
        .boxed_local()
    })
}

/// How replicas report their logs offline: to shard 0's controller, over the mesh.
fn report_offline(shard: Weak<Shard>) -> crate::replication::replica::ReportOffline {
    Rc::new(move |partition: OfflinePartition| {
        let shard = shard.clone();
        async move {
            let request = ControllerRequest::ReplicasOffline(vec![partition]);
            matches!(
                ask_controller(&shard, request).await,
                Some(ControllerResponse::Done(Ok(())))
            )
        }
        .boxed_local()
    })
}

/// Sends `request` to shard 0's controller glue; `None` if the broker is going away.
async fn ask_controller(
    shard: &Weak<Shard>,
    request: ControllerRequest,
) -> Option<ControllerResponse> {
    let shard = shard.upgrade()?;
    shard
        .call(0, |tx| ShardMessage::Controller(request, tx))
        .await
}

/// How the controller glue makes every shard apply an image.
fn broadcast(shard: Weak<Shard>) -> crate::cluster::controller::Broadcast {
    Rc::new(move |image: Arc<MetadataImage>| {
        let shard = shard.clone();
        async move {
            if let Some(shard) = shard.upgrade() {
                shard.broadcast_metadata(image).await;
            }
        }
        .boxed_local()
    })
}
