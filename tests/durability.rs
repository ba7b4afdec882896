//! Durability: data acknowledged by corelog survives clean shutdowns, kill -9 and restarts.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use rdkafka::producer::{BaseProducer, Producer};

#[test]
fn clean_shutdown_and_restart_keeps_data() {
    let mut broker = Broker::start(BrokerOpts::new());
    let bs = broker.bootstrap();
    let topic = "sigterm";
    create_topic(&bs, topic, 4);
    let deliveries = produce_messages(&producer_config(&bs, "all"), topic, 21, 0..20_000);
    verify_topic(&bs, topic, 4, 21, &deliveries);

    let status = broker.terminate();
    assert!(
        status.success(),
        "SIGTERM must shut down cleanly with exit 0, got {status}; log:\n{}",
        broker.log_tail(40)
    );
    broker.restart();
    wait_topic_ready(&bs, topic, 4);
    let n = verify_topic(&bs, topic, 4, 21, &deliveries);
    assert_eq!(n, 20_000);

    // Appends continue after the restored end.
    let more = produce_messages(&producer_config(&bs, "all"), topic, 21, 20_000..21_000);
    let mut all = deliveries.clone();
    all.extend_from_slice(&more);
    verify_topic(&bs, topic, 4, 21, &all);

    // Second clean cycle, with SIGINT this time.
    let status = broker.stop_with(libc::SIGINT);
    assert!(
        status.success(),
        "SIGINT must shut down cleanly with exit 0, got {status}"
    );
    broker.restart();
    wait_topic_ready(&bs, topic, 4);
    verify_topic(&bs, topic, 4, 21, &all);
}

#[test]
fn kill9_during_acks_all_production_loses_no_acknowledged_message() {
    let mut broker = Broker::start(BrokerOpts::new());
    let bs = broker.bootstrap();
    let topic = "kill9";
    let partitions = 4;
    create_topic(&bs, topic, partitions);
    let seed = 31u64;

    let rec = Recorder::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut cfg = producer_config(&bs, "all");
    cfg.set("message.timeout.ms", "8000")
        .set("request.timeout.ms", "5000")
        .set("linger.ms", "1")
        .set("reconnect.backoff.max.ms", "1000");
    let producer_thread = {
        let rec = rec.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let p: BaseProducer<Recorder> = cfg.create_with_context(rec).unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (k, v) = message(seed, i);
                send_blocking(&p, topic, i as usize, &k, &v);
                i += 1;
                if i.is_multiple_of(64) {
                    p.poll(Duration::ZERO);
                }
                // Keep a bounded number in flight so the kill lands mid-stream.
                if i.is_multiple_of(512) {
                    p.poll(Duration::from_millis(1));
                }
            }
            // Let outstanding messages complete or time out (message.timeout.ms).
            let _ = p.flush(Duration::from_secs(60));
            i
        })
    };
    wait_for(
        "5000 acknowledged messages",
        Duration::from_secs(180),
        Duration::from_millis(10),
        || {
            let d = rec.deliveries.lock().unwrap();
            (d.iter().filter(|x| x.1.is_ok()).count() >= 5000).then_some(())
        },
    );
    broker.kill9();
    let acked_at_kill = rec
        .deliveries
        .lock()
        .unwrap()
        .iter()
        .filter(|x| x.1.is_ok())
        .count();
    stop.store(true, Ordering::Relaxed);
    let sent = producer_thread.join().unwrap();
    let deliveries = std::mem::take(&mut *rec.deliveries.lock().unwrap());
    let acked: Vec<(u64, i32, i64)> = deliveries
        .iter()
        .filter_map(|(i, r)| r.as_ref().ok().map(|&(p, o)| (*i as u64, p, o)))
        .collect();
    let failed = deliveries.iter().filter(|d| d.1.is_err()).count();
    eprintln!(
        "sent {sent}, acknowledged {} ({acked_at_kill} when killed), failed {failed}, first error: {:?}",
        acked.len(),
        deliveries.iter().find_map(|d| d.1.as_ref().err())
    );
    assert!(acked.len() >= 5000);

    broker.restart();
    wait_topic_ready(&bs, topic, partitions);
    let wm = watermarks(&bs, topic, partitions);
    eprintln!("watermarks after restart: {wm:?}");
    let mut expected: HashMap<(i32, i64), u64> = HashMap::new();
    let mut max_off = vec![-1i64; partitions as usize];
    for &(i, p, o) in &acked {
        assert!(
            expected.insert((p, o), i).is_none(),
            "two acknowledgements at partition {p} offset {o}"
        );
        max_off[p as usize] = max_off[p as usize].max(o);
    }
    for p in 0..partitions as usize {
        assert!(
            wm[p].1 > max_off[p],
            "partition {p}: high watermark {} after restart, but offset {} was acknowledged",
            wm[p].1,
            max_off[p]
        );
    }
    let ranges: Vec<(i32, i64, i64)> = (0..partitions)
        .map(|p| (p, 0, max_off[p as usize] + 1))
        .collect();
    let mut found = 0usize;
    consume_ranges(&bs, topic, &ranges, |m| {
        if let Some(&i) = expected.get(&(m.partition, m.offset)) {
            let (k, v) = message(seed, i);
            assert_eq!(
                m.key.as_deref(),
                Some(&k[..]),
                "partition {} offset {}: key of acknowledged message {i} differs after kill -9",
                m.partition,
                m.offset
            );
            assert!(
                m.value.as_deref() == Some(&v[..]),
                "partition {} offset {}: value of acknowledged message {i} differs after kill -9",
                m.partition,
                m.offset
            );
            found += 1;
        }
    });
    assert_eq!(
        found,
        acked.len(),
        "acknowledged messages found after restart"
    );

    // The log accepts appends after recovery.
    let more = produce_messages(
        &producer_config(&bs, "all"),
        topic,
        seed,
        1_000_000..1_000_100,
    );
    for (j, &(p, o)) in more.iter().enumerate() {
        assert!(
            o >= wm[p as usize].1,
            "message {j} appended after recovery at {p}/{o}, below the recovered end {}",
            wm[p as usize].1
        );
    }
}

