//! Staging buffers for the O_DIRECT writes of the log, reused: each shard keeps the DMA
//! buffers of completed writes and hands them to the next write of the same length, so a
//! steady produce load neither allocates nor page-faults staging memory (a fresh buffer's
//! pages are faulted in and zeroed by the kernel on first touch).
//!
//! A buffer is reused only by exact length (a DMA buffer cannot grow back once trimmed), so
//! writes are cut into few lengths: whole [`MAX_IO_BYTES`] pieces, then powers of two from
//! 512 KiB down to [`MID_UNIT`], then one multiple of the unit (the device alignment, at
//! least [`STAGING_UNIT`]); see [`write_pieces`]. (One piece per multiple of 64 KiB made 15
//! lengths of up to 960 KiB, more than the pool keeps: they evicted each other.) What a shard keeps is bounded
//! ([`STAGING_POOL_MAX_BUFFERS`], [`STAGING_POOL_MAX_BYTES`]); past that the oldest kept
//! buffer is freed. A buffer returns here only once its write completed and the runtime
//! no longer holds it (`runtime::DmaFile::write_at`), so memory the kernel may still read
//! is never written again.

use std::cell::RefCell;
use std::collections::VecDeque;

use crate::runtime::DmaBuffer;

/// Largest single DMA request; a multiple of every O_DIRECT alignment.
pub(crate) const MAX_IO_BYTES: usize = 1 << 20;

/// Smallest length writes are padded to (zero padding past the data, as for alignment).
pub(crate) const STAGING_UNIT: usize = 4 << 10;
/// The middle piece of a write is a multiple of this.
const MID_UNIT: usize = 64 << 10;
/// Staging buffers one shard keeps.
pub const STAGING_POOL_MAX_BUFFERS: usize = 64;
/// Bytes of staging buffers one shard keeps: 32 pieces of the largest length. Writes in
/// flight beyond that (many partitions flushing at once) get fresh buffers. With 8 MiB, a
/// shard under `rdkafka_performance` load (3 partitions, ~1 MB requests) still allocated
/// ~90 fresh 1 MiB buffers a second; 16 MiB halved that, 32 MiB left ~10 (perf/RESULTS.md).
pub const STAGING_POOL_MAX_BYTES: usize = 32 << 20;

/// The lengths of the pieces a write of `len` bytes (a multiple of `unit`) is issued as,
/// in order, each a multiple of `unit` (a power of two up to [`MAX_IO_BYTES`]).
pub(crate) fn write_pieces(len: usize, unit: usize) -> impl Iterator<Item = usize> {
    debug_assert!(unit.is_power_of_two() && unit <= MAX_IO_BYTES && len.is_multiple_of(unit));
    let rest = len % MAX_IO_BYTES;
    let whole = std::iter::repeat_n(MAX_IO_BYTES, len / MAX_IO_BYTES);
    let mid_unit = MID_UNIT.max(unit);
    let mid = rest - rest % mid_unit;
    let powers = std::iter::successors(Some(MAX_IO_BYTES / 2), |p| Some(p / 2))
        .take_while(move |&p| p >= mid_unit)
        .filter(move |&p| mid & p != 0);
    let small = Some(rest - mid).filter(|&n| n > 0);
    whole.chain(powers).chain(small)
}

/// Kept buffers, oldest first (generic so the bookkeeping is tested with plain memory).
struct StagingPool<B> {
    kept: VecDeque<B>,
    bytes: usize,
    max_buffers: usize,
    max_bytes: usize,
}

impl<B: AsRef<[u8]>> StagingPool<B> {
    const fn new(max_buffers: usize, max_bytes: usize) -> Self {
        StagingPool {
            kept: VecDeque::new(),
            bytes: 0,
            max_buffers,
            max_bytes,
        }
    }

    /// The most recently kept buffer of exactly `len` bytes, if any (contents stale).
    fn take(&mut self, len: usize) -> Option<B> {
        let at = self.kept.iter().rposition(|b| b.as_ref().len() == len)?;
        let buf = self.kept.remove(at)?;
        self.bytes -= len;
        Some(buf)
    }

