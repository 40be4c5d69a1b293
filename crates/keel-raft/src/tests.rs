//! Behaviour tests of one group over a tiny synchronous in-memory network. Persistence is
//! instantaneous here; the simulator (keel-sim) covers crashes, delays and the durable side.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::*;

struct Cluster {
    nodes: BTreeMap<NodeId, RawNode>,
    /// Messages between these pairs are dropped.
    cut: BTreeSet<(NodeId, NodeId)>,
    applied: BTreeMap<NodeId, Vec<Entry>>,
    reads: BTreeMap<NodeId, Vec<ReadState>>,
}

impl Cluster {
    fn new(ids: &[NodeId]) -> Cluster {
        Cluster::with_config(ids, |_| {})
    }

    fn with_config(ids: &[NodeId], adjust: impl Fn(&mut Config)) -> Cluster {
        let conf = ConfState::with_voters(ids.iter().copied());
        let mut nodes = BTreeMap::new();
        for &id in ids {
            let mut cfg = Config::new(id, 1);
            adjust(&mut cfg);
            let recovered = RecoveredState { conf: conf.clone(), ..Default::default() };
            nodes.insert(id, RawNode::new(cfg, recovered).expect("valid config"));
        }
        Cluster { nodes, cut: BTreeSet::new(), applied: BTreeMap::new(), reads: BTreeMap::new() }
    }

    fn isolate(&mut self, id: NodeId) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for other in ids {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    /// Processes Readys and delivers messages until nothing moves.
    fn stabilize(&mut self) {
        for _ in 0..10_000 {
            let mut msgs = Vec::new();
            for (id, node) in self.nodes.iter_mut() {
                if let Some(ready) = node.ready() {
                    msgs.extend(ready.messages.iter().cloned());
                    msgs.extend(ready.persisted_messages.iter().cloned());
                    self.applied.entry(*id).or_default().extend(ready.committed_entries.iter().cloned());
                    self.reads.entry(*id).or_default().extend(ready.read_states.iter().copied());
                    node.advance(ready.number());
                }
            }
            if msgs.is_empty() && self.nodes.values().all(|n| !n.has_ready()) {
                return;
            }
            for msg in msgs {
                if self.cut.contains(&(msg.from, msg.to)) {
                    continue;
                }
                if let Some(node) = self.nodes.get_mut(&msg.to) {
                    node.step(msg);
                }
            }
        }
        panic!("cluster did not stabilize");
    }

    fn tick_all(&mut self, ticks: u32) {
        for _ in 0..ticks {
            for node in self.nodes.values_mut() {
                node.tick();
            }
            self.stabilize();
        }
    }

    /// Ticks only `ids` (the others are dead or frozen), delivering after each tick.
    fn tick_only(&mut self, ids: &[NodeId], ticks: u32) {
        for _ in 0..ticks {
            for &id in ids {
                self.node(id).tick();
            }
            self.stabilize();
        }
    }

    /// `leader`'s process dies: its connections close and each of `followers` is told.
    fn leader_dies_and_followers_are_told(&mut self, leader: NodeId, followers: &[NodeId]) {
        self.isolate(leader);
        for &id in followers {
            self.node(id).report_peer_lost(leader);
        }
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.nodes.values().filter(|n| n.status().role == Role::Leader).map(|n| n.status().id).collect()
    }

    fn elect(&mut self, id: NodeId) {
        self.nodes.get_mut(&id).unwrap().campaign();
        self.stabilize();
        assert_eq!(self.leaders(), vec![id]);
    }

    fn node(&mut self, id: NodeId) -> &mut RawNode {
        self.nodes.get_mut(&id).unwrap()
    }

    fn applied_data(&self, id: NodeId) -> Vec<Bytes> {
        self.applied.get(&id).map_or(Vec::new(), |entries| {
            entries
                .iter()
                .filter(|e| e.kind == EntryKind::Normal && !e.data.is_empty())
                .map(|e| e.data.clone())
                .collect()
        })
    }
}

#[test]
fn a_campaigning_member_becomes_the_only_leader() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    assert!(cluster.nodes.values().all(|n| n.status().leader == 1));
    assert!(cluster.nodes.values().all(|n| n.status().hard_state.term == 1));
}

