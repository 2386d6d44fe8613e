//! `dfget`: download a URL through the Damselfly swarm.

use std::{
    io::IsTerminal,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use bytesize::ByteSize;
use clap::Parser;
use damselfly_common::Digest;
use dfget::{
    DownloadRequest, Engine, EngineConfig, Fault, NoProgress, Progress, Report, Transport,
};
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;

/// How progress is shown (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProgressKind {
    /// A bar on stderr when it is a terminal.
    Bar,
    /// JSON lines on stderr.
    Json,
}

/// Download a URL through the Damselfly swarm: pieces come from other peers and the supernode,
/// every piece is verified, and the file appears only once complete.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// The URL (e.g. a registry blob URL `http://reg:5000/v2/app/blobs/sha256:…`).
    url: String,
    /// Output file.
    #[arg(short = 'O', long = "output", value_name = "FILE")]
    output: PathBuf,
    /// Supernode `HOST:PORT` (repeatable: a download uses the one its URL hashes to, the
    /// others while that one is down). Without any, dfget fetches from the origin.
    #[arg(long, value_name = "HOST:PORT")]
    supernode: Vec<String>,
    /// Header sent to the origin, `Name: value` (repeatable), e.g. an `Authorization` token.
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    headers: Vec<String>,
    /// Expected content digest `sha256:<hex>` (taken from the URL for OCI blob URLs).
    #[arg(long, value_name = "DIGEST")]
    digest: Option<Digest>,
    /// No progress bar, even on a terminal.
    #[arg(long)]
    no_progress: bool,
    /// Print nothing but errors: no progress, no summary line, no warnings in the log.
    #[arg(short, long, conflicts_with = "progress")]
    quiet: bool,
    /// How progress is shown: `bar` (on a terminal; the default) or `json`, one line on
    /// stderr per half second and a last one when done, `{"bytes":N,"total":M}`, for scripts.
    #[arg(long, value_name = "bar|json", default_value = "bar")]
    progress: ProgressKind,
    /// Address for serving pieces to other peers, TCP and UDP (QUIC) on the same port
    /// (default: any free port).
    #[arg(long, value_name = "ADDR")]
    peer_listen: Option<SocketAddr>,
    /// How to fetch pieces from other peers: `tcp` (pipelined, cheapest per byte) or `quic`
    /// (encrypted in transit, several times the CPU per byte). Peers serve both.
    #[arg(long, value_name = "tcp|quic", default_value = "tcp")]
    transport: Transport,
    /// IP other peers use to reach this one (default: the address that routes to the supernode).
    #[arg(long, value_name = "IP")]
    advertise_ip: Option<IpAddr>,
    /// The cluster secret (the supernodes' `cluster.secret_file`): serve pieces only to
    /// peers whose piece token the supernode issued for the task, and sign calls to the
    /// supernode. Without it, anyone who reaches the peer port may fetch what this peer
    /// holds, and a supernode with a secret refuses this peer.
    #[arg(long, value_name = "FILE", env = "DAMSELFLY_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// Keep serving pieces to other peers this long after finishing.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    keep_serving: Duration,
    /// How long the supernode may stay unreachable mid-download before it is given up: the
    /// download then moves to the next supernode in the blob's placement order (keeping
    /// the pieces it holds), or to the origin when there is none.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    supernode_timeout: Duration,
    /// Fail instead of fetching from the origin when the supernode is unreachable.
    #[arg(long)]
    no_back_source: bool,
    /// Hash the whole output at the end even when the supernode vouches for the piece
    /// digests (its own copy matched the digest): for when the supernode is not trusted.
    #[arg(long)]
    check_whole_file: bool,
    /// Learn parents' pieces from the supernode's sync answers instead of from the parents'
    /// own announcements (for a mixed cluster with nodes that predate announcements).
    #[arg(long)]
    no_announcements: bool,
    /// Take piece digests from the supernode's sync answers even when it vouches for them
    /// (signs each and sends it with the piece): for a cluster with nodes that predate
    /// vouched digests.
    #[arg(long)]
    no_vouched_digests: bool,
    /// Relay a piece to other peers while it arrives (its last 64 KiB once verified), and
    /// take pieces still arriving at parents likewise, instead of only whole, verified pieces.
    #[arg(long)]
    cut_through: bool,
    /// Send pieces to other peers over TCP straight from the file with `sendfile` instead of
    /// reading them into a buffer (experimental: not faster on a loopback hop).
    #[arg(long)]
    sendfile: bool,
    /// Download bandwidth limit per second, e.g. `20MiB` (0 = unlimited).
    #[arg(long, value_name = "BYTES", default_value = "0")]
    download_rate: ByteSize,
    /// Upload bandwidth limit per second (0 = unlimited).
    #[arg(long, value_name = "BYTES", default_value = "0")]
    upload_rate: ByteSize,
    /// Concurrent uploads to other peers.
    #[arg(long, value_name = "N", default_value_t = 4)]
    upload_slots: u32,
    /// Piece requests from other peers that may wait for an upload slot before more are
    /// refused as busy.
    #[arg(long, value_name = "N", default_value_t = 32)]
    upload_queue: u32,
    /// Concurrent piece downloads.
    #[arg(long, value_name = "N", default_value_t = 8)]
    max_in_flight: usize,
    /// Further attempts of a failing origin fetch (back to source): 5xx, 429, connection
    /// errors, a body that breaks, stalls or trickles; a resumed body continues with a
    /// `Range` request. Default 4.
    #[arg(long, value_name = "N")]
    origin_retries: Option<u32>,
    /// Wait before the first origin retry, doubled for each further one (jittered).
    /// Default 250ms.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    origin_backoff_base: Option<Duration>,
    /// An origin silent this long (no answer, no body byte) is dropped and the fetch
    /// resumed. Default 5s.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    origin_stall_timeout: Option<Duration>,
    /// Slowest accepted origin rate per second over each stall window; below it the fetch is
    /// resumed on a new connection (0 = only silence counts). Default 16KiB.
    #[arg(long, value_name = "BYTES")]
    origin_min_rate: Option<ByteSize>,
    /// Write a JSON report (bytes by source, time) to this file.
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,
    /// Test only: corrupt every piece served to other peers.
    #[arg(long, hide = true)]
    fault_corrupt_uploads: bool,
    /// Test only: claim pieces (report them to the supernode) but tell every peer that
    /// asks for one that it is not held.
    #[arg(long, hide = true, conflicts_with = "fault_corrupt_uploads")]
    fault_deny_uploads: bool,
}

