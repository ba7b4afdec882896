//! The group state machine driven through joins, syncs, heartbeats, leaves, commits and
//! timers, with the error codes Kafka answers in each state.

use super::*;
use ErrorCode as E;
use bytes::{BufMut, BytesMut};
use kafka_protocol::protocol::{Encodable, StrBytes};

const SESSION: i32 = 10_000;
const REBALANCE: i32 = 30_000;
/// When `form` completes the first generation of two or more members: the initial delay
/// (3 s) extended once (3 s) because more than one member joined.
const T0: i64 = 6_000;

fn config() -> GroupConfig {
    GroupConfig::default()
}

fn request(member_id: &str, fresh_member_id: &str) -> JoinRequest {
    JoinRequest {
        member_id: member_id.to_string(),
        group_instance_id: None,
        client_id: "client".to_string(),
        client_host: "/127.0.0.1".to_string(),
        session_timeout_ms: SESSION,
        rebalance_timeout_ms: REBALANCE,
        protocol_type: "consumer".to_string(),
        protocols: vec![("range".to_string(), Bytes::from_static(b"sub"))],
        requires_known_member_id: false,
        fresh_member_id: fresh_member_id.to_string(),
    }
}

fn static_request(member_id: &str, instance_id: &str, fresh_member_id: &str) -> JoinRequest {
    JoinRequest {
        group_instance_id: Some(instance_id.to_string()),
        ..request(member_id, fresh_member_id)
    }
}

fn with_protocols(mut req: JoinRequest, names: &[&str]) -> JoinRequest {
    let meta = |name: &str| Bytes::from(format!("{}-{name}", req.fresh_member_id));
    req.protocols = names
        .iter()
        .map(|&name| (name.to_string(), meta(name)))
        .collect();
    req
}

fn sync_request(member_id: &str, generation_id: i32, assignments: &[(&str, &str)]) -> SyncRequest {
    let assignment = |&(id, a): &(&str, &str)| (id.to_string(), Bytes::from(a.to_string()));
    SyncRequest {
        member_id: member_id.to_string(),
        group_instance_id: None,
        generation_id,
        protocol_type: Some("consumer".to_string()),
        protocol_name: Some("range".to_string()),
        assignments: assignments.iter().map(assignment).collect(),
    }
}

fn answer<T>(rx: &mut oneshot::Receiver<T>) -> T {
    rx.try_recv()
        .expect("dropped unanswered")
        .expect("not answered yet")
}

fn waiting<T>(rx: &mut oneshot::Receiver<T>) -> bool {
    matches!(rx.try_recv(), Ok(None))
}

/// The requests join a new group at 0 and the initial delay runs out.
fn form(group: &mut Group, requests: Vec<JoinRequest>) -> Vec<JoinResponse> {
    let join = |req| group.join(req, 0, &config());
    let mut rxs: Vec<_> = requests.into_iter().map(join).collect();
    group.tick(3_000, &config());
    group.tick(T0, &config());
    rxs.iter_mut().map(answer).collect()
}

/// A Stable generation 1 of dynamic members (the first is the leader), each assigned
/// "a-<id>"; every session runs from T0.
fn stable(ids: &[&str]) -> Group {
    let mut group = Group::new("g".to_string());
    form(&mut group, ids.iter().map(|id| request("", id)).collect());
    let assignments: Vec<(String, String)> = ids
        .iter()
        .map(|id| (id.to_string(), format!("a-{id}")))
        .collect();
    let pairs: Vec<(&str, &str)> = assignments
        .iter()
        .map(|(id, a)| (id.as_str(), a.as_str()))
        .collect();
    let (_, persist) = group.sync(sync_request(ids[0], 1, &pairs), T0);
    assert_eq!(persist, Some(1));
    group.sync_persisted(1, 0, T0);
    for id in &ids[1..] {
        let (mut rx, _) = group.sync(sync_request(id, 1, &[]), T0);
        assert_eq!(answer(&mut rx).error, 0);
    }
    assert_eq!(group.phase(), Phase::Stable);
    group
}

fn ids(members: &[JoinedMember]) -> Vec<&str> {
    members.iter().map(|m| m.member_id.as_str()).collect()
}

