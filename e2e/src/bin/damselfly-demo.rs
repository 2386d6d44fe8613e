//! The README's main job: a real registry holding a sample image, one supernode, and N nodes
//! (each a `dfdaemon` registry mirror and a real containerd) that all pull the image with
//! `ctr image pull` at the same time through their dfdaemon, then run it. Then the same nodes
//! forget the image (image, content and snapshots) and pull it again at once straight from the
//! registry, without Damselfly. The report says where every node's bytes came from (peers, the
//! supernode, the registry directly), how much the registry sent on each path, and both paths'
//! pull times side by side.
//!
//! `damselfly-demo [--nodes N] [--random-mib M] [--rounds R]` (must run as root: containerd
//! mounts snapshots and runs containers).

use std::{
    path::Path,
    process::{Command, ExitCode, Output},
    sync::Barrier,
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};
use damselfly_e2e::{
    Containerd, Dfdaemon, Supernode, TestImage, TestRegistry, describe_output, write_hosts_toml,
};

const HELLO: &str = "hello from the Damselfly demo";
const REPO: &str = "demo/app";
const TAG: &str = "1";
const SEED: u64 = 2024;
const USAGE: &str = "damselfly-demo [--nodes N] [--random-mib M] [--rounds R]

Pulls a sample image (busybox, a hello file and M MiB of random data) through real containerd on
N nodes at once, each pulling via its own dfdaemon mirror, runs it on every node, and reports
where the bytes came from. Then the same nodes forget the image and pull it again at once
directly from the registry, without Damselfly, and both pull times are printed side by side.
Must run as root.

  --nodes N        number of nodes (default 4; --peers is an alias)
  --random-mib M   size of the image's random layer in MiB (default 64)
  --rounds R       pull R times each way (default 1); rounds alternate which path goes first,
                   and every Damselfly pull starts with a fresh supernode and dfdaemons (empty
                   caches)";

/// Why the pull times here favour the direct path; printed beside them and said in the README.
const LOOPBACK_NOTE: &str = "note: every node here is on this one machine and talks over \
loopback, so nothing limits the registry's bandwidth and the direct pull is expected to be as \
fast or faster; what Damselfly saves here is the registry's bytes, not time.";

struct Args {
    nodes: usize,
    random_mib: usize,
    rounds: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        nodes: 4,
        random_mib: 64,
        rounds: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--nodes" | "--peers" => {
                args.nodes = it
                    .next()
                    .context("--nodes N")?
                    .parse()
                    .context("--nodes N")?;
            }
            "--random-mib" => {
                args.random_mib = it
                    .next()
                    .context("--random-mib M")?
                    .parse()
                    .context("--random-mib M")?;
            }
            "--rounds" => {
                args.rounds = it
                    .next()
                    .context("--rounds R")?
                    .parse()
                    .context("--rounds R")?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    if args.nodes == 0 {
        bail!("need at least one node");
    }
    if args.rounds == 0 {
        bail!("need at least one round");
    }
    Ok(args)
}

/// How a pull reaches the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Through the node's dfdaemon mirror (the registry as the fallback).
    Damselfly,
    /// Straight from the registry.
    Direct,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Self::Damselfly => "Damselfly",
            Self::Direct => "direct",
        }
    }

    /// The order of round `round` (0-based): Damselfly first in even rounds, so neither path
    /// always has the other's after-effects (warm page cache, a busier machine) before it.
    fn order(round: usize) -> [Self; 2] {
        if round.is_multiple_of(2) {
            [Self::Damselfly, Self::Direct]
        } else {
            [Self::Direct, Self::Damselfly]
        }
    }
}

/// One node: its container runtime, and the hosts dir that sends it straight to the registry.
/// Its dfdaemon lives in a [`Swarm`], fresh for every Damselfly pull.
struct Node {
    name: String,
    containerd: Containerd,
    direct_hosts: tempfile::TempDir,
}

/// Damselfly's side of the nodes: a supernode and one dfdaemon per node, with the hosts dir
/// that points that node's containerd at its dfdaemon first.
struct Swarm {
    supernode: Supernode,
    dfdaemons: Vec<Dfdaemon>,
    hosts: Vec<tempfile::TempDir>,
}

