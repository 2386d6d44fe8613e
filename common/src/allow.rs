//! Registry allow lists: whose "yes, this requester may read this blob" a daemon believes.
//!
//! A blob is cached by digest alone, so the same bytes can be asked for through several
//! registries. Before a cached copy is handed to a requester, the requester's own registry
//! is asked whether its credentials open the blob. That registry must be one the operator
//! chose: a host the requester names itself (a stub answering 200 to every request) would
//! vouch for anyone. Both daemons keep such a list (`access.allow`), as patterns:
//!
//! | pattern | matches |
//! |---|---|
//! | `registry.local` | that host on the scheme's default port (no port written) |
//! | `registry.local:5000` | that host and port |
//! | `registry.local:*` | that host, any port or none |
//! | `*.corp.example` | any host under `corp.example` (not `corp.example` itself), no port |
//! | `*.corp.example:*` | the same, any port or none |
//!
//! Host names compare case-insensitively; IPv6 addresses are written in brackets
//! (`[fd00::1]:5000`). A pattern that would match every host (`*`, `*:*`) is refused: it
//! would let any requester choose who approves it.

use std::{fmt, str::FromStr};

/// One allow-list entry; see the [module docs](self) for the syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryPattern {
    name: Name,
    port: Port,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    /// The whole host name, lower case.
    Exact(String),
    /// `*.suffix`: stored as `.suffix`, lower case.
    Under(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Port {
    /// No port written: only a host named without one.
    Default,
    /// Exactly this port.
    Is(u16),
    /// `:*`: any port, or none.
    Any,
}

/// Why an allow-list pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Empty, or only a port.
    #[error("empty registry pattern")]
    Empty,
    /// `*` or `*:*`: every host, including one a requester runs.
    #[error("{0:?} would trust any host a requester names; list registries or *.domain patterns")]
    Everything(String),
    /// A character no host name has, a `*` anywhere but a leading `*.`, an empty label.
    #[error("{0:?} is not a host, host:port or *.domain pattern")]
    BadHost(String),
    /// Not a number from 1 to 65535 or `*`.
    #[error("bad port in {0:?} (a number or *)")]
    BadPort(String),
}

impl FromStr for RegistryPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(PatternError::Empty);
        }
        let (name, port) = split_host(s).ok_or_else(|| PatternError::BadHost(s.to_owned()))?;
        if name == "*" {
            return Err(PatternError::Everything(s.to_owned()));
        }
        if name.is_empty() {
            return Err(PatternError::Empty);
        }
        let port = match port {
            None => Port::Default,
            Some("*") => Port::Any,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Port::Is(n),
                _ => return Err(PatternError::BadPort(s.to_owned())),
            },
        };
        let name = name.to_ascii_lowercase();
        let name = match name.strip_prefix("*.") {
            Some(rest) if valid_name(rest) => Name::Under(format!(".{rest}")),
            Some(_) => return Err(PatternError::BadHost(s.to_owned())),
            None if valid_name(&name) => Name::Exact(name),
            None => return Err(PatternError::BadHost(s.to_owned())),
        };
        Ok(Self { name, port })
    }
}

impl fmt::Display for RegistryPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Name::Exact(n) => f.write_str(n)?,
            Name::Under(suffix) => write!(f, "*{suffix}")?,
        }
        match self.port {
            Port::Default => Ok(()),
            Port::Is(p) => write!(f, ":{p}"),
            Port::Any => f.write_str(":*"),
        }
    }
}

impl RegistryPattern {
    /// Whether `host` (`name`, `name:port` or `[v6]:port`, as in image references and URL
    /// authorities) matches.
    pub fn matches(&self, host: &str) -> bool {
        let Some((name, port)) = split_host(host) else {
            return false;
        };
        let name = name.to_ascii_lowercase();
        let name_ok = match &self.name {
            Name::Exact(n) => *n == name,
            Name::Under(suffix) => name.len() > suffix.len() && name.ends_with(suffix.as_str()),
        };
        let port_ok = match (&self.port, port) {
            (Port::Any, _) | (Port::Default, None) => true,
            (Port::Is(want), Some(p)) => p.parse::<u16>().is_ok_and(|p| p == *want),
            _ => false,
        };
        name_ok && port_ok
    }
}

/// A parsed allow list. Empty allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    patterns: Vec<RegistryPattern>,
}

impl AllowList {
    /// Parses every pattern.
    ///
    /// # Errors
    /// Every bad pattern, with its index in `patterns`.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, Vec<(usize, PatternError)>> {
        let mut ok = Vec::new();
        let mut errs = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            match p.as_ref().parse() {
                Ok(p) => ok.push(p),
                Err(e) => errs.push((i, e)),
            }
        }
        if errs.is_empty() {
            Ok(Self { patterns: ok })
        } else {
            Err(errs)
        }
    }

    /// Whether any pattern matches `host`.
    pub fn allows(&self, host: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(host))
    }
}

/// `scheme://host[:port]` of an `http://` or `https://` URL, lower case: which server a URL
/// names. `None` for other schemes, credentials in the URL, or an empty host.
pub fn url_origin(url: &str) -> Option<String> {
    let (scheme, _) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let host = url_host(url)?;
    Some(format!("{scheme}://{}", host.to_ascii_lowercase()))
}

/// The `host[:port]` of an `http://` or `https://` URL, as written. `None` for other
/// schemes, credentials in the URL, or an empty host.
pub fn url_host(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = &rest[..end];
    (!host.is_empty() && !host.contains('@') && split_host(host).is_some()).then_some(host)
}