#[test]
fn three_members_rebalance_and_the_leaders_assignment_is_relayed() {
    let mut group = Group::new("g".to_string());
    let joined = form(
        &mut group,
        vec![request("", "a"), request("", "b"), request("", "c")],
    );
    assert_eq!(group.phase(), Phase::CompletingRebalance);
    for (response, id) in joined.iter().zip(["a", "b", "c"]) {
        assert_eq!(response.error, 0);
        assert_eq!(response.generation_id, 1);
        assert_eq!(response.leader, "a");
        assert_eq!(response.member_id, id);
        assert_eq!(response.protocol_type.as_deref(), Some("consumer"));
        assert_eq!(response.protocol_name.as_deref(), Some("range"));
    }
    assert_eq!(ids(&joined[0].members), ["a", "b", "c"]);
    assert_eq!(joined[0].members[1].metadata, Bytes::from_static(b"sub"));
    assert!(joined[1].members.is_empty() && joined[2].members.is_empty());

    // A follower waits for the leader; the leader's assignment is persisted first.
    let (mut b, persist) = group.sync(sync_request("b", 1, &[]), T0);
    assert_eq!(persist, None);
    assert!(waiting(&mut b));
    let (mut a, persist) = group.sync(sync_request("a", 1, &[("a", "A"), ("b", "B")]), T0);
    assert_eq!(persist, Some(1));
    assert!(waiting(&mut a) && waiting(&mut b));
    let stored = group.stored();
    let assigned: Vec<&[u8]> = stored.members.iter().map(|m| &m.assignment[..]).collect();
    assert_eq!(assigned, [&b"A"[..], b"B", b""], "c was left out: empty");

    group.sync_persisted(1, 0, T0 + 10);
    assert_eq!(group.phase(), Phase::Stable);
    assert_eq!(answer(&mut a).assignment, Bytes::from_static(b"A"));
    let b = answer(&mut b);
    assert_eq!((b.error, &b.assignment[..]), (0, &b"B"[..]));
    assert_eq!(b.protocol_name.as_deref(), Some("range"));
    // A late follower of a Stable group gets its assignment at once.
    let (mut c, _) = group.sync(sync_request("c", 1, &[]), T0 + 20);
    let c = answer(&mut c);
    assert_eq!((c.error, c.assignment.is_empty()), (0, true));
    assert_eq!(group.heartbeat("c", None, 1, T0 + 30), 0);
}

#[test]
fn rejoining_with_the_same_metadata_returns_the_current_generation() {
    let mut group = Group::new("g".to_string());
    form(&mut group, vec![request("", "a"), request("", "b")]);
    // It missed the JoinGroup answer: the same answer, the leader with the members.
    let again = answer(&mut group.join(request("a", "x"), T0, &config()));
    assert_eq!((again.generation_id, again.members.len()), (1, 2));
    assert_eq!(group.phase(), Phase::CompletingRebalance);

    let mut group = stable(&["a", "b"]);
    let follower = answer(&mut group.join(request("b", "x"), T0, &config()));
    assert_eq!((follower.error, follower.generation_id), (0, 1));
    assert_eq!(group.phase(), Phase::Stable);
    // The leader rejoining always rebalances.
    let mut leader = group.join(request("a", "x"), T0, &config());
    assert!(waiting(&mut leader));
    assert_eq!(group.phase(), Phase::PreparingRebalance);
}

#[test]
fn member_id_required_then_the_member_rejoins_with_it() {
    let mut group = Group::new("g".to_string());
    let mut req = request("", "a-1");
    req.requires_known_member_id = true;
    let first = answer(&mut group.join(req, 0, &config()));
    assert_eq!(first.error, E::MemberIdRequired.code());
    assert_eq!((first.member_id.as_str(), first.generation_id), ("a-1", -1));
    assert_eq!(group.phase(), Phase::Empty);
    assert_eq!(
        group.heartbeat("a-1", None, 0, 10),
        E::UnknownMemberId.code()
    );

    let mut rx = group.join(request("a-1", "unused"), 100, &config());
    assert!(waiting(&mut rx));
    group.tick(3_100, &config());
    let joined = answer(&mut rx);
    assert_eq!(
        (joined.member_id.as_str(), joined.leader.as_str()),
        ("a-1", "a-1")
    );
    assert_eq!(joined.generation_id, 1);
}

