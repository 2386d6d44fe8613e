//! Which registries may approve a requester for a blob this node holds. Pure, no I/O.
//!
//! The node cache and the swarm hold blobs by digest alone, so the bytes a requester gets
//! may have come from another registry or repository than the one it names. Before they
//! are handed over, the requester's own registry is asked (a `HEAD` with its credentials).
//! That registry decides only if the operator listed it ([`AccessPolicy::decide`]): the
//! default upstream, every `[[registries]]` host, and the `access.allow` patterns. A
//! registry the requester merely names (`?ns=`, `X-Damselfly-Registry`, a path prefix) and
//! the operator did not list could be a stub answering 200 to every request; requests for
//! it never touch the node cache or the swarm: they are passed through to it
//! ([`Unlisted::Proxy`], the default) or refused ([`Unlisted::Refuse`]).

use std::{fmt, str::FromStr};

use damselfly_common::allow::AllowList;
use serde::{Deserialize, Serialize};

use crate::{Config, upstream::Route};

/// What a request naming a registry outside the allow list gets (`access.unlisted`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unlisted {
    /// Passed through to the registry it names, as a plain proxy: blobs included, never
    /// from the node cache or the swarm. Pulls keep working, without P2P. The default.
    #[default]
    Proxy,
    /// Answered `403 DENIED` by the mirror; runtimes then pull from their next host (the
    /// registry itself, with containerd's `hosts.toml`).
    Refuse,
}

impl Unlisted {
    /// The name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Refuse => "refuse",
        }
    }
}

impl fmt::Display for Unlisted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A value of `access.unlisted` that is neither `proxy` nor `refuse`.
#[derive(Debug, thiserror::Error)]
#[error("unknown action {0:?} (expected \"proxy\" or \"refuse\")")]
pub struct UnknownUnlisted(String);

impl FromStr for Unlisted {
    type Err = UnknownUnlisted;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "proxy" => Ok(Self::Proxy),
            "refuse" => Ok(Self::Refuse),
            other => Err(UnknownUnlisted(other.to_owned())),
        }
    }
}

/// How the mirror treats a routed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A listed registry: blobs are checked there with the requester's credentials and
    /// then served from the node (cache, running download, swarm).
    Listed,
    /// Not listed: pass the request through; nothing comes from the node.
    Proxy,
    /// Not listed: refuse the request.
    Refuse,
    /// The registry is at an address this node never fetches from (metadata, link-local,
    /// loopback unless configured: [`Config::origin_addresses`]): refuse it, whether
    /// listed or not.
    Forbidden(damselfly_oci::guard::ForbiddenAddress),
}

/// The registries the operator lists, built once from the config.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    /// `[[registries]]` hosts, as runtimes name them.
    configured: Vec<String>,
    /// The default upstream's base URL: a registry named by a host that maps to it
    /// (`docker.io` → `https://registry-1.docker.io`) is the same server.
    default_base: String,
    allow: AllowList,
    unlisted: Unlisted,
    addresses: damselfly_oci::guard::AddressPolicy,
}

impl AccessPolicy {
    /// The policy of `config`. A pattern list that does not parse (which
    /// [`Config::validate`] refuses before this is built) allows nothing: it fails closed.
    pub fn new(config: &Config) -> Self {
        Self {
            configured: config.registries.iter().map(|r| r.host.clone()).collect(),
            default_base: crate::upstream::parse_base(&config.default_upstream)
                .unwrap_or_else(|| config.default_upstream.clone()),
            allow: AllowList::parse(&config.access.allow).unwrap_or_default(),
            unlisted: config.access.unlisted,
            addresses: config.origin_addresses(),
        }
    }

    /// The decision for `route`, whose requests go to `base` (its registry's base URL).
    pub fn decide(&self, route: &Route, base: &str) -> Decision {
        // A registry named by address is checked here, before anything is sent; one named by
        // host name when its addresses are resolved (the upstream clients' resolver).
        if let Some(f) = reqwest::Url::parse(base)
            .ok()
            .and_then(|u| self.addresses.check_url(&u).err())
        {
            return Decision::Forbidden(f);
        }
        let Some(host) = route.registry.as_deref() else {
            // No registry named: the operator's default upstream.
            return Decision::Listed;
        };
        if self.allows(host, base) {
            return Decision::Listed;
        }
        match self.unlisted {
            Unlisted::Proxy => Decision::Proxy,
            Unlisted::Refuse => Decision::Refuse,
        }
    }

