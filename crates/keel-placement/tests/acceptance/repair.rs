//! Healing a raft group whose voter died: the leader's [`Repairer`] adds a spare as a learner,
//! promotes it once caught up, then removes the dead voter; one replacement at a time, never at
//! the cost of a live majority, and only from what the view shows.

use std::collections::BTreeMap;

use proptest::prelude::*;

use keel_placement::{GroupView, MemberId, Peer, RepairConfig, RepairStep, Repairer, ShardId, Spare};

use super::support::{cases, Stream};

const SECOND: u64 = 1_000_000;
const TICK: u64 = 100_000;

fn config() -> RepairConfig {
    RepairConfig {
        replace_dead_after_us: 10 * SECOND,
        min_interval_us: 30 * SECOND,
        caught_up_entries: 10,
        catch_up_timeout_us: 60 * SECOND,
        allow_shared_domain: false,
        reissue_after_us: 2 * SECOND,
    }
}

fn id(id: u64) -> MemberId {
    MemberId(id)
}

/// A group as raft and the membership protocol report it, which applies steps as raft would.
#[derive(Clone, Debug)]
struct Group {
    now: u64,
    voters: Vec<Peer>,
    learners: Vec<Peer>,
    spares: Vec<Spare>,
    last_index: u64,
    pending: bool,
}

impl Group {
    /// Voters 1..=n, voter i in zone-i, all caught up at index 1000; time 1000 s.
    fn new(n: u64) -> Group {
        let voters = (1..=n)
            .map(|i| Peer { id: id(i), domain: format!("zone-{i}"), dead_since_us: None, matched: 1000 })
            .collect();
        Group { now: 1000 * SECOND, voters, learners: Vec::new(), spares: Vec::new(), last_index: 1000, pending: false }
    }

    fn view(&self) -> GroupView<'_> {
        GroupView {
            now_us: self.now,
            shard: ShardId(7),
            voters: &self.voters,
            learners: &self.learners,
            spares: &self.spares,
            last_index: self.last_index,
            conf_change_pending: self.pending,
        }
    }

    fn step(&self, repairer: &mut Repairer) -> Option<RepairStep> {
        repairer.next_step(&self.view())
    }

    fn advance(&mut self, us: u64) {
        self.now += us;
    }

    fn peer(&mut self, member: MemberId) -> &mut Peer {
        self.voters.iter_mut().chain(self.learners.iter_mut()).find(|peer| peer.id == member).expect("a peer")
    }

    fn kill(&mut self, member: MemberId) {
        let now = self.now;
        self.peer(member).dead_since_us = Some(now);
    }

    fn revive(&mut self, member: MemberId) {
        self.peer(member).dead_since_us = None;
    }

    fn add_spare(&mut self, member: u64, domain: &str) {
        self.spares.push(Spare { id: id(member), domain: domain.to_string() });
    }

    fn catch_up(&mut self, member: MemberId) {
        let last = self.last_index;
        self.peer(member).matched = last;
    }

    /// Applies a conf change as raft would.
    fn apply(&mut self, step: RepairStep) {
        match step {
            RepairStep::AddLearner { spare, .. } => {
                let at = self.spares.iter().position(|candidate| candidate.id == spare).expect("a spare");
                let spare = self.spares.remove(at);
                self.learners.push(Peer { id: spare.id, domain: spare.domain, dead_since_us: None, matched: 0 });
            }
            RepairStep::Promote { learner, .. } => {
                let at = self.learners.iter().position(|peer| peer.id == learner).expect("a learner");
                let peer = self.learners.remove(at);
                self.voters.push(peer);
            }
            RepairStep::RemoveDead { dead } => self.voters.retain(|peer| peer.id != dead),
            RepairStep::RemoveLearner { learner } => self.learners.retain(|peer| peer.id != learner),
        }
    }

    fn voter_ids(&self) -> Vec<MemberId> {
        let mut ids: Vec<MemberId> = self.voters.iter().map(|peer| peer.id).collect();
        ids.sort_unstable();
        ids
    }
}

/// Three voters, voter 3 dead long enough, spare 10 in a zone of its own.
fn dead_voter_and_a_spare() -> (Group, Repairer) {
    let mut group = Group::new(3);
    group.kill(id(3));
    group.add_spare(10, "zone-new");
    group.advance(10 * SECOND);
    (group, Repairer::new(config()))
}

