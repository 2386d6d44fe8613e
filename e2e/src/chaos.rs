//! Rounds of faults during a multi-peer pull, with real processes: one round starts a real
//! `docker-registry` holding a fresh random blob, three `supernode`s and several `dfget`
//! peers pulling the blob at once through them (each held to a rate, back-to-source off),
//! injects one [`ChaosFault`] a while in, and checks what a user would: every pull that
//! should complete did, with the right bytes; no wrong byte reached an output; how many
//! bytes the registry sent. The chaos suite (`e2e/tests/chaos.rs`) runs one small round of
//! each fault; the `chaos` benchmark runs many, chosen at random.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use damselfly_common::{Digest, placement};

use crate::{Dfget, DfgetRun, Supernode, TestRegistry, random_blob, sha256_hex, wait_until};

/// What goes wrong in a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChaosFault {
    /// Nothing: the baseline.
    None,
    /// The blob's home supernode is SIGKILLed: the peers move to the next one.
    KillHome,
    /// The home supernode is SIGKILLed and started again on its data directory: its fetch
    /// resumes with `Range`, the peers register with it again.
    RestartHome,
    /// One downloading peer is SIGKILLed (its pull is not expected to complete, and must
    /// leave no output).
    KillPeer,
    /// One downloading peer hangs (SIGSTOP) for 5 s, then goes on.
    FreezePeer,
    /// A peer that finished first serves corrupt bytes to everyone.
    Liar,
}

impl ChaosFault {
    /// Every fault, the baseline first.
    pub const ALL: [Self; 6] = [
        Self::None,
        Self::KillHome,
        Self::RestartHome,
        Self::KillPeer,
        Self::FreezePeer,
        Self::Liar,
    ];

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::KillHome => "kill-home",
            Self::RestartHome => "restart-home",
            Self::KillPeer => "kill-peer",
            Self::FreezePeer => "freeze-peer",
            Self::Liar => "liar",
        }
    }
}

/// The shape of a round.
#[derive(Clone, Debug)]
pub struct ChaosRound {
    /// Downloading peers.
    pub peers: usize,
    /// Blob size in bytes.
    pub size: usize,
    /// Each peer's download limit, bytes per second.
    pub rate: u64,
    /// When the fault strikes, from the peers' start.
    pub fault_after: Duration,
    /// Seed of the blob's bytes.
    pub seed: u64,
    /// Longest a pull may take.
    pub timeout: Duration,
    /// Extra flags for every supernode (e.g. `--cdn-takeover-from-peers=false` for a
    /// baseline).
    pub supernode_args: Vec<String>,
}

/// What a round did.
#[derive(Clone, Debug)]
pub struct ChaosOutcome {
    /// The fault.
    pub fault: ChaosFault,
    /// Pulls that should have completed.
    pub expected: usize,
    /// Pulls that completed with the right bytes.
    pub completed: usize,
    /// Outputs that exist with bytes other than the blob's (must be 0).
    pub corrupt: usize,
    /// Body bytes the registry sent for the blob.
    pub registry_bytes: u64,
    /// The blob's size.
    pub blob_bytes: u64,
    /// From the peers' start to the last completion.
    pub elapsed: Duration,
    /// The failures' messages, for a report.
    pub failures: Vec<String>,
}

impl ChaosOutcome {
    /// Registry bytes over the blob's size.
    pub fn registry_ratio(&self) -> f64 {
        self.registry_bytes as f64 / self.blob_bytes.max(1) as f64
    }
}

