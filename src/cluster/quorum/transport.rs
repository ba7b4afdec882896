//! TCP between controller voters (Raft messages), and broker heartbeats to the active
//! controller.
//!
//! Every voter listens on its controller address; it sends over one outbound connection per
//! peer, so messages from A to B flow on A's connection to B. Frames are
//! `[u32 len][u8 kind][payload]` (big endian; `len` counts the kind byte and the payload):
//! kind 3 = the hello (`u16` length and bytes of the cluster id, `u64` node id), the first
//! frame of every connection and only there; kind 1 = a Raft `Message` (protobuf bytes);
//! kind 2 = a heartbeat (`i32 broker_id`, `u64 incarnation`, `u64 metadata_offset`).
//!
//! The port is hostile ground: a connection is served only once its hello, within
//! [`HELLO_TIMEOUT`] and [`MAX_HELLO_BYTES`], names this cluster and a configured voter
//! (at most [`MAX_PENDING_HELLOS`] connections wait for theirs); afterwards every Raft message
//! must come from that voter and every heartbeat be that broker's own. Anything else, a
//! frame that is too large or malformed, or a message the driver refuses
//! ([`super::validate`]), closes the connection.
//!
//! Sending never waits: each peer has a bounded queue drained by its writer task, which
//! connects lazily (saying hello first) and reconnects with backoff. Frames are dropped when
//! the queue is full or the peer cannot be reached; Raft retransmits.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, FutureExt};
use protobuf::Message as _;
use raft::eraftpb::Message;

use crate::runtime::{
    JoinHandle, LocalReceiver, LocalSender, TcpListener, TcpStream, delay, local_bounded,
    spawn_local,
};

/// Identifies an inbound connection, so the driver can close one whose message it refuses.
pub type ConnId = u64;
/// What this voter delivers to itself arrives on no connection.
pub const LOCAL: ConnId = u64::MAX;

/// What a voter receives, and on which connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub conn: ConnId,
    pub incoming: Incoming,
}

/// What a voter receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Raft(Message),
    /// A broker says it is alive (sent to every voter each broker.heartbeat.interval.ms).
    Heartbeat(Heartbeat),
}

/// A broker's heartbeat: who it is, which start of its process, and how far it has applied
/// the metadata log (a fenced broker is unfenced only once it caught up).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heartbeat {
    pub broker_id: i32,
    pub incarnation: u64,
    pub metadata_offset: u64,
}

const KIND_RAFT: u8 = 1;
const KIND_HEARTBEAT: u8 = 2;
const KIND_HELLO: u8 = 3;
const HEARTBEAT_PAYLOAD: usize = 4 + 8 + 8;

/// A connection must have said hello by then, or it is closed.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest hello frame (`len`): a cluster id is a few dozen bytes.
pub const MAX_HELLO_BYTES: usize = 512;
/// Inbound connections that have not said hello yet; more are closed at once. Voters open
/// one connection each (again after a failure), so a handful is plenty.
pub const MAX_PENDING_HELLOS: usize = 16;

/// Largest `len` accepted (Raft snapshots of the metadata are far smaller).
pub const MAX_FRAME_BYTES: usize = 64 << 20;
/// Frames queued per peer before new ones are dropped.
pub const PEER_QUEUE_FRAMES: usize = 4096;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A peer that does not take our bytes for this long is treated as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Queued frames coalesced into one socket write, up to about this many bytes.
const WRITE_BATCH_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame length {0} is outside 1..={MAX_FRAME_BYTES}")]
    BadLength(usize),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("heartbeat payload of {0} bytes, expected {HEARTBEAT_PAYLOAD}")]
    BadHeartbeat(usize),
    #[error("undecodable raft message: {0}")]
    BadMessage(String),
    #[error("bad hello: {0}")]
    BadHello(String),
    #[error("hello from {node} of cluster {cluster:?}: not a voter of this cluster")]
    NotAVoter { node: u64, cluster: String },
    #[error("voter {hello} sent a {what} as {claimed}")]
    Impersonation {
        hello: u64,
        claimed: i64,
        what: &'static str,
    },
}

