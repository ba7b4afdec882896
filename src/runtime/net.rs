//! TCP sockets owned by the current executor.

use std::io::{self, IoSlice};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};

/// A listening socket. Binding sets SO_REUSEPORT, so every shard can listen on one address
/// and the kernel spreads connections over them; [`claim_listen_address`] keeps a second
/// broker process off that address.
pub struct TcpListener(glommio::net::TcpListener);

/// Held for as long as the process may listen on an address: see [`claim_listen_address`].
pub struct AddressClaim {
    _socket: UdpSocket,
}

/// Claims `addr` for this process, or fails with "Address already in use" (as Kafka does)
/// when another broker has it. The shards' TCP listeners set SO_REUSEPORT, which lets any
/// process of the same user bind the same address too and silently take a share of its
/// connections, so the TCP bind cannot tell our own shards from a second broker. A UDP socket
/// bound to the same address and port without SO_REUSEADDR/SO_REUSEPORT is exclusive with
/// the same address rules as TCP (a wildcard address conflicts with every specific one), is
/// released by the kernel when the process dies (no lock file to go stale, no TIME_WAIT), and
/// is never read. Port 0 (any free port) has nothing to claim.
pub fn claim_listen_address(addr: SocketAddr) -> io::Result<Option<AddressClaim>> {
    if addr.port() == 0 {
        return Ok(None);
    }
    let socket = UdpSocket::bind(addr)?;
    Ok(Some(AddressClaim { _socket: socket }))
}

/// A connected socket, read and written through `futures`' `AsyncRead` / `AsyncWrite`.
pub struct TcpStream {
    inner: glommio::net::TcpStream,
    /// A write found the socket full and glommio waits for room: it writes next, so its
    /// readiness poll and write timer are settled before a vectored send goes around it.
    write_blocked: bool,
}

impl TcpListener {
    #[inline]
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        Ok(TcpListener(glommio::net::TcpListener::bind(addr)?))
    }

    /// Waits for the next connection; it belongs to this executor.
    #[inline]
    pub async fn accept(&self) -> io::Result<TcpStream> {
        Ok(TcpStream::new(self.0.accept().await?))
    }

    /// The address actually bound (useful after binding port 0).
    #[inline]
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.0.local_addr()?)
    }
}

impl TcpStream {
    fn new(inner: glommio::net::TcpStream) -> Self {
        Self {
            inner,
            write_blocked: false,
        }
    }

    #[inline]
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        Ok(TcpStream::new(
            glommio::net::TcpStream::connect(addr).await?,
        ))
    }

    /// Connects, giving up after `timeout`.
    #[inline]
    pub async fn connect_timeout(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let stream = glommio::net::TcpStream::connect_timeout(addr, timeout).await?;
        Ok(TcpStream::new(stream))
    }

    #[inline]
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        Ok(self.inner.set_nodelay(nodelay)?)
    }

    /// Bounds each write; `None` waits forever.
    #[inline]
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        Ok(self.inner.set_write_timeout(timeout)?)
    }

    #[inline]
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.inner.peer_addr()?)
    }
}

impl AsyncRead for TcpStream {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpStream {
    #[inline]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    /// One `sendmsg` of all `bufs` (up to `IOV_MAX`) while the socket has room; glommio's
    /// `TcpStream` has no vectored write, so when the socket is full the first buffer goes
    /// through glommio's write, which waits for room (and its write timeout).
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !self.write_blocked {
            match send_vectored_now(self.inner.as_raw_fd(), bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.write_blocked = true,
                done => return Poll::Ready(done),
            }
        }
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        let written = Pin::new(&mut self.inner).poll_write(cx, first);
        if written.is_ready() {
            self.write_blocked = false;
        }
        written
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    #[inline]
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// The most buffers one `sendmsg` takes (Linux's `UIO_MAXIOV`).
pub const MAX_IOVECS: usize = 1024;

/// A non-blocking `sendmsg` of `bufs` (the first [`MAX_IOVECS`]); `WouldBlock` when the
/// socket is full. MSG_NOSIGNAL: a closed peer is an error, not a SIGPIPE.
fn send_vectored_now(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let bufs = &bufs[..bufs.len().min(MAX_IOVECS)];
    // SAFETY: zeroed is a valid msghdr (no address, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is ABI-compatible with `iovec` on Unix (std's guarantee); sendmsg only
    // reads the buffers.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    loop {
        // SAFETY: `msg` points at `bufs.len()` valid iovecs that outlive the call, and `fd`
        // is this stream's open socket.
        let sent = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
