//! Harbor preheat: jobs that put an image's blobs into the cluster before nodes ask.
//!
//! A job fetches the manifest at the URL Harbor gives (with Harbor's short-lived token),
//! resolves an index to the configured platform, and then, for every blob (config and
//! layers), registers it like a peer would: the supernode fetches it from the registry once
//! and keeps it. With scope `all_peers` every node announced by its dfdaemon then fetches
//! the blob through the swarm too. Jobs live in RocksDB (`<data_dir>/preheat`); a job that
//! was running when the supernode stopped is failed with that reason at the next start
//! (Harbor's token has expired by then, so it cannot be resumed).
//!
//! The two HTTP dialects Harbor speaks are in [`api`].

pub mod api;
pub mod manifest;

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use damselfly_common::Digest;
use damselfly_oci::OriginError;
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    Shared,
    task::{CdnState, Task},
    tasks::Wanted,
};

/// Which Harbor API generation created a job (it decides the JSON shapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// `/preheats` (Harbor 2.1–2.11).
    V1,
    /// `/oapi/v1/jobs` (Harbor 2.12+).
    V2,
}

/// Where the blobs must end up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The supernode's cache (the default).
    SingleSeedPeer,
    /// Every supernode. This supernode caches; its peers in other clusters are not known to
    /// it, so this is the same as `single_seed_peer` here.
    AllSeedPeers,
    /// The supernode and every dfdaemon that announced itself.
    AllPeers,
}

impl Scope {
    /// Parses Harbor's `scope`; empty means the default.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "single_seed_peer" => Some(Self::SingleSeedPeer),
            "all_seed_peers" => Some(Self::AllSeedPeers),
            "all_peers" => Some(Self::AllPeers),
            _ => None,
        }
    }
}

/// Lifecycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Accepted, not started.
    Pending,
    /// Fetching.
    Running,
    /// Every blob is where the scope says.
    Success,
    /// Something failed; see `error`.
    Failure,
}

impl JobState {
    /// A metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }

    fn finished(self) -> bool {
        matches!(self, Self::Success | Self::Failure)
    }
}

/// One blob on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The blob URL.
    pub url: String,
    /// The host that fetched it (this supernode or a node).
    pub hostname: String,
    /// Its IP.
    pub ip: String,
    /// Whether it has the blob now.
    pub ok: bool,
    /// Why not.
    pub description: String,
}

/// A preheat job, as persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// Job number.
    pub id: u64,
    /// Creating API.
    pub api: Api,
    /// Manifest URL.
    pub url: String,
    /// Manifest digest Harbor named (generation 1), for duplicate detection.
    pub digest: String,
    /// Target scope.
    pub scope: Scope,
    /// State.
    pub state: JobState,
    /// Created, ms since the Unix epoch.
    pub created_ms: u64,
    /// Last change, ms since the Unix epoch.
    pub updated_ms: u64,
    /// Started running.
    pub started_ms: Option<u64>,
    /// Finished.
    pub finished_ms: Option<u64>,
    /// Why it failed.
    pub error: String,
    /// Per blob and host.
    pub results: Vec<TaskResult>,
}

/// What a new job needs beyond its record (never persisted: the headers hold a token).
#[derive(Debug, Clone)]
pub struct JobRequest {
    /// Headers for the registry (Harbor's token).
    pub headers: Vec<(String, String)>,
    /// Platform for an index.
    pub platform: String,
    /// Blobs at once.
    pub concurrency: usize,
    /// Longest run.
    pub timeout: Duration,
}

/// Why the job table failed.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// RocksDB failed.
    #[error("preheat job database: {0}")]
    Db(#[from] rocksdb::Error),
    /// A record could not be encoded.
    #[error("preheat job record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The job table: all jobs in memory, each change written through to RocksDB.
pub struct Jobs {
    db: rocksdb::DB,
    jobs: Mutex<BTreeMap<u64, Job>>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("jobs", &self.jobs.lock().len())
            .finish_non_exhaustive()
    }
}

