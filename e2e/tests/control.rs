//! An authenticated control plane (issue 13 part 3), with real processes: with a cluster
//! secret, nobody without it registers, syncs, leaves, seeds, announces a node or preheats a
//! node, so an anonymous caller can no longer make the supernode fetch an internal URL; and
//! Harbor's credential-less preheat generation 1 is off unless its networks are listed.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use damselfly_e2e::{Dfdaemon, FaultyOrigin, Supernode, http, random_blob};
use damselfly_proto::{PROTOCOL_VERSION, RegisterRequest};
use prost::Message as _;

fn refusals(sn: &Supernode, reason: &str) -> f64 {
    damselfly_e2e::metric_sum(
        &sn.metrics().unwrap(),
        "damselfly_supernode_access_refusals_total",
        Some(&format!("reason=\"{reason}\"")),
    )
}

/// A registration of `url` for a peer that listens nowhere, as protobuf.
fn register_body(url: &str) -> Vec<u8> {
    RegisterRequest {
        version: PROTOCOL_VERSION,
        url: url.to_owned(),
        peer_id: 0xdead_beef,
        peer_addr: "127.0.0.1:9".into(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn seed_body(origin: &FaultyOrigin) -> String {
    serde_json::json!({
        "url": origin.blob_url("internal/secret"),
        "digest": origin.digest(),
    })
    .to_string()
}

#[test]
fn an_anonymous_caller_cannot_make_the_supernode_fetch_an_internal_url() {
    // A service on the cluster network the supernode can reach (loopback is allowed here,
    // as in the harness, so only the credential stands in the way).
    let origin = FaultyOrigin::start(random_blob(256 << 10, 91), Vec::new());
    let sn = Supernode::builder().start();
    let api = format!("http://{}", sn.addr());
    let url = origin.blob_url("internal/secret");

    let anonymous = [
        http::Request::post(format!("{api}/api/v1/register")).body(register_body(&url)),
        http::Request::post(format!("{api}/api/v1/seed"))
            .header("content-type", "application/json")
            .body(seed_body(&origin)),
        // A well-formed signature made with another secret.
        http::Request::post(format!("{api}/api/v1/register"))
            .body(register_body(&url))
            .signed_with_secret("not the cluster's secret, 32 bytes"),
    ];
    for req in anonymous {
        let r = req.send().unwrap();
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(
            r.header("www-authenticate"),
            Some("Damselfly-HMAC-SHA256"),
            "{}",
            r.text()
        );
    }
    assert!(
        origin.requests().is_empty(),
        "the supernode reached the internal URL: {:?}",
        origin.requests()
    );
    assert_eq!(refusals(&sn, "ControlCredential"), 3.0);
    assert!(sn.log_text().contains("control request refused"));

    // The same seed, signed as a cluster member: the supernode fetches it (the refusals
    // above were the credential's doing, not something else in the request).
    let r = http::Request::post(format!("{api}/api/v1/seed"))
        .signed()
        .header("content-type", "application/json")
        .body(seed_body(&origin))
        .timeout(Duration::from_secs(30))
        .send()
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!origin.gets().is_empty());
}

#[test]
fn a_signature_is_bound_to_its_request() {
    let sn = Supernode::builder().start();
    let api = format!("http://{}", sn.addr());
    // A signature seen on the wire, for an announcement, cannot carry another body: the
    // body is what the signature covers. Sent by hand: the header of a signed request for
    // one body, on another.
    let honest = r#"{"hostname":"node-a","ip":"10.0.0.1","mirror":"http://10.0.0.1:65001"}"#;
    let key =
        damselfly_common::ControlKey::new(damselfly_e2e::TEST_CLUSTER_SECRET.as_bytes()).unwrap();
    let auth = key.sign("POST", "/api/v1/nodes", honest.as_bytes());
    let hijack = r#"{"hostname":"node-a","ip":"10.6.6.6","mirror":"http://10.6.6.6:65001"}"#;
    let r = http::Request::post(format!("{api}/api/v1/nodes"))
        .header("authorization", auth.as_str())
        .header("content-type", "application/json")
        .body(hijack)
        .send()
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("not valid"), "{}", r.text());
    // Nor be moved to another path.
    let r = http::Request::post(format!("{api}/api/v1/seed"))
        .header("authorization", auth.as_str())
        .header("content-type", "application/json")
        .body(honest)
        .send()
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    // A signature from a clock ten minutes ahead: refused, and said why.
    let ahead = key.sign_at(
        "POST",
        "/api/v1/nodes",
        honest.as_bytes(),
        damselfly_common::token::unix_now() + 600,
    );
    let r = http::Request::post(format!("{api}/api/v1/nodes"))
        .header("authorization", ahead.as_str())
        .header("content-type", "application/json")
        .body(honest)
        .send()
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("clock"), "{}", r.text());
    // The request it was made for passes.
    let r = http::Request::post(format!("{api}/api/v1/nodes"))
        .header("authorization", auth.as_str())
        .header("content-type", "application/json")
        .body(honest)
        .send()
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
}

