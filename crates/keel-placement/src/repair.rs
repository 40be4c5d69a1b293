//! [`Repairer`]: the raft leader's decision of the next membership step that heals its group
//! after a voter died.
//!
//! Sans-IO like the rest of the crate: the server (on the leader only) calls
//! [`Repairer::next_step`] every ~100 ms with a fresh [`GroupView`] built from raft's own
//! configuration and progress plus the membership protocol's verdicts, and carries out the
//! returned [`RepairStep`] as a raft conf change. Raft stays the only way membership changes.
//!
//! Replacing a dead voter `D` takes three conf changes, one at a time:
//!
//! 1. [`RepairStep::AddLearner`]: a spare `S` (chosen by [`Placement::replacement`], failure
//!    domains first) joins as a learner. Learners do not vote, so the quorum is unchanged while
//!    `S` receives a snapshot and catches up, however long that takes.
//! 2. [`RepairStep::Promote`]: once `S` is alive and within
//!    [`RepairConfig::caught_up_entries`] of the leader, it becomes a voter. Promoting a learner
//!    that lags would make it a voter that cannot help commit for a while.
//! 3. [`RepairStep::RemoveDead`]: `D` leaves. Adding before removing means the group never has
//!    fewer live voters than before the repair started.
//!
//! The repairer keeps almost no state: it infers progress from the view (`S` appears among the
//! learners, then among the voters, `D` disappears). A proposal that got lost (a dropped
//! message, a leader that stepped down and back) is therefore simply issued again on a later
//! call; to avoid proposing every 100 ms while a proposal is slow to show up, an identical step
//! is re-issued at most once per [`RepairConfig::reissue_after_us`].
//!
//! What it remembers is the replacement in flight (so that it finishes the one it started and
//! never runs two), when the last one started (the rate limit), spares it gave up on, and
//! counters. One `Repairer` serves one raft group; create it when this process becomes the
//! group's leader. A new leader does not know its predecessor's replacement in flight: that
//! learner is then "not ours" and left alone (see [`Repairer::next_step`]).

use std::collections::BTreeMap;

use crate::{Assignment, Member, MemberId, Placement, PlacementConfig, Replacement, ShardId, MAX_REPLICATION_FACTOR};

/// Timing and policy of repairs. Every duration is in microseconds of the caller's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairConfig {
    /// A voter must have been confirmed dead (by the membership protocol) this long before it
    /// is replaced. A restart or a short partition should not cost a snapshot transfer.
    pub replace_dead_after_us: u64,
    /// At least this long between starting two replacements of this group (rate limit), so a
    /// flapping detector or a wave of failures cannot keep the group reconfiguring.
    pub min_interval_us: u64,
    /// A learner is promoted once its matched index is within this many entries of the
    /// leader's last index.
    pub caught_up_entries: u64,
    /// Give up on a spare that has not caught up this long after its replacement started
    /// (remove it, try another spare later). The same spare is not chosen again for this long
    /// after being given up on.
    pub catch_up_timeout_us: u64,
    /// Whether a spare sharing a failure domain with a surviving voter may be used
    /// ([`Replacement::SharedDomain`]). If not, the repairer waits for a spare in a new domain.
    pub allow_shared_domain: bool,
    /// An identical step is returned again (a proposal presumed lost) at most this often.
    /// A step that differs from the last one (because the view moved on) is returned at once.
    pub reissue_after_us: u64,
}

impl Default for RepairConfig {
    fn default() -> RepairConfig {
        RepairConfig {
            replace_dead_after_us: 60_000_000,
            min_interval_us: 30_000_000,
            caught_up_entries: 100,
            catch_up_timeout_us: 600_000_000,
            allow_shared_domain: false,
            reissue_after_us: 5_000_000,
        }
    }
}

/// One raft group as its leader sees it now.
#[derive(Clone, Copy, Debug)]
pub struct GroupView<'a> {
    pub now_us: u64,
    pub shard: ShardId,
    /// Current raft voters, the leader included.
    pub voters: &'a [Peer],
    /// Current raft learners.
    pub learners: &'a [Peer],
    /// Alive processes holding no replica of this group: the candidates.
    pub spares: &'a [Spare],
    /// The leader's last log index.
    pub last_index: u64,
    /// A conf change is proposed but not applied yet.
    pub conf_change_pending: bool,
}