    /// Whether registry `host` (reached at `base`) is listed.
    pub fn allows(&self, host: &str, base: &str) -> bool {
        self.configured.iter().any(|c| c.eq_ignore_ascii_case(host))
            || base == self.default_base
            || self.allow.allows(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::RegistryConfig,
        upstream::{base_url, route},
    };

    const BLOB: &str =
        "/v2/app/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn decide(config: &Config, query: Option<&str>, header: Option<&str>) -> Decision {
        let r = route(BLOB, query, header).unwrap();
        let base = match &r.registry {
            Some(h) => base_url(
                h,
                config.registry(h).and_then(|c| c.endpoint.as_deref()),
                false,
            ),
            None => config.default_upstream.clone(),
        };
        AccessPolicy::new(config).decide(&r, &base)
    }

    #[test]
    fn configured_registries_the_default_upstream_and_patterns_are_listed() {
        let mut c = Config::default();
        c.registries.push(RegistryConfig {
            host: "reg.local:5000".into(),
            ..RegistryConfig::default()
        });
        c.access.allow = vec!["*.corp.example".into(), "127.0.0.1:*".into()];
        // Registries on loopback are allowed as origins here; the list is what is tested.
        c.upstream.allow_loopback = true;
        assert_eq!(decide(&c, None, None), Decision::Listed);
        assert_eq!(decide(&c, Some("ns=docker.io"), None), Decision::Listed);
        assert_eq!(
            decide(&c, Some("ns=reg.local:5000"), None),
            Decision::Listed
        );
        assert_eq!(decide(&c, None, Some("a.corp.example")), Decision::Listed);
        assert_eq!(decide(&c, Some("ns=127.0.0.1:1"), None), Decision::Listed);
    }

    #[test]
    fn a_registry_the_requester_invents_is_proxied_or_refused() {
        let mut c = Config::default();
        c.upstream.allow_loopback = true;
        c.registries.push(RegistryConfig {
            host: "reg.local:5000".into(),
            ..RegistryConfig::default()
        });
        for (q, h) in [
            (Some("ns=stub.evil:80"), None),
            (None, Some("stub.evil:80")),
            (Some("ns=reg.local:5001"), None),
            (Some("ns=127.0.0.1:5000"), None),
            (None, Some("corp.example")),
        ] {
            assert_eq!(decide(&c, q, h), Decision::Proxy, "{q:?} {h:?}");
        }
        c.access.unlisted = Unlisted::Refuse;
        assert_eq!(decide(&c, Some("ns=stub.evil:80"), None), Decision::Refuse);
        // The path-prefix form names the registry too.
        let r = route(
            "/v2/stub.evil_80/app/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            AccessPolicy::new(&c).decide(&r, "http://stub.evil:80"),
            Decision::Refuse
        );
    }

    #[test]
    fn a_registry_at_a_forbidden_address_is_refused_even_when_listed() {
        let mut c = Config::default();
        c.access.allow = vec!["169.254.169.254".into(), "127.0.0.1:*".into()];
        for q in ["ns=169.254.169.254", "ns=127.0.0.1:5000"] {
            assert!(
                matches!(decide(&c, Some(q), None), Decision::Forbidden(_)),
                "{q}"
            );
        }
        // Loopback allowed: listed again; metadata never.
        c.upstream.allow_loopback = true;
        assert_eq!(
            decide(&c, Some("ns=127.0.0.1:5000"), None),
            Decision::Listed
        );
        assert!(matches!(
            decide(&c, Some("ns=169.254.169.254"), None),
            Decision::Forbidden(_)
        ));
    }

    #[test]
    fn unlisted_actions_parse() {
        assert_eq!("proxy".parse::<Unlisted>().unwrap(), Unlisted::Proxy);
        assert_eq!("refuse".parse::<Unlisted>().unwrap(), Unlisted::Refuse);
        assert!("allow".parse::<Unlisted>().is_err());
        assert_eq!(Unlisted::Refuse.to_string(), "refuse");
    }
}
