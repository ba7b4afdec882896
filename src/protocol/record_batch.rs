//! Kafka record batch v2 (magic 2): the 61-byte big-endian header, validation of a Produce
//! partition's `records` bytes, in-place offset assignment, header-level scanning for the
//! read and recovery paths, the record-level timestamp lookup of ListOffsets, and a small
//! encoder for tests.
//!
//! Architecture invariant: the broker never copies records on its append and read paths
//! and never re-compresses. A client's batches are validated as Kafka's LogValidator does:
//! the records of an uncompressed batch are walked in place (lengths and varints only, no
//! allocation); a compressed batch is decompressed into a bounded per-thread scratch buffer
//! (see [`super::compression`]) only to be walked the same way, then stored as received.
//! Batches a follower copies from its leader are checked at the header level and by CRC.

use std::cell::RefCell;

use bytes::{BufMut, Bytes, BytesMut};
use zerocopy::big_endian::{I16, I32, I64, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::ErrorCode;
use super::compression::{self, DecompressError};

/// Size of the v2 batch header (everything before the first record).
pub const BATCH_HEADER_LEN: usize = 61;
/// Bytes before (and including) the `batchLength` field; `batchLength` counts the rest.
pub const BATCH_LENGTH_PREFIX: usize = 12;
/// Smallest legal `batchLength`: the header minus the 12-byte prefix.
pub const MIN_BATCH_LENGTH: i32 = (BATCH_HEADER_LEN - BATCH_LENGTH_PREFIX) as i32;
/// The CRC covers the batch from `attributes` to its end.
pub const CRC_START: usize = 21;
/// Only record-batch format supported.
pub const MAGIC_V2: u8 = 2;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TIMESTAMP_TYPE: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

/// The v2 batch header, laid out exactly as on the wire.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy)]
#[repr(C)]
pub struct BatchHeader {
    pub base_offset: I64,
    pub batch_length: I32,
    pub partition_leader_epoch: I32,
    pub magic: u8,
    pub crc: U32,
    pub attributes: I16,
    pub last_offset_delta: I32,
    pub base_timestamp: I64,
    pub max_timestamp: I64,
    pub producer_id: I64,
    pub producer_epoch: I16,
    pub base_sequence: I32,
    pub records_count: I32,
}

const _: () = assert!(std::mem::size_of::<BatchHeader>() == BATCH_HEADER_LEN);

impl BatchHeader {
    /// The header at the start of `buf`, or None when `buf` is shorter than a header.
    pub fn parse(buf: &[u8]) -> Option<&BatchHeader> {
        BatchHeader::ref_from_prefix(buf).ok().map(|(h, _)| h)
    }
    pub fn base_offset(&self) -> i64 {
        self.base_offset.get()
    }
    /// Offset of the last record: `baseOffset + lastOffsetDelta`.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .get()
            .saturating_add(i64::from(self.last_offset_delta.get()))
    }
    /// Whole batch size in bytes including the 12-byte prefix; None if `batchLength` is
    /// below the legal minimum.
    pub fn total_len(&self) -> Option<usize> {
        let len = self.batch_length.get();
        (len >= MIN_BATCH_LENGTH).then(|| len as usize + BATCH_LENGTH_PREFIX)
    }
    pub fn compression(&self) -> i16 {
        self.attributes.get() & ATTR_COMPRESSION_MASK
    }
    pub fn is_log_append_time(&self) -> bool {
        self.attributes.get() & ATTR_TIMESTAMP_TYPE != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes.get() & ATTR_TRANSACTIONAL != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes.get() & ATTR_CONTROL != 0
    }
}

/// What the broker needs to know about one validated batch of a Produce payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    pub offset_in_buf: usize,
    pub len: usize,
    pub last_offset_delta: i32,
    pub record_count: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub is_transactional: bool,
    pub is_control: bool,
}

impl BatchInfo {
    fn from_header(h: &BatchHeader, offset_in_buf: usize, len: usize) -> Self {
        BatchInfo {
            offset_in_buf,
            len,
            last_offset_delta: h.last_offset_delta.get(),
            record_count: h.records_count.get(),
            base_timestamp: h.base_timestamp.get(),
            max_timestamp: h.max_timestamp.get(),
            producer_id: h.producer_id.get(),
            producer_epoch: h.producer_epoch.get(),
            base_sequence: h.base_sequence.get(),
            is_transactional: h.is_transactional(),
            is_control: h.is_control(),
        }
    }
}

