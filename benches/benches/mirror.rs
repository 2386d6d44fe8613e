//! `mirror`: blob pulls through dfdaemon, the way a container runtime makes them.
//!
//! A real `docker-registry` (Debian's, as in the end-to-end tests) holds the blobs; in this
//! process run a supernode and two dfdaemons (`dfdaemon::App`, A and B) on loopback, and an
//! HTTP client. For each blob, in order:
//!
//! * **direct**: a GET straight from the registry (the baseline: no mirror);
//! * **cold**: a GET through A, which holds nothing (the supernode fetches from the registry
//!   and A from the supernode), timed to the first byte and to the last;
//! * **remote peer**: a GET through B, which fetches from A over QUIC;
//! * **local cache**: the same GET through A again.
//!
//! Then small Range reads at random offsets (the lazy-loading pattern) of a blob A holds,
//! through A and straight from the registry: p50/p99 latency of each. And remote ones: for
//! each of `--remote-blobs` more blobs, A pulls it whole, then a third dfdaemon C, which has
//! never seen it, serves one Range read of it (its first read of that blob: registration,
//! then the piece holding the range from A), beside the same read from the registry.
//!
//! ```text
//! cargo bench -p damselfly-benches --bench mirror -- --size 64MiB --blobs 5 --ranges 500
//! ```

#![allow(clippy::unwrap_used)]

mod common;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use bytesize::ByteSize;
use clap::Parser;
use common::{Table, cluster, percentile};
use damselfly_e2e::TestRegistry;
use futures::StreamExt as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Blob pull latency through dfdaemon.
#[derive(Parser, Debug)]
struct Args {
    /// Size of each blob.
    #[arg(long, default_value = "64MiB")]
    size: ByteSize,
    /// Blobs pulled (each cold, then from a remote peer, then from the local cache).
    #[arg(long, default_value_t = 5)]
    blobs: usize,
    /// Range reads of each kind.
    #[arg(long, default_value_t = 500)]
    ranges: usize,
    /// Bytes per Range read.
    #[arg(long, default_value = "64KiB")]
    range_size: ByteSize,
    /// The supernode's `cdn.hot_pieces_memory` (`0B`: every piece read back from disk).
    #[arg(long, default_value = "128MiB")]
    supernode_hot_pieces: ByteSize,
    /// Wait this long before each pull, so that one pull's background work (the
    /// supernode's and the node's flush to disk) is over before the next is timed.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pause: Duration,
    /// Blobs read once each through node C (a remote peer's cache); `0` skips them.
    #[arg(long, default_value_t = 100)]
    remote_blobs: usize,
    /// Size of each of those blobs.
    #[arg(long, default_value = "4MiB")]
    remote_blob_size: ByteSize,
    /// Wait this long after A's pull of each of those blobs and after C's read, so that the
    /// background work each starts (A's cache import, C's download of the rest of the blob)
    /// is over before the next read is timed.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    remote_pause: Duration,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

const REPO: &str = "bench/mirror";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Daemon logs on stderr only when asked for (`RUST_LOG=dfdaemon=debug`, say).
    if std::env::var_os("RUST_LOG").is_some() {
        damselfly_common::telemetry::init("warn");
    }
    println!("machine: {}", common::machine());
    let registry = TestRegistry::builder().try_start()?;
    let digests: Vec<String> = (0..args.blobs)
        .map(|i| {
            let blob = damselfly_e2e::random_blob(args.size.as_u64() as usize, 0x3000 + i as u64);
            registry.try_push_blob(REPO, &blob)
        })
        .collect::<anyhow::Result<_>>()?;
    let remote: Vec<String> = (0..args.remote_blobs)
        .map(|i| {
            let size = args.remote_blob_size.as_u64() as usize;
            let blob = damselfly_e2e::random_blob(size, 0x5000 + i as u64);
            registry.try_push_blob(REPO, &blob)
        })
        .collect::<anyhow::Result<_>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(&args, &registry, &digests, &remote))
}

/// Latencies of one kind, in seconds.
#[derive(Default)]
struct Series {
    first_byte: Vec<f64>,
    total: Vec<f64>,
}

