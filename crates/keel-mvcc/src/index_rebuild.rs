//! Rebuilding the key index at start-up from record headers read in revision order.
//!
//! Revision order scatters keys: inserting them one by one into the tree costs a search from
//! the root per record, each comparing keys strewn over the heap, and that was most of a
//! 1M-key restart (`keel bench mvcc --order random`: 3.2–3.7 s, of which the read was 1.2 s).
//! Instead the headers are gathered in runs small enough to sort inside the CPU's cache as they
//! arrive (while the backend's thread reads the next ones), the runs are merged (the merge only
//! compares the heads of the runs, which stay in cache), and the tree is bulk-built from the
//! key-ordered result.

use std::cmp::{Ordering, Reverse};
use std::collections::binary_heap::{BinaryHeap, PeekMut};

use bytes::Bytes;

use crate::error::{DecodeError, StorageError};
use crate::key_index::{Index, KeyIndex};
use crate::kv::StoredRecord;
use crate::revision::Revision;

/// Records per run: the run's rows and keys (about 1 MiB for keys of a few dozen bytes) stay in
/// a core's cache while it is sorted.
const RUN_ROWS: usize = 16 * 1024;
/// Key bytes per run, whatever the number of records: large keys seal a run sooner (and its key
/// offsets stay far below `u32::MAX`).
const RUN_KEY_BYTES: usize = 4 << 20;

/// What the index needs of one record; its key is in the run's `keys`.
#[derive(Debug, Clone, Copy)]
struct Row {
    key_at: u32,
    key_len: u32,
    rev: Revision,
    create_revision: i64,
    version: i64,
    lease: i64,
    tombstone: bool,
}

/// Records in the order they arrived, then sorted by (key, revision).
#[derive(Debug, Default)]
struct Run {
    keys: Vec<u8>,
    rows: Vec<Row>,
}

impl Run {
    fn key(&self, row: &Row) -> &[u8] {
        &self.keys[row.key_at as usize..(row.key_at + row.key_len) as usize]
    }

    /// Sorts the rows by (key, revision), and the keys with them: the merge then reads each
    /// run's keys front to back, not all over the run.
    fn sort(&mut self) {
        let Run { keys, rows } = self;
        let key = |r: &Row| &keys[r.key_at as usize..(r.key_at + r.key_len) as usize];
        rows.sort_unstable_by(|a, b| key(a).cmp(key(b)).then(a.rev.cmp(&b.rev)));
        let mut sorted_keys = Vec::with_capacity(keys.len());
        for row in rows.iter_mut() {
            let at = sorted_keys.len() as u32;
            sorted_keys.extend_from_slice(key(row));
            row.key_at = at;
        }
        *keys = sorted_keys;
    }
}

/// The head of a part of a run during the merge: its next row's key and revision (no two rows
/// share a revision, so that orders them totally).
struct Head<'a> {
    key: &'a [u8],
    rev: Revision,
    /// Which part.
    run: usize,
    /// Which row of its run.
    at: usize,
}

impl Ord for Head<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.key, self.rev).cmp(&(other.key, other.rev))
    }
}

impl PartialEq for Head<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head<'_> {}

impl PartialOrd for Head<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Takes record headers in any order and builds the key index.
#[derive(Debug)]
pub(crate) struct IndexRebuild {
    current_revision: i64,
    compacted_revision: i64,
    sorted: Vec<Run>,
    filling: Run,
}

pub(crate) fn corrupt(what: String) -> StorageError {
    DecodeError::new("stored revision", 0, what).into()
}

pub(crate) fn dead_tombstone(rev: Revision) -> StorageError {
    corrupt(format!("tombstone at {}/{} for a key that is not alive", rev.main, rev.sub))
}

impl IndexRebuild {
    /// A rebuild of a store at `current_revision`, compacted at `compacted_revision`.
    pub(crate) fn new(current_revision: i64, compacted_revision: i64) -> Self {
        IndexRebuild { current_revision, compacted_revision, sorted: Vec::new(), filling: Run::default() }
    }

