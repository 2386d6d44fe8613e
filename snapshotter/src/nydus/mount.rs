//! One image's lazy tree: a `nydus-fs mount` process and the FUSE mount it serves.
//!
//! The mount runs in its own process (the `nydus-fs` binary; the FUSE session, chunk cache and
//! reader live there), so a crash of either side does not take the other down. [`LazyMount`]
//! starts it, waits until the kernel lists the mount point (the bootstrap has then been
//! fetched and verified against the manifest's root), and stops it with SIGTERM, on which
//! `nydus-fs` unmounts.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use damselfly_oci::registry::Reference;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tracing::{debug, warn};

/// How often the mount table is read while waiting for the mount.
const POLL: Duration = Duration::from_millis(20);
/// How long `nydus-fs` may take to unmount and exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How much of the end of the mount's log an error quotes.
const LOG_TAIL: usize = 2000;

/// What to mount, where, and how ([`LazyMount::start`]'s input).
#[derive(Debug, Clone)]
pub struct MountSpec<'a> {
    /// The `nydus-fs` program.
    pub binary: &'a Path,
    /// The image, pinned to its manifest digest.
    pub image: &'a Reference,
    /// An existing empty directory to mount on.
    pub mountpoint: &'a Path,
    /// Where the process's log goes (created or truncated).
    pub log: &'a Path,
    /// The chunk cache directory.
    pub cache_dir: &'a Path,
    /// The dfdaemon mirror to read through, if any (`--via`).
    pub via: Option<&'a str>,
    /// Speak plain `http://` to the registry.
    pub plain_http: bool,
    /// Longest wait for the mount to appear.
    pub timeout: Duration,
}