/// A voter or learner of the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: MemberId,
    pub domain: String,
    /// When the membership protocol confirmed it dead; None while alive or only suspected.
    pub dead_since_us: Option<u64>,
    /// The highest log index known to be replicated on it.
    pub matched: u64,
}

/// An alive process that could hold a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spare {
    pub id: MemberId,
    pub domain: String,
}

/// The next conf change to propose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepairStep {
    /// Add `spare` as a learner, to replace the dead voter `replacing`. `shares_domain`: the
    /// spare shares a failure domain with a surviving voter.
    AddLearner { spare: MemberId, replacing: MemberId, shares_domain: bool },
    /// Make the caught-up `learner` a voter.
    Promote { learner: MemberId, replacing: MemberId },
    /// Remove the voter `dead`, now that its replacement votes.
    RemoveDead { dead: MemberId },
    /// Abandon a learner of ours that died or never caught up.
    RemoveLearner { learner: MemberId },
}

/// Counters since the repairer was created.
///
/// `waiting_for_spare` and `refused_for_quorum` count *episodes*: consecutive calls blocked for
/// the same reason count once, so the figures do not depend on how often the server polls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepairStats {
    /// Replacements started (first AddLearner of each).
    pub replacements_started: u64,
    /// Spares seen promoted to voter.
    pub promoted: u64,
    /// Dead voters seen removed: replacements completed.
    pub removed: u64,
    /// Replacements given up on (learner died, did not catch up, or never showed up).
    pub abandoned: u64,
    /// Episodes of a dead voter waiting for a (suitable) spare.
    pub waiting_for_spare: u64,
    /// Episodes of a step refused because the group would lack (or lacks) a live majority.
    pub refused_for_quorum: u64,
}

/// Decides the next step that heals one raft group. See the module documentation.
#[derive(Clone, Debug)]
pub struct Repairer {
    cfg: RepairConfig,
    job: Option<Job>,
    /// When the last replacement started (for the rate limit).
    last_start_us: Option<u64>,
    /// Spares given up on, and until when they are not chosen again.
    avoid: BTreeMap<MemberId, u64>,
    /// The last step returned and when, to throttle re-issuing it.
    last_issued: Option<(RepairStep, u64)>,
    /// Why the previous call could not act, for counting episodes.
    blocked: Option<Blocked>,
    /// A dead voter of an even group this repairer chose to remove (outside a replacement): it
    /// counts as removed once the view no longer lists it.
    removing: Option<MemberId>,
    stats: RepairStats,
}

/// The replacement in flight.
#[derive(Clone, Copy, Debug)]
struct Job {
    dead: MemberId,
    spare: MemberId,
    shares_domain: bool,
    started_us: u64,
    /// The spare has been seen as a learner.
    seen_learner: bool,
    /// The spare has been seen as a voter.
    promoted: bool,
    /// We decided to remove the learner; the job ends when it is gone.
    abandoning: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blocked {
    WaitingForSpare,
    Quorum,
}

/// What one call decided, before throttling and counting.
enum Outcome {
    Step(RepairStep),
    /// Something is under way (catching up, rate limit, a proposal in flight).
    Wait,
    Blocked(Blocked),
    /// Nothing needs repair.
    Nothing,
}

fn find(peers: &[Peer], id: MemberId) -> Option<&Peer> {
    peers.iter().find(|peer| peer.id == id)
}

fn alive(peers: &[Peer]) -> usize {
    peers.iter().filter(|peer| peer.dead_since_us.is_none()).count()
}

/// Whether `alive` of `voters` is a majority (raft can commit).
/// The leader's own promotion rule (keel-raft's `learner_in_sync`, etcd's `isLearnerReady`): a
/// learner holding less than 90 % of the leader's log is refused, so the repairer does not ask.
/// On a short log this is stricter than [`RepairConfig::caught_up_entries`].
fn holds_nine_tenths(matched: u64, leader_last: u64) -> bool {
    u128::from(matched) * 10 >= u128::from(leader_last) * 9
}

fn majority(voters: usize, alive: usize) -> bool {
    alive > voters / 2
}

impl Repairer {
    pub fn new(cfg: RepairConfig) -> Repairer {
        Repairer {
            cfg,
            job: None,
            last_start_us: None,
            avoid: BTreeMap::new(),
            last_issued: None,
            blocked: None,
            removing: None,
            stats: RepairStats::default(),
        }
    }

