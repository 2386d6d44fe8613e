//! Writing a data blob: compressed chunks appended back to back.

use std::io::{self, Write};

use sha2::{Digest as _, Sha256};

use crate::merkle::Digest;

/// Appends compressed chunks to a data blob, tracking the current offset and the sha256 of the
/// bytes written (the blob's OCI digest).
pub struct BlobWriter<W: Write> {
    writer: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> BlobWriter<W> {
    /// A writer for a new, empty blob.
    pub fn new(writer: W) -> Self {
        Self {
            writer,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Bytes written so far (the offset of the next chunk).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// sha256 of the bytes written so far.
    pub fn digest(&self) -> Digest {
        Digest(self.hasher.clone().finalize().into())
    }

    /// Appends `data` and returns the offset it was written at.
    ///
    /// # Errors
    /// The writer's error. The blob is then unusable (part of `data` may have been written).
    pub fn append(&mut self, data: &[u8]) -> io::Result<u64> {
        let offset = self.len;
        self.writer.write_all(data)?;
        self.hasher.update(data);
        self.len += data.len() as u64;
        Ok(offset)
    }

    /// Flushes the writer and returns the blob's sha256 and length.
    ///
    /// # Errors
    /// The writer's flush error.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        self.writer.flush()?;
        Ok((Digest(self.hasher.finalize().into()), self.len))
    }
}
