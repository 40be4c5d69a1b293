//! One recomputation: previous placement + current members and shards → next placement.
//!
//! The phases, in order (the crate doc argues for them):
//! 1. **carry** every replica whose member is still eligible, and the leader if it stayed;
//! 2. **trim** shards that now break the rules (more replicas than the replication factor, or two
//!    in one domain while there are enough domains), dropping the replica on the most
//!    overloaded member;
//! 3. **fill** missing replicas, shard by shard, with the least-loaded valid member, each member
//!    receiving its fair part of this round's new replicas where the domain rule allows
//!    (`fill.rs`);
//! 4. **rebalance** only members outside the bounded-load band: starved ones (a newcomer) take
//!    replicas from the most loaded until they reach their share, overloaded ones give
//!    (`rebalance.rs`);
//! 5. **leaders**: keep, reassign orphans to the replica leading fewest, then balance the band
//!    (`leaders.rs`).

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::hash::{affinity, walk};
use crate::loads::Loads;
use crate::placement::{Placement, NO_MEMBER};
use crate::share::{per_domain_limit, water_fill, Share};
use crate::{Member, PlacementConfig, ShardId, MAX_REPLICATION_FACTOR};

mod fill;
mod leaders;
mod rebalance;

use fill::Quota;

/// The eligible members of one recomputation and what the rules allow them.
struct Cluster {
    eligible: Vec<bool>,
    eligible_count: usize,
    /// Member index → domain index (for every member; domains are numbered by sorted label).
    domain_of: Vec<u32>,
    /// Replicas per shard: the replication factor, or every eligible member if fewer.
    replication: usize,
    /// Replicas of one shard a domain may hold (1 when there are ≥ `replication` domains).
    per_domain: u32,
    /// Member index → fair share of replicas (zero for ineligible members).
    shares: Vec<Share>,
    /// Eligible member indices, ascending: what candidate searches walk over.
    candidates: Vec<u32>,
    /// Ids, for the hashes.
    ids: Vec<u64>,
}

impl Cluster {
    fn new(members: &[Member], replication_factor: usize, shard_count: usize) -> (Cluster, Vec<Vec<u32>>) {
        let labels: BTreeMap<&str, u32> = {
            let mut labels: Vec<&str> = members.iter().map(|member| member.domain.as_str()).collect();
            labels.sort_unstable();
            labels.dedup();
            labels.into_iter().enumerate().map(|(index, label)| (label, index as u32)).collect()
        };
        let domain_of: Vec<u32> = members.iter().map(|member| labels[member.domain.as_str()]).collect();
        let eligible: Vec<bool> = members.iter().map(|member| member.eligible).collect();
        let mut domain_members = vec![Vec::new(); labels.len()];
        for (index, member) in members.iter().enumerate() {
            if member.eligible {
                domain_members[domain_of[index] as usize].push(index as u32);
            }
        }
        let eligible_count = eligible.iter().filter(|&&eligible| eligible).count();
        let replication = replication_factor.min(eligible_count);
        // Shares are computed over the domains that have eligible members.
        let populated: Vec<usize> = (0..labels.len()).filter(|&domain| !domain_members[domain].is_empty()).collect();
        let sizes: Vec<u64> = populated.iter().map(|&domain| domain_members[domain].len() as u64).collect();
        let per_domain = per_domain_limit(&sizes, replication as u64);
        let domain_shares = water_fill(&sizes, per_domain, shard_count as u64, replication as u64);
        let mut shares = vec![Share::ZERO; members.len()];
        for (position, &domain) in populated.iter().enumerate() {
            for &member in &domain_members[domain] {
                shares[member as usize] = domain_shares[position];
            }
        }
        let candidates: Vec<u32> = (0..members.len() as u32).filter(|&index| eligible[index as usize]).collect();
        let cluster = Cluster {
            eligible,
            eligible_count,
            domain_of,
            replication,
            per_domain: u32::try_from(per_domain).unwrap_or(u32::MAX),
            shares,
            candidates,
            ids: members.iter().map(|member| member.id.0).collect(),
        };
        (cluster, domain_members)
    }
}

/// Each member's fair share of replicas (by member index; `members` sorted by id).
pub(crate) fn fair_shares(members: &[Member], replication_factor: usize, shard_count: usize) -> Vec<Share> {
    Cluster::new(members, replication_factor, shard_count).0.shares
}

/// A shard's replicas per domain (at most `MAX_REPLICATION_FACTOR` domains).
struct DomainUse {
    domains: [u32; MAX_REPLICATION_FACTOR],
    counts: [u32; MAX_REPLICATION_FACTOR],
    len: usize,
}

