//! The HTTP listeners' limits on the real daemons: a client that trickles its request
//! headers, or sends none, is disconnected after `http.header_read_timeout`, and the
//! listener goes on serving everyone else.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use damselfly_e2e::{Dfdaemon, Supernode, http};

/// The test's header-read timeout (the default is 10 s).
const TIMEOUT: Duration = Duration::from_secs(1);

fn limit_flags() -> [String; 2] {
    [
        "--http-header-read-timeout".to_owned(),
        humantime::format_duration(TIMEOUT).to_string(),
    ]
}

/// Opens a connection that sends half a request line and then nothing, and one that sends
/// nothing at all; checks that healthy requests are served meanwhile and that both are cut
/// after the timeout (not before, and not long after).
fn slow_clients_are_cut(addr: SocketAddr) {
    let started = Instant::now();
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /heal").unwrap();
    let mut silent = TcpStream::connect(addr).unwrap();
    for _ in 0..3 {
        let ok = http::get(&format!("http://{addr}/healthy"), None).unwrap();
        assert_eq!(ok.status, 200, "{}", ok.text());
    }
    for (name, conn) in [("slow", &mut slow), ("silent", &mut silent)] {
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut rest = Vec::new();
        // EOF (or a reset): the daemon closed it. A read timeout would be an error here.
        match conn.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{name} connection not closed: {e}"),
        }
        let after = started.elapsed();
        assert!(
            after >= TIMEOUT && after < TIMEOUT * 5,
            "{name} connection closed after {after:?}"
        );
    }
    let ok = http::get(&format!("http://{addr}/healthy"), None).unwrap();
    assert_eq!(ok.status, 200);
}

#[test]
fn dfdaemon_cuts_a_client_that_never_finishes_its_headers() {
    let dfdaemon = Dfdaemon::builder().args(limit_flags()).start();
    slow_clients_are_cut(dfdaemon.addr());
    dfdaemon.stop().unwrap();
}

#[test]
fn supernode_cuts_a_client_that_never_finishes_its_headers() {
    let supernode = Supernode::builder().args(limit_flags()).start();
    slow_clients_are_cut(supernode.addr());
    supernode.stop().unwrap();
}