/// Jobs kept after they finish, newest first; older ones are deleted.
const KEEP_FINISHED: usize = 10_000;

fn key(id: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(b"j/");
    k[2..].copy_from_slice(&id.to_be_bytes());
    k
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Jobs {
    /// Opens the table in `dir`; jobs left pending or running are failed with the reason.
    ///
    /// # Errors
    /// RocksDB cannot be opened or written.
    pub fn open(dir: &Path) -> Result<Self, JobsError> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        opts.set_keep_log_file_num(4);
        let db = rocksdb::DB::open(&opts, dir)?;
        let mut jobs = BTreeMap::new();
        for item in db.prefix_iterator(b"j/") {
            let (k, v) = item?;
            if !k.starts_with(b"j/") {
                break;
            }
            match serde_json::from_slice::<Job>(&v) {
                Ok(job) => {
                    jobs.insert(job.id, job);
                }
                Err(e) => {
                    warn!(error = %e, "dropping an unreadable preheat job record");
                    db.delete(&k)?;
                }
            }
        }
        let table = Self {
            db,
            jobs: Mutex::new(jobs),
        };
        let interrupted: Vec<u64> = table
            .jobs
            .lock()
            .values()
            .filter(|j| !j.state.finished())
            .map(|j| j.id)
            .collect();
        for id in interrupted {
            table.update(id, |j| {
                j.state = JobState::Failure;
                j.error = "the supernode restarted while this job ran; preheat again".into();
                j.finished_ms = Some(now_ms());
            })?;
        }
        info!(jobs = table.jobs.lock().len(), "preheat jobs loaded");
        Ok(table)
    }

    /// Creates a pending job.
    ///
    /// # Errors
    /// It could not be persisted.
    pub fn create(
        &self,
        api: Api,
        url: &str,
        digest: &str,
        scope: Scope,
    ) -> Result<Job, JobsError> {
        let now = now_ms();
        let mut jobs = self.jobs.lock();
        let id = jobs.last_key_value().map_or(1, |(id, _)| id + 1);
        let job = Job {
            id,
            api,
            url: url.to_owned(),
            digest: digest.to_owned(),
            scope,
            state: JobState::Pending,
            created_ms: now,
            updated_ms: now,
            started_ms: None,
            finished_ms: None,
            error: String::new(),
            results: Vec::new(),
        };
        self.db.put(key(id), serde_json::to_vec(&job)?)?;
        jobs.insert(id, job.clone());
        // Bound the table: drop the oldest finished jobs.
        if jobs.len() > KEEP_FINISHED {
            let old: Vec<u64> = jobs
                .values()
                .filter(|j| j.state.finished())
                .map(|j| j.id)
                .take(jobs.len() - KEEP_FINISHED)
                .collect();
            for id in old {
                self.db.delete(key(id))?;
                jobs.remove(&id);
            }
        }
        Ok(job)
    }

    /// A job by id.
    pub fn get(&self, id: u64) -> Option<Job> {
        self.jobs.lock().get(&id).cloned()
    }

    /// The newest job for this URL and manifest digest, if any.
    pub fn find(&self, url: &str, digest: &str) -> Option<Job> {
        self.jobs
            .lock()
            .values()
            .rev()
            .find(|j| j.url == url && j.digest == digest)
            .cloned()
    }

    /// Counts of jobs per state.
    pub fn counts(&self) -> HashMap<JobState, i64> {
        let mut m = HashMap::new();
        for j in self.jobs.lock().values() {
            *m.entry(j.state).or_default() += 1;
        }
        m
    }

    /// Applies `f` to job `id` and persists it.
    ///
    /// # Errors
    /// It could not be persisted (the in-memory job is changed anyway).
    pub fn update(&self, id: u64, f: impl FnOnce(&mut Job)) -> Result<(), JobsError> {
        let mut jobs = self.jobs.lock();
        let Some(job) = jobs.get_mut(&id) else {
            return Ok(());
        };
        f(job);
        job.updated_ms = now_ms();
        self.db.put(key(id), serde_json::to_vec(job)?)?;
        Ok(())
    }
}

