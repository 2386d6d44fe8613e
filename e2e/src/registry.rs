//! A throw-away OCI registry: Debian's `docker-registry` (distribution 2.8) on loopback.
//!
//! Facts about distribution 2.8 this relies on (checked against 2.8.2+ds1):
//! * `http.addr` may use port 0; the real address is logged as `listening on 127.0.0.1:41234`
//!   (or `[::1]:41234`) on stderr, so no port race.
//! * With `log.accesslog.disabled: false`, every request is written *after it completes* to
//!   stdout in combined log format:
//!   `127.0.0.1 - - [22/Nov/2026:04:32:49 +0000] "GET /v2/foo/blobs/sha256:... HTTP/1.1" 200 5 "" "ua"`.
//!   Unauthorised (401) requests are logged there too; the user field stays `-`.
//!   (stderr also has logrus `response completed ... http.request.method=GET http.request.uri=...`
//!   lines, but not for 401s, so only the access log is parsed.)
//! * htpasswd (bcrypt) Basic auth works over plain HTTP; no TLS needed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail, ensure};

use crate::daemon::Daemon;
use crate::http::{self, Request};
use crate::util::{ipv6_loopback_available, sha256_digest, wait_until};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_SYNC_TIMEOUT: Duration = Duration::from_secs(10);

pub const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Builder for [`TestRegistry`].
#[derive(Debug, Default, Clone)]
#[must_use]
pub struct TestRegistryBuilder {
    htpasswd: Option<(String, String)>,
    token_auth: bool,
    token_credentials: Option<(String, String)>,
    ipv6: bool,
    tls: bool,
}

impl TestRegistryBuilder {
    /// Require HTTP Basic auth with this single user (bcrypt htpasswd file, plain HTTP).
    pub fn htpasswd(mut self, user: &str, pass: &str) -> Self {
        self.htpasswd = Some((user.to_owned(), pass.to_owned()));
        self
    }

    /// Require registry tokens (Docker's token spec) signed by a key the test holds; see
    /// [`TestRegistry::token`]. The harness's own requests carry suitable tokens.
    pub fn token_auth(mut self) -> Self {
        self.token_auth = true;
        self
    }

    /// [`token_auth`](Self::token_auth), with a token endpoint ([`crate::TokenServer`], the
    /// registry's realm) that hands out tokens only to requests carrying these Basic
    /// credentials. Without this, the endpoint serves anyone.
    pub fn token_credentials(mut self, user: &str, pass: &str) -> Self {
        self.token_auth = true;
        self.token_credentials = Some((user.to_owned(), pass.to_owned()));
        self
    }

    /// Serve HTTPS with a certificate from a fresh private CA ([`TestRegistry::ca`]): only
    /// clients given that CA can reach it. The harness's own requests trust it.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Listen on `[::1]` instead of `127.0.0.1`. Check [`ipv6_loopback_available`] first.
    pub fn ipv6(mut self, ipv6: bool) -> Self {
        self.ipv6 = ipv6;
        self
    }

    /// Starts the registry and waits until `GET /v2/` answers. Panics on failure.
    pub fn start(self) -> TestRegistry {
        self.try_start()
            .unwrap_or_else(|error| panic!("cannot start docker-registry: {error:#}"))
    }

    pub fn try_start(self) -> Result<TestRegistry> {
        let program =
            std::env::var_os("DAMSELFLY_REGISTRY_BIN").unwrap_or_else(|| "docker-registry".into());
        let builder = Daemon::builder(&program).name("registry");
        let dir = builder.dir().to_owned();
        let ip: IpAddr = if self.ipv6 {
            ensure!(
                ipv6_loopback_available(),
                "IPv6 registry requested but [::1] is not bindable on this machine"
            );
            Ipv6Addr::LOCALHOST.into()
        } else {
            Ipv4Addr::LOCALHOST.into()
        };
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage)?;

