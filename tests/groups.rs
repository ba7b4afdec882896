//! Consumer groups (issue 5): librdkafka high-level consumers (`group.id` + `subscribe`) and
//! raw group requests against real `corelog serve` processes.
//!
//! What is checked:
//! - three consumers of one group, joining one at a time, split a 12-partition topic (each
//!   partition owned by exactly one of them, as their `assignment()` and DescribeGroups both
//!   say) and consume every message exactly once (offsets are committed when partitions are
//!   revoked, so a partition's next owner starts where its previous one stopped);
//! - a member that leaves (close: LeaveGroup) and one that is killed with SIGKILL (a child
//!   process, this binary re-run as `child_consumer_process`) are replaced: the survivor owns
//!   every partition, after a leave faster than the session timeout, after a death within the
//!   session timeout plus slack;
//! - a group stopped and started again resumes at its committed offsets;
//! - in a 3-broker cluster (`__consumer_offsets` with RF 3) the coordinator's broker is killed
//!   with SIGKILL: a new coordinator serves the committed offsets and the group consumes on
//!   from them; non-coordinators answer NOT_COORDINATOR;
//! - the error codes of the classic protocol over raw requests (MEMBER_ID_REQUIRED,
//!   ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, INVALID_SESSION_TIMEOUT, NON_EMPTY_GROUP,
//!   GROUP_ID_NOT_FOUND), on a broker with the default 50 offsets partitions;
//! - the offsets of an empty group survive broker restarts (clean and kill -9), and
//!   DeleteGroups removes them for good;
//! - ids too long for the offsets records are refused, the longest ones survive a restart.
//!
//! Brokers run with `group.initial.rebalance.delay.ms=0` and 6 offsets partitions (but for
//! the raw-protocol test, which keeps the default 50). Consumers use `session.timeout.ms=6000`,
//! `heartbeat.interval.ms=500` and manual commits. The tests run one at a time (`serial()`);
//! every wait polls with a generous deadline and prints how long it took.

mod common;

#[path = "groups/long_ids.rs"]
mod long_ids;
#[path = "groups/members.rs"]
mod members;
#[path = "groups/raw.rs"]
mod raw;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use common::*;
use kafka_protocol::messages::{
    ApiKey, DescribeGroupsRequest, DescribeGroupsResponse, JoinGroupResponse,
};
use members::*;
use raw::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};

/// `session.timeout.ms` of every consumer here.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// What a rebalance after a member's death may take beyond its session timeout (detection
/// granularity, the survivors' heartbeat, rejoin and sync on a loaded 2-core machine).
const DEATH_SLACK: Duration = Duration::from_secs(24);
/// Deadline for a group to settle, a coordinator to be found, offsets to show.
const GROUP_DEADLINE: Duration = Duration::from_secs(90);
/// Deadline for a failover (fencing, leader election, loading the offsets partition).
const FAILOVER_DEADLINE: Duration = Duration::from_secs(60);
/// Consumption fails when no new message arrives for this long.
const STALL: Duration = Duration::from_secs(90);
/// Set (to a `|`-separated spec) in the environment of a child consumer process.
const CHILD_ENV: &str = "CORELOG_GROUPS_CHILD";
/// A child consumer leaves on its own after this long, so it cannot outlive a crashed test.
const CHILD_LIFETIME_SECS: u64 = 150;

// Kafka error codes of the group APIs.
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const INVALID_SESSION_TIMEOUT: i16 = 26;
const NON_EMPTY_GROUP: i16 = 68;
const GROUP_ID_NOT_FOUND: i16 = 69;
const MEMBER_ID_REQUIRED: i16 = 79;

/// Errors meaning "ask again (maybe elsewhere) in a moment".
const RETRIABLE: [i16; 3] = [
    COORDINATOR_LOAD_IN_PROGRESS,
    COORDINATOR_NOT_AVAILABLE,
    NOT_COORDINATOR,
];

/// One test of this binary at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Broker settings for fast group tests.
fn group_broker_opts() -> BrokerOpts {
    BrokerOpts::new()
        .set("group.initial.rebalance.delay.ms", 0)
        .set("offsets.topic.num.partitions", 6)
}

