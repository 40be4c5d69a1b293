//! The storage the store persists through. All IO of this crate goes through [`Backend`];
//! only [`redb_backend`] touches files.
//!
//! Three logical tables:
//! - revisions: `(main, sub)` big-endian (16 bytes) -> encoded kv record (key, create/mod
//!   revision, version, lease, tombstone flag, value);
//! - leases: lease id -> encoded lease record (granted TTL, last checkpointed TTL);
//! - meta: name -> value (applied raft index, current and compacted revision, compaction
//!   cursor).
//!
//! Every [`WriteBatch`] is committed atomically: its data changes and its meta (which holds
//! the applied raft index) become durable together or not at all.

pub mod mem;
pub mod redb_backend;

use std::collections::{BTreeMap, BTreeSet};

use crate::error::StorageError;
pub use crate::index_checkpoint::SavedIndex;
use crate::revision::Revision;

/// Meta key: highest raft index whose effects are in this state (etcd's consistent index).
pub const META_APPLIED_INDEX: &str = "applied_index";
/// Meta key: current main revision.
pub const META_CURRENT_REVISION: &str = "current_revision";
/// Meta key: compacted revision (-1 before the first compaction).
pub const META_COMPACTED_REVISION: &str = "compacted_revision";
/// Meta key: where backend deletion of compacted revisions resumes; empty when done.
pub const META_COMPACTION_CURSOR: &str = "compaction_cursor";

/// One atomic unit of backend changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// Revisions to insert or overwrite.
    pub put_revisions: BTreeMap<Revision, Vec<u8>>,
    /// Revisions to remove.
    pub delete_revisions: BTreeSet<Revision>,
    /// Lease records to insert or overwrite.
    pub put_leases: BTreeMap<i64, Vec<u8>>,
    /// Lease records to remove.
    pub delete_leases: BTreeSet<i64>,
    /// Meta entries to set.
    pub meta: BTreeMap<&'static str, Vec<u8>>,
}

impl WriteBatch {
    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.put_revisions.is_empty()
            && self.delete_revisions.is_empty()
            && self.put_leases.is_empty()
            && self.delete_leases.is_empty()
            && self.meta.is_empty()
    }

    pub(crate) fn put_revision(&mut self, rev: Revision, record: Vec<u8>) {
        self.delete_revisions.remove(&rev);
        self.put_revisions.insert(rev, record);
    }

    pub(crate) fn delete_revision(&mut self, rev: Revision) {
        // A revision written and compacted away before the commit never reaches the backend.
        self.put_revisions.remove(&rev);
        self.delete_revisions.insert(rev);
    }

    pub(crate) fn put_lease(&mut self, id: i64, record: Vec<u8>) {
        self.delete_leases.remove(&id);
        self.put_leases.insert(id, record);
    }

    pub(crate) fn delete_lease(&mut self, id: i64) {
        self.put_leases.remove(&id);
        self.delete_leases.insert(id);
    }

    /// Takes in `newer`, a batch of later changes: the result writes what applying the two in
    /// order would.
    pub(crate) fn absorb(&mut self, newer: WriteBatch) {
        for rev in newer.delete_revisions {
            self.delete_revision(rev);
        }
        for (rev, record) in newer.put_revisions {
            self.put_revision(rev, record);
        }
        for id in newer.delete_leases {
            self.delete_lease(id);
        }
        for (id, record) in newer.put_leases {
            self.put_lease(id, record);
        }
        self.meta.extend(newer.meta);
    }

    /// About how many bytes the batch holds (records and keys; for bounding memory).
    pub(crate) fn approx_bytes(&self) -> usize {
        const KEY: usize = 16;
        self.put_revisions.values().map(|r| r.len() + KEY).sum::<usize>()
            + self.delete_revisions.len() * KEY
            + self.put_leases.values().map(|r| r.len() + KEY).sum::<usize>()
            + self.delete_leases.len() * KEY
            + self.meta.values().map(|v| v.len() + KEY).sum::<usize>()
    }
}

/// Called with each stored revision and its record's header, in revision order: the record
/// itself, or a prefix of it that holds at least what `StoredRecord::decode_header` reads (the
/// key index needs nothing else).
pub type RevisionVisitor<'a> = dyn FnMut(Revision, &[u8]) -> Result<(), StorageError> + 'a;

/// Stored records by revision: a backend's committed content, or a [`Backend::read_view`] of it.
pub trait RevisionSource {
    /// Reads the records of `revs`, in the same order; `None` where absent.
    fn get_revisions(&self, revs: &[Revision]) -> Result<Vec<Option<Vec<u8>>>, StorageError>;

