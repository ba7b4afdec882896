//! Test harness shared by the integration tests: starts the real `corelog` binary on a free
//! 127.0.0.1 port with a temporary data directory, speaks raw Kafka frames to it, and wraps
//! the librdkafka clients the tests use.
//!
//! Rules followed here: every wait is a polling loop with a generous deadline that prints how
//! long it took; a `Broker` is always killed on drop (also when a test panics), and its log
//! tail is printed when the test is failing.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
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
use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::TopicPartitionList;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

/// Deadline for a broker to become ready after it is spawned.
pub const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Deadline for a clean shutdown after SIGTERM.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);
/// A long-running client loop fails when it makes no progress for this long.
pub const STALL_DEADLINE: Duration = Duration::from_secs(90);

// Kafka error codes used by the tests.
pub const NONE: i16 = 0;
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
pub const CORRUPT_MESSAGE: i16 = 2;
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
pub const UNSUPPORTED_VERSION: i16 = 35;
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
pub const INVALID_REPLICATION_FACTOR: i16 = 38;
pub const INVALID_RECORD: i16 = 87;

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// Polls `f` every `interval` until it returns `Some`, or panics after `deadline`.
/// Prints how long the wait took.
pub fn wait_for<T>(
    what: &str,
    deadline: Duration,
    interval: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            eprintln!("[harness] {what}: ok after {:?}", start.elapsed());
            return v;
        }
        if start.elapsed() > deadline {
            panic!("[harness] {what}: not done after {:?}", start.elapsed());
        }
        std::thread::sleep(interval);
    }
}

// ---------------------------------------------------------------------------------------------
// Broker process
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct BrokerOpts {
    pub cores: usize,
    pub sets: Vec<(String, String)>,
    /// Use this data directory instead of a fresh temporary one.
    pub data_dir: Option<PathBuf>,
}

impl Default for BrokerOpts {
    fn default() -> Self {
        BrokerOpts {
            cores: 2,
            sets: Vec::new(),
            data_dir: None,
        }
    }
}

impl BrokerOpts {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cores(mut self, n: usize) -> Self {
        self.cores = n;
        self
    }
    pub fn set(mut self, key: &str, value: impl ToString) -> Self {
        self.sets.push((key.to_string(), value.to_string()));
        self
    }
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }
}

pub struct Broker {
    child: Option<Child>,
    port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    opts: BrokerOpts,
    starts: u32,
    _tmp: tempfile::TempDir,
}

/// Picks a free port on 127.0.0.1, below the ephemeral range (see `free_ports`): a broker
/// restarted on it must not find it taken as some connection's source port.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

impl Broker {
    /// Starts a broker and waits until it answers ApiVersions.
    pub fn start(opts: BrokerOpts) -> Broker {
        let mut b = Broker::unstarted(opts, free_port());
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let start = Instant::now();
        self.spawn_nowait();
        self.wait_ready(start);
    }

