//! The store: in-memory key index and lease table over a [`Backend`], the apply loop,
//! the pending write batch and the durability contract (see the crate docs).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::{
    Backend, WriteBatch, META_APPLIED_INDEX, META_COMPACTED_REVISION, META_COMPACTION_CURSOR, META_CURRENT_REVISION,
};
use crate::command::Command;
use crate::error::{DecodeError, MvccError, StorageError};
use crate::index_checkpoint::{self, CheckpointState, IndexCheckpoint, SavedIndex, Stamp};
use crate::index_rebuild::{corrupt, dead_tombstone, IndexRebuild};
use crate::key_index::Index;
use crate::kv::{Event, KeyValue, StoredRecord};
use crate::lease::{Lease, Leases};
use crate::read::{LatestView, ReadView, Reader, SharedIndex};
use crate::request::{LeaseInfo, RangeRequest, RangeResponse, Response};
use crate::revision::Revision;

/// Records read per backend call while scanning (open, compaction, history, snapshot).
pub(crate) const SCAN_CHUNK: usize = 1024;

/// Most bytes [`Store::commit_buffered`] keeps in memory before it hands them to the backend
/// (without waiting for the disk). Between durable commits the changes stay here: a backend
/// transaction per buffered commit cost redb a rewrite of every page on the path to each changed
/// record — about 40 KB written and a third of the driver's time per single-client put.
const UNWRITTEN_BYTES_MAX: usize = 16 << 20;

/// Records of one merged scan step, and where the next step starts (`None` when done).
pub(crate) type ScanChunk = (Vec<(Revision, Vec<u8>)>, Option<Revision>);

/// Tunables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Collect an [`Event`] per change for [`Store::take_events`]. Off for hosts without
    /// watchers: computing `prev_kv` costs a backend read per change.
    pub record_events: bool,
    /// Stored revisions examined by pending compaction per commit of applied changes (0 = only
    /// when the host calls [`Store::compaction_step`]). Per commit, not per applied command: a
    /// host commits once per batch of entries, so the deletion after a compaction costs each
    /// batch a bounded amount. (Per command, 1,000 each, the first few hundred entries after a
    /// compaction of 400,000 revisions held the driver thread for about a second, long enough for
    /// followers to suspect their leader.) Replicas may differ in how far deletion has got:
    /// hashes, snapshots and history skip revisions compaction made dead.
    pub compaction_batch_per_commit: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { record_events: true, compaction_batch_per_commit: 1000 }
    }
}

/// What [`Store::apply`] did with a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The raft index was at or below the applied index: already reflected, ignored.
    Skipped,
    /// Applied; the response or the client error (the index is consumed either way).
    Applied(Result<Response, MvccError>),
}

/// etcd's `HashKV` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKv {
    /// CRC-32C over every visible revision `<=` the requested one, in revision order.
    pub hash: u32,
    /// The store's current revision.
    pub revision: i64,
    /// The compacted revision.
    pub compact_revision: i64,
}

/// The MVCC state machine over a backend `B`.
pub struct Store<B: Backend> {
    pub(crate) backend: B,
    pub(crate) opts: StoreOptions,
    /// Shared with the [`ReadView`]s taken of the store; replaced whole when the store is
    /// reloaded, so a view never mixes two states.
    pub(crate) index: Arc<SharedIndex>,
    pub(crate) leases: Leases,
    pub(crate) current_revision: i64,
    /// Where backend deletion of compacted revisions resumes; `None` when none is pending.
    pub(crate) compaction_cursor: Option<Revision>,
    pub(crate) applied_index: u64,
    durable_applied_index: u64,
    /// The current revision as of the last durable commit: a checkpoint of the key index taken
    /// as of it stays usable after a crash.
    durable_revision: i64,
    /// The applied index and revision a sync in flight makes durable ([`Store::commit_in_background`]).
    syncing: Option<(u64, i64)>,
    /// How long the last finished sync took, until the host takes it.
    finished_sync: Option<std::time::Duration>,
    /// The key index checkpoints written beside the backend's file.
    pub(crate) checkpoint: Arc<CheckpointState>,
    /// Applied but not yet committed changes; reads consult it before the backend.
    pub(crate) pending: WriteBatch,
    /// Committed by [`Store::commit_buffered`] but not yet written to the backend (read after
    /// `pending`, before the backend). Shared with the read views taken since it last changed.
    pub(crate) unwritten: Arc<WriteBatch>,
    unwritten_bytes: usize,
    pub(crate) events: Vec<Event>,
    /// Whether events carry `prev_kv` (see [`Store::set_events_prev_kv`]).
    events_prev_kv: bool,
    /// The last view handed out by [`Store::shared_read_view`], until the store next changes.
    latest_view: Arc<LatestView<B::View>>,
    poisoned: bool,
}

