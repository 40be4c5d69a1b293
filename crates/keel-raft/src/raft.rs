//! The raft state machine of one member. Pure: inputs are messages, ticks and host requests;
//! outputs are queued messages and changes to the log, handed out by [`crate::RawNode::ready`].

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::config::{Config, ReadMode};
use crate::errors::RaftError;
use crate::log::RaftLog;
use crate::planted::Plant;
use crate::progress::{learner_in_sync, Progress, ProgressState};
use crate::read_only::{PendingRead, ReadOrigin, ReadRounds};
use crate::rng::SplitMix64;
use crate::types::*;

/// What a member brings back from its durable state when it starts.
#[derive(Clone, Debug, Default)]
pub struct RecoveredState {
    pub hard_state: HardState,
    /// Membership as of the snapshot, before replaying any conf-change entry after it.
    pub conf: ConfState,
    /// The latest durable snapshot, if any; the log starts right after it.
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    /// Highest index the durable state machine has applied (`>=` the snapshot index).
    pub applied: Index,
}

pub struct Raft {
    pub(crate) cfg: Config,
    pub(crate) term: Term,
    pub(crate) vote: NodeId,
    pub(crate) role: Role,
    pub(crate) leader: NodeId,
    pub(crate) log: RaftLog,
    /// Membership as of the last applied conf change.
    pub(crate) conf: ConfState,
    /// Leader only: every member's replication progress, this member's own included.
    progress: BTreeMap<NodeId, Progress>,
    /// Leader only: highest read round each member has answered.
    acked_round: BTreeMap<NodeId, u64>,
    votes: BTreeMap<NodeId, bool>,
    /// Messages that may leave now (a leader's replication traffic, pre-votes).
    pub(crate) msgs_now: Vec<Message>,
    /// Messages that may leave only once everything handed out so far is durable.
    pub(crate) msgs_after_persist: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    /// The host's failure detector doubts this follower's leader (a silence well past its usual
    /// heartbeat interval): it no longer refuses campaigns for the leader's sake. Cleared by the
    /// next word from the leader.
    leader_doubted: bool,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_timeout: u32,
    /// Logical clock in ticks, for leases.
    ticks: u64,
    rng: SplitMix64,
    /// Index of the last conf change proposed; a new one waits until it is applied.
    pending_conf_index: Index,
    /// Leader transfer in progress: target and ticks since it started.
    transfer: Option<(NodeId, u32)>,
    reads: ReadRounds,
    /// Reads received before this leader committed an entry of its own term: its commit index
    /// may still lag the true one, so they wait (Raft §6.4 step 1).
    reads_awaiting_term_commit: Vec<PendingRead>,
    uncommitted_bytes: u64,
    /// Leader only: log entries were appended that have not been broadcast yet.
    pending_broadcast: bool,
    /// Latest durable snapshot, sent to followers that fell behind the compacted log.
    pub(crate) snapshot: Option<Snapshot>,
    /// The highest term known durable (the host advanced a Ready carrying it).
    persisted_term: Term,
    /// This leader sent TimeoutNow in its term: another member may take over without waiting
    /// for the followers' leases to run out, so this leader's lease is void for the term.
    lease_forfeited: bool,
    /// The host judged this member unfit to lead for now (its disk is slow): it waits an extra
    /// election timeout before campaigning and never campaigns on a suspicion, so a healthy
    /// member takes over first. It still campaigns in the end: a group whose members are all
    /// slow must still elect someone.
    reluctant: bool,
}

impl Raft {
    pub fn new(cfg: Config, recovered: RecoveredState) -> Result<Raft, RaftError> {
        cfg.validate()?;
        let (snapshot_index, snapshot_term) =
            recovered.snapshot.as_ref().map_or((0, 0), |s| (s.meta.index, s.meta.term));
        let log = RaftLog::recovered(
            snapshot_index,
            snapshot_term,
            recovered.entries,
            recovered.hard_state.commit,
            recovered.applied.max(snapshot_index),
        );
        let mut raft = Raft {
            rng: SplitMix64::new(cfg.seed),
            term: recovered.hard_state.term,
            vote: recovered.hard_state.vote,
            role: Role::Follower,
            leader: NO_NODE,
            log,
            conf: recovered.conf,
            progress: BTreeMap::new(),
            acked_round: BTreeMap::new(),
            votes: BTreeMap::new(),
            msgs_now: Vec::new(),
            msgs_after_persist: Vec::new(),
            read_states: Vec::new(),
            leader_doubted: false,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: cfg.election_ticks,
            ticks: 0,
            pending_conf_index: 0,
            transfer: None,
            reads: ReadRounds::default(),
            reads_awaiting_term_commit: Vec::new(),
            uncommitted_bytes: 0,
            pending_broadcast: false,
            snapshot: recovered.snapshot,
            persisted_term: recovered.hard_state.term,
            lease_forfeited: false,
            reluctant: false,
            cfg,
        };
        // Conf changes between the snapshot and the applied index were applied before the
        // restart; replay them so the membership matches the applied state.
        let applied = raft.log.applied;
        if applied > snapshot_index {
            let replay = raft.log.slice(snapshot_index + 1, applied + 1, u64::MAX, u64::MAX).unwrap_or_default();
            for entry in replay.iter().filter(|e| e.kind == EntryKind::ConfChange) {
                raft.apply_conf_change_entry(entry);
            }
        }
        raft.reset_randomized_election_timeout();
        if raft.cfg.campaign_soon_at_start && raft.cfg.pre_vote && raft.cfg.read_mode != ReadMode::LeaseBased {
            raft.campaign_in_a_few_ticks();
        }
        Ok(raft)
    }

