//! Registry authentication: `WWW-Authenticate` challenges, token responses, and credentials
//! from a Docker-style auth file. Parsing only; the requests are in the client.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::RegistryError;

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// `Basic realm="…"`: send the user's credentials.
    Basic,
    /// `Bearer realm="…",service="…",scope="…"`: fetch a token from `realm`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// `service` parameter to pass on, if given.
        service: Option<String>,
        /// `scope` parameter to pass on, if given (may list several, space-separated).
        scope: Option<String>,
    },
}

/// Parses one `WWW-Authenticate` header value. Only the first challenge of a header is read;
/// registries send one. Unknown schemes are `None`.
///
/// # Errors
/// A description of what is malformed (a Bearer challenge without `realm`, an unterminated
/// quoted string…).
pub(crate) fn parse_challenge(header: &str) -> Result<Option<Challenge>, String> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((header, ""));
    let params = parse_params(rest)?;
    if scheme.eq_ignore_ascii_case("basic") {
        return Ok(Some(Challenge::Basic));
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let realm = params
        .get("realm")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| format!("Bearer challenge without a realm: {header:?}"))?;
    Ok(Some(Challenge::Bearer {
        realm: realm.clone(),
        service: params.get("service").cloned(),
        scope: params.get("scope").cloned(),
    }))
}

/// `key=value` or `key="quoted, value"` pairs separated by commas; keys lowercased.
fn parse_params(s: &str) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars
            .next_if(|c| c.is_ascii_whitespace() || *c == ',')
            .is_some()
        {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && *c != ',') {
            key.push(c);
        }
        let key = key.trim().to_ascii_lowercase();
        if chars.next() != Some('=') || key.is_empty() {
            return Err(format!("malformed challenge parameters: {s:?}"));
        }
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(format!("unterminated quoted string in {s:?}")),
                    },
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quoted string in {s:?}")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                value.push(c);
            }
            value = value.trim().to_owned();
        }
        out.insert(key, value);
    }
}

/// The body of a token endpoint's answer (Docker token spec; OAuth2 servers use
/// `access_token`).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    /// Seconds; the spec's default when absent is 60.
    #[serde(default)]
    expires_in: Option<u64>,
}

/// How long a token is assumed valid when the server does not say (the token spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

impl TokenResponse {
    /// The token and how long to keep using it: its lifetime less a margin of a tenth (at
    /// most 30 s), so a request does not go out with a token about to expire.
    pub(crate) fn into_token(self) -> Option<(String, Duration)> {
        let token = self
            .token
            .filter(|t| !t.is_empty())
            .or_else(|| self.access_token.filter(|t| !t.is_empty()))?;
        let lifetime = self
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        let margin = (lifetime / 10).min(Duration::from_secs(30));
        Some((token, lifetime - margin))
    }
}

/// Whether scope `ours` (`repository:<name>:<actions>`) grants everything in `asked` (one or
/// more space-separated scopes).
pub(crate) fn covers(ours: &str, asked: &str) -> bool {
    let split = |s: &str| {
        let (resource, actions) = s.rsplit_once(':')?;
        Some((
            resource.to_owned(),
            actions.split(',').map(str::to_owned).collect::<Vec<_>>(),
        ))
    };
    let Some((resource, actions)) = split(ours) else {
        return false;
    };
    asked.split_ascii_whitespace().all(|a| {
        split(a).is_some_and(|(r, acts)| r == resource && acts.iter().all(|x| actions.contains(x)))
    })
}

/// Credentials for `registry` from a Docker-style auth file: `$REGISTRY_AUTH_FILE`, else
/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. The `auths` entry is looked up
/// under the host (`localhost:5000`), with `https://` or `http://` in front, and for
/// `docker.io` also under `https://index.docker.io/v1/`; it holds `auth` (base64 `user:pass`)
/// or `username` and `password`. A missing file or entry is `Ok(None)`; credential helpers
/// (`credsStore`, `credHelpers`) and identity tokens are not supported.
///
/// # Errors
/// [`RegistryError::Config`] if the file exists but cannot be read or parsed, or the entry is
/// malformed.
pub fn auth_file_credentials(registry: &str) -> Result<Option<(String, String)>, RegistryError> {
    let Some(path) = auth_file_path() else {
        return Ok(None);
    };
    credentials_in_file(&path, registry)
}

fn auth_file_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        return Some(PathBuf::from(p));
    }
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

