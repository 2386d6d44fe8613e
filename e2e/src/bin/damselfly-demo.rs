//! The README's main job: a real registry holding a sample image, a supernode, N peers pulling
//! every blob of the image through the swarm at once, and a report of where the bytes came from.
//!
//! `damselfly-demo [--peers N] [--layer-mib A,B,C]`

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use damselfly_e2e::{Dfget, Supernode, TestRegistry, num, random_blob, sha256_digest};

struct Args {
    peers: usize,
    layers_mib: Vec<usize>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        peers: 6,
        layers_mib: vec![48, 24, 8],
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--peers" => args.peers = it.next().context("--peers N")?.parse()?,
            "--layer-mib" => {
                args.layers_mib = it
                    .next()
                    .context("--layer-mib A,B,C")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "-h" | "--help" => {
                println!("damselfly-demo [--peers N] [--layer-mib 48,24,8]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    if args.peers == 0 || args.layers_mib.is_empty() {
        bail!("need at least one peer and one layer");
    }
    Ok(args)
}

#[derive(Default)]
struct NodeTotals {
    elapsed: Duration,
    from_origin: u64,
    from_peers: u64,
    from_supernode: u64,
}

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1u32 << 20)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    println!("== starting a local docker-registry");
    let registry = TestRegistry::start();
    let layers: Vec<Vec<u8>> = args
        .layers_mib
        .iter()
        .enumerate()
        .map(|(i, m)| random_blob(m << 20, 100 + i as u64))
        .collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| sha256_digest(l)).collect::<Vec<_>>()},
    }))?;
    let layer_refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
    let image = registry.push_image("demo/app", "v1", &config, &layer_refs);
    let mut blobs = vec![(image.config_digest.clone(), config.len() as u64)];
    blobs.extend(
        image
            .layer_digests
            .iter()
            .cloned()
            .zip(layers.iter().map(|l| l.len() as u64)),
    );
    let image_bytes: u64 = blobs.iter().map(|(_, n)| n).sum();
    println!(
        "   pushed demo/app:v1 to {} ({} blobs, {:.1} MiB)",
        registry.url(),
        blobs.len(),
        mib(image_bytes)
    );

    println!("== starting the supernode");
    let sn = Supernode::builder().start();
    println!("   supernode API on {}", sn.addr());

    println!(
        "== {} peers pull every blob of the image at once",
        args.peers
    );
    let out = tempfile::tempdir()?;
    let started = Instant::now();
    let nodes: Vec<std::thread::JoinHandle<Result<NodeTotals>>> = (0..args.peers)
        .map(|n| {
            let blobs = blobs.clone();
            let urls: Vec<String> = blobs
                .iter()
                .map(|(d, _)| registry.blob_url("demo/app", d))
                .collect();
            let dir: PathBuf = out.path().join(format!("node{n}"));
            let sn = sn.addr();
            std::thread::spawn(move || -> Result<NodeTotals> {
                std::fs::create_dir_all(&dir)?;
                let t0 = Instant::now();
                let mut totals = NodeTotals::default();
                // Each blob in its own dfget, all at once, as a runtime pulls layers in parallel.
                let mut runs = urls
                    .iter()
                    .enumerate()
                    .map(|(i, url)| {
                        Dfget::new(url, &dir.join(format!("blob{i}")))
                            .supernode(sn)
                            .args(["--keep-serving", "3s"])
                            .spawn()
                    })
                    .collect::<Result<Vec<_>>>()?;
                for run in &mut runs {
                    let r = run.wait(Duration::from_secs(600))?;
                    totals.from_origin += num(&r, "from_origin");
                    totals.from_peers += num(&r, "from_peers");
                    totals.from_supernode += num(&r, "from_supernode");
                }
                totals.elapsed = t0.elapsed();
                let _ = &blobs;
                Ok(totals)
            })
        })
        .collect();
    let mut results = Vec::new();
    for (i, n) in nodes.into_iter().enumerate() {
        let r = n
            .join()
            .map_err(|_| anyhow::anyhow!("node {i} panicked"))??;
        results.push(r);
    }
    let wall = started.elapsed();

    println!();
    println!("node   time(s)  from origin(MiB)  from peers(MiB)  from supernode(MiB)");
    for (i, r) in results.iter().enumerate() {
        println!(
            "{:<6} {:>7.2}  {:>16.1}  {:>15.1}  {:>19.1}",
            format!("node{i}"),
            r.elapsed.as_secs_f64(),
            mib(r.from_origin),
            mib(r.from_peers),
            mib(r.from_supernode)
        );
    }
    let peers: u64 = results.iter().map(|r| r.from_peers).sum();
    let snb: u64 = results.iter().map(|r| r.from_supernode).sum();
    let origin_direct: u64 = results.iter().map(|r| r.from_origin).sum();
    let total = peers + snb + origin_direct;
    let registry_sent: u64 = blobs
        .iter()
        .map(|(d, _)| registry.blob_bytes_served(d))
        .sum();
    let gets: Vec<usize> = blobs
        .iter()
        .map(|(d, _)| registry.blob_get_count(d))
        .collect();
    println!();
    println!(
        "image {:.1} MiB x {} nodes = {:.1} MiB delivered in {:.2}s",
        mib(image_bytes),
        args.peers,
        mib(total),
        wall.as_secs_f64()
    );
    println!(
        "bytes by source: peers {:.1}%, supernode {:.1}%, origin directly {:.1}%",
        100.0 * peers as f64 / total.max(1) as f64,
        100.0 * snb as f64 / total.max(1) as f64,
        100.0 * origin_direct as f64 / total.max(1) as f64
    );
    println!(
        "registry sent {:.1} MiB = {:.2}x the image; GETs per blob: {gets:?}",
        mib(registry_sent),
        registry_sent as f64 / image_bytes as f64
    );
    if gets.iter().any(|&g| g != 1) {
        bail!("the registry served some blob more than once: {gets:?}");
    }
    Ok(())
}
