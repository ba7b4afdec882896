//! The broker's produce path without the network: read a Produce request frame (as a
//! connection does, through `FrameAssembler` and the frame buffer pool), decode it, validate
//! its batches and append them to a `PartitionLog`, with an fdatasync every 64 frames.
//!
//! Besides criterion's time per frame it prints "bytes allocated per byte of records",
//! counted by a global allocator, for the path as it is and for the path as it was before
//! pooled frames and header-only patches (a fresh zeroed buffer per frame, a copy of each
//! partition's records). The O_DIRECT staging copy of the segment write is one more copy
//! per byte by construction, in both.
//!
//! `cargo bench --bench produce_path`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kafka_protocol::messages::RequestKind;

use corelog::protocol::frame::{self, read_frame_blocking};
use corelog::protocol::record_batch::{build_test_batch, validate_produce_batches};
use corelog::protocol::{Request, decode_request};
use corelog::runtime::block_on;
use corelog::storage::{LogConfig, PartitionLog, Records};

mod common;

/// Counts the bytes the process allocates.
struct Counting;

static ALLOCATED: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's layout contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const PARTITIONS: i32 = 6;
const PER_SYNC: u64 = 64;

/// A Produce frame (size prefix included) with one 256 KiB-class batch of 1 KiB records
/// for each of [`PARTITIONS`] partitions, as corelog-perf sends with --batch-bytes 262144.
fn produce_frame() -> (Bytes, usize) {
    let value = vec![0x5a; 1024];
    let records: Vec<(Option<&[u8]>, &[u8])> = (0..250).map(|_| (None, &value[..])).collect();
    let batch = build_test_batch(0, &records, 1_700_000_000_000);
    let frame = common::produce_frame("t", 1, PARTITIONS, &batch);
    (frame, batch.len() * PARTITIONS as usize)
}

/// How the frame's bytes get to the log.
#[derive(Clone, Copy)]
enum Path {
    /// Pooled frame buffer, records appended as slices of it.
    Now,
    /// A fresh zeroed buffer per frame, each partition's records copied (the code before).
    Before,
}

fn read_request(wire: &[u8], path: Path) -> Request {
    let frame = match path {
        Path::Now => read_frame_blocking(&mut &wire[..], usize::MAX)
            .expect("read")
            .expect("a frame"),
        Path::Before => {
            let mut buf = vec![0; wire.len() - frame::SIZE_PREFIX_BYTES];
            buf.copy_from_slice(&wire[frame::SIZE_PREFIX_BYTES..]);
            Bytes::from(buf)
        }
    };
    decode_request(frame).expect("decode")
}

/// Reads, decodes, validates and appends `frames` frames to one log per partition.
async fn produce(logs: &[Rc<PartitionLog>], wire: &[u8], frames: u64, path: Path) {
    for i in 1..=frames {
        let request = read_request(wire, path);
        let frame_bytes = frame::buffer_bytes(request.frame_len);
        let RequestKind::Produce(produce) = request.body else {
            panic!("not a produce");
        };
        let mut ends = Vec::new();
        for p in &produce.topic_data[0].partition_data {
            let records = p.records.clone().expect("records");
            let infos = validate_produce_batches(&records, 1 << 24).expect("valid");
            let records = match path {
                Path::Now => Records::in_frame(records, frame_bytes),
                Path::Before => Records::from(BytesMut::from(&records[..])),
            };
            let log = &logs[p.index as usize];
            let info = log.append(records, &infos, 0).expect("append");
            ends.push((log, info.last_offset + 1));
        }
        if i % PER_SYNC == 0 || i == frames {
            for (log, end) in ends {
                log.wait_durable(end).await.expect("durable");
            }
        }
    }
}

/// Runs `work` on fresh logs (a small tail cache: evicted batches give their frames back,
/// as in a long run), then closes them.
fn with_logs<T: 'static>(work: impl AsyncFnOnce(&[Rc<PartitionLog>], &[u8]) -> T + 'static) -> T {
    block_on(async move {
        let (wire, _) = produce_frame();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            tail_cache_bytes: 4 << 20,
            ..LogConfig::default()
        };
        let mut logs = Vec::new();
        for i in 0..PARTITIONS {
            let path = dir.path().join(i.to_string());
            logs.push(
                PartitionLog::open(&path, config.clone())
                    .await
                    .expect("open"),
            );
        }
        let out = work(&logs, &wire).await;
        for log in logs {
            log.close().await.expect("close");
        }
        out
    })
}

fn run(frames: u64, path: Path) -> Duration {
    with_logs(async move |logs, wire| {
        let start = Instant::now();
        produce(logs, wire, frames, path).await;
        start.elapsed()
    })
}

/// Bytes allocated per byte of records over a steady run (after a warm-up that fills the
/// pool and the tail caches).
fn allocated_per_record_byte(path: Path) -> f64 {
    let (_, record_bytes) = produce_frame();
    let frames = 512;
    let allocated = with_logs(async move |logs, wire| {
        produce(logs, wire, 256, path).await;
        let before = ALLOCATED.load(Ordering::Relaxed);
        produce(logs, wire, frames, path).await;
        ALLOCATED.load(Ordering::Relaxed) - before
    });
    allocated as f64 / (frames as f64 * record_bytes as f64)
}

fn produce_path(c: &mut Criterion) {
    for (name, path) in [("now", Path::Now), ("before", Path::Before)] {
        println!(
            "produce_path/{name}: {:.3} bytes allocated per byte of records",
            allocated_per_record_byte(path)
        );
    }
    let (wire, _) = produce_frame();
    let mut group = c.benchmark_group("produce_path");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.sample_size(10);
    for (name, path) in [("now", Path::Now), ("before", Path::Before)] {
        group.bench_function(name, |b| {
            b.iter_custom(|frames| black_box(run(frames, path)))
        });
    }
    group.finish();
}

criterion_group!(benches, produce_path);
criterion_main!(benches);
