//! The follower's network client: one [`FetchSession`] per (leader broker, local shard)
//! sends Kafka Fetch requests for many partitions at once, as Kafka's
//! `ReplicaFetcherThread` does.
//!
//! Each request is a full fetch (no incremental fetch session: `session_id` 0,
//! `session_epoch` -1) at version 12, the first one carrying `LastFetchedEpoch` and answering
//! `DivergingEpoch`, with `replica_id` set so the leader knows a follower is asking.
//!
//! One connection, one request in flight. The connection is opened lazily, checked once with
//! ApiVersions (which names this broker, [`BrokerIdentity`]), and dropped on any I/O error, timeout, oversized or undecodable frame, or if
//! a [`FetchSession::fetch`] future is dropped mid-exchange; the next call reconnects.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use futures::AsyncWriteExt;
use kafka_protocol::messages::fetch_request::{FetchPartition as ProtoFetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, FetchRequest, FetchResponse,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::protocol::frame::{self, FrameError};
use crate::runtime::{TcpStream, delay};
use crate::security::tls::ClientStream;
use crate::storage::Records;

/// The Fetch version followers speak: the first with `LastFetchedEpoch`/`DivergingEpoch`.
pub const FETCH_VERSION: i16 = 12;
/// The ApiVersions version sent once per connection (corelog serves 0-3).
const API_VERSIONS_VERSION: i16 = 3;
/// Largest response frame accepted; anything larger closes the connection.
pub const MAX_FRAME: usize = 128 << 20;
/// Added to `max_wait_ms` to bound a whole exchange (connect, ApiVersions, Fetch).
pub const TIMEOUT_SLACK: Duration = Duration::from_secs(10);
/// Kafka's READ_UNCOMMITTED: a follower replicates everything, committed or not.
const READ_UNCOMMITTED: i8 = 0;

/// The ApiVersions tagged field in which a follower names itself. Kafka ignores tags it
/// does not know, so a corelog follower still speaks to any Kafka-compatible leader.
pub const BROKER_IDENTITY_TAG: i32 = 0x636c_6f67;
/// The longest cluster id an identity may carry.
const CLUSTER_ID_MAX_BYTES: usize = 255;

/// Who a replica fetch connection is: a broker of this cluster, in its current process.
/// The leader serves replica fetches only on a connection whose identity matches a
/// registered broker (the incarnation is the random id its process registered with, known
/// from the metadata log and never shown to clients). Not authentication: the security
/// issue brings mTLS or SASL for that.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerIdentity {
    pub cluster_id: String,
    pub node_id: i32,
    pub incarnation: u64,
}

impl BrokerIdentity {
    /// The tagged field's bytes: i16 length and UTF-8 cluster id, i32 node id, u64
    /// incarnation, all big endian.
    pub fn encode(&self) -> Bytes {
        let id = &self.cluster_id.as_bytes()[..self.cluster_id.len().min(CLUSTER_ID_MAX_BYTES)];
        let mut b = Vec::with_capacity(2 + id.len() + 12);
        b.extend_from_slice(&(id.len() as i16).to_be_bytes());
        b.extend_from_slice(id);
        b.extend_from_slice(&self.node_id.to_be_bytes());
        b.extend_from_slice(&self.incarnation.to_be_bytes());
        Bytes::from(b)
    }

    /// `None` for anything that is not exactly an encoded identity.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (len, rest) = bytes.split_first_chunk::<2>()?;
        let len = usize::try_from(i16::from_be_bytes(*len)).ok()?;
        if len > CLUSTER_ID_MAX_BYTES || rest.len() != len + 12 {
            return None;
        }
        let (id, rest) = rest.split_at(len);
        let (node, incarnation) = rest.split_first_chunk::<4>()?;
        Some(Self {
            cluster_id: std::str::from_utf8(id).ok()?.to_string(),
            node_id: i32::from_be_bytes(*node),
            incarnation: u64::from_be_bytes(incarnation.try_into().ok()?),
        })
    }
}