/// What happened on one node in one pull.
struct NodeResult {
    pull_secs: f64,
    pull: Result<Output>,
    run: Option<Result<Output>>,
}

impl NodeResult {
    fn pull_ok(&self) -> bool {
        self.pull.as_ref().is_ok_and(|o| o.status.success())
    }

    fn run_ok(&self) -> bool {
        matches!(&self.run, Some(Ok(o)) if o.status.success() && o.stdout == HELLO.as_bytes())
    }

    fn ok(&self) -> bool {
        self.pull_ok() && self.run_ok()
    }
}

/// Where one node's dfdaemon got the bytes of one Damselfly pull, from its metrics.
struct Sources {
    peers: u64,
    supernode: u64,
    origin: u64,
    fallbacks: u64,
}

/// One pull of the image by every node at once, along one route.
struct Phase {
    /// 1-based.
    round: usize,
    route: Route,
    /// Went first in its round.
    first: bool,
    results: Vec<NodeResult>,
    /// Body bytes of the image's blobs the registry sent during this pull.
    registry_sent: u64,
    /// Successful GETs of each blob (config, layers) during this pull.
    gets: Vec<usize>,
    /// Damselfly only: one per node.
    sources: Vec<Sources>,
    /// Damselfly only: what the supernode fetched from the registry.
    supernode_origin: Option<u64>,
    /// Damselfly only: the dfdaemon log tail of every node whose pull or run failed.
    dfdaemon_logs: Vec<Option<String>>,
}

impl Phase {
    fn pull_secs(&self) -> Vec<f64> {
        self.results.iter().map(|r| r.pull_secs).collect()
    }

    fn label(&self) -> String {
        format!("{} pull, round {}", self.route.name(), self.round)
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1u32 << 20)
}

/// The median (mean of the two middle values for an even count); 0 for none.
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => f64::midpoint(v[n / 2 - 1], v[n / 2]),
    }
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    // The owner of /proc/self is the process's effective uid.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `N CPUs, ARCH` as `nproc` and `uname -m` say.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let arch = Command::new("uname")
        .arg("-m")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || std::env::consts::ARCH.to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        );
    format!("{cpus} CPUs, {arch}")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn bytes_from(d: &Dfdaemon, source: &str) -> Result<u64> {
    let v = d.metric(
        "damselfly_dfdaemon_blob_bytes_total",
        Some(&format!("source=\"{source}\"")),
    )?;
    Ok(v as u64)
}

fn start_node(i: usize, registry: &TestRegistry) -> Result<Node> {
    let name = format!("node-{i}");
    let containerd =
        Containerd::start().with_context(|| format!("{name}: cannot start containerd"))?;
    let direct_hosts = tempfile::tempdir()?;
    // No mirror: only `server`, the registry itself.
    write_hosts_toml(
        direct_hosts.path(),
        &registry.host(),
        "",
        Some(&registry.url()),
    )?;
    Ok(Node {
        name,
        containerd,
        direct_hosts,
    })
}

