//! Channels: the bounded mesh between shards (one channel per ordered pair of executors)
//! and bounded channels between tasks of one executor.

use std::fmt;
use std::io;

use glommio::channels::channel_mesh;
use glommio::channels::local_channel;
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::{GlommioError, ResourceType};

/// Why a message was not sent; the message is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The channel is at capacity (only from `try_send`).
    Full,
    /// The receiving end is gone (on the mesh, also: no such peer).
    Closed,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::Full => "channel full",
            SendError::Closed => "channel closed",
        })
    }
}

impl std::error::Error for SendError {}

/// Keeps glommio's error type out of the signatures: whether the channel was full, else closed.
#[inline]
fn send_error<T>(e: GlommioError<T>) -> SendError {
    match e {
        GlommioError::WouldBlock(ResourceType::Channel(_)) => SendError::Full,
        _ => SendError::Closed,
    }
}

/// Builds the full mesh: `peers` executors, each connected to every other one by a channel
/// of `capacity` messages. Clone it into every executor, then [`join`](MeshBuilder::join).
pub struct MeshBuilder<T: Send>(channel_mesh::MeshBuilder<T, channel_mesh::Full>);

/// This executor's sending ends, one per peer.
pub struct Senders<T: Send>(channel_mesh::Senders<T>);

/// This executor's receiving ends, one per peer.
pub struct Receivers<T: Send>(channel_mesh::Receivers<T>);

/// The receiving end of the channel from one peer.
pub struct MeshReceiver<T: Send>(ConnectedReceiver<T>);

impl<T: Send + 'static> MeshBuilder<T> {
    #[inline]
    pub fn full(peers: usize, capacity: usize) -> Self {
        MeshBuilder(channel_mesh::MeshBuilder::full(peers, capacity))
    }

    /// Joins the mesh from the current executor; resolves once every peer joined.
    #[inline]
    pub async fn join(self) -> io::Result<(Senders<T>, Receivers<T>)> {
        let (senders, receivers) = self.0.join().await?;
        Ok((Senders(senders), Receivers(receivers)))
    }
}

impl<T: Send> Clone for MeshBuilder<T> {
    #[inline]
    fn clone(&self) -> Self {
        MeshBuilder(self.0.clone())
    }
}

impl<T: Send> Senders<T> {
    /// This executor's index in the mesh, from 0.
    #[inline]
    pub fn peer_id(&self) -> usize {
        self.0.peer_id()
    }

    /// How many executors the mesh connects (this one included).
    #[inline]
    pub fn nr_consumers(&self) -> usize {
        self.0.nr_consumers()
    }

    /// Sends to peer `peer`, waiting while its channel is full.
    #[inline]
    pub async fn send_to(&self, peer: usize, message: T) -> Result<(), SendError> {
        self.0.send_to(peer, message).await.map_err(send_error)
    }
}

impl<T: Send> Receivers<T> {
    /// The channels from every other peer, with the peer's index.
    pub fn streams(&mut self) -> Vec<(usize, MeshReceiver<T>)> {
        let streams = self.0.streams().into_iter();
        streams.map(|(peer, r)| (peer, MeshReceiver(r))).collect()
    }
}

impl<T: Send> MeshReceiver<T> {
    /// The next message; `None` once the peer is gone.
    #[inline]
    pub async fn recv(&self) -> Option<T> {
        self.0.recv().await
    }
}

/// Sending end of a bounded channel between tasks of one executor.
pub struct LocalSender<T>(local_channel::LocalSender<T>);

/// Receiving end of a bounded channel between tasks of one executor.
pub struct LocalReceiver<T>(local_channel::LocalReceiver<T>);

/// A channel holding at most `capacity` messages, for tasks of this executor.
#[inline]
pub fn local_bounded<T>(capacity: usize) -> (LocalSender<T>, LocalReceiver<T>) {
    let (tx, rx) = local_channel::new_bounded(capacity);
    (LocalSender(tx), LocalReceiver(rx))
}

impl<T> LocalSender<T> {
    /// Sends, waiting while the channel is full.
    #[inline]
    pub async fn send(&self, message: T) -> Result<(), SendError> {
        self.0.send(message).await.map_err(send_error)
    }

    /// Sends if there is room now.
    #[inline]
    pub fn try_send(&self, message: T) -> Result<(), SendError> {
        self.0.try_send(message).map_err(send_error)
    }
}

impl<T> LocalReceiver<T> {
    /// The next message; `None` once every sender is gone and the channel is empty.
    #[inline]
    pub async fn recv(&self) -> Option<T> {
        self.0.recv().await
    }
}
