//! # keel-host — a node's output, executed on storage
//!
//! [`keel_node`] decides *what* must be durable and when; [`keel_storage`] knows *how* to write
//! it. The two do not depend on each other, and everything between them lives here, once, for
//! both hosts that run a node: `keel-server` (real disk, one driver thread) and `keel-sim`
//! (simulated disk, virtual time). Glue that only one host ran is glue the simulator never
//! tested, so anything that touches the order of "write, fsync, release, compact" belongs here.
//!
//! - [`write`] / [`persist`]: a [`WriteBatch`]'s groups as WAL records (one batch, one fsync for
//!   every group on the node).
//! - [`Compactions`]: the own snapshots a write carries; once it is durable, the WAL segments and
//!   snapshot files they made obsolete are removed, keeping what [`Retention`] asks for.
//! - [`Requests`]: the requests a member waits on, and the proposals it forwards to the leader
//!   (see [`requests`]).
//! - [`bootstrap`]: the founding log of a new group, durable before the first start.
//! - [`membership`] / [`healing`]: what the membership protocol says of each process, and the
//!   leader's decisions to replace a dead voter by a spare (conf changes, proposed by the host).
//!
//! Many groups per node: every function takes all of a node's groups at once (one WAL holds them
//! all, tagged by group), so a node hosting thousands of groups still makes one write and one
//! fsync per batch, and compaction removes a WAL segment only once *every* group that wrote into
//! it has a durable snapshot past it (see `Wal::remove_obsolete_segments_keeping`).

use keel_node::{GroupWrite, WriteBatch};
use keel_raft::{GroupId, HardState, Index, NodeId};
use keel_storage::{GroupPersist, NodeStorage, StorageError};

pub use keel_storage::Retention;

pub mod healing;
pub mod membership;
pub mod requests;
pub use requests::{Effects, EffectsOf, Proposal, Requests};

/// The storage view of a batch's groups (the one mapping from keel-node's writes to the WAL's).
pub fn parts(groups: &[GroupWrite]) -> Vec<GroupPersist<'_>> {
    groups
        .iter()
        .map(|w| GroupPersist {
            group: w.group,
            hard_state: w.hard_state,
            installed_snapshot: w.installed_snapshot.as_ref(),
            own_snapshot: w.own_snapshot.as_ref(),
            entries: &w.entries,
        })
        .collect()
}

/// Writes a batch's groups; nothing is durable until [`NodeStorage::sync`].
pub fn write(storage: &mut NodeStorage, groups: &[GroupWrite]) -> Result<(), StorageError> {
    storage.write(&parts(groups))
}

/// Writes a node's batch, with an fsync only when the batch needs one (see
/// [`WriteBatch::must_sync`]): the next synced write carries the rest to the disk.
pub fn persist(storage: &mut NodeStorage, batch: &WriteBatch) -> Result<(), StorageError> {
    write(storage, &batch.groups)?;
    if batch.must_sync {
        storage.sync()?;
    }
    Ok(())
}

/// Writes `groups` and makes them durable (a founding write, see [`bootstrap_write`]).
pub fn persist_durably(storage: &mut NodeStorage, groups: &[GroupWrite]) -> Result<(), StorageError> {
    write(storage, groups)?;
    storage.sync()
}

/// Own snapshots written and not yet durable: the files behind them go once they are.
#[derive(Debug, Default)]
pub struct Compactions {
    pending: Vec<(GroupId, Index)>,
}

/// What one compaction removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub wal_segments: usize,
    pub snapshot_files: usize,
}

impl Compactions {
    /// Notes the snapshots `batch` carries (call when it is written).
    pub fn written(&mut self, batch: &WriteBatch) {
        for write in &batch.groups {
            for snapshot in write.installed_snapshot.iter().chain(write.own_snapshot.iter()) {
                self.pending.push((write.group, snapshot.meta.index));
            }
        }
    }

    /// The batch noted last is durable: remove what its snapshots made obsolete.
    pub fn durable(&mut self, storage: &mut NodeStorage, retention: Retention) -> Result<Removed, StorageError> {
        let mut removed = Removed::default();
        for (group, index) in std::mem::take(&mut self.pending) {
            let (segments, files) = storage.compact_keeping(group, index, retention)?;
            removed.wal_segments += segments;
            removed.snapshot_files += files;
        }
        Ok(removed)
    }

    /// A crash: nothing written is known durable.
    pub fn forget(&mut self) {
        self.pending.clear();
    }
}

/// A new group's founding write: every founding member persists the same log (see
/// [`keel_node::bootstrap`]) before it first starts the group.
pub fn bootstrap_write(group: GroupId, voters: &[NodeId]) -> GroupWrite {
    let (hard_state, entries) = keel_node::bootstrap(voters);
    GroupWrite { group, hard_state: Some(hard_state), entries, ..Default::default() }
}

/// Hard state and entries raft starts a freshly bootstrapped group from.
pub fn bootstrapped(write: &GroupWrite) -> (HardState, Vec<keel_raft::Entry>) {
    (write.hard_state.unwrap_or_default(), write.entries.clone())
}

#[cfg(test)]
mod tests;
