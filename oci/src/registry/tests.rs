//! Unit tests of the client: URL routing, options, answers a real registry cannot give.

use super::*;

#[test]
fn content_ranges() {
    assert!(content_range_matches("bytes 0-9/100", &(0..10)));
    assert!(content_range_matches("bytes 5-5/*", &(5..6)));
    assert!(content_range_matches("bytes 90-99/100", &(90..100)));
    assert!(!content_range_matches("bytes 0-9/5", &(0..10)));
    assert!(!content_range_matches("bytes 0-10/100", &(0..10)));
    assert!(!content_range_matches("bytes 1-10/100", &(0..10)));
    assert!(!content_range_matches("bytes */100", &(0..10)));
    assert!(!content_range_matches("items 0-9/100", &(0..10)));
    assert!(!content_range_matches("", &(0..10)));
}

#[test]
fn scopes_cover() {
    let push = "repository:a/b:pull,push";
    assert!(covers(push, "repository:a/b:pull"));
    assert!(covers(push, "repository:a/b:push,pull"));
    assert!(covers("repository:a/b:pull", "repository:a/b:pull"));
    assert!(!covers("repository:a/b:pull", "repository:a/b:pull,push"));
    assert!(!covers(push, "repository:a/c:pull"));
    assert!(!covers(push, "repository:a/b:pull repository:x:pull"));
    assert!(!covers(push, "registry:catalog:*"));
}

#[test]
fn mirror_and_direct_urls() {
    let r: Reference = "localhost:5000/team/app:v1".parse().unwrap();
    let client = RegistryClient::new(RegistryOptions {
        plain_http: true,
        via: Some("http://127.0.0.1:65001/".to_owned()),
        ..RegistryOptions::default()
    })
    .unwrap();
    assert_eq!(
        client.api_url(&r, Route::Read, "manifests/v1"),
        "http://127.0.0.1:65001/v2/team/app/manifests/v1?ns=localhost%3A5000"
    );
    assert_eq!(
        client.api_url(&r, Route::Direct, "blobs/uploads/"),
        "http://localhost:5000/v2/team/app/blobs/uploads/"
    );
    let hub: Reference = "docker.io/alpine".parse().unwrap();
    let tls = RegistryClient::new(RegistryOptions::default()).unwrap();
    assert_eq!(
        tls.api_url(&hub, Route::Read, "manifests/latest"),
        "https://registry-1.docker.io/v2/library/alpine/manifests/latest"
    );
}

