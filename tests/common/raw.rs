//! Raw Kafka protocol: frames, a blocking raw-frame client, magic-2 record batches.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest,
    MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
    create_topics_request::CreatableTopic,
    fetch_request::{FetchPartition, FetchTopic},
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
    metadata_request::MetadataRequestTopic,
    produce_request::{PartitionProduceData, TopicProduceData},
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Encodes a full frame (length prefix + header + body). The header version follows
/// `wire_version`; the body is encoded at `body_version` (differs only to send versions the
/// codec cannot encode, e.g. Metadata v99 with a v12 body).
pub fn encode_request_as<R: Encodable>(
    key: ApiKey,
    wire_version: i16,
    body_version: i16,
    corr: i32,
    body: &R,
) -> Vec<u8> {
    let mut header = RequestHeader::default();
    header.request_api_key = key as i16;
    header.request_api_version = wire_version;
    header.correlation_id = corr;
    header.client_id = Some(StrBytes::from_static_str("corelog-test"));
    let hv = key.request_header_version(wire_version.clamp(0, key.valid_versions().max));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header.encode(&mut buf, hv).expect("encode request header");
    body.encode(&mut buf, body_version)
        .expect("encode request body");
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.to_vec()
}

pub fn encode_request<R: Encodable>(key: ApiKey, version: i16, corr: i32, body: &R) -> Vec<u8> {
    encode_request_as(key, version, version, corr, body)
}

