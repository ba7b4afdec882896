//! Hardening tests: process. A shard that panics or fails to start ends the whole process
//! with a non-zero exit and a logged reason, so a supervisor restarts it; before, a dead
//! shard's listener kept accepting connections nobody answered, and a shard failing at start
//! left the others waiting for it forever, deaf to SIGTERM.

use std::time::Duration;

use crate::common::*;

/// The exit code of a broker that halts itself (`server::HALT_EXIT_CODE`).
const HALT_EXIT_CODE: i32 = 70;
/// A halting broker is gone well within this.
const EXIT_DEADLINE: Duration = Duration::from_secs(60);

/// Two shards where the machine has them: the shard that fails is not the one that runs the
/// control plane.
fn shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

#[test]
fn a_shard_panic_ends_the_process() {
    let failing_shard = shards() - 1;
    let mut broker = Broker::launch(
        BrokerOpts::new()
            .cores(shards())
            .env("CORELOG_FAULT_PANIC_SHARD", failing_shard),
    );
    let status = broker.wait_exit(EXIT_DEADLINE);
    let log = broker.log();
    assert_eq!(status.code(), Some(HALT_EXIT_CODE), "log:\n{log}");
    assert!(
        log.contains("asked this shard to panic") && log.contains("stopping the broker process"),
        "the log names the panic and the halt:\n{log}"
    );
    assert!(
        !api_versions_ok(broker.addr(), Duration::from_secs(1)),
        "nothing listens on the port of a halted broker"
    );
}

#[test]
fn a_shard_failing_at_start_ends_the_process() {
    let dir = tempfile::tempdir().unwrap();
    // The controller's metadata directory cannot be created: shard 0 fails at start.
    std::fs::write(dir.path().join("cluster-metadata"), b"not a directory").unwrap();
    let mut broker = Broker::launch(BrokerOpts::new().cores(shards()).data_dir(dir.path()));
    let status = broker.wait_exit(EXIT_DEADLINE);
    let log = broker.log();
    assert_eq!(status.code(), Some(HALT_EXIT_CODE), "log:\n{log}");
    assert!(
        log.contains("a shard failed") && log.contains("cluster-metadata"),
        "the log names the failure:\n{log}"
    );
}

/// A second broker on an address in use fails with Kafka's "Address already in use" before
/// it opens any log; before, SO_REUSEPORT let it listen beside the first and take a share of
/// its connections.
#[test]
fn a_second_broker_on_a_used_address_fails() {
    let mut first = Broker::start(BrokerOpts::new().cores(shards()));
    let mut second = Broker::launch_on(BrokerOpts::new().cores(shards()), first.port());
    let status = second.wait_exit(EXIT_DEADLINE);
    let log = second.log();
    assert!(!status.success(), "log:\n{log}");
    assert!(
        log.contains(&format!("cannot listen on {}", first.addr()))
            && log.contains("Address already in use"),
        "the error names the address and the reason:\n{log}"
    );
    first.assert_serving();
}
