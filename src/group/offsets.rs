//! The groups and committed offsets of one `__consumer_offsets` partition, as its leader's
//! coordinator holds them: rebuilt by replaying the partition's records when leadership
//! arrives, then changed only by records the coordinator has written (so memory never runs
//! ahead of the replicated log), and expired by `offsets.retention.minutes` (KIP-211).

use std::collections::{BTreeMap, HashMap};

use super::StoredGroup;
use super::records::{CommittedOffset, OffsetsRecord};
use super::state::{Group, Phase};

/// (topic, partition)
pub type TopicPartition = (String, i32);

/// A committed offset and the log offset of the record that holds it: a record applied
/// after a newer one for the same key (two commits completing out of order) is ignored.
#[derive(Debug, Clone)]
struct Committed {
    value: CommittedOffset,
    record_offset: i64,
}

/// Applies one offset record: a value replaces an older one (records replayed in log order
/// always do), a tombstone removes it.
fn put(
    offsets: &mut BTreeMap<TopicPartition, Committed>,
    key: TopicPartition,
    value: Option<CommittedOffset>,
    record_offset: i64,
) {
    match value {
        Some(value) => {
            if offsets
                .get(&key)
                .is_none_or(|c| c.record_offset < record_offset)
            {
                offsets.insert(
                    key,
                    Committed {
                        value,
                        record_offset,
                    },
                );
            }
        }
        None => {
            offsets.remove(&key);
        }
    }
}

#[derive(Default)]
pub struct PartitionGroups {
    pub groups: HashMap<String, Group>,
    offsets: HashMap<String, BTreeMap<TopicPartition, Committed>>,
}

/// Replays a partition's records, oldest first.
#[derive(Default)]
pub struct Loader {
    groups: HashMap<String, Option<StoredGroup>>,
    offsets: HashMap<String, BTreeMap<TopicPartition, Committed>>,
}

impl Loader {
    pub fn apply(&mut self, record: OffsetsRecord, record_offset: i64) {
        match record {
            OffsetsRecord::Offset {
                group,
                topic,
                partition,
                value,
            } => {
                let offsets = self.offsets.entry(group).or_default();
                put(offsets, (topic, partition), value, record_offset);
            }
            OffsetsRecord::Group { group, value } => {
                self.groups.insert(group, value);
            }
        }
    }

    /// The loaded state; members of a loaded group get a full session from `now_ms`.
    pub fn finish(self, now_ms: i64) -> PartitionGroups {
        let groups = self
            .groups
            .into_iter()
            .filter_map(|(id, stored)| {
                let stored = stored?;
                Some((id.clone(), Group::from_stored(id, stored, now_ms)))
            })
            .collect();
        let offsets = self
            .offsets
            .into_iter()
            .filter(|(_, o)| !o.is_empty())
            .collect();
        PartitionGroups { groups, offsets }
    }
}

impl PartitionGroups {
    /// Whether a group exists: with members or state, or only with committed offsets (a
    /// group whose consumers commit without joining).
    pub fn knows(&self, group: &str) -> bool {
        self.groups
            .get(group)
            .is_some_and(|g| g.phase() != Phase::Dead)
            || self.offsets.contains_key(group)
    }

    pub fn group_mut(&mut self, group: &str) -> Option<&mut Group> {
        self.groups.get_mut(group)
    }

    /// The group, created Empty if it does not exist (JoinGroup, OffsetCommit).
    pub fn group_or_new(&mut self, group: &str) -> &mut Group {
        let entry = self
            .groups
            .entry(group.to_string())
            .or_insert_with(|| Group::new(group.to_string()));
        if entry.phase() == Phase::Dead {
            *entry = Group::new(group.to_string());
        }
        entry
    }

    pub fn committed(&self, group: &str, tp: &TopicPartition) -> Option<&CommittedOffset> {
        self.offsets.get(group)?.get(tp).map(|c| &c.value)
    }

    /// Every committed offset of a group, in topic and partition order.
    pub fn all_committed(&self, group: &str) -> Vec<(TopicPartition, CommittedOffset)> {
        self.offsets.get(group).map_or_else(Vec::new, |o| {
            o.iter()
                .map(|(tp, c)| (tp.clone(), c.value.clone()))
                .collect()
        })
    }

    /// Applies a record this coordinator wrote, once it is committed at `record_offset`.
    pub fn apply_written(&mut self, record: OffsetsRecord, record_offset: i64) {
        match record {
            OffsetsRecord::Offset {
                group,
                topic,
                partition,
                value,
            } => {
                let offsets = self.offsets.entry(group.clone()).or_default();
                put(offsets, (topic, partition), value, record_offset);
                if offsets.is_empty() {
                    self.offsets.remove(&group);
                }
            }
            // Group records change the in-memory group before they are written (the state
            // machine is the source); a tombstone removes a deleted group for good.
            OffsetsRecord::Group { group, value: None } => {
                self.groups.remove(&group);
                self.offsets.remove(&group);
            }
            OffsetsRecord::Group { value: Some(_), .. } => {}
        }
    }

