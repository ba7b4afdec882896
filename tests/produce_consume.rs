//! Produce/consume round trips with real librdkafka clients against a real corelog process.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kafka_protocol::messages::ApiKey;
use rdkafka::Message;
use rdkafka::TopicPartitionList;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

/// Messages per topic in the bulk test (override with CORELOG_TEST_MESSAGES).
fn bulk_count() -> u64 {
    std::env::var("CORELOG_TEST_MESSAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000)
}

#[test]
fn bulk_keyed_8_partitions_acks_all_and_acks_1() {
    let broker = Broker::start(BrokerOpts::new());
    let bs = broker.bootstrap();
    let n = bulk_count();
    for (topic, acks, seed) in [("bulk-acks-all", "all", 1u64), ("bulk-acks-1", "1", 2u64)] {
        create_topic(&bs, topic, 8);
        let deliveries = produce_messages(&producer_config(&bs, acks), topic, seed, 0..n);
        let mut per_partition = [0usize; 8];
        for &(p, _) in &deliveries {
            per_partition[p as usize] += 1;
        }
        eprintln!("{topic}: messages per partition {per_partition:?}");
        assert!(
            per_partition.iter().all(|&c| c > 0),
            "keyed messages should spread over all 8 partitions: {per_partition:?}"
        );
        let checked = verify_topic(&bs, topic, 8, seed, &deliveries);
        assert_eq!(checked as u64, n);
    }
}

#[test]
fn list_offsets_earliest_latest_and_by_timestamp() {
    let broker = Broker::start(BrokerOpts::new());
    let bs = broker.bootstrap();
    let topic = "list-offsets";
    create_topic(&bs, topic, 2);
    let mut raw = broker.raw();

    // Empty partition: earliest = latest = 0.
    assert_eq!(raw.list_offset(topic, 0, -2).0, NONE);
    assert_eq!(
        raw.list_offset(topic, 0, -2).1,
        0,
        "earliest of empty partition"
    );
    assert_eq!(raw.list_offset(topic, 0, -1).0, NONE);
    assert_eq!(
        raw.list_offset(topic, 0, -1).1,
        0,
        "latest of empty partition"
    );

    // Partition 0: two batches with known CreateTime timestamps.
    let t0: i64 = 1_700_000_000_000;
    let t1: i64 = t0 + 10_000;
    let b1 = record_batch(
        t0,
        &[(None, Some(b"a")), (None, Some(b"b")), (None, Some(b"c"))],
    );
    let b2 = record_batch(t1, &[(None, Some(b"d")), (None, Some(b"e"))]);
    assert_eq!(raw.produce_one(topic, 0, b1), (NONE, 0));
    assert_eq!(raw.produce_one(topic, 0, b2), (NONE, 3));

    let (e, off, _) = raw.list_offset(topic, 0, -2);
    assert_eq!((e, off), (NONE, 0), "earliest");
    let (e, off, _) = raw.list_offset(topic, 0, -1);
    assert_eq!((e, off), (NONE, 5), "latest");
    // By timestamp: first offset whose timestamp >= the target.
    // Checked at the end so the rest of the test still runs.
    let mut by_ts_errors: Vec<String> = Vec::new();
    for (ts, want) in [
        (0, 0),
        (t0, 0),
        (t0 + 1, 1),
        (t0 + 2, 2),
        (t0 + 3, 3),
        (t1, 3),
        (t1 + 1, 4),
    ] {
        let (e, off, got_ts) = raw.list_offset(topic, 0, ts);
        eprintln!("ListOffsets ts={ts}: error {e} offset {off} timestamp {got_ts}");
        if (e, off) != (NONE, want) {
            by_ts_errors.push(format!(
                "ListOffsets ts={ts} (t0{:+}): got error {e} offset {off} timestamp {got_ts}, expected offset {want}",
                ts - t0
            ));
        }
    }
    let (e, off, got_ts) = raw.list_offset(topic, 0, t1 + 2);
    if (e, off) != (NONE, -1) {
        by_ts_errors.push(format!(
            "ListOffsets after the last timestamp: got error {e} offset {off} timestamp {got_ts}, expected offset -1"
        ));
    }
    // MAX_TIMESTAMP (-3, ListOffsets v7+): the record with the largest timestamp.
    let (_, lo_max) = raw
        .advertised(ApiKey::ListOffsets)
        .expect("ListOffsets advertised");
    if lo_max >= 7 {
        let (e, off, got_ts) = raw.list_offset_v(7, topic, 0, -3);
        assert_eq!(
            (e, off, got_ts),
            (NONE, 4, t1 + 1),
            "ListOffsets v7 max timestamp (-3)"
        );
    } else {
        eprintln!("ListOffsets max version {lo_max} < 7: MAX_TIMESTAMP (-3) not tested");
    }
    // Every advertised ListOffsets version answers earliest/latest (fresh connection each, so
    // one failing version does not hide the others).
    let mut version_errors: Vec<String> = Vec::new();
    for v in 1..=lo_max {
        let addr = broker.addr();
        let r = std::panic::catch_unwind(move || {
            let mut c = RawClient::connect(addr);
            (
                c.list_offset_v(v, "list-offsets", 0, -1),
                c.list_offset_v(v, "list-offsets", 0, -2),
            )
        });
        match r {
            Ok(((NONE, 5, _), (NONE, 0, _))) => {}
            Ok(other) => {
                version_errors.push(format!("ListOffsets v{v}: latest/earliest {other:?}"))
            }
            Err(e) => version_errors.push(format!(
                "ListOffsets v{v}: {}",
                e.downcast_ref::<String>().cloned().unwrap_or_default()
            )),
        }
    }
    // Partition 1 through librdkafka.
    let deliveries = produce_messages(&producer_config(&bs, "all"), topic, 7, 0..100);
    let on_p1 = deliveries.iter().filter(|d| d.0 == 1).count() as i64;
    let on_p0 = deliveries.iter().filter(|d| d.0 == 0).count() as i64;
    let consumer: BaseConsumer = consumer_config(&bs).create().unwrap();
    let wm0 = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(30))
        .unwrap();
    let wm1 = consumer
        .fetch_watermarks(topic, 1, Duration::from_secs(30))
        .unwrap();
    eprintln!("watermarks p0 {wm0:?} p1 {wm1:?}");
    assert_eq!(wm0, (0, 5 + on_p0));
    assert_eq!(wm1, (0, on_p1));
    assert_eq!(raw.list_offset(topic, 1, -1).1, on_p1);

    // offsets_for_times through librdkafka on partition 0.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Offset(t0 + 1))
        .unwrap();
    let res = consumer
        .offsets_for_times(tpl, Duration::from_secs(30))
        .unwrap();
    let el = res.find_partition(topic, 0).unwrap();
    assert!(el.error().is_ok());
    if el.offset() != rdkafka::Offset::Offset(1) {
        by_ts_errors.push(format!(
            "rdkafka offsets_for_times(t0+1): got {:?}, expected Offset(1)",
            el.offset()
        ));
    }
    assert!(
        version_errors.is_empty(),
        "advertised ListOffsets versions that fail:\n{}",
        version_errors.join("\n")
    );
    assert!(
        by_ts_errors.is_empty(),
        "ListOffsets by timestamp must return the first offset whose timestamp >= the target \
         (record level, not batch level):\n{}",
        by_ts_errors.join("\n")
    );
}

