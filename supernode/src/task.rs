//! One task: a blob being fetched from its origin (or already cached), its piece digests, and
//! the scheduler of the peers sharing it.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use damselfly_store::TaskMeta;
use damselfly_swarm::{Bitmap, PeerHost, PeerId, TaskScheduler};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::hot::HotPieces;

/// Serials of tasks created by this process (see [`Task::serial`]).
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

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
    /// Pieces found corrupt on disk and dropped, not yet fetched again (see
    /// [`crate::repair`]); never in `have`.
    pub lost: BTreeSet<u32>,
    /// A repair is fetching `lost` pieces.
    pub repairing: bool,
}

/// What a repair asks the origin with: the URL and headers of the last requester whose
/// access was proven (its origin GET, or the access check of a later registration).
#[derive(Clone)]
pub struct OriginRequest {
    /// The blob's URL.
    pub url: String,
    /// Headers for the origin, credentials included.
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for OriginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print credentials.
        f.debug_struct("OriginRequest")
            .field("url", &self.url)
            .field("headers", &self.headers.len())
            .finish()
    }
}

/// What [`Task::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Admitted (or already admitted from the same host).
    Admitted,
    /// `scheduler.max_peers_per_task` live peers: nobody more.
    Full,
    /// The id is admitted from another host.
    IdTaken,
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
    /// Peers that proved access at registration, with the host each registered from. Only
    /// they may sync and fetch pieces.
    admitted: Mutex<HashMap<PeerId, PeerHost>>,
    /// Credential fingerprint of the requester whose GET started the fetch (it proved access).
    pub creator: Option<[u8; 32]>,
    /// Last registration, sync or piece request (for idle cleanup).
    last_active: Mutex<Instant>,
    /// Unique to this task object in this process: keys its pieces in `hot`.
    serial: u64,
    /// Pieces kept in memory after they were stored (see [`crate::hot`]).
    hot: Arc<HotPieces>,
    /// How to ask the origin again (see [`OriginRequest`]).
    origin: Mutex<Option<OriginRequest>>,
}

impl Task {
    /// A task whose origin fetch is about to start.
    pub fn running(
        meta: TaskMeta,
        sched: TaskScheduler,
        creator: Option<[u8; 32]>,
        hot: Arc<HotPieces>,
        now: Instant,
    ) -> Self {
        Self::resumed(meta, Vec::new(), sched, creator, hot, now)
    }

    /// A fetch taken up after a restart: pieces `0..digests.len()` were stored (and checked)
    /// by the previous process; the rest come from the origin. With no digests, a fresh
    /// fetch ([`Task::running`]).
    pub fn resumed(
        meta: TaskMeta,
        digests: Vec<[u8; 32]>,
        sched: TaskScheduler,
        creator: Option<[u8; 32]>,
        hot: Arc<HotPieces>,
        now: Instant,
    ) -> Self {
        let pieces = meta.piece_count();
        let mut have = Bitmap::new(pieces);
        for i in 0..u32::try_from(digests.len()).unwrap_or(pieces).min(pieces) {
            have.set(i);
        }
        Self::new(
            meta,
            sched,
            CdnProgress {
                state: CdnState::Running,
                digests,
                have,
                lost: BTreeSet::new(),
                repairing: false,
            },
            creator,
            hot,
            now,
        )
    }

