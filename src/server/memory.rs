//! A shard's memory, written as the sum of named parts, each bounded by a property or a
//! constant:
//!
//! ```text
//! shard budget = queued.max.request.bytes                 request frames past their first 64 KiB
//!              + FRAME_STARTS_RESERVED_BYTES              the first 64 KiB of up to 256 frames
//!              + corelog.fetch.response.bytes.per.shard   Fetch responses read, not yet written
//!              + corelog.tail.cache.bytes.per.shard       recent batches of the shard's partitions
//!              + CONNECTION_FIXED_BYTES × (shard's share of max.connections
//!                                          + INTER_BROKER_CONNECTIONS_RESERVED)
//!              + PARTITION_FIXED_BYTES × corelog.max.partitions.per.shard
//!              + SHARD_FIXED_BYTES                        executor, rings, mesh, metadata image
//!              + POOL_MAX_BYTES                           frame buffers kept for reuse
//!              + STAGING_POOL_MAX_BYTES                   DMA write buffers kept for reuse
//! ```
//!
//! Outside the sum: the in-memory segment indexes, which grow with the stored log (20 bytes
//! per `log.index.interval.bytes`, 0.5% of the log at the default), and batches appended but
//! not yet durable, which the tail cache cannot evict until their fdatasync. A cached batch
//! may keep its request frame alive, at most 8 times its own bytes (`storage::records`).
//!
//! At startup the broker refuses limits under which one shard alone could outgrow the
//! machine's memory, and warns when only all shards together could ([`check`]): the
//! defaults scale with the cores, and a many-core machine with little memory should still
//! start, as Kafka would, with the operator told what to lower.

use std::fmt;
use std::rc::Rc;

use super::limits::{FRAME_STARTS_RESERVED_BYTES, INTER_BROKER_CONNECTIONS_RESERVED, shard_share};
use crate::config::BrokerSettings;
use crate::protocol::buffer_pool::POOL_MAX_BYTES;
use crate::runtime::{Closed, Semaphore};
use crate::storage::STAGING_POOL_MAX_BYTES;

/// A connection's own memory, whatever it carries: the socket's 8 KiB read buffer, its
/// reply queue, its reader, writer and idle-timer tasks (rounded up).
pub const CONNECTION_FIXED_BYTES: usize = 32 << 10;
/// An open partition's own memory besides its cached batches and index entries: replica
/// and leader state, the log's segment list, the active segment's last partial block.
pub const PARTITION_FIXED_BYTES: usize = 64 << 10;
/// A shard's memory before any connection or partition: the executor and its io_uring
/// rings and I/O buffers, channels to the other shards, the metadata image.
pub const SHARD_FIXED_BYTES: usize = 64 << 20;
/// What a Fetch response holds per partition besides its records: the decoded answer and
/// its encoded header.
pub const FETCH_RESPONSE_BYTES_PER_PARTITION: usize = 256;

// The constant parts of a shard's budget stay a small part of it.
const _: () = assert!(
    FRAME_STARTS_RESERVED_BYTES
        + SHARD_FIXED_BYTES
        + POOL_MAX_BYTES
        + STAGING_POOL_MAX_BYTES
        + INTER_BROKER_CONNECTIONS_RESERVED * CONNECTION_FIXED_BYTES
        <= 160 << 20
);
// A connection's fixed part is more than its socket read buffer (8 KiB) and reply queue.
const _: () = assert!(CONNECTION_FIXED_BYTES >= 16 << 10);

/// One shard's memory, part by part (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardMemoryBudget {
    pub request_frames: usize,
    pub frame_starts: usize,
    pub fetch_responses: usize,
    pub tail_cache: usize,
    pub connections: usize,
    pub partitions: usize,
    pub fixed: usize,
}

impl ShardMemoryBudget {
    /// Shard `shard`'s budget of `shards`.
    pub fn of(settings: &BrokerSettings, shard: usize, shards: usize) -> ShardMemoryBudget {
        let connections = shard_share(settings.max_connections, shard, shards)
            .saturating_add(INTER_BROKER_CONNECTIONS_RESERVED);
        ShardMemoryBudget {
            request_frames: settings.queued_max_request_bytes_per_shard,
            frame_starts: FRAME_STARTS_RESERVED_BYTES,
            fetch_responses: settings.fetch_response_bytes_per_shard,
            tail_cache: settings.tail_cache_bytes_per_shard,
            connections: connections.saturating_mul(CONNECTION_FIXED_BYTES),
            partitions: (settings.max_partitions_per_shard as usize)
                .saturating_mul(PARTITION_FIXED_BYTES),
            fixed: SHARD_FIXED_BYTES + POOL_MAX_BYTES + STAGING_POOL_MAX_BYTES,
        }
    }

    /// The sum of the parts.
    pub fn total(&self) -> u64 {
        [
            self.request_frames,
            self.frame_starts,
            self.fetch_responses,
            self.tail_cache,
            self.connections,
            self.partitions,
            self.fixed,
        ]
        .iter()
        .fold(0u64, |sum, &part| sum.saturating_add(part as u64))
    }
}

impl fmt::Display for ShardMemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} MiB = requests {} + frame starts {} + fetch responses {} + tail cache {} \
             + connections {} + partitions {} + fixed {} (MiB)",
            mib(self.total()),
            mib(self.request_frames as u64),
            mib(self.frame_starts as u64),
            mib(self.fetch_responses as u64),
            mib(self.tail_cache as u64),
            mib(self.connections as u64),
            mib(self.partitions as u64),
            mib(self.fixed as u64),
        )
    }
}

fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

/// A configuration the broker refuses to start with.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "{property} ({value}) is less than the number of shards ({shards}): each shard \
         enforces an equal share of it, and a share of 0 would refuse every connection; \
         raise {property} or run on fewer cores"
    )]
    ShareOfZero {
        property: &'static str,
        value: usize,
        shards: usize,
    },
    #[error(
        "corelog.fetch.response.bytes.per.shard ({budget}) is less than fetch.max.bytes \
         ({fetch_max}): a full Fetch response could never be read"
    )]
    FetchResponsesBelowFetchMax { budget: usize, fetch_max: usize },
    #[error(
        "the memory budget of {shards} shards is {total_mib} MiB, more than this machine's \
         {machine_mib} MiB (per shard: {per_shard}); lower queued.max.request.bytes, \
         corelog.fetch.response.bytes.per.shard, corelog.tail.cache.bytes.per.shard, \
         max.connections or corelog.max.partitions.per.shard, or run on fewer cores"
    )]
    OverMachineMemory {
        shards: usize,
        total_mib: u64,
        machine_mib: u64,
        per_shard: ShardMemoryBudget,
    },
}

/// What [`check`] accepted: the largest shard's budget, and why the shards together may
/// not fit the machine, if they may not (a warning, not a refusal).
#[derive(Debug)]
pub struct CheckedBudget {
    pub per_shard: ShardMemoryBudget,
    pub over_machine: Option<BudgetError>,
}

/// Checks that every shard gets a usable share of the limits and that one shard's budget
/// fits in `machine_memory` bytes (not checked when unknown); whether all shards' budgets
/// fit is reported, not refused. The budget returned is the largest shard's (shard 0's:
/// shares differ by at most one connection).
pub fn check(
    settings: &BrokerSettings,
    shards: usize,
    machine_memory: Option<u64>,
) -> Result<CheckedBudget, BudgetError> {
    for (property, value) in [
        ("max.connections", settings.max_connections),
        ("max.connections.per.ip", settings.max_connections_per_ip),
    ] {
        if value < shards {
            return Err(BudgetError::ShareOfZero {
                property,
                value,
                shards,
            });
        }
    }
    if settings.fetch_response_bytes_per_shard < settings.fetch_max_bytes {
        return Err(BudgetError::FetchResponsesBelowFetchMax {
            budget: settings.fetch_response_bytes_per_shard,
            fetch_max: settings.fetch_max_bytes,
        });
    }
    let largest = ShardMemoryBudget::of(settings, 0, shards);
    let total = (0..shards)
        .map(|shard| ShardMemoryBudget::of(settings, shard, shards).total())
        .fold(0u64, u64::saturating_add);
    let over = |shards: usize, total: u64, machine: u64| BudgetError::OverMachineMemory {
        shards,
        total_mib: mib(total),
        machine_mib: mib(machine),
        per_shard: largest,
    };
    match machine_memory {
        Some(machine) if largest.total() > machine => Err(over(1, largest.total(), machine)),
        Some(machine) if total > machine => Ok(CheckedBudget {
            per_shard: largest,
            over_machine: Some(over(shards, total, machine)),
        }),
        _ => Ok(CheckedBudget {
            per_shard: largest,
            over_machine: None,
        }),
    }
}

/// The machine's memory (`MemTotal` of `/proc/meminfo`), if it can be read.
pub fn machine_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// One shard's Fetch response memory (`corelog.fetch.response.bytes.per.shard`). A fetch
/// takes its largest possible response before it reads, keeps what it read, and gives that
/// back once the response is written: concurrent large fetches wait for each other instead
/// of growing the heap.
pub struct ResponseMemory {
    capacity: usize,
    free: Semaphore,
}

/// Bytes of [`ResponseMemory`] held by one response, given back when dropped.
pub struct HeldResponseMemory {
    pool: Rc<ResponseMemory>,
    bytes: usize,
}

impl ResponseMemory {
    pub fn new(capacity: usize) -> Rc<ResponseMemory> {
        Rc::new(ResponseMemory {
            capacity,
            free: Semaphore::new(capacity as u64),
        })
    }

    /// Waits until `bytes` (at most the whole budget) are free and takes them.
    pub async fn take(self: &Rc<Self>, bytes: usize) -> Result<HeldResponseMemory, Closed> {
        let bytes = bytes.min(self.capacity);
        self.free.acquire(bytes as u64).await?;
        Ok(HeldResponseMemory {
            pool: self.clone(),
            bytes,
        })
    }
}

impl HeldResponseMemory {
    /// Holds `bytes` (at most the whole budget) from now on: gives back what is over, or
    /// waits for what is missing (a response may exceed its reservation by one batch).
    pub async fn resize(&mut self, bytes: usize) -> Result<(), Closed> {
        let bytes = bytes.min(self.pool.capacity);
        if bytes < self.bytes {
            self.pool.free.signal((self.bytes - bytes) as u64);
        } else if bytes > self.bytes {
            self.pool.free.acquire((bytes - self.bytes) as u64).await?;
        }
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for HeldResponseMemory {
    fn drop(&mut self) {
        self.pool.free.signal(self.bytes as u64);
    }
}

#[cfg(test)]
mod tests;