fn parse_header(h: &str) -> Result<(String, String), String> {
    let (name, value) = h
        .split_once(':')
        .ok_or_else(|| format!("header {h:?} is not `Name: value`"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("header {h:?} has no name"));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `--quiet`: errors only (RUST_LOG still overrides).
    damselfly_common::telemetry::init(if cli.quiet { "error" } else { "warn" });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dfget: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dfget: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let headers = cli
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let (token_key, control_key) = match &cli.cluster_secret_file {
        Some(path) => (
            Some(damselfly_common::TokenKey::from_file(path)?),
            damselfly_common::ControlKey::from_setting(path)?,
        ),
        None => {
            tracing::info!(
                "no --cluster-secret-file: piece tokens are not checked (anyone who reaches \
                 the peer port may fetch what this peer holds), and calls to the supernode \
                 are not signed (a supernode with a cluster secret refuses them)"
            );
            (None, None)
        }
    };
    let mut config = EngineConfig {
        token_key,
        control_key,
        supernodes: cli.supernode.clone(),
        peer_listen: cli.peer_listen,
        advertise_ip: cli.advertise_ip,
        back_source: !cli.no_back_source,
        check_whole_file: cli.check_whole_file,
        announcements: !cli.no_announcements,
        vouched_digests: !cli.no_vouched_digests,
        cut_through: cli.cut_through,
        download_rate: cli.download_rate.as_u64(),
        upload_rate: cli.upload_rate.as_u64(),
        upload_slots: cli.upload_slots,
        upload_queue: cli.upload_queue,
        sendfile: cli.sendfile,
        transport: cli.transport,
        supernode_timeout: cli.supernode_timeout,
        fault: if cli.fault_corrupt_uploads {
            Fault::CorruptUploads
        } else if cli.fault_deny_uploads {
            Fault::DenyUploads
        } else {
            Fault::None
        },
        ..EngineConfig::default()
    };
    config.picker.max_in_flight = cli.max_in_flight.max(1);
    // The URL is this command's user's own choice, so a file server on this host is fine;
    // link-local and metadata addresses stay refused. (dfdaemon and the supernode, which
    // fetch what others name, refuse loopback too unless configured.)
    config.origin.addresses.allow_loopback = true;
    let retry = &mut config.origin.retry;
    retry.retries = cli.origin_retries.unwrap_or(retry.retries);
    retry.backoff_base = cli.origin_backoff_base.unwrap_or(retry.backoff_base);
    retry.backoff_cap = retry.backoff_cap.max(retry.backoff_base);
    retry.stall_timeout = cli.origin_stall_timeout.unwrap_or(retry.stall_timeout);
    retry.min_rate = cli.origin_min_rate.unwrap_or(retry.min_rate);
    let engine = Engine::start(config).await?;
    let request = DownloadRequest {
        url: cli.url.clone(),
        headers,
        digest: cli.digest,
        output: cli.output.clone(),
        durable: true,
    };
    let shown = !cli.quiet && !cli.no_progress;
    let bar = (shown && cli.progress == ProgressKind::Bar && std::io::stderr().is_terminal())
        .then(Bar::new);
    let json = (shown && cli.progress == ProgressKind::Json).then(JsonProgress::default);
    let progress: &dyn Progress = match (&bar, &json) {
        (Some(b), _) => b,
        (None, Some(j)) => j,
        (None, None) => &NoProgress,
    };
    let result = engine.download(&request, progress).await;
    if let Some(b) = &bar {
        b.0.finish_and_clear();
    }
    if let (Some(j), Ok(_)) = (&json, &result) {
        j.print(true);
    }
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            engine.shutdown(Duration::from_secs(1)).await;
            return Err(e.into());
        }
    };
    if !cli.quiet {
        summarise(&cli, &report);
    }
    if let Some(path) = &cli.report_json {
        let mut report = serde_json::to_value(&report)?;
        report["uploaded"] = engine.bytes_uploaded().into();
        report["relayed_while_arriving"] = engine.relayed_pieces().into();
        report["peer_id"] = engine.peer_id().into();
        // Whole or absent: scripts poll for this file while the peer keeps serving.
        damselfly_common::disk::write_replacing(path, &serde_json::to_vec_pretty(&report)?)?;
    }
    if !cli.keep_serving.is_zero() && !cli.supernode.is_empty() {
        engine.linger(cli.keep_serving).await;
    }
    engine.shutdown(Duration::from_secs(2)).await;
    Ok(())
}

