#![allow(clippy::unwrap_used)]
//! `damselfly_oci::registry::RegistryClient` against the real `docker-registry`: anonymous,
//! Basic (htpasswd) and token auth, pushes, verified reads, exact ranges, errors.

use std::ops::Range;
use std::path::PathBuf;

use damselfly_common::Digest;
use damselfly_e2e::{TestRegistry, free_tcp_port, random_blob, registry_blob_path};
use damselfly_oci::registry::{
    BlobStream, MT_OCI_MANIFEST, Reference, RegistryClient, RegistryError, RegistryOptions,
};
use futures::StreamExt as _;

fn plain(username: Option<&str>, password: Option<&str>) -> RegistryClient {
    RegistryClient::new(RegistryOptions {
        plain_http: true,
        username: username.map(str::to_owned),
        password: password.map(str::to_owned),
        ..RegistryOptions::default()
    })
    .unwrap()
}

fn reference(registry: &TestRegistry, name: &str) -> Reference {
    format!("{}/{name}", registry.host()).parse().unwrap()
}

async fn collect(mut stream: BlobStream) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// Writes `data` to a file in `dir` and returns its path and digest.
fn blob_file(dir: &tempfile::TempDir, data: &[u8]) -> (PathBuf, Digest) {
    let digest = Digest::of(data);
    let path = dir.path().join(digest.hex());
    std::fs::write(&path, data).unwrap();
    (path, digest)
}

/// An OCI manifest with `config` and one gzip layer.
fn manifest(config: &[u8], layer: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": Digest::of(config).to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": Digest::of(layer).to_string(), "size": layer.len()}],
    }))
    .unwrap()
}

/// Pushes a config, a layer and a manifest tagged by `r` with `client`; returns the layer and
/// the manifest.
async fn push_image(client: &RegistryClient, r: &Reference) -> (Vec<u8>, Vec<u8>) {
    let tmp = tempfile::tempdir().unwrap();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = random_blob(300_000, 11);
    for data in [&config[..], &layer[..]] {
        let (path, digest) = blob_file(&tmp, data);
        client.push_blob_file(r, &digest, &path).await.unwrap();
    }
    let m = manifest(config, &layer);
    let d = client.push_manifest(r, MT_OCI_MANIFEST, &m).await.unwrap();
    assert_eq!(d, Digest::of(&m));
    (layer, m)
}

fn uploads_started(registry: &TestRegistry, repo: &str) -> usize {
    let path = format!("/v2/{repo}/blobs/uploads/");
    registry
        .access_log()
        .iter()
        .filter(|e| e.method == "POST" && e.path == path)
        .count()
}

#[tokio::test]
async fn anonymous_push_pull_ranges_and_errors() {
    let registry = TestRegistry::start();
    let client = plain(None, None);
    let r = reference(&registry, "client/anon:v1");
    let tmp = tempfile::tempdir().unwrap();

    // A 3 MiB blob, streamed from its file; a second push of it sends nothing.
    let data = random_blob(3 << 20, 7);
    let (path, digest) = blob_file(&tmp, &data);
    assert!(!client.blob_exists(&r, &digest).await.unwrap());
    client.push_blob_file(&r, &digest, &path).await.unwrap();
    assert!(client.blob_exists(&r, &digest).await.unwrap());
    assert_eq!(
        client.blob_len(&r, &digest).await.unwrap(),
        Some(data.len() as u64)
    );
    let posts = uploads_started(&registry, "client/anon");
    assert_eq!(posts, 1);
    client.push_blob_file(&r, &digest, &path).await.unwrap();
    assert_eq!(uploads_started(&registry, "client/anon"), posts);

    // The blob reads back whole, and by exact ranges (206).
    let stream = client.blob(&r, &digest).await.unwrap();
    assert_eq!(stream.size, data.len() as u64);
    assert_eq!(collect(stream).await.unwrap(), data);
    let len = data.len() as u64;
    let ranges: [Range<u64>; 4] = [0..1, 1000..(1 << 20) + 7, len - 10..len, 5..5];
    for range in ranges {
        let got = client.blob_range(&r, &digest, range.clone()).await.unwrap();
        assert_eq!(&got[..], &data[range.start as usize..range.end as usize]);
    }
    let partial = registry
        .access_log()
        .iter()
        .filter(|e| e.method == "GET" && e.status == 206 && e.is_blob(&digest.to_string()))
        .count();
    assert_eq!(
        partial, 3,
        "one 206 per non-empty range, none for the empty one"
    );

    // A manifest pushed by tag reads back by tag and by digest, with its media type.
    let (_, m) = push_image(&client, &r).await;
    let fetched = client.manifest(&r, &[]).await.unwrap();
    assert_eq!(fetched.bytes, m);
    assert_eq!(fetched.media_type, MT_OCI_MANIFEST);
    assert_eq!(fetched.digest, Digest::of(&m));
    let by_digest = r.with_digest(fetched.digest);
    assert_eq!(client.manifest(&by_digest, &[]).await.unwrap().bytes, m);

    // Errors keep the registry's reason and name the URL.
    let missing = r.with_tag("nope");
    let err = client.manifest(&missing, &[]).await.unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("MANIFEST_UNKNOWN"), "{err}");
    assert!(err.to_string().contains("/manifests/nope"), "{err}");
    let absent = Digest::of(b"absent");
    let err = client.blob(&r, &absent).await.unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert!(!client.blob_exists(&r, &absent).await.unwrap());
    let err = client
        .blob_range(&r, &digest, len..len + 10)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Status { status: 416, .. }),
        "{err}"
    );
    // A manifest naming a blob the registry does not have is refused.
    let dangling = manifest(b"{}", b"not pushed");
    let err = client
        .push_manifest(&r.with_tag("dangling"), MT_OCI_MANIFEST, &dangling)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Status { status: 400, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("BLOB_UNKNOWN"), "{err}");

    // Nobody listening.
    let port = free_tcp_port("127.0.0.1".parse().unwrap());
    let dead: Reference = format!("127.0.0.1:{port}/a:b").parse().unwrap();
    let err = client.manifest(&dead, &[]).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable(_)), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test]
