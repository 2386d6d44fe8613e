//! The media types and annotations that mark a converted image in its OCI manifest, shared by
//! the converter, the mount and whoever must recognise a nydus-fs image from its manifest alone
//! (the containerd snapshotter).
//!
//! A converted image's manifest lists the data blobs ([`BLOB`]) in bootstrap blob-table order,
//! then the optional prefetch list ([`PREFETCH`]), then the bootstrap ([`BOOTSTRAP`], annotated
//! with [`ANN_ROOT`], [`ANN_CHUNK_SIZE`] and [`ANN_FORMAT`]). An image is a nydus-fs image
//! exactly when its manifest has one bootstrap layer ([`LayerKind::of`]).
//!
//! The media types start with `application/vnd.oci.image.layer.` because containerd treats
//! only such layers (and Docker's layer types) as layers: only they get the CRI plugin's
//! snapshot labels and reach a remote snapshotter during a pull; anything else is fetched whole
//! as plain content. Images converted before that used `application/vnd.damselfly.nydus.*`
//! ([`LEGACY_BLOB`], ...), which every reader still accepts.

/// A nydus data blob: independently zstd-compressed chunks (one zstd frame each) back to back,
/// addressed by the bootstrap's chunk table. Not a tar; as a whole it is still a valid zstd
/// stream (concatenated frames) that decompresses to the deduplicated chunks, hence `+zstd`.
pub const BLOB: &str = "application/vnd.oci.image.layer.damselfly.nydus.blob.v1+zstd";
/// A nydus bootstrap (`docs/format.md`).
pub const BOOTSTRAP: &str = "application/vnd.oci.image.layer.damselfly.nydus.bootstrap.v1";
/// A prefetch list ([`crate::prefetch`]): files to fetch in the background after a mount.
pub const PREFETCH: &str = "application/vnd.oci.image.layer.damselfly.nydus.prefetch.v1";
/// [`BLOB`] as images converted before it wrote it.
pub const LEGACY_BLOB: &str = "application/vnd.damselfly.nydus.blob.v1+zstd";
/// [`BOOTSTRAP`] as images converted before it wrote it.
pub const LEGACY_BOOTSTRAP: &str = "application/vnd.damselfly.nydus.bootstrap.v1";
/// [`PREFETCH`] as images converted before it wrote it.
pub const LEGACY_PREFETCH: &str = "application/vnd.damselfly.nydus.prefetch.v1";
/// Bootstrap annotation: the merkle root digest (`sha256:...`).
pub const ANN_ROOT: &str = "io.damselfly.nydus.root";
/// Bootstrap annotation: the chunk size in bytes.
pub const ANN_CHUNK_SIZE: &str = "io.damselfly.nydus.chunk-size";
/// Bootstrap annotation: the bootstrap format version.
pub const ANN_FORMAT: &str = "io.damselfly.nydus.format";
/// Manifest annotation: digest of the manifest the image was converted from.
pub const ANN_SOURCE: &str = "io.damselfly.nydus.source-manifest";

/// What a layer of a converted image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// A data blob.
    Blob,
    /// The bootstrap.
    Bootstrap,
    /// The prefetch list.
    Prefetch,
}

impl LayerKind {
    /// The kind of a layer of media type `media_type` (current or legacy spelling), `None`
    /// for anything that is not a nydus-fs layer.
    pub fn of(media_type: &str) -> Option<Self> {
        match media_type {
            BLOB | LEGACY_BLOB => Some(Self::Blob),
            BOOTSTRAP | LEGACY_BOOTSTRAP => Some(Self::Bootstrap),
            PREFETCH | LEGACY_PREFETCH => Some(Self::Prefetch),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_are_read_and_only_layer_types_are_written() {
        for (current, legacy, kind) in [
            (BLOB, LEGACY_BLOB, LayerKind::Blob),
            (BOOTSTRAP, LEGACY_BOOTSTRAP, LayerKind::Bootstrap),
            (PREFETCH, LEGACY_PREFETCH, LayerKind::Prefetch),
        ] {
            assert_eq!(LayerKind::of(current), Some(kind));
            assert_eq!(LayerKind::of(legacy), Some(kind));
            // containerd's images.IsLayerType accepts exactly this prefix.
            assert!(current.starts_with("application/vnd.oci.image.layer."));
        }
        assert_eq!(
            LayerKind::of("application/vnd.oci.image.layer.v1.tar+gzip"),
            None
        );
    }
}
