//! Pass-through of registry requests: method, path, query, headers and body go upstream;
//! status, headers and body come back unchanged. Redirects are followed here, and reqwest
//! drops `Authorization` when a redirect leaves the registry's host.

use axum::{
    body::Body,
    http::{HeaderMap, HeaderName, Method, Response, StatusCode, header},
};
use futures::TryStreamExt;

use crate::upstream::REGISTRY_HEADER;

/// Request headers that are about this hop, not the request.
fn skip_request_header(name: &HeaderName) -> bool {
    is_hop_by_hop(name)
        || name == header::HOST
        || name == header::CONTENT_LENGTH
        || name.as_str() == REGISTRY_HEADER
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) are never forwarded.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Copies the end-to-end request headers.
pub fn forward_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(incoming.len());
    for (name, value) in incoming {
        if !skip_request_header(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Why the upstream could not be asked.
#[derive(Debug, thiserror::Error)]
#[error("upstream {url} unreachable: {reason}")]
pub struct Unreachable {
    /// The URL asked.
    pub url: String,
    /// The transport error chain.
    pub reason: String,
}

/// Sends the request upstream and returns its answer as it is.
///
/// # Errors
/// [`Unreachable`] when no answer came (connection refused, TLS, timeout).
pub async fn forward(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response<Body>, Unreachable> {
    let mut req = client
        .request(method.clone(), url)
        .headers(forward_headers(headers));
    if !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
        req = req.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    let resp = req.send().await.map_err(|e| Unreachable {
        url: url.to_owned(),
        reason: damselfly_oci::error_chain(&e),
    })?;
    Ok(into_response(resp))
}

/// Converts an upstream answer into ours: status, end-to-end headers, streamed body.
pub fn into_response(resp: reqwest::Response) -> Response<Body> {
    let mut out = Response::builder().status(resp.status());
    if let Some(h) = out.headers_mut() {
        for (name, value) in resp.headers() {
            if !is_hop_by_hop(name) {
                h.append(name.clone(), value.clone());
            }
        }
    }
    let body = Body::from_stream(resp.bytes_stream().map_err(std::io::Error::other));
    out.body(body).unwrap_or_else(|_| {
        oci_error(
            StatusCode::BAD_GATEWAY,
            "UNKNOWN",
            "malformed upstream answer",
        )
    })
}

/// An OCI distribution error answer: `{"errors":[{"code":..,"message":..}]}`.
pub fn oci_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": message }] });
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_headers_and_our_own_header_stay_here() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close".parse().unwrap());
        h.insert("host", "127.0.0.1:65001".parse().unwrap());
        h.insert("x-damselfly-registry", "docker.io".parse().unwrap());
        h.insert("authorization", "Bearer t".parse().unwrap());
        h.append("accept", "a/b".parse().unwrap());
        h.append("accept", "c/d".parse().unwrap());
        let out = forward_headers(&h);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out.get_all("accept").iter().count(), 2);
        assert!(out.contains_key("authorization"));
    }
}
