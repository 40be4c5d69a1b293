//! Behaviour of one member driven by hand, and of small groups in the simulator.

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::sim::{self, Scenario};

const PERIOD: u64 = 1_000_000;

fn member(me: MemberId, peers: &[MemberId]) -> Swim {
    Swim::new(SwimConfig::lan(), me, 0, Bytes::new(), peers, 7, 0)
}

fn update(member: MemberId, incarnation: Incarnation, liveness: Liveness, by: MemberId) -> Update {
    Update { member, incarnation, liveness, by, meta: Bytes::new() }
}

/// Runs `swim` until its first probe and returns (when, target, seq).
fn first_probe(swim: &mut Swim) -> (u64, MemberId, u32) {
    let at = swim.next_deadline();
    swim.tick(at);
    let ping = swim.take_outbox().into_iter().find_map(|(to, m)| match m {
        Message::Ping { seq, target, .. } => Some((to, target, seq)),
        _ => None,
    });
    let (to, target, seq) = ping.expect("the first deadline is a probe");
    assert_eq!(to, target);
    (at, target, seq)
}

#[test]
fn a_suspected_member_refutes_with_a_higher_incarnation() {
    let mut swim = member(1, &[1, 2, 3]);
    swim.take_outbox();
    swim.step(10, 2, Message::Gossip { updates: vec![update(1, 0, Liveness::Suspect, 2)] });
    assert_eq!(swim.incarnation(), 1);
    assert_eq!(swim.stats().refutations, 1);
    let pushed: Vec<Update> = swim
        .take_outbox()
        .into_iter()
        .flat_map(|(_, m)| match m {
            Message::Gossip { updates } => updates,
            _ => Vec::new(),
        })
        .collect();
    assert!(pushed.iter().any(|u| u.member == 1 && u.liveness == Liveness::Alive && u.incarnation == 1));
    // An old suspicion (incarnation 0) no longer touches it.
    swim.step(20, 3, Message::Gossip { updates: vec![update(1, 0, Liveness::Suspect, 3)] });
    assert_eq!(swim.incarnation(), 1);
}

#[test]
fn an_unanswered_probe_leads_to_relays_then_suspicion_then_death() {
    let mut swim = member(1, &[1, 2, 3, 4, 5]);
    let (at, target, first_seq) = first_probe(&mut swim);
    // No ack after half the probe timeout: the ping goes once more (it or its ack may be lost).
    let resend_at = swim.next_deadline();
    assert_eq!(resend_at, at + SwimConfig::lan().probe_timeout_us / 2);
    swim.tick(resend_at);
    let resent: Vec<(MemberId, u32)> = swim
        .take_outbox()
        .into_iter()
        .filter_map(|(to, m)| match m {
            Message::Ping { seq, .. } => Some((to, seq)),
            _ => None,
        })
        .collect();
    assert_eq!(resent, vec![(target, first_seq)], "the same probe, to the same member");
    // Still no ack: at the probe timeout it asks relays.
    let relay_at = swim.next_deadline();
    assert_eq!(relay_at, at + SwimConfig::lan().probe_timeout_us);
    swim.tick(relay_at);
    let relays: Vec<MemberId> = swim
        .take_outbox()
        .into_iter()
        .filter_map(|(to, m)| matches!(m, Message::PingReq { target: t, .. } if t == target).then_some(to))
        .collect();
    assert_eq!(relays.len(), 3, "k = 3 relays");
    assert!(!relays.contains(&target) && !relays.contains(&1));
    // The relays nack (they are reachable, the target is not): the prober's health holds.
    let seq = match swim.probe.as_ref() {
        Some(p) => p.seq,
        None => panic!("probe open"),
    };
    for relay in &relays {
        swim.step(relay_at + 1, *relay, Message::Nack { seq });
    }
    let suspect_at = swim.next_deadline();
    swim.tick(suspect_at);
    assert_eq!(swim.liveness(target).map(|l| l.0), Some(Liveness::Suspect));
    let health_after_suspecting = swim.local_health();
    assert_eq!(health_after_suspecting, 1, "one failed probe; every relay nacked");
    // Nobody refutes: it is declared dead when the (unconfirmed, so longest) timeout runs out.
    let mut now = suspect_at;
    while swim.liveness(target).map(|l| l.0) == Some(Liveness::Suspect) {
        now = swim.next_deadline();
        swim.tick(now);
        // Keep the other members answering so only the target is in doubt.
        for (to, m) in swim.take_outbox() {
            if let Message::Ping { seq, .. } = m {
                if to != target {
                    swim.step(now + 1, to, Message::Ack { seq, updates: Vec::new() });
                }
            }
        }
    }
    assert_eq!(swim.liveness(target).map(|l| l.0), Some(Liveness::Dead));
    let waited = now - suspect_at;
    let longest = (4.0 * 0.5 * PERIOD as f64) as u64;
    assert!(waited >= longest && waited < longest + 2 * PERIOD, "waited {waited} µs");
}

