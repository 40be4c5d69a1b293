//! Movement: a join moves about the newcomer's fair share and nothing else; a leave moves the
//! leaver's replicas and nothing else, spread over many receivers; an unchanged cluster moves
//! nothing at all.

use proptest::prelude::*;

use keel_placement::{Member, MemberId, ShardId};

use super::support::{
    cases, check, gained, leader_ratio, lost, replica_over_fair_share, replica_ratio, scenario, Domains, Stream, RF,
    SHARDS_PER_MEMBER,
};

/// A join may move at most this much more than the newcomer's fair share.
const JOIN_MOVES_OVER_IDEAL: f64 = 1.1;
/// No receiver of a leaver's replicas gets more than this many times its fair share.
const LEAVE_RECEIVED_OVER_FAIR: f64 = 1.5;

fn newcomer(stream: &mut Stream, members: &[Member], domains: Domains<'_>) -> Member {
    let id = loop {
        let id = MemberId(stream.next());
        if members.iter().all(|member| member.id != id) {
            break id;
        }
    };
    let domain = match domains {
        Domains::Zones(zones) => format!("zone-{}", stream.below(zones)),
        _ => format!("host-new-{}", id.0),
    };
    Member::new(id, domain)
}

fn assert_join(seed: u64, count: usize, domains: Domains<'_>) {
    let (mut stream, members, shards, before) = scenario(seed, count, domains);
    let joining = newcomer(&mut stream, &members, domains);
    let mut joined = members.clone();
    joined.push(joining.clone());
    let after = before.recompute(&joined, &shards).expect("valid inputs");
    check(&after, &joined, &shards);
    let gained = gained(&before, &after);
    assert_eq!(gained.keys().copied().collect::<Vec<_>>(), vec![joining.id], "seed {seed}: only the newcomer gains");
    let moved = gained[&joining.id] as f64;
    let ideal = (shards.len() * RF) as f64 / (count + 1) as f64;
    assert!(
        moved <= JOIN_MOVES_OVER_IDEAL * ideal,
        "seed {seed}, {count} members: moved {moved} for an ideal of {ideal:.1}"
    );
    assert!(moved >= 0.95 * ideal, "seed {seed}, {count} members: the newcomer got only {moved} of {ideal:.1}");
    let (replicas, leaders) = (replica_ratio(&after, &joined), leader_ratio(&after, &joined));
    assert!(replicas <= 1.05 && leaders <= 1.10, "seed {seed}: after the join {replicas:.3} / {leaders:.3}");
    assert!(after.leader_count(joining.id) > 0, "seed {seed}: the newcomer leads nothing");
}

fn assert_leave(seed: u64, count: usize, domains: Domains<'_>) {
    let (mut stream, members, shards, before) = scenario(seed, count, domains);
    let leaver = members[stream.below(count as u64) as usize].id;
    // Leaving the list and staying in it as ineligible must be the same thing.
    let remaining: Vec<Member> = if stream.below(2) == 0 {
        members.iter().filter(|member| member.id != leaver).cloned().collect()
    } else {
        members.iter().map(|member| member.clone().with_eligible(member.id != leaver)).collect()
    };
    let after = before.recompute(&remaining, &shards).expect("valid inputs");
    check(&after, &remaining, &shards);
    let departed = before.replica_count(leaver);
    let lost = lost(&before, &after);
    assert_eq!(
        lost.into_iter().collect::<Vec<_>>(),
        vec![(leaver, departed)],
        "seed {seed}: only the leaver's replicas move"
    );
    let gained = gained(&before, &after);
    let receivers = gained.len() as u64;
    assert!(receivers >= (count as u64 - 1).min(departed), "seed {seed}, {count} members: {receivers} receivers");
    // Fair share per receiver; below one replica it is taken as one (nobody can get less).
    let fair = (departed as f64 / (count - 1) as f64).max(1.0);
    let most = gained.values().copied().max().unwrap_or(0) as f64;
    assert!(
        most <= LEAVE_RECEIVED_OVER_FAIR * fair,
        "seed {seed}, {count} members: a receiver got {most}, fair {fair:.2}"
    );
    let remaining_eligible: Vec<Member> = remaining.into_iter().filter(|member| member.eligible).collect();
    let (replicas, leaders) = (replica_ratio(&after, &remaining_eligible), leader_ratio(&after, &remaining_eligible));
    assert!(replicas <= 1.05 && leaders <= 1.10, "seed {seed}: after the leave {replicas:.3} / {leaders:.3}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(48)))]
    #[test]
    fn joins_and_leaves_among_ten(seed in any::<u64>()) {
        for domains in [Domains::Zones(5), Domains::PerMember] {
            assert_join(seed, 10, domains);
            assert_leave(seed, 10, domains);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(24)))]
    #[test]
    fn joins_and_leaves_among_a_hundred(seed in any::<u64>()) {
        for domains in [Domains::Zones(5), Domains::PerMember] {
            assert_join(seed, 100, domains);
            assert_leave(seed, 100, domains);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(3)))]
    #[test]
    fn joins_and_leaves_among_a_thousand(seed in any::<u64>()) {
        assert_join(seed, 1000, Domains::Zones(5));
        assert_leave(seed, 1000, Domains::PerMember);
    }
}

