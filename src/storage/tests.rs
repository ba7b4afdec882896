//! PartitionLog tests on real files (the runtime's DMA files, O_DIRECT) in temporary directories.

use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::protocol::record_batch::{
    BatchHeader, BatchInfo, TestBatch, build_batch, scan_batches, validate_batches,
};
use crate::runtime::{block_on, spawn_local};

const EPOCH: i32 = 5;

pub(super) fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 2048,
        index_interval_bytes: 256,
        tail_cache_bytes: 0, // force reads from disk once durable
        ..LogConfig::default()
    }
}

/// The batch the log should hold at `base` (patched base offset and leader epoch).
pub(super) fn expected_batch(base: i64, n: usize, value_len: usize, ts: i64) -> Bytes {
    let value = vec![b'v'; value_len];
    let recs: Vec<(Option<&[u8]>, &[u8])> =
        (0..n).map(|_| (Some(&b"key"[..]), &value[..])).collect();
    build_batch(&TestBatch {
        base_offset: base,
        records: &recs,
        timestamp: ts,
        partition_leader_epoch: EPOCH,
        ..TestBatch::default()
    })
}

pub(super) fn append_batch(
    log: &PartitionLog,
    n: usize,
    value_len: usize,
    ts: i64,
) -> Result<AppendInfo, AppendError> {
    // The producer sends base offset 0; the log patches it.
    let b = expected_batch(0, n, value_len, ts);
    let infos = validate_batches(&b).unwrap();
    log.append(BytesMut::from(&b[..]), &infos, EPOCH)
}

pub(super) fn idem_batch(pid: i64, epoch: i16, seq: i32, n: usize) -> (BytesMut, Vec<BatchInfo>) {
    let recs: Vec<(Option<&[u8]>, &[u8])> = (0..n).map(|_| (None, &b"x"[..])).collect();
    let b = build_batch(&TestBatch {
        records: &recs,
        producer_id: pid,
        producer_epoch: epoch,
        base_sequence: seq,
        ..TestBatch::default()
    });
    let infos = validate_batches(&b).unwrap();
    (BytesMut::from(&b[..]), infos)
}

/// How many batches a read returned (a batch may be in more than one chunk).
pub(super) fn batch_count(r: &ReadBatches) -> usize {
    scan_batches(&r.contiguous(), false).count()
}

pub(super) fn concat(r: &ReadBatches) -> Vec<u8> {
    let v: Vec<u8> = r.chunks.iter().flat_map(|c| c.iter().copied()).collect();
    assert_eq!(v.len(), r.total_len);
    v
}

fn ext_files(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Appends `count` batches of 3 records; returns their base offsets.
async fn fill(log: &PartitionLog, count: usize, value_len: usize) -> Vec<i64> {
    let mut bases = Vec::new();
    for i in 0..count {
        let info = append_batch(log, 3, value_len, 1000 + i as i64).unwrap();
        assert_eq!(info.last_offset, info.base_offset + 2);
        bases.push(info.base_offset);
    }
    log.wait_durable(log.log_end_offset()).await.unwrap();
    bases
}

async fn check_all(log: &PartitionLog, bases: &[i64], value_len: usize) {
    let hw = log.high_watermark();
    for (i, &base) in bases.iter().enumerate() {
        let want = expected_batch(base, 3, value_len, 1000 + i as i64);
        for off in [base, base + 1, base + 2] {
            let r = log.read(off, 1, hw).await.unwrap();
            assert_eq!(concat(&r), want.to_vec(), "offset {off}");
        }
    }
}

#[test]
fn append_and_read_across_segments() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        assert_eq!(
            (
                log.log_start_offset(),
                log.log_end_offset(),
                log.high_watermark()
            ),
            (0, 0, 0)
        );
        let bases = fill(&log, 40, 100).await;
        assert_eq!(log.log_end_offset(), 120);
        assert_eq!(log.high_watermark(), 120);
        assert!(log.segment_count() > 5, "segments: {}", log.segment_count());
        check_all(&log, &bases, 100).await;
        // A big read returns contiguous whole batches within max_bytes.
        let r = log.read(0, 1500, 120).await.unwrap();
        let mut next = 0;
        for b in scan_batches(&r.contiguous(), true) {
            assert_eq!(b.header.base_offset(), next);
            next = b.header.last_offset() + 1;
        }
        assert!(r.total_len <= 1500 && batch_count(&r) > 1);
        // Bounds.
        assert!(log.read(120, 100, 120).await.unwrap().is_empty());
        assert!(log.read(3, 100, 3).await.unwrap().is_empty());
        assert!(matches!(
            log.read(121, 100, 200).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert!(matches!(
            log.read(-1, 100, 200).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        // Max offset stops at a batch boundary.
        let r = log.read(0, 1 << 20, 7).await.unwrap();
        assert_eq!(batch_count(&r), 3); // batches 0..3, 3..6, 6..9 (6 < 7)
        log.close().await.unwrap();
        assert_eq!(append_batch(&log, 1, 1, 0), Err(AppendError::Closed));

        // Reopen: indexes of sealed segments are loaded, the tail is scanned.
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), 120);
        check_all(&log, &bases, 100).await;
        let info = append_batch(&log, 3, 100, 2000).unwrap();
        assert_eq!(info.base_offset, 120);
        log.close().await.unwrap();
    });
}

