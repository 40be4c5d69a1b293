//! The leader's self-healing decisions, once for both hosts: a voter the membership protocol
//! confirmed dead for `replace_dead_after` is replaced by a spare, through the same raft conf
//! changes an operator would propose (MemberAddAsLearner, MemberPromote, MemberRemove). The
//! decisions are [`keel_placement::repair::Repairer`]'s; this module builds its view from raft
//! (the leader's configuration and progress) and from a [`MembershipView`], and turns each step
//! into the conf change and member record to propose. The server polls it from an async task and
//! proposes through its driver; the simulator polls it at its members' ticks and proposes on
//! the node directly — the decisions, the view and the records are the same code.
//!
//! Nothing here changes membership by itself: a detector that is wrong can cost a replacement,
//! never the quorum (the repairer never proposes a step that leaves the group without a live
//! majority, and raft commits every step through that majority).

use std::collections::BTreeSet;

use keel_machine::{MemberCommand, MemberRecord};
pub use keel_placement::repair::RepairStep;
use keel_placement::repair::{GroupView, Peer, RepairConfig, Repairer, Spare};
use keel_placement::{MemberId, ShardId};
use keel_raft::{ConfChange, GroupId, NodeId, RawNode, Role};

use crate::membership::{MemberMeta, MembershipView};

/// What the leader's raft says, each poll.
#[derive(Clone, Debug, Default)]
pub struct RaftView {
    /// (voter, matched index).
    pub voters: Vec<(NodeId, u64)>,
    /// (learner, matched index).
    pub learners: Vec<(NodeId, u64)>,
    pub last_index: u64,
    pub conf_change_pending: bool,
}

impl RaftView {
    /// The view of a group this node leads (None if it does not).
    pub fn of(raw: &RawNode) -> Option<RaftView> {
        let status = raw.status();
        if status.role != Role::Leader {
            return None;
        }
        let matched = |id: NodeId| raw.raft().progress_of(id).map_or(0, |p| p.matched);
        Some(RaftView {
            voters: status.conf.voters.iter().map(|&id| (id, matched(id))).collect(),
            learners: status.conf.learners.iter().map(|&id| (id, matched(id))).collect(),
            last_index: status.last_index,
            conf_change_pending: raw.raft().conf_change_pending(),
        })
    }
}

/// The policy both hosts use, from the one operator setting.
pub fn repair_config(replace_dead_after_us: u64) -> RepairConfig {
    RepairConfig {
        replace_dead_after_us,
        // One replacement at a time, at most one starting per replace-dead-after (and at least a
        // few seconds apart): a wave of deaths is repaired one by one.
        min_interval_us: replace_dead_after_us.clamp(2_000_000, 30_000_000),
        // Restoring the replica count beats waiting for a spare in a new zone: three voters in
        // two zones survive any one member's failure, two voters survive none. A spare in a zone
        // the survivors do not use is still always preferred.
        allow_shared_domain: true,
        ..RepairConfig::default()
    }
}

/// One poll's result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Poll {
    /// Voters confirmed dead and not yet replaced (0 when not leading).
    pub under_replicated: u64,
    /// The step to propose now, if any.
    pub step: Option<RepairStep>,
    /// A new leadership took over a replacement its predecessor started: (dead, learner).
    pub adopted: Option<(NodeId, NodeId)>,
}

/// One group's healer, on every member (it acts only while that member leads).
pub struct Healer {
    group: GroupId,
    cfg: RepairConfig,
    /// Only while leading: a later leadership starts from a fresh view.
    repairer: Option<Repairer>,
}

impl Healer {
    pub fn new(group: GroupId, cfg: RepairConfig) -> Healer {
        Healer { group, cfg, repairer: None }
    }

