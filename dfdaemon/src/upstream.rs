//! Which registry a request is for, and what it asks for. Pure functions, no I/O.
//!
//! Runtimes name the upstream in different ways; the first that applies wins:
//!
//! 1. the `X-Damselfly-Registry: <host>` header (scripts, tests, custom clients);
//! 2. containerd's `?ns=<host>` query parameter (`hosts.toml`, old CRI `mirrors`);
//! 3. a registry as the first path element after `/v2/` (Podman, CRI-O, skopeo with a
//!    `registries.conf` mirror `127.0.0.1:65001/docker.io`): `/v2/docker.io/library/x/...`,
//!    a port written after a `_` (`reg.local:5000` is `/v2/reg.local_5000/...`, see
//!    [`prefix`]); an element that claims to be a registry but is malformed is refused, never
//!    guessed at;
//! 4. the configured default upstream (Docker's `registry-mirrors`, Docker Hub only).

// Spelled out so that the fuzz target, which includes this file by `#[path]` (and so reads it
// as a directory-owning module), finds the same file.
#[path = "upstream/prefix.rs"]
pub mod prefix;

use damselfly_common::Digest;

pub use prefix::PrefixError;

/// The header that names the upstream registry explicitly.
pub const REGISTRY_HEADER: &str = "x-damselfly-registry";

/// How the upstream was chosen (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectedBy {
    /// `X-Damselfly-Registry`.
    Header,
    /// `?ns=`.
    Namespace,
    /// First path element.
    PathPrefix,
    /// No hint: the default upstream.
    Default,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Registry host as runtimes name it (`docker.io`, `127.0.0.1:5000`); `None` for the
    /// default upstream.
    pub registry: Option<String>,
    /// How it was chosen.
    pub selected_by: SelectedBy,
    /// Path to request upstream, always starting with `/v2/` (the registry prefix removed).
    pub path: String,
    /// Query to forward (without `ns`), if any.
    pub query: Option<String>,
    /// What is asked for.
    pub kind: Kind,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `/v2/`: the API version check (and auth challenge).
    Base,
    /// `/v2/<name>/blobs/sha256:<hex>`.
    Blob {
        /// Repository name.
        repo: String,
        /// The blob digest.
        digest: Digest,
    },
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        /// Repository name.
        repo: String,
    },
    /// Anything else under `/v2/` (tags list, referrers, uploads, non-sha256 blobs...).
    Other,
}

impl Kind {
    /// A metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Base => "base",
            Self::Blob { .. } => "blob",
            Self::Manifest { .. } => "manifest",
            Self::Other => "other",
        }
    }
}

/// Why a request cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Not a registry API path.
    #[error("not a registry API path: {0}")]
    NotRegistryApi(String),
    /// The named registry is not a valid host.
    #[error("invalid registry host {0:?}")]
    BadRegistry(String),
    /// The first path element claims to be a registry but is no encoding of one.
    #[error(transparent)]
    BadPrefix(#[from] PrefixError),
}

impl RouteError {
    /// The OCI error code of the answer (the status is 404 for a path outside the API and
    /// 400 otherwise).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotRegistryApi(_) => "UNSUPPORTED",
            Self::BadRegistry(_) | Self::BadPrefix(_) => "NAME_INVALID",
        }
    }
}

/// Routes a request for `path` (`/v2/...`) with `query` and the value of the
/// [`REGISTRY_HEADER`] header, if any.
///
/// # Errors
/// [`RouteError`] for paths outside `/v2/`, a malformed registry name, or a first path element
/// that [claims to be a registry](prefix::names_registry) but does not [decode](prefix::decode).
pub fn route(path: &str, query: Option<&str>, header: Option<&str>) -> Result<Route, RouteError> {
    let Some(rest) = path
        .strip_prefix("/v2/")
        .or_else(|| (path == "/v2").then_some(""))
    else {
        return Err(RouteError::NotRegistryApi(path.to_owned()));
    };
    if rest.split('/').any(|seg| seg == ".." || seg == ".") {
        return Err(RouteError::NotRegistryApi(path.to_owned()));
    }
    let (ns, query) = split_ns(query);
    let (registry, selected_by, rest) = if let Some(h) = header.map(str::trim) {
        (Some(h.to_owned()), SelectedBy::Header, rest)
    } else if let Some(ns) = ns {
        (Some(ns), SelectedBy::Namespace, rest)
    } else if let Some((first, tail)) = rest.split_once('/')
        && prefix::names_registry(first)
        && !tail.is_empty()
    {
        (Some(prefix::decode(first)?), SelectedBy::PathPrefix, tail)
    } else if let Some(element) = Some(rest.trim_end_matches('/'))
        && !element.contains('/')
        && prefix::names_registry(element)
    {
        // `/v2/docker.io/`: the version check through a path-prefix mirror.
        (Some(prefix::decode(element)?), SelectedBy::PathPrefix, "")
    } else {
        (None, SelectedBy::Default, rest)
    };
    if let Some(r) = &registry
        && !valid_host(r)
    {
        return Err(RouteError::BadRegistry(r.clone()));
    }
    Ok(Route {
        registry,
        selected_by,
        path: format!("/v2/{rest}"),
        query,
        kind: kind(rest),
    })
}

