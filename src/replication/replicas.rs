//! The replicas one shard owns, kept in line with the metadata images: logs opened for the
//! partitions assigned to this broker and shard, removed with their topics, made leader or
//! follower as each image says, with a fetch loop per leader followed.
//!
//! Lifecycle: one `ReplicaSet` per shard for the life of the process. It holds the latest
//! image it applied; images arrive in log-offset order (the shard serializes them).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::replica::{Replica, ReplicaHost};
use crate::cluster::TopicMeta;
use crate::cluster::placement::owner_shard;
use crate::cluster::quorum::MetadataImage;
use crate::config::{BrokerConfig, BrokerSettings, TopicSettings, TopicSettingsTable};
use uuid::Uuid;

use crate::cluster::commands::OfflinePartition;
use crate::protocol::ErrorCode;
use crate::runtime::{delay, spawn_local};
use crate::storage::{CountersSnapshot, LogConfig, LogEnv, PartitionLog, ShardTailCache, now_ms};

type ReplicaKey = (String, i32);

/// How often a shard logs its storage counters (when they changed).
const COUNTERS_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Logs a shard opens or closes at once (at startup and shutdown with many partitions):
/// their file opens, reads and fdatasyncs overlap in io_uring, while the count of open
/// files and in-flight reads stays bounded.
const OPEN_CLOSE_CONCURRENCY: usize = 64;

pub struct ReplicaSet {
    /// This shard and the number of shards of the broker.
    pub shard: usize,
    pub shard_count: usize,
    settings: BrokerSettings,
    data_dir: PathBuf,
    /// What this shard's logs are opened with; they share its tail-cache budget.
    log_env: LogEnv,
    pub host: Rc<ReplicaHost>,
    image: RefCell<Arc<MetadataImage>>,
    /// The last image whose every topic was walked (logs opened, roles set): a later image
    /// is walked only for the topics it does not share with this one.
    walked: RefCell<Arc<MetadataImage>>,
    /// The settings of every topic in `image`, replaced in the same step as it.
    topic_settings: RefCell<TopicSettingsTable>,
    /// A topic deleted and created again under the same name gets a new id and a new log.
    replicas: RefCell<HashMap<ReplicaKey, Rc<Replica>>>,
    /// Leaders this shard runs a fetch loop for.
    following: RefCell<HashSet<i32>>,
    /// Replicas whose log could not be opened, by topic id: offline replicas without a log
    /// (reported to the controller; not opened again until the process restarts).
    unopened: RefCell<HashMap<ReplicaKey, Uuid>>,
}

impl ReplicaSet {
    pub fn new(
        shard: usize,
        shard_count: usize,
        config: &BrokerConfig,
        host: Rc<ReplicaHost>,
    ) -> Rc<Self> {
        let empty = MetadataImage {
            metadata: crate::cluster::ClusterMetadata::new(String::new()),
            offset: 0,
            controller_id: -1,
        };
        let empty = Arc::new(empty);
        Rc::new(Self {
            shard,
            shard_count,
            settings: config.settings(),
            data_dir: config.data_dir.clone(),
            log_env: LogEnv::production(ShardTailCache::new(
                config.settings().tail_cache_bytes_per_shard,
            )),
            host,
            image: RefCell::new(empty.clone()),
            walked: RefCell::new(empty),
            topic_settings: RefCell::default(),
            replicas: RefCell::new(HashMap::new()),
            following: RefCell::new(HashSet::new()),
            unopened: RefCell::default(),
        })
    }

    /// The listener this broker reaches other brokers on (`inter.broker.listener.name`).
    pub fn inter_broker_listener(&self) -> &str {
        &self.settings.listeners.inter_broker
    }

    pub fn node_id(&self) -> i32 {
        self.host.node_id
    }

    /// The latest image applied (cheap: an `Arc` clone).
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    pub fn is_stopping(&self) -> bool {
        self.host.stopping.get()
    }

    /// From now on replicas send no ISR changes and fetch loops end.
    pub fn stop(&self) {
        self.host.stopping.set(true);
    }

