//! `damselfly-snapshotter`: a containerd snapshotter served as a proxy plugin on a unix socket.
//!
//! containerd asks a snapshotter for the directories a container's root filesystem is built
//! from: a chain of committed layers and, on top, one writable (active) or read-only (view)
//! snapshot. This crate answers with overlay mounts as containerd's own `overlayfs`
//! snapshotter does, keeps its state under one root directory, and leaves a seam
//! ([`remote::Remote`]) where lazily mounted layers plug in: [`nydus::NydusRemote`] provides the
//! layers of nydus-fs images pulled through CRI from one FUSE mount per image.
//!
//! ```text
//!  containerd ──gRPC (unix socket, containerd.services.snapshots.v1)──▶ server::Server
//!      │                                     (containerd-snapshots' tonic service)
//!      ▼
//!  snapshotter::Snapshotter  (impl containerd_snapshots::Snapshotter; errors → gRPC codes once)
//!      ├─ remote::Remote        Prepare with `containerd.io/snapshot.ref`: provided remotely?
//!      │    └─ nydus::NydusRemote  CRI labels → manifest has a nydus-fs bootstrap? → one
//!      │                           `nydus-fs mount` per image (through dfdaemon if it answers)
//!      ├─ store::MetaStore      one JSON record per snapshot, written by atomic rename
//!      ├─ mounts::mounts        bind (no parent) or overlay (lowerdir = parents, nearest first)
//!      ├─ usage::disk_usage     `du` of an active snapshot's upper directory
//!      └─ filter::Filters       Walk's containerd filter expressions
//!
//!  root/ meta/<id>.json         the record of snapshot <id> (key, kind, parent, labels, ...)
//!        snapshots/<id>/fs      its files (the overlay upper directory, or the bind source)
//!        snapshots/<id>/work    overlayfs' work directory (active snapshots only)
//!        mnt/<manifest hex>     the lazy mount of a nydus-fs image (and `<hex>.log`, its log)
//! ```
//!
//! A snapshot exists once its record is renamed into place: directories are made first, so a
//! crash leaves at worst a directory without a record, which `Cleanup` (and start-up) remove.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod filter;
pub mod layout;
pub mod mounts;
pub mod nydus;
pub mod remote;
pub mod server;
pub mod snapshotter;
pub mod store;
pub mod usage;

pub use config::Config;
pub use layout::Layout;
pub use nydus::NydusRemote;
pub use remote::{NoRemote, Remote, RemoteLayer};
pub use server::Server;
pub use snapshotter::Snapshotter;
pub use store::{Error, Kind, MetaStore, Record, Source};