/// Splits `ns=` out of a query string.
fn split_ns(query: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(q) = query.filter(|q| !q.is_empty()) else {
        return (None, None);
    };
    let mut ns = None;
    let mut kept = Vec::new();
    for pair in q.split('&') {
        match pair.strip_prefix("ns=") {
            Some(v) if ns.is_none() => ns = Some(percent_decode(v)),
            _ => kept.push(pair),
        }
    }
    let kept = (!kept.is_empty()).then(|| kept.join("&"));
    (ns.filter(|n| !n.is_empty()), kept)
}

/// Decodes `%XX` escapes (containerd escapes `:` in `ns` values on some versions).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A host, `host:port`, or `[v6]:port`, with no characters that could change a URL.
fn valid_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        })
}

fn kind(rest: &str) -> Kind {
    if rest.is_empty() {
        return Kind::Base;
    }
    if let Some((repo, digest)) = rest.rsplit_once("/blobs/")
        && !repo.is_empty()
        && let Some(hex) = digest.strip_prefix("sha256:")
        && let Ok(digest) = format!("sha256:{hex}").parse::<Digest>()
    {
        return Kind::Blob {
            repo: repo.to_owned(),
            digest,
        };
    }
    if let Some((repo, reference)) = rest.rsplit_once("/manifests/")
        && !repo.is_empty()
        && !reference.is_empty()
    {
        return Kind::Manifest {
            repo: repo.to_owned(),
        };
    }
    Kind::Other
}

/// A blob named by its full registry URL, as a preheat request gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobUrl {
    /// The URL to fetch, as given.
    pub url: String,
    /// The registry host (`host[:port]`).
    pub host: String,
    /// Repository name.
    pub repo: String,
    /// The blob digest from the path.
    pub digest: Digest,
}

/// Why a URL does not name a registry blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobUrlError {
    /// Not `http://` or `https://`.
    #[error("not an http:// or https:// URL: {0:?}")]
    Scheme(String),
    /// The host part is empty or holds characters a host cannot (credentials included:
    /// they belong in headers).
    #[error("invalid registry host {0:?} (credentials go in headers, not in the URL)")]
    Host(String),
    /// The path is not `/v2/<name>/blobs/sha256:<hex>`.
    #[error("not a registry blob URL (/v2/<name>/blobs/sha256:<hex>): {0:?}")]
    NotBlob(String),
}

/// Parses `http(s)://host[:port]/v2/<name>/blobs/sha256:<hex>[?query]`.
///
/// # Errors
/// [`BlobUrlError`] for anything else, including fragments and `..` path segments.
pub fn parse_blob_url(url: &str) -> Result<BlobUrl, BlobUrlError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| BlobUrlError::Scheme(url.to_owned()))?;
    let (host, path_and_query) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if !valid_host(host) {
        return Err(BlobUrlError::Host(host.to_owned()));
    }
    let not_blob = || BlobUrlError::NotBlob(url.to_owned());
    if path_and_query.contains('#') {
        return Err(not_blob());
    }
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    // The host is explicit, so the path is taken as it is (no registry prefix).
    match route(path, query, Some(host)) {
        Ok(Route {
            kind: Kind::Blob { repo, digest },
            ..
        }) => Ok(BlobUrl {
            url: url.to_owned(),
            host: host.to_owned(),
            repo,
            digest,
        }),
        _ => Err(not_blob()),
    }
}

/// Parses a base URL (`http(s)://host[:port]`, optional trailing `/`), returning it without
/// the trailing slash.
pub fn parse_base(url: &str) -> Option<String> {
    let trimmed = url.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))?;
    (valid_host(rest)).then(|| trimmed.to_owned())
}

