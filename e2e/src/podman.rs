//! A real Podman (Debian's 4.3) with private storage, pulling through a `registries.conf`.
//!
//! Each [`Podman`] keeps its images, containers and locks under a temporary directory
//! (`--root`, `--runroot`, `--tmpdir`), so it neither needs nor changes the machine's images,
//! and reads the registries configuration given to it (`CONTAINERS_REGISTRIES_CONF`) as its
//! main `registries.conf`.
//!
//! Facts about Podman 4.3.1 (Debian 12) on the test machines that this relies on:
//! * `vfs` storage (plain copies) works everywhere; overlay needs a kernel and mount
//!   namespace that allow it, and the test image is small.
//! * Without systemd and journald, `--cgroup-manager cgroupfs` and `--events-backend file`
//!   are needed, or every command warns and some fail.
//! * Podman asks runc to give a rootful container 1048576 for both `RLIMIT_NOFILE` and
//!   `RLIMIT_NPROC` (its `RLimitDefaultValue`, not clamped to its own limits when it holds
//!   `CAP_SYS_RESOURCE`). Where the sandbox does not allow that, `podman run` fails with
//!   `error setting rlimit type 7: operation not permitted` (type 6 once the first is
//!   lowered), so [`Podman::run`] asks for 1024 of each, which a one-command container never
//!   reaches (and root is exempt from `RLIMIT_NPROC`).
//! * `podman run` on the default network creates a CNI bridge and firewall rules on the
//!   host; the test containers need no network, so they run with `--network none`.
//! * A pull still records blob locations in `/var/lib/containers/cache/blob-info-cache-v1.boltdb`
//!   (as skopeo does, and no flag moves it); that cache is a hint for reusing blobs on push
//!   and never decides what a pull fetches, so instances do not disturb each other through it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context as _, Result, ensure};

use crate::containerd::{CTR_TIMEOUT, output_with_timeout, unmount_under};
use crate::image::TestImage;

/// A Podman with its own storage under a temporary directory, removed on drop.
#[derive(Debug)]
pub struct Podman {
    dir: tempfile::TempDir,
    registries_conf: PathBuf,
}

impl Podman {
    /// A Podman that reads `registries_conf` (a `registries.conf`, such as the drop-in
    /// `dfdaemon init podman` writes) for every pull.
    ///
    /// # Errors
    /// The temporary directory cannot be made, or `podman` does not run.
    pub fn new(registries_conf: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("damselfly-e2e-podman-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let podman = Self {
            dir,
            registries_conf: registries_conf.to_path_buf(),
        };
        let version = podman.podman(&["version", "--format", "{{.Client.Version}}"])?;
        ensure!(
            version.status.success(),
            "`podman version` failed; is podman installed? run scripts/setup.sh\n{}",
            crate::describe_output(&version)
        );
        Ok(podman)
    }

    /// Runs `podman ARGS` with this instance's storage and registries configuration, killing it
    /// after [`CTR_TIMEOUT`]. Returns the output whatever the exit status.
    ///
    /// # Errors
    /// It could not be started or did not finish in time.
    pub fn podman(&self, args: &[&str]) -> Result<Output> {
        let dir = self.dir.path();
        let mut command = Command::new(program());
        command
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--runroot")
            .arg(dir.join("run"))
            .arg("--tmpdir")
            .arg(dir.join("tmp"))
            .args(["--storage-driver", "vfs"])
            .args(["--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "file"])
            .args(args)
            .env("CONTAINERS_REGISTRIES_CONF", &self.registries_conf)
            .current_dir(dir);
        let command_line = format!("podman {}", args.join(" "));
        output_with_timeout(command, CTR_TIMEOUT)
            .with_context(|| format!("`{command_line}` failed to complete"))
    }

    /// `podman pull IMAGE`.
    ///
    /// # Errors
    /// As [`Podman::podman`].
    pub fn pull(&self, image: &str) -> Result<Output> {
        self.podman(&["pull", image])
    }

    /// `podman run --rm` of `image` (its default command when `cmd` is empty), with no network
    /// and small rlimits (see the module docs). The container's output is the output's.
    ///
    /// # Errors
    /// As [`Podman::podman`].
    pub fn run(&self, image: &str, cmd: &[&str]) -> Result<Output> {
        let mut args = vec![
            "run",
            "--rm",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            image,
        ];
        args.extend_from_slice(cmd);
        self.podman(&args)
    }

    /// Why no container can run here, if so: imports the busybox layer of `image` as a local
    /// image (no registry, no mirror) and runs `echo` in it. `None` when that works, so a
    /// failing run of a pulled image is the pull's fault.
    pub fn cannot_run_containers(&self, image: &TestImage) -> Option<String> {
        const PROBE: &str = "localhost/damselfly-probe:1";
        crate::image::cannot_run_locally(
            self.dir.path(),
            image,
            |tarball| self.podman(&["import", tarball, PROBE]),
            || self.run(PROBE, &["/bin/echo", "probe"]),
        )
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // `--rm` containers are gone; a failed run may leave one (and its /dev/shm mount).
        let _ = self.podman(&["rm", "--all", "--force"]);
        unmount_under(self.dir.path());
    }
}

fn program() -> std::ffi::OsString {
    std::env::var_os("DAMSELFLY_PODMAN_BIN").unwrap_or_else(|| "podman".into())
}
