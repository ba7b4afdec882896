//! The most recent batches of a partition, in memory. O_DIRECT bypasses the page cache, so
//! tailing consumers and followers are served from here. The cached `Bytes` are the very
//! buffers received from the producer (no copy). Bounded by a byte budget, but batches not
//! yet durable are never evicted (the flusher also holds them).

use std::collections::VecDeque;

use bytes::Bytes;

use super::ReadBatches;
use crate::protocol::record_batch::first_record_at_or_after;

#[derive(Debug, Clone)]
struct Cached {
    base_offset: i64,
    last_offset: i64,
    max_timestamp: i64,
    bytes: Bytes,
}

#[derive(Debug, Default)]
pub struct TailCache {
    batches: VecDeque<Cached>,
    bytes: usize,
}

impl TailCache {
    /// Adds the next batch; offsets must follow the previous batch.
    pub fn push(&mut self, base_offset: i64, last_offset: i64, max_timestamp: i64, bytes: Bytes) {
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
            out.push(b.bytes.clone());
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
            .find_map(|b| first_record_at_or_after(&b.bytes, ts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::record_batch::{TestBatch, build_batch};

    fn cache() -> TailCache {
        let mut c = TailCache::default();
        c.push(10, 12, 100, Bytes::from(vec![1u8; 100]));
        c.push(13, 13, 200, Bytes::from(vec![2u8; 50]));
        c.push(14, 20, 300, Bytes::from(vec![3u8; 70]));
        c
    }

    /// A real batch of records at `stamps`, pushed as the log would.
    fn push_batch(c: &mut TailCache, base: i64, stamps: &[i64]) {
        let recs: Vec<(Option<&[u8]>, &[u8])> = stamps.iter().map(|_| (None, &b"v"[..])).collect();
        let b = build_batch(&TestBatch {
            base_offset: base,
            records: &recs,
            record_timestamps: stamps,
            ..TestBatch::default()
        });
        let last = base + stamps.len() as i64 - 1;
        c.push(base, last, *stamps.iter().max().unwrap(), b);
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
}
