//! Idempotent-producer sequence checking (Kafka's `ProducerStateManager`, simplified):
//! per producer id, its epoch and the last [`MAX_CACHED_BATCHES`] batches appended.
//!
//! Choice for an unknown producer id with a non-zero sequence: ACCEPT, as Kafka does since
//! KIP-360, because the producer's state may have been lost with retention or truncation
//! (recovery restores it from a snapshot, see `producer_snapshot`, and the batches after it).

use std::collections::{HashMap, VecDeque};

use super::AppendError;

/// Batches remembered per producer for duplicate detection (Kafka: 5 in-flight requests).
pub const MAX_CACHED_BATCHES: usize = 5;

/// One appended batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<BatchMeta>,
}

/// The producer-relevant fields of one batch about to be appended.
#[derive(Debug, Clone, Copy)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
    pub last_offset_delta: i32,
}

/// Kafka's `DefaultRecordBatch.incrementSequence`: sequences wrap from i32::MAX to 0.
pub fn increment_sequence(seq: i32, by: i32) -> i32 {
    if seq > i32::MAX - by {
        by - (i32::MAX - seq) - 1
    } else {
        seq + by
    }
}

/// Outcome of checking one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    Append,
    /// Already in the log at this base offset.
    Duplicate {
        base_offset: i64,
    },
}

#[derive(Debug, Default)]
pub struct ProducerStateMap {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerStateMap {
    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }
    pub fn len(&self) -> usize {
        self.producers.len()
    }
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Every producer, in no particular order (snapshots).
    pub fn iter(&self) -> impl Iterator<Item = (i64, &ProducerEntry)> {
        self.producers.iter().map(|(&id, e)| (id, e))
    }

    /// Puts back a producer read from a snapshot.
    pub fn restore(&mut self, producer_id: i64, entry: ProducerEntry) {
        self.producers.insert(producer_id, entry);
    }

    /// Checks every batch of one append (all or nothing) and returns the updates to
    /// [`commit`](Self::commit) once the append is done, or the first error / duplicate.
    /// `offsets[i]` is the base offset batch `i` will get.
    pub fn check_append(
        &self,
        batches: &[ProducerBatch],
        offsets: &[i64],
    ) -> Result<HashMap<i64, ProducerEntry>, AppendError> {
        let mut overlay: HashMap<i64, ProducerEntry> = HashMap::new();
        for (b, &base) in batches.iter().zip(offsets) {
            if b.producer_id < 0 {
                continue;
            }
            let entry = overlay.entry(b.producer_id).or_insert_with(|| {
                self.producers
                    .get(&b.producer_id)
                    .cloned()
                    .unwrap_or_default()
            });
            let known = !entry.batches.is_empty();
            match check_one(entry, known, b)? {
                SeqCheck::Duplicate { base_offset } => {
                    return Err(AppendError::DuplicateSequence { base_offset });
                }
                SeqCheck::Append => record(entry, b, base),
            }
        }
        Ok(overlay)
    }

    pub fn commit(&mut self, updates: HashMap<i64, ProducerEntry>) {
        self.producers.extend(updates);
    }

    /// Forgets every batch at or after `offset` (log truncation); producers left without
    /// a batch are dropped (an unknown producer is accepted at any sequence, see above).
    pub fn truncate_from(&mut self, offset: i64) {
        self.producers.retain(|_, e| {
            while e.batches.back().is_some_and(|b| b.base_offset >= offset) {
                e.batches.pop_back();
            }
            !e.batches.is_empty()
        });
    }

    pub fn clear(&mut self) {
        self.producers.clear();
    }

    /// Replays a batch found in the log at recovery or replicated from the leader (no
    /// checks).
    pub fn replay(&mut self, b: &ProducerBatch, base_offset: i64) {
        if b.producer_id < 0 {
            return;
        }
        let entry = self.producers.entry(b.producer_id).or_default();
        if b.epoch != entry.epoch {
            entry.batches.clear();
        }
        record(entry, b, base_offset);
    }
}