/// Why a lazy mount could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The program could not be started.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The program.
        binary: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `nydus-fs mount` exited before the mount appeared (a bootstrap that does not verify,
    /// an unreachable registry, ...); its log says why.
    #[error("nydus-fs mount of {image} exited ({status}) before mounting: {log}")]
    Exited {
        /// The image.
        image: String,
        /// Its exit status.
        status: ExitStatus,
        /// The end of its log.
        log: String,
    },
    /// The mount did not appear in time (the process was killed).
    #[error("nydus-fs mount of {image} not mounted after {after:?}: {log}")]
    Timeout {
        /// The image.
        image: String,
        /// How long we waited.
        after: Duration,
        /// The end of its log.
        log: String,
    },
    /// A local file operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A running `nydus-fs mount` and its mount point. Stop it with [`LazyMount::stop`]; dropped
/// without that, the process is left running (and the tree mounted).
#[derive(Debug)]
pub struct LazyMount {
    process: Process,
    mountpoint: PathBuf,
    log: PathBuf,
}

/// The `nydus-fs mount` process: started by this snapshotter, or by an earlier run of it and
/// adopted after a restart.
#[derive(Debug)]
enum Process {
    Child(Child),
    Adopted(Pid),
}

impl LazyMount {
    /// Starts `nydus-fs mount` for `spec` and waits until the mount point is mounted.
    ///
    /// # Errors
    /// The process cannot be started, exits first, or the mount does not appear within
    /// `spec.timeout` (the process is then killed).
    pub async fn start(spec: &MountSpec<'_>) -> Result<Self, MountError> {
        let log = std::fs::File::create(spec.log).map_err(|source| MountError::Io {
            op: "create",
            path: spec.log.to_owned(),
            source,
        })?;
        let mut command = Command::new(spec.binary);
        command
            .arg("mount")
            // `docker://` makes nydus-fs read the argument as a reference, never a path.
            .arg(format!("docker://{}", spec.image))
            .arg(spec.mountpoint)
            .arg("--cache-dir")
            .arg(spec.cache_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(false);
        if let Some(via) = spec.via {
            command.arg("--via").arg(via);
        }
        if spec.plain_http {
            command.arg("--plain-http");
        }
        debug!(?command, "starting nydus-fs mount");
        let child = command.spawn().map_err(|source| MountError::Spawn {
            binary: spec.binary.to_owned(),
            source,
        })?;
        let mut child = child;
        let mountpoint = spec.mountpoint.to_owned();
        let deadline = tokio::time::Instant::now() + spec.timeout;
        loop {
            if is_mounted(&mountpoint).await {
                return Ok(Self {
                    process: Process::Child(child),
                    mountpoint,
                    log: spec.log.to_owned(),
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(MountError::Exited {
                    image: spec.image.to_string(),
                    status,
                    log: log_tail(spec.log),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(MountError::Timeout {
                    image: spec.image.to_string(),
                    after: spec.timeout,
                    log: log_tail(spec.log),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A mount an earlier run of the snapshotter started: `pid` must still be a `nydus-fs
    /// mount` process serving `mountpoint` (its command line names the mount point, so a
    /// recycled pid is not taken for it), and the mount point must be mounted. `None`
    /// otherwise.
    pub async fn adopt(pid: i32, mountpoint: &Path, log: &Path) -> Option<Self> {
        if pid <= 0 || !is_mounted(mountpoint).await {
            return None;
        }
        let cmdline = tokio::fs::read(format!("/proc/{pid}/cmdline")).await.ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let serves = args.contains(&&b"mount"[..])
            && args.contains(&mountpoint.as_os_str().as_encoded_bytes());
        serves.then(|| Self {
            process: Process::Adopted(Pid::from_raw(pid)),
            mountpoint: mountpoint.to_owned(),
            log: log.to_owned(),
        })
    }

    /// The process's id (recorded so that a restarted snapshotter can adopt it).
    pub fn pid(&self) -> Option<i32> {
        match &self.process {
            Process::Child(child) => child.id().and_then(|id| i32::try_from(id).ok()),
            Process::Adopted(pid) => Some(pid.as_raw()),
        }
    }

    /// The mounted tree.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The end of the process's log (for errors).
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Unmounts: SIGTERM (nydus-fs unmounts, detaching lazily if the tree is busy, and
    /// exits), then SIGKILL and a lazy unmount if it has not exited after a few seconds.
    ///
    /// # Errors
    /// The mount point is still mounted afterwards.
    pub async fn stop(self) -> Result<(), MountError> {
        match self.process {
            Process::Child(mut child) => {
                if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                }
                match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                    Ok(status) => {
                        debug!(?status, mountpoint = %self.mountpoint.display(), "nydus-fs exited");
                    }
                    Err(_) => {
                        warn!(mountpoint = %self.mountpoint.display(), "nydus-fs did not exit after SIGTERM; killing it");
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                    }
                }
            }
            Process::Adopted(pid) => {
                // Not our child: its exit is seen as its /proc entry going (init reaps it).
                let _ = kill(pid, Signal::SIGTERM);
                let deadline = tokio::time::Instant::now() + STOP_GRACE;
                while alive(pid) && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(POLL).await;
                }
                if alive(pid) {
                    warn!(mountpoint = %self.mountpoint.display(), "adopted nydus-fs did not exit after SIGTERM; killing it");
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
        }
        if is_mounted(&self.mountpoint).await {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status()
                .await;
        }
        if is_mounted(&self.mountpoint).await {
            return Err(MountError::Io {
                op: "unmount",
                path: self.mountpoint.clone(),
                source: std::io::Error::other("still mounted after nydus-fs exited"),
            });
        }
        Ok(())
    }
}

/// Whether something is mounted exactly at `path` (per `/proc/self/mountinfo`, whose mount
/// point field escapes spaces; the snapshotter's paths have none).
pub async fn is_mounted(path: &Path) -> bool {
    let path = path.to_string_lossy();
    tokio::fs::read_to_string("/proc/self/mountinfo")
        .await
        .unwrap_or_default()
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(&*path))
}

/// Whether process `pid` still exists (and is not a zombie).
fn alive(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw())).is_ok_and(|stat| {
        // The state follows the parenthesised command name.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// The end of the log at `path`.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(LOG_TAIL);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].trim().to_owned()
}
