//! The leader-epoch lookups both ends of a follower fetch decide with (KIP-101, KIP-320),
//! and the leader's divergence check (Fetch v12's DivergingEpoch).
//!
//! Pure: a [`PartitionLog`] answers the lookups in production, a model log in the
//! simulation, and both run the same decisions ([`diverging_epoch`] here, the follower's in
//! `follower::decide`).

use crate::storage::PartitionLog;

/// What a replica's log tells about its leader epochs.
pub trait EpochLog {
    /// The first offset the log still has.
    fn log_start_offset(&self) -> i64;
    /// The offset after the last record.
    fn log_end_offset(&self) -> i64;
    /// The epoch of the last batch, if any (the epoch cache's latest entry).
    fn latest_epoch(&self) -> Option<i32>;
    /// Kafka's `LeaderEpochFileCache.endOffsetFor`; see [`PartitionLog::end_offset_for_epoch`].
    fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)>;
}

impl EpochLog for PartitionLog {
    fn log_start_offset(&self) -> i64 {
        PartitionLog::log_start_offset(self)
    }

    fn log_end_offset(&self) -> i64 {
        PartitionLog::log_end_offset(self)
    }

    fn latest_epoch(&self) -> Option<i32> {
        PartitionLog::latest_epoch(self)
    }

    fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        PartitionLog::end_offset_for_epoch(self, epoch)
    }
}

/// Fetch v12's divergence check on the leader (Kafka's `Partition.fetchRecords`): the
/// follower's last batch is of an epoch the leader ended earlier than the follower's fetch
/// offset, or of an epoch the leader never had. Returns the (epoch, end offset) to answer as
/// DivergingEpoch: the largest epoch the leader has at or below the follower's, and where it
/// ends in the leader's log.
///
/// `leader_epoch` is the leader's current epoch (None: no longer leading). Kafka's leader
/// puts its epoch in its cache when elected, starting at its log end; ours has it only once
/// it appended a batch. Until then an epoch between the latest cached one and the leader's
/// ends at the log end, as in Kafka. Answering (-1, -1) instead would be lost on the wire
/// (Fetch v12 encodes "no divergence" as epoch -1): the follower would keep a tail the leader
/// never had and take the leader's high watermark over it (found by the simulation; see its
/// `seed_16_*` regression test).
pub fn diverging_epoch(
    log: &impl EpochLog,
    fetch_offset: i64,
    last_fetched_epoch: i32,
    leader_epoch: Option<i32>,
) -> Option<(i32, i64)> {
    if last_fetched_epoch < 0 {
        return None;
    }
    let (epoch, end) = match log.end_offset_for_epoch(last_fetched_epoch) {
        Some(found) => found,
        None if leader_epoch.is_some_and(|e| last_fetched_epoch < e) => (
            log.latest_epoch().unwrap_or(last_fetched_epoch),
            log.log_end_offset(),
        ),
        None => (-1, -1),
    };
    (epoch < last_fetched_epoch || end < fetch_offset).then_some((epoch, end))
}

/// A log described by its epoch cache and end, for the decisions' unit tests.
#[cfg(test)]
pub(crate) mod test_log {
    use super::EpochLog;
    use crate::storage::EpochCache;

    pub struct Cached(EpochCache, i64);

    impl EpochLog for Cached {
        fn log_start_offset(&self) -> i64 {
            0
        }
        fn log_end_offset(&self) -> i64 {
            self.1
        }
        fn latest_epoch(&self) -> Option<i32> {
            self.0.latest_epoch()
        }
        fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
            self.0.end_offset_for(epoch, self.1)
        }
    }

    /// A log whose epochs start at the given offsets and that ends at `end`.
    pub fn log(epochs: &[(i32, i64)], end: i64) -> Cached {
        let mut cache = EpochCache::default();
        for (e, o) in epochs {
            cache.assign(*e, *o);
        }
        Cached(cache, end)
    }
}

#[cfg(test)]
mod tests {
    use super::test_log::log;
    use super::*;

    #[test]
    fn a_follower_in_line_with_the_leader_does_not_diverge() {
        let leader = log(&[(1, 0), (3, 10)], 20);
        assert_eq!(diverging_epoch(&leader, 20, 3, Some(3)), None);
        assert_eq!(diverging_epoch(&leader, 15, 3, Some(3)), None);
        assert_eq!(diverging_epoch(&leader, 10, 1, Some(3)), None);
        // No epoch yet: nothing to compare.
        assert_eq!(diverging_epoch(&leader, 0, -1, Some(3)), None);
        // A leader of epoch 5 that appended nothing yet: epoch 3 goes on to its log end.
        assert_eq!(diverging_epoch(&leader, 20, 3, Some(5)), None);
    }

    #[test]
    fn a_follower_past_the_leaders_end_of_its_epoch_diverges() {
        let leader = log(&[(1, 0), (3, 10)], 20);
        // Epoch 1 ended at 10 on the leader; the follower has epoch 1 up to 12.
        assert_eq!(diverging_epoch(&leader, 12, 1, Some(3)), Some((1, 10)));
        // Epoch 2 never existed on the leader: its floor is epoch 1, ending at 10.
        assert_eq!(diverging_epoch(&leader, 12, 2, Some(3)), Some((1, 10)));
        // Past the leader's log end in its latest epoch.
        assert_eq!(diverging_epoch(&leader, 25, 3, Some(3)), Some((3, 20)));
        // An epoch above any the leader knows, and the leader is not leading: Kafka's
        // undefined answer.
        assert_eq!(diverging_epoch(&leader, 25, 4, None), Some((-1, -1)));
    }

    /// As the simulation first found it: a broker briefly led epoch 1 (from a stale image) and appended
    /// at 26; the leader of epoch 2 had epochs up to 0 only, ending at its log end 83.
    #[test]
    fn an_epoch_the_leader_never_had_ends_at_its_log_end_until_it_appends() {
        let leader = log(&[(0, 0)], 83);
        assert_eq!(diverging_epoch(&leader, 27, 1, Some(2)), Some((0, 83)));
        // The follower then truncates to its own end of epoch 0: 26.
        let follower = log(&[(0, 0), (1, 26)], 27);
        assert_eq!(follower.end_offset_for_epoch(0), Some((0, 26)));
        // An empty leader: the follower's epoch ends at 0.
        let empty = log(&[], 0);
        assert_eq!(diverging_epoch(&empty, 5, 1, Some(2)), Some((1, 0)));
    }
}
