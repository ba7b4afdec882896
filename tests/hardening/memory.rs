//! Hardening tests: memory (issue 10 item 6). Each attack runs against a real broker whose
//! resident memory (VmRSS) is read from /proc while it is attacked; the bounds are computed
//! from the budget the test configures (`src/server/memory.rs`).

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::thread;
use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, FetchRequest, FetchResponse, ProduceRequest, ProduceResponse,
};

use crate::common::*;

const MIB: u64 = 1 << 20;
/// The frame-start reserve of one shard (`FRAME_STARTS_RESERVED_BYTES`: 256 × 64 KiB).
const FRAME_STARTS_RESERVED: u64 = 16 * MIB;
/// What an allocator and a loaded machine add to a measured bound (arenas, thread caches,
/// the moment a growing buffer is copied).
const RSS_SLACK: u64 = 96 * MIB;

/// The broker's resident memory.
fn rss(broker: &Broker) -> u64 {
    let pid = broker.pid().expect("broker running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// Produce v9 of one batch to each of `partitions`; every partition must succeed.
fn produce_to(client: &mut RawClient, topic: &str, partitions: &[(i32, Vec<u8>)]) {
    let partition_data = partitions
        .iter()
        .map(|(p, batch)| {
            let mut pd = PartitionProduceData::default();
            pd.index = *p;
            pd.records = Some(batch.clone().into());
            pd
        })
        .collect();
    let mut td = TopicProduceData::default();
    td.name = topic_name(topic);
    td.partition_data = partition_data;
    let mut req = ProduceRequest::default();
    req.acks = 1;
    req.timeout_ms = 30_000;
    req.topic_data = vec![td];
    let resp: ProduceResponse = client.call(ApiKey::Produce, 9, &req);
    for p in &resp.responses[0].partition_responses {
        assert_eq!(
            p.error_code, NONE,
            "produce to {topic}-{}: {resp:?}",
            p.index
        );
    }
}

/// Produces one batch and reads it back: the client is served.
fn serves_a_client(client: &mut RawClient, topic: &str, i: usize) {
    let value = format!("still served {i}");
    let batch = record_batch(1, &[(None, Some(value.as_bytes()))]);
    let (error, offset) = client.produce_one(topic, 0, batch);
    assert_eq!(error, NONE, "produce while attacked");
    let fetched = client.fetch(topic, 0, offset, 1_000);
    let records = fetched.responses[0].partitions[0]
        .records
        .clone()
        .unwrap_or_default();
    let (count, bases) = count_records(&records);
    assert!(count >= 1 && bases[0] == offset, "fetch while attacked");
}

/// One attacker: announces a frame of `claimed` bytes and sends all but its last byte,
/// until the broker stops reading (a write blocked for `stall`). Returns the bytes sent,
/// and the connection if it stalled (held open by the caller, as an attacker would).
fn send_unfinished_frame(
    addr: SocketAddr,
    claimed: usize,
    stall: Duration,
) -> (u64, Option<TcpStream>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_write_timeout(Some(stall)).expect("timeout");
    let mut sent = 0u64;
    if stream.write_all(&(claimed as i32).to_be_bytes()).is_err() {
        return (sent, None);
    }
    let chunk = vec![0x5a_u8; 256 << 10];
    let mut left = claimed - 1;
    while left > 0 {
        let n = chunk.len().min(left);
        match stream.write(&chunk[..n]) {
            Ok(0) => return (sent, None),
            Ok(k) => {
                sent += k as u64;
                left -= k;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return (sent, Some(stream));
            }
            Err(_) => return (sent, None),
        }
    }
    (sent, None)
}

#[test]
fn unfinished_frames_hold_no_more_than_the_request_budget() {
    let (shards, queued) = (2u64, 16 * MIB);
    let broker = Broker::start(
        BrokerOpts::new()
            .cores(shards as usize)
            .set("queued.max.request.bytes", queued),
    );
    let mut client = broker.raw();
    assert_eq!(client.create_topic("served", 1, 1), NONE);
    serves_a_client(&mut client, "served", 0);
    let baseline = rss(&broker);
    // The shards' request memory: frame starts and queued bytes, each per shard.
    let bound = baseline + shards * (queued + FRAME_STARTS_RESERVED) + RSS_SLACK;

    let addr = broker.addr();
    let attackers: Vec<_> = (0..10)
        .map(|_| {
            thread::spawn(move || send_unfinished_frame(addr, 99_000_000, Duration::from_secs(3)))
        })
        .collect();
    let (mut peak, mut served) = (baseline, 0);
    while !attackers.iter().all(|a| a.is_finished()) {
        peak = peak.max(rss(&broker));
        served += 1;
        serves_a_client(&mut client, "served", served);
        thread::sleep(Duration::from_millis(50));
    }
    let outcomes: Vec<(u64, Option<TcpStream>)> =
        attackers.into_iter().map(|a| a.join().unwrap()).collect();
    peak = peak.max(rss(&broker));
    let sent: u64 = outcomes.iter().map(|(sent, _)| sent).sum();
    eprintln!(
        "sent {} MiB in unfinished frames; RSS {} -> peak {} MiB (bound {} MiB); {served} client round trips",
        sent / MIB,
        baseline / MIB,
        peak / MIB,
        bound / MIB
    );
    let sent_each: Vec<u64> = outcomes.iter().map(|(sent, _)| sent / MIB).collect();
    assert!(
        outcomes.iter().all(|(_, stalled)| stalled.is_some()),
        "every attacker is held back by back-pressure (MiB sent each: {sent_each:?})"
    );
    assert!(
        sent >= shards * queued,
        "the attack reached the budget: {sent}"
    );
    assert!(peak <= bound, "RSS {peak} over the budget's bound {bound}");
    // Still served while the attackers' connections stay open.
    serves_a_client(&mut client, "served", served + 1);
    assert!(rss(&broker) <= bound);
    drop(outcomes);
}

/// A connection to `addr` from the local address `from` (any 127.0.0.0/8 address is this
/// machine's).
fn connect_from(from: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let raw = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let SocketAddr::V4(to) = addr else {
        panic!("IPv4 broker address expected");
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket whose descriptor is owned by the returned stream; the address
    // structs outlive the calls that read them.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let local = raw(from, 0);
        let bound = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len);
        assert_eq!(bound, 0, "bind {from}: {}", io::Error::last_os_error());
        let remote = raw(*to.ip(), to.port());
        let connected = libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len);
        assert_eq!(connected, 0, "connect: {}", io::Error::last_os_error());
        stream
    }
}

