#!/usr/bin/env bash
# The main job, end to end: a local docker-registry holding a sample image, a supernode and
# several dfget peers that pull every blob of the image at once, and a report of where the
# bytes came from. Usage: scripts/demo.sh [--peers N] [--layer-mib 48,24,8]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

bash scripts/setup.sh
source scripts/env.sh

echo "== building (the first build compiles RocksDB: about 20 minutes on 2 cores)"
cargo build --workspace --all-targets
exec "$CARGO_TARGET_DIR/debug/damselfly-demo" "$@"
