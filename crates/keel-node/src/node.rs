use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::detect::{Detection, DetectionConfig, DetectionStats};
use crate::health::{Health, HealthConfig, HealthStats};
use keel_raft::{
    ConfChange, ConfState, Config, Entry, EntryKind, GroupId, HardState, Index, Message, MessageBody, NodeId, Plant,
    Plants, RaftError, RawNode, Ready, RecoveredState, Role, Snapshot, SnapshotMeta, Status, Term,
};

/// The replicated state machine of one group. Deterministic: the same entries in the same order
/// give the same state on every member.
pub trait StateMachine {
    /// What applying a command returns to its proposer.
    type Response: Clone + std::fmt::Debug;
    /// A read, and its answer.
    type Query: std::fmt::Debug;
    type QueryResult: std::fmt::Debug;

    /// Applies one committed command.
    fn apply(&mut self, index: Index, data: &Bytes) -> Self::Response;
    /// An entry with no command (a leader's no-op, a membership change) was applied: machines that
    /// persist their applied index advance it.
    fn apply_empty(&mut self, _index: Index) {}
    /// A membership change was applied (raft applied it to the membership itself); `context` is
    /// what its proposer sent with it (see [`Node::propose_conf_change`]), for machines that keep
    /// member records: applied here, they change in the same entry as the membership.
    fn apply_conf_change(&mut self, index: Index, _context: &[u8]) {
        self.apply_empty(index)
    }
    /// Everything applied so far has been handed out; a machine that batches its own writes may
    /// commit them now (called once per group per poll that applied something).
    fn flush(&mut self) {}
    /// Answers a read against the current (applied) state.
    fn query(&self, query: &Self::Query) -> Self::QueryResult;
    /// The whole state, for a snapshot at index `at_least`. An error skips this snapshot (the
    /// log is kept; a follower waiting for it is sent nothing and raft retries later). A
    /// machine that persists its own state ([`StateMachine::durable_index`]) is asked only
    /// when a follower needs its state; its answer may hold a newer state than `at_least` (see
    /// there), and may be a ticket the host's transport resolves (a file it streams) rather
    /// than the state itself.
    fn snapshot(&mut self, at_least: Index) -> Result<Bytes, String>;
    /// For a machine that keeps its own state on disk (etcd's backend and its consistent index):
    /// the highest applied index that state holds durably, which never goes back, not even across
    /// a crash. The log behind it is then compacted with snapshots that carry no data (as etcd's
    /// raft snapshots do): the machine itself is the checkpoint. `None` (the default) for a
    /// machine that lives in memory, whose snapshots carry its whole state.
    fn durable_index(&self) -> Option<Index> {
        None
    }
    /// An index a persistent machine needs the log kept from for now (a follower is being sent
    /// its state as of there and will need the entries after it): no snapshot goes past it.
    fn compaction_floor(&self) -> Option<Index> {
        None
    }
    /// Replaces the whole state by a snapshot's.
    fn restore(&mut self, data: &Bytes);
}

/// A host-chosen identifier of a proposal or read, echoed back in the outcome.
pub type RequestId = u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// Refused up front; nothing was proposed.
    Refused(RaftError),
    /// The proposal's log slot was taken by another leader's entry: it was not applied.
    Dropped,
    /// No outcome within the deadline; the proposal may or may not be applied.
    Timeout,
}

/// The answer to a proposal or a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<R, Q> {
    /// A command was applied; the machine's response.
    Applied(R),
    /// A membership change was applied.
    Membership,
    /// A read was served.
    Read(Q),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome<R, Q> {
    pub group: GroupId,
    pub id: RequestId,
    pub result: Result<Answer<R, Q>, RequestError>,
}

/// The outcome type of a node whose machine is `S`.
pub type OutcomeOf<S> = Outcome<<S as StateMachine>::Response, <S as StateMachine>::QueryResult>;

/// What one group asks to be made durable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupWrite {
    pub group: GroupId,
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader: it replaces the whole log and state.
    pub installed_snapshot: Option<Snapshot>,
    /// A snapshot this member took of its own applied state: the log up to its index may go.
    pub own_snapshot: Option<Snapshot>,
    /// Entries to append; an entry at an index the store already holds replaces it and all after.
    pub entries: Vec<Entry>,
}

