//! TCP sockets owned by the current executor.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};

/// A listening socket. Binding sets SO_REUSEPORT, so every shard can listen on one address
/// and the kernel spreads connections over them.
pub struct TcpListener(glommio::net::TcpListener);

/// A connected socket, read and written through `futures`' `AsyncRead` / `AsyncWrite`.
pub struct TcpStream(glommio::net::TcpStream);

impl TcpListener {
    #[inline]
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        Ok(TcpListener(glommio::net::TcpListener::bind(addr)?))
    }

    /// Waits for the next connection; it belongs to this executor.
    #[inline]
    pub async fn accept(&self) -> io::Result<TcpStream> {
        Ok(TcpStream(self.0.accept().await?))
    }

    /// The address actually bound (useful after binding port 0).
    #[inline]
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.0.local_addr()?)
    }
}

impl TcpStream {
    #[inline]
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        Ok(TcpStream(glommio::net::TcpStream::connect(addr).await?))
    }

    /// Connects, giving up after `timeout`.
    #[inline]
    pub async fn connect_timeout(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let stream = glommio::net::TcpStream::connect_timeout(addr, timeout).await?;
        Ok(TcpStream(stream))
    }

    #[inline]
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        Ok(self.0.set_nodelay(nodelay)?)
    }

    /// Bounds each write; `None` waits forever.
    #[inline]
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        Ok(self.0.set_write_timeout(timeout)?)
    }

    #[inline]
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.0.peer_addr()?)
    }
}

impl AsyncRead for TcpStream {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpStream {
    #[inline]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    #[inline]
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}