    /// The shard of this broker that owns `partition` of `topic`.
    pub fn owner(&self, topic: &TopicMeta, partition: i32) -> usize {
        owner_shard(topic.id, partition, self.shard_count)
    }

    /// A topic's resolved settings, `None` for a topic the applied image does not have.
    pub fn topic_settings(&self, topic: &str) -> Option<TopicSettings> {
        self.topic_settings.borrow().get(topic)
    }

    pub fn get(&self, topic: &str, partition: i32) -> Option<Rc<Replica>> {
        self.replicas
            .borrow()
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// The replica of `partition` of `topic` that can serve a request, else the error Kafka
    /// answers: UNKNOWN_TOPIC_OR_PARTITION if this shard has none, KAFKA_STORAGE_ERROR if it
    /// is offline (its log failed or could not be opened).
    pub fn serving(&self, topic: &str, partition: i32) -> Result<Rc<Replica>, ErrorCode> {
        let key = (topic.to_string(), partition);
        if self.unopened.borrow().contains_key(&key) {
            return Err(ErrorCode::KafkaStorageError);
        }
        match self.replicas.borrow().get(&key) {
            None => Err(ErrorCode::UnknownTopicOrPartition),
            Some(r) if r.log.is_offline() => Err(ErrorCode::KafkaStorageError),
            Some(r) => Ok(r.clone()),
        }
    }

    /// This shard's replicas of `topic` in the applied image.
    pub fn of_topic(&self, topic: &str) -> Vec<Rc<Replica>> {
        let image = self.image();
        let Some(meta) = image.topics.get(topic) else {
            return Vec::new();
        };
        (0..meta.partition_count())
            .filter(|p| self.owner(meta, *p) == self.shard)
            .filter_map(|p| self.get(topic, p))
            .collect()
    }

    /// Every replica this shard owns.
    pub fn all(&self) -> Vec<Rc<Replica>> {
        self.replicas.borrow().values().cloned().collect()
    }

    /// The replicas that follow `leader`, with the leader epoch they follow.
    pub fn following(&self, leader: i32) -> Vec<(Rc<Replica>, i32)> {
        self.replicas
            .borrow()
            .values()
            .filter_map(|r| match r.following() {
                // An offline log takes nothing more: Kafka's fetcher drops its partition.
                Some((l, epoch)) if l == leader && !r.log.is_offline() => Some((r.clone(), epoch)),
                _ => None,
            })
            .collect()
    }

    /// Makes this shard's replicas match `image`: removes the logs of deleted topics, opens
    /// (and recovers) the logs of the replicas it owns that are not open yet, then sets every
    /// replica's role. Returns the leaders this shard now follows and had no fetch loop for
    /// (the caller starts one each: `fetcher::follow`). An image older than the one applied
    /// is ignored.
    pub async fn apply(self: &Rc<Self>, image: Arc<MetadataImage>) -> Vec<i32> {
        if image.offset < self.image.borrow().offset {
            return Vec::new();
        }
        self.image.replace(image.clone());
        let altered = self.topic_settings.borrow_mut().refresh(
            image
                .topics
                .values()
                .map(|t| (t.name.as_str(), t.id, &t.config)),
            &self.settings,
        );
        self.remove_deleted(&image).await;
        self.reconfigure_logs(&altered);
        let changed = self.changed_topics(&image);
        let node = self.node_id();
        let mut to_open = Vec::new();
        for topic in &changed {
            for (partition, state) in (0..).zip(&topic.partitions) {
                if state.replicas.contains(&node)
                    && self.owner(topic, partition) == self.shard
                    && self.get(&topic.name, partition).is_none()
                    && !self.failed_to_open(topic, partition)
                {
                    to_open.push((topic, partition));
                }
            }
        }
        // Every log is open before roles are set (and before a restarting shard serves).
        futures::stream::iter(to_open)
            .for_each_concurrent(OPEN_CLOSE_CONCURRENCY, |(topic, partition)| {
                self.open(topic, partition)
            })
            .await;
        let newly_followed = self.apply_roles(&changed);
        self.walked.replace(image);
        newly_followed
    }

    /// The topics of `image` that are not the very same (`Arc::ptr_eq`) as in the image last
    /// walked: a topic no command changed needs no log opened and no role set again.
    fn changed_topics(&self, image: &MetadataImage) -> Vec<Arc<TopicMeta>> {
        let walked = self.walked.borrow();
        image
            .topics
            .iter()
            .filter(|(name, topic)| {
                walked
                    .topics
                    .get(*name)
                    .is_none_or(|before| !Arc::ptr_eq(before, topic))
            })
            .map(|(_, topic)| topic.clone())
            .collect()
    }

    fn failed_to_open(&self, topic: &TopicMeta, partition: i32) -> bool {
        self.unopened
            .borrow()
            .get(&(topic.name.clone(), partition))
            .is_some_and(|id| *id == topic.id)
    }

    async fn remove_deleted(&self, image: &MetadataImage) {
        // Nearly every image deletes no topic: then the replicas are not scanned.
        let deleted = self
            .walked
            .borrow()
            .topics
            .iter()
            .any(|(name, before)| image.topics.get(name).is_none_or(|now| now.id != before.id));
        if !deleted {
            return;
        }
        self.unopened
            .borrow_mut()
            .retain(|(name, _), id| image.topics.get(name).is_some_and(|t| t.id == *id));
        let stale: Vec<Rc<Replica>> = {
            let mut replicas = self.replicas.borrow_mut();
            let keys: Vec<ReplicaKey> = replicas
                .iter()
                .filter(|((name, _), r)| image.topics.get(name).is_none_or(|t| t.id != r.topic_id))
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| replicas.remove(k)).collect()
        };
        for replica in stale {
            if let Err(e) = replica.log.clone().remove().await {
                tracing::error!("removing a deleted partition's log failed: {e}");
            }
        }
    }

