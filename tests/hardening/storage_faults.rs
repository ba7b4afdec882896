//! Hardening tests: storage failures (issue 10 item 8). A partition log that a failed
//! fdatasync or a full disk took offline used to stay led by its broker forever, answering
//! KAFKA_STORAGE_ERROR; a failed metadata log left its broker heartbeating with frozen
//! metadata. Now the broker reports the offline replica, the controller moves its leadership
//! to a healthy ISR member (KIP-112), and a metadata log failure stops the broker.
//!
//! Faults are injected through the broker's test-only control file
//! (`CORELOG_TEST_DISK_FAULTS`): every broker of a cluster reads the same file, and a line's
//! path fragment names one broker's data directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, CreateTopicsResponse, ProduceRequest, ProduceResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::common::*;

const DEADLINE: Duration = Duration::from_secs(90);
/// The exit code of a broker that halts itself (`server::HALT_EXIT_CODE`).
const HALT_EXIT_CODE: i32 = 70;
const FAULTS_ENV: &str = "CORELOG_TEST_DISK_FAULTS";
/// Broker 1 leads both partitions of the test topic; its partition 0 fails.
const FAULTY: usize = 0;

/// Three brokers reading the fault control file in `dir`.
fn cluster_with_faults(dir: &Path) -> (Cluster, PathBuf) {
    let control = dir.join("disk-faults");
    std::fs::write(&control, "").unwrap();
    let cluster = Cluster::start_with(
        ClusterOpts::new(3)
            .set("replica.lag.time.max.ms", 5000)
            .env(FAULTS_ENV, control.display()),
    );
    (cluster, control)
}

fn inject(control: &Path, line: &str) {
    let mut text = std::fs::read_to_string(control).unwrap();
    text.push_str(line);
    text.push('\n');
    std::fs::write(control, text).unwrap();
}

/// Creates `topic` with one partition per replica list (the first replica leads),
/// min.insync.replicas 2. Retries while the quorum is not able to commit it.
pub(crate) fn create_topic_on(cluster: &Cluster, via: usize, topic: &str, assignments: &[&[i32]]) {
    let mut t = CreatableTopic::default();
    t.name = topic_name(topic);
    t.num_partitions = -1;
    t.replication_factor = -1;
    t.assignments = (0..)
        .zip(assignments)
        .map(|(index, brokers)| {
            let mut a = CreatableReplicaAssignment::default();
            a.partition_index = index;
            a.broker_ids = brokers.iter().map(|b| BrokerId(*b)).collect();
            a
        })
        .collect();
    let mut config = CreatableTopicConfig::default();
    config.name = StrBytes::from_static_str("min.insync.replicas");
    config.value = Some(StrBytes::from_static_str("2"));
    t.configs = vec![config];
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 30_000;
    wait_for(
        &format!("creation of {topic}"),
        DEADLINE,
        Duration::from_millis(500),
        || {
            let resp: CreateTopicsResponse = cluster.raw(via).call(ApiKey::CreateTopics, 5, &req);
            match resp.topics[0].error_code {
                NONE | TOPIC_ALREADY_EXISTS => Some(()),
                code => {
                    eprintln!("[test] CreateTopics {topic}: error {code}, retrying");
                    None
                }
            }
        },
    );
}

/// Reads every partition of `topic` up to its high watermark and checks that each delivered
/// message is there, byte for byte (records a failed leader took but never acknowledged may
/// sit beside them: a client retried them).
pub(crate) fn assert_all_delivered_readable(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    seed: u64,
    deliveries: &[(i32, i64)],
) {
    let expected: HashMap<(i32, i64), u64> = (0..)
        .zip(deliveries)
        .map(|(i, &(p, o))| ((p, o), i))
        .collect();
    let ranges: Vec<(i32, i64, i64)> = watermarks(bootstrap, topic, partitions)
        .into_iter()
        .zip(0..)
        .map(|((low, high), p)| (p, low, high))
        .collect();
    let mut found = 0usize;
    consume_ranges(bootstrap, topic, &ranges, |m| {
        if let Some(&i) = expected.get(&(m.partition, m.offset)) {
            let (k, v) = message(seed, i);
            assert_eq!(m.key.as_deref(), Some(&k[..]), "key of message {i}");
            assert_eq!(m.value.as_deref(), Some(&v[..]), "value of message {i}");
            found += 1;
        }
    });
    assert_eq!(
        found,
        deliveries.len(),
        "{topic}: every acknowledged message is readable"
    );
}

