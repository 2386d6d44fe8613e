//! The README's main job: a real registry holding a sample image, one supernode, and N nodes
//! (each a `dfdaemon` registry mirror and a real containerd) that all pull the image with
//! `ctr image pull` at the same time through their dfdaemon, then run it. The report says where
//! every node's bytes came from (peers, the supernode, the registry directly) and how much the
//! registry sent compared with N plain pulls.
//!
//! `damselfly-demo [--nodes N] [--random-mib M]` (must run as root: containerd mounts
//! snapshots and runs containers).

use std::{
    process::{Command, ExitCode, Output},
    sync::Barrier,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use damselfly_e2e::{
    Containerd, Dfdaemon, Supernode, TestImage, TestRegistry, describe_output, write_hosts_toml,
};

const HELLO: &str = "hello from the Damselfly demo";
const REPO: &str = "demo/app";
const TAG: &str = "1";
const SEED: u64 = 2024;
const USAGE: &str = "damselfly-demo [--nodes N] [--random-mib M]

Pulls a sample image (busybox, a hello file and M MiB of random data) through real containerd on
N nodes at once, each pulling via its own dfdaemon mirror, runs it on every node, and reports
where the bytes came from. Must run as root.

  --nodes N        number of nodes (default 4; --peers is an alias)
  --random-mib M   size of the image's random layer in MiB (default 64)";

struct Args {
    nodes: usize,
    random_mib: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        nodes: 4,
        random_mib: 64,
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
    Ok(args)
}

/// One node: its mirror, its container runtime and the hosts dir that joins them.
struct Node {
    name: String,
    dfdaemon: Dfdaemon,
    containerd: Containerd,
    hosts: tempfile::TempDir,
}

/// What happened on one node.
struct NodeResult {
    pull_secs: f64,
    pull: Result<Output>,
    run: Option<Result<Output>>,
    from_peers: u64,
    from_supernode: u64,
    from_origin: u64,
    fallbacks: u64,
}

impl NodeResult {
    fn pull_ok(&self) -> bool {
        self.pull.as_ref().is_ok_and(|o| o.status.success())
    }

    fn run_ok(&self) -> bool {
        matches!(&self.run, Some(Ok(o)) if o.status.success() && o.stdout == HELLO.as_bytes())
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1u32 << 20)
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

fn start_node(i: usize, supernode: &Supernode, registry: &TestRegistry) -> Result<Node> {
    let name = format!("node-{i}");
    let dfdaemon = Dfdaemon::builder()
        .name(&name)
        .supernode(supernode.addr())
        .try_start()
        .with_context(|| format!("{name}: cannot start dfdaemon"))?;
    let containerd =
        Containerd::start().with_context(|| format!("{name}: cannot start containerd"))?;
    let hosts = tempfile::tempdir()?;
    write_hosts_toml(
        hosts.path(),
        &registry.host(),
        &dfdaemon.url(),
        Some(&registry.url()),
    )?;
    Ok(Node {
        name,
        dfdaemon,
        containerd,
        hosts,
    })
}

fn pull_and_run(node: &Node, reference: &str, start: &Barrier) -> NodeResult {
    start.wait();
    let t0 = Instant::now();
    let pull = node.containerd.pull(reference, node.hosts.path());
    let pull_secs = t0.elapsed().as_secs_f64();
    let mut result = NodeResult {
        pull_secs,
        pull,
        run: None,
        from_peers: 0,
        from_supernode: 0,
        from_origin: 0,
        fallbacks: 0,
    };
    if result.pull_ok() {
        // Container ids must differ between nodes: every containerd here shares the host's
        // runc state directory and the harness's namespace.
        let id = format!("demo-{}", node.name);
        result.run = Some(node.containerd.run(reference, &id, &[]));
    }
    result
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
    let reference = format!("{}/{REPO}:{TAG}", registry.host());
    println!(
        "   pushed {reference} (busybox + hello + {} MiB random: config and {} gzip layers, {:.1} MiB)",
        args.random_mib,
        image.layers.len(),
        mib(image_bytes)
    );

    println!("== starting the supernode");
    let supernode = Supernode::builder()
        .try_start()
        .context("cannot start the supernode")?;
    println!("   supernode on {}", supernode.addr());

    println!(
        "== starting {} nodes, each a dfdaemon mirror and a containerd",
        args.nodes
    );
    let nodes: Vec<Node> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.nodes)
            .map(|i| {
                let (supernode, registry) = (&supernode, &registry);
                s.spawn(move || start_node(i, supernode, registry))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("node start panicked")))
            .collect::<Result<Vec<_>>>()
    })?;
    for node in &nodes {
        println!(
            "   {}: dfdaemon {} + containerd ({})",
            node.name,
            node.dfdaemon.url(),
            node.containerd.snapshotter(),
        );
    }
    println!(
        "   each node's hosts.toml: {} -> its dfdaemon first, then {}",
        registry.host(),
        registry.url()
    );

    println!(
        "== all {} nodes run `ctr image pull {reference}` at once, then `ctr run` it",
        args.nodes
    );
    let barrier = Barrier::new(nodes.len());
    let mut results: Vec<NodeResult> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|node| {
                let (reference, barrier) = (&reference, &barrier);
                s.spawn(move || pull_and_run(node, reference, barrier))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("a node thread panicked"))
            })
            .collect()
    });
    let slowest_pull = results.iter().map(|r| r.pull_secs).fold(0.0, f64::max);
    for (node, r) in nodes.iter().zip(&mut results) {
        r.from_peers = bytes_from(&node.dfdaemon, "peer")?;
        r.from_supernode = bytes_from(&node.dfdaemon, "supernode")?;
        r.from_origin = bytes_from(&node.dfdaemon, "origin")?;
        r.fallbacks = node
            .dfdaemon
            .metric("damselfly_dfdaemon_p2p_fallbacks_total", None)? as u64;
    }

    // The report.
    println!();
    println!("node     pull(s)  from peers(MiB)  from supernode(MiB)  from origin(MiB)  run");
    for (node, r) in nodes.iter().zip(&results) {
        let run = if !r.pull_ok() {
            "pull FAILED"
        } else if r.run_ok() {
            "OK"
        } else {
            "FAILED"
        };
        println!(
            "{:<8} {:>7.2}  {:>15.1}  {:>19.1}  {:>16.1}  {run}",
            node.name,
            r.pull_secs,
            mib(r.from_peers),
            mib(r.from_supernode),
            mib(r.from_origin),
        );
    }

    let n = args.nodes as u64;
    let peers: u64 = results.iter().map(|r| r.from_peers).sum();
    let snb: u64 = results.iter().map(|r| r.from_supernode).sum();
    let direct: u64 = results.iter().map(|r| r.from_origin).sum();
    let fallbacks: u64 = results.iter().map(|r| r.fallbacks).sum();
    let delivered = peers + snb + direct;
    let registry_sent: u64 = blobs
        .iter()
        .map(|(d, _)| registry.blob_bytes_served(d))
        .sum();
    let gets: Vec<usize> = blobs
        .iter()
        .map(|(d, _)| registry.blob_get_count(d))
        .collect();
    let supernode_origin = supernode
        .metric("damselfly_supernode_origin_bytes_total")
        .ok()
        .map(|v| v as u64);
    let pct = |b: u64| 100.0 * b as f64 / delivered.max(1) as f64;
    let ratio = |b: u64| b as f64 / image_bytes.max(1) as f64;

    println!();
    println!(
        "image               {:.1} MiB ({} blobs: config + {} layers)",
        mib(image_bytes),
        blobs.len(),
        image.layers.len()
    );
    println!(
        "nodes got           {:.1} MiB, all pulls done in {slowest_pull:.2}s: {:.1}% from peers, \
         {:.1}% from the supernode, {:.1}% from the registry directly",
        mib(delivered),
        pct(peers),
        pct(snb),
        pct(direct)
    );
    println!(
        "registry sent       {:.1} MiB = {:.2}x the image (GETs per blob: {gets:?})",
        mib(registry_sent),
        ratio(registry_sent)
    );
    if let Some(origin) = supernode_origin {
        println!(
            "supernode fetched   {:.1} MiB = {:.2}x the image from the registry",
            mib(origin),
            ratio(origin)
        );
    }
    println!(
        "without Damselfly   {n} x {:.1} MiB = {:.1} MiB from the registry ({n}.00x the image)",
        mib(image_bytes),
        mib(n * image_bytes)
    );
    if fallbacks > 0 {
        println!("p2p fallbacks       {fallbacks} blob(s) went to the registry directly");
    }
    println!(
        "total time          {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // Failures, loudly.
    let mut ok = true;
    for (node, r) in nodes.iter().zip(&results) {
        match (&r.pull, &r.run) {
            (Err(e), _) => {
                ok = false;
                eprintln!("\n!! {}: ctr image pull did not complete: {e:#}", node.name);
            }
            (Ok(o), _) if !o.status.success() => {
                ok = false;
                eprintln!(
                    "\n!! {}: ctr image pull failed: {}",
                    node.name,
                    describe_output(o)
                );
            }
            (_, Some(Err(e))) => {
                ok = false;
                eprintln!("\n!! {}: ctr run did not complete: {e:#}", node.name);
            }
            (_, Some(Ok(o))) if !r.run_ok() => {
                ok = false;
                eprintln!(
                    "\n!! {}: ctr run did not print {HELLO:?}: {}",
                    node.name,
                    describe_output(o)
                );
            }
            _ => continue,
        }
        eprintln!(
            "---- {} dfdaemon log (tail) ----\n{}",
            node.name,
            tail(&node.dfdaemon.log_text(), 30)
        );
    }
    if gets.iter().any(|&g| g > 1) {
        ok = false;
        eprintln!("\n!! the registry served some blob more than once: GETs per blob {gets:?}");
    }
    if ok {
        println!(
            "\nOK: {n} node{} pulled and ran {reference}; the registry sent every blob once.",
            if n == 1 { "" } else { "s" }
        );
    } else {
        eprintln!("\nFAILED (see above)");
    }
    Ok(ok)
}
