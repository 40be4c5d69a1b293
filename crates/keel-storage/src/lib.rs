//! # keel-storage — what a node keeps on disk
//!
//! - [`wal`]: one write-ahead log per node, shared by every raft group on it (records tagged with
//!   the group), in preallocated segments; one fsync covers every group's records; torn tails are
//!   truncated, corruption anywhere else stops the node with the file and offset.
//! - [`snapshot`]: atomic, checksummed state-machine snapshot files, streamed in chunks.
//! - [`node_storage`]: the two together, in the order raft's persistence contract needs
//!   (snapshot file durable before the WAL record that refers to it).
//! - [`group_commit`]: many threads appending, one fsync per window for all of them.
//! - [`disk`]: every byte of IO goes through the [`Disk`] trait: [`RealDisk`] here and, with the
//!   `sim` feature, [`SimDisk`], which loses unsynced writes, tears the last one and flips bits,
//!   so the simulator exercises the real recovery code.

pub mod disk;
pub mod group_commit;
pub mod node_storage;
#[cfg(feature = "sim")]
pub mod sim_disk;
pub mod snapshot;
pub mod wal;

pub use disk::{Disk, DiskFile, RealDisk};
pub use node_storage::{GroupPersist, NodeStorage, RecoveredGroup, Retention, StorageError, StorageOptions};
#[cfg(feature = "sim")]
pub use sim_disk::SimDisk;
pub use snapshot::{SnapshotError, SnapshotStore};
pub use wal::{GroupLog, Recovery, Wal, WalError, WalOptions};
