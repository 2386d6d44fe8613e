//! Reads file bytes for the mount: chunk cache first, then ranged fetches from the blob
//! source, each chunk verified before use and fetched once however many readers want it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use nydus_fs::chunk::{self, BlobOrder, Fetch, Segment};
use nydus_fs::{ChunkRef, Digest, InodeId, Tree};
use parking_lot::Mutex;
use tokio::sync::{Semaphore, watch};

use super::cache::{ChunkCache, Hit};
use super::source::BlobSource;

/// Why a read failed. Every variant becomes `EIO` for the caller, with this message logged.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ReadError {
    /// The source could not deliver the bytes.
    #[error("fetching bytes {start}..{end} of blob {blob} from {source_name}: {cause}")]
    Fetch {
        blob: Digest,
        start: u64,
        end: u64,
        source_name: String,
        cause: String,
    },
    /// The bytes arrived but the chunk did not verify.
    #[error("chunk {digest} at bytes {start}..{end} of blob {blob} is corrupt: {reason}")]
    BadChunk {
        digest: Digest,
        blob: Digest,
        start: u64,
        end: u64,
        reason: String,
    },
    /// A worker task died (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}

type ChunkResult = Option<Result<Bytes, ReadError>>;

/// Counters, printed at unmount.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) requests: AtomicU64,
    pub(crate) bytes_fetched: AtomicU64,
    pub(crate) chunks_fetched: AtomicU64,
    pub(crate) memory_hits: AtomicU64,
    pub(crate) disk_hits: AtomicU64,
    pub(crate) failures: AtomicU64,
}

/// See the module docs.
pub(crate) struct Reader {
    tree: Arc<Tree>,
    source: Arc<dyn BlobSource>,
    cache: Arc<ChunkCache>,
    inflight: Mutex<HashMap<Digest, watch::Receiver<ChunkResult>>>,
    /// Largest ranged request, in compressed bytes; reads are widened up to it.
    fetch_size: u64,
    /// The chunks in blob order, and how many compressed bytes of them past the end of a file
    /// a read that reaches it takes along (0: none).
    order: BlobOrder,
    neighbours: u64,
    /// On-demand reads in progress; prefetch waits while there are any.
    on_demand: AtomicUsize,
    /// Parallel ranged requests (on-demand and prefetch together).
    requests: Semaphore,
    pub(crate) stats: Stats,
}

impl Reader {
    pub(crate) fn new(
        tree: Arc<Tree>,
        source: Arc<dyn BlobSource>,
        cache: Arc<ChunkCache>,
        fetch_size: u64,
        neighbours: u64,
        max_requests: usize,
    ) -> Self {
        Self {
            order: if neighbours > 0 {
                BlobOrder::new(&tree)
            } else {
                BlobOrder::default()
            },
            neighbours,
            tree,
            source,
            cache,
            inflight: Mutex::new(HashMap::new()),
            fetch_size,
            on_demand: AtomicUsize::new(0),
            requests: Semaphore::new(max_requests.max(1)),
            stats: Stats::default(),
        }
    }

    pub(crate) fn source_name(&self) -> String {
        self.source.describe()
    }

