//! The mirror: routing, the blob path through the P2P engine and the node cache, and the
//! pass-through for everything else.

use std::{collections::HashMap, net::SocketAddr, ops::Range, sync::Arc, time::Instant};

use anyhow::Context as _;
use axum::{
    Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header},
    response::IntoResponse,
    routing::{get, post},
};
use damselfly_common::{Digest, control, server};
use damselfly_store::{Fault, Reservation, StoreConfig};
use dfget::{DownloadError, DownloadRequest, Engine, EngineConfig, Progress};
use futures::StreamExt;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use crate::{
    Config,
    access::{AccessPolicy, Decision},
    announce::{Announcer, NodeAnnouncement},
    cache::{CacheError, CachedBlob, NodeCache},
    flight::{self, Failure, Flight, FlightState},
    metrics::{Metrics, Source},
    prefetch,
    preheat::{self, PreheatError, PreheatResponse, PreheatSource},
    provenance::{self, Explanation, Ledger, Provenance, SOURCE_HEADER},
    proxy::{self, oci_error},
    range::ByteRange,
    readahead::{self, read_ahead},
    upstream::{self, Kind, REGISTRY_HEADER, Route},
};

/// A running dfdaemon: the mirror's listener, the engine and the cache.
pub struct App {
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
}

struct AppState {
    config: Config,
    engine: Engine,
    cache: NodeCache,
    upstreams: Upstreams,
    /// Which registries may approve a requester for a blob this node holds.
    policy: AccessPolicy,
    flights: Mutex<HashMap<Digest, Arc<Flight>>>,
    /// Credential checks that passed: key → when they expire.
    access: Mutex<HashMap<[u8; 32], Instant>>,
    /// Blob digest → the swarm task it was downloaded as (to leave it on eviction).
    tasks: Mutex<HashMap<String, String>>,
    /// How each cached blob was fetched.
    ledger: Arc<Ledger>,
    metrics: Metrics,
    registry: Registry,
    /// Running downloads, waited for at shutdown so finished ones reach the cache.
    downloads: TaskTracker,
    /// Cancelled when the mirror starts shutting down, so long waits (preheats) end.
    stopping: CancellationToken,
}

/// A reqwest client per configured registry plus one for all others.
struct Upstreams {
    default: reqwest::Client,
    per_registry: HashMap<String, reqwest::Client>,
}

impl Upstreams {
    fn new(config: &Config) -> anyhow::Result<Self> {
        let build = |r: Option<&crate::config::RegistryConfig>| -> anyhow::Result<reqwest::Client> {
            let b = reqwest::Client::builder()
                .connect_timeout(config.upstream.connect_timeout)
                .read_timeout(config.upstream.read_timeout)
                .user_agent(concat!("damselfly-dfdaemon/", env!("CARGO_PKG_VERSION")));
            // Every resolved address and redirect target is checked; a registry named by
            // address is checked per request (`AccessPolicy::decide`).
            let mut b = config.origin_addresses().apply(b, 10);
            if let Some(r) = r {
                if let Some(ca) = &r.ca_file {
                    for cert in damselfly_oci::load_ca_file(ca)? {
                        b = b.add_root_certificate(cert);
                    }
                }
                if r.skip_verify {
                    b = b.danger_accept_invalid_certs(true);
                }
            }
            b.build().context("building the registry client")
        };
        let mut per_registry = HashMap::new();
        for r in &config.registries {
            per_registry.insert(r.host.clone(), build(Some(r))?);
        }
        Ok(Self {
            default: build(None)?,
            per_registry,
        })
    }
}

impl AppState {
    /// Whether manifests start their layers' downloads (`p2p.prefetch_layers`, and a swarm
    /// to fetch them through).
    fn prefetching(&self) -> bool {
        self.config.p2p.prefetch_layers && !self.config.supernodes.is_empty()
    }

    /// Base URL and client for a route's registry.
    fn upstream(&self, route: &Route) -> (String, &reqwest::Client) {
        match &route.registry {
            None => (
                upstream::parse_base(&self.config.default_upstream)
                    .unwrap_or_else(|| self.config.default_upstream.clone()),
                &self.upstreams.default,
            ),
            Some(host) => {
                let rc = self.config.registry(host);
                let base = upstream::base_url(
                    host,
                    rc.and_then(|r| r.endpoint.as_deref()),
                    rc.is_some_and(|r| r.plain_http),
                );
                let client = self
                    .upstreams
                    .per_registry
                    .get(host)
                    .unwrap_or(&self.upstreams.default);
                (base, client)
            }
        }
    }
}