    // ---------------------------------------------------------------- accessors

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed }
    }

    pub fn soft_state(&self) -> SoftState {
        SoftState { leader: self.leader, role: self.role }
    }

    pub fn is_promotable(&self) -> bool {
        self.conf.voters.contains(&self.cfg.id)
    }

    fn quorum(&self) -> usize {
        self.conf.voters.len() / 2 + 1
    }

    /// A conf change is in the log and not applied yet: raft refuses another meanwhile.
    pub fn conf_change_pending(&self) -> bool {
        self.pending_conf_index > self.log.applied
    }

    pub fn progress_of(&self, id: NodeId) -> Option<&Progress> {
        self.progress.get(&id)
    }

    // ---------------------------------------------------------------- sending

    fn send(&mut self, to: NodeId, term: Term, body: MessageBody) {
        debug_assert_ne!(to, self.cfg.id, "never send to self");
        if body == MessageBody::TimeoutNow {
            self.lease_forfeited = true;
        }
        // A leader's traffic needs nothing durable *once its term is*: a single voter becomes
        // leader in the same step it votes for itself, and its appends must not leave before
        // that term is on disk (else, after a crash, it could lead the same term again with a
        // different log, and learners would keep entries it no longer has).
        let immediate = (self.role == Role::Leader && self.term <= self.persisted_term)
            || matches!(body, MessageBody::PreVote { .. } | MessageBody::PreVoteResponse { .. });
        let msg = Message { group: self.cfg.group, from: self.cfg.id, to, term, body };
        if immediate {
            self.msgs_now.push(msg);
        } else {
            self.msgs_after_persist.push(msg);
        }
    }

    // ---------------------------------------------------------------- role changes

    fn reset(&mut self, term: Term) {
        if self.term != term {
            self.term = term;
            self.vote = NO_NODE;
            self.lease_forfeited = false;
        }
        self.leader = NO_NODE;
        self.leader_doubted = false;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_election_timeout();
        self.votes.clear();
        self.transfer = None;
        self.reads.reset();
        self.reads_awaiting_term_commit.clear();
        self.progress.clear();
        self.acked_round.clear();
        self.pending_broadcast = false;
        self.uncommitted_bytes = 0;
    }

    /// The host saw its connection from `peer` close (the peer's process is gone: a crash closes
    /// its sockets at once). If `peer` is this follower's leader, the follower stops waiting out
    /// the election timeout: it forgets the leader and campaigns (pre-vote first) within a
    /// couple of ticks. Other followers that saw the same close grant that pre-vote; one that
    /// still hears the leader refuses it, so a false alarm disrupts nothing.
    ///
    /// Ignored under lease reads: a lease relies on followers refusing votes for a full election
    /// timeout after hearing from the leader, whatever else they see.
    pub fn report_peer_lost(&mut self, peer: NodeId) {
        if self.role != Role::Follower || peer == NO_NODE || self.leader != peer {
            return;
        }
        if self.cfg.read_mode == ReadMode::LeaseBased {
            return;
        }
        self.leader = NO_NODE;
        self.campaign_in_a_few_ticks();
    }

    /// The host's failure detector doubts `peer`, this follower's leader: heard from it long
    /// enough ago to be unusual, not yet long enough to campaign. A doubting follower grants a
    /// campaign that leader stickiness would have refused, so that the first follower to suspect
    /// the leader wins at once, rather than waiting for the last one to suspect it too. Quorum is
    /// untouched: while the leader is heard by a quorum, a campaign still fails.
    ///
    /// Ignored under lease reads (a lease relies on followers refusing votes for a full election
    /// timeout after hearing from the leader).
    pub fn report_leader_doubted(&mut self, peer: NodeId) {
        if self.role == Role::Follower
            && peer != NO_NODE
            && self.leader == peer
            && self.cfg.read_mode != ReadMode::LeaseBased
        {
            self.leader_doubted = true;
        }
    }

    /// The host's failure detector suspects `peer`, this follower's leader (a silence far past
    /// its usual heartbeat interval, see `keel_membership::phi`): the follower forgets the leader
    /// and campaigns now, pre-vote first, instead of waiting out the election timeout. Followers
    /// that still hear the leader refuse the pre-vote, so a wrong suspicion costs one round of
    /// messages, never a leader. Returns whether it campaigned.
    ///
    /// Ignored under lease reads, as [`Raft::report_leader_doubted`].
    pub fn report_leader_suspected(&mut self, peer: NodeId) -> bool {
        if self.role != Role::Follower
            || peer == NO_NODE
            || self.leader != peer
            || self.cfg.read_mode == ReadMode::LeaseBased
            || !self.is_promotable()
            || self.reluctant
        {
            return false;
        }
        self.leader = NO_NODE;
        self.leader_doubted = false;
        self.election_elapsed = 0;
        self.campaign(false);
        true
    }

    /// A tick or three from now, at random: followers that lost the same leader at the same
    /// instant (or started together) should not split the vote. (Taking turns by id measured
    /// worse: 4 of 20 trials over a second against 2 of 20.)
    fn campaign_in_a_few_ticks(&mut self) {
        let wait = self.rng.range(1, 4) as u32;
        self.election_elapsed = self.randomized_election_timeout.saturating_sub(wait);
    }

    /// Set while the host judges this member unfit to lead (see the `reluctant` field).
    pub fn set_reluctant(&mut self, reluctant: bool) {
        self.reluctant = reluctant;
    }

    pub fn is_reluctant(&self) -> bool {
        self.reluctant
    }

    fn reset_randomized_election_timeout(&mut self) {
        let base = self.cfg.election_ticks as u64;
        self.randomized_election_timeout = self.rng.range(base, 2 * base) as u32;
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: NodeId) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
        tracing::debug!(group = self.cfg.group, node = self.cfg.id, term, leader, "became follower");
    }

    fn become_pre_candidate(&mut self) {
        // Neither the term nor the vote changes: a pre-vote has nothing to persist.
        assert_ne!(self.role, Role::Leader, "a leader does not pre-campaign");
        self.role = Role::PreCandidate;
        self.votes.clear();
        self.leader = NO_NODE;
        self.election_elapsed = 0;
        self.reset_randomized_election_timeout();
    }

    fn become_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader does not campaign");
        let term = self.term + 1;
        self.reset(term);
        self.vote = self.cfg.id;
        self.role = Role::Candidate;
        tracing::debug!(group = self.cfg.group, node = self.cfg.id, term, "became candidate");
    }

    fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate, "only a candidate becomes leader");
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = self.cfg.id;
        let next = self.log.last_index() + 1;
        let members: Vec<NodeId> = self.conf.members().collect();
        for id in members {
            let mut progress = Progress::new(next, self.conf.learners.contains(&id));
            if id == self.cfg.id {
                progress.matched = self.log.persisted();
                progress.become_replicate();
                progress.next = next;
            }
            progress.recent_active = true;
            self.progress.insert(id, progress);
            self.acked_round.insert(id, 0);
        }
        // Conf changes in the log we inherited may be committed but not applied; wait for them
        // before proposing another (etcd's pendingConfIndex rule).
        self.pending_conf_index = self.log.last_index();
        // The no-op lets this leader commit (and so learn the commit index of) earlier terms.
        self.append_entries(vec![(EntryKind::Normal, Bytes::new())]);
        tracing::debug!(group = self.cfg.group, node = self.cfg.id, term, "became leader");
    }

    // ---------------------------------------------------------------- ticks

    pub fn tick(&mut self) {
        self.ticks += 1;
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.election_elapsed += 1;
            let extra = if self.reluctant { self.cfg.election_ticks } else { 0 };
            if self.is_promotable() && self.election_elapsed >= self.randomized_election_timeout + extra {
                self.election_elapsed = 0;
                self.campaign(false);
            }
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum && !self.check_quorum_active() {
                tracing::debug!(
                    group = self.cfg.group,
                    node = self.cfg.id,
                    term = self.term,
                    "lost quorum, stepping down"
                );
                let term = self.term;
                self.become_follower(term, NO_NODE);
                return;
            }
            if self.transfer.is_some_and(|(_, elapsed)| elapsed >= self.cfg.election_ticks) {
                self.transfer = None; // the target did not take over in time; serve again
            }
        }
        if let Some((_, elapsed)) = self.transfer.as_mut() {
            *elapsed += 1;
        }
        let election_ticks = self.cfg.election_ticks;
        for progress in self.progress.values_mut() {
            if let ProgressState::Snapshot { .. } = progress.state {
                // A snapshot can be lost on the way; retry after a while rather than stall.
                progress.stalled_ticks += 1;
                if progress.stalled_ticks >= election_ticks {
                    // Leave the snapshot state first so `become_probe` resumes at `matched + 1`
                    // (the snapshot may never have arrived) rather than after the snapshot.
                    progress.state = ProgressState::Probe;
                    progress.become_probe();
                }
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Check-quorum: has a quorum of voters been heard from since the last check?
    fn check_quorum_active(&mut self) -> bool {
        let me = self.cfg.id;
        let mut active = 0;
        for (id, progress) in self.progress.iter_mut() {
            if self.conf.voters.contains(id) && (*id == me || progress.recent_active) {
                active += 1;
            }
            progress.recent_active = false;
        }
        active >= self.quorum()
    }

    // ---------------------------------------------------------------- elections

    /// Starts an election: a pre-vote first if configured, unless this is a leader transfer.
    pub fn campaign(&mut self, transfer: bool) {
        if !self.is_promotable() || self.role == Role::Leader {
            return;
        }
        if self.has_unapplied_conf_changes() {
            // Our membership is older than what is committed: counting votes under it could
            // elect a leader without a quorum of the current configuration (etcd-io/raft's
            // hasUnappliedConfChanges). The host applies it within a Ready; the next timeout
            // campaigns under the right voters.
            tracing::debug!(
                group = self.cfg.group,
                id = self.cfg.id,
                "not campaigning: committed conf change not applied yet"
            );
            return;
        }
        if self.cfg.pre_vote && !transfer {
            self.become_pre_candidate();
            self.request_votes(true, false);
        } else {
            self.become_candidate();
            self.request_votes(false, transfer);
        }
    }

    /// Is a conf change committed (known to this member) but not yet handed out for applying?
    fn has_unapplied_conf_changes(&self) -> bool {
        self.log.committed > self.log.applied
            && self.log.any_in(self.log.applied + 1, self.log.committed, |e| e.kind == EntryKind::ConfChange)
    }

    fn request_votes(&mut self, pre_vote: bool, transfer: bool) {
        let me = self.cfg.id;
        let term = if pre_vote { self.term + 1 } else { self.term };
        // Our own vote. (For a real vote it is the `vote` field, persisted with the term.)
        if self.record_vote(me, true) {
            return;
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let voters: Vec<NodeId> = self.conf.voters.iter().copied().filter(|&id| id != me).collect();
        for id in voters {
            let body = if pre_vote {
                MessageBody::PreVote { last_index, last_term }
            } else {
                MessageBody::Vote { last_index, last_term, transfer }
            };
            self.send(id, term, body);
        }
    }

    /// Records a (pre-)vote; if it decides the election, acts on it and returns true.
    fn record_vote(&mut self, from: NodeId, granted: bool) -> bool {
        self.votes.entry(from).or_insert(granted);
        let granted_count = self.votes.iter().filter(|(id, g)| **g && self.conf.voters.contains(id)).count();
        let rejected_count = self.votes.iter().filter(|(id, g)| !**g && self.conf.voters.contains(id)).count();
        if granted_count >= self.quorum() {
            if self.role == Role::PreCandidate {
                self.become_candidate();
                self.request_votes(false, false);
            } else {
                self.become_leader();
            }
            return true;
        }
        if rejected_count >= self.quorum() {
            let term = self.term;
            self.become_follower(term, NO_NODE);
            return true;
        }
        false
    }

    // ---------------------------------------------------------------- step

    pub fn step(&mut self, msg: Message) {
        if msg.from == self.cfg.id || msg.from == NO_NODE || msg.to != self.cfg.id {
            return; // misrouted; nothing sensible to do with it
        }
        if let MessageBody::PreVoteResponse { commit, commit_term, .. }
        | MessageBody::VoteResponse { commit, commit_term, .. } = msg.body
        {
            // A fact about the log, true whatever the sender's term.
            self.learn_committed(commit, commit_term);
        }
        if msg.term > self.term {
            if !self.step_higher_term(&msg) {
                return;
            }
        } else if msg.term < self.term {
            self.step_lower_term(&msg);
            return;
        }
        match &msg.body {
            MessageBody::PreVote { .. } | MessageBody::Vote { .. } => self.handle_vote_request(&msg),
            _ => match self.role {
                Role::Leader => self.step_leader(msg),
                Role::Candidate | Role::PreCandidate => self.step_candidate(msg),
                Role::Follower => self.step_follower(msg),
            },
        }
        self.log.assert_invariants();
    }

    /// A message from a higher term. Returns false if it must be dropped.
    fn step_higher_term(&mut self, msg: &Message) -> bool {
        match msg.body {
            MessageBody::PreVote { .. } | MessageBody::Vote { .. } => {
                let transfer = matches!(msg.body, MessageBody::Vote { transfer: true, .. });
                // Leader stickiness: a member that heard from a leader within the election timeout
                // ignores campaigns, so a flapping member cannot depose a healthy leader.
                // Under lease reads, a member that just (re)started may have heard from a leader a
                // moment before it went down; it keeps that promise too, or a leader's lease would
                // not survive the restart of a follower. (A member that never saw a term cannot
                // have heard from a leader.) Without leases nothing relies on that promise, and
                // keeping it would stall the election after a second failure soon after a restart.
                let recently_started = self.cfg.read_mode == ReadMode::LeaseBased
                    && self.term > 0
                    && self.ticks < self.cfg.election_ticks as u64;
                let heard_from_leader =
                    self.leader != NO_NODE && !self.leader_doubted && self.election_elapsed < self.cfg.election_ticks;
                let in_lease = self.cfg.check_quorum && (heard_from_leader || recently_started);
                if in_lease && !transfer {
                    return false;
                }
                if matches!(msg.body, MessageBody::Vote { .. }) {
                    self.become_follower(msg.term, NO_NODE);
                }
                true
            }
            MessageBody::PreVoteResponse { reject: false, .. } => true, // at the term we would campaign at
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::InstallSnapshot { .. } => {
                self.become_follower(msg.term, msg.from);
                true
            }
            _ => {
                self.become_follower(msg.term, NO_NODE);
                true
            }
        }
    }

    fn step_lower_term(&mut self, msg: &Message) {
        match msg.body {
            // A stale leader (say, one that was partitioned away) would never learn of the new
            // term if we stayed silent: with check-quorum/pre-vote nobody disrupts us to tell it.
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
                if self.cfg.check_quorum || self.cfg.pre_vote =>
            {
                let term = self.term;
                self.send(
                    msg.from,
                    term,
                    MessageBody::AppendResponse { reject: true, index: 0, log_term: 0, hint_index: 0 },
                );
            }
            MessageBody::PreVote { .. } => {
                let term = self.term;
                let body = self.vote_response(true, true);
                self.send(msg.from, term, body);
            }
            _ => {}
        }
    }

    fn handle_vote_request(&mut self, msg: &Message) {
        let (last_index, last_term, pre_vote) = match msg.body {
            MessageBody::PreVote { last_index, last_term } => (last_index, last_term, true),
            MessageBody::Vote { last_index, last_term, .. } => (last_index, last_term, false),
            _ => unreachable!("not a vote request"),
        };
        let mut can_vote = self.vote == msg.from
            || (self.vote == NO_NODE && self.leader == NO_NODE)
            || (pre_vote && msg.term > self.term);
        if !pre_vote && self.cfg.plants.is(Plant::DoubleVote) && self.leader == NO_NODE {
            can_vote = true;
        }
        if pre_vote && self.role == Role::PreCandidate {
            // Two members that campaign at the same instant (both saw the leader go at once)
            // would grant each other's pre-vote, both stand as candidates in the same term and
            // split the vote, costing a whole election timeout. Of two pre-candidates only one
            // is granted the other's pre-vote: the one with the longer log, or the higher id.
            let theirs = (last_term, last_index);
            let mine = (self.log.last_term(), self.log.last_index());
            can_vote &= theirs > mine || (theirs == mine && msg.from > self.cfg.id);
        }
        let grant = can_vote && self.log.is_up_to_date(last_index, last_term);
        if grant {
            if !pre_vote {
                // The vote is persisted (in this Ready's hard state) before the response leaves.
                self.vote = msg.from;
                self.election_elapsed = 0;
            }
            let body = self.vote_response(pre_vote, false);
            self.send(msg.from, msg.term, body);
        } else {
            let term = self.term;
            let body = self.vote_response(pre_vote, true);
            self.send(msg.from, term, body);
        }
    }

    fn vote_response(&self, pre_vote: bool, reject: bool) -> MessageBody {
        let commit = self.log.committed;
        let commit_term = self.log.term(commit).expect("the commit index is never compacted past");
        if pre_vote {
            MessageBody::PreVoteResponse { reject, commit, commit_term }
        } else {
            MessageBody::VoteResponse { reject, commit, commit_term }
        }
    }

    /// Another member says the entry (`index`, `term`) is committed. If ours matches it, so does
    /// everything before it (Log Matching), and all of it is committed here too. A leader counts
    /// its own commits.
    fn learn_committed(&mut self, index: Index, term: Term) {
        if self.role != Role::Leader && index > self.log.committed && self.log.matches(index, term) {
            self.log.commit_to(index);
        }
    }

    fn step_candidate(&mut self, msg: Message) {
        match msg.body {
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::InstallSnapshot { .. } => {
                self.become_follower(msg.term, msg.from);
                self.step_follower(msg);
            }
            MessageBody::PreVoteResponse { reject, .. } if self.role == Role::PreCandidate => {
                self.record_vote(msg.from, !reject);
            }
            MessageBody::VoteResponse { reject, .. } if self.role == Role::Candidate => {
                self.record_vote(msg.from, !reject);
            }
            _ => {}
        }
    }

    fn step_follower(&mut self, msg: Message) {
        match msg.body {
            MessageBody::Append { prev_index, prev_term, entries, commit } => {
                self.election_elapsed = 0;
                self.leader = msg.from;
                self.leader_doubted = false;
                self.handle_append(msg.from, prev_index, prev_term, entries, commit);
            }
            MessageBody::Heartbeat { commit, read_round } => {
                self.election_elapsed = 0;
                self.leader = msg.from;
                self.leader_doubted = false;
                self.log.commit_to(commit.min(self.log.last_index()));
                let term = self.term;
                self.send(msg.from, term, MessageBody::HeartbeatResponse { read_round });
            }
            MessageBody::InstallSnapshot { snapshot } => {
                self.election_elapsed = 0;
                self.leader = msg.from;
                self.leader_doubted = false;
                self.handle_snapshot(msg.from, snapshot);
            }
            MessageBody::TimeoutNow if self.is_promotable() => self.campaign(true),
            MessageBody::ReadIndexResponse { id, index } if index > 0 => {
                self.read_states.push(ReadState { id, index });
            }
            _ => {}
        }
    }

    fn handle_append(&mut self, from: NodeId, prev_index: Index, prev_term: Term, entries: Vec<Entry>, commit: Index) {
        let term = self.term;
        if prev_index < self.log.committed {
            // Everything up to our commit index matches any leader's log; say where we are.
            let committed = self.log.committed;
            let log_term = self.log.term(committed).unwrap_or(0);
            self.send(
                from,
                term,
                MessageBody::AppendResponse { reject: false, index: committed, log_term, hint_index: 0 },
            );
            return;
        }
        if self.log.matches(prev_index, prev_term) {
            if let Some(first) = entries.first() {
                if first.index != prev_index + 1 || entries.windows(2).any(|w| w[1].index != w[0].index + 1) {
                    return; // malformed: not contiguous after prev
                }
            }
            let (last_new, truncated_at) = self.log.append_from_leader(prev_index, entries);
            if let Some(index) = truncated_at {
                self.drop_acks_from(index);
            }
            self.log.commit_to(commit.min(last_new));
            let log_term = self.log.term(last_new).unwrap_or(0);
            self.send(
                from,
                term,
                MessageBody::AppendResponse { reject: false, index: last_new, log_term, hint_index: 0 },
            );
        } else {
            let (hint_index, hint_term) = self.log.find_conflict_by_term(prev_index, prev_term);
            self.send(
                from,
                term,
                MessageBody::AppendResponse { reject: true, index: prev_index, log_term: hint_term, hint_index },
            );
        }
    }

    /// Acknowledgements still waiting for persistence that name entries now truncated away would
    /// promise what will never be durable (an older leader could count them); they must not leave.
    fn drop_acks_from(&mut self, index: Index) {
        self.msgs_after_persist.retain(
            |m| !matches!(m.body, MessageBody::AppendResponse { reject: false, index: acked, .. } if acked >= index),
        );
    }

    fn handle_snapshot(&mut self, from: NodeId, snapshot: Snapshot) {
        let term = self.term;
        let (index, snap_term) = (snapshot.meta.index, snapshot.meta.term);
        if index >= Index::MAX / 2 {
            return; // not a real log position; ignore rather than overflow later
        }
        if index <= self.log.committed {
            let committed = self.log.committed;
            let log_term = self.log.term(committed).unwrap_or(0);
            self.send(
                from,
                term,
                MessageBody::AppendResponse { reject: false, index: committed, log_term, hint_index: 0 },
            );
            return;
        }
        if self.log.matches(index, snap_term) {
            // We already have the entries; just learn that they are committed.
            self.log.commit_to(index);
        } else {
            tracing::debug!(group = self.cfg.group, node = self.cfg.id, index, "installing snapshot");
            self.conf = snapshot.meta.conf.clone();
            self.snapshot = Some(snapshot.clone());
            // Entries after the snapshot are discarded; so are acknowledgements of them.
            self.drop_acks_from(index + 1);
            self.log.restore(snapshot);
        }
        self.send(from, term, MessageBody::AppendResponse { reject: false, index, log_term: snap_term, hint_index: 0 });
    }

    // ---------------------------------------------------------------- leader

    fn step_leader(&mut self, msg: Message) {
        let from = msg.from;
        if !self.progress.contains_key(&from) {
            if let MessageBody::ReadIndex { id } = msg.body {
                let term = self.term;
                self.send(from, term, MessageBody::ReadIndexResponse { id, index: 0 });
            }
            return; // not a member (removed, or never added)
        }
        if let Some(progress) = self.progress.get_mut(&from) {
            progress.recent_active = true;
        }
        match msg.body {
            MessageBody::AppendResponse { reject, index, log_term, hint_index } => {
                self.handle_append_response(from, reject, index, log_term, hint_index)
            }
            MessageBody::HeartbeatResponse { read_round } => self.handle_heartbeat_response(from, read_round),
            MessageBody::ReadIndex { id } => self.read_index(ReadOrigin::Remote(from), id),
            _ => {}
        }
    }

    fn handle_append_response(&mut self, from: NodeId, reject: bool, index: Index, log_term: Term, hint_index: Index) {
        if reject {
            let hint_term = log_term;
            // Jump over a whole term of mismatching entries at once when the hint allows.
            let next_probe =
                if hint_term > 0 { self.log.find_conflict_by_term(hint_index, hint_term).0 } else { hint_index };
            // A hint beyond our log is meaningless (and must not overflow `hint + 1`).
            let next_probe = next_probe.min(self.log.last_index());
            let progress = self.progress.get_mut(&from).expect("checked by caller");
            if progress.reject(index, next_probe) {
                self.send_append(from, true);
            }
            return;
        }
        if index > self.log.snapshot_index() && self.log.term(index) != Some(log_term) {
            // Acknowledges an entry this leader's log does not hold: it cannot come from our own
            // appends, so it proves nothing. (Defensive; never seen in a correct run.)
            tracing::debug!(
                group = self.cfg.group,
                from,
                index,
                log_term,
                "ignoring acknowledgement of a foreign entry"
            );
            return;
        }
        let progress = self.progress.get_mut(&from).expect("checked by caller");
        let updated = progress.ack(index);
        match progress.state {
            // The follower matches up to `matched`: start pipelining from there.
            ProgressState::Probe => progress.become_replicate(),
            ProgressState::Snapshot { index: snap } if progress.matched >= snap => progress.become_replicate(),
            _ => {}
        }
        if updated && self.maybe_commit() {
            self.broadcast_append();
        } else {
            while self.send_append(from, false) {}
        }
        if let Some((target, _)) = self.transfer {
            if target == from && self.progress[&from].matched == self.log.last_index() {
                let term = self.term;
                self.send(from, term, MessageBody::TimeoutNow);
            }
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, read_round: u64) {
        let last_index = self.log.last_index();
        let progress = self.progress.get_mut(&from).expect("checked by caller");
        progress.probe_sent = false;
        let behind = progress.matched < last_index;
        if behind {
            if let ProgressState::Replicate = progress.state {
                // Appends may have been lost; a probe from the follower's reported position
                // finds the gap (an empty append at `next - 1` gets rejected if so).
                if !progress.can_send(self.cfg.max_inflight_appends) {
                    progress.become_probe();
                }
            }
            self.send_append(from, true);
        }
        let acked = self.acked_round.entry(from).or_insert(0);
        if read_round > *acked {
            *acked = read_round;
            self.release_confirmed_reads();
        }
    }

    /// Appends entries proposed on this leader.
    fn append_entries(&mut self, entries: Vec<(EntryKind, Bytes)>) -> Index {
        let term = self.term;
        let mut index = self.log.last_index();
        let mut batch = Vec::with_capacity(entries.len());
        for (kind, data) in entries {
            index += 1;
            let entry = Entry { term, index, kind, data };
            self.uncommitted_bytes += entry.size_bytes();
            batch.push(entry);
        }
        self.log.append(batch);
        self.pending_broadcast = true;
        // A single voter commits as soon as its own write is durable (see `on_persisted`).
        index
    }

    /// The host reports entries durable up to `index`.
    pub fn on_persisted(&mut self, index: Index) {
        self.log.mark_persisted(index);
        if self.role == Role::Leader {
            let persisted = self.log.persisted();
            let me = self.cfg.id;
            if let Some(progress) = self.progress.get_mut(&me) {
                if progress.ack(persisted) && self.maybe_commit() {
                    self.broadcast_append();
                }
            }
        }
    }

    /// Advances the commit index to the highest index replicated (durably) on a quorum, if that
    /// entry is from the current term (Raft §5.4.2). Returns whether it advanced.
    fn maybe_commit(&mut self) -> bool {
        let mut matched: Vec<Index> =
            self.progress.iter().filter(|(id, _)| self.conf.voters.contains(id)).map(|(_, p)| p.matched).collect();
        if matched.len() < self.quorum() {
            return false;
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_index = matched[self.quorum() - 1];
        if quorum_index <= self.log.committed {
            return false;
        }
        let current_term = self.log.term(quorum_index) == Some(self.term);
        if !current_term && !self.cfg.plants.is(Plant::CommitOldTerm) {
            return false;
        }
        let old = self.log.committed;
        self.log.commit_to(quorum_index);
        let released: u64 = self
            .log
            .slice(old + 1, quorum_index + 1, u64::MAX, u64::MAX)
            .map_or(0, |entries| entries.iter().map(Entry::size_bytes).sum());
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(released);
        if self.log.term(self.log.committed) == Some(self.term) && !self.reads_awaiting_term_commit.is_empty() {
            let committed = self.log.committed;
            for mut read in std::mem::take(&mut self.reads_awaiting_term_commit) {
                read.index = committed;
                self.queue_read(read);
            }
        }
        true
    }

    fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed) == Some(self.term)
    }

    /// Sends the next append (or snapshot) to `to` if flow control allows. Returns whether it
    /// sent something with entries (so the caller may keep filling the window).
    fn send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let max_inflight = self.cfg.max_inflight_appends;
        let Some(progress) = self.progress.get(&to) else { return false };
        if to == self.cfg.id || !progress.can_send(max_inflight) {
            return false;
        }
        let next = progress.next;
        let prev_index = next - 1;
        let prev_term = self.log.term(prev_index);
        let entries =
            self.log.slice(next, self.log.last_index() + 1, self.cfg.max_append_entries, self.cfg.max_append_bytes);
        let (Some(prev_term), Some(entries)) = (prev_term, entries) else {
            return self.send_snapshot(to);
        };
        if entries.is_empty() && !send_if_empty {
            return false;
        }
        let last = entries.last().map(|e| e.index);
        let commit = self.log.committed;
        let term = self.term;
        self.progress.get_mut(&to).expect("checked above").sent_append(last, max_inflight);
        self.send(to, term, MessageBody::Append { prev_index, prev_term, entries, commit });
        last.is_some()
    }

    fn send_snapshot(&mut self, to: NodeId) -> bool {
        let Some(snapshot) = self.snapshot.clone() else {
            // Compacted without a snapshot cannot happen: the log is only compacted up to a
            // durable snapshot that the host handed us.
            debug_assert!(false, "follower {to} needs a snapshot but none is held");
            return false;
        };
        let index = snapshot.meta.index;
        let term = self.term;
        self.progress.get_mut(&to).expect("caller checked").become_snapshot(index);
        self.send(to, term, MessageBody::InstallSnapshot { snapshot });
        false
    }

    pub(crate) fn broadcast_append(&mut self) {
        self.pending_broadcast = false;
        let targets: Vec<NodeId> = self.progress.keys().copied().filter(|&id| id != self.cfg.id).collect();
        for id in targets {
            // Fill each follower's window; send an empty append only to carry a new commit index.
            if !self.send_append(id, false) {
                self.send_append(id, true);
            } else {
                while self.send_append(id, false) {}
            }
        }
    }

    pub(crate) fn flush_broadcast(&mut self) {
        if self.role == Role::Leader && self.pending_broadcast {
            self.broadcast_append();
        }
    }

    fn broadcast_heartbeat(&mut self) {
        let round = self.reads.open_round(self.ticks);
        let me = self.cfg.id;
        self.acked_round.insert(me, round);
        let term = self.term;
        let targets: Vec<(NodeId, Index)> =
            self.progress.iter().filter(|(id, _)| **id != me).map(|(id, p)| (*id, p.matched)).collect();
        for (id, matched) in targets {
            // Never tell a follower to commit beyond what it is known to hold.
            let commit = self.log.committed.min(matched);
            self.send(id, term, MessageBody::Heartbeat { commit, read_round: round });
        }
        // A single voter confirms its own rounds.
        self.release_confirmed_reads();
    }

    /// The highest read round answered by a quorum of voters (this leader included).
    fn quorum_round(&self) -> u64 {
        let mut rounds: Vec<u64> =
            self.conf.voters.iter().map(|id| self.acked_round.get(id).copied().unwrap_or(0)).collect();
        if rounds.len() < self.quorum() {
            return 0;
        }
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        rounds[self.quorum() - 1]
    }

    fn release_confirmed_reads(&mut self) {
        let round = self.quorum_round();
        for read in self.reads.confirm(round) {
            self.answer_read(read);
        }
        // Reads that queued while the last round was in flight get the next round now.
        if !self.reads.queued.is_empty() && !self.reads.has_in_flight() {
            self.broadcast_heartbeat();
        }
    }

    fn answer_read(&mut self, read: PendingRead) {
        match read.origin {
            ReadOrigin::Local => self.read_states.push(ReadState { id: read.id, index: read.index }),
            ReadOrigin::Remote(to) => {
                let term = self.term;
                self.send(to, term, MessageBody::ReadIndexResponse { id: read.id, index: read.index });
            }
        }
    }

    fn lease_valid(&self) -> bool {
        if self.lease_forfeited {
            return false;
        }
        let round = self.quorum_round();
        let Some(sent) = self.reads.sent_tick(round) else { return false };
        // A follower refuses votes until `election_ticks` of its own ticks pass after it hears
        // the round — but its next tick may come an instant after that, so only
        // `election_ticks - 1` of its tick periods are guaranteed. The drift margin applies to
        // that.
        let guaranteed_ticks = (self.cfg.election_ticks as u64).saturating_sub(1);
        let lease_ticks = guaranteed_ticks * (100 - self.cfg.lease_drift_percent as u64) / 100;
        self.ticks < sent + lease_ticks
    }

    /// The host made everything up to a Ready durable, including its hard state's term.
    pub(crate) fn on_term_persisted(&mut self, term: Term) {
        self.persisted_term = self.persisted_term.max(term);
    }

    fn queue_read(&mut self, read: PendingRead) {
        if self.cfg.plants.is(Plant::ReadIndexWithoutQuorum) {
            self.answer_read(read);
            return;
        }
        if self.conf.voters.len() == 1 && self.conf.voters.contains(&self.cfg.id) {
            self.answer_read(read);
            return;
        }
        if self.cfg.read_mode == ReadMode::LeaseBased && self.lease_valid() {
            self.answer_read(read);
            return;
        }
        self.reads.queued.push(read);
        if !self.reads.has_in_flight() {
            self.broadcast_heartbeat();
        }
    }

    /// A linearizable read: the answer (a [`ReadState`] locally, a response to a follower) says
    /// which index the state machine must have applied before the read is served.
    pub(crate) fn read_index(&mut self, origin: ReadOrigin, id: u64) {
        if self.role != Role::Leader {
            if origin == ReadOrigin::Local && self.leader != NO_NODE {
                let (leader, term) = (self.leader, self.term);
                self.send(leader, term, MessageBody::ReadIndex { id });
            }
            return;
        }
        let refuse = self.transfer.is_some()
            || self.reads.pending_count() + self.reads_awaiting_term_commit.len() >= self.cfg.max_pending_reads;
        if refuse {
            if let ReadOrigin::Remote(to) = origin {
                let term = self.term;
                self.send(to, term, MessageBody::ReadIndexResponse { id, index: 0 });
            }
            return;
        }
        let read = PendingRead { origin, id, index: self.log.committed };
        if self.committed_in_current_term() {
            self.queue_read(read);
        } else {
            self.reads_awaiting_term_commit.push(read);
        }
    }

    // ---------------------------------------------------------------- proposals

    fn check_can_propose(&self) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader { leader: self.leader });
        }
        if self.transfer.is_some() {
            return Err(RaftError::TransferInProgress);
        }
        if self.uncommitted_bytes > self.cfg.max_uncommitted_bytes {
            return Err(RaftError::Busy("uncommitted bytes"));
        }
        Ok(())
    }

    pub fn propose(&mut self, data: Bytes) -> Result<Index, RaftError> {
        self.check_can_propose()?;
        Ok(self.append_entries(vec![(EntryKind::Normal, data)]))
    }

    pub fn propose_conf_change(&mut self, change: ConfChange, context: &[u8]) -> Result<Index, RaftError> {
        self.check_can_propose()?;
        if self.pending_conf_index > self.log.applied {
            return Err(RaftError::ConfChangePending);
        }
        if let ConfChange::AddVoter(id) = change {
            if self.conf.learners.contains(&id) {
                let matched = self.progress.get(&id).map_or(0, |p| p.matched);
                if !learner_in_sync(matched, self.log.last_index()) {
                    return Err(RaftError::LearnerNotInSync);
                }
            }
        }
        let next = change.apply_to(&self.conf);
        if next.voters.is_empty() {
            return Err(RaftError::InvalidConfChange("cannot remove the last voter"));
        }
        if next == self.conf {
            return Err(RaftError::InvalidConfChange("membership would not change"));
        }
        let index = self.append_entries(vec![(EntryKind::ConfChange, change.encode_with(context))]);
        self.pending_conf_index = index;
        Ok(index)
    }

    /// The voter a leader about to stop should hand leadership to: the one heard from lately with
    /// the most of the log (then the lowest id). `None` if not leader or alone.
    pub fn transfer_target(&self) -> Option<NodeId> {
        if self.role != Role::Leader {
            return None;
        }
        self.conf
            .voters
            .iter()
            .filter(|&&id| id != self.cfg.id)
            .filter_map(|&id| self.progress.get(&id).map(|p| (p.recent_active, p.matched, std::cmp::Reverse(id))))
            .max()
            .map(|(_, _, std::cmp::Reverse(id))| id)
    }

    /// Hands leadership to `to`: stop taking proposals, bring it up to date, tell it to campaign.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader { leader: self.leader });
        }
        if to == self.cfg.id || !self.conf.voters.contains(&to) {
            return Err(RaftError::InvalidConfChange("transfer target must be another voter"));
        }
        self.transfer = Some((to, 0));
        self.election_elapsed = 0;
        let term = self.term;
        if self.progress[&to].matched == self.log.last_index() {
            self.send(to, term, MessageBody::TimeoutNow);
        } else {
            self.send_append(to, true);
        }
        Ok(())
    }

    // ---------------------------------------------------------------- applying

    /// Applies a committed conf-change entry as it is handed to the host for applying, so the
    /// membership always matches the applied log.
    pub(crate) fn apply_conf_change_entry(&mut self, entry: &Entry) {
        let Some(change) = ConfChange::decode(&entry.data) else {
            tracing::warn!(group = self.cfg.group, index = entry.index, "ignoring malformed conf change entry");
            return;
        };
        self.conf = change.apply_to(&self.conf);
        if self.role != Role::Leader {
            return;
        }
        let next = self.log.last_index() + 1;
        let members: Vec<NodeId> = self.conf.members().collect();
        for id in &members {
            let is_learner = self.conf.learners.contains(id);
            let progress = self.progress.entry(*id).or_insert_with(|| Progress::new(next, is_learner));
            progress.is_learner = is_learner;
            self.acked_round.entry(*id).or_insert(0);
        }
        self.progress.retain(|id, _| members.contains(id));
        self.acked_round.retain(|id, _| members.contains(id));
        if self.transfer.is_some_and(|(target, _)| !self.conf.voters.contains(&target)) {
            self.transfer = None;
        }
        if !self.conf.voters.contains(&self.cfg.id) {
            self.step_down_after_removal();
            return;
        }
        // The quorum changed: entries may now be committed, and new members need the log.
        if self.maybe_commit() {
            self.broadcast_append();
        } else {
            self.pending_broadcast = true;
        }
        self.release_confirmed_reads();
    }

    /// A leader removed from the voters hands over to its most up-to-date voter, then steps down.
    fn step_down_after_removal(&mut self) {
        let best = self
            .progress
            .iter()
            .filter(|(id, _)| self.conf.voters.contains(id))
            .max_by_key(|(id, p)| (p.matched, std::cmp::Reverse(**id)))
            .map(|(id, p)| (*id, p.matched));
        let term = self.term;
        if let Some((id, matched)) = best {
            if matched == self.log.last_index() {
                self.send(id, term, MessageBody::TimeoutNow);
            }
        }
        self.become_follower(term, NO_NODE);
    }

    /// The host made a durable snapshot at `snapshot.meta.index` (applied); the log before it
    /// can go.
    pub fn compact(&mut self, snapshot: Snapshot) {
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        if index <= self.log.snapshot_index() {
            return;
        }
        self.log.compact(index, term);
        self.snapshot = Some(snapshot);
    }

    pub(crate) fn take_committed(&mut self, max_bytes: u64) -> Vec<Entry> {
        let entries = self.log.take_committed(max_bytes);
        for entry in entries.iter().filter(|e| e.kind == EntryKind::ConfChange) {
            self.apply_conf_change_entry(entry);
        }
        entries
    }
}
