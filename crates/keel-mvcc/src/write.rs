//! Writes: put, delete, lease grant/revoke/checkpoint and compaction, all through a
//! [`WriteTxn`] that gives every change of one command the same main revision.

use bytes::Bytes;

use crate::backend::Backend;
use crate::error::{MvccError, StorageError};
use crate::kv::{Event, EventKind, KeyValue, StoredRecord};
use crate::lease::Lease;
use crate::range::KeyRange;
use crate::request::{DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, Response};
use crate::revision::Revision;
use crate::store::Store;

/// etcd's `MaxLeaseTTL` (about 285 years).
pub const MAX_LEASE_TTL_SECONDS: i64 = 9_000_000_000;

/// One write transaction: every change gets `main = begin + 1` and the next `sub`.
#[derive(Debug)]
pub(crate) struct WriteTxn {
    begin: i64,
    changes: i64,
}

impl WriteTxn {
    pub(crate) fn new(begin: i64) -> Self {
        WriteTxn { begin, changes: 0 }
    }

    /// The revision reads inside the txn see: its own writes once it has any (etcd's
    /// `storeTxnWrite.Range`).
    pub(crate) fn read_rev(&self) -> i64 {
        if self.changes > 0 {
            self.begin + 1
        } else {
            self.begin
        }
    }

    fn next_rev(&mut self) -> Revision {
        let rev = Revision::new(self.begin + 1, self.changes);
        self.changes += 1;
        rev
    }
}

