//! Determinism: the placement is a function of its inputs' *contents*. Every process that
//! computes it from the same members, shards and previous placement gets the same answer,
//! whatever order it listed them in.

use proptest::prelude::*;

use keel_placement::Member;

use super::support::{cases, place, scenario, Domains};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]
    #[test]
    fn input_order_does_not_matter(seed in any::<u64>()) {
        let (mut stream, members, shards, placement) = scenario(seed, 40, Domains::Zones(5));
        let (mut shuffled_members, mut shuffled_shards) = (members.clone(), shards.clone());
        stream.shuffle(&mut shuffled_members);
        stream.shuffle(&mut shuffled_shards);
        prop_assert_eq!(&place(&shuffled_members, &shuffled_shards), &placement);

        // And from a previous placement: remove one member, join another, in two orders.
        let mut changed: Vec<Member> = members[1..].to_vec();
        changed.push(Member::new(keel_placement::MemberId(stream.next()), "zone-2"));
        let next = placement.recompute(&changed, &shards).expect("valid inputs");
        stream.shuffle(&mut changed);
        prop_assert_eq!(&placement.recompute(&changed, &shuffled_shards).expect("valid inputs"), &next);
    }
}

#[test]
fn duplicate_shards_are_merged_and_duplicate_members_refused() {
    let (_, members, shards, placement) = scenario(2, 12, Domains::PerMember);
    let mut doubled = shards.clone();
    doubled.extend_from_slice(&shards[..10]);
    assert_eq!(place(&members, &doubled), placement);
    let mut twice = members.clone();
    twice.push(members[3].clone());
    assert_eq!(
        placement.recompute(&twice, &shards),
        Err(keel_placement::PlacementError::DuplicateMember(members[3].id))
    );
}

#[test]
fn a_members_shards_share_replicas_with_many_others() {
    // Ties are broken by hashes of (shard, replica ordinal), not by member order: one member's
    // shards are co-replicated with a large part of the cluster, so re-replicating them after
    // it dies reads from many sources, not from a few ring neighbours.
    let (_, members, _, placement) = scenario(100, 100, Domains::PerMember);
    for member in &members[..10] {
        let mut peers: Vec<u64> = placement
            .iter()
            .filter(|view| view.replicas.contains(&member.id))
            .flat_map(|view| view.replicas.iter().map(|peer| peer.0))
            .filter(|&peer| peer != member.id.0)
            .collect();
        peers.sort_unstable();
        peers.dedup();
        assert!(peers.len() >= 80, "{} shares shards with only {} of 99 members", member.id, peers.len());
    }
}
