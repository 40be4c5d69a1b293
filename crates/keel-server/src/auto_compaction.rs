//! etcd's auto-compaction (`--auto-compaction-mode`, `--auto-compaction-retention`): the leader
//! proposes a compaction of old history now and then, so that a store under steady writes keeps
//! a bounded history and its database stops growing.
//!
//! - **periodic**, retention `R`: the current revision is sampled every `R/10` (every 6 min when
//!   `R` is over an hour); every `R` (at most every hour) history is compacted to the revision
//!   sampled `R` ago. The first compaction comes after one full `R`.
//! - **revision**, retention `N`: every 5 minutes history is compacted to `current - N`.
//!
//! Only the leader compacts (a new leader starts its clock afresh); followers keep sampling so
//! that they can take over. Pure: time comes in as [`Instant`]s, so the tests drive it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::AutoCompaction;

/// How often revision mode compacts (as etcd's revision compactor).
const REVISION_MODE_INTERVAL: Duration = Duration::from_secs(300);
const HOUR: Duration = Duration::from_secs(3_600);

pub struct AutoCompactor {
    mode: AutoCompaction,
    /// (when, revision), oldest first; in periodic mode the first is from about `R` ago.
    samples: VecDeque<(Instant, i64)>,
    last_sample: Option<Instant>,
    /// Since when this member has led (compaction waits one interval after that).
    last_compaction: Option<Instant>,
    /// The highest revision this compactor proposed to compact to.
    proposed: i64,
}

impl AutoCompactor {
    pub fn new(mode: AutoCompaction) -> AutoCompactor {
        AutoCompactor { mode, samples: VecDeque::new(), last_sample: None, last_compaction: None, proposed: 0 }
    }

    /// Called every driver turn. Returns the revision to compact to, if it is time.
    pub fn observe(&mut self, now: Instant, revision: i64, compacted: i64, leader: bool) -> Option<i64> {
        let target = match self.mode {
            AutoCompaction::Off => return None,
            AutoCompaction::Periodic(retention) => {
                let sample_every = if retention > HOUR { HOUR / 10 } else { retention / 10 };
                let keep = 11;
                if self.last_sample.is_none_or(|at| now.duration_since(at) >= sample_every) {
                    self.last_sample = Some(now);
                    self.samples.push_back((now, revision));
                    while self.samples.len() > keep {
                        self.samples.pop_front();
                    }
                }
                if !self.due(now, leader, retention.min(HOUR)) {
                    return None;
                }
                // The newest sample at least `retention` old.
                let (_, target) = self.samples.iter().rev().find(|(at, _)| now.duration_since(*at) >= retention)?;
                *target
            }
            AutoCompaction::Revision(keep) => {
                if !self.due(now, leader, REVISION_MODE_INTERVAL) {
                    return None;
                }
                revision.saturating_sub(i64::try_from(keep).unwrap_or(i64::MAX))
            }
        };
        self.last_compaction = Some(now);
        if target <= compacted.max(self.proposed) || target <= 0 || target > revision {
            return None;
        }
        self.proposed = target;
        Some(target)
    }

    /// Whether a leader's interval has passed; a member that does not lead forgets its clock.
    fn due(&mut self, now: Instant, leader: bool, interval: Duration) -> bool {
        if !leader {
            self.last_compaction = None;
            return false;
        }
        match self.last_compaction {
            None => {
                self.last_compaction = Some(now);
                false
            }
            Some(at) => now.duration_since(at) >= interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a compactor for `seconds`, one observation a second, with 100 revisions a second.
    fn run(mode: AutoCompaction, seconds: u64, leader: impl Fn(u64) -> bool) -> Vec<(u64, i64)> {
        let start = Instant::now();
        let mut compactor = AutoCompactor::new(mode);
        let mut compacted = 0;
        let mut out = Vec::new();
        for s in 0..=seconds {
            let revision = 1 + 100 * s as i64;
            if let Some(to) = compactor.observe(start + Duration::from_secs(s), revision, compacted, leader(s)) {
                assert!(to > compacted && to <= revision);
                compacted = to;
                out.push((s, to));
            }
        }
        out
    }

    #[test]
    fn periodic_compacts_every_retention_to_the_revision_of_one_retention_ago() {
        let compactions = run(AutoCompaction::Periodic(Duration::from_secs(60)), 200, |_| true);
        assert_eq!(compactions.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![60, 120, 180]);
        for (at, to) in compactions {
            // Sampled every 6 s: the target is from between 60 and 66 s before.
            let age = (1 + 100 * at as i64 - to) / 100;
            assert!((60..=66).contains(&age), "compacted at {at}s to a revision {age}s old");
        }
    }

    #[test]
    fn revision_mode_keeps_the_last_n_revisions() {
        let compactions = run(AutoCompaction::Revision(1_000), 700, |_| true);
        assert_eq!(compactions, vec![(300, 1 + 30_000 - 1_000), (600, 1 + 60_000 - 1_000)]);
    }

    #[test]
    fn only_a_leader_compacts_and_a_new_leader_waits_one_interval() {
        // Leads for the first 90 s, loses it, leads again from 100 s.
        let compactions = run(AutoCompaction::Periodic(Duration::from_secs(60)), 200, |s| !(90..100).contains(&s));
        assert_eq!(compactions.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![60, 160]);
        assert!(run(AutoCompaction::Periodic(Duration::from_secs(60)), 200, |_| false).is_empty());
        assert!(run(AutoCompaction::Off, 200, |_| true).is_empty());
    }
}