    /// Takes the header of the record stored at `rev` (the record or a prefix of it).
    pub(crate) fn add(&mut self, rev: Revision, header: &[u8]) -> Result<(), StorageError> {
        let rec = StoredRecord::decode_header(header)?;
        if rev.main > self.current_revision {
            return Err(corrupt(format!("revision {} above current revision {}", rev.main, self.current_revision)));
        }
        let run = &mut self.filling;
        let key_at = u32::try_from(run.keys.len()).map_err(|_| corrupt("a run of keys over 4 GiB".into()))?;
        let key_len = u32::try_from(rec.key.len()).map_err(|_| corrupt("a key over 4 GiB".into()))?;
        key_at.checked_add(key_len).ok_or_else(|| corrupt("a run of keys over 4 GiB".into()))?;
        run.keys.extend_from_slice(rec.key);
        run.rows.push(Row {
            key_at,
            key_len,
            rev,
            create_revision: rec.create_revision,
            version: rec.version,
            lease: rec.lease,
            tombstone: rec.tombstone,
        });
        if run.rows.len() >= RUN_ROWS || run.keys.len() >= RUN_KEY_BYTES {
            self.seal();
        }
        Ok(())
    }

    fn seal(&mut self) {
        let mut run = std::mem::take(&mut self.filling);
        if !run.rows.is_empty() {
            run.sort();
            self.sorted.push(run);
        }
    }

    /// Merges the runs into the index. A key whose every revision is below the compacted
    /// revision and ends in a lone tombstone (left by an interrupted compaction) is kept
    /// empty here; the caller's compaction pass drops it.
    ///
    /// Two threads merge the keys below and from a pivot key (each key's revisions all on one
    /// side); the result does not depend on it.
    pub(crate) fn finish(mut self) -> Result<Index, StorageError> {
        self.seal();
        let runs = &self.sorted;
        let mut middles: Vec<&[u8]> = runs.iter().map(|r| r.key(&r.rows[r.rows.len() / 2])).collect();
        middles.sort_unstable();
        let Some(&pivot) = middles.get(middles.len() / 2) else { return Ok(Index::new()) };
        let (mut below, mut above) = (Vec::new(), Vec::new());
        for run in runs {
            let split = run.rows.partition_point(|row| run.key(row) < pivot);
            below.push((run, 0..split));
            above.push((run, split..run.rows.len()));
        }
        let compacted = self.compacted_revision;
        let (below, above) = std::thread::scope(|scope| {
            // No second thread to be had: the same merge, one half after the other.
            let spawned =
                std::thread::Builder::new().name("index-merge".into()).spawn_scoped(scope, || merge(&above, compacted));
            let below = merge(&below, compacted);
            let above = match spawned {
                Ok(thread) => thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(_) => merge(&above, compacted),
            };
            (below, above)
        });
        let mut keys = below?;
        keys.extend(above?);
        // Sorted and without duplicates: the tree is built bottom-up, without searches.
        Ok(keys.into_iter().collect())
    }
}

