//! One broker's copy of a partition: the real `PartitionLog` (segments, indexes, tail
//! cache, group commit, epoch cache, producer state, HW checkpoint, truncation, recovery)
//! over the broker's `MemDisk` (a crash keeps only fdatasync'ed bytes), on the simulated
//! clock, its flusher run when the simulation says (`LogEnv::start_flusher` only records
//! that a flush is due). Every `MemDisk` operation completes at once, so each of the log's
//! futures is driven with `now_or_never`.
//!
//! For the checker, a shadow of the log: (epoch, record id) per offset, kept in step with
//! appends, rebuilt from the real log's contents (read back and decoded) after every
//! recovery and truncation, and compared with them whenever it is rebuilt.

use std::cell::Cell;
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use futures::FutureExt;

use crate::protocol::record_batch::{
    BatchHeader, BatchInfo, TestBatch, build_batch, validate_batches,
};
use crate::storage::mem_disk::{ManualClock, MemDisk};
use crate::storage::recovery_points::ShardRecoveryPoints;
use crate::storage::{AppendError, LogConfig, LogEnv, PartitionLog, ShardTailCache, StorageError};

/// Small segments and tail cache, so that runs roll segments, read from the files and
/// recover several segments.
fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4 << 10,
        index_interval_bytes: 512,
        tail_cache_bytes: 2 << 10,
        retention_ms: -1,
        ..LogConfig::default()
    }
}

/// The broker's data directory: the partitions' and the shard's recovery-point file.
pub const DATA_DIR: &str = "/data";

/// Every producer keeps its first epoch.
const PRODUCER_EPOCH: i16 = 0;

/// Wall-clock ms at simulated time 0 (segment timestamps look like real ones).
const WALL_BASE_MS: i64 = 1_700_000_000_000;

/// The simulated clock, shared by every log; the simulation moves it.
pub fn sim_clock(base: Instant) -> ManualClock {
    ManualClock::new(base, WALL_BASE_MS)
}

/// Drives a log future over `MemDisk`, which never waits.
fn ready<T>(f: impl Future<Output = T>) -> T {
    match f.now_or_never() {
        Some(t) => t,
        None => panic!("a log operation over MemDisk did not complete at once"),
    }
}

/// A record (each batch holds one) as the checker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub epoch: i32,
    /// Unique per record a client produced (its value); a retry sends it again.
    pub id: u64,
    pub producer_id: i64,
    pub sequence: i32,
}

pub struct SimLog {
    dir: PathBuf,
    /// The open log; None while the process is down.
    log: Option<Rc<PartitionLog>>,
    /// The log asked for its flusher to run (the `start_flusher` hook was called).
    flush_due: Rc<Cell<bool>>,
    /// The replication layer owns the high watermark (`set_hw_follows_durable_end(false)`
    /// since the log was opened).
    replicated: bool,
    /// Checker: what the log holds, per offset.
    shadow: Vec<Record>,
    /// Checker: while the process is down, the high watermark it had (a replicated log's).
    hw_at_crash: Option<i64>,
    /// Checker: the prefix already compared with the committed records.
    pub verified: usize,
    /// Checker: a truncation below the high watermark, if one happened (hw, new end).
    pub truncated_below_hw: Option<(i64, i64)>,
    /// Checker: the first time the real log's contents differed from the shadow.
    pub discrepancy: Option<String>,
}

impl SimLog {
    pub fn new(partition: i32) -> Self {
        Self {
            dir: PathBuf::from(format!("{DATA_DIR}/sim-{partition}")),
            log: None,
            flush_due: Rc::default(),
            replicated: false,
            shadow: Vec::new(),
            hw_at_crash: None,
            verified: 0,
            truncated_below_hw: None,
            discrepancy: None,
        }
    }

