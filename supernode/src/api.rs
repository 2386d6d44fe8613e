//! The HTTP API: protobuf bodies for the peer protocol, raw bytes for pieces, text for
//! `/metrics` and `/healthy`.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /api/v1/register` | `RegisterRequest` | `RegisterResponse` |
//! | `POST /api/v1/sync` | `SyncRequest` | `SyncResponse` |
//! | `POST /api/v1/leave` | `LeaveRequest` | 204 |
//! | `GET /api/v1/tasks/{task}/pieces/{index}?peer={id}` | – (header `x-damselfly-piece-token`) | piece bytes |
//! | `GET /healthy`, `GET /metrics` | – | text |
//!
//! Every refusal is an `ErrorResponse` with a stable `code`; [`ApiError`] is the one place
//! errors become HTTP answers.
//!
//! With a cluster secret (`cluster.secret_file`), `register` and `sync` answers carry the
//! peer's piece token for the task, and a piece request must present a valid one (hex in
//! the `x-damselfly-piece-token` header) or get 403 `PIECE_TOKEN`, like a peer's piece
//! server would refuse it.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use damselfly_common::{
    Digest, control,
    token::PIECE_TOKEN_HEADER,
    vouch::{PIECE_DIGEST_HEADER, PIECE_SIGNATURE_HEADER},
};
use damselfly_oci::OriginError;
use damselfly_proto::{
    DecodeError, ErrorResponse, LeaveRequest, MAX_MESSAGE_LEN, PROTOCOL_VERSION, ParentInfo,
    RegisterRequest, RegisterResponse, SupernodeCopy, SyncRequest, SyncResponse, TaskState, decode,
};
use damselfly_swarm::{PeerHost, PeerId, SchedError, SyncInput};
use prost::Message;
use tracing::{debug, info, trace, warn};

use crate::{
    Shared,
    metrics::{AccessRefusal, PieceFrom, RegisterOutcome},
    task::{Admission, CdnState, Task},
    tasks::{self, RegisterError, Wanted},
};

/// Builds the router.
pub fn router(shared: Arc<Shared>) -> Router {
    // With a cluster secret, the peer protocol's control calls need its signature.
    let control = Router::new()
        .route("/api/v1/register", post(register))
        .route("/api/v1/sync", post(sync))
        .route("/api/v1/leave", post(leave))
        .route_layer(axum::middleware::from_fn_with_state(
            control_guard(&shared, Arc::new(ProtoRefusal(shared.clone()))),
            control::require_signature,
        ));
    Router::new()
        .merge(control)
        .route("/api/v1/tasks/{task}/pieces/{index}", get(piece))
        .route("/healthy", get(healthy))
        .route("/metrics", get(metrics))
        .merge(crate::preheat::api::routes(&shared))
        .layer(DefaultBodyLimit::max(MAX_MESSAGE_LEN))
        .with_state(shared)
}

/// The signature check of control routes, answering refusals with `refuse`.
pub(crate) fn control_guard(shared: &Shared, refuse: Arc<dyn control::Refuse>) -> control::Guard {
    control::Guard {
        key: shared.control.clone(),
        max_skew: shared.config.cluster.max_clock_skew,
        max_body: MAX_MESSAGE_LEN,
        enforce: shared.config.cluster.enforce_signatures,
        refuse,
    }
}

/// Refusals of the peer protocol's control calls: a protobuf `ErrorResponse`, code
/// `UNAUTHENTICATED`, counted.
struct ProtoRefusal(Arc<Shared>);

impl control::Refuse for ProtoRefusal {
    fn answer(&self, error: &control::ControlAuthError, status: StatusCode) -> Response {
        let code = if let control::ControlAuthError::Body(_) = error {
            "TOO_LARGE"
        } else {
            "UNAUTHENTICATED"
        };
        (status, Proto(ErrorResponse::new(code, error.to_string()))).into_response()
    }

    fn refused(&self) {
        self.0
            .metrics
            .access_refusal(AccessRefusal::ControlCredential);
    }

    fn let_through(&self) {
        self.0.metrics.control_unsigned_accepted.inc();
    }
}

/// A protobuf answer.
struct Proto<M>(M);

impl<M: Message> IntoResponse for Proto<M> {
    fn into_response(self) -> Response {
        (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            self.0.encode_to_vec(),
        )
            .into_response()
    }
}

