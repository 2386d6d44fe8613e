//! [`Snapshotter`]: containerd's snapshot calls over the store, the mounts and the remote seam.
//!
//! Every call runs its file-system work on tokio's blocking pool. Metadata changes hold the
//! store's mutex; the slow parts (measuring a snapshot at Commit or Usage, deleting a removed
//! snapshot's directory) run without it. Errors become gRPC statuses in one place
//! ([`status`]), which is also where they are logged.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use containerd_snapshots::{self as api, tonic};
use parking_lot::Mutex;
use tonic::Status;
use tracing::{debug, error, info, warn};

use crate::filter::Filters;
use crate::layout::Layout;
use crate::mounts::{self, Mount, Stack};
use crate::remote::{LayerRequest, Remote, TARGET_SNAPSHOT_LABEL};
use crate::store::{Error, Kind, MetaStore, NewSnapshot, Record, Source, Usage};
use crate::usage::disk_usage;

/// The snapshotter served to containerd: overlay snapshots under one root, plus whatever
/// `remote` provides.
///
/// Build it with [`Snapshotter::open`], then serve it with [`crate::Server`]. A second
/// process must not open the same root at the same time (the records would diverge).
pub struct Snapshotter {
    layout: Layout,
    store: Arc<Mutex<MetaStore>>,
    remote: Arc<dyn Remote>,
    index_off: bool,
}

impl std::fmt::Debug for Snapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshotter")
            .field("root", &self.layout.root())
            .field("index_off", &self.index_off)
            .finish_non_exhaustive()
    }
}

impl Snapshotter {
    /// Opens (creating it if needed) the snapshotter state under `root` and removes the
    /// directories no snapshot owns (left by a crash or an interrupted removal).
    ///
    /// # Errors
    /// The root is unusable ([`Layout::new`]) or cannot be read or created.
    pub fn open(root: impl Into<PathBuf>, remote: Arc<dyn Remote>) -> Result<Self, Error> {
        let layout = Layout::new(root)?;
        let store = MetaStore::open(layout.clone())?;
        let orphans = store.orphans()?;
        remove_dirs(&orphans);
        info!(
            root = %layout.root().display(),
            snapshots = store.len(),
            orphans_removed = orphans.len(),
            "snapshot state loaded"
        );
        Ok(Self {
            layout,
            store: Arc::new(Mutex::new(store)),
            remote,
            index_off: mounts::kernel_has_overlay_index(),
        })
    }

    /// Hands the remote layers recorded by an earlier run to the provider ([`Remote::recover`]),
    /// so it takes back the mounts they need. Call once after [`Snapshotter::open`].
    pub async fn recover_remote(&self) {
        let records: Vec<Record> = self
            .store
            .lock()
            .iter()
            .filter(|r| matches!(r.source, Source::Remote { .. }))
            .cloned()
            .collect();
        self.remote.recover(&records).await;
    }

