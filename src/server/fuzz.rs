//! In-process fuzzer over request decoding and the handlers (issue 10, "Also"): mutated
//! requests of every served API go through the path a connection uses (decode, then
//! dispatch) against a real shard on this thread, without a network. Each must get a
//! well-formed response (a frame whose correlation id is the request's and whose body
//! decodes at the request's version) or a close, and nothing may panic. Produce payloads
//! also go through the client batch validation, which the handler reaches only for a
//! partition it leads.
//!
//! `cargo test --release --lib server::fuzz` runs a fixed regression seed and a fresh one
//! (printed); `CORELOG_FUZZ_SEED=<seed>` replays one, `CORELOG_FUZZ_CASES=<n>` runs longer.

use std::future::Future;
use std::io::Write;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use futures::channel::oneshot;
use kafka_protocol::messages::{ApiKey, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Decodable;

use super::handlers::{Peer, Reply};
use super::request;
use super::shard::Shard;
use crate::cluster::commands::{CommandOutcome, MetadataCommand};
use crate::cluster::limits::PartitionLimits;
use crate::cluster::quorum::MetadataImage;
use crate::cluster::topics::NewTopic;
use crate::cluster::{BrokerInfo, ClusterMetadata};
use crate::config::BrokerConfig;
use crate::protocol::mutate::{Seed, corpus, mutate};
use crate::protocol::record_batch::validate_produce_batches;
use crate::protocol::{Request, decode_request};
use crate::rng::Rng;
use crate::runtime::{MeshBuilder, block_on};

const REGRESSION_SEED: u64 = 0x00C0_4E10_6F22;
const DEFAULT_CASES: usize = 1500;
/// A handler that neither answers nor closes within this is a failure.
const CASE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

fn env_u64(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    let raw = raw.trim();
    match raw.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => raw.parse().ok(),
    }
}

/// The topics the corpus's requests name: one mutated, one left plain.
pub(super) const TOPICS: [&str; 2] = ["fuzzed", "plain"];

/// A cluster of this broker (node 1, one shard, live) leading the corpus's topics, so
/// requests reach the handlers' real work (appends, reads, offsets), not only their
/// unknown-topic answers.
pub(super) fn image_with_topics() -> MetadataImage {
    let mut metadata = ClusterMetadata::new("fuzz".into());
    metadata.apply(&MetadataCommand::RegisterBroker(BrokerInfo {
        id: 1,
        host: "127.0.0.1".into(),
        port: 9092,
        shards: 1,
        incarnation: 1,
        fenced: false,
        listeners: Vec::new(),
    }));
    let topics: Vec<NewTopic> = TOPICS
        .iter()
        .map(|name| NewTopic {
            name: (*name).into(),
            partitions: 1,
            replication_factor: 1,
            assignment: None,
            configs: vec![],
        })
        .collect();
    let created = metadata.apply(&MetadataCommand::CreateTopics {
        ids: topics.iter().map(|_| uuid::Uuid::new_v4()).collect(),
        topics,
        placement_seed: 1,
        limits: PartitionLimits::default(),
    });
    assert!(matches!(created, CommandOutcome::Topics(r) if r.iter().all(Result::is_ok)));
    MetadataImage {
        metadata,
        offset: 2,
        controller_id: -1,
    }
}

/// Runs `test` against a fresh single-shard broker (no controller, no listener) on this
/// thread.
fn with_shard<F, Fut>(test: F)
where
    F: FnOnce(Rc<Shard>, Peer) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    with_configured_shard(|_| {}, image_with_topics(), test);
}

/// [`with_shard`] with its configuration changed by `configure` and its metadata `image`.
pub(super) fn with_configured_shard<F, Fut>(
    configure: impl FnOnce(&mut BrokerConfig),
    image: MetadataImage,
    test: F,
) where
    F: FnOnce(Rc<Shard>, Peer) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().to_path_buf();
    let mut config = BrokerConfig::new("127.0.0.1:0".parse().expect("address"), data_dir);
    configure(&mut config);
    block_on(async move {
        let (senders, _receivers) = MeshBuilder::full(1, 16).join().await.expect("mesh");
        let (ready, _) = oneshot::channel();
        let shard = Shard::new(config, senders, None, ready, None);
        shard.apply_metadata(Arc::new(image)).await;
        let listener = Rc::new(shard.settings.listeners.bound[0].clone());
        test(shard.clone(), Peer::new("/127.0.0.1".into(), listener)).await;
        shard.stop();
    });
}

/// Runs `cases` mutated requests from `seed` through a fresh single-shard broker.
fn run(seed: u64, cases: usize) {
    // Straight to stderr, past the test harness's capture: every run's log names its seed.
    let _ = writeln!(
        std::io::stderr(),
        "fuzz: seed {seed:#x}, {cases} cases (replay with CORELOG_FUZZ_SEED={seed:#x})"
    );
    with_shard(move |shard, peer| async move {
        let seeds = corpus(TOPICS[0]);
        let mut rng = Rng::new(seed);
        for case in 0..cases {
            let original = &seeds[rng.index(seeds.len())];
            let bytes = mutate(&mut rng, &original.bytes, &seeds);
            let what = format!("case {case} ({:?} v{})", original.api_key, original.version);
            check_case(&shard, &peer, Bytes::from(bytes), &what).await;
        }
    });
}

