//! Which Raft messages from the network a voter may step, decided without I/O.
//!
//! The `raft` crate trusts its peers: a heartbeat whose commit index is past the log end
//! panics it ("to_commit out of range"), an append whose entry indices skip around conflicts
//! with committed entries (another panic), a snapshot with a foreign configuration replaces
//! the voter set. Every message a connection delivers is checked here first, against what
//! this voter knows (its voters, term and log end); a refused one never reaches `step`, and
//! the shell closes the connection it came on.

use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};

use crate::cluster::ClusterMetadata;

/// Largest entry payload a voter proposes or accepts: metadata commands are far smaller
/// (a CreateTopics of the 10,000 partitions allowed per request is well under 1 MiB).
pub const MAX_ENTRY_BYTES: usize = 8 << 20;
/// Raft terms stay within Kafka's epochs (`int32`); no election sequence reaches this.
pub const MAX_TERM: u64 = i32::MAX as u64;

/// What the receiving voter knows when a message arrives.
#[derive(Debug, Clone, Copy)]
pub struct Receiver<'a> {
    pub id: u64,
    /// Every configured voter, this one included.
    pub voters: &'a [u64],
    pub cluster_id: &'a str,
    /// Its current term and the last index of its log.
    pub term: u64,
    pub last_index: u64,
    /// Whether it leads (only a leader counts acknowledgements).
    pub leader: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("message for {to} from {from}: not a voter to this voter")]
    NotAPeer { from: u64, to: u64 },
    #[error("{0:?} is not sent between voters")]
    LocalType(MessageType),
    #[error("term {0} out of range")]
    Term(u64),
    #[error("commit {commit} past the log end {last_index}")]
    CommitPastLog { commit: u64, last_index: u64 },
    #[error("acknowledged index {index} past the log end {last_index}")]
    IndexPastLog { index: u64, last_index: u64 },
    #[error("entries not contiguous after index {0}")]
    Entries(u64),
    #[error("entry {index} is {what}")]
    BadEntry { index: u64, what: &'static str },
    #[error("snapshot: {0}")]
    Snapshot(String),
}

/// Whether `msg` may be stepped by `me`. The sender's identity (the connection's hello) is
/// the transport's check; this one knows the log.
pub fn check(msg: &Message, me: &Receiver<'_>) -> Result<(), Refusal> {
    use MessageType::*;
    let (from, to) = (msg.from, msg.to);
    // From itself only through the transport's local delivery (a hello naming this voter
    // is refused), e.g. a proposal forwarded to itself as the leader it believed in.
    if to != me.id || !me.voters.contains(&from) {
        return Err(Refusal::NotAPeer { from, to });
    }
    let kind = msg.get_msg_type();
    match kind {
        // Forwarded proposals carry no term (the `raft` crate sends them as local messages).
        MsgPropose => return check_entries(msg.get_entries()),
        MsgAppend
        | MsgAppendResponse
        | MsgRequestVote
        | MsgRequestVoteResponse
        | MsgSnapshot
        | MsgHeartbeat
        | MsgHeartbeatResponse
        | MsgRequestPreVote
        | MsgRequestPreVoteResponse => {}
        // Local inputs, and leader transfer and read-index, which this controller never uses.
        _ => return Err(Refusal::LocalType(kind)),
    }
    // Term 0 would make `raft` treat it as a local message.
    if msg.term == 0 || msg.term > MAX_TERM {
        return Err(Refusal::Term(msg.term));
    }
    // `raft` ignores a message of an older term before looking at its indices.
    let current = msg.term >= me.term;
    match kind {
        MsgHeartbeat if current && msg.commit > me.last_index => Err(Refusal::CommitPastLog {
            commit: msg.commit,
            last_index: me.last_index,
        }),
        // A follower ignores acknowledgements (one may even be for entries a leader sent
        // before it crashed with them unwritten, in its old term).
        MsgAppendResponse
            if me.leader && msg.term == me.term && !msg.reject && msg.index > me.last_index =>
        {
            Err(Refusal::IndexPastLog {
                index: msg.index,
                last_index: me.last_index,
            })
        }
        MsgAppend => check_append(msg),
        MsgSnapshot => check_snapshot(msg.get_snapshot(), msg.term, me),
        _ => Ok(()),
    }
}

/// An append's entries follow its `index` one by one, within its term, in term order.
fn check_append(msg: &Message) -> Result<(), Refusal> {
    if msg.log_term > msg.term {
        return Err(Refusal::Term(msg.log_term));
    }
    let entries = msg.get_entries();
    // Every index below is at most this one, so none overflows.
    msg.index
        .checked_add(entries.len() as u64)
        .ok_or(Refusal::Entries(msg.index))?;
    let mut term = msg.log_term;
    for (offset, entry) in (1..).zip(entries) {
        if entry.index != msg.index + offset || entry.term < term || entry.term > msg.term {
            return Err(Refusal::Entries(msg.index));
        }
        term = entry.term;
    }
    check_entries(entries)
}

