//! The piece server: answers other peers' [`PieceRequest`]s over QUIC with pieces this peer
//! holds, while it is still downloading and afterwards.
//!
//! One bi-directional stream per request: the client sends a frame and finishes its side; the
//! server answers a [`PieceResponse`] frame followed, on `Ok`, by the raw piece bytes. Upload
//! slots bound concurrent uploads; a request over the limit is answered `Busy` at once so the
//! requester tries another parent instead of queueing here.

use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::FileExt,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use damselfly_common::RateLimiter;
use damselfly_proto::{
    MAX_MESSAGE_LEN, PROTOCOL_VERSION, PieceRequest, PieceResponse, PieceStatus, decode,
    encode_frame,
};
use damselfly_swarm::{Bitmap, piece_range};
use parking_lot::RwLock;
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, trace, warn};

/// A task this peer serves from its (partial) content file.
#[derive(Debug)]
pub struct ServedTask {
    file: Arc<File>,
    content_length: u64,
    piece_size: u32,
    have: RwLock<Bitmap>,
}

impl ServedTask {
    /// Serves `file`, which holds the task's content at piece offsets.
    pub fn new(file: Arc<File>, content_length: u64, piece_size: u32, pieces: u32) -> Self {
        Self {
            file,
            content_length,
            piece_size,
            have: RwLock::new(Bitmap::new(pieces)),
        }
    }

    /// The content file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Marks a verified, written piece servable.
    pub fn mark(&self, piece: u32) {
        self.have.write().set(piece);
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
}

/// Serves pieces of registered tasks.
#[derive(Debug)]
pub struct PieceServer {
    tasks: RwLock<HashMap<String, Arc<ServedTask>>>,
    slots: Arc<Semaphore>,
    limiter: Option<RateLimiter>,
    uploading: AtomicU32,
    bytes_served: AtomicU64,
    fault: Fault,
}

impl PieceServer {
    /// A server with `slots` concurrent uploads and an optional upload rate limit (bytes/s).
    pub fn new(slots: u32, upload_rate: u64, fault: Fault) -> Self {
        Self {
            tasks: RwLock::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(slots.max(1) as usize)),
            limiter: (upload_rate > 0).then(|| RateLimiter::new(upload_rate)),
            uploading: AtomicU32::new(0),
            bytes_served: AtomicU64::new(0),
            fault,
        }
    }

    /// Starts serving `task`.
    pub fn add(&self, task_id: &str, task: Arc<ServedTask>) {
        self.tasks.write().insert(task_id.to_owned(), task);
    }

    /// Stops serving `task_id`.
    pub fn remove(&self, task_id: &str) {
        self.tasks.write().remove(task_id);
    }

    /// Uploads in progress.
    pub fn uploading(&self) -> u32 {
        self.uploading.load(Ordering::Relaxed)
    }

    /// Bytes served to other peers so far.
    pub fn bytes_served(&self) -> u64 {
        self.bytes_served.load(Ordering::Relaxed)
    }

    /// Accepts connections until `shutdown`; each connection and stream runs on `tracker`.
    pub async fn run(
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
                    Ok(conn) => server.serve_connection(conn, t).await,
                    Err(e) => debug!(error = %e, "peer handshake failed"),
                }
            });
        }
    }

    async fn serve_connection(self: Arc<Self>, conn: quinn::Connection, tracker: TaskTracker) {
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
                if let Err(e) = server.serve_stream(send, recv).await {
                    debug!(peer = %remote, error = %e, "piece stream failed");
                }
            });
        }
    }

    async fn serve_stream(
        &self,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> Result<(), StreamError> {
        let raw = recv
            .read_to_end(MAX_MESSAGE_LEN.min(64 << 10))
            .await
            .map_err(|e| StreamError(e.to_string()))?;
        let reply = |status: PieceStatus, length: u64| {
            encode_frame(&PieceResponse {
                version: PROTOCOL_VERSION,
                status: status as i32,
                length,
            })
        };
        let request = match parse_request(&raw) {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "malformed piece request");
                return answer(&mut send, &reply(PieceStatus::BadRequest, 0), Bytes::new()).await;
            }
        };
        let task = self.tasks.read().get(&request.task_id).cloned();
        let Some(task) = task else {
            return answer(&mut send, &reply(PieceStatus::UnknownTask, 0), Bytes::new()).await;
        };
        if !task.have.read().get(request.piece) {
            return answer(&mut send, &reply(PieceStatus::NotFound, 0), Bytes::new()).await;
        }
        let Ok(_permit) = self.slots.clone().try_acquire_owned() else {
            return answer(&mut send, &reply(PieceStatus::Busy, 0), Bytes::new()).await;
        };
        self.uploading.fetch_add(1, Ordering::Relaxed);
        let result = self.upload(&task, request.piece, &mut send, reply).await;
        self.uploading.fetch_sub(1, Ordering::Relaxed);
        result
    }

    async fn upload(
        &self,
        task: &ServedTask,
        piece: u32,
        send: &mut quinn::SendStream,
        reply: impl Fn(PieceStatus, u64) -> Vec<u8>,
    ) -> Result<(), StreamError> {
        let range = piece_range(task.content_length, task.piece_size, piece);
        let len = range.end - range.start;
        let file = task.file.clone();
        let mut data = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, range.start).map(|()| buf)
        })
        .await
        .map_err(|e| StreamError(e.to_string()))?
        .map_err(|e| {
            warn!(error = %e, piece, "reading a piece to serve failed");
            StreamError(e.to_string())
        })?;
        if self.fault == Fault::CorruptUploads
            && let Some(b) = data.first_mut()
        {
            *b ^= 0xff;
        }
        if let Some(limiter) = &self.limiter {
            limiter.acquire(len).await;
        }
        answer(send, &reply(PieceStatus::Ok, len), Bytes::from(data)).await?;
        self.bytes_served.fetch_add(len, Ordering::Relaxed);
        trace!(piece, bytes = len, "piece served");
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct StreamError(String);

fn parse_request(raw: &[u8]) -> Result<PieceRequest, damselfly_proto::DecodeError> {
    let len = damselfly_proto::frame_len(raw)?;
    let body = raw
        .get(damselfly_proto::FRAME_HEADER_LEN..damselfly_proto::FRAME_HEADER_LEN + len)
        .ok_or(damselfly_proto::DecodeError::Truncated {
            need: damselfly_proto::FRAME_HEADER_LEN + len,
            have: raw.len(),
        })?;
    let req: PieceRequest = decode(body)?;
    req.validate()?;
    Ok(req)
}

/// Writes a whole answer (`header`, then `body`) and finishes the stream. The body is handed
/// to QUIC as it is, not copied.
async fn answer(
    send: &mut quinn::SendStream,
    header: &[u8],
    body: Bytes,
) -> Result<(), StreamError> {
    send.write_all(header)
        .await
        .map_err(|e| StreamError(e.to_string()))?;
    send.write_chunk(body)
        .await
        .map_err(|e| StreamError(e.to_string()))?;
    send.finish().map_err(|e| StreamError(e.to_string()))
}
