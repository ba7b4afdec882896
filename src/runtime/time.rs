//! Timers.

use std::time::Duration;

/// Resolves after `d` without blocking the executor.
#[inline]
pub async fn sleep(d: Duration) {
    glommio::timer::sleep(d).await;
}

/// Resolves after `d`: the same as [`sleep`], under the name most callers use.
#[inline]
pub async fn delay(d: Duration) {
    sleep(d).await;
}