    fn wait_ready(&mut self, start: Instant) {
        let addr = self.addr();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "[harness] corelog exited during startup with {status}; log:\n{}",
                    self.log_tail(60)
                );
            }
            if api_versions_ok(addr, Duration::from_secs(5)) {
                eprintln!(
                    "[harness] broker ready on {addr} after {:?} (start #{})",
                    start.elapsed(),
                    self.starts
                );
                return;
            }
            if start.elapsed() > READY_DEADLINE {
                panic!(
                    "[harness] broker on {addr} not ready after {:?}; log:\n{}",
                    start.elapsed(),
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// True while the process has not exited.
    pub fn is_alive(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => c.try_wait().unwrap().is_none(),
        }
    }

    /// Panics (with the log tail) if the broker process exited.
    pub fn assert_alive(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Some(status) = c.try_wait().unwrap()
        {
            panic!("corelog died with {status}; log:\n{}", self.log_tail(80));
        }
        assert!(self.child.is_some(), "broker is not running");
    }

    /// Panics unless the process is alive and a fresh connection gets an ApiVersions answer.
    pub fn assert_serving(&mut self) {
        self.assert_alive();
        let addr = self.addr();
        let start = Instant::now();
        let ok = api_versions_ok(addr, Duration::from_secs(30));
        if !ok {
            self.assert_alive();
            panic!(
                "broker alive but a fresh connection got no ApiVersions answer within {:?}; log:\n{}",
                start.elapsed(),
                self.log_tail(60)
            );
        }
        eprintln!(
            "[harness] broker still serves a fresh connection ({:?})",
            start.elapsed()
        );
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().unwrap().is_none() {
                unsafe {
                    libc::kill(c.id() as i32, libc::SIGKILL);
                }
            }
            let status = c.wait().expect("wait after SIGKILL");
            eprintln!("[harness] broker killed with SIGKILL ({status})");
        }
    }

    /// SIGTERM, then wait (with a deadline) for the process to exit. Returns its status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal`, then waits (with a deadline) for the process to exit. Returns its status.
    pub fn stop_with(&mut self, signal: i32) -> ExitStatus {
        let mut c = self.child.take().expect("broker not running");
        let start = Instant::now();
        if let Some(status) = c.try_wait().unwrap() {
            panic!(
                "broker had already exited with {status}; log:\n{}",
                self.log_tail(60)
            );
        }
        unsafe {
            libc::kill(c.id() as i32, signal);
        }
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                eprintln!(
                    "[harness] broker exited after signal {signal} in {:?} with {status}",
                    start.elapsed()
                );
                return status;
            }
            if start.elapsed() > SHUTDOWN_DEADLINE {
                unsafe {
                    libc::kill(c.id() as i32, libc::SIGKILL);
                }
                let _ = c.wait();
                panic!(
                    "broker did not exit within {:?} of signal {signal}; log:\n{}",
                    SHUTDOWN_DEADLINE,
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the broker again on the same port and data dir (terminating it first if running).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.terminate();
            assert!(status.success(), "clean shutdown failed: {status}");
        }
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A raw-protocol connection to this broker.
    pub fn raw(&self) -> RawClient {
        RawClient::connect(self.addr())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take()
            && matches!(c.try_wait(), Ok(None))
        {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGKILL);
            }
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- corelog log tail ({}) -----\n{}\n----- end of log -----",
                self.log_path.display(),
                self.log_tail(80)
            );
        }
    }
}

/// One ApiVersions v0 round trip on a fresh connection.
pub fn api_versions_ok(addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let mut c = RawClient::from_stream(stream);
    let corr = match c.send_request(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default()) {
        Ok(corr) => corr,
        Err(_) => return false,
    };
    match c.read_frame() {
        Ok(Some(mut f)) if f.len() >= 6 => {
            let got = f.get_i32();
            let err = f.get_i16();
            got == corr && err == NONE
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Raw protocol
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Deterministic messages
// ---------------------------------------------------------------------------------------------

pub fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Key and value of message `i` of a run seeded with `seed`: the key names the index, the value
/// is 100-1000 bytes, starting with the index (u64 LE) followed by pseudo-random bytes.
pub fn message(seed: u64, i: u64) -> (Vec<u8>, Vec<u8>) {
    let key = format!("key-{seed}-{i}").into_bytes();
    let mut st = seed ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    let size = 100 + (splitmix64(&mut st) % 901) as usize;
    let mut value = Vec::with_capacity(size);
    value.extend_from_slice(&i.to_le_bytes());
    while value.len() < size {
        let r = splitmix64(&mut st).to_le_bytes();
        let take = (size - value.len()).min(8);
        value.extend_from_slice(&r[..take]);
    }
    (key, value)
}

/// The index a value produced by `message` carries.
pub fn index_of(value: &[u8]) -> u64 {
    u64::from_le_bytes(value[..8].try_into().expect("value shorter than 8 bytes"))
}

// ---------------------------------------------------------------------------------------------
// librdkafka clients
// ---------------------------------------------------------------------------------------------

pub fn base_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("client.id", "corelog-test")
        .set("socket.timeout.ms", "30000")
        .set("log_level", "6");
    c
}

pub fn producer_config(bootstrap: &str, acks: &str) -> ClientConfig {
    let mut c = base_config(bootstrap);
    c.set("acks", acks)
        .set("enable.idempotence", "false")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "180000")
        .set("request.timeout.ms", "30000");
    c
}

/// Consumer settings for assign()-based consumption. librdkafka's assign() requires a group.id
/// (without one it fails with "Requires a consumer with group.id configured"), so each consumer
/// gets a unique one; no group subscription is used and no offsets are committed.
pub fn consumer_config(bootstrap: &str) -> ClientConfig {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut c = base_config(bootstrap);
    c.set(
        "group.id",
        format!("corelog-test-{}-{n}", std::process::id()),
    )
    .set("enable.auto.commit", "false")
    .set("enable.auto.offset.store", "false")
    .set("auto.offset.reset", "error")
    .set("enable.partition.eof", "false")
    .set("fetch.wait.max.ms", "500");
    c
}

pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    base_config(bootstrap).create().expect("create AdminClient")
}

