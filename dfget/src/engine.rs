//! The engine: one piece server per process (TCP and QUIC on one port number), and the
//! download driver.
//!
//! ```text
//!  download()
//!    ├─ register with the supernode ──(unreachable & back_source)──▶ back_source(): origin GET
//!    ├─ temp file + ServedTask (others may fetch our pieces from now on)
//!    └─ loop: sync (report pieces, get parents/digests) ─▶ Picker ─▶ fetch tasks
//!             fetch task: TCP (pipelined) or QUIC from a parent, or HTTP from the supernode
//!                         → sha256 must match the supernode's digest → pwrite → mark servable
//!             (the parent may take the next request once the bytes are in, before the check)
//!    ├─ beside it: output::hash_prefix hashes the file's verified prefix as it grows
//!    └─ whole-file digest (ready soon after the last piece) → fsync → rename into place
//! ```
//!
//! Decisions (which piece, from whom, backoffs, bans) are the sans-IO
//! [`damselfly_swarm::Picker`]'s; this module only moves bytes and time.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use damselfly_common::{
    Digest, RateLimiter, Sha256Hasher, TokenKey, listen,
    vouch::{DigestVerifier, Vouch, VouchError},
};
use damselfly_oci::{
    Origin, OriginConfig, OriginError,
    retry::{FailureAction, FailureReason},
};
use damselfly_proto::{
    BadPiece, Header, PROTOCOL_VERSION, RegisterRequest, RegisterResponse, SyncRequest,
    SyncResponse, TaskState,
};
use damselfly_swarm::{
    Bitmap, FailReason, Parent, PeerId, PeerSession, PickerConfig, SessionConfig, SessionEvent,
    Source, Subscription, SupernodeWatch, SyncFailure, SyncMsg, SyncReply, piece_range,
};
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::{
    sync::CancellationToken,
    task::{AbortOnDropHandle, TaskTracker},
};
use tracing::{debug, info, trace, warn};

use crate::{
    announce::{self, News},
    fetch::{FetchError, Fetcher, PieceSink, Transport},
    output::{self, IoError, OutputFile},
    quic,
    report::{
        BackSource, FallbackReason, ParentBytes, Progress, Report, SupernodeCopy, Via,
        WholeFileCheck,
    },
    server::{Fault, PieceServer, RefusalObserver, ServedTask, ServerLimits},
    supernode::{SupernodeClient, SupernodeError},
    tcp,
};

/// Engine settings. Every field has a default; see each.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Supernodes (`host:port`); empty means always fetch from the origin. Each download
    /// goes to the supernode its URL hashes to (so every peer of a blob meets at the same
    /// one; the list's order does not matter), then to the others while that one is
    /// unreachable.
    pub supernodes: Vec<String>,
    /// Address of the piece server: TCP and UDP (QUIC) on the same port number. Default
    /// `[::]:0` (any free port, IPv4 and IPv6), falling back to `0.0.0.0:0` where IPv6 is off.
    pub peer_listen: Option<SocketAddr>,
    /// How this peer fetches pieces from parents. Default TCP. It serves both whatever
    /// this says, so peers configured either way can fetch from it.
    pub transport: Transport,
    /// IP advertised to other peers. Default: the local address that routes to the supernode.
    pub advertise_ip: Option<IpAddr>,
    /// Fetch from the origin directly when the supernode is unreachable. Default on.
    pub back_source: bool,
    /// Download limit in bytes per second; 0 = unlimited. Default 0. Charged per piece
    /// received (per chunk from the origin): a piece is held back until the limit allows it,
    /// and refused or failed requests cost nothing.
    pub download_rate: u64,
    /// Upload limit in bytes per second; 0 = unlimited. Default 0.
    pub upload_rate: u64,
    /// Concurrent uploads to other peers. Default 4.
    pub upload_slots: u32,
    /// Piece requests that may wait for an upload slot before further ones are answered
    /// `Busy`. Default 32.
    pub upload_queue: u32,
    /// Send pieces to TCP children straight from the content file (`sendfile`), not through
    /// a buffer. Default off: on a loopback hop it measured 7–10 % slower (docs/benchmarks.md,
    /// "sendfile on the parent").
    pub sendfile: bool,
    /// Piece picking limits.
    pub picker: PickerConfig,
    /// Longest time for one piece transfer before it is retried elsewhere (times
    /// the most requests the picker pipelines to one parent, where they queue behind each other),
    /// and the longest silence of a parent with requests outstanding. Default 10 s.
    pub piece_timeout: Duration,
    /// Sync period with the supernode. Default 200 ms.
    pub sync_interval: Duration,
    /// TCP connect timeout to a supernode: how long an unreachable (not refusing) supernode
    /// delays a download before the next one or the origin is tried. Default 3 s.
    pub supernode_connect_timeout: Duration,
    /// How long the supernode may stay unreachable mid-download before giving up on the swarm
    /// (and going back to the origin if allowed). Default 10 s.
    pub supernode_timeout: Duration,
    /// No verified byte for this long fails the download. Default 120 s.
    pub stall_timeout: Duration,
    /// Hash the whole output once more at the end of a swarm download, even when the
    /// supernode vouches for the piece digests. Default off: every piece is checked against
    /// the supernode's digests, and once the supernode reports its own copy complete, its
    /// whole-blob check against the task's digest covers exactly those digests, so a second
    /// sha256 pass over the output adds CPU and tail time, not safety (unless the supernode
    /// itself is not trusted). Without the supernode's word (a blob it is still fetching, a
    /// task without a known digest), the engine hashes the output as it arrives either way.
    pub check_whole_file: bool,
    /// Learn which pieces each parent holds from the parent itself (an announcement
    /// connection per parent, [`crate::announce`]) rather than from the supernode's sync
    /// answers, which then name parent changes only. Default on; applies to the TCP
    /// transport (QUIC peers always get bitmaps from the supernode). Off: every sync answer
    /// carries every parent's bitmap. At 1,000 simulated peers this
    /// cut the supernode's sync-answer bytes about fivefold (docs/benchmarks.md).
    pub announcements: bool,
    /// Take each piece's digest from the piece answer, signed by the supernode
    /// (`damselfly_common::vouch`), instead of from the supernode's sync answers, when the
    /// supernode publishes a key. Default on: the supernode then sends each digest once,
    /// with a piece it serves, instead of every digest to every peer (at 10,000 simulated
    /// peers its sync bytes fell and the flash crowd finished sooner, docs/benchmarks.md).
    /// Pieces from a parent that has no vouch turn it off for the rest of that download.
    pub vouched_digests: bool,
    /// Relay a piece while it arrives ([`crate::relay`]): announce it to the children that
    /// subscribed when its first bytes come, and stream it to those that ask, holding back
    /// its last 64 KiB until it is verified; ask parents for pieces still arriving at them
    /// likewise. Default off: the simulator predicted a gain (`swarm-sim --cut-through`), but
    /// 16 real hosts (`benches/netns/run.sh`) finished no sooner with it, slightly later
    /// (docs/benchmarks.md, "Relaying a piece while it arrives"). Needs
    /// [`EngineConfig::announcements`] to do anything.
    pub cut_through: bool,
    /// Origin client settings.
    pub origin: OriginConfig,
    /// The key of the cluster secret (the supernodes' `cluster.secret_file`): with it, the
    /// piece server serves pieces and announcements only to requests whose piece token
    /// admits the requester to the task; without it (the default) anyone who reaches the
    /// piece port is served. This peer presents the tokens its supernode issues either way.
    pub token_key: Option<TokenKey>,
    /// The control key of the same secret: signs this peer's calls to the supernodes
    /// (`register`, `sync`, `leave`), which a supernode with a secret requires. Default none.
    pub control_key: Option<damselfly_common::ControlKey>,
    /// Counts piece-token refusals (a daemon's metrics). Default none.
    pub refusals: Option<Arc<dyn RefusalObserver>>,
    /// Test-only misbehaviour.
    pub fault: Fault,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            supernodes: Vec::new(),
            peer_listen: None,
            transport: Transport::Tcp,
            advertise_ip: None,
            back_source: true,
            download_rate: 0,
            upload_rate: 0,
            upload_slots: 4,
            upload_queue: 32,
            sendfile: false,
            // One setting for the engine and the simulator, decided there (docs/benchmarks.md,
            // "The upload queue and pipelined requests").
            picker: PickerConfig::default(),
            piece_timeout: Duration::from_secs(10),
            sync_interval: Duration::from_millis(200),
            supernode_connect_timeout: Duration::from_secs(3),
            supernode_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(120),
            check_whole_file: false,
            cut_through: false,
            announcements: true,
            vouched_digests: true,
            origin: OriginConfig::default(),
            token_key: None,
            control_key: None,
            refusals: None,
            fault: Fault::None,
        }
    }
}

// The session names at most as many urgent pieces as a sync may carry.
const _: () = assert!(damselfly_proto::MAX_URGENT == damselfly_swarm::MAX_URGENT);

