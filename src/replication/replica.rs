//! One partition replica on the shard that owns it: its log and its role.
//!
//! Lifecycle: created when a metadata image first assigns the partition to this broker,
//! re-labelled leader or follower by every later image (`apply`), dropped when the topic is
//! deleted. Lives on exactly one shard; never shared across cores.

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
        match &*self.role.borrow() {
            Role::Follower {
                leader,
                leader_epoch,
            } if *leader != NO_LEADER => Some((*leader, *leader_epoch)),
            _ => None,
        }
    }

    /// Follows the controller's latest decision for this partition. A single-replica
    /// partition's high watermark follows its durable end; a replicated one's moves only
    /// with the ISR's progress.
    pub fn apply(&self, node: i32, state: &PartitionState, now_ms: i64, min_isr: usize) {
        let assignment = Assignment {
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            replicas: state.replicas.clone(),
            isr: state.isr.clone(),
        };
        self.log
            .set_hw_follows_durable_end(state.replicas.len() == 1 && state.leader == node);
        let mut role = self.role.borrow_mut();
        if state.leader != node {
            *role = Role::Follower {
                leader: state.leader,
                leader_epoch: state.leader_epoch,
            };
            return;
        }
        match &mut *role {
            Role::Leader(l) if l.leader_epoch == state.leader_epoch => {
                l.update_assignment(assignment);
            }
            _ => {
                let mut l = LeaderState::new(
                    node,
                    assignment,
                    self.log.durable_end(),
                    self.log.high_watermark(),
                    now_ms,
                );
                l.advance_high_watermark(self.log.durable_end(), min_isr);
                *role = Role::Leader(l);
            }
        }
        drop(role);
        self.publish_high_watermark();
    }

    /// The leader's durable end moved (a produce was flushed).
    pub fn on_durable(&self, min_isr: usize) {
        let end = self.log.durable_end();
        if let Role::Leader(l) = &mut *self.role.borrow_mut() {
            l.advance_high_watermark(end, min_isr);
        }
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
        let proposal = match &mut *self.role.borrow_mut() {
            Role::Leader(l) => {
                l.on_follower_fetch(replica, fetch_offset, end, now_ms, min_isr);
                l.expanded_isr(replica, live, now_ms)
                    .map(|isr| propose(l, isr))
            }
            Role::Follower { .. } => None,
        };
        self.publish_high_watermark();
        proposal
    }

    /// An ISR shrink to propose, if followers fell behind for longer than `lag_max_ms`.
    pub fn shrink_check(&self, now_ms: i64, lag_max_ms: i64) -> Option<IsrProposal> {
        match &mut *self.role.borrow_mut() {
            Role::Leader(l) => l.shrunk_isr(now_ms, lag_max_ms).map(|isr| propose(l, isr)),
            Role::Follower { .. } => None,
        }
    }

    /// The controller refused an ISR change; a later check proposes again.
    pub fn isr_rejected(&self, now_ms: i64) {
        if let Role::Leader(l) = &mut *self.role.borrow_mut() {
            l.isr_rejected(now_ms);
        }
    }

    /// Whether `proposal` is still this leader's change waiting for an answer.
    pub fn is_pending(&self, proposal: &IsrProposal) -> bool {
        match &*self.role.borrow() {
            Role::Leader(l) => {
                l.leader_epoch == proposal.leader_epoch
                    && l.is_pending(proposal.partition_epoch, &proposal.isr)
            }
            Role::Follower { .. } => false,
        }
    }

    /// The leader epoch, when leading.
    pub fn leader_epoch(&self) -> Option<i32> {
        match &*self.role.borrow() {
            Role::Leader(l) => Some(l.leader_epoch),
            Role::Follower { .. } => None,
        }
    }

    /// The ISR size, when leading.
    pub fn isr_len(&self) -> Option<usize> {
        match &*self.role.borrow() {
            Role::Leader(l) => Some(l.isr.len()),
            Role::Follower { .. } => None,
        }
    }

    fn publish_high_watermark(&self) {
        let hw = match &*self.role.borrow() {
            Role::Leader(l) => l.high_watermark(),
            Role::Follower { .. } => return,
        };
        self.log.set_high_watermark(hw);
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
