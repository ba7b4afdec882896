//! Kafka's framing, the one place that knows it: every request and response is a big-endian
//! i32 size, then that many bytes. Used by the broker's connections, the blocking client and
//! the follower's fetch session.
//!
//! Nothing is allocated on a peer's word alone: the size is checked against the caller's limit
//! before anything is allocated, and a frame's buffer starts at [`INITIAL_BUFFER_BYTES`] (or
//! the frame's size, if smaller); only once the peer filled it does the buffer grow, once,
//! to the frame's size (one copy of the first 64 KiB, none of the rest). A peer that claims
//! 100 MB and sends 10 bytes holds 64 KiB. A caller accounting for memory learns each size
//! from [`FrameAssembler::next_buffer_bytes`] before it is allocated (the broker takes it
//! from `queued.max.request.bytes`, as Kafka takes a request's whole claimed size from it).
//! Buffers come from the thread's [`buffer_pool`] (sizes rounded up to its power-of-two
//! classes, so a frame's buffer is less than twice the frame) and go back to it when the
//! frame's last `Bytes` is dropped.
//!
//! [`FrameAssembler`] is the logic, with no I/O; [`read_frame`] (async, over `futures`' traits)
//! and [`read_frame_blocking`] (over `std::io::Read`) only feed it.

use std::io::{ErrorKind, Read};
use std::ops::ControlFlow;

use anyhow::{Context, ensure};
use bytes::{BufMut, Bytes, BytesMut};
use futures::io::{AsyncRead, AsyncReadExt};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::buffer_pool;

/// The size prefix of every frame: a big-endian i32.
pub const SIZE_PREFIX_BYTES: usize = 4;
/// The most a frame's buffer holds before the frame's bytes start arriving.
pub const INITIAL_BUFFER_BYTES: usize = 64 << 10;

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The reader failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("frame length {0} is negative")]
    NegativeLength(i32),
    #[error("frame length {len} is over the limit of {max_len} bytes")]
    TooLong { len: usize, max_len: usize },
    /// End of stream inside a frame; both counts include the size prefix (`expected` is the
    /// prefix alone when the stream ended inside it).
    #[error("connection closed inside a frame ({received} of {expected} bytes)")]
    Truncated { received: usize, expected: usize },
}

/// One read attempt's result: a frame, a clean end of stream (`None`), or an error.
pub type ReadOutcome = Result<Option<Bytes>, FrameError>;

/// Assembles frames from the bytes a reader delivers. It hands out the buffer the next read
/// fills ([`spare`](Self::spare)), never past the end of the current frame, so a reader
/// never consumes bytes of the next frame; then takes the read's outcome
/// ([`advance`](Self::advance)).
#[derive(Debug)]
pub struct FrameAssembler {
    max_len: usize,
    state: State,
}

#[derive(Debug)]
enum State {
    Prefix {
        bytes: [u8; SIZE_PREFIX_BYTES],
        filled: usize,
    },
    /// Reads may fill `buf` up to `len`; it is replaced by a larger one once full.
    Body {
        buf: Vec<u8>,
        filled: usize,
        len: usize,
    },
}

impl State {
    fn start() -> State {
        State::Prefix {
            bytes: [0; SIZE_PREFIX_BYTES],
            filled: 0,
        }
    }
}

impl FrameAssembler {
    /// Frames longer than `max_len` bytes (size prefix not counted) are refused.
    pub fn new(max_len: usize) -> FrameAssembler {
        FrameAssembler {
            max_len,
            state: State::start(),
        }
    }

    /// The size of the frame buffer once [`spare`](Self::spare) made room for the next read
    /// (0 while the size prefix is read): a caller accounting for memory takes the
    /// difference from its budget before calling it.
    pub fn next_buffer_bytes(&self) -> usize {
        match &self.state {
            State::Prefix { .. } => 0,
            State::Body { buf, filled, len } if *filled == buf.len() => grown_len(buf.len(), *len),
            State::Body { buf, .. } => buf.len(),
        }
    }

    /// Where the next read goes: never empty (a read of 0 bytes means end of stream).
    pub fn spare(&mut self) -> &mut [u8] {
        let spare = match &mut self.state {
            State::Prefix { bytes, filled } => &mut bytes[*filled..],
            State::Body { buf, filled, len } => {
                if *filled == buf.len() {
                    grow(buf, *filled, *len);
                }
                let end = (*len).min(buf.len());
                &mut buf[*filled..end]
            }
        };
        assert!(!spare.is_empty(), "a frame in progress always wants bytes");
        spare
    }

