//! The state a simulated broker process keeps per partition replica and per fetch loop
//! (what `replica.rs` carries the partition's effects out on, and `node.rs` holds).

use std::collections::BTreeMap;

use super::Ctx;
use super::client::ProduceRequest;
use super::net::FetchRequest;
use crate::replication::fetch_session::FetchPartition;
use crate::replication::partition::{AckId, IsrProposal, Partition};

/// `fetcher::BACKOFF`.
pub const BACKOFF_MS: i64 = 100;

/// One follower fetch loop (`fetcher::follow`) for one leader.
#[derive(Debug)]
pub enum Fetcher {
    /// Fetches at this time.
    Idle(i64),
    InFlight {
        id: u64,
        asked: Vec<FetchPartition>,
        deadline: i64,
    },
    /// Waits for the appended records to be durable, (partition, log end) each, before
    /// fetching again.
    Durable {
        targets: Vec<(i32, i64)>,
        backoff: bool,
    },
}

impl Fetcher {
    pub fn next_event(&self) -> Option<i64> {
        match self {
            Fetcher::Idle(at) => Some(*at),
            Fetcher::InFlight { deadline, .. } => Some(*deadline),
            Fetcher::Durable { .. } => None,
        }
    }
}

/// A follower's fetch long-polling at this leader (the Fetch handler's `wait_for_data`).
pub struct Parked {
    pub from: i32,
    pub request: FetchRequest,
    /// Per partition asked, wakes when its durable end passes this.
    pub seen: Vec<i64>,
    pub deadline: i64,
}

/// An ISR change being sent to the controller (`send_isr_change`).
pub struct IsrTask {
    pub id: u64,
    pub partition: i32,
    pub proposal: IsrProposal,
    /// Next attempt, or None while a proposal is waiting.
    pub retry_at: Option<i64>,
}

/// An acks=all produce waiting for its answer (`Replica::complete`): first for its record to
/// be durable, then for the partition's decision.
#[derive(Debug, Clone)]
pub struct PendingAck {
    pub request: ProduceRequest,
    /// The record's offset (a duplicate's original one).
    pub offset: i64,
    /// The leadership that appended it (or found the duplicate).
    pub epoch: i32,
    pub deadline: i64,
}

/// One partition's replica in the process (`replica::Replica` without its log, which is the
/// node's disk and outlives the process).
pub struct Replica {
    /// The replica's decisions: the production `Partition`.
    pub partition: Partition,
    /// Appended, not yet durable.
    pub acks: Vec<PendingAck>,
    /// Durable, waiting for the partition (`Partition::await_commit`).
    pub committing: BTreeMap<AckId, PendingAck>,
    /// When the log's flusher runs next.
    pub flush_at: Option<i64>,
}

impl Replica {
    pub fn next_event(&self) -> Option<i64> {
        let commits = self.committing.values().map(|a| a.deadline).min();
        [self.flush_at, commits].into_iter().flatten().min()
    }

    /// The flusher writes what is pending within a few ms (group commit).
    pub fn schedule_flush(&mut self, ctx: &mut Ctx) {
        if self.flush_at.is_none() {
            self.flush_at = Some(ctx.now + ctx.rng.between(1, 5));
        }
    }
}
