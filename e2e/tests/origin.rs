//! Origin resilience, end to end: a real `supernode` and real `dfget`s pulling from an origin
//! that fails the way registries do under load (503, 429 with `Retry-After`), and the way
//! networks do (a body cut, stalled or trickling mid-way). A stub origin
//! ([`FaultyOrigin`]) plays the registry, because a real one cannot fail on demand.
#![allow(clippy::unwrap_used)]

use std::{
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use damselfly_e2e::{
    Containerd, Dfdaemon, Dfget, Fault, FaultyOrigin, OriginRequest, Supernode, TestImage,
    describe_output, http, metric_sum, num, random_blob, running_as_root, sha256_hex,
    write_hosts_toml,
};

/// These tests run several processes and measure time; one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const WAIT: Duration = Duration::from_secs(120);
const BLOB: usize = 8 << 20;

fn file_sha(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

/// `origin_failures_total{reason, action}` in a `/metrics` text.
fn failures(metrics: &str, prefix: &str, reason: &str, action: &str) -> f64 {
    metric_sum(
        metrics,
        &format!("{prefix}_origin_failures_total"),
        Some(&format!("reason=\"{reason}\",action=\"{action}\"")),
    )
}

/// The offset of a `Range: bytes=N-` request.
fn range_start(range: Option<&str>) -> Option<u64> {
    range?
        .strip_prefix("bytes=")?
        .strip_suffix('-')?
        .parse()
        .ok()
}

/// Pulls the origin's blob through `sn` with one dfget; the report and the time it took.
fn pull(
    origin: &FaultyOrigin,
    sn: &Supernode,
    out: &Path,
) -> (anyhow::Result<serde_json::Value>, Duration) {
    let started = Instant::now();
    let result = Dfget::new(&origin.blob_url("app/blob"), out)
        .supernode(sn.addr())
        .args(["--keep-serving", "0s"])
        .spawn()
        .unwrap()
        .wait(WAIT);
    (result, started.elapsed())
}

/// The reproduction: a 503 to the first blob GET used to fail dfget at once.
#[test]
fn a_503_to_the_first_get_is_retried_and_the_pull_succeeds() {
    let _g = serial();
    let blob = random_blob(BLOB, 41);
    let origin = FaultyOrigin::start(
        blob.clone(),
        vec![Fault::Status {
            code: 503,
            retry_after: None,
        }],
    );
    let sn = Supernode::builder().start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (report, _) = pull(&origin, &sn, &out);
    let report = report.unwrap_or_else(|e| panic!("{e:#}\n{}", sn.log_text()));
    assert_eq!(file_sha(&out), sha256_hex(&blob));
    assert_eq!(
        num(&report, "from_origin"),
        0,
        "dfget must not go to the origin"
    );
    assert_eq!(origin.gets().len(), 2, "one 503, then the blob");
    let m = sn.metrics().unwrap();
    let p = "damselfly_supernode";
    assert_eq!(failures(&m, p, "server_error", "retried"), 1.0, "{m}");
    assert_eq!(failures(&m, p, "server_error", "gave_up"), 0.0, "{m}");
    assert_eq!(
        metric_sum(&m, "damselfly_supernode_origin_bytes_total", None),
        BLOB as f64
    );
}

#[test]
fn a_429_with_retry_after_is_honoured() {
    let _g = serial();
    let blob = random_blob(BLOB, 42);
    let origin = FaultyOrigin::start(
        blob.clone(),
        vec![Fault::Status {
            code: 429,
            retry_after: Some("1".into()),
        }],
    );
    let sn = Supernode::builder().start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (report, _) = pull(&origin, &sn, &out);
    report.unwrap_or_else(|e| panic!("{e:#}\n{}", sn.log_text()));
    assert_eq!(file_sha(&out), sha256_hex(&blob));
    let gets = origin.gets();
    assert_eq!(gets.len(), 2, "one 429, then the blob");
    // The backoff alone would be 125–250 ms: the wait is the registry's second.
    let gap = gets[1].at.duration_since(gets[0].at);
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    assert!(gap < Duration::from_secs(5), "retried after {gap:?}");
    let m = sn.metrics().unwrap();
    assert_eq!(
        failures(&m, "damselfly_supernode", "throttled", "retried"),
        1.0,
        "{m}"
    );
}

#[test]
fn a_body_cut_midway_is_resumed_from_the_last_byte_received() {
    let _g = serial();
    let blob = random_blob(BLOB, 43);
    let cut = (3 << 20) + 12_345;
    let origin = FaultyOrigin::start(blob.clone(), vec![Fault::CutAfter(cut)]);
    let sn = Supernode::builder().start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (report, _) = pull(&origin, &sn, &out);
    report.unwrap_or_else(|e| panic!("{e:#}\n{}", sn.log_text()));
    assert_eq!(file_sha(&out), sha256_hex(&blob));
    let gets = origin.gets();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    let from = range_start(gets[1].range.as_deref())
        .unwrap_or_else(|| panic!("the retry is not a resume: {:?}", gets[1]));
    assert!(from > 0 && from <= cut, "resumed at {from}, cut at {cut}");
    assert_eq!(
        gets[1].if_range.as_deref(),
        Some(&*format!("\"{}\"", origin.digest()))
    );
    let sent = origin.body_bytes_sent();
    assert!(
        sent <= BLOB as u64 * 11 / 10,
        "the origin sent {sent} bytes for a {BLOB}-byte blob"
    );
    let m = sn.metrics().unwrap();
    assert_eq!(
        failures(&m, "damselfly_supernode", "interrupted", "retried"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "damselfly_supernode_origin_bytes_total", None),
        BLOB as f64
    );
}

/// Pulls a blob whose first GET `fault` slows to a crawl, with a 1 s stall timeout: the
/// pull must succeed well before the slow body would have ended, with one retry resumed
/// past byte 0, counted under `reason`. Returns the origin's GETs.
fn a_slow_body_is_abandoned_and_resumed(
    fault: Fault,
    seed: u64,
    reason: &str,
) -> Vec<OriginRequest> {
    let blob = random_blob(BLOB, seed);
    let origin = FaultyOrigin::start(blob.clone(), vec![fault]);
    let sn = Supernode::builder()
        .args(["--origin-stall-timeout", "1s"])
        .start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (report, took) = pull(&origin, &sn, &out);
    report.unwrap_or_else(|e| panic!("{e:#}\n{}", sn.log_text()));
    assert_eq!(file_sha(&out), sha256_hex(&blob));
    assert!(took < Duration::from_secs(15), "the pull took {took:?}");
    let gets = origin.gets();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(
        range_start(gets[1].range.as_deref()).is_some_and(|n| n > 0),
        "{gets:?}"
    );
    let m = sn.metrics().unwrap();
    assert_eq!(
        failures(&m, "damselfly_supernode", reason, "retried"),
        1.0,
        "{m}"
    );
    gets
}

#[test]
fn a_stalled_body_is_abandoned_after_the_stall_timeout_and_resumed() {
    let _g = serial();
    // The 60 s read timeout this replaces would have failed the fetch after a minute.
    let gets = a_slow_body_is_abandoned_and_resumed(Fault::StallAfter(2 << 20), 44, "stalled");
    let gap = gets[1].at.duration_since(gets[0].at);
    assert!(gap < Duration::from_secs(5), "retried after {gap:?}");
    let from = range_start(gets[1].range.as_deref()).unwrap();
    assert!(from <= 2 << 20, "resumed at {from}, past the stall");
}

#[test]
fn a_trickling_body_is_abandoned_and_resumed() {
    let _g = serial();
    // At 10 KiB/s the blob would take 13 minutes.
    a_slow_body_is_abandoned_and_resumed(Fault::Trickle(10 << 10), 45, "slow");
}

#[test]
fn an_origin_that_always_fails_fails_the_pull_clearly_in_bounded_time() {
    let _g = serial();
    let blob = random_blob(1 << 20, 46);
    let origin = FaultyOrigin::always(
        blob,
        Fault::Status {
            code: 503,
            retry_after: None,
        },
    );
    let sn = Supernode::builder()
        .args(["--origin-retries", "2", "--origin-backoff-base", "100ms"])
        .start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (report, took) = pull(&origin, &sn, &out);
    let err = format!("{:#}", report.unwrap_err());
    assert!(
        err.contains("origin answered 503") && err.contains("gave up after 3 attempts"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "the pull took {took:?}");
    assert!(!out.exists());
    assert_eq!(origin.gets().len(), 3, "the first attempt and 2 retries");
    let m = sn.metrics().unwrap();
    let p = "damselfly_supernode";
    assert_eq!(failures(&m, p, "server_error", "retried"), 2.0, "{m}");
    assert_eq!(failures(&m, p, "server_error", "gave_up"), 1.0, "{m}");
    assert_eq!(
        metric_sum(
            &m,
            "damselfly_supernode_registrations_total",
            Some("outcome=\"OriginError\"")
        ),
        1.0
    );
}

/// dfget's own origin fetch (back to source, here with no supernode at all) is as resilient.
#[test]
fn dfget_back_to_source_retries_and_resumes() {
    let _g = serial();
    let blob = random_blob(BLOB, 47);
    let cut = (1 << 20) + 7;
    let origin = FaultyOrigin::start(
        blob.clone(),
        vec![
            Fault::Status {
                code: 503,
                retry_after: None,
            },
            Fault::CutAfter(cut),
            Fault::StallAfter(3 << 20),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let started = Instant::now();
    let report = Dfget::new(&origin.blob_url("app/blob"), &out)
        .args(["--keep-serving", "0s", "--origin-stall-timeout", "1s"])
        .spawn()
        .unwrap()
        .wait(WAIT)
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(file_sha(&out), sha256_hex(&blob));
    assert_eq!(num(&report, "from_origin"), BLOB as u64);
    let gets = origin.gets();
    assert_eq!(gets.len(), 4, "{gets:?}");
    assert_eq!(gets[1].range, None, "nothing to resume after the 503");
    let first = range_start(gets[2].range.as_deref()).unwrap();
    assert!(first > 0 && first <= cut, "resumed at {first}");
    let second = range_start(gets[3].range.as_deref()).unwrap();
    assert!(
        second > first && second <= first + (3 << 20),
        "resumed at {second}"
    );
    assert!(origin.body_bytes_sent() <= BLOB as u64 * 11 / 10);
}

/// dfdaemon counts its back-to-source failures under the supernode's labels.
#[test]
fn dfdaemon_counts_origin_failures_with_the_same_labels() {
    let _g = serial();
    let blob = random_blob(1 << 20, 48);
    let origin = FaultyOrigin::start(
        blob.clone(),
        vec![
            Fault::Status {
                code: 503,
                retry_after: None,
            },
            Fault::CutAfter(100_000),
        ],
    );
    let url = origin.blob_url("app/blob");
    let registry = url
        .strip_prefix("http://")
        .and_then(|u| u.split('/').next())
        .unwrap()
        .to_owned();
    // No supernode: every blob is fetched from the origin by the node itself.
    let node = Dfdaemon::builder().start();
    let mirror = format!(
        "{}/v2/app/blob/blobs/{}?ns={registry}",
        node.url(),
        origin.digest()
    );
    let resp = http::Request::get(&mirror)
        .timeout(Duration::from_secs(60))
        .send()
        .unwrap();
    assert_eq!(resp.status, 200, "{}", node.log_text());
    assert_eq!(sha256_hex(&resp.body), sha256_hex(&blob));
    let m = node.metrics().unwrap();
    let p = "damselfly_dfdaemon";
    assert_eq!(failures(&m, p, "server_error", "retried"), 1.0, "{m}");
    assert_eq!(failures(&m, p, "interrupted", "retried"), 1.0, "{m}");
    assert_eq!(origin.gets().len(), 3);
}

/// A client for the stub origin (loopback allowed), with quick retries.
fn window_client() -> damselfly_oci::Origin {
    damselfly_oci::Origin::new(&damselfly_oci::OriginConfig {
        addresses: damselfly_oci::guard::AddressPolicy {
            allow_loopback: true,
        },
        retry: damselfly_oci::retry::RetryPolicy {
            backoff_base: Duration::from_millis(10),
            ..damselfly_oci::retry::RetryPolicy::default()
        },
        ..damselfly_oci::OriginConfig::default()
    })
    .unwrap()
}

/// Reads a window fetch of `len` bytes from `start` to its end.
fn read_window(origin: &FaultyOrigin, start: u64, len: u64) -> Vec<u8> {
    use futures::StreamExt as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let resp = window_client()
            .get_range(&origin.blob_url("app/blob"), &[], start, len)
            .await
            .unwrap();
        assert_eq!(resp.content_length, len);
        let mut body = resp.body;
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    })
}

#[test]
fn a_window_of_a_blob_is_fetched_with_range_resumed_and_cut_from_a_whole_answer() {
    let blob = random_blob(BLOB, 60);
    let (start, len) = (3 << 20, 1 << 20);
    let want = &blob[start..start + len];
    let last = start + len - 1;

    // One request for exactly the span.
    let origin = FaultyOrigin::start(blob.clone(), Vec::new());
    assert_eq!(read_window(&origin, start as u64, len as u64), want);
    let gets = origin.gets();
    assert_eq!(gets.len(), 1);
    assert_eq!(
        gets[0].range.as_deref(),
        Some(&*format!("bytes={start}-{last}"))
    );
    assert_eq!(origin.body_bytes_sent(), len as u64);

    // Cut midway: the retry asks for the rest of the span only.
    let origin = FaultyOrigin::start(blob.clone(), vec![Fault::CutAfter(300 << 10)]);
    assert_eq!(read_window(&origin, start as u64, len as u64), want);
    let gets = origin.gets();
    assert_eq!(gets.len(), 2, "{gets:?}");
    let resumed = gets[1]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()))
        .unwrap_or_else(|| panic!("not a span: {:?}", gets[1]));
    assert!(
        resumed.0 > start && resumed.0 <= start + (300 << 10) && resumed.1 == last,
        "resumed with {resumed:?}"
    );

    // An origin that ignores Range: the whole answer, cut to the span.
    let origin = FaultyOrigin::start(blob.clone(), vec![Fault::IgnoreRange]);
    assert_eq!(read_window(&origin, start as u64, len as u64), want);
    assert_eq!(origin.gets().len(), 1);
}

/// The start of a `Range: bytes=N-` or `bytes=N-M` request.
fn range_from(range: Option<&str>) -> Option<u64> {
    range?
        .strip_prefix("bytes=")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// A supernode SIGKILLed mid-fetch and started again on the same data directory takes the
/// fetch up after the pieces it had stored, with one `Range` request, instead of fetching
/// the blob from its start: the dfget waiting on it finds the task forgotten, registers
/// again with the same supernode, keeps the pieces it held, and ends with the right bytes.
#[test]
fn a_supernode_killed_mid_fetch_resumes_the_fetch_after_a_restart() {
    let _g = serial();
    let blob = random_blob(BLOB, 47);
    // 8 MiB at 2 MiB/s: about 4 s for the whole blob.
    let origin = FaultyOrigin::always(blob.clone(), Fault::Trickle(2 << 20));
    let data = tempfile::tempdir().unwrap();
    let mut sn = Supernode::builder().data_dir(data.path()).start();
    let port = sn.addr().port();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut waiting = Dfget::new(&origin.blob_url("app/blob"), &out)
        .supernode(sn.addr())
        .args(["--keep-serving", "0s", "--no-back-source"])
        .spawn()
        .unwrap();
    assert!(
        damselfly_e2e::wait_until(Duration::from_secs(20), || sn
            .metric("damselfly_supernode_origin_bytes_total")
            .unwrap_or(0.0)
            >= f64::from(3u32 << 20)),
        "the fetch never got 3 MiB in"
    );
    sn.daemon_mut().kill();
    let stored_before = origin.body_bytes_sent();
    let sn = Supernode::builder()
        .data_dir(data.path())
        .port(port)
        .start();

    let report = waiting
        .wait(WAIT)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", sn.log_text()));
    assert_eq!(file_sha(&out), sha256_hex(&blob));
    assert_eq!(num(&report, "from_origin"), 0, "{report}");
    assert_eq!(num(&report, "supernode_takeovers"), 1, "{report}");
    let gets = origin.gets();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    let from = range_from(gets[1].range.as_deref())
        .unwrap_or_else(|| panic!("the restarted supernode did not resume: {:?}", gets[1]));
    // At least the pieces whole before the kill (1 MiB each), never past what was sent.
    assert!(
        from >= 2 << 20 && from <= stored_before && from.is_multiple_of(1 << 20),
        "resumed at {from}, {stored_before} bytes sent before the kill"
    );
    let sent = origin.body_bytes_sent();
    println!(
        "killed after {stored_before} bytes sent, resumed at {from}; the origin sent {sent} for {BLOB}"
    );
    assert!(
        sent <= BLOB as u64 + (2 << 20),
        "the origin sent {sent} bytes for a {BLOB}-byte blob"
    );
    assert_eq!(
        sn.metric("damselfly_supernode_fetch_resumes_total")
            .unwrap(),
        1.0
    );
    // The store is consistent: the blob is served from the cache, complete, with no new
    // origin request.
    let again = dir.path().join("again");
    let (second, _) = pull(&origin, &sn, &again);
    second.unwrap();
    assert_eq!(file_sha(&again), sha256_hex(&blob));
    assert_eq!(origin.gets().len(), 2);
}

/// The same faults with a real runtime, default settings: containerd pulls an image through
/// a node (dfdaemon and its supernode) while the registry fails the first GET of the
/// image's largest layer with a 503, a 429 with `Retry-After`, a stall half-way or a
/// 10 KiB/s trickle. Every pull completes within 30 s, the image runs, the node served the
/// layer (containerd did not fall back to the registry), and the registry sent at most 1.1
/// times the layer.
#[test]
fn containerd_pulls_through_a_node_complete_despite_origin_faults() {
    if !running_as_root("containerd_pulls_through_a_node_complete_despite_origin_faults") {
        return;
    }
    let _g = serial();
    let image = TestImage::busybox("through origin faults", 4 << 20, 61).unwrap();
    let big = image.layers.iter().map(Vec::len).max().unwrap() as u64;
    let cases = [
        (
            "503 once",
            Fault::Status {
                code: 503,
                retry_after: None,
            },
        ),
        (
            "429 with Retry-After",
            Fault::Status {
                code: 429,
                retry_after: Some("1".into()),
            },
        ),
        ("a stall half-way", Fault::StallAfter(big / 2)),
        ("a 10 KiB/s trickle", Fault::Trickle(10 << 10)),
    ];
    for (case, fault) in cases {
        let (origin, layer) = FaultyOrigin::image("e2e/faults", "1", &image, vec![fault]);
        let supernode = Supernode::builder().start();
        let dfdaemon = Dfdaemon::builder().supernode(supernode.addr()).start();
        let containerd = Containerd::start().unwrap();
        let host = origin.addr().to_string();
        let hosts = tempfile::tempdir().unwrap();
        write_hosts_toml(
            hosts.path(),
            &host,
            &dfdaemon.url(),
            Some(&format!("http://{host}")),
        )
        .unwrap();
        let reference = format!("{host}/e2e/faults:1");
        let started = Instant::now();
        let pull = containerd.pull(&reference, hosts.path()).unwrap();
        let took = started.elapsed();
        assert!(
            pull.status.success(),
            "{case}: {}\n{}",
            describe_output(&pull),
            supernode.log_text()
        );
        let sent = origin.body_bytes_sent();
        println!(
            "{case}: pulled in {:.1} s, the registry sent {:.2} x the layer in {} GETs",
            took.as_secs_f64(),
            sent as f64 / big as f64,
            origin
                .gets()
                .iter()
                .filter(|r| r.path.ends_with(&layer))
                .count()
        );
        assert!(
            took < Duration::from_secs(30),
            "{case}: the pull took {took:?}"
        );
        assert!(
            sent as f64 <= 1.1 * big as f64,
            "{case}: the registry sent {sent} bytes of a {big}-byte layer"
        );
        let served = dfdaemon
            .metric(
                "damselfly_dfdaemon_blob_bytes_total",
                Some("source=\"supernode\""),
            )
            .unwrap();
        assert!(
            served >= big as f64,
            "{case}: the node served {served} bytes"
        );
        let run = containerd.run(&reference, "faults", &[]).unwrap();
        assert_eq!(String::from_utf8_lossy(&run.stdout), image.hello, "{case}");
    }
}