#[test]
fn tail_cache_serves_recent_reads() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            tail_cache_bytes: 1 << 20,
            ..small_config()
        };
        let log = PartitionLog::open(tmp.path(), cfg).await.unwrap();
        // Readable from the cache up to LEO even before it is durable (followers).
        append_batch(&log, 3, 10, 1).unwrap();
        let r = log.read(1, 100, log.log_end_offset()).await.unwrap();
        assert_eq!(concat(&r), expected_batch(0, 3, 10, 1).to_vec());
        assert!(log.tail_cache_bytes() > 0);
        // The same bytes are what the disk returns later.
        let bases = fill(&log, 10, 50).await;
        log.set_config(small_config()); // budget 0: everything durable is evicted next flush
        append_batch(&log, 3, 50, 1010).unwrap();
        log.wait_durable(log.log_end_offset()).await.unwrap();
        assert_eq!(log.tail_cache_bytes(), 0);
        check_all(&log, &bases, 50).await;
        log.close().await.unwrap();
    });
}

#[test]
fn kip74_oversized_first_batch() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        // Larger than the scan window and than segment.bytes: gets a segment of its own.
        let big = 1_500_000;
        append_batch(&log, 1, 10, 0).unwrap();
        append_batch(&log, 1, big, 0).unwrap();
        append_batch(&log, 1, 10, 0).unwrap();
        log.wait_durable(3).await.unwrap();
        let r = log.read(1, 100, 3).await.unwrap();
        assert_eq!(batch_count(&r), 1);
        assert_eq!(concat(&r), expected_batch(1, 1, big, 0).to_vec());
        let r = log.read(0, 100, 3).await.unwrap();
        assert_eq!(batch_count(&r), 1); // the second batch would exceed max_bytes
        log.close().await.unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), 3);
        assert!(log.read(1, 0, 3).await.unwrap().total_len > big);
    });
}

#[test]
fn group_commit() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            segment_bytes: 1 << 30,
            ..small_config()
        };
        let log = PartitionLog::open(tmp.path(), cfg).await.unwrap();
        let n = 200;
        let waiters: Vec<_> = (0..n)
            .map(|_| {
                let info = append_batch(&log, 1, 20, 0).unwrap();
                let log = log.clone();
                spawn_local(async move { log.wait_durable(info.last_offset + 1).await })
            })
            .collect();
        log.wait_durable(n as i64).await.unwrap();
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(log.high_watermark(), n as i64);
        let syncs = log.sync_count();
        assert!(
            (1..10).contains(&syncs),
            "fdatasyncs: {syncs} for {n} appends"
        );
    });
}

/// Removes the clean-shutdown marker and the recovery point: the log's data counts as
/// written but never synced, so recovery may cut it.
fn as_if_never_synced(dir: &Path) {
    for name in [
        checkpoint::CLEAN_SHUTDOWN_FILE,
        checkpoint::RECOVERY_POINT_FILE,
    ] {
        std::fs::remove_file(dir.join(name)).unwrap();
    }
}

#[test]
fn recovery_truncates_torn_tail() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            segment_bytes: 1 << 20,
            ..small_config()
        };
        let log = PartitionLog::open(tmp.path(), cfg.clone()).await.unwrap();
        let bases = fill(&log, 10, 100).await;
        log.close().await.unwrap();
        let seg = ext_files(tmp.path(), "log").pop().unwrap();
        let whole = std::fs::metadata(&seg).unwrap().len();

        // Garbage after the last batch.
        let mut data = std::fs::read(&seg).unwrap();
        data.extend_from_slice(&[0xAB; 300]);
        std::fs::write(&seg, &data).unwrap();
        let log = PartitionLog::open(tmp.path(), cfg.clone()).await.unwrap();
        assert_eq!(log.log_end_offset(), 30);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), whole);
        check_all(&log, &bases, 100).await;
        log.close().await.unwrap();

        // Cut mid-batch: the last batch is lost, appends continue after the one before.
        // (After a clean shutdown this would be corruption: see recovery_tests.)
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(whole - 7).unwrap();
        drop(f);
        as_if_never_synced(tmp.path());
        let log = PartitionLog::open(tmp.path(), cfg.clone()).await.unwrap();
        assert_eq!(log.log_end_offset(), 27);
        assert_eq!(log.high_watermark(), 27);
        check_all(&log, &bases[..9], 100).await;
        let mut bases = bases[..9].to_vec();
        for i in 9..12 {
            let info = append_batch(&log, 3, 100, 1000 + i).unwrap();
            bases.push(info.base_offset);
        }
        assert_eq!(bases[9], 27);
        log.wait_durable(36).await.unwrap();
        check_all(&log, &bases, 100).await;
        log.close().await.unwrap();

        // Corrupt a byte inside the last batch: CRC check drops it.
        let mut data = std::fs::read(&seg).unwrap();
        let n = data.len();
        data[n - 3] ^= 0xFF;
        std::fs::write(&seg, &data).unwrap();
        as_if_never_synced(tmp.path());
        let log = PartitionLog::open(tmp.path(), cfg).await.unwrap();
        assert_eq!(log.log_end_offset(), 33);
        check_all(&log, &bases[..11], 100).await;
    });
}

#[test]
fn recovery_without_index_files() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        let bases = fill(&log, 30, 100).await;
        let segs = log.segment_count();
        log.close().await.unwrap();
        assert_eq!(ext_files(tmp.path(), "index").len(), segs);
        for p in ext_files(tmp.path(), "index")
            .into_iter()
            .chain(ext_files(tmp.path(), "timeindex"))
        {
            std::fs::remove_file(p).unwrap();
        }
        // Also garble one index file of a sealed segment.
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), 90);
        assert_eq!(log.segment_count(), segs);
        check_all(&log, &bases, 100).await;
        assert_eq!(
            log.offset_for_timestamp(1020).await.unwrap(),
            Some((60, 1020))
        );
        log.close().await.unwrap();
        let idx = ext_files(tmp.path(), "index");
        std::fs::write(&idx[1], b"garbage").unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        check_all(&log, &bases, 100).await;
    });
}

