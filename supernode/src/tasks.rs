//! The task table: finds or creates the task for a registration (one origin fetch per task,
//! however many peers register at once), reloads cached tasks after a restart, and decides
//! whether a requester may be handed a blob someone else fetched.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use damselfly_common::{
    Digest, Sha256Hasher,
    allow::{AllowList, url_host, url_origin},
};
use damselfly_oci::OriginError;
use damselfly_store::{TaskMeta, TaskRecord, TaskState};
use damselfly_swarm::{SchedulerConfig, TaskScheduler, piece_count, piece_size_for};
use parking_lot::Mutex;
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

use crate::{
    Shared, cdn,
    metrics::{AccessRefusal, OriginKind},
    task::{CdnState, Task},
};

/// Why a registration could not be served.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The origin refused the requester or failed.
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// The requester's credentials do not open the blob at the origin.
    #[error("origin refuses this requester: {status} {message}")]
    Denied {
        /// The origin's status for the requester (502 if it could not be asked).
        status: u16,
        /// The origin's reason.
        message: String,
    },
    /// The blob is too large for the piece table.
    #[error("blob of {0} bytes is larger than Damselfly supports")]
    TooLarge(u64),
    /// Local storage failed.
    #[error("local storage failed: {0}")]
    Store(#[from] damselfly_store::Error),
    /// A blocking store call failed.
    #[error("storage worker failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// A holder asked to join a task this supernode neither runs nor stores.
    #[error("no such task here; a holder's registration does not start one")]
    NotHere,
    /// Starting the fetch would pass `cdn.max_fetches`.
    #[error("{0} origin fetches are running (cdn.max_fetches); try again shortly")]
    FetchesBusy(u32),
    /// Another task in memory would pass `cdn.max_tasks`, and none could be dropped.
    #[error("{0} tasks are in memory, all in use (cdn.max_tasks); try again shortly")]
    TasksBusy(u32),
    /// The task's admitted peers, all live, fill `scheduler.max_peers_per_task`.
    #[error("the task has {0} live peers (scheduler.max_peers_per_task); try again shortly")]
    PeersBusy(u32),
}

/// What a registration asks for.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// Task key.
    pub id: String,
    /// Origin URL.
    pub url: String,
    /// Expected content digest.
    pub digest: Option<Digest>,
    /// Headers for origin requests.
    pub headers: Vec<(String, String)>,
    /// The requester holds the content and only joins to serve it: never fetch for it.
    pub holder: bool,
    /// The requester moves a download from a lost supernode here and holds some pieces:
    /// a new task fills its copy from the swarm first ([`crate::takeover`]).
    pub takeover: bool,
}

type Slot = Arc<OnceCell<Arc<Task>>>;

/// A remembered access check: when, and the refusal `(status, message)` if refused.
type Access = (Instant, Option<(u16, String)>);

/// All tasks known in memory, with single-flight creation.
#[derive(Debug, Default)]
pub struct Tasks {
    slots: Mutex<HashMap<String, Slot>>,
    /// `(task id, access_key(requester URL, credential fingerprint))` → (checked at,
    /// refusal if refused).
    access: Mutex<HashMap<(String, [u8; 32]), Access>>,
}

impl Tasks {
    /// The task `id` if it is in memory and initialised.
    pub fn get(&self, id: &str) -> Option<Arc<Task>> {
        self.slots.lock().get(id).and_then(|s| s.get().cloned())
    }

    /// Every initialised task.
    pub fn all(&self) -> Vec<Arc<Task>> {
        self.slots
            .lock()
            .values()
            .filter_map(|s| s.get().cloned())
            .collect()
    }

    /// Forgets `task` if it is still the one in its slot.
    pub fn forget(&self, task: &Arc<Task>) {
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.get(task.id())
            && slot.get().is_some_and(|t| Arc::ptr_eq(t, task))
        {
            slots.remove(task.id());
        }
    }