    /// Takes the outcome of one read into [`spare`](Self::spare): `Break` with a whole frame,
    /// a clean end of stream or an error; `Continue` when the frame needs more bytes.
    pub fn advance(&mut self, read: std::io::Result<usize>) -> ControlFlow<ReadOutcome> {
        match read {
            Ok(0) => ControlFlow::Break(self.at_end_of_stream().map(|()| None)),
            Ok(n) => match self.filled(n) {
                Ok(None) => ControlFlow::Continue(()),
                done => ControlFlow::Break(done),
            },
            Err(e) if e.kind() == ErrorKind::Interrupted => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(Err(e.into())),
        }
    }

    /// Records that `n` bytes of the spare area were filled; returns the frame once whole.
    fn filled(&mut self, n: usize) -> ReadOutcome {
        match &mut self.state {
            State::Prefix { bytes, filled } => {
                assert!(
                    *filled + n <= SIZE_PREFIX_BYTES,
                    "read past the size prefix"
                );
                *filled += n;
                if *filled < SIZE_PREFIX_BYTES {
                    return Ok(None);
                }
                let len = checked_len(i32::from_be_bytes(*bytes), self.max_len)?;
                if len == 0 {
                    self.state = State::start();
                    return Ok(Some(Bytes::new()));
                }
                self.state = State::Body {
                    buf: Vec::new(),
                    filled: 0,
                    len,
                };
                Ok(None)
            }
            State::Body { buf, filled, len } => {
                assert!(*filled + n <= buf.len(), "read past the spare area");
                *filled += n;
                if *filled < *len {
                    return Ok(None);
                }
                let frame = buffer_pool::freeze(std::mem::take(buf), *len);
                self.state = State::start();
                Ok(Some(frame))
            }
        }
    }

    /// A clean end between frames, or a truncated one.
    fn at_end_of_stream(&self) -> Result<(), FrameError> {
        let (received, expected) = match &self.state {
            State::Prefix { filled: 0, .. } => return Ok(()),
            State::Prefix { filled, .. } => (*filled, SIZE_PREFIX_BYTES),
            State::Body { filled, len, .. } => {
                (SIZE_PREFIX_BYTES + filled, SIZE_PREFIX_BYTES + len)
            }
        };
        Err(FrameError::Truncated { received, expected })
    }
}

/// The claimed length, if it is within bounds.
fn checked_len(claimed: i32, max_len: usize) -> Result<usize, FrameError> {
    let len = usize::try_from(claimed).map_err(|_| FrameError::NegativeLength(claimed))?;
    if len > max_len {
        return Err(FrameError::TooLong { len, max_len });
    }
    Ok(len)
}

/// Makes room for more of a frame of `len` bytes, `filled` of them in `buf`: the first
/// buffer holds at most [`INITIAL_BUFFER_BYTES`], the next one the whole frame
/// ([`buffer_bytes`]). The old buffer goes back to the pool.
fn grow(buf: &mut Vec<u8>, filled: usize, len: usize) {
    let new_len = grown_len(buf.len(), len);
    assert!(new_len > buf.len(), "grow called on a whole frame");
    let mut grown = buffer_pool::take(new_len);
    grown[..filled].copy_from_slice(&buf[..filled]);
    let old = std::mem::replace(buf, grown);
    if !old.is_empty() {
        buffer_pool::give(old);
    }
}

/// The size a full buffer of `current` bytes grows to, for a frame of `len` bytes. Growing
/// in steps (8-fold, before) copied a third of a 1.5 MB produce request again; the peer
/// proved it is sending by filling the initial buffer, and the caller accounted the size.
fn grown_len(current: usize, len: usize) -> usize {
    if current == 0 {
        buffer_pool::class_len(INITIAL_BUFFER_BYTES.min(len))
    } else {
        buffer_bytes(len)
    }
}

/// The memory a whole frame of `len` bytes holds once read: its buffer, which its slices
/// keep alive.
pub fn buffer_bytes(len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    buffer_pool::class_len(len)
}

/// Reads one frame of at most `max_len` bytes. `Ok(None)`: the stream ended between frames.
pub async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    max_len: usize,
) -> ReadOutcome {
    let mut assembler = FrameAssembler::new(max_len);
    loop {
        let read = reader.read(assembler.spare()).await;
        if let ControlFlow::Break(outcome) = assembler.advance(read) {
            return outcome;
        }
    }
}