#[test]
fn an_unchanged_cluster_moves_nothing() {
    for seed in 0..8 {
        let (_, members, shards, placement) = scenario(seed, 40, Domains::Zones(5));
        let again = placement.recompute(&members, &shards).expect("valid inputs");
        assert!(placement.changes(&again).is_empty(), "seed {seed}");
        assert_eq!(again, placement);
    }
}

/// A random walk of joins, leaves, members turning ineligible and back, and shards appearing
/// and disappearing: the rules hold after every step, leaves and joins move only what they
/// must, and balance stays within the band.
#[test]
fn a_long_random_walk_keeps_every_rule() {
    // `PROPTEST_CASES` sets the number of walks here too.
    for seed in 0..u64::from(cases(6)) {
        let domains = if seed % 2 == 0 { Domains::Zones(5) } else { Domains::PerMember };
        let (mut stream, mut members, mut shards, mut placement) = scenario(seed, 30, domains);
        for step in 0..40 {
            let event = stream.below(5);
            let mut next_members = members.clone();
            let mut next_shards = shards.clone();
            match event {
                0 => next_members.push(newcomer(&mut stream, &members, domains)),
                1 if members.len() > 8 => {
                    next_members.remove(stream.below(members.len() as u64) as usize);
                }
                2 => {
                    let index = stream.below(members.len() as u64) as usize;
                    let flipped = !next_members[index].eligible;
                    next_members[index] = next_members[index].clone().with_eligible(flipped);
                }
                3 => next_shards.extend((0..SHARDS_PER_MEMBER).map(|_| ShardId(stream.next()))),
                _ => {
                    for _ in 0..SHARDS_PER_MEMBER / 2 {
                        next_shards.remove(stream.below(next_shards.len() as u64) as usize);
                    }
                }
            }
            let next = placement.recompute(&next_members, &next_shards).expect("valid inputs");
            check(&next, &next_members, &next_shards);
            let eligible: Vec<Member> = next_members.iter().filter(|member| member.eligible).cloned().collect();
            // Members drift inside the band between rebalances; against the fair share (the
            // mean, or less in a zone capped at one replica per shard) nobody leaves it.
            let ratio = replica_over_fair_share(&next, &eligible);
            assert!(ratio <= 1.06, "seed {seed} step {step} (event {event}): replicas / fair share {ratio:.3}");
            let leaders = leader_ratio(&next, &eligible);
            assert!(leaders <= 1.10, "seed {seed} step {step} (event {event}): leader max/mean {leaders:.3}");
            if event == 0 {
                // The newcomer takes about its fair share. When the join changes which zones are
                // capped (a zone crossing a third of the members), other members' shares shift
                // too and the band repairs them as well: more moves, but never a reshuffle.
                let moved: u64 = gained(&placement, &next).values().sum();
                let joined = next_members.last().map_or(MemberId(0), |member| member.id);
                let ideal = next.fair_share(joined);
                assert!(moved as f64 <= 1.5 * ideal, "seed {seed} step {step}: a join moved {moved}, ideal {ideal:.1}");
            }
            if event == 1 && next_members.len() < members.len() {
                // A leave moves the leaver's replicas. If earlier steps left members drifting
                // inside the band, the leave's higher shares can push some below it, and the
                // band's repair moves a few more, but never more than the leave itself.
                let gone: Vec<MemberId> =
                    members.iter().filter(|member| !next_members.contains(member)).map(|member| member.id).collect();
                let departed: u64 = gone.iter().map(|&member| placement.replica_count(member)).sum();
                let others: u64 = lost(&placement, &next)
                    .iter()
                    .filter(|(member, _)| !gone.contains(member))
                    .map(|(_, &count)| count)
                    .sum();
                assert!(others <= departed, "seed {seed} step {step}: a leave of {departed} moved {others} others");
            }
            (members, shards, placement) = (next_members, next_shards, next);
        }
    }
}

