//! The one place the broker touches glommio.
//!
//! Architecture invariant: every other module gets sockets, files, timers, task spawning and
//! cross-shard channels from here, so the runtime could be swapped (e.g. for compio) by
//! rewriting this module alone.

pub use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
pub use glommio::io::BufferedFile;
pub use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};
pub use glommio::net::{TcpListener, TcpStream};
pub use glommio::task::JoinHandle;
pub use glommio::timer::{Timer, sleep};
pub use glommio::{Task, spawn_local, yield_if_needed};

use std::cell::RefCell;
use std::path::Path;
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

thread_local! {
    /// Devices (st_dev) on which this thread already ran glommio's poll-ring probe.
    static PROBED_DEVICES: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Makes glommio's per-device DMA read probe see a non-empty file. Call it, on the thread
/// that will use them, before opening any [`DmaFile`] in `dir` (the storage calls it when it
/// opens a partition directory); cheap after the first call per device and thread.
///
/// Why: glommio 0.9 decides whether a device supports io_uring polled I/O (IOPOLL) the
/// first time a thread opens a `DmaFile` on it, by reading 512 bytes at offset 0 of that
/// file, and caches the answer per thread and device. If that first file is EMPTY (a new
/// segment, say), the read succeeds at EOF without reaching the device, glommio caches
/// "pollable", and every later DMA read on that device fails with EOPNOTSUPP while writes
/// keep working (seen on kernel 6.18). So the first open per (thread, device) is of a
/// 4 KiB scratch file, `dir/.dma-probe`, written here and removed right after. Remove this
/// once glommio probes correctly.
///
/// Blocks briefly on `std::fs` (metadata, one small write, one unlink) on the first call.
pub async fn prepare_dma_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir)?.dev();
    if PROBED_DEVICES.with(|p| p.borrow().contains(&dev)) {
        return Ok(());
    }
    let probe = dir.join(".dma-probe");
    std::fs::write(&probe, [0u8; 4096])?;
    let opened = DmaFile::open(&probe).await;
    let _ = std::fs::remove_file(&probe);
    opened?.close().await?;
    PROBED_DEVICES.with(|p| p.borrow_mut().push(dev));
    Ok(())
}

/// Resolves after `d`; a thin alias so callers do not depend on glommio's timer type.
pub async fn delay(d: Duration) {
    sleep(d).await;
}

pub use glommio::channels::local_channel::{
    LocalReceiver, LocalSender, new_bounded as local_bounded,
};
pub use glommio::sync::Semaphore;