#[test]
fn a_pending_member_holds_the_rebalance_until_it_rejoins_or_expires() {
    let mut group = stable(&["a", "b"]);
    let mut a = group.join(request("a", "x"), T0, &config());
    let mut req = request("", "c");
    req.requires_known_member_id = true;
    assert_eq!(
        answer(&mut group.join(req.clone(), T0, &config())).member_id,
        "c"
    );
    let mut b = group.join(request("b", "x"), T0 + 1, &config());
    assert!(waiting(&mut a) && waiting(&mut b), "c may still come");
    let mut c = group.join(request("c", "x"), T0 + 2, &config());
    assert_eq!(ids(&answer(&mut a).members), ["a", "b", "c"]);
    assert_eq!(answer(&mut c).generation_id, 2);

    // A pending member that never comes back expires after its session timeout.
    let mut group = stable(&["a", "b"]);
    let mut a = group.join(request("a", "x"), T0, &config());
    drop(group.join(req, T0, &config()));
    let mut b = group.join(request("b", "x"), T0, &config());
    group.tick(T0 + i64::from(SESSION) - 1, &config());
    assert!(waiting(&mut a));
    group.tick(T0 + i64::from(SESSION), &config());
    assert_eq!(ids(&answer(&mut a).members), ["a", "b"]);
    assert_eq!(answer(&mut b).generation_id, 2);
}

#[test]
fn unknown_members_stale_generations_and_rebalances_are_refused() {
    let mut group = stable(&["a", "b"]);
    let unknown = E::UnknownMemberId.code();
    assert_eq!(group.heartbeat("zz", None, 1, T0), unknown);
    assert_eq!(
        group.heartbeat("a", None, 0, T0),
        E::IllegalGeneration.code()
    );
    let (mut rx, _) = group.sync(sync_request("zz", 1, &[]), T0);
    assert_eq!(answer(&mut rx).error, unknown);
    let (mut rx, _) = group.sync(sync_request("a", 2, &[]), T0);
    assert_eq!(answer(&mut rx).error, E::IllegalGeneration.code());
    let joined = answer(&mut group.join(request("zz", "x"), T0, &config()));
    assert_eq!((joined.error, joined.member_id.as_str()), (unknown, "zz"));

    let _leader = group.join(request("a", "x"), T0, &config());
    assert_eq!(
        group.heartbeat("b", None, 1, T0),
        E::RebalanceInProgress.code()
    );
    let (mut rx, _) = group.sync(sync_request("b", 1, &[]), T0);
    assert_eq!(answer(&mut rx).error, E::RebalanceInProgress.code());
}

#[test]
fn a_session_expiry_removes_the_member_and_rebalances() {
    let mut group = stable(&["a", "b"]);
    assert_eq!(group.heartbeat("a", None, 1, T0 + 8_000), 0);
    assert!(!group.tick(T0 + 9_999, &config()));
    assert_eq!(group.phase(), Phase::Stable);
    group.tick(T0 + 10_000, &config());
    assert_eq!(group.phase(), Phase::PreparingRebalance);
    assert_eq!(
        group.heartbeat("b", None, 1, T0 + 10_001),
        E::UnknownMemberId.code()
    );
    assert_eq!(
        group.heartbeat("a", None, 1, T0 + 10_001),
        E::RebalanceInProgress.code()
    );
    // The last member to rejoin completes the join phase at once.
    let joined = answer(&mut group.join(request("a", "x"), T0 + 10_002, &config()));
    assert_eq!((joined.generation_id, ids(&joined.members)), (2, vec!["a"]));
}

#[test]
fn a_session_expiry_while_completing_sends_waiting_syncs_back_to_join() {
    let mut group = Group::new("g".to_string());
    form(&mut group, vec![request("", "a"), request("", "b")]);
    // b waits for the leader (which stays alive while it waits); a never syncs.
    let (mut b, _) = group.sync(sync_request("b", 1, &[]), T0 + 1);
    group.tick(T0 + i64::from(SESSION), &config());
    assert_eq!(answer(&mut b).error, E::RebalanceInProgress.code());
    assert_eq!(group.phase(), Phase::PreparingRebalance);
    assert_eq!(
        group.heartbeat("a", None, 1, T0 + 10_001),
        E::UnknownMemberId.code()
    );
}

#[test]
fn the_rebalance_timeout_drops_members_that_did_not_rejoin() {
    let mut group = stable(&["a", "b", "c"]);
    let mut a = group.join(request("a", "x"), T0 + 1_000, &config());
    let mut b = group.join(request("b", "x"), T0 + 2_000, &config());
    // c heartbeats (so its session holds) but never rejoins.
    for t in [5_000, 14_000, 23_000] {
        assert_eq!(
            group.heartbeat("c", None, 1, T0 + t),
            E::RebalanceInProgress.code()
        );
    }
    group.tick(T0 + 1_000 + i64::from(REBALANCE) - 1, &config());
    assert!(waiting(&mut a));
    group.tick(T0 + 1_000 + i64::from(REBALANCE), &config());
    let a = answer(&mut a);
    assert_eq!((a.generation_id, ids(&a.members)), (2, vec!["a", "b"]));
    assert_eq!(answer(&mut b).leader, "a");
    assert_eq!(
        group.heartbeat("c", None, 1, T0 + 31_001),
        E::UnknownMemberId.code()
    );
}

