//! The producer: one generator thread (rate control, partitioning,
//! batching, linger, retries) feeding per-connection writer threads, each
//! paired with a reader thread that matches pipelined Produce responses.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use bytes::Bytes;
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::produce_response::ProduceResponse;
use kafka_protocol::messages::{ApiKey, TopicName};
use kafka_protocol::protocol::StrBytes;
use rand::{Rng, RngCore};

use crate::cpu::{self, BrokerCpu};
use crate::partitioner::{DefaultPartitioner, Partitioner, RoundRobinPartitioner};
use crate::records::{BatchBuilder, stamp_value};
use crate::stats::Stats;
use crate::{KeyMode, PartitionerKind, ProduceOpts};
use corelog::client::{
    self, Client, ClusterMeta, NewTopic, encode_request, is_retriable_leader_error,
};
use kafka_protocol::ResponseError;

/// A sealed batch for one partition.
struct Batch {
    partition: i32,
    data: Bytes,
    value_bytes: u64,
    /// Generation time of every message (µs since `Stats::start`).
    gen_us: Vec<u64>,
    attempts: u32,
}

struct InFlight {
    correlation_id: i32,
    batches: Vec<Batch>,
}

/// Counting semaphore for --max-in-flight.
struct Slots {
    used: Mutex<usize>,
    cv: Condvar,
}

impl Slots {
    fn acquire(&self, max: usize, dead: &AtomicBool) -> bool {
        let mut g = self.used.lock().unwrap();
        while *g >= max {
            if dead.load(Ordering::Relaxed) {
                return false;
            }
            g = self
                .cv
                .wait_timeout(g, Duration::from_millis(100))
                .unwrap()
                .0;
        }
        *g += 1;
        true
    }
    fn release(&self) {
        let mut g = self.used.lock().unwrap();
        *g = g.saturating_sub(1);
        self.cv.notify_all();
    }
}

/// State shared by generator, writers and readers.
struct Shared {
    stats: Arc<Stats>,
    topic: TopicName,
    acks: i16,
    timeout_ms: i32,
    version: i16,
    max_in_flight: usize,
    max_request_bytes: usize,
    max_retries: u32,
    /// Batches dispatched but not yet resolved (acked or failed).
    outstanding: AtomicI64,
}

