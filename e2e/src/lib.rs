//! Integration-test harness for Damselfly.
//!
//! Runs real programs (the workspace binaries `supernode` and `dfget`, and the Debian
//! `docker-registry` from distribution 2.8) as child processes. Every process is killed when its
//! handle is dropped, every port is chosen free, and every log is captured to a file so that a
//! failing test can print what happened.
//!
//! * [`bin`] locates workspace binaries (build them first with `cargo build --workspace --bins`).
//! * [`Daemon`] wraps any long-running process: log capture, waiting for log lines or HTTP.
//! * [`TestRegistry`] runs a throw-away OCI registry, pushes blobs/images, and counts from its
//!   access log how many times each blob was actually served.
//! * [`http`] is a tiny synchronous HTTP client usable from plain and `#[tokio::test]` tests.
//! * [`random_blob`], [`sha256_hex`], [`free_tcp_port`], [`ipv6_loopback_available`], ...

#![forbid(unsafe_code)]

mod daemon;
pub mod http;
mod registry;
mod swarm;
mod util;

pub use daemon::{Daemon, DaemonBuilder};
pub use registry::{
    AccessLogEntry, OCI_CONFIG_MEDIA_TYPE, OCI_LAYER_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE,
    PushedImage, TestRegistry, TestRegistryBuilder,
};
pub use swarm::{Dfget, DfgetRun, Supernode, SupernodeBuilder, num};
pub use util::{
    bin, free_tcp_port, free_udp_port, ipv6_loopback_available, random_blob, sha256_digest,
    sha256_hex, wait_until,
};
