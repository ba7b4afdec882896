//! Recovery point (the shard's file and the log's own), clean-shutdown marker and
//! corruption below the recovery point, over [`MemDisk`](super::mem_disk::MemDisk) (crashes
//! keep only what was synced) and on real files.

use std::path::{Path, PathBuf};

use super::checkpoint::{self, CLEAN_SHUTDOWN_FILE, RECOVERY_POINT_FILE};
use super::disk::{Disk, OpenMode, write_small_file};
use super::mem_disk::ALIGNMENT;
use super::mem_tests::{DATA_DIR, DIR, Machine, batches, ready};
use super::tests::{append_batch, append_in_epoch, expected_batch, idem_batch, small_config};
use super::*;
use crate::protocol::record_batch::BatchInfo;

/// The producer fields of a test batch, as the log checks them.
fn producer_batch(info: &BatchInfo) -> producer_state::ProducerBatch {
    producer_state::ProducerBatch {
        producer_id: info.producer_id,
        epoch: info.producer_epoch,
        base_sequence: info.base_sequence,
        last_offset_delta: info.last_offset_delta,
    }
}

/// Bytes of one batch of `append_in_epoch(log, 3, 100, _)`.
fn batch_len() -> u64 {
    expected_batch(0, 3, 100, 7).len() as u64
}

fn dir_path(name: &str) -> PathBuf {
    Path::new(DIR).join(name)
}

fn segment(base: i64, ext: &str) -> PathBuf {
    dir_path(&format!("{base:020}.{ext}"))
}

/// The log's own file: (incarnation, recovery point).
fn own_file(m: &Machine) -> (Option<u64>, i64) {
    let file = ready(checkpoint::read_recovery_point(&m.disk, Path::new(DIR)));
    file.map_or((None, 0), |f| (f.incarnation, f.offset))
}

/// What shard 0's file holds for the log's current incarnation.
fn shard_file_entry(m: &Machine) -> Option<i64> {
    let incarnation = own_file(m).0?;
    let points = recovery_points::ShardRecoveryPoints::new(Path::new(DATA_DIR), 0);
    ready(points.get(&m.disk, incarnation))
}

fn shard_file(shard: usize) -> PathBuf {
    Path::new(DATA_DIR).join(recovery_points::file_name(shard))
}

/// Appends `count` batches of 3 records (5 batches fill a segment of `small_config`).
fn fill(log: &PartitionLog, count: usize) {
    for _ in 0..count {
        append_in_epoch(log, 3, 100, 5);
    }
}

/// Flips one byte of a file on the simulated disk, durably.
fn flip_byte(m: &Machine, path: &Path, pos: u64) {
    let file = ready(m.disk.open(path, OpenMode::ReadWrite)).unwrap();
    let size = ready(file.size()).unwrap();
    let start = pos - pos % ALIGNMENT;
    let mut block = ready(file.read_at(start, ALIGNMENT as usize))
        .unwrap()
        .to_vec();
    block[(pos - start) as usize] ^= 0x40;
    let mut buf = file.alloc_buffer(ALIGNMENT as usize);
    buf.as_bytes_mut()[..block.len()].copy_from_slice(&block);
    ready(file.write_at(buf, start)).unwrap();
    ready(file.truncate(size)).unwrap();
    ready(file.fdatasync()).unwrap();
}

fn remove_durably(m: &Machine, path: &Path) {
    m.disk.remove_file(path).unwrap();
    m.disk.sync_dir(Path::new(DIR)).unwrap();
}

/// Every file of the partition directory with its bytes.
fn snapshot(m: &Machine) -> Vec<(String, Vec<u8>)> {
    let mut names = m.disk.list_dir(Path::new(DIR)).unwrap();
    names.sort();
    let contents = |n: &String| m.disk.contents(&dir_path(n)).unwrap();
    names.iter().map(|n| (n.clone(), contents(n))).collect()
}

fn open_error(m: &Machine) -> String {
    match ready(PartitionLog::open_with(
        &m.env(),
        Path::new(DIR),
        small_config(),
    )) {
        Err(StorageError::Corrupt(msg)) => msg,
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("expected Corrupt, the log opened"),
    }
}