#[test]
fn offset_for_timestamp() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        assert_eq!(log.offset_for_timestamp(0).await.unwrap(), None);
        fill(&log, 30, 100).await; // batch i at offset 3i with timestamp 1000 + i
        assert_eq!(log.offset_for_timestamp(0).await.unwrap(), Some((0, 1000)));
        assert_eq!(
            log.offset_for_timestamp(1000).await.unwrap(),
            Some((0, 1000))
        );
        assert_eq!(
            log.offset_for_timestamp(1001).await.unwrap(),
            Some((3, 1001))
        );
        assert_eq!(
            log.offset_for_timestamp(1017).await.unwrap(),
            Some((51, 1017))
        );
        assert_eq!(
            log.offset_for_timestamp(1029).await.unwrap(),
            Some((87, 1029))
        );
        assert_eq!(log.offset_for_timestamp(1030).await.unwrap(), None);
    });
}

/// Appends a batch whose records carry their own timestamps.
fn append_stamped(log: &PartitionLog, stamps: &[i64]) -> AppendInfo {
    let recs: Vec<(Option<&[u8]>, &[u8])> = stamps.iter().map(|_| (None, &b"v"[..])).collect();
    let b = build_batch(&TestBatch {
        records: &recs,
        record_timestamps: stamps,
        partition_leader_epoch: EPOCH,
        ..TestBatch::default()
    });
    let infos = validate_batches(&b).unwrap();
    log.append(BytesMut::from(&b[..]), &infos, EPOCH).unwrap()
}

#[test]
fn offset_for_timestamp_finds_the_record() {
    const T0: i64 = 1_700_000_000_000;
    const T1: i64 = T0 + 10;
    async fn check(log: &PartitionLog) {
        let at = |ts| log.offset_for_timestamp(ts);
        assert_eq!(at(T0 - 5).await.unwrap(), Some((0, T0)));
        assert_eq!(at(T0 + 1).await.unwrap(), Some((1, T0 + 1)));
        assert_eq!(at(T0 + 2).await.unwrap(), Some((2, T0 + 2)));
        assert_eq!(at(T0 + 3).await.unwrap(), Some((3, T1)));
        assert_eq!(at(T1).await.unwrap(), Some((3, T1)));
        assert_eq!(at(T1 + 1).await.unwrap(), Some((4, T1 + 1)));
        assert_eq!(at(T1 + 2).await.unwrap(), None);
    }
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            tail_cache_bytes: 1 << 20,
            ..small_config()
        };
        let log = PartitionLog::open(tmp.path(), cfg).await.unwrap();
        assert_eq!(append_stamped(&log, &[T0, T0 + 1, T0 + 2]).base_offset, 0);
        assert_eq!(append_stamped(&log, &[T1, T1 + 1]).base_offset, 3);
        log.wait_durable(5).await.unwrap();
        assert!(log.tail_cache_bytes() > 0);
        check(&log).await; // from the tail cache
        log.close().await.unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        assert_eq!(log.tail_cache_bytes(), 0);
        check(&log).await; // from disk
        log.close().await.unwrap();
    });
}

#[test]
fn retention_by_bytes_and_time() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        fill(&log, 40, 100).await;
        let segs = log.segment_count();
        // Nothing to do under the default config (timestamps 1000.. are old, but the
        // default retention.ms is relative to `now`, which we pass small).
        assert_eq!(log.enforce_retention(2000).await.unwrap(), 0);

        // Size: keep about 4 KiB.
        log.set_config(LogConfig {
            retention_bytes: 4096,
            retention_ms: -1,
            ..small_config()
        });
        let deleted = log.enforce_retention(now_ms()).await.unwrap();
        assert!(deleted > 0 && log.segment_count() == segs - deleted);
        let start = log.log_start_offset();
        assert!(start > 0);
        assert_eq!(ext_files(tmp.path(), "log").len(), segs - deleted);
        assert!(matches!(
            log.read(start - 1, 100, 200).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        let r = log.read(start, 1, log.high_watermark()).await.unwrap();
        assert_eq!(
            BatchHeader::parse(&r.contiguous()).unwrap().base_offset(),
            start
        );
        assert_eq!(
            append_batch(&log, 1, 1, 5000).unwrap().log_start_offset,
            start
        );

        // Time: everything older than now - 1s; the active segment stays.
        log.set_config(LogConfig {
            retention_ms: 1000,
            ..small_config()
        });
        log.wait_durable(log.log_end_offset()).await.unwrap();
        let deleted = log.enforce_retention(now_ms()).await.unwrap();
        assert!(deleted > 0);
        assert_eq!(log.segment_count(), 1);
        let start = log.log_start_offset();
        log.close().await.unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        assert_eq!(log.log_start_offset(), start);
    });
}

#[test]
fn time_based_roll() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            segment_bytes: 1 << 20,
            segment_ms: 60_000,
            ..small_config()
        };
        let log = PartitionLog::open(tmp.path(), cfg).await.unwrap();
        fill(&log, 3, 10).await;
        assert_eq!(log.enforce_retention(now_ms()).await.unwrap(), 0);
        assert_eq!(log.segment_count(), 1);
        assert_eq!(log.enforce_retention(now_ms() + 120_000).await.unwrap(), 0);
        assert_eq!(log.segment_count(), 2);
        let info = append_batch(&log, 1, 10, 0).unwrap();
        log.wait_durable(info.last_offset + 1).await.unwrap();
        assert_eq!(ext_files(tmp.path(), "log").len(), 2);
        assert!(!log.read(9, 100, 10).await.unwrap().is_empty());
    });
}

