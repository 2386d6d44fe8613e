//! Which addresses an origin may have: the guard against server-side request forgery.
//!
//! A peer names the URL a supernode fetches (`register`, `seed`), and a runtime the registry a
//! dfdaemon fetches from. Without a guard, anyone who reaches them can make them fetch from
//! the cloud's metadata service (`169.254.169.254`, `fd00:ec2::254`) or from services bound to
//! the node's loopback, and get the answer back as a blob. So every origin request is checked:
//!
//! * its host, when the URL names an address, before the request is made;
//! * every address a host name resolves to, by the client's resolver, so a name that points
//!   (or is re-pointed, DNS rebinding) at a refused address is refused at connect time;
//! * every redirect target, the same way.
//!
//! Always refused: link-local (`169.254.0.0/16`, `fe80::/10`, which holds the metadata
//! services), `fd00:ec2::254`, unspecified (`0.0.0.0`, `::`), multicast and broadcast.
//! Refused unless [`AddressPolicy::allow_loopback`]: loopback (`127.0.0.0/8`, `::1`), for a
//! registry on the node itself. Private ranges (`10/8`, `192.168/16`, `fc00::/7` …) are
//! allowed: that is where in-cluster registries live. IPv4-mapped IPv6 addresses are judged
//! as the IPv4 address they carry.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use reqwest::{
    Url,
    dns::{Addrs, Name, Resolve, Resolving},
    redirect,
};

/// The metadata service's IPv6 address on AWS (Nitro).
const EC2_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Which origin addresses are allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Allow loopback addresses (a registry on the node itself, tests). Default off.
    pub allow_loopback: bool,
}

/// An origin address the policy refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("origin address {addr} is not allowed: {why}")]
pub struct ForbiddenAddress {
    /// The address.
    pub addr: IpAddr,
    /// Which rule refused it.
    pub why: &'static str,
}

impl AddressPolicy {
    /// Whether an origin may have address `addr`.
    ///
    /// # Errors
    /// [`ForbiddenAddress`] naming the rule.
    pub fn check(&self, addr: IpAddr) -> Result<(), ForbiddenAddress> {
        let ip = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 @ IpAddr::V4(_) => v4,
        };
        let why = match ip {
            IpAddr::V4(v4) if v4.is_link_local() => {
                Some("link-local (where cloud metadata services answer)")
            }
            IpAddr::V6(v6) if v6 == EC2_METADATA_V6 => Some("a cloud metadata service"),
            IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("link-local"),
            _ if ip.is_unspecified() => Some("unspecified"),
            _ if ip.is_multicast() => Some("multicast"),
            IpAddr::V4(v4) if v4.is_broadcast() => Some("broadcast"),
            _ if ip.is_loopback() && !self.allow_loopback => {
                Some("loopback (allow it with the origin's allow_loopback setting)")
            }
            _ => None,
        };
        match why {
            Some(why) => Err(ForbiddenAddress { addr, why }),
            None => Ok(()),
        }
    }

    /// Checks `url`'s host when it is an address (a name is checked when it is resolved).
    ///
    /// # Errors
    /// [`ForbiddenAddress`].
    pub fn check_url(&self, url: &Url) -> Result<(), ForbiddenAddress> {
        match url.host() {
            Some(url::Host::Ipv4(v4)) => self.check(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => self.check(IpAddr::V6(v6)),
            Some(url::Host::Domain(_)) | None => Ok(()),
        }
    }

    /// Applies the policy to a client: its resolver drops refused addresses (and fails a
    /// name with nothing else), and redirects (at most `max_redirects`) to a refused address
    /// are not followed.
    pub fn apply(
        self,
        builder: reqwest::ClientBuilder,
        max_redirects: usize,
    ) -> reqwest::ClientBuilder {
        builder
            .dns_resolver(Arc::new(GuardedResolver { policy: self }))
            .redirect(redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > max_redirects {
                    return attempt.error(format!("more than {max_redirects} redirects"));
                }
                match self.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(e) => attempt.error(e),
                }
            }))
    }
}

/// The system resolver, minus refused addresses.
struct GuardedResolver {
    policy: AddressPolicy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = all
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(%host, error = %e, "origin address dropped");
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(e)) => Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

