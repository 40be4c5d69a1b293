//! One simulated run: members running the real `keel-node` + `keel-raft` code over a simulated
//! network and disk, clients recording a history, faults drawn from the seed, invariants checked
//! after every simulated millisecond.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use keel_check::{KvInput, KvOutput, Operation};
use keel_codec::peer::PeerFrame;
use keel_host::{Compactions, Effects, Requests, Retention};
use keel_node::{Answer, DetectionConfig, Node, NodeConfig, RequestError};
use keel_raft::{
    ConfChange, Config, GroupId, Message, MessageBody, NodeId, Plant, Plants, RaftError, RecoveredState, Role,
    SplitMix64,
};

use crate::disk::DurableModel;
use crate::invariants::Invariants;
use crate::kv::KvMachine;
use crate::machine::{EtcdMachine, MachineDisk, SimMachine};
use crate::swarm::Swarm;
use keel_storage::{NodeStorage, SimDisk, StorageOptions};

/// Simulated time in milliseconds.
pub type Time = u64;

const TICK_MS: u64 = 10;
/// A run's random stream is the seed's, salted: the swarm is drawn from it first.
const RUN_SALT: u64 = 0x5EED_CAFE_F00D_D00D;
const LIVENESS_BUDGET_MS: u64 = 20_000;
const FIRST_GROUP: GroupId = 1;
/// The key the final liveness write and read use; clients never touch it.
const PROBE_KEY: u64 = 1 << 40;

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub seed: u64,
    pub plant: Option<Plant>,
    /// Print a readable trace of the run.
    pub trace: bool,
    /// Replace the seed's swarm (used by the throughput benchmark).
    pub swarm: Option<Swarm>,
}

#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub seed: u64,
    pub steps: u64,
    pub faults: u64,
    pub ops: u64,
    pub committed: u64,
    pub violations: Vec<String>,
    pub trace_hash: u64,
    /// Times a follower suspected its leader and campaigned (leader detection's churn).
    pub suspicions: u64,
    /// Times a leader handed its group over because its disk was judged slow.
    pub slow_hand_offs: u64,
    /// Voters killed for good (self-healing runs).
    pub kills: u64,
    /// Conf changes the healers proposed, and replacements a new leader adopted.
    pub healing_steps: u64,
}

