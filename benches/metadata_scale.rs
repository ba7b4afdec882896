//! Metadata at scale: what one metadata change costs the controller when the cluster already
//! holds 100,000 partitions (applying a CreateTopics of one 1-partition topic, and building
//! the image every shard then reads), and what answering Metadata for a topic of 10,000
//! partitions costs (building the response and encoding it).
//!
//! `cargo bench --bench metadata_scale`; results in perf/RESULTS.md.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use kafka_protocol::messages::{ApiKey, ResponseKind};
use uuid::Uuid;

use corelog::cluster::commands::{CommandOutcome, MetadataCommand};
use corelog::cluster::limits::{MAX_PARTITIONS_PER_REQUEST, PartitionLimits};
use corelog::cluster::quorum::MetadataImage;
use corelog::cluster::topics::NewTopic;
use corelog::cluster::{BrokerInfo, ClusterMetadata};
use corelog::protocol::codec::encode_response;
use corelog::server::metadata_response;

const BROKERS: i32 = 3;
/// Metadata's newest version, which clients use.
const METADATA_VERSION: i16 = 12;

/// No per-shard limit: the benchmark is about the metadata, not the placement policy.
const UNLIMITED: PartitionLimits = PartitionLimits {
    per_shard: u32::MAX,
};

fn applied(meta: &mut ClusterMetadata, command: MetadataCommand) {
    let outcome = meta.apply(&command);
    assert!(
        outcome.errors().is_empty(),
        "{} refused: {:?}",
        command.kind(),
        outcome.errors()
    );
}

fn create(name: &str, partitions: i32, seed: u64) -> MetadataCommand {
    MetadataCommand::CreateTopics {
        topics: vec![NewTopic {
            name: name.into(),
            partitions,
            replication_factor: 1,
            assignment: None,
            configs: vec![],
        }],
        ids: vec![Uuid::from_u128(u128::from(seed) + 1)],
        placement_seed: seed,
        limits: UNLIMITED,
    }
}

fn brokers() -> ClusterMetadata {
    let mut meta = ClusterMetadata::new("bench".into());
    for id in 1..=BROKERS {
        applied(
            &mut meta,
            MetadataCommand::RegisterBroker(BrokerInfo {
                id,
                host: "127.0.0.1".into(),
                port: 9092,
                shards: 2,
                incarnation: 1,
                fenced: false,
                listeners: Vec::new(),
            }),
        );
    }
    meta
}

/// `topics` topics of `partitions` partitions each, grown 10,000 partitions per command
/// (the most one command may add).
fn cluster(topics: u64, partitions: i32) -> ClusterMetadata {
    let mut meta = brokers();
    let step = MAX_PARTITIONS_PER_REQUEST as i32;
    for t in 0..topics {
        let name = format!("topic-{t:05}");
        applied(&mut meta, create(&name, partitions.min(step), t));
        let mut count = partitions.min(step);
        while count < partitions {
            count = (count + step).min(partitions);
            applied(
                &mut meta,
                MetadataCommand::CreatePartitions {
                    topic: name.clone(),
                    count,
                    placement_seed: t,
                    limits: UNLIMITED,
                },
            );
        }
    }
    meta
}

fn image(metadata: ClusterMetadata) -> MetadataImage {
    MetadataImage {
        metadata,
        offset: 1,
        controller_id: 1,
    }
}

/// One 1-partition topic created onto 100,000 partitions: the command applied, then the
/// image the quorum publishes after it (a copy of the metadata).
fn create_onto_100k(c: &mut Criterion) {
    let mut group = c.benchmark_group("create_1_partition_topic_onto_100k");
    group.sample_size(20);
    for (label, meta) in [
        ("1000_topics_x_100", cluster(1000, 100)),
        ("1_topic_x_100000", cluster(1, 100_000)),
    ] {
        let command = create("new-topic", 1, 99_999);
        group.bench_function(format!("{label}/apply"), |b| {
            b.iter_batched(
                || meta.clone(),
                |mut meta| {
                    let outcome = meta.apply(black_box(&command));
                    assert!(matches!(&outcome, CommandOutcome::Topics(r) if r[0].is_ok()));
                    meta
                },
                BatchSize::LargeInput,
            )
        });
        group.bench_function(format!("{label}/apply_and_image"), |b| {
            b.iter_batched(
                || meta.clone(),
                |mut meta| {
                    meta.apply(black_box(&command));
                    Arc::new(image(meta.clone()))
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// Metadata for one topic of 10,000 partitions (RF 1 over 3 brokers): the response built
/// from the image, then encoded as the connection sends it.
fn metadata_10k(c: &mut Criterion) {
    let meta = image(cluster(1, 10_000));
    let names = Some(vec!["topic-00000".to_string()]);
    let mut group = c.benchmark_group("metadata_response_10k_partitions");
    group.sample_size(20);
    group.bench_function("build", |b| {
        b.iter(|| metadata_response(black_box(&meta), names.clone(), "PLAINTEXT"))
    });
    group.bench_function("build_and_encode", |b| {
        b.iter(|| {
            let response = metadata_response(black_box(&meta), names.clone(), "PLAINTEXT");
            encode_response(
                ApiKey::Metadata,
                METADATA_VERSION,
                1,
                &ResponseKind::Metadata(response),
            )
            .expect("encodes")
        })
    });
    group.finish();
}

criterion_group!(benches, create_onto_100k, metadata_10k);
criterion_main!(benches);
