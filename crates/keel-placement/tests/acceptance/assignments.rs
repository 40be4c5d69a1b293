//! Starting from the cluster's real state: placements built from assignments round-trip,
//! malformed ones are refused with a precise error, and a recomputation repairs what breaks
//! the rules (replication factor, domains) with the fewest moves.

use keel_placement::{Assignment, Member, MemberId, Placement, PlacementConfig, PlacementError, ShardId};

use super::support::{check, config, lost, replica_ratio, scenario, Domains};

fn assignments(placement: &Placement) -> Vec<Assignment> {
    placement
        .iter()
        .map(|view| Assignment { shard: view.shard, replicas: view.replicas.to_vec(), leader: view.leader })
        .collect()
}

#[test]
fn a_placement_round_trips_through_its_assignments() {
    let (_, members, _, placement) = scenario(21, 20, Domains::Zones(5));
    let rebuilt = Placement::from_assignments(config(), &members, assignments(&placement)).expect("valid");
    assert_eq!(rebuilt, placement);
}

#[test]
fn malformed_assignments_are_refused_precisely() {
    let members = vec![Member::new(MemberId(1), "a"), Member::new(MemberId(2), "b")];
    let assignment = |shard: u64, replicas: &[u64], leader: Option<u64>| Assignment {
        shard: ShardId(shard),
        replicas: replicas.iter().copied().map(MemberId).collect(),
        leader: leader.map(MemberId),
    };
    let build = |list: Vec<Assignment>| Placement::from_assignments(config(), &members, list).map(|_| ());
    assert_eq!(
        build(vec![assignment(1, &[1, 9], None)]),
        Err(PlacementError::UnknownMember { shard: ShardId(1), member: MemberId(9) })
    );
    assert_eq!(
        build(vec![assignment(1, &[1, 1], None)]),
        Err(PlacementError::DuplicateReplica { shard: ShardId(1), member: MemberId(1) })
    );
    assert_eq!(
        build(vec![assignment(1, &[1], Some(2))]),
        Err(PlacementError::LeaderNotReplica { shard: ShardId(1), leader: MemberId(2) })
    );
    assert_eq!(
        build(vec![assignment(1, &[1], None), assignment(1, &[2], None)]),
        Err(PlacementError::DuplicateShard(ShardId(1)))
    );
    let bad_config = PlacementConfig { replication_factor: 0, ..config() };
    assert_eq!(Placement::empty(bad_config).map(|_| ()), Err(PlacementError::ReplicationFactor(0)));
}

#[test]
fn raising_and_lowering_the_replication_factor_keeps_what_it_can() {
    let (_, members, shards, placement) = scenario(23, 30, Domains::Zones(5));
    let five = PlacementConfig { replication_factor: 5, ..config() };
    let raised = placement.with_config(five).and_then(|p| p.recompute(&members, &shards)).expect("valid");
    check(&raised, &members, &shards);
    assert!(lost(&placement, &raised).is_empty(), "raising RF removes nothing");
    assert!(replica_ratio(&raised, &members) <= 1.05);

    let lowered = raised.with_config(config()).and_then(|p| p.recompute(&members, &shards)).expect("valid");
    check(&lowered, &members, &shards);
    assert!(super::support::gained(&raised, &lowered).is_empty(), "lowering RF adds nothing");
    assert!(replica_ratio(&lowered, &members) <= 1.05);
    for view in lowered.iter() {
        // The leader survives the cut whenever it can.
        assert_eq!(view.leader, raised.leader(view.shard), "{}", view.shard);
    }
}

#[test]
fn fewer_eligible_members_than_rf_place_on_all_of_them_and_recover_later() {
    let members = vec![Member::new(MemberId(1), "a"), Member::new(MemberId(2), "b")];
    let shards: Vec<ShardId> = (0..10).map(ShardId).collect();
    let small = super::support::place(&members, &shards);
    check(&small, &members, &shards);
    assert!(small.iter().all(|view| view.replicas.len() == 2));
    let mut grown = members.clone();
    grown.push(Member::new(MemberId(3), "c"));
    let full = small.recompute(&grown, &shards).expect("valid");
    check(&full, &grown, &shards);
    assert!(lost(&small, &full).is_empty());
}

#[test]
fn a_shard_with_two_replicas_in_one_zone_is_repaired_with_one_move() {
    let members: Vec<Member> =
        (1..=6).map(|id| Member::new(MemberId(id), ["a", "b", "c"][(id as usize - 1) % 3])).collect();
    // Members 1 and 4 are both in zone a.
    let broken = Assignment {
        shard: ShardId(1),
        replicas: vec![MemberId(1), MemberId(4), MemberId(2)],
        leader: Some(MemberId(2)),
    };
    let placement = Placement::from_assignments(config(), &members, [broken]).expect("valid");
    let repaired = placement.recompute(&members, &[ShardId(1)]).expect("valid");
    check(&repaired, &members, &[ShardId(1)]);
    let changes = placement.changes(&repaired);
    assert_eq!(changes.len(), 1);
    assert_eq!((changes[0].added.len(), changes[0].removed.len()), (1, 1));
    assert_eq!(repaired.leader(ShardId(1)), Some(MemberId(2)), "the leader was not part of the conflict");
}

#[test]
fn without_eligible_members_shards_have_no_replicas_and_no_leader() {
    let members = vec![Member::new(MemberId(1), "a").with_eligible(false)];
    let shards: Vec<ShardId> = (0..5).map(ShardId).collect();
    let placement = super::support::place(&members, &shards);
    check(&placement, &members, &shards);
    assert!(placement.iter().all(|view| view.replicas.is_empty() && view.leader.is_none()));
    // And the first eligible member takes everything.
    let revived = vec![Member::new(MemberId(1), "a")];
    let after = placement.recompute(&revived, &shards).expect("valid");
    assert!(after.iter().all(|view| view.replicas == [MemberId(1)] && view.leader == Some(MemberId(1))));
}

#[test]
fn changes_list_new_and_dropped_shards_whole() {
    let (_, members, shards, placement) = scenario(25, 10, Domains::PerMember);
    let mut next_shards = shards[1..].to_vec();
    next_shards.push(ShardId(u64::MAX));
    let next = placement.recompute(&members, &next_shards).expect("valid");
    let changes = placement.changes(&next);
    let dropped = changes.iter().find(|change| change.shard == shards[0]).expect("the dropped shard");
    assert_eq!((dropped.added.len(), dropped.removed.len(), dropped.leader_after), (0, 3, None));
    let created = changes.iter().find(|change| change.shard == ShardId(u64::MAX)).expect("the new shard");
    assert_eq!((created.added.len(), created.removed.len(), created.leader_before), (3, 0, None));
    assert!(created.leader_after.is_some());
    // Nothing else had to change for one shard in, one out.
    assert!(changes.len() <= 2 + 2, "{} shards changed", changes.len());
}