#[test]
fn idempotent_producer() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        let (b, i) = idem_batch(7, 0, 0, 3);
        assert_eq!(log.append(b, &i, EPOCH).unwrap().base_offset, 0);
        let (b, i) = idem_batch(7, 0, 3, 2);
        assert_eq!(log.append(b, &i, EPOCH).unwrap().base_offset, 3);
        let (b, i) = idem_batch(7, 0, 0, 3);
        assert_eq!(
            log.append(b, &i, EPOCH),
            Err(AppendError::DuplicateSequence { base_offset: 0 })
        );
        let (b, i) = idem_batch(7, 0, 9, 1);
        assert_eq!(
            log.append(b, &i, EPOCH),
            Err(AppendError::OutOfOrderSequence)
        );
        assert_eq!(log.log_end_offset(), 5);
        // All or nothing: a good batch followed by an out-of-order one in one append.
        let (mut b, mut i) = idem_batch(7, 0, 5, 1);
        let (b2, i2) = idem_batch(7, 0, 8, 1);
        let shift = b.len();
        b.extend_from_slice(&b2);
        i.extend(i2.into_iter().map(|mut x| {
            x.offset_in_buf += shift;
            x
        }));
        assert_eq!(
            log.append(b, &i, EPOCH),
            Err(AppendError::OutOfOrderSequence)
        );
        assert_eq!(log.log_end_offset(), 5);
        // Fenced epoch.
        let (b, i) = idem_batch(7, 1, 0, 1);
        log.append(b, &i, EPOCH).unwrap();
        let (b, i) = idem_batch(7, 0, 5, 1);
        assert_eq!(
            log.append(b, &i, EPOCH),
            Err(AppendError::InvalidProducerEpoch)
        );
        // Bad infos never panic.
        let (b, mut i) = idem_batch(8, 0, 0, 1);
        i[0].len += 1;
        assert_eq!(log.append(b, &i, EPOCH), Err(AppendError::InvalidBatch));
        log.close().await.unwrap();

        // Producer state is rebuilt at recovery: a retry is still a duplicate.
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        let (b, i) = idem_batch(7, 1, 0, 1);
        assert_eq!(
            log.append(b, &i, EPOCH),
            Err(AppendError::DuplicateSequence { base_offset: 5 })
        );
        let (b, i) = idem_batch(7, 1, 1, 1);
        assert_eq!(log.append(b, &i, EPOCH).unwrap().base_offset, 6);
    });
}

#[test]
fn wait_for_data_wakes_on_durable_append() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        // Times out when nothing arrives.
        let t0 = Instant::now();
        log.wait_for_data(0, t0 + Duration::from_millis(50)).await;
        assert!(t0.elapsed() >= Duration::from_millis(50));
        assert_eq!(log.high_watermark(), 0);

        let waiter = {
            let log = log.clone();
            spawn_local(async move {
                let t = Instant::now();
                log.wait_for_data(0, t + Duration::from_secs(20)).await;
                (t.elapsed(), log.high_watermark())
            })
        };
        crate::runtime::delay(Duration::from_millis(20)).await;
        append_batch(&log, 2, 10, 0).unwrap();
        let (elapsed, hw) = waiter.await;
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
        assert_eq!(hw, 2);
        // Already satisfied: returns at once.
        log.wait_for_data(1, Instant::now() + Duration::from_secs(20))
            .await;
    });
}

#[test]
fn remove_deletes_directory() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("topic-0");
        let log = PartitionLog::open(&dir, small_config()).await.unwrap();
        fill(&log, 3, 10).await;
        let log: Rc<PartitionLog> = log;
        log.remove().await.unwrap();
        assert!(!dir.exists());
    });
}

#[test]
fn reopen_after_crash_without_close() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            tail_cache_bytes: 1 << 20,
            ..small_config()
        };
        let log = PartitionLog::open(tmp.path(), cfg.clone()).await.unwrap();
        let bases = fill(&log, 25, 100).await;
        // Served from the cache and from disk alike.
        assert_eq!(
            log.offset_for_timestamp(1020).await.unwrap(),
            Some((60, 1020))
        );
        // No close: the active segment still has O_DIRECT zero padding on disk and its
        // indexes were never written. A second open must see the durable data only.
        let again = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        assert_eq!(again.log_end_offset(), 75);
        check_all(&again, &bases, 100).await;
        assert_eq!(
            again.offset_for_timestamp(1020).await.unwrap(),
            Some((60, 1020))
        );
        let info = append_batch(&again, 3, 100, 1025).unwrap();
        assert_eq!(info.base_offset, 75);
        again.wait_durable(78).await.unwrap();
        let mut bases = bases;
        bases.push(75);
        check_all(&again, &bases, 100).await;
        drop(log);
    });
}

#[test]
fn large_group_commit_spans_several_dma_requests() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            segment_bytes: 1 << 30,
            ..small_config()
        };
        let log = PartitionLog::open(tmp.path(), cfg.clone()).await.unwrap();
        let mut bases = Vec::new();
        for i in 0..40 {
            bases.push(append_batch(&log, 3, 33_333, 1000 + i).unwrap().base_offset);
        }
        log.wait_durable(120).await.unwrap(); // ~4 MB in one flush
        check_all(&log, &bases, 33_333).await;
        log.close().await.unwrap();
        let log = PartitionLog::open(tmp.path(), cfg).await.unwrap();
        assert_eq!(log.log_end_offset(), 120);
        check_all(&log, &bases, 33_333).await;
    });
}