impl App {
    /// Opens the cache, starts the engine and binds the mirror.
    ///
    /// # Errors
    /// A port is taken, the data directory is unusable, or a CA file cannot be read.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let cache = NodeCache::open(StoreConfig {
            dir: config.data_dir.clone(),
            capacity: config.cache.capacity.as_u64(),
            high_watermark: config.cache.high_watermark,
            low_watermark: config.cache.low_watermark,
            min_free: config.cache.min_free.as_u64(),
            // The node cache imports whole verified files; nothing to resume.
            keep_partial: false,
        })
        .with_context(|| format!("opening the node cache in {}", config.data_dir.display()))?;
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let token_key = config
            .cluster
            .token_key()
            .context("loading cluster.secret_file")?;
        let control_key = config
            .cluster
            .control_key()
            .context("loading cluster.secret_file")?;
        if token_key.is_none() {
            warn!(
                "cluster.secret_file is not set: piece tokens are not checked, so any host \
                 that reaches the peer port may download every blob this node holds, \
                 private ones included, and /api/v1/preheat is open (docs/security.md)"
            );
        }
        let engine = Engine::start(EngineConfig {
            token_key,
            control_key: control_key.clone(),
            refusals: Some(Arc::new(metrics.clone())),
            supernodes: config.supernodes.clone(),
            peer_listen: Some(config.peer_listen),
            advertise_ip: config.advertise_ip,
            back_source: config.back_source,
            download_rate: config.p2p.download_rate.as_u64(),
            upload_rate: config.p2p.upload_rate.as_u64(),
            upload_slots: config.p2p.upload_slots,
            upload_queue: config.p2p.upload_queue,
            sendfile: config.p2p.sendfile,
            check_whole_file: config.p2p.check_whole_file,
            announcements: config.p2p.announcements,
            vouched_digests: config.p2p.vouched_digests,
            cut_through: config.p2p.cut_through,
            transport: config.p2p.transport,
            piece_timeout: config.p2p.piece_timeout,
            supernode_connect_timeout: config.p2p.supernode_connect_timeout,
            supernode_timeout: config.p2p.supernode_timeout,
            // Back to source reaches the same registries as the mirror: trust their CAs too.
            origin: damselfly_oci::OriginConfig {
                connect_timeout: config.upstream.connect_timeout,
                read_timeout: config.upstream.read_timeout,
                retry: config.upstream.retry.clone(),
                observer: Some(Arc::new(metrics.origin_failures.clone())),
                ca_files: config
                    .registries
                    .iter()
                    .filter_map(|r| r.ca_file.clone())
                    .collect(),
                addresses: config.origin_addresses(),
                ..damselfly_oci::OriginConfig::default()
            },
            ..EngineConfig::default()
        })
        .await
        .context("starting the peer engine")?;
        registry.register_collector(Box::new(crate::metrics::PeerServerCollector(
            engine.piece_server(),
        )));
        let listener = damselfly_common::listen::tcp_listener_or_v4(config.listen, "the mirror")
            .with_context(|| format!("binding the mirror to {}", config.listen))?;
        metrics.cache_bytes.set(cache.used_bytes() as i64);
        let ledger_dir = config.data_dir.join("provenance");
        let ledger = Ledger::open(&ledger_dir)
            .with_context(|| format!("opening {}", ledger_dir.display()))?;
        match cache.held() {
            Ok(held) => ledger.retain(&held.iter().map(|(d, ..)| *d).collect::<Vec<_>>()),
            Err(e) => warn!(error = %e, "cannot list the node cache to prune provenance records"),
        }
        let upstreams = Upstreams::new(&config)?;
        let policy = AccessPolicy::new(&config);
        Ok(Self {
            state: Arc::new(AppState {
                config,
                engine,
                cache,
                upstreams,
                policy,
                flights: Mutex::new(HashMap::new()),
                access: Mutex::new(HashMap::new()),
                tasks: Mutex::new(HashMap::new()),
                ledger: Arc::new(ledger),
                metrics,
                registry,
                downloads: TaskTracker::new(),
                stopping: CancellationToken::new(),
            }),
            listener,
        })
    }

    /// The mirror's address.
    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.state.config.listen)
    }

    /// The piece server's address as advertised to peers.
    pub fn peer_addr(&self) -> SocketAddr {
        self.state.engine.peer_addr()
    }

    /// Serves until `shutdown` is cancelled, then drains (each step within
    /// `shutdown_grace`: open connections, running downloads, leaving the swarms).
    ///
    /// # Errors
    /// The supernode addresses cannot be used for announcing this node.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let state = self.state.clone();
        let node = NodeAnnouncement::new(
            state.config.node_name(),
            self.peer_addr(),
            self.addr().port(),
        );
        let announcer = Announcer::new(
            &state.config.supernodes,
            node,
            state.config.cluster.control_key()?,
        )?;
        let announce =
            tokio::spawn(announcer.run(state.config.p2p.keepalive_interval, shutdown.clone()));
        let background = tokio::spawn(maintain(state.clone(), shutdown.clone()));
        let rejoin = tokio::spawn(rejoin_swarms(state.clone()));
        let router = Router::new()
            .route("/healthy", get(|| async { "ok" }))
            .route("/metrics", get(metrics))
            .route("/api/v1/blobs/{digest}", get(explain))
            .route(
                "/api/v1/preheat",
                // With a cluster secret, only the supernodes (which sign) may preheat.
                post(preheat)
                    .layer(DefaultBodyLimit::max(preheat::BODY_LIMIT))
                    .layer(axum::middleware::from_fn_with_state(
                        control::Guard {
                            key: state.config.cluster.control_key()?,
                            max_skew: state.config.cluster.max_clock_skew,
                            max_body: preheat::BODY_LIMIT,
                            enforce: true,
                            refuse: Arc::new(PreheatRefusal(state.metrics.clone())),
                        },
                        control::require_signature,
                    )),
            )
            .fallback(handle)
            .with_state(state.clone());
        let grace = state.config.shutdown_grace;
        let token = shutdown.clone();
        let stopping = state.stopping.clone();
        let signal = async move {
            token.cancelled().await;
            stopping.cancel();
        };
        server::serve(self.listener, router, &state.config.http, grace, signal).await;
        background.abort();
        announce.abort();
        rejoin.abort();
        state.downloads.close();
        if tokio::time::timeout(grace, state.downloads.wait())
            .await
            .is_err()
        {
            warn!("blob downloads still running at shutdown; they start over next time");
        }
        state.cache.flush();
        // Handlers of connections the graceful shutdown gave up on may still hold the state;
        // leaving the swarms must not depend on them being gone.
        state.engine.shutdown(grace).await;
        info!("dfdaemon stopped");
        Ok(())
    }
}

