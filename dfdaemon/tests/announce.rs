//! dfdaemon announces itself to its supernodes (`POST /api/v1/nodes`) at start and every
//! `p2p.keepalive_interval`, so a supernode can reach every node's mirror (preheat with
//! scope `all_peers`). An HTTP server plays the supernode and records what arrives.
#![allow(clippy::unwrap_used)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, routing::post};
use dfdaemon::{App, Config};
use tokio_util::sync::CancellationToken;

/// Bodies and content types of the announces received.
type Seen = Arc<Mutex<Vec<(Option<String>, Bytes)>>>;

#[tokio::test]
async fn the_node_announces_its_mirror_and_peer_address_to_the_supernode() {
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let supernode = listener.local_addr().unwrap();
    let router = Router::new()
        .route(
            "/api/v1/nodes",
            post(
                |State(seen): State<Seen>, h: HeaderMap, body: Bytes| async move {
                    let ct = h
                        .get("content-type")
                        .map(|v| v.to_str().unwrap().to_owned());
                    seen.lock().unwrap().push((ct, body));
                },
            ),
        )
        .with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let data = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peer_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_path_buf(),
        supernodes: vec![supernode.to_string()],
        hostname: Some("node-a".into()),
        ..Config::default()
    };
    config.p2p.keepalive_interval = Duration::from_millis(200);
    let app = App::build(config).await.unwrap();
    let (mirror, peer) = (app.addr(), app.peer_addr());
    let stop = CancellationToken::new();
    let running = tokio::spawn(app.run(stop.clone()));

    // Once at start, then every 200 ms: three arrive well within 5 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "announces received: {}",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    running.await.unwrap().unwrap();

    let announces = seen.lock().unwrap().clone();
    for (content_type, body) in &announces {
        assert_eq!(content_type.as_deref(), Some("application/json"));
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        let obj = json.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["hostname", "ip", "mirror", "peer"], "{json}");
        assert_eq!(json["hostname"], "node-a");
        assert_eq!(json["ip"], peer.ip().to_string());
        assert_eq!(json["peer"], peer.to_string());
        assert_eq!(
            json["mirror"],
            format!("http://{}:{}", peer.ip(), mirror.port())
        );
    }
}

#[tokio::test]
async fn a_supernode_without_the_endpoint_does_not_stop_the_mirror() {
    // A port nobody listens on, then a server that answers 404 to everything.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = free.local_addr().unwrap();
    drop(free);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let not_found = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, Router::new()).await });

    let data = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peer_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_path_buf(),
        supernodes: vec![dead.to_string(), not_found.to_string()],
        ..Config::default()
    };
    config.p2p.keepalive_interval = Duration::from_millis(100);
    let app = App::build(config).await.unwrap();
    let mirror = app.addr();
    let stop = CancellationToken::new();
    let running = tokio::spawn(app.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let healthy = reqwest::get(format!("http://{mirror}/healthy"))
        .await
        .unwrap();
    assert_eq!(healthy.status(), 200);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("dfdaemon stops promptly")
        .unwrap()
        .unwrap();
}