#[derive(Clone, Debug)]
enum Event {
    Deliver(Message),
    /// A forwarding frame (a proposal to the leader, or its answer) on its way.
    Frame {
        from: NodeId,
        to: NodeId,
        frame: PeerFrame,
    },
    Tick {
        node: NodeId,
        incarnation: u64,
    },
    /// The write is done: fsynced when `synced` (a write that needs no fsync, see
    /// `keel_node::WriteBatch::must_sync`, is done as soon as it is written).
    FsyncDone {
        node: NodeId,
        incarnation: u64,
        write: u64,
        synced: bool,
    },
    ClientRequest {
        node: NodeId,
        request: u64,
    },
    ClientResponse {
        client: usize,
        request: u64,
        result: Result<Bytes, ClientError>,
    },
    Restart {
        node: NodeId,
    },
    /// A member whose write found the disk full tries it again.
    RetryWrite {
        node: NodeId,
        incarnation: u64,
    },
    /// The operator frees space on a member's disk.
    FreeDisk {
        node: NodeId,
    },
    Unpause {
        node: NodeId,
    },
    HealPartition,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ClientError {
    /// Definitely not executed; try the hinted leader.
    NotLeader(NodeId),
    /// Definitely not executed.
    Dropped,
    /// May or may not have been executed.
    Unknown,
}

/// An event due at `at`; `seq` keeps events of the same millisecond in scheduling order, which
/// makes the run deterministic.
struct Scheduled {
    at: Time,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The swarm `seed` drew before self-healing runs existed (see [`Swarm::draw_self_healing`]):
/// a run with it replays, step for step, what the seed ran when it found a bug.
pub fn swarm_as_found(seed: u64) -> Swarm {
    Swarm::draw(&mut SplitMix64::new(seed ^ RUN_SALT))
}

/// What a member's requests answer: the client request each one serves.
type SimEffects = Effects<u64, Bytes, Bytes>;

struct Member {
    node: Option<Node<SimMachine>>,
    /// The requests it waits on and the proposals it forwarded: keel-host's, as in the server.
    requests: Requests<u64>,
    /// The real WAL and snapshot files, on the byte-level simulated disk.
    storage: Option<NodeStorage>,
    disk: SimDisk,
    /// The oracle of what this member made durable.
    durable: DurableModel,
    /// Snapshots in the write in flight: once durable, the WAL and snapshot files behind them go.
    compactions: Compactions,
    /// What each group's persistent state machine holds durably (kept across crashes).
    machine_disks: BTreeMap<GroupId, MachineDisk>,
    incarnation: u64,
    paused: bool,
    paused_at: Time,
    /// Events that arrived while paused, replayed on resume.
    held: Vec<Event>,
    tick_ms: u64,
    groups: BTreeSet<GroupId>,
    /// Removed from every group it belonged to: no longer restarted or targeted.
    retired: bool,
    /// A bit of its durable WAL data was flipped (see `faults::rot_disk`): its next start must
    /// find the damage and refuse.
    rotted: bool,
    /// Its WAL refused to open after bit rot: it stays down, as a server would, until membership
    /// changes replace it.
    disk_dead: bool,
    /// A write the full disk refused: the member waits (paused) until it fits, as the server's
    /// driver does. Nothing after it may be written first.
    stalled: Option<keel_node::WriteBatch>,
    /// Its fsyncs take 20 times as long until then (a failing disk, a noisy neighbour).
    slow_until: Time,
    /// A spare or a member, and its zone (self-healing runs).
    role: healing::Role,
    /// Its membership protocol and healers while it runs (self-healing runs).
    gossip: Option<Box<healing::Gossip>>,
}

struct Client {
    target: NodeId,
    /// The operation in flight: (history index, request id, deadline).
    waiting: Option<(usize, u64, Time)>,
    next_op_at: Time,
}

struct Request {
    client: usize,
    group: GroupId,
    input: KvInput,
}

pub struct Cluster {
    opts: RunOptions,
    swarm: Swarm,
    rng: SplitMix64,
    now: Time,
    seq: u64,
    events: BinaryHeap<Reverse<Scheduled>>,
    members: BTreeMap<NodeId, Member>,
    next_node_id: NodeId,
    clients: Vec<Client>,
    requests: BTreeMap<u64, Request>,
    next_request: u64,
    next_value: u64,
    history: Vec<Operation<KvInput, KvOutput>>,
    /// History entries known not to have happened (refused): left out of the check.
    excluded: BTreeSet<usize>,
    /// Blocked directed links.
    blocked: BTreeSet<(NodeId, NodeId)>,
    partitioned: bool,
    faults_enabled: bool,
    invariants: Invariants,
    trace: DefaultHasher,
    faults: u64,
    /// Suspicions of members that have since crashed (the running ones count their own).
    suspicions: u64,
    /// Slow-disk hand-offs of members that have since crashed.
    slow_hand_offs: u64,
    steps: u64,
    /// Members removed from a group (proposed): never spares again, as the server's records say.
    removed_ids: BTreeSet<NodeId>,
    /// Voters killed for good.
    killed: u64,
    /// Steps the healers proposed (and adoptions).
    healing_steps: u64,
}

impl Cluster {
    pub fn new(opts: RunOptions) -> Cluster {
        let mut rng = SplitMix64::new(opts.seed ^ RUN_SALT);
        let mut drawn = Swarm::draw(&mut rng);
        drawn.draw_self_healing(opts.seed);
        drawn.draw_auth(opts.seed);
        let swarm = opts.swarm.clone().unwrap_or(drawn);
        let mut cluster = Cluster {
            swarm,
            rng,
            now: 0,
            seq: 0,
            events: BinaryHeap::new(),
            members: BTreeMap::new(),
            next_node_id: 1,
            clients: Vec::new(),
            requests: BTreeMap::new(),
            next_request: 1,
            next_value: 1,
            history: Vec::new(),
            excluded: BTreeSet::new(),
            blocked: BTreeSet::new(),
            partitioned: false,
            faults_enabled: true,
            invariants: Invariants::default(),
            trace: DefaultHasher::new(),
            faults: 0,
            suspicions: 0,
            slow_hand_offs: 0,
            steps: 0,
            removed_ids: BTreeSet::new(),
            killed: 0,
            healing_steps: 0,
            opts,
        };
        cluster.found();
        cluster
    }

    fn plants(&self) -> Plants {
        self.opts.plant.map_or(Plants::NONE, |plant| Plants::NONE.with(plant))
    }

