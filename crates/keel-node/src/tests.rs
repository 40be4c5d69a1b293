//! The node's snapshot policy, on one single-voter group driven by hand (the simulator covers
//! the same code under faults; these pin down what it must produce).

use bytes::Bytes;
use keel_raft::{ConfChange, ConfState, Config, GroupId, Index, NodeId, RecoveredState, Role, Snapshot};

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
    fn snapshot(&mut self, _: Index) -> Result<Bytes, String> {
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

/// Three members with leader detection, driven in steps of [`STEP_US`] on a shared clock: each
/// ticks every `TICK_MS` (the heartbeat interval) and runs detection every 5 ms, messages are
/// delivered at once, writes are durable at once. `hung` members neither run nor receive.
struct Trio {
    nodes: Vec<Node<Counter>>,
    now_us: u64,
    hung: Vec<NodeId>,
    /// How long each member's writes take to become durable (0: at once).
    write_us: [u64; 3],
    /// Writes in flight: (member, write id, durable at).
    writing: Vec<(NodeId, u64, u64)>,
    /// The leader takes a proposal every this many steps (0: no load).
    propose_every_steps: u64,
    next_request: u64,
}

const TICK_MS: u64 = 10;
/// Fine enough that two members rarely act in the same step by chance (jitter spans 5 ms).
const STEP_US: u64 = 100;

impl Trio {
    fn new() -> Trio {
        Trio::with_config(|_| {})
    }

    fn with_config(adjust: impl Fn(&mut NodeConfig)) -> Trio {
        let voters = [1, 2, 3];
        let nodes = voters
            .iter()
            .map(|&id| {
                let mut cfg = NodeConfig::new(id);
                cfg.detection = Some(DetectionConfig::for_heartbeat_interval(TICK_MS * 1_000));
                adjust(&mut cfg);
                let mut node = Node::new(cfg);
                let (hard_state, entries) = bootstrap(&voters);
                let state = RecoveredState { hard_state, entries, ..Default::default() };
                let machine = Counter { applied: 0, durable: None, conf_contexts: Vec::new() };
                node.add_group(Config::new(id, GROUP), state, machine).expect("group");
                node
            })
            .collect();
        Trio {
            nodes,
            now_us: 0,
            hung: Vec::new(),
            write_us: [0; 3],
            writing: Vec::new(),
            propose_every_steps: 0,
            next_request: 1,
        }
    }

    fn running(&self, id: NodeId) -> bool {
        !self.hung.contains(&id)
    }

    fn step(&mut self) {
        self.now_us += STEP_US;
        let tick = self.now_us.is_multiple_of(TICK_MS * 1_000);
        let mut messages = Vec::new();
        for node in self.nodes.iter_mut().filter(|n| !self.hung.contains(&n.id())) {
            node.set_clock(self.now_us);
            if tick {
                node.tick();
            }
            // A busy host gets round to detection late: each member every 5 ms, out of step
            // with the others, so one may be overdue when another's campaign reaches it.
            if (self.now_us / STEP_US + node.id() * 17).is_multiple_of(50) {
                node.detect();
            }
        }
        if self.propose_every_steps > 0 && (self.now_us / STEP_US).is_multiple_of(self.propose_every_steps) {
            if let Some(&leader) = self.leaders().first() {
                let request = self.next_request;
                self.next_request += 1;
                let _ = self.nodes[leader as usize - 1].propose(GROUP, request, Bytes::from_static(b"x"));
            }
        }
        let now = self.now_us;
        for (id, write, _) in self.writing.extract_if(.., |&mut (_, _, at)| at <= now) {
            messages.extend(self.nodes[id as usize - 1].on_write_durable(write));
        }
        for _ in 0..100 {
            for node in self.nodes.iter_mut().filter(|n| !self.hung.contains(&n.id())) {
                let out = node.poll();
                messages.extend(out.messages);
                if let Some(write) = out.write {
                    let delay = self.write_us[node.id() as usize - 1];
                    if delay == 0 {
                        messages.extend(node.on_write_durable(write.id));
                    } else {
                        self.writing.push((node.id(), write.id, now + delay));
                    }
                }
            }
            if messages.is_empty() {
                return;
            }
            for msg in messages.drain(..) {
                if self.running(msg.from) && self.running(msg.to) {
                    self.nodes[msg.to as usize - 1].step(msg);
                }
            }
        }
        panic!("the members never went quiet");
    }

    fn run_ms(&mut self, ms: u64) {
        for _ in 0..ms * 1_000 / STEP_US {
            self.step();
        }
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| self.running(n.id()) && n.status(GROUP).is_some_and(|s| s.role == Role::Leader))
            .map(|n| n.id())
            .collect()
    }

    fn suspicions(&self) -> u64 {
        self.nodes.iter().map(|n| n.detection_stats().suspicions).sum()
    }
}

