//! The coordinator's storage: group records written to its `__consumer_offsets` partition
//! with acks=all before anyone is answered, and replayed from the log when a leadership of
//! the partition begins (Kafka's `GroupMetadataManager`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::offsets::{Loader, PartitionGroups, TopicPartition};
use super::records::{CommittedOffset, MAX_OFFSET_METADATA_BYTES, OffsetsRecord};
use super::state::Phase;
use super::{OFFSETS_TOPIC, StoredGroup};
use crate::protocol::ErrorCode;
use crate::protocol::record_batch::validate_batches;
use crate::replication::replica::Replica;
use crate::storage::now_ms;

const NONE: i16 = 0;
/// How much of the log one read brings back while loading.
const LOAD_CHUNK_BYTES: usize = 1 << 20;

/// The groups of one offsets partition, for one leadership of it.
pub(super) struct OffsetsPartition {
    pub(super) index: i32,
    pub(super) leader_epoch: i32,
    pub(super) replica: Rc<Replica>,
    /// None while the partition's records are being replayed.
    pub(super) groups: RefCell<Option<PartitionGroups>>,
    /// The stored form of each group as last written, so only changes are written.
    pub(super) written: RefCell<HashMap<String, StoredGroup>>,
}

impl OffsetsPartition {
    /// Runs `f` on the loaded groups. Never held across an await.
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut PartitionGroups) -> R) -> R {
        let mut groups = self.groups.borrow_mut();
        let groups = groups.get_or_insert_with(PartitionGroups::default);
        f(groups)
    }
}

/// Commits offsets: one batch, acks=all, then the offsets become visible to OffsetFetch.
pub(super) async fn commit(
    timeout: Duration,
    p: &Rc<OffsetsPartition>,
    gid: &str,
    offsets: Vec<(TopicPartition, CommittedOffset)>,
) -> Vec<i16> {
    let mut codes = vec![NONE; offsets.len()];
    let mut records = Vec::new();
    for (code, ((topic, partition), value)) in codes.iter_mut().zip(offsets) {
        if value.metadata.len() > MAX_OFFSET_METADATA_BYTES {
            *code = ErrorCode::OffsetMetadataTooLarge.code();
            continue;
        }
        records.push(OffsetsRecord::Offset {
            group: gid.to_string(),
            topic,
            partition,
            value: Some(value),
        });
    }
    if records.is_empty() {
        return codes;
    }
    let code = write_and_apply(timeout, p, records).await;
    for c in codes.iter_mut().filter(|c| **c == NONE) {
        *c = code;
    }
    codes
}

/// Writes records and, once committed, applies them to the partition's groups.
pub(super) async fn write_and_apply(
    timeout: Duration,
    p: &Rc<OffsetsPartition>,
    records: Vec<OffsetsRecord>,
) -> i16 {
    match write(timeout, p, &records).await {
        Ok(base_offset) => {
            p.with(|g| {
                for (record, offset) in records.into_iter().zip(base_offset..) {
                    g.apply_written(record, offset);
                }
            });
            NONE
        }
        Err(code) => code,
    }
}

/// Writes a group's stored form; the error code members are answered with.
pub(super) async fn write_group(
    timeout: Duration,
    p: &Rc<OffsetsPartition>,
    gid: &str,
    stored: StoredGroup,
) -> i16 {
    // Marked before the write completes, so concurrent callers do not write it again.
    p.written
        .borrow_mut()
        .insert(gid.to_string(), stored.clone());
    let record = OffsetsRecord::Group {
        group: gid.to_string(),
        value: Some(stored),
    };
    match write(timeout, p, std::slice::from_ref(&record)).await {
        Ok(_) => NONE,
        Err(code) => {
            p.written.borrow_mut().remove(gid);
            code
        }
    }
}

/// Writes a Stable or Empty group whose stored form changed (members left, sessions
/// expired, a rebalance ended with nobody): a new coordinator then starts from it.
pub(super) async fn persist_if_settled(timeout: Duration, p: &Rc<OffsetsPartition>, gid: &str) {
    let changed = p.with(|g| {
        let group = g.group_mut(gid)?;
        if !matches!(group.phase(), Phase::Stable | Phase::Empty) {
            return None;
        }
        let stored = group.stored();
        (p.written.borrow().get(gid) != Some(&stored)).then_some(stored)
    });
    if let Some(stored) = changed {
        let code = write_group(timeout, p, gid, stored).await;
        if code != NONE {
            tracing::warn!(group = gid, code, "storing group metadata failed");
        }
    }
}