#[test]
fn a_dead_voter_is_replaced_by_adding_a_learner_promoting_it_then_removing_the_dead() {
    let (mut group, mut repairer) = dead_voter_and_a_spare();
    assert_eq!(repairer.under_replicated(&group.view()), vec![id(3)]);

    let add = group.step(&mut repairer);
    assert_eq!(add, Some(RepairStep::AddLearner { spare: id(10), replacing: id(3), shares_domain: false }));
    assert_eq!(repairer.in_progress(), Some((id(3), id(10))));
    group.apply(add.unwrap());

    // A learner that lags is not promoted yet.
    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), None);
    group.catch_up(id(10));
    group.advance(TICK);
    let promote = group.step(&mut repairer);
    assert_eq!(promote, Some(RepairStep::Promote { learner: id(10), replacing: id(3) }));
    group.apply(promote.unwrap());

    group.advance(TICK);
    assert!(repairer.under_replicated(&group.view()).is_empty(), "its replacement votes already");
    let remove = group.step(&mut repairer);
    assert_eq!(remove, Some(RepairStep::RemoveDead { dead: id(3) }));
    group.apply(remove.unwrap());

    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), None);
    assert_eq!(repairer.in_progress(), None);
    assert_eq!(group.voter_ids(), vec![id(1), id(2), id(10)]);
    let stats = repairer.stats();
    assert_eq!((stats.replacements_started, stats.promoted, stats.removed, stats.abandoned), (1, 1, 1, 0));
}

#[test]
fn a_caught_up_learner_is_one_within_caught_up_entries_of_the_leader() {
    let (mut group, mut repairer) = dead_voter_and_a_spare();
    group.apply(group.step(&mut repairer).unwrap());
    group.last_index = 1000;
    group.peer(id(10)).matched = 989;
    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), None, "11 entries behind");
    group.peer(id(10)).matched = 990;
    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), Some(RepairStep::Promote { learner: id(10), replacing: id(3) }));
}

#[test]
fn on_a_short_log_a_learner_must_also_hold_nine_tenths_of_it_as_the_leader_demands() {
    let (mut group, mut repairer) = dead_voter_and_a_spare();
    group.apply(group.step(&mut repairer).unwrap());
    // 60 entries behind is within caught_up_entries, but the leader refuses a learner that holds
    // less than 90 % of its log, so asking would only be refused.
    group.last_index = 80;
    group.peer(id(10)).matched = 20;
    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), None, "holds a quarter of the log");
    group.peer(id(10)).matched = 72;
    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), Some(RepairStep::Promote { learner: id(10), replacing: id(3) }));
}

#[test]
fn nothing_is_proposed_while_a_conf_change_is_pending() {
    let (mut group, mut repairer) = dead_voter_and_a_spare();
    group.pending = true;
    assert_eq!(group.step(&mut repairer), None);
    assert_eq!(repairer.in_progress(), None);
    group.pending = false;
    let add = group.step(&mut repairer).unwrap();
    group.apply(add);
    group.catch_up(id(10));
    group.pending = true;
    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), None, "no Promote while a conf change is pending");
}

#[test]
fn a_lost_proposal_is_reissued_but_at_most_once_per_reissue_interval() {
    let (mut group, mut repairer) = dead_voter_and_a_spare();
    let add = group.step(&mut repairer);
    assert!(add.is_some());
    // The proposal is lost: the view does not change.
    for _ in 0..19 {
        group.advance(TICK);
        assert_eq!(group.step(&mut repairer), None, "not on every call");
    }
    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), add, "again after reissue_after_us");
    assert_eq!(repairer.stats().replacements_started, 1, "the same replacement");
    // Once applied, the next step comes at once.
    group.apply(add.unwrap());
    group.catch_up(id(10));
    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), Some(RepairStep::Promote { learner: id(10), replacing: id(3) }));
}

