//! The records of `__consumer_offsets`, in Kafka's own formats (so Kafka's tools can read a
//! corelog offsets log): `OffsetCommitKey` v1 / `OffsetCommitValue` v3 for a committed
//! offset, `GroupMetadataKey` v2 / `GroupMetadataValue` v3 for a group. A record with a
//! null value (a tombstone) deletes what its key names.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{StoredGroup, StoredMember};
use crate::cluster::is_valid_topic_name;

const OFFSET_KEY_VERSION: i16 = 1;
const GROUP_KEY_VERSION: i16 = 2;
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_VALUE_VERSION: i16 = 3;
/// Kafka's `offset.metadata.max.bytes`: the coordinator refuses longer commit metadata.
pub const MAX_OFFSET_METADATA_BYTES: usize = 4096;

/// The longest string a record holds: Kafka's schema writes string lengths as int16.
pub const MAX_STRING_BYTES: usize = i16::MAX as usize;

/// A field too long for the record format; the group APIs refuse such input before it gets
/// here, so this is the last line, not the first.
#[derive(Debug, thiserror::Error)]
#[error("a field of {0} bytes (or items) is too long for an offsets record")]
pub struct FieldTooLong(usize);

/// A committed offset (Kafka's `OffsetAndMetadata`).
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// What a record's key names.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordKey {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group(String),
}

/// One record of the offsets topic, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum OffsetsRecord {
    Offset {
        group: String,
        topic: String,
        partition: i32,
        /// None: the offset was deleted (a tombstone).
        value: Option<CommittedOffset>,
    },
    Group {
        group: String,
        /// None: the group was deleted (a tombstone).
        value: Option<StoredGroup>,
    },
}

impl OffsetsRecord {
    pub fn key(&self) -> Result<Bytes, FieldTooLong> {
        let mut b = BytesMut::new();
        match self {
            OffsetsRecord::Offset {
                group,
                topic,
                partition,
                ..
            } => {
                b.put_i16(OFFSET_KEY_VERSION);
                put_str(&mut b, group)?;
                put_str(&mut b, topic)?;
                b.put_i32(*partition);
            }
            OffsetsRecord::Group { group, .. } => {
                b.put_i16(GROUP_KEY_VERSION);
                put_str(&mut b, group)?;
            }
        }
        Ok(b.freeze())
    }

    /// The record's value; None for a tombstone.
    pub fn value(&self) -> Result<Option<Bytes>, FieldTooLong> {
        let mut b = BytesMut::new();
        match self {
            OffsetsRecord::Offset { value, .. } => {
                let Some(v) = value else { return Ok(None) };
                b.put_i16(OFFSET_VALUE_VERSION);
                b.put_i64(v.offset);
                b.put_i32(v.leader_epoch);
                put_str(&mut b, &v.metadata)?;
                b.put_i64(v.commit_timestamp_ms);
            }
            OffsetsRecord::Group { value, .. } => {
                let Some(g) = value else { return Ok(None) };
                b.put_i16(GROUP_VALUE_VERSION);
                put_str(&mut b, &g.protocol_type)?;
                b.put_i32(g.generation_id);
                put_opt_str(&mut b, g.protocol_name.as_deref())?;
                put_opt_str(&mut b, g.leader.as_deref())?;
                b.put_i64(g.state_timestamp_ms);
                b.put_i32(length(g.members.len())?);
                for m in &g.members {
                    put_str(&mut b, &m.member_id)?;
                    put_opt_str(&mut b, m.group_instance_id.as_deref())?;
                    put_str(&mut b, &m.client_id)?;
                    put_str(&mut b, &m.client_host)?;
                    b.put_i32(m.rebalance_timeout_ms);
                    b.put_i32(m.session_timeout_ms);
                    put_bytes(&mut b, &m.subscription)?;
                    put_bytes(&mut b, &m.assignment)?;
                }
            }
        }
        Ok(Some(b.freeze()))
    }

    /// Whether this is a record the coordinator could have written: a non-empty group id,
    /// an offset of a valid topic name and partition with metadata within
    /// [`MAX_OFFSET_METADATA_BYTES`], a group of a non-negative generation whose members
    /// have distinct, non-empty ids. The loader skips any other record.
    pub fn check(&self) -> Result<(), String> {
        match self {
            OffsetsRecord::Offset { group, .. } | OffsetsRecord::Group { group, .. }
                if group.is_empty() =>
            {
                Err("empty group id".to_string())
            }
            OffsetsRecord::Offset {
                topic,
                partition,
                value,
                ..
            } => {
                if !is_valid_topic_name(topic) || *partition < 0 {
                    return Err(format!(
                        "offset of an invalid partition {topic:?}-{partition}"
                    ));
                }
                match value {
                    Some(v) if v.metadata.len() > MAX_OFFSET_METADATA_BYTES => {
                        Err(format!("{} bytes of commit metadata", v.metadata.len()))
                    }
                    _ => Ok(()),
                }
            }
            OffsetsRecord::Group { value: None, .. } => Ok(()),
            OffsetsRecord::Group { value: Some(g), .. } => {
                if g.generation_id < 0 {
                    return Err(format!("generation {}", g.generation_id));
                }
                let mut ids: Vec<&str> = g.members.iter().map(|m| m.member_id.as_str()).collect();
                ids.sort_unstable();
                let repeated = ids.windows(2).any(|w| w[0] == w[1]);
                if ids.first().is_some_and(|id| id.is_empty()) || repeated {
                    return Err("empty or repeated member ids".to_string());
                }
                Ok(())
            }
        }
    }

