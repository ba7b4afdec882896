//! Typed settings, resolved once from the string-keyed configuration.
//!
//! Request handling reads fields of [`BrokerSettings`] and [`TopicSettings`]; only the two
//! functions that build them name properties, so a misspelt key fails their unit tests
//! instead of a request at run time.

use std::collections::HashMap;
use std::time::Duration;

use uuid::Uuid;

use super::{BrokerConfig, TopicConfig, Value};
use crate::security::acl::{AuthorizerSettings, parse_super_users};
use crate::security::listener::{ClientAuth, Listeners, SslSettings};
use crate::security::sasl::Mechanism;

/// Every broker property, typed. Integer ranges are checked by [`super::BROKER_PROPERTIES`]
/// when a value is set, so the narrowing casts in [`BrokerSettings::from_config`] are exact.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerSettings {
    pub node_id: i32,
    pub num_partitions: i32,
    pub default_replication_factor: i16,
    pub auto_create_topics_enable: bool,
    pub min_insync_replicas: usize,
    pub log_segment_bytes: u64,
    pub log_roll_ms: u64,
    pub log_retention_ms: i64,
    pub log_retention_bytes: i64,
    pub log_retention_check_interval: Duration,
    pub log_index_interval_bytes: u32,
    pub log_flush_interval_messages: u64,
    pub log_flush_interval_ms: u64,
    /// How often a shard rewrites its recovery-point file (when a recovery point moved).
    pub log_flush_offset_checkpoint_interval: Duration,
    pub message_max_bytes: usize,
    pub socket_request_max_bytes: i64,
    /// The most record bytes of one Fetch response (a client's `max_bytes` may lower it).
    pub fetch_max_bytes: usize,
    pub max_partitions_per_shard: u32,
    pub tail_cache_bytes_per_shard: usize,
    pub queued_max_request_bytes_per_shard: usize,
    pub fetch_response_bytes_per_shard: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub connections_max_idle: Duration,
    /// `id@host:port,...`; empty: a quorum of this node alone.
    pub controller_quorum_voters: String,
    /// Every listener: bound, advertised, which one brokers use.
    pub listeners: Listeners,
    /// Per bound listener (same order as `listeners.bound`): its TLS settings.
    pub listener_ssl: Vec<SslSettings>,
    /// Bound on a connection's TLS handshake and authentication.
    pub authentication_timeout: Duration,
    pub broker_heartbeat_interval: Duration,
    pub broker_session_timeout: Duration,
    pub replica_lag_time_max_ms: i64,
    pub offsets_topic_num_partitions: i32,
    pub offsets_topic_replication_factor: i16,
    pub offsets_topic_segment_bytes: i64,
    pub offsets_commit_timeout: Duration,
    pub offsets_retention_ms: i64,
    pub offsets_retention_check_interval_ms: i64,
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    pub group_initial_rebalance_delay_ms: i64,
    pub group_max_size: usize,
    pub authorizer: AuthorizerSettings,
    /// Per bound listener (same order as `listeners.bound`): what a SASL listener offers.
    pub listener_sasl_mechanisms: Vec<Vec<Mechanism>>,
    pub sasl_server_max_receive_size: usize,
    pub connection_failed_authentication_delay: Duration,
}