    /// Reads `size` bytes at `offset` of file `id` (clipped at its end).
    pub(crate) async fn read(
        self: &Arc<Self>,
        id: InodeId,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, ReadError> {
        self.on_demand.fetch_add(1, Ordering::SeqCst);
        let result = self.read_inner(id, offset, size).await;
        self.on_demand.fetch_sub(1, Ordering::SeqCst);
        if result.is_err() {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn read_inner(
        self: &Arc<Self>,
        id: InodeId,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, ReadError> {
        let Some(inode) = self.tree.inode(id) else {
            return Err(ReadError::Internal(format!("no inode {}", id.0)));
        };
        let plan = chunk::plan_read(&inode.chunks, inode.size, offset, u64::from(size));
        let wanted: Vec<ChunkRef> = plan
            .iter()
            .filter_map(|s| match s {
                Segment::Chunk { index, .. } => inode.chunks.get(*index).copied(),
                Segment::Zeros { .. } => None,
            })
            .collect();
        // Widen: the chunks after the last one wanted, up to one fetch unit, come along in the
        // same ranged request (sequential readers then find them cached). When that reaches the
        // end of the file, the chunks stored after it (the next files) come along too, up to
        // `neighbours` bytes: readers of many small files then make a request per batch.
        let mut extra = Vec::new();
        if let Some(Segment::Chunk { index, .. }) = plan
            .iter()
            .rev()
            .find(|s| matches!(s, Segment::Chunk { .. }))
        {
            let mut budget: u64 = wanted.iter().map(|c| u64::from(c.compressed_size)).sum();
            let mut file_end = true;
            for c in inode.chunks.iter().skip(index + 1) {
                if budget + u64::from(c.compressed_size) > self.fetch_size {
                    file_end = false;
                    break;
                }
                budget += u64::from(c.compressed_size);
                extra.push(*c);
            }
            let room = self.fetch_size.saturating_sub(budget).min(self.neighbours);
            if file_end
                && room > 0
                && let Some(last) = extra.last().or_else(|| inode.chunks.get(*index))
            {
                extra.extend(self.order.after(last, room));
            }
        }
        let got = self.chunks(&wanted, &extra).await?;
        let mut out = Vec::with_capacity(size as usize);
        for s in plan {
            match s {
                Segment::Zeros { len } => out.resize(out.len() + len, 0),
                Segment::Chunk { index, range } => {
                    let data = inode
                        .chunks
                        .get(index)
                        .and_then(|c| got.get(&c.digest))
                        .ok_or_else(|| ReadError::Internal("chunk missing after fetch".into()))?;
                    let part = data.get(range.clone()).ok_or_else(|| {
                        ReadError::Internal(format!("chunk shorter than {range:?}"))
                    })?;
                    out.extend_from_slice(part);
                }
            }
        }
        Ok(out)
    }

    /// Fetches every chunk of the files `ids` that is not cached yet, a fetch unit at a time,
    /// only while no on-demand read is waiting. Errors are logged and skipped.
    pub(crate) async fn prefetch(self: Arc<Self>, ids: Vec<InodeId>) {
        let mut fetched = 0u64;
        for id in ids {
            let Some(inode) = self.tree.inode(id) else {
                continue;
            };
            let cache = self.cache.clone();
            let chunks = inode.chunks.clone();
            let Ok(todo) = tokio::task::spawn_blocking(move || {
                chunks
                    .into_iter()
                    .filter(|c| !cache.contains(&c.digest))
                    .collect::<Vec<ChunkRef>>()
            })
            .await
            else {
                continue;
            };
            let mut start = 0;
            while start < todo.len() {
                let mut end = start;
                let mut bytes = 0u64;
                while end < todo.len()
                    && (end == start
                        || bytes + u64::from(todo[end].compressed_size) <= self.fetch_size)
                {
                    bytes += u64::from(todo[end].compressed_size);
                    end += 1;
                }
                // On-demand reads first: prefetch only uses an idle link.
                while self.on_demand.load(Ordering::SeqCst) > 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                match self.chunks(&todo[start..end], &[]).await {
                    Ok(_) => fetched += bytes,
                    Err(e) => tracing::warn!(error = %e, "prefetch skipped a range"),
                }
                start = end;
            }
        }
        tracing::info!(compressed_bytes = fetched, "prefetch finished");
    }

    /// The verified bytes of every chunk in `wanted` (by digest); chunks in `extra` are fetched
    /// along if missing but not waited for.
    async fn chunks(
        self: &Arc<Self>,
        wanted: &[ChunkRef],
        extra: &[ChunkRef],
    ) -> Result<HashMap<Digest, Bytes>, ReadError> {
        let mut got: HashMap<Digest, Bytes> = HashMap::new();
        let mut missing: Vec<ChunkRef> = Vec::new();
        for c in wanted {
            if got.contains_key(&c.digest) {
                continue;
            }
            if let Some(b) = self.cache.get_memory(&c.digest) {
                self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
                got.insert(c.digest, b);
            } else {
                missing.push(*c);
            }
        }
        if missing.is_empty() {
            return Ok(got);
        }
        // One load per chunk, from disk or the network, however many readers want it (the
        // kernel's readahead asks for several parts of one chunk at once): a reader either
        // waits for the load in flight or owns it.
        let mut waits: Vec<(Digest, watch::Receiver<ChunkResult>)> = Vec::new();
        let mut owned: Vec<(ChunkRef, watch::Sender<ChunkResult>)> = Vec::new();
        {
            let mut inflight = self.inflight.lock();
            for c in missing {
                if let Some(rx) = inflight.get(&c.digest) {
                    waits.push((c.digest, rx.clone()));
                    continue;
                }
                // A load may have finished since the memory look-up above.
                if let Some(b) = self.cache.get_memory(&c.digest) {
                    got.insert(c.digest, b);
                    continue;
                }
                let (tx, rx) = watch::channel(None);
                inflight.insert(c.digest, rx.clone());
                waits.push((c.digest, rx));
                owned.push((c, tx));
            }
        }
        // The disk layer for the owned chunks, each handed to its readers as soon as it is
        // loaded; extras only ride along with a request made anyway, and only need a stat to
        // know whether they are cached.
        let this = self.clone();
        let extra = extra.to_vec();
        let owned_digests: Vec<Digest> = owned.iter().map(|(c, _)| c.digest).collect();
        let probed = tokio::task::spawn_blocking(move || {
            let mut misses: Vec<(ChunkRef, watch::Sender<ChunkResult>)> = Vec::new();
            for (c, tx) in owned {
                match this.cache.get(&c.digest) {
                    Some((b, h)) => {
                        let counter = match h {
                            Hit::Memory => &this.stats.memory_hits,
                            Hit::Disk => &this.stats.disk_hits,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        this.finish(&c, &tx, Ok(b));
                    }
                    None => misses.push((c, tx)),
                }
            }
            let extras: Vec<ChunkRef> = if misses.is_empty() {
                Vec::new()
            } else {
                extra
                    .into_iter()
                    .filter(|c| !this.cache.contains(&c.digest))
                    .collect()
            };
            (misses, extras)
        })
        .await;
        let (mut to_fetch, extras) = match probed {
            Ok(p) => p,
            Err(e) => {
                // Its owned chunks' senders died with it: their readers get an error, and the
                // entries go, so the next read loads those chunks again.
                self.forget_dead(owned_digests);
                return Err(ReadError::Internal(format!("cache task: {e}")));
            }
        };
        if !to_fetch.is_empty() {
            let mut inflight = self.inflight.lock();
            for c in extras {
                if inflight.contains_key(&c.digest) || self.cache.get_memory(&c.digest).is_some() {
                    continue;
                }
                let (tx, rx) = watch::channel(None);
                inflight.insert(c.digest, rx);
                to_fetch.push((c, tx));
            }
        }
        if !to_fetch.is_empty() {
            let refs: Vec<ChunkRef> = to_fetch.iter().map(|(c, _)| *c).collect();
            let mut senders: HashMap<Digest, watch::Sender<ChunkResult>> =
                to_fetch.into_iter().map(|(c, tx)| (c.digest, tx)).collect();
            for fetch in chunk::group_fetches(&refs, self.fetch_size) {
                let txs: Vec<(ChunkRef, watch::Sender<ChunkResult>)> = fetch
                    .chunks
                    .iter()
                    .filter_map(|c| senders.remove(&c.digest).map(|tx| (*c, tx)))
                    .collect();
                // Spawned, so the fetch completes (and is cached) even if this reader gives up.
                let this = self.clone();
                tokio::spawn(async move { this.fetch(fetch, txs).await });
            }
        }
        for (digest, mut rx) in waits {
            let result = rx
                .wait_for(Option::is_some)
                .await
                .map_err(|_| ReadError::Internal("fetch task vanished".into()))?
                .clone();
            match result {
                Some(Ok(b)) => {
                    got.insert(digest, b);
                }
                Some(Err(e)) => return Err(e),
                None => return Err(ReadError::Internal("empty fetch result".into())),
            }
        }
        Ok(got)
    }

    async fn fetch(
        self: Arc<Self>,
        fetch: Fetch,
        txs: Vec<(ChunkRef, watch::Sender<ChunkResult>)>,
    ) {
        let blob_index = fetch.blob_index as usize;
        let blob = self
            .tree
            .blobs
            .get(blob_index)
            .copied()
            .unwrap_or(Digest([0; 32]));
        let digests: Vec<Digest> = txs.iter().map(|(c, _)| c.digest).collect();
        let permit = self.requests.acquire().await;
        let result = self
            .source
            .read_range(blob_index, fetch.range.clone())
            .await;
        drop(permit);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        match result {
            Err(e) => {
                let err = ReadError::Fetch {
                    blob,
                    start: fetch.range.start,
                    end: fetch.range.end,
                    source_name: self.source.describe(),
                    cause: e.0,
                };
                for (c, tx) in txs {
                    self.finish(&c, &tx, Err(err.clone()));
                }
            }
            Ok(bytes) => {
                self.stats
                    .bytes_fetched
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                let this = self.clone();
                let start = fetch.range.start;
                // Each chunk is handed to its readers as soon as it is verified: the one a
                // reader waits for comes first in the range, the neighbours fetched along with
                // it are verified and cached after.
                let _ = tokio::task::spawn_blocking(move || {
                    for (c, tx) in txs {
                        let r = this.verify_and_store(&bytes, start, &c, blob);
                        this.finish(&c, &tx, r);
                    }
                })
                .await;
            }
        }
        // Had the verifying task died half-way, its chunks' senders are gone: forget them, so
        // that the next read fetches them again instead of waiting on a dead entry.
        self.forget_dead(digests);
    }

    /// Drops the in-flight entries of `digests` whose loader died without an answer.
    fn forget_dead(&self, digests: impl IntoIterator<Item = Digest>) {
        let mut inflight = self.inflight.lock();
        for d in digests {
            if inflight
                .get(&d)
                .is_some_and(|rx| rx.has_changed().is_err() && rx.borrow().is_none())
            {
                inflight.remove(&d);
            }
        }
    }

    /// Hands a chunk's result to its readers and ends its in-flight entry.
    fn finish(&self, c: &ChunkRef, tx: &watch::Sender<ChunkResult>, r: Result<Bytes, ReadError>) {
        let mut inflight = self.inflight.lock();
        tx.send_replace(Some(r));
        inflight.remove(&c.digest);
    }

    /// Blocking: decompress + verify one chunk out of a fetched range, then cache it.
    fn verify_and_store(
        &self,
        bytes: &Bytes,
        range_start: u64,
        c: &ChunkRef,
        blob: Digest,
    ) -> Result<Bytes, ReadError> {
        let bad = |reason: String| ReadError::BadChunk {
            digest: c.digest,
            blob,
            start: c.compressed_offset,
            end: c.compressed_offset + u64::from(c.compressed_size),
            reason,
        };
        let off = usize::try_from(c.compressed_offset - range_start)
            .map_err(|_| bad("offset overflow".into()))?;
        let slice = bytes
            .get(off..off + c.compressed_size as usize)
            .ok_or_else(|| bad(format!("the source returned only {} bytes", bytes.len())))?;
        let data = chunk::decode(slice, c).map_err(|e| bad(e.to_string()))?;
        let data = Bytes::from(data);
        self.stats.chunks_fetched.fetch_add(1, Ordering::Relaxed);
        self.cache.put(c.digest, data.clone());
        Ok(data)
    }
}
