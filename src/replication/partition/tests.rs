//! The partition's decisions, event by event (Kafka's `PartitionTest`, `DelayedProduce`).

use super::*;
use crate::replication::divergence::test_log::log;

const LAG: i64 = 10_000;

fn state(leader: i32, leader_epoch: i32, partition_epoch: i32, isr: &[i32]) -> PartitionState {
    PartitionState {
        replicas: vec![1, 2, 3],
        leader,
        leader_epoch,
        isr: isr.to_vec(),
        partition_epoch,
        offline: Vec::new(),
    }
}

/// Broker 1 leading epoch 1 with ISR {1, 2, 3}, min.insync.replicas 2, on an empty log.
fn leader() -> Partition {
    let mut p = Partition::new(1);
    p.on_metadata(&state(1, 1, 1, &[1, 2, 3]), 0, 0, 1_000, 2);
    p
}

fn fetch(replica_id: i32, fetch_offset: i64) -> FollowerFetch {
    FollowerFetch {
        replica_id,
        fetch_offset,
        last_fetched_epoch: -1,
        current_leader_epoch: 1,
        live: true,
    }
}

#[test]
fn an_ack_is_answered_once_the_high_watermark_passes_its_batch() {
    let mut p = leader();
    assert_eq!(p.check_produce(-1), Ok(1));
    let id = p.await_commit(10, 1, 30_000).unwrap_err();
    assert_eq!(p.on_durable(10).acks, vec![], "followers have nothing yet");
    let empty = log(&[(1, 0)], 10);
    let (_, e) = p.on_follower_fetch(fetch(2, 10), &empty, 10, 1_100);
    assert_eq!(e.acks, vec![], "3 is in the ISR and at -1");
    let (read, e) = p.on_follower_fetch(fetch(3, 10), &empty, 10, 1_100);
    assert_eq!(read, FollowerRead::Records { end: 10 });
    assert_eq!(e.acks, vec![(id, 0)]);
    assert_eq!(e.high_watermark, Some(10));
    // Already committed: answered at once.
    assert_eq!(p.await_commit(10, 1, 30_000), Ok(0));
}

/// Followers are served what the leader appended before its fdatasync ends (Kafka
/// replicates the log end), but an ack still needs the batch on the leader's disk too.
#[test]
fn followers_get_what_is_not_yet_durable_and_the_ack_waits_for_the_leaders_disk() {
    let mut p = leader();
    let id = p.await_commit(10, 1, 30_000).unwrap_err();
    let appended = log(&[(1, 0)], 10);
    let (read, e) = p.on_follower_fetch(fetch(2, 0), &appended, 0, 1_100);
    assert_eq!(read, FollowerRead::Records { end: 10 }, "the log end");
    assert_eq!(e.acks, vec![]);
    // Both followers have it on their disks; the leader's fdatasync has not ended.
    p.on_follower_fetch(fetch(2, 10), &appended, 0, 1_200);
    let (_, e) = p.on_follower_fetch(fetch(3, 10), &appended, 0, 1_200);
    assert_eq!((e.acks, p.high_watermark()), (vec![], Some(0)));
    let e = p.on_durable(10);
    assert_eq!(e.acks, vec![(id, 0)]);
    assert_eq!(e.high_watermark, Some(10));
}

#[test]
fn an_ack_waits_while_the_isr_is_below_min_and_notes_a_shrunk_isr() {
    let mut p = Partition::new(1);
    p.on_metadata(&state(1, 1, 1, &[1, 2]), 0, 0, 1_000, 2);
    let id = p.await_commit(5, 1, 30_000).unwrap_err();
    // The ISR shrinks to the leader alone: KIP-966, the high watermark stops below min 2.
    let e = p.on_metadata(&state(1, 1, 2, &[1]), 5, 0, 2_000, 2);
    assert_eq!(e.acks, vec![]);
    assert_eq!(p.check_produce(-1), Err(ErrorCode::NotEnoughReplicas));
    assert_eq!(p.check_produce(1), Ok(1), "acks=1 does not need the ISR");
    assert_eq!(
        p.expire(30_000).acks,
        vec![(id, ErrorCode::RequestTimedOut.code())]
    );
    // Should the high watermark pass a batch while fewer replicas than the minimum are in
    // sync (here forced by hand), the answer says so.
    let mut q = Partition::new(1);
    q.on_metadata(&state(1, 1, 1, &[1]), 0, 0, 1_000, 1);
    let late = q.await_commit(5, 1, 30_000).unwrap_err();
    q.min_isr = 2;
    q.role = match q.role.clone() {
        Role::Leader(mut l) => {
            l.advance_high_watermark(5, 1);
            Role::Leader(l)
        }
        other => other,
    };
    let after_append = ErrorCode::NotEnoughReplicasAfterAppend.code();
    assert_eq!(q.on_durable(5).acks, vec![(late, after_append)]);
}

