//! # keel-sim — a deterministic simulator of keel clusters
//!
//! Everything non-deterministic is simulated: the network (delay, drop, duplication, reordering,
//! partitions), the disk (written vs durable writes; a crash keeps only a prefix of the unsynced
//! ones), the clock (ticks), and the clients. The members run the production `keel-node`,
//! `keel-raft` and `keel-host` code (the WAL mapping, compaction, request tracking and
//! forwarding to the leader) and, in half the runs, the server's etcd state machine. One seed decides the whole run, the fault mix included (swarm testing), so a
//! failing seed replays exactly: `cargo run --release -p keel-sim -- --seed S`.
//!
//! A run has a safety phase (faults on, invariants checked after every simulated millisecond), a
//! liveness phase (faults healed; the cluster must converge and serve a fresh write and read),
//! and a final linearizability check of the client history with `keel-check`.

pub mod cluster;
pub mod disk;
pub mod invariants;
pub mod kv;
pub mod machine;
pub mod swarm;

pub use cluster::{swarm_as_found, Cluster, RunOptions, RunReport};
pub use swarm::Swarm;

/// Runs one seed.
pub fn run_seed(seed: u64, plant: Option<keel_raft::Plant>, trace: bool) -> RunReport {
    Cluster::new(RunOptions { seed, plant, trace, swarm: None }).run()
}