/// Creates a topic with rdkafka's AdminClient and waits until its metadata shows every
/// partition with a leader.
pub fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    let admin = admin(bootstrap);
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let start = Instant::now();
    let res = futures::executor::block_on(admin.create_topics(&[topic], &opts))
        .unwrap_or_else(|e| panic!("CreateTopics {name}: {e}"));
    assert_eq!(res.len(), 1);
    match &res[0] {
        Ok(_) => {}
        Err((t, code)) => panic!("CreateTopics {t}: {code:?}"),
    }
    eprintln!(
        "[harness] created topic {name} ({partitions} partitions) in {:?}",
        start.elapsed()
    );
    wait_topic_ready(bootstrap, name, partitions);
}

pub fn wait_topic_ready(bootstrap: &str, name: &str, partitions: i32) {
    let consumer: BaseConsumer = consumer_config(bootstrap).create().expect("consumer");
    wait_for(
        &format!("metadata of {name} shows {partitions} partitions with leaders"),
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let md = consumer
                .fetch_metadata(Some(name), Duration::from_secs(10))
                .ok()?;
            let t = md.topics().iter().find(|t| t.name() == name)?;
            if t.error().is_some() || t.partitions().len() != partitions as usize {
                return None;
            }
            t.partitions()
                .iter()
                .all(|p| p.leader() >= 0 && p.error().is_none())
                .then_some(())
        },
    );
}

/// A delivery report: (message index, result).
pub type Delivery = (usize, Result<(i32, i64), String>);

/// Producer context that records every delivery report.
#[derive(Clone, Default)]
pub struct Recorder {
    pub deliveries: Arc<Mutex<Vec<Delivery>>>,
}

impl ClientContext for Recorder {}

impl ProducerContext for Recorder {
    type DeliveryOpaque = usize;
    fn delivery(&self, r: &DeliveryResult<'_>, idx: usize) {
        let rec = match r {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        self.deliveries.lock().unwrap().push((idx, rec));
    }
}

/// Sends one record, waiting (by polling the producer) while librdkafka's queue is full.
pub fn send_blocking(
    producer: &BaseProducer<Recorder>,
    topic: &str,
    idx: usize,
    key: &[u8],
    value: &[u8],
) {
    let start = Instant::now();
    let mut rec = BaseRecord::with_opaque_to(topic, idx)
        .key(key)
        .payload(value);
    loop {
        match producer.send(rec) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                producer.poll(Duration::from_millis(20));
                if start.elapsed() > STALL_DEADLINE {
                    panic!("producer queue full for {:?}", start.elapsed());
                }
            }
            Err((e, _)) => panic!("send message {idx}: {e}"),
        }
    }
}

/// Produces messages `indices` of `seed` to `topic`, waits for every delivery report and
/// panics if any failed. Returns `(partition, offset)` per index (position `i - start`).
pub fn produce_messages(
    config: &ClientConfig,
    topic: &str,
    seed: u64,
    indices: std::ops::Range<u64>,
) -> Vec<(i32, i64)> {
    let rec = Recorder::default();
    let producer: BaseProducer<Recorder> = config
        .create_with_context(rec.clone())
        .expect("create producer");
    let n = (indices.end - indices.start) as usize;
    let start = Instant::now();
    for i in indices.clone() {
        let (k, v) = message(seed, i);
        send_blocking(&producer, topic, i as usize, &k, &v);
        if i.is_multiple_of(1000) {
            producer.poll(Duration::ZERO);
        }
    }
    eprintln!(
        "[harness] queued {n} messages to {topic} in {:?}",
        start.elapsed()
    );
    // Wait for all delivery reports; fail on a stall.
    let mut last = 0usize;
    let mut last_progress = Instant::now();
    loop {
        producer.poll(Duration::from_millis(100));
        let done = rec.deliveries.lock().unwrap().len();
        if done >= n {
            break;
        }
        if done != last {
            last = done;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL_DEADLINE {
            panic!(
                "producer to {topic}: {done}/{n} deliveries, none for {:?}",
                last_progress.elapsed()
            );
        }
    }
    let elapsed = start.elapsed();
    eprintln!(
        "[harness] {n} deliveries to {topic} in {elapsed:?} ({:.0} msg/s)",
        n as f64 / elapsed.as_secs_f64()
    );
    let deliveries = std::mem::take(&mut *rec.deliveries.lock().unwrap());
    let mut out = vec![(-1, -1); n];
    let mut errors = Vec::new();
    for (idx, r) in deliveries {
        match r {
            Ok(po) => out[idx - indices.start as usize] = po,
            Err(e) => errors.push((idx, e)),
        }
    }
    assert!(
        errors.is_empty(),
        "{} of {n} deliveries to {topic} failed, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(
        out.iter().all(|&(p, o)| p >= 0 && o >= 0),
        "a delivery report is missing or has no offset"
    );
    out
}

/// A consumed message.
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp: Option<i64>,
}