/// Appends records to the offsets partition as one batch and waits until the ISR has it
/// (acks=all). Returns the first record's offset, or the error Kafka's coordinator answers
/// for the append's failure.
async fn write(
    timeout: Duration,
    p: &Rc<OffsetsPartition>,
    records: &[OffsetsRecord],
) -> Result<i64, i16> {
    let batch = encode_batch(records).map_err(|e| {
        tracing::error!("cannot encode offsets records: {e}");
        ErrorCode::UnknownServerError.code()
    })?;
    let infos = validate_batches(&batch).map_err(|e| {
        tracing::error!("encoded offsets batch is invalid: {e}");
        ErrorCode::UnknownServerError.code()
    })?;
    let replica = &p.replica;
    let appended = replica
        .append(-1, batch, &infos)
        .map_err(|code| coordinator_error(code).code())?;
    match replica.complete(appended, -1, timeout).await {
        NONE => Ok(appended.base_offset),
        code => Err(coordinator_error(code).code()),
    }
}

/// Kafka's mapping of a failed offsets append to what the group's clients are told.
fn coordinator_error(code: i16) -> ErrorCode {
    let Some(e) = ErrorCode::try_from_code(code) else {
        return ErrorCode::UnknownServerError;
    };
    match e {
        ErrorCode::UnknownTopicOrPartition
        | ErrorCode::NotEnoughReplicas
        | ErrorCode::NotEnoughReplicasAfterAppend
        | ErrorCode::RequestTimedOut => ErrorCode::CoordinatorNotAvailable,
        ErrorCode::NotLeaderOrFollower | ErrorCode::KafkaStorageError => ErrorCode::NotCoordinator,
        ErrorCode::MessageTooLarge | ErrorCode::RecordListTooLarge => {
            ErrorCode::InvalidCommitOffsetSize
        }
        _ => ErrorCode::UnknownServerError,
    }
}

fn encode_batch(records: &[OffsetsRecord]) -> anyhow::Result<BytesMut> {
    let timestamp = now_ms();
    let records = (0..)
        .zip(records)
        .map(|(delta, r)| {
            Ok(Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: delta,
                sequence: -1,
                timestamp,
                key: Some(r.key()?),
                value: r.value()?,
                headers: Default::default(),
            })
        })
        .collect::<anyhow::Result<Vec<Record>>>()?;
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )?;
    Ok(buf)
}

/// Replays the partition's records from its log start to its log end, then serves.
pub(super) async fn load(p: Rc<OffsetsPartition>) {
    let started = std::time::Instant::now();
    let log = p.replica.log.clone();
    let end = log.log_end_offset();
    let mut next = log.log_start_offset();
    let mut loader = Loader::default();
    let mut records = 0usize;
    while next < end {
        let read = match log.read(next, LOAD_CHUNK_BYTES, end).await {
            Ok(read) => read,
            Err(e) => {
                // The partition stays loading (clients retry); a new leadership retries.
                tracing::error!("{OFFSETS_TOPIC}-{}: cannot load: {e}", p.index);
                return;
            }
        };
        let before = next;
        for (offset, key, value) in batch_records(&read.contiguous(), &mut next) {
            records += 1;
            let record = OffsetsRecord::decode(&key, value.as_deref());
            match record.and_then(|r| r.check().map(|()| r)) {
                Ok(record) => loader.apply(record, offset),
                Err(e) => tracing::warn!(
                    "{OFFSETS_TOPIC}-{} offset {offset}: skipping a bad record: {e}",
                    p.index
                ),
            }
        }
        if next <= before {
            tracing::warn!(
                "{OFFSETS_TOPIC}-{}: unreadable batches at offset {before}; loaded up to there",
                p.index
            );
            break;
        }
    }
    let groups = loader.finish(now_ms());
    p.written.replace(
        groups
            .groups
            .iter()
            .map(|(id, g)| (id.clone(), g.stored()))
            .collect(),
    );
    p.groups.replace(Some(groups));
    tracing::info!(
        "{OFFSETS_TOPIC}-{}: loaded {records} records up to offset {end} in {:?} (epoch {})",
        p.index,
        started.elapsed(),
        p.leader_epoch
    );
}

/// The (offset, key, value) of every record in a run of batches; moves `next` past the
/// last batch.
fn batch_records(bytes: &Bytes, next: &mut i64) -> Vec<(i64, Bytes, Option<Bytes>)> {
    let Ok(infos) = validate_batches(bytes) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for info in infos {
        let mut batch = bytes.slice(info.offset_in_buf..info.offset_in_buf + info.len);
        let Some(base) = batch.get(..8).and_then(|b| b.try_into().ok()) else {
            break;
        };
        *next = i64::from_be_bytes(base) + i64::from(info.last_offset_delta) + 1;
        if info.is_control {
            continue;
        }
        // The coordinator writes without a producer id; anything else came from elsewhere
        // (a client's produce, before clients were refused).
        if info.producer_id >= 0 || info.is_transactional {
            tracing::warn!(
                "{OFFSETS_TOPIC}: skipping a batch of producer {} not written by a coordinator",
                info.producer_id
            );
            continue;
        }
        match RecordBatchDecoder::decode(&mut batch) {
            Ok(set) => out.extend(
                set.records
                    .into_iter()
                    .filter_map(|r| Some((r.offset, r.key?, r.value))),
            ),
            Err(e) => tracing::warn!("undecodable batch in {OFFSETS_TOPIC}: {e}"),
        }
    }
    out
}