/// A node that announced itself (its dfdaemon).
#[derive(Debug, Clone)]
pub struct Node {
    /// Its IP.
    pub ip: String,
    /// Its mirror's base URL.
    pub mirror: String,
    /// Last announce.
    pub seen: Instant,
    /// The address its announcements come from: the entry is bound to it until it expires.
    pub from: std::net::IpAddr,
}

/// Runs job `id` to the end.
pub async fn run(shared: Arc<Shared>, id: u64, req: JobRequest) {
    let Some(job) = shared.jobs.get(id) else {
        return;
    };
    let started = Instant::now();
    persist(&shared, id, |j| {
        j.state = JobState::Running;
        j.started_ms = Some(now_ms());
    });
    info!(job = id, url = %job.url, scope = ?job.scope, "preheat started");
    let outcome = tokio::time::timeout(req.timeout, execute(&shared, &job, &req)).await;
    let (state, error, results) = match outcome {
        Ok(Ok(results)) => {
            let failed: Vec<String> = results
                .iter()
                .filter(|r| !r.ok)
                .map(|r| format!("{} on {}: {}", r.url, r.hostname, r.description))
                .collect();
            if failed.is_empty() {
                (JobState::Success, String::new(), results)
            } else {
                (JobState::Failure, failed.join("; "), results)
            }
        }
        Ok(Err(e)) => (JobState::Failure, e, Vec::new()),
        Err(_) => (
            JobState::Failure,
            format!(
                "timed out after {}",
                humantime::format_duration(req.timeout)
            ),
            Vec::new(),
        ),
    };
    info!(job = id, state = state.label(), error = %error, secs = started.elapsed().as_secs_f64(), "preheat finished");
    persist(&shared, id, |j| {
        j.state = state;
        j.error = error;
        j.results = results;
        j.finished_ms = Some(now_ms());
    });
}

fn persist(shared: &Shared, id: u64, f: impl FnOnce(&mut Job)) {
    if let Err(e) = shared.jobs.update(id, f) {
        warn!(job = id, error = %e, "cannot persist a preheat job");
    }
    shared.metrics.preheat_states(&shared.jobs.counts());
}

/// Largest manifest read.
const MAX_MANIFEST: usize = 4 << 20;

async fn fetch_manifest(
    shared: &Shared,
    url: &str,
    headers: &[(String, String)],
) -> Result<Vec<u8>, String> {
    let mut headers = headers.to_vec();
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case("accept"));
    headers.push(("Accept".into(), manifest::ACCEPT.into()));
    let resp = shared
        .origin
        .get(url, &headers)
        .await
        .map_err(|e| describe(url, &e))?;
    if resp.content_length > MAX_MANIFEST as u64 {
        return Err(format!(
            "{url}: manifest of {} bytes is too large",
            resp.content_length
        ));
    }
    let chunks: Vec<bytes::Bytes> = resp
        .body
        .try_collect()
        .await
        .map_err(|e| describe(url, &e))?;
    Ok(chunks.concat())
}

fn describe(url: &str, e: &OriginError) -> String {
    format!("{url}: {e}")
}