/// One download's inputs.
#[derive(Debug, Clone)]
pub struct DownloadRequest {
    /// Origin URL.
    pub url: String,
    /// Headers for origin requests (e.g. `Authorization`).
    pub headers: Vec<(String, String)>,
    /// Expected sha256; for OCI blob URLs it is taken from the URL when not given.
    pub digest: Option<Digest>,
    /// Where the content ends up.
    pub output: PathBuf,
    /// Flush the output to disk (`fsync`) before renaming it into place. A caller that
    /// copies or re-verifies the file itself, and makes it durable there (dfdaemon's node
    /// cache, whose import flushes it and whose reads re-check every piece), turns it off so
    /// the flush is not in the way of the download.
    pub durable: bool,
}

/// Why a download failed. The `Display` form is the one-line cause a CLI prints.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The origin refused or failed (e.g. 401 without credentials).
    #[error("origin answered {status}: {message}")]
    Origin {
        /// The origin's HTTP status.
        status: u16,
        /// The origin's reason.
        message: String,
    },
    /// The supernode holds the blob but the origin would not serve it to this requester.
    #[error("access denied: origin answered {status} for these credentials: {message}")]
    Denied {
        /// The origin's status for these credentials.
        status: u16,
        /// The origin's reason.
        message: String,
    },
    /// Neither the swarm nor the origin could be reached.
    #[error("no route to the content: {0}")]
    NoRoute(String),
    /// The content does not hash to its digest.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Expected digest.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// The supernode's origin fetch failed.
    #[error("the supernode could not fetch the content: {0}")]
    TaskFailed(String),
    /// No verified byte arrived for too long.
    #[error("download stalled: no verified data for {0:?}")]
    Stalled(Duration),
    /// The supernode broke the protocol or refused the request.
    #[error("supernode error: {0}")]
    Supernode(SupernodeError),
    /// A local file operation failed (disk full, permissions).
    #[error("local I/O failed: {0}")]
    Io(#[from] IoError),
    /// The receiver has no room for the content ([`Progress::admit`] said no).
    #[error("{0}")]
    NoSpace(String),
    /// Engine set-up failed.
    #[error("setting up the peer endpoint failed: {0}")]
    Setup(String),
}

impl DownloadError {
    /// True if the download failed for want of local space: the receiver refused it
    /// ([`DownloadError::NoSpace`]) or the disk filled up (`ENOSPC`, `EDQUOT`).
    #[must_use]
    pub fn is_no_space(&self) -> bool {
        match self {
            Self::NoSpace(_) => true,
            Self::Io(e) => damselfly_common::disk::is_no_space(&e.source),
            _ => false,
        }
    }
}

/// Internal: why the swarm path ended without the content.
enum SwarmError {
    /// The supernode is gone; the origin may still work.
    SupernodeLost(String),
    Fatal(DownloadError),
}

impl From<DownloadError> for SwarmError {
    fn from(e: DownloadError) -> Self {
        Self::Fatal(e)
    }
}

/// A task this peer joined at a supernode.
#[derive(Debug, Clone)]
struct Joined {
    /// Index of its supernode in `Engine::supernodes`.
    supernode: usize,
    /// The download finished and was verified: the peer holds every piece. Only then may
    /// [`Engine::keepalive`] tell the supernode so.
    complete: bool,
    /// The blob's URL and digest, to offer it to another supernode as a holder when this
    /// one is lost.
    url: String,
    digest: String,
    /// Whether keep-alives still count on the supernode.
    watch: SupernodeWatch,
}

/// The P2P download engine of one process.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    peer_id: u64,
    advertise: SocketAddr,
    server: Arc<PieceServer>,
    fetcher: Arc<Fetcher>,
    supernodes: Vec<SupernodeClient>,
    origin: Origin,
    download_limiter: Option<Arc<RateLimiter>>,
    endpoint: quinn::Endpoint,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// Tasks this peer joined and has not left.
    joined: parking_lot::Mutex<HashMap<String, Joined>>,
}