/// Every way an API call can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body did not decode or validate.
    #[error("bad request: {0}")]
    BadRequest(#[from] DecodeError),
    /// The request names an invalid value.
    #[error("bad request: {0}")]
    Invalid(String),
    /// No such task in memory.
    #[error("unknown task {0}")]
    UnknownTask(String),
    /// The peer did not register for this task.
    #[error("peer {0} is not registered for this task")]
    NotAdmitted(PeerId),
    /// A sync or leave without the session token of the peer it names.
    #[error("peer {0}: {1}")]
    Session(PeerId, damselfly_common::SessionError),
    /// The scheduler refused the peer: banned, or its id is another host's.
    #[error(transparent)]
    Sched(#[from] SchedError),
    /// A piece request without a valid piece token for its task and requester.
    #[error("{0}")]
    PieceToken(damselfly_common::TokenError),
    /// Registration failed.
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// All upload slots are busy.
    #[error("all upload slots are busy")]
    Busy,
    /// The piece is not (yet) stored here.
    #[error("piece {0} is not available")]
    PieceAbsent(u32),
    /// Reading the store failed.
    #[error("storage failed: {0}")]
    Store(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, u32) {
        match self {
            Self::BadRequest(_) | Self::Invalid(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST", 0),
            Self::UnknownTask(_) => (StatusCode::NOT_FOUND, "UNKNOWN_TASK", 0),
            // A peer answered NOT_ADMITTED registers again, which is also the way to a
            // session token.
            Self::NotAdmitted(_) | Self::Session(..) => (StatusCode::FORBIDDEN, "NOT_ADMITTED", 0),
            Self::Sched(SchedError::Banned(_)) => (StatusCode::FORBIDDEN, "BANNED", 0),
            Self::Sched(SchedError::IdTaken(_)) => (StatusCode::CONFLICT, "PEER_ID_TAKEN", 0),
            Self::Sched(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST", 0),
            Self::PieceToken(_) => (StatusCode::FORBIDDEN, "PIECE_TOKEN", 0),
            Self::Register(RegisterError::Origin(OriginError::Forbidden(_))) => {
                (StatusCode::FORBIDDEN, "FORBIDDEN_ORIGIN", 0)
            }
            Self::Register(RegisterError::Origin(e)) => match e.status() {
                Some(status) => (
                    StatusCode::BAD_GATEWAY,
                    "ORIGIN_STATUS",
                    u32::from(status.as_u16()),
                ),
                None => (StatusCode::BAD_GATEWAY, "ORIGIN_UNREACHABLE", 0),
            },
            Self::Register(RegisterError::Denied { status, .. }) => {
                (StatusCode::FORBIDDEN, "DENIED", u32::from(*status))
            }
            Self::Register(RegisterError::NotHere) => (StatusCode::NOT_FOUND, "UNKNOWN_TASK", 0),
            Self::Register(
                RegisterError::FetchesBusy(_)
                | RegisterError::TasksBusy(_)
                | RegisterError::PeersBusy(_),
            ) => (StatusCode::SERVICE_UNAVAILABLE, "BUSY", 0),
            Self::Register(RegisterError::TooLarge(_)) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "TOO_LARGE", 0)
            }
            // A full disk or cache: 507, so a peer tells it from a broken supernode and
            // fetches from the origin itself when it may.
            Self::Register(RegisterError::Store(e)) if e.is_no_space() => {
                (StatusCode::INSUFFICIENT_STORAGE, "NO_SPACE", 0)
            }
            Self::Register(RegisterError::Store(_) | RegisterError::Join(_)) | Self::Store(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "STORAGE", 0)
            }
            Self::Busy => (StatusCode::SERVICE_UNAVAILABLE, "BUSY", 0),
            Self::PieceAbsent(_) => (StatusCode::NOT_FOUND, "PIECE_ABSENT", 0),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, origin_status) = self.parts();
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            warn!(error = %self, "request failed");
        } else {
            debug!(error = %self, "request refused");
        }
        let mut body = ErrorResponse::new(code, self.to_string());
        body.origin_status = origin_status;
        let mut resp = (status, Proto(body)).into_response();
        if let Self::Register(
            RegisterError::FetchesBusy(_)
            | RegisterError::TasksBusy(_)
            | RegisterError::PeersBusy(_),
        ) = self
        {
            // About the time a fetch of a typical layer takes to finish and free a slot.
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        resp
    }
}

fn peer_addr(s: &str) -> Result<SocketAddr, ApiError> {
    // validate() already parsed it; parse again to get the value.
    s.parse()
        .map_err(|_| ApiError::Invalid(format!("peer_addr {s:?}")))
}