    /// Finds or creates the task for `wanted`, and checks the requester may read it.
    ///
    /// The first registration of a new task starts the origin fetch with its headers; its
    /// success proves access. Later requesters are checked against the origin unless the blob
    /// is public.
    ///
    /// # Errors
    /// The origin refused, or the requester may not read the blob.
    pub async fn register(
        &self,
        shared: &Arc<Shared>,
        wanted: &Wanted,
    ) -> Result<(Arc<Task>, bool), RegisterError> {
        loop {
            let slot = {
                let mut slots = self.slots.lock();
                if !slots.contains_key(&wanted.id) {
                    make_room(&mut slots, shared.config.cdn.max_tasks as usize)?;
                }
                slots.entry(wanted.id.clone()).or_default().clone()
            };
            let proved = AtomicBool::new(false);
            let task = match slot
                .get_or_try_init(|| async {
                    let (task, fetched) = create(shared, wanted).await?;
                    proved.store(fetched, Ordering::Relaxed);
                    Ok::<_, RegisterError>(task)
                })
                .await
            {
                Ok(task) => task.clone(),
                Err(e) => {
                    // Leave no empty slot behind for a URL that failed.
                    let mut slots = self.slots.lock();
                    if slots
                        .get(&wanted.id)
                        .is_some_and(|s| Arc::ptr_eq(s, &slot) && !s.initialized())
                    {
                        slots.remove(&wanted.id);
                    }
                    return Err(e);
                }
            };
            let created = proved.load(Ordering::Relaxed);
            if task.failed() && !created {
                // A failed fetch is not final for a new requester: retry with its headers.
                self.forget(&task);
                continue;
            }
            if !created {
                self.authorize(shared, &task, wanted).await?;
            }
            // Access proven (the origin GET, or the check above): what a repair of a
            // piece found corrupt asks the origin with, and the moment to retry one that
            // failed (with credentials that may be fresher).
            task.remember_origin(&wanted.url, &wanted.headers);
            if task.start_repair() {
                crate::repair::spawn(shared, task.clone());
            }
            return Ok((task, created));
        }
    }

    /// Whether a later requester may read `task`'s blob: public blobs and the requester
    /// whose GET fetched it pass; anyone else is checked with a `HEAD` of its *own* URL
    /// (its registry and repository), with its own credentials, and only when that URL's
    /// registry is the blob's own or on `access.allow`: a registry the requester merely
    /// names could answer yes to anyone, and the first requester's registry must never see
    /// another registry's token.
    async fn authorize(
        &self,
        shared: &Shared,
        task: &Task,
        wanted: &Wanted,
    ) -> Result<(), RegisterError> {
        if task.meta.public {
            return Ok(());
        }
        let fp = fingerprint(&wanted.headers);
        if task.creator == Some(fp) {
            return Ok(());
        }
        if let Err(refusal) = vouching_registry(&shared.access_allow, &task.meta.url, &wanted.url) {
            shared
                .metrics
                .access_refusal(AccessRefusal::UnlistedRegistry);
            info!(
                task = %task.id(),
                registry = refusal.registry,
                "refused a requester whose registry is neither the blob's own nor on access.allow"
            );
            return Err(RegisterError::Denied {
                status: 403,
                message: refusal.to_string(),
            });
        }
        let key = (task.id().to_owned(), access_key(&wanted.url, &fp));
        let ttl = shared.config.origin.auth_cache_ttl;
        let now = Instant::now();
        if let Some((at, refusal)) = self.access.lock().get(&key).cloned()
            && now.duration_since(at) < ttl
        {
            return match refusal {
                None => Ok(()),
                Some((status, message)) => Err(RegisterError::Denied { status, message }),
            };
        }
        shared.metrics.origin_request(OriginKind::Head);
        let refusal = match shared
            .origin
            .check_access(&wanted.url, &wanted.headers)
            .await
        {
            Ok(()) => None,
            Err(OriginError::Status { status, message }) => Some((status.as_u16(), message)),
            // Not the origin's answer: nothing was sent to it.
            Err(OriginError::Forbidden(f)) => {
                return Err(RegisterError::Origin(OriginError::Forbidden(f)));
            }
            Err(other) => Some((502, other.to_string())),
        };
        if refusal.is_some() {
            shared.metrics.access_refusal(AccessRefusal::RegistryDenied);
        }
        debug!(task = %task.id(), allowed = refusal.is_none(), "checked requester access at its registry");
        let mut access = self.access.lock();
        access.retain(|_, (at, _)| now.duration_since(*at) < ttl);
        access.insert(key, (now, refusal.clone()));
        match refusal {
            None => Ok(()),
            Some((status, message)) => Err(RegisterError::Denied { status, message }),
        }
    }
}

