//! Failure domains: never two replicas of a shard in one domain while there are at least RF
//! domains, whatever the zone sizes; balance as good as the domains allow; graceful spreading
//! when there are fewer domains than replicas.

use std::collections::BTreeMap;

use proptest::prelude::*;

use keel_placement::{Member, MemberId, Placement};

use super::support::{cases, check, lost, max_over_mean, scenario, Domains};

/// Per zone: (members, replicas held, max per member).
fn zone_loads(placement: &Placement, members: &[Member]) -> BTreeMap<String, (u64, u64, u64)> {
    let mut zones: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for member in members.iter().filter(|member| member.eligible) {
        let count = placement.replica_count(member.id);
        let zone = zones.entry(member.domain.clone()).or_default();
        zone.0 += 1;
        zone.1 += count;
        zone.2 = zone.2.max(count);
    }
    zones
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    /// Three zones and RF 3: every shard has one replica in each zone, so a zone's members share
    /// exactly one replica of every shard among themselves, however few they are.
    #[test]
    fn three_uneven_zones_hold_one_replica_of_every_shard_each(seed in any::<u64>()) {
        for weights in [&[1u64, 1, 1][..], &[5, 3, 2], &[7, 2, 1]] {
            let (_, members, shards, placement) = scenario(seed, 100, Domains::Weighted(weights));
            check(&placement, &members, &shards);
            for (zone, (size, held, most)) in zone_loads(&placement, &members) {
                prop_assert_eq!(held, shards.len() as u64, "{} holds one replica of every shard", zone);
                let mean = held as f64 / size as f64;
                prop_assert!(most as f64 <= 1.05 * mean, "{}: max {} for a mean of {:.1} ({:?})", zone, most, mean, weights);
            }
        }
    }

    /// Five zones of different sizes, none big enough to need more than one replica per
    /// shard at the mean: the global balance target holds as without zones.
    #[test]
    fn five_uneven_zones_keep_the_global_balance(seed in any::<u64>()) {
        for weights in [&[1u64, 1, 1, 1, 1][..], &[30, 25, 20, 15, 10]] {
            let (_, members, shards, placement) = scenario(seed, 100, Domains::Weighted(weights));
            check(&placement, &members, &shards);
            let ratio = max_over_mean(&members, |member| placement.replica_count(member));
            prop_assert!(ratio <= 1.05, "{:?}: replica max/mean {:.3}", weights, ratio);
        }
    }
}

#[test]
fn a_zone_with_half_the_members_is_capped_at_one_replica_per_shard() {
    // Zone 0 has half the members: at the mean it would hold 1.5 replicas of each shard. It holds
    // exactly one, its members fewer than the mean, and the other zones share the rest evenly.
    let (_, members, shards, placement) = scenario(3, 60, Domains::Weighted(&[4, 1, 1, 1, 1]));
    check(&placement, &members, &shards);
    let zones = zone_loads(&placement, &members);
    let (size, held, _) = zones["zone-0"];
    assert_eq!(held, shards.len() as u64);
    // The fair shares say so too, and still add up to every replica.
    let zone_0 = members.iter().find(|member| member.domain == "zone-0").expect("zone-0 has members");
    assert!((placement.fair_share(zone_0.id) - shards.len() as f64 / size as f64).abs() < 1e-9);
    let total: f64 = members.iter().map(|member| placement.fair_share(member.id)).sum();
    assert!((total - (shards.len() * 3) as f64).abs() < 1e-6, "shares add up to {total}");
    let others: Vec<Member> = members.iter().filter(|member| member.domain != "zone-0").cloned().collect();
    let ratio = max_over_mean(&others, |member| placement.replica_count(member));
    assert!(ratio <= 1.05, "outside the capped zone: {ratio:.3}");
    assert!(held / size < (2 * shards.len() as u64) / (members.len() as u64 - size));
}

#[test]
fn two_zones_for_three_replicas_split_two_and_one() {
    let (_, members, shards, placement) = scenario(5, 40, Domains::Zones(2));
    check(&placement, &members, &shards);
    let zone_of: BTreeMap<MemberId, &str> = members.iter().map(|member| (member.id, member.domain.as_str())).collect();
    for view in placement.iter() {
        let in_zone_0 = view.replicas.iter().filter(|member| zone_of[member] == "zone-0").count();
        assert!(in_zone_0 == 1 || in_zone_0 == 2, "{}: {in_zone_0} of 3 in zone-0", view.shard);
    }
    let ratio = max_over_mean(&members, |member| placement.replica_count(member));
    assert!(ratio <= 1.05, "{ratio:.3}");
}

