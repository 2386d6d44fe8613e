//! One task: a blob being fetched from its origin (or already cached), its piece digests, and
//! the scheduler of the peers sharing it.

use std::{collections::HashSet, time::Instant};

use damselfly_store::TaskMeta;
use damselfly_swarm::{Bitmap, PeerId, TaskScheduler};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Where the supernode's own copy of the blob stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CdnState {
    /// Streaming from the origin.
    Running,
    /// Every piece is stored and the blob matched its digest.
    Complete,
    /// The fetch failed; its data was dropped. The reason is shown to peers.
    Failed(String),
}

/// The supernode's copy: which pieces it holds and their digests.
///
/// The origin stream is cut in order, so the known digests are always a prefix.
#[derive(Debug)]
pub struct CdnProgress {
    /// Fetch state.
    pub state: CdnState,
    /// sha256 of pieces `0..digests.len()`.
    pub digests: Vec<[u8; 32]>,
    /// Pieces the supernode can serve.
    pub have: Bitmap,
}

/// A task shared by the API handlers, the CDN fetch and the maintenance loop.
#[derive(Debug)]
pub struct Task {
    /// What the store records about it.
    pub meta: TaskMeta,
    /// Which peers hold what, and who gets which parents.
    pub sched: Mutex<TaskScheduler>,
    /// The supernode's own copy.
    pub cdn: Mutex<CdnProgress>,
    /// Woken whenever `cdn` changes.
    pub progress: Notify,
    /// Peers that proved access at registration. Only they may sync and fetch pieces.
    admitted: Mutex<HashSet<PeerId>>,
    /// Credential fingerprint of the requester whose GET started the fetch (it proved access).
    pub creator: Option<[u8; 32]>,
    /// Last registration, sync or piece request (for idle cleanup).
    last_active: Mutex<Instant>,
}

impl Task {
    /// A task whose origin fetch is about to start.
    pub fn running(
        meta: TaskMeta,
        sched: TaskScheduler,
        creator: Option<[u8; 32]>,
        now: Instant,
    ) -> Self {
        let pieces = meta.piece_count();
        Self::new(
            meta,
            sched,
            CdnProgress {
                state: CdnState::Running,
                digests: Vec::new(),
                have: Bitmap::new(pieces),
            },
            creator,
            now,
        )
    }

    /// A task loaded from the cache with every piece present.
    pub fn cached(
        meta: TaskMeta,
        digests: Vec<[u8; 32]>,
        sched: TaskScheduler,
        now: Instant,
    ) -> Self {
        let pieces = meta.piece_count();
        Self::new(
            meta,
            sched,
            CdnProgress {
                state: CdnState::Complete,
                digests,
                have: Bitmap::full(pieces),
            },
            None,
            now,
        )
    }

    fn new(
        meta: TaskMeta,
        sched: TaskScheduler,
        cdn: CdnProgress,
        creator: Option<[u8; 32]>,
        now: Instant,
    ) -> Self {
        Self {
            meta,
            sched: Mutex::new(sched),
            cdn: Mutex::new(cdn),
            progress: Notify::new(),
            admitted: Mutex::new(HashSet::new()),
            creator,
            last_active: Mutex::new(now),
        }
    }

    /// The task's key.
    pub fn id(&self) -> &str {
        &self.meta.id
    }

    /// Whether the origin fetch failed.
    pub fn failed(&self) -> bool {
        matches!(self.cdn.lock().state, CdnState::Failed(_))
    }

    /// Whether the origin fetch is still streaming.
    pub fn fetching(&self) -> bool {
        self.cdn.lock().state == CdnState::Running
    }

    /// Records that `peer` proved it may read this blob.
    pub fn admit(&self, peer: PeerId) {
        self.admitted.lock().insert(peer);
    }

    /// Whether `peer` proved access at registration.
    pub fn is_admitted(&self, peer: PeerId) -> bool {
        self.admitted.lock().contains(&peer)
    }

    /// Notes activity now.
    pub fn touch(&self, now: Instant) {
        *self.last_active.lock() = now;
    }

    /// Time of the last activity.
    pub fn last_active(&self) -> Instant {
        *self.last_active.lock()
    }

    /// Marks `index` stored with `digest`. Pieces arrive in order.
    pub fn piece_stored(&self, index: u32, digest: [u8; 32]) {
        let mut cdn = self.cdn.lock();
        debug_assert_eq!(cdn.digests.len(), index as usize);
        cdn.digests.push(digest);
        cdn.have.set(index);
        drop(cdn);
        self.progress.notify_waiters();
    }

    /// Ends the fetch with `state`.
    pub fn finish(&self, state: CdnState) {
        self.cdn.lock().state = state;
        self.progress.notify_waiters();
    }
}
