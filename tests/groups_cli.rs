//! `corelog groups` (kafka-consumer-groups.sh's flags and output), run as the built binary
//! against a real broker process and a librdkafka consumer group.
//!
//! One consumer (`group.id`, `subscribe`, manual synchronous commits) reads a 3-partition
//! topic and commits; more records are then produced to one partition, so the table shows a
//! lag. While the consumer lives: `--list`, `--describe` (offsets, log end offsets, lag and
//! the member owning each partition, in aligned columns), `--members [--verbose]`, `--state`,
//! and `--delete` refused (NON_EMPTY_GROUP). After it closes: no active members but the
//! committed offsets, then `--delete`. A broker that does not serve the group APIs only gets
//! the check that the command names the missing API.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use corelog::client::Client;
use kafka_protocol::messages::ApiKey;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const TOPIC: &str = "cli-groups";
const GROUP: &str = "cli-group";
const CLIENT_ID: &str = "groups-cli-consumer";
const PARTITIONS: i32 = 3;
/// Records produced to each partition before the consumer starts.
const FIRST: i64 = 10;
/// Records produced to partition 1 after the consumer committed: its lag.
const MORE: i64 = 4;
/// Deadline of each wait on the group (joins, rebalances, session expiry on a loaded box).
const GROUP_DEADLINE: Duration = Duration::from_secs(120);

/// Runs `corelog groups --bootstrap-server <bs> <args>`.
fn groups(bootstrap: &str, args: &[&str]) -> Run {
    let mut all = vec!["groups", "--bootstrap-server", bootstrap];
    all.extend_from_slice(args);
    corelog(&all)
}

/// A table of kafka-consumer-groups.sh's output: the header's column names and each row
/// as name -> value. Checks the columns are aligned: every value starts where its header
/// name does. Values never contain spaces (ids, hosts, numbers, `-`), but the last column
/// may be empty; the table is what follows the first blank line.
fn table(stdout: &str) -> (Vec<String>, Vec<HashMap<String, String>>) {
    let mut lines = stdout.lines().skip_while(|l| !l.is_empty()).skip(1);
    let header = lines
        .next()
        .unwrap_or_else(|| panic!("no table in:\n{stdout}"));
    let columns: Vec<(usize, &str)> = words(header);
    let names = columns.iter().map(|(_, n)| n.to_string()).collect();
    let rows = lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let values = words(line);
            assert!(
                values.len() <= columns.len(),
                "row has more values than columns:\n{header}\n{line}"
            );
            values
                .iter()
                .zip(&columns)
                .map(|(&(at, value), &(start, name))| {
                    assert_eq!(at, start, "column {name} not aligned:\n{header}\n{line}");
                    (name.to_string(), value.to_string())
                })
                .collect()
        })
        .collect();
    (names, rows)
}

/// The words of a line with their starting columns.
fn words(line: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c == ' ', start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                out.push((s, &line[s..i]));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, &line[s..]));
    }
    out
}

fn produce(bootstrap: &str, partition: i32, count: i64) {
    let producer: BaseProducer = producer_config(bootstrap, "all")
        .create()
        .expect("producer");
    for i in 0..count {
        let value = format!("value-{partition}-{i}");
        producer
            .send(
                BaseRecord::to(TOPIC)
                    .partition(partition)
                    .key("k")
                    .payload(&value),
            )
            .unwrap_or_else(|(e, _)| panic!("send to {TOPIC}[{partition}]: {e}"));
    }
    producer
        .flush(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("flush to {TOPIC}[{partition}]: {e}"));
}

/// Waits until each partition's high watermark is `ends[p]`.
fn wait_log_ends(bootstrap: &str, ends: &[i64]) {
    wait_for(
        &format!("log end offsets {ends:?}"),
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let got: Vec<i64> = watermarks(bootstrap, TOPIC, PARTITIONS)
                .iter()
                .map(|w| w.1)
                .collect();
            (got == ends).then_some(())
        },
    )
}

fn group_consumer(bootstrap: &str) -> BaseConsumer {
    let mut config: ClientConfig = base_config(bootstrap);
    config
        .set("client.id", CLIENT_ID)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "true")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = config.create().expect("create group consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    consumer
}