#[test]
fn long_poll_wakes_on_produce() {
    let broker = Broker::start(BrokerOpts::new());
    let bs = broker.bootstrap();
    let topic = "long-poll";
    create_topic(&bs, topic, 1);

    // Raw: a Fetch with a 20 s max wait on an empty partition must return the record produced
    // ~1 s later, i.e. be woken by the append rather than by its timeout.
    {
        let mut raw = broker.raw();
        let addr = broker.addr();
        let producer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            let mut c = RawClient::connect(addr);
            let sent = Instant::now();
            let r = c.produce_one(
                "long-poll",
                0,
                record_batch(1_700_000_000_000, &[(Some(b"k"), Some(b"raw"))]),
            );
            (r, sent)
        });
        let start = Instant::now();
        let resp = raw.fetch(topic, 0, 0, 20_000);
        let done = Instant::now();
        let (r, sent) = producer.join().unwrap();
        assert_eq!(r, (NONE, 0), "raw produce");
        let p = &resp.responses[0].partitions[0];
        assert_eq!(p.error_code, NONE);
        let recs = p.records.clone().unwrap_or_default();
        let (n, _) = count_records(&recs);
        eprintln!(
            "raw long-poll Fetch returned {n} records after {:?} ({:?} after the produce)",
            done - start,
            done.saturating_duration_since(sent)
        );
        assert_eq!(
            n, 1,
            "a Fetch waiting 20 s must be answered with the record appended during its wait"
        );
        assert!(
            done - start < Duration::from_secs(19),
            "fetch was not woken by the produce"
        );
    }

    // librdkafka: a consumer polling an empty position receives a message produced later.
    let consumer: BaseConsumer = consumer_config(&bs).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Offset(1))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let poll_start = Instant::now();
    while poll_start.elapsed() < Duration::from_millis(1500) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => panic!(
                "unexpected message before the produce: offset {}",
                m.offset()
            ),
            Some(Err(e)) => eprintln!("consumer error while idle: {e}"),
            None => {}
        }
    }
    let bs2 = bs.clone();
    let producer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        let p: BaseProducer = producer_config(&bs2, "all").create().unwrap();
        let sent = Instant::now();
        p.send(BaseRecord::to("long-poll").key("k").payload("hello"))
            .map_err(|(e, _)| e)
            .unwrap();
        p.flush(Duration::from_secs(30)).unwrap();
        sent
    });
    let got = wait_for(
        "consumer receives the late message",
        Duration::from_secs(30),
        Duration::ZERO,
        || match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => Some((m.offset(), m.payload().map(|p| p.to_vec()), Instant::now())),
            Some(Err(e)) => {
                eprintln!("consumer error (ignored unless the wait times out): {e}");
                None
            }
            None => None,
        },
    );
    let sent = producer.join().unwrap();
    assert_eq!(got.0, 1);
    assert_eq!(got.1.as_deref(), Some(&b"hello"[..]));
    eprintln!(
        "long-poll latency (send -> receive): {:?}",
        got.2.saturating_duration_since(sent)
    );
}

