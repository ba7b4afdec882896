//! A minimal blocking Kafka client over `std::net::TcpStream`, built on the `kafka-protocol`
//! codecs: framing, version negotiation (ApiVersions), Metadata, ListOffsets and the admin
//! APIs (CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs). It speaks to any
//! Kafka-compatible broker; `corelog topics` and `corelog-perf` are built on it. No async
//! runtime: one request at a time per [`Conn`].
//!
//! Every request uses the highest version both the broker (from ApiVersions) and the codec
//! support. A broker error code comes back as [`Error::Broker`], which carries the typed
//! `kafka_protocol::ResponseError` and Kafka's name for it (`TOPIC_ALREADY_EXISTS`).

mod admin;
pub mod error;
pub mod groups;
mod metadata;
mod users;
mod versions;
mod wire;

use std::time::{Duration, Instant};

use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::list_offsets_response::ListOffsetsResponse;

pub use admin::{ConfigEntry, CreatedTopic, NewTopic, config_source};
pub use error::{BrokerError, Error, Result, error_name, kafka_error_name};
pub use metadata::{BrokerMeta, ClusterMeta, Metadata, PartitionMeta, TopicMeta};
pub use users::{ScramAlteration, UserCredentials};
pub use versions::{Versions, api_versions};
pub use wire::{CLIENT_ID, Conn, connect, decode_response, encode_request, read_frame};

