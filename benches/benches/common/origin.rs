//! A real HTTP origin on loopback that serves registry-style blob URLs
//! (`GET|HEAD /v2/<repo>/blobs/sha256:<hex>`) from memory, with one upload cap shared by all
//! its responses, and counts the bytes it sends.
//!
//! The Debian `docker-registry` cannot be rate-limited without network namespaces, and the
//! distribution benchmark needs an origin whose uplink is the seed's (`u_s` in the bound) so
//! that the "everyone from the origin" baseline runs under the same caps as the swarm.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Router,
    body::Body,
    extract::{Path, State},
    http::{Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use damselfly_common::{Digest, RateLimiter};
use tokio_util::sync::CancellationToken;

/// Bytes per body chunk: each waits for the shared limiter on its own.
const CHUNK: usize = 64 << 10;

#[derive(Debug)]
struct Inner {
    blobs: HashMap<String, Bytes>,
    limiter: Option<RateLimiter>,
    bytes_sent: AtomicU64,
    gets: AtomicU64,
}

/// A running origin. Stops when dropped.
#[derive(Debug)]
pub(crate) struct Origin {
    addr: SocketAddr,
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl Origin {
    /// Serves `blobs` on `127.0.0.1:0`, all responses together at most `rate` bytes per second
    /// (0 = unlimited).
    pub(crate) async fn start(blobs: Vec<Bytes>, rate: u64) -> anyhow::Result<Self> {
        let blobs = blobs
            .into_iter()
            .map(|b| (Digest::of(&b).to_string(), b))
            .collect();
        let inner = Arc::new(Inner {
            blobs,
            limiter: (rate > 0).then(|| RateLimiter::new(rate)),
            bytes_sent: AtomicU64::new(0),
            gets: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/v2/{*path}", get(blob).head(blob))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await;
        });
        Ok(Self { addr, inner, stop })
    }

    /// The URL of the blob with `digest` (`sha256:<hex>`).
    pub(crate) fn blob_url(&self, digest: &str) -> String {
        format!("http://{}/v2/bench/blobs/{digest}", self.addr)
    }

    /// Body bytes sent so far (GETs only).
    pub(crate) fn bytes_sent(&self) -> u64 {
        self.inner.bytes_sent.load(Ordering::Relaxed)
    }

    /// Blob GETs answered so far.
    pub(crate) fn gets(&self) -> u64 {
        self.inner.gets.load(Ordering::Relaxed)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn blob(
    State(inner): State<Arc<Inner>>,
    method: Method,
    Path(path): Path<String>,
) -> Response {
    let Some(digest) = path.rsplit_once("/blobs/").map(|(_, d)| d) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(data) = inner.blobs.get(digest).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let headers = [
        (header::CONTENT_LENGTH, data.len().to_string()),
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (
            header::HeaderName::from_static("docker-content-digest"),
            digest.to_owned(),
        ),
    ];
    if method == Method::HEAD {
        return (headers, Body::empty()).into_response();
    }
    inner.gets.fetch_add(1, Ordering::Relaxed);
    let body = futures::stream::unfold((inner, data), |(inner, mut rest)| async move {
        if rest.is_empty() {
            return None;
        }
        let chunk = rest.split_to(rest.len().min(CHUNK));
        if let Some(l) = &inner.limiter {
            l.acquire(chunk.len() as u64).await;
        }
        inner
            .bytes_sent
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Some((Ok::<_, std::convert::Infallible>(chunk), (inner, rest)))
    });
    (headers, Body::from_stream(body)).into_response()
}