#[test]
fn a_refused_proposal_is_decided_again_at_once() {
    let (mut group, mut repairer) = dead_voter_and_a_spare();
    let add = group.step(&mut repairer).expect("a replacement starts");
    // The leader refused it outright (handing over): it was never proposed.
    repairer.refused(add);
    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), Some(add), "not after reissue_after_us: at once");
    assert_eq!(repairer.stats().replacements_started, 1, "the same replacement");
    // A refusal of some other step changes nothing.
    repairer.refused(RepairStep::RemoveDead { dead: id(99) });
    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), None, "issued, now waiting for it to apply");
}

#[test]
fn a_voter_is_replaced_only_once_confirmed_dead_for_replace_dead_after() {
    let mut group = Group::new(3);
    group.add_spare(10, "zone-new");
    let mut repairer = Repairer::new(config());
    group.kill(id(3));
    group.advance(10 * SECOND - 1);
    assert_eq!(group.step(&mut repairer), None);
    assert_eq!(repairer.under_replicated(&group.view()), vec![id(3)], "reported before it is replaced");
    group.advance(1);
    assert!(matches!(group.step(&mut repairer), Some(RepairStep::AddLearner { replacing, .. }) if replacing == id(3)));
}

#[test]
fn a_suspected_voter_is_not_replaced() {
    // Suspicion is not confirmation: dead_since_us stays None until the membership protocol
    // confirms the death.
    let mut group = Group::new(3);
    group.add_spare(10, "zone-new");
    group.advance(3600 * SECOND);
    let mut repairer = Repairer::new(config());
    assert_eq!(group.step(&mut repairer), None);
    assert!(repairer.under_replicated(&group.view()).is_empty());
}

#[test]
fn a_voter_back_alive_before_its_replacement_started_is_left_alone() {
    let mut group = Group::new(3);
    let mut repairer = Repairer::new(config());
    group.kill(id(3));
    group.advance(20 * SECOND);
    assert_eq!(group.step(&mut repairer), None, "no spare yet");
    group.revive(id(3));
    group.add_spare(10, "zone-new");
    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), None);
    assert!(repairer.under_replicated(&group.view()).is_empty());
    assert_eq!(repairer.stats().replacements_started, 0);
}

#[test]
fn a_started_replacement_finishes_even_if_the_dead_voter_comes_back() {
    let (mut group, mut repairer) = dead_voter_and_a_spare();
    group.apply(group.step(&mut repairer).unwrap());
    group.revive(id(3));
    group.catch_up(id(10));
    group.advance(TICK);
    let promote = group.step(&mut repairer).unwrap();
    assert_eq!(promote, RepairStep::Promote { learner: id(10), replacing: id(3) });
    group.apply(promote);
    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), Some(RepairStep::RemoveDead { dead: id(3) }));
}

#[test]
fn only_one_replacement_is_in_flight_at_a_time() {
    let mut group = Group::new(5);
    group.kill(id(4));
    group.advance(SECOND);
    group.kill(id(5));
    group.add_spare(10, "zone-a");
    group.add_spare(11, "zone-b");
    group.advance(3600 * SECOND);
    let mut repairer = Repairer::new(config());
    let first = group.step(&mut repairer).unwrap();
    assert!(matches!(first, RepairStep::AddLearner { replacing, .. } if replacing == id(4)), "longest dead first");
    group.apply(first);
    // However long the learner takes, the second dead voter waits.
    for _ in 0..11 {
        group.advance(5 * SECOND);
        assert_eq!(group.step(&mut repairer), None);
    }
    assert_eq!(repairer.stats().replacements_started, 1);
    assert_eq!(group.learners.len(), 1);
}

#[test]
fn two_dead_of_three_voters_is_refused_for_quorum_and_counted_once() {
    let (mut group, mut repairer) = dead_voter_and_a_spare();
    group.kill(id(2));
    group.advance(20 * SECOND);
    for _ in 0..10 {
        group.advance(TICK);
        assert_eq!(group.step(&mut repairer), None);
    }
    assert_eq!(repairer.stats().refused_for_quorum, 1, "one episode, however often polled");
    assert_eq!(repairer.under_replicated(&group.view()), vec![id(2), id(3)]);
    group.revive(id(2));
    group.advance(TICK);
    assert!(matches!(group.step(&mut repairer), Some(RepairStep::AddLearner { .. })));
}

