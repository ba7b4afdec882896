//! End-to-end tests of produce and consume against the in-memory mock
//! broker.

use crate::mockbroker::MockBroker;
use crate::partitioner::partition_for_key;
use crate::{Cli, Cmd, consume, produce};
use clap::Parser;

fn produce_with(args: &[&str]) -> std::sync::Arc<crate::stats::Stats> {
    let mut v = vec!["corelog-perf", "produce"];
    v.extend_from_slice(args);
    match Cli::try_parse_from(v).unwrap().cmd {
        Cmd::Produce(o) => produce::run(&o).unwrap(),
        _ => unreachable!(),
    }
}

fn consume_with(args: &[&str]) -> std::sync::Arc<crate::stats::Stats> {
    let mut v = vec!["corelog-perf", "consume"];
    v.extend_from_slice(args);
    match Cli::try_parse_from(v).unwrap().cmd {
        Cmd::Consume(o) => consume::run(&o).unwrap(),
        _ => unreachable!(),
    }
}

#[test]
fn produce_then_consume_keyed() {
    let b = MockBroker::start();
    let s = produce_with(&[
        "-b",
        &b.addr,
        "-t",
        "t1",
        "--create-partitions",
        "4",
        "--count",
        "3000",
        "--message-size",
        "100",
        "--keys",
        "seq",
        "--batch-bytes",
        "4096",
        "--linger-ms",
        "2",
    ]);
    assert_eq!(s.msgs(), 3000);
    assert_eq!(s.failed_msgs(), 0);
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    // Keys were partitioned with Kafka's murmur2.
    let mut expected = vec![0u64; 4];
    for i in 0..3000 {
        expected[partition_for_key(i.to_string().as_bytes(), 4)] += 1;
    }
    assert_eq!(b.records("t1"), expected);
    let c = consume_with(&[
        "-b",
        &b.addr,
        "-t",
        "t1",
        "--count",
        "3000",
        "--idle-timeout-secs",
        "5",
    ]);
    assert_eq!(c.msgs(), 3000);
    assert!(c.errors().is_empty(), "{:?}", c.errors());
}

#[test]
fn sticky_round_robin_and_multi_partition_requests() {
    let b = MockBroker::start();
    let s = produce_with(&[
        "-b",
        &b.addr,
        "-t",
        "t2",
        "--create-partitions",
        "8",
        "--count",
        "4000",
        "--message-size",
        "64",
        "--partitioner",
        "round-robin",
        "--linger-ms",
        "20",
        "--max-in-flight",
        "1",
        "--json",
    ]);
    assert_eq!(s.msgs(), 4000);
    assert_eq!(b.records("t2"), vec![500; 8]);
    assert!(
        b.state
            .max_partitions_per_request
            .load(std::sync::atomic::Ordering::Relaxed)
            > 1
    );
    // Keyless default partitioner: sticky, all records arrive.
    let s = produce_with(&[
        "-b",
        &b.addr,
        "-t",
        "t2",
        "--count",
        "2000",
        "--message-size",
        "200",
        "--batch-bytes",
        "2000",
        "--partitions-used",
        "3",
    ]);
    assert_eq!(s.msgs(), 2000);
    let r = b.records("t2");
    assert_eq!(r.iter().sum::<u64>(), 6000);
    assert_eq!(&r[3..], &[500; 5]);
}

#[test]
fn retries_not_leader_and_counts_error() {
    let b = MockBroker::start();
    b.state
        .fail_not_leader
        .store(3, std::sync::atomic::Ordering::Relaxed);
    let s = produce_with(&[
        "-b",
        &b.addr,
        "-t",
        "t3",
        "--create-partitions",
        "2",
        "--count",
        "500",
        "--message-size",
        "50",
        "--acks",
        "1",
    ]);
    assert_eq!(s.msgs(), 500);
    assert_eq!(s.failed_msgs(), 0);
    assert_eq!(s.errors().get("6:NotLeaderOrFollower"), Some(&3));
}

#[test]
fn acks_zero_and_rate_and_duration() {
    let b = MockBroker::start();
    let s = produce_with(&[
        "-b",
        &b.addr,
        "-t",
        "t4",
        "--create-partitions",
        "1",
        "--count",
        "700",
        "--acks",
        "0",
    ]);
    assert_eq!(s.msgs(), 700);
    // Rate-limited for ~1 s: about 300 messages.
    let s = produce_with(&[
        "-b",
        &b.addr,
        "-t",
        "t4",
        "--duration-secs",
        "1",
        "--rate",
        "300",
        "--keys",
        "random",
    ]);
    assert!((250..=310).contains(&s.msgs()), "{}", s.msgs());
    std::thread::sleep(std::time::Duration::from_millis(100));
    let total: u64 = b.records("t4").iter().sum();
    assert_eq!(total, 700 + s.msgs());
    // Consume from latest sees nothing and stops on the idle timeout.
    let c = consume_with(&[
        "-b",
        &b.addr,
        "-t",
        "t4",
        "--from",
        "latest",
        "--duration-secs",
        "1",
    ]);
    assert_eq!(c.msgs(), 0);
}

#[test]
fn broker_pids_report_cpu_time() {
    // The mock broker runs in this process, so its PID is the broker's.
    let b = MockBroker::start();
    let pid = std::process::id().to_string();
    let s = produce_with(&[
        "-b",
        &b.addr,
        "-t",
        "t5",
        "--create-partitions",
        "2",
        "--duration-secs",
        "1",
        "--acks",
        "1",
        "--broker-pids",
        &format!("{pid},{pid}"),
    ]);
    let cpu = s.broker_cpu_s().expect("broker CPU time reported");
    // A second of full-speed produce costs the in-process broker CPU.
    assert!(cpu > 0.0 && cpu < 120.0, "{cpu}");
    let c = consume_with(&[
        "-b",
        &b.addr,
        "-t",
        "t5",
        "--duration-secs",
        "1",
        "--broker-pids",
        &pid,
    ]);
    assert!(c.broker_cpu_s().is_some());
    // A PID that is not running is refused before the run starts.
    let v = vec![
        "corelog-perf",
        "consume",
        "-b",
        &b.addr,
        "-t",
        "t5",
        "--count",
        "1",
        "--broker-pids",
        "4294967295",
    ];
    match Cli::try_parse_from(v).unwrap().cmd {
        Cmd::Consume(o) => assert!(consume::run(&o).is_err()),
        _ => unreachable!(),
    }
}
