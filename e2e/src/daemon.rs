//! A long-running child process with captured logs, killed on drop.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tempfile::TempDir;

use crate::http;
use crate::util::tail;

/// Lines of log printed when a daemon is dropped during a panic.
const PANIC_LOG_LINES: usize = 60;

/// Builder for a [`Daemon`]: `Daemon::builder(bin("supernode")).name("supernode").arg(..).spawn()`.
///
/// The builder owns a fresh temporary directory ([`DaemonBuilder::dir`]) that stays alive as long
/// as the daemon: use it for data directories and config files the arguments refer to.
#[derive(Debug)]
pub struct DaemonBuilder {
    name: String,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    current_dir: Option<PathBuf>,
    dir: TempDir,
}

impl DaemonBuilder {
    fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref().to_owned();
        let name = Path::new(&program)
            .file_name()
            .map_or_else(|| "daemon".to_owned(), |n| n.to_string_lossy().into_owned());
        let dir = tempfile::Builder::new()
            .prefix(&format!("damselfly-e2e-{name}-"))
            .tempdir()
            .expect("cannot create a temporary directory");
        Self {
            name,
            program,
            args: Vec::new(),
            env: Vec::new(),
            current_dir: None,
            dir,
        }
    }

    /// A short name used in messages and log file names (default: the program's file name).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    #[must_use]
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    #[must_use]
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    #[must_use]
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Working directory of the process (default: [`DaemonBuilder::dir`]).
    #[must_use]
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// The daemon's private temporary directory (removed when the daemon is dropped).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the process with stdout and stderr redirected to files in [`DaemonBuilder::dir`].
    pub fn spawn(self) -> Result<Daemon> {
        let stdout_path = self.dir.path().join(format!("{}.stdout.log", self.name));
        let stderr_path = self.dir.path().join(format!("{}.stderr.log", self.name));
        let stdout = File::create(&stdout_path)
            .with_context(|| format!("cannot create {}", stdout_path.display()))?;
        let stderr = File::create(&stderr_path)
            .with_context(|| format!("cannot create {}", stderr_path.display()))?;

        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .current_dir(
                self.current_dir
                    .as_deref()
                    .unwrap_or_else(|| self.dir.path()),
            )
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (key, value) in &self.env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let command_line = std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}: `{command_line}`", self.name))?;
        Ok(Daemon {
            name: self.name,
            command_line,
            child,
            exit_status: None,
            stdout_path,
            stderr_path,
            dir: Some(self.dir),
        })
    }
}

/// A running child process. Killed (SIGKILL) when dropped; if the current thread is panicking,
/// the tail of its logs is printed to stderr first. Set `DAMSELFLY_E2E_KEEP_LOGS=1` to keep the
/// temporary directory (its path is printed) instead of deleting it.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    command_line: String,
    child: Child,
    exit_status: Option<ExitStatus>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    dir: Option<TempDir>,
}

impl Daemon {
    pub fn builder(program: impl AsRef<OsStr>) -> DaemonBuilder {
        DaemonBuilder::new(program)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// The daemon's private temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or_else(|| Path::new("/nonexistent"), TempDir::path)
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    pub fn stdout_text(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    pub fn stderr_text(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// stdout followed by stderr.
    pub fn log_text(&self) -> String {
        let mut text = self.stdout_text();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&self.stderr_text());
        text
    }

    /// The exit status if the process has exited (reaps it), `None` while it runs.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            self.exit_status = self.child.try_wait().ok().flatten();
        }
        self.exit_status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit_status().is_none()
    }

    /// Waits until a line of stdout or stderr contains `pattern`; returns that line.
    /// Fails early, with the log, if the process exits first.
    pub fn wait_for_log(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        self.wait_for(timeout, &format!("log line containing {pattern:?}"), |d| {
            d.log_text()
                .lines()
                .find(|line| line.contains(pattern))
                .map(str::to_owned)
        })
    }

