//! The one place the broker touches glommio.
//!
//! Architecture invariant: every other module gets sockets, files, timers, task spawning,
//! channels and executors from here, as the project's own thin types (newtypes with inlined
//! methods, no copy or allocation added), so the runtime could be swapped (e.g. for compio)
//! by rewriting this module alone. Errors come out as `std::io::Error` or this module's
//! small error types, never as glommio's.

mod channel;
mod executor;
mod fs;
mod net;
mod sync;
mod task;
mod time;

pub use channel::{
    LocalReceiver, LocalSender, MeshBuilder, MeshReceiver, Receivers, SendError, Senders,
    local_bounded,
};
pub use executor::{block_on, run_on_cores};
pub use fs::{BufferedFile, DmaBuffer, DmaFile, OpenOptions, ReadResult, prepare_dma_dir};
pub use net::{AddressClaim, MAX_IOVECS, TcpListener, TcpStream, claim_listen_address};
pub use sync::{Closed, Permit, Semaphore};
pub use task::{JoinHandle, Task, spawn_local};
pub use time::{delay, sleep};

/// io_uring registered-buffer memory per shard. glommio's default (10 MiB) exceeds the 8 MiB
/// `ulimit -l` of an unprivileged user; 4 MiB starts everywhere and is plenty for our DMA
/// buffers, which are allocated outside the registered pool when it is exhausted.
pub const IO_MEMORY_BYTES: usize = 4 << 20;
