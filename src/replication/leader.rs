//! A partition leader's view of its followers: their log end offsets, when each last caught
//! up, the high watermark, and when the ISR should shrink or grow (Kafka's `Partition.scala`).
//!
//! Pure state: the caller reports follower fetches and its own durable log end, passes the
//! clock in ms, and sends the ISR changes this proposes to the controller (AlterPartition),
//! one at a time per partition (KIP-497).

use std::collections::BTreeMap;

/// What the leader knows of one follower.
#[derive(Debug, Clone, PartialEq)]
struct Follower {
    /// The offset the follower asked for last: everything below is durable on it. -1: unknown.
    log_end_offset: i64,
    /// Last time the follower had everything the leader had (or had at its previous fetch).
    last_caught_up_ms: i64,
    /// The leader's log end at the follower's previous fetch, and when that was.
    previous_fetch_leader_end: i64,
    previous_fetch_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LeaderState {
    node: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// The log end when this leader epoch began: a follower joins the ISR only past it.
    epoch_start_offset: i64,
    high_watermark: i64,
    followers: BTreeMap<i32, Follower>,
    /// The ISR of the AlterPartition in flight, if any.
    pending_isr: Option<Vec<i32>>,
    /// When the controller last refused a change: the next proposal waits a while.
    refused_at_ms: Option<i64>,
}

/// How long after a refused ISR change the leader proposes again.
pub const ISR_RETRY_MS: i64 = 1_000;

/// The partition as the controller last decided it.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

impl LeaderState {
    /// Becoming leader at `log_end`, with the high watermark the log had. ISR members start
    /// as caught up now (they get a full `replica.lag.time.max.ms` to show up), the others
    /// as never caught up.
    pub fn new(
        node: i32,
        assignment: Assignment,
        log_end: i64,
        high_watermark: i64,
        now_ms: i64,
    ) -> Self {
        let followers = assignment
            .replicas
            .iter()
            .filter(|r| **r != node)
            .map(|r| {
                let caught_up = if assignment.isr.contains(r) {
                    now_ms
                } else {
                    0
                };
                let follower = Follower {
                    log_end_offset: -1,
                    last_caught_up_ms: caught_up,
                    previous_fetch_leader_end: -1,
                    previous_fetch_ms: 0,
                };
                (*r, follower)
            })
            .collect();
        let leader = Self {
            node,
            leader_epoch: assignment.leader_epoch,
            partition_epoch: assignment.partition_epoch,
            replicas: assignment.replicas,
            isr: assignment.isr,
            epoch_start_offset: log_end,
            high_watermark: high_watermark.min(log_end),
            followers,
            pending_isr: None,
            refused_at_ms: None,
        };
        leader.check_assignment();
        leader
    }

