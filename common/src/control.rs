//! Control-plane credentials: every request to a supernode's control endpoints (and to a
//! dfdaemon's preheat endpoint) is signed with a key derived from the cluster secret, so
//! only members of the cluster can register, sync, seed, announce or preheat.
//!
//! ```text
//!   Authorization: Damselfly-HMAC-SHA256 ts=<Unix seconds>,sig=<hex>
//!   sig = HMAC-SHA256(K, "damselfly control v1" \n method \n path?query \n ts \n hex(sha256(body)))
//!   K   = HMAC-SHA256(cluster secret, "damselfly control plane v1")
//! ```
//!
//! A signature covers the method, the path with its query, the time and the body, so a
//! request seen on the wire cannot be altered, nor replayed once it is older than the
//! allowed clock skew (default 5 minutes). Within that window the same request can be
//! replayed as is; every control request is safe to repeat (docs/security.md). The key is
//! derived with its own label, so a leaked control signature says nothing about the piece
//! token key, and the cluster secret itself never travels.

use std::{fmt, sync::Arc, time::Duration};

use axum::{
    body::{Body, to_bytes},
    extract::Request,
    http::{HeaderValue, Response, StatusCode, header},
    middleware::Next,
};
use ring::{digest, hmac};

use crate::token::{SecretError, unix_now};

/// The `Authorization` scheme of a signed control request.
pub const SCHEME: &str = "Damselfly-HMAC-SHA256";

/// Domain label of the control key derived from the cluster secret.
const LABEL: &[u8] = b"damselfly control plane v1";

/// First line of every signed message (the format version).
const MESSAGE_VERSION: &str = "damselfly control v1";

/// Default tolerated difference between the signer's clock and the verifier's.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Why a control request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlAuthError {
    /// No `Authorization` header of the control scheme.
    #[error(
        "missing control-plane credential (Authorization: {SCHEME} ...; is cluster.secret_file set on the caller?)"
    )]
    Missing,
    /// The header is not `ts=<n>,sig=<64 hex>`.
    #[error("malformed control-plane credential")]
    Malformed,
    /// The timestamp is further from this host's clock than allowed.
    #[error("control-plane credential is {0} s off this host's clock (are the clocks in sync?)")]
    Skew(u64),
    /// The signature does not match: another secret, or an altered request.
    #[error("control-plane credential not valid for this request (another cluster secret?)")]
    Invalid,
    /// The body could not be read to check the signature: longer than the route allows, or
    /// cut off (answered 413, not 401).
    #[error("request body too large or unreadable (at most {0} bytes)")]
    Body(usize),
}

impl ControlAuthError {
    /// A short fixed label, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Skew(_) => "skew",
            Self::Invalid => "invalid",
            Self::Body(_) => "body",
        }
    }
}

/// The key that signs and checks control requests, derived from the cluster secret.
#[derive(Clone)]
pub struct ControlKey {
    key: hmac::Key,
}

impl fmt::Debug for ControlKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ControlKey(<redacted>)")
    }
}

impl ControlKey {
    /// The key for cluster secret `secret` (surrounding ASCII whitespace ignored, as for
    /// piece tokens).
    ///
    /// # Errors
    /// [`SecretError::TooShort`] below [`crate::token::MIN_SECRET_LEN`] bytes.
    pub fn new(secret: &[u8]) -> Result<Self, SecretError> {
        Ok(Self {
            key: crate::token::derive_key(secret, LABEL)?,
        })
    }

    /// The key for a `cluster.secret_file` setting: `None` when it is empty (control plane
    /// open).
    ///
    /// # Errors
    /// As [`crate::TokenKey::from_file`].
    pub fn from_setting(secret_file: &std::path::Path) -> Result<Option<Self>, SecretError> {
        if secret_file.as_os_str().is_empty() {
            return Ok(None);
        }
        let secret = crate::token::read_secret_file(secret_file)?;
        Self::new(&secret).map(Some)
    }

    fn message(method: &str, path_and_query: &str, ts: u64, body: &[u8]) -> Vec<u8> {
        let body_digest = digest::digest(&digest::SHA256, body);
        format!(
            "{MESSAGE_VERSION}\n{method}\n{path_and_query}\n{ts}\n{}",
            hex::encode(body_digest.as_ref())
        )
        .into_bytes()
    }

    /// The `Authorization` value for a request signed at `ts` (Unix seconds).
    pub fn sign_at(&self, method: &str, path_and_query: &str, body: &[u8], ts: u64) -> String {
        let sig = hmac::sign(&self.key, &Self::message(method, path_and_query, ts, body));
        format!("{SCHEME} ts={ts},sig={}", hex::encode(sig.as_ref()))
    }

