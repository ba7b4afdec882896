//! Listeners and TLS: librdkafka over SSL and mutual TLS, Metadata per listener, an SSL
//! inter-broker listener, bad handshakes, startup errors.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

use super::certs::{CLIENT_SUBJECT, Certs};
use super::common::*;

/// Generous bound on every wait (the machine is shared).
const DEADLINE: Duration = Duration::from_secs(90);

/// A broker with a PLAINTEXT listener (the harness's port) and an SSL one.
fn ssl_broker(certs: &Certs, extra: &[(&str, &str)]) -> (Broker, u16) {
    let port = free_port();
    let plain = free_port();
    let mut opts = BrokerOpts::new()
        .cores(2)
        .set(
            "listeners",
            format!("PLAINTEXT://127.0.0.1:{plain},SSL://127.0.0.1:{port}"),
        )
        .set("ssl.keystore.location", certs.broker_keystore.display());
    for (k, v) in extra {
        opts = opts.set(k, v);
    }
    let broker = Broker::start_on(opts, plain);
    (broker, port)
}

/// librdkafka settings for the SSL listener at `port`, trusting the test CA.
fn ssl_client(base: ClientConfig, certs: &Certs, with_cert: bool) -> ClientConfig {
    let mut c = base;
    c.set("security.protocol", "ssl")
        .set("ssl.ca.location", certs.ca.display().to_string());
    if with_cert {
        c.set(
            "ssl.certificate.location",
            certs.client_cert.display().to_string(),
        )
        .set("ssl.key.location", certs.client_key.display().to_string());
    }
    c
}

