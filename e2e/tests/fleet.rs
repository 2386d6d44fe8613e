//! Several supernodes as one fleet, end to end: real `docker-registry`, three real
//! `supernode`s and real `dfget` peers. When a blob's home supernode is killed mid-download,
//! the peers keep what they hold and move to the next supernode in the blob's placement
//! order, which takes the task over, copying the pieces the peers hold before asking the
//! registry for the rest.
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
    /// With `shared_key`, the supernodes sign piece digests with one key (a fleet set up
    /// as documented), else each with its own.
    fn start(repo: &str, size: usize, seed: u64, shared_key: bool) -> Self {
        let registry = TestRegistry::start();
        let blob = random_blob(size, seed);
        let digest = registry.push_blob(repo, &blob);
        let url = registry.blob_url(repo, &digest);
        let supernodes: Vec<Supernode> = (0..3)
            .map(|_| {
                let b = Supernode::builder();
                if shared_key { b.fleet_signing_key() } else { b }.start()
            })
            .collect();
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
/// supernodes sharing one signing key; the blob's home supernode is SIGKILLed a few seconds
/// in. Every peer ends with the right bytes without going to the origin itself
/// (back-to-source is off), each says it was taken over once, and the successor filled its
/// copy from the pieces the peers held before asking the registry for the rest: the
/// registry sent the blob once plus the pieces nobody held, not twice. A later pull is
/// served from the successor's (complete, verified) copy without a registry byte.
#[test]
fn killing_a_blobs_home_supernode_mid_download_hands_the_swarm_to_the_next() {
    let mut f = Fleet::start("app/fleet", 64 * MIB, 41, true);
    let dir = tempfile::tempdir().unwrap();
    let reports = pull_and_kill_home(&mut f, dir.path(), 8, 4);
    let (registry, blob, digest, next) = (&f.registry, &f.blob, &f.digest, f.order[1]);
    let from_next: u64 = reports.iter().map(|r| num(r, "from_supernode")).sum();
    let from_peers: u64 = reports.iter().map(|r| num(r, "from_peers")).sum();
    assert!(from_peers > 0, "the peers shared nothing: {reports:?}");
    assert!(
        from_next < 8 * blob.len() as u64,
        "every peer fetched everything from a supernode: {reports:?}"
    );
    let successor = &f.supernodes[next];
    let copied = successor
        .metric("damselfly_supernode_takeover_peer_bytes_total")
        .unwrap() as u64;
    let registry_bytes = registry.blob_bytes_served(digest);
    let size = blob.len() as u64;
    println!(
        "8 peers × 64 MiB, home killed at 4 s: {} MiB between peers, {} MiB from supernodes; \
         the successor copied {} MiB from the peers; registry sent {:.2} × the blob",
        from_peers >> 20,
        from_next >> 20,
        copied >> 20,
        registry_bytes as f64 / size as f64
    );
    assert_eq!(
        successor
            .metric("damselfly_supernode_takeover_fills_total")
            .unwrap(),
        1.0,
        "the successor did not fill the task from the swarm"
    );
    assert!(
        copied >= size / 8,
        "the successor copied only {copied} bytes from the peers, who held at least a quarter each"
    );
    // The home's fetch (at most the blob) and the successor's pieces nobody held.
    assert!(
        registry_bytes <= 2 * size - copied,
        "the registry sent {registry_bytes} bytes, more than the blob plus what the successor did not copy"
    );
    // The successor's copy is whole and verified: a later pull takes nothing from the
    // registry.
    let mut late = f
        .dfget(dir.path(), "late")
        .args(["--no-back-source", "--keep-serving", "0s"])
        .spawn()
        .unwrap();
    let r = late.wait(WAIT).unwrap();
    assert_eq!(file_sha(&late.output), sha256_hex(blob), "{r}");
    assert_eq!(
        registry.blob_bytes_served(digest),
        registry_bytes,
        "a pull after the takeover went to the registry: {r}"
    );
}

/// The same fault with supernodes that each sign with a key of their own: the successor
/// cannot check the vouches the peers' pieces carry, says so, and fetches the blob from the
/// registry instead. The pulls still complete, the registry sends the blob at most twice.
#[test]
fn a_successor_that_cannot_check_the_peers_vouches_fetches_from_the_registry() {
    let mut f = Fleet::start("app/fleet-keys", 32 * MIB, 42, false);
    let dir = tempfile::tempdir().unwrap();
    pull_and_kill_home(&mut f, dir.path(), 4, 3);
    let successor = &f.supernodes[f.order[1]];
    assert!(
        successor
            .log_text()
            .contains("vouched for with a key this supernode does not hold"),
        "the successor did not say why it went to the registry:\n{}",
        successor.log_text()
    );
    assert_eq!(
        successor
            .metric("damselfly_supernode_takeover_peer_bytes_total")
            .unwrap(),
        0.0
    );
    let size = f.blob.len() as u64;
    let registry_bytes = f.registry.blob_bytes_served(&f.digest);
    assert!(
        registry_bytes <= 2 * size,
        "the registry sent {registry_bytes} bytes for a {size}-byte blob"
    );
}

/// `peers` dfget peers held to 4 MiB/s pull the fleet's blob; after `kill_after_s` seconds
/// the blob's home supernode is SIGKILLed. Checks what every takeover must give (the right
/// bytes, one takeover each, nothing from the origin, the successor took the peers in and
/// the third supernode was never asked) and returns the peers' reports.
fn pull_and_kill_home(
    f: &mut Fleet,
    dir: &Path,
    peers: usize,
    kill_after_s: u64,
) -> Vec<serde_json::Value> {
    let (home, next) = (f.order[0], f.order[1]);
    let mut runs: Vec<DfgetRun> = (0..peers)
        .map(|i| {
            f.dfget(dir, &format!("peer{i}"))
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
    // Part of the way in (64 MiB at 4 MiB/s is 16 s per peer), the home goes away without
    // a word.
    std::thread::sleep(Duration::from_secs(kill_after_s));
    assert!(
        f.supernodes[home]
            .metric("damselfly_supernode_registrations_total")
            .unwrap()
            >= peers as f64,
        "the peers did not all register with the blob's home supernode first"
    );
    f.supernodes[home].daemon_mut().kill();

    let reports: Vec<serde_json::Value> = runs
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
    for (p, r) in runs.iter().zip(&reports) {
        assert_eq!(file_sha(&p.output), sha256_hex(&f.blob), "{r}");
        assert_eq!(num(r, "supernode_takeovers"), 1, "{r}");
        assert_eq!(num(r, "from_origin"), 0, "{r}");
    }
    assert!(
        f.supernodes[next]
            .metric("damselfly_supernode_registrations_total")
            .unwrap()
            >= peers as f64,
        "the successor did not take the peers in"
    );
    assert_eq!(
        f.supernodes[f.order[2]]
            .metric("damselfly_supernode_registrations_total")
            .unwrap(),
        0.0,
        "the third supernode was asked although the second took over"
    );
    reports
}

/// A peer that finished before its blob's home supernode died goes on serving the blob:
/// its keep-alives find the home gone, and it offers the blob as a holder to the next
/// supernode in the order once a downloader has moved the task there. The later downloader
/// then takes most of the blob from it rather than from the supernode.
#[test]
fn a_finished_peer_serves_its_blob_at_the_next_supernode_when_the_home_dies() {
    let mut f = Fleet::start("app/holder", 32 * MIB, 43, true);
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
