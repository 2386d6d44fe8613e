//! The messages. Field numbers are the wire contract: never reuse or renumber one.

use crate::{DecodeError, MAX_HEADERS, MAX_PIECES, MAX_URL_LEN, PROTOCOL_VERSION};

/// One HTTP header forwarded to the origin (e.g. a registry bearer token).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Header {
    /// Header name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Header value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// Peer → supernode: join the task for `url`, starting the origin fetch if it is new.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RegisterRequest {
    /// [`PROTOCOL_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The origin URL of the content.
    #[prost(string, tag = "2")]
    pub url: String,
    /// Headers sent with origin requests made on this peer's behalf.
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<Header>,
    /// Expected content digest `sha256:<hex>`, empty if unknown.
    #[prost(string, tag = "4")]
    pub digest: String,
    /// The peer's random identity for this process.
    #[prost(uint64, tag = "5")]
    pub peer_id: u64,
    /// Where other peers reach this peer's QUIC piece server (`ip:port`, IPv6 bracketed).
    #[prost(string, tag = "6")]
    pub peer_addr: String,
    /// The peer already holds all of the content (checked against `digest`) and joins only to
    /// serve it, e.g. from its cache after a restart: the supernode must not start an origin
    /// fetch for it, and answers `UNKNOWN_TASK` when it neither runs nor stores the task.
    #[prost(bool, tag = "7")]
    pub holder: bool,
    /// The peer is moving a download it had started at another supernode (which was lost)
    /// to this one, and holds some of its pieces: a supernode that has neither run nor
    /// stored the task may fill its copy from the swarm's pieces before asking the origin.
    /// A supernode that predates the field fetches the whole blob from the origin.
    #[prost(bool, tag = "8")]
    pub takeover: bool,
}

/// Supernode → peer: the task the peer joined.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RegisterResponse {
    /// [`PROTOCOL_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The task key (`sha256:<hex>` for content-addressed blobs).
    #[prost(string, tag = "2")]
    pub task_id: String,
    /// Total bytes.
    #[prost(uint64, tag = "3")]
    pub content_length: u64,
    /// Bytes per piece (the last piece may be shorter).
    #[prost(uint32, tag = "4")]
    pub piece_size: u32,
    /// Number of pieces.
    #[prost(uint32, tag = "5")]
    pub piece_count: u32,
    /// Whole-content digest `sha256:<hex>` the result must match, empty if unknown.
    #[prost(string, tag = "6")]
    pub digest: String,
    /// The peer's piece token for this task (see [`PieceRequest::token`]): proof, for the
    /// peers it asks for pieces, that the supernode admitted it. Empty when the supernode
    /// has no cluster secret (tokens are then not checked).
    #[prost(bytes = "vec", tag = "7")]
    pub piece_token: Vec<u8>,
    /// The supernode's Ed25519 public key (`damselfly_common::vouch`), 32 bytes: piece
    /// answers carry each piece's digest signed with it, so a peer that sets
    /// [`SyncRequest::vouched`] needs no digests in its sync answers. Empty: the supernode
    /// does not vouch (a peer takes digests from the syncs).
    #[prost(bytes = "vec", tag = "8")]
    pub digest_key: Vec<u8>,
    /// The peer's session token for this task (`damselfly_common::session`): the proof,
    /// sent back with every [`SyncRequest`] and [`LeaveRequest`], that the caller is the peer
    /// that registered under `peer_id`. Only the supernode ever sees it. Empty from a
    /// supernode that predates it.
    #[prost(bytes = "vec", tag = "9")]
    pub session_token: Vec<u8>,
    /// Where the supernode's own copy stood when this registration arrived: whether this
    /// pull made it fetch the blob from the registry (for `dfdaemon explain`).
    /// `Unspecified` from a supernode that predates it.
    #[prost(enumeration = "SupernodeCopy", tag = "10")]
    pub copy: i32,
}