/// One partition to fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchPartition {
    pub topic: String,
    pub topic_id: uuid::Uuid,
    pub partition: i32,
    /// The follower's log end offset: the first offset it wants.
    pub fetch_offset: i64,
    /// The epoch of the last batch in the follower's log; -1 if none.
    pub last_fetched_epoch: i32,
    /// The leader epoch the follower knows for the partition (the leader fences a stale one).
    pub current_leader_epoch: i32,
    /// The follower's log start offset.
    pub log_start_offset: i64,
}

/// The leader's answer for one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedPartition {
    pub topic: String,
    pub partition: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// Record batches as the leader sent them (possibly empty; the last one may be partial).
    pub records: Bytes,
    /// The memory of the response frame `records` is a slice of.
    pub frame_bytes: usize,
    /// Some((epoch, end_offset)) when the leader answered DivergingEpoch (Fetch v12+): the
    /// follower truncates to `end_offset` (or to its own end of `epoch`, if lower).
    pub diverging_epoch: Option<(i32, i64)>,
}

impl FetchedPartition {
    /// The records to append, as slices of the response frame.
    pub fn stored_records(&self) -> Records {
        Records::in_frame(self.records.clone(), self.frame_bytes)
    }
}

/// Request-level limits, as Kafka's `replica.fetch.*` properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchConfig {
    /// `replica.fetch.wait.max.ms`.
    pub max_wait_ms: i32,
    /// `replica.fetch.min.bytes`.
    pub min_bytes: i32,
    /// `replica.fetch.response.max.bytes`.
    pub max_bytes: i32,
    /// `replica.fetch.max.bytes`.
    pub partition_max_bytes: i32,
    /// The client id of the request header.
    pub client_id: String,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 16 << 20,
            partition_max_bytes: 1 << 20,
            client_id: "corelog-replica-fetcher".to_string(),
        }
    }
}

/// A follower's fetch connection to one leader broker.
pub struct FetchSession {
    identity: BrokerIdentity,
    leader_id: i32,
    leader: SocketAddr,
    config: FetchConfig,
    /// Set when the leader's listener is TLS: the client configuration, and the name its
    /// certificate must carry (the leader's advertised host).
    tls: Option<(Arc<rustls::ClientConfig>, String)>,
    /// `None` when not connected, and during an exchange (so that a cancelled exchange
    /// leaves no half-read connection behind).
    conn: Option<ClientStream>,
    next_correlation_id: i32,
    timeout_slack: Duration,
}

impl FetchSession {
    /// Connects lazily to `leader` (host:port, the leader's Kafka listener) as this broker,
    /// `identity` (its node id is the fetches' `replica_id`).
    pub fn new(
        identity: BrokerIdentity,
        leader_id: i32,
        leader: SocketAddr,
        config: FetchConfig,
    ) -> Self {
        FetchSession {
            identity,
            leader_id,
            leader,
            config,
            tls: None,
            conn: None,
            next_correlation_id: 1,
            timeout_slack: TIMEOUT_SLACK,
        }
    }

    /// Speaks TLS to the leader with `config`, expecting a certificate for `host`.
    pub fn with_tls(mut self, config: Arc<rustls::ClientConfig>, host: String) -> Self {
        self.tls = Some((config, host));
        self
    }

    pub fn replica_id(&self) -> i32 {
        self.identity.node_id
    }

    pub fn leader_id(&self) -> i32 {
        self.leader_id
    }