/// Asserts that opening fails with Corrupt naming `file` and `offset`, twice, and that no
/// file of the directory changed.
fn assert_corrupt_untouched(m: &Machine, file: &Path, offset: i64) {
    let before = snapshot(m);
    let msg = open_error(m);
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(msg.contains(name), "{msg}");
    assert!(msg.contains(&format!("at offset {offset},")), "{msg}");
    assert_eq!(snapshot(m), before, "every file kept byte for byte");
    assert_eq!(open_error(m), msg, "the same answer every time");
}

#[test]
fn the_shard_file_checkpoints_recovery_points_when_they_move() {
    let m = Machine::new();
    let log = m.open();
    let (incarnation, own) = own_file(&m);
    assert!(
        incarnation.is_some(),
        "a new log gets an incarnation at once"
    );
    assert_eq!((own, shard_file_entry(&m)), (0, None));
    fill(&log, 1);
    m.flush();
    assert_eq!(log.recovery_point(), 3);
    assert_eq!(
        shard_file_entry(&m),
        None,
        "written by the owner's timer only"
    );
    assert!(m.checkpoint());
    assert_eq!(shard_file_entry(&m), Some(3));
    assert!(!m.checkpoint(), "nothing moved: no write");

    fill(&log, 11);
    m.flush();
    assert_eq!(log.segment_count(), 3);
    assert_eq!(shard_file_entry(&m), Some(3), "a roll writes no checkpoint");
    assert!(m.checkpoint());
    assert_eq!(shard_file_entry(&m), Some(36));
    assert_eq!(
        own_file(&m),
        (incarnation, 0),
        "the log's own file is not rewritten"
    );
    m.crash(log);

    let log = m.open();
    assert_eq!(log.recovery_info().recovery_point, 36);
    assert_eq!(log.recovery_point(), 36);
    assert_eq!(log.log_end_offset(), 36);
}

#[test]
fn a_crash_between_checkpoints_scans_from_the_last_one() {
    let m = Machine::new();
    let log = m.open();
    fill(&log, 12);
    m.flush();
    assert!(m.checkpoint());
    fill(&log, 8);
    m.flush();
    assert_eq!((log.recovery_point(), shard_file_entry(&m)), (60, Some(36)));
    m.crash(log);

    let log = m.open();
    let info = log.recovery_info();
    assert_eq!((info.recovery_point, info.segments_scanned), (36, 2));
    assert_eq!(
        batches(&log).len(),
        20,
        "synced data past the checkpoint is kept"
    );
    assert!(m.checkpoint(), "the recovered log's recovery point");
    assert_eq!(shard_file_entry(&m), Some(36));
    m.crash(log);

    // A crash while the shard file's temporary file was written: the file is intact.
    let tmp = shard_file(0).with_extension("shard0.tmp");
    ready(write_small_file(&m.disk, &tmp, b"torn")).unwrap();
    m.disk.sync_dir(Path::new(DATA_DIR)).unwrap();
    assert_eq!(m.open().recovery_info().recovery_point, 36);
}

#[test]
fn a_truncation_is_never_undone_by_an_older_checkpoint() {
    let m = Machine::new();
    let log = m.open();
    fill(&log, 20);
    m.flush();
    assert!(m.checkpoint());
    let (before, _) = own_file(&m);
    // A truncation starts a new incarnation, durably, before it removes data...
    assert_eq!(ready(log.truncate_to(30)).unwrap(), 30);
    let (after, own) = own_file(&m);
    assert!(after.is_some() && after != before);
    assert_eq!((log.recovery_point(), own), (30, 30));
    // ... so the shard file's 60, not rewritten before the crash, names the old one. The
    // data written after the truncation was never synced: it is gone.
    fill(&log, 10);
    m.crash(log);

    let log = m.open();
    assert_eq!(log.recovery_info().recovery_point, 30);
    assert_eq!(log.log_end_offset(), 30);
    assert!(m.checkpoint());
    assert_eq!(shard_file_entry(&m), Some(30));
    ready(log.truncate_fully_and_start_at(3)).unwrap();
    assert_eq!(own_file(&m).1, 3);
    m.crash(log);
    assert_eq!(m.open().log_end_offset(), 3);
}