/// A requester's registry that may not vouch for a blob fetched from another one.
#[derive(Debug, thiserror::Error)]
#[error(
    "registry {registry} may not admit requesters to this blob (it came from {origin}; \
     the supernode's access.allow does not list {registry})"
)]
pub struct UnlistedRegistry {
    /// `host[:port]` of the requester's URL (`<none>` if it has none).
    pub registry: String,
    /// `scheme://host[:port]` the blob was fetched from.
    pub origin: String,
}

/// Checks that `requested` (a later requester's URL) is on the blob's own registry (the
/// one `fetched_from` names: same scheme, host and port) or on `access.allow`.
///
/// # Errors
/// [`UnlistedRegistry`] otherwise.
pub fn vouching_registry(
    allow: &AllowList,
    fetched_from: &str,
    requested: &str,
) -> Result<(), UnlistedRegistry> {
    let origin = url_origin(fetched_from);
    let host = url_host(requested);
    let own = origin.is_some() && origin == url_origin(requested);
    if own || host.is_some_and(|h| allow.allows(h)) {
        return Ok(());
    }
    Err(UnlistedRegistry {
        registry: host.unwrap_or("<none>").to_owned(),
        origin: origin.unwrap_or_else(|| "<unknown>".to_owned()),
    })
}

/// The access cache's key for a requester: its URL (registry and repository) and its
/// credentials' fingerprint.
fn access_key(url: &str, fingerprint: &[u8; 32]) -> [u8; 32] {
    let mut bytes = Vec::with_capacity(url.len() + 40);
    bytes.extend_from_slice(&(url.len() as u64).to_be_bytes());
    bytes.extend_from_slice(url.as_bytes());
    bytes.extend_from_slice(fingerprint);
    Digest::of(&bytes).0
}

/// A fingerprint of the credentials among `headers` (`Authorization`, `Cookie`), so the access
/// cache never holds secrets.
pub fn fingerprint(headers: &[(String, String)]) -> [u8; 32] {
    let mut creds: Vec<String> = headers
        .iter()
        .filter(|(n, _)| {
            n.eq_ignore_ascii_case("authorization") || n.eq_ignore_ascii_case("cookie")
        })
        .map(|(n, v)| format!("{}:{v}", n.to_ascii_lowercase()))
        .collect();
    creds.sort();
    Digest::of(creds.join("\n").as_bytes()).0
}

fn has_credentials(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("authorization") || n.eq_ignore_ascii_case("cookie"))
}

pub use damselfly_store::unix_now;

fn scheduler(shared: &Shared, pieces: u32) -> TaskScheduler {
    let s = &shared.config.scheduler;
    TaskScheduler::new(
        pieces,
        SchedulerConfig {
            parents_per_peer: s.parents_per_peer,
            upload_slots: s.peer_upload_slots,
            peer_timeout: s.peer_timeout,
            ban_after_reports: s.ban_after_reports,
            ..SchedulerConfig::default()
        },
        rand_seed(),
    )
}

fn rand_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id())
}

