//! SASL mechanisms (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) as pure exchanges: tokens in,
//! tokens out, no I/O. The broker runs the server side (`server::authenticate`); the client
//! side serves the broker's own clients and the tests.
//!
//! What a failure tells the client follows Kafka: a wrong password, an unknown user and a
//! malformed token all read "Authentication failed during authentication due to invalid
//! credentials with SASL mechanism X", so a client cannot learn which users exist.

pub mod plain;
pub mod scram;

use std::fmt;

use super::scram::{ScramCredential, ScramMechanism};

/// A SASL mechanism the broker can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    Plain,
    Scram(ScramMechanism),
}

impl Mechanism {
    pub const ALL: [Mechanism; 3] = [
        Mechanism::Plain,
        Mechanism::Scram(ScramMechanism::Sha256),
        Mechanism::Scram(ScramMechanism::Sha512),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(m) => m.name(),
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the server side finds a user's SCRAM credentials (the cluster metadata).
pub trait CredentialStore {
    fn scram_credential(&self, user: &str, mechanism: ScramMechanism) -> Option<&ScramCredential>;
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// Wrong or unknown credentials, or a malformed token. The client is told only Kafka's
    /// generic message; the text is for the broker's log.
    #[error("invalid credentials: {0}")]
    InvalidCredentials(&'static str),
    /// A refusal the client is told in these words (Kafka's SaslAuthenticationException).
    #[error("{0}")]
    Refused(&'static str),
}

impl SaslError {
    /// The error message of the SaslAuthenticate response.
    pub fn client_message(&self, mechanism: Mechanism) -> String {
        match self {
            SaslError::InvalidCredentials(_) => format!(
                "Authentication failed during authentication due to invalid credentials with \
                 SASL mechanism {mechanism}"
            ),
            SaslError::Refused(text) => (*text).to_string(),
        }
    }
}

/// Kafka's refusal of an authorization id other than the authenticated user.
pub const AUTHZID_REFUSED: SaslError = SaslError::Refused(
    "Authentication failed: Client requested an authorization id that is different from username",
);

/// The randomness an exchange needs, chosen by the caller so the exchange stays pure.
#[derive(Clone)]
pub struct ServerEntropy {
    /// The server's part of the SCRAM nonce: printable ASCII without ','.
    pub nonce: String,
    /// A per-process secret from which an unknown user's stand-in salt is derived: the same
    /// name always gets the same salt, as a real user does.
    pub mock_salt_key: [u8; 32],
}

/// What the server sends after a client token.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this and wait for the client's next token.
    Challenge(Vec<u8>),
    /// Authenticated as `user`; send `response` (possibly empty) as the last token.
    Done { response: Vec<u8>, user: String },
}

/// The server side of one authentication.
pub enum ServerExchange {
    Plain,
    Scram(scram::ScramServer),
    /// Authenticated or failed: no token is expected.
    Over,
}

impl ServerExchange {
    pub fn new(mechanism: Mechanism, entropy: ServerEntropy) -> Self {
        match mechanism {
            Mechanism::Plain => ServerExchange::Plain,
            Mechanism::Scram(m) => ServerExchange::Scram(scram::ScramServer::new(m, entropy)),
        }
    }

    /// Evaluates the client's next token. After an error or `Done` the exchange is over;
    /// another token is an error.
    pub fn evaluate(
        &mut self,
        token: &[u8],
        store: &dyn CredentialStore,
    ) -> Result<Step, SaslError> {
        match std::mem::replace(self, ServerExchange::Over) {
            ServerExchange::Plain => plain::authenticate(token, store).map(|user| Step::Done {
                response: Vec::new(),
                user,
            }),
            ServerExchange::Scram(mut server) => {
                let step = server.evaluate(token, store);
                if matches!(step, Ok(Step::Challenge(_))) {
                    *self = ServerExchange::Scram(server);
                }
                step
            }
            ServerExchange::Over => Err(SaslError::InvalidCredentials("exchange already over")),
        }
    }
}

#[cfg(test)]
pub(crate) mod test_store {
    use std::collections::HashMap;

    use super::*;

    /// Credentials by (user, mechanism), as the metadata holds them.
    #[derive(Default)]
    pub struct Store(pub HashMap<(String, ScramMechanism), ScramCredential>);

    impl Store {
        pub fn with(mut self, user: &str, mechanism: ScramMechanism, password: &str) -> Self {
            let credential = ScramCredential::from_password(
                mechanism,
                password.as_bytes(),
                format!("salt-of-{user}").into_bytes(),
                crate::security::scram::MIN_ITERATIONS,
            );
            self.0.insert((user.to_string(), mechanism), credential);
            self
        }
    }

    impl CredentialStore for Store {
        fn scram_credential(&self, user: &str, m: ScramMechanism) -> Option<&ScramCredential> {
            self.0.get(&(user.to_string(), m))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanisms_have_kafka_names() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(m.name()), Some(m));
        }
        assert_eq!(Mechanism::from_name("GSSAPI"), None);
        assert_eq!(Mechanism::from_name("plain"), None);
    }

    #[test]
    fn failures_tell_the_client_kafkas_words() {
        let m = Mechanism::Scram(ScramMechanism::Sha256);
        assert_eq!(
            SaslError::InvalidCredentials("bad proof").client_message(m),
            "Authentication failed during authentication due to invalid credentials with SASL \
             mechanism SCRAM-SHA-256"
        );
        assert_eq!(
            AUTHZID_REFUSED.client_message(m),
            "Authentication failed: Client requested an authorization id that is different \
             from username"
        );
    }
}
