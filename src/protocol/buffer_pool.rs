//! Frame buffers, reused: each thread keeps the buffers of frames it finished with, by size
//! class (powers of two from [`SMALLEST_CLASS`] to [`LARGEST_CLASS`]), so a steady load of
//! requests neither allocates nor zeroes memory per frame. A frame is handed out as `Bytes`
//! that own their buffer ([`Bytes::from_owner`]); the buffer goes back to the pool of the
//! thread that read the frame when the last reference is dropped, also when another thread
//! drops it (a produce's batches live on in the tail cache of the shard owning their
//! partition): through a channel the reading thread empties on its next [`take`].
//!
//! What a pool keeps, with what is on its way back to it, is bounded per thread
//! ([`POOL_MAX_BUFFERS_PER_CLASS`], [`POOL_MAX_BYTES`]); a buffer that does not fit is freed
//! (or kept by the thread that dropped it). Larger frames get buffers of their own, freed
//! when done.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};

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
    max_per_class: usize,
    home: Arc<Home>,
    returns: Receiver<Vec<u8>>,
}

/// Where buffers of a thread's frames that other threads drop go back to (a produce's
/// batches are often dropped by the shard owning their partition, not by the shard that
/// read the request: without this, the reading shard's pool would run dry while the other
/// frees what it never takes). The thread takes them in on its next [`take`].
#[derive(Debug)]
struct Home {
    returns: Sender<Vec<u8>>,
    /// Bytes the pool keeps plus bytes on their way back: together within `max_bytes`.
    held: AtomicUsize,
    max_bytes: usize,
}

impl Home {
    /// Counts `n` more bytes if they fit the limit.
    fn reserve(&self, n: usize) -> bool {
        let fits = |held: usize| (held + n <= self.max_bytes).then_some(held + n);
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, fits)
            .is_ok()
    }

    fn release(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }

    /// Sends a whole class buffer back to its thread; gives it back to the caller if it is
    /// not one, the home pool is full or its thread is gone.
    fn send_back(&self, buf: Vec<u8>) -> Result<(), Vec<u8>> {
        let len = buf.len();
        if !is_whole_class(&buf) || !self.reserve(len) {
            return Err(buf);
        }
        self.returns.send(buf).map_err(|returned| {
            self.release(len);
            returned.0
        })
    }
}

/// A buffer the pool can keep: exactly as long as a class, no spare capacity.
fn is_whole_class(buf: &Vec<u8>) -> bool {
    buf.capacity() == buf.len() && class_index(buf.len()).is_some()
}

impl Pool {
    fn new(max_per_class: usize, max_bytes: usize) -> Pool {
        let (sender, returns) = channel();
        Pool {
            classes: std::array::from_fn(|_| Vec::new()),
            max_per_class,
            home: Arc::new(Home {
                returns: sender,
                held: AtomicUsize::new(0),
                max_bytes,
            }),
            returns,
        }
    }

    /// A kept buffer of exactly `len` bytes (a class), if there is one.
    fn take(&mut self, len: usize) -> Option<Vec<u8>> {
        while let Ok(returned) = self.returns.try_recv() {
            self.keep_counted(returned);
        }
        let buf = self.classes[class_index(len)?].pop()?;
        self.home.release(buf.len());
        Some(buf)
    }

    /// Keeps `buf` if it is a whole class buffer and the limits allow; frees it otherwise.
    fn give(&mut self, buf: Vec<u8>) {
        if is_whole_class(&buf) && self.home.reserve(buf.len()) {
            self.keep_counted(buf);
        }
    }

    /// Keeps a whole class buffer already counted in `held`, unless its class is full.
    fn keep_counted(&mut self, buf: Vec<u8>) {
        let Some(kept) = class_index(buf.len()).map(|i| &mut self.classes[i]) else {
            return;
        };
        if kept.len() < self.max_per_class {
            kept.push(buf);
        } else {
            self.home.release(buf.len());
        }
    }