#[test]
fn elections_happen_on_their_own_after_the_timeout() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.tick_all(25);
    assert_eq!(cluster.leaders().len(), 1);
}

#[test]
fn a_cluster_started_with_campaign_soon_elects_within_a_few_ticks_and_without_it_waits_a_timeout() {
    let mut soon = Cluster::with_config(&[1, 2, 3], |cfg| cfg.campaign_soon_at_start = true);
    soon.tick_all(4);
    assert_eq!(soon.leaders().len(), 1, "a leader within four ticks of starting");
    let mut plain = Cluster::new(&[1, 2, 3]);
    plain.tick_all(4);
    assert!(plain.leaders().is_empty(), "no campaign before the election timeout");
}

#[test]
fn a_member_restarting_with_campaign_soon_does_not_disrupt_a_healthy_leader() {
    let mut cluster = Cluster::with_config(&[1, 2, 3], |cfg| cfg.campaign_soon_at_start = true);
    cluster.elect(1);
    let term = cluster.node(1).status().hard_state.term;
    // Member 3 restarts: a fresh RawNode from what it persisted (here: the same term and log).
    let status = cluster.node(3).status();
    let mut cfg = Config::new(3, 1);
    cfg.campaign_soon_at_start = true;
    let recovered = RecoveredState { conf: status.conf.clone(), hard_state: status.hard_state, ..Default::default() };
    cluster.nodes.insert(3, RawNode::new(cfg, recovered).expect("valid config"));
    // Its pre-vote finds members that hear the leader, and is refused.
    cluster.tick_only(&[3], 4);
    assert_eq!(cluster.leaders(), vec![1]);
    assert_eq!(cluster.node(1).status().hard_state.term, term, "the leader's term did not move");
}

#[test]
fn a_committed_proposal_is_applied_everywhere_in_order() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    for i in 0..100u32 {
        cluster.node(1).propose(Bytes::from(i.to_le_bytes().to_vec())).unwrap();
    }
    cluster.stabilize();
    let expected: Vec<Bytes> = (0..100u32).map(|i| Bytes::from(i.to_le_bytes().to_vec())).collect();
    for id in [1, 2, 3] {
        assert_eq!(cluster.applied_data(id), expected, "member {id}");
    }
}

#[test]
fn a_follower_refuses_proposals_and_names_the_leader() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    assert_eq!(cluster.node(2).propose(Bytes::from_static(b"x")), Err(RaftError::NotLeader { leader: 1 }));
}

#[test]
fn a_minority_cannot_commit() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.isolate(1);
    cluster.node(1).propose(Bytes::from_static(b"lost")).unwrap();
    cluster.stabilize();
    assert!(cluster.applied_data(1).is_empty());
}

#[test]
fn a_partitioned_leader_steps_down_by_check_quorum() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.isolate(1);
    cluster.tick_all(40);
    assert_ne!(cluster.node(1).status().role, Role::Leader);
    // Pre-voting, the isolated member never raised its term.
    assert_eq!(cluster.node(1).status().hard_state.term, 1);
    let leaders = cluster.leaders();
    assert_eq!(leaders.len(), 1);
    assert_ne!(leaders[0], 1);
}

#[test]
fn pre_vote_keeps_a_rejoining_member_from_disrupting_the_leader() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.cut.insert((1, 3));
    cluster.cut.insert((3, 1));
    cluster.cut.insert((2, 3));
    cluster.cut.insert((3, 2));
    // Member 3 times out repeatedly but, pre-voting, never raises its term.
    for _ in 0..50 {
        cluster.node(3).tick();
        cluster.stabilize();
    }
    assert_eq!(cluster.node(3).status().hard_state.term, 1);
    cluster.heal();
    cluster.tick_all(3);
    assert_eq!(cluster.leaders(), vec![1]);
    assert_eq!(cluster.node(1).status().hard_state.term, 1);
}

