//! Access checked where the blob lives (issue 13 part 2), with real processes: a private
//! blob held by a node or the supernode goes only to requesters a registry the operator
//! listed said yes to, with their own credentials, and each registry sees only its own
//! requesters' credentials.
//!
//! Registries are Debian's `docker-registry` with htpasswd auth; a [`RecordingProxy`] in
//! front of each says what it was sent; the stub that vouches for anyone is
//! [`lying_http_server`] (200 to every request).
#![allow(clippy::unwrap_used)]

use std::{sync::Mutex, time::Duration};

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
};

use damselfly_common::TokenKey;
use damselfly_e2e::{
    Dfdaemon, Dfget, RecordingProxy, Supernode, TEST_CLUSTER_SECRET, TestRegistry, http,
    lying_http_server, random_blob,
};
use damselfly_proto::{
    AnnounceRequest, Announcement, FRAME_HEADER_LEN, PREAMBLE_LEN, PROTOCOL_VERSION, PieceRequest,
    PieceResponse, PieceStatus, decode, encode_announce_preamble, encode_frame, encode_preamble,
    frame_len,
};

const MIB: usize = 1024 * 1024;
/// What the stub registry answers to every request.
const STUB_BODY: &[u8] = b"the stub's own answer, not the blob";
const WAIT: Duration = Duration::from_secs(120);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Fails if `body` holds any 64-byte stretch of `blob` (so not even part of it leaked).
fn assert_no_blob_bytes(body: &[u8], blob: &[u8], what: &str) {
    assert!(body.len() < 4096, "{what}: {} bytes came back", body.len());
    if body.len() >= 64 {
        for window in body.windows(64) {
            assert!(
                !blob.windows(64).any(|w| w == window),
                "{what}: bytes of the blob came back"
            );
        }
    }
}

fn refusals(node: &Dfdaemon, reason: &str) -> f64 {
    node.metric(
        "damselfly_dfdaemon_access_refusals_total",
        Some(&format!("reason=\"{reason}\"")),
    )
    .unwrap()
}

fn local_bytes(node: &Dfdaemon) -> f64 {
    node.metric(
        "damselfly_dfdaemon_blob_bytes_total",
        Some("source=\"local\""),
    )
    .unwrap()
}

/// The three ways a request names its registry, each naming `registry`.
fn naming(
    node: &Dfdaemon,
    registry: &str,
    repo: &str,
    digest: &str,
) -> Vec<(String, http::Request)> {
    let path = format!("/v2/{repo}/blobs/{digest}");
    vec![
        (
            "?ns=".to_owned(),
            http::Request::get(format!("{}{path}?ns={registry}", node.url())),
        ),
        (
            "X-Damselfly-Registry".to_owned(),
            http::Request::get(format!("{}{path}", node.url()))
                .header("X-Damselfly-Registry", registry),
        ),
        (
            "path prefix".to_owned(),
            // The path-prefix spelling of `host:port` (no ':' in a repository path), written
            // out as a runtime sends it, so a change of the wire form fails here.
            http::Request::get(format!(
                "{}/v2/{}/{repo}/blobs/{digest}",
                node.url(),
                registry.replace(':', "_")
            )),
        ),
    ]
}

