//! The HTTP listeners' limits on the real daemons: a client that trickles its request
//! headers, or sends none, is disconnected after `http.header_read_timeout`, and the
//! listener goes on serving everyone else. And the supernode's caps on origin fetches, on
//! tasks held in memory and on the peers admitted to one task.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use damselfly_e2e::{Dfdaemon, Dfget, Fault, FaultyOrigin, Supernode, http, random_blob};
use damselfly_proto::{LeaveRequest, PROTOCOL_VERSION, RegisterRequest, RegisterResponse};
use prost::Message as _;

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

/// A signed registration of `url` for peer `peer` (listening nowhere): the status and the
/// `Retry-After` header.
/// A registration's answer: status, `Retry-After`, and the session token on success.
struct Registered {
    status: u16,
    retry: Option<String>,
    session: Vec<u8>,
}

fn register(sn: &Supernode, url: &str, peer: u64) -> Registered {
    let body = RegisterRequest {
        version: PROTOCOL_VERSION,
        url: url.to_owned(),
        peer_id: peer,
        peer_addr: "127.0.0.1:9".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let r = http::Request::post(format!("http://{}/api/v1/register", sn.addr()))
        .signed()
        .body(body)
        .send()
        .unwrap();
    let session = if r.status == 200 {
        damselfly_proto::decode::<RegisterResponse>(&r.body)
            .unwrap()
            .session_token
    } else {
        Vec::new()
    };
    Registered {
        status: r.status,
        retry: r.header("retry-after").map(str::to_owned),
        session,
    }
}

/// `cdn.max_fetches`: with one fetch running, a registration that would start another gets
/// 503 with `Retry-After` and nothing is asked of its origin; joining the running fetch is
/// not refused; once it ends, the other blob is fetched.
#[test]
fn the_supernode_caps_its_origin_fetches() {
    // 256 KiB at 64 KiB/s: the first fetch runs about 4 s.
    let slow = FaultyOrigin::always(random_blob(256 << 10, 81), Fault::Trickle(64 << 10));
    let other = FaultyOrigin::start(random_blob(64 << 10, 82), Vec::new());
    let sn = Supernode::builder()
        .args(["--cdn-max-fetches", "1"])
        .start();
    let dir = tempfile::tempdir().unwrap();
    let mut first = Dfget::new(&slow.blob_url("app/slow"), &dir.path().join("slow"))
        .supernode(sn.addr())
        .args(["--no-back-source"])
        .spawn()
        .unwrap();
    assert!(
        damselfly_e2e::wait_until(Duration::from_secs(10), || !slow.gets().is_empty()),
        "the first fetch never started"
    );
    let Registered { status, retry, .. } = register(&sn, &other.blob_url("app/other"), 7);
    assert_eq!(status, 503);
    assert_eq!(retry.as_deref(), Some("5"));
    assert!(other.requests().is_empty(), "{:?}", other.requests());
    // Joining the running fetch is not a new fetch.
    assert_eq!(register(&sn, &slow.blob_url("app/slow"), 8).status, 200);
    assert_eq!(
        damselfly_e2e::metric_sum(
            &sn.metrics().unwrap(),
            "damselfly_supernode_registrations_total",
            Some("outcome=\"Busy\""),
        ),
        1.0
    );
    first.wait(Duration::from_secs(60)).unwrap();
    // The slot is free again once the first fetch has ended.
    assert!(
        damselfly_e2e::wait_until(Duration::from_secs(5), || register(
            &sn,
            &other.blob_url("app/other"),
            9
        )
        .status
            == 200),
        "the second blob is still refused"
    );
    assert!(!other.gets().is_empty());
}

fn leave(sn: &Supernode, task_id: &str, peer: u64, session: &[u8]) {
    let body = LeaveRequest {
        version: PROTOCOL_VERSION,
        task_id: task_id.to_owned(),
        peer_id: peer,
        session_token: session.to_vec(),
    }
    .encode_to_vec();
    let r = http::Request::post(format!("http://{}/api/v1/leave", sn.addr()))
        .signed()
        .body(body)
        .send()
        .unwrap();
    assert!((200..300).contains(&r.status), "{}: {}", r.status, r.text());
}

fn busy(sn: &Supernode) -> f64 {
    damselfly_e2e::metric_sum(
        &sn.metrics().unwrap(),
        "damselfly_supernode_registrations_total",
        Some("outcome=\"Busy\""),
    )
}

/// `cdn.max_tasks`: with two blobs in memory, each with a live peer, a third blob is
/// refused with 503 and `Retry-After`, and its origin is not asked; once a task has no live
/// peer left it makes room, and the third blob is fetched.
#[test]
fn the_supernode_caps_the_tasks_it_holds_in_memory() {
    let origins: Vec<FaultyOrigin> = (0..3)
        .map(|i| FaultyOrigin::start(random_blob(64 << 10, 90 + i), Vec::new()))
        .collect();
    let urls: Vec<String> = origins
        .iter()
        .enumerate()
        .map(|(i, o)| o.blob_url(&format!("app/t{i}")))
        .collect();
    let sn = Supernode::builder()
        .args(["--cdn-max-tasks", "2", "--cdn-max-fetches", "2"])
        .start();
    let first = register(&sn, &urls[0], 1);
    assert_eq!(first.status, 200);
    assert_eq!(register(&sn, &urls[1], 2).status, 200);
    let Registered { status, retry, .. } = register(&sn, &urls[2], 3);
    assert_eq!(status, 503);
    assert_eq!(retry.as_deref(), Some("5"));
    assert!(
        origins[2].requests().is_empty(),
        "{:?}",
        origins[2].requests()
    );
    assert_eq!(busy(&sn), 1.0);
    // Joining a task in memory is never refused.
    assert_eq!(register(&sn, &urls[1], 4).status, 200);
    // The first blob's only peer leaves: its task can go.
    let task = format!("sha256:{}", urls[0].rsplit_once("sha256:").unwrap().1);
    leave(&sn, &task, 1, &first.session);
    assert_eq!(register(&sn, &urls[2], 3).status, 200);
    assert!(!origins[2].gets().is_empty());
}

/// `scheduler.max_peers_per_task`: a task with two live admitted peers refuses a third with
/// 503 and `Retry-After`; once one of them has left the swarm, the third is admitted.
#[test]
fn the_supernode_caps_the_peers_it_admits_to_a_task() {
    let origin = FaultyOrigin::start(random_blob(64 << 10, 95), Vec::new());
    let url = origin.blob_url("app/peers");
    let sn = Supernode::builder()
        .args(["--scheduler-max-peers-per-task", "2"])
        .start();
    let first = register(&sn, &url, 1);
    assert_eq!(first.status, 200);
    assert_eq!(register(&sn, &url, 2).status, 200);
    // A peer already admitted registers again freely.
    assert_eq!(register(&sn, &url, 2).status, 200);
    let Registered { status, retry, .. } = register(&sn, &url, 3);
    assert_eq!(status, 503);
    assert_eq!(retry.as_deref(), Some("5"));
    assert_eq!(busy(&sn), 1.0);
    let task = format!("sha256:{}", url.rsplit_once("sha256:").unwrap().1);
    leave(&sn, &task, 1, &first.session);
    assert_eq!(register(&sn, &url, 3).status, 200);
}
