//! The TCP peer transport (the default): one connection per parent, requests pipelined.
//!
//! ```text
//!  child                                        parent
//!    ── preamble "DMSF" + version (u32 BE) ──▶
//!    ◀── preamble ───────────────────────────     (another version: its preamble, then close)
//!    ── PieceRequest frame ──▶ ──▶ ──▶            up to MAX_PIPELINE in flight
//!    ◀── PieceResponse frame + `length` raw bytes, one per request, in request order
//! ```
//!
//! Frames are [`damselfly_proto::encode_frame`]'s (4-byte big-endian length + protobuf). On
//! the parent, a reading stage takes the next request, waits for an upload slot and reads the
//! piece from disk while the writing stage sends the previous one (one piece of read-ahead).
//! A malformed or oversized frame, or one of another protocol version, is answered
//! `BadRequest` and the connection is closed; other connections are untouched.
//!
//! On the child, a [`Link`] is one connection: a writer task sends request frames, a reader
//! task reads the answers in order and hands each to its waiting [`Link::fetch`] call. When
//! nothing arrives for `idle_timeout` while requests are outstanding, or on any transport
//! error, the link fails every outstanding request and closes; the next fetch reconnects.
//! Integrity does not depend on the transport: every piece is checked against its sha256.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use damselfly_proto::{
    ConnKind, DecodeError, PREAMBLE_LEN, PieceRequest, PieceStatus, check_any_preamble,
    check_preamble, decode, encode_announce_preamble, encode_frame, encode_preamble,
};
use tokio::{
    io::Interest,
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{mpsc, oneshot},
};
use tokio_util::{
    sync::CancellationToken,
    task::{AbortOnDropHandle, TaskTracker},
};
use tracing::debug;

use crate::{
    fetch::{FetchError, Fetched, PieceSink, read_answer},
    server::{Answer, Body, PieceServer},
};

/// Requests one connection may have outstanding; the parent stops reading further ones until
/// it has answered some (TCP flow control does the rest).
pub const MAX_PIPELINE: usize = 32;

/// Largest request frame read from a child (a task id and a few integers).
const MAX_REQUEST_FRAME: usize = 64 << 10;

/// How long a child keeps a connection on which it has nothing outstanding.
const IDLE_CLOSE: Duration = Duration::from_secs(30);

/// How long a connecting child has to send its preamble and first request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl PieceServer {
    /// Accepts TCP connections on `listener` until `shutdown`; each connection runs on
    /// `tracker`. Accept errors (a full file table) are logged and retried after a pause,
    /// never fatal.
    pub async fn run_tcp(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "accepting a peer connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let server = self.clone();
            let stop = shutdown.clone();
            tracker.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    r = server.serve_tcp(stream, remote) => {
                        if let Err(e) = r {
                            debug!(peer = %remote, error = %e, "peer connection ended");
                        }
                    }
                }
            });
        }
    }

    async fn serve_tcp(
        self: Arc<Self>,
        stream: TcpStream,
        remote: SocketAddr,
    ) -> Result<(), ConnError> {
        let _ = stream.set_nodelay(true);
        keepalive(&stream);
        let (mut rd, mut wr) = stream.into_split();
        let mut theirs = [0u8; PREAMBLE_LEN];
        tokio::time::timeout(HANDSHAKE_TIMEOUT, rd.read_exact(&mut theirs))
            .await
            .map_err(|_| ConnError::Timeout)??;
        // Our preamble goes out whatever theirs says, so a peer of another version learns
        // ours and can say so. An announcement connection is answered in kind.
        let kind = check_any_preamble(&theirs);
        if kind == Ok(ConnKind::Announcements) {
            wr.write_all(&encode_announce_preamble()).await?;
            return self.serve_announcements(rd, wr, remote).await;
        }
        wr.write_all(&encode_preamble()).await?;
        kind?;

        // Reading stage → writing stage, one prepared answer ahead.
        let (tx, mut rx) = mpsc::channel::<Answer>(1);
        let server = self.clone();
        let reader = async move {
            loop {
                // Take the next request only once the writer can accept its answer, so at
                // most one piece is read ahead of the one being sent.
                let Ok(permit) = tx.reserve().await else {
                    return Ok(());
                };
                let request = match read_request(&mut rd).await {
                    Ok(Some(r)) => r,
                    Ok(None) => return Ok(()),
                    Err(ConnError::Decode(e)) => {
                        debug!(error = %e, "malformed piece request; closing the connection");
                        permit.send(Answer::Refused(PieceStatus::BadRequest));
                        return Err(ConnError::Decode(e));
                    }
                    Err(e) => return Err(e),
                };
                let answer = server.prepare(&request, remote, true).await?;
                permit.send(answer);
            }
        };
        let writer = async move {
            while let Some(answer) = rx.recv().await {
                self.pace(&answer).await;
                wr.write_all(&answer.header()).await?;
                let mut whole = true;
                match &answer {
                    Answer::Piece {
                        body: Body::Bytes(data),
                        ..
                    } => wr.write_all(data).await?,
                    Answer::Piece {
                        body: Body::File { file, offset, len },
                        ..
                    } => send_file(&wr, file, *offset, *len).await?,
                    Answer::Piece {
                        body: body @ Body::Arriving { .. },
                        ..
                    } => whole = body.stream(&mut wr).await?,
                    _ => {}
                }
                if whole {
                    self.sent(&answer);
                }
                if matches!(answer, Answer::Refused(PieceStatus::BadRequest)) {
                    break;
                }
            }
            let _ = wr.shutdown().await;
            Ok::<_, ConnError>(())
        };
        // The writer drains every answer the reader queued (a child may half-close after its
        // last request); once it ends, so does the reader, even if blocked on a silent child.
        let reader = AbortOnDropHandle::new(tokio::spawn(reader));
        let written = writer.await;
        if reader.is_finished()
            && let Ok(Err(e)) = reader.await
        {
            return Err(e);
        }
        written
    }
}

