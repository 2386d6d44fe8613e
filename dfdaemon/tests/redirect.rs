//! Registries redirect blob (and sometimes manifest) requests to storage on another host
//! with signed URLs. dfdaemon follows the redirect itself and never sends the client's
//! `Authorization` to that other host. No real registry redirects with filesystem storage,
//! so two small HTTP servers play the registry and its storage.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use dfdaemon::{App, Config};
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;

const PAYLOAD: &[u8] = b"bytes kept in object storage";

/// `Authorization` values each server saw, in order.
type Seen = Arc<Mutex<Vec<Option<String>>>>;

fn auth(h: &HeaderMap) -> Option<String> {
    h.get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn serve(router: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

#[tokio::test]
async fn redirects_are_followed_without_leaking_credentials() {
    let storage_seen: Seen = Arc::default();
    let storage = serve(
        Router::new()
            .route(
                "/signed",
                get(|State(seen): State<Seen>, h: HeaderMap| async move {
                    seen.lock().unwrap().push(auth(&h));
                    PAYLOAD
                }),
            )
            .with_state(storage_seen.clone()),
    )
    .await;
    // Another host name for the same machine: a cross-host redirect.
    let target = format!("http://localhost:{}/signed?sig=abc", storage.port());
    let registry_seen: Seen = Arc::default();
    let redirect = move |State(seen): State<Seen>, h: HeaderMap| {
        let target = target.clone();
        async move {
            seen.lock().unwrap().push(auth(&h));
            if auth(&h).as_deref() != Some("Bearer s3cret") {
                return StatusCode::UNAUTHORIZED.into_response();
            }
            (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, target)]).into_response()
        }
    };
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(PAYLOAD)));
    let registry = serve(
        Router::new()
            .route("/v2/app/manifests/1", get(redirect.clone()))
            .route(&format!("/v2/app/blobs/{digest}"), get(redirect))
            .with_state(registry_seen.clone()),
    )
    .await;

    let data = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peer_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_path_buf(),
        default_upstream: format!("http://{registry}"),
        ..Config::default()
    };
    let app = App::build(config).await.unwrap();
    let mirror = app.addr();
    let stop = CancellationToken::new();
    let running = tokio::spawn(app.run(stop.clone()));

    let client = reqwest::Client::new();
    for path in [
        "/v2/app/manifests/1".to_owned(),
        format!("/v2/app/blobs/{digest}"),
    ] {
        let resp = client
            .get(format!("http://{mirror}{path}"))
            .header(header::AUTHORIZATION, "Bearer s3cret")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(&resp.bytes().await.unwrap()[..], PAYLOAD, "{path}");
    }
    let storage_seen = storage_seen.lock().unwrap().clone();
    assert!(
        storage_seen.len() >= 2,
        "storage was not asked: {storage_seen:?}"
    );
    assert!(
        storage_seen.iter().all(Option::is_none),
        "credentials leaked to storage: {storage_seen:?}"
    );
    assert!(
        registry_seen
            .lock()
            .unwrap()
            .iter()
            .all(|a| a.as_deref() == Some("Bearer s3cret")),
        "the registry itself must get the credentials"
    );
    stop.cancel();
    running.await.unwrap().unwrap();
}