fn summarise(cli: &Cli, r: &Report) {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let mut line = format!(
        "dfget: {} ({}) in {:.2}s ({}/s): peers {}, supernode {}, origin {}",
        cli.output.display(),
        ByteSize::b(r.bytes),
        secs,
        ByteSize::b((r.bytes as f64 / secs) as u64),
        ByteSize::b(r.from_peers),
        ByteSize::b(r.from_supernode),
        ByteSize::b(r.from_origin),
    );
    if let Some(why) = &r.back_source {
        line.push_str(&format!(" [back to source: {why}]"));
    }
    if r.supernode_takeovers > 0 {
        line.push_str(&format!(
            " [supernode lost; taken over {} time(s)]",
            r.supernode_takeovers
        ));
    }
    if r.corrupt_pieces > 0 {
        line.push_str(&format!(
            " [{} corrupt pieces from {} peers rejected]",
            r.corrupt_pieces,
            r.liars.len()
        ));
    }
    eprintln!("{line}");
}

struct Bar(ProgressBar);

impl Bar {
    fn new() -> Self {
        let bar = ProgressBar::new(0);
        if let Ok(style) = ProgressStyle::with_template(
            "{bar:40.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style);
        }
        Self(bar)
    }
}

/// `--progress json`: `{"bytes":N,"total":M}` lines on stderr, at most one per
/// [`JsonProgress::EVERY`], and the last one when the download is done.
#[derive(Default)]
struct JsonProgress {
    /// Bytes verified, total (0 until known), when the last line was printed.
    state: Mutex<(u64, u64, Option<std::time::Instant>)>,
}

impl JsonProgress {
    const EVERY: Duration = Duration::from_millis(500);

    fn print(&self, force: bool) {
        let mut s = self.state.lock();
        let now = std::time::Instant::now();
        if !force && s.2.is_some_and(|t| now.duration_since(t) < Self::EVERY) {
            return;
        }
        s.2 = Some(now);
        eprintln!("{}", serde_json::json!({ "bytes": s.0, "total": s.1 }));
    }
}

impl Progress for JsonProgress {
    fn set_total(&self, bytes: u64) {
        self.state.lock().1 = bytes;
    }
    fn advance(&self, bytes: u64) {
        self.state.lock().0 += bytes;
        self.print(false);
    }
    fn started(&self, _file: &std::sync::Arc<std::fs::File>, total: u64) {
        // A new file (back to the origin after the swarm failed): bytes start over.
        let mut s = self.state.lock();
        s.0 = 0;
        s.1 = total;
    }
}

impl Progress for Bar {
    fn set_total(&self, bytes: u64) {
        self.0.set_length(bytes);
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}