/// A storage fault on the leader of partition 0: its leadership moves to another ISR member,
/// acks=all produce goes on, the faulty broker is listed offline for that partition only and
/// keeps leading partition 1, and every acknowledged message is readable.
fn leadership_leaves_a_failed_log(fault: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, control) = cluster_with_faults(dir.path());
    let topic = "faulty";
    create_topic_on(&cluster, 1, topic, &[&[1, 2, 3], &[1, 3, 2]]);
    let faulty_id = Cluster::node_id(FAULTY);
    cluster.wait_metadata(
        "broker 1 leads both partitions",
        DEADLINE,
        Some(&[topic]),
        |_, md| {
            topic_views(md)
                .get(topic)
                .is_some_and(|v| v.iter().all(|p| p.leader == faulty_id && p.isr.len() == 3))
        },
    );
    let bootstrap = cluster.bootstrap();
    let producer = producer_config(&bootstrap, "all");
    let seed = 8;
    let before = produce_messages(&producer, topic, seed, 0..200);

    let partition_dir = cluster.brokers[FAULTY]
        .data_dir()
        .join(format!("{topic}-0"));
    inject(&control, &format!("{fault} {}/", partition_dir.display()));
    // Produce until the fault is seen and the leadership moved: every round is acks=all.
    let mut all = before;
    let mut next = 200;
    let moved = |views: &[PartitionView]| {
        let (p0, p1) = (&views[0], &views[1]);
        p0.leader > 0
            && p0.leader != faulty_id
            && p0.offline == vec![faulty_id]
            && !p0.isr.contains(&faulty_id)
            && p1.leader == faulty_id
            && p1.offline.is_empty()
    };
    wait_for(
        "acks=all produce until partition 0 is led elsewhere",
        DEADLINE,
        Duration::ZERO,
        || {
            all.extend(produce_messages(&producer, topic, seed, next..next + 100));
            next += 100;
            let md = cluster.metadata_from(1, Some(&[topic]));
            topic_views(&md).get(topic).filter(|v| moved(v)).map(|_| ())
        },
    );
    cluster.wait_metadata(
        "every broker: partition 0 led elsewhere, broker 1 offline there",
        DEADLINE,
        Some(&[topic]),
        |_, md| topic_views(md).get(topic).is_some_and(|v| moved(v)),
    );
    let log = cluster.brokers[FAULTY].log();
    assert!(
        log.contains("replica offline; reporting it to the controller"),
        "the faulty broker logs the offline replica"
    );
    // More acks=all produce once everyone sees the move.
    all.extend(produce_messages(&producer, topic, seed, next..next + 100));
    assert_all_delivered_readable(&bootstrap, topic, 2, seed, &all);
    cluster.assert_running_alive();
}

#[test]
fn a_failed_fdatasync_moves_leadership_to_another_isr_member() {
    leadership_leaves_a_failed_log("fdatasync-eio");
}

#[test]
fn a_full_disk_moves_leadership_to_another_isr_member() {
    leadership_leaves_a_failed_log("write-enospc");
}

