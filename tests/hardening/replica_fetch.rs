//! Hardening tests: replica fetches and Fetch limits (issue 10 items 3 and 6).
//!
//! A client Fetch claiming to be a follower (`replica_id` = a broker, `fetch_offset` = 2^62)
//! once let acks=all produces succeed with the only follower stopped, and killing the leader
//! then lost them; one 1.6 KB Fetch naming a partition 100 times got a ~990 MB response.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, BrokerId, CreateTopicsRequest, CreateTopicsResponse, FetchRequest,
    FetchResponse, ProduceRequest, ProduceResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use crate::common::*;

const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
const INVALID_REQUEST: i16 = 42;
const DEADLINE: Duration = Duration::from_secs(60);

/// A Fetch v12 of `(partition, fetch_offset)`s of `topic`, as replica `replica_id`.
fn fetch_request(
    replica_id: i32,
    topic: &str,
    partitions: &[(i32, i64)],
    max_bytes: i32,
    partition_max_bytes: i32,
) -> FetchRequest {
    let mut t = FetchTopic::default();
    t.topic = topic_name(topic);
    t.partitions = partitions
        .iter()
        .map(|&(partition, offset)| {
            let mut p = FetchPartition::default();
            p.partition = partition;
            p.current_leader_epoch = -1;
            p.fetch_offset = offset;
            p.last_fetched_epoch = -1;
            p.log_start_offset = -1;
            p.partition_max_bytes = partition_max_bytes;
            p
        })
        .collect();
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(replica_id);
    req.max_wait_ms = 0;
    req.min_bytes = 0;
    req.max_bytes = max_bytes;
    req.session_epoch = -1;
    req.topics = vec![t];
    req
}

/// Each partition's (error, record bytes) of a Fetch response, in order.
fn answers(resp: &FetchResponse) -> Vec<(i16, usize)> {
    resp.responses
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| (p.error_code, p.records.as_ref().map_or(0, Bytes::len)))
        .collect()
}

/// A batch of `n` records of `value_bytes` each.
fn batch(n: usize, value_bytes: usize) -> Vec<u8> {
    let value = vec![b'v'; value_bytes];
    let records: Vec<KeyValue<'_>> = (0..n).map(|_| (None, Some(&value[..]))).collect();
    record_batch(1_700_000_000_000, &records)
}

fn produce(c: &mut RawClient, topic: &str, partition: i32, batch: Vec<u8>, timeout_ms: i32) -> i16 {
    let mut pd = PartitionProduceData::default();
    pd.index = partition;
    pd.records = Some(Bytes::from(batch));
    let mut td = TopicProduceData::default();
    td.name = topic_name(topic);
    td.partition_data = vec![pd];
    let mut req = ProduceRequest::default();
    req.acks = -1;
    req.timeout_ms = timeout_ms;
    req.topic_data = vec![td];
    let resp: ProduceResponse = c.call(ApiKey::Produce, 9, &req);
    resp.responses[0].partition_responses[0].error_code
}

/// Partition 0 of `topic` on replicas [1, 2] (1 leads), min.insync.replicas 2.
fn create_on_1_and_2(c: &mut RawClient, topic: &str) {
    let mut assignment = CreatableReplicaAssignment::default();
    assignment.partition_index = 0;
    assignment.broker_ids = vec![BrokerId(1), BrokerId(2)];
    let mut config = CreatableTopicConfig::default();
    config.name = StrBytes::from_static_str("min.insync.replicas");
    config.value = Some(StrBytes::from_static_str("2"));
    let mut t = CreatableTopic::default();
    t.name = topic_name(topic);
    t.num_partitions = -1;
    t.replication_factor = -1;
    t.assignments = vec![assignment];
    t.configs = vec![config];
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 30_000;
    let resp: CreateTopicsResponse = c.call(ApiKey::CreateTopics, 5, &req);
    assert_eq!(resp.topics[0].error_code, NONE, "CreateTopics: {resp:?}");
}

fn wait_partition(
    cluster: &mut Cluster,
    topic: &str,
    what: &str,
    ok: impl Fn(&PartitionView) -> bool,
) {
    cluster.wait_metadata(what, DEADLINE, Some(&[topic]), |_, md| {
        topic_views(md).get(topic).is_some_and(|v| ok(&v[0]))
    });
}

/// The forged follower fetch, on a fresh connection that first names broker 2 with a
/// made-up incarnation (a client cannot know the real one).
fn spoofed_fetch(cluster: &Cluster, topic: &str) -> Vec<(i16, usize)> {
    let mut c = cluster.raw(0);
    let cluster_id = c.metadata(&[], false).cluster_id.map(|s| s.to_string());
    let mut claim = Vec::new();
    let id = cluster_id.unwrap_or_default();
    claim.extend_from_slice(&(id.len() as i16).to_be_bytes());
    claim.extend_from_slice(id.as_bytes());
    claim.extend_from_slice(&2i32.to_be_bytes());
    claim.extend_from_slice(&12_345u64.to_be_bytes());
    let mut hello = ApiVersionsRequest::default();
    hello.client_software_name = StrBytes::from_static_str("corelog");
    hello.client_software_version = StrBytes::from_static_str("0.1");
    hello
        .unknown_tagged_fields
        .insert(0x636c_6f67, Bytes::from(claim));
    c.request(ApiKey::ApiVersions, 3, &hello);
    let req = fetch_request(2, topic, &[(0, 1 << 62)], 1 << 20, 1 << 20);
    answers(&c.call(ApiKey::Fetch, 12, &req))
}