/// The first frame of a connection: who is on the other end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub cluster_id: String,
    pub node_id: u64,
}

/// Encodes a hello as a whole frame.
pub fn encode_hello(hello: &Hello) -> Vec<u8> {
    let id = hello.cluster_id.as_bytes();
    let mut payload = Vec::with_capacity(2 + id.len() + 8);
    payload.extend_from_slice(&(id.len() as u16).to_be_bytes());
    payload.extend_from_slice(id);
    payload.extend_from_slice(&hello.node_id.to_be_bytes());
    frame(KIND_HELLO, &payload)
}

/// Decodes the body of a hello frame (kind and payload).
pub fn decode_hello(body: &[u8]) -> Result<Hello, FrameError> {
    let bad = |what: &str| FrameError::BadHello(what.to_string());
    let (kind, payload) = body.split_first().ok_or_else(|| bad("empty"))?;
    if *kind != KIND_HELLO {
        return Err(bad(&format!("first frame of kind {kind}")));
    }
    let (len, rest) = payload
        .split_at_checked(2)
        .ok_or_else(|| bad("truncated"))?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let (id, node) = rest.split_at_checked(len).ok_or_else(|| bad("truncated"))?;
    let node: [u8; 8] = node.try_into().map_err(|_| bad("node id"))?;
    let cluster_id = std::str::from_utf8(id).map_err(|_| bad("cluster id not UTF-8"))?;
    Ok(Hello {
        cluster_id: cluster_id.to_string(),
        node_id: u64::from_be_bytes(node),
    })
}

/// `[u32 len][u8 kind][payload]`.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.extend_from_slice(&((1 + payload.len()) as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

/// Encodes a Raft message as a whole frame; `None` if it cannot be encoded or is too large.
pub fn encode_raft(msg: &Message) -> Option<Vec<u8>> {
    match msg.write_to_bytes() {
        Ok(payload) if payload.len() < MAX_FRAME_BYTES => Some(frame(KIND_RAFT, &payload)),
        Ok(payload) => {
            tracing::warn!(
                "dropping a {:?} to {} of {} bytes: over the frame limit",
                msg.get_msg_type(),
                msg.get_to(),
                payload.len()
            );
            None
        }
        Err(e) => {
            tracing::warn!("cannot encode a raft message: {e}");
            None
        }
    }
}

/// Encodes a heartbeat as a whole frame.
pub fn encode_heartbeat(h: Heartbeat) -> Vec<u8> {
    let mut payload = [0u8; HEARTBEAT_PAYLOAD];
    payload[..4].copy_from_slice(&h.broker_id.to_be_bytes());
    payload[4..12].copy_from_slice(&h.incarnation.to_be_bytes());
    payload[12..].copy_from_slice(&h.metadata_offset.to_be_bytes());
    frame(KIND_HEARTBEAT, &payload)
}

/// Decodes the body of a frame (what follows `len`: kind and payload).
pub fn decode_body(body: &[u8]) -> Result<Incoming, FrameError> {
    let (kind, payload) = body.split_first().ok_or(FrameError::BadLength(0))?;
    match *kind {
        KIND_RAFT => Message::parse_from_bytes(payload)
            .map(Incoming::Raft)
            .map_err(|e| FrameError::BadMessage(e.to_string())),
        KIND_HEARTBEAT => {
            let fields: &[u8; HEARTBEAT_PAYLOAD] = payload
                .try_into()
                .map_err(|_| FrameError::BadHeartbeat(payload.len()))?;
            let (id, rest) = fields.split_at(4);
            let (incarnation, offset) = rest.split_at(8);
            let be_u64 = |b: &[u8]| b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x));
            Ok(Incoming::Heartbeat(Heartbeat {
                broker_id: id.iter().fold(0i32, |acc, x| (acc << 8) | i32::from(*x)),
                incarnation: be_u64(incarnation),
                metadata_offset: be_u64(offset),
            }))
        }
        other => Err(FrameError::UnknownKind(other)),
    }
}

