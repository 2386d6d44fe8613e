//! Taking a task over from a lost supernode: the copy is filled from the swarm first.
//!
//! When a blob's supernode dies mid-download, its peers register with the next supernode in
//! the blob's placement order, saying it is a takeover. They already hold much of the blob,
//! so instead of fetching all of it from the registry again, this supernode walks the pieces
//! in order and, for each:
//!
//! ```text
//!   held by a live peer ──▶ copy it from the least busy holders (peer protocol, TCP,
//!   │                        pipelined), keep it only if the piece's vouch checks out
//!   │                        under this supernode's signing key (shared by the fleet)
//!   │                        and the bytes hash to the vouched digest
//!   │                        └─ no holder answers, or no vouch: the origin, below
//!   held by nobody ────────▶ one Range GET for the run of pieces nobody holds
//!
//!   each piece, in order ──▶ whole-blob sha256 ──▶ stored and published (cdn::StoreJob)
//!   the end ───────────────▶ the whole blob must match its digest (cdn::complete)
//! ```
//!
//! Nothing unverified is published: a copied piece is published only if its digest carries
//! a fleet supernode's signature, and the whole blob is checked at the end as for an origin
//! fetch (a mismatch drops every piece). Registry bytes drop from twice the blob (the lost
//! supernode's fetch and this one's) to the blob plus the pieces nobody held.

