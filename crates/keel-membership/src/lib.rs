//! # keel-membership — who is alive, judged from what arrives
//!
//! Sans-IO like `keel-raft`: no clock, no sockets, no threads. The host tells a detector when it
//! heard from a peer (a time in microseconds on any monotonic clock it likes: the simulator's
//! virtual one, the server's `Instant`) and asks how suspicious the silence since is.
//!
//! - [`phi`]: phi-accrual suspicion (Hayashibara et al., "The φ Accrual Failure Detector", 2004;
//!   Akka and Cassandra use it). Instead of "no heartbeat for a fixed timeout", φ says how
//!   unlikely the silence so far is given the heartbeat intervals seen recently: on a quiet,
//!   regular network a silent peer is suspected after a few missed heartbeats, and on a loaded,
//!   jittery one the same threshold waits longer by itself.
//!
//! - [`slow`]: fail-slow detection of the member's own disk: write latencies in one-second
//!   windows against a baseline learned while healthy (the seeds' state-based detection).
//!
//! - [`swim`]: who is alive, agreed by gossip — SWIM with the Lifeguard refinements (indirect
//!   probes, suspicion with incarnations, dynamic suspicion timeouts, local health), a shared
//!   probe permutation per period, rumour mongering of news and anti-entropy.
//!
//! - [`sim`]: a deterministic simulator of SWIM groups in virtual time (thousands of members,
//!   loss, delay, crashes, stalls); `cargo run --release -p keel-membership --bin swim-sim`
//!   prints the protocol's figures.
//!
//! - [`wire`]: SWIM messages as bytes, decoded without panics, for hosts on a real network.

pub mod phi;
pub mod sim;
pub mod slow;
pub mod swim;
pub mod wire;

pub use phi::{PhiAccrual, PhiConfig};
pub use slow::{SlowChange, SlowConfig, SlowDisk, SlowReport};
pub use swim::{Event, Incarnation, Liveness, MemberId, Message, Swim, SwimConfig, SwimStats, Update};
