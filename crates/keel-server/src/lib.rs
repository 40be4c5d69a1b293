//! # keel-server
//!
//! What `keel server` runs: etcd's flags and defaults ([`config`]), the node driver that executes
//! keel-node's output on the real WAL ([`driver`]), the TCP peer transport ([`transport`]), the
//! etcd state machine ([`machine`]), and etcd's gRPC services ([`api`]) and HTTP endpoints
//! ([`http`]) on the client URLs, put together by [`server::run`]. Self-healing: the membership
//! protocol over the peer port ([`gossip`]) and the leader's replacement of dead voters by
//! spares ([`healing`]). TLS for both ports, with etcd's flags ([`tls`]).

pub mod api;
pub mod auto_compaction;
pub mod client_port;
pub mod config;
pub mod convert;
pub mod driver;
pub mod faults;
pub mod gateway;
pub mod gossip;
pub mod grpc_metrics;
pub mod healing;
pub mod hook;
pub mod http;
pub mod ids;
pub mod jwt;
pub mod lease_clock;
pub mod machine;
pub mod metrics;
pub mod server;
pub mod status;
pub mod tls;
pub mod transport;
pub mod watch_hub;

pub use config::{ClusterState, ConfigError, PeerUrl, ServerConfig};
pub use driver::{reply_to, Driver, Hook, Input, PeerInbox, Reply};
pub use machine::{Applied, ApplyError, CommandResult, LeaseChange, MemberCommand, MemberRecord, MvccMachine};
pub use transport::{start_listener, Incoming, Outgoing, PeerAddress, PeerSender};