#[test]
fn a_static_member_that_misses_the_rebalance_stays_until_its_session_expires() {
    let mut group = Group::new("g".to_string());
    form(
        &mut group,
        vec![static_request("", "i-s", "s"), request("", "a")],
    );
    let static_sync = SyncRequest {
        group_instance_id: Some("i-s".into()),
        ..sync_request("s", 1, &[])
    };
    let (_, persist) = group.sync(static_sync, T0);
    assert_eq!(persist, Some(1), "s leads");
    group.sync_persisted(1, 0, T0);
    let _ = group.sync(sync_request("a", 1, &[]), T0);

    // a asks for a rebalance; s keeps heartbeating but does not rejoin.
    let changed = with_protocols(request("a", "a"), &["range"]);
    let mut a = group.join(changed, T0 + 1_000, &config());
    for t in [5_000, 14_000, 23_000] {
        group.heartbeat("s", Some("i-s"), 1, T0 + t);
    }
    group.tick(T0 + 31_000, &config());
    let a = answer(&mut a);
    assert_eq!(a.leader, "a", "the leader that rejoined takes over");
    assert_eq!(ids(&a.members), ["a", "s"], "static s is kept");
    assert_eq!(group.phase(), Phase::CompletingRebalance);
    // Everyone's session restarted with the generation; s stays silent and expires.
    group.heartbeat("a", None, 2, T0 + 35_000);
    group.tick(T0 + 40_999, &config());
    assert_eq!(group.phase(), Phase::CompletingRebalance);
    group.tick(T0 + 41_000, &config());
    assert_eq!(group.phase(), Phase::PreparingRebalance);
    let gone = group.heartbeat("s", Some("i-s"), 2, T0 + 41_001);
    assert_eq!(gone, E::UnknownMemberId.code());
}

#[test]
fn the_initial_delay_waits_for_more_members_up_to_the_rebalance_timeout() {
    let mut group = Group::new("g".to_string());
    let mut a = group.join(request("", "a"), 0, &config());
    let mut b = group.join(request("", "b"), 1_000, &config());
    group.tick(3_000, &config());
    assert!(
        waiting(&mut a),
        "b joined during the delay: wait another 3 s"
    );
    group.tick(5_999, &config());
    assert!(waiting(&mut a));
    group.tick(6_000, &config());
    assert_eq!(ids(&answer(&mut a).members), ["a", "b"]);
    assert_eq!(answer(&mut b).generation_id, 1);

    // Members that keep arriving extend it no further than the rebalance timeout.
    let mut group = Group::new("g".to_string());
    let short = |id| JoinRequest {
        rebalance_timeout_ms: 7_000,
        ..request("", id)
    };
    let mut a = group.join(short("a"), 0, &config());
    drop(group.join(short("b"), 1_000, &config()));
    group.tick(3_000, &config());
    drop(group.join(short("c"), 4_000, &config()));
    group.tick(6_000, &config());
    drop(group.join(short("d"), 6_500, &config()));
    group.tick(6_999, &config());
    assert!(waiting(&mut a));
    group.tick(7_000, &config());
    assert_eq!(answer(&mut a).members.len(), 4);

    // A lone member waits the delay once.
    let mut group = Group::new("g".to_string());
    let mut a = group.join(request("", "a"), 0, &config());
    group.tick(2_999, &config());
    assert!(waiting(&mut a));
    group.tick(3_000, &config());
    assert_eq!(answer(&mut a).generation_id, 1);
}

#[test]
fn leaving_removes_the_member_and_rebalances_the_others() {
    let mut group = stable(&["a", "b", "c"]);
    let members = [("b".to_string(), None), ("zz".to_string(), None)];
    let errors = group.leave(&members, T0 + 1);
    assert_eq!(errors, [0, E::UnknownMemberId.code()]);
    assert_eq!(group.phase(), Phase::PreparingRebalance);

    // A member leaving while parked in JoinGroup gets its answer.
    let mut a = group.join(request("a", "x"), T0 + 2, &config());
    assert_eq!(group.leave(&[("a".to_string(), None)], T0 + 3), [0]);
    let a = answer(&mut a);
    assert_eq!(
        (a.error, a.member_id.as_str()),
        (E::UnknownMemberId.code(), "")
    );
    let c = answer(&mut group.join(request("c", "x"), T0 + 4, &config()));
    assert_eq!((c.generation_id, c.leader.as_str()), (2, "c"));
    assert_eq!(group.stored().leader.as_deref(), Some("c"));

    // The last member leaving empties the group, in a generation of its own.
    group.take_persist_needed();
    assert_eq!(group.leave(&[("c".to_string(), None)], T0 + 5), [0]);
    assert_eq!((group.phase(), group.generation_id()), (Phase::Empty, 3));
    assert_eq!(group.empty_since(), Some(T0 + 5));
    assert!(
        group.tick(T0 + 6, &config()),
        "the empty group must be persisted"
    );
    assert!(group.stored().members.is_empty());
}

