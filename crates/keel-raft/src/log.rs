//! The raft log of one member, held in memory.
//!
//! The log is the prefix compacted into a snapshot (`..=snapshot_index`) followed by `entries`.
//! Durability is tracked with two marks (etcd-io/raft's `unstable.offsetInProgress` idea):
//!
//! ```text
//!   snapshot_index <= persisted <= handed_out <= last_index
//!   entries (persisted, handed_out]  were given to the host in a Ready whose write is in flight
//!   entries (handed_out, last]       have not been given to the host yet
//! ```
//!
//! When a conflicting append truncates the log at `k`, both marks drop below `k`: a write that is
//! in flight for the old entries at `k..` must not later be mistaken for the new ones (the ABA race
//! etcd-io/raft pins in `async_storage_writes_append_aba_race.txt`).

use std::collections::VecDeque;

use crate::types::{Entry, Index, Snapshot, Term};

#[derive(Debug)]
pub struct RaftLog {
    snapshot_index: Index,
    snapshot_term: Term,
    entries: VecDeque<Entry>,
    /// Highest index whose entry is durable on this member and still in the log.
    persisted: Index,
    /// Highest index handed to the host for persisting.
    handed_out: Index,
    /// A snapshot received from a leader that the host has not been handed yet.
    pending_snapshot: Option<Snapshot>,
    pub committed: Index,
    /// Highest index handed to the host for applying (the host applies in order).
    pub applied: Index,
}

impl RaftLog {
    /// A log recovered from durable state: a snapshot base and the entries after it.
    pub fn recovered(
        snapshot_index: Index,
        snapshot_term: Term,
        entries: Vec<Entry>,
        committed: Index,
        applied: Index,
    ) -> Self {
        let last = snapshot_index + entries.len() as u64;
        for (offset, entry) in entries.iter().enumerate() {
            assert_eq!(entry.index, snapshot_index + 1 + offset as u64, "recovered entries must be contiguous");
        }
        assert!(applied >= snapshot_index, "applied {applied} below snapshot {snapshot_index}");
        // A recovered commit index may exceed the recovered log if the tail was lost; clamp it.
        let committed = committed.clamp(snapshot_index, last).max(applied.min(last));
        RaftLog {
            snapshot_index,
            snapshot_term,
            entries: entries.into(),
            persisted: last,
            handed_out: last,
            pending_snapshot: None,
            committed,
            applied: applied.min(committed),
        }
    }

    pub fn first_index(&self) -> Index {
        self.snapshot_index + 1
    }

    pub fn last_index(&self) -> Index {
        self.snapshot_index + self.entries.len() as u64
    }

    pub fn last_term(&self) -> Term {
        self.entries.back().map_or(self.snapshot_term, |entry| entry.term)
    }

    pub fn snapshot_index(&self) -> Index {
        self.snapshot_index
    }

    pub fn persisted(&self) -> Index {
        self.persisted
    }

