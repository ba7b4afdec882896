//! One partition replica on the shard that owns it: its log and its role.
//!
//! Lifecycle: created when a metadata image first assigns the partition to this broker,
//! re-labelled leader or follower by every later image (`apply`), dropped when the topic is
//! deleted. Lives on exactly one shard; never shared across cores.
//!
//! The role's transitions are pure ([`Role`]'s methods take the log's offsets and the clock
//! as arguments), so the simulation drives the same code on model logs; [`Replica`] wraps
//! them around the `PartitionLog` and publishes the leader's high watermark to it.

use std::cell::RefCell;
use std::rc::Rc;

use uuid::Uuid;

use super::leader::{Assignment, LeaderState};
use crate::cluster::{NO_LEADER, PartitionState};
use crate::storage::PartitionLog;

#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    Leader(LeaderState),
    /// Replicating from `leader` (or waiting for one: `NO_LEADER`).
    Follower {
        leader: i32,
        leader_epoch: i32,
    },
}

pub struct Replica {
    pub topic: String,
    pub partition: i32,
    pub topic_id: Uuid,
    pub log: Rc<PartitionLog>,
    role: RefCell<Role>,
}

/// An ISR change this leader wants the controller to make.
#[derive(Debug, Clone, PartialEq)]
pub struct IsrProposal {
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<i32>,
}

impl Role {
    /// The leader this follower replicates from, if it is a follower with a leader.
    pub fn following(&self) -> Option<(i32, i32)> {
        match self {
            Role::Follower {
                leader,
                leader_epoch,
            } if *leader != NO_LEADER => Some((*leader, *leader_epoch)),
            _ => None,
        }
    }

    /// The leader epoch, when leading.
    pub fn leader_epoch(&self) -> Option<i32> {
        match self {
            Role::Leader(l) => Some(l.leader_epoch),
            Role::Follower { .. } => None,
        }
    }

    /// The high watermark, when leading.
    pub fn high_watermark(&self) -> Option<i64> {
        match self {
            Role::Leader(l) => Some(l.high_watermark()),
            Role::Follower { .. } => None,
        }
    }

    /// Follows the controller's latest decision for the partition, on broker `node` whose
    /// log has `durable_end` and `high_watermark`: a follower of another leader; the same
    /// leader at the same epoch learns the new assignment; a new leadership starts from the
    /// log's durable end and high watermark.
    pub fn follow(
        &mut self,
        node: i32,
        state: &PartitionState,
        durable_end: i64,
        high_watermark: i64,
        now_ms: i64,
        min_isr: usize,
    ) {
        let assignment = Assignment {
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            replicas: state.replicas.clone(),
            isr: state.isr.clone(),
        };
        if state.leader != node {
            *self = Role::Follower {
                leader: state.leader,
                leader_epoch: state.leader_epoch,
            };
            return;
        }
        match self {
            Role::Leader(l) if l.leader_epoch == state.leader_epoch => {
                l.update_assignment(assignment);
            }
            _ => {
                let mut l = LeaderState::new(node, assignment, durable_end, high_watermark, now_ms);
                l.advance_high_watermark(durable_end, min_isr);
                *self = Role::Leader(l);
            }
        }
    }

    /// The leader's durable end moved (a produce was flushed).
    pub fn on_durable(&mut self, durable_end: i64, min_isr: usize) {
        if let Role::Leader(l) = self {
            l.advance_high_watermark(durable_end, min_isr);
        }
    }

    /// A follower fetched at `fetch_offset` while the leader's durable end was `leader_end`.
    /// Returns an ISR expansion to propose, if the fetch caught it up and its broker is
    /// `live`.
    pub fn on_follower_fetch(
        &mut self,
        replica: i32,
        fetch_offset: i64,
        leader_end: i64,
        live: bool,
        now_ms: i64,
        min_isr: usize,
    ) -> Option<IsrProposal> {
        match self {
            Role::Leader(l) => {
                l.on_follower_fetch(replica, fetch_offset, leader_end, now_ms, min_isr);
                l.expanded_isr(replica, live, now_ms)
                    .map(|isr| propose(l, isr))
            }
            Role::Follower { .. } => None,
        }
    }

