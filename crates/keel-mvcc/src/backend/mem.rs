//! An in-memory [`Backend`] for tests and the simulator. "Durable" means "committed":
//! a clone taken between commits is what a crash would leave.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Backend, RevisionSource, WriteBatch};
use crate::error::StorageError;
use crate::revision::Revision;

/// In-memory backend. Cloning it models a crash: the clone has exactly the committed state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemBackend {
    /// Shared with the [`MemView`]s taken of it; a commit copies it only while one is alive.
    revisions: Arc<BTreeMap<Revision, Vec<u8>>>,
    leases: BTreeMap<i64, Vec<u8>>,
    meta: BTreeMap<String, Vec<u8>>,
    commits: u64,
}

impl MemBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of batches committed so far (tests check batching with it).
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// Number of stored revisions (tests check compaction with it).
    pub fn revision_count(&self) -> usize {
        self.revisions.len()
    }

    fn apply(&mut self, batch: &WriteBatch) {
        if !batch.delete_revisions.is_empty() || !batch.put_revisions.is_empty() {
            let revisions = Arc::make_mut(&mut self.revisions);
            for rev in &batch.delete_revisions {
                revisions.remove(rev);
            }
            for (rev, rec) in &batch.put_revisions {
                revisions.insert(*rev, rec.clone());
            }
        }
        for id in &batch.delete_leases {
            self.leases.remove(id);
        }
        for (id, rec) in &batch.put_leases {
            self.leases.insert(*id, rec.clone());
        }
        for (k, v) in &batch.meta {
            self.meta.insert((*k).to_owned(), v.clone());
        }
        self.commits += 1;
    }
}

/// The committed records of a [`MemBackend`] at the time the view was taken.
#[derive(Debug, Clone)]
pub struct MemView(Arc<BTreeMap<Revision, Vec<u8>>>);

impl RevisionSource for MemView {
    fn get_revisions(&self, revs: &[Revision]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        Ok(revs.iter().map(|r| self.0.get(r).cloned()).collect())
    }

    fn scan_revisions(
        &self,
        from: Revision,
        to: Revision,
        limit: usize,
    ) -> Result<Vec<(Revision, Vec<u8>)>, StorageError> {
        if from >= to {
            return Ok(Vec::new());
        }
        Ok(self.0.range(from..to).take(limit).map(|(r, v)| (*r, v.clone())).collect())
    }
}

/// The committed records, through a view (an `Arc` clone: nothing is copied).
impl RevisionSource for MemBackend {
    fn get_revisions(&self, revs: &[Revision]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        self.read_view()?.get_revisions(revs)
    }

    fn scan_revisions(
        &self,
        from: Revision,
        to: Revision,
        limit: usize,
    ) -> Result<Vec<(Revision, Vec<u8>)>, StorageError> {
        self.read_view()?.scan_revisions(from, to, limit)
    }
}

impl Backend for MemBackend {
    type View = MemView;

    fn read_view(&self) -> Result<MemView, StorageError> {
        Ok(MemView(Arc::clone(&self.revisions)))
    }

    fn load_leases(&self) -> Result<Vec<(i64, Vec<u8>)>, StorageError> {
        Ok(self.leases.iter().map(|(k, v)| (*k, v.clone())).collect())
    }

    fn load_meta(&self) -> Result<BTreeMap<String, Vec<u8>>, StorageError> {
        Ok(self.meta.clone())
    }

    fn commit(&mut self, batch: &WriteBatch) -> Result<(), StorageError> {
        self.apply(batch);
        Ok(())
    }

    fn replace_all(&mut self, batch: &WriteBatch) -> Result<(), StorageError> {
        self.revisions = Arc::default();
        self.leases.clear();
        self.meta.clear();
        self.apply(batch);
        Ok(())
    }
}
