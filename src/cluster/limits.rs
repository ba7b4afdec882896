//! How much metadata one command may create: checked by the proposer before it proposes
//! (on a copy of its metadata) and again, deterministically, by every voter that applies the
//! command, so a request that slipped past a proposer, or an old entry of the log, is a
//! refused no-op rather than a huge allocation.
//!
//! Three bounds: new partitions per request (Kafka's `MAX_RECORDS_PER_USER_OP`, answered with
//! POLICY_VIOLATION), partition replicas per shard of each broker (Redpanda's
//! `topic_partitions_per_shard`, answered with INVALID_PARTITIONS, as Redpanda does), and
//! partition replicas in the whole cluster (the metadata snapshot must fit one controller
//! frame).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ClusterMetadata;
use super::placement::owner_shard;
use super::quorum::transport::MAX_FRAME_BYTES;
use super::topics::TopicError;
use crate::protocol::ErrorCode;

/// New partitions one CreateTopics or CreatePartitions may add: Kafka's controller refuses a
/// user operation of more than 10,000 records (one per partition) with POLICY_VIOLATION.
pub const MAX_PARTITIONS_PER_REQUEST: u64 = 10_000;
/// Partition replicas in the whole cluster.
pub const MAX_CLUSTER_REPLICAS: usize = 200_000;
/// A generous size of one replica in the JSON metadata snapshot (its partition's share of
/// ids, epochs, ISR and topic name included).
const SNAPSHOT_BYTES_PER_REPLICA: usize = 256;
// The largest metadata a cluster may hold must travel as one snapshot frame.
const _: () = assert!(MAX_CLUSTER_REPLICAS * SNAPSHOT_BYTES_PER_REPLICA <= MAX_FRAME_BYTES);

/// `corelog.max.partitions.per.shard`'s default: Redpanda's `topic_partitions_per_shard`.
pub const DEFAULT_PARTITIONS_PER_SHARD: u32 = 1000;
/// The most shards (cores) a broker may register with.
pub const MAX_SHARDS_PER_BROKER: u32 = 1024;

/// The limits a creation was proposed under: the proposer's settings, carried in the command
/// so that every voter applies it against the same numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionLimits {
    /// Partition replicas one shard of a broker may own.
    pub per_shard: u32,
}

impl Default for PartitionLimits {
    /// What entries written before limits existed are applied with.
    fn default() -> Self {
        Self {
            per_shard: DEFAULT_PARTITIONS_PER_SHARD,
        }
    }
}

/// Kafka's answer to an operation over [`MAX_PARTITIONS_PER_REQUEST`]; `requested` are the
/// partition counts asked for (summed without overflow, before anything is allocated).
pub fn check_request_size(requested: impl IntoIterator<Item = u64>) -> Result<(), TopicError> {
    let total = requested
        .into_iter()
        .fold(0u64, |sum, n| sum.saturating_add(n));
    if total > MAX_PARTITIONS_PER_REQUEST {
        return Err(TopicError::new(
            ErrorCode::PolicyViolation,
            format!(
                "Unable to perform excessively large batch operation: {total} new partitions, at most {MAX_PARTITIONS_PER_REQUEST} per request"
            ),
        ));
    }
    Ok(())
}

/// Whether `added` (replica lists of partitions `first_partition..` of topic `topic_id`) fit
/// in the cluster: every shard they land on stays within `limits.per_shard`, and the
/// cluster within [`MAX_CLUSTER_REPLICAS`].
///
/// One pass over the existing partitions that hashes only the replicas on brokers `added`
/// touches (`benches/metadata_scale.rs`: well under a millisecond at 100,000 partitions);
/// a count kept per shard would be O(changed) but must follow every change of replicas and
/// of a broker's shard count.
pub fn check_capacity(
    meta: &ClusterMetadata,
    topic_id: Uuid,
    first_partition: usize,
    added: &[Vec<i32>],
    limits: PartitionLimits,
) -> Result<(), TopicError> {
    let mut load: BTreeMap<(i32, usize), u64> = BTreeMap::new();
    // The brokers `added` lands on, with their shard counts (few: a short list to scan).
    let mut touched: Vec<(i32, usize)> = Vec::new();
    for (i, replicas) in added.iter().enumerate() {
        for &broker in replicas {
            let shards = shard_count(meta, broker);
            if !touched.contains(&(broker, shards)) {
                touched.push((broker, shards));
            }
            let shard = owner_shard(topic_id, partition_index(first_partition + i), shards);
            *load.entry((broker, shard)).or_default() += 1;
        }
    }
    let mut existing = 0usize;
    for topic in meta.topics.values() {
        for (i, partition) in topic.partitions.iter().enumerate() {
            existing += partition.replicas.len();
            for broker in &partition.replicas {
                let Some(&(_, shards)) = touched.iter().find(|(b, _)| b == broker) else {
                    continue;
                };
                let shard = owner_shard(topic.id, partition_index(i), shards);
                if let Some(n) = load.get_mut(&(*broker, shard)) {
                    *n += 1;
                }
            }
        }
    }
    let new: usize = added.iter().map(Vec::len).sum();
    if existing.saturating_add(new) > MAX_CLUSTER_REPLICAS {
        return Err(TopicError::new(
            ErrorCode::InvalidPartitions,
            format!(
                "{new} new partition replicas would take the cluster's {existing} over its limit of {MAX_CLUSTER_REPLICAS}"
            ),
        ));
    }
    match load.iter().find(|(_, n)| **n > u64::from(limits.per_shard)) {
        Some(((broker, shard), n)) => Err(TopicError::new(
            ErrorCode::InvalidPartitions,
            format!(
                "shard {shard} of broker {broker} would own {n} partition replicas, over corelog.max.partitions.per.shard = {}",
                limits.per_shard
            ),
        )),
        None => Ok(()),
    }
}