impl DomainUse {
    fn count(&self, domain: u32) -> u32 {
        (0..self.len).find(|&i| self.domains[i] == domain).map_or(0, |i| self.counts[i])
    }
}

/// The assignment under construction.
struct Work {
    config: PlacementConfig,
    /// Sorted by id.
    members: Vec<Member>,
    cluster: Cluster,
    shards: Vec<ShardId>,
    stride: usize,
    slots: Vec<u32>,
    counts: Vec<u8>,
    leaders: Vec<u32>,
    loads: Loads,
    /// Member index → indices of the shards it holds; built only when rebalancing needs it.
    holdings: Option<Vec<Vec<u32>>>,
    /// Shards that came out of the carry breaking a rule (over the replication factor, or
    /// crowding a domain), for the trim.
    unruly: Vec<u32>,
}

impl Placement {
    /// The next placement for `members` and `shards`, starting from this one.
    ///
    /// Every replica whose member is still eligible stays where it is unless the shard breaks
    /// the rules or a member falls outside the bounded-load band (a newcomer always does); see
    /// the crate doc. The order of `members` and `shards` does not matter; duplicate shards are
    /// merged; a member id listed twice is an error.
    pub fn recompute(&self, members: &[Member], shards: &[ShardId]) -> Result<Placement, crate::PlacementError> {
        let members = crate::sorted_members(members)?;
        let mut shards = shards.to_vec();
        // Callers usually keep their groups in order already; sorting 64k ids is then skipped.
        if !shards.windows(2).all(|pair| pair[0] < pair[1]) {
            shards.sort_unstable();
            shards.dedup();
        }
        let mut work = Work::carry(self, members, shards);
        work.trim();
        work.fill();
        work.rebalance();
        work.choose_leaders();
        Ok(work.finish())
    }
}

impl Work {
    /// Phase 1: the previous placement's replicas on still-eligible members.
    fn carry(previous: &Placement, members: Vec<Member>, shards: Vec<ShardId>) -> Work {
        let (cluster, domain_members) = Cluster::new(&members, previous.config.replication_factor, shards.len());
        let translate = translate_members(&previous.members, &members, &cluster.eligible);
        let stride = previous.stride.max(previous.config.replication_factor);
        let mut slots = vec![NO_MEMBER; shards.len() * stride];
        let mut counts = vec![0u8; shards.len()];
        let mut leaders = vec![NO_MEMBER; shards.len()];
        let mut load = vec![0u32; members.len()];
        let mut unruly = Vec::new();
        let mut old = 0;
        for (index, shard) in shards.iter().enumerate() {
            // Both lists are sorted: a merge, not a search per shard.
            while previous.shards.get(old).is_some_and(|known| known < shard) {
                old += 1;
            }
            if previous.shards.get(old) != Some(shard) {
                continue;
            }
            for &member in previous.row(old) {
                let member = translate[member as usize];
                if member != NO_MEMBER {
                    slots[index * stride + usize::from(counts[index])] = member;
                    counts[index] += 1;
                    load[member as usize] += 1;
                }
            }
            // Checked here, while the row is at hand, so that trimming visits only these.
            let row = &slots[index * stride..index * stride + usize::from(counts[index])];
            if row.len() > cluster.replication || crowded_domain(row, &cluster.domain_of, cluster.per_domain).is_some()
            {
                unruly.push(index as u32);
            }
            let leader = previous.leaders[old];
            leaders[index] = if leader == NO_MEMBER { NO_MEMBER } else { translate[leader as usize] };
        }
        let loads = Loads::new(load, cluster.domain_of.clone(), domain_members);
        Work {
            config: previous.config,
            members,
            cluster,
            shards,
            stride,
            slots,
            counts,
            leaders,
            loads,
            holdings: None,
            unruly,
        }
    }

    fn row(&self, shard: usize) -> &[u32] {
        let start = shard * self.stride;
        &self.slots[start..start + usize::from(self.counts[shard])]
    }

    fn holds(&self, shard: usize, member: u32) -> bool {
        self.row(shard).contains(&member)
    }

    /// Domains used by the shard's replicas, `leaving` not counted.
    fn domain_use(&self, shard: usize, leaving: u32) -> DomainUse {
        let mut uses = DomainUse { domains: [0; MAX_REPLICATION_FACTOR], counts: [0; MAX_REPLICATION_FACTOR], len: 0 };
        for &member in self.row(shard) {
            if member == leaving {
                continue;
            }
            let domain = self.cluster.domain_of[member as usize];
            match (0..uses.len).find(|&i| uses.domains[i] == domain) {
                Some(i) => uses.counts[i] += 1,
                None => {
                    uses.domains[uses.len] = domain;
                    uses.counts[uses.len] = 1;
                    uses.len += 1;
                }
            }
        }
        uses
    }