struct Peer {
    queue: LocalSender<Vec<u8>>,
}

/// Tasks to cancel at shutdown.
#[derive(Default)]
struct Tasks {
    stopped: Cell<bool>,
    next_inbound: Cell<u64>,
    /// Each inbound connection's task and peer address.
    inbound: RefCell<HashMap<ConnId, (JoinHandle<()>, String)>>,
    /// Inbound connections still waiting for their hello.
    pending_hellos: Cell<usize>,
    others: RefCell<Vec<JoinHandle<()>>>,
}

/// Who may connect: the voters of this cluster.
struct Gate {
    self_id: u64,
    cluster_id: String,
    voters: HashSet<u64>,
}

/// The voter's network endpoint. Dropping it shuts it down too.
pub struct Transport {
    self_id: u64,
    local_addr: SocketAddr,
    peers: HashMap<u64, Peer>,
    inbox: Rc<LocalSender<Received>>,
    tasks: Rc<Tasks>,
}

impl Transport {
    /// Listens on `listen` (this voter's controller address) and delivers what the voters of
    /// `cluster_id` (`peers`) send to `inbox`; keeps one lazily connected outbound connection
    /// per peer. Must be called inside an executor of the runtime; spawns its tasks there.
    pub fn start(
        self_id: u64,
        cluster_id: &str,
        listen: SocketAddr,
        peers: HashMap<u64, SocketAddr>,
        inbox: LocalSender<Received>,
    ) -> anyhow::Result<Rc<Transport>> {
        let listener = TcpListener::bind(listen)
            .map_err(|e| anyhow::anyhow!("cannot listen on controller address {listen}: {e}"))?;
        let local_addr = listener.local_addr()?;
        let inbox = Rc::new(inbox);
        let tasks = Rc::new(Tasks::default());
        let gate = Rc::new(Gate {
            self_id,
            cluster_id: cluster_id.to_string(),
            voters: peers.keys().copied().chain([self_id]).collect(),
        });

        let accept = spawn_local(accept_loop(
            listener,
            local_addr,
            gate,
            inbox.clone(),
            tasks.clone(),
        ))
        .detach();
        tasks.others.borrow_mut().push(accept);

        let hello = Rc::new(encode_hello(&Hello {
            cluster_id: cluster_id.to_string(),
            node_id: self_id,
        }));
        let mut out = HashMap::new();
        for (id, addr) in peers {
            if id == self_id {
                continue;
            }
            let (queue, rx) = local_bounded(PEER_QUEUE_FRAMES);
            let writer = spawn_local(write_loop(id, addr, hello.clone(), rx)).detach();
            tasks.others.borrow_mut().push(writer);
            out.insert(id, Peer { queue });
        }
        tracing::info!(
            "controller {self_id} listening on {local_addr} with {} peers",
            out.len()
        );
        Ok(Rc::new(Transport {
            self_id,
            local_addr,
            peers: out,
            inbox,
            tasks,
        }))
    }

    /// The address actually listened on (useful when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Queues a Raft message to `msg.to`; never waits. Dropped when the peer is unknown, its
    /// queue is full or it is unreachable.
    pub fn send_raft(&self, msg: Message) {
        let to = msg.get_to();
        if to == self.self_id {
            self.deliver_locally(Incoming::Raft(msg));
            return;
        }
        if let Some(frame) = encode_raft(&msg) {
            self.enqueue(to, frame);
        }
    }

    /// Queues a heartbeat for voter `to` (the active controller); never waits. To this voter
    /// itself, it goes straight to the inbox.
    pub fn send_heartbeat(&self, to: u64, heartbeat: Heartbeat) {
        if to == self.self_id {
            self.deliver_locally(Incoming::Heartbeat(heartbeat));
            return;
        }
        self.enqueue(to, encode_heartbeat(heartbeat));
    }