/// A fresh supernode and one fresh dfdaemon per node, each with an empty cache.
fn start_swarm(nodes: &[Node], registry: &TestRegistry) -> Result<Swarm> {
    let supernode = Supernode::builder()
        .try_start()
        .context("cannot start the supernode")?;
    let started: Vec<(Dfdaemon, tempfile::TempDir)> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|node| {
                let supernode = &supernode;
                s.spawn(move || -> Result<(Dfdaemon, tempfile::TempDir)> {
                    let dfdaemon = Dfdaemon::builder()
                        .name(&node.name)
                        .supernode(supernode.addr())
                        .try_start()
                        .with_context(|| format!("{}: cannot start dfdaemon", node.name))?;
                    let hosts = tempfile::tempdir()?;
                    write_hosts_toml(
                        hosts.path(),
                        &registry.host(),
                        &dfdaemon.url(),
                        Some(&registry.url()),
                    )?;
                    Ok((dfdaemon, hosts))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("dfdaemon start panicked"))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let (dfdaemons, hosts) = started.into_iter().unzip();
    Ok(Swarm {
        supernode,
        dfdaemons,
        hosts,
    })
}

/// Makes `node` forget the image completely, so that its next pull fetches every blob from
/// wherever its hosts dir says and unpacks every layer again: removes the image (containerd's
/// garbage collector then drops its content and snapshots), removes any of the image's blobs
/// still in the content store, and checks that no snapshot is left.
fn forget_image(node: &Node, reference: &str, digests: &[String]) -> Result<()> {
    let c = &node.containerd;
    c.remove_image(reference)
        .with_context(|| format!("{}: cannot remove {reference}", node.name))?;
    let left = |c: &Containerd| -> Result<Vec<String>> {
        Ok(c.content_digests()?
            .into_iter()
            .filter(|d| digests.contains(d))
            .collect())
    };
    let still = left(c)?;
    if !still.is_empty() {
        let mut args = vec!["content", "rm"];
        args.extend(still.iter().map(String::as_str));
        c.ctr_ok(&args)?;
        let still = left(c)?;
        ensure!(
            still.is_empty(),
            "{}: blobs {still:?} are still in containerd's content store",
            node.name
        );
    }
    let snapshots = c.ctr_ok(&["snapshots", "--snapshotter", c.snapshotter(), "ls"])?;
    let snapshots: Vec<&str> = snapshots
        .lines()
        .skip(1) // the header
        .filter(|l| !l.trim().is_empty())
        .collect();
    ensure!(
        snapshots.is_empty(),
        "{}: snapshots left after removing {reference}, the next pull would not unpack them \
         again: {snapshots:?}",
        node.name
    );
    Ok(())
}

fn pull_and_run(node: &Node, hosts: &Path, reference: &str, start: &Barrier) -> NodeResult {
    start.wait();
    let t0 = Instant::now();
    let pull = node.containerd.pull(reference, hosts);
    let pull_secs = t0.elapsed().as_secs_f64();
    let mut result = NodeResult {
        pull_secs,
        pull,
        run: None,
    };
    if result.pull_ok() {
        // Container ids must differ between nodes: every containerd here shares the host's
        // runc state directory and the harness's namespace.
        let id = format!("demo-{}", node.name);
        result.run = Some(node.containerd.run(reference, &id, &[]));
    }
    result
}

/// Every node pulls `reference` at once (each with its hosts dir), then runs it.
fn pull_everywhere(nodes: &[Node], hosts: &[&Path], reference: &str) -> Vec<NodeResult> {
    let barrier = Barrier::new(nodes.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .zip(hosts)
            .map(|(node, hosts)| {
                let barrier = &barrier;
                s.spawn(move || pull_and_run(node, hosts, reference, barrier))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("a node thread panicked"))
            })
            .collect()
    })
}

/// Bytes and successful GETs per blob the registry served after the first `since` entries
/// of its access log.
fn registry_usage(
    registry: &TestRegistry,
    since: usize,
    blobs: &[(String, u64)],
) -> (u64, Vec<usize>) {
    let log = registry.access_log();
    let new = log.get(since..).unwrap_or_default();
    let mut sent = 0;
    let mut gets = Vec::with_capacity(blobs.len());
    for (digest, _) in blobs {
        let served: Vec<_> = new
            .iter()
            .filter(|e| e.method == "GET" && e.is_success() && e.is_blob(digest))
            .collect();
        sent += served.iter().map(|e| e.bytes).sum::<u64>();
        gets.push(served.len());
    }
    (sent, gets)
}

