//! The [`Store`] itself: piece I/O, task lifecycle and GC.

mod recover;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rocksdb::{DB, Direction, IteratorMode, WriteBatch};
use tracing::{debug, info, warn};

use crate::keys::{self, sha256};
use crate::space::Space;
use crate::{Error, GcReport, StoreConfig, TaskMeta, TaskRecord, TaskState};

/// Most content files kept open at once. Beyond this an arbitrary handle is closed; users
/// holding its `Arc` finish undisturbed.
const FILE_CACHE_CAP: usize = 128;

/// Piece store: one content file per task (its blocks allocated up front) plus metadata in
/// RocksDB.
///
/// Call order per task: [`create_task`](Self::create_task), then
/// [`write_piece`](Self::write_piece) for each piece (any order, any thread), then
/// [`complete_task`](Self::complete_task). Readers use [`read_piece`](Self::read_piece),
/// which re-verifies every piece it returns, and [`touch`](Self::touch) to feed LRU GC.
///
/// All methods block on disk I/O; call them from `spawn_blocking` in async code. The store is
/// `Send + Sync`. Piece reads and writes of the same or different tasks run concurrently;
/// creating and removing tasks briefly excludes them.
pub struct Store {
    config: StoreConfig,
    content_dir: PathBuf,
    db: DB,
    /// Piece I/O and `complete_task` hold this shared, `create_task` and `remove_task`
    /// exclusively, so no piece key can be written for a task that is being removed (which
    /// would leave a stale present piece for a later task with the same ID).
    gate: RwLock<()>,
    /// Lock order: `gate` before `inner`.
    inner: Mutex<Inner>,
    /// Held through one [`Store::reserve`], so two admissions never both count the same
    /// free bytes. Lock order: before `gate`.
    admission: Mutex<()>,
}

struct Inner {
    tasks: HashMap<String, Entry>,
    /// Sum of `content_length` over `tasks`.
    used: u64,
    /// Sum of live [`Reservation`]s.
    reserved: u64,
    files: HashMap<String, Arc<File>>,
}

impl Inner {
    /// Complete tasks as `(last access, id, length)`, least recently accessed first: the
    /// order in which GC and admission evict.
    fn evictable(&self) -> Vec<(u64, String, u64)> {
        let mut v: Vec<_> = self
            .tasks
            .values()
            .filter(|e| e.meta.state != TaskState::Running)
            .map(|e| {
                let m = &e.meta;
                (m.last_access_unix, m.id.clone(), m.content_length)
            })
            .collect();
        v.sort_unstable();
        v
    }
}

struct Entry {
    meta: TaskMeta,
    /// `meta.last_access_unix` changed since the meta was last persisted.
    access_dirty: bool,
}

