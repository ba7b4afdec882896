//! A tiny in-memory Kafka broker for end-to-end tests of the perf tool
//! (single node, no persistence). It validates every produced batch with
//! the kafka-protocol crate's decoder (CRC included).

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
use kafka_protocol::messages::create_topics_request::CreateTopicsRequest;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::fetch_response::{
    FetchResponse, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::list_offsets_request::ListOffsetsRequest;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ApiKey, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes, decode_request_header_from_buffer};
use kafka_protocol::records::RecordBatchDecoder;

use corelog::client::read_frame;

#[derive(Default)]
pub struct Log {
    /// (base offset, batch bytes with the offset assigned)
    pub batches: Vec<(i64, Bytes)>,
    pub next: i64,
}

#[derive(Default)]
pub struct MockState {
    pub topics: Mutex<HashMap<String, Vec<Log>>>,
    /// Answer this many partition produce results with NOT_LEADER_OR_FOLLOWER.
    pub fail_not_leader: AtomicU32,
    pub produce_requests: AtomicU64,
    pub max_partitions_per_request: AtomicU64,
}

pub struct MockBroker {
    pub addr: String,
    pub state: Arc<MockState>,
}

impl MockBroker {
    pub fn start() -> MockBroker {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(MockState::default());
        let (st, port) = (Arc::clone(&state), listener.local_addr().unwrap().port());
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let st = Arc::clone(&st);
                std::thread::spawn(move || {
                    let _ = serve(s, &st, port);
                });
            }
        });
        MockBroker { addr, state }
    }

    pub fn records(&self, topic: &str) -> Vec<u64> {
        let t = self.state.topics.lock().unwrap();
        t.get(topic)
            .map(|ps| ps.iter().map(|l| l.next as u64).collect())
            .unwrap_or_default()
    }
}

