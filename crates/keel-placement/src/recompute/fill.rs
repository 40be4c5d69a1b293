//! Phase 3: every shard gets its missing replicas, and this round's new replicas are spread.
//!
//! Each missing replica goes to the least-loaded valid member (see [`Work::choose`]). On its
//! own that piles a leaver's replicas onto whoever happens to be lightest, so the round also
//! has a quota: member `m` should receive between ⌊placing × share(m) / replicas⌋ and
//! ⌈placing × share(m) / replicas⌉ of the `placing` new replicas — for a leaver's 192 replicas
//! among 99 equal members, one or two each. `choose` prefers members below their ceiling;
//! where the domain rule left no such choice, a levelling pass moves *this round's* new
//! replicas between receivers (never a replica that was already placed), along the shortest
//! chain that works (a → b → c: b takes one of a's and hands one of its own to c), until
//! nobody is above its ceiling or below its floor, or no chain remains. Chains are needed:
//! with 5 zones, one zone can be left with members short of their floor that no over-full
//! receiver can hand a shard to directly (every such shard already has a replica there).

use super::Work;
use crate::share::Share;

/// This round's quota and what each member received in it.
pub(super) struct Quota {
    floor: Vec<u32>,
    cap: Vec<u32>,
    received: Vec<u32>,
    /// Member → shards whose new replica it received in this round.
    round: Vec<Vec<u32>>,
}

/// The most candidate checks one chain search may make: chains matter for a round of a few
/// hundred replicas (a leaver's), where a search costs far less; this only bounds a search
/// that cannot succeed in a huge round (a first placement).
const CHAIN_CHECKS_MAX: usize = 1 << 20;

/// The moves from the giver down to `end`, in order (shard, from, to).
fn chain_back(came_from: &[Option<(u32, u32)>], end: u32) -> Vec<(u32, u32, u32)> {
    let mut chain = Vec::new();
    let mut at = end;
    while let Some((from, shard)) = came_from[at as usize] {
        chain.push((shard, from, at));
        at = from;
    }
    chain.reverse();
    chain
}

impl Quota {
    pub(super) fn has_room(&self, member: u32) -> bool {
        self.received[member as usize] < self.cap[member as usize]
    }

    fn take(&mut self, member: u32, shard: usize) {
        self.received[member as usize] += 1;
        self.round[member as usize].push(shard as u32);
    }

    fn give_back(&mut self, member: u32, shard: usize) {
        self.received[member as usize] -= 1;
        let round = &mut self.round[member as usize];
        if let Some(position) = round.iter().position(|&held| held as usize == shard) {
            round.swap_remove(position);
        }
    }
}

impl Work {
    pub(super) fn fill(&mut self) {
        let replication = self.cluster.replication;
        let placing: u64 = self.counts.iter().map(|&count| replication.saturating_sub(usize::from(count)) as u64).sum();
        if placing == 0 {
            return;
        }
        let mut quota = self.quota(placing);
        for shard in 0..self.shards.len() {
            while usize::from(self.counts[shard]) < replication {
                let Some(member) = self.choose(shard, Some(&quota), crate::placement::NO_MEMBER) else {
                    unreachable!("no valid member although enough eligible ones exist");
                };
                quota.take(member, shard);
                self.push_replica(shard, member);
            }
        }
        self.level(&mut quota, placing);
    }

    fn quota(&self, placing: u64) -> Quota {
        let total = (self.shards.len() * self.cluster.replication) as u64;
        let part = |share: &Share, ceil: bool| {
            let part = if ceil { share.ceil_times(placing, total) } else { share.floor_times(placing, total) };
            u32::try_from(part).unwrap_or(u32::MAX)
        };
        let members = self.members.len();
        Quota {
            floor: self.cluster.shares.iter().map(|share| part(share, false)).collect(),
            cap: self.cluster.shares.iter().map(|share| part(share, true)).collect(),
            received: vec![0; members],
            round: vec![Vec::new(); members],
        }
    }

    /// Swaps this round's new replicas until every member is within its quota, or no valid
    /// swap remains. Each swap lowers the total quota violation by one, so `placing` bounds the
    /// loop.
    fn level(&mut self, quota: &mut Quota, placing: u64) {
        let members = self.members.len() as u32;
        let mut stuck = vec![false; members as usize];
        for _ in 0..placing {
            let eligible = |member: &u32| self.cluster.eligible[*member as usize] && !stuck[*member as usize];
            let over = (0..members).filter(eligible).find(|&m| quota.received[m as usize] > quota.cap[m as usize]);
            let short = (0..members).filter(eligible).find(|&m| quota.received[m as usize] < quota.floor[m as usize]);
            match (over, short) {
                (Some(giver), _) => {
                    if !self.hand_over(giver, quota) {
                        stuck[giver as usize] = true;
                    }
                }
                (None, Some(taker)) => {
                    if !self.take_over(taker, quota) {
                        stuck[taker as usize] = true;
                    }
                }
                (None, None) => break,
            }
        }
    }

