//! When each lease expires, by this member's monotonic clock.
//!
//! Every member keeps the clock from the lease commands it applies (grant, keep-alive renewal,
//! checkpoint, revoke), not only the leader. So when leadership moves, the new leader already
//! knows each lease's remaining time and a lease keeps its remaining TTL across a leader change
//! (etcd resets every lease to its full TTL there). Only the leader acts on expiry, by proposing
//! a revoke: a lease ends for everyone at the same point in the log.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::machine::LeaseChange;

/// A revoke proposed for an expired lease is proposed again if it has not applied by then.
const REVOKE_RETRY: Duration = Duration::from_secs(1);
/// Most revokes proposed per turn (the rest follow on the next turns).
const REVOKES_PER_TURN_MAX: usize = 1_000;

#[derive(Default)]
pub struct LeaseClock {
    deadlines: BTreeMap<i64, Instant>,
    /// Expired leases whose revoke was proposed, and when to retry it.
    revoking: BTreeMap<i64, Instant>,
}

impl LeaseClock {
    pub fn apply(&mut self, change: LeaseChange, now: Instant) {
        match change {
            LeaseChange::Started { id, ttl_seconds } => {
                self.deadlines.insert(id, now + Duration::from_secs(ttl_seconds.max(0) as u64));
                self.revoking.remove(&id);
            }
            LeaseChange::Revoked { id } => {
                self.deadlines.remove(&id);
                self.revoking.remove(&id);
            }
        }
    }

    /// A renewal entered the log: pushes a known lease's deadline out (an unknown one stays
    /// unknown; its renewal will fail).
    pub fn renew_if_known(&mut self, id: i64, ttl_seconds: i64, now: Instant) {
        if let Some(deadline) = self.deadlines.get_mut(&id) {
            *deadline = (*deadline).max(now + Duration::from_secs(ttl_seconds.max(0) as u64));
            self.revoking.remove(&id);
        }
    }

    /// Makes the clock hold exactly `leases` (id, remaining TTL by the store): after a restart
    /// or an installed snapshot, a lease the clock has not seen starts from its remaining TTL.
    pub fn reconcile(&mut self, leases: impl Iterator<Item = (i64, i64)>, now: Instant) {
        let mut known = BTreeMap::new();
        for (id, remaining) in leases {
            let deadline =
                self.deadlines.get(&id).copied().unwrap_or(now + Duration::from_secs(remaining.max(0) as u64));
            known.insert(id, deadline);
        }
        self.revoking.retain(|id, _| known.contains_key(id));
        self.deadlines = known;
    }

    /// An installed snapshot replaced the store: what this clock learnt from the log before it
    /// may be stale (renewals in the part of the log the snapshot replaced never reached this
    /// member), so every lease restarts from the remaining TTL the store holds, counted from
    /// now. Keeping a stale deadline would let this member, once it leads, revoke a lease its
    /// client kept alive.
    pub fn restart_all(&mut self, leases: impl Iterator<Item = (i64, i64)>, now: Instant) {
        self.deadlines =
            leases.map(|(id, remaining)| (id, now + Duration::from_secs(remaining.max(0) as u64))).collect();
        self.revoking.clear();
    }

    /// A new leader gives every lease at least `grace` more (as etcd's lessor promotion does):
    /// renewals the old leader acknowledged may still be on their way through the log, and
    /// clients could not renew while there was no leader.
    pub fn extend_all(&mut self, now: Instant, grace: Duration) {
        for deadline in self.deadlines.values_mut() {
            *deadline = (*deadline).max(now + grace);
        }
        self.revoking.clear();
    }

    /// Seconds left (rounded up; 0 once expired), or `None` for a lease the clock does not hold.
    pub fn remaining_seconds(&self, id: i64, now: Instant) -> Option<i64> {
        let left = self.deadlines.get(&id)?.saturating_duration_since(now);
        Some(left.as_millis().div_ceil(1000) as i64)
    }

