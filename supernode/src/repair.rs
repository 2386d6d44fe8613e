//! Self-repair: a piece found corrupt on disk at runtime is fetched again.
//!
//! ```text
//!  piece request ─▶ Store::read_piece: Corrupt (the store drops the piece's digest record)
//!     │  404 PIECE_ABSENT to the peer, which takes the piece elsewhere
//!     └▶ Task::piece_lost: out of `have` (no longer offered) ─▶ repair task:
//!          Range GET of the piece's bytes (the last proven requester's URL and headers)
//!          ─▶ Store::write_piece with the recorded digest (anything else is refused)
//!          ─▶ Task::piece_repaired: back in `have`, offered and served again
//! ```
//!
//! A repair that fails (the origin refuses a stale token, the disk fails) leaves the piece
//! lost; the next registration of the blob, which proves fresh credentials, starts another.
//! A supernode restarted with a piece missing reloads the blob as a partial leftover and
//! fetches it whole.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use tracing::{info, warn};

use crate::{
    Shared,
    metrics::{OriginKind, RepairOutcome},
    task::Task,
};

/// Why a piece could not be fetched again.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// No requester's origin request is known to repeat.
    #[error("no requester's credentials to fetch it with yet")]
    NoRequester,
    /// The origin failed or refused.
    #[error(transparent)]
    Origin(#[from] damselfly_oci::OriginError),
    /// The origin sent a span of the wrong length.
    #[error("origin sent {got} bytes for a {expected}-byte piece")]
    Length {
        /// Bytes received.
        got: u64,
        /// The piece's length.
        expected: u64,
    },
    /// Storing failed, or the bytes do not match the recorded digest.
    #[error(transparent)]
    Store(#[from] damselfly_store::Error),
    /// A blocking store call panicked or was cancelled.
    #[error("storage worker failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Starts repairing `task`'s lost pieces in the background (the caller made sure no repair
/// runs: [`Task::piece_lost`] or [`Task::start_repair`] returned true).
pub fn spawn(shared: &Arc<Shared>, task: Arc<Task>) {
    shared.tracker.spawn(run(shared.clone(), task));
}

async fn run(shared: Arc<Shared>, task: Arc<Task>) {
    while let Some((index, digest)) = task.next_repair() {
        match repair_piece(&shared, &task, index, digest).await {
            Ok(data) => {
                shared.metrics.piece_repair(RepairOutcome::Repaired);
                info!(task = %task.id(), piece = index, "piece found corrupt was fetched again");
                task.piece_repaired(index, data);
            }
            Err(e) => {
                shared.metrics.piece_repair(RepairOutcome::Failed);
                if let RepairError::Store(s) = &e {
                    shared.metrics.storage_failure(s);
                }
                warn!(
                    task = %task.id(),
                    piece = index,
                    error = %e,
                    "cannot fetch a corrupt piece again; the next registration retries"
                );
                task.repair_failed();
                return;
            }
        }
    }
}

async fn repair_piece(
    shared: &Shared,
    task: &Task,
    index: u32,
    digest: [u8; 32],
) -> Result<Bytes, RepairError> {
    let request = task.origin_request().ok_or(RepairError::NoRequester)?;
    let len = task.meta.piece_len(index).unwrap_or(0);
    let offset = task.meta.piece_offset(index);
    shared.metrics.origin_request(OriginKind::Range);
    let resp = shared
        .origin
        .get_range(&request.url, &request.headers, offset, len)
        .await?;
    let mut body = resp.body;
    // len <= piece_size, a u32.
    let mut data = Vec::with_capacity(len as usize);
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        shared.metrics.origin_bytes.inc_by(chunk.len() as u64);
        data.extend_from_slice(&chunk);
    }
    if data.len() as u64 != len {
        return Err(RepairError::Length {
            got: data.len() as u64,
            expected: len,
        });
    }
    let store = shared.store.clone();
    let id = task.id().to_owned();
    let data = tokio::task::spawn_blocking(move || {
        store
            .write_piece(&id, index, &data, Some(digest))
            .map(|_| Bytes::from(data))
    })
    .await??;
    Ok(data)
}
