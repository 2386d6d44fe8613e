//! `throughput`: one peer fetching a large blob from one parent, unshaped, against a plain
//! HTTP download of the same bytes on the same machine, in the same run; and each peer's
//! peak RSS.
//!
//! In this process: an origin HTTP server (blob in memory) and a supernode. The peers are
//! separate processes (this executable, re-run as `peer`), so each one's peak RSS is its own
//! `VmHWM`: the parent downloads the blob from the supernode and keeps serving it; then the
//! child downloads it, all from the parent (the supernode offers a peer only pieces no live
//! peer holds). The plain HTTP downloads of the same bytes from the origin are a Rust
//! client (this executable as `http`: reqwest, the client dfget itself uses for HTTP) and
//! `curl`, when installed. Times include writing the file (and, for dfget, checking every
//! piece and then the whole file against their sha256, and flushing it to disk).
//!
//! Every download of a run writes its file into page-cache memory that no other download of
//! the run has just freed: the outputs are removed together at the end of the run. On a VM
//! whose host takes freed guest memory back (free page reporting), writing into memory the
//! guest has not used lately costs several times more than reusing memory another process
//! freed a moment ago; removing each output at once handed that advantage to whichever
//! download came next.
//!
//! ```text
//! cargo bench -p damselfly-benches --bench throughput -- --size 1GiB --runs 3
//! ```

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use bytesize::ByteSize;
use clap::{Parser, Subcommand};
use common::{Table, cluster, mib, origin::Origin, peak_rss, percentile};
use damselfly_common::Digest;
use futures::StreamExt as _;
use serde_json::{Value, json};

/// Single-hop throughput and peak RSS of a peer.
#[derive(Parser, Debug)]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
    /// Blob size.
    #[arg(long, default_value = "1GiB")]
    size: ByteSize,
    /// Measurements of each kind (alternating).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The parent sends pieces from its file with `sendfile` instead of reading them into
    /// buffers (to compare the two; alternate invocations with and without it).
    #[arg(long)]
    parent_sendfile: bool,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The child processes this benchmark runs (itself).