/// Whether a fresh connection's ApiVersions is answered (`false`: closed unanswered).
fn answered(stream: TcpStream) -> (bool, RawClient) {
    let mut client = RawClient::from_stream(stream);
    client
        .send_request(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
        .expect("send ApiVersions");
    match client.wait_closed(Duration::from_secs(60)) {
        CloseOutcome::Response(_) => (true, client),
        CloseOutcome::Closed => (false, client),
        CloseOutcome::TimedOut => panic!("neither answered nor closed within 60 s"),
    }
}

#[test]
fn connections_over_the_per_address_limit_are_closed_while_other_clients_work() {
    // 2 shards: 3 connections per address on each.
    let broker = Broker::start(BrokerOpts::new().set("max.connections.per.ip", 6));
    let attacker = Ipv4Addr::new(127, 0, 0, 1);
    let mut held = Vec::new();
    let mut closed = 0;
    for _ in 0..40 {
        match answered(connect_from(attacker, broker.addr())) {
            (true, client) => held.push(client),
            (false, _) => closed += 1,
        }
    }
    eprintln!("{} admitted, {closed} closed", held.len());
    assert!(
        held.len() <= 6,
        "at most the limit is served: {}",
        held.len()
    );
    assert!(closed >= 34, "the rest are closed: {closed}");
    // Another address is not affected.
    let (served, mut other) = answered(connect_from(Ipv4Addr::new(127, 0, 0, 2), broker.addr()));
    assert!(served, "a client from another address is served");
    assert_eq!(other.create_topic("other", 1, 1), NONE);
    serves_a_client(&mut other, "other", 0);
    // A connection given back makes room again.
    drop(held);
    wait_for(
        "a connection from the attacker's address is served again",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            answered(connect_from(attacker, broker.addr()))
                .0
                .then_some(())
        },
    );
}

#[test]
fn an_idle_connection_is_closed_and_an_active_one_is_not() {
    let idle_ms = 1_000;
    let broker = Broker::start(BrokerOpts::new().set("connections.max.idle.ms", idle_ms));
    let mut active = broker.raw();
    let mut idle = broker.raw();
    idle.api_versions(3);
    let start = Instant::now();
    // The active connection sends a request every 200 ms for 3 idle periods.
    while start.elapsed() < Duration::from_millis(3 * idle_ms) {
        active.api_versions(3);
        thread::sleep(Duration::from_millis(200));
    }
    assert!(matches!(
        idle.wait_closed(Duration::from_secs(60)),
        CloseOutcome::Closed
    ));
    active.api_versions(3);
    let mut fresh = broker.raw();
    let closed_after = Instant::now();
    assert!(matches!(
        fresh.wait_closed(Duration::from_secs(60)),
        CloseOutcome::Closed
    ));
    let waited = closed_after.elapsed();
    assert!(
        waited >= Duration::from_millis(idle_ms * 9 / 10),
        "closed after {waited:?}, before connections.max.idle.ms"
    );
}