/// The [`ForbiddenAddress`] somewhere in `e`'s chain of causes, if the policy is why it
/// failed.
pub fn forbidden_in(e: &(dyn std::error::Error + 'static)) -> Option<ForbiddenAddress> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(f) = c.downcast_ref::<ForbiddenAddress>() {
            return Some(*f);
        }
        cause = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_link_local_and_loopback_are_refused_private_ranges_are_not() {
        let strict = AddressPolicy::default();
        let local = AddressPolicy {
            allow_loopback: true,
        };
        let refused = [
            "169.254.169.254",
            "169.254.0.1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:169.254.169.254",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
        ];
        for a in refused {
            let ip: IpAddr = a.parse().unwrap();
            assert!(strict.check(ip).is_err(), "{a}");
            assert!(local.check(ip).is_err(), "{a} even with loopback allowed");
        }
        for a in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            let ip: IpAddr = a.parse().unwrap();
            let e = strict.check(ip).unwrap_err();
            assert!(e.why.contains("loopback"), "{a}: {e}");
            local.check(ip).unwrap();
        }
        for a in [
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.9",
            "8.8.8.8",
            "fd12::1",
            "2001:db8::1",
        ] {
            strict.check(a.parse().unwrap()).unwrap();
        }
    }

    #[test]
    fn urls_naming_an_address_are_checked_names_wait_for_the_resolver() {
        let strict = AddressPolicy::default();
        let check = |u: &str| strict.check_url(&Url::parse(u).unwrap());
        assert!(check("http://169.254.169.254/latest/meta-data/").is_err());
        assert!(check("http://[fd00:ec2::254]/").is_err());
        assert!(check("http://127.0.0.1:5000/v2/").is_err());
        check("http://10.0.0.5:5000/v2/").unwrap();
        check("https://registry.example/v2/").unwrap();
    }

    #[tokio::test]
    async fn a_name_that_resolves_only_to_refused_addresses_fails_with_the_reason() {
        let resolver = GuardedResolver {
            policy: AddressPolicy::default(),
        };
        let name: Name = "localhost".parse().unwrap();
        let err = match resolver.resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        let forbidden = forbidden_in(err.as_ref()).unwrap();
        assert!(forbidden.addr.is_loopback(), "{forbidden}");
        let allowed = GuardedResolver {
            policy: AddressPolicy {
                allow_loopback: true,
            },
        };
        let name: Name = "localhost".parse().unwrap();
        assert!(allowed.resolve(name).await.unwrap().next().is_some());
    }

    /// A one-answer HTTP server on loopback: records each request head it gets and answers
    /// every one with `answer`.
    async fn server(answer: String) -> (SocketAddr, Arc<parking_lot::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                log.lock()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        (addr, seen)
    }

    fn origin(allow_loopback: bool, forward: Option<&[&str]>) -> crate::Origin {
        crate::Origin::new(&crate::OriginConfig {
            addresses: AddressPolicy { allow_loopback },
            forward_headers: forward.map(|f| f.iter().map(|h| (*h).to_owned()).collect()),
            retry: crate::retry::RetryPolicy {
                retries: 0,
                ..crate::retry::RetryPolicy::default()
            },
            ..crate::OriginConfig::default()
        })
        .unwrap()
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

    #[tokio::test]
    async fn a_strict_origin_sends_nothing_to_loopback_by_address_or_by_name() {
        let (addr, seen) = server(OK.into()).await;
        let strict = origin(false, None);
        for url in [
            format!("http://{addr}/blob"),
            format!("http://localhost:{}/blob", addr.port()),
        ] {
            let e = strict.get(&url, &[]).await.unwrap_err();
            assert!(matches!(e, crate::OriginError::Forbidden(_)), "{url}: {e}");
            assert_eq!(
                e.reason(),
                None,
                "a local refusal, not the origin's failure"
            );
            let e = strict.check_access(&url, &[]).await.unwrap_err();
            assert!(matches!(e, crate::OriginError::Forbidden(_)), "{url}: {e}");
        }
        assert!(seen.lock().is_empty(), "a request reached the server");
        // Allowed, the same server answers.
        let resp = origin(true, None)
            .get(&format!("http://{addr}/blob"), &[])
            .await
            .unwrap();
        assert_eq!(resp.content_length, 2);
    }

    #[tokio::test]
    async fn a_redirect_to_the_metadata_service_is_not_followed() {
        let to = "HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/latest/meta-data/\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        let (addr, seen) = server(to.into()).await;
        let e = origin(true, None)
            .get(&format!("http://{addr}/blob"), &[])
            .await
            .unwrap_err();
        assert!(
            matches!(&e, crate::OriginError::Forbidden(f) if f.addr.to_string() == "169.254.169.254"),
            "{e}"
        );
        assert_eq!(seen.lock().len(), 1, "only the first hop was asked");
    }

    #[tokio::test]
    async fn only_the_listed_headers_reach_the_origin() {
        let (addr, seen) = server(OK.into()).await;
        let headers = [
            ("Authorization".to_owned(), "Bearer t".to_owned()),
            ("X-Internal-Secret".to_owned(), "s".to_owned()),
            ("Metadata-Flavor".to_owned(), "Google".to_owned()),
        ];
        origin(true, Some(&["authorization", "accept"]))
            .get(&format!("http://{addr}/blob"), &headers)
            .await
            .unwrap();
        let head = seen.lock()[0].to_ascii_lowercase();
        assert!(head.contains("authorization: bearer t"), "{head}");
        assert!(!head.contains("x-internal-secret"), "{head}");
        assert!(!head.contains("metadata-flavor"), "{head}");
    }
}