#[test]
fn small_segments_survive_restarts() {
    let mut broker = Broker::start(BrokerOpts::new().set("log.segment.bytes", 65536));
    let bs = broker.bootstrap();
    let topic = "segments";
    create_topic(&bs, topic, 2);
    let seed = 41u64;
    // ~3000 * 550 B = 1.6 MB over 2 partitions: ~12 segments each. Batches stay well under
    // the segment size (a batch never spans segments, and a fast broker lets librdkafka
    // build batches of hundreds of KB).
    let small_batches = || {
        let mut c = producer_config(&bs, "all");
        c.set("batch.size", "16384");
        c
    };
    let mut all = produce_messages(&small_batches(), topic, seed, 0..3000);
    verify_topic(&bs, topic, 2, seed, &all);
    let files = list_files(broker.data_dir());
    eprintln!("{} files in the data dir:", files.len());
    for (p, len) in &files {
        eprintln!("  {} {len}", p.display());
    }
    assert!(
        files.len() >= 10,
        "1.6 MB with log.segment.bytes=65536 should produce many segment files, found {}",
        files.len()
    );

    let status = broker.terminate();
    assert!(status.success(), "clean shutdown: {status}");
    broker.restart();
    wait_topic_ready(&bs, topic, 2);
    verify_topic(&bs, topic, 2, seed, &all);

    // More data after the restart, then an unclean stop.
    all.extend(produce_messages(&small_batches(), topic, seed, 3000..4000));
    verify_topic(&bs, topic, 2, seed, &all);
    broker.kill9();
    broker.restart();
    wait_topic_ready(&bs, topic, 2);
    let n = verify_topic(&bs, topic, 2, seed, &all);
    assert_eq!(n, 4000);
}

/// A topic whose flush policy acknowledges before fdatasync (`flush.messages=100000`,
/// `flush.ms=60000`): acks=1 produces are answered once written, far fewer fdatasyncs than
/// acknowledged batches run, and a kill -9 keeps every acknowledged record (the O_DIRECT
/// write survives a crash of the process). DescribeConfigs shows the topic's values.
#[test]
fn relaxed_flush_policy_acknowledges_written_batches_that_survive_kill9() {
    let mut broker = Broker::start(BrokerOpts::new());
    let bs = broker.bootstrap();
    let topic = "relaxed-flush";
    create_topic_with_configs(
        &bs,
        topic,
        2,
        &[("flush.messages", "100000"), ("flush.ms", "60000")],
    );
    let configs = describe_topic_configs(&bs, topic);
    assert_eq!(
        configs.get("flush.messages").map(String::as_str),
        Some("100000")
    );
    assert_eq!(configs.get("flush.ms").map(String::as_str), Some("60000"));

    // Small batches: many acknowledged batches for the counters.
    let mut config = producer_config(&bs, "1");
    config.set("linger.ms", "0").set("batch.num.messages", "20");
    let first = produce_messages(&config, topic, 31, 0..10_000);
    broker.kill9();
    broker.restart();
    wait_topic_ready(&bs, topic, 2);
    verify_topic(&bs, topic, 2, 31, &first);

    // The restarted process's counters, as its shards log them at shutdown.
    let log_from = broker.log().len();
    let mut all = first;
    all.extend(produce_messages(&config, topic, 31, 10_000..20_000));
    let status = broker.terminate();
    assert!(status.success(), "clean shutdown, got {status}");
    let (fdatasyncs, batches) = storage_counters(&broker.log()[log_from..]);
    assert!(
        batches >= 500,
        "10,000 messages in batches of at most 20: {batches} acknowledged batches"
    );
    // Only the shutdown syncs (a few per partition), nothing per batch.
    assert!(
        fdatasyncs * 50 < batches,
        "{fdatasyncs} fdatasyncs for {batches} acknowledged batches"
    );
    broker.restart();
    wait_topic_ready(&bs, topic, 2);
    verify_topic(&bs, topic, 2, 31, &all);
}

/// Sums the last `storage counters` line of each shard in `log`: (fdatasyncs,
/// acknowledged batches).
fn storage_counters(log: &str) -> (u64, u64) {
    let field = |line: &str, name: &str| -> Option<u64> {
        let at = line.find(&format!(" {name}="))? + name.len() + 2;
        let digits: String = line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    let mut last: HashMap<u64, (u64, u64)> = HashMap::new();
    for line in log.lines().filter(|l| l.contains("storage counters")) {
        if let (Some(shard), Some(syncs), Some(batches)) = (
            field(line, "shard"),
            field(line, "fdatasyncs"),
            field(line, "acknowledged_batches"),
        ) {
            last.insert(shard, (syncs, batches));
        }
    }
    assert!(!last.is_empty(), "no storage counters in the log:\n{log}");
    last.values()
        .fold((0, 0), |(s, b), &(s2, b2)| (s + s2, b + b2))
}
