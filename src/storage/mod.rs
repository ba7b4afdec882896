//! Partition logs: one segmented log per partition replica, owned by one shard.
//!
//! Lifecycle: a [`PartitionLog`] lives on exactly one shard (it is `!Send`, shared through
//! `Rc`). `append` is synchronous so appends land in request order; a per-log flusher
//! (`run_flusher`, started on demand through the owner's hook, a task in production)
//! writes all pending batches of the log in one DMA write and one `fdatasync` (group
//! commit).
//!
//! Surroundings: a log is opened with a [`LogEnv`]: its [`disk::Disk`] (all file-system
//! access; `disk::DmaDisk` in production, `mem_disk::MemDisk` in tests), its
//! [`env::Clock`] and its flusher hook. `PartitionLog::open` uses the production ones.
//!
//! Positions (asserted after every change, see `state::Offsets`): log end offset (LEO,
//! appended) >= durable end (fdatasync'ed) >= high watermark (visible to consumers) >= log
//! start. A single-replica log (the default) keeps HW = durable end; a replicated one (`set_hw_follows_durable_end(false)`) has its HW set by the
//! replication layer (`set_high_watermark`, clamped to the durable end).
//!
//! Replication support: `append_replicated` (follower append, batches kept byte for byte),
//! the leader epoch cache (`latest_epoch`, `epoch_start_offset`, `end_offset_for_epoch`),
//! `truncate_to` / `truncate_fully_and_start_at`, `wait_for_appended`.
//!
//! Files: `<dir>/<20-digit base>.log` (batches byte for byte as received, only `baseOffset`
//! and `partitionLeaderEpoch` patched by a leader append), `.index` (sparse relative offset
//! -> position) and `.timeindex` (max timestamp so far -> relative offset), see [`index`];
//! `leader-epoch-checkpoint`, `high-watermark`, `recovery-point-offset-checkpoint` and the
//! `clean-shutdown` marker, see [`checkpoint`]; `<20-digit offset>.snapshot`, producer
//! state, see `producer_snapshot`; how an open uses them, see `recovery`. Per shard, in the
//! data directory: the recovery points of all its logs, see [`recovery_points`].
//!
//! Architecture invariant: storage does no networking and never holds a `RefCell` borrow
//! across an `.await`.

pub mod checkpoint;
pub mod counters;
pub mod disk;
pub mod env;
pub mod index;
mod log;
#[cfg(test)]
pub mod mem_disk;
mod producer_snapshot;
pub mod producer_state;
pub mod records;
mod recovery;
pub mod recovery_points;
mod segment;
mod staging;
mod state;
pub mod tail_cache;
pub mod test_faults;

pub use checkpoint::{EpochCache, UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET};
pub use counters::{CountersSnapshot, StorageCounters};
pub use env::LogEnv;
pub use log::{HW_CHECKPOINT_INTERVAL, PartitionLog};
pub use records::{BatchBytes, Records};
pub use recovery::RecoveryInfo;
pub use recovery_points::ShardRecoveryPoints;
pub use staging::{STAGING_POOL_MAX_BUFFERS, STAGING_POOL_MAX_BYTES};
pub use tail_cache::ShardTailCache;

use bytes::Bytes;

/// Per-partition log settings (Kafka names: `segment.bytes`, `segment.ms`, `retention.ms`,
/// `retention.bytes`, `index.interval.bytes`, `flush.messages`, `flush.ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub segment_bytes: u64,
    pub segment_ms: u64,
    /// -1 = infinite.
    pub retention_ms: i64,
    /// -1 = infinite.
    pub retention_bytes: i64,
    pub index_interval_bytes: u32,
    /// The most this partition's tail cache keeps (its shard's budget bounds the sum over
    /// partitions); unflushed data is never evicted, so the cache can exceed it while a
    /// flush is in flight.
    pub tail_cache_bytes: usize,
    /// fdatasync once this many appended messages (offsets) are unsynced. 1 (the default):
    /// every flush fdatasyncs and a batch is acknowledged only once synced. Above 1, a
    /// batch is acknowledged once written to its segment file (O_DIRECT: it survives a
    /// crash of the process, not a power loss) and the sync waits for this count or
    /// `flush_ms`.
    pub flush_messages: u64,
    /// With `flush_messages > 1`: fdatasync written data at the latest this long after the
    /// previous sync.
    pub flush_ms: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            index_interval_bytes: 4096,
            tail_cache_bytes: 64 << 20,
            flush_messages: 1,
            flush_ms: i64::MAX as u64,
        }
    }
}

