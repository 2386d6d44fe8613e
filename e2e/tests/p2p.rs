//! The P2P foundation, end to end: real `docker-registry`, a real `supernode`, real `dfget`
//! processes moving pieces to each other over TCP (the default transport) and QUIC.
#![allow(clippy::unwrap_used)]

use std::{
    net::{IpAddr, Ipv6Addr},
    path::Path,
    sync::Mutex,
    time::Duration,
};

use damselfly_e2e::{
    Dfget, DfgetRun, Supernode, TestRegistry, http, ipv6_loopback_available, lying_http_server,
    num, random_blob, sha256_hex, wait_until,
};

/// These tests each run many processes; on a 2-core machine they run one at a time.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const WAIT: Duration = Duration::from_secs(180);

fn file_sha(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

fn received(r: &serde_json::Value) -> u64 {
    num(r, "from_peers") + num(r, "from_supernode") + num(r, "from_origin")
}

#[test]
fn eight_peers_share_a_64mib_blob_and_the_registry_sends_it_once() {
    let _g = heavy();
    let registry = TestRegistry::start();
    let blob = random_blob(64 << 20, 1);
    let digest = registry.push_blob("app/big", &blob);
    let url = registry.blob_url("app/big", &digest);
    let sn = Supernode::builder().start();
    let dir = tempfile::tempdir().unwrap();

    // Half the peers relay pieces while they arrive (`--cut-through`), half only whole ones
    // (the default): they share one swarm, each side asking for what the other offers.
    let mut runs: Vec<DfgetRun> = (0..8)
        .map(|i| {
            let mut d = Dfget::new(&url, &dir.path().join(format!("out{i}")))
                .supernode(sn.addr())
                .args(["--keep-serving", "5s"]);
            if i % 2 == 1 {
                d = d.args(["--cut-through"]);
            }
            d.spawn().unwrap()
        })
        .collect();
    let reports: Vec<_> = runs.iter_mut().map(|r| r.wait(WAIT).unwrap()).collect();

    let want = sha256_hex(&blob);
    for run in &runs {
        assert_eq!(file_sha(&run.output), want, "{}", run.output.display());
    }
    assert_eq!(
        registry.blob_get_count(&digest),
        1,
        "the registry must send the blob once"
    );
    let from_peers: u64 = reports.iter().map(|r| num(r, "from_peers")).sum();
    let total: u64 = reports.iter().map(received).sum();
    assert_eq!(total, 8 * blob.len() as u64);
    assert!(
        from_peers * 2 >= total,
        "only {from_peers} of {total} bytes came from peers"
    );
    // With announcements (the default), a peer learns what its parents hold from them, not
    // from the supernode: every byte from a peer was found through one.
    for r in &reports {
        if num(r, "from_peers") > 0 {
            assert!(num(r, "announcing_parents") > 0, "{r}");
        }
    }
    assert_eq!(
        sn.metric("damselfly_supernode_origin_bytes_total").unwrap(),
        blob.len() as f64
    );
    // Digests came signed with the pieces (the default), not in sync answers: the
    // supernode sent each one only with a piece it served itself.
    assert_eq!(
        sn.metric("damselfly_supernode_sync_digests_total").unwrap(),
        0.0
    );
    let vouched = sn
        .metric("damselfly_supernode_vouched_digests_total")
        .unwrap();
    let served = sn
        .metric("damselfly_supernode_served_pieces_total")
        .unwrap();
    assert!(
        vouched > 0.0 && vouched == served,
        "{vouched} vouched, {served} served"
    );
}

#[test]
fn peers_that_take_digests_from_syncs_and_vouched_peers_share_one_swarm() {
    // A cluster mid-upgrade: half the peers predate vouched digests (they take digests from
    // the syncs and keep no signatures); a vouched peer that fetches from one of them gets
    // a piece without a vouch and asks the supernode for digests instead.
    let _g = heavy();
    let registry = TestRegistry::start();
    let blob = random_blob(24 << 20, 11);
    let digest = registry.push_blob("app/mixed-digests", &blob);
    let url = registry.blob_url("app/mixed-digests", &digest);
    let sn = Supernode::builder().start();
    let dir = tempfile::tempdir().unwrap();
    let mut runs: Vec<DfgetRun> = (0..6)
        .map(|i| {
            let mut d = Dfget::new(&url, &dir.path().join(format!("out{i}"))).supernode(sn.addr());
            if i % 2 == 0 {
                d = d.args(["--no-vouched-digests"]);
            }
            d.args(["--keep-serving", "5s"]).spawn().unwrap()
        })
        .collect();
    let reports: Vec<_> = runs.iter_mut().map(|r| r.wait(WAIT).unwrap()).collect();
    for (run, r) in runs.iter().zip(&reports) {
        assert_eq!(file_sha(&run.output), sha256_hex(&blob));
        assert_eq!(num(r, "from_origin"), 0, "{r}");
        assert_eq!(num(r, "corrupt_pieces"), 0, "{r}");
    }
    assert_eq!(registry.blob_get_count(&digest), 1);
    assert!(
        sn.metric("damselfly_supernode_sync_digests_total").unwrap() > 0.0,
        "the older peers got their digests from the syncs"
    );
}

#[test]
fn peers_on_tcp_and_on_quic_share_one_swarm() {
    let _g = heavy();
    let registry = TestRegistry::start();
    let blob = random_blob(32 << 20, 7);
    let digest = registry.push_blob("app/mixed", &blob);
    let url = registry.blob_url("app/mixed", &digest);
    let sn = Supernode::builder().start();
    let dir = tempfile::tempdir().unwrap();

    // Every peer serves both transports; each fetches with the one it is told.
    let transports = ["quic", "tcp", "quic", "tcp", "quic", "tcp"];
    let mut runs: Vec<DfgetRun> = transports
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Dfget::new(&url, &dir.path().join(format!("{t}{i}")))
                .supernode(sn.addr())
                .args(["--transport", t, "--keep-serving", "5s"])
                .spawn()
                .unwrap()
        })
        .collect();
    let reports: Vec<_> = runs.iter_mut().map(|r| r.wait(WAIT).unwrap()).collect();
    for run in &runs {
        assert_eq!(file_sha(&run.output), sha256_hex(&blob));
    }
    assert_eq!(registry.blob_get_count(&digest), 1);
    for (t, r) in transports.iter().zip(&reports) {
        assert_eq!(received(r), blob.len() as u64);
        assert_eq!(num(r, "from_origin"), 0, "{t}: {r}");
    }
    let peer_bytes = |want: &str| -> u64 {
        transports
            .iter()
            .zip(&reports)
            .filter(|(t, _)| **t == want)
            .map(|(_, r)| num(r, "from_peers"))
            .sum()
    };
    assert!(
        peer_bytes("quic") > 0,
        "no QUIC peer fetched from a peer: {reports:?}"
    );
    assert!(
        peer_bytes("tcp") > 0,
        "no TCP peer fetched from a peer: {reports:?}"
    );
    // QUIC peers get their parents' bitmaps from the supernode; TCP peers from the parents.
    for (t, r) in transports.iter().zip(&reports) {
        if *t == "quic" {
            assert_eq!(num(r, "announcing_parents"), 0, "{r}");
        }
    }
}

