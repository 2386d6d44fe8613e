//! The piece server: answers other peers' [`PieceRequest`]s with pieces this peer holds, while
//! it is still downloading and afterwards, over TCP ([`crate::tcp`], the default) and QUIC.
//!
//! Both transports share [`PieceServer::prepare`]: the task and piece are looked up, the
//! request waits in the upload queue for one of the upload slots (instead of being refused
//! while a slot is taken), and the piece is read from the content file. Only when more than
//! `upload_queue` requests already wait is a request answered `Busy`, so the requester goes
//! to another parent. A slot is held from the disk read until the piece is sent, which bounds
//! the piece buffers an uploading peer holds to `upload_slots` pieces.
//!
//! With [`ServerLimits::sendfile`] (off by default: not faster on a loopback hop) a TCP piece
//! goes from the content file to the socket by `sendfile(2)`: no copy into this process, no
//! buffer held; the reading stage only asks the kernel to read the piece ahead
//! (`POSIX_FADV_WILLNEED`). QUIC (whose bytes are encrypted in user space) and a server with
//! a fault switched on always read the piece into a buffer.
//!
//! QUIC: one bi-directional stream per request; the client sends a frame and finishes its
//! side; the server answers a [`PieceResponse`] frame followed, on `Ok`, by the raw bytes.
//!
//! Admission: a server given the cluster's [`TokenKey`] serves a request (or an announcement
//! subscription) only when its piece token admits its requester to its task
//! ([`damselfly_common::token`]); any other gets `Unauthorized` with the reason, before the
//! task is even looked up, and is logged and counted ([`RefusalObserver`]). Without a key
//! nothing is checked.

use std::{
    collections::HashMap,
    fs::File,
    net::SocketAddr,
    os::unix::fs::FileExt,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use damselfly_common::{RateLimiter, TokenKey, vouch::Vouch};
use damselfly_proto::{
    DecodeError, FRAME_HEADER_LEN, MAX_MESSAGE_LEN, PROTOCOL_VERSION, PieceRequest, PieceResponse,
    PieceStatus, decode, encode_frame,
};
use damselfly_swarm::{Bitmap, piece_range};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, trace, warn};

use crate::relay::{Arrival, ArrivalGuard, Progress};

/// A task this peer serves from its (partial) content file.
#[derive(Debug)]
pub struct ServedTask {
    file: Arc<File>,
    content_length: u64,
    piece_size: u32,
    pub(crate) have: RwLock<Bitmap>,
    /// Each held piece's digest as the supernode vouched for it, sent with the piece
    /// (`None`: held without one, e.g. a copy made before digests were vouched).
    vouches: RwLock<Vec<Option<Vouch>>>,
    /// Pieces arriving now and relayed while they do ([`crate::relay`]).
    arriving: Mutex<HashMap<u32, Arc<Arrival>>>,
    /// Pieces announced as arriving whose transfer then failed (and not held since): a
    /// child asking for one is told `Withdrawn`, not `NotFound` (it was not lied to).
    withdrawn: RwLock<Bitmap>,
    /// Each piece marked (`false`) or starting to arrive (`true`), for the children
    /// subscribed to this task's announcements.
    pub(crate) news: tokio::sync::broadcast::Sender<(u32, bool)>,
    /// Cancelled when the task stops being served: its announcement connections close.
    pub(crate) closed: CancellationToken,
}

impl ServedTask {
    /// Serves `file`, which holds the task's content at piece offsets.
    pub fn new(file: Arc<File>, content_length: u64, piece_size: u32, pieces: u32) -> Self {
        Self {
            file,
            content_length,
            piece_size,
            have: RwLock::new(Bitmap::new(pieces)),
            vouches: RwLock::new(vec![None; pieces as usize]),
            arriving: Mutex::new(HashMap::new()),
            withdrawn: RwLock::new(Bitmap::new(pieces)),
            news: tokio::sync::broadcast::channel(crate::announce::NEWS_BACKLOG).0,
            closed: CancellationToken::new(),
        }
    }

