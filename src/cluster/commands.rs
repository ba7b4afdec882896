//! The metadata log's commands and how each changes [`ClusterMetadata`].
//!
//! `apply` is deterministic: every voter applies the same commands in the same order and
//! reaches the same metadata. Random choices (topic ids, placement seeds) are made by the
//! proposer and carried in the command.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::limits::{self, MAX_SHARDS_PER_BROKER, PartitionLimits};
use super::placement::{assign_replicas, can_lead, elect_leader};
use super::topics::{self, NewTopic, TopicError, TopicRef};
use super::users::{ScramDeletion, ScramUpsertion};
use super::{BrokerInfo, ClusterMetadata, NO_LEADER, PRODUCER_ID_BLOCK, PartitionState, TopicMeta};
use crate::protocol::ErrorCode;
use crate::security::listener;

/// The longest host name a broker may register (DNS names are at most 253 bytes).
const MAX_HOST_BYTES: usize = 255;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// A broker (re)starts: its endpoint and incarnation; it is live from now on.
    RegisterBroker(BrokerInfo),
    /// The broker missed its session timeout: it leads nothing any more.
    FenceBroker {
        id: i32,
    },
    /// A fenced broker heartbeats again.
    UnfenceBroker {
        id: i32,
    },
    /// Controlled shutdown: the broker is fenced (its leaderships move) before it exits.
    ShutdownBroker {
        id: i32,
    },
    CreateTopics {
        topics: Vec<NewTopic>,
        /// One per topic.
        ids: Vec<Uuid>,
        placement_seed: u64,
        /// Absent from entries written before limits existed: the defaults then.
        #[serde(default)]
        limits: PartitionLimits,
    },
    CreatePartitions {
        topic: String,
        count: i32,
        placement_seed: u64,
        #[serde(default)]
        limits: PartitionLimits,
    },
    DeleteTopics(Vec<TopicRef>),
    /// Reserves the next block of producer ids for the proposing broker.
    AllocateProducerIds,
    /// A leader changes its partition's ISR (Kafka's AlterPartition, KIP-497).
    AlterPartition(IsrChange),
    /// A broker's replicas whose logs a storage error took offline (Kafka's log directory
    /// failure, KIP-112): they leave the ISR and their leaderships move. `incarnation`: the
    /// reporting process; a report from a process since restarted changes nothing.
    ReplicasOffline {
        broker: i32,
        incarnation: u64,
        partitions: Vec<OfflinePartition>,
    },
    /// Sets or removes users' SCRAM credentials (KIP-554): keys derived from the salted
    /// password, never the password. A bootstrap (`corelog serve --add-scram`) sets only
    /// credentials a user does not have yet, so it never undoes a change made since.
    AlterScramCredentials {
        upsertions: Vec<ScramUpsertion>,
        deletions: Vec<ScramDeletion>,
        #[serde(default)]
        bootstrap: bool,
    },
}

/// One partition of a [`MetadataCommand::ReplicasOffline`]; the topic id tells a topic
/// deleted and created again under the same name from the reported one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfflinePartition {
    pub topic: String,
    pub topic_id: Uuid,
    pub partition: i32,
}

/// An ISR change, valid only against the leader and epochs the leader saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsrChange {
    pub topic: String,
    pub partition: i32,
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<i32>,
}

/// What applying a command produced, for the broker that proposed it.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutcome {
    /// Per topic of a CreateTopics or DeleteTopics: the topic, or why not.
    Topics(Vec<Result<Arc<TopicMeta>, TopicError>>),
    /// The first id of the reserved block.
    ProducerIdBlock(i64),
    Done(Result<(), TopicError>),
    /// Per user of an AlterScramCredentials.
    Users(Vec<(String, Result<(), TopicError>)>),
}

impl MetadataCommand {
    /// The command's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            MetadataCommand::RegisterBroker(_) => "RegisterBroker",
            MetadataCommand::FenceBroker { .. } => "FenceBroker",
            MetadataCommand::UnfenceBroker { .. } => "UnfenceBroker",
            MetadataCommand::ShutdownBroker { .. } => "ShutdownBroker",
            MetadataCommand::CreateTopics { .. } => "CreateTopics",
            MetadataCommand::CreatePartitions { .. } => "CreatePartitions",
            MetadataCommand::DeleteTopics(_) => "DeleteTopics",
            MetadataCommand::AllocateProducerIds => "AllocateProducerIds",
            MetadataCommand::AlterPartition(_) => "AlterPartition",
            MetadataCommand::ReplicasOffline { .. } => "ReplicasOffline",
            MetadataCommand::AlterScramCredentials { .. } => "AlterScramCredentials",
        }
    }
}

impl CommandOutcome {
    /// Whether a creation made anything: a topic, or partitions.
    pub fn creates_anything(&self) -> bool {
        match self {
            CommandOutcome::Topics(results) => results.iter().any(Result::is_ok),
            CommandOutcome::Done(result) => result.is_ok(),
            CommandOutcome::ProducerIdBlock(_) => true,
            CommandOutcome::Users(results) => results.iter().any(|(_, r)| r.is_ok()),
        }
    }

