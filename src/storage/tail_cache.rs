//! The most recent batches of each partition, in memory. O_DIRECT bypasses the page cache, so
//! tailing consumers and followers are served from here. A cached batch is the very buffer
//! received from the producer (no copy) after a patched copy of its header, unless it was a
//! small share of its request, then a compact copy: what the cache keeps alive is at most
//! [`SLICE_MIN_FRAME_SHARE`] times what it counts (see [`records`](super::records)).
//!
//! One [`ShardTailCache`] holds the caches of every partition log of a shard under one byte
//! budget: when the sum is over it, durable batches are evicted from the least recently used
//! partition first (a partition is used when it is appended to or read from its cache).
//! Batches not yet durable are never evicted (the flusher also holds them, and a read of them
//! cannot go to the file yet), so the sum can exceed the budget by what is unflushed.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use super::ReadBatches;
use super::records::BatchBytes;
#[cfg(doc)]
use super::records::SLICE_MIN_FRAME_SHARE;
use crate::protocol::record_batch::first_record_at_or_after;

#[derive(Debug, Clone)]
struct Cached {
    base_offset: i64,
    last_offset: i64,
    max_timestamp: i64,
    bytes: BatchBytes,
}

/// One partition's cached batches, oldest first.
#[derive(Debug, Default)]
struct TailCache {
    batches: VecDeque<Cached>,
    bytes: usize,
}

impl TailCache {
    /// Adds the next batch; offsets must follow the previous batch.
    pub fn push(
        &mut self,
        base_offset: i64,
        last_offset: i64,
        max_timestamp: i64,
        bytes: BatchBytes,
    ) {
        assert!(
            self.batches
                .back()
                .is_none_or(|b| b.last_offset + 1 == base_offset),
            "tail cache batch at {base_offset} does not follow the previous one"
        );
        self.bytes += bytes.len();
        self.batches.push_back(Cached {
            base_offset,
            last_offset,
            max_timestamp,
            bytes,
        });
    }

    /// Evicts the oldest batches while over `budget`, never those ending at or after
    /// `durable_end` (not yet on disk).
    pub fn evict(&mut self, budget: usize, durable_end: i64) {
        while self.bytes > budget {
            match self.batches.front() {
                Some(b) if b.last_offset < durable_end => {
                    self.bytes -= b.bytes.len();
                    self.batches.pop_front();
                }
                _ => break,
            }
        }
    }

    /// Drops batches entirely below `offset` (retention advanced the log start).
    pub fn drop_below(&mut self, offset: i64) {
        while let Some(b) = self.batches.front() {
            if b.last_offset >= offset {
                break;
            }
            self.bytes -= b.bytes.len();
            self.batches.pop_front();
        }
    }

    /// Drops batches starting at or after `offset` (log truncation at a batch boundary).
    pub fn truncate_from(&mut self, offset: i64) {
        while let Some(b) = self.batches.back() {
            if b.base_offset < offset {
                break;
            }
            self.bytes -= b.bytes.len();
            self.batches.pop_back();
        }
    }