impl<B: Backend> std::fmt::Debug for Store<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("current_revision", &self.current_revision)
            .field("compacted_revision", &self.index.compacted())
            .field("applied_index", &self.applied_index)
            .field("keys", &self.index.read().len())
            .finish()
    }
}

fn meta_i64(meta: &BTreeMap<String, Vec<u8>>, name: &'static str, default: i64) -> Result<i64, DecodeError> {
    match meta.get(name) {
        None => Ok(default),
        Some(v) => <[u8; 8]>::try_from(v.as_slice())
            .map(i64::from_be_bytes)
            .map_err(|_| DecodeError::new(name, 0, format!("length {} != 8", v.len()))),
    }
}

impl<B: Backend> Store<B> {
    /// Opens the store on `backend`, rebuilding the key index and lease attachments by
    /// scanning it (values are read once and not kept).
    pub fn open(backend: B, opts: StoreOptions) -> Result<Self, StorageError> {
        let mut store = Store {
            backend,
            opts,
            index: Arc::new(SharedIndex::new(Index::new(), -1)),
            leases: Leases::new(),
            current_revision: 1,
            compaction_cursor: None,
            applied_index: 0,
            durable_applied_index: 0,
            durable_revision: 1,
            syncing: None,
            finished_sync: None,
            checkpoint: Arc::default(),
            pending: WriteBatch::default(),
            unwritten: Arc::default(),
            unwritten_bytes: 0,
            events: Vec::new(),
            events_prev_kv: true,
            latest_view: Arc::default(),
            poisoned: false,
        };
        store.load()?;
        Ok(store)
    }

    /// (Re)builds every in-memory structure from the backend.
    pub(crate) fn load(&mut self) -> Result<(), StorageError> {
        // Views taken before keep the old index (matching their records); the store starts anew.
        self.latest_view.clear();
        // A sync in flight was of the content being replaced (the backend waited for it).
        self.syncing = None;
        self.index = Arc::new(SharedIndex::new(Index::new(), -1));
        let meta = self.backend.load_meta()?;
        let applied = meta_i64(&meta, META_APPLIED_INDEX, 0)?;
        self.applied_index = applied as u64;
        self.durable_applied_index = self.applied_index;
        self.current_revision = meta_i64(&meta, META_CURRENT_REVISION, 1)?;
        self.durable_revision = self.current_revision;
        let compacted = meta_i64(&meta, META_COMPACTED_REVISION, -1)?;
        self.index.set_compacted(&mut self.index.write(), compacted);
        self.compaction_cursor = match meta.get(META_COMPACTION_CURSOR) {
            None => None,
            Some(v) if v.is_empty() => None,
            Some(v) => Some(Revision::from_key(v)?),
        };
        self.forget_uncommitted();
        self.events.clear();
        self.leases.clear();
        for (id, rec) in self.backend.load_leases()? {
            self.leases.insert(id, Lease::decode(&rec)?);
        }
        self.rebuild_index()?;
        self.poisoned = false;
        Ok(())
    }