fn ssl_bootstrap(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Consumes `count` messages of partition 0 of `topic` from offset 0, over `config`.
fn consume_all(config: &ClientConfig, topic: &str, count: usize) -> Vec<Vec<u8>> {
    let mut config = config.clone();
    config
        .set("group.id", format!("tls-test-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer = config.create().expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).expect("assign");
    let start = Instant::now();
    let mut values = Vec::new();
    while values.len() < count {
        assert!(
            start.elapsed() < DEADLINE,
            "consumed {} of {count} messages of {topic} in {DEADLINE:?}",
            values.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => values.push(m.payload().unwrap_or_default().to_vec()),
            Some(Err(e)) => eprintln!("consume {topic}: {e}"),
            None => {}
        }
    }
    values
}

/// Produces `count` messages to partition 0 of `topic` with acks=all over `config`
/// (librdkafka's producer settings from `producer_config` plus the TLS ones).
fn produce(config: &ClientConfig, topic: &str, count: u64) {
    let placed = produce_messages(config, topic, 7, 0..count);
    assert!(placed.iter().all(|(p, _)| *p == 0), "{placed:?}");
}

fn expected(count: u64) -> Vec<Vec<u8>> {
    (0..count).map(|i| message(7, i).1).collect()
}

#[test]
fn librdkafka_produces_and_consumes_over_ssl() {
    let certs = Certs::generate();
    let (broker, port) = ssl_broker(&certs, &[]);
    let bootstrap = ssl_bootstrap(port);
    create_topic(&broker.bootstrap(), "over-tls", 1);
    let producer = ssl_client(producer_config(&bootstrap, "all"), &certs, false);
    produce(&producer, "over-tls", 200);
    let consumer = ssl_client(base_config(&bootstrap), &certs, false);
    assert_eq!(consume_all(&consumer, "over-tls", 200), expected(200));
}

#[test]
fn mutual_tls_admits_only_clients_with_a_certificate() {
    let certs = Certs::generate();
    let truststore = certs.ca.display().to_string();
    let (broker, port) = ssl_broker(
        &certs,
        &[
            ("listener.name.ssl.ssl.client.auth", "required"),
            ("ssl.truststore.location", &truststore),
        ],
    );
    let bootstrap = ssl_bootstrap(port);
    create_topic(&broker.bootstrap(), "mtls", 1);
    let producer = ssl_client(producer_config(&bootstrap, "all"), &certs, true);
    produce(&producer, "mtls", 20);
    let consumer = ssl_client(base_config(&bootstrap), &certs, true);
    assert_eq!(consume_all(&consumer, "mtls", 20), expected(20));
    // Without a certificate the handshake fails: no metadata, however long it tries.
    let anonymous: BaseConsumer = ssl_client(base_config(&bootstrap), &certs, false)
        .create()
        .expect("consumer");
    let refused = anonymous.fetch_metadata(None, Duration::from_secs(10));
    assert!(refused.is_err(), "metadata without a client certificate");
    eprintln!("client certificate {CLIENT_SUBJECT}: admitted; none: {refused:?}");
}

#[test]
fn metadata_lists_the_listener_the_client_connected_to() {
    let certs = Certs::generate();
    let (broker, port) = ssl_broker(&certs, &[]);
    let plain = try_metadata(broker.addr(), Some(&[]), Duration::from_secs(30)).unwrap();
    let plain_ports: Vec<i32> = plain.brokers.iter().map(|b| b.port).collect();
    assert_eq!(plain_ports, [i32::from(broker.port())]);
    let client: BaseConsumer = ssl_client(base_config(&ssl_bootstrap(port)), &certs, false)
        .create()
        .expect("consumer");
    let over_tls = client
        .fetch_metadata(None, Duration::from_secs(30))
        .expect("metadata over SSL");
    let tls_ports: Vec<i32> = over_tls.brokers().iter().map(|b| b.port()).collect();
    assert_eq!(tls_ports, [i32::from(port)]);
}

#[test]
fn replicas_follow_over_an_ssl_inter_broker_listener() {
    let certs = Certs::generate();
    let ports = free_ports(6);
    let (plain, ssl) = ports.split_at(3);
    let keystore = certs.broker_keystore.display().to_string();
    let truststore = certs.ca.display().to_string();
    let mut opts = ClusterOpts::new(3)
        .set("inter.broker.listener.name", "SSL")
        .set("ssl.keystore.location", &keystore)
        .set("ssl.truststore.location", &truststore)
        .set("ssl.client.auth", "required");
    opts.kafka_ports = Some(plain.to_vec());
    // Nobody listens on port 1: only the SSL endpoints lead anywhere.
    opts.each = (0..3)
        .map(|i| {
            vec![
                (
                    "listeners".to_string(),
                    format!(
                        "PLAINTEXT://127.0.0.1:{},SSL://127.0.0.1:{}",
                        plain[i], ssl[i]
                    ),
                ),
                (
                    "advertised.listeners".to_string(),
                    "PLAINTEXT://127.0.0.1:1".to_string(),
                ),
            ]
        })
        .collect();
    let mut cluster = Cluster::start_with(opts);
    let bootstrap: Vec<String> = ssl.iter().map(|p| ssl_bootstrap(*p)).collect();
    let bootstrap = bootstrap.join(",");
    let admin = ssl_client(base_config(&bootstrap), &certs, true);
    let admin: rdkafka::admin::AdminClient<_> = admin.create().expect("admin");
    let topic =
        rdkafka::admin::NewTopic::new("replicated", 1, rdkafka::admin::TopicReplication::Fixed(3));
    let created = futures::executor::block_on(
        admin.create_topics([&topic], &rdkafka::admin::AdminOptions::new()),
    )
    .expect("create topic");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let producer = ssl_client(producer_config(&bootstrap, "all"), &certs, true);
    produce(&producer, "replicated", 300);
    let every = BTreeSet::from([1, 2, 3]);
    cluster.wait_metadata("ISR of 3", DEADLINE, Some(&["replicated"]), |_, md| {
        let views = topic_views(md);
        views
            .get("replicated")
            .is_some_and(|p| p[0].isr.iter().copied().collect::<BTreeSet<_>>() == every)
    });
    let consumer = ssl_client(base_config(&bootstrap), &certs, true);
    assert_eq!(consume_all(&consumer, "replicated", 300), expected(300));
}

/// Reads until the broker closes the connection; panics if it is still open after
/// `deadline`. Returns how long it took.
fn wait_closed(stream: &mut TcpStream, deadline: Duration) -> Duration {
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return start.elapsed(),
        }
        assert!(
            start.elapsed() < deadline,
            "connection still open after {deadline:?}"
        );
    }
}

#[test]
fn bad_handshakes_are_closed_and_the_broker_serves_on() {
    let certs = Certs::generate();
    let (mut broker, port) = ssl_broker(&certs, &[("corelog.authentication.timeout.ms", "1500")]);
    let ssl: SocketAddr = ssl_bootstrap(port).parse().unwrap();
    // Garbage instead of a ClientHello (an HTTP request, then noise).
    let mut garbage = TcpStream::connect(ssl).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    garbage.write_all(&[0xff; 512]).unwrap();
    let took = wait_closed(&mut garbage, DEADLINE);
    eprintln!("garbage closed after {took:?}");
    // A handshake record header announcing more than ever comes, then silence.
    let mut stalled = TcpStream::connect(ssl).unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    // Silent from the start: not even a ClientHello.
    let mut silent = TcpStream::connect(ssl).unwrap();
    for (what, stream) in [("stalled", &mut stalled), ("silent", &mut silent)] {
        let took = wait_closed(stream, DEADLINE);
        eprintln!("{what} handshake closed after {took:?}");
        assert!(
            took >= Duration::from_millis(1000),
            "{what}: closed after {took:?}"
        );
    }
    broker.assert_serving();
    let client: BaseConsumer = ssl_client(base_config(&ssl_bootstrap(port)), &certs, false)
        .create()
        .expect("consumer");
    client
        .fetch_metadata(None, Duration::from_secs(30))
        .expect("metadata over SSL after bad handshakes");
}

#[test]
fn bad_tls_files_stop_the_broker_at_startup_naming_the_property() {
    let certs = Certs::generate();
    let cases = [
        (
            vec![(
                "ssl.keystore.location",
                certs.mismatched_keystore.display().to_string(),
            )],
            "ssl.keystore.location",
        ),
        (
            vec![("ssl.keystore.location", "/no/such/keystore.pem".to_string())],
            "ssl.keystore.location",
        ),
        (
            vec![
                (
                    "ssl.keystore.location",
                    certs.broker_keystore.display().to_string(),
                ),
                ("ssl.keystore.type", "JKS".to_string()),
            ],
            "ssl.keystore.type",
        ),
        (
            vec![
                (
                    "ssl.keystore.location",
                    certs.broker_keystore.display().to_string(),
                ),
                ("ssl.client.auth", "required".to_string()),
            ],
            "ssl.truststore.location",
        ),
    ];
    for (sets, key) in cases {
        let plain = free_port();
        let mut opts = BrokerOpts::new().cores(1).set(
            "listeners",
            format!(
                "PLAINTEXT://127.0.0.1:{plain},SSL://127.0.0.1:{}",
                free_port()
            ),
        );
        for (k, v) in &sets {
            opts = opts.set(k, v);
        }
        let mut broker = Broker::launch_on(opts, plain);
        let status = broker.wait_exit(DEADLINE);
        assert!(!status.success(), "{sets:?}");
        let log = broker.log();
        assert!(log.contains(key), "{sets:?}: the error names {key}:\n{log}");
    }
}
