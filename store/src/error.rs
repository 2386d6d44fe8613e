//! The store's error type.
//!
//! Two failure classes are kept apart (style §6.5):
//!
//! * *The data was bad*: [`Error::PieceLength`] and [`Error::DigestMismatch`] mean the bytes
//!   handed to [`Store::write_piece`](crate::Store::write_piece) did not match what the task
//!   expects, so whoever supplied them (peer or origin) misbehaved. [`Error::is_bad_data`]
//!   answers this.
//! * *We failed locally*: [`Error::Io`], [`Error::Db`], [`Error::Config`] and friends. A full
//!   disk surfaces as [`Error::NoSpace`] at admission ([`Store::reserve`](crate::Store::reserve)),
//!   or as [`Error::Io`]/[`Error::Db`] when it fills up behind the store's back; either way it
//!   never marks anything present. [`Error::fault`] names the kind of local failure, as a
//!   bounded metrics label.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use std::path::PathBuf;

use crate::SpaceLimit;

/// Everything that can go wrong in the piece store.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// RocksDB failed (open, read, write or iterate).
    #[error("metadata database: {0}")]
    Db(#[from] rocksdb::Error),
    /// A filesystem operation on `path` failed (includes `ENOSPC`).
    #[error("{path}: {source}")]
    Io {
        /// File or directory the operation was on.
        path: PathBuf,
        /// Underlying OS error.
        source: std::io::Error,
    },
    /// The [`StoreConfig`](crate::StoreConfig) is invalid.
    #[error("invalid store config `{key}`: {reason}")]
    Config {
        /// Field name, e.g. `low_watermark`.
        key: &'static str,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// No task with this ID is stored.
    #[error("unknown task {0}")]
    UnknownTask(String),
    /// [`Store::create_task`](crate::Store::create_task) was called for an ID that exists.
    #[error("task {0} already exists")]
    TaskExists(String),
    /// The [`TaskMeta`](crate::TaskMeta) given to `create_task` is unusable.
    #[error("invalid task {id}: {reason}")]
    InvalidTask {
        /// Task ID.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The piece index is `>= piece_count`.
    #[error("task {id}: piece {index} out of range (task has {count} pieces)")]
    PieceOutOfRange {
        /// Task ID.
        id: String,
        /// Requested index.
        index: u32,
        /// Number of pieces in the task.
        count: u32,
    },
    /// The data has the wrong length for this piece index (bad data).
    #[error("piece {index}: expected {expected} bytes, got {actual}")]
    PieceLength {
        /// Piece index.
        index: u32,
        /// Length the task's layout requires.
        expected: u64,
        /// Length supplied.
        actual: u64,
    },
    /// The data's sha256 differs from the expected digest (bad data). Nothing was recorded.
    #[error("piece {index}: digest mismatch, expected {expected}, got {actual}")]
    DigestMismatch {
        /// Piece index.
        index: u32,
        /// Expected sha256, lowercase hex.
        expected: String,
        /// Computed sha256, lowercase hex.
        actual: String,
    },
    /// A whole file handed to [`Store::import_file`](crate::Store::import_file) does not hash
    /// to the task's digest.
    #[error("task {id}: content hashes to {actual}, expected {expected}")]
    WholeDigestMismatch {
        /// Task ID.
        id: String,
        /// Expected `sha256:<hex>`.
        expected: String,
        /// Computed `sha256:<hex>`.
        actual: String,
    },
    /// The piece has not been written (or was dropped after corruption).
    #[error("task {id}: piece {index} is not present")]
    PieceAbsent {
        /// Task ID.
        id: String,
        /// Piece index.
        index: u32,
    },
    /// The bytes on disk no longer match the recorded sha256. The piece has been marked absent
    /// and must be fetched again.
    #[error("task {id}: piece {index} is corrupt on disk and was dropped")]
    Corrupt {
        /// Task ID.
        id: String,
        /// Piece index.
        index: u32,
    },
    /// [`Store::complete_task`](crate::Store::complete_task) found absent pieces.
    #[error("task {id}: {missing} of {count} pieces missing")]
    Incomplete {
        /// Task ID.
        id: String,
        /// Number of absent pieces.
        missing: u32,
        /// Number of pieces in the task.
        count: u32,
    },
    /// No room for a task of `needed` bytes, even after evicting every task that could go
    /// (nothing was evicted if evicting all of them would not have made room).
    #[error("no room for {needed} more bytes in {dir}: {limit}")]
    NoSpace {
        /// The store's directory.
        dir: PathBuf,
        /// Bytes asked for.
        needed: u64,
        /// What they did not fit into.
        limit: SpaceLimit,
    },
    /// Persisted metadata under `key` could not be used.
    #[error("metadata {key}: {reason}")]
    Metadata {
        /// Printable form of the RocksDB key.
        key: String,
        /// Why it was rejected.
        reason: String,
    },
}

impl Error {
    /// True if the error means the supplied piece bytes were wrong (penalise the source and
    /// fetch the piece elsewhere), false for local failures and caller mistakes.
    #[must_use]
    pub fn is_bad_data(&self) -> bool {
        matches!(
            self,
            Self::PieceLength { .. }
                | Self::DigestMismatch { .. }
                | Self::WholeDigestMismatch { .. }
        )
    }

    /// What kind of local storage failure this is, or `None` if it is not one (bad data, an
    /// unknown task, a caller's mistake).
    #[must_use]
    pub fn fault(&self) -> Option<Fault> {
        match self {
            Self::NoSpace { limit, .. } => Some(match limit {
                SpaceLimit::Capacity { .. } => Fault::Capacity,
                SpaceLimit::Disk { .. } => Fault::DiskFull,
            }),
            Self::Io { source, .. } if damselfly_common::disk::is_no_space(source) => {
                Some(Fault::DiskFull)
            }
            Self::Io { .. } => Some(Fault::Io),
            // RocksDB reports ENOSPC as an `IOError` status whose message carries
            // strerror(ENOSPC); after one, it refuses writes until it has recovered.
            Self::Db(e) if e.as_ref().contains("No space left on device") => Some(Fault::DiskFull),
            Self::Db(_) => Some(Fault::Database),
            _ => None,
        }
    }

    /// True if the disk (or the store's capacity) is full: the task may fit later, after GC.
    #[must_use]
    pub fn is_no_space(&self) -> bool {
        matches!(self.fault(), Some(Fault::Capacity | Fault::DiskFull))
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// A local storage failure, as a bounded metrics label (both daemons count them under
/// `storage_failures{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The configured capacity cannot take the task, even after GC.
    Capacity,
    /// The filesystem is full (`ENOSPC`, `EDQUOT`), at admission or mid-write, in a content
    /// file or in the metadata database.
    DiskFull,
    /// The metadata database (RocksDB) failed for another reason.
    Database,
    /// Another file operation failed.
    Io,
}

/// Labels of `storage_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorageFailureLabels {
    /// [`Fault::label`]: `capacity`, `disk_full`, `db_write`, `io`.
    pub reason: &'static str,
}

/// `storage_failures_total{reason}`, the one definition both daemons export, every reason
/// from the start at 0. Cheap to clone; clones count together.
#[derive(Clone, Debug)]
pub struct StorageFailures(Family<StorageFailureLabels, Counter>);

impl Default for StorageFailures {
    fn default() -> Self {
        let family = Family::default();
        for fault in Fault::ALL {
            drop(family.get_or_create(&StorageFailureLabels {
                reason: fault.label(),
            }));
        }
        Self(family)
    }
}

impl StorageFailures {
    /// The counter family, to register under a daemon's prefix.
    #[must_use]
    pub fn family(&self) -> Family<StorageFailureLabels, Counter> {
        self.0.clone()
    }

    /// Counts one failure under `fault`'s label.
    pub fn record(&self, fault: Fault) {
        self.0
            .get_or_create(&StorageFailureLabels {
                reason: fault.label(),
            })
            .inc();
    }

    /// Counts `e` under its [`Fault`]; nothing if it is not a local storage failure.
    pub fn record_error(&self, e: &Error) {
        if let Some(fault) = e.fault() {
            self.record(fault);
        }
    }
}

impl Fault {
    /// Every fault, for exporting each label from the start.
    pub const ALL: [Self; 4] = [Self::Capacity, Self::DiskFull, Self::Database, Self::Io];

    /// The metrics label: `capacity`, `disk_full`, `db_write`, `io`.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Capacity => "capacity",
            Self::DiskFull => "disk_full",
            Self::Database => "db_write",
            Self::Io => "io",
        }
    }
}
