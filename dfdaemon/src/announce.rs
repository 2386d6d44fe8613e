//! Node announce: this node tells every supernode where its mirror and piece server are,
//! once at start and then every `p2p.keepalive_interval`, so the supernode can reach every
//! node (a Harbor preheat with scope `all_peers` sends each one `POST /api/v1/preheat`).
//!
//! The announce is best effort: a supernode that is down or does not know the endpoint
//! (404) is logged at debug and asked again next time; the mirror never waits for it.

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Path of the announce on the supernode's HTTP API.
pub const NODES_PATH: &str = "/api/v1/nodes";

/// Connect timeout of an announce: a cluster-local connect takes far less.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest time for a whole announce.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The body of `POST http://<supernode>/api/v1/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAnnouncement {
    /// The node's name (`hostname` in the config, else the machine's host name).
    pub hostname: String,
    /// The IP this node is reached at: the piece server's advertised IP.
    pub ip: String,
    /// The mirror's base URL, `http://<ip>:<mirror port>` (IPv6 bracketed).
    pub mirror: String,
    /// The piece server's advertised address, `<ip>:<port>`.
    pub peer: String,
}

impl NodeAnnouncement {
    /// The announcement of a node whose piece server is advertised at `peer` and whose
    /// mirror listens on `mirror_port`.
    pub fn new(hostname: String, peer: SocketAddr, mirror_port: u16) -> Self {
        let ip = peer.ip();
        Self {
            hostname,
            ip: ip.to_string(),
            mirror: format!("http://{}", SocketAddr::new(ip, mirror_port)),
            peer: peer.to_string(),
        }
    }
}

/// Why the announcer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// The HTTP client could not be built.
    #[error("building the announce client: {0}")]
    Client(#[from] reqwest::Error),
    /// The announcement could not be encoded.
    #[error("encoding the node announcement: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Sends one node's announcement to a fixed set of supernodes.
#[derive(Debug, Clone)]
pub(crate) struct Announcer {
    client: reqwest::Client,
    /// `(supernode, URL)` pairs.
    targets: Vec<(String, String)>,
    node: NodeAnnouncement,
    body: bytes::Bytes,
    /// Signs each announcement when the cluster has a secret.
    control: Option<damselfly_common::ControlKey>,
}

impl Announcer {
    /// An announcer of `node` to `supernodes` (`host:port`, IPv6 bracketed).
    ///
    /// # Errors
    /// The HTTP client could not be built.
    pub(crate) fn new(
        supernodes: &[String],
        node: NodeAnnouncement,
        control: Option<damselfly_common::ControlKey>,
    ) -> Result<Self, AnnounceError> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("damselfly-dfdaemon/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let targets = supernodes
            .iter()
            .map(|sn| (sn.clone(), format!("http://{sn}{NODES_PATH}")))
            .collect();
        let body = serde_json::to_vec(&node)?.into();
        Ok(Self {
            client,
            targets,
            node,
            body,
            control,
        })
    }

    /// Announces to every supernode at once, then every `interval` until `shutdown`.
    pub(crate) async fn run(self, interval: Duration, shutdown: CancellationToken) {
        if self.targets.is_empty() {
            return;
        }
        let node = &self.node;
        // The last answer of each supernode: None accepted, Some(status) refused (0: no
        // answer).
        let mut last: Vec<Option<Option<u16>>> = vec![None; self.targets.len()];
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let sends = self.targets.iter().map(|(sn, url)| self.send(sn, url));
            let results = tokio::select! {
                () = shutdown.cancelled() => return,
                r = futures::future::join_all(sends) => r,
            };
            for ((now, was), (sn, _)) in results.into_iter().zip(&mut last).zip(&self.targets) {
                match now {
                    None if *was != Some(None) => {
                        info!(supernode = %sn, hostname = %node.hostname, mirror = %node.mirror, "announced to the supernode");
                    }
                    // Not a passing fault: said once per change, not every interval.
                    Some(401) if *was != Some(Some(401)) => warn!(
                        supernode = %sn,
                        "the supernode refused this node's announcement for want of the \
                         cluster signature: set the same cluster.secret_file on both"
                    ),
                    Some(409) if *was != Some(Some(409)) => warn!(
                        supernode = %sn,
                        hostname = %node.hostname,
                        "the supernode holds this host name for another address: give each \
                         node its own `hostname`, or wait for the old entry to expire"
                    ),
                    _ => {}
                }
                *was = Some(now);
            }
        }
    }

    /// One announce to one supernode: `None` accepted, else the refusal's status (0: no
    /// answer). Failures are logged at debug here.
    async fn send(&self, supernode: &str, url: &str) -> Option<u16> {
        let mut req = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.control {
            req = req.header(
                reqwest::header::AUTHORIZATION,
                key.sign("POST", NODES_PATH, &self.body),
            );
        }
        match req.body(self.body.clone()).send().await {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => {
                debug!(
                    supernode,
                    status = r.status().as_u16(),
                    "node announce refused"
                );
                Some(r.status().as_u16())
            }
            Err(e) => {
                debug!(supernode, error = %damselfly_oci::error_chain(&e), "node announce failed");
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_url_uses_the_advertised_ip() {
        let n = NodeAnnouncement::new("n".into(), "10.0.0.7:65000".parse().unwrap(), 65001);
        assert_eq!(n.ip, "10.0.0.7");
        assert_eq!(n.mirror, "http://10.0.0.7:65001");
        assert_eq!(n.peer, "10.0.0.7:65000");
        let v6 = NodeAnnouncement::new("n".into(), "[fd00::1]:65000".parse().unwrap(), 8080);
        assert_eq!(v6.ip, "fd00::1");
        assert_eq!(v6.mirror, "http://[fd00::1]:8080");
        let json = serde_json::to_value(&n).unwrap();
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 4, "{json}");
    }
}