/// Where a supernode's copy of a blob stood when a peer registered for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SupernodeCopy {
    /// Not said (an older supernode).
    Unspecified = 0,
    /// The supernode held the whole blob: no registry request for this pull.
    Stored = 1,
    /// A fetch from the registry was already under way (another pull started it).
    Fetching = 2,
    /// This registration started the supernode's fetch from the registry.
    Started = 3,
}

/// A piece that failed its sha256 check, and who sent it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BadPiece {
    /// The peer that served the bytes.
    #[prost(uint64, tag = "1")]
    pub offender: u64,
    /// The piece index.
    #[prost(uint32, tag = "2")]
    pub piece: u32,
}

/// Peer → supernode: progress report, and a request for parents and piece digests.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SyncRequest {
    /// [`PROTOCOL_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The task.
    #[prost(string, tag = "2")]
    pub task_id: String,
    /// The reporting peer.
    #[prost(uint64, tag = "3")]
    pub peer_id: u64,
    /// The peer's QUIC address, so an expired peer can be re-admitted.
    #[prost(string, tag = "4")]
    pub peer_addr: String,
    /// Pieces verified and stored since the last sync.
    #[prost(uint32, repeated, tag = "5")]
    pub new_pieces: Vec<u32>,
    /// Uploads the peer is serving right now.
    #[prost(uint32, tag = "6")]
    pub uploading: u32,
    /// The peer holds every piece.
    #[prost(bool, tag = "7")]
    pub done: bool,
    /// Pieces that failed verification since the last sync.
    #[prost(message, repeated, tag = "8")]
    pub bad_pieces: Vec<BadPiece>,
    /// The peer already knows the digests of pieces `0..digests_from`.
    #[prost(uint32, tag = "9")]
    pub digests_from: u32,
    /// Pieces a reader on the peer is waiting for right now (a Range request on a blob still
    /// downloading), at most [`MAX_URGENT`]: the supernode offers those first.
    #[prost(uint32, repeated, tag = "10")]
    pub urgent_pieces: Vec<u32>,
    /// Long poll: when the sync reports nothing (no new, bad or urgent pieces, not done) and
    /// the supernode has no digest past `digests_from` yet while its origin fetch runs, it
    /// may hold the answer up to this many milliseconds (at most [`MAX_SYNC_WAIT_MS`]) and
    /// answers as soon as the next piece is stored. 0 = answer at once. A supernode that
    /// predates the field answers at once.
    #[prost(uint32, tag = "11")]
    pub wait_ms: u32,
    /// The peer learns its parents' pieces from the parents themselves (announcements, see
    /// [`AnnounceRequest`]) and lists in `known_parents` the parents it already has: the
    /// answer then names changes only ([`SyncResponse::parents_delta`]), without bitmaps. A
    /// supernode that predates the field answers with every parent and its bitmap.
    #[prost(bool, tag = "12")]
    pub announced: bool,
    /// With `announced`: the parents the peer knows, at most [`MAX_KNOWN_PARENTS`].
    #[prost(uint64, repeated, tag = "13")]
    pub known_parents: Vec<u64>,
    /// The peer takes each piece's digest, signed by the supernode, from the piece answer
    /// ([`PieceResponse::digest`], or the supernode's piece headers): send no `digests`.
    /// `digests_from` then counts the pieces the supernode had stored at the last answer
    /// ([`SyncResponse::stored_pieces`]), for the long poll. A supernode that predates the
    /// field sends digests anyway.
    #[prost(bool, tag = "14")]
    pub vouched: bool,
    /// Send the supernode's signature of each digest sent
    /// ([`SyncResponse::signatures`]): for a node that holds a blob from before a restart
    /// and serves it to peers that take vouched digests.
    #[prost(bool, tag = "15")]
    pub signatures: bool,
    /// Parents the peer could not reach since its last sync (no connection or no answer),
    /// at most [`MAX_KNOWN_PARENTS`]: the supernode stops naming them to this peer for a
    /// while and offers it the pieces only they hold, so a parent that hangs does not
    /// starve its children until it expires. A supernode that predates the field ignores it.
    #[prost(uint64, repeated, tag = "16")]
    pub unreachable_parents: Vec<u64>,
    /// The session token from the peer's registration ([`RegisterResponse::session_token`]),
    /// at most [`MAX_TOKEN_LEN`] bytes. A supernode refuses a sync without the right one
    /// (`NOT_ADMITTED`: register again).
    #[prost(bytes = "vec", tag = "17")]
    pub session_token: Vec<u8>,
    /// `(parent, piece)`: parents that answered a piece request with "not held" since the
    /// last sync, one per parent, at most [`MAX_KNOWN_PARENTS`]. The supernode demotes a
    /// parent that did not serve pieces it had reported holding. A supernode that predates
    /// the field ignores it.
    #[prost(message, repeated, tag = "18")]
    pub unserved_pieces: Vec<BadPiece>,
}