impl BrokerSettings {
    /// Reads every broker property once; the only place that names them.
    pub fn from_config(config: &BrokerConfig) -> Self {
        let int = |key| config.int(key);
        let millis = |key| Duration::from_millis(config.int(key) as u64);
        // `BrokerConfig::check` has found the listeners valid before the broker starts.
        let listeners = config
            .listeners()
            .unwrap_or_else(|e| panic!("listeners not checked at startup: {e}"));
        Self {
            node_id: int("node.id") as i32,
            num_partitions: int("num.partitions") as i32,
            default_replication_factor: int("default.replication.factor") as i16,
            auto_create_topics_enable: config.bool("auto.create.topics.enable"),
            min_insync_replicas: int("min.insync.replicas") as usize,
            log_segment_bytes: int("log.segment.bytes") as u64,
            log_roll_ms: int("log.roll.ms") as u64,
            log_retention_ms: int("log.retention.ms"),
            log_retention_bytes: int("log.retention.bytes"),
            log_retention_check_interval: millis("log.retention.check.interval.ms"),
            log_index_interval_bytes: int("log.index.interval.bytes") as u32,
            log_flush_interval_messages: int("log.flush.interval.messages") as u64,
            log_flush_interval_ms: int("log.flush.interval.ms") as u64,
            log_flush_offset_checkpoint_interval: millis("log.flush.offset.checkpoint.interval.ms"),
            message_max_bytes: int("message.max.bytes") as usize,
            socket_request_max_bytes: int("socket.request.max.bytes"),
            fetch_max_bytes: int("fetch.max.bytes") as usize,
            max_partitions_per_shard: int("corelog.max.partitions.per.shard") as u32,
            tail_cache_bytes_per_shard: int("corelog.tail.cache.bytes.per.shard") as usize,
            queued_max_request_bytes_per_shard: int("queued.max.request.bytes") as usize,
            fetch_response_bytes_per_shard: int("corelog.fetch.response.bytes.per.shard") as usize,
            max_connections: int("max.connections") as usize,
            max_connections_per_ip: int("max.connections.per.ip") as usize,
            connections_max_idle: millis("connections.max.idle.ms"),
            controller_quorum_voters: config.text("controller.quorum.voters"),
            listener_ssl: listener_ssl(config, &listeners),
            listener_sasl_mechanisms: listener_sasl_mechanisms(config, &listeners),
            listeners,
            authentication_timeout: millis("corelog.authentication.timeout.ms"),
            broker_heartbeat_interval: millis("broker.heartbeat.interval.ms"),
            broker_session_timeout: millis("broker.session.timeout.ms"),
            replica_lag_time_max_ms: int("replica.lag.time.max.ms"),
            offsets_topic_num_partitions: int("offsets.topic.num.partitions") as i32,
            offsets_topic_replication_factor: int("offsets.topic.replication.factor") as i16,
            offsets_topic_segment_bytes: int("offsets.topic.segment.bytes"),
            offsets_commit_timeout: millis("offsets.commit.timeout.ms"),
            offsets_retention_ms: int("offsets.retention.minutes") * 60_000,
            offsets_retention_check_interval_ms: int("offsets.retention.check.interval.ms"),
            group_min_session_timeout_ms: int("group.min.session.timeout.ms") as i32,
            group_max_session_timeout_ms: int("group.max.session.timeout.ms") as i32,
            group_initial_rebalance_delay_ms: int("group.initial.rebalance.delay.ms"),
            group_max_size: int("group.max.size") as usize,
            authorizer: AuthorizerSettings {
                enabled: config.bool("authorizer.enabled"),
                // Checked when set (`BrokerConfig::set`).
                super_users: parse_super_users(&config.text("super.users")).unwrap_or_default(),
                allow_everyone_if_no_acl_found: config.bool("allow.everyone.if.no.acl.found"),
            },
            sasl_server_max_receive_size: int("sasl.server.max.receive.size") as usize,
            connection_failed_authentication_delay: millis(
                "connection.failed.authentication.delay.ms",
            ),
        }
    }
}

/// `sasl.enabled.mechanisms` of every bound listener, in order (the property accepts only
/// names of served mechanisms).
fn listener_sasl_mechanisms(config: &BrokerConfig, listeners: &Listeners) -> Vec<Vec<Mechanism>> {
    listeners
        .bound
        .iter()
        .map(|listener| {
            let names = config.listener_value(&listener.name, "sasl.enabled.mechanisms");
            names
                .as_str()
                .split(',')
                .filter_map(Mechanism::from_name)
                .collect()
        })
        .collect()
}

/// The `ssl.*` settings of every bound listener, in order.
fn listener_ssl(config: &BrokerConfig, listeners: &Listeners) -> Vec<SslSettings> {
    listeners
        .bound
        .iter()
        .map(|listener| {
            let text = |key| config.listener_value(&listener.name, key).to_string();
            SslSettings {
                keystore_location: text("ssl.keystore.location"),
                truststore_location: text("ssl.truststore.location"),
                client_auth: match text("ssl.client.auth").as_str() {
                    "required" => ClientAuth::Required,
                    "requested" => ClientAuth::Requested,
                    _ => ClientAuth::None,
                },
            }
        })
        .collect()
}

/// `cleanup.policy`: only deletion is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupPolicy {
    Delete,
}

/// A topic's effective settings: its own configs over the broker's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopicSettings {
    pub segment_bytes: u64,
    pub segment_ms: u64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_message_bytes: usize,
    pub min_insync_replicas: usize,
    pub flush_messages: u64,
    pub flush_ms: u64,
    pub cleanup_policy: CleanupPolicy,
    pub unclean_leader_election_enable: bool,
}