#[test]
fn entries_from_an_old_term_commit_only_through_a_current_term_entry() {
    // Raft figure 8: member 1 leads term 1 and replicates an entry to 2 only; then 3 leads.
    let mut cluster = Cluster::new(&[1, 2, 3, 4, 5]);
    cluster.elect(1);
    cluster.isolate(1);
    cluster.node(1).propose(Bytes::from_static(b"old")).unwrap();
    let ready = cluster.node(1).ready().unwrap();
    cluster.node(1).advance(ready.number());
    let leader_status = cluster.node(1).status();
    // Old-term entry is on 1 only; a new leader must not count it toward commit without an own entry.
    assert!(leader_status.hard_state.commit < leader_status.last_index);
    cluster.heal();
    cluster.tick_all(1);
    cluster.stabilize();
    assert_eq!(cluster.applied_data(2), vec![Bytes::from_static(b"old")]);
}

#[test]
fn read_index_is_confirmed_by_one_round_for_many_reads() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    for id in 0..10 {
        cluster.node(1).read_index(id);
    }
    cluster.stabilize();
    let reads = cluster.reads.get(&1).cloned().unwrap_or_default();
    assert_eq!(reads.len(), 10);
    let commit = cluster.node(1).status().hard_state.commit;
    assert!(reads.iter().all(|r| r.index == commit));
}

#[test]
fn read_index_is_not_answered_by_an_isolated_leader() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.isolate(1);
    cluster.node(1).read_index(7);
    cluster.stabilize();
    assert!(cluster.reads.get(&1).is_none_or(|r| r.is_empty()));
}

#[test]
fn a_follower_read_is_forwarded_to_the_leader() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.node(2).read_index(42);
    cluster.stabilize();
    assert_eq!(cluster.reads.get(&2).unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), vec![42]);
}

#[test]
fn leadership_transfers_to_the_target() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.node(1).propose(Bytes::from_static(b"a")).unwrap();
    cluster.stabilize();
    cluster.node(1).transfer_leader(3).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.leaders(), vec![3]);
}

#[test]
fn a_learner_is_added_caught_up_and_promoted() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    for i in 0..20u8 {
        cluster.node(1).propose(Bytes::from(vec![i])).unwrap();
    }
    cluster.stabilize();
    // The new member starts empty and knows nothing of the group.
    let cfg = Config::new(4, 1);
    cluster.nodes.insert(4, RawNode::new(cfg, RecoveredState::default()).unwrap());
    cluster.node(1).propose_conf_change(ConfChange::AddLearner(4)).unwrap();
    cluster.stabilize();
    assert!(cluster.node(1).status().conf.learners.contains(&4));
    assert_eq!(cluster.applied_data(4).len(), 20);
    cluster.node(1).propose_conf_change(ConfChange::AddVoter(4)).unwrap();
    cluster.stabilize();
    assert!(cluster.node(4).status().conf.voters.contains(&4));
    assert_eq!(cluster.node(1).status().conf.voters.len(), 4);
}

#[test]
fn a_conf_change_carries_its_context_whole_and_decodes_without_it() {
    for change in [ConfChange::AddLearner(4), ConfChange::AddVoter(4), ConfChange::Remove(9)] {
        let encoded = change.encode_with(b"member record");
        assert_eq!(ConfChange::decode(&encoded), Some(change));
        assert_eq!(ConfChange::context(&encoded), b"member record");
        assert_eq!(ConfChange::context(&change.encode()), b"", "no context");
        assert_eq!(ConfChange::decode(&change.encode()), Some(change));
        for cut in 0..9 {
            assert_eq!(ConfChange::decode(&encoded[..cut]), None, "cut at {cut}");
        }
    }
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    let index = cluster.node(1).propose_conf_change_with(ConfChange::AddLearner(4), b"record of 4").unwrap();
    cluster.stabilize();
    for member in [1, 2, 3] {
        let entry = cluster.applied[&member].iter().find(|e| e.index == index).expect("applied").clone();
        assert_eq!((entry.kind, ConfChange::context(&entry.data)), (EntryKind::ConfChange, &b"record of 4"[..]));
    }
}

