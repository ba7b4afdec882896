//! Shard 0's side of the control plane: turns admin requests into metadata commands for the
//! controller quorum, registers this broker, heartbeats, and hands out producer ids.
//!
//! Every change is answered only after every shard of this broker applied the metadata that
//! contains it, so a client that saw its topic created finds it on every shard.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use uuid::Uuid;

use super::shard::Shard;
use crate::cluster::commands::{CommandOutcome, IsrChange, MetadataCommand};
use crate::cluster::quorum::Quorum;
use crate::cluster::quorum::transport::Heartbeat;
use crate::cluster::topics::{NewTopic, TopicError, TopicRef};
use crate::cluster::{BrokerInfo, PRODUCER_ID_BLOCK, TopicMeta};
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
}

pub enum ControllerResponse {
    /// Per requested topic: the created (or deleted) topic, or why not.
    Topics(Vec<Result<TopicMeta, TopicError>>),
    Done(Result<(), TopicError>),
    ProducerId(Result<i64, TopicError>),
    NotController,
}

pub struct Controller {
    pub quorum: Rc<Quorum>,
    /// This broker's block of producer ids: next to hand out, and end (exclusive).
    producer_ids: Cell<(i64, i64)>,
    /// Changes at every start of this process.
    pub incarnation: u64,
}

impl Controller {
    pub fn new(quorum: Rc<Quorum>) -> Self {
        Self {
            incarnation: quorum.incarnation(),
            quorum,
            producer_ids: Cell::new((0, 0)),
        }
    }

    pub async fn handle(
        &self,
        shard: &Rc<Shard>,
        request: ControllerRequest,
    ) -> ControllerResponse {
        match request {
            ControllerRequest::CreateTopics {
                topics,
                validate_only,
            } => {
                let topics = topics
                    .into_iter()
                    .map(|t| {
                        t.with_defaults(
                            shard.config.int("num.partitions") as i32,
                            shard.config.int("default.replication.factor") as i16,
                        )
                    })
                    .collect::<Vec<_>>();
                let command = MetadataCommand::CreateTopics {
                    ids: topics.iter().map(|_| Uuid::new_v4()).collect(),
                    topics,
                    placement_seed: rand::random(),
                };
                match self.run(shard, command, validate_only).await {
                    Ok(CommandOutcome::Topics(results)) => ControllerResponse::Topics(results),
                    Ok(_) => ControllerResponse::NotController,
                    Err(e) => ControllerResponse::Done(Err(e)),
                }
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
                };
                match self.run(shard, command, validate_only).await {
                    Ok(CommandOutcome::Done(result)) => ControllerResponse::Done(result),
                    Ok(_) => ControllerResponse::NotController,
                    Err(e) => ControllerResponse::Done(Err(e)),
                }
            }
            ControllerRequest::DeleteTopics(refs) => {
                match self
                    .run(shard, MetadataCommand::DeleteTopics(refs), false)
                    .await
                {
                    Ok(CommandOutcome::Topics(results)) => ControllerResponse::Topics(results),
                    Ok(_) => ControllerResponse::NotController,
                    Err(e) => ControllerResponse::Done(Err(e)),
                }
            }
            ControllerRequest::AllocateProducerId => {
                ControllerResponse::ProducerId(self.next_producer_id(shard).await)
            }
            ControllerRequest::AlterPartition(change) => {
                match self
                    .run(shard, MetadataCommand::AlterPartition(change), false)
                    .await
                {
                    Ok(CommandOutcome::Done(result)) => ControllerResponse::Done(result),
                    Ok(_) => ControllerResponse::NotController,
                    Err(e) => ControllerResponse::Done(Err(e)),
                }
            }
        }
    }

    /// Proposes `command` (or, for `validate_only`, applies it to a copy of the metadata)
    /// and waits until every shard has the metadata that includes it.
    async fn run(
        &self,
        shard: &Rc<Shard>,
        command: MetadataCommand,
        validate_only: bool,
    ) -> Result<CommandOutcome, TopicError> {
        if validate_only {
            let mut copy = self.quorum.image().metadata.clone();
            return Ok(copy.apply(&command));
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
        shard.broadcast_metadata(self.quorum.image()).await;
        Ok(outcome)
    }

    async fn next_producer_id(&self, shard: &Rc<Shard>) -> Result<i64, TopicError> {
        let (next, end) = self.producer_ids.get();
        if next < end {
            self.producer_ids.set((next + 1, end));
            return Ok(next);
        }
        match self
            .run(shard, MetadataCommand::AllocateProducerIds, false)
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
    pub async fn register(&self, shard: &Rc<Shard>) {
        let advertised = shard.advertised_address();
        let info = BrokerInfo {
            id: shard.node_id(),
            host: advertised.0,
            port: advertised.1,
            shards: shard.count as u32,
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
    pub async fn shut_down(&self, shard: &Rc<Shard>) {
        let command = MetadataCommand::ShutdownBroker {
            id: shard.node_id(),
        };
        match self.quorum.propose(command, PROPOSAL_TIMEOUT).await {
            Some(CommandOutcome::Done(Ok(()))) => {
                tracing::info!("controlled shutdown: leadership moved away");
                shard.broadcast_metadata(self.quorum.image()).await;
            }
            other => {
                tracing::warn!("controlled shutdown not committed ({other:?}); stopping anyway")
            }
        }
    }

    /// Tells the controller voters this broker is alive, every heartbeat interval.
    pub async fn heartbeat_loop(&self, shard: Rc<Shard>) {
        let interval =
            Duration::from_millis(shard.config.int("broker.heartbeat.interval.ms") as u64);
        while !shard.stopping.get() {
            self.quorum.heartbeat(Heartbeat {
                broker_id: shard.node_id(),
                incarnation: self.incarnation,
                metadata_offset: self.quorum.image().offset,
            });
            delay(interval).await;
        }
    }
}
