//! The HTTP dialects Harbor speaks to a preheat provider, both on the supernode's API port.
//!
//! * Generation 1 (Harbor 2.1–2.11): `GET /_ping`, `POST /preheats`, `GET /preheats/{id}`.
//! * Generation 2 (Harbor 2.12+): `GET /healthy` (shared), `POST /oapi/v1/jobs`,
//!   `GET /oapi/v1/jobs/{id}`, both with `Authorization: Bearer <preheat.token>`.
//!
//! Errors are JSON `{"code": <status>, "error": "<reason>"}`; nothing is fetched for a request
//! that is refused.
//!
//! Generation 1 carries no credential, so it is served only to callers from
//! `preheat.v1_sources` (off when empty). The cluster's own calls, `POST /api/v1/nodes`
//! (dfdaemons announcing) and `POST /api/v1/seed` (another supernode's preheat), need the
//! cluster signature when a secret is set ([`damselfly_common::control`]).

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{ConnectInfo, Path, Request, State, rejection::JsonRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use damselfly_common::control;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Api, Job, JobRequest, JobState, Node, Scope, manifest};
use crate::Shared;

/// The preheat and node routes.
pub fn routes(shared: &Arc<Shared>) -> Router<Arc<Shared>> {
    let v1 = Router::new()
        .route("/_ping", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/preheats", post(create_v1))
        .route("/preheats/{id}", get(status_v1))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            v1_source,
        ));
    let cluster = Router::new()
        .route("/api/v1/nodes", post(announce))
        .route("/api/v1/seed", post(seed))
        .route_layer(axum::middleware::from_fn_with_state(
            crate::api::control_guard(shared, Arc::new(JsonRefusal(shared.clone()))),
            control::require_signature,
        ));
    Router::new()
        .merge(v1)
        .merge(cluster)
        .route("/oapi/v1/jobs", post(create_v2))
        .route("/oapi/v1/jobs/{id}", get(status_v2))
}

/// Refusals of the cluster's JSON calls: [`error`], counted.
struct JsonRefusal(Arc<Shared>);

impl control::Refuse for JsonRefusal {
    fn answer(&self, e: &control::ControlAuthError, status: StatusCode) -> Response {
        error(status, e.to_string())
    }

    fn refused(&self) {
        self.0
            .metrics
            .access_refusal(crate::metrics::AccessRefusal::ControlCredential);
    }

    fn let_through(&self) {
        self.0.metrics.control_unsigned_accepted.inc();
    }
}

/// Lets a generation-1 request through only from `preheat.v1_sources`.
async fn v1_source(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    // Set by the server for every connection.
    let from = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip().to_canonical());
    let allowed = from.is_some_and(|ip| shared.v1_sources.iter().any(|n| n.contains(&ip)));
    if allowed {
        return next.run(request).await;
    }
    shared
        .metrics
        .access_refusal(crate::metrics::AccessRefusal::PreheatV1Source);
    let reason = if shared.v1_sources.is_empty() {
        "preheat generation 1 (no credential) is off on this supernode: use generation 2 \
         with preheat.token, or list the caller's network in preheat.v1_sources"
            .to_owned()
    } else {
        format!(
            "preheat generation 1 is not allowed from {} (preheat.v1_sources)",
            from.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string())
        )
    };
    tracing::warn!(from = ?from, "preheat generation 1 request refused");
    error(StatusCode::FORBIDDEN, reason)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "code": status.as_u16(), "error": message.into() })),
    )
        .into_response()
}

/// A refusal (status and reason) before any work: rendered as [`error`].
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Checks a preheat request's manifest URL.
fn check_url(url: &str) -> Result<(), Refusal> {
    if manifest::split_manifest_url(url).is_none() {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!("{url:?} is not a manifest URL (<registry>/v2/<repo>/manifests/<reference>)"),
        ));
    }
    Ok(())
}

fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, Refusal> {
    parsed.map(|Json(v)| v).map_err(|e| {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!("malformed JSON: {}", e.body_text()),
        )
    })
}

/// Starts a job on its own task.
fn spawn(shared: &Arc<Shared>, job: &Job, req: JobRequest) {
    shared.metrics.preheat_states(&shared.jobs.counts());
    shared
        .tracker
        .spawn(super::run(shared.clone(), job.id, req));
}

fn headers_vec(h: HashMap<String, String>) -> Vec<(String, String)> {
    h.into_iter().collect()
}

// ---- generation 1 ----

#[derive(Deserialize)]
struct CreateV1 {
    #[serde(rename = "type", default)]
    kind: String,
    url: String,
    #[serde(default)]
    headers: HashMap<String, String>,
    #[serde(default)]
    digest: String,
}

