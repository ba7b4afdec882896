//! Assembling a Fetch response (issue 11, "Fetch"): N partitions of record chunks as the
//! log hands them out (tail-cache entries), before (each partition's chunks copied into
//! one `Bytes`, then the whole response copied into one frame) and after (the encoded
//! message with the chunks spliced in as pieces, `protocol::pieces`).
//!
//! Besides criterion's times it prints the bytes copied per record byte served: bytes of
//! the output that are not the source chunks, plus (before) the per-partition copy.
//!
//! `cargo bench --bench fetch_assembly`; results in perf/RESULTS.md.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{ApiKey, FetchResponse, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;

use corelog::protocol::encode_response;
use corelog::protocol::pieces::{Pieces, RecordSplicer};

/// Fetch v12 (flexible), what current clients use.
const VERSION: i16 = 12;

struct Case {
    name: &'static str,
    partitions: usize,
    chunks: usize,
    chunk_bytes: usize,
}

const CASES: [Case; 3] = [
    // A consumer of 6 partitions behind a producer of 256 KiB batches: 1 MiB each.
    Case {
        name: "6p_4x256KiB",
        partitions: 6,
        chunks: 4,
        chunk_bytes: 256 << 10,
    },
    // 16 KiB batches (the producer default): 64 to a partition's 1 MiB.
    Case {
        name: "6p_64x16KiB",
        partitions: 6,
        chunks: 64,
        chunk_bytes: 16 << 10,
    },
    // Many partitions, small batches: the coalesced case.
    Case {
        name: "100p_8x2KiB",
        partitions: 100,
        chunks: 8,
        chunk_bytes: 2 << 10,
    },
];

fn records(case: &Case) -> Vec<Vec<Bytes>> {
    (0..case.partitions)
        .map(|p| {
            (0..case.chunks)
                .map(|c| Bytes::from(vec![(p + c) as u8; case.chunk_bytes]))
                .collect()
        })
        .collect()
}

fn response(records: &[Vec<Bytes>], mut field: impl FnMut(&[Bytes]) -> Bytes) -> FetchResponse {
    let partitions = records
        .iter()
        .enumerate()
        .map(|(i, chunks)| {
            PartitionData::default()
                .with_partition_index(i as i32)
                .with_high_watermark(1 << 20)
                .with_records(Some(field(chunks)))
        })
        .collect();
    FetchResponse::default().with_responses(vec![
        FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str("bench")))
            .with_partitions(partitions),
    ])
}

fn total(chunks: &[Bytes]) -> usize {
    chunks.iter().map(Bytes::len).sum()
}

/// Before: `replica.rs`' concatenation of a partition's chunks, then `encode_response`.
fn copying(records: &[Vec<Bytes>]) -> Bytes {
    let body = response(records, |chunks| {
        if chunks.len() == 1 {
            return chunks[0].clone();
        }
        let mut out = BytesMut::with_capacity(total(chunks));
        for c in chunks {
            out.extend_from_slice(c);
        }
        out.freeze()
    });
    encode_response(ApiKey::Fetch, VERSION, 1, &ResponseKind::Fetch(body)).expect("encodes")
}

/// After: placeholders, chunks spliced in.
fn pieced(records: &[Vec<Bytes>]) -> Pieces {
    let mut splicer = RecordSplicer::new();
    let body = response(records, |chunks| {
        splicer.records(chunks.to_vec(), total(chunks))
    });
    splicer.encode_fetch(VERSION, 1, &body).expect("encodes")
}

/// Bytes copied per record byte: (before, after).
fn copied_per_record_byte(records: &[Vec<Bytes>]) -> (f64, f64) {
    let record_bytes: usize = records.iter().map(|c| total(c)).sum();
    let concatenated: usize = records
        .iter()
        .filter(|c| c.len() > 1)
        .map(|c| total(c))
        .sum();
    let before = concatenated + copying(records).len();
    let sources: Vec<*const u8> = records.iter().flatten().map(|c| c.as_ptr()).collect();
    let after: usize = pieced(records)
        .iter()
        .filter(|p| !sources.contains(&p.as_ptr()))
        .map(Bytes::len)
        .sum();
    let per = |n: usize| n as f64 / record_bytes as f64;
    (per(before), per(after))
}

fn assembly(c: &mut Criterion) {
    let mut group = c.benchmark_group("fetch_assembly");
    for case in &CASES {
        let records = records(case);
        assert_eq!(copying(&records), pieced(&records).concat(), "same frame");
        let (before, after) = copied_per_record_byte(&records);
        println!(
            "{}: bytes copied per record byte: before {before:.3}, after {after:.4}; {} pieces",
            case.name,
            pieced(&records).len()
        );
        let record_bytes: usize = records.iter().map(|c| total(c)).sum();
        group.throughput(Throughput::Bytes(record_bytes as u64));
        group.bench_function(format!("{}/copying", case.name), |b| {
            b.iter(|| copying(black_box(&records)))
        });
        group.bench_function(format!("{}/pieced", case.name), |b| {
            b.iter(|| pieced(black_box(&records)))
        });
    }
    group.finish();
}

criterion_group!(benches, assembly);
criterion_main!(benches);