/// Polls until `count` records arrived (joining the group on the way), then commits the
/// consumer's positions synchronously.
fn consume_and_commit(consumer: &BaseConsumer, count: i64) {
    let start = Instant::now();
    let mut got = 0;
    while got < count {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => got += 1,
            Some(Err(e)) => eprintln!("[test] consumer: {e}"),
            None => {}
        }
        assert!(
            start.elapsed() < GROUP_DEADLINE,
            "consumed {got}/{count} records in {:?}",
            start.elapsed()
        );
    }
    eprintln!("[test] consumed {got} records in {:?}", start.elapsed());
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("synchronous commit");
}

/// Polls the consumer in the background (heartbeats and rebalances are served on poll)
/// until the returned flag is set.
fn keep_polling(consumer: Arc<BaseConsumer>) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
                eprintln!("[test] consumer: {e}");
            }
        }
    });
    (stop, handle)
}

/// `--describe` rows by partition, once every partition of the topic has a row that
/// `ok` accepts.
fn describe_until(
    bootstrap: &str,
    what: &str,
    ok: impl Fn(&Run, &HashMap<String, String>) -> bool,
) -> (Run, HashMap<i32, HashMap<String, String>>) {
    wait_for(what, GROUP_DEADLINE, Duration::from_millis(250), || {
        let run = groups(bootstrap, &["--describe", "--group", GROUP]);
        if run.code != 0 || !run.stdout.contains("GROUP") {
            return None;
        }
        let (_, rows) = table(&run.stdout);
        let by_partition: HashMap<i32, HashMap<String, String>> = rows
            .into_iter()
            .filter(|r| r["TOPIC"] == TOPIC)
            .map(|r| (r["PARTITION"].parse().unwrap(), r))
            .collect();
        let all = (0..PARTITIONS).all(|p| by_partition.get(&p).is_some_and(|r| ok(&run, r)));
        all.then_some((run, by_partition))
    })
}

fn check_offsets(rows: &HashMap<i32, HashMap<String, String>>) {
    for p in 0..PARTITIONS {
        let r = &rows[&p];
        let end = if p == 1 { FIRST + MORE } else { FIRST };
        assert_eq!(r["GROUP"], GROUP);
        assert_eq!(
            r["CURRENT-OFFSET"],
            FIRST.to_string(),
            "partition {p}: {r:?}"
        );
        assert_eq!(r["LOG-END-OFFSET"], end.to_string(), "partition {p}: {r:?}");
        assert_eq!(r["LAG"], (end - FIRST).to_string(), "partition {p}: {r:?}");
    }
}