/// One durable write covering every group: the host writes it, fsyncs once if `must_sync`, then
/// calls [`Node::on_write_durable`] with `id`.
///
/// A write without `must_sync` carries only a hard state whose commit index moved (etcd-io/raft's
/// `MustSync`): losing it in a crash loses nothing promised, since a restarted member learns the
/// commit index again from its leader (and never below what its machine durably applied, see
/// `RaftLog::recovered`). Skipping its fsync saves one of the two a single write cost each member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteBatch {
    pub id: u64,
    pub groups: Vec<GroupWrite>,
    pub must_sync: bool,
}

/// Everything a poll produced.
#[derive(Debug)]
pub struct Output<R, Q> {
    /// Send now.
    pub messages: Vec<Message>,
    /// Persist, then report durable. At most one is outstanding.
    pub write: Option<WriteBatch>,
    /// Finished proposals and reads.
    pub outcomes: Vec<Outcome<R, Q>>,
}

impl<R, Q> Default for Output<R, Q> {
    fn default() -> Self {
        Output { messages: Vec::new(), write: None, outcomes: Vec::new() }
    }
}

/// The poll output type of a node whose machine is `S`.
pub type OutputOf<S> = Output<<S as StateMachine>::Response, <S as StateMachine>::QueryResult>;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Take a snapshot (and compact the log) every this many applied entries.
    pub snapshot_interval_entries: u64,
    /// Entries a persistent machine's snapshot keeps behind it in the log (etcd keeps 5,000), so
    /// that a follower that fell briefly behind catches up from the log, not a whole snapshot.
    pub catch_up_entries: u64,
    /// Ticks before an unanswered proposal or read is given up as [`RequestError::Timeout`].
    pub request_timeout_ticks: u64,
    /// Most proposals and reads waiting per group.
    pub max_pending_requests: usize,
    /// Phi-accrual detection of silent leaders (see [`DetectionConfig`]); `None` leaves it to
    /// raft's election timeout (and the host's closed connections).
    pub detection: Option<DetectionConfig>,
    /// Fail-slow handling of this member's own disk (see [`HealthConfig`]); `None` leaves a
    /// slow member in place.
    pub health: Option<HealthConfig>,
    pub plants: Plants,
}

impl NodeConfig {
    pub fn new(id: NodeId) -> NodeConfig {
        NodeConfig {
            id,
            snapshot_interval_entries: 10_000,
            catch_up_entries: 5_000,
            request_timeout_ticks: 50,
            max_pending_requests: 100_000,
            detection: None,
            health: None,
            plants: Plants::NONE,
        }
    }
}

struct PendingProposal {
    id: RequestId,
    term: Term,
    deadline: u64,
}

struct PendingRead<Q> {
    id: RequestId,
    query: Q,
    /// Known once the leader confirmed it; the read runs when this index is applied.
    read_index: Option<Index>,
    deadline: u64,
}

struct Group<S: StateMachine> {
    raw: RawNode,
    machine: S,
    /// Proposals by (log index, term): a member that led two terms may have proposals at the
    /// same index in both, of which at most one can be applied.
    proposals: BTreeMap<(Index, Term), PendingProposal>,
    reads: VecDeque<PendingRead<S::Query>>,
    /// Applied index and term, for snapshots.
    applied: Index,
    applied_term: Term,
    last_snapshot_index: Index,
    /// Ready handed out and not yet durable.
    ready_in_flight: Option<u64>,
    /// Own snapshot written in the batch in flight; the log is compacted behind it when durable.
    snapshot_in_flight: Option<Snapshot>,
    /// Snapshot from the leader written in the batch in flight; installed when durable.
    snapshot_to_install: Option<Snapshot>,
    role: Role,
    /// The membership as of `applied`, and as of each membership change applied since the last
    /// snapshot (keyed by the index it took effect at): a persistent machine's snapshot is taken
    /// behind the applied index and must carry the membership *at its own index*.
    confs: BTreeMap<Index, ConfState>,
}

/// The initial log of a group created with `voters`: the same on every founding member, written
/// before the first start, so that a member added later learns the founding membership by
/// replication like any other change (as etcd does).
pub fn bootstrap(voters: &[NodeId]) -> (HardState, Vec<Entry>) {
    let entries: Vec<Entry> = voters
        .iter()
        .enumerate()
        .map(|(i, &id)| Entry {
            term: 1,
            index: i as u64 + 1,
            kind: EntryKind::ConfChange,
            data: ConfChange::AddVoter(id).encode(),
        })
        .collect();
    let hard_state = HardState { term: 1, vote: 0, commit: entries.len() as u64 };
    (hard_state, entries)
}

