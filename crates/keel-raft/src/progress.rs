//! What a leader knows about each follower's log, and the flow control of appends to it.

use std::collections::VecDeque;

use crate::types::Index;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader does not know where the follower's log ends: one append at a time, backing off
    /// on rejection.
    Probe,
    /// The follower is known to match up to `matched`: appends are pipelined optimistically,
    /// bounded by the in-flight window.
    Replicate,
    /// The follower needs a snapshot; nothing else is sent until it reports back.
    Snapshot { index: Index },
}

#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to be replicated (durably) on the follower.
    pub matched: Index,
    /// Next index to send.
    pub next: Index,
    pub state: ProgressState,
    /// In Probe state: an append was sent and no answer has come back since the last heartbeat.
    pub probe_sent: bool,
    /// Last index of each append in flight, oldest first. Bounded by the config's window.
    inflight: VecDeque<Index>,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    pub is_learner: bool,
    /// Ticks spent waiting for a snapshot to be acknowledged.
    pub stalled_ticks: u32,
}

impl Progress {
    pub fn new(next: Index, is_learner: bool) -> Self {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
            is_learner,
            stalled_ticks: 0,
        }
    }

    pub fn become_probe(&mut self) {
        // After a snapshot, resume right after it.
        if let ProgressState::Snapshot { index } = self.state {
            self.next = (self.matched + 1).max(index + 1);
        } else {
            self.next = self.matched + 1;
        }
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next = self.matched + 1;
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub fn become_snapshot(&mut self, index: Index) {
        self.state = ProgressState::Snapshot { index };
        self.stalled_ticks = 0;
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// May another append be sent now?
    pub fn can_send(&self, max_inflight: usize) -> bool {
        match self.state {
            ProgressState::Probe => !self.probe_sent,
            ProgressState::Replicate => self.inflight.len() < max_inflight,
            ProgressState::Snapshot { .. } => false,
        }
    }

    /// Records an append whose last entry is `last` (or an empty probe when `last` is `None`).
    pub fn sent_append(&mut self, last: Option<Index>, max_inflight: usize) {
        match self.state {
            ProgressState::Replicate => {
                if let Some(last) = last {
                    assert!(self.inflight.len() < max_inflight, "in-flight window overrun");
                    self.next = last + 1;
                    self.inflight.push_back(last);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => unreachable!("no appends while a snapshot is pending"),
        }
    }

    /// An acknowledgement up to `index`. Returns whether it told us something new.
    pub fn ack(&mut self, index: Index) -> bool {
        let mut updated = false;
        if index > self.matched {
            self.matched = index;
            updated = true;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        while self.inflight.front().is_some_and(|&last| last <= index) {
            self.inflight.pop_front();
        }
        updated
    }

    /// A rejection of the append at `rejected` (its prev index), with the follower's hint.
    /// Returns false for a stale rejection that must be ignored.
    pub fn reject(&mut self, rejected: Index, hint: Index) -> bool {
        match self.state {
            ProgressState::Replicate => {
                // In pipelined mode only the rejection of the first unmatched entry is news.
                if rejected <= self.matched {
                    return false;
                }
                self.become_probe();
                self.next = (hint + 1).max(self.matched + 1);
                true
            }
            _ => {
                if self.next.saturating_sub(1) != rejected {
                    return false;
                }
                self.next = (hint + 1).min(rejected).max(self.matched + 1);
                self.probe_sent = false;
                true
            }
        }
    }

    pub fn inflight_count(&self) -> usize {
        self.inflight.len()
    }
}

/// Whether a learner whose log matches the leader's up to `matched` may be promoted to voter
/// while the leader's log ends at `leader_last`: it must hold at least 90 % of it, etcd's rule
/// (`isLearnerReady`). A voter that lags far behind counts towards the quorum without being able
/// to help commit, so promoting it early lowers the group's fault tolerance until it catches up.
pub fn learner_in_sync(matched: Index, leader_last: Index) -> bool {
    u128::from(matched) * 10 >= u128::from(leader_last) * 9
}