    /// The content file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The content file, shared (piece jobs write into it while it is served).
    pub fn shared_file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// Marks a verified, written piece servable.
    pub fn mark(&self, piece: u32) {
        self.mark_vouched(piece, None);
    }

    /// Marks a verified, written piece servable, with the supernode's vouch for its digest
    /// (checked by the caller), which goes with the piece to whoever asks for it. Children
    /// it was being relayed to get its last bytes.
    pub fn mark_vouched(&self, piece: u32, vouch: Option<Vouch>) {
        if let Some(v) = vouch
            && let Some(slot) = self.vouches.write().get_mut(piece as usize)
        {
            *slot = Some(v);
        }
        let fresh = {
            let mut have = self.have.write();
            let fresh = !have.get(piece);
            have.set(piece);
            fresh
        };
        {
            let mut withdrawn = self.withdrawn.write();
            if piece < withdrawn.len() {
                withdrawn.clear(piece);
            }
        }
        if let Some(arrival) = self.arriving.lock().remove(&piece) {
            arrival.progress.send_replace(Progress::Verified);
        }
        if fresh {
            // No subscriber is not an error.
            let _ = self.news.send((piece, false));
        }
    }

    /// Publishes `piece` as arriving (announced to the children that take arriving pieces,
    /// served to their streamed requests); `None` when it is held or arriving already.
    pub(crate) fn begin_arrival(
        self: &Arc<Self>,
        piece: u32,
        vouch: Option<Vouch>,
        upstream: Vec<u64>,
    ) -> Option<ArrivalGuard> {
        {
            let have = self.have.read();
            if piece >= have.len() || have.get(piece) {
                return None;
            }
        }
        let arrival = {
            let mut arriving = self.arriving.lock();
            if arriving.contains_key(&piece) {
                return None;
            }
            let arrival = Arc::new(Arrival {
                progress: tokio::sync::watch::channel(Progress::Arriving(0)).0,
                vouch,
                upstream,
            });
            arriving.insert(piece, arrival.clone());
            arrival
        };
        let _ = self.news.send((piece, true));
        Some(ArrivalGuard::new(self.clone(), piece, arrival))
    }

    /// The transfer behind `arrival` ended; unless the piece was verified, its children are
    /// told it is withdrawn.
    pub(crate) fn end_arrival(&self, piece: u32, arrival: &Arc<Arrival>) {
        let mut arriving = self.arriving.lock();
        if !arriving
            .get(&piece)
            .is_some_and(|a| Arc::ptr_eq(a, arrival))
        {
            return; // Verified (mark_vouched took it).
        }
        arriving.remove(&piece);
        if self.have.read().get(piece) {
            arrival.progress.send_replace(Progress::Verified);
        } else {
            self.withdrawn.write().set(piece);
            arrival.progress.send_replace(Progress::Lost);
        }
    }

    /// Whether `piece` was announced as arriving and then lost (and is not held).
    pub(crate) fn was_withdrawn(&self, piece: u32) -> bool {
        let w = self.withdrawn.read();
        piece < w.len() && w.get(piece)
    }

    /// The piece if it is arriving now.
    pub(crate) fn arrival(&self, piece: u32) -> Option<Arc<Arrival>> {
        self.arriving.lock().get(&piece).cloned()
    }

    /// Pieces held, and with `arriving` those arriving too, as a bitfield.
    pub(crate) fn bitfield(&self, arriving: bool) -> Vec<u8> {
        let mut bits = self.have.read().clone();
        if arriving {
            for &p in self.arriving.lock().keys() {
                if p < bits.len() {
                    bits.set(p);
                }
            }
        }
        bits.to_bytes()
    }
}

/// Test-only misbehaviour, to prove that peers detect and avoid a liar.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Serve honestly.
    #[default]
    None,
    /// Flip a byte of every piece served.
    CorruptUploads,
    /// Answer every piece request with "not held" (while reporting the pieces to the
    /// supernode): a claimant that does not serve what it claims.
    DenyUploads,
}