#[test]
fn peers_without_announcements_still_share_a_blob() {
    // The fallback for a cluster with nodes that predate announcements: the supernode relays
    // every parent's bitmap, and nobody subscribes.
    let _g = heavy();
    let registry = TestRegistry::start();
    let blob = random_blob(16 << 20, 9);
    let digest = registry.push_blob("app/relayed", &blob);
    let url = registry.blob_url("app/relayed", &digest);
    let sn = Supernode::builder().start();
    let dir = tempfile::tempdir().unwrap();
    let mut runs: Vec<DfgetRun> = (0..4)
        .map(|i| {
            Dfget::new(&url, &dir.path().join(format!("out{i}")))
                .supernode(sn.addr())
                .args(["--no-announcements", "--keep-serving", "5s"])
                .spawn()
                .unwrap()
        })
        .collect();
    let reports: Vec<_> = runs.iter_mut().map(|r| r.wait(WAIT).unwrap()).collect();
    for (run, r) in runs.iter().zip(&reports) {
        assert_eq!(file_sha(&run.output), sha256_hex(&blob));
        assert_eq!(num(r, "announcing_parents"), 0, "{r}");
        assert_eq!(num(r, "from_origin"), 0, "{r}");
    }
    assert_eq!(registry.blob_get_count(&digest), 1);
}