/// The base URL for registry `host`: the configured `endpoint`, else Docker Hub for
/// `docker.io`, else `http://` for `plain_http` or loopback hosts and `https://` otherwise.
pub fn base_url(host: &str, endpoint: Option<&str>, plain_http: bool) -> String {
    if let Some(e) = endpoint.and_then(parse_base) {
        return e;
    }
    if host == "docker.io" || host == "index.docker.io" {
        return "https://registry-1.docker.io".into();
    }
    let scheme = if plain_http || is_loopback(host) {
        "http"
    } else {
        "https"
    };
    format!("{scheme}://{host}")
}

pub(crate) fn is_loopback(host: &str) -> bool {
    let name = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn header_wins_over_everything() {
        let r = route(
            "/v2/docker.io/library/x/manifests/1",
            Some("ns=quay.io"),
            Some("reg.local:5000"),
        )
        .unwrap();
        assert_eq!(r.registry.as_deref(), Some("reg.local:5000"));
        assert_eq!(r.selected_by, SelectedBy::Header);
        // With an explicit registry the path is taken as it is.
        assert_eq!(r.path, "/v2/docker.io/library/x/manifests/1");
        assert_eq!(r.query, None);
    }

    #[test]
    fn containerd_ns_is_used_and_stripped() {
        let r = route(
            &format!("/v2/library/nginx/blobs/{D}"),
            Some("ns=docker.io&x=1"),
            None,
        )
        .unwrap();
        assert_eq!(r.registry.as_deref(), Some("docker.io"));
        assert_eq!(r.selected_by, SelectedBy::Namespace);
        assert_eq!(r.query.as_deref(), Some("x=1"));
        assert_eq!(
            r.kind,
            Kind::Blob {
                repo: "library/nginx".into(),
                digest: D.parse().unwrap()
            }
        );
        let esc = route("/v2/a/manifests/1", Some("ns=127.0.0.1%3A5000"), None).unwrap();
        assert_eq!(esc.registry.as_deref(), Some("127.0.0.1:5000"));
    }

    #[test]
    fn path_prefix_is_podman_style() {
        let r = route("/v2/docker.io/library/nginx/manifests/latest", None, None).unwrap();
        assert_eq!(r.registry.as_deref(), Some("docker.io"));
        assert_eq!(r.selected_by, SelectedBy::PathPrefix);
        assert_eq!(r.path, "/v2/library/nginx/manifests/latest");
        assert_eq!(
            r.kind,
            Kind::Manifest {
                repo: "library/nginx".into()
            }
        );
        let base = route("/v2/127.0.0.1_5000/", None, None).unwrap();
        assert_eq!(base.registry.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(base.kind, Kind::Base);
        assert_eq!(base.path, "/v2/");
    }

    #[test]
    fn a_registry_port_travels_after_an_underscore() {
        let r = route(&format!("/v2/reg.local_5000/e2e/app/blobs/{D}"), None, None).unwrap();
        assert_eq!(r.registry.as_deref(), Some("reg.local:5000"));
        assert_eq!(r.selected_by, SelectedBy::PathPrefix);
        assert_eq!(r.path, format!("/v2/e2e/app/blobs/{D}"));
        assert_eq!(
            r.kind,
            Kind::Blob {
                repo: "e2e/app".into(),
                digest: D.parse().unwrap()
            }
        );
        // What `init podman` writes is what the route reads back.
        for host in [
            "docker.io",
            "reg.local:5000",
            "localhost:5000",
            "127.0.0.1:47851",
        ] {
            let element = prefix::encode(host).unwrap();
            let r = route(&format!("/v2/{element}/a/b/manifests/1"), None, None).unwrap();
            assert_eq!(r.registry.as_deref(), Some(host));
            assert_eq!(r.path, "/v2/a/b/manifests/1");
        }
        // The catalog endpoint is not a registry named `_catalog`.
        let catalog = route("/v2/_catalog", Some("n=1"), None).unwrap();
        assert_eq!(catalog.registry, None);
        assert_eq!(catalog.path, "/v2/_catalog");
    }

    #[test]
    fn a_malformed_prefix_is_refused_not_routed() {
        for path in [
            "/v2/reg.local:5000/a/manifests/1",
            "/v2/127.0.0.1:5000/",
            "/v2/[::1]:5000/a/manifests/1",
            "/v2/reg.local_0/a/manifests/1",
            "/v2/reg.local_99999/a/manifests/1",
            "/v2/reg.local_05000/a/manifests/1",
            "/v2/Reg.Local/a/manifests/1",
            "/v2/reg..local/a/manifests/1",
            "/v2/reg_local_5000/a/manifests/1",
            "/v2/evil.com@x/a/manifests/1",
            "/v2/reg.local%3A5000/a/manifests/1",
            "/v2/reg.local_5000_",
        ] {
            let err = route(path, None, None).unwrap_err();
            assert!(matches!(err, RouteError::BadPrefix(_)), "{path}: {err:?}");
            assert_eq!(err.code(), "NAME_INVALID");
        }
        // The message tells a client using the old colon form what to send instead.
        let err = route("/v2/reg.local:5000/a/manifests/1", None, None).unwrap_err();
        assert!(err.to_string().contains("(reg.local_5000)"), "{err}");
        // An explicit registry (header, `ns`) takes the path as it is.
        let r = route("/v2/reg.local:5000/a/manifests/1", Some("ns=quay.io"), None).unwrap();
        assert_eq!(r.registry.as_deref(), Some("quay.io"));
        assert_eq!(r.path, "/v2/reg.local:5000/a/manifests/1");
    }

    #[test]
    fn digests_in_default_paths_are_not_registry_hosts() {
        let r = route(&format!("/v2/library/web/blobs/{D}"), None, None).unwrap();
        assert_eq!(r.registry, None);
        assert!(matches!(r.kind, Kind::Blob { .. }));
        let m = route(&format!("/v2/web/manifests/{D}"), None, None).unwrap();
        assert_eq!(m.registry, None);
        assert_eq!(m.kind, Kind::Manifest { repo: "web".into() });
    }

    #[test]
    fn no_hint_means_the_default_upstream() {
        let r = route("/v2/library/nginx/manifests/latest", None, None).unwrap();
        assert_eq!(r.registry, None);
        assert_eq!(r.selected_by, SelectedBy::Default);
        assert_eq!(route("/v2/", None, None).unwrap().kind, Kind::Base);
        assert_eq!(route("/v2", None, None).unwrap().kind, Kind::Base);
        assert_eq!(
            route("/v2/library/nginx/tags/list", Some("n=10"), None)
                .unwrap()
                .query
                .as_deref(),
            Some("n=10")
        );
    }

    #[test]
    fn hostile_paths_and_hosts_are_refused() {
        assert!(route("/etc/passwd", None, None).is_err());
        assert!(route("/v2/../x", None, None).is_err());
        assert!(route("/v2/a/manifests/1", Some("ns=evil.com/path"), None).is_err());
        assert!(route("/v2/a/manifests/1", None, Some("a@b")).is_err());
        // A blob path with a bad digest is not a blob (it is proxied and the registry says no).
        assert_eq!(
            route("/v2/a/blobs/sha256:zz", None, None).unwrap().kind,
            Kind::Other
        );
    }

    #[test]
    fn blob_urls_for_preheat() {
        let b = parse_blob_url(&format!("http://127.0.0.1:5000/v2/library/web/blobs/{D}")).unwrap();
        assert_eq!(b.host, "127.0.0.1:5000");
        assert_eq!(b.repo, "library/web");
        assert_eq!(b.digest, D.parse().unwrap());
        let b = parse_blob_url(&format!("https://harbor.local/v2/p/app/blobs/{D}?x=1")).unwrap();
        assert_eq!(b.host, "harbor.local");
        assert_eq!(
            b.url,
            format!("https://harbor.local/v2/p/app/blobs/{D}?x=1")
        );
        for bad in [
            format!("ftp://r/v2/a/blobs/{D}"),
            format!("http://user:pw@r/v2/a/blobs/{D}"),
            format!("http:///v2/a/blobs/{D}"),
            "http://r/v2/a/manifests/1".to_owned(),
            "http://r/v2/a/blobs/sha256:zz".to_owned(),
            format!("http://r/v2/../a/blobs/{D}"),
            format!("http://r/v2/a/blobs/{D}#frag"),
            format!("http://r/a/blobs/{D}"),
            "not a url".to_owned(),
        ] {
            assert!(parse_blob_url(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            base_url("docker.io", None, false),
            "https://registry-1.docker.io"
        );
        assert_eq!(
            base_url("127.0.0.1:5000", None, false),
            "http://127.0.0.1:5000"
        );
        assert_eq!(base_url("[::1]:5000", None, false), "http://[::1]:5000");
        assert_eq!(
            base_url("localhost:5000", None, false),
            "http://localhost:5000"
        );
        assert_eq!(base_url("reg.local", None, false), "https://reg.local");
        assert_eq!(base_url("reg.local", None, true), "http://reg.local");
        assert_eq!(
            base_url("reg.local", Some("https://mirror.local:8443/"), true),
            "https://mirror.local:8443"
        );
        assert_eq!(parse_base("https://a/b"), None);
        assert_eq!(parse_base("ftp://a"), None);
    }
}
