//! Deterministic messages and the librdkafka producer, consumer and admin helpers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::TopicPartitionList;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use super::*;

pub fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Key and value of message `i` of a run seeded with `seed`: the key names the index, the value
/// is 100-1000 bytes, starting with the index (u64 LE) followed by pseudo-random bytes.
pub fn message(seed: u64, i: u64) -> (Vec<u8>, Vec<u8>) {
    let key = format!("key-{seed}-{i}").into_bytes();
    let mut st = seed ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    let size = 100 + (splitmix64(&mut st) % 901) as usize;
    let mut value = Vec::with_capacity(size);
    value.extend_from_slice(&i.to_le_bytes());
    while value.len() < size {
        let r = splitmix64(&mut st).to_le_bytes();
        let take = (size - value.len()).min(8);
        value.extend_from_slice(&r[..take]);
    }
    (key, value)
}

/// The index a value produced by `message` carries.
pub fn index_of(value: &[u8]) -> u64 {
    u64::from_le_bytes(value[..8].try_into().expect("value shorter than 8 bytes"))
}

// ---------------------------------------------------------------------------------------------
// librdkafka clients
// ---------------------------------------------------------------------------------------------

pub fn base_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("client.id", "corelog-test")
        .set("socket.timeout.ms", "30000")
        .set("log_level", "6");
    c
}

pub fn producer_config(bootstrap: &str, acks: &str) -> ClientConfig {
    let mut c = base_config(bootstrap);
    c.set("acks", acks)
        .set("enable.idempotence", "false")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "180000")
        .set("request.timeout.ms", "30000");
    c
}

/// Consumer settings for assign()-based consumption. librdkafka's assign() requires a group.id
/// (without one it fails with "Requires a consumer with group.id configured"), so each consumer
/// gets a unique one; no group subscription is used and no offsets are committed.
pub fn consumer_config(bootstrap: &str) -> ClientConfig {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut c = base_config(bootstrap);
    c.set(
        "group.id",
        format!("corelog-test-{}-{n}", std::process::id()),
    )
    .set("enable.auto.commit", "false")
    .set("enable.auto.offset.store", "false")
    .set("auto.offset.reset", "error")
    .set("enable.partition.eof", "false")
    .set("fetch.wait.max.ms", "500");
    c
}

pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    base_config(bootstrap).create().expect("create AdminClient")
}

/// Creates a topic with rdkafka's AdminClient and waits until its metadata shows every
/// partition with a leader.
pub fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    create_topic_with_configs(bootstrap, name, partitions, &[]);
}

/// [`create_topic`] with topic configs (`key`, `value`).
pub fn create_topic_with_configs(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) {
    let admin = admin(bootstrap);
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let start = Instant::now();
    let res = futures::executor::block_on(admin.create_topics(&[topic], &opts))
        .unwrap_or_else(|e| panic!("CreateTopics {name}: {e}"));
    assert_eq!(res.len(), 1);
    match &res[0] {
        Ok(_) => {}
        Err((t, code)) => panic!("CreateTopics {t}: {code:?}"),
    }
    eprintln!(
        "[harness] created topic {name} ({partitions} partitions) in {:?}",
        start.elapsed()
    );
    wait_topic_ready(bootstrap, name, partitions);
}

/// DescribeConfigs of a topic through rdkafka: every config's name and value.
pub fn describe_topic_configs(bootstrap: &str, name: &str) -> HashMap<String, String> {
    let admin = admin(bootstrap);
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let res = futures::executor::block_on(
        admin.describe_configs(&[ResourceSpecifier::Topic(name)], &opts),
    )
    .unwrap_or_else(|e| panic!("DescribeConfigs {name}: {e}"));
    let resource = res
        .into_iter()
        .next()
        .expect("one resource")
        .unwrap_or_else(|e| panic!("DescribeConfigs {name}: {e:?}"));
    resource
        .entries
        .into_iter()
        .filter_map(|e| Some((e.name, e.value?)))
        .collect()
}

pub fn wait_topic_ready(bootstrap: &str, name: &str, partitions: i32) {
    let consumer: BaseConsumer = consumer_config(bootstrap).create().expect("consumer");
    wait_for(
        &format!("metadata of {name} shows {partitions} partitions with leaders"),
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let md = consumer
                .fetch_metadata(Some(name), Duration::from_secs(10))
                .ok()?;
            let t = md.topics().iter().find(|t| t.name() == name)?;
            if t.error().is_some() || t.partitions().len() != partitions as usize {
                return None;
            }
            t.partitions()
                .iter()
                .all(|p| p.leader() >= 0 && p.error().is_none())
                .then_some(())
        },
    );
}

/// A delivery report: (message index, result).
pub type Delivery = (usize, Result<(i32, i64), String>);