pub(crate) fn credentials_in_file(
    path: &Path,
    registry: &str,
) -> Result<Option<(String, String)>, RegistryError> {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        auths: HashMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        auth: Option<String>,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
    }
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(RegistryError::Config(format!(
                "reading {}: {e}",
                path.display()
            )));
        }
    };
    let file: File = serde_json::from_slice(&text)
        .map_err(|e| RegistryError::Config(format!("parsing {}: {e}", path.display())))?;
    let mut keys = vec![
        registry.to_owned(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/"),
    ];
    if registry == "docker.io" {
        keys.extend(
            [
                "https://index.docker.io/v1/",
                "index.docker.io",
                "registry-1.docker.io",
            ]
            .map(str::to_owned),
        );
    }
    let Some(entry) = keys.iter().find_map(|k| file.auths.get(k)) else {
        return Ok(None);
    };
    let bad = |why: &str| {
        RegistryError::Config(format!(
            "{}: the entry for {registry}: {why}",
            path.display()
        ))
    };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = STANDARD
            .decode(auth.trim())
            .map_err(|_| bad("`auth` is not base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad("`auth` is not UTF-8"))?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or_else(|| bad("`auth` is not base64 of user:password"))?;
        return Ok(Some((user.to_owned(), pass.to_owned())));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Ok(Some((u.clone(), p.clone()))),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(realm: &str, service: Option<&str>, scope: Option<&str>) -> Challenge {
        Challenge::Bearer {
            realm: realm.to_owned(),
            service: service.map(str::to_owned),
            scope: scope.map(str::to_owned),
        }
    }

    #[test]
    fn bearer_challenges() {
        let h = r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#;
        assert_eq!(
            parse_challenge(h).unwrap(),
            Some(bearer(
                "https://auth.example.com/token",
                Some("registry.example.com"),
                Some("repository:a/b:pull,push")
            ))
        );
        // Case-insensitive scheme and keys, spaces after commas, unquoted values, escapes.
        let h = r#"bearer Realm=http://127.0.0.1:9/token, service = "svc \"x\"" ,error="insufficient_scope""#;
        assert_eq!(
            parse_challenge(h).unwrap(),
            Some(bearer("http://127.0.0.1:9/token", Some("svc \"x\""), None))
        );
    }

    #[test]
    fn basic_and_unknown_schemes() {
        assert_eq!(
            parse_challenge(r#"Basic realm="damselfly-e2e""#).unwrap(),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Basic").unwrap(), Some(Challenge::Basic));
        assert_eq!(parse_challenge(r#"Negotiate abc="d""#).unwrap(), None);
    }

    #[test]
    fn malformed_challenges() {
        for h in [
            r#"Bearer service="x""#,
            r#"Bearer realm="""#,
            r#"Bearer realm="unterminated"#,
            r#"Bearer realm"#,
            r#"Bearer =x"#,
        ] {
            assert!(parse_challenge(h).is_err(), "{h}");
        }
    }

    #[test]
    fn token_responses() {
        let t: TokenResponse =
            serde_json::from_str(r#"{"token":"abc","expires_in":300,"issued_at":"x"}"#).unwrap();
        assert_eq!(
            t.into_token(),
            Some(("abc".to_owned(), Duration::from_secs(270)))
        );
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"xyz"}"#).unwrap();
        assert_eq!(
            t.into_token(),
            Some(("xyz".to_owned(), Duration::from_secs(54)))
        );
        let t: TokenResponse =
            serde_json::from_str(r#"{"token":"","access_token":"o","expires_in":3600}"#).unwrap();
        assert_eq!(
            t.into_token(),
            Some(("o".to_owned(), Duration::from_secs(3570)))
        );
        let t: TokenResponse = serde_json::from_str(r#"{"expires_in":60}"#).unwrap();
        assert_eq!(t.into_token(), None);
    }

    #[test]
    fn auth_file_entries() {
        let dir = std::env::temp_dir().join(format!("damselfly-oci-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        let auth = STANDARD.encode("alice:s3:cret");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{"localhost:5000":{{"auth":"{auth}"}},
                    "https://index.docker.io/v1/":{{"username":"bob","password":"pw"}},
                    "https://reg.example.com":{{"auth":"!!"}}}},"credsStore":"x"}}"#
            ),
        )
        .unwrap();
        assert_eq!(
            credentials_in_file(&path, "localhost:5000").unwrap(),
            Some(("alice".to_owned(), "s3:cret".to_owned()))
        );
        assert_eq!(
            credentials_in_file(&path, "docker.io").unwrap(),
            Some(("bob".to_owned(), "pw".to_owned()))
        );
        assert_eq!(credentials_in_file(&path, "other.io").unwrap(), None);
        let err = credentials_in_file(&path, "reg.example.com").unwrap_err();
        assert!(err.to_string().contains("not base64"), "{err}");
        assert_eq!(
            credentials_in_file(&dir.join("missing.json"), "x").unwrap(),
            None
        );
        std::fs::write(&path, "not json").unwrap();
        assert!(credentials_in_file(&path, "x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
