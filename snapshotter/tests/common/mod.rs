//! A gRPC client of the snapshotter's socket, as containerd's proxy plugin talks to it.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::path::Path;

use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::api::snapshots::v1::{Info, ListSnapshotsRequest};
use containerd_snapshots::tonic::transport::{Channel, Endpoint, Uri};
use tokio::net::UnixStream;

/// The name containerd knows the snapshotter by in the tests; sent in every request.
pub(crate) const NAME: &str = "damselfly";

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