/// Consumes `topic` partitions from `start` up to (excluding) `end`, given as
/// `(partition, start, end)`, with an assign()ed BaseConsumer, calling `f` for every message in
/// range. Fails when no message arrives for `STALL_DEADLINE`.
pub fn consume_ranges(
    bootstrap: &str,
    topic: &str,
    ranges: &[(i32, i64, i64)],
    mut f: impl FnMut(Consumed),
) {
    let consumer: BaseConsumer = consumer_config(bootstrap).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    let mut next: HashMap<i32, (i64, i64)> = HashMap::new();
    for &(p, s, e) in ranges {
        if e > s {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(s))
                .unwrap();
            next.insert(p, (s, e));
        }
    }
    if next.is_empty() {
        return;
    }
    consumer.assign(&tpl).expect("assign");
    let total: i64 = next.values().map(|(s, e)| e - s).sum();
    let start = Instant::now();
    let mut got = 0i64;
    let mut last_progress = Instant::now();
    let mut errors = 0usize;
    let mut last_error: Option<String> = None;
    while !next.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            None => {
                if last_progress.elapsed() > STALL_DEADLINE {
                    panic!(
                        "consumer of {topic}: {got}/{total} messages, nothing for {:?}; still waiting for {next:?}; last error {last_error:?}",
                        last_progress.elapsed()
                    );
                }
            }
            Some(Err(e)) => {
                // Transient client errors (e.g. coordinator lookups) are reported here too;
                // a real problem shows up as a stall.
                errors += 1;
                if errors <= 20 {
                    eprintln!("[harness] consumer of {topic}: error {e} after {got}/{total}");
                }
                last_error = Some(e.to_string());
                if last_progress.elapsed() > STALL_DEADLINE {
                    panic!(
                        "consumer of {topic}: {got}/{total} messages, nothing for {:?}; last error {last_error:?}",
                        last_progress.elapsed()
                    );
                }
            }
            Some(Ok(m)) => {
                let p = m.partition();
                let Some(&(expect, end)) = next.get(&p) else {
                    continue;
                };
                let off = m.offset();
                if off >= end {
                    continue;
                }
                assert_eq!(
                    off, expect,
                    "{topic}[{p}]: expected offset {expect}, got {off} (offsets must be consecutive)"
                );
                f(Consumed {
                    partition: p,
                    offset: off,
                    key: m.key().map(|k| k.to_vec()),
                    value: m.payload().map(|v| v.to_vec()),
                    timestamp: m.timestamp().to_millis(),
                });
                got += 1;
                last_progress = Instant::now();
                if off + 1 >= end {
                    next.remove(&p);
                } else {
                    next.insert(p, (off + 1, end));
                }
            }
        }
    }
    let el = start.elapsed();
    eprintln!(
        "[harness] consumed {got} messages of {topic} in {el:?} ({:.0} msg/s)",
        got as f64 / el.as_secs_f64()
    );
}

/// High watermark per partition (via rdkafka's ListOffsets).
pub fn watermarks(bootstrap: &str, topic: &str, partitions: i32) -> Vec<(i64, i64)> {
    let consumer: BaseConsumer = consumer_config(bootstrap).create().expect("consumer");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("fetch_watermarks {topic}[{p}]: {e}"))
        })
        .collect()
}

