//! librdkafka group members: in this process (polled by the test thread) or in a child
//! process (to be killed with SIGKILL).

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::*;
use crate::common::*;

/// Configuration of a group member.
pub fn member_config(bootstrap: &str, group: &str, client_id: &str) -> ClientConfig {
    let mut c = base_config(bootstrap);
    c.set("group.id", group)
        .set("client.id", client_id)
        .set(
            "session.timeout.ms",
            SESSION_TIMEOUT.as_millis().to_string(),
        )
        .set("heartbeat.interval.ms", "500")
        .set("max.poll.interval.ms", "30000")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "200");
    c.set_log_level(RDKafkaLogLevel::Warning);
    c
}

/// Logs a member's rebalances and, if asked, commits its consumed positions synchronously
/// before its partitions are revoked (so the next owner starts after them).
pub struct GroupContext {
    pub name: String,
    pub commit_on_revoke: bool,
    pub rebalances: AtomicUsize,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            eprintln!("[librdkafka {} {level:?} {fac}] {message}", self.name);
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                eprintln!("[{}] assigned {parts:?}", self.name);
            }
            Rebalance::Revoke(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                eprintln!("[{}] revoking {parts:?}", self.name);
                if self.commit_on_revoke {
                    match consumer.commit_consumer_state(CommitMode::Sync) {
                        Ok(()) => eprintln!("[{}] committed before revoke", self.name),
                        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                        Err(e) => eprintln!("[{}] commit before revoke failed: {e}", self.name),
                    }
                }
            }
            Rebalance::Error(e) => eprintln!("[{}] rebalance error: {e}", self.name),
        }
    }
}

/// A consumed message: where it was and which produced message (index) it is.
#[derive(Clone, Copy, Debug)]
pub struct Got {
    pub partition: i32,
    pub offset: i64,
    pub index: u64,
}

/// A subscribed group member, polled by the test thread (`pump`).
pub struct Member {
    pub name: String,
    topic: String,
    seed: u64,
    pub consumer: BaseConsumer<GroupContext>,
    pub got: Vec<Got>,
    errors: usize,
}

impl Member {
    pub fn new(
        bootstrap: &str,
        group: &str,
        name: &str,
        topic: &str,
        seed: u64,
        commit_on_revoke: bool,
    ) -> Member {
        let ctx = GroupContext {
            name: name.to_string(),
            commit_on_revoke,
            rebalances: AtomicUsize::new(0),
        };
        let consumer: BaseConsumer<GroupContext> = member_config(bootstrap, group, name)
            .create_with_context(ctx)
            .unwrap_or_else(|e| panic!("create consumer {name}: {e}"));
        consumer
            .subscribe(&[topic])
            .unwrap_or_else(|e| panic!("{name}: subscribe {topic}: {e}"));
        Member {
            name: name.to_string(),
            topic: topic.to_string(),
            seed,
            consumer,
            got: Vec::new(),
            errors: 0,
        }
    }

    /// Serves the consumer's events and takes every message ready (waiting up to 20 ms for
    /// the first); checks each is a message `message(seed, i)` produced. Returns the count.
    pub fn pump(&mut self) -> usize {
        let mut n = 0;
        let mut timeout = Duration::from_millis(20);
        while n < 2000 {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Err(e)) => {
                    self.errors += 1;
                    if self.errors <= 20 {
                        eprintln!("[{}] consumer error: {e}", self.name);
                    }
                    break;
                }
                Some(Ok(m)) => {
                    assert_eq!(
                        m.topic(),
                        self.topic,
                        "{}: message of another topic",
                        self.name
                    );
                    let value = m.payload().unwrap_or(&[]);
                    assert!(
                        value.len() >= 8,
                        "{}: {}[{}]@{}: value of {} bytes",
                        self.name,
                        m.topic(),
                        m.partition(),
                        m.offset(),
                        value.len()
                    );
                    let index = index_of(value);
                    let key = format!("key-{}-{index}", self.seed);
                    assert_eq!(
                        m.key(),
                        Some(key.as_bytes()),
                        "{}: [{}]@{}: key does not match message {index}",
                        self.name,
                        m.partition(),
                        m.offset()
                    );
                    self.got.push(Got {
                        partition: m.partition(),
                        offset: m.offset(),
                        index,
                    });
                    n += 1;
                }
            }
            timeout = Duration::ZERO;
        }
        n
    }

    /// The partitions of the topic this member holds now, sorted.
    pub fn assignment(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .consumer
            .assignment()
            .map(|tpl| {
                tpl.elements_for_topic(&self.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect()
            })
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    pub fn rebalances(&self) -> usize {
        self.consumer.context().rebalances.load(Ordering::Relaxed)
    }

    /// Commits `offsets` (partition, next offset to consume) synchronously.
    pub fn commit(&self, offsets: &[(i32, i64)]) -> Result<(), String> {
        let mut tpl = TopicPartitionList::new();
        for &(p, o) in offsets {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(o))
                .map_err(|e| e.to_string())?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| format!("{}: commit {offsets:?}: {e}", self.name))
    }

    /// The group's committed offsets of partitions `0..partitions` as this consumer fetches
    /// them (OffsetFetch through librdkafka); `None` for a partition without one.
    pub fn committed(&self, partitions: i32) -> Result<Vec<Option<i64>>, String> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&self.topic, p);
        }
        let got = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .map_err(|e| format!("{}: committed offsets: {e}", self.name))?;
        (0..partitions)
            .map(|p| {
                let e = got
                    .find_partition(&self.topic, p)
                    .ok_or_else(|| format!("no partition {p} in {got:?}"))?;
                e.error().map_err(|err| format!("partition {p}: {err}"))?;
                Ok(match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
            })
            .collect()
    }
}

