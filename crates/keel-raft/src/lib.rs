//! # keel-raft — Raft for one group, as a pure state machine
//!
//! No IO, no threads, no clock. Time arrives as [`RawNode::tick`]s, randomness (election jitter)
//! comes from a seed in [`Config`], and everything the member wants done comes out of
//! [`RawNode::ready`] as a [`Ready`]: what to persist, what to send, what to apply. Every message
//! carries a [`GroupId`]; nothing here assumes one group per process, so a host (`keel-node`)
//! runs many groups side by side and batches their Readys into one write.
//!
//! ## What it implements
//! - leader election with **pre-vote** and **check-quorum** (a leader that has not heard from a
//!   quorum within an election timeout steps down; followers that heard from a leader recently
//!   ignore campaigns), randomized election timeouts in `[election_ticks, 2 * election_ticks)`;
//! - log replication with **batching** (many entries per append, bounded by entries and bytes) and
//!   **pipelining** (up to `max_inflight_appends` appends in flight per follower), fast conflict
//!   backtracking with (index, term) hints;
//! - the commit rule: only entries of the leader's current term are committed by counting
//!   replicas (Raft §5.4.2);
//! - **snapshots**: the host compacts the log behind a durable snapshot; followers that fall behind
//!   the compacted log are sent the snapshot;
//! - **membership change** one voter at a time, with learners: add learner → catch up → promote;
//!   remove (the leader included: it hands over to its most up-to-date voter and steps down);
//! - **leader transfer** by TimeoutNow;
//! - **linearizable reads by ReadIndex**: no log write, and every read queued before a heartbeat
//!   round shares that round; **lease reads** only with check-quorum, shortened by a stated
//!   clock-drift bound ([`Config::lease_drift_percent`]).
//!
//! ## The persistence contract
//!
//! Raft is only safe if a member never forgets what it promised. The rules, and how this crate
//! makes them hard to break:
//!
//! | promise | must be durable before it leaves | enforced by |
//! |---|---|---|
//! | a vote granted in term T | term T and the vote | the response sits in `Ready::persisted_messages` with the new `HardState` |
//! | a vote request as candidate | the new term and the self-vote | same |
//! | an append acknowledged up to index i | every entry up to i | the ack sits in `Ready::persisted_messages` with the entries |
//! | the leader counting itself toward commit | its own entries | the leader's own match index moves only in [`RawNode::advance`] |
//! | an installed snapshot acknowledged | the snapshot | as for entries |
//!
//! A leader's replication traffic (appends, heartbeats, snapshots) needs nothing durable and may be
//! sent at once, even while the leader's own write is in flight (Raft thesis §10.2.1); the host can
//! fetch it early with [`RawNode::take_immediate_messages`]. Committed entries in a Ready are
//! always durable already, so applying them may overlap with writing that Ready.
//!
//! Only one Ready is outstanding at a time; new input accumulates into the next one, which is
//! how proposals batch behind one fsync. `keel-node` implements the host side of this contract
//! once, for the server and the simulator alike, and the simulator checks it at every send.

mod config;
mod errors;
mod log;
pub mod planted;
mod progress;
mod raft;
mod raw_node;
mod read_only;
mod rng;
mod types;

pub use config::{Config, ReadMode};
pub use errors::RaftError;
pub use planted::{Plant, Plants};
pub use progress::{learner_in_sync, Progress, ProgressState};
pub use raft::{Raft, RecoveredState};
pub use raw_node::{RawNode, Ready, Status};
pub use rng::SplitMix64;
pub use types::*;

#[cfg(test)]
mod tests;
