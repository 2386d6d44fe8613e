//! The snapshot metadata: one JSON record per snapshot, each written by an atomic rename.
//!
//! containerd's own snapshotters keep this in a bolt database; here each snapshot is one small
//! file, `meta/<id>.json`, rewritten whole (`<id>.json.tmp`, fsync, rename, fsync of the
//! directory) on every change. One rename is one transaction, so after a crash every record
//! is either the old or the new one, and there is nothing to replay. The store keeps every
//! record in memory too; it is not thread-safe (the snapshotter holds it behind a mutex) and
//! never reads the clock (callers pass `now`).

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use crate::filter::FilterError;
use crate::layout::Layout;

/// The record format version written in every record.
pub const RECORD_VERSION: u32 = 1;

/// Errors of the snapshotter. Each maps to one gRPC code at the edge
/// (`snapshotter::status`), as containerd's own snapshotters map theirs to `errdefs`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No snapshot has this key or name.
    #[error("snapshot {key:?} not found")]
    NotFound {
        /// The key or name asked for.
        key: String,
    },
    /// The key or name is already taken (also the remote-snapshot answer "provided remotely").
    #[error("snapshot {key:?} already exists")]
    AlreadyExists {
        /// The key or name.
        key: String,
    },
    /// Prepare or View named a parent that does not exist.
    #[error("missing parent {parent:?}")]
    ParentNotFound {
        /// The parent's name.
        parent: String,
    },
    /// Prepare or View named a parent that is not committed.
    #[error("parent {parent:?} is not a committed snapshot")]
    ParentNotCommitted {
        /// The parent's name.
        parent: String,
    },
    /// Commit of a snapshot that is not active.
    #[error("snapshot {key:?} is not active (it is {kind:?})")]
    NotActive {
        /// The key.
        key: String,
        /// What it is instead.
        kind: Kind,
    },
    /// Mounts of a committed snapshot.
    #[error("snapshot {key:?} is committed: only active snapshots and views have mounts")]
    NotMountable {
        /// The name.
        key: String,
    },
    /// Remove of a snapshot other snapshots are built on.
    #[error("cannot remove snapshot {key:?} with {children} child snapshot(s)")]
    HasChildren {
        /// The name.
        key: String,
        /// How many snapshots have it as their parent.
        children: usize,
    },
    /// Update of a field other than the labels.
    #[error("cannot update field {field:?} of snapshot {key:?}")]
    ImmutableField {
        /// The snapshot.
        key: String,
        /// The field path asked for.
        field: String,
    },
    /// An empty key or name.
    #[error("a snapshot key must not be empty")]
    EmptyKey,
    /// A Walk filter that does not parse.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// The root directory cannot be used (see [`Layout::new`]).
    #[error("root directory {root:?} must be an absolute UTF-8 path without ':' or ','")]
    InvalidRoot {
        /// The root given.
        root: PathBuf,
    },
    /// A remote layer provider failed (see [`crate::Remote`]).
    #[error("remote layer {target:?}: {source}")]
    Remote {
        /// The layer's target name (`containerd.io/snapshot.ref`).
        target: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The runtime is shutting down; the call did not run.
    #[error("the snapshotter is shutting down")]
    ShuttingDown,
    /// A local file-system operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done (`write`, `rename`, `create`, ...).
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// What a snapshot is, as containerd names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Writable, not yet committed (Prepare).
    Active,
    /// Read-only view of a parent (View); cannot be committed.
    View,
    /// Committed: immutable, may be a parent.
    Committed,
}

/// Where a snapshot's files come from: the seam for lazily mounted layers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum Source {
    /// Its own directory, `snapshots/<id>/fs`, filled by containerd (unpacked layer, container
    /// writes).
    #[default]
    Local,
    /// A committed layer provided by a [`crate::Remote`]: its tree is the directory `lower`
    /// (e.g. a nydus-fs mount), which already holds every layer below it, so a mount stacked
    /// on it uses `lower` and no parent further down.
    Remote {
        /// The directory to use as this layer's lower directory.
        lower: PathBuf,
    },
}

/// Disk use of one snapshot, not counting its parents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes allocated (512-byte blocks × 512, each inode counted once).
    pub size: u64,
    /// Distinct inodes.
    pub inodes: u64,
}