/// Pulls along `route` on every node at once and accounts for it.
fn run_phase(
    round: usize,
    route: Route,
    first: bool,
    nodes: &[Node],
    registry: &TestRegistry,
    reference: &str,
    blobs: &[(String, u64)],
) -> Result<Phase> {
    let n = nodes.len();
    let swarm = match route {
        Route::Damselfly => {
            let swarm = start_swarm(nodes, registry)?;
            if round == 1 {
                println!("   supernode on {}", swarm.supernode.addr());
                for (node, d) in nodes.iter().zip(&swarm.dfdaemons) {
                    println!(
                        "   {}: dfdaemon {} + containerd ({})",
                        node.name,
                        d.url(),
                        node.containerd.snapshotter(),
                    );
                }
                println!(
                    "   each node's hosts.toml: {} -> its dfdaemon first, then {}",
                    registry.host(),
                    registry.url()
                );
            } else {
                println!("   a fresh supernode and {n} fresh dfdaemons (empty caches)");
            }
            Some(swarm)
        }
        Route::Direct => {
            println!(
                "   each node's hosts.toml: {} -> {} only",
                registry.host(),
                registry.url()
            );
            None
        }
    };
    let hosts: Vec<&Path> = match &swarm {
        Some(swarm) => swarm.hosts.iter().map(tempfile::TempDir::path).collect(),
        None => nodes.iter().map(|n| n.direct_hosts.path()).collect(),
    };
    let since = registry.access_log().len();
    let results = pull_everywhere(nodes, &hosts, reference);
    let (registry_sent, gets) = registry_usage(registry, since, blobs);
    let mut phase = Phase {
        round,
        route,
        first,
        results,
        registry_sent,
        gets,
        sources: Vec::new(),
        supernode_origin: None,
        dfdaemon_logs: Vec::new(),
    };
    if let Some(swarm) = &swarm {
        for (d, r) in swarm.dfdaemons.iter().zip(&phase.results) {
            phase.sources.push(Sources {
                peers: bytes_from(d, "peer")?,
                supernode: bytes_from(d, "supernode")?,
                origin: bytes_from(d, "origin")?,
                fallbacks: d.metric("damselfly_dfdaemon_p2p_fallbacks_total", None)? as u64,
            });
            phase
                .dfdaemon_logs
                .push((!r.ok()).then(|| tail(&d.log_text(), 30)));
        }
        phase.supernode_origin = swarm
            .supernode
            .metric("damselfly_supernode_origin_bytes_total")
            .ok()
            .map(|v| v as u64);
    }
    println!(
        "   done: pulls took {:.2}s (median) / {:.2}s (slowest); the registry sent {:.1} MiB",
        median(&phase.pull_secs()),
        max(&phase.pull_secs()),
        mib(phase.registry_sent)
    );
    Ok(phase)
}

