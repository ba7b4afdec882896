//! What one shard's logs did, counted where it happens: fdatasyncs and acknowledged
//! produce batches (group commit: fdatasyncs per acknowledged batch). One instance per
//! shard, shared by every log opened on its [`LogEnv`](super::LogEnv); read by the
//! broker's periodic report (and by a metrics API later).

use std::cell::Cell;

/// Monotonic counters of one shard (`!Send`: cells, no atomics on the hot path).
#[derive(Debug, Default)]
pub struct StorageCounters {
    fdatasyncs: Cell<u64>,
    acknowledged_batches: Cell<u64>,
}

/// A reading of [`StorageCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CountersSnapshot {
    /// fdatasync calls making appended data durable (the flusher's and close's; a
    /// segment roll and a truncation add one more each, not counted).
    pub fdatasyncs: u64,
    /// Record batches appended by produce requests (acks=0 included) that reached the
    /// log's acknowledged end: fdatasync'ed, or written when the flush policy allows.
    pub acknowledged_batches: u64,
}

impl StorageCounters {
    pub fn add_fdatasync(&self) {
        self.fdatasyncs.set(self.fdatasyncs.get() + 1);
    }

    pub fn add_acknowledged_batches(&self, n: u64) {
        self.acknowledged_batches
            .set(self.acknowledged_batches.get() + n);
    }

    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            fdatasyncs: self.fdatasyncs.get(),
            acknowledged_batches: self.acknowledged_batches.get(),
        }
    }
}

impl CountersSnapshot {
    /// fdatasyncs per acknowledged batch; `None` before the first batch.
    pub fn syncs_per_batch(&self) -> Option<f64> {
        (self.acknowledged_batches > 0)
            .then(|| self.fdatasyncs as f64 / self.acknowledged_batches as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_ratio() {
        let c = StorageCounters::default();
        assert_eq!(c.snapshot().syncs_per_batch(), None);
        c.add_acknowledged_batches(4);
        c.add_fdatasync();
        let s = c.snapshot();
        assert_eq!((s.fdatasyncs, s.acknowledged_batches), (1, 4));
        assert_eq!(s.syncs_per_batch(), Some(0.25));
    }
}
