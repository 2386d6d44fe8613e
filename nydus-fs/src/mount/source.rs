//! Where a mount's data blob bytes come from: a local OCI layout or (through
//! `oci::registry`) a registry, directly or via dfdaemon.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::oci::{Descriptor, OciDir};

/// Why a range of a blob could not be read. The message names the blob and the cause (HTTP
/// status and the registry's message, connection error, short file).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SourceError(pub(crate) String);

/// Reads byte ranges of the image's data blobs (by index into the tree's blob table).
pub(crate) trait BlobSource: Send + Sync + 'static {
    /// Returns exactly the bytes `range` of blob `blob`.
    fn read_range(
        &self,
        blob: usize,
        range: Range<u64>,
    ) -> BoxFuture<'_, Result<Bytes, SourceError>>;

    /// A short description for logs: `oci layout /path` or `registry host/repo via URL`.
    fn describe(&self) -> String;
}

/// Blobs in a local OCI image layout, read with `pread`.
pub(crate) struct LayoutSource {
    pub(crate) dir: Arc<OciDir>,
    /// Blob descriptors, in tree blob order.
    pub(crate) blobs: Vec<Descriptor>,
    /// The layout directory, for messages.
    pub(crate) root: PathBuf,
}

impl BlobSource for LayoutSource {
    fn read_range(
        &self,
        blob: usize,
        range: Range<u64>,
    ) -> BoxFuture<'_, Result<Bytes, SourceError>> {
        let desc = self.blobs.get(blob).cloned();
        let dir = self.dir.clone();
        Box::pin(async move {
            let desc = desc.ok_or_else(|| SourceError(format!("no blob #{blob} in the image")))?;
            tokio::task::spawn_blocking(move || dir.read_range(&desc, range))
                .await
                .map_err(|e| SourceError(format!("reader task failed: {e}")))?
                .map(Bytes::from)
                .map_err(|e| SourceError(format!("{e:#}")))
        })
    }

    fn describe(&self) -> String {
        format!("OCI layout {}", self.root.display())
    }
}

/// Blobs in a registry repository, through `--via` (dfdaemon) when given. Every response must
/// be a 206 for exactly the range asked (`RegistryClient::blob_range`).
pub(crate) struct RegistrySource {
    pub(crate) client: damselfly_oci::registry::RegistryClient,
    pub(crate) reference: damselfly_oci::registry::Reference,
    /// Blob digests, in tree blob order.
    pub(crate) blobs: Vec<damselfly_common::Digest>,
}

impl BlobSource for RegistrySource {
    fn read_range(
        &self,
        blob: usize,
        range: Range<u64>,
    ) -> BoxFuture<'_, Result<Bytes, SourceError>> {
        Box::pin(async move {
            let digest = self
                .blobs
                .get(blob)
                .ok_or_else(|| SourceError(format!("no blob #{blob} in the image")))?;
            self.client
                .blob_range(&self.reference, digest, range)
                .await
                .map_err(|e| SourceError(damselfly_oci::error_chain(&e)))
        })
    }

    fn describe(&self) -> String {
        match &self.client.options().via {
            Some(via) => format!("registry {} via {via}", self.reference.name()),
            None => format!("registry {}", self.reference.name()),
        }
    }
}