#[derive(Subcommand, Debug)]
enum Role {
    /// One dfget engine downloading one URL; prints a JSON line when done.
    Peer {
        url: String,
        #[arg(long)]
        supernode: String,
        #[arg(long)]
        output: PathBuf,
        /// Keep serving until stdin closes, then print a second JSON line.
        #[arg(long)]
        serve: bool,
        /// How to fetch from parents.
        #[arg(long, default_value = "tcp")]
        transport: dfget::Transport,
        /// Serve pieces with `sendfile`, not read into buffers.
        #[arg(long)]
        sendfile: bool,
    },
    /// A plain HTTP GET into a file; prints a JSON line when done.
    Http {
        url: String,
        #[arg(long)]
        output: PathBuf,
    },
    /// Only the "QUIC alone" measurement, `--runs` times (to profile or compare the
    /// transport's settings without the rest).
    Quic,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Thread names tell the processes apart in `perf report --sort comm`.
    let name = match &args.role {
        Some(Role::Peer { serve: true, .. }) => "parent-peer",
        Some(Role::Peer { serve: false, .. }) => "child-peer",
        Some(Role::Http { .. }) => "http-client",
        Some(Role::Quic) => "quic-alone",
        None => "bench",
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(name)
        .build()?;
    match args.role {
        Some(Role::Peer {
            url,
            supernode,
            output,
            serve,
            transport,
            sendfile,
        }) => runtime.block_on(peer(url, supernode, output, serve, transport, sendfile)),
        Some(Role::Http { url, output }) => runtime.block_on(http(url, output)),
        Some(Role::Quic) => runtime.block_on(async {
            for i in 0..args.runs.max(1) {
                let (secs, mtu) = quic_alone(args.size.as_u64()).await?;
                println!(
                    "run {}: QUIC alone {}/s ({mtu}-byte packets)",
                    i + 1,
                    mib(args.size.as_u64() as f64 / secs)
                );
            }
            anyhow::Ok(())
        }),
        None => runtime.block_on(bench(
            args.size.as_u64(),
            args.runs.max(1),
            args.parent_sendfile,
        )),
    }
}

async fn bench(size: u64, runs: usize, sendfile: bool) -> anyhow::Result<()> {
    println!("machine: {}", common::machine());
    println!(
        "throughput: {} from one parent (serving {}), unshaped, against plain HTTP",
        mib(size as f64),
        if sendfile {
            "with sendfile"
        } else {
            "from buffers, no sendfile"
        }
    );
    let blob = Bytes::from(damselfly_e2e::random_blob(size as usize, 0x7e57));
    let digest = Digest::of(&blob).to_string();
    let origin = Origin::start(vec![blob], 0).await?;
    let url = origin.blob_url(&digest);
    let sn = cluster::Supernode::start(0, |_| {}).await?;
    let dir = tempfile::Builder::new()
        .prefix("bench-throughput-")
        .tempdir_in(cluster::scratch_root())?;
    let has_curl = Command::new("curl").arg("--version").output().is_ok();

    // The parent: fetches from the supernode, then serves.
    let parent_out = dir.path().join("parent").to_string_lossy().into_owned();
    let sn_addr = sn.addr().to_string();
    let mut parent_args = vec![
        "peer",
        &url,
        "--supernode",
        &sn_addr,
        "--output",
        &parent_out,
        "--serve",
    ];
    if sendfile {
        parent_args.push("--sendfile");
    }
    let mut parent = Proc::spawn(&parent_args)?;
    let first = parent.line().await?;
    println!(
        "parent: fetched from the supernode in {:.2} s",
        first["elapsed"].as_f64().unwrap_or(0.0)
    );

    // Each run measures every kind once, in an order rotated by one per run, so no kind
    // always goes first (or right after another's page-cache writes).
    let mut kinds = vec![Kind::Tcp, Kind::Quic, Kind::Reqwest];
    if has_curl {
        kinds.push(Kind::Curl);
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    let mut child_rss = Vec::new();
    let mut http_rss = Vec::new();
    let mut flushes = Vec::new();
    for i in 0..runs {
        let mut fresh = Vec::new();
        let mut line = Vec::new();
        for k in 0..kinds.len() {
            let at = (k + i) % kinds.len();
            let kind = kinds[at];
            let out = dir.path().join(format!("{}-{i}", kind.name()));
            let secs = match kind {
                Kind::Tcp | Kind::Quic => {
                    let mut child = Proc::spawn(&[
                        "peer",
                        &url,
                        "--supernode",
                        &sn.addr().to_string(),
                        "--output",
                        &out.to_string_lossy(),
                        "--transport",
                        kind.name(),
                    ])?;
                    let r = child.line().await?;
                    child.wait()?;
                    let from_peers = r["from_peers"].as_u64().unwrap_or(0);
                    anyhow::ensure!(
                        from_peers == size,
                        "the child got {from_peers} of {size} bytes from its parent; the hop is not one hop"
                    );
                    println!(
                        "  {} child: first piece at {:.2} s, last at {:.2} s, done at {:.2} s \
                         (after the last piece: {:.2} s for the whole-file digest, {:.2} s to flush)",
                        kind.name(),
                        r["first_piece"].as_f64().unwrap_or(0.0),
                        r["last_piece"].as_f64().unwrap_or(0.0),
                        r["elapsed"].as_f64().unwrap_or(0.0),
                        r["digest_wait"].as_f64().unwrap_or(0.0),
                        r["commit_time"].as_f64().unwrap_or(0.0)
                    );
                    child_rss.push(r["peak_rss"].as_f64().unwrap_or(0.0));
                    // The plain clients leave their output in the page cache; so does the
                    // engine as dfdaemon runs it. The dfget CLI's final fsync is reported
                    // on its own row instead of being charged to the transfer.
                    let flush = r["commit_time"].as_f64().unwrap_or(0.0);
                    flushes.push(flush);
                    r["elapsed"].as_f64().unwrap_or(f64::INFINITY) - flush
                }
                Kind::Reqwest => {
                    let mut h = Proc::spawn(&["http", &url, "--output", &out.to_string_lossy()])?;
                    let r = h.line().await?;
                    h.wait()?;
                    http_rss.push(r["peak_rss"].as_f64().unwrap_or(0.0));
                    r["elapsed"].as_f64().unwrap_or(f64::INFINITY)
                }
                Kind::Curl => curl_get(&url, &out).await?,
            };
            rates[at].push(size as f64 / secs);
            line.push(format!("{} {}/s", kind.name(), mib(size as f64 / secs)));
            // Every download of a run writes into memory no other download of the run just
            // freed (see the module doc), so outputs are removed when the run is over.
            fresh.push(out);
        }
        for out in fresh {
            std::fs::remove_file(&out)?;
        }
        println!(
            "run {} (load {}): {}",
            i + 1,
            common::loadavg(),
            line.join(", ")
        );
    }
    parent.close_stdin();
    let last = parent.line().await?;
    parent.wait()?;
    sn.stop().await?;

    let rate_of = |kind: Kind| {
        kinds
            .iter()
            .position(|k| *k == kind)
            .map(|i| rates[i].clone())
            .unwrap_or_default()
    };
    let median = |v: &[f64]| percentile(v, 50.0);
    // The baseline is the faster plain client's median, so the ratio is the strict one.
    let http = median(&rate_of(Kind::Reqwest)).max(median(&rate_of(Kind::Curl)));
    let mut table = Table::new(["measure", "median", "min–max", "runs"]);
    for (i, kind) in kinds.iter().enumerate() {
        let v = &rates[i];
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0f64, f64::max);
        table.row([
            format!("{} (MiB/s)", kind.label()),
            format!("{:.0}", median(v) / f64::from(1u32 << 20)),
            format!(
                "{:.0}–{:.0}",
                lo / f64::from(1u32 << 20),
                hi / f64::from(1u32 << 20)
            ),
            v.iter()
                .map(|x| format!("{:.0}", x / f64::from(1u32 << 20)))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    for kind in [Kind::Tcp, Kind::Quic] {
        let v = rate_of(kind);
        let ratios: Vec<f64> = v.iter().map(|x| x / http).collect();
        table.row([
            format!("{} / plain HTTP (best median)", kind.label()),
            format!("{:.2}", median(&v) / http),
            format!(
                "{:.2}–{:.2}",
                ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratios.iter().copied().fold(0.0f64, f64::max)
            ),
            String::new(),
        ]);
    }
    table.row([
        "dfget: the output's fsync after the transfer (s, not in the rates above)".to_owned(),
        format!("{:.2}", median(&flushes)),
        format!(
            "{:.2}–{:.2}",
            flushes.iter().copied().fold(f64::INFINITY, f64::min),
            flushes.iter().copied().fold(0.0f64, f64::max)
        ),
        flushes
            .iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
    ]);
    let rss = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{:.0}", x / f64::from(1u32 << 20)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    table.row([
        "peak RSS, downloading peer (MiB, max)".to_owned(),
        format!(
            "{:.0}",
            percentile(&child_rss, 100.0) / f64::from(1u32 << 20)
        ),
        String::new(),
        rss(&child_rss),
    ]);
    table.row([
        "peak RSS, uploading parent (MiB)".to_owned(),
        format!(
            "{:.0}",
            last["peak_rss"].as_f64().unwrap_or(0.0) / f64::from(1u32 << 20)
        ),
        String::new(),
        format!("uploaded {}", mib(last["uploaded"].as_f64().unwrap_or(0.0))),
    ]);
    table.row([
        "peak RSS, plain HTTP client (MiB, max)".to_owned(),
        format!(
            "{:.0}",
            percentile(&http_rss, 100.0) / f64::from(1u32 << 20)
        ),
        String::new(),
        rss(&http_rss),
    ]);
    println!("\n{}", table.render());
    Ok(())
}

/// What one measurement of a run downloads with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Quic,
    Reqwest,
    Curl,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Quic => "quic",
            Self::Reqwest => "reqwest",
            Self::Curl => "curl",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Tcp => "dfget one hop, TCP (default)",
            Self::Quic => "dfget one hop, QUIC",
            Self::Reqwest => "plain HTTP, reqwest",
            Self::Curl => "plain HTTP, curl",
        }
    }
}

