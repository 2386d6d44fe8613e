//! dfdaemon as a registry mirror, with real clients: containerd (`ctr` with `hosts.toml`),
//! skopeo and Podman (the `registries.conf` drop-in `dfdaemon init podman` writes, path-prefix
//! form) and plain HTTP, against the Debian `docker-registry`, a real supernode and several
//! dfdaemons.
//!
//! The containerd and Podman tests need root; they are skipped (with a message) otherwise.
#![allow(clippy::unwrap_used)]

use std::{
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use damselfly_e2e::{
    Containerd, Dfdaemon, Podman, PushedImage, Supernode, TestImage, TestRegistry, bin,
    describe_output, free_tcp_port, http, lying_http_server, random_blob, running_as_root,
    sha256_digest, write_hosts_toml,
};

const MIB: usize = 1024 * 1024;

/// These tests start several processes each; one at a time keeps them fast and their
/// timings meaningful on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn push(registry: &TestRegistry, repo: &str, hello: &str, seed: u64) -> (TestImage, PushedImage) {
    let image = TestImage::busybox(hello, 6 * MIB, seed).unwrap();
    let pushed = registry.push_test_image(repo, "1", &image).unwrap();
    (image, pushed)
}

/// A hosts dir that sends the registry's pulls to `mirror` first, then to the registry.
fn hosts_dir(registry: &TestRegistry, mirror: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_hosts_toml(dir.path(), &registry.host(), mirror, Some(&registry.url())).unwrap();
    dir
}

fn blob_requests(d: &Dfdaemon) -> f64 {
    d.metric("damselfly_dfdaemon_requests_total", Some("kind=\"blob\""))
        .unwrap()
}

fn bytes_from(d: &Dfdaemon, source: &str) -> f64 {
    d.metric(
        "damselfly_dfdaemon_blob_bytes_total",
        Some(&format!("source=\"{source}\"")),
    )
    .unwrap()
}

/// What a runtime's pull through the mirror must show: every layer and the config went
/// through `dfdaemon`, the registry sent each blob once (to the supernode), and the node got
/// every byte from the swarm, none from the registry.
fn assert_pulled_through_the_swarm(
    runtime: &str,
    dfdaemon: &Dfdaemon,
    registry: &TestRegistry,
    image: &TestImage,
    pushed: &PushedImage,
) {
    assert!(
        blob_requests(dfdaemon) >= 4.0,
        "{runtime} did not fetch the blobs through dfdaemon:\n{}",
        dfdaemon.log_text()
    );
    for digest in pushed.layer_digests.iter().chain([&pushed.config_digest]) {
        assert_eq!(registry.blob_get_count(digest), 1, "{digest}");
    }
    let swarm = bytes_from(dfdaemon, "supernode") + bytes_from(dfdaemon, "peer");
    assert!(swarm >= image.size() as f64, "swarm bytes {swarm}");
    assert_eq!(bytes_from(dfdaemon, "origin"), 0.0);
}

#[test]
fn containerd_pulls_through_the_mirror_and_runs_the_image() {
    if !running_as_root("containerd_pulls_through_the_mirror_and_runs_the_image") {
        return;
    }
    let _serial = serial();
    let registry = TestRegistry::start();
    let (image, pushed) = push(&registry, "e2e/app", "hello through the mirror", 11);
    let supernode = Supernode::builder().start();
    let dfdaemon = Dfdaemon::builder().supernode(supernode.addr()).start();
    let containerd = Containerd::start().unwrap();
    // The node is configured the way an operator does it: `dfdaemon init containerd`.
    let hosts = tempfile::tempdir().unwrap();
    let init = std::process::Command::new(bin("dfdaemon"))
        .args(["--plain-http-registry", &registry.host()])
        .args(["init", "containerd", "--write", "--mirror", &dfdaemon.url()])
        .arg("--hosts-dir")
        .arg(hosts.path())
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", describe_output(&init));
    let written =
        std::fs::read_to_string(hosts.path().join(registry.host()).join("hosts.toml")).unwrap();
    assert!(written.contains(&registry.url()), "{written}");
    let reference = format!("{}/e2e/app:1", registry.host());

    let pull = containerd.pull(&reference, hosts.path()).unwrap();
    assert!(
        pull.status.success(),
        "pull failed: {}",
        describe_output(&pull)
    );
    let run = containerd.run(&reference, "hello", &[]).unwrap();
    assert!(
        run.status.success(),
        "run failed: {}",
        describe_output(&run)
    );
    assert_eq!(String::from_utf8_lossy(&run.stdout), image.hello);
    assert_pulled_through_the_swarm("containerd", &dfdaemon, &registry, &image, &pushed);
}

#[test]
fn three_nodes_pull_the_same_image_and_the_registry_sends_each_blob_once() {
    if !running_as_root("three_nodes_pull_the_same_image_and_the_registry_sends_each_blob_once") {
        return;
    }
    let _serial = serial();
    let registry = TestRegistry::start();
    let (image, pushed) = push(&registry, "e2e/shared", "shared", 12);
    let supernode = Supernode::builder().start();
    let nodes: Vec<(Dfdaemon, Containerd)> = (0..3)
        .map(|i| {
            let d = Dfdaemon::builder()
                .name(&format!("dfdaemon-{i}"))
                .supernode(supernode.addr())
                .start();
            (d, Containerd::start().unwrap())
        })
        .collect();
    let reference = format!("{}/e2e/shared:1", registry.host());
    for (i, (dfdaemon, containerd)) in nodes.iter().enumerate() {
        let hosts = hosts_dir(&registry, &dfdaemon.url());
        let pull = containerd.pull(&reference, hosts.path()).unwrap();
        assert!(
            pull.status.success(),
            "node {i}: {}",
            describe_output(&pull)
        );
        let run = containerd.run(&reference, &format!("n{i}"), &[]).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&run.stdout),
            image.hello,
            "node {i}"
        );
    }
    for digest in pushed.layer_digests.iter().chain([&pushed.config_digest]) {
        assert_eq!(registry.blob_get_count(digest), 1, "{digest}");
    }
    // The first node got everything from the supernode; later ones from peers.
    for (i, (dfdaemon, _)) in nodes.iter().enumerate().skip(1) {
        let peer = bytes_from(dfdaemon, "peer");
        assert!(
            peer > 0.0,
            "node {i} got no bytes from peers:\n{}",
            dfdaemon.log_text()
        );
        assert_eq!(bytes_from(dfdaemon, "origin"), 0.0, "node {i}");
    }
    // `dfdaemon explain` tells each node's story blob by blob, and it adds up to the
    // metrics: the first node's pull made the supernode fetch from the registry, later
    // nodes found the supernode's copy stored and took bytes from the earlier nodes.
    let mut nodes = nodes;
    let peer_addrs: Vec<String> = nodes
        .iter_mut()
        .map(|(d, _)| d.peer_addr().unwrap().to_string())
        .collect();
    for (i, (dfdaemon, _)) in nodes.iter().enumerate() {
        let mut from_peers = 0;
        for (digest, size) in pushed
            .layer_digests
            .iter()
            .zip(image.layers.iter().map(Vec::len))
            .chain([(&pushed.config_digest, image.config.len())])
        {
            let json: serde_json::Value =
                serde_json::from_str(&explain_cli(dfdaemon, digest, true)).unwrap();
            let fetch = &json["fetch"];
            assert_eq!(json["state"], "cached", "node {i}: {json}");
            assert_eq!(fetch["via"], "swarm", "node {i}: {json}");
            assert_eq!(fetch["from_registry"], 0, "node {i}: {json}");
            let copy = if i == 0 { "started" } else { "stored" };
            assert_eq!(fetch["supernode_copy"], copy, "node {i}: {json}");
            let peers = fetch["from_peers"].as_u64().unwrap();
            let seed = fetch["from_supernode"].as_u64().unwrap();
            assert_eq!(peers + seed, size as u64, "node {i}: {json}");
            let parents = fetch["parents"].as_array().unwrap();
            let named: u64 = parents.iter().map(|p| p["bytes"].as_u64().unwrap()).sum();
            assert_eq!(named, peers, "node {i}: {json}");
            for p in parents {
                let addr = p["addr"].as_str().unwrap();
                assert!(
                    peer_addrs[..i].iter().any(|a| a == addr),
                    "node {i}: parent {addr} is not an earlier node: {json}"
                );
            }
            from_peers += peers;
        }
        assert_eq!(
            from_peers as f64,
            bytes_from(dfdaemon, "peer"),
            "node {i}: explain and the metrics disagree"
        );
    }
}

/// The `<runtime> run` step of `test`: the container printed the image's greeting; or, if it
/// failed because no container can run on this machine at all (`cannot_run` says why, from a
/// local image), the step is skipped with that reason.
fn assert_greets_or_skip(
    test: &str,
    runtime: &str,
    run: &std::process::Output,
    image: &TestImage,
    cannot_run: impl FnOnce() -> Option<String>,
) {
    if !run.status.success() {
        if let Some(why) = cannot_run() {
            eprintln!(
                "{test}: skipping the `{runtime} run` step: this machine cannot run any \
                 {runtime} container (a local busybox image fails the same way): {why}"
            );
            return;
        }
        panic!("{runtime} run failed: {}", describe_output(run));
    }
    assert_eq!(String::from_utf8_lossy(&run.stdout), image.hello);
}

/// `dfdaemon FLAGS init podman --write` into a temporary directory, as an operator runs it on
/// the node (the same flags as the running `dfdaemon`, so the same registries); returns the
/// directory and the drop-in written there.
fn init_podman(dfdaemon: &Dfdaemon, flags: &[String]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let drop_in = dir.path().join("registries.conf.d/50-damselfly.conf");
    let init = std::process::Command::new(bin("dfdaemon"))
        .args(flags)
        .args(["init", "podman", "--write", "--mirror", &dfdaemon.url()])
        .arg("--podman-config")
        .arg(&drop_in)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", describe_output(&init));
    (dir, drop_in)
}