#[test]
fn a_log_created_again_in_the_same_directory_trusts_no_old_entry() {
    let m = Machine::new();
    let log = m.open();
    fill(&log, 20);
    m.flush();
    assert!(m.checkpoint());
    // The topic is deleted and created again under its name: a new log in the same
    // directory, whose first batches are not synced yet when the machine crashes.
    ready(log.remove()).unwrap();
    let log = m.open();
    fill(&log, 2);
    m.crash(log);

    let log = m.open();
    assert_eq!(log.recovery_info().recovery_point, 0);
    assert_eq!(log.log_end_offset(), 0);
}

#[test]
fn a_truncation_on_another_shard_voids_this_shards_old_entry() {
    let m = Machine::new();
    let log = m.open();
    fill(&log, 20);
    m.flush();
    assert!(m.checkpoint());
    m.kill(log);

    // Restarted with another shard count: shard 1 owns the log, its file knows nothing.
    m.restart_as_shard(1);
    let log = m.open();
    assert_eq!(log.recovery_info().recovery_point, 0);
    fill(&log, 1);
    m.flush();
    assert_eq!(log.recovery_point(), 63);
    // A follower's truncation: the new incarnation's own file says 30.
    assert_eq!(ready(log.truncate_to(30)).unwrap(), 30);
    assert_eq!(own_file(&m).1, 30);
    fill(&log, 10);
    m.crash(log);

    // Back to the first shard count: shard 0's entry (60) is for the old incarnation.
    let log = m.open();
    assert_eq!(log.recovery_info().recovery_point, 30);
    assert_eq!(log.log_end_offset(), 30);
}

#[test]
fn a_damaged_shard_file_is_ignored() {
    let m = Machine::new();
    let log = m.open();
    fill(&log, 20);
    m.flush();
    assert!(m.checkpoint());
    m.crash(log);
    let path = shard_file(0);
    let good = m.disk.contents(&path).unwrap();
    for damaged in [&good[..20], &[0xAB; 64][..]] {
        let mut data = damaged.to_vec();
        data.resize(ALIGNMENT as usize, 0);
        ready(write_small_file(&m.disk, &path, &data)).unwrap();
        let log = m.open();
        let info = log.recovery_info();
        assert_eq!((info.recovery_point, info.segments_scanned), (0, 4));
        assert_eq!(batches(&log).len(), 20);
        m.crash(log);
    }
}

#[test]
fn clean_reopen_does_not_scan_and_removes_the_marker() {
    let m = Machine::new();
    let log = m.open();
    fill(&log, 12);
    m.flush();
    assert!(m.checkpoint());
    ready(log.close()).unwrap();
    assert!(m.disk.exists(&dir_path(CLEAN_SHUTDOWN_FILE)));
    drop(log);

    let log = m.open();
    let info = log.recovery_info();
    assert!(info.clean_shutdown);
    assert_eq!((info.segments_scanned, info.recovery_point), (0, 36));
    assert_eq!(batches(&log).len(), 12);
    assert!(
        m.disk.exists(&dir_path(CLEAN_SHUTDOWN_FILE)),
        "kept while the files are as the close left them"
    );
    fill(&log, 1);
    m.flush();
    assert!(
        !m.disk.exists(&dir_path(CLEAN_SHUTDOWN_FILE)),
        "removed before the first write"
    );
    m.crash(log);

    let log = m.open();
    let info = log.recovery_info();
    assert!(!info.clean_shutdown);
    assert_eq!(info.segments_scanned, 1, "only the active segment");
    assert_eq!(log.log_end_offset(), 39);
}

#[test]
fn unclean_reopen_scans_only_past_the_recovery_point() {
    let m = Machine::new();
    let log = m.open();
    fill(&log, 20);
    m.flush();
    assert!(m.checkpoint());
    let segments = log.segment_count();
    assert_eq!((segments, shard_file_entry(&m)), (4, Some(60)));
    m.crash(log);

    let log = m.open();
    let info = log.recovery_info();
    assert_eq!((info.recovery_point, info.segments_scanned), (60, 1));
    assert_eq!(batches(&log).len(), 20);
    m.crash(log);

    // Without the log's own file (its incarnation) the shard's entry is not trusted:
    // every segment is scanned.
    remove_durably(&m, &dir_path(RECOVERY_POINT_FILE));
    let log = m.open();
    let info = log.recovery_info();
    assert_eq!((info.recovery_point, info.segments_scanned), (0, segments));
    assert_eq!(batches(&log).len(), 20);
}

