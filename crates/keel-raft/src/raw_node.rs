//! The host-facing API: drive a [`Raft`] with ticks, messages and proposals, and collect its
//! output as [`Ready`] values.

use bytes::Bytes;

use crate::errors::RaftError;
use crate::raft::{Raft, RecoveredState};
use crate::read_only::ReadOrigin;
use crate::types::*;
use crate::Config;

/// What the host must do, in order (the persistence contract, see the crate docs):
///
/// 1. send [`Ready::messages`] at any time (they need nothing durable);
/// 2. write [`Ready::snapshot`], [`Ready::entries`] and [`Ready::hard_state`] — entries at an
///    index replace any the store already holds at and after that index — and make them durable
///    (one fsync when [`Ready::must_sync`]);
/// 3. only then send [`Ready::persisted_messages`] and call [`RawNode::advance`];
/// 4. install [`Ready::snapshot`] into the state machine before applying anything after it, and
///    apply [`Ready::committed_entries`] in order (they are already durable and committed, so
///    this may overlap with step 2).
#[derive(Debug, Default)]
pub struct Ready {
    number: u64,
    pub soft_state: Option<SoftState>,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub persisted_messages: Vec<Message>,
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    pub must_sync: bool,
}

impl Ready {
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Whether anything has to be written before `persisted_messages` may leave.
    pub fn needs_write(&self) -> bool {
        self.hard_state.is_some() || self.snapshot.is_some() || !self.entries.is_empty()
    }
}

/// A summary of a member's state, for status APIs, metrics and the simulator's invariants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub group: GroupId,
    pub hard_state: HardState,
    pub role: Role,
    pub leader: NodeId,
    pub first_index: Index,
    pub last_index: Index,
    pub persisted: Index,
    pub applied: Index,
    pub conf: ConfState,
    /// A snapshot from the leader replaced the log and has not been handed to the host yet.
    pub snapshot_pending: bool,
}

pub struct RawNode {
    raft: Raft,
    prev_soft_state: SoftState,
    prev_hard_state: HardState,
    next_ready_number: u64,
    /// The Ready whose write the host has not confirmed yet: (number, persist_to, its term).
    in_flight: Option<(u64, Index, Term)>,
    /// Most bytes of committed entries handed out in one Ready.
    max_apply_bytes: u64,
}

impl RawNode {
    pub fn new(cfg: Config, recovered: RecoveredState) -> Result<RawNode, RaftError> {
        let raft = Raft::new(cfg, recovered)?;
        Ok(RawNode {
            prev_soft_state: raft.soft_state(),
            prev_hard_state: raft.hard_state(),
            raft,
            next_ready_number: 1,
            in_flight: None,
            max_apply_bytes: 16 << 20,
        })
    }

    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Feeds a message from a peer. Messages for another group or member are ignored.
    pub fn step(&mut self, msg: Message) {
        if msg.group != self.raft.cfg.group {
            return;
        }
        self.raft.step(msg);
    }

    pub fn propose(&mut self, data: Bytes) -> Result<Index, RaftError> {
        self.raft.propose(data)
    }

    pub fn propose_conf_change(&mut self, change: ConfChange) -> Result<Index, RaftError> {
        self.raft.propose_conf_change(change, &[])
    }

    /// Proposes `change` with `context` in the same entry (see [`ConfChange::encode_with`]).
    pub fn propose_conf_change_with(&mut self, change: ConfChange, context: &[u8]) -> Result<Index, RaftError> {
        self.raft.propose_conf_change(change, context)
    }