    /// Decides what to do now. `raft`: None unless this member leads the group. `not_spares`:
    /// processes that can no longer be spares although they may say so — the cluster's members
    /// by its records, and the removed ones (a replaced member that comes back must be refused,
    /// not recruited again).
    pub fn poll(
        &mut self,
        now_us: u64,
        raft: Option<&RaftView>,
        view: &MembershipView,
        not_spares: &BTreeSet<NodeId>,
    ) -> Poll {
        let Some(raft) = raft else {
            self.repairer = None;
            return Poll::default();
        };
        let repairer = self.repairer.get_or_insert_with(|| Repairer::new(self.cfg.clone()));
        let peer = |&(id, matched): &(NodeId, u64)| Peer {
            id: MemberId(id),
            domain: view.domain(id),
            dead_since_us: view.dead_for_us(id, now_us).map(|dead| now_us.saturating_sub(dead)),
            matched,
        };
        let voters: Vec<Peer> = raft.voters.iter().map(peer).collect();
        let learners: Vec<Peer> = raft.learners.iter().map(peer).collect();
        let in_conf = |id: NodeId| raft.voters.iter().chain(&raft.learners).any(|&(member, _)| member == id);
        let spares: Vec<Spare> = view
            .spares()
            .filter(|&(id, _)| !not_spares.contains(&id) && !in_conf(id))
            .map(|(id, _)| Spare { id: MemberId(id), domain: view.domain(id) })
            .collect();
        let group_view = GroupView {
            now_us,
            shard: ShardId(self.group),
            voters: &voters,
            learners: &learners,
            spares: &spares,
            last_index: raft.last_index,
            conf_change_pending: raft.conf_change_pending,
        };
        let mut adopted = None;
        if repairer.in_progress().is_none() {
            // A learner that is a spare (one a previous leader added to replace a dead voter) is
            // adopted, not left beside a second replacement. At every poll, not only the first
            // of a leadership: a leader that just restarted has a fresh membership view, and the
            // dead voter is only confirmed dead again a few periods later.
            adopted = adopt(repairer, &voters, &learners, view, now_us);
        }
        let step = repairer.next_step(&group_view);
        let under_replicated = repairer.under_replicated(&group_view).len() as u64;
        Poll { under_replicated, step, adopted }
    }
}

impl Healer {
    /// The host's proposal of `step` was refused outright (not proposed at all): decide it
    /// again at the next poll rather than after the reissue interval. A leader handing over
    /// (a fail-slow hand-off that keeps failing) refuses every proposal for a while; a repair
    /// retried only every few seconds could keep landing in those windows.
    pub fn refused(&mut self, step: RepairStep) {
        if let Some(repairer) = self.repairer.as_mut() {
            repairer.refused(step);
        }
    }
}

/// Adopts the longest-dead voter's replacement a previous leader left as a learner, if any.
fn adopt(
    repairer: &mut Repairer,
    voters: &[Peer],
    learners: &[Peer],
    view: &MembershipView,
    now_us: u64,
) -> Option<(NodeId, NodeId)> {
    let (_, dead) = voters.iter().filter_map(|p| p.dead_since_us.map(|since| (since, p.id))).min()?;
    let learner = learners.iter().find(|learner| {
        learner.dead_since_us.is_none()
            && view.members.get(&learner.id.0).and_then(|m| m.meta.as_ref()).is_some_and(|meta| meta.spare)
    })?;
    repairer.adopt(dead, learner.id, now_us).then_some((dead.0, learner.id.0))
}

/// The member record a spare gets, from what it says of itself. `id_matches` is the host's
/// check that the id belongs to that peer URL (the server derives ids from the cluster token and
/// the URL; a description that does not match is not trusted).
pub fn spare_record(
    view: &MembershipView,
    id: NodeId,
    id_matches: impl FnOnce(NodeId, &MemberMeta) -> bool,
) -> Option<MemberRecord> {
    let meta = view.members.get(&id)?.meta.clone()?;
    if !id_matches(id, &meta) {
        return None;
    }
    Some(MemberRecord {
        id,
        name: meta.name,
        peer_urls: vec![meta.peer_url],
        client_urls: meta.client_urls,
        learner: true,
    })
}

