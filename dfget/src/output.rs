//! The output file: written at piece offsets into a temp file beside the target, renamed into
//! place only once every byte is verified. A failed download leaves nothing behind.

use std::{
    fs::File,
    io::Read,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use damselfly_common::{Digest, Sha256Hasher};

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
    /// Creates the temp file for `target`, sized to `len` (sparse).
    ///
    /// # Errors
    /// The directory is not writable, or the disk is full.
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
        out.file.set_len(len).map_err(io)?;
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

    /// sha256 of the whole file as written.
    ///
    /// # Errors
    /// Reading failed.
    pub fn digest(&self) -> Result<Digest, IoError> {
        file_digest(&self.temp)
    }

    /// Flushes and renames the temp file onto the target.
    ///
    /// # Errors
    /// Flushing or renaming failed; the temp file is removed.
    pub fn commit(mut self) -> Result<PathBuf, IoError> {
        self.file.sync_all().map_err(|source| IoError {
            path: self.temp.clone(),
            source,
        })?;
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

/// sha256 of the file at `path`, read in 1 MiB blocks.
///
/// # Errors
/// Opening or reading failed.
pub fn file_digest(path: &Path) -> Result<Digest, IoError> {
    let io = |source| IoError {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = File::open(path).map_err(io)?;
    let mut hasher = Sha256Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(io)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}