#[test]
fn with_exactly_rf_zones_a_leaver_is_replaced_inside_its_own_zone() {
    // The other two zones already hold a replica of each of its shards: its zone-mates are the
    // only valid receivers, and they share the load evenly.
    let (_, members, shards, before) = scenario(11, 30, Domains::Zones(3));
    let leaver = members[4].clone();
    let remaining: Vec<Member> = members.iter().filter(|member| member.id != leaver.id).cloned().collect();
    let after = before.recompute(&remaining, &shards).expect("valid inputs");
    check(&after, &remaining, &shards);
    assert_eq!(lost(&before, &after).keys().copied().collect::<Vec<_>>(), vec![leaver.id]);
    let mates: Vec<Member> = remaining.iter().filter(|member| member.domain == leaver.domain).cloned().collect();
    let gained = super::support::gained(&before, &after);
    assert!(gained.keys().all(|member| mates.iter().any(|mate| mate.id == *member)));
    assert_eq!(gained.len(), mates.len(), "every zone-mate takes a part");
    let ratio = max_over_mean(&mates, |member| after.replica_count(member));
    assert!(ratio <= 1.05, "inside the zone: {ratio:.3}");
}

#[test]
fn a_relabelled_member_is_moved_out_of_a_shared_zone_and_nothing_else() {
    // A member's zone label changes (it was racked wrongly): the shards where it now shares a
    // zone with another replica lose one of the two, and only those shards change.
    let (_, members, shards, before) = scenario(13, 25, Domains::Zones(5));
    let mut relabelled = members.clone();
    let moved_member = relabelled[0].id;
    let old_zone = relabelled[0].domain.clone();
    let new_zone = relabelled.iter().find(|member| member.domain != old_zone).map(|member| member.domain.clone());
    relabelled[0].domain = new_zone.expect("five zones");
    let after = before.recompute(&relabelled, &shards).expect("valid inputs");
    check(&after, &relabelled, &shards);
    let zone_of: BTreeMap<MemberId, &str> =
        relabelled.iter().map(|member| (member.id, member.domain.as_str())).collect();
    let conflicted = before
        .iter()
        .filter(|view| {
            view.replicas.contains(&moved_member)
                && view.replicas.iter().filter(|member| zone_of[member] == zone_of[&moved_member]).count() > 1
        })
        .count();
    assert!(conflicted > 0, "the relabelling created no conflict; the test is vacuous");
    let changed = before.changes(&after).iter().filter(|change| !change.added.is_empty()).count();
    assert!(changed >= conflicted, "{changed} shards changed for {conflicted} conflicts");
    // Dropping half of a conflicted pair can leave the relabelled member below the band, so
    // it is refilled from the busiest members: more shards change, but not a reshuffle.
    assert!(changed <= 2 * conflicted, "{changed} shards changed for {conflicted} conflicts");
}

#[test]
fn a_members_shards_pair_it_evenly_with_the_other_zones() {
    // With 5 zones and RF 3, each of a member's shards has replicas in 2 of the 4 other zones:
    // about half of its shards should involve any given other zone. Ties broken by a walk in a
    // fixed ring order made this as skewed as 94 % for some members (a member sitting behind a
    // run of one zone's members on the ring partners that zone), which concentrates a leaver's
    // re-replication in few zones.
    for seed in 0..3 {
        let (_, members, _, placement) = scenario(seed, 100, Domains::Zones(5));
        let zone_of: BTreeMap<MemberId, &str> =
            members.iter().map(|member| (member.id, member.domain.as_str())).collect();
        let mut pairs: BTreeMap<(MemberId, &str), u64> = BTreeMap::new();
        for view in placement.iter() {
            for member in view.replicas {
                for other in view.replicas.iter().filter(|other| *other != member) {
                    *pairs.entry((*member, zone_of[other])).or_default() += 1;
                }
            }
        }
        for ((member, zone), count) in pairs {
            let fraction = count as f64 / placement.replica_count(member) as f64;
            assert!(
                (0.3..=0.7).contains(&fraction),
                "seed {seed}: {member} pairs with {zone} in {fraction:.2} of its shards"
            );
        }
    }
}
