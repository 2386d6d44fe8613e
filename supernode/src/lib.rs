//! The supernode: the cluster's seed and tracker.
//!
//! ```text
//!            register/sync/leave (protobuf over HTTP)
//!   peers ─────────────────────────────────────────▶ api ──▶ tasks (single-flight) ──▶ cdn fetch ──▶ origin
//!     ▲                                               │           │                     │
//!     └──── piece bytes (HTTP GET, upload slots) ◀────┘     TaskScheduler (swarm)     store (files + RocksDB)
//! ```
//!
//! * [`tasks`] finds or creates a task per blob: the first registration starts one streaming
//!   origin fetch with the requester's headers; concurrent registrations share it; a restarted
//!   supernode reloads cached blobs from the [`damselfly_store::Store`]. A requester is handed a
//!   blob someone else fetched only if the origin would serve it (a cached HEAD check).
//! * [`cdn`] cuts the origin stream into pieces, stores each and publishes its sha256 the moment
//!   it is on disk; an OCI blob must hash to its digest or the task fails and its data is dropped.
//! * Each task's [`damselfly_swarm::TaskScheduler`] (pure logic, shared with the simulator)
//!   knows which peer holds which piece and hands out parents.
//! * [`hot`] keeps the pieces just stored in memory (served without a disk read or a second
//!   hash); [`repair`] fetches again, with `Range`, a piece found corrupt on disk.
//! * [`preheat`] runs Harbor preheat jobs (both API generations) and remembers the nodes
//!   (dfdaemons) that announce themselves, for `all_peers` jobs.
//! * [`api`] is the HTTP surface; [`App`] binds it and runs the maintenance loop (peer expiry,
//!   cache GC, idle-task sweep, gauges).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod cdn;
pub mod config;
pub mod hot;
pub mod metrics;
pub mod preheat;
pub mod repair;
pub mod takeover;
pub mod task;
pub mod tasks;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use damselfly_common::{RateLimiter, server};
use damselfly_oci::{Origin, OriginConfig};
use damselfly_store::{Store, StoreConfig};
use damselfly_swarm::SchedEvent;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

pub use config::Config;
use metrics::Metrics;

/// State shared by handlers, fetches and the maintenance loop.
#[derive(Debug)]
pub struct Shared {
    /// The effective config.
    pub config: Config,
    /// The piece store.
    pub store: Arc<Store>,
    /// The origin client.
    pub origin: Origin,
    /// Tasks in memory.
    pub tasks: tasks::Tasks,
    /// Metrics.
    pub metrics: Metrics,
    /// The registry the metrics live in.
    pub registry: Registry,
    /// Concurrent piece uploads to peers.
    pub upload_slots: Arc<Semaphore>,
    /// Origin fetches that may still start (`cdn.max_fetches`).
    pub fetch_slots: Arc<Semaphore>,
    /// Upload bandwidth limit, if any.
    pub upload_limiter: Option<RateLimiter>,
    /// Background work (origin fetches) to wait for at shutdown.
    pub tracker: TaskTracker,
    /// Harbor preheat jobs.
    pub jobs: preheat::Jobs,
    /// The cluster secret's piece-token key (`cluster.secret_file`); `None`: tokens are
    /// neither issued nor checked.
    pub piece_tokens: Option<damselfly_common::TokenKey>,
    /// The cluster secret's control-plane key: control requests must be signed with it, and
    /// this supernode signs its own (seeds, node preheats). `None`: the control plane is open.
    pub control: Option<damselfly_common::ControlKey>,
    /// Issues and checks peers' session tokens: the cluster secret's, else this process's
    /// own random key.
    pub sessions: damselfly_common::SessionKey,
    /// Networks allowed to use preheat generation 1 (`preheat.v1_sources`); empty: it is off.
    pub v1_sources: Vec<ipnet::IpNet>,
    /// Signs piece digests (`cluster.vouch_digests`); `None`: digests go in sync answers.
    pub signer: Option<damselfly_common::vouch::DigestSigner>,
    /// Registries besides a blob's own that may admit a requester to it (`access.allow`).
    pub access_allow: damselfly_common::allow::AllowList,
    /// Nodes (dfdaemons) that announced themselves, by hostname.
    pub nodes: parking_lot::Mutex<std::collections::HashMap<String, preheat::Node>>,
    /// Pieces just stored, served from memory (`cdn.hot_pieces_memory`).
    pub hot: Arc<hot::HotPieces>,
}

