//! Exercises the containerd harness and the runnable test image against the real
//! `docker-registry`: push, `ctr image pull`, `ctr run`.
//!
//! Needs root (containerd mounts snapshots and runs containers); skipped otherwise.
#![allow(clippy::unwrap_used)]

use damselfly_e2e::{
    Containerd, TestImage, TestRegistry, describe_output as describe, running_as_root,
    write_hosts_toml,
};

const MIB: usize = 1024 * 1024;
const HELLO: &str = "hello from damselfly";

#[test]
fn pull_and_run_test_image_directly_from_registry() {
    if !running_as_root("pull_and_run_test_image_directly_from_registry") {
        return;
    }
    let registry = TestRegistry::start();
    let image = TestImage::busybox(HELLO, 4 * MIB, 7).expect("cannot build the test image");
    assert_eq!(image.layers.len(), 3);
    let pushed = registry
        .push_test_image("e2e/busybox", "1", &image)
        .expect("cannot push the test image");

    let containerd = Containerd::start().expect("cannot start containerd");
    eprintln!("containerd snapshotter: {}", containerd.snapshotter());
    let hosts = tempfile::tempdir().unwrap();
    let host = registry.host();
    write_hosts_toml(hosts.path(), &host, "", Some(&registry.url())).unwrap();

    let reference = format!("{host}/e2e/busybox:1");
    let pull = containerd.pull(&reference, hosts.path()).unwrap();
    assert!(pull.status.success(), "pull failed: {}", describe(&pull));
    // containerd 1.6 silently falls back to its defaults when it cannot parse hosts.toml.
    let pull_log = String::from_utf8_lossy(&pull.stderr);
    assert!(!pull_log.contains("hosts.toml"), "{pull_log}");

    // Every blob came straight from the registry, once.
    let content = containerd.content_digests().unwrap();
    for digest in pushed.layer_digests.iter().chain([&pushed.config_digest]) {
        assert_eq!(registry.blob_get_count(digest), 1, "GETs of {digest}");
        assert!(content.contains(digest), "{digest} not in {content:?}");
    }

    let run = containerd
        .run(&reference, "hello", &["cat", "/etc/damselfly/hello.txt"])
        .unwrap();
    assert!(run.status.success(), "run failed: {}", describe(&run));
    assert_eq!(String::from_utf8_lossy(&run.stdout), image.hello);

    // The image's default command prints the same file; the third layer is there in full.
    let run = containerd.run(&reference, "default-cmd", &[]).unwrap();
    assert!(run.status.success(), "run failed: {}", describe(&run));
    assert_eq!(String::from_utf8_lossy(&run.stdout), HELLO);
    let run = containerd
        .run(&reference, "ls", &["ls", "-ln", "/data/random.bin"])
        .unwrap();
    assert!(run.status.success(), "run failed: {}", describe(&run));
    let listing = String::from_utf8_lossy(&run.stdout);
    assert!(
        listing
            .split_whitespace()
            .any(|f| f == (4 * MIB).to_string()),
        "{listing}"
    );
}

/// A registry host with only a mirror configured: containerd asks the mirror for the original
/// repository's paths, tagged with `?ns=<original registry host>`, and never contacts the
/// (unresolvable) registry host itself.
#[test]
fn pull_through_mirror_host() {
    if !running_as_root("pull_through_mirror_host") {
        return;
    }
    let registry = TestRegistry::start();
    let image = TestImage::busybox("hello through a mirror", 64 * 1024, 8).unwrap();
    let pushed = registry
        .push_test_image("e2e/mirrored", "v2", &image)
        .unwrap();

    let containerd = Containerd::start().expect("cannot start containerd");
    let hosts = tempfile::tempdir().unwrap();
    write_hosts_toml(hosts.path(), "registry.invalid", &registry.url(), None).unwrap();

    let reference = "registry.invalid/e2e/mirrored:v2";
    let pull = containerd.pull(reference, hosts.path()).unwrap();
    assert!(pull.status.success(), "pull failed: {}", describe(&pull));
    for digest in &pushed.layer_digests {
        assert_eq!(registry.blob_get_count(digest), 1, "GETs of {digest}");
    }
    let blob_uris: Vec<String> = registry
        .access_log()
        .into_iter()
        .filter(|entry| entry.method == "GET" && entry.path.contains("/blobs/"))
        .map(|entry| entry.uri)
        .collect();
    eprintln!("blob requests through the mirror: {blob_uris:#?}");
    assert_eq!(blob_uris.len(), 4, "config and 3 layers: {blob_uris:#?}");
    assert!(
        blob_uris
            .iter()
            .all(|uri| uri.starts_with("/v2/e2e/mirrored/blobs/sha256:")
                && uri.ends_with("?ns=registry.invalid")),
        "{blob_uris:#?}"
    );

    let run = containerd.run(reference, "mirrored", &[]).unwrap();
    assert!(run.status.success(), "run failed: {}", describe(&run));
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "hello through a mirror"
    );
}