        let auth = match &self.htpasswd {
            Some((user, pass)) => {
                let path = dir.join("htpasswd");
                std::fs::write(&path, htpasswd_line(user, pass)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                format!(
                    "auth:\n  htpasswd:\n    realm: damselfly-e2e\n    path: {}\n",
                    yaml_str(&path.display().to_string())
                )
            }
            None => String::new(),
        };
        let issuer = if self.token_auth {
            let issuer = std::sync::Arc::new(crate::token::TokenIssuer::new()?);
            let bundle = dir.join("token-ca.pem");
            std::fs::write(&bundle, issuer.cert_pem())?;
            let server =
                crate::token::TokenServer::start(issuer.clone(), self.token_credentials.clone())
                    .context("starting the token server")?;
            Some((issuer, bundle, server))
        } else {
            None
        };
        let auth = match &issuer {
            Some((_, bundle, server)) => format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    \
                 issuer: {}\n    rootcertbundle: {}\n",
                yaml_str(&server.url()),
                crate::token::TOKEN_SERVICE,
                crate::token::TOKEN_ISSUER,
                yaml_str(&bundle.display().to_string())
            ),
            None => auth,
        };
        let ca = if self.tls {
            let names = ["localhost", "127.0.0.1", "::1"];
            Some(crate::TestCa::issue(&dir, &names).context("issuing the registry's certificate")?)
        } else {
            None
        };
        let tls = match &ca {
            Some(ca) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                yaml_str(&ca.cert_path.display().to_string()),
                yaml_str(&ca.key_path.display().to_string())
            ),
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {addr}\n  secret: damselfly-e2e-secret\n{tls}\
             {auth}",
            storage = yaml_str(&storage.display().to_string()),
            addr = yaml_str(&SocketAddr::new(ip, 0).to_string()),
        );
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, &config)?;

        let mut daemon = std::env::vars_os()
            .filter(|(key, _)| key.to_string_lossy().starts_with("REGISTRY_"))
            .fold(builder, |builder, (key, _)| builder.env_remove(key))
            .arg("serve")
            .arg(&config_path)
            .spawn()
            .context("is `docker-registry` installed? run scripts/setup.sh")?;
        let addr = daemon.wait_for_listen_addr("listening on ", STARTUP_TIMEOUT)?;
        let ca_pem = ca.as_ref().map(crate::TestCa::ca_pem).transpose()?;
        let url = if ca.is_some() {
            format!("https://{addr}")
        } else {
            format!("http://{addr}")
        };
        let ping = format!("{url}/v2/");
        wait_until(STARTUP_TIMEOUT, || {
            Request::get(&ping)
                .ca_pem(ca_pem.clone())
                .timeout(Duration::from_secs(2))
                .send()
                .is_ok_and(|r| r.status == 200 || r.status == 401)
        })
        .then_some(())
        .with_context(|| format!("{ping} did not answer: {}", daemon.log_excerpt()))?;
        Ok(TestRegistry {
            daemon,
            addr,
            url,
            credentials: self.htpasswd,
            token_server: issuer.as_ref().map(|(_, _, server)| server.url()),
            issuer: issuer.map(|(i, _, server)| (i, server)),
            config_path,
            storage,
            sync_counter: AtomicU64::new(0),
            ca,
            ca_pem,
        })
    }
}

/// A running `docker-registry`; killed on drop.
#[derive(Debug)]
pub struct TestRegistry {
    daemon: Daemon,
    addr: SocketAddr,
    url: String,
    credentials: Option<(String, String)>,
    issuer: Option<(
        std::sync::Arc<crate::token::TokenIssuer>,
        crate::token::TokenServer,
    )>,
    token_server: Option<String>,
    config_path: PathBuf,
    storage: PathBuf,
    sync_counter: AtomicU64,
    ca: Option<crate::TestCa>,
    ca_pem: Option<Vec<u8>>,
}

/// One line of the registry's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogEntry {
    pub method: String,
    /// Request URI as sent (path and query).
    pub uri: String,
    /// Path part of `uri`.
    pub path: String,
    pub status: u16,
    /// Response body bytes written (0 when logged as `-`).
    pub bytes: u64,
}