    fn bytes(&self) -> usize {
        self.home.held.load(Ordering::Acquire)
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

/// A frame's buffer, owned by the `Bytes` of the frame and its slices; back to the pool of
/// the thread that read the frame when the last of them is dropped.
struct Frame {
    buf: Vec<u8>,
    len: usize,
    /// None if the frame was made during its thread's teardown.
    home: Option<Arc<Home>>,
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let at_home = |home: &Arc<Home>| {
            let here = POOL.try_with(|p| Arc::ptr_eq(&p.borrow().home, home));
            here.unwrap_or(true) // teardown: freed by `give`
        };
        match &self.home {
            Some(home) if !at_home(home) => {
                if let Err(buf) = home.send_back(buf) {
                    give(buf);
                }
            }
            _ => give(buf),
        }
    }
}

/// The first `len` bytes of `buf` as `Bytes`; `buf` returns to the pool after the last
/// reference to them.
pub fn freeze(buf: Vec<u8>, len: usize) -> Bytes {
    assert!(len <= buf.len(), "a frame of {len} bytes in {}", buf.len());
    let home = POOL.try_with(|p| p.borrow().home.clone()).ok();
    Bytes::from_owner(Frame { buf, len, home })
}

/// Bytes this thread's pool keeps (and are on their way back to it).
pub fn kept_bytes() -> usize {
    POOL.try_with(|p| p.borrow().bytes()).unwrap_or(0)
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
        assert_eq!(
            (pool.classes[0].len(), pool.bytes()),
            (2, 2 * SMALLEST_CLASS)
        );
        pool.give(vec![0; 2 * SMALLEST_CLASS]);
        assert_eq!(pool.bytes(), 4 * SMALLEST_CLASS);
        // Over the byte limit: freed.
        pool.give(vec![0; 2 * SMALLEST_CLASS]);
        assert_eq!(pool.bytes(), 4 * SMALLEST_CLASS);
        // Not a class (nor a whole one): freed.
        pool.give(vec![0; 100]);
        pool.give(vec![0; LARGEST_CLASS * 2]);
        let mut odd = Vec::with_capacity(2 * SMALLEST_CLASS);
        odd.resize(SMALLEST_CLASS, 0);
        pool.give(odd);
        assert_eq!(pool.bytes(), 4 * SMALLEST_CLASS);
        assert!(pool.take(SMALLEST_CLASS).is_some());
        assert!(pool.take(SMALLEST_CLASS).is_some());
        assert!(pool.take(SMALLEST_CLASS).is_none());
        assert!(pool.take(LARGEST_CLASS * 2).is_none());
        assert_eq!(pool.bytes(), 2 * SMALLEST_CLASS);
    }

    #[test]
    fn a_frame_dropped_on_another_thread_goes_back_to_the_thread_that_read_it() {
        // This test's thread has a pool of its own, and so has the one it spawns.
        let buf = take(100_000);
        let addr = buf.as_ptr() as usize;
        let frame = freeze(buf, 10);
        std::thread::spawn(move || {
            drop(frame);
            assert_eq!(kept_bytes(), 0, "not kept by the thread that dropped it");
        })
        .join()
        .unwrap();
        assert_eq!(kept_bytes(), 128 << 10, "on its way back");
        let again = take(100_000);
        assert_eq!(again.as_ptr() as usize, addr, "taken in and reused");
        assert_eq!(kept_bytes(), 0);
    }

    #[test]
    fn what_goes_back_stays_within_the_home_pool_s_byte_limit() {
        let mut pool = Pool::new(8, 3 * SMALLEST_CLASS);
        pool.give(vec![0; SMALLEST_CLASS]);
        let home = pool.home.clone();
        assert!(home.send_back(vec![1; 2 * SMALLEST_CLASS]).is_ok());
        let refused = home.send_back(vec![2; SMALLEST_CLASS]);
        assert_eq!(
            refused.map_err(|b| b.len()),
            Err(SMALLEST_CLASS),
            "over the limit"
        );
        assert_eq!(home.send_back(vec![3; 100]).map_err(|b| b.len()), Err(100));
        assert_eq!(pool.bytes(), 3 * SMALLEST_CLASS);
        assert_eq!(pool.take(2 * SMALLEST_CLASS).map(|b| b[0]), Some(1));
        assert_eq!(pool.bytes(), SMALLEST_CLASS);
        drop(pool);
        let orphan = home.send_back(vec![4; SMALLEST_CLASS]);
        assert!(orphan.is_err(), "its thread is gone");
        assert_eq!(
            home.held.load(Ordering::Acquire),
            SMALLEST_CLASS,
            "released again"
        );
    }
}
