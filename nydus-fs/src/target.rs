//! Writing a converted image: into an OCI image layout (atomic files, `index.json` last) or to
//! a registry (blobs pushed as they are ready, the manifest last, only once every blob is in).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow, bail};
use damselfly_oci::registry::RegistryError;
use nydus_fs::Digest;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::location::{Location, RegistryArgs, runtime};
use crate::oci::{
    ANN_REF_NAME, Descriptor, Index, MT_OCI_INDEX, MT_OCI_MANIFEST, Manifest, OciDir, Platform,
    TempFile,
};
use crate::source::{Remote, oci_digest};

/// Blob uploads running at once.
const PUSH_CONCURRENCY: usize = 3;

/// Where a converted image goes.
pub(crate) enum ImageTarget {
    /// An OCI image layout directory; other tags in it are kept.
    Layout {
        dir: OciDir,
        /// `index.json` as found (read before any work, so a corrupt one fails early).
        old_index: Option<Index>,
    },
    /// A registry repository.
    Registry(RegistryTarget),
}

/// A registry target: blobs are staged in a temporary directory and pushed in the background.
pub(crate) struct RegistryTarget {
    remote: Remote,
    staging: tempfile::TempDir,
    uploads: Vec<(String, JoinHandle<Result<(), RegistryError>>)>,
    limit: Arc<Semaphore>,
}

impl Drop for RegistryTarget {
    fn drop(&mut self) {
        // A failed conversion stops its uploads (content-addressed blobs left half-pushed are
        // harmless; the registry forgets unfinished uploads).
        for (_, handle) in &self.uploads {
            handle.abort();
        }
    }
}

impl ImageTarget {
    /// Opens `loc` for writing (`--via` does not apply: pushes go to the registry).
    pub(crate) fn open(loc: &Location, args: &RegistryArgs) -> Result<Self> {
        match loc {
            Location::Layout(path) => {
                let dir = OciDir::create(path)?;
                let old_index = dir.read_index()?;
                Ok(Self::Layout { dir, old_index })
            }
            Location::Registry(r) => {
                if r.digest.is_some() {
                    bail!(
                        "target {r}: a converted image gets a new digest; name the target by \
                         tag only"
                    );
                }
                let client = args.client(&r.registry, false)?;
                // Staged in $TMPDIR: the data blobs are about as large as the image.
                let staging = tempfile::Builder::new()
                    .prefix("nydus-fs-push-")
                    .tempdir()
                    .context("creating a staging directory for the blobs to push")?;
                Ok(Self::Registry(RegistryTarget {
                    remote: Remote {
                        client,
                        reference: r.clone(),
                    },
                    staging,
                    uploads: Vec::new(),
                    limit: Arc::new(Semaphore::new(PUSH_CONCURRENCY)),
                }))
            }
        }
    }

    /// A fresh temporary file for a data blob.
    pub(crate) fn temp_blob(&self) -> Result<TempFile> {
        match self {
            Self::Layout { dir, .. } => dir.temp_blob(),
            Self::Registry(t) => TempFile::new(t.staging.path()),
        }
    }

    /// Keeps the finished data blob `tmp` (whose content is `digest`): into the layout, or
    /// queued for upload.
    pub(crate) fn add_data_blob(&mut self, tmp: TempFile, digest: &Digest) -> Result<()> {
        match self {
            Self::Layout { dir, .. } => tmp.persist(&dir.blob_path(digest)),
            Self::Registry(t) => {
                let path = t.staging.path().join(hex::encode(digest.0));
                tmp.persist(&path)?;
                t.upload(digest, path)
            }
        }
    }

    /// Stores `data` as a blob and returns its descriptor.
    pub(crate) fn add_blob(&mut self, media_type: &str, data: &[u8]) -> Result<Descriptor> {
        match self {
            Self::Layout { dir, .. } => dir.write_blob(media_type, data),
            Self::Registry(t) => {
                let digest = Digest(Sha256::digest(data).into());
                let mut tmp = TempFile::new(t.staging.path())?;
                std::io::Write::write_all(tmp.file(), data)
                    .with_context(|| format!("writing {}", tmp.path().display()))?;
                let path = t.staging.path().join(hex::encode(digest.0));
                tmp.persist(&path)?;
                t.upload(&digest, path)?;
                Ok(Descriptor::new(media_type, digest, data.len() as u64))
            }
        }
    }

    /// Publishes `manifest` as `tag`, once every blob is stored. Returns the manifest digest.
    pub(crate) fn commit(
        self,
        manifest: &Manifest,
        tag: &str,
        platform: Option<Platform>,
    ) -> Result<String> {
        let json = serde_json::to_vec_pretty(manifest).context("serialising the manifest")?;
        match self {
            Self::Layout { dir, old_index } => {
                let mut desc = dir.write_blob(MT_OCI_MANIFEST, &json)?;
                desc.annotations = BTreeMap::from([(ANN_REF_NAME.to_owned(), tag.to_owned())]);
                desc.platform = platform;
                let mut index = old_index.unwrap_or_else(|| Index {
                    schema_version: 2,
                    media_type: Some(MT_OCI_INDEX.to_owned()),
                    manifests: Vec::new(),
                    annotations: BTreeMap::new(),
                });
                index
                    .manifests
                    .retain(|d| d.annotations.get(ANN_REF_NAME).map(String::as_str) != Some(tag));
                index.manifests.push(desc.clone());
                dir.write_index(&index)?;
                Ok(desc.digest)
            }
            Self::Registry(mut t) => {
                let rt = runtime()?;
                for (digest, handle) in std::mem::take(&mut t.uploads) {
                    rt.block_on(handle)
                        .map_err(|e| anyhow!("the upload of {digest} stopped: {e}"))?
                        .with_context(|| {
                            format!("pushing blob {digest} to {}", t.remote.reference.name())
                        })?;
                }
                let r = t.remote.reference.with_tag(tag);
                let digest = rt
                    .block_on(t.remote.client.push_manifest(&r, MT_OCI_MANIFEST, &json))
                    .with_context(|| format!("pushing the manifest to {r}"))?;
                Ok(digest.to_string())
            }
        }
    }
}

impl RegistryTarget {
    /// Starts uploading the staged file `path` as blob `digest`.
    fn upload(&mut self, digest: &Digest, path: PathBuf) -> Result<()> {
        let client = self.remote.client.clone();
        let r = self.remote.reference.clone();
        let limit = self.limit.clone();
        let oci = oci_digest(&digest.to_string())?;
        let handle = runtime()?.spawn(async move {
            // The semaphore is never closed.
            let _permit = limit.acquire_owned().await;
            client.push_blob_file(&r, &oci, &path).await
        });
        self.uploads.push((digest.to_string(), handle));
        Ok(())
    }
}