/// A child process of this executable that answers in JSON lines on stdout.
struct Proc {
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    fn spawn(args: &[&str]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("re-running this benchmark as a child")?;
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(Self { child, stdout })
    }

    /// The next JSON line (blocking read, off the async threads).
    async fn line(&mut self) -> anyhow::Result<Value> {
        let mut stdout = self.stdout.take().context("no stdout")?;
        let (stdout, line) = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let n = stdout.read_line(&mut line);
            (stdout, n.map(|_| line))
        })
        .await?;
        self.stdout = Some(stdout);
        let line = line?;
        anyhow::ensure!(!line.is_empty(), "the child exited without an answer");
        Ok(serde_json::from_str(&line)?)
    }

    fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    fn wait(&mut self) -> anyhow::Result<()> {
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "child failed: {status}");
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The transport's own ceiling: `size` bytes over one connection between two endpoints
/// configured as dfget's (`dfget::quic::endpoint`), in this process, from memory to memory,
/// in 4 MiB streams two at a time like a download from one parent. Returns the seconds and
/// the UDP payload size MTU discovery had reached by the end.
async fn quic_alone(size: u64) -> anyhow::Result<(f64, u16)> {
    const PIECE: usize = 4 << 20;
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let server = dfget::quic::endpoint(loopback)?;
    let client = dfget::quic::endpoint(loopback)?;
    let addr = server.local_addr()?;
    let serving = tokio::spawn(async move {
        let conn = server.accept().await.context("no connection")?.await?;
        let piece = Bytes::from(vec![0x5a; PIECE]);
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let piece = piece.clone();
            tokio::spawn(async move {
                let _ = recv.read_to_end(64).await;
                let _ = send.write_chunk(piece).await;
                let _ = send.finish();
            });
        }
        anyhow::Ok(())
    });
    let conn = client.connect(addr, dfget::quic::SERVER_NAME)?.await?;
    let start = Instant::now();
    let pieces = size.div_ceil(PIECE as u64);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(2));
    let mut fetches = tokio::task::JoinSet::new();
    for _ in 0..pieces {
        let permit = slots.clone().acquire_owned().await?;
        let conn = conn.clone();
        fetches.spawn(async move {
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(b"piece").await?;
            send.finish()?;
            let mut buf = vec![0u8; PIECE];
            recv.read_exact(&mut buf).await?;
            drop(permit);
            anyhow::Ok(())
        });
    }
    while let Some(r) = fetches.join_next().await {
        r??;
    }
    let secs = start.elapsed().as_secs_f64();
    let mtu = conn.stats().path.current_mtu;
    conn.close(0u32.into(), b"done");
    client.wait_idle().await;
    serving.abort();
    Ok((secs * size as f64 / (pieces * PIECE as u64) as f64, mtu))
}