    /// The `Authorization` value for a request sent now.
    pub fn sign(&self, method: &str, path_and_query: &str, body: &[u8]) -> String {
        self.sign_at(method, path_and_query, body, unix_now())
    }

    /// The `Authorization` value for a request to absolute `url` sent now: signed over the
    /// path and query the receiver sees. `None` if `url` does not parse.
    pub fn sign_url(&self, method: &str, url: &str, body: &[u8]) -> Option<String> {
        let uri: axum::http::Uri = url.parse().ok()?;
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        Some(self.sign(method, target, body))
    }

    /// Checks `authorization` (the header's value, if any) for a request at `now`.
    ///
    /// # Errors
    /// See [`ControlAuthError`].
    pub fn verify_at(
        &self,
        authorization: Option<&str>,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        now: u64,
        max_skew: Duration,
    ) -> Result<(), ControlAuthError> {
        let value = authorization
            .and_then(|v| v.strip_prefix(SCHEME))
            .and_then(|v| v.strip_prefix(' '))
            .ok_or(ControlAuthError::Missing)?;
        let (ts, sig) = parse(value).ok_or(ControlAuthError::Malformed)?;
        // The MAC first, so a timestamp someone altered is reported as the forgery it is.
        hmac::verify(
            &self.key,
            &Self::message(method, path_and_query, ts, body),
            &sig,
        )
        .map_err(|_| ControlAuthError::Invalid)?;
        let off = now.abs_diff(ts);
        if off > max_skew.as_secs() {
            return Err(ControlAuthError::Skew(off));
        }
        Ok(())
    }

    /// [`ControlKey::verify_at`] at the current time.
    ///
    /// # Errors
    /// See [`ControlAuthError`].
    pub fn verify(
        &self,
        authorization: Option<&str>,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        max_skew: Duration,
    ) -> Result<(), ControlAuthError> {
        self.verify_at(
            authorization,
            method,
            path_and_query,
            body,
            unix_now(),
            max_skew,
        )
    }
}

/// `ts=<u64>,sig=<64 hex>`, in that order, nothing else.
fn parse(value: &str) -> Option<(u64, Vec<u8>)> {
    let (ts, sig) = value.trim().split_once(',')?;
    let ts = ts.trim().strip_prefix("ts=")?;
    let sig = sig.trim().strip_prefix("sig=")?;
    if ts.is_empty() || ts.len() > 20 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if sig.len() != 64 {
        return None;
    }
    Some((ts.parse().ok()?, hex::decode(sig).ok()?))
}

/// What a verifying layer does with a refusal: the daemon's answer (its own body format)
/// and its metrics.
pub trait Refuse: Send + Sync + 'static {
    /// The answer, in the route's own format, to a request refused for `error` with
    /// `status`: 401 for a credential, 413 for [`ControlAuthError::Body`].
    fn answer(&self, error: &ControlAuthError, status: StatusCode) -> Response<Body>;

    /// A request refused for want of a valid credential (not for its body): count it.
    /// Default: nothing.
    fn refused(&self) {}

    /// A request let through without a valid signature because signatures are not enforced
    /// (a cluster being switched over): count it. Default: nothing.
    fn let_through(&self) {}
}

/// State of [`require_signature`]: the key (none: the control plane is open) and how
/// refusals are answered.
#[derive(Clone)]
pub struct Guard {
    /// The control key; `None` lets every request through.
    pub key: Option<ControlKey>,
    /// Tolerated clock difference.
    pub max_skew: Duration,
    /// Largest body read to check its signature; a longer one gets 413.
    pub max_body: usize,
    /// Refuse requests without a valid signature (the normal case). `false` checks and
    /// counts but lets them through, while the callers of a running cluster get the secret.
    pub enforce: bool,
    /// Answers refusals.
    pub refuse: Arc<dyn Refuse>,
}