    /// Offsets past retention (KIP-211), and the groups left with nothing, as tombstones to
    /// write: an Empty group's offsets expire `retention_ms` after it became empty; offsets
    /// committed without a group (or for topics a consumer group no longer subscribes to)
    /// expire `retention_ms` after their commit.
    pub fn expired(&self, now_ms: i64, retention_ms: i64) -> Vec<OffsetsRecord> {
        let mut tombstones = Vec::new();
        for (group_id, offsets) in &self.offsets {
            let group = self
                .groups
                .get(group_id)
                .filter(|g| g.phase() != Phase::Dead);
            let subscribed = group.and_then(|g| g.subscribed_topics());
            let mut expired = 0;
            for ((topic, partition), c) in offsets {
                let base = match group {
                    Some(g) if g.phase() == Phase::Empty => {
                        g.empty_since().unwrap_or(c.value.commit_timestamp_ms)
                    }
                    Some(_) => match &subscribed {
                        // Still consumed by the group: kept.
                        Some(topics) if topics.contains(topic) => continue,
                        Some(_) => c.value.commit_timestamp_ms,
                        None => continue,
                    },
                    None => c.value.commit_timestamp_ms,
                };
                if now_ms - base >= retention_ms {
                    expired += 1;
                    tombstones.push(OffsetsRecord::Offset {
                        group: group_id.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                        value: None,
                    });
                }
            }
            let all_gone = expired == offsets.len();
            if all_gone && group.is_none_or(|g| g.phase() == Phase::Empty) {
                tombstones.push(OffsetsRecord::Group {
                    group: group_id.clone(),
                    value: None,
                });
            }
        }
        tombstones
    }

    /// Tombstones for a group and all its offsets (DeleteGroups).
    pub fn deletion(&self, group: &str) -> Vec<OffsetsRecord> {
        let mut records: Vec<OffsetsRecord> = self
            .offsets
            .get(group)
            .into_iter()
            .flatten()
            .map(|((topic, partition), _)| OffsetsRecord::Offset {
                group: group.to_string(),
                topic: topic.clone(),
                partition: *partition,
                value: None,
            })
            .collect();
        records.push(OffsetsRecord::Group {
            group: group.to_string(),
            value: None,
        });
        records
    }

    /// Every known group: (id, protocol type, phase). A group known only by its offsets is
    /// listed as Empty, as Kafka lists a group that commits without joining.
    pub fn listed(&self) -> Vec<(String, String, Phase)> {
        let mut listed: Vec<_> = self
            .groups
            .iter()
            .filter(|(_, g)| g.phase() != Phase::Dead)
            .map(|(id, g)| {
                let protocol_type = g.protocol_type().unwrap_or_default().to_string();
                (id.clone(), protocol_type, g.phase())
            })
            .collect();
        listed.extend(
            self.offsets
                .keys()
                .filter(|id| !self.groups.contains_key(*id))
                .map(|id| (id.clone(), String::new(), Phase::Empty)),
        );
        listed
    }

    /// Leadership moved away: every waiting member is told to find the new coordinator.
    pub fn shutdown(&mut self) {
        for g in self.groups.values_mut() {
            g.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset(group: &str, partition: i32, value: Option<i64>, ts: i64) -> OffsetsRecord {
        OffsetsRecord::Offset {
            group: group.into(),
            topic: "t".into(),
            partition,
            value: value.map(|offset| CommittedOffset {
                offset,
                leader_epoch: -1,
                metadata: String::new(),
                commit_timestamp_ms: ts,
            }),
        }
    }

    #[test]
    fn replay_keeps_the_last_value_and_honours_tombstones() {
        let mut loader = Loader::default();
        loader.apply(offset("g", 0, Some(5), 1), 0);
        loader.apply(offset("g", 0, Some(9), 2), 1);
        loader.apply(offset("g", 1, Some(3), 2), 2);
        loader.apply(offset("g", 1, None, 3), 3);
        loader.apply(offset("h", 0, Some(1), 3), 4);
        loader.apply(
            OffsetsRecord::Group {
                group: "h".into(),
                value: None,
            },
            5,
        );
        let state = loader.finish(10);
        assert_eq!(state.committed("g", &("t".into(), 0)).unwrap().offset, 9);
        assert!(state.committed("g", &("t".into(), 1)).is_none());
        assert!(state.knows("g"));
        assert!(
            state.knows("h"),
            "offsets outlive a group record's tombstone"
        );
    }

    #[test]
    fn a_late_completion_does_not_overwrite_a_newer_commit() {
        let mut state = PartitionGroups::default();
        state.apply_written(offset("g", 0, Some(7), 1), 11);
        state.apply_written(offset("g", 0, Some(6), 1), 10);
        assert_eq!(state.committed("g", &("t".into(), 0)).unwrap().offset, 7);
    }

    #[test]
    fn offsets_without_a_group_expire_by_commit_time() {
        let mut state = PartitionGroups::default();
        state.apply_written(offset("g", 0, Some(7), 1_000), 0);
        state.apply_written(offset("g", 1, Some(7), 5_000), 1);
        let expired = state.expired(3_000, 2_000);
        assert_eq!(expired, vec![offset("g", 0, None, 0)]);
        let expired = state.expired(8_000, 2_000);
        assert_eq!(
            expired.len(),
            3,
            "both offsets and then the group: {expired:?}"
        );
        for r in expired {
            state.apply_written(r, 2);
        }
        assert!(!state.knows("g"));
    }

    #[test]
    fn deletion_tombstones_every_offset_and_the_group() {
        let mut state = PartitionGroups::default();
        state.apply_written(offset("g", 0, Some(7), 1), 0);
        state.apply_written(offset("g", 3, Some(7), 1), 1);
        let records = state.deletion("g");
        assert_eq!(records.len(), 3);
        for r in records {
            state.apply_written(r, 2);
        }
        assert!(!state.knows("g"));
    }
}
