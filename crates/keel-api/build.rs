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
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out.join("etcd_descriptors.bin");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(true)
        .emit_rerun_if_changed(false)
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&protos, &includes)?;

    // The protobuf JSON mapping, as etcd's gateway marshals it (grpc-gateway's JSONPb with
    // OrigName: the proto field names; 64-bit integers as strings; enums by name; bytes in
    // base64; zero values left out).
    let set = std::fs::read(&descriptors)?;
    pbjson_build::Builder::new().register_descriptors(&set)?.preserve_proto_field_names().build(&[
        ".etcdserverpb",
        ".mvccpb",
        ".authpb",
        ".v3lockpb",
        ".v3electionpb",
    ])?;

    let (routes, methods) = gateway_routes()?;
    std::fs::write(out.join("gateway_routes.rs"), routes + &methods)?;
    Ok(())
}

/// The JSON gateway's routes, read from the `google.api.http` options of the protos themselves
/// (`post: "/v3/kv/range"` under `rpc Range`), so the route table cannot drift from them; and
/// every gRPC method with its kind (the labels of etcd's gRPC metrics).
fn gateway_routes() -> Result<(String, String), Box<dyn std::error::Error>> {
    let mut rows = String::new();
    let mut methods = String::new();
    for proto in PROTOS {
        let text = std::fs::read_to_string(proto)?;
        let package = text
            .lines()
            .find_map(|line| line.trim().strip_prefix("package ")?.strip_suffix(';'))
            .ok_or(format!("{proto}: no package"))?
            .to_string();
        let (mut service, mut rpc): (Option<String>, Option<(String, bool, bool)>) = (None, None);
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().map(str::to_string);
                rpc = None;
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                // rpc Name(stream Request) returns (stream Response) {
                let name = rest.split('(').next().unwrap_or_default().trim().to_string();
                let (request, response) = rest.split_once("returns").ok_or(format!("{proto}: {line}"))?;
                let (client_streaming, server_streaming) =
                    (request.contains("(stream "), response.contains("(stream "));
                let kind = match (client_streaming, server_streaming) {
                    (false, false) => "unary",
                    (true, false) => "client_stream",
                    (false, true) => "server_stream",
                    (true, true) => "bidi_stream",
                };
                let service = service.as_ref().ok_or(format!("{proto}: an rpc outside a service: {line}"))?;
                methods.push_str(&format!(
                    "    GrpcMethod {{ service: \"{package}.{service}\", method: {name:?}, kind: {kind:?} }},\n"
                ));
                rpc = Some((name, client_streaming, server_streaming));
            } else if let Some(path) = line.strip_prefix("post: \"").and_then(|p| p.strip_suffix('"')) {
                // An rpc may have several (`additional_bindings`).
                let (Some(service), Some((method, client_streaming, server_streaming))) = (&service, &rpc) else {
                    return Err(format!("{proto}: a route outside an rpc: {line}").into());
                };
                rows.push_str(&format!(
                    "    GatewayRoute {{ path: {path:?}, service: \"{package}.{service}\", method: {method:?}, \
                     client_streaming: {client_streaming}, server_streaming: {server_streaming} }},\n"
                ));
            }
        }
    }
    Ok((
        format!("pub const GATEWAY_ROUTES: &[GatewayRoute] = &[\n{rows}];\n"),
        format!("pub const GRPC_METHODS: &[GrpcMethod] = &[\n{methods}];\n"),
    ))
}