/// Most parents a sync may list in [`SyncRequest::known_parents`] or
/// [`SyncRequest::unreachable_parents`].
pub const MAX_KNOWN_PARENTS: usize = 64;

/// Longest long poll a sync may ask for ([`SyncRequest::wait_ms`]), in milliseconds.
pub const MAX_SYNC_WAIT_MS: u32 = 2_000;

impl SyncRequest {
    /// Whether this sync reports nothing, so the supernode may hold it (see
    /// [`SyncRequest::wait_ms`]).
    pub fn may_wait(&self) -> bool {
        self.wait_ms > 0
            && self.new_pieces.is_empty()
            && self.bad_pieces.is_empty()
            && self.urgent_pieces.is_empty()
            && self.unreachable_parents.is_empty()
            && self.unserved_pieces.is_empty()
            && !self.done
    }
}

/// Most urgent pieces one sync may name.
pub const MAX_URGENT: usize = 64;

/// The supernode's view of its own origin fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum TaskState {
    /// Unknown value from a newer peer.
    Unspecified = 0,
    /// The origin fetch is in progress.
    Running = 1,
    /// The supernode holds every piece.
    Complete = 2,
    /// The origin fetch failed; `error` says why. Peers must give up on this task.
    Failed = 3,
}

/// A parent the peer may fetch from.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ParentInfo {
    /// The parent's identity.
    #[prost(uint64, tag = "1")]
    pub peer_id: u64,
    /// Its QUIC address.
    #[prost(string, tag = "2")]
    pub addr: String,
    /// Pieces it holds, bit `i` = byte `i/8`, bit `i%8` (LSB first).
    #[prost(bytes = "vec", tag = "3")]
    pub pieces: Vec<u8>,
}

/// Supernode → peer: the answer to a [`SyncRequest`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SyncResponse {
    /// [`PROTOCOL_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The supernode's fetch state.
    #[prost(enumeration = "TaskState", tag = "2")]
    pub state: i32,
    /// Why the task failed, when `state` is `Failed`.
    #[prost(string, tag = "3")]
    pub error: String,
    /// Pieces the supernode can serve (same bit layout as [`ParentInfo::pieces`]).
    #[prost(bytes = "vec", tag = "4")]
    pub seed_pieces: Vec<u8>,
    /// sha256 of pieces `digests_from ..`, 32 bytes each, in index order.
    #[prost(bytes = "vec", repeated, tag = "5")]
    pub digests: Vec<Vec<u8>>,
    /// Index of the first digest in `digests` (echoes the request's `digests_from`).
    #[prost(uint32, tag = "6")]
    pub digests_from: u32,
    /// Parents to fetch from.
    #[prost(message, repeated, tag = "7")]
    pub parents: Vec<ParentInfo>,
    /// The supernode had forgotten this peer (silent past its peer timeout) and admitted it
    /// again: the peer's next sync should report every piece it holds.
    #[prost(bool, tag = "8")]
    pub readmitted: bool,
    /// Answer to an `announced` sync: `parents` are the parents the peer did not list (their
    /// `pieces` empty: the parents announce them), `dropped_parents` the listed ones no
    /// longer assigned; the peer keeps the rest.
    #[prost(bool, tag = "9")]
    pub parents_delta: bool,
    /// With `parents_delta`: listed parents the peer should drop.
    #[prost(uint64, repeated, tag = "10")]
    pub dropped_parents: Vec<u64>,
    /// A fresh piece token for the peer (as [`RegisterResponse::piece_token`]), so a long
    /// download never runs on an expired one. Empty: keep the one held (or there is none).
    #[prost(bytes = "vec", tag = "11")]
    pub piece_token: Vec<u8>,
    /// Pieces the supernode has stored, counted from the first (its digests are known this
    /// far), whether or not `digests` carries them.
    #[prost(uint32, tag = "12")]
    pub stored_pieces: u32,
    /// To a `vouched` sync once the supernode's copy is complete: the sha256 of all piece
    /// digests in order (32 bytes each, concatenated), so a peer can confirm the digests it
    /// verified against are the complete copy's without receiving them. Empty otherwise.
    #[prost(bytes = "vec", tag = "13")]
    pub digests_sha256: Vec<u8>,
    /// To a sync that set `signatures`, when the supernode vouches: the Ed25519 signature
    /// (64 bytes) of each digest in `digests`, in the same order.
    #[prost(bytes = "vec", repeated, tag = "14")]
    pub signatures: Vec<Vec<u8>>,
}