#[test]
fn a_static_member_restarting_in_a_stable_group_keeps_its_assignment() {
    let mut group = Group::new("g".to_string());
    form(
        &mut group,
        vec![static_request("", "i-s", "s1"), request("", "b")],
    );
    let assignments = [("s1", "A"), ("b", "B")];
    let sync = SyncRequest {
        group_instance_id: Some("i-s".into()),
        ..sync_request("s1", 1, &assignments)
    };
    let (mut s1, _) = group.sync(sync, T0);
    group.sync_persisted(1, 0, T0);
    assert_eq!(answer(&mut s1).assignment, Bytes::from_static(b"A"));
    let _ = group.sync(sync_request("b", 1, &[]), T0);
    group.take_persist_needed();

    // The leader restarts: a new member id, the current generation, no rebalance.
    let joined = answer(&mut group.join(static_request("", "i-s", "s2"), T0 + 1_000, &config()));
    assert_eq!((joined.error, joined.generation_id), (0, 1));
    assert_eq!(joined.member_id, "s2");
    assert_eq!(joined.leader, "s1", "the old id: s2 syncs as a follower");
    assert!(joined.members.is_empty());
    assert_eq!(group.phase(), Phase::Stable);
    assert_eq!(group.leader(), Some("s2"));
    assert!(group.take_persist_needed());
    assert_eq!(group.stored().members[1].member_id, "s2");

    let sync = SyncRequest {
        group_instance_id: Some("i-s".into()),
        ..sync_request("s2", 1, &[])
    };
    let (mut s2, persist) = group.sync(sync, T0 + 1_001);
    assert_eq!(
        (answer(&mut s2).assignment, persist),
        (Bytes::from_static(b"A"), None)
    );
    // The old id is fenced.
    let fenced = E::FencedInstanceId.code();
    assert_eq!(group.heartbeat("s1", Some("i-s"), 1, T0 + 1_002), fenced);
    assert_eq!(
        group.heartbeat("s1", None, 1, T0 + 1_002),
        E::UnknownMemberId.code()
    );
    let old = answer(&mut group.join(static_request("s1", "i-s", "x"), T0 + 1_003, &config()));
    assert_eq!(old.error, fenced);
    assert_eq!(
        group.check_commit("s1", Some("i-s"), 1, T0 + 1_004),
        Err(fenced)
    );
    assert_eq!(group.heartbeat("s2", Some("i-s"), 1, T0 + 1_005), 0);
}

#[test]
fn a_static_member_restarting_while_completing_fences_its_old_sync_and_rebalances() {
    let mut group = Group::new("g".to_string());
    form(
        &mut group,
        vec![request("", "a"), static_request("", "i-s", "s1")],
    );
    let sync = SyncRequest {
        group_instance_id: Some("i-s".into()),
        ..sync_request("s1", 1, &[])
    };
    let (mut old, _) = group.sync(sync, T0);
    let mut new = group.join(static_request("", "i-s", "s2"), T0 + 1, &config());
    assert_eq!(answer(&mut old).error, E::FencedInstanceId.code());
    assert!(waiting(&mut new));
    assert_eq!(group.phase(), Phase::PreparingRebalance);
    let a = answer(&mut group.join(request("a", "x"), T0 + 2, &config()));
    assert_eq!((a.generation_id, ids(&a.members)), (2, vec!["a", "s2"]));
    assert_eq!(answer(&mut new).member_id, "s2");
}

#[test]
fn a_static_member_leaves_by_instance_id() {
    let mut group = Group::new("g".to_string());
    form(
        &mut group,
        vec![request("", "a"), static_request("", "i-s", "s")],
    );
    let gone = [
        (String::new(), Some("i-s".to_string())),
        (String::new(), Some("i-x".to_string())),
    ];
    assert_eq!(group.leave(&gone, T0), [0, E::UnknownMemberId.code()]);
    assert_eq!(group.phase(), Phase::PreparingRebalance);
    let a = answer(&mut group.join(request("a", "x"), T0 + 1, &config()));
    assert_eq!(ids(&a.members), ["a"]);
}