    fn log(&self, what: std::fmt::Arguments) {
        if self.opts.trace {
            println!("{:>6}ms {what}", self.now);
        }
    }

    fn schedule(&mut self, at: Time, event: Event) {
        self.seq += 1;
        self.events.push(Reverse(Scheduled { at, seq: self.seq, event }));
    }

    fn group_ids(&self) -> Vec<GroupId> {
        (FIRST_GROUP..FIRST_GROUP + self.swarm.groups).collect()
    }

    /// Creates the founding members with the bootstrap log of every group already durable.
    fn found(&mut self) {
        let ids: Vec<NodeId> = (1..=self.swarm.founding_members).collect();
        self.next_node_id = self.swarm.founding_members + 1;
        for &id in &ids {
            let disk = SimDisk::new();
            let mut durable = DurableModel::default();
            let (mut storage, _, _) =
                NodeStorage::open(Arc::new(disk.clone()), storage_options()).expect("a fresh disk opens");
            for group in self.group_ids() {
                let founding = [keel_host::bootstrap_write(group, &ids)];
                keel_host::write(&mut storage, &founding).expect("bootstrap write");
                for part in keel_host::parts(&founding) {
                    durable.write(part.records());
                }
            }
            storage.sync().expect("bootstrap sync");
            durable.fsync();
            drop(storage);
            let groups = self.group_ids().into_iter().collect();
            let role = healing::Role { spare: false, zone: self.draw_zone() };
            self.add_member(id, disk, durable, groups, role);
        }
        self.found_spares();
        for client in 0..self.swarm.clients {
            let target = ids[self.rng.range(0, ids.len() as u64) as usize];
            self.clients.push(Client { target, waiting: None, next_op_at: client });
        }
        self.log(format_args!("founded {} members, {} groups, swarm {:?}", ids.len(), self.swarm.groups, self.swarm));
    }

    fn add_member(
        &mut self,
        id: NodeId,
        disk: SimDisk,
        durable: DurableModel,
        groups: BTreeSet<GroupId>,
        role: healing::Role,
    ) {
        let tick_ms = TICK_MS - self.swarm.tick_drift_ms + self.rng.range(0, 2 * self.swarm.tick_drift_ms + 1);
        let member = Member {
            node: None,
            requests: Requests::new(0, Plants::NONE),
            storage: None,
            disk,
            durable,
            compactions: Compactions::default(),
            machine_disks: BTreeMap::new(),
            incarnation: 0,
            paused: false,
            paused_at: 0,
            held: Vec::new(),
            tick_ms,
            groups,
            retired: false,
            rotted: false,
            disk_dead: false,
            stalled: None,
            slow_until: 0,
            role,
            gossip: None,
        };
        self.members.insert(id, member);
        self.start(id);
    }