/// Prefixes `payload` with its i32 length.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 4);
    v.extend_from_slice(&(payload.len() as i32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// How a connection ended when we waited for the broker to close it.
#[derive(Debug)]
pub enum CloseOutcome {
    /// EOF or connection reset.
    Closed,
    /// The broker sent a response frame (returned) and we stopped reading.
    Response(Bytes),
    /// Neither within the deadline.
    TimedOut,
}

pub struct RawClient {
    pub stream: TcpStream,
    next_corr: i32,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        RawClient::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> RawClient {
        RawClient {
            stream,
            next_corr: 1,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Sends a request; returns its correlation id.
    pub fn send_request<R: Encodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        body: &R,
    ) -> io::Result<i32> {
        self.send_request_as(key, version, version, body)
    }

    pub fn send_request_as<R: Encodable>(
        &mut self,
        key: ApiKey,
        wire_version: i16,
        body_version: i16,
        body: &R,
    ) -> io::Result<i32> {
        let corr = self.next_corr;
        self.next_corr += 1;
        let f = encode_request_as(key, wire_version, body_version, corr, body);
        self.send_raw(&f)?;
        Ok(corr)
    }

    /// Reads one response frame (without its length prefix); `None` on EOF.
    pub fn read_frame(&mut self) -> io::Result<Option<Bytes>> {
        let mut len = [0u8; 4];
        match self.stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = i32::from_be_bytes(len);
        if !(0..=256 << 20).contains(&len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("response frame length {len}"),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        self.stream.read_exact(&mut buf)?;
        Ok(Some(Bytes::from(buf)))
    }

    /// Sends a request and returns the response body (after the response header), checking
    /// the correlation id.
    pub fn request<R: Encodable>(&mut self, key: ApiKey, version: i16, body: &R) -> Bytes {
        let corr = self
            .send_request(key, version, body)
            .unwrap_or_else(|e| panic!("send {key:?} v{version}: {e}"));
        let mut resp = self
            .read_frame()
            .unwrap_or_else(|e| panic!("read {key:?} v{version} response: {e}"))
            .unwrap_or_else(|| {
                panic!("broker closed the connection instead of answering {key:?} v{version}")
            });
        let hv = if key == ApiKey::ApiVersions {
            0
        } else {
            key.response_header_version(version)
        };
        let header = ResponseHeader::decode(&mut resp, hv)
            .unwrap_or_else(|e| panic!("decode {key:?} v{version} response header: {e}"));
        assert_eq!(
            header.correlation_id, corr,
            "{key:?} v{version}: correlation id mismatch"
        );
        resp
    }

    /// Sends a request and decodes its response.
    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        body: &Req,
    ) -> Resp {
        let mut resp = self.request(key, version, body);
        let r = Resp::decode(&mut resp, version)
            .unwrap_or_else(|e| panic!("decode {key:?} v{version} response: {e}"));
        assert!(
            !resp.has_remaining(),
            "{key:?} v{version} response has {} trailing bytes",
            resp.remaining()
        );
        r
    }

    /// Reads until the broker closes the connection, a response frame arrives, or `deadline`.
    pub fn wait_closed(&mut self, deadline: Duration) -> CloseOutcome {
        let start = Instant::now();
        self.stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut acc: Vec<u8> = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    eprintln!(
                        "[harness] connection closed by broker after {:?}",
                        start.elapsed()
                    );
                    return CloseOutcome::Closed;
                }
                Ok(n) => {
                    acc.extend_from_slice(&buf[..n]);
                    if acc.len() >= 4 {
                        let len = i32::from_be_bytes(acc[..4].try_into().unwrap());
                        if len >= 0 && acc.len() >= 4 + len as usize {
                            eprintln!(
                                "[harness] broker answered ({len} bytes) after {:?}",
                                start.elapsed()
                            );
                            return CloseOutcome::Response(Bytes::copy_from_slice(
                                &acc[4..4 + len as usize],
                            ));
                        }
                    }
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut
                        || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!(
                        "[harness] connection ended with {e} after {:?}",
                        start.elapsed()
                    );
                    return CloseOutcome::Closed;
                }
            }
            if start.elapsed() > deadline {
                return CloseOutcome::TimedOut;
            }
        }
    }

    // --- typed helpers -----------------------------------------------------------------------

    pub fn api_versions(&mut self, version: i16) -> ApiVersionsResponse {
        let mut req = ApiVersionsRequest::default();
        if version >= 3 {
            req.client_software_name = StrBytes::from_static_str("corelog-test");
            req.client_software_version = StrBytes::from_static_str("0.1");
        }
        self.call(ApiKey::ApiVersions, version, &req)
    }

    /// Metadata v11 for `topics`.
    pub fn metadata(&mut self, topics: &[&str], auto_create: bool) -> MetadataResponse {
        let mut req = MetadataRequest::default();
        req.topics = Some(
            topics
                .iter()
                .map(|t| {
                    let mut mt = MetadataRequestTopic::default();
                    mt.name = Some(topic_name(t));
                    mt
                })
                .collect(),
        );
        req.allow_auto_topic_creation = auto_create;
        self.call(ApiKey::Metadata, 11, &req)
    }

    /// CreateTopics v5 for one topic; returns the topic's error code.
    pub fn create_topic(&mut self, name: &str, partitions: i32, replication: i16) -> i16 {
        let resp = self.create_topics_resp(name, partitions, replication);
        assert_eq!(resp.topics.len(), 1, "CreateTopics: {resp:?}");
        let t = &resp.topics[0];
        eprintln!(
            "[harness] CreateTopics {:?} p={partitions} rf={replication}: error {} {:?}",
            truncate(name, 40),
            t.error_code,
            t.error_message
        );
        t.error_code
    }

    pub fn create_topics_resp(
        &mut self,
        name: &str,
        partitions: i32,
        replication: i16,
    ) -> CreateTopicsResponse {
        let mut t = CreatableTopic::default();
        t.name = topic_name(name);
        t.num_partitions = partitions;
        t.replication_factor = replication;
        let mut req = CreateTopicsRequest::default();
        req.topics = vec![t];
        req.timeout_ms = 30_000;
        self.call(ApiKey::CreateTopics, 5, &req)
    }

    /// Produce v9 of one batch to one partition.
    pub fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        batch: Vec<u8>,
        acks: i16,
    ) -> ProduceResponse {
        let mut pd = PartitionProduceData::default();
        pd.index = partition;
        pd.records = Some(Bytes::from(batch));
        let mut td = TopicProduceData::default();
        td.name = topic_name(topic);
        td.partition_data = vec![pd];
        let mut req = ProduceRequest::default();
        req.acks = acks;
        req.timeout_ms = 30_000;
        req.topic_data = vec![td];
        self.call(ApiKey::Produce, 9, &req)
    }

    /// Produce v9 of one batch; returns (error code, base offset) of the partition.
    pub fn produce_one(&mut self, topic: &str, partition: i32, batch: Vec<u8>) -> (i16, i64) {
        let resp = self.produce(topic, partition, batch, -1);
        assert_eq!(resp.responses.len(), 1, "Produce: {resp:?}");
        let t = &resp.responses[0];
        assert_eq!(t.partition_responses.len(), 1, "Produce: {resp:?}");
        let p = &t.partition_responses[0];
        assert_eq!(p.index, partition, "Produce: {resp:?}");
        (p.error_code, p.base_offset)
    }

    /// ListOffsets v6 for one partition; returns (error code, offset, timestamp).
    pub fn list_offset(&mut self, topic: &str, partition: i32, timestamp: i64) -> (i16, i64, i64) {
        self.list_offset_v(6, topic, partition, timestamp)
    }

    /// The advertised (min, max) of `key`, from an ApiVersions v3 round trip.
    pub fn advertised(&mut self, key: ApiKey) -> Option<(i16, i16)> {
        self.api_versions(3)
            .api_keys
            .iter()
            .find(|k| k.api_key == key as i16)
            .map(|k| (k.min_version, k.max_version))
    }

    /// ListOffsets of one partition at `version`; returns (error code, offset, timestamp).
    pub fn list_offset_v(
        &mut self,
        version: i16,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> (i16, i64, i64) {
        let mut p = ListOffsetsPartition::default();
        p.partition_index = partition;
        p.current_leader_epoch = -1;
        p.timestamp = timestamp;
        let mut t = ListOffsetsTopic::default();
        t.name = topic_name(topic);
        t.partitions = vec![p];
        let mut req = ListOffsetsRequest::default();
        req.replica_id = (-1).into();
        req.isolation_level = 0;
        req.topics = vec![t];
        let resp: ListOffsetsResponse = self.call(ApiKey::ListOffsets, version, &req);
        assert_eq!(resp.topics.len(), 1, "ListOffsets: {resp:?}");
        assert_eq!(resp.topics[0].partitions.len(), 1, "ListOffsets: {resp:?}");
        let r = &resp.topics[0].partitions[0];
        (r.error_code, r.offset, r.timestamp)
    }

    /// Fetch v12 (topics by name) of one partition.
    pub fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait_ms: i32,
    ) -> FetchResponse {
        let mut p = FetchPartition::default();
        p.partition = partition;
        p.current_leader_epoch = -1;
        p.fetch_offset = offset;
        p.last_fetched_epoch = -1;
        p.log_start_offset = -1;
        p.partition_max_bytes = 1 << 20;
        let mut t = FetchTopic::default();
        t.topic = topic_name(topic);
        t.partitions = vec![p];
        let mut req = FetchRequest::default();
        req.replica_id = (-1).into();
        req.max_wait_ms = max_wait_ms;
        req.min_bytes = 1;
        req.max_bytes = 4 << 20;
        req.isolation_level = 0;
        req.session_id = 0;
        req.session_epoch = -1;
        req.topics = vec![t];
        self.call(ApiKey::Fetch, 12, &req)
    }
}

