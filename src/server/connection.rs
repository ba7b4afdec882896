//! One client connection: read frames, dispatch them in order, write responses in order.
//!
//! The reader dispatches each request before reading the next, so requests take effect in
//! the order they were sent (a produce's batches are appended in order). Only the waiting
//! part of a request (a produce's fdatasync) overlaps with later requests; its response is
//! queued as a future, and the writer awaits those futures in request order.

use std::io::{self, IoSlice};
use std::rc::Rc;
use std::slice;
use std::sync::Arc;

use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::{self, Either};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::TlsAcceptor;

use super::authenticate;
use super::handlers::{self, PendingReply, Reply};
use super::limits::{self, Activity, ConnectionLimits, ConnectionSlot};
use super::request::{dispatch, read_request};
use super::shard::Shard;
use crate::runtime::{
    LocalSender, MAX_IOVECS, TcpListener, TcpStream, delay, local_bounded, spawn_local,
};
use crate::security::listener::Endpoint;
use crate::security::sasl::Mechanism;
use crate::security::tls;

/// Requests of one connection whose responses may be pending at once.
const IN_FLIGHT_PER_CONNECTION: usize = 64;

/// Accepts connections of one listener until cancelled; `tls` for an SSL or SASL_SSL one.
pub async fn accept_loop(
    shard: Rc<Shard>,
    limits: Rc<ConnectionLimits>,
    listener: Rc<Endpoint>,
    tls: Option<Arc<rustls::ServerConfig>>,
    socket: TcpListener,
) {
    let tls = tls.map(TlsAcceptor::from);
    loop {
        match socket.accept().await {
            Ok(stream) => {
                // Closed at once (dropped) when over a connection limit.
                let Ok(ip) = stream.peer_addr().map(|a| a.ip()) else {
                    continue;
                };
                let Ok(slot) = limits.admit(ip) else {
                    continue;
                };
                let (shard, limits, listener) = (shard.clone(), limits.clone(), listener.clone());
                let tls = tls.clone();
                spawn_local(async move {
                    serve(shard, &limits, &slot, listener, tls, stream).await;
                })
                .detach();
            }
            Err(e) => {
                tracing::warn!(%listener, "accept failed: {e}");
                crate::runtime::delay(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves one connection: its TLS handshake first on a TLS listener.
async fn serve(
    shard: Rc<Shard>,
    limits: &ConnectionLimits,
    slot: &ConnectionSlot,
    listener: Rc<Endpoint>,
    tls: Option<TlsAcceptor>,
    stream: TcpStream,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("set_nodelay: {e}");
    }
    // Kafka shows a member's host as `/address`.
    let peer = handlers::Peer::new(
        stream
            .peer_addr()
            .map_or_else(|_| String::new(), |a| format!("/{}", a.ip())),
        listener,
    );
    let Some(acceptor) = tls else {
        return serve_requests(shard, limits, slot, peer, stream).await;
    };
    // A peer that stalls or sends garbage mid-handshake is closed (dropped) here.
    let timeout = shard.settings.authentication_timeout;
    let handshake = std::pin::pin!(acceptor.accept(stream));
    match future::select(handshake, std::pin::pin!(delay(timeout))).await {
        Either::Left((Ok(stream), _)) => {
            peer.set_principal(tls::principal(stream.get_ref().1));
            tracing::debug!(host = peer.host, principal = %peer.principal(), "TLS connection");
            serve_requests(shard, limits, slot, peer, stream).await;
        }
        Either::Left((Err(e), _)) => tracing::debug!(host = peer.host, "TLS handshake failed: {e}"),
        Either::Right(_) => {
            tracing::debug!(
                host = peer.host,
                "no TLS handshake within {timeout:?}; closing"
            )
        }
    }
}

/// Reads, dispatches and answers requests until the connection ends.
async fn serve_requests<S: AsyncRead + AsyncWrite + Unpin + 'static>(
    shard: Rc<Shard>,
    limits: &ConnectionLimits,
    slot: &ConnectionSlot,
    peer: handlers::Peer,
    stream: S,
) {
    let (mut reader, mut writer) = stream.split();
    let (queue, replies) = local_bounded::<PendingReply>(IN_FLIGHT_PER_CONNECTION);
    let activity = Activity::new();
    let (idle_tx, mut idle) = oneshot::channel();
    let _idle_watch = spawn_local(limits::watch_idle(
        activity.clone(),
        limits.idle_max(slot),
        idle_tx,
    ));
    let mut must_name_broker = slot.over_limit();
    // A SASL listener's connection authenticates before its other requests; PLAINTEXT and
    // SSL connections have nothing more to prove.
    if peer.listener().protocol.is_sasl() {
        let connection = authenticate::Connection {
            limits,
            activity: &activity,
            idle: &mut idle,
            reader: &mut reader,
            writer: &mut writer,
        };
        let mechanisms = sasl_mechanisms(&shard, &peer);
        if !authenticate::authenticate(&shard, &peer, mechanisms, connection).await {
            return;
        }
        // Over a limit, it had to name a registered broker in its ApiVersions.
        if let Some(refusal) = must_name_broker.take()
            && !handlers::named_registered_broker(&shard, &peer)
        {
            limits.log_refusal(refusal, slot.ip());
            return;
        }
    }
    let writer_activity = activity.clone();
    let writer_task = spawn_local(async move {
        while let Some(pending) = replies.recv().await {
            let (written, close) = match pending.await {
                Reply::Send(b) => (write_pieces(&mut writer, slice::from_ref(&b)).await, false),
                // The response's memory is given back once it is written (`held` dropped).
                Reply::SendHolding(pieces, held) => {
                    let written = write_pieces(&mut writer, &pieces).await;
                    drop(held);
                    (written, false)
                }
                Reply::Nothing => (Ok(()), false),
                Reply::SendAndClose(b) => {
                    (write_pieces(&mut writer, slice::from_ref(&b)).await, true)
                }
                Reply::Close => (Ok(()), true),
            };
            if written.is_err() {
                break;
            }
            writer_activity.reply_done();
            if close {
                break;
            }
        }
        let _ = writer.close().await;
    });
    // The property's range is 1..=i32::MAX.
    let max_frame = shard
        .settings
        .socket_request_max_bytes
        .clamp(0, i32::MAX as i64) as usize;
    while let Some((frame, memory)) =
        read_request(limits, &activity, &mut idle, &mut reader, max_frame).await
    {
        if let Some(refusal) = must_name_broker.take()
            && !handlers::names_registered_broker(&shard, &frame, &peer)
        {
            limits.log_refusal(refusal, slot.ip());
            break;
        }
        activity.request_started();
        let (pending, keep_reading) = dispatch(&shard, frame, &peer).await;
        // The request's bytes now live on only where the handler keeps them (appended
        // batches are the tail cache's).
        drop(memory);
        if !send(&queue, pending).await || !keep_reading {
            break;
        }
    }
    drop(queue);
    writer_task.await;
}

/// What the SASL listener of `peer` offers (`listener.name.<n>.sasl.enabled.mechanisms`).
fn sasl_mechanisms<'a>(shard: &'a Shard, peer: &handlers::Peer) -> &'a [Mechanism] {
    let settings = &shard.settings;
    let name = &peer.listener().name;
    let at = settings
        .listeners
        .bound
        .iter()
        .position(|l| &l.name == name);
    // Every connection comes in on a bound listener; were it not found, nothing is offered.
    at.and_then(|at| settings.listener_sasl_mechanisms.get(at))
        .map_or(&[], Vec::as_slice)
}

/// Writes `pieces` in order, as few vectored writes as the socket takes, each resuming
/// where the last one stopped (mid-piece too).
async fn write_pieces<W: AsyncWrite + Unpin>(writer: &mut W, pieces: &[Bytes]) -> io::Result<()> {
    let (mut first, mut at) = (0, 0);
    let mut slices = Vec::with_capacity(pieces.len().min(MAX_IOVECS));
    loop {
        while first < pieces.len() && at == pieces[first].len() {
            (first, at) = (first + 1, 0);
        }
        if first == pieces.len() {
            return Ok(());
        }
        slices.clear();
        slices.push(IoSlice::new(&pieces[first][at..]));
        let rest = pieces[first + 1..].iter().take(MAX_IOVECS - 1);
        slices.extend(rest.map(|p| IoSlice::new(p)));
        let mut written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let step = written.min(pieces[first].len() - at);
            written -= step;
            at += step;
            if at == pieces[first].len() && written > 0 {
                (first, at) = (first + 1, 0);
            }
        }
    }
}

