//! The simulation's randomness and network: every message gets a random delay (so messages
//! overtake each other), some are lost, and a node cut off from the others loses everything
//! it sends or should receive until the cut heals.

use std::collections::BTreeMap;

use raft::eraftpb::Message as RaftMessage;

use crate::cluster::quorum::transport::Heartbeat;
use crate::replication::fetch_session::{FetchPartition, FetchedPartition};
use crate::rng::Rng;

/// A follower's Fetch (v12 with `replica_id`) for every partition it follows from the leader.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// Matches the response to the fetch in flight.
    pub id: u64,
    pub replica_id: i32,
    pub asked: Vec<FetchPartition>,
}

#[derive(Debug, Clone)]
pub enum Payload {
    /// Between controller voters.
    Raft(Box<RaftMessage>),
    /// A broker's heartbeat to a voter.
    Heartbeat(Heartbeat),
    Fetch(FetchRequest),
    /// One answer per partition asked, in the request's order.
    FetchResponse {
        id: u64,
        answers: Vec<FetchedPartition>,
    },
}

#[derive(Debug)]
pub struct Envelope {
    pub from: i32,
    pub to: i32,
    pub deliver_at: i64,
    /// Sending order: breaks ties between equal delivery times.
    seq: u64,
    pub payload: Payload,
}

pub struct Network {
    queue: Vec<Envelope>,
    /// Nodes cut off from every other node, until then.
    cut: BTreeMap<i32, i64>,
    next_seq: u64,
    pub drop_per_mille: u64,
    pub max_delay_ms: i64,
    pub lost: usize,
    pub delivered: usize,
}

impl Network {
    pub fn new(drop_per_mille: u64, max_delay_ms: i64) -> Self {
        Self {
            queue: Vec::new(),
            cut: BTreeMap::new(),
            next_seq: 0,
            drop_per_mille,
            max_delay_ms,
            lost: 0,
            delivered: 0,
        }
    }

    pub fn is_cut(&self, node: i32) -> bool {
        self.cut.contains_key(&node)
    }

    pub fn cut_count(&self) -> usize {
        self.cut.len()
    }

    pub fn cut_off(&mut self, node: i32, until: i64) {
        self.cut.insert(node, until);
    }

    /// When the next cut heals.
    pub fn next_heal(&self) -> Option<i64> {
        self.cut.values().copied().min()
    }

    /// Heals the cuts due by `now`; returns the nodes reconnected.
    pub fn heal(&mut self, now: i64) -> Vec<i32> {
        let healed: Vec<i32> = self
            .cut
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(n, _)| *n)
            .collect();
        for n in &healed {
            self.cut.remove(n);
        }
        healed
    }

    pub fn send(&mut self, rng: &mut Rng, now: i64, from: i32, to: i32, payload: Payload) {
        if self.is_cut(from) || self.is_cut(to) || rng.chance(self.drop_per_mille) {
            self.lost += 1;
            return;
        }
        let deliver_at = now + rng.between(1, self.max_delay_ms);
        self.queue.push(Envelope {
            from,
            to,
            deliver_at,
            seq: self.next_seq,
            payload,
        });
        self.next_seq += 1;
    }

    /// The delivery time of the next message.
    pub fn next_due(&self) -> Option<i64> {
        self.queue.iter().map(|e| e.deliver_at).min()
    }

    /// Takes the next message due by `now` (the earliest, then the first sent): `Some(None)`
    /// when it is lost because its sender or receiver is cut off when it arrives.
    pub fn take_due(&mut self, now: i64) -> Option<Option<Envelope>> {
        let i = self
            .queue
            .iter()
            .enumerate()
            .filter(|(_, e)| e.deliver_at <= now)
            .min_by_key(|(_, e)| (e.deliver_at, e.seq))
            .map(|(i, _)| i)?;
        let e = self.queue.swap_remove(i);
        if self.is_cut(e.from) || self.is_cut(e.to) {
            self.lost += 1;
            return Some(None);
        }
        self.delivered += 1;
        Some(Some(e))
    }

    /// Puts a message back, to be delivered at `at` (its receiver is paused).
    pub fn requeue(&mut self, mut e: Envelope, at: i64) {
        self.delivered -= 1;
        e.deliver_at = at;
        self.queue.push(e);
    }

    /// A node crashed: its connections close, so what was on the way to it is lost.
    pub fn drop_to(&mut self, node: i32) {
        let before = self.queue.len();
        self.queue.retain(|e| e.to != node);
        self.lost += before - self.queue.len();
    }
}