    /// Starts (or restarts) a member from what its disk holds durably: the real WAL recovery,
    /// checked against the oracle.
    fn start(&mut self, id: NodeId) {
        let seed = self.opts.seed;
        let plants = self.plants();
        let snapshot_interval = self.swarm.snapshot_interval_entries;
        let lease_reads = self.swarm.lease_reads;
        let check_quorum = self.swarm.check_quorum;
        let campaign_soon = self.swarm.campaign_soon_at_start;
        let (persistent, durable_every, catch_up, etcd) = (
            self.swarm.persistent_machine,
            self.swarm.durable_every_flushes,
            self.swarm.catch_up_entries,
            self.swarm.etcd_machine,
        );
        let member = self.members.get_mut(&id).expect("member exists");
        if member.disk_dead {
            return;
        }
        let rotted = std::mem::take(&mut member.rotted);
        let mut opts = storage_options();
        opts.wal.plants = plants;
        let (storage, mut recovered) = match NodeStorage::open(Arc::new(member.disk.clone()), opts) {
            Ok(_) if rotted => {
                self.invariants.violation(format!(
                    "n{id} restarted as if nothing happened after a bit flipped in its durable WAL data"
                ));
                return;
            }
            Err(error) if rotted => {
                member.disk_dead = true;
                self.log(format_args!(
                    "n{id} refuses to start on its damaged WAL, as it must ({error}); it stays down"
                ));
                return;
            }
            Ok((storage, groups, _)) => (storage, groups),
            Err(error) if error.is_no_space() => {
                // As the server: it cannot start on a full disk; it is started again later.
                let retry = self.now + 100;
                self.schedule(retry, Event::Restart { node: id });
                self.log(format_args!("n{id} cannot start on a full disk; again at {retry}"));
                return;
            }
            Err(error) => {
                self.invariants.violation(format!("n{id} cannot restart: its storage does not open: {error}"));
                return;
            }
        };
        if let Err(detail) = member.durable.check_recovery(&recovered) {
            self.invariants.violation(format!("n{id} WAL recovery: {detail}"));
            return;
        }
        member.incarnation += 1;
        member.storage = Some(storage);
        // The recovered term and vote must not go back on anything durable before the crash.
        self.invariants.on_durable(id, &member.durable);
        let mut node_cfg = NodeConfig::new(id);
        node_cfg.plants = plants;
        node_cfg.snapshot_interval_entries = snapshot_interval;
        node_cfg.catch_up_entries = catch_up;
        node_cfg.request_timeout_ticks = 100;
        if self.swarm.leader_detection {
            node_cfg.detection = Some(DetectionConfig::for_heartbeat_interval(TICK_MS * 1_000));
        }
        if self.swarm.fail_slow {
            node_cfg.health = Some(sim_health_config());
        }
        let mut node = Node::new(node_cfg);
        for &group in &member.groups {
            let mut state = recovered.remove(&group).map_or_else(RecoveredState::default, |g| g.raft_state());
            let disk = member.machine_disks.entry(group).or_default();
            let mut machine = if etcd {
                SimMachine::Etcd(Box::new(EtcdMachine::open(disk.etcd.clone(), durable_every, plants)))
            } else if persistent {
                SimMachine::Kv(KvMachine::persistent(disk.kv.clone(), durable_every))
            } else {
                SimMachine::Kv(KvMachine::default())
            };
            if let Some(snapshot) = state.snapshot.as_ref().filter(|s| s.meta.index > machine.applied_index()) {
                // What the server does at start (`open_store`): a store behind the snapshot is
                // restored from it. A persistent machine's own snapshots carry no data, so its
                // durable state must never fall behind one: the log it would need is gone.
                if persistent && snapshot.data.is_empty() {
                    self.invariants.violation(format!(
                        "n{id} g{group}: the state machine holds index {} durably but the log was compacted to {}: \
                         the entries between are lost",
                        machine.applied_index(),
                        snapshot.meta.index
                    ));
                    return;
                }
                keel_node::StateMachine::restore(&mut machine, &snapshot.data);
            }
            // What the machine holds is committed: no entry of the recovered log at or below its
            // index may be one that lost (a snapshot went into the machine only once durable,
            // and that discarded such a log).
            self.invariants.check_log_below_applied(id, group, &state.entries, machine.applied_index());
            // As the server: raft hands out only what comes after the machine's durable state.
            state.applied = state.applied.max(machine.applied_index());
            let mut cfg = Config::new(id, group);
            cfg.seed = seed
                ^ id.wrapping_mul(0x9E37_79B9)
                ^ group.wrapping_mul(0x85EB_CA6B)
                ^ member.incarnation.wrapping_mul(0xC2B2_AE35);
            cfg.max_append_entries = 64;
            cfg.check_quorum = check_quorum;
            cfg.campaign_soon_at_start = campaign_soon;
            if lease_reads {
                cfg.read_mode = keel_raft::ReadMode::LeaseBased;
                // Members tick every 10 ms ± drift: the fastest may run 11/9 as fast as the
                // slowest, so the lease must give up at least 1 - 9/11 = 18 %.
                cfg.lease_drift_percent = 20;
            }
            node.add_group(cfg, state, machine).expect("valid raft config");
        }
        // Request ids double as ReadIndex ids: each incarnation starts from its own range, as the
        // server starts from the wall clock.
        member.requests = Requests::new(member.incarnation << 40, plants);
        member.node = Some(node);
        let (incarnation, tick_ms) = (member.incarnation, member.tick_ms);
        let first_tick = self.now + self.rng.range(1, tick_ms + 1);
        self.schedule(first_tick, Event::Tick { node: id, incarnation });
        self.invariants.on_start(id, incarnation);
        self.log(format_args!("n{id} started (incarnation {incarnation})"));
        self.start_gossip(id);
    }

    // ------------------------------------------------------------------ the run

