//! Cost of validating a client's batch per codec (issue 10 item 5): decompression into the
//! bounded scratch buffer plus the record walk, against a plain memcpy of the same bytes.
//! Throughput is in uncompressed record bytes.
//!
//! `cargo bench --bench compressed_batches`; results in perf/RESULTS.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use corelog::protocol::compression::{GZIP, LZ4, SNAPPY, ZSTD};
use corelog::protocol::record_batch::{
    BATCH_HEADER_LEN, TestBatch, build_batch, validate_produce_batches,
};

/// 256 records of 1 KiB: a key and a value of text-like, compressible bytes, as a producer
/// with batch.size=256 KiB sends.
fn batch(codec: i16) -> (Vec<u8>, usize) {
    let words = [
        "order", "id", "customer", "total", "status", "shipped", "42", "EUR",
    ];
    let values: Vec<Vec<u8>> = (0..256usize)
        .map(|i| {
            let mut v = Vec::with_capacity(1024);
            let mut j = i;
            while v.len() < 1000 {
                v.extend_from_slice(words[j % words.len()].as_bytes());
                v.push(b' ');
                j = j.wrapping_mul(31).wrapping_add(7);
            }
            v
        })
        .collect();
    let records: Vec<(Option<&[u8]>, &[u8])> =
        values.iter().map(|v| (Some(&b"key"[..]), &v[..])).collect();
    let plain = build_batch(&TestBatch {
        records: &records,
        ..TestBatch::default()
    });
    let packed = build_batch(&TestBatch {
        records: &records,
        compression: codec,
        ..TestBatch::default()
    });
    (packed.to_vec(), plain.len() - BATCH_HEADER_LEN)
}

fn validation_per_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate_produce_batches");
    group
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    let (_, logical) = batch(0);
    group.throughput(Throughput::Bytes(logical as u64));
    let source = vec![0x5au8; logical];
    let mut target = vec![0u8; logical];
    group.bench_function("memcpy", |b| {
        b.iter(|| target.copy_from_slice(black_box(&source)))
    });
    for (name, codec) in [
        ("none", 0),
        ("gzip", GZIP),
        ("snappy", SNAPPY),
        ("lz4", LZ4),
        ("zstd", ZSTD),
    ] {
        let (packed, _) = batch(codec);
        group.bench_function(name, |b| {
            b.iter(|| validate_produce_batches(black_box(&packed), 16 << 20).expect("valid"))
        });
    }
    group.finish();
}

criterion_group!(benches, validation_per_codec);
criterion_main!(benches);
