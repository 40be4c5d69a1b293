#!/usr/bin/env bash
# The one command that runs every test: formatting, lints, layering rules, then the whole test
# suite (unit tests, the deterministic simulator's seeds and planted bugs, the checker).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
scripts/check-layers.sh
cargo test --workspace