    /// Opens the log on `disk` (the real recovery, from the process's `recovery_points`),
    /// then rebuilds the shadow from what it recovered, which must be the durable prefix
    /// the shadow kept at the crash.
    pub fn open(
        &mut self,
        disk: &MemDisk,
        clock: Rc<ManualClock>,
        recovery_points: Rc<ShardRecoveryPoints>,
    ) {
        let due = self.flush_due.clone();
        due.set(false);
        let env = LogEnv {
            disk: Rc::new(disk.clone()),
            clock,
            start_flusher: Rc::new(move |_| {
                assert!(!due.get(), "the flusher was started twice");
                due.set(true);
            }),
            tail_cache: ShardTailCache::new(usize::MAX),
            counters: Rc::default(),
            recovery_points,
        };
        let log = match ready(PartitionLog::open_with(&env, &self.dir, config())) {
            Ok(log) => log,
            Err(e) => panic!("{:?} does not recover: {e}", self.dir),
        };
        self.log = Some(log);
        self.replicated = false;
        self.hw_at_crash = None;
        let durable = self.shadow.len();
        self.rebuild_shadow("recovery", durable);
    }

    /// The process died and the disk lost what was not synced: the log is closed, the
    /// shadow keeps the durable prefix (what the recovery must find).
    pub fn crash(&mut self) {
        self.hw_at_crash = self.checked_high_watermark();
        if let Some(log) = self.log.take() {
            let durable = log.durable_end().max(0) as usize;
            self.shadow.truncate(durable);
            self.verified = self.verified.min(durable);
        }
        self.flush_due.set(false);
        self.replicated = false;
    }

    /// The open log (the process is up).
    pub fn real(&self) -> &PartitionLog {
        match &self.log {
            Some(log) => log,
            None => panic!("{:?} is used while its process is down", self.dir),
        }
    }

    pub fn end(&self) -> i64 {
        self.real().log_end_offset()
    }

    pub fn durable_end(&self) -> i64 {
        self.real().durable_end()
    }

    pub fn high_watermark(&self) -> i64 {
        self.real().high_watermark()
    }

    /// The high watermark the replication layer set (while the process is down, the one
    /// it had: the records below it are durable, so the shadow still has them).
    pub fn checked_high_watermark(&self) -> Option<i64> {
        match &self.log {
            Some(log) => self.replicated.then(|| log.high_watermark()),
            None => self.hw_at_crash,
        }
    }

    /// (log end, durable end, high watermark), or the shadow's end while down.
    pub fn describe(&self) -> String {
        match &self.log {
            Some(log) => format!(
                "(end, durable, hw) ({}, {}, {})",
                log.log_end_offset(),
                log.durable_end(),
                log.high_watermark()
            ),
            None => format!("closed, {} records", self.shadow.len()),
        }
    }

    pub fn records(&self) -> &[Record] {
        &self.shadow
    }

    pub fn get(&self, offset: i64) -> Option<&Record> {
        usize::try_from(offset)
            .ok()
            .and_then(|i| self.shadow.get(i))
    }

    /// `Replica::apply`: a replicated partition's high watermark moves with the ISR.
    pub fn set_replicated(&mut self) {
        self.real().set_hw_follows_durable_end(false);
        self.replicated = true;
    }

    pub fn set_high_watermark(&self, hw: i64) {
        self.real().set_high_watermark(hw);
    }

    /// A leader's append of an idempotent producer's one-record batch in `epoch`
    /// (`PartitionLog::append`, whose producer state finds duplicates). Returns its offset.
    pub fn append_leader(&mut self, epoch: i32, record: Record) -> Result<i64, AppendError> {
        let value = record.id.to_be_bytes();
        let batch = build_batch(&TestBatch {
            records: &[(None, &value[..])],
            producer_id: record.producer_id,
            producer_epoch: PRODUCER_EPOCH,
            base_sequence: record.sequence,
            partition_leader_epoch: epoch,
            ..TestBatch::default()
        });
        let infos = validate_batches(&batch).map_err(|_| AppendError::InvalidBatch)?;
        let appended = self.real().append(batch, &infos, epoch)?;
        self.shadow.push(Record { epoch, ..record });
        Ok(appended.base_offset)
    }

    /// A follower's append of the leader's validated batches (`append_replicated`).
    pub fn append_replicated(&mut self, bytes: &Bytes, infos: &[BatchInfo]) -> Result<(), String> {
        self.real()
            .append_replicated(bytes.clone(), infos)
            .map_err(|e| e.to_string())?;
        for info in infos {
            let batch = &bytes[info.offset_in_buf..info.offset_in_buf + info.len];
            self.shadow.push(decode(batch)?);
        }
        Ok(())
    }

