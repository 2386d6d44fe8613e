//! The node cache: complete, verified blobs keyed by digest, in the shared piece store
//! (RocksDB metadata + one content file per blob, LRU GC). Every read re-verifies the piece
//! it returns, so a blob damaged on disk is never served.

use std::{ops::Range, path::PathBuf, sync::Arc};

use bytes::Bytes;
use damselfly_common::Digest;
use damselfly_store::{Reservation, Store, StoreConfig, TaskMeta, TaskState, unix_now};
use futures::Stream;
use tracing::warn;

/// Why a cache operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The store failed (I/O, RocksDB, corrupt data).
    #[error(transparent)]
    Store(#[from] damselfly_store::Error),
    /// A blocking worker died.
    #[error("cache worker failed: {0}")]
    Worker(String),
}

/// What the cache holds for one blob.
#[derive(Debug, Clone)]
pub struct CachedBlob {
    /// Blob size.
    pub size: u64,
    /// Piece size of the stored layout.
    pub piece_size: u32,
    /// Where it was fetched from: the registry's base URL and the repository path
    /// (`https://reg.local/v2/app/blobs/sha256:…`; a preheat's URL as given).
    pub url: String,
}

impl CachedBlob {
    /// `scheme://host[:port]` of the registry the blob came from.
    pub fn origin(&self) -> Option<String> {
        damselfly_common::allow::url_origin(&self.url)
    }
}

/// The node cache. Cheap to clone.
#[derive(Clone)]
pub struct NodeCache {
    store: Arc<Store>,
    incoming: PathBuf,
}

impl std::fmt::Debug for NodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCache")
            .field("dir", &self.store.config().dir)
            .finish_non_exhaustive()
    }
}

impl NodeCache {
    /// Opens the cache under `dir` (`db/`, `content/`, and `incoming/` for downloads in
    /// progress, which is emptied: a download cut short by a restart is started again).
    ///
    /// # Errors
    /// The store cannot be opened or the directories created.
    pub fn open(config: StoreConfig) -> Result<Self, CacheError> {
        let dir = config.dir.clone();
        let store = Store::open(config)?;
        let incoming = dir.join("incoming");
        if incoming.exists() {
            let _ = std::fs::remove_dir_all(&incoming);
        }
        std::fs::create_dir_all(&incoming).map_err(|e| damselfly_store::Error::Io {
            path: incoming.clone(),
            source: e,
        })?;
        Ok(Self {
            store: Arc::new(store),
            incoming,
        })
    }

    /// Where a download of `digest` writes before it is adopted.
    pub fn incoming_path(&self, digest: &Digest) -> PathBuf {
        self.incoming.join(digest.hex())
    }

    /// The blob, if this node holds all of it (a use: it becomes the most recently used).
    pub fn get(&self, digest: &Digest) -> Option<CachedBlob> {
        let blob = self.peek(digest)?;
        let _ = self.store.touch(&digest.to_string(), unix_now());
        Some(blob)
    }

    /// The blob, if this node holds all of it, leaving its place in the LRU order alone.
    pub fn peek(&self, digest: &Digest) -> Option<CachedBlob> {
        let meta = self
            .store
            .task_meta(&digest.to_string())
            .filter(|m| m.state == TaskState::Complete)?;
        Some(CachedBlob {
            size: meta.content_length,
            piece_size: meta.piece_size,
            url: meta.url,
        })
    }

    /// Every blob held in full: digest, the URL it was fetched from, its content file.
    ///
    /// # Errors
    /// The store's index cannot be read.
    pub fn held(&self) -> Result<Vec<(Digest, String, PathBuf)>, CacheError> {
        Ok(self
            .store
            .tasks()?
            .into_iter()
            .filter(|m| m.state == TaskState::Complete)
            .filter_map(|m| {
                let digest = m.id.parse::<Digest>().ok()?;
                Some((digest, m.url, self.store.content_path(&m.id)))
            })
            .collect())
    }

