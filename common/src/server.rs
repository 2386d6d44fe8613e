//! The accept loop of the daemons' HTTP listeners (dfdaemon's mirror, the supernode's API):
//! an axum [`Router`] behind a header-read timeout, a connection cap and a bounded drain.
//!
//! `axum::serve` has neither knob, so this is its loop with them added:
//!
//! ```text
//! listener ─ permit (max_connections) ─ accept ─▶ one task per connection:
//!                                                 hyper HTTP/1 (header_read_timeout) ─▶ Router
//! shutdown ─▶ stop accepting ─▶ in-flight requests finish, idle connections close ─▶ grace ─▶ cut the rest
//! ```
//!
//! At the cap, new connections are not accepted: they wait in the kernel's listen backlog
//! (and, once that is full, their SYNs are dropped and the client retries) until a
//! connection closes, as HAProxy's `maxconn` does. Refusing them instead would turn a burst
//! of pulls into failed pulls; waiting turns it into latency, and the header-read timeout
//! bounds how long any connection can hold a slot without sending a request.

use std::{future::Future, io, sync::Arc, time::Duration};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, debug_span, info, warn};

use crate::config::ConfigError;

/// Limits of an HTTP listener: the `[http]` section of each daemon's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpLimits {
    /// Longest time a client may take to send a request's headers, counted from the first
    /// read of them; on a kept-alive connection the wait for the next request counts too, so
    /// this is also the idle timeout. A client that trickles its headers or sends none is
    /// disconnected. Bodies are not affected. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Connections served at once. Further connections wait in the kernel's listen backlog
    /// until one closes (see the module docs). Each costs a task and a socket buffer, a few
    /// KiB; the process's file-descriptor limit must exceed this plus the daemon's other
    /// files. Default 4096.
    pub max_connections: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
        }
    }
}

impl HttpLimits {
    /// Appends a [`ConfigError`] for each unusable value, keys prefixed with `section`.
    pub fn validate(&self, section: &str, errs: &mut Vec<ConfigError>) {
        if self.header_read_timeout.is_zero() {
            errs.push(ConfigError::new(
                format!("{section}.header_read_timeout"),
                "must be > 0",
            ));
        }
        if self.max_connections == 0 {
            errs.push(ConfigError::new(
                format!("{section}.max_connections"),
                "must be > 0",
            ));
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains: no new connections,
/// in-flight requests may finish within `grace`, and connections still open after it are
/// closed. Accept errors are logged and never end the loop (descriptor exhaustion backs off
/// briefly).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &HttpLimits,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let max = limits.max_connections;
    let slots = Arc::new(Semaphore::new(max as usize));
    let graceful = GracefulShutdown::new();
    // Cancelled when the grace runs out: closes the connections that are still open.
    let cut = CancellationToken::new();
    let mut at_cap = false;
    tokio::pin!(shutdown);
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if !at_cap {
                    warn!(
                        max_connections = max,
                        "connection cap reached; new connections wait until one closes"
                    );
                    at_cap = true;
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        // Never closed; should it be, nothing more can be served.
                        Err(_) => break,
                    },
                }
            }
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
        };
        if at_cap && slots.available_permits() > 0 {
            info!(max_connections = max, "below the connection cap again");
            at_cap = false;
        }
        // Handlers that decide by the caller's address take it as `ConnectInfo`.
        let service = tower::ServiceExt::map_request(
            router.clone(),
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            },
        );
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        let cut = cut.clone();
        tokio::spawn(
            async move {
                tokio::select! {
                    r = conn => if let Err(e) = r {
                        // A client that is slow, gone or speaking garbage: its problem.
                        debug!(error = %e, timeout = e.is_timeout(), "connection ended");
                    },
                    () = cut.cancelled() => debug!("connection closed at the end of the shutdown grace"),
                }
                drop(permit);
            }
            .instrument(debug_span!("http_conn", %peer)),
        );
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        let open = max as usize - slots.available_permits();
        warn!(
            ?grace,
            open, "connections still busy at the end of the shutdown grace; closing them"
        );
        cut.cancel();
    }
}