/// Merges parts of sorted runs (every revision of a key in these parts, no other) into the
/// index's entries, in key order.
fn merge(
    parts: &[(&Run, std::ops::Range<usize>)],
    compacted_revision: i64,
) -> Result<Vec<(Bytes, KeyIndex)>, StorageError> {
    let mut heads: BinaryHeap<Reverse<Head<'_>>> = parts
        .iter()
        .enumerate()
        .filter(|(_, (_, rows))| !rows.is_empty())
        .map(|(part, (run, rows))| {
            let first = &run.rows[rows.start];
            Reverse(Head { key: run.key(first), rev: first.rev, run: part, at: rows.start })
        })
        .collect();
    // Not reserved: a store of many revisions per key has far fewer keys than rows.
    let mut keys: Vec<(Bytes, KeyIndex)> = Vec::new();
    while let Some(mut top) = heads.peek_mut() {
        let head = &mut top.0;
        let (run, rows) = &parts[head.run];
        let row = run.rows[head.at];
        let key = head.key;
        // The run's next row takes its place (one sift down), or the run leaves the merge.
        if head.at + 1 < rows.end {
            let next = &run.rows[head.at + 1];
            head.key = run.key(next);
            head.rev = next.rev;
            head.at += 1;
            drop(top);
        } else {
            PeekMut::pop(top);
        }
        let ki = match keys.last_mut() {
            Some((last, ki)) if last.as_ref() == key => {
                debug_assert!(ki.last_revision() < Some(row.rev), "merged in (key, revision) order");
                ki
            }
            _ => {
                keys.push((Bytes::copy_from_slice(key), KeyIndex::default()));
                &mut keys.last_mut().expect("just pushed").1
            }
        };
        // An interrupted compaction deletes a key's dead revisions oldest first, so it can
        // leave a tombstone whose puts are gone: skipped.
        if !ki.restore(row.rev, row.tombstone, row.create_revision, row.version, row.lease)
            && row.rev.main > compacted_revision
        {
            return Err(dead_tombstone(row.rev));
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KeyValue;

    fn header(key: &str, created: i64, version: i64, tombstone: bool) -> Vec<u8> {
        StoredRecord {
            kv: KeyValue {
                key: Bytes::copy_from_slice(key.as_bytes()),
                create_revision: created,
                version,
                ..Default::default()
            },
            tombstone,
        }
        .encode()
    }

    /// Builds the index the slow, obvious way: one insert per record in revision order.
    fn by_insertion(records: &[(Revision, Vec<u8>)]) -> Index {
        let mut index = Index::new();
        for (rev, bytes) in records {
            let rec = StoredRecord::decode_header(bytes).unwrap();
            let ki = index.entry(Bytes::copy_from_slice(rec.key)).or_default();
            assert!(ki.restore(*rev, rec.tombstone, rec.create_revision, rec.version, rec.lease));
        }
        index
    }

    #[test]
    fn many_runs_merge_to_the_index_one_insert_at_a_time_builds() {
        // Keys scattered over revisions, with several generations, across many runs.
        let mut records = Vec::new();
        let mut state: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
        let mut x: u64 = 7;
        for main in 2..(3 * RUN_ROWS as i64 + 100) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let key = format!("k{:05}", (x >> 33) % 5000);
            let rev = Revision::new(main, 0);
            let delete = (x >> 20).is_multiple_of(7) && state.contains_key(&key);
            if delete {
                state.remove(&key);
                records.push((rev, header(&key, 0, 0, true)));
            } else {
                let (created, version) = state.get(&key).map_or((main, 1), |&(c, v)| (c, v + 1));
                state.insert(key.clone(), (created, version));
                records.push((rev, header(&key, created, version, false)));
            }
        }
        let mut rebuild = IndexRebuild::new(i64::MAX, -1);
        for (rev, bytes) in &records {
            rebuild.add(*rev, bytes).unwrap();
        }
        assert!(rebuild.sorted.len() >= 3, "the test spans several runs");
        assert_eq!(rebuild.finish().unwrap(), by_insertion(&records));
    }

    #[test]
    fn refuses_a_revision_above_the_current_one_and_a_tombstone_of_a_dead_key() {
        let mut rebuild = IndexRebuild::new(5, -1);
        assert!(rebuild.add(Revision::new(6, 0), &header("a", 6, 1, false)).is_err());
        let mut rebuild = IndexRebuild::new(5, -1);
        rebuild.add(Revision::new(3, 0), &header("a", 0, 0, true)).unwrap();
        assert!(rebuild.finish().is_err(), "a tombstone above the compacted revision needs a live key");
        // Below the compacted revision it is what an interrupted compaction leaves: skipped.
        let mut rebuild = IndexRebuild::new(5, 4);
        rebuild.add(Revision::new(3, 0), &header("a", 0, 0, true)).unwrap();
        let index = rebuild.finish().unwrap();
        assert_eq!(index.get(b"a".as_slice()).map(|ki| ki.last_revision()), Some(None));
    }
}