impl Engine {
    /// Binds the piece server and prepares clients.
    ///
    /// # Errors
    /// The TCP or UDP socket cannot be bound or TLS set-up failed.
    pub async fn start(config: EngineConfig) -> Result<Self, DownloadError> {
        let setup = |e: &dyn std::fmt::Display| DownloadError::Setup(e.to_string());
        let (listener, endpoint) = match config.peer_listen {
            // `[::]:port` configured (dfdaemon's default): IPv4 only where IPv6 is off.
            Some(addr) if listen::is_v6_wildcard(addr) => bind_peer_port(addr).or_else(|e| {
                let v4 = listen::v4_wildcard(addr);
                warn!(
                    listen = %addr, fallback = %v4, error = %e,
                    "cannot listen on IPv6 (disabled on this host?): the piece server \
                     listens on IPv4 only"
                );
                bind_peer_port(v4)
            })?,
            Some(addr) => bind_peer_port(addr)?,
            None => bind_peer_port(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)))
                .or_else(|_| bind_peer_port(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))))?,
        };
        let local = endpoint.local_addr().map_err(|e| setup(&e))?;
        let supernodes = damselfly_common::placement::normalize(&config.supernodes)
            .iter()
            .map(|addr| {
                SupernodeClient::new(
                    addr,
                    config.supernode_connect_timeout,
                    Duration::from_secs(60),
                )
                .map(|c| c.with_control_key(config.control_key.clone()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| setup(&e))?;
        let ip = match config.advertise_ip {
            Some(ip) => ip,
            None if !local.ip().is_unspecified() => local.ip(),
            None => route_ip(config.supernodes.first().map(String::as_str)).await,
        };
        let advertise = SocketAddr::new(ip, local.port());
        let server = Arc::new(
            PieceServer::new(
                ServerLimits {
                    upload_slots: config.upload_slots,
                    upload_queue: config.upload_queue,
                    sendfile: config.sendfile,
                    upload_rate: config.upload_rate,
                },
                config.fault,
            )
            .with_tokens(config.token_key.clone(), config.refusals.clone()),
        );
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(
            server
                .clone()
                .run_quic(endpoint.clone(), shutdown.clone(), tracker.clone()),
        );
        tracker.spawn(
            server
                .clone()
                .run_tcp(listener, shutdown.clone(), tracker.clone()),
        );
        let origin = Origin::new(&config.origin).map_err(|e| setup(&e))?;
        let mut peer_id = rand::random::<u64>();
        if peer_id == 0 {
            peer_id = 1;
        }
        let fetcher = Arc::new(
            Fetcher::new(config.transport, endpoint.clone(), config.piece_timeout)
                .with_streamed(config.cut_through),
        );
        info!(peer = %PeerId(peer_id), addr = %advertise, transport = %config.transport, "peer piece server listening (TCP and QUIC)");
        Ok(Self {
            download_limiter: (config.download_rate > 0)
                .then(|| Arc::new(RateLimiter::new(config.download_rate))),
            config,
            peer_id,
            advertise,
            server,
            fetcher,
            supernodes,
            origin,
            endpoint,
            shutdown,
            tracker,
            joined: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// The address other peers reach this one at.
    pub fn peer_addr(&self) -> SocketAddr {
        self.advertise
    }

    /// This process's peer id.
    pub fn peer_id(&self) -> u64 {
        self.peer_id
    }

    /// Stops serving `task_id` to other peers at once, closing this engine's handle on its
    /// file (so an evicted file's blocks are freed); [`Engine::forget`] then leaves the swarm.
    pub fn stop_serving(&self, task_id: &str) {
        self.server.remove(task_id);
    }

    /// Stops serving `task_id` to other peers and leaves its swarm (the content is gone
    /// locally, e.g. evicted from a cache).
    pub async fn forget(&self, task_id: &str) {
        self.server.remove(task_id);
        let joined = self.joined.lock().remove(task_id);
        if let Some(sn) = joined.and_then(|j| self.supernodes.get(j.supernode))
            && let Err(e) = sn.leave(task_id, self.peer_id).await
        {
            debug!(error = %e, task = task_id, "leave failed");
        }
    }

    /// Serves a blob this node already holds in full at `path` (verified against `digest`
    /// when it was stored, e.g. a node cache entry after a restart) to the swarm of its
    /// task, if the blob's home supernode (or, while it is unreachable, the next in the
    /// placement order) runs or stores that task: registers as a holder
    /// (which never starts an origin fetch), serves every piece, and reports itself
    /// complete, as after a download. Returns the task id, or `None` when the supernode does
    /// not have the task, refuses this node (a private blob without credentials), or is
    /// unreachable.
    ///
    /// # Errors
    /// The file does not match the task's length or cannot be opened.
    pub async fn serve_held(
        &self,
        url: &str,
        digest: Digest,
        path: &Path,
    ) -> Result<Option<String>, DownloadError> {
        if self.supernodes.is_empty() {
            return Ok(None);
        }
        let register = RegisterRequest {
            version: PROTOCOL_VERSION,
            url: url.to_owned(),
            headers: Vec::new(),
            digest: digest.to_string(),
            peer_id: self.peer_id,
            peer_addr: self.advertise.to_string(),
            holder: true,
            takeover: false,
        };
        // The home supernode first; while it is down, the one that took its tasks over.
        let mut found = None;
        for index in supernode_order(url, &self.supernodes) {
            match self.supernodes[index].register(&register).await {
                Ok(task) => {
                    found = Some((index, task));
                    break;
                }
                Err(SupernodeError::Unreachable { addr, reason }) => {
                    debug!(%digest, supernode = %addr, %reason, "supernode unreachable; asking the next for a held blob");
                }
                Err(e) => {
                    debug!(%digest, error = %e, "not serving a held blob to the swarm");
                    return Ok(None);
                }
            }
        }
        let Some((index, task)) = found else {
            debug!(%digest, "no supernode reachable; not serving a held blob to the swarm");
            return Ok(None);
        };
        let sn = &self.supernodes[index];
        let io = |source| IoError {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len != task.content_length {
            let _ = sn.leave(&task.task_id, self.peer_id).await;
            return Err(DownloadError::Setup(format!(
                "{} holds {len} bytes, the task {} has {}",
                path.display(),
                task.task_id,
                task.content_length
            )));
        }
        let served = Arc::new(ServedTask::new(
            Arc::new(file),
            task.content_length,
            task.piece_size,
            task.piece_count,
        ));
        for piece in 0..task.piece_count {
            served.mark(piece);
        }
        self.server.add(&task.task_id, served.clone());
        self.joined.lock().insert(
            task.task_id.clone(),
            Joined {
                supernode: index,
                complete: true,
                url: url.to_owned(),
                digest: digest.to_string(),
                watch: SupernodeWatch::new(self.config.supernode_timeout),
            },
        );
        // With the supernode's key, the report also asks for every digest with its signature,
        // so this node sends them with its pieces as a node that downloaded the blob would
        // (peers that take vouched digests otherwise fall back to the supernode's).
        let verifier = self.digest_verifier(&task);
        let mut done = self.sync_request(
            &task.task_id,
            Vec::new(),
            Vec::new(),
            true,
            if verifier.is_some() { 0 } else { u32::MAX },
        );
        done.signatures = verifier.is_some();
        match sn.sync(&done).await {
            Ok(resp) => {
                let vouches = verifier
                    .as_ref()
                    .and_then(|key| held_vouches(&task.task_id, key, &resp, task.piece_count));
                debug!(%digest, vouched = vouches.is_some(), "held blob reported complete");
                for (piece, v) in (0..).zip(vouches.into_iter().flatten()) {
                    served.mark_vouched(piece, Some(v));
                }
            }
            Err(e) => {
                debug!(%digest, error = %e, "reporting a held blob failed; the keepalive retries");
            }
        }
        Ok(Some(task.task_id))
    }

    /// Bytes uploaded to other peers so far.
    pub fn bytes_uploaded(&self) -> u64 {
        self.server.bytes_served()
    }

    /// The piece server, for a daemon's metrics.
    pub fn piece_server(&self) -> Arc<PieceServer> {
        self.server.clone()
    }

    /// Piece answers begun while the piece was still arriving here (relayed cut-through).
    pub fn relayed_pieces(&self) -> u64 {
        self.server.relayed_pieces()
    }

    /// Piece requests and subscriptions refused for want of a valid piece token so far.
    pub fn token_refusals(&self) -> u64 {
        self.server.token_refusals()
    }

    /// Keeps serving for `dur` while reporting liveness to the supernode, so peers still
    /// downloading can use this one.
    pub async fn linger(&self, dur: Duration) {
        let deadline = tokio::time::Instant::now() + dur;
        while tokio::time::Instant::now() < deadline {
            self.keepalive().await;
            let step = Duration::from_secs(1).min(deadline - tokio::time::Instant::now());
            tokio::time::sleep(step).await;
        }
    }

    /// Tells the supernode once that this peer is alive and complete for every task it
    /// finished downloading, so it stays a parent. A long-running peer calls this well within
    /// the supernode's peer timeout. Downloads still running are left out: they sync on their
    /// own, and claiming them complete would make the supernode stop offering them pieces.
    /// Tasks the supernode no longer knows are dropped from the list (their content is still
    /// served to anyone who asks).
    ///
    /// A supernode unreachable for `supernode_timeout` is given up for the task: the peer
    /// offers the blob as a holder to the next supernode in the blob's placement order
    /// that runs the task (the one its downloading peers moved to), so it goes on serving
    /// them there.
    pub async fn keepalive(&self) {
        let joined: Vec<(String, Joined)> = self
            .joined
            .lock()
            .iter()
            .filter(|(_, j)| j.complete)
            .map(|(t, j)| (t.clone(), j.clone()))
            .collect();
        for (task_id, j) in joined {
            let Some(sn) = self.supernodes.get(j.supernode) else {
                continue;
            };
            let req = self.sync_request(&task_id, Vec::new(), Vec::new(), true, u32::MAX);
            match sn.sync(&req).await {
                Err(e) if e.code() == Some("UNKNOWN_TASK") => {
                    self.joined.lock().remove(&task_id);
                }
                Err(SupernodeError::Unreachable { .. }) if self.supernodes.len() > 1 => {
                    let lost = self
                        .joined
                        .lock()
                        .get_mut(&task_id)
                        .is_some_and(|entry| entry.watch.handle_unreachable(Instant::now()));
                    if lost {
                        self.rehome(&task_id, &j).await;
                    }
                }
                Err(e) => debug!(error = %e, task = %task_id, "keepalive failed"),
                Ok(_) => {
                    if let Some(entry) = self.joined.lock().get_mut(&task_id) {
                        entry.watch.handle_reachable();
                    }
                }
            }
        }
    }

    /// Offers a complete blob, whose supernode `j.supernode` is lost, as a holder to the
    /// other supernodes in the blob's placement order; the first that runs or stores the
    /// task takes it (a holder never starts a fetch, so the others answer "not here" until
    /// a downloading peer has moved the task there).
    async fn rehome(&self, task_id: &str, j: &Joined) {
        let register = RegisterRequest {
            version: PROTOCOL_VERSION,
            url: j.url.clone(),
            headers: Vec::new(),
            digest: j.digest.clone(),
            peer_id: self.peer_id,
            peer_addr: self.advertise.to_string(),
            holder: true,
            takeover: false,
        };
        for index in supernode_order(&j.url, &self.supernodes) {
            if index == j.supernode {
                continue;
            }
            let sn = &self.supernodes[index];
            match sn.register(&register).await {
                Ok(task) if task.task_id == task_id => {
                    info!(
                        task = task_id,
                        supernode = sn.addr(),
                        "supernode lost; serving the blob to its swarm at the next supernode"
                    );
                    if let Some(entry) = self.joined.lock().get_mut(task_id) {
                        entry.supernode = index;
                        entry.watch.handle_reachable();
                    }
                    let done = self.sync_request(task_id, Vec::new(), Vec::new(), true, u32::MAX);
                    if let Err(e) = sn.sync(&done).await {
                        debug!(task = task_id, error = %e, "reporting a re-homed blob failed; the keepalive retries");
                    }
                    return;
                }
                Ok(task) => {
                    let _ = sn.leave(&task.task_id, self.peer_id).await;
                }
                Err(e) => {
                    trace!(task = task_id, supernode = sn.addr(), error = %e, "not re-homed there");
                }
            }
        }
    }

    /// Leaves every task (all at once, for at most `grace`), stops the piece server and waits
    /// (up to `grace`) for uploads to end. Takes `&self` so a process that shares the engine
    /// (dfdaemon's request handlers hold it too) can still leave its swarms on the way out:
    /// otherwise peers keep asking a node that is gone until the supernode's peer timeout.
    pub async fn shutdown(&self, grace: Duration) {
        let joined: Vec<(String, Joined)> = self.joined.lock().drain().collect();
        let leaves = joined.iter().filter_map(|(task_id, joined)| {
            let sn = self.supernodes.get(joined.supernode)?;
            Some(async move {
                if let Err(e) = sn.leave(task_id, self.peer_id).await {
                    debug!(error = %e, task = %task_id, "leave failed");
                }
            })
        });
        let left = joined.len();
        if tokio::time::timeout(grace, futures::future::join_all(leaves))
            .await
            .is_err()
        {
            warn!(tasks = left, "leaving the swarms timed out at shutdown");
        } else if left > 0 {
            info!(tasks = left, "left the swarms");
        }
        self.shutdown.cancel();
        self.endpoint.close(0u32.into(), b"shutdown");
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            warn!("uploads still running at shutdown");
        }
    }

    fn sync_request(
        &self,
        task_id: &str,
        new_pieces: Vec<u32>,
        bad_pieces: Vec<BadPiece>,
        done: bool,
        digests_from: u32,
    ) -> SyncRequest {
        SyncRequest {
            version: PROTOCOL_VERSION,
            task_id: task_id.to_owned(),
            peer_id: self.peer_id,
            peer_addr: self.advertise.to_string(),
            new_pieces,
            uploading: self.server.uploading(),
            done,
            bad_pieces,
            digests_from,
            urgent_pieces: Vec::new(),
            wait_ms: 0,
            announced: false,
            known_parents: Vec::new(),
            vouched: false,
            signatures: false,
            unreachable_parents: Vec::new(),
            // Filled in by the supernode client, which keeps it from the registration.
            session_token: Vec::new(),
            unserved_pieces: Vec::new(),
        }
    }

    /// The supernode's key from its registration answer, when it vouches for digests and
    /// this engine takes them so (`vouched_digests`).
    fn digest_verifier(&self, task: &RegisterResponse) -> Option<DigestVerifier> {
        if !self.config.vouched_digests || task.digest_key.is_empty() {
            return None;
        }
        DigestVerifier::new(&task.digest_key)
            .inspect_err(|e| {
                warn!(task = %task.task_id, error = %e, "ignoring the supernode's digest key; taking digests from its syncs");
            })
            .ok()
    }

    /// Asks the supernode, once every piece is in, whether its copy of the task is complete
    /// (so it matched the task's digest) and its piece digests are exactly the ones this
    /// download verified against (they would differ only if the supernode had fetched the
    /// blob again after a failure or a restart).
    async fn confirm_vouched(
        &self,
        sn: &SupernodeClient,
        task_id: &str,
        ours: &[[u8; 32]],
    ) -> bool {
        // Asked as `vouched`: a supernode that knows the field answers with the sha256 of its
        // digests instead of the digests themselves (32 bytes instead of 32 per piece).
        let mut req = self.sync_request(task_id, Vec::new(), Vec::new(), false, 0);
        req.vouched = true;
        match sn.sync(&req).await {
            Ok(resp) if resp.state != TaskState::Complete as i32 => false,
            Ok(resp) if !resp.digests_sha256.is_empty() => {
                resp.digests_sha256 == damselfly_common::vouch::digests_sha256(ours).0
            }
            Ok(resp) => {
                resp.digests_from == 0
                    && resp.digests.len() == ours.len()
                    && resp
                        .digests
                        .iter()
                        .zip(ours)
                        .all(|(a, b)| a.as_slice() == b)
            }
            Err(e) => {
                debug!(task = task_id, error = %e, "confirming the piece digests failed");
                false
            }
        }
    }

    /// After the download's supernode was given up: registers the same download with the
    /// supernodes in the blob's placement order (the order every node computes alike, so the
    /// swarm regroups at one supernode), except `skip` (the one that stopped answering), and
    /// returns the first that takes it. That supernode fetches what no peer has from the origin; the peers already
    /// hold the rest. `None` when none answers, or the one that does cuts the blob
    /// differently (another length or piece size: the held pieces would not fit).
    async fn take_over(
        &self,
        register: &RegisterRequest,
        skip: Option<usize>,
        task: &RegisterResponse,
        held: bool,
    ) -> Option<(usize, RegisterResponse)> {
        // Holding pieces, this peer says so: the new supernode may fill its copy from the
        // pieces the swarm holds (it waits for the first report of them).
        let register = RegisterRequest {
            takeover: held,
            ..register.clone()
        };
        for index in supernode_order(&register.url, &self.supernodes) {
            if Some(index) == skip {
                continue;
            }
            let sn = &self.supernodes[index];
            match sn.register(&register).await {
                Ok(answer)
                    if answer.task_id == task.task_id
                        && answer.content_length == task.content_length
                        && answer.piece_size == task.piece_size =>
                {
                    return Some((index, answer));
                }
                Ok(answer) => {
                    warn!(
                        supernode = sn.addr(),
                        task = %task.task_id,
                        piece_size = answer.piece_size,
                        ours = task.piece_size,
                        "the next supernode cuts the blob differently; not taking the download over"
                    );
                    let _ = sn.leave(&answer.task_id, self.peer_id).await;
                    return None;
                }
                Err(e) => {
                    debug!(supernode = sn.addr(), error = %e, "supernode cannot take the download over");
                }
            }
        }
        None
    }

    /// Downloads `req.url` to `req.output` through the swarm (or the origin when the swarm is
    /// unreachable and back-to-source is on).
    ///
    /// # Errors
    /// See [`DownloadError`]; on error no output file is left behind.
    pub async fn download(
        &self,
        req: &DownloadRequest,
        progress: &dyn Progress,
    ) -> Result<Report, DownloadError> {
        let started = Instant::now();
        let digest = req.digest.or_else(|| damselfly_oci::blob_digest(&req.url));
        if self.supernodes.is_empty() {
            return self
                .back_source(
                    req,
                    digest,
                    started,
                    progress,
                    BackSource {
                        reason: FallbackReason::NoSupernode,
                        detail: "no supernode configured".into(),
                    },
                )
                .await;
        }
        let register = RegisterRequest {
            version: PROTOCOL_VERSION,
            url: req.url.clone(),
            headers: req
                .headers
                .iter()
                .map(|(name, value)| Header {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            digest: req.digest.map(|d| d.to_string()).unwrap_or_default(),
            peer_id: self.peer_id,
            peer_addr: self.advertise.to_string(),
            holder: false,
            takeover: false,
        };
        let mut unreachable = Vec::new();
        let mut registered = None;
        for index in supernode_order(&req.url, &self.supernodes) {
            match self.supernodes[index].register(&register).await {
                Ok(t) => {
                    registered = Some((index, t));
                    break;
                }
                Err(SupernodeError::Unreachable { addr, reason }) => {
                    debug!(supernode = %addr, %reason, "supernode unreachable, trying the next");
                    unreachable.push(format!("{addr}: {reason}"));
                }
                // The supernode cannot reach the origin (network, DNS, a CA it does not
                // trust): this node may well, so it tries itself when it may.
                Err(SupernodeError::Refused(r)) if r.code == "ORIGIN_UNREACHABLE" => {
                    let why = BackSource {
                        reason: FallbackReason::SupernodeOriginUnreachable,
                        detail: format!("supernode cannot reach the origin ({})", r.message),
                    };
                    return self.back_source(req, digest, started, progress, why).await;
                }
                // The supernode's disk is full: the swarm cannot start, but this node may
                // have room for a fetch of its own.
                Err(SupernodeError::Refused(r)) if r.code == "NO_SPACE" => {
                    let why = BackSource {
                        reason: FallbackReason::SupernodeNoSpace,
                        detail: format!("supernode has no room for the blob ({})", r.message),
                    };
                    return self.back_source(req, digest, started, progress, why).await;
                }
                Err(e) => return Err(refusal(e)),
            }
        }
        let Some((index, task)) = registered else {
            let why = BackSource {
                reason: FallbackReason::SupernodeUnreachable,
                detail: format!("supernode unreachable ({})", unreachable.join("; ")),
            };
            return self.back_source(req, digest, started, progress, why).await;
        };
        let sn = &self.supernodes[index];
        if self.server.checks_tokens() && task.piece_token.is_empty() {
            warn!(
                supernode = sn.addr(),
                task = %task.task_id,
                "the supernode issued no piece token (is its cluster.secret_file set?): \
                 peers that check tokens will refuse this one"
            );
        }
        self.joined.lock().insert(
            task.task_id.clone(),
            Joined {
                supernode: index,
                complete: false,
                url: req.url.clone(),
                digest: task.digest.clone(),
                watch: SupernodeWatch::new(self.config.supernode_timeout),
            },
        );
        progress.set_total(task.content_length);
        let out = progress
            .admit(task.content_length)
            .map_err(DownloadError::NoSpace)
            .and_then(|()| {
                OutputFile::create(&req.output, task.content_length, self.peer_id)
                    .map_err(DownloadError::from)
            })
            .inspect_err(|_| self.abandon(&task.task_id))?;
        let copy = SupernodeCopy::from_wire(task.copy());
        progress.via(&Via::Swarm {
            supernode: sn.addr().to_string(),
            copy,
        });
        progress.started(&out.file(), task.content_length);
        let mut report = Report {
            task_id: task.task_id.clone(),
            bytes: task.content_length,
            supernode_copy: copy,
            ..Report::default()
        };
        // The digest the supernode's whole-blob check is against, if it is the one this
        // download must end at: its word on the piece digests then stands for ours.
        let vouchable = task
            .digest
            .parse::<Digest>()
            .ok()
            .filter(|d| digest.is_none_or(|want| want == *d) && !self.config.check_whole_file);
        let mut index = index;
        let result = self
            .swarm_download(
                &register,
                &mut index,
                &task,
                vouchable,
                &out,
                progress,
                &mut report,
            )
            .await;
        // The supernode the download ended with (another one if its own was lost).
        let sn = &self.supernodes[index];
        report.supernode = Some(sn.addr().to_string());
        let whole = match result {
            Ok(whole) => whole,
            Err(SwarmError::SupernodeLost(why)) if self.config.back_source => {
                self.abandon(&task.task_id);
                drop(out);
                let why = BackSource {
                    reason: FallbackReason::SupernodeLost,
                    detail: format!("supernode lost mid-download ({why})"),
                };
                return self.back_source(req, digest, started, progress, why).await;
            }
            Err(SwarmError::SupernodeLost(why)) => {
                self.abandon(&task.task_id);
                return Err(DownloadError::NoRoute(why));
            }
            Err(SwarmError::Fatal(e)) => {
                self.abandon(&task.task_id);
                return Err(e);
            }
        };
        let last_piece = Instant::now();
        let expected = digest.or_else(|| task.digest.parse().ok());
        let job = match whole {
            WholeCheck::Vouched(d) => {
                if self
                    .confirm_vouched(sn, &task.task_id, &report.piece_digests)
                    .await
                {
                    Ok(d)
                } else {
                    // The supernode's word did not hold up (its copy changed, or it is gone):
                    // hash the output ourselves after all.
                    warn!(task = %task.task_id, "supernode could not confirm the piece digests; hashing the output");
                    Err(tokio::spawn(output::hash_prefix(
                        out.file(),
                        out.temp_path().to_path_buf(),
                        task.content_length,
                        tokio::sync::watch::channel(task.content_length).1,
                    )))
                }
            }
            WholeCheck::Hashing(job) => Err(job),
        };
        let file_digest = match job {
            Ok(d) => {
                report.whole_file_check = WholeFileCheck::Supernode;
                d
            }
            Err(job) => check_digest(job, expected).await.inspect_err(|_| {
                self.abandon(&task.task_id);
            })?,
        };
        let verified = Instant::now();
        report.digest_wait = verified - last_piece;
        out.commit(req.durable)
            .inspect_err(|_| self.abandon(&task.task_id))?;
        report.commit_time = verified.elapsed();
        report.digest = file_digest.to_string();
        report.elapsed = started.elapsed();
        // Tell the supernode at once that this peer is complete: it is now a full parent.
        let _ = sn
            .sync(&self.sync_request(&task.task_id, Vec::new(), Vec::new(), true, u32::MAX))
            .await;
        if let Some(j) = self.joined.lock().get_mut(&task.task_id) {
            j.complete = true;
        }
        Ok(report)
    }

    /// Stops serving a download that failed and forgets it joined the task (the supernode
    /// expires it). Its content is gone, so it must never be reported complete.
    fn abandon(&self, task_id: &str) {
        self.server.remove(task_id);
        self.joined.lock().remove(task_id);
    }

    /// The swarm part of a download: drives the sans-IO [`PeerSession`], which makes every
    /// decision (when to sync and what it carries, which piece from whom, stalls, supernode
    /// loss, completion); this loop only moves bytes and time. One `select!` over the sync
    /// in flight, the piece jobs and the session's one timer; after every input the
    /// session's `poll_*` outputs are drained.
    #[allow(clippy::too_many_arguments)]
    async fn swarm_download(
        &self,
        register: &RegisterRequest,
        index: &mut usize,
        task: &RegisterResponse,
        vouchable: Option<Digest>,
        out: &OutputFile,
        progress: &dyn Progress,
        report: &mut Report,
    ) -> Result<WholeCheck, SwarmError> {
        // Other peers may fetch each piece from here as soon as it is verified and written.
        let served = Arc::new(ServedTask::new(
            out.file(),
            task.content_length,
            task.piece_size,
            task.piece_count,
        ));
        self.server.add(&task.task_id, served.clone());
        // This peer's piece token for the task, refreshed by sync answers before it expires.
        let token: PieceToken = Arc::new(parking_lot::RwLock::new(task.piece_token.clone()));
        let mut sn = self.supernodes[*index].clone();
        // The keys piece digests may be vouched with: this supernode's, and those of any
        // supernode that takes the task over (pieces vouched by the lost one are still good).
        let mut verifiers: Arc<[DigestVerifier]> = self.digest_verifier(task).into_iter().collect();
        let session_config = SessionConfig {
            sync_interval: self.config.sync_interval,
            supernode_timeout: self.config.supernode_timeout,
            stall_timeout: self.config.stall_timeout,
            piece_timeout: self.config.piece_timeout,
            picker: self.config.picker.clone(),
            announcements: self.config.announcements && self.config.transport == Transport::Tcp,
            vouched_digests: !verifiers.is_empty(),
        };
        let mut session = PeerSession::new(
            Instant::now(),
            task.content_length,
            task.piece_size,
            session_config,
            rand::random(),
        );
        let mut inflight: JoinSet<PieceOutcome> = JoinSet::new();
        // Verified bytes kept from each parent, for the report.
        let mut parent_bytes: HashMap<SocketAddr, u64> = HashMap::new();
        let mut syncing: JoinSet<Result<SyncResponse, SupernodeError>> = JoinSet::new();
        // Piece jobs say here when a piece's bytes have arrived, so its parent can take the
        // next request while the piece is verified and written.
        let (received_tx, mut received_rx) = tokio::sync::mpsc::unbounded_channel();
        let path: Arc<Path> = Arc::from(out.temp_path());
        // The whole-file digest follows the verified prefix while pieces arrive. If this
        // function fails, dropping `prefix_tx` stops it.
        let (prefix_tx, prefix_rx) = tokio::sync::watch::channel(0u64);
        // Parents' announcements, one task per subscribed parent (dropping it unsubscribes).
        let (news_tx, mut news_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut subscriptions: HashMap<PeerId, AbortOnDropHandle<()>> = HashMap::new();
        let mut announcing: HashSet<PeerId> = HashSet::new();
        let mut whole = WholeCheck::Hashing(tokio::spawn(output::hash_prefix(
            out.file(),
            out.temp_path().to_path_buf(),
            task.content_length,
            prefix_rx,
        )));

        loop {
            let now = Instant::now();
            session.handle_urgent(now, progress.take_urgent());
            while let Some(event) = session.poll_event() {
                match event {
                    SessionEvent::Complete => {}
                    SessionEvent::Stalled(d) => return Err(DownloadError::Stalled(d).into()),
                    SessionEvent::SupernodeLost(why) => {
                        // A supernode that answers but forgot the task (restarted, or it
                        // dropped this peer) is asked again first; an unreachable one is not.
                        let skip = matches!(why, SyncFailure::Unreachable(_)).then_some(*index);
                        let held = session.have().count() > 0;
                        let Some((next, answer)) = self.take_over(register, skip, task, held).await
                        else {
                            return Err(SwarmError::SupernodeLost(why.to_string()));
                        };
                        warn!(
                            task = %task.task_id,
                            lost = sn.addr(),
                            next = self.supernodes[next].addr(),
                            reason = %why,
                            held = session.have().count(),
                            "supernode lost; the next one in the blob's placement order takes the download over"
                        );
                        // A sync still out to the lost supernode is dropped; the session
                        // reports every held piece to the new one at once.
                        syncing.abort_all();
                        *index = next;
                        sn = self.supernodes[next].clone();
                        token.write().clone_from(&answer.piece_token);
                        if let Some(key) = self.digest_verifier(&answer) {
                            verifiers = verifiers.iter().cloned().chain([key]).collect();
                        }
                        if let Some(j) = self.joined.lock().get_mut(&task.task_id) {
                            j.supernode = next;
                        }
                        report.supernode_takeovers += 1;
                        session.rejoin(Instant::now());
                    }
                    SessionEvent::TaskFailed(why) => {
                        return Err(DownloadError::TaskFailed(why).into());
                    }
                    SessionEvent::SyncRefused(why) => {
                        return Err(DownloadError::Supernode(SupernodeError::Protocol(why)).into());
                    }
                }
            }
            if session.is_complete() {
                break;
            }
            if let Some(msg) = session.poll_sync(now) {
                let req = self.session_sync(&task.task_id, msg);
                trace!(
                    reported = req.new_pieces.len(),
                    digests_from = req.digests_from,
                    wait_ms = req.wait_ms,
                    unreachable = req.unreachable_parents.len(),
                    "sync sent"
                );
                let sn = sn.clone();
                syncing.spawn(async move { sn.sync(&req).await });
            }
            while let Some(change) = session.poll_subscription() {
                match change {
                    Subscription::Subscribe { parent, addr } => {
                        trace!(%parent, %addr, "subscribing to announcements");
                        let listen = announce::subscribe(
                            parent,
                            addr,
                            announce::Subscriber {
                                task_id: task.task_id.clone(),
                                peer_id: self.peer_id,
                                token: token.read().clone(),
                                arriving: self.config.cut_through,
                            },
                            task.piece_count,
                            self.config.supernode_connect_timeout,
                            news_tx.clone(),
                        );
                        subscriptions.insert(parent, AbortOnDropHandle::new(tokio::spawn(listen)));
                    }
                    Subscription::Unsubscribe { parent } => {
                        subscriptions.remove(&parent);
                    }
                }
            }
            while let Some(fetch) = session.poll_request(now) {
                trace!(piece = fetch.piece, source = ?fetch.source, "piece requested");
                let job = PieceJob {
                    task_id: task.task_id.clone(),
                    piece: fetch.piece,
                    source: fetch.source,
                    addr: fetch.addr,
                    range: fetch.range,
                    expected: fetch.expected,
                    verifiers: verifiers.clone(),
                    peer_id: self.peer_id,
                    token: token.clone(),
                    timeout: fetch.timeout,
                    relay: self.config.cut_through,
                };
                inflight.spawn(job.run(
                    sn.clone(),
                    self.fetcher.clone(),
                    served.clone(),
                    path.clone(),
                    self.download_limiter.clone(),
                    received_tx.clone(),
                ));
            }
            let wake = session
                .poll_timeout()
                .unwrap_or(now + self.config.sync_interval);
            tokio::select! {
                Some(joined) = syncing.join_next() => {
                    let now = Instant::now();
                    let result = joined.map_err(|e| {
                        DownloadError::Setup(format!("sync worker failed: {e}"))
                    })?;
                    match result {
                        Ok(resp) => {
                            trace!(
                                digests = resp.digests.len(),
                                parents = resp.parents.len(),
                                state = resp.state,
                                "sync answered"
                            );
                            if let (Some(d), WholeCheck::Hashing(job)) = (vouchable, &whole)
                                && resp.state == TaskState::Complete as i32
                            {
                                // The supernode holds the whole blob and it matched `d`:
                                // the piece digests it gave us are that blob's.
                                job.abort();
                                whole = WholeCheck::Vouched(d);
                            }
                            if !resp.piece_token.is_empty() {
                                token.write().clone_from(&resp.piece_token);
                            }
                            session.handle_sync_reply(now, sync_reply(&resp, session.have().len()));
                        }
                        Err(e) => {
                            let failure = match &e {
                                SupernodeError::Unreachable { reason, .. } => {
                                    SyncFailure::Unreachable(reason.clone())
                                }
                                e if e.code() == Some("UNKNOWN_TASK")
                                    || e.code() == Some("NOT_ADMITTED") =>
                                {
                                    SyncFailure::TaskUnknown(e.to_string())
                                }
                                // Anything else ends the download with the supernode's own
                                // refusal, typed.
                                _ => return Err(refusal(e).into()),
                            };
                            session.handle_sync_failed(now, failure);
                        }
                    }
                }
                Some((piece, source)) = received_rx.recv() => {
                    session.handle_piece_received(Instant::now(), piece, source);
                }
                Some(news) = news_rx.recv() => {
                    let now = Instant::now();
                    match news {
                        News::Pieces(parent, bits) => {
                            trace!(%parent, pieces = bits.count(), "parent bitfield");
                            announcing.insert(parent);
                            session.handle_parent_pieces(now, parent, bits);
                        }
                        News::Have(parent, pieces) => {
                            trace!(%parent, ?pieces, "parent announced pieces");
                            for p in pieces {
                                session.handle_parent_have(now, parent, p);
                            }
                        }
                        News::Lost(parent) => {
                            trace!(%parent, "parent's announcements ended");
                            if subscriptions.remove(&parent).is_some() {
                                session.handle_parent_lost(now, parent);
                            }
                        }
                        News::Unreachable(parent) => {
                            trace!(%parent, "parent unreachable for announcements");
                            if subscriptions.remove(&parent).is_some() {
                                session.handle_parent_unreachable(now, parent);
                            }
                        }
                    }
                }
                Some(joined) = inflight.join_next() => {
                    let now = Instant::now();
                    let outcome = joined.map_err(|e| {
                        DownloadError::Setup(format!("piece worker failed: {e}"))
                    })?;
                    match outcome.result {
                        Ok(done) => {
                            let len = done.len;
                            trace!(piece = outcome.piece, source = ?outcome.source, "piece verified and written");
                            if let Some(d) = done.vouched {
                                session.handle_vouched_digest(outcome.piece, d);
                            }
                            let before = session.verified_prefix();
                            let kept_before = session.bytes_from_peers();
                            session.handle_piece_done(now, outcome.piece, outcome.source, len);
                            if let Some(addr) = outcome.addr {
                                let kept = session.bytes_from_peers() - kept_before;
                                if kept > 0 {
                                    *parent_bytes.entry(addr).or_insert(0) += kept;
                                }
                            }
                            let prefix = session.verified_prefix();
                            if prefix > before {
                                prefix_tx.send_replace(prefix);
                            }
                            progress.advance(len);
                            progress.written(piece_range(task.content_length, task.piece_size, outcome.piece));
                        }
                        Err(PieceFailure::Local(e)) => return Err(DownloadError::Io(e).into()),
                        Err(PieceFailure::Unvouched | PieceFailure::NotVouched(_)) => {
                            debug!(piece = outcome.piece, source = ?outcome.source, "piece came without a vouched digest; taking digests from the supernode");
                            session.handle_unvouched(now, outcome.piece, outcome.source);
                        }
                        Err(failure) => {
                            debug!(piece = outcome.piece, source = ?outcome.source, error = %failure, "piece fetch failed");
                            // A silent parent is probably dead: make the next attempt
                            // reconnect (and fail fast) instead of waiting on a stale
                            // connection. A single refused request leaves the connection alone.
                            if let (PieceFailure::Timeout, Some(addr)) = (&failure, outcome.addr) {
                                self.fetcher.drop_connection(addr);
                            }
                            session.handle_piece_failed(now, outcome.piece, outcome.source, failure.reason());
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake.max(Instant::now()).into()) => {
                    session.handle_timeout(Instant::now());
                }
            }
        }
        report.from_supernode = session.bytes_from_seed();
        report.from_peers = session.bytes_from_peers();
        let mut parents: Vec<ParentBytes> = parent_bytes
            .into_iter()
            .map(|(addr, bytes)| ParentBytes {
                addr: addr.to_string(),
                bytes,
            })
            .collect();
        parents.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.addr.cmp(&b.addr)));
        report.parents = parents;
        report.corrupt_pieces = u32::try_from(session.corrupt_pieces()).unwrap_or(u32::MAX);
        report.liars = session.liars().map(|p| p.0).collect();
        report.announcing_parents = u32::try_from(announcing.len()).unwrap_or(u32::MAX);
        report.piece_size = task.piece_size;
        report.piece_digests = session.digests();
        // A sync still in flight is dropped (its reports go into the final one), and the
        // final report (every piece, and any liar) goes out before completion is declared.
        let now = Instant::now();
        if !syncing.is_empty() {
            syncing.abort_all();
            session.handle_sync_failed(now, SyncFailure::Unreachable("superseded".into()));
        }
        if let Some(msg) = session.poll_sync(now) {
            let _ = sn.sync(&self.session_sync(&task.task_id, msg)).await;
        }
        Ok(whole)
    }

    /// The wire form of a sync the session asked for.
    fn session_sync(&self, task_id: &str, msg: SyncMsg) -> SyncRequest {
        let bad = msg
            .bad_pieces
            .iter()
            .map(|&(offender, piece)| BadPiece {
                offender: offender.0,
                piece,
            })
            .collect();
        let mut req = self.sync_request(task_id, msg.new_pieces, bad, msg.done, msg.digests_from);
        req.urgent_pieces = msg.urgent;
        req.vouched = msg.vouched;
        req.unreachable_parents = msg.unreachable_parents.iter().map(|p| p.0).collect();
        req.unserved_pieces = msg
            .unserved
            .iter()
            .map(|&(parent, piece)| BadPiece {
                offender: parent.0,
                piece,
            })
            .collect();
        if let Some(known) = msg.known_parents {
            req.announced = true;
            req.known_parents = known.into_iter().map(|p| p.0).collect();
        }
        req.wait_ms = msg.wait.map_or(0, |w| {
            u32::try_from(w.as_millis())
                .unwrap_or(u32::MAX)
                .min(damselfly_proto::MAX_SYNC_WAIT_MS)
        });
        req
    }

    async fn back_source(
        &self,
        req: &DownloadRequest,
        digest: Option<Digest>,
        started: Instant,
        progress: &dyn Progress,
        why: BackSource,
    ) -> Result<Report, DownloadError> {
        if !self.config.back_source {
            return Err(DownloadError::NoRoute(format!(
                "{why} and back-to-source is off"
            )));
        }
        warn!(reason = why.reason.label(), detail = %why, url = %req.url, "fetching from the origin directly");
        let resp = self
            .origin
            .get(&req.url, &req.headers)
            .await
            .map_err(origin_error)?;
        progress.set_total(resp.content_length);
        progress
            .admit(resp.content_length)
            .map_err(DownloadError::NoSpace)?;
        let out = OutputFile::create(&req.output, resp.content_length, self.peer_id)?;
        let file = out.file();
        progress.via(&Via::Origin(why.clone()));
        progress.started(&file, resp.content_length);
        let path = out.temp_path().to_path_buf();
        let mut hasher = Sha256Hasher::new();
        let mut offset = 0u64;
        let mut body = resp.body;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(origin_error)?;
            if offset + chunk.len() as u64 > resp.content_length {
                return Err(DownloadError::Origin {
                    status: 200,
                    message: "origin sent more bytes than its Content-Length".into(),
                });
            }
            if let Some(l) = &self.download_limiter {
                l.acquire(chunk.len() as u64).await;
            }
            hasher.update(&chunk);
            OutputFile::write_at(&file, &path, offset, &chunk)?;
            progress.written(offset..offset + chunk.len() as u64);
            offset += chunk.len() as u64;
            progress.advance(chunk.len() as u64);
        }
        if offset != resp.content_length {
            return Err(DownloadError::Origin {
                status: 200,
                message: format!(
                    "origin closed after {offset} of {} bytes",
                    resp.content_length
                ),
            });
        }
        let actual = hasher.finish();
        if let Some(expected) = digest
            && expected != actual
        {
            if let Some(observer) = &self.config.origin.observer {
                observer.failure(FailureReason::DigestMismatch, FailureAction::GaveUp);
            }
            return Err(DownloadError::DigestMismatch { expected, actual });
        }
        out.commit(req.durable)?;
        Ok(Report {
            task_id: digest.map(|d| d.to_string()).unwrap_or_default(),
            bytes: offset,
            elapsed: started.elapsed(),
            from_origin: offset,
            back_source: Some(why),
            digest: actual.to_string(),
            ..Report::default()
        })
    }
}

/// The session's view of a sync answer (validated by the client: every digest is 32
/// bytes). Bitmaps that do not fit the task are dropped, as are parents with a bad address.
fn sync_reply(resp: &SyncResponse, pieces: u32) -> SyncReply {
    let bits = |bytes: &[u8]| Bitmap::from_bytes(pieces, bytes).ok();
    SyncReply {
        failed: (resp.state == TaskState::Failed as i32).then(|| resp.error.clone()),
        digests_from: resp.digests_from,
        digests: resp
            .digests
            .iter()
            .filter_map(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
            .collect(),
        seed_pieces: bits(&resp.seed_pieces).unwrap_or_else(|| Bitmap::new(pieces)),
        parents: resp
            .parents
            .iter()
            .filter_map(|p| {
                Some(Parent {
                    id: PeerId(p.peer_id),
                    addr: p.addr.parse().ok()?,
                    // Announced parents come without a bitmap.
                    pieces: if resp.parents_delta {
                        Bitmap::new(0)
                    } else {
                        bits(&p.pieces)?
                    },
                })
            })
            .collect(),
        readmitted: resp.readmitted,
        stored: resp.stored_pieces,
        delta: resp.parents_delta,
        dropped_parents: resp.dropped_parents.iter().map(|&p| PeerId(p)).collect(),
    }
}

/// One piece transfer, run as its own task.
struct PieceJob {
    task_id: String,
    piece: u32,
    source: Source,
    addr: Option<SocketAddr>,
    range: std::ops::Range<u64>,
    /// The digest from the supernode's syncs, if known; otherwise the answer's vouch.
    expected: Option<[u8; 32]>,
    /// The supernodes' keys, when digests are vouched (empty otherwise).
    verifiers: Arc<[DigestVerifier]>,
    peer_id: u64,
    token: PieceToken,
    timeout: Duration,
    /// Relay the piece to children while it arrives ([`EngineConfig::cut_through`]).
    relay: bool,
}

/// A download's piece token, shared by its piece jobs and replaced by sync answers.
type PieceToken = Arc<parking_lot::RwLock<Vec<u8>>>;

struct PieceOutcome {
    piece: u32,
    source: Source,
    addr: Option<SocketAddr>,
    result: Result<PieceDone, PieceFailure>,
}

/// A piece verified and written.
struct PieceDone {
    /// Its length.
    len: u64,
    /// The digest it was verified against, when it came vouched with the answer (for the
    /// session, which may not have known it).
    vouched: Option<[u8; 32]>,
}

#[derive(Debug, thiserror::Error)]
enum PieceFailure {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("supernode: {0}")]
    Supernode(SupernodeError),
    #[error("bytes do not match the piece digest")]
    Corrupt,
    /// The answer's vouched digest is signed by none of the supernodes this download knows
    /// (forged, for another piece, or by a supernode this peer never registered with).
    #[error(transparent)]
    NotVouched(VouchError),
    /// The answer came without a vouched digest and the digest is not known otherwise.
    #[error("the answer carries no vouched digest")]
    Unvouched,
    #[error("timed out")]
    Timeout,
    #[error("unknown parent address")]
    NoAddr,
    #[error(transparent)]
    Local(IoError),
}

impl PieceFailure {
    fn reason(&self) -> FailReason {
        match self {
            Self::Corrupt => FailReason::Corrupt,
            Self::Unvouched | Self::NotVouched(_) => FailReason::Busy,
            Self::Timeout => FailReason::Timeout,
            Self::Fetch(FetchError::Busy) => FailReason::Busy,
            // A relay lost the piece it was passing on: not its fault, ask elsewhere.
            Self::Fetch(FetchError::Withdrawn) => FailReason::Withdrawn,
            Self::Supernode(e) if e.code() == Some("BUSY") => FailReason::Busy,
            // A parent refusing our token (its secret differs, or ours expired before a sync
            // refreshed it) is not lying: it is avoided for the piece, like one without it.
            Self::Fetch(FetchError::Unauthorized(_)) | Self::NoAddr => FailReason::Unavailable,
            // The parent said it does not hold the piece (or the task): reported, in case it
            // had claimed it.
            Self::Fetch(FetchError::Unavailable) => FailReason::Absent,
            Self::Supernode(e) if e.code() == Some("PIECE_ABSENT") => FailReason::Unavailable,
            // A parent that breaks the protocol is as bad as one that lies.
            Self::Fetch(FetchError::Protocol(_)) => FailReason::Corrupt,
            Self::Fetch(FetchError::Transport { .. } | FetchError::Local { .. })
            | Self::Supernode(_)
            | Self::Local(_) => FailReason::Io,
        }
    }
}

impl PieceJob {
    async fn run(
        self,
        sn: SupernodeClient,
        fetcher: Arc<Fetcher>,
        served: Arc<ServedTask>,
        path: Arc<Path>,
        limiter: Option<Arc<RateLimiter>>,
        received: tokio::sync::mpsc::UnboundedSender<(u32, Source)>,
    ) -> PieceOutcome {
        let (piece, source, addr) = (self.piece, self.source, self.addr);
        let result = self
            .transfer(sn, fetcher, served, path, limiter, received)
            .await;
        PieceOutcome {
            piece,
            source,
            addr,
            result,
        }
    }

    async fn transfer(
        self,
        sn: SupernodeClient,
        fetcher: Arc<Fetcher>,
        served: Arc<ServedTask>,
        path: Arc<Path>,
        limiter: Option<Arc<RateLimiter>>,
        received: tokio::sync::mpsc::UnboundedSender<(u32, Source)>,
    ) -> Result<PieceDone, PieceFailure> {
        let len = self.range.end - self.range.start;
        let offset = self.range.start;
        let piece = self.piece;
        // From a parent or the supernode, the bytes go straight into the file, hashed on
        // the way; the piece is marked held only once the digest matches.
        let sink = PieceSink {
            file: served.shared_file(),
            path,
            offset,
            len,
            relay: self.relay.then(|| crate::relay::Relay {
                task: served.clone(),
                piece,
                parent: match self.source {
                    Source::Peer(p) => Some(p.0),
                    Source::Seed => None,
                },
            }),
        };
        let local = |path, source| PieceFailure::Local(IoError { path, source });
        let token = self.token.read().clone();
        let fetched = match self.source {
            Source::Peer(_) => {
                let addr = self.addr.ok_or(PieceFailure::NoAddr)?;
                let fetch =
                    fetcher.fetch_into(addr, &self.task_id, piece, self.peer_id, &token, sink);
                tokio::time::timeout(self.timeout, fetch)
                    .await
                    .map_err(|_| PieceFailure::Timeout)?
                    .map_err(|e| match e {
                        // Our disk, not the parent: the download fails, as for any local error.
                        FetchError::Local { path, source } => local(path, source),
                        other => PieceFailure::Fetch(other),
                    })?
            }
            Source::Seed => {
                let fetch = sn.piece_into(&self.task_id, piece, self.peer_id, &token, &sink);
                tokio::time::timeout(self.timeout, fetch)
                    .await
                    .map_err(|_| PieceFailure::Timeout)?
                    .map_err(PieceFailure::Supernode)?
                    .map_err(|e| local(sink.path.to_path_buf(), e))?
            }
        };
        // The download limit is charged for bytes received, after the fact: a request the
        // source refused (busy, absent) or that failed moved nothing and costs nothing.
        // Charging before asking made every refusal burn a piece of the budget.
        if let Some(l) = &limiter {
            l.acquire(len).await;
        }
        // The source is done with this piece: it may take our next request (the session
        // still holds the piece until the outcome).
        let _ = received.send((piece, self.source));
        let vouch = accept(
            &self.task_id,
            piece,
            self.expected,
            &self.verifiers,
            &fetched,
        )?;
        served.mark_vouched(piece, vouch);
        Ok(PieceDone {
            len,
            vouched: vouch.map(|v| v.digest.0),
        })
    }
}

/// The vouches a held blob may pass on, piece 0 first: every piece's digest and signature
/// from a sync answer that starts at 0, covers every piece, and whose every signature checks
/// out with `key`; otherwise none (the node then serves its pieces without, as a node that
/// predates vouched digests).
fn held_vouches(
    task_id: &str,
    key: &DigestVerifier,
    resp: &SyncResponse,
    pieces: u32,
) -> Option<Vec<Vouch>> {
    let all: Vec<Vouch> = resp
        .digests
        .iter()
        .zip(&resp.signatures)
        .map_while(|(d, s)| Vouch::from_wire(d, s))
        .collect();
    let whole = resp.digests_from == 0 && all.len() == pieces as usize;
    let checked = (0u32..)
        .zip(&all)
        .all(|(piece, v)| key.check(task_id, piece, v).is_ok());
    (whole && checked).then_some(all)
}

/// Checks a fetched piece: against `expected` (the syncs' digest) if known, else against
/// the digest the answer vouched for, whose signature must be one of the supernodes' this
/// download registered with. Returns the vouch to keep with the piece (passed on to this
/// peer's children): only one whose signature checked out and whose digest the bytes have.
///
/// A vouch that checks out under none of `verifiers` is not proof of a lie: after a
/// supernode was lost, parents pass on vouches of a supernode this peer never registered
/// with. It is ignored when the digest is known; otherwise the piece fails as
/// [`PieceFailure::NotVouched`], which the session treats as an answer without a vouch
/// (digests come from the syncs from then on, and the bytes are checked against those).
fn accept(
    task_id: &str,
    piece: u32,
    expected: Option<[u8; 32]>,
    verifiers: &[DigestVerifier],
    fetched: &crate::fetch::Fetched,
) -> Result<Option<Vouch>, PieceFailure> {
    let vouch = match fetched.vouch {
        // Without a key there is nothing to check a vouch with: it is not kept.
        Some(v) if !verifiers.is_empty() => {
            let checked = verifiers
                .iter()
                .map(|key| key.check(task_id, piece, &v))
                .find(Result::is_ok)
                .unwrap_or_else(|| verifiers[0].check(task_id, piece, &v));
            match checked {
                Ok(()) => Some(v),
                Err(_) if expected.is_some() => None,
                Err(e) => return Err(PieceFailure::NotVouched(e)),
            }
        }
        _ => None,
    };
    let expected = match (expected, vouch) {
        // Both: the supernode signed the digest it stored, so they agree unless it fetched
        // the blob anew; the syncs' digest is the one this download verifies against.
        (Some(d), _) => d,
        (None, Some(v)) => v.digest.0,
        (None, None) => return Err(PieceFailure::Unvouched),
    };
    if fetched.digest.0 != expected {
        return Err(PieceFailure::Corrupt);
    }
    Ok(vouch.filter(|v| v.digest.0 == expected))
}

/// The whole-file digest being computed beside a download ([`output::hash_prefix`]).
type DigestJob = tokio::task::JoinHandle<Result<Digest, IoError>>;

/// How a swarm download's output is known to match its digest.
enum WholeCheck {
    /// Every piece matched the supernode's digests, and the supernode's own copy of the
    /// blob, whose pieces those digests are, matched this digest.
    Vouched(Digest),
    /// The output is being hashed as it arrives.
    Hashing(DigestJob),
}

/// Waits for the whole-file digest and compares it.
async fn check_digest(job: DigestJob, expected: Option<Digest>) -> Result<Digest, DownloadError> {
    let actual = job
        .await
        .map_err(|e| DownloadError::Setup(e.to_string()))??;
    match expected {
        Some(expected) if expected != actual => {
            Err(DownloadError::DigestMismatch { expected, actual })
        }
        _ => Ok(actual),
    }
}

fn refusal(e: SupernodeError) -> DownloadError {
    match e {
        SupernodeError::Refused(r) if r.code == "ORIGIN_STATUS" => DownloadError::Origin {
            status: r.origin_status as u16,
            message: strip_prefix(&r.message),
        },
        SupernodeError::Refused(r) if r.code == "DENIED" => DownloadError::Denied {
            status: r.origin_status as u16,
            message: r.message,
        },
        SupernodeError::Refused(r) if r.code == "ORIGIN_UNREACHABLE" => {
            DownloadError::NoRoute(r.message)
        }
        other => DownloadError::Supernode(other),
    }
}

/// The supernode's message repeats "origin answered <status>:"; keep the reason only.
fn strip_prefix(message: &str) -> String {
    match message.split_once(": ") {
        Some((head, rest)) if head.starts_with("origin answered") => rest.to_owned(),
        _ => message.to_owned(),
    }
}

fn origin_error(e: OriginError) -> DownloadError {
    match (&e, e.last()) {
        (OriginError::GaveUp { attempts, .. }, OriginError::Status { status, message }) => {
            DownloadError::Origin {
                status: status.as_u16(),
                message: format!("{message} (gave up after {attempts} attempts)"),
            }
        }
        (_, OriginError::Status { status, message }) => DownloadError::Origin {
            status: status.as_u16(),
            message: message.clone(),
        },
        _ => DownloadError::NoRoute(e.to_string()),
    }
}

/// Binds the piece server's TCP listener and QUIC endpoint on one port number: `addr`'s, or
/// with port 0 a free TCP port whose UDP twin is also free (a few tries).
fn bind_peer_port(
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, quinn::Endpoint), DownloadError> {
    let setup = |e: &dyn std::fmt::Display| DownloadError::Setup(e.to_string());
    let tries = if addr.port() == 0 { 8 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let listener =
            tcp::listener(addr).map_err(|e| setup(&format!("binding TCP {addr}: {e}")))?;
        let port = listener.local_addr().map_err(|e| setup(&e))?.port();
        match quic::endpoint(SocketAddr::new(addr.ip(), port)) {
            Ok(endpoint) => return Ok((listener, endpoint)),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => setup(&e),
        None => setup(&"no port"),
    })
}

/// The supernodes a URL's peers try, its home first (see [`damselfly_common::placement`]).
fn supernode_order(url: &str, supernodes: &[SupernodeClient]) -> Vec<usize> {
    let key = damselfly_oci::blob_digest(url).unwrap_or_else(|| Digest::of(url.as_bytes()));
    let addrs: Vec<&str> = supernodes.iter().map(SupernodeClient::addr).collect();
    damselfly_common::placement::order(&key, &addrs)
}

/// The local IP that routes to the supernode (no packet is sent), else loopback.
async fn route_ip(supernode: Option<&str>) -> IpAddr {
    let fallback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let Some(sn) = supernode else { return fallback };
    let Ok(mut addrs) = tokio::net::lookup_host(sn).await else {
        return fallback;
    };
    let Some(target) = addrs.next() else {
        return fallback;
    };
    let bind = if target.is_ipv6() {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    };
    let Ok(sock) = std::net::UdpSocket::bind(bind) else {
        return fallback;
    };
    if sock.connect(target).is_err() {
        return fallback;
    }
    sock.local_addr().map_or(fallback, |a| a.ip())
}

#[cfg(test)]
mod tests {
    use damselfly_common::vouch::DigestSigner;

    use super::*;
    use crate::fetch::Fetched;

    /// What a child does with each kind of answer: a piece vouched for by the supernode is
    /// taken on its word alone; a forged, replayed or missing vouch, or bytes that are not
    /// what the vouch says, are not.
    #[test]
    fn a_piece_is_accepted_only_against_a_digest_the_supernode_vouched_for() {
        let signer = DigestSigner::generate().unwrap();
        let key = DigestVerifier::new(&signer.public_key()).unwrap();
        let keys = std::slice::from_ref(&key);
        let good = Digest::of(b"piece 3");
        let bad = Digest::of(b"something else");
        let v = signer.vouch("sha256:t", 3, good);
        let answer = |digest, vouch| Fetched {
            digest,
            vouch,
            arrival: None,
        };

        // Vouched, right bytes: accepted, and the vouch is kept for this peer's children.
        let kept = accept("sha256:t", 3, None, keys, &answer(good, Some(v))).unwrap();
        assert_eq!(kept, Some(v));
        // Vouched, wrong bytes: corrupt.
        assert!(matches!(
            accept("sha256:t", 3, None, keys, &answer(bad, Some(v))),
            Err(PieceFailure::Corrupt)
        ));
        // A liar vouching for its own bytes with a made-up signature.
        let mut forged = signer.vouch("sha256:t", 3, bad);
        forged.signature[0] ^= 1;
        let e = accept("sha256:t", 3, None, keys, &answer(bad, Some(forged)));
        assert!(matches!(e, Err(PieceFailure::NotVouched(_))));
        // Not a ban: a vouch this peer cannot check may be another supernode's (after a
        // takeover). The session takes digests from the syncs from then on, and the bytes
        // then fail against those (below: `Corrupt` with the digest known).
        assert_eq!(e.err().map(|e| e.reason()), Some(FailReason::Busy));
        // Another key's signature, or this key's for another piece, do not check out either.
        let other = DigestSigner::generate().unwrap().vouch("sha256:t", 3, bad);
        let replayed = signer.vouch("sha256:t", 4, bad);
        for v in [other, replayed] {
            assert!(matches!(
                accept("sha256:t", 3, None, keys, &answer(bad, Some(v))),
                Err(PieceFailure::NotVouched(_))
            ));
        }
        // No vouch and no digest from the syncs: nothing to verify against.
        let e = accept("sha256:t", 3, None, keys, &answer(good, None));
        assert!(matches!(e, Err(PieceFailure::Unvouched)));
        // A peer that registered with two supernodes (one took over from the other) takes
        // either one's vouch.
        let other_signer = DigestSigner::generate().unwrap();
        let both = [
            key.clone(),
            DigestVerifier::new(&other_signer.public_key()).unwrap(),
        ];
        let theirs = other_signer.vouch("sha256:t", 3, good);
        assert_eq!(
            accept("sha256:t", 3, None, &both, &answer(good, Some(theirs))).unwrap(),
            Some(theirs)
        );
        // With the digest known from the syncs, a vouch that does not check out is dropped
        // and the bytes decide.
        assert_eq!(
            accept(
                "sha256:t",
                3,
                Some(good.0),
                keys,
                &answer(good, Some(forged))
            )
            .unwrap(),
            None
        );
        // The syncs' digest rules when known; a vouch without the key is not kept.
        assert_eq!(
            accept("sha256:t", 3, Some(good.0), &[], &answer(good, Some(v))).unwrap(),
            None
        );
        assert!(matches!(
            accept("sha256:t", 3, Some(good.0), keys, &answer(bad, None)),
            Err(PieceFailure::Corrupt)
        ));
    }
}
