//! One request off a connection: its frame read within the connection's limits, then
//! decoded and started. Shared by the request loop (`connection`) and the authentication
//! phase that runs before it (`authenticate`).

use std::rc::Rc;

use bytes::Bytes;
use futures::AsyncRead;
use futures::channel::oneshot;

use super::handlers::{self, PendingReply, Reply};
use super::limits::{self, Activity, ConnectionLimits, ReadError, RequestMemory};
use super::shard::Shard;
use crate::protocol::{self, DecodeError, FrameError};

/// Reads one request frame with its memory. `None` ends the connection: EOF, an I/O error,
/// a length that is negative or over `socket.request.max.bytes` (checked before allocating),
/// or `connections.max.idle.ms` without activity.
pub(super) async fn read_request<'a, S: AsyncRead + Unpin>(
    limits: &'a ConnectionLimits,
    activity: &Activity,
    idle: &mut oneshot::Receiver<()>,
    reader: &mut S,
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