async fn corrupt_content_is_refused() {
    let registry = TestRegistry::start();
    let client = plain(None, None);
    let r = reference(&registry, "client/corrupt:v1");
    let (layer, m) = push_image(&client, &r).await;
    let layer_digest = Digest::of(&layer);

    // Same length, one bit different: only the digest can tell.
    let path = registry_blob_path(&registry, &layer_digest.to_string());
    let mut bad = std::fs::read(&path).unwrap();
    bad[1234] ^= 0x10;
    std::fs::write(&path, &bad).unwrap();
    let stream = client.blob(&r, &layer_digest).await.unwrap();
    match collect(stream).await.unwrap_err() {
        RegistryError::DigestMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, layer_digest);
            assert_eq!(actual, Digest::of(&bad));
        }
        other => panic!("want a digest mismatch, got {other}"),
    }

    // (This registry does not serve a manifest corrupted in its storage at all: it answers
    // 500. The client's manifest digest check is covered by the oci unit tests, against a
    // lying server.)
    let path = registry_blob_path(&registry, &Digest::of(&m).to_string());
    let mut bad = std::fs::read(&path).unwrap();
    let at = bad.len() - 20;
    bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(&path, &bad).unwrap();
    let err = client.manifest(&r, &[]).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::Status { status: 500, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn basic_auth() {
    let registry = TestRegistry::builder()
        .htpasswd("alice", "wonderland")
        .start();
    let r = reference(&registry, "client/basic:v1");

    let err = plain(None, None).manifest(&r, &[]).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("no credentials given"), "{err}");
    let err = plain(Some("alice"), Some("wrong"))
        .manifest(&r, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("\"alice\" refused"), "{err}");

    let client = plain(Some("alice"), Some("wonderland"));
    let (layer, m) = push_image(&client, &r).await;
    assert_eq!(client.manifest(&r, &[]).await.unwrap().bytes, m);
    let got = collect(client.blob(&r, &Digest::of(&layer)).await.unwrap())
        .await
        .unwrap();
    assert_eq!(got, layer);
    // After the first challenge, credentials go out with every request: no more 401s.
    let refusals = || {
        registry
            .access_log()
            .iter()
            .filter(|e| e.status == 401 && e.path.starts_with("/v2/client/"))
            .count()
    };
    let before = refusals();
    client.manifest(&r, &[]).await.unwrap();
    client.blob_exists(&r, &Digest::of(&layer)).await.unwrap();
    assert_eq!(refusals(), before);
}

#[tokio::test]
async fn token_auth_with_cached_tokens() {
    let registry = TestRegistry::builder()
        .token_credentials("bob", "builder")
        .start();
    let r = reference(&registry, "client/token:v1");

    // Without credentials the token endpoint refuses, and the error says so.
    let err = plain(None, None).manifest(&r, &[]).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("token endpoint refused"), "{text}");
    assert!(
        text.contains(registry.token_server_url().unwrap()),
        "{text}"
    );
    let refused = registry.token_requests();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].status, 401);

    let client = plain(Some("bob"), Some("builder"));
    let (layer, m) = push_image(&client, &r).await;
    for _ in 0..3 {
        assert_eq!(client.manifest(&r, &[]).await.unwrap().bytes, m);
        let got = collect(client.blob(&r, &Digest::of(&layer)).await.unwrap())
            .await
            .unwrap();
        assert_eq!(got, layer);
    }
    // One token per scope, reused until it expires.
    let granted: Vec<_> = registry
        .token_requests()
        .into_iter()
        .filter(|t| t.status == 200)
        .collect();
    let scopes: Vec<&str> = granted
        .iter()
        .flat_map(|t| t.scopes.iter().map(String::as_str))
        .collect();
    assert_eq!(
        scopes,
        [
            "repository:client/token:pull,push",
            "repository:client/token:pull"
        ],
        "{granted:?}"
    );
    assert!(granted.iter().all(|t| t.user.as_deref() == Some("bob")));
}

#[tokio::test]
async fn reads_go_through_the_mirror_and_pushes_do_not() {
    // The registry itself stands in for a mirror: it ignores the `ns` parameter, and its
    // access log shows which requests carried it.
    let registry = TestRegistry::start();
    let r = reference(&registry, "client/via:v1");
    let client = RegistryClient::new(RegistryOptions {
        plain_http: true,
        via: Some(registry.url()),
        ..RegistryOptions::default()
    })
    .unwrap();
    let (layer, m) = push_image(&client, &r).await;
    assert_eq!(client.manifest(&r, &[]).await.unwrap().bytes, m);
    let digest = Digest::of(&layer);
    assert_eq!(
        &client.blob_range(&r, &digest, 10..20).await.unwrap()[..],
        &layer[10..20]
    );
    let ns = format!("ns={}", registry.host().replace(':', "%3A"));
    for entry in registry.access_log() {
        // The harness's own requests (readiness check, log sync).
        if entry.path == "/v2/" || entry.path.contains("damselfly-e2e-sync") {
            continue;
        }
        let read = entry.method == "GET" && !entry.path.contains("/uploads/");
        assert_eq!(entry.uri.contains(&ns), read, "{entry:?}");
    }
}
