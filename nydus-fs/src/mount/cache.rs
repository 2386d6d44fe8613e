//! The chunk cache: verified, uncompressed chunks on local disk (kept across mounts) with a
//! small in-memory layer in front.
//!
//! Disk layout: `<dir>/chunks/<first two hex digits>/<sha256 hex>`, one file per chunk, named by
//! the chunk digest, so identical chunks of different images share one file. Files are written
//! to a temporary name and renamed, so a crash never leaves a partial chunk under a final name,
//! and every chunk read back from disk is hashed again before use: a damaged or tampered cache
//! file is deleted and refetched, never served.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use nydus_fs::{Digest, merkle};
use parking_lot::Mutex;

/// Where a chunk came from, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hit {
    Memory,
    Disk,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct ChunkCache {
    dir: Option<PathBuf>,
    memory: Mutex<Lru>,
    tmp_seq: AtomicU64,
}

#[derive(Debug)]
struct Lru {
    budget: usize,
    used: usize,
    tick: u64,
    entries: HashMap<Digest, (Bytes, u64)>,
}

impl Lru {
    fn get(&mut self, d: &Digest) -> Option<Bytes> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(d).map(|(b, t)| {
            *t = tick;
            b.clone()
        })
    }

    fn insert(&mut self, d: Digest, data: Bytes) {
        if data.len() > self.budget {
            return;
        }
        self.tick += 1;
        if let Some((old, _)) = self.entries.insert(d, (data.clone(), self.tick)) {
            self.used -= old.len();
        }
        self.used += data.len();
        while self.used > self.budget {
            // Evict the least recently used; the map holds at most budget / chunk entries.
            let Some(victim) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some((b, _)) = self.entries.remove(&victim) {
                self.used -= b.len();
            }
        }
    }
}

impl ChunkCache {
    /// A cache in `dir` (created if missing), or memory only with `None`. `memory_budget` bytes
    /// of chunks stay in memory.
    pub(crate) fn open(dir: Option<&Path>, memory_budget: usize) -> std::io::Result<Self> {
        let dir = match dir {
            Some(d) => {
                let chunks = d.join("chunks");
                fs::create_dir_all(&chunks)?;
                Some(chunks)
            }
            None => None,
        };
        Ok(Self {
            dir,
            memory: Mutex::new(Lru {
                budget: memory_budget,
                used: 0,
                tick: 0,
                entries: HashMap::new(),
            }),
            tmp_seq: AtomicU64::new(0),
        })
    }

    fn path(&self, d: &Digest) -> Option<PathBuf> {
        let hex = hex::encode(d.0);
        self.dir.as_ref().map(|dir| dir.join(&hex[..2]).join(hex))
    }

    /// The verified bytes of chunk `d`, from memory or disk. Blocking (disk I/O): call from a
    /// blocking context.
    pub(crate) fn get(&self, d: &Digest) -> Option<(Bytes, Hit)> {
        if let Some(b) = self.memory.lock().get(d) {
            return Some((b, Hit::Memory));
        }
        let path = self.path(d)?;
        let data = fs::read(&path).ok()?;
        if merkle::chunk_digest(&data) != *d {
            tracing::warn!(
                chunk = %d,
                path = %path.display(),
                "cached chunk does not match its digest; deleting it and fetching again"
            );
            let _ = fs::remove_file(&path);
            return None;
        }
        let data = Bytes::from(data);
        self.memory.lock().insert(*d, data.clone());
        Some((data, Hit::Disk))
    }

    /// Whether chunk `d` is cached (in memory, or a file of that name on disk; not verified).
    /// Blocking.
    pub(crate) fn contains(&self, d: &Digest) -> bool {
        self.memory.lock().entries.contains_key(d) || self.path(d).is_some_and(|p| p.exists())
    }

    /// Only the in-memory layer (non-blocking).
    pub(crate) fn get_memory(&self, d: &Digest) -> Option<Bytes> {
        self.memory.lock().get(d)
    }

    /// Stores verified chunk bytes. Blocking. A failure to write the disk copy (full disk) is
    /// logged and otherwise ignored: the chunk is still served from memory this time.
    pub(crate) fn put(&self, d: Digest, data: Bytes) {
        if let Some(path) = self.path(&d)
            && !path.exists()
            && let Err(e) = self.write_file(&path, &data)
        {
            tracing::warn!(chunk = %d, path = %path.display(), error = %e, "cannot cache chunk on disk");
        }
        self.memory.lock().insert(d, data);
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> std::io::Result<()> {
        let parent = path.parent().unwrap_or_else(|| Path::new("."));
        fs::create_dir_all(parent)?;
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = parent.join(format!(".tmp.{}.{seq}", std::process::id()));
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(data)?;
            fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_copy_survives_a_new_cache_and_a_damaged_copy_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = Bytes::from(vec![7u8; 5000]);
        let d = merkle::chunk_digest(&data);
        let cache = ChunkCache::open(Some(dir.path()), 1 << 20).expect("open");
        assert!(cache.get(&d).is_none());
        cache.put(d, data.clone());
        assert_eq!(cache.get(&d), Some((data.clone(), Hit::Memory)));

        let reopened = ChunkCache::open(Some(dir.path()), 1 << 20).expect("open");
        assert_eq!(reopened.get(&d), Some((data.clone(), Hit::Disk)));

        let path = reopened.path(&d).expect("disk cache");
        let mut bad = data.to_vec();
        bad[10] ^= 1;
        fs::write(&path, &bad).expect("damage");
        let third = ChunkCache::open(Some(dir.path()), 1 << 20).expect("open");
        assert!(
            third.get(&d).is_none(),
            "a damaged cache file is never served"
        );
        assert!(!path.exists(), "and it is removed");
    }

    #[test]
    fn memory_layer_stays_within_its_budget() {
        let cache = ChunkCache::open(None, 10_000).expect("open");
        let chunks: Vec<(Digest, Bytes)> = (0u8..5)
            .map(|i| {
                let b = Bytes::from(vec![i; 4000]);
                (merkle::chunk_digest(&b), b)
            })
            .collect();
        for (d, b) in &chunks {
            cache.put(*d, b.clone());
        }
        let kept = chunks
            .iter()
            .filter(|(d, _)| cache.get_memory(d).is_some())
            .count();
        assert_eq!(kept, 2, "10 000 bytes hold two 4 000-byte chunks");
        assert!(
            cache.get_memory(&chunks[4].0).is_some(),
            "the newest is kept"
        );
    }
}
