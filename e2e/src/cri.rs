//! A CRI client (the Kubernetes CRI API, as kubelet speaks it) over containerd's socket.
//!
//! Debian packages no `crictl`, so tests that take kubelet's path talk gRPC themselves with the
//! `k8s-cri` crate's generated client.

use std::path::Path;

use anyhow::{Context as _, Result};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// CRI's image service on the containerd at `socket` (which must run the CRI plugin).
///
/// # Errors
/// The socket does not answer.
pub async fn cri_image_client(socket: &Path) -> Result<ImageServiceClient<Channel>> {
    let socket = socket.to_owned();
    // The URI is required by the API and ignored: the connector dials the socket.
    let channel = Endpoint::try_from("http://[::1]:1")
        .context("endpoint")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .context("cannot connect to containerd's CRI socket")?;
    Ok(ImageServiceClient::new(channel))
}
