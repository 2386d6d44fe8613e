//! The CDN fetch: stream a blob from its origin once, cut it into pieces, store each piece and
//! publish its digest as soon as it is on disk, so peers start before the blob has arrived.
//!
//! ```text
//!  origin ──chunks──▶ piece buffer ──full piece──▶ store.write_piece ──▶ task.piece_stored
//!                        │                                                  (peers may fetch it)
//!                        └──▶ whole-blob sha256 ──end──▶ matches the OCI digest? complete : fail
//! ```
//!
//! The body stream survives a failing origin by itself ([`damselfly_oci::Origin::get`]:
//! retries, a stall watchdog, `Range` resumes from the first byte not yet received), so a
//! break costs a reconnect, not the bytes already stored. A fetch that still fails (retries
//! spent, short body, digest mismatch) drops every stored piece: nothing unverified outlives
//! the fetch.

use std::sync::Arc;

use bytes::Bytes;
use damselfly_common::{Digest, Sha256Hasher};
use damselfly_oci::{
    BodyStream,
    retry::{FailureAction, FailureReason, OriginObserver as _},
};
use futures::StreamExt;
use tracing::{info, trace, warn};

use crate::{
    Shared,
    task::{CdnState, Task},
};

/// Why a fetch failed, as shown to peers.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The origin failed mid-stream.
    #[error(transparent)]
    Origin(#[from] damselfly_oci::OriginError),
    /// The origin sent fewer or more bytes than it announced.
    #[error("origin sent {got} bytes, announced {expected}")]
    Length {
        /// Bytes received.
        got: u64,
        /// Content-Length.
        expected: u64,
    },
    /// The blob does not hash to its digest.
    #[error("content digest mismatch: expected {expected}, origin sent {actual}")]
    DigestMismatch {
        /// The digest the URL or requester named.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// Storing failed locally (disk full, I/O error).
    #[error("local storage failed: {0}")]
    Store(#[from] damselfly_store::Error),
    /// A blocking store call panicked or was cancelled.
    #[error("storage worker failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Where a fetch starts: at byte 0, or after the pieces a previous process stored.
pub struct Start {
    /// The first piece the body carries.
    pub index: u32,
    /// Bytes of the blob before it (what the body skips).
    pub offset: u64,
    /// The whole-blob hash over those bytes.
    pub hasher: Sha256Hasher,
}

impl Start {
    /// A fetch of the whole blob.
    #[must_use]
    pub fn fresh() -> Self {
        Self {
            index: 0,
            offset: 0,
            hasher: Sha256Hasher::new(),
        }
    }
}

/// Runs the fetch to its end and records the outcome on `task` and in the store. `body`
/// carries the blob from `start.offset`.
pub async fn run(shared: Arc<Shared>, task: Arc<Task>, body: BodyStream, start: Start) {
    let result = fetch(&shared, &task, body, start).await;
    conclude(&shared, &task, result).await;
}

/// Records how a fill of the supernode's copy ended: complete, or failed with its data
/// dropped and the reason counted.
pub(crate) async fn conclude(shared: &Shared, task: &Task, result: Result<(), FetchError>) {
    let id = task.id().to_owned();
    match result {
        Ok(()) => {
            info!(task = %id, bytes = task.meta.content_length, "origin fetch complete");
            task.finish(CdnState::Complete);
        }
        Err(e) => {
            // The origin client counted its own failures; the checks made here are counted
            // here, under the same labels.
            let reason = match &e {
                FetchError::Length { .. } => Some(FailureReason::BadResponse),
                FetchError::DigestMismatch { .. } => Some(FailureReason::DigestMismatch),
                _ => None,
            };
            if let Some(reason) = reason {
                shared
                    .metrics
                    .origin_failures
                    .failure(reason, FailureAction::GaveUp);
            }
            if let FetchError::Store(s) = &e {
                // A full disk mid-fetch (the content file is allocated up front, so this is
                // the metadata database or a disk filled behind our back).
                shared.metrics.storage_failure(s);
            }
            warn!(task = %id, error = %e, "origin fetch failed; dropping its data");
            let store = shared.store.clone();
            let rid = id.clone();
            match tokio::task::spawn_blocking(move || store.remove_task(&rid)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(task = %id, error = %e, "could not remove failed task data"),
                Err(e) => warn!(task = %id, error = %e, "could not remove failed task data"),
            }
            task.finish(CdnState::Failed(e.to_string()));
        }
    }
}

async fn fetch(
    shared: &Shared,
    task: &Task,
    mut body: BodyStream,
    start: Start,
) -> Result<(), FetchError> {
    let Start {
        index,
        offset,
        mut hasher,
    } = start;
    // The previous full piece being written while the next one arrives (pieces are still
    // published in order: a piece is awaited before the next one is handed over).
    let mut storing: Option<StoreJob> = None;
    let end = task.meta.content_length;
    store_body(
        shared,
        task,
        &mut body,
        (index, offset),
        end,
        &mut hasher,
        &mut storing,
    )
    .await?;
    if let Some(last) = storing.take() {
        last.finish(task).await?;
    }
    complete(shared, task, hasher).await
}

/// Cuts `body`, the blob's bytes from offset `from.1` (the start of piece `from.0`) to `end`,
/// into pieces: each chunk is counted as origin bytes and hashed into `hasher` (the
/// whole-blob digest, in order), and each full piece is handed to the store, the previous
/// piece's job (`storing`) awaited first, so pieces are published in order. A body longer
/// or shorter than the span is an error.
pub(crate) async fn store_body(
    shared: &Shared,
    task: &Task,
    body: &mut BodyStream,
    from: (u32, u64),
    end: u64,
    hasher: &mut Sha256Hasher,
    storing: &mut Option<StoreJob>,
) -> Result<(), FetchError> {
    let meta = &task.meta;
    let (mut index, mut received) = from;
    let mut piece: Vec<u8> = Vec::new();
    // The stream's own watchdog bounds each wait (and its retries' waits).
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        received += chunk.len() as u64;
        if received > end {
            return Err(FetchError::Length {
                got: received,
                expected: end,
            });
        }
        shared.metrics.origin_bytes.inc_by(chunk.len() as u64);
        hasher.update(&chunk);
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            // piece_len is Some for every index below piece_count, and received <= length
            // guarantees index < piece_count while bytes remain.
            let want = meta.piece_len(index).unwrap_or(0) as usize;
            if piece.capacity() < want {
                piece.reserve_exact(want - piece.len());
            }
            let take = rest.len().min(want - piece.len());
            piece.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if piece.len() == want {
                let data = std::mem::take(&mut piece);
                if let Some(previous) = storing.take() {
                    previous.finish(task).await?;
                }
                *storing = Some(StoreJob::start(shared, task, index, data, None));
                index += 1;
            }
        }
    }
    if received != end {
        return Err(FetchError::Length {
            got: received,
            expected: end,
        });
    }
    Ok(())
}

/// Every piece is stored (in order, hashed into `hasher`): checks the whole-blob digest,
/// waits for repairs, and marks the task complete in the store.
pub(crate) async fn complete(
    shared: &Shared,
    task: &Task,
    hasher: Sha256Hasher,
) -> Result<(), FetchError> {
    let meta = &task.meta;
    let actual = hasher.finish();
    if let Some(expected) = meta
        .digest
        .as_deref()
        .and_then(|d| d.parse::<Digest>().ok())
        && expected != actual
    {
        return Err(FetchError::DigestMismatch { expected, actual });
    }
    // A piece found corrupt meanwhile is being fetched again: completing needs it.
    task.repairs_settled().await;
    let store = shared.store.clone();
    let id = meta.id.clone();
    tokio::task::spawn_blocking(move || store.complete_task(&id)).await??;
    Ok(())
}

/// One full piece being hashed and written off the async threads.
pub(crate) struct StoreJob {
    index: u32,
    job: tokio::task::JoinHandle<Result<([u8; 32], Bytes), damselfly_store::Error>>,
}

impl StoreJob {
    /// Starts writing piece `index`; with `expected`, bytes that hash to anything else are
    /// refused and nothing is written.
    pub(crate) fn start(
        shared: &Shared,
        task: &Task,
        index: u32,
        data: Vec<u8>,
        expected: Option<[u8; 32]>,
    ) -> Self {
        let store = shared.store.clone();
        let id = task.id().to_owned();
        let job = tokio::task::spawn_blocking(move || {
            let digest = store.write_piece(&id, index, &data, expected)?;
            Ok((digest, Bytes::from(data)))
        });
        Self { index, job }
    }

    /// Waits for the write and publishes the piece (keeping the bytes that were hashed in
    /// memory for the peers about to ask for it).
    pub(crate) async fn finish(self, task: &Task) -> Result<(), FetchError> {
        let (digest, data) = self.job.await??;
        task.piece_stored(self.index, digest, data);
        trace!(
            task = task.id(),
            piece = self.index,
            "piece stored and published"
        );
        Ok(())
    }
}
