//! Responses written as several pieces: the encoded message, with each partition's record
//! chunks spliced in where they are (tail-cache entries, disk read buffers), never copied
//! into one buffer.
//!
//! The `kafka-protocol` encoders stay in charge of the layout, for every version: a message's
//! records field holds a placeholder ([`RecordSplicer::records`]) that points into a
//! process-wide zeroed region, of the records' length. Encoding writes into a [`PiecedBuf`];
//! when its `put_slice` is handed a slice of that region, the encoder has just written the
//! field's length, so the buffer closes the current piece and appends that field's chunks.
//! Placeholders are filled in the order they were made, which is the order the encoder
//! visits them (the message's field order).

use std::collections::VecDeque;
use std::ops::Range;

use anyhow::{Context, ensure};
use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, FetchResponse};
use kafka_protocol::protocol::Encodable;
use kafka_protocol::protocol::buf::ByteBufMut;

use super::codec::response_header;
use super::frame::SIZE_PREFIX_BYTES;

/// The largest records field a placeholder stands for; larger ones are copied (a single
/// batch above `message.max.bytes`' default, a fetch budget above 64 MiB).
pub const PLACEHOLDER_BYTES: usize = 64 << 20;

/// The placeholders' region: allocated zeroed (calloc maps fresh zero pages), never read or
/// written, only its addresses compared, so it costs address space, not memory. Not a
/// `static` array, which would put 64 MiB of zeros into the executable.
fn placeholder() -> &'static [u8] {
    static REGION: std::sync::LazyLock<&'static [u8]> =
        std::sync::LazyLock::new(|| vec![0u8; PLACEHOLDER_BYTES].leak());
    *REGION
}

/// Chunks below this are copied into the surrounding piece: a separate piece would cost an
/// iovec and, past `IOV_MAX`, a syscall, which is more than copying a few KiB.
pub const COALESCE_BELOW: usize = 8 << 10;

/// A response as the pieces to write, in order; their concatenation is the frame.
pub type Pieces = Vec<Bytes>;

/// The record chunks of one response's placeholders, in the order they were made.
#[derive(Debug, Default)]
pub struct RecordSplicer {
    queued: VecDeque<Vec<Bytes>>,
    queued_bytes: usize,
}

impl RecordSplicer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The value for a message's records field holding `chunks` (`total_len` bytes): a
    /// placeholder that encoding replaces by the chunks, or the chunks copied together when
    /// there are more than [`PLACEHOLDER_BYTES`].
    pub fn records(&mut self, chunks: Vec<Bytes>, total_len: usize) -> Bytes {
        debug_assert_eq!(chunks.iter().map(Bytes::len).sum::<usize>(), total_len);
        match chunks.len() {
            0 => Bytes::new(),
            _ if total_len > PLACEHOLDER_BYTES => concat(&chunks, total_len),
            _ => {
                self.queued.push_back(chunks);
                self.queued_bytes += total_len;
                Bytes::from_static(&placeholder()[..total_len])
            }
        }
    }

    /// Encodes a Fetch response (size prefix, header, body) whose records fields hold
    /// this splicer's placeholders.
    pub fn encode_fetch(
        self,
        version: i16,
        correlation_id: i32,
        body: &FetchResponse,
    ) -> anyhow::Result<Pieces> {
        let (header, header_version) = response_header(ApiKey::Fetch, version, correlation_id);
        let size = header.compute_size(header_version)? + body.compute_size(version)?;
        let size_prefix = i32::try_from(size).context("frame too large")?;
        let own_bytes = (SIZE_PREFIX_BYTES + size).saturating_sub(self.queued_bytes);
        let mut buf = PiecedBuf::new(self.queued, own_bytes);
        buf.put_i32(size_prefix);
        header.encode(&mut buf, header_version)?;
        body.encode(&mut buf, version)?;
        let written = buf.offset() - SIZE_PREFIX_BYTES;
        ensure!(
            written == size,
            "frame of {size} bytes came out as {written}"
        );
        buf.finish()
    }
}