impl Store {
    /// Opens (or creates) the store under `config.dir` and recovers its state.
    ///
    /// Recovery removes tasks left `Running` by a previous process (info), tasks whose
    /// metadata does not parse or whose content file is missing or short (warn), piece keys
    /// without a task, and content files without a task.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for bad watermarks, [`Error::Io`] if directories cannot be created,
    /// [`Error::Db`] if RocksDB cannot be opened, [`Error::Metadata`] if the database was
    /// written in an unsupported format version.
    pub fn open(config: StoreConfig) -> Result<Self, Error> {
        config.validate()?;
        let db_dir = config.dir.join("db");
        let content_dir = config.dir.join("content");
        for dir in [&config.dir, &db_dir, &content_dir] {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        // No compression codecs are compiled in, and values are small JSON or digests.
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        opts.set_keep_log_file_num(4);
        // RocksDB preallocates each WAL file at 1.1 × the write buffer (64 MiB by default)
        // with fallocate: on a small data dir that would take a blob's worth of space for a
        // few KiB of metadata. 4 MiB buffers keep it small and predictable.
        opts.set_write_buffer_size(4 << 20);
        opts.set_manifest_preallocation_size(256 << 10);
        let db = DB::open(&opts, &db_dir)?;
        recover::check_format(&db)?;
        let tasks = recover::load(&db, &content_dir, config.keep_partial)?;
        let used = tasks.values().map(|t| t.content_length).sum();
        info!(
            dir = %config.dir.display(),
            tasks = tasks.len(),
            used_bytes = used,
            capacity = config.capacity,
            "piece store opened"
        );
        let tasks = tasks
            .into_iter()
            .map(|(id, meta)| {
                let entry = Entry {
                    meta,
                    access_dirty: false,
                };
                (id, entry)
            })
            .collect();
        Ok(Self {
            config,
            content_dir,
            db,
            gate: RwLock::new(()),
            inner: Mutex::new(Inner {
                tasks,
                used,
                reserved: 0,
                files: HashMap::new(),
            }),
            admission: Mutex::new(()),
        })
    }

    /// The config the store was opened with.
    #[must_use]
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Registers a new task: creates its content file of `content_length` bytes with every
    /// block allocated ([`damselfly_common::disk::allocate`]), then persists `meta`. No piece
    /// is present yet. Piece writes into the file then do not fail for want of space. Call
    /// [`reserve`](Self::reserve) first to apply the capacity and evict for room.
    ///
    /// # Errors
    ///
    /// [`Error::TaskExists`], [`Error::InvalidTask`] (empty ID, zero piece size, too many
    /// pieces), [`Error::Io`] (`ENOSPC` when the disk cannot hold the file: nothing is left
    /// behind) or [`Error::Db`].
    pub fn create_task(&self, meta: TaskMeta) -> Result<(), Error> {
        if let Some(reason) = meta.invalid_reason() {
            return Err(Error::InvalidTask {
                id: meta.id,
                reason,
            });
        }
        let _gate = self.gate.write();
        if self.inner.lock().tasks.contains_key(&meta.id) {
            return Err(Error::TaskExists(meta.id));
        }
        let path = self.content_path(&meta.id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        if let Err(e) = damselfly_common::disk::allocate(&file, meta.content_length) {
            let _ = std::fs::remove_file(&path);
            return Err(Error::io(&path, e));
        }
        let json = encode_meta(&meta)?;
        let mut batch = WriteBatch::default();
        // Defensive: recovery and remove_task leave no piece keys behind, but a stale one
        // would claim a zero-filled piece is present.
        self.delete_pieces(&mut batch, &meta.id)?;
        batch.put(keys::task_key(&meta.id), json);
        if let Err(e) = self.db.write(batch) {
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
        debug!(task = %meta.id, len = meta.content_length, "task created");
        let mut inner = self.inner.lock();
        inner.used += meta.content_length;
        cache_file(&mut inner.files, &meta.id, Arc::new(file));
        inner.tasks.insert(
            meta.id.clone(),
            Entry {
                meta,
                access_dirty: false,
            },
        );
        Ok(())
    }

    /// Adopts a complete file as task `meta.id`: hashes it piece by piece (and as a whole,
    /// checked against `meta.digest` when set), moves it into the content directory and
    /// records the task as [`TaskState::Complete`] with every piece present. `src` must be on
    /// the same filesystem as the store (it is renamed, not copied). On error `src` is left
    /// where it was and nothing is recorded.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTask`], [`Error::TaskExists`], [`Error::PieceLength`] if the file is
    /// not `content_length` bytes, [`Error::WholeDigestMismatch`] if it does not hash to
    /// `meta.digest`, or [`Error::Io`]/[`Error::Db`].
    pub fn import_file(&self, meta: TaskMeta, src: &Path) -> Result<(), Error> {
        use sha2::Digest as _;
        let file = import_source(&meta, src)?;
        // Hash outside every lock: this reads the whole file.
        let mut whole = sha2::Sha256::new();
        let mut pieces = Vec::with_capacity(meta.piece_count() as usize);
        let mut buf = vec![0u8; meta.piece_size as usize];
        for index in 0..meta.piece_count() {
            let piece_len = meta.piece_len(index).unwrap_or(0) as usize;
            let chunk = &mut buf[..piece_len];
            file.read_exact_at(chunk, meta.piece_offset(index))
                .map_err(|e| Error::io(src, e))?;
            whole.update(&*chunk);
            pieces.push(sha256(chunk));
        }
        let actual = format!("sha256:{}", hex::encode(whole.finalize()));
        if let Some(expected) = meta.digest.as_deref().filter(|d| *d != actual) {
            return Err(Error::WholeDigestMismatch {
                id: meta.id,
                expected: expected.to_owned(),
                actual,
            });
        }
        self.install(meta, src, &file, &pieces)
    }

    /// Adopts a complete file as task `meta.id` whose pieces were each verified against
    /// `pieces` as they were written (a download's piece digests): like
    /// [`Store::import_file`], without reading the file again.
    ///
    /// # Errors
    ///
    /// As [`Store::import_file`]; [`Error::InvalidTask`] if `pieces` does not hold one digest
    /// per piece.
    pub fn import_verified(
        &self,
        meta: TaskMeta,
        src: &Path,
        pieces: &[[u8; 32]],
    ) -> Result<(), Error> {
        let file = import_source(&meta, src)?;
        if pieces.len() != meta.piece_count() as usize {
            return Err(Error::InvalidTask {
                id: meta.id,
                reason: "not one piece digest per piece",
            });
        }
        self.install(meta, src, &file, pieces)
    }

    /// The end of an import: flush, move into place, record the task and its pieces.
    fn install(
        &self,
        mut meta: TaskMeta,
        src: &Path,
        file: &File,
        pieces: &[[u8; 32]],
    ) -> Result<(), Error> {
        file.sync_data().map_err(|e| Error::io(src, e))?;
        meta.state = TaskState::Complete;
        let _gate = self.gate.write();
        if self.inner.lock().tasks.contains_key(&meta.id) {
            return Err(Error::TaskExists(meta.id));
        }
        let path = self.content_path(&meta.id);
        std::fs::rename(src, &path).map_err(|e| Error::io(&path, e))?;
        let mut batch = WriteBatch::default();
        self.delete_pieces(&mut batch, &meta.id)?;
        batch.put(keys::task_key(&meta.id), encode_meta(&meta)?);
        for (index, digest) in pieces.iter().enumerate() {
            batch.put(keys::piece_key(&meta.id, index as u32), digest);
        }
        if let Err(e) = self.db.write(batch) {
            // Give the file back rather than leave an unrecorded content file.
            let _ = std::fs::rename(&path, src);
            return Err(e.into());
        }
        debug!(task = %meta.id, len = meta.content_length, "file imported");
        let mut inner = self.inner.lock();
        inner.used += meta.content_length;
        inner.tasks.insert(
            meta.id.clone(),
            Entry {
                meta,
                access_dirty: false,
            },
        );
        Ok(())
    }

    /// The task's metadata and piece digests, or `None` if unknown.
    ///
    /// # Errors
    ///
    /// [`Error::Db`] if the piece scan fails.
    pub fn task(&self, id: &str) -> Result<Option<TaskRecord>, Error> {
        let Some(meta) = self.meta(id) else {
            return Ok(None);
        };
        let mut pieces = vec![None; meta.piece_count() as usize];
        for item in self.scan(&keys::piece_prefix(id)) {
            let (key, value) = item?;
            let Some((_, index)) = keys::parse_piece_key(&key) else {
                continue;
            };
            if let (Some(slot), Ok(digest)) = (
                pieces.get_mut(index as usize),
                <[u8; 32]>::try_from(&*value),
            ) {
                *slot = Some(digest);
            }
        }
        Ok(Some(TaskRecord { meta, pieces }))
    }

    /// The task's metadata (without the piece scan of [`task`](Self::task)), or `None`.
    #[must_use]
    pub fn task_meta(&self, id: &str) -> Option<TaskMeta> {
        self.meta(id)
    }

    /// Metadata of every stored task, in no particular order.
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for a store that does not keep all metadata in
    /// memory.
    pub fn tasks(&self) -> Result<Vec<TaskMeta>, Error> {
        let inner = self.inner.lock();
        Ok(inner.tasks.values().map(|e| e.meta.clone()).collect())
    }

    /// Writes piece `index` of task `id` at its offset, then records its sha256, so a piece is
    /// present only once its bytes are in the file. Rewriting a present piece is allowed.
    /// Returns the computed digest.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownTask`], [`Error::PieceOutOfRange`], [`Error::PieceLength`],
    /// [`Error::DigestMismatch`] if `expected` is given and differs (nothing is written), or
    /// [`Error::Io`]/[`Error::Db`] (the piece is not marked present).
    pub fn write_piece(
        &self,
        id: &str,
        index: u32,
        data: &[u8],
        expected: Option<[u8; 32]>,
    ) -> Result<[u8; 32], Error> {
        let _gate = self.gate.read();
        let (meta, len) = self.piece_layout(id, index)?;
        if data.len() as u64 != len {
            return Err(Error::PieceLength {
                index,
                expected: len,
                actual: data.len() as u64,
            });
        }
        let digest = sha256(data);
        if let Some(expected) = expected.filter(|e| *e != digest) {
            return Err(Error::DigestMismatch {
                index,
                expected: hex::encode(expected),
                actual: hex::encode(digest),
            });
        }
        let file = self.file(id)?;
        file.write_all_at(data, meta.piece_offset(index))
            .map_err(|e| Error::io(self.content_path(id), e))?;
        self.db.put(keys::piece_key(id, index), digest)?;
        Ok(digest)
    }

    /// Reads piece `index` of task `id` and checks it against the recorded sha256.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownTask`], [`Error::PieceOutOfRange`], [`Error::PieceAbsent`],
    /// [`Error::Corrupt`] if the bytes on disk no longer match (the piece is marked absent),
    /// or [`Error::Io`]/[`Error::Db`].
    pub fn read_piece(&self, id: &str, index: u32) -> Result<Vec<u8>, Error> {
        let _gate = self.gate.read();
        let (meta, len) = self.piece_layout(id, index)?;
        let key = keys::piece_key(id, index);
        let absent = || Error::PieceAbsent {
            id: id.to_owned(),
            index,
        };
        let recorded = self.db.get(&key)?.ok_or_else(absent)?;
        let Ok(recorded) = <[u8; 32]>::try_from(recorded.as_slice()) else {
            warn!(task = %id, piece = index, "malformed piece digest, dropping piece");
            self.db.delete(&key)?;
            return Err(absent());
        };
        let file = self.file(id)?;
        // `len <= piece_size`, a u32, so it fits in usize on every supported target.
        let mut buf = vec![0; len as usize];
        match file.read_exact_at(&mut buf, meta.piece_offset(index)) {
            Ok(()) if sha256(&buf) == recorded => return Ok(buf),
            Ok(()) => {}
            // The file was truncated behind our back: the piece is gone, same as corruption.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(Error::io(self.content_path(id), e)),
        }
        warn!(task = %id, piece = index, "piece corrupt on disk, dropping it");
        self.db.delete(&key)?;
        Err(Error::Corrupt {
            id: id.to_owned(),
            index,
        })
    }

    /// Marks the task complete after checking every piece is present, flushing the content
    /// file to disk first. Idempotent.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownTask`], [`Error::Incomplete`], or [`Error::Io`]/[`Error::Db`].
    pub fn complete_task(&self, id: &str) -> Result<(), Error> {
        let _gate = self.gate.read();
        let record = self
            .task(id)?
            .ok_or_else(|| Error::UnknownTask(id.to_owned()))?;
        let count = record.meta.piece_count();
        let missing = count - u32::try_from(record.present_count()).unwrap_or(u32::MAX);
        if missing > 0 {
            return Err(Error::Incomplete {
                id: id.to_owned(),
                missing,
                count,
            });
        }
        let file = self.file(id)?;
        file.sync_data()
            .map_err(|e| Error::io(self.content_path(id), e))?;
        let mut inner = self.inner.lock();
        let entry = inner
            .tasks
            .get_mut(id)
            .ok_or_else(|| Error::UnknownTask(id.to_owned()))?;
        if entry.meta.state == TaskState::Complete && !entry.access_dirty {
            return Ok(());
        }
        let mut meta = entry.meta.clone();
        meta.state = TaskState::Complete;
        self.put_meta(&meta)?;
        entry.meta = meta;
        entry.access_dirty = false;
        debug!(task = %id, "task complete");
        Ok(())
    }

    /// Takes a [`TaskState::Partial`] task up again: it is [`TaskState::Running`] (not
    /// evictable) from now on, with the pieces it kept. Returns false, changing nothing,
    /// for a task in another state.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownTask`], or [`Error::Db`].
    pub fn resume_task(&self, id: &str) -> Result<bool, Error> {
        let _gate = self.gate.read();
        let mut inner = self.inner.lock();
        let entry = inner
            .tasks
            .get_mut(id)
            .ok_or_else(|| Error::UnknownTask(id.to_owned()))?;
        if entry.meta.state != TaskState::Partial {
            return Ok(false);
        }
        let mut meta = entry.meta.clone();
        meta.state = TaskState::Running;
        self.put_meta(&meta)?;
        entry.meta = meta;
        debug!(task = %id, "partial task resumed");
        Ok(true)
    }

    /// Deletes the task's metadata, piece digests and content file. Unknown IDs are fine.
    ///
    /// # Errors
    ///
    /// [`Error::Db`] (nothing removed) or [`Error::Io`] if the content file could not be
    /// deleted (metadata is already gone; the file is swept at the next open).
    pub fn remove_task(&self, id: &str) -> Result<(), Error> {
        let _gate = self.gate.write();
        let mut batch = WriteBatch::default();
        batch.delete(keys::task_key(id));
        self.delete_pieces(&mut batch, id)?;
        {
            let mut inner = self.inner.lock();
            self.db.write(batch)?;
            inner.files.remove(id);
            if let Some(entry) = inner.tasks.remove(id) {
                inner.used -= entry.meta.content_length;
                debug!(task = %id, "task removed");
            }
        }
        let path = self.content_path(id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::io(path, e)),
            _ => Ok(()),
        }
    }

    /// Records an access at `now_unix` (seconds) for LRU GC. Kept in memory and persisted by
    /// [`flush`](Self::flush), [`gc`](Self::gc), `complete_task` or dropping the store.
    /// Access times never move backwards.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownTask`].
    pub fn touch(&self, id: &str, now_unix: u64) -> Result<(), Error> {
        let mut inner = self.inner.lock();
        let entry = inner
            .tasks
            .get_mut(id)
            .ok_or_else(|| Error::UnknownTask(id.to_owned()))?;
        if now_unix > entry.meta.last_access_unix {
            entry.meta.last_access_unix = now_unix;
            entry.access_dirty = true;
        }
        Ok(())
    }

    /// Persists access times recorded by [`touch`](Self::touch).
    ///
    /// # Errors
    ///
    /// [`Error::Db`]; the access times stay pending.
    pub fn flush(&self) -> Result<(), Error> {
        let mut inner = self.inner.lock();
        let mut batch = WriteBatch::default();
        let mut flushed = Vec::new();
        for (id, entry) in &inner.tasks {
            if entry.access_dirty {
                batch.put(keys::task_key(id), encode_meta(&entry.meta)?);
                flushed.push(id.clone());
            }
        }
        if flushed.is_empty() {
            return Ok(());
        }
        self.db.write(batch)?;
        for id in flushed {
            if let Some(entry) = inner.tasks.get_mut(&id) {
                entry.access_dirty = false;
            }
        }
        Ok(())
    }

    /// Admits a task of `bytes` bytes: if it does not fit in the capacity (with what is
    /// stored and reserved) or on the disk (keeping `min_free` free), evicts `Complete` tasks
    /// not `in_use`, least recently accessed first, until it does. The bytes stay reserved
    /// (counted against the capacity) until the returned [`Reservation`] is dropped: keep it
    /// until the task is stored ([`create_task`](Self::create_task) or an import).
    ///
    /// When evicting every evictable task would still not make room, nothing is evicted:
    /// a blob too large for this store does not cost it its cache.
    ///
    /// `on_evict(id)` runs right after each eviction (with no store lock held), for the
    /// caller to close its own handles on the task's file: a deleted file's blocks are
    /// freed only once nobody has it open. The bytes of an evicted task count as free from
    /// then on, whatever `statvfs` says while a last reader finishes.
    ///
    /// # Errors
    ///
    /// [`Error::NoSpace`] naming the limit, [`Error::Io`] if the filesystem cannot be queried,
    /// or an eviction's [`Error::Db`]/[`Error::Io`] (tasks evicted before it stay evicted).
    pub fn reserve(
        self: &Arc<Self>,
        bytes: u64,
        in_use: &dyn Fn(&str) -> bool,
        on_evict: &dyn Fn(&str),
    ) -> Result<(Reservation, GcReport), Error> {
        let _admission = self.admission.lock();
        // Evictable: Complete and not in use, least recently accessed first.
        let mut candidates = self.inner.lock().evictable();
        candidates.retain(|(_, id, _)| !in_use(id));
        candidates.reverse();
        let mut evictable: u64 = candidates.iter().map(|c| c.2).sum();
        let mut report = GcReport::default();
        let before = self.space()?.available;
        loop {
            let mut space = self.space()?;
            space.available = space
                .available
                .max(before.saturating_add(report.freed_bytes));
            let pinned = space.used.saturating_sub(evictable);
            let Some(limit) = space.shortfall(bytes, pinned) else {
                self.inner.lock().reserved += bytes;
                if !report.removed.is_empty() {
                    info!(
                        evicted = report.removed.len(),
                        freed_bytes = report.freed_bytes,
                        admitted_bytes = bytes,
                        "piece store evicted to admit a task"
                    );
                }
                let reservation = Reservation {
                    store: Arc::clone(self),
                    bytes,
                };
                return Ok((reservation, report));
            };
            // What would still stop the task with everything evictable gone: if anything,
            // evicting is pointless, and that limit is the one to report.
            let hopeless = space.after_evicting(evictable).shortfall(bytes, pinned);
            let next = if hopeless.is_some() {
                None
            } else {
                candidates.pop()
            };
            let Some((_, id, len)) = next else {
                return Err(Error::NoSpace {
                    dir: self.config.dir.clone(),
                    needed: bytes,
                    limit: hopeless.unwrap_or(limit),
                });
            };
            self.remove_task(&id)?;
            on_evict(&id);
            evictable = evictable.saturating_sub(len);
            report.freed_bytes += len;
            report.removed.push(id);
        }
    }

    /// Bytes promised to live [`Reservation`]s.
    #[must_use]
    pub fn reserved_bytes(&self) -> u64 {
        self.inner.lock().reserved
    }

    /// Capacity, usage, reservations and the filesystem's free space, now.
    fn space(&self) -> Result<Space, Error> {
        let available = damselfly_common::disk::available(&self.config.dir)
            .map_err(|e| Error::io(&self.config.dir, e))?;
        let inner = self.inner.lock();
        Ok(Space {
            capacity: self.config.capacity,
            used: inner.used,
            reserved: inner.reserved,
            available,
            min_free: self.config.min_free,
        })
    }

    /// Sum of `content_length` over all stored tasks (running or complete), in bytes.
    #[must_use]
    pub fn used_bytes(&self) -> u64 {
        self.inner.lock().used
    }

    /// One GC pass. If `capacity > 0` and used bytes exceed `high_watermark * capacity`,
    /// evicts `Complete` tasks least recently accessed first, skipping any for which
    /// `in_use(id)` is true, until used bytes are at most `low_watermark * capacity` or no
    /// candidate is left. `Running` tasks are never evicted. Also flushes access times.
    ///
    /// `in_use` is called without internal locks held, so it may call back into the store.
    ///
    /// # Errors
    ///
    /// [`Error::Db`]/[`Error::Io`] from flushing or removal; tasks evicted before the failure
    /// stay evicted.
    pub fn gc(&self, in_use: &dyn Fn(&str) -> bool) -> Result<GcReport, Error> {
        self.flush()?;
        let mut report = GcReport::default();
        let capacity = self.config.capacity;
        if capacity == 0 {
            return Ok(report);
        }
        let high = watermark_bytes(capacity, self.config.high_watermark);
        let low = watermark_bytes(capacity, self.config.low_watermark);
        let candidates = {
            let inner = self.inner.lock();
            if inner.used <= high {
                return Ok(report);
            }
            inner.evictable()
        };
        for (_, id, len) in candidates {
            if self.used_bytes() <= low {
                break;
            }
            if in_use(&id) {
                continue;
            }
            self.remove_task(&id)?;
            report.freed_bytes += len;
            report.removed.push(id);
        }
        if !report.removed.is_empty() {
            info!(
                evicted = report.removed.len(),
                freed_bytes = report.freed_bytes,
                used_bytes = self.used_bytes(),
                "piece store gc"
            );
        }
        Ok(report)
    }

    /// Path of the task's content file: `<dir>/content/<hex sha256 of id>`.
    #[must_use]
    pub fn content_path(&self, id: &str) -> PathBuf {
        content_path(&self.content_dir, id)
    }

    fn meta(&self, id: &str) -> Option<TaskMeta> {
        self.inner.lock().tasks.get(id).map(|e| e.meta.clone())
    }

    /// The task's meta and the length of piece `index`.
    fn piece_layout(&self, id: &str, index: u32) -> Result<(TaskMeta, u64), Error> {
        let meta = self
            .meta(id)
            .ok_or_else(|| Error::UnknownTask(id.to_owned()))?;
        let len = meta
            .piece_len(index)
            .ok_or_else(|| Error::PieceOutOfRange {
                id: id.to_owned(),
                index,
                count: meta.piece_count(),
            })?;
        Ok((meta, len))
    }

    /// A cached handle on the task's content file.
    fn file(&self, id: &str) -> Result<Arc<File>, Error> {
        let mut inner = self.inner.lock();
        if let Some(file) = inner.files.get(id) {
            return Ok(Arc::clone(file));
        }
        let path = self.content_path(id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(path, e))?;
        let file = Arc::new(file);
        cache_file(&mut inner.files, id, Arc::clone(&file));
        Ok(file)
    }

    fn put_meta(&self, meta: &TaskMeta) -> Result<(), Error> {
        self.db
            .put(keys::task_key(&meta.id), encode_meta(meta)?)
            .map_err(Error::from)
    }

    /// Adds deletes of every piece key of `id` to `batch`.
    fn delete_pieces(&self, batch: &mut WriteBatch, id: &str) -> Result<(), Error> {
        for item in self.scan(&keys::piece_prefix(id)) {
            batch.delete(item?.0);
        }
        Ok(())
    }

    fn scan<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = ScanItem> + 'a {
        scan(&self.db, prefix)
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("Store")
            .field("dir", &self.config.dir)
            .field("tasks", &inner.tasks.len())
            .field("used_bytes", &inner.used)
            .field("capacity", &self.config.capacity)
            .finish_non_exhaustive()
    }
}

/// Space promised to a task admitted by [`Store::reserve`]: counted against the capacity
/// until dropped.
#[must_use = "the space is released when the reservation is dropped"]
pub struct Reservation {
    store: Arc<Store>,
    bytes: u64,
}

impl Reservation {
    /// Bytes reserved.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut inner = self.store.inner.lock();
        inner.reserved = inner.reserved.saturating_sub(self.bytes);
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            warn!(error = %e, "piece store: failed to persist access times on close");
        }
    }
}

