//! Lazy-image (nydus-fs) test helpers: the `nydus-fs` binary, a multi-layer image holding every
//! kind of file together with the tree it must unpack to, and ways to place that image in a
//! registry or an OCI image layout and convert it.
//!
//! [`LayeredImage::rich`] builds, deterministically and in memory, three layers (two gzip, one
//! plain tar) with: a file replaced in an upper layer (new content and mode), a file deleted by a
//! whiteout, a directory made opaque, a symlink deleted by a later whiteout, a hard link, absolute
//! and relative symlinks, a fifo, a `user.` xattr, an empty file, a sparse file (mostly zeros:
//! whole zero chunks), content repeated within and across layers, files of several owners and
//! modes, and optionally a large random file. [`LayeredImage::tree`] is the merged tree those
//! layers give when applied in order (OCI semantics), computed here by a small independent
//! model as the layers are written, to compare a conversion or a mount against.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context as _, Result, ensure};
use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

use crate::registry::{OCI_CONFIG_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE, PushedImage, TestRegistry};
use crate::util::{bin, describe_output, random_blob, sha256_digest, sha256_hex};

/// `application/vnd.oci.image.layer.v1.tar+gzip`.
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// `application/vnd.oci.image.layer.v1.tar`.
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// mtime of every tar entry (2024-01-01T00:00:00Z).
pub const RICH_MTIME: u64 = 1_704_067_200;
/// Path of the optional large random file of [`LayeredImage::rich`].
pub const RICH_LARGE_PATH: &str = "/data/large.bin";
/// A small file of [`LayeredImage::rich`] (replaced in layer 1: content `nydus\n`, mode 0600, then
/// 0644 from the hard link entry naming it, as containerd applies it).
pub const RICH_SMALL_PATH: &str = "/etc/hostname";

/// Path of the `nydus-fs` binary (built by `cargo build --workspace`).
pub fn nydus_fs_bin() -> PathBuf {
    bin("nydus-fs")
}

/// Runs `nydus-fs args…` with extra environment variables and returns its output, printing
/// the command and its output to stderr (shown when a test fails).
pub fn nydus_fs(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(nydus_fs_bin());
    cmd.args(args).env_remove("DAMSELFLY_REGISTRY_CREDS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run nydus-fs: {e}"));
    eprintln!("$ nydus-fs {}\n{}", args.join(" "), describe_output(&out));
    out
}

/// Kind of a tree entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    Fifo,
}

impl EntryKind {
    /// The name `nydus-fs inspect --files` prints.
    pub fn name(self) -> &'static str {
        match self {
            Self::Dir => "dir",
            Self::File => "file",
            Self::Symlink => "symlink",
            Self::Fifo => "fifo",
        }
    }
}

/// One path of an expected merged tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    pub kind: EntryKind,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: u64,
    /// Files: content length; symlinks: target length; others 0.
    pub size: u64,
    /// Files: the content.
    pub content: Option<Vec<u8>>,
    /// Symlinks: the target.
    pub target: Option<String>,
    /// Extended attributes (name → value).
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl TreeEntry {
    /// `sha256:<hex>` of a file's content.
    pub fn sha256(&self) -> Option<String> {
        self.content.as_deref().map(sha256_digest)
    }
}

/// One layer blob.
#[derive(Debug, Clone)]
pub struct ImageLayer {
    /// [`LAYER_GZIP`] or [`LAYER_TAR`].
    pub media_type: &'static str,
    /// The blob as pushed.
    pub data: Vec<u8>,
    /// `sha256:…` of the uncompressed tar.
    pub diff_id: String,
}

/// A multi-layer OCI image built in memory, with the tree it unpacks to.
#[derive(Debug, Clone)]
pub struct LayeredImage {
    /// The OCI image config.
    pub config: Vec<u8>,
    /// Layers, bottom first.
    pub layers: Vec<ImageLayer>,
    /// Expected merged tree: absolute path (`/`, `/etc/hostname`…) → entry.
    pub tree: BTreeMap<String, TreeEntry>,
    /// Pairs of paths that must be the same inode (hard links).
    pub hard_links: Vec<(String, String)>,
}

