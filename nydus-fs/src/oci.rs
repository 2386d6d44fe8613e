//! Local OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/...`): the JSON types the
//! CLI needs, content-verified blob reads, and atomic (temp file + rename) writes.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use nydus_fs::Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// OCI image index.
pub(crate) const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub(crate) const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

pub(crate) use nydus_fs::media::{
    ANN_CHUNK_SIZE, ANN_FORMAT, ANN_ROOT, ANN_SOURCE, BLOB as MT_NYDUS_BLOB,
    BOOTSTRAP as MT_NYDUS_BOOTSTRAP, LayerKind, PREFETCH as MT_NYDUS_PREFETCH,
};
/// The tag of an `index.json` entry.
pub(crate) const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Largest JSON blob (manifest, index, config) read into memory.
pub(crate) const MAX_JSON_BLOB: u64 = 16 << 20;

/// An OCI content descriptor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) platform: Option<Platform>,
}

impl Descriptor {
    /// A descriptor of `size` bytes with `digest`, without annotations or platform.
    pub(crate) fn new(media_type: &str, digest: impl std::fmt::Display, size: u64) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest: digest.to_string(),
            size,
            annotations: BTreeMap::new(),
            platform: None,
        }
    }
}

/// Platform of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Platform {
    pub(crate) architecture: String,
    pub(crate) os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) variant: Option<String>,
}

impl Platform {
    /// `os/arch[/variant]`, e.g. `linux/amd64`, `linux/arm64/v8`.
    pub(crate) fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts[..] {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Self {
                os: os.to_owned(),
                architecture: arch.to_owned(),
                variant: parts
                    .get(2)
                    .filter(|v| !v.is_empty())
                    .map(|v| (*v).to_owned()),
            }),
            _ => bail!("platform {s:?} is not os/arch[/variant] (e.g. linux/amd64)"),
        }
    }

    /// This machine's platform in OCI (Go) naming: `linux/amd64`, `linux/arm64`, ...
    pub(crate) fn host() -> Self {
        Self {
            os: std::env::consts::OS.to_owned(),
            architecture: damselfly_oci::host_architecture().to_owned(),
            variant: None,
        }
    }

    /// Whether an index entry's platform `p` satisfies this one (a variant is compared only
    /// when this one names it).
    fn accepts(&self, p: &Self) -> bool {
        p.os == self.os
            && p.architecture == self.architecture
            && (self.variant.is_none() || p.variant == self.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Whether `media_type` is an image index or manifest list.
pub(crate) fn is_index(media_type: &str) -> bool {
    media_type == MT_OCI_INDEX || media_type == MT_DOCKER_LIST
}

/// Whether `media_type` is an image manifest this tool reads.
pub(crate) fn is_manifest(media_type: &str) -> bool {
    media_type == MT_OCI_MANIFEST || media_type == MT_DOCKER_MANIFEST
}

/// The entry of `index` (whose digest is `index_digest`) for `platform`.
pub(crate) fn pick_platform(
    index: &Index,
    index_digest: &str,
    platform: &Platform,
) -> Result<Descriptor> {
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| platform.accepts(p)))
        .cloned()
        .ok_or_else(|| {
            let have: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(ToString::to_string))
                .collect();
            anyhow!(
                "image index {index_digest} has no {platform} manifest (it has {have:?}; \
                 choose one with --platform)"
            )
        })
}

/// An image index (`index.json` or a multi-platform index blob).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Index {
    pub(crate) schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) media_type: Option<String>,
    pub(crate) manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) annotations: BTreeMap<String, String>,
}

/// An image manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub(crate) schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) media_type: Option<String>,
    pub(crate) config: Descriptor,
    pub(crate) layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) annotations: BTreeMap<String, String>,
}

/// Parses `sha256:<64 lowercase hex>`.
pub(crate) fn parse_digest(s: &str) -> Result<Digest> {
    let hex_part = s
        .strip_prefix("sha256:")
        .ok_or_else(|| anyhow!("digest {s:?} is not sha256"))?;
    ensure!(
        hex_part.len() == 64
            && hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "digest {s:?} is not 64 lowercase hex digits"
    );
    let mut d = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut d).with_context(|| format!("digest {s:?}"))?;
    Ok(Digest(d))
}

/// A reader that hashes and counts what goes through it and, at the end of its input, fails
/// unless exactly `size` bytes with `digest` came through. Reading to the end therefore proves
/// the content is what the descriptor says.
pub(crate) struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
    size: u64,
    digest: Digest,
    /// What the blob is, for the error ("blob sha256:… (path)").
    what: String,
}

impl<R: Read> VerifyingReader<R> {
    pub(crate) fn new(inner: R, size: u64, digest: Digest, what: String) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
            size,
            digest,
            what,
        }
    }

    fn mismatch(&self, actual: Option<Digest>) -> io::Error {
        let found = match actual {
            Some(d) => format!("{} bytes with digest {d}", self.len),
            None => format!("over {} bytes", self.size),
        };
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} does not match its descriptor: content is {found}, descriptor says {} \
                 bytes with digest {}",
                self.what, self.size, self.digest
            ),
        )
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        if self.len > self.size {
            return Err(self.mismatch(None));
        }
        if n == 0 && !buf.is_empty() {
            let actual = Digest(self.hasher.clone().finalize().into());
            if actual != self.digest || self.len != self.size {
                return Err(self.mismatch(Some(actual)));
            }
        }
        Ok(n)
    }
}