    /// Decodes a record read back from the log. Errors name what is malformed; the loader
    /// skips such records rather than refusing the whole partition.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<OffsetsRecord, String> {
        let mut k = key;
        let version = get_i16(&mut k)?;
        match version {
            0 | 1 => {
                let group = get_str(&mut k)?;
                let topic = get_str(&mut k)?;
                let partition = get_i32(&mut k)?;
                let value = value.map(decode_offset_value).transpose()?;
                Ok(OffsetsRecord::Offset {
                    group,
                    topic,
                    partition,
                    value,
                })
            }
            2 => {
                let group = get_str(&mut k)?;
                let value = value.map(decode_group_value).transpose()?;
                Ok(OffsetsRecord::Group { group, value })
            }
            v => Err(format!("unknown key version {v}")),
        }
    }
}

fn decode_offset_value(mut v: &[u8]) -> Result<CommittedOffset, String> {
    let version = get_i16(&mut v)?;
    // v0/v1 (no leader epoch; v1 with an expire timestamp) are Kafka's older formats.
    let offset = get_i64(&mut v)?;
    let leader_epoch = if version >= 3 { get_i32(&mut v)? } else { -1 };
    let metadata = get_str(&mut v)?;
    let commit_timestamp_ms = get_i64(&mut v)?;
    Ok(CommittedOffset {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp_ms,
    })
}