/// Loads the task from the cache, or starts its origin fetch. Returns whether this requester's
/// own origin GET proved its access.
async fn create(shared: &Arc<Shared>, wanted: &Wanted) -> Result<(Arc<Task>, bool), RegisterError> {
    let store = shared.store.clone();
    let id = wanted.id.clone();
    let record = tokio::task::spawn_blocking(move || store.task(&id)).await??;
    let now = Instant::now();
    let leftover = record.is_some();
    if let Some(record) = &record {
        let digests: Option<Vec<[u8; 32]>> = record.pieces.iter().copied().collect();
        if let (TaskState::Complete, Some(digests)) = (&record.meta.state, digests) {
            info!(task = %wanted.id, "serving from cache");
            let sched = scheduler(shared, record.meta.piece_count());
            let task = Arc::new(Task::cached(
                record.meta.clone(),
                digests,
                sched,
                shared.hot.clone(),
                now,
            ));
            return Ok((task, false));
        }
    }
    // Neither running (the caller looked) nor stored complete: a holder never starts a fetch.
    if wanted.holder {
        return Err(RegisterError::NotHere);
    }
    // Held by the fetch until it ends; none left, the registration is refused before the
    // origin is asked anything.
    let Ok(fetch_slot) = shared.fetch_slots.clone().try_acquire_owned() else {
        warn!(task = %wanted.id, max = shared.config.cdn.max_fetches, "origin fetch refused: cdn.max_fetches are running");
        return Err(RegisterError::FetchesBusy(shared.config.cdn.max_fetches));
    };
    // A fetch a previous process left partial (it was killed mid-download): take it up
    // after the pieces it stored, with `Range`. Only for a blob with a digest, which the
    // whole-blob check at the end holds the two halves to.
    if let Some(record) = record.filter(|r| {
        r.meta.state == TaskState::Partial && r.meta.digest.is_some() && r.meta.url == wanted.url
    }) {
        match resume(shared, wanted, record).await {
            Ok((task, body, start)) => {
                shared.metrics.fetch_resumes.inc();
                let fetch = cdn::run(shared.clone(), task.clone(), body, start);
                shared.tracker.spawn(async move {
                    fetch.await;
                    drop(fetch_slot);
                });
                return Ok((task, true));
            }
            Err(e) => {
                warn!(task = %wanted.id, error = %e, "cannot resume the fetch a previous process left; starting over");
            }
        }
    }
    if leftover {
        // A partial leftover that cannot be resumed: start over.
        let store = shared.store.clone();
        let id = wanted.id.clone();
        tokio::task::spawn_blocking(move || store.remove_task(&id)).await??;
    }
    // A download moved here from a lost supernode: its swarm holds pieces, which the fill
    // copies before asking the origin for the rest (a HEAD proves access and gives the
    // length). Needs the blob's digest (the whole-blob check holds the copied pieces and
    // the origin's together) and a signing key (the peers' vouches are checked with it).
    let mut body = None;
    let mut length = None;
    if wanted.takeover
        && shared.config.cdn.takeover_from_peers
        && wanted.digest.is_some()
        && shared.signer.is_some()
    {
        shared.metrics.origin_request(OriginKind::Head);
        match shared
            .origin
            .head_length(&wanted.url, &wanted.headers)
            .await
        {
            Ok(len) => length = Some(len),
            Err(e) => {
                debug!(task = %wanted.id, error = %e, "HEAD for a takeover failed; fetching the whole blob");
            }
        }
    }
    let length = match length {
        Some(len) => len,
        None => {
            shared.metrics.origin_request(OriginKind::Get);
            let resp = shared.origin.get(&wanted.url, &wanted.headers).await?;
            body = Some(resp.body);
            resp.content_length
        }
    };
    let configured = shared.config.cdn.piece_size.as_u64();
    let piece_size = if configured == 0 {
        piece_size_for(length)
    } else {
        // Validated to be a power of two <= 64 MiB.
        configured as u32
    };
    let pieces = piece_count(length, piece_size);
    if pieces > damselfly_proto::MAX_PIECES {
        return Err(RegisterError::TooLarge(length));
    }
    let meta = TaskMeta {
        id: wanted.id.clone(),
        url: wanted.url.clone(),
        content_length: length,
        piece_size,
        digest: wanted.digest.map(|d| d.to_string()),
        public: !has_credentials(&wanted.headers),
        state: TaskState::Running,
        created_unix: unix_now(),
        last_access_unix: unix_now(),
    };
    // Room for the whole blob before its first byte: GC first if need be, else a clear
    // refusal (and the origin response is dropped unread).
    let store = shared.store.clone();
    let m = meta.clone();
    let busy = crate::in_use(shared);
    let admitted = tokio::task::spawn_blocking(move || {
        // Only the store's own handles are open on an evictable task's file.
        let (reservation, report) =
            store.reserve(m.content_length, &|id| busy.contains(id), &|_| {})?;
        let created = store.create_task(m);
        drop(reservation);
        created.map(|()| report)
    })
    .await?;
    let report = admitted.inspect_err(|e| {
        shared.metrics.storage_failure(e);
        warn!(task = %wanted.id, bytes = length, error = %e, "cannot store the blob; task refused");
    })?;
    crate::evicted(shared, &report);
    let creator = Some(fingerprint(&wanted.headers));
    let task = Arc::new(Task::running(
        meta,
        scheduler(shared, pieces),
        creator,
        shared.hot.clone(),
        now,
    ));
    let shared2 = shared.clone();
    let task2 = task.clone();
    if let Some(body) = body {
        info!(task = %wanted.id, bytes = length, piece_size, pieces, "origin fetch started");
        shared.tracker.spawn(async move {
            cdn::run(shared2, task2, body, cdn::Start::fresh()).await;
            drop(fetch_slot);
        });
    } else {
        info!(task = %wanted.id, bytes = length, piece_size, pieces, "taking the task over: filling it from the swarm's pieces first");
        shared.metrics.takeover_fills.inc();
        task.remember_origin(&wanted.url, &wanted.headers);
        shared.tracker.spawn(async move {
            crate::takeover::run(shared2, task2).await;
            drop(fetch_slot);
        });
    }
    Ok((task, true))
}