/// Refusals of unsigned preheat requests: the preheat API's JSON error, counted.
struct PreheatRefusal(Metrics);

impl control::Refuse for PreheatRefusal {
    fn answer(&self, e: &control::ControlAuthError, status: StatusCode) -> Response<Body> {
        // Answered here, not by the handler: counted as the handler counts its answers.
        self.0.request("preheat", status.as_u16());
        (
            status,
            axum::Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response()
    }

    fn refused(&self) {
        self.0.access_refusal("control_credential");
    }
}

/// Offers every blob in the node cache to its swarm again after a (re)start, so peers can
/// fetch it from this node as before: one holder registration per blob, in turn, in the
/// background. Blobs the supernode no longer has, or private ones (the cache keeps no
/// credentials), are served locally only.
async fn rejoin_swarms(state: Arc<AppState>) {
    let held = match state.cache.held() {
        Ok(h) => h,
        Err(e) => {
            warn!(error = %e, "cannot list the node cache; cached blobs are not offered to peers");
            return;
        }
    };
    if held.is_empty() || state.config.supernodes.is_empty() {
        return;
    }
    let (mut joined, total) = (0usize, held.len());
    for (digest, url, path) in held {
        match state.engine.serve_held(&url, digest, &path).await {
            Ok(Some(task)) => {
                joined += 1;
                state.tasks.lock().insert(digest.to_string(), task);
            }
            Ok(None) => {}
            Err(e) => warn!(%digest, error = %e, "cannot offer a cached blob to peers"),
        }
    }
    info!(
        joined,
        cached = total,
        "offered cached blobs to their swarms (the others are not known to the supernode)"
    );
}

/// Keepalives to the supernode and cache GC.
async fn maintain(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut keepalive = tokio::time::interval(state.config.p2p.keepalive_interval);
    let mut gc = tokio::time::interval(state.config.cache.gc_interval);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = keepalive.tick() => state.engine.keepalive().await,
            _ = gc.tick() => {
                let in_use = blobs_in_flight(&state);
                match state.cache.gc(in_use).await {
                    Ok(evicted) => forget_evicted(&state, evicted),
                    Err(e) => {
                        state.metrics.error("cache_gc");
                        count_storage_failure(&state.metrics, &e);
                        warn!(error = %e, "cache GC failed");
                    }
                }
                state.metrics.cache_bytes.set(state.cache.used_bytes() as i64);
            }
        }
    }
}

/// The digests of blobs being downloaded now: the node cache must not evict them.
fn blobs_in_flight(state: &AppState) -> Vec<String> {
    state
        .flights
        .lock()
        .keys()
        .map(ToString::to_string)
        .collect()
}

/// Counts evicted blobs and leaves their swarms (in the background: the caller may be
/// synchronous).
fn forget_evicted(state: &Arc<AppState>, evicted: Vec<String>) {
    for digest in evicted {
        state.metrics.evictions.inc();
        if let Ok(d) = digest.parse::<Digest>() {
            state.ledger.forget(&d);
        }
        let task = state.tasks.lock().remove(&digest);
        if let Some(task) = task {
            let state = state.clone();
            tokio::spawn(async move { state.engine.forget(&task).await });
        }
    }
    state
        .metrics
        .cache_bytes
        .set(state.cache.used_bytes() as i64);
}

/// Counts a cache error under its storage fault, if it is one.
fn count_storage_failure(metrics: &Metrics, e: &CacheError) {
    if let CacheError::Store(s) = e {
        metrics.storage_failures.record_error(s);
    }
}

/// What a download reports to: the flight its readers follow, and the space reserved for it
/// in the node cache once its length is known ([`Progress::admit`]), held until the download
/// and its adoption have ended.
struct Receiving {
    state: Arc<AppState>,
    digest: Digest,
    flight: Arc<Flight>,
    space: Mutex<Option<Reservation>>,
}

impl Progress for Receiving {
    fn set_total(&self, bytes: u64) {
        self.flight.set_total(bytes);
    }

    fn advance(&self, bytes: u64) {
        self.flight.advance(bytes);
    }

    fn admit(&self, total: u64) -> Result<(), String> {
        // Starting over (back to the origin after the swarm failed): the old file is gone.
        drop(self.space.lock().take());
        let in_use = blobs_in_flight(&self.state);
        // The engine serves a downloaded blob to peers from its own handle on the file:
        // closed at once on eviction, so the blocks are freed for this blob.
        let stop_serving = |digest: &str| {
            let task = self.state.tasks.lock().get(digest).cloned();
            if let Some(task) = task {
                self.state.engine.stop_serving(&task);
            }
        };
        match self.state.cache.reserve(total, &in_use, &stop_serving) {
            Ok((reservation, evicted)) => {
                *self.space.lock() = Some(reservation);
                if !evicted.is_empty() {
                    info!(digest = %self.digest, bytes = total, evicted = evicted.len(), "evicted cached blobs to make room");
                }
                forget_evicted(&self.state, evicted);
                Ok(())
            }
            Err(e) => {
                count_storage_failure(&self.state.metrics, &e);
                warn!(digest = %self.digest, bytes = total, error = %e, "no room for the blob in the node cache; refusing it");
                Err(e.to_string())
            }
        }
    }

    fn via(&self, via: &dfget::Via) {
        self.flight.via(via);
    }

    fn started(&self, file: &Arc<std::fs::File>, total: u64) {
        self.flight.started(file, total);
    }

    fn written(&self, range: Range<u64>) {
        self.flight.written(range);
    }