/// Counts the piece server's refusals, for a daemon's metrics.
pub trait RefusalObserver: Send + Sync + std::fmt::Debug {
    /// A request or subscription without a valid piece token was refused; `reason` is the
    /// [`damselfly_common::TokenError::label`].
    fn piece_token_refused(&self, reason: &'static str);
}

/// What the server answers to one request.
#[derive(Debug)]
pub(crate) enum Answer {
    /// A refusal: the status alone, no bytes.
    Refused(PieceStatus),
    /// No valid piece token: `Unauthorized`, with the reason.
    Unauthorized(String),
    /// The piece, holding an upload slot until it is sent.
    Piece {
        /// Its bytes, or where they lie.
        body: Body,
        /// The supernode's vouch for its digest, if this peer holds one.
        vouch: Option<Vouch>,
        /// The slot, released when the answer is dropped.
        _slot: UploadSlot,
    },
}

/// A piece's bytes as an answer carries them.
#[derive(Debug)]
pub(crate) enum Body {
    /// Read into memory.
    Bytes(Bytes),
    /// A piece still arriving: `len` bytes of `file` at `offset`, sent as they come
    /// ([`crate::relay::send_streamed`]).
    Arriving {
        /// Its progress.
        arrival: Arc<Arrival>,
        /// The task's content file.
        file: Arc<File>,
        /// Where the piece starts.
        offset: u64,
        /// The piece's length.
        len: u64,
    },
    /// `len` bytes of `file` at `offset`, for the transport to send from the file itself.
    File {
        /// The task's content file.
        file: Arc<File>,
        /// Where the piece starts.
        offset: u64,
        /// The piece's length.
        len: u64,
    },
}

impl Body {
    /// Sends an arriving piece's bytes as they come ([`crate::relay::send_streamed`]);
    /// whether the whole piece went. Any other body is the transport's to send: `true`.
    ///
    /// # Errors
    /// The connection or the read from the file failed.
    pub(crate) async fn stream<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        wr: &mut W,
    ) -> std::io::Result<bool> {
        match self {
            Self::Arriving {
                arrival,
                file,
                offset,
                len,
            } => crate::relay::send_streamed(wr, arrival, file, *offset, *len).await,
            Self::Bytes(_) | Self::File { .. } => Ok(true),
        }
    }

    /// The piece's length.
    pub(crate) fn len(&self) -> u64 {
        match self {
            Self::Bytes(b) => b.len() as u64,
            Self::File { len, .. } | Self::Arriving { len, .. } => *len,
        }
    }
}

impl Answer {
    /// The response frame that goes before the bytes.
    pub(crate) fn header(&self) -> Vec<u8> {
        let (status, length, reason, vouch) = match self {
            Self::Refused(status) => (*status, 0, String::new(), None),
            Self::Unauthorized(reason) => (PieceStatus::Unauthorized, 0, reason.clone(), None),
            Self::Piece { body, vouch, .. } => (PieceStatus::Ok, body.len(), String::new(), *vouch),
        };
        let relays = match self {
            Self::Piece {
                body: Body::Arriving { arrival, .. },
                ..
            } => Some(arrival.upstream.clone()),
            _ => None,
        };
        encode_frame(&PieceResponse {
            version: PROTOCOL_VERSION,
            status: status as i32,
            length,
            reason,
            digest: vouch.map(|v| v.digest.0.to_vec()).unwrap_or_default(),
            signature: vouch.map(|v| v.signature.to_vec()).unwrap_or_default(),
            streamed: relays.is_some(),
            relays: relays.unwrap_or_default(),
        })
    }
}

