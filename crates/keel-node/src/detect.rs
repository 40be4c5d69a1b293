//! Leader failure detection for a node's follower groups: phi-accrual suspicion
//! ([`keel_membership::phi`]) over the heartbeats each group hears from its leader.
//!
//! Raft alone notices a dead leader when a whole randomized election timeout (1–2 s by default)
//! passes without a word from it. A leader whose process hangs (SIGSTOP, a stall) keeps its
//! sockets open, so the host's closed-connection signal never fires either. Here each follower
//! group learns its leader's heartbeat intervals and, as the silence grows unusual:
//! - at [`DetectionConfig::doubt_phi`] it *doubts* the leader: raft stops refusing other
//!   members' campaigns for its sake (leader stickiness), so whoever suspects first can win;
//! - at [`DetectionConfig::suspect_phi`], plus a random part of [`DetectionConfig::jitter_us`]
//!   (followers that lost the same leader at the same instant should not split the vote), it
//!   *suspects* it and campaigns at once, pre-vote first.
//!
//! Neither bypasses quorum: while a quorum still hears the leader, the pre-vote fails and the
//! leader stays. A wrong suspicion costs a round of pre-vote messages, counted in
//! [`DetectionStats::suspicions`].
//!
//! Time comes from the host ([`crate::Node::set_clock`], microseconds on a monotonic clock): the
//! server's `Instant`, the simulator's virtual time.

use std::collections::BTreeMap;

use keel_membership::{PhiAccrual, PhiConfig};
use keel_raft::{GroupId, NodeId, RawNode, Role, SplitMix64, Term};

/// When a follower doubts and suspects its leader.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectionConfig {
    /// The leaders' heartbeat interval, microseconds (the tick times the heartbeat ticks).
    pub heartbeat_interval_us: u64,
    /// φ from which a follower grants others' campaigns against its leader.
    pub doubt_phi: f64,
    /// φ from which a follower campaigns against its leader.
    pub suspect_phi: f64,
    /// A suspicion campaigns after a random delay in `[0, jitter_us]`.
    pub jitter_us: u64,
}

impl DetectionConfig {
    /// φ 3 to doubt (a 1-in-1,000 silence), 8 to suspect (1 in 10^8: about 3.8 heartbeat
    /// intervals after the last heartbeat on a regular network, more on a jittery one), and half
    /// an interval of jitter.
    pub fn for_heartbeat_interval(heartbeat_interval_us: u64) -> DetectionConfig {
        DetectionConfig {
            heartbeat_interval_us,
            doubt_phi: 3.0,
            suspect_phi: 8.0,
            jitter_us: heartbeat_interval_us / 2,
        }
    }
}

/// What the detector did since the node started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DetectionStats {
    /// Times a follower suspected its leader and campaigned.
    pub suspicions: u64,
    /// Times a follower doubted its leader.
    pub doubts: u64,
}

/// One follower group's view of its leader.
#[derive(Debug)]
struct Watch {
    leader: NodeId,
    term: Term,
    phi: PhiAccrual,
    doubted: bool,
    suspected: bool,
    jitter_us: u64,
}

#[derive(Debug)]
pub(crate) struct Detection {
    cfg: DetectionConfig,
    now: u64,
    rng: SplitMix64,
    watches: BTreeMap<GroupId, Watch>,
    stats: DetectionStats,
    suspect_always: bool,
}

impl Detection {
    pub(crate) fn new(cfg: DetectionConfig, seed: u64, suspect_always: bool) -> Detection {
        Detection {
            cfg,
            now: 0,
            rng: SplitMix64::new(seed),
            watches: BTreeMap::new(),
            stats: DetectionStats::default(),
            suspect_always,
        }
    }

    /// The host's clock. A host runs at least once per heartbeat interval (its ticks); a longer
    /// gap means this member itself did not run (its process starved on a busy box, or stopped),
    /// and the time beyond an interval is excused: a leader is not suspected for what its
    /// follower could not hear.
    pub(crate) fn set_clock(&mut self, now_us: u64) {
        if now_us <= self.now {
            return;
        }
        let excused = (now_us - self.now).saturating_sub(self.cfg.heartbeat_interval_us);
        if self.now > 0 && excused > 0 {
            for watch in self.watches.values_mut() {
                watch.phi.excuse(excused);
            }
        }
        self.now = now_us;
    }