    fn take_urgent(&self) -> Vec<Range<u64>> {
        self.flight.take_urgent()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &state.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Response<Body> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let header = parts
        .headers
        .get(REGISTRY_HEADER)
        .and_then(|v| v.to_str().ok());
    let route = match upstream::route(parts.uri.path(), parts.uri.query(), header) {
        Ok(r) => r,
        Err(e) => {
            let status = if matches!(e, upstream::RouteError::NotRegistryApi(_)) {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::BAD_REQUEST
            };
            state.metrics.request("invalid", status.as_u16());
            debug!(path = %parts.uri.path(), error = %e, "request refused: cannot route it");
            return oci_error(status, e.code(), &e.to_string());
        }
    };
    let kind = route.kind.label();
    let decision = state.policy.decide(&route, &state.upstream(&route).0);
    let resp = match (decision, &route.kind, &parts.method) {
        (Decision::Forbidden(why), ..) => refuse_forbidden(&state, &route, why),
        (Decision::Refuse, ..) => refuse_unlisted(&state, &route),
        (Decision::Listed, Kind::Blob { repo, digest }, &Method::GET) => {
            let (repo, digest) = (repo.clone(), *digest);
            serve_blob(&state, &route, &repo, digest, &parts.headers).await
        }
        (Decision::Listed, Kind::Manifest { repo }, &Method::GET) if state.prefetching() => {
            let repo = repo.clone();
            manifest_prefetching(&state, &route, &repo, &parts.headers).await
        }
        (_, Kind::Blob { digest, .. }, &Method::GET) => {
            // A registry the operator did not list cannot vouch for bytes this node holds:
            // the requester gets whatever that registry itself answers, nothing from here.
            state.metrics.access_refusal("unlisted_proxied");
            debug!(
                %digest,
                registry = route.registry.as_deref().unwrap_or_default(),
                "blob of a registry not on the allow list: passed through, not served from this node"
            );
            pass_through(&state, &route, parts.method.clone(), &parts.headers, body).await
        }
        (_, Kind::Base, _) if route.registry.is_none() => {
            mirror_ping(&state, &route, parts.method.clone(), &parts.headers).await
        }
        _ => pass_through(&state, &route, parts.method.clone(), &parts.headers, body).await,
    };
    state.metrics.request(kind, resp.status().as_u16());
    debug!(
        method = %parts.method,
        path = %parts.uri.path(),
        registry = route.registry.as_deref().unwrap_or("<default>"),
        by = ?route.selected_by,
        status = resp.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    resp
}

/// A request naming a registry at an address this node never fetches from (metadata,
/// link-local, loopback unless configured): no request leaves the node.
fn refuse_forbidden(
    state: &AppState,
    route: &Route,
    why: damselfly_oci::guard::ForbiddenAddress,
) -> Response<Body> {
    state.metrics.access_refusal("forbidden_address");
    let registry = route.registry.as_deref().unwrap_or_default();
    info!(registry, path = %route.path, "refused a request for a registry at a forbidden address: {why}");
    oci_error(
        StatusCode::FORBIDDEN,
        "DENIED",
        &format!("this mirror does not fetch from registry {registry}: {why}"),
    )
}

/// A request naming a registry outside the allow list, with `access.unlisted = "refuse"`.
fn refuse_unlisted(state: &AppState, route: &Route) -> Response<Body> {
    state.metrics.access_refusal("unlisted_refused");
    let registry = route.registry.as_deref().unwrap_or_default();
    info!(
        registry,
        path = %route.path,
        "refused a request for a registry not on the allow list (access.allow)"
    );
    oci_error(
        StatusCode::FORBIDDEN,
        "DENIED",
        &format!("this mirror does not serve registry {registry} (not in access.allow)"),
    )
}

fn upstream_url(base: &str, route: &Route) -> String {
    match &route.query {
        Some(q) => format!("{base}{}?{q}", route.path),
        None => format!("{base}{}", route.path),
    }
}

async fn pass_through(
    state: &AppState,
    route: &Route,
    method: Method,
    headers: &HeaderMap,
    body: Body,
) -> Response<Body> {
    let (base, client) = state.upstream(route);
    let url = upstream_url(&base, route);
    match proxy::forward(client, method, &url, headers, body).await {
        Ok(resp) => resp,
        Err(e) => {
            state.metrics.error("upstream_unreachable");
            warn!(error = %e, "upstream unreachable");
            oci_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &e.to_string())
        }
    }
}

/// A manifest GET passed through; an image manifest's tar layers start downloading into the
/// node cache at once (`p2p.prefetch_layers`, see [`crate::prefetch`]). The manifest is
/// read whole (at most 4 MiB, as registries allow) and answered unchanged.
async fn manifest_prefetching(
    state: &Arc<AppState>,
    route: &Route,
    repo: &str,
    headers: &HeaderMap,
) -> Response<Body> {
    let resp = pass_through(state, route, Method::GET, headers, Body::empty()).await;
    let image = resp.status() == StatusCode::OK
        && resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(prefetch::is_image_manifest);
    if !image {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, prefetch::MAX_MANIFEST_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            state.metrics.error("upstream_unreachable");
            warn!(error = %e, path = %route.path, "manifest body failed or is over 4 MiB");
            return oci_error(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                "the registry's manifest body failed or is over 4 MiB",
            );
        }
    };
    let layers = prefetch::tar_layers(&bytes);
    if !layers.is_empty() {
        prefetch_layers(
            state,
            route,
            repo,
            headers.get(header::AUTHORIZATION),
            &layers,
        );
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// Starts the download of each of `layers` not cached or downloading already, with the
/// manifest request's credentials (the registry checks them; the runtime's own GET of each
/// blob is checked again before it is served).
fn prefetch_layers(
    state: &Arc<AppState>,
    route: &Route,
    repo: &str,
    auth: Option<&HeaderValue>,
    layers: &[Digest],
) {
    let (base, _) = state.upstream(route);
    let mut origin_headers = Vec::new();
    if let Some(a) = auth.and_then(|a| a.to_str().ok()) {
        origin_headers.push(("Authorization".to_owned(), a.to_owned()));
    }
    let mut started = 0u32;
    for &digest in layers {
        if state.cache.get(&digest).is_some() || state.flights.lock().contains_key(&digest) {
            continue;
        }
        let url = format!("{base}/v2/{repo}/blobs/{digest}");
        if let Holding::Downloading(..) = acquire(state, digest, url, origin_headers.clone(), None)
        {
            state.metrics.prefetched_blobs.inc();
            started += 1;
        }
    }
    debug!(
        repo,
        layers = layers.len(),
        started,
        "manifest passed through: fetching its layers ahead"
    );
}

/// `/v2/` with no registry named: the version check of the mirror itself. Clients using
/// the path-prefix form (Podman, skopeo) ask it of the mirror before any prefixed request,
/// so it must not depend on the default upstream: its answer (and auth challenge) is passed
/// on when it can be reached, otherwise the mirror answers that it speaks the API.
async fn mirror_ping(
    state: &AppState,
    route: &Route,
    method: Method,
    headers: &HeaderMap,
) -> Response<Body> {
    let (base, client) = state.upstream(route);
    let url = upstream_url(&base, route);
    match proxy::forward(client, method, &url, headers, Body::empty()).await {
        Ok(resp) => resp,
        Err(e) => {
            debug!(error = %e, "default upstream unreachable; answering the version check");
            let mut resp = Response::new(Body::from("{}"));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert(
                "docker-distribution-api-version",
                HeaderValue::from_static("registry/2.0"),
            );
            resp
        }
    }
}

/// `GET /v2/<repo>/blobs/<digest>`: the registry decides who may read it; the bytes come
/// from this node's cache, a download already running here, or a new P2P download.
async fn serve_blob(
    state: &Arc<AppState>,
    route: &Route,
    repo: &str,
    digest: Digest,
    headers: &HeaderMap,
) -> Response<Body> {
    let (base, client) = state.upstream(route);
    let url = upstream_url(&base, route);
    let auth = headers.get(header::AUTHORIZATION);
    // 1. May this requester read the blob? Ask the registry (cached briefly per credential).
    let key = access_key(&base, repo, &digest, auth);
    let allowed = state
        .access
        .lock()
        .get(&key)
        .is_some_and(|exp| *exp > Instant::now());
    if !allowed {
        let mut check = client.head(&url);
        if let Some(a) = auth {
            check = check.header(header::AUTHORIZATION, a);
        }
        match check.send().await {
            Ok(r) if r.status().is_success() => {
                let ttl = state.config.upstream.access_cache_ttl;
                let mut access = state.access.lock();
                let now = Instant::now();
                access.retain(|_, exp| *exp > now);
                access.insert(key, now + ttl);
            }
            Ok(r) => {
                // Refused (401 with a challenge, 403, 404...): let the registry answer the
                // real request itself, so the client sees its exact status, headers and body.
                state.metrics.access_refusal("registry_denied");
                debug!(status = r.status().as_u16(), %digest, "registry refused the blob check");
                return pass_through(state, route, Method::GET, headers, Body::empty()).await;
            }
            Err(e) => {
                state.metrics.error("upstream_unreachable");
                let msg = format!("registry unreachable: {}", damselfly_oci::error_chain(&e));
                warn!(%digest, error = %msg, "cannot check access to blob");
                return oci_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &msg);
            }
        }
    }
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    // 2. This node already holds it, or 3. joins or starts its download.
    let mut origin_headers = Vec::new();
    if let Some(a) = auth.and_then(|a| a.to_str().ok()) {
        origin_headers.push(("Authorization".to_owned(), a.to_owned()));
    }
    let url = format!("{base}{}", route.path);
    // A ranged reader (a lazy mount) needs its bytes before the rest: say so before the
    // download sends its first requests, not only once the blob's length is known.
    let first = ByteRange::wanted_first(range);
    let (flight, mut rx) = match acquire(state, digest, url, origin_headers, first) {
        Holding::Cached(blob) => {
            if blob.origin() != damselfly_common::allow::url_origin(&base) {
                // Same bytes, another registry: this requester passed its own registry's
                // check above; the registry the blob came from was not asked.
                debug!(%digest, from = %blob.url, "serving a blob first cached from another registry");
            }
            return serve_cached(state, digest, &blob, range);
        }
        Holding::Downloading(flight, rx) => (flight, rx),
        Holding::Full => {
            let mut resp = oci_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "TOOMANYREQUESTS",
                "this node is running max_downloads blob downloads; try again shortly",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return resp;
        }
    };
    let ready = rx
        .wait_for(|s| s.total.is_some() || s.outcome.is_some())
        .await
        .map(|s| (s.total, s.outcome.clone(), s.via.clone()));
    let (total, via) = match ready {
        Ok((Some(total), _, via)) => (total, via),
        Ok((None, Some(Err(f)), _)) => {
            let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::BAD_GATEWAY);
            return oci_error(status, f.code, &f.message);
        }
        // Finished before we looked, or the flight vanished: the cache has it now.
        _ => match state.cache.get(&digest) {
            Some(blob) => return serve_cached(state, digest, &blob, range),
            None => {
                return oci_error(
                    StatusCode::BAD_GATEWAY,
                    "UNAVAILABLE",
                    "the download ended without the blob",
                );
            }
        },
    };
    let (status, span) = match parse_range(range, total) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if status == StatusCode::PARTIAL_CONTENT {
        // A ranged reader (a lazy mount) waits for these bytes now, not in download order.
        flight.want(span.clone());
    }
    let body = Body::from_stream(read_ahead(
        flight::stream(rx, span.clone(), status == StatusCode::OK),
        readahead::DEPTH,
    ));
    let source = via
        .as_ref()
        .map(|v| provenance::Source::Downloading(v).header_value())
        .unwrap_or_default();
    blob_response(status, &digest, span, total, body, &source)
}