/// One request through decode and dispatch; panics (with `what`) on a malformed answer.
async fn check_case(shard: &Rc<Shard>, peer: &Peer, frame: Bytes, what: &str) {
    if let Ok(request) = decode_request(frame.clone()) {
        check_produce_payloads(&request);
        if long_poll(&request) {
            return;
        }
    }
    let answer = async {
        let (pending, _keep_reading) = request::dispatch(shard, frame.clone(), peer).await;
        pending.await
    };
    let reply = futures::select_biased! {
        reply = futures::FutureExt::fuse(answer) => reply,
        () = futures::FutureExt::fuse(crate::runtime::delay(CASE_DEADLINE)) => {
            panic!("{what}: no answer within {CASE_DEADLINE:?}: {frame:?}")
        }
    };
    let request = decode_request(frame.clone());
    match reply {
        Reply::Send(_) | Reply::SendHolding(..) | Reply::SendAndClose(_) => {
            let bytes = reply.written();
            if let Err(e) = well_formed(&request, bytes.clone(), &frame) {
                panic!("{what}: {e}\nrequest {frame:?}\nresponse {bytes:?}");
            }
        }
        Reply::Close => {}
        Reply::Nothing => assert!(
            matches!(&request, Ok(r) if r.api_key == ApiKey::Produce),
            "{what}: no response to a request other than an acks=0 produce"
        ),
    }
}

/// A Fetch may wait up to its `max_wait_ms` for data, as in Kafka: one that asks for more
/// than the case deadline allows is decoded but not dispatched.
fn long_poll(request: &Request) -> bool {
    let max_wait = CASE_DEADLINE.as_millis() as i32 / 2;
    matches!(&request.body, kafka_protocol::messages::RequestKind::Fetch(f) if f.max_wait_ms > max_wait)
}

/// The client batch validation of every partition of a produce (never panics, whatever the
/// bytes).
fn check_produce_payloads(request: &Request) {
    if let kafka_protocol::messages::RequestKind::Produce(p) = &request.body {
        for records in p
            .topic_data
            .iter()
            .flat_map(|t| &t.partition_data)
            .filter_map(|p| p.records.as_deref())
        {
            let _ = validate_produce_batches(records, 16 << 20);
        }
    }
}

/// A response frame: length prefix, header with the request's correlation id, and a body
/// that decodes, in full, at the request's version (for an unsupported version: the
/// ApiVersions-style error answer, header v0).
fn well_formed(
    request: &Result<Request, crate::protocol::DecodeError>,
    mut bytes: Bytes,
    frame: &Bytes,
) -> Result<Option<ResponseKind>, String> {
    if bytes.len() < 8 || bytes.get_i32() as usize != bytes.len() {
        return Err("bad length prefix".into());
    }
    let correlation_id = frame
        .get(4..8)
        .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    let (api_key, version) = match request {
        Ok(r) => (r.api_key, r.version()),
        // Answered UNSUPPORTED_VERSION: only the header and error code are promised.
        Err(_) => {
            let header = ResponseHeader::decode(&mut bytes, 0).map_err(|e| e.to_string())?;
            return match Some(header.correlation_id) == correlation_id {
                true => Ok(None),
                false => Err("wrong correlation id".into()),
            };
        }
    };
    let header_version = match api_key {
        ApiKey::ApiVersions => 0,
        _ => api_key.response_header_version(version),
    };
    let header = ResponseHeader::decode(&mut bytes, header_version).map_err(|e| e.to_string())?;
    if Some(header.correlation_id) != correlation_id {
        return Err("wrong correlation id".into());
    }
    let body =
        ResponseKind::decode(api_key, &mut bytes, version).map_err(|e| format!("body: {e}"))?;
    if bytes.has_remaining() {
        return Err(format!("{} bytes after the body", bytes.remaining()));
    }
    Ok(Some(body))
}

#[test]
fn regression_seed() {
    run(
        REGRESSION_SEED,
        env_u64("CORELOG_FUZZ_CASES").map_or(DEFAULT_CASES, |n| n as usize),
    );
}

#[test]
fn fresh_or_replayed_seed() {
    let seed = env_u64("CORELOG_FUZZ_SEED").unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        now ^ u64::from(std::process::id()).rotate_left(32)
    });
    run(
        seed,
        env_u64("CORELOG_FUZZ_CASES").map_or(DEFAULT_CASES, |n| n as usize),
    );
}

/// The corpus itself, unmutated, gets well-formed answers: the checker is not vacuous.
#[test]
fn unmutated_corpus_is_answered() {
    with_shard(|shard, peer| async move {
        for Seed {
            api_key,
            version,
            bytes,
        } in corpus(TOPICS[1])
        {
            let (pending, keep) = request::dispatch(&shard, bytes.clone(), &peer).await;
            assert!(keep, "{api_key:?} v{version}");
            match pending.await {
                reply @ (Reply::Send(_) | Reply::SendHolding(..)) => {
                    let answer = reply.written();
                    let request = decode_request(bytes.clone());
                    let body = well_formed(&request, answer, &bytes)
                        .unwrap_or_else(|e| panic!("{api_key:?} v{version}: {e}"));
                    // The shard leads the topic: a produce is appended, a fetch served.
                    let errors: Vec<i16> = match body {
                        Some(ResponseKind::Produce(r)) => r
                            .responses
                            .iter()
                            .flat_map(|t| &t.partition_responses)
                            .map(|p| p.error_code)
                            .collect(),
                        Some(ResponseKind::Fetch(r)) => r
                            .responses
                            .iter()
                            .flat_map(|t| &t.partitions)
                            .map(|p| p.error_code)
                            .collect(),
                        _ => vec![],
                    };
                    assert!(
                        errors.iter().all(|&e| e == 0),
                        "{api_key:?} v{version}: {errors:?}"
                    );
                }
                _ => panic!("{api_key:?} v{version}: not answered"),
            }
        }
    });
}
