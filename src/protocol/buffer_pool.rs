//! Frame buffers, reused: each thread keeps the buffers of frames it finished with, by size
//! class (powers of two from [`SMALLEST_CLASS`] to [`LARGEST_CLASS`]), so a steady load of
//! requests neither allocates nor zeroes memory per frame. A frame is handed out as `Bytes`
//! that own their buffer ([`Bytes::from_owner`]); the buffer goes back to the pool of the
//! thread that drops the last reference (a produce's batches may live on in another shard's
//! tail cache, so buffers can move between threads' pools).
//!
//! What a pool keeps is bounded per thread ([`POOL_MAX_BUFFERS_PER_CLASS`],
//! [`POOL_MAX_BYTES`]); a buffer that does not fit is freed. Larger frames get buffers of
//! their own, freed when done.

use std::cell::RefCell;

use bytes::Bytes;

/// The smallest buffer handed out.
pub const SMALLEST_CLASS: usize = 4 << 10;
/// The largest buffer a pool keeps; larger frames get exact buffers, not pooled.
pub const LARGEST_CLASS: usize = 16 << 20;
const CLASSES: usize = (LARGEST_CLASS / SMALLEST_CLASS).trailing_zeros() as usize + 1;
/// Buffers one thread keeps per size class.
pub const POOL_MAX_BUFFERS_PER_CLASS: usize = 64;
/// Bytes of buffers one thread keeps over all classes.
pub const POOL_MAX_BYTES: usize = 32 << 20;

/// The size of the pooled buffer that holds `len` bytes: the smallest class at least
/// `len`, or `len` itself past the largest class.
pub fn class_len(len: usize) -> usize {
    if len > LARGEST_CLASS {
        return len;
    }
    len.max(SMALLEST_CLASS).next_power_of_two()
}

fn class_index(len: usize) -> Option<usize> {
    (len.is_power_of_two() && (SMALLEST_CLASS..=LARGEST_CLASS).contains(&len))
        .then(|| (len / SMALLEST_CLASS).trailing_zeros() as usize)
}

/// One thread's kept buffers. Every kept buffer is initialized and as long as its class.
#[derive(Debug)]
struct Pool {
    classes: [Vec<Vec<u8>>; CLASSES],
    bytes: usize,
    max_per_class: usize,
    max_bytes: usize,
}

impl Pool {
    fn new(max_per_class: usize, max_bytes: usize) -> Pool {
        Pool {
            classes: std::array::from_fn(|_| Vec::new()),
            bytes: 0,
            max_per_class,
            max_bytes,
        }
    }

    /// A kept buffer of exactly `len` bytes (a class), if there is one.
    fn take(&mut self, len: usize) -> Option<Vec<u8>> {
        let buf = self.classes[class_index(len)?].pop()?;
        self.bytes -= buf.len();
        Some(buf)
    }

    /// Keeps `buf` if it is a whole class buffer and the limits allow; frees it otherwise.
    fn give(&mut self, buf: Vec<u8>) {
        let Some(index) = class_index(buf.len()).filter(|_| buf.capacity() == buf.len()) else {
            return;
        };
        let kept = &mut self.classes[index];
        if kept.len() < self.max_per_class && self.bytes + buf.len() <= self.max_bytes {
            self.bytes += buf.len();
            kept.push(buf);
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::new(POOL_MAX_BUFFERS_PER_CLASS, POOL_MAX_BYTES));
}

/// A buffer of `class_len(len)` bytes (contents unspecified), from this thread's pool when
/// it has one.
pub fn take(len: usize) -> Vec<u8> {
    let len = class_len(len);
    // No pool during the thread's teardown: a fresh buffer then.
    let kept = POOL.try_with(|p| p.borrow_mut().take(len)).ok().flatten();
    kept.unwrap_or_else(|| vec![0; len])
}

/// Gives a buffer back to this thread's pool (or frees it).
pub fn give(buf: Vec<u8>) {
    // During the thread's teardown the buffer is simply freed.
    let _ = POOL.try_with(|p| p.borrow_mut().give(buf));
}

/// A frame's buffer, owned by the `Bytes` of the frame and its slices; back to the pool when
/// the last of them is dropped.
struct Frame {
    buf: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.buf));
    }
}

