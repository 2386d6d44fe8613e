//! The seam for layers provided remotely (lazily mounted nydus-fs images, the next step).
//!
//! containerd's unpacker prepares each layer with the label [`TARGET_SNAPSHOT_LABEL`], whose
//! value is the name the layer will be committed as (its chain id). A remote snapshotter that
//! can provide that layer without the layer's bytes commits it itself and answers the
//! Prepare with "already exists"; containerd then skips the download and the unpack, and
//! stacks the next layer (or the container) on it. [`Remote::provide`] is asked exactly
//! there; [`NoRemote`] provides nothing, which makes the snapshotter a plain overlay
//! snapshotter for every image.
//!
//! ```text
//! Prepare(key, parent, labels{containerd.io/snapshot.ref = target})
//!   └─ Remote::provide ─ Some(RemoteLayer{lower}) ─▶ commit `target` (Source::Remote) on
//!                      │                             `parent`; answer AlreadyExists
//!                      └ None ─▶ an ordinary active snapshot (containerd unpacks into it)
//! Remove(target) of a Source::Remote layer ─▶ Remote::release (unmount when unused)
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use containerd_snapshots::tonic;

use crate::store::{Error, Record};

/// The label containerd sets on each layer's Prepare during an unpack: the name the layer is
/// to be committed as.
pub const TARGET_SNAPSHOT_LABEL: &str = "containerd.io/snapshot.ref";

/// A layer Prepare asks for ([`Remote::provide`]'s input).
#[derive(Debug, Clone, Copy)]
pub struct LayerRequest<'a> {
    /// The Prepare's key (a temporary `extract-...` key).
    pub key: &'a str,
    /// The name to commit the layer as ([`TARGET_SNAPSHOT_LABEL`]).
    pub target: &'a str,
    /// The layer below, if any.
    pub parent: Option<&'a str>,
    /// Every label of the Prepare (the image reference, layer digest, credentials hints that
    /// containerd's CRI plugin adds as `containerd.io/snapshot/cri.*`).
    pub labels: &'a BTreeMap<String, String>,
}

/// A layer a [`Remote`] provides: a directory that already holds its tree, with every layer
/// below it merged in (a nydus-fs mount of the whole image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteLayer {
    /// The directory used as the lower directory of whatever is stacked on the layer.
    pub lower: PathBuf,
}

/// Provides layers without unpacking them. Implementations must be cheap to ask about layers
/// they do not provide: every Prepare of every unpack asks.
#[tonic::async_trait]
pub trait Remote: Send + Sync + 'static {
    /// `Some` if this layer is provided remotely (it is then committed as `request.target`
    /// and the Prepare answers "already exists"), `None` to unpack it as usual.
    ///
    /// # Errors
    /// The layer is meant to be remote but cannot be provided now; the Prepare fails with
    /// the error (containerd then fails the pull rather than unpack a lazy image's blobs).
    async fn provide(&self, request: LayerRequest<'_>) -> Result<Option<RemoteLayer>, Error>;

    /// `record`, a layer this provider gave, was removed: release what it held.
    ///
    /// # Errors
    /// Releasing failed; the removal stands and the error is logged.
    async fn release(&self, record: &Record) -> Result<(), Error> {
        let _ = record;
        Ok(())
    }

    /// At start, with the records of the layers it provided before a restart: take back what
    /// they still need (and let go of what no record needs). Problems are logged, not
    /// returned: the snapshotter serves either way.
    async fn recover(&self, records: &[Record]) {
        let _ = records;
    }
}

/// Provides no layer: every image is unpacked into overlay snapshots.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRemote;

#[tonic::async_trait]
impl Remote for NoRemote {
    async fn provide(&self, _request: LayerRequest<'_>) -> Result<Option<RemoteLayer>, Error> {
        Ok(None)
    }
}