#[test]
fn bad_options_are_refused() {
    for via in ["127.0.0.1:65001", "ftp://x", "not a url"] {
        let err = RegistryClient::new(RegistryOptions {
            via: Some(via.to_owned()),
            ..RegistryOptions::default()
        })
        .unwrap_err();
        assert!(matches!(err, RegistryError::Config(_)), "{via}: {err}");
    }
    let err = RegistryClient::new(RegistryOptions {
        ca_file: Some("/nonexistent/ca.pem".into()),
        ..RegistryOptions::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

#[test]
fn passwords_are_not_debug_printed() {
    let opts = RegistryOptions {
        username: Some("u".into()),
        password: Some("hunter2".into()),
        ..RegistryOptions::default()
    };
    assert!(!format!("{opts:?}").contains("hunter2"));
}

/// A scripted HTTP server for the faults a real registry does not produce: each request's head
/// (request line and headers) is recorded and answered with whatever `answer` returns for it.
struct Scripted {
    addr: std::net::SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    async fn start(answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> Self {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (log, answer) = (heads.clone(), Arc::new(answer));
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (log, answer) = (log.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n")
                        && conn.read(&mut byte).await.unwrap_or(0) == 1
                    {
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let response = answer(&head);
                    log.lock().push(head);
                    let _ = conn.write_all(&response).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Self { addr, heads }
    }

    fn reference(&self, name: &str) -> Reference {
        format!("{}/{name}", self.addr).parse().unwrap()
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().clone()
    }
}

/// An HTTP/1.1 answer with `Content-Length` of `body` unless `headers` sets one.
fn answer(status: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        out += &format!("{k}: {v}\r\n");
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        out += &format!("Content-Length: {}\r\n", body.len());
    }
    out += "\r\n";
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn plain_client() -> RegistryClient {
    RegistryClient::new(RegistryOptions {
        plain_http: true,
        ..RegistryOptions::default()
    })
    .unwrap()
}

#[tokio::test]
async fn manifests_must_match_their_digests() {
    const GOOD: &[u8] =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    let good = Digest::of(GOOD);
    let other = Digest::of(b"other");
    let server = Scripted::start(move |head| {
        if head.contains("/manifests/lying-header") {
            // The bytes are fine, the registry's digest header disagrees.
            answer(
                "200 OK",
                &[("Docker-Content-Digest", other.to_string())],
                GOOD,
            )
        } else {
            // No Content-Type: the media type comes from the JSON.
            answer("200 OK", &[], GOOD)
        }
    })
    .await;
    let client = plain_client();
    let fetched = client
        .manifest(&server.reference("a:v1"), &[])
        .await
        .unwrap();
    assert_eq!(fetched.media_type, MT_OCI_MANIFEST);
    assert_eq!(fetched.digest, good);
    let by_digest = server.reference("a").with_digest(good);
    client.manifest(&by_digest, &[]).await.unwrap();

    let wrong = server.reference("a").with_digest(other);
    let err = client.manifest(&wrong, &[]).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { expected, actual, .. } if expected == other && actual == good),
        "{err}"
    );
    let err = client
        .manifest(&server.reference("a:lying-header"), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    // The Accept list went out.
    assert!(
        server.heads()[0]
            .to_ascii_lowercase()
            .contains(&format!("accept: {}", MANIFEST_MEDIA_TYPES.join(", ")))
    );
}

#[tokio::test]
async fn ranges_must_be_exact() {
    let small = b"0123456789abcdefghij".to_vec();
    let big_len = MAX_RANGE_FALLBACK_BYTES + 1;
    let small_digest = Digest::of(&small);
    let body = small.clone();
    let server = Scripted::start(move |head| {
        if head.contains("/blobs/") && head.contains("repo/wrong-range") {
            answer(
                "206 Partial Content",
                &[("Content-Range", "bytes 0-4/20".into())],
                &body[..5],
            )
        } else if head.contains("repo/short") {
            answer(
                "206 Partial Content",
                &[("Content-Range", "bytes 2-11/20".into())],
                &body[2..7],
            )
        } else if head.contains("repo/whole-small") {
            answer("200 OK", &[], &body)
        } else if head.contains("repo/whole-big") {
            answer("200 OK", &[("Content-Length", big_len.to_string())], b"")
        } else {
            answer(
                "206 Partial Content",
                &[("Content-Range", "bytes 2-11/*".into())],
                &body[2..12],
            )
        }
    })
    .await;
    let client = plain_client();
    let get = |name: &'static str, digest: Digest| {
        let client = client.clone();
        let r = server.reference(name);
        async move { client.blob_range(&r, &digest, 2..12).await }
    };
    assert_eq!(
        &get("repo/ok", small_digest).await.unwrap()[..],
        &small[2..12]
    );
    assert!(
        server.heads()[0]
            .to_ascii_lowercase()
            .contains("range: bytes=2-11")
    );
    for name in ["repo/wrong-range", "repo/short", "repo/whole-big"] {
        let err = get(name, small_digest).await.unwrap_err();
        assert!(
            matches!(err, RegistryError::BadResponse(_)),
            "{name}: {err}"
        );
    }
    // A 200 for a small blob is checked against the digest, then sliced.
    assert_eq!(
        &get("repo/whole-small", small_digest).await.unwrap()[..],
        &small[2..12]
    );
    let err = get("repo/whole-small", Digest::of(b"x")).await.unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
}

#[tokio::test]
async fn bearer_flow_and_redirects_without_credentials() {
    // Storage: records whether credentials reached it.
    let storage = Scripted::start(|_| answer("200 OK", &[], b"blob")).await;
    let storage_url = format!("http://{}/signed/blob?sig=1", storage.addr);
    let realm = Arc::new(Mutex::new(String::new()));
    let realm_in = realm.clone();
    let registry = Scripted::start(move |head| {
        let lower = head.to_ascii_lowercase();
        if head.starts_with("GET /token") {
            return answer(
                "200 OK",
                &[],
                br#"{"access_token":"tok-1","expires_in":300}"#,
            );
        }
        if !lower.contains("authorization: bearer tok-1") {
            let challenge = format!(
                r#"Bearer realm="{}",service="svc",scope="repository:team/app:pull""#,
                realm_in.lock()
            );
            return answer("401 Unauthorized", &[("WWW-Authenticate", challenge)], b"");
        }
        answer(
            "307 Temporary Redirect",
            &[("Location", storage_url.clone())],
            b"",
        )
    })
    .await;
    *realm.lock() = format!("http://{}/token", registry.addr);
    let client = RegistryClient::new(RegistryOptions {
        plain_http: true,
        username: Some("u".into()),
        password: Some("p".into()),
        ..RegistryOptions::default()
    })
    .unwrap();
    let r = registry.reference("team/app");
    let digest = Digest::of(b"blob");
    for _ in 0..2 {
        let got = client
            .blob(&r, &digest)
            .await
            .unwrap()
            .read_all(100)
            .await
            .unwrap();
        assert_eq!(got, b"blob");
    }
    let heads = registry.heads();
    let tokens: Vec<&String> = heads
        .iter()
        .filter(|h| h.starts_with("GET /token"))
        .collect();
    assert_eq!(tokens.len(), 1, "the token is reused: {heads:?}");
    assert!(
        tokens[0].contains("scope=repository%3Ateam%2Fapp%3Apull"),
        "{}",
        tokens[0]
    );
    assert!(tokens[0].contains("service=svc"), "{}", tokens[0]);
    // Basic credentials went to the token endpoint only.
    assert!(
        tokens[0]
            .to_ascii_lowercase()
            .contains("authorization: basic ")
    );
    // Anonymous, token fetch, with token; then with the cached token straight away.
    assert_eq!(heads.len(), 4, "{heads:?}");
    for head in storage.heads() {
        assert!(
            !head.to_ascii_lowercase().contains("authorization"),
            "{head}"
        );
    }
    assert_eq!(storage.heads().len(), 2);
}

#[tokio::test]
async fn basic_challenge_without_credentials_is_unauthorized() {
    let server = Scripted::start(|_| {
        answer(
            "401 Unauthorized",
            &[("WWW-Authenticate", r#"Basic realm="r""#.into())],
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        )
    })
    .await;
    let err = plain_client()
        .blob_exists(&server.reference("a"), &Digest::of(b"x"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("no credentials given"), "{err}");
    assert_eq!(server.heads().len(), 1, "nothing to retry with");
}