#[test]
fn a_steady_leader_is_never_suspected() {
    let mut trio = Trio::new();
    trio.run_ms(500);
    let leaders = trio.leaders();
    assert_eq!(leaders.len(), 1);
    trio.run_ms(20_000);
    assert_eq!(trio.leaders(), leaders, "the same leader throughout");
    assert_eq!(trio.suspicions(), 0);
}

/// Twenty times over: the leader hangs (no word from it, no closed connection), the others
/// replace it, it comes back and follows. The heartbeat interval is 10 ms and the election timeout
/// 100–200 ms: suspicion at phi 8 comes about 4 intervals after the last heartbeat, plus up to half
/// an interval of jitter, and one campaign must do (two candidates in one term would split the
/// vote and wait out the election timeout).
#[test]
fn a_hung_leader_is_replaced_by_one_campaign_long_before_the_election_timeout() {
    let mut trio = Trio::new();
    trio.run_ms(2_000);
    for trial in 0..20 {
        let old = trio.leaders()[0];
        let suspicions = trio.suspicions();
        trio.hung.push(old);
        let hung_at = trio.now_us;
        while trio.leaders().is_empty() {
            trio.step();
            assert!(trio.now_us - hung_at < 100_000, "trial {trial}: no leader 100 ms after the hang");
        }
        let took_ms = (trio.now_us - hung_at) / 1_000;
        assert!(took_ms <= 60, "trial {trial}: a new leader only after {took_ms} ms");
        assert_eq!(trio.suspicions(), suspicions + 1, "trial {trial}: the first to suspect won alone");
        trio.hung.clear();
        trio.run_ms(300);
        assert_eq!(trio.leaders().len(), 1, "trial {trial}: the old leader follows again");
    }
}

/// A leader's disk turns 20 times slower under a steady write load (1 ms writes become 20 ms;
/// heartbeats stay on time, so raft alone would keep it). Fail-slow detection flags it within
/// a few one-second windows, it hands leadership to a follower, and while it stays slow it is
/// not elected again; once its disk recovers the flag clears.
#[test]
fn a_leader_whose_disk_turns_slow_hands_over_and_is_not_elected_while_slow() {
    let mut trio = Trio::with_config(|cfg| cfg.health = Some(HealthConfig::default_thresholds()));
    trio.write_us = [1_000; 3];
    trio.propose_every_steps = 10;
    trio.run_ms(15_000);
    let leaders = trio.leaders();
    assert_eq!(leaders.len(), 1);
    let slow = leaders[0];
    let flags = |trio: &Trio, id: NodeId| trio.nodes[id as usize - 1].health_stats().expect("on").disk.flags;
    assert!((1..=3).all(|id| flags(&trio, id) == 0), "a steady disk is never flagged");
    trio.write_us[slow as usize - 1] = 20_000;
    let slowed_at = trio.now_us;
    while trio.leaders() == [slow] {
        trio.step();
        assert!(trio.now_us - slowed_at < 8_000_000, "still leading 8 s after its disk slowed");
    }
    let moved_ms = (trio.now_us - slowed_at) / 1_000;
    assert!(moved_ms <= 5_000, "leadership moved only after {moved_ms} ms");
    let stats = trio.nodes[slow as usize - 1].health_stats().expect("on");
    assert!(stats.disk.slow && stats.hand_offs == 1, "{stats:?}");
    for _ in 0..(10_000_000 / STEP_US) {
        trio.step();
        assert!(!trio.leaders().contains(&slow), "the slow member led again");
    }
    // The healthy leader hangs, again and again: of the two left, the healthy one takes over.
    for trial in 0..5 {
        let healthy = trio.leaders()[0];
        trio.hung.push(healthy);
        let hung_at = trio.now_us;
        while trio.leaders().is_empty() {
            trio.step();
            assert!(trio.now_us - hung_at < 2_000_000, "trial {trial}: nobody took over");
        }
        assert!(!trio.leaders().contains(&slow), "trial {trial}: the slow member was elected");
        trio.hung.clear();
        trio.run_ms(1_000);
    }
    assert_eq!(trio.leaders().len(), 1, "the others keep a leader");
    trio.write_us[slow as usize - 1] = 1_000;
    trio.run_ms(15_000);
    let stats = trio.nodes[slow as usize - 1].health_stats().expect("on");
    assert!(!stats.disk.slow, "cleared once the disk recovered: {stats:?}");
}