#[test]
fn a_parent_killed_mid_transfer_does_not_stop_the_others() {
    let _g = heavy();
    let registry = TestRegistry::start();
    let blob = random_blob(32 << 20, 2);
    let digest = registry.push_blob("app/kill", &blob);
    let url = registry.blob_url("app/kill", &digest);
    let sn = Supernode::builder().start();
    let dir = tempfile::tempdir().unwrap();
    // Slow downloads so the victim is still a parent when it dies.
    let slow = ["--download-rate", "8MiB", "--keep-serving", "10s"];
    let mut runs: Vec<DfgetRun> = (0..5)
        .map(|i| {
            Dfget::new(&url, &dir.path().join(format!("out{i}")))
                .supernode(sn.addr())
                .args(slow)
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let mut victim = runs.remove(0);
    victim.daemon.kill();
    for run in &mut runs {
        run.wait(WAIT).unwrap();
        assert_eq!(file_sha(&run.output), sha256_hex(&blob));
    }
    assert!(
        !victim.output.exists(),
        "a killed download leaves no output"
    );
    assert_eq!(registry.blob_get_count(&digest), 1);
}

#[test]
fn a_lying_peer_is_detected_reported_and_avoided() {
    let _g = heavy();
    let registry = TestRegistry::start();
    let blob = random_blob(16 << 20, 3);
    let digest = registry.push_blob("app/liar", &blob);
    let url = registry.blob_url("app/liar", &digest);
    let sn = Supernode::builder().start();
    let dir = tempfile::tempdir().unwrap();

    // The liar downloads honestly, then serves corrupt bytes to everyone for a while.
    let liar = Dfget::new(&url, &dir.path().join("liar"))
        .supernode(sn.addr())
        .args(["--fault-corrupt-uploads", "--keep-serving", "60s"])
        .spawn()
        .unwrap();
    let liar_report = liar.report.clone();
    assert!(
        wait_until(Duration::from_secs(60), || liar_report.exists()),
        "the liar never finished its own download"
    );
    let liar_id =
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&liar.report).unwrap())
            .unwrap()["peer_id"]
            .as_u64()
            .unwrap();

    // Half the honest peers relay pieces while they arrive: one that relays the liar's bytes
    // withholds their end, fails its own check and withdraws them, so it is never blamed.
    let mut honest: Vec<DfgetRun> = (0..4)
        .map(|i| {
            let mut d = Dfget::new(&url, &dir.path().join(format!("honest{i}")))
                .supernode(sn.addr())
                .args(["--keep-serving", "3s"]);
            if i % 2 == 0 {
                d = d.args(["--cut-through"]);
            }
            d.spawn().unwrap()
        })
        .collect();
    let reports: Vec<_> = honest.iter_mut().map(|r| r.wait(WAIT).unwrap()).collect();
    for run in &honest {
        assert_eq!(file_sha(&run.output), sha256_hex(&blob));
    }
    let caught: u64 = reports.iter().map(|r| num(r, "corrupt_pieces")).sum();
    assert!(
        caught > 0,
        "nobody was served the liar's bytes: {reports:?}"
    );
    for r in &reports {
        for l in r["liars"].as_array().unwrap() {
            assert_eq!(l.as_u64(), Some(liar_id), "only the liar is blamed");
        }
    }
    assert!(sn.metric("damselfly_supernode_banned_peers_total").unwrap() >= 1.0);

    // Once banned, a newcomer is never sent to the liar.
    let mut late = Dfget::new(&url, &dir.path().join("late"))
        .supernode(sn.addr())
        .args(["--keep-serving", "0s"])
        .spawn()
        .unwrap();
    let late_report = late.wait(WAIT).unwrap();
    assert_eq!(num(&late_report, "corrupt_pieces"), 0);
    assert_eq!(file_sha(&late.output), sha256_hex(&blob));
    assert_eq!(registry.blob_get_count(&digest), 1);
}

