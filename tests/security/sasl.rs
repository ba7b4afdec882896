//! SASL on a SASL_PLAINTEXT listener: librdkafka with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512
//! produces and consumes; a wrong password and an unknown mechanism are refused as Kafka
//! refuses them; raw clients that misbehave (requests before authenticating, malformed and
//! oversized tokens, a stalled exchange) are closed and the broker serves on.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Buf;
use corelog::security::sasl::scram::ScramClient;
use corelog::security::scram::ScramMechanism;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, MetadataRequest, SaslAuthenticateRequest, SaslAuthenticateResponse,
    SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use super::common::*;

/// Generous bound on every wait (the machine is shared).
const DEADLINE: Duration = Duration::from_secs(90);
const AUTH_TIMEOUT_MS: u64 = 3_000;
const SASL_AUTHENTICATION_FAILED: i16 = 58;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;

/// A broker with a PLAINTEXT listener (the harness's port, for readiness and topic creation)
/// and a SASL_PLAINTEXT one offering `mechanisms`; users alice (SCRAM-SHA-256) and bob
/// (SCRAM-SHA-512).
fn sasl_broker(mechanisms: &str) -> (Broker, u16) {
    let (plain, port) = (free_port(), free_port());
    let opts = BrokerOpts::new()
        .cores(2)
        .set(
            "listeners",
            format!("PLAINTEXT://127.0.0.1:{plain},SASL_PLAINTEXT://127.0.0.1:{port}"),
        )
        .set("sasl.enabled.mechanisms", mechanisms)
        .set("corelog.authentication.timeout.ms", AUTH_TIMEOUT_MS)
        .arg("--add-scram")
        .arg("SCRAM-SHA-256=[name=alice,password=alice-secret]")
        .arg("--add-scram")
        .arg("SCRAM-SHA-512=[name=bob,password=bob-secret]");
    (Broker::start_on(opts, plain), port)
}

fn sasl_client(base: ClientConfig, mechanism: &str, user: &str, password: &str) -> ClientConfig {
    let mut c = base;
    c.set("security.protocol", "sasl_plaintext")
        .set("sasl.mechanism", mechanism)
        .set("sasl.username", user)
        .set("sasl.password", password);
    c
}

fn bootstrap(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Produces `count` messages to partition 0 of `topic` and consumes them back, over SASL.
fn round_trip(port: u16, mechanism: &str, user: &str, password: &str, topic: &str) {
    let count = 50;
    let producer: ThreadedProducer<DefaultProducerContext> = sasl_client(
        producer_config(&bootstrap(port), "all"),
        mechanism,
        user,
        password,
    )
    .create()
    .expect("producer");
    for i in 0..count {
        let value = format!("{user}-{i}");
        let record = BaseRecord::<(), _>::to(topic).payload(&value).partition(0);
        producer.send(record).map_err(|(e, _)| e).expect("enqueue");
    }
    producer
        .flush(DEADLINE)
        .expect("every message acknowledged over SASL");
    let consumer: BaseConsumer =
        sasl_client(consumer_config(&bootstrap(port)), mechanism, user, password)
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut values = Vec::new();
    let start = Instant::now();
    while values.len() < count && start.elapsed() < DEADLINE {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
            values.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string());
        }
    }
    let expected: Vec<String> = (0..count).map(|i| format!("{user}-{i}")).collect();
    assert_eq!(values, expected, "{mechanism} as {user}");
}

#[test]
fn librdkafka_produces_and_consumes_with_plain_and_both_scram_mechanisms() {
    let (broker, port) = sasl_broker("PLAIN,SCRAM-SHA-256,SCRAM-SHA-512");
    for (i, (mechanism, user)) in [
        ("PLAIN", "alice"),
        ("SCRAM-SHA-256", "alice"),
        ("SCRAM-SHA-512", "bob"),
    ]
    .into_iter()
    .enumerate()
    {
        let topic = format!("sasl-{i}");
        create_topic(&broker.bootstrap(), &topic, 1);
        wait_topic_ready(&broker.bootstrap(), &topic, 1);
        round_trip(port, mechanism, user, &format!("{user}-secret"), &topic);
    }
}

/// Errors librdkafka reports through its error callback.
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<(KafkaError, String)>>>);

impl ClientContext for Errors {
    fn error(&self, error: KafkaError, reason: &str) {
        self.0.lock().unwrap().push((error, reason.to_string()));
    }
}

impl rdkafka::consumer::ConsumerContext for Errors {}

/// What librdkafka reports when it connects with these settings (its first reported
/// error whose text contains `needle`).
fn reported_error(config: ClientConfig, needle: &str) -> String {
    let errors = Errors::default();
    let consumer: BaseConsumer<Errors> = config
        .create_with_context(errors.clone())
        .expect("consumer");
    let start = Instant::now();
    loop {
        let _ = consumer.fetch_metadata(None, Duration::from_secs(1));
        // The error callback runs from poll.
        let _ = consumer.poll(Duration::from_millis(100));
        let seen = errors.0.lock().unwrap().clone();
        if let Some((_, reason)) = seen.iter().find(|(_, r)| r.contains(needle)) {
            return reason.clone();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no error with {needle:?}: {seen:?}"
        );
    }
}