/// How many shards own `broker`'s replicas (1 for a broker not registered yet).
fn shard_count(meta: &ClusterMetadata, broker: i32) -> usize {
    meta.brokers.get(&broker).map_or(1, |b| b.shards.max(1)) as usize
}

fn partition_index(partition: usize) -> i32 {
    i32::try_from(partition).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{BrokerInfo, PartitionState, TopicMeta};

    fn cluster(shards: u32) -> ClusterMetadata {
        let mut meta = ClusterMetadata::new("c".into());
        for id in 1..=2 {
            meta.brokers.insert(
                id,
                BrokerInfo {
                    id,
                    host: "h".into(),
                    port: 1,
                    shards,
                    incarnation: 1,
                    fenced: false,
                    listeners: Vec::new(),
                },
            );
        }
        meta
    }

    fn with_topic(mut meta: ClusterMetadata, partitions: usize) -> ClusterMetadata {
        let partition = PartitionState {
            replicas: vec![1, 2],
            leader: 1,
            leader_epoch: 0,
            isr: vec![1, 2],
            partition_epoch: 0,
            offline: Vec::new(),
        };
        meta.topics.insert(
            "t".into(),
            std::sync::Arc::new(TopicMeta {
                name: "t".into(),
                id: Uuid::from_u128(7),
                partitions: vec![partition; partitions],
                config: Default::default(),
            }),
        );
        meta
    }

    #[test]
    fn a_request_over_ten_thousand_partitions_is_a_policy_violation() {
        assert!(check_request_size([5_000, 5_000]).is_ok());
        let err = check_request_size([5_000, 5_001]).unwrap_err();
        assert_eq!(err.code, ErrorCode::PolicyViolation.code());
        // No overflow however much is asked.
        assert!(check_request_size([u64::MAX, u64::MAX]).is_err());
        assert!(check_request_size([i32::MAX as u64]).is_err());
    }

    #[test]
    fn each_shard_holds_at_most_its_limit() {
        let limits = PartitionLimits { per_shard: 10 };
        let id = Uuid::from_u128(99);
        // One shard per broker: 10 replicas fit on each, 11 do not.
        let meta = cluster(1);
        assert!(check_capacity(&meta, id, 0, &vec![vec![1, 2]; 10], limits).is_ok());
        let err = check_capacity(&meta, id, 0, &vec![vec![1, 2]; 11], limits).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidPartitions.code());
        // Existing replicas count: 6 there, 4 more fit, 5 do not.
        let meta = with_topic(cluster(1), 6);
        assert!(check_capacity(&meta, id, 0, &vec![vec![1]; 4], limits).is_ok());
        assert!(check_capacity(&meta, id, 0, &vec![vec![1]; 5], limits).is_err());
        // Two shards per broker: partitions of a topic alternate between them.
        let meta = cluster(2);
        assert!(check_capacity(&meta, id, 0, &vec![vec![1]; 20], limits).is_ok());
        assert!(check_capacity(&meta, id, 0, &vec![vec![1]; 21], limits).is_err());
    }

    #[test]
    fn existing_replicas_count_on_the_shard_that_owns_them() {
        let limits = PartitionLimits { per_shard: 10 };
        let id = Uuid::from_u128(99);
        // Two shards per broker: the 6 existing partitions put 3 replicas on each shard of
        // brokers 1 and 2.
        let meta = with_topic(cluster(2), 6);
        assert!(check_capacity(&meta, id, 0, &vec![vec![1]; 14], limits).is_ok());
        let err = check_capacity(&meta, id, 0, &vec![vec![2]; 15], limits).unwrap_err();
        assert!(err.message.contains("of broker 2"), "{}", err.message);
        // Adding partitions to the existing topic continues its shard rotation.
        let topic = meta.topics["t"].id;
        assert!(check_capacity(&meta, topic, 6, &vec![vec![1]; 14], limits).is_ok());
        assert!(check_capacity(&meta, topic, 6, &vec![vec![1]; 15], limits).is_err());
    }

    #[test]
    fn the_cluster_holds_at_most_its_limit() {
        let limits = PartitionLimits {
            per_shard: u32::MAX,
        };
        let meta = with_topic(cluster(1), MAX_CLUSTER_REPLICAS / 2);
        let id = Uuid::from_u128(99);
        assert!(check_capacity(&meta, id, 0, &[], limits).is_ok());
        let err = check_capacity(&meta, id, 0, &[vec![1]], limits).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidPartitions.code());
    }

    #[test]
    fn old_entries_get_the_propertys_default() {
        let property = crate::config::BROKER_PROPERTIES
            .iter()
            .find(|p| p.name == "corelog.max.partitions.per.shard")
            .expect("the property exists");
        assert_eq!(
            property.default.as_int(),
            i64::from(PartitionLimits::default().per_shard)
        );
    }
}