/// A peer that reports (and announces) every piece but tells each child that asks that it
/// holds none is reported by the children it failed, demoted by the supernode once two
/// hosts have said so, and the children finish from others: nobody waits on its claims,
/// and the registry still sends the blob once.
#[test]
fn a_peer_that_does_not_serve_the_pieces_it_claims_is_demoted() {
    let _g = heavy();
    let registry = TestRegistry::start();
    let blob = random_blob(16 << 20, 5);
    let digest = registry.push_blob("app/claims", &blob);
    let url = registry.blob_url("app/claims", &digest);
    let sn = Supernode::builder().start();
    let dir = tempfile::tempdir().unwrap();

    let claimant = Dfget::new(&url, &dir.path().join("claimant"))
        .supernode(sn.addr())
        .args(["--fault-deny-uploads", "--keep-serving", "60s"])
        .spawn()
        .unwrap();
    let claimant_report = claimant.report.clone();
    assert!(
        wait_until(Duration::from_secs(60), || claimant_report.exists()),
        "the claimant never finished its own download"
    );

    let mut children: Vec<DfgetRun> = (0..4)
        .map(|i| {
            Dfget::new(&url, &dir.path().join(format!("child{i}")))
                .supernode(sn.addr())
                .args(["--keep-serving", "3s"])
                .spawn()
                .unwrap()
        })
        .collect();
    for run in &mut children {
        run.wait(WAIT).unwrap();
        assert_eq!(file_sha(&run.output), sha256_hex(&blob));
    }
    assert!(
        wait_until(Duration::from_secs(5), || sn
            .metric("damselfly_supernode_demoted_peers_total")
            .unwrap()
            >= 1.0),
        "the claimant was not demoted"
    );
    assert!(sn.log_text().contains("peer demoted"));
    assert_eq!(
        sn.metric("damselfly_supernode_banned_peers_total").unwrap(),
        0.0,
        "not serving is not lying about bytes"
    );
    assert_eq!(registry.blob_get_count(&digest), 1);
}