pub struct Node<S: StateMachine> {
    cfg: NodeConfig,
    groups: BTreeMap<GroupId, Group<S>>,
    ticks: u64,
    next_write_id: u64,
    /// The write in flight and the messages it holds back until it is durable.
    write_in_flight: Option<(u64, Vec<Message>)>,
    outcomes: Vec<OutcomeOf<S>>,
    detection: Option<Detection>,
    health: Option<Health>,
    /// The host's clock (see [`Node::set_clock`]), microseconds.
    now_us: u64,
}

impl<S: StateMachine> Node<S> {
    pub fn new(cfg: NodeConfig) -> Node<S> {
        let detection = cfg.detection.map(|detection| {
            let seed = cfg.id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD37E_C7ED;
            Detection::new(detection, seed, cfg.plants.is(Plant::SuspectAlways))
        });
        let health = cfg.health.map(|health| Health::new(health, cfg.plants.is(Plant::SlowAlways)));
        Node {
            cfg,
            groups: BTreeMap::new(),
            ticks: 0,
            next_write_id: 1,
            write_in_flight: None,
            outcomes: Vec::new(),
            detection,
            health,
            now_us: 0,
        }
    }

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// Adds a group recovered from durable state. `machine` must hold the state at
    /// `recovered.applied`: the snapshot's state for an in-memory machine, or the durable applied
    /// index of a machine that persists it (which must not exceed the recovered commit index).
    pub fn add_group(&mut self, raft: Config, recovered: RecoveredState, machine: S) -> Result<(), RaftError> {
        assert_eq!(raft.id, self.cfg.id, "group member id must be the node id");
        let group = raft.group;
        let last_snapshot_index = recovered.snapshot.as_ref().map_or(0, |s| s.meta.index);
        let mut raft = raft;
        raft.plants = self.cfg.plants;
        let raw = RawNode::new(raft, recovered)?;
        // A machine that persists its applied index may be ahead of the snapshot: raft hands out
        // only what comes after it, so a restart replays just the tail of the log.
        let applied = raw.status().applied;
        let applied_term = raw.term_at(applied).unwrap_or(0);
        let role = raw.status().role;
        let confs = BTreeMap::from([(applied, raw.status().conf)]);
        self.groups.insert(
            group,
            Group {
                raw,
                machine,
                proposals: BTreeMap::new(),
                reads: VecDeque::new(),
                applied,
                applied_term,
                last_snapshot_index,
                ready_in_flight: None,
                snapshot_in_flight: None,
                snapshot_to_install: None,
                role,
                confs,
            },
        );
        Ok(())
    }

    pub fn group_ids(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups.keys().copied()
    }

    pub fn status(&self, group: GroupId) -> Option<Status> {
        self.groups.get(&group).map(|g| g.raw.status())
    }

    pub fn raw(&self, group: GroupId) -> Option<&RawNode> {
        self.groups.get(&group).map(|g| &g.raw)
    }

    pub fn machine(&self, group: GroupId) -> Option<&S> {
        self.groups.get(&group).map(|g| &g.machine)
    }

    pub fn machine_mut(&mut self, group: GroupId) -> Option<&mut S> {
        self.groups.get_mut(&group).map(|g| &mut g.machine)
    }

    /// The planted bugs this node was configured with (the host's own plants read them too).
    pub fn plants(&self) -> Plants {
        self.cfg.plants
    }

    pub fn tick(&mut self) {
        self.ticks += 1;
        let now = self.ticks;
        for (&group_id, group) in self.groups.iter_mut() {
            group.raw.tick();
            expire_requests(group_id, group, now, &mut self.outcomes);
        }
    }

    pub fn step(&mut self, msg: Message) {
        let Some(group) = self.groups.get_mut(&msg.group) else { return };
        if let Some(health) = self.health.as_mut() {
            health.received(&msg, self.now_us);
        }
        let Some(detection) = self.detection.as_mut() else {
            group.raw.step(msg);
            return;
        };
        if matches!(msg.body, MessageBody::PreVote { .. } | MessageBody::Vote { .. }) {
            // A campaign is judged on how long this member has not heard the leader, up to now.
            detection.check(msg.group, &mut group.raw, false);
        }
        let (group_id, from, body) = (msg.group, msg.from, detection_kind(&msg.body));
        group.raw.step(msg);
        if let Some(periodic) = body {
            detection.heard(group_id, &group.raw, from, periodic);
        }
    }

