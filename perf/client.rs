//! Minimal blocking Kafka client: framing, ApiVersions, Metadata,
//! CreateTopics, ListOffsets.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::create_topics_response::CreateTopicsResponse;
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::list_offsets_response::ListOffsetsResponse;
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::metadata_response::MetadataResponse;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

pub const CLIENT_ID: &str = "corelog-perf";
/// Largest response frame we accept.
const MAX_FRAME: usize = 512 * 1024 * 1024;

/// Encodes a complete request frame (size prefix, header, body).
pub fn encode_request<R: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Vec<u8>> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let mut buf = BytesMut::with_capacity(body.compute_size(version)? + 64);
    buf.extend_from_slice(&[0, 0, 0, 0]);
    header.encode(&mut buf, api.request_header_version(version))?;
    body.encode(&mut buf, version)?;
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.to_vec())
}

/// Reads one size-prefixed frame.
pub fn read_frame(stream: &mut impl Read) -> Result<Bytes> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = i32::from_be_bytes(len);
    if len < 0 || len as usize > MAX_FRAME {
        bail!("bad response frame length {len}");
    }
    let mut buf = vec![0u8; len as usize];
    stream.read_exact(&mut buf)?;
    Ok(Bytes::from(buf))
}

/// Decodes a response frame; returns (correlation id, body).
pub fn decode_response<T: Decodable>(
    api: ApiKey,
    version: i16,
    mut frame: Bytes,
) -> Result<(i32, T)> {
    let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))?;
    let body = T::decode(&mut frame, version)
        .with_context(|| format!("decoding {api:?} v{version} response"))?;
    Ok((header.correlation_id, body))
}

pub fn connect(addr: &str) -> Result<TcpStream> {
    let mut last = None;
    for sa in addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
    {
        match TcpStream::connect_timeout(&sa, Duration::from_secs(10)) {
            Ok(s) => {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                s.set_write_timeout(Some(Duration::from_secs(30)))?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => anyhow!("connecting to {addr}: {e}"),
        None => anyhow!("{addr} resolved to no address"),
    })
}

/// A blocking request/response connection.
pub struct Conn {
    pub stream: TcpStream,
    pub addr: String,
    next_corr: i32,
}

impl Conn {
    pub fn connect(addr: &str) -> Result<Conn> {
        Ok(Conn {
            stream: connect(addr)?,
            addr: addr.to_string(),
            next_corr: 1,
        })
    }

    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        req: &Req,
    ) -> Result<Resp> {
        let corr = self.next_corr;
        self.next_corr = self.next_corr.wrapping_add(1);
        let frame = encode_request(api, version, corr, req)?;
        self.stream.write_all(&frame)?;
        let resp = read_frame(&mut self.stream)?;
        let (got, body) = decode_response(api, version, resp)?;
        if got != corr {
            bail!("correlation id mismatch: sent {corr}, got {got}");
        }
        Ok(body)
    }
}

/// API versions the broker advertises.
#[derive(Clone, Debug, Default)]
pub struct Versions(pub HashMap<i16, (i16, i16)>);

impl Versions {
    /// Highest version both sides support, within `[ours_min, ours_max]`.
    pub fn pick(&self, api: ApiKey, ours_min: i16, ours_max: i16) -> Result<i16> {
        let (bmin, bmax) = self
            .0
            .get(&(api as i16))
            .copied()
            .ok_or_else(|| anyhow!("broker does not support {api:?}"))?;
        let v = bmax.min(ours_max);
        if v < bmin.max(ours_min) {
            bail!(
                "no common version for {api:?}: broker {bmin}..{bmax}, ours {ours_min}..{ours_max}"
            );
        }
        Ok(v)
    }
}

pub fn api_versions(conn: &mut Conn) -> Result<Versions> {
    let req = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str(CLIENT_ID))
        .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
    let resp: ApiVersionsResponse =
        match conn.call::<_, ApiVersionsResponse>(ApiKey::ApiVersions, 3, &req) {
            Ok(r) if r.error_code == 0 => r,
            // UNSUPPORTED_VERSION (35) or an undecodable reply: fall back to v0.
            _ => {
                *conn = Conn::connect(&conn.addr.clone())?;
                conn.call(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default())?
            }
        };
    if resp.error_code != 0 {
        bail!("ApiVersions failed: {}", error_name(resp.error_code));
    }
    Ok(Versions(
        resp.api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect(),
    ))
}

#[derive(Clone, Debug)]
pub struct PartitionMeta {
    pub index: i32,
    pub leader: i32,
}

#[derive(Clone, Debug, Default)]
pub struct ClusterMeta {
    pub brokers: HashMap<i32, String>,
    pub controller: i32,
    /// Error code of the topic (0 if fine).
    pub topic_error: i16,
    /// Partitions sorted by index.
    pub partitions: Vec<PartitionMeta>,
}

impl ClusterMeta {
    pub fn leader_addr(&self, partition: i32) -> Option<(i32, String)> {
        let p = self.partitions.iter().find(|p| p.index == partition)?;
        let addr = self.brokers.get(&p.leader)?;
        Some((p.leader, addr.clone()))
    }

    /// All partitions have a known leader.
    pub fn ready(&self) -> bool {
        self.topic_error == 0
            && !self.partitions.is_empty()
            && self
                .partitions
                .iter()
                .all(|p| p.leader >= 0 && self.brokers.contains_key(&p.leader))
    }
}

