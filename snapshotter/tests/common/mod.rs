//! A gRPC client of the snapshotter's socket, as containerd's proxy plugin talks to it.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use damselfly_e2e::{Daemon, TestRegistry, nydus_fs_bin};

use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::api::snapshots::v1::{Info, ListSnapshotsRequest};
use containerd_snapshots::tonic::transport::{Channel, Endpoint, Uri};
use tokio::net::UnixStream;

/// The name containerd knows the snapshotter by in the tests; sent in every request.
pub(crate) const NAME: &str = "damselfly";

/// Starts the snapshotter binary on `root` and `socket` (with `config`, if given) and waits
/// until it serves.
pub(crate) fn spawn(root: &Path, socket: &Path, config: Option<&Path>) -> Daemon {
    let mut builder = Daemon::builder(env!("CARGO_BIN_EXE_damselfly-snapshotter"))
        .name("snapshotter")
        .env("RUST_LOG", "info,damselfly_snapshotter=debug")
        .arg("--root")
        .arg(root)
        .arg("--address")
        .arg(socket);
    if let Some(config) = config {
        builder = builder.arg("--config").arg(config);
    }
    let mut daemon = builder.spawn().unwrap();
    daemon
        .wait_for_log("serving containerd snapshots", Duration::from_secs(10))
        .unwrap();
    daemon
}

/// The snapshotter with lazy nydus-fs layers under `dir` (root, socket, config, chunk
/// cache), reading `registry` over plain HTTP, through `dfdaemon` (empty: straight to the
/// registry). Returns it, its root and its socket.
pub(crate) fn spawn_nydus(
    dir: &Path,
    registry: &TestRegistry,
    dfdaemon: &str,
) -> (Daemon, PathBuf, PathBuf) {
    let root = dir.join("root");
    let socket = dir.join("snapshotter.sock");
    let config = dir.join("snapshotter.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\n[nydus]\nbinary = {:?}\ncache_dir = {:?}\n\
             dfdaemon = {dfdaemon:?}\nplain_http = [{:?}]\n",
            nydus_fs_bin(),
            dir.join("cache"),
            registry.host(),
        ),
    )
    .unwrap();
    let daemon = spawn(&root, &socket, Some(&config));
    (daemon, root, socket)
}

/// Connects to the snapshots service on `socket`.
pub(crate) async fn connect(socket: &Path) -> anyhow::Result<SnapshotsClient<Channel>> {
    Ok(SnapshotsClient::new(channel(socket).await?))
}

/// A gRPC channel to the unix socket `socket`.
pub(crate) async fn channel(socket: &Path) -> anyhow::Result<Channel> {
    let socket = socket.to_owned();
    // The URI is required by the API and ignored: the connector dials the socket.
    Ok(Endpoint::try_from("http://[::1]:1")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            UnixStream::connect(socket.clone())
        }))
        .await?)
}

/// Every snapshot the service lists (Walk) for `filters`.
pub(crate) async fn walk(
    client: &mut SnapshotsClient<Channel>,
    filters: &[&str],
) -> Result<Vec<Info>, containerd_snapshots::tonic::Status> {
    let request = ListSnapshotsRequest {
        snapshotter: NAME.to_owned(),
        filters: filters.iter().map(|f| (*f).to_owned()).collect(),
    };
    let mut stream = client.list(request).await?.into_inner();
    let mut infos = Vec::new();
    while let Some(page) = stream.message().await? {
        infos.extend(page.info);
    }
    Ok(infos)
}

/// [`walk`] from synchronous code: a fresh connection on a private runtime.
pub(crate) fn walk_blocking(socket: &Path) -> anyhow::Result<Vec<Info>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut client = connect(socket).await?;
        Ok(walk(&mut client, &[]).await?)
    })
}
