//! `lazy`: starting a container from a lazily mounted nydus image, against a full pull and
//! unpack of the same image by containerd, and warm reads from the mount against local disk.
//!
//! Real parts only: Debian's `docker-registry`, the `nydus-fs` binary (convert and mount),
//! overlayfs and `runc` for the lazy side, a private containerd (`ctr images pull`, `ctr run`)
//! for the baseline. Needs root, `/dev/fuse`, runc, containerd and a static `/bin/busybox`
//! (scripts/setup.sh installs them); without them it says what is missing and exits non-zero.
//!
//! The image is generated (deterministic): three gzip layers, ~310 MiB and ~6,500 files at
//! `--scale 1`: a "base" layer (busybox, /etc, many small documentation files, a few shared
//! libraries), a "runtime" layer (thousands of small source files, one large library, a few
//! tools) and an "app" layer (configuration, a server binary, plugins, static assets, a model
//! file). Binaries and assets are random bytes (incompressible); text files are words.
//!
//! The command, as a container start would: `cat` a few configuration files and `sha256sum`
//! one 4 MiB plugin (its digest is checked).
//!
//! Each round, in turn (so load from the rest of the machine falls on every kind alike):
//!
//! * **lazy**: `nydus-fs mount` (fresh chunk cache), overlayfs over it, `runc run`;
//! * the same with `--fetch-neighbours 0` (a request per small file);
//! * **lazy + prefetch** (unless `--no-prefetch`): the image converted again with the files the
//!   command opened (`mount --record-trace`, `convert --prefetch`), the command started at once,
//!   and started only once the background prefetch has finished;
//! * **full pull**: `ctr images pull` (fetch and unpack) then `ctr run --rm`, nothing cached.
//!
//! Then warm read throughput: every file of the image read from a new mount of the image
//! whose chunk cache holds all of it, and from containerd's unpacked snapshot, each after
//! `echo 3 > /proc/sys/vm/drop_caches`, then twice more without dropping anything.
//!
//! ```text
//! cargo build --profile bench -p nydus-fs
//! cargo bench -p damselfly-benches --bench lazy -- --runs 3
//! ```

mod common;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use common::{Table, percentile};
use damselfly_e2e::{
    Containerd, ImageLayer, LAYER_GZIP, LayeredImage, NydusMount, TestImage, TestRegistry,
    describe_output, mount_stat, random_blob, sha256_digest, sha256_hex, try_nydus_convert,
    wait_until, write_hosts_toml,
};

/// Container start from a lazily mounted image against a full pull + unpack.
#[derive(Parser, Debug)]
struct Args {
    /// Measured runs of each kind (the median and every run are printed).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Scales the image's file counts and sizes (1: ~310 MiB in ~6,500 files).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Chunk size of the converted image (`nydus-fs convert --chunk-size`).
    #[arg(long, default_value = "1MiB")]
    chunk_size: String,
    /// Skip the runs with a recorded prefetch list.
    #[arg(long)]
    no_prefetch: bool,
    /// Only write the generated image as an OCI image layout in DIR (tag `src`) and exit: for
    /// looking at a mount by hand (`nydus-fs convert DIR OUT`, `nydus-fs mount OUT MNT`).
    #[arg(long, value_name = "DIR")]
    write_layout: Option<PathBuf>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

const REPO: &str = "bench/lazy";
const MIB: f64 = 1048576.0;
/// The file the command hashes.
const PLUGIN: &str = "/app/lib/plugin-03.so";
/// Longest a single container run, pull or prefetch may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.runs > 0, "--runs must be at least 1");
    ensure!(
        args.scale > 0.0 && args.scale <= 8.0,
        "--scale must be in (0, 8]"
    );
    println!("machine: {}", common::machine());
    if let Err(e) = preflight() {
        eprintln!(
            "lazy: cannot run here: {e:#}\n\
             (it mounts FUSE and overlay filesystems and runs containers; CI only compiles it)"
        );
        std::process::exit(2);
    }
    let scratch = tempfile::Builder::new()
        .prefix("damselfly-bench-lazy-")
        .tempdir_in(common::cluster::scratch_root())?;

    let started = Instant::now();
    let image = BenchImage::build(args.scale)?;
    println!(
        "image: {} layers, {} files, {:.1} MiB of file data, {:.1} MiB compressed (built in {:.1} s)",
        image.image.layers.len(),
        image.files,
        image.file_bytes as f64 / MIB,
        image.compressed as f64 / MIB,
        started.elapsed().as_secs_f64()
    );

    if let Some(dir) = &args.write_layout {
        image.image.write_layout(dir, "src")?;
        println!("wrote {}", dir.display());
        return Ok(());
    }

