//! Kafka record batch v2 (magic 2): the 61-byte big-endian header, validation of a Produce
//! partition's `records` bytes, in-place offset assignment, header-level scanning for the
//! read and recovery paths, the record-level timestamp lookup of ListOffsets, and a small
//! encoder for tests.
//!
//! Architecture invariant: the broker never decompresses and never copies records. The
//! records of an uncompressed batch are walked in place (lengths and varints only, no
//! allocation) to validate them as Kafka's LogValidator does and to answer ListOffsets by
//! timestamp; compressed batches are checked and searched at the header level only.

use bytes::{BufMut, Bytes, BytesMut};
use zerocopy::big_endian::{I16, I32, I64, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

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

/// Why a Produce payload was rejected. The server maps every variant to CORRUPT_MESSAGE (2).
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

/// Splits a Produce partition's `records` bytes into batches and validates each one
/// (length, magic, CRC-32C, record count, lastOffsetDelta) and, for uncompressed batches,
/// every record (see [`BatchError`]): no copy, no allocation per record. Never panics.
pub fn validate_batches(buf: &[u8]) -> Result<Vec<BatchInfo>, BatchError> {
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
        // Compressed batches (codecs 1-4: gzip, snappy, lz4, zstd) are checked at the
        // header level only: their records can only be walked after decompressing, which
        // costs a buffer and CPU per batch on the connection's core and is exactly what this
        // design avoids (batches are stored and served as received). The CRC still covers
        // them, and a consumer's decompressor rejects malformed inner records.
        match h.compression() {
            0 => check_records(&buf[at + BATCH_HEADER_LEN..at + len], count)
                .map_err(|f| f.into_batch_error(at))?,
            1..=4 => {}
            codec => return Err(BatchError::UnknownCompression { at, codec }),
        }
        infos.push(BatchInfo::from_header(h, at, len));
        at += len;
    }
    Ok(infos)
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

/// Walks the records of an uncompressed batch (`records` = the bytes after its header):
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
/// Compressed batches are not decompressed (see [`validate_batches`]): they answer
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

/// Encodes a real, uncompressed v2 batch with a correct CRC (tests, benches, tools).
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
    let count = records.len() as i32;
    let mut attributes = 0i16;
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn batch(n: usize) -> Bytes {
        let recs: Vec<(Option<&[u8]>, &[u8])> =
            (0..n).map(|_| (Some(&b"k"[..]), &b"value"[..])).collect();
        build_test_batch(0, &recs, 1_700_000_000_000)
    }

    #[test]
    fn header_layout() {
        let b = batch(3);
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.total_len(), Some(b.len()));
        assert_eq!(h.records_count.get(), 3);
        assert_eq!(h.last_offset(), 2);
        assert_eq!(h.magic, 2);
        // crc sits at bytes 17..21.
        assert_eq!(&b[17..21], &h.crc.get().to_be_bytes());
    }

    #[test]
    fn validates_good_batches() {
        let mut buf = BytesMut::new();
        buf.put_slice(&batch(1));
        buf.put_slice(&batch(5));
        let infos = validate_batches(&buf).unwrap();
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[0].offset_in_buf, 0);
        assert_eq!(infos[1].offset_in_buf, infos[0].len);
        assert_eq!(infos[1].record_count, 5);
        assert_eq!(infos[1].last_offset_delta, 4);
        assert_eq!(infos[1].max_timestamp, 1_700_000_000_000);
        assert_eq!(infos[0].producer_id, -1);
    }

    #[test]
    fn rejects_bad_input() {
        let good = batch(2);
        assert_eq!(validate_batches(&[]), Err(BatchError::Empty));
        // Bad CRC: flip a byte in the records.
        let mut b = good.to_vec();
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert!(matches!(
            validate_batches(&b),
            Err(BatchError::BadCrc { .. })
        ));
        // Bad magic.
        let mut b = good.to_vec();
        b[16] = 1;
        assert!(matches!(
            validate_batches(&b),
            Err(BatchError::BadMagic { .. })
        ));
        // Truncated header and body.
        assert!(matches!(
            validate_batches(&good[..30]),
            Err(BatchError::TruncatedHeader { .. })
        ));
        assert!(matches!(
            validate_batches(&good[..good.len() - 1]),
            Err(BatchError::TruncatedBody { .. })
        ));
        // Trailing garbage.
        let mut b = good.to_vec();
        b.extend_from_slice(b"garbage");
        assert!(matches!(
            validate_batches(&b),
            Err(BatchError::TruncatedHeader { .. })
        ));
        // Length below minimum.
        let mut b = good.to_vec();
        b[8..12].copy_from_slice(&10i32.to_be_bytes());
        assert!(matches!(
            validate_batches(&b),
            Err(BatchError::BadLength { .. })
        ));
    }

    #[test]
    fn rejects_bad_counts() {
        let mut b = batch(2).to_vec();
        b[57..61].copy_from_slice(&0i32.to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate_batches(&b),
            Err(BatchError::BadRecordCount { .. })
        ));
        let mut b = batch(2).to_vec();
        b[23..27].copy_from_slice(&5i32.to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate_batches(&b),
            Err(BatchError::OffsetDeltaMismatch { .. })
        ));
    }

    #[test]
    fn patch_keeps_crc_valid() {
        let mut b = BytesMut::from(&batch(3)[..]);
        patch_batch(&mut b, 1234, 7);
        let infos = validate_batches(&b).unwrap();
        assert_eq!(infos.len(), 1);
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.base_offset(), 1234);
        assert_eq!(h.partition_leader_epoch.get(), 7);
        patch_batch(&mut [0u8; 10], 1, 1); // too short: no panic
    }

    #[test]
    fn scan_stops_at_torn_batch() {
        let mut buf = BytesMut::new();
        buf.put_slice(&batch(1));
        buf.put_slice(&batch(2));
        let whole = buf.len();
        buf.put_slice(&batch(3)[..40]);
        let mut s = scan_batches(&buf, true);
        assert_eq!(s.by_ref().count(), 2);
        assert_eq!(s.valid_end(), whole);
        // Zero padding stops the scan too.
        let mut padded = buf[..whole].to_vec();
        padded.extend_from_slice(&[0u8; 512]);
        let mut s = scan_batches(&padded, false);
        assert_eq!(s.by_ref().count(), 2);
        assert_eq!(s.valid_end(), whole);
        assert!(matches!(
            s.stop_reason(),
            Some(BatchError::BadLength { .. })
        ));
    }

    /// Re-computes the CRC after a test edited a batch.
    fn reseal(b: &mut [u8]) {
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
    }

    /// A CRC-valid batch around hand-made `records` bytes.
    fn raw_batch(records: &[u8], count: i32, attributes: i16) -> Vec<u8> {
        let header = BatchHeader {
            base_offset: 100.into(),
            batch_length: ((BATCH_HEADER_LEN - BATCH_LENGTH_PREFIX + records.len()) as i32).into(),
            partition_leader_epoch: (-1).into(),
            magic: MAGIC_V2,
            crc: 0.into(),
            attributes: attributes.into(),
            last_offset_delta: (count - 1).into(),
            base_timestamp: 1000.into(),
            max_timestamp: 1000.into(),
            producer_id: (-1).into(),
            producer_epoch: (-1).into(),
            base_sequence: (-1).into(),
            records_count: count.into(),
        };
        let mut b = header.as_bytes().to_vec();
        b.extend_from_slice(records);
        reseal(&mut b);
        b
    }

    fn varint(v: i64) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_varint(&mut b, v);
        b.to_vec()
    }

    /// A record body (no length prefix) with raw length fields.
    fn body(off: i64, key_len: i64, key: &[u8], value_len: i64, value: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8]; // attributes
        b.extend(varint(0)); // timestampDelta
        b.extend(varint(off));
        b.extend(varint(key_len));
        b.extend_from_slice(key);
        b.extend(varint(value_len));
        b.extend_from_slice(value);
        b.extend(varint(0)); // headers
        b
    }

    fn good_body(off: i64) -> Vec<u8> {
        body(off, 1, b"k", 3, b"abc")
    }

    /// Length prefix + body.
    fn rec(body: &[u8]) -> Vec<u8> {
        let mut b = varint(body.len() as i64);
        b.extend_from_slice(body);
        b
    }

    fn err_of(records: &[u8], count: i32) -> BatchError {
        validate_batches(&raw_batch(records, count, 0)).unwrap_err()
    }

    #[test]
    fn hand_made_records_validate() {
        let mut r = rec(&good_body(0));
        r.extend(rec(&good_body(1)));
        r.extend(rec(&body(2, -1, b"", -1, b""))); // null key and value
        let infos = validate_batches(&raw_batch(&r, 3, 0)).unwrap();
        assert_eq!(infos[0].record_count, 3);
    }

    #[test]
    fn rejects_record_length_past_batch_end() {
        let b = good_body(0);
        let mut r = varint(b.len() as i64 + 50);
        r.extend_from_slice(&b);
        assert_eq!(
            err_of(&r, 1),
            BatchError::RecordPastBatchEnd { at: 0, record: 0 }
        );
        // Second record: its length prefix is cut by the batch end.
        let mut r = rec(&good_body(0));
        r.push(0x80);
        assert_eq!(
            err_of(&r, 2),
            BatchError::RecordPastBatchEnd { at: 0, record: 1 }
        );
    }

    #[test]
    fn rejects_record_length_shorter_than_record() {
        let b = good_body(0);
        let mut r = varint(b.len() as i64 - 1);
        r.extend_from_slice(&b);
        assert_eq!(
            err_of(&r, 1),
            BatchError::RecordFieldsOverrun { at: 0, record: 0 }
        );
        // Longer than its fields: the spare byte is inside the record.
        let mut b = good_body(0);
        b.push(0);
        assert_eq!(
            err_of(&rec(&b), 1),
            BatchError::RecordFieldsUnderrun {
                at: 0,
                record: 0,
                unused: 1
            }
        );
        assert!(matches!(
            err_of(&rec(&[]), 1),
            BatchError::RecordFieldsOverrun { .. }
        ));
    }

    #[test]
    fn rejects_value_length_past_record_end() {
        let r = rec(&body(0, 1, b"k", 10, b"abc"));
        assert_eq!(
            err_of(&r, 1),
            BatchError::RecordFieldsOverrun { at: 0, record: 0 }
        );
        // Even when the following record's bytes would cover it.
        let mut r = rec(&body(0, 1, b"k", 10, b"abc"));
        r.extend(rec(&good_body(1)));
        assert!(matches!(
            err_of(&r, 2),
            BatchError::RecordFieldsOverrun { record: 0, .. }
        ));
    }

    #[test]
    fn rejects_inconsistent_offset_delta() {
        let mut r = rec(&good_body(0));
        r.extend(rec(&good_body(0)));
        assert_eq!(
            err_of(&r, 2),
            BatchError::InconsistentOffset {
                at: 0,
                record: 1,
                delta: 0
            }
        );
        assert!(matches!(
            err_of(&rec(&good_body(1)), 1),
            BatchError::InconsistentOffset { record: 0, .. }
        ));
    }

    #[test]
    fn rejects_record_count_mismatch() {
        let mut r = rec(&good_body(0));
        r.extend(rec(&good_body(1)));
        assert_eq!(
            err_of(&r, 3),
            BatchError::RecordCountMismatch {
                at: 0,
                count: 3,
                found: 2
            }
        );
        let extra = rec(&good_body(1)).len();
        assert_eq!(
            err_of(&r, 1),
            BatchError::TrailingRecordBytes { at: 0, extra }
        );
        // The error names the failing batch's position.
        let mut two = batch(1).to_vec();
        let second = raw_batch(&r, 3, 0);
        two.extend_from_slice(&second);
        assert!(matches!(
            validate_batches(&two),
            Err(BatchError::RecordCountMismatch { at, .. }) if at == batch(1).len()
        ));
    }

    #[test]
    fn rejects_bad_lengths_and_varints() {
        let bad_len = |e: BatchError| match e {
            BatchError::RecordBadLength { field, len, .. } => (field, len),
            e => panic!("unexpected {e:?}"),
        };
        assert_eq!(
            bad_len(err_of(&rec(&body(0, -2, b"", 0, b"")), 1)),
            ("key length", -2)
        );
        assert_eq!(
            bad_len(err_of(&rec(&body(0, 0, b"", -5, b"")), 1)),
            ("value length", -5)
        );
        let mut r = varint(-3);
        r.extend(good_body(0));
        assert_eq!(bad_len(err_of(&r, 1)), ("record length", -3));
        // Headers: negative count, null key.
        let mut b = body(0, -1, b"", -1, b"");
        b.pop();
        b.extend(varint(-1));
        assert_eq!(bad_len(err_of(&rec(&b), 1)), ("headers count", -1));
        let mut b = body(0, -1, b"", -1, b"");
        b.pop();
        b.extend(varint(1));
        b.extend(varint(-1));
        b.extend(varint(-1));
        assert_eq!(bad_len(err_of(&rec(&b), 1)), ("header key length", -1));
        // A forged header count fails on the record end, not after 2^31 iterations.
        let mut b = body(0, -1, b"", -1, b"");
        b.pop();
        b.extend(varint(i32::MAX.into()));
        assert!(matches!(
            err_of(&rec(&b), 1),
            BatchError::RecordFieldsOverrun { .. }
        ));
        // offsetDelta as a 6-byte varint.
        let mut b = vec![0u8, 0];
        b.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]);
        b.extend_from_slice(&[1, 1, 0]);
        assert!(matches!(
            err_of(&rec(&b), 1),
            BatchError::RecordBadVarint { .. }
        ));
        // timestampDelta: 10 bytes is a legal (padded) varlong, 11 is not.
        let make = |n: usize| {
            let mut b = vec![0u8];
            b.extend(std::iter::repeat_n(0x80u8, n - 1));
            b.push(0);
            b.extend_from_slice(&[0, 1, 1, 0]);
            b
        };
        validate_batches(&raw_batch(&rec(&make(10)), 1, 0)).unwrap();
        assert!(matches!(
            err_of(&rec(&make(11)), 1),
            BatchError::RecordBadVarint { .. }
        ));
        // Record length prefix as a 6-byte varint.
        let mut r = vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x00];
        r.extend(good_body(0));
        assert!(matches!(err_of(&r, 1), BatchError::RecordBadVarint { .. }));
    }

    #[test]
    fn compressed_batches_are_checked_at_header_level_only() {
        // Records that are not records at all: fine for gzip (codec 1), not for none.
        let garbage = [0xffu8; 20];
        for codec in 1..=4 {
            validate_batches(&raw_batch(&garbage, 2, codec)).unwrap();
        }
        assert!(validate_batches(&raw_batch(&garbage, 2, 0)).is_err());
        assert_eq!(
            validate_batches(&raw_batch(&garbage, 2, 5 | ATTR_TIMESTAMP_TYPE)),
            Err(BatchError::UnknownCompression { at: 0, codec: 5 })
        );
    }

    #[test]
    fn build_batch_with_headers_and_timestamps_is_valid() {
        let recs: [(Option<&[u8]>, &[u8]); 3] =
            [(None, b"a"), (Some(b"key"), b""), (Some(b""), b"ccc")];
        let headers: [(&[u8], Option<&[u8]>); 2] = [(b"h1", Some(b"v1")), (b"", None)];
        let b = build_batch(&TestBatch {
            base_offset: 7,
            records: &recs,
            record_timestamps: &[500, 400, 900],
            headers: &headers,
            ..TestBatch::default()
        });
        let infos = validate_batches(&b).unwrap();
        assert_eq!(infos[0].record_count, 3);
        assert_eq!(
            (infos[0].base_timestamp, infos[0].max_timestamp),
            (500, 900)
        );
        // A negative timestampDelta (400 - 500) is fine.
        assert_eq!(first_record_at_or_after(&b, 0), Some((7, 500)));
        assert_eq!(first_record_at_or_after(&b, 501), Some((9, 900)));
        // A header value length past the record end is caught as well.
        let mut bad = b.to_vec();
        let at = bad.windows(2).position(|w| w == b"v1").unwrap();
        assert_eq!(bad[at - 1], 4); // zigzag(2)
        bad[at - 1] = 40;
        reseal(&mut bad);
        assert!(matches!(
            validate_batches(&bad),
            Err(BatchError::RecordFieldsOverrun { record: 0, .. })
        ));
    }

    #[test]
    fn first_record_at_or_after_by_record() {
        let recs: [(Option<&[u8]>, &[u8]); 3] = [(None, b"a"), (None, b"b"), (None, b"c")];
        let b = build_batch(&TestBatch {
            base_offset: 10,
            records: &recs,
            record_timestamps: &[1000, 1001, 1002],
            ..TestBatch::default()
        });
        assert_eq!(first_record_at_or_after(&b, i64::MIN), Some((10, 1000)));
        assert_eq!(first_record_at_or_after(&b, 1000), Some((10, 1000)));
        assert_eq!(first_record_at_or_after(&b, 1001), Some((11, 1001)));
        assert_eq!(first_record_at_or_after(&b, 1002), Some((12, 1002)));
        assert_eq!(first_record_at_or_after(&b, 1003), None);
        assert_eq!(first_record_at_or_after(&b[..60], 0), None);
        // LogAppendTime: every record carries maxTimestamp.
        let b = build_batch(&TestBatch {
            base_offset: 10,
            records: &recs,
            record_timestamps: &[1000, 1001, 1002],
            log_append_time: true,
            ..TestBatch::default()
        });
        assert_eq!(first_record_at_or_after(&b, 1001), Some((10, 1002)));
        assert_eq!(first_record_at_or_after(&b, 1003), None);
        // maxTimestamp above every record (a producer may set it so): no record matches.
        let mut b = build_batch(&TestBatch {
            base_offset: 10,
            records: &recs,
            record_timestamps: &[1000, 1001, 1002],
            ..TestBatch::default()
        })
        .to_vec();
        b[35..43].copy_from_slice(&5000i64.to_be_bytes());
        assert_eq!(first_record_at_or_after(&b, 1003), None);
        // Compressed: batch granularity.
        let c = raw_batch(&[0xffu8; 20], 2, 4);
        assert_eq!(first_record_at_or_after(&c, 999), Some((100, 1000)));
        assert_eq!(first_record_at_or_after(&c, 1001), None);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = validate_batches(&data);
            let _ = scan_batches(&data, true).count();
            let _ = scan_batches(&data, false).count();
        }

        #[test]
        fn mutated_batches_never_panic(
            n in 1usize..4,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut b = batch(n).to_vec();
            b.extend_from_slice(&batch(1));
            for (i, v) in flips {
                let len = b.len();
                b[i % len] = v;
            }
            b.truncate(cut % (b.len() + 1));
            let _ = validate_batches(&b);
            let _ = scan_batches(&b, true).count();
            let _ = scan_batches(&b, false).count();
            let _ = first_record_at_or_after(&b, 0);
        }

        /// Mutations inside the records, with the CRC re-computed so they reach the walker.
        #[test]
        fn resealed_mutations_never_panic(
            n in 1usize..4,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            ts in any::<i64>(),
        ) {
            let mut b = batch(n).to_vec();
            for (i, v) in flips {
                let i = BATCH_HEADER_LEN + i % (b.len() - BATCH_HEADER_LEN);
                b[i] = v;
            }
            reseal(&mut b);
            let _ = validate_batches(&b);
            let _ = first_record_at_or_after(&b, ts);
        }

        #[test]
        fn built_batches_validate(
            recs in proptest::collection::vec(
                (proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                 proptest::collection::vec(any::<u8>(), 0..200),
                 any::<i32>()),
                1..20),
            with_headers in any::<bool>(),
        ) {
            let pairs: Vec<(Option<&[u8]>, &[u8])> =
                recs.iter().map(|(k, v, _)| (k.as_deref(), &v[..])).collect();
            let stamps: Vec<i64> = recs.iter().map(|r| i64::from(r.2)).collect();
            let headers: [(&[u8], Option<&[u8]>); 2] = [(b"h", Some(b"v")), (b"n", None)];
            let b = build_batch(&TestBatch {
                records: &pairs,
                record_timestamps: &stamps,
                headers: if with_headers { &headers } else { &[] },
                ..TestBatch::default()
            });
            let infos = validate_batches(&b).unwrap();
            prop_assert_eq!(infos[0].record_count as usize, recs.len());
            // The first record at or after each record's own timestamp.
            for &t in &stamps {
                let first = stamps.iter().position(|&s| s >= t).unwrap();
                prop_assert_eq!(first_record_at_or_after(&b, t), Some((first as i64, stamps[first])));
            }
        }
    }
}