    pub fn leader(&self) -> SocketAddr {
        self.leader
    }

    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    /// Whether a connection is open (it may still turn out to be dead at the next fetch).
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Closes the connection, if any; the next fetch reconnects.
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// The bound on one whole exchange: `max_wait_ms` plus the slack.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.max_wait_ms.max(0) as u64) + self.timeout_slack
    }

    /// Sends one Fetch (version 12, `replica_id` set, no fetch session: `session_id` 0,
    /// `session_epoch` -1, READ_UNCOMMITTED) for `partitions` and returns the per-partition
    /// results in request order. An empty `partitions` returns an empty answer at once,
    /// sending nothing.
    ///
    /// Connects (and checks ApiVersions: the leader must serve Fetch 12) if not connected.
    /// On I/O error, timeout (`max_wait_ms` + 10 s for the whole exchange), a frame over
    /// 128 MiB or an undecodable one, drops the connection and returns `Err`; the next call
    /// reconnects. A top-level error code, or a response that does not answer every
    /// requested partition, is also an `Err` (the connection is kept).
    pub async fn fetch(
        &mut self,
        partitions: &[FetchPartition],
    ) -> anyhow::Result<Vec<FetchedPartition>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let request = self.build_request(partitions);
        let timeout = self.request_timeout();
        let outcome = {
            let exchange = std::pin::pin!(self.exchange(&request));
            let timer = std::pin::pin!(delay(timeout));
            match futures::future::select(exchange, timer).await {
                futures::future::Either::Left((result, _)) => Some(result),
                futures::future::Either::Right(((), _)) => None,
            }
        };
        let Some(response) = outcome else {
            // The exchange future, which held the connection, is dropped with it; this
            // makes sure of it.
            self.conn = None;
            bail!(
                "fetch from leader {} at {}: no answer within {timeout:?}",
                self.leader_id,
                self.leader
            );
        };
        let (response, frame_bytes) = response?;
        self.match_response(partitions, response, frame_bytes)
    }

    fn build_request(&self, partitions: &[FetchPartition]) -> FetchRequest {
        // One FetchTopic per topic, in order of first appearance; partitions keep their
        // relative order.
        let mut topics: Vec<FetchTopic> = Vec::new();
        let mut index: HashMap<(&str, uuid::Uuid), usize> = HashMap::new();
        for p in partitions {
            let i = *index
                .entry((p.topic.as_str(), p.topic_id))
                .or_insert_with(|| {
                    topics.push(
                        FetchTopic::default()
                            .with_topic(TopicName(StrBytes::from_string(p.topic.clone())))
                            .with_topic_id(p.topic_id),
                    );
                    topics.len() - 1
                });
            topics[i].partitions.push(
                ProtoFetchPartition::default()
                    .with_partition(p.partition)
                    .with_current_leader_epoch(p.current_leader_epoch)
                    .with_fetch_offset(p.fetch_offset)
                    .with_last_fetched_epoch(p.last_fetched_epoch)
                    .with_log_start_offset(p.log_start_offset)
                    .with_partition_max_bytes(self.config.partition_max_bytes),
            );
        }
        FetchRequest::default()
            .with_replica_id(BrokerId(self.identity.node_id))
            .with_max_wait_ms(self.config.max_wait_ms)
            .with_min_bytes(self.config.min_bytes)
            .with_max_bytes(self.config.max_bytes)
            .with_isolation_level(READ_UNCOMMITTED)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(topics)
    }

    /// Connects if needed and does the Fetch round trip. The connection is out of
    /// `self.conn` for the duration and put back only after a complete, decoded response.
    ///
    /// A reused connection that fails with an I/O error (typically: the leader closed it
    /// while it was idle) is replaced by a new one and the request sent again, once; a
    /// Fetch only reads, so repeating it is harmless. A new connection is never retried.
    /// Returns the response with the memory of its frame.
    async fn exchange(&mut self, request: &FetchRequest) -> anyhow::Result<(FetchResponse, usize)> {
        let (leader_id, leader) = (self.leader_id, self.leader);
        let context = move || format!("fetch from leader {leader_id} at {leader}");
        if let Some(mut stream) = self.conn.take() {
            match self
                .call::<_, FetchResponse>(&mut stream, ApiKey::Fetch, FETCH_VERSION, request)
                .await
            {
                Ok(response) => {
                    self.conn = Some(stream);
                    return Ok(response);
                }
                Err(e) if e.downcast_ref::<std::io::Error>().is_some() => {
                    tracing::debug!("{}: {e:#}; reconnecting", context());
                }
                Err(e) => return Err(e.context(context())),
            }
        }
        let mut stream = self.connect().await?;
        let response = self
            .call::<_, FetchResponse>(&mut stream, ApiKey::Fetch, FETCH_VERSION, request)
            .await
            .with_context(context)?;
        self.conn = Some(stream);
        Ok(response)
    }

    /// Opens a connection, names this broker and checks that the leader serves Fetch v12.
    async fn connect(&mut self) -> anyhow::Result<ClientStream> {
        let (leader_id, leader) = (self.leader_id, self.leader);
        let context = move || format!("connecting to leader {leader_id} at {leader}");
        let stream = TcpStream::connect(self.leader)
            .await
            .map_err(|e| anyhow!("{e}"))
            .with_context(context)?;
        // Best effort: latency matters more than packet count for a follower.
        let _ = stream.set_nodelay(true);
        // TODO(SASL): a SASL_PLAINTEXT or SASL_SSL inter-broker listener authenticates this
        // connection here (SaslHandshake, SaslAuthenticate), after TLS and before ApiVersions.
        let (tls, host) = match &self.tls {
            Some((config, host)) => (Some(config), host.as_str()),
            None => (None, ""),
        };
        let mut stream = ClientStream::start(stream, tls, host)
            .await
            .map_err(|e| anyhow!("TLS: {e}"))
            .with_context(context)?;
        // The first request names this broker: the leader serves replica fetches only on a
        // connection that did.
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("corelog"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")))
            .with_unknown_tagged_field(BROKER_IDENTITY_TAG, self.identity.encode());
        let (response, _): (ApiVersionsResponse, _) = self
            .call(
                &mut stream,
                ApiKey::ApiVersions,
                API_VERSIONS_VERSION,
                &request,
            )
            .await
            .with_context(context)?;
        if response.error_code != 0 {
            bail!(
                "{}: ApiVersions error code {}",
                context(),
                response.error_code
            );
        }
        let fetch = response
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::Fetch as i16)
            .ok_or_else(|| anyhow!("{}: the leader does not serve Fetch", context()))?;
        // min(12, the leader's max) must be 12, and the leader must still serve 12.
        if fetch.max_version < FETCH_VERSION || fetch.min_version > FETCH_VERSION {
            bail!(
                "{}: the leader serves Fetch v{}-{}, replication needs v{FETCH_VERSION}",
                context(),
                fetch.min_version,
                fetch.max_version
            );
        }
        Ok(stream)
    }

    /// Sends one request and reads its response on `stream`.
    async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        stream: &mut ClientStream,
        api: ApiKey,
        version: i16,
        request: &Req,
    ) -> anyhow::Result<(Resp, usize)> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let frame = frame::encode_request(
            api,
            version,
            correlation_id,
            &self.config.client_id,
            request,
        )?;
        stream.write_all(&frame).await?;
        stream.flush().await?;
        let frame = read_response_frame(stream).await?;
        let frame_bytes = frame::buffer_bytes(frame.len());
        let (got, response) = frame::decode_response(api, version, frame)?;
        if got != correlation_id {
            bail!("correlation id mismatch: sent {correlation_id}, got {got}");
        }
        Ok((response, frame_bytes))
    }

    /// Maps the response's partitions back onto the request, in request order.
    fn match_response(
        &self,
        partitions: &[FetchPartition],
        response: FetchResponse,
        frame_bytes: usize,
    ) -> anyhow::Result<Vec<FetchedPartition>> {
        if response.error_code != 0 {
            bail!(
                "fetch from leader {} at {}: error code {}",
                self.leader_id,
                self.leader,
                response.error_code
            );
        }
        let mut answers: HashMap<(String, i32), FetchedPartition> = HashMap::new();
        for topic in response.responses {
            let name = topic.topic.0.to_string();
            for p in topic.partitions {
                let diverging = p.diverging_epoch;
                let fetched = FetchedPartition {
                    topic: name.clone(),
                    partition: p.partition_index,
                    error_code: p.error_code,
                    high_watermark: p.high_watermark,
                    log_start_offset: p.log_start_offset,
                    records: p.records.unwrap_or_default(),
                    frame_bytes,
                    // Kafka: absent when the epoch is negative (the default, -1).
                    diverging_epoch: (diverging.epoch >= 0)
                        .then_some((diverging.epoch, diverging.end_offset)),
                };
                answers.insert((name.clone(), p.partition_index), fetched);
            }
        }
        partitions
            .iter()
            .map(|p| {
                answers
                    .get(&(p.topic.clone(), p.partition))
                    .cloned()
                    .ok_or_else(|| {
                        anyhow!(
                            "fetch from leader {} at {}: no answer for {}-{}",
                            self.leader_id,
                            self.leader,
                            p.topic,
                            p.partition
                        )
                    })
            })
            .collect()
    }
}