#[test]
fn the_protocol_is_chosen_by_the_members_votes() {
    let mut group = Group::new("g".to_string());
    let joined = form(
        &mut group,
        vec![
            with_protocols(request("", "a"), &["sticky", "range", "roundrobin"]),
            with_protocols(request("", "b"), &["roundrobin", "range"]),
            with_protocols(request("", "c"), &["roundrobin", "range"]),
        ],
    );
    // sticky is not supported by all; a votes range, b and c roundrobin.
    assert_eq!(joined[0].protocol_name.as_deref(), Some("roundrobin"));
    assert_eq!(
        joined[0].members[0].metadata,
        Bytes::from_static(b"a-roundrobin")
    );
    assert_eq!(group.protocol_name(), Some("roundrobin"));
}

#[test]
fn inconsistent_protocols_are_refused() {
    let inconsistent = E::InconsistentGroupProtocol.code();
    let mut group = Group::new("g".to_string());
    let no_type = JoinRequest {
        protocol_type: String::new(),
        ..request("", "a")
    };
    assert_eq!(
        answer(&mut group.join(no_type, 0, &config())).error,
        inconsistent
    );
    let no_protocols = with_protocols(request("", "a"), &[]);
    assert_eq!(
        answer(&mut group.join(no_protocols, 0, &config())).error,
        inconsistent
    );

    let mut group = stable(&["a", "b"]);
    let other_type = JoinRequest {
        protocol_type: "connect".to_string(),
        ..request("", "c")
    };
    let refused = answer(&mut group.join(other_type, T0, &config()));
    assert_eq!(
        (refused.error, refused.member_id.as_str()),
        (inconsistent, "")
    );
    let no_common = with_protocols(request("", "c"), &["roundrobin"]);
    assert_eq!(
        answer(&mut group.join(no_common, T0, &config())).error,
        inconsistent
    );
    let changed = with_protocols(request("b", "b"), &["roundrobin"]);
    assert_eq!(
        answer(&mut group.join(changed, T0, &config())).error,
        inconsistent
    );
    let other_name = SyncRequest {
        protocol_name: Some("roundrobin".into()),
        ..sync_request("b", 1, &[])
    };
    assert_eq!(
        answer(&mut group.sync(other_name, T0).0).error,
        inconsistent
    );
    assert_eq!(group.phase(), Phase::Stable);
}

#[test]
fn session_timeouts_outside_the_configured_range_are_refused() {
    let mut group = Group::new("g".to_string());
    for session_timeout_ms in [5_999, 1_800_001] {
        let req = JoinRequest {
            session_timeout_ms,
            ..request("m", "x")
        };
        let refused = answer(&mut group.join(req, 0, &config()));
        assert_eq!(refused.error, E::InvalidSessionTimeout.code());
        assert_eq!(refused.member_id, "m");
    }
    assert_eq!(group.phase(), Phase::Empty);
}

#[test]
fn group_max_size_turns_away_members_beyond_it() {
    let config = GroupConfig {
        max_size: 2,
        ..config()
    };
    let mut group = Group::new("g".to_string());
    drop(group.join(request("", "a"), 0, &config));
    drop(group.join(request("", "b"), 0, &config));
    let refused = answer(&mut group.join(request("", "c"), 0, &config));
    assert_eq!(
        (refused.error, refused.member_id.as_str()),
        (E::GroupMaxSizeReached.code(), "")
    );

    // A group loaded over the limit rebalances; the last to rejoin is turned away.
    let stored = stable(&["a", "b", "c"]).stored();
    let mut group = Group::from_stored("g".to_string(), stored, 0);
    group.tick(1, &config);
    assert_eq!(group.phase(), Phase::PreparingRebalance);
    drop(group.join(request("a", "x"), 2, &config));
    drop(group.join(request("b", "x"), 3, &config));
    let late = answer(&mut group.join(request("c", "x"), 4, &config));
    assert_eq!(late.error, E::GroupMaxSizeReached.code());
}