/// Why a Produce payload was rejected; [`BatchError::kafka_error`] is the answer's code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("empty record set")]
    Empty,
    #[error("truncated batch header at byte {at}")]
    TruncatedHeader { at: usize },
    #[error("truncated batch body at byte {at}: need {need} bytes, have {have}")]
    TruncatedBody { at: usize, need: usize, have: usize },
    #[error("batch length {len} at byte {at} is below the minimum {MIN_BATCH_LENGTH}")]
    BadLength { at: usize, len: i32 },
    #[error("unsupported magic {magic} at byte {at}")]
    BadMagic { at: usize, magic: u8 },
    #[error("CRC mismatch at byte {at}: header {expected:#010x}, computed {actual:#010x}")]
    BadCrc {
        at: usize,
        expected: u32,
        actual: u32,
    },
    #[error("records count {count} at byte {at} must be positive")]
    BadRecordCount { at: usize, count: i32 },
    #[error("lastOffsetDelta {delta} does not match records count {count} at byte {at}")]
    OffsetDeltaMismatch { at: usize, delta: i32, count: i32 },
    /// Compression codec id 5-7 (Kafka knows 0-4 and rejects the others).
    #[error("unknown compression codec {codec} in the batch at byte {at}")]
    UnknownCompression { at: usize, codec: i16 },
    /// A record's length prefix (or the prefix itself) runs past the end of the batch.
    #[error("record {record} of the batch at byte {at} runs past the end of the batch")]
    RecordPastBatchEnd { at: usize, record: i32 },
    /// A record's fields need more bytes than its length says.
    #[error("record {record} of the batch at byte {at}: fields run past the record length")]
    RecordFieldsOverrun { at: usize, record: i32 },
    /// A record's fields end before its length says.
    #[error("record {record} of the batch at byte {at}: {unused} bytes left after its fields")]
    RecordFieldsUnderrun {
        at: usize,
        record: i32,
        unused: usize,
    },
    /// A varint longer than 5 bytes or a varlong longer than 10.
    #[error("record {record} of the batch at byte {at}: malformed varint")]
    RecordBadVarint { at: usize, record: i32 },
    /// A negative length where none is allowed, or below -1 where -1 means null.
    #[error("record {record} of the batch at byte {at}: invalid {field} {len}")]
    RecordBadLength {
        at: usize,
        record: i32,
        field: &'static str,
        len: i32,
    },
    /// Kafka's InvalidRecordException "inconsistent offset": the i-th record's offsetDelta
    /// must be i.
    #[error("record {record} of the batch at byte {at} has inconsistent offsetDelta {delta}")]
    InconsistentOffset { at: usize, record: i32, delta: i32 },
    /// The batch ends after `found` records but its header says `count`.
    #[error("batch at byte {at} holds {found} records, its header says {count}")]
    RecordCountMismatch { at: usize, count: i32, found: i32 },
    /// Bytes after the last of the `recordsCount` records.
    #[error("batch at byte {at}: {extra} bytes after its last record")]
    TrailingRecordBytes { at: usize, extra: usize },
    /// A compressed batch's records are not a valid stream of its codec, or decompress to
    /// more than the limit.
    #[error("batch at byte {at}: {error}")]
    Decompress { at: usize, error: DecompressError },
    /// Transaction markers are written by the broker, never by a client (LogValidator:
    /// "Clients are not allowed to write control records").
    #[error("control batch at byte {at}: clients are not allowed to write control records")]
    ControlBatchFromClient { at: usize },
}