impl AccessLogEntry {
    /// Whether this is a request for blob `digest` (any repository).
    pub fn is_blob(&self, digest: &str) -> bool {
        self.path.starts_with("/v2/")
            && self
                .path
                .strip_suffix(digest)
                .is_some_and(|p| p.ends_with("/blobs/"))
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Parses a combined-log-format line; `None` for any other line.
    pub fn parse(line: &str) -> Option<Self> {
        let (_, rest) = line.split_once("] \"")?;
        let (request, rest) = rest.split_once('"')?;
        let mut parts = request.split(' ');
        let method = parts.next()?;
        let uri = parts.next()?;
        let protocol = parts.next()?;
        if !protocol.starts_with("HTTP/") || parts.next().is_some() {
            return None;
        }
        let mut fields = rest.split_whitespace();
        let status = fields.next()?.parse().ok()?;
        let bytes = fields.next()?.parse().unwrap_or(0);
        let path = uri.split_once('?').map_or(uri, |(path, _)| path);
        Some(Self {
            method: method.to_owned(),
            uri: uri.to_owned(),
            path: path.to_owned(),
            status,
            bytes,
        })
    }
}

/// What [`TestRegistry::push_image`] pushed.
#[derive(Debug, Clone)]
pub struct PushedImage {
    pub manifest_digest: String,
    pub manifest: Vec<u8>,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
}

impl TestRegistry {
    pub fn builder() -> TestRegistryBuilder {
        TestRegistryBuilder::default()
    }

