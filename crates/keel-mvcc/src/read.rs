//! Reads that run beside apply: the key index shared behind a lock, and [`ReadView`], a read
//! of the store as it was at one revision that another thread can serve (etcd serves range
//! reads, watch catch-up and hashes from concurrent read transactions the same way).
//!
//! Why this is consistent without holding the lock for a whole read: the key index is
//! multi-version. Writes after the view's revision only add revisions above it, which a read at
//! that revision skips; the one change that removes what a read may need is compaction, so a
//! read re-checks the compacted revision every time it takes the lock (every
//! [`INDEX_KEYS_PER_LOCK`] keys) and fails with `Compacted` once compaction has passed it. Values
//! come from the backend's read view (a redb read transaction), which still holds every record
//! it saw even after compaction deletes them from the live tables.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

use crate::backend::{RevisionSource, WriteBatch};
use crate::error::{MvccError, StorageError};
use crate::key_index::{Index, IndexEntry};
use crate::kv::{KeyValue, StoredRecord};
use crate::range::KeyRange;
use crate::request::{RangeRequest, RangeResponse};
use crate::revision::Revision;
use crate::store::{HashKv, ScanChunk};

/// Keys a read walks per acquisition of the index lock: apply waits for at most this many.
pub(crate) const INDEX_KEYS_PER_LOCK: usize = 4096;

/// The key index and the compacted revision, shared by the store (the only writer, on the
/// driver thread) and its read views.
#[derive(Debug)]
pub(crate) struct SharedIndex {
    map: RwLock<Index>,
    /// The store's compacted revision (its only home: -1 before any compaction, as etcd).
    /// Changed only while the write lock is held, with the index it describes.
    compacted: AtomicI64,
}

impl SharedIndex {
    pub(crate) fn new(index: Index, compacted: i64) -> Self {
        SharedIndex { map: RwLock::new(index), compacted: AtomicI64::new(compacted) }
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Index> {
        // A reader that panicked cannot have left the index half-changed; the writer never panics
        // mid-change (its changes are plain map operations).
        self.map.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.map.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn compacted(&self) -> i64 {
        self.compacted.load(Ordering::Acquire)
    }

    /// Sets the compacted revision; the caller holds the write lock (`_held`) and compacts the
    /// index under it, so a reader sees both or neither.
    pub(crate) fn set_compacted(&self, _held: &mut Index, revision: i64) {
        self.compacted.store(revision, Ordering::Release);
    }
}

/// The read half of the store over any record source: the store itself (its backend and its
/// pending batch) or a [`ReadView`].
pub(crate) struct Reader<'a, R: ?Sized> {
    pub(crate) index: &'a SharedIndex,
    pub(crate) records: &'a R,
    /// Changes committed to memory but not yet written to the backend, read before `records`.
    pub(crate) unwritten: &'a WriteBatch,
    /// Applied but uncommitted changes (newer than `unwritten`), read first.
    pub(crate) pending: &'a WriteBatch,
    /// The store's revision for this read.
    pub(crate) current: i64,
}

impl<R: RevisionSource + ?Sized> Reader<'_, R> {
    /// Reads the records at `revs`, from the batches in memory or the record source.
    pub(crate) fn load_records(&self, revs: &[Revision]) -> Result<Vec<StoredRecord>, StorageError> {
        let mut out: Vec<Option<StoredRecord>> = Vec::with_capacity(revs.len());
        let mut missing = Vec::new();
        for (i, rev) in revs.iter().enumerate() {
            // A revision is written once and only ever deleted after: a put in either batch is
            // the record (a deleted one is not asked for: the index no longer names it).
            match self.pending.put_revisions.get(rev).or_else(|| self.unwritten.put_revisions.get(rev)) {
                Some(bytes) => out.push(Some(StoredRecord::decode(bytes)?)),
                None => {
                    out.push(None);
                    missing.push(i);
                }
            }
        }
        if !missing.is_empty() {
            let want: Vec<Revision> = missing.iter().map(|&i| revs[i]).collect();
            let got = self.records.get_revisions(&want)?;
            for ((i, rev), bytes) in missing.iter().zip(&want).zip(got) {
                let bytes = bytes.ok_or(StorageError::MissingRevision { main: rev.main, sub: rev.sub })?;
                out[*i] = Some(StoredRecord::decode(&bytes)?);
            }
        }
        Ok(out.into_iter().map(|r| r.expect("every slot filled above")).collect())
    }

    pub(crate) fn load_kvs(&self, revs: &[Revision]) -> Result<Vec<KeyValue>, StorageError> {
        Ok(self.load_records(revs)?.into_iter().map(|r| r.kv).collect())
    }

    /// The key's kv at main revision `at`, if alive.
    pub(crate) fn get_kv(&self, key: &[u8], at: i64) -> Result<Option<KeyValue>, StorageError> {
        let entry = self.index.read().get(key).and_then(|ki| ki.get(at));
        let Some(entry) = entry else {
            return Ok(None);
        };
        Ok(self.load_kvs(&[entry.rev])?.pop())
    }