fn respond<T: Encodable>(
    s: &mut TcpStream,
    api: ApiKey,
    v: i16,
    corr: i32,
    body: &T,
) -> Result<()> {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    ResponseHeader::default()
        .with_correlation_id(corr)
        .encode(&mut buf, api.response_header_version(v))?;
    body.encode(&mut buf, v)?;
    let n = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&n.to_be_bytes());
    s.write_all(&buf)?;
    Ok(())
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn serve(mut s: TcpStream, st: &MockState, port: u16) -> Result<()> {
    loop {
        let mut frame = read_frame(&mut s)?;
        let h = decode_request_header_from_buffer(&mut frame)?;
        let v = h.request_api_version;
        let corr = h.correlation_id;
        let api = ApiKey::try_from(h.request_api_key).map_err(|_| anyhow::anyhow!("api"))?;
        match api {
            ApiKey::ApiVersions => {
                let keys = [
                    (0, 3, 9),
                    (1, 4, 12),
                    (2, 1, 7),
                    (3, 1, 12),
                    (18, 0, 3),
                    (19, 2, 7),
                ];
                let resp = ApiVersionsResponse::default().with_api_keys(
                    keys.iter()
                        .map(|&(k, a, b)| {
                            ApiVersion::default()
                                .with_api_key(k)
                                .with_min_version(a)
                                .with_max_version(b)
                        })
                        .collect(),
                );
                respond(&mut s, api, v, corr, &resp)?;
            }
            ApiKey::Metadata => {
                let req = MetadataRequest::decode(&mut frame, v)?;
                let topics = st.topics.lock().unwrap();
                let mut out = Vec::new();
                for t in req.topics.unwrap_or_default() {
                    let n = t.name.unwrap_or_default().0.as_str().to_string();
                    let mut rt = MetadataResponseTopic::default().with_name(Some(name(&n)));
                    match topics.get(&n) {
                        None => rt = rt.with_error_code(3),
                        Some(ps) => {
                            rt = rt.with_partitions(
                                (0..ps.len() as i32)
                                    .map(|i| {
                                        MetadataResponsePartition::default()
                                            .with_partition_index(i)
                                            .with_leader_id(0.into())
                                            .with_replica_nodes(vec![0.into()])
                                            .with_isr_nodes(vec![0.into()])
                                    })
                                    .collect(),
                            )
                        }
                    }
                    out.push(rt);
                }
                let resp = MetadataResponse::default()
                    .with_brokers(vec![
                        MetadataResponseBroker::default()
                            .with_node_id(0.into())
                            .with_host(StrBytes::from_static_str("127.0.0.1"))
                            .with_port(port as i32),
                    ])
                    .with_controller_id(0.into())
                    .with_topics(out);
                drop(topics);
                respond(&mut s, api, v, corr, &resp)?;
            }
            ApiKey::CreateTopics => {
                let req = CreateTopicsRequest::decode(&mut frame, v)?;
                let mut topics = st.topics.lock().unwrap();
                let mut res = Vec::new();
                for t in req.topics {
                    let n = t.name.0.as_str().to_string();
                    let code = if topics.contains_key(&n) {
                        36
                    } else {
                        topics.insert(
                            n.clone(),
                            (0..t.num_partitions).map(|_| Log::default()).collect(),
                        );
                        0
                    };
                    res.push(
                        CreatableTopicResult::default()
                            .with_name(name(&n))
                            .with_error_code(code),
                    );
                }
                drop(topics);
                respond(
                    &mut s,
                    api,
                    v,
                    corr,
                    &CreateTopicsResponse::default().with_topics(res),
                )?;
            }
            ApiKey::Produce => {
                let req = ProduceRequest::decode(&mut frame, v)?;
                st.produce_requests.fetch_add(1, Ordering::Relaxed);
                let mut out = Vec::new();
                let mut topics = st.topics.lock().unwrap();
                for t in req.topic_data {
                    st.max_partitions_per_request
                        .fetch_max(t.partition_data.len() as u64, Ordering::Relaxed);
                    let n = t.name.0.as_str().to_string();
                    let mut prs = Vec::new();
                    for p in t.partition_data {
                        let mut pr = PartitionProduceResponse::default().with_index(p.index);
                        let log = topics
                            .get_mut(&n)
                            .and_then(|ps| ps.get_mut(p.index as usize));
                        let failing = st
                            .fail_not_leader
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| {
                                x.checked_sub(1)
                            })
                            .is_ok();
                        match (log, p.records) {
                            _ if failing => pr = pr.with_error_code(6),
                            (None, _) => pr = pr.with_error_code(3),
                            (Some(log), Some(rec)) => {
                                let mut b = rec.clone();
                                let set = RecordBatchDecoder::decode(&mut b)?;
                                if !b.is_empty() {
                                    bail!("more than one batch");
                                }
                                let mut data = rec.to_vec();
                                data[0..8].copy_from_slice(&log.next.to_be_bytes());
                                pr = pr.with_base_offset(log.next);
                                log.batches.push((log.next, Bytes::from(data)));
                                log.next += set.records.len() as i64;
                            }
                            (Some(_), None) => pr = pr.with_error_code(87),
                        }
                        prs.push(pr);
                    }
                    out.push(
                        TopicProduceResponse::default()
                            .with_name(name(&n))
                            .with_partition_responses(prs),
                    );
                }
                drop(topics);
                if req.acks != 0 {
                    respond(
                        &mut s,
                        api,
                        v,
                        corr,
                        &ProduceResponse::default().with_responses(out),
                    )?;
                }
            }
            ApiKey::ListOffsets => {
                let req = ListOffsetsRequest::decode(&mut frame, v)?;
                let topics = st.topics.lock().unwrap();
                let mut out = Vec::new();
                for t in req.topics {
                    let n = t.name.0.as_str().to_string();
                    let ps = t
                        .partitions
                        .iter()
                        .map(|p| {
                            let end = topics
                                .get(&n)
                                .and_then(|l| l.get(p.partition_index as usize))
                                .map_or(0, |l| l.next);
                            ListOffsetsPartitionResponse::default()
                                .with_partition_index(p.partition_index)
                                .with_offset(if p.timestamp == -2 { 0 } else { end })
                        })
                        .collect();
                    out.push(
                        ListOffsetsTopicResponse::default()
                            .with_name(name(&n))
                            .with_partitions(ps),
                    );
                }
                drop(topics);
                respond(
                    &mut s,
                    api,
                    v,
                    corr,
                    &ListOffsetsResponse::default().with_topics(out),
                )?;
            }
            ApiKey::Fetch => {
                let req = FetchRequest::decode(&mut frame, v)?;
                let mut out = Vec::new();
                let mut any = false;
                {
                    let topics = st.topics.lock().unwrap();
                    for t in &req.topics {
                        let n = t.topic.0.as_str().to_string();
                        let mut ps = Vec::new();
                        for p in &t.partitions {
                            let log = topics.get(&n).and_then(|l| l.get(p.partition as usize));
                            let mut data = Vec::new();
                            let mut hw = 0;
                            if let Some(log) = log {
                                hw = log.next;
                                for (base, b) in &log.batches {
                                    let last = base
                                        + i32::from_be_bytes(b[23..27].try_into().unwrap()) as i64;
                                    if last >= p.fetch_offset
                                        && (data.is_empty()
                                            || data.len() + b.len()
                                                <= p.partition_max_bytes as usize)
                                    {
                                        data.extend_from_slice(b);
                                    }
                                }
                            }
                            any |= !data.is_empty();
                            ps.push(
                                PartitionData::default()
                                    .with_partition_index(p.partition)
                                    .with_high_watermark(hw)
                                    .with_last_stable_offset(hw)
                                    .with_log_start_offset(0)
                                    .with_records(Some(Bytes::from(data))),
                            );
                        }
                        out.push(
                            FetchableTopicResponse::default()
                                .with_topic(name(&n))
                                .with_partitions(ps),
                        );
                    }
                }
                if !any {
                    std::thread::sleep(Duration::from_millis(20));
                }
                respond(
                    &mut s,
                    api,
                    v,
                    corr,
                    &FetchResponse::default().with_responses(out),
                )?;
            }
            other => bail!("mock broker: unsupported {other:?}"),
        }
    }
}
