//! Running `dfdaemon`, the per-node registry mirror.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Result;

use crate::{daemon::Daemon, http, util::bin};

/// A running `dfdaemon` on free loopback ports.
#[derive(Debug)]
pub struct Dfdaemon {
    daemon: Daemon,
    addr: SocketAddr,
    data_dir: PathBuf,
    _owned: Option<tempfile::TempDir>,
}

/// Builder for [`Dfdaemon`].
#[derive(Debug, Default)]
#[must_use]
pub struct DfdaemonBuilder {
    name: Option<String>,
    supernodes: Vec<String>,
    data_dir: Option<PathBuf>,
    allow: Option<Vec<String>>,
    args: Vec<String>,
    no_secret: bool,
    strict_origins: bool,
    listen: Option<SocketAddr>,
    peer_listen: Option<SocketAddr>,
}

/// The registries a test dfdaemon trusts unless told otherwise: every loopback one, where
/// the tests' registries run. Tests of the allow list itself name theirs
/// ([`DfdaemonBuilder::allow_registries`]), so a stub on loopback stays outside.
pub const LOOPBACK_REGISTRIES: [&str; 3] = ["127.0.0.1:*", "[::1]:*", "localhost:*"];

impl DfdaemonBuilder {
    /// Serve the mirror on this address (default: a free loopback port), e.g. to start it
    /// again where runtimes already look for it.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Serve pieces on this address (default: `127.0.0.1:0`), e.g. `[::]:0` for dfdaemon's
    /// default dual-stack form on a free port.
    pub fn peer_listen(mut self, addr: SocketAddr) -> Self {
        self.peer_listen = Some(addr);
        self
    }

    /// Process name in logs.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Through this supernode (repeatable).
    pub fn supernode(mut self, addr: impl ToString) -> Self {
        self.supernodes.push(addr.to_string());
        self
    }

    /// Use this data directory (kept by the caller, e.g. across a restart).
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Trust exactly these registries (`--access-allow`, see dfdaemon's `access.allow`)
    /// instead of [`LOOPBACK_REGISTRIES`].
    pub fn allow_registries<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        patterns: I,
    ) -> Self {
        self.allow = Some(patterns.into_iter().map(Into::into).collect());
        self
    }

    /// Start without the cluster secret ([`crate::cluster_secret_file`], given by default):
    /// the node serves pieces to anyone who asks.
    pub fn no_cluster_secret(mut self) -> Self {
        self.no_secret = true;
        self
    }

    /// Extra flags.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Keep dfdaemon's default origin policy, which refuses registries on loopback that its
    /// config does not name (the harness otherwise allows them: its registries run there).
    pub fn strict_origins(mut self) -> Self {
        self.strict_origins = true;
        self
    }

    /// Starts it and waits until `/healthy` answers. Panics on failure.
    pub fn start(self) -> Dfdaemon {
        self.try_start()
            .unwrap_or_else(|e| panic!("cannot start dfdaemon: {e:#}"))
    }

    /// Starts it and waits until `/healthy` answers.
    ///
    /// # Errors
    /// The process did not start or become healthy.
    pub fn try_start(self) -> Result<Dfdaemon> {
        let (data_dir, owned) = match self.data_dir {
            Some(d) => (d, None),
            None => {
                let t = tempfile::tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let listen = self
            .listen
            .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        let peer_listen = self
            .peer_listen
            .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        let mut builder = Daemon::builder(bin("dfdaemon"))
            .name(self.name.as_deref().unwrap_or("dfdaemon"))
            .args(["--listen", &listen, "--peer-listen", &peer_listen])
            .arg("--data-dir")
            .arg(&data_dir)
            .env("RUST_LOG", "info,dfdaemon=debug,dfget=debug");
        for sn in &self.supernodes {
            builder = builder.args(["--supernode", sn]);
        }
        let allow = self
            .allow
            .unwrap_or_else(|| LOOPBACK_REGISTRIES.map(str::to_owned).to_vec());
        for pattern in &allow {
            builder = builder.args(["--access-allow", pattern]);
        }
        if !self.no_secret {
            builder = builder
                .arg("--cluster-secret-file")
                .arg(crate::util::cluster_secret_file());
        }
        if !self.strict_origins {
            builder = builder.args(["--upstream-allow-loopback", "true"]);
        }
        let mut daemon = builder.args(&self.args).spawn()?;
        let addr = daemon.wait_for_listen_addr("mirror=", Duration::from_secs(30))?;
        daemon.wait_for_http_ok(&format!("http://{addr}/healthy"), Duration::from_secs(10))?;
        Ok(Dfdaemon {
            daemon,
            addr,
            data_dir,
            _owned: owned,
        })
    }
}

impl Dfdaemon {
    /// A builder.
    pub fn builder() -> DfdaemonBuilder {
        DfdaemonBuilder::default()
    }

    /// The address of its piece server (TCP and QUIC), as it logged it at start.
    ///
    /// # Errors
    /// No such log line within a few seconds.
    pub fn peer_addr(&mut self) -> Result<SocketAddr> {
        self.daemon
            .wait_for(Duration::from_secs(10), "the piece server's address", |d| {
                d.log_text()
                    .lines()
                    .filter(|l| l.contains("peer piece server listening"))
                    .find_map(|l| {
                        let (_, rest) = l.split_once("addr=")?;
                        rest.split_whitespace().next()?.parse().ok()
                    })
            })
    }

    /// The mirror's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The node cache directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
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
        Ok(http::get(&format!("{}/metrics", self.url()), None)?.text())
    }

    /// Sum of metric `name` over label sets containing `label` (or all).
    ///
    /// # Errors
    /// The request failed.
    pub fn metric(&self, name: &str, label: Option<&str>) -> Result<f64> {
        Ok(crate::util::metric_sum(&self.metrics()?, name, label))
    }

    /// SIGTERM and wait.
    ///
    /// # Errors
    /// It did not exit in time.
    pub fn stop(mut self) -> Result<()> {
        self.daemon.terminate(Duration::from_secs(15)).map(drop)
    }
}
