//! Full disks, end to end, on a real small filesystem (a 64 MiB `tmpfs`, so `ENOSPC` and
//! `statvfs` are the kernel's): a dfdaemon whose data dir cannot hold a blob, a supernode
//! whose data dir cannot, and dfget writing to a full disk. The acceptance: a 128 MiB
//! blob asked of a 64 MiB data dir gets a clear error (client and log), is counted, leaves no
//! entry behind, the daemon goes on serving the other blobs, and GC frees room for the next
//! pull.
//!
//! Mounting needs root: without it (or if `mount` fails) each test says why and skips.
#![allow(clippy::unwrap_used)]

use std::{path::Path, sync::Mutex, time::Duration};

use damselfly_e2e::{
    Containerd, Dfdaemon, Dfget, FaultyOrigin, SmallFs, Supernode, TestImage, TestRegistry,
    describe_output, http, metric_sum, random_blob, write_hosts_toml,
};

const MIB: usize = 1 << 20;
/// The data dir's size, and the blob too large for it.
const SMALL_FS_MIB: u64 = 64;
const HUGE: usize = 128 * MIB;

/// These tests start several processes and move 128 MiB blobs; one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A 64 MiB tmpfs, or `None` after printing why the test is skipped.
fn small_fs(test: &str) -> Option<SmallFs> {
    match SmallFs::mount(SMALL_FS_MIB) {
        Ok(fs) => Some(fs),
        Err(why) => {
            eprintln!("skipping {test}: no small filesystem to fill ({why})");
            None
        }
    }
}

fn blob_url(d: &Dfdaemon, registry: &TestRegistry, repo: &str, digest: &str) -> String {
    format!(
        "{}/v2/{repo}/blobs/{digest}?ns={}",
        d.url(),
        registry.host()
    )
}

fn storage_failures(metrics: &str, prefix: &str, reason: &str) -> f64 {
    metric_sum(
        metrics,
        &format!("{prefix}_storage_failures_total"),
        Some(&format!("reason=\"{reason}\"")),
    )
}

/// Content files of a store under `dir`, with sizes.
fn content_files(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    SmallFs::files_under(&dir.join("content"))
}