// ---- Replication support -------------------------------------------------------------

/// A leader append of `n` records of `value_len` bytes in leader epoch `epoch`.
pub(super) fn append_in_epoch(
    log: &PartitionLog,
    n: usize,
    value_len: usize,
    epoch: i32,
) -> AppendInfo {
    let b = expected_batch(0, n, value_len, 7);
    let infos = validate_batches(&b).unwrap();
    log.append(BytesMut::from(&b[..]), &infos, epoch).unwrap()
}

/// A batch as a leader stored it (base offset and leader epoch set).
fn leader_batch(base: i64, n: usize, epoch: i32) -> Bytes {
    let recs: Vec<(Option<&[u8]>, &[u8])> = (0..n).map(|_| (None, &b"replica"[..])).collect();
    build_batch(&TestBatch {
        base_offset: base,
        records: &recs,
        timestamp: 3000,
        partition_leader_epoch: epoch,
        ..TestBatch::default()
    })
}

fn replicate(log: &PartitionLog, b: &[u8]) -> Result<AppendInfo, ReplicaAppendError> {
    let infos = validate_batches(b).unwrap();
    log.append_replicated(BytesMut::from(b), &infos)
}

/// Base offsets of the segment files, from their names.
fn segment_bases(dir: &Path) -> Vec<i64> {
    ext_files(dir, "log")
        .iter()
        .map(|p| p.file_stem().unwrap().to_str().unwrap().parse().unwrap())
        .collect()
}

/// Every batch of the log below its end, by base offset and leader epoch.
async fn batch_list(log: &PartitionLog) -> Vec<(i64, i32)> {
    let r = log
        .read(log.log_start_offset(), usize::MAX, log.log_end_offset())
        .await
        .unwrap();
    scan_batches(&r.contiguous(), true)
        .map(|b| {
            (
                b.header.base_offset(),
                b.header.partition_leader_epoch.get(),
            )
        })
        .collect()
}

#[test]
fn high_watermark_modes() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        assert!(log.hw_follows_durable_end());
        log.set_hw_follows_durable_end(false);
        assert!(!log.hw_follows_durable_end());
        fill(&log, 3, 10).await; // offsets 0..9
        assert_eq!((log.durable_end(), log.high_watermark()), (9, 0));
        // Consumers read up to the HW, followers up to the log end.
        assert!(
            log.read(0, 1 << 20, log.high_watermark())
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(batch_count(&log.read(0, 1 << 20, 9).await.unwrap()), 3);
        let t0 = Instant::now();
        log.wait_for_data(0, t0 + Duration::from_millis(30)).await;
        assert!(t0.elapsed() >= Duration::from_millis(30));

        // wait_for_data wakes on set_high_watermark.
        let waiter = {
            let log = log.clone();
            spawn_local(async move {
                let t = Instant::now();
                log.wait_for_data(2, t + Duration::from_secs(20)).await;
                (t.elapsed(), log.high_watermark())
            })
        };
        crate::runtime::delay(Duration::from_millis(20)).await;
        log.set_high_watermark(6);
        let (elapsed, hw) = waiter.await;
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
        assert_eq!(hw, 6);
        assert_eq!(batch_count(&log.read(0, 1 << 20, hw).await.unwrap()), 2);
        log.set_high_watermark(3); // monotonic
        assert_eq!(log.high_watermark(), 6);
        log.set_high_watermark(100); // clamped to the durable end, remembered
        assert_eq!(log.high_watermark(), 9);

        // wait_for_appended wakes on the append (the follower's long poll); the HW follows
        // the flush up to the requested value.
        let t0 = Instant::now();
        log.wait_for_appended(9, t0 + Duration::from_millis(30))
            .await;
        assert!(t0.elapsed() >= Duration::from_millis(30));
        let waiter = {
            let log = log.clone();
            spawn_local(async move {
                let t = Instant::now();
                log.wait_for_appended(9, t + Duration::from_secs(20)).await;
                (t.elapsed(), log.log_end_offset())
            })
        };
        crate::runtime::delay(Duration::from_millis(20)).await;
        append_batch(&log, 3, 10, 0).unwrap();
        let (elapsed, end) = waiter.await;
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
        assert_eq!(end, 12);
        log.wait_durable(12).await.unwrap();
        assert_eq!(log.high_watermark(), 12);

        // Still below the requested 100: flushes keep moving the HW up to it.
        append_batch(&log, 3, 10, 0).unwrap();
        log.wait_durable(15).await.unwrap();
        assert_eq!(log.high_watermark(), 15);
        log.set_hw_follows_durable_end(true);
        assert_eq!(log.high_watermark(), 15);
        append_batch(&log, 3, 10, 0).unwrap();
        log.wait_durable(18).await.unwrap();
        assert_eq!(log.high_watermark(), 18);
        log.close().await.unwrap();
    });
}

#[test]
fn high_watermark_checkpoint() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        log.set_hw_follows_durable_end(false);
        fill(&log, 10, 10).await;
        log.set_high_watermark(15);
        log.close().await.unwrap();

        // Single-replica mode at open: HW = recovered end. Replicated: the checkpoint.
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        assert_eq!(log.high_watermark(), 30);
        log.set_hw_follows_durable_end(false);
        assert_eq!(log.high_watermark(), 15);
        drop(log);

        // Without a checkpoint, a replicated log starts at its log start offset.
        std::fs::remove_file(tmp.path().join("high-watermark")).unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        log.set_hw_follows_durable_end(false);
        assert_eq!(log.high_watermark(), 0);
        // Only right after open: later switches keep the HW.
        log.set_hw_follows_durable_end(true);
        assert_eq!(log.high_watermark(), 30);
        log.set_hw_follows_durable_end(false);
        assert_eq!(log.high_watermark(), 30);
        log.close().await.unwrap();
    });
}