#[test]
fn a_leader_names_its_most_caught_up_voter_to_hand_over_to() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    assert_eq!(cluster.node(2).transfer_target(), None, "only a leader hands over");
    // Member 3 is cut off while entries go to 2: 2 holds more of the log.
    cluster.isolate(3);
    for i in 0..5u8 {
        cluster.node(1).propose(Bytes::from(vec![i])).unwrap();
    }
    cluster.stabilize();
    assert_eq!(cluster.node(1).transfer_target(), Some(2));
    cluster.node(1).transfer_leader(2).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.leaders(), vec![2]);
}

#[test]
fn a_learner_is_promoted_only_once_it_holds_nine_tenths_of_the_leaders_log() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    for i in 0..20u8 {
        cluster.node(1).propose(Bytes::from(vec![i])).unwrap();
    }
    cluster.stabilize();
    // Member 4 is added as a learner but never runs: the leader has heard nothing from it.
    cluster.node(1).propose_conf_change(ConfChange::AddLearner(4)).unwrap();
    cluster.stabilize();
    assert!(cluster.node(1).status().conf.learners.contains(&4));
    assert_eq!(cluster.node(1).propose_conf_change(ConfChange::AddVoter(4)), Err(RaftError::LearnerNotInSync));
    assert!(!cluster.node(1).status().conf.voters.contains(&4), "a refused promotion changes nothing");
    // Once it runs and catches up, the same promotion goes through.
    cluster.nodes.insert(4, RawNode::new(Config::new(4, 1), RecoveredState::default()).unwrap());
    cluster.tick_all(5);
    cluster.stabilize();
    cluster.node(1).propose_conf_change(ConfChange::AddVoter(4)).unwrap();
    cluster.stabilize();
    assert!(cluster.node(1).status().conf.voters.contains(&4));
    // The rule itself, at its edges.
    assert!(learner_in_sync(0, 0));
    assert!(learner_in_sync(90, 100));
    assert!(!learner_in_sync(89, 100));
    assert!(learner_in_sync(u64::MAX, u64::MAX), "no overflow");
}

#[test]
fn only_one_conf_change_may_be_pending() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.node(1).propose_conf_change(ConfChange::AddLearner(4)).unwrap();
    assert_eq!(cluster.node(1).propose_conf_change(ConfChange::AddLearner(5)), Err(RaftError::ConfChangePending));
}

#[test]
fn a_removed_leader_hands_over_and_steps_down() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.node(1).propose_conf_change(ConfChange::Remove(1)).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.node(1).status().role, Role::Follower);
    cluster.tick_all(30);
    let leaders = cluster.leaders();
    assert_eq!(leaders.len(), 1);
    assert_ne!(leaders[0], 1);
    assert_eq!(cluster.node(leaders[0]).status().conf.voters, [2, 3].into_iter().collect());
}

#[test]
fn a_follower_behind_the_compacted_log_gets_a_snapshot() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.isolate(3);
    for i in 0..30u8 {
        cluster.node(1).propose(Bytes::from(vec![i])).unwrap();
    }
    cluster.stabilize();
    let status = cluster.node(1).status();
    let snapshot = Snapshot {
        meta: SnapshotMeta {
            index: status.applied,
            term: cluster.node(1).term_at(status.applied).unwrap(),
            conf: status.conf.clone(),
        },
        data: Bytes::from_static(b"state"),
    };
    cluster.node(1).compact(snapshot.clone());
    cluster.heal();
    cluster.tick_all(3);
    let s3 = cluster.node(3).status();
    assert!(s3.first_index > snapshot.meta.index, "member 3 restored from the snapshot");
    assert_eq!(s3.applied, status.applied.max(s3.applied));
}