    /// The errors of a command that was refused, in whole or in part.
    pub fn errors(&self) -> Vec<&TopicError> {
        match self {
            CommandOutcome::Topics(results) => {
                results.iter().filter_map(|r| r.as_ref().err()).collect()
            }
            CommandOutcome::Done(Err(e)) => vec![e],
            CommandOutcome::Users(results) => results
                .iter()
                .filter_map(|(_, r)| r.as_ref().err())
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl ClusterMetadata {
    pub fn apply(&mut self, command: &MetadataCommand) -> CommandOutcome {
        match command {
            MetadataCommand::RegisterBroker(info) => {
                CommandOutcome::Done(self.register_broker(info))
            }
            MetadataCommand::FenceBroker { id } => {
                CommandOutcome::Done(self.set_fenced(*id, true).map(|()| self.fence(*id)))
            }
            MetadataCommand::ShutdownBroker { id } => {
                CommandOutcome::Done(self.set_fenced(*id, true).map(|()| {
                    self.shutting_down.insert(*id);
                    self.fence(*id)
                }))
            }
            MetadataCommand::UnfenceBroker { id } => CommandOutcome::Done(
                self.set_fenced(*id, false)
                    .map(|()| self.elect_leaderless()),
            ),
            MetadataCommand::CreateTopics {
                topics,
                ids,
                placement_seed,
                limits,
            } => CommandOutcome::Topics(self.create_topics(topics, ids, *placement_seed, *limits)),
            MetadataCommand::CreatePartitions {
                topic,
                count,
                placement_seed,
                limits,
            } => CommandOutcome::Done(self.create_partitions(
                topic,
                *count,
                *placement_seed,
                *limits,
            )),
            MetadataCommand::DeleteTopics(refs) => CommandOutcome::Topics(
                refs.iter()
                    .map(|r| {
                        let found = topics::find(self, r)?.clone();
                        self.topics.remove(&found.name);
                        Ok(found)
                    })
                    .collect(),
            ),
            MetadataCommand::AllocateProducerIds => self.allocate_producer_ids(),
            MetadataCommand::AlterPartition(change) => {
                CommandOutcome::Done(self.alter_partition(change))
            }
            MetadataCommand::ReplicasOffline {
                broker,
                incarnation,
                partitions,
            } => CommandOutcome::Done(self.replicas_offline(*broker, *incarnation, partitions)),
            MetadataCommand::AlterScramCredentials {
                upsertions,
                deletions,
                bootstrap,
            } => CommandOutcome::Users(
                self.alter_scram_credentials(upsertions, deletions, *bootstrap),
            ),
        }
    }

    /// A broker (re)starts. Its endpoint and shard count are checked here too: a registration
    /// is a peer's word, and the shard count divides partitions among its cores.
    fn register_broker(&mut self, info: &BrokerInfo) -> Result<(), TopicError> {
        let bad_endpoint = |name: &str, host: &str| {
            name.is_empty()
                || name.len() > listener::MAX_NAME_BYTES
                || host.is_empty()
                || host.len() > MAX_HOST_BYTES
        };
        if info.id < 0
            || bad_endpoint("PLAINTEXT", &info.host)
            || info.listeners.len() > listener::MAX_LISTENERS
            || info
                .listeners
                .iter()
                .any(|e| bad_endpoint(&e.name, &e.host))
            || !(1..=MAX_SHARDS_PER_BROKER).contains(&info.shards)
        {
            return Err(TopicError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "broker {} registered with host of {} bytes and {} shards",
                    info.id,
                    info.host.len(),
                    info.shards
                ),
            ));
        }
        let restarted = self
            .brokers
            .get(&info.id)
            .is_some_and(|b| b.incarnation != info.incarnation);
        self.brokers.insert(
            info.id,
            BrokerInfo {
                fenced: false,
                ..info.clone()
            },
        );
        self.shutting_down.remove(&info.id);
        if restarted {
            self.clear_offline(info.id);
            self.end_leaderships(info.id);
        }
        self.elect_leaderless();
        Ok(())
    }

    /// The topics of a CreateTopics, each created or refused on its own, unless the command
    /// as a whole is malformed or over [`limits::MAX_PARTITIONS_PER_REQUEST`] (checked before
    /// anything is allocated).
    fn create_topics(
        &mut self,
        topics: &[NewTopic],
        ids: &[Uuid],
        placement_seed: u64,
        limits: PartitionLimits,
    ) -> Vec<Result<Arc<TopicMeta>, TopicError>> {
        let whole = if ids.len() == topics.len() {
            limits::check_request_size(topics.iter().map(NewTopic::requested_partitions))
        } else {
            Err(TopicError::new(
                ErrorCode::InvalidRequest,
                format!("{} topic ids for {} topics", ids.len(), topics.len()),
            ))
        };
        if let Err(e) = whole {
            return topics.iter().map(|_| Err(e.clone())).collect();
        }
        topics
            .iter()
            .zip(ids)
            .enumerate()
            .map(|(i, (topic, id))| {
                let seed = placement_seed.wrapping_add(i as u64);
                let created = topics::plan_create(self, topic, *id, seed)?;
                let replicas: Vec<Vec<i32>> = created
                    .partitions
                    .iter()
                    .map(|p| p.replicas.clone())
                    .collect();
                limits::check_capacity(self, created.id, 0, &replicas, limits)?;
                let created = Arc::new(created);
                self.topics.insert(created.name.clone(), created.clone());
                Ok(created)
            })
            .collect()
    }

    /// The next block of producer ids; the id space ends rather than wraps.
    fn allocate_producer_ids(&mut self) -> CommandOutcome {
        match self.producer_id_block_end.checked_add(PRODUCER_ID_BLOCK) {
            Some(end) => {
                let start = self.producer_id_block_end;
                self.producer_id_block_end = end;
                CommandOutcome::ProducerIdBlock(start)
            }
            None => CommandOutcome::Done(Err(TopicError::new(
                ErrorCode::UnknownServerError,
                "the producer id space is exhausted",
            ))),
        }
    }

    /// Kafka's AlterPartition checks: the sender still leads at the same leader and
    /// partition epochs, the new ISR holds the leader, and every member is a live replica.
    fn alter_partition(&mut self, change: &IsrChange) -> Result<(), TopicError> {
        let live: Vec<i32> = self.live_brokers();
        let index = usize::try_from(change.partition).ok();
        let partition = self
            .topics
            .get(&change.topic)
            .and_then(|t| index.and_then(|i| t.partitions.get(i)))
            .ok_or_else(|| {
                TopicError::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("{}-{} does not exist", change.topic, change.partition),
                )
            })?;
        if partition.leader != change.leader || partition.leader_epoch != change.leader_epoch {
            return Err(TopicError::new(
                ErrorCode::FencedLeaderEpoch,
                format!(
                    "leader {} at epoch {} is not the current leader {} at epoch {}",
                    change.leader, change.leader_epoch, partition.leader, partition.leader_epoch
                ),
            ));
        }
        if partition.partition_epoch != change.partition_epoch {
            return Err(TopicError::new(
                ErrorCode::InvalidUpdateVersion,
                "the partition changed since the leader last saw it",
            ));
        }
        let eligible = |r: &i32| {
            partition.replicas.contains(r) && live.contains(r) && !partition.offline.contains(r)
        };
        // A member listed twice would count twice towards min.insync.replicas. (The length
        // is checked first: the comparison is quadratic.)
        let distinct = change.isr.len() <= partition.replicas.len()
            && change
                .isr
                .iter()
                .enumerate()
                .all(|(i, r)| !change.isr[..i].contains(r));
        if !distinct {
            return Err(TopicError::new(
                ErrorCode::InvalidRequest,
                format!("ISR {:?} lists a replica twice", change.isr),
            ));
        }
        if !change.isr.contains(&change.leader) || !change.isr.iter().all(eligible) {
            return Err(TopicError::new(
                ErrorCode::IneligibleReplica,
                format!(
                    "ISR {:?} must hold the leader and only live replicas",
                    change.isr
                ),
            ));
        }
        // Checked above: the topic and partition exist. Only this topic is copied.
        if let Some(partition) = self
            .topics
            .get_mut(&change.topic)
            .and_then(|t| index.and_then(|i| Arc::make_mut(t).partitions.get_mut(i)))
        {
            partition.isr = change.isr.clone();
            partition.partition_epoch += 1;
        }
        Ok(())
    }