    pub fn config(&self) -> &RepairConfig {
        &self.cfg
    }

    /// The next conf change to propose, or None (nothing to do, something under way, or
    /// blocked: see [`RepairStats`]).
    ///
    /// - Nothing while `conf_change_pending`: raft applies one conf change at a time, and the
    ///   view is about to change.
    /// - A replacement in flight is continued from what the view shows, and finished even if
    ///   its dead voter comes back alive: once AddLearner went out it may be applied at any
    ///   time, and dropping the replacement then would strand a learner nobody owns (and a
    ///   voter confirmed dead for `replace_dead_after_us` that returns is suspect anyway).
    /// - Otherwise a voter confirmed dead for at least `replace_dead_after_us` (the longest
    ///   dead first) gets a replacement, if the group has a live majority, the rate limit
    ///   allows, and a suitable spare exists.
    /// - Every step keeps a live majority both of the current voters (or it could not commit)
    ///   and of the voters after it.
    /// - Learners this repairer did not add (an operator's, a previous leader's) are left alone.
    pub fn next_step(&mut self, view: &GroupView) -> Option<RepairStep> {
        let now = view.now_us;
        self.avoid.retain(|_, until| *until > now);
        if let Some(dead) = self.removing {
            if find(view.voters, dead).is_none() {
                self.stats.removed += 1;
                self.removing = None;
            }
        }
        if view.conf_change_pending {
            return None;
        }
        let outcome = match self.job {
            Some(job) => match self.advance(view, job) {
                Some(outcome) => outcome,
                None => self.start(view),
            },
            None => self.start(view),
        };
        match outcome {
            Outcome::Step(step) => {
                self.blocked = None;
                if let Some((last, at)) = self.last_issued {
                    if last == step && now.saturating_sub(at) < self.cfg.reissue_after_us {
                        return None;
                    }
                }
                self.last_issued = Some((step, now));
                Some(step)
            }
            Outcome::Blocked(reason) => {
                if self.blocked != Some(reason) {
                    self.blocked = Some(reason);
                    match reason {
                        Blocked::WaitingForSpare => self.stats.waiting_for_spare += 1,
                        Blocked::Quorum => self.stats.refused_for_quorum += 1,
                    }
                }
                None
            }
            Outcome::Wait | Outcome::Nothing => {
                self.blocked = None;
                None
            }
        }
    }

    /// `step` if it keeps a live majority of the current voters and of the `voters_after`
    /// voters (`alive_after` of them alive) it leads to.
    fn guarded(view: &GroupView, step: RepairStep, voters_after: usize, alive_after: usize) -> Outcome {
        if majority(view.voters.len(), alive(view.voters)) && majority(voters_after, alive_after) {
            Outcome::Step(step)
        } else {
            Outcome::Blocked(Blocked::Quorum)
        }
    }