/// Splits a comma-separated `host:port` list.
pub fn parse_bootstrap(servers: &str) -> Vec<String> {
    servers
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A connection to one bootstrap broker (the first of the list that answered ApiVersions),
/// used for cluster-level requests.
pub struct Client {
    pub conn: Conn,
    /// What the connected broker advertised.
    pub versions: Versions,
    bootstrap: Vec<String>,
}

impl Client {
    /// Connects to the first server of the comma-separated list that answers ApiVersions.
    pub fn bootstrap(servers: &str) -> Result<Client> {
        let bootstrap = parse_bootstrap(servers);
        if bootstrap.is_empty() {
            return Err(Error::NoBroker("the bootstrap server list is empty".into()));
        }
        let (conn, versions) = Self::first_answering(&bootstrap)?;
        Ok(Client {
            conn,
            versions,
            bootstrap,
        })
    }

    fn first_answering(servers: &[String]) -> Result<(Conn, Versions)> {
        let mut errors = Vec::new();
        for addr in servers {
            match Conn::connect(addr).and_then(|mut c| api_versions(&mut c).map(|v| (c, v))) {
                Ok(found) => return Ok(found),
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        Err(Error::NoBroker(errors.join("; ")))
    }

    /// Connects again, to the first bootstrap server that answers.
    pub fn reconnect(&mut self) -> Result<()> {
        let (conn, versions) = Self::first_answering(&self.bootstrap)?;
        self.conn = conn;
        self.versions = versions;
        Ok(())
    }

    /// Metadata of one topic (no auto-creation where the broker allows asking for none);
    /// reconnects once on a transport error.
    pub fn metadata(&mut self, topic: &str) -> Result<ClusterMeta> {
        let topics = [topic.to_string()];
        let meta = match self.cluster_metadata(Some(&topics)) {
            Ok(m) => m,
            Err(Error::Io { .. } | Error::Stream(_)) => {
                self.reconnect()?;
                self.cluster_metadata(Some(&topics))?
            }
            Err(e) => return Err(e),
        };
        Ok(ClusterMeta::of(meta, topic))
    }

    /// Metadata of some topics, or of all topics with `None`.
    pub fn cluster_metadata(&mut self, topics: Option<&[String]>) -> Result<Metadata> {
        metadata::fetch(&mut self.conn, &self.versions, topics)
    }

    /// Names of every topic, sorted.
    pub fn list_topics(&mut self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .cluster_metadata(None)?
            .topics
            .into_iter()
            .map(|t| t.name)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Runs an admin request on the controller when the metadata names one we can reach
    /// (older Kafka wants CreateTopics/DeleteTopics/CreatePartitions there; newer brokers
    /// forward), else on the bootstrap connection. Retries twice on NOT_CONTROLLER.
    fn on_controller<T>(
        &mut self,
        mut f: impl FnMut(&mut Conn, &Versions) -> Result<T>,
    ) -> Result<T> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let meta = self.cluster_metadata(Some(&[]))?;
            let controller_addr = meta
                .broker_addr(meta.controller)
                .filter(|a| *a != self.conn.addr);
            let mut controller = controller_addr.and_then(|addr| {
                let mut c = Conn::connect(&addr).ok()?;
                let v = api_versions(&mut c).ok()?;
                Some((c, v))
            });
            let result = match controller.as_mut() {
                Some((c, v)) => f(c, v),
                None => f(&mut self.conn, &self.versions),
            };
            match result {
                Err(e)
                    if attempt < 3
                        && e.kafka() == Some(kafka_protocol::ResponseError::NotController) =>
                {
                    std::thread::sleep(Duration::from_millis(200 * attempt));
                }
                r => return r,
            }
        }
    }

    /// CreateTopics for one topic. A broker error (e.g. TOPIC_ALREADY_EXISTS) is
    /// `Err(Error::Broker)`.
    pub fn create_topic(&mut self, topic: &NewTopic) -> Result<CreatedTopic> {
        self.on_controller(|c, v| admin::create_topic(c, v, topic))
    }

    /// DeleteTopics for one topic by name.
    pub fn delete_topic(&mut self, topic: &str) -> Result<()> {
        self.on_controller(|c, v| admin::delete_topic(c, v, topic))
    }

    /// CreatePartitions (API key 37): grows `topic` to `count` partitions in total.
    /// `Err(Error::UnsupportedApi)` when the broker does not advertise it.
    pub fn create_partitions(&mut self, topic: &str, count: i32) -> Result<()> {
        // Check the bootstrap broker first, so that an unsupported API fails before any
        // other request (a broker may close the connection on an unknown API key).
        self.versions.negotiate(ApiKey::CreatePartitions)?;
        self.on_controller(|c, v| admin::create_partitions(c, v, topic, count))
    }

    /// DescribeConfigs for topics: per topic (in the order given) its config entries or the
    /// broker's error for that topic.
    pub fn describe_topic_configs(
        &mut self,
        topics: &[String],
    ) -> Result<Vec<(String, Result<Vec<ConfigEntry>>)>> {
        admin::describe_topic_configs(&mut self.conn, &self.versions, topics)
    }

    /// AlterUserScramCredentials: per user, done or the broker's error.
    pub fn alter_scram_credentials(
        &mut self,
        alterations: &[ScramAlteration],
    ) -> Result<Vec<(String, Result<()>)>> {
        self.versions.negotiate(ApiKey::AlterUserScramCredentials)?;
        self.on_controller(|c, v| users::alter(c, v, alterations))
    }

    /// DescribeUserScramCredentials of every user (`None`) or of the named ones.
    pub fn describe_scram_credentials(
        &mut self,
        users: Option<&[String]>,
    ) -> Result<Vec<(String, Result<UserCredentials>)>> {
        users::describe(&mut self.conn, &self.versions, users)
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
                return Err(Error::Protocol(format!(
                    "topic {topic} not ready after {timeout:?}: error {}, {} partitions",
                    error_name(meta.topic_error),
                    meta.partitions.len()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// ListOffsets for some partitions on their leader. `timestamp` is -2 for earliest, -1 for
/// latest. Returns (partition, error code, offset).
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
                .with_name(admin::topic_name(topic))
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

/// NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE, UNKNOWN_TOPIC_OR_PARTITION: retry after a
/// metadata refresh.
pub fn is_retriable_leader_error(code: i16) -> bool {
    matches!(code, 6 | 5 | 3)
}

/// Kafka's text form of a topic id (`Uuid.toString()`): base64url of the 16 bytes, without
/// padding (22 characters).
pub fn topic_id_string(id: &uuid::Uuid) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = id.as_bytes();
    let mut out = String::with_capacity(22);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_id_like_kafka() {
        assert_eq!(
            topic_id_string(&uuid::Uuid::nil()),
            "AAAAAAAAAAAAAAAAAAAAAA"
        );
        // Kafka: new Uuid(0x0123456789abcdefL, 0xfedcba9876543210L).toString()
        let id = uuid::Uuid::from_u128(0x0123456789abcdef_fedcba9876543210);
        assert_eq!(topic_id_string(&id), "ASNFZ4mrze_-3LqYdlQyEA");
        let max = uuid::Uuid::from_u128(u128::MAX);
        assert_eq!(topic_id_string(&max), "_____________________w");
    }

    #[test]
    fn bootstrap_list() {
        assert_eq!(parse_bootstrap(" a:1, b:2,,"), vec!["a:1", "b:2"]);
    }
}