/// A replica whose log cannot be created is an offline replica, not a dead partition: the
/// creation is reported, another replica leads, and the broker answers KAFKA_STORAGE_ERROR
/// for it.
#[test]
fn a_log_that_cannot_be_created_is_an_offline_replica() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, control) = cluster_with_faults(dir.path());
    let topic = "uncreatable";
    let partition_dir = cluster.brokers[FAULTY]
        .data_dir()
        .join(format!("{topic}-0"));
    inject(&control, &format!("mkdir-eio {}", partition_dir.display()));
    let faulty_id = Cluster::node_id(FAULTY);
    create_topic_on(&cluster, 1, topic, &[&[1, 2, 3]]);
    cluster.wait_metadata(
        "partition 0 led by 2, broker 1 offline there",
        DEADLINE,
        Some(&[topic]),
        |_, md| {
            topic_views(md).get(topic).is_some_and(|v| {
                v[0].leader == 2 && v[0].offline == vec![faulty_id] && v[0].isr == vec![2, 3]
            })
        },
    );
    let mut raw = cluster.raw(FAULTY);
    assert_eq!(
        produce_one(&mut raw, topic),
        KAFKA_STORAGE_ERROR,
        "the offline replica answers KAFKA_STORAGE_ERROR"
    );
    let bootstrap = cluster.bootstrap();
    let delivered = produce_messages(&producer_config(&bootstrap, "all"), topic, 5, 0..100);
    assert_all_delivered_readable(&bootstrap, topic, 1, 5, &delivered);
    cluster.assert_running_alive();
}

const KAFKA_STORAGE_ERROR: i16 = 56;

/// One acks=all record to partition 0 of `topic`; the partition's error code.
fn produce_one(c: &mut RawClient, topic: &str) -> i16 {
    let mut pd = PartitionProduceData::default();
    pd.index = 0;
    pd.records = Some(Bytes::from(record_batch(
        1_700_000_000_000,
        &[(None, Some(b"v"))],
    )));
    let mut td = TopicProduceData::default();
    td.name = topic_name(topic);
    td.partition_data = vec![pd];
    let mut req = ProduceRequest::default();
    req.acks = -1;
    req.timeout_ms = 10_000;
    req.topic_data = vec![td];
    let resp: ProduceResponse = c.call(ApiKey::Produce, 9, &req);
    resp.responses[0].partition_responses[0].error_code
}

/// A metadata log whose fsync fails stops its broker (exit 70, the reason logged); the other
/// two keep serving.
#[test]
fn a_failed_metadata_log_stops_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, control) = cluster_with_faults(dir.path());
    let failing = 2;
    let metadata_dir = cluster.brokers[failing].data_dir().join("cluster-metadata");
    inject(
        &control,
        &format!("fdatasync-eio {}", metadata_dir.display()),
    );
    // Metadata changes make every voter write its log: one after another until the
    // failing broker has seen the fault.
    let mut changes = 0;
    wait_for(
        "the broker with the failing metadata log stops",
        DEADLINE,
        Duration::ZERO,
        || {
            changes += 1;
            create_topic_on(&cluster, 0, &format!("after-fault-{changes}"), &[&[1, 2]]);
            (!cluster.brokers[failing].is_alive()).then_some(())
        },
    );
    let status = cluster.brokers[failing].wait_exit(DEADLINE);
    let log = cluster.brokers[failing].log();
    assert_eq!(status.code(), Some(HALT_EXIT_CODE), "log:\n{log}");
    assert!(
        log.contains("metadata log failed") && log.contains("stopping the broker process"),
        "the log names the metadata log failure:\n{log}"
    );
    // The two others still commit metadata and serve acks=all produce (ISR of 2 of 3).
    create_topic_on(&cluster, 0, "still-served", &[&[1, 2]]);
    cluster.wait_metadata(
        "still-served led by 1 or 2",
        DEADLINE,
        Some(&["still-served"]),
        |_, md| {
            topic_views(md)
                .get("still-served")
                .is_some_and(|v| [1, 2].contains(&v[0].leader))
        },
    );
    let bootstrap = cluster.bootstrap();
    let producer = producer_config(&bootstrap, "all");
    let delivered = produce_messages(&producer, "still-served", 9, 0..100);
    assert_all_delivered_readable(&bootstrap, "still-served", 1, 9, &delivered);
    cluster.assert_running_alive();
}
