//! The key index checkpointed beside the store's file, so that an open loads it and replays only
//! the revisions stored after it, instead of rebuilding it from every record.
//!
//! Rebuilding reads every record's header out of the backend: a 1M-key store spends about 1.7 s
//! on it, after redb's own 1.3 s walk over a file that was not closed. A checkpoint is written
//! - at a clean close, as of the current revision (the next open replays nothing);
//! - while the store runs, on another thread, as of the durable revision ([`IndexCheckpoint`]),
//!   so that a restart after kill -9 replays only what came since. The walk takes the index lock
//!   for [`INDEX_KEYS_PER_LOCK`] keys at a time, so apply never waits long; it writes each key as
//!   it was at the checkpoint's revision, which the multi-version index still knows.
//!
//! Why a checkpoint may be older than the store: revision `r` holds the same change on every
//! replica and in every later state of the store (raft applies one log), so an index as of `r`
//! plus the records stored above `r` is the whole index, as long as compaction has removed no
//! record above `r`. An open therefore trusts a checkpoint at revision `r` that is whole (length,
//! CRC-32C, well formed) when `compacted(checkpoint) <= compacted(store) <= r <= current(store)`,
//! and compacts the result at the store's compacted revision (a walk that raced a compaction
//! holds some keys with more history than others: compaction makes them alike). Anything else
//! means a rebuild, never an error.

use std::io::Write;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use crate::codec::{Reader, Writer};
use crate::key_index::{Index, KeyIndex};
use crate::read::{SharedIndex, INDEX_KEYS_PER_LOCK};

const MAGIC: &[u8; 8] = b"KEELIDX3";
/// Applied index, revision, compacted revision, key count.
const TRAILER_BYTES: usize = 4 * 8;

/// The store state a checkpoint describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// The store's applied raft index when the checkpoint was taken (for the log).
    pub(crate) applied_index: u64,
    /// Every revision up to this one is in the checkpoint, none above it.
    pub(crate) current_revision: i64,
    /// The compacted revision when the walk ended: no key has less history than this leaves.
    pub(crate) compacted_revision: i64,
}

/// A checkpoint read back from its file.
#[derive(Debug)]
pub struct SavedIndex {
    pub(crate) stamp: Stamp,
    pub(crate) index: Index,
}

/// What the store and the checkpoints it starts share.
#[derive(Debug)]
pub(crate) struct CheckpointState {
    /// Revision of the newest checkpoint in the file, -1 for none known.
    pub(crate) revision: AtomicI64,
    /// A background checkpoint has been started and has not ended.
    running: AtomicBool,
    /// One writer of the file at a time (a background checkpoint and the one of a clean close
    /// share its temporary file).
    writing: Mutex<()>,
}

impl Default for CheckpointState {
    fn default() -> Self {
        CheckpointState { revision: AtomicI64::new(-1), running: AtomicBool::new(false), writing: Mutex::new(()) }
    }
}

impl CheckpointState {
    /// Claims the one background slot; false if a checkpoint is being written.
    pub(crate) fn claim(&self) -> bool {
        !self.running.swap(true, Ordering::AcqRel)
    }
}

/// A checkpoint of the key index as of one durable revision, to be written on another thread
/// while the store applies on ([`crate::Store::begin_index_checkpoint`]).
#[derive(Debug)]
pub struct IndexCheckpoint {
    pub(crate) index: Arc<SharedIndex>,
    pub(crate) state: Arc<CheckpointState>,
    pub(crate) path: PathBuf,
    pub(crate) revision: i64,
    pub(crate) applied_index: u64,
}

impl IndexCheckpoint {
    /// The revision the checkpoint is taken as of.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Walks the index and writes the checkpoint durably. `Ok(false)` when a checkpoint at least
    /// as new was written meanwhile (a clean close's), which this leaves in place.
    pub fn write(self) -> std::io::Result<bool> {
        let _writing = self.state.writing.lock().unwrap_or_else(PoisonError::into_inner);
        if self.state.revision.load(Ordering::Acquire) >= self.revision {
            return Ok(false);
        }
        let stamp = write_walk(&self.path, &self.index, self.revision, self.applied_index)?;
        self.state.revision.fetch_max(stamp.current_revision, Ordering::AcqRel);
        Ok(true)
    }
}

