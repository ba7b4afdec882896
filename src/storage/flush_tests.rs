//! The flush policy over [`MemDisk`] (`flush.messages`, `flush.ms`): when a batch is
//! acknowledged (after fdatasync by default, after the write otherwise), when the flusher
//! syncs, and what a process kill and a power loss keep.

use std::path::Path;
use std::time::Duration;

use super::mem_tests::{DIR, Machine, batches, ready};
use super::tests::{append_in_epoch, small_config};
use super::*;

/// `flush.ms` of Long.MAX_VALUE: never by time.
const NEVER: u64 = i64::MAX as u64;

fn segment_file() -> std::path::PathBuf {
    Path::new(DIR).join(format!("{:020}.log", 0))
}

/// Acknowledges after the write; syncs every `messages` offsets or `ms` after the last
/// sync. One segment (no roll forces a sync).
fn relaxed(messages: u64, ms: u64) -> LogConfig {
    LogConfig {
        segment_bytes: 1 << 20,
        flush_messages: messages,
        flush_ms: ms,
        ..small_config()
    }
}

fn synced_len(m: &Machine) -> usize {
    m.disk
        .synced_contents(&segment_file())
        .map_or(0, |b| b.len())
}

fn written_len(m: &Machine) -> usize {
    m.disk.contents(&segment_file()).map_or(0, |b| b.len())
}

#[test]
fn by_default_nothing_is_acknowledged_before_its_fdatasync() {
    let m = Machine::new();
    let log = m.open();
    append_in_epoch(&log, 3, 100, 5);
    m.disk.fail_fdatasyncs(true);
    m.flush();
    assert!(written_len(&m) > 0, "the write itself went through");
    assert_eq!(synced_len(&m), 0);
    assert_eq!((log.durable_end(), log.high_watermark()), (0, 0));
    assert!(ready(log.wait_durable(3)).is_err(), "the log went offline");
    assert_eq!(m.counters.snapshot().acknowledged_batches, 0);

    let m = Machine::new();
    let log = m.open();
    append_in_epoch(&log, 3, 100, 5);
    append_in_epoch(&log, 2, 100, 5);
    m.flush();
    assert_eq!((log.durable_end(), log.recovery_point()), (5, 5));
    assert_eq!(synced_len(&m), written_len(&m));
    let c = m.counters.snapshot();
    assert_eq!((c.fdatasyncs, c.acknowledged_batches), (1, 2));
    m.crash(log);
    assert_eq!(
        batches(&m.open()),
        [(0, 5), (3, 5)],
        "a power loss keeps every ack"
    );
}

#[test]
fn flush_messages_acknowledges_on_write_and_syncs_every_n_messages() {
    let m = Machine::new();
    let log = m.open_with(relaxed(10, NEVER));
    append_in_epoch(&log, 3, 100, 5);
    m.flush();
    // Acknowledged and visible once written; not synced.
    assert_eq!((log.durable_end(), log.high_watermark()), (3, 3));
    assert_eq!((log.recovery_point(), log.sync_count()), (0, 0));
    assert!(written_len(&m) > 0);
    assert_eq!(synced_len(&m), 0);
    ready(log.wait_durable(3)).unwrap();
    append_in_epoch(&log, 6, 100, 5);
    m.flush();
    assert_eq!((log.durable_end(), log.sync_count()), (9, 0));
    assert!(m.sync_timers().is_empty(), "flush.ms is infinite: no timer");
    // The 10th unsynced message: this flush syncs.
    append_in_epoch(&log, 1, 100, 5);
    m.flush();
    assert_eq!((log.recovery_point(), log.sync_count()), (10, 1));
    assert_eq!(synced_len(&m), written_len(&m));
    let c = m.counters.snapshot();
    assert_eq!((c.fdatasyncs, c.acknowledged_batches), (1, 3));

    // Written, acknowledged, not synced: a process kill keeps it (the file has it).
    append_in_epoch(&log, 2, 100, 5);
    m.flush();
    assert_eq!((log.durable_end(), log.recovery_point()), (12, 10));
    m.kill(log);
    let log = m.open_with(relaxed(10, NEVER));
    assert_eq!(batches(&log), [(0, 5), (3, 5), (9, 5), (10, 5)]);
}

#[test]
fn a_power_loss_loses_what_was_acknowledged_but_not_synced() {
    let m = Machine::new();
    let log = m.open_with(relaxed(10, NEVER));
    append_in_epoch(&log, 3, 100, 5);
    m.flush();
    assert_eq!(log.durable_end(), 3);
    m.crash(log);
    assert_eq!(m.open().log_end_offset(), 0, "as with Kafka's page cache");
}

