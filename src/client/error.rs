//! The client's error type. A broker's error code becomes [`Error::Broker`], carrying the
//! typed `kafka_protocol` error and Kafka's name for it (`TOPIC_ALREADY_EXISTS`).

use kafka_protocol::ResponseError;
use kafka_protocol::messages::ApiKey;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error code a broker answered with, for one resource (a topic, a config resource) or
/// for the whole request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerError {
    pub error: ResponseError,
    /// The broker's `error_message`, when the response has one.
    pub message: Option<String>,
    /// The topic or resource the code is about, if any.
    pub resource: Option<String>,
}

impl BrokerError {
    /// `None` for code 0.
    pub fn from_code(code: i16, message: Option<String>, resource: Option<String>) -> Option<Self> {
        ResponseError::try_from_code(code).map(|error| BrokerError {
            error,
            message: message.filter(|m| !m.is_empty()),
            resource,
        })
    }

    pub fn code(&self) -> i16 {
        self.error.code()
    }

    /// Kafka's name of the error, e.g. `INVALID_REPLICATION_FACTOR`.
    pub fn name(&self) -> String {
        kafka_error_name(self.error)
    }
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.message, &self.resource) {
            (Some(m), _) => write!(f, "{m} ({})", self.name()),
            (None, Some(r)) => write!(f, "{r}: {}", self.name()),
            (None, None) => f.write_str(&self.name()),
        }
    }
}

impl std::error::Error for BrokerError {}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting, reading or writing failed (includes timeouts).
    #[error("{addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing a frame failed on a stream not named by address.
    #[error("connection: {0}")]
    Stream(#[from] std::io::Error),
    /// An undecodable or unexpected response, or a request we cannot encode.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The broker does not advertise this API in ApiVersions.
    #[error("{api:?} (API key {key}) is not supported by the broker", key = *api as i16)]
    UnsupportedApi { api: ApiKey },
    /// The broker advertises the API, but no version both sides speak.
    #[error(
        "no common version for {api:?}: the broker supports {}..={}, this client {}..={}",
        broker.0, broker.1, ours.0, ours.1
    )]
    NoCommonVersion {
        api: ApiKey,
        broker: (i16, i16),
        ours: (i16, i16),
    },
    /// The broker answered with an error code.
    #[error("{0}")]
    Broker(BrokerError),
    /// None of the bootstrap servers answered.
    #[error("no bootstrap server reachable: {0}")]
    NoBroker(String),
}

impl Error {
    /// The broker error, if this is one.
    pub fn broker(&self) -> Option<&BrokerError> {
        match self {
            Error::Broker(b) => Some(b),
            _ => None,
        }
    }

    /// The typed Kafka error, if the broker answered with one.
    pub fn kafka(&self) -> Option<ResponseError> {
        self.broker().map(|b| b.error)
    }

    pub(crate) fn io(addr: &str, source: std::io::Error) -> Error {
        Error::Io {
            addr: addr.to_string(),
            source,
        }
    }
}

impl From<BrokerError> for Error {
    fn from(e: BrokerError) -> Self {
        Error::Broker(e)
    }
}

/// Returns `Err(Error::Broker)` for a non-zero code.
pub fn check(code: i16, message: Option<String>, resource: Option<&str>) -> Result<()> {
    match BrokerError::from_code(code, message, resource.map(str::to_string)) {
        None => Ok(()),
        Some(e) => Err(Error::Broker(e)),
    }
}

/// Kafka's name of an error (`Errors.name()`): `TopicAlreadyExists` -> `TOPIC_ALREADY_EXISTS`.
pub fn kafka_error_name(e: ResponseError) -> String {
    if let ResponseError::Unknown(code) = e {
        return format!("UNKNOWN_ERROR_CODE_{code}");
    }
    let camel = format!("{e:?}");
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Kafka's name of an error code; `NONE` for 0.
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(e) => kafka_error_name(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafka() {
        assert_eq!(error_name(0), "NONE");
        assert_eq!(error_name(36), "TOPIC_ALREADY_EXISTS");
        assert_eq!(error_name(38), "INVALID_REPLICATION_FACTOR");
        assert_eq!(error_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(17), "INVALID_TOPIC_EXCEPTION");
        assert_eq!(error_name(31000), "UNKNOWN_ERROR_CODE_31000");
    }

    #[test]
    fn display() {
        let e = BrokerError::from_code(36, Some("topic 't' already exists".into()), None).unwrap();
        assert_eq!(
            e.to_string(),
            "topic 't' already exists (TOPIC_ALREADY_EXISTS)"
        );
        let e = BrokerError::from_code(3, None, Some("t".into())).unwrap();
        assert_eq!(e.to_string(), "t: UNKNOWN_TOPIC_OR_PARTITION");
    }
}