/// Peer → supernode: the peer stops serving this task.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LeaveRequest {
    /// [`PROTOCOL_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The task.
    #[prost(string, tag = "2")]
    pub task_id: String,
    /// The leaving peer.
    #[prost(uint64, tag = "3")]
    pub peer_id: u64,
    /// As [`SyncRequest::session_token`]: only the peer itself may take it out of the swarm.
    #[prost(bytes = "vec", tag = "4")]
    pub session_token: Vec<u8>,
}

/// Why a request was refused; the body of every non-2xx supernode API answer.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ErrorResponse {
    /// [`PROTOCOL_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// A stable machine-readable code, e.g. `ORIGIN_STATUS`, `UNKNOWN_TASK`, `BAD_REQUEST`.
    #[prost(string, tag = "2")]
    pub code: String,
    /// Human-readable cause.
    #[prost(string, tag = "3")]
    pub message: String,
    /// The origin's HTTP status when `code` is `ORIGIN_STATUS`, else 0.
    #[prost(uint32, tag = "4")]
    pub origin_status: u32,
}

/// Peer → peer (QUIC): send me this piece.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PieceRequest {
    /// [`PROTOCOL_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The task.
    #[prost(string, tag = "2")]
    pub task_id: String,
    /// The piece index.
    #[prost(uint32, tag = "3")]
    pub piece: u32,
    /// The requester: the peer the token was issued to.
    #[prost(uint64, tag = "4")]
    pub peer_id: u64,
    /// The requester's piece token for `task_id`, from the supernode (at most
    /// [`MAX_TOKEN_LEN`] bytes). A server with a cluster secret serves only a request whose
    /// token admits `peer_id` to `task_id` and has not expired; others get
    /// [`PieceStatus::Unauthorized`]. A peer that predates tokens sends none.
    #[prost(bytes = "vec", tag = "5")]
    pub token: Vec<u8>,
    /// The requester takes a piece the server is still receiving, as a streamed answer
    /// ([`PieceResponse::streamed`]). A peer that predates it sends `false` and is answered
    /// only from pieces the server holds.
    #[prost(bool, tag = "6")]
    pub streamed: bool,
}

/// Largest piece token accepted in a request (a token of this build is 41 bytes).
pub const MAX_TOKEN_LEN: usize = 128;

/// Longest refusal reason a server sends.
pub const MAX_REASON_LEN: usize = 256;

/// Child → parent, the one frame a child sends on an announcement connection (opened with
/// [`crate::ANNOUNCE_MAGIC`]): send me the pieces you hold of this task, then each new one.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AnnounceRequest {
    /// [`PROTOCOL_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The task.
    #[prost(string, tag = "2")]
    pub task_id: String,
    /// The subscriber: the peer the token was issued to.
    #[prost(uint64, tag = "3")]
    pub peer_id: u64,
    /// The subscriber's piece token for `task_id`, as in [`PieceRequest::token`]; without a
    /// valid one a parent with a cluster secret answers `Unauthorized` and closes.
    #[prost(bytes = "vec", tag = "4")]
    pub token: Vec<u8>,
    /// Also announce pieces when they start arriving at the parent (which then serves them
    /// as streamed answers, [`PieceRequest::streamed`]), not only once verified.
    #[prost(bool, tag = "5")]
    pub arriving: bool,
}

