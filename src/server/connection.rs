//! One client connection: read frames, dispatch them in order, write responses in order.
//!
//! The reader dispatches each request before reading the next, so requests take effect in
//! the order they were sent (a produce's batches are appended in order). Only the waiting
//! part of a request (a produce's fdatasync) overlaps with later requests; its response is
//! queued as a future, and the writer awaits those futures in request order.

use std::rc::Rc;

use bytes::Bytes;
use futures::channel::oneshot;
use futures::{AsyncReadExt, AsyncWriteExt};

use super::handlers::{self, PendingReply, Reply};
use super::limits::{self, Activity, ConnectionLimits, ConnectionSlot, ReadError, RequestMemory};
use super::shard::Shard;
use crate::protocol::{self, DecodeError, FrameError};
use crate::runtime::{LocalSender, TcpListener, TcpStream, local_bounded, spawn_local};

/// Requests of one connection whose responses may be pending at once.
const IN_FLIGHT_PER_CONNECTION: usize = 64;

pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let limits = Rc::new(ConnectionLimits::new(
        &shard.settings,
        shard.id,
        shard.count,
    ));
    loop {
        match listener.accept().await {
            Ok(stream) => {
                // Closed at once (dropped) when over a connection limit.
                let Ok(ip) = stream.peer_addr().map(|a| a.ip()) else {
                    continue;
                };
                let Ok(slot) = limits.admit(ip) else {
                    continue;
                };
                let (shard, limits) = (shard.clone(), limits.clone());
                spawn_local(async move {
                    serve(shard, &limits, &slot, stream).await;
                })
                .detach();
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                crate::runtime::delay(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve(
    shard: Rc<Shard>,
    limits: &ConnectionLimits,
    slot: &ConnectionSlot,
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
    );
    let (mut reader, mut writer) = stream.split();
    let (queue, replies) = local_bounded::<PendingReply>(IN_FLIGHT_PER_CONNECTION);
    let activity = Activity::new();
    let (idle_tx, mut idle) = oneshot::channel();
    let _idle_watch = spawn_local(limits::watch_idle(
        activity.clone(),
        limits.idle_max(slot),
        idle_tx,
    ));
    let writer_activity = activity.clone();
    let writer_task = spawn_local(async move {
        while let Some(pending) = replies.recv().await {
            // A response's memory is given back once it is written (`_held` dropped).
            let (bytes, close, _held) = match pending.await {
                Reply::Send(b) => (Some(b), false, None),
                Reply::SendHolding(b, held) => (Some(b), false, Some(held)),
                Reply::Nothing => (None, false, None),
                Reply::SendAndClose(b) => (Some(b), true, None),
                Reply::Close => (None, true, None),
            };
            if let Some(b) = bytes
                && writer.write_all(&b).await.is_err()
            {
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
    let mut must_name_broker = slot.over_limit();
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

async fn send(queue: &LocalSender<PendingReply>, pending: PendingReply) -> bool {
    queue.send(pending).await.is_ok()
}

/// Reads one request frame with its memory. `None` ends the connection: EOF, an I/O error,
/// a length that is negative or over `socket.request.max.bytes` (checked before allocating),
/// or `connections.max.idle.ms` without activity.
async fn read_request<'a>(
    limits: &'a ConnectionLimits,
    activity: &Activity,
    idle: &mut oneshot::Receiver<()>,
    reader: &mut futures::io::ReadHalf<TcpStream>,
    max_frame: usize,
) -> Option<(Bytes, RequestMemory<'a>)> {
    match limits::read_request(limits, activity, idle, reader, max_frame).await {
        Ok(frame) => frame,
        Err(ReadError::Frame(e @ (FrameError::NegativeLength(_) | FrameError::TooLong { .. }))) => {
            tracing::warn!(max_frame, "{e}; closing connection");
            None
        }
        Err(e) => {
            tracing::debug!("reading a request: {e}; closing connection");
            None
        }
    }
}

/// Decodes and starts one request. Returns its pending reply and whether to keep reading.
pub(super) async fn dispatch(
    shard: &Rc<Shard>,
    frame: Bytes,
    peer: &handlers::Peer,
) -> (PendingReply, bool) {
    match protocol::decode_request(frame) {
        Ok(request) => (handlers::dispatch(shard, request, peer).await, true),
        Err(DecodeError::UnsupportedVersion {
            api_key,
            version,
            correlation_id,
        }) => {
            tracing::debug!(?api_key, version, "unsupported version");
            let bytes = protocol::unsupported_version_response(api_key, correlation_id);
            // ApiVersions at a newer version is how clients probe: they retry lower.
            let keep = api_key == kafka_protocol::messages::ApiKey::ApiVersions;
            let reply = if keep {
                Reply::Send(bytes)
            } else {
                Reply::SendAndClose(bytes)
            };
            (Box::pin(async move { reply }), keep)
        }
        Err(e) => {
            tracing::warn!("closing connection on undecodable request: {e:?}");
            (Box::pin(async { Reply::Close }), false)
        }
    }
}