/// Every blob of `pushed` was served by dfdaemon through the path-prefix route for `host`
/// (the runtime did not fall back to the registry), and the registry sent each once (to the
/// supernode).
fn assert_served_by_path_prefix(
    dfdaemon: &Dfdaemon,
    registry: &TestRegistry,
    pushed: &PushedImage,
    host: &str,
) {
    let log = dfdaemon.log_text();
    for digest in pushed.layer_digests.iter().chain([&pushed.config_digest]) {
        assert!(
            log.lines().any(|l| l.contains("by=PathPrefix")
                && l.contains(&format!("registry=\"{host}\""))
                && l.contains(&format!("/blobs/{digest} "))
                && l.contains("status=200")),
            "{digest} of {host} not served by the path-prefix route:\n{log}"
        );
        assert_eq!(registry.blob_get_count(digest), 1, "{digest}");
    }
}

#[test]
fn skopeo_pulls_through_the_drop_in_init_podman_writes() {
    let _serial = serial();
    let registry = TestRegistry::start();
    let (_, by_address) = push(&registry, "e2e/skopeo", "skopeo", 13);
    let (_, by_name) = push(&registry, "e2e/named", "named", 14);
    let supernode = Supernode::builder().start();
    // Two registries on a port: the registry at its own address, and `reg.local:5000`, a name
    // that does not resolve and that dfdaemon maps to the same registry, so only the mirror
    // can serve it (no silent fallback to the registry).
    let named = "reg.local:5000";
    let flags = vec![
        "--plain-http-registry".to_owned(),
        registry.host(),
        "--registry-endpoint".to_owned(),
        format!("{named}={}", registry.url()),
    ];
    let dfdaemon = Dfdaemon::builder()
        .supernode(supernode.addr())
        .args(flags.clone())
        .start();
    let (dir, drop_in) = init_podman(&dfdaemon, &flags);
    let written = std::fs::read_to_string(&drop_in).unwrap();
    assert!(
        written.contains(&format!("\"{}/reg.local_5000\"", dfdaemon.addr())),
        "{written}"
    );

    for (host, pushed, repo) in [
        (registry.host(), &by_address, "e2e/skopeo"),
        (named.to_owned(), &by_name, "e2e/named"),
    ] {
        let layout = dir.path().join(repo.replace('/', "-"));
        let before = blob_requests(&dfdaemon);
        let out = std::process::Command::new("skopeo")
            .arg("--registries-conf")
            .arg(&drop_in)
            .arg("copy")
            .arg(format!("docker://{host}/{repo}:1"))
            .arg(format!("oci:{}:1", layout.display()))
            .output()
            .expect("skopeo runs");
        assert!(out.status.success(), "{host}: {}", describe_output(&out));
        for digest in &pushed.layer_digests {
            let hex = digest.trim_start_matches("sha256:");
            let data = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
            assert_eq!(&sha256_digest(&data), digest);
        }
        let through = blob_requests(&dfdaemon) - before;
        assert!(
            through >= 4.0,
            "{host}: {through} blob requests through dfdaemon:\n{}",
            dfdaemon.log_text()
        );
        assert_served_by_path_prefix(&dfdaemon, &registry, pushed, &host);
    }

    // The old form, `host:port` in the path, is refused with the form to use, not routed.
    let old = http::get(
        &format!(
            "{}/v2/{}/e2e/skopeo/manifests/1",
            dfdaemon.url(),
            registry.host()
        ),
        None,
    )
    .unwrap();
    assert_eq!(old.status, 400, "{}", old.text());
    let err: serde_json::Value = serde_json::from_slice(&old.body).unwrap();
    assert_eq!(err["errors"][0]["code"], "NAME_INVALID");
    let message = err["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("({})", registry.host().replace(':', "_"))),
        "{message}"
    );
}

#[test]
fn podman_pulls_and_runs_through_the_drop_in_init_podman_writes() {
    let test = "podman_pulls_and_runs_through_the_drop_in_init_podman_writes";
    if !running_as_root(test) {
        return;
    }
    let _serial = serial();
    let registry = TestRegistry::start();
    let (image, pushed) = push(&registry, "e2e/podman", "hello from podman", 15);
    let supernode = Supernode::builder().start();
    let flags = vec!["--plain-http-registry".to_owned(), registry.host()];
    let dfdaemon = Dfdaemon::builder()
        .supernode(supernode.addr())
        .args(flags.clone())
        .start();
    let (_dir, drop_in) = init_podman(&dfdaemon, &flags);
    let podman = Podman::new(&drop_in).unwrap();
    let reference = format!("{}/e2e/podman:1", registry.host());

    let pull = podman.pull(&reference).unwrap();
    assert!(pull.status.success(), "{}", describe_output(&pull));
    assert!(
        blob_requests(&dfdaemon) >= 4.0,
        "podman did not fetch the blobs through dfdaemon:\n{}",
        dfdaemon.log_text()
    );
    assert_served_by_path_prefix(&dfdaemon, &registry, &pushed, &registry.host());
    let swarm = bytes_from(&dfdaemon, "supernode") + bytes_from(&dfdaemon, "peer");
    assert!(swarm >= image.size() as f64, "swarm bytes {swarm}");

    let run = podman.run(&reference, &[]).unwrap();
    assert_greets_or_skip(test, "podman", &run, &image, || {
        podman.cannot_run_containers(&image)
    });
}

#[test]
fn requests_without_ns_go_to_the_default_upstream_and_blobs_honour_the_registry_api() {
    let _serial = serial();
    let registry = TestRegistry::start();
    let (image, pushed) = push(&registry, "library/web", "docker form", 14);
    let supernode = Supernode::builder().start();
    let dfdaemon = Dfdaemon::builder()
        .supernode(supernode.addr())
        .args(["--default-upstream", &registry.url()])
        .start();
    let mirror = dfdaemon.url();

    // Docker's form: no ns, no prefix.
    let manifest = http::Request::get(format!("{mirror}/v2/library/web/manifests/1"))
        .header("accept", damselfly_e2e::OCI_MANIFEST_MEDIA_TYPE)
        .send()
        .unwrap();
    assert_eq!(manifest.status, 200, "{}", manifest.text());
    assert_eq!(manifest.body, pushed.manifest);
    assert_eq!(
        manifest.header("docker-content-digest"),
        Some(pushed.manifest_digest.as_str())
    );

    let layer = &pushed.layer_digests[2];
    let data = &image.layers[2];
    let url = format!("{mirror}/v2/library/web/blobs/{layer}");
    // HEAD: the registry's headers.
    let head = http::Request::head(&url).send().unwrap();
    let direct = http::Request::head(registry.blob_url("library/web", layer))
        .send()
        .unwrap();
    assert_eq!(head.status, 200);
    for h in ["content-length", "docker-content-digest", "content-type"] {
        assert_eq!(head.header(h), direct.header(h), "{h}");
    }
    // GET: the whole blob with the registry's headers.
    let full = http::get(&url, None).unwrap();
    assert_eq!(full.status, 200);
    assert_eq!(&full.body, data);
    assert_eq!(full.header("docker-content-digest"), Some(layer.as_str()));
    assert_eq!(
        full.header("content-length"),
        Some(data.len().to_string().as_str())
    );
    // Range: exactly those bytes, 206 and Content-Range (also from the cache now).
    for (spec, range) in [
        ("bytes=100-1099", 100..1100),
        ("bytes=-10", data.len() - 10..data.len()),
    ] {
        let r = http::Request::get(&url)
            .header("range", spec)
            .send()
            .unwrap();
        assert_eq!(r.status, 206, "{spec}");
        assert_eq!(r.body, &data[range.clone()], "{spec}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {}-{}/{}", range.start, range.end - 1, data.len()).as_str())
        );
    }
    let past_end = http::Request::get(&url)
        .header("range", format!("bytes={}-", data.len()))
        .send()
        .unwrap();
    assert_eq!(past_end.status, 416);
    // Positions past any blob neither overflow nor crash the mirror: an end past the blob
    // is the whole blob (206), a start past it is a 416 naming the blob's length.
    let max = u64::MAX;
    let to_huge_end = http::Request::get(&url)
        .header("range", format!("bytes=0-{max}"))
        .send()
        .unwrap();
    assert_eq!(to_huge_end.status, 206);
    assert_eq!(&to_huge_end.body, data);
    assert_eq!(
        to_huge_end.header("content-range"),
        Some(format!("bytes 0-{}/{}", data.len() - 1, data.len()).as_str())
    );
    let from_huge_start = http::Request::get(&url)
        .header("range", format!("bytes={max}-{max}"))
        .send()
        .unwrap();
    assert_eq!(from_huge_start.status, 416);
    assert_eq!(
        from_huge_start.header("content-range"),
        Some(format!("bytes */{}", data.len()).as_str())
    );
    // An unknown blob: the registry's 404 with an OCI error body.
    let missing = format!("sha256:{}", "0".repeat(64));
    let r = http::get(&format!("{mirror}/v2/library/web/blobs/{missing}"), None).unwrap();
    assert_eq!(r.status, 404);
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["errors"][0]["code"], "BLOB_UNKNOWN", "{}", r.text());
    // The registry sent the layer once, however many times it was asked for.
    assert_eq!(registry.blob_get_count(layer), 1);
}

