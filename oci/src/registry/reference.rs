//! Image references: `registry/repository[:tag][@sha256:…]`.

use std::fmt;
use std::str::FromStr;

use damselfly_common::Digest;

use super::RegistryError;

/// Longest repository name accepted (distribution's limit).
const MAX_REPOSITORY: usize = 255;
/// Longest tag (OCI distribution spec).
const MAX_TAG: usize = 128;

/// A parsed image reference, e.g. `localhost:5000/team/app:v1` or
/// `registry.example.com/app@sha256:…`.
///
/// The registry part is required: the first path component is taken as a registry host only if
/// it contains a `.` or a `:` or is `localhost` (Docker's rule), and a reference without one is
/// refused rather than silently sent to Docker Hub. `docker.io/x` is normalised to
/// `docker.io/library/x`. [`Display`](fmt::Display) prints the canonical form, which parses
/// back to an equal value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host with optional port, as written (`localhost:5000`, `[::1]:5000`,
    /// `docker.io`).
    pub registry: String,
    /// Repository path (`team/app`).
    pub repository: String,
    /// Tag, if given.
    pub tag: Option<String>,
    /// Digest, if given; a manifest fetched through this reference must hash to it.
    pub digest: Option<Digest>,
}

impl Reference {
    /// What goes after `/manifests/`: the digest if there is one, else the tag, else `latest`.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The same repository with `tag` and no digest.
    #[must_use]
    pub fn with_tag(&self, tag: &str) -> Self {
        Self {
            tag: Some(tag.to_owned()),
            digest: None,
            ..self.clone()
        }
    }

    /// The same repository with `digest` and no tag.
    #[must_use]
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            tag: None,
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| RegistryError::BadReference(format!("{s:?}: {why}"));
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                let digest = d
                    .parse::<Digest>()
                    .map_err(|_| bad("the digest is not sha256:<64 lowercase hex>"))?;
                (n, Some(digest))
            }
            None => (s, None),
        };
        let Some((registry, rest)) = name_tag.split_once('/') else {
            return Err(bad(
                "no registry host; write it in full, e.g. localhost:5000/app:tag",
            ));
        };
        if !looks_like_registry(registry) {
            return Err(bad(&format!(
                "{registry:?} is not a registry host (it needs a '.' or a ':' or to be \
                 localhost); write the registry in full, e.g. docker.io/{name_tag}"
            )));
        }
        if !valid_host(registry) {
            return Err(bad(&format!("invalid registry host {registry:?}")));
        }
        // A ':' after the last '/' starts the tag (the registry's port is before the first '/').
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t)),
            _ => (rest, None),
        };
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(bad(&format!(
                "invalid tag {tag:?} (letters, digits, '_', '.', '-', at most {MAX_TAG}, not \
                 starting with '.' or '-')"
            )));
        }
        if !valid_repository(repository) {
            return Err(bad(&format!(
                "invalid repository {repository:?} (lowercase letters and digits, components \
                 separated by '/' and joined by '.', '_', '__' or dashes)"
            )));
        }
        let (registry, repository) = normalize_docker_hub(registry, repository);
        Ok(Self {
            registry,
            repository,
            tag: tag.map(str::to_owned),
            digest,
        })
    }
}