/// An OCI image layout directory.
pub(crate) struct OciDir {
    root: PathBuf,
}

impl OciDir {
    /// An existing layout: `oci-layout` must be present.
    pub(crate) fn open(root: &Path) -> Result<Self> {
        let marker = root.join("oci-layout");
        let text = fs::read_to_string(&marker)
            .with_context(|| format!("{} is not an OCI image layout", root.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", marker.display()))?;
        ensure!(
            v.get("imageLayoutVersion").and_then(|v| v.as_str()) == Some("1.0.0"),
            "{}: unsupported imageLayoutVersion",
            marker.display()
        );
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// A layout to write into (created if missing).
    pub(crate) fn create(root: &Path) -> Result<Self> {
        let dir = root.join("blobs").join("sha256");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    pub(crate) fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir().join(hex::encode(digest.0))
    }

    /// Opens the blob of `desc` (its digest validated first).
    pub(crate) fn open_blob(&self, desc: &Descriptor) -> Result<(File, PathBuf)> {
        let digest = parse_digest(&desc.digest)?;
        let path = self.blob_path(&digest);
        let file = File::open(&path)
            .with_context(|| format!("opening blob {} ({})", desc.digest, path.display()))?;
        Ok((file, path))
    }

    /// Bytes `range` of the blob of `desc`, exactly (not verified: the caller checks them).
    pub(crate) fn read_range(
        &self,
        desc: &Descriptor,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt as _;
        let len = usize::try_from(range.end - range.start)
            .map_err(|_| anyhow!("range {range:?} is too large"))?;
        let (file, path) = self.open_blob(desc)?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, range.start)
            .with_context(|| format!("reading {range:?} of {}", path.display()))?;
        Ok(buf)
    }

    /// Reads the whole blob of `desc`, checking its size and sha256.
    pub(crate) fn read_blob(&self, desc: &Descriptor, max: u64) -> Result<Vec<u8>> {
        ensure!(
            desc.size <= max,
            "blob {} is {} bytes, over the limit of {max}",
            desc.digest,
            desc.size
        );
        let expected = parse_digest(&desc.digest)?;
        let (file, path) = self.open_blob(desc)?;
        let mut data = Vec::new();
        file.take(max + 1)
            .read_to_end(&mut data)
            .with_context(|| format!("reading blob {} ({})", desc.digest, path.display()))?;
        ensure!(
            data.len() as u64 == desc.size,
            "blob {} ({}) is {} bytes, its descriptor says {}",
            desc.digest,
            path.display(),
            data.len(),
            desc.size
        );
        let actual = Digest(Sha256::digest(&data).into());
        ensure!(
            actual == expected,
            "blob {} ({}) is corrupt: its content hashes to {actual}",
            desc.digest,
            path.display()
        );
        Ok(data)
    }

    /// `index.json`, if present.
    pub(crate) fn read_index(&self) -> Result<Option<Index>> {
        let path = self.root.join("index.json");
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let index: Index =
            serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(Some(index))
    }

    /// Resolves `tag` (or the first entry of `index.json`) to an image manifest, descending
    /// into a nested index for `platform`. Returns the tag found, the manifest descriptor and
    /// the manifest.
    pub(crate) fn resolve(
        &self,
        tag: Option<&str>,
        platform: &Platform,
    ) -> Result<(Option<String>, Descriptor, Manifest)> {
        let index = self
            .read_index()?
            .ok_or_else(|| anyhow!("{}: no index.json", self.root.display()))?;
        let entry = match tag {
            Some(tag) => index
                .manifests
                .iter()
                .find(|d| d.annotations.get(ANN_REF_NAME).map(String::as_str) == Some(tag))
                .ok_or_else(|| {
                    let tags: Vec<&str> = index
                        .manifests
                        .iter()
                        .filter_map(|d| d.annotations.get(ANN_REF_NAME).map(String::as_str))
                        .collect();
                    anyhow!(
                        "{}: no manifest tagged {tag:?} (tags: {tags:?})",
                        self.root.display()
                    )
                })?,
            None => index
                .manifests
                .first()
                .ok_or_else(|| anyhow!("{}: index.json lists no manifest", self.root.display()))?,
        };
        let found_tag = entry.annotations.get(ANN_REF_NAME).cloned();
        let mut desc = entry.clone();
        if is_index(&desc.media_type) {
            let bytes = self.read_blob(&desc, MAX_JSON_BLOB)?;
            let nested: Index = serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing image index {}", desc.digest))?;
            desc = pick_platform(&nested, &desc.digest, platform)?;
        }
        ensure!(
            is_manifest(&desc.media_type),
            "{} has unsupported media type {:?} (want an image manifest)",
            desc.digest,
            desc.media_type
        );
        let bytes = self.read_blob(&desc, MAX_JSON_BLOB)?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing image manifest {}", desc.digest))?;
        Ok((found_tag, desc, manifest))
    }

    /// Stores `data` as a blob (atomically) and returns its descriptor.
    pub(crate) fn write_blob(&self, media_type: &str, data: &[u8]) -> Result<Descriptor> {
        let digest = Digest(Sha256::digest(data).into());
        let mut tmp = self.temp_blob()?;
        tmp.file()
            .write_all(data)
            .with_context(|| format!("writing {}", tmp.path().display()))?;
        tmp.persist(&self.blob_path(&digest))?;
        Ok(Descriptor::new(media_type, digest, data.len() as u64))
    }

    /// A new temporary file in the blob directory.
    pub(crate) fn temp_blob(&self) -> Result<TempFile> {
        TempFile::new(&self.blob_dir())
    }

    /// Writes `oci-layout` and then `index.json`, each atomically.
    pub(crate) fn write_index(&self, index: &Index) -> Result<()> {
        let marker = br#"{"imageLayoutVersion":"1.0.0"}"#;
        write_atomic(&self.root, "oci-layout", marker)?;
        let json = serde_json::to_vec_pretty(index).context("serialising index.json")?;
        write_atomic(&self.root, "index.json", &json)
    }
}

fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let mut tmp = TempFile::new(dir)?;
    tmp.file()
        .write_all(data)
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(&dir.join(name))
}

/// A temporary file, removed on drop unless [`TempFile::persist`]ed.
pub(crate) struct TempFile {
    file: Option<File>,
    path: PathBuf,
}

impl TempFile {
    /// A new temporary file in `dir`.
    pub(crate) fn new(dir: &Path) -> Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".tmp-{}-{n}", std::process::id()));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            file: Some(file),
            path,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn file(&mut self) -> &mut File {
        // Only `persist` takes the file, and it consumes `self`.
        self.file.as_mut().unwrap_or_else(|| unreachable!())
    }

    /// Syncs the file and renames it to `dest`.
    pub(crate) fn persist(mut self, dest: &Path) -> Result<()> {
        let file = self.file.take().unwrap_or_else(|| unreachable!());
        file.sync_all()
            .with_context(|| format!("syncing {}", self.path.display()))?;
        drop(file);
        fs::rename(&self.path, dest)
            .with_context(|| format!("renaming {} to {}", self.path.display(), dest.display()))?;
        // Renamed: nothing left to remove.
        self.path = PathBuf::new();
        if let Some(parent) = dest.parent() {
            // Best effort: make the rename durable.
            if let Ok(d) = File::open(parent) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Fails unless `name` is a safe tag (OCI reference tag grammar, loosely).
pub(crate) fn check_tag(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':' | b'/'))
    {
        bail!("invalid tag {name:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn platforms() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!((p.os.as_str(), p.architecture.as_str()), ("linux", "arm64"));
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert_eq!(p.to_string(), "linux/arm64/v8");
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", ""] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
        let entry = |os: &str, arch: &str, variant: Option<&str>| Descriptor {
            media_type: MT_OCI_MANIFEST.to_owned(),
            digest: format!("sha256:{}", "0".repeat(64)),
            size: 1,
            annotations: BTreeMap::new(),
            platform: Some(Platform {
                os: os.to_owned(),
                architecture: arch.to_owned(),
                variant: variant.map(str::to_owned),
            }),
        };
        let mut arm = entry("linux", "arm64", Some("v8"));
        arm.digest = format!("sha256:{}", "a".repeat(64));
        let index = Index {
            schema_version: 2,
            media_type: None,
            manifests: vec![entry("linux", "amd64", None), arm],
            annotations: BTreeMap::new(),
        };
        let pick = |s: &str| pick_platform(&index, "sha256:idx", &Platform::parse(s).unwrap());
        assert!(pick("linux/arm64").unwrap().digest.contains("aaaa"));
        assert!(pick("linux/arm64/v8").unwrap().digest.contains("aaaa"));
        assert!(pick("linux/arm64/v7").is_err());
        assert!(pick("linux/amd64").unwrap().digest.contains("0000"));
        let err = pick("windows/amd64").unwrap_err().to_string();
        assert!(err.contains("no windows/amd64 manifest"), "{err}");
        assert!(err.contains("linux/arm64/v8"), "{err}");
    }

    #[test]
    fn verifying_reader_checks_at_the_end() {
        let data = b"some layer bytes".to_vec();
        let digest = Digest(Sha256::digest(&data).into());
        let read = |bytes: &[u8], size: u64| {
            let mut out = Vec::new();
            VerifyingReader::new(bytes, size, digest, "blob x".to_owned())
                .read_to_end(&mut out)
                .map(|_| out)
        };
        assert_eq!(read(&data, data.len() as u64).unwrap(), data);
        let mut bad = data.clone();
        bad[3] ^= 1;
        let err = read(&bad, data.len() as u64).unwrap_err().to_string();
        assert!(
            err.contains("blob x does not match its descriptor"),
            "{err}"
        );
        assert!(read(&data[..5], data.len() as u64).is_err());
        assert!(read(&data, 5).is_err());
    }
}