#[test]
fn corruption_past_the_recovery_point_truncates() {
    let m = Machine::new();
    let log = m.open();
    fill(&log, 12);
    m.flush();
    assert!(m.checkpoint());
    fill(&log, 2);
    m.flush();
    assert_eq!((log.log_end_offset(), shard_file_entry(&m)), (42, Some(36)));
    m.crash(log);

    // The fourth batch of the active segment (offset 39) is past the recovery point.
    flip_byte(&m, &segment(30, "log"), 3 * batch_len() + 30);
    let log = m.open();
    let info = log.recovery_info();
    assert_eq!(log.log_end_offset(), 39);
    // The two batches from offset 39 on, and the O_DIRECT zero padding after them.
    assert!(info.truncated_bytes >= 2 * batch_len(), "{info:?}");
    assert_eq!(batches(&log).len(), 13);
}

#[test]
fn corruption_below_the_recovery_point_fails_open_and_keeps_every_file() {
    let m = Machine::new();
    let log = m.open();
    fill(&log, 20);
    m.flush();
    assert!(m.checkpoint());
    m.crash(log);

    // The case: a header byte of a middle segment, its index deleted.
    let middle = segment(15, "log");
    flip_byte(&m, &middle, 30);
    remove_durably(&m, &segment(15, "index"));
    assert_corrupt_untouched(&m, &middle, 15);
    // The shard keeps the entry of the log it could not open: after another restart
    // the damage is still below the recovery point, not cut away.
    let shard = m.disk.contents(&shard_file(0));
    m.disk.remove_file(&shard_file(0)).unwrap();
    assert!(m.checkpoint());
    assert_eq!(m.disk.contents(&shard_file(0)), shard);
    m.restart_as_shard(0);
    assert_corrupt_untouched(&m, &middle, 15);
}

#[test]
fn below_the_recovery_point_every_kind_of_damage_is_corrupt() {
    let m = Machine::new();
    let log = m.open();
    fill(&log, 12);
    m.flush();
    assert!(m.checkpoint());
    fill(&log, 2);
    m.flush();
    m.crash(log);
    let pristine = snapshot(&m);
    let restore = |m: &Machine| {
        for (name, bytes) in &pristine {
            let padded = bytes.len().next_multiple_of(ALIGNMENT as usize);
            let mut data = bytes.clone();
            data.resize(padded, 0);
            let path = dir_path(name);
            ready(write_small_file(&m.disk, &path, &data)).unwrap();
            let file = ready(m.disk.open(&path, OpenMode::ReadWrite)).unwrap();
            ready(file.truncate(bytes.len() as u64)).unwrap();
            ready(file.fdatasync()).unwrap();
        }
        m.disk.sync_dir(Path::new(DIR)).unwrap();
    };

    // Framing (the magic byte) of a segment whose index is loaded, read because no
    // producer snapshot covers it (a snapshot spares the read, as in Kafka).
    for offset in snapshots(&m) {
        remove_durably(&m, &dir_path(&format!("{offset:020}.snapshot")));
    }
    flip_byte(&m, &segment(15, "log"), batch_len() + 16);
    assert_corrupt_untouched(&m, &segment(15, "log"), 18);
    restore(&m);

    // In the active segment, below the checkpointed recovery point (36): walked header
    // to header, so framing damage (the magic byte) is found, not a CRC mismatch.
    flip_byte(&m, &segment(30, "log"), batch_len() + 16);
    assert_corrupt_untouched(&m, &segment(30, "log"), 33);
    restore(&m);

    // A missing middle segment.
    for ext in ["log", "index", "timeindex"] {
        remove_durably(&m, &segment(15, ext));
    }
    assert_corrupt_untouched(&m, &segment(0, "log"), 15);
    restore(&m);

    // The log ends below the recovery point.
    let file = ready(m.disk.open(&segment(30, "log"), OpenMode::ReadWrite)).unwrap();
    ready(file.truncate(0)).unwrap();
    ready(file.fdatasync()).unwrap();
    assert_corrupt_untouched(&m, &segment(30, "log"), 30);
    restore(&m);
    assert_eq!(batches(&m.open()).len(), 14, "restored: opens again");
}

