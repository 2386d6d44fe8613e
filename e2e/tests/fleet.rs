//! Several supernodes as one fleet, end to end: real `docker-registry`, three real
//! `supernode`s and real `dfget` peers. When a blob's home supernode is killed mid-download,
//! the peers keep what they hold and move to the next supernode in the blob's placement
//! order, which takes the task over: the registry sends the blob once more, not once per
//! peer.
#![allow(clippy::unwrap_used)]

use std::{path::Path, time::Duration};

use damselfly_common::{Digest, placement};
use damselfly_e2e::{Dfget, DfgetRun, Supernode, TestRegistry, num, random_blob, sha256_hex};

const WAIT: Duration = Duration::from_secs(180);
const MIB: usize = 1 << 20;

fn file_sha(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

/// A registry holding one random blob and three supernodes, with the blob's placement
/// order over them (home first).
struct Fleet {
    registry: TestRegistry,
    blob: Vec<u8>,
    digest: String,
    url: String,
    supernodes: Vec<Supernode>,
    order: Vec<usize>,
}

impl Fleet {
    fn start(repo: &str, size: usize, seed: u64) -> Self {
        let registry = TestRegistry::start();
        let blob = random_blob(size, seed);
        let digest = registry.push_blob(repo, &blob);
        let url = registry.blob_url(repo, &digest);
        let supernodes: Vec<Supernode> = (0..3).map(|_| Supernode::builder().start()).collect();
        let addrs: Vec<String> = supernodes.iter().map(|s| s.addr().to_string()).collect();
        let key: Digest = digest.parse().unwrap();
        let order = placement::order(&key, &addrs);
        Self {
            registry,
            blob,
            digest,
            url,
            supernodes,
            order,
        }
    }

    /// A dfget of the blob into `dir/name` that knows every supernode.
    fn dfget(&self, dir: &Path, name: &str) -> Dfget {
        let mut d = Dfget::new(&self.url, &dir.join(name));
        for addr in self.supernodes.iter().map(Supernode::addr) {
            d = d.supernode(addr);
        }
        d
    }
}

/// Eight peers, each held to 4 MiB/s, pull a 64 MiB blob through a fleet of three
/// supernodes; its home supernode is SIGKILLed a few seconds in. Every peer ends with the
/// right bytes without going to the origin itself (back-to-source is off), each says it was
/// taken over once, and the registry served the blob at most twice: once to the home
/// supernode, once to its successor.
#[test]
fn killing_a_blobs_home_supernode_mid_download_hands_the_swarm_to_the_next() {
    let mut f = Fleet::start("app/fleet", 64 * MIB, 41);
    let (registry, blob, digest, order) = (&f.registry, &f.blob, &f.digest, &f.order);
    let (home, next) = (order[0], order[1]);
    let dir = tempfile::tempdir().unwrap();

    let mut peers: Vec<DfgetRun> = (0..8)
        .map(|i| {
            f.dfget(dir.path(), &format!("peer{i}"))
                .args([
                    "--download-rate",
                    "4MiB",
                    "--supernode-timeout",
                    "2s",
                    "--no-back-source",
                    "--keep-serving",
                    "3s",
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    // A quarter of the way in (64 MiB at 4 MiB/s is 16 s per peer), the home goes away
    // without a word.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        f.supernodes[home]
            .metric("damselfly_supernode_registrations_total")
            .unwrap()
            >= 8.0,
        "the peers did not all register with the blob's home supernode first"
    );
    f.supernodes[home].daemon_mut().kill();

    let reports: Vec<serde_json::Value> = peers
        .iter_mut()
        .map(|p| {
            p.wait(WAIT).unwrap_or_else(|e| {
                panic!(
                    "{e:#}\n--- next supernode ---\n{}",
                    f.supernodes[next].log_text()
                )
            })
        })
        .collect();
    for (p, r) in peers.iter().zip(&reports) {
        assert_eq!(file_sha(&p.output), sha256_hex(blob), "{r}");
        assert_eq!(num(r, "supernode_takeovers"), 1, "{r}");
        assert_eq!(num(r, "from_origin"), 0, "{r}");
    }
    // What the peers held when the home died was not fetched again: together they took
    // less than the whole blob from the successor each.
    let from_next: u64 = reports.iter().map(|r| num(r, "from_supernode")).sum();
    let from_peers: u64 = reports.iter().map(|r| num(r, "from_peers")).sum();
    assert!(from_peers > 0, "the peers shared nothing: {reports:?}");
    assert!(
        from_next < 8 * blob.len() as u64,
        "every peer fetched everything from a supernode: {reports:?}"
    );
    let gets = registry.blob_get_count(digest);
    println!(
        "8 peers × 64 MiB, home killed at 4 s: {} MiB from peers, {} MiB from supernodes, registry GETs {gets}",
        from_peers >> 20,
        from_next >> 20
    );
    assert!(
        (1..=2).contains(&gets),
        "the registry sent the blob {gets} times (home once, its successor once at most)"
    );
    assert!(
        f.supernodes[next]
            .metric("damselfly_supernode_registrations_total")
            .unwrap()
            >= 8.0,
        "the successor did not take the peers in"
    );
    let third = order[2];
    assert_eq!(
        f.supernodes[third]
            .metric("damselfly_supernode_registrations_total")
            .unwrap(),
        0.0,
        "the third supernode was asked although the second took over"
    );
}

/// A peer that finished before its blob's home supernode died goes on serving the blob:
/// its keep-alives find the home gone, and it offers the blob as a holder to the next
/// supernode in the order once a downloader has moved the task there. The later downloader
/// then takes most of the blob from it rather than from the supernode.
#[test]
fn a_finished_peer_serves_its_blob_at_the_next_supernode_when_the_home_dies() {
    let mut f = Fleet::start("app/holder", 32 * MIB, 43);
    let (home, next) = (f.order[0], f.order[1]);
    let dir = tempfile::tempdir().unwrap();

    let done = f
        .dfget(dir.path(), "done")
        .args(["--keep-serving", "60s", "--supernode-timeout", "1s"])
        .spawn()
        .unwrap();
    let report = done.report.clone();
    assert!(
        damselfly_e2e::wait_until(Duration::from_secs(60), || report.exists()),
        "the first peer never finished"
    );
    f.supernodes[home].daemon_mut().kill();

    let mut late = f
        .dfget(dir.path(), "late")
        .args([
            "--download-rate",
            "4MiB",
            "--no-back-source",
            "--keep-serving",
            "0s",
        ])
        .spawn()
        .unwrap();
    let r = late
        .wait(WAIT)
        .unwrap_or_else(|e| panic!("{e:#}\n--- next ---\n{}", f.supernodes[next].log_text()));
    assert_eq!(file_sha(&late.output), sha256_hex(&f.blob));
    println!(
        "late peer: {} MiB from peers, {} MiB from the supernode",
        num(&r, "from_peers") >> 20,
        num(&r, "from_supernode") >> 20
    );
    assert!(
        num(&r, "from_peers") >= (f.blob.len() / 2) as u64,
        "the finished peer did not serve at the next supernode: {r}"
    );
    assert!(f.registry.blob_get_count(&f.digest) <= 2);
    drop(done);
}
