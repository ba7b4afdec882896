//! Hardening tests: compressed batches (issue 10 item 5). A 69-byte gzip batch claiming
//! 2^31-1 records once burnt 2^31 offsets; now every client batch is decompressed (within a
//! bound) and its records walked as Kafka's LogValidator does, and producers of every codec
//! still round-trip.

use corelog::protocol::compression;
use corelog::protocol::record_batch::{TestBatch, build_batch};

use crate::common::*;

const RECORD_LIST_TOO_LARGE: i16 = 18;

/// A CRC-valid batch of `codec` holding `inner` as its (compressed) records and claiming
/// `count` records.
fn forged_batch(codec: i16, inner: &[u8], count: i32) -> Vec<u8> {
    let mut b = record_batch(1_700_000_000_000, &[(None, Some(b"x"))]);
    b.truncate(BATCH_HEADER_LEN);
    b.extend_from_slice(inner);
    let batch_length = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let attributes = i16::from_be_bytes([b[21], b[22]]) & !7 | codec;
    b[21..23].copy_from_slice(&attributes.to_be_bytes());
    b[23..27].copy_from_slice(&(count - 1).to_be_bytes()); // lastOffsetDelta
    b[57..61].copy_from_slice(&count.to_be_bytes());
    fix_crc(&mut b);
    b
}

fn log_end(c: &mut RawClient, topic: &str) -> i64 {
    let (e, offset, _) = c.list_offset(topic, 0, -1);
    assert_eq!(e, NONE, "ListOffsets latest of {topic}");
    offset
}

/// The record bytes of partition 0 from offset 0 (up to 1 MiB).
fn fetch_records(c: &mut RawClient, topic: &str) -> bytes::Bytes {
    let resp = c.fetch(topic, 0, 0, 0);
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, NONE, "Fetch {topic}");
    p.records.clone().unwrap_or_default()
}

#[test]
fn forged_record_counts_are_refused_and_burn_no_offsets() {
    let broker = Broker::start(BrokerOpts::new());
    let mut c = broker.raw();
    let topic = "forged-counts";
    assert_eq!(c.create_topic(topic, 1, 1), NONE);
    assert_eq!(
        c.produce_one(
            topic,
            0,
            record_batch(1_700_000_000_000, &[(None, Some(b"a"))])
        ),
        (NONE, 0)
    );
    // The original attack: 8 bytes that are no gzip stream, 69 bytes in all.
    let attack = forged_batch(compression::GZIP, &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0], i32::MAX);
    assert_eq!(attack.len(), 69);
    assert_eq!(c.produce_one(topic, 0, attack).0, CORRUPT_MESSAGE);
    // A valid gzip stream of no records, claiming 2^31-1 of them.
    let empty = compression::compress(compression::GZIP, &[]);
    let resp = c.produce(
        topic,
        0,
        forged_batch(compression::GZIP, &empty, i32::MAX),
        -1,
    );
    let p = &resp.responses[0].partition_responses[0];
    assert_eq!(p.error_code, INVALID_RECORD, "{resp:?}");
    assert_eq!(p.base_offset, -1);
    let message = p.error_message.as_deref().unwrap_or_default();
    assert!(
        message.contains("holds 0 records"),
        "error_message: {message:?}"
    );
    // Every codec: one real record, a header claiming a thousand.
    let one = build_batch(&TestBatch {
        records: &[(None, b"one")],
        ..TestBatch::default()
    });
    for codec in [compression::SNAPPY, compression::LZ4, compression::ZSTD] {
        let inner = compression::compress(codec, &one[BATCH_HEADER_LEN..]);
        let (e, _) = c.produce_one(topic, 0, forged_batch(codec, &inner, 1000));
        assert_eq!(e, INVALID_RECORD, "codec {codec}");
    }
    assert_eq!(log_end(&mut c, topic), 1, "no offset was burnt");
    // The partition still takes good batches, at the next offset.
    assert_eq!(
        c.produce_one(
            topic,
            0,
            record_batch(1_700_000_000_000, &[(None, Some(b"b"))])
        ),
        (NONE, 1)
    );
    assert_eq!(count_records(&fetch_records(&mut c, topic)).0, 2);
}

#[test]
fn bad_inner_records_are_answered_with_their_index() {
    let mut broker = Broker::start(BrokerOpts::new());
    let mut c = broker.raw();
    let topic = "inner-records";
    assert_eq!(c.create_topic(topic, 1, 1), NONE);
    // Three records, the third with offsetDelta 7, zstd-compressed.
    let mut records = Vec::new();
    for delta in [0, 1, 7] {
        let mut body = vec![0u8, 0];
        put_varint(&mut body, delta);
        body.extend_from_slice(&[1, 0]); // null key, null value
        put_varint(&mut records, body.len() as i64 + 1);
        body.push(0); // no headers
        records.extend_from_slice(&body);
    }
    let inner = compression::compress(compression::ZSTD, &records);
    let resp = c.produce(topic, 0, forged_batch(compression::ZSTD, &inner, 3), -1);
    let p = &resp.responses[0].partition_responses[0];
    assert_eq!(p.error_code, INVALID_RECORD, "{resp:?}");
    assert_eq!(p.record_errors.len(), 1, "{resp:?}");
    assert_eq!(p.record_errors[0].batch_index, 2);
    // A 32 MiB value compresses to a few KiB but is over 16 x max.message.bytes.
    let value = vec![0u8; 32 << 20];
    let bomb = build_batch(&TestBatch {
        records: &[(None, &value)],
        compression: compression::GZIP,
        ..TestBatch::default()
    });
    assert!(bomb.len() < 1 << 20);
    let (e, _) = c.produce_one(topic, 0, bomb.to_vec());
    assert_eq!(e, RECORD_LIST_TOO_LARGE);
    assert_eq!(log_end(&mut c, topic), 0);
    broker.assert_serving();
}

#[test]
fn producers_of_every_codec_round_trip() {
    let broker = Broker::start(BrokerOpts::new());
    let bootstrap = broker.bootstrap();
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        create_topic(&bootstrap, &topic, 2);
        let mut config = producer_config(&bootstrap, "all");
        config
            .set("compression.type", codec)
            .set("linger.ms", "20")
            .set("batch.num.messages", "200");
        let seed = 0xC0DEC + codec.len() as u64;
        let deliveries = produce_messages(&config, &topic, seed, 0..2000);
        // Batches of many records each, so the broker really walked compressed batches.
        let (n, bases) = count_records(&fetch_records(&mut broker.raw(), &topic));
        assert!(
            n > bases.len(),
            "{codec}: {n} records in {} batches",
            bases.len()
        );
        assert_eq!(
            verify_topic(&bootstrap, &topic, 2, seed, &deliveries),
            2000,
            "{codec}"
        );
    }
}
