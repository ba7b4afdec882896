//! The most recent batches of a partition, in memory. O_DIRECT bypasses the page cache, so
//! tailing consumers and followers are served from here. The cached `Bytes` are the very
//! buffers received from the producer (no copy). Bounded by a byte budget, but batches not
//! yet durable are never evicted (the flusher also holds them).

use std::collections::VecDeque;

use bytes::Bytes;

use super::ReadBatches;

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
        debug_assert!(
            self.batches
                .back()
                .is_none_or(|b| b.last_offset + 1 == base_offset)
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

    /// (base offset, max timestamp) of the first cached batch at or after `from` whose max
    /// timestamp is >= `ts` and which starts below `max_offset`.
    pub fn find_timestamp(&self, from: i64, ts: i64, max_offset: i64) -> Option<(i64, i64)> {
        self.batches
            .iter()
            .filter(|b| b.last_offset >= from && b.base_offset < max_offset)
            .find(|b| b.max_timestamp >= ts)
            .map(|b| (b.base_offset, b.max_timestamp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> TailCache {
        let mut c = TailCache::default();
        c.push(10, 12, 100, Bytes::from(vec![1u8; 100]));
        c.push(13, 13, 200, Bytes::from(vec![2u8; 50]));
        c.push(14, 20, 300, Bytes::from(vec![3u8; 70]));
        c
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
        assert_eq!(c.find_timestamp(0, 150, 100), Some((13, 200)));
        assert_eq!(c.find_timestamp(0, 301, 100), None);
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
}
