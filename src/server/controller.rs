//! The metadata controller of this single-node broker, on shard 0.
//!
//! Every change (create, delete, producer-id block) is applied to a copy of the current
//! metadata, persisted, then broadcast to all shards before it is answered, so a client that
//! saw its topic created finds it on every shard. Changes run one at a time.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use super::shard::Shard;
use crate::cluster::topics::{self, Defaults, NewTopic, TopicError, TopicRef};
use crate::cluster::{ClusterMetadata, PRODUCER_ID_BLOCK, TopicMeta};
use crate::protocol::ErrorCode;
use crate::runtime::Semaphore;

pub enum ControllerRequest {
    CreateTopics {
        topics: Vec<NewTopic>,
        validate_only: bool,
    },
    DeleteTopics(Vec<TopicRef>),
    AllocateProducerId,
}

pub enum ControllerResponse {
    CreateTopics(Vec<Result<TopicMeta, TopicError>>),
    /// Per requested topic: the deleted topic, or why not.
    DeleteTopics(Vec<Result<TopicMeta, TopicError>>),
    ProducerId(Result<i64, TopicError>),
    NotController,
}

pub struct Controller {
    /// One change at a time: each reads the metadata the previous one wrote.
    serial: Semaphore,
    /// The next producer id to hand out; `None` until the first allocation after start.
    next_producer_id: Cell<Option<i64>>,
}

impl Controller {
    pub fn new() -> Self {
        Self {
            serial: Semaphore::new(1),
            next_producer_id: Cell::new(None),
        }
    }

    pub async fn handle(
        &self,
        shard: &Rc<Shard>,
        request: ControllerRequest,
    ) -> ControllerResponse {
        let Ok(_permit) = self.serial.acquire_permit(1).await else {
            return ControllerResponse::NotController;
        };
        let mut meta = (*shard.metadata()).clone();
        match request {
            ControllerRequest::CreateTopics {
                topics,
                validate_only,
            } => {
                let defaults = Defaults {
                    partitions: shard.config.int("num.partitions") as i32,
                    replication_factor: shard.config.int("default.replication.factor") as i16,
                    brokers: vec![shard.config.node_id()],
                };
                let mut results = Vec::with_capacity(topics.len());
                for topic in &topics {
                    let planned = topics::plan_create(&meta, topic, &defaults);
                    if let (Ok(t), false) = (&planned, validate_only) {
                        meta.topics.insert(t.name.clone(), t.clone());
                    }
                    results.push(planned);
                }
                let changed = !validate_only && results.iter().any(Result::is_ok);
                if changed && let Err(e) = publish(shard, meta).await {
                    results = results.into_iter().map(|r| r.and(Err(e.clone()))).collect();
                }
                ControllerResponse::CreateTopics(results)
            }
            ControllerRequest::DeleteTopics(refs) => {
                let mut results = Vec::with_capacity(refs.len());
                for r in &refs {
                    let found = topics::find(&meta, r).cloned();
                    if let Ok(t) = &found {
                        meta.topics.remove(&t.name);
                    }
                    results.push(found);
                }
                if results.iter().any(Result::is_ok)
                    && let Err(e) = publish(shard, meta).await
                {
                    results = results.into_iter().map(|r| r.and(Err(e.clone()))).collect();
                }
                ControllerResponse::DeleteTopics(results)
            }
            ControllerRequest::AllocateProducerId => {
                ControllerResponse::ProducerId(self.allocate_producer_id(shard, meta).await)
            }
        }
    }

    async fn allocate_producer_id(
        &self,
        shard: &Rc<Shard>,
        mut meta: ClusterMetadata,
    ) -> Result<i64, TopicError> {
        // Ids below the persisted block end may have been handed out before a restart.
        let next = self
            .next_producer_id
            .get()
            .unwrap_or(meta.producer_id_block_end);
        if next >= meta.producer_id_block_end {
            meta.producer_id_block_end = next + PRODUCER_ID_BLOCK;
            publish(shard, meta).await?;
        }
        self.next_producer_id.set(Some(next + 1));
        Ok(next)
    }
}

/// Persists the new metadata, then makes every shard apply it.
async fn publish(shard: &Rc<Shard>, meta: ClusterMetadata) -> Result<(), TopicError> {
    meta.store(&shard.config.data_dir).map_err(|e| {
        tracing::error!("cannot persist metadata: {e}");
        TopicError::new(
            ErrorCode::KafkaStorageError,
            format!("metadata not persisted: {e}"),
        )
    })?;
    shard.broadcast_metadata(Arc::new(meta)).await;
    Ok(())
}
