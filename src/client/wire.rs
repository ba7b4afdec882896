//! Framing and one blocking request/response connection.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable};

use super::error::{Error, Result};
use crate::protocol::frame::{self, FrameError};

/// The client id sent in every request header.
pub const CLIENT_ID: &str = "corelog";
/// Largest response frame accepted.
pub const MAX_FRAME: usize = 512 * 1024 * 1024;
/// Connect timeout per address.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read/write timeout of a connection; above the 30 s admin timeouts sent to brokers.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Encodes a complete request frame (size prefix, header, body).
pub fn encode_request<R: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Bytes> {
    frame::encode_request(api, version, correlation_id, CLIENT_ID, body)
        .map_err(|e| Error::Protocol(format!("{e:#}")))
}

/// Reads one size-prefixed frame of at most [`MAX_FRAME`] bytes; the stream ending before it
/// is an I/O error.
pub fn read_frame(stream: &mut impl Read) -> Result<Bytes> {
    match frame::read_frame_blocking(stream, MAX_FRAME) {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Err(Error::Stream(std::io::ErrorKind::UnexpectedEof.into())),
        Err(FrameError::Io(e)) => Err(Error::Stream(e)),
        Err(e) => Err(Error::Protocol(format!("bad response frame: {e}"))),
    }
}

/// Decodes a response frame; returns (correlation id, body).
pub fn decode_response<T: Decodable>(api: ApiKey, version: i16, frame: Bytes) -> Result<(i32, T)> {
    frame::decode_response(api, version, frame).map_err(|e| Error::Protocol(format!("{e:#}")))
}

/// Connects to `addr` (`host:port`), trying every address it resolves to.
pub fn connect(addr: &str) -> Result<TcpStream> {
    let mut last = None;
    let addrs = addr.to_socket_addrs().map_err(|e| Error::io(addr, e))?;
    for sa in addrs {
        match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
            Ok(s) => {
                let setup = s
                    .set_nodelay(true)
                    .and_then(|_| s.set_read_timeout(Some(IO_TIMEOUT)))
                    .and_then(|_| s.set_write_timeout(Some(IO_TIMEOUT)));
                setup.map_err(|e| Error::io(addr, e))?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(Error::io(
        addr,
        last.unwrap_or_else(|| std::io::Error::other("resolved to no address")),
    ))
}

/// A blocking request/response connection.
pub struct Conn {
    pub stream: TcpStream,
    pub addr: String,
    next_corr: i32,
}

impl Conn {
    pub fn connect(addr: &str) -> Result<Conn> {
        Ok(Conn {
            stream: connect(addr)?,
            addr: addr.to_string(),
            next_corr: 1,
        })
    }

    /// Sends one request and waits for its response.
    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        req: &Req,
    ) -> Result<Resp> {
        let corr = self.next_corr;
        self.next_corr = self.next_corr.wrapping_add(1);
        let frame = encode_request(api, version, corr, req)?;
        self.stream
            .write_all(&frame)
            .map_err(|e| Error::io(&self.addr, e))?;
        let resp = read_frame(&mut self.stream).map_err(|e| match e {
            Error::Stream(e) => Error::io(&self.addr, e),
            e => e,
        })?;
        let (got, body) = decode_response(api, version, resp)?;
        if got != corr {
            return Err(Error::Protocol(format!(
                "correlation id mismatch: sent {corr}, got {got}"
            )));
        }
        Ok(body)
    }
}
