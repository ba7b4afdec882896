//! Recovery point, clean-shutdown marker and corruption below the recovery point, over
//! [`MemDisk`](super::mem_disk::MemDisk) (crashes keep only what was synced) and on real
//! files.

use std::path::{Path, PathBuf};

use super::checkpoint::{self, CLEAN_SHUTDOWN_FILE, RECOVERY_POINT_FILE};
use super::disk::{Disk, OpenMode, write_small_file};
use super::mem_disk::ALIGNMENT;
use super::mem_tests::{DIR, Machine, batches, ready};
use super::tests::{append_batch, append_in_epoch, expected_batch, small_config};
use super::*;

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

fn rp_on_disk(m: &Machine) -> i64 {
    ready(checkpoint::read_recovery_point(&m.disk, Path::new(DIR)))
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
fn recovery_point_advances_with_flushes_and_persists() {
    let m = Machine::new();
    let log = m.open();
    fill(&log, 1);
    m.flush();
    assert_eq!(log.recovery_point(), 3);
    assert_eq!(rp_on_disk(&m), 0, "no roll and no interval yet");

    fill(&log, 11);
    m.flush();
    assert_eq!(log.segment_count(), 3);
    assert_eq!((log.recovery_point(), rp_on_disk(&m)), (36, 36), "a roll");

    fill(&log, 1);
    m.flush();
    assert_eq!((log.recovery_point(), rp_on_disk(&m)), (39, 36));
    m.advance(RECOVERY_POINT_CHECKPOINT_INTERVAL.as_millis() as i64);
    fill(&log, 1);
    m.flush();
    assert_eq!(
        (log.recovery_point(), rp_on_disk(&m)),
        (42, 42),
        "the interval"
    );
    m.crash(log);

    let log = m.open();
    assert_eq!(log.recovery_info().recovery_point, 42);
    assert_eq!(log.recovery_point(), 42);
    // A truncation lowers the checkpoint before it removes data.
    assert_eq!(ready(log.truncate_to(30)).unwrap(), 30);
    assert_eq!((log.recovery_point(), rp_on_disk(&m)), (30, 30));
    m.crash(log);
    let log = m.open();
    assert_eq!(log.log_end_offset(), 30);
    ready(log.truncate_fully_and_start_at(3)).unwrap();
    assert_eq!(rp_on_disk(&m), 3);
    m.crash(log);
    assert_eq!(m.open().log_end_offset(), 3);
}

#[test]
fn clean_reopen_does_not_scan_and_removes_the_marker() {
    let m = Machine::new();
    let log = m.open();
    fill(&log, 12);
    m.flush();
    ready(log.close()).unwrap();
    assert!(m.disk.exists(&dir_path(CLEAN_SHUTDOWN_FILE)));
    drop(log);

    let log = m.open();
    let info = log.recovery_info();
    assert!(info.clean_shutdown);
    assert_eq!((info.segments_scanned, info.recovery_point), (0, 36));
    assert!(
        !m.disk.exists(&dir_path(CLEAN_SHUTDOWN_FILE)),
        "removed once the log is open for writing"
    );
    assert_eq!(batches(&log).len(), 12);
    fill(&log, 1);
    m.flush();
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
    let segments = log.segment_count();
    assert_eq!((segments, rp_on_disk(&m)), (4, 60));
    m.crash(log);

    let log = m.open();
    let info = log.recovery_info();
    assert_eq!((info.recovery_point, info.segments_scanned), (60, 1));
    assert_eq!(batches(&log).len(), 20);
    m.crash(log);

    // Without the checkpoint every segment is scanned.
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
    fill(&log, 2);
    m.flush();
    assert_eq!((log.log_end_offset(), rp_on_disk(&m)), (42, 36));
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
    m.crash(log);

    // The case: a header byte of a middle segment, its index deleted.
    let middle = segment(15, "log");
    flip_byte(&m, &middle, 30);
    remove_durably(&m, &segment(15, "index"));
    assert_corrupt_untouched(&m, &middle, 15);
}

#[test]
fn below_the_recovery_point_every_kind_of_damage_is_corrupt() {
    let m = Machine::new();
    let log = m.open();
    fill(&log, 12);
    m.flush();
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

    // Framing (the magic byte) of a segment whose index is loaded.
    flip_byte(&m, &segment(15, "log"), batch_len() + 16);
    assert_corrupt_untouched(&m, &segment(15, "log"), 18);
    restore(&m);

    // In the active segment, below the checkpointed recovery point (36).
    flip_byte(&m, &segment(30, "log"), batch_len() + 30);
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
    m.crash(log);

    // A crash while the temporary file was written: the checkpoint itself is intact.
    let tmp = dir_path(&format!("{RECOVERY_POINT_FILE}.tmp"));
    ready(write_small_file(&m.disk, &tmp, b"torn")).unwrap();
    m.disk.sync_dir(Path::new(DIR)).unwrap();
    let log = m.open();
    assert_eq!(log.recovery_info().recovery_point, 60);
    m.crash(log);

    // A damaged checkpoint counts as missing: scan everything.
    let file = dir_path(RECOVERY_POINT_FILE);
    ready(write_small_file(&m.disk, &file, &[0xAB; 16])).unwrap();
    let log = m.open();
    let info = log.recovery_info();
    assert_eq!((info.recovery_point, info.segments_scanned), (0, 4));
    assert_eq!(batches(&log).len(), 20);
}

#[test]
fn real_files_clean_close_and_corruption_below_the_recovery_point() {
    crate::runtime::block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let log = PartitionLog::open(dir, small_config()).await.unwrap();
        for i in 0..20 {
            append_batch(&log, 3, 100, 1000 + i).unwrap();
        }
        log.wait_durable(60).await.unwrap();
        log.close().await.unwrap();
        drop(log);

        let log = PartitionLog::open(dir, small_config()).await.unwrap();
        let info = log.recovery_info();
        assert!(info.clean_shutdown);
        assert_eq!((info.segments_scanned, log.log_end_offset()), (0, 60));
        assert!(!dir.join(CLEAN_SHUTDOWN_FILE).exists());
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
        match PartitionLog::open(dir, small_config()).await {
            Err(StorageError::Corrupt(msg)) => {
                assert!(msg.contains(&middle.display().to_string()), "{msg}")
            }
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok(_) => panic!("expected Corrupt, the log opened"),
        }
        assert_eq!(files(), before);
    });
}
