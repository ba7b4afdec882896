//! A broker's side of the control plane, on its shard 0: turns admin requests into metadata
//! commands for the controller quorum, registers this broker, heartbeats, and hands out
//! producer ids.
//!
//! Every change is answered only after every shard of this broker applied the metadata that
//! contains it (through the `broadcast` the broker gives it), so a client that saw its topic
//! created finds it on every shard.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::future::LocalBoxFuture;
use uuid::Uuid;

use super::commands::{CommandOutcome, IsrChange, MetadataCommand, OfflinePartition};
use super::limits::PartitionLimits;
use super::quorum::transport::Heartbeat;
use super::quorum::{MetadataImage, Quorum};
use super::topics::{NewTopic, TopicError, TopicRef};
use super::{BrokerInfo, PRODUCER_ID_BLOCK, TopicMeta};
use crate::config::BrokerSettings;
use crate::protocol::ErrorCode;
use crate::runtime::delay;
use crate::security::acl::{AclBinding, AclBindingFilter};

/// How long a proposal may wait for the quorum before the client is told to retry.
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(5);

pub enum ControllerRequest {
    CreateTopics {
        topics: Vec<NewTopic>,
        validate_only: bool,
    },
    CreatePartitions {
        topic: String,
        count: i32,
        validate_only: bool,
    },
    DeleteTopics(Vec<TopicRef>),
    AllocateProducerId,
    AlterPartition(IsrChange),
    /// This broker's replicas of these partitions went offline (KIP-112).
    ReplicasOffline(Vec<OfflinePartition>),
    CreateAcls(Vec<AclBinding>),
    DeleteAcls(Vec<AclBindingFilter>),
}

pub enum ControllerResponse {
    /// Per requested topic: the created (or deleted) topic, or why not.
    Topics(Vec<Result<Arc<TopicMeta>, TopicError>>),
    Done(Result<(), TopicError>),
    ProducerId(Result<i64, TopicError>),
    /// Per binding of a CreateAcls: added, or why not.
    AclsCreated(Vec<Result<(), TopicError>>),
    /// Per filter of a DeleteAcls: the bindings it removed.
    AclsDeleted(Vec<Vec<AclBinding>>),
    NotController,
}

/// Sends a metadata image to every shard of this broker; resolves once all applied it.
pub type Broadcast = Rc<dyn Fn(Arc<MetadataImage>) -> LocalBoxFuture<'static, ()>>;

pub struct Controller {
    pub quorum: Rc<Quorum>,
    /// This broker's block of producer ids: next to hand out, and end (exclusive).
    producer_ids: Cell<(i64, i64)>,
    /// Changes at every start of this process.
    pub incarnation: u64,
    /// Where clients reach this broker when `advertised.listeners` is empty.
    listen: std::net::SocketAddr,
    settings: BrokerSettings,
    shard_count: usize,
    broadcast: Broadcast,
    stopping: Cell<bool>,
}

impl Controller {
    pub fn new(
        quorum: Rc<Quorum>,
        listen: std::net::SocketAddr,
        settings: BrokerSettings,
        shard_count: usize,
        broadcast: Broadcast,
    ) -> Self {
        Self {
            incarnation: quorum.incarnation(),
            quorum,
            producer_ids: Cell::new((0, 0)),
            listen,
            settings,
            shard_count,
            broadcast,
            stopping: Cell::new(false),
        }
    }

    fn node_id(&self) -> i32 {
        self.settings.node_id
    }

    /// Ends the heartbeat loop.
    pub fn stop(&self) {
        self.stopping.set(true);
    }

    pub async fn handle(&self, request: ControllerRequest) -> ControllerResponse {
        match request {
            ControllerRequest::CreateTopics {
                topics,
                validate_only,
            } => {
                let topics = topics
                    .into_iter()
                    .map(|t| {
                        t.with_defaults(
                            self.settings.num_partitions,
                            self.settings.default_replication_factor,
                        )
                    })
                    .collect::<Vec<_>>();
                let command = MetadataCommand::CreateTopics {
                    ids: topics.iter().map(|_| Uuid::new_v4()).collect(),
                    topics,
                    placement_seed: rand::random(),
                    limits: self.limits(),
                };
                answer(self.run(command, validate_only).await)
            }
            ControllerRequest::CreatePartitions {
                topic,
                count,
                validate_only,
            } => {
                let command = MetadataCommand::CreatePartitions {
                    topic,
                    count,
                    placement_seed: rand::random(),
                    limits: self.limits(),
                };
                answer(self.run(command, validate_only).await)
            }
            ControllerRequest::DeleteTopics(refs) => {
                answer(self.run(MetadataCommand::DeleteTopics(refs), false).await)
            }
            ControllerRequest::AllocateProducerId => {
                ControllerResponse::ProducerId(self.next_producer_id().await)
            }
            ControllerRequest::AlterPartition(change) => answer(
                self.run(MetadataCommand::AlterPartition(change), false)
                    .await,
            ),
            ControllerRequest::ReplicasOffline(partitions) => {
                let command = MetadataCommand::ReplicasOffline {
                    broker: self.node_id(),
                    incarnation: self.incarnation,
                    partitions,
                };
                answer(self.run(command, false).await)
            }
            ControllerRequest::CreateAcls(bindings) => {
                answer(self.run(MetadataCommand::CreateAcls(bindings), false).await)
            }
            ControllerRequest::DeleteAcls(filters) => {
                answer(self.run(MetadataCommand::DeleteAcls(filters), false).await)
            }
        }
    }