impl Shared {
    fn fail(&self, b: &Batch) {
        self.stats.failed(b.gen_us.len() as u64);
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

struct ConnHandle {
    tx: Option<SyncSender<Batch>>,
    sock: TcpStream,
    dead: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn spawn_conn(
    addr: &str,
    shared: &Arc<Shared>,
    retry_tx: &Sender<Batch>,
    queue: usize,
) -> Result<ConnHandle> {
    let stream = client::connect(addr)?;
    let read_stream = stream.try_clone()?;
    let sock = stream.try_clone()?;
    let (tx, rx) = mpsc::sync_channel::<Batch>(queue);
    let dead = Arc::new(AtomicBool::new(false));
    let slots = Arc::new(Slots {
        used: Mutex::new(0),
        cv: Condvar::new(),
    });
    let mut threads = Vec::new();
    let (if_tx, if_rx) = mpsc::channel::<InFlight>();
    if shared.acks != 0 {
        let (sh, d, sl, rt) = (
            Arc::clone(shared),
            Arc::clone(&dead),
            Arc::clone(&slots),
            retry_tx.clone(),
        );
        threads.push(std::thread::spawn(move || {
            reader(read_stream, if_rx, &sh, &d, &sl, &rt)
        }));
    } else {
        drop(if_rx);
    }
    let (sh, d) = (Arc::clone(shared), Arc::clone(&dead));
    threads.push(std::thread::spawn(move || {
        writer(stream, rx, if_tx, &sh, &d, &slots)
    }));
    Ok(ConnHandle {
        tx: Some(tx),
        sock,
        dead,
        threads,
    })
}

fn writer(
    mut stream: TcpStream,
    rx: Receiver<Batch>,
    if_tx: Sender<InFlight>,
    sh: &Shared,
    dead: &AtomicBool,
    slots: &Slots,
) {
    let mut pending: Option<Batch> = None;
    let mut corr: i32 = 0;
    loop {
        let first = match pending.take() {
            Some(b) => b,
            None => match rx.recv() {
                Ok(b) => b,
                Err(_) => break,
            },
        };
        if dead.load(Ordering::Relaxed) || (sh.acks != 0 && !slots.acquire(sh.max_in_flight, dead))
        {
            sh.stats.error("connection_dead".into());
            sh.fail(&first);
            continue;
        }
        // Take everything else that is ready, one batch per partition.
        let mut size = first.data.len();
        let mut batches = vec![first];
        while size < sh.max_request_bytes {
            match rx.try_recv() {
                Ok(b) => {
                    if size + b.data.len() > sh.max_request_bytes
                        || batches.iter().any(|x| x.partition == b.partition)
                    {
                        pending = Some(b);
                        break;
                    }
                    size += b.data.len();
                    batches.push(b);
                }
                Err(_) => break,
            }
        }
        corr = corr.wrapping_add(1);
        let req = ProduceRequest::default()
            .with_acks(sh.acks)
            .with_timeout_ms(sh.timeout_ms)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(sh.topic.clone())
                    .with_partition_data(
                        batches
                            .iter()
                            .map(|b| {
                                PartitionProduceData::default()
                                    .with_index(b.partition)
                                    .with_records(Some(b.data.clone()))
                            })
                            .collect(),
                    ),
            ]);
        let sent = encode_request(ApiKey::Produce, sh.version, corr, &req)
            .and_then(|frame| Ok(stream.write_all(&frame)?));
        if let Err(e) = sent {
            if !dead.swap(true, Ordering::Relaxed) {
                eprintln!("produce connection error: {e:#}");
            }
            sh.stats.error("io".into());
            for b in &batches {
                sh.fail(b);
            }
            if sh.acks != 0 {
                slots.release();
            }
            continue;
        }
        if sh.acks == 0 {
            for b in &batches {
                sh.stats.record_ok(b.gen_us.len() as u64, b.value_bytes);
                sh.outstanding.fetch_sub(1, Ordering::Relaxed);
            }
        } else {
            let _ = if_tx.send(InFlight {
                correlation_id: corr,
                batches,
            });
        }
    }
    let _ = stream.flush();
}

fn reader(
    mut stream: TcpStream,
    rx: Receiver<InFlight>,
    sh: &Shared,
    dead: &AtomicBool,
    slots: &Slots,
    retry_tx: &Sender<Batch>,
) {
    while let Ok(inflight) = rx.recv() {
        if dead.load(Ordering::Relaxed) {
            for b in &inflight.batches {
                sh.fail(b);
            }
            slots.release();
            continue;
        }
        let resp = client::read_frame(&mut stream).and_then(|f| {
            client::decode_response::<ProduceResponse>(ApiKey::Produce, sh.version, f)
        });
        let now = sh.stats.now_us();
        match resp {
            Err(e) => {
                if !dead.swap(true, Ordering::Relaxed) {
                    eprintln!("produce connection error: {e:#}");
                }
                sh.stats.error("io".into());
                for b in &inflight.batches {
                    sh.fail(b);
                }
            }
            Ok((corr, resp)) => {
                if corr != inflight.correlation_id {
                    sh.stats.error("correlation_mismatch".into());
                }
                let mut results: HashMap<i32, i16> = HashMap::new();
                for t in &resp.responses {
                    for p in &t.partition_responses {
                        results.insert(p.index, p.error_code);
                    }
                }
                for mut b in inflight.batches {
                    match results.get(&b.partition) {
                        Some(0) => {
                            sh.stats.record_ok(b.gen_us.len() as u64, b.value_bytes);
                            sh.stats
                                .record_latencies(b.gen_us.iter().map(|&g| now.saturating_sub(g)));
                            sh.outstanding.fetch_sub(1, Ordering::Relaxed);
                        }
                        Some(&code) => {
                            sh.stats.kafka_error(code);
                            if is_retriable_leader_error(code) && b.attempts < sh.max_retries {
                                b.attempts += 1;
                                if let Err(e) = retry_tx.send(b) {
                                    // Generator gone; nothing can retry.
                                    sh.fail(&e.0);
                                }
                            } else {
                                if is_retriable_leader_error(code) {
                                    sh.stats.error("retries_exhausted".into());
                                }
                                sh.fail(&b);
                            }
                        }
                        None => {
                            sh.stats.error("missing_partition_in_response".into());
                            sh.fail(&b);
                        }
                    }
                }
            }
        }
        slots.release();
    }
}

/// Per-partition batch under construction.
struct Open {
    builder: BatchBuilder,
    gen_us: Vec<u64>,
    value_bytes: u64,
    created: Instant,
}

struct Generator {
    shared: Arc<Shared>,
    retry_tx: Sender<Batch>,
    client: Client,
    topic: String,
    connections: usize,
    queue: usize,
    /// Partition ids in use (slot -> partition id).
    partitions: Vec<i32>,
    meta: ClusterMeta,
    conns: HashMap<(i32, usize), ConnHandle>,
    last_refresh: Instant,
}

impl Generator {
    fn dispatch(&mut self, b: Batch) {
        if b.attempts == 0 {
            self.shared.outstanding.fetch_add(1, Ordering::Relaxed);
        }
        let Some((leader, addr)) = self.meta.leader_addr(b.partition) else {
            self.shared.stats.error("no_leader".into());
            self.shared.fail(&b);
            return;
        };
        let key = (leader, b.partition as usize % self.connections);
        let usable = self
            .conns
            .get(&key)
            .is_some_and(|c| !c.dead.load(Ordering::Relaxed));
        if !usable {
            if let Some(old) = self.conns.remove(&key) {
                close(old);
            }
            match spawn_conn(&addr, &self.shared, &self.retry_tx, self.queue) {
                Ok(c) => {
                    self.conns.insert(key, c);
                }
                Err(e) => {
                    eprintln!("cannot connect to broker {leader} at {addr}: {e:#}");
                    self.shared.stats.error("connect".into());
                    self.shared.fail(&b);
                    return;
                }
            }
        }
        let tx = self.conns[&key].tx.as_ref().unwrap();
        if let Err(e) = tx.send(b) {
            self.shared.stats.error("connection_dead".into());
            self.shared.fail(&e.0);
        }
    }

