//! A small *runnable* multi-layer OCI image for tests with a real container runtime.
//!
//! [`TestImage::busybox`] builds, entirely in memory and deterministically (fixed mtimes, owners
//! and gzip headers, so the same arguments always give the same digests):
//!
//! 1. `/bin/busybox` (the host's statically linked `/bin/busybox` from Debian's `busybox-static`)
//!    with the symlinks `/bin/sh`, `/bin/cat`, `/bin/echo` and `/bin/ls`;
//! 2. `/etc/damselfly/hello.txt` containing the given text;
//! 3. `/data/random.bin` with pseudo-random bytes from a seed, so that images with different
//!    seeds share only the first layer and the image is as large as P2P tests need.
//!
//! The layers are gzip-compressed tars (`application/vnd.oci.image.layer.v1.tar+gzip`) and the
//! config is an OCI image config whose default command prints the hello file.

use std::io::{self, Write as _};
use std::path::PathBuf;

use anyhow::{Context as _, Result, ensure};
use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

use crate::registry::{PushedImage, TestRegistry};
use crate::util::{random_blob, sha256_digest};

/// Where the busybox binary is taken from; `DAMSELFLY_E2E_BUSYBOX` overrides it.
const DEFAULT_BUSYBOX: &str = "/bin/busybox";
/// Modification time of every tar entry (2024-01-01T00:00:00Z), for reproducible digests.
const MTIME: u64 = 1_704_067_200;
/// The same instant for the config's `created` field.
const CREATED: &str = "2024-01-01T00:00:00Z";
/// `$PATH` in the image config.
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Path of the hello file inside a [`TestImage::busybox`] image.
pub const TEST_IMAGE_HELLO_PATH: &str = "/etc/damselfly/hello.txt";
/// Path of the random file inside a [`TestImage::busybox`] image.
pub const TEST_IMAGE_RANDOM_PATH: &str = "/data/random.bin";

/// An OCI image built in memory; push it with [`TestRegistry::push_test_image`].
#[derive(Debug, Clone)]
pub struct TestImage {
    /// The OCI image config JSON, as pushed.
    pub config: Vec<u8>,
    /// The compressed layer blobs (gzip tars), bottom first, as pushed.
    pub layers: Vec<Vec<u8>>,
    /// `sha256:<hex>` of each *uncompressed* layer tar (the config's `rootfs.diff_ids`).
    pub diff_ids: Vec<String>,
    /// The text of `/etc/damselfly/hello.txt`, which the image's default command prints.
    pub hello: String,
}

impl TestImage {
    /// A runnable busybox image with three layers (see the module documentation): busybox,
    /// `/etc/damselfly/hello.txt` containing `hello` (exactly, no newline added), and
    /// `/data/random.bin` with `random_bytes` bytes of [`random_blob`]`(random_bytes, seed)`.
    ///
    /// The default command is `/bin/cat /etc/damselfly/hello.txt`. The architecture is the
    /// host's. Fails if the busybox binary (`/bin/busybox`, or `$DAMSELFLY_E2E_BUSYBOX`) is
    /// missing or dynamically linked: install Debian's `busybox-static`.
    pub fn busybox(hello: &str, random_bytes: usize, seed: u64) -> Result<Self> {
        let busybox_path = std::env::var_os("DAMSELFLY_E2E_BUSYBOX")
            .map_or_else(|| PathBuf::from(DEFAULT_BUSYBOX), PathBuf::from);
        let busybox = std::fs::read(&busybox_path).with_context(|| {
            format!(
                "cannot read {}: install busybox-static (scripts/setup.sh)",
                busybox_path.display()
            )
        })?;
        ensure!(
            !elf_has_interpreter(&busybox),
            "{} is dynamically linked and cannot run in an empty image: install busybox-static",
            busybox_path.display()
        );

        let mut base = TarLayer::new();
        base.dir("bin")?;
        base.file("bin/busybox", 0o755, &busybox)?;
        for applet in ["sh", "cat", "echo", "ls"] {
            base.symlink(&format!("bin/{applet}"), "busybox")?;
        }

        let mut etc = TarLayer::new();
        etc.dir("etc")?;
        etc.dir("etc/damselfly")?;
        etc.file(relative(TEST_IMAGE_HELLO_PATH), 0o644, hello.as_bytes())?;

        let mut data = TarLayer::new();
        data.dir("data")?;
        data.file(
            relative(TEST_IMAGE_RANDOM_PATH),
            0o644,
            &random_blob(random_bytes, seed),
        )?;

        let mut layers = Vec::with_capacity(3);
        let mut diff_ids = Vec::with_capacity(3);
        for layer in [base, etc, data] {
            let tar = layer.finish()?;
            diff_ids.push(sha256_digest(&tar));
            layers.push(gzip(&tar)?);
        }

        let config = serde_json::to_vec_pretty(&serde_json::json!({
            "created": CREATED,
            "architecture": damselfly_oci::host_architecture(),
            "os": "linux",
            "config": {
                "Env": [PATH_ENV],
                "Cmd": ["/bin/cat", TEST_IMAGE_HELLO_PATH],
                "WorkingDir": "/",
            },
            "rootfs": {
                "type": "layers",
                "diff_ids": diff_ids,
            },
            "history": [
                {"created": CREATED, "created_by": "damselfly-e2e: busybox-static"},
                {"created": CREATED, "created_by": "damselfly-e2e: hello.txt"},
                {"created": CREATED, "created_by": format!("damselfly-e2e: {random_bytes} random bytes, seed {seed}")},
            ],
        }))?;

        Ok(Self {
            config,
            layers,
            diff_ids,
            hello: hello.to_owned(),
        })
    }

