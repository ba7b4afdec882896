//! Kafka record batch v2 (magic 2): the 61-byte big-endian header, validation of a Produce
//! partition's `records` bytes, in-place offset assignment, header-level scanning for the
//! read and recovery paths, and a small encoder for tests.
//!
//! Architecture invariant: the broker never decodes individual records; everything here
//! works on batch headers plus one CRC-32C over the batch body.

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
/// (length, magic, CRC-32C, record count, lastOffsetDelta). Never panics.
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
        infos.push(BatchInfo::from_header(h, at, len));
        at += len;
    }
    Ok(infos)
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

fn encode_record(out: &mut BytesMut, delta: i64, key: Option<&[u8]>, value: &[u8]) {
    let mut body = BytesMut::new();
    body.put_i8(0); // attributes
    put_varint(&mut body, 0); // timestampDelta: every record carries the batch timestamp
    put_varint(&mut body, delta);
    match key {
        Some(k) => {
            put_varint(&mut body, k.len() as i64);
            body.put_slice(k);
        }
        None => put_varint(&mut body, -1),
    }
    put_varint(&mut body, value.len() as i64);
    body.put_slice(value);
    put_varint(&mut body, 0); // headers
    put_varint(out, body.len() as i64);
    out.put_slice(&body);
}

/// Encodes a real, uncompressed v2 batch with a correct CRC (tests, benches, tools).
/// An empty `records` slice still yields a well-formed batch of one empty-value record.
pub fn build_batch(opts: &TestBatch<'_>) -> Bytes {
    let empty: [(Option<&[u8]>, &[u8]); 1] = [(None, b"")];
    let records = if opts.records.is_empty() {
        &empty[..]
    } else {
        opts.records
    };
    let mut body = BytesMut::new();
    for (i, (k, v)) in records.iter().enumerate() {
        encode_record(&mut body, i as i64, *k, v);
    }
    let count = records.len() as i32;
    let mut attributes = 0i16;
    if opts.transactional {
        attributes |= ATTR_TRANSACTIONAL;
    }
    let header = BatchHeader {
        base_offset: opts.base_offset.into(),
        batch_length: ((BATCH_HEADER_LEN - BATCH_LENGTH_PREFIX + body.len()) as i32).into(),
        partition_leader_epoch: opts.partition_leader_epoch.into(),
        magic: MAGIC_V2,
        crc: 0.into(),
        attributes: attributes.into(),
        last_offset_delta: (count - 1).into(),
        base_timestamp: opts.timestamp.into(),
        max_timestamp: opts.timestamp.into(),
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
        }
    }
}