/// Parent → child on an announcement connection. The first frame has `status` and, on
/// `Ok`, the full `bitfield`; later frames name pieces verified since (`pieces`), or carry
/// a full `bitfield` again when the parent could not keep up with its own announcements.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Announcement {
    /// [`PROTOCOL_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// `Ok`, or why the parent refuses (`UnknownTask`, `Busy`, `BadRequest`,
    /// `Unauthorized`); a refusal is the last frame.
    #[prost(enumeration = "PieceStatus", tag = "2")]
    pub status: i32,
    /// Every piece the parent holds (same bit layout as [`ParentInfo::pieces`]); empty when
    /// the frame names new pieces only.
    #[prost(bytes = "vec", tag = "3")]
    pub bitfield: Vec<u8>,
    /// Pieces verified since the last frame (and, for a subscriber that asked for
    /// [`AnnounceRequest::arriving`], pieces that started to arrive; its `bitfield` then
    /// counts those too).
    #[prost(uint32, repeated, tag = "4")]
    pub pieces: Vec<u32>,
    /// Why, on a refusal (at most [`MAX_REASON_LEN`] bytes); empty otherwise.
    #[prost(string, tag = "5")]
    pub reason: String,
}

/// Outcome of a [`PieceRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PieceStatus {
    /// Unknown value from a newer peer.
    Unspecified = 0,
    /// `length` raw bytes follow the frame.
    Ok = 1,
    /// The server does not hold that piece (yet).
    NotFound = 2,
    /// The server's upload slots are full; try another parent.
    Busy = 3,
    /// The server does not know the task.
    UnknownTask = 4,
    /// The request was malformed.
    BadRequest = 5,
    /// The request carried no valid piece token for its task and requester (absent, expired,
    /// for another task or peer, or made with another secret); `reason` says which. A peer
    /// that predates tokens reads it as an unknown status, a protocol error.
    Unauthorized = 6,
    /// The piece was arriving at the server and is not coming (its own transfer failed), or
    /// the requester is upstream of it (its bytes would come back to it). Not the server's
    /// fault: ask elsewhere. Sent only to requesters that set [`PieceRequest::streamed`].
    Withdrawn = 7,
}

/// Peer → peer (QUIC): the answer header; on `Ok`, `length` raw bytes follow.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PieceResponse {
    /// [`PROTOCOL_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// Outcome.
    #[prost(enumeration = "PieceStatus", tag = "2")]
    pub status: i32,
    /// Bytes that follow.
    #[prost(uint64, tag = "3")]
    pub length: u64,
    /// Why, on a refusal (at most [`MAX_REASON_LEN`] bytes); empty otherwise.
    #[prost(string, tag = "4")]
    pub reason: String,
    /// On `Ok`, when the sender holds it: the piece's sha256 (32 bytes) as the supernode
    /// vouched for it, with `signature`. Empty otherwise.
    #[prost(bytes = "vec", tag = "5")]
    pub digest: Vec<u8>,
    /// The supernode's Ed25519 signature over `digest` (`damselfly_common::vouch`), 64
    /// bytes, present exactly when `digest` is.
    #[prost(bytes = "vec", tag = "6")]
    pub signature: Vec<u8>,
    /// The piece is still arriving at the server: the bytes follow as a stream of chunks
    /// (`crate::STREAM_*`), each a 4-byte big-endian length and that many bytes, ended by
    /// [`crate::STREAM_END`] once the server has verified the piece, or by
    /// [`crate::STREAM_WITHDRAWN`] when it will not come. Only to a streamed request.
    #[prost(bool, tag = "7")]
    pub streamed: bool,
    /// On a streamed answer: the peers the bytes pass through before the server, nearest
    /// first (at most [`MAX_RELAYS`]), so that none of them is ever asked for the piece by
    /// the requester while it relays it on.
    #[prost(uint64, repeated, tag = "8")]
    pub relays: Vec<u64>,
}

