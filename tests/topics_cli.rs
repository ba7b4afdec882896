//! `corelog topics` (kafka-topics.sh's flags and output) and `corelog dev-cluster`, run as
//! the built binary against real broker processes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use corelog::client::{Client, topic_id_string};
use kafka_protocol::messages::ApiKey;

fn topics(bootstrap: &str, args: &[&str]) -> Run {
    let mut all = vec!["topics", "--bootstrap-server", bootstrap];
    all.extend_from_slice(args);
    corelog(&all)
}

fn list(bootstrap: &str) -> Vec<String> {
    topics(bootstrap, &["--list"])
        .ok()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn create_list_describe_delete() {
    let broker = Broker::start(BrokerOpts::new());
    let bs = broker.bootstrap();

    let out = topics(
        &bs,
        &[
            "--create",
            "--topic",
            "cli-a",
            "--partitions",
            "3",
            "--replication-factor",
            "1",
            "--config",
            "retention.ms=60000",
            "--config",
            "segment.bytes=1048576",
        ],
    );
    assert_eq!(out.ok(), "Created topic cli-a.\n");
    // Defaults: -1 partitions and replication factor = the broker's defaults (1 and 1).
    assert_eq!(
        topics(&bs, &["--create", "--topic", "cli-b"]).ok(),
        "Created topic cli-b.\n"
    );
    assert_eq!(list(&bs), vec!["cli-a", "cli-b"]);

    // --describe --topic: kafka-topics' layout; the id is Kafka's base64url form of the
    // id Metadata reports.
    let id = {
        let mut client = Client::bootstrap(&bs).expect("bootstrap");
        let meta = client.cluster_metadata(None).expect("metadata");
        topic_id_string(&meta.topic("cli-a").expect("cli-a in metadata").id)
    };
    assert_eq!(id.len(), 22);
    assert_ne!(id, "AAAAAAAAAAAAAAAAAAAAAA", "corelog reports topic ids");
    let out = topics(&bs, &["--describe", "--topic", "cli-a"]);
    let lines: Vec<&str> = out.ok().lines().collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let prefix =
        format!("Topic: cli-a\tTopicId: {id}\tPartitionCount: 3\tReplicationFactor: 1\tConfigs: ");
    let configs = lines[0]
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("topic line {:?} does not start with {prefix:?}", lines[0]));
    let mut configs: Vec<&str> = configs.split(',').collect();
    configs.sort_unstable();
    assert_eq!(configs, vec!["retention.ms=60000", "segment.bytes=1048576"]);
    for (p, line) in lines[1..].iter().enumerate() {
        assert_eq!(
            *line,
            format!("\tTopic: cli-a\tPartition: {p}\tLeader: 1\tReplicas: 1\tIsr: 1")
        );
    }

    // --describe of every topic, sorted; no overrides -> empty Configs.
    let out = topics(&bs, &["--describe"]);
    let text = out.ok();
    let a = text.find("Topic: cli-a\t").expect("cli-a described");
    let b = text.find("Topic: cli-b\t").expect("cli-b described");
    assert!(a < b, "topics sorted:\n{text}");
    assert!(
        text.contains("\tPartitionCount: 1\tReplicationFactor: 1\tConfigs: \n\tTopic: cli-b\tPartition: 0\tLeader: 1\tReplicas: 1\tIsr: 1\n"),
        "{text}"
    );

    // Errors name the Kafka error and exit non-zero.
    let err = topics(&bs, &["--create", "--topic", "cli-a", "--partitions", "1"]);
    let stderr = err.failed();
    assert!(
        stderr.contains("Error while executing topic command : ")
            && stderr.contains("TOPIC_ALREADY_EXISTS"),
        "{stderr}"
    );
    topics(&bs, &["--create", "--topic", "cli-a", "--if-not-exists"]).ok();
    let err = topics(
        &bs,
        &["--create", "--topic", "cli-rf", "--replication-factor", "3"],
    );
    let stderr = err.failed();
    assert!(
        stderr.contains("INVALID_REPLICATION_FACTOR") || stderr.contains("replication factor"),
        "{stderr}"
    );

    // --delete.
    assert_eq!(topics(&bs, &["--delete", "--topic", "cli-b"]).ok(), "");
    wait_for(
        "cli-b gone from --list",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || (list(&bs) == vec!["cli-a"]).then_some(()),
    );
    let err = topics(&bs, &["--delete", "--topic", "cli-nope"]);
    assert!(
        err.failed().contains("UNKNOWN_TOPIC_OR_PARTITION"),
        "{}",
        err.stderr
    );
    topics(&bs, &["--delete", "--topic", "cli-nope", "--if-exists"]).ok();
    let err = topics(&bs, &["--describe", "--topic", "cli-nope"]);
    assert!(err.failed().contains("does not exist"), "{}", err.stderr);

    // Usage errors.
    assert!(topics(&bs, &["--create"]).failed().contains("--topic"));
    assert_ne!(topics(&bs, &[]).code, 0, "an action is required");
    broker_still_serving(broker);
}

fn broker_still_serving(mut broker: Broker) {
    broker.assert_serving();
}

