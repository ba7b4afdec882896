//! Hardening tests: recovery (issue 10 item 7). A corrupted header byte in a middle
//! segment whose index was deleted once made recovery truncate that segment and delete
//! every later one with only WARN lines (acknowledged data lost), and the tail was
//! CRC-scanned even after a clean shutdown. Now a clean stop needs no recovery scan, and
//! corruption below the recovery point takes only that partition offline, files untouched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use crate::storage_faults::{assert_all_delivered_readable, create_topic_on};

const KAFKA_STORAGE_ERROR: i16 = 56;
const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
/// About three batches of `batch()` per segment.
const SEGMENT_BYTES: u32 = 4096;

/// A batch of 5 records of 200 bytes.
fn batch() -> Vec<u8> {
    let value = [b'v'; 200];
    let records: Vec<KeyValue<'_>> = (0..5).map(|_| (None, Some(&value[..]))).collect();
    record_batch(1_700_000_000_000, &records)
}

/// A broker with small segments and one single-partition topic per name, ready to produce.
fn broker_with_topics(topics: &[&str]) -> Broker {
    let broker = Broker::start(BrokerOpts::new().set("log.segment.bytes", SEGMENT_BYTES));
    let mut raw = broker.raw();
    for topic in topics {
        assert_eq!(raw.create_topic(topic, 1, 1), NONE);
    }
    broker
}

/// Produces `count` batches (acks=all) to partition 0 of `topic`, the first one retried
/// until the new partition has its leader; returns the log end offset.
fn produce(broker: &Broker, topic: &str, count: usize) -> i64 {
    let mut raw = broker.raw();
    let mut end = wait_for(&format!("{topic} accepts produce"), DEADLINE, POLL, || {
        let (err, base) = raw.produce_one(topic, 0, batch());
        (err == NONE).then_some(base + 5)
    });
    for _ in 1..count {
        let (err, base) = raw.produce_one(topic, 0, batch());
        assert_eq!((err, base), (NONE, end), "produce to {topic}");
        end = base + 5;
    }
    end
}

/// What the broker printed since its last start.
fn log_of_last_start(broker: &Broker) -> String {
    let log = broker.log();
    let from = log.rfind("===== corelog start #").unwrap_or(0);
    log[from..].to_string()
}

/// The directory of partition 0 of `topic` under the broker's data dir.
fn partition_dir(broker: &Broker, topic: &str) -> PathBuf {
    let name = format!("{topic}-0");
    let dirs = list_files(broker.data_dir())
        .into_iter()
        .filter_map(|(p, _)| p.parent().map(Path::to_path_buf))
        .find(|d| d.file_name().is_some_and(|n| n == name.as_str()));
    dirs.unwrap_or_else(|| panic!("no directory {name} under {:?}", broker.data_dir()))
}

/// Every file of `dir` with its bytes.
fn files_of(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Waits until a shard's recovery-point file (`recovery-point-offset-checkpoint.shard<N>` in
/// `data_dir`, rewritten every `log.flush.offset.checkpoint.interval.ms`) vouches for the log
/// in `dir` up to `offset`: an entry for the incarnation in the log's own file (magic
/// "CLRI", incarnation u64) at or past it. Files: 16-byte header (count at 8..12), then
/// (incarnation u64, offset i64) entries, big endian.
fn wait_for_recovery_point(data_dir: &Path, dir: &Path, offset: i64) {
    let own = std::fs::read(dir.join("recovery-point-offset-checkpoint")).unwrap();
    assert_eq!(&own[..4], b"CLRI");
    let incarnation = &own[4..12];
    wait_for(
        "the shard's recovery-point checkpoint",
        DEADLINE,
        POLL,
        || {
            let files = std::fs::read_dir(data_dir)
                .unwrap()
                .map(|e| e.unwrap().path());
            files
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e.to_string_lossy().starts_with("shard"))
                })
                .filter_map(|p| std::fs::read(p).ok())
                .any(|file| {
                    let count = file
                        .get(8..12)
                        .map_or(0, |c| u32::from_be_bytes(c.try_into().unwrap()));
                    file.get(16..)
                        .unwrap_or_default()
                        .chunks_exact(16)
                        .take(count as usize)
                        .any(|e| {
                            &e[..8] == incarnation
                                && i64::from_be_bytes(e[8..].try_into().unwrap()) >= offset
                        })
                })
                .then_some(())
        },
    );
}