async fn register(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(source): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Result<Proto<RegisterResponse>, ApiError> {
    let req: RegisterRequest =
        decode(&body).inspect_err(|_| shared.metrics.registration(RegisterOutcome::BadRequest))?;
    req.validate()
        .inspect_err(|_| shared.metrics.registration(RegisterOutcome::BadRequest))?;
    let addr = peer_addr(&req.peer_addr)?;
    let named = if req.digest.is_empty() {
        None
    } else {
        Some(
            req.digest
                .parse::<Digest>()
                .map_err(|e| ApiError::Invalid(e.to_string()))?,
        )
    };
    let from_url = damselfly_oci::blob_digest(&req.url);
    if let (Some(a), Some(b)) = (named, from_url)
        && a != b
    {
        return Err(ApiError::Invalid(format!(
            "digest {a} contradicts the blob URL's digest {b}"
        )));
    }
    let digest = named.or(from_url);
    let id = match digest {
        Some(d) => d.to_string(),
        None => format!("url:{}", Digest::of(req.url.as_bytes()).hex()),
    };
    let wanted = Wanted {
        id,
        url: req.url,
        digest,
        headers: req.headers.into_iter().map(|h| (h.name, h.value)).collect(),
        holder: req.holder,
        takeover: req.takeover,
    };
    let (task, created) = match shared.tasks.register(&shared, &wanted).await {
        Ok(v) => v,
        Err(e) => {
            let outcome = match e {
                RegisterError::Denied { .. } => RegisterOutcome::Denied,
                RegisterError::NotHere => RegisterOutcome::NotHere,
                RegisterError::FetchesBusy(_)
                | RegisterError::TasksBusy(_)
                | RegisterError::PeersBusy(_) => RegisterOutcome::Busy,
                RegisterError::Store(ref s) if s.is_no_space() => RegisterOutcome::NoSpace,
                RegisterError::Store(_) | RegisterError::Join(_) => RegisterOutcome::Storage,
                _ => RegisterOutcome::OriginError,
            };
            shared.metrics.registration(outcome);
            return Err(e.into());
        }
    };
    let peer = PeerId(req.peer_id);
    // Who the peer is: where its registration came from, not what it claims.
    let host = PeerHost::observed(source.ip(), addr);
    if let Err(e) = task.sched.lock().check_join(peer, host) {
        refuse_peer(&shared, task.id(), host, &e);
        return Err(e.into());
    }
    let max_peers = shared.config.scheduler.max_peers_per_task;
    match task.admit(peer, host, max_peers as usize) {
        Admission::Admitted => {}
        Admission::Full => {
            warn!(task = %task.id(), max = max_peers, "registration refused: scheduler.max_peers_per_task live peers");
            shared.metrics.registration(RegisterOutcome::Busy);
            return Err(RegisterError::PeersBusy(max_peers).into());
        }
        Admission::IdTaken => {
            let e = SchedError::IdTaken(peer);
            refuse_peer(&shared, task.id(), host, &e);
            return Err(e.into());
        }
    }
    shared.metrics.registration(if created {
        RegisterOutcome::New
    } else {
        RegisterOutcome::Joined
    });
    let now = Instant::now();
    task.touch(now);
    if let Err(e) = task.sched.lock().handle_join(now, peer, addr, host) {
        // Banned between the check and now.
        refuse_peer(&shared, task.id(), host, &e);
        return Err(e.into());
    }
    let (store, id) = (shared.store.clone(), task.id().to_owned());
    // LRU bookkeeping for cache GC; a failure only affects eviction order.
    if let Ok(Err(e)) =
        tokio::task::spawn_blocking(move || store.touch(&id, tasks::unix_now())).await
    {
        debug!(error = %e, "could not record cache access");
    }
    let copy = if created {
        SupernodeCopy::Started
    } else if task.fetching() {
        SupernodeCopy::Fetching
    } else {
        SupernodeCopy::Stored
    };
    let meta = &task.meta;
    Ok(Proto(RegisterResponse {
        copy: copy as i32,
        version: PROTOCOL_VERSION,
        task_id: meta.id.clone(),
        content_length: meta.content_length,
        piece_size: meta.piece_size,
        piece_count: meta.piece_count(),
        digest: meta.digest.clone().unwrap_or_default(),
        piece_token: piece_token(&shared, &meta.id, peer),
        digest_key: shared
            .signer
            .as_ref()
            .map(|s| s.public_key().to_vec())
            .unwrap_or_default(),
        session_token: shared.sessions.issue(&meta.id, peer.0, &host.to_string()),
    }))
}

/// Logs and counts a registration the scheduler refused.
fn refuse_peer(shared: &Shared, task: &str, host: PeerHost, e: &SchedError) {
    let reason = match e {
        SchedError::Banned(_) => AccessRefusal::PeerBanned,
        _ => AccessRefusal::PeerIdTaken,
    };
    warn!(%task, %host, error = %e, "registration refused");
    shared.metrics.access_refusal(reason);
}

/// The host `peer` registered from, once its session token for `task_id` checks out.
fn check_session(
    shared: &Shared,
    task: &Task,
    peer: PeerId,
    token: &[u8],
) -> Result<PeerHost, ApiError> {
    let host = task
        .admitted_host(peer)
        .ok_or(ApiError::NotAdmitted(peer))?;
    if token.is_empty() && !shared.config.cluster.enforce_session_tokens {
        // A peer of a release that predates session tokens, during an upgrade.
        shared.metrics.session_token_missing_accepted.inc();
        return Ok(host);
    }
    shared
        .sessions
        .verify(token, task.id(), peer.0, &host.to_string())
        .map_err(|e| {
            debug!(task = %task.id(), %peer, %host, error = %e, "session token refused");
            shared.metrics.access_refusal(AccessRefusal::SessionToken);
            ApiError::Session(peer, e)
        })?;
    Ok(host)
}

async fn sync(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Proto<SyncResponse>, ApiError> {
    let started = Instant::now();
    let req: SyncRequest = decode(&body)?;
    req.validate()?;
    let addr = peer_addr(&req.peer_addr)?;
    let task = shared
        .tasks
        .get(&req.task_id)
        .ok_or_else(|| ApiError::UnknownTask(req.task_id.clone()))?;
    let peer = PeerId(req.peer_id);
    let host = check_session(&shared, &task, peer, &req.session_token)?;
    task.touch(started);
    // A long poll is held only in a small swarm, which the supernode feeds directly; in a
    // large one, waking every waiting peer for each new piece would multiply the syncs, so
    // they are answered at once and come back a period later.
    let hold = req.may_wait() && task.sched.lock().wakes_on_new_pieces();
    if hold {
        wait_for_piece(
            &task,
            req.digests_from,
            Duration::from_millis(req.wait_ms.into()),
        )
        .await;
    }
    // After a long poll, "now" is when the answer is made.
    let started = if hold { Instant::now() } else { started };
    let seed_has = task.cdn.lock().have.clone();
    let bad: Vec<(PeerId, u32)> = req
        .bad_pieces
        .iter()
        .map(|b| (PeerId(b.offender), b.piece))
        .collect();
    shared.metrics.bad_pieces.inc_by(bad.len() as u64);
    let known: Vec<PeerId> = req.known_parents.iter().map(|&p| PeerId(p)).collect();
    let unreachable: Vec<PeerId> = req.unreachable_parents.iter().map(|&p| PeerId(p)).collect();
    let unserved: Vec<(PeerId, u32)> = req
        .unserved_pieces
        .iter()
        .map(|b| (PeerId(b.offender), b.piece))
        .collect();
    if !unreachable.is_empty() {
        shared
            .metrics
            .unreachable_parents
            .inc_by(unreachable.len() as u64);
    }
    // The scheduler's whole side of a sync, the same call the simulator makes.
    let answer = task
        .sched
        .lock()
        .handle_sync_request(
            started,
            peer,
            addr,
            host,
            &SyncInput {
                new_pieces: &req.new_pieces,
                bad_pieces: &bad,
                urgent: &req.urgent_pieces,
                uploading: req.uploading,
                done: req.done,
                seed_has: &seed_has,
                known_parents: req.announced.then_some(known.as_slice()),
                unreachable_parents: &unreachable,
                unserved: &unserved,
            },
        )
        .map_err(ApiError::Sched)?;
    if !unreachable.is_empty() {
        debug!(
            task = %req.task_id,
            %peer,
            parents = ?unreachable,
            seed_offer = answer.seed_pieces.count(),
            "peer cannot reach parents"
        );
    }
    let cdn = task.cdn.lock();
    let (state, error) = match &cdn.state {
        CdnState::Running => (TaskState::Running, String::new()),
        CdnState::Complete => (TaskState::Complete, String::new()),
        CdnState::Failed(e) => (TaskState::Failed, e.clone()),
    };
    let from = (req.digests_from as usize).min(cdn.digests.len());
    // A peer that takes vouched digests gets each with its piece; one that asks for them
    // of a supernode that does not vouch gets them here after all.
    let to = if req.vouched && shared.signer.is_some() {
        from
    } else {
        cdn.digests.len()
    };
    shared.metrics.sync_digests.inc_by((to - from) as u64);
    let digests_sha256 = if req.vouched && state == TaskState::Complete {
        damselfly_common::vouch::digests_sha256(&cdn.digests)
            .0
            .to_vec()
    } else {
        Vec::new()
    };
    let to_sign: Vec<[u8; 32]> = if req.signatures {
        cdn.digests[from..to].to_vec()
    } else {
        Vec::new()
    };
    let mut resp = SyncResponse {
        version: PROTOCOL_VERSION,
        state: state as i32,
        error,
        seed_pieces: answer.seed_pieces.to_bytes(),
        digests: cdn.digests[from..to].iter().map(|d| d.to_vec()).collect(),
        signatures: Vec::new(),
        stored_pieces: u32::try_from(cdn.digests.len()).unwrap_or(u32::MAX),
        digests_sha256,
        digests_from: from as u32,
        readmitted: answer.readmitted,
        parents: answer
            .parents
            .into_iter()
            .map(|p| ParentInfo {
                peer_id: p.id.0,
                addr: p.addr.to_string(),
                pieces: if answer.delta {
                    Vec::new()
                } else {
                    p.pieces.to_bytes()
                },
            })
            .collect(),
        parents_delta: answer.delta,
        dropped_parents: answer.dropped_parents.iter().map(|p| p.0).collect(),
        piece_token: piece_token(&shared, &req.task_id, peer),
    };
    drop(cdn);
    // Signed outside the task's lock (one signature per piece): only a node re-offering a
    // held blob asks, once per blob.
    if let (Some(signer), true) = (&shared.signer, req.signatures) {
        resp.signatures = to_sign
            .iter()
            .zip(from..)
            .map(|(d, i)| {
                let piece = u32::try_from(i).unwrap_or(u32::MAX);
                signer.sign(&req.task_id, piece, &Digest(*d)).to_vec()
            })
            .collect();
    }
    shared
        .metrics
        .schedule_seconds
        .observe(started.elapsed().as_secs_f64());
    Ok(Proto(resp))
}

/// A long-polling sync ([`SyncRequest::wait_ms`]): waits until the supernode stores a piece
/// past the `known` digests, its fetch ends, or `wait` passes, whichever comes first. A lone
/// peer then learns of each piece as soon as it is stored instead of at its next sync period.
async fn wait_for_piece(task: &Task, known: u32, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Registered before the check, so a piece stored in between still wakes us.
        let notified = task.progress.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let cdn = task.cdn.lock();
            if cdn.digests.len() > known as usize || !matches!(cdn.state, CdnState::Running) {
                return;
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return;
        }
    }
}

async fn leave(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<StatusCode, ApiError> {
    let req: LeaveRequest = decode(&body)?;
    req.validate()?;
    if let Some(task) = shared.tasks.get(&req.task_id) {
        let peer = PeerId(req.peer_id);
        check_session(&shared, &task, peer, &req.session_token)?;
        task.sched.lock().handle_leave(Instant::now(), peer);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
struct PieceQuery {
    peer: u64,
}

/// The piece token admitting `peer` to `task_id` for `cluster.piece_token_ttl`; empty
/// without a cluster secret. Only ever called for a peer the task admitted: registration
/// (after the access check) or the sync of an admitted peer.
fn piece_token(shared: &Shared, task_id: &str, peer: PeerId) -> Vec<u8> {
    shared.piece_tokens.as_ref().map_or_else(Vec::new, |key| {
        key.issue_for(task_id, peer.0, shared.config.cluster.piece_token_ttl)
    })
}

/// Checks the piece token a piece request carries (hex in [`PIECE_TOKEN_HEADER`]), when
/// the supernode has a cluster secret; logs and counts a refusal.
fn check_piece_token(
    shared: &Shared,
    headers: &HeaderMap,
    task_id: &str,
    peer: PeerId,
) -> Result<(), ApiError> {
    let Some(key) = &shared.piece_tokens else {
        return Ok(());
    };
    let checked = match headers
        .get(PIECE_TOKEN_HEADER)
        .map(|v| hex::decode(v.as_bytes()))
    {
        None => key.verify_now(&[], task_id, peer.0),
        Some(Ok(token)) => key.verify_now(&token, task_id, peer.0),
        Some(Err(_)) => Err(damselfly_common::TokenError::Malformed(0)),
    };
    checked.map(drop).map_err(|e| {
        shared.metrics.access_refusal(AccessRefusal::PieceToken);
        info!(task = task_id, %peer, reason = e.label(), "refused a piece request without a valid piece token: {e}");
        ApiError::PieceToken(e)
    })
}

async fn piece(
    State(shared): State<Arc<Shared>>,
    Path((task_id, index)): Path<(String, u32)>,
    Query(q): Query<PieceQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let peer = PeerId(q.peer);
    // Before the task is looked up: a stranger learns nothing about what is stored here.
    check_piece_token(&shared, &headers, &task_id, peer)?;
    let task = shared
        .tasks
        .get(&task_id)
        .ok_or_else(|| ApiError::UnknownTask(task_id.clone()))?;
    if task.admitted_host(peer).is_none() {
        return Err(ApiError::NotAdmitted(peer));
    }
    let digest = {
        let cdn = task.cdn.lock();
        if !cdn.have.get(index) {
            return Err(ApiError::PieceAbsent(index));
        }
        cdn.digests.get(index as usize).copied()
    };
    // A piece no peer holds yet goes only to the peer it is offered to (a late request on an
    // expired offer would make the seed send it twice); the late peer gets it from the
    // holder.
    if !task
        .sched
        .lock()
        .seed_send_allowed(Instant::now(), peer, index)
    {
        shared.metrics.seed_offer_conflicts.inc();
        debug!(task = %task_id, piece = index, %peer, "piece offered to another peer: not sent");
        return Err(ApiError::PieceAbsent(index));
    }
    let Ok(_permit) = shared.upload_slots.clone().try_acquire_owned() else {
        shared.metrics.busy_refusals.inc();
        return Err(ApiError::Busy);
    };
    task.touch(Instant::now());
    let data = if let Some(data) = task.hot_piece(index) {
        shared.metrics.piece_reads(PieceFrom::Memory);
        data
    } else {
        shared.metrics.piece_reads(PieceFrom::Disk);
        let store = shared.store.clone();
        let id = task_id.clone();
        let read = tokio::task::spawn_blocking(move || store.read_piece(&id, index))
            .await
            .map_err(|e| ApiError::Store(e.to_string()))?;
        match read {
            Ok(data) => data.into(),
            Err(damselfly_store::Error::Corrupt { .. }) => {
                // The store dropped it; stop offering it and fetch it again. The peer takes
                // it from another parent meanwhile.
                shared.metrics.corrupt_pieces.inc();
                warn!(task = %task_id, piece = index, "piece corrupt on disk: not served, fetching it again");
                if task.piece_lost(index) {
                    crate::repair::spawn(&shared, task.clone());
                }
                return Err(ApiError::PieceAbsent(index));
            }
            Err(
                damselfly_store::Error::PieceAbsent { .. } | damselfly_store::Error::UnknownTask(_),
            ) => return Err(ApiError::PieceAbsent(index)),
            Err(other) => return Err(ApiError::Store(other.to_string())),
        }
    };
    if let Some(limiter) = &shared.upload_limiter {
        limiter.acquire(data.len() as u64).await;
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    // The digest the piece was stored under, signed, so the peer needs it from nowhere
    // else (and can pass it on to its own children).
    if let (Some(signer), Some(digest)) = (&shared.signer, digest) {
        let v = signer.vouch(&task_id, index, Digest(digest));
        for (name, bytes) in [
            (PIECE_DIGEST_HEADER, &v.digest.0[..]),
            (PIECE_SIGNATURE_HEADER, &v.signature[..]),
        ] {
            if let Ok(value) = header::HeaderValue::from_str(&hex::encode(bytes)) {
                headers.insert(name, value);
            }
        }
        shared.metrics.vouched_digests.inc();
    }
    shared.metrics.served_bytes.inc_by(data.len() as u64);
    shared.metrics.served_pieces.inc();
    trace!(piece = index, %peer, "piece read for a peer");
    // The piece is handed to the connection: the scheduler may offer the next fresh piece
    // now rather than after this peer's next report.
    task.sched
        .lock()
        .handle_seed_sent(Instant::now(), peer, index);
    Ok((headers, data).into_response())
}

async fn healthy() -> &'static str {
    "ok\n"
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    // Read at scrape time: it changes with every stored piece.
    shared
        .metrics
        .hot_pieces_bytes
        .set(i64::try_from(shared.hot.bytes()).unwrap_or(i64::MAX));
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &shared.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
