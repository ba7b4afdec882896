use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::*;
use crate::protocol::encode_response;

/// `len` bytes that differ from chunk to chunk (a misplaced chunk shows).
fn chunk(seed: u8, len: usize) -> Bytes {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect::<Vec<u8>>()
        .into()
}

/// Partitions' records as chunks: empty, one small, multi-chunk mixing small and large
/// (spliced and coalesced), one large.
fn partitions() -> Vec<Vec<Bytes>> {
    vec![
        vec![],
        vec![chunk(1, 100)],
        vec![
            chunk(2, 70),
            chunk(3, 40 << 10),
            chunk(4, 3 << 10),
            chunk(5, COALESCE_BELOW),
        ],
        vec![],
        vec![chunk(6, 300 << 10)],
    ]
}

/// A response of two topics over `records` at `version`, each field made by `field`.
fn response(
    records: &[Vec<Bytes>],
    version: i16,
    mut field: impl FnMut(&[Bytes]) -> Bytes,
) -> FetchResponse {
    let topics = records
        .chunks(3)
        .enumerate()
        .map(|(t, parts)| {
            let partitions = parts
                .iter()
                .enumerate()
                .map(|(i, chunks)| {
                    PartitionData::default()
                        .with_partition_index(i as i32)
                        .with_high_watermark(1000 + i as i64)
                        .with_records(Some(field(chunks)))
                })
                .collect();
            // v13 names topics by id only.
            let topic = FetchableTopicResponse::default().with_partitions(partitions);
            match version {
                13.. => topic.with_topic_id(uuid::Uuid::from_u128(t as u128 + 1)),
                _ => topic.with_topic(TopicName(StrBytes::from_string(format!("topic-{t}")))),
            }
        })
        .collect();
    FetchResponse::default().with_responses(topics)
}

fn total(chunks: &[Bytes]) -> usize {
    chunks.iter().map(Bytes::len).sum()
}

fn pieced(records: &[Vec<Bytes>], version: i16) -> Pieces {
    let mut splicer = RecordSplicer::new();
    let body = response(records, version, |c| splicer.records(c.to_vec(), total(c)));
    splicer.encode_fetch(version, 42, &body).unwrap()
}

fn copied(records: &[Vec<Bytes>], version: i16) -> Bytes {
    let body = response(records, version, |c| concat(c, total(c)));
    encode_response(ApiKey::Fetch, version, 42, &ResponseKind::Fetch(body)).unwrap()
}

#[test]
fn pieces_are_byte_identical_to_the_copying_encoding() {
    let records = partitions();
    for version in [4, 11, 12, 13] {
        let pieces = pieced(&records, version);
        assert_eq!(pieces.concat(), copied(&records, version), "v{version}");
    }
}

#[test]
fn large_chunks_are_pieces_of_their_own_and_small_ones_are_copied() {
    let records = partitions();
    let pieces = pieced(&records, 12);
    let large: Vec<&Bytes> = records
        .iter()
        .flatten()
        .filter(|c| c.len() >= COALESCE_BELOW)
        .collect();
    for chunk in &large {
        assert!(
            pieces.iter().any(|p| p.as_ptr() == chunk.as_ptr()),
            "a {}-byte chunk was copied",
            chunk.len()
        );
    }
    // Header, then each large chunk followed by what comes after it.
    assert_eq!(pieces.len(), 1 + 2 * large.len());
    assert!(pieces.iter().all(|p| !p.is_empty()));
}

#[test]
fn a_response_without_records_is_one_piece() {
    let records = vec![vec![], vec![]];
    let pieces = pieced(&records, 12);
    assert_eq!(pieces.len(), 1);
    assert_eq!(pieces[0], copied(&records, 12));
}

#[test]
fn records_larger_than_the_placeholder_region_are_copied() {
    let records = vec![vec![
        chunk(9, PLACEHOLDER_BYTES / 2 + 1),
        chunk(8, PLACEHOLDER_BYTES / 2),
    ]];
    let pieces = pieced(&records, 11);
    assert_eq!(pieces.len(), 1);
    assert_eq!(pieces[0], copied(&records, 11));
}

#[test]
fn a_placeholder_without_its_chunks_is_an_error() {
    let mut splicer = RecordSplicer::new();
    let placeholder = splicer.records(vec![chunk(1, 10)], 10);
    let mut other = RecordSplicer::new();
    other.records(vec![chunk(2, 11)], 11);
    let body = FetchResponse::default().with_responses(vec![
        FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![
                PartitionData::default().with_records(Some(placeholder)),
            ]),
    ]);
    let encoded = other.encode_fetch(12, 1, &body);
    assert!(encoded.is_err());
    // Chunks whose placeholder is not in the message are an error too.
    let unused = splicer.encode_fetch(12, 1, &FetchResponse::default());
    assert!(unused.is_err());
}