#[test]
fn auto_topic_creation_uses_num_partitions() {
    let broker = Broker::start(BrokerOpts::new().set("num.partitions", 3));
    let bs = broker.bootstrap();

    // librdkafka producing to an unknown topic.
    let topic = "auto-created";
    let deliveries = produce_messages(&producer_config(&bs, "all"), topic, 3, 0..30);
    assert!(deliveries.iter().all(|d| (0..3).contains(&d.0)));
    let consumer: BaseConsumer = consumer_config(&bs).create().unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .unwrap();
    let t = md.topics().iter().find(|t| t.name() == topic).unwrap();
    assert!(t.error().is_none(), "{:?}", t.error());
    assert_eq!(
        t.partitions().len(),
        3,
        "auto-created topic partition count"
    );
    for p in t.partitions() {
        assert_eq!(p.leader(), 1, "leader of partition {}", p.id());
    }
    verify_topic(&bs, topic, 3, 3, &deliveries);

    // Raw Metadata without auto-creation: unknown topic stays unknown.
    let mut raw = broker.raw();
    let resp = raw.metadata(&["never-created"], false);
    assert_eq!(resp.topics.len(), 1);
    assert_eq!(
        resp.topics[0].error_code, UNKNOWN_TOPIC_OR_PARTITION,
        "Metadata allow_auto_topic_creation=false for an unknown topic"
    );
    // Raw Metadata with auto-creation creates it.
    let parts = wait_for(
        "Metadata(allow_auto_topic_creation) creates a topic",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let resp = raw.metadata(&["created-by-metadata"], true);
            let t = &resp.topics[0];
            eprintln!(
                "  metadata: error {} partitions {}",
                t.error_code,
                t.partitions.len()
            );
            (t.error_code == NONE && t.partitions.iter().all(|p| p.error_code == NONE))
                .then_some(t.partitions.len())
        },
    );
    assert_eq!(parts, 3);
    let resp = raw.metadata(&["created-by-metadata"], false);
    assert_eq!(resp.topics[0].error_code, NONE);
    assert_eq!(resp.brokers.len(), 1);
    assert_eq!(resp.brokers[0].node_id.0, 1);
    assert_eq!(resp.brokers[0].port, broker.port() as i32);
}