#[test]
fn a_learner_is_not_promoted_while_the_group_lacks_a_live_majority() {
    let (mut group, mut repairer) = dead_voter_and_a_spare();
    group.apply(group.step(&mut repairer).unwrap());
    group.catch_up(id(10));
    group.kill(id(2));
    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), None);
    assert_eq!(repairer.stats().refused_for_quorum, 1);
    group.revive(id(2));
    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), Some(RepairStep::Promote { learner: id(10), replacing: id(3) }));
}

#[test]
fn the_dead_is_removed_only_if_a_live_majority_remains() {
    // Four voters after the promotion: 1, 2, 10 alive and 3 dead. Removing 3 leaves 3 of 3.
    // With 2 dead as well, 2 of 4 alive cannot commit: refused until 2 returns.
    let (mut group, mut repairer) = dead_voter_and_a_spare();
    group.apply(group.step(&mut repairer).unwrap());
    group.catch_up(id(10));
    group.advance(TICK);
    group.apply(group.step(&mut repairer).unwrap());
    group.kill(id(2));
    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), None);
    assert_eq!(repairer.stats().refused_for_quorum, 1);
    group.revive(id(2));
    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), Some(RepairStep::RemoveDead { dead: id(3) }));
}

#[test]
fn without_a_spare_the_dead_voter_is_reported_and_replaced_once_a_spare_appears() {
    let mut group = Group::new(3);
    let mut repairer = Repairer::new(config());
    group.kill(id(3));
    group.advance(20 * SECOND);
    for _ in 0..5 {
        group.advance(TICK);
        assert_eq!(group.step(&mut repairer), None);
    }
    assert_eq!(repairer.under_replicated(&group.view()), vec![id(3)]);
    assert_eq!(repairer.stats().waiting_for_spare, 1);
    group.add_spare(10, "zone-new");
    group.advance(TICK);
    assert_eq!(
        group.step(&mut repairer),
        Some(RepairStep::AddLearner { spare: id(10), replacing: id(3), shares_domain: false })
    );
}

#[test]
fn the_spare_is_chosen_in_a_failure_domain_no_survivor_uses() {
    let (mut group, mut repairer) = dead_voter_and_a_spare();
    group.spares.clear();
    group.add_spare(10, "zone-1");
    group.add_spare(11, "zone-2");
    group.add_spare(12, "zone-2");
    group.add_spare(13, "zone-9");
    assert_eq!(
        group.step(&mut repairer),
        Some(RepairStep::AddLearner { spare: id(13), replacing: id(3), shares_domain: false })
    );
}

#[test]
fn a_spare_sharing_a_domain_with_a_survivor_is_used_only_if_allowed() {
    let (mut group, mut repairer) = dead_voter_and_a_spare();
    group.spares.clear();
    group.add_spare(10, "zone-1");
    assert_eq!(group.step(&mut repairer), None);
    assert_eq!(repairer.stats().waiting_for_spare, 1);
    assert_eq!(repairer.under_replicated(&group.view()), vec![id(3)]);

    let mut willing = Repairer::new(RepairConfig { allow_shared_domain: true, ..config() });
    assert_eq!(
        group.step(&mut willing),
        Some(RepairStep::AddLearner { spare: id(10), replacing: id(3), shares_domain: true })
    );
}

#[test]
fn replacements_start_at_least_min_interval_apart() {
    let mut group = Group::new(5);
    group.kill(id(4));
    group.kill(id(5));
    group.add_spare(10, "zone-a");
    group.add_spare(11, "zone-b");
    group.advance(3600 * SECOND);
    let mut repairer = Repairer::new(config());
    let started = group.now;
    // First replacement, carried out quickly.
    for _ in 0..3 {
        let step = group.step(&mut repairer).expect("a step");
        group.apply(step);
        if let RepairStep::AddLearner { spare, .. } = step {
            group.catch_up(spare);
        }
        group.advance(TICK);
    }
    assert_eq!(group.voters.len(), 5);
    assert!(!group.voter_ids().contains(&id(4)), "the first replacement is done");
    while group.now < started + 30 * SECOND {
        assert_eq!(group.step(&mut repairer), None, "rate limited");
        group.advance(TICK);
    }
    assert!(matches!(group.step(&mut repairer), Some(RepairStep::AddLearner { .. })));
    assert_eq!(repairer.stats().replacements_started, 2);
}