#[test]
fn a_cached_private_blob_is_never_served_on_the_word_of_a_registry_the_requester_names() {
    let _serial = serial();
    let registry = TestRegistry::builder().htpasswd("alice", "s3cret").start();
    let blob = random_blob(3 * MIB, 31);
    let digest = registry.push_blob("private/app", &blob);
    let stub = lying_http_server(STUB_BODY.to_vec()).to_string();
    let supernode = Supernode::builder().start();
    let data = tempfile::tempdir().unwrap();
    let node = Dfdaemon::builder()
        .supernode(supernode.addr())
        .data_dir(data.path())
        .allow_registries([registry.host()])
        .start();
    let own = format!(
        "{}/v2/private/app/blobs/{digest}?ns={}",
        node.url(),
        registry.host()
    );
    let first = http::get(&own, Some(("alice", "s3cret"))).unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(first.body == blob, "the owner gets the blob");
    let served_locally = local_bytes(&node);

    // Cached now. Without credentials, or with wrong ones: the registry's 401, no byte.
    for (what, creds) in [
        ("no credentials", None),
        ("wrong ones", Some(("alice", "nope"))),
    ] {
        let r = http::get(&own, creds).unwrap();
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_no_blob_bytes(&r.body, &blob, what);
    }
    assert_eq!(refusals(&node, "registry_denied"), 2.0);

    // Naming the stub, which says yes to everything: its own answer comes back (the
    // request is passed through to it), never the node's copy.
    for (what, request) in naming(&node, &stub, "private/app", &digest) {
        let r = request.send().unwrap();
        assert_eq!(r.status, 200, "{what}: the stub's status");
        assert!(
            r.body == STUB_BODY,
            "{what}: {} bytes came back, not the stub's body (the blob: {})",
            r.body.len(),
            r.body == blob
        );
    }
    assert_eq!(refusals(&node, "unlisted_proxied"), 3.0);
    assert_eq!(
        local_bytes(&node),
        served_locally,
        "nothing came from the cache"
    );
    assert!(node.log_text().contains("not on the allow list"));
    node.stop().unwrap();

    // The same node told to refuse other registries: 403, no byte, nothing asked of the stub.
    let node = Dfdaemon::builder()
        .supernode(supernode.addr())
        .data_dir(data.path())
        .allow_registries([registry.host()])
        .args(["--access-unlisted", "refuse"])
        .start();
    for (what, request) in naming(&node, &stub, "private/app", &digest) {
        let r = request.basic_auth("alice", "s3cret").send().unwrap();
        assert_eq!(r.status, 403, "{what}: {}", r.text());
        let err: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(err["errors"][0]["code"], "DENIED", "{what}");
        assert_no_blob_bytes(&r.body, &blob, &what);
    }
    assert_eq!(refusals(&node, "unlisted_refused"), 3.0);
    assert!(
        node.log_text()
            .contains("refused a request for a registry not on the allow list")
    );
    // Its owner still gets it, from the cache the restart kept.
    let own = format!(
        "{}/v2/private/app/blobs/{digest}?ns={}",
        node.url(),
        registry.host()
    );
    let again = http::get(&own, Some(("alice", "s3cret"))).unwrap();
    assert_eq!(again.status, 200);
    assert!(again.body == blob);
    assert_eq!(local_bytes(&node), blob.len() as f64);
    assert_eq!(registry.blob_get_count(&digest), 1);
}

#[test]
fn a_requester_of_another_registry_gets_the_blob_only_after_its_own_registrys_check() {
    let _serial = serial();
    let reg_a = TestRegistry::builder().htpasswd("alice", "pass-a").start();
    let reg_b = TestRegistry::builder().htpasswd("bob", "pass-b").start();
    let blob = random_blob(3 * MIB, 32);
    let digest = reg_a.push_blob("team-a/app", &blob);
    assert_eq!(reg_b.push_blob("team-b/app", &blob), digest);
    // Everything reaches the registries through these, so they say what each was sent.
    let a = RecordingProxy::start(reg_a.addr());
    let b = RecordingProxy::start(reg_b.addr());
    let supernode = Supernode::builder()
        .args(["--access-allow", &b.host()])
        .start();
    let node = |name: &str| {
        Dfdaemon::builder()
            .name(name)
            .supernode(supernode.addr())
            .allow_registries([a.host(), b.host()])
            .start()
    };
    let (node1, node2) = (node("node1"), node("node2"));
    let url = |node: &Dfdaemon, via: &RecordingProxy, repo: &str| {
        format!("{}/v2/{repo}/blobs/{digest}?ns={}", node.url(), via.host())
    };

    // Alice pulls from A through node1: node1 and the supernode hold the blob now.
    let r = http::get(&url(&node1, &a, "team-a/app"), Some(("alice", "pass-a"))).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == blob);
    let asked_of_a = a.requests().len();

    // Bob pulls the same digest from B: through node2 (from the swarm, the supernode
    // checking him at B) and through node1 (from its cache, node1 checking him at B).
    for node in [&node2, &node1] {
        let r = http::get(&url(node, &b, "team-b/app"), Some(("bob", "pass-b"))).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.body == blob);
    }
    let checks_at_b: Vec<_> = b
        .requests_by("bob")
        .into_iter()
        .filter(|r| r.method == "HEAD" && r.target.contains(&format!("/team-b/app/blobs/{digest}")))
        .collect();
    assert!(
        checks_at_b.len() >= 2,
        "node2's supernode and node1 each checked bob at B: {checks_at_b:?}"
    );
    assert_eq!(reg_b.blob_get_count(&digest), 0, "B never sent the blob");
    assert_eq!(
        reg_a.blob_get_count(&digest),
        1,
        "A sent it once, to alice's pull"
    );

    // Through B with a wrong password, with alice's credentials (good at A only), or none:
    // B's refusal on both nodes, no byte.
    for node in [&node1, &node2] {
        for (what, creds) in [
            ("bob, wrong password", Some(("bob", "nope"))),
            ("alice's credentials at B", Some(("alice", "pass-a"))),
            ("no credentials", None),
        ] {
            let r = http::get(&url(node, &b, "team-b/app"), creds).unwrap();
            assert_eq!(r.status, 401, "{what}: {}", r.text());
            assert_no_blob_bytes(&r.body, &blob, what);
        }
    }

    // A never saw bob's credentials, and was asked nothing at all after alice's pull.
    assert_eq!(a.requests_by("bob"), [], "A saw bob's token");
    assert_eq!(
        a.requests().len(),
        asked_of_a,
        "A was asked about other requesters: {:?}",
        &a.requests()[asked_of_a..]
    );
}