impl LayeredImage {
    /// The image described in the module documentation; `large_bytes` > 0 adds
    /// [`RICH_LARGE_PATH`] with that many random bytes (seeded, incompressible).
    pub fn rich(large_bytes: usize) -> Result<Self> {
        let mut model = Model::default();
        let tool = random_blob(200_000, 1);
        let dup = random_blob(70_000, 3);
        let mut sparse = vec![0u8; 3 * (1 << 20) + 5];
        sparse[(1 << 20) + 100..(1 << 20) + 105].copy_from_slice(b"hello");

        let mut l0 = LayerWriter::new(&mut model);
        l0.dir("etc", 0o755, 0)?;
        l0.file("etc/hostname", 0o644, 0, b"damselfly\n")?;
        l0.file("etc/gone.txt", 0o644, 0, b"deleted by layer 1\n")?;
        l0.dir("opaque", 0o755, 0)?;
        l0.file("opaque/old-a", 0o644, 0, b"a")?;
        l0.dir("opaque/sub", 0o750, 0)?;
        l0.file("opaque/sub/old-b", 0o644, 0, b"b")?;
        l0.dir("bin", 0o755, 0)?;
        l0.file("bin/tool", 0o755, 0, &tool)?;
        l0.dir("data", 0o755, 1000)?;
        l0.file("data/empty", 0o600, 1000, b"")?;
        l0.file("data/sparse", 0o644, 1000, &sparse)?;
        if large_bytes > 0 {
            l0.file(
                RICH_LARGE_PATH.trim_start_matches('/'),
                0o644,
                1000,
                &random_blob(large_bytes, 2),
            )?;
        }
        let l0 = l0.finish()?;

        let mut l1 = LayerWriter::new(&mut model);
        l1.whiteout("etc/gone.txt")?;
        l1.opaque("opaque")?;
        l1.file("opaque/new", 0o644, 0, b"new in layer 1\n")?;
        l1.file("etc/hostname", 0o600, 0, b"nydus\n")?;
        l1.hard_link("etc/hostname.link", "etc/hostname")?;
        l1.symlink("etc/localtime", "/usr/share/zoneinfo/UTC")?;
        l1.symlink("bin/tool-link", "tool")?;
        l1.dir("run", 0o755, 0)?;
        l1.fifo("run/fifo", 0o620)?;
        l1.file_xattrs(
            "data/xattr.txt",
            0o644,
            1000,
            b"xattr carrier\n",
            &[("user.damselfly", b"hello")],
        )?;
        let l1 = l1.finish()?;

        let mut l2 = LayerWriter::new(&mut model);
        l2.whiteout("bin/tool-link")?;
        l2.dir("usr", 0o755, 0)?;
        l2.dir("usr/share", 0o755, 0)?;
        l2.file("usr/share/tool-copy", 0o644, 0, &tool)?;
        l2.file("usr/share/dup-a", 0o644, 0, &dup)?;
        l2.file("usr/share/dup-b", 0o444, 0, &dup)?;
        let l2 = l2.finish()?;

        let layers = vec![
            ImageLayer {
                media_type: LAYER_GZIP,
                diff_id: sha256_digest(&l0),
                data: gzip(&l0)?,
            },
            ImageLayer {
                media_type: LAYER_GZIP,
                diff_id: sha256_digest(&l1),
                data: gzip(&l1)?,
            },
            ImageLayer {
                media_type: LAYER_TAR,
                diff_id: sha256_digest(&l2),
                data: l2,
            },
        ];
        let config = serde_json::to_vec_pretty(&serde_json::json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": host_architecture(),
            "os": "linux",
            "config": {"Cmd": ["/bin/tool"]},
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
        }))?;
        Ok(Self {
            config,
            layers,
            tree: model.tree,
            hard_links: model.hard_links,
        })
    }

    /// The OCI image manifest of this image (config and layers by digest).
    pub fn manifest(&self) -> Vec<u8> {
        let layers: Vec<serde_json::Value> = self
            .layers
            .iter()
            .map(|l| {
                serde_json::json!({
                    "mediaType": l.media_type,
                    "digest": sha256_digest(&l.data),
                    "size": l.data.len(),
                })
            })
            .collect();
        serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": OCI_CONFIG_MEDIA_TYPE,
                "digest": sha256_digest(&self.config),
                "size": self.config.len(),
            },
            "layers": layers,
        }))
        .expect("a JSON value always serialises")
    }

    /// Digests of the layer blobs, bottom first.
    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| sha256_digest(&l.data)).collect()
    }

    /// Pushes the blobs and the manifest to `registry` as `repo:tag`.
    ///
    /// # Errors
    /// A push failed.
    pub fn push(&self, registry: &TestRegistry, repo: &str, tag: &str) -> Result<PushedImage> {
        let config_digest = registry.try_push_blob(repo, &self.config)?;
        let mut layer_digests = Vec::new();
        for layer in &self.layers {
            layer_digests.push(registry.try_push_blob(repo, &layer.data)?);
        }
        let manifest = self.manifest();
        registry.put_manifest(repo, tag, &manifest)?;
        Ok(PushedImage {
            manifest_digest: sha256_digest(&manifest),
            manifest,
            config_digest,
            layer_digests,
        })
    }

    /// Writes the image as an OCI image layout in `dir` (created), tagged `tag`.
    ///
    /// # Errors
    /// A file could not be written.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> Result<()> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)?;
        let manifest = self.manifest();
        for data in std::iter::once(&self.config)
            .chain(self.layers.iter().map(|l| &l.data))
            .chain(std::iter::once(&manifest))
        {
            std::fs::write(blobs.join(sha256_hex(data)), data)?;
        }
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": OCI_MANIFEST_MEDIA_TYPE,
                "digest": sha256_digest(&manifest),
                "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }],
        });
        std::fs::write(dir.join("index.json"), serde_json::to_vec_pretty(&index)?)?;
        Ok(())
    }
}