    /// Moves one of `giver`'s new replicas towards a member below its ceiling: directly, or
    /// along a chain of this round's receivers (giver → a → taker: `a` takes one of the giver's
    /// new replicas and hands one of its own on, so only the ends change their counts). A
    /// breadth-first search over members, so the shortest chain wins.
    fn hand_over(&mut self, giver: u32, quota: &mut Quota) -> bool {
        let members = self.members.len();
        let mut order: Vec<u32> = (0..members as u32).filter(|&m| self.cluster.eligible[m as usize]).collect();
        // Members below their floor first, then the lightest: the first one found is taken.
        order.sort_by_key(|&m| (quota.received[m as usize] >= quota.floor[m as usize], self.loads.get(m), m));
        let mut came_from: Vec<Option<(u32, u32)>> = vec![None; members];
        let mut visited = vec![false; members];
        visited[giver as usize] = true;
        let mut queue = std::collections::VecDeque::from([giver]);
        let mut budget = CHAIN_CHECKS_MAX;
        while let Some(from) = queue.pop_front() {
            for &shard in &quota.round[from as usize] {
                for &to in &order {
                    if visited[to as usize] || budget == 0 {
                        continue;
                    }
                    budget -= 1;
                    if !self.may_replace(shard as usize, from, to) {
                        continue;
                    }
                    visited[to as usize] = true;
                    came_from[to as usize] = Some((from, shard));
                    if quota.has_room(to) {
                        let chain = chain_back(&came_from, to);
                        return self.apply_chain(&chain, quota);
                    }
                    queue.push_back(to);
                }
            }
        }
        false
    }

    /// Brings one new replica to `taker` from a member above its floor, directly or along a
    /// chain of this round's receivers (see [`Work::hand_over`]); searched backwards from the
    /// taker.
    fn take_over(&mut self, taker: u32, quota: &mut Quota) -> bool {
        let members = self.members.len();
        let surplus = |m: u32| quota.received[m as usize] > quota.floor[m as usize];
        let mut order: Vec<u32> = (0..members as u32).filter(|&m| !quota.round[m as usize].is_empty()).collect();
        // The furthest above their floor first.
        order.sort_by_key(|&m| {
            (std::cmp::Reverse(i64::from(quota.received[m as usize]) - i64::from(quota.floor[m as usize])), m)
        });
        let mut goes_to: Vec<Option<(u32, u32)>> = vec![None; members];
        let mut visited = vec![false; members];
        visited[taker as usize] = true;
        let mut queue = std::collections::VecDeque::from([taker]);
        let mut budget = CHAIN_CHECKS_MAX;
        while let Some(to) = queue.pop_front() {
            for &from in &order {
                if visited[from as usize] || budget == 0 {
                    continue;
                }
                let round = &quota.round[from as usize];
                budget = budget.saturating_sub(round.len());
                let Some(&shard) = round.iter().find(|&&shard| self.may_replace(shard as usize, from, to)) else {
                    continue;
                };
                visited[from as usize] = true;
                goes_to[from as usize] = Some((to, shard));
                if surplus(from) {
                    let mut chain = Vec::new();
                    let mut at = from;
                    while let Some((next, shard)) = goes_to[at as usize] {
                        chain.push((shard, at, next));
                        at = next;
                    }
                    return self.apply_chain(&chain, quota);
                }
                queue.push_back(from);
            }
        }
        false
    }

    /// Carries out a chain of (shard, from, to) moves of this round's new replicas. Each move
    /// was checked against the assignment as it was; they stay valid together because each
    /// touches only its own shard, so a chain that names a shard twice is refused instead.
    fn apply_chain(&mut self, chain: &[(u32, u32, u32)], quota: &mut Quota) -> bool {
        let mut shards: Vec<u32> = chain.iter().map(|&(shard, _, _)| shard).collect();
        shards.sort_unstable();
        shards.dedup();
        if shards.len() != chain.len() {
            return false;
        }
        for &(shard, from, to) in chain {
            debug_assert!(self.may_replace(shard as usize, from, to), "a chain move went stale");
            self.swap_new_replica(shard as usize, from, to, quota);
        }
        true
    }

    fn swap_new_replica(&mut self, shard: usize, from: u32, to: u32, quota: &mut Quota) {
        self.drop_replica(shard, from);
        self.push_replica(shard, to);
        quota.give_back(from, shard);
        quota.take(to, shard);
    }
}