impl TopicSettings {
    /// Resolves a topic's configs once; the only place that names topic properties.
    pub fn resolve(config: &TopicConfig, broker: &BrokerSettings) -> Self {
        let own = |key: &str| config.overrides.get(key);
        let int_or = |key, default: i64| own(key).map_or(default, Value::as_int);
        Self {
            segment_bytes: int_or("segment.bytes", broker.log_segment_bytes as i64) as u64,
            segment_ms: int_or("segment.ms", broker.log_roll_ms as i64) as u64,
            retention_ms: int_or("retention.ms", broker.log_retention_ms),
            retention_bytes: int_or("retention.bytes", broker.log_retention_bytes),
            max_message_bytes: int_or("max.message.bytes", broker.message_max_bytes as i64)
                as usize,
            min_insync_replicas: int_or("min.insync.replicas", broker.min_insync_replicas as i64)
                as usize,
            flush_messages: int_or("flush.messages", broker.log_flush_interval_messages as i64)
                as u64,
            flush_ms: int_or("flush.ms", broker.log_flush_interval_ms as i64) as u64,
            // `delete` is the only choice the property table accepts.
            cleanup_policy: CleanupPolicy::Delete,
            unclean_leader_election_enable: own("unclean.leader.election.enable")
                .is_some_and(Value::as_bool),
        }
    }
}

/// The resolved settings of every topic in the applied metadata, by name. A topic is
/// resolved again only when it is new (a new id) or its configs changed.
#[derive(Debug, Default)]
pub struct TopicSettingsTable {
    topics: HashMap<String, ResolvedTopic>,
}

#[derive(Debug)]
struct ResolvedTopic {
    id: Uuid,
    config: TopicConfig,
    settings: TopicSettings,
}

impl TopicSettingsTable {
    pub fn get(&self, topic: &str) -> Option<TopicSettings> {
        self.topics.get(topic).map(|t| t.settings)
    }

