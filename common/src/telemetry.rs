//! Tracing set-up for binaries: `RUST_LOG`-style filtering, compact output on stderr.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset, e.g.
/// `"info"`. Calling it twice is harmless (the second call does nothing).
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes in a log file break every grep an operator (or a test) runs on it.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
