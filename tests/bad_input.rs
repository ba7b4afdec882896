//! Bad input on raw TCP sockets: the broker rejects it precisely and keeps serving.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use common::*;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, RequestHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

const CLOSE_DEADLINE: Duration = Duration::from_secs(30);

fn expect_closed(c: &mut RawClient, what: &str) {
    match c.wait_closed(CLOSE_DEADLINE) {
        CloseOutcome::Closed => {}
        CloseOutcome::Response(r) => panic!(
            "{what}: expected the broker to close the connection, got a {}-byte response {:?}",
            r.len(),
            &r[..r.len().min(64)]
        ),
        CloseOutcome::TimedOut => panic!("{what}: connection still open after {CLOSE_DEADLINE:?}"),
    }
}

#[test]
fn oversized_frame_closes_connection() {
    let mut broker = Broker::start(BrokerOpts::new().set("socket.request.max.bytes", 1_048_576));
    let mut c = broker.raw();
    let mut f = (100i32 << 20).to_be_bytes().to_vec();
    f.extend_from_slice(&[0, 18, 0, 0, 0, 0, 0, 1]);
    c.send_raw(&f).unwrap();
    expect_closed(&mut c, "frame length 100 MiB > socket.request.max.bytes");
    broker.assert_serving();

    // Just above the limit is rejected too; a request just below is served.
    let mut c = broker.raw();
    let mut f = (1_048_577i32).to_be_bytes().to_vec();
    f.extend_from_slice(&[0, 18, 0, 0, 0, 0, 0, 1]);
    c.send_raw(&f).unwrap();
    expect_closed(&mut c, "frame length 1 MiB + 1");
    broker.assert_serving();
}

#[test]
fn negative_and_tiny_frame_lengths_close_connection() {
    let mut broker = Broker::start(BrokerOpts::new());
    for len in [-1i32, i32::MIN, -100] {
        let mut c = broker.raw();
        let mut f = len.to_be_bytes().to_vec();
        f.extend_from_slice(&[0, 18, 0, 0, 0, 0, 0, 1]);
        c.send_raw(&f).unwrap();
        expect_closed(&mut c, &format!("frame length {len}"));
        broker.assert_serving();
    }
    // A frame too short to hold a request header.
    for payload in [&[][..], &[0u8, 18][..], &[0u8, 18, 0, 0, 0][..]] {
        let mut c = broker.raw();
        c.send_raw(&frame(payload)).unwrap();
        match c.wait_closed(CLOSE_DEADLINE) {
            CloseOutcome::TimedOut => {
                panic!(
                    "frame of {} bytes: connection neither closed nor answered",
                    payload.len()
                )
            }
            other => eprintln!("frame of {} bytes: {other:?}", payload.len()),
        }
        broker.assert_serving();
    }
}

#[test]
fn unknown_api_key_does_not_hurt_the_broker() {
    let mut broker = Broker::start(BrokerOpts::new());
    for key in [32000i16, -5, 1000] {
        let mut c = broker.raw();
        let mut p = BytesMut::new();
        p.put_i16(key);
        p.put_i16(0); // version
        p.put_i32(77); // correlation id
        p.put_i16(4);
        p.put_slice(b"test");
        p.put_slice(&[0, 0, 0, 0]);
        c.send_raw(&frame(&p)).unwrap();
        match c.wait_closed(CLOSE_DEADLINE) {
            CloseOutcome::Closed => eprintln!("api key {key}: connection closed (as Kafka does)"),
            CloseOutcome::Response(mut r) => {
                let corr = r.get_i32();
                eprintln!(
                    "api key {key}: response {} bytes, correlation id {corr}",
                    r.len() + 4
                );
                assert_eq!(corr, 77, "api key {key}: response correlation id");
            }
            CloseOutcome::TimedOut => {
                panic!("api key {key}: connection neither closed nor answered")
            }
        }
        broker.assert_serving();
    }
}

