//! The node's snapshot policy, on one single-voter group driven by hand (the simulator covers
//! the same code under faults; these pin down what it must produce).

use bytes::Bytes;
use keel_raft::{ConfChange, ConfState, Config, GroupId, Index, RecoveredState, Role, Snapshot};

use super::*;

const GROUP: GroupId = 1;

/// A machine that only remembers how far it applied; optionally "persistent" with a durable
/// index the test moves by hand.
struct Counter {
    applied: Index,
    durable: Option<Index>,
    /// The context of every membership change applied.
    conf_contexts: Vec<(Index, Bytes)>,
}

impl StateMachine for Counter {
    type Response = Index;
    type Query = ();
    type QueryResult = Index;

    fn apply(&mut self, index: Index, _: &Bytes) -> Index {
        self.applied = index;
        index
    }
    fn apply_empty(&mut self, index: Index) {
        self.applied = index;
    }
    fn apply_conf_change(&mut self, index: Index, context: &[u8]) {
        self.applied = index;
        self.conf_contexts.push((index, Bytes::copy_from_slice(context)));
    }
    fn query(&self, _: &()) -> Index {
        self.applied
    }
    fn snapshot(&self, _: Index) -> Result<Bytes, String> {
        Ok(Bytes::copy_from_slice(&self.applied.to_le_bytes()))
    }
    fn restore(&mut self, data: &Bytes) {
        self.applied = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    }
    fn durable_index(&self) -> Option<Index> {
        self.durable
    }
}

fn single_voter(durable: Option<Index>, interval: u64, catch_up: u64) -> Node<Counter> {
    let mut cfg = NodeConfig::new(1);
    cfg.snapshot_interval_entries = interval;
    cfg.catch_up_entries = catch_up;
    let mut node = Node::new(cfg);
    let (hard_state, entries) = bootstrap(&[1]);
    let state = RecoveredState { hard_state, entries, ..Default::default() };
    node.add_group(Config::new(1, GROUP), state, Counter { applied: 0, durable, conf_contexts: Vec::new() })
        .expect("group");
    node
}

/// Polls until quiet, as a host would (every write durable at once); returns the own
/// snapshots written, each with the machine's durable index when it was taken.
fn drain(node: &mut Node<Counter>) -> Vec<(Snapshot, Option<Index>)> {
    let mut snapshots = Vec::new();
    for _ in 0..1_000 {
        let durable = node.machine(GROUP).and_then(|m| m.durable);
        let out = node.poll();
        let Some(write) = out.write else { return snapshots };
        for group in &write.groups {
            if let Some(snapshot) = &group.own_snapshot {
                snapshots.push((snapshot.clone(), durable));
            }
        }
        node.on_write_durable(write.id);
    }
    panic!("the node never went quiet");
}

fn lead(node: &mut Node<Counter>) {
    for _ in 0..100 {
        node.tick();
        drain(node);
        if node.status(GROUP).is_some_and(|s| s.role == Role::Leader) {
            return;
        }
    }
    panic!("a single voter did not elect itself");
}

fn propose(node: &mut Node<Counter>, count: u64) -> Vec<(Snapshot, Option<Index>)> {
    let mut snapshots = Vec::new();
    for n in 0..count {
        node.propose(GROUP, n, Bytes::from_static(b"x")).expect("leader takes proposals");
        snapshots.extend(drain(node));
    }
    snapshots
}

#[test]
fn a_persistent_machine_compacts_behind_its_durable_index_less_the_catch_up_margin() {
    let mut node = single_voter(Some(0), 10, 5);
    lead(&mut node);
    let mut taken = Vec::new();
    for round in 0..20 {
        // The machine's durable commit trails what it applied, as the store's does.
        let applied = node.machine(GROUP).expect("group").applied;
        node.machine_mut(GROUP).expect("group").durable = Some(applied.saturating_sub(3));
        taken.extend(propose(&mut node, 10));
        assert!(round < 2 || !taken.is_empty(), "no snapshot after {round} rounds");
    }
    for (snapshot, durable) in &taken {
        let durable = durable.expect("persistent");
        assert!(snapshot.data.is_empty(), "a persistent machine's snapshot carries no data");
        assert!(snapshot.meta.index + 5 <= durable, "snapshot at {} but durable only {durable}", snapshot.meta.index);
        assert_eq!(snapshot.meta.conf, ConfState::with_voters([1]));
    }
    let indexes: Vec<Index> = taken.iter().map(|(s, _)| s.meta.index).collect();
    assert!(indexes.windows(2).all(|w| w[1] >= w[0] + 10), "one snapshot per interval: {indexes:?}");
    // The log really was compacted behind the newest one.
    let first_kept = node.raw(GROUP).expect("group").term_at(*indexes.last().expect("some") - 1);
    assert_eq!(first_kept, None, "entries behind the snapshot are gone");
}

#[test]
fn a_membership_change_reaches_the_machine_with_its_context() {
    let mut node = single_voter(None, 0, 0);
    lead(&mut node);
    let index = node.propose_conf_change(GROUP, 7, ConfChange::AddLearner(2), b"record of 2").expect("proposed");
    drain(&mut node);
    let machine = node.machine(GROUP).expect("group");
    assert_eq!(machine.conf_contexts.last(), Some(&(index, Bytes::from_static(b"record of 2"))));
    assert_eq!(machine.applied, index);
    assert!(node.status(GROUP).expect("group").conf.learners.contains(&2));
}

#[test]
fn nothing_is_compacted_while_the_machine_holds_nothing_durably() {
    let mut node = single_voter(Some(0), 10, 0);
    lead(&mut node);
    assert!(propose(&mut node, 200).is_empty(), "a snapshot beyond the durable index");
}

#[test]
fn an_in_memory_machine_snapshots_its_whole_state_at_the_applied_index() {
    let mut node = single_voter(None, 10, 5);
    lead(&mut node);
    let taken = propose(&mut node, 50);
    assert!(!taken.is_empty());
    for (snapshot, _) in taken {
        assert_eq!(snapshot.data, Bytes::copy_from_slice(&snapshot.meta.index.to_le_bytes()));
    }
}