    pub fn run(mut self) -> RunReport {
        let safety_end = self.swarm.safety_ms;
        while self.now < safety_end && self.invariants.violations.is_empty() {
            self.step();
        }
        if self.invariants.violations.is_empty() {
            self.liveness_phase();
        }
        if self.invariants.violations.is_empty() {
            self.check_history();
        }
        let committed = self.invariants.committed_count();
        RunReport {
            seed: self.opts.seed,
            steps: self.steps,
            faults: self.faults,
            ops: (self.history.len() - self.excluded.len()) as u64,
            committed,
            violations: self.invariants.violations.clone(),
            trace_hash: self.trace.finish(),
            suspicions: self.suspicions
                + self
                    .members
                    .values()
                    .filter_map(|m| m.node.as_ref())
                    .map(|n| n.detection_stats().suspicions)
                    .sum::<u64>(),
            slow_hand_offs: self.slow_hand_offs
                + self
                    .members
                    .values()
                    .filter_map(|m| m.node.as_ref()?.health_stats())
                    .map(|h| h.hand_offs)
                    .sum::<u64>(),
            kills: self.killed,
            healing_steps: self.healing_steps,
        }
    }

    fn step(&mut self) {
        self.steps += 1;
        // The members' clocks (a paused member's stands still): what arrives now arrives now.
        for member in self.members.values_mut().filter(|m| !m.paused) {
            if let Some(node) = member.node.as_mut() {
                node.set_clock(self.now * 1_000);
            }
        }
        while self.events.peek().is_some_and(|Reverse(next)| next.at <= self.now) {
            let Reverse(next) = self.events.pop().expect("peeked");
            self.handle(next.event);
        }
        let ids: Vec<NodeId> = self.members.keys().copied().collect();
        for id in ids {
            self.poll(id);
        }
        self.check_invariants();
        if self.faults_enabled {
            self.inject_faults();
        }
        self.drive_clients();
        self.now += 1;
    }

    fn handle(&mut self, event: Event) {
        let target = match &event {
            Event::Deliver(msg) => Some(msg.to),
            Event::Frame { to, .. } => Some(*to),
            Event::Tick { node, .. } | Event::FsyncDone { node, .. } | Event::ClientRequest { node, .. } => Some(*node),
            _ => None,
        };
        if let Some(id) = target {
            let Some(member) = self.members.get_mut(&id) else { return };
            if member.paused {
                member.held.push(event);
                return;
            }
        }
        match event {
            Event::Deliver(msg) => self.deliver(msg),
            Event::Frame { from, to, frame } => self.deliver_frame(from, to, frame),
            Event::Tick { node, incarnation } => self.tick(node, incarnation),
            Event::FsyncDone { node, incarnation, write, synced } => self.fsync_done(node, incarnation, write, synced),
            Event::ClientRequest { node, request } => self.client_request(node, request),
            Event::ClientResponse { client, request, result } => self.client_response(client, request, result),
            Event::Restart { node } => {
                if self.members.get(&node).is_some_and(|m| m.node.is_none()) {
                    self.start(node);
                }
            }
            Event::Unpause { node } => self.unpause(node),
            Event::RetryWrite { node, incarnation } => self.retry_write(node, incarnation),
            Event::FreeDisk { node } => {
                if let Some(member) = self.members.get(&node) {
                    member.disk.set_capacity(None);
                    self.log(format_args!("n{node}: disk space freed"));
                }
            }
            Event::HealPartition => {
                self.blocked.clear();
                self.partitioned = false;
                self.log(format_args!("partition healed"));
            }
        }
    }

    fn deliver(&mut self, msg: Message) {
        msg.hash(&mut self.trace);
        self.now.hash(&mut self.trace);
        if self.opts.trace {
            self.log(format_args!(
                "deliver n{}->n{} g{} t{} {:?}",
                msg.from,
                msg.to,
                msg.group,
                msg.term,
                short(&msg.body)
            ));
        }
        if let Some(node) = self.members.get_mut(&msg.to).and_then(|m| m.node.as_mut()) {
            node.step(msg);
        }
    }