/// The APIs the broker must serve (the broker contract). Exact ranges are the broker's choice
/// (src/protocol/versions.rs); the tests check they are coherent across ApiVersions versions.
const CONTRACT: &[ApiKey] = &[
    ApiKey::Produce,
    ApiKey::Fetch,
    ApiKey::ListOffsets,
    ApiKey::Metadata,
    ApiKey::ApiVersions,
    ApiKey::CreateTopics,
    ApiKey::DeleteTopics,
    ApiKey::InitProducerId,
    ApiKey::DescribeConfigs,
];

fn ranges(resp: &ApiVersionsResponse) -> Vec<(i16, i16, i16)> {
    let mut v: Vec<(i16, i16, i16)> = resp
        .api_keys
        .iter()
        .map(|k| (k.api_key, k.min_version, k.max_version))
        .collect();
    v.sort();
    v
}

fn check_ranges(resp: &ApiVersionsResponse, what: &str) {
    for &key in CONTRACT {
        let got = resp
            .api_keys
            .iter()
            .find(|k| k.api_key == key as i16)
            .unwrap_or_else(|| panic!("{what}: {key:?} missing from {:?}", resp.api_keys));
        let valid = key.valid_versions();
        assert!(
            valid.min <= got.min_version
                && got.min_version <= got.max_version
                && got.max_version <= valid.max,
            "{what}: {key:?} advertised {}-{}, outside what the protocol defines ({valid})",
            got.min_version,
            got.max_version
        );
    }
}

#[test]
fn unsupported_versions() {
    let mut broker = Broker::start(BrokerOpts::new());

    // Supported ApiVersions versions answer with error 0 and the same ranges.
    let reference = broker.raw().api_versions(3);
    eprintln!("advertised (key, min, max): {:?}", ranges(&reference));
    for v in 0..=3 {
        let resp = broker.raw().api_versions(v);
        assert_eq!(resp.error_code, NONE, "ApiVersions v{v}");
        check_ranges(&resp, &format!("ApiVersions v{v}"));
        assert_eq!(ranges(&resp), ranges(&reference), "ApiVersions v{v} ranges");
    }

    // ApiVersions v99: error 35 and the broker's ranges, in a v0 response (header v0).
    {
        let mut c = broker.raw();
        let corr = c
            .send_request_as(ApiKey::ApiVersions, 99, 3, &{
                let mut r = ApiVersionsRequest::default();
                r.client_software_name = StrBytes::from_static_str("corelog-test");
                r.client_software_version = StrBytes::from_static_str("0.1");
                r
            })
            .unwrap();
        let mut f = c
            .read_frame()
            .unwrap()
            .expect("ApiVersions v99: broker closed the connection instead of answering");
        assert_eq!(f.get_i32(), corr, "ApiVersions v99: correlation id");
        let resp = ApiVersionsResponse::decode(&mut f, 0).unwrap_or_else(|e| {
            panic!("ApiVersions v99 answer is not an ApiVersions v0 response: {e}")
        });
        assert_eq!(
            resp.error_code, UNSUPPORTED_VERSION,
            "ApiVersions v99 error"
        );
        assert!(
            !f.has_remaining(),
            "ApiVersions v99: {} trailing bytes",
            f.remaining()
        );
        check_ranges(&resp, "ApiVersions v99");
        assert_eq!(ranges(&resp), ranges(&reference), "ApiVersions v99 ranges");
        // The same connection keeps working with a supported version.
        let resp = c.api_versions(3);
        assert_eq!(resp.error_code, NONE);
    }
    broker.assert_serving();

    // Metadata v99 (body encoded as v12): the answer carries UNSUPPORTED_VERSION.
    {
        let mut c = broker.raw();
        let corr = c
            .send_request_as(ApiKey::Metadata, 99, 12, &MetadataRequest::default())
            .unwrap();
        match c.wait_closed(CLOSE_DEADLINE) {
            CloseOutcome::Response(mut r) => {
                assert_eq!(r.get_i32(), corr, "Metadata v99: correlation id");
                let body = r.to_vec();
                let has_35 = body.windows(2).any(|w| w == [0, 35]);
                eprintln!("Metadata v99 answer: {body:?}");
                assert!(
                    has_35,
                    "Metadata v99: no UNSUPPORTED_VERSION (35) in {body:?}"
                );
            }
            other => panic!(
                "Metadata v99: expected a response with UNSUPPORTED_VERSION (35), got {other:?}"
            ),
        }
    }
    broker.assert_serving();

    // Produce v2 (below the supported minimum).
    {
        let mut c = broker.raw();
        let mut p = BytesMut::new();
        let mut h = RequestHeader::default();
        h.request_api_key = ApiKey::Produce as i16;
        h.request_api_version = 2;
        h.correlation_id = 5;
        h.client_id = Some(StrBytes::from_static_str("t"));
        h.encode(&mut p, 1).unwrap();
        p.put_i16(-1); // acks
        p.put_i32(1000); // timeout
        p.put_i32(0); // no topics
        c.send_raw(&frame(&p)).unwrap();
        match c.wait_closed(CLOSE_DEADLINE) {
            CloseOutcome::Response(mut r) => {
                assert_eq!(r.get_i32(), 5);
                eprintln!("Produce v2 answer: {:?}", r.to_vec());
            }
            CloseOutcome::Closed => eprintln!("Produce v2: connection closed"),
            CloseOutcome::TimedOut => panic!("Produce v2: neither answered nor closed"),
        }
    }
    broker.assert_serving();
}

