#!/usr/bin/env bash
# Checks deploy/: the Helm chart (lint, offline render, Kubernetes schemas, the real daemons
# started with the configs it renders), deploy/kubernetes/ in sync with it, and the systemd
# units (systemd-analyze verify against the built binaries). Needs the daemons built (`cargo
# build --workspace --all-targets`); scripts/test.sh runs it after the cargo tests.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source scripts/env.sh
BIN_DIR=${BIN_DIR:-$CARGO_TARGET_DIR/debug}

fail() {
    printf '[test-deploy] FAILED: %s\n' "$*" >&2
    exit 1
}

for bin in supernode dfdaemon; do
    [ -x "$BIN_DIR/$bin" ] || fail "$BIN_DIR/$bin missing: run cargo build --workspace --all-targets"
done
command -v systemd-analyze >/dev/null || fail "systemd-analyze missing (apt package systemd; scripts/setup.sh)"

echo "== systemd units: systemd-analyze verify"
# The units are verified as installed: in a scratch root holding systemd's own units, the
# units under /etc/systemd/system and the built daemons at their ExecStart paths (verify
# checks those exist and are executable). verify exits 0 on unknown keys or bad values and
# only prints them, so any output is a failure too.
scratch=$(mktemp -d /var/tmp/damselfly-units.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/usr/lib/systemd" "$scratch/etc/systemd/system" "$scratch/usr/local/bin"
cp -a /usr/lib/systemd/system "$scratch/usr/lib/systemd/"
cp deploy/systemd/*.service "$scratch/etc/systemd/system/"
for bin in supernode dfdaemon; do
    ln "$BIN_DIR/$bin" "$scratch/usr/local/bin/$bin" 2>/dev/null || cp "$BIN_DIR/$bin" "$scratch/usr/local/bin/$bin"
done
units=(damselfly-supernode.service damselfly-dfdaemon.service)
for unit in "${units[@]}"; do
    grep -q "^ExecStart=/usr/local/bin/" "deploy/systemd/$unit" || fail "$unit: ExecStart is not under /usr/local/bin"
done
if ! out=$(systemd-analyze verify --root="$scratch" "${units[@]}" 2>&1) || [ -n "$out" ]; then
    fail "systemd-analyze verify: ${out:-non-zero exit}"
fi
for unit in "${units[@]}"; do
    exposure=$(systemd-analyze security --offline=yes --root="$scratch" "$unit" 2>&1 \
        | sed -n 's/^→ Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    # The sandboxing is part of the units: keep them in systemd's "OK" band (<= 2.0 of 10).
    awk -v e="${exposure:-99}" 'BEGIN { exit !(e <= 2.0) }' \
        || fail "$unit: systemd-analyze security exposure ${exposure:-unknown}, want <= 2.0"
    echo "ok   $unit (systemd-analyze security: exposure $exposure)"
done

echo "== Helm chart, plain manifests, rendered configs"
source scripts/deploy-venv.sh
"$DEPLOY_PY" deploy/test/chart_test.py check --bin-dir "$BIN_DIR" || fail "chart tests"
echo "[test-deploy] all deploy checks passed"