#[test]
fn independent_confirmations_shorten_a_suspicion() {
    let mut lone = member(1, &(1..=10).collect::<Vec<_>>());
    let mut confirmed = member(1, &(1..=10).collect::<Vec<_>>());
    lone.step(0, 2, Message::Gossip { updates: vec![update(9, 0, Liveness::Suspect, 2)] });
    confirmed.step(0, 2, Message::Gossip { updates: vec![update(9, 0, Liveness::Suspect, 2)] });
    for by in [3, 4, 5] {
        confirmed.step(1, by, Message::Gossip { updates: vec![update(9, 0, Liveness::Suspect, by)] });
    }
    // The same accuser twice is not a confirmation.
    lone.step(1, 2, Message::Gossip { updates: vec![update(9, 0, Liveness::Suspect, 2)] });
    let lone_deadline = lone.suspicions[&9].deadline_us;
    let confirmed_deadline = confirmed.suspicions[&9].deadline_us;
    assert_eq!(lone_deadline, lone.suspicion_timeout(0));
    assert_eq!(confirmed_deadline, confirmed.suspicion_timeout(3));
    assert!(confirmed_deadline * 3 < lone_deadline, "{confirmed_deadline} vs {lone_deadline}");
}

#[test]
fn a_member_stopped_past_its_deadlines_reads_its_socket_before_accusing() {
    for local_health in [true, false] {
        let mut cfg = SwimConfig::lan();
        cfg.local_health = local_health;
        let mut swim = Swim::new(cfg, 1, 0, Bytes::new(), &[1, 2, 3, 4], 7, 0);
        let (at, target, seq) = first_probe(&mut swim);
        // The process stops for 3 s; the ack arrived meanwhile and waits in the socket. On
        // resuming, the overdue timer fires before the socket is read.
        let resumed = at + 3 * PERIOD;
        swim.tick(resumed);
        if local_health {
            assert_eq!(swim.stats().stalls_noticed, 1);
            assert_eq!(swim.local_health(), 1, "a stall makes the member doubt itself");
        }
        swim.step(resumed, target, Message::Ack { seq, updates: Vec::new() });
        swim.tick(swim.next_deadline().min(resumed + PERIOD / 2));
        let suspected = swim.liveness(target).map(|l| l.0) != Some(Liveness::Alive);
        assert_eq!(suspected, !local_health, "local health {local_health}: suspected {suspected}");
    }
}

#[test]
fn every_member_is_probed_by_someone_in_every_period() {
    let ids: Vec<MemberId> = (1..=50).collect();
    let members: Vec<Swim> = ids.iter().map(|&id| member(id, &ids)).collect();
    for period in 0..20u64 {
        let now = period * PERIOD + PERIOD / 2;
        let mut probed: Vec<MemberId> = members.iter().filter_map(|m| m.probe_target(now)).collect();
        probed.sort_unstable();
        assert_eq!(probed, ids, "period {period}: a permutation");
    }
}