/// The first `len` bytes of `buf` as `Bytes`; `buf` returns to the pool after the last
/// reference to them.
pub fn freeze(buf: Vec<u8>, len: usize) -> Bytes {
    assert!(len <= buf.len(), "a frame of {len} bytes in {}", buf.len());
    Bytes::from_owner(Frame { buf, len })
}

/// Bytes this thread's pool keeps.
pub fn kept_bytes() -> usize {
    POOL.try_with(|p| p.borrow().bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_powers_of_two_within_bounds_and_exact_beyond() {
        assert_eq!(class_len(1), SMALLEST_CLASS);
        assert_eq!(class_len(SMALLEST_CLASS + 1), 2 * SMALLEST_CLASS);
        assert_eq!(class_len(700_000), 1 << 20);
        assert_eq!(class_len(LARGEST_CLASS), LARGEST_CLASS);
        assert_eq!(class_len(LARGEST_CLASS + 1), LARGEST_CLASS + 1);
        assert_eq!(class_index(SMALLEST_CLASS), Some(0));
        assert_eq!(class_index(LARGEST_CLASS), Some(CLASSES - 1));
        assert_eq!(class_index(LARGEST_CLASS + 1), None);
        assert_eq!(class_index(3 * SMALLEST_CLASS), None);
    }

    #[test]
    fn a_buffer_returns_on_the_last_drop_and_is_reused() {
        // This test's thread has a pool of its own.
        let mut buf = take(100_000);
        assert_eq!(buf.len(), 128 << 10);
        buf[..5].copy_from_slice(b"hello");
        let addr = buf.as_ptr();
        let frame = freeze(buf, 50_000);
        assert_eq!(frame.len(), 50_000);
        let slice = frame.slice(1..5);
        drop(frame);
        assert_eq!(kept_bytes(), 0, "a slice still holds the buffer");
        assert_eq!(&slice[..], b"ello");
        drop(slice);
        assert_eq!(kept_bytes(), 128 << 10);
        let again = take(70_000);
        assert_eq!(again.as_ptr(), addr, "the kept buffer is handed out again");
        assert_eq!(&again[..5], b"hello", "and not zeroed");
        assert_eq!(kept_bytes(), 0);
    }

    #[test]
    fn the_pool_keeps_at_most_its_count_per_class_and_its_bytes() {
        let mut pool = Pool::new(2, 5 * SMALLEST_CLASS);
        for _ in 0..3 {
            pool.give(vec![0; SMALLEST_CLASS]);
        }
        assert_eq!((pool.classes[0].len(), pool.bytes), (2, 2 * SMALLEST_CLASS));
        pool.give(vec![0; 2 * SMALLEST_CLASS]);
        assert_eq!(pool.bytes, 4 * SMALLEST_CLASS);
        // Over the byte limit: freed.
        pool.give(vec![0; 2 * SMALLEST_CLASS]);
        assert_eq!(pool.bytes, 4 * SMALLEST_CLASS);
        // Not a class (nor a whole one): freed.
        pool.give(vec![0; 100]);
        pool.give(vec![0; LARGEST_CLASS * 2]);
        let mut odd = Vec::with_capacity(2 * SMALLEST_CLASS);
        odd.resize(SMALLEST_CLASS, 0);
        pool.give(odd);
        assert_eq!(pool.bytes, 4 * SMALLEST_CLASS);
        assert!(pool.take(SMALLEST_CLASS).is_some());
        assert!(pool.take(SMALLEST_CLASS).is_some());
        assert!(pool.take(SMALLEST_CLASS).is_none());
        assert!(pool.take(LARGEST_CLASS * 2).is_none());
        assert_eq!(pool.bytes, 2 * SMALLEST_CLASS);
    }
}