/// Takes up the fetch `record` (left [`TaskState::Partial`] by a process that died): reads
/// back the pieces it stored from the first, each checked against its recorded digest (the
/// first that is missing or fails ends the prefix), hashing them into the whole-blob
/// digest; then asks the origin for the rest with `Range`.
///
/// # Errors
/// The store or the origin failed, or the origin's answer is not the rest of the blob; the
/// caller then starts over.
async fn resume(
    shared: &Arc<Shared>,
    wanted: &Wanted,
    record: TaskRecord,
) -> Result<(Arc<Task>, damselfly_oci::BodyStream, cdn::Start), RegisterError> {
    let meta = record.meta;
    let stored: Vec<[u8; 32]> = record.pieces.iter().map_while(|p| *p).collect();
    let store = shared.store.clone();
    let id = meta.id.clone();
    let (hasher, digests) = tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256Hasher::new();
        let mut kept = Vec::with_capacity(stored.len());
        for (index, digest) in (0u32..).zip(stored) {
            match store.read_piece(&id, index) {
                Ok(bytes) => {
                    hasher.update(&bytes);
                    kept.push(digest);
                }
                Err(e) => {
                    debug!(task = %id, piece = index, error = %e, "stored piece unusable; resuming before it");
                    break;
                }
            }
        }
        (hasher, kept)
    })
    .await?;
    let index = u32::try_from(digests.len()).unwrap_or(u32::MAX);
    let offset = meta.piece_offset(index).min(meta.content_length);
    let store = shared.store.clone();
    let id = meta.id.clone();
    if !tokio::task::spawn_blocking(move || store.resume_task(&id)).await?? {
        return Err(RegisterError::Store(damselfly_store::Error::UnknownTask(
            meta.id.clone(),
        )));
    }
    shared.metrics.origin_request(OriginKind::Get);
    let rest = meta.content_length - offset;
    let resp = shared
        .origin
        .get_range(&wanted.url, &wanted.headers, offset, rest)
        .await?;
    if resp.content_length != rest {
        return Err(RegisterError::Origin(OriginError::BadResume {
            offset,
            answer: format!("{} bytes where {rest} remain", resp.content_length),
        }));
    }
    info!(
        task = %meta.id,
        from = offset,
        pieces_kept = index,
        bytes = meta.content_length,
        "origin fetch resumed after the pieces a previous process stored"
    );
    let pieces = meta.piece_count();
    let task = Arc::new(Task::resumed(
        meta,
        digests,
        scheduler(shared, pieces),
        Some(fingerprint(&wanted.headers)),
        shared.hot.clone(),
        Instant::now(),
    ));
    Ok((
        task,
        resp.body,
        cdn::Start {
            index,
            offset,
            hasher,
        },
    ))
}

