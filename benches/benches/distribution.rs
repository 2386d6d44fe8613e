//! `distribution`: one file to N real peers at once, against the Kumar–Ross bound.
//!
//! In this process: an origin HTTP server whose uplink is capped at the seed rate, a
//! supernode (`supernode::App`) whose piece uploads are capped at the same rate, and N dfget
//! engines (`dfget::Engine`, each its own QUIC endpoint on loopback) with per-peer upload
//! and download caps. The caps are the engines' own rate limits (`--upload-rate`,
//! `--download-rate`), so the links, not the CPU, are the bottleneck. All peers start
//! together; each completion time is measured from that start.
//!
//! Then the baseline under the same caps: the same N engines with no supernode, each
//! downloading straight from the capped origin.
//!
//! ```text
//! cargo bench -p damselfly-benches --bench distribution -- --peers 16 --size 64MiB \
//!     --rate 4MiB --seed-rate 16MiB
//! ```

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use bytesize::ByteSize;
use clap::Parser;
use common::{
    CpuSample, Table,
    cluster::{self, PeerSpec, Supernode},
    mib,
    origin::Origin,
    percentile,
};
use damselfly_common::Digest;
use dfget::{DownloadRequest, Progress};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One file to N peers at once, against the Kumar–Ross bound.
#[derive(Parser, Debug)]
struct Args {
    /// Peers downloading at once.
    #[arg(long, default_value_t = 16)]
    peers: usize,
    /// File size.
    #[arg(long, default_value = "64MiB")]
    size: ByteSize,
    /// Each peer's upload and download cap, per second.
    #[arg(long, default_value = "4MiB")]
    rate: ByteSize,
    /// The seed's upload cap per second: the supernode's piece uploads, and the origin's
    /// uplink (which the baseline shares).
    #[arg(long, default_value = "16MiB")]
    seed_rate: ByteSize,
    /// Piece size the supernode cuts (0 = its default, ~256 pieces of 1–16 MiB).
    #[arg(long, default_value = "0")]
    piece_size: ByteSize,
    /// Swarm runs (the baseline runs once).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Skip the everyone-from-the-origin baseline (it takes N·F/seed-rate).
    #[arg(long)]
    no_baseline: bool,
    /// Peers learn parents' pieces from the supernode's sync answers, not from the parents'
    /// announcements (dfget --no-announcements).
    #[arg(long)]
    no_announcements: bool,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What one run measured.
struct Run {
    label: String,
    /// Seconds from the common start, one per peer.
    done: Vec<f64>,
    origin_bytes: u64,
    /// Piece bytes the supernode sent (none in the origin-only baseline).
    seed_bytes: Option<u64>,
    /// Bytes the peers received from each other.
    from_peers: u64,
    /// Bytes the peers received in all (from peers, the supernode or the origin).
    received: u64,
    /// Progress of the last peer to finish.
    slowest: Vec<(f64, u64)>,
    cpu: common::CpuUse,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Daemon logs on stderr only when asked for (`RUST_LOG=dfget=debug`, say).
    if std::env::var_os("RUST_LOG").is_some() {
        damselfly_common::telemetry::init("warn");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let f = args.size.as_u64();
    let (rate, seed_rate) = (args.rate.as_u64(), args.seed_rate.as_u64());
    let bound = damselfly_swarm::sim::kumar_ross(
        f,
        seed_rate,
        rate,
        rate as f64 * args.peers as f64,
        args.peers,
    )
    .as_secs_f64();
    println!("machine: {}", common::machine());
    println!(
        "distribution: {} to {} peers; peer up/down {}/s, seed (supernode and origin) {}/s; \
         T_min = {bound:.2} s",
        mib(f as f64),
        args.peers,
        mib(rate as f64),
        mib(seed_rate as f64)
    );
    let blob = Bytes::from(damselfly_e2e::random_blob(f as usize, 0x5eed));
    let digest = Digest::of(&blob).to_string();

    let mut runs = Vec::new();
    for i in 0..args.runs {
        let origin = Origin::start(vec![blob.clone()], seed_rate).await?;
        let piece_size = args.piece_size;
        let sn = Supernode::start(seed_rate, |c| c.cdn.piece_size = piece_size).await?;
        let spec = PeerSpec {
            supernodes: vec![sn.addr().to_string()],
            download_rate: rate,
            upload_rate: rate,
            announcements: !args.no_announcements,
        };
        let label = format!("swarm #{}", i + 1);
        let mut run = flash_crowd(&origin, &digest, args.peers, &spec, label).await?;
        run.seed_bytes = Some(sn.metric("damselfly_supernode_served_bytes_total").await? as u64);
        sn.stop().await?;
        print_run(&run, bound);
        runs.push(run);
    }
    if !args.no_baseline {
        let origin = Origin::start(vec![blob.clone()], seed_rate).await?;
        let spec = PeerSpec {
            supernodes: Vec::new(),
            download_rate: rate,
            upload_rate: rate,
            announcements: !args.no_announcements,
        };
        let run = flash_crowd(&origin, &digest, args.peers, &spec, "origin only".into()).await?;
        print_run(&run, bound);
        runs.push(run);
    }

    let mut table = Table::new([
        "run",
        "p50 / T_min",
        "p99 / T_min",
        "max / T_min",
        "origin bytes / F",
        "supernode bytes / F",
        "from peers",
        "CPU (this process)",
        "CPU (machine)",
    ]);
    for r in &runs {
        let total = r.received.max(1) as f64;
        table.row([
            r.label.clone(),
            format!("{:.2}", percentile(&r.done, 50.0) / bound),
            format!("{:.2}", percentile(&r.done, 99.0) / bound),
            format!("{:.2}", percentile(&r.done, 100.0) / bound),
            format!("{:.3}", r.origin_bytes as f64 / f as f64),
            r.seed_bytes
                .map_or_else(|| "-".to_owned(), |b| format!("{:.3}", b as f64 / f as f64)),
            format!("{:.0} %", r.from_peers as f64 / total * 100.0),
            format!("{:.0} %", r.cpu.process),
            format!("{:.0} %", r.cpu.machine),
        ]);
    }
    println!("\nT_min = {bound:.2} s (Kumar–Ross)\n{}", table.render());
    Ok(())
}

fn print_run(r: &Run, bound: f64) {
    println!(
        "{}: p50 {:.2} s, p99 {:.2} s, max {:.2} s (T_min {bound:.2} s); origin sent {}; CPU {:.0} % \
         of this process, {:.0} % machine",
        r.label,
        percentile(&r.done, 50.0),
        percentile(&r.done, 99.0),
        percentile(&r.done, 100.0),
        mib(r.origin_bytes as f64),
        r.cpu.process,
        r.cpu.machine,
    );
    let mut done = r.done.clone();
    done.sort_by(f64::total_cmp);
    let done: Vec<String> = done.iter().map(|d| format!("{d:.1}")).collect();
    println!("  completion times (s): {}", done.join(" "));
    let quarters: Vec<String> = [0.25, 0.5, 0.75, 1.0, 1.25]
        .iter()
        .map(|q| {
            let held = Timeline::at(&r.slowest, q * bound) as f64;
            let total = r.slowest.last().map_or(1, |(_, b)| *b).max(1) as f64;
            format!("{:.0} % at {q:.2}·T_min", held / total * 100.0)
        })
        .collect();
    println!("  the last peer to finish held {}", quarters.join(", "));
}

/// All `n` peers download the blob at once; finished peers keep serving (and tell the
/// supernode so) until the last one is done.
async fn flash_crowd(
    origin: &Origin,
    digest: &str,
    n: usize,
    spec: &PeerSpec,
    label: String,
) -> anyhow::Result<Run> {
    let dir = tempfile::Builder::new()
        .prefix("bench-distribution-")
        .tempdir_in(cluster::scratch_root())?;
    let engines = cluster::engines(n, spec).await?;
    let all_done = CancellationToken::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel(n);
    let cpu0 = CpuSample::now();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, engine) in engines.iter().enumerate() {
        let engine = engine.clone();
        let all_done = all_done.clone();
        let tx = tx.clone();
        let req = DownloadRequest {
            url: origin.blob_url(digest),
            headers: Vec::new(),
            digest: None,
            output: dir.path().join(format!("peer-{i}")),
            durable: true,
        };
        tasks.push(tokio::spawn(async move {
            let timeline = Timeline::new(start);
            let result = engine.download(&req, &timeline).await;
            let _ = tx
                .send((start.elapsed(), result, timeline.into_points()))
                .await;
            drop(tx);
            // Stay a parent for the others until all are done (the supernode expires peers
            // that stop syncing).
            let keepalive = async {
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    engine.keepalive().await;
                }
            };
            tokio::select! {
                () = all_done.cancelled() => {}
                () = keepalive => {}
            }
        }));
    }
    drop(tx);
    let mut done = Vec::with_capacity(n);
    let (mut from_peers, mut received) = (0, 0);
    let mut slowest: (f64, Vec<(f64, u64)>) = (0.0, Vec::new());
    while let Some((elapsed, result, points)) = rx.recv().await {
        let report = result.map_err(|e| anyhow::anyhow!("{label}: a download failed: {e}"))?;
        done.push(elapsed.as_secs_f64());
        if elapsed.as_secs_f64() > slowest.0 {
            slowest = (elapsed.as_secs_f64(), points);
        }
        from_peers += report.from_peers;
        received += report.from_peers + report.from_supernode + report.from_origin;
    }
    let cpu = cpu0.until(&CpuSample::now());
    all_done.cancel();
    for t in tasks {
        t.await?;
    }
    cluster::shutdown(engines).await;
    anyhow::ensure!(
        done.len() == n,
        "{label}: {} of {n} peers finished",
        done.len()
    );
    Ok(Run {
        label,
        done,
        origin_bytes: origin.bytes_sent(),
        seed_bytes: None,
        from_peers,
        received,
        cpu,
        slowest: slowest.1,
    })
}

/// When each verified byte landed: (seconds since the common start, bytes so far).
struct Timeline {
    start: Instant,
    points: parking_lot::Mutex<Vec<(f64, u64)>>,
}

impl Timeline {
    fn new(start: Instant) -> Self {
        Self {
            start,
            points: parking_lot::Mutex::new(Vec::new()),
        }
    }

    fn into_points(self) -> Vec<(f64, u64)> {
        self.points.into_inner()
    }

    /// Bytes held at `t` seconds.
    fn at(points: &[(f64, u64)], t: f64) -> u64 {
        points
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map_or(0, |(_, b)| *b)
    }
}

impl Progress for Timeline {
    fn set_total(&self, _: u64) {}
    fn advance(&self, bytes: u64) {
        let mut p = self.points.lock();
        let total = p.last().map_or(0, |(_, b)| *b) + bytes;
        p.push((self.start.elapsed().as_secs_f64(), total));
    }
}