#[test]
fn small_groups_detect_a_crash_everywhere_and_never_kill_the_living_at_five_percent_loss() {
    let mut scenario = Scenario::new(30, SwimConfig::lan());
    scenario.crash = true;
    scenario.loss = 0.05;
    for seed in 0..40 {
        let outcome = sim::run(&scenario, seed);
        let detection = outcome.detection_us.expect("every member marks the crashed one dead");
        assert!(detection < 10 * PERIOD, "seed {seed}: {detection} µs");
        assert_eq!(outcome.false_dead, 0, "seed {seed}");
    }
    let mut quiet = Scenario::new(30, SwimConfig::lan());
    quiet.loss = 0.05;
    quiet.run_us = 120 * PERIOD;
    for seed in 0..10 {
        assert_eq!(sim::run(&quiet, seed).false_dead, 0, "seed {seed}");
    }
}

#[test]
fn without_loss_a_member_sends_about_two_messages_a_period() {
    let scenario = Scenario::new(40, SwimConfig::lan());
    let outcome = sim::run(&scenario, 1);
    let per = outcome.messages_per_member_period();
    assert!((1.9..=2.2).contains(&per), "{per} messages per member per period: {:?}", outcome.messages);
    assert_eq!(outcome.messages.get("ping-req"), None, "no loss, no indirect probe");
}

#[test]
fn news_reaches_every_member_even_at_thirty_percent_loss() {
    let mut scenario = Scenario::new(60, SwimConfig::lan());
    scenario.news = true;
    scenario.loss = 0.3;
    for seed in 0..10 {
        let spread = sim::run(&scenario, seed).news_spread_us.expect("everyone hears");
        assert!(spread <= SwimConfig::lan().sync_interval_us, "seed {seed}: {spread} µs");
    }
}

fn liveness() -> impl Strategy<Value = Liveness> {
    prop_oneof![Just(Liveness::Alive), Just(Liveness::Suspect), Just(Liveness::Dead), Just(Liveness::Left)]
}

