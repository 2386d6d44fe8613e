//! The origin client: how Damselfly talks to registries and other HTTP origins.
//!
//! [`Origin`] issues the few requests the swarm needs of an origin: a streaming `GET` of a blob
//! (with the requester's headers, so registry bearer tokens work) and a `HEAD` that asks whether
//! the origin would serve a given requester. Redirects (registries answer blob GETs with 307 to
//! signed storage URLs) are followed, and credentials never follow a redirect to another host.
//! A non-2xx answer becomes [`OriginError::Status`] carrying the registry's own error message
//! (parsed from the OCI error JSON) so users see *why* ("401 Unauthorized: authentication
//! required"), not just a number.
//!
//! [`Origin::get`] survives a failing origin: bounded, jittered retries of 5xx/429/408
//! answers and connection errors, `Retry-After` honoured (capped), a watchdog that abandons a
//! body that stalls or trickles, and a `Range` resume from the last byte delivered, so the
//! caller reads one continuous body. The decisions are in [`retry`] (no I/O), and
//! [`retry::FailureReason`] is the one list of failure reasons both daemons' metrics use.
//!
//! [`registry::RegistryClient`] is the client for tools that read and write whole images
//! (`nydus-fs convert` and `mount`): image references, manifests, verified blob streams, exact
//! `Range` reads, pushes, Basic and Bearer-token auth, and reads through a dfdaemon mirror.
//!
//! [`blob_digest`] recognises OCI blob URLs (`/v2/<name>/blobs/sha256:<hex>`), whose content is
//! addressed by digest.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod fetch;
pub mod guard;
pub mod registry;
pub mod retry;
mod url_kind;

pub use client::{
    BodyStream, Origin, OriginConfig, OriginError, OriginResponse, error_chain, load_ca_file,
};
pub use url_kind::blob_digest;

/// This machine's CPU architecture in OCI (Go) naming: `amd64`, `arm64`, `ppc64le`, ...
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}
