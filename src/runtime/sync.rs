//! Synchronisation between tasks of one executor.

use std::fmt;

/// A counting semaphore for tasks of one executor (permits are waited for in FIFO order).
pub struct Semaphore(glommio::sync::Semaphore);

/// Units of a [`Semaphore`], given back when dropped.
pub struct Permit<'a> {
    _units: glommio::sync::Permit<'a>,
}

/// The semaphore was closed; no permit will be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("semaphore closed")
    }
}

impl std::error::Error for Closed {}

impl Semaphore {
    #[inline]
    pub fn new(units: u64) -> Semaphore {
        Semaphore(glommio::sync::Semaphore::new(units))
    }

    /// Waits until `units` are available and takes them until the permit is dropped.
    #[inline]
    pub async fn acquire_permit(&self, units: u64) -> Result<Permit<'_>, Closed> {
        let permit = self.0.acquire_permit(units).await.map_err(|_| Closed)?;
        Ok(Permit { _units: permit })
    }

    /// Waits until `units` are available and takes them; they come back only through
    /// [`Semaphore::signal`] (for holders that give back part of what they took).
    #[inline]
    pub async fn acquire(&self, units: u64) -> Result<(), Closed> {
        self.0.acquire(units).await.map_err(|_| Closed)
    }

    /// Gives back `units` taken with [`Semaphore::acquire`].
    #[inline]
    pub fn signal(&self, units: u64) {
        self.0.signal(units)
    }

    /// Units not taken now.
    #[inline]
    pub fn available(&self) -> u64 {
        self.0.available()
    }
}