    fn deliver_frame(&mut self, from: NodeId, to: NodeId, frame: PeerFrame) {
        (from, to, self.now).hash(&mut self.trace);
        std::mem::discriminant(&frame).hash(&mut self.trace);
        if self.opts.trace {
            self.log(format_args!("frame n{from}->n{to} {frame:?}"));
        }
        if let PeerFrame::Membership(bytes) = &frame {
            self.gossip_frame(from, to, bytes);
            return;
        }
        let Some(member) = self.members.get_mut(&to) else { return };
        let Some(node) = member.node.as_mut() else { return };
        let mut effects = SimEffects::default();
        member.requests.on_frame(node, from, frame, &mut effects);
        self.carry_out(to, effects);
    }

    fn tick(&mut self, id: NodeId, incarnation: u64) {
        let member = self.members.get_mut(&id).expect("ticks only for members");
        if member.incarnation != incarnation || member.node.is_none() {
            return;
        }
        let node = member.node.as_mut().expect("checked");
        node.tick();
        let mut effects = SimEffects::default();
        member.requests.tick(node, &mut effects);
        let next = self.now + member.tick_ms;
        self.schedule(next, Event::Tick { node: id, incarnation });
        self.carry_out(id, effects);
        self.tick_gossip(id);
    }

    /// What a member's requests asked for: frames onto the network, answers to the clients.
    pub(super) fn carry_out(&mut self, id: NodeId, effects: SimEffects) {
        for (to, frame) in effects.frames {
            self.send_frame(id, to, frame);
        }
        for (request, result) in effects.answers {
            self.answer(request, result);
        }
    }

    /// Frames ride the peer connection (TCP): they may be lost with it or delayed, but never
    /// duplicated.
    fn send_frame(&mut self, from: NodeId, to: NodeId, frame: PeerFrame) {
        if self.blocked.contains(&(from, to)) {
            return;
        }
        if self.swarm.drop_percent > 0 && self.rng.range(0, 100) < self.swarm.drop_percent {
            return;
        }
        let delay = self.rng.range(1, self.swarm.delay_ms_max + 1);
        self.schedule(self.now + delay, Event::Frame { from, to, frame });
    }

    fn poll(&mut self, id: NodeId) {
        let member = self.members.get_mut(&id).expect("member exists");
        if member.paused {
            return;
        }
        let Some(node) = member.node.as_mut() else { return };
        node.detect();
        let output = node.poll();
        if let Some(write) = &output.write {
            for group_write in &write.groups {
                self.invariants.on_write(id, group_write, node);
            }
        }
        if let Some(write) = output.write {
            self.write(id, write);
        }
        let applied: Vec<(GroupId, Vec<(u64, u64)>)> = {
            let member = self.members.get_mut(&id).expect("member exists");
            let node = member.node.as_mut().expect("running");
            let groups: Vec<GroupId> = member.groups.iter().copied().collect();
            groups
                .into_iter()
                .map(|g| (g, node.machine_mut(g).map_or_else(Vec::new, SimMachine::take_applied)))
                .collect()
        };
        for (group, entries) in applied {
            self.invariants.on_apply(id, group, &entries);
        }
        for msg in output.messages {
            self.send(msg);
        }
        let member = self.members.get_mut(&id).expect("member exists");
        let node = member.node.as_mut().expect("running");
        let mut effects = SimEffects::default();
        member.requests.outcomes(output.outcomes, &mut effects);
        member.requests.abandon_forwards_to_former_leaders(node, &mut effects);
        self.carry_out(id, effects);
    }

    /// Writes `write` to the member's WAL and schedules its fsync. On a full disk the WAL writes
    /// nothing, and the member stalls until the write fits (the server's driver waits the same
    /// way rather than exit).
    fn write(&mut self, id: NodeId, write: keel_node::WriteBatch) {
        let member = self.members.get_mut(&id).expect("member exists");
        let storage = member.storage.as_mut().expect("a running member has its storage");
        match keel_host::write(storage, &write.groups) {
            Ok(()) => {}
            Err(error) if error.is_no_space() => {
                member.stalled = Some(write);
                if !member.paused {
                    member.paused = true;
                    member.paused_at = self.now;
                }
                let incarnation = member.incarnation;
                let retry = self.now + self.rng.range(10, 100);
                self.schedule(retry, Event::RetryWrite { node: id, incarnation });
                self.log(format_args!("n{id}: disk full, the write waits"));
                return;
            }
            Err(error) => {
                self.invariants.violation(format!("n{id}: WAL write failed: {error}"));
                return;
            }
        }
        for part in keel_host::parts(&write.groups) {
            member.durable.write(part.records());
        }
        member.compactions.written(&write);
        let incarnation = member.incarnation;
        let slow = self.now < member.slow_until;
        let synced = write.must_sync;
        let mut delay = if synced { self.rng.range(1, self.swarm.fsync_ms_max + 1) } else { 0 };
        if slow {
            delay *= SLOW_DISK_FACTOR;
        }
        self.schedule(self.now + delay, Event::FsyncDone { node: id, incarnation, write: write.id, synced });
    }