    /// The host's monotonic clock, in microseconds: the time of the inputs that follow (see
    /// [`Node::detect`]). Never goes back; a value lower than the last is ignored. With
    /// fail-slow handling on, the host also sets it as it begins a write the poll handed out and
    /// before it reports the write durable: the node times its own writes by it.
    pub fn set_clock(&mut self, now_us: u64) {
        self.now_us = self.now_us.max(now_us);
        if let Some(health) = self.health.as_mut() {
            health.clock(self.now_us);
        }
        if let Some(detection) = self.detection.as_mut() {
            detection.set_clock(now_us);
        }
    }

    /// Doubts and suspects silent leaders as of the clock (see [`DetectionConfig`]). The host
    /// calls it after each batch of inputs, and by [`Node::next_detection_at`] at the latest.
    pub fn detect(&mut self) {
        if let Some(health) = self.health.as_mut() {
            for (&group_id, group) in self.groups.iter_mut() {
                health.check(group_id, &mut group.raw, self.now_us);
            }
        }
        let Some(detection) = self.detection.as_mut() else { return };
        for (&group_id, group) in self.groups.iter_mut() {
            detection.check(group_id, &mut group.raw, true);
        }
    }

    /// What the fail-slow handling knows and did (see [`HealthConfig`]); `None` when it is off.
    pub fn health_stats(&self) -> Option<HealthStats> {
        self.health.as_ref().map(Health::stats)
    }

    /// The smoothed round trip of an append to `member` and back (microseconds), as timed by
    /// the fail-slow handling.
    pub fn append_round_trip_us(&self, member: NodeId) -> Option<u64> {
        self.health.as_ref().and_then(|health| health.rtt_us(member))
    }

    /// When [`Node::detect`] may next find something to do, on the host's clock; `None` when
    /// no follower group is watching a leader.
    pub fn next_detection_at(&self) -> Option<u64> {
        self.detection.as_ref().and_then(Detection::next_deadline)
    }

    /// What the leader detection did so far.
    pub fn detection_stats(&self) -> DetectionStats {
        self.detection.as_ref().map(Detection::stats).unwrap_or_default()
    }

    pub fn propose(&mut self, group_id: GroupId, id: RequestId, data: Bytes) -> Result<Index, RaftError> {
        let deadline = self.ticks + self.cfg.request_timeout_ticks;
        let max_pending = self.cfg.max_pending_requests;
        let group = self.groups.get_mut(&group_id).ok_or(RaftError::InvalidConfig("unknown group"))?;
        if group.proposals.len() >= max_pending {
            return Err(RaftError::Busy("proposals"));
        }
        let index = group.raw.propose(data)?;
        let term = group.raw.status().hard_state.term;
        group.proposals.insert((index, term), PendingProposal { id, term, deadline });
        Ok(index)
    }

    /// Waits for the outcome of a proposal another member made for us: a follower forwarded a
    /// client's command to the leader, which put it at `(index, term)`. The outcome comes from
    /// this member's own apply (every replica computes the same response), or `Dropped` if
    /// another entry ends up at `index`. Refused when `index` is already applied here: that
    /// entry's response is gone, so the caller must report the outcome as unknown.
    pub fn track(&mut self, group_id: GroupId, id: RequestId, index: Index, term: Term) -> Result<(), RaftError> {
        let deadline = self.ticks + self.cfg.request_timeout_ticks;
        let max_pending = self.cfg.max_pending_requests;
        let group = self.groups.get_mut(&group_id).ok_or(RaftError::InvalidConfig("unknown group"))?;
        if index <= group.applied {
            return Err(RaftError::InvalidConfig("entry already applied"));
        }
        if group.proposals.len() >= max_pending {
            return Err(RaftError::Busy("proposals"));
        }
        group.proposals.insert((index, term), PendingProposal { id, term, deadline });
        Ok(())
    }