/// Checks that a topic holds exactly the messages `deliveries` says (index `i` of `seed` at
/// `deliveries[i]`), byte for byte, in offset order, and that the index order per partition
/// is increasing. Returns the number checked.
pub fn verify_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    seed: u64,
    deliveries: &[(i32, i64)],
) -> usize {
    let mut expected: HashMap<(i32, i64), u64> = HashMap::with_capacity(deliveries.len());
    let mut ends = vec![0i64; partitions as usize];
    for (i, &(p, o)) in deliveries.iter().enumerate() {
        assert!(
            expected.insert((p, o), i as u64).is_none(),
            "{topic}: two deliveries reported at partition {p} offset {o}"
        );
        ends[p as usize] = ends[p as usize].max(o + 1);
    }
    let wm = watermarks(bootstrap, topic, partitions);
    for p in 0..partitions as usize {
        assert_eq!(
            wm[p],
            (0, ends[p]),
            "{topic}[{p}]: watermarks (low, high) differ from delivered offsets"
        );
        assert_eq!(
            ends[p] as usize,
            deliveries.iter().filter(|d| d.0 == p as i32).count(),
            "{topic}[{p}]: delivered offsets are not 0..n"
        );
    }
    let ranges: Vec<(i32, i64, i64)> = (0..partitions).map(|p| (p, 0, ends[p as usize])).collect();
    let mut last_index: HashMap<i32, u64> = HashMap::new();
    let mut n = 0usize;
    consume_ranges(bootstrap, topic, &ranges, |m| {
        let idx = *expected
            .get(&(m.partition, m.offset))
            .unwrap_or_else(|| panic!("{topic}[{}]@{}: unexpected message", m.partition, m.offset));
        let (k, v) = message(seed, idx);
        assert_eq!(
            m.key.as_deref(),
            Some(&k[..]),
            "{topic}[{}]@{}: key differs (message {idx})",
            m.partition,
            m.offset
        );
        let got = m.value.as_deref().unwrap_or(&[]);
        if got != &v[..] {
            panic!(
                "{topic}[{}]@{}: value differs from message {idx}: got {} bytes (index {:?}), expected {} bytes",
                m.partition,
                m.offset,
                got.len(),
                (got.len() >= 8).then(|| index_of(got)),
                v.len()
            );
        }
        if let Some(&prev) = last_index.get(&m.partition) {
            assert!(
                idx > prev,
                "{topic}[{}]@{}: message {idx} after message {prev} (production order broken)",
                m.partition,
                m.offset
            );
        }
        last_index.insert(m.partition, idx);
        n += 1;
    });
    assert_eq!(n, deliveries.len(), "{topic}: consumed count");
    n
}

/// Files (recursively) under `dir`.
pub fn list_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), md.len()));
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// Multi-broker clusters
// ---------------------------------------------------------------------------------------------

/// Deadline for a cluster (or one restarted member) to be ready.
pub const CLUSTER_READY_DEADLINE: Duration = Duration::from_secs(60);
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;

impl Broker {
    /// A broker that is not started yet: `opts.cores` cores, Kafka port `port`, a fresh temp
    /// dir for its log (and its data, unless `opts.data_dir` names one).
    fn unstarted(opts: BrokerOpts, port: u16) -> Broker {
        let tmp = tempfile::Builder::new()
            .prefix("corelog-test-")
            .tempdir()
            .expect("tempdir");
        let data_dir = match &opts.data_dir {
            Some(d) => d.clone(),
            None => tmp.path().join("data"),
        };
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        let log_path = tmp.path().join("broker.log");
        Broker {
            child: None,
            port,
            data_dir,
            log_path,
            opts,
            starts: 0,
            _tmp: tmp,
        }
    }

    /// Like `spawn`, without waiting for readiness (cluster members only answer usefully once
    /// a quorum of them runs).
    fn spawn_nowait(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open broker log");
        writeln!(
            log,
            "===== corelog start #{} on port {} =====",
            self.starts, self.port
        )
        .unwrap();
        let log2 = log.try_clone().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_corelog"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--cores")
            .arg(self.opts.cores.to_string());
        for (k, v) in &self.opts.sets {
            cmd.arg("--set").arg(format!("{k}={v}"));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log2))
            .stderr(Stdio::from(log));
        eprintln!("[harness] spawning {cmd:?}");
        self.child = Some(cmd.spawn().expect("spawn corelog"));
    }

    /// Panics with the log tail if the process exited.
    fn check_not_exited(&mut self, what: &str) {
        if let Some(c) = self.child.as_mut()
            && let Some(status) = c.try_wait().unwrap()
        {
            self.child = None;
            panic!(
                "[harness] {what}: corelog on port {} exited with {status}; log:\n{}",
                self.port,
                self.log_tail(80)
            );
        }
    }
}

