//! The in-memory key index: for every key, its generations of revisions (etcd's
//! `keyIndex`). Values are not here; they stay in the backend, fetched by revision.
//!
//! A generation runs from the put that creates a key to the delete that ends it (the
//! tombstone, kept as the generation's last revision). Recreating the key opens a new
//! generation with version 1 and a new create revision.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::revision::Revision;

/// One life of a key, from creation to tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Generation {
    /// Main revision of the put that created the key. Kept even after compaction has
    /// trimmed that revision away, because later versions still report it.
    created: i64,
    /// Version of `revs[0]` (1 until compaction trims earlier revisions).
    first_version: i64,
    /// Revisions in increasing order; never empty.
    revs: Vec<Revision>,
    /// The last revision is a tombstone: the generation has ended.
    closed: bool,
}

impl Generation {
    fn last(&self) -> Revision {
        *self.revs.last().expect("generations are never empty")
    }
}

/// What the index knows about a key at a revision, without reading the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// Revision holding the key's value.
    pub(crate) rev: Revision,
    /// Create revision of the key's generation.
    pub(crate) create_revision: i64,
    /// Version at that revision.
    pub(crate) version: i64,
}

/// All revisions of one key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct KeyIndex {
    generations: Vec<Generation>,
    /// Lease of the key's live version (0 for none or when the key is deleted); kept here
    /// so detaching on overwrite or delete needs no backend read.
    pub(crate) lease: i64,
}

impl KeyIndex {
    /// The key's state at main revision `at`: `None` if it did not exist (never created,
    /// deleted, or only known below the compacted revision).
    pub(crate) fn get(&self, at: i64) -> Option<IndexEntry> {
        for g in self.generations.iter().rev() {
            let idx = g.revs.partition_point(|r| r.main <= at);
            if idx == 0 {
                continue;
            }
            if g.closed && idx == g.revs.len() {
                return None; // the latest revision <= at is the tombstone
            }
            return Some(IndexEntry {
                rev: g.revs[idx - 1],
                create_revision: g.created,
                version: g.first_version + (idx as i64 - 1),
            });
        }
        None
    }

    /// The key's latest revision (put or tombstone), `None` for an empty index entry.
    pub(crate) fn last_revision(&self) -> Option<Revision> {
        self.generations.last().map(Generation::last)
    }

    /// Records a put at `rev`; returns its create revision and version.
    pub(crate) fn put(&mut self, rev: Revision) -> (i64, i64) {
        match self.generations.last_mut() {
            Some(g) if !g.closed => {
                debug_assert!(g.last() < rev, "revisions must increase");
                g.revs.push(rev);
                (g.created, g.first_version + g.revs.len() as i64 - 1)
            }
            _ => {
                self.generations.push(Generation {
                    created: rev.main,
                    first_version: 1,
                    revs: vec![rev],
                    closed: false,
                });
                (rev.main, 1)
            }
        }
    }

    /// Records a put while rebuilding from the backend, where compaction may have trimmed
    /// the start of the generation: creation revision and version come from the record.
    pub(crate) fn restore_put(&mut self, rev: Revision, created: i64, version: i64) {
        match self.generations.last_mut() {
            Some(g) if !g.closed => g.revs.push(rev),
            _ => self.generations.push(Generation { created, first_version: version, revs: vec![rev], closed: false }),
        }
    }

    /// Records a stored record while rebuilding or replaying (see [`KeyIndex::restore_put`]).
    /// Returns false, changing only the lease, for a tombstone of a key that is not alive.
    pub(crate) fn restore(&mut self, rev: Revision, tombstone: bool, created: i64, version: i64, lease: i64) -> bool {
        if tombstone {
            self.lease = 0;
            self.tombstone(rev)
        } else {
            self.restore_put(rev, created, version);
            self.lease = lease;
            true
        }
    }

    /// Ends the current generation with a tombstone at `rev`. Returns false (and changes
    /// nothing) if the key is not alive.
    pub(crate) fn tombstone(&mut self, rev: Revision) -> bool {
        match self.generations.last_mut() {
            Some(g) if !g.closed => {
                debug_assert!(g.last() < rev, "revisions must increase");
                g.revs.push(rev);
                g.closed = true;
                true
            }
            _ => false,
        }
    }

    /// Drops every revision invisible at reads >= `at` (etcd's `keyIndex.compact`): keeps
    /// the latest revision <= `at` unless it is a tombstone, and everything after.
    /// Returns true when nothing is left (the key leaves the index).
    pub(crate) fn compact(&mut self, at: i64) -> bool {
        // Generations that ended at or before `at` are invisible at every readable revision.
        let dead = self.generations.iter().take_while(|g| g.closed && g.last().main <= at).count();
        self.generations.drain(..dead);
        if let Some(g) = self.generations.first_mut() {
            let idx = g.revs.partition_point(|r| r.main <= at);
            if idx > 1 {
                g.revs.drain(..idx - 1);
                g.first_version += idx as i64 - 1;
            }
        }
        self.generations.is_empty()
    }

    /// Whether `rev` is still part of this key's visible history.
    pub(crate) fn contains(&self, rev: Revision) -> bool {
        self.generations.iter().any(|g| g.revs.binary_search(&rev).is_ok())
    }

    /// The revision holding the key's value just before `rev`, if there was one (not a
    /// tombstone, not compacted away). Used for events' `prev_kv`.
    pub(crate) fn prev_value(&self, rev: Revision) -> Option<Revision> {
        for g in &self.generations {
            if let Ok(i) = g.revs.binary_search(&rev) {
                return if i == 0 { None } else { Some(g.revs[i - 1]) };
            }
        }
        None
    }