    /// The controller's decisions this leader acts on: its ISR holds it and only replicas.
    fn check_assignment(&self) {
        assert!(
            self.isr.contains(&self.node),
            "leader {} is not in its ISR {:?}",
            self.node,
            self.isr
        );
        assert!(
            self.isr.iter().all(|r| self.replicas.contains(r)),
            "ISR {:?} is not a subset of the replicas {:?}",
            self.isr,
            self.replicas
        );
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    /// New metadata for the same leader epoch. A new partition epoch means the controller
    /// decided on this partition: the pending change, if any, is settled either way. The same
    /// partition epoch (metadata about something else) leaves a pending change pending: it
    /// may still be committed, and until then the high watermark must wait for it.
    pub fn update_assignment(&mut self, assignment: Assignment) {
        assert_eq!(
            assignment.leader_epoch, self.leader_epoch,
            "a new leader epoch is a new leadership"
        );
        if assignment.partition_epoch != self.partition_epoch {
            self.pending_isr = None;
        }
        self.partition_epoch = assignment.partition_epoch;
        self.isr = assignment.isr;
        self.replicas = assignment.replicas;
        self.check_assignment();
    }

    /// A follower fetched at `fetch_offset` (its durable log end) while the leader's log
    /// ended at `leader_log_end`, durable up to `leader_durable_end`. Caught up means having
    /// the leader's log end (Kafka's rule); the high watermark also waits for the leader's
    /// own durable end, since followers replicate what is appended, durable or not. Returns
    /// whether the high watermark moved.
    pub fn on_follower_fetch(
        &mut self,
        replica: i32,
        fetch_offset: i64,
        leader_log_end: i64,
        leader_durable_end: i64,
        now_ms: i64,
        min_isr: usize,
    ) -> bool {
        let Some(f) = self.followers.get_mut(&replica) else {
            return false;
        };
        // Kafka's Replica.updateFetchState.
        if fetch_offset >= leader_log_end {
            f.last_caught_up_ms = f.last_caught_up_ms.max(now_ms);
        } else if fetch_offset >= f.previous_fetch_leader_end {
            f.last_caught_up_ms = f.last_caught_up_ms.max(f.previous_fetch_ms);
        }
        f.log_end_offset = fetch_offset;
        f.previous_fetch_leader_end = leader_log_end;
        f.previous_fetch_ms = now_ms;
        self.advance_high_watermark(leader_durable_end, min_isr)
    }

    /// The leader's own durable log end moved. Returns whether the high watermark moved.
    pub fn advance_high_watermark(&mut self, leader_end: i64, min_isr: usize) -> bool {
        let isr = self.maximal_isr();
        // KIP-966: no progress while fewer than min.insync.replicas are in sync.
        if isr.len() < min_isr {
            return false;
        }
        let lowest = isr
            .iter()
            .map(|r| match self.followers.get(r) {
                Some(f) => f.log_end_offset,
                None => leader_end,
            })
            .min()
            .unwrap_or(leader_end);
        if lowest <= self.high_watermark {
            return false;
        }
        self.high_watermark = lowest;
        // The leader is in the ISR, so its own durable end bounds the minimum.
        assert!(
            lowest <= leader_end,
            "high watermark {lowest} past the leader's durable end {leader_end}"
        );
        true
    }

    /// The ISR the high watermark waits for: the committed one, plus a member being added,
    /// and still including a member being removed (KIP-497's "maximal ISR").
    fn maximal_isr(&self) -> Vec<i32> {
        let mut isr = self.isr.clone();
        if let Some(pending) = &self.pending_isr {
            for r in pending {
                if !isr.contains(r) {
                    isr.push(*r);
                }
            }
        }
        isr
    }

    /// Whether a new ISR change may be proposed: none in flight, none refused just now.
    fn may_propose(&self, now_ms: i64) -> bool {
        self.pending_isr.is_none()
            && self
                .refused_at_ms
                .is_none_or(|t| now_ms - t >= ISR_RETRY_MS)
    }

    /// The ISR without the followers that have not caught up for `lag_max_ms`, if that is
    /// a change and no other change is in flight.
    pub fn shrunk_isr(&self, now_ms: i64, lag_max_ms: i64) -> Option<Vec<i32>> {
        if !self.may_propose(now_ms) {
            return None;
        }
        let isr: Vec<i32> = self
            .isr
            .iter()
            .copied()
            .filter(|r| {
                *r == self.node
                    || self
                        .followers
                        .get(r)
                        .is_some_and(|f| now_ms - f.last_caught_up_ms <= lag_max_ms)
            })
            .collect();
        (isr.len() < self.isr.len()).then_some(isr)
    }

    /// The ISR with `replica` added, if it is out of it, live (registered, not fenced, not
    /// shutting down) and has caught up: its log end is at least the high watermark and the
    /// start of this leader epoch.
    pub fn expanded_isr(&self, replica: i32, live: bool, now_ms: i64) -> Option<Vec<i32>> {
        if !live || !self.may_propose(now_ms) || self.isr.contains(&replica) {
            return None;
        }
        let f = self.followers.get(&replica)?;
        let caught_up =
            f.log_end_offset >= self.high_watermark && f.log_end_offset >= self.epoch_start_offset;
        caught_up.then(|| {
            let mut isr = self.isr.clone();
            isr.push(replica);
            isr
        })
    }

    /// An AlterPartition with `isr` was sent.
    pub fn propose_isr(&mut self, isr: Vec<i32>) {
        self.pending_isr = Some(isr);
    }

    /// The AlterPartition failed (stale epoch, or the controller refused): try again after
    /// `ISR_RETRY_MS`.
    pub fn isr_rejected(&mut self, now_ms: i64) {
        self.pending_isr = None;
        self.refused_at_ms = Some(now_ms);
    }

    pub fn isr_change_pending(&self) -> bool {
        self.pending_isr.is_some()
    }

    /// Whether `isr` at `partition_epoch` is the change still waiting for an answer.
    pub fn is_pending(&self, partition_epoch: i32, isr: &[i32]) -> bool {
        self.partition_epoch == partition_epoch && self.pending_isr.as_deref() == Some(isr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG: i64 = 10_000;

    fn leader(isr: &[i32], log_end: i64) -> LeaderState {
        let assignment = Assignment {
            leader_epoch: 1,
            partition_epoch: 1,
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
        };
        LeaderState::new(1, assignment, log_end, 0, 1_000)
    }

    #[test]
    fn high_watermark_is_the_lowest_log_end_in_the_isr() {
        let mut l = leader(&[1, 2, 3], 0);
        assert!(!l.advance_high_watermark(10, 1), "followers unknown yet");
        assert!(!l.on_follower_fetch(2, 10, 10, 10, 1_100, 1));
        assert!(l.on_follower_fetch(3, 7, 10, 10, 1_100, 1));
        assert_eq!(l.high_watermark(), 7);
        assert!(l.on_follower_fetch(3, 10, 10, 10, 1_200, 1));
        assert_eq!(l.high_watermark(), 10);
        // The leader's own durable end bounds it too.
        assert!(!l.on_follower_fetch(2, 12, 10, 10, 1_300, 1));
        assert_eq!(l.high_watermark(), 10);
    }

    #[test]
    fn followers_ahead_of_the_leaders_disk_wait_for_it() {
        // Followers replicate what the leader wrote; its fdatasync may finish after theirs.
        let mut l = leader(&[1, 2, 3], 0);
        assert!(!l.on_follower_fetch(2, 10, 10, 4, 1_100, 2));
        assert!(l.on_follower_fetch(3, 10, 10, 4, 1_100, 2));
        assert_eq!(l.high_watermark(), 4, "bounded by the leader's durable end");
        assert!(
            l.advance_high_watermark(10, 2),
            "the leader's fdatasync completes"
        );
        assert_eq!(l.high_watermark(), 10);
    }

    #[test]
    fn caught_up_means_the_leaders_log_end_not_its_durable_end() {
        let mut l = leader(&[1, 2], 0);
        // At the leader's durable end (20) but not its log end (30): not caught up now.
        l.on_follower_fetch(2, 20, 30, 20, 3_000, 1);
        assert_eq!(l.shrunk_isr(1_000 + LAG + 1, LAG), Some(vec![1]));
        l.on_follower_fetch(2, 30, 30, 20, 3_000, 1);
        assert_eq!(l.shrunk_isr(3_000 + LAG, LAG), None);
    }

    #[test]
    fn high_watermark_waits_while_the_isr_is_below_min() {
        let mut l = leader(&[1], 0);
        assert!(!l.advance_high_watermark(5, 2), "KIP-966: ISR of 1 < min 2");
        assert!(l.advance_high_watermark(5, 1));
        assert_eq!(l.high_watermark(), 5);
    }

    #[test]
    fn a_follower_that_stops_catching_up_leaves_the_isr() {
        let mut l = leader(&[1, 2, 3], 100);
        l.on_follower_fetch(2, 100, 100, 100, 2_000, 1);
        l.on_follower_fetch(3, 100, 100, 100, 2_000, 1);
        assert_eq!(l.shrunk_isr(2_000 + LAG, LAG), None);
        // 2 keeps up, 3 falls behind and stays behind.
        l.on_follower_fetch(2, 150, 150, 150, 5_000, 1);
        l.on_follower_fetch(3, 100, 150, 150, 5_000, 1);
        l.on_follower_fetch(2, 200, 200, 200, 9_000, 1);
        l.on_follower_fetch(3, 120, 200, 200, 9_000, 1);
        assert_eq!(l.shrunk_isr(2_000 + LAG + 1, LAG), Some(vec![1, 2]));
    }

    #[test]
    fn caught_up_at_previous_fetch_counts_as_caught_up_then() {
        // Kafka: a follower that has all the leader had at its previous fetch was caught up
        // at the time of that previous fetch, even if the leader moved on since.
        let mut l = leader(&[1, 2], 0);
        l.on_follower_fetch(2, 0, 50, 50, 3_000, 1);
        l.on_follower_fetch(2, 50, 80, 80, 4_000, 1);
        assert_eq!(l.shrunk_isr(3_000 + LAG, LAG), None);
        assert_eq!(l.shrunk_isr(3_001 + LAG, LAG), Some(vec![1]));
    }

    #[test]
    fn a_follower_joins_once_past_hw_and_epoch_start() {
        let mut l = leader(&[1, 2], 40);
        l.on_follower_fetch(2, 50, 50, 50, 1_100, 1);
        assert_eq!(l.high_watermark(), 50);
        l.on_follower_fetch(3, 30, 50, 50, 1_100, 1);
        assert_eq!(
            l.expanded_isr(3, true, 1_100),
            None,
            "below the epoch start and the HW"
        );
        l.on_follower_fetch(3, 50, 50, 50, 1_200, 1);
        assert_eq!(
            l.expanded_isr(3, false, 1_200),
            None,
            "fenced brokers stay out"
        );
        assert_eq!(l.expanded_isr(3, true, 1_200), Some(vec![1, 2, 3]));
        l.propose_isr(vec![1, 2, 3]);
        assert_eq!(l.expanded_isr(3, true, 1_200), None, "one change in flight");
        assert_eq!(l.shrunk_isr(1_000_000, LAG), None, "one change in flight");
        // Metadata about something else does not settle the change.
        l.update_assignment(Assignment {
            leader_epoch: 1,
            partition_epoch: 1,
            replicas: vec![1, 2, 3],
            isr: vec![1, 2],
        });
        assert!(l.isr_change_pending());
        l.update_assignment(Assignment {
            leader_epoch: 1,
            partition_epoch: 2,
            replicas: vec![1, 2, 3],
            isr: vec![1, 2, 3],
        });
        assert!(!l.isr_change_pending());
        assert_eq!(l.isr, vec![1, 2, 3]);
    }

    #[test]
    fn a_refused_change_is_proposed_again_only_after_a_pause() {
        let mut l = leader(&[1, 2], 0);
        l.on_follower_fetch(3, 0, 0, 0, 1_100, 1);
        l.propose_isr(vec![1, 2, 3]);
        l.isr_rejected(2_000);
        assert_eq!(l.expanded_isr(3, true, 2_000 + ISR_RETRY_MS - 1), None);
        assert_eq!(
            l.expanded_isr(3, true, 2_000 + ISR_RETRY_MS),
            Some(vec![1, 2, 3])
        );
    }

    #[test]
    fn a_member_being_added_holds_the_high_watermark() {
        let mut l = leader(&[1, 2], 0);
        l.on_follower_fetch(2, 10, 10, 10, 1_100, 1);
        l.on_follower_fetch(3, 10, 10, 10, 1_100, 1);
        l.propose_isr(vec![1, 2, 3]);
        l.on_follower_fetch(2, 20, 20, 20, 1_200, 1);
        assert_eq!(l.high_watermark(), 10, "3 is pending and at 10");
    }
}