/// Where a blob is on this node, as [`acquire`] found it.
enum Holding {
    /// Complete in the node cache.
    Cached(CachedBlob),
    /// Being downloaded: a download that was running already, or one just started.
    Downloading(Arc<Flight>, watch::Receiver<FlightState>),
    /// Neither, and `max_downloads` are running: nothing was started.
    Full,
}

/// The one way a blob gets onto this node, shared by blob GETs and preheats: the node
/// cache if it holds the blob, else the download of this digest already running here, else
/// a new download of `url` with `origin_headers`, which runs on its own task to the end
/// (adopted into the cache) whoever stops waiting for it.
fn acquire(
    state: &Arc<AppState>,
    digest: Digest,
    url: String,
    origin_headers: Vec<(String, String)>,
    wanted_first: Option<Range<u64>>,
) -> Holding {
    if let Some(blob) = state.cache.get(&digest) {
        return Holding::Cached(blob);
    }
    let mut flights = state.flights.lock();
    if let Some(f) = flights.get(&digest) {
        if let Some(r) = wanted_first {
            f.want(r);
        }
        return Holding::Downloading(f.clone(), f.subscribe());
    }
    // A download may have ended since the look-up above; it adopts its blob into the
    // cache before it leaves `flights`, so the cache has it now.
    if let Some(blob) = state.cache.get(&digest) {
        return Holding::Cached(blob);
    }
    if flights.len() >= state.config.max_downloads as usize {
        drop(flights);
        state.metrics.error("too_many_downloads");
        warn!(%digest, max = state.config.max_downloads, "download not started: max_downloads are running");
        return Holding::Full;
    }
    let f = Arc::new(Flight::default());
    if let Some(r) = wanted_first {
        f.want(r);
    }
    flights.insert(digest, f.clone());
    let rx = f.subscribe();
    state.downloads.spawn(download(
        state.clone(),
        digest,
        url,
        origin_headers,
        f.clone(),
    ));
    Holding::Downloading(f, rx)
}

