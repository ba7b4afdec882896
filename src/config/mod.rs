//! Broker and topic configuration, by Kafka's property names.
//!
//! Every property the broker understands is one row of [`BROKER_PROPERTIES`] or
//! [`TOPIC_PROPERTIES`]: its name, default and type. Values come from a file (Kafka's
//! `key=value` properties, or TOML), then `--set KEY=VALUE` overrides. An unknown key or a bad
//! value is an error that names the key.

mod property;
mod settings;

pub use property::{Kind, Property, Value};
pub use settings::{BrokerSettings, CleanupPolicy, TopicSettings, TopicSettingsTable};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[cfg(test)]
use crate::security::listener::ClientAuth;
use crate::security::listener::{ListenerProperties, Listeners};
use crate::security::scram::UserScramCredential;

#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    #[error("unknown configuration property '{0}'")]
    UnknownKey(String),
    #[error("invalid value '{value}' for '{key}': {reason}")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("cannot read config file {path}: {reason}")]
    File { path: String, reason: String },
}

impl ConfigError {
    /// The same error, naming `key` (a prefixed name) instead of the property's own.
    fn for_key(self, key: &str) -> Self {
        match self {
            ConfigError::InvalidValue { value, reason, .. } => ConfigError::InvalidValue {
                key: key.to_string(),
                value,
                reason,
            },
            other => other,
        }
    }
}

const I32_MAX: i64 = i32::MAX as i64;

