//! Multi-broker clusters: every member a controller voter, Metadata views of them.

use std::io::{self};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{
    ApiKey, MetadataRequest, MetadataResponse, ResponseHeader,
    metadata_request::MetadataRequestTopic,
};
use kafka_protocol::protocol::Decodable;

use super::*;

/// Deadline for a cluster (or one restarted member) to be ready.
pub const CLUSTER_READY_DEADLINE: Duration = Duration::from_secs(60);
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;

/// Free 127.0.0.1 ports, distinct from each other (every listener is held until all are
/// picked). They are taken below the kernel's ephemeral range when there is room: a member
/// restarted on its old ports must not find one of them taken as the source port of some
/// outgoing connection (peers keep reconnecting to a dead voter).
pub fn free_ports(n: usize) -> Vec<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(n);
    if ephemeral_low > 12_000 {
        let mut x = u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        let span = u64::from(ephemeral_low - 10_000);
        for _ in 0..1000 {
            if listeners.len() == n {
                break;
            }
            let port = 10_000 + (splitmix64(&mut x) % span) as u16;
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                listeners.push(l);
            }
        }
    }
    while listeners.len() < n {
        listeners.push(TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"));
    }
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Metadata v11 from the broker at `addr` on a fresh connection, without panicking: `topics`
/// `None` asks for every topic. Never auto-creates.
pub fn try_metadata(
    addr: SocketAddr,
    topics: Option<&[&str]>,
    timeout: Duration,
) -> io::Result<MetadataResponse> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let mut c = RawClient::from_stream(stream);
    let mut req = MetadataRequest::default();
    req.topics = topics.map(|ts| {
        ts.iter()
            .map(|t| {
                let mut mt = MetadataRequestTopic::default();
                mt.name = Some(topic_name(t));
                mt
            })
            .collect()
    });
    req.allow_auto_topic_creation = false;
    let corr = c.send_request(ApiKey::Metadata, 11, &req)?;
    let mut resp = c
        .read_frame()?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed"))?;
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let header = ResponseHeader::decode(&mut resp, ApiKey::Metadata.response_header_version(11))
        .map_err(|e| invalid(format!("metadata response header: {e}")))?;
    if header.correlation_id != corr {
        return Err(invalid(format!(
            "correlation id {} != {corr}",
            header.correlation_id
        )));
    }
    MetadataResponse::decode(&mut resp, 11).map_err(|e| invalid(format!("metadata: {e}")))
}

/// The broker ids a Metadata response lists, sorted.
pub fn listed_brokers(md: &MetadataResponse) -> Vec<i32> {
    let mut ids: Vec<i32> = md.brokers.iter().map(|b| b.node_id.0).collect();
    ids.sort_unstable();
    ids
}

/// One partition as Metadata shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionView {
    pub error: i16,
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline: Vec<i32>,
}

/// Topic name -> partitions (by index) of a Metadata response; topics with an error code
/// (e.g. unknown) are left out.
pub fn topic_views(
    md: &MetadataResponse,
) -> std::collections::BTreeMap<String, Vec<PartitionView>> {
    let mut out = std::collections::BTreeMap::new();
    for t in &md.topics {
        if t.error_code != NONE {
            continue;
        }
        let Some(name) = &t.name else { continue };
        let mut parts: Vec<(i32, PartitionView)> = t
            .partitions
            .iter()
            .map(|p| {
                (
                    p.partition_index,
                    PartitionView {
                        error: p.error_code,
                        leader: p.leader_id.0,
                        leader_epoch: p.leader_epoch,
                        replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                        isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                        offline: p.offline_replicas.iter().map(|b| b.0).collect(),
                    },
                )
            })
            .collect();
        parts.sort_by_key(|(i, _)| *i);
        out.insert(
            name.0.to_string(),
            parts.into_iter().map(|(_, v)| v).collect(),
        );
    }
    out
}

#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub brokers: usize,
    pub cores: usize,
    /// `--set`s given to every broker (after node.id and controller.quorum.voters).
    pub sets: Vec<(String, String)>,
    /// Environment variables of every broker (fault injection).
    pub envs: Vec<(String, String)>,
    /// The Kafka (`--listen`) port of each broker; default: free ports picked at start.
    pub kafka_ports: Option<Vec<u16>>,
    /// `--set`s of one broker each (member `i` gets `each[i]`), after `sets`.
    pub each: Vec<Vec<(String, String)>>,
}

impl ClusterOpts {
    pub fn new(brokers: usize) -> Self {
        ClusterOpts {
            brokers,
            cores: 1,
            sets: Vec::new(),
            envs: Vec::new(),
            kafka_ports: None,
            each: Vec::new(),
        }
    }
    pub fn set(mut self, key: &str, value: impl ToString) -> Self {
        self.sets.push((key.to_string(), value.to_string()));
        self
    }
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }
}