proptest! {
    /// Beliefs form a lattice: whatever order updates arrive in, a member ends at the greatest
    /// (incarnation, liveness) among them — gossip can reorder and repeat without harm.
    #[test]
    fn the_order_updates_arrive_in_does_not_matter(
        updates in proptest::collection::vec((0u64..4, liveness(), 2u64..6), 1..12),
        shuffle_seed in any::<u64>(),
    ) {
        let updates: Vec<Update> = updates.into_iter().map(|(inc, l, by)| update(9, inc, l, by)).collect();
        let mut shuffled = updates.clone();
        let mut state = shuffle_seed;
        for i in (1..shuffled.len()).rev() {
            state = scramble(state);
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let peers: Vec<MemberId> = (1..=9).collect();
        let mut a = member(1, &peers);
        let mut b = member(1, &peers);
        for u in updates.iter().cloned() {
            a.step(1, u.by, Message::Gossip { updates: vec![u] });
        }
        for u in shuffled {
            b.step(1, u.by, Message::Gossip { updates: vec![u] });
        }
        let greatest = updates.iter().map(|u| (u.incarnation, u.liveness)).max().unwrap_or((0, Liveness::Alive));
        let expected = (greatest.1, greatest.0);
        prop_assert_eq!(a.liveness(9), Some(expected));
        prop_assert_eq!(b.liveness(9), Some(expected));
    }
}

#[test]
fn local_health_keeps_stalling_members_from_killing_responsive_ones() {
    // Members that stop for seconds at a time come back to overdue timers. Without local
    // health they convict members whose refutations wait unread in their socket; with it,
    // hardly anybody that was answering is (the simulator's 1,000-seed figure: 6 against 1,472).
    let responsive_deaths = |local_health: bool| -> u64 {
        let mut cfg = SwimConfig::lan();
        cfg.local_health = local_health;
        let mut scenario = Scenario::new(40, cfg);
        scenario.stall_fraction = 0.2;
        scenario.run_us = 120 * PERIOD;
        (0..20).map(|seed| sim::run(&scenario, seed).false_dead_responsive).sum()
    };
    let (with, without) = (responsive_deaths(true), responsive_deaths(false));
    assert!(without >= 20, "the scenario must show the harm: {without}");
    assert!(with * 20 <= without, "local health: {with} responsive members killed, without it {without}");
}

#[test]
fn under_a_storm_of_fresh_news_the_oldest_still_gets_a_share_of_every_message() {
    let peers: Vec<MemberId> = (1..=1_000).collect();
    let mut swim = member(1, &peers);
    swim.step(1, 2, Message::Gossip { updates: vec![update(9, 1, Liveness::Alive, 9)] });
    for _ in 0..3 {
        swim.piggyback(None);
    }
    // Twice a message's worth of fresh suspicions, each sent fewer times than the old news.
    let storm_size = 2 * swim.cfg.max_piggyback as u64;
    let storm: Vec<Update> = (100..100 + storm_size).map(|m| update(m, 0, Liveness::Suspect, 2)).collect();
    swim.step(2, 2, Message::Gossip { updates: storm });
    let carried = swim.piggyback(None);
    assert_eq!(carried.len(), swim.cfg.max_piggyback);
    assert!(
        carried.iter().any(|u| u.member == 9 && u.incarnation == 1),
        "the older news rides along: {:?}",
        carried.iter().map(|u| u.member).collect::<Vec<_>>()
    );
}

#[test]
fn a_message_carries_at_most_its_byte_budget_of_news() {
    let peers: Vec<MemberId> = (1..=1_000).collect();
    let mut swim = member(1, &peers);
    // News of members with big descriptions: far more than the byte budget.
    let description = Bytes::from(vec![b'd'; 1_000]);
    let news: Vec<Update> =
        (100..400).map(|m| Update { meta: description.clone(), ..update(m, 1, Liveness::Alive, m) }).collect();
    swim.step(1, 2, Message::Gossip { updates: news });
    let carried = swim.piggyback(None);
    let bytes: usize = carried.iter().map(crate::wire::update_bytes).sum();
    assert!(bytes <= swim.cfg.max_piggyback_bytes, "{bytes} bytes of updates in one message");
    assert!(
        bytes + crate::wire::update_bytes(&carried[0]) > swim.cfg.max_piggyback_bytes,
        "and the budget is used: {} updates, {bytes} bytes",
        carried.len()
    );
    // What did not fit is still queued and rides on the next messages.
    let next = swim.piggyback(None);
    assert!(next.iter().any(|u| !carried.iter().any(|c| c.member == u.member)), "the rest follows");
    for message in swim.take_outbox() {
        let bytes: usize = message.1.updates().iter().map(crate::wire::update_bytes).sum();
        assert!(bytes <= swim.cfg.max_piggyback_bytes, "a {} carried {bytes} bytes of updates", message.1.kind());
    }
}

#[test]
fn after_a_partition_heals_both_sides_believe_each_other_alive_again() {
    // Three of ten cut off for 30 periods: each side declares the other dead. Nobody probes
    // the dead, so only the reconnect offers let anything cross once the network heals.
    let rejoined = |reconnect: bool| -> Vec<Option<u64>> {
        let mut cfg = SwimConfig::lan();
        if !reconnect {
            cfg.reconnect_interval_us = 0;
        }
        let mut scenario = Scenario::new(10, cfg);
        scenario.partition = Some(sim::Partition { members: 3, length_us: 30 * PERIOD });
        scenario.run_us = 120 * PERIOD;
        (0..10)
            .map(|seed| {
                let outcome = sim::run(&scenario, seed);
                assert!(outcome.partition_declared_dead, "seed {seed}: the partition must matter");
                outcome.rejoined_us
            })
            .collect()
    };
    for (seed, rejoined) in rejoined(true).into_iter().enumerate() {
        let rejoined = rejoined.unwrap_or_else(|| panic!("seed {seed}: still split 90 periods after the heal"));
        assert!(rejoined <= 2 * SwimConfig::lan().reconnect_interval_us, "seed {seed}: {rejoined} us");
    }
    assert!(rejoined(false).iter().all(Option::is_none), "without reconnecting, the split is for good");
}