/// Broker-wide properties. Topic-level properties in [`TOPIC_PROPERTIES`] take their default
/// from the broker property named in their `broker_default` column.
pub static BROKER_PROPERTIES: &[Property] = &[
    Property::int("node.id", 1, 0, I32_MAX),
    Property::int("num.partitions", 1, 1, 100_000),
    Property::int("default.replication.factor", 1, 1, i16::MAX as i64),
    Property::boolean("auto.create.topics.enable", true),
    Property::int("min.insync.replicas", 1, 1, I32_MAX),
    Property::int("log.segment.bytes", 1 << 30, 14, I32_MAX),
    Property::int("log.roll.ms", 7 * 24 * 3_600_000, 1, i64::MAX),
    Property::int("log.retention.ms", 7 * 24 * 3_600_000, -1, i64::MAX),
    Property::int("log.retention.bytes", -1, -1, i64::MAX),
    Property::int("log.retention.check.interval.ms", 300_000, 1, i64::MAX),
    Property::int("log.index.interval.bytes", 4096, 0, I32_MAX),
    // fdatasync once this many messages are unsynced. corelog's default 1 syncs every flush
    // and acknowledges only synced data (group commit); above 1 a batch is acknowledged once
    // written (O_DIRECT: survives a process crash, not a power loss). Kafka's default is
    // Long.MAX_VALUE (never flush explicitly).
    Property::int("log.flush.interval.messages", 1, 1, i64::MAX),
    // With log.flush.interval.messages > 1: fdatasync at the latest this long after the
    // previous one. Kafka's default: unset (Long.MAX_VALUE, never).
    Property::int("log.flush.interval.ms", i64::MAX, 0, i64::MAX),
    // How often each shard rewrites its recovery-point file (all its partitions in one small
    // write, only when a recovery point moved). A crash restart CRC-scans each log from
    // there, so this bounds the scan to about this much of the latest writes. Kafka's
    // default is 60 s; one write and two fsyncs per shard per second cost far less than
    // the data's own fdatasyncs, so corelog's is 1 s.
    Property::int("log.flush.offset.checkpoint.interval.ms", 1_000, 1, I32_MAX),
    Property::int("message.max.bytes", 1_048_588, 0, I32_MAX),
    Property::int("socket.request.max.bytes", 104_857_600, 1, I32_MAX),
    // The most record bytes one Fetch response carries (Kafka's default: 55 MiB).
    Property::int("fetch.max.bytes", 57_671_680, 1024, I32_MAX),
    // Partition replicas one shard (core) may own; Redpanda's topic_partitions_per_shard.
    Property::int("corelog.max.partitions.per.shard", 1000, 1, 1_000_000),
    // Per shard: recent batches kept in memory for tailing readers (the budget of every
    // partition tail cache on the shard together).
    Property::int("corelog.tail.cache.bytes.per.shard", 256 << 20, 0, 1 << 40),
    // Per shard (Kafka's is per broker and unbounded by default): bytes of requests being
    // read or waiting to be handled, beyond the first 64 KiB of each frame. When spent,
    // connections stop reading their sockets until requests are handled.
    Property::int("queued.max.request.bytes", 128 << 20, 1, 1 << 40),
    // Per shard: bytes of Fetch responses being read or waiting to be written. When spent,
    // fetches wait (back-pressure). At least fetch.max.bytes (checked at startup).
    Property::int(
        "corelog.fetch.response.bytes.per.shard",
        256 << 20,
        1024,
        1 << 40,
    ),
    // Broker-wide, split evenly over the shards; connections beyond are closed at accept.
    Property::int("max.connections", 10_000, 1, I32_MAX),
    Property::int("max.connections.per.ip", 1_000, 1, I32_MAX),
    Property::int("connections.max.idle.ms", 600_000, 1, i64::MAX),
    // The controller quorum, `id@host:port,...`; empty: a quorum of this node alone.
    Property::text("controller.quorum.voters", ""),
    // `NAME://HOST:PORT,...`; empty: one PLAINTEXT listener on `--listen`.
    Property::text("listeners", ""),
    Property::text(
        "listener.security.protocol.map",
        "PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL",
    ),
    // What clients are told, per listener (`NAME://HOST:PORT,...`); a listener it does not
    // name advertises its own address (`localhost` for every interface).
    Property::text("advertised.listeners", ""),
    // Empty: PLAINTEXT if it is a listener, else the first listener.
    Property::text("inter.broker.listener.name", ""),
    // Validated only: the controller quorum has its own transport.
    Property::text("controller.listener.names", ""),
    // TLS (SSL and SASL_SSL listeners, and the replica fetcher on an SSL inter-broker
    // listener). PEM files only: the keystore holds the private key and certificate chain.
    Property::text("ssl.keystore.location", "").per_listener(),
    Property::choice("ssl.keystore.type", "PEM", &["PEM"]).per_listener(),
    Property::text("ssl.truststore.location", "").per_listener(),
    Property::choice("ssl.truststore.type", "PEM", &["PEM"]).per_listener(),
    Property::choice(
        "ssl.client.auth",
        "none",
        &["none", "requested", "required"],
    )
    .per_listener(),
    // A connection's TLS handshake (and SASL exchange) must end within this, or it is closed.
    Property::int("corelog.authentication.timeout.ms", 10_000, 1, I32_MAX),
    Property::int("broker.heartbeat.interval.ms", 250, 10, I32_MAX),
    Property::int("broker.session.timeout.ms", 1500, 100, I32_MAX),
    Property::int("replica.lag.time.max.ms", 30_000, 10, I32_MAX),
    // Consumer groups and their committed offsets (the internal `__consumer_offsets` topic).
    Property::int("offsets.topic.num.partitions", 50, 1, 100_000),
    Property::int("offsets.topic.replication.factor", 3, 1, i16::MAX as i64),
    Property::int("offsets.topic.segment.bytes", 104_857_600, 14, I32_MAX),
    Property::int("offsets.commit.timeout.ms", 5_000, 1, I32_MAX),
    Property::int("offsets.retention.minutes", 7 * 24 * 60, 1, I32_MAX),
    Property::int("offsets.retention.check.interval.ms", 600_000, 1, i64::MAX),
    Property::int("group.min.session.timeout.ms", 6_000, 0, I32_MAX),
    Property::int("group.max.session.timeout.ms", 1_800_000, 0, I32_MAX),
    Property::int("group.initial.rebalance.delay.ms", 3_000, 0, I32_MAX),
    Property::int("group.max.size", I32_MAX, 1, I32_MAX),
    // Authorization (ACLs in the metadata log). Off: every request is allowed, as before.
    Property::boolean("authorizer.enabled", false),
    // `User:a;User:b`: principals allowed everything, whatever the ACLs say.
    Property::text("super.users", ""),
    Property::boolean("allow.everyone.if.no.acl.found", false),
    // What a SASL listener offers (also per listener, as Kafka's
    // `listener.name.<n>.sasl.enabled.mechanisms`). Kafka's default, GSSAPI, is not served; the default is
    // SCRAM only because PLAIN sends the password itself (in clear text on SASL_PLAINTEXT):
    // an operator who wants it lists it, as Kafka operators list every mechanism they use.
    Property::list(
        "sasl.enabled.mechanisms",
        "SCRAM-SHA-256,SCRAM-SHA-512",
        &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
    )
    .per_listener(),
    // The largest frame a connection may send before it has authenticated (Kafka's default);
    // a larger one closes the connection unread.
    Property::int("sasl.server.max.receive.size", 524_288, 1, I32_MAX),
    // A failed authentication is answered (and the connection closed) this much later, which
    // slows password guessing (Kafka's default).
    Property::int("connection.failed.authentication.delay.ms", 100, 0, I32_MAX),
];