    pub fn propose_conf_change(
        &mut self,
        group_id: GroupId,
        id: RequestId,
        change: ConfChange,
        context: &[u8],
    ) -> Result<Index, RaftError> {
        let deadline = self.ticks + self.cfg.request_timeout_ticks;
        let group = self.groups.get_mut(&group_id).ok_or(RaftError::InvalidConfig("unknown group"))?;
        let index = group.raw.propose_conf_change_with(change, context)?;
        let term = group.raw.status().hard_state.term;
        group.proposals.insert((index, term), PendingProposal { id, term, deadline });
        Ok(index)
    }

    /// A linearizable read of `query`, answered once the group confirmed leadership and applied
    /// up to the read index.
    pub fn read(&mut self, group_id: GroupId, id: RequestId, query: S::Query) -> Result<(), RaftError> {
        let deadline = self.ticks + self.cfg.request_timeout_ticks;
        let max_pending = self.cfg.max_pending_requests;
        let group = self.groups.get_mut(&group_id).ok_or(RaftError::InvalidConfig("unknown group"))?;
        let status = group.raw.status();
        if status.role != Role::Leader && status.leader == keel_raft::NO_NODE {
            return Err(RaftError::NotLeader { leader: keel_raft::NO_NODE });
        }
        if group.reads.len() >= max_pending {
            return Err(RaftError::Busy("reads"));
        }
        group.reads.push_back(PendingRead { id, query, read_index: None, deadline });
        group.raw.read_index(id);
        Ok(())
    }

    /// The host saw its connection from `peer` close: every group whose leader it was campaigns
    /// soon rather than after a full election timeout.
    pub fn report_peer_lost(&mut self, peer: NodeId) {
        for group in self.groups.values_mut() {
            group.raw.report_peer_lost(peer);
        }
    }

    pub fn transfer_leader(&mut self, group_id: GroupId, to: NodeId) -> Result<(), RaftError> {
        let group = self.groups.get_mut(&group_id).ok_or(RaftError::InvalidConfig("unknown group"))?;
        group.raw.transfer_leader(to)
    }

    /// A leader about to stop hands each group it leads to its most caught-up voter (as etcd
    /// does on a graceful stop), so the group elects no one after an election timeout but at
    /// once. Returns the groups handed and to whom.
    pub fn hand_off_leadership(&mut self) -> Vec<(GroupId, NodeId)> {
        let mut handed = Vec::new();
        for (&group_id, group) in self.groups.iter_mut() {
            if let Some(to) = group.raw.transfer_target() {
                if group.raw.transfer_leader(to).is_ok() {
                    handed.push((group_id, to));
                }
            }
        }
        handed
    }

    /// Whether this member leads any group.
    pub fn leads_any(&self) -> bool {
        self.groups.values().any(|group| group.raw.status().role == Role::Leader)
    }

    /// Collects every group's output. See the crate docs for what the host does with it.
    pub fn poll(&mut self) -> OutputOf<S> {
        let mut out = Output::default();
        let can_write = self.write_in_flight.is_none();
        let mut writes = Vec::new();
        let mut held = Vec::new();
        let mut must_sync = false;
        let ack_early = self.cfg.plants.is(Plant::AckBeforeDurable);
        let policy = SnapshotPolicy {
            interval: self.cfg.snapshot_interval_entries,
            catch_up: self.cfg.catch_up_entries,
            beyond_durable: self.cfg.plants.is(Plant::CompactBeyondDurable),
        };
        for (&group_id, group) in self.groups.iter_mut() {
            if !can_write {
                out.messages.extend(group.raw.take_immediate_messages());
                continue;
            }
            let Some(ready) = group.raw.ready() else { continue };
            must_sync |= ready.must_sync;
            let number = ready.number();
            let write = handle_ready(group_id, group, ready, &mut out, &mut held, &mut self.outcomes, policy);
            // The WAL segments an own snapshot makes obsolete go once the write is durable: it
            // must really be.
            must_sync |= write.own_snapshot.is_some();
            group.ready_in_flight = Some(number);
            writes.push(write);
        }
        let any_write = writes.iter().any(|w| {
            w.hard_state.is_some()
                || w.installed_snapshot.is_some()
                || w.own_snapshot.is_some()
                || !w.entries.is_empty()
        });
        if ack_early {
            // Planted bug: promises leave before the write that backs them is durable.
            out.messages.append(&mut held);
        }
        if any_write {
            let id = self.next_write_id;
            self.next_write_id += 1;
            writes.retain(|w| {
                w.hard_state.is_some()
                    || w.installed_snapshot.is_some()
                    || w.own_snapshot.is_some()
                    || !w.entries.is_empty()
            });
            self.write_in_flight = Some((id, held));
            out.write = Some(WriteBatch { id, groups: writes, must_sync });
        } else if can_write {
            // Nothing to write: what the Readys promised is already durable.
            out.messages.append(&mut held);
            self.advance_all();
        }
        out.outcomes.append(&mut self.outcomes);
        self.attach_snapshot_data(&mut out.messages);
        if let Some(health) = self.health.as_mut() {
            health.sent(&out.messages, self.now_us);
            // Only fsyncs say how the disk is doing: an unsynced write takes microseconds, and
            // counting those (every other write under load) would pull the window's median down
            // and hide a slow disk.
            if out.write.as_ref().is_some_and(|write| write.must_sync) {
                health.write_handed_out();
            }
        }
        out
    }