#[test]
fn commits_are_checked_against_membership_and_generation() {
    let mut group = Group::new("g".to_string());
    assert_eq!(
        group.check_commit("", None, -1, 0),
        Ok(()),
        "simple commit, no members"
    );
    assert_eq!(
        group.check_commit("m", None, 1, 0),
        Err(E::UnknownMemberId.code())
    );

    let mut group = stable(&["a", "b"]);
    assert_eq!(
        group.check_commit("", None, -1, T0),
        Err(E::UnknownMemberId.code())
    );
    assert_eq!(
        group.check_commit("zz", None, 1, T0),
        Err(E::UnknownMemberId.code())
    );
    assert_eq!(
        group.check_commit("a", None, 0, T0),
        Err(E::IllegalGeneration.code())
    );
    // A commit refreshes the session like a heartbeat.
    assert_eq!(group.check_commit("a", None, 1, T0 + 9_000), Ok(()));
    assert_eq!(group.check_commit("b", None, 1, T0 + 9_000), Ok(()));
    group.tick(T0 + 10_000, &config());
    assert_eq!(group.phase(), Phase::Stable);

    // While members rejoin, the previous generation may still commit; not once the new
    // generation exists without an assignment.
    drop(group.join(request("a", "x"), T0 + 10_000, &config()));
    assert_eq!(group.check_commit("b", None, 1, T0 + 10_001), Ok(()));
    drop(group.join(request("b", "x"), T0 + 10_002, &config()));
    assert_eq!(group.phase(), Phase::CompletingRebalance);
    let in_progress = Err(E::RebalanceInProgress.code());
    assert_eq!(group.check_commit("b", None, 2, T0 + 10_003), in_progress);

    group.shutdown();
    let unavailable = Err(E::CoordinatorNotAvailable.code());
    assert_eq!(group.check_commit("", None, -1, T0), unavailable);
}

#[test]
fn a_group_round_trips_through_its_stored_form() {
    let group = stable(&["a", "b"]);
    let stored = group.stored();
    assert_eq!(stored.generation_id, 1);
    assert_eq!(stored.protocol_name.as_deref(), Some("range"));
    assert_eq!(stored.leader.as_deref(), Some("a"));
    assert_eq!(stored.state_timestamp_ms, T0);
    assert_eq!(stored.members[1].subscription, Bytes::from_static(b"sub"));
    assert_eq!(stored.members[1].assignment, Bytes::from_static(b"a-b"));

    let later = 100_000;
    let mut loaded = Group::from_stored("g".to_string(), stored.clone(), later);
    assert_eq!(loaded.stored(), stored);
    assert_eq!((loaded.phase(), loaded.generation_id()), (Phase::Stable, 1));
    let (mut rx, _) = loaded.sync(sync_request("b", 1, &[]), later);
    assert_eq!(answer(&mut rx).assignment, Bytes::from_static(b"a-b"));
    // Sessions run from the load.
    assert_eq!(loaded.heartbeat("a", None, 1, later + 9_999), 0);
    loaded.tick(later + 10_000, &config());
    assert_eq!(
        loaded.heartbeat("a", None, 1, later + 10_001),
        E::RebalanceInProgress.code()
    );

    let empty = StoredGroup {
        protocol_type: "consumer".into(),
        generation_id: 4,
        state_timestamp_ms: 77,
        ..Default::default()
    };
    let loaded = Group::from_stored("g".to_string(), empty.clone(), later);
    assert_eq!(
        (loaded.phase(), loaded.empty_since()),
        (Phase::Empty, Some(77))
    );
    assert_eq!(loaded.stored(), empty);
}

#[test]
fn only_an_empty_group_can_be_deleted() {
    let mut group = stable(&["a"]);
    assert_eq!(group.delete(), Err(E::NonEmptyGroup.code()));
    let mut group = Group::new("g".to_string());
    assert_eq!(group.delete(), Ok(()));
    assert_eq!(group.phase(), Phase::Dead);
    assert_eq!(group.delete(), Err(E::GroupIdNotFound.code()));
    let refused = answer(&mut group.join(request("", "a"), 0, &config()));
    assert_eq!(refused.error, E::CoordinatorNotAvailable.code());
}

#[test]
fn shutdown_answers_every_parked_request_with_not_coordinator() {
    let not_coordinator = E::NotCoordinator.code();
    let mut group = stable(&["a", "b"]);
    let mut a = group.join(request("a", "x"), T0, &config());
    group.shutdown();
    assert_eq!(answer(&mut a).error, not_coordinator);
    assert_eq!(group.phase(), Phase::Dead);
    assert_eq!(
        group.heartbeat("b", None, 1, T0),
        E::CoordinatorNotAvailable.code()
    );

    let mut group = Group::new("g".to_string());
    form(&mut group, vec![request("", "a"), request("", "b")]);
    let (mut b, _) = group.sync(sync_request("b", 1, &[]), T0);
    let (mut a, persist) = group.sync(sync_request("a", 1, &[]), T0);
    group.shutdown();
    assert_eq!(answer(&mut a).error, not_coordinator);
    assert_eq!(answer(&mut b).error, not_coordinator);
    group.sync_persisted(persist.unwrap(), 0, T0);
    assert_eq!(group.phase(), Phase::Dead);
}