/// Each byte is hashed once: a download from a supernode whose copy is complete relies on
/// the supernode's whole-blob check for the piece digests it matched, and still ends at the
/// right bytes; `--check-whole-file` hashes anyway. A supernode whose own fetch does not
/// match the digest vouches for nothing: the download fails and leaves no output.
#[test]
fn the_supernodes_checked_copy_stands_for_a_second_hash_and_a_wrong_one_for_nothing() {
    let _g = heavy();
    let registry = TestRegistry::start();
    let blob = random_blob(24 << 20, 11);
    let digest = registry.push_blob("app/once", &blob);
    let url = registry.blob_url("app/once", &digest);
    let sn = Supernode::builder().start();
    let dir = tempfile::tempdir().unwrap();
    let want = sha256_hex(&blob);

    let run = |name: &str, extra: &[&str]| {
        let mut r = Dfget::new(&url, &dir.path().join(name))
            .supernode(sn.addr())
            .args(["--keep-serving", "0s"])
            .args(extra.iter().copied())
            .spawn()
            .unwrap();
        let report = r.wait(WAIT).unwrap();
        assert_eq!(file_sha(&r.output), want, "{name}");
        assert_eq!(report["digest"].as_str(), Some(digest.as_str()), "{name}");
        report
    };
    // The first pull fills the supernode; whichever way it ended, the bytes are right.
    run("first", &[]);
    let second = run("second", &[]);
    assert_eq!(
        second["whole_file_check"].as_str(),
        Some("supernode"),
        "the supernode's copy was complete and checked: {second}"
    );
    let third = run("third", &["--check-whole-file"]);
    assert_eq!(
        third["whole_file_check"].as_str(),
        Some("hashed"),
        "{third}"
    );
    assert_eq!(registry.blob_get_count(&digest), 1);

    // An origin that sends other bytes of the right length for a digest nobody holds yet.
    let other = format!("sha256:{}", sha256_hex(&random_blob(blob.len(), 12)));
    let origin = lying_http_server(random_blob(blob.len(), 13));
    let out = dir.path().join("lied");
    let mut lied = Dfget::new(&format!("http://{origin}/blob"), &out)
        .supernode(sn.addr())
        .args(["--digest", other.as_str(), "--no-back-source"])
        .spawn()
        .unwrap();
    let err = lied
        .wait(WAIT)
        .expect_err("a blob that does not match its digest was accepted");
    assert!(!out.exists(), "an unverified output was left in place");
    let text = format!("{err:#}");
    assert!(
        text.contains("digest") || text.contains("mismatch"),
        "{text}"
    );
}

#[test]
fn the_supernode_serves_just_stored_pieces_from_memory_and_older_ones_from_disk() {
    let _g = heavy();
    let registry = TestRegistry::start();
    let blob = random_blob(8 << 20, 7);
    let digest = registry.push_blob("app/hot", &blob);
    let url = registry.blob_url("app/hot", &digest);
    // Eight 1 MiB pieces, room in memory for the last four.
    let sn = Supernode::builder()
        .args([
            "--cdn-piece-size",
            "1MiB",
            "--cdn-hot-pieces-memory",
            "4MiB",
        ])
        .start();
    let dir = tempfile::tempdir().unwrap();
    let reads = |from: &str| {
        damselfly_e2e::metric_sum(
            &sn.metrics().unwrap(),
            "damselfly_supernode_piece_reads_total",
            Some(&format!("from=\"{from}\"")),
        )
    };

    let mut first = Dfget::new(&url, &dir.path().join("first"))
        .supernode(sn.addr())
        .args(["--keep-serving", "0s"])
        .spawn()
        .unwrap();
    first.wait(WAIT).unwrap();
    assert_eq!(
        sn.metric("damselfly_supernode_hot_pieces_bytes").unwrap(),
        f64::from(4u32 << 20),
        "the newest four pieces stay in memory"
    );
    let (memory, disk) = (reads("Memory"), reads("Disk"));

    // The first peer is gone: every piece of the second pull comes from the supernode.
    let mut second = Dfget::new(&url, &dir.path().join("second"))
        .supernode(sn.addr())
        .args(["--keep-serving", "0s", "--no-back-source"])
        .spawn()
        .unwrap();
    let r = second.wait(WAIT).unwrap();
    assert_eq!(num(&r, "from_supernode"), 8 << 20);
    assert_eq!(file_sha(&second.output), sha256_hex(&blob));
    assert_eq!(reads("Memory") - memory, 4.0, "pieces 4-7 from memory");
    assert_eq!(reads("Disk") - disk, 4.0, "pieces 0-3 read back from disk");
    assert_eq!(registry.blob_get_count(&digest), 1);
}