#[test]
fn the_supernode_admits_nobody_on_the_word_of_a_registry_it_does_not_list() {
    let _serial = serial();
    let registry = TestRegistry::builder().htpasswd("alice", "s3cret").start();
    let blob = random_blob(2 * MIB, 33);
    let digest = registry.push_blob("private/app", &blob);
    let stub = lying_http_server(STUB_BODY.to_vec());
    let supernode = Supernode::builder().start();
    let dir = tempfile::tempdir().unwrap();
    let mut owner = Dfget::new(
        &registry.blob_url("private/app", &digest),
        &dir.path().join("owner"),
    )
    .supernode(supernode.addr())
    .args([
        "-H",
        "Authorization: Basic YWxpY2U6czNjcmV0", // alice:s3cret
        "--keep-serving",
        "0s",
    ])
    .spawn()
    .unwrap();
    owner.wait(WAIT).unwrap();

    // The same digest asked for at the stub: refused without asking it, no output.
    let stub_url = format!("http://{stub}/v2/private/app/blobs/{digest}");
    let mut thief = Dfget::new(&stub_url, &dir.path().join("thief"))
        .supernode(supernode.addr())
        .args(["--no-back-source"])
        .spawn()
        .unwrap();
    let err = thief.wait(WAIT).unwrap_err().to_string();
    assert!(err.contains("access.allow"), "{err}");
    assert!(!dir.path().join("thief").exists());
    assert_eq!(
        supernode
            .metric("damselfly_supernode_access_refusals_total")
            .unwrap(),
        1.0
    );
    assert!(
        supernode
            .log_text()
            .contains("neither the blob's own nor on access.allow")
    );
}

/// One request on a fresh TCP peer connection to `addr` (after the preamble), our side
/// closed after it: the server's answer header and every byte that followed it.
fn ask_piece_port(addr: SocketAddr, request: &PieceRequest) -> (PieceResponse, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&encode_preamble()).unwrap();
    s.write_all(&encode_frame(request)).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    assert_eq!(
        all[..PREAMBLE_LEN],
        encode_preamble(),
        "a Damselfly peer answers"
    );
    let rest = &all[PREAMBLE_LEN..];
    let len = frame_len(rest).unwrap();
    let header: PieceResponse = decode(&rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len]).unwrap();
    (header, rest[FRAME_HEADER_LEN + len..].to_vec())
}