/// Topic-level properties, settable at CreateTopics and shown by DescribeConfigs.
pub static TOPIC_PROPERTIES: &[(Property, &str)] = &[
    (
        Property::int("segment.bytes", 1 << 30, 14, I32_MAX),
        "log.segment.bytes",
    ),
    (
        Property::int("segment.ms", 7 * 24 * 3_600_000, 1, i64::MAX),
        "log.roll.ms",
    ),
    (
        Property::int("retention.ms", 7 * 24 * 3_600_000, -1, i64::MAX),
        "log.retention.ms",
    ),
    (
        Property::int("retention.bytes", -1, -1, i64::MAX),
        "log.retention.bytes",
    ),
    (
        Property::int("max.message.bytes", 1_048_588, 0, I32_MAX),
        "message.max.bytes",
    ),
    (
        Property::int("min.insync.replicas", 1, 1, I32_MAX),
        "min.insync.replicas",
    ),
    (
        Property::int("flush.messages", 1, 1, i64::MAX),
        "log.flush.interval.messages",
    ),
    (
        Property::int("flush.ms", i64::MAX, 0, i64::MAX),
        "log.flush.interval.ms",
    ),
    (
        Property::choice("cleanup.policy", "delete", &["delete"]),
        "",
    ),
    (
        Property::boolean("unclean.leader.election.enable", false),
        "",
    ),
];

/// Validated broker configuration: the properties as set, plus where to listen and store.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Properties explicitly set (file or `--set`); the rest take their defaults.
    overrides: BTreeMap<&'static str, Value>,
    /// `listener.name.<listener>.<property>` settings, by (lower-case listener, property).
    listener_overrides: BTreeMap<(String, &'static str), Value>,
    /// First users of a new cluster (`serve --add-scram`); ignored on an existing one.
    pub add_scram: Vec<UserScramCredential>,
}

/// Kafka's prefix of a per-listener property: `listener.name.<lower-case name>.`.
const LISTENER_PREFIX: &str = "listener.name.";