    /// Whole batches from `from`, below `end`, up to `max_bytes` (at least one).
    pub fn read(&self, from: i64, end: i64, max_bytes: usize) -> Result<Bytes, StorageError> {
        let read = ready(self.real().read(from, max_bytes, end))?;
        Ok(read.contiguous())
    }

    /// Whether the log waits for its flusher.
    pub fn flush_due(&self) -> bool {
        self.flush_due.get()
    }

    /// Runs the flusher if the log asked for it: everything pending is written and synced.
    pub fn flush(&mut self) {
        if !self.flush_due.replace(false) {
            return;
        }
        if let Some(log) = &self.log {
            ready(log.clone().run_flusher());
        }
    }

    /// `PartitionLog::truncate_to` (which waits for a running flusher: it runs first).
    /// Returns the new end.
    pub fn truncate_to(&mut self, offset: i64) -> Result<i64, StorageError> {
        self.flush();
        let hw = self.high_watermark();
        let end = ready(self.real().truncate_to(offset))?;
        if end < hw && self.truncated_below_hw.is_none() {
            self.truncated_below_hw = Some((hw, end));
        }
        self.rebuild_shadow("truncation", end.max(0) as usize);
        Ok(end)
    }

    /// Reads the whole log back, decodes it, and makes it the shadow: it must be the old
    /// shadow's first `expected` records.
    fn rebuild_shadow(&mut self, after: &str, expected: usize) {
        let records = match self.read_back() {
            Ok(records) => records,
            Err(e) => {
                self.discrepancy.get_or_insert(e);
                return;
            }
        };
        let old = std::mem::replace(&mut self.shadow, records);
        self.verified = self.verified.min(self.shadow.len());
        if old.get(..expected) != Some(&self.shadow[..]) && self.discrepancy.is_none() {
            self.discrepancy = Some(format!(
                "{:?} after {after} holds {} records, not a prefix of the {} it had: {:?} \
                 instead of {:?}",
                self.dir,
                self.shadow.len(),
                old.len(),
                self.shadow.iter().zip(&old).position(|(a, b)| a != b),
                old.get(self.shadow.len()..)
            ));
        }
    }

    /// Compares the shadow with the real log's contents.
    pub fn verify(&self) -> Result<(), String> {
        if self.log.is_none() {
            return Ok(());
        }
        let records = self.read_back()?;
        if records != self.shadow {
            return Err(format!(
                "{:?} holds {} records, the shadow {}; first difference at {:?}",
                self.dir,
                records.len(),
                self.shadow.len(),
                records.iter().zip(&self.shadow).position(|(a, b)| a != b)
            ));
        }
        Ok(())
    }

    /// Every record of the log, read back from it (a read stops at a segment's end: read
    /// on from there).
    fn read_back(&self) -> Result<Vec<Record>, String> {
        let log = self.real();
        let (mut from, end) = (log.log_start_offset(), log.log_end_offset());
        let mut records = Vec::new();
        while from < end {
            let read = self
                .read(from, end, usize::MAX)
                .map_err(|e| e.to_string())?;
            let infos = validate_batches(&read).map_err(|e| format!("read back: {e}"))?;
            if infos.is_empty() {
                return Err(format!("{:?}: no batch at {from}", self.dir));
            }
            for info in infos {
                let batch = &read[info.offset_in_buf..info.offset_in_buf + info.len];
                let h = BatchHeader::parse(batch).ok_or("read back: bad header")?;
                if h.base_offset() != from {
                    return Err(format!("batch at {} where {from} was due", h.base_offset()));
                }
                records.push(decode(batch)?);
                from = h.last_offset() + 1;
            }
        }
        Ok(records)
    }
}