#[test]
fn a_learner_that_dies_is_removed_and_another_spare_is_tried() {
    let (mut group, mut repairer) = dead_voter_and_a_spare();
    group.add_spare(11, "zone-other");
    let add = group.step(&mut repairer).unwrap();
    let RepairStep::AddLearner { spare: first, .. } = add else { panic!("{add:?}") };
    group.apply(add);
    group.advance(TICK);
    group.kill(first);
    group.advance(TICK);
    let remove = group.step(&mut repairer);
    assert_eq!(remove, Some(RepairStep::RemoveLearner { learner: first }));
    assert_eq!(repairer.stats().abandoned, 1);
    group.apply(remove.unwrap());
    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), None, "rate limited");
    assert_eq!(repairer.in_progress(), None);
    group.advance(30 * SECOND);
    let retry = group.step(&mut repairer).unwrap();
    let RepairStep::AddLearner { spare: second, replacing, .. } = retry else { panic!("{retry:?}") };
    assert_eq!(replacing, id(3));
    assert_ne!(second, first);
}

#[test]
fn a_learner_that_does_not_catch_up_in_time_is_abandoned_and_not_chosen_again_for_a_while() {
    let (mut group, mut repairer) = dead_voter_and_a_spare();
    group.apply(group.step(&mut repairer).unwrap());
    group.advance(60 * SECOND - TICK);
    assert_eq!(group.step(&mut repairer), None, "still within catch_up_timeout_us");
    group.advance(TICK);
    let remove = group.step(&mut repairer);
    assert_eq!(remove, Some(RepairStep::RemoveLearner { learner: id(10) }));
    group.apply(remove.unwrap());
    // It is a spare again, and the only one: not chosen again for catch_up_timeout_us.
    group.add_spare(10, "zone-new");
    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), None);
    assert_eq!(repairer.stats().waiting_for_spare, 1);
    group.advance(60 * SECOND);
    assert!(matches!(group.step(&mut repairer), Some(RepairStep::AddLearner { spare, .. }) if spare == id(10)));
}

#[test]
fn a_replacement_is_dropped_if_someone_else_removes_the_dead_voter_before_the_learner_joins() {
    let (mut group, mut repairer) = dead_voter_and_a_spare();
    assert!(group.step(&mut repairer).is_some());
    // The AddLearner is lost, and an operator removes voter 3.
    group.voters.retain(|peer| peer.id != id(3));
    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), None, "a proposal may still be on its way");
    assert_eq!(repairer.in_progress(), Some((id(3), id(10))));
    group.advance(2 * SECOND);
    assert_eq!(group.step(&mut repairer), None);
    assert_eq!(repairer.in_progress(), None);
}

#[test]
fn learners_the_repairer_did_not_add_are_left_alone() {
    let mut group = Group::new(3);
    // An operator's learner that lags, then dies.
    group.learners.push(Peer { id: id(50), domain: "zone-9".into(), dead_since_us: None, matched: 0 });
    let mut repairer = Repairer::new(config());
    for _ in 0..10 {
        group.advance(30 * SECOND);
        assert_eq!(group.step(&mut repairer), None);
    }
    group.learners[0].matched = group.last_index;
    group.advance(TICK);
    assert_eq!(group.step(&mut repairer), None, "caught up, still not promoted");
    group.kill(id(50));
    group.advance(3600 * SECOND);
    assert_eq!(group.step(&mut repairer), None, "dead, still not removed");
    assert_eq!(repairer.stats(), Default::default());
}