#[test]
fn conflicting_suffixes_are_replaced_by_the_new_leader() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.isolate(1);
    for i in 0..5u8 {
        cluster.node(1).propose(Bytes::from(vec![i])).unwrap();
    }
    cluster.stabilize();
    cluster.tick_all(40);
    let leader = cluster.leaders().into_iter().find(|&id| id != 1).expect("2 or 3 took over");
    cluster.node(leader).propose(Bytes::from_static(b"new")).unwrap();
    cluster.stabilize();
    cluster.heal();
    cluster.tick_all(5);
    assert_eq!(cluster.applied_data(1), vec![Bytes::from_static(b"new")]);
    assert_eq!(cluster.node(1).status().last_index, cluster.node(leader).status().last_index);
}

fn entry(index: Index, term: Term) -> Entry {
    Entry { term, index, kind: EntryKind::Normal, data: Bytes::from(vec![index as u8, term as u8]) }
}

fn append(from: NodeId, term: Term, prev: (Index, Term), entries: Vec<Entry>, commit: Index) -> Message {
    Message {
        group: 1,
        from,
        to: 3,
        term,
        body: MessageBody::Append { prev_index: prev.0, prev_term: prev.1, entries, commit },
    }
}

#[test]
fn an_acknowledgement_of_entries_truncated_before_they_were_persisted_never_leaves() {
    // Found by the simulator (seed 1160). Member 3 takes entries 1..=2 from leader 1 (term 1),
    // then, before any of it is written, leader 2 (term 2) replaces index 2.
    let cfg = Config::new(3, 1);
    let mut node =
        RawNode::new(cfg, RecoveredState { conf: ConfState::with_voters([1, 2, 3]), ..Default::default() }).unwrap();
    node.step(append(1, 1, (0, 0), vec![entry(1, 1), entry(2, 1)], 0));
    node.step(append(2, 2, (1, 1), vec![entry(2, 2)], 0));
    let ready = node.ready().unwrap();
    assert_eq!(ready.entries.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(), vec![(1, 1), (2, 2)]);
    let acks: Vec<(NodeId, Index, Term)> = ready
        .persisted_messages
        .iter()
        .filter_map(|m| match m.body {
            MessageBody::AppendResponse { reject: false, index, log_term, .. } => Some((m.to, index, log_term)),
            _ => None,
        })
        .collect();
    assert!(acks.contains(&(2, 2, 2)), "acknowledges the new entry: {acks:?}");
    assert!(
        !acks.iter().any(|&(to, index, term)| to == 1 && index == 2 && term == 1),
        "stale acknowledgement: {acks:?}"
    );
}

#[test]
fn a_leader_ignores_an_acknowledgement_of_an_entry_it_does_not_hold() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    let last = cluster.node(1).status().last_index;
    let before = cluster.node(1).raft().progress_of(2).unwrap().matched;
    cluster.node(1).step(Message {
        group: 1,
        from: 2,
        to: 1,
        term: 1,
        body: MessageBody::AppendResponse { reject: false, index: last, log_term: 7, hint_index: 0 },
    });
    assert_eq!(cluster.node(1).raft().progress_of(2).unwrap().matched, before);
}

