//! `damselfly-snapshotter`: containerd's snapshots service on a unix socket (a proxy plugin).
//!
//! ```text
//! damselfly-snapshotter [--root /var/lib/damselfly/snapshotter]
//!                       [--address /run/damselfly/snapshotter.sock]
//!                       [--config /etc/damselfly/snapshotter.toml]
//! ```
//!
//! containerd's config names the socket; the CRI plugin must send the snapshot labels for
//! nydus-fs images to be provided lazily:
//!
//! ```toml
//! [proxy_plugins.damselfly]
//!   type = "snapshot"
//!   address = "/run/damselfly/snapshotter.sock"
//! [plugins."io.containerd.grpc.v1.cri".containerd]
//!   snapshotter = "damselfly"
//!   disable_snapshot_annotations = false
//! ```
//!
//! SIGTERM or SIGINT stops it: calls in flight finish (up to 10 s), the socket is removed.
//! Exit status 64: the config file was refused (every problem is printed).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use damselfly_common::config::{self as config_file, EXIT_CONFIG};
use damselfly_snapshotter::{Config, Layout, NoRemote, NydusRemote, Remote, Server, Snapshotter};
use tokio_util::sync::CancellationToken;

/// How long calls in flight may take to finish after a shutdown signal.
const GRACE: Duration = Duration::from_secs(10);

/// containerd snapshotter (proxy plugin): overlay snapshots for every image, lazily mounted
/// nydus-fs images.
#[derive(Parser)]
#[command(name = "damselfly-snapshotter", version)]
struct Cli {
    /// Directory of the snapshots, their records and the lazy mounts (created if missing).
    #[arg(
        long,
        env = "DAMSELFLY_SNAPSHOTTER_ROOT",
        default_value = "/var/lib/damselfly/snapshotter"
    )]
    root: PathBuf,
    /// Unix socket to serve on (containerd's `proxy_plugins.<name>.address`).
    #[arg(
        long,
        env = "DAMSELFLY_SNAPSHOTTER_ADDRESS",
        default_value = "/run/damselfly/snapshotter.sock"
    )]
    address: PathBuf,
    /// Config file (TOML, `version = 1`); without it every key has its default.
    #[arg(long, env = "DAMSELFLY_SNAPSHOTTER_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config_file::load_or_default::<Config>(cli.config.as_deref())
        .and_then(|config| config.validate().map(|()| config))
    {
        Ok(config) => config,
        Err(errors) => {
            config_file::print_errors(&errors);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    damselfly_common::telemetry::init("info");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    let layout = Layout::new(cli.root.clone())
        .with_context(|| format!("unusable snapshotter root {}", cli.root.display()))?;
    let remote: Arc<dyn Remote> = if config.nydus.enabled {
        tracing::info!(nydus = ?config.nydus, "nydus-fs images are provided lazily");
        Arc::new(NydusRemote::new(config.nydus, layout.mounts_dir()))
    } else {
        Arc::new(NoRemote)
    };
    let snapshotter = Snapshotter::open(cli.root.clone(), remote)
        .with_context(|| format!("cannot open the snapshotter root {}", cli.root.display()))?;
    snapshotter.recover_remote().await;
    let server = Server::bind(&cli.address, Arc::new(snapshotter))
        .await
        .context("cannot serve the snapshots socket")?;

    let shutdown = CancellationToken::new();
    let mut serving = tokio::spawn(server.run(shutdown.clone()));
    tokio::select! {
        result = &mut serving => {
            return result.context("the server task failed")?.context("snapshots server failed");
        }
        signal = damselfly_common::shutdown::signal() => {
            signal.context("cannot install the signal handlers")?;
        }
    }
    shutdown.cancel();
    match tokio::time::timeout(GRACE, serving).await {
        Ok(result) => result
            .context("the server task failed")?
            .context("snapshots server failed")?,
        Err(_) => tracing::warn!(grace = ?GRACE, "calls still in flight at shutdown"),
    }
    Ok(())
}