#[test]
fn a_new_leader_adopts_its_predecessors_learner_instead_of_adding_another_spare() {
    let (mut group, mut old_leader) = dead_voter_and_a_spare();
    group.add_spare(11, "zone-other");
    let add = group.step(&mut old_leader).expect("the old leader starts");
    group.apply(add);
    // Leadership moves: the new leader's repairer starts empty.
    let mut new_leader = Repairer::new(config());
    group.advance(TICK);
    assert!(new_leader.adopt(id(3), id(10), group.now));
    assert!(!new_leader.adopt(id(3), id(11), group.now), "one replacement at a time");
    assert_eq!(group.step(&mut new_leader), None, "the adopted learner still lags; no second spare");
    group.catch_up(id(10));
    group.advance(TICK);
    let promote = group.step(&mut new_leader);
    assert_eq!(promote, Some(RepairStep::Promote { learner: id(10), replacing: id(3) }));
    group.apply(promote.unwrap());
    group.advance(TICK);
    let remove = group.step(&mut new_leader);
    assert_eq!(remove, Some(RepairStep::RemoveDead { dead: id(3) }));
    group.apply(remove.unwrap());
    assert_eq!(group.voter_ids(), vec![id(1), id(2), id(10)]);
    assert_eq!(group.spares.len(), 1, "spare 11 was never used");
}

#[test]
fn a_new_leader_removes_the_dead_voter_a_promoted_replacement_left_behind() {
    // The old leader promoted spare 10 for dead voter 3, then lost leadership before removing 3:
    // four voters, one dead, and no spare left.
    let (mut group, mut old_leader) = dead_voter_and_a_spare();
    let add = group.step(&mut old_leader).expect("add");
    group.apply(add);
    group.catch_up(id(10));
    group.advance(TICK);
    let promote = group.step(&mut old_leader).expect("promote");
    group.apply(promote);
    assert_eq!(group.voters.len(), 4);
    let mut new_leader = Repairer::new(config());
    group.advance(TICK);
    assert_eq!(group.step(&mut new_leader), Some(RepairStep::RemoveDead { dead: id(3) }));
    group.apply(RepairStep::RemoveDead { dead: id(3) });
    assert_eq!(group.voter_ids(), vec![id(1), id(2), id(10)]);
    assert_eq!(group.step(&mut new_leader), None);
    assert_eq!(new_leader.stats().removed, 1, "counted once seen applied");
}

// ---------------------------------------------------------------------------------------------
// A random model: deaths, revivals, spares appearing, steps applied after a delay or lost.

const OPERATOR_LEARNER: MemberId = MemberId(100);
const LEADER: MemberId = MemberId(1);

fn model_config(allow_shared_domain: bool) -> RepairConfig {
    RepairConfig {
        replace_dead_after_us: SECOND,
        min_interval_us: 3 * SECOND,
        caught_up_entries: 10,
        catch_up_timeout_us: 5 * SECOND,
        allow_shared_domain,
        reissue_after_us: SECOND / 2,
    }
}

struct Model {
    stream: Stream,
    group: Group,
    /// Alive processes outside the group (the spares) are `group.spares`; these are the dead
    /// ones, which may come back.
    dead_spares: Vec<Spare>,
    /// A learner's snapshot arrives at this time.
    catch_up_at: BTreeMap<MemberId, u64>,
    /// The conf change in flight: applied at the time, or lost.
    in_flight: Option<(RepairStep, u64, bool)>,
    next_id: u64,
    original: usize,
    last_start: Option<u64>,
}

fn alive_count(peers: &[Peer]) -> usize {
    peers.iter().filter(|peer| peer.dead_since_us.is_none()).count()
}

impl Model {
    fn new(seed: u64) -> Model {
        let mut stream = Stream(seed);
        let original = if stream.below(2) == 0 { 3 } else { 5 };
        let mut group = Group::new(original as u64);
        group.learners.push(Peer { id: OPERATOR_LEARNER, domain: "zone-9".into(), dead_since_us: None, matched: 0 });
        Model {
            stream,
            group,
            dead_spares: Vec::new(),
            catch_up_at: BTreeMap::new(),
            in_flight: None,
            next_id: 10,
            original,
            last_start: None,
        }
    }

    fn chance(&mut self, per_thousand: u64) -> bool {
        self.stream.below(1000) < per_thousand
    }

    fn add_spare(&mut self, domain: String) {
        self.group.spares.push(Spare { id: MemberId(self.next_id), domain });
        self.next_id += 1;
    }