#[test]
fn a_restarted_member_keeps_the_lease_promise_for_an_election_timeout() {
    // It may have heard from a leader just before it went down; granting a vote at once could
    // let a second leader serve lease reads while the first one's lease still runs.
    let recovered = RecoveredState {
        hard_state: HardState { term: 3, vote: 1, commit: 0 },
        conf: ConfState::with_voters([1, 2, 3]),
        ..Default::default()
    };
    let mut lease_config = Config::new(3, 1);
    lease_config.read_mode = ReadMode::LeaseBased;
    let mut node = RawNode::new(lease_config, recovered.clone()).unwrap();
    let pre_vote =
        Message { group: 1, from: 2, to: 3, term: 4, body: MessageBody::PreVote { last_index: 0, last_term: 0 } };
    // Under ReadIndex nothing relies on the promise: the restarted member grants at once.
    let mut safe = RawNode::new(Config::new(3, 1), recovered).unwrap();
    safe.step(pre_vote.clone());
    let granted = safe.ready().is_some_and(|r| {
        r.messages.iter().any(|m| matches!(m.body, MessageBody::PreVoteResponse { reject: false, .. }))
    });
    assert!(granted, "a ReadIndex member grants right after a restart");
    node.step(pre_vote.clone());
    assert!(node.ready().is_none_or(|r| r.messages.is_empty() && r.persisted_messages.is_empty()));
    for _ in 0..10 {
        node.tick();
    }
    if let Some(ready) = node.ready() {
        node.advance(ready.number());
    }
    node.step(pre_vote);
    let ready = node.ready().unwrap();
    let grants: Vec<_> = ready
        .messages
        .iter()
        .filter(|m| matches!(m.body, MessageBody::PreVoteResponse { reject: false, .. }))
        .collect();
    assert_eq!(grants.len(), 1);
}

#[test]
fn a_single_voter_leader_sends_nothing_before_its_new_term_is_durable() {
    // Found in review: voter 1 elects itself in one step; its appends to learner 2 must wait for
    // the term and vote in the same Ready, or a crash could let it lead that term again with a
    // different log while the learner keeps entries of the first attempt.
    let conf = ConfState { voters: [1].into(), learners: [2].into() };
    let mut node = RawNode::new(Config::new(1, 1), RecoveredState { conf, ..Default::default() }).unwrap();
    node.campaign();
    assert_eq!(node.status().role, Role::Leader);
    let ready = node.ready().unwrap();
    assert!(ready.hard_state.is_some_and(|hs| hs.term == 1 && hs.vote == 1));
    assert!(
        ready.messages.iter().all(|m| !matches!(m.body, MessageBody::Append { .. })),
        "appends left before the term was durable: {:?}",
        ready.messages
    );
    assert!(node.take_immediate_messages().is_empty());
    // They go out with the Ready, once it is durable.
    assert!(ready.persisted_messages.iter().any(|m| m.to == 2 && matches!(m.body, MessageBody::Append { .. })));
    node.advance(ready.number());
}

#[test]
fn followers_that_see_their_leader_go_elect_a_new_one_within_a_few_ticks() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    // Past the restart window in which members keep refusing votes anyway.
    cluster.tick_all(12);
    cluster.leader_dies_and_followers_are_told(1, &[2, 3]);
    cluster.tick_only(&[2, 3], 4);
    let leaders: Vec<NodeId> = cluster.leaders().into_iter().filter(|&id| id != 1).collect();
    assert_eq!(leaders.len(), 1, "a new leader within 4 ticks, not an election timeout (10+)");
}

#[test]
fn a_false_report_of_a_lost_leader_disrupts_nothing() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    // Only member 2 thinks the leader is gone (its connection was reset); 3 still hears it.
    cluster.tick_all(12);
    cluster.node(2).report_peer_lost(1);
    cluster.tick_all(6);
    assert_eq!(cluster.leaders(), vec![1]);
    assert_eq!(cluster.node(1).status().hard_state.term, 1, "pre-vote kept the term");
    assert_eq!(cluster.node(2).status().leader, 1, "member 2 follows the leader again");
}

#[test]
fn under_lease_reads_a_lost_connection_does_not_shorten_the_wait() {
    let mut cluster = Cluster::with_config(&[1, 2, 3], |cfg| cfg.read_mode = ReadMode::LeaseBased);
    cluster.elect(1);
    cluster.tick_all(12);
    cluster.leader_dies_and_followers_are_told(1, &[2, 3]);
    cluster.tick_only(&[2, 3], 4);
    assert!(cluster.leaders().iter().all(|&id| id == 1), "the lease promise holds for a full timeout");
}