#[test]
fn torn_checkpoints_are_ignored() {
    let m = Machine::new();
    let log = m.open();
    fill(&log, 20);
    m.flush();
    assert!(m.checkpoint());
    m.crash(log);

    // A crash while the temporary file was written: the checkpoint itself is intact.
    let tmp = dir_path(&format!("{RECOVERY_POINT_FILE}.tmp"));
    ready(write_small_file(&m.disk, &tmp, b"torn")).unwrap();
    m.disk.sync_dir(Path::new(DIR)).unwrap();
    let log = m.open();
    assert_eq!(log.recovery_info().recovery_point, 60);
    m.crash(log);

    // A damaged checkpoint counts as missing (no incarnation): scan everything.
    let file = dir_path(RECOVERY_POINT_FILE);
    ready(write_small_file(&m.disk, &file, &[0xAB; 24])).unwrap();
    let log = m.open();
    let info = log.recovery_info();
    assert_eq!((info.recovery_point, info.segments_scanned), (0, 4));
    assert_eq!(batches(&log).len(), 20);
}

#[test]
fn real_files_clean_close_and_corruption_below_the_recovery_point() {
    crate::runtime::block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let dir = &tmp.path().join("topic-0");
        // A process of the broker: its shard's logs share the shard's recovery-point file.
        let process = || {
            let points = recovery_points::ShardRecoveryPoints::new(tmp.path(), 0);
            LogEnv::production(ShardTailCache::new(usize::MAX), points)
        };
        let env = process();
        let log = PartitionLog::open_with(&env, dir, small_config())
            .await
            .unwrap();
        for i in 0..20 {
            append_batch(&log, 3, 100, 1000 + i).unwrap();
        }
        log.wait_durable(60).await.unwrap();
        log.close().await.unwrap();
        drop(log);

        let env = process();
        let log = PartitionLog::open_with(&env, dir, small_config())
            .await
            .unwrap();
        let info = log.recovery_info();
        assert!(info.clean_shutdown);
        assert_eq!((info.segments_scanned, log.log_end_offset()), (0, 60));
        append_batch(&log, 3, 100, 2000).unwrap();
        log.wait_durable(63).await.unwrap();
        assert!(
            !dir.join(CLEAN_SHUTDOWN_FILE).exists(),
            "gone with the first write"
        );
        assert!(env.checkpoint_recovery_points().await.unwrap());
        drop(log); // no close: a crash

        let middle = dir.join(format!("{:020}.log", 15));
        let mut bytes = std::fs::read(&middle).unwrap();
        bytes[30] ^= 0x40;
        std::fs::write(&middle, &bytes).unwrap();
        std::fs::remove_file(middle.with_extension("index")).unwrap();
        let files = || {
            let mut v: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .map(|p| (std::fs::read(&p).unwrap(), p))
                .collect();
            v.sort();
            v
        };
        let before = files();
        match PartitionLog::open_with(&process(), dir, small_config()).await {
            Err(StorageError::Corrupt(msg)) => {
                assert!(msg.contains(&middle.display().to_string()), "{msg}")
            }
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok(_) => panic!("expected Corrupt, the log opened"),
        }
        assert_eq!(files(), before);
    });
}

/// Offsets of the producer-state snapshots on the simulated disk.
fn snapshots(m: &Machine) -> Vec<i64> {
    producer_snapshot::list(&m.disk, Path::new(DIR)).unwrap()
}

/// Appends `count` idempotent batches of producer 7 (2 records each) from `seq`.
fn produce_idempotent(log: &PartitionLog, seq: i32, count: i32) {
    for k in 0..count {
        let (b, i) = idem_batch(7, 0, seq + 2 * k, 2);
        log.append(b, &i, 5).unwrap();
    }
}

fn is_duplicate(log: &PartitionLog, pid: i64, seq: i32, n: usize) -> bool {
    let (b, i) = idem_batch(pid, 0, seq, n);
    matches!(
        log.append(b, &i, 5),
        Err(AppendError::DuplicateSequence { .. })
    )
}