/// A put's API-level checks (etcd's `checkPutRequest`).
pub(crate) fn check_put_provided(p: &PutRequest) -> Result<(), MvccError> {
    if p.ignore_value && !p.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

impl<B: Backend> Store<B> {
    /// Ends a write txn: the main revision moves only if something changed.
    pub(crate) fn finish_write(&mut self, w: WriteTxn) {
        self.current_revision = w.read_rev();
    }

    fn detach(&mut self, lease: i64, key: &Bytes) {
        if lease != 0 {
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.remove(key);
            }
        }
    }

    /// Writes one put. `prev` is the key's previous kv when the caller already read it.
    pub(crate) fn write_put(
        &mut self,
        w: &mut WriteTxn,
        key: &Bytes,
        value: Bytes,
        lease: i64,
        prev: Option<Option<KeyValue>>,
    ) -> Result<(), StorageError> {
        let rev = w.next_rev();
        let prev = match prev {
            Some(p) => Some(p),
            None if self.events_read_prev() => Some(self.get_kv(key, rev.main)?),
            None => None,
        };
        let (create_revision, version, old_lease) = {
            let mut index = self.index.write();
            let ki = index.entry(key.clone()).or_default();
            let (create_revision, version) = ki.put(rev);
            (create_revision, version, std::mem::replace(&mut ki.lease, lease))
        };
        self.detach(old_lease, key);
        if lease != 0 {
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.insert(key.clone());
            }
        }
        let kv = KeyValue { key: key.clone(), create_revision, mod_revision: rev.main, version, value, lease };
        let record = StoredRecord { kv, tombstone: false };
        self.pending.put_revision(rev, record.encode());
        if self.opts.record_events {
            let prev_kv_read = prev.is_some();
            self.events.push(Event { kind: EventKind::Put, kv: record.kv, prev_kv: prev.flatten(), prev_kv_read });
        }
        Ok(())
    }

    /// Writes one delete of an alive key.
    /// `prev` is the key's value before the delete when it was read (see [`Store::events_read_prev`]).
    fn write_delete(&mut self, w: &mut WriteTxn, key: &Bytes, prev: Option<Option<KeyValue>>) {
        let rev = w.next_rev();
        let old_lease = {
            let mut index = self.index.write();
            let ki = index.get_mut(key).expect("deleted keys are alive in the index");
            let ended = ki.tombstone(rev);
            debug_assert!(ended, "deleted keys are alive");
            std::mem::take(&mut ki.lease)
        };
        self.detach(old_lease, key);
        let kv = KeyValue { key: key.clone(), mod_revision: rev.main, ..KeyValue::default() };
        let record = StoredRecord { kv, tombstone: true };
        self.pending.put_revision(rev, record.encode());
        if self.opts.record_events {
            let prev_kv_read = prev.is_some();
            self.events.push(Event { kind: EventKind::Delete, kv: record.kv, prev_kv: prev.flatten(), prev_kv_read });
        }
    }

    /// etcd `Put` as a command of its own.
    pub(crate) fn put(&mut self, p: &PutRequest) -> Result<PutResponse, MvccError> {
        check_put_provided(p)?;
        if p.lease != 0 && !self.leases.contains_key(&p.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        let mut w = WriteTxn::new(self.current_revision);
        let resp = self.put_in(&mut w, p)?;
        self.finish_write(w);
        Ok(resp)
    }

    /// A put inside a write txn (leases already checked).
    pub(crate) fn put_in(&mut self, w: &mut WriteTxn, p: &PutRequest) -> Result<PutResponse, MvccError> {
        let ignore = p.ignore_value || p.ignore_lease;
        let existing = if ignore || p.prev_kv || self.events_read_prev() {
            Some(self.get_kv(&p.key, w.read_rev())?)
        } else {
            None
        };
        let current = existing.clone().flatten();
        if ignore && current.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        let value = match (&current, p.ignore_value) {
            (Some(kv), true) => kv.value.clone(),
            _ => p.value.clone(),
        };
        let lease = match (&current, p.ignore_lease) {
            (Some(kv), true) => kv.lease,
            _ => p.lease,
        };
        self.write_put(w, &p.key, value, lease, existing)?;
        Ok(PutResponse { revision: w.read_rev(), prev_kv: if p.prev_kv { current } else { None } })
    }

    /// etcd `DeleteRange` as a command of its own.
    pub(crate) fn delete_range(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        let mut w = WriteTxn::new(self.current_revision);
        let resp = self.delete_range_in(&mut w, d)?;
        self.finish_write(w);
        Ok(resp)
    }

    /// A delete inside a write txn.
    pub(crate) fn delete_range_in(
        &mut self,
        w: &mut WriteTxn,
        d: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, StorageError> {
        let at = w.read_rev();
        let entries = KeyRange::new(&d.key, &d.range_end).alive_at(&self.index.read(), at);
        let read_prevs = d.prev_kv || self.events_read_prev();
        let prevs = if read_prevs {
            let revs: Vec<_> = entries.iter().map(|(_, e)| e.rev).collect();
            self.load_kvs(&revs)?
        } else {
            Vec::new()
        };
        let mut prev_iter = prevs.iter().cloned();
        for (key, _) in &entries {
            let prev = read_prevs.then(|| prev_iter.next());
            self.write_delete(w, key, prev);
        }
        Ok(DeleteRangeResponse {
            revision: w.read_rev(),
            deleted: entries.len() as i64,
            prev_kvs: if d.prev_kv { prevs } else { Vec::new() },
        })
    }

    /// etcd `Compact`: history below `rev` becomes unreadable at once; the backend
    /// deletion runs later in bounded steps ([`Store::compaction_step`]).
    pub(crate) fn compact(&mut self, rev: i64) -> Result<Response, MvccError> {
        if rev <= self.compacted_revision() {
            return Err(MvccError::Compacted);
        }
        if rev > self.current_revision {
            return Err(MvccError::FutureRevision);
        }
        // In-memory only (no IO): drop index entries invisible at every readable revision.
        let mut index = self.index.write();
        self.index.set_compacted(&mut index, rev);
        index.retain(|_, ki| !ki.compact(rev));
        drop(index);
        // Restart from the beginning: revisions kept by an earlier compaction may be dead now.
        self.compaction_cursor = Some(Revision::ZERO);
        Ok(Response::Compact { revision: self.current_revision })
    }

    /// Deletes up to `max_revisions` examined stored revisions made dead by compaction.
    /// Returns true when no compaction work is left. The deletions join the pending batch
    /// (durable at the next [`Store::commit`]). Reads are unaffected: only revisions no
    /// read can reach are deleted.
    pub fn compaction_step(&mut self, max_revisions: usize) -> Result<bool, StorageError> {
        let Some(cursor) = self.compaction_cursor else {
            return Ok(true);
        };
        let to = Revision::after_main(self.compacted_revision());
        let (chunk, next) = self.scan_merged(cursor, to, max_revisions)?;
        for (rev, bytes) in chunk {
            let rec = StoredRecord::decode(&bytes)?;
            if !self.is_live(rev, &rec.kv.key) {
                self.pending.delete_revision(rev);
            }
        }
        self.compaction_cursor = next;
        Ok(next.is_none())
    }

    pub(crate) fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<Response, MvccError> {
        if id == 0 {
            return Err(MvccError::LeaseNotFound);
        }
        if ttl > MAX_LEASE_TTL_SECONDS {
            return Err(MvccError::LeaseTtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(MvccError::LeaseExists);
        }
        let lease = Lease::new(ttl);
        self.pending.put_lease(id, lease.encode());
        self.leases.insert(id, lease);
        Ok(Response::LeaseGrant { revision: self.current_revision, id, ttl })
    }

    /// Revokes a lease, deleting its keys in one revision (sorted: the same order on
    /// every replica), and the lease record in the same batch.
    pub(crate) fn lease_revoke(&mut self, id: i64) -> Result<Response, MvccError> {
        let Some(lease) = self.leases.get(&id) else {
            return Err(MvccError::LeaseNotFound);
        };
        let keys: Vec<Bytes> = lease.keys.iter().cloned().collect();
        let mut w = WriteTxn::new(self.current_revision);
        for key in keys {
            let d = DeleteRangeRequest { key, range_end: Bytes::new(), prev_kv: false };
            self.delete_range_in(&mut w, &d)?;
        }
        self.finish_write(w);
        self.leases.remove(&id);
        self.pending.delete_lease(id);
        Ok(Response::LeaseRevoke { revision: self.current_revision })
    }

    /// Records a lease's remaining TTL; unknown leases are ignored (as etcd).
    pub(crate) fn lease_checkpoint(&mut self, id: i64, remaining: i64) -> Response {
        if let Some(l) = self.leases.get_mut(&id) {
            l.remaining = Some(remaining);
            let rec = l.encode();
            self.pending.put_lease(id, rec);
        }
        Response::LeaseCheckpoint { revision: self.current_revision }
    }
}