/// The case: one header byte of a middle segment of the log in `dir` flipped, and
/// its index deleted. Returns the segment's path.
fn corrupt_a_middle_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = files_of(dir)
        .into_keys()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 5, "segments: {segments:?}");
    let middle = segments[segments.len() / 2].clone();
    let mut bytes = std::fs::read(&middle).unwrap();
    bytes[30] ^= 0x40; // in the first batch's header, covered by its CRC
    std::fs::write(&middle, &bytes).unwrap();
    std::fs::remove_file(middle.with_extension("index")).unwrap();
    middle
}

#[test]
fn a_clean_stop_needs_no_recovery_scan() {
    let topic = "clean-stop";
    let mut broker = broker_with_topics(&[topic]);
    let end = produce(&broker, topic, 10);
    let status = broker.terminate();
    assert!(status.success(), "clean shutdown: {status}");

    broker.restart();
    let (err, latest) = wait_for("ListOffsets after the restart", DEADLINE, POLL, || {
        let (err, latest, _) = broker.raw().list_offset(topic, 0, -1);
        (err == NONE).then_some((err, latest))
    });
    assert_eq!((err, latest), (NONE, end));
    let log = log_of_last_start(&broker);
    let line = log
        .lines()
        .find(|l| l.contains("opened without a recovery scan"))
        .unwrap_or_else(|| panic!("no clean open in the log:\n{log}"));
    assert!(line.contains(&format!("{topic}-0")), "{line}");
    assert!(line.contains("INFO"), "{line}");

    // A kill -9 after that needs one: the marker went when the log was opened.
    produce(&broker, topic, 1);
    broker.kill9();
    broker.restart();
    wait_for("ListOffsets after the crash", DEADLINE, POLL, || {
        let (err, latest, _) = broker.raw().list_offset(topic, 0, -1);
        (err == NONE && latest == end + 5).then_some(())
    });
    let log = log_of_last_start(&broker);
    assert!(
        !log.contains("opened without a recovery scan"),
        "after a crash every log is recovered:\n{log}"
    );
}

#[test]
fn corruption_below_the_recovery_point_takes_only_that_partition_offline() {
    let (victim, healthy) = ("corrupted", "healthy");
    let mut broker = broker_with_topics(&[victim, healthy]);
    let end = produce(&broker, victim, 24);
    let healthy_end = produce(&broker, healthy, 3);
    assert_eq!(broker.raw().list_offset(victim, 0, -1), (NONE, end, -1));
    let dir = partition_dir(&broker, victim);
    wait_for_recovery_point(broker.data_dir(), &dir, end);
    broker.kill9();

    let middle = corrupt_a_middle_segment(&dir);
    let before = files_of(&dir);

    broker.restart();
    // The other partition serves.
    wait_for("the healthy partition serves", DEADLINE, POLL, || {
        let (err, latest, _) = broker.raw().list_offset(healthy, 0, -1);
        (err == NONE && latest == healthy_end).then_some(())
    });
    let fetched = broker.raw().fetch(healthy, 0, 0, 0);
    let p = &fetched.responses[0].partitions[0];
    assert_eq!(p.error_code, NONE);
    assert!(p.records.as_ref().is_some_and(|r| !r.is_empty()));
    assert_eq!(produce(&broker, healthy, 1), healthy_end + 5);

    // This one answers KAFKA_STORAGE_ERROR.
    wait_for("the corrupted partition is offline", DEADLINE, POLL, || {
        let (err, _, _) = broker.raw().list_offset(victim, 0, -1);
        (err == KAFKA_STORAGE_ERROR).then_some(())
    });
    let fetched = broker.raw().fetch(victim, 0, 0, 0);
    assert_eq!(
        fetched.responses[0].partitions[0].error_code,
        KAFKA_STORAGE_ERROR
    );
    let (err, _) = broker.raw().produce_one(victim, 0, batch());
    assert_eq!(err, KAFKA_STORAGE_ERROR, "produce");
    broker.assert_alive();

    // Every file is still there, unchanged; the log names the file at ERROR.
    assert_eq!(
        files_of(&dir),
        before,
        "the partition's files are untouched"
    );
    let log = log_of_last_start(&broker);
    let path = middle.display().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains(&path) && l.contains("offset")),
        "no ERROR line naming {path}:\n{log}"
    );
}

