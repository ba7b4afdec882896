//! Hardening tests: the control plane (issue 10 items 1 and 2).
//!
//! One forged 17-byte raft heartbeat (term 1000, commit 2^40) sent to a voter's controller
//! port once panicked it inside raft, and sent to every voter killed the control plane;
//! forged broker heartbeats kept a stopped broker unfenced. A CreateTopics of 2^31-1
//! partitions was committed and then crashed every voter applying it, again at every
//! restart.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::{ApiKey, CreatePartitionsRequest, CreatePartitionsResponse};

use crate::common::*;

const DEADLINE: Duration = Duration::from_secs(60);
/// cluster::limits answers an over-large creation with POLICY_VIOLATION.
const POLICY_VIOLATION: i16 = 44;
/// The controller port's frame kinds: a raft message, a broker heartbeat, the hello.
const KIND_RAFT: u8 = 1;
const KIND_HEARTBEAT: u8 = 2;
const KIND_HELLO: u8 = 3;

/// `[u32 len][u8 kind][payload]`, the controller port's framing.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = ((1 + payload.len()) as u32).to_be_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

fn hello(cluster_id: &str, node_id: u64) -> Vec<u8> {
    let mut payload = (cluster_id.len() as u16).to_be_bytes().to_vec();
    payload.extend_from_slice(cluster_id.as_bytes());
    payload.extend_from_slice(&node_id.to_be_bytes());
    frame(KIND_HELLO, &payload)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A raft `MsgHeartbeat` (protobuf: type 1, to 2, from 3, term 4, commit 8) as a frame; with
/// `from` and `to` 0 it is the original 17-byte attack.
fn raft_heartbeat(from: u64, to: u64, term: u64, commit: u64) -> Vec<u8> {
    let mut m = vec![0x08, 8];
    for (tag, value) in [(0x10, to), (0x18, from), (0x20, term), (0x40, commit)] {
        if value != 0 {
            m.push(tag);
            varint(&mut m, value);
        }
    }
    frame(KIND_RAFT, &m)
}

/// A broker heartbeat (`i32 broker_id`, `u64 incarnation`, `u64 metadata_offset`).
fn broker_heartbeat(broker_id: i32, incarnation: u64, metadata_offset: u64) -> Vec<u8> {
    let mut payload = broker_id.to_be_bytes().to_vec();
    payload.extend_from_slice(&incarnation.to_be_bytes());
    payload.extend_from_slice(&metadata_offset.to_be_bytes());
    frame(KIND_HEARTBEAT, &payload)
}

fn controller_addr(cluster: &Cluster, i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], cluster.controller_ports[i]))
}

fn cluster_id(cluster: &Cluster) -> String {
    let md = cluster.raw(0).metadata(&[], false);
    md.cluster_id.expect("a cluster id").to_string()
}

/// Sends `bytes` on a new connection to `addr`; whether the voter closed it within `within`
/// (sending nothing back: the port never answers a stranger).
fn closes(addr: SocketAddr, bytes: &[u8], within: Duration) -> bool {
    let mut s = TcpStream::connect(addr).expect("connect to the controller port");
    // The voter may close before every byte is written.
    let _ = s.write_all(bytes);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let start = Instant::now();
    let mut buf = [0u8; 64];
    while start.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => panic!("the controller port answered {n} bytes"),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => {}
        }
    }
    false
}

/// Creates `topic` (3 partitions, RF 3) and produces and consumes 200 messages acks=all
/// through rdkafka: the quorum commits and every replica set works.
fn quorum_commits(cluster: &mut Cluster, topic: &str) {
    assert_eq!(cluster.raw(0).create_topic(topic, 3, 3), NONE);
    // Every broker knows every partition's leader before the producer asks any of them.
    cluster.wait_metadata(
        "the topic on every broker",
        DEADLINE,
        Some(&[topic]),
        |_, md| {
            topic_views(md)
                .get(topic)
                .is_some_and(|ps| ps.len() == 3 && ps.iter().all(|p| p.leader >= 0))
        },
    );
    let bootstrap = cluster.bootstrap();
    let deliveries = produce_messages(&producer_config(&bootstrap, "all"), topic, 7, 0..200);
    assert_eq!(verify_topic(&bootstrap, topic, 3, 7, &deliveries), 200);
}

/// Issue 10 item 1: the original forged heartbeat, the same from a voter that said hello,
/// and garbage and oversized frames, at every voter's controller port: each is closed, no
/// broker goes down, and the quorum still commits.
#[test]
fn forged_and_garbage_frames_crash_no_voter() {
    let t = Instant::now();
    let mut cluster = Cluster::start(3);
    let id = cluster_id(&cluster);
    let within = Duration::from_secs(30);
    for round in 0..3 {
        for i in 0..cluster.len() {
            let addr = controller_addr(&cluster, i);
            let me = i as u64 + 1;
            let other = me % 3 + 1;
            let original = raft_heartbeat(0, 0, 1000, 1 << 40);
            assert_eq!(original.len(), 17);
            let as_voter = [hello(&id, other), raft_heartbeat(other, me, 1000, 1 << 40)].concat();
            let oversized_hello = u32::MAX.to_be_bytes().to_vec();
            let oversized_frame = [hello(&id, other), u32::MAX.to_be_bytes().to_vec()].concat();
            let mut garbage = vec![0u8; 4096];
            let mut x = 0x9e37_79b9_7f4a_7c15 ^ (round * 3 + i) as u64;
            garbage.fill_with(|| splitmix64(&mut x) as u8);
            for (what, bytes) in [
                ("the original 17-byte heartbeat", &original),
                ("a heartbeat committing 2^40 from a voter", &as_voter),
                ("an oversized hello", &oversized_hello),
                ("an oversized frame", &oversized_frame),
                ("random bytes", &garbage),
            ] {
                assert!(
                    closes(addr, bytes, within),
                    "node {me} kept a connection sending {what} open"
                );
            }
        }
        cluster.assert_running_alive();
    }
    quorum_commits(&mut cluster, "after-forgeries");
    cluster.assert_running_alive();
    eprintln!("[test] forged frames: done in {:?}", t.elapsed());
}