/// One snapshot, exactly as stored in `meta/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// [`RECORD_VERSION`]; a record of another version is not loaded.
    pub version: u32,
    /// Names the snapshot's directory; never reused while the root exists.
    pub id: u64,
    /// The key (active, view) or name (committed) containerd uses.
    pub key: String,
    /// Active, view or committed.
    pub kind: Kind,
    /// The parent's name, `None` for a snapshot of an empty directory.
    pub parent: Option<String>,
    /// containerd's labels.
    pub labels: BTreeMap<String, String>,
    /// When the snapshot was made (or committed).
    pub created: SystemTime,
    /// When it last changed.
    pub updated: SystemTime,
    /// The disk use measured at commit (zero for active snapshots and views: measured live).
    pub usage: Usage,
    /// Where its files are.
    pub source: Source,
}

/// A snapshot to create: [`MetaStore::create`]'s input.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    /// Its key (active, view) or name (committed).
    pub key: String,
    /// What it is.
    pub kind: Kind,
    /// Its parent's name, if any (must be committed).
    pub parent: Option<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Where its files are.
    pub source: Source,
}

/// The records of every snapshot: in memory, and on disk under [`Layout::meta_dir`].
///
/// Every mutating call validates first, then writes the record (the commit point), then
/// updates memory; an error leaves both unchanged.
#[derive(Debug)]
pub struct MetaStore {
    layout: Layout,
    records: HashMap<String, Record>,
    /// Ids whose record could not be read: their directories are kept for an operator.
    quarantined: BTreeSet<u64>,
    next_id: u64,
}

