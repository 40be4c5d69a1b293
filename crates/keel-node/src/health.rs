//! Fail-slow handling: the node judges its own disk ([`keel_membership::SlowDisk`]) by how long
//! its durable writes take, and a slow member gets out of the way.
//!
//! A member whose fsyncs became slow is a gray failure: it heartbeats on time, so raft keeps it
//! as leader, and every write through the group then waits for its disk. Flagged slow, a node
//! - hands each group it leads to the healthiest voter (leader transfer), at most once per
//!   [`HealthConfig::hand_off_interval_us`] per group, so members that are all slow at once (a
//!   box-wide stall) pass leadership around slowly rather than fight over it;
//! - is *reluctant* in every group (keel-raft's `set_reluctant`): it campaigns an election
//!   timeout later than the others and never on a suspicion, so a healthy member is elected
//!   first, while a group of slow members still elects someone.
//!
//! The healthiest voter is the one whose acknowledgements come back soonest: a follower
//! acknowledges an append after its own fsync, so the round trip of an append measures the
//! follower's disk (and the path to it). A round trip is timed for one append per follower and
//! group at a time; they are smoothed per member.
//!
//! The write latency is measured here, on the host's clock ([`crate::Node::set_clock`]): from
//! the first clock after the poll that hands out a write (the host sets it as it begins the
//! write) to [`crate::Node::on_write_durable`] (the host sets it when the write is durable).
//! The server and the simulator run the same judgement. (Timed from the poll's own clock, the
//! time a poll spent applying entries counted as the disk's: a follower applying a compaction
//! was judged slow a few times in ten minutes.)

use std::collections::BTreeMap;

use keel_membership::{SlowChange, SlowConfig, SlowDisk, SlowReport};
use keel_raft::{GroupId, Index, Message, MessageBody, NodeId, RawNode, Role};

/// When a node judges its disk slow and what it then does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HealthConfig {
    pub slow: SlowConfig,
    /// A group is handed off at most once per this long (microseconds).
    pub hand_off_interval_us: u64,
}

impl HealthConfig {
    /// [`SlowConfig::default_thresholds`], and a hand-off per group at most every 10 s.
    pub fn default_thresholds() -> HealthConfig {
        HealthConfig { slow: SlowConfig::default_thresholds(), hand_off_interval_us: 10_000_000 }
    }
}

/// What the fail-slow handling knows and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealthStats {
    pub disk: SlowReport,
    /// Groups this member handed to another because its disk was slow.
    pub hand_offs: u64,
}

/// A round trip older than this is given up (its append or acknowledgement was lost).
const PROBE_EXPIRY_US: u64 = 10_000_000;
/// Weight of a new round trip in a member's smoothed figure.
const RTT_WEIGHT: f64 = 0.2;

#[derive(Debug)]
pub(crate) struct Health {
    cfg: HealthConfig,
    disk: SlowDisk,
    /// The append being timed per (group, follower): its last index and when it left.
    probes: BTreeMap<(GroupId, NodeId), (Index, u64)>,
    /// Smoothed append round trip per member (microseconds).
    rtt_us: BTreeMap<NodeId, f64>,
    last_hand_off: BTreeMap<GroupId, u64>,
    hand_offs: u64,
    /// Planted: the disk is judged slow always (to show a wrong verdict costs only churn).
    slow_always: bool,
    /// A write was handed out and the host has not set the clock since: its start is taken at
    /// the next clock (the host sets it as it begins the write), so the time the poll spent
    /// applying entries before handing the write out is not counted as the disk's.
    start_pending: bool,
}

impl Health {
    pub(crate) fn new(cfg: HealthConfig, slow_always: bool) -> Health {
        Health {
            cfg,
            disk: SlowDisk::new(cfg.slow),
            probes: BTreeMap::new(),
            rtt_us: BTreeMap::new(),
            last_hand_off: BTreeMap::new(),
            hand_offs: 0,
            slow_always,
            start_pending: false,
        }
    }

    pub(crate) fn stats(&self) -> HealthStats {
        let mut disk = self.disk.report();
        disk.slow |= self.slow_always;
        HealthStats { disk, hand_offs: self.hand_offs }
    }

    pub(crate) fn is_slow(&self) -> bool {
        self.slow_always || self.disk.is_slow()
    }