/// Polls `f` every 100 ms until it returns `Ok`; panics after `deadline` with its last error.
/// Prints and returns how long it took.
fn poll_until<T>(
    what: &str,
    deadline: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => {
                let took = start.elapsed();
                eprintln!("[test] {what}: ok after {took:?}");
                return (v, took);
            }
            Err(e) => {
                if start.elapsed() > deadline {
                    panic!(
                        "[test] {what}: not done after {:?}; last: {e}",
                        start.elapsed()
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Does nothing unless `CORELOG_GROUPS_CHILD` is set: then it is a group member of another
/// test (which started this binary as its child), subscribing and polling until it is killed,
/// its parent is gone, or `CHILD_LIFETIME_SECS` have passed.
#[test]
fn child_consumer_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let fields: Vec<&str> = spec.split('|').collect();
    let &[bootstrap, group, topic, name, secs] = fields.as_slice() else {
        panic!("bad {CHILD_ENV}: {spec:?}");
    };
    let lifetime = Duration::from_secs(secs.parse().expect("lifetime seconds"));
    let parent = unsafe { libc::getppid() };
    let ctx = GroupContext {
        name: name.to_string(),
        commit_on_revoke: false,
        rebalances: AtomicUsize::new(0),
    };
    let consumer: BaseConsumer<GroupContext> = member_config(bootstrap, group, name)
        .create_with_context(ctx)
        .expect("create child consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    eprintln!("[child {name}] subscribed to {topic} in group {group}");
    let start = Instant::now();
    let mut last: Option<Vec<i32>> = None;
    let mut consumed = 0u64;
    while start.elapsed() < lifetime {
        if unsafe { libc::getppid() } != parent {
            eprintln!("[child {name}] parent gone, leaving");
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => consumed += 1,
            Some(Err(e)) => eprintln!("[child {name}] consumer error: {e}"),
            None => {}
        }
        let mut a: Vec<i32> = consumer
            .assignment()
            .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        a.sort_unstable();
        if last.as_ref() != Some(&a) {
            eprintln!(
                "[child {name}] assignment {a:?} after {:?} ({consumed} consumed)",
                start.elapsed()
            );
            last = Some(a);
        }
    }
    eprintln!("[child {name}] done after {:?}", start.elapsed());
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// Three members, joining one at a time, end up splitting 12 partitions; 3,000 keyed messages
/// (produced before the members join, between the joins and while the full group consumes)
/// are consumed exactly once across them, thanks to the commits made before each revocation.
#[test]
fn three_members_split_partitions_and_consume_every_message_once() {
    let _serial = serial();
    let broker = Broker::start(group_broker_opts());
    let bs = broker.bootstrap();
    let topic = "g1-topic";
    let group = "g1";
    let seed = 11u64;
    create_topic(&bs, topic, 12);
    let mut deliveries = produce_messages(&producer_config(&bs, "all"), topic, seed, 0..1000);

    let (_, coord) = wait_coordinator(
        "coordinator of g1",
        &[broker.addr()],
        group,
        GROUP_DEADLINE,
        |_| true,
    );
    // The members join one at a time, each once the others have consumed what is there
    // (messages 0..1000 by the first, 1000..2000 by the first two), so partitions change owner
    // in eager rebalances after their messages were consumed: the commit a member makes before
    // its partitions are revoked is all that keeps the next owner from consuming them again.
    let names = ["g1-a", "g1-b", "g1-c"];
    let mut members: Vec<Member> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let n = i + 1;
        members.push(Member::new(&bs, group, name, topic, seed, true));
        wait_group(
            &format!("{n} member(s) stable over 12 partitions"),
            &mut members,
            GROUP_DEADLINE,
            |a| {
                check_partitioned(a, 12)?;
                if a.iter().any(|x| x.len() != 12 / n) {
                    return Err(format!("want {} partitions each: {a:?}", 12 / n));
                }
                let local: Vec<(&str, &[i32])> = names
                    .iter()
                    .zip(a)
                    .map(|(n, x)| (*n, x.as_slice()))
                    .collect();
                check_stable(coord, group, topic, 12, &names[..n], &local)
            },
        );
        if n == 2 {
            deliveries.extend(produce_messages(
                &producer_config(&bs, "all"),
                topic,
                seed,
                1000..2000,
            ));
        }
        if n < 3 {
            let upto = deliveries.len();
            consume_until(
                &format!("{n} member(s) consumed messages 0..{upto}"),
                &mut members,
                |ms| {
                    let distinct: BTreeSet<u64> = ms
                        .iter()
                        .flat_map(|m| m.got.iter().map(|g| g.index))
                        .collect();
                    distinct.len() >= upto
                },
            );
        }
    }
    let stable_rebalances: Vec<usize> = members.iter().map(Member::rebalances).collect();

    // The second half while the group consumes.
    let producer = {
        let config = producer_config(&bs, "all");
        std::thread::spawn(move || produce_messages(&config, topic, seed, 2000..3000))
    };
    consume_until("all 3000 messages consumed", &mut members, |ms| {
        let distinct: BTreeSet<u64> = ms
            .iter()
            .flat_map(|m| m.got.iter().map(|g| g.index))
            .collect();
        distinct.len() >= 3000
    });
    deliveries.extend(
        producer
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e)),
    );
    // Anything still in flight (a duplicate would be) shows up within a few more polls.
    for _ in 0..10 {
        for m in &mut members {
            m.pump();
        }
    }

    let after: Vec<usize> = members.iter().map(Member::rebalances).collect();
    eprintln!(
        "[test] rebalance callbacks per member: {stable_rebalances:?} when stable, {after:?} at the end"
    );
    assert!(
        stable_rebalances[0] >= 3,
        "g1-a saw {} rebalance callbacks: its partitions never moved to the later members",
        stable_rebalances[0]
    );
    let mut seen: HashMap<(i32, i64), Vec<&str>> = HashMap::new();
    for m in &members {
        eprintln!("[test] {} consumed {} messages", m.name, m.got.len());
        for g in &m.got {
            let want = deliveries[g.index as usize];
            assert_eq!(
                (g.partition, g.offset),
                want,
                "{}: message {} consumed at {:?}, produced at {want:?}",
                m.name,
                g.index,
                (g.partition, g.offset)
            );
            seen.entry((g.partition, g.offset))
                .or_default()
                .push(&m.name);
        }
    }
    let dups: Vec<_> = seen.iter().filter(|(_, v)| v.len() > 1).take(10).collect();
    assert!(
        dups.is_empty(),
        "{} messages consumed more than once, e.g. {dups:?}",
        seen.values().filter(|v| v.len() > 1).count()
    );
    assert_eq!(seen.len(), 3000, "distinct messages consumed");

    // Every member commits what it consumed; the group's offsets are then the log ends.
    for m in &members {
        m.consumer
            .commit_consumer_state(CommitMode::Sync)
            .unwrap_or_else(|e| panic!("{}: commit: {e}", m.name));
    }
    let ends = end_offsets(&deliveries, 12);
    let want: Vec<Option<i64>> = ends.iter().map(|&e| Some(e)).collect();
    poll_until("committed offsets are the log ends", GROUP_DEADLINE, || {
        let got = members[0].committed(12)?;
        if got == want {
            Ok(())
        } else {
            Err(format!("committed {got:?}, want {want:?}"))
        }
    });
    wait_offsets(
        "OffsetFetch (raw) shows the log ends",
        coord,
        group,
        topic,
        &ends,
    );
}

/// One member leaves (close: LeaveGroup), one is killed with SIGKILL (a child process): the
/// survivors take over every partition, within the session timeout after the leave and
/// within session timeout + slack after the death.
#[test]
fn left_and_killed_members_are_replaced() {
    let _serial = serial();
    let broker = Broker::start(group_broker_opts());
    let bs = broker.bootstrap();
    let topic = "g2-topic";
    let group = "g2";
    let seed = 22u64;
    create_topic(&bs, topic, 12);
    produce_messages(&producer_config(&bs, "all"), topic, seed, 0..600);
    let (_, coord) = wait_coordinator(
        "coordinator of g2",
        &[broker.addr()],
        group,
        GROUP_DEADLINE,
        |_| true,
    );

    let mut child = ChildConsumer::spawn(&bs, group, topic, "g2-child");
    let mut members = vec![
        Member::new(&bs, group, "g2-a", topic, seed, false),
        Member::new(&bs, group, "g2-b", topic, seed, false),
    ];
    wait_group(
        "3 members (one a child process) stable over 12 partitions",
        &mut members,
        GROUP_DEADLINE,
        |a| {
            child.check_running()?;
            if a.iter().any(|x| x.len() != 4) {
                return Err(format!("want 4 partitions each: {a:?}"));
            }
            check_stable(
                coord,
                group,
                topic,
                12,
                &["g2-a", "g2-b", "g2-child"],
                &[("g2-a", a[0].as_slice()), ("g2-b", a[1].as_slice())],
            )
        },
    );

    // g2-b leaves.
    let left_at = Instant::now();
    let b = members.remove(1);
    drop(b);
    eprintln!("[test] g2-b closed in {:?}", left_at.elapsed());
    wait_group(
        "g2-a and g2-child share the 12 partitions after g2-b left",
        &mut members,
        GROUP_DEADLINE,
        |a| {
            child.check_running()?;
            if a[0].len() != 6 {
                return Err(format!("g2-a holds {:?}, want 6 partitions", a[0]));
            }
            check_stable(
                coord,
                group,
                topic,
                12,
                &["g2-a", "g2-child"],
                &[("g2-a", a[0].as_slice())],
            )
        },
    );
    let leave_took = left_at.elapsed();
    eprintln!(
        "[test] rebalance after LeaveGroup: survivors own all partitions {leave_took:?} after the close began"
    );
    assert!(
        leave_took < SESSION_TIMEOUT,
        "the rebalance after a LeaveGroup took {leave_took:?}, not faster than the session \
         timeout {SESSION_TIMEOUT:?}: was the leave ignored and the member expired instead?"
    );

    // g2-child dies without a LeaveGroup.
    let killed_at = child.kill9();
    wait_group(
        "g2-a owns all 12 partitions after g2-child was killed",
        &mut members,
        SESSION_TIMEOUT + DEATH_SLACK + Duration::from_secs(30),
        |a| {
            if a[0] != (0..12).collect::<Vec<i32>>() {
                return Err(format!("g2-a holds {:?}", a[0]));
            }
            check_stable(
                coord,
                group,
                topic,
                12,
                &["g2-a"],
                &[("g2-a", a[0].as_slice())],
            )
        },
    );
    let death_took = killed_at.elapsed();
    eprintln!(
        "[test] kill -9 of a member to the survivor owning every partition: {death_took:?} \
         (session.timeout.ms {SESSION_TIMEOUT:?})"
    );
    assert!(
        death_took < SESSION_TIMEOUT + DEATH_SLACK,
        "the survivor owned every partition {death_took:?} after the kill, more than the \
         session timeout {SESSION_TIMEOUT:?} + {DEATH_SLACK:?}"
    );
}

/// A group commits, stops entirely, and starts again with new members: consumption resumes
/// exactly at the committed offsets (nothing before them again; everything after them, also
/// what was produced while the group was down).
#[test]
fn restarted_group_resumes_at_committed_offsets() {
    let _serial = serial();
    let broker = Broker::start(group_broker_opts());
    let bs = broker.bootstrap();
    let topic = "g3-topic";
    let group = "g3";
    let seed = 33u64;
    let parts = 4;
    create_topic(&bs, topic, parts);
    let first = produce_messages(&producer_config(&bs, "all"), topic, seed, 0..1000);
    let ends1 = end_offsets(&first, parts);
    let (_, coord) = wait_coordinator(
        "coordinator of g3",
        &[broker.addr()],
        group,
        GROUP_DEADLINE,
        |_| true,
    );

    // First incarnation: consume everything, but commit only the middle of each partition.
    let mut members = vec![
        Member::new(&bs, group, "g3-a", topic, seed, false),
        Member::new(&bs, group, "g3-b", topic, seed, false),
    ];
    wait_group(
        "g3-a and g3-b split 4 partitions",
        &mut members,
        GROUP_DEADLINE,
        |a| {
            check_partitioned(a, parts)?;
            check_stable(
                coord,
                group,
                topic,
                parts,
                &["g3-a", "g3-b"],
                &[("g3-a", a[0].as_slice()), ("g3-b", a[1].as_slice())],
            )
        },
    );
    consume_until("first 1000 messages consumed", &mut members, |ms| {
        ms.iter()
            .flat_map(|m| m.got.iter().map(|g| g.index))
            .collect::<BTreeSet<u64>>()
            .len()
            >= 1000
    });
    let commit: Vec<i64> = ends1.iter().map(|&e| e / 2).collect();
    eprintln!("[test] log ends {ends1:?}, committing {commit:?}");
    poll_until(
        "each member commits the middle of its partitions",
        GROUP_DEADLINE,
        || {
            for m in &mut members {
                m.pump();
            }
            for m in &members {
                let mine: Vec<(i32, i64)> = m
                    .assignment()
                    .into_iter()
                    .map(|p| (p, commit[p as usize]))
                    .collect();
                m.commit(&mine)?;
            }
            let got = members[0].committed(parts)?;
            let want: Vec<Option<i64>> = commit.iter().map(|&c| Some(c)).collect();
            if got == want {
                Ok(())
            } else {
                Err(format!("committed {got:?}, want {want:?}"))
            }
        },
    );

    // Stop the whole group.
    let stop = Instant::now();
    drop(members);
    eprintln!("[test] group g3 stopped in {:?}", stop.elapsed());
    poll_until("g3 is Empty", GROUP_DEADLINE, || {
        let v = describe_group(coord, group, topic)?;
        if v.state == "Empty" && v.members.is_empty() {
            Ok(())
        } else {
            Err(format!("{v:?}"))
        }
    });
    wait_offsets(
        "g3's offsets while it is down",
        coord,
        group,
        topic,
        &commit,
    );
    let second = produce_messages(&producer_config(&bs, "all"), topic, seed, 1000..1500);
    let mut all = first.clone();
    all.extend(second);
    let ends2 = end_offsets(&all, parts);

    // Second incarnation.
    let mut members = vec![
        Member::new(&bs, group, "g3-c", topic, seed, false),
        Member::new(&bs, group, "g3-d", topic, seed, false),
    ];
    let want: Vec<Option<i64>> = commit.iter().map(|&c| Some(c)).collect();
    let (got, _) = poll_until(
        "the new members see the committed offsets",
        GROUP_DEADLINE,
        || {
            for m in &mut members {
                m.pump();
            }
            members[1].committed(parts)
        },
    );
    assert_eq!(got, want, "committed offsets seen by the restarted group");
    consume_until(
        "the restarted group consumed every message from the commit point on",
        &mut members,
        |ms| {
            let have: BTreeSet<(i32, i64)> = ms
                .iter()
                .flat_map(|m| m.got.iter().map(|g| (g.partition, g.offset)))
                .collect();
            (0..parts)
                .all(|p| (commit[p as usize]..ends2[p as usize]).all(|o| have.contains(&(p, o))))
        },
    );
    let mut first_seen: BTreeMap<i32, i64> = BTreeMap::new();
    for m in &members {
        for g in &m.got {
            assert!(
                g.offset >= commit[g.partition as usize],
                "{}: re-delivered [{}]@{} (message {}) before the commit point {}",
                m.name,
                g.partition,
                g.offset,
                g.index,
                commit[g.partition as usize]
            );
            assert_eq!(
                all[g.index as usize],
                (g.partition, g.offset),
                "message {} position",
                g.index
            );
            let e = first_seen.entry(g.partition).or_insert(g.offset);
            *e = (*e).min(g.offset);
        }
    }
    let starts: Vec<i64> = (0..parts).map(|p| first_seen[&p]).collect();
    assert_eq!(
        starts, commit,
        "first offset consumed per partition after the restart"
    );
    let new_seen: BTreeSet<u64> = members
        .iter()
        .flat_map(|m| m.got.iter().map(|g| g.index))
        .filter(|&i| i >= 1000)
        .collect();
    assert_eq!(
        new_seen.len(),
        500,
        "messages produced while the group was down"
    );
}

/// 3 brokers, `__consumer_offsets` with RF 3: non-coordinators answer NOT_COORDINATOR; the
/// coordinator's broker is killed with SIGKILL after a commit; a new coordinator serves the
/// committed offsets (to the live member and to a new one) and the group consumes on from
/// them.
#[test]
fn coordinator_failover_keeps_committed_offsets() {
    let _serial = serial();
    let mut cluster = Cluster::start_with(
        ClusterOpts::new(3)
            .set("group.initial.rebalance.delay.ms", 0)
            .set("offsets.topic.num.partitions", 6)
            .set("offsets.topic.replication.factor", 3),
    );
    let bs = cluster.bootstrap();
    let topic = "g4-topic";
    let group = "g4";
    let seed = 44u64;
    let parts = 6;
    {
        let admin = admin(&bs);
        let opts =
            rdkafka::admin::AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let t =
            rdkafka::admin::NewTopic::new(topic, parts, rdkafka::admin::TopicReplication::Fixed(3));
        let res = futures::executor::block_on(admin.create_topics(&[t], &opts))
            .unwrap_or_else(|e| panic!("CreateTopics {topic}: {e}"));
        if let Err((t, code)) = &res[0] {
            panic!("CreateTopics {t}: {code:?}");
        }
    }
    wait_full_isr(&mut cluster, topic, parts as usize);
    let first = produce_messages(&producer_config(&bs, "all"), topic, seed, 0..600);
    let ends1 = end_offsets(&first, parts);

    let addrs: Vec<SocketAddr> = (0..3).map(|i| cluster.addr(i)).collect();
    let (coord_node, coord) = wait_coordinator(
        "all brokers name the coordinator of g4",
        &addrs,
        group,
        GROUP_DEADLINE,
        |n| (1..=3).contains(&n),
    );
    let coord_idx = Cluster::index_of(coord_node);
    assert_eq!(
        coord,
        cluster.addr(coord_idx),
        "coordinator address of node {coord_node}"
    );
    eprintln!("[test] coordinator of {group}: node {coord_node}");
    wait_full_isr(&mut cluster, "__consumer_offsets", 6);

    // Group requests to a broker that is not the coordinator.
    let other = cluster.addr((coord_idx + 1) % 3);
    let mut fails: Vec<String> = Vec::new();
    let mut expect = |what: &str, got: i16| {
        check(
            &mut fails,
            &format!("{what} at a non-coordinator"),
            got,
            NOT_COORDINATOR,
        )
    };
    let j: JoinGroupResponse = call(
        other,
        ApiKey::JoinGroup,
        5,
        &join_group_req(group, "", 10_000, topic),
    );
    expect("JoinGroup", j.error_code);
    expect("Heartbeat", heartbeat(other, group, 1, "not-a-member"));
    expect(
        "SyncGroup",
        sync_group(other, group, 1, "not-a-member", &[]).0,
    );
    let oc = offset_commit(other, group, 1, "not-a-member", topic, &[(0, 1)])
        .unwrap_or_else(|e| panic!("{e}"));
    expect("OffsetCommit", oc[0]);
    let (of, _) = offset_fetch(other, group, topic, parts).unwrap_or_else(|e| panic!("{e}"));
    expect("OffsetFetch", of);
    let mut dreq = DescribeGroupsRequest::default();
    dreq.groups = vec![group_id(group)];
    let d: DescribeGroupsResponse = call(other, ApiKey::DescribeGroups, 5, &dreq);
    expect(
        "DescribeGroups",
        d.groups.first().map_or(-1, |g| g.error_code),
    );
    expect("LeaveGroup", leave_group(other, group, "not-a-member").0);
    expect("DeleteGroups", delete_group(other, group));
    assert!(
        fails.is_empty(),
        "NOT_COORDINATOR checks failed:\n{}",
        fails.join("\n")
    );

    // A member consumes everything and commits a third of each partition.
    let mut members = vec![Member::new(&bs, group, "g4-a", topic, seed, false)];
    consume_until("g4-a consumed the first 600 messages", &mut members, |ms| {
        ms[0]
            .got
            .iter()
            .map(|g| g.index)
            .collect::<BTreeSet<u64>>()
            .len()
            >= 600
    });
    let commit: Vec<i64> = ends1.iter().map(|&e| e / 3).collect();
    poll_until("g4-a commits", GROUP_DEADLINE, || {
        members[0].pump();
        let all: Vec<(i32, i64)> = (0..parts).map(|p| (p, commit[p as usize])).collect();
        members[0].commit(&all)
    });
    wait_offsets(
        "the coordinator serves g4's offsets",
        coord,
        group,
        topic,
        &commit,
    );

    // Kill the coordinator's broker.
    cluster.kill9(coord_idx);
    let killed_at = Instant::now();
    let survivors: Vec<SocketAddr> = cluster
        .running()
        .into_iter()
        .map(|i| cluster.addr(i))
        .collect();
    let (new_node, new_coord) = wait_coordinator(
        "the survivors name a new coordinator of g4",
        &survivors,
        group,
        FAILOVER_DEADLINE,
        |n| n != coord_node && (1..=3).contains(&n),
    );
    eprintln!(
        "[test] new coordinator: node {new_node}, {:?} after the kill",
        killed_at.elapsed()
    );
    wait_offsets(
        "the new coordinator serves g4's offsets",
        new_coord,
        group,
        topic,
        &commit,
    );
    eprintln!(
        "[test] committed offsets served again {:?} after the kill",
        killed_at.elapsed()
    );
    let want: Vec<Option<i64>> = commit.iter().map(|&c| Some(c)).collect();
    poll_until(
        "g4-a (alive through the failover) fetches the committed offsets",
        FAILOVER_DEADLINE,
        || {
            members[0].pump();
            let got = members[0].committed(parts)?;
            if got == want {
                Ok(())
            } else {
                Err(format!("committed {got:?}, want {want:?}"))
            }
        },
    );
    drop(members);

    // More data, then a new member of the same group consumes from the commit point.
    let bs2 = cluster.bootstrap();
    let second = produce_messages(&producer_config(&bs2, "all"), topic, seed, 600..800);
    let mut all = first.clone();
    all.extend(second);
    let ends2 = end_offsets(&all, parts);
    let mut members = vec![Member::new(&bs2, group, "g4-b", topic, seed, false)];
    let (got, _) = poll_until("g4-b fetches the committed offsets", GROUP_DEADLINE, || {
        members[0].pump();
        members[0].committed(parts)
    });
    assert_eq!(
        got, want,
        "committed offsets after the coordinator failover"
    );
    consume_until(
        "g4-b consumed from the commit point to the end",
        &mut members,
        |ms| {
            let have: BTreeSet<(i32, i64)> =
                ms[0].got.iter().map(|g| (g.partition, g.offset)).collect();
            (0..parts)
                .all(|p| (commit[p as usize]..ends2[p as usize]).all(|o| have.contains(&(p, o))))
        },
    );
    let mut first_seen = vec![i64::MAX; parts as usize];
    for g in &members[0].got {
        assert_eq!(
            all[g.index as usize],
            (g.partition, g.offset),
            "message {} position",
            g.index
        );
        first_seen[g.partition as usize] = first_seen[g.partition as usize].min(g.offset);
    }
    assert_eq!(
        first_seen, commit,
        "first offset consumed per partition after the failover"
    );
    let (_, view) = poll_until(
        "g4 Stable with g4-b at the new coordinator",
        GROUP_DEADLINE,
        || {
            members[0].pump();
            check_stable(new_coord, group, topic, parts, &["g4-b"], &[])
        },
    );
    eprintln!("[test] {view:?}");
}

/// Waits until every running member shows `topic` with `partitions` partitions, each led and
/// with its three replicas all in the ISR.
fn wait_full_isr(cluster: &mut Cluster, topic: &str, partitions: usize) {
    let sorted = |v: &[i32]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    };
    cluster.wait_metadata(
        &format!("{topic}: {partitions} partitions, RF 3, full ISR"),
        GROUP_DEADLINE,
        Some(&[topic]),
        |_, md| {
            topic_views(md).get(topic).is_some_and(|ps| {
                ps.len() == partitions
                    && ps.iter().all(|p| {
                        p.error == NONE
                            && p.leader >= 0
                            && p.replicas.len() == 3
                            && sorted(&p.isr) == sorted(&p.replicas)
                    })
            })
        },
    );
}

/// The classic protocol's error codes over raw requests, on a broker with the default 50
/// offsets partitions.
#[test]
fn raw_protocol_errors() {
    let _serial = serial();
    let broker = Broker::start(BrokerOpts::new().set("group.initial.rebalance.delay.ms", 0));
    let bs = broker.bootstrap();
    let topic = "raw-topic";
    let group = "raw-group";
    create_topic(&bs, topic, 3);
    let (node, coord) = wait_coordinator(
        "coordinator of raw-group",
        &[broker.addr()],
        group,
        GROUP_DEADLINE,
        |_| true,
    );
    assert_eq!(coord, broker.addr(), "coordinator (node {node}) address");
    // The offsets topic with its default 50 partitions, RF capped at the one live broker.
    let (parts, _) = poll_until(
        "__consumer_offsets has 50 led partitions",
        GROUP_DEADLINE,
        || {
            let md = try_metadata(
                broker.addr(),
                Some(&["__consumer_offsets"]),
                Duration::from_secs(10),
            )
            .map_err(|e| e.to_string())?;
            let views = topic_views(&md);
            let ps = views
                .get("__consumer_offsets")
                .ok_or("no __consumer_offsets")?;
            if ps.iter().all(|p| p.leader >= 0 && p.error == NONE) {
                Ok(ps.clone())
            } else {
                Err(format!("{ps:?}"))
            }
        },
    );
    assert_eq!(parts.len(), 50, "__consumer_offsets partitions (default)");
    assert!(
        parts.iter().all(|p| p.replicas.len() == 1),
        "RF capped at 1 live broker: {parts:?}"
    );

    let mut fails: Vec<String> = Vec::new();

    // Session timeouts outside [group.min.session.timeout.ms, group.max.session.timeout.ms].
    let r = join_group(coord, group, "", 1_000, topic);
    check(
        &mut fails,
        "JoinGroup with session timeout 1000 ms",
        r.error_code,
        INVALID_SESSION_TIMEOUT,
    );
    let r = join_group(coord, group, "", 1_800_001, topic);
    check(
        &mut fails,
        "JoinGroup with session timeout 1800001 ms",
        r.error_code,
        INVALID_SESSION_TIMEOUT,
    );

    // JoinGroup v5 without a member id: MEMBER_ID_REQUIRED with one to use.
    let r = join_group(coord, group, "", 30_000, topic);
    assert_eq!(
        r.error_code, MEMBER_ID_REQUIRED,
        "first JoinGroup v5: {r:?}"
    );
    let me = r.member_id.to_string();
    assert!(
        !me.is_empty(),
        "MEMBER_ID_REQUIRED without a member id: {r:?}"
    );
    let r = join_group(coord, group, &me, 30_000, topic);
    assert_eq!(
        r.error_code, NONE,
        "JoinGroup with the given member id: {r:?}"
    );
    let generation = r.generation_id;
    assert!(generation >= 1, "generation {generation}");
    assert_eq!(r.member_id.as_str(), me, "member id kept");
    assert_eq!(r.leader.as_str(), me, "the only member leads");
    assert_eq!(
        r.protocol_name.as_ref().map(|p| p.as_str()),
        Some("range"),
        "protocol"
    );
    assert_eq!(r.members.len(), 1, "leader sees its member: {r:?}");
    assert_eq!(r.members[0].member_id.as_str(), me);
    assert_eq!(
        r.members[0].metadata,
        subscription_bytes(topic),
        "subscription echoed"
    );

    // SyncGroup as the leader.
    let mine = assignment_bytes(topic, &[0, 1, 2]);
    let (err, got) = sync_group(
        coord,
        group,
        generation,
        &me,
        &[(me.as_str(), mine.clone())],
    );
    assert_eq!(err, NONE, "SyncGroup as leader");
    assert_eq!(got, mine, "the leader's own assignment comes back");
    check(
        &mut fails,
        "Heartbeat of the member",
        heartbeat(coord, group, generation, &me),
        NONE,
    );

    // Stale and unknown.
    check(
        &mut fails,
        "Heartbeat with the previous generation",
        heartbeat(coord, group, generation - 1, &me),
        ILLEGAL_GENERATION,
    );
    check(
        &mut fails,
        "Heartbeat with a future generation",
        heartbeat(coord, group, generation + 1, &me),
        ILLEGAL_GENERATION,
    );
    check(
        &mut fails,
        "Heartbeat of an unknown member",
        heartbeat(coord, group, generation, "nobody"),
        UNKNOWN_MEMBER_ID,
    );
    check(
        &mut fails,
        "SyncGroup of an unknown member",
        sync_group(coord, group, generation, "nobody", &[]).0,
        UNKNOWN_MEMBER_ID,
    );
    check(
        &mut fails,
        "SyncGroup with the previous generation",
        sync_group(coord, group, generation - 1, &me, &[]).0,
        ILLEGAL_GENERATION,
    );
    let oc = offset_commit(coord, group, generation, "nobody", topic, &[(0, 1)])
        .unwrap_or_else(|e| panic!("{e}"));
    check(
        &mut fails,
        "OffsetCommit of an unknown member",
        oc[0],
        UNKNOWN_MEMBER_ID,
    );
    let oc = offset_commit(coord, group, generation - 1, &me, topic, &[(0, 1)])
        .unwrap_or_else(|e| panic!("{e}"));
    check(
        &mut fails,
        "OffsetCommit with the previous generation",
        oc[0],
        ILLEGAL_GENERATION,
    );
    let r = join_group(coord, group, "nobody", 30_000, topic);
    check(
        &mut fails,
        "JoinGroup with an unknown member id",
        r.error_code,
        UNKNOWN_MEMBER_ID,
    );

    // A valid commit, visible to OffsetFetch.
    let oc = offset_commit(
        coord,
        group,
        generation,
        &me,
        topic,
        &[(0, 0), (1, 0), (2, 0)],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    check(
        &mut fails,
        "OffsetCommit of the member",
        oc.iter().copied().find(|&e| e != NONE).unwrap_or(NONE),
        NONE,
    );
    let (err, offsets) = offset_fetch(coord, group, topic, 3).unwrap_or_else(|e| panic!("{e}"));
    check(&mut fails, "OffsetFetch", err, NONE);
    if offsets != vec![Ok(0), Ok(0), Ok(0)] {
        fails.push(format!(
            "OffsetFetch after a commit of 0, 0, 0: {offsets:?}"
        ));
    }

    // DeleteGroups.
    check(
        &mut fails,
        "DeleteGroups of a group with a member",
        delete_group(coord, group),
        NON_EMPTY_GROUP,
    );
    check(
        &mut fails,
        "DeleteGroups of an unknown group",
        delete_group(coord, "no-such-group"),
        GROUP_ID_NOT_FOUND,
    );

    // DescribeGroups, then leave.
    match describe_group(coord, group, topic) {
        Ok(v) => {
            let ok = v.state == "Stable"
                && v.protocol_type == "consumer"
                && v.protocol == "range"
                && v.members.len() == 1
                && v.members[0].member_id == me
                && v.members[0].partitions == vec![0, 1, 2];
            if !ok {
                fails.push(format!("DescribeGroups of the stable group: {v:?}"));
            }
        }
        Err(e) => fails.push(e),
    }
    let (err, member_err) = leave_group(coord, group, &me);
    check(&mut fails, "LeaveGroup", err, NONE);
    check(
        &mut fails,
        "LeaveGroup (member)",
        member_err.unwrap_or(-1),
        NONE,
    );
    match describe_group(coord, group, topic) {
        Ok(v) if v.state == "Empty" && v.members.is_empty() => {}
        Ok(v) => fails.push(format!("DescribeGroups after the leave: {v:?}")),
        Err(e) => fails.push(e),
    }
    check(
        &mut fails,
        "Heartbeat after leaving",
        heartbeat(coord, group, generation, &me),
        UNKNOWN_MEMBER_ID,
    );
    assert!(
        fails.is_empty(),
        "group protocol checks failed:\n{}",
        fails.join("\n")
    );
}

/// The committed offsets of an empty group survive broker restarts (clean and kill -9);
/// DeleteGroups removes them for good.
#[test]
fn empty_group_offsets_survive_restart_and_delete_groups_removes_them() {
    let _serial = serial();
    let mut broker = Broker::start(group_broker_opts());
    let bs = broker.bootstrap();
    let topic = "g6-topic";
    let group = "g6";
    let seed = 66u64;
    let parts = 3;
    create_topic(&bs, topic, parts);
    let deliveries = produce_messages(&producer_config(&bs, "all"), topic, seed, 0..300);
    let ends = end_offsets(&deliveries, parts);
    let commit: Vec<i64> = ends.iter().map(|&e| e / 3 + 1).collect();
    let (_, coord) = wait_coordinator(
        "coordinator of g6",
        &[broker.addr()],
        group,
        GROUP_DEADLINE,
        |_| true,
    );

    {
        let mut members = vec![Member::new(&bs, group, "g6-a", topic, seed, false)];
        wait_group(
            "g6-a holds all 3 partitions",
            &mut members,
            GROUP_DEADLINE,
            |a| check_partitioned(a, parts),
        );
        poll_until("g6-a commits", GROUP_DEADLINE, || {
            members[0].pump();
            let all: Vec<(i32, i64)> = (0..parts).map(|p| (p, commit[p as usize])).collect();
            members[0].commit(&all)
        });
    }
    poll_until("g6 is Empty", GROUP_DEADLINE, || {
        let v = describe_group(coord, group, topic)?;
        if v.state == "Empty" && v.members.is_empty() {
            Ok(())
        } else {
            Err(format!("{v:?}"))
        }
    });
    wait_offsets(
        "g6's offsets before any restart",
        coord,
        group,
        topic,
        &commit,
    );

    broker.restart();
    wait_offsets(
        "g6's offsets after a clean restart",
        coord,
        group,
        topic,
        &commit,
    );
    broker.kill9();
    broker.restart();
    wait_offsets(
        "g6's offsets after kill -9 and restart",
        coord,
        group,
        topic,
        &commit,
    );

    let (err, _) = poll_until("DeleteGroups(g6)", GROUP_DEADLINE, || {
        let e = delete_group(coord, group);
        if RETRIABLE.contains(&e) {
            Err(format!("error {e}"))
        } else {
            Ok(e)
        }
    });
    assert_eq!(err, NONE, "DeleteGroups of an empty group");
    let none = vec![-1i64; parts as usize];
    wait_offsets(
        "g6's offsets are gone after DeleteGroups",
        coord,
        group,
        topic,
        &none,
    );
    assert_eq!(
        delete_group(coord, group),
        GROUP_ID_NOT_FOUND,
        "DeleteGroups again"
    );

    broker.restart();
    wait_offsets(
        "g6's offsets are still gone after a restart",
        coord,
        group,
        topic,
        &none,
    );
    let (err, _) = poll_until("DeleteGroups(g6) after the restart", GROUP_DEADLINE, || {
        let e = delete_group(coord, group);
        if RETRIABLE.contains(&e) {
            Err(format!("error {e}"))
        } else {
            Ok(e)
        }
    });
    assert_eq!(
        err, GROUP_ID_NOT_FOUND,
        "the deleted group stays deleted across a restart"
    );
}

/// `offsets.retention.minutes`: offsets committed without a group membership (generation -1,
/// as a standalone consumer or a tool commits) are removed once retention has passed since
/// their commit, and the group is gone; a later commit starts a new life. The broker's
/// minimum retention is one minute, so this test waits about that long.
#[test]
fn offsets_expire_after_retention() {
    let _serial = serial();
    let broker = Broker::start(
        group_broker_opts()
            .set("offsets.retention.minutes", 1)
            .set("offsets.retention.check.interval.ms", 500),
    );
    let topic = "g7-topic";
    let group = "g7";
    create_topic(&broker.bootstrap(), topic, 2);
    let (_, coord) = wait_coordinator(
        "coordinator of g7",
        &[broker.addr()],
        group,
        GROUP_DEADLINE,
        |_| true,
    );
    let committed_at = Instant::now();
    let (codes, _) = poll_until("standalone OffsetCommit(g7)", GROUP_DEADLINE, || {
        let codes = offset_commit(coord, group, -1, "", topic, &[(0, 5), (1, 7)])?;
        if codes.iter().any(|c| RETRIABLE.contains(c)) {
            return Err(format!("retriable {codes:?}"));
        }
        Ok(codes)
    });
    assert_eq!(codes, vec![NONE, NONE], "standalone commit");
    wait_offsets("g7's offsets are served", coord, group, topic, &[5, 7]);

    let gone_after = poll_until("g7's offsets expire", Duration::from_secs(150), || {
        let (err, got) = offset_fetch(coord, group, topic, 2)?;
        match (err, got.as_slice()) {
            (NONE, [Ok(-1), Ok(-1)]) => Ok(committed_at.elapsed()),
            _ => Err(format!("error {err}, offsets {got:?}")),
        }
    })
    .0;
    eprintln!("[test] g7's offsets expired {gone_after:?} after the commit");
    assert!(
        gone_after >= Duration::from_secs(59),
        "offsets expired before offsets.retention.minutes=1 passed: {gone_after:?}"
    );
    assert_eq!(
        delete_group(coord, group),
        GROUP_ID_NOT_FOUND,
        "expired group"
    );
}
