//! Listeners as Kafka configures them: `listeners=NAME://HOST:PORT,...`, each mapped to a
//! security protocol by `listener.security.protocol.map`, advertised to clients by
//! `advertised.listeners`, one of them the brokers' own (`inter.broker.listener.name`).
//!
//! Pure: parsing and validation only (a host name is resolved by whoever binds it).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// How a listener's connections are secured (Kafka's `SecurityProtocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SecurityProtocol {
    #[serde(rename = "PLAINTEXT")]
    Plaintext,
    #[serde(rename = "SSL")]
    Ssl,
    #[serde(rename = "SASL_PLAINTEXT")]
    SaslPlaintext,
    #[serde(rename = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    pub const ALL: [SecurityProtocol; 4] = [
        SecurityProtocol::Plaintext,
        SecurityProtocol::Ssl,
        SecurityProtocol::SaslPlaintext,
        SecurityProtocol::SaslSsl,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// Kafka's names, case-insensitive as Kafka's `SecurityProtocol.forName`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name.trim()))
    }

    /// The connection runs over TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// The connection authenticates with SASL before its first other request.
    pub fn is_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One named endpoint: where a listener binds, or where clients are told to connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Upper case, as Kafka normalizes listener names.
    pub name: String,
    /// Empty: every interface (as Kafka's `PLAINTEXT://:9092`).
    pub host: String,
    pub port: u16,
    pub protocol: SecurityProtocol,
}

impl Endpoint {
    /// Where to bind: a literal IP, or `None` for a name the caller must resolve.
    pub fn bind_address(&self) -> Option<SocketAddr> {
        if self.host.is_empty() {
            return Some(SocketAddr::from(([0, 0, 0, 0], self.port)));
        }
        let ip = self.host.trim_start_matches('[').trim_end_matches(']');
        ip.parse().ok().map(|ip| SocketAddr::new(ip, self.port))
    }

    /// The address clients are told by default: `localhost` for every interface.
    fn default_advertised(&self) -> Endpoint {
        let wildcard =
            self.host.is_empty() || self.bind_address().is_some_and(|a| a.ip().is_unspecified());
        Endpoint {
            host: if wildcard {
                "localhost".to_string()
            } else {
                self.host.clone()
            },
            ..self.clone()
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.name, self.host, self.port)
    }
}

/// `ssl.client.auth`: whether a TLS listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    Requested,
    Required,
}

/// One listener's `ssl.*` settings (its `listener.name.<name>.` ones over the broker's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslSettings {
    /// PEM: the private key and the certificate chain; empty: unset.
    pub keystore_location: String,
    /// PEM: the CA certificates trusted; empty: unset.
    pub truststore_location: String,
    pub client_auth: ClientAuth,
}

/// The broker's listeners, resolved and checked against each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listeners {
    /// What to bind, in configuration order.
    pub bound: Vec<Endpoint>,
    /// What clients and brokers are told, one per bound listener, same order.
    pub advertised: Vec<Endpoint>,
    /// The listener other brokers connect to (replica fetches).
    pub inter_broker: String,
    /// `controller.listener.names`, validated only (the quorum has its own transport).
    pub controller: Vec<String>,
}

/// The text of every listener property, as configured (empty: unset).
#[derive(Debug, Clone, Default)]
pub struct ListenerProperties<'a> {
    pub listeners: &'a str,
    pub protocol_map: &'a str,
    pub advertised: &'a str,
    pub inter_broker: &'a str,
    pub controller: &'a str,
}

/// A listener property that does not hold: its key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerError {
    pub key: &'static str,
    pub reason: String,
}

impl fmt::Display for ListenerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// A configuration names no more listeners than this (each is bound on every shard).
pub const MAX_LISTENERS: usize = 16;
/// The longest listener name or host accepted (a registration carries them to every broker).
pub const MAX_NAME_BYTES: usize = 255;

const LISTENERS: &str = "listeners";
const PROTOCOL_MAP: &str = "listener.security.protocol.map";
const ADVERTISED: &str = "advertised.listeners";
const INTER_BROKER: &str = "inter.broker.listener.name";
const CONTROLLER: &str = "controller.listener.names";

impl Listeners {
    /// One PLAINTEXT listener on `listen` (`--listen`, and the embedded default).
    pub fn plaintext(listen: SocketAddr) -> Listeners {
        Listeners::resolve(&ListenerProperties::default(), listen)
            .expect("a single PLAINTEXT listener is always valid")
    }