/// Corruption below the recovery point of a replica in a cluster: the replica is offline
/// (reported to the controller: out of the ISR, listed in `offline_replicas`, never leader
/// again until a restart), a healthy ISR member leads, acks=all produce goes on, every
/// acknowledged message is readable, and the broker's other replica is back in its ISR.
#[test]
fn corruption_below_the_recovery_point_leaves_leadership_to_a_healthy_replica() {
    let mut cluster = Cluster::start_with(
        ClusterOpts::new(3)
            .set("log.segment.bytes", SEGMENT_BYTES)
            .set("replica.lag.time.max.ms", 5000),
    );
    let topic = "corrupted-replica";
    create_topic_on(&cluster, 1, topic, &[&[1, 2, 3], &[2, 1, 3]]);
    let bootstrap = cluster.bootstrap();
    let producer = producer_config(&bootstrap, "all");
    let seed = 11;
    // Rounds of acks=all produce: each round is at least one batch, so segments roll.
    let mut delivered = Vec::new();
    for round in 0..12u64 {
        delivered.extend(produce_messages(
            &producer,
            topic,
            seed,
            round * 25..(round + 1) * 25,
        ));
    }
    let victim = 0;
    let victim_id = Cluster::node_id(victim);
    let dir = cluster.brokers[victim]
        .data_dir()
        .join(format!("{topic}-0"));
    let (err, end, _) = cluster.raw(victim).list_offset(topic, 0, -1);
    assert_eq!(err, NONE);
    wait_for_recovery_point(cluster.brokers[victim].data_dir(), &dir, end);
    cluster.kill9(victim);
    let middle = corrupt_a_middle_segment(&dir);
    let before = files_of(&dir);

    cluster.restart(victim);
    let healthy = |views: &[PartitionView]| {
        let p0 = &views[0];
        p0.leader > 0
            && p0.leader != victim_id
            && p0.offline == vec![victim_id]
            && !p0.isr.contains(&victim_id)
            && views[1].offline.is_empty()
            && views[1].isr.contains(&victim_id)
    };
    cluster.wait_metadata(
        "every broker: partition 0 led by a healthy replica, broker 1 offline there only",
        DEADLINE,
        Some(&[topic]),
        |_, md| topic_views(md).get(topic).is_some_and(|v| healthy(v)),
    );
    let (err, _, _) = cluster.raw(victim).list_offset(topic, 0, -1);
    assert_eq!(err, KAFKA_STORAGE_ERROR, "the offline replica answers");
    delivered.extend(produce_messages(&producer, topic, seed, 300..400));
    assert_all_delivered_readable(&bootstrap, topic, 2, seed, &delivered);
    assert_eq!(files_of(&dir), before, "the replica's files are untouched");
    let log = cluster.brokers[victim].log();
    let path = middle.display().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains(&path)),
        "no ERROR line naming {path}"
    );
    cluster.assert_running_alive();
}
