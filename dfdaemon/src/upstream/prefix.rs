//! The registry as the first element of a repository path: the form containers/image (Podman,
//! CRI-O, Buildah, skopeo) sends to a `registries.conf` mirror whose `location` is
//! `127.0.0.1:65001/<prefix>`. Pure functions, no I/O.
//!
//! containers/image makes the mirror's reference by replacing the image's registry with the
//! mirror `location` and parsing the result as a Docker reference (`rewriteReference` in
//! `pkg/sysregistriesv2`), so `<prefix>` must be a *path component* of that grammar
//! (distribution/reference `regexp.go`; containers/image vendors a copy in `docker/reference`):
//!
//! ```text
//! path-component   := alpha-numeric [separator alpha-numeric]*
//! alpha-numeric    := /[a-z0-9]+/
//! separator        := /[_.]|__|[-]+/        (containers/image 5.x: /[_.]|__|[-]*/)
//! domain           := domain-name [':' port-number]
//! domain-name      := domain-component ['.' domain-component]*
//! domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
//! ```
//!
//! A lowercase domain name already is a path component; a `:` is not (skopeo: `rewriting
//! reference: invalid reference format`). So the port goes after a `_`, which no domain name
//! holds:
//!
//! | registry         | prefix           |
//! |------------------|------------------|
//! | `docker.io`      | `docker.io`      |
//! | `reg.local:5000` | `reg.local_5000` |
//! | `localhost:5000` | `localhost_5000` |
//! | `10.0.0.9:5000`  | `10.0.0.9_5000`  |
//!
//! [`encode`] and [`decode`] invert each other and each prefix has one spelling (lowercase, no
//! leading zero in the port). Hosts no prefix can carry are refused with the reason: IPv6
//! literals, capital letters, `_` in a name, and one label with no port (other than
//! `localhost`), which image references read as a Docker Hub namespace.

/// Why a registry host cannot be written as a path prefix, or a path element read as one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// A `:` in a path element: no repository path can carry one, so no runtime sends it.
    #[error(
        "registry path prefix {element:?} has a ':', which a repository path cannot carry; \
         write host:port as host_port{}",
        suggestion.as_deref().map(|s| format!(" ({s})")).unwrap_or_default()
    )]
    Colon {
        /// The path element.
        element: String,
        /// Its encoded form, when it is a host the encoding can carry.
        suggestion: Option<String>,
    },
    /// An IPv6 address: its `[`, `]` and `:` fit no path component.
    #[error(
        "registry {0:?}: an IPv6 address cannot be a repository path prefix; name the registry \
         in dfdaemon's config ([[registries]] host = \"NAME\", endpoint = \"http://[ADDR]:PORT\") \
         and pull it by that name"
    )]
    Ipv6(String),
    /// Capital letters: path components are lowercase.
    #[error(
        "registry {0:?}: a repository path prefix is lowercase; write the registry host in \
         lowercase (host names are case-insensitive)"
    )]
    Uppercase(String),
    /// Not a host name as image references spell one.
    #[error(
        "{0:?} is not a registry host: dot-separated labels of a-z, 0-9 and inner '-', then \
         an optional port (host:port; host_port as a path prefix)"
    )]
    Name(String),
    /// A port out of range or with a leading zero.
    #[error("{0:?}: the port must be 1-65535, with no leading zero")]
    Port(String),
    /// One label, no port: image references read it as a Docker Hub namespace.
    #[error(
        "{0:?}: a name with no '.' and no port (other than localhost) is a Docker Hub \
         namespace in image references, not a registry"
    )]
    HubNamespace(String),
}

/// Whether a path element claims to name a registry, by Docker's rule for the first component
/// of a reference (a `.` or `:`, or `localhost`) extended to the encoded port (`_`). The
/// default-upstream form (Docker's `registry-mirrors`) sends Docker Hub paths, whose
/// namespaces are plain lowercase letters and digits, so it never claims one. An element
/// starting with `_` is an API endpoint (`/v2/_catalog`), not a registry.
pub fn names_registry(element: &str) -> bool {
    !element.starts_with('_') && (element == "localhost" || element.contains(['.', ':', '_']))
}