/// `POST /api/v1/preheat` (see [`crate::preheat`]): makes sure the blob is in this node's
/// cache, by the same path as a blob GET, and answers once it is (or the download failed,
/// or `preheat_timeout` passed: the download goes on regardless).
async fn preheat(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response<Body> {
    let started = Instant::now();
    let (status, resp) = match ensure_preheated(&state, body).await {
        Ok(done) => (StatusCode::OK, serde_json::to_vec(&done)),
        Err((status, error)) => (status, serde_json::to_vec(&PreheatError { error })),
    };
    let mut resp = match resp {
        Ok(json) => {
            let mut r = Response::new(Body::from(json));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    state.metrics.request("preheat", resp.status().as_u16());
    debug!(
        status = resp.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "preheat"
    );
    resp
}

/// The work of [`preheat`]; a failure is its status and reason.
async fn ensure_preheated(
    state: &Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<PreheatResponse, (StatusCode, String)> {
    let body = body.map_err(|e| (e.status(), e.body_text()))?;
    let req = preheat::parse(&body).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let base = damselfly_common::allow::url_origin(&req.blob.url).unwrap_or_default();
    if !state.policy.allows(&req.blob.host, &base) {
        // It would put the blob in this node's cache and swarm on that registry's word.
        state.metrics.access_refusal("unlisted_refused");
        info!(registry = %req.blob.host, "refused a preheat for a registry not on the allow list");
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "this node does not serve registry {} (not in access.allow)",
                req.blob.host
            ),
        ));
    }
    let digest = req.blob.digest;
    let answer = |bytes, source| PreheatResponse {
        digest: digest.to_string(),
        bytes,
        source,
    };
    let mut rx = match acquire(state, digest, req.blob.url.clone(), req.headers, None) {
        Holding::Cached(blob) => {
            debug!(%digest, host = %req.blob.host, "preheat: already cached");
            return Ok(answer(blob.size, PreheatSource::Cache));
        }
        Holding::Downloading(_, rx) => rx,
        Holding::Full => {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "this node is running max_downloads blob downloads; try again shortly".into(),
            ));
        }
    };
    let timeout = state.config.preheat_timeout;
    let finished = tokio::time::timeout(timeout, async {
        // Settled, not only released: the answer says whether the node cache has it.
        rx.wait_for(|s| s.settled).await.map(|s| s.outcome.clone())
    });
    let outcome = tokio::select! {
        r = finished => r,
        () = state.stopping.cancelled() => {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "dfdaemon is shutting down".to_owned(),
            ));
        }
    };
    match outcome {
        Err(_) => {
            state.metrics.error("preheat_timeout");
            warn!(%digest, ?timeout, "preheat: blob not cached in time; its download goes on");
            Err((
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the blob was not cached within {}; its download goes on",
                    humantime::format_duration(timeout)
                ),
            ))
        }
        Ok(Ok(Some(Err(f)))) => Err((
            StatusCode::from_u16(f.status).unwrap_or(StatusCode::BAD_GATEWAY),
            f.message,
        )),
        // Done (or the flight vanished after finishing): it counts once it is cached.
        Ok(_) => match state.cache.get(&digest) {
            Some(blob) => {
                info!(%digest, bytes = blob.size, host = %req.blob.host, "preheat: blob cached");
                Ok(answer(blob.size, PreheatSource::Download))
            }
            None => Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                "the blob was downloaded but could not be kept in the node cache".to_owned(),
            )),
        },
    }
}

