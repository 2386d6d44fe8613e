//! dfdaemon: the per-node registry mirror.
//!
//! Container runtimes pull through it (containerd `hosts.toml`, Docker `registry-mirrors`,
//! Podman/CRI-O `registries.conf`). Blob GETs go through the P2P engine of [`dfget`] into a
//! node cache ([`cache`]) and are streamed to the client while pieces arrive ([`flight`]);
//! everything else is passed to the registry unchanged ([`proxy`]). [`upstream`] decides
//! which registry a request is for, and [`access`] whether that registry may approve a
//! requester for what the node holds (else the request is passed through or refused). The node announces itself to the supernodes
//! ([`announce`]), which can then have it fetch blobs ahead of any pull ([`preheat`]).
//!
//! ```text
//! runtime ──HTTP──▶ App::handle ─ route() ─┬─ GET blob ─ registry HEAD (credentials) ─┬─ cache hit ─▶ stream pieces
//!                                          │                                        └─ Flight ◀── Engine::download (peers, supernode, origin)
//!                                          └─ anything else ─▶ proxy::forward ─▶ registry
//! supernode ──POST /api/v1/preheat──▶ same path as a blob GET, minus the streaming (no access check)
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod announce;
mod app;
pub mod cache;
pub mod config;
pub mod flight;
pub mod init;
pub mod metrics;
pub mod prefetch;
pub mod preheat;
pub mod provenance;
pub mod proxy;
pub mod range;
mod readahead;
pub mod upstream;

pub use app::App;
pub use config::Config;
