//! Integration-test harness for Damselfly.
//!
//! Runs real programs (the workspace binaries `supernode` and `dfget`, and the Debian
//! `docker-registry` from distribution 2.8) as child processes. Every process is killed when its
//! handle is dropped, every port is chosen free, and every log is captured to a file so that a
//! failing test can print what happened.
//!
//! * [`bin`] locates workspace binaries (build them first with `cargo build --workspace --bins`).
//! * [`Daemon`] wraps any long-running process: log capture, waiting for log lines or HTTP.
//! * [`Supernode`], [`Dfget`], [`Dfdaemon`] run the Damselfly programs themselves.
//! * [`Containerd`] runs a real containerd in a temp dir; `ctr` pulls through hosts.toml
//!   files ([`write_hosts_toml`]) and runs containers of [`TestImage`]s (busybox + data).
//! * [`Podman`] runs a real Podman with private storage, pulling through a `registries.conf`
//!   (such as the drop-in `dfdaemon init podman` writes) and running what it pulled.
//! * [`TestRegistry`] runs a throw-away OCI registry, pushes blobs/images, and counts from its
//!   access log how many times each blob was actually served.
//! * [`LayeredImage`] is a multi-layer image with every kind of file and the tree it unpacks
//!   to; [`nydus_fs`] and [`nydus_convert`] run the lazy-image converter on it.
//! * [`RecordingProxy`] sits in front of a registry and records what it was sent (whose
//!   credentials, which blobs).
//! * [`FaultyOrigin`] is a stub registry for origin faults a real one cannot produce on
//!   demand (503/429 with `Retry-After`, a body cut, stalled or trickling), with `Range`.
//! * [`SmallFs`] mounts a small `tmpfs` (root only) for disk-full tests: real `ENOSPC`.
//! * [`http`] is a tiny synchronous HTTP client usable from plain and `#[tokio::test]` tests.
//! * [`random_blob`], [`sha256_hex`], [`free_tcp_port`], [`ipv6_loopback_available`], ...

#![forbid(unsafe_code)]

mod chaos;
mod containerd;
mod cri;
mod daemon;
mod dfdaemon;
mod docker;
mod faulty;
pub mod http;
mod image;
mod nydus;
mod podman;
mod recorder;
mod registry;
mod smallfs;
mod stub_http;
mod swarm;
mod tls;
mod token;
mod util;

pub use chaos::{ChaosFault, ChaosOutcome, ChaosRound, run_round};
pub use containerd::{
    CONTAINERD_NAMESPACE, CRI_NAMESPACE, CTR_TIMEOUT, Containerd, ContainerdBuilder,
    write_hosts_toml,
};
pub use cri::cri_image_client;
pub use daemon::{Daemon, DaemonBuilder, Frozen};
pub use dfdaemon::{Dfdaemon, DfdaemonBuilder, LOOPBACK_REGISTRIES};
pub use docker::{DOCKER_TIMEOUT, Docker, dockerd_program};
pub use faulty::{Fault, FaultyOrigin, OriginRequest};
pub use image::{TEST_IMAGE_HELLO_PATH, TEST_IMAGE_RANDOM_PATH, TestImage};
pub use nydus::{
    EntryKind, ImageLayer, LAYER_GZIP, LAYER_TAR, LayeredImage, NydusMount, RICH_LARGE_PATH,
    RICH_MTIME, RICH_SMALL_PATH, TreeEntry, fuse_available, is_mounted, mount_stat, nydus_convert,
    nydus_fs, nydus_fs_bin, registry_blob_path, try_nydus_convert,
};
pub use podman::Podman;
pub use recorder::{RecordingProxy, SeenRequest};
pub use registry::{
    AccessLogEntry, OCI_CONFIG_MEDIA_TYPE, OCI_LAYER_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE,
    PushedImage, TestRegistry, TestRegistryBuilder,
};
pub use smallfs::SmallFs;
pub use swarm::{Dfget, DfgetRun, Supernode, SupernodeBuilder, num};
pub use tls::TestCa;
pub use token::{TOKEN_ISSUER, TOKEN_SERVICE, TokenIssuer, TokenRequest, TokenServer};
pub use util::{
    TEST_CLUSTER_SECRET, bin, cluster_secret_file, describe_output, fleet_signing_key_file,
    free_tcp_port, free_udp_port, ipv6_loopback_available, lying_http_server, metric_sum,
    random_blob, running_as_root, sha256_digest, sha256_hex, wait_until,
};