/// Makes room for one more task under `max` (`cdn.max_tasks`): drops finished tasks with no
/// live peer (and failed ones), least recently active first, until one fits.
///
/// # Errors
/// [`RegisterError::TasksBusy`] when every task in memory is running or has live peers.
fn make_room(slots: &mut HashMap<String, Slot>, max: usize) -> Result<(), RegisterError> {
    if slots.len() < max {
        return Ok(());
    }
    let mut idle: Vec<(Instant, String)> = slots
        .iter()
        .filter_map(|(id, slot)| {
            let task = slot.get()?;
            let state = task.cdn.lock().state.clone();
            let droppable = match state {
                CdnState::Failed(_) => true,
                CdnState::Complete => task.sched.lock().peer_count() == 0,
                CdnState::Running => false,
            };
            droppable.then(|| (task.last_active(), id.clone()))
        })
        .collect();
    idle.sort();
    let excess = slots.len() + 1 - max;
    for (_, id) in idle.into_iter().take(excess) {
        slots.remove(&id);
    }
    if slots.len() < max {
        Ok(())
    } else {
        warn!(
            max,
            "task refused: cdn.max_tasks tasks are in memory, all in use"
        );
        Err(RegisterError::TasksBusy(max as u32))
    }
}

/// Drops idle tasks from memory: failed ones after a minute, finished ones with no live peer
/// after `idle`.
pub fn sweep(tasks: &Tasks, now: Instant, idle: Duration) {
    for task in tasks.all() {
        let quiet = now.saturating_duration_since(task.last_active());
        let state = task.cdn.lock().state.clone();
        let drop_it = match state {
            CdnState::Failed(_) => quiet > Duration::from_secs(60),
            CdnState::Complete => quiet > idle && task.sched.lock().peer_count() == 0,
            CdnState::Running => false,
        };
        if drop_it {
            tasks.forget(&task);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "http://reg-a.local:5000/v2/team-a/app/blobs/sha256:0";

    #[test]
    fn a_requester_is_checked_only_at_the_blobs_own_registry_or_a_listed_one() {
        let none = AllowList::default();
        // Its own registry, any repository.
        assert!(vouching_registry(&none, A, "http://reg-a.local:5000/v2/other/blobs/x").is_ok());
        assert!(vouching_registry(&none, A, "HTTP://REG-A.local:5000/v2/a/blobs/x").is_ok());
        // Another registry, another port or scheme of the same host, a stub, no URL.
        for other in [
            "http://reg-b.local:5000/v2/team-b/app/blobs/x",
            "http://reg-a.local:5001/v2/team-a/app/blobs/x",
            "https://reg-a.local:5000/v2/team-a/app/blobs/x",
            "http://127.0.0.1:8080/v2/team-a/app/blobs/x",
            "not a url",
        ] {
            let e = vouching_registry(&none, A, other).unwrap_err();
            assert!(e.to_string().contains("access.allow"), "{e}");
        }
        let allow = AllowList::parse(&["reg-b.local:*"]).unwrap();
        assert!(vouching_registry(&allow, A, "http://reg-b.local:5000/v2/b/blobs/x").is_ok());
        assert!(vouching_registry(&allow, A, "http://127.0.0.1:8080/v2/b/blobs/x").is_err());
    }

    #[test]
    fn access_keys_differ_by_url_and_credential() {
        let (a, b) = ([1; 32], [2; 32]);
        assert_eq!(access_key(A, &a), access_key(A, &a));
        assert_ne!(access_key(A, &a), access_key(A, &b));
        assert_ne!(access_key(A, &a), access_key("http://reg-b.local/v2/x", &a));
    }
}