    /// The next step of the replacement in flight, or None once it has ended (completed or
    /// given up), so that the caller may consider the next one.
    fn advance(&mut self, view: &GroupView, mut job: Job) -> Option<Outcome> {
        let now = view.now_us;
        let (voters, alive_voters) = (view.voters.len(), alive(view.voters));
        if let Some(learner) = find(view.learners, job.spare) {
            job.seen_learner = true;
            self.job = Some(job);
            let remove = RepairStep::RemoveLearner { learner: job.spare };
            if job.abandoning {
                return Some(Self::guarded(view, remove, voters, alive_voters));
            }
            let alive = learner.dead_since_us.is_none();
            let caught_up = view.last_index.saturating_sub(learner.matched) <= self.cfg.caught_up_entries
                && holds_nine_tenths(learner.matched, view.last_index);
            let overdue = now.saturating_sub(job.started_us) >= self.cfg.catch_up_timeout_us;
            if !alive || (overdue && !caught_up) {
                self.job = Some(Job { abandoning: true, ..job });
                self.stats.abandoned += 1;
                return Some(Self::guarded(view, remove, voters, alive_voters));
            }
            if caught_up {
                let step = RepairStep::Promote { learner: job.spare, replacing: job.dead };
                return Some(Self::guarded(view, step, voters + 1, alive_voters + 1));
            }
            return Some(Outcome::Wait);
        }
        if job.abandoning {
            // The learner is gone: abandonment done.
            self.give_up(job.spare, now);
            return None;
        }
        if find(view.voters, job.spare).is_some() {
            if !job.promoted {
                job.promoted = true;
                self.stats.promoted += 1;
            }
            self.job = Some(job);
            return match find(view.voters, job.dead) {
                Some(dead) => {
                    let alive_after = alive_voters - usize::from(dead.dead_since_us.is_none());
                    Some(Self::guarded(view, RepairStep::RemoveDead { dead: job.dead }, voters - 1, alive_after))
                }
                None => {
                    self.stats.removed += 1;
                    self.job = None;
                    None
                }
            };
        }
        if job.seen_learner || job.promoted {
            // Someone else removed our spare: give up on it.
            self.stats.abandoned += 1;
            self.give_up(job.spare, now);
            return None;
        }
        // Not applied yet: the AddLearner was lost, or is still on its way.
        let overdue = now.saturating_sub(job.started_us) >= self.cfg.catch_up_timeout_us;
        let still_spare = view.spares.iter().any(|spare| spare.id == job.spare);
        let quiet = self.last_issued.is_none_or(|(_, at)| now.saturating_sub(at) >= self.cfg.reissue_after_us);
        if quiet && find(view.voters, job.dead).is_none() {
            // Someone else (an operator) removed the dead voter before our learner joined:
            // nothing left to replace.
            self.job = None;
            return None;
        }
        if overdue || (!still_spare && quiet) {
            // Gone from the spares (or never showing up) and no proposal can be on its way any
            // more: the AddLearner will not be applied, so choose another spare.
            self.stats.abandoned += 1;
            self.give_up(job.spare, now);
            return None;
        }
        if !still_spare {
            return Some(Outcome::Wait);
        }
        let step = RepairStep::AddLearner { spare: job.spare, replacing: job.dead, shares_domain: job.shares_domain };
        Some(Self::guarded(view, step, voters, alive_voters))
    }

    fn give_up(&mut self, spare: MemberId, now: u64) {
        self.avoid.insert(spare, now.saturating_add(self.cfg.catch_up_timeout_us));
        self.job = None;
    }

    /// Starts a replacement if one is due.
    fn start(&mut self, view: &GroupView) -> Outcome {
        let now = view.now_us;
        let due = view
            .voters
            .iter()
            .filter_map(|peer| peer.dead_since_us.map(|since| (since, peer.id)))
            .filter(|&(since, _)| now.saturating_sub(since) >= self.cfg.replace_dead_after_us)
            .min();
        let Some((_, dead)) = due else { return Outcome::Nothing };
        if !majority(view.voters.len(), alive(view.voters)) {
            // The group cannot commit a conf change, and promoting a learner would not give it a
            // majority back: only an operator (or the dead coming back) can help.
            return Outcome::Blocked(Blocked::Quorum);
        }
        if view.voters.len().is_multiple_of(2) {
            // An even group with a dead voter: removing it first only helps (four voters with
            // one dead tolerate no further failure; the three left tolerate one). It is also
            // what a replacement leaves behind when leadership moved between its promotion and
            // its removal: the new leader's repairer did not start it, but finishes it here.
            let (voters, alive_voters) = (view.voters.len(), alive(view.voters));
            let outcome = Self::guarded(view, RepairStep::RemoveDead { dead }, voters - 1, alive_voters);
            if matches!(outcome, Outcome::Step(_)) {
                self.removing = Some(dead);
            }
            return outcome;
        }
        if self.last_start_us.is_some_and(|last| now.saturating_sub(last) < self.cfg.min_interval_us) {
            return Outcome::Wait;
        }
        let spare = match self.choose_spare(view, dead) {
            Some(Replacement::NewDomain(spare)) => (spare, false),
            Some(Replacement::SharedDomain(spare)) if self.cfg.allow_shared_domain => (spare, true),
            _ => return Outcome::Blocked(Blocked::WaitingForSpare),
        };
        let (spare, shares_domain) = spare;
        self.job = Some(Job {
            dead,
            spare,
            shares_domain,
            started_us: now,
            seen_learner: false,
            promoted: false,
            abandoning: false,
        });
        self.last_start_us = Some(now);
        self.stats.replacements_started += 1;
        Outcome::Step(RepairStep::AddLearner { spare, replacing: dead, shares_domain })
    }