    /// Closes inbound connection `conn` (one that sent a message the driver refused).
    pub fn close(&self, conn: ConnId, reason: &str) {
        let inbound = self.tasks.inbound.borrow_mut().remove(&conn);
        if let Some((task, peer)) = inbound {
            tracing::warn!("closing controller connection from {peer}: {reason}");
            task.cancel();
        }
    }

    fn deliver_locally(&self, incoming: Incoming) {
        let received = Received {
            conn: LOCAL,
            incoming,
        };
        if !self.tasks.stopped.get() && self.inbox.try_send(received).is_err() {
            tracing::debug!("inbox full or closed: dropping a message to self");
        }
    }

    fn enqueue(&self, to: u64, frame: Vec<u8>) {
        if self.tasks.stopped.get() {
            return;
        }
        match self.peers.get(&to) {
            Some(peer) => {
                if peer.queue.try_send(frame).is_err() {
                    tracing::debug!("queue to controller {to} full: dropping a frame");
                }
            }
            None => tracing::warn!("no address for controller {to}: dropping a frame"),
        }
    }

    /// Stops the listener and every connection; later sends are dropped.
    pub fn shutdown(&self) {
        self.tasks.stop();
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.tasks.stop();
    }
}

impl Tasks {
    fn stop(&self) {
        if self.stopped.replace(true) {
            return;
        }
        for task in self.others.borrow_mut().drain(..) {
            task.cancel();
        }
        let inbound: Vec<_> = self.inbound.borrow_mut().drain().collect();
        for (_, (task, _)) in inbound {
            task.cancel();
        }
    }
}

/// Counts a connection as waiting for its hello until dropped (also when its task is
/// cancelled).
struct PendingHello(Rc<Tasks>);

impl PendingHello {
    fn admit(tasks: &Rc<Tasks>) -> Option<Self> {
        let pending = tasks.pending_hellos.get();
        (pending < MAX_PENDING_HELLOS).then(|| {
            tasks.pending_hellos.set(pending + 1);
            PendingHello(tasks.clone())
        })
    }
}

impl Drop for PendingHello {
    fn drop(&mut self) {
        self.0.pending_hellos.set(self.0.pending_hellos.get() - 1);
    }
}

async fn accept_loop(
    listener: TcpListener,
    local: SocketAddr,
    gate: Rc<Gate>,
    inbox: Rc<LocalSender<Received>>,
    tasks: Rc<Tasks>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // e.g. EMFILE: keep the listener, try again shortly.
                tracing::warn!("controller listener {local}: accept failed: {e}");
                delay(MIN_BACKOFF).await;
                continue;
            }
        };
        if tasks.stopped.get() {
            return;
        }
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        let Some(pending) = PendingHello::admit(&tasks) else {
            tracing::warn!(
                "closing controller connection from {peer}: {MAX_PENDING_HELLOS} connections already wait for their hello"
            );
            continue;
        };
        let id = tasks.next_inbound.get();
        tasks.next_inbound.set(id + 1);
        let (gate, inbox, conn_tasks) = (gate.clone(), inbox.clone(), tasks.clone());
        let addr = peer.clone();
        let handle = spawn_local(async move {
            match serve_inbound(stream, id, pending, &gate, &inbox).await {
                Ok(()) => tracing::debug!("controller connection from {addr} closed"),
                Err(e) => tracing::warn!("closing controller connection from {addr}: {e}"),
            }
            conn_tasks.inbound.borrow_mut().remove(&id);
        })
        .detach();
        tasks.inbound.borrow_mut().insert(id, (handle, peer));
    }
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("no hello within {HELLO_TIMEOUT:?}")]
    HelloTimeout,
}

