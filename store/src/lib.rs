//! Damselfly piece store: where a supernode (and later each node's daemon) keeps the pieces
//! of the blobs it serves.
//!
//! # Layout
//!
//! ```text
//! <dir>/
//!   db/        RocksDB: format version, TaskMeta JSON per task, sha256 per present piece
//!   content/   one file per task, named hex(sha256(task id)), `content_length` bytes
//!              long with its blocks allocated (fallocate); piece i lives at i * piece_size
//! ```
//!
//! The key layout is documented in the private `keys` module; see [`TaskMeta`] for the
//! piece arithmetic.
//!
//! # Flow
//!
//! ```text
//!  downloader                      Store                          disk
//!  ----------                      -----                          ----
//!  reserve(len, in_use) ──────────► fits capacity and disk? else evict LRU, else NoSpace
//!  create_task(meta) ─────────────► fallocate(content_length) ───► content/<h>  (allocated)
//!                                  put t/<id> = meta (Running) ──► db
//!  write_piece(id, i, bytes) ─────► check length, sha256, expected
//!                                  pwrite at i*piece_size ───────► content/<h>
//!                                  put p/<h><i> = sha256 ────────► db   (now present)
//!  complete_task(id) ─────────────► all pieces present? fsync, state = Complete
//!  read_piece(id, i) ─────────────► pread, re-hash; mismatch => drop p/<h><i>, Error::Corrupt
//!  gc(in_use) ────────────────────► evict Complete tasks, LRU first, high => low watermark
//! ```
//!
//! # Invariants
//!
//! * A piece is *present* iff its digest key exists, and the key is written only after its
//!   bytes are in the content file. Every read re-verifies the bytes against that digest, so
//!   a lost write (power failure) or on-disk corruption is detected and the piece becomes
//!   absent rather than served.
//! * A stored task always has a content file of at least `content_length` bytes.
//! * Only `Complete` tasks survive a restart; [`Store::open`] drops `Running` ones, unusable
//!   metadata, and any piece record or content file without a task.
//! * GC never evicts `Running` tasks or tasks the caller reports as in use.
//!
//! The store is synchronous and `Send + Sync`; async callers use `spawn_blocking`. Errors are
//! one [`Error`] enum; [`Error::is_bad_data`] separates bad input bytes from local failures.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod error;
mod keys;
mod meta;
mod space;
mod store;

pub use config::{DEFAULT_MIN_FREE, StoreConfig};
pub use error::{Error, Fault, StorageFailureLabels, StorageFailures};
pub use meta::{GcReport, TaskMeta, TaskRecord, TaskState};
pub use space::SpaceLimit;
pub use store::{Reservation, Store};

/// Seconds since the Unix epoch (0 if the clock is before it): the unit of
/// [`TaskMeta::created_unix`] and [`Store::touch`].
#[must_use]
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