/// Fetch v12 of every partition of `topic` from its offset in `offsets`, up to 4 MiB.
fn fetch_all(client: &mut RawClient, topic: &str, offsets: &[i64]) -> FetchResponse {
    client.call(
        ApiKey::Fetch,
        12,
        &fetch_request(topic, offsets, 1 << 20, 4 << 20),
    )
}

fn fetch_request(
    topic: &str,
    offsets: &[i64],
    partition_max_bytes: i32,
    max_bytes: i32,
) -> FetchRequest {
    let partitions = offsets
        .iter()
        .enumerate()
        .map(|(p, &offset)| {
            let mut fp = FetchPartition::default();
            fp.partition = p as i32;
            fp.current_leader_epoch = -1;
            fp.fetch_offset = offset;
            fp.last_fetched_epoch = -1;
            fp.log_start_offset = -1;
            fp.partition_max_bytes = partition_max_bytes;
            fp
        })
        .collect();
    let mut t = FetchTopic::default();
    t.topic = topic_name(topic);
    t.partitions = partitions;
    let mut req = FetchRequest::default();
    req.replica_id = (-1).into();
    req.max_bytes = max_bytes;
    req.isolation_level = 0;
    req.session_epoch = -1;
    req.topics = vec![t];
    req
}

#[test]
fn many_written_partitions_keep_the_tail_cache_budget_and_read_back() {
    let (shards, partitions, batches_per_partition) = (2u64, 400usize, 4i64);
    let tail_cache = 4 * MIB;
    let broker = Broker::start(
        BrokerOpts::new()
            .cores(shards as usize)
            .set("corelog.tail.cache.bytes.per.shard", tail_cache),
    );
    let mut client = broker.raw();
    assert_eq!(client.create_topic("wide", partitions as i32, 1), NONE);
    let baseline = rss(&broker);
    // 400 partitions × 4 batches of 256 KiB: 400 MiB, 100 times the shards' cache budget.
    let value = vec![0x42_u8; 256 << 10];
    let mut peak = baseline;
    for round in 0..batches_per_partition {
        for first in (0..partitions).step_by(40) {
            let batches: Vec<(i32, Vec<u8>)> = (first..first + 40)
                .map(|p| {
                    let key = format!("{p}-{round}");
                    let batch = record_batch(round, &[(Some(key.as_bytes()), Some(&value))]);
                    (p as i32, batch)
                })
                .collect();
            produce_to(&mut client, "wide", &batches);
            peak = peak.max(rss(&broker));
        }
    }
    // The tail caches, the partitions' fixed state (PARTITION_FIXED_BYTES: 64 KiB), and at
    // most one produce request in flight.
    let bound = baseline
        + shards * tail_cache
        + partitions as u64 * (64 << 10)
        + 2 * 10 * (256 << 10)
        + RSS_SLACK;
    eprintln!(
        "RSS {} -> peak {} MiB after 400 MiB written (bound {} MiB)",
        baseline / MIB,
        peak / MIB,
        bound / MIB
    );
    assert!(peak <= bound, "RSS {peak} over the budget's bound {bound}");
    // Everything reads back, in order, from disk.
    let mut offsets = vec![0i64; partitions];
    let deadline = Instant::now() + Duration::from_secs(120);
    while offsets.iter().any(|&o| o < batches_per_partition) {
        assert!(Instant::now() < deadline, "not read back: {offsets:?}");
        let resp = fetch_all(&mut client, "wide", &offsets);
        for p in &resp.responses[0].partitions {
            assert_eq!(p.error_code, NONE, "fetch partition {}", p.partition_index);
            assert_eq!(p.high_watermark, batches_per_partition);
            let records = p.records.clone().unwrap_or_default();
            let (count, bases) = count_records(&records);
            let offset = &mut offsets[p.partition_index as usize];
            assert!(bases.first().is_none_or(|&b| b == *offset), "{bases:?}");
            *offset += count as i64;
        }
        peak = peak.max(rss(&broker));
    }
    assert!(
        peak <= bound,
        "RSS {peak} over the bound {bound} while reading"
    );
}

#[test]
fn limits_that_do_not_fit_the_shards_or_the_machine_are_refused_at_startup() {
    for (key, value, says) in [
        (
            "max.connections",
            "1".to_string(),
            "max.connections (1) is less than the number of shards (2)",
        ),
        (
            "queued.max.request.bytes",
            (1u64 << 40).to_string(),
            "more than this machine's",
        ),
    ] {
        let mut broker = Broker::launch(BrokerOpts::new().cores(2).set(key, &value));
        let status = broker.wait_exit(Duration::from_secs(60));
        assert!(!status.success(), "{key}={value} refused");
        let log = broker.log();
        assert!(log.contains(says), "{key}={value}: log says why:\n{log}");
    }
}