    /// The term of the entry at `index`, or `None` if it is compacted away or beyond the log.
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        if index < self.snapshot_index || index > self.last_index() {
            return None;
        }
        Some(self.entries[(index - self.snapshot_index - 1) as usize].term)
    }

    pub fn matches(&self, index: Index, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Raft's election restriction (§5.4.1): is a log ending at (`last_index`, `last_term`) at least
    /// as up to date as ours?
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Entries in `[lo, hi)` limited to `max_bytes` (at least one entry is returned if any exist).
    /// `None` if `lo` is compacted.
    pub fn slice(&self, lo: Index, hi: Index, max_entries: u64, max_bytes: u64) -> Option<Vec<Entry>> {
        if lo <= self.snapshot_index {
            return None;
        }
        let hi = hi.min(self.last_index() + 1);
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let mut index = lo;
        while index < hi && (out.len() as u64) < max_entries {
            let entry = &self.entries[(index - self.snapshot_index - 1) as usize];
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
            index += 1;
        }
        Some(out)
    }

    /// Does any entry in `[lo, hi]` that is still in the log satisfy `pred`? No copies.
    pub fn any_in(&self, lo: Index, hi: Index, pred: impl Fn(&Entry) -> bool) -> bool {
        let lo = lo.max(self.snapshot_index + 1);
        let hi = hi.min(self.last_index());
        (lo..=hi).any(|index| pred(&self.entries[(index - self.snapshot_index - 1) as usize]))
    }

    /// Appends entries that directly follow the last one (the leader's own proposals).
    pub fn append(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            assert_eq!(entry.index, self.last_index() + 1, "append must be contiguous");
            self.entries.push_back(entry);
        }
    }

    /// Follower side of AppendEntries, after `prev` matched: skip entries we already have, truncate
    /// at the first conflict, append the rest. Returns the last index of the new entries and the
    /// index the log was truncated at, if it was.
    pub fn append_from_leader(&mut self, prev_index: Index, entries: Vec<Entry>) -> (Index, Option<Index>) {
        let last_new = prev_index + entries.len() as u64;
        let mut truncated_at = None;
        for entry in entries {
            if entry.index <= self.snapshot_index {
                continue; // already covered by our snapshot
            }
            match self.term(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    assert!(
                        entry.index > self.committed,
                        "conflict at committed index {} (commit {})",
                        entry.index,
                        self.committed
                    );
                    self.truncate_from(entry.index);
                    truncated_at = Some(entry.index);
                    self.entries.push_back(entry);
                }
                None => self.entries.push_back(entry),
            }
        }
        (last_new, truncated_at)
    }

    fn truncate_from(&mut self, index: Index) {
        debug_assert!(index > self.snapshot_index);
        self.entries.truncate((index - self.snapshot_index - 1) as usize);
        self.persisted = self.persisted.min(index - 1);
        self.handed_out = self.handed_out.min(index - 1);
    }

    /// Replaces the whole log by a snapshot received from the leader.
    pub fn restore(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        assert!(index > self.committed, "restore must move commit forward");
        self.snapshot_index = index;
        self.snapshot_term = snapshot.meta.term;
        self.entries.clear();
        self.committed = index;
        // The snapshot itself is handed out (and persisted) as a whole; entries follow it.
        self.persisted = self.persisted.min(index);
        self.handed_out = index;
        self.pending_snapshot = Some(snapshot);
    }

    /// Drops entries up to `index`, which a durable snapshot now covers.
    pub fn compact(&mut self, index: Index, term: Term) {
        assert!(index <= self.applied, "compact {index} beyond applied {}", self.applied);
        assert!(index <= self.persisted, "compact {index} beyond persisted {}", self.persisted);
        if index <= self.snapshot_index {
            return;
        }
        assert_eq!(self.term(index), Some(term), "compacting at a term mismatch");
        let drop = (index - self.snapshot_index) as usize;
        self.entries.drain(..drop);
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    pub fn has_pending_snapshot(&self) -> bool {
        self.pending_snapshot.is_some()
    }

    pub fn has_unpersisted_work(&self) -> bool {
        self.pending_snapshot.is_some() || self.handed_out < self.last_index()
    }

    /// Hands the host everything not yet handed out; returns (snapshot, entries).
    pub fn take_unstable(&mut self) -> (Option<Snapshot>, Vec<Entry>) {
        let snapshot = self.pending_snapshot.take();
        if let Some(snap) = &snapshot {
            // The host installs the snapshot before it applies anything after it.
            self.applied = self.applied.max(snap.meta.index);
        }
        let lo = self.handed_out + 1;
        let entries = if lo > self.last_index() {
            Vec::new()
        } else {
            self.slice(lo, self.last_index() + 1, u64::MAX, u64::MAX).expect("unstable entries are never compacted")
        };
        self.handed_out = self.last_index();
        (snapshot, entries)
    }

    /// The host reports that everything handed out up to `index` is durable. A truncation since
    /// then has already lowered `handed_out`, which bounds what may be marked.
    pub fn mark_persisted(&mut self, index: Index) {
        let index = index.min(self.handed_out);
        if index > self.persisted {
            self.persisted = index;
        }
    }

    /// Committed, durable entries not yet handed out for applying.
    pub fn take_committed(&mut self, max_bytes: u64) -> Vec<Entry> {
        let hi = self.committed.min(self.persisted);
        if self.pending_snapshot.is_some() || hi <= self.applied {
            return Vec::new();
        }
        let entries =
            self.slice(self.applied + 1, hi + 1, u64::MAX, max_bytes).expect("unapplied entries are never compacted");
        if let Some(last) = entries.last() {
            self.applied = last.index;
        }
        entries
    }

    pub fn commit_to(&mut self, index: Index) -> bool {
        if index > self.committed {
            assert!(index <= self.last_index(), "commit {index} beyond last {}", self.last_index());
            self.committed = index;
            return true;
        }
        false
    }

    /// The largest index `<= index` whose term is `<= term` (etcd's findConflictByTerm); used to
    /// skip a whole term of mismatching entries in one round trip.
    pub fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        let mut index = index.min(self.last_index());
        loop {
            match self.term(index) {
                Some(t) if t > term => index -= 1,
                Some(t) => return (index, t),
                None => return (index, 0),
            }
        }
    }

    /// Checks the mark ordering; called after every step in debug builds.
    pub fn assert_invariants(&self) {
        debug_assert!(
            self.snapshot_index <= self.persisted
                || self.pending_snapshot.is_some()
                || self.persisted >= self.snapshot_index.min(self.persisted)
        );
        debug_assert!(
            self.persisted <= self.handed_out,
            "persisted {} > handed_out {}",
            self.persisted,
            self.handed_out
        );
        debug_assert!(self.handed_out <= self.last_index());
        debug_assert!(self.applied <= self.committed, "applied {} > committed {}", self.applied, self.committed);
        debug_assert!(self.committed <= self.last_index());
        debug_assert!(self.snapshot_index <= self.committed, "the commit index is never compacted past");
    }
}
