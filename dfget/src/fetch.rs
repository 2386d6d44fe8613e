//! Fetching one piece from a parent over QUIC.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use damselfly_proto::{
    FRAME_HEADER_LEN, PROTOCOL_VERSION, PieceRequest, PieceResponse, PieceStatus, decode,
    encode_frame, frame_len,
};
use parking_lot::Mutex;

use crate::quic::SERVER_NAME;

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
    /// The parent's upload slots are full.
    #[error("parent is busy")]
    Busy,
    /// The parent broke the protocol (wrong length, malformed frame).
    #[error("parent broke the protocol: {0}")]
    Protocol(String),
}

/// Dials parents, reusing one connection per parent.
#[derive(Debug)]
pub struct Fetcher {
    endpoint: quinn::Endpoint,
    conns: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    connect_timeout: Duration,
}

impl Fetcher {
    /// A fetcher dialling from `endpoint`.
    pub fn new(endpoint: quinn::Endpoint) -> Self {
        Self {
            endpoint,
            conns: Mutex::new(HashMap::new()),
            connect_timeout: Duration::from_secs(3),
        }
    }

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, FetchError> {
        let existing = self.conns.lock().get(&addr).cloned();
        if let Some(c) = existing {
            if c.close_reason().is_none() {
                return Ok(c);
            }
            self.conns.lock().remove(&addr);
        }
        let transport = |reason: String| FetchError::Transport { addr, reason };
        let connecting = self
            .endpoint
            .connect(addr, SERVER_NAME)
            .map_err(|e| transport(e.to_string()))?;
        let conn = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| transport("connect timed out".into()))?
            .map_err(|e| transport(e.to_string()))?;
        self.conns.lock().insert(addr, conn.clone());
        Ok(conn)
    }

    /// Forgets the connection to `addr` (after a failure).
    pub fn drop_connection(&self, addr: SocketAddr) {
        if let Some(c) = self.conns.lock().remove(&addr) {
            c.close(0u32.into(), b"bye");
        }
    }

    /// Fetches piece `piece` of `task_id` from `addr`, expecting exactly `expected_len` bytes.
    ///
    /// # Errors
    /// See [`FetchError`]. The bytes are *not* verified here; the caller checks the digest.
    pub async fn fetch(
        &self,
        addr: SocketAddr,
        task_id: &str,
        piece: u32,
        peer_id: u64,
        expected_len: u64,
    ) -> Result<Vec<u8>, FetchError> {
        let conn = self.connection(addr).await?;
        let transport = |reason: String| FetchError::Transport { addr, reason };
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| transport(e.to_string()))?;
        let req = PieceRequest {
            version: PROTOCOL_VERSION,
            task_id: task_id.to_owned(),
            piece,
            peer_id,
        };
        send.write_all(&encode_frame(&req))
            .await
            .map_err(|e| transport(e.to_string()))?;
        let _ = send.finish();

        let mut header = [0u8; FRAME_HEADER_LEN];
        recv.read_exact(&mut header)
            .await
            .map_err(|e| transport(e.to_string()))?;
        let len = frame_len(&header).map_err(|e| FetchError::Protocol(e.to_string()))?;
        if len > 1024 {
            return Err(FetchError::Protocol(format!(
                "response header of {len} bytes"
            )));
        }
        let mut body = vec![0u8; len];
        recv.read_exact(&mut body)
            .await
            .map_err(|e| transport(e.to_string()))?;
        let resp: PieceResponse = decode(&body).map_err(|e| FetchError::Protocol(e.to_string()))?;
        resp.validate()
            .map_err(|e| FetchError::Protocol(e.to_string()))?;
        match PieceStatus::try_from(resp.status) {
            Ok(PieceStatus::Ok) => {}
            Ok(PieceStatus::Busy) => return Err(FetchError::Busy),
            Ok(PieceStatus::NotFound | PieceStatus::UnknownTask) => {
                return Err(FetchError::Unavailable);
            }
            other => return Err(FetchError::Protocol(format!("status {other:?}"))),
        }
        if resp.length != expected_len {
            return Err(FetchError::Protocol(format!(
                "announced {} bytes, piece is {expected_len}",
                resp.length
            )));
        }
        let mut data = vec![0u8; expected_len as usize];
        recv.read_exact(&mut data)
            .await
            .map_err(|e| transport(e.to_string()))?;
        Ok(data)
    }
}
