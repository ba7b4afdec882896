//! The consumer: one fetch thread per partition leader, reading every
//! partition from earliest (or latest), measuring throughput and
//! end-to-end latency.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::fetch_response::FetchResponse;
use kafka_protocol::messages::{ApiKey, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::cpu::{self, BrokerCpu};
use crate::records::{for_each_batch, for_each_record, read_stamp};
use crate::stats::Stats;
use crate::{ConsumeOpts, StartFrom};
use corelog::client::{Client, Conn, Versions, list_offsets};

struct Shared {
    stats: Arc<Stats>,
    stop: AtomicBool,
    /// µs since stats.start of the last received message.
    last_data_us: AtomicU64,
    topic: String,
    versions: Versions,
    fetch_version: i16,
    max_wait_ms: i32,
    fetch_max_bytes: i32,
    partition_max_bytes: i32,
    start_ts: i64,
    count: Option<u64>,
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

pub fn run(o: &ConsumeOpts) -> Result<Arc<Stats>> {
    let mut client = Client::bootstrap(&o.common.bootstrap_server)?;
    let meta = client.wait_for_topic(&o.common.topic, Duration::from_secs(15))?;
    let fetch_version = client.versions.pick(ApiKey::Fetch, 4, 12)?;
    let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for p in &meta.partitions {
        by_leader.entry(p.leader).or_default().push(p.index);
    }
    eprintln!(
        "consuming {} ({} partitions on {} leaders) from {:?}, Fetch v{fetch_version}",
        o.common.topic,
        meta.partitions.len(),
        by_leader.len(),
        o.from
    );
    let broker_cpu = BrokerCpu::start(&o.common.broker_pids)?;
    let stats = Stats::new();
    let shared = Arc::new(Shared {
        stats: Arc::clone(&stats),
        stop: AtomicBool::new(false),
        last_data_us: AtomicU64::new(0),
        topic: o.common.topic.clone(),
        versions: client.versions.clone(),
        fetch_version,
        max_wait_ms: o.max_wait_ms,
        fetch_max_bytes: o.fetch_max_bytes,
        partition_max_bytes: o.partition_max_bytes,
        start_ts: match o.from {
            StartFrom::Earliest => -2,
            StartFrom::Latest => -1,
        },
        count: o.common.count,
    });
    let progress_stop = Arc::new(AtomicBool::new(false));
    let progress = stats.spawn_progress(Arc::clone(&progress_stop));
    let mut threads = Vec::new();
    for (leader, parts) in by_leader {
        let Some(addr) = meta.brokers.get(&leader).cloned() else {
            bail!("no address for leader {leader}");
        };
        let sh = Arc::clone(&shared);
        threads.push(std::thread::spawn(move || {
            if let Err(e) = fetch_loop(&sh, &addr, &parts) {
                eprintln!("fetcher for broker {leader} ({addr}) stopped: {e:#}");
                sh.stats.error("io".into());
            }
        }));
    }
    let deadline = o
        .common
        .duration_secs
        .map(|s| stats.start + Duration::from_secs(s));
    let idle = Duration::from_secs(o.idle_timeout_secs);
    loop {
        std::thread::sleep(Duration::from_millis(10));
        let now = Instant::now();
        if shared.stop.load(Ordering::Relaxed)
            || deadline.is_some_and(|d| now >= d)
            || threads.iter().all(|t| t.is_finished())
        {
            break;
        }
        let last = Duration::from_micros(shared.last_data_us.load(Ordering::Relaxed));
        if stats.start.elapsed().saturating_sub(last) >= idle {
            eprintln!("no data for {} s, stopping", idle.as_secs());
            break;
        }
    }
    let elapsed = stats.start.elapsed();
    if let Some(secs) = cpu::report_seconds(broker_cpu.as_ref()) {
        stats.set_broker_cpu_s(secs);
    }
    shared.stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    progress_stop.store(true, Ordering::Relaxed);
    let _ = progress.join();
    stats.report("consume", elapsed, o.common.json);
    Ok(stats)
}

fn fetch_loop(sh: &Shared, addr: &str, parts: &[i32]) -> Result<()> {
    let mut conn = Conn::connect(addr)?;
    let mut offsets: HashMap<i32, i64> = HashMap::new();
    for (p, err, off) in list_offsets(&mut conn, &sh.versions, &sh.topic, parts, sh.start_ts)? {
        if err != 0 {
            sh.stats.kafka_error(err);
            bail!("ListOffsets for partition {p} failed with error {err}");
        }
        offsets.insert(p, off);
    }
    let topic = TopicName(StrBytes::from_string(sh.topic.clone()));
    while !sh.stop.load(Ordering::Relaxed) {
        let mut ps: Vec<i32> = offsets.keys().copied().collect();
        ps.sort_unstable();
        let req = FetchRequest::default()
            .with_replica_id((-1).into())
            .with_max_wait_ms(sh.max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(sh.fetch_max_bytes)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(topic.clone())
                    .with_partitions(
                        ps.iter()
                            .map(|p| {
                                FetchPartition::default()
                                    .with_partition(*p)
                                    .with_fetch_offset(offsets[p])
                                    .with_partition_max_bytes(sh.partition_max_bytes)
                            })
                            .collect(),
                    ),
            ]);
        let resp: FetchResponse = conn.call(ApiKey::Fetch, sh.fetch_version, &req)?;
        if resp.error_code != 0 {
            sh.stats.kafka_error(resp.error_code);
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        for t in &resp.responses {
            for p in &t.partitions {
                let pi = p.partition_index;
                if p.error_code != 0 {
                    sh.stats.kafka_error(p.error_code);
                    if p.error_code == 1 {
                        // OFFSET_OUT_OF_RANGE: restart from earliest.
                        if let Ok(v) = list_offsets(&mut conn, &sh.versions, &sh.topic, &[pi], -2)
                            && let Some((_, 0, off)) = v.first()
                        {
                            offsets.insert(pi, *off);
                        }
                    } else {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    continue;
                }
                let Some(records) = &p.records else { continue };
                let Some(&cur) = offsets.get(&pi) else {
                    continue;
                };
                let (next, msgs) = consume_records(sh, records, cur);
                offsets.insert(pi, next);
                if msgs > 0 {
                    sh.last_data_us.store(sh.stats.now_us(), Ordering::Relaxed);
                }
            }
        }
        if sh.count.is_some_and(|c| sh.stats.msgs() >= c) {
            sh.stop.store(true, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Accounts the records of one partition's fetch data; returns the next
/// fetch offset and the number of messages counted.
fn consume_records(sh: &Shared, records: &[u8], mut next: i64) -> (i64, u64) {
    let now_us = unix_us();
    let mut total = 0u64;
    let res = for_each_batch(records, |h, recs| {
        if h.next_offset() <= next {
            return; // already seen (fetch may start mid-batch)
        }
        let first_wanted = next;
        next = h.next_offset();
        if !h.crc_ok {
            sh.stats.error("crc_mismatch".into());
        }
        if h.is_control() {
            return;
        }
        if h.compression() != 0 {
            // Compressed: count only (no decompression here).
            let n = h.record_count.max(0) as u64;
            sh.stats.record_ok(n, 0);
            total += n;
            return;
        }
        let mut lats = Vec::with_capacity(h.record_count.max(0) as usize);
        let mut bytes = 0u64;
        let r = for_each_record(recs, h.record_count, |r| {
            if h.base_offset + r.offset_delta < first_wanted {
                return;
            }
            let len = r.value.map_or(0, |v| v.len());
            bytes += len as u64;
            let sent_us = match r.value.and_then(read_stamp) {
                Some(us) => us,
                None => ((h.base_timestamp + r.timestamp_delta).max(0) as u64) * 1000,
            };
            lats.push(now_us.saturating_sub(sent_us));
        });
        if r.is_err() {
            sh.stats.error("corrupt_record".into());
        }
        sh.stats.record_ok(lats.len() as u64, bytes);
        sh.stats.record_latencies(lats.iter().copied());
        total += lats.len() as u64;
    });
    if res.is_err() {
        sh.stats.error("corrupt_batch".into());
    }
    (next, total)
}