impl BatchError {
    /// The error Kafka answers a producer with: CORRUPT_MESSAGE for a batch that cannot be
    /// read (framing, magic, CRC, codec), INVALID_RECORD for a header whose count or offset
    /// range is inconsistent and for records that do not match their batch (LogValidator,
    /// KIP-467), RECORD_LIST_TOO_LARGE for records over the decompression limit.
    pub fn kafka_error(&self) -> ErrorCode {
        use BatchError::*;
        match self {
            Empty
            | TruncatedHeader { .. }
            | TruncatedBody { .. }
            | BadLength { .. }
            | BadMagic { .. }
            | BadCrc { .. }
            | UnknownCompression { .. } => ErrorCode::CorruptMessage,
            Decompress {
                error: DecompressError::Corrupt { .. },
                ..
            } => ErrorCode::CorruptMessage,
            Decompress {
                error: DecompressError::TooLarge { .. },
                ..
            } => ErrorCode::RecordListTooLarge,
            BadRecordCount { .. }
            | OffsetDeltaMismatch { .. }
            | RecordPastBatchEnd { .. }
            | RecordFieldsOverrun { .. }
            | RecordFieldsUnderrun { .. }
            | RecordBadVarint { .. }
            | RecordBadLength { .. }
            | InconsistentOffset { .. }
            | RecordCountMismatch { .. }
            | TrailingRecordBytes { .. }
            | ControlBatchFromClient { .. } => ErrorCode::InvalidRecord,
        }
    }

    /// The index in its batch of the record at fault, for the answer's `record_errors`.
    pub fn record_index(&self) -> Option<i32> {
        use BatchError::*;
        match self {
            RecordPastBatchEnd { record, .. }
            | RecordFieldsOverrun { record, .. }
            | RecordFieldsUnderrun { record, .. }
            | RecordBadVarint { record, .. }
            | RecordBadLength { record, .. }
            | InconsistentOffset { record, .. } => Some(*record),
            _ => None,
        }
    }
}

/// Checks one batch starting at `at` and returns its header and total length.
fn check_batch(
    buf: &[u8],
    at: usize,
    verify_crc: bool,
) -> Result<(&BatchHeader, usize), BatchError> {
    let rest = buf.get(at..).unwrap_or(&[]);
    let h = BatchHeader::parse(rest).ok_or(BatchError::TruncatedHeader { at })?;
    let len = h.total_len().ok_or(BatchError::BadLength {
        at,
        len: h.batch_length.get(),
    })?;
    if rest.len() < len {
        return Err(BatchError::TruncatedBody {
            at,
            need: len,
            have: rest.len(),
        });
    }
    if h.magic != MAGIC_V2 {
        return Err(BatchError::BadMagic { at, magic: h.magic });
    }
    if verify_crc {
        let actual = crc32c::crc32c(&rest[CRC_START..len]);
        if actual != h.crc.get() {
            return Err(BatchError::BadCrc {
                at,
                expected: h.crc.get(),
                actual,
            });
        }
    }
    Ok((h, len))
}

/// Splits a `records` payload into batches and validates each one (length, magic, CRC-32C,
/// record count, lastOffsetDelta) and, for uncompressed batches, every record (see
/// [`BatchError`]): no copy, no allocation per record. Compressed batches are checked at
/// the header level only: for batches a follower copies from its leader, which validated
/// them on produce (trust the leader; the CRC covers the bytes), and for the broker's own
/// internal logs. Never panics.
pub fn validate_batches(buf: &[u8]) -> Result<Vec<BatchInfo>, BatchError> {
    validate(buf, None)
}

/// [`validate_batches`] for a client's Produce, as Kafka's LogValidator: the records of a
/// compressed batch are decompressed (at most `max_decompressed` bytes, else
/// RECORD_LIST_TOO_LARGE) and walked like those of an uncompressed one, so a batch never
/// gets more offsets than it holds records.
pub fn validate_produce_batches(
    buf: &[u8],
    max_decompressed: usize,
) -> Result<Vec<BatchInfo>, BatchError> {
    validate(buf, Some(max_decompressed))
}

fn validate(buf: &[u8], max_decompressed: Option<usize>) -> Result<Vec<BatchInfo>, BatchError> {
    if buf.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut infos = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let (h, len) = check_batch(buf, at, true)?;
        let count = h.records_count.get();
        if count <= 0 {
            return Err(BatchError::BadRecordCount { at, count });
        }
        let delta = h.last_offset_delta.get();
        if i64::from(delta) != i64::from(count) - 1 {
            return Err(BatchError::OffsetDeltaMismatch { at, delta, count });
        }
        if max_decompressed.is_some() && h.is_control() {
            return Err(BatchError::ControlBatchFromClient { at });
        }
        let records = &buf[at + BATCH_HEADER_LEN..at + len];
        match (h.compression(), max_decompressed) {
            (0, _) => check_records(records, count).map_err(|f| f.into_batch_error(at))?,
            (1..=4, None) => {}
            (codec @ 1..=4, Some(limit)) => check_compressed(codec, records, count, limit, at)?,
            (codec, _) => return Err(BatchError::UnknownCompression { at, codec }),
        }
        infos.push(BatchInfo::from_header(h, at, len));
        at += len;
    }
    Ok(infos)
}