    /// Raft sends a follower its latest snapshot, which for a persistent machine holds no data:
    /// the machine's current state goes with it instead. That state is at or past the snapshot's
    /// index (it is at `applied`); the follower's machine then skips the entries it already
    /// holds, as it does after a restart.
    fn attach_snapshot_data(&mut self, messages: &mut Vec<Message>) {
        messages.retain_mut(|msg| {
            let MessageBody::InstallSnapshot { snapshot } = &mut msg.body else { return true };
            let Some(group) = self.groups.get_mut(&msg.group) else { return true };
            if group.machine.durable_index().is_none() {
                return true;
            }
            // Asked at every send: a machine with a costly state keeps its own copy (the etcd
            // machine writes a store file once and hands out tickets to it).
            match group.machine.snapshot(snapshot.meta.index) {
                Ok(data) => {
                    snapshot.data = data;
                    true
                }
                Err(error) => {
                    // Not sent: a snapshot without the state must never reach a follower. Raft
                    // sends it again after a while.
                    tracing::debug!(group = msg.group, %error, "the state for a follower's snapshot is not ready");
                    false
                }
            }
        });
    }

    /// The host reports `WriteBatch` `id` durable: release what it held back.
    pub fn on_write_durable(&mut self, id: u64) -> Vec<Message> {
        let Some((in_flight, held)) = self.write_in_flight.take() else {
            panic!("write {id} reported durable but none is in flight");
        };
        assert_eq!(in_flight, id, "write {id} reported durable but {in_flight} is in flight");
        self.advance_all();
        let mut held = held;
        self.attach_snapshot_data(&mut held);
        if let Some(health) = self.health.as_mut() {
            // The host set the clock to when the write became durable.
            health.write_finished(self.now_us);
            health.sent(&held, self.now_us);
        }
        held
    }

    fn advance_all(&mut self) {
        for (&group_id, group) in self.groups.iter_mut() {
            if let Some(snapshot) = group.snapshot_to_install.take() {
                install_snapshot(group_id, group, snapshot, &mut self.outcomes);
            }
            if let Some(number) = group.ready_in_flight.take() {
                group.raw.advance(number);
            }
            if let Some(snapshot) = group.snapshot_in_flight.take() {
                group.raw.compact(snapshot);
            }
        }
    }

    /// A write in flight that the host has not reported durable yet.
    pub fn write_in_flight(&self) -> Option<u64> {
        self.write_in_flight.as_ref().map(|(id, _)| *id)
    }
}

