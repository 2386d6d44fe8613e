//! The client side of the supernode API.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use damselfly_common::token::PIECE_TOKEN_HEADER;
use damselfly_proto::{
    ErrorResponse, LeaveRequest, PROTOCOL_VERSION, RegisterRequest, RegisterResponse, SyncRequest,
    SyncResponse, decode,
};
use parking_lot::Mutex;
use prost::Message;

/// Why a supernode call failed.
#[derive(Debug, thiserror::Error)]
pub enum SupernodeError {
    /// The supernode could not be reached.
    #[error("supernode {addr} unreachable: {reason}")]
    Unreachable {
        /// The supernode address.
        addr: String,
        /// The transport error.
        reason: String,
    },
    /// The supernode refused the request.
    #[error("{}", .0.message)]
    Refused(ErrorResponse),
    /// The supernode answered something that is not the protocol.
    #[error("supernode answered malformed data: {0}")]
    Protocol(String),
}

impl SupernodeError {
    /// The refusal's code, if the supernode refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Refused(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// How long a registration may go unanswered before the client asks whether the supernode
/// is alive at all (see [`SupernodeClient::register`]).
pub const REGISTER_PROBE_AFTER: Duration = Duration::from_millis(250);

/// How often that question is asked again while the registration stays unanswered.
const REGISTER_PROBE_EVERY: Duration = Duration::from_secs(1);

/// A supernode API client.
#[derive(Debug, Clone)]
pub struct SupernodeClient {
    addr: String,
    base: String,
    http: reqwest::Client,
    /// For liveness probes: a new connection each time (a pooled one could be a black
    /// hole's), answered within the connect timeout.
    probe: reqwest::Client,
    /// Signs control calls when the cluster has a secret.
    control: Option<damselfly_common::ControlKey>,
    /// Session tokens from this supernode's registration answers, by (task, peer id): sent
    /// back with every sync and leave (shared by clones).
    sessions: Sessions,
}

/// Session tokens by (task, peer id).
type Sessions = Arc<Mutex<HashMap<(String, u64), Vec<u8>>>>;

/// Session tokens kept per client, at most. Past it one is dropped: that task's next sync is
/// answered `NOT_ADMITTED`, and the engine registers again, which gets a new one.
const MAX_SESSIONS: usize = 65_536;

impl SupernodeClient {
    /// A client for the supernode at `addr` (`host:port`, IPv6 bracketed).
    ///
    /// # Errors
    /// The HTTP client could not be built.
    pub fn new(
        addr: &str,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, SupernodeError> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .build()
            .map_err(|e| SupernodeError::Unreachable {
                addr: addr.to_owned(),
                reason: e.to_string(),
            })?;
        let probe = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .connect_timeout(connect_timeout)
            .timeout(connect_timeout)
            .build()
            .map_err(|e| SupernodeError::Unreachable {
                addr: addr.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            addr: addr.to_owned(),
            base: format!("http://{addr}"),
            http,
            probe,
            control: None,
            sessions: Arc::default(),
        })
    }

    /// Signs every control call (`register`, `sync`, `leave`) with the cluster secret's
    /// control key, as a supernode with a secret requires.
    #[must_use]
    pub fn with_control_key(mut self, key: Option<damselfly_common::ControlKey>) -> Self {
        self.control = key;
        self
    }

    /// Whether the supernode answers `/healthy` on a new connection within the connect
    /// timeout.
    ///
    /// # Errors
    /// [`SupernodeError::Unreachable`] with what went wrong.
    pub async fn probe(&self) -> Result<(), SupernodeError> {
        let resp = self
            .probe
            .get(format!("{}/healthy", self.base))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(SupernodeError::Unreachable {
                addr: self.addr.clone(),
                reason: format!("/healthy answered {}", resp.status()),
            })
        }
    }