#[test]
fn librdkafka_reports_a_wrong_password_and_an_unsupported_mechanism() {
    let (_broker, port) = sasl_broker("PLAIN,SCRAM-SHA-256");
    let base = || base_config(&bootstrap(port));
    for mechanism in ["SCRAM-SHA-256", "PLAIN"] {
        let reason = reported_error(
            sasl_client(base(), mechanism, "alice", "wrong"),
            "Authentication failed",
        );
        assert!(reason.contains("SASL authentication error"), "{reason}");
    }
    let reason = reported_error(
        sasl_client(base(), "SCRAM-SHA-256", "nobody", "x"),
        "Authentication failed",
    );
    assert!(
        reason.contains("invalid credentials with SASL mechanism SCRAM-SHA-256"),
        "{reason}"
    );
    let reason = reported_error(
        sasl_client(base(), "SCRAM-SHA-512", "bob", "bob-secret"),
        "mechanism",
    );
    assert!(reason.contains("PLAIN,SCRAM-SHA-256"), "{reason}");
}

fn handshake(client: &mut RawClient, mechanism: &str) -> SaslHandshakeResponse {
    let request =
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_string(mechanism.into()));
    client.call(ApiKey::SaslHandshake, 1, &request)
}

fn authenticate(client: &mut RawClient, token: Vec<u8>) -> SaslAuthenticateResponse {
    let request = SaslAuthenticateRequest::default().with_auth_bytes(token.into());
    client.call(ApiKey::SaslAuthenticate, 2, &request)
}

fn assert_closed(client: &mut RawClient, what: &str) {
    match client.wait_closed(DEADLINE) {
        CloseOutcome::Closed => {}
        other => panic!("{what}: expected the broker to close, got {other:?}"),
    }
}

#[test]
fn raw_clients_get_kafkas_answers_and_the_broker_serves_on() {
    let (mut broker, port) = sasl_broker("SCRAM-SHA-256");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    // A whole SCRAM exchange by hand, then a request.
    let mut client = RawClient::connect(addr);
    let _: kafka_protocol::messages::ApiVersionsResponse =
        client.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(handshake(&mut client, "SCRAM-SHA-256").error_code, 0);
    let (mut scram, first) =
        ScramClient::start(ScramMechanism::Sha256, "alice", "alice-secret", "raw-nonce");
    let challenge = authenticate(&mut client, first);
    let last = scram.client_final(&challenge.auth_bytes).unwrap();
    let done = authenticate(&mut client, last);
    assert_eq!(done.error_code, 0);
    scram.verify_server_final(&done.auth_bytes).unwrap();
    let _: kafka_protocol::messages::MetadataResponse =
        client.call(ApiKey::Metadata, 9, &MetadataRequest::default());
    // After authenticating, another handshake is ILLEGAL_SASL_STATE (and answered).
    assert_eq!(handshake(&mut client, "SCRAM-SHA-256").error_code, 34);

    // A request before authenticating.
    let mut client = RawClient::connect(addr);
    client
        .send_request(ApiKey::Metadata, 9, &MetadataRequest::default())
        .unwrap();
    assert_closed(&mut client, "Metadata before SaslHandshake");

    // A mechanism not enabled: the enabled list, then closed.
    let mut client = RawClient::connect(addr);
    let refused = handshake(&mut client, "PLAIN");
    assert_eq!(refused.error_code, UNSUPPORTED_SASL_MECHANISM);
    assert_eq!(
        refused.mechanisms,
        vec![StrBytes::from_static_str("SCRAM-SHA-256")]
    );
    assert_closed(&mut client, "unsupported mechanism");

    // Malformed tokens: Kafka's generic message, then closed.
    for token in [
        &b"n,,n=alice"[..],
        b"\xff\xfe",
        b"p=tls-unique,,n=alice,r=x",
        b"",
    ] {
        let mut client = RawClient::connect(addr);
        assert_eq!(handshake(&mut client, "SCRAM-SHA-256").error_code, 0);
        let failed = authenticate(&mut client, token.to_vec());
        assert_eq!(failed.error_code, SASL_AUTHENTICATION_FAILED, "{token:?}");
        assert_eq!(
            failed.error_message.as_deref(),
            Some(
                "Authentication failed during authentication due to invalid credentials with \
                 SASL mechanism SCRAM-SHA-256"
            )
        );
        assert_closed(&mut client, "malformed token");
    }

    // An oversized token: only its length is sent; the broker closes without waiting for it.
    let mut client = RawClient::connect(addr);
    assert_eq!(handshake(&mut client, "SCRAM-SHA-256").error_code, 0);
    client.send_raw(&(1i32 << 20).to_be_bytes()).unwrap();
    assert_closed(&mut client, "oversized token");

    // A stalled exchange is closed after the timeout, not before.
    let mut client = RawClient::connect(addr);
    assert_eq!(handshake(&mut client, "SCRAM-SHA-256").error_code, 0);
    let start = Instant::now();
    assert_closed(&mut client, "stalled exchange");
    assert!(
        start.elapsed() >= Duration::from_millis(AUTH_TIMEOUT_MS - 500),
        "closed after {:?}",
        start.elapsed()
    );

    broker.assert_alive();
    let mut client = RawClient::connect(addr);
    let mut versions = client.request(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default());
    assert_eq!(versions.get_i16(), 0, "the broker serves on");
}