#[test]
fn flush_ms_syncs_by_time_with_or_without_new_appends() {
    let m = Machine::new();
    let log = m.open_with(relaxed(1000, 500));
    append_in_epoch(&log, 3, 100, 5);
    m.flush();
    assert_eq!((log.durable_end(), log.sync_count()), (3, 0));
    assert_eq!(m.sync_timers().len(), 1, "one timer for the unsynced data");
    m.advance(499);
    assert_eq!(m.fire_sync_timers(), 0);
    m.advance(1);
    assert_eq!(m.fire_sync_timers(), 1);
    assert_eq!(m.flush(), 1, "the timer started a flush");
    assert_eq!((log.recovery_point(), log.sync_count()), (3, 1));
    assert!(m.sync_timers().is_empty(), "nothing left to sync");

    // Under load the flusher itself syncs once flush.ms passed since the last sync.
    append_in_epoch(&log, 2, 100, 5);
    m.flush();
    assert_eq!((log.recovery_point(), log.sync_count()), (3, 1));
    m.advance(200);
    append_in_epoch(&log, 2, 100, 5);
    m.flush();
    assert_eq!(log.sync_count(), 1, "200 ms: not yet");
    m.advance(300);
    append_in_epoch(&log, 2, 100, 5);
    m.flush();
    assert_eq!((log.recovery_point(), log.sync_count()), (9, 2));
    // The timer armed earlier finds nothing to do, and arms no other.
    m.advance(1000);
    m.fire_sync_timers();
    assert_eq!((m.flush(), log.sync_count()), (0, 2));
    assert!(m.sync_timers().is_empty());
}

#[test]
fn a_timer_that_fires_early_waits_for_the_next_deadline() {
    let m = Machine::new();
    let log = m.open_with(relaxed(1000, 500));
    append_in_epoch(&log, 3, 100, 5);
    m.flush();
    let first = m.sync_timers()[0];
    // A sync happens meanwhile (a roll, or flush.messages), then more data is written.
    m.advance(400);
    log.set_config(relaxed(2, 500));
    append_in_epoch(&log, 1, 100, 5);
    m.flush();
    assert_eq!(log.recovery_point(), 4);
    log.set_config(relaxed(1000, 500));
    append_in_epoch(&log, 1, 100, 5);
    m.flush();
    m.advance(100);
    assert_eq!(m.fire_sync_timers(), 1);
    assert_eq!(m.flush(), 0, "500 ms since the last sync have not passed");
    assert_eq!(m.sync_timers(), [first + Duration::from_millis(400)]);
    m.advance(400);
    m.fire_sync_timers();
    m.flush();
    assert_eq!(log.recovery_point(), 5);
}

#[test]
fn close_syncs_what_the_policy_left_unsynced() {
    let m = Machine::new();
    let log = m.open_with(relaxed(1000, NEVER));
    append_in_epoch(&log, 3, 100, 5);
    m.flush();
    assert_eq!(log.recovery_point(), 0);
    ready(log.close()).unwrap();
    assert_eq!(log.recovery_point(), 3);
    m.crash(log);
    let log = m.open();
    assert!(log.recovery_info().clean_shutdown);
    assert_eq!(batches(&log), [(0, 5)]);
}

#[test]
fn turning_the_policy_strict_acknowledges_only_synced_data_again() {
    let m = Machine::new();
    let log = m.open_with(relaxed(1000, NEVER));
    append_in_epoch(&log, 3, 100, 5);
    m.flush();
    assert_eq!((log.durable_end(), log.recovery_point()), (3, 0));
    log.set_config(small_config());
    append_in_epoch(&log, 2, 100, 5);
    m.disk.fail_fdatasyncs(true);
    m.flush();
    // Written but not synced: stays unacknowledged (what was acknowledged stays so).
    assert_eq!((log.durable_end(), log.high_watermark()), (3, 3));
    assert!(log.is_offline());
}

#[test]
fn after_an_unclean_open_the_first_sync_covers_the_recovered_tail() {
    let m = Machine::new();
    let log = m.open_with(relaxed(1000, NEVER));
    append_in_epoch(&log, 3, 100, 5);
    m.flush();
    m.kill(log);
    let log = m.open();
    assert_eq!((log.durable_end(), log.recovery_point()), (3, 0));
    append_in_epoch(&log, 1, 100, 5);
    m.flush();
    assert_eq!((log.recovery_point(), log.sync_count()), (4, 1));
    m.crash(log);
    assert_eq!(m.open().log_end_offset(), 4);
}
