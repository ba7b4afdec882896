//! The broker process: one pinned executor per core (a shard), each accepting Kafka
//! connections on the shared port and owning a slice of the partitions.
//!
//! Architecture invariant: only this module sends work across cores; storage and protocol
//! know nothing about shards.

#[cfg(test)]
mod acl_tests;
mod authenticate;
mod connection;
#[cfg(test)]
mod fuzz;
mod handlers;
mod limits;
mod memory;
mod request;
mod shard;
mod work;

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures::channel::oneshot;

use crate::cluster::quorum::{MetadataImage, Quorum, QuorumConfig, parse_voters};
use crate::config::{BrokerConfig, BrokerSettings};
use crate::runtime::{self, MeshBuilder, Receivers, TcpListener, local_bounded, spawn_local};
use crate::security::listener::{Endpoint, Listeners};
use crate::security::tls;
use limits::ConnectionLimits;
use shard::{Shard, ShardMessage};

/// How a Metadata request is answered from an image (public for `benches/metadata_scale.rs`).
pub use handlers::metadata::response as metadata_response;

/// Messages queued per shard pair before a sender waits.
const MESH_CHANNEL_CAPACITY: usize = 1024;
/// How often a ready shard checks whether the others are.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// How often a shard checks whether a stop signal arrived.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long a shard waits for the controlled shutdown before it closes its logs anyway.
const CONTROLLED_SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Fault injection for tests: the shard with this id panics once it listens, which must end
/// the whole process (`tests/hardening/process.rs`).
const PANIC_SHARD_ENV: &str = "CORELOG_FAULT_PANIC_SHARD";

/// Runs the broker until SIGINT or SIGTERM; returns after every shard flushed its logs.
pub fn run(config: BrokerConfig, cores: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    config.check()?;
    // Before any log is opened: a second broker on these addresses fails at once.
    let _claims = bind_addresses(&config.settings().listeners)?
        .into_iter()
        .map(|(listener, addr)| {
            runtime::claim_listen_address(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({listener}): {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    halt_on_panic();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    // Fail before starting shards on a quorum this node cannot be part of, limits that
    // do not fit the shards or the machine, or TLS files that do not load.
    quorum_config(&config)?;
    let tls = TlsConfigs::load(&config.settings())?;
    let budget = memory::check(&config.settings(), cores, memory::machine_memory())?;
    tracing::info!(cores, "memory budget per shard: {}", budget.per_shard);
    if let Some(warning) = budget.over_machine {
        tracing::warn!("{warning}");
    }
    let mesh = MeshBuilder::<ShardMessage>::full(cores, MESH_CHANNEL_CAPACITY);
    // Shards that recovered their logs for the first live image; none accepts clients
    // before all have, as a Kafka broker opens its sockets after log recovery.
    let recovered = Arc::new(AtomicUsize::new(0));
    let results = runtime::run_on_cores(cores, "corelog-shard", move || {
        let (config, mesh, stop) = (config.clone(), mesh.clone(), stop.clone());
        let (recovered, tls) = (recovered.clone(), tls.clone());
        async move {
            if let Err(e) = run_shard(config, mesh, stop, recovered, tls).await {
                halt(&format!("a shard failed: {e:#}"));
            }
        }
    })
    .map_err(|e| anyhow::anyhow!("cannot start the shard executors: {e}"))?;
    for result in results {
        result.map_err(|e| anyhow::anyhow!("a shard executor failed: {e}"))?;
    }
    Ok(())
}

/// Exit code of a broker that stopped itself on a failure it cannot serve through.
const HALT_EXIT_CODE: i32 = 70;

/// Ends the whole process at once, as Kafka's `Exit.halt` does: one failed shard must not
/// leave the others serving half a broker (its listener accepting connections nobody
/// answers, the rest waiting for it forever). A supervisor restarts the process; the logs
/// recover as after a crash.
pub(crate) fn halt(reason: &str) -> ! {
    tracing::error!("stopping the broker process: {reason}");
    std::process::exit(HALT_EXIT_CODE)
}

/// A panic on any shard halts the process (after the standard report of where it happened):
/// a shard thread that unwound would leave its partitions and connections dead while the
/// process looks alive.
fn halt_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let thread = std::thread::current();
        halt(&format!(
            "thread {} panicked: {info}",
            thread.name().unwrap_or("unnamed")
        ));
    }));
}

