//! `POST /api/v1/preheat` on the mirror port: the supernode (running a Harbor preheat job)
//! asks this node to have a blob in its cache before any runtime pulls it. The blob takes
//! the same path as a blob GET (cache, running download, or a new P2P download), and the
//! answer comes once it is cached. This module holds the wire format and its validation.
//!
//! ```text
//! POST /api/v1/preheat
//! {"url": "https://harbor.local/v2/library/nginx/blobs/sha256:<hex>",
//!  "digest": "sha256:<hex>",                      (optional; must match the URL's)
//!  "headers": {"Authorization": "Bearer ..."}}    (optional; sent to the origin)
//!
//! 200 {"digest": "sha256:<hex>", "bytes": 1234, "source": "cache" | "download"}
//! 4xx/5xx {"error": "<reason>"}
//! ```
//! Fields the request does not define are ignored, so the supernode may send more.

use std::collections::BTreeMap;

use axum::http::{HeaderName, HeaderValue};
use damselfly_common::Digest;
use serde::{Deserialize, Serialize};

use crate::upstream::{self, BlobUrl, BlobUrlError};

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 1 << 20;

/// The request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreheatRequest {
    /// The blob's registry URL: `http(s)://host[:port]/v2/<name>/blobs/sha256:<hex>`.
    pub url: String,
    /// The blob digest; optional (the URL has it) but must agree with the URL when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Headers for the origin (e.g. `Authorization`), passed on as a blob GET passes the
    /// client's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
}

/// The answer once the blob is in this node's cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreheatResponse {
    /// The blob digest.
    pub digest: String,
    /// Blob size.
    pub bytes: u64,
    /// Whether the cache held it already or it was downloaded (or joined a download).
    pub source: PreheatSource,
}

/// Where a preheated blob came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreheatSource {
    /// The node cache held it when the request came.
    Cache,
    /// It was downloaded for this request or by a download already running.
    Download,
}

/// The body of every failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreheatError {
    /// The reason.
    pub error: String,
}

/// A valid preheat request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preheat {
    /// The blob and where to fetch it.
    pub blob: BlobUrl,
    /// Headers for the origin.
    pub headers: Vec<(String, String)>,
}

/// Why a preheat request is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPreheat {
    /// The body is not the JSON object described above.
    #[error("malformed request: {0}")]
    Json(String),
    /// The URL does not name a registry blob.
    #[error(transparent)]
    Url(#[from] BlobUrlError),
    /// `digest` is not `sha256:<64 hex>`.
    #[error("invalid digest {0:?}")]
    Digest(String),
    /// `digest` and the URL name different blobs.
    #[error("digest {given} does not match the URL's {url}")]
    DigestMismatch {
        /// The `digest` field.
        given: Digest,
        /// The URL's digest.
        url: Digest,
    },
    /// A header name or value that HTTP does not allow.
    #[error("invalid header {0:?}")]
    Header(String),
}

/// Parses and checks a request body.
///
/// # Errors
/// [`InvalidPreheat`] for anything but a well-formed request for one blob.
pub fn parse(body: &[u8]) -> Result<Preheat, InvalidPreheat> {
    let req: PreheatRequest =
        serde_json::from_slice(body).map_err(|e| InvalidPreheat::Json(e.to_string()))?;
    let blob = upstream::parse_blob_url(&req.url)?;
    if let Some(d) = &req.digest {
        let given: Digest = d.parse().map_err(|_| InvalidPreheat::Digest(d.clone()))?;
        if given != blob.digest {
            return Err(InvalidPreheat::DigestMismatch {
                given,
                url: blob.digest,
            });
        }
    }
    let mut headers = Vec::new();
    for (name, value) in req.headers.unwrap_or_default() {
        if HeaderName::from_bytes(name.as_bytes()).is_err()
            || HeaderValue::from_str(&value).is_err()
        {
            return Err(InvalidPreheat::Header(name));
        }
        headers.push((name, value));
    }
    Ok(Preheat { blob, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const E: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn url() -> String {
        format!("http://reg.local:5000/v2/p/app/blobs/{D}")
    }

    #[test]
    fn a_request_names_one_blob_and_its_origin_headers() {
        let body = format!(
            r#"{{"url":"{}","digest":"{D}","headers":{{"Authorization":"Basic YTpi"}},"scope":"all_peers"}}"#,
            url()
        );
        let p = parse(body.as_bytes()).unwrap();
        assert_eq!(p.blob.digest, D.parse().unwrap());
        assert_eq!(p.blob.repo, "p/app");
        assert_eq!(p.blob.url, url());
        assert_eq!(p.headers, [("Authorization".into(), "Basic YTpi".into())]);
        let bare = parse(format!(r#"{{"url":"{}","headers":null}}"#, url()).as_bytes()).unwrap();
        assert!(bare.headers.is_empty());
    }

    #[test]
    fn bad_requests_say_why() {
        let cases = [
            ("{".to_owned(), "malformed"),
            (r#"{"digest":"x"}"#.to_owned(), "malformed"),
            (
                r#"{"url":"http://r/v2/a/manifests/1"}"#.to_owned(),
                "not a registry blob",
            ),
            (
                format!(r#"{{"url":"{}","digest":"md5:1"}}"#, url()),
                "invalid digest",
            ),
            (
                format!(r#"{{"url":"{}","digest":"{E}"}}"#, url()),
                "does not match",
            ),
            (
                format!(r#"{{"url":"{}","headers":{{"a b":"c"}}}}"#, url()),
                "invalid header",
            ),
            (
                format!(r#"{{"url":"{}","headers":{{"x":"a\nb"}}}}"#, url()),
                "invalid header",
            ),
        ];
        for (body, want) in cases {
            let err = parse(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
    }

    #[test]
    fn answers_have_the_documented_shape() {
        let ok = PreheatResponse {
            digest: D.into(),
            bytes: 3,
            source: PreheatSource::Download,
        };
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            format!(r#"{{"digest":"{D}","bytes":3,"source":"download"}}"#)
        );
        let err = PreheatError { error: "no".into() };
        assert_eq!(serde_json::to_string(&err).unwrap(), r#"{"error":"no"}"#);
    }
}
