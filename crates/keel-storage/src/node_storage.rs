//! A node's durable state: the WAL plus snapshot files, written in the order the persistence
//! contract needs and recovered into per-group raft state.

use std::collections::BTreeMap;
use std::sync::Arc;

use keel_codec::record::Record;
use keel_raft::{Entry, GroupId, HardState, RecoveredState, Snapshot};
use thiserror::Error;

use crate::disk::Disk;
use crate::snapshot::{SnapshotError, SnapshotStore};
use crate::wal::{Recovery, Wal, WalError, WalOptions};

#[derive(Debug, Error)]
pub enum StorageError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

impl StorageError {
    /// A full disk: the node stays consistent and readable and may retry once space is freed.
    pub fn is_no_space(&self) -> bool {
        match self {
            StorageError::Wal(WalError::NoSpace(_)) => true,
            StorageError::Snapshot(SnapshotError::Io { source, .. }) => {
                source.kind() == std::io::ErrorKind::StorageFull
            }
            _ => false,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct StorageOptions {
    pub wal: WalOptions,
    pub snapshot_dir: String,
}

impl StorageOptions {
    pub fn new() -> StorageOptions {
        StorageOptions { wal: WalOptions::default(), snapshot_dir: "snap".to_string() }
    }
}

/// Bytes of entries per WAL record, well under the WAL's record limit.
const ENTRIES_RECORD_BYTES_MAX: u64 = 4 << 20;

/// What one group asks to persist (the host maps keel-node's `GroupWrite` onto this).
#[derive(Clone, Copy, Debug)]
pub struct GroupPersist<'a> {
    pub group: GroupId,
    pub hard_state: Option<HardState>,
    /// From the leader: replaces the log.
    pub installed_snapshot: Option<&'a Snapshot>,
    /// Taken locally: the log before it may go.
    pub own_snapshot: Option<&'a Snapshot>,
    pub entries: &'a [Entry],
}

impl GroupPersist<'_> {
    /// The WAL records of this write, in the order raft needs them applied.
    pub fn records(&self) -> Vec<Record> {
        let group = self.group;
        let mut records = Vec::new();
        if let Some(snapshot) = self.installed_snapshot {
            records.push(Record::Snapshot { group, meta: snapshot.meta.clone(), replaces_log: true });
        }
        if let Some(snapshot) = self.own_snapshot {
            records.push(Record::Snapshot { group, meta: snapshot.meta.clone(), replaces_log: false });
        }
        // Entries go in records of bounded size (a batch may hold many; it stays atomic).
        let mut chunk_start = 0;
        let mut chunk_bytes = 0u64;
        for (i, entry) in self.entries.iter().enumerate() {
            chunk_bytes += entry.size_bytes();
            if chunk_bytes >= ENTRIES_RECORD_BYTES_MAX || i + 1 == self.entries.len() {
                records.push(Record::Entries { group, entries: self.entries[chunk_start..=i].to_vec() });
                chunk_start = i + 1;
                chunk_bytes = 0;
            }
        }
        if let Some(hard_state) = self.hard_state {
            records.push(Record::HardState { group, hard_state });
        }
        records
    }
}

/// A group as recovered: ready to hand to raft (and its snapshot to the state machine).
#[derive(Clone, Debug, Default)]
pub struct RecoveredGroup {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
}

impl RecoveredGroup {
    /// Raft's view; `applied` is the snapshot's index (a state machine restored from it).
    pub fn raft_state(&self) -> RecoveredState {
        RecoveredState {
            hard_state: self.hard_state,
            conf: self.snapshot.as_ref().map(|s| s.meta.conf.clone()).unwrap_or_default(),
            snapshot: self.snapshot.clone(),
            entries: self.entries.clone(),
            applied: self.snapshot.as_ref().map_or(0, |s| s.meta.index),
        }
    }
}

pub struct NodeStorage {
    pub wal: Wal,
    pub snapshots: SnapshotStore,
}

impl NodeStorage {
    pub fn open(
        disk: Arc<dyn Disk>,
        opts: StorageOptions,
    ) -> Result<(NodeStorage, BTreeMap<GroupId, RecoveredGroup>, Recovery), StorageError> {
        let snapshots = SnapshotStore::open(disk.clone(), &opts.snapshot_dir)?;
        let (wal, mut recovery) = Wal::open(disk, opts.wal)?;
        let mut groups = BTreeMap::new();
        for (group, log) in std::mem::take(&mut recovery.groups) {
            let snapshot = match &log.snapshot {
                Some(meta) => Some(snapshots.load(group, meta)?),
                None => None,
            };
            groups.insert(group, RecoveredGroup { hard_state: log.hard_state, snapshot, entries: log.entries });
        }
        Ok((NodeStorage { wal, snapshots }, groups, recovery))
    }

    /// Writes every group's part of one batch: snapshot files first (durably, since the WAL record
    /// that names them may become durable with the next fsync), then one WAL batch. Nothing is
    /// durable until [`NodeStorage::sync`].
    pub fn write(&mut self, groups: &[GroupPersist]) -> Result<(), StorageError> {
        let mut records = Vec::new();
        for part in groups {
            for snapshot in part.installed_snapshot.iter().chain(part.own_snapshot.iter()) {
                self.snapshots.save(part.group, snapshot)?;
            }
            records.extend(part.records());
        }
        self.wal.append(&records)?;
        Ok(())
    }

    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.wal.sync()?;
        Ok(())
    }

    /// After a snapshot is durable: drop WAL segments and older snapshot files it made obsolete.
    pub fn compact(&mut self, group: GroupId, snapshot_index: u64) -> Result<(), StorageError> {
        self.compact_keeping(group, snapshot_index, Retention::MINIMAL).map(|_| ())
    }

    /// Like [`NodeStorage::compact`], keeping what `retention` asks for. Returns the WAL segments
    /// and snapshot files removed.
    pub fn compact_keeping(
        &mut self,
        group: GroupId,
        snapshot_index: u64,
        retention: Retention,
    ) -> Result<(usize, usize), StorageError> {
        let segments = self.wal.remove_obsolete_segments_keeping(retention.wal_segments)?;
        let snapshots =
            self.snapshots.remove_older_keeping(group, snapshot_index, retention.snapshots.saturating_sub(1))?;
        Ok((segments, snapshots))
    }
}

/// How many obsolete files compaction leaves (etcd's `--max-wals` and `--max-snapshots`, 5 each
/// by default): only files that durable state no longer needs are ever removed, and of those the
/// newest are kept up to these counts, the needed ones included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub wal_segments: usize,
    pub snapshots: usize,
}

impl Retention {
    /// Only what recovery needs.
    pub const MINIMAL: Retention = Retention { wal_segments: 1, snapshots: 1 };
    /// etcd's defaults.
    pub const ETCD: Retention = Retention { wal_segments: 5, snapshots: 5 };
}

impl NodeStorage {}