    fn limits(&self) -> PartitionLimits {
        PartitionLimits {
            per_shard: self.settings.max_partitions_per_shard,
        }
    }

    /// Proposes `command` and waits until every shard has the metadata that includes it. A
    /// creation is first applied to a copy of the metadata (its limits checked there, before
    /// anything is proposed): for `validate_only`, or when it would create nothing, that is
    /// the answer. Every voter checks the committed command again.
    async fn run(
        &self,
        command: MetadataCommand,
        validate_only: bool,
    ) -> Result<CommandOutcome, TopicError> {
        let creation = matches!(
            command,
            MetadataCommand::CreateTopics { .. } | MetadataCommand::CreatePartitions { .. }
        );
        if validate_only || creation {
            let mut copy = self.quorum.image().metadata.clone();
            let outcome = copy.apply(&command);
            if validate_only || !outcome.creates_anything() {
                return Ok(outcome);
            }
        }
        let outcome = self
            .quorum
            .propose(command, PROPOSAL_TIMEOUT)
            .await
            .ok_or_else(|| {
                TopicError::new(
                    ErrorCode::RequestTimedOut,
                    "the controller quorum did not commit the change in time",
                )
            })?;
        (self.broadcast)(self.quorum.image()).await;
        Ok(outcome)
    }

    async fn next_producer_id(&self) -> Result<i64, TopicError> {
        let (next, end) = self.producer_ids.get();
        if next < end {
            self.producer_ids.set((next + 1, end));
            return Ok(next);
        }
        match self
            .run(MetadataCommand::AllocateProducerIds, false)
            .await?
        {
            CommandOutcome::ProducerIdBlock(start) => {
                self.producer_ids
                    .set((start + 1, start + PRODUCER_ID_BLOCK));
                Ok(start)
            }
            _ => Err(TopicError::new(
                ErrorCode::UnknownServerError,
                "unexpected outcome",
            )),
        }
    }

    /// Registers this broker with the quorum, retrying until a leader commits it.
    pub async fn register(&self) {
        let advertised = advertised_address(&self.settings.advertised_listeners, self.listen);
        let info = BrokerInfo {
            id: self.node_id(),
            host: advertised.0,
            port: advertised.1,
            shards: self.shard_count as u32,
            incarnation: self.incarnation,
            fenced: false,
        };
        loop {
            let command = MetadataCommand::RegisterBroker(info.clone());
            match self.quorum.propose(command, PROPOSAL_TIMEOUT).await {
                Some(CommandOutcome::Done(Ok(()))) => {
                    tracing::info!(broker = info.id, "registered with the controller quorum");
                    return;
                }
                other => {
                    tracing::info!("registration not committed yet ({other:?}); retrying");
                    delay(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Controlled shutdown: asks the quorum to move this broker's leaderships away, and
    /// waits (bounded) until it did.
    pub async fn shut_down(&self) {
        let command = MetadataCommand::ShutdownBroker { id: self.node_id() };
        match self.quorum.propose(command, PROPOSAL_TIMEOUT).await {
            Some(CommandOutcome::Done(Ok(()))) => {
                tracing::info!("controlled shutdown: leadership moved away");
                (self.broadcast)(self.quorum.image()).await;
            }
            other => {
                tracing::warn!("controlled shutdown not committed ({other:?}); stopping anyway")
            }
        }
    }

    /// Tells the controller voters this broker is alive, every heartbeat interval.
    pub async fn heartbeat_loop(&self) {
        let interval = self.settings.broker_heartbeat_interval;
        while !self.stopping.get() {
            self.quorum.heartbeat(Heartbeat {
                broker_id: self.node_id(),
                incarnation: self.incarnation,
                metadata_offset: self.quorum.image().offset,
            });
            delay(interval).await;
        }
    }
}

/// The response to a committed command (or why it was not committed).
fn answer(outcome: Result<CommandOutcome, TopicError>) -> ControllerResponse {
    match outcome {
        Ok(CommandOutcome::Topics(results)) => ControllerResponse::Topics(results),
        Ok(CommandOutcome::Done(result)) => ControllerResponse::Done(result),
        Ok(CommandOutcome::AclsCreated(results)) => ControllerResponse::AclsCreated(results),
        Ok(CommandOutcome::AclsDeleted(removed)) => ControllerResponse::AclsDeleted(removed),
        Ok(_) => ControllerResponse::NotController,
        Err(e) => ControllerResponse::Done(Err(e)),
    }
}

/// Where clients reach this broker: `advertised.listeners` (`[PLAINTEXT://]host:port`), else
/// the listen address (`localhost` when listening on every interface).
fn advertised_address(advertised: &str, listen: std::net::SocketAddr) -> (String, u16) {
    let advertised = advertised.rsplit("://").next().unwrap_or_default();
    if let Some((host, port)) = advertised.rsplit_once(':')
        && let Ok(port) = port.parse()
    {
        return (host.to_string(), port);
    }
    let host = if listen.ip().is_unspecified() {
        "localhost".to_string()
    } else {
        listen.ip().to_string()
    };
    (host, listen.port())
}
