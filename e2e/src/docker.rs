//! A real Docker engine (Debian's `docker.io`: dockerd 20.10) with private state, reading a
//! given `daemon.json` (such as the one `dfdaemon init docker` writes).
//!
//! Each [`Docker`] keeps its images, containers, its own containerd and its API socket under
//! one temporary directory (`--data-root`, `--exec-root`, `-H unix://…`), so it neither needs
//! nor changes the machine's Docker, and is stopped (SIGTERM, then SIGKILL) on drop.
//!
//! Facts about dockerd 20.10 (Debian 12) on the test machines that this relies on:
//! * `vfs` storage (plain copies) works everywhere; overlay2 needs a kernel and mount
//!   namespace that allow it, and the test image is small.
//! * `--iptables=false --ip6tables=false --bridge=none`: the engine touches no host firewall
//!   and makes no bridge; the test containers run with `--network none`.
//! * Without systemd, `--exec-opt native.cgroupdriver=cgroupfs`.
//! * `registry-mirrors` applies to Docker Hub images only (`docker.io/...`, which is what a
//!   name without a registry means); the mirror is asked with the scheme its URL has, so a
//!   plain-HTTP mirror on loopback works without `insecure-registries`.
//! * A Unix socket path is limited to 108 bytes: the state lives under a short `/tmp` name.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{Daemon, containerd::output_with_timeout};

/// How long one `docker` command may take.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);

/// A running dockerd with private state.
#[derive(Debug)]
pub struct Docker {
    daemon: Option<Daemon>,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

/// The `dockerd` program, or why there is none.
///
/// # Errors
/// `dockerd` is not installed.
pub fn dockerd_program() -> Result<PathBuf> {
    ["/usr/sbin/dockerd", "/usr/bin/dockerd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context(
            "dockerd is not installed (Debian package docker.io; scripts/setup.sh installs it)",
        )
}

impl Docker {
    /// Starts dockerd with `daemon_json` as its configuration file and waits until its API
    /// answers.
    ///
    /// # Errors
    /// dockerd is missing, or did not become ready within 60 s (its log is in the error).
    pub fn start(daemon_json: &Path) -> Result<Self> {
        let program = dockerd_program()?;
        let dir = tempfile::Builder::new()
            .prefix("dfe2e-docker-")
            .tempdir_in("/tmp")
            .context("cannot create a temporary directory")?;
        let socket = dir.path().join("d.sock");
        let daemon = Daemon::builder(program)
            .name("dockerd")
            .arg("--config-file")
            .arg(daemon_json)
            .arg("--data-root")
            .arg(dir.path().join("root"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--storage-driver",
                "vfs",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--exec-opt",
                "native.cgroupdriver=cgroupfs",
            ])
            .spawn()?;
        let mut docker = Self {
            daemon: Some(daemon),
            dir,
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let info = docker.docker(&["version", "--format", "{{.Server.Version}}"]);
            if let Ok(out) = &info
                && out.status.success()
            {
                break;
            }
            let running = docker.daemon.as_mut().is_some_and(Daemon::is_running);
            if !running || Instant::now() > deadline {
                let log = docker
                    .daemon
                    .as_ref()
                    .map(Daemon::log_excerpt)
                    .unwrap_or_default();
                bail!(
                    "dockerd did not become ready ({}): {log}",
                    if running { "60 s passed" } else { "it exited" }
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(docker)
    }

    /// Runs the `docker` client against this engine.
    ///
    /// # Errors
    /// The client cannot be started, or took longer than [`DOCKER_TIMEOUT`].
    pub fn docker(&self, args: &[&str]) -> Result<Output> {
        let mut command = Command::new(client_program());
        command
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            // Its own client config, so no credential helper or context of the machine's.
            .env("DOCKER_CONFIG", self.dir.path().join("client"));
        output_with_timeout(command, DOCKER_TIMEOUT)
    }

    /// `docker pull <image>`.
    ///
    /// # Errors
    /// As [`Docker::docker`].
    pub fn pull(&self, image: &str) -> Result<Output> {
        self.docker(&["pull", image])
    }

    /// `docker run --rm --network none <image> [cmd]`; its output is the container's.
    ///
    /// # Errors
    /// As [`Docker::docker`].
    pub fn run(&self, image: &str, cmd: &[&str]) -> Result<Output> {
        let mut args = vec!["run", "--rm", "--network", "none", image];
        args.extend_from_slice(cmd);
        self.docker(&args)
    }

    /// Why no container can run here, if so: loads the first layer of `image` (a rootfs
    /// tarball) as a local image (no registry, no mirror) and runs `echo` in it. `None` when
    /// that works, so a failing run of a pulled image is the pull's fault.
    pub fn cannot_run_containers(&self, image: &crate::TestImage) -> Option<String> {
        const PROBE: &str = "damselfly-probe:1";
        crate::image::cannot_run_locally(
            self.dir.path(),
            image,
            |tarball| self.docker(&["import", tarball, PROBE]),
            || self.run(PROBE, &["/bin/echo", "probe"]),
        )
    }

    /// The engine's log.
    pub fn log_text(&self) -> String {
        self.daemon
            .as_ref()
            .map(Daemon::log_text)
            .unwrap_or_default()
    }
}

/// Debian's client (`/usr/bin/docker`, of the same release as the engine) before any other
/// on the `PATH`.
fn client_program() -> PathBuf {
    let debian = PathBuf::from("/usr/bin/docker");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("docker")
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        // `--rm` containers are gone; a failed run may leave one.
        if let Ok(out) = self.docker(&["ps", "-aq"]) {
            let ids = String::from_utf8_lossy(&out.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.docker(&args);
            }
        }
        if let Some(mut daemon) = self.daemon.take() {
            // SIGTERM lets dockerd stop its containerd and unmount; SIGKILL on drop after.
            let _ = daemon.terminate(Duration::from_secs(20));
        }
        crate::containerd::unmount_under(self.dir.path());
    }
}