#[test]
fn follower_append_keeps_batches() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let leader = PartitionLog::open(&tmp.path().join("leader"), small_config())
            .await
            .unwrap();
        let follower = PartitionLog::open(&tmp.path().join("follower"), small_config())
            .await
            .unwrap();
        for epoch in [0, 0, 1, 1, 3] {
            append_in_epoch(&leader, 3, 200, epoch);
        }
        let (b, i) = idem_batch(7, 0, 0, 2);
        leader.append(b, &i, 3).unwrap();
        let (b, i) = idem_batch(7, 0, 2, 1);
        leader.append(b, &i, 3).unwrap();
        leader.wait_durable(18).await.unwrap();

        // Replicate in fetch-sized pieces (whole batches).
        while follower.log_end_offset() < leader.log_end_offset() {
            let r = leader
                .read(follower.log_end_offset(), 700, leader.log_end_offset())
                .await
                .unwrap();
            let mut buf = Vec::new();
            for c in &r.chunks {
                buf.extend_from_slice(c);
            }
            let info = replicate(&follower, &buf).unwrap();
            assert_eq!(info.last_offset + 1, follower.log_end_offset());
        }
        follower.wait_durable(18).await.unwrap();
        assert!(follower.segment_count() > 1);
        let all = |log: Rc<PartitionLog>| async move {
            concat(&log.read(0, usize::MAX, 18).await.unwrap())
        };
        assert_eq!(all(follower.clone()).await, all(leader.clone()).await);
        assert_eq!(follower.epoch_entries(), vec![(0, 0), (1, 6), (3, 12)]);
        assert_eq!(follower.epoch_entries(), leader.epoch_entries());

        // Gaps and overlaps are refused; nothing is appended.
        let leo = follower.log_end_offset();
        assert_eq!(
            replicate(&follower, &leader_batch(leo + 3, 1, 3)),
            Err(ReplicaAppendError::NonContiguous {
                expected: leo,
                got: leo + 3
            })
        );
        assert_eq!(
            replicate(&follower, &leader_batch(leo - 1, 1, 3)),
            Err(ReplicaAppendError::NonContiguous {
                expected: leo,
                got: leo - 1
            })
        );
        let mut two = leader_batch(leo, 2, 3).to_vec();
        two.extend_from_slice(&leader_batch(leo + 3, 1, 3)); // hole at leo + 2
        assert_eq!(
            replicate(&follower, &two),
            Err(ReplicaAppendError::NonContiguous {
                expected: leo + 2,
                got: leo + 3
            })
        );
        assert_eq!(follower.log_end_offset(), leo);

        // Producer state came along: the follower, now leader, deduplicates a retry.
        let (b, i) = idem_batch(7, 0, 2, 1);
        assert_eq!(
            follower.append(b, &i, 4),
            Err(AppendError::DuplicateSequence { base_offset: 17 })
        );
        let (b, i) = idem_batch(7, 0, 3, 1);
        assert_eq!(follower.append(b, &i, 4).unwrap().base_offset, 18);
        assert_eq!(follower.latest_epoch(), Some(4));
        follower.close().await.unwrap();
        leader.close().await.unwrap();
    });
}

#[test]
fn leader_epoch_cache() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        assert_eq!(log.latest_epoch(), None);
        assert_eq!(log.end_offset_for_epoch(0), None);
        for epoch in [0, 0, 1, 1, 3] {
            append_in_epoch(&log, 3, 400, epoch);
        }
        log.wait_durable(15).await.unwrap();
        assert!(log.segment_count() >= 3);
        async fn check(log: &PartitionLog) {
            assert_eq!(log.epoch_entries(), vec![(0, 0), (1, 6), (3, 12)]);
            assert_eq!(log.latest_epoch(), Some(3));
            assert_eq!(log.epoch_start_offset(1), Some(6));
            assert_eq!(log.epoch_start_offset(2), None);
            assert_eq!(log.end_offset_for_epoch(0), Some((0, 6)));
            assert_eq!(log.end_offset_for_epoch(1), Some((1, 12)));
            assert_eq!(log.end_offset_for_epoch(2), Some((1, 12)));
            assert_eq!(log.end_offset_for_epoch(3), Some((3, log.log_end_offset())));
            assert_eq!(log.end_offset_for_epoch(4), None);
            assert_eq!(log.end_offset_for_epoch(-1), None);
        }
        check(&log).await;
        // Crash (no close): the flusher wrote the checkpoint after the data.
        let again = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        check(&again).await;
        drop(again);
        log.close().await.unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        check(&log).await;
        log.close().await.unwrap();
        // Rebuilt from every segment (sealed ones included) without the checkpoint.
        std::fs::remove_file(tmp.path().join("leader-epoch-checkpoint")).unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        check(&log).await;
        assert!(tmp.path().join("leader-epoch-checkpoint").exists());
        // A corrupt checkpoint is rebuilt the same way.
        std::fs::write(tmp.path().join("leader-epoch-checkpoint"), b"junk").unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        check(&log).await;

        // Below the first epoch (history gone): Kafka answers (requested, first start).
        let tmp2 = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(tmp2.path(), small_config())
            .await
            .unwrap();
        append_in_epoch(&log, 3, 10, 2);
        append_in_epoch(&log, 3, 10, 5);
        assert_eq!(log.end_offset_for_epoch(1), Some((1, 0)));
        assert_eq!(log.end_offset_for_epoch(4), Some((2, 3)));
        assert_eq!(log.end_offset_for_epoch(5), Some((5, 6)));
        log.close().await.unwrap();
    });
}