impl BrokerConfig {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            overrides: BTreeMap::new(),
            listener_overrides: BTreeMap::new(),
            add_scram: Vec::new(),
        }
    }

    /// Sets one property by its Kafka name, validating the value.
    pub fn set(&mut self, key: &str, raw: &str) -> Result<(), ConfigError> {
        if let Some((listener, name)) = key
            .strip_prefix(LISTENER_PREFIX)
            .and_then(|rest| rest.split_once('.'))
        {
            let property = BROKER_PROPERTIES
                .iter()
                .find(|p| p.per_listener && p.name == name)
                .ok_or_else(|| ConfigError::UnknownKey(key.to_string()))?;
            let value = property.parse(raw).map_err(|e| e.for_key(key))?;
            let listener = listener.to_ascii_lowercase();
            self.listener_overrides
                .insert((listener, property.name), value);
            return Ok(());
        }
        let property = BROKER_PROPERTIES
            .iter()
            .find(|p| p.name == key)
            .ok_or_else(|| ConfigError::UnknownKey(key.to_string()))?;
        let value = property.parse(raw)?;
        if property.name == "super.users" {
            crate::security::acl::parse_super_users(raw).map_err(|reason| {
                ConfigError::InvalidValue {
                    key: key.to_string(),
                    value: raw.to_string(),
                    reason,
                }
            })?;
        }
        self.overrides.insert(property.name, value);
        Ok(())
    }

    /// Applies `KEY=VALUE` (as given to `--set`).
    pub fn set_assignment(&mut self, assignment: &str) -> Result<(), ConfigError> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| ConfigError::InvalidValue {
                key: assignment.to_string(),
                value: String::new(),
                reason: "expected KEY=VALUE".to_string(),
            })?;
        self.set(key.trim(), value.trim())
    }

    /// Loads a file: TOML when it ends in `.toml`, Kafka's `key=value` properties otherwise.
    pub fn load_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let pairs = if path.extension().is_some_and(|e| e == "toml") {
            property::parse_toml(&text).map_err(|reason| ConfigError::File {
                path: path.display().to_string(),
                reason,
            })?
        } else {
            property::parse_properties(&text)
        };
        pairs.iter().try_for_each(|(k, v)| self.set(k, v))
    }

    /// The value of a broker property, set or default.
    pub fn value(&self, key: &str) -> Value {
        match self.overrides.get(key) {
            Some(v) => v.clone(),
            None => BROKER_PROPERTIES
                .iter()
                .find(|p| p.name == key)
                .map(|p| p.default.clone())
                .unwrap_or_else(|| panic!("no broker property named {key}")),
        }
    }

    /// A per-listener property as the listener named `listener` sees it: its
    /// `listener.name.` setting, else the broker-wide one.
    pub fn listener_value(&self, listener: &str, key: &str) -> Value {
        let own = self
            .listener_overrides
            .iter()
            .find(|((l, k), _)| l.eq_ignore_ascii_case(listener) && *k == key);
        match own {
            Some((_, v)) => v.clone(),
            None => self.value(key),
        }
    }

    /// The listeners, resolved and cross-checked; an error names the property at fault.
    pub fn listeners(&self) -> Result<Listeners, ConfigError> {
        let text = |key| self.text(key);
        let (listeners, map, advertised) = (
            text("listeners"),
            text("listener.security.protocol.map"),
            text("advertised.listeners"),
        );
        let (inter_broker, controller) = (
            text("inter.broker.listener.name"),
            text("controller.listener.names"),
        );
        let props = ListenerProperties {
            listeners: &listeners,
            protocol_map: &map,
            advertised: &advertised,
            inter_broker: &inter_broker,
            controller: &controller,
        };
        let resolved =
            Listeners::resolve(&props, self.listen).map_err(|e| ConfigError::InvalidValue {
                key: e.key.to_string(),
                value: self.text(e.key),
                reason: e.reason,
            })?;
        for (listener, key) in self.listener_overrides.keys() {
            if !resolved
                .bound
                .iter()
                .any(|l| l.name.eq_ignore_ascii_case(listener))
            {
                return Err(ConfigError::InvalidValue {
                    key: format!("{LISTENER_PREFIX}{listener}.{key}"),
                    value: self.listener_value(listener, key).to_string(),
                    reason: format!("no listener named {}", listener.to_ascii_uppercase()),
                });
            }
        }
        Ok(resolved)
    }

    /// Checks what one property at a time cannot (the listeners against each other); the
    /// broker calls it before starting.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.listeners().map(drop)
    }

    /// Every property, typed; built once (a shard keeps it), read by field.
    pub fn settings(&self) -> BrokerSettings {
        BrokerSettings::from_config(self)
    }

    // Lookups by name stay inside `config`: everyone else reads `BrokerSettings`.
    fn int(&self, key: &str) -> i64 {
        self.value(key).as_int()
    }

    fn bool(&self, key: &str) -> bool {
        self.value(key).as_bool()
    }

    fn text(&self, key: &str) -> String {
        self.value(key).as_str().to_string()
    }

    /// Every broker property with its current value and whether it is the default.
    pub fn entries(&self) -> Vec<(&'static str, Value, bool)> {
        BROKER_PROPERTIES
            .iter()
            .map(|p| match self.overrides.get(p.name) {
                Some(v) => (p.name, v.clone(), false),
                None => (p.name, p.default.clone(), true),
            })
            .collect()
    }

    /// The effective value of a topic property when the topic does not set it.
    pub fn topic_default(&self, property: &Property, broker_key: &str) -> Value {
        if broker_key.is_empty() {
            property.default.clone()
        } else {
            self.value(broker_key)
        }
    }
}

