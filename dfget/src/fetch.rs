//! Fetching pieces from parents, over TCP ([`crate::tcp::Link`], pipelined) or QUIC (one
//! stream per piece), reusing one connection per parent.
//!
//! A piece is not gathered in memory: its bytes go from the socket, a block at a time, into
//! the sha256 of the piece and to their final place in the output file ([`PieceSink`]), while
//! each block is still in the CPU's cache. The caller compares the digest and only then
//! marks the piece held; the bytes of a piece that fails are never served or reported, and
//! are overwritten when the piece is fetched again.

use std::{
    collections::HashMap, fs::File, net::SocketAddr, os::unix::fs::FileExt, path::Path,
    str::FromStr, sync::Arc, time::Duration,
};

use damselfly_common::{Digest, Sha256Hasher, vouch::Vouch};
use tokio::io::{AsyncRead, AsyncReadExt as _};

use damselfly_proto::{
    FRAME_HEADER_LEN, MAX_STREAM_CHUNK, PROTOCOL_VERSION, PieceRequest, PieceResponse, PieceStatus,
    STREAM_END, STREAM_WITHDRAWN, decode, encode_frame, frame_len,
};
use parking_lot::Mutex;

use crate::{
    quic::SERVER_NAME,
    relay::{ArrivalGuard, Relay},
    tcp::Link,
};

/// Why a piece could not be fetched from a parent.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Connecting or transferring failed (the parent may be gone).
    #[error("transfer from {addr} failed: {reason}")]
    Transport {
        /// The parent.
        addr: SocketAddr,
        /// The cause.
        reason: String,
    },
    /// The parent does not hold the piece or the task.
    #[error("parent does not have the piece")]
    Unavailable,
    /// The parent's upload queue is full.
    #[error("parent is busy")]
    Busy,
    /// The parent was relaying the piece while it arrived and it is not coming (its own
    /// transfer failed), or we are upstream of it: ask elsewhere, not the parent's fault.
    #[error("parent withdrew the piece")]
    Withdrawn,
    /// The parent checks piece tokens and refused ours (none, expired, or the parent's
    /// cluster secret differs from the supernode's).
    #[error("parent refused our piece token: {0}")]
    Unauthorized(String),
    /// The parent broke the protocol (wrong length, malformed frame, another version).
    #[error("parent broke the protocol: {0}")]
    Protocol(String),
    /// Writing the received bytes locally failed (disk full…): not the parent's fault.
    #[error("writing {path}: {source}")]
    Local {
        /// The output file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Where a fetched piece's bytes go: `len` bytes at `offset` of `file`.
#[derive(Debug, Clone)]
pub struct PieceSink {
    /// The output file (shared with the piece server and the other piece jobs).
    pub file: Arc<File>,
    /// Its path, for errors.
    pub path: Arc<Path>,
    /// Where the piece starts in the file.
    pub offset: u64,
    /// The piece's length.
    pub len: u64,
    /// Publish the piece while it arrives, to relay it on ([`crate::relay`]); `None`: serve
    /// it only once verified.
    pub relay: Option<Relay>,
}

/// Bytes moved per step from the socket through the hash into the file: small enough to stay
/// in the CPU's cache between the three (copying 4 MiB pieces through memory at once ran at a
/// third of the speed), large enough that the syscalls cost little.
const BLOCK: usize = 256 << 10;

/// A piece's bytes on their way into the file: each block is hashed and written at its
/// place as it comes, and the whole must be exactly the piece's length.
pub(crate) struct PieceWriter<'a> {
    sink: &'a PieceSink,
    hasher: Sha256Hasher,
    done: u64,
    /// The piece as published to children while it arrives.
    arrival: Option<ArrivalGuard>,
}

impl<'a> PieceWriter<'a> {
    pub(crate) fn new(sink: &'a PieceSink) -> Self {
        Self {
            sink,
            hasher: Sha256Hasher::new(),
            done: 0,
            arrival: None,
        }
    }

