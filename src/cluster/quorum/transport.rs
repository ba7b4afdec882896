//! TCP between controller voters (Raft messages), and broker heartbeats to the active
//! controller.
//!
//! Every voter listens on its controller address and accepts any number of inbound
//! connections; it sends over one outbound connection per peer, so messages from A to B flow
//! on A's connection to B. Frames are `[u32 len][u8 kind][payload]` (big endian; `len` counts
//! the kind byte and the payload): kind 1 = a Raft `Message` (protobuf bytes), kind 2 = a
//! heartbeat (`i32 broker_id`, `u64 incarnation`). A frame that is too large or malformed
//! closes its connection.
//!
//! Sending never waits: each peer has a bounded queue drained by its writer task, which
//! connects lazily and reconnects with backoff. Frames are dropped when the queue is full or
//! the peer cannot be reached; Raft retransmits.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
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
const HEARTBEAT_PAYLOAD: usize = 4 + 8 + 8;

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
    inbound: RefCell<HashMap<u64, JoinHandle<()>>>,
    others: RefCell<Vec<JoinHandle<()>>>,
}

/// The voter's network endpoint. Dropping it shuts it down too.
pub struct Transport {
    self_id: u64,
    local_addr: SocketAddr,
    peers: HashMap<u64, Peer>,
    inbox: Rc<LocalSender<Incoming>>,
    tasks: Rc<Tasks>,
}

impl Transport {
    /// Listens on `listen` (this voter's controller address) and delivers everything received
    /// to `inbox`; keeps one lazily connected outbound connection per peer. Must be called
    /// inside an executor of the runtime; spawns its tasks there.
    pub fn start(
        self_id: u64,
        listen: SocketAddr,
        peers: HashMap<u64, SocketAddr>,
        inbox: LocalSender<Incoming>,
    ) -> anyhow::Result<Rc<Transport>> {
        let listener = TcpListener::bind(listen)
            .map_err(|e| anyhow::anyhow!("cannot listen on controller address {listen}: {e}"))?;
        let local_addr = listener.local_addr()?;
        let inbox = Rc::new(inbox);
        let tasks = Rc::new(Tasks::default());

        let accept = spawn_local(accept_loop(
            listener,
            local_addr,
            inbox.clone(),
            tasks.clone(),
        ))
        .detach();
        tasks.others.borrow_mut().push(accept);

        let mut out = HashMap::new();
        for (id, addr) in peers {
            if id == self_id {
                continue;
            }
            let (queue, rx) = local_bounded(PEER_QUEUE_FRAMES);
            let writer = spawn_local(write_loop(id, addr, rx)).detach();
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

    fn deliver_locally(&self, incoming: Incoming) {
        if !self.tasks.stopped.get() && self.inbox.try_send(incoming).is_err() {
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
        for (_, task) in inbound {
            task.cancel();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    local: SocketAddr,
    inbox: Rc<LocalSender<Incoming>>,
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
        let id = tasks.next_inbound.get();
        tasks.next_inbound.set(id + 1);
        let inbox = inbox.clone();
        let conn_tasks = tasks.clone();
        let handle = spawn_local(async move {
            let peer = stream
                .peer_addr()
                .map_or_else(|_| "?".to_string(), |a| a.to_string());
            match read_loop(stream, &inbox).await {
                Ok(()) => tracing::debug!("controller connection from {peer} closed"),
                Err(e) => tracing::warn!("closing controller connection from {peer}: {e}"),
            }
            conn_tasks.inbound.borrow_mut().remove(&id);
        })
        .detach();
        tasks.inbound.borrow_mut().insert(id, handle);
    }
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
}

/// Reads frames until the peer closes (`Ok`) or sends something bad (`Err`).
async fn read_loop(stream: TcpStream, inbox: &LocalSender<Incoming>) -> Result<(), ReadError> {
    let mut stream = futures::io::BufReader::new(stream);
    loop {
        let mut len = [0u8; 4];
        // A close between frames is the normal end of a connection.
        let first = stream.read(&mut len).await?;
        if first == 0 {
            return Ok(());
        }
        stream.read_exact(&mut len[first..]).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_FRAME_BYTES {
            return Err(FrameError::BadLength(len).into());
        }
        // Grows with the bytes that actually arrive, so a forged length costs nothing.
        let mut body = Vec::with_capacity(len.min(64 << 10));
        (&mut stream)
            .take(len as u64)
            .read_to_end(&mut body)
            .await?;
        if body.len() != len {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        let incoming = decode_body(&body)?;
        if inbox.send(incoming).await.is_err() {
            // The receiver is gone: nobody is listening any more.
            return Ok(());
        }
    }
}

/// Drains the peer's queue onto one connection, connecting lazily and reconnecting with
/// backoff. Frames queued while the peer cannot be reached are dropped.
async fn write_loop(peer: u64, addr: SocketAddr, queue: LocalReceiver<Vec<u8>>) {
    let mut backoff = MIN_BACKOFF;
    let mut conn: Option<TcpStream> = None;
    while let Some(first) = queue.recv().await {
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
                    tracing::info!("connected to controller {peer} at {addr}");
                    backoff = MIN_BACKOFF;
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
        let mut batch = first;
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

    /// Waits for the next item, failing the test after a few seconds.
    async fn next(rx: &LocalReceiver<Incoming>) -> Incoming {
        futures::select! {
            got = rx.recv().fuse() => got.expect("inbox closed"),
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
            let a = Transport::start(1, a_addr, HashMap::from([(2, b_addr)]), a_tx).unwrap();
            let b = Transport::start(2, b_addr, HashMap::from([(1, a_addr), (2, b_addr)]), b_tx)
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
            let a = Transport::start(1, a_addr, HashMap::from([(2, b_addr)]), a_tx).unwrap();
            // B is down: the first is dropped when the first connection attempt fails; the
            // later ones are dropped too, unless queued during the backoff that ends after B
            // is up (at most about a second old then; Raft ignores stale terms).
            for term in 1..=5 {
                a.send_raft(msg(1, 2, term));
                delay(Duration::from_millis(60)).await;
            }

            let (b_tx, b_rx) = local_bounded(100);
            let b = Transport::start(2, b_addr, HashMap::from([(1, a_addr)]), b_tx).unwrap();
            // Like Raft, keep sending until something arrives (A may be in its backoff).
            let mut term = 100;
            let got = loop {
                a.send_raft(msg(1, 2, term));
                futures::select! {
                    got = b_rx.recv().fuse() => break got.unwrap(),
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
            let a = Transport::start(1, a_addr, HashMap::from([(2, b_addr)]), a_tx).unwrap();

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
            let b = Transport::start(2, b_addr, HashMap::from([(1, a_addr)]), b_tx).unwrap();
            b.send_raft(msg(2, 1, 3));
            assert_eq!(next(&a_rx).await, Incoming::Raft(msg(2, 1, 3)));
            a.shutdown();
            b.shutdown();
        });
    }
}
