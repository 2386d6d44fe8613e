#![allow(clippy::unwrap_used)]
//! Exercises the harness itself against the real `docker-registry`.

use damselfly_e2e::{TestRegistry, http, ipv6_loopback_available, random_blob, sha256_hex};

const MIB: usize = 1024 * 1024;

#[test]
fn push_get_and_count_blob() {
    let registry = TestRegistry::start();
    assert!(registry.url().starts_with("http://127.0.0.1:"));

    let blob = random_blob(5 * MIB, 42);
    let digest = registry.push_blob("library/e2e", &blob);
    assert_eq!(digest, format!("sha256:{}", sha256_hex(&blob)));
    assert_eq!(registry.blob_get_count(&digest), 0);

    let url = registry.blob_url("library/e2e", &digest);
    let response = http::get(&url, None).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), blob.len());
    assert_eq!(sha256_hex(&response.body), sha256_hex(&blob));
    assert_eq!(registry.blob_get_count(&digest), 1);
    assert_eq!(registry.blob_bytes_served(&digest), blob.len() as u64);

    let response = http::get(&url, None).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(registry.blob_get_count(&digest), 2);

    // HEAD and ranged GET are told apart; 404s are not "served".
    let head = http::Request::head(&url).send().unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(registry.blob_head_count(&digest), 1);
    let range = http::Request::get(&url)
        .header("range", "bytes=0-1023")
        .send()
        .unwrap();
    assert_eq!(range.status, 206);
    assert_eq!(range.body, &blob[..1024]);
    assert_eq!(registry.blob_get_count(&digest), 3);

    let missing = format!("sha256:{}", "0".repeat(64));
    let response = http::get(&registry.blob_url("library/e2e", &missing), None).unwrap();
    assert_eq!(response.status, 404);
    assert_eq!(registry.blob_get_count(&missing), 0);
    assert_eq!(registry.blob_get_attempts(&missing), 1);
    // Other blobs do not disturb the count.
    assert_eq!(registry.blob_get_count(&digest), 3);
}

#[test]
fn push_image_manifest() {
    let registry = TestRegistry::start();
    let layers = [random_blob(100_000, 1), random_blob(200_000, 2)];
    let image = registry.push_image(
        "team/app",
        "v1",
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        &[&layers[0], &layers[1]],
    );
    assert_eq!(image.layer_digests.len(), 2);
    let response = http::Request::get(registry.manifest_url("team/app", "v1"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.body, image.manifest);
    assert_eq!(
        response.header("docker-content-digest"),
        Some(image.manifest_digest.as_str())
    );
}

#[test]
fn htpasswd_registry_requires_basic_auth() {
    let registry = TestRegistry::builder()
        .htpasswd("alice", "s3cret-pass")
        .start();
    let blob = random_blob(64 * 1024, 7);
    let digest = registry.push_blob("private/repo", &blob);
    let url = registry.blob_url("private/repo", &digest);

    let anonymous = http::get(&url, None).unwrap();
    assert_eq!(anonymous.status, 401);
    assert!(
        anonymous
            .header("www-authenticate")
            .unwrap()
            .starts_with("Basic realm=")
    );
    let wrong = http::get(&url, Some(("alice", "wrong"))).unwrap();
    assert_eq!(wrong.status, 401);
    assert_eq!(registry.blob_get_count(&digest), 0);
    assert_eq!(registry.blob_get_attempts(&digest), 2);

    let authorised = http::get(&url, registry.credentials()).unwrap();
    assert_eq!(authorised.status, 200);
    assert_eq!(authorised.body, blob);
    assert_eq!(registry.blob_get_count(&digest), 1);
}

#[test]
fn ipv6_registry() {
    if !ipv6_loopback_available() {
        println!("SKIPPED ipv6_registry: [::1] is not bindable on this machine");
        return;
    }
    let registry = TestRegistry::builder().ipv6(true).start();
    assert!(registry.addr().is_ipv6());
    assert!(
        registry.url().starts_with("http://[::1]:"),
        "{}",
        registry.url()
    );
    let blob = random_blob(MIB + 3, 9);
    let digest = registry.push_blob("v6/repo", &blob);
    let response = http::get(&registry.blob_url("v6/repo", &digest), None).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body, blob);
    assert_eq!(registry.blob_get_count(&digest), 1);
}

#[tokio::test]
async fn harness_works_inside_tokio_runtime() {
    let registry = TestRegistry::start();
    let digest = registry.push_blob("async/repo", b"hello");
    let response = http::get(&registry.blob_url("async/repo", &digest), None).unwrap();
    assert_eq!(response.body, b"hello");
    assert_eq!(registry.blob_get_count(&digest), 1);
}