fn check_one(
    entry: &ProducerEntry,
    known: bool,
    b: &ProducerBatch,
) -> Result<SeqCheck, AppendError> {
    if !known {
        // Unknown producer id (or no batch yet): accept any sequence, see module docs.
        return Ok(SeqCheck::Append);
    }
    if b.epoch < entry.epoch {
        return Err(AppendError::InvalidProducerEpoch);
    }
    if b.epoch > entry.epoch {
        return if b.base_sequence == 0 {
            Ok(SeqCheck::Append)
        } else {
            Err(AppendError::OutOfOrderSequence)
        };
    }
    let last_seq = increment_sequence(b.base_sequence, b.last_offset_delta);
    if let Some(dup) = entry
        .batches
        .iter()
        .find(|m| m.first_seq == b.base_sequence && m.last_seq == last_seq)
    {
        return Ok(SeqCheck::Duplicate {
            base_offset: dup.base_offset,
        });
    }
    let expected = entry
        .batches
        .back()
        .map(|m| increment_sequence(m.last_seq, 1))
        .unwrap_or(0);
    if b.base_sequence == expected {
        Ok(SeqCheck::Append)
    } else {
        Err(AppendError::OutOfOrderSequence)
    }
}

fn record(entry: &mut ProducerEntry, b: &ProducerBatch, base_offset: i64) {
    if b.epoch != entry.epoch {
        entry.batches.clear();
        entry.epoch = b.epoch;
    }
    if entry.batches.len() == MAX_CACHED_BATCHES {
        entry.batches.pop_front();
    }
    entry.batches.push_back(BatchMeta {
        first_seq: b.base_sequence,
        last_seq: increment_sequence(b.base_sequence, b.last_offset_delta),
        base_offset,
        last_offset: base_offset + i64::from(b.last_offset_delta),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pb(pid: i64, epoch: i16, seq: i32, n: i32) -> ProducerBatch {
        ProducerBatch {
            producer_id: pid,
            epoch,
            base_sequence: seq,
            last_offset_delta: n - 1,
        }
    }

    fn append(m: &mut ProducerStateMap, b: ProducerBatch, off: i64) -> Result<(), AppendError> {
        let u = m.check_append(&[b], &[off])?;
        m.commit(u);
        Ok(())
    }

    #[test]
    fn sequences() {
        let mut m = ProducerStateMap::default();
        append(&mut m, pb(7, 0, 0, 3), 0).unwrap();
        append(&mut m, pb(7, 0, 3, 2), 3).unwrap();
        assert_eq!(
            append(&mut m, pb(7, 0, 0, 3), 9),
            Err(AppendError::DuplicateSequence { base_offset: 0 })
        );
        assert_eq!(
            append(&mut m, pb(7, 0, 6, 1), 9),
            Err(AppendError::OutOfOrderSequence)
        );
        assert_eq!(
            append(&mut m, pb(7, 0, 4, 1), 9),
            Err(AppendError::OutOfOrderSequence)
        );
        append(&mut m, pb(7, 0, 5, 1), 5).unwrap();
        // New epoch must start at 0; old epoch is fenced.
        assert_eq!(
            append(&mut m, pb(7, 1, 3, 1), 6),
            Err(AppendError::OutOfOrderSequence)
        );
        append(&mut m, pb(7, 1, 0, 1), 6).unwrap();
        assert_eq!(
            append(&mut m, pb(7, 0, 6, 1), 7),
            Err(AppendError::InvalidProducerEpoch)
        );
        // Unknown producer with non-zero sequence is accepted; non-idempotent ignored.
        append(&mut m, pb(8, 0, 42, 1), 7).unwrap();
        append(&mut m, pb(-1, -1, -1, 1), 8).unwrap();
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn all_or_nothing_and_window() {
        let mut m = ProducerStateMap::default();
        append(&mut m, pb(1, 0, 0, 1), 0).unwrap();
        // Second batch out of order: the first is not recorded either.
        let r = m.check_append(&[pb(1, 0, 1, 1), pb(1, 0, 9, 1)], &[1, 2]);
        assert_eq!(r, Err(AppendError::OutOfOrderSequence));
        assert_eq!(m.get(1).unwrap().batches.len(), 1);
        for s in 1..10 {
            append(&mut m, pb(1, 0, s, 1), i64::from(s)).unwrap();
        }
        assert_eq!(m.get(1).unwrap().batches.len(), MAX_CACHED_BATCHES);
        // Too old to be recognised as a duplicate: out of order.
        assert_eq!(
            append(&mut m, pb(1, 0, 2, 1), 10),
            Err(AppendError::OutOfOrderSequence)
        );
    }

    #[test]
    fn wraparound() {
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
        let mut m = ProducerStateMap::default();
        append(&mut m, pb(1, 0, i32::MAX - 1, 2), 0).unwrap();
        append(&mut m, pb(1, 0, 0, 1), 2).unwrap();
    }
}