#[test]
fn acks_of_an_ended_leadership_are_not_leader_or_follower() {
    let mut p = leader();
    let id = p.await_commit(10, 1, 30_000).unwrap_err();
    // Re-elected at a new epoch: the batch of epoch 1 is not this leadership's to commit.
    let e = p.on_metadata(&state(1, 2, 2, &[1, 2, 3]), 10, 0, 2_000, 2);
    assert_eq!(e.acks, vec![(id, ErrorCode::NotLeaderOrFollower.code())]);
    let id = p.await_commit(12, 2, 30_000).unwrap_err();
    let e = p.on_metadata(&state(2, 3, 3, &[2, 3]), 12, 0, 3_000, 2);
    assert_eq!(e.acks, vec![(id, ErrorCode::NotLeaderOrFollower.code())]);
    assert_eq!(p.following(), Some((2, 3)));
    assert_eq!(p.check_produce(1), Err(ErrorCode::NotLeaderOrFollower));
    assert_eq!(
        p.await_commit(12, 2, 30_000),
        Ok(ErrorCode::NotLeaderOrFollower.code())
    );
}

#[test]
fn an_ack_times_out_at_its_deadline() {
    let mut p = leader();
    let early = p.await_commit(10, 1, 5_000).unwrap_err();
    let late = p.await_commit(20, 1, 9_000).unwrap_err();
    assert_eq!(p.expire(4_999).acks, vec![]);
    let timed_out = ErrorCode::RequestTimedOut.code();
    assert_eq!(p.expire(5_000).acks, vec![(early, timed_out)]);
    p.forget(late);
    assert_eq!(p.expire(10_000).acks, vec![]);
}

#[test]
fn a_diverged_follower_is_told_where_to_truncate() {
    let mut p = leader();
    // Our epoch 1 starts at 0 and we appended up to 8; the follower has epoch 0 up to 12.
    let ours = log(&[(1, 0)], 8);
    let mut f = fetch(2, 12);
    f.last_fetched_epoch = 0;
    let (read, e) = p.on_follower_fetch(f, &ours, 8, 1_100);
    assert_eq!(
        read,
        FollowerRead::Diverging {
            epoch: 0,
            end_offset: 0
        }
    );
    assert_eq!(
        e,
        Effects::default(),
        "a diverged follower's position is not recorded"
    );
}

#[test]
fn a_caught_up_follower_is_proposed_back_into_the_isr_once() {
    let mut p = Partition::new(1);
    p.on_metadata(&state(1, 1, 1, &[1, 2]), 0, 0, 1_000, 1);
    let ours = log(&[(1, 0)], 0);
    let (_, e) = p.on_follower_fetch(fetch(3, 0), &ours, 0, 1_100);
    let proposal = IsrProposal {
        leader_epoch: 1,
        partition_epoch: 1,
        isr: vec![1, 2, 3],
    };
    assert_eq!(e.propose_isr, Some(proposal.clone()));
    assert!(p.is_pending(&proposal));
    let (_, e) = p.on_follower_fetch(fetch(3, 0), &ours, 0, 1_200);
    assert_eq!(e.propose_isr, None, "one change in flight");
    // A fenced broker is not proposed.
    let mut q = Partition::new(1);
    q.on_metadata(&state(1, 1, 1, &[1, 2]), 0, 0, 1_000, 1);
    let mut fenced = fetch(3, 0);
    fenced.live = false;
    assert_eq!(
        q.on_follower_fetch(fenced, &ours, 0, 1_100).1.propose_isr,
        None
    );
}