    fn crowded_domain(&self, shard: usize) -> Option<u32> {
        crowded_domain(self.row(shard), &self.cluster.domain_of, self.cluster.per_domain)
    }

    /// Whether `member` may replace `leaving` in `shard`: it does not hold the shard already and
    /// its domain stays within the limit. (The per-candidate test of rebalancing: one pass.)
    fn may_replace(&self, shard: usize, leaving: u32, member: u32) -> bool {
        let domain = self.cluster.domain_of[member as usize];
        let mut sharing = 0;
        for &held in self.row(shard) {
            if held == member {
                return false;
            }
            if held != leaving && self.cluster.domain_of[held as usize] == domain {
                sharing += 1;
            }
        }
        sharing < self.cluster.per_domain
    }

    fn push_replica(&mut self, shard: usize, member: u32) {
        let count = usize::from(self.counts[shard]);
        assert!(count < self.stride, "shard {:?} is full", self.shards[shard]);
        debug_assert!(!self.holds(shard, member), "a member twice in one shard");
        self.slots[shard * self.stride + count] = member;
        self.counts[shard] += 1;
        self.loads.add(member);
        if let Some(holdings) = &mut self.holdings {
            holdings[member as usize].push(shard as u32);
        }
    }

    fn drop_replica(&mut self, shard: usize, member: u32) {
        let start = shard * self.stride;
        let count = usize::from(self.counts[shard]);
        let Some(position) = self.slots[start..start + count].iter().position(|&held| held == member) else {
            unreachable!("dropping a replica the shard does not have");
        };
        self.slots[start + position] = self.slots[start + count - 1];
        self.slots[start + count - 1] = NO_MEMBER;
        self.counts[shard] -= 1;
        self.loads.remove(member);
        if let Some(holdings) = &mut self.holdings {
            let held = &mut holdings[member as usize];
            if let Some(position) = held.iter().position(|&held_shard| held_shard as usize == shard) {
                held.swap_remove(position);
            }
        }
    }

    /// Phase 2: shards over the replication factor or over a domain's limit lose the replica
    /// on the member most above its share (the leader last).
    fn trim(&mut self) {
        for shard in std::mem::take(&mut self.unruly) {
            let shard = shard as usize;
            loop {
                let crowded = self.crowded_domain(shard);
                if crowded.is_none() && usize::from(self.counts[shard]) <= self.cluster.replication {
                    break;
                }
                let candidates =
                    self.row(shard).iter().copied().filter(|&member| {
                        crowded.is_none_or(|domain| self.cluster.domain_of[member as usize] == domain)
                    });
                let Some(victim) = candidates.max_by_key(|&member| {
                    let load = u64::from(self.loads.get(member));
                    let key = self.cluster.shares[member as usize].excess(load);
                    (
                        self.leaders[shard] != member,
                        key,
                        Reverse(affinity(self.shards[shard].0, self.cluster.ids[member as usize])),
                    )
                }) else {
                    unreachable!("a crowded shard without replicas");
                };
                self.drop_replica(shard, victim);
            }
        }
    }

    /// The least-loaded member that may take a replica of `shard` (in place of `leaving`, if
    /// given): eligible, not holding it, in a domain below its limit for the shard. Members
    /// with room in `quota` come first; ties go to the first member met on the shard's walk
    /// (see [`walk`]), which stops early at a member as light as the lower bound allows.
    fn choose(&self, shard: usize, quota: Option<&Quota>, leaving: u32) -> Option<u32> {
        let uses = self.domain_use(shard, leaving);
        let per_domain = self.cluster.per_domain;
        let mut full = [0u32; MAX_REPLICATION_FACTOR];
        let mut full_count = 0;
        for i in (0..uses.len).filter(|&i| uses.counts[i] >= per_domain) {
            full[full_count] = uses.domains[i];
            full_count += 1;
        }
        let bound = self.loads.lower_bound(&full[..full_count])?;
        let ordinal = u64::from(self.counts[shard]) - u64::from(leaving != NO_MEMBER);
        let candidates = &self.cluster.candidates;
        let (mut position, stride) = walk(self.shards[shard].0, ordinal, candidates.len());
        // The lightest (load, member) so far among members with room in the quota, and among
        // the rest (the fallback when the domain rule leaves only full members).
        let mut open_best: Option<(u32, u32)> = None;
        let mut any_best: Option<(u32, u32)> = None;
        for _ in 0..candidates.len() {
            let member = candidates[position];
            position += stride;
            if position >= candidates.len() {
                position -= candidates.len();
            }
            if member == leaving
                || self.holds(shard, member)
                || uses.count(self.cluster.domain_of[member as usize]) >= per_domain
            {
                continue;
            }
            let load = self.loads.get(member);
            debug_assert!(load >= bound, "the lower bound is not one");
            let best = if quota.is_none_or(|quota| quota.has_room(member)) {
                if load == bound {
                    return Some(member);
                }
                &mut open_best
            } else {
                &mut any_best
            };
            if best.is_none_or(|(best_load, _)| load < best_load) {
                *best = Some((load, member));
            }
        }
        open_best.or(any_best).map(|(_, member)| member)
    }
}

