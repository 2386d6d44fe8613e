//! Recognising content-addressed URLs.

use damselfly_common::Digest;

/// The digest of an OCI blob URL (`…/v2/<name>/blobs/sha256:<hex>`), else `None`.
pub fn blob_digest(url: &str) -> Option<Digest> {
    let parsed = url::Url::parse(url).ok()?;
    let path = parsed.path();
    let (_, after_v2) = path.split_once("/v2/")?;
    let (name, digest) = after_v2.rsplit_once("/blobs/")?;
    if name.is_empty() {
        return None;
    }
    digest.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn recognises_blob_urls() {
        let url = format!("http://127.0.0.1:5000/v2/library/nginx/blobs/sha256:{HEX}");
        assert_eq!(blob_digest(&url).unwrap().hex(), HEX);
        let v6 = format!("http://[::1]:5000/v2/a/b/c/blobs/sha256:{HEX}?ns=docker.io");
        assert_eq!(blob_digest(&v6).unwrap().hex(), HEX);
    }

    #[test]
    fn other_urls_are_not_blobs() {
        for url in [
            format!("http://h/v2/library/nginx/manifests/sha256:{HEX}"),
            format!("http://h/v2//blobs/sha256:{HEX}"),
            "http://h/v2/a/blobs/sha256:short".to_owned(),
            "http://h/files/big.iso".to_owned(),
            "not a url".to_owned(),
        ] {
            assert!(blob_digest(&url).is_none(), "{url}");
        }
    }
}
