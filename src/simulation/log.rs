//! One broker's copy of the partition, in memory, with `PartitionLog`'s rules as far as the
//! replication code can tell: real v2 batches (one record each) and the real [`EpochCache`];
//! appends are durable only after a flush, and a crash keeps the durable prefix only; the
//! high watermark is clamped to the durable end, moves only up (but for truncation), and a
//! restart recovers it from a checkpoint written at most every 5 s; a truncation first
//! flushes what is pending, as `PartitionLog::truncate_to` does.

use bytes::Bytes;

use crate::protocol::record_batch::{BatchHeader, BatchInfo, TestBatch, build_batch};
use crate::replication::divergence::EpochLog;
use crate::storage::EpochCache;

/// `storage::HW_CHECKPOINT_INTERVAL`, in ms.
const HW_CHECKPOINT_MS: i64 = 5_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub epoch: i32,
    /// Unique per produced record (its value).
    pub id: u64,
    pub batch: Bytes,
}

#[derive(Debug, Clone, Default)]
pub struct ModelLog {
    records: Vec<Record>,
    epochs: EpochCache,
    durable: usize,
    hw_target: i64,
    hw: i64,
    hw_checkpointed: i64,
    hw_checkpoint_at: i64,
    /// Checker: the prefix already compared with the committed records.
    pub verified: usize,
    /// Checker: a truncation below the high watermark, if one happened (hw, new end).
    pub truncated_below_hw: Option<(i64, i64)>,
}

impl EpochLog for ModelLog {
    fn log_end_offset(&self) -> i64 {
        self.records.len() as i64
    }

    fn latest_epoch(&self) -> Option<i32> {
        self.epochs.latest_epoch()
    }

    fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        self.epochs.end_offset_for(epoch, self.log_end_offset())
    }
}

impl ModelLog {
    pub fn end(&self) -> i64 {
        self.records.len() as i64
    }

    pub fn durable_end(&self) -> i64 {
        self.durable as i64
    }

    pub fn high_watermark(&self) -> i64 {
        self.hw
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    pub fn get(&self, offset: i64) -> Option<&Record> {
        usize::try_from(offset)
            .ok()
            .and_then(|i| self.records.get(i))
    }

    /// A leader's append of record `id` in `epoch` (`PartitionLog::append`). Returns its
    /// offset.
    pub fn append_leader(&mut self, epoch: i32, id: u64) -> i64 {
        let offset = self.end();
        let value = id.to_be_bytes();
        let batch = build_batch(&TestBatch {
            base_offset: offset,
            records: &[(None, &value[..])],
            partition_leader_epoch: epoch,
            ..TestBatch::default()
        });
        self.push(Record { epoch, id, batch });
        offset
    }

    /// A follower's append of the leader's validated batches (`append_replicated`): all or
    /// nothing, each at the log end.
    pub fn append_replicated(&mut self, bytes: &Bytes, infos: &[BatchInfo]) -> Result<(), String> {
        let mut placed = Vec::with_capacity(infos.len());
        let mut next = self.end();
        for info in infos {
            let batch = bytes.slice(info.offset_in_buf..info.offset_in_buf + info.len);
            let h = BatchHeader::parse(&batch).ok_or("invalid batch header")?;
            if h.base_offset() != next {
                return Err(format!(
                    "non-contiguous: expected {next}, got {}",
                    h.base_offset()
                ));
            }
            next += i64::from(info.last_offset_delta) + 1;
            placed.push(Record {
                epoch: h.partition_leader_epoch.get(),
                id: record_id(&batch),
                batch,
            });
        }
        for r in placed {
            self.push(r);
        }
        Ok(())
    }

    fn push(&mut self, r: Record) {
        self.epochs.assign(r.epoch, self.end());
        self.records.push(r);
    }

    /// The batches from `from` up to `end` (exclusive), at most `max` of them.
    pub fn read(&self, from: i64, end: i64, max: usize) -> Bytes {
        let (from, end) = (from as usize, end as usize);
        let mut out = Vec::new();
        for r in self.records[from..end].iter().take(max) {
            out.extend_from_slice(&r.batch);
        }
        Bytes::from(out)
    }

    /// The flusher wrote and synced everything pending.
    pub fn flush(&mut self, now: i64) {
        self.durable = self.records.len();
        self.raise_hw(self.hw_target.min(self.durable_end()));
        if self.hw != self.hw_checkpointed && now - self.hw_checkpoint_at >= HW_CHECKPOINT_MS {
            self.hw_checkpointed = self.hw;
            self.hw_checkpoint_at = now;
        }
    }

    /// `PartitionLog::set_high_watermark`: remembered, visible as far as the durable end.
    pub fn set_high_watermark(&mut self, hw: i64) {
        self.hw_target = self.hw_target.max(hw);
        self.raise_hw(self.hw_target.min(self.durable_end()));
    }

    fn raise_hw(&mut self, hw: i64) {
        self.hw = self.hw.max(hw);
    }

    /// `PartitionLog::truncate_to`: flushes what is pending, then removes the records from
    /// `offset` on (an offset at or past the end changes nothing; a negative one fails, as
    /// the full reset below the log start it asks for). Returns the new end.
    pub fn truncate_to(&mut self, offset: i64, now: i64) -> Result<i64, String> {
        self.flush(now);
        if offset >= self.end() {
            return Ok(self.end());
        }
        if offset < 0 {
            return Err(format!("offset {offset} is out of range"));
        }
        if offset < self.hw && self.truncated_below_hw.is_none() {
            self.truncated_below_hw = Some((self.hw, offset));
        }
        self.records.truncate(offset as usize);
        self.epochs.truncate_from_end(offset);
        self.durable = self.durable.min(offset as usize);
        self.hw = self.hw.min(offset);
        self.hw_target = self.hw_target.min(offset);
        self.verified = self.verified.min(offset as usize);
        self.hw_checkpointed = self.hw;
        self.hw_checkpoint_at = now;
        Ok(offset)
    }

    /// The process died: what was not flushed is lost; at restart the high watermark comes
    /// from the checkpoint (never above the durable end) and the epoch cache from the data.
    pub fn crash(&mut self) {
        self.records.truncate(self.durable);
        self.verified = self.verified.min(self.durable);
        self.epochs = EpochCache::default();
        for (offset, r) in self.records.iter().enumerate() {
            self.epochs.assign(r.epoch, offset as i64);
        }
        let hw = self.hw_checkpointed.clamp(0, self.durable_end());
        self.hw = hw;
        self.hw_target = hw;
    }
}

/// The id a record was produced with: the value of the batch's one record, its last 8 bytes
/// before the header count (0, one byte).
pub fn record_id(batch: &[u8]) -> u64 {
    let n = batch.len();
    u64::from_be_bytes(batch[n - 9..n - 1].try_into().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::record_batch::validate_batches;

    #[test]
    fn replicated_batches_keep_epoch_and_id() {
        let mut leader = ModelLog::default();
        leader.append_leader(3, 77);
        leader.append_leader(4, 78);
        leader.flush(0);
        let bytes = leader.read(0, leader.durable_end(), 10);
        let infos = validate_batches(&bytes).unwrap();
        let mut follower = ModelLog::default();
        follower.append_replicated(&bytes, &infos).unwrap();
        assert_eq!(follower.records(), leader.records());
        assert_eq!(follower.records()[1].id, 78);
        assert_eq!(follower.end_offset_for_epoch(3), Some((3, 1)));
        // Not at the log end: refused, nothing appended.
        assert!(follower.append_replicated(&bytes, &infos).is_err());
        assert_eq!(follower.end(), 2);
    }
}