    /// Adopts a file the engine downloaded and has already checked against `digest` (the
    /// task id here). With `pieces` (the swarm download's piece size and the digests every
    /// piece matched as it was written) the store records those and does not read the file;
    /// otherwise (back to source) it reads it once to record its piece digests. It is not
    /// hashed as a whole a second time.
    ///
    /// # Errors
    /// Local I/O failed.
    pub async fn adopt(
        &self,
        digest: Digest,
        url: String,
        path: PathBuf,
        pieces: Option<(u32, Vec<[u8; 32]>)>,
    ) -> Result<(), CacheError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let len = std::fs::metadata(&path)
                .map_err(|e| damselfly_store::Error::Io {
                    path: path.clone(),
                    source: e,
                })?
                .len();
            let now = unix_now();
            let meta = TaskMeta {
                id: digest.to_string(),
                url,
                content_length: len,
                piece_size: pieces
                    .as_ref()
                    .map_or_else(|| damselfly_swarm::piece_size_for(len), |p| p.0),
                // Verified by the engine moments ago; the id names it.
                digest: None,
                public: false,
                state: TaskState::Complete,
                created_unix: now,
                last_access_unix: now,
            };
            let imported = match &pieces {
                Some((_, digests)) => store.import_verified(meta, &path, digests),
                None => store.import_file(meta, &path),
            };
            match imported {
                // Another request adopted the same blob first: keep that one.
                Err(damselfly_store::Error::TaskExists(_)) => {
                    let _ = std::fs::remove_file(&path);
                    Ok(())
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    Err(e.into())
                }
                Ok(()) => Ok(()),
            }
        })
        .await
        .map_err(|e| CacheError::Worker(e.to_string()))?
    }

    /// Admits a download of `bytes` bytes into `incoming/`: evicts least recently used blobs
    /// not `in_use` if the cache's capacity or the disk (keeping `min_free`) cannot take it,
    /// else refuses ([`damselfly_store::Store::reserve`]). The bytes count against the
    /// capacity until the [`Reservation`] is dropped, after the blob is adopted. Returns the
    /// evicted digests too; `on_evict` runs right after each eviction, to close other
    /// handles on its file. Blocks briefly (a `statvfs`, and any eviction's file removals).
    ///
    /// # Errors
    /// [`damselfly_store::Error::NoSpace`] naming the limit, or an eviction failed.
    pub fn reserve(
        &self,
        bytes: u64,
        in_use: &[String],
        on_evict: &dyn Fn(&str),
    ) -> Result<(Reservation, Vec<String>), CacheError> {
        let (reservation, report) =
            self.store
                .reserve(bytes, &|id| in_use.iter().any(|u| u == id), on_evict)?;
        Ok((reservation, report.removed))
    }

    /// Streams bytes `range` of a cached blob, piece by piece, each piece verified.
    pub fn read(
        &self,
        digest: &Digest,
        blob: &CachedBlob,
        range: Range<u64>,
    ) -> impl Stream<Item = Result<Bytes, CacheError>> + Send + 'static {
        let store = self.store.clone();
        let id = digest.to_string();
        let piece_size = u64::from(blob.piece_size.max(1));
        futures::stream::try_unfold(range.start, move |pos| {
            let store = store.clone();
            let id = id.clone();
            let end = range.end;
            async move {
                if pos >= end {
                    return Ok(None);
                }
                let index = (pos / piece_size) as u32;
                let piece_start = u64::from(index) * piece_size;
                let data = tokio::task::spawn_blocking(move || store.read_piece(&id, index))
                    .await
                    .map_err(|e| CacheError::Worker(e.to_string()))??;
                let from = (pos - piece_start) as usize;
                let to = ((end - piece_start) as usize).min(data.len());
                if from >= to {
                    return Err(CacheError::Worker("piece shorter than its layout".into()));
                }
                let chunk = Bytes::from(data).slice(from..to);
                Ok(Some((chunk, piece_start + to as u64)))
            }
        })
    }

    /// Removes a blob (after it was found corrupt).
    pub fn remove(&self, digest: &Digest) {
        if let Err(e) = self.store.remove_task(&digest.to_string()) {
            warn!(error = %e, %digest, "cannot remove blob from the cache");
        }
    }

    /// One GC pass; returns the evicted digests.
    ///
    /// # Errors
    /// The store failed.
    pub async fn gc(&self, in_use: Vec<String>) -> Result<Vec<String>, CacheError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let report = store.gc(&|id| in_use.iter().any(|u| u == id))?;
            Ok(report.removed)
        })
        .await
        .map_err(|e| CacheError::Worker(e.to_string()))?
    }

    /// Bytes held.
    pub fn used_bytes(&self) -> u64 {
        self.store.used_bytes()
    }

    /// Persists access times.
    pub fn flush(&self) {
        if let Err(e) = self.store.flush() {
            warn!(error = %e, "cannot persist cache access times");
        }
    }
}
