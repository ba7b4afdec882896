//! What a [`PartitionLog`](super::PartitionLog) is opened with besides its directory and
//! settings: the disk it stores its files on.

use std::rc::Rc;

use super::disk::{Disk, DmaDisk};

/// The log's surroundings. [`LogEnv::production`] is the broker's; a test or a simulation
/// builds its own (e.g. over `mem_disk::MemDisk`).
#[derive(Clone)]
pub struct LogEnv {
    pub disk: Rc<dyn Disk>,
}

impl LogEnv {
    /// O_DIRECT files.
    pub fn production() -> Self {
        LogEnv {
            disk: Rc::new(DmaDisk),
        }
    }
}