    let registry = TestRegistry::builder().try_start()?;
    let started = Instant::now();
    image.image.push(&registry, REPO, "src")?;
    let push = started.elapsed();
    let source = format!("{}/{REPO}:src", registry.host());
    let nydus = format!("{}/{REPO}:nydus", registry.host());
    let started = Instant::now();
    try_nydus_convert(&source, &nydus, &["--chunk-size", &args.chunk_size], &[])?;
    let conversion = started.elapsed();
    let (nydus_data, bootstrap) = nydus_sizes(&registry, "nydus")?;
    println!(
        "pushed in {:.1} s; nydus-fs convert took {:.1} s: data blobs {:.1} MiB, bootstrap {:.2} MiB",
        push.as_secs_f64(),
        conversion.as_secs_f64(),
        nydus_data as f64 / MIB,
        bootstrap as f64 / MIB,
    );

    let containerd = Containerd::start()?;
    let hosts = scratch.path().join("hosts");
    write_hosts_toml(&hosts, &registry.host(), "", Some(&registry.url()))?;
    let ctx = Ctx {
        registry: &registry,
        containerd: &containerd,
        hosts,
        scratch: scratch.path().to_owned(),
        spec: runtime_spec(scratch.path(), &image.command)?,
        image: &image,
        source,
    };

    // The prefetch list: the files one run of the command opens.
    let prefetched = if args.no_prefetch {
        None
    } else {
        let trace = scratch.path().join("trace.txt");
        ctx.lazy(
            &nydus,
            "trace",
            &Lazy {
                trace: Some(&trace),
                ..Lazy::default()
            },
        )?;
        let listed = fs::read_to_string(&trace)?;
        println!(
            "recorded trace: {} files ({})",
            listed.lines().count(),
            listed.lines().collect::<Vec<_>>().join(", ")
        );
        let target = format!("{}/{REPO}:prefetched", registry.host());
        try_nydus_convert(
            &ctx.source,
            &target,
            &[
                "--chunk-size",
                &args.chunk_size,
                "--prefetch",
                path_str(&trace)?,
            ],
            &[],
        )?;
        Some(target)
    };

    let mut lazy = Vec::new();
    let mut per_file = Vec::new();
    let mut at_once = Vec::new();
    let mut after = Vec::new();
    let mut full = Vec::new();
    for round in 0..args.runs {
        println!("round {}/{}", round + 1, args.runs);
        let again = Lazy {
            again: true,
            ..Lazy::default()
        };
        lazy.push(ctx.lazy(&nydus, &format!("lazy-{round}"), &again)?);
        let no_neighbours = Lazy {
            mount_args: &["--fetch-neighbours", "0"],
            ..Lazy::default()
        };
        per_file.push(ctx.lazy(&nydus, &format!("lazy-nn-{round}"), &no_neighbours)?);
        if let Some(p) = &prefetched {
            at_once.push(ctx.lazy(p, &format!("pf-{round}"), &Lazy::default())?);
            let wait = Lazy {
                wait_prefetch: true,
                ..Lazy::default()
            };
            after.push(ctx.lazy(p, &format!("pfw-{round}"), &wait)?);
        }
        full.push(ctx.full(&format!("full-{round}"))?);
    }
    print_starts(&image, &[&lazy, &per_file, &at_once, &after], &full);

    // Warm reads: the image stays pulled in containerd from the last full run.
    let reads = ctx.warm_reads(&nydus, args.runs)?;
    print_reads(&reads);
    Ok(())
}

/// Root, `/dev/fuse`, the programs and the static busybox the runs need.
fn preflight() -> Result<()> {
    let root = fs::metadata("/proc/self").is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt as _;
        m.uid() == 0
    });
    ensure!(root, "it must run as root");
    ensure!(Path::new("/dev/fuse").exists(), "/dev/fuse is missing");
    for program in ["runc", "containerd", "ctr", "docker-registry"] {
        let ok = Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ensure!(ok, "`{program} --version` failed: run scripts/setup.sh");
    }
    // Checks that /bin/busybox is there and statically linked.
    TestImage::busybox("", 0, 0)?;
    let exe = std::env::current_exe()?;
    let found = exe
        .ancestors()
        .skip(1)
        .take(2)
        .any(|d| d.join("nydus-fs").is_file());
    ensure!(
        found,
        "the nydus-fs binary is not next to {}: build it with the same profile first \
         (`cargo build --profile bench -p nydus-fs`)",
        exe.display()
    );
    Ok(())
}

/// Everything a run needs.
struct Ctx<'a> {
    registry: &'a TestRegistry,
    containerd: &'a Containerd,
    hosts: PathBuf,
    scratch: PathBuf,
    /// runc's `config.json` for the command.
    spec: serde_json::Value,
    image: &'a BenchImage,
    /// The OCI image's reference.
    source: String,
}