/// Serves one inbound connection: its hello, then its frames until the peer closes (`Ok`)
/// or sends something bad (`Err`).
async fn serve_inbound(
    stream: TcpStream,
    conn: ConnId,
    pending: PendingHello,
    gate: &Gate,
    inbox: &LocalSender<Received>,
) -> Result<(), ReadError> {
    let mut stream = futures::io::BufReader::new(stream);
    let hello = futures::select! {
        body = read_body(&mut stream, MAX_HELLO_BYTES).fuse() => body?,
        _ = delay(HELLO_TIMEOUT).fuse() => return Err(ReadError::HelloTimeout),
    };
    let Some(body) = hello else { return Ok(()) };
    let hello = decode_hello(&body)?;
    if hello.cluster_id != gate.cluster_id
        || hello.node_id == gate.self_id
        || !gate.voters.contains(&hello.node_id)
    {
        return Err(FrameError::NotAVoter {
            node: hello.node_id,
            cluster: hello.cluster_id,
        }
        .into());
    }
    drop(pending);
    let sender = hello.node_id;
    while let Some(body) = read_body(&mut stream, MAX_FRAME_BYTES).await? {
        let incoming = decode_body(&body)?;
        let (claimed, what) = match &incoming {
            Incoming::Raft(m) => (i64::try_from(m.from).unwrap_or(-1), "raft message"),
            Incoming::Heartbeat(h) => (i64::from(h.broker_id), "heartbeat"),
        };
        if claimed != sender as i64 {
            return Err(FrameError::Impersonation {
                hello: sender,
                claimed,
                what,
            }
            .into());
        }
        if inbox.send(Received { conn, incoming }).await.is_err() {
            // The receiver is gone: nobody is listening any more.
            return Ok(());
        }
    }
    Ok(())
}