/// Opens a connection to a parent: connects within `connect_timeout`, sends `hello` (a
/// preamble and whatever goes with it) and reads the parent's preamble, all within that
/// time again; with no delay and keep-alive probes on.
///
/// # Errors
/// [`FetchError::Transport`] when the parent cannot be reached or does not answer in time.
pub(crate) async fn dial(
    addr: SocketAddr,
    connect_timeout: Duration,
    hello: &[u8],
) -> Result<(OwnedReadHalf, OwnedWriteHalf, [u8; PREAMBLE_LEN]), FetchError> {
    let transport = |reason: String| FetchError::Transport { addr, reason };
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| transport("connect timed out".into()))?
        .map_err(|e| transport(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    keepalive(&stream);
    let (mut rd, mut wr) = stream.into_split();
    let handshake = async {
        wr.write_all(hello).await?;
        let mut theirs = [0u8; PREAMBLE_LEN];
        rd.read_exact(&mut theirs).await?;
        Ok::<_, std::io::Error>(theirs)
    };
    let theirs = tokio::time::timeout(connect_timeout, handshake)
        .await
        .map_err(|_| transport("handshake timed out".into()))?
        .map_err(|e| transport(e.to_string()))?;
    Ok((rd, wr, theirs))
}

/// Sends `len` bytes of `file` from `offset` on the connection by `sendfile(2)`: the kernel
/// moves them from the page cache to the socket, no copy through this process. Waits for
/// the socket to take more whenever it is full, as `write_all` would.
///
/// # Errors
/// The socket failed, or the file ended before `len` bytes (it was truncated under us).
async fn send_file(
    wr: &OwnedWriteHalf,
    file: &std::fs::File,
    mut offset: u64,
    len: u64,
) -> std::io::Result<()> {
    let stream: &TcpStream = wr.as_ref();
    let end = offset.saturating_add(len);
    while offset < end {
        stream.writable().await?;
        // One call moves at most about 2 GiB; pieces are far smaller.
        let count = usize::try_from(end - offset)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match stream.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(stream, file, Some(&mut offset), count).map_err(Into::into)
        }) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the content file ended inside the piece",
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Keep-alive probes on a peer connection, so one whose other end vanished (a host gone,
/// no FIN, no RST) is noticed in about 25 s instead of never.
fn keepalive(stream: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        debug!(error = %e, "cannot enable TCP keep-alive");
    }
}

/// Reads one request frame; `None` at a clean end of stream before a frame starts.
async fn read_request(rd: &mut OwnedReadHalf) -> Result<Option<PieceRequest>, ConnError> {
    let Some(body) = crate::announce::read_frame(rd, MAX_REQUEST_FRAME).await? else {
        return Ok(None);
    };
    let req: PieceRequest = decode(&body)?;
    req.validate()?;
    Ok(Some(req))
}

/// Why a TCP peer connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The other side sent something that is not the protocol.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// The other side went quiet.
    #[error("timed out")]
    Timeout,
}

/// A request waiting for its answer on a [`Link`].
struct Pending {
    sink: PieceSink,
    reply: oneshot::Sender<Result<Fetched, FetchError>>,
}

/// One TCP connection to a parent, with requests pipelined on it.
#[derive(Debug, Clone)]
pub struct Link {
    requests: mpsc::Sender<(Vec<u8>, Pending)>,
    closed: CancellationToken,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("offset", &self.sink.offset)
            .field("len", &self.sink.len)
            .finish()
    }
}

