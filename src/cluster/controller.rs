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
use super::users::{AlterationPlan, RequestedAlteration, ScramUpsertion, plan_alteration};
use super::{BrokerInfo, PRODUCER_ID_BLOCK, TopicMeta};
use crate::config::BrokerSettings;
use crate::protocol::ErrorCode;
use crate::runtime::delay;

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
    AlterScramCredentials(Vec<RequestedAlteration>),
}

pub enum ControllerResponse {
    /// Per requested topic: the created (or deleted) topic, or why not.
    Topics(Vec<Result<Arc<TopicMeta>, TopicError>>),
    Done(Result<(), TopicError>),
    ProducerId(Result<i64, TopicError>),
    /// Per user of an AlterScramCredentials, in no particular order.
    Users(Vec<(String, Result<(), TopicError>)>),
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
    settings: BrokerSettings,
    shard_count: usize,
    broadcast: Broadcast,
    stopping: Cell<bool>,
}

impl Controller {
    pub fn new(
        quorum: Rc<Quorum>,
        settings: BrokerSettings,
        shard_count: usize,
        broadcast: Broadcast,
    ) -> Self {
        Self {
            incarnation: quorum.incarnation(),
            quorum,
            producer_ids: Cell::new((0, 0)),
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
            ControllerRequest::AlterScramCredentials(requested) => {
                ControllerResponse::Users(self.alter_scram_credentials(requested).await)
            }
        }
    }

    /// Checks the request, proposes what passed, and answers every user named.
    async fn alter_scram_credentials(
        &self,
        requested: Vec<RequestedAlteration>,
    ) -> Vec<(String, Result<(), TopicError>)> {
        let AlterationPlan {
            upsertions,
            deletions,
            refused,
        } = plan_alteration(requested);
        let mut results: Vec<_> = refused.into_iter().map(|(u, e)| (u, Err(e))).collect();
        if upsertions.is_empty() && deletions.is_empty() {
            return results;
        }
        let users: Vec<String> = deletions
            .iter()
            .map(|d| d.user.clone())
            .chain(upsertions.iter().map(|u| u.user.clone()))
            .collect();
        let command = MetadataCommand::AlterScramCredentials {
            upsertions,
            deletions,
            bootstrap: false,
        };
        match self.run(command, false).await {
            Ok(CommandOutcome::Users(applied)) => results.extend(applied),
            other => {
                let error = match other {
                    Err(e) => e,
                    Ok(_) => TopicError::new(ErrorCode::UnknownServerError, "unexpected outcome"),
                };
                results.extend(users.into_iter().map(|u| (u, Err(error.clone()))));
            }
        }
        results
    }

    /// The first users of a new cluster (`serve --add-scram`), proposed until committed.
    /// Like `kafka-storage format --add-scram`, they apply only where the metadata log is
    /// new; a bootstrap never replaces a credential the user already has.
    pub async fn bootstrap_credentials(&self, credentials: &[ScramUpsertion]) {
        if credentials.is_empty() {
            return;
        }
        if !self.quorum.started_empty() {
            tracing::warn!(
                "--add-scram ignored: this node's metadata log already exists \
                 (manage users with AlterUserScramCredentials, `corelog users`)"
            );
            return;
        }
        loop {
            let command = MetadataCommand::AlterScramCredentials {
                upsertions: credentials.to_vec(),
                deletions: Vec::new(),
                bootstrap: true,
            };
            match self.quorum.propose(command, PROPOSAL_TIMEOUT).await {
                Some(CommandOutcome::Users(_)) => {
                    let users: Vec<&str> = credentials.iter().map(|c| c.user.as_str()).collect();
                    tracing::info!(?users, "bootstrap SCRAM credentials committed");
                    (self.broadcast)(self.quorum.image()).await;
                    return;
                }
                other => {
                    tracing::info!("bootstrap credentials not committed yet ({other:?}); retrying");
                    delay(Duration::from_millis(200)).await;
                }
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
        let listeners = &self.settings.listeners;
        // Readers of the old two fields see the listener brokers use.
        let (host, port) = listeners
            .advertised(&listeners.inter_broker)
            .map_or((String::new(), 0), |e| (e.host.clone(), e.port));
        let info = BrokerInfo {
            id: self.node_id(),
            host,
            port,
            shards: self.shard_count as u32,
            incarnation: self.incarnation,
            fenced: false,
            listeners: listeners.advertised.clone(),
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
        Ok(_) => ControllerResponse::NotController,
        Err(e) => ControllerResponse::Done(Err(e)),
    }
}