#[test]
fn a_full_node_cache_refuses_a_blob_clearly_keeps_serving_and_evicts_for_the_next() {
    let _serial = serial();
    let Some(fs) = small_fs("a_full_node_cache_refuses_a_blob_clearly_...") else {
        return;
    };
    let registry = TestRegistry::start();
    let supernode = Supernode::builder().start();
    let data = fs.subdir("dfdaemon").unwrap();
    // The default capacity (20 GiB) is far above the disk: the disk is the limit here, as
    // on a node whose volume is smaller than configured. GC's own timer is out of the way.
    let dfdaemon = Dfdaemon::builder()
        .supernode(supernode.addr())
        .data_dir(&data)
        .args(["--cache-gc-interval", "1h"])
        .start();

    // A blob that fits.
    let small = random_blob(24 * MIB, 301);
    let small_digest = registry.push_blob("e2e/disk", &small);
    let r = http::get(
        &blob_url(&dfdaemon, &registry, "e2e/disk", &small_digest),
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == small, "wrong bytes");

    // 128 MiB into a 64 MiB data dir: refused before any byte is written, with a 507 and
    // an OCI error body that says why.
    let huge = random_blob(HUGE, 302);
    let huge_digest = registry.push_blob("e2e/disk", &huge);
    let r = http::Request::get(blob_url(&dfdaemon, &registry, "e2e/disk", &huge_digest))
        .timeout(Duration::from_secs(60))
        .send()
        .unwrap();
    assert_eq!(r.status, 507, "{}", r.text());
    let body: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("not an OCI error body ({e}): {}", r.text()));
    let error = &body["errors"][0];
    assert_eq!(error["code"], "NO_SPACE", "{body}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("cannot store the blob") && message.contains("disk has"),
        "{message}"
    );
    // In the log, and counted.
    let log = dfdaemon.log_text();
    assert!(
        log.contains("no room for the blob in the node cache"),
        "{log}"
    );
    let metrics = dfdaemon.metrics().unwrap();
    assert_eq!(
        storage_failures(&metrics, "damselfly_dfdaemon", "disk_full"),
        1.0
    );
    assert_eq!(
        metric_sum(&metrics, "damselfly_dfdaemon_cache_evictions_total", None),
        0.0,
        "a blob that can never fit must not cost the cache its blobs"
    );
    // No entry, no partial file: the small blob's content file only, nothing incoming.
    let files = content_files(&data);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].1, small.len() as u64);
    assert!(SmallFs::files_under(&data.join("incoming")).is_empty());

    // The daemon keeps serving what it has, from its cache.
    let local = |m: &str| {
        metric_sum(
            m,
            "damselfly_dfdaemon_blob_bytes_total",
            Some("source=\"local\""),
        )
    };
    let before = local(&metrics);
    let r = http::get(
        &blob_url(&dfdaemon, &registry, "e2e/disk", &small_digest),
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == small, "wrong bytes");
    assert_eq!(
        local(&dfdaemon.metrics().unwrap()) - before,
        small.len() as f64
    );

    // The next pull does not fit beside the cached blob (30 MiB + 16 MiB kept free, with
    // 24 MiB held on 64 MiB) but does once it is evicted: admission evicts it, then fetches.
    let next = random_blob(30 * MIB, 303);
    let next_digest = registry.push_blob("e2e/disk", &next);
    let r = http::get(
        &blob_url(&dfdaemon, &registry, "e2e/disk", &next_digest),
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == next, "wrong bytes");
    let metrics = dfdaemon.metrics().unwrap();
    assert_eq!(
        metric_sum(&metrics, "damselfly_dfdaemon_cache_evictions_total", None),
        1.0
    );
    assert_eq!(
        storage_failures(&metrics, "damselfly_dfdaemon", "disk_full"),
        1.0,
        "the eviction made room: no second refusal"
    );
    let adopted = damselfly_e2e::wait_until(Duration::from_secs(10), || {
        content_files(&data)
            .iter()
            .any(|(_, len)| *len == next.len() as u64)
    });
    assert!(adopted, "{:?}", content_files(&data));
    let files = content_files(&data);
    assert_eq!(files.len(), 1, "the evicted blob is gone: {files:?}");
    assert!(SmallFs::files_under(&data.join("incoming")).is_empty());

    // The evicted blob comes back on demand, evicting the 30 MiB one in turn
    // (24 + 30 + 16 > 64).
    let r = http::get(
        &blob_url(&dfdaemon, &registry, "e2e/disk", &small_digest),
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == small, "wrong bytes");
    assert_eq!(
        dfdaemon
            .metric("damselfly_dfdaemon_cache_evictions_total", None)
            .unwrap(),
        2.0
    );
    drop(dfdaemon);
    drop(supernode);
    drop(fs);
}

