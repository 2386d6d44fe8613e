//! Reading images, from an OCI image layout or from a registry, with every byte verified:
//! whole blobs against their digest, streams at their end, ranges by the caller (chunk digests).

use std::io::{BufReader, Read};
use std::ops::Range;

use anyhow::{Context as _, Result, ensure};
use damselfly_oci::registry::{
    BlobStream, MT_DOCKER_MANIFEST, MT_OCI_MANIFEST, Reference, RegistryClient,
};
use tokio_util::io::SyncIoBridge;

use crate::location::{Location, RegistryArgs, runtime};
use crate::oci::{
    Descriptor, Index, Manifest, OciDir, Platform, VerifyingReader, is_index, is_manifest,
    parse_digest, pick_platform,
};

/// Buffer between the (async) registry stream and the (sync) tar reader.
const STREAM_BUFFER: usize = 256 << 10;

/// An image to read.
pub(crate) enum ImageSource {
    /// An OCI image layout directory.
    Layout(OciDir),
    /// An image in a registry.
    Registry(Remote),
}

/// A registry repository and the client to reach it.
pub(crate) struct Remote {
    pub(crate) client: RegistryClient,
    pub(crate) reference: Reference,
}

impl Remote {
    fn block_on<F: Future>(&self, f: F) -> Result<F::Output> {
        Ok(runtime()?.block_on(f))
    }

    /// Starts the download of the blob of `desc`, refusing one whose size is not the
    /// descriptor's.
    async fn blob(&self, desc: &Descriptor) -> Result<BlobStream> {
        let r = &self.reference;
        let stream = self
            .client
            .blob(r, &oci_digest(&desc.digest)?)
            .await
            .with_context(|| format!("fetching blob {} of {r}", desc.digest))?;
        ensure!(
            stream.size == desc.size,
            "blob {} of {r} is {} bytes, its descriptor says {}",
            desc.digest,
            stream.size,
            desc.size
        );
        Ok(stream)
    }
}

/// A resolved image manifest.
pub(crate) struct Resolved {
    /// The tag it was found under, if any.
    pub(crate) tag: Option<String>,
    /// Its descriptor (digest, size, media type, platform when it came from an index).
    pub(crate) desc: Descriptor,
    /// The manifest.
    pub(crate) manifest: Manifest,
}

/// Converts a digest checked by [`parse_digest`] into the registry client's type.
pub(crate) fn oci_digest(s: &str) -> Result<damselfly_common::Digest> {
    Ok(damselfly_common::Digest(parse_digest(s)?.0))
}

impl ImageSource {
    /// Opens `loc` for reading; `--via` applies.
    pub(crate) fn open(loc: &Location, args: &RegistryArgs) -> Result<Self> {
        Ok(match loc {
            Location::Layout(dir) => Self::Layout(OciDir::open(dir)?),
            Location::Registry(r) => Self::Registry(Remote {
                client: args.client(&r.registry, true)?,
                reference: r.clone(),
            }),
        })
    }

    /// Resolves the image: for a layout, `tag` (or the first entry of `index.json`); for a
    /// registry, the reference's tag or digest (`tag` must be `None`). An index is resolved to
    /// `platform`.
    pub(crate) fn resolve(&self, tag: Option<&str>, platform: &Platform) -> Result<Resolved> {
        let remote = match self {
            Self::Layout(dir) => {
                let (tag, desc, manifest) = dir.resolve(tag, platform)?;
                return Ok(Resolved {
                    tag,
                    desc,
                    manifest,
                });
            }
            Self::Registry(remote) => remote,
        };
        let r = &remote.reference;
        ensure!(
            tag.is_none(),
            "--tag selects an image in a layout; for a registry, put the tag in the reference"
        );
        let fetched = remote
            .block_on(remote.client.manifest(r, &[]))?
            .with_context(|| format!("fetching the manifest of {r}"))?;
        let mut desc = Descriptor::new(
            &fetched.media_type,
            fetched.digest,
            fetched.bytes.len() as u64,
        );
        let mut bytes = fetched.bytes;
        if is_index(&desc.media_type) {
            let index: Index = serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing image index {} of {r}", desc.digest))?;
            desc = pick_platform(&index, &desc.digest, platform)?;
            let by_digest = r.with_digest(oci_digest(&desc.digest)?);
            let fetched = remote
                .block_on(
                    remote
                        .client
                        .manifest(&by_digest, &[MT_OCI_MANIFEST, MT_DOCKER_MANIFEST]),
                )?
                .with_context(|| format!("fetching manifest {by_digest}"))?;
            ensure!(
                fetched.bytes.len() as u64 == desc.size,
                "manifest {by_digest} is {} bytes, the index says {}",
                fetched.bytes.len(),
                desc.size
            );
            bytes = fetched.bytes;
        }
        ensure!(
            is_manifest(&desc.media_type),
            "{r} is {:?}, not an image manifest or index",
            desc.media_type
        );
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing image manifest {} of {r}", desc.digest))?;
        Ok(Resolved {
            tag: r.tag.clone(),
            desc,
            manifest,
        })
    }