#[test]
fn bootstrap_list_tries_each_server() {
    let broker = Broker::start(BrokerOpts::new().cores(1));
    let dead = format!("127.0.0.1:{}", free_port());
    let bs = format!("{dead},{}", broker.bootstrap());
    assert_eq!(
        topics(
            &bs,
            &["--create", "--topic", "via-second", "--partitions", "2"]
        )
        .ok(),
        "Created topic via-second.\n"
    );
    assert_eq!(list(&bs), vec!["via-second"]);
    let err = topics(&dead, &["--list"]);
    assert!(
        err.failed().contains("no bootstrap server reachable"),
        "{}",
        err.stderr
    );
}

#[test]
fn alter_partitions_or_clear_unsupported_error() {
    let mut broker = Broker::start(BrokerOpts::new());
    let bs = broker.bootstrap();
    topics(&bs, &["--create", "--topic", "grow", "--partitions", "2"]).ok();
    let supported = Client::bootstrap(&bs)
        .expect("bootstrap")
        .versions
        .supports(ApiKey::CreatePartitions);
    eprintln!("[test] broker advertises CreatePartitions: {supported}");
    let out = topics(&bs, &["--alter", "--topic", "grow", "--partitions", "5"]);
    if supported {
        out.ok();
        let desc = topics(&bs, &["--describe", "--topic", "grow"]);
        assert!(
            desc.ok().contains("\tPartitionCount: 5\t"),
            "{}",
            desc.stdout
        );
        let err = topics(&bs, &["--alter", "--topic", "grow", "--partitions", "3"]);
        assert!(
            err.failed().contains("INVALID_PARTITIONS"),
            "{}",
            err.stderr
        );
    } else {
        let stderr = out.failed();
        assert!(
            stderr.contains("Error while executing topic command : ")
                && stderr.contains("not supported by the broker"),
            "{stderr}"
        );
    }
    let err = topics(&bs, &["--alter", "--topic", "grow"]);
    assert!(err.failed().contains("--partitions"), "{}", err.stderr);
    broker.assert_serving();
}

#[test]
fn dev_cluster_dry_run_prints_broker_commands() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = corelog(&[
        "dev-cluster",
        "--brokers",
        "2",
        "--base-port",
        "29092",
        "--data-dir",
        d,
        "--set",
        "num.partitions=3",
        "--dry-run",
    ]);
    let text = out.ok();
    assert!(
        text.starts_with("bootstrap: 127.0.0.1:29092,127.0.0.1:29093\n"),
        "{text}"
    );
    for i in 1..=2 {
        let expected = format!(
            "serve --listen 127.0.0.1:{} --data-dir {d}/broker-{i} --cores 1 --set node.id={i} \
             --set controller.quorum.voters=1@127.0.0.1:29192,2@127.0.0.1:29193 \
             --set num.partitions=3\n",
            29091 + i
        );
        assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    }
}

/// A one-broker dev-cluster (with its one-voter controller quorum): it serves, stops its
/// broker on SIGTERM, and reports a broker that dies.
#[test]
fn dev_cluster_one_broker_supervises_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let start_cluster = |port: u16| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_corelog"))
            .args(["dev-cluster", "--brokers", "1", "--data-dir"])
            .arg(&d)
            .args(["--base-port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn dev-cluster");
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("[dev-cluster] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let pid: i32 = wait_for(
            "dev-cluster prints its broker's pid",
            READY_DEADLINE,
            Duration::from_millis(50),
            || {
                lines.extend(rx.try_iter());
                lines.iter().find_map(|l| {
                    l.strip_prefix("broker 1: pid ")?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
            },
        );
        assert!(
            lines.contains(&format!("bootstrap: 127.0.0.1:{port}")),
            "{lines:?}"
        );
        (child, pid)
    };
    let wait_exit = |child: &mut std::process::Child, what: &str| {
        wait_for(what, SHUTDOWN_DEADLINE, Duration::from_millis(50), || {
            child.try_wait().unwrap()
        })
    };
    let alive = |pid: i32| unsafe { libc::kill(pid, 0) == 0 };

    // SIGTERM to dev-cluster stops the broker and exits 0.
    let port = free_port();
    let (mut child, pid) = start_cluster(port);
    let bs = format!("127.0.0.1:{port}");
    assert_eq!(
        topics(&bs, &["--create", "--topic", "dev", "--partitions", "2"]).ok(),
        "Created topic dev.\n"
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = wait_exit(&mut child, "dev-cluster exits after SIGTERM");
    assert!(status.success(), "dev-cluster exit: {status}");
    assert!(!alive(pid), "broker pid {pid} survived dev-cluster");
    let log = std::fs::read_to_string(dir.path().join("broker-1.log")).unwrap();
    assert!(!log.is_empty(), "broker log is written");

    // A broker that dies makes dev-cluster exit non-zero (same data dir and ports: the topic
    // survives).
    let (mut child, pid) = start_cluster(port);
    assert_eq!(list(&format!("127.0.0.1:{port}")), vec!["dev"]);
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let status = wait_exit(&mut child, "dev-cluster exits after its broker died");
    assert!(!status.success(), "dev-cluster exit: {status}");
}
