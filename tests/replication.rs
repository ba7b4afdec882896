//! Replication under faults: 3 brokers (every one a controller voter), topics with
//! replication factor 3, librdkafka clients (no tokio: `futures::executor::block_on` and
//! plain threads).
//!
//! What is checked: replicas hold the same batches at the same offsets, byte for byte
//! (`.log` segment files compared after removing the DMA zero padding); a killed leader is
//! replaced from the ISR and no acknowledged message is lost; a stalled follower leaves the
//! ISR and rejoins; `min.insync.replicas` refuses acks=all when the ISR is too small; an old
//! leader with an unreplicated tail truncates it; and a bounded chaos loop of kill -9 /
//! restart under idempotent acks=all load.
//!
//! The tests run one at a time (`serial()`), each with its own cluster of
//! `corelog serve --cores 1` processes that are killed on drop (also on a panic, which prints
//! their log tails). Brokers run with `replica.lag.time.max.ms=2000` and the default
//! `broker.session.timeout.ms` (1500). Every wait polls with a generous deadline and prints
//! how long it took.
//!
//! A longer chaos run (100 rounds, about 15 minutes):
//!
//! ```text
//! CORELOG_CHAOS_ROUNDS=100 cargo test --release --test replication chaos -- --nocapture
//! ```
//!
//! `CORELOG_CHAOS_SEED=<n>` replays the victim choices and pauses of an earlier run.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

/// `replica.lag.time.max.ms` of every broker here.
const LAG_MAX_MS: u64 = 2000;
/// Deadline for a metadata change (ISR shrink, fencing, failover) to show.
const METADATA_DEADLINE: Duration = Duration::from_secs(60);
/// Deadline for the replicas to be in sync (full ISR, HW = log end, identical logs).
const SYNC_DEADLINE: Duration = Duration::from_secs(120);
/// The bound a new leader must be elected within after its predecessor is killed.
const FAILOVER_BOUND: Duration = Duration::from_secs(15);

/// Delivery reports arriving this soon after a kill -9 answer requests the killed leader
/// acknowledged before it died (responses already in the client's socket buffer); no new
/// leader can exist that soon (fencing waits 1.5 s), so failover times skip them.
const IN_FLIGHT_REPORTS: Duration = Duration::from_millis(500);

const NOT_ENOUGH_REPLICAS: i16 = 19;

/// One test of this binary at a time: a 2-core machine cannot run two 3-broker clusters
/// without starving heartbeats.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn start_cluster() -> Cluster {
    Cluster::start_with(ClusterOpts::new(3).set("replica.lag.time.max.ms", LAG_MAX_MS))
}

/// Creates an RF=3 topic with `min.insync.replicas` through rdkafka's AdminClient and waits
/// until every broker shows every partition with a leader and the full ISR.
fn create_rf3_topic(cluster: &Cluster, name: &str, partitions: i32, min_isr: i32) {
    let admin = admin(&cluster.bootstrap());
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let min_isr = min_isr.to_string();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(3))
        .set("min.insync.replicas", &min_isr);
    let start = Instant::now();
    let res = futures::executor::block_on(admin.create_topics(&[topic], &opts))
        .unwrap_or_else(|e| panic!("CreateTopics {name}: {e}"));
    match &res[0] {
        Ok(_) => {}
        Err((t, code)) => panic!("CreateTopics {t}: {code:?}"),
    }
    eprintln!(
        "[test] created {name} ({partitions} partitions, RF 3, min.insync.replicas {min_isr}) in {:?}",
        start.elapsed()
    );
    let members: Vec<usize> = (0..cluster.len()).collect();
    wait_views(
        cluster,
        &members,
        name,
        &format!("{name}: every partition led, full ISR"),
        METADATA_DEADLINE,
        |v| v.len() == partitions as usize && v.iter().all(full_isr),
    );
}

// ---------------------------------------------------------------------------------------------
// Metadata
// ---------------------------------------------------------------------------------------------

fn sorted(v: &[i32]) -> Vec<i32> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v
}

/// A partition with a leader, three replicas and all of them in the ISR.
fn full_isr(p: &PartitionView) -> bool {
    p.error == NONE
        && p.leader >= 0
        && p.replicas.len() == 3
        && sorted(&p.isr) == sorted(&p.replicas)
}

/// The partitions of `topic` as member `i` shows them.
fn views_of(cluster: &Cluster, i: usize, topic: &str) -> Result<Vec<PartitionView>, String> {
    let md = try_metadata(cluster.addr(i), Some(&[topic]), Duration::from_secs(10))
        .map_err(|e| format!("node {}: Metadata failed: {e}", i + 1))?;
    topic_views(&md)
        .remove(topic)
        .ok_or_else(|| format!("node {}: no topic {topic}", i + 1))
}