async fn create_v1(
    State(shared): State<Arc<Shared>>,
    parsed: Result<Json<CreateV1>, JsonRejection>,
) -> Response {
    let req = match body(parsed) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_response(),
    };
    if !req.kind.is_empty() && req.kind != "image" {
        return error(
            StatusCode::BAD_REQUEST,
            format!("type {:?} is not supported (only image)", req.kind),
        );
    }
    if let Err(refusal) = check_url(&req.url) {
        return refusal.into_response();
    }
    // A duplicate: the same manifest already preheated (208) or on its way (its id).
    if let Some(prev) = shared.jobs.find(&req.url, &req.digest) {
        match prev.state {
            JobState::Success => {
                return (
                    StatusCode::ALREADY_REPORTED,
                    Json(json!({ "ID": prev.id.to_string() })),
                )
                    .into_response();
            }
            JobState::Pending | JobState::Running => {
                return Json(json!({ "ID": prev.id.to_string() })).into_response();
            }
            JobState::Failure => {}
        }
    }
    let job = match shared
        .jobs
        .create(Api::V1, &req.url, &req.digest, Scope::SingleSeedPeer)
    {
        Ok(j) => j,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let p = &shared.config.preheat;
    spawn(
        &shared,
        &job,
        JobRequest {
            headers: headers_vec(req.headers),
            platform: p.platform.clone(),
            concurrency: p.concurrency,
            timeout: p.timeout,
        },
    );
    Json(json!({ "ID": job.id.to_string() })).into_response()
}

async fn status_v1(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let Some(job) = id.parse::<u64>().ok().and_then(|id| shared.jobs.get(id)) else {
        return error(StatusCode::NOT_FOUND, format!("no preheat job {id:?}"));
    };
    let status = match job.state {
        JobState::Pending => "WAITING",
        JobState::Running => "RUNNING",
        JobState::Success => "SUCCESS",
        // Harbor before 2.8 only understands FAIL.
        JobState::Failure => "FAIL",
    };
    Json(json!({
        "ID": job.id.to_string(),
        "status": status,
        "startTime": job.started_ms.map(rfc3339).unwrap_or_default(),
        "finishTime": job.finished_ms.map(rfc3339).unwrap_or_default(),
        "errorMsg": job.error,
    }))
    .into_response()
}

// ---- generation 2 ----

#[derive(Deserialize)]
struct CreateV2 {
    #[serde(rename = "type", default)]
    kind: String,
    args: ArgsV2,
}

#[derive(Deserialize)]
struct ArgsV2 {
    #[serde(rename = "type", default)]
    kind: String,
    url: String,
    #[serde(default)]
    headers: Option<HashMap<String, String>>,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    concurrent_count: i64,
    /// Go nanoseconds; 0 = default.
    #[serde(default)]
    timeout: i64,
}