    /// Relays the piece while it arrives, if the sink says to: with the `vouch` and the
    /// `relays` upstream its sender named. Call before the first byte.
    pub(crate) fn relay(&mut self, vouch: Option<Vouch>, relays: &[u64]) {
        if let Some(r) = &self.sink.relay {
            self.arrival = r.begin(vouch, relays);
        }
    }

    /// Bytes still to come.
    pub(crate) fn remaining(&self) -> u64 {
        self.sink.len - self.done
    }

    /// Hashes `block` and writes it after the bytes already written. The caller keeps
    /// `block` within [`PieceWriter::remaining`].
    ///
    /// # Errors
    /// The write failed (a local error, not the source's).
    pub(crate) fn push(&mut self, block: &[u8]) -> std::io::Result<()> {
        self.hasher.update(block);
        self.sink
            .file
            .write_all_at(block, self.sink.offset + self.done)?;
        self.done += block.len() as u64;
        if let Some(a) = &self.arrival {
            a.advance(self.done);
        }
        Ok(())
    }

    /// The sha256 of the piece, once every byte is in, with the piece as relayed (to keep
    /// until it is verified); `None` if some bytes are missing.
    pub(crate) fn finish(self) -> Option<(Digest, Option<ArrivalGuard>)> {
        (self.done == self.sink.len).then(|| (self.hasher.finish(), self.arrival))
    }
}

/// Largest response header frame accepted from a parent.
const MAX_RESPONSE_FRAME: usize = 1024;

/// Reads one answer from a parent: the response header frame (at most 1 KiB) and, on `Ok`,
/// exactly `sink.len` bytes into the file at `sink.offset`, hashed on the way; each read may
/// take at most `idle`. The same for a TCP connection and a QUIC stream.
///
/// # Errors
/// [`FetchError::Busy`]/[`FetchError::Unavailable`] for a refusal,
/// [`FetchError::Protocol`] for a malformed or wrong header, [`FetchError::Transport`] when
/// the stream ends early, fails or stalls, [`FetchError::Local`] when the write fails.
pub(crate) async fn read_answer<R: AsyncRead + Unpin>(
    addr: SocketAddr,
    rd: &mut R,
    sink: &PieceSink,
    idle: Duration,
) -> Result<Fetched, FetchError> {
    let transport = |reason: String| FetchError::Transport { addr, reason };
    let stalled = || transport(format!("no data for {idle:?}"));
    let mut header = [0u8; FRAME_HEADER_LEN];
    tokio::time::timeout(idle, rd.read_exact(&mut header))
        .await
        .map_err(|_| stalled())?
        .map_err(|e| transport(e.to_string()))?;
    let len = frame_len(&header).map_err(|e| FetchError::Protocol(e.to_string()))?;
    if len > MAX_RESPONSE_FRAME {
        return Err(FetchError::Protocol(format!(
            "response header of {len} bytes"
        )));
    }
    let mut body = vec![0u8; len];
    tokio::time::timeout(idle, rd.read_exact(&mut body))
        .await
        .map_err(|_| stalled())?
        .map_err(|e| transport(e.to_string()))?;
    let answer = check_response(&body, sink.len)?;
    let mut piece = PieceWriter::new(sink);
    piece.relay(answer.vouch, &answer.relays);
    if answer.streamed {
        read_streamed(addr, rd, &mut piece, idle).await?;
    } else {
        read_raw(addr, rd, &mut piece, idle).await?;
    }
    let (digest, arrival) = piece
        .finish()
        .ok_or_else(|| transport("short piece".into()))?;
    Ok(Fetched {
        digest,
        vouch: answer.vouch,
        arrival,
    })
}

