//! Origins the operator allows (issue 13 part 5), with real processes: the supernode and
//! dfdaemon fetch what others name, so neither sends a request to a loopback address it was
//! not told to allow, nor to a link-local or cloud metadata address at all.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use damselfly_e2e::{Dfdaemon, Dfget, FaultyOrigin, Supernode, http, random_blob};

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn the_supernode_fetches_nothing_from_loopback_unless_allowed() {
    let origin = FaultyOrigin::start(random_blob(1 << 20, 5), Vec::new());
    let url = origin.blob_url("app/x");
    let dir = tempfile::tempdir().unwrap();

    // A peer names a service on the supernode's own host: refused, nothing is sent to it.
    let strict = Supernode::builder().strict_origins().start();
    let mut run = Dfget::new(&url, &dir.path().join("refused"))
        .supernode(strict.addr())
        .args(["--no-back-source"])
        .spawn()
        .unwrap();
    let err = run.wait(WAIT).unwrap_err().to_string();
    assert!(err.contains("loopback"), "{err}");
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
    assert!(!dir.path().join("refused").exists());
    assert!(
        err.contains("origin address 127.0.0.1 is not allowed"),
        "{err}"
    );

    // Allowed (`origin.allow_loopback`, as the harness sets by default), the same fetch works.
    let allowed = Supernode::builder().start();
    let mut run = Dfget::new(&url, &dir.path().join("allowed"))
        .supernode(allowed.addr())
        .args(["--no-back-source"])
        .spawn()
        .unwrap();
    run.wait(WAIT).unwrap();
    assert!(!origin.gets().is_empty());
}

#[test]
fn no_setting_lets_the_supernode_fetch_from_the_metadata_service() {
    // Even with loopback allowed, a link-local URL is refused at once, before any connect
    // (a connect to 169.254.169.254 would hang here, or reach a real metadata service).
    let sn = Supernode::builder().start();
    let dir = tempfile::tempdir().unwrap();
    for url in [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fd00:ec2::254]/latest/meta-data/",
    ] {
        let started = std::time::Instant::now();
        let mut run = Dfget::new(url, &dir.path().join("meta"))
            .supernode(sn.addr())
            .args(["--no-back-source"])
            .spawn()
            .unwrap();
        let err = run.wait(WAIT).unwrap_err().to_string();
        assert!(err.contains("not allowed"), "{url}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{url}: not refused at once"
        );
    }
    assert_eq!(
        sn.metric("damselfly_supernode_origin_bytes_total").unwrap(),
        0.0
    );
}

#[test]
fn dfdaemon_refuses_a_registry_named_at_a_metadata_or_unconfigured_loopback_address() {
    let origin = FaultyOrigin::start(random_blob(1 << 20, 6), Vec::new());
    let port = origin.addr().port();
    let node = Dfdaemon::builder().strict_origins().start();
    let path = format!("/v2/app/x/blobs/{}", origin.digest());
    for registry in ["169.254.169.254".to_owned(), format!("127.0.0.1:{port}")] {
        let resp = http::Request::get(format!("{}{path}?ns={registry}", node.url()))
            .send()
            .unwrap();
        assert_eq!(resp.status, 403, "{registry}: {}", resp.text());
        assert!(resp.text().contains("not allowed"), "{}", resp.text());
    }
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
    assert_eq!(
        node.metric(
            "damselfly_dfdaemon_access_refusals_total",
            Some("reason=\"forbidden_address\"")
        )
        .unwrap(),
        2.0
    );
}