#[test]
fn a_failed_write_of_the_assignment_sends_everyone_back_to_join() {
    let mut group = Group::new("g".to_string());
    form(&mut group, vec![request("", "a"), request("", "b")]);
    let (mut b, _) = group.sync(sync_request("b", 1, &[]), T0);
    let (mut a, persist) = group.sync(sync_request("a", 1, &[("a", "A")]), T0);
    group.sync_persisted(0, 0, T0);
    assert!(waiting(&mut a), "a stale generation is ignored");
    let error = E::CoordinatorNotAvailable.code();
    group.sync_persisted(persist.unwrap(), error, T0);
    let a = answer(&mut a);
    assert_eq!((a.error, a.protocol_name), (error, None));
    assert_eq!(answer(&mut b).error, error);
    assert_eq!(group.phase(), Phase::PreparingRebalance);
}

#[test]
fn members_that_never_sync_are_removed_after_the_rebalance_timeout() {
    let mut group = Group::new("g".to_string());
    form(&mut group, vec![request("", "a"), request("", "b")]);
    let _ = group.sync(sync_request("a", 1, &[]), T0);
    group.sync_persisted(1, 0, T0);
    for t in [8_000, 16_000, 24_000] {
        assert_eq!(group.heartbeat("a", None, 1, T0 + t), 0);
        assert_eq!(group.heartbeat("b", None, 1, T0 + t), 0);
    }
    group.tick(T0 + i64::from(REBALANCE) - 1, &config());
    assert_eq!(group.phase(), Phase::Stable);
    group.tick(T0 + i64::from(REBALANCE), &config());
    assert_eq!(group.phase(), Phase::PreparingRebalance);
    assert_eq!(
        group.heartbeat("b", None, 1, T0 + 30_001),
        E::UnknownMemberId.code()
    );
}

fn subscription(topics: &[&str]) -> Bytes {
    let topics = topics
        .iter()
        .map(|&t| StrBytes::from_string(t.to_string()))
        .collect();
    let subscription = ConsumerProtocolSubscription::default().with_topics(topics);
    let mut buf = BytesMut::new();
    buf.put_i16(3);
    subscription.encode(&mut buf, 3).unwrap();
    buf.freeze()
}

#[test]
fn subscribed_topics_are_read_from_consumer_subscriptions() {
    let member = |id, topics: &[&str]| JoinRequest {
        protocols: vec![("range".to_string(), subscription(topics))],
        ..request("", id)
    };
    let mut group = Group::new("g".to_string());
    assert_eq!(group.subscribed_topics(), None);
    form(
        &mut group,
        vec![member("a", &["t1", "t2"]), member("b", &["t2", "t3"])],
    );
    let topics = group.subscribed_topics().unwrap();
    assert_eq!(topics.into_iter().collect::<Vec<_>>(), ["t1", "t2", "t3"]);

    let mut group = Group::new("g".to_string());
    form(&mut group, vec![request("", "a")]);
    assert_eq!(group.subscribed_topics(), None, "undecodable");
    let mut group = Group::new("g".to_string());
    form(
        &mut group,
        vec![JoinRequest {
            protocol_type: "connect".into(),
            ..member("a", &["t"])
        }],
    );
    assert_eq!(group.subscribed_topics(), None, "not a consumer group");
}

#[test]
fn phases_have_kafkas_names() {
    let names = [
        Phase::Empty,
        Phase::PreparingRebalance,
        Phase::CompletingRebalance,
        Phase::Stable,
        Phase::Dead,
    ]
    .map(Phase::name);
    assert_eq!(
        names,
        [
            "Empty",
            "PreparingRebalance",
            "CompletingRebalance",
            "Stable",
            "Dead"
        ]
    );
}

#[test]
fn describe_shows_metadata_and_assignments_only_when_stable() {
    let mut group = stable(&["a", "b"]);
    let description = group.describe();
    assert_eq!(
        (description.phase, description.protocol_name.as_str()),
        (Phase::Stable, "range")
    );
    assert_eq!(
        description.members[0].assignment,
        Bytes::from_static(b"a-a")
    );
    assert_eq!(description.members[0].metadata, Bytes::from_static(b"sub"));
    drop(group.join(request("a", "x"), T0, &config()));
    let description = group.describe();
    assert_eq!(description.protocol_name, "");
    assert!(description.members[0].assignment.is_empty());
}