#[test]
fn a_private_blob_needs_credentials_even_when_cached() {
    let _serial = serial();
    let registry = TestRegistry::builder().htpasswd("alice", "s3cret").start();
    let (image, pushed) = push(&registry, "private/app", "private", 15);
    let supernode = Supernode::builder().start();
    let dfdaemon = Dfdaemon::builder().supernode(supernode.addr()).start();
    let layer = &pushed.layer_digests[2];
    let url = format!(
        "{}/v2/private/app/blobs/{layer}?ns={}",
        dfdaemon.url(),
        registry.host()
    );
    let with = http::get(&url, Some(("alice", "s3cret"))).unwrap();
    assert_eq!(with.status, 200, "{}", with.text());
    assert_eq!(&with.body, &image.layers[2]);
    // Cached on this node now; without credentials the registry's 401 comes back.
    let without = http::get(&url, None).unwrap();
    assert_eq!(without.status, 401);
    assert!(without.header("www-authenticate").is_some());
    assert!(without.body.len() < 1024, "blob bytes leaked");
    let wrong = http::get(&url, Some(("alice", "wrong"))).unwrap();
    assert_eq!(wrong.status, 401);

    // A runtime with credentials pulls the whole image through the mirror.
    if running_as_root("a_private_blob_needs_credentials_even_when_cached (containerd part)") {
        let containerd = Containerd::start().unwrap();
        let hosts = hosts_dir(&registry, &dfdaemon.url());
        let hosts_path = hosts.path().to_str().unwrap();
        let reference = format!("{}/private/app:1", registry.host());
        let pull = containerd
            .ctr(&[
                "image",
                "pull",
                "--snapshotter",
                containerd.snapshotter(),
                "--hosts-dir",
                hosts_path,
                "--user",
                "alice:s3cret",
                &reference,
            ])
            .unwrap();
        assert!(pull.status.success(), "{}", describe_output(&pull));
        let run = containerd.run(&reference, "private", &[]).unwrap();
        assert_eq!(String::from_utf8_lossy(&run.stdout), image.hello);
    }
}

#[test]
fn without_p2p_and_back_to_source_the_mirror_fails_fast_and_containerd_falls_back() {
    let _serial = serial();
    let registry = TestRegistry::start();
    let (image, pushed) = push(&registry, "e2e/fallback", "fallback", 16);
    // A supernode address nobody listens on.
    let dead = format!("127.0.0.1:{}", free_tcp_port([127, 0, 0, 1].into()));
    let dfdaemon = Dfdaemon::builder()
        .supernode(&dead)
        .args(["--back-source", "false"])
        .start();
    let layer = &pushed.layer_digests[2];
    let url = format!(
        "{}/v2/e2e/fallback/blobs/{layer}?ns={}",
        dfdaemon.url(),
        registry.host()
    );
    let started = Instant::now();
    let r = http::get(&url, None).unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(took < Duration::from_secs(1), "refusal took {took:?}");
    assert_eq!(registry.blob_get_count(layer), 0);
    assert!(
        dfdaemon
            .metric("damselfly_dfdaemon_p2p_fallbacks_total", None)
            .unwrap()
            >= 1.0
    );

    if !running_as_root("without_p2p_... (containerd part)") {
        return;
    }
    let reference = format!("{}/e2e/fallback:1", registry.host());
    // dfdaemon up but unable to help: containerd moves on to the registry.
    let containerd = Containerd::start().unwrap();
    let hosts = hosts_dir(&registry, &dfdaemon.url());
    let pull = containerd.pull(&reference, hosts.path()).unwrap();
    assert!(pull.status.success(), "{}", describe_output(&pull));
    let run = containerd.run(&reference, "fb", &[]).unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), image.hello);
    assert_eq!(
        registry.blob_get_count(layer),
        1,
        "containerd fetched it itself"
    );

    // dfdaemon stopped: same.
    let mirror = dfdaemon.url();
    dfdaemon.stop().unwrap();
    let containerd = Containerd::start().unwrap();
    let hosts = hosts_dir(&registry, &mirror);
    let pull = containerd.pull(&reference, hosts.path()).unwrap();
    assert!(pull.status.success(), "{}", describe_output(&pull));
    assert_eq!(registry.blob_get_count(layer), 2);
}

/// Runs a command undoing a fault when the test ends, passed or not.
struct Undo(Vec<String>);

impl Drop for Undo {
    fn drop(&mut self) {
        let (program, args) = self.0.split_first().unwrap();
        let _ = std::process::Command::new(program).args(args).status();
    }
}

#[test]
fn a_supernode_that_stops_answering_gets_a_502_within_a_second_or_the_registry_serves() {
    let _serial = serial();
    let registry = TestRegistry::start();
    let (_, pushed) = push(&registry, "e2e/blackhole", "blackhole", 18);
    let sn = Supernode::builder().start();
    let strict = Dfdaemon::builder()
        .supernode(sn.addr())
        .args(["--back-source", "false"])
        .start();
    let lenient = Dfdaemon::builder().supernode(sn.addr()).start();
    let url = |d: &Dfdaemon, layer: &str| {
        format!(
            "{}/v2/e2e/blackhole/blobs/{layer}?ns={}",
            d.url(),
            registry.host()
        )
    };
    let layers = &pushed.layer_digests;
    // Through the swarm first: both nodes' clients keep a connection to the supernode.
    for d in [&strict, &lenient] {
        let r = http::get(&url(d, &layers[0]), None).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // Hung: the process stops (its connections stay open, the kernel still accepts new ones
    // for it), so nothing is refused, nothing answers.
    let frozen = sn.freeze().unwrap();
    let started = Instant::now();
    let r = http::get(&url(&strict, &layers[1]), None).unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(took < Duration::from_secs(1), "the 502 took {took:?}");
    assert_eq!(registry.blob_get_count(&layers[1]), 0);
    // With back to source, the node fetches the blob itself, quickly.
    let started = Instant::now();
    let r = http::get(&url(&lenient, &layers[1]), None).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sha256_digest(&r.body), layers[1]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the fallback took {:?}",
        started.elapsed()
    );
    assert_eq!(registry.blob_get_count(&layers[1]), 1);
    assert!(
        lenient
            .metric(
                "damselfly_dfdaemon_p2p_fallbacks_total",
                Some("reason=\"supernode_unreachable\"")
            )
            .unwrap()
            >= 1.0
    );
    drop(frozen);
    // Awake again, it serves.
    let r = http::get(&url(&strict, &layers[2]), None).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // Black-holed: every packet to it dropped (root, iptables).
    if !running_as_root("a_supernode_that_stops_answering_... (iptables part)") {
        return;
    }
    let rule = |op: &str| -> Vec<String> {
        [
            "iptables",
            op,
            "INPUT",
            "-i",
            "lo",
            "-p",
            "tcp",
            "--dport",
            &sn.addr().port().to_string(),
            "-j",
            "DROP",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let add = rule("-I");
    match std::process::Command::new(&add[0]).args(&add[1..]).status() {
        Ok(s) if s.success() => {}
        other => {
            eprintln!("skipping the iptables part: `iptables -I` failed: {other:?}");
            return;
        }
    }
    let _rule = Undo(rule("-D"));
    let started = Instant::now();
    let r = http::get(&url(&strict, &layers[1]), None).unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(took < Duration::from_secs(1), "the 502 took {took:?}");
    assert_eq!(registry.blob_get_count(&layers[1]), 1, "nothing more");
}

#[test]
fn the_node_cache_survives_a_restart() {
    let _serial = serial();
    let registry = TestRegistry::start();
    let (image, pushed) = push(&registry, "e2e/restart", "restart", 17);
    let supernode = Supernode::builder().start();
    let data = tempfile::tempdir().unwrap();
    let layer = &pushed.layer_digests[2];
    let path = format!("/v2/e2e/restart/blobs/{layer}?ns={}", registry.host());
    let first = Dfdaemon::builder()
        .supernode(supernode.addr())
        .data_dir(data.path())
        .start();
    assert_eq!(
        &http::get(&format!("{}{path}", first.url()), None)
            .unwrap()
            .body,
        &image.layers[2]
    );
    first.stop().unwrap();
    supernode.stop().unwrap();
    // No supernode any more, and back-to-source off: only the cache can answer.
    let second = Dfdaemon::builder()
        .data_dir(data.path())
        .args(["--back-source", "false"])
        .start();
    let again = http::get(&format!("{}{path}", second.url()), None).unwrap();
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(&again.body, &image.layers[2]);
    assert_eq!(bytes_from(&second, "local"), image.layers[2].len() as f64);
    assert_eq!(registry.blob_get_count(layer), 1);
}

#[test]
fn the_node_cache_stays_under_its_capacity() {
    let _serial = serial();
    let registry = TestRegistry::start();
    let supernode = Supernode::builder().start();
    let dfdaemon = Dfdaemon::builder()
        .supernode(supernode.addr())
        .args(["--cache-capacity", "10MiB", "--cache-gc-interval", "200ms"])
        .start();
    let blobs: Vec<Vec<u8>> = (0..3).map(|i| random_blob(6 * MIB, 90 + i)).collect();
    for blob in &blobs {
        let digest = registry.push_blob("e2e/gc", blob);
        let url = format!(
            "{}/v2/e2e/gc/blobs/{digest}?ns={}",
            dfdaemon.url(),
            registry.host()
        );
        let r = http::get(&url, None).unwrap();
        assert_eq!(&r.body, blob);
    }
    // 18 MiB went through a 10 MiB cache: each download's admission evicted the blob
    // before it (6 + 6 MiB do not fit in 10), and GC keeps it under the watermarks.
    let evicted = damselfly_e2e::wait_until(Duration::from_secs(10), || {
        dfdaemon
            .metric("damselfly_dfdaemon_cache_evictions_total", None)
            .unwrap()
            >= 1.0
    });
    assert!(evicted, "no eviction:\n{}", dfdaemon.log_text());
    // The response ends as soon as the blob is verified; the cache adopts it (and the gauge
    // counts it) moments later.
    let held = || {
        dfdaemon
            .metric("damselfly_dfdaemon_cache_bytes", None)
            .unwrap()
    };
    let under = damselfly_e2e::wait_until(Duration::from_secs(5), || {
        let h = held();
        h <= (10 * MIB) as f64 && h > 0.0
    });
    assert!(under, "cache holds {} bytes", held());
}

/// A pull slowed by the download limit outlives several keep-alives. The keep-alive reports
/// finished blobs only: had it reported this one complete mid-download, the supernode would
/// have stopped offering its pieces and the pull would have stalled. And the limit holds.
#[test]
fn a_rate_limited_pull_completes_across_keepalives_and_keeps_to_its_limit() {
    let _serial = serial();
    let registry = TestRegistry::start();
    let blob = random_blob(12 * MIB, 66);
    let digest = registry.push_blob("e2e/rate", &blob);
    let supernode = Supernode::builder().start();
    let dfdaemon = Dfdaemon::builder()
        .supernode(supernode.addr())
        .args([
            "--p2p-download-rate",
            "4MiB",
            "--p2p-keepalive-interval",
            "300ms",
        ])
        .start();
    let url = format!(
        "{}/v2/e2e/rate/blobs/{digest}?ns={}",
        dfdaemon.url(),
        registry.host()
    );
    let started = Instant::now();
    let r = http::Request::get(&url)
        .timeout(Duration::from_secs(30))
        .send()
        .unwrap_or_else(|e| panic!("pull failed: {e:#}\n{}", dfdaemon.log_text()));
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == blob, "wrong content");
    // 4 MiB/s after a 1 MiB burst: 11 MiB take at least 2.75 s.
    assert!(took >= Duration::from_millis(2750), "took only {took:?}");
}

/// `POST /api/v1/preheat` with a JSON `body`; the status and the JSON answer.
fn preheat(d: &Dfdaemon, body: impl Into<Vec<u8>>) -> (u16, serde_json::Value) {
    let r = http::Request::post(format!("{}/api/v1/preheat", d.url()))
        .signed()
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    let json = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("status {}: not JSON ({e}): {}", r.status, r.text()));
    (r.status, json)
}

