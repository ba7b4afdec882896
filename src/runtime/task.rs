//! Tasks on the current executor.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A spawned task; awaiting it yields its output. Dropping it cancels the task, so keep it,
/// await it, or [`detach`](Task::detach) it.
#[must_use = "a dropped Task is cancelled; await it or detach it"]
pub struct Task<T>(glommio::Task<T>);

/// A detached task: it runs to completion unless [`cancel`](JoinHandle::cancel)led.
pub struct JoinHandle<T>(glommio::task::JoinHandle<T>);

/// Runs `future` as a new task on this thread's executor.
#[inline]
pub fn spawn_local<T: 'static>(future: impl Future<Output = T> + 'static) -> Task<T> {
    Task(glommio::spawn_local(future))
}

impl<T> Task<T> {
    /// Lets the task run on its own; the handle can still cancel it.
    #[inline]
    pub fn detach(self) -> JoinHandle<T> {
        JoinHandle(self.0.detach())
    }

    /// Cancels the task and waits until it stopped; its output if it had finished.
    #[inline]
    pub async fn cancel(self) -> Option<T> {
        self.0.cancel().await
    }
}

impl<T> Future for Task<T> {
    type Output = T;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> JoinHandle<T> {
    /// Cancels the task; it stops at its next suspension point.
    #[inline]
    pub fn cancel(&self) {
        self.0.cancel();
    }
}