pub fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_string()
    } else {
        format!("{}...({} chars)", &s[..n], s.len())
    }
}

// ---------------------------------------------------------------------------------------------
// Record batches (magic 2)
// ---------------------------------------------------------------------------------------------

pub fn put_varint(buf: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if z < 0x80 {
            buf.push(z as u8);
            return;
        }
        buf.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

/// Builds an uncompressed magic-2 record batch. Records get timestamp
/// `base_timestamp + i` and offset delta `i`.
/// A record's (key, value); `None` is a null key/value.
pub type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

pub fn record_batch(base_timestamp: i64, records: &[KeyValue<'_>]) -> Vec<u8> {
    assert!(!records.is_empty());
    let mut recs = Vec::new();
    for (i, (key, value)) in records.iter().enumerate() {
        let mut r = Vec::new();
        r.push(0u8); // attributes
        put_varint(&mut r, i as i64); // timestamp delta
        put_varint(&mut r, i as i64); // offset delta
        match key {
            Some(k) => {
                put_varint(&mut r, k.len() as i64);
                r.extend_from_slice(k);
            }
            None => put_varint(&mut r, -1),
        }
        match value {
            Some(v) => {
                put_varint(&mut r, v.len() as i64);
                r.extend_from_slice(v);
            }
            None => put_varint(&mut r, -1),
        }
        put_varint(&mut r, 0); // headers
        put_varint(&mut recs, r.len() as i64);
        recs.extend_from_slice(&r);
    }
    let n = records.len() as i32;
    let mut b = Vec::with_capacity(61 + recs.len());
    b.extend_from_slice(&0i64.to_be_bytes()); // base offset
    b.extend_from_slice(&0i32.to_be_bytes()); // batch length, patched below
    b.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    b.push(2); // magic
    b.extend_from_slice(&0u32.to_be_bytes()); // crc, patched below
    b.extend_from_slice(&0i16.to_be_bytes()); // attributes
    b.extend_from_slice(&(n - 1).to_be_bytes()); // last offset delta
    b.extend_from_slice(&base_timestamp.to_be_bytes());
    b.extend_from_slice(&(base_timestamp + n as i64 - 1).to_be_bytes()); // max timestamp
    b.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    b.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    b.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    b.extend_from_slice(&n.to_be_bytes());
    b.extend_from_slice(&recs);
    let batch_len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&batch_len.to_be_bytes());
    fix_crc(&mut b);
    b
}

/// Recomputes the CRC of a magic-2 batch (crc32c over attributes..end).
pub fn fix_crc(b: &mut [u8]) {
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Length of a magic-2 batch header (records start here).
pub const BATCH_HEADER_LEN: usize = 61;

/// Number of records in the batches of a Fetch response's record set (walks batch headers).
pub fn count_records(mut records: &[u8]) -> (usize, Vec<i64>) {
    let mut n = 0usize;
    let mut bases = Vec::new();
    while records.len() >= 61 {
        let base = i64::from_be_bytes(records[..8].try_into().unwrap());
        let len = i32::from_be_bytes(records[8..12].try_into().unwrap()) as usize;
        if records.len() < 12 + len {
            break; // partial batch at the end of a fetch
        }
        let cnt = i32::from_be_bytes(records[57..61].try_into().unwrap());
        n += cnt as usize;
        bases.push(base);
        records = &records[12 + len..];
    }
    (n, bases)
}
