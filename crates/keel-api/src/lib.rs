//! The etcd v3 API, as Rust types and [tonic] gRPC clients and servers.
//!
//! keel speaks etcd's v3 gRPC API so that `etcdctl` and etcd client libraries
//! work against it unchanged. This crate holds nothing but that API surface:
//! the code is generated at build time (by `tonic-prost-build`, with the
//! `protoc` shipped in `protoc-bin-vendored`) from etcd's own `.proto` files,
//! vendored unmodified from etcd **v3.5.33** (Apache-2.0) under `proto/`; see
//! `proto/README.md` for the exact source commit and the two small option stubs
//! (`gogoproto/gogo.proto`, `google/api/*.proto`) added so those files compile
//! as they are.
//!
//! Because the protobuf package names are etcd's, the gRPC method paths are
//! byte-identical to etcd's (`/etcdserverpb.KV/Range`, `/v3lockpb.Lock/Lock`,
//! ...), and so are all message field numbers.
//!
//! # Modules
//!
//! One module per protobuf package, all siblings at the crate root so that the
//! generated cross-package references (`super::mvccpb::KeyValue`, ...) resolve:
//!
//! | module | services (server trait / client) | notable messages |
//! | --- | --- | --- |
//! | [`etcdserverpb`] | `KV`, `Watch`, `Lease`, `Cluster`, `Maintenance`, `Auth` | `RangeRequest`, `PutRequest`, `TxnRequest`, `WatchRequest`, `ResponseHeader` |
//! | [`mvccpb`] | – | `KeyValue`, `Event` |
//! | [`authpb`] | – | `User`, `Role`, `Permission` |
//! | [`v3lockpb`] | `Lock` | `LockRequest`, `UnlockRequest` |
//! | [`v3electionpb`] | `Election` | `CampaignRequest`, `LeaderKey` |
//!
//! For a service `Foo` in package `p`, the server side is the trait
//! `p::foo_server::Foo` wrapped by `p::foo_server::FooServer`, the client is
//! `p::foo_client::FooClient`, and `p::foo_server::SERVICE_NAME` is the
//! fully-qualified gRPC service name (for example
//! [`etcdserverpb::kv_server::SERVICE_NAME`] is `"etcdserverpb.KV"`).
//! Server traits have no default method bodies: a server implements every
//! method, returning `tonic::Status::unimplemented` where it has to.
//!
//! `bytes` fields are `Vec<u8>`; `string` fields are `String`; enum-typed
//! fields are stored as `i32` with typed accessors (`Event::r#type()`, ...),
//! as usual with prost.
//!
//! # Health
//!
//! etcd also serves the standard `grpc.health.v1.Health` service; the
//! [`tonic_health`] crate (same tonic version) is re-exported for that:
//! `let (reporter, health) = keel_api::tonic_health::server::health_reporter();`
//! then add `health` next to the etcd services and flip the overall (`""`)
//! status with `reporter.set_service_status("", ServingStatus::Serving)`.
//!
//! # Versions
//!
//! [`tonic`], [`prost`] and [`tonic_prost`] are re-exported so that dependants
//! use exactly the versions the generated code was built against (tonic/prost
//! 0.14, the line the `etcd-client` crate uses). Clients get
//! `FooClient::connect` (tonic's `transport`). Serving with
//! `tonic::transport::Server::builder().add_service(..)` needs tonic's
//! `router` feature: enable this crate's `server` feature (or tonic's
//! `router`) in the server crate.

#![forbid(unsafe_code)]

pub use prost;
pub use tonic;
pub use tonic_health;
pub use tonic_prost;

/// `etcdserverpb`: the KV, Watch, Lease, Cluster, Maintenance and Auth
/// services and their messages (etcd `api/etcdserverpb/rpc.proto`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// `mvccpb`: `KeyValue` and `Event` (etcd `api/mvccpb/kv.proto`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// `authpb`: stored user, role and permission records (etcd
/// `api/authpb/auth.proto`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// `v3lockpb`: the Lock service (etcd
/// `server/etcdserver/api/v3lock/v3lockpb/v3lock.proto`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// `v3electionpb`: the Election service (etcd
/// `server/etcdserver/api/v3election/v3electionpb/v3election.proto`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// One route of etcd's JSON gateway: `POST path` with the JSON form of the method's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatewayRoute {
    /// Under `/v3` (etcd 3.4 also serves it under `/v3beta` and `/v3alpha`).
    pub path: &'static str,
    /// The gRPC service, as `package.Service`.
    pub service: &'static str,
    pub method: &'static str,
    pub client_streaming: bool,
    pub server_streaming: bool,
}

/// One gRPC method of the protos, with its kind as go-grpc-prometheus labels it (`unary`,
/// `client_stream`, `server_stream`, `bidi_stream`): the labels of etcd's gRPC metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcMethod {
    /// As `package.Service`.
    pub service: &'static str,
    pub method: &'static str,
    pub kind: &'static str,
}

// `GATEWAY_ROUTES`: every route, read from the protos' `google.api.http` options at build time;
// `GRPC_METHODS`: every rpc of the protos.
include!(concat!(env!("OUT_DIR"), "/gateway_routes.rs"));

/// The fully-qualified names of every gRPC service etcd v3.5 serves (and so
/// keel must serve), including the standard health service.
pub const ETCD_SERVICE_NAMES: &[&str] = &[
    etcdserverpb::kv_server::SERVICE_NAME,
    etcdserverpb::watch_server::SERVICE_NAME,
    etcdserverpb::lease_server::SERVICE_NAME,
    etcdserverpb::cluster_server::SERVICE_NAME,
    etcdserverpb::maintenance_server::SERVICE_NAME,
    etcdserverpb::auth_server::SERVICE_NAME,
    v3lockpb::lock_server::SERVICE_NAME,
    v3electionpb::election_server::SERVICE_NAME,
    tonic_health::pb::health_server::SERVICE_NAME,
];