/// One upload slot in use; counted in [`PieceServer::uploading`] until dropped.
#[derive(Debug)]
pub(crate) struct UploadSlot {
    _permit: OwnedSemaphorePermit,
    server: Arc<PieceServer>,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.server.uploading.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves pieces of registered tasks.
#[derive(Debug)]
pub struct PieceServer {
    tasks: RwLock<HashMap<String, Arc<ServedTask>>>,
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot, and the most allowed before new ones get `Busy`.
    queued: AtomicU32,
    max_queued: u32,
    limiter: Option<RateLimiter>,
    uploading: AtomicU32,
    bytes_served: AtomicU64,
    /// Answers begun with a piece still arriving.
    relayed: AtomicU64,
    fault: Fault,
    /// [`ServerLimits::sendfile`].
    sendfile: bool,
    /// Announcement connections open now.
    pub(crate) subscribers: AtomicU32,
    /// The cluster's piece-token key; `None`: requests are not checked.
    tokens: Option<TokenKey>,
    /// Where token refusals are counted besides [`PieceServer::token_refusals`].
    observer: Option<Arc<dyn RefusalObserver>>,
    token_refusals: AtomicU64,
}

/// Piece server limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Concurrent uploads (pieces read and being sent).
    pub upload_slots: u32,
    /// Requests that may wait for a slot before further ones are answered `Busy`.
    pub upload_queue: u32,
    /// Upload rate limit in bytes per second; 0 = unlimited.
    pub upload_rate: u64,
    /// Send pieces over TCP straight from the content file (`sendfile`) instead of reading
    /// them into a buffer first.
    pub sendfile: bool,
}

