//! Replica placement and leader election, by Kafka's rules.

use uuid::Uuid;

use super::{ClusterMetadata, NO_LEADER, PartitionState};

/// The shard (core) of a broker that owns `partition` of a topic: partitions of one topic go
/// round-robin over the shards, starting at a shard chosen by the topic id so topics do not
/// pile up on shard 0.
pub fn owner_shard(topic_id: Uuid, partition: i32, shard_count: usize) -> usize {
    let start = topic_id.as_u64_pair().0 as usize;
    start.wrapping_add(partition as usize) % shard_count
}

/// Kafka's rack-unaware assignment (`AdminUtils.assignReplicasToBrokersRackUnaware`):
/// replica lists round-robin over the sorted brokers from a random start, the followers
/// shifted so that no two partitions share the same replica order. The first replica (the
/// preferred leader) walks the brokers, so leaders spread evenly.
///
/// `seed` supplies the two random choices (start index and replica shift) so every voter
/// computes the same assignment. `first_partition` > 0 when adding partitions.
pub fn assign_replicas(
    brokers: &[i32],
    partitions: usize,
    replication_factor: usize,
    first_partition: usize,
    seed: u64,
) -> Vec<Vec<i32>> {
    let n = brokers.len();
    assert!(
        n > 0 && replication_factor <= n,
        "placement needs enough brokers"
    );
    let mut sorted = brokers.to_vec();
    sorted.sort_unstable();
    let start = (seed % n as u64) as usize;
    let mut shift = ((seed >> 32) % n as u64) as usize;
    (first_partition..first_partition + partitions)
        .map(|p| {
            if p > 0 && p % n == 0 {
                shift += 1;
            }
            let first = (p + start) % n;
            let mut replicas = vec![sorted[first]];
            for j in 0..replication_factor - 1 {
                let offset = 1 + (shift + j) % (n - 1);
                replicas.push(sorted[(first + offset) % n]);
            }
            replicas
        })
        .collect()
}

/// Kafka's election: the first replica in assignment order that is in the ISR, alive and
/// not offline.
pub fn elect_leader(partition: &PartitionState, meta: &ClusterMetadata) -> i32 {
    partition
        .replicas
        .iter()
        .copied()
        .find(|r| partition.isr.contains(r) && can_lead(partition, meta, *r))
        .unwrap_or(NO_LEADER)
}

/// A replica that may lead: its broker is alive and its log is not offline.
pub fn can_lead(partition: &PartitionState, meta: &ClusterMetadata, replica: i32) -> bool {
    meta.is_live(replica) && !partition.offline.contains(&replica)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn replicas_are_distinct_and_leaders_balanced() {
        let brokers = [3, 1, 2];
        for seed in [0u64, 7, 1 << 33, u64::MAX] {
            for partitions in 1..=64 {
                for rf in 1..=3 {
                    let a = assign_replicas(&brokers, partitions, rf, 0, seed);
                    assert_eq!(a.len(), partitions);
                    let mut leaders: HashMap<i32, usize> = HashMap::new();
                    for r in &a {
                        let mut d = r.clone();
                        d.sort_unstable();
                        d.dedup();
                        assert_eq!(d.len(), rf, "{r:?}");
                        *leaders.entry(r[0]).or_default() += 1;
                    }
                    let max = leaders.values().max().copied().unwrap_or(0);
                    let min = if leaders.len() < brokers.len().min(partitions) {
                        0
                    } else {
                        leaders.values().min().copied().unwrap_or(0)
                    };
                    assert!(max - min <= 1, "unbalanced leaders {leaders:?}");
                }
            }
        }
    }

    #[test]
    fn matches_kafkas_fixed_start_example() {
        // AdminUtilsTest.testReplicaAssignment: 5 brokers, 10 partitions, RF 3, start 0.
        let a = assign_replicas(&[0, 1, 2, 3, 4], 10, 3, 0, 0);
        let expected = [
            [0, 1, 2],
            [1, 2, 3],
            [2, 3, 4],
            [3, 4, 0],
            [4, 0, 1],
            [0, 2, 3],
            [1, 3, 4],
            [2, 4, 0],
            [3, 0, 1],
            [4, 1, 2],
        ];
        for (p, e) in expected.iter().enumerate() {
            assert_eq!(a[p], e.to_vec(), "partition {p}");
        }
    }
}