async fn bench(
    args: &Args,
    registry: &TestRegistry,
    digests: &[String],
    far: &[String],
) -> anyhow::Result<()> {
    let size = args.size.as_u64();
    println!(
        "mirror: {} blobs of {} each, registry {}",
        digests.len(),
        common::mib(size as f64),
        registry.url()
    );
    let hot = args.supernode_hot_pieces;
    let sn = cluster::Supernode::start(0, |c| c.cdn.hot_pieces_memory = hot).await?;
    let stop = CancellationToken::new();
    let a = Daemon::start(&sn, registry, &stop).await?;
    let b = Daemon::start(&sn, registry, &stop).await?;
    println!("dfdaemon A {}, B {}", a.url, b.url);
    let client = reqwest::Client::builder().no_proxy().build()?;

    let (mut direct, mut cold, mut remote, mut local) = Default::default();
    for digest in digests {
        let path = format!("/v2/{REPO}/blobs/{digest}");
        for (base, into) in [
            (&registry.url(), &mut direct),
            (&a.url, &mut cold),
            (&b.url, &mut remote),
            (&a.url, &mut local),
        ] {
            tokio::time::sleep(args.pause).await;
            get(&client, base, &path, None, size, into).await?;
        }
    }
    // Where B's bytes came from (B pulls each blob once, while A holds it): a node with a
    // complete peer still takes some pieces from the supernode.
    let [peer, supernode, _] = blob_sources(&client, &b.url).await?;
    println!(
        "remote-peer pulls (node B): {} from peers, {} from the supernode",
        common::mib(peer),
        common::mib(supernode)
    );
    let base = percentile(&direct.total, 50.0);
    let mut pulls = Table::new([
        "blob pull",
        "p50 first byte (ms)",
        "p50 total (ms)",
        "max total (ms)",
        "p50 / direct",
    ]);
    for (name, s) in [
        ("direct from the registry", &direct),
        ("dfdaemon, cold (registry → supernode → node)", &cold),
        ("dfdaemon, remote peer (node → node)", &remote),
        ("dfdaemon, local cache", &local),
    ] {
        pulls.row([
            name.to_owned(),
            ms(percentile(&s.first_byte, 50.0)),
            ms(percentile(&s.total, 50.0)),
            ms(percentile(&s.total, 100.0)),
            format!("{:.2}", percentile(&s.total, 50.0) / base),
        ]);
    }

    // Range reads of the first blob, which A holds now.
    let path = format!("/v2/{REPO}/blobs/{}", digests[0]);
    let len = args.range_size.as_u64().min(size);
    let mut rng_state = 0x9e37_79b9_u64;
    let mut next_offset = |span: u64| {
        rng_state = rng_state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (rng_state >> 11) % span
    };
    let offsets: Vec<u64> = (0..args.ranges)
        .map(|_| next_offset(size - len + 1))
        .collect();
    let (mut via_a, mut via_registry) = (Series::default(), Series::default());
    for &off in &offsets {
        let range = Some((off, len));
        get(&client, &a.url, &path, range, len, &mut via_a).await?;
        get(
            &client,
            &registry.url(),
            &path,
            range,
            len,
            &mut via_registry,
        )
        .await?;
    }
    // Remote reads: node C reads each blob once, after A has pulled it.
    let c = Daemon::start(&sn, registry, &stop).await?;
    let rsize = args.remote_blob_size.as_u64();
    let rlen = len.min(rsize);
    let (mut via_c, mut via_registry_small) = (Series::default(), Series::default());
    for digest in far {
        let path = format!("/v2/{REPO}/blobs/{digest}");
        get(&client, &a.url, &path, None, rsize, &mut Series::default()).await?;
        tokio::time::sleep(args.remote_pause).await;
        let range = Some((next_offset(rsize - rlen + 1), rlen));
        get(&client, &c.url, &path, range, rlen, &mut via_c).await?;
        get(
            &client,
            &registry.url(),
            &path,
            range,
            rlen,
            &mut via_registry_small,
        )
        .await?;
        tokio::time::sleep(args.remote_pause).await;
    }
    if !far.is_empty() {
        let [peer, supernode, origin] = blob_sources(&client, &c.url).await?;
        println!(
            "remote reads (node C): {} from peers, {} from the supernode, {} from the registry",
            common::mib(peer),
            common::mib(supernode),
            common::mib(origin)
        );
    }
    let ranges = range_table(&via_registry, "dfdaemon, local cache", &via_a);
    println!(
        "\n{}\n{} Range reads of {} at random offsets, each kind:\n{}",
        pulls.render(),
        offsets.len(),
        ByteSize::b(len),
        ranges.render()
    );
    if !far.is_empty() {
        let table = range_table(
            &via_registry_small,
            "dfdaemon, remote peer (node C's first read)",
            &via_c,
        );
        println!(
            "\n{} Range reads of {}, one per blob of {} that node A holds and node C lacks:\n{}",
            via_c.total.len(),
            ByteSize::b(rlen),
            ByteSize::b(rsize),
            table.render()
        );
    }
    stop.cancel();
    a.task.await??;
    b.task.await??;
    c.task.await??;
    sn.stop().await
}