#[test]
fn truncate_to_inside_active_segment_and_batch() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        let bases = fill(&log, 40, 100).await;
        let segs = log.segment_count();
        let active_base = *segment_bases(tmp.path()).last().unwrap();
        let cut = *bases.iter().find(|&&b| b > active_base).unwrap();
        // Inside a batch: rounds down to its start.
        assert_eq!(log.truncate_to(cut + 1).await.unwrap(), cut);
        assert_eq!(log.log_end_offset(), cut);
        assert_eq!(log.durable_end(), cut);
        assert_eq!(log.high_watermark(), cut);
        assert_eq!(log.segment_count(), segs);
        let kept = bases.iter().filter(|&&b| b < cut).count();
        check_all(&log, &bases[..kept], 100).await;
        assert!(log.read(cut, 100, 1000).await.unwrap().is_empty());
        assert!(matches!(
            log.read(cut + 1, 100, 1000).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        // Beyond the end: nothing to do.
        assert_eq!(log.truncate_to(cut + 50).await.unwrap(), cut);
        // Appends continue at the new end, with the same bytes as before.
        let mut bases = bases[..kept].to_vec();
        for i in kept..kept + 3 {
            let info = append_batch(&log, 3, 100, 1000 + i as i64).unwrap();
            bases.push(info.base_offset);
        }
        assert_eq!(bases[kept], cut);
        log.wait_durable(log.log_end_offset()).await.unwrap();
        check_all(&log, &bases, 100).await;
        // Truncate again (appends are refused meanwhile), then "crash": a new open sees
        // exactly the truncated log.
        let mut truncation = Box::pin(log.truncate_to(cut + 3));
        if futures::poll!(truncation.as_mut()).is_pending() {
            assert_eq!(append_batch(&log, 1, 1, 0), Err(AppendError::Closed));
        }
        assert_eq!(truncation.await.unwrap(), cut + 3);
        let again = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        assert_eq!(again.log_end_offset(), cut + 3);
        check_all(&again, &bases[..kept + 1], 100).await;
        drop(again);
        log.close().await.unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), cut + 3);
        check_all(&log, &bases[..kept + 1], 100).await;
        assert_eq!(
            log.offset_for_timestamp(1000 + kept as i64).await.unwrap(),
            Some((cut, 1000 + kept as i64))
        );
        assert_eq!(
            log.offset_for_timestamp(1001 + kept as i64).await.unwrap(),
            None
        );
    });
}

#[test]
fn truncate_to_segment_boundary_and_below_segments() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            tail_cache_bytes: 1 << 20, // the cache must be truncated too
            ..small_config()
        };
        let log = PartitionLog::open(tmp.path(), cfg.clone()).await.unwrap();
        let bases = fill(&log, 40, 100).await;
        let seg_bases = segment_bases(tmp.path());
        assert!(seg_bases.len() > 5);

        // At a segment boundary: that segment is emptied, later ones deleted.
        let b = seg_bases[4];
        assert_eq!(log.truncate_to(b).await.unwrap(), b);
        assert_eq!(log.segment_count(), 5);
        assert_eq!(segment_bases(tmp.path()), seg_bases[..5].to_vec());
        let kept = bases.iter().filter(|&&x| x < b).count();
        check_all(&log, &bases[..kept], 100).await;
        assert_eq!(
            batch_count(&log.read(0, usize::MAX, 1000).await.unwrap()),
            kept
        );
        let again = PartitionLog::open(tmp.path(), cfg.clone()).await.unwrap();
        assert_eq!(again.log_end_offset(), b);
        drop(again);

        // Below several segments, in the middle of the second one.
        let cut = *bases.iter().find(|&&x| x > seg_bases[1]).unwrap();
        assert_eq!(log.truncate_to(cut).await.unwrap(), cut);
        assert_eq!(log.segment_count(), 2);
        assert_eq!(segment_bases(tmp.path()), seg_bases[..2].to_vec());
        let kept = bases.iter().filter(|&&x| x < cut).count();
        check_all(&log, &bases[..kept], 100).await;
        assert_eq!(
            batch_count(&log.read(0, usize::MAX, 1000).await.unwrap()),
            kept
        );
        // The (formerly sealed) segment is active again: appends go on in it.
        let info = append_batch(&log, 3, 100, 1000 + kept as i64).unwrap();
        assert_eq!(info.base_offset, cut);
        log.wait_durable(cut + 3).await.unwrap();
        let mut bases = bases[..kept].to_vec();
        bases.push(cut);
        check_all(&log, &bases, 100).await;
        // Crash: the truncated segment's stale indexes must not cut it short.
        let again = PartitionLog::open(tmp.path(), cfg.clone()).await.unwrap();
        assert_eq!(again.log_end_offset(), cut + 3);
        check_all(&again, &bases, 100).await;
        drop(again);
        log.close().await.unwrap();
        let log = PartitionLog::open(tmp.path(), cfg).await.unwrap();
        assert_eq!(log.log_end_offset(), cut + 3);
        check_all(&log, &bases, 100).await;
        // Down to the log start: an empty log that still starts there.
        assert_eq!(log.truncate_to(0).await.unwrap(), 0);
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
        assert_eq!(log.segment_count(), 1);
        assert_eq!(append_batch(&log, 1, 1, 0).unwrap().base_offset, 0);
        log.close().await.unwrap();
    });
}

