//! Framing and one blocking request/response connection.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::error::{Error, Result};

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
) -> Result<Vec<u8>> {
    let protocol = |e: anyhow::Error| Error::Protocol(format!("encoding {api:?} v{version}: {e}"));
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let mut buf = BytesMut::with_capacity(body.compute_size(version).map_err(protocol)? + 64);
    buf.extend_from_slice(&[0, 0, 0, 0]);
    header
        .encode(&mut buf, api.request_header_version(version))
        .map_err(protocol)?;
    body.encode(&mut buf, version).map_err(protocol)?;
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.to_vec())
}

/// Reads one size-prefixed frame.
pub fn read_frame(stream: &mut impl Read) -> Result<Bytes> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = i32::from_be_bytes(len);
    if len < 0 || len as usize > MAX_FRAME {
        return Err(Error::Protocol(format!("bad response frame length {len}")));
    }
    let mut buf = vec![0u8; len as usize];
    stream.read_exact(&mut buf)?;
    Ok(Bytes::from(buf))
}

/// Decodes a response frame; returns (correlation id, body).
pub fn decode_response<T: Decodable>(
    api: ApiKey,
    version: i16,
    mut frame: Bytes,
) -> Result<(i32, T)> {
    let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))
        .map_err(|e| Error::Protocol(format!("decoding {api:?} v{version} header: {e}")))?;
    let body = T::decode(&mut frame, version)
        .map_err(|e| Error::Protocol(format!("decoding {api:?} v{version} response: {e}")))?;
    Ok((header.correlation_id, body))
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