/// Splits `name[:port]` or `[v6][:port]`; `None` if the brackets do not close or a port
/// separator has nothing after it.
fn split_host(s: &str) -> Option<(&str, Option<&str>)> {
    let (name, port) = if let Some(v6) = s.strip_prefix('[') {
        let (addr, after) = v6.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        // Keep the brackets: that is how the host is written everywhere else.
        (&s[..addr.len() + 2], port)
    } else {
        match s.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (s, None),
        }
    };
    if port == Some("") {
        return None;
    }
    Some((name, port))
}

/// A DNS name or IP literal: letters, digits, `-`, `_`, `.` (and `:` inside brackets), no
/// empty label, no `*`.
fn valid_name(n: &str) -> bool {
    if let Some(v6) = n.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(patterns: &[&str], host: &str) -> bool {
        AllowList::parse(patterns).unwrap().allows(host)
    }

    #[test]
    fn exact_hosts_and_ports() {
        assert!(allows(&["registry.local"], "registry.local"));
        assert!(allows(&["registry.local"], "Registry.LOCAL"));
        assert!(!allows(&["registry.local"], "registry.local:5000"));
        assert!(allows(&["registry.local:5000"], "registry.local:5000"));
        assert!(!allows(&["registry.local:5000"], "registry.local:5001"));
        assert!(!allows(&["registry.local:5000"], "registry.local"));
        assert!(allows(&["registry.local:*"], "registry.local"));
        assert!(allows(&["registry.local:*"], "registry.local:1"));
        assert!(!allows(&["registry.local"], "other.local"));
        assert!(!allows(&["registry.local"], "evil-registry.local"));
        assert!(allows(&["127.0.0.1:*"], "127.0.0.1:5000"));
        assert!(!allows(&["127.0.0.1:*"], "127.0.0.2:5000"));
        assert!(allows(&["[::1]:*"], "[::1]:5000"));
        assert!(allows(&["[::1]:5000"], "[::1]:5000"));
        assert!(!allows(&["[::1]:5000"], "[::2]:5000"));
    }

    #[test]
    fn domain_wildcards_cover_subdomains_only() {
        let p = ["*.corp.example"];
        assert!(allows(&p, "reg.corp.example"));
        assert!(allows(&p, "a.b.corp.example"));
        assert!(!allows(&p, "corp.example"));
        assert!(!allows(&p, "evilcorp.example"));
        assert!(!allows(&p, "reg.corp.example:5000"));
        assert!(!allows(&p, "reg.corp.example.evil.com"));
        assert!(allows(&["*.corp.example:*"], "reg.corp.example:5000"));
        assert!(allows(&["*.corp.example:443"], "reg.corp.example:443"));
    }

    #[test]
    fn an_empty_list_allows_nothing() {
        assert!(!AllowList::default().allows("registry.local"));
        assert!(!allows(&[], "127.0.0.1:5000"));
    }

    #[test]
    fn hostile_or_malformed_patterns_are_refused() {
        for (bad, want) in [
            ("*", PatternError::Everything("*".into())),
            ("*:*", PatternError::Everything("*:*".into())),
            ("", PatternError::Empty),
            (":5000", PatternError::Empty),
            ("*.", PatternError::BadHost("*.".into())),
            ("a.*.b", PatternError::BadHost("a.*.b".into())),
            (
                "*corp.example",
                PatternError::BadHost("*corp.example".into()),
            ),
            ("a/b", PatternError::BadHost("a/b".into())),
            ("a..b", PatternError::BadHost("a..b".into())),
            ("user@host", PatternError::BadHost("user@host".into())),
            ("host:", PatternError::BadHost("host:".into())),
            ("host:0", PatternError::BadPort("host:0".into())),
            ("host:99999", PatternError::BadPort("host:99999".into())),
            ("host:+1", PatternError::BadPort("host:+1".into())),
            ("[::1", PatternError::BadHost("[::1".into())),
            ("[nope]:1", PatternError::BadHost("[nope]:1".into())),
        ] {
            assert_eq!(bad.parse::<RegistryPattern>(), Err(want), "{bad:?}");
        }
        let errs = AllowList::parse(&["ok.example", "*", "a/b"]).unwrap_err();
        assert_eq!(errs.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn patterns_print_as_written() {
        for p in [
            "registry.local",
            "r.local:5000",
            "r.local:*",
            "*.corp.example:*",
            "[::1]:5000",
        ] {
            assert_eq!(p.parse::<RegistryPattern>().unwrap().to_string(), p);
        }
    }

    #[test]
    fn url_hosts_and_origins() {
        assert_eq!(
            url_host("http://127.0.0.1:5000/v2/a/blobs/x"),
            Some("127.0.0.1:5000")
        );
        assert_eq!(url_host("https://Reg.Local?x"), Some("Reg.Local"));
        assert_eq!(url_host("https://[::1]:5000/v2/"), Some("[::1]:5000"));
        assert_eq!(url_host("https://user:pw@reg/v2/"), None);
        assert_eq!(url_host("ftp://reg/v2/"), None);
        assert_eq!(url_host("http:///v2/"), None);
        assert_eq!(
            url_origin("HTTPS://Reg.Local:443/v2/a").as_deref(),
            Some("https://reg.local:443")
        );
        assert_ne!(
            url_origin("http://reg.local/v2/a"),
            url_origin("https://reg.local/v2/a")
        );
    }
}