    /// Keeps `buf`, freeing the oldest kept buffers beyond the limits.
    fn give(&mut self, buf: B) {
        let len = buf.as_ref().len();
        if len > self.max_bytes || self.max_buffers == 0 {
            return;
        }
        self.bytes += len;
        self.kept.push_back(buf);
        while self.bytes > self.max_bytes || self.kept.len() > self.max_buffers {
            let Some(old) = self.kept.pop_front() else {
                break;
            };
            self.bytes -= old.as_ref().len();
        }
    }
}

thread_local! {
    static POOL: RefCell<StagingPool<DmaBuffer>> =
        const { RefCell::new(StagingPool::new(STAGING_POOL_MAX_BUFFERS, STAGING_POOL_MAX_BYTES)) };
}

/// A kept buffer of exactly `len` bytes from this shard's pool (contents stale), if any.
pub(crate) fn take(len: usize) -> Option<DmaBuffer> {
    // No pool during the thread's teardown.
    POOL.try_with(|p| p.borrow_mut().take(len)).ok().flatten()
}

/// Gives the buffer of a completed write back to this shard's pool (or frees it).
pub(crate) fn give(buf: DmaBuffer) {
    let _ = POOL.try_with(|p| p.borrow_mut().give(buf));
}

/// How many buffers this shard's pool keeps.
#[cfg(test)]
pub(crate) fn kept() -> usize {
    POOL.with(|p| p.borrow().kept.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap(len: usize, fill: u8) -> Vec<u8> {
        vec![fill; len]
    }

    #[test]
    fn pieces_are_few_lengths_that_cover_the_write() {
        let cases = [
            (4096, 4096, vec![4096]),
            (512, 512, vec![512]),
            (MAX_IO_BYTES, 4096, vec![MAX_IO_BYTES]),
            (
                3 * MID_UNIT + 8192,
                4096,
                vec![2 * MID_UNIT, MID_UNIT, 8192],
            ),
            (
                2 * MAX_IO_BYTES + 15 * MID_UNIT + 15 * 4096,
                4096,
                vec![
                    MAX_IO_BYTES,
                    MAX_IO_BYTES,
                    8 * MID_UNIT,
                    4 * MID_UNIT,
                    2 * MID_UNIT,
                    MID_UNIT,
                    15 * 4096,
                ],
            ),
            (MAX_IO_BYTES / 2, 4096, vec![MAX_IO_BYTES / 2]),
            (MAX_IO_BYTES + 1536, 512, vec![MAX_IO_BYTES, 1536]),
            (3 * (128 << 10), 128 << 10, vec![256 << 10, 128 << 10]),
        ];
        for (len, unit, want) in cases {
            let got: Vec<usize> = write_pieces(len, unit).collect();
            assert_eq!(got, want, "pieces of {len}");
            assert!(got.iter().all(|n| n % unit == 0 && *n <= MAX_IO_BYTES));
        }
        assert_eq!(write_pieces(0, 4096).count(), 0);
    }

    #[test]
    fn a_given_buffer_is_taken_again_by_exact_length_only() {
        let mut pool = StagingPool::new(8, 1 << 20);
        pool.give(heap(8192, 7));
        assert!(pool.take(4096).is_none());
        assert!(pool.take(16384).is_none());
        let again = pool.take(8192).expect("kept");
        assert_eq!(again.len(), 8192);
        assert!(again.iter().all(|&b| b == 7), "the same buffer");
        assert!(pool.take(8192).is_none(), "taken once");
        assert_eq!(pool.bytes, 0);
    }

    #[test]
    fn the_limits_free_the_oldest_buffers() {
        let mut pool = StagingPool::new(3, 40 << 10);
        for fill in 1..=4 {
            pool.give(heap(4096, fill));
        }
        assert_eq!(pool.kept.len(), 3, "buffer count limit");
        let newest = pool.take(4096).expect("kept");
        assert_eq!(newest[0], 4, "the newest is taken first");
        pool.give(heap(36 << 10, 9));
        assert!(pool.bytes <= 40 << 10, "byte limit: {}", pool.bytes);
        assert!(pool.take(36 << 10).is_some(), "the new buffer is kept");
        assert_eq!(pool.take(4096).expect("kept")[0], 3);
        assert!(
            pool.take(4096).is_none(),
            "the oldest (1, then 2) were freed"
        );
        pool.give(heap(64 << 10, 1));
        assert_eq!(pool.bytes, 0, "a buffer over the byte limit is not kept");
    }
}