/// Producer context that records every delivery report.
#[derive(Clone, Default)]
pub struct Recorder {
    pub deliveries: Arc<Mutex<Vec<Delivery>>>,
}

impl ClientContext for Recorder {}

impl ProducerContext for Recorder {
    type DeliveryOpaque = usize;
    fn delivery(&self, r: &DeliveryResult<'_>, idx: usize) {
        let rec = match r {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        self.deliveries.lock().unwrap().push((idx, rec));
    }
}

/// Sends one record, waiting (by polling the producer) while librdkafka's queue is full.
pub fn send_blocking(
    producer: &BaseProducer<Recorder>,
    topic: &str,
    idx: usize,
    key: &[u8],
    value: &[u8],
) {
    let start = Instant::now();
    let mut rec = BaseRecord::with_opaque_to(topic, idx)
        .key(key)
        .payload(value);
    loop {
        match producer.send(rec) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                producer.poll(Duration::from_millis(20));
                if start.elapsed() > STALL_DEADLINE {
                    panic!("producer queue full for {:?}", start.elapsed());
                }
            }
            Err((e, _)) => panic!("send message {idx}: {e}"),
        }
    }
}

/// Produces messages `indices` of `seed` to `topic`, waits for every delivery report and
/// panics if any failed. Returns `(partition, offset)` per index (position `i - start`).
pub fn produce_messages(
    config: &ClientConfig,
    topic: &str,
    seed: u64,
    indices: std::ops::Range<u64>,
) -> Vec<(i32, i64)> {
    let rec = Recorder::default();
    let producer: BaseProducer<Recorder> = config
        .create_with_context(rec.clone())
        .expect("create producer");
    let n = (indices.end - indices.start) as usize;
    let start = Instant::now();
    for i in indices.clone() {
        let (k, v) = message(seed, i);
        send_blocking(&producer, topic, i as usize, &k, &v);
        if i.is_multiple_of(1000) {
            producer.poll(Duration::ZERO);
        }
    }
    eprintln!(
        "[harness] queued {n} messages to {topic} in {:?}",
        start.elapsed()
    );
    // Wait for all delivery reports; fail on a stall.
    let mut last = 0usize;
    let mut last_progress = Instant::now();
    loop {
        producer.poll(Duration::from_millis(100));
        let done = rec.deliveries.lock().unwrap().len();
        if done >= n {
            break;
        }
        if done != last {
            last = done;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL_DEADLINE {
            panic!(
                "producer to {topic}: {done}/{n} deliveries, none for {:?}",
                last_progress.elapsed()
            );
        }
    }
    let elapsed = start.elapsed();
    eprintln!(
        "[harness] {n} deliveries to {topic} in {elapsed:?} ({:.0} msg/s)",
        n as f64 / elapsed.as_secs_f64()
    );
    let deliveries = std::mem::take(&mut *rec.deliveries.lock().unwrap());
    let mut out = vec![(-1, -1); n];
    let mut errors = Vec::new();
    for (idx, r) in deliveries {
        match r {
            Ok(po) => out[idx - indices.start as usize] = po,
            Err(e) => errors.push((idx, e)),
        }
    }
    assert!(
        errors.is_empty(),
        "{} of {n} deliveries to {topic} failed, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(
        out.iter().all(|&(p, o)| p >= 0 && o >= 0),
        "a delivery report is missing or has no offset"
    );
    out
}

/// A consumed message.
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp: Option<i64>,
}