/// Largest segment we create: positions in the offset index are u32 and Kafka caps
/// `segment.bytes` at i32::MAX.
pub const MAX_SEGMENT_BYTES: u64 = i32::MAX as u64;

/// Result of [`PartitionLog::read`]: whole batches, concatenated in order. A batch may be
/// in more than one chunk (a batch from the tail cache is its patched header, then the rest;
/// see [`records`]): parse [`contiguous`](Self::contiguous), not single chunks.
#[derive(Debug, Clone, Default)]
pub struct ReadBatches {
    pub chunks: Vec<Bytes>,
    pub total_len: usize,
}

impl ReadBatches {
    fn push(&mut self, b: Bytes) {
        self.total_len += b.len();
        self.chunks.push(b);
    }

    fn push_batch(&mut self, batch: &BatchBytes) {
        for piece in batch.pieces() {
            self.push(piece.clone());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.total_len == 0
    }

    /// The batches in one buffer: the chunk itself when there is one, else a copy.
    pub fn contiguous(&self) -> Bytes {
        if let [chunk] = &self.chunks[..] {
            return chunk.clone();
        }
        let mut out = bytes::BytesMut::with_capacity(self.total_len);
        for chunk in &self.chunks {
            out.extend_from_slice(chunk);
        }
        out.freeze()
    }
}

/// Offsets assigned by a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub log_start_offset: i64,
}

/// Why an append was refused; nothing was appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// Already appended (idempotent retry): Kafka answers success with the original offset
    /// (DUPLICATE_SEQUENCE_NUMBER internally).
    #[error("duplicate sequence; originally appended at offset {base_offset}")]
    DuplicateSequence { base_offset: i64 },
    /// OUT_OF_ORDER_SEQUENCE_NUMBER (45).
    #[error("out of order sequence number")]
    OutOfOrderSequence,
    /// INVALID_PRODUCER_EPOCH (47).
    #[error("producer epoch is older than the current one")]
    InvalidProducerEpoch,
    /// The infos do not describe the buffer (a caller bug); CORRUPT_MESSAGE.
    #[error("batch infos do not match the buffer")]
    InvalidBatch,
    /// A previous write or fdatasync failed; the log refuses writes (KAFKA_STORAGE_ERROR, 56).
    #[error("log is offline after a storage error: {0}")]
    Offline(String),
    /// The log was closed or removed, or is being truncated (only followers truncate);
    /// NOT_LEADER_OR_FOLLOWER is the usual mapping.
    #[error("log is closed")]
    Closed,
}

/// Why [`PartitionLog::append_replicated`] refused batches; nothing was appended.
///
/// A separate type rather than a new `AppendError` variant only because
/// `server::work::append_error_code` matches `AppendError` exhaustively and is outside the
/// storage module; folding `NonContiguous` into `AppendError` later is a two-line change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaAppendError {
    /// The first batch does not start at the log end offset, or a batch does not follow
    /// the previous one (Kafka's UnexpectedAppendOffsetException / OffsetsOutOfOrder).
    #[error("replicated batches start at offset {got}, log end offset is {expected}")]
    NonContiguous { expected: i64, got: i64 },
    #[error(transparent)]
    Append(#[from] AppendError),
}

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// OFFSET_OUT_OF_RANGE (1).
    #[error("offset {offset} out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        log_end: i64,
    },
    #[error("corrupt log data: {0}")]
    Corrupt(String),
    /// A write or fdatasync failed earlier; the log is offline (KAFKA_STORAGE_ERROR).
    #[error("log is offline after a storage error: {0}")]
    Offline(String),
    #[error("log is closed")]
    Closed,
}

/// Wall clock in milliseconds since the epoch (Kafka timestamps).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod flush_tests;
#[cfg(test)]
mod mem_tests;
#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod staging_tests;
#[cfg(test)]
mod tests;