    /// A task loaded from the cache with every piece present.
    pub fn cached(
        meta: TaskMeta,
        digests: Vec<[u8; 32]>,
        sched: TaskScheduler,
        hot: Arc<HotPieces>,
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
                lost: BTreeSet::new(),
                repairing: false,
            },
            None,
            hot,
            now,
        )
    }

    fn new(
        meta: TaskMeta,
        sched: TaskScheduler,
        cdn: CdnProgress,
        creator: Option<[u8; 32]>,
        hot: Arc<HotPieces>,
        now: Instant,
    ) -> Self {
        Self {
            meta,
            sched: Mutex::new(sched),
            cdn: Mutex::new(cdn),
            progress: Notify::new(),
            admitted: Mutex::new(HashMap::new()),
            creator,
            last_active: Mutex::new(now),
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
            hot,
            origin: Mutex::new(None),
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

    /// Records that `peer`, registering from `host`, proved it may read this blob, in a set
    /// of at most `max` (`scheduler.max_peers_per_task`): when it is full, peers no longer
    /// live in the swarm are forgotten first (one that comes back is refused its syncs and
    /// registers again). Admits nobody when the live peers alone fill it, or when the id is
    /// admitted from another host.
    pub fn admit(&self, peer: PeerId, host: PeerHost, max: usize) -> Admission {
        let mut admitted = self.admitted.lock();
        match admitted.get(&peer) {
            Some(h) if *h == host => return Admission::Admitted,
            Some(_) => return Admission::IdTaken,
            None => {}
        }
        if admitted.len() >= max {
            let sched = self.sched.lock();
            admitted.retain(|p, _| sched.is_live(*p));
        }
        if admitted.len() >= max {
            return Admission::Full;
        }
        admitted.insert(peer, host);
        Admission::Admitted
    }

    /// The host `peer` registered from, if it proved access at registration.
    pub fn admitted_host(&self, peer: PeerId) -> Option<PeerHost> {
        self.admitted.lock().get(&peer).copied()
    }

    /// Notes activity now.
    pub fn touch(&self, now: Instant) {
        *self.last_active.lock() = now;
    }

    /// Time of the last activity.
    pub fn last_active(&self) -> Instant {
        *self.last_active.lock()
    }

    /// Marks `index` stored with `digest`, keeping `data` (the bytes that hashed to it) in
    /// memory to serve while it is recent. Pieces arrive in order.
    pub fn piece_stored(&self, index: u32, digest: [u8; 32], data: Bytes) {
        self.hot.insert(self.serial, index, data);
        let mut cdn = self.cdn.lock();
        debug_assert_eq!(cdn.digests.len(), index as usize);
        cdn.digests.push(digest);
        cdn.have.set(index);
        drop(cdn);
        self.progress.notify_waiters();
    }

    /// Piece `index` as it was stored, if it is still in memory.
    pub fn hot_piece(&self, index: u32) -> Option<Bytes> {
        self.hot.get(self.serial, index)
    }

    /// Ends the fetch with `state`. A failed fetch's pieces leave memory at once.
    pub fn finish(&self, state: CdnState) {
        if matches!(state, CdnState::Failed(_)) {
            self.hot.forget_task(self.serial);
        }
        self.cdn.lock().state = state;
        self.progress.notify_waiters();
    }
}

/// Self-repair: a piece found corrupt on disk leaves `have` and is fetched again.
impl Task {
    /// Remembers the origin request of a requester whose access was just proven, for a
    /// repair to repeat.
    pub fn remember_origin(&self, url: &str, headers: &[(String, String)]) {
        *self.origin.lock() = Some(OriginRequest {
            url: url.to_owned(),
            headers: headers.to_vec(),
        });
    }

    /// The request a repair repeats, if a requester has been seen.
    pub fn origin_request(&self) -> Option<OriginRequest> {
        self.origin.lock().clone()
    }

    /// Piece `index` was found corrupt on disk (and dropped from the store): no longer
    /// offered or served. Returns whether the caller should start a repair (none runs).
    pub fn piece_lost(&self, index: u32) -> bool {
        let mut cdn = self.cdn.lock();
        cdn.have.clear(index);
        cdn.lost.insert(index);
        !std::mem::replace(&mut cdn.repairing, true)
    }

    /// Whether a repair should start now: pieces are lost and no repair runs (a repair
    /// that failed waits for the next requester's credentials).
    pub fn start_repair(&self) -> bool {
        let mut cdn = self.cdn.lock();
        if cdn.lost.is_empty() || cdn.repairing {
            return false;
        }
        cdn.repairing = true;
        true
    }

    /// The next lost piece for the running repair and its recorded digest, or `None` (the
    /// repair ends) when nothing is lost.
    pub fn next_repair(&self) -> Option<(u32, [u8; 32])> {
        let mut cdn = self.cdn.lock();
        let next = cdn
            .lost
            .iter()
            .copied()
            .find_map(|i| cdn.digests.get(i as usize).map(|d| (i, *d)));
        if next.is_none() {
            cdn.repairing = false;
            drop(cdn);
            self.progress.notify_waiters();
        }
        next
    }

    /// Piece `index` was fetched again, verified against its digest and stored.
    pub fn piece_repaired(&self, index: u32, data: Bytes) {
        self.hot.insert(self.serial, index, data);
        let mut cdn = self.cdn.lock();
        cdn.lost.remove(&index);
        cdn.have.set(index);
        drop(cdn);
        self.progress.notify_waiters();
    }

    /// The running repair gave up; what is lost stays lost until [`Task::start_repair`].
    pub fn repair_failed(&self) {
        self.cdn.lock().repairing = false;
        self.progress.notify_waiters();
    }

    /// Waits until no repair runs (for the origin fetch, before it checks every piece is
    /// stored).
    pub async fn repairs_settled(&self) {
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.cdn.lock().repairing {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.hot.forget_task(self.serial);
    }
}