/// Only normal entries (the voter set is static: no configuration changes), each within
/// [`MAX_ENTRY_BYTES`].
fn check_entries(entries: &[Entry]) -> Result<(), Refusal> {
    for entry in entries {
        let index = entry.index;
        if entry.get_entry_type() != EntryType::EntryNormal {
            return Err(Refusal::BadEntry {
                index,
                what: "a configuration change",
            });
        }
        if entry.data.len() > MAX_ENTRY_BYTES || entry.context.len() > MAX_ENTRY_BYTES {
            return Err(Refusal::BadEntry {
                index,
                what: "too large",
            });
        }
    }
    Ok(())
}

/// A snapshot within the sender's term, of this cluster's voters, holding readable metadata
/// of this cluster.
fn check_snapshot(snapshot: &Snapshot, term: u64, me: &Receiver<'_>) -> Result<(), Refusal> {
    let meta = snapshot.get_metadata();
    if meta.index == 0 || meta.term == 0 || meta.term > term {
        return Err(Refusal::Snapshot(format!(
            "index {} term {} in term {term}",
            meta.index, meta.term
        )));
    }
    let mut voters = me.voters.to_vec();
    voters.sort_unstable();
    let expected = ConfState::from((voters, vec![]));
    let mut got = meta.get_conf_state().clone();
    got.voters.sort_unstable();
    if got != expected {
        return Err(Refusal::Snapshot(format!(
            "voters {:?}, learners {:?}",
            got.voters, got.learners
        )));
    }
    let metadata: ClusterMetadata = serde_json::from_slice(snapshot.get_data())
        .map_err(|e| Refusal::Snapshot(format!("unreadable metadata: {e}")))?;
    if metadata.cluster_id != me.cluster_id {
        return Err(Refusal::Snapshot(format!(
            "of cluster {:?}",
            metadata.cluster_id
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::SnapshotMetadata;

    const VOTERS: [u64; 3] = [1, 2, 3];

    /// Voter 1 of cluster "c" in term 5, its log ending at index 10.
    fn me() -> Receiver<'static> {
        Receiver {
            id: 1,
            voters: &VOTERS,
            cluster_id: "c",
            term: 5,
            last_index: 10,
            leader: true,
        }
    }

    fn msg(kind: MessageType, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.from = 2;
        m.to = 1;
        m.term = term;
        m
    }

    fn entry(index: u64, term: u64, bytes: usize) -> Entry {
        Entry {
            index,
            term,
            data: vec![b'x'; bytes].into(),
            ..Default::default()
        }
    }

    fn append(index: u64, log_term: u64, entries: Vec<Entry>) -> Message {
        let mut m = msg(MessageType::MsgAppend, 5);
        m.index = index;
        m.log_term = log_term;
        m.set_entries(entries.into());
        m
    }

    #[test]
    fn the_forged_heartbeat_that_crashed_raft_is_refused() {
        // The original attack: term 1000, commit 2^40, no sender.
        let mut forged = msg(MessageType::MsgHeartbeat, 1000);
        forged.from = 0;
        forged.to = 0;
        forged.commit = 1 << 40;
        assert!(matches!(
            check(&forged, &me()),
            Err(Refusal::NotAPeer { .. })
        ));
        // The same from a voter: its commit is past the log end.
        forged.from = 2;
        forged.to = 1;
        assert_eq!(
            check(&forged, &me()),
            Err(Refusal::CommitPastLog {
                commit: 1 << 40,
                last_index: 10
            })
        );
        // A leader's heartbeat commits at most what this log holds.
        forged.commit = 10;
        assert_eq!(check(&forged, &me()), Ok(()));
        // Of an older term, raft ignores its commit.
        let mut stale = msg(MessageType::MsgHeartbeat, 4);
        stale.commit = 1 << 40;
        assert_eq!(check(&stale, &me()), Ok(()));
    }

    #[test]
    fn senders_types_and_terms_are_checked() {
        let ok = msg(MessageType::MsgRequestVote, 6);
        assert_eq!(check(&ok, &me()), Ok(()));
        for (from, to) in [(4, 1), (2, 3), (0, 1)] {
            let mut m = ok.clone();
            (m.from, m.to) = (from, to);
            assert_eq!(check(&m, &me()), Err(Refusal::NotAPeer { from, to }));
        }
        for local in [
            MessageType::MsgHup,
            MessageType::MsgBeat,
            MessageType::MsgUnreachable,
            MessageType::MsgSnapStatus,
            MessageType::MsgCheckQuorum,
            MessageType::MsgTransferLeader,
            MessageType::MsgTimeoutNow,
            MessageType::MsgReadIndex,
        ] {
            assert_eq!(check(&msg(local, 6), &me()), Err(Refusal::LocalType(local)));
        }
        for term in [0, MAX_TERM + 1, u64::MAX] {
            let mut m = ok.clone();
            m.term = term;
            assert_eq!(check(&m, &me()), Err(Refusal::Term(term)));
        }
        // A forwarded proposal has no term.
        let mut propose = msg(MessageType::MsgPropose, 0);
        propose.set_entries(vec![entry(0, 0, 100)].into());
        assert_eq!(check(&propose, &me()), Ok(()));
    }

    #[test]
    fn appends_must_be_contiguous_normal_and_bounded() {
        assert_eq!(
            check(
                &append(10, 5, vec![entry(11, 5, 10), entry(12, 5, 10)]),
                &me()
            ),
            Ok(())
        );
        // Indices that skip (raft would find a "conflict" with a committed entry).
        for entries in [
            vec![entry(1, 5, 10)],
            vec![entry(11, 5, 10), entry(13, 5, 10)],
            vec![entry(11, 6, 10)], // past the message's term
            vec![entry(11, 5, 10), entry(12, 4, 10)], // terms going back
        ] {
            assert_eq!(
                check(&append(10, 5, entries), &me()),
                Err(Refusal::Entries(10))
            );
        }
        assert_eq!(
            check(&append(u64::MAX, 5, vec![entry(0, 5, 1)]), &me()),
            Err(Refusal::Entries(u64::MAX))
        );
        assert_eq!(check(&append(10, 6, vec![]), &me()), Err(Refusal::Term(6)));
        let mut conf = entry(11, 5, 10);
        conf.set_entry_type(EntryType::EntryConfChange);
        assert!(matches!(
            check(&append(10, 5, vec![conf]), &me()),
            Err(Refusal::BadEntry { index: 11, .. })
        ));
        assert!(matches!(
            check(
                &append(10, 5, vec![entry(11, 5, MAX_ENTRY_BYTES + 1)]),
                &me()
            ),
            Err(Refusal::BadEntry { index: 11, .. })
        ));
        assert_eq!(
            check(&append(10, 5, vec![entry(11, 5, MAX_ENTRY_BYTES)]), &me()),
            Ok(())
        );
    }

    #[test]
    fn an_acknowledgement_past_the_log_end_is_refused() {
        let mut ack = msg(MessageType::MsgAppendResponse, 5);
        ack.index = 10;
        assert_eq!(check(&ack, &me()), Ok(()));
        ack.index = 1 << 40;
        assert!(matches!(
            check(&ack, &me()),
            Err(Refusal::IndexPastLog { .. })
        ));
        // A follower does not count it.
        let follower = Receiver {
            leader: false,
            ..me()
        };
        assert_eq!(check(&ack, &follower), Ok(()));
        // A rejection's index is where the follower's log differs: not an acknowledgement.
        ack.reject = true;
        assert_eq!(check(&ack, &me()), Ok(()));
    }

    #[test]
    fn snapshots_must_be_of_this_cluster_and_its_voters() {
        let snapshot = |cluster: &str, voters: Vec<u64>, index: u64, term: u64| {
            let mut s = Snapshot::default();
            let metadata = ClusterMetadata::new(cluster.to_string());
            s.data = serde_json::to_vec(&metadata).unwrap().into();
            let mut meta = SnapshotMetadata {
                index,
                term,
                ..Default::default()
            };
            meta.set_conf_state(ConfState::from((voters, vec![])));
            s.set_metadata(meta);
            let mut m = msg(MessageType::MsgSnapshot, 5);
            m.set_snapshot(s);
            m
        };
        assert_eq!(check(&snapshot("c", vec![3, 1, 2], 20, 5), &me()), Ok(()));
        for bad in [
            snapshot("other", vec![1, 2, 3], 20, 5),
            snapshot("c", vec![1, 2], 20, 5),
            snapshot("c", vec![1, 2, 3, 4], 20, 5),
            snapshot("c", vec![1, 2, 3], 0, 5),
            snapshot("c", vec![1, 2, 3], 20, 6),
        ] {
            assert!(
                matches!(check(&bad, &me()), Err(Refusal::Snapshot(_))),
                "{bad:?}"
            );
        }
        let mut garbage = snapshot("c", vec![1, 2, 3], 20, 5);
        garbage.mut_snapshot().data = b"{not json".to_vec().into();
        assert!(matches!(check(&garbage, &me()), Err(Refusal::Snapshot(_))));
    }
}