/// Pumps `members` until `check` (given each member's assignment) accepts; panics after
/// `deadline` with its last error. Prints and returns the time taken.
pub fn wait_group<T>(
    what: &str,
    members: &mut [Member],
    deadline: Duration,
    mut check: impl FnMut(&[Vec<i32>]) -> Result<T, String>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        for m in members.iter_mut() {
            m.pump();
        }
        let assignments: Vec<Vec<i32>> = members.iter().map(Member::assignment).collect();
        match check(&assignments) {
            Ok(v) => {
                let took = start.elapsed();
                eprintln!("[test] {what}: ok after {took:?} (assignments {assignments:?})");
                return (v, took);
            }
            Err(e) => {
                if start.elapsed() > deadline {
                    panic!(
                        "[test] {what}: not done after {:?}; last: {e}; assignments {assignments:?}",
                        start.elapsed()
                    );
                }
            }
        }
    }
}

/// Pumps `members` until `done` (given everything they consumed so far) says so; fails when
/// nothing new arrives for `STALL`.
pub fn consume_until(what: &str, members: &mut [Member], mut done: impl FnMut(&[&Member]) -> bool) {
    let start = Instant::now();
    let mut last_progress = Instant::now();
    loop {
        let mut n = 0;
        for m in members.iter_mut() {
            n += m.pump();
        }
        if n > 0 {
            last_progress = Instant::now();
        }
        let refs: Vec<&Member> = members.iter().collect();
        if done(&refs) {
            let total: usize = members.iter().map(|m| m.got.len()).sum();
            eprintln!(
                "[test] {what}: done after {:?} ({total} messages consumed in all)",
                start.elapsed()
            );
            return;
        }
        if last_progress.elapsed() > STALL {
            let counts: Vec<(String, usize, Vec<i32>)> = members
                .iter()
                .map(|m| (m.name.clone(), m.got.len(), m.assignment()))
                .collect();
            panic!(
                "[test] {what}: nothing new for {:?}; (member, consumed, assignment): {counts:?}",
                last_progress.elapsed()
            );
        }
    }
}

/// Next offset per partition after the messages `deliveries` reports.
pub fn end_offsets(deliveries: &[(i32, i64)], partitions: i32) -> Vec<i64> {
    let mut ends = vec![0i64; partitions as usize];
    for &(p, o) in deliveries {
        ends[p as usize] = ends[p as usize].max(o + 1);
    }
    ends
}

// ---------------------------------------------------------------------------------------------
// A group member in a child process (to be killed with SIGKILL)
// ---------------------------------------------------------------------------------------------

/// Runs this test binary as a child that acts as a group member (see
/// `child_consumer_process`); killed with SIGKILL on drop.
pub struct ChildConsumer {
    child: Option<Child>,
    name: String,
    log_path: PathBuf,
    _tmp: tempfile::TempDir,
}

impl ChildConsumer {
    pub fn spawn(bootstrap: &str, group: &str, topic: &str, name: &str) -> ChildConsumer {
        let tmp = tempfile::Builder::new()
            .prefix("corelog-groups-child-")
            .tempdir()
            .expect("tempdir");
        let log_path = tmp.path().join("child.log");
        let log = File::create(&log_path).expect("child log");
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(exe);
        cmd.args([
            "child_consumer_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CHILD_ENV,
            format!("{bootstrap}|{group}|{topic}|{name}|{CHILD_LIFETIME_SECS}"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().expect("clone log")))
        .stderr(Stdio::from(log));
        let child = cmd.spawn().expect("spawn child consumer");
        eprintln!("[test] child consumer {name} started (pid {})", child.id());
        ChildConsumer {
            child: Some(child),
            name: name.to_string(),
            log_path,
            _tmp: tmp,
        }
    }

    /// `Err` if the child has exited.
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => Ok(()),
            other => Err(format!(
                "child consumer {} is not running ({other:?}); log:\n{}",
                self.name,
                self.log_tail(40)
            )),
        }
    }

    /// SIGKILL and reap; returns when the signal was sent.
    pub fn kill9(&mut self) -> Instant {
        let mut c = self.child.take().expect("child not running");
        let at = Instant::now();
        unsafe {
            libc::kill(c.id() as i32, libc::SIGKILL);
        }
        let status = c.wait().expect("wait for child");
        eprintln!("[test] child consumer {} killed ({status})", self.name);
        at
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ChildConsumer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGKILL);
            }
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- child consumer {} log tail -----\n{}\n----- end -----",
                self.name,
                self.log_tail(60)
            );
        }
    }
}