/// The path prefix for registry `host` (`docker.io`, `reg.local:5000`).
///
/// # Errors
/// [`PrefixError`] when no path component can carry `host`.
pub fn encode(host: &str) -> Result<String, PrefixError> {
    if host.starts_with('[') {
        return Err(PrefixError::Ipv6(host.to_owned()));
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((name, _)) if name.contains(':') => return Err(PrefixError::Ipv6(host.to_owned())),
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    check(host, name, port)?;
    Ok(match port {
        Some(port) => format!("{name}_{port}"),
        None => name.to_owned(),
    })
}

/// The registry host a path element names (the inverse of [`encode`]).
///
/// # Errors
/// [`PrefixError`] when `element` is not the encoding of a host.
pub fn decode(element: &str) -> Result<String, PrefixError> {
    if element.contains(':') {
        return Err(PrefixError::Colon {
            element: element.to_owned(),
            suggestion: encode(element).ok(),
        });
    }
    let (name, port) = match element.rsplit_once('_') {
        Some((name, port)) => (name, Some(port)),
        None => (element, None),
    };
    check(element, name, port)?;
    Ok(match port {
        Some(port) => format!("{name}:{port}"),
        None => name.to_owned(),
    })
}

/// Checks the two halves of `whole`, common to both directions.
fn check(whole: &str, name: &str, port: Option<&str>) -> Result<(), PrefixError> {
    if whole.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(PrefixError::Uppercase(whole.to_owned()));
    }
    // 253: the longest DNS name.
    if name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(PrefixError::Name(whole.to_owned()));
    }
    match port {
        Some(port) if !valid_port(port) => Err(PrefixError::Port(whole.to_owned())),
        None if !name.contains('.') && name != "localhost" => {
            Err(PrefixError::HubNamespace(whole.to_owned()))
        }
        _ => Ok(()),
    }
}

/// A domain component, lowercase: `[a-z0-9]`, or `[a-z0-9][a-z0-9-]*[a-z0-9]`, at most 63.
fn valid_label(label: &str) -> bool {
    let b = label.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            b.len() <= 63 && alnum(first) && alnum(last) && b.iter().all(|c| alnum(c) || *c == b'-')
        }
        _ => false,
    }
}

