//! Who a connection is and what it may prove: principals, SCRAM credentials, listeners,
//! TLS.
//!
//! Pure values (no I/O) but for `tls`, which reads PEM files at startup and wraps streams:
//! the connection layer (`server`) decides a connection's principal, the cluster metadata
//! stores credentials, and both use these types.

pub mod acl;
pub mod listener;
pub mod sasl;
pub mod scram;
pub mod tls;

use std::fmt;

use serde::{Deserialize, Serialize};

/// An authenticated identity in Kafka's `Type:name` form (`User:alice`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Principal {
    pub principal_type: String,
    pub name: String,
}

impl Principal {
    /// Kafka's principal type for users (SASL names, certificate subjects).
    pub const USER_TYPE: &'static str = "User";

    pub fn user(name: impl Into<String>) -> Self {
        Self {
            principal_type: Self::USER_TYPE.into(),
            name: name.into(),
        }
    }

    /// The principal of a connection that did not authenticate (a PLAINTEXT or SSL
    /// listener without client certificates): Kafka's `User:ANONYMOUS`.
    pub fn anonymous() -> Self {
        Self::user("ANONYMOUS")
    }

    /// Parses `Type:name` (the name may itself contain ':').
    pub fn parse(text: &str) -> Option<Self> {
        let (principal_type, name) = text.split_once(':')?;
        (!principal_type.is_empty() && !name.is_empty()).then(|| Self {
            principal_type: principal_type.into(),
            name: name.into(),
        })
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.principal_type, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_print_and_parse_in_kafka_form() {
        assert_eq!(Principal::anonymous().to_string(), "User:ANONYMOUS");
        let p = Principal::parse("User:CN=a,O=b:c").unwrap();
        assert_eq!(p, Principal::user("CN=a,O=b:c"));
        assert_eq!(p.to_string(), "User:CN=a,O=b:c");
        assert_eq!(Principal::parse("alice"), None);
        assert_eq!(Principal::parse("User:"), None);
    }
}