    /// Random deaths, revivals and new spares.
    fn chaos(&mut self) {
        let now = self.group.now;
        if self.chance(15) {
            // Any process but the leader may die: a voter, a learner, a spare.
            let peers: Vec<MemberId> = self
                .group
                .voters
                .iter()
                .chain(&self.group.learners)
                .filter(|peer| peer.id != LEADER && peer.dead_since_us.is_none())
                .map(|peer| peer.id)
                .chain(self.group.spares.iter().map(|spare| spare.id))
                .collect();
            if !peers.is_empty() {
                let victim = peers[self.stream.below(peers.len() as u64) as usize];
                if let Some(at) = self.group.spares.iter().position(|spare| spare.id == victim) {
                    let spare = self.group.spares.remove(at);
                    self.dead_spares.push(spare);
                } else {
                    self.group.peer(victim).dead_since_us = Some(now);
                }
            }
        }
        if self.chance(6) {
            let dead: Vec<MemberId> = self
                .group
                .voters
                .iter()
                .chain(&self.group.learners)
                .filter(|peer| peer.dead_since_us.is_some())
                .map(|peer| peer.id)
                .collect();
            if !dead.is_empty() {
                let lucky = dead[self.stream.below(dead.len() as u64) as usize];
                self.group.revive(lucky);
            } else if !self.dead_spares.is_empty() {
                let spare = self.dead_spares.remove(0);
                self.group.spares.push(spare);
            }
        }
        if self.chance(10) {
            let zone = self.stream.below(7);
            self.add_spare(format!("zone-{zone}"));
        }
    }

    /// Raft and the replication between calls: the log grows, live voters keep up, learners
    /// catch up when their snapshot arrives, the conf change in flight is applied or lost.
    fn raft(&mut self, snapshot_ticks: u64) {
        let now = self.group.now;
        self.group.last_index += 3;
        let last = self.group.last_index;
        for peer in &mut self.group.voters {
            if peer.dead_since_us.is_none() {
                peer.matched = last;
            }
        }
        for peer in &mut self.group.learners {
            if peer.dead_since_us.is_none() && self.catch_up_at.get(&peer.id).is_some_and(|&at| at <= now) {
                peer.matched = last;
            }
        }
        if let Some((step, at, lost)) = self.in_flight {
            if at <= now {
                self.in_flight = None;
                // Without a live majority the entry cannot commit: as good as lost.
                let commits = alive_count(&self.group.voters) * 2 > self.group.voters.len();
                if !lost && commits {
                    let mut died = None;
                    if let RepairStep::AddLearner { spare, .. } = step {
                        let delay = self.stream.below(snapshot_ticks) * TICK;
                        self.catch_up_at.insert(spare, now + delay);
                        // Raft adds it even if it died since: a learner that is dead.
                        if let Some(at) = self.dead_spares.iter().position(|dead| dead.id == spare) {
                            self.group.spares.push(self.dead_spares.remove(at));
                            died = Some(spare);
                        }
                    }
                    self.group.apply(step);
                    if let Some(spare) = died {
                        self.group.kill(spare);
                    }
                }
            }
        }
        self.group.pending = self.in_flight.is_some();
    }