/// A topic's own settings (from CreateTopics), resolved against the broker's defaults.
/// Stored in the metadata log as `key=value` pairs.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(into = "Vec<(String, String)>", try_from = "Vec<(String, String)>")]
pub struct TopicConfig {
    pub overrides: BTreeMap<String, Value>,
}

impl TopicConfig {
    /// Validates `key=value` pairs given at topic creation.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ConfigError> {
        let mut overrides = BTreeMap::new();
        for (key, raw) in pairs {
            let (property, _) = TOPIC_PROPERTIES
                .iter()
                .find(|(p, _)| p.name == key)
                .ok_or_else(|| ConfigError::UnknownKey(key.to_string()))?;
            overrides.insert(key.to_string(), property.parse(raw)?);
        }
        Ok(Self { overrides })
    }

    /// The effective value of a topic property and whether it is the topic's own setting.
    pub fn resolve(&self, key: &str, broker: &BrokerConfig) -> (Value, bool) {
        if let Some(v) = self.overrides.get(key) {
            return (v.clone(), true);
        }
        let (property, broker_key) = TOPIC_PROPERTIES
            .iter()
            .find(|(p, _)| p.name == key)
            .unwrap_or_else(|| panic!("no topic property named {key}"));
        (broker.topic_default(property, broker_key), false)
    }
}

impl From<TopicConfig> for Vec<(String, String)> {
    fn from(config: TopicConfig) -> Self {
        config
            .overrides
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect()
    }
}

impl TryFrom<Vec<(String, String)>> for TopicConfig {
    type Error = ConfigError;

