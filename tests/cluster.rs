//! Multi-broker clusters: every broker is a controller voter (`controller.quorum.voters`),
//! brokers register and heartbeat, a silent broker is fenced (dropped from Metadata, out of
//! ISRs, its leaderships moved), and topics are placed with Kafka's round robin.
//!
//! Each test starts its own cluster of real `corelog serve --cores 1` processes (3 unless
//! stated) and kills them on drop. The tests run one at a time (`serial()`): a 2-core machine
//! running 9+ brokers at once would starve heartbeats and elections. Every wait polls with a
//! generous deadline and prints the time taken.
//!
//! Tests that are not about failures run with `broker.session.timeout.ms=10000`: replication
//! does not exist yet, so a broker fenced by a scheduling stall on a loaded machine would leave
//! the ISRs for good and turn a placement check into noise. The failure tests (kill -9,
//! fencing, controller failover) keep the default 1500 ms.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use kafka_protocol::messages::MetadataResponse;
use rdkafka::admin::{AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

/// Deadline for a metadata change (creation, fencing, failover) to show on every broker.
const METADATA_DEADLINE: Duration = Duration::from_secs(60);
/// Deadline for a killed broker to be fenced and its leaderships moved (session timeout is
/// 1.5 s; the rest is margin for a loaded machine).
const FENCE_DEADLINE: Duration = Duration::from_secs(30);
/// Deadline for a new controller to be elected after the active one is killed.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);

const LEADER_NOT_AVAILABLE: i16 = 5;

/// One cluster test at a time, in this binary.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A 3-broker cluster for tests that do not kill anything.
fn steady_cluster() -> Cluster {
    Cluster::start_with(ClusterOpts::new(3).set("broker.session.timeout.ms", 10_000))
}

type Views = BTreeMap<String, Vec<PartitionView>>;

/// Creates topics `(name, partitions, replication factor)` through rdkafka's AdminClient and
/// panics unless every one succeeds.
fn admin_create(bootstrap: &str, topics: &[(&str, i32, i32)]) {
    let admin = admin(bootstrap);
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|&(n, p, rf)| NewTopic::new(n, p, TopicReplication::Fixed(rf)))
        .collect();
    let start = Instant::now();
    let res = futures::executor::block_on(admin.create_topics(&new, &opts))
        .unwrap_or_else(|e| panic!("CreateTopics {topics:?}: {e}"));
    assert_eq!(res.len(), topics.len(), "CreateTopics results: {res:?}");
    for r in &res {
        if let Err((t, code)) = r {
            panic!("CreateTopics {t}: {code:?}");
        }
    }
    eprintln!("[test] created {topics:?} in {:?}", start.elapsed());
}

/// True when `md` shows every topic of `expect` (name -> partition count) with that many
/// partitions, each with a leader.
fn complete(md: &MetadataResponse, expect: &BTreeMap<&str, usize>) -> bool {
    let views = topic_views(md);
    expect.iter().all(|(name, &n)| {
        views
            .get(*name)
            .is_some_and(|ps| ps.len() == n && ps.iter().all(|p| p.leader >= 0 && p.error == NONE))
    })
}

/// Polls every running broker until each shows `expect` completely (see `complete`) and
/// they all show the same partitions (leader, epoch, replicas, ISR, offline replicas) and the
/// same broker list; returns that common view of the `expect` topics.
fn converged(cluster: &mut Cluster, what: &str, expect: &BTreeMap<&str, usize>) -> Views {
    converged_by(cluster, what, METADATA_DEADLINE, expect, |_| true)
}

