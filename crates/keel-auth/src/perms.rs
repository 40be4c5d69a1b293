//! One user's key permissions, merged, and the check a request's key range passes.
//!
//! etcd's rules (`auth/range_perm_cache.go`): a permission or request names keys as
//! [`KeyRange`] does. A single key is allowed if some permission holds it; a range only if the
//! union of the user's permissions of that kind covers all of it, so a range that straddles
//! two adjacent permissions is allowed, and one that reaches past them into a single key the
//! user may not touch is refused whole.

use std::cmp::Ordering;

/// Keys as etcd's requests and permissions name them: `end` empty is the single key `key`;
/// `end == [0]` is every key from `key` on; otherwise the keys in `[key, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRange<'a> {
    pub key: &'a [u8],
    pub end: &'a [u8],
}

impl<'a> KeyRange<'a> {
    pub fn new(key: &'a [u8], end: &'a [u8]) -> KeyRange<'a> {
        KeyRange { key, end }
    }

    /// The range as a half-open interval. A single key `k` is `[k, k\0)`: nothing sorts
    /// between `k` and `k\0`.
    fn interval(self) -> Interval {
        let end = match self.end {
            [] => End::Key(successor(self.key)),
            [0] => End::Unbounded,
            end => End::Key(end.to_vec()),
        };
        Interval { start: self.key.to_vec(), end }
    }
}

fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

/// An interval's upper bound; every key sorts below `Unbounded`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    Key(Vec<u8>),
    Unbounded,
}

impl End {
    fn above(&self, key: &[u8]) -> bool {
        match self {
            End::Key(end) => key < end.as_slice(),
            End::Unbounded => true,
        }
    }
}

impl PartialOrd for End {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for End {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (End::Key(a), End::Key(b)) => a.cmp(b),
            (End::Key(_), End::Unbounded) => Ordering::Less,
            (End::Unbounded, End::Key(_)) => Ordering::Greater,
            (End::Unbounded, End::Unbounded) => Ordering::Equal,
        }
    }
}

/// `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Interval {
    start: Vec<u8>,
    end: End,
}

impl Interval {
    fn is_empty(&self) -> bool {
        !self.end.above(&self.start)
    }
}

/// Sorted, disjoint and not touching: two intervals that meet or overlap are one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Union(Vec<Interval>);

impl Union {
    fn of(mut intervals: Vec<Interval>) -> Union {
        // An inverted or empty permission (etcd 3.4 stores one if asked) allows nothing.
        intervals.retain(|i| !i.is_empty());
        intervals.sort_by(|a, b| a.start.cmp(&b.start));
        let mut merged: Vec<Interval> = Vec::with_capacity(intervals.len());
        for next in intervals {
            if let Some(last) = merged.last_mut() {
                // Sorted by start, so they overlap or meet exactly when `next.start <= last.end`.
                let meets = match &last.end {
                    End::Unbounded => true,
                    End::Key(end) => next.start.as_slice() <= end.as_slice(),
                };
                if meets {
                    if next.end > last.end {
                        last.end = next.end;
                    }
                    continue;
                }
            }
            merged.push(next);
        }
        Union(merged)
    }

    /// The interval holding `key`, if any.
    fn holding(&self, key: &[u8]) -> Option<&Interval> {
        let after = self.0.partition_point(|i| i.start.as_slice() <= key);
        let candidate = self.0.get(after.checked_sub(1)?)?;
        candidate.end.above(key).then_some(candidate)
    }

    fn covers(&self, range: KeyRange) -> bool {
        let wanted = range.interval();
        if wanted.is_empty() {
            // An empty or inverted range reads nothing; etcd allows it exactly when its first
            // key is allowed (its interval tree finds the permission holding that key).
            return self.holding(range.key).is_some();
        }
        self.holding(range.key).is_some_and(|i| i.end >= wanted.end)
    }
}

/// What one user may read and write: the union of its roles' permissions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    read: Union,
    write: Union,
}

impl Permissions {
    /// From `(range, may_read, may_write)` triples.
    pub fn from_grants<'a>(grants: impl IntoIterator<Item = (KeyRange<'a>, bool, bool)>) -> Permissions {
        let (mut read, mut write) = (Vec::new(), Vec::new());
        for (range, may_read, may_write) in grants {
            if may_read {
                read.push(range.interval());
            }
            if may_write {
                write.push(range.interval());
            }
        }
        Permissions { read: Union::of(read), write: Union::of(write) }
    }

    pub fn may_read(&self, range: KeyRange) -> bool {
        self.read.covers(range)
    }

    pub fn may_write(&self, range: KeyRange) -> bool {
        self.write.covers(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(grants: &[(&str, &str)]) -> Permissions {
        Permissions::from_grants(grants.iter().map(|(k, e)| (KeyRange::new(k.as_bytes(), e.as_bytes()), true, false)))
    }

    fn reads(p: &Permissions, key: &str, end: &str) -> bool {
        p.may_read(KeyRange::new(key.as_bytes(), end.as_bytes()))
    }

    #[test]
    fn a_single_key_permission_allows_that_key_only() {
        let p = perms(&[("a", "")]);
        assert!(reads(&p, "a", ""));
        assert!(!reads(&p, "a\0", ""));
        assert!(!reads(&p, "b", ""));
        assert!(reads(&p, "a", "a\0"), "the range holding just `a`");
        assert!(!reads(&p, "a", "b"));
        assert!(!p.may_write(KeyRange::new(b"a", b"")), "read only");
    }

    #[test]
    fn a_range_is_allowed_only_if_the_permissions_cover_all_of_it() {
        let p = perms(&[("a", "c"), ("c", "e"), ("f", "")]);
        assert!(reads(&p, "a", "e"), "adjacent permissions join");
        assert!(reads(&p, "b", "d"));
        assert!(!reads(&p, "a", "f"), "[e, f) is not covered");
        assert!(!reads(&p, "d", "f\0"));
        assert!(reads(&p, "f", ""));
        assert!(!reads(&p, "a", "\0"), "open-ended");
    }

    #[test]
    fn an_open_ended_permission_covers_every_key_after_its_start() {
        let p = perms(&[("m", "\0")]);
        assert!(reads(&p, "m", "\0"));
        assert!(reads(&p, "zzzz", ""));
        assert!(reads(&p, "m", "\u{7f}\u{7f}"));
        assert!(!reads(&p, "l", "\0"));
        let all = perms(&[("\0", "\0")]);
        assert!(reads(&all, "\0", "\0"), "the whole key space");
    }

    #[test]
    fn an_empty_or_inverted_range_is_allowed_when_its_first_key_is() {
        let p = perms(&[("b", "c")]);
        assert!(reads(&p, "b", "a"));
        assert!(reads(&p, "b", "b"));
        assert!(!reads(&p, "d", "a"));
        let inverted = perms(&[("c", "a")]);
        assert!(!reads(&inverted, "b", ""), "an inverted permission allows nothing");
    }
}
