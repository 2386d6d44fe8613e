# Build environment shared by test.sh and demo.sh (sourced, not run), so both reuse one build.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/damselfly-target}
# `cargo clippy` gets its own copy of every build-script output, so RocksDB's C++ would be
# compiled twice (~15 min each on 2 cores). ccache turns the second compile (and later runs
# on the same machine) into cache hits.
if command -v ccache >/dev/null 2>&1; then
    export CC="ccache gcc" CXX="ccache g++"
    export CCACHE_DIR=${CCACHE_DIR:-/var/tmp/damselfly-ccache}
    export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
fi