    /// The supernode address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn unreachable(&self, e: &reqwest::Error) -> SupernodeError {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            reason = format!("{reason}: {s}");
            source = s.source();
        }
        SupernodeError::Unreachable {
            addr: self.addr.clone(),
            reason,
        }
    }

    async fn call(&self, path: &str, body: Vec<u8>) -> Result<Bytes, SupernodeError> {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-protobuf");
        if let Some(key) = &self.control {
            req = req.header("authorization", key.sign("POST", path, &body));
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        self.body(resp).await
    }

    /// The body of a 2xx answer, or the refusal it carries.
    async fn body(&self, resp: reqwest::Response) -> Result<Bytes, SupernodeError> {
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        if status.is_success() {
            return Ok(bytes);
        }
        match decode::<ErrorResponse>(&bytes) {
            Ok(e) if !e.code.is_empty() => Err(SupernodeError::Refused(e)),
            _ => Err(SupernodeError::Protocol(format!(
                "HTTP {status} without an error body"
            ))),
        }
    }

    /// Registers for a task.
    ///
    /// A registration may rightly take long (a cold blob waits for the registry's first
    /// answer, retries included), so its own timeout is long; but a supernode that stopped
    /// answering altogether (hung, or its packets dropped on a connection the pool kept)
    /// must not hold a pull for that long, or the runtime gives up on the mirror before it
    /// falls back. Unanswered after [`REGISTER_PROBE_AFTER`], and every second after, the
    /// client asks `/healthy` on a new connection ([`Self::probe`]); a supernode that does
    /// not answer that within the connect timeout is unreachable.
    ///
    /// # Errors
    /// Unreachable (also: alive no more while the registration waited), refused (origin
    /// error, denied), or a malformed answer.
    pub async fn register(
        &self,
        req: &RegisterRequest,
    ) -> Result<RegisterResponse, SupernodeError> {
        let call = self.call("/api/v1/register", req.encode_to_vec());
        tokio::pin!(call);
        let mut wait = REGISTER_PROBE_AFTER;
        let bytes = loop {
            tokio::select! {
                answer = &mut call => break answer?,
                () = tokio::time::sleep(wait) => {}
            }
            // Probing while the registration may still be answered.
            let probe = self.probe();
            tokio::pin!(probe);
            tokio::select! {
                answer = &mut call => break answer?,
                alive = &mut probe => {
                    if let Err(SupernodeError::Unreachable { reason, .. }) = alive {
                        return Err(SupernodeError::Unreachable {
                            addr: self.addr.clone(),
                            reason: format!(
                                "no answer to the registration, and none to a health check: {reason}"
                            ),
                        });
                    }
                }
            }
            wait = REGISTER_PROBE_EVERY;
        };
        let resp: RegisterResponse =
            decode(&bytes).map_err(|e| SupernodeError::Protocol(e.to_string()))?;
        resp.validate()
            .map_err(|e| SupernodeError::Protocol(e.to_string()))?;
        let mut sessions = self.sessions.lock();
        if sessions.len() >= MAX_SESSIONS
            && let Some(k) = sessions.keys().next().cloned()
        {
            sessions.remove(&k);
        }
        sessions.insert(
            (resp.task_id.clone(), req.peer_id),
            resp.session_token.clone(),
        );
        Ok(resp)
    }

    /// The session token of `peer_id` in `task_id`, from its registration (empty if none).
    fn session_token(&self, task_id: &str, peer_id: u64) -> Vec<u8> {
        self.sessions
            .lock()
            .get(&(task_id.to_owned(), peer_id))
            .cloned()
            .unwrap_or_default()
    }

    /// Reports progress and gets parents and digests.
    ///
    /// # Errors
    /// Unreachable, refused (unknown task), or a malformed answer.
    pub async fn sync(&self, req: &SyncRequest) -> Result<SyncResponse, SupernodeError> {
        let mut req = req.clone();
        req.session_token = self.session_token(&req.task_id, req.peer_id);
        let bytes = self.call("/api/v1/sync", req.encode_to_vec()).await?;
        let resp: SyncResponse =
            decode(&bytes).map_err(|e| SupernodeError::Protocol(e.to_string()))?;
        resp.validate()
            .map_err(|e| SupernodeError::Protocol(e.to_string()))?;
        Ok(resp)
    }

    /// Leaves a task (best effort).
    ///
    /// # Errors
    /// Unreachable or refused.
    pub async fn leave(&self, task_id: &str, peer_id: u64) -> Result<(), SupernodeError> {
        let key = (task_id.to_owned(), peer_id);
        let session_token = self.sessions.lock().remove(&key).unwrap_or_default();
        let req = LeaveRequest {
            version: PROTOCOL_VERSION,
            task_id: task_id.to_owned(),
            peer_id,
            session_token,
        };
        self.call("/api/v1/leave", req.encode_to_vec())
            .await
            .map(drop)
    }

    /// Downloads one piece from the supernode into `sink` (as [`crate::fetch`] does from a
    /// parent: block by block into the piece's sha256 and the file), presenting `token`
    /// (this peer's piece token for the task; none if empty), and returns the sha256 of the
    /// bytes written. `Ok(Err(_))` is a local write failure, not the supernode's.
    ///
    /// # Errors
    /// Unreachable, refused (`BUSY`, `PIECE_ABSENT`, `PIECE_TOKEN`…), or a body of the
    /// wrong length.
    pub async fn piece_into(
        &self,
        task_id: &str,
        index: u32,
        peer_id: u64,
        token: &[u8],
        sink: &crate::fetch::PieceSink,
    ) -> Result<Result<crate::fetch::Fetched, std::io::Error>, SupernodeError> {
        use damselfly_common::vouch::{PIECE_DIGEST_HEADER, PIECE_SIGNATURE_HEADER, Vouch};
        use futures::StreamExt as _;
        let url = format!(
            "{}/api/v1/tasks/{task_id}/pieces/{index}?peer={peer_id}",
            self.base
        );
        let mut get = self.http.get(url);
        if !token.is_empty() {
            get = get.header(PIECE_TOKEN_HEADER, hex::encode(token));
        }
        let resp = get.send().await.map_err(|e| self.unreachable(&e))?;
        if !resp.status().is_success() {
            return Err(self
                .body(resp)
                .await
                .err()
                .unwrap_or_else(|| SupernodeError::Protocol("refusal without a status".into())));
        }
        let header = |name| resp.headers().get(name).map(|v| v.as_bytes());
        let vouch = Vouch::from_hex(header(PIECE_DIGEST_HEADER), header(PIECE_SIGNATURE_HEADER))
            .map_err(|e| SupernodeError::Protocol(format!("piece {index}: {e}")))?;
        let mut piece = crate::fetch::PieceWriter::new(sink);
        piece.relay(vouch, &[]);
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(&e))?;
            if chunk.len() as u64 > piece.remaining() {
                return Err(SupernodeError::Protocol(format!(
                    "piece {index} longer than its {} bytes",
                    sink.len
                )));
            }
            if let Err(e) = piece.push(&chunk) {
                return Ok(Err(e));
            }
        }
        let remaining = piece.remaining();
        let fetched = |(digest, arrival)| {
            Ok(crate::fetch::Fetched {
                digest,
                vouch,
                arrival,
            })
        };
        piece.finish().map(fetched).ok_or_else(|| {
            SupernodeError::Protocol(format!(
                "piece {index}: {} of its {} bytes",
                sink.len - remaining,
                sink.len
            ))
        })
    }
}