/// How a lazy start is made.
#[derive(Debug, Default)]
struct Lazy<'a> {
    /// More `nydus-fs mount` arguments.
    mount_args: &'a [&'a str],
    /// Record the files opened to this file (`--record-trace`).
    trace: Option<&'a Path>,
    /// Start the command once the mount's prefetch has finished.
    wait_prefetch: bool,
    /// Run the command a second time on the same mount (warm).
    again: bool,
}

/// One container start.
#[derive(Debug, Default, Clone)]
struct Start {
    /// Mount ready (lazy) or pull and unpack done (full), seconds from the start.
    ready: f64,
    /// Lazy with a prefetch list, when the command waited for it: seconds from mount ready to
    /// the prefetch's end.
    prefetch: Option<f64>,
    /// The command, in a container.
    command: f64,
    /// From the start to the command's end.
    total: f64,
    /// Body bytes the registry sent (successful GETs: manifests, configs, blobs, ranges).
    registry_bytes: u64,
    /// Ranged requests the mount made (lazy).
    requests: Option<u64>,
    /// The same command again, everything local (the runtime's own cost).
    warm_command: Option<f64>,
}

impl Ctx<'_> {
    /// Registry access-log entries so far (the count is the mark for [`Ctx::bytes_since`]).
    fn log_mark(&self) -> usize {
        self.registry.access_log().len()
    }

    fn bytes_since(&self, mark: usize) -> u64 {
        self.registry.access_log()[mark..]
            .iter()
            .filter(|e| e.method == "GET" && e.is_success())
            .map(|e| e.bytes)
            .sum()
    }

    fn check_output(&self, what: &str, out: &Output) -> Result<()> {
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && stdout.contains(&self.image.expected),
            "{what}: the command did not print {} {PLUGIN}:\n{}",
            self.image.expected,
            describe_output(out)
        );
        Ok(())
    }

    /// One lazy start: mount with a fresh chunk cache, overlay, runc.
    fn lazy(&self, image: &str, name: &str, how: &Lazy<'_>) -> Result<Start> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(&self.scratch)?;
        let lower = dir.path().join("lower");
        let cache = dir.path().join("cache");
        let mut mount_args = vec!["--plain-http", "--cache-dir", path_str(&cache)?];
        mount_args.extend_from_slice(how.mount_args);
        if let Some(t) = how.trace {
            mount_args.extend(["--record-trace", path_str(t)?]);
        }
        let mark = self.log_mark();
        let start = Instant::now();
        let mount = NydusMount::start(image, &lower, &mount_args)?;
        let ready = start.elapsed().as_secs_f64();
        let prefetch = if how.wait_prefetch {
            ensure!(
                wait_until(STEP_TIMEOUT, || mount
                    .log_text()
                    .contains("prefetch finished")),
                "{name}: the prefetch did not finish:\n{}",
                mount.log_text()
            );
            Some(start.elapsed().as_secs_f64() - ready)
        } else {
            None
        };
        let command_start = Instant::now();
        let out = self.runc(&lower, dir.path(), name)?;
        let command = command_start.elapsed().as_secs_f64();
        let total = start.elapsed().as_secs_f64();
        self.check_output(name, &out)?;
        let warm_command = if how.again {
            let again_start = Instant::now();
            let out = self.runc(&lower, dir.path(), &format!("{name}-again"))?;
            self.check_output(name, &out)?;
            Some(again_start.elapsed().as_secs_f64())
        } else {
            None
        };
        let (ok, log) = mount.stop()?;
        ensure!(ok, "{name}: nydus-fs mount failed:\n{log}");
        ensure!(
            mount_stat(&log, "failed_reads") == Some(0),
            "{name}: failed reads:\n{log}"
        );
        let s = Start {
            ready,
            prefetch,
            command,
            total,
            registry_bytes: self.bytes_since(mark),
            requests: mount_stat(&log, "requests"),
            warm_command,
        };
        println!("  {name}: {}", describe_start(&s, self.image.compressed));
        Ok(s)
    }

    /// overlayfs over `lower` and `runc run` of the command; timed by the caller from the
    /// overlay's mount to runc's exit. Everything is undone on return, failed or not.
    fn runc(&self, lower: &Path, dir: &Path, name: &str) -> Result<Output> {
        let run = dir.join(name);
        let (upper, work, bundle) = (run.join("upper"), run.join("work"), run.join("bundle"));
        let rootfs = bundle.join("rootfs");
        for d in [&upper, &work, &rootfs] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        fs::write(bundle.join("config.json"), serde_json::to_vec(&self.spec)?)?;
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        let overlay = Unmount(rootfs.clone());
        let status = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(&rootfs)
            .status()?;
        ensure!(
            status.success(),
            "mounting the overlay on {}",
            rootfs.display()
        );
        let id = format!("damselfly-lazy-{}-{name}", std::process::id());
        let container = RuncDelete(id.clone());
        let mut cmd = Command::new("runc");
        cmd.arg("run").arg("--bundle").arg(&bundle).arg(&id);
        let out = output_within(cmd, STEP_TIMEOUT);
        drop(container);
        drop(overlay);
        out
    }

    /// One full start: `ctr images pull` with nothing cached, then `ctr run --rm`, then the
    /// same command again (the image is left pulled).
    fn full(&self, name: &str) -> Result<Start> {
        // Cold: remove the image and let containerd's GC drop its content and snapshots.
        let _ = self
            .containerd
            .ctr(&["images", "rm", "--sync", &self.source])?;
        let cached = self.containerd.content_digests()?;
        ensure!(
            !self
                .image
                .image
                .layer_digests()
                .iter()
                .any(|d| cached.contains(d)),
            "containerd still holds a layer of the image after `ctr images rm --sync`"
        );
        let mark = self.log_mark();
        let start = Instant::now();
        let out = self.containerd.pull(&self.source, &self.hosts)?;
        ensure!(out.status.success(), "ctr pull: {}", describe_output(&out));
        let ready = start.elapsed().as_secs_f64();
        let command_start = Instant::now();
        let out = self
            .containerd
            .run(&self.source, name, &self.image.command_refs())?;
        let command = command_start.elapsed().as_secs_f64();
        let total = start.elapsed().as_secs_f64();
        self.check_output(name, &out)?;
        let again_start = Instant::now();
        let out = self.containerd.run(
            &self.source,
            &format!("{name}-again"),
            &self.image.command_refs(),
        )?;
        self.check_output(name, &out)?;
        let s = Start {
            ready,
            prefetch: None,
            command,
            total,
            registry_bytes: self.bytes_since(mark),
            requests: None,
            warm_command: Some(again_start.elapsed().as_secs_f64()),
        };
        println!("  {name}: {}", describe_start(&s, self.image.compressed));
        Ok(s)
    }

    /// Every file of the image read from the mount (chunk cache warm) and from containerd's
    /// unpacked snapshot, `runs` times each with the page cache dropped, and once more each
    /// with it warm; first a cold read of everything through the mount fills the chunk cache.
    fn warm_reads(&self, image: &str, runs: usize) -> Result<Reads> {
        let dir = tempfile::Builder::new()
            .prefix("reads-")
            .tempdir_in(&self.scratch)?;
        let cache = dir.path().join("cache");
        let lower = dir.path().join("lower");
        let mount_args = ["--plain-http", "--cache-dir", path_str(&cache)?];

        let mount = NydusMount::start(image, &lower, &mount_args)?;
        let files = list_files(&lower)?;
        let cold = read_all(&lower, &files)?;
        let (ok, log) = mount.stop()?;
        ensure!(ok && mount_stat(&log, "failed_reads") == Some(0), "{log}");
        println!(
            "  cold read of every file through the mount: {:.0} MiB/s",
            cold.rate()
        );

        let mut reads = Reads {
            files: files.len(),
            bytes: cold.bytes,
            cold_mount: cold.rate(),
            ..Reads::default()
        };
        for _ in 0..runs {
            let mount = NydusMount::start(image, &lower, &mount_args)?;
            drop_caches()?;
            let dropped = read_all(&lower, &files)?;
            let again = read_all(&lower, &files)?;
            let third = read_all(&lower, &files)?;
            let (ok, log) = mount.stop()?;
            ensure!(ok && mount_stat(&log, "failed_reads") == Some(0), "{log}");
            ensure!(
                mount_stat(&log, "requests") == Some(0),
                "the chunk cache did not hold the whole image:\n{log}"
            );
            ensure!(
                [dropped, again, third]
                    .iter()
                    .all(|r| r.bytes == reads.bytes)
            );
            println!(
                "  mount, chunk cache warm: {:.0} MiB/s (page cache dropped), then {:.0} and {:.0} MiB/s",
                dropped.rate(),
                again.rate(),
                third.rate()
            );
            reads.mount.push(dropped.rate());
            reads.mount_again.push(again.rate());
            reads.mount_third.push(third.rate());
        }

        let unpacked = dir.path().join("unpacked");
        fs::create_dir_all(&unpacked)?;
        self.containerd.ctr_ok(&[
            "images",
            "mount",
            "--snapshotter",
            self.containerd.snapshotter(),
            &self.source,
            path_str(&unpacked)?,
        ])?;
        let _unmount = Unmount(unpacked.clone());
        for _ in 0..runs {
            drop_caches()?;
            let dropped = read_all(&unpacked, &files)?;
            let again = read_all(&unpacked, &files)?;
            let third = read_all(&unpacked, &files)?;
            ensure!(
                [dropped, again, third]
                    .iter()
                    .all(|r| r.bytes == reads.bytes)
            );
            println!(
                "  local disk ({} snapshot): {:.0} MiB/s (page cache dropped), then {:.0} and {:.0} MiB/s",
                self.containerd.snapshotter(),
                dropped.rate(),
                again.rate(),
                third.rate()
            );
            reads.local.push(dropped.rate());
            reads.local_again.push(again.rate());
            reads.local_third.push(third.rate());
        }
        reads.snapshotter = self.containerd.snapshotter().to_owned();
        Ok(reads)
    }
}