impl LayeredImage {
    /// Pushes the image to `registry` as `{repo}:src` and converts it with `nydus-fs convert
    /// --plain-http` (plus `args`, e.g. `--chunk-size 64KiB`) to `{repo}:nydus`. Returns what
    /// was pushed and the converted image's reference (`127.0.0.1:PORT/{repo}:nydus`).
    ///
    /// # Errors
    /// The push or the conversion failed.
    pub fn push_converted(
        &self,
        registry: &TestRegistry,
        repo: &str,
        args: &[&str],
    ) -> Result<(PushedImage, String)> {
        let pushed = self.push(registry, repo, "src")?;
        let source = format!("{}/{repo}:src", registry.host());
        let target = format!("{}/{repo}:nydus", registry.host());
        try_nydus_convert(&source, &target, args, &[])?;
        Ok((pushed, target))
    }
}

/// Converts `source` to `target` (registry references or layout directories) with
/// `nydus-fs convert --plain-http` and the extra `args`.
///
/// # Errors
/// The conversion failed (its output is in the message).
pub fn try_nydus_convert(
    source: &str,
    target: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<Output> {
    let mut all = vec!["convert", source, target, "--plain-http"];
    all.extend_from_slice(args);
    let out = nydus_fs(&all, env);
    ensure!(
        out.status.success(),
        "nydus-fs convert {source} {target}: {}",
        describe_output(&out)
    );
    Ok(out)
}

/// [`try_nydus_convert`]; panics unless it succeeds.
pub fn nydus_convert(source: &str, target: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    try_nydus_convert(source, target, args, env).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The path of blob `digest` in `registry`'s filesystem storage (to corrupt it in place).
pub fn registry_blob_path(registry: &TestRegistry, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    registry
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// The expected tree, updated as the layers are written (OCI "applying changesets").
#[derive(Default)]
struct Model {
    tree: BTreeMap<String, TreeEntry>,
    hard_links: Vec<(String, String)>,
}

impl Model {
    /// Removes `path` and everything below it.
    fn remove(&mut self, path: &str) {
        let below = format!("{path}/");
        self.tree.retain(|p, _| p != path && !p.starts_with(&below));
        self.hard_links.retain(|(a, b)| {
            a != path && b != path && !a.starts_with(&below) && !b.starts_with(&below)
        });
    }

    fn put(&mut self, path: &str, entry: TreeEntry) {
        if entry.kind != EntryKind::Dir
            || self.tree.get(path).is_none_or(|e| e.kind != EntryKind::Dir)
        {
            self.remove(path);
        }
        self.tree.insert(path.to_owned(), entry);
    }
}

/// Writes one layer's tar and applies each entry to the model.
struct LayerWriter<'a> {
    model: &'a mut Model,
    tar: tar::Builder<Vec<u8>>,
}

impl<'a> LayerWriter<'a> {
    fn new(model: &'a mut Model) -> Self {
        model
            .tree
            .entry("/".to_owned())
            .or_insert_with(|| TreeEntry {
                kind: EntryKind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: 0,
                size: 0,
                content: None,
                target: None,
                xattrs: BTreeMap::new(),
            });
        Self {
            model,
            tar: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: EntryType, mode: u32, owner: u32, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(owner.into());
        h.set_gid(owner.into());
        h.set_mtime(RICH_MTIME);
        h.set_size(size);
        h
    }

    fn entry(kind: EntryKind, mode: u32, owner: u32) -> TreeEntry {
        TreeEntry {
            kind,
            mode,
            uid: owner,
            gid: owner,
            mtime: RICH_MTIME,
            size: 0,
            content: None,
            target: None,
            xattrs: BTreeMap::new(),
        }
    }

    fn dir(&mut self, path: &str, mode: u32, owner: u32) -> Result<()> {
        let mut h = Self::header(EntryType::Directory, mode, owner, 0);
        self.tar
            .append_data(&mut h, format!("{path}/"), std::io::empty())?;
        self.model.put(
            &format!("/{path}"),
            Self::entry(EntryKind::Dir, mode, owner),
        );
        Ok(())
    }

    fn file(&mut self, path: &str, mode: u32, owner: u32, data: &[u8]) -> Result<()> {
        self.file_xattrs(path, mode, owner, data, &[])
    }

    fn file_xattrs(
        &mut self,
        path: &str,
        mode: u32,
        owner: u32,
        data: &[u8],
        xattrs: &[(&str, &[u8])],
    ) -> Result<()> {
        if !xattrs.is_empty() {
            let records: Vec<(String, &[u8])> = xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                .collect();
            self.tar
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
        }
        let mut h = Self::header(EntryType::Regular, mode, owner, data.len() as u64);
        self.tar
            .append_data(&mut h, path, data)
            .with_context(|| format!("adding {path}"))?;
        let mut e = Self::entry(EntryKind::File, mode, owner);
        e.size = data.len() as u64;
        e.content = Some(data.to_vec());
        e.xattrs = xattrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
            .collect();
        self.model.put(&format!("/{path}"), e);
        Ok(())
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let mut h = Self::header(EntryType::Symlink, 0o777, 0, 0);
        self.tar.append_link(&mut h, path, target)?;
        let mut e = Self::entry(EntryKind::Symlink, 0o777, 0);
        e.size = target.len() as u64;
        e.target = Some(target.to_owned());
        self.model.put(&format!("/{path}"), e);
        Ok(())
    }

    fn hard_link(&mut self, path: &str, target: &str) -> Result<()> {
        let mut h = Self::header(EntryType::Link, 0o644, 0, 0);
        self.tar.append_link(&mut h, path, target)?;
        let mut existing = self
            .model
            .tree
            .get(&format!("/{target}"))
            .cloned()
            .with_context(|| format!("hard link {path} to missing {target}"))?;
        // containerd and Docker apply the link entry's mode, owner and time to the inode.
        existing.mode = 0o644;
        existing.uid = 0;
        existing.gid = 0;
        existing.mtime = RICH_MTIME;
        self.model.put(&format!("/{target}"), existing.clone());
        self.model.put(&format!("/{path}"), existing);
        self.model
            .hard_links
            .push((format!("/{target}"), format!("/{path}")));
        Ok(())
    }

    fn fifo(&mut self, path: &str, mode: u32) -> Result<()> {
        let mut h = Self::header(EntryType::Fifo, mode, 0, 0);
        self.tar.append_data(&mut h, path, std::io::empty())?;
        self.model
            .put(&format!("/{path}"), Self::entry(EntryKind::Fifo, mode, 0));
        Ok(())
    }

    /// `.wh.<name>`: deletes `path` as left by the lower layers (written before anything else
    /// of this layer touches it, so removing it from the model now is exact).
    fn whiteout(&mut self, path: &str) -> Result<()> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        let mut h = Self::header(EntryType::Regular, 0o644, 0, 0);
        self.tar.append_data(&mut h, wh, std::io::empty())?;
        self.model.remove(&format!("/{path}"));
        Ok(())
    }

    /// `.wh..wh..opq` in `dir`: hides what the lower layers put below it (written first).
    fn opaque(&mut self, dir: &str) -> Result<()> {
        let mut h = Self::header(EntryType::Regular, 0o644, 0, 0);
        self.tar
            .append_data(&mut h, format!("{dir}/.wh..wh..opq"), std::io::empty())?;
        let below = format!("/{dir}/");
        self.model.tree.retain(|p, _| !p.starts_with(&below));
        Ok(())
    }

    fn finish(self) -> Result<Vec<u8>> {
        self.tar.into_inner().context("finishing a tar")
    }
}

/// gzip with a fixed header (reproducible).
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rich_image_model() {
        let image = LayeredImage::rich(0).unwrap();
        let tree = &image.tree;
        // Deleted, opaque-hidden and whited-out paths are gone; replacements took effect.
        for gone in [
            "/etc/gone.txt",
            "/opaque/old-a",
            "/opaque/sub",
            "/opaque/sub/old-b",
            "/bin/tool-link",
            RICH_LARGE_PATH,
        ] {
            assert!(!tree.contains_key(gone), "{gone}");
        }
        assert_eq!(
            tree["/etc/hostname"].content.as_deref(),
            Some(&b"nydus\n"[..])
        );
        assert_eq!(
            tree["/etc/hostname"].mode, 0o644,
            "the hard link's header mode wins"
        );
        assert_eq!(tree["/etc/hostname.link"], tree["/etc/hostname"]);
        assert_eq!(tree["/opaque/new"].kind, EntryKind::File);
        assert_eq!(tree["/run/fifo"].kind, EntryKind::Fifo);
        assert_eq!(tree["/data/xattr.txt"].xattrs["user.damselfly"], b"hello");
        assert_eq!(tree["/data/empty"].size, 0);
        assert_eq!(tree["/"].kind, EntryKind::Dir);
        assert_eq!(
            image.hard_links,
            vec![("/etc/hostname".to_owned(), "/etc/hostname.link".to_owned())]
        );
        // Reproducible.
        assert_eq!(
            image.layer_digests(),
            LayeredImage::rich(0).unwrap().layer_digests()
        );
        assert!(
            LayeredImage::rich(1000)
                .unwrap()
                .tree
                .contains_key(RICH_LARGE_PATH)
        );
    }
}

/// A running `nydus-fs mount IMAGE MOUNTPOINT ARGS…`, its log in a file. Dropping it sends
/// SIGTERM, waits, and force-detaches the mount if it is somehow still there.
#[derive(Debug)]
pub struct NydusMount {
    child: Option<std::process::Child>,
    mountpoint: PathBuf,
    log: PathBuf,
}

impl NydusMount {
    /// Starts the mount and waits (up to 20 s) until the kernel lists it.
    ///
    /// # Errors
    /// `nydus-fs` exited first: the error holds its exit status and log.
    pub fn start(image: &str, mountpoint: &Path, args: &[&str]) -> Result<Self> {
        std::fs::create_dir_all(mountpoint)
            .with_context(|| format!("creating {}", mountpoint.display()))?;
        let log = mountpoint.with_extension(format!("{}.log", std::process::id()));
        let child = Command::new(nydus_fs_bin())
            .arg("mount")
            .arg(image)
            .arg(mountpoint)
            .args(args)
            .env_remove("DAMSELFLY_REGISTRY_CREDS")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).context("creating the mount log")?)
            .spawn()
            .context("starting nydus-fs mount")?;
        let mut m = Self {
            child: Some(child),
            mountpoint: mountpoint.to_owned(),
            log,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if is_mounted(mountpoint) {
                return Ok(m);
            }
            if let Some(child) = m.child.as_mut()
                && let Some(status) = child.try_wait().context("waiting for nydus-fs")?
            {
                m.child = None;
                anyhow::bail!("nydus-fs mount exited ({status}): {}", m.log_text());
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "not mounted after 20 s: {}",
                m.log_text()
            );
            // Fine enough for the `lazy` benchmark to time a mount to a few milliseconds.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// What `nydus-fs` has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit. Returns whether it exited with status 0, and the log.
    ///
    /// # Errors
    /// The process could not be signalled or waited for.
    pub fn stop(mut self) -> Result<(bool, String)> {
        let Some(mut child) = self.child.take() else {
            return Ok((false, self.log_text()));
        };
        terminate(&child);
        let status = child.wait().context("waiting for nydus-fs")?;
        Ok((status.success(), self.log_text()))
    }
}

impl Drop for NydusMount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            let _ = child.wait();
        }
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mountpoint)
                .status();
        }
    }
}

fn terminate(child: &std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

/// Whether something is mounted exactly at `path` (per `/proc/self/mountinfo`).
pub fn is_mounted(path: &Path) -> bool {
    let path = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*path))
}

/// `name=N` from the summary line `nydus-fs mount` logs when it unmounts (`requests`,
/// `bytes_fetched`, `chunks_fetched`, `memory_hits`, `disk_hits`, `failed_reads`).
pub fn mount_stat(log: &str, name: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains("unmounted"))?;
    let key = format!(" {name}=");
    let start = line.find(&key)? + key.len();
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Whether this machine can run FUSE tests (root and `/dev/fuse`); says why not otherwise.
pub fn fuse_available(test: &str) -> bool {
    let ok = crate::util::running_as_root(test) && Path::new("/dev/fuse").exists();
    if !ok {
        eprintln!("skipping {test}: needs root and /dev/fuse");
    }
    ok
}