/// Turns one group's Ready into its part of the write, the messages to send and the applies.
fn handle_ready<S: StateMachine>(
    group_id: GroupId,
    group: &mut Group<S>,
    mut ready: Ready,
    out: &mut OutputOf<S>,
    held: &mut Vec<Message>,
    outcomes: &mut Vec<OutcomeOf<S>>,
    policy: SnapshotPolicy,
) -> GroupWrite {
    out.messages.append(&mut ready.messages);
    held.append(&mut ready.persisted_messages);
    if let Some(soft) = ready.soft_state {
        if group.role == Role::Leader && soft.role != Role::Leader {
            fail_unconfirmed_reads(group_id, group, outcomes);
        }
        group.role = soft.role;
    }
    let mut write = GroupWrite {
        group: group_id,
        hard_state: ready.hard_state,
        entries: std::mem::take(&mut ready.entries),
        ..Default::default()
    };
    if let Some(snapshot) = ready.snapshot.take() {
        // Installed into the machine only once durable (see `install_snapshot`): a machine that
        // persists its state must never be ahead of what the WAL can vouch for after a crash.
        group.snapshot_to_install = Some(snapshot.clone());
        write.installed_snapshot = Some(snapshot);
    }
    let applied_any = !ready.committed_entries.is_empty();
    for entry in ready.committed_entries.drain(..) {
        apply_entry(group_id, group, entry, outcomes);
    }
    if applied_any {
        group.machine.flush();
    }
    for read_state in ready.read_states.drain(..) {
        if let Some(read) = group.reads.iter_mut().find(|r| r.id == read_state.id && r.read_index.is_none()) {
            read.read_index = Some(read_state.index);
        }
    }
    serve_reads(group_id, group, outcomes);
    write.own_snapshot = maybe_snapshot(group, policy);
    write
}

/// A snapshot from the leader is durable: the machine takes its state.
fn install_snapshot<S: StateMachine>(
    group_id: GroupId,
    group: &mut Group<S>,
    snapshot: Snapshot,
    outcomes: &mut Vec<OutcomeOf<S>>,
) {
    group.machine.restore(&snapshot.data);
    group.applied = snapshot.meta.index;
    group.applied_term = snapshot.meta.term;
    group.last_snapshot_index = snapshot.meta.index;
    group.confs = BTreeMap::from([(snapshot.meta.index, snapshot.meta.conf.clone())]);
    // Proposals at or below the snapshot were decided by a log we never saw; their fate is
    // unknown to us.
    let decided: Vec<(Index, Term)> =
        group.proposals.range(..=(snapshot.meta.index, Term::MAX)).map(|(key, _)| *key).collect();
    for key in decided {
        let p = group.proposals.remove(&key).expect("listed above");
        outcomes.push(Outcome { group: group_id, id: p.id, result: Err(RequestError::Timeout) });
    }
    serve_reads(group_id, group, outcomes);
}

fn apply_entry<S: StateMachine>(
    group_id: GroupId,
    group: &mut Group<S>,
    entry: Entry,
    outcomes: &mut Vec<OutcomeOf<S>>,
) {
    debug_assert!(entry.index == group.applied + 1, "apply out of order: {} after {}", entry.index, group.applied);
    let response = match entry.kind {
        EntryKind::Normal if !entry.data.is_empty() => Some(group.machine.apply(entry.index, &entry.data)),
        // A membership change (applied to the membership by raft itself), with its context.
        EntryKind::ConfChange => {
            match ConfChange::decode(&entry.data) {
                Some(change) => {
                    let latest = group.confs.last_key_value().map(|(_, conf)| conf.clone()).unwrap_or_default();
                    group.confs.insert(entry.index, change.apply_to(&latest));
                    group.machine.apply_conf_change(entry.index, ConfChange::context(&entry.data));
                }
                // Raft ignores a malformed change: so does the machine with its record, or the
                // record would change without the membership.
                None => group.machine.apply_empty(entry.index),
            }
            None
        }
        // A leader's no-op.
        _ => {
            group.machine.apply_empty(entry.index);
            None
        }
    };
    group.applied = entry.index;
    group.applied_term = entry.term;
    // Any proposal at or below this index is decided now: ours if the term matches, else lost.
    while let Some((&(index, term), _)) = group.proposals.first_key_value() {
        if index > entry.index {
            break;
        }
        let p = group.proposals.remove(&(index, term)).expect("first key exists");
        let result = match (&response, index == entry.index && p.term == entry.term) {
            (Some(response), true) => Ok(Answer::Applied(response.clone())),
            // A membership change proposal: applied, with nothing to return.
            (None, true) => Ok(Answer::Membership),
            (_, false) => Err(RequestError::Dropped),
        };
        outcomes.push(Outcome { group: group_id, id: p.id, result });
    }
}

fn serve_reads<S: StateMachine>(group_id: GroupId, group: &mut Group<S>, outcomes: &mut Vec<OutcomeOf<S>>) {
    let applied = group.applied;
    let mut index = 0;
    while index < group.reads.len() {
        if group.reads[index].read_index.is_some_and(|ri| ri <= applied) {
            let read = group.reads.remove(index).expect("index in range");
            let answer = group.machine.query(&read.query);
            outcomes.push(Outcome { group: group_id, id: read.id, result: Ok(Answer::Read(answer)) });
        } else {
            index += 1;
        }
    }
}