fn describe_start(s: &Start, image_bytes: u64) -> String {
    format!(
        "ready {:.0} ms, command {:.0} ms, total {:.0} ms, {:.1} MiB from the registry ({:.3} of the image)",
        s.ready * 1e3,
        s.command * 1e3,
        s.total * 1e3,
        s.registry_bytes as f64 / MIB,
        s.registry_bytes as f64 / image_bytes as f64
    )
}

/// `umount` of a path on drop (if still mounted).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if damselfly_e2e::is_mounted(&self.0) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
}

/// `runc delete -f` on drop: nothing is left if runc was interrupted (after a normal exit
/// `runc run` has deleted the container itself).
struct RuncDelete(String);

impl Drop for RuncDelete {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `cmd` with stdin closed and its output captured; kills it after `timeout`.
fn output_within(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => Ok(out.with_context(|| format!("waiting for {what}"))?),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            bail!("{what} did not finish within {timeout:?}; killed it")
        }
    }
}

/// runc's default spec (`runc spec`) running `command` with a writable rootfs and no terminal.
fn runtime_spec(scratch: &Path, command: &[String]) -> Result<serde_json::Value> {
    let dir = scratch.join("spec");
    fs::create_dir_all(&dir)?;
    let out = Command::new("runc")
        .arg("spec")
        .arg("--bundle")
        .arg(&dir)
        .output()?;
    ensure!(out.status.success(), "runc spec: {}", describe_output(&out));
    let mut spec: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("config.json"))?)?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(command);
    spec["root"]["readonly"] = false.into();
    Ok(spec)
}