#[test]
fn a_preheat_puts_the_blob_in_the_node_cache_through_the_swarm_before_any_pull() {
    let _serial = serial();
    let registry = TestRegistry::start();
    let blob = random_blob(6 * MIB, 40);
    let digest = registry.push_blob("e2e/preheat", &blob);
    let supernode = Supernode::builder().start();
    let dfdaemon = Dfdaemon::builder().supernode(supernode.addr()).start();
    let request = serde_json::json!({
        "url": registry.blob_url("e2e/preheat", &digest),
        "digest": digest,
    })
    .to_string();

    let (status, first) = preheat(&dfdaemon, request.clone());
    assert_eq!(status, 200, "{first}\n{}", dfdaemon.log_text());
    assert_eq!(first["digest"], digest.as_str());
    assert_eq!(first["bytes"], blob.len());
    assert_eq!(first["source"], "download");
    // Through the swarm: the supernode fetched it from the registry, this node from it.
    assert!(
        bytes_from(&dfdaemon, "supernode") + bytes_from(&dfdaemon, "peer") >= blob.len() as f64
    );
    assert_eq!(bytes_from(&dfdaemon, "origin"), 0.0);
    let (status, second) = preheat(&dfdaemon, request);
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["source"], "cache");
    assert_eq!(second["bytes"], blob.len());

    // A runtime's pull is now served from the node cache; the registry sent the blob once.
    let url = format!(
        "{}/v2/e2e/preheat/blobs/{digest}?ns={}",
        dfdaemon.url(),
        registry.host()
    );
    let pulled = http::get(&url, None).unwrap();
    assert_eq!(pulled.status, 200, "{}", pulled.text());
    assert_eq!(pulled.body, blob);
    assert_eq!(bytes_from(&dfdaemon, "local"), blob.len() as f64);
    assert_eq!(registry.blob_get_count(&digest), 1);

    // Bad requests: 400 with a reason, and nothing is fetched.
    let manifest_url = registry.manifest_url("e2e/preheat", "1");
    let other = format!("sha256:{}", "0".repeat(64));
    for (body, why) in [
        ("{\"url\": ".to_owned(), "malformed"),
        (
            serde_json::json!({ "url": manifest_url }).to_string(),
            "not a registry blob URL",
        ),
        (
            serde_json::json!({ "url": registry.blob_url("e2e/preheat", &digest), "digest": other })
                .to_string(),
            "does not match",
        ),
    ] {
        let (status, answer) = preheat(&dfdaemon, body.clone());
        assert_eq!(status, 400, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(why), "{body}: {answer}");
    }
    let (status, answer) = preheat(&dfdaemon, vec![b' '; MIB + 1]);
    assert_eq!(status, 413, "{answer}");
    assert!(answer["error"].is_string(), "{answer}");
    assert_eq!(registry.blob_get_count(&digest), 1);
    assert_eq!(
        dfdaemon
            .metric(
                "damselfly_dfdaemon_requests_total",
                Some("kind=\"preheat\"")
            )
            .unwrap(),
        6.0
    );
}

#[test]
fn a_preheat_of_a_private_blob_gets_the_registrys_refusal_without_credentials() {
    let _serial = serial();
    let registry = TestRegistry::builder().htpasswd("alice", "s3cret").start();
    let blob = random_blob(2 * MIB, 41);
    let digest = registry.push_blob("private/preheat", &blob);
    let supernode = Supernode::builder().start();
    let dfdaemon = Dfdaemon::builder().supernode(supernode.addr()).start();
    let url = registry.blob_url("private/preheat", &digest);

    let (status, answer) = preheat(&dfdaemon, serde_json::json!({ "url": url }).to_string());
    assert_eq!(status, 401, "{answer}\n{}", dfdaemon.log_text());
    assert!(
        answer["error"].as_str().unwrap_or_default().contains("401"),
        "{answer}"
    );

    // With the header the caller was given (Basic alice:s3cret), the blob is fetched.
    let with = serde_json::json!({
        "url": url,
        "headers": { "Authorization": "Basic YWxpY2U6czNjcmV0" },
    })
    .to_string();
    let (status, answer) = preheat(&dfdaemon, with);
    assert_eq!(status, 200, "{answer}\n{}", dfdaemon.log_text());
    assert_eq!(answer["source"], "download");
    assert_eq!(answer["bytes"], blob.len());
    // Cached now, but a pull without credentials still gets the registry's 401.
    let pull = format!(
        "{}/v2/private/preheat/blobs/{digest}?ns={}",
        dfdaemon.url(),
        registry.host()
    );
    assert_eq!(http::get(&pull, None).unwrap().status, 401);
    let with = http::get(&pull, Some(("alice", "s3cret"))).unwrap();
    assert_eq!(with.body, blob);
}

/// A node reports the blobs it holds to the supernode every `p2p.keepalive_interval`. A
/// download still running when that happens must not be reported complete: the supernode
/// would take the node for a holder of every piece, stop seeding it, and the download would
/// stall (found with a 4 MiB blob at 1 MiB/s and the default 5 s interval's shorter cousin).
#[test]
fn a_download_longer_than_the_keepalive_interval_completes() {
    let _serial = serial();
    let registry = TestRegistry::start();
    let data = random_blob(4 * MIB, 93);
    let digest = registry.push_blob("e2e/slow", &data);
    let supernode = Supernode::builder().start();
    // 4 MiB at 2 MiB/s: about 2 s, twenty keepalive intervals.
    let d = Dfdaemon::builder()
        .supernode(supernode.addr())
        .args([
            "--p2p-keepalive-interval",
            "100ms",
            "--p2p-download-rate",
            "2MiB",
        ])
        .start();
    let url = format!(
        "{}/v2/e2e/slow/blobs/{digest}?ns={}",
        d.url(),
        registry.host()
    );
    let started = Instant::now();
    let got = http::Request::get(&url)
        .timeout(Duration::from_secs(30))
        .send()
        .unwrap();
    assert_eq!(got.status, 200);
    assert!(
        got.body == data,
        "got {} of {} bytes after {:?}:\n{}",
        got.body.len(),
        data.len(),
        started.elapsed(),
        d.log_text()
    );
    // The byte counters are updated when the download ends, just after the last byte went out.
    let counted = damselfly_e2e::wait_until(Duration::from_secs(5), || {
        bytes_from(&d, "supernode") == data.len() as f64
    });
    assert!(counted, "supernode bytes {}", bytes_from(&d, "supernode"));
    assert_eq!(registry.blob_get_count(&digest), 1);
}

#[test]
fn a_stopped_node_leaves_its_swarms_at_once() {
    let _serial = serial();
    let registry = TestRegistry::start();
    let (image, pushed) = push(&registry, "e2e/leave", "leave", 19);
    let supernode = Supernode::builder().start();
    let layer = &pushed.layer_digests[2];
    let path = format!("/v2/e2e/leave/blobs/{layer}?ns={}", registry.host());
    let a = Dfdaemon::builder().supernode(supernode.addr()).start();
    let b = Dfdaemon::builder().supernode(supernode.addr()).start();
    for d in [&a, &b] {
        let got = http::get(&format!("{}{path}", d.url()), None).unwrap();
        assert_eq!(&got.body, &image.layers[2]);
    }
    let peers = || supernode.metric("damselfly_supernode_peers").unwrap();
    assert!(
        damselfly_e2e::wait_until(Duration::from_secs(5), || peers() == 2.0),
        "both nodes in the swarm: {}",
        peers()
    );
    // A stopped node says so: peers stop asking it at once, not after the supernode's 15 s
    // peer timeout.
    let stopped = Instant::now();
    a.stop().unwrap();
    assert!(
        damselfly_e2e::wait_until(Duration::from_secs(5), || peers() == 1.0),
        "the stopped node is still in the swarm: {}",
        peers()
    );
    assert!(stopped.elapsed() < Duration::from_secs(10));
    // The other node still serves the blob from its cache.
    let again = http::get(&format!("{}{path}", b.url()), None).unwrap();
    assert_eq!(&again.body, &image.layers[2]);
}

