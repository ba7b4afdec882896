//! The Raft log as the `raft` crate reads it: entries in memory (`MemStorage`, mirrored to the
//! WAL by the driver) plus the latest metadata snapshot, served to followers that fell behind
//! the compacted log.

use std::cell::RefCell;
use std::rc::Rc;

use raft::eraftpb::{ConfState, Entry, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::cluster::ClusterMetadata;

#[derive(Clone)]
pub struct QuorumStore {
    pub mem: MemStorage,
    /// The latest snapshot, with the metadata as its data.
    snapshot: Rc<RefCell<Snapshot>>,
}

impl QuorumStore {
    pub fn new(voters: Vec<u64>) -> Self {
        Self {
            mem: MemStorage::new_with_conf_state(ConfState::from((voters, vec![]))),
            snapshot: Rc::default(),
        }
    }

    /// Installs a snapshot (recovered from the WAL or sent by the leader) and returns the
    /// metadata it holds.
    pub fn install(&self, snapshot: Snapshot) -> anyhow::Result<ClusterMetadata> {
        let metadata = serde_json::from_slice(snapshot.get_data())
            .map_err(|e| anyhow::anyhow!("unreadable metadata snapshot: {e}"))?;
        self.mem.wl().apply_snapshot(snapshot.clone())?;
        self.snapshot.replace(snapshot);
        Ok(metadata)
    }

    /// Snapshots `metadata` as of `applied` and drops the entries it covers.
    pub fn compact(&self, metadata: &ClusterMetadata, applied: u64) -> anyhow::Result<Snapshot> {
        let mut snapshot = Snapshot::default();
        snapshot.set_data(serde_json::to_vec(metadata)?.into());
        let meta = snapshot.mut_metadata();
        meta.index = applied;
        meta.term = self.mem.term(applied)?;
        meta.set_conf_state(self.mem.initial_state()?.conf_state);
        self.mem.wl().compact(applied)?;
        self.snapshot.replace(snapshot.clone());
        Ok(snapshot)
    }

    /// Entries after `index` still in memory, to keep in the WAL beside a snapshot.
    pub fn entries_after(&self, index: u64) -> anyhow::Result<Vec<Entry>> {
        let last = self.mem.last_index()?;
        if last <= index {
            return Ok(Vec::new());
        }
        Ok(self
            .mem
            .entries(index + 1, last + 1, None, GetEntriesContext::empty(false))?)
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.borrow().get_metadata().index
    }
}

impl Storage for QuorumStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let snapshot = self.snapshot.borrow();
        if snapshot.get_metadata().index < request_index || snapshot.get_data().is_empty() {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snapshot.clone())
    }
}