#[test]
fn doubling_the_cluster_moves_half_the_replicas_onto_the_newcomers_only() {
    for seed in 0..4 {
        let (mut stream, members, shards, before) = scenario(seed, 20, Domains::Zones(5));
        let mut doubled = members.clone();
        for _ in 0..20 {
            let joining = newcomer(&mut stream, &doubled, Domains::Zones(5));
            doubled.push(joining);
        }
        let after = before.recompute(&doubled, &shards).expect("valid inputs");
        check(&after, &doubled, &shards);
        let gained = gained(&before, &after);
        assert!(gained.keys().all(|member| !members.iter().any(|old| old.id == *member)), "seed {seed}");
        let moved: u64 = gained.values().sum();
        let ideal = (shards.len() * RF) as f64 * 20.0 / 40.0;
        assert!(moved as f64 <= JOIN_MOVES_OVER_IDEAL * ideal, "seed {seed}: moved {moved} for an ideal of {ideal}");
        let (replicas, leaders) = (replica_ratio(&after, &doubled), leader_ratio(&after, &doubled));
        assert!(replicas <= 1.05 && leaders <= 1.10, "seed {seed}: {replicas:.3} / {leaders:.3}");
    }
}

#[test]
fn a_member_left_overloaded_by_shard_removals_sheds_down_to_the_band() {
    // Remove most of the shards member 0 does *not* hold: its load stays while the mean
    // drops, so it ends far above the band and must hand replicas to the others.
    let (_, members, shards, before) = scenario(31, 20, Domains::PerMember);
    let heavy = members[0].id;
    let held = before.shards_of(heavy);
    let kept: Vec<ShardId> = shards
        .iter()
        .copied()
        .enumerate()
        .filter(|(index, shard)| held.contains(shard) || index % 3 == 0)
        .map(|(_, shard)| shard)
        .collect();
    let after = before.recompute(&members, &kept).expect("valid inputs");
    check(&after, &members, &kept);
    let ratio = replica_ratio(&after, &members);
    assert!(ratio <= 1.06, "replica max/mean {ratio:.3}");
    // The moves are what the band asks for and no more: the overloaded member's excess over
    // ⌈mean⌉ plus the deficits under ⌊mean⌋ of the members the removals starved.
    let mean = (kept.len() * RF) as f64 / members.len() as f64;
    let load_on_kept = |member: MemberId| {
        before.iter().filter(|view| view.replicas.contains(&member) && kept.contains(&view.shard)).count()
    };
    let mut needed = 0.0;
    for member in &members {
        let load = load_on_kept(member.id) as f64;
        if load > (mean * 1.05).ceil() {
            needed += load - mean.ceil();
        } else if load < (mean * 0.95).floor() {
            needed += mean.floor() - load;
        }
    }
    let moved: u64 = gained(&before, &after).values().sum();
    assert!(after.replica_count(heavy) as f64 <= (mean * 1.05).ceil(), "the overloaded member is still above the band");
    assert!(moved as f64 <= needed, "moved {moved}, the band needed {needed}");
}