/// Capacity the decompression scratch buffer keeps between batches; a larger batch's
/// buffer is released after it.
const SCRATCH_KEEP: usize = 1 << 20;

thread_local! {
    /// One decompression buffer per shard thread, reused across batches (validation never
    /// yields, so it is never borrowed twice).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Decompresses a compressed batch's records and walks them as [`check_records`] does.
fn check_compressed(
    codec: i16,
    compressed: &[u8],
    count: i32,
    limit: usize,
    at: usize,
) -> Result<(), BatchError> {
    SCRATCH.with_borrow_mut(|records| {
        let checked = match compression::decompress(codec, compressed, limit, records) {
            Ok(()) => check_records(records, count).map_err(|f| f.into_batch_error(at)),
            Err(error) => Err(BatchError::Decompress { at, error }),
        };
        records.clear();
        records.shrink_to(SCRATCH_KEEP);
        checked
    })
}

/// What is wrong with a record, before it is tied to a batch position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecordFault {
    PastBatchEnd,
    FieldsOverrun,
    FieldsUnderrun(usize),
    BadVarint,
    BadLength(&'static str, i32),
    InconsistentOffset(i32),
    CountMismatch { count: i32, found: i32 },
    Trailing(usize),
}

/// A [`RecordFault`] of the `record`-th record (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecordError {
    record: i32,
    fault: RecordFault,
}

impl RecordError {
    fn into_batch_error(self, at: usize) -> BatchError {
        let record = self.record;
        match self.fault {
            RecordFault::PastBatchEnd => BatchError::RecordPastBatchEnd { at, record },
            RecordFault::FieldsOverrun => BatchError::RecordFieldsOverrun { at, record },
            RecordFault::FieldsUnderrun(unused) => {
                BatchError::RecordFieldsUnderrun { at, record, unused }
            }
            RecordFault::BadVarint => BatchError::RecordBadVarint { at, record },
            RecordFault::BadLength(field, len) => BatchError::RecordBadLength {
                at,
                record,
                field,
                len,
            },
            RecordFault::InconsistentOffset(delta) => {
                BatchError::InconsistentOffset { at, record, delta }
            }
            RecordFault::CountMismatch { count, found } => {
                BatchError::RecordCountMismatch { at, count, found }
            }
            RecordFault::Trailing(extra) => BatchError::TrailingRecordBytes { at, extra },
        }
    }
}

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VarintFault {
    /// The input ended inside the varint.
    Truncated,
    /// More continuation bytes than the type allows.
    TooLong,
}

/// A zigzag varint (i32, at most 5 bytes) at `buf[*pos..]`, advancing `pos`. As Kafka's
/// `ByteUtils.readVarint`, bits beyond 32 in the fifth byte are dropped, not rejected.
#[inline]
fn read_varint(buf: &[u8], pos: &mut usize) -> Result<i32, VarintFault> {
    let mut z: u32 = 0;
    for i in 0..5 {
        let Some(&b) = buf.get(*pos + i) else {
            return Err(VarintFault::Truncated);
        };
        z |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *pos += i + 1;
            return Ok((z >> 1) as i32 ^ -((z & 1) as i32));
        }
    }
    Err(VarintFault::TooLong)
}

/// A zigzag varlong (i64, at most 10 bytes); see [`read_varint`].
#[inline]
fn read_varlong(buf: &[u8], pos: &mut usize) -> Result<i64, VarintFault> {
    let mut z: u64 = 0;
    for i in 0..10 {
        let Some(&b) = buf.get(*pos + i) else {
            return Err(VarintFault::Truncated);
        };
        z |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *pos += i + 1;
            return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
        }
    }
    Err(VarintFault::TooLong)
}

/// The fields of one record the broker looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecordFacts {
    timestamp_delta: i64,
    offset_delta: i32,
}

/// Inside one record body (exactly its `length` bytes): a truncated varint means the fields
/// run past the record.
fn field_fault(f: VarintFault) -> RecordFault {
    match f {
        VarintFault::Truncated => RecordFault::FieldsOverrun,
        VarintFault::TooLong => RecordFault::BadVarint,
    }
}