    /// The layers as slices, as [`TestRegistry::push_image`] takes them.
    pub fn layer_slices(&self) -> Vec<&[u8]> {
        self.layers.iter().map(Vec::as_slice).collect()
    }

    /// Total size of the config and the compressed layers.
    pub fn size(&self) -> usize {
        self.config.len() + self.layers.iter().map(Vec::len).sum::<usize>()
    }
}

impl TestRegistry {
    /// Pushes `image` (config, gzip layers and an OCI manifest) as `repo:tag`.
    pub fn push_test_image(&self, repo: &str, tag: &str, image: &TestImage) -> Result<PushedImage> {
        self.try_push_image(repo, tag, &image.config, &image.layer_slices())
            .with_context(|| format!("cannot push test image {repo}:{tag}"))
    }
}

/// An uncompressed tar being built, with deterministic headers.
struct TarLayer {
    builder: tar::Builder<Vec<u8>>,
}

impl TarLayer {
    fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(entry_type: EntryType, mode: u32, size: u64) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(entry_type);
        header.set_mode(mode);
        header.set_size(size);
        header.set_mtime(MTIME);
        header.set_uid(0);
        header.set_gid(0);
        header
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        let mut header = Self::header(EntryType::Directory, 0o755, 0);
        self.builder
            .append_data(&mut header, format!("{path}/"), io::empty())
            .with_context(|| format!("cannot add directory {path} to a tar"))
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        let mut header = Self::header(EntryType::Regular, mode, data.len() as u64);
        self.builder
            .append_data(&mut header, path, data)
            .with_context(|| format!("cannot add file {path} to a tar"))
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let mut header = Self::header(EntryType::Symlink, 0o777, 0);
        self.builder
            .append_link(&mut header, path, target)
            .with_context(|| format!("cannot add symlink {path} -> {target} to a tar"))
    }

    fn finish(self) -> Result<Vec<u8>> {
        self.builder.into_inner().context("cannot finish a tar")
    }
}

/// gzip with a zero mtime and no file name in the header (reproducible).
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(data.len() + 1024), Compression::fast());
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

/// `/etc/x` -> `etc/x` (tar entries in layers are relative).
fn relative(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// Whether `elf` is a 64-bit little-endian ELF file with a `PT_INTERP` program header, i.e.
/// dynamically linked. Anything else (including files this cannot parse) answers `false`.
fn elf_has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    fn field<const N: usize>(elf: &[u8], at: usize) -> Option<[u8; N]> {
        elf.get(at..at.checked_add(N)?)?.try_into().ok()
    }
    // Magic, ELFCLASS64, ELFDATA2LSB.
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return false;
    }
    let phoff = field::<8>(elf, 0x20).and_then(|b| usize::try_from(u64::from_le_bytes(b)).ok());
    let phentsize = field::<2>(elf, 0x36).map(|b| usize::from(u16::from_le_bytes(b)));
    let phnum = field::<2>(elf, 0x38).map(|b| usize::from(u16::from_le_bytes(b)));
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return false;
    };
    (0..phnum).any(|i| {
        phoff
            .checked_add(i * phentsize)
            .and_then(|at| field::<4>(elf, at))
            .is_some_and(|p_type| u32::from_le_bytes(p_type) == PT_INTERP)
    })
}

/// Why no container can run on this machine under a runtime, if so: writes the busybox
/// layer of `image` (a rootfs tarball) into `dir`, `import`s it by its path as a local image
/// (no registry, no mirror) and `run`s `echo` in it. `None` when that works, so a failing run
/// of a pulled image is the pull's fault.
pub(crate) fn cannot_run_locally(
    dir: &std::path::Path,
    image: &TestImage,
    import: impl Fn(&str) -> Result<std::process::Output>,
    run: impl Fn() -> Result<std::process::Output>,
) -> Option<String> {
    let probe = || -> Result<std::process::Output> {
        let base = image
            .layers
            .first()
            .context("the test image has no layers")?;
        let tarball = dir.join("probe-rootfs.tar.gz");
        std::fs::write(&tarball, base)
            .with_context(|| format!("cannot write {}", tarball.display()))?;
        let tarball = tarball.to_str().context("temporary path is not UTF-8")?;
        let imported = import(tarball)?;
        ensure!(
            imported.status.success(),
            "import failed: {}",
            crate::describe_output(&imported)
        );
        run()
    };
    match probe() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        Err(e) => Some(format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_dynamic_elf() {
        // The test executable itself is dynamically linked on Linux/glibc.
        if let Ok(exe) = std::env::current_exe().and_then(std::fs::read)
            && cfg!(all(
                target_os = "linux",
                target_env = "gnu",
                target_pointer_width = "64"
            ))
        {
            assert!(elf_has_interpreter(&exe));
        }
        assert!(!elf_has_interpreter(b"#!/bin/sh\n"));
        assert!(!elf_has_interpreter(b"\x7fELF\x02\x01"));
    }

    #[test]
    fn tar_layers_are_reproducible() {
        let build = || {
            let mut layer = TarLayer::new();
            layer.dir("etc").unwrap();
            layer.file("etc/a", 0o644, b"abc").unwrap();
            layer.symlink("etc/b", "a").unwrap();
            gzip(&layer.finish().unwrap()).unwrap()
        };
        assert_eq!(build(), build());
    }
}