    /// Marks the broker's replicas of `partitions` offline, takes them out of the ISR
    /// (unless one is the last member, kept as Kafka keeps it, with no leader) and moves
    /// their leaderships to the next eligible ISR member. Partitions that no longer exist
    /// (deleted meanwhile) or that the broker does not replicate are skipped.
    fn replicas_offline(
        &mut self,
        broker: i32,
        incarnation: u64,
        partitions: &[OfflinePartition],
    ) -> Result<(), TopicError> {
        if self
            .brokers
            .get(&broker)
            .is_none_or(|b| b.incarnation != incarnation)
        {
            return Err(TopicError::new(
                ErrorCode::StaleBrokerEpoch,
                format!("broker {broker} is not registered with incarnation {incarnation}"),
            ));
        }
        // Elections read only the brokers: the topics are taken out while they change.
        let mut topics = std::mem::take(&mut self.topics);
        for reported in partitions {
            let Some(topic) = topics
                .get_mut(&reported.topic)
                .filter(|t| t.id == reported.topic_id)
            else {
                continue;
            };
            let unclean = topic.unclean_election();
            let Some(index) = usize::try_from(reported.partition).ok().filter(|i| {
                topic
                    .partitions
                    .get(*i)
                    .is_some_and(|p| p.replicas.contains(&broker) && !p.offline.contains(&broker))
            }) else {
                continue;
            };
            let partition = &mut Arc::make_mut(topic).partitions[index];
            partition.offline.push(broker);
            if partition.isr.len() > 1 {
                partition.isr.retain(|r| *r != broker);
            }
            change_leader(partition, self, unclean);
        }
        self.topics = topics;
        Ok(())
    }

    /// A broker registered anew (a new process): its logs were opened again, so none of its
    /// replicas is offline any more (Kafka forgets a broker's offline directories likewise).
    fn clear_offline(&mut self, id: i32) {
        self.change_partitions(
            |p| p.offline.contains(&id),
            |partition, _, _| {
                partition.offline.retain(|r| *r != id);
                partition.partition_epoch += 1;
            },
        );
    }

    /// Runs `change` on every partition `selected` picks, with the metadata (for elections,
    /// which read only the brokers: the topics are taken out meanwhile) and the topic's
    /// unclean election setting. Only the topics holding a picked partition are copied.
    fn change_partitions(
        &mut self,
        selected: impl Fn(&PartitionState) -> bool,
        change: impl Fn(&mut PartitionState, &ClusterMetadata, bool),
    ) {
        let mut topics = std::mem::take(&mut self.topics);
        for topic in topics.values_mut() {
            if !topic.partitions.iter().any(&selected) {
                continue;
            }
            let unclean = topic.unclean_election();
            for partition in Arc::make_mut(topic)
                .partitions
                .iter_mut()
                .filter(|p| selected(p))
            {
                change(partition, self, unclean);
            }
        }
        self.topics = topics;
    }

