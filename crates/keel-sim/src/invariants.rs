//! Safety invariants, checked as the run goes (after every step, every write, every send).
//!
//! Each check names the property it guards (Raft paper §5 / Figure 3, and the persistence
//! contract documented in keel-raft):
//! - election safety: at most one leader per term and group;
//! - log matching: an (index, term) pair names one entry, and its predecessor's term is fixed;
//! - leader completeness: a new leader holds every entry committed before its term;
//! - state-machine safety: no two members apply different commands at one index;
//! - committed entries are durable on a quorum when they are committed, and are never lost;
//! - leaders commit only entries of their own term by counting (§5.4.2);
//! - monotonic term, commit and applied index within a run of a member; a durable vote never
//!   changes within a term;
//! - `first_index - 1 <= applied <= commit <= last_index` on every member;
//! - the persistence contract: every vote grant, vote request and append acknowledgement is
//!   covered by the sender's durable state at the moment it is sent, and a leader's traffic
//!   never names a term the leader has not made durable.

use std::collections::{BTreeMap, BTreeSet};

use keel_node::{GroupWrite, Node};
use keel_raft::{Entry, GroupId, HardState, Index, Message, MessageBody, NodeId, Role, Term, NO_NODE};

use crate::disk::DurableModel;
use crate::kv::hash_bytes;
use crate::machine::SimMachine;

#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    incarnation: u64,
    term: Term,
    commit: Index,
    applied: Index,
    role: Option<Role>,
}

#[derive(Default)]
pub struct Invariants {
    pub violations: Vec<String>,
    /// (group, term) -> leader.
    leaders: BTreeMap<(GroupId, Term), NodeId>,
    /// (group, index, term) -> (entry hash, predecessor's term if known).
    entries: BTreeMap<(GroupId, Index, Term), (u64, Option<Term>)>,
    /// (group, index) -> (term of the committed entry, term in which it was first seen committed).
    /// Leader completeness binds leaders of *later* terms only: a leader of an older term can
    /// still exist for a moment (it won its election before the newer commits and has not heard
    /// of them yet).
    committed: BTreeMap<(GroupId, Index), (Term, Term)>,
    committed_max: BTreeMap<GroupId, Index>,
    /// (group, index) -> hash of the command applied there.
    applied: BTreeMap<(GroupId, Index), u64>,
    seen: BTreeMap<(NodeId, GroupId), Seen>,
    durable: BTreeMap<(NodeId, GroupId), HardState>,
    removed: BTreeSet<(NodeId, GroupId)>,
    /// Each member's voter set as of the previous check: a conf change applied in the same step
    /// as the commit it rode on must not change the quorum that commit was counted against.
    voters_before: BTreeMap<(NodeId, GroupId), Vec<NodeId>>,
}

impl Invariants {
    pub fn violation(&mut self, text: String) {
        if self.violations.len() < 20 {
            self.violations.push(text);
        }
    }

    /// A restarted member's log below its machine's durable index holds only committed entries:
    /// raft takes everything up to there as applied, so a different entry there (a suffix that
    /// lost, which the snapshot that moved the machine past it should have discarded) could never
    /// be replaced.
    pub fn check_log_below_applied(&mut self, id: NodeId, group: GroupId, entries: &[Entry], applied: Index) {
        for entry in entries.iter().take_while(|e| e.index <= applied) {
            if let Some(&(term, _)) = self.committed.get(&(group, entry.index)) {
                if term != entry.term {
                    self.violation(format!(
                        "n{id} g{group}: the log holds entry {} of term {} at or below the machine's index {applied}, \
                         but the committed entry there is of term {term}",
                        entry.index, entry.term
                    ));
                    return;
                }
            }
        }
    }

    pub fn committed_count(&self) -> u64 {
        self.committed_max.values().sum()
    }

    /// A member (re)started: what it held only in memory is gone, so its volatile marks start
    /// afresh. What it held durably is checked in `on_durable`.
    pub fn on_start(&mut self, id: NodeId, incarnation: u64) {
        for ((node, _), seen) in self.seen.iter_mut() {
            if *node == id {
                *seen = Seen { incarnation, ..Default::default() };
            }
        }
    }

    pub fn on_removed(&mut self, id: NodeId, group: GroupId) {
        self.removed.insert((id, group));
    }

    /// Log matching, checked on every entry any member writes.
    pub fn on_write(&mut self, id: NodeId, write: &GroupWrite, node: &Node<SimMachine>) {
        let group = write.group;
        let mut prev_term = write.entries.first().and_then(|first| node.raw(group)?.term_at(first.index - 1));
        for entry in &write.entries {
            let mut bytes = entry.data.to_vec();
            bytes.push(entry.kind as u8);
            let hash = hash_bytes(&bytes);
            match self.entries.get(&(group, entry.index, entry.term)).copied() {
                Some((known_hash, known_prev)) => {
                    if known_hash != hash {
                        self.violation(format!(
                            "log matching: n{id} g{group} writes a different entry at ({}, {})",
                            entry.index, entry.term
                        ));
                    }
                    if let (Some(a), Some(b)) = (known_prev, prev_term) {
                        if a != b {
                            self.violation(format!(
                                "log matching: n{id} g{group} entry ({}, {}) follows term {b}, elsewhere term {a}",
                                entry.index, entry.term
                            ));
                        }
                    }
                }
                None => {
                    self.entries.insert((group, entry.index, entry.term), (hash, prev_term));
                }
            }
            prev_term = Some(entry.term);
        }
    }