/// [`read_frame`] over a blocking reader.
pub fn read_frame_blocking<R: Read + ?Sized>(reader: &mut R, max_len: usize) -> ReadOutcome {
    let mut assembler = FrameAssembler::new(max_len);
    loop {
        let read = reader.read(assembler.spare());
        if let ControlFlow::Break(outcome) = assembler.advance(read) {
            return outcome;
        }
    }
}

/// Encodes a whole frame: the size prefix, then `size` bytes written by `write`.
pub fn encode_frame(
    size: usize,
    write: impl FnOnce(&mut BytesMut) -> anyhow::Result<()>,
) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(SIZE_PREFIX_BYTES + size);
    buf.put_i32(i32::try_from(size).context("frame too large")?);
    write(&mut buf)?;
    let written = buf.len() - SIZE_PREFIX_BYTES;
    ensure!(
        written == size,
        "frame of {size} bytes came out as {written}"
    );
    Ok(buf.freeze())
}

/// Encodes a request frame: size prefix, request header, body.
pub fn encode_request<R: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: &str,
    body: &R,
) -> anyhow::Result<Bytes> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_owned())));
    let header_version = api.request_header_version(version);
    let encoding = || format!("encoding {api:?} v{version}");
    let size = header.compute_size(header_version).with_context(encoding)?
        + body.compute_size(version).with_context(encoding)?;
    encode_frame(size, |buf| {
        header.encode(buf, header_version)?;
        body.encode(buf, version)
    })
    .with_context(encoding)
}