    fn set_fenced(&mut self, id: i32, fenced: bool) -> Result<(), TopicError> {
        let broker = self.brokers.get_mut(&id).ok_or_else(|| {
            TopicError::new(
                ErrorCode::BrokerIdNotRegistered,
                format!("broker {id} is not registered"),
            )
        })?;
        broker.fenced = fenced;
        Ok(())
    }

    /// Takes a fenced broker out of every ISR (unless it is the last member, which Kafka keeps
    /// so the partition can come back with it) and moves its leaderships to the next replica
    /// in assignment order that is in the ISR and alive.
    fn fence(&mut self, id: i32) {
        self.change_partitions(
            |p| p.isr.contains(&id) || p.leader == id,
            |partition, meta, unclean| {
                if partition.isr.len() > 1 {
                    partition.isr.retain(|r| *r != id);
                }
                change_leader(partition, meta, unclean);
            },
        );
    }

    /// A broker restarted: what its previous process knew of its leaderships (its followers'
    /// positions, an ISR change in flight) is lost, so each partition it led gets a new leader
    /// epoch (and partition epoch), even if it is elected again. Kafka ends a re-registered
    /// broker's leaderships likewise. Without this, a broker back within its session led on
    /// at the same epoch without the ISR expansion its previous process had proposed, which
    /// then committed: the new ISR member lacked records acknowledged meanwhile (simulation
    /// seed 1155; its regression test is `seed_606_*`).
    fn end_leaderships(&mut self, id: i32) {
        self.change_partitions(
            |p| p.leader == id,
            |partition, meta, unclean| {
                let epoch = partition.leader_epoch;
                change_leader(partition, meta, unclean);
                if partition.leader_epoch == epoch {
                    partition.leader_epoch += 1;
                }
            },
        );
    }

    /// Gives a leader to every partition that has none and now can have one.
    fn elect_leaderless(&mut self) {
        self.change_partitions(|p| p.leader == NO_LEADER, change_leader);
    }

    fn create_partitions(
        &mut self,
        topic: &str,
        count: i32,
        seed: u64,
        limits: PartitionLimits,
    ) -> Result<(), TopicError> {
        let live = self.live_brokers();
        let existing = self.topics.get(topic).ok_or_else(|| {
            TopicError::new(
                ErrorCode::UnknownTopicOrPartition,
                format!("topic '{topic}' does not exist"),
            )
        })?;
        let current = existing.partition_count();
        if count <= current {
            return Err(TopicError::new(
                ErrorCode::InvalidPartitions,
                format!(
                    "topic '{topic}' has {current} partitions; the new count must be larger, got {count}"
                ),
            ));
        }
        limits::check_request_size([(count - current) as u64])?;
        let rf = existing.replication_factor().max(1) as usize;
        if rf > live.len() {
            return Err(TopicError::new(
                ErrorCode::InvalidReplicationFactor,
                format!(
                    "replication factor {rf} is larger than the {} live broker(s)",
                    live.len()
                ),
            ));
        }
        let assignment = assign_replicas(
            &live,
            (count - current) as usize,
            rf,
            current as usize,
            seed,
        );
        limits::check_capacity(self, existing.id, current as usize, &assignment, limits)?;
        let added = topics::new_partitions(self, assignment);
        if let Some(t) = self.topics.get_mut(topic) {
            Arc::make_mut(t).partitions.extend(added);
        }
        Ok(())
    }
}