    /// The layout of the root directory.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Runs `work` on the blocking pool with the store locked.
    async fn locked<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut MetaStore) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let store = Arc::clone(&self.store);
        blocking(move || work(&mut store.lock())).await
    }

    async fn create(
        &self,
        kind: Kind,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Error> {
        let labels: BTreeMap<_, _> = labels.into_iter().collect();
        let parent = Some(parent).filter(|parent| !parent.is_empty());
        if kind == Kind::Active
            && let Some(target) = labels.get(TARGET_SNAPSHOT_LABEL)
        {
            let request = LayerRequest {
                key: &key,
                target,
                parent: parent.as_deref(),
                labels: &labels,
            };
            if let Some(layer) = self.remote.provide(request).await? {
                let new = NewSnapshot {
                    key: target.clone(),
                    kind: Kind::Committed,
                    parent,
                    labels: labels.clone(),
                    source: Source::Remote { lower: layer.lower },
                };
                self.create_record(new).await?;
                info!(target = %target, "layer provided remotely");
                return Err(Error::AlreadyExists {
                    key: target.clone(),
                });
            }
        }
        let new = NewSnapshot {
            key,
            kind,
            parent,
            labels,
            source: Source::Local,
        };
        let layout = self.layout.clone();
        let index_off = self.index_off;
        self.locked(move |store| {
            let record = store.create(new, SystemTime::now(), |id| make_dirs(&layout, id, kind))?;
            mounts_of(store, &record, index_off)
        })
        .await
    }

    async fn create_record(&self, new: NewSnapshot) -> Result<Record, Error> {
        let layout = self.layout.clone();
        self.locked(move |store| {
            store.create(new, SystemTime::now(), |id| {
                make_dirs(&layout, id, Kind::Committed)
            })
        })
        .await
    }

    async fn commit_active(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Error> {
        let probe = key.clone();
        let id = self
            .locked(move |store| {
                let record = store.get(&probe)?;
                match record.kind {
                    Kind::Active => Ok(record.id),
                    kind => Err(Error::NotActive { key: probe, kind }),
                }
            })
            .await?;
        // Measured without the lock: nothing writes to a snapshot being committed.
        let upper = self.layout.fs(id);
        let usage = blocking(move || disk_usage(&upper)).await?;
        let labels = labels.into_iter().collect();
        self.locked(move |store| {
            store.commit(&name, &key, labels, usage, SystemTime::now())?;
            debug!(%name, %key, size = usage.size, inodes = usage.inodes, "committed");
            Ok(())
        })
        .await
    }

    async fn remove_snapshot(&self, key: String) -> Result<(), Error> {
        let layout = self.layout.clone();
        let store = Arc::clone(&self.store);
        let record = blocking(move || {
            let record = store.lock().remove(&key)?;
            // After the record is gone the directory is an orphan: deleted here without the
            // lock, or by Cleanup if this fails or the process dies first.
            remove_dirs(&[layout.snapshot_dir(record.id)]);
            Ok(record)
        })
        .await?;
        if matches!(record.source, Source::Remote { .. })
            && let Err(error) = self.remote.release(&record).await
        {
            warn!(key = %record.key, %error, "releasing a remote layer failed");
        }
        Ok(())
    }

    async fn usage_of(&self, key: String) -> Result<Usage, Error> {
        let layout = self.layout.clone();
        let (kind, id, stored) = self
            .locked(move |store| {
                let record = store.get(&key)?;
                Ok((record.kind, record.id, record.usage))
            })
            .await?;
        if kind != Kind::Active {
            return Ok(stored);
        }
        blocking(move || disk_usage(&layout.fs(id))).await
    }

    async fn cleanup(&self) -> Result<(), Error> {
        let store = Arc::clone(&self.store);
        blocking(move || {
            let orphans = store.lock().orphans()?;
            remove_dirs(&orphans);
            if !orphans.is_empty() {
                info!(
                    removed = orphans.len(),
                    "cleanup removed unused snapshot directories"
                );
            }
            Ok(())
        })
        .await
    }
}

#[tonic::async_trait]
impl api::Snapshotter for Snapshotter {
    type Error = Status;

    async fn stat(&self, key: String) -> Result<api::Info, Status> {
        let probe = key.clone();
        self.locked(move |store| store.get(&probe).map(info))
            .await
            .map_err(|error| status("stat", &key, error))
    }

    async fn update(
        &self,
        info_in: api::Info,
        fieldpaths: Option<Vec<String>>,
    ) -> Result<api::Info, Status> {
        let key = info_in.name.clone();
        let labels = info_in.labels.into_iter().collect();
        let probe = key.clone();
        self.locked(move |store| {
            let paths = fieldpaths.unwrap_or_default();
            store
                .update(&probe, labels, &paths, SystemTime::now())
                .map(|record| info(&record))
        })
        .await
        .map_err(|error| status("update", &key, error))
    }

    async fn usage(&self, key: String) -> Result<api::Usage, Status> {
        let usage = self
            .usage_of(key.clone())
            .await
            .map_err(|error| status("usage", &key, error))?;
        Ok(api::Usage {
            size: i64::try_from(usage.size).unwrap_or(i64::MAX),
            inodes: i64::try_from(usage.inodes).unwrap_or(i64::MAX),
        })
    }

    async fn mounts(&self, key: String) -> Result<Vec<api::api::types::Mount>, Status> {
        let probe = key.clone();
        let index_off = self.index_off;
        self.locked(move |store| {
            let record = store.get(&probe)?;
            mounts_of(store, record, index_off)
        })
        .await
        .map(into_api)
        .map_err(|error| status("mounts", &key, error))
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<api::api::types::Mount>, Status> {
        debug!(%key, %parent, ?labels, "prepare");
        self.create(Kind::Active, key.clone(), parent, labels)
            .await
            .map(into_api)
            .map_err(|error| status("prepare", &key, error))
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<api::api::types::Mount>, Status> {
        debug!(%key, %parent, "view");
        self.create(Kind::View, key.clone(), parent, labels)
            .await
            .map(into_api)
            .map_err(|error| status("view", &key, error))
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        self.commit_active(name, key.clone(), labels)
            .await
            .map_err(|error| status("commit", &key, error))
    }

    async fn remove(&self, key: String) -> Result<(), Status> {
        debug!(%key, "remove");
        self.remove_snapshot(key.clone())
            .await
            .map_err(|error| status("remove", &key, error))
    }

    async fn clear(&self) -> Result<(), Status> {
        self.cleanup()
            .await
            .map_err(|error| status("cleanup", "", error))
    }

    /// The whole listing is taken under the lock, then streamed.
    type InfoStream = futures::stream::Iter<
        std::iter::Map<std::vec::IntoIter<api::Info>, fn(api::Info) -> Result<api::Info, Status>>,
    >;

    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<Self::InfoStream, Status> {
        let filters =
            Filters::parse(&filters).map_err(|error| status("walk", "", Error::Filter(error)))?;
        let infos = self
            .locked(move |store| {
                Ok(store
                    .iter()
                    .filter(|record| filters.matches(record))
                    .map(info)
                    .collect::<Vec<_>>())
            })
            .await
            .map_err(|error| status("walk", "", error))?;
        let ok: fn(api::Info) -> Result<api::Info, Status> = Ok;
        Ok(futures::stream::iter(infos.into_iter().map(ok)))
    }
}

/// The mounts of `record` (active or view) over its ancestors.
fn mounts_of(store: &MetaStore, record: &Record, index_off: bool) -> Result<Vec<Mount>, Error> {
    if record.kind == Kind::Committed {
        return Err(Error::NotMountable {
            key: record.key.clone(),
        });
    }
    let layout = store.layout();
    let mut lowers = Vec::new();
    for ancestor in store.ancestors(record)? {
        match &ancestor.source {
            Source::Local => lowers.push(layout.fs(ancestor.id)),
            // A remote layer's tree already holds every layer below it.
            Source::Remote { lower } => {
                lowers.push(lower.clone());
                break;
            }
        }
    }
    let (upper, work) = (layout.fs(record.id), layout.work(record.id));
    let stack = Stack {
        kind: record.kind,
        upper: &upper,
        work: &work,
        lowers: &lowers,
    };
    Ok(mounts::mounts(&stack, index_off))
}

fn into_api(mounts: Vec<Mount>) -> Vec<api::api::types::Mount> {
    mounts.into_iter().map(Into::into).collect()
}

/// Creates snapshot `id`'s directories: `fs` always, `work` for an active snapshot.
fn make_dirs(layout: &Layout, id: u64, kind: Kind) -> Result<(), Error> {
    let fs_dir = layout.fs(id);
    fs::create_dir_all(&fs_dir).map_err(Error::io("create", &fs_dir))?;
    if kind == Kind::Active {
        let work = layout.work(id);
        fs::create_dir(&work).map_err(Error::io("create", &work))?;
    }
    Ok(())
}

/// Deletes each directory, logging (not returning) failures: they stay orphans, and the
/// next Cleanup tries again.
fn remove_dirs(dirs: &[PathBuf]) {
    for dir in dirs {
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => warn!(dir = %dir.display(), %error, "cannot delete a snapshot directory"),
        }
    }
}

fn info(record: &Record) -> api::Info {
    api::Info {
        kind: match record.kind {
            Kind::Active => api::Kind::Active,
            Kind::View => api::Kind::View,
            Kind::Committed => api::Kind::Committed,
        },
        name: record.key.clone(),
        parent: record.parent.clone().unwrap_or_default(),
        labels: record
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        created_at: record.created,
        updated_at: record.updated,
    }
}

/// Runs blocking `work` on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) => match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => Err(Error::ShuttingDown),
        },
    }
}