/// The conf change and member record that carry out `step` (None: an AddLearner whose spare has
/// no usable record; the next poll tries again).
pub fn conf_change(step: RepairStep, spare: Option<MemberRecord>) -> Option<(ConfChange, MemberCommand)> {
    Some(match step {
        RepairStep::AddLearner { spare: id, .. } => {
            let record = spare.filter(|r| r.id == id.0)?;
            (ConfChange::AddLearner(id.0), MemberCommand::Add(record))
        }
        RepairStep::Promote { learner, .. } => (ConfChange::AddVoter(learner.0), MemberCommand::Promote(learner.0)),
        RepairStep::RemoveDead { dead } => (ConfChange::Remove(dead.0), MemberCommand::Remove(dead.0)),
        RepairStep::RemoveLearner { learner } => (ConfChange::Remove(learner.0), MemberCommand::Remove(learner.0)),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use keel_membership::Liveness;

    use super::*;
    use crate::membership::Seen;

    const WAIT_US: u64 = 2_000_000;

    fn seen(liveness: Liveness, spare: bool) -> Seen {
        let meta = MemberMeta {
            name: String::new(),
            peer_url: String::new(),
            client_urls: Vec::new(),
            zone: String::new(),
            spare,
        };
        Seen { liveness, incarnation: 1, meta: Some(meta), since_us: 0 }
    }

    #[test]
    fn a_restarted_leader_adopts_the_half_done_replacement_once_it_sees_the_voter_dead() {
        // The previous leader added spare 4 as a learner to replace voter 3 and went down. This
        // member now leads, with a fresh membership view: 3 still looks alive at first.
        let mut view = MembershipView {
            me: 1,
            members: BTreeMap::from([
                (1, seen(Liveness::Alive, false)),
                (2, seen(Liveness::Alive, false)),
                (3, seen(Liveness::Alive, false)),
                (4, seen(Liveness::Alive, true)),
            ]),
        };
        let raft = RaftView {
            voters: vec![(1, 50), (2, 50), (3, 10)],
            learners: vec![(4, 50)],
            last_index: 50,
            conf_change_pending: false,
        };
        let mut healer = Healer::new(1, repair_config(WAIT_US));
        let none = BTreeSet::new();
        assert_eq!(healer.poll(0, Some(&raft), &view, &none), Poll::default(), "nothing is dead yet");
        // A few periods later the protocol confirms 3 dead, and the wait passes.
        view.members.insert(3, Seen { since_us: 1_000_000, ..seen(Liveness::Dead, false) });
        let poll = healer.poll(1_000_000 + WAIT_US + 1, Some(&raft), &view, &none);
        assert_eq!(poll.adopted, Some((3, 4)), "the learner is taken over: {poll:?}");
        assert_eq!(
            poll.step,
            Some(RepairStep::Promote { learner: MemberId(4), replacing: MemberId(3) }),
            "and promoted, not left beside a second replacement"
        );
        assert_eq!(poll.under_replicated, 1);
    }

    #[test]
    fn a_member_that_does_not_lead_decides_nothing_and_a_removed_one_is_no_spare() {
        let view = MembershipView {
            me: 1,
            members: BTreeMap::from([
                (1, seen(Liveness::Alive, false)),
                (2, seen(Liveness::Alive, false)),
                (3, Seen { since_us: 0, ..seen(Liveness::Dead, false) }),
                (5, seen(Liveness::Alive, true)),
            ]),
        };
        let mut healer = Healer::new(1, repair_config(WAIT_US));
        assert_eq!(healer.poll(WAIT_US * 10, None, &view, &BTreeSet::new()), Poll::default());
        let raft = RaftView {
            voters: vec![(1, 50), (2, 50), (3, 10)],
            learners: vec![],
            last_index: 50,
            conf_change_pending: false,
        };
        // 5 says it is a spare, but the records say it was removed: it must not be recruited.
        let poll = healer.poll(WAIT_US * 10, Some(&raft), &view, &BTreeSet::from([5]));
        assert_eq!((poll.step, poll.under_replicated), (None, 1), "{poll:?}");
        let poll = healer.poll(WAIT_US * 10 + 1, Some(&raft), &view, &BTreeSet::new());
        assert!(matches!(poll.step, Some(RepairStep::AddLearner { spare: MemberId(5), .. })), "{poll:?}");
    }
}