async fn run_shard(
    config: BrokerConfig,
    mesh: MeshBuilder<ShardMessage>,
    stop: Arc<AtomicBool>,
    recovered: Arc<AtomicUsize>,
    tls: TlsConfigs,
) -> anyhow::Result<()> {
    let (senders, receivers) = mesh
        .join()
        .await
        .map_err(|_| anyhow::anyhow!("cannot join the shard mesh"))?;
    let (ready_tx, ready_rx) = oneshot::channel();
    let shard = if senders.peer_id() == 0 {
        start_control_plane(config, senders, ready_tx, tls.inter_broker.clone()).await?
    } else {
        Shard::new(config, senders, None, ready_tx, tls.inter_broker.clone())
    };
    serve_mesh(&shard, receivers);
    // Accept clients only once this broker is registered and the shards' logs recovered.
    ready_rx.await?;
    recovered.fetch_add(1, Ordering::SeqCst);
    // A request may route to any shard: wait until every shard has its logs open.
    while recovered.load(Ordering::SeqCst) < shard.count && !stop.load(Ordering::Relaxed) {
        runtime::delay(READY_POLL_INTERVAL).await;
    }
    let limits = Rc::new(ConnectionLimits::new(
        &shard.settings,
        shard.id,
        shard.count,
    ));
    let mut accepts = Vec::new();
    let listeners = bind_addresses(&shard.settings.listeners)?;
    for ((listener, addr), tls) in listeners.into_iter().zip(tls.listeners) {
        let socket = TcpListener::bind(addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({listener}): {e}"))?;
        tracing::info!(shard = shard.id, %listener, "listening");
        let limits = limits.clone();
        let accept = connection::accept_loop(shard.clone(), limits, listener, tls, socket);
        accepts.push(spawn_local(accept));
    }
    spawn_local(shard.replicas.clone().retention_loop()).detach();
    spawn_local(shard.replicas.clone().recovery_point_loop()).detach();
    spawn_local(shard.replicas.clone().shrink_isr_loop()).detach();
    spawn_local(shard.replicas.clone().counters_report_loop()).detach();
    if std::env::var(PANIC_SHARD_ENV).is_ok_and(|id| id == shard.id.to_string()) {
        panic!("{PANIC_SHARD_ENV}={} asked this shard to panic", shard.id);
    }
    while !stop.load(Ordering::Relaxed) {
        runtime::delay(STOP_POLL_INTERVAL).await;
    }
    shard.stop();
    for accept in accepts {
        accept.cancel().await;
    }
    match &shard.controller {
        Some(controller) => controller.shut_down().await,
        None => {
            // Serve open connections until shard 0's controlled shutdown moved leadership away.
            let deadline = std::time::Instant::now() + CONTROLLED_SHUTDOWN_WAIT;
            while shard.metadata().is_live(shard.node_id()) && std::time::Instant::now() < deadline
            {
                runtime::delay(STOP_POLL_INTERVAL).await;
            }
        }
    }
    shard.replicas.close_all().await;
    tracing::info!(shard = shard.id, "stopped");
    Ok(())
}

/// TLS configurations, read once at startup and shared by the shards.
#[derive(Clone)]
struct TlsConfigs {
    /// Per bound listener, in order: the server configuration of a TLS one.
    listeners: Vec<Option<Arc<rustls::ServerConfig>>>,
    /// What replica fetchers connect with when the inter-broker listener is TLS.
    inter_broker: Option<Arc<rustls::ClientConfig>>,
}

impl TlsConfigs {
    fn load(settings: &BrokerSettings) -> anyhow::Result<TlsConfigs> {
        let listeners = &settings.listeners;
        let bound = listeners.bound.iter().zip(&settings.listener_ssl);
        let mut configs = TlsConfigs {
            listeners: Vec::with_capacity(listeners.bound.len()),
            inter_broker: None,
        };
        for (listener, ssl) in bound {
            let server = listener
                .protocol
                .is_tls()
                .then(|| tls::server_config(&listener.name, ssl));
            configs.listeners.push(server.transpose()?);
            if listener.name == listeners.inter_broker && listener.protocol.is_tls() {
                configs.inter_broker = Some(tls::client_config(&listener.name, ssl)?);
            }
        }
        Ok(configs)
    }
}

/// Every bound listener with the address it binds (a host name resolved here).
fn bind_addresses(listeners: &Listeners) -> anyhow::Result<Vec<(Rc<Endpoint>, SocketAddr)>> {
    listeners
        .bound
        .iter()
        .map(|listener| {
            let addr = match listener.bind_address() {
                Some(addr) => Some(addr),
                None => (listener.host.as_str(), listener.port)
                    .to_socket_addrs()
                    .with_context(|| format!("listeners: cannot resolve {listener}"))?
                    .next(),
            };
            let addr = addr.with_context(|| format!("listeners: {listener} has no address"))?;
            Ok((Rc::new(listener.clone()), addr))
        })
        .collect()
}

/// Shard 0: starts this node's controller quorum member, then registers the broker and
/// heartbeats. Every metadata image the quorum applies is pushed to all shards, latest
/// first-come: a slow broadcast is followed by the newest image, not by every one between.
async fn start_control_plane(
    config: BrokerConfig,
    senders: runtime::Senders<ShardMessage>,
    ready: oneshot::Sender<()>,
    inter_broker_tls: Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<Rc<Shard>> {
    let latest: Rc<std::cell::RefCell<Option<Arc<MetadataImage>>>> = Rc::default();
    let (wake, woken) = local_bounded::<()>(1);
    let slot = latest.clone();
    let quorum = Quorum::start(quorum_config(&config)?, move |image| {
        slot.replace(Some(image));
        let _ = wake.try_send(());
    })
    .await?;
    let log_failure = quorum.log_failure();
    spawn_local(async move {
        // Dropped unanswered only when the quorum goes away with the process.
        if let Ok(reason) = log_failure.await {
            halt(&reason);
        }
    })
    .detach();
    let shard = Shard::new(config, senders, Some(quorum), ready, inter_broker_tls);
    let publisher = shard.clone();
    spawn_local(async move {
        while woken.recv().await.is_some() {
            let image = latest.take();
            if let Some(image) = image {
                publisher.broadcast_metadata(image).await;
            }
        }
    })
    .detach();
    if let Some(controller) = shard.controller.clone() {
        let first_users = shard.config.add_scram.clone();
        spawn_local(async move {
            controller.register().await;
            controller.bootstrap_credentials(&first_users).await;
            controller.heartbeat_loop().await;
        })
        .detach();
    }
    Ok(shard)
}

/// The quorum this node votes in: `controller.quorum.voters`, or this node alone.
fn quorum_config(config: &BrokerConfig) -> anyhow::Result<QuorumConfig> {
    let settings = config.settings();
    let node_id = u64::try_from(settings.node_id)?;
    let text = settings.controller_quorum_voters;
    let voters = if text.is_empty() {
        // A quorum of one needs no transport; the address is never bound.
        [(node_id, config.listen)].into_iter().collect()
    } else {
        parse_voters(&text).map_err(|e| anyhow::anyhow!("controller.quorum.voters: {e}"))?
    };
    anyhow::ensure!(
        voters.contains_key(&node_id),
        "node.id {node_id} is not one of controller.quorum.voters ({text}); every broker is a voter"
    );
    Ok(QuorumConfig {
        node_id,
        cluster_id: format!("corelog-{:016x}", fnv1a(voters_key(&voters).as_bytes())),
        voters,
        dir: config.data_dir.join("cluster-metadata"),
        session_timeout: settings.broker_session_timeout,
    })
}

fn voters_key(voters: &std::collections::BTreeMap<u64, std::net::SocketAddr>) -> String {
    voters.keys().map(|id| format!("{id},")).collect()
}

/// FNV-1a: a stable hash, so every voter derives the same cluster id.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// One task per peer shard, handling its messages in arrival order.
fn serve_mesh(shard: &Rc<Shard>, mut receivers: Receivers<ShardMessage>) {
    for (_, receiver) in receivers.streams() {
        let shard = shard.clone();
        spawn_local(async move {
            while let Some(message) = receiver.recv().await {
                shard.handle(message);
            }
        })
        .detach();
    }
}