/// Reads one frame's body (kind and payload) of at most `max` bytes; `None` when the peer
/// closed between frames (the normal end of a connection).
async fn read_body<R: futures::AsyncRead + Unpin>(
    stream: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, ReadError> {
    let mut len = [0u8; 4];
    let first = stream.read(&mut len).await?;
    if first == 0 {
        return Ok(None);
    }
    stream.read_exact(&mut len[first..]).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > max {
        return Err(FrameError::BadLength(len).into());
    }
    // Grows with the bytes that actually arrive, so a forged length costs nothing.
    let mut body = Vec::with_capacity(len.min(64 << 10));
    stream.take(len as u64).read_to_end(&mut body).await?;
    if body.len() != len {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(Some(body))
}

/// Drains the peer's queue onto one connection, connecting lazily (the hello first) and
/// reconnecting with backoff. Frames queued while the peer cannot be reached are dropped.
async fn write_loop(
    peer: u64,
    addr: SocketAddr,
    hello: Rc<Vec<u8>>,
    queue: LocalReceiver<Vec<u8>>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut conn: Option<TcpStream> = None;
    while let Some(first) = queue.recv().await {
        let mut batch = Vec::new();
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
                    tracing::info!("connected to controller {peer} at {addr}");
                    backoff = MIN_BACKOFF;
                    batch.extend_from_slice(&hello);
                    conn.insert(s)
                }
                Err(e) => {
                    let dropped = 1 + drain(&queue);
                    tracing::debug!(
                        "cannot connect to controller {peer} at {addr}: {e}; dropped {dropped} frames, retrying in {backoff:?}"
                    );
                    delay(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        batch.extend_from_slice(&first);
        while batch.len() < WRITE_BATCH_BYTES {
            match queue.recv().now_or_never() {
                Some(Some(frame)) => batch.extend_from_slice(&frame),
                _ => break,
            }
        }
        let written = async {
            stream.write_all(&batch).await?;
            stream.flush().await
        }
        .await;
        if let Err(e) = written {
            tracing::warn!("connection to controller {peer} at {addr} lost: {e}");
            conn = None;
        }
    }
}

/// Drops every frame queued now; returns how many.
fn drain(queue: &LocalReceiver<Vec<u8>>) -> usize {
    let mut n = 0;
    while let Some(Some(_)) = queue.recv().now_or_never() {
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::block_on;
    use raft::eraftpb::{Entry, MessageType};

    fn free_addr() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    fn msg(from: u64, to: u64, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.set_from(from);
        m.set_to(to);
        m.set_term(term);
        let mut e = Entry::default();
        e.set_index(term);
        e.set_data(vec![7u8; 100].into());
        m.set_entries(vec![e].into());
        m
    }

    const CLUSTER: &str = "corelog-test";

    /// Waits for the next item, failing the test after a few seconds.
    async fn next(rx: &LocalReceiver<Received>) -> Incoming {
        futures::select! {
            got = rx.recv().fuse() => got.expect("inbox closed").incoming,
            _ = delay(Duration::from_secs(5)).fuse() => panic!("nothing received in 5 s"),
        }
    }

    fn hb(broker_id: i32, incarnation: u64) -> Heartbeat {
        Heartbeat {
            broker_id,
            incarnation,
            metadata_offset: incarnation.wrapping_mul(3),
        }
    }

    #[test]
    fn frames_round_trip() {
        let m = msg(1, 2, 3);
        let f = encode_raft(&m).unwrap();
        assert_eq!(
            u32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
            f.len() - 4
        );
        assert_eq!(decode_body(&f[4..]), Ok(Incoming::Raft(m)));
        let h = encode_heartbeat(hb(-5, u64::MAX - 1));
        assert_eq!(
            decode_body(&h[4..]),
            Ok(Incoming::Heartbeat(hb(-5, u64::MAX - 1)))
        );
        assert_eq!(decode_body(&[]), Err(FrameError::BadLength(0)));
        assert_eq!(decode_body(&[9, 1, 2]), Err(FrameError::UnknownKind(9)));
        assert_eq!(
            decode_body(&h[4..h.len() - 1]),
            Err(FrameError::BadHeartbeat(19))
        );
        assert_eq!(decode_body(&[2; 22]), Err(FrameError::BadHeartbeat(21)));
        assert!(matches!(
            decode_body(&[1, 0xff, 0xff, 0xff]),
            Err(FrameError::BadMessage(_))
        ));
    }

    #[test]
    fn two_voters_exchange_messages_and_heartbeats() {
        block_on(async {
            let (a_addr, b_addr) = (free_addr(), free_addr());
            let (a_tx, a_rx) = local_bounded(100);
            let (b_tx, b_rx) = local_bounded(100);
            let a =
                Transport::start(1, CLUSTER, a_addr, HashMap::from([(2, b_addr)]), a_tx).unwrap();
            let b = Transport::start(
                2,
                CLUSTER,
                b_addr,
                HashMap::from([(1, a_addr), (2, b_addr)]),
                b_tx,
            )
            .unwrap();
            assert_eq!(a.local_addr(), a_addr);

            // Sent before the first connection exists: the writer connects, then sends.
            for term in 1..=50 {
                a.send_raft(msg(1, 2, term));
            }
            for term in 1..=50 {
                assert_eq!(next(&b_rx).await, Incoming::Raft(msg(1, 2, term)));
            }
            b.send_raft(msg(2, 1, 7));
            b.send_heartbeat(1, hb(2, 42));
            assert_eq!(next(&a_rx).await, Incoming::Raft(msg(2, 1, 7)));
            assert_eq!(next(&a_rx).await, Incoming::Heartbeat(hb(2, 42)));
            a.send_heartbeat(2, hb(1, 9));
            assert_eq!(next(&b_rx).await, Incoming::Heartbeat(hb(1, 9)));
            // To itself: straight to the inbox.
            b.send_heartbeat(2, hb(2, 43));
            assert_eq!(next(&b_rx).await, Incoming::Heartbeat(hb(2, 43)));
            // Unknown peers are dropped, not a panic.
            a.send_raft(msg(1, 99, 1));

            a.shutdown();
            b.shutdown();
            a.send_raft(msg(1, 2, 1));
            // The listeners are gone.
            delay(Duration::from_millis(50)).await;
            assert!(std::net::TcpStream::connect(a_addr).is_err());
        });
    }

    #[test]
    fn a_peer_that_starts_late_gets_later_messages() {
        block_on(async {
            let (a_addr, b_addr) = (free_addr(), free_addr());
            let (a_tx, _a_rx) = local_bounded(100);
            let a =
                Transport::start(1, CLUSTER, a_addr, HashMap::from([(2, b_addr)]), a_tx).unwrap();
            // B is down: the first is dropped when the first connection attempt fails; the
            // later ones are dropped too, unless queued during the backoff that ends after B
            // is up (at most about a second old then; Raft ignores stale terms).
            for term in 1..=5 {
                a.send_raft(msg(1, 2, term));
                delay(Duration::from_millis(60)).await;
            }

            let (b_tx, b_rx) = local_bounded(100);
            let b =
                Transport::start(2, CLUSTER, b_addr, HashMap::from([(1, a_addr)]), b_tx).unwrap();
            // Like Raft, keep sending until something arrives (A may be in its backoff).
            let mut term = 100;
            let got = loop {
                a.send_raft(msg(1, 2, term));
                futures::select! {
                    got = b_rx.recv().fuse() => break got.unwrap().incoming,
                    _ = delay(Duration::from_millis(100)).fuse() => {}
                }
                term += 1;
                assert!(term < 150, "B never received anything");
            };
            let Incoming::Raft(first) = got else {
                panic!("expected a raft message, got {got:?}")
            };
            assert!(
                first.get_term() > 1,
                "sent before any connection: {first:?}"
            );
            // Once connected, everything sent arrives, in order.
            a.send_raft(msg(1, 2, 1000));
            let mut last = first.get_term();
            loop {
                let Incoming::Raft(m) = next(&b_rx).await else {
                    panic!("expected a raft message")
                };
                assert!(m.get_term() > last, "out of order: {m:?} after term {last}");
                last = m.get_term();
                if last == 1000 {
                    break;
                }
            }
            a.shutdown();
            b.shutdown();
        });
    }

    #[test]
    fn garbage_does_not_kill_the_listener() {
        block_on(async {
            let (a_addr, b_addr) = (free_addr(), free_addr());
            let (a_tx, a_rx) = local_bounded(100);
            let a =
                Transport::start(1, CLUSTER, a_addr, HashMap::from([(2, b_addr)]), a_tx).unwrap();

            let bad_frames: [&[u8]; 4] = [
                &[0xff, 0xff, 0xff, 0xff, 1, 2, 3], // too long
                &[0, 0, 0, 0],                      // zero length
                &[0, 0, 0, 3, 9, 9, 9],             // unknown kind
                &[0, 0, 0, 4, 1, 0xff, 0xff, 0xff], // undecodable raft message
            ];
            for bad in bad_frames {
                let mut raw = TcpStream::connect(a_addr).await.unwrap();
                raw.write_all(bad).await.unwrap();
                raw.flush().await.unwrap();
                // The listener closes the connection.
                let mut buf = [0u8; 16];
                let n = futures::select! {
                    n = raw.read(&mut buf).fuse() => n.unwrap_or(0),
                    _ = delay(Duration::from_secs(5)).fuse() => panic!("connection left open"),
                };
                assert_eq!(n, 0);
            }
            // A connection cut in the middle of a frame.
            let mut raw = TcpStream::connect(a_addr).await.unwrap();
            raw.write_all(&[0, 0, 1, 0, 1, 2]).await.unwrap();
            drop(raw);

            // A good peer still gets through.
            let (b_tx, _b_rx) = local_bounded(100);
            let b =
                Transport::start(2, CLUSTER, b_addr, HashMap::from([(1, a_addr)]), b_tx).unwrap();
            b.send_raft(msg(2, 1, 3));
            assert_eq!(next(&a_rx).await, Incoming::Raft(msg(2, 1, 3)));
            a.shutdown();
            b.shutdown();
        });
    }

    /// Connects to `addr` and sends `bytes`.
    async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(bytes).await.unwrap();
        raw.flush().await.unwrap();
        raw
    }

    /// Whether the listener closes `raw` within `within`.
    async fn closed(raw: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 16];
        futures::select! {
            n = raw.read(&mut buf).fuse() => n.unwrap_or(0) == 0,
            _ = delay(within).fuse() => false,
        }
    }

    fn hello(cluster_id: &str, node_id: u64) -> Vec<u8> {
        encode_hello(&Hello {
            cluster_id: cluster_id.into(),
            node_id,
        })
    }

    #[test]
    fn hellos_round_trip_and_bad_ones_are_refused() {
        let h = Hello {
            cluster_id: "corelog-0123".into(),
            node_id: 7,
        };
        assert_eq!(decode_hello(&encode_hello(&h)[4..]), Ok(h));
        for bad in [
            &[][..],
            &[3],
            &[3, 0, 5, b'a'],
            &[3, 0, 0, 1, 2],
            &[1, 0, 0],
        ] {
            assert!(
                matches!(decode_hello(bad), Err(FrameError::BadHello(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn only_voters_of_this_cluster_that_are_who_they_said_get_through() {
        block_on(async {
            let a_addr = free_addr();
            let (a_tx, a_rx) = local_bounded(100);
            let peers = HashMap::from([(2, free_addr()), (3, free_addr())]);
            let a = Transport::start(1, CLUSTER, a_addr, peers, a_tx).unwrap();
            let raft = encode_raft(&msg(2, 1, 3)).unwrap();
            let refused: [Vec<u8>; 6] = [
                [hello("other-cluster", 2), raft.clone()].concat(),
                [hello(CLUSTER, 4), raft.clone()].concat(), // not a voter
                [hello(CLUSTER, 1), raft.clone()].concat(), // this voter itself
                raft.clone(),                               // no hello
                [hello(CLUSTER, 3), raft.clone()].concat(), // from 2 on 3's connection
                [hello(CLUSTER, 3), encode_heartbeat(hb(2, 1))].concat(),
            ];
            for bytes in &refused {
                let mut raw = send_raw(a_addr, bytes).await;
                assert!(closed(&mut raw, Duration::from_secs(5)).await, "{bytes:?}");
            }
            // An oversized hello is refused before its bytes arrive.
            let mut raw = send_raw(a_addr, &((MAX_HELLO_BYTES + 1) as u32).to_be_bytes()).await;
            assert!(closed(&mut raw, Duration::from_secs(5)).await);
            assert!(
                a_rx.recv().now_or_never().is_none(),
                "something got through"
            );

            let good = [hello(CLUSTER, 2), raft, encode_heartbeat(hb(2, 5))].concat();
            let mut raw = send_raw(a_addr, &good).await;
            assert_eq!(next(&a_rx).await, Incoming::Raft(msg(2, 1, 3)));
            assert_eq!(next(&a_rx).await, Incoming::Heartbeat(hb(2, 5)));
            assert!(!closed(&mut raw, Duration::from_millis(200)).await);
            a.shutdown();
        });
    }

    #[test]
    fn silent_connections_are_bounded_and_closed_after_the_hello_timeout() {
        block_on(async {
            let a_addr = free_addr();
            let (a_tx, a_rx) = local_bounded(100);
            let a = Transport::start(1, CLUSTER, a_addr, HashMap::from([(2, free_addr())]), a_tx)
                .unwrap();
            let mut silent = Vec::new();
            for _ in 0..MAX_PENDING_HELLOS {
                silent.push(send_raw(a_addr, &[]).await);
            }
            // One more waits for nobody: closed at once.
            let mut extra = send_raw(a_addr, &[]).await;
            assert!(closed(&mut extra, Duration::from_secs(2)).await);
            // The silent ones are closed once their time is up, and make room again.
            for raw in &mut silent {
                assert!(closed(raw, HELLO_TIMEOUT + Duration::from_secs(5)).await);
            }
            let good = [hello(CLUSTER, 2), encode_heartbeat(hb(2, 5))].concat();
            let _raw = send_raw(a_addr, &good).await;
            assert_eq!(next(&a_rx).await, Incoming::Heartbeat(hb(2, 5)));
            a.shutdown();
        });
    }
}
