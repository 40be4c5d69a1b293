//! Configuration of one raft member, validated once at construction.

use crate::errors::RaftError;
use crate::planted::Plants;
use crate::types::{GroupId, NodeId, NO_NODE};

/// How a leader confirms it may serve a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// ReadIndex: one heartbeat round to a quorum confirms leadership for every read queued
    /// before it. Always linearizable; no log write.
    Safe,
    /// Lease reads: served without a round trip while the leader's lease holds. Linearizable only
    /// if the members' tick rates differ by less than [`Config::lease_drift_percent`]; requires
    /// check-quorum (otherwise followers may elect a new leader inside the old leader's lease).
    /// The host must tick from a monotonic clock and, after any stall (a paused process, a long
    /// GC), deliver every missed tick *before* other input: a leader that serves a read on a clock
    /// that stood still while the others elected a new leader serves stale data. Where the clock
    /// itself can stop (a frozen VM), use [`ReadMode::Safe`].
    LeaseBased,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    pub group: GroupId,
    /// Ticks between heartbeats sent by a leader.
    pub heartbeat_ticks: u32,
    /// Ticks without hearing from a leader before a follower campaigns. The actual timeout is
    /// drawn uniformly from `[election_ticks, 2 * election_ticks)` after each reset.
    pub election_ticks: u32,
    /// A pre-candidate first asks whether it could win, without bumping its term, so a member
    /// that was partitioned away does not disrupt a healthy leader when it returns.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within an election timeout steps down; and
    /// followers that heard from a leader recently ignore vote requests (leader stickiness).
    pub check_quorum: bool,
    pub read_mode: ReadMode,
    /// The clock-drift bound of lease reads. A leader's lease lasts
    /// `(election_ticks - 1) * (100 - lease_drift_percent) / 100` of its own ticks from the
    /// heartbeat round a quorum confirmed, while followers refuse to vote for at least
    /// `election_ticks - 1` of *their* tick periods after hearing from it (their next tick may
    /// come at once). Leases are therefore safe as long as no member ticks more than
    /// `100 / (100 - lease_drift_percent)` times as fast as another: with the default 10, up to
    /// 11 % faster. A leader that sent TimeoutNow gives up its lease for the rest of its term.
    pub lease_drift_percent: u32,
    /// Most bytes of entries in one Append message.
    pub max_append_bytes: u64,
    /// Most entries in one Append message.
    pub max_append_entries: u64,
    /// Appends in flight to one follower before the leader waits for acknowledgements.
    pub max_inflight_appends: usize,
    /// Most bytes of proposals waiting in the leader's unpersisted log; beyond it proposals are
    /// refused (back-pressure instead of unbounded memory).
    pub max_uncommitted_bytes: u64,
    /// Most ReadIndex requests waiting for confirmation.
    pub max_pending_reads: usize,
    /// Seed for the election-timeout jitter. Injected so a run can be replayed exactly.
    pub seed: u64,
    /// A member that starts (or restarts) campaigns, pre-vote first, within a few ticks rather
    /// than after a whole election timeout, as etcd's `--initial-election-tick-advance`: a
    /// cluster restarted whole elects a leader in a few heartbeats. Harmless for a member that
    /// restarts into a healthy cluster, with pre-vote: members that hear the leader refuse it.
    /// Ignored under lease reads (a lease relies on members not campaigning early).
    pub campaign_soon_at_start: bool,
    /// Deliberate bugs (only with the `planted-bugs` feature); see [`crate::planted`].
    pub plants: Plants,
}

impl Config {
    pub fn new(id: NodeId, group: GroupId) -> Config {
        Config {
            id,
            group,
            heartbeat_ticks: 1,
            election_ticks: 10,
            pre_vote: true,
            check_quorum: true,
            read_mode: ReadMode::Safe,
            lease_drift_percent: 10,
            max_append_bytes: 1 << 20,
            max_append_entries: 4096,
            max_inflight_appends: 256,
            max_uncommitted_bytes: 64 << 20,
            max_pending_reads: 65_536,
            seed: id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ group,
            campaign_soon_at_start: false,
            plants: Plants::NONE,
        }
    }

    pub fn validate(&self) -> Result<(), RaftError> {
        let invalid = |why: &'static str| Err(RaftError::InvalidConfig(why));
        if self.id == NO_NODE {
            return invalid("id must not be 0");
        }
        if self.heartbeat_ticks == 0 {
            return invalid("heartbeat_ticks must be > 0");
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return invalid("election_ticks must be greater than heartbeat_ticks");
        }
        if self.read_mode == ReadMode::LeaseBased && !self.check_quorum {
            return invalid("lease-based reads require check_quorum");
        }
        if self.lease_drift_percent >= 100 {
            return invalid("lease_drift_percent must be < 100");
        }
        if self.max_inflight_appends == 0 || self.max_append_entries == 0 || self.max_append_bytes == 0 {
            return invalid("append limits must be > 0");
        }
        if self.max_pending_reads == 0 {
            return invalid("max_pending_reads must be > 0");
        }
        Ok(())
    }
}