/// Runs one round with `fault`.
///
/// # Errors
/// A process of the harness could not be started (not a failed pull: those are counted).
pub fn run_round(fault: ChaosFault, round: &ChaosRound) -> Result<ChaosOutcome> {
    let registry = TestRegistry::builder().try_start()?;
    let blob = random_blob(round.size, round.seed);
    let repo = "chaos/blob";
    let digest = registry.try_push_blob(repo, &blob)?;
    let url = registry.blob_url(repo, &digest);
    let want = sha256_hex(&blob);
    let data: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<std::io::Result<_>>()?;
    let mut supernodes: Vec<Supernode> = data
        .iter()
        .map(|d| {
            Supernode::builder()
                .data_dir(d.path())
                .fleet_signing_key()
                .args(round.supernode_args.iter().cloned())
                .try_start()
        })
        .collect::<Result<_>>()?;
    let addrs: Vec<String> = supernodes.iter().map(|s| s.addr().to_string()).collect();
    let key: Digest = digest.parse().context("pushed digest")?;
    let home = placement::order(&key, &addrs)[0];
    let dir = tempfile::tempdir()?;
    let peer = |name: &str| {
        let mut d = Dfget::new(&url, &dir.path().join(name));
        for s in &supernodes {
            d = d.supernode(s.addr());
        }
        d
    };

    let _liar = if fault == ChaosFault::Liar {
        let liar = peer("liar")
            .args(["--fault-corrupt-uploads", "--keep-serving", "600s"])
            .spawn()?;
        let report = liar.report.clone();
        anyhow::ensure!(
            wait_until(round.timeout, || report.exists()),
            "the liar never finished its own download"
        );
        Some(liar)
    } else {
        None
    };

    let rate = format!("{}B", round.rate);
    let started = Instant::now();
    let mut peers: Vec<DfgetRun> = (0..round.peers)
        .map(|i| {
            peer(&format!("peer{i}"))
                .args([
                    "--download-rate",
                    &rate,
                    "--supernode-timeout",
                    "2s",
                    "--no-back-source",
                    "--keep-serving",
                    "2s",
                ])
                .spawn()
        })
        .collect::<Result<_>>()?;
    std::thread::sleep(round.fault_after);
    let mut lost: Option<PathBuf> = None;
    match fault {
        ChaosFault::None | ChaosFault::Liar => {}
        ChaosFault::KillHome => supernodes[home].daemon_mut().kill(),
        ChaosFault::RestartHome => {
            let port = supernodes[home].addr().port();
            supernodes[home].daemon_mut().kill();
            supernodes[home] = Supernode::builder()
                .data_dir(data[home].path())
                .fleet_signing_key()
                .args(round.supernode_args.iter().cloned())
                .port(port)
                .try_start()?;
        }
        ChaosFault::KillPeer => {
            let victim = peers.remove(0);
            let mut daemon = victim.daemon;
            daemon.kill();
            lost = Some(victim.output);
        }
        ChaosFault::FreezePeer => {
            let frozen = peers[0].daemon.freeze()?;
            std::thread::sleep(Duration::from_secs(5));
            drop(frozen);
        }
    }

    let mut completed = 0;
    let mut corrupt = 0;
    let mut failures = Vec::new();
    for p in &mut peers {
        let result = p.wait(round.timeout);
        let sha = file_sha(&p.output);
        match (result, sha) {
            (Ok(_), Some(sha)) if sha == want => completed += 1,
            (Ok(report), _) => {
                corrupt += 1;
                failures.push(format!("{}: wrong bytes ({report})", p.output.display()));
            }
            // A failed pull must leave nothing behind, least of all other bytes.
            (Err(e), Some(sha)) if sha != want => {
                corrupt += 1;
                failures.push(format!(
                    "{}: failed and left wrong bytes: {e:#}",
                    p.output.display()
                ));
            }
            (Err(e), _) => failures.push(format!("{}: {e:#}", p.output.display())),
        }
    }
    let elapsed = started.elapsed();
    // A killed peer leaves no output (dfget renames its file into place only when whole).
    if let Some(path) = &lost
        && file_sha(path).is_some_and(|sha| sha != want)
    {
        corrupt += 1;
        failures.push(format!(
            "{}: a killed peer left wrong bytes",
            path.display()
        ));
    }
    let registry_bytes = registry.blob_bytes_served(&digest);
    Ok(ChaosOutcome {
        fault,
        expected: peers.len(),
        completed,
        corrupt,
        registry_bytes,
        blob_bytes: blob.len() as u64,
        elapsed,
        failures,
    })
}

fn file_sha(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| sha256_hex(&b))
}
