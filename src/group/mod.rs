//! Consumer groups: the classic rebalance protocol (`state`), committed offsets
//! (`offsets`) and their records in the internal `__consumer_offsets` topic (`records`), and
//! the coordinator that runs them on the shard owning a group's offsets partition
//! (`coordinator`, with its storage in `offsets_log`).
//!
//! Architecture invariant: `state`, `offsets` and `records` do no I/O and read no clock; the
//! coordinator feeds them requests, time and the log.

pub mod coordinator;
pub mod offsets;
mod offsets_log;
pub mod records;
pub mod state;

use bytes::Bytes;

/// The internal topic holding group metadata and committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The offsets-topic partition of a group, as Kafka computes it (`abs(groupId.hashCode) %
/// partitions`, with Java's `String.hashCode` over UTF-16 code units), so a group lands on
/// the same partition as on a Kafka cluster with the same partition count.
pub fn partition_for(group_id: &str, partitions: i32) -> i32 {
    let hash = group_id.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    // Kafka's Utils.abs maps i32::MIN to 0 rather than overflowing.
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions.max(1)
}

/// A group as stored in the offsets topic (Kafka's `GroupMetadataValue`): what a new
/// coordinator needs to carry on without a rebalance.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StoredGroup {
    pub protocol_type: String,
    pub generation_id: i32,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp_ms: i64,
    pub members: Vec<StoredMember>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct StoredMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    /// The metadata of the selected protocol.
    pub subscription: Bytes,
    pub assignment: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_matches_java_string_hash_code() {
        // "my-group".hashCode() == -1906497762 in Java; "".hashCode() == 0.
        assert_eq!(partition_for("my-group", 50), 1_906_497_762 % 50);
        assert_eq!(partition_for("", 50), 0);
        // A negative hash: "polygenelubricants".hashCode() == i32::MIN.
        assert_eq!(partition_for("polygenelubricants", 50), 0);
    }
}