type ScanItem = Result<(Box<[u8]>, Box<[u8]>), Error>;

/// All entries whose key starts with `prefix`, in key order.
fn scan<'a>(db: &'a DB, prefix: &'a [u8]) -> impl Iterator<Item = ScanItem> + 'a {
    db.iterator(IteratorMode::From(prefix, Direction::Forward))
        .take_while(move |item| item.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
        .map(|item| item.map_err(Error::from))
}

fn content_path(content_dir: &Path, id: &str) -> PathBuf {
    content_dir.join(hex::encode(sha256(id.as_bytes())))
}

fn encode_meta(meta: &TaskMeta) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(meta).map_err(|e| Error::Metadata {
        key: keys::display(&keys::task_key(&meta.id)),
        reason: e.to_string(),
    })
}

/// `fraction * capacity` in bytes, rounded down.
fn watermark_bytes(capacity: u64, fraction: f64) -> u64 {
    // Both factors are finite and non-negative (validated), so the cast saturates sanely.
    (capacity as f64 * fraction) as u64
}

/// Caches an open content file, evicting an arbitrary handle beyond [`FILE_CACHE_CAP`] so a
/// cache of many blobs does not run out of file descriptors. Evicted handles stay valid for
/// whoever still holds them.
fn cache_file(files: &mut HashMap<String, Arc<File>>, id: &str, file: Arc<File>) {
    if files.len() >= FILE_CACHE_CAP && !files.contains_key(id) {
        let victim = files.keys().next().cloned();
        if let Some(victim) = victim {
            files.remove(&victim);
        }
    }
    files.insert(id.to_owned(), file);
}

/// Opens a file to import as `meta`, after checking `meta` and the file's length.
fn import_source(meta: &TaskMeta, src: &Path) -> Result<File, Error> {
    if let Some(reason) = meta.invalid_reason() {
        return Err(Error::InvalidTask {
            id: meta.id.clone(),
            reason,
        });
    }
    let file = File::open(src).map_err(|e| Error::io(src, e))?;
    let len = file.metadata().map_err(|e| Error::io(src, e))?.len();
    if len != meta.content_length {
        return Err(Error::PieceLength {
            index: 0,
            expected: meta.content_length,
            actual: len,
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests;
