//! Micro-benchmarks of the broker's hot paths: batch validation (CRC-32C), log append with
//! group commit, sparse index lookup, and Produce request decoding.
//!
//! `cargo bench --bench hot_paths`; results and the machine's limits are in perf/RESULTS.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use corelog::protocol::decode_request;
use corelog::protocol::frame::SIZE_PREFIX_BYTES;
use corelog::protocol::record_batch::{build_test_batch, validate_batches};
use corelog::runtime::block_on;
use corelog::storage::index::OffsetIndex;
use corelog::storage::{LogConfig, PartitionLog};

mod common;

/// A 16 KiB batch of 16 records of 1 KiB, as a producer with batch.size=16384 sends.
fn batch_16k() -> Bytes {
    let value = vec![0x5a; 1000];
    let records: Vec<(Option<&[u8]>, &[u8])> =
        (0..16).map(|_| (Some(&b"key"[..]), &value[..])).collect();
    build_test_batch(0, &records, 1_700_000_000_000)
}

fn validation(c: &mut Criterion) {
    let batch = batch_16k();
    let mut group = c.benchmark_group("validate_batches");
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.bench_function("16KiB", |b| b.iter(|| validate_batches(black_box(&batch))));
    group.finish();
}

/// Appends `count` 16 KiB batches to a fresh log, waiting for durability every `per_sync`
/// appends, and returns the time taken.
fn append_batches(count: u64, per_sync: u64) -> Duration {
    block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = PartitionLog::open(dir.path(), LogConfig::default())
            .await
            .expect("open log");
        let batch = batch_16k();
        let infos = validate_batches(&batch).expect("valid batch");
        let start = Instant::now();
        for i in 1..=count {
            let info = log
                .append(BytesMut::from(&batch[..]), &infos, 0)
                .expect("append");
            if i % per_sync == 0 || i == count {
                log.wait_durable(info.last_offset + 1)
                    .await
                    .expect("durable");
            }
        }
        let elapsed = start.elapsed();
        log.close().await.expect("close");
        elapsed
    })
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_append_16KiB");
    group.throughput(Throughput::Bytes(batch_16k().len() as u64));
    group.sample_size(10);
    for per_sync in [1u64, 64] {
        group.bench_function(format!("fdatasync_every_{per_sync}"), |b| {
            b.iter_custom(|iters| append_batches(iters, per_sync))
        });
    }
    group.finish();
}

fn index_lookup(c: &mut Criterion) {
    // A full 1 GiB segment indexed every 4 KiB.
    let mut index = OffsetIndex::default();
    for i in 0..262_144u32 {
        index.push(i * 4, i * 4096);
    }
    let mut probe = 0u32;
    c.bench_function("offset_index_lookup_262144_entries", |b| {
        b.iter(|| {
            probe = probe.wrapping_mul(1_103_515_245).wrapping_add(12_345) % (262_144 * 4);
            index.lookup(black_box(probe))
        })
    });
}

fn request_decode(c: &mut Criterion) {
    // A Produce v9 request for 8 partitions of one 16 KiB batch each, without its size prefix.
    let frame = common::produce_frame("bench", -1, 8, &batch_16k()).slice(SIZE_PREFIX_BYTES..);
    let mut group = c.benchmark_group("decode_request");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("produce_v9_8x16KiB", |b| {
        b.iter_batched(
            || frame.clone(),
            |f| decode_request(black_box(f)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, validation, append, index_lookup, request_decode);
criterion_main!(benches);