/// Reads exactly `piece.remaining()` bytes into `piece`, a block at a time.
async fn read_raw<R: AsyncRead + Unpin>(
    addr: SocketAddr,
    rd: &mut R,
    piece: &mut PieceWriter<'_>,
    idle: Duration,
) -> Result<(), FetchError> {
    let len = piece.sink.len;
    let mut buf = vec![0u8; BLOCK.min(usize::try_from(len).unwrap_or(BLOCK)).max(1)];
    read_into(addr, rd, piece, &mut buf, piece.remaining(), idle).await
}

/// Reads `n` bytes into `piece`, a block of `buf` at a time: each block filled (several
/// socket reads) before it is hashed and written, while it is still in the CPU's cache.
async fn read_into<R: AsyncRead + Unpin>(
    addr: SocketAddr,
    rd: &mut R,
    piece: &mut PieceWriter<'_>,
    buf: &mut [u8],
    n: u64,
    idle: Duration,
) -> Result<(), FetchError> {
    let len = piece.sink.len;
    let mut left = n;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let at = len - piece.remaining();
        read_block(addr, rd, &mut buf[..want], idle, at, len).await?;
        piece
            .push(&buf[..want])
            .map_err(|source| FetchError::Local {
                path: piece.sink.path.to_path_buf(),
                source,
            })?;
        left -= want as u64;
    }
    Ok(())
}

/// Reads a streamed body ([`damselfly_proto::PieceResponse::streamed`]) into `piece`:
/// chunks until [`STREAM_END`] with exactly the piece's bytes, or [`STREAM_WITHDRAWN`].
async fn read_streamed<R: AsyncRead + Unpin>(
    addr: SocketAddr,
    rd: &mut R,
    piece: &mut PieceWriter<'_>,
    idle: Duration,
) -> Result<(), FetchError> {
    let len = piece.sink.len;
    let mut buf = vec![0u8; BLOCK];
    loop {
        let mut be = [0u8; 4];
        read_block(addr, rd, &mut be, idle, len - piece.remaining(), len).await?;
        let chunk = u32::from_be_bytes(be);
        match chunk {
            STREAM_WITHDRAWN => return Err(FetchError::Withdrawn),
            STREAM_END if piece.remaining() == 0 => return Ok(()),
            STREAM_END => {
                return Err(FetchError::Protocol(format!(
                    "streamed piece ended after {} of {len} bytes",
                    len - piece.remaining()
                )));
            }
            n if n > MAX_STREAM_CHUNK || u64::from(n) > piece.remaining() => {
                return Err(FetchError::Protocol(format!(
                    "streamed chunk of {n} bytes with {} left",
                    piece.remaining()
                )));
            }
            n => read_into(addr, rd, piece, &mut buf, u64::from(n), idle).await?,
        }
    }
}

/// Fills `buf` from `rd`, each read within `idle`; `at` of `len` bytes are in so far (for
/// the error).
async fn read_block<R: AsyncRead + Unpin>(
    addr: SocketAddr,
    rd: &mut R,
    buf: &mut [u8],
    idle: Duration,
    at: u64,
    len: u64,
) -> Result<(), FetchError> {
    let transport = |reason: String| FetchError::Transport { addr, reason };
    let mut filled = 0;
    while filled < buf.len() {
        let n = tokio::time::timeout(idle, rd.read(&mut buf[filled..]))
            .await
            .map_err(|_| transport(format!("no data for {idle:?}")))?
            .map_err(|e| transport(e.to_string()))?;
        if n == 0 {
            return Err(transport(format!(
                "closed after {} of {len} bytes",
                at + filled as u64
            )));
        }
        filled += n;
    }
    Ok(())
}

/// A piece's bytes written to their sink, not yet verified.
#[derive(Debug)]
pub struct Fetched {
    /// The sha256 of the bytes.
    pub digest: Digest,
    /// The digest the sender vouched for with the supernode's signature (unchecked), if it
    /// sent one.
    pub vouch: Option<Vouch>,
    /// The piece as relayed to children while it arrived: keep it until the piece is
    /// marked held (verified), or drop it to tell them it is withdrawn.
    pub arrival: Option<ArrivalGuard>,
}