    pub(crate) fn stats(&self) -> DetectionStats {
        self.stats
    }

    /// The group's watch of its current leader, started now if it is new.
    fn watch(&mut self, group: GroupId, leader: NodeId, term: Term) -> &mut Watch {
        let cfg = PhiConfig::for_interval(self.cfg.heartbeat_interval_us);
        let jitter = self.rng.range(0, self.cfg.jitter_us + 1);
        let now = self.now;
        let watch = self.watches.entry(group).or_insert_with(|| Watch {
            leader,
            term,
            phi: PhiAccrual::new(cfg),
            doubted: false,
            suspected: false,
            jitter_us: jitter,
        });
        if watch.leader != leader || watch.term != term {
            *watch =
                Watch { leader, term, phi: PhiAccrual::new(cfg), doubted: false, suspected: false, jitter_us: jitter };
        }
        if watch.phi.heard_at().is_none() {
            // Listening starts now: a leader never heard from is suspected like a silent one.
            watch.phi.heard(now, false);
        }
        watch
    }

    /// A message from `from` (`periodic`: a heartbeat) was just stepped into `raw`, the group's
    /// raft: a word from its leader is a sign of life.
    pub(crate) fn heard(&mut self, group: GroupId, raw: &RawNode, from: NodeId, periodic: bool) {
        let (leader, role, term) = raw.leadership();
        if role != Role::Follower || from != leader {
            return;
        }
        let now = self.now;
        let jitter = self.rng.range(0, self.cfg.jitter_us + 1);
        let watch = self.watch(group, leader, term);
        watch.phi.heard(now, periodic);
        watch.doubted = false;
        if watch.suspected {
            watch.suspected = false;
            watch.jitter_us = jitter;
        }
    }

    /// Doubts and, if `may_suspect`, suspects the leaders of `raw`'s group as the silence since
    /// their last word warrants (see the module docs).
    ///
    /// Before a campaign request is stepped only doubt is brought up to date: suspecting then
    /// would start this member's own campaign at the very instant of the other's, and two
    /// candidates in one term split the vote (a whole election timeout lost).
    pub(crate) fn check(&mut self, group: GroupId, raw: &mut RawNode, may_suspect: bool) {
        let (leader, role, term) = raw.leadership();
        if role != Role::Follower || leader == keel_raft::NO_NODE {
            self.watches.remove(&group);
            return;
        }
        let (now, cfg, suspect_always) = (self.now, self.cfg, self.suspect_always);
        let watch = self.watch(group, leader, term);
        let phi = watch.phi.phi(now);
        let mut doubted = false;
        if !watch.doubted && (phi >= cfg.doubt_phi || suspect_always) {
            watch.doubted = true;
            doubted = true;
            raw.report_leader_doubted(leader);
        }
        let due = watch.phi.deadline(cfg.suspect_phi).is_some_and(|at| now >= at.saturating_add(watch.jitter_us));
        let mut suspected = false;
        if may_suspect && !watch.suspected && (due || suspect_always) {
            watch.suspected = true;
            suspected = raw.report_leader_suspected(leader);
            if suspected {
                tracing::info!(group, leader, term, phi, "the leader has gone quiet: campaigning");
            }
        }
        self.stats.doubts += u64::from(doubted);
        self.stats.suspicions += u64::from(suspected);
        if suspected {
            // Raft forgot the leader; a new one starts a new watch.
            self.watches.remove(&group);
        }
    }

    /// The next time a check can change anything: a doubt or a suspicion falls due.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.watches
            .values()
            .flat_map(|w| {
                let doubt = (!w.doubted).then(|| w.phi.deadline(self.cfg.doubt_phi)).flatten();
                let suspect = (!w.suspected)
                    .then(|| w.phi.deadline(self.cfg.suspect_phi).map(|at| at.saturating_add(w.jitter_us)))
                    .flatten();
                [doubt, suspect]
            })
            .flatten()
            .min()
    }
}
