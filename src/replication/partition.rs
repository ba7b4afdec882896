//! One partition replica's replication decisions as a value (Kafka's `Partition.scala` and
//! `DelayedProduce`): fed events (a metadata image, the log made durable, a follower's fetch,
//! a clock tick, the controller's answer to an ISR change), it returns [`Effects`]: acks=all
//! produces to answer, an ISR change to send, the high watermark to publish.
//!
//! No I/O, no runtime, time passed in as ms: the broker's `Replica` feeds it from its log and
//! tasks, and the simulation feeds it the same events from its own clock and model, so what
//! is simulated is what runs.
//!
//! Invariants, asserted in release builds too: leader epochs never go back; a leader's ISR is
//! a subset of the replicas and holds the leader; a leadership's high watermark never goes
//! back; an acknowledgement is answered once, by the leadership that appended the batch.

use super::divergence::{EpochLog, diverging_epoch};
use super::leader::{Assignment, LeaderState};
use crate::cluster::{NO_LEADER, PartitionState};
use crate::protocol::ErrorCode;

const NONE: i16 = 0;
/// How long after an unanswered ISR change it is sent again (`AlterPartitionManager`).
pub const ISR_RESEND_MS: i64 = 500;

#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    Leader(LeaderState),
    /// Replicating from `leader` (or waiting for one: `NO_LEADER`).
    Follower {
        leader: i32,
        leader_epoch: i32,
    },
}

/// An ISR change this leader wants the controller to make.
#[derive(Debug, Clone, PartialEq)]
pub struct IsrProposal {
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<i32>,
}

/// The controller's answer to an ISR change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IsrAnswer {
    Committed,
    /// Refused with this error code.
    Refused(i16),
    /// No answer (timed out, no controller): the change may still be committed.
    Unknown,
}

/// What the sender of an ISR change does next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IsrNext {
    /// Nothing: the change is settled, or the next metadata image settles it.
    Done,
    /// Send it again at this time, if it is still pending then.
    ResendAt(i64),
}

/// An acks=all produce waiting for the high watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AckId(pub u64);

#[derive(Debug, Clone)]
struct PendingAck {
    id: AckId,
    /// The offset after the batch: committed once the high watermark reaches it.
    end_offset: i64,
    /// The leadership that appended the batch: only it may acknowledge it.
    leader_epoch: i32,
    deadline_ms: i64,
}

/// What the replica's owner must do after an event.
#[derive(Debug, Default, PartialEq)]
pub struct Effects {
    /// acks=all produces answered now, with their error code (0: committed).
    pub acks: Vec<(AckId, i16)>,
    /// The leader's high watermark, to publish to the log (it only moves up).
    pub high_watermark: Option<i64>,
    /// An ISR change to send to the controller.
    pub propose_isr: Option<IsrProposal>,
}

/// What a leader serves a follower's fetch with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FollowerRead {
    /// The follower's log diverged: answer DivergingEpoch (epoch, end offset), no records.
    Diverging { epoch: i32, end_offset: i64 },
    /// Records from the fetch offset up to `end` (the leader's log end: a follower
    /// replicates what the leader appended, durable or not, committed or not, as Kafka's
    /// do; the high watermark still waits for the leader's own fdatasync).
    Records { end: i64 },
    /// Refused with this error; the follower's state is unchanged.
    Refused(ErrorCode),
}

/// A follower's fetch as the leader sees it.
#[derive(Debug, Clone, Copy)]
pub struct FollowerFetch {
    pub replica_id: i32,
    pub fetch_offset: i64,
    pub last_fetched_epoch: i32,
    /// The leader epoch the follower knows (-1: not given).
    pub current_leader_epoch: i32,
    /// Its broker is registered, unfenced and not shutting down.
    pub live: bool,
}

/// The replication state of one partition replica on one broker.
#[derive(Debug, Clone)]
pub struct Partition {
    node: i32,
    role: Role,
    min_isr: usize,
    /// The highest leader epoch seen in metadata.
    leader_epoch_seen: i32,
    acks: Vec<PendingAck>,
    next_ack: u64,
}