#[test]
fn corrupt_batches_are_rejected_and_not_appended() {
    let mut broker = Broker::start(BrokerOpts::new());
    let mut c = broker.raw();
    let topic = "corrupt";
    assert_eq!(c.create_topic(topic, 1, 1), NONE);
    let good = || {
        record_batch(
            1_700_000_000_000,
            &[(Some(b"key"), Some(b"some value bytes"))],
        )
    };
    assert_eq!(c.produce_one(topic, 0, good()), (NONE, 0), "valid batch");
    let latest = |c: &mut RawClient| {
        let (e, off, _) = c.list_offset(topic, 0, -1);
        assert_eq!(e, NONE);
        off
    };
    assert_eq!(latest(&mut c), 1);

    // CRC mismatch: flip a byte of the value.
    let mut b = good();
    let n = b.len();
    b[n - 3] ^= 0x40;
    let (e, _) = c.produce_one(topic, 0, b);
    assert_eq!(
        e, CORRUPT_MESSAGE,
        "batch with a flipped payload byte (CRC mismatch)"
    );
    assert_eq!(latest(&mut c), 1, "corrupt batch must not be appended");

    // CRC mismatch in the batch header (attributes region is covered by the CRC).
    let mut b = good();
    b[BATCH_HEADER_LEN - 1] ^= 0x01; // low byte of the record count
    let (e, _) = c.produce_one(topic, 0, b);
    assert_ne!(e, NONE, "batch with a flipped record count");
    eprintln!("flipped record count: error {e}");
    assert_eq!(latest(&mut c), 1);

    // Bad magic (CRC recomputed so only the magic is wrong).
    for magic in [0u8, 1, 3, 0xff] {
        let mut b = good();
        b[16] = magic;
        fix_crc(&mut b);
        let (e, _) = c.produce_one(topic, 0, b);
        eprintln!("magic {magic}: error {e}");
        assert!(
            e == CORRUPT_MESSAGE || e == INVALID_RECORD || e == 43 || e == 42,
            "magic {magic}: expected CORRUPT_MESSAGE/INVALID_RECORD/UNSUPPORTED_FOR_MESSAGE_FORMAT/INVALID_REQUEST, got {e}"
        );
        assert_eq!(
            latest(&mut c),
            1,
            "batch with magic {magic} must not be appended"
        );
    }

    // Truncated batch: batchLength claims more than is there.
    for cut in [1usize, 5, 30] {
        let mut b = good();
        b.truncate(b.len() - cut);
        let (e, _) = c.produce_one(topic, 0, b);
        eprintln!("truncated by {cut}: error {e}");
        assert_ne!(e, NONE, "batch truncated by {cut} bytes");
        assert_eq!(latest(&mut c), 1, "truncated batch must not be appended");
    }
    // Shorter than a batch header.
    let (e, _) = c.produce_one(topic, 0, good()[..30].to_vec());
    assert_ne!(e, NONE, "30-byte record set");
    // Record count larger than the records present (CRC valid).
    let mut b = good();
    b[57..61].copy_from_slice(&5i32.to_be_bytes());
    fix_crc(&mut b);
    let (e, _) = c.produce_one(topic, 0, b);
    eprintln!("record count 5 with 1 record: error {e}");
    assert_ne!(e, NONE, "record count larger than the records present");
    assert_eq!(latest(&mut c), 1);
    // The partition still works and the stored record is intact.
    assert_eq!(
        c.produce_one(topic, 0, good()),
        (NONE, 1),
        "valid batch after rejects"
    );
    assert_eq!(latest(&mut c), 2);
    let resp = c.fetch(topic, 0, 0, 100);
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, NONE);
    assert_eq!(p.high_watermark, 2);
    let (n, bases) = count_records(p.records.as_deref().unwrap_or(&[]));
    assert_eq!(
        (n, bases),
        (2, vec![0, 1]),
        "stored batches after rejected ones"
    );
    drop(c);
    broker.assert_serving();
}