impl Drop for IndexCheckpoint {
    fn drop(&mut self) {
        self.state.running.store(false, Ordering::Release);
    }
}

fn temporary(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Writes the checkpoint of a store that is not applying (a clean close): the index as of
/// `current_revision`.
pub(crate) fn save(path: &Path, state: &CheckpointState, index: &SharedIndex, stamp: Stamp) -> std::io::Result<()> {
    let _writing = state.writing.lock().unwrap_or_else(PoisonError::into_inner);
    let written = write_walk(path, index, stamp.current_revision, stamp.applied_index)?;
    debug_assert_eq!(written, stamp, "nothing applies during a clean close");
    state.revision.fetch_max(written.current_revision, Ordering::AcqRel);
    Ok(())
}

/// The temporary file a checkpoint is written to, renamed over the checkpoint once whole.
struct Out {
    tmp: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    crc: u32,
}

impl Out {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.file.write_all(bytes)
    }
}

/// Writes the index as of revision `at` to `path`: whole to a temporary file, then renamed over
/// `path`, so a process that dies meanwhile leaves the previous checkpoint. Returns the stamp.
///
/// Not synced: a checkpoint only saves time. After a power loss one the disk never got whole fails
/// its checksum and the index is rebuilt; syncing tens of MB every few seconds would instead
/// compete with the WAL's and the store's own syncs while the member serves.
fn write_walk(path: &Path, index: &SharedIndex, at: i64, applied_index: u64) -> std::io::Result<Stamp> {
    let tmp = temporary(path);
    let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    let mut out = Out { tmp, file, crc: 0 };
    let written = walk_into(&mut out, index, at, applied_index);
    let finished = written.and_then(|stamp| {
        drop(out.file.into_inner().map_err(|e| e.into_error())?);
        std::fs::rename(&out.tmp, path)?;
        Ok(stamp)
    });
    if finished.is_err() {
        let _ = std::fs::remove_file(&out.tmp);
    }
    finished
}

fn walk_into(out: &mut Out, index: &SharedIndex, at: i64, applied_index: u64) -> std::io::Result<Stamp> {
    out.put(MAGIC)?;
    let mut count = 0u64;
    let mut after: Option<Bytes> = None;
    loop {
        let mut w = Writer::new();
        let mut walked = 0;
        {
            let map = index.read();
            let from = after.as_ref().map_or(Bound::Unbounded, |key| Bound::Excluded(key.as_ref()));
            for (key, ki) in map.range::<[u8], _>((from, Bound::Unbounded)).take(INDEX_KEYS_PER_LOCK) {
                walked += 1;
                after = Some(key.clone());
                let mark = w.buf.len();
                w.varint(key.len() as u64);
                w.buf.extend_from_slice(key);
                if ki.encode_as_of(at, &mut w) {
                    count += 1;
                } else {
                    w.buf.truncate(mark);
                }
            }
        }
        // Written with the lock released: apply never waits for the disk.
        out.put(&w.buf)?;
        if walked < INDEX_KEYS_PER_LOCK {
            break;
        }
    }
    // Read last: every key walked had been compacted at most this far.
    let stamp = Stamp { applied_index, current_revision: at, compacted_revision: index.compacted() };
    let mut w = Writer::new();
    w.u64(stamp.applied_index);
    w.i64(stamp.current_revision);
    w.i64(stamp.compacted_revision);
    w.u64(count);
    out.put(&w.buf)?;
    let crc = out.crc;
    out.file.write_all(&crc.to_be_bytes())?;
    Ok(stamp)
}

/// Reads the checkpoint at `path`: `None` (with the reason logged) when there is none or it is
/// damaged. Whether it fits the store is the store's to decide, from its stamp.
pub(crate) fn load(path: &Path) -> Option<SavedIndex> {
    let data = match std::fs::read(path) {
        Ok(data) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the key index checkpoint: rebuilding the index");
            return None;
        }
    };
    match decode(&data) {
        Ok(saved) => Some(saved),
        Err(reason) => {
            tracing::warn!(file = %path.display(), %reason, "the key index checkpoint is damaged: rebuilding the index");
            None
        }
    }
}