#[test]
fn a_registry_with_a_private_ca_works_through_the_swarm_and_back_to_source() {
    let _serial = serial();
    let registry = TestRegistry::builder().tls().start();
    let (image, pushed) = push(&registry, "e2e/private-ca", "private-ca", 23);
    let ca = registry.ca().unwrap().ca_path.display().to_string();
    let layer = &pushed.layer_digests[2];
    let path = format!("/v2/e2e/private-ca/blobs/{layer}?ns={}", registry.host());
    // dfdaemon trusts the CA for this registry (its own requests and back to source); a
    // loopback registry is taken for plain HTTP unless its endpoint says https.
    let conf = tempfile::tempdir().unwrap();
    let conf_file = conf.path().join("dfdaemon.toml");
    std::fs::write(
        &conf_file,
        format!(
            "version = 1\n[[registries]]\nhost = \"{}\"\nendpoint = \"{}\"\nca_file = \"{ca}\"\n",
            registry.host(),
            registry.url()
        ),
    )
    .unwrap();
    let node = |supernode: &Supernode, back_source: bool| {
        Dfdaemon::builder()
            .supernode(supernode.addr())
            .args(["--config", conf_file.to_str().unwrap()])
            .args(["--back-source", if back_source { "true" } else { "false" }])
            .start()
    };

    // A supernode that does not trust the CA cannot fetch the blob: no swarm for it.
    let blind = Supernode::builder().start();
    let no_fallback = node(&blind, false);
    let refused = http::get(&format!("{}{path}", no_fallback.url()), None).unwrap();
    assert_ne!(refused.status, 200);
    assert!(
        blind.log_text().to_lowercase().contains("certificate"),
        "the supernode's log does not say why: {}",
        blind.log_text()
    );
    // With back to source, the node fetches it itself, trusting its registry's CA.
    let direct = node(&blind, true);
    let got = http::get(&format!("{}{path}", direct.url()), None).unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(&got.body, &image.layers[2]);
    assert_eq!(bytes_from(&direct, "origin"), image.layers[2].len() as f64);
    let fallbacks = |d: &Dfdaemon, reason: &str| {
        d.metric(
            "damselfly_dfdaemon_p2p_fallbacks_total",
            Some(&format!("reason=\"{reason}\"")),
        )
        .unwrap()
    };
    assert_eq!(fallbacks(&direct, "supernode_origin_unreachable"), 1.0);
    assert_eq!(fallbacks(&direct, "refused_back_source_off"), 0.0);
    assert_eq!(fallbacks(&no_fallback, "refused_back_source_off"), 1.0);

    // Given the CA, the supernode fetches it and the node gets it through the swarm.
    let trusting = Supernode::builder().args(["--origin-ca-file", &ca]).start();
    let swarm = node(&trusting, false);
    let got = http::get(&format!("{}{path}", swarm.url()), None).unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(&got.body, &image.layers[2]);
    assert_eq!(bytes_from(&swarm, "origin"), 0.0);
    assert_eq!(
        trusting
            .metric("damselfly_supernode_origin_bytes_total")
            .unwrap(),
        image.layers[2].len() as f64
    );
}

#[test]
fn a_restarted_node_serves_its_cached_blobs_to_peers() {
    let _serial = serial();
    let registry = TestRegistry::start();
    let (image, pushed) = push(&registry, "e2e/rejoin", "rejoin", 29);
    let supernode = Supernode::builder().start();
    let data = tempfile::tempdir().unwrap();
    let layer = &pushed.layer_digests[2];
    let path = format!("/v2/e2e/rejoin/blobs/{layer}?ns={}", registry.host());
    let first = Dfdaemon::builder()
        .supernode(supernode.addr())
        .data_dir(data.path())
        .start();
    let got = http::get(&format!("{}{path}", first.url()), None).unwrap();
    assert_eq!(&got.body, &image.layers[2]);
    first.stop().unwrap();

    // Restarted on the same cache, the node offers the blob to the swarm again...
    let mut restarted = Dfdaemon::builder()
        .supernode(supernode.addr())
        .data_dir(data.path())
        .start();
    restarted
        .daemon_mut()
        .wait_for_log("offered cached blobs", Duration::from_secs(10))
        .unwrap();
    let served_before = supernode
        .metric("damselfly_supernode_served_bytes_total")
        .unwrap();
    let sync_digests_before = supernode
        .metric("damselfly_supernode_sync_digests_total")
        .unwrap();
    // ...so a new node gets it from that peer, not from the supernode.
    let other = Dfdaemon::builder().supernode(supernode.addr()).start();
    let got = http::get(&format!("{}{path}", other.url()), None).unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(&got.body, &image.layers[2]);
    // The download's sources are counted once it is committed, just after the last byte.
    let len = image.layers[2].len() as f64;
    assert!(
        damselfly_e2e::wait_until(Duration::from_secs(5), || bytes_from(&other, "peer") == len),
        "peer {} supernode {}",
        bytes_from(&other, "peer"),
        bytes_from(&other, "supernode")
    );
    assert_eq!(
        supernode
            .metric("damselfly_supernode_served_bytes_total")
            .unwrap(),
        served_before
    );
    // The restarted node got the signatures of its held blob's digests again, and sent them
    // with its pieces: the new node needed no digest from the supernode's syncs.
    assert_eq!(
        supernode
            .metric("damselfly_supernode_sync_digests_total")
            .unwrap(),
        sync_digests_before
    );
    assert_eq!(registry.blob_get_count(layer), 1);

    // A supernode that never had the blob is not made to fetch it by a holder.
    restarted.stop().unwrap();
    let fresh = Supernode::builder().start();
    let mut again = Dfdaemon::builder()
        .supernode(fresh.addr())
        .data_dir(data.path())
        .start();
    let line = again
        .daemon_mut()
        .wait_for_log("offered cached blobs", Duration::from_secs(10))
        .unwrap();
    assert!(line.contains("joined=0"), "{line}");
    assert_eq!(registry.blob_get_count(layer), 1);
    assert_eq!(
        fresh
            .metric("damselfly_supernode_origin_bytes_total")
            .unwrap(),
        0.0
    );
}

#[test]
fn a_range_of_a_blob_still_downloading_is_fetched_before_the_rest() {
    let _serial = serial();
    let registry = TestRegistry::start();
    let blob = random_blob(32 * MIB, 67);
    let digest = registry.push_blob("e2e/urgent", &blob);
    let supernode = Supernode::builder().start();
    // 32 pieces of 1 MiB at 2 MiB/s: in download order the last one lands after ~16 s.
    let dfdaemon = Dfdaemon::builder()
        .supernode(supernode.addr())
        .args(["--p2p-download-rate", "2MiB"])
        .start();
    let url = format!(
        "{}/v2/e2e/urgent/blobs/{digest}?ns={}",
        dfdaemon.url(),
        registry.host()
    );
    let tail = (blob.len() - 64 * 1024)..blob.len();
    let started = Instant::now();
    let r = http::Request::get(&url)
        .header("range", format!("bytes={}-{}", tail.start, tail.end - 1))
        .timeout(Duration::from_secs(60))
        .send()
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status, 206, "{}", r.text());
    assert!(r.body == blob[tail], "wrong bytes");
    // The reader waited for its own piece, not for the blob: the whole blob takes ~16 s at
    // this rate, so an answer within 6 s means the last piece was fetched out of order.
    // (The supernode's sent-bytes counter is no measure of this: on loopback the socket
    // buffers can hold many MiB the rate-limited node has not read yet.)
    assert!(
        waited < Duration::from_secs(6),
        "the range took {waited:?}, as long as the whole blob"
    );
}

/// A registry that sends other bytes than the digest it is asked for (right length): the
/// runtime must never receive a complete response. dfdaemon fetches it itself (no
/// supernode), streams every byte but the last, finds the mismatch and cuts the response.
#[test]
fn a_blob_that_does_not_match_its_digest_never_arrives_complete() {
    let _serial = serial();
    let wanted = random_blob(3 << 20, 41);
    let digest = sha256_digest(&wanted);
    let registry = lying_http_server(random_blob(wanted.len(), 42));
    let node = Dfdaemon::builder().start();
    let url = format!(
        "{}/v2/e2e/liar/blobs/{digest}?ns=127.0.0.1:{}",
        node.url(),
        registry.port()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("blob");
    let curl = std::process::Command::new("curl")
        .args(["-sS", "--fail", "-o"])
        .arg(&out)
        .arg(&url)
        .output()
        .expect("curl runs");
    assert!(
        !curl.status.success(),
        "curl accepted a blob that does not match its digest: {}",
        describe_output(&curl)
    );
    let got = std::fs::metadata(&out).map_or(0, |m| m.len());
    assert!(
        got < wanted.len() as u64,
        "a complete body of wrong bytes reached the client ({got} bytes)"
    );
    // Nothing unverified stays in the node cache: the next request fails the same way.
    let again = http::get(&url, None);
    assert!(
        again.map_or(true, |r| r.status != 200 || r.body.len() < wanted.len()),
        "the second request got the whole wrong blob"
    );
}

/// `p2p.prefetch_layers`: with it on, an image manifest passing through the mirror starts its
/// layers' downloads at once, so they are in the node cache before the runtime asks for
/// them; off (the default), nothing is fetched until asked.
#[test]
fn a_manifest_starts_its_layers_downloading_before_the_runtime_asks() {
    let _serial = serial();
    let registry = TestRegistry::start();
    let (image, pushed) = push(&registry, "e2e/ahead", "ahead", 71);
    let supernode = Supernode::builder().start();
    let get_manifest = |d: &Dfdaemon| {
        let r = http::Request::get(format!(
            "{}/v2/e2e/ahead/manifests/1?ns={}",
            d.url(),
            registry.host()
        ))
        .header("accept", damselfly_e2e::OCI_MANIFEST_MEDIA_TYPE)
        .send()
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        // Answered unchanged.
        assert_eq!(r.body, pushed.manifest);
    };
    let total: usize = image.layers.iter().map(Vec::len).sum();
    let fetched = |d: &Dfdaemon| bytes_from(d, "supernode") + bytes_from(d, "peer");

    // Off (the default): the manifest alone fetches no layer.
    let off = Dfdaemon::builder().supernode(supernode.addr()).start();
    get_manifest(&off);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fetched(&off), 0.0);
    assert_eq!(
        off.metric("damselfly_dfdaemon_prefetched_blobs_total", None)
            .unwrap(),
        0.0
    );
    for layer in &pushed.layer_digests {
        assert_eq!(registry.blob_get_count(layer), 0, "{layer}");
    }

    // On: every layer lands in the node cache without a blob request.
    let on = Dfdaemon::builder()
        .supernode(supernode.addr())
        .args(["--p2p-prefetch-layers", "true"])
        .start();
    get_manifest(&on);
    assert_eq!(
        on.metric("damselfly_dfdaemon_prefetched_blobs_total", None)
            .unwrap(),
        pushed.layer_digests.len() as f64
    );
    assert!(
        damselfly_e2e::wait_until(Duration::from_secs(20), || fetched(&on) == total as f64),
        "fetched {} of {total} bytes ahead",
        fetched(&on)
    );
    // A download is counted when its last piece is in; the cache adopts the blob (re-reads
    // and re-hashes it) moments later, and until then a GET joins the download instead of
    // reading the cache. Wait for all three in the cache.
    let cached = || {
        on.metric("damselfly_dfdaemon_cache_bytes", None)
            .unwrap_or(0.0)
    };
    assert!(
        damselfly_e2e::wait_until(Duration::from_secs(20), || cached() >= total as f64),
        "cache holds {} of {total} bytes",
        cached()
    );
    assert_eq!(blob_requests(&on), 0.0);
    // The runtime's GETs are then answered from the node cache, and the registry sent each
    // layer once (to the supernode).
    for (layer, data) in pushed.layer_digests.iter().zip(&image.layers) {
        let url = format!(
            "{}/v2/e2e/ahead/blobs/{layer}?ns={}",
            on.url(),
            registry.host()
        );
        let r = http::get(&url, None).unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body == *data, "{layer}: wrong bytes");
        assert_eq!(registry.blob_get_count(layer), 1, "{layer}");
    }
    // Counted just after the last byte of each answer went out.
    assert!(
        damselfly_e2e::wait_until(Duration::from_secs(5), || bytes_from(&on, "local")
            == total as f64),
        "local bytes {}",
        bytes_from(&on, "local")
    );
    // A second pass of the manifest starts nothing: the layers are cached.
    get_manifest(&on);
    assert_eq!(
        on.metric("damselfly_dfdaemon_prefetched_blobs_total", None)
            .unwrap(),
        pushed.layer_digests.len() as f64
    );
}