/// How peers move pieces between each other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// One TCP connection per parent with pipelined requests: the cheapest per byte (no
    /// user-space crypto, one copy each side). The default.
    #[default]
    Tcp,
    /// QUIC (TLS 1.3 over UDP), one stream per piece: encrypted in transit, costs several
    /// times the CPU per byte. For networks where peer traffic must be encrypted.
    Quic,
}

impl Transport {
    /// The name used in configuration (`tcp`, `quic`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Quic => "quic",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A transport name that is neither `tcp` nor `quic`.
#[derive(Debug, thiserror::Error)]
#[error("unknown transport {0:?} (expected \"tcp\" or \"quic\")")]
pub struct UnknownTransport(String);

impl FromStr for Transport {
    type Err = UnknownTransport;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Self::Tcp),
            "quic" => Ok(Self::Quic),
            other => Err(UnknownTransport(other.to_owned())),
        }
    }
}

/// A connection to one parent.
#[derive(Debug, Clone)]
enum Conn {
    Tcp(Link),
    Quic(quinn::Connection),
}

impl Conn {
    fn is_open(&self) -> bool {
        match self {
            Self::Tcp(link) => !link.is_closed(),
            Self::Quic(q) => q.close_reason().is_none(),
        }
    }
}

/// Parents remembered before closed connections are pruned from the map.
const PRUNE_ABOVE: usize = 64;

/// Dials parents, reusing one connection per parent.
#[derive(Debug)]
pub struct Fetcher {
    transport: Transport,
    endpoint: quinn::Endpoint,
    /// Per parent, the connection (or the dial in progress, so concurrent fetches to a new
    /// parent share one connection).
    conns: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Option<Conn>>>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Ask parents for pieces they are still receiving ([`crate::relay`]).
    streamed: bool,
}

impl Fetcher {
    /// A fetcher dialling with `transport` (QUIC dials from `endpoint`). A TCP connection on
    /// which nothing arrives for `idle_timeout` while requests are outstanding is dropped.
    pub fn new(transport: Transport, endpoint: quinn::Endpoint, idle_timeout: Duration) -> Self {
        Self {
            transport,
            endpoint,
            conns: Mutex::new(HashMap::new()),
            connect_timeout: Duration::from_secs(3),
            idle_timeout,
            streamed: false,
        }
    }

    /// Asks parents for pieces they are still receiving too (relayed as they arrive,
    /// [`crate::relay`]).
    #[must_use]
    pub fn with_streamed(mut self, streamed: bool) -> Self {
        self.streamed = streamed;
        self
    }