/// N brokers, every one a controller voter: member `i` (0-based) has node id `i + 1`.
/// Dropping it kills every member (and prints their log tails when the test is failing).
pub struct Cluster {
    pub brokers: Vec<Broker>,
    pub controller_ports: Vec<u16>,
    pub voters: String,
}

impl Cluster {
    /// Starts `n` brokers with default settings (`--cores 1`) and waits until it is ready.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(ClusterOpts::new(n))
    }

    pub fn start_with(opts: ClusterOpts) -> Cluster {
        let n = opts.brokers;
        let picked = free_ports(2 * n);
        let (free_kafka_ports, controller_ports) = picked.split_at(n);
        let kafka_ports = opts.kafka_ports.as_deref().unwrap_or(free_kafka_ports);
        let voters = controller_ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let brokers = (0..n)
            .map(|i| {
                let mut bo = BrokerOpts::new()
                    .cores(opts.cores)
                    .set("node.id", i + 1)
                    .set("controller.quorum.voters", &voters);
                bo.sets.extend(opts.sets.iter().cloned());
                bo.envs.extend(opts.envs.iter().cloned());
                bo.sets
                    .extend(opts.each.get(i).into_iter().flatten().cloned());
                Broker::unstarted(bo, kafka_ports[i])
            })
            .collect();
        let mut c = Cluster {
            brokers,
            controller_ports: controller_ports.to_vec(),
            voters,
        };
        let start = Instant::now();
        for b in &mut c.brokers {
            b.spawn_nowait();
        }
        c.wait_ready(start, "cluster start");
        c
    }

    pub fn len(&self) -> usize {
        self.brokers.len()
    }

    pub fn node_id(i: usize) -> i32 {
        i as i32 + 1
    }

    pub fn index_of(node_id: i32) -> usize {
        usize::try_from(node_id - 1).expect("node id >= 1")
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.brokers[i].addr()
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.brokers[i].child.is_some()
    }

    /// Indices of the members whose process runs (as far as the harness knows).
    pub fn running(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.is_running(i)).collect()
    }

    /// Node ids of the running members, sorted.
    pub fn running_ids(&self) -> Vec<i32> {
        self.running().into_iter().map(Cluster::node_id).collect()
    }

    /// Comma-separated addresses of the running members.
    pub fn bootstrap(&self) -> String {
        self.running()
            .into_iter()
            .map(|i| self.brokers[i].bootstrap())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Panics (with the log tail) if a member the harness started has exited.
    pub fn assert_running_alive(&mut self) {
        for b in &mut self.brokers {
            if b.child.is_some() {
                b.assert_alive();
            }
        }
    }

    /// Waits until every running member answers ApiVersions and its Metadata lists exactly the
    /// running members and names a running member as the active controller.
    fn wait_ready(&mut self, start: Instant, what: &str) {
        let expected = self.running_ids();
        let mut last: Vec<String> = Vec::new();
        loop {
            last.clear();
            let mut ready = true;
            for i in self.running() {
                self.brokers[i].check_not_exited(what);
                let addr = self.addr(i);
                if !api_versions_ok(addr, Duration::from_secs(5)) {
                    last.push(format!("node {}: no ApiVersions answer", i + 1));
                    ready = false;
                    continue;
                }
                match try_metadata(addr, Some(&[]), Duration::from_secs(5)) {
                    // A restarted member lists the brokers of its persisted metadata at
                    // once; an active controller it knows of means it rejoined the quorum.
                    Ok(md)
                        if listed_brokers(&md) == expected
                            && expected.contains(&md.controller_id.0) => {}
                    Ok(md) => {
                        last.push(format!(
                            "node {}: lists brokers {:?}, controller {}",
                            i + 1,
                            listed_brokers(&md),
                            md.controller_id.0
                        ));
                        ready = false;
                    }
                    Err(e) => {
                        last.push(format!("node {}: Metadata failed: {e}", i + 1));
                        ready = false;
                    }
                }
            }
            if ready {
                eprintln!(
                    "[harness] {what}: brokers {expected:?} ready after {:?}",
                    start.elapsed()
                );
                return;
            }
            if start.elapsed() > CLUSTER_READY_DEADLINE {
                panic!(
                    "[harness] {what}: brokers {expected:?} not ready after {:?}: {last:?}",
                    start.elapsed()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL member `i`.
    pub fn kill9(&mut self, i: usize) {
        eprintln!("[harness] kill -9 node {}", i + 1);
        self.brokers[i].kill9();
    }

    /// SIGTERM member `i`, waiting for it to exit; returns its status.
    pub fn terminate(&mut self, i: usize) -> ExitStatus {
        eprintln!("[harness] terminating node {}", i + 1);
        self.brokers[i].terminate()
    }

    /// Starts member `i` again (same ports and data dir; terminating it first if it runs) and
    /// waits until every running member lists every running member.
    pub fn restart(&mut self, i: usize) {
        if self.is_running(i) {
            let status = self.terminate(i);
            assert!(
                status.success(),
                "clean shutdown of node {} failed: {status}",
                i + 1
            );
        }
        let start = Instant::now();
        self.brokers[i].spawn_nowait();
        self.wait_ready(start, &format!("restart of node {}", i + 1));
    }

    /// Starts the stopped `members` together (a quorum may need several of them) and waits
    /// until every running member lists every running member.
    pub fn start_members(&mut self, members: &[usize]) {
        let start = Instant::now();
        for &i in members {
            self.brokers[i].spawn_nowait();
        }
        self.wait_ready(start, &format!("start of members {members:?}"));
    }

    /// Metadata from member `i` (fresh connection); panics on failure.
    pub fn metadata_from(&self, i: usize, topics: Option<&[&str]>) -> MetadataResponse {
        try_metadata(self.addr(i), topics, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("Metadata from node {}: {e}", i + 1))
    }

    /// Polls Metadata of every running member until `ok` accepts each answer (one call per
    /// member answer); returns the answers by member index. Panics after `deadline`, showing
    /// the last answers.
    pub fn wait_metadata(
        &mut self,
        what: &str,
        deadline: Duration,
        topics: Option<&[&str]>,
        mut ok: impl FnMut(usize, &MetadataResponse) -> bool,
    ) -> Vec<(usize, MetadataResponse)> {
        let start = Instant::now();
        loop {
            let mut answers = Vec::new();
            let mut failures = Vec::new();
            for i in self.running() {
                self.brokers[i].check_not_exited(what);
                match try_metadata(self.addr(i), topics, Duration::from_secs(10)) {
                    Ok(md) => {
                        if !ok(i, &md) {
                            failures.push(format!(
                                "node {}: brokers {:?}, controller {}, topics {:?}",
                                i + 1,
                                listed_brokers(&md),
                                md.controller_id.0,
                                topic_views(&md)
                            ));
                        }
                        answers.push((i, md));
                    }
                    Err(e) => failures.push(format!("node {}: Metadata failed: {e}", i + 1)),
                }
            }
            if failures.is_empty() {
                eprintln!("[harness] {what}: ok after {:?}", start.elapsed());
                return answers;
            }
            if start.elapsed() > deadline {
                let mut shown = failures.join("\n  ");
                if shown.len() > 20_000 {
                    shown.truncate(20_000);
                    shown.push_str("...");
                }
                panic!(
                    "[harness] {what}: not done after {:?}; last answers:\n  {shown}",
                    start.elapsed()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every running member names the same active controller, and returns it.
    pub fn wait_controller(
        &mut self,
        what: &str,
        deadline: Duration,
        ok: impl Fn(i32) -> bool,
    ) -> i32 {
        let answers = self.wait_metadata(what, deadline, Some(&[]), |_, md| {
            md.controller_id.0 >= 0 && ok(md.controller_id.0)
        });
        let ids: Vec<i32> = answers.iter().map(|(_, md)| md.controller_id.0).collect();
        assert!(
            ids.windows(2).all(|w| w[0] == w[1]),
            "{what}: members name different controllers {ids:?}"
        );
        ids[0]
    }

    /// Raw connection to member `i`.
    pub fn raw(&self, i: usize) -> RawClient {
        self.brokers[i].raw()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for (i, b) in self.brokers.drain(..).enumerate() {
            if panicking {
                eprintln!(
                    "===== node {} (kafka port {}, controller port {}) =====",
                    i + 1,
                    b.port,
                    self.controller_ports.get(i).copied().unwrap_or(0)
                );
            }
            drop(b);
        }
    }
}

/// An rdkafka `AsyncRuntime` without tokio: tasks on their own threads, delays on sleeping
/// threads (what rdkafka's `NaiveRuntime` does; that feature is not enabled here).
pub struct ThreadRuntime;

impl rdkafka::util::AsyncRuntime for ThreadRuntime {
    type Delay = futures::future::Map<
        futures::channel::oneshot::Receiver<()>,
        fn(Result<(), futures::channel::oneshot::Canceled>),
    >;

    fn spawn<T>(task: T)
    where
        T: std::future::Future<Output = ()> + Send + 'static,
    {
        std::thread::spawn(|| futures::executor::block_on(task));
    }

    fn delay_for(duration: Duration) -> Self::Delay {
        use futures::FutureExt;
        let (tx, rx) = futures::channel::oneshot::channel();
        std::thread::spawn(move || {
            std::thread::sleep(duration);
            let _ = tx.send(());
        });
        rx.map(|_| ())
    }
}