/// Polls Metadata of `members` until each answer for `topic` satisfies `ok` and they all agree
/// on leaders, epochs and ISRs; returns that view. Panics after `deadline` with the last
/// answers.
fn wait_views(
    cluster: &Cluster,
    members: &[usize],
    topic: &str,
    what: &str,
    deadline: Duration,
    ok: impl Fn(&[PartitionView]) -> bool,
) -> Vec<PartitionView> {
    let start = Instant::now();
    loop {
        let mut last = Vec::new();
        let mut views: Vec<Vec<PartitionView>> = Vec::new();
        for &i in members {
            match views_of(cluster, i, topic) {
                Ok(v) if ok(&v) => views.push(v),
                Ok(v) => last.push(format!("node {}: {v:?}", i + 1)),
                Err(e) => last.push(e),
            }
        }
        if last.is_empty() {
            if views.windows(2).all(|w| w[0] == w[1]) {
                eprintln!("[test] {what}: ok after {:?}", start.elapsed());
                return views.swap_remove(0);
            }
            last.push(format!("members disagree: {views:?}"));
        }
        if start.elapsed() > deadline {
            panic!(
                "{what}: not done after {:?}; last answers:\n  {}",
                start.elapsed(),
                last.join("\n  ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn others(i: usize) -> Vec<usize> {
    (0..3).filter(|&j| j != i).collect()
}

fn controller_of(cluster: &Cluster, i: usize) -> i32 {
    cluster.metadata_from(i, Some(&[])).controller_id.0
}

// ---------------------------------------------------------------------------------------------
// Logs on disk
// ---------------------------------------------------------------------------------------------

/// One replica's log as its segment files hold it: the batches, concatenated in segment
/// order, without the zero padding DMA writes leave at the end of a segment.
#[derive(Default, PartialEq)]
struct DiskLog {
    bytes: Vec<u8>,
    /// (base offset, partition leader epoch, length incl. the 12-byte prefix) per batch.
    batches: Vec<(i64, i32, usize)>,
    /// The offset after the last batch.
    end: i64,
}

impl std::fmt::Debug for DiskLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let epochs: Vec<(i32, i64)> = self.batches.iter().fold(Vec::new(), |mut acc, b| {
            if acc.last().is_none_or(|(e, _)| *e != b.1) {
                acc.push((b.1, b.0));
            }
            acc
        });
        write!(
            f,
            "{} batches, {} bytes, end offset {}, (epoch, first offset) {epochs:?}",
            self.batches.len(),
            self.bytes.len(),
            self.end
        )
    }
}

/// Reads `dir`'s `*.log` segments in name order, walking the batches by their length
/// prefix; what follows the last batch of a segment must be zero padding.
fn read_disk_log(dir: &Path) -> Result<DiskLog, String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    names.sort();
    let mut log = DiskLog::default();
    for path in names {
        let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut pos = 0usize;
        while data.len() - pos >= 12 {
            let len = i32::from_be_bytes(data[pos + 8..pos + 12].try_into().unwrap());
            if len == 0 {
                break;
            }
            let total = 12 + len as usize;
            if len < 49 || pos + total > data.len() {
                return Err(format!(
                    "{}: partial or bad batch at byte {pos} (length {len}, file {} bytes)",
                    path.display(),
                    data.len()
                ));
            }
            let b = &data[pos..pos + total];
            let base = i64::from_be_bytes(b[..8].try_into().unwrap());
            let epoch = i32::from_be_bytes(b[12..16].try_into().unwrap());
            let last_delta = i32::from_be_bytes(b[23..27].try_into().unwrap());
            if base < log.end {
                return Err(format!(
                    "{}: batch at offset {base} after end {}",
                    path.display(),
                    log.end
                ));
            }
            log.batches.push((base, epoch, total));
            log.bytes.extend_from_slice(b);
            log.end = base + i64::from(last_delta) + 1;
            pos += total;
        }
        if let Some(at) = data[pos..].iter().position(|&x| x != 0) {
            return Err(format!(
                "{}: non-zero byte at {} after the last whole batch (ends at {pos})",
                path.display(),
                pos + at
            ));
        }
    }
    Ok(log)
}

fn disk_log(cluster: &Cluster, i: usize, topic: &str, partition: i32) -> Result<DiskLog, String> {
    read_disk_log(
        &cluster.brokers[i]
            .data_dir()
            .join(format!("{topic}-{partition}")),
    )
    .map_err(|e| format!("node {}: {e}", i + 1))
}

/// Where two logs first differ, as text.
fn first_difference(a: &DiskLog, b: &DiskLog) -> String {
    for (k, (x, y)) in a.batches.iter().zip(&b.batches).enumerate() {
        if x != y {
            return format!("batch #{k}: {x:?} vs {y:?} (base, epoch, length)");
        }
    }
    if a.batches.len() != b.batches.len() {
        return format!(
            "{} vs {} batches (same up to the shorter)",
            a.batches.len(),
            b.batches.len()
        );
    }
    match a.bytes.iter().zip(&b.bytes).position(|(x, y)| x != y) {
        Some(at) => format!("same batch boundaries, bytes differ at {at}"),
        None => "identical".to_string(),
    }
}

/// Waits until every partition of `topic` has the full ISR on every broker, the leader's high
/// watermark (ListOffsets latest) equals its log end, and the three replicas' logs are
/// identical byte for byte. Returns the log end of each partition.
fn wait_in_sync(cluster: &Cluster, topic: &str, partitions: i32) -> Vec<i64> {
    let what = format!("{topic}: full ISR, HW = log end, replicas identical");
    let start = Instant::now();
    let members: Vec<usize> = (0..cluster.len()).collect();
    let mut polls = 0;
    loop {
        let mut problems = Vec::new();
        let mut ends = Vec::new();
        let views = members
            .iter()
            .map(|&i| views_of(cluster, i, topic))
            .collect::<Result<Vec<_>, _>>();
        match views {
            Err(e) => problems.push(e),
            Ok(views) if !views.windows(2).all(|w| w[0] == w[1]) => {
                problems.push(format!("members disagree: {views:?}"))
            }
            Ok(views)
                if views[0].len() != partitions as usize || !views[0].iter().all(full_isr) =>
            {
                problems.push(format!("ISR not full: {:?}", views[0]))
            }
            Ok(views) => {
                for (p, view) in views[0].iter().enumerate() {
                    let p = p as i32;
                    let leader = Cluster::index_of(view.leader);
                    let (err, hw, _) = cluster.raw(leader).list_offset(topic, p, -1);
                    let logs: Result<Vec<DiskLog>, String> = members
                        .iter()
                        .map(|&i| disk_log(cluster, i, topic, p))
                        .collect();
                    let logs = match logs {
                        Ok(l) => l,
                        Err(e) => {
                            problems.push(format!("{topic}[{p}]: {e}"));
                            continue;
                        }
                    };
                    let ld = &logs[leader];
                    if err != NONE || hw != ld.end {
                        problems.push(format!(
                            "{topic}[{p}]: leader node {} ListOffsets latest error {err} offset {hw}, log end {}",
                            view.leader, ld.end
                        ));
                        continue;
                    }
                    for (i, l) in logs.iter().enumerate() {
                        if l != ld {
                            problems.push(format!(
                                "{topic}[{p}]: node {} ({l:?}) differs from leader node {} ({ld:?}): {}",
                                i + 1,
                                view.leader,
                                first_difference(l, ld)
                            ));
                        }
                    }
                    ends.push(hw);
                }
            }
        }
        if problems.is_empty() {
            eprintln!(
                "[test] {what}: ok after {:?} ({polls} polls); log ends {ends:?}",
                start.elapsed()
            );
            return ends;
        }
        if polls == 0 {
            eprintln!("[test] {what}: not yet:\n  {}", problems.join("\n  "));
        }
        polls += 1;
        if start.elapsed() > SYNC_DEADLINE {
            panic!(
                "{what}: not done after {:?}:\n  {}",
                start.elapsed(),
                problems.join("\n  ")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// Producing
// ---------------------------------------------------------------------------------------------

fn idempotent_config(bootstrap: &str) -> ClientConfig {
    let mut c = producer_config(bootstrap, "all");
    c.set("enable.idempotence", "true")
        .set("message.timeout.ms", "300000")
        .set("queue.buffering.max.messages", "50000");
    c
}

/// A delivery report with the time it arrived.
struct Report {
    idx: u64,
    result: Result<(i32, i64), String>,
    at: Instant,
}

#[derive(Clone, Default)]
struct TimedRecorder {
    reports: Arc<Mutex<Vec<Report>>>,
}

impl ClientContext for TimedRecorder {
    // librdkafka's own account of errors (e.g. why an idempotent producer went fatal).
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if (level as i32) <= (rdkafka::config::RDKafkaLogLevel::Warning as i32) {
            eprintln!("[librdkafka {level:?} {fac}] {message}");
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        eprintln!("[librdkafka error] {error}: {reason}");
    }
}

impl ProducerContext for TimedRecorder {
    type DeliveryOpaque = usize;
    fn delivery(&self, r: &DeliveryResult<'_>, idx: usize) {
        let result = match r {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        self.reports.lock().unwrap().push(Report {
            idx: idx as u64,
            result,
            at: Instant::now(),
        });
    }
}

/// A background idempotent acks=all producer: message `i` of `seed` goes to partition
/// `i % partitions`, at about `rate` messages per second.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    reports: Arc<Mutex<Vec<Report>>>,
    handle: Option<JoinHandle<()>>,
}

impl Load {
    fn start(bootstrap: String, topic: &str, partitions: i32, seed: u64, rate: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let rec = TimedRecorder::default();
        let reports = rec.reports.clone();
        let topic = topic.to_string();
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let handle = std::thread::spawn(move || {
            let mut config = idempotent_config(&bootstrap);
            config.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
            let producer: BaseProducer<TimedRecorder> = config
                .create_with_context(rec.clone())
                .expect("create producer");
            let start = Instant::now();
            let mut next = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let target = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                while next < target {
                    let (k, v) = message(seed, next);
                    let r = BaseRecord::with_opaque_to(&topic, next as usize)
                        .partition((next % partitions as u64) as i32)
                        .key(&k)
                        .payload(&v);
                    match producer.send(r) {
                        Ok(()) => {
                            next += 1;
                            sent2.store(next, Ordering::Relaxed);
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            break;
                        }
                        Err((e, _)) => panic!(
                            "send message {next}: {e} (librdkafka's fatal error: {:?})",
                            producer.client().fatal_error()
                        ),
                    }
                }
                producer.poll(Duration::from_millis(10));
            }
            eprintln!("[test] load: {next} messages queued, waiting for every delivery report");
            let drain = Instant::now();
            let mut last = 0usize;
            let mut last_progress = Instant::now();
            loop {
                producer.poll(Duration::from_millis(100));
                let done = rec.reports.lock().unwrap().len();
                if done as u64 >= next {
                    break;
                }
                if done != last {
                    last = done;
                    last_progress = Instant::now();
                } else if last_progress.elapsed() > STALL_DEADLINE {
                    panic!(
                        "load: {done}/{next} delivery reports, none for {:?}",
                        last_progress.elapsed()
                    );
                }
            }
            let _ = producer.flush(Duration::from_secs(10));
            eprintln!(
                "[test] load: all {next} delivery reports in after {:?}",
                drain.elapsed()
            );
        });
        Load {
            stop,
            sent,
            reports,
            handle: Some(handle),
        }
    }

    fn delivered_ok(&self) -> usize {
        self.reports
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.result.is_ok())
            .count()
    }

    /// Waits until `n` more messages than now are acknowledged.
    fn wait_more(&self, n: usize, what: &str) {
        let base = self.delivered_ok();
        self.check_running();
        wait_for(what, STALL_DEADLINE, Duration::from_millis(20), || {
            self.check_running();
            (self.delivered_ok() >= base + n).then_some(())
        });
    }

    fn check_running(&self) {
        if self.handle.as_ref().is_some_and(|h| h.is_finished()) {
            panic!("the load thread ended early (see its panic above)");
        }
    }

    /// The first successful delivery to `partition` that arrived after `after`.
    fn first_ok_after(&self, partition: i32, after: Instant) -> Option<Instant> {
        self.reports
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.at > after && matches!(r.result, Ok((p, _)) if p == partition))
            .map(|r| r.at)
            .min()
    }

    /// Stops producing, waits for every delivery report and returns them.
    fn finish(mut self) -> Vec<Report> {
        self.stop.store(true, Ordering::Relaxed);
        let h = self.handle.take().unwrap();
        if let Err(e) = h.join() {
            std::panic::resume_unwind(e);
        }
        eprintln!(
            "[test] load finished: {} messages sent",
            self.sent.load(Ordering::Relaxed)
        );
        std::mem::take(&mut *self.reports.lock().unwrap())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Consumes every partition of `topic` from 0 to its high watermark (each offset once, in
/// order: `consume_ranges` asserts consecutive offsets), checks each message is an intact
/// message of `seed`, and checks the acknowledged deliveries: every one is at its reported
/// offset (none lost), the message indices grow along each partition (none reordered or
/// duplicated), and the topic holds nothing else (every delivery succeeded; idempotence).
fn verify_acknowledged(
    cluster: &Cluster,
    topic: &str,
    partitions: i32,
    seed: u64,
    reports: &[Report],
) {
    let failed: Vec<(u64, &String)> = reports
        .iter()
        .filter_map(|r| r.result.as_ref().err().map(|e| (r.idx, e)))
        .collect();
    let mut acked: HashMap<(i32, i64), u64> = HashMap::new();
    // librdkafka acknowledges a batch whose answer was lost once a later batch of the same
    // idempotent producer succeeds ("implicitly acked", rd_kafka_dr_implicit_ack): success
    // without an offset (-1001). Such a message must be in its partition; where is unknown.
    let mut acked_unplaced: Vec<(i32, u64)> = Vec::new();
    for r in reports {
        if let Ok((p, o)) = r.result {
            if o < 0 {
                acked_unplaced.push((p, r.idx));
                continue;
            }
            assert!(
                acked.insert((p, o), r.idx).is_none(),
                "{topic}[{p}]@{o}: two messages acknowledged at the same offset"
            );
        }
    }
    let bootstrap = cluster.bootstrap();
    let wm = watermarks(&bootstrap, topic, partitions);
    let ranges: Vec<(i32, i64, i64)> = wm
        .iter()
        .enumerate()
        .map(|(p, &(low, high))| {
            assert_eq!(low, 0, "{topic}[{p}]: log start moved");
            (p as i32, 0, high)
        })
        .collect();
    let mut consumed: HashMap<(i32, i64), u64> = HashMap::new();
    let mut last: BTreeMap<i32, u64> = BTreeMap::new();
    consume_ranges(&bootstrap, topic, &ranges, |m| {
        let value = m.value.as_deref().unwrap_or(&[]);
        assert!(
            value.len() >= 8,
            "{topic}[{}]@{}: short value",
            m.partition,
            m.offset
        );
        let idx = index_of(value);
        let (k, v) = message(seed, idx);
        assert!(
            m.key.as_deref() == Some(&k[..]) && value == &v[..],
            "{topic}[{}]@{}: message {idx} is corrupt",
            m.partition,
            m.offset
        );
        if let Some(&prev) = last.get(&m.partition) {
            assert!(
                idx > prev,
                "{topic}[{}]@{}: message {idx} after message {prev} (reordered or duplicated)",
                m.partition,
                m.offset
            );
        }
        last.insert(m.partition, idx);
        consumed.insert((m.partition, m.offset), idx);
    });
    let lost: Vec<_> = acked
        .iter()
        .filter(|(po, idx)| consumed.get(po) != Some(idx))
        .map(|(po, idx)| (*idx, *po, consumed.get(po).copied()))
        .collect();
    let consumed_indices: HashSet<(i32, u64)> =
        consumed.iter().map(|(&(p, _), &idx)| (p, idx)).collect();
    let lost_unplaced: Vec<_> = acked_unplaced
        .iter()
        .filter(|pi| !consumed_indices.contains(pi))
        .collect();
    assert!(
        lost_unplaced.is_empty(),
        "{topic}: {} messages acknowledged without an offset are missing; first (partition, index): {:?}",
        lost_unplaced.len(),
        &lost_unplaced[..lost_unplaced.len().min(10)]
    );
    eprintln!(
        "[test] {topic}: {} acknowledged ({} without an offset), {} failed deliveries, {} consumed, {} acknowledged messages lost",
        acked.len() + acked_unplaced.len(),
        acked_unplaced.len(),
        failed.len(),
        consumed.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{topic}: {} acknowledged messages lost; first (index, (partition, offset), found): {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        failed.is_empty(),
        "{topic}: {} deliveries failed, first: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(
        consumed.len(),
        acked.len() + acked_unplaced.len(),
        "{topic}: the topic holds messages that were never acknowledged"
    );
}

fn batch_of(tag: &str, n: usize) -> Vec<u8> {
    let owned: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
        .map(|i| {
            (
                format!("{tag}-{i}").into_bytes(),
                format!("{tag}-value-{i}-{}", "x".repeat(50)).into_bytes(),
            )
        })
        .collect();
    let records: Vec<KeyValue<'_>> = owned
        .iter()
        .map(|(k, v)| (Some(&k[..]), Some(&v[..])))
        .collect();
    record_batch(1_700_000_000_000, &records)
}

/// Produce of one batch to member `i`; returns (error code, base offset).
fn raw_produce(
    cluster: &Cluster,
    i: usize,
    topic: &str,
    partition: i32,
    batch: Vec<u8>,
    acks: i16,
) -> (i16, i64) {
    let resp = cluster.raw(i).produce(topic, partition, batch, acks);
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn signal(cluster: &Cluster, i: usize, sig: i32) {
    let pid = cluster.brokers[i].pid().expect("broker running");
    eprintln!("[test] signal {sig} to node {} (pid {pid})", i + 1);
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

fn summary(name: &str, mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return format!("{name}: no samples");
    }
    v.sort();
    format!(
        "{name}: n={} min {:?} p50 {:?} max {:?}",
        v.len(),
        v[0],
        v[v.len() / 2],
        v[v.len() - 1]
    )
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// 100,000 idempotent acks=all messages to 6 partitions: afterwards every replica holds the
/// same batches at the same offsets, and everything is consumed once per offset, in order.
#[test]
fn replicas_hold_identical_logs_after_acks_all_load() {
    let _g = serial();
    let t = Instant::now();
    let cluster = start_cluster();
    let topic = "identical";
    create_rf3_topic(&cluster, topic, 6, 2);
    let seed = 11;
    let deliveries = produce_messages(
        &idempotent_config(&cluster.bootstrap()),
        topic,
        seed,
        0..100_000,
    );
    let ends = wait_in_sync(&cluster, topic, 6);
    let mut per_partition = vec![0i64; 6];
    for &(p, _) in &deliveries {
        per_partition[p as usize] += 1;
    }
    assert_eq!(
        ends, per_partition,
        "log ends differ from the delivered counts"
    );
    let n = verify_topic(&cluster.bootstrap(), topic, 6, seed, &deliveries);
    assert_eq!(n, 100_000);
    eprintln!("[test] identical logs: done in {:?}", t.elapsed());
}

/// kill -9 of a partition leader during idempotent acks=all production: a new leader from
/// the ISR within a bound, the producer carries on, no acknowledged message is lost, and
/// the restarted old leader ends up identical to the others.
#[test]
fn killed_leader_is_replaced_and_no_acknowledged_message_is_lost() {
    let _g = serial();
    let t = Instant::now();
    let mut cluster = start_cluster();
    let topic = "failover";
    create_rf3_topic(&cluster, topic, 3, 2);
    let seed = 22;
    let load = Load::start(cluster.bootstrap(), topic, 3, seed, 2000);
    load.wait_more(3000, "3000 acknowledged before the kill");
    let before = views_of(&cluster, 0, topic).unwrap();
    let (leader, epoch) = (before[0].leader, before[0].leader_epoch);
    let victim = Cluster::index_of(leader);
    eprintln!(
        "[test] partition 0: leader node {leader} epoch {epoch}, ISR {:?}",
        before[0].isr
    );
    let killed = Instant::now();
    cluster.kill9(victim);
    let survivors = others(victim);
    let after = wait_views(
        &cluster,
        &survivors,
        topic,
        "a new leader for partition 0",
        METADATA_DEADLINE,
        |v| v[0].leader >= 0 && v[0].leader != leader,
    );
    let elected = killed.elapsed();
    let new = &after[0];
    eprintln!(
        "[test] FAILOVER: new leader node {} (epoch {}) {elected:?} after kill -9 of node {leader}",
        new.leader, new.leader_epoch
    );
    assert!(
        before[0].isr.contains(&new.leader),
        "new leader {} was not in the ISR {:?}",
        new.leader,
        before[0].isr
    );
    assert!(
        new.leader_epoch > epoch,
        "leader epoch not bumped: {epoch} -> {}",
        new.leader_epoch
    );
    assert!(
        !new.isr.contains(&leader),
        "killed node {leader} still in the ISR {:?}",
        new.isr
    );
    assert!(
        elected < FAILOVER_BOUND,
        "new leader after {elected:?} (bound {FAILOVER_BOUND:?})"
    );
    let first = wait_for(
        "an acks=all delivery to partition 0 after the kill",
        STALL_DEADLINE,
        Duration::from_millis(20),
        || {
            load.check_running();
            load.first_ok_after(0, killed + IN_FLIGHT_REPORTS)
        },
    );
    eprintln!(
        "[test] FAILOVER: first acknowledged message on partition 0 {:?} after the kill",
        first - killed
    );
    load.wait_more(2000, "2000 more acknowledged after the failover");
    cluster.restart(victim);
    load.wait_more(2000, "2000 more acknowledged after the restart");
    let reports = load.finish();
    wait_in_sync(&cluster, topic, 3);
    verify_acknowledged(&cluster, topic, 3, seed, &reports);
    eprintln!("[test] leader failover: done in {:?}", t.elapsed());
}

/// A SIGSTOPped follower leaves the ISR; after SIGCONT it catches up, rejoins, and its log
/// matches the leader's. With the default session timeout (1.5 s) the stopped broker is
/// also fenced, which is what removes it from the ISR first.
#[test]
fn stalled_follower_leaves_the_isr_and_rejoins_after_catching_up() {
    let _g = serial();
    stalled_follower(start_cluster(), "stall", 3, true);
}

/// The same with a 30 s session timeout: the stopped broker stays live (registered,
/// unfenced), so only the leader's `replica.lag.time.max.ms` check and AlterPartition can
/// take it out of the ISR.
#[test]
fn lagging_follower_leaves_the_isr_through_alter_partition() {
    let _g = serial();
    let cluster = Cluster::start_with(
        ClusterOpts::new(3)
            .set("replica.lag.time.max.ms", LAG_MAX_MS)
            .set("broker.session.timeout.ms", 30_000),
    );
    // One partition: a partition the stopped (but live) broker leads would stall producers.
    stalled_follower(cluster, "lag", 1, false);
}

fn stalled_follower(cluster: Cluster, topic: &str, partitions: i32, fenced: bool) {
    let t = Instant::now();
    create_rf3_topic(&cluster, topic, partitions, 2);
    let seed = 33;
    let config = idempotent_config(&cluster.bootstrap());
    let mut deliveries = produce_messages(&config, topic, seed, 0..3000);
    wait_in_sync(&cluster, topic, partitions);
    let view = views_of(&cluster, 0, topic).unwrap();
    let controller = controller_of(&cluster, 0);
    let leader = view[0].leader;
    // A follower of partition 0 that is not the active controller.
    let follower = view[0]
        .replicas
        .iter()
        .copied()
        .find(|&r| r != leader && r != controller)
        .unwrap();
    eprintln!(
        "[test] partition 0 leader node {leader}; stopping follower node {follower} (controller node {controller})"
    );
    let f = Cluster::index_of(follower);
    signal(&cluster, f, libc::SIGSTOP);
    let stopped = Instant::now();
    let rest = others(f);
    wait_views(
        &cluster,
        &rest,
        topic,
        &format!("node {follower} out of every ISR"),
        METADATA_DEADLINE,
        |v| {
            v.iter()
                .all(|p| p.leader >= 0 && p.leader != follower && !p.isr.contains(&follower))
        },
    );
    let out = stopped.elapsed();
    let listed = listed_brokers(&cluster.metadata_from(rest[0], Some(&[])));
    eprintln!(
        "[test] STALL: node {follower} out of the ISR {out:?} after SIGSTOP (replica.lag.time.max.ms {LAG_MAX_MS}); live brokers {listed:?}"
    );
    if !fenced {
        assert!(
            listed.contains(&follower),
            "node {follower} was fenced (session timeout 30 s): the ISR shrink was not the lag check's"
        );
    }
    deliveries.extend(produce_messages(&config, topic, seed, 3000..6000));
    signal(&cluster, f, libc::SIGCONT);
    let resumed = Instant::now();
    let all: Vec<usize> = (0..3).collect();
    wait_views(
        &cluster,
        &all,
        topic,
        &format!("node {follower} back in every ISR"),
        METADATA_DEADLINE,
        |v| v.iter().all(full_isr),
    );
    eprintln!(
        "[test] STALL: node {follower} back in the ISR {:?} after SIGCONT",
        resumed.elapsed()
    );
    wait_in_sync(&cluster, topic, partitions);
    verify_topic(&cluster.bootstrap(), topic, partitions, seed, &deliveries);
    eprintln!(
        "[test] stalled follower ({topic}): done in {:?}",
        t.elapsed()
    );
}

/// min.insync.replicas=3: with a broker down and the ISR shrunk, acks=all is refused with
/// NOT_ENOUGH_REPLICAS, acks=1 is accepted (and stays above the high watermark); once the
/// broker is back in the ISR acks=all succeeds again.
#[test]
fn acks_all_needs_min_insync_replicas() {
    let _g = serial();
    let t = Instant::now();
    let mut cluster = start_cluster();
    let topic = "mir3";
    create_rf3_topic(&cluster, topic, 1, 3);
    let view = views_of(&cluster, 0, topic).unwrap();
    let leader = view[0].leader;
    let l = Cluster::index_of(leader);
    let (err, base) = raw_produce(&cluster, l, topic, 0, batch_of("a", 10), -1);
    assert_eq!((err, base), (NONE, 0), "acks=-1 with the full ISR");
    let controller = controller_of(&cluster, 0);
    let follower = view[0]
        .replicas
        .iter()
        .copied()
        .filter(|&r| r != leader)
        .max_by_key(|&r| r != controller)
        .unwrap();
    let f = Cluster::index_of(follower);
    let killed = Instant::now();
    cluster.kill9(f);
    wait_views(
        &cluster,
        &others(f),
        topic,
        &format!("ISR without node {follower}"),
        METADATA_DEADLINE,
        |v| v[0].leader == leader && v[0].isr.len() == 2 && !v[0].isr.contains(&follower),
    );
    eprintln!(
        "[test] MIN-ISR: ISR shrank {:?} after kill -9 of node {follower}",
        killed.elapsed()
    );
    let (err, _) = raw_produce(&cluster, l, topic, 0, batch_of("b", 10), -1);
    assert_eq!(
        err, NOT_ENOUGH_REPLICAS,
        "acks=-1 with ISR 2 < min.insync.replicas 3"
    );
    let (err, base) = raw_produce(&cluster, l, topic, 0, batch_of("c", 10), 1);
    assert_eq!(
        (err, base),
        (NONE, 10),
        "acks=1 with ISR 2 < min.insync.replicas 3"
    );
    // The high watermark does not move while the ISR is below min.insync.replicas.
    std::thread::sleep(Duration::from_millis(500));
    let (err, hw, _) = cluster.raw(l).list_offset(topic, 0, -1);
    assert_eq!((err, hw), (NONE, 10), "HW while ISR < min.insync.replicas");
    let restarted = Instant::now();
    cluster.restart(f);
    let all: Vec<usize> = (0..3).collect();
    wait_views(
        &cluster,
        &all,
        topic,
        "full ISR again",
        METADATA_DEADLINE,
        |v| full_isr(&v[0]),
    );
    eprintln!(
        "[test] MIN-ISR: node {follower} back in the ISR {:?} after its restart",
        restarted.elapsed()
    );
    let (err, base) = raw_produce(&cluster, l, topic, 0, batch_of("d", 10), -1);
    assert_eq!((err, base), (NONE, 20), "acks=-1 with the full ISR again");
    let ends = wait_in_sync(&cluster, topic, 1);
    assert_eq!(ends, vec![30]);
    eprintln!("[test] min.insync.replicas: done in {:?}", t.elapsed());
}

/// An old leader with an unreplicated tail (acks=1 while both followers were stopped)
/// comes back after a new leader took over and wrote more: it truncates its tail and ends
/// up identical to the new leader, batch for batch.
#[test]
fn old_leader_truncates_its_unreplicated_tail() {
    let _g = serial();
    let t = Instant::now();
    // Why a long lag limit, and a partition not led by the active controller: the test
    // needs the ISR to still hold the followers when the old leader dies. With the default
    // 2 s lag limit the old leader proposes shrinking the ISR to itself while the followers
    // are stopped; if it is the active controller, it also appends FenceBroker for both.
    // Those proposals and entries wait in the stopped followers' sockets and commit once
    // they resume (Raft commits a dead leader's entries with the next term's first entry):
    // the ISR becomes [old leader] and the partition rightly waits for it, without
    // divergence. With a stopped controller nothing can be decided while the followers are
    // stopped.
    let mut cluster =
        Cluster::start_with(ClusterOpts::new(3).set("replica.lag.time.max.ms", 30_000));
    let topic = "diverge";
    create_rf3_topic(&cluster, topic, 3, 2);
    let controller = controller_of(&cluster, 0);
    let view = views_of(&cluster, 0, topic).unwrap();
    let p = (0..3)
        .find(|&p| view[p as usize].leader != controller)
        .expect("a partition led by a broker that is not the controller");
    let (leader, epoch) = (view[p as usize].leader, view[p as usize].leader_epoch);
    eprintln!(
        "[test] partition {p}: leader node {leader} epoch {epoch}; controller node {controller}"
    );
    let l = Cluster::index_of(leader);
    for k in 0..20 {
        let (err, base) = raw_produce(
            &cluster,
            l,
            topic,
            p,
            batch_of(&format!("common{k}"), 10),
            -1,
        );
        assert_eq!((err, base), (NONE, k * 10), "common prefix batch {k}");
    }
    assert_eq!(wait_in_sync(&cluster, topic, 3)[p as usize], 200);
    let followers = others(l);
    for &f in &followers {
        signal(&cluster, f, libc::SIGSTOP);
    }
    // A follower's fetch already waiting at the leader would carry the first tail batch into
    // the stopped follower's socket buffer (and it would append it after SIGCONT). Fetches
    // wait at most 500 ms: let them time out empty first.
    std::thread::sleep(Duration::from_secs(2));
    for k in 0..5 {
        let (err, base) = raw_produce(&cluster, l, topic, p, batch_of(&format!("tail{k}"), 10), 1);
        assert_eq!((err, base), (NONE, 200 + k * 10), "acks=1 tail batch {k}");
    }
    let tail = disk_log(&cluster, l, topic, p).unwrap();
    eprintln!("[test] old leader node {leader} log: {tail:?}");
    assert_eq!(
        tail.end, 250,
        "the unreplicated tail is on the old leader's disk"
    );
    let killed = Instant::now();
    cluster.kill9(l);
    for &f in &followers {
        signal(&cluster, f, libc::SIGCONT);
    }
    let after = wait_views(
        &cluster,
        &followers,
        topic,
        "a new leader among the followers",
        METADATA_DEADLINE,
        |v| v[p as usize].leader >= 0 && v[p as usize].leader != leader,
    );
    eprintln!(
        "[test] DIVERGE: new leader node {} epoch {} (was node {leader} epoch {epoch}) {:?} after the kill",
        after[p as usize].leader,
        after[p as usize].leader_epoch,
        killed.elapsed()
    );
    assert!(after[p as usize].leader_epoch > epoch);
    let nl = Cluster::index_of(after[p as usize].leader);
    for k in 0..10 {
        let start = Instant::now();
        let (err, base) = loop {
            let (err, base) =
                raw_produce(&cluster, nl, topic, p, batch_of(&format!("new{k}"), 10), -1);
            // Refused before any append: safe to retry.
            if (err == NOT_LEADER_OR_FOLLOWER || err == NOT_ENOUGH_REPLICAS)
                && start.elapsed() < METADATA_DEADLINE
            {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            break (err, base);
        };
        assert_eq!(
            (err, base),
            (NONE, 200 + k * 10),
            "acks=-1 batch {k} to the new leader"
        );
    }
    let restarted = Instant::now();
    cluster.restart(l);
    let ends = wait_in_sync(&cluster, topic, 3);
    eprintln!(
        "[test] DIVERGE: old leader in sync {:?} after its restart",
        restarted.elapsed()
    );
    assert_eq!(ends[p as usize], 300);
    let log = disk_log(&cluster, l, topic, p).unwrap();
    eprintln!("[test] old leader node {leader} log now: {log:?}");
    // Read back: the common prefix, then the new leader's batches; no trace of the tail.
    let mut tags = Vec::new();
    consume_ranges(&cluster.bootstrap(), topic, &[(p, 0, 300)], |m| {
        tags.push(String::from_utf8(m.key.unwrap()).unwrap());
    });
    let expected: Vec<String> = (0..20)
        .map(|k| format!("common{k}"))
        .chain((0..10).map(|k| format!("new{k}")))
        .flat_map(|tag| (0..10).map(move |i| format!("{tag}-{i}")))
        .collect();
    assert_eq!(tags, expected, "consumed keys");
    eprintln!("[test] divergence: done in {:?}", t.elapsed());
}

/// Rounds of kill -9 of a broker (the active controller every third round, else a random
/// one) and its restart, under idempotent acks=all load; afterwards every acknowledged
/// message is there, in order. `CORELOG_CHAOS_ROUNDS` (default 10) sets the rounds,
/// `CORELOG_CHAOS_SEED` the seed.
#[test]
fn chaos_kill_restart_loses_no_acknowledged_message() {
    let _g = serial();
    let t = Instant::now();
    let rounds: usize = std::env::var("CORELOG_CHAOS_ROUNDS")
        .ok()
        .map(|s| s.parse().expect("CORELOG_CHAOS_ROUNDS"))
        .unwrap_or(10);
    let seed: u64 = std::env::var("CORELOG_CHAOS_SEED")
        .ok()
        .map(|s| s.parse().expect("CORELOG_CHAOS_SEED"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("[test] CHAOS: {rounds} rounds, seed {seed} (CORELOG_CHAOS_SEED={seed} replays it)");
    let mut rng = seed;
    let mut cluster = start_cluster();
    let topic = "chaos";
    let partitions = 3;
    create_rf3_topic(&cluster, topic, partitions, 2);
    let load = Load::start(cluster.bootstrap(), topic, partitions, seed, 500);
    load.wait_more(500, "500 acknowledged before the first round");
    // (round, victim node, was controller, kill time, partitions it led, metadata failover)
    let mut kills: Vec<(usize, i32, bool, Instant, Vec<i32>, Duration)> = Vec::new();
    for round in 0..rounds {
        let controller = controller_of(&cluster, 0);
        let victim = if round % 3 == 0 {
            Cluster::index_of(controller)
        } else {
            (splitmix64(&mut rng) % 3) as usize
        };
        let node = Cluster::node_id(victim);
        let view = views_of(&cluster, victim, topic).unwrap();
        let led: Vec<i32> = (0..partitions)
            .filter(|&p| view[p as usize].leader == node)
            .collect();
        let killed = Instant::now();
        cluster.kill9(victim);
        wait_views(
            &cluster,
            &others(victim),
            topic,
            &format!("round {round}: leaders and ISRs without node {node}"),
            METADATA_DEADLINE,
            |v| {
                v.iter()
                    .all(|p| p.leader >= 0 && p.leader != node && !p.isr.contains(&node))
            },
        );
        let failover = killed.elapsed();
        eprintln!(
            "[test] CHAOS round {round}: kill -9 node {node} (controller: {}, led {led:?}); new leaders, out of ISRs after {failover:?}",
            node == controller
        );
        kills.push((round, node, node == controller, killed, led, failover));
        std::thread::sleep(Duration::from_millis(splitmix64(&mut rng) % 1500));
        let restarted = Instant::now();
        cluster.restart(victim);
        let all: Vec<usize> = (0..3).collect();
        wait_views(
            &cluster,
            &all,
            topic,
            &format!("round {round}: node {node} back in every ISR"),
            METADATA_DEADLINE,
            |v| v.iter().all(full_isr),
        );
        eprintln!(
            "[test] CHAOS round {round}: node {node} restarted and back in every ISR after {:?}; {} acknowledged so far",
            restarted.elapsed(),
            load.delivered_ok()
        );
        load.check_running();
    }
    load.wait_more(500, "500 more acknowledged after the last round");
    let reports = load.finish();
    let mut md_times = Vec::new();
    let mut delivery_times = Vec::new();
    for (round, node, was_controller, killed, led, failover) in &kills {
        let firsts: Vec<Option<Duration>> = led
            .iter()
            .map(|&p| {
                reports
                    .iter()
                    .filter(|r| {
                        r.at > *killed + IN_FLIGHT_REPORTS
                            && matches!(r.result, Ok((q, _)) if q == p)
                    })
                    .map(|r| r.at - *killed)
                    .min()
            })
            .collect();
        let delivery = firsts
            .iter()
            .copied()
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().max());
        eprintln!(
            "[test] CHAOS round {round}: node {node}{} metadata failover {failover:?}, first acks=all delivery on every partition it led: {delivery:?}",
            if *was_controller { " (controller)" } else { "" }
        );
        md_times.push(*failover);
        if let Some(d) = delivery {
            delivery_times.push(d);
        }
    }
    eprintln!("[test] CHAOS {}", summary("metadata failover", md_times));
    eprintln!(
        "[test] CHAOS {}",
        summary(
            "delivery failover (rounds where the victim led a partition)",
            delivery_times
        )
    );
    wait_in_sync(&cluster, topic, partitions);
    verify_acknowledged(&cluster, topic, partitions, seed, &reports);
    eprintln!(
        "[test] chaos ({rounds} rounds, seed {seed}): done in {:?}",
        t.elapsed()
    );
}