/// Issue 10 item 1: a connection naming another cluster or a node that is not a voter, or a
/// voter's connection carrying another node's messages, is closed; a silent one too. Forged
/// heartbeats for a stopped broker do not keep it unfenced.
#[test]
fn only_voters_of_the_cluster_are_heard() {
    let t = Instant::now();
    let mut cluster = Cluster::start(3);
    let id = cluster_id(&cluster);
    let addr = controller_addr(&cluster, 0);
    let within = Duration::from_secs(30);
    let beat = broker_heartbeat(2, 1, u64::MAX);
    for (what, bytes) in [
        (
            "another cluster",
            [hello("corelog-0000000000000000", 2), beat.clone()].concat(),
        ),
        ("a non-voter", [hello(&id, 4), beat.clone()].concat()),
        ("voter 1 itself", [hello(&id, 1), beat.clone()].concat()),
        ("no hello", beat.clone()),
        (
            "broker 2's heartbeat on 3's connection",
            [hello(&id, 3), beat.clone()].concat(),
        ),
        (
            "3's raft message on 2's connection",
            [hello(&id, 2), raft_heartbeat(3, 1, 1, 0)].concat(),
        ),
    ] {
        assert!(closes(addr, &bytes, within), "{what}: connection left open");
    }
    // Silence: closed once the hello timeout (5 s) is over.
    assert!(closes(addr, &[], within), "a silent connection left open");

    // Broker 3 stops; a forger names itself voter 3 and heartbeats for it, far ahead in the
    // metadata log, with an incarnation it had to guess.
    cluster.kill9(2);
    let stop = AtomicBool::new(false);
    let targets = [controller_addr(&cluster, 0), controller_addr(&cluster, 1)];
    let forged = [hello(&id, 3), broker_heartbeat(3, 12_345, u64::MAX)].concat();
    std::thread::scope(|s| {
        let forger = s.spawn(|| {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                for target in targets {
                    if let Ok(mut c) = TcpStream::connect(target)
                        && c.write_all(&forged).is_ok()
                    {
                        sent += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            sent
        });
        cluster.wait_metadata("broker 3 fenced", DEADLINE, Some(&[]), |_, md| {
            listed_brokers(md) == [1, 2]
        });
        stop.store(true, Ordering::Relaxed);
        assert!(forger.join().expect("forger thread") > 0);
    });
    cluster.restart(2);
    quorum_commits(&mut cluster, "after-strangers");
    eprintln!("[test] strangers: done in {:?}", t.elapsed());
}

/// Issue 10 item 2: CreateTopics of 2^31-1 partitions and CreatePartitions to 2^31-1 are
/// refused before anything is proposed; the cluster keeps serving and a full restart of every
/// broker comes back with the metadata unchanged.
#[test]
fn absurd_partition_counts_are_refused_and_restarts_come_back() {
    let t = Instant::now();
    let mut cluster = Cluster::start(3);
    let mut c = cluster.raw(0);
    assert_eq!(c.create_topic("small", 2, 3), NONE);
    let huge = c.create_topics_resp("huge", i32::MAX, 3);
    assert_eq!(
        huge.topics[0].error_code, POLICY_VIOLATION,
        "CreateTopics 2^31-1: {huge:?}"
    );
    let mut grow = CreatePartitionsTopic::default();
    grow.name = topic_name("small");
    grow.count = i32::MAX;
    let mut req = CreatePartitionsRequest::default();
    req.topics = vec![grow];
    req.timeout_ms = 30_000;
    let grown: CreatePartitionsResponse = c.call(ApiKey::CreatePartitions, 3, &req);
    assert_eq!(
        grown.results[0].error_code, POLICY_VIOLATION,
        "CreatePartitions to 2^31-1: {grown:?}"
    );
    let unchanged = |cluster: &mut Cluster, what: &str| {
        cluster.wait_metadata(what, DEADLINE, None, |_, md| {
            let topics = topic_views(md);
            !topics.contains_key("huge") && topics.get("small").is_some_and(|p| p.len() == 2)
        });
    };
    unchanged(&mut cluster, "no huge topic, small has 2 partitions");
    cluster.assert_running_alive();
    quorum_commits(&mut cluster, "after-refusals");

    // Every broker dies; all come back (no crash loop replaying the log).
    for i in 0..cluster.len() {
        cluster.kill9(i);
    }
    cluster.start_members(&[0, 1, 2]);
    unchanged(&mut cluster, "after a full restart");
    quorum_commits(&mut cluster, "after-restart");
    eprintln!("[test] absurd partition counts: done in {:?}", t.elapsed());
}