/// `GET /api/v1/blobs/<digest>`: what this node knows of a blob ([`Explanation`]), for
/// `dfdaemon explain`. Loopback callers only: the answer names peers and registries.
async fn explain(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(digest): Path<String>,
) -> Response<Body> {
    if !peer.ip().to_canonical().is_loopback() {
        state.metrics.request("explain", 403);
        state.metrics.access_refusal("explain_not_loopback");
        return (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({
                "error": "the blob API answers callers on this node only (loopback); run `dfdaemon explain` on the node"
            })),
        )
            .into_response();
    }
    let digest = match digest.parse::<Digest>() {
        Ok(d) => d,
        Err(e) => {
            state.metrics.request("explain", 400);
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({ "error": e.to_string() })),
            )
                .into_response();
        }
    };
    let mut e = Explanation {
        digest: digest.to_string(),
        state: "unknown".into(),
        size: None,
        url: None,
        downloaded: None,
        downloading_via: None,
        downloading_reason: None,
        fetch: None,
    };
    let flight = state.flights.lock().get(&digest).cloned();
    if let Some(blob) = state.cache.peek(&digest) {
        e.state = "cached".into();
        e.size = Some(blob.size);
        e.url = Some(blob.url);
        e.fetch = state.ledger.get(&digest).map(|p| (*p).clone());
    } else if let Some(flight) = flight {
        let s = flight.subscribe().borrow().clone();
        e.state = "downloading".into();
        e.size = s.total;
        e.downloaded = Some(s.covered.iter().map(|r| r.end - r.start).sum());
        match &s.via {
            Some(dfget::Via::Swarm { .. }) => e.downloading_via = Some(provenance::Way::Swarm),
            Some(dfget::Via::Origin(why)) => {
                e.downloading_via = Some(provenance::Way::Registry);
                e.downloading_reason = Some(why.to_string());
            }
            None => {}
        }
    }
    state.metrics.request("explain", 200);
    axum::Json(e).into_response()
}

fn serve_cached(
    state: &AppState,
    digest: Digest,
    blob: &CachedBlob,
    range: Option<&str>,
) -> Response<Body> {
    let (status, span) = match parse_range(range, blob.size) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let metrics = state.metrics.clone();
    let cache = state.cache.clone();
    let record = state.ledger.get(&digest);
    let source = provenance::Source::Local(record.as_deref()).header_value();
    let ledger = state.ledger.clone();
    let stream = read_ahead(
        state.cache.read(&digest, blob, span.clone()),
        readahead::DEPTH,
    )
    .map(move |r| match r {
        Ok(chunk) => {
            metrics.bytes(Source::Local, chunk.len() as u64);
            Ok(chunk)
        }
        Err(e) => {
            // A piece failed verification on disk: drop the blob so the next request
            // downloads it again, and cut this response short (the client retries).
            metrics.error("cache_corrupt");
            warn!(%digest, error = %e, "cached blob unreadable; removing it");
            cache.remove(&digest);
            ledger.forget(&digest);
            Err(std::io::Error::other(e.to_string()))
        }
    });
    blob_response(
        status,
        &digest,
        span,
        blob.size,
        Body::from_stream(stream),
        &source,
    )
}

fn blob_response(
    status: StatusCode,
    digest: &Digest,
    span: Range<u64>,
    total: u64,
    body: Body,
    source: &str,
) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(span.end - span.start),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("docker-content-digest", v);
    }
    if let Ok(v) = HeaderValue::from_str(source) {
        h.insert(SOURCE_HEADER, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!(
            "bytes {}-{}/{total}",
            span.start,
            span.end.saturating_sub(1)
        ))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    resp
}

/// The status and span to answer `header` with for a blob of `total` bytes, or the 416.
#[allow(clippy::result_large_err)]
fn parse_range(
    header: Option<&str>,
    total: u64,
) -> Result<(StatusCode, Range<u64>), Response<Body>> {
    match ByteRange::parse(header, total) {
        ByteRange::Whole => Ok((StatusCode::OK, 0..total)),
        ByteRange::Part(span) => Ok((StatusCode::PARTIAL_CONTENT, span)),
        ByteRange::Unsatisfiable => {
            let mut resp = oci_error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RANGE_INVALID",
                "requested range not satisfiable",
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            Err(resp)
        }
    }
}

fn access_key(base: &str, repo: &str, digest: &Digest, auth: Option<&HeaderValue>) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [base.as_bytes(), repo.as_bytes(), digest.0.as_slice()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(auth.map_or(&b""[..], HeaderValue::as_bytes));
    h.finalize().into()
}