    /// Plain registry on `127.0.0.1`, no auth.
    pub fn start() -> Self {
        Self::builder().start()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The private CA of a [`TestRegistryBuilder::tls`] registry.
    pub fn ca(&self) -> Option<&crate::TestCa> {
        self.ca.as_ref()
    }

    /// `http://127.0.0.1:PORT` or `http://[::1]:PORT`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// `host:port` as used in image references (`[::1]:PORT` for IPv6).
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The htpasswd user and password, if auth is enabled.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(user, pass)| (user.as_str(), pass.as_str()))
    }

    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    pub fn storage_dir(&self) -> &std::path::Path {
        &self.storage
    }

    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    pub fn daemon_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }

    /// `{url}/v2/{repo}/blobs/{digest}`.
    pub fn blob_url(&self, repo: &str, digest: &str) -> String {
        format!("{}/v2/{repo}/blobs/{digest}", self.url)
    }

    /// `{url}/v2/{repo}/manifests/{reference}`.
    pub fn manifest_url(&self, repo: &str, reference: &str) -> String {
        format!("{}/v2/{repo}/manifests/{reference}", self.url)
    }

    /// stdout (access log) followed by stderr (logrus).
    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }

    /// A request with the registry's credentials (if any) attached.
    pub fn request(&self, method: http::Method, url: &str) -> Request {
        let req = Request::new(method, url)
            .basic_auth_opt(self.credentials())
            .ca_pem(self.ca_pem.clone());
        match &self.issuer {
            Some(_) => {
                let path = url.strip_prefix(&self.url).unwrap_or(url);
                let repo = crate::token::repo_of(path).unwrap_or_default();
                req.header(
                    "authorization",
                    format!("Bearer {}", self.token(repo, &["pull", "push"])),
                )
            }
            None => req,
        }
    }

    /// With [`TestRegistryBuilder::token_auth`]: a token for `actions` on `repo`, valid for
    /// ten minutes. Panics without token auth.
    pub fn token(&self, repo: &str, actions: &[&str]) -> String {
        let (issuer, _) = self
            .issuer
            .as_ref()
            .expect("token() needs a registry started with token_auth()");
        issuer
            .token(repo, actions, Duration::from_secs(600))
            .unwrap_or_else(|e| panic!("cannot mint a registry token: {e:#}"))
    }

    /// With token auth: the token endpoint's URL (the registry's realm).
    pub fn token_server_url(&self) -> Option<&str> {
        self.token_server.as_deref()
    }

    /// With token auth: every request the token endpoint answered so far.
    pub fn token_requests(&self) -> Vec<crate::token::TokenRequest> {
        self.issuer
            .as_ref()
            .map(|(_, server)| server.requests())
            .unwrap_or_default()
    }

    /// Monolithic upload of `data` to `repo`; returns its digest `sha256:<hex>`. Panics on failure.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        self.try_push_blob(repo, data)
            .unwrap_or_else(|error| panic!("push_blob to {repo} failed: {error:#}"))
    }

    pub fn try_push_blob(&self, repo: &str, data: &[u8]) -> Result<String> {
        let digest = sha256_digest(data);
        let start_url = format!("{}/v2/{repo}/blobs/uploads/", self.url);
        let response = self.request(http::Method::POST, &start_url).send()?;
        ensure!(
            response.status == 202,
            "POST {start_url}: status {}: {}",
            response.status,
            response.text()
        );
        let location = response
            .header("location")
            .context("upload POST answered without Location")?;
        let mut upload_url = reqwest::Url::parse(&start_url)?
            .join(location)
            .with_context(|| format!("bad Location {location:?}"))?;
        upload_url.query_pairs_mut().append_pair("digest", &digest);
        let response = self
            .request(http::Method::PUT, upload_url.as_str())
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()?;
        ensure!(
            response.status == 201,
            "PUT {upload_url}: status {}: {}",
            response.status,
            response.text()
        );
        if let Some(returned) = response.header("docker-content-digest") {
            ensure!(
                returned == digest,
                "registry stored digest {returned}, expected {digest}"
            );
        }
        Ok(digest)
    }

    /// Pushes the config and layer blobs and an OCI image manifest tagged `tag`.
    pub fn push_image(
        &self,
        repo: &str,
        tag: &str,
        config: &[u8],
        layers: &[&[u8]],
    ) -> PushedImage {
        self.try_push_image(repo, tag, config, layers)
            .unwrap_or_else(|error| panic!("push_image {repo}:{tag} failed: {error:#}"))
    }

    /// PUTs an OCI image manifest as `repo:tag`.
    ///
    /// # Errors
    /// The registry did not answer 201.
    pub fn put_manifest(&self, repo: &str, tag: &str, manifest: &[u8]) -> Result<()> {
        let url = self.manifest_url(repo, tag);
        let response = self
            .request(http::Method::PUT, &url)
            .header("content-type", OCI_MANIFEST_MEDIA_TYPE)
            .body(manifest.to_vec())
            .send()?;
        ensure!(
            response.status == 201,
            "PUT {url}: status {}: {}",
            response.status,
            response.text()
        );
        Ok(())
    }

    /// GETs the OCI image manifest `repo:tag` as JSON.
    ///
    /// # Errors
    /// The registry did not answer 200 with JSON.
    pub fn manifest_json(&self, repo: &str, tag: &str) -> Result<serde_json::Value> {
        let url = self.manifest_url(repo, tag);
        let response = self
            .request(http::Method::GET, &url)
            .header("accept", OCI_MANIFEST_MEDIA_TYPE)
            .send()?;
        ensure!(
            response.status == 200,
            "GET {url}: status {}: {}",
            response.status,
            response.text()
        );
        Ok(serde_json::from_slice(&response.body)?)
    }

    pub fn try_push_image(
        &self,
        repo: &str,
        tag: &str,
        config: &[u8],
        layers: &[&[u8]],
    ) -> Result<PushedImage> {
        let config_digest = self.try_push_blob(repo, config)?;
        let mut layer_digests = Vec::with_capacity(layers.len());
        for layer in layers {
            layer_digests.push(self.try_push_blob(repo, layer)?);
        }
        let manifest = image_manifest(config, layers)?;
        self.put_manifest(repo, tag, &manifest)?;
        Ok(PushedImage {
            manifest_digest: sha256_digest(&manifest),
            manifest,
            config_digest,
            layer_digests,
        })
    }

    /// Deletes blob `digest` from `repo` (the registry has deletes enabled). Panics on failure.
    pub fn delete_blob(&self, repo: &str, digest: &str) {
        let url = self.blob_url(repo, digest);
        let response = self
            .request(http::Method::DELETE, &url)
            .send()
            .unwrap_or_else(|error| panic!("{error:#}"));
        assert_eq!(response.status, 202, "DELETE {url}: {}", response.text());
    }

    /// All access-log entries so far. Makes sure every request whose response the caller has
    /// already received is in the log first (see [`TestRegistry::sync_log`]).
    pub fn access_log(&self) -> Vec<AccessLogEntry> {
        self.sync_log();
        self.access_log_unsynced()
    }

    /// Access-log entries as currently written, without syncing.
    pub fn access_log_unsynced(&self) -> Vec<AccessLogEntry> {
        self.daemon
            .stdout_text()
            .lines()
            .filter_map(AccessLogEntry::parse)
            .collect()
    }

    /// Number of GETs of blob `digest` (any repository) that the registry served (2xx, including
    /// 206 range responses). 401/404/... answers are not counted.
    pub fn blob_get_count(&self, digest: &str) -> usize {
        self.count(|entry| entry.method == "GET" && entry.is_success() && entry.is_blob(digest))
    }

    /// Number of successful HEADs of blob `digest`.
    pub fn blob_head_count(&self, digest: &str) -> usize {
        self.count(|entry| entry.method == "HEAD" && entry.is_success() && entry.is_blob(digest))
    }

    /// Number of GET requests for blob `digest` with any status (including 401 and 404).
    pub fn blob_get_attempts(&self, digest: &str) -> usize {
        self.count(|entry| entry.method == "GET" && entry.is_blob(digest))
    }

    /// Body bytes the registry sent for successful GETs of blob `digest`.
    pub fn blob_bytes_served(&self, digest: &str) -> u64 {
        self.access_log()
            .iter()
            .filter(|entry| entry.method == "GET" && entry.is_success() && entry.is_blob(digest))
            .map(|entry| entry.bytes)
            .sum()
    }

    fn count(&self, predicate: impl Fn(&AccessLogEntry) -> bool) -> usize {
        self.access_log()
            .iter()
            .filter(|entry| predicate(entry))
            .count()
    }

    /// The access log is written after each response completes, so a client can have the whole
    /// body before the line appears. This sends a marker request and waits until it is logged,
    /// which (almost surely) orders it after every request that finished before the call.
    pub fn sync_log(&self) {
        let n = self.sync_counter.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = format!("/v2/damselfly-e2e-sync/{nanos}-{n}/tags/list");
        let marker = format!(" {path} ");
        let _ = Request::get(format!("{}{path}", self.url)).send();
        let logged = wait_until(LOG_SYNC_TIMEOUT, || {
            self.daemon.stdout_text().contains(&marker)
        });
        assert!(
            logged,
            "registry access log did not record {path} within {LOG_SYNC_TIMEOUT:?}\n{}",
            self.daemon.log_excerpt()
        );
    }
}

