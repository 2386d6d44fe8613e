#!/usr/bin/env bash
# Installs everything the build and the end-to-end tests need on a Debian 12 machine.
# Idempotent: does nothing (not even `apt-get update`) when everything is already there.
set -euo pipefail

# docker-registry: the reference registry; containerd + runc: the runtime the mirror tests pull
# and run through; skopeo and podman: the registries.conf (path-prefix) clients, which pull
# through the drop-in `dfdaemon init podman` writes (podman also runs it); busybox-static: the
# test image's userland; ccache: lets `cargo clippy` reuse `cargo build`'s RocksDB C++ objects;
# python3-venv: the deploy checks' pinned PyPI packages (Helm SDK, Kubernetes schemas);
# systemd: `systemd-analyze verify` of the units in deploy/systemd; fuse3: fusermount3 for the
# nydus-fs mounts (the tests mount as root through /dev/fuse, and detach with fusermount3);
# iptables: a test drops the packets to a supernode (a black hole, not a refusal).
PACKAGES=(docker-registry apache2-utils libclang-dev clang iproute2 ca-certificates curl
    containerd runc skopeo podman busybox-static ccache python3-venv systemd fuse3 iptables)

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=()
fi

log() { printf '[setup] %s\n' "$*"; }

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
        log "missing packages: ${missing[*]}; not root and no sudo available, install them by hand" >&2
        exit 1
    fi
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >/dev/null
else
    log "system packages already installed"
fi

# The Debian package starts a registry service on :5000; the tests run their own instances,
# so stop it when systemd is there (best-effort: containers usually have no systemd).
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    "${SUDO[@]}" systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

for tool in docker-registry htpasswd containerd ctr runc skopeo podman ccache systemd-analyze fusermount3; do
    command -v "$tool" >/dev/null 2>&1 || { log "$tool not found on PATH after install" >&2; exit 1; }
done

# Rust toolchain (the version is pinned by rust-version in Cargo.toml / rustup).
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found: install the Rust toolchain (https://rustup.rs) and put it on PATH" >&2
    exit 1
fi
log "$(cargo --version)"
for component in rustfmt clippy; do
    subcommand=${component/rustfmt/fmt}
    if ! cargo "$subcommand" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            log "adding rustup component $component"
            rustup component add "$component"
        else
            log "cargo $component is missing and rustup is not available" >&2
            exit 1
        fi
    fi
done

# IPv6 loopback is used by the tests ([::1] registries, supernode, peers). Best-effort.
if [ -e /proc/sys/net/ipv6/conf/lo/disable_ipv6 ] \
    && [ "$(cat /proc/sys/net/ipv6/conf/lo/disable_ipv6)" != 0 ]; then
    "${SUDO[@]}" sysctl -q -w net.ipv6.conf.lo.disable_ipv6=0 >/dev/null 2>&1 \
        || log "warning: could not enable IPv6 on loopback; IPv6 tests will be skipped"
fi

log "ok"
