//! Balance: replicas per member within 5 % of the mean, preferred leaders within 10 %, for 10,
//! 100 and 1,000 members at 64 shards per member and RF 3 — where a 256-virtual-node ring
//! lands at 1.15–1.3.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::ring::Ring;
use super::support::{cases, check, leader_ratio, replica_ratio, scenario, Domains, RF};

const REPLICA_MAX_OVER_MEAN: f64 = 1.05;
const LEADER_MAX_OVER_MEAN: f64 = 1.10;

fn assert_balanced(seed: u64, count: usize, domains: Domains<'_>) {
    let (_, members, _, placement) = scenario(seed, count, domains);
    let replicas = replica_ratio(&placement, &members);
    let leaders = leader_ratio(&placement, &members);
    assert!(
        replicas <= REPLICA_MAX_OVER_MEAN,
        "seed {seed}, {count} members, {domains:?}: replica max/mean {replicas:.3}"
    );
    assert!(leaders <= LEADER_MAX_OVER_MEAN, "seed {seed}, {count} members, {domains:?}: leader max/mean {leaders:.3}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(64)))]
    #[test]
    fn ten_members_are_balanced(seed in any::<u64>()) {
        assert_balanced(seed, 10, Domains::Zones(5));
        assert_balanced(seed, 10, Domains::PerMember);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(24)))]
    #[test]
    fn a_hundred_members_are_balanced(seed in any::<u64>()) {
        assert_balanced(seed, 100, Domains::Zones(5));
        assert_balanced(seed, 100, Domains::PerMember);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(3)))]
    #[test]
    fn a_thousand_members_are_balanced(seed in any::<u64>()) {
        assert_balanced(seed, 1000, Domains::Zones(5));
        assert_balanced(seed, 1000, Domains::PerMember);
    }
}

#[test]
fn beats_a_ring_with_256_virtual_nodes() {
    for seed in 0..4 {
        let (_, members, shards, placement) = scenario(seed, 100, Domains::PerMember);
        let ids: Vec<u64> = members.iter().map(|member| member.id.0).collect();
        let ring = Ring::new(&ids, 256);
        let mut ring_counts: BTreeMap<u64, u64> = BTreeMap::new();
        for shard in &shards {
            for member in ring.replicas(shard.0, RF) {
                *ring_counts.entry(member).or_default() += 1;
            }
        }
        let ring_ratio = ring_counts.values().copied().max().unwrap_or(0) as f64 * ids.len() as f64
            / ring_counts.values().sum::<u64>() as f64;
        let ours = replica_ratio(&placement, &members);
        assert!(ring_ratio > 1.08, "seed {seed}: the ring is unusually even ({ring_ratio:.3}); the baseline is wrong");
        assert!(ours < ring_ratio - 0.05, "seed {seed}: {ours:.3} does not beat the ring's {ring_ratio:.3}");
    }
}

#[test]
fn few_shards_still_spread_one_per_member_before_any_member_gets_two() {
    // 7 shards × 3 replicas over 30 members: nobody should hold two while others hold none.
    let (_, members, _, _) = scenario(9, 30, Domains::PerMember);
    let shards: Vec<_> = (0..7).map(keel_placement::ShardId).collect();
    let placement = super::support::place(&members, &shards);
    check(&placement, &members, &shards);
    assert!(members.iter().all(|member| placement.replica_count(member.id) <= 1));
    assert!(members.iter().all(|member| placement.leader_count(member.id) <= 1));
}