    /// [`Placement::replacement`] over this group alone: voters and learners are members that
    /// may not receive it, spares (except those given up on recently) are candidates. None for
    /// no candidate, and for a malformed view (a voter listed twice, more than
    /// [`MAX_REPLICATION_FACTOR`] voters) that placement refuses.
    fn choose_spare(&self, view: &GroupView, dead: MemberId) -> Option<Replacement> {
        let mut members: BTreeMap<MemberId, Member> = BTreeMap::new();
        for peer in view.voters.iter().chain(view.learners) {
            members.entry(peer.id).or_insert_with(|| Member::new(peer.id, peer.domain.clone()).with_eligible(false));
        }
        for spare in view.spares.iter().filter(|spare| !self.avoid.contains_key(&spare.id)) {
            members.entry(spare.id).or_insert_with(|| Member::new(spare.id, spare.domain.clone()));
        }
        let members: Vec<Member> = members.into_values().collect();
        let config = PlacementConfig {
            replication_factor: view.voters.len().clamp(1, MAX_REPLICATION_FACTOR),
            ..PlacementConfig::default()
        };
        let assignment =
            Assignment { shard: view.shard, replicas: view.voters.iter().map(|peer| peer.id).collect(), leader: None };
        let placement = Placement::from_assignments(config, &members, [assignment]).ok()?;
        placement.replacement(view.shard, dead, &members)
    }

    /// Voters confirmed dead and not yet replaced (for /health and metrics): the group is
    /// under-replicated by this many. A dead voter whose replacement already votes is not
    /// listed, even before it is removed. Ascending.
    pub fn under_replicated(&self, view: &GroupView) -> Vec<MemberId> {
        let replaced = self
            .job
            .filter(|job| find(view.voters, job.spare).is_some_and(|spare| spare.dead_since_us.is_none()))
            .map(|job| job.dead);
        let mut dead: Vec<MemberId> = view
            .voters
            .iter()
            .filter(|peer| peer.dead_since_us.is_some() && Some(peer.id) != replaced)
            .map(|peer| peer.id)
            .collect();
        dead.sort_unstable();
        dead
    }

    /// The caller's proposal of `step` was refused outright (the leader was handing over, or
    /// was busy): it was never proposed, so the next call returns it again at once instead of
    /// waiting [`RepairConfig::reissue_after_us`] as for a proposal that may be on its way.
    pub fn refused(&mut self, step: RepairStep) {
        if self.last_issued.is_some_and(|(last, _)| last == step) {
            self.last_issued = None;
        }
    }

    pub fn stats(&self) -> RepairStats {
        self.stats
    }

    /// The replacement in flight: (dead voter, spare).
    pub fn in_progress(&self) -> Option<(MemberId, MemberId)> {
        self.job.map(|job| (job.dead, job.spare))
    }

    /// Takes over a replacement a previous leader started: `learner` (a spare it added) is
    /// to replace `dead`. A new leader's repairer knows nothing of its predecessor's work;
    /// without this it would leave that learner alone and add another spare for the same
    /// dead voter. The replacement continues from what the view shows (promote once caught up,
    /// then remove `dead`), and counts as started now for the catch-up timeout. Refused (false)
    /// while another replacement is in flight.
    pub fn adopt(&mut self, dead: MemberId, learner: MemberId, now_us: u64) -> bool {
        if self.job.is_some() || dead == learner {
            return false;
        }
        self.job = Some(Job {
            dead,
            spare: learner,
            shares_domain: false,
            started_us: now_us,
            seen_learner: false,
            promoted: false,
            abandoning: false,
        });
        true
    }
}
