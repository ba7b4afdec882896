//! Unit tests of batch validation, scanning and the record walk.

use super::*;
use crate::protocol::compression::{self, DecompressError};
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
fn followers_check_compressed_batches_at_header_level_only() {
    // Records that are not records at all: passed on by `validate_batches` (a follower
    // trusts its leader) for codecs 1-4, never for none.
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

const CODECS: [i16; 4] = [
    compression::GZIP,
    compression::SNAPPY,
    compression::LZ4,
    compression::ZSTD,
];
const LIMIT: usize = 1 << 20;

/// A CRC-valid batch of `codec` around the compressed `records` bytes.
fn packed(records: &[u8], count: i32, codec: i16) -> Vec<u8> {
    raw_batch(&compression::compress(codec, records), count, codec)
}

fn produce_err(records: &[u8], count: i32, codec: i16) -> BatchError {
    validate_produce_batches(&packed(records, count, codec), LIMIT).unwrap_err()
}

/// `n` well-formed records, offset deltas 0..n.
fn good_records(n: i32) -> Vec<u8> {
    (0..n).flat_map(|i| rec(&good_body(i.into()))).collect()
}

#[test]
fn compressed_batches_of_every_codec_validate() {
    let recs: Vec<(Option<&[u8]>, &[u8])> =
        (0..50).map(|_| (Some(&b"key"[..]), &b"v"[..])).collect();
    for codec in CODECS {
        let b = build_batch(&TestBatch {
            records: &recs,
            compression: codec,
            ..TestBatch::default()
        });
        let infos = validate_produce_batches(&b, LIMIT).unwrap();
        assert_eq!(infos[0].record_count, 50, "codec {codec}");
        assert_eq!(BatchHeader::parse(&b).unwrap().compression(), codec);
        // Two batches back to back, the second compressed.
        let mut two = batch(2).to_vec();
        two.extend_from_slice(&b);
        assert_eq!(validate_produce_batches(&two, LIMIT).unwrap().len(), 2);
    }
}

#[test]
fn the_69_byte_gzip_batch_claiming_2_pow_31_records_is_refused() {
    let b = packed(&[], i32::MAX, compression::GZIP);
    assert!(b.len() < 100, "{} bytes", b.len());
    let e = validate_produce_batches(&b, LIMIT).unwrap_err();
    assert_eq!(
        e,
        BatchError::RecordCountMismatch {
            at: 0,
            count: i32::MAX,
            found: 0
        }
    );
    assert_eq!(e.kafka_error(), ErrorCode::InvalidRecord);
}

#[test]
fn compressed_count_lies_are_refused() {
    for codec in CODECS {
        // Fewer records than the header's count, then more.
        assert_eq!(
            produce_err(&good_records(2), 3, codec),
            BatchError::RecordCountMismatch {
                at: 0,
                count: 3,
                found: 2
            },
            "codec {codec}"
        );
        let extra = rec(&good_body(2)).len();
        assert_eq!(
            produce_err(&good_records(3), 2, codec),
            BatchError::TrailingRecordBytes { at: 0, extra },
            "codec {codec}"
        );
    }
}

#[test]
fn compressed_offset_delta_errors_are_refused() {
    for codec in CODECS {
        let mut r = rec(&good_body(0));
        r.extend(rec(&good_body(5)));
        let e = produce_err(&r, 2, codec);
        assert_eq!(
            e,
            BatchError::InconsistentOffset {
                at: 0,
                record: 1,
                delta: 5
            },
            "codec {codec}"
        );
        assert_eq!(e.kafka_error(), ErrorCode::InvalidRecord);
        assert_eq!(e.record_index(), Some(1));
        // lastOffsetDelta in the header disagrees with the count.
        let mut b = packed(&good_records(2), 2, codec);
        b[23..27].copy_from_slice(&5i32.to_be_bytes());
        reseal(&mut b);
        let e = validate_produce_batches(&b, LIMIT).unwrap_err();
        assert!(matches!(e, BatchError::OffsetDeltaMismatch { .. }), "{e:?}");
        assert_eq!(e.kafka_error(), ErrorCode::InvalidRecord);
    }
}

#[test]
fn compressed_truncated_records_are_refused() {
    for codec in CODECS {
        let mut r = good_records(2);
        r.truncate(r.len() - 2);
        let e = produce_err(&r, 2, codec);
        assert!(
            matches!(e, BatchError::RecordPastBatchEnd { record: 1, .. }),
            "codec {codec}: {e:?}"
        );
        assert_eq!(e.kafka_error(), ErrorCode::InvalidRecord);
        // A value length past its record, inside the compressed stream.
        let e = produce_err(&rec(&body(0, 1, b"k", 10, b"abc")), 1, codec);
        assert!(matches!(e, BatchError::RecordFieldsOverrun { .. }), "{e:?}");
    }
}

#[test]
fn compressed_bombs_over_the_limit_are_refused() {
    // One record whose 8 MiB value compresses to a few KiB.
    let value = vec![0u8; 8 << 20];
    let recs: [(Option<&[u8]>, &[u8]); 1] = [(None, &value)];
    for codec in CODECS {
        let b = build_batch(&TestBatch {
            records: &recs,
            compression: codec,
            ..TestBatch::default()
        });
        assert!(b.len() < 512 << 10, "codec {codec}: {} bytes", b.len());
        let e = validate_produce_batches(&b, LIMIT).unwrap_err();
        assert_eq!(
            e,
            BatchError::Decompress {
                at: 0,
                error: DecompressError::TooLarge { limit: LIMIT }
            },
            "codec {codec}"
        );
        assert_eq!(e.kafka_error(), ErrorCode::RecordListTooLarge);
        // Within a larger limit it is a fine batch.
        validate_produce_batches(&b, 16 << 20).unwrap();
    }
}

#[test]
fn garbage_compressed_bytes_are_corrupt() {
    for codec in CODECS {
        let e = validate_produce_batches(&raw_batch(&[0xffu8; 20], 2, codec), LIMIT).unwrap_err();
        assert!(
            matches!(
                e,
                BatchError::Decompress {
                    error: DecompressError::Corrupt { .. },
                    ..
                }
            ),
            "codec {codec}: {e:?}"
        );
        assert_eq!(e.kafka_error(), ErrorCode::CorruptMessage);
        assert_eq!(e.record_index(), None);
    }
}

#[test]
fn unknown_codecs_are_refused() {
    for codec in 5..=7 {
        let e =
            validate_produce_batches(&raw_batch(&good_records(1), 1, codec), LIMIT).unwrap_err();
        assert_eq!(e, BatchError::UnknownCompression { at: 0, codec });
        assert_eq!(e.kafka_error(), ErrorCode::CorruptMessage);
    }
}

#[test]
fn uncompressed_record_errors_map_to_invalid_record() {
    let mut r = rec(&good_body(0));
    r.extend(rec(&good_body(0)));
    let e = validate_produce_batches(&raw_batch(&r, 2, 0), LIMIT).unwrap_err();
    assert_eq!(e, validate_batches(&raw_batch(&r, 2, 0)).unwrap_err());
    assert_eq!(
        (e.kafka_error(), e.record_index()),
        (ErrorCode::InvalidRecord, Some(1))
    );
    let mut b = batch(1).to_vec();
    b[30] ^= 1;
    let e = validate_produce_batches(&b, LIMIT).unwrap_err();
    assert_eq!(e.kafka_error(), ErrorCode::CorruptMessage, "{e:?}");
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

#[test]
fn a_client_may_not_write_control_batches() {
    let mut b = build_batch(&TestBatch {
        records: &[(None, b"marker")],
        ..TestBatch::default()
    })
    .to_vec();
    b[21..23].copy_from_slice(&0x20i16.to_be_bytes()); // attributes: control
    reseal(&mut b);
    let err = validate_produce_batches(&b, 1 << 20).unwrap_err();
    assert_eq!(err, BatchError::ControlBatchFromClient { at: 0 });
    assert_eq!(err.kafka_error(), ErrorCode::InvalidRecord);
    // A leader's control batch, replicated, is a follower's to store.
    assert!(validate_batches(&b).is_ok());
}