#[test]
fn produce_to_unknown_topic_with_auto_create_off() {
    let mut broker = Broker::start(BrokerOpts::new().set("auto.create.topics.enable", "false"));
    let mut c = broker.raw();
    let (e, _) = c.produce_one("unknown-topic", 0, record_batch(0, &[(None, Some(b"v"))]));
    assert_eq!(e, UNKNOWN_TOPIC_OR_PARTITION);
    // Unknown partition of an existing topic.
    assert_eq!(c.create_topic("known", 2, 1), NONE);
    let (e, _) = c.produce_one("known", 7, record_batch(0, &[(None, Some(b"v"))]));
    assert_eq!(
        e, UNKNOWN_TOPIC_OR_PARTITION,
        "partition 7 of a 2-partition topic"
    );
    let (e, _) = c.produce_one("known", -1, record_batch(0, &[(None, Some(b"v"))]));
    assert_eq!(e, UNKNOWN_TOPIC_OR_PARTITION, "partition -1");
    drop(c);
    broker.assert_serving();
}

#[test]
fn fetch_beyond_end_is_offset_out_of_range() {
    let mut broker = Broker::start(BrokerOpts::new());
    let mut c = broker.raw();
    assert_eq!(c.create_topic("fetch-oor", 1, 1), NONE);
    let (e, _) = c.produce_one("fetch-oor", 0, record_batch(0, &[(None, Some(b"v"))]));
    assert_eq!(e, NONE);
    for off in [100i64, 2, i64::MAX, -5] {
        let resp = c.fetch("fetch-oor", 0, off, 100);
        let p = &resp.responses[0].partitions[0];
        eprintln!(
            "fetch at {off}: error {} hw {}",
            p.error_code, p.high_watermark
        );
        assert_eq!(
            p.error_code, OFFSET_OUT_OF_RANGE,
            "fetch at offset {off} of a 1-record log"
        );
    }
    // At the end exactly: no error, no records.
    let resp = c.fetch("fetch-oor", 0, 1, 100);
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, NONE, "fetch at the log end");
    assert_eq!(count_records(p.records.as_deref().unwrap_or(&[])).0, 0);
    // Unknown topic in a fetch.
    let resp = c.fetch("no-such-fetch-topic", 0, 0, 100);
    let p = &resp.responses[0].partitions[0];
    assert_eq!(
        p.error_code, UNKNOWN_TOPIC_OR_PARTITION,
        "fetch of an unknown topic"
    );
    drop(c);
    broker.assert_serving();
}