/// Issue 10 item 3: a client cannot fetch as a follower, so a stopped follower's place in
/// the ISR cannot be faked; acks=all does not succeed without it and nothing acknowledged
/// is lost when the leader is killed afterwards.
#[test]
fn a_spoofed_follower_fetch_neither_commits_nor_loses_acknowledged_data() {
    let t = Instant::now();
    let mut cluster = Cluster::start_with(ClusterOpts::new(3).set("replica.lag.time.max.ms", 2000));
    let topic = "spoofed";
    create_on_1_and_2(&mut cluster.raw(0), topic);
    wait_partition(&mut cluster, topic, "1 leads, ISR {1, 2}", |p| {
        p.leader == 1 && p.isr.len() == 2
    });
    assert_eq!(
        produce(&mut cluster.raw(0), topic, 0, batch(10, 100), 30_000),
        NONE
    );
    let acknowledged = 10;

    cluster.kill9(1);
    let refused = vec![(TOPIC_AUTHORIZATION_FAILED, 0)];
    assert_eq!(
        spoofed_fetch(&cluster, topic),
        refused,
        "before the follower is fenced"
    );
    // The produce waits for a follower that will never come; fetches claiming to be it
    // meanwhile change nothing.
    let mut producer = cluster.raw(0);
    let spoofs = std::thread::scope(|s| {
        let spoofs = s.spawn(|| {
            (0..5)
                .map(|_| {
                    std::thread::sleep(Duration::from_millis(200));
                    spoofed_fetch(&cluster, topic)
                })
                .collect::<Vec<_>>()
        });
        let code = produce(&mut producer, topic, 0, batch(10, 100), 5_000);
        assert_ne!(code, NONE, "acks=all with the only follower stopped");
        spoofs.join().expect("spoofing thread")
    });
    assert!(spoofs.iter().all(|a| *a == refused), "{spoofs:?}");
    let (err, hw, _) = cluster.raw(0).list_offset(topic, 0, -1);
    assert_eq!(
        (err, hw),
        (NONE, acknowledged),
        "the high watermark did not move"
    );

    // The follower comes back and catches up; then the leader dies.
    cluster.restart(1);
    wait_partition(&mut cluster, topic, "ISR {1, 2} again", |p| {
        p.isr.len() == 2
    });
    cluster.kill9(0);
    wait_partition(&mut cluster, topic, "2 leads", |p| p.leader == 2);
    let got = wait_for(
        "records from the new leader",
        DEADLINE,
        Duration::from_millis(200),
        || {
            let resp = cluster.raw(1).fetch(topic, 0, 0, 0);
            let p = &resp.responses[0].partitions[0];
            let records = p.records.clone().unwrap_or_default();
            (p.error_code == NONE && p.high_watermark >= acknowledged)
                .then(|| count_records(&records))
        },
    );
    assert!(
        got.0 >= acknowledged as usize,
        "acknowledged records lost: {got:?}"
    );
    assert_eq!(got.1.first(), Some(&0));
    eprintln!("[test] spoofed follower fetch: done in {:?}", t.elapsed());
}

/// Issue 10 item 6: a partition named twice is INVALID_REQUEST, and responses stay within
/// the request's `max_bytes` and the broker's `fetch.max.bytes` (but for one batch of the
/// first partition with data, KIP-74).
#[test]
fn fetch_responses_stay_within_their_byte_budget() {
    let broker_max = 64 << 10;
    let broker = Broker::start(BrokerOpts::new().set("fetch.max.bytes", broker_max));
    let mut c = broker.raw();
    let topic = "budget";
    assert_eq!(c.create_topic(topic, 3, 1), NONE);
    let one_batch = batch(10, 1000).len();
    for partition in 0..3 {
        for _ in 0..20 {
            assert_eq!(
                produce(&mut c, topic, partition, batch(10, 1000), 30_000),
                NONE
            );
        }
    }
    // One partition named 100 times: every copy refused, nothing read.
    let hundred = vec![(0, 0); 100];
    let req = fetch_request(-1, topic, &hundred, i32::MAX, i32::MAX);
    let raw = c.request(ApiKey::Fetch, 12, &req);
    assert!(raw.len() < 16 << 10, "a {} byte answer", raw.len());
    let resp = FetchResponse::decode(&mut raw.clone(), 12).expect("Fetch response");
    assert_eq!(answers(&resp), vec![(INVALID_REQUEST, 0); 100]);

    // The request's max_bytes, while reading: the first partition's batch, nothing else.
    let all = [(0, 0), (1, 0), (2, 0)];
    let req = fetch_request(-1, topic, &all, 1, 1 << 20);
    let got = answers(&c.call(ApiKey::Fetch, 12, &req));
    assert_eq!(
        got,
        vec![(NONE, one_batch), (NONE, 0), (NONE, 0)],
        "max_bytes 1"
    );
    let req = fetch_request(-1, topic, &all, 5 * one_batch as i32, 1 << 20);
    let got = answers(&c.call(ApiKey::Fetch, 12, &req));
    let total: usize = got.iter().map(|(_, len)| len).sum();
    assert!(
        total <= 5 * one_batch && got[0].1 > 0,
        "max_bytes 5 batches: {got:?}"
    );
    // The broker's fetch.max.bytes caps a request asking for more.
    let req = fetch_request(-1, topic, &all, i32::MAX, i32::MAX);
    let got = answers(&c.call(ApiKey::Fetch, 12, &req));
    let total: usize = got.iter().map(|(_, len)| len).sum();
    assert!(
        total <= broker_max && total > 0,
        "fetch.max.bytes {broker_max}: {got:?}"
    );
}
