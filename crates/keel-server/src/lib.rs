//! # keel-server
//!
//! What `keel server` runs. Today this crate holds the server's configuration: etcd's flag names,
//! defaults and validation, so that a systemd unit or container spec written for etcd needs only
//! the binary swapped. The node driver (executing keel-node's write batches on the real WAL),
//! the peer transport and the etcd gRPC services build on it.

pub mod config;
pub mod driver;
pub mod machine;
pub mod transport;

pub use config::{ClusterState, ConfigError, PeerUrl, ServerConfig};
pub use driver::{persist, Driver, Input};
pub use machine::{ApplyError, CommandResult, MvccMachine};
pub use transport::{start_listener, PeerSender};