async fn send(queue: &LocalSender<PendingReply>, pending: PendingReply) -> bool {
    queue.send(pending).await.is_ok()
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A socket that takes at most `per_write` bytes per write and is full (pending) every
    /// other poll: the partial writes a busy peer causes.
    struct Trickle {
        per_write: usize,
        written: Vec<u8>,
        vectored_calls: usize,
        full: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            assert!(bufs.len() <= MAX_IOVECS);
            self.full = !self.full;
            if self.full {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.vectored_calls += 1;
            let mut room = self.per_write;
            for b in bufs {
                let n = room.min(b.len());
                self.written.extend_from_slice(&b[..n]);
                room -= n;
            }
            Poll::Ready(Ok(self.per_write - room))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn pieces() -> Vec<Bytes> {
        (0..MAX_IOVECS + 300)
            .map(|i| Bytes::from(vec![(i % 256) as u8; i % 7]))
            .collect()
    }

    #[test]
    fn partial_writes_resume_mid_piece() {
        let pieces = pieces();
        let total: usize = pieces.iter().map(Bytes::len).sum();
        for per_write in [1, 5, 6, 1000, total] {
            let mut socket = Trickle {
                per_write,
                written: Vec::new(),
                vectored_calls: 0,
                full: false,
            };
            futures::executor::block_on(write_pieces(&mut socket, &pieces)).unwrap();
            assert_eq!(
                socket.written,
                pieces.concat(),
                "{per_write} bytes per write"
            );
            // Each write carries as much as the socket takes, within IOV_MAX pieces.
            let most = total.div_ceil(per_write) + pieces.len().div_ceil(MAX_IOVECS);
            assert!(
                socket.vectored_calls <= most,
                "{per_write}: {}",
                socket.vectored_calls
            );
        }
    }

    #[test]
    fn a_socket_that_takes_nothing_is_an_error() {
        let mut socket = Trickle {
            per_write: 0,
            written: Vec::new(),
            vectored_calls: 0,
            full: false,
        };
        let written = futures::executor::block_on(write_pieces(&mut socket, &pieces()));
        assert_eq!(written.unwrap_err().kind(), io::ErrorKind::WriteZero);
    }
}
