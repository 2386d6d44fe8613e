//! nydus-fs: the lazy, merkle-verified image format.
//!
//! This crate holds the pure format layer, with no I/O, and the converter built on it:
//!
//! - [`tree`]: the in-memory model of a merged image tree ([`Tree`], [`Inode`], [`ChunkRef`]),
//!   with hard links as shared [`InodeId`]s, plus the validation and canonical numbering that
//!   both the encoder and the decoder rely on.
//! - [`merkle`]: the domain-separated sha256 digests of chunks, inodes and the whole tree
//!   ([`merkle::root_digest`]). The root goes into the image manifest.
//! - [`bootstrap`]: the byte layout ([`bootstrap::encode`], [`bootstrap::decode`]). `decode`
//!   refuses anything that is not the canonical encoding of a valid tree with the expected root.
//! - [`error`]: [`FormatError`], every reason a tree or a bootstrap is refused.
//! - [`convert`]: OCI layers (tar, plain or gzip) to one merged [`Tree`] and per-layer data
//!   blobs of zstd-compressed, deduplicated chunks ([`convert::Merger`]); sync `Read`/`Write`.
//!
//! - [`chunk`]: decoding + verifying one chunk, planning a read over chunks and holes, grouping
//!   adjacent chunks into ranged requests (shared by `check` and the mount).
//! - [`prefetch`]: the prefetch list format (files in first-access order).
//! - [`media`]: the media types and annotations that mark a converted image in its manifest.
//!
//! The byte-for-byte specification is `docs/format.md`. The FUSE mount (`nydus-fs mount`) lives
//! in the binary and is built on these types.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bootstrap;
pub mod chunk;
pub mod convert;
pub mod error;
pub mod media;
pub mod merkle;
pub mod prefetch;
pub mod tree;

pub use error::FormatError;
pub use merkle::Digest;
pub use tree::{ChunkRef, ChunkSize, Inode, InodeId, InodeKind, Timestamp, Tree};