#[test]
fn replica_fetchers_are_not_refused_by_max_connections() {
    // One shard per broker: max.connections is the broker's whole limit. min.insync.replicas
    // 2: an acks=all produce succeeds only once the follower fetched it.
    let mut cluster = Cluster::start_with(
        ClusterOpts::new(2)
            .set("max.connections", 4)
            .set("min.insync.replicas", 2),
    );
    // Clients take every connection node 1 allows; one more is closed unanswered.
    let node1 = cluster.addr(0);
    let mut held = Vec::new();
    let refused = loop {
        assert!(held.len() <= 4, "more than max.connections served");
        match answered(TcpStream::connect(node1).expect("connect")) {
            (true, client) => held.push(client),
            (false, _) => break true,
        }
    };
    assert!(refused && !held.is_empty(), "{} held", held.len());
    let admin = &mut held[0];
    admin
        .stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    // Created now, node 2's replicas of node 1's partitions must fetch over the limit.
    assert_eq!(admin.create_topic("replicated", 2, 2), NONE);
    let views = wait_for(
        "both partitions led, both replicas in sync (node 2's view)",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let md = try_metadata(
                cluster.addr(1),
                Some(&["replicated"]),
                Duration::from_secs(10),
            );
            let views = topic_views(&md.ok()?).remove("replicated")?;
            views
                .iter()
                .all(|p| p.leader > 0 && p.isr.len() == 2)
                .then_some(views)
        },
    );
    let led_by_node1 = views
        .iter()
        .position(|p| p.leader == 1)
        .expect("node 1 leads a partition") as i32;
    for i in 0..5 {
        let value = format!("replicated {i}");
        let batch = record_batch(1, &[(None, Some(value.as_bytes()))]);
        let resp = admin.produce("replicated", led_by_node1, batch, -1);
        let error = resp.responses[0].partition_responses[0].error_code;
        assert_eq!(error, NONE, "acks=all needs node 2's fetch: {resp:?}");
    }
    // Clients are still refused.
    assert!(!answered(TcpStream::connect(node1).expect("connect")).0);
    cluster.assert_running_alive();
}

#[test]
fn fetch_responses_nobody_reads_hold_no_more_than_the_response_budget() {
    let (shards, fetch_max, responses) = (2u64, 8 * MIB, 16 * MIB);
    let broker = Broker::start(
        BrokerOpts::new()
            .cores(shards as usize)
            .set("fetch.max.bytes", fetch_max)
            .set("corelog.fetch.response.bytes.per.shard", responses),
    );
    let mut client = broker.raw();
    assert_eq!(client.create_topic("big", 1, 1), NONE);
    let value = vec![0x17_u8; 256 << 10];
    for i in 0..32 {
        produce_to(
            &mut client,
            "big",
            &[(0, record_batch(i, &[(None, Some(&value))]))],
        );
    }
    let baseline = rss(&broker);
    let bound = baseline + shards * responses + RSS_SLACK;
    // 8 connections pipeline 30 full fetches each and read nothing: 1.9 GB of responses
    // if each were built at once.
    let request = fetch_request("big", &[0], fetch_max as i32, fetch_max as i32);
    let attackers: Vec<RawClient> = (0..8)
        .map(|_| {
            let mut attacker = broker.raw();
            for _ in 0..30 {
                attacker
                    .send_request(ApiKey::Fetch, 12, &request)
                    .expect("send fetch");
            }
            attacker
        })
        .collect();
    let (start, mut peak) = (Instant::now(), baseline);
    let mut produced = 0;
    while start.elapsed() < Duration::from_secs(5) {
        peak = peak.max(rss(&broker));
        // Produce does not wait for response memory.
        produced += 1;
        produce_to(
            &mut client,
            "big",
            &[(0, record_batch(1, &[(None, Some(b"x"))]))],
        );
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "RSS {} -> peak {} MiB with unread fetches (bound {} MiB); {produced} produces",
        baseline / MIB,
        peak / MIB,
        bound / MIB
    );
    assert!(peak <= bound, "RSS {peak} over the budget's bound {bound}");
    // Once the attackers are gone their memory comes back: fetches are served again.
    drop(attackers);
    let fetched = client.fetch("big", 0, 0, 1_000);
    let records = fetched.responses[0].partitions[0]
        .records
        .clone()
        .unwrap_or_default();
    assert!(count_records(&records).0 >= 1, "fetch after the attack");
}