    /// The whole blob of `desc`, of at most `max` bytes, checked against its size and digest.
    pub(crate) fn read_blob(&self, desc: &Descriptor, max: u64) -> Result<Vec<u8>> {
        let remote = match self {
            Self::Layout(dir) => return dir.read_blob(desc, max),
            Self::Registry(remote) => remote,
        };
        ensure!(
            desc.size <= max,
            "blob {} is {} bytes, over the limit of {max}",
            desc.digest,
            desc.size
        );
        remote
            .block_on(async {
                Ok::<_, anyhow::Error>(remote.blob(desc).await?.read_all(max).await?)
            })?
            .with_context(|| format!("reading blob {} of {}", desc.digest, remote.reference))
    }

    /// A reader of the blob of `desc` that fails at its end unless the content has the
    /// descriptor's size and digest. Read it to the end before trusting what it gave.
    pub(crate) fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>> {
        let expected = parse_digest(&desc.digest)?;
        let remote = match self {
            Self::Layout(dir) => {
                let (file, path) = dir.open_blob(desc)?;
                let what = format!("blob {} ({})", desc.digest, path.display());
                return Ok(Box::new(VerifyingReader::new(
                    BufReader::new(file),
                    desc.size,
                    expected,
                    what,
                )));
            }
            Self::Registry(remote) => remote,
        };
        let stream = remote.block_on(remote.blob(desc))??;
        let bridge =
            SyncIoBridge::new_with_handle(stream.into_async_read(), runtime()?.handle().clone());
        Ok(Box::new(BufReader::with_capacity(STREAM_BUFFER, bridge)))
    }

    /// The length of the blob of `desc` as stored, `None` if it is missing.
    pub(crate) fn blob_len(&self, desc: &Descriptor) -> Result<Option<u64>> {
        match self {
            Self::Layout(dir) => {
                let path = dir.blob_path(&parse_digest(&desc.digest)?);
                match std::fs::metadata(&path) {
                    Ok(m) => Ok(Some(m.len())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
                }
            }
            Self::Registry(remote) => {
                let r = &remote.reference;
                let digest = oci_digest(&desc.digest)?;
                remote
                    .block_on(remote.client.blob_len(r, &digest))?
                    .with_context(|| format!("asking for blob {} of {r}", desc.digest))
            }
        }
    }

    /// Bytes `range` of the blob of `desc`, exactly (not verified: the caller checks them).
    pub(crate) fn read_range(&self, desc: &Descriptor, range: Range<u64>) -> Result<Vec<u8>> {
        match self {
            Self::Layout(dir) => dir.read_range(desc, range),
            Self::Registry(remote) => {
                let r = &remote.reference;
                let digest = oci_digest(&desc.digest)?;
                let bytes = remote
                    .block_on(remote.client.blob_range(r, &digest, range.clone()))?
                    .with_context(|| format!("reading {range:?} of blob {} of {r}", desc.digest))?;
                Ok(bytes.to_vec())
            }
        }
    }
}