/// An axum middleware (`axum::middleware::from_fn_with_state(guard, require_signature)`)
/// that lets a request through only with a valid control signature. The body is read (up
/// to [`Guard::max_body`]) to check it and handed on unchanged.
pub async fn require_signature(
    axum::extract::State(guard): axum::extract::State<Guard>,
    request: Request,
    next: Next,
) -> Response<Body> {
    let Some(key) = &guard.key else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, guard.max_body).await else {
        // In the route's own error format; not counted as a credential refusal.
        let status = StatusCode::PAYLOAD_TOO_LARGE;
        let mut r = guard
            .refuse
            .answer(&ControlAuthError::Body(guard.max_body), status);
        *r.status_mut() = status;
        return r;
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |p| p.as_str());
    let auth = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(e) = key.verify(auth, parts.method.as_str(), path, &bytes, guard.max_skew) {
        if !guard.enforce {
            tracing::debug!(path = %parts.uri.path(), reason = e.label(), "unsigned control request let through (signatures not enforced)");
            guard.refuse.let_through();
            return next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
        }
        tracing::warn!(path = %parts.uri.path(), reason = e.label(), error = %e, "control request refused");
        guard.refuse.refused();
        let mut r = guard.refuse.answer(&e, StatusCode::UNAUTHORIZED);
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(SCHEME));
        return r;
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const SKEW: Duration = DEFAULT_MAX_CLOCK_SKEW;

    fn key() -> ControlKey {
        ControlKey::new(SECRET).unwrap()
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_to_it_does_not() {
        let k = key();
        let auth = k.sign_at("POST", "/api/v1/sync", b"body", 1000);
        assert_eq!(
            k.verify_at(Some(&auth), "POST", "/api/v1/sync", b"body", 1000, SKEW),
            Ok(())
        );
        for (method, path, body) in [
            ("GET", "/api/v1/sync", &b"body"[..]),
            ("POST", "/api/v1/register", b"body"),
            ("POST", "/api/v1/sync?x=1", b"body"),
            ("POST", "/api/v1/sync", b"bodz"),
        ] {
            assert_eq!(
                k.verify_at(Some(&auth), method, path, body, 1000, SKEW),
                Err(ControlAuthError::Invalid),
                "{method} {path}"
            );
        }
        // An altered timestamp is a forgery, not a skew.
        let altered = auth.replace("ts=1000", "ts=1001");
        assert_eq!(
            k.verify_at(Some(&altered), "POST", "/api/v1/sync", b"body", 1000, SKEW),
            Err(ControlAuthError::Invalid)
        );
    }

    #[test]
    fn a_url_is_signed_over_the_path_and_query_its_receiver_sees() {
        let k = key();
        let auth = k
            .sign_url("POST", "http://10.0.0.1:8002/api/v1/seed?x=1", b"b")
            .unwrap();
        assert_eq!(
            k.verify(Some(&auth), "POST", "/api/v1/seed?x=1", b"b", SKEW),
            Ok(())
        );
        assert!(k.sign_url("POST", "not a url", b"").is_none());
    }

    #[test]
    fn another_secret_or_an_old_signature_is_refused() {
        let other = ControlKey::new(b"another secret of 32 bytes......").unwrap();
        let auth = other.sign_at("POST", "/p", b"", 1000);
        assert_eq!(
            key().verify_at(Some(&auth), "POST", "/p", b"", 1000, SKEW),
            Err(ControlAuthError::Invalid)
        );
        let auth = key().sign_at("POST", "/p", b"", 1000);
        assert_eq!(
            key().verify_at(Some(&auth), "POST", "/p", b"", 1301, SKEW),
            Err(ControlAuthError::Skew(301))
        );
        assert_eq!(
            key().verify_at(Some(&auth), "POST", "/p", b"", 700, SKEW),
            Ok(())
        );
    }

    #[test]
    fn malformed_or_missing_credentials_are_told_apart() {
        let k = key();
        let check = |v: Option<&str>| k.verify_at(v, "POST", "/p", b"", 1000, SKEW);
        assert_eq!(check(None), Err(ControlAuthError::Missing));
        assert_eq!(check(Some("Bearer abc")), Err(ControlAuthError::Missing));
        let zeros = "0".repeat(64);
        for bad in [
            format!("{SCHEME} "),
            format!("{SCHEME} ts=1000"),
            format!("{SCHEME} ts=,sig={zeros}"),
            format!("{SCHEME} ts=-1,sig={zeros}"),
            format!("{SCHEME} ts=99999999999999999999999,sig={zeros}"),
            format!("{SCHEME} ts=1000,sig=abc"),
            format!("{SCHEME} ts=1000,sig={}", "z".repeat(64)),
            format!("{SCHEME} sig={zeros},ts=1000"),
        ] {
            assert_eq!(check(Some(&bad)), Err(ControlAuthError::Malformed), "{bad}");
        }
        assert_eq!(
            check(Some(&format!("{SCHEME} ts=1000,sig={zeros}"))),
            Err(ControlAuthError::Invalid)
        );
    }

    #[test]
    fn a_short_secret_is_refused() {
        assert!(matches!(
            ControlKey::new(b"  short \n"),
            Err(SecretError::TooShort { len: 5 })
        ));
    }
}