impl Partition {
    /// A replica on broker `node` that knows of no leader yet.
    pub fn new(node: i32) -> Self {
        Self {
            node,
            role: Role::Follower {
                leader: NO_LEADER,
                leader_epoch: -1,
            },
            min_isr: 1,
            leader_epoch_seen: -1,
            acks: Vec::new(),
            next_ack: 0,
        }
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    /// The leader this follower replicates from and its epoch, if it follows one.
    pub fn following(&self) -> Option<(i32, i32)> {
        match self.role {
            Role::Follower {
                leader,
                leader_epoch,
            } if leader != NO_LEADER => Some((leader, leader_epoch)),
            _ => None,
        }
    }

    /// The leader epoch, when leading.
    pub fn leader_epoch(&self) -> Option<i32> {
        match &self.role {
            Role::Leader(l) => Some(l.leader_epoch),
            Role::Follower { .. } => None,
        }
    }

    /// Whether this replica leads a partition with other replicas.
    pub fn leads_followers(&self) -> bool {
        matches!(&self.role, Role::Leader(l) if l.replicas.len() > 1)
    }

    /// The ISR size, when leading.
    pub fn isr_len(&self) -> Option<usize> {
        match &self.role {
            Role::Leader(l) => Some(l.isr.len()),
            Role::Follower { .. } => None,
        }
    }

    /// The high watermark, when leading.
    pub fn high_watermark(&self) -> Option<i64> {
        match &self.role {
            Role::Leader(l) => Some(l.high_watermark()),
            Role::Follower { .. } => None,
        }
    }

    /// The controller's latest decision for the partition, from a metadata image, on a log
    /// whose durable end and high watermark are given: a follower of another leader; the
    /// same leadership learns the new assignment; a new leadership starts from the log's
    /// durable end and high watermark. Acks of an ended leadership are answered
    /// NOT_LEADER_OR_FOLLOWER.
    pub fn on_metadata(
        &mut self,
        state: &PartitionState,
        durable_end: i64,
        high_watermark: i64,
        now_ms: i64,
        min_isr: usize,
    ) -> Effects {
        assert!(
            state.leader_epoch >= self.leader_epoch_seen,
            "leader epoch went back from {} to {}",
            self.leader_epoch_seen,
            state.leader_epoch
        );
        self.leader_epoch_seen = state.leader_epoch;
        self.min_isr = min_isr;
        let assignment = Assignment {
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            replicas: state.replicas.clone(),
            isr: state.isr.clone(),
        };
        match &mut self.role {
            _ if state.leader != self.node => {
                self.role = Role::Follower {
                    leader: state.leader,
                    leader_epoch: state.leader_epoch,
                };
            }
            Role::Leader(l) if l.leader_epoch == state.leader_epoch => {
                l.update_assignment(assignment);
            }
            previous => {
                // A new leadership: the controller bumps the epoch at every leader change.
                let (Role::Leader(LeaderState { leader_epoch, .. })
                | Role::Follower { leader_epoch, .. }) = previous;
                assert!(
                    state.leader_epoch > *leader_epoch,
                    "leadership of epoch {} begins after epoch {leader_epoch}",
                    state.leader_epoch
                );
                let mut l =
                    LeaderState::new(self.node, assignment, durable_end, high_watermark, now_ms);
                l.advance_high_watermark(durable_end, min_isr);
                self.role = Role::Leader(l);
            }
        }
        self.settled()
    }

    /// The leader's log is durable up to `durable_end`: the high watermark may move.
    pub fn on_durable(&mut self, durable_end: i64) -> Effects {
        if let Role::Leader(l) = &mut self.role {
            l.advance_high_watermark(durable_end, self.min_isr);
        }
        self.settled()
    }

    /// Whether a produce with `acks` may append now; `Ok` carries the leader epoch to stamp
    /// its batches with (KIP-101). acks=all is refused before appending when the ISR is
    /// already smaller than `min.insync.replicas`.
    pub fn check_produce(&self, acks: i16) -> Result<i32, ErrorCode> {
        match &self.role {
            Role::Follower { .. } => Err(ErrorCode::NotLeaderOrFollower),
            Role::Leader(l) if acks == -1 && l.isr.len() < self.min_isr => {
                Err(ErrorCode::NotEnoughReplicas)
            }
            Role::Leader(l) => Ok(l.leader_epoch),
        }
    }

    /// An acks=all batch appended in `leader_epoch`, ending before `end_offset`, is durable
    /// on the leader. Returns its answer now, or the id under which [`Effects::acks`] will
    /// answer it (at the latest at `deadline_ms`, through [`Partition::expire`]).
    pub fn await_commit(
        &mut self,
        end_offset: i64,
        leader_epoch: i32,
        deadline_ms: i64,
    ) -> Result<i16, AckId> {
        let ack = PendingAck {
            id: AckId(self.next_ack),
            end_offset,
            leader_epoch,
            deadline_ms,
        };
        if let Some(code) = self.decide(&ack) {
            return Ok(code);
        }
        self.next_ack += 1;
        let id = ack.id;
        self.acks.push(ack);
        Err(id)
    }

    /// Answers the acks whose deadline passed: REQUEST_TIMED_OUT.
    pub fn expire(&mut self, now_ms: i64) -> Effects {
        let mut effects = self.settled();
        self.acks.retain(|a| {
            let expired = a.deadline_ms <= now_ms;
            if expired {
                effects.acks.push((a.id, ErrorCode::RequestTimedOut.code()));
            }
            !expired
        });
        effects
    }

    /// Forgets an ack its owner no longer waits for.
    pub fn forget(&mut self, id: AckId) {
        self.acks.retain(|a| a.id != id);
    }

    /// A follower fetched from this leader, whose log answers the epoch lookups and is
    /// durable up to `durable_end`: who may fetch, the divergence check (Fetch v12), then the
    /// follower's position, the high watermark and an ISR expansion (Kafka's
    /// `Partition.fetchRecords` and `updateFollowerFetchState`). The follower is served up
    /// to the log end, so its fdatasync runs beside the leader's instead of after it.
    ///
    /// Only a leader answers, only a replica of the partition other than the leader is
    /// served, and a fetch offset outside the leader's log is OFFSET_OUT_OF_RANGE: none of
    /// these refusals touches the follower's state, the high watermark or the ISR (Kafka
    /// updates them only after a successful read).
    pub fn on_follower_fetch(
        &mut self,
        fetch: FollowerFetch,
        log: &impl EpochLog,
        durable_end: i64,
        now_ms: i64,
    ) -> (FollowerRead, Effects) {
        if let Err(code) = self.check_follower_fetch(&fetch, log) {
            return (FollowerRead::Refused(code), Effects::default());
        }
        let (offset, epoch) = (fetch.fetch_offset, fetch.last_fetched_epoch);
        if let Some((epoch, end_offset)) = diverging_epoch(log, offset, epoch, self.leader_epoch())
        {
            return (
                FollowerRead::Diverging { epoch, end_offset },
                Effects::default(),
            );
        }
        if offset > log.log_end_offset() {
            return (
                FollowerRead::Refused(ErrorCode::OffsetOutOfRange),
                Effects::default(),
            );
        }
        let log_end = log.log_end_offset();
        let mut proposal = None;
        if let Role::Leader(l) = &mut self.role {
            let id = fetch.replica_id;
            l.on_follower_fetch(id, offset, log_end, durable_end, now_ms, self.min_isr);
            proposal = l
                .expanded_isr(id, fetch.live, now_ms)
                .map(|isr| propose(l, isr));
        }
        let mut effects = self.settled();
        effects.propose_isr = proposal;
        (FollowerRead::Records { end: log_end }, effects)
    }

    /// Kafka's checks before a follower's read: this replica leads (NOT_LEADER_OR_FOLLOWER),
    /// the fetcher is one of its followers (`followerReplicaOrThrow`: UNKNOWN_LEADER_EPOCH
    /// when the fetch names an epoch, else NOT_LEADER_OR_FOLLOWER), and the fetch offset is
    /// not below the log start (OFFSET_OUT_OF_RANGE, whatever the epochs say).
    fn check_follower_fetch(
        &self,
        fetch: &FollowerFetch,
        log: &impl EpochLog,
    ) -> Result<(), ErrorCode> {
        let Role::Leader(l) = &self.role else {
            return Err(ErrorCode::NotLeaderOrFollower);
        };
        let id = fetch.replica_id;
        if id == self.node || !l.replicas.contains(&id) {
            return Err(if fetch.current_leader_epoch >= 0 {
                ErrorCode::UnknownLeaderEpoch
            } else {
                ErrorCode::NotLeaderOrFollower
            });
        }
        if fetch.fetch_offset < log.log_start_offset() {
            return Err(ErrorCode::OffsetOutOfRange);
        }
        Ok(())
    }

    /// Every `replica.lag.time.max.ms / 2`: an ISR shrink, if followers fell behind for
    /// longer than `lag_max_ms`.
    pub fn shrink_check(&mut self, now_ms: i64, lag_max_ms: i64) -> Effects {
        let mut effects = Effects::default();
        if let Role::Leader(l) = &mut self.role {
            effects.propose_isr = l.shrunk_isr(now_ms, lag_max_ms).map(|isr| propose(l, isr));
        }
        effects
    }

    /// Whether `proposal` is still this leadership's change waiting to be settled: its sender
    /// stops when it is not.
    pub fn is_pending(&self, proposal: &IsrProposal) -> bool {
        match &self.role {
            Role::Leader(l) => {
                l.leader_epoch == proposal.leader_epoch
                    && l.is_pending(proposal.partition_epoch, &proposal.isr)
            }
            Role::Follower { .. } => false,
        }
    }

    /// The controller answered an ISR change (Kafka's `AlterPartitionManager`). Without an
    /// answer the change may still be committed, so it stays pending and is sent again; a
    /// stale-epoch answer leaves it pending until the metadata that settled it arrives; only
    /// a definite refusal lets the leader go back to its committed ISR, to propose again
    /// after a pause.
    pub fn on_isr_answer(
        &mut self,
        proposal: &IsrProposal,
        answer: IsrAnswer,
        now_ms: i64,
    ) -> IsrNext {
        if !self.is_pending(proposal) {
            return IsrNext::Done;
        }
        match answer {
            IsrAnswer::Committed => IsrNext::Done,
            IsrAnswer::Refused(code) if settled_by_metadata(code) => IsrNext::Done,
            IsrAnswer::Refused(code) if code != ErrorCode::RequestTimedOut.code() => {
                if let Role::Leader(l) = &mut self.role {
                    l.isr_rejected(now_ms);
                }
                IsrNext::Done
            }
            IsrAnswer::Refused(_) | IsrAnswer::Unknown => IsrNext::ResendAt(now_ms + ISR_RESEND_MS),
        }
    }

    /// The high watermark to publish and the acks the state now decides.
    fn settled(&mut self) -> Effects {
        let mut effects = Effects {
            high_watermark: self.high_watermark(),
            ..Effects::default()
        };
        let decided: Vec<(AckId, i16)> = self
            .acks
            .iter()
            .filter_map(|a| self.decide(a).map(|code| (a.id, code)))
            .collect();
        if !decided.is_empty() {
            self.acks
                .retain(|a| !decided.iter().any(|(id, _)| *id == a.id));
        }
        effects.acks = decided;
        effects
    }

    /// An ack's answer, if the state decides it: NOT_LEADER_OR_FOLLOWER once its leadership
    /// ended (a deposed leader's high watermark may pass the offsets with a new leader's
    /// data after truncating the batch away, as Kafka's `DelayedProduce` knows); committed
    /// once the high watermark passed it, NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR shrank
    /// below `min.insync.replicas` meanwhile.
    fn decide(&self, ack: &PendingAck) -> Option<i16> {
        let Role::Leader(l) = &self.role else {
            return Some(ErrorCode::NotLeaderOrFollower.code());
        };
        if l.leader_epoch != ack.leader_epoch {
            return Some(ErrorCode::NotLeaderOrFollower.code());
        }
        if l.high_watermark() < ack.end_offset {
            return None;
        }
        if l.isr.len() >= self.min_isr {
            Some(NONE)
        } else {
            Some(ErrorCode::NotEnoughReplicasAfterAppend.code())
        }
    }
}

fn propose(l: &mut LeaderState, isr: Vec<i32>) -> IsrProposal {
    l.propose_isr(isr.clone());
    IsrProposal {
        leader_epoch: l.leader_epoch,
        partition_epoch: l.partition_epoch,
        isr,
    }
}

/// Refusals after which the partition's next metadata tells what happened to the change.
fn settled_by_metadata(code: i16) -> bool {
    code == ErrorCode::InvalidUpdateVersion.code() || code == ErrorCode::FencedLeaderEpoch.code()
}

#[cfg(test)]
mod tests;