#[test]
fn a_piece_corrupted_on_the_supernodes_disk_is_fetched_again_with_range() {
    use std::os::unix::fs::FileExt as _;
    let _g = heavy();
    let registry = TestRegistry::start();
    let blob = random_blob(8 << 20, 8);
    let digest = registry.push_blob("app/repair", &blob);
    let url = registry.blob_url("app/repair", &digest);
    let data = tempfile::tempdir().unwrap();
    // Nothing kept in memory: every piece is read back from disk and verified.
    let sn = Supernode::builder()
        .data_dir(data.path())
        .args(["--cdn-piece-size", "1MiB", "--cdn-hot-pieces-memory", "0"])
        .start();
    let dir = tempfile::tempdir().unwrap();
    let pull = |name: &str| {
        let mut run = Dfget::new(&url, &dir.path().join(name))
            .supernode(sn.addr())
            .args(["--keep-serving", "0s", "--no-back-source"])
            .spawn()
            .unwrap();
        let r = run.wait(WAIT).unwrap();
        assert_eq!(file_sha(&run.output), sha256_hex(&blob), "{name}");
        r
    };
    pull("first");

    // Piece 2 rots on the supernode's disk.
    let content = damselfly_e2e::SmallFs::files_under(&data.path().join("content"));
    let [(file, len)] = &content[..] else {
        panic!("one content file expected: {content:?}")
    };
    assert_eq!(*len, 8 << 20);
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .write_all_at(&[0x5a; 4096], (2 << 20) + 1000)
        .unwrap();

    // The next pull meets the corruption, gets the piece after the supernode fetched it
    // again, and never sees a wrong byte.
    let started = std::time::Instant::now();
    let r = pull("second");
    assert_eq!(num(&r, "from_supernode"), 8 << 20);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the repaired piece took {:?}",
        started.elapsed()
    );
    let metrics = sn.metrics().unwrap();
    let sum = |name: &str, label: Option<&str>| damselfly_e2e::metric_sum(&metrics, name, label);
    assert_eq!(sum("damselfly_supernode_corrupt_pieces_total", None), 1.0);
    assert_eq!(
        sum(
            "damselfly_supernode_piece_repairs_total",
            Some("outcome=\"Repaired\"")
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sum(
            "damselfly_supernode_origin_requests_total",
            Some("kind=\"Range\"")
        ),
        1.0
    );
    // One piece from the registry again, not the blob.
    assert_eq!(
        sum("damselfly_supernode_origin_bytes_total", None),
        f64::from(9u32 << 20)
    );
    // Repaired on disk: served from there again with no further repair.
    pull("third");
    let metrics = sn.metrics().unwrap();
    assert_eq!(
        damselfly_e2e::metric_sum(&metrics, "damselfly_supernode_corrupt_pieces_total", None),
        1.0
    );
}

/// A parent that holds the whole blob hangs (SIGSTOP: its sockets accept, nothing
/// answers). Its child cannot subscribe to its announcements (no handshake within the
/// connect timeout), reports it unreachable at its next sync, and the supernode then feeds
/// the child the pieces only that parent held. Before, the child waited for the supernode
/// to expire the parent (`scheduler.peer_timeout`, 15 s after its last keep-alive): ~16 s
/// for 8 MiB; before that, 120 s and a failure. Issue 14 asks for no stall over 15 s.
#[test]
fn a_parent_that_stops_answering_is_reported_and_its_child_fed_by_the_supernode() {
    let _g = heavy();
    let registry = TestRegistry::start();
    let blob = random_blob(8 << 20, 9);
    let digest = registry.push_blob("app/hung", &blob);
    let url = registry.blob_url("app/hung", &digest);
    let sn = Supernode::builder().start();
    let dir = tempfile::tempdir().unwrap();
    let parent = Dfget::new(&url, &dir.path().join("parent"))
        .supernode(sn.addr())
        .args(["--keep-serving", "120s"])
        .spawn()
        .unwrap();
    // The parent has the blob and keeps serving it.
    let output = parent.output.clone();
    assert!(
        wait_until(WAIT, || output.exists()),
        "the parent never finished"
    );
    // Its keep-alive tells the supernode it holds every piece.
    std::thread::sleep(Duration::from_secs(1));
    // Then it hangs: registered, holding every piece, answering nothing.
    let frozen = parent.daemon.freeze().unwrap();
    let started = std::time::Instant::now();
    let mut child = Dfget::new(&url, &dir.path().join("child"))
        .supernode(sn.addr())
        .args(["--keep-serving", "0s", "--no-back-source"])
        .spawn()
        .unwrap();
    let r = child.wait(WAIT);
    let took = started.elapsed();
    drop(frozen);
    let r = r.unwrap();
    assert_eq!(file_sha(&child.output), sha256_hex(&blob));
    assert!(
        took < Duration::from_secs(8),
        "the child took {took:?}: {r}\n{}\n{}",
        child.daemon.log_text(),
        sn.log_text()
    );
    assert_eq!(num(&r, "from_supernode"), 8 << 20, "{r}");
    assert!(
        sn.metric("damselfly_supernode_unreachable_parents_total")
            .unwrap()
            >= 1.0
    );
    assert_eq!(registry.blob_get_count(&digest), 1);
}