/// Re-elects a partition's leader; a changed leader bumps the leader epoch. With unclean
/// election allowed, a partition whose whole ISR is gone takes the first live replica, which
/// becomes the ISR alone (acknowledged records it lacks are lost: the operator chose so).
fn change_leader(partition: &mut PartitionState, meta: &ClusterMetadata, unclean: bool) {
    let mut leader = elect_leader(partition, meta);
    if leader == NO_LEADER
        && unclean
        && let Some(live) = partition
            .replicas
            .iter()
            .copied()
            .find(|r| can_lead(partition, meta, *r))
    {
        tracing::warn!(leader = live, "unclean leader election");
        leader = live;
        partition.isr = vec![live];
    }
    if leader != partition.leader {
        partition.leader = leader;
        partition.leader_epoch += 1;
    }
    partition.partition_epoch += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(id: i32) -> MetadataCommand {
        MetadataCommand::RegisterBroker(BrokerInfo {
            id,
            host: "127.0.0.1".into(),
            port: 9092 + id as u16,
            shards: 2,
            incarnation: 1,
            fenced: false,
            listeners: Vec::new(),
        })
    }

    fn three_brokers_with_topic() -> ClusterMetadata {
        let mut meta = ClusterMetadata::new("c".into());
        for id in 1..=3 {
            meta.apply(&broker(id));
        }
        let create = MetadataCommand::CreateTopics {
            topics: vec![NewTopic {
                name: "t".into(),
                partitions: 6,
                replication_factor: 3,
                assignment: None,
                configs: vec![],
            }],
            ids: vec![Uuid::new_v4()],
            placement_seed: 9,
            limits: PartitionLimits::default(),
        };
        assert!(matches!(meta.apply(&create), CommandOutcome::Topics(r) if r[0].is_ok()));
        meta
    }

    #[test]
    fn a_restarted_broker_leads_again_only_at_new_epochs() {
        let mut meta = three_brokers_with_topic();
        let before = meta.topics["t"].clone();
        // The same process registering again changes nothing.
        meta.apply(&broker(2));
        assert_eq!(meta.topics["t"], before);
        let MetadataCommand::RegisterBroker(mut restarted) = broker(2) else {
            unreachable!()
        };
        restarted.incarnation = 2;
        meta.apply(&MetadataCommand::RegisterBroker(restarted));
        for (old, new) in before.partitions.iter().zip(&meta.topics["t"].partitions) {
            if old.leader == 2 {
                // Elected again (first in assignment order), at new epochs.
                assert_eq!(new.leader, old.leader);
                assert_eq!(new.leader_epoch, old.leader_epoch + 1);
                assert_eq!(new.partition_epoch, old.partition_epoch + 1);
            } else {
                assert_eq!(new, old);
            }
        }
    }

    #[test]
    fn fencing_moves_leadership_within_the_isr_and_bumps_epochs() {
        let mut meta = three_brokers_with_topic();
        let before = meta.topics["t"].clone();
        meta.apply(&MetadataCommand::FenceBroker { id: 2 });
        for (old, new) in before.partitions.iter().zip(&meta.topics["t"].partitions) {
            assert!(!new.isr.contains(&2));
            assert_ne!(new.leader, 2);
            assert!(new.isr.contains(&new.leader));
            if old.leader == 2 {
                assert_eq!(new.leader_epoch, old.leader_epoch + 1);
                // The next replica in assignment order that is still in the ISR.
                let expected = old.replicas.iter().find(|r| **r != 2).copied();
                assert_eq!(Some(new.leader), expected);
            } else {
                assert_eq!(new.leader_epoch, old.leader_epoch);
            }
        }
        assert_eq!(meta.live_brokers(), vec![1, 3]);
    }

    #[test]
    fn last_isr_member_stays_and_returns_as_leader() {
        let mut meta = ClusterMetadata::new("c".into());
        meta.apply(&broker(1));
        meta.apply(&MetadataCommand::CreateTopics {
            topics: vec![NewTopic {
                name: "solo".into(),
                partitions: 1,
                replication_factor: 1,
                assignment: None,
                configs: vec![],
            }],
            ids: vec![Uuid::new_v4()],
            placement_seed: 0,
            limits: PartitionLimits::default(),
        });
        meta.apply(&MetadataCommand::FenceBroker { id: 1 });
        let p = &meta.topics["solo"].partitions[0];
        assert_eq!(
            (p.leader, p.isr.clone(), p.leader_epoch),
            (NO_LEADER, vec![1], 1)
        );
        meta.apply(&MetadataCommand::UnfenceBroker { id: 1 });
        let p = &meta.topics["solo"].partitions[0];
        assert_eq!((p.leader, p.leader_epoch), (1, 2));
    }

    #[test]
    fn controlled_shutdown_moves_leadership_until_the_broker_registers_again() {
        let mut meta = three_brokers_with_topic();
        meta.apply(&MetadataCommand::ShutdownBroker { id: 1 });
        assert!(meta.topics["t"].partitions.iter().all(|p| p.leader != 1));
        assert!(meta.shutting_down.contains(&1));
        meta.apply(&broker(1));
        assert!(meta.shutting_down.is_empty());
        assert_eq!(meta.live_brokers(), vec![1, 2, 3]);
    }

    #[test]
    fn only_unclean_election_takes_an_out_of_sync_replica() {
        for unclean in [false, true] {
            let mut meta = three_brokers_with_topic();
            if unclean {
                let t = Arc::make_mut(meta.topics.get_mut("t").unwrap());
                t.config = crate::config::TopicConfig::from_pairs([(
                    "unclean.leader.election.enable",
                    "true",
                )])
                .unwrap();
            }
            // Shrink partition 0's ISR to its leader, then lose the leader.
            let p = meta.topics["t"].partitions[0].clone();
            meta.apply(&MetadataCommand::AlterPartition(IsrChange {
                topic: "t".into(),
                partition: 0,
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                isr: vec![p.leader],
            }));
            meta.apply(&MetadataCommand::FenceBroker { id: p.leader });
            let after = &meta.topics["t"].partitions[0];
            if unclean {
                assert_eq!(after.leader, p.replicas[1]);
                assert_eq!(after.isr, vec![p.replicas[1]]);
            } else {
                assert_eq!(
                    after.leader, NO_LEADER,
                    "offline until an ISR member returns"
                );
                assert_eq!(after.isr, vec![p.leader]);
            }
        }
    }

    #[test]
    fn producer_id_blocks_do_not_overlap() {
        let mut meta = ClusterMetadata::new("c".into());
        let a = meta.apply(&MetadataCommand::AllocateProducerIds);
        let b = meta.apply(&MetadataCommand::AllocateProducerIds);
        assert_eq!(a, CommandOutcome::ProducerIdBlock(0));
        assert_eq!(b, CommandOutcome::ProducerIdBlock(PRODUCER_ID_BLOCK));
    }

    /// A command copies only the topics it changes: the metadata before it (an image)
    /// still shares every other topic with the metadata after it.
    #[test]
    fn a_change_copies_only_the_topics_it_changes() {
        let mut meta = three_brokers_with_topic();
        let create = |name: &str, rf| MetadataCommand::CreateTopics {
            topics: vec![NewTopic {
                name: name.into(),
                partitions: 2,
                replication_factor: rf,
                assignment: None,
                configs: vec![],
            }],
            ids: vec![Uuid::new_v4()],
            placement_seed: 3,
            limits: PartitionLimits::default(),
        };
        assert!(meta.apply(&create("u", 3)).errors().is_empty());
        let shared = |a: &ClusterMetadata, b: &ClusterMetadata, name: &str| {
            Arc::ptr_eq(&a.topics[name], &b.topics[name])
        };
        // Creating a topic leaves the others alone.
        let before = meta.clone();
        assert!(meta.apply(&create("v", 1)).errors().is_empty());
        assert!(shared(&before, &meta, "t") && shared(&before, &meta, "u"));
        // An ISR change copies its topic only, and the copy leaves the image unchanged.
        let before = meta.clone();
        let p = meta.topics["t"].partitions[0].clone();
        let shrunk = vec![p.leader];
        let change = MetadataCommand::AlterPartition(IsrChange {
            topic: "t".into(),
            partition: 0,
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: shrunk.clone(),
        });
        assert_eq!(meta.apply(&change), CommandOutcome::Done(Ok(())));
        assert!(!shared(&before, &meta, "t"));
        assert!(shared(&before, &meta, "u") && shared(&before, &meta, "v"));
        assert_eq!(before.topics["t"].partitions[0].isr, p.isr);
        assert_eq!(meta.topics["t"].partitions[0].isr, shrunk);
        // A refused change copies nothing.
        let before = meta.clone();
        assert!(matches!(meta.apply(&change), CommandOutcome::Done(Err(_))));
        assert!(shared(&before, &meta, "t"));
        // Fencing a broker copies the topics it replicates and no other: "v" (RF 1, two
        // partitions) lies on at most two of the three brokers.
        let on_v: Vec<i32> = meta.topics["v"]
            .partitions
            .iter()
            .flat_map(|p| p.replicas.clone())
            .collect();
        let elsewhere = (1..=3).find(|id| !on_v.contains(id)).unwrap();
        let before = meta.clone();
        meta.apply(&MetadataCommand::FenceBroker { id: elsewhere });
        assert!(!shared(&before, &meta, "t") && !shared(&before, &meta, "u"));
        assert!(shared(&before, &meta, "v"));
    }

    #[test]
    fn partitions_can_only_grow() {
        let mut meta = three_brokers_with_topic();
        let grow = |count| MetadataCommand::CreatePartitions {
            topic: "t".into(),
            count,
            placement_seed: 1,
            limits: PartitionLimits::default(),
        };
        assert!(matches!(meta.apply(&grow(4)), CommandOutcome::Done(Err(e)) if e.code == 37));
        assert_eq!(meta.apply(&grow(9)), CommandOutcome::Done(Ok(())));
        assert_eq!(meta.topics["t"].partition_count(), 9);
        assert!(
            meta.topics["t"]
                .partitions
                .iter()
                .all(|p| p.replicas.len() == 3)
        );
    }

    #[test]
    fn isr_changes_need_the_current_leader_and_epochs() {
        let mut meta = three_brokers_with_topic();
        let p = meta.topics["t"].partitions[0].clone();
        let follower = p.replicas[1];
        let change = |isr: Vec<i32>, partition_epoch| {
            MetadataCommand::AlterPartition(IsrChange {
                topic: "t".into(),
                partition: 0,
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                partition_epoch,
                isr,
            })
        };
        let shrunk: Vec<i32> = p.isr.iter().copied().filter(|r| *r != follower).collect();
        assert_eq!(
            meta.apply(&change(shrunk.clone(), p.partition_epoch)),
            CommandOutcome::Done(Ok(()))
        );
        assert_eq!(meta.topics["t"].partitions[0].isr, shrunk);
        // The same request again is stale.
        assert!(matches!(
            meta.apply(&change(p.isr.clone(), p.partition_epoch)),
            CommandOutcome::Done(Err(e)) if e.code == ErrorCode::InvalidUpdateVersion.code()
        ));
        // An ISR without the leader is refused.
        let without_leader: Vec<i32> = p.isr.iter().copied().filter(|r| *r != p.leader).collect();
        assert!(matches!(
            meta.apply(&change(without_leader, p.partition_epoch + 1)),
            CommandOutcome::Done(Err(e)) if e.code == ErrorCode::IneligibleReplica.code()
        ));
    }

    #[test]
    fn apply_is_deterministic() {
        assert_eq!(
            three_brokers_with_topic().brokers,
            three_brokers_with_topic().brokers
        );
        let id = Uuid::new_v4();
        let create = |meta: &mut ClusterMetadata| {
            meta.apply(&MetadataCommand::CreateTopics {
                topics: vec![NewTopic {
                    name: "d".into(),
                    partitions: 12,
                    replication_factor: 2,
                    assignment: None,
                    configs: vec![],
                }],
                ids: vec![id],
                placement_seed: 77,
                limits: PartitionLimits::default(),
            })
        };
        let (mut a, mut b) = (three_brokers_with_topic(), three_brokers_with_topic());
        assert_eq!(create(&mut a), create(&mut b));
    }

    fn create(name: &str, partitions: i32, limits: PartitionLimits) -> MetadataCommand {
        MetadataCommand::CreateTopics {
            topics: vec![NewTopic {
                name: name.into(),
                partitions,
                replication_factor: 3,
                assignment: None,
                configs: vec![],
            }],
            ids: vec![Uuid::from_u128(5)],
            placement_seed: 3,
            limits,
        }
    }

    fn refused_with(outcome: &CommandOutcome, code: ErrorCode) -> bool {
        let errors = outcome.errors();
        !errors.is_empty() && errors.iter().all(|e| e.code == code.code())
    }

    #[test]
    fn a_committed_create_of_two_billion_partitions_is_a_no_op() {
        let mut meta = three_brokers_with_topic();
        let before = meta.clone();
        let outcome = meta.apply(&create("huge", i32::MAX, PartitionLimits::default()));
        assert!(
            refused_with(&outcome, ErrorCode::PolicyViolation),
            "{outcome:?}"
        );
        assert_eq!(meta, before);
        // The same through an assignment of as many partitions.
        let mut manual = NewTopic {
            name: "manual".into(),
            partitions: -1,
            replication_factor: -1,
            assignment: Some(vec![vec![1]; 10_001]),
            configs: vec![],
        };
        let command = |topic: NewTopic| MetadataCommand::CreateTopics {
            topics: vec![topic],
            ids: vec![Uuid::from_u128(6)],
            placement_seed: 0,
            limits: PartitionLimits::default(),
        };
        let outcome = meta.apply(&command(manual.clone()));
        assert!(
            refused_with(&outcome, ErrorCode::PolicyViolation),
            "{outcome:?}"
        );
        manual.assignment = Some(vec![vec![1]; 10]);
        assert!(meta.apply(&command(manual)).creates_anything());
    }

    #[test]
    fn a_committed_growth_to_two_billion_partitions_is_a_no_op() {
        let mut meta = three_brokers_with_topic();
        let before = meta.clone();
        let outcome = meta.apply(&MetadataCommand::CreatePartitions {
            topic: "t".into(),
            count: i32::MAX,
            placement_seed: 1,
            limits: PartitionLimits::default(),
        });
        assert!(
            refused_with(&outcome, ErrorCode::PolicyViolation),
            "{outcome:?}"
        );
        assert_eq!(meta, before);
    }

    #[test]
    fn creations_stop_at_the_shard_limit() {
        // 3 brokers of 2 shards; topic "t" put 6 replicas on each broker already.
        let mut meta = three_brokers_with_topic();
        let limits = PartitionLimits { per_shard: 6 };
        // (3 per shard: a topic's partitions alternate between the shards.) 12 more
        // partitions of RF 3 would put 6 more on each shard.
        let outcome = meta.apply(&create("big", 12, limits));
        assert!(
            refused_with(&outcome, ErrorCode::InvalidPartitions),
            "{outcome:?}"
        );
        assert!(!meta.topics.contains_key("big"));
        let outcome = meta.apply(&MetadataCommand::CreatePartitions {
            topic: "t".into(),
            count: 18,
            placement_seed: 1,
            limits,
        });
        assert!(
            refused_with(&outcome, ErrorCode::InvalidPartitions),
            "{outcome:?}"
        );
        assert_eq!(meta.topics["t"].partition_count(), 6);
        // Within the limit, creation goes on.
        let roomy = PartitionLimits { per_shard: 100 };
        assert!(meta.apply(&create("big", 12, roomy)).creates_anything());
    }

    #[test]
    fn malformed_commands_change_nothing() {
        let mut meta = three_brokers_with_topic();
        let before = meta.clone();
        let MetadataCommand::RegisterBroker(mut info) = broker(4) else {
            unreachable!()
        };
        info.shards = 0;
        let outcome = meta.apply(&MetadataCommand::RegisterBroker(info.clone()));
        assert!(refused_with(&outcome, ErrorCode::InvalidRequest));
        info.shards = 1;
        info.host = "h".repeat(10_000);
        assert!(refused_with(
            &meta.apply(&MetadataCommand::RegisterBroker(info.clone())),
            ErrorCode::InvalidRequest
        ));
        info.host = "h".into();
        let endpoint = listener::Endpoint {
            name: "SSL".into(),
            host: "h".into(),
            port: 1,
            protocol: listener::SecurityProtocol::Ssl,
        };
        for listeners in [
            vec![endpoint.clone(); listener::MAX_LISTENERS + 1],
            vec![listener::Endpoint {
                host: String::new(),
                ..endpoint.clone()
            }],
            vec![listener::Endpoint {
                name: "N".repeat(10_000),
                ..endpoint
            }],
        ] {
            let info = BrokerInfo {
                listeners,
                ..info.clone()
            };
            assert!(refused_with(
                &meta.apply(&MetadataCommand::RegisterBroker(info)),
                ErrorCode::InvalidRequest
            ));
        }
        let MetadataCommand::CreateTopics { topics, .. } = create("x", 1, Default::default())
        else {
            unreachable!()
        };
        let no_ids = MetadataCommand::CreateTopics {
            topics,
            ids: vec![],
            placement_seed: 0,
            limits: PartitionLimits::default(),
        };
        assert!(refused_with(
            &meta.apply(&no_ids),
            ErrorCode::InvalidRequest
        ));
        meta.apply(&MetadataCommand::ShutdownBroker { id: 77 });
        let p = meta.topics["t"].partitions[0].clone();
        let twice = MetadataCommand::AlterPartition(IsrChange {
            topic: "t".into(),
            partition: 0,
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: vec![p.leader, p.leader],
        });
        assert!(refused_with(&meta.apply(&twice), ErrorCode::InvalidRequest));
        assert_eq!(meta, before);
        meta.producer_id_block_end = i64::MAX - 1;
        assert!(refused_with(
            &meta.apply(&MetadataCommand::AllocateProducerIds),
            ErrorCode::UnknownServerError
        ));
    }

    #[test]
    fn entries_written_before_limits_existed_still_apply() {
        let command = create("old", 2, PartitionLimits::default());
        let mut json: serde_json::Value = serde_json::to_value(&command).unwrap();
        json["CreateTopics"]
            .as_object_mut()
            .unwrap()
            .remove("limits");
        let old: MetadataCommand = serde_json::from_value(json).unwrap();
        assert_eq!(old, command);
    }

    fn offline(
        meta: &ClusterMetadata,
        broker: i32,
        incarnation: u64,
        parts: &[i32],
    ) -> MetadataCommand {
        let topic = &meta.topics["t"];
        MetadataCommand::ReplicasOffline {
            broker,
            incarnation,
            partitions: parts
                .iter()
                .map(|p| OfflinePartition {
                    topic: "t".into(),
                    topic_id: topic.id,
                    partition: *p,
                })
                .collect(),
        }
    }

    #[test]
    fn offline_replicas_leave_the_isr_and_their_leaderships_move() {
        let mut meta = three_brokers_with_topic();
        let before = meta.topics["t"].clone();
        let report = offline(&meta, 2, 1, &[0, 1, 2, 3]);
        assert_eq!(meta.apply(&report), CommandOutcome::Done(Ok(())));
        let after = meta.topics["t"].clone();
        for (i, (old, new)) in before.partitions.iter().zip(&after.partitions).enumerate() {
            if i >= 4 {
                assert_eq!(new, old, "partition {i} was not reported");
                continue;
            }
            assert_eq!(new.offline, vec![2]);
            assert!(!new.isr.contains(&2) && new.isr.len() == 2);
            assert_eq!(new.partition_epoch, old.partition_epoch + 1);
            if old.leader == 2 {
                let expected = old.replicas.iter().find(|r| **r != 2).copied();
                assert_eq!(Some(new.leader), expected);
                assert_eq!(new.leader_epoch, old.leader_epoch + 1);
            } else {
                assert_eq!(
                    (new.leader, new.leader_epoch),
                    (old.leader, old.leader_epoch)
                );
            }
        }
        // Reported twice (a retried report that did commit): nothing changes.
        assert_eq!(meta.apply(&report), CommandOutcome::Done(Ok(())));
        assert_eq!(meta.topics["t"], after);
        // The leader may not take the offline replica back into the ISR.
        let p = after.partitions[0].clone();
        let back = MetadataCommand::AlterPartition(IsrChange {
            topic: "t".into(),
            partition: 0,
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: p.replicas.clone(),
        });
        assert!(matches!(meta.apply(&back),
            CommandOutcome::Done(Err(e)) if e.code == ErrorCode::IneligibleReplica.code()));
    }

    #[test]
    fn an_offline_last_isr_member_leaves_the_partition_leaderless_until_it_registers_anew() {
        for unclean in [false, true] {
            let mut meta = three_brokers_with_topic();
            if unclean {
                Arc::make_mut(meta.topics.get_mut("t").unwrap()).config =
                    crate::config::TopicConfig::from_pairs([(
                        "unclean.leader.election.enable",
                        "true",
                    )])
                    .unwrap();
            }
            let p = meta.topics["t"].partitions[0].clone();
            let leader = p.leader;
            meta.apply(&MetadataCommand::AlterPartition(IsrChange {
                topic: "t".into(),
                partition: 0,
                leader,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                isr: vec![leader],
            }));
            meta.apply(&offline(&meta, leader, 1, &[0]));
            let after = meta.topics["t"].partitions[0].clone();
            if unclean {
                // An out-of-sync healthy replica, never the offline one.
                assert_eq!(after.leader, p.replicas[1]);
                assert_eq!(after.isr, vec![p.replicas[1]]);
                continue;
            }
            assert_eq!((after.leader, after.isr.clone()), (NO_LEADER, vec![leader]));
            assert_eq!(after.offline, vec![leader]);
            // Fencing and unfencing the others elects nobody: the only ISR member is offline.
            let other = p.replicas[1];
            meta.apply(&MetadataCommand::FenceBroker { id: other });
            meta.apply(&MetadataCommand::UnfenceBroker { id: other });
            assert_eq!(meta.topics["t"].partitions[0].leader, NO_LEADER);
            // The same process registering again does not clear it; a new process does.
            let MetadataCommand::RegisterBroker(mut info) = broker(leader) else {
                unreachable!()
            };
            meta.apply(&MetadataCommand::RegisterBroker(info.clone()));
            assert_eq!(meta.topics["t"].partitions[0].leader, NO_LEADER);
            info.incarnation = 2;
            meta.apply(&MetadataCommand::RegisterBroker(info));
            let back = &meta.topics["t"].partitions[0];
            assert!(back.offline.is_empty());
            assert_eq!(back.leader, leader);
            assert!(back.leader_epoch > after.leader_epoch);
        }
    }

    #[test]
    fn stale_or_foreign_offline_reports_change_nothing() {
        let mut meta = three_brokers_with_topic();
        let before = meta.clone();
        // From a process of broker 2 that has since restarted.
        assert!(matches!(meta.apply(&offline(&meta, 2, 7, &[0])),
            CommandOutcome::Done(Err(e)) if e.code == ErrorCode::StaleBrokerEpoch.code()));
        // From a broker that never registered.
        assert!(matches!(
            meta.apply(&offline(&meta, 9, 1, &[0])),
            CommandOutcome::Done(Err(_))
        ));
        // A partition that does not exist, or a topic deleted and created again.
        let mut stale_topic = offline(&meta, 2, 1, &[-1, 6, i32::MAX]);
        if let MetadataCommand::ReplicasOffline { partitions, .. } = &mut stale_topic {
            partitions.push(OfflinePartition {
                topic: "t".into(),
                topic_id: Uuid::new_v4(),
                partition: 0,
            });
        }
        assert_eq!(meta.apply(&stale_topic), CommandOutcome::Done(Ok(())));
        assert_eq!(meta, before);
    }
}