    pub fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }

    /// First offset served from memory, if any.
    pub fn start_offset(&self) -> Option<i64> {
        self.batches.front().map(|b| b.base_offset)
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whole batches from the one containing `offset`, up to `max_bytes` (at least one
    /// batch), stopping before any batch starting at or after `max_offset`. None when
    /// `offset` is below the cached range.
    pub fn read(&self, offset: i64, max_bytes: usize, max_offset: i64) -> Option<ReadBatches> {
        if self.start_offset()? > offset {
            return None;
        }
        let first = self.batches.partition_point(|b| b.last_offset < offset);
        let mut out = ReadBatches::default();
        for b in self.batches.range(first..) {
            if b.base_offset >= max_offset
                || (!out.is_empty() && out.total_len + b.bytes.len() > max_bytes)
            {
                break;
            }
            out.push_batch(&b.bytes);
        }
        Some(out)
    }

    /// ListOffsets by timestamp over the cached batches ending at or after `from` and
    /// starting below `max_offset`: (offset, timestamp) of the first record whose timestamp
    /// is >= `ts`, see [`first_record_at_or_after`] (batch granularity for compressed
    /// batches).
    pub fn find_timestamp(&self, from: i64, ts: i64, max_offset: i64) -> Option<(i64, i64)> {
        self.batches
            .iter()
            .filter(|b| b.last_offset >= from && b.base_offset < max_offset)
            .filter(|b| b.max_timestamp >= ts)
            .find_map(|b| first_record_at_or_after(&b.bytes.contiguous(), ts))
    }
}

/// Every partition's tail cache on one shard, under one byte budget. Cheap to clone (one
/// `Rc`); lives on one shard.
#[derive(Clone)]
pub struct ShardTailCache(Rc<RefCell<Caches>>);

/// One partition's part of its shard's [`ShardTailCache`]; dropping it drops the partition's
/// cached batches.
pub struct PartitionTailCache {
    shard: ShardTailCache,
    id: u64,
}

struct Caches {
    budget: usize,
    /// Bytes cached over every partition.
    bytes: usize,
    partitions: HashMap<u64, PartitionEntry>,
    /// The partitions with cached batches, least recently used first: use tick -> id.
    by_last_use: BTreeMap<u64, u64>,
    next_id: u64,
    next_tick: u64,
    /// The highest total the log reported so far.
    reported_peak: usize,
}

struct PartitionEntry {
    cache: TailCache,
    /// Batches ending below it are on disk: they may be evicted.
    durable_end: i64,
    /// The partition's key in `by_last_use` while it has cached batches.
    last_use: u64,
}

/// A new peak of the shard's cached bytes is logged once it passes the last one reported by
/// this share of the budget (a handful of lines per run, not one per append).
const PEAK_REPORT_BUDGET_DIVISOR: usize = 8;

impl Caches {
    fn entry(&mut self, id: u64) -> &mut PartitionEntry {
        self.partitions
            .get_mut(&id)
            .expect("a partition's tail cache lives as long as its handle")
    }

    /// Runs `change` on one partition's cache, keeping the total and the use order in step.
    fn change<R>(&mut self, id: u64, change: impl FnOnce(&mut PartitionEntry) -> R) -> R {
        let entry = self.entry(id);
        let before = entry.cache.bytes();
        let result = change(entry);
        let (after, last_use) = (entry.cache.bytes(), entry.last_use);
        if after == 0 {
            self.by_last_use.remove(&last_use);
        }
        self.bytes = self.bytes - before + after;
        result
    }

    /// Marks a partition as the most recently used.
    fn touch(&mut self, id: u64) {
        let tick = self.next_tick;
        self.next_tick += 1;
        let entry = self.entry(id);
        let previous = std::mem::replace(&mut entry.last_use, tick);
        let cached = entry.cache.bytes() > 0;
        self.by_last_use.remove(&previous);
        if cached {
            self.by_last_use.insert(tick, id);
        }
    }

    /// While over the budget, evicts durable batches, least recently used partition first.
    fn evict_over_budget(&mut self) {
        let mut from_tick = 0;
        while self.bytes > self.budget {
            let Some((&tick, &id)) = self.by_last_use.range(from_tick..).next() else {
                return;
            };
            from_tick = tick + 1;
            let excess = self.bytes - self.budget;
            self.change(id, |e| {
                let keep = e.cache.bytes().saturating_sub(excess);
                e.cache.evict(keep, e.durable_end);
            });
        }
    }

    fn report_peak(&mut self) {
        let step = self.budget / PEAK_REPORT_BUDGET_DIVISOR;
        if self.bytes > self.reported_peak.saturating_add(step) {
            self.reported_peak = self.bytes;
            tracing::info!(
                cached_bytes = self.bytes,
                budget = self.budget,
                partitions = self.by_last_use.len(),
                "tail caches: new peak"
            );
        }
    }
}

impl ShardTailCache {
    /// Caches whose sum is kept within `budget` bytes (plus what is not yet durable).
    pub fn new(budget: usize) -> ShardTailCache {
        ShardTailCache(Rc::new(RefCell::new(Caches {
            budget,
            bytes: 0,
            partitions: HashMap::new(),
            by_last_use: BTreeMap::new(),
            next_id: 0,
            // 0 is the `last_use` of a partition never used.
            next_tick: 1,
            reported_peak: 0,
        })))
    }

    /// A new partition's empty cache.
    pub fn partition(&self) -> PartitionTailCache {
        let mut caches = self.0.borrow_mut();
        let id = caches.next_id;
        caches.next_id += 1;
        let entry = PartitionEntry {
            cache: TailCache::default(),
            durable_end: i64::MIN,
            last_use: 0,
        };
        caches.partitions.insert(id, entry);
        PartitionTailCache {
            shard: self.clone(),
            id,
        }
    }

    /// Bytes cached over every partition of the shard.
    pub fn bytes(&self) -> usize {
        self.0.borrow().bytes
    }
}

impl PartitionTailCache {
    fn with<R>(&self, f: impl FnOnce(&mut Caches, u64) -> R) -> R {
        f(&mut self.shard.0.borrow_mut(), self.id)
    }

    /// Adds the partition's next batch; offsets must follow the previous batch. Makes room
    /// within the shard's budget from the least recently used partitions.
    pub fn push(&self, base_offset: i64, last_offset: i64, max_timestamp: i64, bytes: BatchBytes) {
        self.with(|caches, id| {
            caches.change(id, |e| {
                e.cache.push(base_offset, last_offset, max_timestamp, bytes);
            });
            caches.touch(id);
            caches.evict_over_budget();
            caches.report_peak();
        });
    }

    /// The partition's batches below `durable_end` are on disk: evicts them while the
    /// partition holds more than `partition_max_bytes` or the shard is over its budget.
    pub fn on_durable(&self, durable_end: i64, partition_max_bytes: usize) {
        self.with(|caches, id| {
            caches.change(id, |e| {
                e.durable_end = durable_end;
                e.cache.evict(partition_max_bytes, durable_end);
            });
            caches.evict_over_budget();
        });
    }

    /// Drops batches entirely below `offset` (retention advanced the log start).
    pub fn drop_below(&self, offset: i64) {
        self.with(|caches, id| caches.change(id, |e| e.cache.drop_below(offset)));
    }

    /// Drops batches starting at or after `offset` (log truncation at a batch boundary);
    /// batches appended later are not durable until the log says so again.
    pub fn truncate_from(&self, offset: i64) {
        self.with(|caches, id| {
            caches.change(id, |e| {
                e.cache.truncate_from(offset);
                e.durable_end = e.durable_end.min(offset);
            });
        });
    }

    pub fn clear(&self) {
        self.with(|caches, id| {
            caches.change(id, |e| {
                e.cache.clear();
                e.durable_end = i64::MIN;
            });
        });
    }

    /// First offset served from memory, if any.
    pub fn start_offset(&self) -> Option<i64> {
        self.with(|caches, id| caches.entry(id).cache.start_offset())
    }

    pub fn bytes(&self) -> usize {
        self.with(|caches, id| caches.entry(id).cache.bytes())
    }

    /// See [`TailCache::read`]; a read that finds the range cached uses the partition.
    pub fn read(&self, offset: i64, max_bytes: usize, max_offset: i64) -> Option<ReadBatches> {
        self.with(|caches, id| {
            let read = caches.entry(id).cache.read(offset, max_bytes, max_offset);
            if read.is_some() {
                caches.touch(id);
            }
            read
        })
    }

    /// See [`TailCache::find_timestamp`].
    pub fn find_timestamp(&self, from: i64, ts: i64, max_offset: i64) -> Option<(i64, i64)> {
        self.with(|caches, id| caches.entry(id).cache.find_timestamp(from, ts, max_offset))
    }
}

impl Drop for PartitionTailCache {
    fn drop(&mut self) {
        self.with(|caches, id| {
            caches.change(id, |e| e.cache.clear());
            caches.partitions.remove(&id);
        });
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::record_batch::{TestBatch, build_batch, validate_batches};
    use crate::storage::records::Records;

    fn cache() -> TailCache {
        let mut c = TailCache::default();
        c.push(10, 12, 100, BatchBytes::whole(Bytes::from(vec![1u8; 100])));
        c.push(13, 13, 200, BatchBytes::whole(Bytes::from(vec![2u8; 50])));
        c.push(14, 20, 300, BatchBytes::whole(Bytes::from(vec![3u8; 70])));
        c
    }

    /// A real batch of records at `stamps`, pushed as the log would: a patched header, then
    /// the rest of the producer's bytes.
    fn push_batch(c: &mut TailCache, base: i64, stamps: &[i64]) {
        let recs: Vec<(Option<&[u8]>, &[u8])> = stamps.iter().map(|_| (None, &b"v"[..])).collect();
        let b = build_batch(&TestBatch {
            base_offset: base,
            records: &recs,
            record_timestamps: stamps,
            ..TestBatch::default()
        });
        let info = &validate_batches(&b).unwrap()[0];
        let stored = Records::from(b).patched(info, base, 0);
        assert_eq!(stored.pieces().count(), 2);
        let last = base + stamps.len() as i64 - 1;
        c.push(base, last, *stamps.iter().max().unwrap(), stored);
    }

    #[test]
    fn reads_whole_batches() {
        let c = cache();
        assert!(c.read(9, 1000, 100).is_none());
        let r = c.read(11, 1000, 100).unwrap();
        assert_eq!((r.chunks.len(), r.total_len), (3, 220));
        let r = c.read(13, 10, 100).unwrap(); // KIP-74: one batch even if too big
        assert_eq!(r.total_len, 50);
        let r = c.read(10, 1000, 14).unwrap(); // stops at max_offset
        assert_eq!(r.total_len, 150);
        assert!(c.read(14, 1000, 14).unwrap().is_empty());
    }

    #[test]
    fn finds_first_record_by_timestamp() {
        let mut c = TailCache::default();
        push_batch(&mut c, 10, &[100, 150, 120]);
        push_batch(&mut c, 13, &[200]);
        push_batch(&mut c, 14, &[300, 310]);
        assert_eq!(c.find_timestamp(0, 0, 100), Some((10, 100)));
        assert_eq!(c.find_timestamp(0, 101, 100), Some((11, 150)));
        assert_eq!(c.find_timestamp(0, 151, 100), Some((13, 200)));
        assert_eq!(c.find_timestamp(0, 301, 100), Some((15, 310)));
        assert_eq!(c.find_timestamp(0, 311, 100), None);
        assert_eq!(c.find_timestamp(13, 0, 100), Some((13, 200))); // from
        assert_eq!(c.find_timestamp(0, 201, 14), None); // max_offset
    }

    #[test]
    fn eviction_keeps_unflushed() {
        let mut c = cache();
        c.evict(0, 13);
        assert_eq!(c.start_offset(), Some(13));
        c.evict(0, 0);
        assert_eq!(c.bytes(), 120);
        c.evict(80, 100);
        assert_eq!(c.start_offset(), Some(14));
        c.drop_below(100);
        assert_eq!(c.start_offset(), None);
    }

    #[test]
    fn truncate_from_end() {
        let mut c = cache();
        c.truncate_from(14);
        assert_eq!(c.bytes(), 150);
        assert!(c.read(13, 1000, 100).unwrap().total_len == 50);
        c.truncate_from(10);
        assert_eq!((c.bytes(), c.start_offset()), (0, None));
    }

    fn batch(len: usize) -> BatchBytes {
        BatchBytes::whole(Bytes::from(vec![0u8; len]))
    }

    #[test]
    fn the_shard_budget_evicts_the_least_recently_used_partition_first() {
        let shard = ShardTailCache::new(250);
        let (a, b, c) = (shard.partition(), shard.partition(), shard.partition());
        a.push(0, 0, 0, batch(100));
        b.push(0, 0, 0, batch(100));
        a.on_durable(1, usize::MAX);
        b.on_durable(1, usize::MAX);
        // `a` was read last: `b` is now the least recently used.
        assert!(a.read(0, 1000, 1).is_some());
        c.push(0, 0, 0, batch(100));
        assert_eq!((a.bytes(), b.bytes(), c.bytes()), (100, 0, 100));
        assert_eq!(shard.bytes(), 200);
        c.on_durable(1, usize::MAX);
        b.push(1, 1, 0, batch(100));
        assert_eq!((a.bytes(), b.bytes(), c.bytes()), (0, 100, 100));
    }

    #[test]
    fn batches_not_yet_durable_stay_over_the_budget() {
        let shard = ShardTailCache::new(0);
        let (a, b) = (shard.partition(), shard.partition());
        a.push(0, 0, 0, batch(100));
        b.push(0, 0, 0, batch(50));
        assert_eq!(shard.bytes(), 150, "nothing is durable yet");
        a.on_durable(1, usize::MAX);
        assert_eq!((a.bytes(), b.bytes()), (0, 50));
        // A truncation below the durable end: what is appended after is not durable.
        b.on_durable(1, usize::MAX);
        b.truncate_from(0);
        b.push(0, 0, 0, batch(70));
        b.on_durable(0, usize::MAX);
        assert_eq!(shard.bytes(), 70);
        b.clear();
        b.push(5, 5, 0, batch(10));
        a.push(1, 1, 0, batch(1));
        assert_eq!(b.bytes(), 10, "a cleared cache knows no durable end");
    }

    #[test]
    fn a_partition_limit_and_a_dropped_partition_free_their_bytes() {
        let shard = ShardTailCache::new(1000);
        let (a, b) = (shard.partition(), shard.partition());
        a.push(0, 0, 0, batch(100));
        a.push(1, 1, 0, batch(100));
        a.on_durable(2, 150);
        assert_eq!(a.bytes(), 100);
        b.push(0, 0, 0, batch(300));
        drop(a);
        assert_eq!(shard.bytes(), 300);
        drop(b);
        assert_eq!(shard.bytes(), 0);
    }
}