#[test]
fn a_suspecting_follower_is_elected_at_once_by_followers_that_doubt_the_leader() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.tick_all(12);
    cluster.isolate(1); // hung: no word from it, no closed connection either
    cluster.node(3).report_leader_doubted(1);
    assert!(cluster.node(2).report_leader_suspected(1), "a follower of 1 campaigns");
    cluster.stabilize();
    assert_eq!(cluster.leaders().into_iter().filter(|&id| id != 1).collect::<Vec<_>>(), vec![2], "no tick needed");
}

#[test]
fn a_suspicion_that_nobody_shares_costs_a_pre_vote_and_nothing_else() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.tick_all(12);
    // Member 3 still hears the leader and does not doubt it: leader stickiness refuses.
    assert!(cluster.node(2).report_leader_suspected(1));
    cluster.stabilize();
    cluster.tick_all(3);
    assert_eq!(cluster.leaders(), vec![1]);
    assert_eq!(cluster.node(1).status().hard_state.term, 1, "pre-vote kept the term");
    assert_eq!(cluster.node(2).status().leader, 1, "member 2 follows the leader again");
    // A doubt ends with the next word from the leader: a later lone suspicion fails the same way.
    cluster.node(3).report_leader_doubted(1);
    cluster.tick_all(2);
    assert!(cluster.node(2).report_leader_suspected(1));
    cluster.stabilize();
    assert_eq!(cluster.leaders(), vec![1]);
    assert_eq!(cluster.node(1).status().hard_state.term, 1);
}

#[test]
fn only_a_follower_of_that_leader_acts_on_a_suspicion_and_never_under_lease_reads() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.tick_all(12);
    assert!(!cluster.node(1).report_leader_suspected(1), "the leader itself");
    assert!(!cluster.node(2).report_leader_suspected(3), "not its leader");
    let mut leased = Cluster::with_config(&[1, 2, 3], |cfg| cfg.read_mode = ReadMode::LeaseBased);
    leased.elect(1);
    leased.tick_all(12);
    leased.isolate(1);
    leased.node(3).report_leader_doubted(1);
    assert!(!leased.node(2).report_leader_suspected(1), "a lease relies on the full timeout");
    leased.tick_only(&[2, 3], 4);
    assert!(leased.leaders().iter().all(|&id| id == 1));
}

#[test]
fn two_followers_campaigning_at_the_same_instant_elect_one_leader_without_a_split() {
    for (first, second) in [(2, 3), (3, 2)] {
        let mut cluster = Cluster::new(&[1, 2, 3]);
        cluster.elect(1);
        cluster.tick_all(12);
        cluster.leader_dies_and_followers_are_told(1, &[2, 3]);
        // Both pre-campaign before either hears from the other.
        cluster.node(first).campaign();
        cluster.node(second).campaign();
        cluster.stabilize();
        assert_eq!(cluster.leaders().into_iter().filter(|&id| id != 1).collect::<Vec<_>>(), vec![3], "the higher id");
        assert_eq!(cluster.node(3).status().hard_state.term, 2, "one term, no split");
    }
}

