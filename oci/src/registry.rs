//! [`RegistryClient`]: an OCI distribution client for tools that read and write images
//! (`nydus-fs convert`, `nydus-fs mount`): manifests, whole and ranged blob reads, pushes, and
//! the registry auth flows.
//!
//! ```text
//!  caller ── manifest / blob / blob_range / blob_exists ──▶ via mirror?  {via}/v2/<repo>/…?ns=<registry>
//!         │                                                 no mirror:   <scheme>://<registry>/v2/<repo>/…
//!         └─ push_blob_file / push_manifest ─────────────▶ always the registry itself
//!
//!  every request: cached credential for (registry, scope)? ─▶ send
//!     401 + WWW-Authenticate: Bearer realm,service,scope ─▶ GET realm (Basic user:pass if given)
//!                                                            token cached until expiry ─▶ resend once
//!     401 + WWW-Authenticate: Basic ─▶ resend once with the user's credentials
//! ```
//!
//! Every read is checked: a manifest fetched by digest must hash to it, a [`BlobStream`] ends
//! with an error instead of its last `None` unless the body had the announced length and the
//! blob's digest, and [`RegistryClient::blob_range`] returns exactly the bytes asked for or an
//! error. Redirects (registries send blob GETs to signed storage URLs) are followed, and reqwest
//! drops `Authorization` when a redirect changes host, port or scheme, so credentials never
//! leave the registry.
//!
//! Errors name the URL and carry the registry's own message from its OCI error JSON.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use damselfly_common::Digest;
use parking_lot::Mutex;
use reqwest::header;
use reqwest::{Method, RequestBuilder, StatusCode, Url, redirect};
use tokio::time::Instant;

use crate::client::{error_chain, error_message};

mod auth;
mod blob;
mod error;
mod reference;
mod response;
#[cfg(test)]
mod tests;

pub use auth::auth_file_credentials;
pub use blob::BlobStream;
pub use error::RegistryError;
pub use reference::Reference;

use auth::{Challenge, TokenResponse, covers, parse_challenge};
use blob::{content_range_matches, verified_stream};
use response::{
    check_returned_digest, check_status, content_length, json_media_type, range_outside, read_body,
    unreachable,
};

/// OCI image manifest.
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The `Accept` list [`RegistryClient::manifest`] sends when given none: every image manifest
/// and index type above.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    MT_OCI_MANIFEST,
    MT_OCI_INDEX,
    MT_DOCKER_MANIFEST,
    MT_DOCKER_LIST,
];

/// Largest manifest read (the distribution spec's recommended limit).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest blob [`RegistryClient::blob_range`] accepts as a `200` answer to its `Range` request
/// (the whole blob, which it then verifies against the digest and slices). Above this a server
/// that ignores `Range` is an error: lazy reads must not turn into whole-blob downloads.
pub const MAX_RANGE_FALLBACK_BYTES: u64 = 4 << 20;
/// Largest token-endpoint or error body read.
const MAX_SMALL_BODY: usize = 1 << 20;

/// Settings of a [`RegistryClient`].
#[derive(Clone)]
pub struct RegistryOptions {
    /// Talk `http://` to registries instead of `https://` (test and in-cluster registries).
    /// Token realms use whatever scheme the challenge names.
    pub plain_http: bool,
    /// User for Basic auth and for token requests. Used only after a registry asks (401).
    pub username: Option<String>,
    /// Password (or access token) of `username`.
    pub password: Option<String>,
    /// A registry mirror (dfdaemon, `http://127.0.0.1:65001`) for reads: manifest and blob
    /// GET/HEAD go to `{via}/v2/{repo}/…?ns={registry}` (containerd's mirror form). Pushes
    /// always go to the registry. Default: none.
    pub via: Option<String>,
    /// TCP/TLS connect timeout. Default 10 s.
    pub connect_timeout: Duration,
    /// Longest silence while waiting for or reading an answer. Default 60 s.
    pub read_timeout: Duration,
    /// Extra PEM CA certificates to trust (besides the system roots). Default: none.
    pub ca_file: Option<PathBuf>,
    /// Accept any TLS certificate. Off by default; for throw-away test registries only.
    pub insecure_skip_verify: bool,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            plain_http: false,
            username: None,
            password: None,
            via: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            ca_file: None,
            insecure_skip_verify: false,
        }
    }
}

