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
}
