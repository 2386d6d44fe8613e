//! The unix-socket gRPC server containerd's `proxy_plugins` connect to.

use std::io;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_snapshots::tonic::transport::Server as GrpcServer;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::snapshotter::Snapshotter;

/// Errors binding or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process answers on the socket.
    #[error("{path} is in use by another process")]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket (it is never deleted).
    #[error("{path} exists and is not a socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Creating, binding or securing the socket failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] containerd_snapshots::tonic::transport::Error),
}

/// A bound socket serving a [`Snapshotter`]; [`Server::run`] serves until cancelled.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    snapshotter: Arc<Snapshotter>,
}

impl Server {
    /// Binds `path` (mode 0600: containerd runs as root), creating its directory. A stale
    /// socket left by a killed snapshotter is replaced; a live one is an error.
    ///
    /// # Errors
    /// [`ServerError::InUse`], [`ServerError::NotASocket`], or the bind's error.
    pub async fn bind(path: &Path, snapshotter: Arc<Snapshotter>) -> Result<Self, ServerError> {
        let io_error = |op, source| ServerError::Io {
            op,
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ServerError::Io {
                op: "create",
                path: dir.to_owned(),
                source,
            })?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(metadata) if !metadata.file_type().is_socket() => {
                return Err(ServerError::NotASocket {
                    path: path.to_owned(),
                });
            }
            Ok(_) if UnixStream::connect(path).await.is_ok() => {
                return Err(ServerError::InUse {
                    path: path.to_owned(),
                });
            }
            Ok(_) => {
                info!(socket = %path.display(), "replacing a stale socket");
                std::fs::remove_file(path).map_err(|e| io_error("remove", e))?;
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error("stat", error)),
        }
        let listener = UnixListener::bind(path).map_err(|e| io_error("bind", e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_error("chmod", e))?;
        Ok(Self {
            listener,
            path: path.to_owned(),
            snapshotter,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` is cancelled, then lets calls in flight finish and removes the
    /// socket. A failed `accept` is logged and retried (after a pause when out of file
    /// descriptors), never fatal.
    ///
    /// # Errors
    /// The gRPC server failed.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let Self {
            listener,
            path,
            snapshotter,
        } = self;
        let incoming = futures::stream::unfold(listener, |listener| async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        debug!("containerd connected");
                        return Some((Ok::<_, io::Error>(stream), listener));
                    }
                    Err(error) => {
                        warn!(%error, "accept failed");
                        if error.raw_os_error().is_some_and(is_fd_limit) {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        });
        info!(socket = %path.display(), "serving containerd snapshots");
        let result = GrpcServer::builder()
            .add_service(containerd_snapshots::server(snapshotter))
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await;
        if let Err(error) = std::fs::remove_file(&path)
            && error.kind() != io::ErrorKind::NotFound
        {
            warn!(socket = %path.display(), %error, "cannot remove the socket");
        }
        result.map_err(ServerError::from)
    }
}

/// EMFILE (24) or ENFILE (23): out of file descriptors, worth a pause before the next accept.
fn is_fd_limit(errno: i32) -> bool {
    errno == 23 || errno == 24
}