    fn stamp(&self) -> Stamp {
        Stamp {
            applied_index: self.applied_index,
            current_revision: self.current_revision,
            compacted_revision: self.index.compacted(),
        }
    }

    /// The key index from its checkpoint and the records stored after it when the checkpoint fits
    /// the store (see `index_checkpoint`), else rebuilt from every record.
    fn rebuild_index(&mut self) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        let (compacted, current) = (self.index.compacted(), self.current_revision);
        let saved = self.backend.load_index_checkpoint();
        let mut checkpointed = -1;
        let replayed = match saved {
            Some(saved) => {
                let at = saved.stamp;
                if at.compacted_revision <= compacted
                    && compacted <= at.current_revision
                    && at.current_revision <= current
                {
                    match self.replay(saved) {
                        Ok(replayed) => {
                            checkpointed = at.current_revision;
                            Some(replayed)
                        }
                        Err(error) => {
                            tracing::warn!(%error, "the key index checkpoint does not replay: rebuilding the index");
                            None
                        }
                    }
                } else {
                    tracing::info!(
                        checkpoint = ?at,
                        current,
                        compacted,
                        "the key index checkpoint does not fit the store: rebuilding the index"
                    );
                    None
                }
            }
            None => None,
        };
        self.checkpoint.revision.store(checkpointed, std::sync::atomic::Ordering::Release);
        let built = match replayed {
            Some((index, revisions)) => {
                tracing::info!(
                    keys = index.len(),
                    checkpoint = checkpointed,
                    replayed = revisions,
                    ms = started.elapsed().as_millis() as u64,
                    "loaded the key index from its checkpoint and the records after it"
                );
                index
            }
            None => {
                let mut rebuild = IndexRebuild::new(current, compacted);
                self.backend.for_each_record_header(Revision::ZERO, &mut |rev, header| rebuild.add(rev, header))?;
                rebuild.finish()?
            }
        };
        let mut index = self.index.write();
        *index = built;
        // A compaction interrupted before its backend deletion finished left dead revisions.
        let at = self.index.compacted();
        if at > 0 {
            index.retain(|_, ki| !ki.compact(at));
        }
        for (key, ki) in index.iter_mut() {
            if ki.lease == 0 {
                continue;
            }
            match self.leases.get_mut(&ki.lease) {
                Some(l) => {
                    l.keys.insert(key.clone());
                }
                // As etcd: a key whose lease is gone stays, unattached.
                None => ki.lease = 0,
            }
        }
        Ok(())
    }

    /// The checkpoint's index brought up to the store: every record stored above its revision,
    /// in revision order, as apply recorded them. Returns the index and how many records it took.
    fn replay(&self, saved: SavedIndex) -> Result<(Index, u64), StorageError> {
        let SavedIndex { stamp, mut index } = saved;
        let current = self.current_revision;
        let mut replayed = 0u64;
        let from = Revision::new(stamp.current_revision + 1, 0);
        self.backend.for_each_record_header(from, &mut |rev, header| {
            let rec = StoredRecord::decode_header(header)?;
            if rev.main > current {
                return Err(corrupt(format!("revision {} above current revision {current}", rev.main)));
            }
            replayed += 1;
            let ki = match index.get_mut(rec.key) {
                Some(ki) => ki,
                None => index.entry(Bytes::copy_from_slice(rec.key)).or_default(),
            };
            // Compaction removed nothing above the checkpoint: every tombstone ends a live key.
            if !ki.restore(rev, rec.tombstone, rec.create_revision, rec.version, rec.lease) {
                return Err(dead_tombstone(rev));
            }
            Ok(())
        })?;
        Ok((index, replayed))
    }

    pub(crate) fn check_poisoned(&self) -> Result<(), StorageError> {
        if self.poisoned {
            Err(StorageError::Poisoned)
        } else {
            Ok(())
        }
    }

    fn poison<T>(&mut self, e: StorageError) -> Result<T, StorageError> {
        Err(self.poison_error(e))
    }

    /// Marks the store unusable after a storage error and returns the error.
    pub(crate) fn poison_error(&mut self, e: StorageError) -> StorageError {
        self.poisoned = true;
        self.latest_view.clear();
        e
    }

    /// Applies the command of raft entry `index`. Entries at or below the applied index are
    /// skipped (idempotent replay after a restart). The effects are visible to reads at
    /// once and durable after the next [`Store::commit`].
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Result<ApplyOutcome, StorageError> {
        self.check_poisoned()?;
        if index <= self.applied_index {
            return Ok(ApplyOutcome::Skipped);
        }
        // Before the change: a reader must never find a view older than a write it saw answered.
        self.latest_view.clear();
        let result = match self.apply_command(cmd) {
            Err(MvccError::Storage(e)) => return self.poison(e),
            other => other,
        };
        self.applied_index = index;
        Ok(ApplyOutcome::Applied(result))
    }

    /// Records that raft entry `index` carried no command (an empty entry or a membership
    /// change), so replay after a restart starts after it.
    pub fn advance_applied(&mut self, index: u64) -> Result<(), StorageError> {
        self.check_poisoned()?;
        self.applied_index = self.applied_index.max(index);
        Ok(())
    }

    fn apply_command(&mut self, cmd: &Command) -> Result<Response, MvccError> {
        match cmd {
            Command::Put(p) => self.put(p).map(Response::Put),
            Command::DeleteRange(d) => self.delete_range(d).map(Response::DeleteRange),
            Command::Txn(t) => self.txn(t).map(Response::Txn),
            Command::Compact { revision } => self.compact(*revision),
            Command::LeaseGrant { id, ttl_seconds } => self.lease_grant(*id, *ttl_seconds),
            Command::LeaseRevoke { id } => self.lease_revoke(*id),
            Command::LeaseCheckpoint { id, remaining_ttl_seconds } => {
                Ok(self.lease_checkpoint(*id, *remaining_ttl_seconds))
            }
        }
    }

    /// Writes everything applied since the last commit, with the applied index, in one
    /// backend transaction. Durable when this returns (with every buffered commit before it).
    pub fn commit(&mut self) -> Result<(), StorageError> {
        if !self.gather_for_durable_commit()? {
            return Ok(());
        }
        let batch = self.take_unwritten();
        if let Err(e) = self.backend.commit(&batch) {
            return self.poison(e);
        }
        self.durable_applied_index = self.applied_index;
        self.durable_revision = self.current_revision;
        Ok(())
    }

    /// [`Store::commit`] without waiting for the disk: everything applied goes to the backend
    /// (not yet durable) and the backend makes it durable on another thread; the durable
    /// applied index moves once that finishes (seen by [`Store::poll_sync`], which every call
    /// runs first). While one sync runs, this is a [`Store::commit_buffered`]. Durability is the
    /// same as with `commit`, only later: the host keeps its log until the durable applied index
    /// passes it, and a crash before the sync finishes replays from the last durable commit.
    pub fn commit_in_background(&mut self) -> Result<(), StorageError> {
        self.poll_sync()?;
        if self.syncing.is_some() {
            return self.commit_buffered();
        }
        if !self.gather_for_durable_commit()? {
            return Ok(());
        }
        self.write_buffered()?;
        if let Err(e) = self.backend.start_sync() {
            return self.poison(e);
        }
        // Seen by the next call's poll at the soonest, even where the backend is done at once.
        self.syncing = Some((self.applied_index, self.current_revision));
        Ok(())
    }

    /// Takes note of a finished background sync (see [`Store::commit_in_background`]); a failed
    /// one poisons the store, as a failed commit does.
    pub fn poll_sync(&mut self) -> Result<(), StorageError> {
        let Some((applied, revision)) = self.syncing else { return Ok(()) };
        match self.backend.sync_finished() {
            Ok(None) => Ok(()),
            Ok(Some(took)) => {
                self.syncing = None;
                self.finished_sync = Some(took);
                // A durable commit since may have gone further.
                if applied > self.durable_applied_index {
                    self.durable_applied_index = applied;
                    self.durable_revision = revision;
                }
                Ok(())
            }
            Err(e) => self.poison(e),
        }
    }

    /// Whether a background sync is in flight.
    pub fn syncing(&self) -> bool {
        self.syncing.is_some()
    }

    /// How long the background sync that finished last took (once; for metrics).
    pub fn take_finished_sync(&mut self) -> Option<std::time::Duration> {
        self.finished_sync.take()
    }

    /// Everything a durable commit carries, gathered into the unwritten batch (this commit's share
    /// of compaction, the meta, the pending changes); `false` when there is nothing to make
    /// durable.
    fn gather_for_durable_commit(&mut self) -> Result<bool, StorageError> {
        self.check_poisoned()?;
        self.compact_some()?;
        if self.pending.is_empty() && self.unwritten.is_empty() && self.applied_index == self.durable_applied_index {
            return Ok(false);
        }
        self.stage_meta();
        self.absorb_pending();
        Ok(true)
    }

    /// The pending batch joins the unwritten one (copied first if a read view still holds it).
    fn absorb_pending(&mut self) {
        let batch = std::mem::take(&mut self.pending);
        self.unwritten_bytes += batch.approx_bytes();
        Arc::make_mut(&mut self.unwritten).absorb(batch);
    }

    fn take_unwritten(&mut self) -> Arc<WriteBatch> {
        self.unwritten_bytes = 0;
        std::mem::take(&mut self.unwritten)
    }

    /// Drops what is applied and not written to the backend (a reload, or a failed restore).
    pub(crate) fn forget_uncommitted(&mut self) {
        self.pending = WriteBatch::default();
        self.take_unwritten();
    }

    /// Hands the buffered changes to the backend without waiting for the disk (they stay
    /// exactly as durable as before: see [`Store::commit_buffered`]), so that the backend alone
    /// holds everything committed: what a copy of its file needs ([`Store::begin_copy`]).
    pub fn write_buffered(&mut self) -> Result<(), StorageError> {
        self.check_poisoned()?;
        if self.unwritten.is_empty() {
            return Ok(());
        }
        let batch = self.take_unwritten();
        if let Err(e) = self.backend.commit_buffered(&batch) {
            return self.poison(e);
        }
        Ok(())
    }

    /// The share of pending compaction a commit carries ([`StoreOptions::compaction_batch_per_commit`]).
    fn compact_some(&mut self) -> Result<(), StorageError> {
        if self.opts.compaction_batch_per_commit > 0 && self.compaction_cursor.is_some() {
            if let Err(e) = self.compaction_step(self.opts.compaction_batch_per_commit) {
                return self.poison(e);
            }
        }
        Ok(())
    }

    /// Closing cleanly: commits everything durably and checkpoints the key index as of the
    /// current revision, so that the next open loads it and replays nothing (a 1M-key store:
    /// about 1.5 s less than a rebuild). Waits for a background checkpoint being written. Returns
    /// whether it was saved (a backend that is not a file has nowhere to put it). The store stays
    /// usable.
    pub fn save_index(&mut self) -> Result<bool, StorageError> {
        self.commit()?;
        let Some(path) = self.backend.index_checkpoint_path() else { return Ok(false) };
        index_checkpoint::save(&path, &self.checkpoint, &self.index, self.stamp())
            .map_err(|e| StorageError::Backend(format!("save the key index to {}: {e}", path.display())))?;
        Ok(true)
    }

    /// Whether a background checkpoint of the key index is due: `every_revisions` have become
    /// durable since the last one, or compaction has passed it (an open can no longer use it).
    pub fn index_checkpoint_due(&self, every_revisions: i64) -> bool {
        let last = self.checkpoint.revision.load(std::sync::atomic::Ordering::Acquire);
        let (durable, compacted) = (self.durable_revision, self.index.compacted());
        durable > last && (durable - last >= every_revisions || (compacted > last && durable >= compacted))
    }

    /// The revision of the newest key index checkpoint written (or loaded at open), if any.
    pub fn index_checkpoint_revision(&self) -> Option<i64> {
        Some(self.checkpoint.revision.load(std::sync::atomic::Ordering::Acquire)).filter(|&r| r >= 0)
    }

    /// A checkpoint of the key index as of the durable revision, for the host to write on another
    /// thread ([`IndexCheckpoint::write`]) while the store applies on. `None` for a backend that
    /// is not a file, or while another is being written.
    pub fn begin_index_checkpoint(&self) -> Option<IndexCheckpoint> {
        let path = self.backend.index_checkpoint_path()?;
        if !self.checkpoint.claim() {
            return None;
        }
        Some(IndexCheckpoint {
            index: Arc::clone(&self.index),
            state: Arc::clone(&self.checkpoint),
            path,
            revision: self.durable_revision,
            applied_index: self.durable_applied_index,
        })
    }

    /// Like [`Store::commit`], without waiting for the disk: the changes are kept in memory
    /// (handed to the backend, unsynced, once they pass [`UNWRITTEN_BYTES_MAX`]) and a crash may
    /// lose them, back to [`Store::durable_applied_index`], which this does not advance. The host
    /// must be able to replay from there (a raft log not yet truncated past it, or a snapshot).
    pub fn commit_buffered(&mut self) -> Result<(), StorageError> {
        self.check_poisoned()?;
        self.compact_some()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        self.stage_meta();
        self.absorb_pending();
        if self.unwritten_bytes >= UNWRITTEN_BYTES_MAX {
            self.write_buffered()?;
        }
        Ok(())
    }

    /// Applies `entries` in order and commits them as one backend transaction.
    pub fn apply_batch(&mut self, entries: &[(u64, Command)]) -> Result<Vec<ApplyOutcome>, StorageError> {
        let mut out = Vec::with_capacity(entries.len());
        for (index, cmd) in entries {
            out.push(self.apply(*index, cmd)?);
        }
        self.commit()?;
        Ok(out)
    }

    /// Sets a meta entry of the host's own (e.g. the auth store), committed atomically with the
    /// changes applied so far and the applied index: on a restart it reflects exactly the
    /// entries up to the durable applied index, like the data.
    pub fn stage_host_meta(&mut self, name: &'static str, value: Vec<u8>) {
        self.pending.meta.insert(name, value);
    }

    pub(crate) fn stage_meta(&mut self) {
        let m = &mut self.pending.meta;
        m.insert(META_APPLIED_INDEX, (self.applied_index as i64).to_be_bytes().to_vec());
        m.insert(META_CURRENT_REVISION, self.current_revision.to_be_bytes().to_vec());
        m.insert(META_COMPACTED_REVISION, self.index.compacted().to_be_bytes().to_vec());
        m.insert(META_COMPACTION_CURSOR, self.compaction_cursor.map_or_else(Vec::new, |c| c.to_key().to_vec()));
    }

    /// Whether the events of changes applied from now on carry the value each change replaced
    /// (on by default). Reading it costs a backend read per change, so a host turns it off while
    /// none of its watchers asks for `prev_kv`; events applied meanwhile say so
    /// ([`Event::prev_kv_read`]). Only events change: applying gives the same result either way.
    pub fn set_events_prev_kv(&mut self, on: bool) {
        self.events_prev_kv = on;
    }

    /// Whether the change being applied reads the value it replaces for its event.
    pub(crate) fn events_read_prev(&self) -> bool {
        self.opts.record_events && self.events_prev_kv
    }

    /// Drains the events of every change applied since the last call, in revision order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// A read (etcd `Range`), seeing everything applied, committed or not.
    pub fn range(&self, q: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.check_poisoned()?;
        self.range_at(q, self.current_revision)
    }

    /// A read of the store as it is now (everything applied, committed or not) that another
    /// thread can serve while this one applies on: ranges, history and hashes at the current
    /// revision. Cheap: a backend read transaction and, only if something is applied but not
    /// yet committed, a copy of that.
    pub fn read_view(&self) -> Result<ReadView<B::View>, StorageError> {
        self.check_poisoned()?;
        let pending = WriteBatch {
            put_revisions: self.pending.put_revisions.clone(),
            delete_revisions: self.pending.delete_revisions.clone(),
            ..WriteBatch::default()
        };
        let unwritten = Arc::clone(&self.unwritten);
        Ok(ReadView::new(Arc::clone(&self.index), self.backend.read_view()?, unwritten, pending, self.current_revision))
    }

    /// [`Store::read_view`], shared: the view taken last if nothing was applied since, else a new
    /// one, kept in [`Store::latest_view`] for readers on other threads until the next apply.
    pub fn shared_read_view(&self) -> Result<Arc<ReadView<B::View>>, StorageError> {
        if let Some(view) = self.latest_view.get() {
            return Ok(view);
        }
        let view = Arc::new(self.read_view()?);
        self.latest_view.set(Arc::clone(&view));
        Ok(view)
    }

    /// Where readers on other threads find the store's latest view (see [`LatestView`]).
    pub fn latest_view(&self) -> Arc<LatestView<B::View>> {
        Arc::clone(&self.latest_view)
    }

    pub(crate) fn reader(&self) -> Reader<'_, B> {
        Reader {
            index: &self.index,
            records: &self.backend,
            unwritten: &self.unwritten,
            pending: &self.pending,
            current: self.current_revision,
        }
    }

    pub(crate) fn range_at(&self, q: &RangeRequest, cur: i64) -> Result<RangeResponse, MvccError> {
        self.reader().range_at(q, cur)
    }

    /// The current (latest) revision.
    pub fn current_revision(&self) -> i64 {
        self.current_revision
    }

    /// The compacted revision (-1 before any compaction, as etcd, so compacting at 0 is allowed
    /// once).
    pub fn compacted_revision(&self) -> i64 {
        self.index.compacted()
    }

    /// Highest raft index applied (visible to reads).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Highest raft index whose effects are durable in the backend.
    pub fn durable_applied_index(&self) -> u64 {
        self.durable_applied_index
    }

    /// Whether backend deletion of a compaction is still pending.
    pub fn compaction_pending(&self) -> bool {
        self.compaction_cursor.is_some()
    }

    /// Number of keys in the index (alive or with visible history).
    pub fn indexed_keys(&self) -> usize {
        self.index.read().len()
    }

    /// A lease's TTLs and attached keys.
    pub fn lease_ttl(&self, id: i64) -> Option<LeaseInfo> {
        self.leases.get(&id).map(|l| l.info(id))
    }

    /// Every granted lease, by id.
    pub fn leases(&self) -> Vec<LeaseInfo> {
        self.leases.iter().map(|(id, l)| l.info(*id)).collect()
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Gives the backend back (uncommitted changes are dropped, as in a crash).
    pub fn into_backend(self) -> B {
        self.backend
    }

    pub(crate) fn load_kvs(&self, revs: &[Revision]) -> Result<Vec<KeyValue>, StorageError> {
        self.reader().load_kvs(revs)
    }

    /// The key's kv at main revision `at`, if alive.
    pub(crate) fn get_kv(&self, key: &[u8], at: i64) -> Result<Option<KeyValue>, StorageError> {
        self.reader().get_kv(key, at)
    }

    /// See [`Reader::scan_merged`].
    pub(crate) fn scan_merged(&self, from: Revision, to: Revision, limit: usize) -> Result<ScanChunk, StorageError> {
        self.reader().scan_merged(from, to, limit)
    }

    /// See [`Reader::is_live`].
    pub(crate) fn is_live(&self, rev: Revision, key: &Bytes) -> bool {
        self.reader().is_live(rev, key)
    }
}
