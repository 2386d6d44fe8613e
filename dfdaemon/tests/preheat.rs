//! `POST /api/v1/preheat` gives up waiting after `preheat_timeout` (504) while the download
//! goes on: a later preheat gets the blob without a second origin request. An HTTP server
//! plays a registry that holds its answer until the test lets it go.
#![allow(clippy::unwrap_used)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, routing::get};
use dfdaemon::{App, Config};
use sha2::Digest as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const PAYLOAD: &[u8] = b"a layer the registry is slow to send";

#[derive(Clone)]
struct Registry {
    gets: Arc<AtomicUsize>,
    open: watch::Receiver<bool>,
}

async fn post(mirror: std::net::SocketAddr, body: String) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{mirror}/api/v1/preheat"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap(),
    )
}

#[tokio::test]
async fn a_slow_blob_times_out_the_preheat_but_not_its_download() {
    let (gate, open) = watch::channel(false);
    let registry = Registry {
        gets: Arc::default(),
        open,
    };
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(PAYLOAD)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new()
        .route(
            &format!("/v2/slow/blobs/{digest}"),
            get(|State(r): State<Registry>| async move {
                r.gets.fetch_add(1, Ordering::SeqCst);
                let mut open = r.open.clone();
                let _ = open.wait_for(|o| *o).await;
                PAYLOAD
            }),
        )
        .with_state(registry.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });

    // No supernode: the blob comes from the origin directly, which is all this needs.
    let data = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peer_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_path_buf(),
        preheat_timeout: Duration::from_millis(300),
        // The stand-in registry runs on loopback.
        access: dfdaemon::config::AccessConfig {
            allow: vec!["127.0.0.1:*".into()],
            ..Default::default()
        },
        upstream: dfdaemon::config::UpstreamConfig {
            allow_loopback: true,
            ..Default::default()
        },
        ..Config::default()
    };
    let app = App::build(config).await.unwrap();
    let mirror = app.addr();
    let stop = CancellationToken::new();
    let running = tokio::spawn(app.run(stop.clone()));
    let body =
        serde_json::json!({ "url": format!("http://{addr}/v2/slow/blobs/{digest}") }).to_string();

    let (status, answer) = post(mirror, body.clone()).await;
    assert_eq!(status, 504, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("goes on"),
        "{answer}"
    );
    // The download is still waiting on the registry; let the registry answer.
    gate.send_replace(true);
    let (status, answer) = post(mirror, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["bytes"], PAYLOAD.len());
    assert_eq!(answer["digest"], digest);
    assert_eq!(
        registry.gets.load(Ordering::SeqCst),
        1,
        "the second preheat started another download"
    );
    stop.cancel();
    running.await.unwrap().unwrap();
}
