//! Executors: one per core for the broker, one on the current thread for tools and tests.

use std::future::Future;
use std::io;

use glommio::{CpuSet, LocalExecutorBuilder, LocalExecutorPoolBuilder, Placement, PoolPlacement};

use super::IO_MEMORY_BYTES;

/// Runs `f` on a single executor on the current thread and returns its output.
/// Used by tests, benches and tools that need storage outside a full broker.
pub fn block_on<F, T>(f: F) -> T
where
    F: Future<Output = T> + 'static,
    T: 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(IO_MEMORY_BYTES)
        .make()
        .expect("cannot start an executor")
        .run(f)
}

/// Starts `cores` executor threads named `name`, pinned and spread over the online CPUs,
/// runs `make_future()` on each and waits for all of them. Returns one result per executor,
/// an error where its thread failed; the outer error means the executors did not start.
pub fn run_on_cores<G, F, T>(
    cores: usize,
    name: &str,
    make_future: G,
) -> io::Result<Vec<io::Result<T>>>
where
    G: FnOnce() -> F + Clone + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let placement = PoolPlacement::MaxSpread(cores, CpuSet::online().ok());
    let handles = LocalExecutorPoolBuilder::new(placement)
        .name(name)
        .io_memory(IO_MEMORY_BYTES)
        .on_all_shards(make_future)?;
    let results = handles.join_all().into_iter();
    Ok(results.map(|r| r.map_err(io::Error::from)).collect())
}