/// Logs a failed `accept()`. Running out of descriptors or memory fails every accept until
/// something is freed, so those back off instead of spinning; an aborted handshake is the
/// client's affair.
async fn accept_failed(e: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    if matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted) {
        debug!(error = %e, "accept failed");
        return;
    }
    warn!(error = %e, "accept failed; pausing the listener for 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
        time::Instant,
    };

    use super::*;

    const REQUEST: &[u8] = b"GET /healthy HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

    /// A server with `limits` and a 200 ms grace, its address and the token that stops it.
    async fn start(
        limits: HttpLimits,
    ) -> (
        std::net::SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new()
            .route("/healthy", get(|| async { "ok" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            );
        let stop = CancellationToken::new();
        let token = stop.clone();
        let served = tokio::spawn(async move {
            serve(
                listener,
                router,
                &limits,
                Duration::from_millis(200),
                async move {
                    token.cancelled().await;
                },
            )
            .await;
        });
        (addr, stop, served)
    }

    /// Everything the server sends until it closes the connection (or 5 s pass).
    async fn read_until_closed(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn healthy(addr: std::net::SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(REQUEST).await.unwrap();
        read_until_closed(&mut s).await
    }

    #[tokio::test]
    async fn a_client_trickling_its_headers_is_cut_while_others_are_served() {
        let limits = HttpLimits {
            header_read_timeout: Duration::from_millis(300),
            ..HttpLimits::default()
        };
        let (addr, stop, served) = start(limits).await;
        let started = Instant::now();
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /heal").await.unwrap();
        // A silent one, too: connected, nothing sent.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let ok = healthy(addr).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        let mut byte = [0u8; 1];
        // Trickling more within the timeout does not extend it.
        tokio::time::sleep(Duration::from_millis(150)).await;
        slow.write_all(b"thy HTTP/1.1\r\n").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut byte)).await;
        assert!(matches!(n, Ok(Ok(0) | Err(_))), "not closed: {n:?}");
        let cut_after = started.elapsed();
        assert!(
            cut_after >= Duration::from_millis(300) && cut_after < Duration::from_secs(3),
            "{cut_after:?}"
        );
        let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte)).await;
        assert!(matches!(n, Ok(Ok(0) | Err(_))), "not closed: {n:?}");
        // The listener is unaffected.
        let ok = healthy(addr).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        stop.cancel();
        served.await.unwrap();
    }

    #[tokio::test]
    async fn over_the_cap_a_connection_waits_for_a_free_slot() {
        let limits = HttpLimits {
            max_connections: 1,
            ..HttpLimits::default()
        };
        let (addr, stop, served) = start(limits).await;
        let holder = TcpStream::connect(addr).await.unwrap();
        // Let the server accept the holder before the next one arrives.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut waiting = TcpStream::connect(addr).await.unwrap();
        waiting.write_all(REQUEST).await.unwrap();
        let mut buf = [0u8; 64];
        let early = tokio::time::timeout(Duration::from_millis(300), waiting.read(&mut buf)).await;
        assert!(early.is_err(), "served over the cap: {early:?}");
        drop(holder);
        let ok = read_until_closed(&mut waiting).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        stop.cancel();
        served.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_cuts_busy_ones_after_the_grace() {
        let (addr, stop, served) = start(HttpLimits::default()).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut busy = TcpStream::connect(addr).await.unwrap();
        busy.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("serve returns once the grace has run out")
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(read_until_closed(&mut idle).await, "");
        assert_eq!(read_until_closed(&mut busy).await, "");
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    }

    #[test]
    fn zero_limits_are_config_errors() {
        let mut errs = Vec::new();
        HttpLimits::default().validate("http", &mut errs);
        assert!(errs.is_empty());
        HttpLimits {
            header_read_timeout: Duration::ZERO,
            max_connections: 0,
        }
        .validate("http", &mut errs);
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["http.header_read_timeout", "http.max_connections"]);
    }
}