/// Skips a length-prefixed byte field; `nullable` allows -1.
#[inline]
fn skip_bytes_field(
    body: &[u8],
    pos: &mut usize,
    field: &'static str,
    nullable: bool,
) -> Result<(), RecordFault> {
    let len = read_varint(body, pos).map_err(field_fault)?;
    if len == -1 && nullable {
        return Ok(());
    }
    if len < 0 {
        return Err(RecordFault::BadLength(field, len));
    }
    let end = pos
        .checked_add(len as usize)
        .filter(|&e| e <= body.len())
        .ok_or(RecordFault::FieldsOverrun)?;
    *pos = end;
    Ok(())
}

/// Parses the record at `records[*pos..]` (length prefix included), advancing `pos` past it.
/// Checks every field and that they fill the record's length exactly.
#[inline]
fn parse_record(records: &[u8], pos: &mut usize) -> Result<RecordFacts, RecordFault> {
    let len = read_varint(records, pos).map_err(|f| match f {
        VarintFault::Truncated => RecordFault::PastBatchEnd,
        VarintFault::TooLong => RecordFault::BadVarint,
    })?;
    if len < 0 {
        return Err(RecordFault::BadLength("record length", len));
    }
    let start = *pos;
    let end = start
        .checked_add(len as usize)
        .filter(|&e| e <= records.len())
        .ok_or(RecordFault::PastBatchEnd)?;
    let body = &records[start..end];
    let mut p = 0usize;
    // attributes (i8): unused in v2, not checked (as in Kafka).
    if body.is_empty() {
        return Err(RecordFault::FieldsOverrun);
    }
    p += 1;
    let timestamp_delta = read_varlong(body, &mut p).map_err(field_fault)?;
    let offset_delta = read_varint(body, &mut p).map_err(field_fault)?;
    skip_bytes_field(body, &mut p, "key length", true)?;
    skip_bytes_field(body, &mut p, "value length", true)?;
    let headers = read_varint(body, &mut p).map_err(field_fault)?;
    if headers < 0 {
        return Err(RecordFault::BadLength("headers count", headers));
    }
    // Each header takes at least 2 bytes, so a forged count fails fast on the record end.
    for _ in 0..headers {
        skip_bytes_field(body, &mut p, "header key length", false)?;
        skip_bytes_field(body, &mut p, "header value length", true)?;
    }
    if p != body.len() {
        return Err(RecordFault::FieldsUnderrun(body.len() - p));
    }
    *pos = end;
    Ok(RecordFacts {
        timestamp_delta,
        offset_delta,
    })
}

/// Walks the records of a batch (`records` = the bytes after its header, decompressed):
/// exactly `count` well-formed records filling `records`, the i-th with offsetDelta i.
fn check_records(records: &[u8], count: i32) -> Result<(), RecordError> {
    let mut pos = 0usize;
    for i in 0..count {
        let err = |fault| RecordError { record: i, fault };
        if pos >= records.len() {
            return Err(err(RecordFault::CountMismatch { count, found: i }));
        }
        let facts = parse_record(records, &mut pos).map_err(err)?;
        if facts.offset_delta != i {
            return Err(err(RecordFault::InconsistentOffset(facts.offset_delta)));
        }
    }
    if pos != records.len() {
        return Err(RecordError {
            record: count,
            fault: RecordFault::Trailing(records.len() - pos),
        });
    }
    Ok(())
}

/// ListOffsets by timestamp inside one batch (`batch` = the whole batch, as stored): the
/// offset and timestamp of its first record whose timestamp is >= `ts`, as Kafka's
/// `FileRecords.searchForTimestamp` answers. None when the batch's maxTimestamp is below
/// `ts`, when no record reaches `ts`, or when `batch` is not a whole v2 batch.
///
/// A record's timestamp is `baseTimestamp + timestampDelta`; in a LogAppendTime batch every
/// record carries the batch's maxTimestamp, so the first record (the base offset) answers.
/// Compressed batches are not decompressed here (reads stay copy-free): they answer
/// (base offset, maxTimestamp), i.e. batch granularity. So does an uncompressed batch whose
/// records cannot be walked, which validation on append rules out.
pub fn first_record_at_or_after(batch: &[u8], ts: i64) -> Option<(i64, i64)> {
    let (h, len) = check_batch(batch, 0, false).ok()?;
    let max_ts = h.max_timestamp.get();
    if max_ts < ts {
        return None;
    }
    if h.is_log_append_time() || h.compression() != 0 {
        return Some((h.base_offset(), max_ts));
    }
    let records = &batch[BATCH_HEADER_LEN..len];
    let base_ts = h.base_timestamp.get();
    let mut pos = 0usize;
    for _ in 0..h.records_count.get().max(0) {
        if pos >= records.len() {
            break;
        }
        let Ok(r) = parse_record(records, &mut pos) else {
            return Some((h.base_offset(), max_ts));
        };
        let record_ts = base_ts.wrapping_add(r.timestamp_delta);
        if record_ts >= ts {
            let offset = h.base_offset().wrapping_add(i64::from(r.offset_delta));
            return Some((offset, record_ts));
        }
    }
    None
}