    /// A write was handed out to the host (its start is taken at the next clock, see
    /// `start_pending`).
    pub(crate) fn write_handed_out(&mut self) {
        self.start_pending = true;
    }

    /// The host's clock moved to `now`.
    pub(crate) fn clock(&mut self, now: u64) {
        if std::mem::take(&mut self.start_pending) {
            let change = self.disk.write_started(now);
            self.log_change(change);
        }
    }

    pub(crate) fn write_finished(&mut self, now: u64) {
        // Durable before the clock moved: the write took no measurable time.
        self.clock(now);
        let change = self.disk.write_finished(now);
        self.log_change(change);
    }

    fn log_change(&self, change: Option<SlowChange>) {
        let report = self.disk.report();
        let ms = |us: Option<u64>| us.map(|us| us as f64 / 1_000.0);
        match change {
            Some(SlowChange::BecameSlow) => tracing::warn!(
                recent_ms = ms(report.recent_us),
                baseline_ms = ms(report.baseline_us),
                "this member's disk is slow: handing off leadership and standing back from elections"
            ),
            Some(SlowChange::Recovered) => tracing::info!(
                recent_ms = ms(report.recent_us),
                baseline_ms = ms(report.baseline_us),
                "this member's disk is healthy again"
            ),
            None => {}
        }
    }

    /// Messages about to leave: appends start round trips.
    pub(crate) fn sent(&mut self, messages: &[Message], now: u64) {
        for msg in messages {
            let MessageBody::Append { entries, .. } = &msg.body else { continue };
            let Some(last) = entries.last() else { continue };
            let probe = self.probes.entry((msg.group, msg.to)).or_insert((last.index, now));
            if now.saturating_sub(probe.1) > PROBE_EXPIRY_US {
                *probe = (last.index, now);
            }
        }
    }

    /// A message arrived: an acknowledgement ends a round trip.
    pub(crate) fn received(&mut self, msg: &Message, now: u64) {
        let MessageBody::AppendResponse { reject: false, index, .. } = msg.body else { return };
        let key = (msg.group, msg.from);
        let Some(&(probe_index, sent_at)) = self.probes.get(&key) else { return };
        if index < probe_index {
            return;
        }
        self.probes.remove(&key);
        let sample = now.saturating_sub(sent_at) as f64;
        let rtt = self.rtt_us.entry(msg.from).or_insert(sample);
        *rtt += RTT_WEIGHT * (sample - *rtt);
    }

    /// The smoothed append round trip to `member` (microseconds), if any was timed.
    pub(crate) fn rtt_us(&self, member: NodeId) -> Option<u64> {
        self.rtt_us.get(&member).map(|&rtt| rtt as u64)
    }

    /// Brings the judgement up to `now`, and acts on it for `raw`'s group: reluctance always, a
    /// hand-off if this slow member leads it. Returns the member handed to.
    pub(crate) fn check(&mut self, group: GroupId, raw: &mut RawNode, now: u64) -> Option<NodeId> {
        let change = self.disk.advance(now);
        self.log_change(change);
        let slow = self.is_slow();
        if raw.raft().is_reluctant() != slow {
            raw.set_reluctant(slow);
        }
        if !slow || raw.status().role != Role::Leader {
            return None;
        }
        if self.last_hand_off.get(&group).is_some_and(|&at| now.saturating_sub(at) < self.cfg.hand_off_interval_us) {
            return None;
        }
        let to = self.healthiest_voter(raw)?;
        self.last_hand_off.insert(group, now);
        raw.transfer_leader(to).ok()?;
        self.hand_offs += 1;
        tracing::warn!(group, to = %format!("{to:x}"), "slow disk: handing leadership over");
        Some(to)
    }

    /// The voter to hand `raw`'s group to: heard from lately first, then the quickest to
    /// acknowledge (one never timed counts as slowest), then the most caught up.
    fn healthiest_voter(&self, raw: &RawNode) -> Option<NodeId> {
        let status = raw.status();
        let raft = raw.raft();
        status
            .conf
            .voters
            .iter()
            .copied()
            .filter(|&id| id != status.id)
            .filter_map(|id| {
                let progress = raft.progress_of(id)?;
                let rtt = self.rtt_us(id).unwrap_or(u64::MAX);
                Some((!progress.recent_active, rtt, std::cmp::Reverse(progress.matched), id))
            })
            .min()
            .map(|(_, _, _, id)| id)
    }
}