    /// The transport this fetcher dials with.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    async fn connection(&self, addr: SocketAddr) -> Result<Conn, FetchError> {
        let slot = {
            let mut conns = self.conns.lock();
            if conns.len() > PRUNE_ABOVE {
                // Forget parents whose connection has closed (idle, or failed).
                conns.retain(|_, slot| {
                    slot.try_lock()
                        .map_or(true, |c| c.as_ref().is_some_and(Conn::is_open))
                });
            }
            conns.entry(addr).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.is_open() {
                return Ok(c.clone());
            }
            *slot = None;
        }
        let conn = match self.transport {
            Transport::Tcp => {
                Conn::Tcp(Link::connect(addr, self.connect_timeout, self.idle_timeout).await?)
            }
            Transport::Quic => Conn::Quic(self.connect_quic(addr).await?),
        };
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn connect_quic(&self, addr: SocketAddr) -> Result<quinn::Connection, FetchError> {
        let transport = |reason: String| FetchError::Transport { addr, reason };
        let connecting = self
            .endpoint
            .connect(addr, SERVER_NAME)
            .map_err(|e| transport(e.to_string()))?;
        tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| transport("connect timed out".into()))?
            .map_err(|e| transport(e.to_string()))
    }

    /// Forgets the connection to `addr` (after a failure).
    pub fn drop_connection(&self, addr: SocketAddr) {
        let Some(slot) = self.conns.lock().remove(&addr) else {
            return;
        };
        // A dial in progress holds the lock; it ends by itself.
        if let Ok(mut slot) = slot.try_lock() {
            match slot.take() {
                Some(Conn::Tcp(link)) => link.close(),
                Some(Conn::Quic(q)) => q.close(0u32.into(), b"bye"),
                None => {}
            }
        }
    }

    /// Fetches piece `piece` of `task_id` from `addr` into `sink`, presenting `token` (this
    /// peer's piece token for the task), and returns the sha256 of the bytes written.
    ///
    /// # Errors
    /// See [`FetchError`]. The bytes are *not* verified here; the caller compares the digest.
    pub async fn fetch_into(
        &self,
        addr: SocketAddr,
        task_id: &str,
        piece: u32,
        peer_id: u64,
        token: &[u8],
        sink: PieceSink,
    ) -> Result<Fetched, FetchError> {
        let req = PieceRequest {
            version: PROTOCOL_VERSION,
            task_id: task_id.to_owned(),
            piece,
            peer_id,
            token: token.to_vec(),
            streamed: self.streamed,
        };
        match self.connection(addr).await? {
            Conn::Tcp(link) => link.fetch_into(addr, &req, sink).await,
            Conn::Quic(conn) => fetch_quic(&conn, addr, &req, sink, self.idle_timeout).await,
        }
    }
}

async fn fetch_quic(
    conn: &quinn::Connection,
    addr: SocketAddr,
    req: &PieceRequest,
    sink: PieceSink,
    idle: Duration,
) -> Result<Fetched, FetchError> {
    let transport = |reason: String| FetchError::Transport { addr, reason };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| transport(e.to_string()))?;
    send.write_all(&encode_frame(req))
        .await
        .map_err(|e| transport(e.to_string()))?;
    let _ = send.finish();
    read_answer(addr, &mut recv, &sink, idle).await
}

/// A parent's answer header, checked.
struct AnswerHeader {
    /// The vouched digest it carries, if any (unchecked).
    vouch: Option<Vouch>,
    /// The bytes come as a stream of chunks (a piece still arriving at the parent).
    streamed: bool,
    /// On a streamed answer, the peers upstream of the parent.
    relays: Vec<u64>,
}

/// Checks a response header frame's body: well formed, our version, `Ok`, and announcing
/// exactly the piece's length. A refusal becomes `Busy`, `Unavailable` or `Withdrawn`.
///
/// # Errors
/// See [`FetchError`].
fn check_response(body: &[u8], expected_len: u64) -> Result<AnswerHeader, FetchError> {
    let resp: PieceResponse = decode(body).map_err(|e| FetchError::Protocol(e.to_string()))?;
    resp.validate()
        .map_err(|e| FetchError::Protocol(e.to_string()))?;
    match PieceStatus::try_from(resp.status) {
        Ok(PieceStatus::Ok) => {}
        Ok(PieceStatus::Busy) => return Err(FetchError::Busy),
        Ok(PieceStatus::NotFound | PieceStatus::UnknownTask) => {
            return Err(FetchError::Unavailable);
        }
        Ok(PieceStatus::Withdrawn) => return Err(FetchError::Withdrawn),
        Ok(PieceStatus::Unauthorized) => return Err(FetchError::Unauthorized(resp.reason)),
        other => return Err(FetchError::Protocol(format!("status {other:?}"))),
    }
    if resp.length != expected_len {
        return Err(FetchError::Protocol(format!(
            "announced {} bytes, piece is {expected_len}",
            resp.length
        )));
    }
    Ok(AnswerHeader {
        vouch: Vouch::from_wire(&resp.digest, &resp.signature),
        streamed: resp.streamed,
        relays: resp.relays,
    })
}