fn fail_unconfirmed_reads<S: StateMachine>(group_id: GroupId, group: &mut Group<S>, outcomes: &mut Vec<OutcomeOf<S>>) {
    group.reads.retain(|read| {
        if read.read_index.is_some() {
            return true; // confirmed while leader: still linearizable once applied
        }
        outcomes.push(Outcome {
            group: group_id,
            id: read.id,
            result: Err(RequestError::Refused(RaftError::NotLeader { leader: 0 })),
        });
        false
    });
}

fn expire_requests<S: StateMachine>(
    group_id: GroupId,
    group: &mut Group<S>,
    now: u64,
    outcomes: &mut Vec<OutcomeOf<S>>,
) {
    group.proposals.retain(|_, p| {
        if p.deadline > now {
            return true;
        }
        outcomes.push(Outcome { group: group_id, id: p.id, result: Err(RequestError::Timeout) });
        false
    });
    group.reads.retain(|r| {
        if r.deadline > now {
            return true;
        }
        outcomes.push(Outcome { group: group_id, id: r.id, result: Err(RequestError::Timeout) });
        false
    });
}

/// When and where a group takes its own snapshots.
#[derive(Clone, Copy)]
struct SnapshotPolicy {
    interval: u64,
    catch_up: u64,
    /// Planted bug: a persistent machine's snapshot is taken at the applied index, beyond what
    /// the machine holds durably, so the log it still needs after a crash is compacted away.
    beyond_durable: bool,
}

/// Takes a snapshot when enough entries were applied since the last one. It goes into this
/// write; the log is compacted behind it once the write is durable.
///
/// An in-memory machine's snapshot is its whole state at the applied index. A persistent
/// machine's holds no data: it only marks how far the log may be compacted, which is what the
/// machine holds durably less `catch_up` entries kept for followers that are a little behind.
fn maybe_snapshot<S: StateMachine>(group: &mut Group<S>, policy: SnapshotPolicy) -> Option<Snapshot> {
    if group.snapshot_in_flight.is_some() {
        return None;
    }
    let snapshot = match group.machine.durable_index() {
        None => {
            if group.applied < group.last_snapshot_index + policy.interval {
                return None;
            }
            let conf = group.raw.status().conf;
            let meta = SnapshotMeta { index: group.applied, term: group.applied_term, conf };
            let data = match group.machine.snapshot(group.applied) {
                Ok(data) => data,
                Err(error) => {
                    tracing::warn!(index = group.applied, %error, "state machine could not take a snapshot; keeping the log");
                    return None;
                }
            };
            group.confs = BTreeMap::from([(group.applied, meta.conf.clone())]);
            Snapshot { meta, data }
        }
        Some(durable) => {
            let covered = if policy.beyond_durable { group.applied } else { durable.min(group.applied) };
            let covered = group.machine.compaction_floor().map_or(covered, |floor| covered.min(floor));
            // The membership is known from the first index in `confs` on (the applied index at
            // start, or the last snapshot): no snapshot goes below it.
            let known_from = group.confs.first_key_value().map_or(0, |(&index, _)| index);
            let index = covered.saturating_sub(policy.catch_up).max(known_from);
            if index > covered || index < group.last_snapshot_index + policy.interval {
                return None;
            }
            let term = group.raw.term_at(index)?;
            let conf = group.confs.range(..=index).next_back().map(|(_, conf)| conf.clone())?;
            // Only the membership at the new snapshot and after it is needed from now on.
            group.confs = group.confs.split_off(&index);
            group.confs.insert(index, conf.clone());
            Snapshot { meta: SnapshotMeta { index, term, conf }, data: Bytes::new() }
        }
    };
    group.last_snapshot_index = snapshot.meta.index;
    group.snapshot_in_flight = Some(snapshot.clone());
    Some(snapshot)
}

/// A word from a leader is a sign of life; `Some(true)` for its periodic heartbeat, which is
/// also a sample of its interval.
fn detection_kind(body: &MessageBody) -> Option<bool> {
    match body {
        MessageBody::Heartbeat { .. } => Some(true),
        MessageBody::Append { .. } | MessageBody::InstallSnapshot { .. } => Some(false),
        _ => None,
    }
}
