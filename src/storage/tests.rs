//! PartitionLog tests on real files (glommio, O_DIRECT) in temporary directories.

use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::protocol::record_batch::{
    BatchHeader, BatchInfo, TestBatch, build_batch, validate_batches,
};
use crate::runtime::{block_on, spawn_local};

const EPOCH: i32 = 5;

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 2048,
        index_interval_bytes: 256,
        tail_cache_bytes: 0, // force reads from disk once durable
        ..LogConfig::default()
    }
}

/// The batch the log should hold at `base` (patched base offset and leader epoch).
fn expected_batch(base: i64, n: usize, value_len: usize, ts: i64) -> Bytes {
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

fn append_batch(
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

fn idem_batch(pid: i64, epoch: i16, seq: i32, n: usize) -> (BytesMut, Vec<BatchInfo>) {
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

fn concat(r: &ReadBatches) -> Vec<u8> {
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
        for c in &r.chunks {
            let h = BatchHeader::parse(c).unwrap();
            assert_eq!(h.base_offset(), next);
            assert_eq!(h.total_len(), Some(c.len()));
            next = h.last_offset() + 1;
        }
        assert!(r.total_len <= 1500 && r.chunks.len() > 1);
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
        assert_eq!(r.chunks.len(), 3); // batches 0..3, 3..6, 6..9 (6 < 7)
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
        assert_eq!(r.chunks.len(), 1);
        assert_eq!(concat(&r), expected_batch(1, 1, big, 0).to_vec());
        let r = log.read(0, 100, 3).await.unwrap();
        assert_eq!(r.chunks.len(), 1); // the second batch would exceed max_bytes
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
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(whole - 7).unwrap();
        drop(f);
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
            BatchHeader::parse(&r.chunks[0]).unwrap().base_offset(),
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