    /// A vote once durable never changes within its term; the durable term never goes back.
    pub fn on_durable(&mut self, id: NodeId, disk: &DurableModel) {
        for (&group, durable) in &disk.groups {
            let now = durable.hard_state;
            if let Some(before) = self.durable.insert((id, group), now) {
                if now.term < before.term {
                    self.violation(format!(
                        "n{id} g{group}: durable term went back from {} to {}",
                        before.term, now.term
                    ));
                }
                if now.term == before.term && before.vote != NO_NODE && now.vote != before.vote {
                    self.violation(format!(
                        "n{id} g{group}: voted twice in term {}: n{} then n{}",
                        now.term, before.vote, now.vote
                    ));
                }
            }
        }
    }

    /// The persistence contract, at the moment a message leaves.
    pub fn on_send(&mut self, msg: &Message, disk: &DurableModel) {
        let durable = disk.group(msg.group);
        let hard = durable.map(|d| d.hard_state).unwrap_or_default();
        match msg.body {
            MessageBody::VoteResponse { reject: false, .. }
                if !(hard.term > msg.term || (hard.term == msg.term && hard.vote == msg.to)) =>
            {
                self.violation(format!(
                    "persistence: n{} granted its vote to n{} in term {} but durably holds term {} vote {}",
                    msg.from, msg.to, msg.term, hard.term, hard.vote
                ));
            }
            MessageBody::Vote { .. } if !(hard.term > msg.term || (hard.term == msg.term && hard.vote == msg.from)) => {
                self.violation(format!(
                    "persistence: n{} asked for votes in term {} but durably holds term {} vote {}",
                    msg.from, msg.term, hard.term, hard.vote
                ));
            }
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. }
            | MessageBody::TimeoutNow
                if hard.term < msg.term =>
            {
                self.violation(format!(
                    "persistence: n{} sent {} in term {} but durably holds term {}",
                    msg.from,
                    msg.body.name(),
                    msg.term,
                    hard.term
                ));
            }
            MessageBody::AppendResponse { reject: false, index, log_term, .. } => {
                let Some(durable) = durable else {
                    self.violation(format!(
                        "persistence: n{} acknowledged index {index} with nothing durable",
                        msg.from
                    ));
                    return;
                };
                if index <= durable.snapshot_index() {
                    return;
                }
                let on_disk = durable.term(index);
                if on_disk != Some(log_term) {
                    self.violation(format!(
                        "persistence: n{} acknowledged index {index} term {log_term} but its durable log holds {on_disk:?} (last {})",
                        msg.from,
                        durable.last_index()
                    ));
                }
            }
            _ => {}
        }
    }

    /// State-machine safety: one command per index, whoever applies it.
    pub fn on_apply(&mut self, id: NodeId, group: GroupId, applied: &[(Index, u64)]) {
        for &(index, hash) in applied {
            match self.applied.get(&(group, index)) {
                Some(&known) if known != hash => {
                    self.violation(format!(
                        "state machine safety: n{id} g{group} applied a different command at {index}"
                    ));
                }
                Some(_) => {}
                None => {
                    self.applied.insert((group, index), hash);
                }
            }
        }
    }

    pub fn check_node(
        &mut self,
        id: NodeId,
        incarnation: u64,
        node: &Node<SimMachine>,
        disks: &BTreeMap<NodeId, &DurableModel>,
    ) {
        let groups: Vec<GroupId> = node.group_ids().collect();
        for group in groups {
            self.check_group(id, incarnation, node, group, disks);
            let voters = node.status(group).map(|s| s.conf.voters.into_iter().collect()).unwrap_or_default();
            self.voters_before.insert((id, group), voters);
        }
    }

    fn check_group(
        &mut self,
        id: NodeId,
        incarnation: u64,
        node: &Node<SimMachine>,
        group: GroupId,
        disks: &BTreeMap<NodeId, &DurableModel>,
    ) {
        let raw = node.raw(group).expect("group listed by the node");
        let status = raw.status();
        let hard = status.hard_state;
        // Ordering of the log marks.
        let applied_floor = if status.snapshot_pending { 0 } else { status.first_index - 1 };
        if !(applied_floor <= status.applied && status.applied <= hard.commit && hard.commit <= status.last_index) {
            self.violation(format!(
                "n{id} g{group}: marks out of order: first={} applied={} commit={} last={}",
                status.first_index, status.applied, hard.commit, status.last_index
            ));
        }
        let seen = *self.seen.entry((id, group)).or_insert(Seen { incarnation, ..Default::default() });
        let mut seen_now = seen;
        let same_run = seen.incarnation == incarnation || seen.incarnation == 0;
        if same_run && (hard.term < seen.term || hard.commit < seen.commit || status.applied < seen.applied) {
            self.violation(format!(
                "n{id} g{group}: went backwards: term {}->{}, commit {}->{}, applied {}->{}",
                seen.term, hard.term, seen.commit, hard.commit, seen.applied, status.applied
            ));
        }
        // After a restart the term comes from disk: it may be lower than what was only in memory,
        // never lower than what was durable (checked in on_durable).
        let became_leader = status.role == Role::Leader && (seen.role != Some(Role::Leader) || hard.term != seen.term);
        let old_commit = if seen.incarnation == incarnation { seen.commit } else { 0 };
        seen_now.incarnation = incarnation;
        seen_now.term = hard.term;
        seen_now.commit = hard.commit;
        seen_now.applied = status.applied;
        seen_now.role = Some(status.role);
        self.seen.insert((id, group), seen_now);

        if status.role == Role::Leader {
            if let Some(&other) = self.leaders.get(&(group, hard.term)) {
                if other != id {
                    self.violation(format!(
                        "election safety: n{other} and n{id} both lead g{group} in term {}",
                        hard.term
                    ));
                }
            } else {
                self.leaders.insert((group, hard.term), id);
            }
        }
        if became_leader {
            self.check_leader_completeness(id, group, raw);
        }
        if hard.commit > old_commit {
            self.record_commits(
                id,
                group,
                raw,
                old_commit,
                hard.commit,
                status.role == Role::Leader && !became_leader,
                disks,
            );
        }
    }

    fn check_leader_completeness(&mut self, id: NodeId, group: GroupId, raw: &keel_raft::RawNode) {
        let status = raw.status();
        let leader_term = status.hard_state.term;
        let from = status.first_index.max(1);
        let binding: Vec<(Index, Term)> = self
            .committed
            .range((group, from)..(group, Index::MAX))
            .filter(|(_, (_, seen_in))| *seen_in < leader_term)
            .map(|((_, index), (term, _))| (*index, *term))
            .collect();
        let missing: Vec<Index> = binding
            .iter()
            .filter(|(index, term)| raw.term_at(*index) != Some(*term))
            .map(|(index, _)| *index)
            .take(3)
            .collect();
        if !missing.is_empty() {
            self.violation(format!(
                "leader completeness: n{id} leads g{group} in term {leader_term} without entries committed in earlier terms at {missing:?} (last index {})",
                status.last_index
            ));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record_commits(
        &mut self,
        id: NodeId,
        group: GroupId,
        raw: &keel_raft::RawNode,
        old: Index,
        new: Index,
        by_leader: bool,
        disks: &BTreeMap<NodeId, &DurableModel>,
    ) {
        let term_now = raw.status().hard_state.term;
        if by_leader && raw.term_at(new).is_some_and(|t| t != term_now) {
            self.violation(format!(
                "commit rule: leader n{id} of g{group} term {term_now} committed index {new} of term {:?} by counting",
                raw.term_at(new)
            ));
        }
        let max_before = self.committed_max.get(&group).copied().unwrap_or(0);
        let voters_now: Vec<NodeId> = raw.status().conf.voters.into_iter().collect();
        let voters_then = self.voters_before.get(&(id, group)).cloned().unwrap_or_else(|| voters_now.clone());
        for index in (old + 1).max(raw.status().first_index)..=new {
            let Some(term) = raw.term_at(index) else { continue };
            match self.committed.get(&(group, index)).map(|(known, _)| *known) {
                Some(known) if known != term => {
                    self.violation(format!(
                        "committed entry lost: g{group} index {index} was committed at term {known}, n{id} commits term {term}"
                    ));
                    return;
                }
                Some(_) => {}
                None => {
                    self.committed.insert((group, index), (term, term_now));
                }
            }
        }
        if new > max_before {
            self.committed_max.insert(group, new);
            // The newest committed entry must be durable on a quorum of voters right now.
            if let Some(term) = raw.term_at(new) {
                let durable_on = |voters: &[NodeId]| {
                    voters
                        .iter()
                        .filter(|v| {
                            disks
                                .get(v)
                                .and_then(|d| d.group(group))
                                .is_some_and(|d| d.snapshot_index() >= new || d.term(new) == Some(term))
                        })
                        .count()
                };
                let quorum_of = |voters: &[NodeId]| voters.is_empty() || durable_on(voters) > voters.len() / 2;
                if !quorum_of(&voters_then) && !quorum_of(&voters_now) {
                    self.violation(format!(
                        "durability: g{group} index {new} (term {term}) committed (seen at n{id}) but durable on only {} of voters {voters_now:?}",
                        durable_on(&voters_now)
                    ));
                }
            }
        }
    }
}
