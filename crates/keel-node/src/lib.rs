//! # keel-node — the pure multi-raft host
//!
//! A node hosts many raft groups. This crate is the glue between their [`keel_raft::Ready`]s and
//! the outside world, written once and run by both the server and the simulator, so the simulator
//! tests the production ordering of "persist, then send, then apply" rather than a copy of it.
//!
//! Each call to [`Node::poll`] gathers the Ready of every group into one [`WriteBatch`]: every
//! group's entries, hard state and snapshots go behind **one** fsync (group commit across groups).
//! The host writes the batch, makes it durable, and calls [`Node::on_write_durable`]; only then are
//! the acknowledgements and votes the batch promised released (see keel-raft's persistence
//! contract). One batch is in flight at a time; everything arriving meanwhile forms the next
//! batch. A leader's replication traffic does not wait: it is returned by every poll.
//!
//! Committed entries are applied to the group's [`StateMachine`] as soon as they are handed out
//! (raft only hands out entries that are durable and committed), proposals are matched to their
//! log position by (index, term), and reads wait for their read index to be applied.
//!
//! No IO, no clock, no threads: time is [`Node::tick`].

mod detect;
mod health;
mod node;

pub use detect::{DetectionConfig, DetectionStats};
pub use health::{HealthConfig, HealthStats};
pub use node::*;

#[cfg(test)]
mod tests;