/// `max_downloads`: with the one allowed download running, a GET that would start another
/// gets 503 with `Retry-After` (nothing is fetched for it), a GET of the blob being
/// downloaded joins it, and once it ends the other blob is served.
#[test]
fn a_node_at_max_downloads_refuses_a_new_one_and_serves_the_running_one() {
    let _serial = serial();
    let registry = TestRegistry::start();
    let slow = random_blob(4 * MIB, 72);
    let other = random_blob(MIB, 73);
    let slow_digest = registry.push_blob("e2e/max", &slow);
    let other_digest = registry.push_blob("e2e/max", &other);
    let supernode = Supernode::builder().start();
    // 4 MiB at 1 MiB/s: the first download runs about 3 s.
    let d = Dfdaemon::builder()
        .supernode(supernode.addr())
        .args(["--max-downloads", "1", "--p2p-download-rate", "1MiB"])
        .start();
    let url = |digest: &str| {
        format!(
            "{}/v2/e2e/max/blobs/{digest}?ns={}",
            d.url(),
            registry.host()
        )
    };
    let first_url = url(&slow_digest);
    let first = std::thread::spawn(move || http::get(&first_url, None).unwrap());
    assert!(
        damselfly_e2e::wait_until(Duration::from_secs(10), || d
            .metric("damselfly_dfdaemon_downloads", None)
            .unwrap()
            == 1.0),
        "the first download never started"
    );
    let refused = http::get(&url(&other_digest), None).unwrap();
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert!(
        refused.text().contains("max_downloads"),
        "{}",
        refused.text()
    );
    assert_eq!(registry.blob_get_count(&other_digest), 0);
    // The running one is joined, not refused.
    let joined = http::get(&url(&slow_digest), None).unwrap();
    assert_eq!(joined.status, 200);
    assert!(joined.body == slow, "wrong bytes");
    let first = first.join().unwrap();
    assert!(first.body == slow, "wrong bytes");
    assert_eq!(
        d.metric(
            "damselfly_dfdaemon_errors_total",
            Some("reason=\"too_many_downloads\"")
        )
        .unwrap(),
        1.0
    );
    // Done (the download leaves the running set just after its last byte went out): the
    // other blob is served now, as to a runtime that retries after `Retry-After`.
    let mut later = None;
    assert!(
        damselfly_e2e::wait_until(Duration::from_secs(5), || {
            let r = http::get(&url(&other_digest), None).unwrap();
            let ok = r.status == 200;
            later = Some(r);
            ok
        }),
        "still refused: {:?}",
        later.as_ref().map(|r| r.status)
    );
    assert!(later.unwrap().body == other, "wrong bytes");
}

/// A dfdaemon SIGKILLed in the middle of a containerd pull and started again on its data
/// directory and address: it keeps nothing of the cut download (no partial file, no entry),
/// containerd's next pull goes through it and runs the image, and every blob it then
/// serves is whole.
#[test]
fn a_dfdaemon_killed_mid_pull_keeps_nothing_partial_and_the_next_pull_succeeds() {
    if !running_as_root(
        "a_dfdaemon_killed_mid_pull_keeps_nothing_partial_and_the_next_pull_succeeds",
    ) {
        return;
    }
    let _serial = serial();
    let registry = TestRegistry::start();
    let (image, pushed) = push(&registry, "e2e/killed", "killed", 23);
    let sn = Supernode::builder().start();
    let data = tempfile::tempdir().unwrap();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_tcp_port([127, 0, 0, 1].into())));
    // 1 MiB/s: the 6 MiB layer takes about 6 s through the node.
    let start = || {
        Dfdaemon::builder()
            .supernode(sn.addr())
            .data_dir(data.path())
            .listen(listen)
            .args(["--p2p-download-rate", "1MiB"])
            .start()
    };
    let mut dfdaemon = start();
    let reference = format!("{}/e2e/killed:1", registry.host());
    let hosts = hosts_dir(&registry, &dfdaemon.url());
    let containerd = Containerd::start().unwrap();
    let first = std::thread::scope(|s| {
        let pulling = s.spawn(|| containerd.pull(&reference, hosts.path()).unwrap());
        assert!(
            damselfly_e2e::wait_until(Duration::from_secs(30), || bytes_from(
                &dfdaemon,
                "supernode"
            ) + bytes_from(
                &dfdaemon, "peer"
            ) >= (2 * MIB) as f64),
            "the pull never got 2 MiB through the node"
        );
        dfdaemon.daemon_mut().kill();
        pulling.join().unwrap()
    });
    // containerd may have finished from the registry (its next host) or failed; either way
    // the node must hold nothing partial.
    let big = &pushed.layer_digests[pushed.layer_digests.len() - 1];
    println!(
        "pull across the kill: {} (registry GETs of the cut layer: {})",
        first.status,
        registry.blob_get_count(big)
    );
    let dfdaemon = start();
    let incoming: Vec<_> = std::fs::read_dir(data.path().join("incoming"))
        .unwrap()
        .collect();
    assert!(incoming.is_empty(), "{incoming:?}");
    let _ = containerd.remove_image(&reference);
    let before = blob_requests(&dfdaemon);
    let pull = containerd.pull(&reference, hosts.path()).unwrap();
    assert!(pull.status.success(), "{}", describe_output(&pull));
    assert!(
        blob_requests(&dfdaemon) > before,
        "the second pull did not go through the node"
    );
    let run = containerd.run(&reference, "killed", &[]).unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), image.hello);
    for layer in &pushed.layer_digests {
        let r = http::get(
            &format!(
                "{}/v2/e2e/killed/blobs/{layer}?ns={}",
                dfdaemon.url(),
                registry.host()
            ),
            None,
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(&sha256_digest(&r.body), layer);
    }
}