    fn try_from(pairs: Vec<(String, String)>) -> Result<Self, ConfigError> {
        TopicConfig::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BrokerConfig {
        BrokerConfig::new("127.0.0.1:9092".parse().unwrap(), PathBuf::from("data"))
    }

    #[test]
    fn set_overrides_default_and_names_bad_keys() {
        let mut c = config();
        assert_eq!(c.int("num.partitions"), 1);
        c.set_assignment("num.partitions=8").unwrap();
        assert_eq!(c.int("num.partitions"), 8);
        assert_eq!(
            c.set("no.such.key", "1"),
            Err(ConfigError::UnknownKey("no.such.key".into()))
        );
        let err = c.set("num.partitions", "many").unwrap_err();
        assert!(err.to_string().contains("num.partitions"), "{err}");
        assert!(c.set("auto.create.topics.enable", "maybe").is_err());
        assert!(c.set("num.partitions", "0").is_err());
    }

    #[test]
    fn loads_properties_and_toml_files() {
        let dir = tempfile::tempdir().unwrap();
        let props = dir.path().join("server.properties");
        std::fs::write(
            &props,
            "# comment\nnum.partitions = 4\n\nauto.create.topics.enable=false\n",
        )
        .unwrap();
        let toml = dir.path().join("server.toml");
        std::fs::write(
            &toml,
            "log.segment.bytes = 1048576\n[num]\npartitions = 6\n",
        )
        .unwrap();
        let mut c = config();
        c.load_file(&props).unwrap();
        assert_eq!(c.int("num.partitions"), 4);
        assert!(!c.bool("auto.create.topics.enable"));
        c.load_file(&toml).unwrap();
        assert_eq!(c.int("num.partitions"), 6);
        assert_eq!(c.int("log.segment.bytes"), 1_048_576);
    }

    #[test]
    fn per_listener_properties_take_kafkas_prefix() {
        let mut c = config();
        c.set("listeners", "PLAINTEXT://:9092,SSL://:9093").unwrap();
        c.set("ssl.client.auth", "requested").unwrap();
        c.set("listener.name.ssl.ssl.client.auth", "required")
            .unwrap();
        assert_eq!(
            c.listener_value("SSL", "ssl.client.auth").as_str(),
            "required"
        );
        assert_eq!(
            c.listener_value("PLAINTEXT", "ssl.client.auth").as_str(),
            "requested"
        );
        let settings = c.settings();
        let auth: Vec<_> = settings
            .listener_ssl
            .iter()
            .map(|s| s.client_auth)
            .collect();
        assert_eq!(auth, [ClientAuth::Requested, ClientAuth::Required]);
        // Only properties that allow the prefix take it; a bad value names the prefixed key.
        assert!(matches!(
            c.set("listener.name.ssl.num.partitions", "3"),
            Err(ConfigError::UnknownKey(_))
        ));
        let err = c
            .set("listener.name.ssl.ssl.client.auth", "always")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("listener.name.ssl.ssl.client.auth"),
            "{err}"
        );
        assert!(c.set("ssl.keystore.type", "JKS").is_err());
        // A prefix naming no listener is a startup error.
        c.set("listener.name.other.ssl.keystore.location", "/k.pem")
            .unwrap();
        let err = c.check().unwrap_err();
        assert!(
            err.to_string()
                .contains("listener.name.other.ssl.keystore.location"),
            "{err}"
        );
    }

    #[test]
    fn listener_errors_name_their_key() {
        let mut c = config();
        assert_eq!(
            c.settings().listeners.bound[0].to_string(),
            "PLAINTEXT://127.0.0.1:9092"
        );
        c.set("listeners", "PLAINTEXT://:9092,TLS://:9093").unwrap();
        let err = c.check().unwrap_err();
        assert!(err.to_string().contains("'listeners'"), "{err}");
        c.set(
            "listener.security.protocol.map",
            "PLAINTEXT:PLAINTEXT,TLS:SSL",
        )
        .unwrap();
        c.check().unwrap();
        c.set("inter.broker.listener.name", "REPLICATION").unwrap();
        let err = c.check().unwrap_err();
        assert!(
            err.to_string().contains("inter.broker.listener.name"),
            "{err}"
        );
    }

    #[test]
    fn topic_config_falls_back_to_broker_defaults() {
        let mut c = config();
        c.set("log.retention.ms", "1000").unwrap();
        let t = TopicConfig::from_pairs([("segment.bytes", "65536")]).unwrap();
        assert_eq!(t.resolve("segment.bytes", &c), (Value::Int(65536), true));
        assert_eq!(t.resolve("retention.ms", &c), (Value::Int(1000), false));
        assert!(TopicConfig::from_pairs([("cleanup.policy", "compact")]).is_err());
        assert!(TopicConfig::from_pairs([("bogus", "1")]).is_err());
    }
}
