//! Reading registry answers: statuses to errors, bounded bodies, headers.

use std::ops::Range;

use damselfly_common::Digest;
use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderValue};

use super::RegistryError;
use crate::client::{error_chain, error_message};

pub(super) fn unreachable(url: &str, e: &reqwest::Error) -> RegistryError {
    RegistryError::Unreachable(format!("{url}: {}", error_chain(e)))
}

pub(super) fn range_outside(url: &str, range: &Range<u64>, len: usize) -> RegistryError {
    RegistryError::BadResponse(format!(
        "{url}: range {}..{} is outside the blob ({len} bytes)",
        range.start, range.end
    ))
}

/// The `Content-Length` header. (`reqwest::Response::content_length` is the body's size hint,
/// which is 0 for every HEAD answer.)
pub(super) fn content_length(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Maps non-2xx answers to errors with the registry's message.
pub(super) async fn check_status(
    resp: reqwest::Response,
    url: &str,
) -> Result<reqwest::Response, RegistryError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = read_body(resp, url, 64 << 10).await.unwrap_or_default();
    let message = error_message(status, &body);
    let url = url.to_owned();
    Err(match status {
        StatusCode::UNAUTHORIZED => RegistryError::Unauthorized { url, message },
        StatusCode::FORBIDDEN => RegistryError::Denied { url, message },
        StatusCode::NOT_FOUND => RegistryError::NotFound { url, message },
        _ => RegistryError::Status {
            url,
            status: status.as_u16(),
            message,
        },
    })
}

/// Reads a body of at most `max` bytes.
pub(super) async fn read_body(
    resp: reqwest::Response,
    url: &str,
    max: usize,
) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| unreachable(url, &e))?;
        if out.len() + chunk.len() > max {
            return Err(RegistryError::BadResponse(format!(
                "{url}: body is over {max} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A `Docker-Content-Digest` that is present must be the digest pushed.
pub(super) fn check_returned_digest(
    headers: &HeaderMap<HeaderValue>,
    digest: &Digest,
    url: &str,
) -> Result<(), RegistryError> {
    let Some(returned) = headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    if returned != digest.to_string() {
        return Err(RegistryError::BadResponse(format!(
            "{url}: the registry stored digest {returned}, pushed {digest}"
        )));
    }
    Ok(())
}

/// The `mediaType` field of a JSON manifest, if any.
pub(super) fn json_media_type(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
    }
    serde_json::from_slice::<Probe>(bytes).ok()?.media_type
}