#[test]
fn an_isr_change_is_resent_until_settled_and_dropped_only_on_a_definite_refusal() {
    let mut p = leader();
    let e = p.shrink_check(1_000 + LAG + 1, LAG);
    let proposal = e.propose_isr.expect("2 and 3 never fetched");
    assert_eq!(proposal.isr, vec![1]);
    assert_eq!(
        p.on_isr_answer(&proposal, IsrAnswer::Unknown, 20_000),
        IsrNext::ResendAt(20_000 + ISR_RESEND_MS)
    );
    let timed_out = IsrAnswer::Refused(ErrorCode::RequestTimedOut.code());
    assert_eq!(
        p.on_isr_answer(&proposal, timed_out, 21_000),
        IsrNext::ResendAt(21_000 + ISR_RESEND_MS)
    );
    // A stale partition epoch: the metadata that settled it is on its way; still pending.
    let stale = IsrAnswer::Refused(ErrorCode::InvalidUpdateVersion.code());
    assert_eq!(p.on_isr_answer(&proposal, stale, 22_000), IsrNext::Done);
    assert!(p.is_pending(&proposal));
    // A definite refusal: back to the committed ISR, a new proposal only after a pause.
    let refused = IsrAnswer::Refused(ErrorCode::IneligibleReplica.code());
    assert_eq!(p.on_isr_answer(&proposal, refused, 23_000), IsrNext::Done);
    assert!(!p.is_pending(&proposal));
    assert_eq!(p.shrink_check(23_001, LAG).propose_isr, None);
    // Settled by a new partition epoch: no longer pending, nothing more to send.
    let again = p
        .shrink_check(30_000, LAG)
        .propose_isr
        .expect("after the pause");
    p.on_metadata(&state(1, 1, 2, &[1]), 0, 0, 30_100, 1);
    assert_eq!(
        p.on_isr_answer(&again, IsrAnswer::Unknown, 30_200),
        IsrNext::Done
    );
}

/// Issue 10: a fetch claiming an offset far past the leader's log end once moved the
/// high watermark over data no follower had, and acks=all produces succeeded with the only
/// follower stopped. Kafka updates a follower's state only after a successful read.
#[test]
fn a_fetch_past_the_log_end_changes_no_follower_state() {
    let mut p = Partition::new(1);
    p.on_metadata(&state(1, 1, 1, &[1, 2]), 0, 0, 1_000, 2);
    let id = p.await_commit(10, 1, 30_000).unwrap_err();
    assert_eq!(p.on_durable(10).acks, vec![]);
    let ours = log(&[(1, 0)], 10);
    let out_of_range = FollowerRead::Refused(ErrorCode::OffsetOutOfRange);
    let (read, e) = p.on_follower_fetch(fetch(2, 1 << 62), &ours, 10, 1_100);
    assert_eq!((read, e), (out_of_range, Effects::default()));
    assert_eq!(p.high_watermark(), Some(0), "nothing was replicated");
    // Below the log start too, whatever the epochs say.
    let mut below = fetch(2, -1);
    below.last_fetched_epoch = 1;
    assert_eq!(p.on_follower_fetch(below, &ours, 10, 1_200).0, out_of_range);
    assert_eq!(p.high_watermark(), Some(0));
    // The real follower at the log end commits the batch.
    let (read, e) = p.on_follower_fetch(fetch(2, 10), &ours, 10, 1_300);
    assert_eq!(read, FollowerRead::Records { end: 10 });
    assert_eq!(e.acks, vec![(id, 0)]);
}

#[test]
fn only_a_follower_of_the_partition_may_fetch_as_a_replica() {
    let mut p = Partition::new(1);
    p.on_metadata(&state(1, 1, 1, &[1, 2]), 0, 0, 1_000, 1);
    let ours = log(&[(1, 0)], 0);
    // Kafka's followerReplicaOrThrow: UNKNOWN_LEADER_EPOCH when the fetch names an epoch.
    let unknown = FollowerRead::Refused(ErrorCode::UnknownLeaderEpoch);
    assert_eq!(p.on_follower_fetch(fetch(4, 0), &ours, 0, 1_100).0, unknown);
    assert_eq!(p.on_follower_fetch(fetch(1, 0), &ours, 0, 1_100).0, unknown);
    let mut no_epoch = fetch(4, 0);
    no_epoch.current_leader_epoch = -1;
    let not_leader = FollowerRead::Refused(ErrorCode::NotLeaderOrFollower);
    assert_eq!(p.on_follower_fetch(no_epoch, &ours, 0, 1_100).0, not_leader);
    // Not in the ISR, but a replica: served, and proposed into the ISR.
    let (read, e) = p.on_follower_fetch(fetch(3, 0), &ours, 0, 1_100);
    assert_eq!(read, FollowerRead::Records { end: 0 });
    assert!(e.propose_isr.is_some());
    // A follower does not serve replica fetches.
    let mut f = Partition::new(2);
    f.on_metadata(&state(1, 1, 1, &[1, 2]), 0, 0, 1_000, 1);
    assert_eq!(
        f.on_follower_fetch(fetch(3, 0), &ours, 0, 1_100).0,
        not_leader
    );
}

#[test]
#[should_panic(expected = "leader epoch went back")]
fn leader_epochs_never_go_back() {
    let mut p = leader();
    p.on_metadata(&state(1, 0, 2, &[1, 2, 3]), 0, 0, 2_000, 2);
}