/// A bound, ready-to-run supernode.
#[derive(Debug)]
pub struct App {
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl App {
    /// Opens the store and binds the API listener.
    ///
    /// # Errors
    /// The store cannot be opened or the address cannot be bound.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let store_config = StoreConfig {
            dir: config.data_dir.clone(),
            capacity: config.storage.capacity.as_u64(),
            high_watermark: config.storage.high_watermark,
            low_watermark: config.storage.low_watermark,
            min_free: config.storage.min_free.as_u64(),
            // A fetch cut short by a crash resumes after the pieces it had stored.
            keep_partial: true,
        };
        let store = tokio::task::spawn_blocking(move || Store::open(store_config))
            .await?
            .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let origin = Origin::new(&OriginConfig {
            connect_timeout: config.origin.connect_timeout,
            read_timeout: config.origin.read_timeout,
            ca_files: config.origin.ca_files.clone(),
            retry: config.origin.retry.clone(),
            observer: Some(Arc::new(metrics.clone())),
            addresses: damselfly_oci::guard::AddressPolicy {
                allow_loopback: config.origin.allow_loopback,
            },
            forward_headers: Some(config.origin.forward_headers.clone()),
            ..OriginConfig::default()
        })
        .context("building the origin client")?;
        let jobs_dir = config.data_dir.join("preheat");
        let jobs = tokio::task::spawn_blocking(move || preheat::Jobs::open(&jobs_dir))
            .await?
            .context("opening the preheat job table")?;
        let piece_tokens = config
            .cluster
            .token_key()
            .context("loading cluster.secret_file")?;
        let control = config
            .cluster
            .control_key()
            .context("loading cluster.secret_file")?;
        let sessions = damselfly_common::SessionKey::from_setting(&config.cluster.secret_file)
            .context("loading cluster.secret_file")?;
        if piece_tokens.is_none() {
            warn!(
                "cluster.secret_file is not set: piece tokens are off and the control plane \
                 is open, so any host that reaches a peer's piece port (or this API) may \
                 download the blobs it holds, private ones included, and register, seed or \
                 announce (docs/security.md)"
            );
        }
        // Validated with the config.
        let v1_sources = config
            .preheat
            .v1_sources
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        let signer = {
            let cluster = config.cluster.clone();
            let dir = config.data_dir.clone();
            tokio::task::spawn_blocking(move || cluster.digest_signer(&dir))
                .await?
                .context("loading the digest signing key (cluster.signing_key_file)")?
        };
        if let Some(s) = &signer {
            info!(public_key = %hex::encode(s.public_key()), "vouching for piece digests");
        }
        let listener = damselfly_common::listen::tcp_listener_or_v4(config.listen, "the API")
            .with_context(|| format!("binding the API on {}", config.listen))?;
        let addr = listener.local_addr()?;
        metrics.cache_bytes.set(store.used_bytes() as i64);
        let rate = config.cdn.upload_rate.as_u64();
        // Validated with the config; a list that does not parse allows nothing.
        let access_allow =
            damselfly_common::allow::AllowList::parse(&config.access.allow).unwrap_or_default();
        let hot = Arc::new(hot::HotPieces::new(config.cdn.hot_pieces_memory.as_u64()));
        let shared = Arc::new(Shared {
            upload_slots: Arc::new(Semaphore::new(config.cdn.upload_slots as usize)),
            fetch_slots: Arc::new(Semaphore::new(config.cdn.max_fetches as usize)),
            upload_limiter: (rate > 0).then(|| RateLimiter::new(rate)),
            config,
            store: Arc::new(store),
            origin,
            tasks: tasks::Tasks::default(),
            access_allow,
            piece_tokens,
            control,
            sessions,
            v1_sources,
            signer,
            metrics,
            registry,
            tracker: TaskTracker::new(),
            jobs,
            nodes: parking_lot::Mutex::new(std::collections::HashMap::new()),
            hot,
        });
        shared.metrics.preheat_states(&shared.jobs.counts());
        Ok(Self {
            shared,
            listener,
            addr,
        })
    }

    /// The bound API address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled, then drains within the configured grace (open
    /// connections, then origin fetches).
    ///
    /// # Errors
    /// None at present: accept errors are logged and the listener goes on.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let shared = self.shared;
        let grace = shared.config.shutdown_grace;
        let maintenance = tokio::spawn(maintain(shared.clone(), shutdown.clone()));
        let router = api::router(shared.clone());
        let stop = shutdown.clone();
        let signal = async move { stop.cancelled().await };
        server::serve(self.listener, router, &shared.config.http, grace, signal).await;
        shutdown.cancel();
        maintenance.abort();
        shared.tracker.close();
        if tokio::time::timeout(grace, shared.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                ?grace,
                "origin fetches still running at the end of the grace period"
            );
        }
        if let Err(e) = shared.store.flush() {
            warn!(error = %e, "flushing the store at shutdown failed");
        }
        info!("supernode stopped");
        Ok(())
    }
}

