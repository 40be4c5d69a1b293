//! Reading history back from the backend: watch catch-up (`events_since`) and the
//! replica-comparison hash (`hash_kv`).

use bytes::Bytes;

use crate::backend::{Backend, RevisionSource};
use crate::error::{MvccError, StorageError};
use crate::kv::{Event, EventKind, KeyValue, StoredRecord};
use crate::range::KeyRange;
use crate::read::Reader;
use crate::revision::Revision;
use crate::store::{HashKv, Store, SCAN_CHUNK};

/// Records one history step may read for each event it may return.
const SCANNED_PER_EVENT_MAX: usize = 16;

/// A bounded slice of history, for watchers catching up in steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventBatch {
    /// Events in revision order; a revision's events are never split across batches.
    pub events: Vec<Event>,
    /// Where the next batch starts; `current_revision + 1` when caught up.
    pub next_revision: i64,
}

impl<B: Backend> Store<B> {
    /// Every event on `[key, range_end)` (etcd conventions) from `start_revision` to now,
    /// in revision order, without `prev_kv`. Errors with `Compacted` below the compacted
    /// revision (as etcd's watch).
    pub fn events_since(&self, start_revision: i64, key: &[u8], range_end: &[u8]) -> Result<Vec<Event>, MvccError> {
        Ok(self.events_batch(start_revision, key, range_end, usize::MAX, false)?.events)
    }

    /// Like [`Store::events_since`], stopping after about `max_events` (at a revision
    /// boundary) and optionally filling `prev_kv` where the previous value is still kept.
    pub fn events_batch(
        &self,
        start_revision: i64,
        key: &[u8],
        range_end: &[u8],
        max_events: usize,
        with_prev_kv: bool,
    ) -> Result<EventBatch, MvccError> {
        self.check_poisoned()?;
        self.reader().events_batch(start_revision, key, range_end, max_events, with_prev_kv)
    }

    /// Reads `prev_kv` into the events applied while no watcher wanted it (see
    /// [`Store::set_events_prev_kv`]) for a watcher that asked since. Called before anything else
    /// is applied, so each value they replaced is still there — unless a compaction to a revision
    /// at or past the event was applied with it, which leaves `prev_kv` empty, as history does.
    pub fn fill_prev_kv(&self, events: &mut [Event]) -> Result<(), MvccError> {
        self.check_poisoned()?;
        let reader = self.reader();
        for event in events.iter_mut().filter(|e| !e.prev_kv_read) {
            let prev =
                reader.index.read().get(&event.kv.key).and_then(|ki| ki.prev_value_at_main(event.kv.mod_revision));
            event.prev_kv = match prev {
                Some(prev) => reader.load_kvs(&[prev])?.pop(),
                None => None,
            };
            event.prev_kv_read = true;
        }
        Ok(())
    }

    /// etcd `HashKV`: a CRC-32C of every visible revision `<= revision` (0 = current) in
    /// revision order. Independent of how far backend compaction has progressed, so equal
    /// on replicas that applied the same commands.
    pub fn hash_kv(&self, revision: i64) -> Result<HashKv, MvccError> {
        self.check_poisoned()?;
        self.reader().hash_kv(revision)
    }
}

impl<R: RevisionSource + ?Sized> Reader<'_, R> {
    pub(crate) fn events_batch(
        &self,
        start_revision: i64,
        key: &[u8],
        range_end: &[u8],
        max_events: usize,
        with_prev_kv: bool,
    ) -> Result<EventBatch, MvccError> {
        self.check_not_compacted(start_revision)?;
        let range = KeyRange::new(key, range_end);
        let end = Revision::after_main(self.current);
        let mut cursor = Revision::new(start_revision.max(1), 0);
        let mut events = Vec::new();
        // Bounded by what is read, not only by what matches: a watcher of a rare key must not
        // scan all of history in one step (the caller runs on the driver thread).
        let scan_max = max_events.saturating_mul(SCANNED_PER_EVENT_MAX).max(SCAN_CHUNK);
        let mut scanned = 0usize;
        let mut last_main = None;
        loop {
            let (chunk, next) = self.scan_merged(cursor, end, SCAN_CHUNK)?;
            // Compaction passing the start meanwhile (on another thread) would hide events.
            self.check_not_compacted(start_revision)?;
            for (rev, bytes) in chunk {
                if events.len() >= max_events && events.last().is_some_and(|e: &Event| e.kv.mod_revision != rev.main) {
                    return Ok(EventBatch { events, next_revision: rev.main });
                }
                // Only between revisions, so a revision's events are never split.
                if scanned >= scan_max && last_main.is_some_and(|main| main != rev.main) {
                    return Ok(EventBatch { events, next_revision: rev.main });
                }
                scanned += 1;
                last_main = Some(rev.main);
                let rec = StoredRecord::decode(&bytes).map_err(StorageError::from)?;
                if !range.contains(&rec.kv.key) || !self.is_live(rev, &rec.kv.key) {
                    continue;
                }
                let prev_kv = if with_prev_kv { self.prev_kv(&rec.kv.key, rev)? } else { None };
                events.push(to_event(rec, rev, prev_kv, with_prev_kv));
            }
            match next {
                Some(n) => cursor = n,
                None => break,
            }
        }
        Ok(EventBatch { events, next_revision: self.current + 1 })
    }

    fn prev_kv(&self, key: &Bytes, rev: Revision) -> Result<Option<KeyValue>, MvccError> {
        let prev = self.index.read().get(key).and_then(|ki| ki.prev_value(rev));
        let Some(prev) = prev else {
            return Ok(None);
        };
        Ok(self.load_kvs(&[prev])?.pop())
    }

    pub(crate) fn hash_kv(&self, revision: i64) -> Result<HashKv, MvccError> {
        let at = if revision <= 0 { self.current } else { revision };
        if at > self.current {
            return Err(MvccError::FutureRevision);
        }
        let compact_revision = self.index.compacted();
        self.check_not_compacted(at)?;
        let end = Revision::after_main(at);
        let mut cursor = Revision::ZERO;
        let mut hash = 0u32;
        loop {
            let (chunk, next) = self.scan_merged(cursor, end, SCAN_CHUNK)?;
            // Revisions kept by compaction are told apart through the index: a compaction
            // meanwhile (on another thread) would change which are.
            if self.index.compacted() != compact_revision {
                return Err(MvccError::Compacted);
            }
            for (rev, bytes) in chunk {
                let rec = StoredRecord::decode(&bytes).map_err(StorageError::from)?;
                if self.is_live(rev, &rec.kv.key) {
                    hash = crc32c::crc32c_append(hash, &rev.to_key());
                    hash = crc32c::crc32c_append(hash, &bytes);
                }
            }
            match next {
                Some(n) => cursor = n,
                None => break,
            }
        }
        Ok(HashKv { hash, revision: self.current, compact_revision })
    }
}

fn to_event(rec: StoredRecord, rev: Revision, prev_kv: Option<KeyValue>, prev_kv_read: bool) -> Event {
    if rec.tombstone {
        Event {
            kind: EventKind::Delete,
            kv: KeyValue { key: rec.kv.key, mod_revision: rev.main, ..KeyValue::default() },
            prev_kv,
            prev_kv_read,
        }
    } else {
        Event { kind: EventKind::Put, kv: rec.kv, prev_kv, prev_kv_read }
    }
}