/// Writes `baseOffset` and `partitionLeaderEpoch` in place (both outside the CRC).
/// Does nothing if `batch` is shorter than a header.
pub fn patch_batch(batch: &mut [u8], base_offset: i64, partition_leader_epoch: i32) {
    if let Ok((h, _)) = BatchHeader::mut_from_prefix(batch) {
        h.base_offset.set(base_offset);
        h.partition_leader_epoch.set(partition_leader_epoch);
    }
}

/// One batch found by [`scan_batches`].
#[derive(Debug, Clone, Copy)]
pub struct ScannedBatch<'a> {
    /// Position of the batch in the scanned buffer.
    pub pos: usize,
    pub header: &'a BatchHeader,
    /// The whole batch.
    pub bytes: &'a [u8],
}

/// Header-level iterator over whole batches; see [`scan_batches`].
#[derive(Debug, Clone)]
pub struct BatchScanner<'a> {
    buf: &'a [u8],
    pos: usize,
    verify_crc: bool,
    stop: Option<BatchError>,
}

impl<'a> BatchScanner<'a> {
    /// End of the last whole (and, if checked, CRC-valid) batch yielded so far.
    pub fn valid_end(&self) -> usize {
        self.pos
    }
    /// Why the scan stopped before the end of the buffer, if it did (after exhaustion).
    pub fn stop_reason(&self) -> Option<&BatchError> {
        self.stop.as_ref()
    }
}

impl<'a> Iterator for BatchScanner<'a> {
    type Item = ScannedBatch<'a>;
    fn next(&mut self) -> Option<ScannedBatch<'a>> {
        if self.stop.is_some() || self.pos >= self.buf.len() {
            return None;
        }
        match check_batch(self.buf, self.pos, self.verify_crc) {
            Ok((header, len)) => {
                let pos = self.pos;
                self.pos += len;
                Some(ScannedBatch {
                    pos,
                    header,
                    bytes: &self.buf[pos..pos + len],
                })
            }
            Err(e) => {
                self.stop = Some(e);
                None
            }
        }
    }
}

/// Iterates whole batches of `buf` from its start, stopping at the first incomplete or
/// invalid one (bad length or magic, and bad CRC when `verify_crc`). Never panics.
pub fn scan_batches(buf: &[u8], verify_crc: bool) -> BatchScanner<'_> {
    BatchScanner {
        buf,
        pos: 0,
        verify_crc,
        stop: None,
    }
}

/// Parameters of [`build_batch`].
#[derive(Debug, Clone)]
pub struct TestBatch<'a> {
    pub base_offset: i64,
    /// (key, value) per record.
    pub records: &'a [(Option<&'a [u8]>, &'a [u8])],
    pub timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub transactional: bool,
    pub partition_leader_epoch: i32,
    /// Per-record timestamps (CreateTime), one per record; empty = every record at
    /// `timestamp`. baseTimestamp is the first record's, maxTimestamp the largest.
    pub record_timestamps: &'a [i64],
    /// Headers (key, value or null) written on every record.
    pub headers: &'a [(&'a [u8], Option<&'a [u8]>)],
    /// Sets the LogAppendTime attribute (bit 3); maxTimestamp is then the largest record
    /// timestamp as above.
    pub log_append_time: bool,
    /// Codec id (attributes bits 0-2) the records are compressed with; 0 = none.
    pub compression: i16,
}

impl Default for TestBatch<'_> {
    fn default() -> Self {
        TestBatch {
            base_offset: 0,
            records: &[],
            timestamp: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            transactional: false,
            partition_leader_epoch: -1,
            record_timestamps: &[],
            headers: &[],
            log_append_time: false,
            compression: 0,
        }
    }
}