#[test]
fn a_restarted_supernode_serves_its_cache_without_the_origin() {
    let _g = heavy();
    let registry = TestRegistry::start();
    let blob = random_blob(8 << 20, 4);
    let digest = registry.push_blob("app/restart", &blob);
    let url = registry.blob_url("app/restart", &digest);
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();

    let sn = Supernode::builder().data_dir(data.path()).start();
    let mut first = Dfget::new(&url, &dir.path().join("first"))
        .supernode(sn.addr())
        .args(["--keep-serving", "0s"])
        .spawn()
        .unwrap();
    first.wait(WAIT).unwrap();
    sn.stop().unwrap();
    let requests_before = registry.access_log().len();

    let sn = Supernode::builder().data_dir(data.path()).start();
    let mut wave: Vec<DfgetRun> = (0..3)
        .map(|i| {
            Dfget::new(&url, &dir.path().join(format!("wave{i}")))
                .supernode(sn.addr())
                .args(["--keep-serving", "2s", "--no-back-source"])
                .spawn()
                .unwrap()
        })
        .collect();
    for run in &mut wave {
        let r = run.wait(WAIT).unwrap();
        assert_eq!(num(&r, "from_origin"), 0);
        assert_eq!(file_sha(&run.output), sha256_hex(&blob));
    }
    assert_eq!(registry.blob_get_count(&digest), 1);
    // The log sync marker requests are the only new lines: nothing for the blob.
    let new_blob_requests = registry.access_log()[requests_before..]
        .iter()
        .filter(|e| e.is_blob(&digest))
        .count();
    assert_eq!(
        new_blob_requests, 0,
        "the origin was contacted after the restart"
    );
    assert_eq!(
        sn.metric("damselfly_supernode_origin_requests_total")
            .unwrap(),
        0.0
    );
}

#[test]
fn credentials_are_forwarded_and_enforced() {
    let _g = heavy();
    let registry = TestRegistry::builder().htpasswd("alice", "s3cret").start();
    let blob = random_blob(4 << 20, 5);
    let digest = registry.push_blob("private/app", &blob);
    let url = registry.blob_url("private/app", &digest);
    let sn = Supernode::builder().start();
    let dir = tempfile::tempdir().unwrap();
    let auth = format!("Authorization: Basic {}", base64("alice:s3cret"));

    // Without credentials: a clear 401, no output.
    let mut anon = Dfget::new(&url, &dir.path().join("anon"))
        .supernode(sn.addr())
        .spawn()
        .unwrap();
    let err = anon.wait(WAIT).unwrap_err().to_string();
    assert!(err.contains("401"), "{err}");
    assert!(!dir.path().join("anon").exists());

    // With credentials: success.
    let mut ok = Dfget::new(&url, &dir.path().join("ok"))
        .supernode(sn.addr())
        .args(["-H", &auth, "--keep-serving", "0s"])
        .spawn()
        .unwrap();
    ok.wait(WAIT).unwrap();
    assert_eq!(file_sha(&dir.path().join("ok")), sha256_hex(&blob));

    // The blob is now cached, but a requester without (or with wrong) credentials is refused.
    for (name, extra) in [
        ("anon2", vec![]),
        (
            "wrong",
            vec![
                "-H".to_owned(),
                format!("Authorization: Basic {}", base64("alice:nope")),
            ],
        ),
    ] {
        let mut run = Dfget::new(&url, &dir.path().join(name))
            .supernode(sn.addr())
            .args(extra)
            .spawn()
            .unwrap();
        let err = run.wait(WAIT).unwrap_err().to_string();
        assert!(err.contains("401"), "{name}: {err}");
        assert!(!dir.path().join(name).exists());
    }
    // Another holder of valid credentials is let in from the cache.
    let mut again = Dfget::new(&url, &dir.path().join("again"))
        .supernode(sn.addr())
        .args(["-H", &auth, "--keep-serving", "0s"])
        .spawn()
        .unwrap();
    again.wait(WAIT).unwrap();
    assert_eq!(registry.blob_get_count(&digest), 1);
}

