//! A real, private containerd (Debian's 1.6) driven through `ctr`.
//!
//! Each [`Containerd`] has its own root, state, socket, `/opt` plugin dir and FIFO dir under a
//! temporary directory, so it neither needs nor disturbs a system containerd. The CRI plugin is
//! disabled (no CNI needed), as are the snapshotters that cannot work here (aufs, btrfs, zfs,
//! devmapper).
//!
//! Facts about containerd 1.6 (checked against Debian's 1.6.20) that this relies on:
//! * `ctr image pull` fetches in the `ctr` process itself, so `--hosts-dir` is read by `ctr`;
//!   the daemon's own registry configuration does not matter.
//! * In a hosts directory, a registry `host:port` is looked up as `host_port_` first (the
//!   Windows-safe form), then `host:port`, then `_default`; [`write_hosts_toml`] uses
//!   `host:port`.
//! * A `hosts.toml` without any `host` table (e.g. only `server = "..."`) is *rejected* by 1.6
//!   (`ctr` logs ``failed to decode hosts.toml error="invalid `host` tree"``) and the registry's
//!   defaults are used instead, so [`write_hosts_toml`] always writes a `[host]` table.
//! * The scheme of `server` and of each `[host."..."]` URL decides between HTTP and HTTPS (no
//!   fallback from one to the other). Without a usable `hosts.toml`, `ctr` uses plain HTTP for
//!   a loopback registry (`127.0.0.1:PORT`) and HTTPS otherwise; `--plain-http` is not needed
//!   and not passed.
//! * Every request to a host other than the reference's own (a mirror, or a `server` with
//!   another address) carries the query `?ns=<registry host of the reference>`, e.g.
//!   `/v2/e2e/busybox/blobs/sha256:...?ns=127.0.0.1%3A5000`. A mirror that refuses connections
//!   or answers 404 is skipped in favour of the next host.
//! * `ctr run` puts the container in the cgroup `/<namespace>/<id>` by default; two
//!   containerds running the same container id at once would share it, so [`Containerd::run`]
//!   passes a cgroup unique to the instance.
//!
//! The snapshotter is chosen once per instance (see [`ContainerdBuilder::snapshotter`]):
//! `overlayfs` when containerd's own start-up probe (an actual overlay mount inside its root
//! directory) succeeded, `native` (plain copies, always works, slower) otherwise.

use std::fs::{self, File};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use crate::daemon::Daemon;
use crate::util::tail;

/// The containerd namespace every `ctr` command of the harness uses.
pub const CONTAINERD_NAMESPACE: &str = "damselfly-e2e";
/// The namespace of everything the CRI plugin does.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// How long one `ctr` command may take before it is killed and reported as hung.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(120);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-command timeout of the best-effort cleanup on drop.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(15);
const LOG_LINES: usize = 40;

/// Builder for [`Containerd`].
#[derive(Debug, Default, Clone)]
#[must_use]
pub struct ContainerdBuilder {
    snapshotter: Option<String>,
    proxy_snapshotters: Vec<(String, PathBuf)>,
    cri_hosts: Option<PathBuf>,
}

impl ContainerdBuilder {
    /// Use this snapshotter (`overlayfs`, `native`) for every pull and run instead of picking
    /// one. `$DAMSELFLY_E2E_SNAPSHOTTER` does the same for instances that do not set one.
    /// Starting fails if containerd did not load it.
    pub fn snapshotter(mut self, name: impl Into<String>) -> Self {
        self.snapshotter = Some(name.into());
        self
    }

    /// Registers the snapshotter `name` served by a proxy plugin on the unix socket `socket`
    /// (a `[proxy_plugins.<name>]` table of type `snapshot`). Combine with
    /// [`ContainerdBuilder::snapshotter`] to pull and run with it; the plugin's process must be
    /// listening before [`ContainerdBuilder::start`], which checks that containerd loaded it.
    pub fn proxy_snapshotter(
        mut self,
        name: impl Into<String>,
        socket: impl Into<PathBuf>,
    ) -> Self {
        self.proxy_snapshotters.push((name.into(), socket.into()));
        self
    }

