//! Phase 4: bounded loads.
//!
//! A member is *starved* below ⌊share × (1 − ε)⌋ replicas and *overloaded* above
//! ⌈share × (1 + ε)⌉. Only then does a replica on an eligible member move: a starved member
//! (a newcomer, typically) takes replicas from the members most above their share until it
//! reaches ⌊share⌋, and an overloaded one hands replicas to the lightest valid members until it
//! is down to ⌈share⌉. Filling to the share rather than to the band's edge is hysteresis: the
//! next small change does not trigger another round of moves.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::Work;
use crate::hash::affinity;

impl Work {
    pub(super) fn rebalance(&mut self) {
        let slack = u64::from(self.config.slack_per_mille);
        let eligible: Vec<u32> =
            (0..self.members.len() as u32).filter(|&member| self.cluster.eligible[member as usize]).collect();
        let load = |work: &Work, member: u32| u64::from(work.loads.get(member));
        let share = |work: &Work, member: u32| work.cluster.shares[member as usize];
        let mut starved: Vec<u32> = eligible
            .iter()
            .copied()
            .filter(|&member| load(self, member) < share(self, member).floor_scaled(1000 - slack))
            .collect();
        let mut overloaded: Vec<u32> = eligible
            .iter()
            .copied()
            .filter(|&member| load(self, member) > share(self, member).ceil_scaled(1000 + slack))
            .collect();
        if starved.is_empty() && overloaded.is_empty() {
            return;
        }
        self.build_holdings();
        starved.sort_by_key(|&member| (self.loads.get(member), member));
        for receiver in starved {
            self.feed(receiver);
        }
        overloaded.sort_by_key(|&member| (Reverse(share(self, member).excess(load(self, member))), member));
        for donor in overloaded {
            self.drain(donor);
        }
    }

    /// Member → the shards it holds, kept current by every later move.
    pub(super) fn build_holdings(&mut self) {
        if self.holdings.is_some() {
            return;
        }
        let mut holdings: Vec<Vec<u32>> =
            self.loads.all().iter().map(|&load| Vec::with_capacity(load as usize + 8)).collect();
        for shard in 0..self.shards.len() {
            for &member in self.row(shard) {
                holdings[member as usize].push(shard as u32);
            }
        }
        self.holdings = Some(holdings);
    }

    fn holdings_of(&self, member: u32) -> &[u32] {
        self.holdings.as_ref().map_or(&[][..], |holdings| &holdings[member as usize])
    }

    fn move_replica(&mut self, shard: usize, from: u32, to: u32) {
        self.drop_replica(shard, from);
        self.push_replica(shard, to);
    }

    /// Raises `receiver` to ⌊its share⌋, one replica at a time from whoever is most above
    /// theirs. Each move must leave the donor at least as far above its share as the receiver
    /// ends up, so a move never just shifts the imbalance; the first donor that fails this
    /// ends the feeding, as every other donor is further down.
    fn feed(&mut self, receiver: u32) {
        let goal = self.cluster.shares[receiver as usize].floor();
        let excess = |work: &Work, member: u32, delta: i64| {
            let load = i64::from(work.loads.get(member)) + delta;
            work.cluster.shares[member as usize].excess(u64::try_from(load).unwrap_or(0))
        };
        let mut donors: BinaryHeap<_> = (0..self.members.len() as u32)
            .filter(|&member| {
                member != receiver && self.cluster.eligible[member as usize] && self.loads.get(member) > 0
            })
            .map(|member| (excess(self, member, 0), Reverse(member)))
            .collect();
        let mut moves_left = self.slots.len();
        while u64::from(self.loads.get(receiver)) < goal && moves_left > 0 {
            let Some((_, Reverse(donor))) = donors.pop() else { break };
            if excess(self, donor, -1) < excess(self, receiver, 1) {
                break;
            }
            // A donor with nothing movable (every shard it holds already uses the receiver's
            // domain) is dropped for this receiver.
            let Some(shard) = self.movable_shard(donor, receiver) else { continue };
            self.move_replica(shard, donor, receiver);
            moves_left -= 1;
            donors.push((excess(self, donor, 0), Reverse(donor)));
        }
    }

    /// One of `donor`'s shards that `receiver` may take over: a follower replica rather than a
    /// leader (no leader transfer needed), then the receiver's highest rendezvous score.
    fn movable_shard(&self, donor: u32, receiver: u32) -> Option<usize> {
        let receiver_id = self.cluster.ids[receiver as usize];
        self.holdings_of(donor)
            .iter()
            .map(|&shard| shard as usize)
            .filter(|&shard| self.may_replace(shard, donor, receiver))
            .max_by_key(|&shard| (self.leaders[shard] != donor, affinity(self.shards[shard].0, receiver_id)))
    }

    /// Lowers `donor` to ⌈its share⌉ by handing replicas to the lightest valid members.
    fn drain(&mut self, donor: u32) {
        let goal = self.cluster.shares[donor as usize].ceil();
        let donor_id = self.cluster.ids[donor as usize];
        let mut shards: Vec<usize> = self.holdings_of(donor).iter().map(|&shard| shard as usize).collect();
        // Followers before leaderships, and the shards it scores lowest on first (rendezvous:
        // the member keeps the shards that hash closest to it).
        shards.sort_by_key(|&shard| (self.leaders[shard] == donor, affinity(self.shards[shard].0, donor_id)));
        for shard in shards {
            if u64::from(self.loads.get(donor)) <= goal {
                break;
            }
            let Some(receiver) = self.choose(shard, None, donor) else { continue };
            let donor_after = self.cluster.shares[donor as usize].excess(u64::from(self.loads.get(donor)) - 1);
            let receiver_after = self.cluster.shares[receiver as usize].excess(u64::from(self.loads.get(receiver)) + 1);
            if donor_after >= receiver_after {
                self.move_replica(shard, donor, receiver);
            }
        }
    }
}