/// Free 127.0.0.1 ports, distinct from each other (every listener is held until all are
/// picked). They are taken below the kernel's ephemeral range when there is room: a member
/// restarted on its old ports must not find one of them taken as the source port of some
/// outgoing connection (peers keep reconnecting to a dead voter).
pub fn free_ports(n: usize) -> Vec<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(n);
    if ephemeral_low > 12_000 {
        let mut x = u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        let span = u64::from(ephemeral_low - 10_000);
        for _ in 0..1000 {
            if listeners.len() == n {
                break;
            }
            let port = 10_000 + (splitmix64(&mut x) % span) as u16;
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                listeners.push(l);
            }
        }
    }
    while listeners.len() < n {
        listeners.push(TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"));
    }
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Metadata v11 from the broker at `addr` on a fresh connection, without panicking: `topics`
/// `None` asks for every topic. Never auto-creates.
pub fn try_metadata(
    addr: SocketAddr,
    topics: Option<&[&str]>,
    timeout: Duration,
) -> io::Result<MetadataResponse> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let mut c = RawClient::from_stream(stream);
    let mut req = MetadataRequest::default();
    req.topics = topics.map(|ts| {
        ts.iter()
            .map(|t| {
                let mut mt = MetadataRequestTopic::default();
                mt.name = Some(topic_name(t));
                mt
            })
            .collect()
    });
    req.allow_auto_topic_creation = false;
    let corr = c.send_request(ApiKey::Metadata, 11, &req)?;
    let mut resp = c
        .read_frame()?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed"))?;
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let header = ResponseHeader::decode(&mut resp, ApiKey::Metadata.response_header_version(11))
        .map_err(|e| invalid(format!("metadata response header: {e}")))?;
    if header.correlation_id != corr {
        return Err(invalid(format!(
            "correlation id {} != {corr}",
            header.correlation_id
        )));
    }
    MetadataResponse::decode(&mut resp, 11).map_err(|e| invalid(format!("metadata: {e}")))
}

/// The broker ids a Metadata response lists, sorted.
pub fn listed_brokers(md: &MetadataResponse) -> Vec<i32> {
    let mut ids: Vec<i32> = md.brokers.iter().map(|b| b.node_id.0).collect();
    ids.sort_unstable();
    ids
}

/// One partition as Metadata shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionView {
    pub error: i16,
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline: Vec<i32>,
}

/// Topic name -> partitions (by index) of a Metadata response; topics with an error code
/// (e.g. unknown) are left out.
pub fn topic_views(
    md: &MetadataResponse,
) -> std::collections::BTreeMap<String, Vec<PartitionView>> {
    let mut out = std::collections::BTreeMap::new();
    for t in &md.topics {
        if t.error_code != NONE {
            continue;
        }
        let Some(name) = &t.name else { continue };
        let mut parts: Vec<(i32, PartitionView)> = t
            .partitions
            .iter()
            .map(|p| {
                (
                    p.partition_index,
                    PartitionView {
                        error: p.error_code,
                        leader: p.leader_id.0,
                        leader_epoch: p.leader_epoch,
                        replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                        isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                        offline: p.offline_replicas.iter().map(|b| b.0).collect(),
                    },
                )
            })
            .collect();
        parts.sort_by_key(|(i, _)| *i);
        out.insert(
            name.0.to_string(),
            parts.into_iter().map(|(_, v)| v).collect(),
        );
    }
    out
}

#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub brokers: usize,
    pub cores: usize,
    /// `--set`s given to every broker (after node.id and controller.quorum.voters).
    pub sets: Vec<(String, String)>,
}

impl ClusterOpts {
    pub fn new(brokers: usize) -> Self {
        ClusterOpts {
            brokers,
            cores: 1,
            sets: Vec::new(),
        }
    }
    pub fn set(mut self, key: &str, value: impl ToString) -> Self {
        self.sets.push((key.to_string(), value.to_string()));
        self
    }
}

/// N brokers, every one a controller voter: member `i` (0-based) has node id `i + 1`.
/// Dropping it kills every member (and prints their log tails when the test is failing).
pub struct Cluster {
    pub brokers: Vec<Broker>,
    pub controller_ports: Vec<u16>,
    pub voters: String,
}

