//! ReadIndex bookkeeping on a leader: many reads share one heartbeat round.
//!
//! Every heartbeat broadcast opens a *round* with a sequence number. A follower's response to
//! round `r` proves it still accepted this leader when round `r` was sent, which also covers every
//! earlier round. When a quorum has answered round `r`, every read attached to a round `<= r` may
//! be served at the commit index recorded when it was attached.

use std::collections::VecDeque;

use crate::types::{Index, NodeId};

/// Who asked for a read: this member's host, or a follower that forwarded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOrigin {
    Local,
    Remote(NodeId),
}

#[derive(Clone, Copy, Debug)]
pub struct PendingRead {
    pub origin: ReadOrigin,
    pub id: u64,
    pub index: Index,
}

#[derive(Debug, Default)]
pub struct ReadRounds {
    /// Sequence number of the last round sent.
    pub last_round: u64,
    /// The tick each recent round was sent at (for leases); bounded.
    sent_at: VecDeque<(u64, u64)>,
    /// Reads attached to a round that has not reached a quorum yet, in round order.
    in_flight: VecDeque<(u64, PendingRead)>,
    /// Reads waiting for the next round.
    pub queued: Vec<PendingRead>,
}

/// How many rounds' send ticks are remembered for the lease.
const ROUNDS_REMEMBERED_MAX: usize = 64;

impl ReadRounds {
    pub fn pending_count(&self) -> usize {
        self.in_flight.len() + self.queued.len()
    }

    pub fn has_in_flight(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Opens a round sent at `tick`, attaching every queued read to it; returns its number.
    pub fn open_round(&mut self, tick: u64) -> u64 {
        self.last_round += 1;
        let round = self.last_round;
        self.sent_at.push_back((round, tick));
        while self.sent_at.len() > ROUNDS_REMEMBERED_MAX {
            self.sent_at.pop_front();
        }
        for read in self.queued.drain(..) {
            self.in_flight.push_back((round, read));
        }
        round
    }

    /// Releases the reads confirmed by a quorum having answered `round`.
    pub fn confirm(&mut self, round: u64) -> Vec<PendingRead> {
        let mut done = Vec::new();
        while self.in_flight.front().is_some_and(|(r, _)| *r <= round) {
            let (_, read) = self.in_flight.pop_front().expect("checked non-empty");
            done.push(read);
        }
        done
    }

    pub fn sent_tick(&self, round: u64) -> Option<u64> {
        self.sent_at.iter().find(|(r, _)| *r == round).map(|(_, tick)| *tick)
    }

    /// Forgets everything (leadership lost): the reads will never be confirmed by this term.
    pub fn reset(&mut self) {
        self.in_flight.clear();
        self.queued.clear();
        self.sent_at.clear();
    }
}
