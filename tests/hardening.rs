//! Hardening (issue 10): forged packets, hostile requests, failing disks and panics, each tried
//! against real broker processes on 127.0.0.1. The cluster must stay up and lose no
//! acknowledged message; each module covers one kind of attack or fault.

mod common;

#[path = "hardening/batches.rs"]
mod batches;
#[path = "hardening/control_plane.rs"]
mod control_plane;
#[path = "hardening/fuzz.rs"]
mod fuzz;
#[path = "hardening/internal_topics.rs"]
mod internal_topics;
#[path = "hardening/memory.rs"]
mod memory;
#[path = "hardening/process.rs"]
mod process;
#[path = "hardening/recovery.rs"]
mod recovery;
#[path = "hardening/replica_fetch.rs"]
mod replica_fetch;
#[path = "hardening/storage_faults.rs"]
mod storage_faults;