impl Cluster {
    /// Starts `n` brokers with default settings (`--cores 1`) and waits until it is ready.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(ClusterOpts::new(n))
    }

    pub fn start_with(opts: ClusterOpts) -> Cluster {
        let n = opts.brokers;
        let ports = free_ports(2 * n);
        let (kafka_ports, controller_ports) = ports.split_at(n);
        let voters = controller_ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let brokers = (0..n)
            .map(|i| {
                let mut bo = BrokerOpts::new()
                    .cores(opts.cores)
                    .set("node.id", i + 1)
                    .set("controller.quorum.voters", &voters);
                bo.sets.extend(opts.sets.iter().cloned());
                Broker::unstarted(bo, kafka_ports[i])
            })
            .collect();
        let mut c = Cluster {
            brokers,
            controller_ports: controller_ports.to_vec(),
            voters,
        };
        let start = Instant::now();
        for b in &mut c.brokers {
            b.spawn_nowait();
        }
        c.wait_ready(start, "cluster start");
        c
    }

    pub fn len(&self) -> usize {
        self.brokers.len()
    }

    pub fn node_id(i: usize) -> i32 {
        i as i32 + 1
    }

    pub fn index_of(node_id: i32) -> usize {
        usize::try_from(node_id - 1).expect("node id >= 1")
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.brokers[i].addr()
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.brokers[i].child.is_some()
    }

    /// Indices of the members whose process runs (as far as the harness knows).
    pub fn running(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.is_running(i)).collect()
    }

    /// Node ids of the running members, sorted.
    pub fn running_ids(&self) -> Vec<i32> {
        self.running().into_iter().map(Cluster::node_id).collect()
    }

    /// Comma-separated addresses of the running members.
    pub fn bootstrap(&self) -> String {
        self.running()
            .into_iter()
            .map(|i| self.brokers[i].bootstrap())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Panics (with the log tail) if a member the harness started has exited.
    pub fn assert_running_alive(&mut self) {
        for b in &mut self.brokers {
            if b.child.is_some() {
                b.assert_alive();
            }
        }
    }

    /// Waits until every running member answers ApiVersions and its Metadata lists exactly the
    /// running members and names a running member as the active controller.
    fn wait_ready(&mut self, start: Instant, what: &str) {
        let expected = self.running_ids();
        let mut last: Vec<String> = Vec::new();
        loop {
            last.clear();
            let mut ready = true;
            for i in self.running() {
                self.brokers[i].check_not_exited(what);
                let addr = self.addr(i);
                if !api_versions_ok(addr, Duration::from_secs(5)) {
                    last.push(format!("node {}: no ApiVersions answer", i + 1));
                    ready = false;
                    continue;
                }
                match try_metadata(addr, Some(&[]), Duration::from_secs(5)) {
                    // A restarted member lists the brokers of its persisted metadata at
                    // once; an active controller it knows of means it rejoined the quorum.
                    Ok(md)
                        if listed_brokers(&md) == expected
                            && expected.contains(&md.controller_id.0) => {}
                    Ok(md) => {
                        last.push(format!(
                            "node {}: lists brokers {:?}, controller {}",
                            i + 1,
                            listed_brokers(&md),
                            md.controller_id.0
                        ));
                        ready = false;
                    }
                    Err(e) => {
                        last.push(format!("node {}: Metadata failed: {e}", i + 1));
                        ready = false;
                    }
                }
            }
            if ready {
                eprintln!(
                    "[harness] {what}: brokers {expected:?} ready after {:?}",
                    start.elapsed()
                );
                return;
            }
            if start.elapsed() > CLUSTER_READY_DEADLINE {
                panic!(
                    "[harness] {what}: brokers {expected:?} not ready after {:?}: {last:?}",
                    start.elapsed()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL member `i`.
    pub fn kill9(&mut self, i: usize) {
        eprintln!("[harness] kill -9 node {}", i + 1);
        self.brokers[i].kill9();
    }

    /// SIGTERM member `i`, waiting for it to exit; returns its status.
    pub fn terminate(&mut self, i: usize) -> ExitStatus {
        eprintln!("[harness] terminating node {}", i + 1);
        self.brokers[i].terminate()
    }

    /// Starts member `i` again (same ports and data dir; terminating it first if it runs) and
    /// waits until every running member lists every running member.
    pub fn restart(&mut self, i: usize) {
        if self.is_running(i) {
            let status = self.terminate(i);
            assert!(
                status.success(),
                "clean shutdown of node {} failed: {status}",
                i + 1
            );
        }
        let start = Instant::now();
        self.brokers[i].spawn_nowait();
        self.wait_ready(start, &format!("restart of node {}", i + 1));
    }

    /// Starts the stopped `members` together (a quorum may need several of them) and waits
    /// until every running member lists every running member.
    pub fn start_members(&mut self, members: &[usize]) {
        let start = Instant::now();
        for &i in members {
            self.brokers[i].spawn_nowait();
        }
        self.wait_ready(start, &format!("start of members {members:?}"));
    }

    /// Metadata from member `i` (fresh connection); panics on failure.
    pub fn metadata_from(&self, i: usize, topics: Option<&[&str]>) -> MetadataResponse {
        try_metadata(self.addr(i), topics, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("Metadata from node {}: {e}", i + 1))
    }

    /// Polls Metadata of every running member until `ok` accepts each answer (one call per
    /// member answer); returns the answers by member index. Panics after `deadline`, showing
    /// the last answers.
    pub fn wait_metadata(
        &mut self,
        what: &str,
        deadline: Duration,
        topics: Option<&[&str]>,
        mut ok: impl FnMut(usize, &MetadataResponse) -> bool,
    ) -> Vec<(usize, MetadataResponse)> {
        let start = Instant::now();
        loop {
            let mut answers = Vec::new();
            let mut failures = Vec::new();
            for i in self.running() {
                self.brokers[i].check_not_exited(what);
                match try_metadata(self.addr(i), topics, Duration::from_secs(10)) {
                    Ok(md) => {
                        if !ok(i, &md) {
                            failures.push(format!(
                                "node {}: brokers {:?}, controller {}, topics {:?}",
                                i + 1,
                                listed_brokers(&md),
                                md.controller_id.0,
                                topic_views(&md)
                            ));
                        }
                        answers.push((i, md));
                    }
                    Err(e) => failures.push(format!("node {}: Metadata failed: {e}", i + 1)),
                }
            }
            if failures.is_empty() {
                eprintln!("[harness] {what}: ok after {:?}", start.elapsed());
                return answers;
            }
            if start.elapsed() > deadline {
                let mut shown = failures.join("\n  ");
                if shown.len() > 20_000 {
                    shown.truncate(20_000);
                    shown.push_str("...");
                }
                panic!(
                    "[harness] {what}: not done after {:?}; last answers:\n  {shown}",
                    start.elapsed()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every running member names the same active controller, and returns it.
    pub fn wait_controller(
        &mut self,
        what: &str,
        deadline: Duration,
        ok: impl Fn(i32) -> bool,
    ) -> i32 {
        let answers = self.wait_metadata(what, deadline, Some(&[]), |_, md| {
            md.controller_id.0 >= 0 && ok(md.controller_id.0)
        });
        let ids: Vec<i32> = answers.iter().map(|(_, md)| md.controller_id.0).collect();
        assert!(
            ids.windows(2).all(|w| w[0] == w[1]),
            "{what}: members name different controllers {ids:?}"
        );
        ids[0]
    }

    /// Raw connection to member `i`.
    pub fn raw(&self, i: usize) -> RawClient {
        self.brokers[i].raw()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for (i, b) in self.brokers.drain(..).enumerate() {
            if panicking {
                eprintln!(
                    "===== node {} (kafka port {}, controller port {}) =====",
                    i + 1,
                    b.port,
                    self.controller_ports.get(i).copied().unwrap_or(0)
                );
            }
            drop(b);
        }
    }
}

/// An rdkafka `AsyncRuntime` without tokio: tasks on their own threads, delays on sleeping
/// threads (what rdkafka's `NaiveRuntime` does; that feature is not enabled here).
pub struct ThreadRuntime;

impl rdkafka::util::AsyncRuntime for ThreadRuntime {
    type Delay = futures::future::Map<
        futures::channel::oneshot::Receiver<()>,
        fn(Result<(), futures::channel::oneshot::Canceled>),
    >;

    fn spawn<T>(task: T)
    where
        T: std::future::Future<Output = ()> + Send + 'static,
    {
        std::thread::spawn(|| futures::executor::block_on(task));
    }

    fn delay_for(duration: Duration) -> Self::Delay {
        use futures::FutureExt;
        let (tx, rx) = futures::channel::oneshot::channel();
        std::thread::spawn(move || {
            std::thread::sleep(duration);
            let _ = tx.send(());
        });
        rx.map(|_| ())
    }
}

// ---------------------------------------------------------------------------------------------
// The corelog command
// ---------------------------------------------------------------------------------------------

/// Output of one `corelog` run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "expected success; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Asserts a failure exit and returns stderr.
    pub fn failed(&self) -> &str {
        assert_ne!(
            self.code, 0,
            "expected failure; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        &self.stderr
    }
}

/// Runs `corelog <args>` to completion (it has its own network timeouts), and prints how
/// long it took and what it wrote.
pub fn corelog(args: &[&str]) -> Run {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run corelog");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "[test] corelog {} -> exit {} in {:?}",
        args.join(" "),
        run.code,
        start.elapsed()
    );
    for (name, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        for line in text.lines() {
            eprintln!("[corelog {name}] {line}");
        }
    }
    run
}