impl PieceServer {
    /// A server with the given limits.
    pub fn new(limits: ServerLimits, fault: Fault) -> Self {
        Self {
            tasks: RwLock::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(limits.upload_slots.max(1) as usize)),
            queued: AtomicU32::new(0),
            max_queued: limits.upload_queue,
            limiter: (limits.upload_rate > 0).then(|| RateLimiter::new(limits.upload_rate)),
            uploading: AtomicU32::new(0),
            bytes_served: AtomicU64::new(0),
            relayed: AtomicU64::new(0),
            fault,
            sendfile: limits.sendfile,
            subscribers: AtomicU32::new(0),
            tokens: None,
            observer: None,
            token_refusals: AtomicU64::new(0),
        }
    }

    /// Checks every request's piece token with `key` (the cluster secret's), counting
    /// refusals in `observer` too.
    #[must_use]
    pub fn with_tokens(
        mut self,
        key: Option<TokenKey>,
        observer: Option<Arc<dyn RefusalObserver>>,
    ) -> Self {
        self.tokens = key;
        self.observer = observer;
        self
    }

    /// Whether requests must carry a valid piece token.
    pub fn checks_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// Requests and subscriptions refused for want of a valid piece token so far.
    pub fn token_refusals(&self) -> u64 {
        self.token_refusals.load(Ordering::Relaxed)
    }

    /// Checks that `token` admits `peer_id` to `task_id` (always, without a key); on a
    /// refusal, logs it, counts it and returns the reason for the requester.
    pub(crate) fn admit(
        &self,
        task_id: &str,
        peer_id: u64,
        token: &[u8],
        remote: SocketAddr,
        what: &'static str,
    ) -> Result<(), String> {
        let Some(key) = &self.tokens else {
            return Ok(());
        };
        key.verify_now(token, task_id, peer_id)
            .map(drop)
            .map_err(|e| {
                self.token_refusals.fetch_add(1, Ordering::Relaxed);
                if let Some(o) = &self.observer {
                    o.piece_token_refused(e.label());
                }
                info!(
                    peer = %remote,
                    requester = peer_id,
                    task = task_id,
                    reason = e.label(),
                    "refused a {what} without a valid piece token: {e}"
                );
                e.to_string()
            })
    }

    /// Starts serving `task`.
    pub fn add(&self, task_id: &str, task: Arc<ServedTask>) {
        if let Some(old) = self.tasks.write().insert(task_id.to_owned(), task) {
            // Its subscribers reconnect and get the new copy's bitfield.
            old.closed.cancel();
        }
    }

    /// Stops serving `task_id`.
    pub fn remove(&self, task_id: &str) {
        if let Some(task) = self.tasks.write().remove(task_id) {
            task.closed.cancel();
        }
    }

    /// The task served under `task_id`.
    pub(crate) fn task(&self, task_id: &str) -> Option<Arc<ServedTask>> {
        self.tasks.read().get(task_id).cloned()
    }

    /// Uploads in progress.
    pub fn uploading(&self) -> u32 {
        self.uploading.load(Ordering::Relaxed)
    }

    /// Answers begun with a piece still arriving here (relayed while it arrived).
    pub fn relayed_pieces(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }

    /// Bytes served to other peers so far.
    pub fn bytes_served(&self) -> u64 {
        self.bytes_served.load(Ordering::Relaxed)
    }

    /// Answers `request`: a refusal, or the piece with an upload slot held. Waits in the
    /// upload queue while every slot is taken, unless the queue is full (`Busy`). With
    /// `from_file` (a transport that can send from the file) and `sendfile` on, the piece
    /// is only read ahead by the kernel and answered as [`Body::File`]; otherwise it is read
    /// into memory.
    ///
    /// # Errors
    /// Reading the piece from the content file failed (logged here).
    pub(crate) async fn prepare(
        self: &Arc<Self>,
        request: &PieceRequest,
        remote: SocketAddr,
        from_file: bool,
    ) -> Result<Answer, std::io::Error> {
        if let Err(reason) = self.admit(
            &request.task_id,
            request.peer_id,
            &request.token,
            remote,
            "piece request",
        ) {
            return Ok(Answer::Unauthorized(reason));
        }
        let task = self.tasks.read().get(&request.task_id).cloned();
        let Some(task) = task else {
            return Ok(Answer::Refused(PieceStatus::UnknownTask));
        };
        if self.fault == Fault::DenyUploads {
            return Ok(Answer::Refused(PieceStatus::NotFound));
        }
        // Held, or (to a requester that takes it) arriving and relayed as it comes.
        let arriving = if task.have.read().get(request.piece) {
            None
        } else if !request.streamed {
            return Ok(Answer::Refused(PieceStatus::NotFound));
        } else if let Some(arrival) = task.arrival(request.piece) {
            if arrival.upstream.contains(&request.peer_id) {
                // Its bytes pass through the requester on their way here.
                return Ok(Answer::Refused(PieceStatus::Withdrawn));
            }
            Some(arrival)
        } else if task.was_withdrawn(request.piece) {
            return Ok(Answer::Refused(PieceStatus::Withdrawn));
        } else {
            return Ok(Answer::Refused(PieceStatus::NotFound));
        };
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if self.queued.fetch_add(1, Ordering::Relaxed) >= self.max_queued {
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                    return Ok(Answer::Refused(PieceStatus::Busy));
                }
                let permit = self.slots.clone().acquire_owned().await;
                self.queued.fetch_sub(1, Ordering::Relaxed);
                // The semaphore is never closed.
                permit.map_err(|e| std::io::Error::other(e.to_string()))?
            }
        };
        self.uploading.fetch_add(1, Ordering::Relaxed);
        let slot = UploadSlot {
            _permit: permit,
            server: self.clone(),
        };
        let piece = request.piece;
        let range = piece_range(task.content_length, task.piece_size, piece);
        let len = range.end - range.start;
        let file = task.file.clone();
        if let Some(arrival) = arriving {
            self.relayed.fetch_add(1, Ordering::Relaxed);
            return Ok(Answer::Piece {
                vouch: arrival.vouch,
                body: Body::Arriving {
                    arrival,
                    file,
                    offset: range.start,
                    len,
                },
                _slot: slot,
            });
        }
        let vouch = task.vouches.read().get(piece as usize).copied().flatten();
        if from_file && self.sendfile && self.fault == Fault::None {
            // Start the disk read now, while the previous answer is being sent; advice only,
            // so a failure to give it changes nothing but speed.
            let advise = file.clone();
            let _ = tokio::task::spawn_blocking(move || {
                rustix::fs::fadvise(
                    &*advise,
                    range.start,
                    std::num::NonZeroU64::new(len),
                    rustix::fs::Advice::WillNeed,
                )
            })
            .await;
            return Ok(Answer::Piece {
                body: Body::File {
                    file,
                    offset: range.start,
                    len,
                },
                vouch,
                _slot: slot,
            });
        }
        let mut data = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, range.start).map(|()| buf)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .inspect_err(|e| warn!(error = %e, piece, "reading a piece to serve failed"))?;
        if self.fault == Fault::CorruptUploads
            && let Some(b) = data.first_mut()
        {
            *b ^= 0xff;
        }
        Ok(Answer::Piece {
            body: Body::Bytes(Bytes::from(data)),
            vouch,
            _slot: slot,
        })
    }

    /// Waits for the upload rate limit to allow `answer`'s bytes. Call just before sending.
    pub(crate) async fn pace(&self, answer: &Answer) {
        if let (Some(limiter), Answer::Piece { body, .. }) = (&self.limiter, answer) {
            limiter.acquire(body.len()).await;
        }
    }

    /// Counts `answer`'s bytes as served. Call once they are sent.
    pub(crate) fn sent(&self, answer: &Answer) {
        if let Answer::Piece { body, .. } = answer {
            self.bytes_served.fetch_add(body.len(), Ordering::Relaxed);
            trace!(bytes = body.len(), "piece served");
        }
    }

    /// Accepts QUIC connections until `shutdown`; each connection and stream runs on
    /// `tracker`.
    pub async fn run_quic(
        self: Arc<Self>,
        endpoint: quinn::Endpoint,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => return,
                i = endpoint.accept() => i,
            };
            let Some(incoming) = incoming else { return };
            let server = self.clone();
            let t = tracker.clone();
            tracker.spawn(async move {
                match incoming.await {
                    Ok(conn) => server.serve_quic_connection(conn, t).await,
                    Err(e) => debug!(error = %e, "peer handshake failed"),
                }
            });
        }
    }

    async fn serve_quic_connection(self: Arc<Self>, conn: quinn::Connection, tracker: TaskTracker) {
        let remote = conn.remote_address();
        loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(e) => {
                    debug!(peer = %remote, reason = %e, "peer connection closed");
                    return;
                }
            };
            let server = self.clone();
            tracker.spawn(async move {
                if let Err(e) = server.serve_quic_stream(send, recv, remote).await {
                    debug!(peer = %remote, error = %e, "piece stream failed");
                }
            });
        }
    }

    async fn serve_quic_stream(
        self: Arc<Self>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        remote: SocketAddr,
    ) -> Result<(), StreamError> {
        let raw = recv
            .read_to_end(MAX_MESSAGE_LEN.min(64 << 10))
            .await
            .map_err(|e| StreamError(e.to_string()))?;
        let answer = match parse_request(&raw) {
            Ok(request) => self
                .prepare(&request, remote, false)
                .await
                .map_err(|e| StreamError(e.to_string()))?,
            Err(e) => {
                debug!(error = %e, "malformed piece request");
                Answer::Refused(PieceStatus::BadRequest)
            }
        };
        self.pace(&answer).await;
        send.write_all(&answer.header())
            .await
            .map_err(|e| StreamError(e.to_string()))?;
        let mut whole = true;
        match &answer {
            Answer::Piece {
                body: Body::Bytes(data),
                ..
            } => {
                // Handed to QUIC as it is, not copied.
                send.write_chunk(data.clone())
                    .await
                    .map_err(|e| StreamError(e.to_string()))?;
            }
            Answer::Piece {
                body: body @ Body::Arriving { .. },
                ..
            } => {
                whole = body
                    .stream(&mut send)
                    .await
                    .map_err(|e| StreamError(e.to_string()))?;
            }
            _ => {}
        }
        send.finish().map_err(|e| StreamError(e.to_string()))?;
        if whole {
            self.sent(&answer);
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct StreamError(String);

/// Decodes a whole request frame (header and body) and validates it.
///
/// # Errors
/// A truncated or oversized frame, malformed protobuf, another protocol version, a bad field.
pub(crate) fn parse_request(raw: &[u8]) -> Result<PieceRequest, DecodeError> {
    let len = damselfly_proto::frame_len(raw)?;
    let body = raw
        .get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len)
        .ok_or(DecodeError::Truncated {
            need: FRAME_HEADER_LEN + len,
            have: raw.len(),
        })?;
    let req: PieceRequest = decode(body)?;
    req.validate()?;
    Ok(req)
}