fn decode_group_value(mut v: &[u8]) -> Result<StoredGroup, String> {
    let version = get_i16(&mut v)?;
    if !(0..=GROUP_VALUE_VERSION).contains(&version) {
        return Err(format!("unknown group value version {version}"));
    }
    let protocol_type = get_str(&mut v)?;
    let generation_id = get_i32(&mut v)?;
    let protocol_name = get_opt_str(&mut v)?;
    let leader = get_opt_str(&mut v)?;
    let state_timestamp_ms = if version >= 2 { get_i64(&mut v)? } else { -1 };
    let count = get_i32(&mut v)?;
    let mut members = Vec::new();
    for _ in 0..count.max(0) {
        let member_id = get_str(&mut v)?;
        let group_instance_id = if version >= 3 {
            get_opt_str(&mut v)?
        } else {
            None
        };
        let client_id = get_str(&mut v)?;
        let client_host = get_str(&mut v)?;
        let rebalance_timeout_ms = if version >= 1 { get_i32(&mut v)? } else { -1 };
        let session_timeout_ms = get_i32(&mut v)?;
        let subscription = get_bytes(&mut v)?;
        let assignment = get_bytes(&mut v)?;
        let session_timeout_ms = session_timeout_ms.max(0);
        members.push(StoredMember {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms: if rebalance_timeout_ms < 0 {
                session_timeout_ms
            } else {
                rebalance_timeout_ms
            },
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    Ok(StoredGroup {
        protocol_type,
        generation_id,
        protocol_name,
        leader,
        state_timestamp_ms,
        members,
    })
}

fn put_str(b: &mut BytesMut, s: &str) -> Result<(), FieldTooLong> {
    let len = i16::try_from(s.len()).map_err(|_| FieldTooLong(s.len()))?;
    b.put_i16(len);
    b.put_slice(s.as_bytes());
    Ok(())
}

fn put_opt_str(b: &mut BytesMut, s: Option<&str>) -> Result<(), FieldTooLong> {
    match s {
        Some(s) => put_str(b, s),
        None => {
            b.put_i16(-1);
            Ok(())
        }
    }
}

fn put_bytes(b: &mut BytesMut, bytes: &[u8]) -> Result<(), FieldTooLong> {
    b.put_i32(length(bytes.len())?);
    b.put_slice(bytes);
    Ok(())
}

fn length(n: usize) -> Result<i32, FieldTooLong> {
    i32::try_from(n).map_err(|_| FieldTooLong(n))
}

fn need(buf: &[u8], n: usize, what: &str) -> Result<(), String> {
    if buf.remaining() < n {
        return Err(format!("truncated {what}"));
    }
    Ok(())
}

fn get_i16(buf: &mut &[u8]) -> Result<i16, String> {
    need(buf, 2, "int16")?;
    Ok(buf.get_i16())
}

fn get_i32(buf: &mut &[u8]) -> Result<i32, String> {
    need(buf, 4, "int32")?;
    Ok(buf.get_i32())
}

fn get_i64(buf: &mut &[u8]) -> Result<i64, String> {
    need(buf, 8, "int64")?;
    Ok(buf.get_i64())
}

fn get_opt_str(buf: &mut &[u8]) -> Result<Option<String>, String> {
    let len = get_i16(buf)?;
    if len < 0 {
        return Ok(None);
    }
    let len = len as usize;
    need(buf, len, "string")?;
    let s = String::from_utf8(buf[..len].to_vec()).map_err(|_| "string is not UTF-8")?;
    buf.advance(len);
    Ok(Some(s))
}

fn get_str(buf: &mut &[u8]) -> Result<String, String> {
    get_opt_str(buf)?.ok_or_else(|| "null string".to_string())
}

fn get_bytes(buf: &mut &[u8]) -> Result<Bytes, String> {
    let len = get_i32(buf)?;
    if len < 0 {
        return Ok(Bytes::new());
    }
    let len = len as usize;
    need(buf, len, "bytes")?;
    let b = Bytes::copy_from_slice(&buf[..len]);
    buf.advance(len);
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(r: OffsetsRecord) {
        let value = r.value().unwrap();
        assert_eq!(
            OffsetsRecord::decode(&r.key().unwrap(), value.as_deref()).unwrap(),
            r
        );
    }

    #[test]
    fn offsets_and_groups_round_trip() {
        round_trip(OffsetsRecord::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 7,
            value: Some(CommittedOffset {
                offset: 42,
                leader_epoch: 3,
                metadata: "m".into(),
                commit_timestamp_ms: 1_700_000_000_000,
            }),
        });
        round_trip(OffsetsRecord::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 7,
            value: None,
        });
        round_trip(OffsetsRecord::Group {
            group: "g".into(),
            value: Some(StoredGroup {
                protocol_type: "consumer".into(),
                generation_id: 5,
                protocol_name: Some("range".into()),
                leader: Some("m1".into()),
                state_timestamp_ms: 9,
                members: vec![StoredMember {
                    member_id: "m1".into(),
                    group_instance_id: Some("i1".into()),
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    rebalance_timeout_ms: 300_000,
                    session_timeout_ms: 10_000,
                    subscription: Bytes::from_static(b"sub"),
                    assignment: Bytes::from_static(b"asg"),
                }],
            }),
        });
        round_trip(OffsetsRecord::Group {
            group: "g".into(),
            value: None,
        });
    }

    #[test]
    fn only_records_the_coordinator_could_write_pass_the_check() {
        let offset = |group: &str, topic: &str, partition, metadata: usize| OffsetsRecord::Offset {
            group: group.into(),
            topic: topic.into(),
            partition,
            value: Some(CommittedOffset {
                offset: 5,
                leader_epoch: -1,
                metadata: "m".repeat(metadata),
                commit_timestamp_ms: 0,
            }),
        };
        assert_eq!(
            offset("g", "t", 0, MAX_OFFSET_METADATA_BYTES).check(),
            Ok(())
        );
        assert!(offset("", "t", 0, 0).check().is_err());
        assert!(offset("g", "bad/topic", 0, 0).check().is_err());
        assert!(offset("g", "t", -1, 0).check().is_err());
        assert!(
            offset("g", "t", 0, MAX_OFFSET_METADATA_BYTES + 1)
                .check()
                .is_err()
        );
        let member = |id: &str| StoredMember {
            member_id: id.into(),
            ..StoredMember::default()
        };
        let group = |generation_id, members| OffsetsRecord::Group {
            group: "g".into(),
            value: Some(StoredGroup {
                generation_id,
                members,
                ..StoredGroup::default()
            }),
        };
        assert_eq!(group(3, vec![member("a"), member("b")]).check(), Ok(()));
        assert!(group(-1, vec![]).check().is_err());
        assert!(group(3, vec![member("a"), member("a")]).check().is_err());
        assert!(group(3, vec![member("")]).check().is_err());
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        let good = OffsetsRecord::Group {
            group: "group".into(),
            value: Some(StoredGroup::default()),
        };
        let (key, value) = (good.key().unwrap(), good.value().unwrap().unwrap());
        for cut in 0..key.len() {
            assert!(OffsetsRecord::decode(&key[..cut], Some(&value)).is_err());
        }
        for cut in 0..value.len() {
            assert!(OffsetsRecord::decode(&key, Some(&value[..cut])).is_err());
        }
        assert!(OffsetsRecord::decode(&[0, 9], None).is_err());
    }

    #[test]
    fn strings_longer_than_an_int16_length_are_refused_not_wrapped() {
        let longest = "g".repeat(MAX_STRING_BYTES);
        round_trip(OffsetsRecord::Group {
            group: longest.clone(),
            value: None,
        });
        let too_long = OffsetsRecord::Group {
            group: longest + "g",
            value: None,
        };
        assert!(too_long.key().is_err());
        let member = StoredMember {
            client_id: "c".repeat(MAX_STRING_BYTES + 1),
            ..StoredMember::default()
        };
        let too_long = OffsetsRecord::Group {
            group: "g".into(),
            value: Some(StoredGroup {
                members: vec![member],
                ..StoredGroup::default()
            }),
        };
        assert!(too_long.value().is_err());
    }
}
