//! The labels containerd's CRI plugin puts on each layer's Prepare, read into a [`CriLayer`].
//!
//! With `disable_snapshot_annotations = false` (CRI's default in containerd 1.6), the CRI
//! plugin annotates every layer descriptor of the manifest it pulls, and containerd's unpacker
//! passes the annotations starting with `containerd.io/snapshot/` as labels of that layer's
//! Prepare, beside `containerd.io/snapshot.ref` (the chain id to commit the layer as):
//!
//! ```text
//! containerd.io/snapshot/cri.image-ref        registry.example.com/app:v1   (as pulled)
//! containerd.io/snapshot/cri.manifest-digest  sha256:…  (the platform's image manifest)
//! containerd.io/snapshot/cri.layer-digest     sha256:…  (this layer's blob)
//! containerd.io/snapshot/cri.image-layers     sha256:…,sha256:…  (this layer and those above
//!                                             it, cut to fit the label size limit; not used)
//! ```
//!
//! `ctr image pull` sends none of them (observed with containerd 1.6.20), so such a pull is
//! never provided remotely. No label carries registry credentials in containerd 1.6.

use std::collections::BTreeMap;

use damselfly_common::Digest;
use damselfly_oci::registry::{Reference, RegistryError};

/// The image reference the layer was pulled as.
pub const IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// The digest of the image manifest the layer belongs to.
pub const MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
/// The digest of the layer's blob.
pub const LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// The layer digests from this layer up (comma-separated, possibly truncated by containerd).
pub const IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";

/// A layer of an image pulled through CRI, as its labels name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriLayer {
    /// The image's repository, pinned to [`CriLayer::manifest`] (the tag, if any, dropped).
    pub image: Reference,
    /// The image manifest's digest.
    pub manifest: Digest,
    /// The layer blob's digest.
    pub layer: Digest,
}

/// Why a Prepare's CRI labels cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// Some CRI labels are set but not this one.
    #[error("label {label} is missing (the other containerd.io/snapshot/cri.* labels are set)")]
    Missing {
        /// The missing label.
        label: &'static str,
    },
    /// A digest label that is not `sha256:<64 lowercase hex>`.
    #[error("label {label} is {value:?}, not sha256:<64 lowercase hex>")]
    BadDigest {
        /// The label.
        label: &'static str,
        /// Its value.
        value: String,
    },
    /// An image reference the registry client cannot use.
    #[error("label {IMAGE_REF} is {value:?}: {source}")]
    BadReference {
        /// The label's value.
        value: String,
        /// Why.
        #[source]
        source: RegistryError,
    },
}

impl CriLayer {
    /// Reads the CRI labels of a Prepare: `Ok(None)` when none of image-ref, manifest-digest
    /// and layer-digest is set (not a CRI pull), the layer when all three are and parse.
    ///
    /// # Errors
    /// Some but not all of the three are set, or one does not parse.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Result<Option<Self>, LabelError> {
        let keys = [IMAGE_REF, MANIFEST_DIGEST, LAYER_DIGEST];
        if keys.iter().all(|key| !labels.contains_key(*key)) {
            return Ok(None);
        }
        let get = |label: &'static str| {
            labels
                .get(label)
                .map(String::as_str)
                .ok_or(LabelError::Missing { label })
        };
        let digest = |label: &'static str| {
            let value = get(label)?;
            value.parse::<Digest>().map_err(|_| LabelError::BadDigest {
                label,
                value: value.to_owned(),
            })
        };
        let manifest = digest(MANIFEST_DIGEST)?;
        let layer = digest(LAYER_DIGEST)?;
        let value = get(IMAGE_REF)?;
        let reference = value
            .parse::<Reference>()
            .map_err(|source| LabelError::BadReference {
                value: value.to_owned(),
                source,
            })?;
        Ok(Some(Self {
            image: reference.with_digest(manifest),
            manifest,
            layer,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str =
        "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const LAYER: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Exactly what containerd 1.6's CRI plugin sends for a layer (plus the unpacker's ref).
    fn cri(image: &str) -> BTreeMap<String, String> {
        labels(&[
            ("containerd.io/snapshot.ref", "sha256:33"),
            (IMAGE_REF, image),
            (MANIFEST_DIGEST, MANIFEST),
            (LAYER_DIGEST, LAYER),
            (IMAGE_LAYERS, &format!("{LAYER},{MANIFEST}")),
        ])
    }

    #[test]
    fn a_cri_layer_is_pinned_to_its_manifest() {
        let layer = CriLayer::from_labels(&cri("registry.example.com:5000/team/app:v1"))
            .unwrap()
            .unwrap();
        assert_eq!(layer.manifest.to_string(), MANIFEST);
        assert_eq!(layer.layer.to_string(), LAYER);
        assert_eq!(layer.image.registry, "registry.example.com:5000");
        assert_eq!(layer.image.repository, "team/app");
        assert_eq!(layer.image.manifest_reference(), MANIFEST);
        // Docker Hub names as CRI writes them.
        let hub = CriLayer::from_labels(&cri("docker.io/library/busybox:latest"))
            .unwrap()
            .unwrap();
        assert_eq!(hub.image.repository, "library/busybox");
    }

    #[test]
    fn no_cri_labels_is_not_a_cri_layer() {
        // `ctr image pull`: no labels at all; a container's Prepare: none of these.
        assert!(CriLayer::from_labels(&labels(&[])).unwrap().is_none());
        let unpack = labels(&[("containerd.io/snapshot.ref", "sha256:33")]);
        assert!(CriLayer::from_labels(&unpack).unwrap().is_none());
    }

    #[test]
    fn partial_or_malformed_cri_labels_are_refused() {
        let mut partial = cri("localhost:5000/app:v1");
        partial.remove(LAYER_DIGEST);
        assert!(matches!(
            CriLayer::from_labels(&partial),
            Err(LabelError::Missing {
                label: LAYER_DIGEST
            })
        ));
        let mut bad = cri("localhost:5000/app:v1");
        bad.insert(MANIFEST_DIGEST.into(), "sha256:XYZ".into());
        assert!(matches!(
            CriLayer::from_labels(&bad),
            Err(LabelError::BadDigest {
                label: MANIFEST_DIGEST,
                ..
            })
        ));
        // No registry host: refused rather than sent to Docker Hub.
        let err = CriLayer::from_labels(&cri("app:v1")).unwrap_err();
        assert!(matches!(err, LabelError::BadReference { .. }), "{err}");
    }
}