use std::{
    collections::{HashMap, VecDeque},
    fs::File,
    net::SocketAddr,
    os::unix::fs::FileExt as _,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use damselfly_common::{Sha256Hasher, vouch::DigestVerifier};
use damselfly_proto::{PROTOCOL_VERSION, PieceRequest};
use damselfly_store::TaskMeta;
use damselfly_swarm::PeerId;
use dfget::{fetch::PieceSink, tcp::Link};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use crate::{
    Shared,
    cdn::{self, FetchError, StoreJob},
    metrics::OriginKind,
    task::Task,
};

/// Piece copies in flight to peers at once.
const COPIES_IN_FLIGHT: usize = 8;
/// Holders tried for one piece before it goes to the origin.
const HOLDERS_TRIED: usize = 3;
/// How long the fill waits, at most, for the swarm's first report of what it holds (the
/// registering peer syncs right after its registration).
const FIRST_REPORT_WAIT: Duration = Duration::from_secs(2);
/// A peer connection that cannot be made in this time is given up for the piece.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A piece copy that takes longer than this goes to the next holder.
const COPY_TIMEOUT: Duration = Duration::from_secs(20);

/// Fills `task` (new, nothing stored) from its swarm and the origin, and records the outcome.
pub async fn run(shared: Arc<Shared>, task: Arc<Task>) {
    let result = fill(&shared, &task).await;
    cdn::conclude(&shared, &task, result).await;
}

/// What one piece copy gave.
enum Copied {
    /// The piece's bytes and their digest, which a fleet supernode vouched for.
    Piece(Vec<u8>, [u8; 32]),
    /// A holder sent it under a vouch this supernode cannot check (the fleet's supernodes
    /// sign with different keys): no copy will do, the rest comes from the origin.
    Unvouched,
    /// No holder gave it (gone, busy, timed out, a local failure).
    Failed,
}

async fn fill(shared: &Arc<Shared>, task: &Arc<Task>) -> Result<(), FetchError> {
    let count = task.meta.piece_count();
    let verifier = shared
        .signer
        .as_ref()
        .and_then(|s| DigestVerifier::new(&s.public_key()).ok());
    // Without a scratch file or a key to check vouches with, every piece comes from the
    // origin.
    let mut copier = verifier.and_then(|v| Copier::new(shared, task, v));
    wait_for_first_report(task).await;
    let mut hasher = Sha256Hasher::new();
    let mut storing: Option<StoreJob> = None;
    // Copies started, in piece order: (piece, its copy), running concurrently.
    let mut copies: VecDeque<(u32, AbortOnDropHandle<Copied>)> = VecDeque::new();
    let mut next_copy = 0u32;
    let mut index = 0u32;
    let (mut from_peers, mut from_origin) = (0u64, 0u64);
    while index < count {
        // Keep copies of the next held pieces in flight; stop at the first piece nobody
        // holds (the origin's next run starts there).
        next_copy = next_copy.max(index);
        while let Some(copier) = &copier
            && copies.len() < COPIES_IN_FLIGHT
            && next_copy < count
        {
            let sources = task.sched.lock().copy_sources(next_copy, HOLDERS_TRIED);
            if sources.is_empty() {
                break;
            }
            let copy = tokio::spawn(copier.clone().copy(next_copy, sources));
            copies.push_back((next_copy, AbortOnDropHandle::new(copy)));
            next_copy += 1;
        }
        if let Some((piece, copy)) = copies.pop_front() {
            debug_assert_eq!(piece, index);
            let copied = copy.await.unwrap_or(Copied::Failed);
            if let Copied::Unvouched = copied {
                warn!(
                    task = task.id(),
                    piece,
                    "takeover: the peers' pieces are vouched for with a key this supernode does not hold; fetching the rest from the origin (give every supernode of the fleet the same cluster.signing_key_file)"
                );
                copier = None;
                copies.clear();
                next_copy = index;
                // The origin, from this piece to the end, in one run.
                continue;
            }
            if let Copied::Piece(data, digest) = copied {
                let len = data.len() as u64;
                hasher.update(&data);
                if let Some(previous) = storing.take() {
                    previous.finish(task).await?;
                }
                // Hashed again by the store against the checked digest: nothing else is
                // written.
                storing = Some(StoreJob::start(shared, task, index, data, Some(digest)));
                shared.metrics.takeover_peer_bytes.inc_by(len);
                from_peers += len;
                index += 1;
                continue;
            }
            // No holder gave it: this one piece from the origin; the copies after it
            // stay in flight.
            from_origin +=
                origin_run(shared, task, index, index + 1, &mut hasher, &mut storing).await?;
            index += 1;
            continue;
        }
        // Nobody holds `index` (or copying stopped): the origin, up to the next piece
        // somebody holds.
        let end = if copier.is_some() {
            let sched = task.sched.lock();
            (index + 1..count)
                .find(|&p| !sched.copy_sources_empty(p))
                .unwrap_or(count)
        } else {
            count
        };
        from_origin += origin_run(shared, task, index, end, &mut hasher, &mut storing).await?;
        index = end;
    }
    if let Some(last) = storing.take() {
        last.finish(task).await?;
    }
    info!(
        task = task.id(),
        from_peers, from_origin, "takeover fill: every piece stored"
    );
    cdn::complete(shared, task, hasher).await
}

/// Waits until some peer of the task has reported a piece, or [`FIRST_REPORT_WAIT`].
async fn wait_for_first_report(task: &Task) {
    let deadline = Instant::now() + FIRST_REPORT_WAIT;
    while Instant::now() < deadline {
        {
            let sched = task.sched.lock();
            if (0..sched.piece_count()).any(|p| sched.holders(p) > 0) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fetches pieces `from..to` from the origin with one `Range` GET, hashing them into
/// `hasher` and storing each (the previous store job is finished before the next starts).
/// Returns the bytes fetched.
async fn origin_run(
    shared: &Shared,
    task: &Task,
    from: u32,
    to: u32,
    hasher: &mut Sha256Hasher,
    storing: &mut Option<StoreJob>,
) -> Result<u64, FetchError> {
    let meta = &task.meta;
    let start = meta.piece_offset(from);
    let end = if to >= meta.piece_count() {
        meta.content_length
    } else {
        meta.piece_offset(to)
    };
    let request = task.origin_request().ok_or_else(|| {
        FetchError::Origin(damselfly_oci::OriginError::Transport(
            "no requester's origin request to repeat".into(),
        ))
    })?;
    debug!(
        task = task.id(),
        from, to, "takeover fill: pieces nobody holds, from the origin"
    );
    shared.metrics.origin_request(OriginKind::Range);
    let resp = shared
        .origin
        .get_range(&request.url, &request.headers, start, end - start)
        .await?;
    let mut body = resp.body;
    cdn::store_body(shared, task, &mut body, (from, start), end, hasher, storing).await?;
    Ok(end - start)
}

/// Copies pieces from peers: one pipelined TCP link per peer, a scratch file the pieces
/// land in (a slot per copy in flight), this supernode's own piece token.
#[derive(Clone)]
struct Copier {
    task_id: Arc<str>,
    meta: Arc<TaskMeta>,
    /// This supernode as a requester: its id and the token the peers' servers check.
    me: PeerId,
    token: Vec<u8>,
    verifier: DigestVerifier,
    scratch: Arc<File>,
    scratch_path: Arc<Path>,
    links: Arc<parking_lot::Mutex<HashMap<SocketAddr, Link>>>,
}

impl Copier {
    fn new(shared: &Shared, task: &Task, verifier: DigestVerifier) -> Option<Self> {
        let me = PeerId(rand::random());
        let token = shared.piece_tokens.as_ref().map_or_else(Vec::new, |key| {
            key.issue_for(task.id(), me.0, shared.config.cluster.piece_token_ttl)
        });
        // Unnamed, so it goes when the fill ends (or the process dies).
        let dir = shared.config.data_dir.clone();
        let scratch = tempfile::tempfile_in(&dir)
            .inspect_err(|e| {
                warn!(task = task.id(), dir = %dir.display(), error = %e, "takeover: no scratch file for copies from peers; every piece from the origin");
            })
            .ok()?;
        Some(Self {
            task_id: Arc::from(task.id()),
            meta: Arc::new(task.meta.clone()),
            me,
            token,
            verifier,
            scratch: Arc::new(scratch),
            scratch_path: Arc::from(dir.as_path()),
            links: Arc::default(),
        })
    }

    /// Piece `piece` from the first of `sources` that sends bytes matching a digest this
    /// supernode's key vouched for; `None` when none does.
    async fn copy(self, piece: u32, sources: Vec<(PeerId, SocketAddr)>) -> Copied {
        let len = self.meta.piece_len(piece).unwrap_or(0);
        let Ok(buf_len) = usize::try_from(len) else {
            return Copied::Failed;
        };
        let slot = u64::from(piece) % COPIES_IN_FLIGHT as u64;
        let sink = PieceSink {
            file: self.scratch.clone(),
            path: self.scratch_path.clone(),
            offset: slot * u64::from(self.meta.piece_size),
            len,
            relay: None,
        };
        let request = PieceRequest {
            version: PROTOCOL_VERSION,
            task_id: self.task_id.to_string(),
            piece,
            peer_id: self.me.0,
            token: self.token.clone(),
            streamed: false,
        };
        for (peer, addr) in sources {
            let Some(link) = self.link(addr).await else {
                continue;
            };
            let fetched =
                tokio::time::timeout(COPY_TIMEOUT, link.fetch_into(addr, &request, sink.clone()))
                    .await;
            let fetched = match fetched {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => {
                    debug!(task = %self.task_id, piece, %peer, error = %e, "takeover copy failed");
                    continue;
                }
                Err(_) => {
                    debug!(task = %self.task_id, piece, %peer, "takeover copy timed out");
                    self.drop_link(addr);
                    continue;
                }
            };
            match fetched.vouch {
                Some(v) if self.verifier.check(&self.task_id, piece, &v).is_ok() => {
                    if v.digest != fetched.digest {
                        // A signed digest and other bytes: this holder lies; the next one.
                        debug!(task = %self.task_id, piece, %peer, "takeover copy: bytes do not match the vouched digest");
                        continue;
                    }
                }
                _ => {
                    debug!(task = %self.task_id, piece, %peer, "takeover copy without a vouch this fleet signed");
                    return Copied::Unvouched;
                }
            }
            let mut data = vec![0u8; buf_len];
            let file = self.scratch.clone();
            let offset = sink.offset;
            let read = tokio::task::spawn_blocking(move || {
                file.read_exact_at(&mut data, offset).map(|()| data)
            })
            .await;
            match read {
                // The sink hashed the bytes as they came; this checks they stayed.
                Ok(Ok(data)) if damselfly_common::Digest::of(&data) == fetched.digest => {
                    return Copied::Piece(data, fetched.digest.0);
                }
                _ => {
                    debug!(task = %self.task_id, piece, "takeover copy: scratch read failed");
                    return Copied::Failed;
                }
            }
        }
        Copied::Failed
    }

    async fn link(&self, addr: SocketAddr) -> Option<Link> {
        if let Some(link) = self.links.lock().get(&addr).filter(|l| !l.is_closed()) {
            return Some(link.clone());
        }
        match Link::connect(addr, CONNECT_TIMEOUT, COPY_TIMEOUT).await {
            Ok(link) => {
                self.links.lock().insert(addr, link.clone());
                Some(link)
            }
            Err(e) => {
                debug!(%addr, error = %e, "takeover: cannot reach a holder");
                None
            }
        }
    }

    fn drop_link(&self, addr: SocketAddr) {
        if let Some(link) = self.links.lock().remove(&addr) {
            link.close();
        }
    }
}