    /// Up to `limit` records with revisions in `[from, to)`, in revision order.
    fn scan_revisions(
        &self,
        from: Revision,
        to: Revision,
        limit: usize,
    ) -> Result<Vec<(Revision, Vec<u8>)>, StorageError>;
}

/// Durable storage for the store's tables.
///
/// Implementations must make [`Backend::commit`] atomic (all of a batch or none of it,
/// also across a crash) and durable when it returns.
pub trait Backend: RevisionSource {
    /// A consistent, immutable view of the committed records, readable on another thread while
    /// the backend takes new commits (a redb read transaction; etcd's concurrent read txn).
    type View: RevisionSource + Send + 'static;

    /// The view of everything committed so far (buffered commits included).
    fn read_view(&self) -> Result<Self::View, StorageError>;

    /// Calls `visit` with the header of every record from revision `from` on, in revision order
    /// (one pass of a start-up's index rebuild, or its replay after a checkpoint). The default
    /// goes through [`Backend::scan_revisions`].
    fn for_each_record_header(&self, from: Revision, visit: &mut RevisionVisitor<'_>) -> Result<(), StorageError> {
        const CHUNK: usize = 1024;
        let end = Revision::after_main(i64::MAX - 1);
        let mut cursor = from;
        loop {
            let chunk = self.scan_revisions(cursor, end, CHUNK)?;
            for (rev, bytes) in &chunk {
                visit(*rev, bytes)?;
            }
            match chunk.last() {
                Some(&(last, _)) if chunk.len() == CHUNK => cursor = Revision::new(last.main, last.sub + 1),
                _ => return Ok(()),
            }
        }
    }

    /// Every lease record.
    fn load_leases(&self) -> Result<Vec<(i64, Vec<u8>)>, StorageError>;

    /// Every meta entry.
    fn load_meta(&self) -> Result<BTreeMap<String, Vec<u8>>, StorageError>;

    /// Applies `batch` atomically and durably.
    fn commit(&mut self, batch: &WriteBatch) -> Result<(), StorageError>;

    /// Applies `batch` atomically and visibly, but durable only once a later [`Backend::commit`]
    /// returns: a crash before that loses it (and every buffered batch after the last durable
    /// commit) as a whole. Saves the fsync for hosts that can replay what was lost.
    fn commit_buffered(&mut self, batch: &WriteBatch) -> Result<(), StorageError> {
        self.commit(batch)
    }

    /// Starts making every commit so far durable without waiting for the disk: the buffered ones
    /// become durable together once [`Backend::sync_finished`] says so (redb: an empty durable
    /// commit on another thread, which writes and fsyncs what the buffered ones left). At most one
    /// runs at a time; a commit meanwhile waits for it. Backends that hold nothing on a disk are
    /// durable at once.
    fn start_sync(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Whether the sync started last has finished, and how long it took on its thread (an
    /// error if it failed: what it covered may not be on the disk). `None` while it runs; zero
    /// when none was started.
    fn sync_finished(&mut self) -> Result<Option<std::time::Duration>, StorageError> {
        Ok(Some(std::time::Duration::ZERO))
    }

    /// Replaces the whole content with `batch` atomically (snapshot restore).
    fn replace_all(&mut self, batch: &WriteBatch) -> Result<(), StorageError>;

    /// A consistent view of the committed content that another thread can stream (a
    /// snapshot's source); `None` for a backend that is not a file.
    fn begin_copy(&self) -> Result<Option<redb_backend::StoreCopy>, StorageError> {
        Ok(None)
    }

    /// Where the store checkpoints its key index (see `index_checkpoint`); `None` for a backend
    /// that is not a file.
    fn index_checkpoint_path(&self) -> Option<std::path::PathBuf> {
        None
    }

    /// The key index checkpoint read back from [`Backend::index_checkpoint_path`], `None` when
    /// there is none or it is damaged. A backend may have read it ahead, while it opened.
    fn load_index_checkpoint(&mut self) -> Option<SavedIndex> {
        self.index_checkpoint_path().and_then(|path| crate::index_checkpoint::load(&path))
    }

    /// Replaces the whole content by a database file built from a streamed
    /// [`redb_backend::StoreCopy`] ([`redb_backend::RowReceiver`]), atomically.
    fn install_file(&mut self, incoming: &std::path::Path) -> Result<(), StorageError> {
        Err(StorageError::Backend(format!("this backend cannot install {}", incoming.display())))
    }
}

pub use mem::MemBackend;
pub use redb_backend::RedbBackend;