/// Fetches the manifest and every blob; returns one result per blob and host.
async fn execute(
    shared: &Arc<Shared>,
    job: &Job,
    req: &JobRequest,
) -> Result<Vec<TaskResult>, String> {
    let Some((base, repo)) = manifest::split_manifest_url(&job.url) else {
        return Err(format!("{} is not a manifest URL", job.url));
    };
    let body = fetch_manifest(shared, &job.url, &req.headers).await?;
    let blobs = match manifest::parse(&body, &req.platform).map_err(|e| e.to_string())? {
        manifest::Parsed::Image(blobs) => blobs,
        manifest::Parsed::Index(digest) => {
            let url = format!("{base}/v2/{repo}/manifests/{digest}");
            let body = fetch_manifest(shared, &url, &req.headers).await?;
            match manifest::parse(&body, &req.platform).map_err(|e| e.to_string())? {
                manifest::Parsed::Image(blobs) => blobs,
                manifest::Parsed::Index(_) => {
                    return Err(format!("{url}: an index inside an index"));
                }
            }
        }
    };
    let (hostname, ip) = self_identity(shared);
    let nodes: Vec<(String, Node)> = if job.scope == Scope::AllPeers {
        let live = shared.config.scheduler.peer_timeout * 3;
        shared
            .nodes
            .lock()
            .iter()
            .filter(|(_, n)| n.seen.elapsed() < live)
            .map(|(h, n)| (h.clone(), n.clone()))
            .collect()
    } else {
        Vec::new()
    };
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let results = futures::stream::iter(blobs)
        .map(|digest| {
            let url = format!("{base}/v2/{repo}/blobs/{digest}");
            let (hostname, ip, nodes, client) = (&hostname, &ip, &nodes, &client);
            async move {
                let mut out = Vec::new();
                for target in seed_targets(shared, job.scope, &digest) {
                    let (name, addr, seeded) = match &target {
                        None => (
                            hostname.clone(),
                            ip.clone(),
                            seed(shared, &url, digest, &req.headers).await,
                        ),
                        Some(sn) => (
                            sn.clone(),
                            sn.rsplit_once(':')
                                .map_or(sn.as_str(), |(h, _)| h)
                                .to_owned(),
                            remote_seed(
                                client,
                                shared.control.as_ref(),
                                sn,
                                &url,
                                digest,
                                &req.headers,
                            )
                            .await,
                        ),
                    };
                    out.push(TaskResult {
                        url: url.clone(),
                        hostname: name,
                        ip: addr,
                        ok: seeded.is_ok(),
                        description: seeded.err().unwrap_or_default(),
                    });
                }
                let ok = out.iter().all(|r| r.ok);
                if ok {
                    for (name, node) in nodes {
                        let r = node_fetch(
                            client,
                            shared.control.as_ref(),
                            node,
                            &url,
                            digest,
                            &req.headers,
                        )
                        .await;
                        out.push(TaskResult {
                            url: url.clone(),
                            hostname: name.clone(),
                            ip: node.ip.clone(),
                            ok: r.is_ok(),
                            description: r.err().unwrap_or_default(),
                        });
                    }
                }
                out
            }
        })
        .buffer_unordered(req.concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    Ok(results.into_iter().flatten().collect())
}

/// Where a blob must be seeded: `None` is this supernode (no cluster configured), `Some`
/// a supernode of `preheat.supernodes` reached over HTTP (possibly this one).
fn seed_targets(shared: &Shared, scope: Scope, digest: &Digest) -> Vec<Option<String>> {
    let cluster = damselfly_common::placement::normalize(&shared.config.preheat.supernodes);
    if cluster.is_empty() {
        return vec![None];
    }
    if scope == Scope::AllSeedPeers {
        return cluster.into_iter().map(Some).collect();
    }
    let home = damselfly_common::placement::home_index(digest, &cluster);
    vec![cluster.get(home).cloned()]
}

/// Asks supernode `sn` to fetch and keep a blob (`POST /api/v1/seed`).
async fn remote_seed(
    client: &reqwest::Client,
    control: Option<&damselfly_common::ControlKey>,
    sn: &str,
    url: &str,
    digest: Digest,
    headers: &[(String, String)],
) -> Result<(), String> {
    post_and_check(
        client,
        control,
        &format!("http://{sn}/api/v1/seed"),
        url,
        digest,
        headers,
    )
    .await
}

/// This supernode's name and IP for results.
fn self_identity(shared: &Shared) -> (String, String) {
    let configured = &shared.config.preheat.hostname;
    let hostname = if configured.is_empty() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "supernode".into())
    } else {
        configured.clone()
    };
    (hostname, shared.config.listen.ip().to_string())
}