/// The record of a one-record batch: the id is its record's value, the last 8 bytes before
/// the header count (0, one byte).
fn decode(batch: &[u8]) -> Result<Record, String> {
    let h = BatchHeader::parse(batch).ok_or("bad batch header")?;
    let n = batch.len();
    let value = batch
        .get(n.saturating_sub(9)..n.saturating_sub(1))
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .ok_or("batch too short for a record id")?;
    Ok(Record {
        epoch: h.partition_leader_epoch.get(),
        id: u64::from_be_bytes(value),
        producer_id: h.producer_id.get(),
        sequence: h.base_sequence.get(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new process's recovery points.
    fn points() -> Rc<ShardRecoveryPoints> {
        Rc::new(ShardRecoveryPoints::new(std::path::Path::new(DATA_DIR), 0))
    }

    fn opened(disk: &MemDisk, clock: &Rc<ManualClock>) -> SimLog {
        let mut log = SimLog::new(0);
        log.open(disk, clock.clone(), points());
        log.set_replicated();
        log
    }

    #[test]
    fn replicated_batches_keep_epoch_and_id_and_a_crash_keeps_the_synced_prefix() {
        let clock = Rc::new(sim_clock(Instant::now()));
        let (leader_disk, follower_disk) = (MemDisk::new(), MemDisk::new());
        let mut leader = opened(&leader_disk, &clock);
        let record = |id, sequence| Record {
            epoch: -1,
            id,
            producer_id: 9,
            sequence,
        };
        leader.append_leader(3, record(77, 0)).unwrap();
        leader.append_leader(4, record(78, 1)).unwrap();
        // A retry of the last batch: found by the producer state, nothing appended.
        assert_eq!(
            leader.append_leader(4, record(78, 1)),
            Err(AppendError::DuplicateSequence { base_offset: 1 })
        );
        assert!(leader.flush_due());
        leader.flush();
        let bytes = leader.read(0, leader.durable_end(), usize::MAX).unwrap();
        let infos = validate_batches(&bytes).unwrap();
        let mut follower = opened(&follower_disk, &clock);
        follower.append_replicated(&bytes, &infos).unwrap();
        assert_eq!(follower.records(), leader.records());
        assert_eq!(follower.records()[1].id, 78);
        assert_eq!(follower.real().end_offset_for_epoch(3), Some((3, 1)));
        // Not at the log end: refused, nothing appended.
        assert!(follower.append_replicated(&bytes, &infos).is_err());
        assert_eq!(follower.end(), 2);
        follower.verify().unwrap();

        // Unsynced on the follower: a crash loses both records.
        follower.crash();
        follower_disk.crash();
        follower.open(&follower_disk, clock.clone(), points());
        assert_eq!(follower.records(), &[]);
        // Synced on the leader: both come back.
        leader.crash();
        leader_disk.crash();
        leader.open(&leader_disk, clock, points());
        assert_eq!(leader.records().len(), 2);
        assert_eq!(leader.truncate_to(1).unwrap(), 1);
        assert_eq!(
            leader.records(),
            &[Record {
                epoch: 3,
                ..record(77, 0)
            }]
        );
        assert_eq!(leader.discrepancy, None);
    }

    /// A retry of a batch in a sealed segment, after a restart, is still a duplicate (the
    /// recovery once rebuilt producer state from the tail segment only; found by the
    /// simulation, see `seed_1001_*`).
    #[test]
    fn a_recovered_log_knows_the_producers_of_its_sealed_segments() {
        let clock = Rc::new(sim_clock(Instant::now()));
        let disk = MemDisk::new();
        let mut log = opened(&disk, &clock);
        let early = Record {
            epoch: -1,
            id: 1,
            producer_id: 7,
            sequence: 0,
        };
        log.append_leader(1, early).unwrap();
        // Another producer fills segments until the first one is sealed.
        let mut sequence = 0;
        while log.real().segment_count() < 3 {
            let record = Record {
                id: 2 + sequence as u64,
                producer_id: 8,
                sequence,
                ..early
            };
            log.append_leader(1, record).unwrap();
            log.flush();
            sequence += 1;
        }
        log.crash();
        disk.crash();
        log.open(&disk, clock, points());
        log.set_replicated();
        assert_eq!(
            log.append_leader(1, early),
            Err(AppendError::DuplicateSequence { base_offset: 0 })
        );
    }
}