    /// An ISR shrink to propose, if followers fell behind for longer than `lag_max_ms`.
    pub fn shrink_check(&mut self, now_ms: i64, lag_max_ms: i64) -> Option<IsrProposal> {
        match self {
            Role::Leader(l) => l.shrunk_isr(now_ms, lag_max_ms).map(|isr| propose(l, isr)),
            Role::Follower { .. } => None,
        }
    }

    /// The controller refused an ISR change; a later check proposes again.
    pub fn isr_rejected(&mut self, now_ms: i64) {
        if let Role::Leader(l) = self {
            l.isr_rejected(now_ms);
        }
    }

    /// Whether `proposal` is still this leader's change waiting for an answer.
    pub fn is_pending(&self, proposal: &IsrProposal) -> bool {
        match self {
            Role::Leader(l) => {
                l.leader_epoch == proposal.leader_epoch
                    && l.is_pending(proposal.partition_epoch, &proposal.isr)
            }
            Role::Follower { .. } => false,
        }
    }
}

impl Replica {
    pub fn new(topic: String, partition: i32, topic_id: Uuid, log: Rc<PartitionLog>) -> Self {
        Self {
            topic,
            partition,
            topic_id,
            log,
            role: RefCell::new(Role::Follower {
                leader: NO_LEADER,
                leader_epoch: -1,
            }),
        }
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// The leader this follower replicates from, if it is a follower with a leader.
    pub fn following(&self) -> Option<(i32, i32)> {
        self.role.borrow().following()
    }

    /// Follows the controller's latest decision for this partition ([`Role::follow`]). A
    /// single-replica partition's high watermark follows its durable end; a replicated
    /// one's moves only with the ISR's progress.
    pub fn apply(&self, node: i32, state: &PartitionState, now_ms: i64, min_isr: usize) {
        self.log
            .set_hw_follows_durable_end(state.replicas.len() == 1 && state.leader == node);
        let (durable_end, high_watermark) = (self.log.durable_end(), self.log.high_watermark());
        self.role
            .borrow_mut()
            .follow(node, state, durable_end, high_watermark, now_ms, min_isr);
        self.publish_high_watermark();
    }

    /// The leader's durable end moved (a produce was flushed).
    pub fn on_durable(&self, min_isr: usize) {
        let end = self.log.durable_end();
        self.role.borrow_mut().on_durable(end, min_isr);
        self.publish_high_watermark();
    }

    /// A follower fetched at `fetch_offset`. Returns an ISR expansion to propose, if the
    /// fetch caught it up and its broker is `live`.
    pub fn on_follower_fetch(
        &self,
        replica: i32,
        fetch_offset: i64,
        live: bool,
        now_ms: i64,
        min_isr: usize,
    ) -> Option<IsrProposal> {
        let end = self.log.durable_end();
        let proposal = self.role.borrow_mut().on_follower_fetch(
            replica,
            fetch_offset,
            end,
            live,
            now_ms,
            min_isr,
        );
        self.publish_high_watermark();
        proposal
    }

    /// An ISR shrink to propose, if followers fell behind for longer than `lag_max_ms`.
    pub fn shrink_check(&self, now_ms: i64, lag_max_ms: i64) -> Option<IsrProposal> {
        self.role.borrow_mut().shrink_check(now_ms, lag_max_ms)
    }

    /// The controller refused an ISR change; a later check proposes again.
    pub fn isr_rejected(&self, now_ms: i64) {
        self.role.borrow_mut().isr_rejected(now_ms);
    }

    /// Whether `proposal` is still this leader's change waiting for an answer.
    pub fn is_pending(&self, proposal: &IsrProposal) -> bool {
        self.role.borrow().is_pending(proposal)
    }

    /// The leader epoch, when leading.
    pub fn leader_epoch(&self) -> Option<i32> {
        self.role.borrow().leader_epoch()
    }

    /// The ISR size, when leading.
    pub fn isr_len(&self) -> Option<usize> {
        match &*self.role.borrow() {
            Role::Leader(l) => Some(l.isr.len()),
            Role::Follower { .. } => None,
        }
    }

    fn publish_high_watermark(&self) {
        let hw = self.role.borrow().high_watermark();
        if let Some(hw) = hw {
            self.log.set_high_watermark(hw);
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