    /// Stored records with revisions in `[from, to)`, up to about `limit`, merging the
    /// pending batch over the record source. Returns where to continue, `None` when done.
    pub(crate) fn scan_merged(&self, from: Revision, to: Revision, limit: usize) -> Result<ScanChunk, StorageError> {
        if from >= to {
            return Ok((Vec::new(), None));
        }
        let limit = limit.max(1);
        let stored = self.records.scan_revisions(from, to, limit)?;
        let (bound, next) = match stored.last() {
            Some(&(last, _)) if stored.len() >= limit => {
                let after = Revision::new(last.main, last.sub + 1);
                (after, Some(after))
            }
            _ => (to, None),
        };
        let mut merged: BTreeMap<Revision, Vec<u8>> = stored.into_iter().collect();
        // Oldest to newest: the backend, then what is not yet written to it, then what is not
        // yet committed.
        for batch in [self.unwritten, self.pending] {
            for r in batch.delete_revisions.range(from..bound) {
                merged.remove(r);
            }
            for (r, v) in batch.put_revisions.range(from..bound) {
                merged.insert(*r, v.clone());
            }
        }
        Ok((merged.into_iter().collect(), next))
    }

    /// Whether a stored revision is part of the visible history: above the compacted
    /// revision, or kept by compaction (still in the key's index).
    pub(crate) fn is_live(&self, rev: Revision, key: &Bytes) -> bool {
        rev.main > self.index.compacted() || self.index.read().get(key).is_some_and(|ki| ki.contains(rev))
    }

    /// Keys of `range` alive at `at`, walked a bounded number of keys per hold of the index lock.
    /// Fails with `Compacted` if compaction passes `at` meanwhile.
    pub(crate) fn alive_at(&self, range: KeyRange<'_>, at: i64) -> Result<Vec<(Bytes, IndexEntry)>, MvccError> {
        let mut out = Vec::new();
        let mut after: Option<Bytes> = None;
        loop {
            let index = self.index.read();
            if at < self.index.compacted() {
                return Err(MvccError::Compacted);
            }
            let mut walked = 0;
            let mut last = None;
            for (key, ki) in range.iter_after(&index, after.as_deref()) {
                if let Some(entry) = ki.get(at) {
                    out.push((key.clone(), entry));
                }
                walked += 1;
                if walked == INDEX_KEYS_PER_LOCK {
                    last = Some(key.clone());
                    break;
                }
            }
            match last {
                Some(key) => after = Some(key),
                None => return Ok(out),
            }
        }
    }

    /// Fails with `Compacted` once compaction has passed `at`.
    pub(crate) fn check_not_compacted(&self, at: i64) -> Result<(), MvccError> {
        if at < self.index.compacted() {
            Err(MvccError::Compacted)
        } else {
            Ok(())
        }
    }
}

/// A read of the store as of one revision, served on any thread while the store applies on.
/// Take it with [`crate::Store::read_view`]; hold it only for the length of a read (it pins the
/// backend's pages as they were).
pub struct ReadView<V> {
    index: Arc<SharedIndex>,
    records: V,
    /// Shared with the store until it next commits to memory (then it copies, if still shared).
    unwritten: Arc<WriteBatch>,
    pending: WriteBatch,
    revision: i64,
}

impl<V> std::fmt::Debug for ReadView<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadView").field("revision", &self.revision).finish()
    }
}

impl<V: RevisionSource> ReadView<V> {
    pub(crate) fn new(
        index: Arc<SharedIndex>,
        records: V,
        unwritten: Arc<WriteBatch>,
        pending: WriteBatch,
        revision: i64,
    ) -> Self {
        ReadView { index, records, unwritten, pending, revision }
    }

    fn reader(&self) -> Reader<'_, V> {
        Reader {
            index: &self.index,
            records: &self.records,
            unwritten: &self.unwritten,
            pending: &self.pending,
            current: self.revision,
        }
    }

    /// The store's revision when the view was taken: reads see exactly the state at it.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// etcd `Range` at the view's revision (or at `q.revision`, if older).
    pub fn range(&self, q: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.reader().range_at(q, self.revision)
    }

    /// [`crate::Store::events_batch`] up to the view's revision.
    pub fn events_batch(
        &self,
        start_revision: i64,
        key: &[u8],
        range_end: &[u8],
        max_events: usize,
        with_prev_kv: bool,
    ) -> Result<crate::EventBatch, MvccError> {
        self.reader().events_batch(start_revision, key, range_end, max_events, with_prev_kv)
    }

    /// [`crate::Store::hash_kv`] as of the view's revision.
    pub fn hash_kv(&self, revision: i64) -> Result<HashKv, MvccError> {
        self.reader().hash_kv(revision)
    }
}

/// The store's latest read view, shared with the threads that serve reads of the applied state
/// (etcd's serializable reads): taking it is a lock and a reference count, not a turn of the
/// thread that applies. The store empties it before it applies anything, so a view found here
/// holds every change applied before it was found — in particular every write already
/// acknowledged by this member — and a reader that finds it empty asks the store for a fresh one
/// ([`crate::Store::shared_read_view`]).
#[derive(Debug)]
pub struct LatestView<V> {
    slot: std::sync::Mutex<Option<Arc<ReadView<V>>>>,
}

impl<V> Default for LatestView<V> {
    fn default() -> Self {
        LatestView { slot: std::sync::Mutex::new(None) }
    }
}

impl<V> LatestView<V> {
    /// The latest view, unless the store applied something since it was taken.
    pub fn get(&self) -> Option<Arc<ReadView<V>>> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn set(&self, view: Arc<ReadView<V>>) {
        *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(view);
    }

    /// Forgets the view (the store is about to change). Its holders keep reading it.
    pub(crate) fn clear(&self) {
        let old = self.slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        drop(old); // outside the lock: the last holder drops a read transaction
    }
}
