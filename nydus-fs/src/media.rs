//! The media types and annotations that mark a converted image in its OCI manifest, shared by
//! the converter, the mount and whoever must recognise a nydus-fs image from its manifest alone
//! (the containerd snapshotter).
//!
//! A converted image's manifest lists the data blobs ([`BLOB`]) in bootstrap blob-table order,
//! then the bootstrap ([`BOOTSTRAP`], annotated with [`ANN_ROOT`], [`ANN_CHUNK_SIZE`] and
//! [`ANN_FORMAT`]), then optionally a prefetch list ([`PREFETCH`]). An image is a nydus-fs image
//! exactly when its manifest has one layer of media type [`BOOTSTRAP`].

/// A nydus data blob: independently zstd-compressed chunks (one zstd frame each) back to back,
/// addressed by the bootstrap's chunk table. Not a tar; as a whole it is still a valid zstd
/// stream (concatenated frames) that decompresses to the deduplicated chunks, hence `+zstd`.
pub const BLOB: &str = "application/vnd.damselfly.nydus.blob.v1+zstd";
/// A nydus bootstrap (`docs/format.md`).
pub const BOOTSTRAP: &str = "application/vnd.damselfly.nydus.bootstrap.v1";
/// A prefetch list ([`crate::prefetch`]): files to fetch in the background after a mount.
pub const PREFETCH: &str = "application/vnd.damselfly.nydus.prefetch.v1";
/// Bootstrap annotation: the merkle root digest (`sha256:...`).
pub const ANN_ROOT: &str = "io.damselfly.nydus.root";
/// Bootstrap annotation: the chunk size in bytes.
pub const ANN_CHUNK_SIZE: &str = "io.damselfly.nydus.chunk-size";
/// Bootstrap annotation: the bootstrap format version.
pub const ANN_FORMAT: &str = "io.damselfly.nydus.format";
/// Manifest annotation: digest of the manifest the image was converted from.
pub const ANN_SOURCE: &str = "io.damselfly.nydus.source-manifest";