/// 1-65535 in decimal, no sign, no leading zero: one spelling per port.
fn valid_port(port: &str) -> bool {
    !port.starts_with('0')
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// distribution/reference's `path-component`, written out from the grammar in the module
    /// doc (the stricter, current separator `-+`), to check encoded prefixes against.
    fn is_path_component(s: &str) -> bool {
        let b = s.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let mut i = 0;
        loop {
            let start = i;
            while i < b.len() && alnum(b[i]) {
                i += 1;
            }
            if i == start {
                return false;
            }
            if i == b.len() {
                return true;
            }
            match b[i] {
                b'.' => i += 1,
                b'_' if b.get(i + 1) == Some(&b'_') => i += 2,
                b'_' => i += 1,
                b'-' => {
                    while b.get(i) == Some(&b'-') {
                        i += 1;
                    }
                }
                _ => return false,
            }
        }
    }

    #[test]
    fn the_grammar_helper_matches_the_reference_grammar() {
        for ok in [
            "a",
            "docker.io",
            "reg.local_5000",
            "a__b",
            "a--b",
            "a-b.c_d",
        ] {
            assert!(is_path_component(ok), "{ok}");
        }
        for bad in [
            "", "A", "a:1", "_a", "a_", "a___b", "a._b", "a..b", "-a", "a-", "[::1]",
        ] {
            assert!(!is_path_component(bad), "{bad}");
        }
    }

    #[test]
    fn hosts_round_trip_through_valid_path_components() {
        for (host, prefix) in [
            ("docker.io", "docker.io"),
            ("reg.local:5000", "reg.local_5000"),
            ("localhost", "localhost"),
            ("localhost:5000", "localhost_5000"),
            ("127.0.0.1:47851", "127.0.0.1_47851"),
            ("myregistry:5000", "myregistry_5000"),
            ("my--reg.example-1.com:65535", "my--reg.example-1.com_65535"),
            ("quay.io:1", "quay.io_1"),
        ] {
            assert_eq!(encode(host).as_deref(), Ok(prefix), "{host}");
            assert!(is_path_component(prefix), "{prefix}");
            assert!(names_registry(prefix), "{prefix}");
            assert_eq!(decode(prefix).as_deref(), Ok(host), "{prefix}");
        }
    }

    #[test]
    fn the_old_form_without_a_port_is_the_same_prefix() {
        for host in ["docker.io", "ghcr.io", "registry.e2e.invalid", "localhost"] {
            assert_eq!(encode(host).as_deref(), Ok(host));
            assert_eq!(decode(host).as_deref(), Ok(host));
        }
    }

    #[test]
    fn hosts_no_prefix_can_carry_are_refused_with_the_reason() {
        use std::mem::discriminant;
        let (ipv6, upper) = (
            PrefixError::Ipv6(String::new()),
            PrefixError::Uppercase(String::new()),
        );
        let (name, port) = (
            PrefixError::Name(String::new()),
            PrefixError::Port(String::new()),
        );
        let hub = PrefixError::HubNamespace(String::new());
        for (host, expected) in [
            ("[::1]:5000", &ipv6),
            ("::1", &ipv6),
            ("Reg.Local:5000", &upper),
            ("my_reg.local", &name),
            ("reg..local", &name),
            ("-reg.local", &name),
            ("reg.local-", &name),
            ("reg.local:", &port),
            ("reg.local:05000", &port),
            ("reg.local:65536", &port),
            ("reg.local:0", &port),
            ("myregistry", &hub),
        ] {
            let err = encode(host).expect_err(host);
            assert_eq!(
                discriminant(&err),
                discriminant(expected),
                "{host}: {err:?}"
            );
        }
    }

    #[test]
    fn malformed_prefixes_are_refused_with_the_reason() {
        let colon = decode("reg.local:5000").unwrap_err();
        assert_eq!(
            colon.to_string(),
            "registry path prefix \"reg.local:5000\" has a ':', which a repository path cannot \
             carry; write host:port as host_port (reg.local_5000)"
        );
        assert!(matches!(
            decode("[::1]:5000"),
            Err(PrefixError::Colon {
                suggestion: None,
                ..
            })
        ));
        for bad in [
            "reg.local_",
            "reg.local_0",
            "reg.local_05000",
            "reg.local_65536",
            "reg.local_5000_1",
            "reg.local__5000",
            "reg_local_5000",
            "reg.local_50a",
            "Reg.Local",
            "reg..local",
            ".reg.local",
            "reg.local%3a5000",
            "evil.com@x",
            "x_1.y",
        ] {
            assert!(decode(bad).is_err(), "{bad}");
            assert!(names_registry(bad), "{bad} should be claimed, then refused");
        }
    }

    #[test]
    fn docker_hub_namespaces_and_api_endpoints_are_not_registries() {
        for element in ["library", "bitnami", "e2e", "_catalog", "sha256"] {
            assert!(!names_registry(element), "{element}");
        }
    }

    #[test]
    fn every_decodable_prefix_has_one_spelling() {
        // A small exhaustive walk: every element over a tiny alphabet that decodes encodes
        // back to itself, so no two prefixes name the same registry.
        let alphabet = ['a', '1', '0', '.', '_', '-', ':'];
        let mut elements = vec![String::new()];
        for _ in 0..5 {
            elements = elements
                .iter()
                .flat_map(|e| alphabet.iter().map(move |c| format!("{e}{c}")))
                .collect();
            for e in &elements {
                if let Ok(host) = decode(e) {
                    assert_eq!(encode(&host).as_deref(), Ok(e.as_str()), "{e} -> {host}");
                    assert!(is_path_component(e), "{e}");
                }
            }
        }
    }
}