/// A containerd pull through a node whose dfdaemon knows a fleet of three supernodes, with
/// the big layer's home supernode SIGKILLed mid-pull: the node's download moves to the next
/// supernode in the blob's placement order (takeover), containerd's pull completes through
/// the node (the registry is its fallback host, and is not used for that layer), and the
/// image runs. Issue 14's fleet acceptance, driven by a real runtime.
#[test]
fn a_containerd_pull_through_the_node_survives_the_home_supernodes_death() {
    if !running_as_root("a_containerd_pull_through_the_node_survives_the_home_supernodes_death") {
        return;
    }
    let _serial = serial();
    let registry = TestRegistry::start();
    // A layer of 48 one-MiB pieces: the rate limit charges a piece once it is in, so a
    // node holds a few pieces more than it has counted, and most must still be to come
    // when the home dies.
    let image = TestImage::busybox("fleet", 48 * MIB, 29).unwrap();
    let pushed = registry.push_test_image("e2e/fleet", "1", &image).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&pushed.manifest).unwrap();
    let big_layer = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|l| l["size"].as_u64().unwrap())
        .unwrap();
    let big = big_layer["digest"].as_str().unwrap().to_owned();
    let big_size = big_layer["size"].as_u64().unwrap();
    let mut supernodes: Vec<Supernode> = (0..3).map(|_| Supernode::builder().start()).collect();
    let addrs: Vec<String> = supernodes.iter().map(|s| s.addr().to_string()).collect();
    let order = damselfly_common::placement::order(&big.parse().unwrap(), &addrs);
    let (home, next) = (order[0], order[1]);
    // 4 MiB/s: the layer takes about 12 s through the node; a supernode silent for 2 s is
    // given up.
    let mut builder = Dfdaemon::builder().args([
        "--p2p-download-rate",
        "4MiB",
        "--p2p-supernode-timeout",
        "2s",
    ]);
    for a in &addrs {
        builder = builder.supernode(a);
    }
    let dfdaemon = builder.start();
    let reference = format!("{}/e2e/fleet:1", registry.host());
    let hosts = hosts_dir(&registry, &dfdaemon.url());
    let containerd = Containerd::start().unwrap();
    let pull = std::thread::scope(|s| {
        let pulling = s.spawn(|| containerd.pull(&reference, hosts.path()).unwrap());
        // The node's byte counters move when a blob is done, so: once the home has fetched
        // the big layer for the node (at loopback speed), a quarter of the node's 12 s in.
        assert!(
            damselfly_e2e::wait_until(Duration::from_secs(30), || supernodes[home]
                .metric("damselfly_supernode_origin_bytes_total")
                .unwrap_or(0.0)
                >= (48 * MIB) as f64),
            "the node never registered the big layer with its home"
        );
        std::thread::sleep(Duration::from_secs(3));
        supernodes[home].daemon_mut().kill();
        pulling.join().unwrap()
    });
    assert!(pull.status.success(), "{}", describe_output(&pull));
    assert_eq!(
        dfdaemon
            .metric("damselfly_dfdaemon_supernode_takeovers_total", None)
            .unwrap(),
        1.0,
        "the node's download was not taken over by the next supernode"
    );
    assert!(
        supernodes[next]
            .metric("damselfly_supernode_registrations_total")
            .unwrap()
            >= 1.0
    );
    // containerd got the layer from the node: the registry sent it to the home supernode
    // and (these supernodes sign with keys of their own, so the successor cannot take the
    // node's pieces) to its successor, not a third time to containerd falling back to it.
    let gets = registry.blob_get_count(&big);
    let sent = registry.blob_bytes_served(&big);
    println!("registry GETs of the big layer: {gets}, {} MiB", sent >> 20);
    assert!(
        sent <= 2 * big_size,
        "{sent} bytes of a {big_size}-byte layer"
    );
    assert!(bytes_from(&dfdaemon, "supernode") >= (48 * MIB) as f64);
    let run = containerd.run(&reference, "fleet", &[]).unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), image.hello);
}

/// Whether this machine can run the IPv6 tests; says why not when it cannot.
fn ipv6_or_skip(test: &str) -> bool {
    if damselfly_e2e::ipv6_loopback_available() {
        return true;
    }
    eprintln!(
        "SKIPPED {test}: no IPv6 loopback here (binding [::1] fails; `ip -6 addr show lo` shows \
         no ::1), so the dual-stack paths cannot be exercised"
    );
    false
}

/// dfdaemon's default listen addresses (`[::]`, dual stack; only the port is picked free)
/// serve an IPv6-only client over `[::1]` and an IPv4-only client over `127.0.0.1`, each
/// getting the blob's exact bytes (issue 16 part 4).
#[test]
fn a_default_configured_mirror_serves_ipv6_and_ipv4_clients() {
    if !ipv6_or_skip("a_default_configured_mirror_serves_ipv6_and_ipv4_clients") {
        return;
    }
    let _serial = serial();
    let registry = TestRegistry::start();
    let (image, pushed) = push(&registry, "e2e/dual", "dual stack", 31);
    let supernode = Supernode::builder().start();
    let wildcard = |port: u16| std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    let dfdaemon = Dfdaemon::builder()
        .supernode(supernode.addr())
        .listen(wildcard(0))
        .peer_listen(wildcard(0))
        .start();
    assert_eq!(dfdaemon.addr().ip(), std::net::Ipv6Addr::UNSPECIFIED);
    let port = dfdaemon.addr().port();
    let v6 = format!("http://[::1]:{port}");
    let v4 = format!("http://127.0.0.1:{port}");
    // Each family fetches one layer first (through the swarm), then the other's from cache.
    for (first, second, i) in [(&v6, &v4, 1), (&v4, &v6, 2)] {
        let layer = &pushed.layer_digests[i];
        let path = format!("/v2/e2e/dual/blobs/{layer}?ns={}", registry.host());
        for base in [first, second] {
            let got = http::get(&format!("{base}{path}"), None).unwrap();
            assert_eq!(got.status, 200, "{base}: {}", got.text());
            assert_eq!(&sha256_digest(&got.body), layer, "{base}");
            assert_eq!(&got.body, &image.layers[i], "{base}");
        }
    }
    assert_eq!(blob_requests(&dfdaemon), 4.0);
    assert!(
        !dfdaemon.log_text().contains("cannot listen on IPv6"),
        "the mirror must have bound [::], not fallen back to IPv4:\n{}",
        dfdaemon.log_text()
    );
}

/// Two nodes with the default dual-stack piece port and a supernode reached at `[::1]`:
/// each advertises its IPv6 address, and the second node's blob comes from the first over
/// IPv6 (dfdaemon's `blob_bytes_total{source="peer"}`).
#[test]
fn peers_exchange_pieces_over_ipv6() {
    if !ipv6_or_skip("peers_exchange_pieces_over_ipv6") {
        return;
    }
    let _serial = serial();
    let registry = TestRegistry::builder().ipv6(true).start();
    let (image, pushed) = push(&registry, "e2e/v6peers", "v6 peers", 32);
    let supernode = Supernode::builder()
        .ip(std::net::Ipv6Addr::LOCALHOST.into())
        .start();
    assert!(supernode.addr().is_ipv6());
    let wildcard = || std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
    let node = |name: &str| {
        Dfdaemon::builder()
            .name(name)
            .supernode(supernode.addr())
            .listen(wildcard())
            .peer_listen(wildcard())
            .start()
    };
    let layer = &pushed.layer_digests[2];
    let path = format!("/v2/e2e/v6peers/blobs/{layer}?ns={}", registry.host());
    let mut first = node("dfdaemon-v6-a");
    let advertised = first.peer_addr().unwrap();
    assert_eq!(
        advertised.ip(),
        std::net::Ipv6Addr::LOCALHOST,
        "the peer address routing to the supernode at [::1] is ::1"
    );
    let mirror = |d: &Dfdaemon| format!("http://[::1]:{}", d.addr().port());
    let got = http::get(&format!("{}{path}", mirror(&first)), None).unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(&sha256_digest(&got.body), layer);

    let second = node("dfdaemon-v6-b");
    let got = http::get(&format!("{}{path}", mirror(&second)), None).unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(&sha256_digest(&got.body), layer);
    assert_eq!(&got.body, &image.layers[2]);
    let len = image.layers[2].len() as f64;
    assert!(
        damselfly_e2e::wait_until(Duration::from_secs(5), || bytes_from(&second, "peer")
            == len),
        "peer {} supernode {}",
        bytes_from(&second, "peer"),
        bytes_from(&second, "supernode")
    );
    assert!(
        supernode.log_text().contains(&advertised.to_string()),
        "the supernode must know the first node by its IPv6 address {advertised}"
    );
}

/// `dfdaemon explain` run against `d`; its stdout.
fn explain_cli(d: &Dfdaemon, digest: &str, json: bool) -> String {
    let mut cmd = std::process::Command::new(bin("dfdaemon"));
    cmd.args(["explain", digest, "--mirror", &d.url()]);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", describe_output(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Waits until `d` has adopted `digest` into its cache with its record (the response ends
/// when the last byte is verified, a moment before the cache takes the file).
fn wait_recorded(d: &Dfdaemon, digest: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http::get(&format!("{}/api/v1/blobs/{digest}", d.url()), None).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        if v["state"] == "cached" && !v["fetch"].is_null() {
            return;
        }
        assert!(Instant::now() < deadline, "never recorded: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A global (non-loopback) IPv4 address of this machine, if it has one.
fn global_ipv4() -> Option<std::net::Ipv4Addr> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (_, rest) = l.split_once(" inet ")?;
        rest.split('/').next()?.trim().parse().ok()
    })
}