    /// Enables the CRI plugin (served on containerd's socket, namespace [`CRI_NAMESPACE`]) with
    /// the snapshotter of [`ContainerdBuilder::snapshotter`], snapshot annotations on (the
    /// `containerd.io/snapshot/cri.*` labels remote snapshotters read) and registry hosts from
    /// `hosts_dir` (`hosts.toml` per registry, as [`write_hosts_toml`] writes them). No CNI is
    /// configured: images can be pulled, pod sandboxes cannot be run.
    pub fn cri(mut self, hosts_dir: impl Into<PathBuf>) -> Self {
        self.cri_hosts = Some(hosts_dir.into());
        self
    }

    /// Starts containerd and waits until `ctr version` answers.
    pub fn start(self) -> Result<Containerd> {
        let program =
            std::env::var_os("DAMSELFLY_CONTAINERD_BIN").unwrap_or_else(|| "containerd".into());
        let builder = Daemon::builder(&program).name("containerd");
        let dir = builder.dir().to_owned();
        let root = dir.join("root");
        let state = dir.join("state");
        let opt = dir.join("opt");
        let fifo_dir = dir.join("fifo");
        for path in [&root, &state, &opt, &fifo_dir] {
            fs::create_dir_all(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        let socket = dir.join("containerd.sock");
        let cri_disabled = if self.cri_hosts.is_some() {
            ""
        } else {
            "\"io.containerd.grpc.v1.cri\",\n  "
        };
        let config = format!(
            "version = 2\n\
             root = {root}\n\
             state = {state}\n\
             disabled_plugins = [\n  \
               {cri_disabled}\
               \"io.containerd.snapshotter.v1.aufs\",\n  \
               \"io.containerd.snapshotter.v1.btrfs\",\n  \
               \"io.containerd.snapshotter.v1.devmapper\",\n  \
               \"io.containerd.snapshotter.v1.zfs\",\n\
             ]\n\
             \n\
             [grpc]\n  address = {socket}\n\
             \n\
             [ttrpc]\n  address = {ttrpc}\n\
             \n\
             [debug]\n  level = \"info\"\n\
             \n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n",
            root = toml_str(&root),
            state = toml_str(&state),
            socket = toml_str(&socket),
            ttrpc = toml_str(&dir.join("containerd.sock.ttrpc")),
            opt = toml_str(&opt),
        );
        let mut config = config;
        if !self.proxy_snapshotters.is_empty() {
            config.push_str("\n[proxy_plugins]\n");
        }
        for (name, socket) in &self.proxy_snapshotters {
            config.push_str(&format!(
                "  [proxy_plugins.{}]\n    type = \"snapshot\"\n    address = {}\n",
                toml_quote(name),
                toml_str(socket),
            ));
        }
        if let Some(hosts) = &self.cri_hosts {
            let snapshotter = self.snapshotter.as_deref().unwrap_or("overlayfs");
            config.push_str(&format!(
                "\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  \
                   [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n    \
                     snapshotter = {}\n    \
                     disable_snapshot_annotations = false\n  \
                   [plugins.\"io.containerd.grpc.v1.cri\".registry]\n    \
                     config_path = {}\n",
                toml_quote(snapshotter),
                toml_str(hosts),
            ));
        }
        let config_path = dir.join("config.toml");
        fs::write(&config_path, &config)
            .with_context(|| format!("cannot write {}", config_path.display()))?;

        // A unique cgroup parent per instance: the directory name is unique (mkdtemp).
        let instance = dir.file_name().map_or_else(
            || std::process::id().to_string(),
            |name| name.to_string_lossy().into_owned(),
        );
        let daemon = builder
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .arg("--config")
            .arg(&config_path)
            .spawn()
            .context("is containerd installed? run scripts/setup.sh")?;
        let mut containerd = Containerd {
            daemon,
            socket,
            root,
            state,
            fifo_dir,
            config_path,
            snapshotter: String::new(),
            instance,
        };
        containerd.wait_ready()?;

        let loaded = containerd.loaded_snapshotters()?;
        let requested = self
            .snapshotter
            .or_else(|| std::env::var("DAMSELFLY_E2E_SNAPSHOTTER").ok())
            .filter(|name| !name.is_empty());
        containerd.snapshotter = match requested {
            Some(name) => {
                ensure!(
                    loaded.contains(&name),
                    "snapshotter {name:?} is not available in this containerd (loaded: \
                     {loaded:?})\n{}",
                    containerd.daemon.log_excerpt()
                );
                name
            }
            None if loaded.iter().any(|s| s == "overlayfs") => "overlayfs".to_owned(),
            None if loaded.iter().any(|s| s == "native") => "native".to_owned(),
            None => bail!(
                "neither the overlayfs nor the native snapshotter loaded (loaded: {loaded:?})\n{}",
                containerd.daemon.log_excerpt()
            ),
        };
        Ok(containerd)
    }
}

/// A running containerd with private directories and socket; killed on drop (after killing
/// and deleting any container left behind, and unmounting what it left mounted).
#[derive(Debug)]
pub struct Containerd {
    daemon: Daemon,
    socket: PathBuf,
    root: PathBuf,
    state: PathBuf,
    fifo_dir: PathBuf,
    config_path: PathBuf,
    snapshotter: String,
    instance: String,
}

impl Containerd {
    pub fn builder() -> ContainerdBuilder {
        ContainerdBuilder::default()
    }

    /// Starts containerd with the snapshotter picked as described in the module documentation.
    pub fn start() -> Result<Self> {
        Self::builder().start()
    }

    /// The gRPC socket (`ctr --address`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The snapshotter used by [`Containerd::pull`] and [`Containerd::run`].
    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// The namespace of every `ctr` command, [`CONTAINERD_NAMESPACE`].
    pub fn namespace(&self) -> &str {
        CONTAINERD_NAMESPACE
    }

    /// containerd's persistent root (content store, snapshots, metadata).
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// containerd's private temporary directory (config, logs, root, state, socket).
    pub fn dir(&self) -> &Path {
        self.daemon.dir()
    }

    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    pub fn daemon_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }

    /// containerd's stdout followed by its stderr (where it logs).
    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }

    /// Runs `ctr --address SOCKET --namespace damselfly-e2e ARGS...`, killing it after
    /// [`CTR_TIMEOUT`]. Returns its output whatever its exit status; fails only if it could not
    /// be run or hung.
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        self.ctr_with_timeout(args, CTR_TIMEOUT)
    }

    /// [`Containerd::ctr`] with another timeout.
    pub fn ctr_with_timeout(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        self.ctr_in(CONTAINERD_NAMESPACE, args, timeout)
    }

    /// [`Containerd::ctr_with_timeout`] in `namespace` (e.g. [`CRI_NAMESPACE`]).
    pub fn ctr_in(&self, namespace: &str, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut command = Command::new(ctr_program());
        command
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(namespace)
            .args(args)
            .env_remove("CONTAINERD_SNAPSHOTTER")
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .current_dir(self.daemon.dir());
        let command_line = format!("ctr {}", args.join(" "));
        output_with_timeout(command, timeout)
            .with_context(|| format!("`{command_line}` failed to complete"))
    }

    /// Like [`Containerd::ctr`], but a non-zero exit is an error (with stderr); returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let output = self.ctr(args)?;
        ensure!(
            output.status.success(),
            "`ctr {}` failed ({}):\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `ctr image pull --snapshotter S --hosts-dir HOSTS_DIR IMAGE` (fetches and unpacks).
    /// Returns the output whatever the exit status.
    pub fn pull(&self, image: &str, hosts_dir: &Path) -> Result<Output> {
        let hosts_dir = hosts_dir
            .to_str()
            .with_context(|| format!("hosts dir {} is not UTF-8", hosts_dir.display()))?;
        self.ctr(&[
            "image",
            "pull",
            "--snapshotter",
            &self.snapshotter,
            "--hosts-dir",
            hosts_dir,
            image,
        ])
    }

    /// `ctr run --rm --snapshotter S --cgroup C --fifo-dir F IMAGE ID CMD...`: runs a container
    /// of a pulled image to completion and removes it. An empty `cmd` runs the image's default
    /// command. The container's stdout and stderr are the output's. Returns the output whatever
    /// the exit status (which is the container's).
    pub fn run(&self, image: &str, id: &str, cmd: &[&str]) -> Result<Output> {
        self.run_in(CONTAINERD_NAMESPACE, image, id, cmd)
    }

    /// [`Containerd::run`] of an image of `namespace` (e.g. one pulled through CRI).
    pub fn run_in(&self, namespace: &str, image: &str, id: &str, cmd: &[&str]) -> Result<Output> {
        let cgroup = format!("/{CONTAINERD_NAMESPACE}/{}-{id}", self.instance);
        let fifo_dir = self
            .fifo_dir
            .to_str()
            .context("fifo dir is not UTF-8")?
            .to_owned();
        let mut args = vec![
            "run",
            "--rm",
            "--snapshotter",
            &self.snapshotter,
            "--cgroup",
            &cgroup,
            "--fifo-dir",
            &fifo_dir,
            image,
            id,
        ];
        args.extend_from_slice(cmd);
        self.ctr_in(namespace, &args, CTR_TIMEOUT)
    }

    /// Digests (`sha256:...`) of every blob in containerd's content store.
    pub fn content_digests(&self) -> Result<Vec<String>> {
        Ok(self
            .ctr_ok(&["content", "ls", "-q"])?
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// Removes `image` and lets containerd's garbage collector drop its content and snapshots,
    /// so that the next pull fetches everything again.
    pub fn remove_image(&self, image: &str) -> Result<()> {
        self.ctr_ok(&["image", "rm", "--sync", image]).map(drop)
    }

    /// Polls `ctr version` until it answers.
    fn wait_ready(&mut self) -> Result<()> {
        let socket = self.socket.clone();
        let mut last = String::from("socket not created yet");
        let result = self.daemon.wait_for(STARTUP_TIMEOUT, "`ctr version`", |_| {
            if !socket.exists() {
                return None;
            }
            let mut command = Command::new(ctr_program());
            command.arg("--address").arg(&socket).arg("version");
            match output_with_timeout(command, Duration::from_secs(5)) {
                Ok(output) if output.status.success() => Some(()),
                Ok(output) => {
                    last = String::from_utf8_lossy(&output.stderr).trim().to_owned();
                    None
                }
                Err(error) => {
                    last = format!("{error:#}");
                    None
                }
            }
        });
        result.with_context(|| format!("containerd did not become ready; last attempt: {last}"))
    }

    /// IDs of the snapshotter plugins that loaded (`ctr plugins ls`: status `ok`).
    fn loaded_snapshotters(&self) -> Result<Vec<String>> {
        let listing = self.ctr_ok(&["plugins", "ls"])?;
        Ok(listing
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                match fields.as_slice() {
                    [kind, id, .., status]
                        if *kind == "io.containerd.snapshotter.v1" && *status == "ok" =>
                    {
                        Some((*id).to_owned())
                    }
                    _ => None,
                }
            })
            .collect())
    }

    /// Best effort: kills and deletes every task and container, so that no shim or container
    /// outlives the test and no mount stays under the temporary directory.
    fn remove_leftovers(&self) {
        let list = |args: &[&str]| -> Vec<String> {
            self.ctr_with_timeout(args, CLEANUP_TIMEOUT)
                .ok()
                .filter(|output| output.status.success())
                .map(|output| {
                    String::from_utf8_lossy(&output.stdout)
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        for task in list(&["tasks", "ls", "-q"]) {
            let _ =
                self.ctr_with_timeout(&["tasks", "kill", "-s", "SIGKILL", &task], CLEANUP_TIMEOUT);
            let _ = self.ctr_with_timeout(&["tasks", "delete", "--force", &task], CLEANUP_TIMEOUT);
        }
        for container in list(&["containers", "ls", "-q"]) {
            let _ = self.ctr_with_timeout(&["containers", "delete", &container], CLEANUP_TIMEOUT);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.daemon.is_running() {
            self.remove_leftovers();
        }
        self.daemon.kill();
        unmount_under(self.daemon.dir());
    }
}

/// `ctr --hosts-dir` layout: writes `DIR/<host>/hosts.toml` and returns its path.
///
/// `host` is the registry host of the image reference as containerd sees it (`127.0.0.1:5000`,
/// `docker.io`), or `_default` for every registry without a directory of its own. `mirror`
/// (a URL such as `http://127.0.0.1:65001`; the scheme decides HTTP or HTTPS) becomes the one
/// `[host."..."]` entry, with the `pull` and `resolve` capabilities, tried first; `server` (a
/// URL too) is the upstream tried last, instead of the reference's own host, when given.
/// An empty `mirror` means none: the file then has only `server` (a direct pull) and an empty
/// `[host]` table, without which containerd 1.6 rejects the file (see the module docs).
pub fn write_hosts_toml(
    dir: &Path,
    host: &str,
    mirror: &str,
    server: Option<&str>,
) -> Result<PathBuf> {
    ensure!(
        !host.is_empty() && !host.contains(['/', '\\']) && host != "." && host != "..",
        "invalid registry host {host:?} for a hosts directory"
    );
    let mut text = String::new();
    if let Some(server) = server {
        text.push_str(&format!("server = {}\n", toml_quote(server)));
    }
    if mirror.is_empty() {
        text.push_str("\n[host]\n");
    } else {
        text.push_str(&format!(
            "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
            toml_quote(mirror)
        ));
    }
    let host_dir = dir.join(host);
    fs::create_dir_all(&host_dir)
        .with_context(|| format!("cannot create {}", host_dir.display()))?;
    let path = host_dir.join("hosts.toml");
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// `ctr`, or `$DAMSELFLY_CTR_BIN`.
fn ctr_program() -> std::ffi::OsString {
    std::env::var_os("DAMSELFLY_CTR_BIN").unwrap_or_else(|| "ctr".into())
}

/// Runs `command` with stdin closed and stdout/stderr captured, killing it after `timeout`.
pub(crate) fn output_with_timeout(mut command: Command, timeout: Duration) -> Result<Output> {
    // Files rather than pipes: nothing has to drain them while the command runs.
    let mut stdout = tempfile::tempfile().context("cannot create a temporary file")?;
    let mut stderr = tempfile::tempfile().context("cannot create a temporary file")?;
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(stdout.try_clone()?)
        .stderr(stderr.try_clone()?)
        .spawn()
        .with_context(|| format!("cannot run `{program}`"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`{program}` did not finish within {timeout:?}; killed it\n---- stdout ----\n{}\n\
                 ---- stderr ----\n{}",
                tail(&read_all(&mut stdout), LOG_LINES),
                tail(&read_all(&mut stderr), LOG_LINES),
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: read_all_bytes(&mut stdout),
        stderr: read_all_bytes(&mut stderr),
    })
}

fn read_all_bytes(file: &mut File) -> Vec<u8> {
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(0)).is_ok() {
        let _ = file.read_to_end(&mut bytes);
    }
    bytes
}

fn read_all(file: &mut File) -> String {
    String::from_utf8_lossy(&read_all_bytes(file)).into_owned()
}

/// Lazily unmounts everything mounted at or below `dir` (deepest first), best effort.
pub(crate) fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(unescape_mountinfo(point)))
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.as_os_str().len()));
    for point in points {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&point)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Decodes the `\040`-style octal escapes of `/proc/self/mountinfo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(octal) = bytes.get(i + 1..i + 4)
            && let Ok(octal) = std::str::from_utf8(octal)
            && let Ok(value) = u8::from_str_radix(octal, 8)
        {
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A TOML basic string (JSON string escapes are valid TOML escapes).
fn toml_quote(value: &str) -> String {
    serde_json::to_string(value).expect("a string always serialises")
}

fn toml_str(path: &Path) -> String {
    toml_quote(&path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_hosts_toml() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_hosts_toml(
            dir.path(),
            "127.0.0.1:5000",
            "http://127.0.0.1:65001",
            Some("http://127.0.0.1:5000"),
        )
        .unwrap();
        assert_eq!(path, dir.path().join("127.0.0.1:5000/hosts.toml"));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "server = \"http://127.0.0.1:5000\"\n\n[host.\"http://127.0.0.1:65001\"]\n  \
             capabilities = [\"pull\", \"resolve\"]\n"
        );
        let path = write_hosts_toml(dir.path(), "_default", "", Some("http://[::1]:5000")).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "server = \"http://[::1]:5000\"\n\n[host]\n"
        );
        assert!(write_hosts_toml(dir.path(), "../x", "http://m", None).is_err());
    }

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/tmp/x\"), r"/tmp/x\");
    }
}