    /// Requests a linearizable read; the answer is a [`ReadState`] with this `id` in a later Ready
    /// (or nothing, if leadership is lost meanwhile: the host times such reads out).
    pub fn read_index(&mut self, id: u64) {
        self.raft.read_index(ReadOrigin::Local, id);
    }

    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), RaftError> {
        self.raft.transfer_leader(to)
    }

    /// See [`Raft::transfer_target`].
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.raft.transfer_target()
    }

    /// The host saw `peer`'s connection close (its process is gone): a follower whose leader it
    /// was campaigns (pre-vote first) within a few ticks instead of a whole election timeout.
    pub fn report_peer_lost(&mut self, peer: NodeId) {
        self.raft.report_peer_lost(peer);
    }

    /// See [`Raft::report_leader_doubted`].
    pub fn report_leader_doubted(&mut self, peer: NodeId) {
        self.raft.report_leader_doubted(peer);
    }

    /// See [`Raft::report_leader_suspected`].
    pub fn report_leader_suspected(&mut self, peer: NodeId) -> bool {
        self.raft.report_leader_suspected(peer)
    }

    /// While `reluctant`, this member lets healthy members campaign first (see
    /// [`Raft::set_reluctant`]); a host sets it while the member's disk is slow.
    pub fn set_reluctant(&mut self, reluctant: bool) {
        self.raft.set_reluctant(reluctant);
    }

    /// The leader this member knows of ([`NO_NODE`] for none), and its own role and term.
    pub fn leadership(&self) -> (NodeId, Role, Term) {
        (self.raft.leader, self.raft.role, self.raft.term)
    }

    /// Starts an election now (used by tests and by a host that knows the leader is gone).
    pub fn campaign(&mut self) {
        self.raft.campaign(false);
    }

    /// The host has a durable state-machine snapshot at an applied index; the log before it may
    /// be dropped and the snapshot is sent to followers that fall behind it.
    pub fn compact(&mut self, snapshot: Snapshot) {
        self.raft.compact(snapshot);
    }

    pub fn has_ready(&self) -> bool {
        if self.in_flight.is_some() {
            return false;
        }
        let raft = &self.raft;
        raft.soft_state() != self.prev_soft_state
            || raft.hard_state() != self.prev_hard_state
            || raft.log.has_unpersisted_work()
            || !raft.msgs_now.is_empty()
            || !raft.msgs_after_persist.is_empty()
            || !raft.read_states.is_empty()
            || raft.log.committed.min(raft.log.persisted()) > raft.log.applied
    }

    /// Collects the output accumulated so far. At most one Ready is outstanding: until it is
    /// [`advance`](Self::advance)d this returns `None`.
    pub fn ready(&mut self) -> Option<Ready> {
        if self.in_flight.is_some() {
            return None;
        }
        self.raft.flush_broadcast();
        if !self.has_ready() {
            return None;
        }
        let number = self.next_ready_number;
        self.next_ready_number += 1;
        let soft = self.raft.soft_state();
        let hard = self.raft.hard_state();
        let (snapshot, entries) = self.raft.log.take_unstable();
        let committed_entries = self.raft.take_committed(self.max_apply_bytes);
        // Applying a conf change may have produced messages (e.g. to a new member): take them now.
        self.raft.flush_broadcast();
        let hard_state = (hard != self.prev_hard_state).then_some(hard);
        // Only a moved commit index may skip the fsync (etcd-io/raft's MustSync): a crash that
        // loses it loses no promise.
        let skip_entry_sync = self.raft.cfg.plants.is(crate::planted::Plant::SkipEntrySync);
        let must_sync = hard.term != self.prev_hard_state.term
            || hard.vote != self.prev_hard_state.vote
            || snapshot.is_some()
            || (!entries.is_empty() && !skip_entry_sync);
        let persist_to = entries.last().map(|e| e.index).or(snapshot.as_ref().map(|s| s.meta.index)).unwrap_or(0);
        let ready = Ready {
            number,
            soft_state: (soft != self.prev_soft_state).then_some(soft),
            hard_state,
            snapshot,
            entries,
            messages: std::mem::take(&mut self.raft.msgs_now),
            persisted_messages: std::mem::take(&mut self.raft.msgs_after_persist),
            committed_entries,
            read_states: std::mem::take(&mut self.raft.read_states),
            must_sync,
        };
        self.prev_soft_state = soft;
        self.prev_hard_state = hard;
        self.in_flight = Some((number, persist_to, hard.term));
        Some(ready)
    }

    /// Messages that may leave right away, without waiting for the outstanding Ready: a leader's
    /// replication traffic. Lets a leader keep followers busy while its own fsync runs.
    pub fn take_immediate_messages(&mut self) -> Vec<Message> {
        self.raft.flush_broadcast();
        std::mem::take(&mut self.raft.msgs_now)
    }

    /// The host confirms that everything in Ready `number` is durable.
    pub fn advance(&mut self, number: u64) {
        let Some((in_flight, persist_to, term)) = self.in_flight else {
            panic!("advance({number}) without an outstanding Ready");
        };
        assert_eq!(in_flight, number, "advance of Ready {number} but {in_flight} is outstanding");
        self.in_flight = None;
        self.raft.on_term_persisted(term);
        if persist_to > 0 {
            self.raft.on_persisted(persist_to);
        }
    }

    pub fn status(&self) -> Status {
        let raft = &self.raft;
        Status {
            id: raft.id(),
            group: raft.cfg.group,
            hard_state: raft.hard_state(),
            role: raft.role,
            leader: raft.leader,
            first_index: raft.log.first_index(),
            last_index: raft.log.last_index(),
            persisted: raft.log.persisted(),
            applied: raft.log.applied,
            conf: raft.conf.clone(),
            snapshot_pending: raft.log.has_pending_snapshot(),
        }
    }

    /// The term of the entry at `index` in this member's log (None if compacted or absent).
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.raft.log.term(index)
    }

    /// Entries `[lo, hi)` of the in-memory log (None if `lo` is compacted).
    pub fn entries(&self, lo: Index, hi: Index) -> Option<Vec<Entry>> {
        self.raft.log.slice(lo, hi, u64::MAX, u64::MAX)
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }
}