fn main() -> ExitCode {
    match demo() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("damselfly-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the demo; `Ok(false)` if it ran but something failed (already reported).
#[allow(clippy::too_many_lines)]
fn demo() -> Result<bool> {
    let args = parse_args()?;
    if !is_root() {
        bail!(
            "this demo runs real containerd (it mounts snapshots and runs containers), so it must \
             run as root: sudo scripts/demo.sh"
        );
    }
    let started = Instant::now();
    println!("== machine: {}", machine());

    println!("== starting a local docker-registry");
    let registry = TestRegistry::builder()
        .try_start()
        .context("cannot start docker-registry")?;
    let image = TestImage::busybox(HELLO, args.random_mib << 20, SEED)?;
    let pushed = registry.push_test_image(REPO, TAG, &image)?;
    let image_bytes = image.size() as u64;
    let mut blobs: Vec<(String, u64)> =
        vec![(pushed.config_digest.clone(), image.config.len() as u64)];
    blobs.extend(
        pushed
            .layer_digests
            .iter()
            .cloned()
            .zip(image.layers.iter().map(|l| l.len() as u64)),
    );
    // Everything a node must forget between pulls.
    let mut digests: Vec<String> = blobs.iter().map(|(d, _)| d.clone()).collect();
    digests.push(pushed.manifest_digest.clone());
    let reference = format!("{}/{REPO}:{TAG}", registry.host());
    println!(
        "   pushed {reference} (busybox + hello + {} MiB random: config and {} gzip layers, {:.1} MiB)",
        args.random_mib,
        image.layers.len(),
        mib(image_bytes)
    );

    println!("== starting {} nodes, each a containerd", args.nodes);
    let nodes: Vec<Node> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.nodes)
            .map(|i| {
                let registry = &registry;
                s.spawn(move || start_node(i, registry))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("node start panicked")))
            .collect::<Result<Vec<_>>>()
    })?;

    let mut phases: Vec<Phase> = Vec::new();
    for round in 0..args.rounds {
        for (i, route) in Route::order(round).into_iter().enumerate() {
            if !phases.is_empty() {
                println!(
                    "== every node removes the image (image, content and snapshots), so that the \
                     next pull fetches and unpacks all of it again"
                );
                for node in &nodes {
                    forget_image(node, &reference, &digests)?;
                }
            }
            match route {
                Route::Damselfly => println!(
                    "== round {}: all {} nodes run `ctr image pull {reference}` at once through \
                     their dfdaemon, then `ctr run` it",
                    round + 1,
                    args.nodes
                ),
                Route::Direct => println!(
                    "== round {}: all {} nodes pull it at once directly from the registry, \
                     without Damselfly, then run it",
                    round + 1,
                    args.nodes
                ),
            }
            phases.push(run_phase(
                round + 1,
                route,
                i == 0,
                &nodes,
                &registry,
                &reference,
                &blobs,
            )?);
        }
    }

    let n = args.nodes as u64;
    let ratio = |b: u64| b as f64 / image_bytes.max(1) as f64;
    let (main, direct1) = {
        let of = |route| {
            phases
                .iter()
                .find(|p| p.route == route)
                .context("no pull along a route")
        };
        (of(Route::Damselfly)?, of(Route::Direct)?)
    };

    // Where the bytes of the first Damselfly pull came from.
    println!();
    println!(
        "node     pull(s)  direct(s)  from peers(MiB)  from supernode(MiB)  from origin(MiB)  run"
    );
    for (((node, r), s), d) in nodes
        .iter()
        .zip(&main.results)
        .zip(&main.sources)
        .zip(&direct1.results)
    {
        let direct = if d.ok() {
            format!("{:.2}", d.pull_secs)
        } else {
            "FAILED".to_owned()
        };
        let run = if !r.pull_ok() {
            "pull FAILED"
        } else if r.run_ok() {
            "OK"
        } else {
            "FAILED"
        };
        println!(
            "{:<8} {:>7.2}  {direct:>9}  {:>15.1}  {:>19.1}  {:>16.1}  {run}",
            node.name,
            r.pull_secs,
            mib(s.peers),
            mib(s.supernode),
            mib(s.origin),
        );
    }
    let peers: u64 = main.sources.iter().map(|s| s.peers).sum();
    let snb: u64 = main.sources.iter().map(|s| s.supernode).sum();
    let from_origin: u64 = main.sources.iter().map(|s| s.origin).sum();
    let fallbacks: u64 = main.sources.iter().map(|s| s.fallbacks).sum();
    let delivered = peers + snb + from_origin;
    let pct = |b: u64| 100.0 * b as f64 / delivered.max(1) as f64;

    println!();
    println!(
        "image               {:.1} MiB ({} blobs: config + {} layers)",
        mib(image_bytes),
        blobs.len(),
        image.layers.len()
    );
    println!(
        "nodes got           {:.1} MiB, all pulls done in {:.2}s: {:.1}% from peers, \
         {:.1}% from the supernode, {:.1}% from the registry directly",
        mib(delivered),
        max(&main.pull_secs()),
        pct(peers),
        pct(snb),
        pct(from_origin)
    );
    println!(
        "registry sent       {:.1} MiB = {:.2}x the image (GETs per blob: {:?})",
        mib(main.registry_sent),
        ratio(main.registry_sent),
        main.gets
    );
    if let Some(origin) = main.supernode_origin {
        println!(
            "supernode fetched   {:.1} MiB = {:.2}x the image from the registry",
            mib(origin),
            ratio(origin)
        );
    }
    println!(
        "without Damselfly   {:.1} MiB = {:.2}x the image, measured when the same {n} nodes \
         pulled directly (GETs per blob: {:?})",
        mib(direct1.registry_sent),
        ratio(direct1.registry_sent),
        direct1.gets,
    );
    if fallbacks > 0 {
        println!("p2p fallbacks       {fallbacks} blob(s) went to the registry directly");
    }

    // Both paths side by side.
    println!();
    println!("pull times, all {n} nodes at once (per node: `ctr image pull`, fetch and unpack)");
    println!(
        "round  path       order  pull p50(s)  pull max(s)  registry sent(MiB)  / image  GETs per blob"
    );
    for p in &phases {
        let failed = p.results.iter().filter(|r| !r.ok()).count();
        let failed = if failed > 0 {
            format!("  ({failed} of {n} nodes FAILED)")
        } else {
            String::new()
        };
        println!(
            "{:<5}  {:<9}  {:<5}  {:>11.2}  {:>11.2}  {:>18.1}  {:>7.2}  {:?}{failed}",
            p.round,
            p.route.name(),
            if p.first { "1st" } else { "2nd" },
            median(&p.pull_secs()),
            max(&p.pull_secs()),
            mib(p.registry_sent),
            ratio(p.registry_sent),
            p.gets
        );
    }
    // Over every round: the median and the slowest of all pulls along a route, and the mean of
    // the registry's bytes per round.
    let pooled = |route: Route| {
        let along: Vec<&Phase> = phases.iter().filter(|p| p.route == route).collect();
        let secs: Vec<f64> = along.iter().flat_map(|p| p.pull_secs()).collect();
        let sent = along.iter().map(|p| p.registry_sent).sum::<u64>() / along.len().max(1) as u64;
        (median(&secs), max(&secs), sent)
    };
    let (d50, dmax, dsent) = pooled(Route::Damselfly);
    let (x50, xmax, xsent) = pooled(Route::Direct);
    if args.rounds > 1 {
        for (route, p50, pmax, sent) in [
            (Route::Damselfly, d50, dmax, dsent),
            (Route::Direct, x50, xmax, xsent),
        ] {
            println!(
                "{:<5}  {:<9}  {:<5}  {:>11.2}  {:>11.2}  {:>18.1}  {:>7.2}",
                "all",
                route.name(),
                "",
                p50,
                pmax,
                mib(sent),
                ratio(sent),
            );
        }
    }
    let times = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}x", a / b)
        } else {
            "n/a".to_owned()
        }
    };
    println!(
        "Damselfly/direct: pull p50 {}, pull max {} (above 1x: Damselfly slower), registry \
         bytes {}",
        times(d50, x50),
        times(dmax, xmax),
        times(dsent as f64, xsent as f64)
    );
    println!("{LOOPBACK_NOTE}");
    println!(
        "total time          {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // Failures, loudly.
    let mut ok = true;
    for p in &phases {
        for (i, (node, r)) in nodes.iter().zip(&p.results).enumerate() {
            let what = p.label();
            match (&r.pull, &r.run) {
                (Err(e), _) => {
                    eprintln!(
                        "\n!! {} ({what}): ctr image pull did not complete: {e:#}",
                        node.name
                    );
                }
                (Ok(o), _) if !o.status.success() => {
                    eprintln!(
                        "\n!! {} ({what}): ctr image pull failed: {}",
                        node.name,
                        describe_output(o)
                    );
                }
                (_, Some(Err(e))) => {
                    eprintln!(
                        "\n!! {} ({what}): ctr run did not complete: {e:#}",
                        node.name
                    );
                }
                (_, Some(Ok(o))) if !r.run_ok() => {
                    eprintln!(
                        "\n!! {} ({what}): ctr run did not print {HELLO:?}: {}",
                        node.name,
                        describe_output(o)
                    );
                }
                _ => continue,
            }
            ok = false;
            if let Some(Some(log)) = p.dfdaemon_logs.get(i) {
                eprintln!("---- {} dfdaemon log (tail) ----\n{log}", node.name);
            }
        }
        match p.route {
            Route::Damselfly if p.gets.iter().any(|&g| g > 1) => {
                ok = false;
                eprintln!(
                    "\n!! {}: the registry served some blob more than once: GETs per blob {:?}",
                    p.label(),
                    p.gets
                );
            }
            Route::Direct if p.gets.iter().any(|&g| g < nodes.len()) => {
                ok = false;
                eprintln!(
                    "\n!! {}: the registry did not serve every blob to every node (GETs per \
                     blob {:?}), so some node did not fetch the image again and its time is \
                     not a pull's",
                    p.label(),
                    p.gets
                );
            }
            _ => {}
        }
    }
    if ok {
        println!(
            "\nOK: {n} node{} pulled and ran {reference} through Damselfly and directly; through \
             Damselfly the registry sent every blob once.",
            if n == 1 { "" } else { "s" }
        );
    } else {
        eprintln!("\nFAILED (see above)");
    }
    Ok(ok)
}