impl Link {
    /// Connects to `addr` and exchanges preambles.
    ///
    /// # Errors
    /// [`FetchError::Transport`] when the parent cannot be reached in `connect_timeout`,
    /// [`FetchError::Protocol`] when it speaks another protocol or version.
    pub async fn connect(
        addr: SocketAddr,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<Self, FetchError> {
        let (rd, mut wr, theirs) = dial(addr, connect_timeout, &encode_preamble()).await?;
        let transport = move |reason: String| FetchError::Transport { addr, reason };
        check_preamble(&theirs).map_err(|e| FetchError::Protocol(format!("{addr}: {e}")))?;

        let (requests, mut outgoing) = mpsc::channel::<(Vec<u8>, Pending)>(MAX_PIPELINE);
        let (pending_tx, pending_rx) = mpsc::unbounded_channel::<Pending>();
        let closed = CancellationToken::new();
        let stop = closed.clone();
        let outstanding = Arc::new(AtomicUsize::new(0));
        let answered = outstanding.clone();
        tokio::spawn(async move {
            let write = async {
                loop {
                    // A connection with nothing outstanding for a while is closed, so a
                    // long-running node does not keep one open to every peer it ever used.
                    let next = match tokio::time::timeout(IDLE_CLOSE, outgoing.recv()).await {
                        Ok(next) => next,
                        Err(_) if outstanding.load(Ordering::Acquire) == 0 => return,
                        Err(_) => continue,
                    };
                    let Some((frame, pending)) = next else { return };
                    if let Err(e) = wr.write_all(&frame).await {
                        let _ = pending.reply.send(Err(transport(e.to_string())));
                        return;
                    }
                    outstanding.fetch_add(1, Ordering::AcqRel);
                    if pending_tx.send(pending).is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = write => {}
            }
            // Dropping the write half closes our side; the reader ends with the connection.
            stop.cancel();
        });
        let stop = closed.clone();
        tokio::spawn(read_answers(
            addr,
            rd,
            pending_rx,
            answered,
            idle_timeout,
            stop,
        ));
        Ok(Self { requests, closed })
    }

    /// Whether the connection has failed or closed (the next fetch should reconnect).
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Closes the connection; outstanding requests fail.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Asks for a piece and waits until its bytes are in `sink`; returns their sha256.
    ///
    /// # Errors
    /// See [`FetchError`]. The bytes are *not* verified here; the caller compares the digest.
    pub async fn fetch_into(
        &self,
        addr: SocketAddr,
        request: &PieceRequest,
        sink: PieceSink,
    ) -> Result<Fetched, FetchError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending { sink, reply };
        let gone = || FetchError::Transport {
            addr,
            reason: "connection closed".into(),
        };
        self.requests
            .send((encode_frame(request), pending))
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// The reading side of a [`Link`]: answers arrive in request order.
async fn read_answers(
    addr: SocketAddr,
    mut rd: OwnedReadHalf,
    mut pending: mpsc::UnboundedReceiver<Pending>,
    outstanding: Arc<AtomicUsize>,
    idle_timeout: Duration,
    closed: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            _ = closed.cancelled() => break,
            p = pending.recv() => p,
        };
        let Some(p) = next else { break };
        let result = tokio::select! {
            _ = closed.cancelled() => Err(FetchError::Transport { addr, reason: "connection closed".into() }),
            r = read_answer(addr, &mut rd, &p.sink, idle_timeout) => r,
        };
        // After a transport or protocol error, or a failed local write mid-piece, the
        // stream's framing is lost: the connection goes. A refusal leaves it up.
        let why = match &result {
            Err(
                e @ (FetchError::Transport { .. }
                | FetchError::Protocol(_)
                | FetchError::Local { .. }),
            ) => Some(e.to_string()),
            Err(
                FetchError::Busy
                | FetchError::Unavailable
                | FetchError::Withdrawn
                | FetchError::Unauthorized(_),
            )
            | Ok(_) => None,
        };
        // The caller may have given up (timeout); the answer was still read off the stream.
        let _ = p.reply.send(result);
        outstanding.fetch_sub(1, Ordering::AcqRel);
        if let Some(why) = why {
            debug!(parent = %addr, error = %why, "peer connection failed");
            break;
        }
    }
    closed.cancel();
    // Everything still outstanding fails so its caller can go elsewhere at once.
    pending.close();
    while let Some(p) = pending.recv().await {
        let _ = p.reply.send(Err(FetchError::Transport {
            addr,
            reason: "connection closed".into(),
        }));
    }
}

/// A TCP listener on `addr` for the piece server: the daemons' one listener helper (dual
/// stack on `[::]` where the system allows, `SO_REUSEADDR`).
pub use damselfly_common::listen::tcp_listener as listener;