#[test]
fn every_blob_response_says_where_its_bytes_came_from_and_explain_says_why() {
    let _serial = serial();
    let registry = TestRegistry::start();
    let (image, pushed) = push(&registry, "e2e/explain", "explain", 41);
    let sn = Supernode::builder().start();
    let mut a = Dfdaemon::builder().supernode(sn.addr()).start();
    let a_peer = a.peer_addr().unwrap();
    // The big random layer.
    let (index, layer) = pushed
        .layer_digests
        .iter()
        .enumerate()
        .max_by_key(|(i, _)| image.layers[*i].len())
        .unwrap();
    let size = image.layers[index].len() as u64;
    let url = |d: &Dfdaemon| {
        format!(
            "{}/v2/e2e/explain/blobs/{layer}?ns={}",
            d.url(),
            registry.host()
        )
    };
    let source = |r: &http::Response| {
        r.header("x-damselfly-source")
            .unwrap_or("<none>")
            .to_owned()
    };

    // Cold: through the swarm, and the header says so before the first byte.
    let r = http::get(&url(&a), None).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, image.layers[index]);
    // This pull made the supernode fetch the blob: the registry's one copy for the cluster.
    assert_eq!(
        source(&r),
        format!("swarm; supernode={}; supernode-copy=started", sn.addr())
    );
    wait_recorded(&a, layer);
    // Again: from this node's cache, fetched from the supernode alone.
    let r = http::get(&url(&a), None).unwrap();
    assert_eq!(r.body, image.layers[index]);
    assert_eq!(
        source(&r),
        format!(
            "local; fetched=swarm; peers=0; supernode={size}; registry=0; supernode-copy=started"
        )
    );
    let text = explain_cli(&a, layer, false);
    assert!(text.contains("in this node's cache"), "{text}");
    assert!(
        text.contains(&format!("through the swarm (supernode {})", sn.addr())),
        "{text}"
    );
    assert!(text.contains("registry used  no"), "{text}");

    // A second node: every byte from node A or the supernode, and explain names A.
    let b = Dfdaemon::builder().supernode(sn.addr()).start();
    let r = http::get(&url(&b), None).unwrap();
    assert_eq!(r.body, image.layers[index]);
    assert_eq!(
        source(&r),
        format!("swarm; supernode={}; supernode-copy=stored", sn.addr())
    );
    wait_recorded(&b, layer);
    let json: serde_json::Value = serde_json::from_str(&explain_cli(&b, layer, true)).unwrap();
    assert_eq!(json["state"], "cached");
    let fetch = &json["fetch"];
    let (peers, supernode) = (
        fetch["from_peers"].as_u64().unwrap(),
        fetch["from_supernode"].as_u64().unwrap(),
    );
    assert_eq!(peers + supernode, size, "{json}");
    assert_eq!(fetch["from_registry"], 0);
    assert_eq!(fetch["supernode_copy"], "stored", "{json}");
    let parents = fetch["parents"].as_array().unwrap();
    let named: u64 = parents.iter().map(|p| p["bytes"].as_u64().unwrap()).sum();
    assert_eq!(named, peers, "{json}");
    if peers > 0 {
        assert_eq!(parents[0]["addr"], a_peer.to_string(), "{json}");
    }
    assert_eq!(
        registry.blob_get_count(layer),
        1,
        "one registry fetch so far"
    );

    // No supernode answers: the node goes to the registry itself and says why.
    let dead = format!("127.0.0.1:{}", free_tcp_port([127, 0, 0, 1].into()));
    let data = tempfile::tempdir().unwrap();
    let c = Dfdaemon::builder()
        .supernode(&dead)
        .data_dir(data.path())
        .start();
    let r = http::get(&url(&c), None).unwrap();
    assert_eq!(r.body, image.layers[index]);
    assert_eq!(source(&r), "registry; reason=supernode_unreachable");
    wait_recorded(&c, layer);
    let r = http::get(&url(&c), None).unwrap();
    assert_eq!(
        source(&r),
        format!(
            "local; fetched=registry; peers=0; supernode=0; registry={size}; reason=supernode_unreachable"
        )
    );
    // The record outlives a restart, with the blob.
    c.stop().unwrap();
    let c = Dfdaemon::builder()
        .supernode(&dead)
        .data_dir(data.path())
        .start();
    let text = explain_cli(&c, layer.trim_start_matches("sha256:"), false);
    assert!(text.contains("from the registry, by this node"), "{text}");
    assert!(
        text.contains("registry used  because supernode unreachable"),
        "{text}"
    );
    assert!(text.contains("[supernode_unreachable]"), "{text}");
    let unknown = sha256_digest(b"never pulled");
    assert!(explain_cli(&c, &unknown, false).contains("not on this node"));

    // The blob API answers this node only.
    let Some(ip) = global_ipv4() else {
        eprintln!("skipping the non-loopback part: this machine has no global IPv4 address");
        return;
    };
    let port = free_tcp_port([0, 0, 0, 0].into());
    let open = Dfdaemon::builder()
        .supernode(sn.addr())
        .listen(format!("0.0.0.0:{port}").parse().unwrap())
        .start();
    let r = http::get(&format!("http://{ip}:{port}/api/v1/blobs/{layer}"), None).unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("loopback"), "{}", r.text());
    let r = http::get(
        &format!("http://127.0.0.1:{port}/api/v1/blobs/{layer}"),
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    drop(open);
}

#[test]
fn dockerd_pulls_and_runs_a_docker_hub_image_through_the_mirror_init_docker_configures() {
    let test =
        "dockerd_pulls_and_runs_a_docker_hub_image_through_the_mirror_init_docker_configures";
    if !running_as_root(test) {
        return;
    }
    if let Err(e) = damselfly_e2e::dockerd_program() {
        eprintln!("{test}: skipping: {e:#}");
        return;
    }
    let _serial = serial();
    // The local registry stands in for Docker Hub: dfdaemon's default upstream, where
    // Docker's mirror requests (which name no registry) go.
    let registry = TestRegistry::start();
    let (image, pushed) = push(&registry, "e2e/docker", "hello from dockerd", 16);
    let supernode = Supernode::builder().start();
    let dfdaemon = Dfdaemon::builder()
        .supernode(supernode.addr())
        .args(["--default-upstream", &registry.url()])
        .start();
    // The engine is configured the way an operator does it: `dfdaemon init docker --write`,
    // which keeps the keys already in daemon.json.
    let dir = tempfile::tempdir().unwrap();
    let daemon_json = dir.path().join("daemon.json");
    std::fs::write(&daemon_json, "{\"log-level\": \"info\"}\n").unwrap();
    let init = std::process::Command::new(bin("dfdaemon"))
        .args(["init", "docker", "--write", "--mirror", &dfdaemon.url()])
        .arg("--docker-config")
        .arg(&daemon_json)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", describe_output(&init));
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&daemon_json).unwrap()).unwrap();
    assert_eq!(written["registry-mirrors"][0], dfdaemon.url(), "{written}");
    assert_eq!(written["log-level"], "info", "{written}");
    let docker = match damselfly_e2e::Docker::start(&daemon_json) {
        Ok(d) => d,
        Err(e) => panic!("dockerd does not start on this machine: {e:#}"),
    };

    // A Docker Hub name (no registry): Docker asks its mirror first.
    let pull = docker.pull("e2e/docker:1").unwrap();
    assert!(
        pull.status.success(),
        "docker pull failed: {}\ndockerd: {}\ndfdaemon: {}",
        describe_output(&pull),
        docker.log_text(),
        dfdaemon.log_text()
    );
    assert_pulled_through_the_swarm("dockerd", &dfdaemon, &registry, &image, &pushed);

    let run = docker.run("e2e/docker:1", &[]).unwrap();
    assert_greets_or_skip(test, "docker", &run, &image, || {
        docker.cannot_run_containers(&image)
    });
}

#[test]
fn kubelets_cri_pull_goes_through_the_mirror_init_containerd_configures_with_and_without_pull_secrets()
 {
    let test = "kubelets_cri_pull_goes_through_the_mirror_init_containerd_configures_with_and_without_pull_secrets";
    if !running_as_root(test) {
        return;
    }
    let _serial = serial();
    let (user, pass) = ("puller", "pull-secret");
    let public = TestRegistry::start();
    let private = TestRegistry::builder().htpasswd(user, pass).start();
    let (image, pushed) = push(&public, "e2e/cri", "hello through CRI", 21);
    let (secret_image, secret_pushed) =
        push(&private, "e2e/cri-private", "hello with a secret", 22);
    let supernode = Supernode::builder().start();
    let flags = [
        "--plain-http-registry".to_owned(),
        public.host(),
        "--plain-http-registry".to_owned(),
        private.host(),
    ];
    let dfdaemon = Dfdaemon::builder()
        .supernode(supernode.addr())
        .args(flags.clone())
        .start();
    // containerd's CRI plugin reads the hosts directory `dfdaemon init containerd` writes
    // (`config_path`), as on a Kubernetes node.
    let hosts = tempfile::tempdir().unwrap();
    let init = std::process::Command::new(bin("dfdaemon"))
        .args(flags)
        .args(["init", "containerd", "--write", "--mirror", &dfdaemon.url()])
        .arg("--hosts-dir")
        .arg(hosts.path())
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", describe_output(&init));
    let containerd = Containerd::builder().cri(hosts.path()).start().unwrap();
    let public_ref = format!("{}/e2e/cri:1", public.host());
    let private_ref = format!("{}/e2e/cri-private:1", private.host());
    let pull = |reference: &str, auth: Option<k8s_cri::v1::AuthConfig>| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let mut cri = damselfly_e2e::cri_image_client(containerd.socket())
                .await
                .unwrap();
            cri.pull_image(k8s_cri::v1::PullImageRequest {
                image: Some(k8s_cri::v1::ImageSpec {
                    image: reference.to_owned(),
                    ..Default::default()
                }),
                auth,
                ..Default::default()
            })
            .await
        })
    };

    // A public image, no pull secret.
    let pulled = pull(&public_ref, None);
    assert!(pulled.is_ok(), "{pulled:?}\n{}", containerd.log_text());
    // A private image without its secret: refused (the registry's 401 reached containerd
    // through the mirror), and no blob left the private registry.
    let refused = pull(&private_ref, None);
    let status = refused.expect_err("a private image pulled without credentials");
    assert!(
        status.message().contains("401") || status.message().contains("nauthorized"),
        "{status:?}"
    );
    for digest in secret_pushed
        .layer_digests
        .iter()
        .chain([&secret_pushed.config_digest])
    {
        assert_eq!(private.blob_get_count(digest), 0, "{digest}");
    }
    // With the secret (kubelet passes an imagePullSecret as the request's AuthConfig).
    let auth = k8s_cri::v1::AuthConfig {
        username: user.to_owned(),
        password: pass.to_owned(),
        ..Default::default()
    };
    let pulled = pull(&private_ref, Some(auth));
    assert!(pulled.is_ok(), "{pulled:?}\n{}", containerd.log_text());

    // Every blob of both images through the swarm: each sent once by a registry (to the
    // supernode; the busybox base layer the two images share, once for both), none by a
    // registry to the node.
    let mut digests: Vec<&String> = [&pushed, &secret_pushed]
        .iter()
        .flat_map(|p| p.layer_digests.iter().chain([&p.config_digest]))
        .collect();
    digests.sort();
    digests.dedup();
    for digest in digests {
        let gets = public.blob_get_count(digest) + private.blob_get_count(digest);
        assert_eq!(gets, 1, "{digest}");
    }
    let swarm = bytes_from(&dfdaemon, "supernode") + bytes_from(&dfdaemon, "peer");
    assert!(swarm >= image.size() as f64, "swarm bytes {swarm}");
    assert_eq!(bytes_from(&dfdaemon, "origin"), 0.0);

    // The CRI-pulled image runs (in CRI's namespace), its greeting from its own config.
    let run = containerd
        .run_in(
            damselfly_e2e::CRI_NAMESPACE,
            &private_ref,
            "cri-private",
            &[],
        )
        .unwrap();
    assert!(run.status.success(), "{}", describe_output(&run));
    assert_eq!(String::from_utf8_lossy(&run.stdout), secret_image.hello);
}