fn concat(chunks: &[Bytes], total_len: usize) -> Bytes {
    let mut out = BytesMut::with_capacity(total_len);
    for chunk in chunks {
        out.extend_from_slice(chunk);
    }
    out.freeze()
}

/// An encoding target that splices record chunks in for placeholders (see the module).
pub struct PiecedBuf {
    /// The piece being written.
    current: BytesMut,
    pieces: Vec<Bytes>,
    /// Bytes in `pieces`.
    closed_bytes: usize,
    queued: VecDeque<Vec<Bytes>>,
    /// Why the pieces do not match the message, found while encoding (reported by
    /// `finish`: `put_slice` cannot fail).
    fault: Option<String>,
}

impl PiecedBuf {
    fn new(queued: VecDeque<Vec<Bytes>>, own_bytes: usize) -> Self {
        Self {
            current: BytesMut::with_capacity(own_bytes),
            pieces: Vec::with_capacity(1 + 2 * queued.len()),
            closed_bytes: 0,
            queued,
            fault: None,
        }
    }

    fn close_piece(&mut self) {
        if !self.current.is_empty() {
            let piece = self.current.split().freeze();
            self.closed_bytes += piece.len();
            self.pieces.push(piece);
        }
    }

    /// Writes the chunks of the next placeholder, which is `len` bytes long.
    fn splice(&mut self, placeholder: &[u8]) {
        let chunks = self.queued.pop_front().unwrap_or_default();
        let total: usize = chunks.iter().map(Bytes::len).sum();
        if total != placeholder.len() {
            self.fault = Some(format!(
                "a {}-byte records field met {total} bytes of chunks",
                placeholder.len()
            ));
            // Keeps the offsets (and the size check) right until `finish` reports it.
            self.current.extend_from_slice(placeholder);
            return;
        }
        for chunk in chunks {
            if chunk.len() < COALESCE_BELOW {
                self.current.extend_from_slice(&chunk);
            } else {
                self.close_piece();
                self.closed_bytes += chunk.len();
                self.pieces.push(chunk);
            }
        }
    }

    fn finish(mut self) -> anyhow::Result<Pieces> {
        if let Some(fault) = self.fault {
            anyhow::bail!("records do not match their placeholders: {fault}");
        }
        ensure!(
            self.queued.is_empty(),
            "{} records placeholders never encoded",
            self.queued.len()
        );
        self.close_piece();
        Ok(self.pieces)
    }
}

fn in_placeholder(src: &[u8]) -> bool {
    let region = placeholder().as_ptr_range();
    !src.is_empty() && region.contains(&src.as_ptr())
}

// SAFETY: every method hands on to `current`, a `BytesMut`, whose implementation upholds
// the trait's contract; `put_slice` only adds bytes through `BytesMut`'s safe methods.
unsafe impl BufMut for PiecedBuf {
    fn remaining_mut(&self) -> usize {
        self.current.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller initialised `cnt` bytes of `chunk_mut()`, which is `current`'s.
        unsafe { self.current.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.current.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        if in_placeholder(src) {
            self.splice(src);
        } else {
            self.current.extend_from_slice(src);
        }
    }
}

/// Gaps (seek back, fill in) reach only into the open piece: the messages with records
/// fields write no gaps, and a closed piece cannot be changed.
impl ByteBufMut for PiecedBuf {
    fn offset(&self) -> usize {
        self.closed_bytes + self.current.len()
    }

    fn seek(&mut self, offset: usize) {
        let at = offset.checked_sub(self.closed_bytes);
        self.current
            .resize(at.expect("seek into a closed piece"), 0);
    }

    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        let start = r.start.checked_sub(self.closed_bytes);
        let start = start.expect("range in a closed piece");
        &mut self.current[start..start + r.len()]
    }
}

#[cfg(test)]
mod tests;