/// Reads one response frame of at most [`MAX_FRAME`] bytes. The stream's failures, its end
/// between frames included, stay `std::io::Error`s: `exchange` retries those on a reused
/// connection.
async fn read_response_frame(stream: &mut ClientStream) -> anyhow::Result<Bytes> {
    match frame::read_frame(stream, MAX_FRAME).await {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
        Err(FrameError::Io(e)) => Err(e.into()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::record_batch::build_test_batch;
    use crate::protocol::{Request, decode_request, encode_response, versions};
    use crate::runtime::{TcpListener, block_on, spawn_local};
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::fetch_response::{
        EpochEndOffset, FetchableTopicResponse, PartitionData,
    };
    use kafka_protocol::messages::{RequestKind, ResponseKind};
    use std::cell::RefCell;
    use std::rc::Rc;

    /// How the fake leader behaves after answering ApiVersions.
    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        /// Answers every Fetch.
        Serve,
        /// Answers one Fetch per connection, then closes it.
        CloseAfterOne,
        /// Answers Fetch with a frame of garbage.
        Garbage,
        /// Answers Fetch with a length prefix over the limit.
        HugeFrame,
        /// Never answers Fetch.
        Silent,
        /// Closes the connection when it receives a Fetch.
        Hangup,
    }

    #[derive(Default)]
    struct Seen {
        connections: usize,
        fetches: Vec<(i16, FetchRequest)>,
        /// The identity each ApiVersions named.
        identities: Vec<Option<BrokerIdentity>>,
    }

    fn identity() -> BrokerIdentity {
        BrokerIdentity {
            cluster_id: "corelog-0123".into(),
            node_id: 2,
            incarnation: 0xfeed_beef_0000_0001,
        }
    }

    #[test]
    fn an_identity_decodes_only_from_its_exact_encoding() {
        let bytes = identity().encode();
        assert_eq!(BrokerIdentity::decode(&bytes), Some(identity()));
        for cut in 0..bytes.len() {
            assert_eq!(BrokerIdentity::decode(&bytes[..cut]), None);
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(BrokerIdentity::decode(&longer), None);
        assert_eq!(
            BrokerIdentity::decode(&[0x80, 0, 1, 2]),
            None,
            "negative length"
        );
    }

    fn records() -> Bytes {
        build_test_batch(
            5,
            &[(Some(&b"k"[..]), &b"one"[..]), (None, &b"two"[..])],
            1_700_000_000_000,
        )
    }

    fn fetch_response(request: &FetchRequest) -> FetchResponse {
        let topics = request
            .topics
            .iter()
            .map(|t| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let data = PartitionData::default()
                            .with_partition_index(p.partition)
                            .with_high_watermark(7)
                            .with_last_stable_offset(7)
                            .with_log_start_offset(0);
                        match p.partition {
                            0 => data.with_records(Some(records())),
                            1 => data.with_diverging_epoch(
                                EpochEndOffset::default().with_epoch(3).with_end_offset(42),
                            ),
                            // NOT_LEADER_OR_FOLLOWER
                            _ => data.with_error_code(6).with_high_watermark(-1),
                        }
                    })
                    .collect();
                FetchableTopicResponse::default()
                    .with_topic(t.topic.clone())
                    .with_partitions(partitions)
            })
            .collect();
        FetchResponse::default().with_responses(topics)
    }

    async fn read_request(stream: &mut TcpStream) -> Option<Request> {
        let body = frame::read_frame(stream, MAX_FRAME).await.ok()??;
        decode_request(body).ok()
    }

    async fn serve_connection(mut stream: TcpStream, mode: Mode, seen: Rc<RefCell<Seen>>) {
        while let Some(request) = read_request(&mut stream).await {
            let version = request.version();
            let corr = request.header.correlation_id;
            let api_key = request.api_key;
            let reply = match request.body {
                RequestKind::ApiVersions(r) => {
                    let named = r.unknown_tagged_fields.get(&BROKER_IDENTITY_TAG);
                    let named = named.and_then(|b| BrokerIdentity::decode(b));
                    seen.borrow_mut().identities.push(named);
                    let body = kafka_protocol::messages::ApiVersionsResponse::default()
                        .with_api_keys(versions::advertised());
                    encode_response(ApiKey::ApiVersions, version, corr, &body.into()).unwrap()
                }
                RequestKind::Fetch(fetch) => {
                    let response = fetch_response(&fetch);
                    seen.borrow_mut().fetches.push((version, fetch));
                    match mode {
                        Mode::Serve | Mode::CloseAfterOne => encode_response(
                            ApiKey::Fetch,
                            version,
                            corr,
                            &ResponseKind::Fetch(response),
                        )
                        .unwrap(),
                        Mode::Garbage => {
                            let mut b = BytesMut::new();
                            b.put_i32(12);
                            b.put_i32(corr);
                            b.put_slice(&[0xff; 8]);
                            b.freeze()
                        }
                        Mode::HugeFrame => {
                            let mut b = BytesMut::new();
                            b.put_i32(i32::MAX);
                            b.put_i32(corr);
                            b.freeze()
                        }
                        Mode::Hangup => return,
                        Mode::Silent => {
                            // Hold the connection open without answering.
                            delay(Duration::from_secs(30)).await;
                            return;
                        }
                    }
                }
                _ => return,
            };
            if stream.write_all(&reply).await.is_err() {
                return;
            }
            let _ = stream.flush().await;
            if mode == Mode::CloseAfterOne && api_key == ApiKey::Fetch {
                return;
            }
        }
    }

    /// Starts a fake leader on 127.0.0.1:0; returns its address and what it saw.
    fn fake_leader(mode: Mode) -> (SocketAddr, Rc<RefCell<Seen>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Rc::new(RefCell::new(Seen::default()));
        let s = seen.clone();
        spawn_local(async move {
            while let Ok(stream) = listener.accept().await {
                s.borrow_mut().connections += 1;
                spawn_local(serve_connection(stream, mode, s.clone())).detach();
            }
        })
        .detach();
        (addr, seen)
    }

    fn partitions() -> Vec<FetchPartition> {
        let id = uuid::Uuid::from_u128(0x1234);
        let p = |topic: &str, partition, fetch_offset| FetchPartition {
            topic: topic.to_string(),
            topic_id: id,
            partition,
            fetch_offset,
            last_fetched_epoch: 2,
            current_leader_epoch: 4,
            log_start_offset: 0,
        };
        vec![p("t", 0, 5), p("t", 1, 50), p("u", 2, 0)]
    }

    /// Runs `f` on a fresh executor, failing the test if it takes over 20 s.
    fn run<F: std::future::Future<Output = ()> + 'static>(f: F) {
        block_on(async move {
            let f = std::pin::pin!(f);
            let limit = std::pin::pin!(delay(Duration::from_secs(20)));
            if let futures::future::Either::Right(_) = futures::future::select(f, limit).await {
                panic!("test did not finish within 20 s");
            }
        });
    }

    fn config() -> FetchConfig {
        FetchConfig {
            max_wait_ms: 100,
            ..FetchConfig::default()
        }
    }

    fn check_answers(got: &[FetchedPartition]) {
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0],
            FetchedPartition {
                topic: "t".into(),
                partition: 0,
                error_code: 0,
                high_watermark: 7,
                log_start_offset: 0,
                records: records(),
                frame_bytes: got[0].frame_bytes,
                diverging_epoch: None,
            }
        );
        assert!(
            got[0].frame_bytes > records().len(),
            "the response frame's memory"
        );
        assert_eq!(got[1].partition, 1);
        assert_eq!(got[1].diverging_epoch, Some((3, 42)));
        assert!(got[1].records.is_empty());
        assert_eq!((got[2].topic.as_str(), got[2].partition), ("u", 2));
        assert_eq!(got[2].error_code, 6);
        assert_eq!(got[2].diverging_epoch, None);
    }

    #[test]
    fn fetch_sends_a_replica_fetch_v12_and_maps_the_answers() {
        run(async {
            let (addr, seen) = fake_leader(Mode::Serve);
            let mut session = FetchSession::new(identity(), 1, addr, config());
            assert!(!session.is_connected());
            assert!(session.fetch(&[]).await.unwrap().is_empty());
            assert!(!session.is_connected(), "an empty fetch sends nothing");

            let got = session.fetch(&partitions()).await.unwrap();
            check_answers(&got);
            assert!(session.is_connected());
            // A second fetch reuses the connection.
            check_answers(&session.fetch(&partitions()).await.unwrap());

            let seen = seen.borrow();
            assert_eq!(seen.connections, 1);
            assert_eq!(seen.identities, vec![Some(identity())]);
            assert_eq!(seen.fetches.len(), 2);
            let (version, req) = &seen.fetches[0];
            assert_eq!(*version, 12);
            assert_eq!(req.replica_id, BrokerId(2));
            assert_eq!(req.session_id, 0);
            assert_eq!(req.session_epoch, -1);
            assert_eq!(req.isolation_level, 0);
            assert_eq!(req.max_wait_ms, 100);
            assert_eq!(req.min_bytes, 1);
            assert_eq!(req.max_bytes, 16 << 20);
            assert_eq!(req.topics.len(), 2);
            assert_eq!(req.topics[0].topic.0.as_str(), "t");
            assert_eq!(req.topics[1].topic.0.as_str(), "u");
            let p = &req.topics[0].partitions[1];
            assert_eq!(p.partition, 1);
            assert_eq!(p.fetch_offset, 50);
            assert_eq!(p.last_fetched_epoch, 2);
            assert_eq!(p.current_leader_epoch, 4);
            assert_eq!(p.log_start_offset, 0);
            assert_eq!(p.partition_max_bytes, 1 << 20);
        });
    }

    #[test]
    fn answers_follow_request_order_across_topics() {
        run(async {
            let (addr, _) = fake_leader(Mode::Serve);
            let mut session = FetchSession::new(identity(), 1, addr, config());
            let mut ps = partitions();
            // t-1, u-2, t-0: the request groups by topic, the answer keeps this order.
            ps.swap(0, 1);
            ps.swap(1, 2);
            let got = session.fetch(&ps).await.unwrap();
            let order: Vec<_> = got
                .iter()
                .map(|p| (p.topic.as_str(), p.partition))
                .collect();
            assert_eq!(order, [("t", 1), ("u", 2), ("t", 0)]);
            assert_eq!(got[2].records, records());
        });
    }

    #[test]
    fn reconnects_after_the_leader_closes_the_connection() {
        run(async {
            let (addr, seen) = fake_leader(Mode::CloseAfterOne);
            let mut session = FetchSession::new(identity(), 1, addr, config());
            check_answers(&session.fetch(&partitions()).await.unwrap());
            // The leader closed the connection after answering; the next fetch finds it
            // dead, reconnects and gets its answer.
            check_answers(&session.fetch(&partitions()).await.unwrap());
            assert!(session.is_connected());
            check_answers(&session.fetch(&partitions()).await.unwrap());
            assert_eq!(seen.borrow().fetches.len(), 3);
            assert_eq!(seen.borrow().connections, 3);
        });
    }

    #[test]
    fn hangup_on_a_new_connection_is_an_error() {
        run(async {
            let (addr, seen) = fake_leader(Mode::Hangup);
            let mut session = FetchSession::new(identity(), 1, addr, config());
            for n in 1..=2 {
                let e = session.fetch(&partitions()).await.unwrap_err();
                assert!(e.downcast_ref::<std::io::Error>().is_some(), "{e:#}");
                assert!(!session.is_connected());
                // No retry on a connection opened for this very fetch.
                assert_eq!(seen.borrow().connections, n);
            }
        });
    }

    #[test]
    fn garbage_response_is_an_error_and_drops_the_connection() {
        run(async {
            let (addr, seen) = fake_leader(Mode::Garbage);
            let mut session = FetchSession::new(identity(), 1, addr, config());
            for _ in 0..2 {
                let e = session.fetch(&partitions()).await.unwrap_err();
                assert!(format!("{e:#}").contains("decoding"), "{e:#}");
                assert!(!session.is_connected());
            }
            assert_eq!(seen.borrow().connections, 2);
        });
    }

    #[test]
    fn oversized_frame_is_an_error() {
        run(async {
            let (addr, _) = fake_leader(Mode::HugeFrame);
            let mut session = FetchSession::new(identity(), 1, addr, config());
            let e = session.fetch(&partitions()).await.unwrap_err();
            assert!(format!("{e:#}").contains("frame length"), "{e:#}");
            assert!(!session.is_connected());
        });
    }

    #[test]
    fn silent_leader_times_out() {
        run(async {
            let (addr, _) = fake_leader(Mode::Silent);
            let mut session = FetchSession::new(identity(), 1, addr, config());
            session.timeout_slack = Duration::from_millis(200);
            assert_eq!(session.request_timeout(), Duration::from_millis(300));
            let e = session.fetch(&partitions()).await.unwrap_err();
            assert!(e.to_string().contains("no answer within"), "{e:#}");
            assert!(!session.is_connected());
        });
    }

    #[test]
    fn unreachable_leader_is_an_error() {
        run(async {
            // A port nobody listens on.
            let addr = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let mut session = FetchSession::new(identity(), 1, addr, config());
            let e = session.fetch(&partitions()).await.unwrap_err();
            assert!(format!("{e:#}").contains("connecting to leader 1"), "{e:#}");
        });
    }

    #[test]
    fn leader_without_fetch_12_is_refused() {
        run(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            spawn_local(async move {
                let mut stream = listener.accept().await.unwrap();
                let request = read_request(&mut stream).await.unwrap();
                let old = kafka_protocol::messages::api_versions_response::ApiVersion::default()
                    .with_api_key(ApiKey::Fetch as i16)
                    .with_min_version(4)
                    .with_max_version(11);
                let body = ApiVersionsResponse::default().with_api_keys(vec![old]);
                let reply = encode_response(
                    ApiKey::ApiVersions,
                    request.version(),
                    request.header.correlation_id,
                    &body.into(),
                )
                .unwrap();
                stream.write_all(&reply).await.unwrap();
                delay(Duration::from_secs(5)).await;
            })
            .detach();
            let mut session = FetchSession::new(identity(), 1, addr, config());
            let e = session.fetch(&partitions()).await.unwrap_err();
            assert!(format!("{e:#}").contains("Fetch v4-11"), "{e:#}");
            assert!(!session.is_connected());
        });
    }
}