impl fmt::Debug for RegistryOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryOptions")
            .field("plain_http", &self.plain_http)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("via", &self.via)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("ca_file", &self.ca_file)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish()
    }
}

/// A manifest as fetched.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The bytes exactly as served (their sha256 is `digest`).
    pub bytes: Vec<u8>,
    /// `Content-Type` of the answer (parameters stripped), or the JSON's `mediaType` if the
    /// registry sent none.
    pub media_type: String,
    /// sha256 of `bytes`.
    pub digest: Digest,
}

/// What a request needs permission for; the token scope follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Pull,
    Push,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Through the `via` mirror if there is one.
    Read,
    /// Straight to the registry.
    Direct,
}

/// A credential to attach.
#[derive(Clone)]
enum Credential {
    Bearer(String),
    Basic,
}

#[derive(Default)]
struct AuthCache {
    /// (registry, scope) → token and when to stop using it.
    tokens: HashMap<(String, String), (String, Instant)>,
    /// (registry, scope) → held while a token is fetched, so concurrent requests wait for one
    /// token instead of each fetching their own.
    fetching: HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>,
    /// Registries that asked for Basic credentials.
    basic: HashSet<String>,
}

/// An async OCI registry client. Cheap to clone: clones share the connection pool and the
/// token cache. See the module documentation for routing, auth and verification.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    opts: RegistryOptions,
    /// `opts.via` parsed, without a trailing `/`.
    via: Option<Url>,
    auth: Mutex<AuthCache>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// Builds a client.
    ///
    /// # Errors
    /// [`RegistryError::Config`]: `via` is not an http(s) URL, `ca_file` cannot be read or
    /// holds no PEM certificate, or the TLS backend fails to initialise.
    pub fn new(opts: RegistryOptions) -> Result<Self, RegistryError> {
        // reqwest drops Authorization, Cookie and Proxy-Authorization when a redirect changes
        // host, port or scheme: exactly the rule registries' signed storage URLs need. Do not
        // replace the redirect policy with a custom one that forgets this.
        let mut builder = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.read_timeout)
            .redirect(redirect::Policy::limited(10))
            .user_agent(concat!("damselfly/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &opts.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                RegistryError::Config(format!("reading CA file {}: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                RegistryError::Config(format!("CA file {}: {}", path.display(), error_chain(&e)))
            })?;
            if certs.is_empty() {
                return Err(RegistryError::Config(format!(
                    "CA file {} holds no PEM certificate",
                    path.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if opts.insecure_skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| RegistryError::Config(error_chain(&e)))?;
        let via = match &opts.via {
            Some(v) => {
                let url = Url::parse(v.trim_end_matches('/'))
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
                    .ok_or_else(|| {
                        RegistryError::Config(format!(
                            "via {v:?} is not an http(s) URL such as http://127.0.0.1:65001"
                        ))
                    })?;
                Some(url)
            }
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                opts,
                via,
                auth: Mutex::new(AuthCache::default()),
            }),
        })
    }

    /// The options this client was built with.
    pub fn options(&self) -> &RegistryOptions {
        &self.inner.opts
    }

    /// Fetches the manifest `r` names (by digest if it has one, else by tag, else `latest`),
    /// asking for the media types in `accept` ([`MANIFEST_MEDIA_TYPES`] if empty).
    ///
    /// # Errors
    /// [`RegistryError::DigestMismatch`] if `r` has a digest and the bytes do not hash to it
    /// (or the registry's `Docker-Content-Digest` disagrees with the bytes);
    /// [`RegistryError::BadResponse`] for a manifest over [`MAX_MANIFEST_BYTES`]; status and
    /// transport errors.
    pub async fn manifest(
        &self,
        r: &Reference,
        accept: &[&str],
    ) -> Result<FetchedManifest, RegistryError> {
        let accept = if accept.is_empty() {
            MANIFEST_MEDIA_TYPES
        } else {
            accept
        };
        let accept = accept.join(", ");
        let url = self.api_url(
            r,
            Route::Read,
            &format!("manifests/{}", r.manifest_reference()),
        );
        let resp = self
            .send(r, Access::Pull, &url, || {
                Ok(self
                    .inner
                    .http
                    .get(url.clone())
                    .header(header::ACCEPT, &accept))
            })
            .await?;
        let resp = check_status(resp, &url).await?;
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        if content_length(&resp).is_some_and(|l| l > MAX_MANIFEST_BYTES) {
            return Err(RegistryError::BadResponse(format!(
                "{url}: manifest is over {MAX_MANIFEST_BYTES} bytes"
            )));
        }
        let bytes = read_body(resp, &url, MAX_MANIFEST_BYTES as usize).await?;
        let digest = Digest::of(&bytes);
        for expected in [r.digest, header_digest].into_iter().flatten() {
            if expected != digest {
                return Err(RegistryError::DigestMismatch {
                    url,
                    expected,
                    actual: digest,
                });
            }
        }
        let media_type = match content_type {
            Some(ct) if !ct.is_empty() && ct != "application/octet-stream" => ct,
            _ => json_media_type(&bytes).unwrap_or_default(),
        };
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Starts downloading blob `digest` of `r`'s repository. The stream verifies length and
    /// digest at its end (see [`BlobStream`]).
    ///
    /// # Errors
    /// Status and transport errors; [`RegistryError::BadResponse`] without `Content-Length`.
    pub async fn blob(&self, r: &Reference, digest: &Digest) -> Result<BlobStream, RegistryError> {
        let url = self.api_url(r, Route::Read, &format!("blobs/{digest}"));
        let resp = self
            .send(r, Access::Pull, &url, || Ok(self.blob_get(&url)))
            .await?;
        let resp = check_status(resp, &url).await?;
        let size = content_length(&resp).ok_or_else(|| {
            RegistryError::BadResponse(format!("{url}: blob answer without Content-Length"))
        })?;
        Ok(verified_stream(resp, url, size, *digest))
    }

    /// Reads bytes `range` of blob `digest` with one `Range` request.
    ///
    /// The answer must be `206` with `Content-Range: bytes start-(end-1)/…` and exactly
    /// `range.end - range.start` bytes. A `200` (a server that ignores `Range`) is accepted
    /// only for a blob of at most [`MAX_RANGE_FALLBACK_BYTES`]: the whole blob is then read,
    /// checked against `digest`, and sliced. An empty range returns no bytes and sends nothing.
    /// The bytes of a `206` cannot be checked against the blob digest: callers verify them
    /// (nydus chunks carry their own sha256).
    ///
    /// # Errors
    /// [`RegistryError::BadResponse`] for a mismatched `Content-Range`, a wrong length, or a
    /// `200` for a larger blob; 416 and other statuses; transport errors.
    pub async fn blob_range(
        &self,
        r: &Reference,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<Bytes, RegistryError> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let url = self.api_url(r, Route::Read, &format!("blobs/{digest}"));
        let want = range.end - range.start;
        let range_header = format!("bytes={}-{}", range.start, range.end - 1);
        let resp = self
            .send(r, Access::Pull, &url, || {
                Ok(self.blob_get(&url).header(header::RANGE, &range_header))
            })
            .await?;
        let resp = check_status(resp, &url).await?;
        if resp.status() == StatusCode::OK {
            let len = content_length(&resp).unwrap_or(u64::MAX);
            if len > MAX_RANGE_FALLBACK_BYTES {
                return Err(RegistryError::BadResponse(format!(
                    "{url}: answered a Range request with 200 (the whole blob, {len} bytes); a \
                     registry or mirror must answer 206 for lazy reads"
                )));
            }
            let body = read_body(resp, &url, MAX_RANGE_FALLBACK_BYTES as usize).await?;
            let actual = Digest::of(&body);
            if actual != *digest {
                return Err(RegistryError::DigestMismatch {
                    url,
                    expected: *digest,
                    actual,
                });
            }
            let (Ok(start), Ok(end)) = (usize::try_from(range.start), usize::try_from(range.end))
            else {
                return Err(range_outside(&url, &range, body.len()));
            };
            return match body.get(start..end) {
                Some(slice) => Ok(Bytes::copy_from_slice(slice)),
                None => Err(range_outside(&url, &range, body.len())),
            };
        }
        if resp.status() != StatusCode::PARTIAL_CONTENT {
            return Err(RegistryError::BadResponse(format!(
                "{url}: answered a Range request with {}",
                resp.status()
            )));
        }
        let content_range = resp
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if !content_range_matches(&content_range, &range) {
            return Err(RegistryError::BadResponse(format!(
                "{url}: asked for {range_header}, got Content-Range {content_range:?}"
            )));
        }
        let body = read_body(resp, &url, want as usize).await?;
        if body.len() as u64 != want {
            return Err(RegistryError::BadResponse(format!(
                "{url}: asked for {want} bytes ({range_header}), got {}",
                body.len()
            )));
        }
        Ok(Bytes::from(body))
    }

    /// Whether blob `digest` exists in `r`'s repository (a HEAD, through `via` if set).
    ///
    /// # Errors
    /// Statuses other than 2xx and 404; transport errors.
    pub async fn blob_exists(&self, r: &Reference, digest: &Digest) -> Result<bool, RegistryError> {
        Ok(self
            .head_blob(r, digest, Route::Read, Access::Pull)
            .await?
            .is_some())
    }

    /// The length of blob `digest` (a HEAD, through `via` if set), `None` if it does not exist.
    ///
    /// # Errors
    /// As [`RegistryClient::blob_exists`]; a 2xx without `Content-Length` is
    /// [`RegistryError::BadResponse`].
    pub async fn blob_len(
        &self,
        r: &Reference,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        self.head_blob(r, digest, Route::Read, Access::Pull).await
    }

    /// Uploads the file at `path` as blob `digest` to `r`'s repository, unless the registry
    /// already has it: `HEAD`, then `POST /blobs/uploads/` and one `PUT …?digest=` whose body
    /// is streamed from the file (never held in memory). The registry checks the digest.
    ///
    /// # Errors
    /// [`RegistryError::Io`] if the file cannot be read; [`RegistryError::BadResponse`] if the
    /// registry sends no `Location` or stores another digest; status and transport errors (a
    /// wrong digest is the registry's `400 DIGEST_INVALID`).
    pub async fn push_blob_file(
        &self,
        r: &Reference,
        digest: &Digest,
        path: &Path,
    ) -> Result<(), RegistryError> {
        let io_err = |source| RegistryError::Io {
            path: path.to_owned(),
            source,
        };
        let size = tokio::fs::metadata(path).await.map_err(io_err)?.len();
        if self
            .head_blob(r, digest, Route::Direct, Access::Push)
            .await?
            .is_some()
        {
            tracing::debug!(%digest, reference = %r, "blob already in the registry");
            return Ok(());
        }
        let start = self.api_url(r, Route::Direct, "blobs/uploads/");
        let resp = self
            .send(r, Access::Push, &start, || {
                Ok(self
                    .inner
                    .http
                    .post(start.clone())
                    .header(header::CONTENT_LENGTH, 0))
            })
            .await?;
        let resp = check_status(resp, &start).await?;
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                RegistryError::BadResponse(format!(
                    "{start}: upload started ({}) without a Location",
                    resp.status()
                ))
            })?;
        let mut upload = Url::parse(&start)
            .and_then(|base| base.join(location))
            .map_err(|_| {
                RegistryError::BadResponse(format!("{start}: bad upload Location {location:?}"))
            })?;
        upload
            .query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let upload = upload.to_string();
        let resp = self
            .send(r, Access::Push, &upload, || {
                let file = std::fs::File::open(path).map_err(io_err)?;
                let stream = tokio_util::io::ReaderStream::with_capacity(
                    tokio::fs::File::from_std(file),
                    256 << 10,
                );
                Ok(self
                    .inner
                    .http
                    .put(upload.clone())
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .header(header::CONTENT_LENGTH, size)
                    .body(reqwest::Body::wrap_stream(stream)))
            })
            .await?;
        let resp = check_status(resp, &upload).await?;
        check_returned_digest(resp.headers(), digest, &upload)?;
        tracing::debug!(%digest, size, reference = %r, "blob pushed");
        Ok(())
    }

    /// Uploads a manifest to `r`'s tag (or, without a tag, to its digest, which must be the
    /// digest of `bytes`). Returns the digest of `bytes`.
    ///
    /// # Errors
    /// [`RegistryError::BadReference`] if `r` has neither tag nor digest, or a digest that is
    /// not that of `bytes`; status (e.g. `400 MANIFEST_BLOB_UNKNOWN` when a blob is missing)
    /// and transport errors.
    pub async fn push_manifest(
        &self,
        r: &Reference,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::of(bytes);
        if let Some(d) = r.digest
            && d != digest
        {
            return Err(RegistryError::BadReference(format!(
                "{r}: the manifest's digest is {digest}"
            )));
        }
        let target = match (&r.tag, &r.digest) {
            (Some(tag), _) => tag.clone(),
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                return Err(RegistryError::BadReference(format!(
                    "{r}: pushing a manifest needs a tag or a digest"
                )));
            }
        };
        let url = self.api_url(r, Route::Direct, &format!("manifests/{target}"));
        let body = Bytes::copy_from_slice(bytes);
        let resp = self
            .send(r, Access::Push, &url, || {
                Ok(self
                    .inner
                    .http
                    .put(url.clone())
                    .header(header::CONTENT_TYPE, media_type)
                    .body(body.clone()))
            })
            .await?;
        let resp = check_status(resp, &url).await?;
        check_returned_digest(resp.headers(), &digest, &url)?;
        Ok(digest)
    }

    fn blob_get(&self, url: &str) -> RequestBuilder {
        // Blobs are hashed as they arrive: a transparently decompressed body would not match.
        self.inner
            .http
            .get(url)
            .header(header::ACCEPT_ENCODING, "identity")
    }

    async fn head_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        route: Route,
        access: Access,
    ) -> Result<Option<u64>, RegistryError> {
        let url = self.api_url(r, route, &format!("blobs/{digest}"));
        let resp = self
            .send(r, access, &url, || {
                Ok(self.inner.http.request(Method::HEAD, url.clone()))
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = check_status(resp, &url).await?;
        content_length(&resp).map(Some).ok_or_else(|| {
            RegistryError::BadResponse(format!("{url}: HEAD answered without Content-Length"))
        })
    }

    /// `<scheme>://<host>` of `registry`.
    fn registry_base(&self, registry: &str) -> String {
        let scheme = if self.inner.opts.plain_http {
            "http"
        } else {
            "https"
        };
        // Docker Hub's API lives on another host than its name.
        let host = if registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            registry
        };
        format!("{scheme}://{host}")
    }

    /// The URL of `/v2/<repo>/<suffix>` for `r`, through the mirror for reads if one is set.
    fn api_url(&self, r: &Reference, route: Route, suffix: &str) -> String {
        match (&self.inner.via, route) {
            (Some(via), Route::Read) => {
                let mut url = via.clone();
                let base = via.path().trim_end_matches('/');
                url.set_path(&format!("{base}/v2/{}/{suffix}", r.repository));
                url.query_pairs_mut().append_pair("ns", &r.registry);
                url.to_string()
            }
            _ => format!(
                "{}/v2/{}/{suffix}",
                self.registry_base(&r.registry),
                r.repository
            ),
        }
    }

    /// Sends the request `build` makes, with the cached credential for `r`'s registry and
    /// `access`; answers one 401 by fetching a token or using Basic credentials, as the
    /// challenge asks, and sends once more. `build` is called once per attempt (so a streamed
    /// body can be reopened).
    async fn send(
        &self,
        r: &Reference,
        access: Access,
        url: &str,
        build: impl Fn() -> Result<RequestBuilder, RegistryError>,
    ) -> Result<reqwest::Response, RegistryError> {
        let scope = match access {
            Access::Pull => format!("repository:{}:pull", r.repository),
            Access::Push => format!("repository:{}:pull,push", r.repository),
        };
        let key = (r.registry.clone(), scope);
        let mut credential = self.cached_credential(&key);
        let mut answered = false;
        loop {
            let mut req = build()?;
            if let Some(c) = &credential {
                req = self.attach(req, c);
            }
            tracing::debug!(
                url,
                authenticated = credential.is_some(),
                "registry request"
            );
            let resp = req.send().await.map_err(|e| unreachable(url, &e))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenges: Vec<String> = resp
                .headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_owned))
                .collect();
            if answered {
                return Err(self.unauthorized(resp, url, credential.as_ref()).await);
            }
            answered = true;
            let mut parsed = Vec::new();
            for c in &challenges {
                match parse_challenge(c) {
                    Ok(Some(ch)) => parsed.push(ch),
                    Ok(None) => {}
                    Err(why) => {
                        return Err(RegistryError::BadResponse(format!("{url}: {why}")));
                    }
                }
            }
            let bearer = parsed
                .iter()
                .find(|c| matches!(c, Challenge::Bearer { .. }));
            credential = match bearer.or_else(|| parsed.first()) {
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope,
                }) => {
                    let gate = self
                        .inner
                        .auth
                        .lock()
                        .fetching
                        .entry(key.clone())
                        .or_default()
                        .clone();
                    let _fetching = gate.lock().await;
                    // Another request may have fetched a token while this one waited.
                    if let Some(Credential::Bearer(fresh)) = self.cached_credential(&key)
                        && !matches!(&credential, Some(Credential::Bearer(sent)) if *sent == fresh)
                    {
                        credential = Some(Credential::Bearer(fresh));
                        continue;
                    }
                    // Ask for what this client needs (a HEAD before a push is challenged
                    // for `pull` only, yet the token will serve the upload too), plus what
                    // the challenge names if that is something else.
                    let scope = match scope {
                        Some(asked) if !covers(&key.1, asked) => format!("{} {asked}", key.1),
                        _ => key.1.clone(),
                    };
                    let (token, lifetime) =
                        self.fetch_token(realm, service.as_deref(), &scope).await?;
                    self.inner
                        .auth
                        .lock()
                        .tokens
                        .insert(key.clone(), (token.clone(), Instant::now() + lifetime));
                    Some(Credential::Bearer(token))
                }
                Some(Challenge::Basic) if self.has_credentials() => {
                    self.inner.auth.lock().basic.insert(key.0.clone());
                    Some(Credential::Basic)
                }
                _ => return Err(self.unauthorized(resp, url, None).await),
            };
        }
    }

    fn cached_credential(&self, key: &(String, String)) -> Option<Credential> {
        let mut cache = self.inner.auth.lock();
        if let Some((token, until)) = cache.tokens.get(key) {
            if Instant::now() < *until {
                return Some(Credential::Bearer(token.clone()));
            }
            cache.tokens.remove(key);
        }
        (cache.basic.contains(&key.0) && self.has_credentials()).then_some(Credential::Basic)
    }

    fn has_credentials(&self) -> bool {
        self.inner.opts.username.is_some()
    }

    fn attach(&self, req: RequestBuilder, credential: &Credential) -> RequestBuilder {
        match credential {
            Credential::Bearer(token) => req.bearer_auth(token),
            Credential::Basic => match &self.inner.opts.username {
                Some(user) => req.basic_auth(user, self.inner.opts.password.as_deref()),
                None => req,
            },
        }
    }

    /// GETs a token from `realm` for `scope` (Basic credentials attached if configured).
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Duration), RegistryError> {
        let mut url = Url::parse(realm)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                RegistryError::BadResponse(format!("token realm {realm:?} is not an http(s) URL"))
            })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scope.split_ascii_whitespace() {
                q.append_pair("scope", s);
            }
        }
        let url = url.to_string();
        let mut req = self.inner.http.get(&url);
        if let Some(user) = &self.inner.opts.username {
            req = req.basic_auth(user, self.inner.opts.password.as_deref());
        }
        tracing::debug!(realm, scope, "fetching a registry token");
        let resp = req.send().await.map_err(|e| unreachable(realm, &e))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let mut err = self
                .unauthorized(resp, realm, Some(&Credential::Basic))
                .await;
            if let RegistryError::Unauthorized { message, .. } = &mut err {
                message.insert_str(0, "the token endpoint refused: ");
            }
            return Err(err);
        }
        let resp = check_status(resp, realm).await?;
        let body = read_body(resp, realm, MAX_SMALL_BODY).await?;
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            RegistryError::BadResponse(format!("{realm}: token answer is not JSON: {e}"))
        })?;
        parsed.into_token().ok_or_else(|| {
            RegistryError::BadResponse(format!(
                "{realm}: token answer has neither `token` nor `access_token`"
            ))
        })
    }

    /// The 401 error for `resp`, saying what was sent.
    async fn unauthorized(
        &self,
        resp: reqwest::Response,
        url: &str,
        sent: Option<&Credential>,
    ) -> RegistryError {
        let body = read_body(resp, url, 64 << 10).await.unwrap_or_default();
        let mut message = error_message(StatusCode::UNAUTHORIZED, &body);
        let user = self.inner.opts.username.as_deref();
        match (sent, user) {
            (_, None) => message.push_str(" (no credentials given)"),
            (Some(Credential::Bearer(_)), Some(u)) => {
                message.push_str(&format!(" (token obtained as user {u:?})"));
            }
            (_, Some(u)) => message.push_str(&format!(" (credentials of user {u:?} refused)")),
        }
        RegistryError::Unauthorized {
            url: url.to_owned(),
            message,
        }
    }
}