/// Removes the checkpoint at `path` (the store file it described was replaced).
pub(crate) fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn decode(data: &[u8]) -> Result<SavedIndex, String> {
    let body_len = data.len().checked_sub(4).filter(|&n| n >= MAGIC.len() + TRAILER_BYTES).ok_or("too short")?;
    let (body, stored) = data.split_at(body_len);
    let stored = u32::from_be_bytes(stored.try_into().expect("4 bytes"));
    if crc32c::crc32c(body) != stored {
        return Err("checksum mismatch".into());
    }
    let (entries, trailer) = body.split_at(body.len() - TRAILER_BYTES);
    let mut t = Reader::new(trailer, "key index checkpoint trailer");
    let stamp = Stamp {
        applied_index: t.u64().map_err(|e| e.to_string())?,
        current_revision: t.i64().map_err(|e| e.to_string())?,
        compacted_revision: t.i64().map_err(|e| e.to_string())?,
    };
    let count = t.u64().map_err(|e| e.to_string())?;
    let mut r = Reader::new(entries, "key index checkpoint");
    if r.take(MAGIC.len()).map_err(|e| e.to_string())? != MAGIC {
        return Err("not a key index checkpoint".into());
    }
    // Each key takes at least its length, its lease and a generation count: a count the input
    // cannot hold is refused before anything is allocated.
    if count.saturating_mul(3) > r.remaining() as u64 {
        return Err(format!("{count} keys cannot fit in {} bytes", r.remaining()));
    }
    let mut keys: Vec<(Bytes, KeyIndex)> = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = r.varint_len(1).map_err(|e| e.to_string())?;
        let key = Bytes::copy_from_slice(r.take(len).map_err(|e| e.to_string())?);
        if keys.last().is_some_and(|(last, _)| *last >= key) {
            return Err("keys out of order".into());
        }
        let ki = KeyIndex::decode(&mut r).map_err(|e| e.to_string())?;
        match ki.last_revision() {
            None => return Err("a key without revisions".into()),
            Some(rev) if rev.main > stamp.current_revision => {
                return Err(format!("a revision above the checkpoint's {}", stamp.current_revision))
            }
            Some(_) => {}
        }
        keys.push((key, ki));
    }
    r.expect_end().map_err(|e| e.to_string())?;
    // Sorted already: the map is built in one pass.
    Ok(SavedIndex { stamp, index: keys.into_iter().collect() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revision::Revision;
    use crate::{Command, DeleteRangeRequest, PutRequest, RedbBackend, Store, StoreOptions};

    fn sample() -> Index {
        let mut index = Index::new();
        for (i, key) in ["a", "b", "c/1", "c/2"].into_iter().enumerate() {
            let mut ki = KeyIndex::default();
            let base = 10 * i as i64 + 2;
            ki.put(Revision::new(base, 0));
            ki.put(Revision::new(base + 1, 1));
            if i % 2 == 0 {
                ki.tombstone(Revision::new(base + 2, 0));
                ki.put(Revision::new(base + 3, 0));
            }
            ki.lease = i as i64;
            index.insert(Bytes::from(key), ki);
        }
        index
    }

    fn stamp() -> Stamp {
        Stamp { applied_index: 42, current_revision: 40, compacted_revision: 3 }
    }

    fn path(name: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        std::env::temp_dir().join(format!("keel-index-{name}-{}-{nanos}", std::process::id()))
    }

    fn shared(index: Index, compacted: i64) -> SharedIndex {
        SharedIndex::new(index, compacted)
    }

    #[test]
    fn a_checkpoint_comes_back_whole_with_its_stamp_and_stays() {
        let (index, at) = (sample(), path("round-trip"));
        save(&at, &CheckpointState::default(), &shared(index.clone(), 3), stamp()).unwrap();
        let saved = load(&at).expect("written");
        assert_eq!((saved.stamp, saved.index), (stamp(), index.clone()));
        let again = load(&at).expect("still there: an older checkpoint is still a start");
        assert_eq!(again.index, index);
        remove(&at).unwrap();
        assert!(load(&at).is_none());
    }

    /// Written as of revision 14, a key index that has moved on comes back as it was then:
    /// later revisions gone, a generation a later delete ended open again, a key created later
    /// absent.
    #[test]
    fn a_checkpoint_as_of_an_earlier_revision_leaves_out_what_came_after() {
        let at = path("as-of");
        let state = Arc::new(CheckpointState::default());
        assert!(state.claim());
        let job = IndexCheckpoint {
            index: Arc::new(shared(sample(), -1)),
            state: Arc::clone(&state),
            path: at.clone(),
            revision: 14,
            applied_index: 9,
        };
        assert!(job.write().unwrap());
        assert!(state.claim(), "the slot is free again once the checkpoint is written");
        assert_eq!(state.revision.load(Ordering::Acquire), 14);
        let saved = load(&at).unwrap();
        assert_eq!(saved.stamp, Stamp { applied_index: 9, current_revision: 14, compacted_revision: -1 });
        let keys: Vec<&[u8]> = saved.index.keys().map(|k| k.as_ref()).collect();
        assert_eq!(keys, [b"a".as_slice(), b"b"], "c/1 was created at 22");
        let a = &saved.index[b"a".as_slice()];
        assert_eq!(a.last_revision(), Some(Revision::new(5, 0)));
        assert_eq!(a.get(4), None, "deleted at 4");
        let b = &saved.index[b"b".as_slice()];
        assert_eq!(b.last_revision(), Some(Revision::new(13, 1)));
        assert_eq!(b.get(14).map(|e| e.version), Some(2));

        // A later checkpoint is already there: an older one leaves it.
        let older = IndexCheckpoint {
            index: Arc::new(shared(sample(), -1)),
            state: Arc::clone(&state),
            path: at.clone(),
            revision: 12,
            applied_index: 8,
        };
        assert!(!older.write().unwrap());
        assert_eq!(load(&at).unwrap().stamp.current_revision, 14);
        remove(&at).unwrap();
    }

    #[test]
    fn a_damaged_or_cut_checkpoint_is_never_used() {
        let (index, at) = (sample(), path("damaged"));
        save(&at, &CheckpointState::default(), &shared(index, 3), stamp()).unwrap();
        let good = std::fs::read(&at).unwrap();
        for cut in [0, 4, 9, good.len() / 2, good.len() - 1] {
            std::fs::write(&at, &good[..cut]).unwrap();
            assert!(load(&at).is_none(), "cut at {cut}");
        }
        for flip in 0..good.len() {
            let mut bad = good.clone();
            bad[flip] ^= 0x10;
            std::fs::write(&at, &bad).unwrap();
            assert!(load(&at).is_none(), "byte {flip} flipped");
        }
        remove(&at).unwrap();
    }

    /// Puts, overwrites, deletes and leases, in rounds; the compaction's deletion from the
    /// backend left half done.
    fn write_rounds(store: &mut Store<RedbBackend>, index: &mut u64, rounds: std::ops::Range<i64>) {
        let mut apply = |store: &mut Store<RedbBackend>, command: Command| {
            *index += 1;
            store.apply(*index, &command).unwrap();
        };
        if rounds.start == 0 {
            apply(store, Command::LeaseGrant { id: 7, ttl_seconds: 60 });
        }
        for round in rounds {
            for key in 0..50 {
                let put = PutRequest {
                    key: Bytes::from(format!("k{key:02}")),
                    value: Bytes::from(format!("v{round}")),
                    lease: if (key + round) % 5 == 0 { 7 } else { 0 },
                    ..Default::default()
                };
                apply(store, Command::Put(put));
            }
            let delete = DeleteRangeRequest {
                key: Bytes::from(format!("k{}", 10 + round)),
                range_end: Bytes::from(format!("k{}", 20 + round)),
                prev_kv: false,
            };
            apply(store, Command::DeleteRange(delete));
        }
    }

    fn compact(store: &mut Store<RedbBackend>, index: &mut u64, revision: i64) {
        *index += 1;
        store.apply(*index, &Command::Compact { revision }).unwrap();
        store.commit().unwrap();
        store.compaction_step(20).unwrap();
        assert!(store.compaction_pending(), "the backend still holds dead revisions");
    }

    /// The index of `store` and its lease's keys; then the store is dropped without a clean
    /// close, as kill -9 leaves it.
    fn crash(store: Store<RedbBackend>) -> (Index, Option<Vec<Bytes>>) {
        let live = (store.index.read().clone(), store.lease_ttl(7).map(|l| l.keys));
        drop(store);
        live
    }

    fn reopen(file: &Path) -> (Store<RedbBackend>, i64) {
        let opts = StoreOptions { compaction_batch_per_commit: 0, ..StoreOptions::default() };
        let store = Store::open(RedbBackend::open(file).unwrap(), opts).unwrap();
        let from = store.checkpoint.revision.load(Ordering::Acquire);
        (store, from)
    }

    fn opened(file: &Path) -> Store<RedbBackend> {
        reopen(file).0
    }

    /// A store reopened from a checkpoint holds exactly the index a rebuild from its records
    /// gives, and the lease attachments: after a clean close (nothing to replay), and after a
    /// crash with a checkpoint taken while more was applied, committed and compacted (the
    /// records after it replayed).
    #[test]
    fn a_store_reopened_from_a_checkpoint_equals_one_rebuilt_from_its_records() {
        let file = path("store");
        let checkpoint = checkpoint_file(&file);
        let mut index = 0;
        let mut store = opened(&file);
        write_rounds(&mut store, &mut index, 0..4);
        store.commit().unwrap();
        let revision = store.current_revision() - 30;
        compact(&mut store, &mut index, revision);
        assert!(store.save_index().unwrap());
        let (live, lease_keys) = crash(store);
        assert_eq!(lease_keys.as_ref().map(Vec::len), Some(8), "10 put on the lease last, 2 deleted since");

        let (store, from) = reopen(&file);
        assert_eq!(from, live.values().filter_map(KeyIndex::last_revision).max().unwrap().main, "nothing to replay");
        assert_eq!(*store.index.read(), live);
        assert_eq!(store.lease_ttl(7).map(|l| l.keys), lease_keys);

        // Taken as of the durable revision while the store applies on: more rounds (some not yet
        // committed when the walk ran), a compaction at or below the checkpoint's revision.
        let mut store = store;
        write_rounds(&mut store, &mut index, 4..6);
        store.commit().unwrap();
        let job = store.begin_index_checkpoint().expect("a file backend checkpoints");
        assert!(store.begin_index_checkpoint().is_none(), "one at a time");
        let taken_at = job.revision();
        assert_eq!(taken_at, store.current_revision());
        write_rounds(&mut store, &mut index, 6..8);
        let walker = std::thread::spawn(move || job.write().unwrap());
        compact(&mut store, &mut index, taken_at - 10);
        write_rounds(&mut store, &mut index, 8..10);
        assert!(walker.join().unwrap());
        store.commit().unwrap();
        let (live, lease_keys) = crash(store);

        let (store, from) = reopen(&file);
        assert_eq!(from, taken_at, "loaded from the checkpoint, the records after it replayed");
        assert_eq!(*store.index.read(), live);
        assert_eq!(store.lease_ttl(7).map(|l| l.keys), lease_keys);

        // Compacted past the checkpoint: records above it are gone, so it is not used.
        let mut store = store;
        let revision = store.current_revision() - 5;
        compact(&mut store, &mut index, revision);
        let (live, lease_keys) = crash(store);
        let (store, from) = reopen(&file);
        assert_eq!(from, -1, "rebuilt from every record");
        assert_eq!(*store.index.read(), live);
        assert_eq!(store.lease_ttl(7).map(|l| l.keys), lease_keys);
        assert!(store.index_checkpoint_due(i64::MAX), "a checkpoint the compaction passed is due again");
        drop(store);

        // And with no checkpoint at all, the same.
        remove(&checkpoint).unwrap();
        assert_eq!(*opened(&file).index.read(), live);
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_file(&checkpoint);
    }

    fn checkpoint_file(store: &Path) -> PathBuf {
        store.with_extension("index")
    }
}
