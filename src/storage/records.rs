//! Batches on their way into a log, and as the log holds them: slices of the request that
//! carried them, not copies. A leader's append copies and patches only each batch's header
//! (`baseOffset` and `partitionLeaderEpoch`, which the CRC does not cover), so a stored batch
//! is two pieces: the patched header, then the rest of the batch as received.
//!
//! A slice keeps its whole request frame in memory. A batch stays a slice only when it is at
//! least 1/[`SLICE_MIN_FRAME_SHARE`] of its frame's buffer; a smaller one is copied
//! compactly. So what cached batches keep alive is at most [`SLICE_MIN_FRAME_SHARE`] times
//! their own bytes: a 100 MB request of topic names and tiny batches pins no frame at all.

use bytes::{Bytes, BytesMut};

use crate::protocol::record_batch::{BATCH_HEADER_LEN, BatchInfo, patch_batch};

/// A batch kept as a slice is at least this fraction (1/n) of its frame's buffer.
pub const SLICE_MIN_FRAME_SHARE: usize = 8;

/// Batches to append, with the memory of the buffer they are a slice of.
#[derive(Debug, Clone)]
pub struct Records {
    bytes: Bytes,
    frame_bytes: usize,
}

impl Records {
    /// Batches that are a slice of a frame whose buffer holds `frame_bytes`.
    pub fn in_frame(bytes: Bytes, frame_bytes: usize) -> Records {
        let frame_bytes = frame_bytes.max(bytes.len());
        Records { bytes, frame_bytes }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The batch at `info` (checked against the buffer by the caller).
    pub fn batch(&self, info: &BatchInfo) -> &[u8] {
        &self.bytes[info.offset_in_buf..info.offset_in_buf + info.len]
    }

    /// Whether a batch of `len` bytes may stay a slice of the frame.
    fn may_slice(&self, len: usize) -> bool {
        len.saturating_mul(SLICE_MIN_FRAME_SHARE) >= self.frame_bytes
    }

    /// The batch at `info` as received (a follower stores its leader's bytes).
    pub fn stored(&self, info: &BatchInfo) -> BatchBytes {
        let range = info.offset_in_buf..info.offset_in_buf + info.len;
        if self.may_slice(info.len) {
            BatchBytes::whole(self.bytes.slice(range))
        } else {
            BatchBytes::whole(Bytes::copy_from_slice(&self.bytes[range]))
        }
    }

    /// The batch at `info` with `baseOffset` and `partitionLeaderEpoch` set; the request's
    /// bytes are not changed.
    pub fn patched(&self, info: &BatchInfo, base_offset: i64, leader_epoch: i32) -> BatchBytes {
        let (start, end) = (info.offset_in_buf, info.offset_in_buf + info.len);
        let patched = |bytes: &[u8]| {
            let mut copy = BytesMut::from(bytes);
            patch_batch(&mut copy, base_offset, leader_epoch);
            copy.freeze()
        };
        if !self.may_slice(info.len) {
            return BatchBytes::whole(patched(&self.bytes[start..end]));
        }
        let body = start + BATCH_HEADER_LEN;
        BatchBytes {
            front: patched(&self.bytes[start..body]),
            back: self.bytes.slice(body..end),
        }
    }
}

impl From<Bytes> for Records {
    /// Batches in a buffer of their own.
    fn from(bytes: Bytes) -> Records {
        let frame_bytes = bytes.len();
        Records { bytes, frame_bytes }
    }
}

impl From<BytesMut> for Records {
    fn from(bytes: BytesMut) -> Records {
        bytes.freeze().into()
    }
}

/// One stored batch, in at most two pieces whose concatenation is the batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchBytes {
    front: Bytes,
    back: Bytes,
}

impl BatchBytes {
    pub fn whole(bytes: Bytes) -> BatchBytes {
        BatchBytes {
            front: bytes,
            back: Bytes::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.front.len() + self.back.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The non-empty pieces, in order.
    pub fn pieces(&self) -> impl Iterator<Item = &Bytes> {
        [&self.front, &self.back]
            .into_iter()
            .filter(|p| !p.is_empty())
    }

    /// The batch in one piece (copied if it is in two).
    pub fn contiguous(&self) -> Bytes {
        if self.back.is_empty() {
            return self.front.clone();
        }
        let mut out = BytesMut::with_capacity(self.len());
        out.extend_from_slice(&self.front);
        out.extend_from_slice(&self.back);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::record_batch::{BatchHeader, build_test_batch, validate_batches};

    fn request_with_batch(padding: usize) -> (Bytes, BatchInfo) {
        let value = [3u8; 200];
        let batch = build_test_batch(0, &[(None, &value), (Some(b"k"), &value)], 1_000);
        let mut frame = vec![9; padding];
        frame.extend_from_slice(&batch);
        let frame = Bytes::from(frame);
        let mut info = validate_batches(&frame[padding..]).unwrap().remove(0);
        info.offset_in_buf += padding;
        (frame, info)
    }

    #[test]
    fn a_patched_batch_has_its_offset_and_epoch_a_valid_crc_and_the_request_is_unchanged() {
        for padding in [0, 100_000] {
            let (frame, info) = request_with_batch(padding);
            let before = frame.clone().to_vec();
            let records = Records::in_frame(frame.clone(), frame.len());
            let stored = records.patched(&info, 4_242, 7);
            assert_eq!(frame[..], before[..], "the request's bytes are unchanged");
            let pieces = stored.pieces().count();
            assert_eq!(
                pieces,
                if padding == 0 { 2 } else { 1 },
                "padding {padding}"
            );
            let batch = stored.contiguous();
            let h = BatchHeader::parse(&batch).unwrap();
            assert_eq!(
                (h.base_offset(), h.partition_leader_epoch.get()),
                (4_242, 7)
            );
            assert_eq!(batch.len(), info.len);
            assert_eq!(
                batch[BATCH_HEADER_LEN..],
                records.batch(&info)[BATCH_HEADER_LEN..]
            );
            // The CRC (from `attributes` on) still holds.
            assert!(validate_batches(&batch).is_ok());
        }
    }

    #[test]
    fn a_batch_that_is_a_small_share_of_its_frame_is_copied_not_sliced() {
        let (frame, info) = request_with_batch(100_000);
        assert!(info.len * SLICE_MIN_FRAME_SHARE < frame.len());
        let records = Records::in_frame(frame.clone(), frame.len());
        for stored in [records.stored(&info), records.patched(&info, 0, 0)] {
            let piece = stored.pieces().next().unwrap();
            let inside = frame.as_ptr_range().contains(&piece.as_ptr());
            assert!(!inside, "a tiny batch must not pin its frame");
        }
        let (frame, info) = request_with_batch(0);
        let stored = Records::from(frame.clone()).stored(&info);
        assert_eq!(stored.pieces().next().unwrap().as_ptr(), frame.as_ptr());
    }
}