/// `converged`, additionally requiring `ok` of the common view.
fn converged_by(
    cluster: &mut Cluster,
    what: &str,
    deadline: Duration,
    expect: &BTreeMap<&str, usize>,
    ok: impl Fn(&Views) -> bool,
) -> Views {
    let names: Vec<&str> = expect.keys().copied().collect();
    let start = Instant::now();
    loop {
        let answers = cluster.wait_metadata(
            &format!("{what}: every broker shows {names:?}"),
            deadline.saturating_sub(start.elapsed()),
            Some(&names),
            |_, md| complete(md, expect) && ok(&topic_views(md)),
        );
        let views: Vec<(usize, Vec<i32>, Views)> = answers
            .iter()
            .map(|(i, md)| (*i, listed_brokers(md), topic_views(md)))
            .collect();
        let same = views
            .windows(2)
            .all(|w| w[0].1 == w[1].1 && w[0].2 == w[1].2);
        if same && ok(&views[0].2) {
            eprintln!(
                "[test] {what}: brokers {:?} agree after {:?}",
                views.iter().map(|v| v.0 + 1).collect::<Vec<_>>(),
                start.elapsed()
            );
            return views.into_iter().next().unwrap().2;
        }
        if start.elapsed() > deadline {
            let shown: Vec<String> = views
                .iter()
                .map(|(i, b, v)| format!("node {}: brokers {b:?} {v:?}", i + 1))
                .collect();
            panic!(
                "{what}: brokers do not agree (or the view is not accepted) after {:?}:\n{}",
                start.elapsed(),
                shown.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks a freshly created topic on an all-live cluster of `brokers`: `rf` distinct replicas
/// per partition, all existing brokers, the preferred (first) replica leads, ISR = replicas,
/// nothing offline, leaders balanced as Kafka's round robin balances them.
fn check_fresh_placement(name: &str, parts: &[PartitionView], rf: usize, brokers: &[i32]) {
    let mut leaders: BTreeMap<i32, usize> = brokers.iter().map(|&b| (b, 0)).collect();
    for (i, p) in parts.iter().enumerate() {
        let distinct: BTreeSet<i32> = p.replicas.iter().copied().collect();
        assert_eq!(p.replicas.len(), rf, "{name}[{i}]: replicas {p:?}");
        assert_eq!(
            distinct.len(),
            rf,
            "{name}[{i}]: replicas not distinct {p:?}"
        );
        assert!(
            p.replicas.iter().all(|r| brokers.contains(r)),
            "{name}[{i}]: replica on a broker not in {brokers:?}: {p:?}"
        );
        assert_eq!(p.error, NONE, "{name}[{i}]: {p:?}");
        assert_eq!(
            p.leader, p.replicas[0],
            "{name}[{i}]: a fresh partition is led by its first replica: {p:?}"
        );
        assert!(p.leader_epoch >= 0, "{name}[{i}]: {p:?}");
        let isr: BTreeSet<i32> = p.isr.iter().copied().collect();
        assert_eq!(isr, distinct, "{name}[{i}]: ISR != replicas: {p:?}");
        assert_eq!(p.isr.len(), rf, "{name}[{i}]: {p:?}");
        assert!(p.offline.is_empty(), "{name}[{i}]: offline replicas {p:?}");
        *leaders.get_mut(&p.leader).unwrap() += 1;
    }
    let n = brokers.len();
    let (lo, hi) = (parts.len() / n, parts.len().div_ceil(n));
    eprintln!("[test] {name}: leaders per broker {leaders:?}");
    for (b, c) in &leaders {
        assert!(
            (lo..=hi).contains(c),
            "{name}: broker {b} leads {c} of {} partitions, expected {lo}..={hi}: {leaders:?}",
            parts.len()
        );
    }
}

/// rdkafka's view of the cluster, asked of member `i` alone (bootstrap = that broker):
/// broker ids with ports, and per topic per partition (leader, replicas, ISR).
type RdView = (
    BTreeMap<i32, i32>,
    BTreeMap<String, Vec<(i32, Vec<i32>, Vec<i32>)>>,
);

fn rdkafka_view(cluster: &Cluster, i: usize, names: &[&str]) -> RdView {
    let consumer: BaseConsumer = consumer_config(&cluster.brokers[i].bootstrap())
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("rdkafka metadata via node {}: {e}", i + 1));
    let brokers = md.brokers().iter().map(|b| (b.id(), b.port())).collect();
    let topics = md
        .topics()
        .iter()
        .filter(|t| names.contains(&t.name()))
        .map(|t| {
            let mut ps: Vec<_> = t
                .partitions()
                .iter()
                .map(|p| {
                    (
                        p.id(),
                        (p.leader(), p.replicas().to_vec(), p.isr().to_vec()),
                    )
                })
                .collect();
            ps.sort_by_key(|(id, _)| *id);
            (
                t.name().to_string(),
                ps.into_iter().map(|(_, v)| v).collect(),
            )
        })
        .collect();
    (brokers, topics)
}

// ---------------------------------------------------------------------------------------------
// 1. Placement
// ---------------------------------------------------------------------------------------------

#[test]
fn placement_is_identical_everywhere_distinct_and_balanced() {
    let _serial = serial();
    let mut cluster = steady_cluster();
    let specs: Vec<(String, i32, i32)> = [1, 2, 3]
        .iter()
        .flat_map(|&rf| [1, 7, 64].map(|p| (format!("place-rf{rf}-p{p}"), p, rf)))
        .collect();
    let specs_ref: Vec<(&str, i32, i32)> = specs
        .iter()
        .map(|(n, p, rf)| (n.as_str(), *p, *rf))
        .collect();
    admin_create(&cluster.bootstrap(), &specs_ref);
    let expect: BTreeMap<&str, usize> =
        specs_ref.iter().map(|&(n, p, _)| (n, p as usize)).collect();
    let views = converged(&mut cluster, "9 topics", &expect);

    // Each broker separately, once more, compared field by field with the common view.
    for i in 0..cluster.len() {
        let md = cluster.metadata_from(i, Some(&expect.keys().copied().collect::<Vec<_>>()));
        assert_eq!(listed_brokers(&md), vec![1, 2, 3], "node {}", i + 1);
        assert_eq!(
            topic_views(&md),
            views,
            "node {} disagrees with the others",
            i + 1
        );
        let ports: BTreeMap<i32, i32> = md.brokers.iter().map(|b| (b.node_id.0, b.port)).collect();
        let want: BTreeMap<i32, i32> = (0..cluster.len())
            .map(|j| (Cluster::node_id(j), i32::from(cluster.brokers[j].port())))
            .collect();
        assert_eq!(ports, want, "node {}: advertised ports", i + 1);
    }

    for &(name, _, rf) in &specs_ref {
        check_fresh_placement(name, &views[name], rf as usize, &[1, 2, 3]);
    }

    // librdkafka sees the same, whichever broker it bootstraps from.
    let names: Vec<&str> = expect.keys().copied().collect();
    for i in 0..cluster.len() {
        let (brokers, topics) = rdkafka_view(&cluster, i, &names);
        let ports: BTreeMap<i32, i32> = (0..cluster.len())
            .map(|j| (Cluster::node_id(j), i32::from(cluster.brokers[j].port())))
            .collect();
        assert_eq!(brokers, ports, "rdkafka via node {}: brokers", i + 1);
        for name in &names {
            let want: Vec<(i32, Vec<i32>, Vec<i32>)> = views[*name]
                .iter()
                .map(|p| (p.leader, p.replicas.clone(), p.isr.clone()))
                .collect();
            assert_eq!(
                topics.get(*name),
                Some(&want),
                "rdkafka via node {}: topic {name}",
                i + 1
            );
        }
    }

    // Any broker takes DeleteTopics (here the last one alone); every broker forgets the topics.
    let gone = ["place-rf1-p64", "place-rf2-p7", "place-rf3-p1"];
    let admin = admin(&cluster.brokers[2].bootstrap());
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let res = futures::executor::block_on(admin.delete_topics(&gone, &opts)).expect("DeleteTopics");
    let want: Vec<Result<String, (String, RDKafkaErrorCode)>> =
        gone.iter().map(|t| Ok(t.to_string())).collect();
    assert_eq!(res, want, "DeleteTopics via node 3");
    cluster.wait_metadata(
        "deleted topics gone from every broker",
        METADATA_DEADLINE,
        None,
        |_, md| {
            let v = topic_views(md);
            // The consumers above created the internal __consumer_offsets topic.
            let user_topics = v.keys().filter(|t| !t.starts_with("__")).count();
            user_topics == names.len() - gone.len() && gone.iter().all(|t| !v.contains_key(*t))
        },
    );
    cluster.assert_running_alive();
}

// ---------------------------------------------------------------------------------------------
// 2. Produce and consume across leaders
// ---------------------------------------------------------------------------------------------

#[test]
fn produce_acks_all_and_consume_across_three_leaders() {
    let _serial = serial();
    let mut cluster = steady_cluster();
    let topic = "pc-rf3";
    let partitions = 6;
    let bootstrap = cluster.bootstrap();
    admin_create(&bootstrap, &[(topic, partitions, 3)]);
    let views = converged(
        &mut cluster,
        "pc-rf3",
        &[(topic, partitions as usize)].into_iter().collect(),
    );
    let leaders: BTreeSet<i32> = views[topic].iter().map(|p| p.leader).collect();
    assert_eq!(leaders, BTreeSet::from([1, 2, 3]), "leaders {views:?}");
    wait_topic_ready(&bootstrap, topic, partitions);

    const N: u64 = 3000;
    let seed = 0x00C1_57E2;
    let mut cfg = producer_config(&bootstrap, "all");
    // Every delivery report arrives within this (success or failure): bounds the wait below.
    cfg.set("message.timeout.ms", "60000");
    let producer: FutureProducer<rdkafka::client::DefaultClientContext, ThreadRuntime> =
        cfg.create().expect("FutureProducer");
    let start = Instant::now();
    let mut futures = Vec::with_capacity(N as usize);
    for i in 0..N {
        let (k, v) = message(seed, i);
        let mut rec = FutureRecord::to(topic).key(&k).payload(&v);
        loop {
            match producer.send_result(rec) {
                Ok(f) => break futures.push(f),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    rec = r;
                    assert!(start.elapsed() < STALL_DEADLINE, "producer queue full");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("send message {i}: {e}"),
            }
        }
    }
    let results = futures::executor::block_on(futures::future::join_all(futures));
    let elapsed = start.elapsed();
    eprintln!(
        "[test] {N} acks=all deliveries in {elapsed:?} ({:.0} msg/s)",
        N as f64 / elapsed.as_secs_f64()
    );
    let deliveries: Vec<(i32, i64)> = results
        .into_iter()
        .enumerate()
        .map(|(i, r)| match r {
            Ok(Ok(d)) => (d.partition, d.offset),
            Ok(Err((e, _))) => panic!("message {i}: delivery failed: {e}"),
            Err(_) => panic!("message {i}: delivery future canceled"),
        })
        .collect();
    let used: BTreeSet<i32> = deliveries.iter().map(|d| d.0).collect();
    assert_eq!(
        used.len(),
        partitions as usize,
        "keys should spread over every partition: {used:?}"
    );
    let start = Instant::now();
    let n = verify_topic(&bootstrap, topic, partitions, seed, &deliveries);
    assert_eq!(n, N as usize);
    eprintln!("[test] verified {n} messages in {:?}", start.elapsed());
    cluster.assert_running_alive();
}

// ---------------------------------------------------------------------------------------------
// 3. A killed broker is fenced, its leaderships move; restarted, it is back
// ---------------------------------------------------------------------------------------------

#[test]
fn killed_broker_is_fenced_and_its_leaderships_move() {
    let _serial = serial();
    let mut cluster = Cluster::start(3);
    let topics = [
        ("fence-rf1", 3, 1),
        ("fence-rf2", 6, 2),
        ("fence-rf3", 6, 3),
    ];
    admin_create(&cluster.bootstrap(), &topics);
    let expect: BTreeMap<&str, usize> = topics.iter().map(|&(n, p, _)| (n, p as usize)).collect();
    let before = converged(&mut cluster, "fence topics", &expect);

    let controller = cluster.wait_controller("a controller", METADATA_DEADLINE, |_| true);
    let victim_id = (1..=3).find(|&b| b != controller).unwrap();
    let victim = Cluster::index_of(victim_id);
    let led: Vec<(&str, usize)> = before
        .iter()
        .flat_map(|(t, ps)| {
            ps.iter()
                .enumerate()
                .filter(|(_, p)| p.leader == victim_id)
                .map(move |(i, _)| (t.as_str(), i))
        })
        .collect();
    eprintln!("[test] controller {controller}; killing node {victim_id}, which leads {led:?}");
    assert!(
        led.iter().any(|(t, _)| *t != "fence-rf1"),
        "the victim should lead a replicated partition: {before:?}"
    );

    let killed_at = Instant::now();
    cluster.kill9(victim);
    let survivors: Vec<i32> = cluster.running_ids();
    // Every survivor stops listing the victim and shows its partitions re-led.
    let moved = |views: &Views| -> bool {
        before.iter().all(|(t, old_ps)| {
            old_ps.iter().zip(&views[t]).all(|(old, new)| {
                if !old.replicas.contains(&victim_id) {
                    return new == old;
                }
                if old.replicas.len() == 1 {
                    // Last ISR member: kept in the ISR, leaderless until it returns.
                    return new.leader == -1 && new.isr == old.isr;
                }
                let isr_ok = !new.isr.contains(&victim_id) && new.offline == vec![victim_id];
                if old.leader == victim_id {
                    isr_ok && new.leader != victim_id && new.leader >= 0
                } else {
                    isr_ok && new.leader == old.leader
                }
            })
        })
    };
    // `converged_by` also requires a leader everywhere; the RF 1 partitions on the victim
    // have none now, so wait on the others here and check RF 1 below.
    let replicated: BTreeMap<&str, usize> = expect
        .iter()
        .filter(|(n, _)| **n != "fence-rf1")
        .map(|(n, p)| (*n, *p))
        .collect();
    let answers = cluster.wait_metadata(
        &format!("survivors {survivors:?} fence node {victim_id} and re-lead its partitions"),
        FENCE_DEADLINE,
        Some(&expect.keys().copied().collect::<Vec<_>>()),
        |_, md| {
            listed_brokers(md) == survivors && complete(md, &replicated) && {
                let v = topic_views(md);
                v.len() == expect.len() && moved(&v)
            }
        },
    );
    let fenced_after = killed_at.elapsed();
    eprintln!(
        "[test] node {victim_id} fenced and its leaderships moved {fenced_after:?} after kill -9"
    );
    let after = topic_views(&answers[0].1);
    for (i, md) in &answers[1..] {
        assert_eq!(
            topic_views(md),
            after,
            "survivors disagree (node {} vs node {})",
            i + 1,
            answers[0].0 + 1
        );
    }
    for (t, old_ps) in &before {
        for (p, (old, new)) in old_ps.iter().zip(&after[t]).enumerate() {
            if !old.replicas.contains(&victim_id) {
                assert_eq!(new, old, "{t}[{p}] does not involve node {victim_id}");
                continue;
            }
            if old.replicas.len() == 1 {
                assert_eq!(new.leader, -1, "{t}[{p}]: {new:?}");
                assert_eq!(new.error, LEADER_NOT_AVAILABLE, "{t}[{p}]: {new:?}");
                assert_eq!(new.offline, vec![victim_id], "{t}[{p}]: {new:?}");
                continue;
            }
            assert_eq!(new.replicas, old.replicas, "{t}[{p}]: replicas changed");
            if old.leader == victim_id {
                assert!(
                    survivors.contains(&new.leader) && old.replicas.contains(&new.leader),
                    "{t}[{p}]: new leader {} not a surviving replica of {:?}",
                    new.leader,
                    old.replicas
                );
                // Kafka's election: the first replica in assignment order in the ISR and live.
                let expected_leader = old
                    .replicas
                    .iter()
                    .copied()
                    .find(|r| *r != victim_id && old.isr.contains(r))
                    .unwrap();
                assert_eq!(new.leader, expected_leader, "{t}[{p}]: {old:?} -> {new:?}");
                assert!(
                    new.leader_epoch > old.leader_epoch,
                    "{t}[{p}]: leader epoch not bumped: {old:?} -> {new:?}"
                );
            } else {
                assert_eq!(new.leader, old.leader, "{t}[{p}]");
                assert_eq!(
                    new.leader_epoch, old.leader_epoch,
                    "{t}[{p}]: epoch moved without a leader change"
                );
            }
            assert!(!new.isr.contains(&victim_id), "{t}[{p}]: {new:?}");
        }
    }

    // Back: listed again everywhere, and its own Metadata agrees with the others.
    let restarted_at = Instant::now();
    cluster.restart(victim);
    eprintln!(
        "[test] node {victim_id} listed again by every broker {:?} after restart",
        restarted_at.elapsed()
    );
    let back = converged(&mut cluster, "after restart", &expect);
    for (t, ps) in &back {
        for (p, new) in ps.iter().enumerate() {
            assert!(
                new.offline.is_empty(),
                "{t}[{p}]: offline after restart: {new:?}"
            );
            if before[t][p].replicas == vec![victim_id] {
                assert_eq!(
                    new.leader, victim_id,
                    "{t}[{p}]: RF 1 partition back with its broker"
                );
            }
        }
    }
    cluster.assert_running_alive();
}

// ---------------------------------------------------------------------------------------------
// 4. Controller failover
// ---------------------------------------------------------------------------------------------

#[test]
fn killed_controller_is_replaced_and_catches_up_after_restart() {
    let _serial = serial();
    let mut cluster = Cluster::start(3);
    admin_create(&cluster.bootstrap(), &[("failover-before", 3, 3)]);
    converged(
        &mut cluster,
        "failover-before",
        &[("failover-before", 3)].into_iter().collect(),
    );
    let old = cluster.wait_controller("a controller", METADATA_DEADLINE, |_| true);
    let killed_at = Instant::now();
    cluster.kill9(Cluster::index_of(old));
    let new = cluster.wait_controller(
        &format!("a controller other than node {old}"),
        FAILOVER_DEADLINE,
        |c| c != old,
    );
    eprintln!(
        "[test] controller {old} killed; node {new} controls {:?} later",
        killed_at.elapsed()
    );
    assert!(cluster.running_ids().contains(&new));

    // Through the survivor that is not the controller (the proposal travels to the leader).
    let via = cluster
        .running()
        .into_iter()
        .find(|&i| Cluster::node_id(i) != new)
        .unwrap();
    let topic = "failover-after";
    let code = cluster.raw(via).create_topic(topic, 4, 2);
    assert_eq!(
        code,
        NONE,
        "CreateTopics via node {} after failover",
        via + 1
    );
    // Once the dead controller is fenced, every partition is led by a survivor.
    let survivors = cluster.running_ids();
    let expect: BTreeMap<&str, usize> = [(topic, 4), ("failover-before", 3)].into_iter().collect();
    let views = converged_by(
        &mut cluster,
        "new topic led by survivors",
        METADATA_DEADLINE,
        &expect,
        |v| v.values().flatten().all(|p| survivors.contains(&p.leader)),
    );
    for (p, part) in views[topic].iter().enumerate() {
        let d: BTreeSet<i32> = part.replicas.iter().copied().collect();
        assert_eq!(d.len(), 2, "{topic}[{p}]: {part:?}");
    }
    eprintln!(
        "[test] failover done, topic created and led by survivors {:?} after kill",
        killed_at.elapsed()
    );

    let restarted_at = Instant::now();
    cluster.restart(Cluster::index_of(old));
    let caught_up = converged(&mut cluster, "old controller catches up", &expect);
    eprintln!(
        "[test] node {old} shows {topic} {:?} after restart",
        restarted_at.elapsed()
    );
    assert_eq!(caught_up[topic].len(), 4);
    let md = cluster.metadata_from(Cluster::index_of(old), Some(&[topic]));
    assert_eq!(topic_views(&md)[topic], caught_up[topic]);
    assert!(
        md.controller_id.0 >= 1,
        "controller after restart: {}",
        md.controller_id.0
    );
    cluster.assert_running_alive();
}

// ---------------------------------------------------------------------------------------------
// 5. Replication factor against live brokers
// ---------------------------------------------------------------------------------------------

#[test]
fn replication_factor_is_checked_against_live_brokers() {
    let _serial = serial();
    let mut cluster = Cluster::start(3);
    let controller = cluster.wait_controller("a controller", METADATA_DEADLINE, |_| true);
    let victim_id = (1..=3).rev().find(|&b| b != controller).unwrap();
    cluster.kill9(Cluster::index_of(victim_id));
    let survivors = cluster.running_ids();
    cluster.wait_metadata(
        &format!("node {victim_id} fenced"),
        FENCE_DEADLINE,
        Some(&[]),
        |_, md| listed_brokers(md) == survivors,
    );

    for i in cluster.running() {
        let code = cluster
            .raw(i)
            .create_topic(&format!("rf3-via-{}", i + 1), 3, 3);
        assert_eq!(
            code,
            INVALID_REPLICATION_FACTOR,
            "RF 3 with 2 live brokers via node {}",
            i + 1
        );
    }
    // rdkafka's AdminClient gets the same code.
    let admin = admin(&cluster.bootstrap());
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let res = futures::executor::block_on(admin.create_topics(
        &[NewTopic::new("rf3-admin", 2, TopicReplication::Fixed(3))],
        &opts,
    ))
    .expect("CreateTopics");
    assert_eq!(
        res,
        vec![Err((
            "rf3-admin".to_string(),
            RDKafkaErrorCode::InvalidReplicationFactor
        ))]
    );
    let names = ["rf3-via-1", "rf3-via-2", "rf3-via-3", "rf3-admin"];
    for i in cluster.running() {
        let md = cluster.metadata_from(i, Some(&names));
        for t in &md.topics {
            assert_eq!(
                t.error_code,
                UNKNOWN_TOPIC_OR_PARTITION,
                "node {}: a refused topic exists: {t:?}",
                i + 1
            );
        }
    }

    admin_create(&cluster.bootstrap(), &[("rf2-ok", 5, 2)]);
    let views = converged(
        &mut cluster,
        "rf2-ok",
        &[("rf2-ok", 5)].into_iter().collect(),
    );
    check_fresh_placement("rf2-ok", &views["rf2-ok"], 2, &survivors);
    cluster.assert_running_alive();
}

// ---------------------------------------------------------------------------------------------
// 6. Bad quorum configuration
// ---------------------------------------------------------------------------------------------

/// Runs `corelog serve` with `sets`; returns (exit status, stdout + stderr). Kills it and
/// panics if it is still running after 30 s.
fn run_serve(sets: &[(&str, String)]) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("out.log");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corelog"));
    cmd.arg("serve")
        .arg("--cores")
        .arg("1")
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(dir.path().join("data"));
    for (k, v) in sets {
        cmd.arg("--set").arg(format!("{k}={v}"));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out));
    eprintln!("[test] running {cmd:?}");
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn corelog");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "corelog still running after 30 s; output:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    eprintln!(
        "[test] exited with {status} after {:?}: {}",
        start.elapsed(),
        output.trim()
    );
    (status, output)
}

#[test]
fn bad_quorum_configuration_is_refused_at_start() {
    let _serial = serial();
    let ports = free_ports(2);
    let voters = format!("1@127.0.0.1:{},2@127.0.0.1:{}", ports[0], ports[1]);
    let (status, out) = run_serve(&[
        ("node.id", "4".into()),
        ("controller.quorum.voters", voters),
    ]);
    assert!(
        !status.success(),
        "node 4 outside the voters started: {status}"
    );
    assert!(
        status.code().is_some(),
        "killed by a signal rather than exiting: {status}"
    );
    assert!(
        out.contains("node.id 4") && out.contains("controller.quorum.voters"),
        "the error should name node.id 4 and controller.quorum.voters: {out}"
    );

    for bad in ["garbage", "1@127.0.0.1", "one@127.0.0.1:9093"] {
        let (status, out) = run_serve(&[
            ("node.id", "1".into()),
            ("controller.quorum.voters", bad.into()),
        ]);
        assert!(!status.success(), "voters {bad:?} accepted: {status}");
        assert!(
            status.code().is_some(),
            "killed by a signal rather than exiting: {status}"
        );
        assert!(
            out.contains("controller.quorum.voters"),
            "the error for {bad:?} should name controller.quorum.voters: {out}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Requests to a broker that does not lead the partition
// ---------------------------------------------------------------------------------------------

#[test]
fn non_leaders_answer_not_leader_or_follower() {
    let _serial = serial();
    let mut cluster = steady_cluster();
    let topic = "nlof";
    admin_create(&cluster.bootstrap(), &[(topic, 3, 2)]);
    let views = converged(&mut cluster, topic, &[(topic, 3)].into_iter().collect());
    let mut checked = 0;
    for (p, part) in views[topic].iter().enumerate() {
        let p = p as i32;
        for i in 0..cluster.len() {
            let id = Cluster::node_id(i);
            if id == part.leader {
                continue;
            }
            let role = if part.replicas.contains(&id) {
                "follower"
            } else {
                "non-replica"
            };
            let mut c = cluster.raw(i);
            let batch = record_batch(1_700_000_000_000, &[(Some(b"k"), Some(b"v"))]);
            let resp = c.produce(topic, p, batch.clone(), -1);
            let code = resp.responses[0].partition_responses[0].error_code;
            eprintln!(
                "[test] Produce {topic}[{p}] to node {id} ({role}; leader {}): error {code}",
                part.leader
            );
            assert_eq!(
                code, NOT_LEADER_OR_FOLLOWER,
                "Produce {topic}[{p}] to node {id} ({role}, leader is {}): {resp:?}",
                part.leader
            );
            let resp = c.produce(topic, p, batch, 1);
            let code = resp.responses[0].partition_responses[0].error_code;
            assert_eq!(
                code, NOT_LEADER_OR_FOLLOWER,
                "Produce acks=1 to node {id} ({role}): {resp:?}"
            );
            let fetch = c.fetch(topic, p, 0, 0);
            let code = fetch.responses[0].partitions[0].error_code;
            assert_eq!(
                code, NOT_LEADER_OR_FOLLOWER,
                "Fetch from node {id} ({role}): {fetch:?}"
            );
            let (code, _, _) = c.list_offset(topic, p, -1);
            assert_eq!(
                code, NOT_LEADER_OR_FOLLOWER,
                "ListOffsets at node {id} ({role})"
            );
            checked += 1;
        }
        // The leader takes it, and nothing leaked to the others.
        let mut c = cluster.raw(Cluster::index_of(part.leader));
        let batch = record_batch(1_700_000_000_000, &[(Some(b"k"), Some(b"v"))]);
        assert_eq!(
            c.produce_one(topic, p, batch),
            (NONE, 0),
            "Produce to leader {}",
            part.leader
        );
        assert_eq!(
            c.list_offset(topic, p, -1),
            (NONE, 1, -1),
            "{topic}[{p}] end offset at the leader"
        );
    }
    assert_eq!(checked, 6);
    cluster.assert_running_alive();
}

// ---------------------------------------------------------------------------------------------
// 8. CreatePartitions
// ---------------------------------------------------------------------------------------------

#[test]
fn create_partitions_spreads_new_replicas_on_every_broker_view() {
    let _serial = serial();
    let mut cluster = steady_cluster();
    let topic = "grow";
    admin_create(&cluster.bootstrap(), &[(topic, 3, 2)]);
    let before = converged(
        &mut cluster,
        "grow (3)",
        &[(topic, 3)].into_iter().collect(),
    );

    let admin = admin(&cluster.bootstrap());
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let start = Instant::now();
    let res = futures::executor::block_on(
        admin.create_partitions(&[NewPartitions::new(topic, 6)], &opts),
    )
    .expect("CreatePartitions");
    assert_eq!(res, vec![Ok(topic.to_string())], "CreatePartitions 3 -> 6");
    eprintln!("[test] CreatePartitions 3 -> 6 in {:?}", start.elapsed());

    let after = converged(
        &mut cluster,
        "grow (6)",
        &[(topic, 6)].into_iter().collect(),
    );
    let ps = &after[topic];
    assert_eq!(ps.len(), 6);
    assert_eq!(&ps[..3], &before[topic][..], "existing partitions changed");
    for (p, part) in ps.iter().enumerate() {
        let d: BTreeSet<i32> = part.replicas.iter().copied().collect();
        assert_eq!(part.replicas.len(), 2, "{topic}[{p}]: {part:?}");
        assert_eq!(d.len(), 2, "{topic}[{p}]: replicas not distinct: {part:?}");
        assert!(
            d.iter().all(|b| (1..=3).contains(b)),
            "{topic}[{p}]: {part:?}"
        );
        assert!(
            part.replicas.contains(&part.leader),
            "{topic}[{p}]: {part:?}"
        );
        let isr: BTreeSet<i32> = part.isr.iter().copied().collect();
        assert_eq!(isr, d, "{topic}[{p}]: ISR of a new partition: {part:?}");
    }
    // librdkafka, from each broker, sees 6 partitions too.
    for i in 0..cluster.len() {
        let (_, topics) = rdkafka_view(&cluster, i, &[topic]);
        assert_eq!(
            topics.get(topic).map(Vec::len),
            Some(6),
            "rdkafka via node {}",
            i + 1
        );
    }
    // The new partitions take data at their leaders.
    for (p, part) in ps.iter().enumerate().skip(3) {
        let leader = part.leader;
        let mut c = cluster.raw(Cluster::index_of(leader));
        let batch = record_batch(1_700_000_000_000, &[(None, Some(b"new"))]);
        assert_eq!(
            c.produce_one(topic, p as i32, batch),
            (NONE, 0),
            "{topic}[{p}] at {leader}"
        );
    }
    // A graceful restart of a voter keeps the grown topic (its metadata log is on disk).
    cluster.restart(0);
    let again = converged(
        &mut cluster,
        "grow (6) after node 1 restarts",
        &[(topic, 6)].into_iter().collect(),
    );
    let replicas =
        |v: &Views| -> Vec<Vec<i32>> { v[topic].iter().map(|p| p.replicas.clone()).collect() };
    assert_eq!(
        replicas(&again),
        replicas(&after),
        "replicas after a restart"
    );
    cluster.assert_running_alive();
}

// ---------------------------------------------------------------------------------------------
// 9. The whole cluster killed and restarted
// ---------------------------------------------------------------------------------------------

#[test]
fn whole_cluster_kill9_and_restart_keeps_topics_and_data() {
    let _serial = serial();
    let mut cluster = steady_cluster();
    let topic = "whole";
    let partitions = 4;
    let bootstrap = cluster.bootstrap();
    admin_create(&bootstrap, &[(topic, partitions, 2)]);
    let expect: BTreeMap<&str, usize> = [(topic, partitions as usize)].into_iter().collect();
    let before = converged(&mut cluster, "whole", &expect);
    wait_topic_ready(&bootstrap, topic, partitions);
    let seed = 0x0034_071E;
    let deliveries = produce_messages(&producer_config(&bootstrap, "all"), topic, seed, 0..500);

    for i in 0..cluster.len() {
        cluster.kill9(i);
    }
    cluster.start_members(&[0, 1, 2]);
    let after = converged(&mut cluster, "whole after a full restart", &expect);
    let replicas =
        |v: &Views| -> Vec<Vec<i32>> { v[topic].iter().map(|p| p.replicas.clone()).collect() };
    assert_eq!(
        replicas(&after),
        replicas(&before),
        "replicas after a full restart"
    );
    cluster.wait_controller(
        "a controller after a full restart",
        METADATA_DEADLINE,
        |_| true,
    );
    // A restarted broker leads again at new leader epochs once its registration commits; its
    // high watermark starts from the checkpoint and catches up as its followers fetch.
    let mut ends = vec![(0, 0); partitions as usize];
    for &(p, o) in &deliveries {
        ends[p as usize].1 = ends[p as usize].1.max(o + 1);
    }
    wait_for(
        "high watermarks after a full restart",
        FAILOVER_DEADLINE,
        Duration::from_millis(100),
        || (watermarks(&cluster.bootstrap(), topic, partitions) == ends).then_some(()),
    );
    // acks=all data survives kill -9 of every broker, served by the leaders.
    let n = verify_topic(&cluster.bootstrap(), topic, partitions, seed, &deliveries);
    assert_eq!(n, 500);
    cluster.assert_running_alive();
}

// ---------------------------------------------------------------------------------------------
// 10. `corelog topics` against the cluster
// ---------------------------------------------------------------------------------------------

/// Runs `corelog topics ARGS`, bounded; returns (success, stdout, stderr).
fn topics_cli(args: &[&str]) -> (bool, String, String) {
    let start = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corelog"))
        .arg("topics")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run corelog topics");
    eprintln!("[test] corelog topics {args:?} took {:?}", start.elapsed());
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "corelog topics hung"
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn topics_cli_creates_and_describes_what_the_cluster_holds() {
    let _serial = serial();
    let mut cluster = steady_cluster();
    let bootstrap = cluster.bootstrap();
    let topic = "described-rf3";
    let (ok, out, err) = topics_cli(&[
        "--bootstrap-server",
        &bootstrap,
        "--create",
        "--topic",
        topic,
        "--partitions",
        "4",
        "--replication-factor",
        "3",
        "--config",
        "segment.bytes=1048576",
    ]);
    assert!(ok, "create failed: {out}{err}");
    assert!(out.contains("Created topic described-rf3."), "{out}");
    let views = converged(
        &mut cluster,
        "described-rf3",
        &[(topic, 4)].into_iter().collect(),
    );

    let (ok, out, err) = topics_cli(&[
        "--bootstrap-server",
        &bootstrap,
        "--describe",
        "--topic",
        topic,
    ]);
    assert!(ok, "describe failed: {out}{err}");
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default();
    for part in [
        "Topic: described-rf3",
        "PartitionCount: 4",
        "ReplicationFactor: 3",
        "Configs: segment.bytes=1048576",
    ] {
        assert!(header.contains(part), "header {header:?} lacks {part:?}");
    }
    let joined = |ids: &[i32]| ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    let partition_lines: Vec<&str> = lines.collect();
    assert_eq!(partition_lines.len(), 4, "{out}");
    for (index, (line, p)) in partition_lines.iter().zip(&views[topic]).enumerate() {
        let expected = format!(
            "\tTopic: {topic}\tPartition: {index}\tLeader: {}\tReplicas: {}\tIsr: {}",
            p.leader,
            joined(&p.replicas),
            joined(&p.isr)
        );
        assert_eq!(
            *line, expected,
            "partition {index} as described vs Metadata"
        );
    }
    // The same description from every single broker.
    for i in 0..3 {
        let one = cluster.brokers[i].bootstrap();
        let (ok, again, err) =
            topics_cli(&["--bootstrap-server", &one, "--describe", "--topic", topic]);
        assert!(ok, "describe via node {}: {err}", i + 1);
        assert_eq!(again, out, "describe via node {} differs", i + 1);
    }
}
