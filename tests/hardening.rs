//! Hardening (issue 10): forged packets, hostile requests, failing disks and panics, each tried
//! against real broker processes on 127.0.0.1. The cluster must stay up and lose no
//! acknowledged message; each module covers one kind of attack or fault.

mod common;

mod batches;
mod control_plane;
mod memory;
mod process;
mod replica_fetch;
mod storage_faults;