fn put_varint(out: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    out.put_u8(z as u8);
}

/// One record of [`build_batch`].
struct TestRecord<'a> {
    timestamp_delta: i64,
    offset_delta: i64,
    key: Option<&'a [u8]>,
    value: &'a [u8],
    headers: &'a [(&'a [u8], Option<&'a [u8]>)],
}

fn encode_record(out: &mut BytesMut, r: &TestRecord<'_>) {
    fn put_bytes(out: &mut BytesMut, b: Option<&[u8]>) {
        match b {
            Some(b) => {
                put_varint(out, b.len() as i64);
                out.put_slice(b);
            }
            None => put_varint(out, -1),
        }
    }
    let mut body = BytesMut::new();
    body.put_i8(0); // attributes
    put_varint(&mut body, r.timestamp_delta);
    put_varint(&mut body, r.offset_delta);
    put_bytes(&mut body, r.key);
    put_bytes(&mut body, Some(r.value));
    put_varint(&mut body, r.headers.len() as i64);
    for (k, v) in r.headers {
        put_bytes(&mut body, Some(k));
        put_bytes(&mut body, *v);
    }
    put_varint(out, body.len() as i64);
    out.put_slice(&body);
}

/// Encodes a real v2 batch with a correct CRC (tests, benches, tools).
/// An empty `records` slice still yields a well-formed batch of one empty-value record.
///
/// Panics if `record_timestamps` is neither empty nor one per record.
pub fn build_batch(opts: &TestBatch<'_>) -> Bytes {
    let empty: [(Option<&[u8]>, &[u8]); 1] = [(None, b"")];
    let records = if opts.records.is_empty() {
        &empty[..]
    } else {
        opts.records
    };
    assert!(
        opts.record_timestamps.is_empty() || opts.record_timestamps.len() == records.len(),
        "record_timestamps must be empty or one per record"
    );
    let ts_of = |i: usize| {
        opts.record_timestamps
            .get(i)
            .copied()
            .unwrap_or(opts.timestamp)
    };
    let base_timestamp = ts_of(0);
    let max_timestamp = (0..records.len())
        .map(ts_of)
        .max()
        .unwrap_or(base_timestamp);
    let mut body = BytesMut::new();
    for (i, (k, v)) in records.iter().enumerate() {
        let r = TestRecord {
            timestamp_delta: ts_of(i) - base_timestamp,
            offset_delta: i as i64,
            key: *k,
            value: v,
            headers: opts.headers,
        };
        encode_record(&mut body, &r);
    }
    if opts.compression != 0 {
        body = BytesMut::from(&compression::compress(opts.compression, &body)[..]);
    }
    let count = records.len() as i32;
    let mut attributes = opts.compression & ATTR_COMPRESSION_MASK;
    if opts.transactional {
        attributes |= ATTR_TRANSACTIONAL;
    }
    if opts.log_append_time {
        attributes |= ATTR_TIMESTAMP_TYPE;
    }
    let header = BatchHeader {
        base_offset: opts.base_offset.into(),
        batch_length: ((BATCH_HEADER_LEN - BATCH_LENGTH_PREFIX + body.len()) as i32).into(),
        partition_leader_epoch: opts.partition_leader_epoch.into(),
        magic: MAGIC_V2,
        crc: 0.into(),
        attributes: attributes.into(),
        last_offset_delta: (count - 1).into(),
        base_timestamp: base_timestamp.into(),
        max_timestamp: max_timestamp.into(),
        producer_id: opts.producer_id.into(),
        producer_epoch: opts.producer_epoch.into(),
        base_sequence: opts.base_sequence.into(),
        records_count: count.into(),
    };
    let mut out = BytesMut::with_capacity(BATCH_HEADER_LEN + body.len());
    out.put_slice(header.as_bytes());
    out.put_slice(&body);
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out.freeze()
}

/// Shorthand for [`build_batch`] without a producer id.
pub fn build_test_batch(
    base_offset: i64,
    records: &[(Option<&[u8]>, &[u8])],
    timestamp: i64,
) -> Bytes {
    build_batch(&TestBatch {
        base_offset,
        records,
        timestamp,
        ..TestBatch::default()
    })
}

#[cfg(test)]
mod tests;