/// Consumes `topic` partitions from `start` up to (excluding) `end`, given as
/// `(partition, start, end)`, with an assign()ed BaseConsumer, calling `f` for every message in
/// range. Fails when no message arrives for `STALL_DEADLINE`.
pub fn consume_ranges(
    bootstrap: &str,
    topic: &str,
    ranges: &[(i32, i64, i64)],
    mut f: impl FnMut(Consumed),
) {
    let consumer: BaseConsumer = consumer_config(bootstrap).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    let mut next: HashMap<i32, (i64, i64)> = HashMap::new();
    for &(p, s, e) in ranges {
        if e > s {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(s))
                .unwrap();
            next.insert(p, (s, e));
        }
    }
    if next.is_empty() {
        return;
    }
    consumer.assign(&tpl).expect("assign");
    let total: i64 = next.values().map(|(s, e)| e - s).sum();
    let start = Instant::now();
    let mut got = 0i64;
    let mut last_progress = Instant::now();
    let mut errors = 0usize;
    let mut last_error: Option<String> = None;
    while !next.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            None => {
                if last_progress.elapsed() > STALL_DEADLINE {
                    panic!(
                        "consumer of {topic}: {got}/{total} messages, nothing for {:?}; still waiting for {next:?}; last error {last_error:?}",
                        last_progress.elapsed()
                    );
                }
            }
            Some(Err(e)) => {
                // Transient client errors (e.g. coordinator lookups) are reported here too;
                // a real problem shows up as a stall.
                errors += 1;
                if errors <= 20 {
                    eprintln!("[harness] consumer of {topic}: error {e} after {got}/{total}");
                }
                last_error = Some(e.to_string());
                if last_progress.elapsed() > STALL_DEADLINE {
                    panic!(
                        "consumer of {topic}: {got}/{total} messages, nothing for {:?}; last error {last_error:?}",
                        last_progress.elapsed()
                    );
                }
            }
            Some(Ok(m)) => {
                let p = m.partition();
                let Some(&(expect, end)) = next.get(&p) else {
                    continue;
                };
                let off = m.offset();
                if off >= end {
                    continue;
                }
                assert_eq!(
                    off, expect,
                    "{topic}[{p}]: expected offset {expect}, got {off} (offsets must be consecutive)"
                );
                f(Consumed {
                    partition: p,
                    offset: off,
                    key: m.key().map(|k| k.to_vec()),
                    value: m.payload().map(|v| v.to_vec()),
                    timestamp: m.timestamp().to_millis(),
                });
                got += 1;
                last_progress = Instant::now();
                if off + 1 >= end {
                    next.remove(&p);
                } else {
                    next.insert(p, (off + 1, end));
                }
            }
        }
    }
    let el = start.elapsed();
    eprintln!(
        "[harness] consumed {got} messages of {topic} in {el:?} ({:.0} msg/s)",
        got as f64 / el.as_secs_f64()
    );
}

/// High watermark per partition (via rdkafka's ListOffsets).
pub fn watermarks(bootstrap: &str, topic: &str, partitions: i32) -> Vec<(i64, i64)> {
    let consumer: BaseConsumer = consumer_config(bootstrap).create().expect("consumer");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("fetch_watermarks {topic}[{p}]: {e}"))
        })
        .collect()
}

/// Checks that a topic holds exactly the messages `deliveries` says (index `i` of `seed` at
/// `deliveries[i]`), byte for byte, in offset order, and that the index order per partition
/// is increasing. Returns the number checked.
pub fn verify_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    seed: u64,
    deliveries: &[(i32, i64)],
) -> usize {
    let mut expected: HashMap<(i32, i64), u64> = HashMap::with_capacity(deliveries.len());
    let mut ends = vec![0i64; partitions as usize];
    for (i, &(p, o)) in deliveries.iter().enumerate() {
        assert!(
            expected.insert((p, o), i as u64).is_none(),
            "{topic}: two deliveries reported at partition {p} offset {o}"
        );
        ends[p as usize] = ends[p as usize].max(o + 1);
    }
    let wm = watermarks(bootstrap, topic, partitions);
    for p in 0..partitions as usize {
        assert_eq!(
            wm[p],
            (0, ends[p]),
            "{topic}[{p}]: watermarks (low, high) differ from delivered offsets"
        );
        assert_eq!(
            ends[p] as usize,
            deliveries.iter().filter(|d| d.0 == p as i32).count(),
            "{topic}[{p}]: delivered offsets are not 0..n"
        );
    }
    let ranges: Vec<(i32, i64, i64)> = (0..partitions).map(|p| (p, 0, ends[p as usize])).collect();
    let mut last_index: HashMap<i32, u64> = HashMap::new();
    let mut n = 0usize;
    consume_ranges(bootstrap, topic, &ranges, |m| {
        let idx = *expected
            .get(&(m.partition, m.offset))
            .unwrap_or_else(|| panic!("{topic}[{}]@{}: unexpected message", m.partition, m.offset));
        let (k, v) = message(seed, idx);
        assert_eq!(
            m.key.as_deref(),
            Some(&k[..]),
            "{topic}[{}]@{}: key differs (message {idx})",
            m.partition,
            m.offset
        );
        let got = m.value.as_deref().unwrap_or(&[]);
        if got != &v[..] {
            panic!(
                "{topic}[{}]@{}: value differs from message {idx}: got {} bytes (index {:?}), expected {} bytes",
                m.partition,
                m.offset,
                got.len(),
                (got.len() >= 8).then(|| index_of(got)),
                v.len()
            );
        }
        if let Some(&prev) = last_index.get(&m.partition) {
            assert!(
                idx > prev,
                "{topic}[{}]@{}: message {idx} after message {prev} (production order broken)",
                m.partition,
                m.offset
            );
        }
        last_index.insert(m.partition, idx);
        n += 1;
    });
    assert_eq!(n, deliveries.len(), "{topic}: consumed count");
    n
}

/// Files (recursively) under `dir`.
pub fn list_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), md.len()));
            }
        }
    }
    out.sort();
    out
}