    /// Waits until at least `count` log lines contain `pattern`.
    pub fn wait_for_log_count(
        &mut self,
        pattern: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<()> {
        self.wait_for(
            timeout,
            &format!("{count} log lines containing {pattern:?}"),
            |d| (d.log_text().matches(pattern).count() >= count).then_some(()),
        )
    }

    /// Waits for a log line containing `prefix` immediately followed by a socket address
    /// (`127.0.0.1:1234`, `[::1]:1234`, optionally quoted), e.g. `wait_for_listen_addr("listening on ")`.
    pub fn wait_for_listen_addr(&mut self, prefix: &str, timeout: Duration) -> Result<SocketAddr> {
        self.wait_for(
            timeout,
            &format!("address after {prefix:?} in the log"),
            |d| {
                d.log_text().lines().find_map(|line| {
                    let (_, rest) = line.split_once(prefix)?;
                    let token = rest
                        .trim_start_matches(['"', '\''])
                        .split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | ';'))
                        .next()?;
                    token.parse().ok()
                })
            },
        )
    }

    /// Waits until `GET url` answers a 2xx status.
    pub fn wait_for_http_ok(&mut self, url: &str, timeout: Duration) -> Result<()> {
        self.wait_for_http(url, timeout, |status| (200..300).contains(&status))
            .map(drop)
    }

    /// Waits until `GET url` answers a status accepted by `accept`; returns that status.
    pub fn wait_for_http(
        &mut self,
        url: &str,
        timeout: Duration,
        accept: impl Fn(u16) -> bool,
    ) -> Result<u16> {
        let mut last = String::from("no attempt");
        let result = self.wait_for(
            timeout,
            &format!("GET {url}"),
            |_| match http::Request::get(url)
                .timeout(Duration::from_secs(2))
                .send()
            {
                Ok(response) if accept(response.status) => Some(response.status),
                Ok(response) => {
                    last = format!("status {}", response.status);
                    None
                }
                Err(error) => {
                    last = format!("{error:#}");
                    None
                }
            },
        );
        result.with_context(|| format!("last attempt: {last}"))
    }

    /// Polls `probe` every 50 ms until it returns `Some`, the process exits, or `timeout` elapses.
    pub fn wait_for<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut probe: impl FnMut(&Self) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = probe(self) {
                return Ok(value);
            }
            if let Some(status) = self.try_exit_status() {
                // One last look: the line may have been written just before exiting.
                if let Some(value) = probe(self) {
                    return Ok(value);
                }
                bail!(
                    "{} exited ({status}) while waiting for {what}\ncommand: {}\n{}",
                    self.name,
                    self.command_line,
                    self.log_excerpt()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what} from {}\ncommand: {}\n{}",
                    self.name,
                    self.command_line,
                    self.log_excerpt()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGKILL and reaps the process. Idempotent.
    pub fn kill(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            self.exit_status = self.child.wait().ok();
        }
    }

    /// Stops the process with SIGSTOP (hung: its sockets stay open and the kernel still
    /// accepts connections for it, but nothing answers) until the returned guard is
    /// dropped, which sends SIGCONT.
    ///
    /// # Errors
    /// `kill` could not be run or failed.
    pub fn freeze(&self) -> Result<Frozen> {
        signal(self.pid(), "-STOP")?;
        Ok(Frozen { pid: self.pid() })
    }

    /// Sends SIGTERM, waits up to `timeout` for the process to exit, then SIGKILLs it.
    /// Returns the exit status (an error if it had to be killed).
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_exit_status() {
            return Ok(status);
        }
        if signal(self.pid(), "-TERM").is_err() {
            // Probably exited in between.
            if let Some(status) = self.try_exit_status() {
                return Ok(status);
            }
        }
        match self.wait_exit(timeout) {
            Ok(status) => Ok(status),
            Err(error) => {
                self.kill();
                Err(error.context(format!("{} ignored SIGTERM; killed it", self.name)))
            }
        }
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} still running after {timeout:?}", self.name);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of stdout and stderr, labelled, for error messages.
    pub fn log_excerpt(&self) -> String {
        format!(
            "---- {name} stdout ({stdout}) ----\n{}\n---- {name} stderr ({stderr}) ----\n{}\n----",
            tail(&self.stdout_text(), PANIC_LOG_LINES),
            tail(&self.stderr_text(), PANIC_LOG_LINES),
            name = self.name,
            stdout = self.stdout_path.display(),
            stderr = self.stderr_path.display(),
        )
    }
}

/// A process stopped by [`Daemon::freeze`]; dropping it lets the process go on.
#[derive(Debug)]
#[must_use = "the process resumes when this is dropped"]
pub struct Frozen {
    pid: u32,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = signal(self.pid, "-CONT");
    }
}

/// Sends `sig` (`-STOP`, `-TERM`…) to `pid` with `kill`.
fn signal(pid: u32, sig: &str) -> Result<()> {
    let sent = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run `kill`")?;
    anyhow::ensure!(sent.success(), "kill {sig} {pid} failed");
    Ok(())
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!("{}", self.log_excerpt());
        }
        let keep =
            std::env::var_os("DAMSELFLY_E2E_KEEP_LOGS").is_some_and(|v| !v.is_empty() && v != "0");
        if keep && let Some(dir) = self.dir.take() {
            eprintln!("kept logs of {} in {}", self.name, dir.keep().display());
        }
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}
