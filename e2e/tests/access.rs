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

use damselfly_e2e::{
    Dfdaemon, Dfget, RecordingProxy, Supernode, TestRegistry, http, lying_http_server, random_blob,
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
            http::Request::get(format!(
                "{}/v2/{registry}/{repo}/blobs/{digest}",
                node.url()
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