    /// Resends the retried batches whose backoff is over, after a metadata
    /// refresh (leaders may have moved).
    fn resend_due(&mut self, delayed: &mut Vec<(Instant, Batch)>, now: Instant) {
        if !delayed.iter().any(|(t, _)| *t <= now) {
            return;
        }
        self.refresh_metadata();
        let (due, rest): (Vec<_>, Vec<_>) = delayed.drain(..).partition(|(t, _)| *t <= now);
        *delayed = rest;
        for (_, b) in due {
            self.dispatch(b);
        }
    }

    fn refresh_metadata(&mut self) {
        if self.last_refresh.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last_refresh = Instant::now();
        match self.client.metadata(&self.topic) {
            Ok(m) if !m.partitions.is_empty() => self.meta = m,
            Ok(_) => self.shared.stats.error("metadata_empty".into()),
            Err(e) => {
                eprintln!("metadata refresh failed: {e:#}");
                self.shared.stats.error("metadata".into());
            }
        }
    }
}

fn close(c: ConnHandle) {
    if c.dead.load(Ordering::Relaxed) {
        let _ = c.sock.shutdown(std::net::Shutdown::Both);
    }
    drop(c.tx);
    for t in c.threads {
        let _ = t.join();
    }
}

pub fn run(o: &ProduceOpts) -> Result<Arc<Stats>> {
    if o.message_size == 0 && matches!(o.keys, KeyMode::None) {
        eprintln!("note: --message-size 0: no latency stamp in values");
    }
    let mut client = Client::bootstrap(&o.common.bootstrap_server)?;
    if let Some(n) = o.create_partitions {
        let new = NewTopic::new(&o.common.topic, n, o.replication_factor);
        match client.create_topic(&new) {
            Ok(_) => eprintln!("created topic {} with {n} partitions", o.common.topic),
            Err(e) if e.kafka() == Some(ResponseError::TopicAlreadyExists) => {
                eprintln!("topic {} already exists", o.common.topic)
            }
            Err(e) => bail!("CreateTopics failed: {e}"),
        }
    }
    let meta = client.wait_for_topic(&o.common.topic, Duration::from_secs(15))?;
    let all: Vec<i32> = meta.partitions.iter().map(|p| p.index).collect();
    let partitions: Vec<i32> = match o.partitions_used.as_str() {
        "all" => all,
        n => {
            let n: usize = n
                .parse()
                .map_err(|_| anyhow::anyhow!("--partitions-used must be 'all' or a number"))?;
            if n == 0 || n > all.len() {
                bail!("--partitions-used {n}: topic has {} partitions", all.len());
            }
            all[..n].to_vec()
        }
    };
    let version = client.versions.pick(ApiKey::Produce, 3, 9)?;
    eprintln!(
        "producing to {} ({} partitions used, {} brokers), Produce v{version}, acks={}",
        o.common.topic,
        partitions.len(),
        meta.brokers.len(),
        o.acks
    );

    let broker_cpu = BrokerCpu::start(&o.common.broker_pids)?;
    let stats = Stats::new();
    let shared = Arc::new(Shared {
        stats: Arc::clone(&stats),
        topic: TopicName(StrBytes::from_string(o.common.topic.clone())),
        acks: o.acks,
        timeout_ms: o.request_timeout_ms,
        version,
        max_in_flight: o.max_in_flight.max(1),
        max_request_bytes: o.max_request_bytes.max(o.batch_bytes + 1024),
        max_retries: o.retries,
        outstanding: AtomicI64::new(0),
    });
    let (retry_tx, retry_rx) = mpsc::channel::<Batch>();
    let mut g = Generator {
        shared: Arc::clone(&shared),
        retry_tx,
        client,
        topic: o.common.topic.clone(),
        connections: o.connections.max(1),
        queue: o.max_in_flight.max(1) * 4,
        partitions,
        meta,
        conns: HashMap::new(),
        last_refresh: Instant::now(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let progress = stats.spawn_progress(Arc::clone(&stop));

    let mut partitioner: Box<dyn Partitioner> = match o.partitioner {
        PartitionerKind::Default => Box::new(DefaultPartitioner::new()),
        PartitionerKind::RoundRobin => Box::new(RoundRobinPartitioner::new()),
    };
    let n = g.partitions.len();
    let mut open: Vec<Option<Open>> = (0..n).map(|_| None).collect();
    let mut rng = rand::thread_rng();
    let mut value = vec![0u8; o.message_size];
    rng.fill_bytes(&mut value);
    let unix_start_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
        - stats.now_us();
    let linger = Duration::from_millis(o.linger_ms);
    let deadline = o
        .common
        .duration_secs
        .map(|s| stats.start + Duration::from_secs(s));
    let count = o.common.count;
    let batch_bytes = o.batch_bytes.max(1);
    let mut delayed: Vec<(Instant, Batch)> = Vec::new();
    let mut generated: u64 = 0;
    let mut last_linger_check = Instant::now();
    let mut key_buf = String::new();

    let seal = |open: &mut Vec<Option<Open>>,
                slot: usize,
                partitions: &[i32],
                partitioner: &mut dyn Partitioner|
     -> Option<Batch> {
        let ob = open[slot].take()?;
        partitioner.batch_sealed(slot, partitions.len());
        Some(Batch {
            partition: partitions[slot],
            data: Bytes::from(ob.builder.finish()),
            value_bytes: ob.value_bytes,
            gen_us: ob.gen_us,
            attempts: 0,
        })
    };

    loop {
        // Stop conditions.
        if count.is_some_and(|c| generated >= c) {
            break;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        // Retries: after a 100 ms backoff, refresh metadata and resend.
        while let Ok(b) = retry_rx.try_recv() {
            delayed.push((now + Duration::from_millis(100), b));
        }
        g.resend_due(&mut delayed, now);
        // Linger.
        if now.duration_since(last_linger_check)
            >= Duration::from_millis(1).min(linger.max(Duration::from_micros(200)))
        {
            last_linger_check = now;
            for slot in 0..n {
                if open[slot]
                    .as_ref()
                    .is_some_and(|ob| now.duration_since(ob.created) >= linger)
                    && let Some(b) = seal(&mut open, slot, &g.partitions, partitioner.as_mut())
                {
                    g.dispatch(b);
                }
            }
        }
        // Rate control: the message's generation time is its scheduled
        // time, so a stall is charged to latency (no coordinated omission).
        let gen_us = match o.rate {
            Some(r) if r > 0.0 => {
                let sched = (generated as f64 * 1e6 / r) as u64;
                let now_us = stats.now_us();
                if sched > now_us {
                    std::thread::sleep(Duration::from_micros((sched - now_us).min(1000)));
                    continue;
                }
                sched
            }
            _ => stats.now_us(),
        };
        // Key.
        let key: Option<&[u8]> = match o.keys {
            KeyMode::None => None,
            KeyMode::Seq => {
                key_buf.clear();
                use std::fmt::Write as _;
                let _ = write!(key_buf, "{generated}");
                Some(key_buf.as_bytes())
            }
            KeyMode::Random => {
                key_buf.clear();
                use std::fmt::Write as _;
                let _ = write!(key_buf, "{}", rng.r#gen::<u32>());
                Some(key_buf.as_bytes())
            }
        };
        let unix_us = unix_start_us + gen_us;
        let ts_ms = (unix_us / 1000) as i64;
        stamp_value(&mut value, unix_us);
        let mut slot = partitioner.partition(key, n);
        let full = open[slot].as_ref().is_some_and(|ob| {
            ob.builder.count() > 0
                && ob.builder.len() + ob.builder.record_size(ts_ms, key, value.len()) > batch_bytes
        });
        if full {
            if let Some(b) = seal(&mut open, slot, &g.partitions, partitioner.as_mut()) {
                g.dispatch(b);
            }
            if partitioner.repartition_when_full(key) {
                slot = partitioner.partition(key, n);
            }
        }
        let ob = open[slot].get_or_insert_with(|| Open {
            builder: BatchBuilder::new(batch_bytes.min(1 << 20) + 128),
            gen_us: Vec::new(),
            value_bytes: 0,
            created: Instant::now(),
        });
        ob.builder.append(ts_ms, key, &value);
        ob.gen_us.push(gen_us);
        ob.value_bytes += value.len() as u64;
        generated += 1;
        if ob.builder.len() >= batch_bytes
            && let Some(b) = seal(&mut open, slot, &g.partitions, partitioner.as_mut())
        {
            g.dispatch(b);
        }
    }
    // Flush what is left, then wait (bounded) for outstanding batches,
    // still serving retries.
    for slot in 0..n {
        if let Some(b) = seal(&mut open, slot, &g.partitions, partitioner.as_mut()) {
            g.dispatch(b);
        }
    }
    let drain_deadline = Instant::now() + Duration::from_secs(o.drain_timeout_secs);
    while shared.outstanding.load(Ordering::Relaxed) > 0 && Instant::now() < drain_deadline {
        if let Ok(b) = retry_rx.recv_timeout(Duration::from_millis(10)) {
            delayed.push((Instant::now() + Duration::from_millis(100), b));
        }
        g.resend_due(&mut delayed, Instant::now());
    }
    let elapsed = stats.start.elapsed();
    if let Some(secs) = cpu::report_seconds(broker_cpu.as_ref()) {
        stats.set_broker_cpu_s(secs);
    }
    let left = shared.outstanding.load(Ordering::Relaxed);
    if left > 0 {
        eprintln!("gave up waiting for {left} outstanding batches");
        stats.error("drain_timeout".into());
    }
    for (_, b) in &delayed {
        shared.fail(b);
    }
    // Closing the sockets ends blocked readers.
    for (_, c) in g.conns.drain() {
        if left > 0 {
            c.dead.store(true, Ordering::Relaxed);
        }
        close(c);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = progress.join();
    eprintln!("generated {generated} messages");
    stats.report("produce", elapsed, o.common.json);
    Ok(stats)
}