impl MetaStore {
    /// Opens (creating if needed) the store under `layout`, loading every record.
    ///
    /// Leftover `*.tmp` files of an interrupted write are deleted. A record that cannot be read
    /// (bad JSON, another version, an id that does not match its file name, a key that another
    /// record already has) is logged, renamed to `<id>.json.corrupt` and left out; its
    /// directory is never cleaned up.
    ///
    /// # Errors
    /// The directories cannot be created or listed.
    pub fn open(layout: Layout) -> Result<Self, Error> {
        let meta_dir = layout.meta_dir();
        let snapshots_dir = layout.snapshots_dir();
        for dir in [&meta_dir, &snapshots_dir] {
            fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        }
        let mut store = Self {
            layout,
            records: HashMap::new(),
            quarantined: BTreeSet::new(),
            next_id: 1,
        };
        let mut max_id = 0;
        for entry in fs::read_dir(&meta_dir).map_err(Error::io("list", &meta_dir))? {
            let path = entry.map_err(Error::io("list", &meta_dir))?.path();
            let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
                continue;
            };
            if name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(Error::io("remove", &path))?;
                continue;
            }
            if let Some(id) = name.strip_suffix(".json.corrupt").and_then(parse_id) {
                store.quarantined.insert(id);
                max_id = max_id.max(id);
                continue;
            }
            let Some(id) = name.strip_suffix(".json").and_then(parse_id) else {
                continue;
            };
            max_id = max_id.max(id);
            match read_record(&path, id) {
                Ok(record) if !store.records.contains_key(&record.key) => {
                    store.records.insert(record.key.clone(), record);
                }
                Ok(record) => store.quarantine(&path, id, &format!("key {:?} twice", record.key)),
                Err(why) => store.quarantine(&path, id, &why),
            }
        }
        for entry in fs::read_dir(&snapshots_dir).map_err(Error::io("list", &snapshots_dir))? {
            let entry = entry.map_err(Error::io("list", &snapshots_dir))?;
            if let Some(id) = entry.file_name().to_str().and_then(parse_id) {
                max_id = max_id.max(id);
            }
        }
        store.next_id = max_id + 1;
        Ok(store)
    }

    fn quarantine(&mut self, path: &Path, id: u64, why: &str) {
        error!(record = %path.display(), why, "unreadable snapshot record set aside");
        let mut aside = path.as_os_str().to_owned();
        aside.push(".corrupt");
        if let Err(error) = fs::rename(path, &aside) {
            warn!(record = %path.display(), %error, "cannot rename the unreadable record");
        }
        self.quarantined.insert(id);
    }

    /// The layout the store lives in.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The record of `key`.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn get(&self, key: &str) -> Result<&Record, Error> {
        self.records.get(key).ok_or_else(|| Error::NotFound {
            key: key.to_owned(),
        })
    }

    /// Every record, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    /// The number of snapshots.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there is no snapshot.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The committed ancestors of `record`, nearest first.
    ///
    /// # Errors
    /// [`Error::ParentNotFound`] if the chain is broken (a record written by something else).
    pub fn ancestors(&self, record: &Record) -> Result<Vec<&Record>, Error> {
        let mut chain = Vec::new();
        let mut next = record.parent.as_deref();
        while let Some(parent) = next {
            let found = self
                .records
                .get(parent)
                .ok_or_else(|| Error::ParentNotFound {
                    parent: parent.to_owned(),
                })?;
            // A loop cannot be written by this store; stop rather than spin on a forged one.
            if chain.len() > self.records.len() {
                return Err(Error::ParentNotFound {
                    parent: parent.to_owned(),
                });
            }
            chain.push(found);
            next = found.parent.as_deref();
        }
        Ok(chain)
    }

    /// Creates a snapshot: checks the key is free and the parent committed, then calls
    /// `make_dirs(id)` to create its directories, then writes its record.
    ///
    /// # Errors
    /// [`Error::EmptyKey`], [`Error::AlreadyExists`], [`Error::ParentNotFound`],
    /// [`Error::ParentNotCommitted`], or whatever `make_dirs` or the write returns (the
    /// directories are then orphans, removed by [`MetaStore::orphans`]' caller).
    pub fn create(
        &mut self,
        new: NewSnapshot,
        now: SystemTime,
        make_dirs: impl FnOnce(u64) -> Result<(), Error>,
    ) -> Result<Record, Error> {
        if new.key.is_empty() {
            return Err(Error::EmptyKey);
        }
        if self.records.contains_key(&new.key) {
            return Err(Error::AlreadyExists { key: new.key });
        }
        if let Some(parent) = &new.parent {
            match self.records.get(parent) {
                None => {
                    return Err(Error::ParentNotFound {
                        parent: parent.clone(),
                    });
                }
                Some(record) if record.kind != Kind::Committed => {
                    return Err(Error::ParentNotCommitted {
                        parent: parent.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        make_dirs(id)?;
        let record = Record {
            version: RECORD_VERSION,
            id,
            key: new.key,
            kind: new.kind,
            parent: new.parent,
            labels: new.labels,
            created: now,
            updated: now,
            usage: Usage::default(),
            source: new.source,
        };
        self.write(&record)?;
        self.records.insert(record.key.clone(), record.clone());
        Ok(record)
    }

    /// Commits active snapshot `key` as `name` with `labels` (which replace its labels) and
    /// its measured `usage`. The snapshot keeps its id and directory; `key` is gone after.
    ///
    /// # Errors
    /// [`Error::EmptyKey`], [`Error::NotFound`], [`Error::NotActive`],
    /// [`Error::AlreadyExists`] (for `name`), or the write's error.
    pub fn commit(
        &mut self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
        usage: Usage,
        now: SystemTime,
    ) -> Result<Record, Error> {
        if name.is_empty() {
            return Err(Error::EmptyKey);
        }
        let active = self.get(key)?;
        if active.kind != Kind::Active {
            return Err(Error::NotActive {
                key: key.to_owned(),
                kind: active.kind,
            });
        }
        if self.records.contains_key(name) {
            return Err(Error::AlreadyExists {
                key: name.to_owned(),
            });
        }
        let committed = Record {
            key: name.to_owned(),
            kind: Kind::Committed,
            labels,
            created: now,
            updated: now,
            usage,
            ..active.clone()
        };
        self.write(&committed)?;
        self.records.remove(key);
        self.records.insert(name.to_owned(), committed.clone());
        Ok(committed)
    }

    /// Updates the labels of `key` as containerd's `Update` does: no field paths replaces
    /// every label; `labels` replaces every label; `labels.K` sets K from `labels` (or removes
    /// it when `labels` has no K). Nothing else may change.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::ImmutableField`], or the write's error.
    pub fn update(
        &mut self,
        key: &str,
        labels: BTreeMap<String, String>,
        fieldpaths: &[String],
        now: SystemTime,
    ) -> Result<Record, Error> {
        let mut updated = self.get(key)?.clone();
        if fieldpaths.is_empty() {
            updated.labels = labels;
        } else {
            for path in fieldpaths {
                if path == "labels" {
                    updated.labels.clone_from(&labels);
                } else if let Some(label) = path.strip_prefix("labels.") {
                    match labels.get(label) {
                        Some(value) => updated.labels.insert(label.to_owned(), value.clone()),
                        None => updated.labels.remove(label),
                    };
                } else {
                    return Err(Error::ImmutableField {
                        key: key.to_owned(),
                        field: path.clone(),
                    });
                }
            }
        }
        updated.updated = now;
        self.write(&updated)?;
        self.records.insert(key.to_owned(), updated.clone());
        Ok(updated)
    }

    /// Removes the record of `key` and returns it; the caller removes its directory (a crash
    /// in between leaves an orphan directory, see [`MetaStore::orphans`]).
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::HasChildren`] (remove the children first), or the
    /// unlink's error.
    pub fn remove(&mut self, key: &str) -> Result<Record, Error> {
        let record = self.get(key)?;
        let children = self
            .records
            .values()
            .filter(|other| other.parent.as_deref() == Some(key))
            .count();
        if children > 0 {
            return Err(Error::HasChildren {
                key: key.to_owned(),
                children,
            });
        }
        let path = self.record_path(record.id);
        fs::remove_file(&path).map_err(Error::io("remove", &path))?;
        sync_dir(&self.layout.meta_dir())?;
        self.records
            .remove(key)
            .ok_or_else(|| Error::NotFound { key: key.into() })
    }

    /// The directories under [`Layout::snapshots_dir`] that belong to no snapshot: left by a
    /// removal or by a create that failed or crashed before its record was written. Ids are
    /// never reused, so they stay orphans once listed and can be deleted without the lock.
    ///
    /// # Errors
    /// The directory cannot be listed.
    pub fn orphans(&self) -> Result<Vec<PathBuf>, Error> {
        let live: BTreeSet<u64> = self.records.values().map(|record| record.id).collect();
        let dir = self.layout.snapshots_dir();
        let mut orphans = Vec::new();
        for entry in fs::read_dir(&dir).map_err(Error::io("list", &dir))? {
            let entry = entry.map_err(Error::io("list", &dir))?;
            let keep = entry
                .file_name()
                .to_str()
                .and_then(parse_id)
                .is_some_and(|id| live.contains(&id) || self.quarantined.contains(&id));
            if !keep {
                orphans.push(entry.path());
            }
        }
        Ok(orphans)
    }

    fn record_path(&self, id: u64) -> PathBuf {
        self.layout.meta_dir().join(format!("{id}.json"))
    }

    /// Writes `record` to `<id>.json.tmp`, syncs it, renames it over `<id>.json` and syncs the
    /// directory: after a crash the record is the old one or the new one, whole.
    fn write(&self, record: &Record) -> Result<(), Error> {
        let path = self.record_path(record.id);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| Error::Io {
            op: "encode",
            path: path.clone(),
            source: source.into(),
        })?;
        let mut file = File::create(&tmp).map_err(Error::io("create", &tmp))?;
        file.write_all(&bytes).map_err(Error::io("write", &tmp))?;
        file.sync_all().map_err(Error::io("sync", &tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(Error::io("rename", &tmp))?;
        sync_dir(&self.layout.meta_dir())
    }
}

/// Record ids are plain decimal numbers (`7`, not `07` or `+7`), so one id has one file name.
fn parse_id(text: &str) -> Option<u64> {
    let id: u64 = text.parse().ok()?;
    (id.to_string() == text).then_some(id)
}

fn read_record(path: &Path, id: u64) -> Result<Record, String> {
    let bytes = fs::read(path).map_err(|error| error.to_string())?;
    let record: Record = serde_json::from_slice(&bytes).map_err(|error| error.to_string())?;
    if record.version != RECORD_VERSION {
        return Err(format!(
            "record version {} is not {RECORD_VERSION}",
            record.version
        ));
    }
    if record.id != id {
        return Err(format!("record id {} in the file of id {id}", record.id));
    }
    if record.key.is_empty() {
        return Err("empty key".to_owned());
    }
    Ok(record)
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(Error::io("sync", dir))
}