#[test]
fn invalid_topic_names_in_create_topics() {
    let mut broker = Broker::start(BrokerOpts::new());
    let mut c = broker.raw();
    let long = "a".repeat(250);
    for name in [
        "bad/name",
        long.as_str(),
        "",
        ".",
        "..",
        "tab\tname",
        "ünïcode",
    ] {
        assert_eq!(
            c.create_topic(name, 1, 1),
            INVALID_TOPIC_EXCEPTION,
            "CreateTopics name {name:?}"
        );
    }
    drop(c);
    broker.assert_serving();
}

/// A seeded stream of garbage: fully random frames, and frames with a valid header of a
/// supported API followed by random bytes. The broker must never die and must keep serving.
#[test]
fn garbage_frames_never_kill_the_broker() {
    let mut broker = Broker::start(BrokerOpts::new());
    let addr = broker.addr();
    let mut st = 0x5eed_u64;
    let keys: Vec<(i16, i16)> = ranges(&broker.raw().api_versions(3))
        .into_iter()
        .map(|(k, _, max)| (k, max))
        .collect();
    let mut outcomes = [0usize; 3];
    let start = Instant::now();
    let total = 400;
    for batch in 0..total / 40 {
        let mut conns = Vec::new();
        for j in 0..40 {
            let case: i32 = batch * 40 + j;
            let len = (splitmix64(&mut st) % 300) as usize;
            let mut payload: Vec<u8> = (0..len).map(|_| splitmix64(&mut st) as u8).collect();
            if case % 2 == 1 {
                // Valid api key/version/correlation id, then garbage.
                let (k, max) = keys[(splitmix64(&mut st) % keys.len() as u64) as usize];
                let v = (splitmix64(&mut st) % (max as u64 + 1)) as i16;
                let mut h = Vec::new();
                h.extend_from_slice(&k.to_be_bytes());
                h.extend_from_slice(&v.to_be_bytes());
                h.extend_from_slice(&case.to_be_bytes());
                if case % 4 == 1 {
                    h.extend_from_slice(&4i16.to_be_bytes());
                    h.extend_from_slice(b"junk");
                }
                h.extend_from_slice(&payload);
                payload = h;
            }
            let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(10)) else {
                broker.assert_alive();
                panic!("case {case}: cannot connect");
            };
            let mut c = RawClient::from_stream(s);
            let _ = c.send_raw(&frame(&payload));
            conns.push((case, c));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (case, mut c) in conns {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(300));
            match c.wait_closed(left) {
                CloseOutcome::Closed => outcomes[0] += 1,
                CloseOutcome::Response(_) => outcomes[1] += 1,
                CloseOutcome::TimedOut => {
                    eprintln!("case {case}: neither answered nor closed in 20 s");
                    outcomes[2] += 1
                }
            }
        }
        broker.assert_alive();
    }
    eprintln!(
        "{total} garbage frames in {:?}: closed {}, answered {}, hung {}",
        start.elapsed(),
        outcomes[0],
        outcomes[1],
        outcomes[2]
    );
    broker.assert_serving();
    // Still fully functional: create, produce, list.
    let mut c = broker.raw();
    assert_eq!(c.create_topic("after-garbage", 1, 1), NONE);
    assert_eq!(
        c.produce_one("after-garbage", 0, record_batch(0, &[(None, Some(b"ok"))])),
        (NONE, 0)
    );
    assert_eq!(outcomes[2], 0, "connections left hanging on garbage frames");
}

