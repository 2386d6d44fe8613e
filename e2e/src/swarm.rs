//! Running the Damselfly daemons themselves: a [`Supernode`] and [`Dfget`] peers.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{daemon::Daemon, http, util::bin};

/// A running `supernode` process on a free port.
#[derive(Debug)]
pub struct Supernode {
    daemon: Daemon,
    addr: SocketAddr,
    data_dir: PathBuf,
    _owned: Option<tempfile::TempDir>,
}

/// Builder for [`Supernode`].
#[derive(Debug, Default)]
#[must_use]
pub struct SupernodeBuilder {
    ip: Option<IpAddr>,
    port: u16,
    data_dir: Option<PathBuf>,
    args: Vec<String>,
    no_secret: bool,
    strict_origins: bool,
}

impl SupernodeBuilder {
    /// Keep the supernode's default origin policy, which refuses loopback origins (the
    /// harness otherwise allows them: its registries run on loopback).
    pub fn strict_origins(mut self) -> Self {
        self.strict_origins = true;
        self
    }

    /// Sign piece digests with the key every fleet supernode of this test process shares
    /// ([`crate::fleet_signing_key_file`]) instead of a key of its own.
    pub fn fleet_signing_key(self) -> Self {
        let key = crate::util::fleet_signing_key_file();
        self.args([
            "--cluster-signing-key-file".to_owned(),
            key.display().to_string(),
        ])
    }

    /// Start without the cluster secret ([`crate::cluster_secret_file`], given by default):
    /// no piece tokens are issued or checked.
    pub fn no_cluster_secret(mut self) -> Self {
        self.no_secret = true;
        self
    }

    /// Listen on this IP (default 127.0.0.1).
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }

    /// Use this data directory (kept by the caller, e.g. across a restart).
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Listen on this port (default: any free one), e.g. when other supernodes must be
    /// told the address before it starts.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Extra command-line flags.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Starts it and waits until `/healthy` answers.
    pub fn start(self) -> Supernode {
        self.try_start()
            .unwrap_or_else(|e| panic!("cannot start the supernode: {e:#}"))
    }

    /// Starts it and waits until `/healthy` answers.
    ///
    /// # Errors
    /// The process did not start or become healthy.
    pub fn try_start(self) -> Result<Supernode> {
        let (data_dir, owned) = match self.data_dir {
            Some(d) => (d, None),
            None => {
                let t = tempfile::tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let ip = self.ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let secret = if self.no_secret {
            Vec::new()
        } else {
            vec![
                "--cluster-secret-file".to_owned(),
                crate::util::cluster_secret_file().display().to_string(),
            ]
        };
        let mut daemon = Daemon::builder(bin("supernode"))
            .name("supernode")
            .arg("--listen")
            .arg(SocketAddr::new(ip, self.port).to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .args(&secret)
            .args(if self.strict_origins {
                &[][..]
            } else {
                &["--origin-allow-loopback", "true"][..]
            })
            .args(&self.args)
            .env("RUST_LOG", "info,damselfly=debug")
            .spawn()?;
        let addr = daemon.wait_for_listen_addr("api=", Duration::from_secs(30))?;
        daemon.wait_for_http_ok(&format!("http://{addr}/healthy"), Duration::from_secs(10))?;
        Ok(Supernode {
            daemon,
            addr,
            data_dir,
            _owned: owned,
        })
    }
}

impl Supernode {
    /// A builder.
    pub fn builder() -> SupernodeBuilder {
        SupernodeBuilder::default()
    }

    /// The API address (`host:port`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops the process until the guard is dropped (see [`Daemon::freeze`]).
    ///
    /// # Errors
    /// The signal could not be sent.
    pub fn freeze(&self) -> Result<crate::Frozen> {
        self.daemon.freeze()
    }

    /// The process.
    pub fn daemon_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }

    /// The process's log.
    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }

    /// The `/metrics` text.
    ///
    /// # Errors
    /// The request failed.
    pub fn metrics(&self) -> Result<String> {
        Ok(http::get(&format!("http://{}/metrics", self.addr), None)?.text())
    }

    /// Sum of the samples of metric `name` (all label sets).
    ///
    /// # Errors
    /// The request failed.
    pub fn metric(&self, name: &str) -> Result<f64> {
        Ok(crate::util::metric_sum(&self.metrics()?, name, None))
    }

    /// SIGTERM and wait.
    ///
    /// # Errors
    /// It did not exit in time.
    pub fn stop(mut self) -> Result<()> {
        self.daemon.terminate(Duration::from_secs(15)).map(drop)
    }
}

/// A `dfget` invocation.
#[derive(Debug)]
#[must_use]
pub struct Dfget {
    url: String,
    output: PathBuf,
    args: Vec<String>,
    no_secret: bool,
}

/// A running or finished `dfget`.
#[derive(Debug)]
pub struct DfgetRun {
    /// The process.
    pub daemon: Daemon,
    /// The output file.
    pub output: PathBuf,
    /// Where the JSON report goes.
    pub report: PathBuf,
}

impl Dfget {
    /// Downloads `url` into `output`.
    pub fn new(url: &str, output: &Path) -> Self {
        Self {
            url: url.to_owned(),
            output: output.to_path_buf(),
            args: Vec::new(),
            no_secret: false,
        }
    }

    /// Run without the cluster secret ([`crate::cluster_secret_file`], given by default):
    /// the peer serves anyone who asks.
    pub fn no_cluster_secret(mut self) -> Self {
        self.no_secret = true;
        self
    }

    /// Through this supernode.
    pub fn supernode(self, addr: SocketAddr) -> Self {
        self.args(["--supernode".to_owned(), addr.to_string()])
    }

    /// Extra flags.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Starts the process.
    ///
    /// # Errors
    /// It could not be spawned.
    pub fn spawn(self) -> Result<DfgetRun> {
        let report = self.output.with_extension("report.json");
        let name = self
            .output
            .file_name()
            .map_or_else(|| "dfget".to_owned(), |n| n.to_string_lossy().into_owned());
        let secret = if self.no_secret {
            Vec::new()
        } else {
            vec![
                "--cluster-secret-file".to_owned(),
                crate::util::cluster_secret_file().display().to_string(),
            ]
        };
        let daemon = Daemon::builder(bin("dfget"))
            .name(format!("dfget-{name}"))
            .arg(&self.url)
            .arg("-O")
            .arg(&self.output)
            .arg("--no-progress")
            .arg("--report-json")
            .arg(&report)
            .args(&secret)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .spawn()?;
        Ok(DfgetRun {
            daemon,
            output: self.output,
            report,
        })
    }
}

impl DfgetRun {
    /// Waits for exit; returns the JSON report on success, the log on failure.
    ///
    /// # Errors
    /// Exit code non-zero (the error holds the stderr), or timeout.
    pub fn wait(&mut self, timeout: Duration) -> Result<serde_json::Value> {
        let status = self.daemon.wait_exit(timeout)?;
        if !status.success() {
            bail!(
                "dfget failed ({status}): {}",
                self.daemon.stderr_text().trim()
            );
        }
        let text = std::fs::read_to_string(&self.report)
            .with_context(|| format!("reading {}", self.report.display()))?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// `report[key]` as a number (0 if absent).
pub fn num(report: &serde_json::Value, key: &str) -> u64 {
    report
        .get(key)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}
