//! The one place the broker touches glommio.
//!
//! Architecture invariant: every other module gets sockets, files, timers, task spawning and
//! cross-shard channels from here, so the runtime could be swapped (e.g. for compio) by
//! rewriting this module alone.

pub use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
pub use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};
pub use glommio::net::{TcpListener, TcpStream};
pub use glommio::timer::{Timer, sleep};
pub use glommio::{Task, spawn_local, yield_if_needed};

use std::time::Duration;

/// io_uring registered-buffer memory per shard. glommio's default (10 MiB) exceeds the 8 MiB
/// `ulimit -l` of an unprivileged user; 4 MiB starts everywhere and is plenty for our DMA
/// buffers, which are allocated outside the registered pool when it is exhausted.
pub const IO_MEMORY_BYTES: usize = 4 << 20;

/// Runs `f` on a single glommio executor on the current thread and returns its output.
/// Used by tests, benches and tools that need storage outside a full broker.
pub fn block_on<F, T>(f: F) -> T
where
    F: std::future::Future<Output = T> + 'static,
    T: 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(IO_MEMORY_BYTES)
        .make()
        .expect("cannot start a glommio executor")
        .run(f)
}

/// Resolves after `d`; a thin alias so callers do not depend on glommio's timer type.
pub async fn delay(d: Duration) {
    sleep(d).await;
}

pub use glommio::channels::local_channel::{
    LocalReceiver, LocalSender, new_bounded as local_bounded,
};
pub use glommio::sync::Semaphore;