    /// Resolves the listener properties; `listeners` unset means `PLAINTEXT://{listen}`.
    pub fn resolve(
        props: &ListenerProperties<'_>,
        listen: SocketAddr,
    ) -> Result<Listeners, ListenerError> {
        let map = protocol_map(props.protocol_map)?;
        let bound = if props.listeners.trim().is_empty() {
            vec![Endpoint {
                name: "PLAINTEXT".into(),
                host: listen.ip().to_string(),
                port: listen.port(),
                protocol: SecurityProtocol::Plaintext,
            }]
        } else {
            endpoints(LISTENERS, props.listeners, &map)?
        };
        check_unique(LISTENERS, &bound, true)?;
        let advertised = advertised(props.advertised, &bound, &map)?;
        let inter_broker = inter_broker(props.inter_broker, &bound)?;
        let controller = controller(props.controller, &map, &inter_broker)?;
        Ok(Listeners {
            bound,
            advertised,
            inter_broker,
            controller,
        })
    }

    /// The advertised endpoint of the listener named `name`.
    pub fn advertised(&self, name: &str) -> Option<&Endpoint> {
        self.advertised.iter().find(|e| e.name == name)
    }

    pub fn inter_broker_protocol(&self) -> SecurityProtocol {
        self.advertised(&self.inter_broker)
            .map_or(SecurityProtocol::Plaintext, |e| e.protocol)
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ListenerError {
    ListenerError {
        key,
        reason: reason.into(),
    }
}

fn entries(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn listener_name(key: &'static str, raw: &str) -> Result<String, ListenerError> {
    let name = raw.trim();
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(invalid(key, format!("invalid listener name '{name}'")));
    }
    Ok(name.to_ascii_uppercase())
}

/// `NAME:PROTOCOL,...`; unset: Kafka's default, each protocol mapped to itself.
fn protocol_map(text: &str) -> Result<BTreeMap<String, SecurityProtocol>, ListenerError> {
    if text.trim().is_empty() {
        return Ok(SecurityProtocol::ALL
            .into_iter()
            .map(|p| (p.name().to_string(), p))
            .collect());
    }
    let mut map = BTreeMap::new();
    for entry in entries(text) {
        let (name, protocol) = entry
            .split_once(':')
            .ok_or_else(|| invalid(PROTOCOL_MAP, format!("'{entry}' is not NAME:PROTOCOL")))?;
        let name = listener_name(PROTOCOL_MAP, name)?;
        let protocol = SecurityProtocol::parse(protocol).ok_or_else(|| {
            invalid(
                PROTOCOL_MAP,
                format!("unknown security protocol '{}'", protocol.trim()),
            )
        })?;
        if map.insert(name.clone(), protocol).is_some() {
            return Err(invalid(PROTOCOL_MAP, format!("{name} is mapped twice")));
        }
    }
    Ok(map)
}

/// `NAME://HOST:PORT,...` (an IPv6 host in brackets), each name in the protocol map.
fn endpoints(
    key: &'static str,
    text: &str,
    map: &BTreeMap<String, SecurityProtocol>,
) -> Result<Vec<Endpoint>, ListenerError> {
    let parsed: Vec<Endpoint> = entries(text)
        .map(|entry| endpoint(key, entry, map))
        .collect::<Result<_, _>>()?;
    if parsed.is_empty() {
        return Err(invalid(key, "no listener given"));
    }
    if parsed.len() > MAX_LISTENERS {
        return Err(invalid(key, format!("more than {MAX_LISTENERS} listeners")));
    }
    Ok(parsed)
}

fn endpoint(
    key: &'static str,
    entry: &str,
    map: &BTreeMap<String, SecurityProtocol>,
) -> Result<Endpoint, ListenerError> {
    let malformed = || invalid(key, format!("'{entry}' is not NAME://HOST:PORT"));
    let (name, address) = entry.split_once("://").ok_or_else(malformed)?;
    let (host, port) = address.rsplit_once(':').ok_or_else(malformed)?;
    let port: u16 = port.parse().map_err(|_| malformed())?;
    if host.len() > MAX_NAME_BYTES || host.contains(['/', ',', ' ']) {
        return Err(malformed());
    }
    let name = listener_name(key, name)?;
    let protocol = *map.get(&name).ok_or_else(|| {
        invalid(
            key,
            format!("listener {name} has no security protocol in {PROTOCOL_MAP}"),
        )
    })?;
    Ok(Endpoint {
        name,
        host: host.to_string(),
        port,
        protocol,
    })
}

/// Names are unique; bound ports too (port 0, any free port, excepted).
fn check_unique(
    key: &'static str,
    endpoints: &[Endpoint],
    ports: bool,
) -> Result<(), ListenerError> {
    for (i, e) in endpoints.iter().enumerate() {
        let earlier = &endpoints[..i];
        if earlier.iter().any(|o| o.name == e.name) {
            return Err(invalid(
                key,
                format!("listener name {} is repeated", e.name),
            ));
        }
        if ports && e.port != 0 && earlier.iter().any(|o| o.port == e.port) {
            return Err(invalid(key, format!("port {} is repeated", e.port)));
        }
    }
    Ok(())
}

/// Every bound listener's advertised endpoint: as `advertised.listeners` names it, else the
/// listener's own address.
fn advertised(
    text: &str,
    bound: &[Endpoint],
    map: &BTreeMap<String, SecurityProtocol>,
) -> Result<Vec<Endpoint>, ListenerError> {
    let given = if text.trim().is_empty() {
        Vec::new()
    } else {
        endpoints(ADVERTISED, text, map)?
    };
    check_unique(ADVERTISED, &given, false)?;
    for e in &given {
        if !bound.iter().any(|b| b.name == e.name) {
            return Err(invalid(
                ADVERTISED,
                format!("{} is not one of the listeners", e.name),
            ));
        }
        if e.host.is_empty() || e.bind_address().is_some_and(|a| a.ip().is_unspecified()) {
            return Err(invalid(
                ADVERTISED,
                format!("{e}: a wildcard address cannot be advertised"),
            ));
        }
    }
    Ok(bound
        .iter()
        .map(|b| {
            given
                .iter()
                .find(|e| e.name == b.name)
                .cloned()
                .unwrap_or_else(|| b.default_advertised())
        })
        .collect())
}

/// `inter.broker.listener.name`, else PLAINTEXT if bound, else the first listener.
fn inter_broker(text: &str, bound: &[Endpoint]) -> Result<String, ListenerError> {
    if text.trim().is_empty() {
        let plaintext = bound.iter().find(|e| e.name == "PLAINTEXT");
        return Ok(plaintext.unwrap_or(&bound[0]).name.clone());
    }
    let name = listener_name(INTER_BROKER, text)?;
    if !bound.iter().any(|e| e.name == name) {
        return Err(invalid(
            INTER_BROKER,
            format!("{name} is not one of the listeners"),
        ));
    }
    Ok(name)
}

fn controller(
    text: &str,
    map: &BTreeMap<String, SecurityProtocol>,
    inter_broker: &str,
) -> Result<Vec<String>, ListenerError> {
    let mut names: Vec<String> = Vec::new();
    for raw in entries(text) {
        let name = listener_name(CONTROLLER, raw)?;
        if !map.contains_key(&name) {
            return Err(invalid(
                CONTROLLER,
                format!("{name} has no security protocol in {PROTOCOL_MAP}"),
            ));
        }
        if name == inter_broker {
            return Err(invalid(
                CONTROLLER,
                format!("{name} is the inter-broker listener; the controller needs its own"),
            ));
        }
        if names.contains(&name) {
            return Err(invalid(CONTROLLER, format!("{name} is repeated")));
        }
        names.push(name);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen() -> SocketAddr {
        "127.0.0.1:9092".parse().unwrap()
    }

    fn resolve(props: ListenerProperties<'_>) -> Result<Listeners, ListenerError> {
        Listeners::resolve(&props, listen())
    }

    fn props(listeners: &str) -> ListenerProperties<'_> {
        ListenerProperties {
            listeners,
            ..Default::default()
        }
    }

    #[test]
    fn unset_is_one_plaintext_listener_on_listen() {
        let l = Listeners::plaintext(listen());
        assert_eq!(l.bound.len(), 1);
        assert_eq!(l.bound[0].to_string(), "PLAINTEXT://127.0.0.1:9092");
        assert_eq!(l.advertised, l.bound);
        assert_eq!(l.inter_broker, "PLAINTEXT");
        assert!(l.controller.is_empty());
    }

    #[test]
    fn parses_listeners_with_the_default_map() {
        let l = resolve(props(
            "plaintext://:9092, SSL://127.0.0.1:9093,SASL_SSL://[::1]:9094",
        ))
        .unwrap();
        let protocols: Vec<_> = l.bound.iter().map(|e| e.protocol).collect();
        assert_eq!(
            protocols,
            [
                SecurityProtocol::Plaintext,
                SecurityProtocol::Ssl,
                SecurityProtocol::SaslSsl
            ]
        );
        assert_eq!(
            l.bound[0].bind_address(),
            Some("0.0.0.0:9092".parse().unwrap())
        );
        assert_eq!(
            l.bound[2].bind_address(),
            Some("[::1]:9094".parse().unwrap())
        );
        // A wildcard host is advertised as localhost; the others as bound.
        assert_eq!(l.advertised[0].host, "localhost");
        assert_eq!(l.advertised[1], l.bound[1]);
        assert_eq!(l.inter_broker, "PLAINTEXT");
        assert!(l.bound[1].protocol.is_tls() && !l.bound[1].protocol.is_sasl());
        assert!(l.bound[2].protocol.is_tls() && l.bound[2].protocol.is_sasl());
    }

    #[test]
    fn custom_names_need_the_protocol_map() {
        let err = resolve(props("CLIENT://:9092")).unwrap_err();
        assert_eq!(err.key, LISTENERS);
        let l = resolve(ListenerProperties {
            listeners: "CLIENT://:9092,REPLICATION://:9093",
            protocol_map: "CLIENT:SASL_SSL,REPLICATION:SSL",
            inter_broker: "replication",
            ..Default::default()
        })
        .unwrap();
        assert_eq!(l.inter_broker, "REPLICATION");
        assert_eq!(l.inter_broker_protocol(), SecurityProtocol::Ssl);
        assert_eq!(l.bound[0].protocol, SecurityProtocol::SaslSsl);
        // Without PLAINTEXT, the first listener is the inter-broker one.
        let first = resolve(ListenerProperties {
            listeners: "CLIENT://:9092,REPLICATION://:9093",
            protocol_map: "CLIENT:SSL,REPLICATION:SSL",
            ..Default::default()
        })
        .unwrap();
        assert_eq!(first.inter_broker, "CLIENT");
    }

    #[test]
    fn bad_listeners_name_their_key() {
        let cases: &[(ListenerProperties<'_>, &str)] = &[
            (props("PLAINTEXT://:9092,PLAINTEXT://:9093"), LISTENERS),
            (props("PLAINTEXT://:9092,SSL://:9092"), LISTENERS),
            (props("PLAINTEXT//:9092"), LISTENERS),
            (props("PLAINTEXT://host"), LISTENERS),
            (props("PLAINTEXT://:99999"), LISTENERS),
            (props("BAD NAME://:9092"), LISTENERS),
            (
                ListenerProperties {
                    listeners: "A://:9092",
                    protocol_map: "A:TLS",
                    ..Default::default()
                },
                PROTOCOL_MAP,
            ),
            (
                ListenerProperties {
                    listeners: "A://:9092",
                    protocol_map: "A:SSL,a:PLAINTEXT",
                    ..Default::default()
                },
                PROTOCOL_MAP,
            ),
            (
                ListenerProperties {
                    advertised: "SSL://h:9093",
                    ..props("PLAINTEXT://:9092")
                },
                ADVERTISED,
            ),
            (
                ListenerProperties {
                    advertised: "PLAINTEXT://0.0.0.0:9092",
                    ..props("PLAINTEXT://:9092")
                },
                ADVERTISED,
            ),
            (
                ListenerProperties {
                    inter_broker: "SSL",
                    ..props("PLAINTEXT://:9092")
                },
                INTER_BROKER,
            ),
            (
                ListenerProperties {
                    controller: "PLAINTEXT",
                    ..props("PLAINTEXT://:9092")
                },
                CONTROLLER,
            ),
            (
                ListenerProperties {
                    controller: "CONTROLLER",
                    ..props("PLAINTEXT://:9092")
                },
                CONTROLLER,
            ),
        ];
        for (props, key) in cases {
            let err = resolve(props.clone()).unwrap_err();
            assert_eq!(err.key, *key, "{props:?}: {err}");
        }
        let many: Vec<String> = (0..=MAX_LISTENERS)
            .map(|i| format!("L{i}://:{}", 9000 + i))
            .collect();
        let map: Vec<String> = (0..=MAX_LISTENERS).map(|i| format!("L{i}:SSL")).collect();
        let err = resolve(ListenerProperties {
            listeners: &many.join(","),
            protocol_map: &map.join(","),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.reason.contains("more than"), "{err}");
    }

    #[test]
    fn advertised_listeners_replace_only_the_ones_they_name() {
        let l = resolve(ListenerProperties {
            advertised: "ssl://broker1.example:19093",
            controller: "CONTROLLER",
            protocol_map: "PLAINTEXT:PLAINTEXT,SSL:SSL,CONTROLLER:SSL",
            ..props("PLAINTEXT://127.0.0.1:9092,SSL://0.0.0.0:9093")
        })
        .unwrap();
        assert_eq!(l.advertised[0].to_string(), "PLAINTEXT://127.0.0.1:9092");
        assert_eq!(l.advertised[1].to_string(), "SSL://broker1.example:19093");
        assert_eq!(
            l.advertised("SSL").map(|e| e.protocol),
            Some(SecurityProtocol::Ssl)
        );
        assert_eq!(l.controller, ["CONTROLLER"]);
    }

    #[test]
    fn protocol_names_round_trip() {
        for p in SecurityProtocol::ALL {
            assert_eq!(SecurityProtocol::parse(p.name()), Some(p));
            assert_eq!(SecurityProtocol::parse(&p.name().to_lowercase()), Some(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.name()));
        }
        assert_eq!(SecurityProtocol::parse("TLS"), None);
    }
}
