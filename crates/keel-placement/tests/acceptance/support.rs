//! Scenario builders and an independent check of a placement's rules, written against the public
//! API only (so a bug in the crate's own bookkeeping cannot hide here).

use std::collections::{BTreeMap, BTreeSet};

use keel_placement::{Member, MemberId, Placement, PlacementConfig, ShardId};

pub const SHARDS_PER_MEMBER: usize = 64;
pub const RF: usize = 3;

/// Proptest cases for a property: `default`, or `PROPTEST_CASES` when set (for a longer sweep:
/// `PROPTEST_CASES=500 cargo test --release -p keel-placement`).
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(default)
}

/// A SplitMix64 stream: every scenario is a function of its seed.
pub struct Stream(pub u64);

impl Stream {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        super::ring::mix64(self.0)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// How members are spread over failure domains.
#[derive(Clone, Copy, Debug)]
pub enum Domains<'a> {
    /// Every member its own domain (one member per host).
    PerMember,
    /// Members dealt round-robin over this many zones.
    Zones(u64),
    /// Zones of these relative weights (members are dealt in proportion).
    Weighted(&'a [u64]),
}

impl Domains<'_> {
    fn label(&self, index: u64, count: u64) -> String {
        match *self {
            Domains::PerMember => format!("host-{index}"),
            Domains::Zones(zones) => format!("zone-{}", index % zones),
            Domains::Weighted(weights) => {
                let total: u64 = weights.iter().sum();
                let position = index * total / count;
                let mut upto = 0;
                let zone = weights.iter().position(|&weight| {
                    upto += weight;
                    position < upto
                });
                format!("zone-{}", zone.unwrap_or(weights.len() - 1))
            }
        }
    }
}

/// `count` members with random distinct ids.
pub fn members(stream: &mut Stream, count: usize, domains: Domains<'_>) -> Vec<Member> {
    let mut ids = BTreeSet::new();
    while ids.len() < count {
        ids.insert(stream.next());
    }
    let mut ids: Vec<u64> = ids.into_iter().collect();
    stream.shuffle(&mut ids);
    ids.iter()
        .enumerate()
        .map(|(index, &id)| Member::new(MemberId(id), domains.label(index as u64, count as u64)))
        .collect()
}

pub fn shards(stream: &mut Stream, count: usize) -> Vec<ShardId> {
    let mut ids = BTreeSet::new();
    while ids.len() < count {
        ids.insert(stream.next());
    }
    ids.into_iter().map(ShardId).collect()
}

pub fn config() -> PlacementConfig {
    PlacementConfig { replication_factor: RF, ..PlacementConfig::default() }
}

/// A first placement.
pub fn place(members: &[Member], shards: &[ShardId]) -> Placement {
    Placement::empty(config()).and_then(|empty| empty.recompute(members, shards)).expect("valid inputs")
}

/// Members, shards and a first placement, checked.
pub fn scenario(seed: u64, count: usize, domains: Domains<'_>) -> (Stream, Vec<Member>, Vec<ShardId>, Placement) {
    let mut stream = Stream(seed);
    let members = members(&mut stream, count, domains);
    let shards = shards(&mut stream, count * SHARDS_PER_MEMBER);
    let placement = place(&members, &shards);
    check(&placement, &members, &shards);
    (stream, members, shards, placement)
}

/// The placement's rules, checked from the outside:
/// every shard has min(RF, eligible) distinct replicas, all on eligible members; the leader is
/// one of them; no two share a domain when there are at least RF domains (and no domain holds
/// more than its even part otherwise).
pub fn check(placement: &Placement, members: &[Member], shards: &[ShardId]) {
    let by_id: BTreeMap<MemberId, &Member> = members.iter().map(|member| (member.id, member)).collect();
    let eligible: Vec<&Member> = members.iter().filter(|member| member.eligible).collect();
    let domains: BTreeSet<&str> = eligible.iter().map(|member| member.domain.as_str()).collect();
    let replication = placement.config().replication_factor.min(eligible.len());
    let expected: BTreeSet<ShardId> = shards.iter().copied().collect();
    assert_eq!(placement.shards().iter().copied().collect::<BTreeSet<_>>(), expected, "the shard set");
    for view in placement.iter() {
        assert_eq!(view.replicas.len(), replication, "{}: replica count", view.shard);
        let distinct: BTreeSet<MemberId> = view.replicas.iter().copied().collect();
        assert_eq!(distinct.len(), view.replicas.len(), "{}: a member twice", view.shard);
        let mut per_domain: BTreeMap<&str, usize> = BTreeMap::new();
        for member in view.replicas {
            let known = by_id.get(member).unwrap_or_else(|| panic!("{}: unknown {member}", view.shard));
            assert!(known.eligible, "{}: replica on ineligible {member}", view.shard);
            *per_domain.entry(known.domain.as_str()).or_default() += 1;
        }
        let most = per_domain.values().copied().max().unwrap_or(0);
        if domains.len() >= replication {
            assert!(most <= 1, "{}: two replicas in one domain although {} domains exist", view.shard, domains.len());
        } else {
            assert!(
                most <= replication.div_ceil(domains.len().max(1)) + 1,
                "{}: {most} replicas in one domain",
                view.shard
            );
        }
        match view.leader {
            Some(leader) => {
                assert!(view.replicas.contains(&leader), "{}: leader {leader} is not a replica", view.shard)
            }
            None => assert!(view.replicas.is_empty(), "{}: replicas without a leader", view.shard),
        }
    }
}

/// max / mean of a per-member figure over the eligible members.
pub fn max_over_mean(members: &[Member], figure: impl Fn(MemberId) -> u64) -> f64 {
    let counts: Vec<u64> = members.iter().filter(|member| member.eligible).map(|member| figure(member.id)).collect();
    let mean = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
    counts.iter().copied().max().unwrap_or(0) as f64 / mean
}

pub fn replica_ratio(placement: &Placement, members: &[Member]) -> f64 {
    max_over_mean(members, |member| placement.replica_count(member))
}

pub fn leader_ratio(placement: &Placement, members: &[Member]) -> f64 {
    max_over_mean(members, |member| placement.leader_count(member))
}

/// Replica moves between two placements: (member that lost one, member that gained one) pairs
/// counted as the replicas each member gained.
pub fn gained(before: &Placement, after: &Placement) -> BTreeMap<MemberId, u64> {
    let mut gained = BTreeMap::new();
    for change in before.changes(after) {
        for member in change.added {
            *gained.entry(member).or_default() += 1;
        }
    }
    gained
}

pub fn lost(before: &Placement, after: &Placement) -> BTreeMap<MemberId, u64> {
    let mut lost = BTreeMap::new();
    for change in before.changes(after) {
        for member in change.removed {
            *lost.entry(member).or_default() += 1;
        }
    }
    lost
}

/// max over eligible members of replicas held / fair share: balance as the domains allow it.
pub fn replica_over_fair_share(placement: &Placement, members: &[Member]) -> f64 {
    members
        .iter()
        .filter(|member| member.eligible)
        .map(|member| placement.replica_count(member.id) as f64 / placement.fair_share(member.id))
        .fold(0.0, f64::max)
}
