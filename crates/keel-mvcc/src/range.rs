//! Range reads: etcd's `range_end` conventions, filters, sorting and limits
//! (etcd `applierV3backend.Range` over `kvstore_txn.rangeKeys`).

use std::cmp::Ordering;
use std::ops::Bound;

use bytes::Bytes;

use crate::backend::RevisionSource;
use crate::error::MvccError;
use crate::key_index::{Index, IndexEntry, KeyIndex};
use crate::kv::KeyValue;
use crate::read::Reader;
use crate::request::{RangeRequest, RangeResponse, SortOrder, SortTarget};

/// A key range in etcd's conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyRange<'a> {
    /// `range_end` empty: just this key.
    Single(&'a [u8]),
    /// `range_end == "\0"`: every key `>= start`.
    From(&'a [u8]),
    /// `[start, end)`; empty when `end <= start`.
    Between(&'a [u8], &'a [u8]),
}

impl<'a> KeyRange<'a> {
    pub(crate) fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::From(key),
            end => KeyRange::Between(key, end),
        }
    }

    pub(crate) fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeyRange::Single(s) => k == s,
            KeyRange::From(s) => k >= s,
            KeyRange::Between(s, e) => k >= s && k < e,
        }
    }

    /// The index entries of keys in this range, in key order.
    pub(crate) fn iter(self, index: &'a Index) -> Box<dyn Iterator<Item = (&'a Bytes, &'a KeyIndex)> + 'a> {
        match self {
            KeyRange::Single(s) => Box::new(index.get_key_value(s).into_iter()),
            KeyRange::From(s) => Box::new(index.range::<[u8], _>((Bound::Included(s), Bound::Unbounded))),
            KeyRange::Between(s, e) if e <= s => Box::new(std::iter::empty()),
            KeyRange::Between(s, e) => Box::new(index.range::<[u8], _>((Bound::Included(s), Bound::Excluded(e)))),
        }
    }

    /// Like [`KeyRange::iter`], from just after `after` (`None`: from the start), so a walk can
    /// let go of the index and resume.
    pub(crate) fn iter_after(
        self,
        index: &'a Index,
        after: Option<&'a [u8]>,
    ) -> Box<dyn Iterator<Item = (&'a Bytes, &'a KeyIndex)> + 'a> {
        let Some(after) = after else { return self.iter(index) };
        match self {
            KeyRange::Single(_) => Box::new(std::iter::empty()),
            KeyRange::From(_) => Box::new(index.range::<[u8], _>((Bound::Excluded(after), Bound::Unbounded))),
            KeyRange::Between(_, e) if e <= after => Box::new(std::iter::empty()),
            KeyRange::Between(_, e) => Box::new(index.range::<[u8], _>((Bound::Excluded(after), Bound::Excluded(e)))),
        }
    }

    /// Keys alive at main revision `at`, with what the index knows about them.
    pub(crate) fn alive_at(self, index: &'a Index, at: i64) -> Vec<(Bytes, IndexEntry)> {
        self.iter(index).filter_map(|(k, ki)| ki.get(at).map(|e| (k.clone(), e))).collect()
    }
}

fn sort_key_cmp(target: SortTarget, a: &KeyValue, b: &KeyValue) -> Ordering {
    match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    }
}

/// The effective sort order (etcd: a non-key target with no order sorts ascending; key
/// ascending is already the natural order).
fn effective_order(q: &RangeRequest) -> SortOrder {
    match (q.sort_target, q.sort_order) {
        (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
        (t, SortOrder::None) if t != SortTarget::Key => SortOrder::Ascend,
        (_, o) => o,
    }
}

fn keep(q: &RangeRequest, e: &IndexEntry) -> bool {
    let m = e.rev.main;
    let c = e.create_revision;
    !(q.max_mod_revision != 0 && m > q.max_mod_revision
        || q.min_mod_revision != 0 && m < q.min_mod_revision
        || q.max_create_revision != 0 && c > q.max_create_revision
        || q.min_create_revision != 0 && c < q.min_create_revision)
}

impl<R: RevisionSource + ?Sized> Reader<'_, R> {
    /// A range read where the store's revision is `cur` (inside a write txn, `cur`
    /// includes the txn's own earlier writes).
    pub(crate) fn range_at(&self, q: &RangeRequest, cur: i64) -> Result<RangeResponse, MvccError> {
        if q.revision > cur {
            return Err(MvccError::FutureRevision);
        }
        let at = if q.revision <= 0 { cur } else { q.revision };
        let mut entries = self.alive_at(KeyRange::new(&q.key, &q.range_end), at)?;
        let count = entries.len() as i64;
        if q.count_only {
            return Ok(RangeResponse { revision: cur, kvs: Vec::new(), more: false, count });
        }
        entries.retain(|(_, e)| keep(q, e));
        let order = effective_order(q);
        let limit = usize::try_from(q.limit).ok().filter(|l| *l > 0);
        // Without sorting, key order is final: fetch only what the limit lets through.
        let mut more = false;
        if order == SortOrder::None {
            if let Some(l) = limit {
                more = entries.len() > l;
                entries.truncate(l);
            }
        }
        let revs: Vec<_> = entries.iter().map(|(_, e)| e.rev).collect();
        let mut kvs = self.load_kvs(&revs)?;
        match order {
            SortOrder::None => {}
            // Stable sorts: ties stay in key order, the same on every replica.
            SortOrder::Ascend => kvs.sort_by(|a, b| sort_key_cmp(q.sort_target, a, b)),
            SortOrder::Descend => kvs.sort_by(|a, b| sort_key_cmp(q.sort_target, b, a)),
        }
        if order != SortOrder::None {
            if let Some(l) = limit {
                more = kvs.len() > l;
                kvs.truncate(l);
            }
        }
        if q.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        Ok(RangeResponse { revision: cur, kvs, more, count })
    }
}