/// Generation 2 requires the configured Bearer token.
fn authorized(shared: &Shared, headers: &HeaderMap) -> Result<(), Refusal> {
    let token = &shared.config.preheat.token;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if !token.is_empty() && constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        _ if token.is_empty() => Err(Refusal(
            StatusCode::UNAUTHORIZED,
            "no preheat token is configured on this supernode (preheat.token)".into(),
        )),
        Some(_) => Err(Refusal(
            StatusCode::UNAUTHORIZED,
            "invalid Bearer token".into(),
        )),
        None => Err(Refusal(
            StatusCode::UNAUTHORIZED,
            "missing Bearer token".into(),
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn job_v2(job: &Job, with_result: bool) -> Value {
    let state = match job.state {
        JobState::Pending | JobState::Running => "PENDING",
        JobState::Success => "SUCCESS",
        JobState::Failure => "FAILURE",
    };
    let mut v = json!({
        "id": job.id,
        "type": "preheat",
        "state": state,
        "created_at": rfc3339(job.created_ms),
        "updated_at": rfc3339(job.updated_ms),
    });
    if with_result {
        let task = |r: &super::TaskResult| {
            let mut t = json!({ "url": r.url, "hostname": r.hostname, "ip": r.ip });
            if !r.ok {
                t["description"] = json!(r.description);
            }
            t
        };
        let success: Vec<Value> = job.results.iter().filter(|r| r.ok).map(task).collect();
        let failure: Vec<Value> = job.results.iter().filter(|r| !r.ok).map(task).collect();
        v["result"] = json!({
            "job_states": [{
                "error": job.error,
                "results": [{
                    "scheduler_cluster_id": 1,
                    "success_tasks": success,
                    "failure_tasks": failure,
                }],
            }],
        });
    }
    v
}

async fn create_v2(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    parsed: Result<Json<CreateV2>, JsonRejection>,
) -> Response {
    if let Err(refusal) = authorized(&shared, &headers) {
        return refusal.into_response();
    }
    let req = match body(parsed) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_response(),
    };
    if !req.kind.is_empty() && req.kind != "preheat" {
        return error(
            StatusCode::BAD_REQUEST,
            format!("job type {:?} is not supported (only preheat)", req.kind),
        );
    }
    let args = req.args;
    if !args.kind.is_empty() && args.kind != "image" {
        return error(
            StatusCode::BAD_REQUEST,
            format!("preheat type {:?} is not supported (only image)", args.kind),
        );
    }
    if let Err(refusal) = check_url(&args.url) {
        return refusal.into_response();
    }
    let Some(scope) = Scope::parse(&args.scope) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unknown scope {:?}", args.scope),
        );
    };
    let p = &shared.config.preheat;
    let concurrency = match usize::try_from(args.concurrent_count) {
        Ok(0) | Err(_) => p.concurrency,
        Ok(n) => n.min(64),
    };
    let timeout = match u64::try_from(args.timeout) {
        Ok(0) | Err(_) => p.timeout,
        Ok(ns) => Duration::from_nanos(ns),
    };
    let job = match shared.jobs.create(Api::V2, &args.url, "", scope) {
        Ok(j) => j,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    spawn(
        &shared,
        &job,
        JobRequest {
            headers: headers_vec(args.headers.unwrap_or_default()),
            platform: p.platform.clone(),
            concurrency,
            timeout,
        },
    );
    Json(job_v2(&job, false)).into_response()
}

async fn status_v2(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(refusal) = authorized(&shared, &headers) {
        return refusal.into_response();
    }
    match id.parse::<u64>().ok().and_then(|id| shared.jobs.get(id)) {
        Some(job) => Json(job_v2(&job, true)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no job {id:?}")),
    }
}

// ---- nodes ----

#[derive(Deserialize)]
struct Announce {
    hostname: String,
    ip: String,
    mirror: String,
}

/// A dfdaemon says it is alive and where its mirror is (for `all_peers` preheats).
async fn announce(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    parsed: Result<Json<Announce>, JsonRejection>,
) -> Response {
    let a = match body(parsed) {
        Ok(a) => a,
        Err(refusal) => return refusal.into_response(),
    };
    let valid_mirror = a.mirror.starts_with("http://") || a.mirror.starts_with("https://");
    if a.hostname.is_empty() || a.hostname.len() > 255 || !valid_mirror || a.mirror.len() > 300 {
        return error(
            StatusCode::BAD_REQUEST,
            "hostname and an http(s) mirror URL are required",
        );
    }
    let from = peer.ip().to_canonical();
    let mut nodes = shared.nodes.lock();
    let live = shared.config.scheduler.peer_timeout * 3;
    nodes.retain(|_, n| n.seen.elapsed() < live);
    // A node's name stays bound to the address that announced it until the entry expires:
    // another host cannot take over its name (and with it the preheat orders, Harbor's
    // registry credentials included, that `all_peers` jobs send there).
    if let Some(bound) = nodes.get(&a.hostname).map(|n| n.from)
        && bound != from
    {
        drop(nodes);
        shared
            .metrics
            .access_refusal(crate::metrics::AccessRefusal::NodeIdentity);
        tracing::warn!(hostname = %a.hostname, %bound, %from, "node announcement from another address refused");
        return error(
            StatusCode::CONFLICT,
            format!(
                "node {:?} is announced from {bound}; announcements from {from} are refused \
                 until that entry expires ({} s without one)",
                a.hostname,
                live.as_secs()
            ),
        );
    }
    let max = shared.config.preheat.max_nodes;
    if nodes.len() >= max && !nodes.contains_key(&a.hostname) {
        drop(nodes);
        tracing::warn!(
            hostname = %a.hostname,
            max,
            "node table full (preheat.max_nodes): announcement refused"
        );
        let mut refusal = error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this supernode already tracks {max} nodes (preheat.max_nodes)"),
        );
        if let Ok(v) = HeaderValue::from_str(&live.as_secs().max(1).to_string()) {
            refusal.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return refusal;
    }
    nodes.insert(
        a.hostname,
        Node {
            ip: a.ip,
            mirror: a.mirror.trim_end_matches('/').to_owned(),
            seen: std::time::Instant::now(),
            from,
        },
    );
    StatusCode::NO_CONTENT.into_response()
}

// ---- seeding on behalf of another supernode ----

#[derive(Deserialize)]
struct SeedRequest {
    url: String,
    digest: String,
    #[serde(default)]
    headers: Option<HashMap<String, String>>,
}

/// Another supernode's preheat asks this one to fetch and keep a blob (it is the blob's home,
/// or the job's scope is `all_seed_peers`). Answers once the blob is cached.
async fn seed(
    State(shared): State<Arc<Shared>>,
    parsed: Result<Json<SeedRequest>, JsonRejection>,
) -> Response {
    let req = match body(parsed) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_response(),
    };
    let Ok(digest) = req.digest.parse::<damselfly_common::Digest>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("invalid digest {:?}", req.digest),
        );
    };
    if damselfly_oci::blob_digest(&req.url) != Some(digest) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{:?} is not the blob URL of {digest}", req.url),
        );
    }
    let headers = headers_vec(req.headers.unwrap_or_default());
    match super::seed(&shared, &req.url, digest, &headers).await {
        Ok(()) => Json(json!({ "digest": digest.to_string() })).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, e),
    }
}