    /// Makes the table match `topics` (name, id, configs): forgets deleted topics and
    /// resolves new or changed ones. Returns the names of the topics whose settings changed
    /// while keeping their id, whose open logs need the new settings.
    pub fn refresh<'a>(
        &mut self,
        topics: impl IntoIterator<Item = (&'a str, Uuid, &'a TopicConfig)>,
        broker: &BrokerSettings,
    ) -> Vec<String> {
        let mut seen = HashMap::with_capacity(self.topics.len());
        let mut altered = Vec::new();
        for (name, id, config) in topics {
            let previous = self.topics.remove(name);
            let resolved = match previous {
                Some(p) if p.id == id && p.config == *config => p,
                previous => {
                    if previous.is_some_and(|p| p.id == id) {
                        altered.push(name.to_string());
                    }
                    ResolvedTopic {
                        id,
                        config: config.clone(),
                        settings: TopicSettings::resolve(config, broker),
                    }
                }
            };
            seen.insert(name.to_string(), resolved);
        }
        self.topics = seen;
        altered
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::TOPIC_PROPERTIES;
    use super::*;

    fn config() -> BrokerConfig {
        BrokerConfig::new("127.0.0.1:9092".parse().unwrap(), PathBuf::from("data"))
    }

    #[test]
    fn broker_settings_read_every_key_from_the_defaults() {
        let settings = config().settings();
        assert_eq!(settings.node_id, 1);
        assert_eq!(settings.log_segment_bytes, 1 << 30);
        assert_eq!(settings.offsets_retention_ms, 7 * 24 * 3_600_000);
        assert_eq!(
            settings.broker_heartbeat_interval,
            Duration::from_millis(250)
        );
        assert!(settings.controller_quorum_voters.is_empty());
    }

    #[test]
    fn sasl_mechanisms_are_a_list_of_served_ones() {
        let mut c = config();
        let all: Vec<Mechanism> = Mechanism::ALL.to_vec();
        c.set("listeners", "A://127.0.0.1:1,B://127.0.0.1:2")
            .unwrap();
        c.set(
            "listener.security.protocol.map",
            "A:SASL_PLAINTEXT,B:SASL_SSL",
        )
        .unwrap();
        assert_eq!(
            c.settings().listener_sasl_mechanisms,
            [&all[1..], &all[1..]]
        );
        c.set("sasl.enabled.mechanisms", " PLAIN , SCRAM-SHA-512")
            .unwrap();
        c.set("listener.name.b.sasl.enabled.mechanisms", "PLAIN")
            .unwrap();
        assert_eq!(
            c.settings().listener_sasl_mechanisms,
            [vec![all[0], all[2]], vec![all[0]]]
        );
        for bad in ["GSSAPI", "PLAIN,PLAIN", "", "PLAIN,"] {
            let err = c.set("sasl.enabled.mechanisms", bad).unwrap_err();
            assert!(err.to_string().contains("sasl.enabled.mechanisms"), "{err}");
        }
    }

    #[test]
    fn broker_settings_follow_overrides() {
        let mut c = config();
        c.set("replica.lag.time.max.ms", "500").unwrap();
        c.set("auto.create.topics.enable", "false").unwrap();
        let settings = c.settings();
        assert_eq!(settings.replica_lag_time_max_ms, 500);
        assert!(!settings.auto_create_topics_enable);
        assert!(!settings.authorizer.enabled);
        c.set("authorizer.enabled", "true").unwrap();
        c.set("super.users", "User:admin;User:CN=broker,O=x")
            .unwrap();
        c.set("allow.everyone.if.no.acl.found", "true").unwrap();
        assert!(c.set("super.users", "admin").is_err());
        let authorizer = c.settings().authorizer;
        assert!(authorizer.enabled && authorizer.allow_everyone_if_no_acl_found);
        assert_eq!(authorizer.super_users[1].name, "CN=broker,O=x");
    }

    /// Typed resolution agrees with the property table (what DescribeConfigs reports), for
    /// a topic with no configs and one with every integer config set.
    #[test]
    fn topic_settings_agree_with_the_property_table() {
        let mut broker = config();
        broker.set("log.retention.ms", "1000").unwrap();
        broker.set("min.insync.replicas", "2").unwrap();
        broker.set("log.flush.interval.messages", "7").unwrap();
        let own = TopicConfig::from_pairs([
            ("segment.bytes", "65536"),
            ("segment.ms", "77"),
            ("retention.ms", "-1"),
            ("retention.bytes", "4096"),
            ("max.message.bytes", "999"),
            ("min.insync.replicas", "3"),
            ("flush.messages", "100000"),
            ("flush.ms", "0"),
            ("unclean.leader.election.enable", "true"),
        ])
        .unwrap();
        for topic in [TopicConfig::default(), own] {
            let settings = TopicSettings::resolve(&topic, &broker.settings());
            let table = |key| topic.resolve(key, &broker).0;
            let typed = [
                ("segment.bytes", Value::Int(settings.segment_bytes as i64)),
                ("segment.ms", Value::Int(settings.segment_ms as i64)),
                ("retention.ms", Value::Int(settings.retention_ms)),
                ("retention.bytes", Value::Int(settings.retention_bytes)),
                (
                    "max.message.bytes",
                    Value::Int(settings.max_message_bytes as i64),
                ),
                (
                    "min.insync.replicas",
                    Value::Int(settings.min_insync_replicas as i64),
                ),
                ("flush.messages", Value::Int(settings.flush_messages as i64)),
                ("flush.ms", Value::Int(settings.flush_ms as i64)),
                (
                    "unclean.leader.election.enable",
                    Value::Bool(settings.unclean_leader_election_enable),
                ),
            ];
            for (key, value) in &typed {
                assert_eq!(&table(key), value, "{key}");
            }
            assert_eq!(table("cleanup.policy").as_str(), "delete");
            assert_eq!(TOPIC_PROPERTIES.len(), typed.len() + 1);
        }
    }

    #[test]
    fn table_resolves_only_new_or_altered_topics() {
        let broker = config().settings();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let plain = TopicConfig::default();
        let small = TopicConfig::from_pairs([("segment.bytes", "65536")]).unwrap();
        let mut table = TopicSettingsTable::default();
        assert!(table.refresh([("t", a, &plain)], &broker).is_empty());
        assert_eq!(table.get("t").map(|s| s.segment_bytes), Some(1 << 30));
        assert!(table.refresh([("t", a, &plain)], &broker).is_empty());
        assert_eq!(table.refresh([("t", a, &small)], &broker), vec!["t"]);
        assert_eq!(table.get("t").map(|s| s.segment_bytes), Some(65536));
        // Deleted and created again: a new topic, not an altered one.
        assert!(table.refresh([("t", b, &plain)], &broker).is_empty());
        assert_eq!(table.get("t").map(|s| s.segment_bytes), Some(1 << 30));
        table.refresh([], &broker);
        assert_eq!(table.get("t"), None);
    }
}