/// Longest relay chain a streamed answer names.
pub const MAX_RELAYS: usize = 64;

fn check_version(version: u32) -> Result<(), DecodeError> {
    if version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(DecodeError::Version {
            got: version,
            expected: PROTOCOL_VERSION,
        })
    }
}

fn check_task_id(task_id: &str) -> Result<(), DecodeError> {
    if task_id.is_empty() || task_id.len() > 256 {
        return Err(DecodeError::invalid("task_id", "empty or over 256 bytes"));
    }
    Ok(())
}

fn check_token(token: &[u8]) -> Result<(), DecodeError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(DecodeError::invalid(
            "token",
            format!("{} bytes, at most {MAX_TOKEN_LEN}", token.len()),
        ));
    }
    Ok(())
}

fn check_reason(reason: &str) -> Result<(), DecodeError> {
    if reason.len() > MAX_REASON_LEN {
        return Err(DecodeError::invalid("reason", "too long"));
    }
    Ok(())
}

fn check_peer_addr(addr: &str) -> Result<(), DecodeError> {
    addr.parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|e| DecodeError::invalid("peer_addr", format!("{addr:?}: {e}")))
}

impl RegisterRequest {
    /// Checks version, URL, header count and addresses.
    ///
    /// # Errors
    /// [`DecodeError::Version`] or [`DecodeError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_version(self.version)?;
        if self.url.is_empty() || self.url.len() > MAX_URL_LEN {
            return Err(DecodeError::invalid("url", "empty or too long"));
        }
        if self.headers.len() > MAX_HEADERS {
            return Err(DecodeError::invalid(
                "headers",
                format!("{} headers, at most {MAX_HEADERS}", self.headers.len()),
            ));
        }
        if let Some(h) = self
            .headers
            .iter()
            .find(|h| h.name.is_empty() || h.name.len() + h.value.len() > 16 << 10)
        {
            return Err(DecodeError::invalid(
                "headers",
                format!("bad header {:?}", h.name),
            ));
        }
        if self.peer_id == 0 {
            return Err(DecodeError::invalid("peer_id", "must not be 0"));
        }
        check_peer_addr(&self.peer_addr)
    }
}

impl RegisterResponse {
    /// Checks version and the task geometry.
    ///
    /// # Errors
    /// [`DecodeError::Invalid`] when length, piece size and piece count disagree.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_version(self.version)?;
        check_task_id(&self.task_id)?;
        if !matches!(self.digest_key.len(), 0 | 32) {
            return Err(DecodeError::invalid("digest_key", "not 32 bytes"));
        }
        check_token(&self.session_token)?;
        if self.piece_size == 0 || !self.piece_size.is_power_of_two() {
            return Err(DecodeError::invalid("piece_size", "not a power of two"));
        }
        let expected = self.content_length.div_ceil(u64::from(self.piece_size));
        if expected != u64::from(self.piece_count) || self.piece_count > MAX_PIECES {
            return Err(DecodeError::invalid(
                "piece_count",
                format!(
                    "{} pieces for {} bytes at {} per piece",
                    self.piece_count, self.content_length, self.piece_size
                ),
            ));
        }
        Ok(())
    }
}