    async fn open(&self, topic: &TopicMeta, partition: i32) {
        let dir = self.partition_dir(&topic.name, partition);
        let Some(settings) = self.topic_settings(&topic.name) else {
            // Not reached: the table is refreshed from the image before logs are opened.
            tracing::error!("no settings for topic {}", topic.name);
            return;
        };
        match PartitionLog::open_with(&self.log_env, &dir, self.log_config(&settings)).await {
            Ok(log) => {
                let replica = Replica::new(
                    topic.name.clone(),
                    partition,
                    topic.id,
                    log,
                    self.host.clone(),
                );
                let replica = Rc::new(replica);
                spawn_local(replica.clone().report_when_offline()).detach();
                self.replicas
                    .borrow_mut()
                    .insert((topic.name.clone(), partition), replica);
            }
            // An offline replica, rather than a dead partition or a dead broker: the
            // controller moves its leadership to a healthy replica.
            Err(e) => {
                self.unopened
                    .borrow_mut()
                    .insert((topic.name.clone(), partition), topic.id);
                let offline = OfflinePartition {
                    topic: topic.name.clone(),
                    topic_id: topic.id,
                    partition,
                };
                let (host, reason) = (
                    self.host.clone(),
                    format!("cannot open {}: {e}", dir.display()),
                );
                spawn_local(
                    async move { host.report_offline_until_committed(offline, &reason).await },
                )
                .detach();
            }
        }
    }

    fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.data_dir.join(format!("{topic}-{partition}"))
    }

    /// The storage settings of a topic's logs.
    fn log_config(&self, topic: &TopicSettings) -> LogConfig {
        LogConfig {
            segment_bytes: topic.segment_bytes,
            segment_ms: topic.segment_ms,
            retention_ms: topic.retention_ms,
            retention_bytes: topic.retention_bytes,
            index_interval_bytes: self.settings.log_index_interval_bytes,
            // Bounded by the shard's budget alone.
            tail_cache_bytes: usize::MAX,
            flush_messages: topic.flush_messages,
            flush_ms: topic.flush_ms,
        }
    }

    /// Gives the open logs of topics whose configs changed their new settings.
    fn reconfigure_logs(&self, altered: &[String]) {
        // Nearly every image alters no topic: then no list of every replica is built.
        if altered.is_empty() {
            return;
        }
        for replica in self.all() {
            if altered.contains(&replica.topic)
                && let Some(settings) = self.topic_settings(&replica.topic)
            {
                replica.log.set_config(self.log_config(&settings));
            }
        }
    }

    /// Makes this shard's replicas of `topics` leader or follower as their partitions say;
    /// returns the leaders newly followed.
    fn apply_roles(self: &Rc<Self>, topics: &[Arc<TopicMeta>]) -> Vec<i32> {
        let now = now_ms();
        let mut newly_followed = Vec::new();
        for topic in topics {
            let min_isr = self
                .topic_settings(&topic.name)
                .map_or(1, |t| t.min_insync_replicas);
            for (partition, state) in (0..).zip(&topic.partitions) {
                if self.owner(topic, partition) != self.shard {
                    continue;
                }
                let Some(replica) = self.get(&topic.name, partition) else {
                    continue;
                };
                replica.apply(state, now, min_isr);
                if let Some((leader, _)) = replica.following()
                    && self.following.borrow_mut().insert(leader)
                {
                    newly_followed.push(leader);
                }
            }
        }
        newly_followed
    }

    /// A fetch loop for `leader` ended.
    pub(super) fn stopped_following(&self, leader: i32) {
        self.following.borrow_mut().remove(&leader);
    }

    /// Every half `replica.lag.time.max.ms`, each partition this shard leads drops the
    /// followers that stopped catching up from its ISR.
    pub async fn shrink_isr_loop(self: Rc<Self>) {
        let lag_max_ms = self.settings.replica_lag_time_max_ms;
        let period = Duration::from_millis((lag_max_ms / 2).max(10) as u64);
        while !self.is_stopping() {
            delay(period).await;
            let now = now_ms();
            for replica in self.all() {
                replica.shrink_check(now, lag_max_ms);
            }
        }
    }

    /// Deletes expired segments and rolls old ones, every `log.retention.check.interval.ms`.
    pub async fn retention_loop(self: Rc<Self>) {
        let interval = self.settings.log_retention_check_interval;
        while !self.is_stopping() {
            delay(interval).await;
            let now = now_ms();
            for replica in self.all() {
                if let Err(e) = replica.log.enforce_retention(now).await {
                    tracing::error!("retention failed: {e}");
                }
            }
        }
    }

    /// Flushes and closes every log (at shutdown), then logs the shard's counters.
    pub async fn close_all(&self) {
        futures::stream::iter(self.all())
            .for_each_concurrent(OPEN_CLOSE_CONCURRENCY, |replica| async move {
                if let Err(e) = replica.log.close().await {
                    tracing::error!("flush at shutdown failed: {e}");
                }
            })
            .await;
        self.report_counters(self.log_env.counters.snapshot());
    }

    /// Logs this shard's fdatasyncs and acknowledged produce batches every 10 s when they
    /// changed (and once more at shutdown, see `close_all`).
    pub async fn counters_report_loop(self: Rc<Self>) {
        let mut reported = CountersSnapshot::default();
        while !self.is_stopping() {
            delay(COUNTERS_REPORT_INTERVAL).await;
            let now = self.log_env.counters.snapshot();
            if now != reported {
                self.report_counters(now);
                reported = now;
            }
        }
    }

    fn report_counters(&self, c: CountersSnapshot) {
        let per_batch = c
            .syncs_per_batch()
            .map_or_else(|| "-".to_string(), |r| format!("{r:.4}"));
        tracing::info!(
            shard = self.shard,
            fdatasyncs = c.fdatasyncs,
            acknowledged_batches = c.acknowledged_batches,
            fdatasyncs_per_batch = %per_batch,
            "storage counters"
        );
    }
}