/// `user:<bcrypt hash>` via `htpasswd -Bbn` (apache2-utils).
fn htpasswd_line(user: &str, pass: &str) -> Result<String> {
    let output = Command::new("htpasswd")
        .args(["-Bbn", user, pass])
        .output()
        .context("cannot run `htpasswd` (apache2-utils); run scripts/setup.sh")?;
    if !output.status.success() {
        bail!(
            "htpasswd failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let line = String::from_utf8(output.stdout)?.trim().to_owned();
    Ok(format!("{line}\n"))
}

/// A YAML double-quoted string.
fn yaml_str(value: &str) -> String {
    serde_json::to_string(value).expect("a string always serialises")
}

/// The OCI image manifest of `config` and the gzip `layers` (bottom first), as
/// [`TestRegistry::try_push_image`] pushes it.
///
/// # Errors
/// Serialising failed.
pub(crate) fn image_manifest(config: &[u8], layers: &[&[u8]]) -> Result<Vec<u8>> {
    let layer_descriptors: Vec<serde_json::Value> = layers
        .iter()
        .map(|layer| {
            serde_json::json!({
                "mediaType": OCI_LAYER_MEDIA_TYPE,
                "digest": sha256_digest(layer),
                "size": layer.len(),
            })
        })
        .collect();
    Ok(serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": OCI_CONFIG_MEDIA_TYPE,
            "digest": sha256_digest(config),
            "size": config.len(),
        },
        "layers": layer_descriptors,
    }))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_access_log_lines() {
        let digest = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let line = format!(
            r#"127.0.0.1 - - [22/Nov/2026:04:32:49 +0000] "GET /v2/foo/bar/blobs/{digest} HTTP/1.1" 206 2 "" "curl/7.88.1""#
        );
        let entry = AccessLogEntry::parse(&line).unwrap();
        assert_eq!(entry.method, "GET");
        assert_eq!(entry.status, 206);
        assert_eq!(entry.bytes, 2);
        assert!(entry.is_blob(digest));
        assert!(!entry.is_blob("sha256:00"));

        let put = r#"::1 - - [22/Nov/2026:04:32:49 +0000] "PUT /v2/foo/blobs/uploads/65a4?_state=x%3D&digest=sha256:2c HTTP/1.1" 201 0 "" "ua""#;
        let entry = AccessLogEntry::parse(put).unwrap();
        assert_eq!(entry.path, "/v2/foo/blobs/uploads/65a4");
        assert!(!entry.is_blob("sha256:2c"));

        let logrus = r#"time="2026-11-22T04:32:49Z" level=info msg="response completed" http.request.method=GET"#;
        assert_eq!(AccessLogEntry::parse(logrus), None);
    }
}