/// Peer expiry, idle-task sweep, cache GC and gauges.
async fn maintain(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_gc = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = tokio::time::Instant::now().into_std();
        let mut peers = 0usize;
        let all = shared.tasks.all();
        for task in &all {
            let mut sched = task.sched.lock();
            sched.handle_timeout(now);
            while let Some(event) = sched.poll_event() {
                match event {
                    SchedEvent::PeerExpired(p) => {
                        debug!(task = %task.id(), peer = %p, "peer expired")
                    }
                    SchedEvent::PeerBanned(p) => {
                        warn!(task = %task.id(), peer = %p, "peer banned for serving corrupt pieces");
                        shared.metrics.banned_peers.inc();
                    }
                    SchedEvent::PeerDemoted(p) => {
                        warn!(task = %task.id(), peer = %p, "peer demoted: it did not serve pieces it claimed");
                        shared.metrics.demoted_peers.inc();
                    }
                }
            }
            peers += sched.peer_count();
        }
        shared.metrics.tasks.set(all.len() as i64);
        shared.metrics.peers.set(peers as i64);
        tasks::sweep(&shared.tasks, now, Duration::from_secs(600));

        if last_gc.elapsed() >= shared.config.storage.gc_interval {
            last_gc = tokio::time::Instant::now();
            gc(&shared).await;
        }
    }
}

/// Tasks GC must not evict: fetching, or with live peers.
fn in_use(shared: &Shared) -> std::collections::HashSet<String> {
    shared
        .tasks
        .all()
        .into_iter()
        .filter(|t| t.fetching() || t.sched.lock().peer_count() > 0)
        .map(|t| t.id().to_owned())
        .collect()
}

/// Forgets the tasks GC (or an admission) evicted and counts them.
fn evicted(shared: &Shared, report: &damselfly_store::GcReport) {
    for id in &report.removed {
        if let Some(t) = shared.tasks.get(id) {
            shared.tasks.forget(&t);
        }
    }
    shared
        .metrics
        .gc_evictions
        .inc_by(report.removed.len() as u64);
}

async fn gc(shared: &Arc<Shared>) {
    let in_use = in_use(shared);
    let store = shared.store.clone();
    let report = tokio::task::spawn_blocking(move || store.gc(&|id| in_use.contains(id))).await;
    match report {
        Ok(Ok(r)) => {
            if !r.removed.is_empty() {
                info!(evicted = r.removed.len(), freed = r.freed_bytes, "cache GC");
            }
            evicted(shared, &r);
        }
        Ok(Err(e)) => {
            shared.metrics.storage_failure(&e);
            warn!(error = %e, "cache GC failed");
        }
        Err(e) => warn!(error = %e, "cache GC worker failed"),
    }
    shared
        .metrics
        .cache_bytes
        .set(shared.store.used_bytes() as i64);
}