/// Issue 13 part 1: a node's piece port serves a private blob's pieces only against a piece
/// token the supernode issued to that requester for that blob (admitted after the registry
/// accepted its own credentials). Strangers (no token, a forged one, another peer's or
/// blob's, an expired one) get `Unauthorized` and not one byte, over pieces and
/// announcements alike, at the node and at the supernode; each refusal is logged and
/// counted. Admitted nodes still share the blob peer to peer.
#[test]
fn a_nodes_piece_port_serves_only_peers_the_supernode_admitted() {
    let _serial = serial();
    let registry = TestRegistry::builder().htpasswd("alice", "s3cret").start();
    let blob = random_blob(3 * MIB, 41);
    let digest = registry.push_blob("private/app", &blob);
    let supernode = Supernode::builder().start();
    let node = |name: &str| {
        Dfdaemon::builder()
            .name(name)
            .supernode(supernode.addr())
            .allow_registries([registry.host()])
            .start()
    };
    let mut a = node("node-a");
    let b = node("node-b");
    let url = |n: &Dfdaemon| {
        format!(
            "{}/v2/private/app/blobs/{digest}?ns={}",
            n.url(),
            registry.host()
        )
    };
    let first = http::get(&url(&a), Some(("alice", "s3cret"))).unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(first.body == blob, "the owner gets the blob through node A");

    // Node B, admitted with its requester's credentials, fetches the blob from node A (the
    // supernode is asked only for pieces no parent holds): tokens do not get in the way.
    let second = http::get(&url(&b), Some(("alice", "s3cret"))).unwrap();
    assert_eq!(second.status, 200, "{}", second.text());
    assert!(second.body == blob, "node B gets the blob");
    let from_peers = || {
        b.metric(
            "damselfly_dfdaemon_blob_bytes_total",
            Some("source=\"peer\""),
        )
        .unwrap()
    };
    // The download's sources are counted once it is committed, just after the last byte.
    assert!(
        damselfly_e2e::wait_until(Duration::from_secs(5), || from_peers() == blob.len() as f64),
        "node B got {} of {} bytes from node A:\n{}",
        from_peers(),
        blob.len(),
        b.log_text()
    );
    assert_eq!(
        refusals(&a, "piece_token"),
        0.0,
        "no admitted peer was refused"
    );

    // A stranger on the cluster network asks node A's piece port directly.
    let port = a.peer_addr().unwrap();
    let key = TokenKey::new(TEST_CLUSTER_SECRET.as_bytes()).unwrap();
    let forger = TokenKey::new(b"a secret the attacker made up, 32b").unwrap();
    let hour = Duration::from_secs(3600);
    let other_blob = format!("sha256:{}", "0".repeat(64));
    let ask = |token: Vec<u8>| PieceRequest {
        version: PROTOCOL_VERSION,
        task_id: digest.clone(),
        piece: 0,
        peer_id: 42,
        token,
        streamed: false,
    };
    let strangers = [
        ("no token", Vec::new(), "no piece token"),
        (
            "a forged token",
            forger.issue_for(&digest, 42, hour),
            "not valid",
        ),
        (
            "another peer's token",
            key.issue_for(&digest, 43, hour),
            "not valid",
        ),
        (
            "another blob's token",
            key.issue_for(&other_blob, 42, hour),
            "not valid",
        ),
        ("an expired token", key.issue(&digest, 42, 1), "expired"),
    ];
    for (what, token, why) in &strangers {
        let (header, after) = ask_piece_port(port, &ask(token.clone()));
        assert_eq!(
            PieceStatus::try_from(header.status),
            Ok(PieceStatus::Unauthorized),
            "{what}"
        );
        assert!(header.reason.contains(why), "{what}: {:?}", header.reason);
        assert_eq!(header.length, 0, "{what}");
        assert!(
            after.is_empty(),
            "{what}: {} bytes followed the refusal",
            after.len()
        );
    }

    // Announcements of what node A holds: refused too, with nothing about its pieces.
    let mut s = TcpStream::connect(port).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&encode_announce_preamble()).unwrap();
    s.write_all(&encode_frame(&AnnounceRequest {
        version: PROTOCOL_VERSION,
        task_id: digest.clone(),
        peer_id: 42,
        token: Vec::new(),
        arriving: false,
    }))
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let rest = &all[PREAMBLE_LEN..];
    let len = frame_len(rest).unwrap();
    let a_says: Announcement = decode(&rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len]).unwrap();
    assert_eq!(
        PieceStatus::try_from(a_says.status),
        Ok(PieceStatus::Unauthorized)
    );
    assert!(a_says.bitfield.is_empty() && a_says.pieces.is_empty());
    assert_eq!(
        rest.len(),
        FRAME_HEADER_LEN + len,
        "closed after the refusal"
    );

    // The supernode, which serves pieces as the seed, refuses the same way.
    let seed_piece = format!(
        "http://{}/api/v1/tasks/{digest}/pieces/0?peer=42",
        supernode.addr()
    );
    let r = http::get(&seed_piece, None).unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert_no_blob_bytes(&r.body, &blob, "the supernode without a token");
    let r = http::Request::get(seed_piece.clone())
        .header(
            "x-damselfly-piece-token",
            hex::encode(forger.issue_for(&digest, 42, hour)),
        )
        .send()
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert_no_blob_bytes(&r.body, &blob, "the supernode with a forged token");

    // Every refusal is counted and logged where it happened.
    assert_eq!(refusals(&a, "piece_token"), strangers.len() as f64 + 1.0);
    let sn_refusals = damselfly_e2e::metric_sum(
        &supernode.metrics().unwrap(),
        "damselfly_supernode_access_refusals_total",
        Some("reason=\"PieceToken\""),
    );
    assert_eq!(sn_refusals, 2.0);
    assert!(
        a.log_text()
            .contains("refused a piece request without a valid piece token"),
        "node A logs its refusals"
    );

    // The port does serve this blob, to a token the cluster secret made for the requester:
    // the refusals above were about the token and nothing else.
    let (header, after) = ask_piece_port(port, &ask(key.issue_for(&digest, 42, hour)));
    assert_eq!(PieceStatus::try_from(header.status), Ok(PieceStatus::Ok));
    assert_eq!(header.length, after.len() as u64);
    assert!(
        !after.is_empty() && blob.starts_with(&after),
        "a valid token gets the first piece of the blob"
    );
}