/// Seconds as milliseconds, one decimal.
fn ms(v: f64) -> String {
    format!("{:.1}", v * 1000.0)
}

/// Range read latencies through a dfdaemon (`name`) against the same reads from the registry.
fn range_table(direct: &Series, name: &str, through: &Series) -> Table {
    let mut t = Table::new(["Range read", "p50 (ms)", "p99 (ms)", "p50 / direct"]);
    let base = percentile(&direct.total, 50.0);
    for (name, s) in [("direct from the registry", direct), (name, through)] {
        t.row([
            name.to_owned(),
            ms(percentile(&s.total, 50.0)),
            ms(percentile(&s.total, 99.0)),
            format!("{:.2}", percentile(&s.total, 50.0) / base),
        ]);
    }
    t
}

/// Bytes a dfdaemon served from peers, the supernode and the registry
/// (`damselfly_dfdaemon_blob_bytes_total` by `source`).
async fn blob_sources(client: &reqwest::Client, base: &str) -> anyhow::Result<[f64; 3]> {
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(["peer", "supernode", "origin"].map(|s| {
        damselfly_e2e::metric_sum(
            &metrics,
            "damselfly_dfdaemon_blob_bytes_total",
            Some(&format!("source=\"{s}\"")),
        )
        .max(0.0)
    }))
}

/// GET `base + path` (bytes `range` = (offset, length) if given), reads the whole body,
/// checks its length, and records the latencies.
async fn get(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    range: Option<(u64, u64)>,
    want: u64,
    into: &mut Series,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut req = client.get(format!("{base}{path}"));
    if let Some((off, len)) = range {
        req = req.header("range", format!("bytes={off}-{}", off + len - 1));
    }
    let what = || format!("GET {base}{path} (range {range:?})");
    let resp = req
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(what)?;
    let mut body = resp.bytes_stream();
    let mut got = 0u64;
    let mut first = None;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| format!("{} after {got} bytes", what()))?;
        if first.is_none() && !chunk.is_empty() {
            first = Some(start.elapsed());
        }
        got += chunk.len() as u64;
    }
    let total = start.elapsed();
    anyhow::ensure!(got == want, "{base}{path}: {got} bytes, expected {want}");
    into.first_byte.push(first.unwrap_or(total).as_secs_f64());
    into.total.push(total.as_secs_f64());
    Ok(())
}

/// An in-process dfdaemon.
struct Daemon {
    url: String,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    async fn start(
        sn: &cluster::Supernode,
        registry: &TestRegistry,
        stop: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bench-dfdaemon-")
            .tempdir_in(cluster::scratch_root())?;
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut config = dfdaemon::Config {
            listen: loopback,
            peer_listen: loopback,
            data_dir: dir.path().to_path_buf(),
            supernodes: vec![sn.addr().to_string()],
            default_upstream: registry.url(),
            shutdown_grace: Duration::from_secs(2),
            ..dfdaemon::Config::default()
        };
        config.cache.capacity = ByteSize::b(0);
        let app = dfdaemon::App::build(config).await?;
        let url = format!("http://{}", app.addr());
        let task = tokio::spawn(app.run(stop.clone()));
        Ok(Self {
            url,
            task,
            _dir: dir,
        })
    }
}
