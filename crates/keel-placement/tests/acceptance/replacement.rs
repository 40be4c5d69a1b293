//! Replacing a dead voter of one group: a spare in a domain the survivors do not use, the
//! least loaded of those, the same on every process; and an explicit answer when no domain is
//! free.

use keel_placement::{Assignment, Member, MemberId, Placement, PlacementConfig, Replacement, ShardId};

fn member(id: u64, zone: &str) -> Member {
    Member::new(MemberId(id), zone)
}

/// One group of three voters (1 in zone a, 2 in b, 3 in c), led by 1, plus spares.
fn single_group(spares: &[Member]) -> (Placement, Vec<Member>) {
    let mut members = vec![member(1, "a"), member(2, "b"), member(3, "c")];
    members.extend_from_slice(spares);
    let assignment = Assignment {
        shard: ShardId(7),
        replicas: vec![MemberId(1), MemberId(2), MemberId(3)],
        leader: Some(MemberId(1)),
    };
    let placement =
        Placement::from_assignments(PlacementConfig::default(), &members, [assignment]).expect("a valid assignment");
    (placement, members)
}

#[test]
fn a_dead_voter_is_replaced_in_a_domain_no_survivor_uses() {
    let (placement, members) = single_group(&[member(10, "b"), member(11, "c"), member(12, "a"), member(13, "d")]);
    let members: Vec<Member> = members.into_iter().map(|m| m.clone().with_eligible(m.id != MemberId(1))).collect();
    let choice = placement.replacement(ShardId(7), MemberId(1), &members).expect("spares exist");
    assert!(choice.keeps_domain_rule());
    assert!(matches!(choice.member(), MemberId(12) | MemberId(13)), "{choice:?} shares a zone with a survivor");
}

#[test]
fn when_every_spare_shares_a_domain_the_answer_says_so() {
    // Zone a is gone entirely: only zones b and c have spares.
    let (placement, members) = single_group(&[member(10, "b"), member(11, "c")]);
    let members: Vec<Member> = members.into_iter().filter(|m| m.domain != "a").collect();
    let choice = placement.replacement(ShardId(7), MemberId(1), &members).expect("spares exist");
    assert!(matches!(choice, Replacement::SharedDomain(MemberId(10) | MemberId(11))), "{choice:?}");
    assert!(!choice.keeps_domain_rule());
}

#[test]
fn no_spare_at_all_is_none() {
    let (placement, members) = single_group(&[member(10, "d").with_eligible(false)]);
    assert_eq!(placement.replacement(ShardId(7), MemberId(1), &members), None);
}

#[test]
fn every_process_picks_the_same_spare_whatever_its_member_order() {
    let spares: Vec<Member> = (20..40).map(|id| member(id, if id % 2 == 0 { "d" } else { "e" })).collect();
    let (placement, members) = single_group(&spares);
    let first = placement.replacement(ShardId(7), MemberId(2), &members);
    let mut reversed = members.clone();
    reversed.reverse();
    assert_eq!(placement.replacement(ShardId(7), MemberId(2), &reversed), first);
    // And different groups do not all pick the same spare (rendezvous hashing spreads them).
    let picks: std::collections::BTreeSet<MemberId> = (0..40)
        .filter_map(|shard| placement.replacement(ShardId(shard), MemberId(2), &members))
        .map(Replacement::member)
        .collect();
    assert!(picks.len() > 5, "{picks:?}");
}

#[test]
fn in_a_multi_raft_cluster_the_least_loaded_spare_wins() {
    // Members 10 and 11 (zone d) are spares; 10 already holds replicas of other groups.
    let members = vec![member(1, "a"), member(2, "b"), member(3, "c"), member(10, "d"), member(11, "d")];
    let group = |shard: u64, replicas: &[u64]| Assignment {
        shard: ShardId(shard),
        replicas: replicas.iter().copied().map(MemberId).collect(),
        leader: Some(MemberId(replicas[0])),
    };
    let placement = Placement::from_assignments(
        PlacementConfig::default(),
        &members,
        [group(1, &[1, 2, 3]), group(2, &[10, 2, 3]), group(3, &[10, 1, 3])],
    )
    .expect("valid assignments");
    let choice = placement.replacement(ShardId(1), MemberId(1), &members);
    assert_eq!(choice, Some(Replacement::NewDomain(MemberId(11))));
}
