#!/usr/bin/env bash
# Runs all checks and tests: formatting, clippy, build, unit + end-to-end tests.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

section() {
    printf '\n\033[1m==== %s ====\033[0m\n' "$*"
}

section "setup"
bash scripts/setup.sh
source scripts/env.sh
echo "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

section "cargo fmt --check"
cargo fmt --all -- --check

section "cargo build (binaries for the e2e tests; --all-targets keeps one feature set, so RocksDB builds once)"
cargo build --workspace --all-targets

section "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

section "cargo test"
cargo test --workspace

section "fuzz: every target ${FUZZ_SECONDS:-60}s from the seed corpus (scripts/fuzz.sh)"
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --manifest-path fuzz/Cargo.toml --target-dir "$CARGO_TARGET_DIR/fuzz-check" -- -D warnings
bash scripts/fuzz.sh "${FUZZ_SECONDS:-60}"

section "deploy: Helm chart, plain manifests, systemd units (scripts/test-deploy.sh)"
bash scripts/test-deploy.sh

section "all tests passed"
