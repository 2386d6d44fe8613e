//! Harbor preheat, replayed: the requests Harbor's two provider generations send (health,
//! create, poll), against a real supernode and a real registry with authentication.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use damselfly_e2e::{Dfget, PushedImage, Supernode, TestImage, TestRegistry, http, sha256_digest};
use serde_json::{Value, json};

const MIB: usize = 1024 * 1024;
const TOKEN: &str = "harbor-provider-token";

/// What Harbor puts in a job's headers: a short-lived registry token scoped to the repository.
fn harbor_token(s: &Setup, repo: &str) -> String {
    format!("Bearer {}", s.registry.token(repo, &["pull"]))
}

struct Setup {
    registry: TestRegistry,
    supernode: Supernode,
    pushed: PushedImage,
    api: String,
}

fn setup(repo: &str, seed: u64) -> Setup {
    let registry = TestRegistry::builder().token_auth().start();
    let image = TestImage::busybox("preheated", 3 * MIB, seed).unwrap();
    let pushed = registry.push_test_image(repo, "1", &image).unwrap();
    // Generation 1 carries no credential: allowed from this machine only.
    let supernode = Supernode::builder()
        .args([
            "--preheat-token",
            TOKEN,
            "--preheat-v1-source",
            "127.0.0.0/8",
        ])
        .start();
    let api = format!("http://{}", supernode.addr());
    Setup {
        registry,
        supernode,
        pushed,
        api,
    }
}

fn blobs(p: &PushedImage) -> Vec<String> {
    let mut v = vec![p.config_digest.clone()];
    v.extend(p.layer_digests.iter().cloned());
    v
}