/// `curl` downloads `url` into `out`; returns the seconds it took.
async fn curl_get(url: &str, out: &Path) -> anyhow::Result<f64> {
    let (url, out) = (url.to_owned(), out.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let status = Command::new("curl")
            .args(["-sS", "-f", "-o"])
            .arg(&out)
            .arg(&url)
            .status()?;
        anyhow::ensure!(status.success(), "curl failed: {status}");
        Ok(start.elapsed().as_secs_f64())
    })
    .await?
}

/// Child: one engine, one download, then (with `serve`) serving until stdin closes.
async fn peer(
    url: String,
    supernode: String,
    output: PathBuf,
    serve: bool,
    transport: dfget::Transport,
    sendfile: bool,
) -> anyhow::Result<()> {
    let config = dfget::EngineConfig {
        supernodes: vec![supernode],
        transport,
        sendfile,
        peer_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        ..dfget::EngineConfig::default()
    };
    let engine = dfget::Engine::start(config).await?;
    let req = dfget::DownloadRequest {
        url,
        headers: Vec::new(),
        digest: None,
        output,
        durable: true,
    };
    let clock = PieceClock::default();
    let report = engine.download(&req, &clock).await?;
    let (first, last) = *clock.0.lock();
    say(&json!({
        "elapsed": report.elapsed.as_secs_f64(),
        // From the start to the first and the last verified piece written; after the last
        // come the whole-file digest check and the rename.
        "first_piece": first.map(|t| t.as_secs_f64()),
        "last_piece": last.map(|t| t.as_secs_f64()),
        "digest_wait": report.digest_wait.as_secs_f64(),
        "commit_time": report.commit_time.as_secs_f64(),
        "from_peers": report.from_peers,
        "from_supernode": report.from_supernode,
        "peak_rss": peak_rss(),
    }))?;
    if serve {
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        });
        let keepalive = async {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                engine.keepalive().await;
            }
        };
        tokio::select! {
            _ = stdin_closed => {}
            () = keepalive => {}
        }
        say(&json!({
            "uploaded": engine.bytes_uploaded(),
            "peak_rss": peak_rss(),
        }))?;
    }
    engine.shutdown(Duration::from_secs(2)).await;
    Ok(())
}

/// Records when the first and the last piece were written, from its creation.
struct PieceClock(
    parking_lot::Mutex<(Option<Duration>, Option<Duration>)>,
    Instant,
);

impl Default for PieceClock {
    fn default() -> Self {
        Self(parking_lot::Mutex::new((None, None)), Instant::now())
    }
}

impl dfget::Progress for PieceClock {
    fn set_total(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn written(&self, _: std::ops::Range<u64>) {
        let now = self.1.elapsed();
        let mut t = self.0.lock();
        t.0.get_or_insert(now);
        t.1 = Some(now);
    }
}

/// Child: a plain streaming HTTP GET into a file.
async fn http(url: String, output: PathBuf) -> anyhow::Result<()> {
    let start = Instant::now();
    let resp = reqwest::get(&url).await?.error_for_status()?;
    let mut file = std::fs::File::create(&output)?;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        file.write_all(&chunk?)?;
    }
    file.flush()?;
    say(&json!({
        "elapsed": start.elapsed().as_secs_f64(),
        "peak_rss": peak_rss(),
    }))
}

fn say(v: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush()?;
    Ok(())
}
