//! Where a peer is, as the supernode observed it: the identity bans and bad-piece reports
//! are counted by.
//!
//! A peer chooses its own id, so an id is no identity: a banned liar could come back under a
//! new one, and one process with two ids could count as two witnesses against an honest
//! peer. The address a registration *came from* is not chosen the same way (a TCP peer
//! cannot spoof it and still get the answer), so the scheduler bans and counts reporters by
//! [`PeerHost`] instead.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The host a peer registered from.
///
/// Peers on one machine share its identity, except on loopback: processes on the
/// supernode's own machine (tests, a single-host setup) are told apart by the piece port
/// they advertise, which they choose; that machine is as trusted as the supernode itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerHost {
    ip: IpAddr,
    /// The advertised piece port on loopback, else 0.
    port: u16,
}

impl PeerHost {
    /// The host of a peer whose registration came from `source` and which serves pieces at
    /// `advertised`. IPv4-mapped IPv6 sources count as the IPv4 address they carry.
    pub fn observed(source: IpAddr, advertised: SocketAddr) -> Self {
        let ip = source.to_canonical();
        let port = if ip.is_loopback() {
            advertised.port()
        } else {
            0
        };
        Self { ip, port }
    }

    /// The host of a peer that is where it says it is (the simulator, tests).
    pub fn of(addr: SocketAddr) -> Self {
        Self::observed(addr.ip(), addr)
    }
}

impl fmt::Display for PeerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port == 0 {
            write!(f, "{}", self.ip)
        } else {
            write!(f, "{}", SocketAddr::new(self.ip, self.port))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_host_is_its_address_whatever_port_it_advertises() {
        let a = PeerHost::observed("10.0.0.7".parse().unwrap(), sa("10.0.0.7:65001"));
        let b = PeerHost::observed("10.0.0.7".parse().unwrap(), sa("10.0.0.9:7000"));
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "10.0.0.7");
        let mapped = PeerHost::observed("::ffff:10.0.0.7".parse().unwrap(), sa("10.0.0.7:1"));
        assert_eq!(mapped, a);
        assert_ne!(a, PeerHost::of(sa("10.0.0.8:65001")));
    }

    #[test]
    fn loopback_processes_are_told_apart_by_their_port() {
        let lo = "127.0.0.1".parse().unwrap();
        let a = PeerHost::observed(lo, sa("127.0.0.1:7001"));
        let b = PeerHost::observed(lo, sa("127.0.0.1:7002"));
        assert_ne!(a, b);
        assert_eq!(a.to_string(), "127.0.0.1:7001");
        let v6 = PeerHost::observed("::1".parse().unwrap(), sa("[::1]:7001"));
        assert_eq!(v6.to_string(), "[::1]:7001");
    }
}
