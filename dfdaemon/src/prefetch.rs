//! Layers of a manifest fetched ahead of the runtime (`p2p.prefetch_layers`).
//!
//! A runtime fetches an image's layers a few at a time (containerd: 3), so with the swarm a
//! layer's download starts only when an earlier one has finished on that node, and the
//! supernode's uplink idles between them while the nodes trade the earlier layers. When an
//! image manifest passes through the mirror, its layers start downloading into the node
//! cache at once; the runtime's blob GETs then join those downloads (or find the blob
//! cached). Only plain tar layers are fetched ahead: lazily read formats (nydus blobs and
//! bootstraps), non-distributable layers and unknown artifact types are left to their
//! readers.

use damselfly_common::Digest;
use serde::Deserialize;

/// Manifest media types whose layers are fetched ahead.
pub const IMAGE_MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Layer media types fetched ahead: whole-tar layers a runtime reads from first to last byte.
const TAR_LAYER_TYPES: [&str; 5] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

/// The largest manifest read (registries refuse larger ones: distribution caps at 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// At most this many layers of one manifest are fetched ahead.
pub const MAX_LAYERS: usize = 256;

#[derive(Deserialize)]
struct Manifest {
    #[serde(default, rename = "mediaType")]
    media_type: Option<String>,
    #[serde(default)]
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
struct Layer {
    #[serde(default, rename = "mediaType")]
    media_type: String,
    digest: String,
    #[serde(default)]
    urls: Vec<String>,
}

/// Whether a response's `Content-Type` names an image manifest (not an index, not an
/// artifact): the only kind whose layers are fetched ahead.
pub fn is_image_manifest(content_type: &str) -> bool {
    let base = content_type.split(';').next().unwrap_or_default().trim();
    IMAGE_MANIFEST_TYPES.contains(&base)
}

/// The tar layers of image manifest `body`, in order, without duplicates, at most
/// [`MAX_LAYERS`]. Anything that does not parse, or declares another media type in its
/// body, gives none: fetching ahead is an optimisation, never an error.
pub fn tar_layers(body: &[u8]) -> Vec<Digest> {
    let Ok(m) = serde_json::from_slice::<Manifest>(body) else {
        return Vec::new();
    };
    if m.media_type
        .as_deref()
        .is_some_and(|t| !is_image_manifest(t))
    {
        return Vec::new();
    }
    let mut out: Vec<Digest> = Vec::new();
    for layer in m.layers {
        // A layer with `urls` lives elsewhere (non-distributable): the runtime knows where.
        if !TAR_LAYER_TYPES.contains(&layer.media_type.as_str()) || !layer.urls.is_empty() {
            continue;
        }
        let Ok(d) = layer.digest.parse::<Digest>() else {
            continue;
        };
        if !out.contains(&d) {
            out.push(d);
        }
        if out.len() == MAX_LAYERS {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    #[test]
    fn tar_layers_are_listed_in_order_once_and_other_kinds_are_not() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(9), "size": 1},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(1), "size": 1},
                {"mediaType": "application/vnd.damselfly.nydus.blob.v1+zstd", "digest": digest(2), "size": 1},
                {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": digest(3), "size": 1},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(1), "size": 1},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(4), "size": 1,
                 "urls": ["https://example.com/layer"]},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": "md5:abc", "size": 1},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": digest(5), "size": 1}
            ]
        });
        let got = tar_layers(body.to_string().as_bytes());
        let want: Vec<Digest> = [1, 3, 5]
            .iter()
            .map(|&n| digest(n).parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn an_index_an_artifact_or_garbage_gives_nothing() {
        let index = serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"digest": digest(1)}],
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(1)}]
        });
        assert!(tar_layers(index.to_string().as_bytes()).is_empty());
        assert!(tar_layers(b"{\"layers\": 7}").is_empty());
        assert!(tar_layers(b"\xff\xfe").is_empty());
        assert!(tar_layers(b"").is_empty());
    }

    #[test]
    fn a_huge_layer_list_is_capped() {
        let layers: Vec<_> = (0..600u32)
            .map(|i| {
                let mut d = [0u8; 32];
                d[..4].copy_from_slice(&i.to_be_bytes());
                serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                   "digest": format!("sha256:{}", hex::encode(d))})
            })
            .collect();
        let body = serde_json::json!({ "layers": layers });
        assert_eq!(tar_layers(body.to_string().as_bytes()).len(), MAX_LAYERS);
    }

    #[test]
    fn content_types_are_matched_without_parameters() {
        assert!(is_image_manifest(
            "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"
        ));
        assert!(is_image_manifest(
            "application/vnd.oci.image.manifest.v1+json"
        ));
        assert!(!is_image_manifest(
            "application/vnd.oci.image.index.v1+json"
        ));
        assert!(!is_image_manifest("application/json"));
    }
}
