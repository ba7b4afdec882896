//! Security (issue 12) against real `corelog serve` processes and librdkafka (OpenSSL).
//!
//! What is checked (`users`): `serve --add-scram` on a new cluster, `corelog users` against
//! a live broker, Kafka's errors, credentials kept across a restart.
//!
//! What is checked (`tls`):
//! - librdkafka over an SSL listener (`security.protocol=ssl`, the test CA): produce and
//!   consume;
//! - mutual TLS (`ssl.client.auth=required`, set with Kafka's `listener.name.ssl.` prefix):
//!   a client with a certificate the truststore's CA signed works, one without is refused;
//! - a broker with a PLAINTEXT and an SSL listener: Metadata over each lists every broker at
//!   that listener's port;
//! - three brokers whose inter-broker listener is SSL (their PLAINTEXT listener advertised at
//!   an address nobody listens on, so replication can only work over TLS): an RF 3 topic
//!   takes acks=all produce, every replica in the ISR, and is consumed whole;
//! - garbage instead of a ClientHello is closed; a client that stalls mid-handshake is closed
//!   after `corelog.authentication.timeout.ms`; the broker serves on;
//! - startup errors: a keystore whose key does not fit its certificate, a missing file, a
//!   JKS keystore type, each naming the property.
//!
//! Certificates (a CA, a broker certificate for 127.0.0.1 and localhost, a client one) are
//! generated with rcgen into each test's temp dir. Every wait polls with a generous deadline.

mod common;

#[path = "security/certs.rs"]
mod certs;
#[path = "security/sasl.rs"]
mod sasl;
#[path = "security/tls.rs"]
mod tls;
#[path = "security/users.rs"]
mod users;