#[test]
fn auto_topic_creation_disabled() {
    let broker = Broker::start(BrokerOpts::new().set("auto.create.topics.enable", "false"));
    let bs = broker.bootstrap();
    let mut raw = broker.raw();
    let resp = raw.metadata(&["no-such-topic"], true);
    assert_eq!(resp.topics.len(), 1);
    assert_eq!(
        resp.topics[0].error_code, UNKNOWN_TOPIC_OR_PARTITION,
        "Metadata with allow_auto_topic_creation=true when auto.create.topics.enable=false"
    );
    let (e, _) = raw.produce_one(
        "no-such-topic",
        0,
        record_batch(1_700_000_000_000, &[(None, Some(b"x"))]),
    );
    assert_eq!(
        e, UNKNOWN_TOPIC_OR_PARTITION,
        "raw Produce to an unknown topic"
    );

    // librdkafka: delivery fails.
    let mut cfg = producer_config(&bs, "all");
    cfg.set("message.timeout.ms", "5000");
    let rec = Recorder::default();
    let p: BaseProducer<Recorder> = cfg.create_with_context(rec.clone()).unwrap();
    send_blocking(&p, "no-such-topic", 0, b"k", b"v");
    let _ = p.flush(Duration::from_secs(30));
    let d = rec.deliveries.lock().unwrap().clone();
    eprintln!("librdkafka delivery to unknown topic: {d:?}");
    assert_eq!(d.len(), 1);
    assert!(d[0].1.is_err(), "delivery to an unknown topic must fail");
    let resp = raw.metadata(&["no-such-topic"], false);
    assert_eq!(resp.topics[0].error_code, UNKNOWN_TOPIC_OR_PARTITION);
}

#[test]
fn create_topics_errors() {
    let broker = Broker::start(BrokerOpts::new());
    let bs = broker.bootstrap();
    let mut raw = broker.raw();

    assert_eq!(
        raw.create_topic("rf-three", 1, 3),
        INVALID_REPLICATION_FACTOR,
        "replication factor 3 on one node"
    );
    let long = "x".repeat(250);
    for name in ["bad/name", long.as_str(), "with space", "..", "."] {
        assert_eq!(
            raw.create_topic(name, 1, 1),
            INVALID_TOPIC_EXCEPTION,
            "CreateTopics with invalid name {name:?}"
        );
    }
    // 249 legal characters is the maximum length.
    let max_len = format!("ok.-_{}", "y".repeat(244));
    assert_eq!(raw.create_topic(&max_len, 1, 1), NONE, "249-char name");
    assert_eq!(raw.create_topic("dup", 2, 1), NONE);
    assert_eq!(raw.create_topic("dup", 2, 1), TOPIC_ALREADY_EXISTS);
    // Topics rejected above must not exist.
    let resp = raw.metadata(&["rf-three", "bad/name"], false);
    for t in &resp.topics {
        assert_ne!(t.error_code, NONE, "rejected topic {:?} exists", t.name);
    }

    // The same through rdkafka's AdminClient.
    let admin = admin(&bs);
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let res = futures::executor::block_on(admin.create_topics(
        &[
            NewTopic::new("admin-rf-three", 1, TopicReplication::Fixed(3)),
            NewTopic::new("admin/bad", 1, TopicReplication::Fixed(1)),
            NewTopic::new("admin-good", 4, TopicReplication::Fixed(1)),
        ],
        &opts,
    ))
    .unwrap();
    eprintln!("AdminClient create_topics: {res:?}");
    assert_eq!(
        res[0],
        Err((
            "admin-rf-three".to_string(),
            RDKafkaErrorCode::InvalidReplicationFactor
        ))
    );
    assert_eq!(
        res[1],
        Err(("admin/bad".to_string(), RDKafkaErrorCode::InvalidTopic))
    );
    assert_eq!(res[2], Ok("admin-good".to_string()));
    wait_topic_ready(&bs, "admin-good", 4);
}

#[test]
fn idempotent_producer_exactly_once_in_order() {
    let broker = Broker::start(BrokerOpts::new());
    let bs = broker.bootstrap();
    let topic = "idempotent";
    create_topic(&bs, topic, 4);
    let mut cfg = producer_config(&bs, "all");
    cfg.set("enable.idempotence", "true")
        .set("max.in.flight.requests.per.connection", "5");
    let deliveries = produce_messages(&cfg, topic, 11, 0..10_000);
    let n = verify_topic(&bs, topic, 4, 11, &deliveries);
    assert_eq!(n, 10_000);
}
