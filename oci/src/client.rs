//! [`Origin`]: streaming GET and credential-check HEAD against an origin.

use std::{
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::{
    StatusCode,
    header::{HeaderMap, HeaderName, HeaderValue},
};

use crate::{
    fetch::Fetch,
    guard::{AddressPolicy, ForbiddenAddress},
    retry::{FailureReason, OriginObserver, RetryPolicy},
};

/// Origin client settings.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Longest silence of a socket (waiting for an answer or reading a body): the backstop
    /// under `retry.stall_timeout`, which is what catches a stalled blob body.
    pub read_timeout: Duration,
    /// Redirects followed at most.
    pub max_redirects: usize,
    /// PEM files of extra certificate authorities to trust (each may hold several), on top
    /// of the built-in roots: for registries behind an internal CA.
    pub ca_files: Vec<PathBuf>,
    /// Retries, backoff and the stall watchdog of [`Origin::get`].
    pub retry: RetryPolicy,
    /// Told about every failed attempt of [`Origin::get`] (a daemon's metrics).
    pub observer: Option<Arc<dyn OriginObserver>>,
    /// Which addresses an origin may have ([`crate::guard`]): metadata and link-local
    /// never, loopback only if allowed. Checked for the URL, every resolved address and every
    /// redirect target.
    pub addresses: AddressPolicy,
    /// Only these request headers (case-insensitive) go to an origin; others are dropped
    /// (logged at debug). `None` (the default): every header the caller passes, for a
    /// caller that chose them itself; a daemon that fetches what others ask for sets a list.
    pub forward_headers: Option<Vec<String>>,
}

impl Default for OriginConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            max_redirects: 10,
            ca_files: Vec::new(),
            retry: RetryPolicy::default(),
            observer: None,
            addresses: AddressPolicy::default(),
            forward_headers: None,
        }
    }
}

/// Why an origin request failed.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// The origin answered with a non-2xx status.
    #[error("origin answered {status}: {message}")]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// The registry's error message, or the start of the body.
        message: String,
    },
    /// The origin could not be reached or closed before answering.
    #[error("origin unreachable: {0}")]
    Transport(String),
    /// The connection broke, or the body ended, before the whole blob arrived.
    #[error("origin connection broke after {at} bytes: {reason}")]
    Interrupted {
        /// Bytes of the blob received so far.
        at: u64,
        /// What happened.
        reason: String,
    },
    /// The origin sent nothing (not even its answer's headers) for the stall timeout.
    #[error("origin sent nothing for {0:?}")]
    Stalled(Duration),
    /// The origin trickled: fewer bytes than the minimum rate allows in a window.
    #[error("origin sent only {bytes} bytes in {window:?}, below the minimum rate")]
    Slow {
        /// Bytes received in the window.
        bytes: u64,
        /// The window (the stall timeout).
        window: Duration,
    },
    /// The origin sent more bytes than its `Content-Length`.
    #[error("origin sent more than the {length} bytes it announced")]
    TooLong {
        /// The announced length.
        length: u64,
    },
    /// A resumed request (`Range: bytes=<offset>-`) was answered with other content.
    #[error("origin answered the resume at byte {offset} with {answer}")]
    BadResume {
        /// Where the resume starts.
        offset: u64,
        /// What came back instead.
        answer: String,
    },
    /// Every allowed attempt failed; `last` is the last failure.
    #[error("{last} (gave up after {attempts} attempts)")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's failure.
        #[source]
        last: Box<Self>,
    },
    /// The answer lacks a usable `Content-Length`.
    #[error("origin sent no Content-Length; Damselfly needs the size up front to cut pieces")]
    NoLength,
    /// A header given by the user is not a valid HTTP header.
    #[error("invalid header {name:?}")]
    BadHeader {
        /// The header name.
        name: String,
    },
    /// The URL is not an http(s) URL.
    #[error("invalid origin URL {0:?}")]
    BadUrl(String),
    /// The origin (its URL, an address its name resolves to, or a redirect target) is an
    /// address the policy refuses ([`crate::guard`]); no request was sent to it.
    #[error("{0}")]
    Forbidden(#[from] ForbiddenAddress),
    /// A CA file could not be read or holds no usable certificate.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl OriginError {
    /// The last attempt's failure, looking through [`OriginError::GaveUp`].
    pub fn last(&self) -> &Self {
        match self {
            Self::GaveUp { last, .. } => last.last(),
            other => other,
        }
    }

    /// The origin's status, if it answered with a non-2xx one.
    pub fn status(&self) -> Option<StatusCode> {
        match self.last() {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Why the origin failed, for metrics; `None` for local errors (a bad URL, header or CA
    /// file), which no origin caused.
    pub fn reason(&self) -> Option<FailureReason> {
        Some(match self.last() {
            Self::Status { status, .. } => FailureReason::of_status(status.as_u16()),
            Self::Transport(_) => FailureReason::Unreachable,
            Self::Interrupted { .. } => FailureReason::Interrupted,
            Self::Stalled(_) => FailureReason::Stalled,
            Self::Slow { .. } => FailureReason::Slow,
            Self::NoLength | Self::TooLong { .. } | Self::BadResume { .. } => {
                FailureReason::BadResponse
            }
            Self::BadHeader { .. }
            | Self::BadUrl(_)
            | Self::Forbidden(_)
            | Self::CaFile { .. }
            | Self::GaveUp { .. } => {
                return None;
            }
        })
    }
}

/// The certificates in the PEM file at `path` (one or several).
///
/// # Errors
/// [`OriginError::CaFile`] if the file cannot be read, is not PEM, or holds no certificate.
pub fn load_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, OriginError> {
    let fail = |reason: String| OriginError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".to_owned()));
    }
    Ok(certs)
}

/// A stream of body chunks.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, OriginError>> + Send>>;

/// A successful GET: the size, and the body still to be read.
pub struct OriginResponse {
    /// Body length in bytes.
    pub content_length: u64,
    /// The body.
    pub body: BodyStream,
}

impl std::fmt::Debug for OriginResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginResponse")
            .field("content_length", &self.content_length)
            .finish_non_exhaustive()
    }
}

