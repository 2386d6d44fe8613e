//! The daemons, in this process, through their libraries: a [`Supernode`] and dfget
//! [`dfget::Engine`] peers bound to loopback.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytesize::ByteSize;
use tokio_util::sync::CancellationToken;

/// A supernode (`supernode::App`) on `127.0.0.1:0` with its own temporary data directory.
#[derive(Debug)]
pub(crate) struct Supernode {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Supernode {
    /// Starts one whose piece uploads are capped at `upload_rate` bytes/s (0 = unlimited),
    /// after `tweak` adjusted the rest of its config.
    pub(crate) async fn start(
        upload_rate: u64,
        tweak: impl FnOnce(&mut supernode::Config),
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bench-supernode-")
            .tempdir_in(scratch_root())?;
        let mut config = supernode::Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.path().to_path_buf(),
            shutdown_grace: Duration::from_secs(2),
            ..supernode::Config::default()
        };
        config.cdn.upload_rate = ByteSize::b(upload_rate);
        // The benchmarks' registries and file servers are on loopback.
        config.origin.allow_loopback = true;
        tweak(&mut config);
        let app = supernode::App::build(config).await?;
        let addr = app.addr();
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run(stop.clone()));
        Ok(Self {
            addr,
            stop,
            task,
            _dir: dir,
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sum of the samples of metric `name` on its `/metrics`.
    pub(crate) async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(damselfly_e2e::metric_sum(&text, name, None))
    }

    /// Stops it and waits for it to drain.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await?
    }
}

/// Per-peer caps and the supernodes a [`dfget::Engine`] uses.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerSpec {
    /// Empty: every download goes to the origin (back to source).
    pub(crate) supernodes: Vec<String>,
    /// Bytes per second; 0 = unlimited.
    pub(crate) download_rate: u64,
    /// Bytes per second; 0 = unlimited.
    pub(crate) upload_rate: u64,
    /// Parents announce their pieces (dfget's default); false: the supernode relays bitmaps.
    pub(crate) announcements: bool,
}

/// Starts `n` engines on loopback.
pub(crate) async fn engines(n: usize, spec: &PeerSpec) -> anyhow::Result<Vec<Arc<dfget::Engine>>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let engine = dfget::Engine::start(dfget::EngineConfig {
            supernodes: spec.supernodes.clone(),
            peer_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            download_rate: spec.download_rate,
            upload_rate: spec.upload_rate,
            announcements: spec.announcements,
            ..dfget::EngineConfig::default()
        })
        .await?;
        out.push(Arc::new(engine));
    }
    Ok(out)
}

/// Shuts every engine down (each must be the last reference by now).
pub(crate) async fn shutdown(engines: Vec<Arc<dfget::Engine>>) {
    for e in engines {
        match Arc::try_unwrap(e) {
            Ok(e) => e.shutdown(Duration::from_secs(1)).await,
            Err(e) => drop(e),
        }
    }
}

/// Where the benchmarks put their files: `$DAMSELFLY_BENCH_DIR`, else `/var/tmp` (a disk,
/// where `/tmp` may be a small tmpfs).
pub(crate) fn scratch_root() -> std::path::PathBuf {
    std::env::var_os("DAMSELFLY_BENCH_DIR").map_or_else(|| "/var/tmp".into(), Into::into)
}