fn base64(s: &str) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn distribution_works_over_ipv6() {
    if !ipv6_loopback_available() {
        eprintln!("SKIPPED: no IPv6 loopback on this machine");
        return;
    }
    let _g = heavy();
    let registry = TestRegistry::builder().ipv6(true).start();
    let blob = random_blob(8 << 20, 6);
    let digest = registry.push_blob("app/v6", &blob);
    let url = registry.blob_url("app/v6", &digest);
    assert!(url.contains("[::1]"), "{url}");
    let sn = Supernode::builder()
        .ip(IpAddr::V6(Ipv6Addr::LOCALHOST))
        .start();
    assert!(sn.addr().is_ipv6());
    let dir = tempfile::tempdir().unwrap();
    let mut runs: Vec<DfgetRun> = (0..3)
        .map(|i| {
            Dfget::new(&url, &dir.path().join(format!("v6-{i}")))
                .supernode(sn.addr())
                .args([
                    "--peer-listen",
                    "[::1]:0",
                    "--keep-serving",
                    "3s",
                    "--no-back-source",
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    for run in &mut runs {
        run.wait(WAIT).unwrap();
        assert_eq!(file_sha(&run.output), sha256_hex(&blob));
    }
    assert_eq!(registry.blob_get_count(&digest), 1);
    assert!(sn.log_text().contains("[::1]"));
}

#[test]
fn malformed_requests_get_errors_not_panics() {
    let sn = Supernode::builder().start();
    let base = format!("http://{}", sn.addr());
    for path in ["/api/v1/register", "/api/v1/sync", "/api/v1/leave"] {
        // Signed, as a cluster member's would be: past the credential check, to the decoder.
        let resp = http::Request::post(format!("{base}{path}"))
            .signed()
            .body(vec![
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ])
            .send()
            .unwrap();
        assert_eq!(resp.status, 400, "{path}: {}", resp.text());
    }
    // Oversize body: refused before it is decoded. The answer may come while the client
    // is still sending, and the server then closes the connection: the client sees either
    // the 413 or its upload cut, never a 2xx.
    match http::Request::post(format!("{base}/api/v1/register"))
        .signed()
        .body(vec![0u8; 5 << 20])
        .send()
    {
        Ok(resp) => assert!(resp.status == 413 || resp.status == 400, "{}", resp.status),
        Err(e) => assert!(format!("{e:#}").contains("error sending request"), "{e:#}"),
    }
    // A piece without a piece token: refused before the task is even looked up, so a
    // stranger cannot tell a stored blob from an unknown one.
    let resp = http::get(
        &format!("{base}/api/v1/tasks/sha256:00/pieces/0?peer=1"),
        None,
    )
    .unwrap();
    assert_eq!(resp.status, 403, "{}", resp.text());
    // Still healthy afterwards.
    assert!(
        http::get(&format!("{base}/healthy"), None)
            .unwrap()
            .is_success()
    );
}