fn json_of(r: &http::Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

/// Harbor polls every 10 s; tests poll faster.
fn poll(url: &str, auth: Option<&str>, field: &str, done: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut req = http::Request::get(url).header("accept", "application/json");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let v = json_of(&r);
        if done.contains(&v[field].as_str().unwrap_or_default()) {
            return v;
        }
        assert!(Instant::now() < deadline, "job never finished: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls a generation-1 job until it is SUCCESS or FAIL.
fn poll_v1(url: &str) -> Value {
    poll(url, None, "status", &["SUCCESS", "FAIL"])
}

/// Polls a generation-2 job until it is SUCCESS or FAILURE.
fn poll_v2(url: &str, bearer: &str) -> Value {
    poll(url, Some(bearer), "state", &["SUCCESS", "FAILURE"])
}

fn post_json(url: &str, body: &Value, auth: Option<&str>) -> http::Response {
    let mut req = http::Request::post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(body.to_string());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    req.send().unwrap()
}

#[test]
fn generation_1_preheats_then_pulls_make_no_origin_requests() {
    let s = setup("library/app1", 31);
    let manifest_url = s.registry.manifest_url("library/app1", "1");
    let auth = harbor_token(&s, "library/app1");
    assert!(
        http::get(&format!("{}/_ping", s.api), None)
            .unwrap()
            .is_success()
    );
    let create = json!({
        "type": "image", "url": manifest_url, "headers": {"Authorization": auth},
        "image": "library/app1", "tag": "1", "digest": s.pushed.manifest_digest,
    });
    let r = post_json(&format!("{}/preheats", s.api), &create, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let id = json_of(&r)["ID"].as_str().unwrap().to_owned();
    let v = poll_v1(&format!("{}/preheats/{id}", s.api));
    assert_eq!(v["status"], "SUCCESS", "{v}");
    assert!(v["startTime"].as_str().unwrap().ends_with('Z'));
    assert!(v["finishTime"].as_str().unwrap().ends_with('Z'));
    for d in blobs(&s.pushed) {
        assert_eq!(s.registry.blob_get_count(&d), 1, "{d}");
    }
    let before = s.registry.access_log().len();

    // Nodes pull every blob now: the registry is not asked again.
    let dir = tempfile::tempdir().unwrap();
    for d in blobs(&s.pushed) {
        let out = dir.path().join(d.trim_start_matches("sha256:"));
        let run = Dfget::new(&s.registry.blob_url("library/app1", &d), &out)
            .supernode(s.supernode.addr())
            .args(["-H".to_owned(), format!("Authorization: {auth}")])
            .spawn()
            .unwrap();
        let mut daemon = run.daemon;
        let status = daemon.wait_exit(Duration::from_secs(60)).unwrap();
        assert!(status.success(), "{}", daemon.log_text());
        assert_eq!(sha256_digest(&std::fs::read(&out).unwrap()), d);
    }
    let after: Vec<_> = s.registry.access_log()[before..]
        .iter()
        .filter(|e| !e.path.starts_with("/v2/damselfly-e2e-sync/"))
        .cloned()
        .collect();
    assert!(
        after.is_empty(),
        "origin requests after the preheat: {after:?}"
    );

    // The same image again: 208, as Harbor expects for an already preheated image.
    let again = post_json(&format!("{}/preheats", s.api), &create, None);
    assert_eq!(again.status, 208, "{}", again.text());
    assert_eq!(json_of(&again)["ID"], id);
}

#[test]
fn generation_2_preheats_with_the_bearer_token_and_lists_every_blob() {
    let s = setup("library/app2", 32);
    let manifest_url = s.registry.manifest_url("library/app2", "1");
    let jobs = format!("{}/oapi/v1/jobs", s.api);
    let bearer = format!("Bearer {TOKEN}");
    assert!(
        http::get(&format!("{}/healthy", s.api), None)
            .unwrap()
            .is_success()
    );
    // Exactly what Harbor's Go client marshals, zero values included.
    let create = json!({
        "type": "preheat",
        "args": {"type": "image", "url": manifest_url, "tag": "", "filtered_query_params": "",
                 "headers": {"Authorization": harbor_token(&s, "library/app2")},
                 "scope": "single_seed_peer", "concurrent_count": 0, "timeout": 0},
        "scheduler_cluster_ids": [1],
    });
    // No token, a wrong token: 401 and nothing fetched.
    for auth in [None, Some("Bearer wrong")] {
        let r = post_json(&jobs, &create, auth);
        assert_eq!(r.status, 401, "{}", r.text());
        assert!(json_of(&r)["error"].is_string());
    }
    let fetched: Vec<_> = s
        .registry
        .access_log()
        .into_iter()
        .filter(|e| e.method != "PUT" && e.path.contains("/manifests/"))
        .collect();
    assert!(fetched.is_empty(), "a refused job fetched: {fetched:?}");
    let r = post_json(&jobs, &create, Some(&bearer));
    assert_eq!(r.status, 200, "{}", r.text());
    let created = json_of(&r);
    let id = created["id"].as_u64().expect("numeric id");
    assert_eq!(created["state"], "PENDING");
    assert!(humantime::parse_rfc3339(created["created_at"].as_str().unwrap()).is_ok());
    let v = poll_v2(&format!("{jobs}/{id}"), &bearer);
    assert_eq!(v["state"], "SUCCESS", "{v}");
    let tasks = &v["result"]["job_states"][0]["results"][0]["success_tasks"];
    let mut urls: Vec<&str> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["url"].as_str().unwrap())
        .collect();
    urls.sort_unstable();
    let mut want: Vec<String> = blobs(&s.pushed)
        .iter()
        .map(|d| s.registry.blob_url("library/app2", d))
        .collect();
    want.sort();
    assert_eq!(urls, want);

    let fetched: u64 = blobs(&s.pushed)
        .iter()
        .map(|d| s.registry.blob_bytes_served(d))
        .sum();
    assert_eq!(
        s.supernode
            .metric("damselfly_supernode_preheat_bytes_total")
            .unwrap(),
        fetched as f64
    );
    assert_eq!(
        s.supernode
            .metric("damselfly_supernode_preheat_jobs")
            .unwrap(),
        1.0
    );
    // A second job for the cached image succeeds without fetching any blob again.
    let r = post_json(&jobs, &create, Some(&bearer));
    let id2 = json_of(&r)["id"].as_u64().unwrap();
    assert_ne!(id2, id);
    let v = poll_v2(&format!("{jobs}/{id2}"), &bearer);
    assert_eq!(v["state"], "SUCCESS", "{v}");
    for d in blobs(&s.pushed) {
        assert_eq!(s.registry.blob_get_count(&d), 1, "{d}");
    }
}

#[test]
fn a_token_the_registry_rejects_fails_the_job_with_its_reason() {
    let s = setup("library/app3", 33);
    let manifest_url = s.registry.manifest_url("library/app3", "1");
    // A token for another repository: the registry refuses it for this one.
    let wrong = harbor_token(&s, "library/other");
    let r = post_json(
        &format!("{}/preheats", s.api),
        &json!({"type": "image", "url": manifest_url, "headers": {"Authorization": wrong}}),
        None,
    );
    let id = json_of(&r)["ID"].as_str().unwrap().to_owned();
    let v = poll_v1(&format!("{}/preheats/{id}", s.api));
    assert_eq!(v["status"], "FAIL");
    let msg = v["errorMsg"].as_str().unwrap();
    assert!(
        msg.contains("401") && msg.contains("authentication required"),
        "{msg}"
    );

    let bearer = format!("Bearer {TOKEN}");
    let jobs = format!("{}/oapi/v1/jobs", s.api);
    let r = post_json(
        &jobs,
        &json!({"type": "preheat", "args": {"type": "image", "url": manifest_url,
                "headers": {"Authorization": wrong}, "scope": "", "concurrent_count": 0, "timeout": 0},
                "scheduler_cluster_ids": null}),
        Some(&bearer),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let id = json_of(&r)["id"].as_u64().unwrap();
    let v = poll_v2(&format!("{jobs}/{id}"), &bearer);
    assert_eq!(v["state"], "FAILURE");
    let err = v["result"]["job_states"][0]["error"].as_str().unwrap();
    assert!(err.contains("authentication required"), "{err}");
    for d in blobs(&s.pushed) {
        assert_eq!(s.registry.blob_get_count(&d), 0, "{d}");
    }
}

#[test]
fn an_index_is_resolved_to_the_requested_platform() {
    let s = setup("library/multi", 34);
    // A second image for arm64 in the same repository, and an index over both.
    let arm = TestImage::busybox("arm", MIB, 35).unwrap();
    let arm_pushed = s
        .registry
        .push_test_image("library/multi", "arm", &arm)
        .unwrap();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": damselfly_e2e::OCI_MANIFEST_MEDIA_TYPE, "digest": arm_pushed.manifest_digest,
             "size": arm_pushed.manifest.len(), "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": damselfly_e2e::OCI_MANIFEST_MEDIA_TYPE, "digest": s.pushed.manifest_digest,
             "size": s.pushed.manifest.len(), "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    })
    .to_string();
    let put = s
        .registry
        .request(
            http::Method::PUT,
            &s.registry.manifest_url("library/multi", "multi"),
        )
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(index)
        .send()
        .unwrap();
    assert_eq!(put.status, 201, "{}", put.text());
    let r = post_json(
        &format!("{}/preheats", s.api),
        &json!({"type": "image", "url": s.registry.manifest_url("library/multi", "multi"),
                "headers": {"Authorization": harbor_token(&s, "library/multi")}}),
        None,
    );
    let id = json_of(&r)["ID"].as_str().unwrap().to_owned();
    let v = poll_v1(&format!("{}/preheats/{id}", s.api));
    assert_eq!(v["status"], "SUCCESS", "{v}");
    for d in blobs(&s.pushed) {
        assert_eq!(s.registry.blob_get_count(&d), 1, "amd64 blob {d}");
    }
    // arm64's own layers (the busybox layer is shared) were not fetched.
    for d in &arm_pushed.layer_digests[1..] {
        assert_eq!(s.registry.blob_get_count(d), 0, "arm64 blob {d}");
    }
}

#[test]
fn bad_requests_get_json_errors_and_fetch_nothing() {
    let s = setup("library/bad", 36);
    let bearer = format!("Bearer {TOKEN}");
    let cases: Vec<(String, String, Option<&str>, u16)> = vec![
        (format!("{}/preheats", s.api), "{not json".into(), None, 400),
        (
            format!("{}/preheats", s.api),
            json!({"type": "image", "url": s.registry.blob_url("library/bad", &s.pushed.config_digest)}).to_string(),
            None,
            400,
        ),
        (
            format!("{}/oapi/v1/jobs", s.api),
            json!({"type": "preheat", "args": {"url": "ftp://x/v2/a/manifests/1"}}).to_string(),
            Some(bearer.as_str()),
            400,
        ),
        (
            format!("{}/oapi/v1/jobs", s.api),
            json!({"type": "preheat", "args": {"url": s.registry.manifest_url("library/bad", "1"), "scope": "everyone"}}).to_string(),
            Some(bearer.as_str()),
            400,
        ),
    ];
    for (url, body, auth, status) in cases {
        let mut req = http::Request::post(&url)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().unwrap();
        assert_eq!(r.status, status, "{url} {body}: {}", r.text());
        assert!(json_of(&r)["error"].is_string(), "{}", r.text());
    }
    for url in [
        format!("{}/preheats/999", s.api),
        format!("{}/preheats/x", s.api),
    ] {
        let r = http::get(&url, None).unwrap();
        assert_eq!(r.status, 404);
        assert!(json_of(&r)["error"].is_string());
    }
    let r = http::Request::get(format!("{}/oapi/v1/jobs/999", s.api))
        .header("authorization", bearer.as_str())
        .send()
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(
        s.registry
            .access_log()
            .iter()
            .all(|e| !e.path.contains("/manifests/") || e.method == "PUT")
    );
}

#[test]
fn finished_jobs_survive_a_supernode_restart() {
    let registry = TestRegistry::builder().token_auth().start();
    let image = TestImage::busybox("kept", MIB, 37).unwrap();
    registry
        .push_test_image("library/kept", "1", &image)
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let start = || {
        Supernode::builder()
            .data_dir(data.path())
            .args([
                "--preheat-token",
                TOKEN,
                "--preheat-v1-source",
                "127.0.0.1/32",
            ])
            .start()
    };
    let supernode = start();
    let api = format!("http://{}", supernode.addr());
    let bearer = format!("Bearer {TOKEN}");
    let token = format!("Bearer {}", registry.token("library/kept", &["pull"]));
    let r = post_json(
        &format!("{api}/oapi/v1/jobs"),
        &json!({"type": "preheat", "args": {"type": "image",
                "url": registry.manifest_url("library/kept", "1"),
                "headers": {"Authorization": token}, "scope": "", "concurrent_count": 0, "timeout": 0},
                "scheduler_cluster_ids": [1]}),
        Some(&bearer),
    );
    let id = json_of(&r)["id"].as_u64().unwrap();
    let before = poll_v2(&format!("{api}/oapi/v1/jobs/{id}"), &bearer);
    assert_eq!(before["state"], "SUCCESS", "{before}");
    supernode.stop().unwrap();

    let supernode = start();
    let api = format!("http://{}", supernode.addr());
    let r = http::Request::get(format!("{api}/oapi/v1/jobs/{id}"))
        .header("authorization", bearer.as_str())
        .send()
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let after = json_of(&r);
    assert_eq!(after["state"], "SUCCESS");
    assert_eq!(after["result"], before["result"]);
    // Generation 1 sees the same job under its string id.
    let v1 = json_of(&http::get(&format!("{api}/preheats/{id}"), None).unwrap());
    assert_eq!(v1["status"], "SUCCESS");
}

#[test]
fn all_peers_fills_every_announced_node_through_the_swarm() {
    let s = setup("library/everywhere", 38);
    let nodes: Vec<damselfly_e2e::Dfdaemon> = ["node-a", "node-b"]
        .iter()
        .map(|name| {
            let mut d = damselfly_e2e::Dfdaemon::builder()
                .name(name)
                .supernode(s.supernode.addr())
                .args(["--hostname", name, "--p2p-keepalive-interval", "200ms"])
                .start();
            d.daemon_mut()
                .wait_for_log("announced", Duration::from_secs(10))
                .unwrap();
            d
        })
        .collect();
    let bearer = format!("Bearer {TOKEN}");
    let jobs = format!("{}/oapi/v1/jobs", s.api);
    let token = harbor_token(&s, "library/everywhere");
    let r = post_json(
        &jobs,
        &json!({"type": "preheat", "args": {"type": "image",
                "url": s.registry.manifest_url("library/everywhere", "1"), "tag": "",
                "filtered_query_params": "", "headers": {"Authorization": token},
                "scope": "all_peers", "concurrent_count": 0, "timeout": 0},
                "scheduler_cluster_ids": [1]}),
        Some(&bearer),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let id = json_of(&r)["id"].as_u64().unwrap();
    let v = poll_v2(&format!("{jobs}/{id}"), &bearer);
    assert_eq!(v["state"], "SUCCESS", "{v}");
    let tasks = v["result"]["job_states"][0]["results"][0]["success_tasks"]
        .as_array()
        .unwrap()
        .clone();
    for d in blobs(&s.pushed) {
        let url = s.registry.blob_url("library/everywhere", &d);
        for host in ["node-a", "node-b"] {
            assert!(
                tasks
                    .iter()
                    .any(|t| t["url"] == url.as_str() && t["hostname"] == host),
                "{host} missing for {d}: {v}"
            );
        }
        // The registry sent it once, to the supernode.
        assert_eq!(s.registry.blob_get_count(&d), 1, "{d}");
    }
    // Every node now answers the pull from its own cache.
    for node in &nodes {
        let mut served = 0usize;
        for (i, d) in blobs(&s.pushed).iter().enumerate() {
            let r = http::Request::get(format!(
                "{}/v2/library/everywhere/blobs/{d}?ns={}",
                node.url(),
                s.registry.host()
            ))
            .header("authorization", token.as_str())
            .send()
            .unwrap();
            assert_eq!(r.status, 200, "blob {i}: {}", r.text());
            assert_eq!(&sha256_digest(&r.body), d);
            served += r.body.len();
        }
        let local = node
            .metric(
                "damselfly_dfdaemon_blob_bytes_total",
                Some("source=\"local\""),
            )
            .unwrap();
        assert_eq!(
            local, served as f64,
            "not every byte came from the node cache"
        );
        assert_eq!(
            node.metric(
                "damselfly_dfdaemon_blob_bytes_total",
                Some("source=\"origin\"")
            )
            .unwrap(),
            0.0
        );
    }
}

#[test]
fn with_several_supernodes_each_blob_is_seeded_where_nodes_will_look_for_it() {
    let registry = TestRegistry::builder().token_auth().start();
    let image = TestImage::busybox("two supernodes", 2 * MIB, 39).unwrap();
    let pushed = registry
        .push_test_image("library/two", "1", &image)
        .unwrap();
    let ports = [
        damselfly_e2e::free_tcp_port([127, 0, 0, 1].into()),
        damselfly_e2e::free_tcp_port([127, 0, 0, 1].into()),
    ];
    let cluster: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let supernodes: Vec<Supernode> = ports
        .iter()
        .map(|&port| {
            let mut args = vec!["--preheat-token".to_owned(), TOKEN.to_owned()];
            for sn in &cluster {
                args.extend(["--preheat-supernode".to_owned(), sn.clone()]);
            }
            Supernode::builder().port(port).args(args).start()
        })
        .collect();
    // The node lists the supernodes in the other order: placement must not depend on it.
    let node = damselfly_e2e::Dfdaemon::builder()
        .supernode(&cluster[1])
        .supernode(&cluster[0])
        .start();
    let api = format!("http://{}", supernodes[0].addr());
    let bearer = format!("Bearer {TOKEN}");
    let token = format!("Bearer {}", registry.token("library/two", &["pull"]));
    let job = |scope: &str| {
        let r = post_json(
            &format!("{api}/oapi/v1/jobs"),
            &json!({"type": "preheat", "args": {"type": "image",
                    "url": registry.manifest_url("library/two", "1"),
                    "headers": {"Authorization": token}, "scope": scope,
                    "concurrent_count": 0, "timeout": 0}, "scheduler_cluster_ids": [1]}),
            Some(&bearer),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let id = json_of(&r)["id"].as_u64().unwrap();
        let v = poll_v2(&format!("{api}/oapi/v1/jobs/{id}"), &bearer);
        assert_eq!(v["state"], "SUCCESS", "{v}");
        v["result"]["job_states"][0]["results"][0]["success_tasks"]
            .as_array()
            .unwrap()
            .clone()
    };
    // Default scope: each blob once, at its home supernode.
    let tasks = job("");
    assert_eq!(tasks.len(), blobs(&pushed).len(), "{tasks:?}");
    let homes: std::collections::HashSet<&str> = tasks
        .iter()
        .map(|t| t["hostname"].as_str().unwrap())
        .collect();
    assert!(
        homes.iter().all(|h| cluster.iter().any(|c| c == h)),
        "{homes:?}"
    );
    // The node's pulls find every blob where they look: the registry is not asked again.
    for d in blobs(&pushed) {
        let r = http::Request::get(format!(
            "{}/v2/library/two/blobs/{d}?ns={}",
            node.url(),
            registry.host()
        ))
        .header("authorization", token.as_str())
        .send()
        .unwrap();
        assert_eq!(&sha256_digest(&r.body), &d);
        assert_eq!(registry.blob_get_count(&d), 1, "{d} fetched twice");
    }
    // all_seed_peers: every supernode keeps every blob.
    let tasks = job("all_seed_peers");
    assert_eq!(tasks.len(), 2 * blobs(&pushed).len(), "{tasks:?}");
    for d in blobs(&pushed) {
        assert_eq!(
            registry.blob_get_count(&d),
            2,
            "{d}: one fetch per supernode"
        );
    }
}

/// A signed announcement of node `host` (mirror on 10.0.0.1), sent from local address `from`.
fn announce_from(sn: &Supernode, from: [u8; 4], host: &str) -> http::Response {
    http::Request::post(format!("http://{}/api/v1/nodes", sn.addr()))
        .local_address(from.into())
        .signed()
        .header("Content-Type", "application/json")
        .body(format!(
            r#"{{"hostname":"{host}","ip":"10.0.0.1","mirror":"http://10.0.0.1:65001"}}"#
        ))
        .send()
        .unwrap()
}

/// The node table is bounded (`preheat.max_nodes`): a caller inventing host names fills it
/// to the cap, and past it a new name gets 503 with `Retry-After`, while nodes already in
/// it keep announcing.
#[test]
fn the_node_table_is_bounded() {
    let sn = Supernode::builder()
        .args(["--preheat-max-nodes", "2"])
        .start();
    let announce = |host: &str| announce_from(&sn, [127, 0, 0, 1], host);
    assert_eq!(announce("a").status, 204);
    assert_eq!(announce("b").status, 204);
    let full = announce("c");
    assert_eq!(full.status, 503, "{}", full.text());
    assert!(full.text().contains("preheat.max_nodes"), "{}", full.text());
    let retry: u64 = full.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
    assert_eq!(announce("a").status, 204, "a known node still announces");
    assert!(sn.log_text().contains("node table full"));
}

/// A node's name is bound to the address that announced it: another host (here another
/// loopback address) announcing the same name is refused with 409 until the entry expires,
/// while its own announcements, and other names, are accepted.
#[test]
fn a_node_name_stays_with_the_address_that_announced_it() {
    let sn = Supernode::builder().start();
    let announce = |from: [u8; 4], host: &str| announce_from(&sn, from, host);
    assert_eq!(announce([127, 0, 0, 1], "node-a").status, 204);
    let taken = announce([127, 0, 0, 2], "node-a");
    assert_eq!(taken.status, 409, "{}", taken.text());
    assert!(taken.text().contains("127.0.0.1"), "{}", taken.text());
    assert_eq!(announce([127, 0, 0, 1], "node-a").status, 204);
    assert_eq!(announce([127, 0, 0, 2], "node-b").status, 204);
    assert_eq!(
        damselfly_e2e::metric_sum(
            &sn.metrics().unwrap(),
            "damselfly_supernode_access_refusals_total",
            Some("reason=\"NodeIdentity\""),
        ),
        1.0
    );
}