#[test]
fn a_nodes_preheat_endpoint_takes_orders_from_cluster_members_only() {
    let sn = Supernode::builder().start();
    let node = Dfdaemon::builder().supernode(sn.addr()).start();
    let origin = FaultyOrigin::start(random_blob(128 << 10, 93), Vec::new());
    let body = seed_body(&origin);
    let url = format!("{}/api/v1/preheat", node.url());
    let r = http::Request::post(&url)
        .header("content-type", "application/json")
        .body(body.as_str())
        .send()
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        r.text().contains("control-plane credential"),
        "{}",
        r.text()
    );
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
    assert_eq!(
        node.metric(
            "damselfly_dfdaemon_access_refusals_total",
            Some("reason=\"control_credential\"")
        )
        .unwrap(),
        1.0
    );
}

#[test]
fn a_node_without_the_secret_is_told_why_the_supernode_refuses_it() {
    let sn = Supernode::builder().start();
    let mut node = Dfdaemon::builder()
        .supernode(sn.addr())
        .no_cluster_secret()
        .start();
    node.daemon_mut()
        .wait_for_log("cluster.secret_file on both", Duration::from_secs(10))
        .unwrap();
    assert!(refusals(&sn, "ControlCredential") >= 1.0);
}

#[test]
fn preheat_generation_1_is_off_unless_its_networks_are_listed() {
    let create = serde_json::json!({"type": "image", "url": "http://127.0.0.1:9/v2/x/manifests/1"})
        .to_string();
    // Off by default.
    let off = Supernode::builder().start();
    for (method, path) in [
        ("GET", "/_ping"),
        ("POST", "/preheats"),
        ("GET", "/preheats/1"),
    ] {
        let url = format!("http://{}{path}", off.addr());
        let req = if method == "GET" {
            http::Request::get(url)
        } else {
            http::Request::post(url).body(create.as_str())
        };
        let r = req.send().unwrap();
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert!(r.text().contains("preheat.v1_sources"), "{}", r.text());
    }
    // Listed networks that do not hold the caller (this test runs on loopback).
    let elsewhere = Supernode::builder()
        .args(["--preheat-v1-source", "10.0.0.0/8"])
        .start();
    let r = http::get(&format!("http://{}/_ping", elsewhere.addr()), None).unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("127.0.0.1"), "{}", r.text());
    assert_eq!(refusals(&elsewhere, "PreheatV1Source"), 1.0);
    // The caller's network listed: served.
    let here = Supernode::builder()
        .args(["--preheat-v1-source", "127.0.0.0/8"])
        .start();
    let r = http::get(&format!("http://{}/_ping", here.addr()), None).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Switching a running cluster to a secret: supernodes first, with signatures not yet
/// enforced. A node that has no secret yet still pulls through the swarm, and the supernode
/// counts its unsigned calls, so the operator sees when every node has switched.
#[test]
fn a_supernode_not_enforcing_signatures_serves_nodes_without_the_secret_and_counts_them() {
    let registry = damselfly_e2e::TestRegistry::start();
    let blob = random_blob(2 << 20, 94);
    let digest = registry.push_blob("e2e/switch", &blob);
    let sn = Supernode::builder()
        .args(["--cluster-enforce-signatures", "false"])
        .start();
    let node = Dfdaemon::builder()
        .supernode(sn.addr())
        .no_cluster_secret()
        .start();
    let url = format!(
        "{}/v2/e2e/switch/blobs/{digest}?ns={}",
        node.url(),
        registry.host()
    );
    let r = http::get(&url, None).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == blob, "wrong bytes");
    // Through the swarm: the supernode fetched it once, the node took it from there.
    assert_eq!(registry.blob_get_count(&digest), 1);
    assert!(
        sn.metric("damselfly_supernode_control_unsigned_accepted_total")
            .unwrap()
            >= 2.0
    );
    assert_eq!(refusals(&sn, "ControlCredential"), 0.0);
}