#[test]
fn a_member_learns_what_is_committed_from_a_refused_vote() {
    // Found by the simulator (seed 10028156). Leader 1 of {1, 2, 3, 4} removes itself at index r
    // and appends one more entry. Member 3 gets r but never hears it committed; member 4 gets
    // everything, then its disk dies; member 2 was down. Member 3 still counts the old voters, so
    // it needs 1's vote, and 1 — no longer a voter, so it cannot campaign — refuses it for its
    // longer log. A quorum of both configurations is alive, yet nobody could lead, for ever.
    let mut cluster = Cluster::new(&[1, 2, 3, 4]);
    cluster.elect(1);
    cluster.isolate(2);
    cluster.cut.insert((3, 4));
    cluster.cut.insert((4, 3));
    let removal = cluster.node(1).propose_conf_change(ConfChange::Remove(1)).unwrap();
    cluster.node(1).propose(Bytes::from_static(b"after the removal")).unwrap();
    // Member 3 takes both entries' first delivery, then hears nothing more from 1.
    let ready = cluster.node(1).ready().unwrap();
    let (to_3, others): (Vec<Message>, Vec<Message>) =
        ready.messages.iter().chain(&ready.persisted_messages).cloned().partition(|m| m.to == 3);
    cluster.node(1).advance(ready.number());
    for msg in others.into_iter().filter(|m| m.to == 4) {
        cluster.node(4).step(msg);
    }
    let first = to_3.into_iter().find(|m| matches!(&m.body, MessageBody::Append { entries, .. } if entries.first().is_some_and(|e| e.index == removal))).expect("an append carrying the removal");
    let MessageBody::Append { prev_index, prev_term, entries, commit } = first.body else { unreachable!() };
    let only_removal: Vec<Entry> = entries.into_iter().filter(|e| e.index == removal).collect();
    cluster
        .node(3)
        .step(Message { body: MessageBody::Append { prev_index, prev_term, entries: only_removal, commit }, ..first });
    cluster.cut.insert((1, 3));
    cluster.stabilize();
    assert_eq!(cluster.node(1).status().conf.voters, [2, 3, 4].into_iter().collect(), "1 applied its removal");
    assert!(cluster.node(3).status().hard_state.commit < removal, "3 never heard the removal committed");
    assert!(cluster.node(1).status().last_index > cluster.node(3).status().last_index);
    // Member 4's disk dies; member 2 comes back.
    cluster.nodes.remove(&4);
    cluster.heal();
    cluster.tick_only(&[1, 2, 3], 60);
    let leaders = cluster.leaders();
    assert_eq!(leaders, vec![3], "3 leads the remaining voters");
    assert_eq!(cluster.node(3).status().conf.voters, [2, 3, 4].into_iter().collect());
    cluster.node(3).propose(Bytes::from_static(b"written after")).unwrap();
    cluster.stabilize();
    assert!(cluster.applied_data(2).contains(&Bytes::from_static(b"written after")));
}

#[test]
fn a_member_does_not_campaign_under_a_membership_it_has_not_applied() {
    // Member 1 restarts knowing that AddVoter(4) is committed but not yet applied: its voters are
    // still {1, 2, 3}. Campaigning now would count a quorum of 2 where {1, 2, 3, 4} needs 3
    // (etcd-io/raft's hasUnappliedConfChanges guard).
    let added = Entry { term: 1, index: 1, kind: EntryKind::ConfChange, data: ConfChange::AddVoter(4).encode() };
    let recovered = RecoveredState {
        hard_state: HardState { term: 1, vote: 0, commit: 1 },
        conf: ConfState::with_voters([1, 2, 3]),
        entries: vec![added],
        ..Default::default()
    };
    let mut node = RawNode::new(Config::new(1, 1), recovered).unwrap();
    node.campaign();
    assert_eq!(node.status().role, Role::Follower, "no campaign while the committed AddVoter(4) is unapplied");
    let ready = node.ready().expect("the committed conf change is handed out");
    assert!(ready
        .messages
        .iter()
        .chain(&ready.persisted_messages)
        .all(|m| !matches!(m.body, MessageBody::PreVote { .. } | MessageBody::Vote { .. })));
    assert_eq!(ready.committed_entries.len(), 1);
    node.advance(ready.number());
    assert_eq!(node.status().conf.voters, [1, 2, 3, 4].into_iter().collect());
    node.campaign();
    assert_eq!(node.status().role, Role::PreCandidate);
    let ready = node.ready().unwrap();
    let asked: BTreeSet<NodeId> = ready
        .messages
        .iter()
        .chain(&ready.persisted_messages)
        .filter(|m| matches!(m.body, MessageBody::PreVote { .. }))
        .map(|m| m.to)
        .collect();
    assert_eq!(asked, [2, 3, 4].into_iter().collect(), "the campaign counts the applied membership");
}