/// Runs one blob download to the end and adopts the result into the cache.
async fn download(
    state: Arc<AppState>,
    digest: Digest,
    url: String,
    headers: Vec<(String, String)>,
    flight: Arc<Flight>,
) {
    state.metrics.downloads.inc();
    let req = DownloadRequest {
        url: url.clone(),
        headers,
        digest: Some(digest),
        output: state.cache.incoming_path(&digest),
        // The cache's import flushes it, off the client's path; until then a crash loses
        // only an incoming file, and the cache re-checks every piece it serves.
        durable: false,
    };
    let receiving = Receiving {
        state: state.clone(),
        digest,
        flight: flight.clone(),
        space: Mutex::new(None),
    };
    let outcome = match state.engine.download(&req, &receiving).await {
        Ok(report) => {
            let m = &state.metrics;
            m.bytes(Source::Peer, report.from_peers);
            m.bytes(Source::Supernode, report.from_supernode);
            m.bytes(Source::Origin, report.from_origin);
            if let Some(why) = &report.back_source {
                m.fallback(why.reason.label());
            }
            m.supernode_takeovers
                .inc_by(u64::from(report.supernode_takeovers));
            info!(
                %digest,
                bytes = report.bytes,
                from_peers = report.from_peers,
                from_supernode = report.from_supernode,
                from_origin = report.from_origin,
                secs = report.elapsed.as_secs_f64(),
                "blob downloaded"
            );
            state
                .tasks
                .lock()
                .insert(digest.to_string(), report.task_id.clone());
            // The blob is whole and verified: the clients streaming it get their last bytes
            // now, not after the cache has re-read, re-hashed and flushed it (the flight
            // holds the open file, which the adoption renames).
            flight.release();
            let pieces = (!report.piece_digests.is_empty())
                .then(|| (report.piece_size, report.piece_digests.clone()));
            match state
                .cache
                .adopt(digest, url, req.output.clone(), pieces)
                .await
            {
                Ok(()) => {
                    state
                        .metrics
                        .cache_bytes
                        .set(state.cache.used_bytes() as i64);
                    let record = Provenance::of(&digest, &report, damselfly_store::unix_now());
                    let ledger = state.ledger.clone();
                    // A small file write: off the runtime's threads all the same.
                    let _ =
                        tokio::task::spawn_blocking(move || ledger.record(digest, record)).await;
                    Ok(())
                }
                Err(e) => {
                    // The requests already streaming still have the file open; later ones
                    // download again. Nothing of it stays in the cache.
                    state.metrics.error("cache_write");
                    count_storage_failure(&state.metrics, &e);
                    warn!(%digest, error = %e, "cannot keep the blob in the node cache");
                    Ok(())
                }
            }
        }
        Err(e) => {
            let failure = failure(&e);
            state.metrics.error(failure.code_reason());
            match &e {
                // Counted by `Receiving::admit` under its limit.
                DownloadError::NoSpace(_) => {}
                e if e.is_no_space() => state.metrics.storage_failure(Fault::DiskFull),
                DownloadError::Io(_) => state.metrics.storage_failure(Fault::Io),
                _ => {}
            }
            if matches!(e, DownloadError::NoRoute(_)) && !state.config.back_source {
                state.metrics.fallback("refused_back_source_off");
            }
            warn!(%digest, error = %e, "blob download failed");
            Err(failure)
        }
    };
    // The blob is adopted (its bytes now count as the cache's) or gone.
    drop(receiving);
    flight.finish(outcome);
    {
        let mut flights = state.flights.lock();
        if flights
            .get(&digest)
            .is_some_and(|f| Arc::ptr_eq(f, &flight))
        {
            flights.remove(&digest);
        }
    }
    state.metrics.downloads.dec();
}

impl Failure {
    fn code_reason(&self) -> &'static str {
        match self.code {
            "DENIED" => "download_denied",
            "BLOB_UNKNOWN" => "download_not_found",
            "UNAVAILABLE" => "download_unavailable",
            "NO_SPACE" => "download_no_space",
            _ => "download_failed",
        }
    }
}

fn failure(e: &DownloadError) -> Failure {
    if e.is_no_space() {
        // 507: the request was fine, this node cannot store the blob. Runtimes treat it
        // as any 5xx from a mirror and pull from the next host (the registry).
        return Failure {
            status: 507,
            code: "NO_SPACE",
            message: format!("this node cannot store the blob: {e}"),
        };
    }
    let (status, code) = match e {
        DownloadError::Origin { status: 404, .. } => (404, "BLOB_UNKNOWN"),
        DownloadError::Origin { status, .. } if (400..500).contains(status) => (*status, "DENIED"),
        DownloadError::Denied { status, .. } => (*status, "DENIED"),
        DownloadError::NoRoute(_) => (502, "UNAVAILABLE"),
        DownloadError::Io(_) => (500, "UNKNOWN"),
        _ => (502, "UNKNOWN"),
    };
    Failure {
        status,
        code,
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_map_to_status_and_content_range() {
        let status = |h: &str, total| match parse_range(Some(h), total) {
            Ok((s, r)) => (s.as_u16(), Some(r), None),
            Err(resp) => (
                resp.status().as_u16(),
                None,
                resp.headers()
                    .get(header::CONTENT_RANGE)
                    .map(|v| v.to_str().unwrap().to_owned()),
            ),
        };
        assert_eq!(status("bytes=0-9", 100), (206, Some(0..10), None));
        assert_eq!(status("bytes=0-1,5-6", 100), (200, Some(0..100), None));
        let max = u64::MAX;
        assert_eq!(
            status(&format!("bytes=0-{max}"), 100),
            (206, Some(0..100), None)
        );
        assert_eq!(
            status(&format!("bytes={max}-"), 100),
            (416, None, Some("bytes */100".to_owned()))
        );
        assert_eq!(parse_range(None, 7).unwrap(), (StatusCode::OK, 0..7));
    }

    #[test]
    fn access_keys_differ_by_credential_and_repo() {
        let d = Digest::of(b"x");
        let a = HeaderValue::from_static("Basic YTpi");
        let k = access_key("http://r", "repo", &d, Some(&a));
        assert_ne!(k, access_key("http://r", "repo", &d, None));
        assert_ne!(k, access_key("http://r", "other", &d, Some(&a)));
        assert_eq!(k, access_key("http://r", "repo", &d, Some(&a)));
    }
}