    fn retry_write(&mut self, id: NodeId, incarnation: u64) {
        let Some(member) = self.members.get_mut(&id) else { return };
        if member.incarnation != incarnation || member.node.is_none() {
            return;
        }
        let Some(write) = member.stalled.take() else { return };
        self.write(id, write);
        if self.members[&id].stalled.is_none() {
            self.unpause(id);
        }
    }

    fn fsync_done(&mut self, id: NodeId, incarnation: u64, write: u64, synced: bool) {
        let member = self.members.get_mut(&id).expect("member exists");
        if member.incarnation != incarnation || member.node.is_none() {
            return; // crashed meanwhile: the crash decided what survived
        }
        let storage = member.storage.as_mut().expect("a running member has its storage");
        if synced {
            if let Err(error) = storage.sync() {
                self.invariants.violation(format!("n{id}: WAL sync failed: {error}"));
                return;
            }
            member.durable.fsync();
        }
        let msgs = member.node.as_mut().expect("checked").on_write_durable(write);
        // The server's order: release what the write held back, then remove obsolete files.
        if let Err(error) = member.compactions.durable(storage, Retention::MINIMAL) {
            self.invariants.violation(format!("n{id}: removing obsolete WAL segments failed: {error}"));
        }
        self.invariants.on_durable(id, &self.members[&id].durable);
        for msg in msgs {
            self.send(msg);
        }
    }

    fn send(&mut self, msg: Message) {
        if let Some(member) = self.members.get(&msg.from) {
            self.invariants.on_send(&msg, &member.durable);
        }
        if self.blocked.contains(&(msg.from, msg.to)) {
            return;
        }
        if self.swarm.drop_percent > 0 && self.rng.range(0, 100) < self.swarm.drop_percent {
            return;
        }
        if self.swarm.duplicate_percent > 0 && self.rng.range(0, 100) < self.swarm.duplicate_percent {
            let delay = self.rng.range(1, self.swarm.delay_ms_max + 1);
            self.schedule(self.now + delay, Event::Deliver(msg.clone()));
        }
        let delay = self.rng.range(1, self.swarm.delay_ms_max + 1);
        self.schedule(self.now + delay, Event::Deliver(msg));
    }

    fn check_invariants(&mut self) {
        let disks: BTreeMap<NodeId, &DurableModel> = self.members.iter().map(|(id, m)| (*id, &m.durable)).collect();
        for (&id, member) in &self.members {
            if let Some(node) = &member.node {
                self.invariants.check_node(id, member.incarnation, node, &disks);
            }
        }
    }
}

/// How much slower a slow disk's fsyncs are.
const SLOW_DISK_FACTOR: u64 = 20;

/// The server's fail-slow thresholds on the simulator's time scale: its ticks are 10 ms where
/// the server's are 100 ms, so windows and waits are a tenth as long.
fn sim_health_config() -> keel_node::HealthConfig {
    let mut cfg = keel_node::HealthConfig::default_thresholds();
    cfg.slow.window_us /= 10;
    cfg.slow.floor_us /= 5;
    cfg.slow.healthy_windows = 5;
    cfg.slow.baseline_windows = 50;
    cfg.slow.min_baseline_windows = 5;
    cfg.hand_off_interval_us /= 10;
    cfg
}

/// The WAL in small segments, so that runs roll over and remove segments often.
fn storage_options() -> StorageOptions {
    let mut opts = StorageOptions::new();
    opts.wal.segment_bytes = 16 << 10;
    opts
}

/// A compact description of a message body for traces.
fn short(body: &MessageBody) -> String {
    match body {
        MessageBody::Append { prev_index, prev_term, entries, commit } => {
            format!("Append prev=({prev_index},{prev_term}) n={} commit={commit}", entries.len())
        }
        MessageBody::InstallSnapshot { snapshot } => format!("InstallSnapshot index={}", snapshot.meta.index),
        other => format!("{other:?}"),
    }
}

mod clients;
mod faults;
mod healing;
mod liveness;
