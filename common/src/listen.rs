//! TCP listeners for the daemons' sockets, dual stack where the system allows.
//!
//! Every listener the daemons open (dfdaemon's mirror and peer port, the supernode's API,
//! dfget's piece server) goes through [`tcp_listener`], so one configured `[::]:port` accepts
//! IPv6 and IPv4 clients alike (IPv4 ones arrive as `::ffff:a.b.c.d`) whatever the host's
//! `net.ipv6.bindv6only` says. [`tcp_listener_or_v4`] is the same with the fallback for hosts
//! where IPv6 is switched off: `[::]:port` becomes `0.0.0.0:port`, with a warning.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tokio::net::TcpListener;
use tracing::warn;

/// A TCP listener on `addr`: dual stack (`IPV6_V6ONLY` cleared) when `addr` is IPv6, where the
/// system allows, and `SO_REUSEADDR` so a restarted daemon can bind its port again while
/// connections of the previous process linger in `TIME_WAIT`. Must be called within a Tokio
/// runtime.
///
/// # Errors
/// The address cannot be bound.
pub fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // Best effort: a host that forbids mapped addresses still serves IPv6 on this socket.
        let _ = socket.set_only_v6(false);
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Whether `addr` is the IPv6 wildcard, the one address that has an IPv4 stand-in.
pub fn is_v6_wildcard(addr: SocketAddr) -> bool {
    addr.ip() == Ipv6Addr::UNSPECIFIED
}

/// The IPv4 stand-in for the IPv6 wildcard `addr`: `0.0.0.0` on the same port.
pub fn v4_wildcard(addr: SocketAddr) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()))
}

/// Whether a failure to bind the IPv6 wildcard may be IPv6 being off on this host (no IPv6
/// socket family, no IPv6 address), rather than something `0.0.0.0` would hit too.
pub fn may_be_ipv6_off(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
    )
}

/// [`tcp_listener`] on `addr`; when `addr` is `[::]:port` and the host cannot bind it (IPv6
/// disabled), `0.0.0.0:port` instead, with a warning naming `what` the socket is for.
///
/// # Errors
/// Neither address can be bound (or `addr` is not the IPv6 wildcard and cannot be bound).
pub fn tcp_listener_or_v4(addr: SocketAddr, what: &str) -> io::Result<TcpListener> {
    match tcp_listener(addr) {
        Ok(l) => Ok(l),
        Err(e) if is_v6_wildcard(addr) && may_be_ipv6_off(&e) => {
            let v4 = v4_wildcard(addr);
            warn!(
                listen = %addr, fallback = %v4, error = %e,
                "cannot listen on IPv6 (disabled on this host?): {what} listens on IPv4 only"
            );
            tcp_listener(v4)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn has_ipv6_loopback() -> bool {
        std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
    }

    /// One `[::]` listener serves an IPv4 client (as a mapped address) and an IPv6 one.
    #[tokio::test]
    async fn a_wildcard_v6_listener_accepts_ipv4_and_ipv6_connections() {
        if !has_ipv6_loopback() {
            eprintln!("skipped: this host has no IPv6 loopback (::1)");
            return;
        }
        let listener = tcp_listener(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))).unwrap();
        let port = listener.local_addr().unwrap().port();
        for client in [
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
        ] {
            let mut c = tokio::net::TcpStream::connect(client).await.unwrap();
            let (mut s, remote) = listener.accept().await.unwrap();
            match client {
                SocketAddr::V4(_) => assert_eq!(
                    remote.ip(),
                    Ipv4Addr::LOCALHOST.to_ipv6_mapped(),
                    "IPv4 clients arrive mapped"
                ),
                SocketAddr::V6(_) => assert_eq!(remote.ip(), Ipv6Addr::LOCALHOST),
            }
            c.write_all(b"hi").await.unwrap();
            let mut buf = [0u8; 2];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"hi");
        }
    }

    /// The IPv4-only form stays IPv4-only, and an address in use is an error, not a fallback
    /// to another address.
    #[tokio::test]
    async fn a_specific_or_busy_address_is_not_replaced() {
        let v4 = tcp_listener(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        let addr = v4.local_addr().unwrap();
        assert!(addr.is_ipv4());
        let busy = tcp_listener_or_v4(addr, "test").unwrap_err();
        assert_eq!(busy.kind(), io::ErrorKind::AddrInUse);
        assert!(!may_be_ipv6_off(&busy));
        let family = io::Error::from_raw_os_error(97); // EAFNOSUPPORT: no IPv6 in the kernel
        assert!(may_be_ipv6_off(&family));
        assert_eq!(
            v4_wildcard("[::]:65001".parse().unwrap()),
            "0.0.0.0:65001".parse::<SocketAddr>().unwrap()
        );
        assert!(is_v6_wildcard("[::]:1".parse().unwrap()));
        assert!(!is_v6_wildcard("[::1]:1".parse().unwrap()));
    }
}
