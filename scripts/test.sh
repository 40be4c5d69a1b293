#!/usr/bin/env bash
# The one command that runs every test: formatting, lints, layering rules, then the whole test
# suite (unit tests, the deterministic simulator's seeds and planted bugs, the checker).
set -euo pipefail
cd "$(dirname "$0")/.."

# The integration tests drive real keel processes with the `etcd-client` crate, whose build
# needs a system protoc (keel's own protobuf code does not: it uses protoc-bin-vendored), and
# with etcdctl 3.4 where an operator would use it (backups).
scripts/install-deps.sh protoc etcd

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
scripts/check-layers.sh
cargo test --workspace