/// An HTTP client for origins (registries, file servers).
///
/// Cheap to clone; clones share the connection pool.
#[derive(Debug, Clone)]
pub struct Origin {
    pub(crate) client: reqwest::Client,
    pub(crate) retry: RetryPolicy,
    pub(crate) observer: Option<Arc<dyn OriginObserver>>,
    pub(crate) addresses: AddressPolicy,
    pub(crate) forward_headers: Option<Arc<[String]>>,
}

impl Origin {
    /// Builds the client.
    ///
    /// # Errors
    /// The TLS backend failed to initialise.
    pub fn new(config: &OriginConfig) -> Result<Self, OriginError> {
        // reqwest drops Authorization, Cookie and Proxy-Authorization when a redirect changes
        // host, port or scheme, which is exactly the rule registries' signed storage URLs need.
        let builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .user_agent(concat!("damselfly/", env!("CARGO_PKG_VERSION")));
        let mut builder = config.addresses.apply(builder, config.max_redirects);
        for path in &config.ca_files {
            for cert in load_ca_file(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| OriginError::Transport(e.to_string()))?;
        Ok(Self {
            client,
            retry: config.retry.clone(),
            observer: config.observer.clone(),
            addresses: config.addresses,
            forward_headers: config.forward_headers.as_deref().map(Arc::from),
        })
    }

    /// Starts a GET of `url` with `headers`, returning once the status and headers are in;
    /// the body is read as the stream is polled.
    ///
    /// The fetch survives a failing origin (see [`crate::retry`]): a 5xx, 429 or 408 answer,
    /// an unreachable origin, a body that breaks, stalls or trickles is retried up to
    /// `retry.retries` times after a jittered backoff (or the capped `Retry-After`), and a
    /// body already partly read is resumed with `Range: bytes=<bytes delivered>-`, so the
    /// stream carries on where it stopped and the caller never sees the seam. Its item is
    /// an error only when the fetch has given up; the stream ends after it.
    ///
    /// # Errors
    /// [`OriginError::Status`] for a non-2xx answer (with the registry's message),
    /// [`OriginError::NoLength`] without `Content-Length`, [`OriginError::Transport`] if the
    /// origin is unreachable; wrapped in [`OriginError::GaveUp`] when retries were made.
    pub async fn get(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<OriginResponse, OriginError> {
        let url = parse_url(url)?;
        self.addresses.check_url(&url)?;
        let headers = header_map(&self.forwarded(headers))?;
        let fetch = Fetch::start(self.clone(), url, headers, None).await?;
        let content_length = fetch.total();
        Ok(OriginResponse {
            content_length,
            body: fetch.into_stream(),
        })
    }

    /// Starts a GET of the `len` bytes of `url` from offset `start` (`len > 0`), with the
    /// same resilience as [`Origin::get`]: each attempt asks for the rest of the span with
    /// `Range`, and an origin that ignores `Range` has its whole body read and cut to the
    /// span. `content_length` of the answer is `len`.
    ///
    /// # Errors
    /// As [`Origin::get`]; [`OriginError::BadResume`] for an answer that is not the span.
    pub async fn get_range(
        &self,
        url: &str,
        headers: &[(String, String)],
        start: u64,
        len: u64,
    ) -> Result<OriginResponse, OriginError> {
        let url = parse_url(url)?;
        self.addresses.check_url(&url)?;
        let headers = header_map(&self.forwarded(headers))?;
        if len == 0 {
            return Ok(OriginResponse {
                content_length: 0,
                body: futures::stream::empty().boxed(),
            });
        }
        let window = crate::fetch::Window { start, len };
        let fetch = Fetch::start(self.clone(), url, headers, Some(window)).await?;
        Ok(OriginResponse {
            content_length: fetch.total(),
            body: fetch.into_stream(),
        })
    }

    /// Asks whether the origin would serve `url` to a requester sending `headers`, with a HEAD.
    ///
    /// Returns `Ok(())` on 2xx.
    ///
    /// # Errors
    /// [`OriginError::Status`] with the refusal (401/403/404…), or a transport error.
    pub async fn check_access(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<(), OriginError> {
        self.head(url, headers).await.map(drop)
    }

    /// A HEAD of `url` with `headers`, its answer 2xx.
    async fn head(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<reqwest::Response, OriginError> {
        let url = parse_url(url)?;
        self.addresses.check_url(&url)?;
        let resp = self
            .client
            .head(url)
            .headers(header_map(&self.forwarded(headers))?)
            .send()
            .await
            .map_err(transport)?;
        check_status(resp).await
    }

    /// Like [`Origin::check_access`], and returns the blob's length from the HEAD answer's
    /// `Content-Length` (for a caller that will read the blob in `Range` windows).
    ///
    /// # Errors
    /// As [`Origin::check_access`]; [`OriginError::NoLength`] when the answer has no valid
    /// `Content-Length`.
    pub async fn head_length(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<u64, OriginError> {
        let resp = self.head(url, headers).await?;
        // The header itself: a HEAD answer has no body for the client to size.
        resp.headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or(OriginError::NoLength)
    }
}

fn parse_url(url: &str) -> Result<reqwest::Url, OriginError> {
    let parsed = reqwest::Url::parse(url).map_err(|_| OriginError::BadUrl(url.to_owned()))?;
    match parsed.scheme() {
        "http" | "https" => Ok(parsed),
        _ => Err(OriginError::BadUrl(url.to_owned())),
    }
}

pub(crate) fn transport(e: reqwest::Error) -> OriginError {
    match crate::guard::forbidden_in(&e) {
        Some(f) => OriginError::Forbidden(f),
        None => OriginError::Transport(error_chain(&e)),
    }
}

/// An error and its causes, `"error: cause: cause"`: the chain says what failed
/// ("connection refused", "dns error"…), which the top-level message of an HTTP error omits.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

impl Origin {
    /// The headers of `headers` that may go to an origin (see
    /// [`OriginConfig::forward_headers`]).
    fn forwarded(&self, headers: &[(String, String)]) -> Vec<(String, String)> {
        let Some(allowed) = &self.forward_headers else {
            return headers.to_vec();
        };
        headers
            .iter()
            .filter(|(name, _)| {
                let keep = allowed.iter().any(|a| a.eq_ignore_ascii_case(name));
                if !keep {
                    tracing::debug!(header = %name, "header not forwarded to the origin");
                }
                keep
            })
            .cloned()
            .collect()
    }
}

fn header_map(headers: &[(String, String)]) -> Result<HeaderMap, OriginError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let bad = || OriginError::BadHeader { name: name.clone() };
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        let v = HeaderValue::from_str(value).map_err(|_| bad())?;
        map.append(n, v);
    }
    Ok(map)
}

pub(crate) async fn check_status(
    resp: reqwest::Response,
) -> Result<reqwest::Response, OriginError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    // Read at most 64 KiB of the error body for the message.
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= 64 << 10 {
            break;
        }
    }
    Err(OriginError::Status {
        status,
        message: error_message(status, &body),
    })
}

/// The registry's own explanation: the OCI error JSON's messages, else the start of the body,
/// else the status's reason phrase.
pub(crate) fn error_message(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct OciErrors {
        errors: Vec<OciError>,
    }
    #[derive(serde::Deserialize)]
    struct OciError {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(parsed) = serde_json::from_slice::<OciErrors>(body) {
        let joined: Vec<String> = parsed
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{} ({})", e.message, e.code),
                (true, false) => e.message.clone(),
                _ => e.code.clone(),
            })
            .collect();
        if !joined.is_empty() {
            return joined.join("; ");
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() || text.len() > 300 {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_error_json_is_summarised() {
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#;
        assert_eq!(
            error_message(StatusCode::UNAUTHORIZED, body),
            "authentication required (UNAUTHORIZED)"
        );
    }

    #[test]
    fn plain_or_empty_bodies_fall_back() {
        assert_eq!(
            error_message(StatusCode::NOT_FOUND, b"no such file\n"),
            "no such file"
        );
        assert_eq!(error_message(StatusCode::FORBIDDEN, b""), "Forbidden");
    }

    #[test]
    fn bad_headers_and_urls_are_refused() {
        assert!(matches!(
            header_map(&[("bad name".into(), "v".into())]),
            Err(OriginError::BadHeader { .. })
        ));
        assert!(matches!(
            parse_url("file:///etc/passwd"),
            Err(OriginError::BadUrl(_))
        ));
    }
}