    /// [`KeyIndex::prev_value`] for the key's change at main revision `main` (a key changes at
    /// most once per main revision: etcd refuses a txn that writes one key twice).
    pub(crate) fn prev_value_at_main(&self, main: i64) -> Option<Revision> {
        for g in &self.generations {
            let i = g.revs.partition_point(|r| r.main < main);
            if g.revs.get(i).is_some_and(|r| r.main == main) {
                return if i == 0 { None } else { Some(g.revs[i - 1]) };
            }
        }
        None
    }

    /// Appends this key's index as it was at main revision `at` to a checkpoint (see
    /// `index_checkpoint`): revisions above `at` left out, a generation they ended left open.
    /// Returns false, writing nothing, if the key had no revision yet.
    ///
    /// The lease written is the key's latest: right for a key unchanged since `at`, and a key
    /// changed since has a later record, which sets it again when the checkpoint is replayed up.
    ///
    /// Varints throughout, each revision as the step from the one before: a key of a few dozen
    /// bytes with one revision takes about 30 bytes, not 70.
    pub(crate) fn encode_as_of(&self, at: i64, w: &mut crate::codec::Writer) -> bool {
        // Generations are in revision order: those that started by `at`, the last of them cut.
        let started = self.generations.partition_point(|g| g.revs[0].main <= at);
        if started == 0 {
            return false;
        }
        w.zigzag(self.lease);
        w.varint(started as u64);
        let mut previous = 0;
        for (i, g) in self.generations[..started].iter().enumerate() {
            let revs = if i + 1 == started { &g.revs[..g.revs.partition_point(|r| r.main <= at)] } else { &g.revs[..] };
            w.zigzag(g.created);
            w.zigzag(g.first_version);
            w.bool(g.closed && revs.len() == g.revs.len());
            w.varint(revs.len() as u64);
            for rev in revs {
                // Revisions increase and are positive: the step is never negative.
                w.varint((rev.main - previous) as u64);
                w.zigzag(rev.sub);
                previous = rev.main;
            }
        }
        true
    }

    /// Reads what [`KeyIndex::encode_as_of`] wrote, checking the invariants the index relies on
    /// (generations never empty, revisions increasing).
    pub(crate) fn decode(r: &mut crate::codec::Reader<'_>) -> Result<KeyIndex, crate::error::DecodeError> {
        let lease = r.zigzag()?;
        let count = r.varint_len(4)?;
        let mut generations = Vec::with_capacity(count);
        let mut last: Option<Revision> = None;
        let mut previous = 0i64;
        for _ in 0..count {
            let (created, first_version, closed) = (r.zigzag()?, r.zigzag()?, r.bool()?);
            let revs_count = r.varint_len(2)?;
            if revs_count == 0 {
                return Err(r.err("an empty generation"));
            }
            let mut revs = Vec::with_capacity(revs_count);
            for _ in 0..revs_count {
                let step = i64::try_from(r.varint()?).map_err(|_| r.err("a revision step over i64"))?;
                let main = previous.checked_add(step).ok_or_else(|| r.err("a revision over i64"))?;
                let rev = Revision::new(main, r.zigzag()?);
                if last.is_some_and(|last| last >= rev) {
                    return Err(r.err("revisions out of order"));
                }
                (last, previous) = (Some(rev), main);
                revs.push(rev);
            }
            generations.push(Generation { created, first_version, revs, closed });
        }
        Ok(KeyIndex { generations, lease })
    }

    #[cfg(test)]
    fn revs(&self) -> Vec<Vec<i64>> {
        self.generations.iter().map(|g| g.revs.iter().map(|r| r.main).collect()).collect()
    }
}

/// The whole index: key -> its revisions. A `BTreeMap` so iteration (range reads,
/// compaction, hashing) is in key order on every replica.
pub(crate) type Index = BTreeMap<Bytes, KeyIndex>;

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    #[test]
    fn versions_and_generations() {
        let mut ki = KeyIndex::default();
        assert_eq!(ki.put(r(2)), (2, 1));
        assert_eq!(ki.put(r(3)), (2, 2));
        assert!(ki.tombstone(r(4)));
        assert!(!ki.tombstone(r(5)));
        assert_eq!(ki.put(r(6)), (6, 1));
        assert_eq!(ki.get(1), None);
        assert_eq!(ki.get(2).map(|e| (e.rev.main, e.version)), Some((2, 1)));
        assert_eq!(ki.get(3).map(|e| (e.rev.main, e.version)), Some((3, 2)));
        assert_eq!(ki.get(4), None);
        assert_eq!(ki.get(5), None);
        let e = ki.get(9).expect("alive");
        assert_eq!((e.rev.main, e.create_revision, e.version), (6, 6, 1));
        assert_eq!(ki.prev_value(r(3)), Some(r(2)));
        assert_eq!(ki.prev_value(r(6)), None);
    }

    #[test]
    fn compaction_keeps_latest_non_tombstone() {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.put(r(3));
        ki.tombstone(r(4));
        ki.put(r(6));
        ki.put(r(8));
        assert!(!ki.compact(3));
        assert_eq!(ki.revs(), vec![vec![3, 4], vec![6, 8]]);
        assert_eq!(ki.get(3).map(|e| e.version), Some(2));
        assert!(!ki.compact(4));
        assert_eq!(ki.revs(), vec![vec![6, 8]]);
        assert!(!ki.compact(7));
        assert_eq!(ki.revs(), vec![vec![6, 8]]);
        assert_eq!(ki.get(7).map(|e| (e.version, e.create_revision)), Some((1, 6)));
        assert!(!ki.compact(8));
        assert_eq!(ki.revs(), vec![vec![8]]);
        assert_eq!(ki.get(8).map(|e| (e.version, e.create_revision)), Some((2, 6)));
        ki.tombstone(r(9));
        assert!(ki.compact(9));
    }
}