    /// One call of the repairer, checking every step against the view it was decided on.
    fn call(&mut self, repairer: &mut Repairer, loss_per_thousand: u64) {
        let before = repairer.in_progress();
        let step = self.group.step(repairer);
        let after = repairer.in_progress();
        let group = &self.group;
        let now = group.now;
        let cfg = repairer.config().clone();
        // One replacement at a time: one extra learner (besides the operator's) or one extra voter.
        assert!(group.voters.len() + group.learners.len() <= self.original + 2, "{group:?}");
        assert!((self.original..=self.original + 1).contains(&group.voters.len()), "{group:?}");
        let Some(step) = step else { return };
        assert!(!group.pending, "a step while a conf change is pending");
        let voter = |member: MemberId| group.voters.iter().find(|peer| peer.id == member);
        let learner = |member: MemberId| group.learners.iter().find(|peer| peer.id == member);
        let (voters, alive) = (group.voters.len(), alive_count(&group.voters));
        assert!(alive * 2 > voters, "{step:?} without a live majority: {group:?}");
        let (voters_after, alive_after) = match step {
            RepairStep::AddLearner { spare, replacing, .. } => {
                assert!(group.spares.iter().any(|candidate| candidate.id == spare), "{step:?}: not a spare");
                assert!(voter(replacing).is_some(), "{step:?}: not a voter");
                assert_eq!(after, Some((replacing, spare)));
                if before != after {
                    // A new replacement (the previous one, if any, ended in this call): nothing
                    // of another one may be left in the group.
                    assert_eq!(voters, self.original, "two replacements at once: {group:?}");
                    assert!(group.learners.iter().all(|peer| peer.id == OPERATOR_LEARNER), "{group:?}");
                    let dead_since = voter(replacing).unwrap().dead_since_us.expect("replacing a dead voter");
                    assert!(now - dead_since >= cfg.replace_dead_after_us);
                    if let Some(last) = self.last_start {
                        assert!(now - last >= cfg.min_interval_us, "rate limit");
                    }
                    self.last_start = Some(now);
                }
                (voters, alive)
            }
            RepairStep::Promote { learner: member, replacing } => {
                let peer = learner(member).expect("promoting a learner");
                assert!(peer.dead_since_us.is_none() && group.last_index - peer.matched <= cfg.caught_up_entries);
                assert!(peer.matched * 10 >= group.last_index * 9, "the leader would refuse: {group:?}");
                assert_eq!(before, Some((replacing, member)));
                (voters + 1, alive + 1)
            }
            RepairStep::RemoveDead { dead } => {
                let peer = voter(dead).expect("removing a voter");
                let spare = before.expect("a replacement in flight").1;
                assert_eq!(before, Some((dead, spare)));
                assert!(voter(spare).is_some(), "removing the dead before its replacement votes");
                (voters - 1, alive - usize::from(peer.dead_since_us.is_none()))
            }
            RepairStep::RemoveLearner { learner: member } => {
                assert_ne!(member, OPERATOR_LEARNER, "removed a learner it did not add");
                assert!(learner(member).is_some());
                assert_eq!(before.map(|job| job.1), Some(member));
                (voters, alive)
            }
        };
        assert!(alive_after * 2 > voters_after, "{step:?} leaves {alive_after} of {voters_after} alive");
        let delay = self.stream.below(6) * TICK;
        let lost = self.chance(loss_per_thousand);
        self.in_flight = Some((step, now + delay, lost));
    }

    fn tick(&mut self, repairer: &mut Repairer, snapshot_ticks: u64, loss: u64) {
        self.group.advance(TICK);
        self.raft(snapshot_ticks);
        self.call(repairer, loss);
    }
}

fn random_walk(seed: u64) {
    let mut model = Model::new(seed);
    let allow_shared = model.stream.below(2) == 0;
    let mut repairer = Repairer::new(model_config(allow_shared));
    for _ in 0..3 {
        let zone = model.stream.below(7);
        model.add_spare(format!("zone-{zone}"));
    }
    // Chaos: snapshots take up to 8 s (the timeout is 5 s), a fifth of the proposals are lost.
    for _ in 0..1000 {
        model.chaos();
        model.tick(&mut repairer, 80, 200);
    }
    // Calm: no more deaths or losses, the dead voters come back if the group lost its
    // majority (nobody could heal it otherwise), fresh spares in zones of their own.
    if alive_count(&model.group.voters) * 2 <= model.group.voters.len() {
        for peer in &mut model.group.voters {
            peer.dead_since_us = None;
        }
    }
    model.add_spare("zone-fresh-a".into());
    model.add_spare("zone-fresh-b".into());
    for _ in 0..1200 {
        model.tick(&mut repairer, 20, 0);
    }
    let group = &model.group;
    assert_eq!(group.voters.len(), model.original, "seed {seed}: {group:?}");
    assert!(group.voters.iter().all(|peer| peer.dead_since_us.is_none()), "seed {seed}: {group:?}");
    assert!(group.learners.iter().all(|peer| peer.id == OPERATOR_LEARNER), "seed {seed}: {group:?}");
    assert_eq!(repairer.in_progress(), None, "seed {seed}");
    assert!(repairer.under_replicated(&group.view()).is_empty(), "seed {seed}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(256)))]
    #[test]
    fn random_deaths_and_lost_proposals_heal_without_breaking_quorum(seed in any::<u64>()) {
        random_walk(seed);
    }
}

#[test]
fn random_walks_over_fixed_seeds() {
    for seed in 0..32 {
        random_walk(seed);
    }
}