/// Has the supernode fetch and keep one blob; waits until it is complete.
pub(crate) async fn seed(
    shared: &Arc<Shared>,
    url: &str,
    digest: Digest,
    headers: &[(String, String)],
) -> Result<(), String> {
    let wanted = Wanted {
        id: digest.to_string(),
        url: url.to_owned(),
        digest: Some(digest),
        headers: headers.to_vec(),
        holder: false,
        takeover: false,
    };
    let (task, created) = shared
        .tasks
        .register(shared, &wanted)
        .await
        .map_err(|e| e.to_string())?;
    wait_complete(&task).await?;
    if created {
        shared
            .metrics
            .preheat_bytes
            .inc_by(task.meta.content_length);
    }
    Ok(())
}

async fn wait_complete(task: &Task) -> Result<(), String> {
    loop {
        let notified = task.progress.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match &task.cdn.lock().state {
            CdnState::Complete => return Ok(()),
            CdnState::Failed(e) => return Err(e.clone()),
            CdnState::Running => {}
        }
        notified.await;
    }
}

/// Asks a node's dfdaemon to fetch a blob through the swarm and keep it.
async fn node_fetch(
    client: &reqwest::Client,
    control: Option<&damselfly_common::ControlKey>,
    node: &Node,
    url: &str,
    digest: Digest,
    headers: &[(String, String)],
) -> Result<(), String> {
    post_and_check(
        client,
        control,
        &format!("{}/api/v1/preheat", node.mirror),
        url,
        digest,
        headers,
    )
    .await
}

/// POSTs `{url, digest, headers}` to `endpoint`, signed with `control` when the cluster has
/// a secret; a 2xx is success, anything else the reason.
async fn post_and_check(
    client: &reqwest::Client,
    control: Option<&damselfly_common::ControlKey>,
    endpoint: &str,
    url: &str,
    digest: Digest,
    headers: &[(String, String)],
) -> Result<(), String> {
    let headers: HashMap<&str, &str> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let body = serde_json::json!({ "url": url, "digest": digest.to_string(), "headers": headers });
    let body = body.to_string();
    let mut req = client
        .post(endpoint)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Some(key) = control {
        let auth = key
            .sign_url("POST", endpoint, body.as_bytes())
            .ok_or_else(|| format!("{endpoint}: not a URL"))?;
        req = req.header(reqwest::header::AUTHORIZATION, auth);
    }
    let resp = req
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{endpoint} unreachable: {e}"))?;
    if resp.status().is_success() {
        return Ok(());
    }
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let reason = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or(text);
    Err(format!("{endpoint} answered {status}: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_survive_a_restart_and_interrupted_ones_fail_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (done, running) = {
            let jobs = Jobs::open(dir.path()).unwrap();
            let done = jobs
                .create(
                    Api::V1,
                    "http://r/v2/a/manifests/1",
                    "d",
                    Scope::SingleSeedPeer,
                )
                .unwrap();
            jobs.update(done.id, |j| j.state = JobState::Success)
                .unwrap();
            let running = jobs
                .create(Api::V2, "http://r/v2/b/manifests/1", "", Scope::AllPeers)
                .unwrap();
            jobs.update(running.id, |j| j.state = JobState::Running)
                .unwrap();
            (done.id, running.id)
        };
        let jobs = Jobs::open(dir.path()).unwrap();
        assert_eq!(jobs.get(done).unwrap().state, JobState::Success);
        let r = jobs.get(running).unwrap();
        assert_eq!(r.state, JobState::Failure);
        assert!(r.error.contains("restarted"), "{}", r.error);
        assert!(r.finished_ms.is_some());
        // Ids keep growing after a restart.
        let next = jobs
            .create(
                Api::V1,
                "http://r/v2/c/manifests/1",
                "",
                Scope::SingleSeedPeer,
            )
            .unwrap();
        assert!(next.id > running);
        assert_eq!(
            jobs.find("http://r/v2/a/manifests/1", "d").unwrap().id,
            done
        );
    }
}