/// The one mapping of errors to gRPC codes, as containerd's `errdefs` reads them back
/// (`AlreadyExists` is how a remote layer is announced), and the one place they are logged.
pub fn status(op: &'static str, key: &str, error: Error) -> Status {
    let message = error.to_string();
    match error {
        Error::NotFound { .. } | Error::ParentNotFound { .. } => {
            debug!(op, key, %message, "not found");
            Status::not_found(message)
        }
        Error::AlreadyExists { .. } => {
            debug!(op, key, %message, "already exists");
            Status::already_exists(message)
        }
        Error::ParentNotCommitted { .. }
        | Error::ImmutableField { .. }
        | Error::EmptyKey
        | Error::Filter(_) => {
            debug!(op, key, %message, "refused");
            Status::invalid_argument(message)
        }
        Error::NotActive { .. } | Error::NotMountable { .. } | Error::HasChildren { .. } => {
            debug!(op, key, %message, "refused");
            Status::failed_precondition(message)
        }
        Error::ShuttingDown | Error::Remote { .. } => {
            warn!(op, key, %message, "failed");
            Status::unavailable(message)
        }
        Error::InvalidRoot { .. } | Error::Io { .. } => {
            error!(op, key, %message, "failed");
            Status::internal(message)
        }
    }
}