impl SyncRequest {
    /// Checks version, ids and counts.
    ///
    /// # Errors
    /// [`DecodeError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_version(self.version)?;
        check_task_id(&self.task_id)?;
        check_peer_addr(&self.peer_addr)?;
        if self.peer_id == 0 {
            return Err(DecodeError::invalid("peer_id", "must not be 0"));
        }
        if self.new_pieces.len() > MAX_PIECES as usize {
            return Err(DecodeError::invalid("new_pieces", "too many"));
        }
        if self.bad_pieces.len() > MAX_PIECES as usize {
            return Err(DecodeError::invalid("bad_pieces", "too many"));
        }
        if self.urgent_pieces.len() > MAX_URGENT {
            return Err(DecodeError::invalid("urgent_pieces", "too many"));
        }
        if self.wait_ms > MAX_SYNC_WAIT_MS {
            return Err(DecodeError::invalid("wait_ms", "over MAX_SYNC_WAIT_MS"));
        }
        if self.known_parents.len() > MAX_KNOWN_PARENTS {
            return Err(DecodeError::invalid("known_parents", "too many"));
        }
        if self.unreachable_parents.len() > MAX_KNOWN_PARENTS {
            return Err(DecodeError::invalid("unreachable_parents", "too many"));
        }
        if self.unserved_pieces.len() > MAX_KNOWN_PARENTS {
            return Err(DecodeError::invalid("unserved_pieces", "too many"));
        }
        check_token(&self.session_token)
    }
}

impl SyncResponse {
    /// Checks version and that every digest is 32 bytes.
    ///
    /// # Errors
    /// [`DecodeError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_version(self.version)?;
        if self.digests.iter().any(|d| d.len() != 32) {
            return Err(DecodeError::invalid("digests", "a digest is not 32 bytes"));
        }
        if !self.signatures.is_empty()
            && (self.signatures.len() != self.digests.len()
                || self.signatures.iter().any(|s| s.len() != 64))
        {
            return Err(DecodeError::invalid(
                "signatures",
                "not one 64-byte signature per digest",
            ));
        }
        for p in &self.parents {
            check_peer_addr(&p.addr)?;
        }
        Ok(())
    }
}

impl LeaveRequest {
    /// Checks version and ids.
    ///
    /// # Errors
    /// [`DecodeError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_version(self.version)?;
        check_task_id(&self.task_id)?;
        check_token(&self.session_token)
    }
}

impl PieceRequest {
    /// Checks version and the task id.
    ///
    /// # Errors
    /// [`DecodeError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_version(self.version)?;
        check_task_id(&self.task_id)?;
        if self.piece >= MAX_PIECES {
            return Err(DecodeError::invalid("piece", "index out of range"));
        }
        check_token(&self.token)
    }
}

impl AnnounceRequest {
    /// Checks version, the task id and the token's length.
    ///
    /// # Errors
    /// [`DecodeError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_version(self.version)?;
        check_task_id(&self.task_id)?;
        check_token(&self.token)
    }
}

impl Announcement {
    /// Checks version and sizes: a bitfield of at most [`MAX_PIECES`] bits, at most
    /// [`MAX_PIECES`] piece indexes, each in range.
    ///
    /// # Errors
    /// [`DecodeError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_version(self.version)?;
        if self.bitfield.len() > (MAX_PIECES as usize).div_ceil(8) {
            return Err(DecodeError::invalid("bitfield", "too long"));
        }
        if self.pieces.len() > MAX_PIECES as usize || self.pieces.iter().any(|&p| p >= MAX_PIECES) {
            return Err(DecodeError::invalid("pieces", "too many or out of range"));
        }
        check_reason(&self.reason)
    }
}

impl PieceResponse {
    /// Checks version and that `length` is a plausible piece length (at most 64 MiB).
    ///
    /// # Errors
    /// [`DecodeError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_version(self.version)?;
        if self.length > 64 << 20 {
            return Err(DecodeError::invalid("length", "over 64 MiB"));
        }
        match (self.digest.len(), self.signature.len()) {
            (0, 0) | (32, 64) => {}
            _ => {
                return Err(DecodeError::invalid(
                    "digest",
                    "a vouched digest is 32 bytes with a 64-byte signature",
                ));
            }
        }
        if self.relays.len() > MAX_RELAYS {
            return Err(DecodeError::invalid("relays", "too many"));
        }
        check_reason(&self.reason)
    }
}

impl ErrorResponse {
    /// An error answer with our version.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            code: code.to_owned(),
            message: message.into(),
            origin_status: 0,
        }
    }
}

#[cfg(test)]
mod tests;