/// A connection to one bootstrap broker used for cluster-level requests.
pub struct Client {
    pub conn: Conn,
    pub versions: Versions,
    bootstrap: Vec<String>,
}

impl Client {
    pub fn bootstrap(servers: &str) -> Result<Client> {
        let bootstrap: Vec<String> = servers
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let mut errors = Vec::new();
        for addr in &bootstrap {
            match Conn::connect(addr).and_then(|mut c| api_versions(&mut c).map(|v| (c, v))) {
                Ok((conn, versions)) => {
                    return Ok(Client {
                        conn,
                        versions,
                        bootstrap,
                    });
                }
                Err(e) => errors.push(format!("{addr}: {e:#}")),
            }
        }
        bail!("no bootstrap server reachable: {}", errors.join("; "))
    }

    fn reconnect(&mut self) -> Result<()> {
        for addr in self.bootstrap.clone() {
            if let Ok(c) = Conn::connect(&addr) {
                self.conn = c;
                return Ok(());
            }
        }
        bail!("no bootstrap server reachable")
    }

    pub fn metadata(&mut self, topic: &str) -> Result<ClusterMeta> {
        match self.metadata_once(topic) {
            Ok(m) => Ok(m),
            Err(_) => {
                self.reconnect()?;
                self.metadata_once(topic)
            }
        }
    }

    fn metadata_once(&mut self, topic: &str) -> Result<ClusterMeta> {
        let version = self.versions.pick(ApiKey::Metadata, 1, 12)?;
        let mut req = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
                TopicName(StrBytes::from_string(topic.to_string())),
            ))]));
        if version >= 4 {
            req = req.with_allow_auto_topic_creation(false);
        }
        let resp: MetadataResponse = self.conn.call(ApiKey::Metadata, version, &req)?;
        let mut meta = ClusterMeta {
            controller: resp.controller_id.0,
            topic_error: 3, // UNKNOWN_TOPIC_OR_PARTITION unless found
            ..Default::default()
        };
        for b in &resp.brokers {
            meta.brokers
                .insert(b.node_id.0, format!("{}:{}", b.host.as_str(), b.port));
        }
        for t in &resp.topics {
            if t.name.as_ref().map(|n| n.0.as_str()) != Some(topic) {
                continue;
            }
            meta.topic_error = t.error_code;
            meta.partitions = t
                .partitions
                .iter()
                .map(|p| PartitionMeta {
                    index: p.partition_index,
                    leader: p.leader_id.0,
                })
                .collect();
            meta.partitions.sort_by_key(|p| p.index);
        }
        Ok(meta)
    }

    /// Creates the topic; returns the error code (0 or 36 already exists
    /// are both fine for callers).
    pub fn create_topic(&mut self, topic: &str, partitions: i32, replication: i16) -> Result<i16> {
        let version = self.versions.pick(ApiKey::CreateTopics, 2, 7)?;
        let req = CreateTopicsRequest::default()
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_num_partitions(partitions)
                    .with_replication_factor(replication),
            ])
            .with_timeout_ms(30_000);
        // Older Kafka wants CreateTopics on the controller.
        let meta = self.metadata(topic)?;
        let mut controller_conn = match meta.brokers.get(&meta.controller) {
            Some(addr) if *addr != self.conn.addr => Conn::connect(addr).ok(),
            _ => None,
        };
        let conn = controller_conn.as_mut().unwrap_or(&mut self.conn);
        let resp: CreateTopicsResponse = conn.call(ApiKey::CreateTopics, version, &req)?;
        let code = resp.topics.first().map(|t| t.error_code).unwrap_or(0);
        Ok(code)
    }

    /// Polls metadata until every partition of the topic has a leader.
    pub fn wait_for_topic(&mut self, topic: &str, timeout: Duration) -> Result<ClusterMeta> {
        let deadline = Instant::now() + timeout;
        loop {
            let meta = self.metadata(topic)?;
            if meta.ready() {
                return Ok(meta);
            }
            if Instant::now() >= deadline {
                bail!(
                    "topic {topic} not ready: error {}, {} partitions",
                    error_name(meta.topic_error),
                    meta.partitions.len()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// ListOffsets for some partitions on their leader. `timestamp` is -2 for
/// earliest, -1 for latest. Returns (partition, error, offset).
pub fn list_offsets(
    conn: &mut Conn,
    versions: &Versions,
    topic: &str,
    partitions: &[i32],
    timestamp: i64,
) -> Result<Vec<(i32, i16, i64)>> {
    let version = versions.pick(ApiKey::ListOffsets, 1, 7)?;
    let req = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&p| {
                            ListOffsetsPartition::default()
                                .with_partition_index(p)
                                .with_timestamp(timestamp)
                        })
                        .collect(),
                ),
        ]);
    let resp: ListOffsetsResponse = conn.call(ApiKey::ListOffsets, version, &req)?;
    Ok(resp
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| (p.partition_index, p.error_code, p.offset))
        .collect())
}

/// Human-readable name of a Kafka error code.
pub fn error_name(code: i16) -> String {
    match kafka_protocol::ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(e) => format!("{e:?}"),
    }
}

pub fn is_retriable_leader_error(code: i16) -> bool {
    // NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE, UNKNOWN_TOPIC_OR_PARTITION
    matches!(code, 6 | 5 | 3)
}