#[test]
fn list_describe_members_state_delete() {
    let mut broker = Broker::start(
        BrokerOpts::new()
            .set("group.initial.rebalance.delay.ms", 0)
            .set("offsets.topic.num.partitions", 4),
    );
    let bs = broker.bootstrap();
    let versions = Client::bootstrap(&bs).expect("bootstrap").versions;
    let apis = [
        ApiKey::FindCoordinator,
        ApiKey::ListGroups,
        ApiKey::DescribeGroups,
        ApiKey::OffsetFetch,
        ApiKey::DeleteGroups,
    ];
    let missing: Vec<ApiKey> = apis
        .into_iter()
        .filter(|a| !versions.supports(*a))
        .collect();
    if !missing.is_empty() {
        eprintln!("[test] the broker does not serve {missing:?}: only the error is checked");
        let err = groups(&bs, &["--list"]);
        assert!(
            err.failed().contains("not supported by the broker"),
            "{}",
            err.stderr
        );
        return;
    }
    create_topic(&bs, TOPIC, PARTITIONS);
    for p in 0..PARTITIONS {
        produce(&bs, p, FIRST);
    }
    wait_log_ends(&bs, &[FIRST; 3]);

    let consumer = Arc::new(group_consumer(&bs));
    consume_and_commit(&consumer, FIRST * i64::from(PARTITIONS));
    produce(&bs, 1, MORE);
    wait_log_ends(&bs, &[FIRST, FIRST + MORE, FIRST]);
    let (stop, poller) = keep_polling(consumer.clone());

    assert!(
        groups(&bs, &["--list"]).ok().lines().any(|l| l == GROUP),
        "--list names the group"
    );

    // --describe: committed offsets, log ends and lag, each partition owned by the consumer.
    let (run, rows) = describe_until(&bs, "the consumer owns every partition", |_, r| {
        r["CONSUMER-ID"] != "-" && r["CURRENT-OFFSET"] == FIRST.to_string()
    });
    let (header, _) = table(&run.stdout);
    assert_eq!(
        header,
        [
            "GROUP",
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "CONSUMER-ID",
            "HOST",
            "CLIENT-ID"
        ]
    );
    check_offsets(&rows);
    let member_id = rows[&0]["CONSUMER-ID"].clone();
    for r in rows.values() {
        assert_eq!(
            (&r["CONSUMER-ID"], r["CLIENT-ID"].as_str()),
            (&member_id, CLIENT_ID)
        );
        assert!(r["HOST"].contains("127.0.0.1"), "{r:?}");
    }

    // --members (--verbose: the assignment decoded from the consumer protocol).
    let (header, members) = table(groups(&bs, &["--describe", "--group", GROUP, "--members"]).ok());
    assert_eq!(
        header,
        ["GROUP", "CONSUMER-ID", "HOST", "CLIENT-ID", "#PARTITIONS"]
    );
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0]["CONSUMER-ID"], member_id);
    assert_eq!(members[0]["#PARTITIONS"], PARTITIONS.to_string());
    let verbose = groups(
        &bs,
        &["--describe", "--group", GROUP, "--members", "--verbose"],
    );
    let (header, members) = table(verbose.ok());
    assert_eq!(header.last().map(String::as_str), Some("ASSIGNMENT"));
    assert_eq!(members[0]["ASSIGNMENT"], format!("{TOPIC}(0,1,2)"));

    // --state: the coordinator (this broker, node 1), the assignor, Stable, one member.
    let run = groups(&bs, &["--describe", "--group", GROUP, "--state"]);
    let lines: Vec<&str> = run.ok().lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "a blank line, the header and one row: {lines:?}"
    );
    let header = words(lines[1]);
    let names: Vec<&str> = header.iter().map(|w| w.1).collect();
    assert_eq!(
        names,
        [
            "GROUP",
            "COORDINATOR",
            "(ID)",
            "ASSIGNMENT-STRATEGY",
            "STATE",
            "#MEMBERS"
        ]
    );
    let row = words(lines[2]);
    let values: Vec<&str> = row.iter().map(|w| w.1).collect();
    let coordinator = format!("127.0.0.1:{}", broker.port());
    assert_eq!(
        values[..3],
        [GROUP, coordinator.as_str(), "(1)"],
        "{lines:?}"
    );
    assert!(["range", "roundrobin"].contains(&values[3]), "{lines:?}");
    assert_eq!(values[4..], ["Stable", "1"], "{lines:?}");
    // Aligned: the coordinator column (with its id) and those after it start with their names.
    for (h, v) in [(0, 0), (1, 1), (3, 3), (4, 4), (5, 5)] {
        assert_eq!(
            header[h].0, row[v].0,
            "column {} not aligned: {lines:?}",
            names[h]
        );
    }

    // A group with members cannot be deleted.
    let err = groups(&bs, &["--delete", "--group", GROUP]);
    assert!(err.failed().contains("NON_EMPTY_GROUP"), "{}", err.stderr);

    // Closed (LeaveGroup): no active members, the committed offsets remain.
    stop.store(true, Ordering::Relaxed);
    poller.join().expect("poller thread");
    let consumer = Arc::try_unwrap(consumer).unwrap_or_else(|_| panic!("consumer still shared"));
    let closing = Instant::now();
    drop(consumer);
    eprintln!("[test] consumer closed in {:?}", closing.elapsed());
    let (_, rows) = describe_until(&bs, "the group has no active members", |run, r| {
        run.stderr
            .contains("Consumer group 'cli-group' has no active members.")
            && r["CONSUMER-ID"] == "-"
    });
    check_offsets(&rows);
    for r in rows.values() {
        assert_eq!(
            (r["HOST"].as_str(), r["CLIENT-ID"].as_str()),
            ("-", "-"),
            "{r:?}"
        );
    }
    let members = groups(&bs, &["--describe", "--group", GROUP, "--members"]);
    assert_eq!(members.ok(), "", "no members, no table");
    assert!(
        members
            .stderr
            .contains("Consumer group 'cli-group' has no active members."),
        "{}",
        members.stderr
    );

    // Unknown groups; then deleting the empty group.
    let err = groups(&bs, &["--describe", "--group", "no-such-group"]);
    assert!(
        err.failed()
            .contains("Error: Consumer group 'no-such-group' does not exist."),
        "{}",
        err.stderr
    );
    assert_eq!(
        groups(&bs, &["--delete", "--group", GROUP]).ok(),
        "Deletion of requested consumer groups ('cli-group') was successful.\n"
    );
    assert!(
        !groups(&bs, &["--list"]).ok().lines().any(|l| l == GROUP),
        "the deleted group is not listed"
    );
    broker.assert_serving();
}