/// Decodes a response frame (the bytes after the size prefix); returns its correlation id
/// and body.
pub fn decode_response<T: Decodable>(
    api: ApiKey,
    version: i16,
    mut frame: Bytes,
) -> anyhow::Result<(i32, T)> {
    let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))
        .with_context(|| format!("decoding the {api:?} v{version} response header"))?;
    let body = T::decode(&mut frame, version)
        .with_context(|| format!("decoding the {api:?} v{version} response"))?;
    Ok((header.correlation_id, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;
    use std::pin::Pin;
    use std::task::{Context as TaskContext, Poll};

    use futures::executor::block_on;
    use kafka_protocol::messages::{ApiVersionsResponse, MetadataRequest, RequestKind};

    const MAX: usize = 1 << 30;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    /// Delivers `data` in reads of at most `chunk` bytes, after one `Interrupted`; both as a
    /// blocking and as an async reader.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
        interrupted: bool,
    }

    impl Trickle {
        fn new(data: Vec<u8>, chunk: usize) -> Trickle {
            Trickle {
                data,
                at: 0,
                chunk,
                interrupted: false,
            }
        }
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if !std::mem::replace(&mut self.interrupted, true) {
                return Err(ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(self.chunk).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
            buf: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Read::read(self.get_mut(), buf))
        }
    }

    /// Every frame of `data`, read both ways, until the clean end.
    fn read_all(data: &[u8], chunk: usize, max_len: usize) -> Result<Vec<Bytes>, FrameError> {
        let mut blocking = Trickle::new(data.to_vec(), chunk);
        let mut frames = Vec::new();
        while let Some(frame) = read_frame_blocking(&mut blocking, max_len)? {
            frames.push(frame);
        }
        let mut async_reader = Trickle::new(data.to_vec(), chunk);
        let mut async_frames = Vec::new();
        while let Some(frame) = block_on(read_frame(&mut async_reader, max_len))? {
            async_frames.push(frame);
        }
        assert_eq!(frames, async_frames, "the two readers disagree");
        Ok(frames)
    }

    #[test]
    fn frames_split_across_many_small_reads() {
        let first: Vec<u8> = (0..200u8).collect();
        let second: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut data = framed(&first);
        data.extend(framed(&second));
        for chunk in [1, 2, 3, 7, 4096] {
            let frames = read_all(&data, chunk, MAX).unwrap();
            assert_eq!(frames, [first.clone(), second.clone()], "chunk {chunk}");
        }
    }

    #[test]
    fn two_frames_in_one_read_are_neither_lost_nor_mixed() {
        let mut data = framed(b"first frame");
        data.extend(framed(b""));
        data.extend(framed(b"second"));
        let frames = read_all(&data, data.len(), MAX).unwrap();
        assert_eq!(frames, [&b"first frame"[..], b"", b"second"]);
    }

    /// Feeds `bytes` to `assembler` as one read, through its spare area.
    fn feed(assembler: &mut FrameAssembler, bytes: &[u8]) -> ControlFlow<ReadOutcome> {
        let spare = assembler.spare();
        assert!(
            spare.len() >= bytes.len(),
            "{} > {}",
            bytes.len(),
            spare.len()
        );
        spare[..bytes.len()].copy_from_slice(bytes);
        assembler.advance(Ok(bytes.len()))
    }

    fn buffer_len(assembler: &FrameAssembler) -> usize {
        match &assembler.state {
            State::Body { buf, .. } => buf.len(),
            State::Prefix { .. } => 0,
        }
    }

    fn buffer_capacity(assembler: &FrameAssembler) -> usize {
        match &assembler.state {
            State::Body { buf, .. } => buf.capacity(),
            State::Prefix { .. } => 0,
        }
    }

    #[test]
    fn a_claimed_100_mb_frame_holds_only_the_initial_buffer() {
        let claimed: usize = 100 << 20;
        let mut assembler = FrameAssembler::new(MAX);
        assert!(feed(&mut assembler, &(claimed as i32).to_be_bytes()).is_continue());
        assert_eq!(
            buffer_capacity(&assembler),
            0,
            "nothing allocated on the claim"
        );
        assert!(feed(&mut assembler, &[7; 10]).is_continue());
        assert_eq!(buffer_capacity(&assembler), INITIAL_BUFFER_BYTES);
        match assembler.advance(Ok(0)) {
            ControlFlow::Break(Err(FrameError::Truncated { received, expected })) => {
                assert_eq!((received, expected), (14, 4 + claimed));
            }
            other => panic!("expected a truncated frame, got {other:?}"),
        }
    }

    #[test]
    fn the_buffer_grows_once_the_peer_filled_the_first_one() {
        let len = 1_000_000;
        let mut assembler = FrameAssembler::new(MAX);
        assert!(feed(&mut assembler, &(len as i32).to_be_bytes()).is_continue());
        let mut received = 0;
        let frame = loop {
            let n = assembler.spare().len().min(10_000);
            received += n;
            match assembler.advance(Ok(n)) {
                ControlFlow::Continue(()) => {
                    let capacity = buffer_capacity(&assembler);
                    if received <= INITIAL_BUFFER_BYTES {
                        assert_eq!(capacity, INITIAL_BUFFER_BYTES, "before the peer filled it");
                    } else {
                        assert_eq!(capacity, buffer_bytes(len), "grown once, to the frame");
                        assert!(buffer_bytes(len) < 2 * len);
                    }
                }
                ControlFlow::Break(outcome) => break outcome.unwrap().unwrap(),
            }
        };
        assert_eq!(frame.len(), len);
        assert_eq!(received, len);
    }

    #[test]
    fn next_buffer_bytes_foretells_each_growth() {
        let len = 700_000;
        let mut assembler = FrameAssembler::new(MAX);
        assert_eq!(
            assembler.next_buffer_bytes(),
            0,
            "the size prefix needs no buffer"
        );
        assert!(feed(&mut assembler, &(len as i32).to_be_bytes()).is_continue());
        let mut sizes = Vec::new();
        loop {
            let next = assembler.next_buffer_bytes();
            let n = assembler.spare().len();
            assert_eq!(buffer_len(&assembler), next);
            if sizes.last() != Some(&next) {
                sizes.push(next);
            }
            if assembler.advance(Ok(n)).is_break() {
                break;
            }
        }
        assert_eq!(sizes, [INITIAL_BUFFER_BYTES, buffer_bytes(len)]);
    }

    #[test]
    fn a_claimed_frame_grows_only_after_the_first_buffer_is_filled_and_foretold() {
        let claimed: usize = 100 << 20;
        let mut assembler = FrameAssembler::new(MAX);
        assert!(feed(&mut assembler, &(claimed as i32).to_be_bytes()).is_continue());
        assert!(feed(&mut assembler, &[1; INITIAL_BUFFER_BYTES - 1]).is_continue());
        assert_eq!(assembler.next_buffer_bytes(), INITIAL_BUFFER_BYTES);
        assert_eq!(assembler.spare().len(), 1, "one byte short of growing");
        assert!(feed(&mut assembler, &[1]).is_continue());
        assert_eq!(assembler.next_buffer_bytes(), buffer_bytes(claimed));
        assert_eq!(
            buffer_capacity(&assembler),
            INITIAL_BUFFER_BYTES,
            "foretold to the caller before it is allocated"
        );
    }

    #[test]
    fn a_dropped_frame_s_buffer_serves_the_next_frame() {
        let body = vec![5; 300_000];
        let data = framed(&body);
        let read = || read_frame_blocking(&mut &data[..], MAX).unwrap().unwrap();
        let first = read();
        let addr = first.as_ptr();
        let slice = first.slice(10..20);
        drop(first);
        let second = read();
        assert_ne!(
            second.as_ptr(),
            addr,
            "a slice still holds the first buffer"
        );
        let second_addr = second.as_ptr();
        let kept = buffer_pool::kept_bytes();
        drop(slice);
        assert_eq!(buffer_pool::kept_bytes(), kept + buffer_bytes(body.len()));
        drop(second);
        let third = read();
        assert_eq!(
            third.as_ptr(),
            second_addr,
            "the last buffer back is reused first"
        );
        assert_eq!(third, body);
    }

    #[test]
    fn negative_and_over_limit_lengths_are_refused_before_allocating() {
        for claimed in [-1, i32::MIN] {
            let data = claimed.to_be_bytes();
            let e = read_all(&data, 4, MAX).unwrap_err();
            assert!(
                matches!(e, FrameError::NegativeLength(n) if n == claimed),
                "{e}"
            );
        }
        let e = read_all(&framed(&[0; 101]), 3, 100).unwrap_err();
        assert!(
            matches!(
                e,
                FrameError::TooLong {
                    len: 101,
                    max_len: 100
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("frame length 101"), "{e}");
        // The claim alone is refused: no body bytes needed.
        let e = read_all(&i32::MAX.to_be_bytes(), 4, 100).unwrap_err();
        assert!(matches!(e, FrameError::TooLong { .. }), "{e}");
        let at_limit = read_all(&framed(&[1; 100]), 3, 100).unwrap();
        assert_eq!(at_limit, [vec![1; 100]]);
    }

    #[test]
    fn end_of_stream_inside_a_frame_is_an_error_and_between_frames_is_not() {
        assert!(read_all(&[], 1, MAX).unwrap().is_empty());
        let truncated = |data: &[u8]| match read_all(data, 5, MAX) {
            Err(FrameError::Truncated { received, expected }) => (received, expected),
            other => panic!("expected a truncated frame, got {other:?}"),
        };
        assert_eq!(truncated(&[0, 0]), (2, 4));
        let data = framed(b"whole");
        assert_eq!(truncated(&data[..7]), (7, 9));
        let mut one_and_a_half = framed(b"whole");
        one_and_a_half.extend(&data[..6]);
        assert_eq!(truncated(&one_and_a_half), (6, 9));
    }

    #[test]
    fn an_error_of_the_reader_is_passed_on() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(ErrorKind::ConnectionReset.into())
            }
        }
        let e = read_frame_blocking(&mut Broken, MAX).unwrap_err();
        assert!(matches!(e, FrameError::Io(e) if e.kind() == ErrorKind::ConnectionReset));
    }

    #[test]
    fn an_encoded_request_reads_back_as_the_same_request() {
        let body = MetadataRequest::default().with_topics(None);
        let frame = encode_request(ApiKey::Metadata, 9, 42, "frame-test", &body).unwrap();
        let read = read_all(&frame, 3, MAX).unwrap();
        assert_eq!(read.len(), 1);
        let request = super::super::decode_request(read[0].clone()).unwrap();
        assert_eq!(request.header.correlation_id, 42);
        assert_eq!(request.header.client_id.as_deref(), Some("frame-test"));
        assert!(matches!(request.body, RequestKind::Metadata(m) if m == body));
    }

    #[test]
    fn an_encoded_response_decodes_with_its_correlation_id() {
        let body = ApiVersionsResponse::default().with_throttle_time_ms(5);
        let frame = super::super::encode_response(ApiKey::ApiVersions, 3, 77, &body.clone().into())
            .unwrap();
        let read = read_all(&frame, 2, MAX).unwrap();
        let (correlation_id, decoded) =
            decode_response::<ApiVersionsResponse>(ApiKey::ApiVersions, 3, read[0].clone())
                .unwrap();
        assert_eq!((correlation_id, decoded), (77, body));
        let e = decode_response::<ApiVersionsResponse>(ApiKey::ApiVersions, 3, Bytes::new())
            .unwrap_err();
        assert!(format!("{e:#}").contains("decoding"), "{e:#}");
    }
}
