#!/usr/bin/env bash
# The main job, end to end: a local docker-registry holding a runnable sample image, a
# supernode, and several nodes (each a dfdaemon mirror and a containerd) that all pull the image
# at once with `ctr image pull` and run it, then a report of where the bytes came from. The same
# nodes then pull the same image again directly from the registry, without Damselfly, and both
# pull times are printed side by side (on one machine over loopback the direct pull is expected
# to be as fast or faster: there is no bandwidth to save there).
# Needs root (containerd). Usage: scripts/demo.sh [--nodes N] [--random-mib M] [--rounds R]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

bash scripts/setup.sh
source scripts/env.sh

echo "== building (the first build compiles RocksDB: about 20 minutes on 2 cores)"
cargo build --workspace --all-targets
exec "$CARGO_TARGET_DIR/debug/damselfly-demo" "$@"