    /// Leases to revoke now (the caller leads): expired, and not already being revoked.
    pub fn due(&mut self, now: Instant) -> Vec<i64> {
        let mut due = Vec::new();
        for (&id, &deadline) in &self.deadlines {
            if due.len() >= REVOKES_PER_TURN_MAX {
                break;
            }
            if deadline <= now && self.revoking.get(&id).is_none_or(|&retry| retry <= now) {
                due.push(id);
            }
        }
        for &id in &due {
            self.revoking.insert(id, now + REVOKE_RETRY);
        }
        due
    }

    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_after_its_ttl_and_a_renewal_pushes_it_back() {
        let start = Instant::now();
        let mut clock = LeaseClock::default();
        clock.apply(LeaseChange::Started { id: 7, ttl_seconds: 5 }, start);
        assert!(clock.due(start + Duration::from_secs(4)).is_empty());
        assert_eq!(clock.remaining_seconds(7, start + Duration::from_millis(3_500)), Some(2));
        clock.apply(LeaseChange::Started { id: 7, ttl_seconds: 5 }, start + Duration::from_secs(4));
        assert!(clock.due(start + Duration::from_secs(6)).is_empty());
        assert_eq!(clock.due(start + Duration::from_secs(9)), vec![7]);
        // Proposed once; proposed again only after the retry delay.
        assert!(clock.due(start + Duration::from_secs(9)).is_empty());
        assert_eq!(clock.due(start + Duration::from_secs(11)), vec![7]);
        clock.apply(LeaseChange::Revoked { id: 7 }, start + Duration::from_secs(11));
        assert!(clock.is_empty());
    }

    #[test]
    fn a_new_leader_gives_every_lease_a_grace_period() {
        let start = Instant::now();
        let mut clock = LeaseClock::default();
        clock.apply(LeaseChange::Started { id: 1, ttl_seconds: 1 }, start);
        clock.apply(LeaseChange::Started { id: 2, ttl_seconds: 60 }, start);
        let later = start + Duration::from_secs(2);
        clock.extend_all(later, Duration::from_secs(3));
        assert!(clock.due(later + Duration::from_secs(2)).is_empty(), "lease 1 got its grace");
        assert_eq!(clock.due(later + Duration::from_secs(4)), vec![1]);
        assert_eq!(clock.remaining_seconds(2, later), Some(58), "a later deadline is kept");
    }

    #[test]
    fn after_a_snapshot_install_every_lease_restarts_from_its_remaining_ttl() {
        let start = Instant::now();
        let mut clock = LeaseClock::default();
        // Seen granted with 10 s, then this member fell behind: the renewals went by in log it
        // never applied, and a snapshot brought the store's remaining TTL (10 s again).
        clock.apply(LeaseChange::Started { id: 1, ttl_seconds: 10 }, start);
        let later = start + Duration::from_secs(30);
        clock.restart_all([(1, 10), (2, 4)].into_iter(), later);
        assert!(clock.due(later).is_empty(), "a lease its client kept alive would be revoked");
        assert_eq!(clock.remaining_seconds(1, later), Some(10));
        assert_eq!(clock.remaining_seconds(2, later), Some(4));
    }

    #[test]
    fn reconcile_keeps_running_clocks_and_starts_unknown_leases_from_their_remaining_ttl() {
        let start = Instant::now();
        let mut clock = LeaseClock::default();
        clock.apply(LeaseChange::Started { id: 1, ttl_seconds: 10 }, start);
        clock.apply(LeaseChange::Started { id: 2, ttl_seconds: 10 }, start);
        let later = start + Duration::from_secs(4);
        clock.reconcile([(1, 10), (3, 7)].into_iter(), later);
        assert_eq!(clock.remaining_seconds(1, later), Some(6), "running clock kept, not reset");
        assert_eq!(clock.remaining_seconds(2, later), None, "gone from the store");
        assert_eq!(clock.remaining_seconds(3, later), Some(7));
    }
}