#[test]
fn producer_snapshot_is_used_and_a_damaged_one_is_rebuilt() {
    let m = Machine::new();
    let log = m.open();
    produce_idempotent(&log, 0, 3);
    m.flush();
    fill(&log, 12);
    m.flush();
    assert!(
        m.checkpoint(),
        "snapshots count at or below the recovery point"
    );
    let taken = snapshots(&m);
    assert!(!taken.is_empty(), "rolls took snapshots");
    m.crash(log);

    // Only the newest snapshot knows producer 99 (at offsets 0-1, sequence 0-1).
    let newest = *taken.last().unwrap();
    let path = dir_path(&format!("{newest:020}.snapshot"));
    let mut state = producer_snapshot::decode(&m.disk.contents(&path).unwrap(), newest).unwrap();
    let (b, i) = idem_batch(99, 0, 0, 2);
    let updates = state.check_append(&[producer_batch(&i[0])], &[0]).unwrap();
    state.commit(updates);
    let forged = producer_snapshot::encode(&state, newest);
    ready(write_small_file(&m.disk, &path, &forged)).unwrap();
    let log = m.open();
    assert!(is_duplicate(&log, 99, 0, 2), "the snapshot was loaded");
    assert!(
        is_duplicate(&log, 7, 4, 2),
        "the producer of the log is known"
    );
    m.crash(log);
    drop(b);

    // Every snapshot damaged: ignored, the state is rebuilt from the whole log.
    for offset in snapshots(&m) {
        flip_byte(&m, &dir_path(&format!("{offset:020}.snapshot")), 30);
    }
    let log = m.open();
    assert!(!is_duplicate(&log, 99, 0, 2), "the forged producer is gone");
    assert!(is_duplicate(&log, 7, 4, 2), "rebuilt from the log");
    assert!(is_duplicate(&log, 7, 2, 2));
}

#[test]
fn truncation_removes_newer_snapshots_durably() {
    let m = Machine::new();
    let log = m.open();
    produce_idempotent(&log, 0, 2);
    m.flush();
    fill(&log, 6);
    m.flush();
    produce_idempotent(&log, 4, 1);
    fill(&log, 6);
    m.flush();
    let before = snapshots(&m);
    assert!(before.len() == 2 && before[0] > 6, "{before:?}");
    let end = ready(log.truncate_to(before[0] - 1)).unwrap();
    assert!(end < before[0]);
    assert!(
        snapshots(&m).iter().all(|&s| s <= end),
        "{:?}",
        snapshots(&m)
    );
    m.crash(log);

    // The deletions were durable: the crash brought none back.
    assert!(
        snapshots(&m).iter().all(|&s| s <= end),
        "{:?}",
        snapshots(&m)
    );
    let log = m.open();
    assert_eq!(log.log_end_offset(), end);
    assert!(is_duplicate(&log, 7, 2, 2), "the batches below the cut");
    assert!(
        !is_duplicate(&log, 7, 4, 2),
        "the truncated batch is not a duplicate"
    );
}

#[test]
fn a_clean_log_nobody_writes_keeps_its_files() {
    let m = Machine::new();
    let log = m.open();
    produce_idempotent(&log, 0, 2);
    fill(&log, 7);
    m.flush();
    ready(log.close()).unwrap();
    drop(log);
    let closed = snapshot(&m);
    assert!(closed.iter().any(|(n, _)| n.ends_with(".snapshot")));

    let log = m.open();
    assert!(log.recovery_info().clean_shutdown);
    assert!(is_duplicate(&log, 7, 2, 2), "from the close's snapshot");
    ready(log.close()).unwrap();
    drop(log);
    assert_eq!(snapshot(&m), closed, "nothing written, marker kept");

    // The first write leaves the clean state: a crash then needs the recovery scan.
    let log = m.open();
    fill(&log, 1);
    m.flush();
    assert!(!m.disk.exists(&dir_path(CLEAN_SHUTDOWN_FILE)));
    m.crash(log);
    let log = m.open();
    assert!(!log.recovery_info().clean_shutdown);
    assert_eq!(log.log_end_offset(), 4 + 24);
    assert!(is_duplicate(&log, 7, 2, 2));
}
