//! The output file: written at piece offsets into a temp file beside the target, renamed into
//! place only once every byte is verified. A failed download leaves nothing behind.

use std::{
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use damselfly_common::{Digest, Sha256Hasher};
use tokio::sync::watch;

/// A local I/O failure, with the path involved.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct IoError {
    /// The file.
    pub path: PathBuf,
    /// The cause.
    pub source: std::io::Error,
}

/// A temp file that becomes the output on [`OutputFile::commit`] and vanishes otherwise.
#[derive(Debug)]
pub struct OutputFile {
    target: PathBuf,
    temp: PathBuf,
    file: Arc<File>,
    committed: bool,
}

impl OutputFile {
    /// Creates the temp file for `target`, sized to `len` with its blocks allocated
    /// ([`damselfly_common::disk::allocate`]), so a full disk fails the download here, before
    /// any byte is fetched, and never midway. The temp file is removed on error.
    ///
    /// # Errors
    /// The directory is not writable, or the disk is full (`ENOSPC`).
    pub fn create(target: &Path, len: u64, tag: u64) -> Result<Self, IoError> {
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "download".into());
        let temp = dir.join(format!(".{name}.{tag:016x}.damselfly-tmp"));
        let io = |source| IoError {
            path: temp.clone(),
            source,
        };
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(io)?;
        let out = Self {
            target: target.to_path_buf(),
            temp: temp.clone(),
            file: Arc::new(file),
            committed: false,
        };
        // On error `out` is dropped, which removes the temp file.
        damselfly_common::disk::allocate(&out.file, len).map_err(io)?;
        Ok(out)
    }

    /// The open file, for piece writes and for serving pieces to peers.
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// Writes `data` at `offset`.
    ///
    /// # Errors
    /// A write failed (disk full…).
    pub fn write_at(file: &File, path: &Path, offset: u64, data: &[u8]) -> Result<(), IoError> {
        file.write_all_at(data, offset).map_err(|source| IoError {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The temp file path.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Flushes (when `durable`) and renames the temp file onto the target.
    ///
    /// # Errors
    /// Flushing or renaming failed; the temp file is removed.
    pub fn commit(mut self, durable: bool) -> Result<PathBuf, IoError> {
        if durable {
            self.file.sync_all().map_err(|source| IoError {
                path: self.temp.clone(),
                source,
            })?;
        }
        std::fs::rename(&self.temp, &self.target).map_err(|source| IoError {
            path: self.target.clone(),
            source,
        })?;
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Bytes hashed per blocking job of [`hash_prefix`]: how long an abandoned download's hasher
/// may still run, and how often it looks for more.
const HASH_STEP: u64 = 32 << 20;

/// sha256 of the first `len` bytes of `file`, computed while they are still being written:
/// `prefix` tells how many bytes from the start are verified and written, and the hash
/// follows it, so the whole-file digest is ready soon after the last piece instead of one
/// more pass over the file at the end. It reads the bytes back from the page cache, where
/// they were just written. Durability is the caller's, once, at the end
/// ([`OutputFile::commit`]): flushing as the download goes (every 128 MiB, before) held up the
/// writes behind it. Stops with an error once `prefix`'s sender is dropped before `len`
/// bytes were ready (the download failed).
///
/// # Errors
/// Reading failed, or the download was abandoned.
pub async fn hash_prefix(
    file: Arc<File>,
    path: PathBuf,
    len: u64,
    mut prefix: watch::Receiver<u64>,
) -> Result<Digest, IoError> {
    let io = |source| IoError {
        path: path.clone(),
        source,
    };
    let mut state = (Sha256Hasher::new(), vec![0u8; 1 << 20]);
    let mut hashed = 0u64;
    while hashed < len {
        let ready = (*prefix.borrow_and_update()).min(len);
        if ready <= hashed {
            if prefix.changed().await.is_err() {
                return Err(io(std::io::Error::other("download abandoned")));
            }
            continue;
        }
        let end = ready.min(hashed + HASH_STEP);
        let file = file.clone();
        let (mut hasher, mut buf) = state;
        state = tokio::task::spawn_blocking(move || {
            let mut at = hashed;
            while at < end {
                let n = (end - at).min(buf.len() as u64) as usize;
                let block = &mut buf[..n];
                file.read_exact_at(block, at)?;
                hasher.update(block);
                at += n as u64;
            }
            Ok::<_, std::io::Error>((hasher, buf))
        })
        .await
        .map_err(|e| io(std::io::Error::other(e.to_string())))?
        .map_err(io)?;
        hashed = end;
    }
    Ok(state.0.finish())
}