#[test]
fn garbage_after_a_valid_request_on_the_same_connection() {
    let mut broker = Broker::start(BrokerOpts::new());
    let mut c = broker.raw();
    let r = c.api_versions(3);
    assert_eq!(r.error_code, NONE);
    // A Metadata request whose topics array claims 1e9 entries.
    let mut p = BytesMut::new();
    let mut h = RequestHeader::default();
    h.request_api_key = ApiKey::Metadata as i16;
    h.request_api_version = 4;
    h.correlation_id = 9;
    h.encode(&mut p, 1).unwrap();
    p.put_i32(1_000_000_000);
    p.put_i16(3);
    p.put_slice(b"abc");
    c.send_raw(&frame(&p)).unwrap();
    match c.wait_closed(CLOSE_DEADLINE) {
        CloseOutcome::TimedOut => panic!("huge array count: neither answered nor closed"),
        other => eprintln!("huge array count: {other:?}"),
    }
    broker.assert_serving();
    // A string length past the frame end.
    let mut c = broker.raw();
    let mut p = BytesMut::new();
    h.correlation_id = 10;
    h.encode(&mut p, 1).unwrap();
    p.put_i32(1);
    p.put_i16(30000);
    p.put_slice(b"abc");
    c.send_raw(&frame(&p)).unwrap();
    match c.wait_closed(CLOSE_DEADLINE) {
        CloseOutcome::TimedOut => panic!("long string: neither answered nor closed"),
        other => eprintln!("string past the end: {other:?}"),
    }
    broker.assert_serving();
    // Client half-closes mid-frame.
    let mut c = broker.raw();
    c.send_raw(&[0, 0, 1, 0, 0, 18]).unwrap();
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    match c.wait_closed(CLOSE_DEADLINE) {
        CloseOutcome::Closed => {}
        other => panic!("half-closed mid-frame: expected close, got {other:?}"),
    }
    broker.assert_serving();
}

#[test]
fn malformed_records_inside_a_crc_valid_batch_are_rejected() {
    let mut broker = Broker::start(BrokerOpts::new());
    let mut c = broker.raw();
    let topic = "malformed";
    assert_eq!(c.create_topic(topic, 1, 1), NONE);
    let good = || {
        record_batch(
            1_700_000_000_000,
            &[(Some(b"key"), Some(b"some value bytes"))],
        )
    };
    let latest = |c: &mut RawClient| {
        let (e, off, _) = c.list_offset(topic, 0, -1);
        assert_eq!(e, NONE);
        off
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("record length past the end of the batch", {
            let mut b = good();
            b[BATCH_HEADER_LEN] = 0x7e; // zigzag 63: longer than the 25-byte record
            fix_crc(&mut b);
            b
        }),
        ("record length shorter than the record", {
            let mut b = good();
            b[BATCH_HEADER_LEN] = 0x20; // zigzag 16: shorter than the 25-byte record
            fix_crc(&mut b);
            b
        }),
        ("value length past the end of the record", {
            let mut b = good();
            // length(1) attributes(1) ts(1) offset(1) keylen(1) key(3) -> value length at +8
            b[BATCH_HEADER_LEN + 8] = 0x7e;
            fix_crc(&mut b);
            b
        }),
        ("lastOffsetDelta disagrees with the record count", {
            let mut b = good();
            b[23..27].copy_from_slice(&4i32.to_be_bytes());
            fix_crc(&mut b);
            b
        }),
        ("negative record count", {
            let mut b = good();
            b[57..61].copy_from_slice(&(-1i32).to_be_bytes());
            fix_crc(&mut b);
            b
        }),
    ];
    let mut accepted = Vec::new();
    for (what, batch) in cases {
        let before = latest(&mut c);
        let (e, off) = c.produce_one(topic, 0, batch);
        let after = latest(&mut c);
        eprintln!("{what}: error {e} base offset {off}; latest {before} -> {after}");
        if e == NONE || after != before {
            accepted.push(format!("{what}: error {e}, latest {before} -> {after}"));
        }
    }
    drop(c);
    broker.assert_serving();
    assert!(
        accepted.is_empty(),
        "malformed CRC-valid batches were accepted/appended: {accepted:#?}"
    );
}
