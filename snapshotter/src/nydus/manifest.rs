//! Telling a nydus-fs image from an ordinary one by its manifest (no I/O).
//!
//! A converted image's manifest has exactly one layer of media type
//! [`nydus_fs::media::BOOTSTRAP`] (or its legacy spelling); its other layers are the data blobs
//! and the optional prefetch list. Every one of its layers is provided by the one lazy mount of the image.

use damselfly_common::Digest;
use nydus_fs::media::LayerKind;
use serde::Deserialize;

/// Largest manifest parsed (the registry client refuses larger ones before this).
const MAX_LAYERS: usize = 4096;

/// What an image manifest says about how to provide its layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageKind {
    /// An ordinary image: containerd unpacks its layers.
    Ordinary,
    /// A nydus-fs image: every layer listed is provided by its lazy mount.
    Nydus {
        /// The digests of all its layers, in manifest order.
        layers: Vec<Digest>,
    },
}

/// Why a manifest cannot be classified.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not an image manifest's JSON.
    #[error("not an image manifest: {0}")]
    Json(#[from] serde_json::Error),
    /// More layers than any image needs.
    #[error("{count} layers, over the limit of {MAX_LAYERS}")]
    TooManyLayers {
        /// How many.
        count: usize,
    },
    /// More than one bootstrap: not a valid nydus-fs image.
    #[error(
        "{count} bootstrap layers ({}), a nydus-fs image has one",
        nydus_fs::media::BOOTSTRAP
    )]
    Bootstraps {
        /// How many.
        count: usize,
    },
    /// A layer digest that is not `sha256:<hex>`.
    #[error("layer digest {0:?} is not sha256:<64 lowercase hex>")]
    BadDigest(String),
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
struct Layer {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
}

/// Classifies the image manifest `bytes` (already verified against its digest).
///
/// # Errors
/// The bytes are not a manifest, or claim to be a nydus-fs image but are not a valid one.
pub fn classify(bytes: &[u8]) -> Result<ImageKind, ManifestError> {
    let manifest: Manifest = serde_json::from_slice(bytes)?;
    if manifest.layers.len() > MAX_LAYERS {
        return Err(ManifestError::TooManyLayers {
            count: manifest.layers.len(),
        });
    }
    let bootstraps = manifest
        .layers
        .iter()
        .filter(|layer| LayerKind::of(&layer.media_type) == Some(LayerKind::Bootstrap))
        .count();
    match bootstraps {
        0 => return Ok(ImageKind::Ordinary),
        1 => {}
        count => return Err(ManifestError::Bootstraps { count }),
    }
    let layers = manifest
        .layers
        .iter()
        .map(|layer| {
            layer
                .digest
                .parse::<Digest>()
                .map_err(|_| ManifestError::BadDigest(layer.digest.clone()))
        })
        .collect::<Result<_, _>>()?;
    Ok(ImageKind::Nydus { layers })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        format!("sha256:{}", hex_of(n))
    }

    fn hex_of(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn manifest(layers: &[(&str, String)]) -> Vec<u8> {
        let layers: Vec<_> = layers
            .iter()
            .map(|(media_type, digest)| {
                serde_json::json!({"mediaType": media_type, "digest": digest, "size": 1})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": digest(9), "size": 1},
            "layers": layers,
        }))
        .unwrap()
    }

    #[test]
    fn an_image_with_a_bootstrap_layer_is_nydus() {
        let bytes = manifest(&[
            (nydus_fs::media::BLOB, digest(1)),
            (nydus_fs::media::BLOB, digest(2)),
            (nydus_fs::media::BOOTSTRAP, digest(3)),
            (nydus_fs::media::PREFETCH, digest(4)),
        ]);
        let ImageKind::Nydus { layers } = classify(&bytes).unwrap() else {
            panic!("not nydus")
        };
        let layers: Vec<String> = layers.iter().map(ToString::to_string).collect();
        assert_eq!(layers, [digest(1), digest(2), digest(3), digest(4)]);
        // Images converted before the layer media types changed.
        let legacy = manifest(&[
            (nydus_fs::media::LEGACY_BLOB, digest(1)),
            (nydus_fs::media::LEGACY_BOOTSTRAP, digest(2)),
        ]);
        assert!(matches!(
            classify(&legacy).unwrap(),
            ImageKind::Nydus { .. }
        ));
    }

    #[test]
    fn an_ordinary_image_is_ordinary() {
        let gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
        let bytes = manifest(&[(gzip, digest(1)), (gzip, digest(2))]);
        assert_eq!(classify(&bytes).unwrap(), ImageKind::Ordinary);
        // An index (no layers) is not a nydus image either.
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(classify(index).unwrap(), ImageKind::Ordinary);
    }

    #[test]
    fn hostile_manifests_are_refused() {
        assert!(matches!(
            classify(b"{not json"),
            Err(ManifestError::Json(_))
        ));
        assert!(matches!(classify(b""), Err(ManifestError::Json(_))));
        let two = manifest(&[
            (nydus_fs::media::BOOTSTRAP, digest(1)),
            (nydus_fs::media::BOOTSTRAP, digest(2)),
        ]);
        assert!(matches!(
            classify(&two),
            Err(ManifestError::Bootstraps { count: 2 })
        ));
        let bad = manifest(&[(nydus_fs::media::BOOTSTRAP, "sha256:xyz".to_owned())]);
        assert!(matches!(classify(&bad), Err(ManifestError::BadDigest(_))));
        let many: Vec<_> = (0..=MAX_LAYERS)
            .map(|_| (nydus_fs::media::BLOB, digest(1)))
            .collect();
        assert!(matches!(
            classify(&manifest(&many)),
            Err(ManifestError::TooManyLayers { .. })
        ));
    }
}