#[test]
fn a_full_supernode_refuses_the_task_and_nodes_fetch_it_themselves_or_say_why() {
    let _serial = serial();
    let Some(fs) = small_fs("a_full_supernode_refuses_the_task_...") else {
        return;
    };
    let registry = TestRegistry::start();
    let sn_data = fs.subdir("supernode").unwrap();
    let supernode = Supernode::builder().data_dir(&sn_data).start();
    let huge = random_blob(HUGE, 311);
    let huge_digest = registry.push_blob("e2e/sn-disk", &huge);

    // Back to source off: the node cannot get it through the swarm and says why.
    let strict = Dfdaemon::builder()
        .name("dfdaemon-strict")
        .supernode(supernode.addr())
        .args(["--back-source", "false"])
        .start();
    let r = http::get(
        &blob_url(&strict, &registry, "e2e/sn-disk", &huge_digest),
        None,
    )
    .unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.text().contains("supernode has no room for the blob"),
        "{}",
        r.text()
    );
    let metrics = supernode.metrics().unwrap();
    assert_eq!(
        storage_failures(&metrics, "damselfly_supernode", "disk_full"),
        1.0,
        "{metrics}"
    );
    assert!(
        supernode
            .log_text()
            .contains("cannot store the blob; task refused"),
        "{}",
        supernode.log_text()
    );
    assert!(content_files(&sn_data).is_empty(), "no entry left behind");

    // Back to source on (the default): the node fetches it itself.
    let node = Dfdaemon::builder().supernode(supernode.addr()).start();
    let r = http::Request::get(blob_url(&node, &registry, "e2e/sn-disk", &huge_digest))
        .timeout(Duration::from_secs(120))
        .send()
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == huge, "wrong bytes");
    assert_eq!(
        node.metric(
            "damselfly_dfdaemon_p2p_fallbacks_total",
            Some("reason=\"supernode_no_space\"")
        )
        .unwrap(),
        1.0
    );

    // The supernode goes on serving blobs that fit.
    let small = random_blob(8 * MIB, 312);
    let small_digest = registry.push_blob("e2e/sn-disk", &small);
    let r = http::get(
        &blob_url(&strict, &registry, "e2e/sn-disk", &small_digest),
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == small, "wrong bytes");
    let files = content_files(&sn_data);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].1, small.len() as u64);
}

#[test]
fn dfget_on_a_full_disk_fails_before_fetching_and_leaves_nothing() {
    let _serial = serial();
    let Some(fs) = small_fs("dfget_on_a_full_disk_fails_before_fetching_...") else {
        return;
    };
    let origin = FaultyOrigin::start(random_blob(HUGE, 321), Vec::new());
    let out = fs.path().join("huge.bin");
    let mut run = Dfget::new(&origin.blob_url("app/blob"), &out)
        .args(["--keep-serving", "0s"])
        .spawn()
        .unwrap();
    let err = run.wait(Duration::from_secs(60)).unwrap_err().to_string();
    // The output file is allocated whole before the first byte: the disk says no there.
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        SmallFs::files_under(fs.path()).is_empty(),
        "{:?}",
        SmallFs::files_under(fs.path())
    );
}

/// What a runtime does with the 507: containerd moves on to its next host, the registry,
/// and the pull succeeds.
#[test]
fn containerd_pulls_from_the_registry_when_the_node_has_no_room() {
    let _serial = serial();
    let Some(fs) = small_fs("containerd_pulls_from_the_registry_when_the_node_has_no_room") else {
        return;
    };
    let registry = TestRegistry::start();
    let image = TestImage::busybox("pulled past a full node", HUGE, 331).unwrap();
    let pushed = registry.push_test_image("e2e/full", "1", &image).unwrap();
    let supernode = Supernode::builder().start();
    let dfdaemon = Dfdaemon::builder()
        .supernode(supernode.addr())
        .data_dir(&fs.subdir("dfdaemon").unwrap())
        .start();
    let containerd = Containerd::start().unwrap();
    let hosts = tempfile::tempdir().unwrap();
    write_hosts_toml(
        hosts.path(),
        &registry.host(),
        &dfdaemon.url(),
        Some(&registry.url()),
    )
    .unwrap();
    let reference = format!("{}/e2e/full:1", registry.host());
    let pull = containerd.pull(&reference, hosts.path()).unwrap();
    assert!(pull.status.success(), "{}", describe_output(&pull));
    let run = containerd.run(&reference, "full", &[]).unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), image.hello);
    let metrics = dfdaemon.metrics().unwrap();
    assert!(
        storage_failures(&metrics, "damselfly_dfdaemon", "disk_full") >= 1.0,
        "the node did not refuse the large layer:\n{}",
        dfdaemon.log_text()
    );
    // The small layers came through the node; the large one from the registry itself.
    let large = &pushed.layer_digests[2];
    assert!(
        registry.blob_get_count(large) >= 1,
        "containerd did not fetch the refused layer from the registry"
    );
}
