//! Generates the etcd v3 API (messages, tonic clients and servers) from the
//! vendored `.proto` files under `proto/`.
//!
//! `protoc` comes from the `protoc-bin-vendored` crate (there is no system
//! protoc); its bundled include directory provides
//! `google/protobuf/descriptor.proto`, which the vendored option stubs import.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/etcd/api/mvccpb/kv.proto",
    "proto/etcd/api/authpb/auth.proto",
    "proto/etcd/api/etcdserverpb/rpc.proto",
    "proto/etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
    "proto/etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");

    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let protoc_include = protoc_bin_vendored::include_path()?;
    // tonic-prost-build / prost-build read the protoc location from $PROTOC.
    // (Edition 2021: `set_var` is safe; the build script is single-threaded.)
    std::env::set_var("PROTOC", &protoc);

    let protos: Vec<PathBuf> = PROTOS.iter().map(PathBuf::from).collect();
    let includes = [PathBuf::from("proto"), protoc_include];
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(true)
        .emit_rerun_if_changed(false)
        .compile_protos(&protos, &includes)?;
    Ok(())
}