/// Docker's rule for telling a registry host from a first path component.
pub(crate) fn looks_like_registry(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

/// `host[:port]`, `[v6]:port`: letters, digits, `.`, `-`, and a numeric port.
fn valid_host(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after.strip_prefix(':') {
            Some(p) => ("v6", Some(p)),
            None if after.is_empty() => ("v6", None),
            None => return false,
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !host.starts_with(['.', '-'])
        && !host.ends_with(['.', '-']);
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok());
    host_ok && port_ok
}

/// The distribution spec's `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/…)*`.
fn valid_repository(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_REPOSITORY {
        return false;
    }
    s.split('/').all(|component| {
        let bytes = component.as_bytes();
        if bytes.is_empty() {
            return false;
        }
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return false;
        }
        // Separator runs: one '.', one '_', two '_', or any number of '-'.
        let mut i = 0;
        while i < bytes.len() {
            if alnum(bytes[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && !alnum(bytes[i]) {
                i += 1;
            }
            let run = &component[start..i];
            let ok = run == "." || run == "_" || run == "__" || run.bytes().all(|b| b == b'-');
            if !ok {
                return false;
            }
        }
        true
    })
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn valid_tag(s: &str) -> bool {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    !s.is_empty()
        && s.len() <= MAX_TAG
        && s.bytes().next().is_some_and(ok)
        && s.bytes().all(|b| ok(b) || b == b'.' || b == b'-')
}

fn normalize_docker_hub(registry: &str, repository: &str) -> (String, String) {
    if matches!(registry, "docker.io" | "index.docker.io") {
        let repository = if repository.contains('/') {
            repository.to_owned()
        } else {
            format!("library/{repository}")
        };
        return ("docker.io".to_owned(), repository);
    }
    (registry.to_owned(), repository.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn parse(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn tags_digests_and_ports() {
        let r = parse("localhost:5000/a/b:tag");
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.tag.as_deref(), Some("tag"));
        assert_eq!(r.digest, None);
        assert_eq!(r.manifest_reference(), "tag");

        let r = parse(&format!("registry.example.com/repo@sha256:{HEX}"));
        assert_eq!(r.registry, "registry.example.com");
        assert_eq!(r.repository, "repo");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.unwrap().hex(), HEX);
        assert_eq!(r.manifest_reference(), format!("sha256:{HEX}"));

        let r = parse(&format!("host.io:443/x/y/z:v1.2-rc_3@sha256:{HEX}"));
        assert_eq!(r.registry, "host.io:443");
        assert_eq!(r.repository, "x/y/z");
        assert_eq!(r.tag.as_deref(), Some("v1.2-rc_3"));
        assert!(r.digest.is_some());

        let r = parse("localhost/app");
        assert_eq!((r.registry.as_str(), r.tag.as_deref()), ("localhost", None));
        assert_eq!(r.manifest_reference(), "latest");

        let r = parse("[::1]:5000/app:1");
        assert_eq!(r.registry, "[::1]:5000");
        assert_eq!(r.repository, "app");
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "localhost:5000/a/b:tag".to_owned(),
            format!("host.io/repo@sha256:{HEX}"),
            format!("host.io:8080/a/b-c/d__e:t@sha256:{HEX}"),
            "127.0.0.1:5000/x".to_owned(),
            "[::1]:5000/app:1".to_owned(),
        ] {
            let r = parse(&s);
            assert_eq!(r.to_string(), s);
            assert_eq!(parse(&r.to_string()), r);
        }
    }

    #[test]
    fn docker_hub_is_normalised() {
        let r = parse("docker.io/alpine:3");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/alpine");
        assert_eq!(r.to_string(), "docker.io/library/alpine:3");
        assert_eq!(parse("index.docker.io/a/b").registry, "docker.io");
    }

    #[test]
    fn refuses_bad_references() {
        for (s, why) in [
            ("alpine:3", "no registry host"),
            ("library/alpine", "not a registry host"),
            ("localhost:5000/", "invalid repository"),
            ("localhost:5000/UPPER", "invalid repository"),
            ("localhost:5000/a//b", "invalid repository"),
            ("localhost:5000/a/b:", "invalid tag"),
            ("localhost:5000/a/b:-x", "invalid tag"),
            ("localhost:5000/a..b", "invalid repository"),
            ("localhost:5000/a/b@sha256:abc", "digest"),
            ("localhost:5000/a/b@md5:abc", "digest"),
            ("bad_host.io/a", "invalid registry host"),
            ("host.io:port/a", "invalid registry host"),
            ("host.io:99999/a", "invalid registry host"),
            ("[zz]:1/a", "invalid registry host"),
        ] {
            let err = s.parse::<Reference>().expect_err(s).to_string();
            assert!(err.contains(why), "{s}: {err}");
            assert!(err.contains(s), "{s}: {err}");
        }
        let long_tag = format!("localhost/a:{}", "t".repeat(129));
        assert!(long_tag.parse::<Reference>().is_err());
        let ok_tag = format!("localhost/a:{}", "t".repeat(128));
        assert!(ok_tag.parse::<Reference>().is_ok());
    }
}
