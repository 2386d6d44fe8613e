//! `damselfly-snapshotter`: containerd's snapshots service on a unix socket (a proxy plugin).
//!
//! ```text
//! damselfly-snapshotter [--root /var/lib/damselfly/snapshotter]
//!                       [--address /run/damselfly/snapshotter.sock]
//! ```
//!
//! containerd's config names the socket:
//!
//! ```toml
//! [proxy_plugins.damselfly]
//!   type = "snapshot"
//!   address = "/run/damselfly/snapshotter.sock"
//! ```
//!
//! SIGTERM or SIGINT stops it: calls in flight finish (up to 10 s), the socket is removed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use damselfly_snapshotter::{NoRemote, Server, Snapshotter};
use tokio_util::sync::CancellationToken;

/// How long calls in flight may take to finish after a shutdown signal.
const GRACE: Duration = Duration::from_secs(10);

/// containerd snapshotter (proxy plugin): overlay snapshots for every image.
#[derive(Parser)]
#[command(name = "damselfly-snapshotter", version)]
struct Cli {
    /// Directory of the snapshots and their records (created if missing).
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    damselfly_common::telemetry::init("info");

    let snapshotter = Snapshotter::open(cli.root.clone(), Arc::new(NoRemote))
        .with_context(|| format!("cannot open the snapshotter root {}", cli.root.display()))?;
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
