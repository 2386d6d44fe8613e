//! The converter: OCI image layers (tar streams, plain or gzip) to one merged [`Tree`] plus one
//! data blob per layer of independently zstd-compressed, content-deduplicated chunks.
//!
//! - [`merge::Merger`] applies layers in order with OCI semantics (whiteouts, opaque
//!   directories, replacement, hard links, implicit parents) and chunks every regular file.
//! - [`blob::BlobWriter`] appends compressed chunks to a layer's data blob, tracking its offset
//!   and sha256.
//! - [`path`] normalises and checks tar entry paths.
//!
//! Nothing is ever extracted to disk: a hostile layer can only make the conversion fail with a
//! [`ConvertError`] naming the entry.
//!
//! [`Tree`]: crate::Tree

use std::io;

use crate::error::FormatError;

pub mod blob;
pub mod merge;
pub mod path;

#[cfg(test)]
mod tests;

pub use blob::BlobWriter;
pub use merge::{LayerBlob, LayerStats, Merger};

/// Why a layer could not be converted. After any error the [`Merger`] is unusable
/// ([`ConvertError::Poisoned`]): the partly applied layer cannot be rolled back.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Reading the layer (tar or gzip) or writing the blob failed.
    #[error("layer {layer}: I/O error {context}: {source}")]
    Io {
        /// Index of the layer (0 for the first [`Merger::apply_layer`] call).
        layer: usize,
        /// What was being done, naming the entry when there is one.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A tar entry that cannot be converted: hostile or invalid path or name, invalid
    /// attributes, unsupported entry type.
    #[error("layer {layer}: entry {path:?}: {reason}")]
    InvalidEntry {
        /// Index of the layer.
        layer: usize,
        /// The entry's path as found in the tar, lossily decoded.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A hard link whose target is outside the tree, missing (or deleted), or a directory.
    #[error("layer {layer}: hard link {path:?} -> {target:?}: {reason}")]
    BadHardLink {
        /// Index of the layer.
        layer: usize,
        /// The link's path, lossily decoded.
        path: String,
        /// The link target as found in the tar, lossily decoded.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// [`Merger::apply_layer`] was given a [`BlobWriter`] that already holds data: every layer
    /// needs a fresh blob.
    #[error("layer {layer}: blob writer already holds {len} bytes (each layer needs a fresh one)")]
    BlobNotEmpty {
        /// Index of the layer.
        layer: usize,
        /// Bytes already in the writer.
        len: u64,
    },
    /// A compressed chunk larger than the format allows (`2 * chunk_size`).
    #[error("layer {layer}: entry {path:?}: compressed chunk of {size} bytes is too large")]
    ChunkTooLarge {
        /// Index of the layer.
        layer: usize,
        /// The file, lossily decoded.
        path: String,
        /// Compressed size.
        size: usize,
    },
    /// The merged tree breaks a rule or limit of the format.
    #[error("merged tree is invalid: {0}")]
    Format(#[from] FormatError),
    /// An earlier call failed; the merger holds a partly applied layer.
    #[error("the merger failed earlier and cannot be used any more")]
    Poisoned,
}
