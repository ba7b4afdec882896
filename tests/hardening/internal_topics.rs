//! Hardening tests: internal topics (issue 10 item 4). A client may not write
//! `__consumer_offsets` (a forged commit once moved a group's offset after a restart), nor
//! create, delete or grow it; Metadata marks it internal.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreatePartitionsRequest, CreatePartitionsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    ProduceRequest, ProduceResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::common::*;

const OFFSETS_TOPIC: &str = "__consumer_offsets";
const OFFSETS_PARTITIONS: i32 = 3;
const INVALID_REQUEST: i16 = 42;
const GROUP: &str = "victims";
const TOPIC: &str = "orders";
const DEADLINE: Duration = Duration::from_secs(60);

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// Kafka's OffsetCommitKey v1 and OffsetCommitValue v3 for (GROUP, TOPIC, 0) at `offset`.
fn forged_commit(offset: i64) -> Vec<u8> {
    let put_str = |b: &mut Vec<u8>, s: &str| {
        b.extend_from_slice(&(s.len() as i16).to_be_bytes());
        b.extend_from_slice(s.as_bytes());
    };
    let mut key = 1i16.to_be_bytes().to_vec();
    put_str(&mut key, GROUP);
    put_str(&mut key, TOPIC);
    key.extend_from_slice(&0i32.to_be_bytes());
    let mut value = 3i16.to_be_bytes().to_vec();
    value.extend_from_slice(&offset.to_be_bytes());
    value.extend_from_slice(&(-1i32).to_be_bytes());
    put_str(&mut value, "");
    value.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
    record_batch(1_700_000_000_000, &[(Some(&key[..]), Some(&value[..]))])
}

/// One Produce (acks=-1) of the forged commit to every offsets partition; their codes.
fn produce_forged_commit(c: &mut RawClient) -> Vec<i16> {
    let batch = Bytes::from(forged_commit(999_999));
    let mut topic = TopicProduceData::default();
    topic.name = topic_name(OFFSETS_TOPIC);
    topic.partition_data = (0..OFFSETS_PARTITIONS)
        .map(|index| {
            let mut p = PartitionProduceData::default();
            p.index = index;
            p.records = Some(batch.clone());
            p
        })
        .collect();
    let mut req = ProduceRequest::default();
    req.acks = -1;
    req.timeout_ms = 10_000;
    req.topic_data = vec![topic];
    let resp: ProduceResponse = c.call(ApiKey::Produce, 9, &req);
    resp.responses
        .iter()
        .flat_map(|t| t.partition_responses.iter().map(|p| p.error_code))
        .collect()
}

fn commit(c: &mut RawClient, offset: i64) -> i16 {
    let mut p = OffsetCommitRequestPartition::default();
    p.partition_index = 0;
    p.committed_offset = offset;
    p.committed_leader_epoch = -1;
    p.committed_metadata = Some(str_bytes(""));
    let mut t = OffsetCommitRequestTopic::default();
    t.name = topic_name(TOPIC);
    t.partitions = vec![p];
    let mut req = OffsetCommitRequest::default();
    req.group_id = GroupId(str_bytes(GROUP));
    req.generation_id_or_member_epoch = -1;
    req.member_id = str_bytes("");
    req.retention_time_ms = -1;
    req.topics = vec![t];
    let resp: OffsetCommitResponse = c.call(ApiKey::OffsetCommit, 2, &req);
    resp.topics[0].partitions[0].error_code
}

/// (error, committed offset) of (GROUP, TOPIC, 0).
fn committed(c: &mut RawClient) -> (i16, i64) {
    let mut t = OffsetFetchRequestTopic::default();
    t.name = topic_name(TOPIC);
    t.partition_indexes = vec![0];
    let mut req = OffsetFetchRequest::default();
    req.group_id = GroupId(str_bytes(GROUP));
    req.topics = Some(vec![t]);
    let resp: OffsetFetchResponse = c.call(ApiKey::OffsetFetch, 1, &req);
    let p = &resp.topics[0].partitions[0];
    (resp.error_code.max(p.error_code), p.committed_offset)
}

fn wait_committed(broker: &Broker, what: &str) -> i64 {
    wait_for(
        what,
        DEADLINE,
        Duration::from_millis(100),
        || match committed(&mut broker.raw()) {
            (NONE, offset) => Some(offset),
            _ => None,
        },
    )
}

/// The broker-side refusals of the admin APIs, one request each.
fn admin_codes(c: &mut RawClient) -> (i16, i16, i16) {
    let created = c.create_topic(OFFSETS_TOPIC, 1, 1);
    let mut grow = CreatePartitionsTopic::default();
    grow.name = topic_name(OFFSETS_TOPIC);
    grow.count = OFFSETS_PARTITIONS + 1;
    let mut req = CreatePartitionsRequest::default();
    req.topics = vec![grow];
    req.timeout_ms = 30_000;
    let grown: CreatePartitionsResponse = c.call(ApiKey::CreatePartitions, 3, &req);
    let mut delete = DeleteTopicState::default();
    delete.name = Some(topic_name(OFFSETS_TOPIC));
    let mut req = DeleteTopicsRequest::default();
    req.topics = vec![delete];
    req.timeout_ms = 30_000;
    let deleted: DeleteTopicsResponse = c.call(ApiKey::DeleteTopics, 6, &req);
    (
        created,
        grown.results[0].error_code,
        deleted.responses[0].error_code,
    )
}

#[test]
fn a_forged_commit_is_refused_and_committed_offsets_survive_a_restart() {
    let mut broker = Broker::start(
        BrokerOpts::new()
            .set("offsets.topic.num.partitions", OFFSETS_PARTITIONS)
            .set("offsets.topic.replication.factor", 1),
    );
    assert_eq!(broker.raw().create_topic(TOPIC, 1, 1), NONE);
    // FindCoordinator creates the offsets topic, as the broker's own.
    wait_for(
        "a coordinator",
        DEADLINE,
        Duration::from_millis(100),
        || {
            let mut req = FindCoordinatorRequest::default();
            req.key = str_bytes(GROUP);
            let resp: FindCoordinatorResponse = broker.raw().call(ApiKey::FindCoordinator, 1, &req);
            (resp.error_code == NONE).then_some(())
        },
    );
    wait_for(
        "offset 5 committed",
        DEADLINE,
        Duration::from_millis(100),
        || (commit(&mut broker.raw(), 5) == NONE).then_some(()),
    );
    assert_eq!(wait_committed(&broker, "the commit visible"), 5);

    let codes = produce_forged_commit(&mut broker.raw());
    assert_eq!(
        codes,
        vec![INVALID_TOPIC_EXCEPTION; OFFSETS_PARTITIONS as usize]
    );
    assert_eq!(
        admin_codes(&mut broker.raw()),
        (INVALID_REQUEST, INVALID_REQUEST, INVALID_REQUEST),
        "CreateTopics, CreatePartitions and DeleteTopics of {OFFSETS_TOPIC}"
    );
    let md = broker.raw().metadata(&[OFFSETS_TOPIC], false);
    assert_eq!(md.topics[0].error_code, NONE);
    assert!(
        md.topics[0].is_internal,
        "Metadata marks {OFFSETS_TOPIC} internal"
    );
    assert_eq!(md.topics[0].partitions.len(), OFFSETS_PARTITIONS as usize);

    broker.restart();
    assert_eq!(
        wait_committed(&broker, "the commit after a restart"),
        5,
        "the group's offset survives a restart unchanged"
    );
}
