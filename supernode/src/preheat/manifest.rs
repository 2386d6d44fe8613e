//! Reading an image manifest (or an index) to find the blobs a preheat must fetch. Pure.

use damselfly_common::Digest;
use serde::Deserialize;

/// Media types asked for when fetching a manifest, most specific first.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// What a manifest document is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// An image: its config and layers, in order.
    Image(Vec<Digest>),
    /// An index: the manifest chosen for the platform.
    Index(Digest),
}

/// Why a manifest cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or not a manifest.
    #[error("not an image manifest or index: {0}")]
    Malformed(String),
    /// An index with no entry for the platform.
    #[error("the index has no manifest for {0}")]
    NoPlatform(String),
    /// A descriptor with an unsupported digest.
    #[error("unsupported digest {0:?} (only sha256)")]
    BadDigest(String),
}

#[derive(Deserialize)]
struct Doc {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType", default)]
    media_type: String,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: String,
}

/// Parses a manifest or index. `platform` is `os/arch[/variant]` (e.g. `linux/amd64`).
///
/// # Errors
/// [`ManifestError`] for anything that is not a schema 2 image manifest or index, or an index
/// without the platform.
pub fn parse(body: &[u8], platform: &str) -> Result<Parsed, ManifestError> {
    let doc: Doc =
        serde_json::from_slice(body).map_err(|e| ManifestError::Malformed(e.to_string()))?;
    if doc.schema_version != Some(2) {
        return Err(ManifestError::Malformed("schemaVersion is not 2".into()));
    }
    let digest = |d: &Descriptor| {
        d.digest
            .parse::<Digest>()
            .map_err(|_| ManifestError::BadDigest(d.digest.clone()))
    };
    if let Some(manifests) = doc.manifests.filter(|_| doc.config.is_none()) {
        let mut want = platform.split('/');
        let (os, arch, variant) = (
            want.next().unwrap_or_default(),
            want.next().unwrap_or_default(),
            want.next().unwrap_or_default(),
        );
        let chosen = manifests.iter().find(|m| {
            m.platform.as_ref().is_some_and(|p| {
                p.os == os && p.architecture == arch && (variant.is_empty() || p.variant == variant)
            })
        });
        return match chosen {
            Some(m) => Ok(Parsed::Index(digest(m)?)),
            None => Err(ManifestError::NoPlatform(platform.to_owned())),
        };
    }
    let (Some(config), Some(layers)) = (doc.config, doc.layers) else {
        return Err(ManifestError::Malformed(format!(
            "no config and layers (mediaType {:?})",
            doc.media_type
        )));
    };
    let mut blobs = vec![digest(&config)?];
    for l in &layers {
        let d = digest(l)?;
        if !blobs.contains(&d) {
            blobs.push(d);
        }
    }
    Ok(Parsed::Image(blobs))
}

/// Splits a manifest URL `<base>/v2/<repo>/manifests/<reference>` into base and repo.
pub fn split_manifest_url(url: &str) -> Option<(&str, &str)> {
    let (base, rest) = url.split_once("/v2/")?;
    let (repo, reference) = rest.rsplit_once("/manifests/")?;
    let valid_base = base.starts_with("http://") || base.starts_with("https://");
    (valid_base && !repo.is_empty() && !reference.is_empty() && !reference.contains('/'))
        .then_some((base, repo))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn an_image_lists_config_then_unique_layers() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
               "config":{{"digest":"{}"}},"layers":[{{"digest":"{}"}},{{"digest":"{}"}},{{"digest":"{}"}}]}}"#,
            d('a'),
            d('b'),
            d('c'),
            d('b')
        );
        let Parsed::Image(blobs) = parse(body.as_bytes(), "linux/amd64").unwrap() else {
            panic!("not an image");
        };
        let got: Vec<String> = blobs.iter().map(ToString::to_string).collect();
        assert_eq!(got, [d('a'), d('b'), d('c')]);
    }

    #[test]
    fn an_index_resolves_to_the_platform() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[
                {{"digest":"{}","platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
                {{"digest":"{}","platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            d('1'),
            d('2')
        );
        assert_eq!(
            parse(body.as_bytes(), "linux/amd64").unwrap(),
            Parsed::Index(d('2').parse().unwrap())
        );
        assert_eq!(
            parse(body.as_bytes(), "linux/arm64/v8").unwrap(),
            Parsed::Index(d('1').parse().unwrap())
        );
        assert!(matches!(
            parse(body.as_bytes(), "windows/amd64"),
            Err(ManifestError::NoPlatform(_))
        ));
    }

    #[test]
    fn garbage_is_refused() {
        for body in [
            &b"<html>"[..],
            b"{}",
            br#"{"schemaVersion":1}"#,
            br#"{"schemaVersion":2}"#,
        ] {
            assert!(parse(body, "linux/amd64").is_err());
        }
        let bad = br#"{"schemaVersion":2,"config":{"digest":"md5:00"},"layers":[]}"#;
        assert!(matches!(
            parse(bad, "linux/amd64"),
            Err(ManifestError::BadDigest(_))
        ));
    }

    #[test]
    fn manifest_urls() {
        assert_eq!(
            split_manifest_url("https://h:5000/v2/library/busybox/manifests/latest"),
            Some(("https://h:5000", "library/busybox"))
        );
        assert_eq!(split_manifest_url("https://h/v2/a/blobs/sha256:00"), None);
        assert_eq!(split_manifest_url("ftp://h/v2/a/manifests/1"), None);
    }
}
