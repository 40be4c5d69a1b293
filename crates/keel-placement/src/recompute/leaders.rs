//! Phase 5: preferred leaders.
//!
//! A leader move is a raft leader transfer: cheap, but a short pause of that shard's writes, so
//! leaders stay put unless theirs is gone or a member is outside the band
//! [⌊λ(1 − ε)⌋, ⌈λ(1 + ε)⌉] around λ = led shards / eligible members. Orphaned shards go to the
//! replica leading fewest; then members above the band hand leaderships to co-replicas below
//! ⌈λ⌉, and members below it take leaderships from co-replicas above ⌊λ⌋.

use std::cmp::Reverse;
use std::collections::VecDeque;

use super::Work;
use crate::hash::affinity;
use crate::placement::NO_MEMBER;
use crate::share::Share;

impl Work {
    pub(super) fn choose_leaders(&mut self) {
        let mut led = vec![0u32; self.members.len()];
        for shard in 0..self.shards.len() {
            let leader = self.leaders[shard];
            if leader != NO_MEMBER && self.holds(shard, leader) {
                led[leader as usize] += 1;
            } else {
                self.leaders[shard] = NO_MEMBER;
            }
        }
        for shard in 0..self.shards.len() {
            if self.leaders[shard] != NO_MEMBER {
                continue;
            }
            if let Some(heir) = self.least_leading(shard, NO_MEMBER, &led) {
                self.leaders[shard] = heir;
                led[heir as usize] += 1;
            }
        }
        self.balance_leaders(&mut led);
    }

    /// The replica of `shard` (other than `except`) leading fewest shards; ties to the highest
    /// rendezvous score.
    fn least_leading(&self, shard: usize, except: u32, led: &[u32]) -> Option<u32> {
        let shard_id = self.shards[shard].0;
        self.row(shard).iter().copied().filter(|&member| member != except).min_by_key(|&member| {
            (led[member as usize], Reverse(affinity(shard_id, self.cluster.ids[member as usize])))
        })
    }

    fn balance_leaders(&mut self, led: &mut [u32]) {
        let led_shards = self.leaders.iter().filter(|&&leader| leader != NO_MEMBER).count() as u64;
        if self.cluster.eligible_count == 0 || led_shards == 0 {
            return;
        }
        let share = Share::new(led_shards, self.cluster.eligible_count as u64);
        let slack = u64::from(self.config.slack_per_mille);
        let (band_low, band_high) = (share.floor_scaled(1000 - slack), share.ceil_scaled(1000 + slack));
        let eligible: Vec<u32> =
            (0..self.members.len() as u32).filter(|&member| self.cluster.eligible[member as usize]).collect();
        let outside = |led: &[u32], member: u32| {
            let count = u64::from(led[member as usize]);
            count < band_low || count > band_high
        };
        if !eligible.iter().any(|&member| outside(led, member)) {
            return;
        }
        self.build_holdings();
        // Members below the band first (a newcomer takes from the busiest), then whoever is
        // still above it hands leaderships down.
        let mut under: Vec<u32> =
            eligible.iter().copied().filter(|&member| u64::from(led[member as usize]) < band_low).collect();
        under.sort_by_key(|&member| (led[member as usize], member));
        for member in under {
            while u64::from(led[member as usize]) < share.floor() && self.pull_leadership(member, share.floor(), led) {}
        }
        let mut over: Vec<u32> =
            eligible.iter().copied().filter(|&member| u64::from(led[member as usize]) > band_high).collect();
        over.sort_by_key(|&member| (Reverse(led[member as usize]), member));
        for member in over {
            while u64::from(led[member as usize]) > share.ceil() && self.push_leadership(member, share.ceil(), led) {}
        }
    }

    /// Gives one of `member`'s leaderships away, to a co-replica leading fewer than `goal`, or
    /// along a chain (member → a → b: a takes one of member's shards and hands one of its own
    /// to b, so only the ends change counts). Breadth-first: the shortest chain wins.
    fn push_leadership(&mut self, member: u32, goal: u64, led: &mut [u32]) -> bool {
        let mut came_from: Vec<Option<(u32, u32)>> = vec![None; self.members.len()];
        let mut visited = vec![false; self.members.len()];
        visited[member as usize] = true;
        let mut queue = VecDeque::from([member]);
        while let Some(from) = queue.pop_front() {
            for shard in self.holdings_of_member(from) {
                if self.leaders[shard] != from {
                    continue;
                }
                for &to in self.row(shard) {
                    if visited[to as usize] {
                        continue;
                    }
                    visited[to as usize] = true;
                    came_from[to as usize] = Some((from, shard as u32));
                    if u64::from(led[to as usize]) < goal && led[to as usize] + 1 < led[member as usize] {
                        let mut at = to;
                        while let Some((from, shard)) = came_from[at as usize] {
                            self.transfer_leadership(shard as usize, from, at, led);
                            at = from;
                        }
                        return true;
                    }
                    queue.push_back(to);
                }
            }
        }
        false
    }

    /// Takes one leadership for `member` from a co-replica leading more than `goal` (the
    /// busiest first), or along a chain as in [`Work::push_leadership`], searched backwards.
    fn pull_leadership(&mut self, member: u32, goal: u64, led: &mut [u32]) -> bool {
        let mut goes_to: Vec<Option<(u32, u32)>> = vec![None; self.members.len()];
        let mut visited = vec![false; self.members.len()];
        visited[member as usize] = true;
        let mut queue = VecDeque::from([member]);
        while let Some(to) = queue.pop_front() {
            let mut shards = self.holdings_of_member(to);
            shards.sort_by_key(|&shard| (Reverse(led[self.leaders[shard] as usize]), shard));
            for shard in shards {
                let from = self.leaders[shard];
                if visited[from as usize] {
                    continue;
                }
                visited[from as usize] = true;
                goes_to[from as usize] = Some((to, shard as u32));
                if u64::from(led[from as usize]) > goal && led[from as usize] > led[member as usize] + 1 {
                    let mut at = from;
                    while let Some((to, shard)) = goes_to[at as usize] {
                        self.transfer_leadership(shard as usize, at, to, led);
                        at = to;
                    }
                    return true;
                }
                queue.push_back(from);
            }
        }
        false
    }

    fn transfer_leadership(&mut self, shard: usize, from: u32, to: u32, led: &mut [u32]) {
        debug_assert_eq!(self.leaders[shard], from, "a chain transfers a leadership its giver lacks");
        debug_assert!(self.holds(shard, to), "a leadership handed to a non-replica");
        self.leaders[shard] = to;
        led[from as usize] -= 1;
        led[to as usize] += 1;
    }

    fn holdings_of_member(&self, member: u32) -> Vec<usize> {
        let holdings = self.holdings.as_ref().map_or(&[][..], |holdings| &holdings[member as usize][..]);
        holdings.iter().map(|&shard| shard as usize).collect()
    }
}