#[test]
fn truncate_to_epochs_and_producers() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        for epoch in [0, 0, 1, 1, 3] {
            append_in_epoch(&log, 3, 200, epoch);
        }
        let (b, i) = idem_batch(7, 0, 0, 2);
        assert_eq!(log.append(b, &i, 3).unwrap().base_offset, 15);
        let (b, i) = idem_batch(7, 0, 2, 1);
        assert_eq!(log.append(b, &i, 3).unwrap().base_offset, 17);
        let (b, i) = idem_batch(9, 0, 0, 1);
        assert_eq!(log.append(b, &i, 4).unwrap().base_offset, 18);
        log.wait_durable(19).await.unwrap();
        assert_eq!(log.latest_epoch(), Some(4));

        // Drops the epoch-4 entry and producer 9; producer 7 keeps its first batch.
        assert_eq!(log.truncate_to(17).await.unwrap(), 17);
        assert_eq!(log.epoch_entries(), vec![(0, 0), (1, 6), (3, 12)]);
        assert_eq!(log.end_offset_for_epoch(3), Some((3, 17)));
        // Sequence 2 is no longer in the log: not a duplicate any more.
        let (b, i) = idem_batch(7, 0, 2, 1);
        assert_eq!(log.append(b, &i, 5).unwrap().base_offset, 17);
        let (b, i) = idem_batch(7, 0, 0, 2);
        assert_eq!(
            log.append(b, &i, 5),
            Err(AppendError::DuplicateSequence { base_offset: 15 })
        );
        log.wait_durable(18).await.unwrap();
        assert_eq!(log.epoch_entries(), vec![(0, 0), (1, 6), (3, 12), (5, 17)]);

        // Inside epoch 1's first batch: epochs 1, 3 and 5 go; persisted before returning.
        assert_eq!(log.truncate_to(7).await.unwrap(), 6);
        assert_eq!(log.epoch_entries(), vec![(0, 0)]);
        assert_eq!(log.end_offset_for_epoch(3), None);
        assert_eq!(log.end_offset_for_epoch(0), Some((0, 6)));
        assert_eq!(batch_list(&log).await, vec![(0, 0), (3, 0)]);
        let again = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        assert_eq!(again.epoch_entries(), vec![(0, 0)]);
        assert_eq!(again.log_end_offset(), 6);
        drop(again);
        // Producer 7's batches are all gone: unknown again, any sequence accepted.
        let (b, i) = idem_batch(7, 0, 3, 1);
        assert_eq!(log.append(b, &i, 6).unwrap().base_offset, 6);
        log.close().await.unwrap();
    });
}

#[test]
fn truncate_fully_and_start_at() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        fill(&log, 20, 100).await;
        let (b, i) = idem_batch(7, 0, 0, 1);
        log.append(b, &i, EPOCH).unwrap();
        log.truncate_fully_and_start_at(500).await.unwrap();
        assert_eq!(
            (
                log.log_start_offset(),
                log.log_end_offset(),
                log.durable_end(),
                log.high_watermark()
            ),
            (500, 500, 500, 500)
        );
        assert_eq!(log.segment_count(), 1);
        assert_eq!(segment_bases(tmp.path()), vec![500]);
        assert_eq!(log.latest_epoch(), None);
        assert!(log.read(500, 100, 1000).await.unwrap().is_empty());
        assert!(matches!(
            log.read(0, 100, 1000).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        // Crash right after: still an empty log at 500.
        let again = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        assert_eq!(
            (again.log_start_offset(), again.log_end_offset()),
            (500, 500)
        );
        drop(again);
        // The follower goes on replicating from there.
        replicate(&log, &leader_batch(500, 3, 7)).unwrap();
        replicate(&log, &leader_batch(503, 2, 8)).unwrap();
        log.wait_durable(505).await.unwrap();
        assert_eq!(log.epoch_entries(), vec![(7, 500), (8, 503)]);
        // Producer state was cleared: producer 7 is unknown.
        let (b, i) = idem_batch(7, 0, 0, 1);
        assert_eq!(log.append(b, &i, 9).unwrap().base_offset, 505);
        log.close().await.unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (500, 506));
        assert_eq!(log.epoch_entries(), vec![(7, 500), (8, 503), (9, 505)]);
        assert_eq!(batch_list(&log).await, vec![(500, 7), (503, 8), (505, 9)]);
        // truncate_to below the log start is a full truncation (Kafka).
        assert_eq!(log.truncate_to(100).await.unwrap(), 100);
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (100, 100));
        assert_eq!(segment_bases(tmp.path()), vec![100]);
        log.close().await.unwrap();
    });
}

#[test]
fn reopen_drops_the_active_segment_indexes() {
    block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        let bases = fill(&log, 20, 100).await;
        let segs = log.segment_count();
        log.close().await.unwrap();
        assert_eq!(ext_files(tmp.path(), "index").len(), segs);
        let log = PartitionLog::open(tmp.path(), small_config())
            .await
            .unwrap();
        // Kept while nothing is written: the files are as the clean close left them.
        assert_eq!(ext_files(tmp.path(), "index").len(), segs);
        check_all(&log, &bases, 100).await;
        // Dropped before the first write: the active segment grows (or is sealed again by
        // a roll), its old indexes would describe a prefix of it.
        let end = append_batch(&log, 1, 100, 5000).unwrap().last_offset + 1;
        log.wait_durable(end).await.unwrap();
        let active = log.segment_count() - 1;
        assert_eq!(ext_files(tmp.path(), "index").len(), active);
        assert_eq!(ext_files(tmp.path(), "timeindex").len(), active);
        log.close().await.unwrap();
        assert_eq!(ext_files(tmp.path(), "index").len(), log.segment_count());
    });
}