/// Total size of the data blobs and size of the bootstrap of `REPO:tag`.
fn nydus_sizes(registry: &TestRegistry, tag: &str) -> Result<(u64, u64)> {
    let manifest = registry.manifest_json(REPO, tag)?;
    let layers = manifest["layers"]
        .as_array()
        .context("a manifest without layers")?;
    let size = |l: &serde_json::Value| l["size"].as_u64().unwrap_or(0);
    let (boot, data): (Vec<_>, Vec<_>) = layers.iter().partition(|l| {
        l["mediaType"] == "application/vnd.oci.image.layer.damselfly.nydus.bootstrap.v1"
    });
    Ok((
        data.into_iter().map(size).sum(),
        boot.into_iter().map(size).sum(),
    ))
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// `sync`, then `echo 3 > /proc/sys/vm/drop_caches`: reads after this come from the disk (or
/// the FUSE daemon), not the kernel's page cache.
fn drop_caches() -> Result<()> {
    let _ = Command::new("sync").status();
    fs::write("/proc/sys/vm/drop_caches", "3").context("writing /proc/sys/vm/drop_caches")
}

/// Regular files under `root`, relative, sorted.
fn list_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            let kind = fs::symlink_metadata(&path)?.file_type();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                out.push(path.strip_prefix(root)?.to_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Bytes read and seconds taken.
#[derive(Debug, Clone, Copy)]
struct Read {
    bytes: u64,
    secs: f64,
}

impl Read {
    fn rate(self) -> f64 {
        self.bytes as f64 / MIB / self.secs.max(1e-9)
    }
}

/// Reads every file of `files` under `root` to the end, in order, 1 MiB at a time.
fn read_all(root: &Path, files: &[PathBuf]) -> Result<Read> {
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    let start = Instant::now();
    for f in files {
        let path = root.join(f);
        let mut file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        loop {
            let n = file
                .read(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
        }
    }
    Ok(Read {
        bytes,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// Warm read throughputs, MiB/s.
#[derive(Debug, Default)]
struct Reads {
    files: usize,
    bytes: u64,
    snapshotter: String,
    cold_mount: f64,
    mount: Vec<f64>,
    mount_again: Vec<f64>,
    mount_third: Vec<f64>,
    local: Vec<f64>,
    local_again: Vec<f64>,
    local_third: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

fn list(v: impl IntoIterator<Item = f64>, scale: f64, digits: usize) -> String {
    v.into_iter()
        .map(|x| format!("{:.digits$}", x * scale))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The kinds of lazy start, in the order `print_starts` takes them.
const LAZY_KINDS: [&str; 4] = [
    "lazy: nydus-fs mount + overlay + runc",
    "lazy, --fetch-neighbours 0 (a request per file)",
    "lazy + prefetch list, command at once",
    "lazy + prefetch list, command after the prefetch",
];

/// `lazy`: the lazy kinds in the order of [`LAZY_KINDS`].
fn print_starts(image: &BenchImage, lazy: &[&[Start]; 4], full: &[Start]) {
    let ms = |x: f64| format!("{:.0}", x * 1e3);
    let mut t = Table::new([
        "start (median of runs)",
        "ready (ms)",
        "prefetch (ms)",
        "command (ms)",
        "time to command (ms)",
        "registry MiB",
        "/ image bytes",
        "requests",
        "command again, warm (ms)",
    ]);
    let kinds: Vec<(&str, &[Start])> = LAZY_KINDS
        .iter()
        .copied()
        .zip(lazy.iter().copied())
        .chain([("full: ctr images pull + ctr run", full)])
        .collect();
    let field = |runs: &[Start], f: &dyn Fn(&Start) -> Option<f64>| -> Vec<f64> {
        runs.iter().filter_map(f).collect()
    };
    for &(name, runs) in &kinds {
        if runs.is_empty() {
            continue;
        }
        let med = |f: &dyn Fn(&Start) -> Option<f64>| {
            let v = field(runs, f);
            if v.is_empty() {
                "–".to_owned()
            } else {
                ms(median(&v))
            }
        };
        let bytes = median(&field(runs, &|s| Some(s.registry_bytes as f64)));
        t.row([
            name.to_owned(),
            med(&|s| Some(s.ready)),
            med(&|s| s.prefetch),
            med(&|s| Some(s.command)),
            med(&|s| Some(s.total)),
            format!("{:.1}", bytes / MIB),
            format!("{:.3}", bytes / image.compressed as f64),
            {
                let v = field(runs, &|s| s.requests.map(|r| r as f64));
                if v.is_empty() {
                    "–".to_owned()
                } else {
                    format!("{:.0}", median(&v))
                }
            },
            med(&|s| s.warm_command),
        ]);
    }
    println!(
        "\nContainer start, {} runs of each (image {:.1} MiB compressed; the command reads a \
         few config files and sha256sums a 4 MiB file):\n\n{}",
        full.len(),
        image.compressed as f64 / MIB,
        t.render()
    );
    let mut every = Table::new([
        "every run",
        "ready (ms)",
        "command (ms)",
        "time to command (ms)",
        "registry MiB",
    ]);
    for &(name, runs) in &kinds {
        if runs.is_empty() {
            continue;
        }
        every.row([
            name.to_owned(),
            list(runs.iter().map(|s| s.ready), 1e3, 0),
            list(runs.iter().map(|s| s.command), 1e3, 0),
            list(runs.iter().map(|s| s.total), 1e3, 0),
            list(runs.iter().map(|s| s.registry_bytes as f64), 1.0 / MIB, 1),
        ]);
    }
    println!("{}", every.render());
    let total = |runs: &[Start]| median(&runs.iter().map(|s| s.total).collect::<Vec<_>>());
    let bytes = |runs: &[Start]| {
        median(
            &runs
                .iter()
                .map(|s| s.registry_bytes as f64)
                .collect::<Vec<_>>(),
        )
    };
    let mut ratios = Table::new(["ratio (medians)", "time to command", "registry bytes"]);
    for (name, runs) in &kinds[..LAZY_KINDS.len()] {
        if runs.is_empty() {
            continue;
        }
        ratios.row([
            format!("{name} / full"),
            format!("{:.3}", total(runs) / total(full)),
            format!("{:.4}", bytes(runs) / bytes(full)),
        ]);
    }
    println!("{}", ratios.render());
}

fn print_reads(r: &Reads) {
    let mut t = Table::new([
        "read every file",
        "median MiB/s",
        "runs (MiB/s)",
        "/ local disk",
    ]);
    let rows: [(&str, &[f64], &[f64]); 6] = [
        (
            "mount, chunk cache warm, page cache dropped",
            &r.mount,
            &r.local,
        ),
        ("local disk, page cache dropped", &r.local, &r.local),
        ("mount, read again", &r.mount_again, &r.local_again),
        ("local disk, read again", &r.local_again, &r.local_again),
        ("mount, read a third time", &r.mount_third, &r.local_third),
        (
            "local disk, read a third time",
            &r.local_third,
            &r.local_third,
        ),
    ];
    for (name, v, base) in rows {
        t.row([
            name.to_owned(),
            format!("{:.0}", median(v)),
            list(v.iter().copied(), 1.0, 0),
            format!("{:.2}", median(v) / median(base)),
        ]);
    }
    println!(
        "\nWarm reads: {} files, {:.1} MiB, read in order, one at a time, 1 MiB reads; local \
         disk is containerd's {} snapshot (the cold read through the mount that filled the \
         chunk cache: {:.0} MiB/s):\n\n{}",
        r.files,
        r.bytes as f64 / MIB,
        r.snapshotter,
        r.cold_mount,
        t.render()
    );
}

/// The generated image and what the command must print.
struct BenchImage {
    image: LayeredImage,
    /// Regular files and their total bytes.
    files: usize,
    file_bytes: u64,
    /// Config and layers, as pushed.
    compressed: u64,
    /// The command run in the container.
    command: Vec<String>,
    /// sha256 hex of [`PLUGIN`].
    expected: String,
}

impl BenchImage {
    fn command_refs(&self) -> Vec<&str> {
        self.command.iter().map(String::as_str).collect()
    }

    fn build(scale: f64) -> Result<Self> {
        let count = |n: usize| ((n as f64 * scale).round() as usize).max(1);
        let mib = |m: f64| ((m * scale * MIB) as usize).max(64 << 10);
        let busybox = fs::read("/bin/busybox").context("reading /bin/busybox")?;
        let mut rng = Rng(0x1a2b_3c4d);
        let words = vocabulary(&mut rng);
        let mut seed = 0x6c61_7a79;
        let mut random = |size: usize| {
            seed += 1;
            random_blob(size, seed)
        };
        let mut files = 0usize;
        let mut file_bytes = 0u64;
        let mut count_file = |data: &[u8]| {
            files += 1;
            file_bytes += data.len() as u64;
        };

        // Base: busybox, /etc, package docs, shared libraries.
        let mut base = Layer::default();
        for d in ["dev", "proc", "sys", "run", "root", "etc", "bin"] {
            base.dir(d, 0o755)?;
        }
        base.dir("tmp", 0o1777)?;
        base.file("bin/busybox", 0o755, &busybox)?;
        count_file(&busybox);
        for applet in ["sh", "cat", "ls", "sha256sum", "wc", "head", "true"] {
            base.symlink(&format!("bin/{applet}"), "busybox")?;
        }
        for (name, body) in ETC {
            base.file(&format!("etc/{name}"), 0o644, body.as_bytes())?;
            count_file(body.as_bytes());
        }
        for p in 0..count(1000) {
            for (name, lo, hi) in [
                ("copyright", 1 << 10, 6 << 10),
                ("changelog", 512, 12 << 10),
            ] {
                let len = rng.range(lo, hi);
                let body = text(&mut rng, &words, len);
                base.file(&format!("usr/share/doc/pkg-{p:04}/{name}"), 0o644, &body)?;
                count_file(&body);
            }
        }
        for (i, m) in [4.0, 6.0, 8.0, 10.0, 12.0, 8.0].into_iter().enumerate() {
            let body = random(mib(m));
            base.file(
                &format!("usr/lib/x86_64-linux-gnu/libbase{i}.so.1"),
                0o644,
                &body,
            )?;
            count_file(&body);
        }

        // Runtime: many small source files, one large library, a few tools.
        let mut runtime = Layer::default();
        for p in 0..count(60) {
            for m in 0..50 {
                let len = rng.range(1 << 10, 24 << 10);
                let body = text(&mut rng, &words, len);
                runtime.file(
                    &format!("usr/lib/runtime/pkg{p:02}/module{m:02}.py"),
                    0o644,
                    &body,
                )?;
                count_file(&body);
            }
        }
        let body = random(mib(48.0));
        runtime.file("usr/lib/runtime/libruntime.so", 0o755, &body)?;
        count_file(&body);
        for i in 0..4 {
            let body = random(mib(4.0));
            runtime.file(&format!("usr/bin/tool-{i}"), 0o755, &body)?;
            count_file(&body);
        }

        // App: configuration, server, plugins, static assets, a model.
        let mut app = Layer::default();
        for i in 0..12 {
            let len = rng.range(200, 2 << 10);
            let body = text(&mut rng, &words, len);
            app.file(&format!("app/config/service-{i:02}.yaml"), 0o644, &body)?;
            count_file(&body);
        }
        let body = random(mib(24.0));
        app.file("app/bin/server", 0o755, &body)?;
        count_file(&body);
        let mut expected = String::new();
        for i in 0..8 {
            // Not scaled: the command always hashes 4 MiB.
            let body = random(4 << 20);
            let path = format!("app/lib/plugin-{i:02}.so");
            if format!("/{path}") == PLUGIN {
                expected = sha256_hex(&body);
            }
            app.file(&path, 0o755, &body)?;
            count_file(&body);
        }
        for i in 0..count(1500) {
            let len = rng.range(1 << 10, 48 << 10);
            let body = if i % 2 == 0 {
                text(&mut rng, &words, len)
            } else {
                random(len)
            };
            app.file(
                &format!("app/static/{:02}/asset-{i:04}", i % 40),
                0o644,
                &body,
            )?;
            count_file(&body);
        }
        let body = random(mib(64.0));
        app.file("app/data/model.bin", 0o644, &body)?;
        count_file(&body);

        let layers = vec![base.finish()?, runtime.finish()?, app.finish()?];
        let command: Vec<String> = [
            "/bin/sh",
            "-c",
            "cat /etc/passwd /etc/group /etc/os-release /app/config/*.yaml >/dev/null \
             && sha256sum /app/lib/plugin-03.so",
        ]
        .map(str::to_owned)
        .to_vec();
        let config = serde_json::to_vec_pretty(&serde_json::json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH },
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": command,
                "WorkingDir": "/",
            },
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
        }))?;
        let compressed = (config.len() + layers.iter().map(|l| l.data.len()).sum::<usize>()) as u64;
        ensure!(!expected.is_empty(), "{PLUGIN} was not generated");
        Ok(Self {
            image: LayeredImage {
                config,
                layers,
                tree: Default::default(),
                hard_links: Vec::new(),
            },
            files,
            file_bytes,
            compressed,
            command,
            expected,
        })
    }
}

const ETC: [(&str, &str); 8] = [
    (
        "passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000::/app:/bin/sh\n",
    ),
    ("group", "root:x:0:\nnogroup:x:65534:\napp:x:1000:\n"),
    ("hostname", "lazy\n"),
    ("hosts", "127.0.0.1 localhost\n::1 localhost\n"),
    (
        "os-release",
        "PRETTY_NAME=\"Damselfly bench image\"\nNAME=damselfly-bench\nID=damselfly\n",
    ),
    (
        "nsswitch.conf",
        "passwd: files\ngroup: files\nhosts: files dns\n",
    ),
    ("profile", "export PATH=/usr/local/bin:/usr/bin:/bin\n"),
    ("shells", "/bin/sh\n"),
];

/// A gzip layer being written, with its parent directories added as needed.
#[derive(Default)]
struct Layer {
    tar: Option<tar::Builder<Vec<u8>>>,
    dirs: BTreeSet<String>,
}

impl Layer {
    fn tar(&mut self) -> &mut tar::Builder<Vec<u8>> {
        self.tar
            .get_or_insert_with(|| tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_704_067_200);
        h
    }

    fn parents(&mut self, path: &str) -> Result<()> {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let dir = &path[..at + i];
            if !self.dirs.contains(dir) {
                self.dir(dir, 0o755)?;
            }
            at += i + 1;
        }
        Ok(())
    }

    fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.parents(path)?;
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.tar()
            .append_data(&mut h, format!("{path}/"), std::io::empty())?;
        self.dirs.insert(path.to_owned());
        Ok(())
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.parents(path)?;
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.tar()
            .append_data(&mut h, path, data)
            .with_context(|| format!("adding {path}"))
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.parents(path)?;
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.tar()
            .append_link(&mut h, path, target)
            .with_context(|| format!("adding {path}"))
    }

    fn finish(mut self) -> Result<ImageLayer> {
        let tar = self.tar().get_mut().len();
        let tar = match self.tar.take() {
            Some(builder) => builder.into_inner()?,
            None => Vec::with_capacity(tar),
        };
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(tar.len() / 2),
            flate2::Compression::fast(),
        );
        gz.write_all(&tar)?;
        Ok(ImageLayer {
            media_type: LAYER_GZIP,
            diff_id: sha256_digest(&tar),
            data: gz.finish()?,
        })
    }
}

/// SplitMix64, for the text files' lengths and words.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

/// 512 made-up words of 2–10 letters.
fn vocabulary(rng: &mut Rng) -> Vec<Vec<u8>> {
    (0..512)
        .map(|_| {
            let len = rng.range(2, 11);
            (0..len).map(|_| b'a' + rng.range(0, 26) as u8).collect()
        })
        .collect()
}

/// `len` bytes of words, ten to a line.
fn text(rng: &mut Rng, words: &[Vec<u8>], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    let mut n = 0;
    while out.len() < len {
        out.extend_from_slice(&words[rng.range(0, words.len())]);
        n += 1;
        out.push(if n % 10 == 0 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}