/// A domain holding more than `limit` of a shard's replicas (`row`), if any. Pairwise, with no
/// allocation: it runs for every shard on every recomputation.
fn crowded_domain(row: &[u32], domain_of: &[u32], limit: u32) -> Option<u32> {
    let mut domains = [0u32; MAX_REPLICATION_FACTOR];
    for (domain, &member) in domains.iter_mut().zip(row) {
        *domain = domain_of[member as usize];
    }
    let domains = &domains[..row.len()];
    for (i, &domain) in domains.iter().enumerate() {
        // Counting a domain's later occurrences from its first one is enough.
        let mut sharing = 1;
        for &other in &domains[i + 1..] {
            sharing += u32::from(other == domain);
        }
        if sharing > limit {
            return Some(domain);
        }
    }
    None
}

/// Rows of `wide` slots cut to their first `narrow` (the rest must be empty).
fn narrow(slots: &[u32], wide: usize, narrow: usize) -> Vec<u32> {
    slots
        .chunks_exact(wide)
        .flat_map(|row| {
            debug_assert!(
                row[narrow..].iter().all(|&slot| slot == NO_MEMBER),
                "a row wider than the replication factor"
            );
            &row[..narrow]
        })
        .copied()
        .collect()
}

/// Old member index → new member index, or `NO_MEMBER` when the member is gone or ineligible.
fn translate_members(old: &[Member], new: &[Member], eligible: &[bool]) -> Vec<u32> {
    let mut translate = vec![NO_MEMBER; old.len()];
    let mut next = 0;
    for (index, member) in old.iter().enumerate() {
        next += new[next..].partition_point(|candidate| candidate.id < member.id);
        if new.get(next).is_some_and(|candidate| candidate.id == member.id) && eligible[next] {
            translate[index] = next as u32;
        }
    }
    translate
}

impl Work {
    /// The result, with its rows sorted (member indices ascend with ids, so equal assignments
    /// are equal values) and the rules every recomputation must leave behind asserted on the
    /// way: cheap enough (O(shards × replication)) to run every time.
    fn finish(self) -> Placement {
        let stride = self.config.replication_factor;
        let replication = self.cluster.replication;
        assert!(replication <= stride);
        let mut slots = if self.stride == stride { self.slots } else { narrow(&self.slots, self.stride, stride) };
        for (shard, row) in slots.chunks_exact_mut(stride).enumerate() {
            // Insertion sort: a row is a handful of entries, unused ones (NO_MEMBER) last.
            for end in 1..row.len() {
                let mut at = end;
                while at > 0 && row[at - 1] > row[at] {
                    row.swap(at - 1, at);
                    at -= 1;
                }
            }
            let row = &row[..usize::from(self.counts[shard])];
            let id = self.shards[shard];
            assert_eq!(row.len(), replication, "{id} has the wrong number of replicas");
            assert!(row.windows(2).all(|pair| pair[0] < pair[1]), "{id} has two replicas on one member");
            assert!(
                row.iter().all(|&member| self.cluster.eligible[member as usize]),
                "{id} is on an ineligible member"
            );
            let crowded = crowded_domain(row, &self.cluster.domain_of, self.cluster.per_domain);
            assert_eq!(crowded, None, "{id} breaks the domain rule");
            let leader = self.leaders[shard];
            assert_eq!(leader == NO_MEMBER, row.is_empty(), "{id}: a leader without replicas or replicas without one");
            assert!(leader == NO_MEMBER || row.contains(&leader), "{id}: the leader is not a replica");
        }
        debug_assert!(self.loads.is_consistent(), "domain minimums drifted from the loads");
        let mut placement = Placement {
            config: self.config,
            members: self.members,
            shards: self.shards,
            stride,
            slots,
            replica_ids: Vec::new(),
            counts: self.counts,
            leaders: self.leaders,
            replica_load: Vec::new(),
            leader_load: Vec::new(),
            shares: self.cluster.shares,
        };
        placement.derive();
        debug_assert_eq!(placement.replica_load, self.loads.all(), "loads drifted from the assignment");
        placement
    }
}
