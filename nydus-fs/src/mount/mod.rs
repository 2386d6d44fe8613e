//! `nydus-fs mount`: serve a nydus image over FUSE, fetching chunks on first read.
//!
//! The bootstrap is loaded and verified against the manifest's root annotation before
//! anything is mounted (a tampered bootstrap is refused here). Metadata is then answered from
//! memory; file data goes through [`reader::Reader`]: chunk cache (disk + memory), else ranged
//! requests to the blob source, each chunk verified before use, fetched once under concurrent
//! readers. A failed fetch or a bad chunk fails the read with `EIO` and logs the cause.
//! SIGTERM or SIGINT unmounts; an external `umount` ends the process.

mod cache;
mod fs;
mod paths;
mod reader;
mod source;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context as _, Result, bail};
use fuser::{Config, MountOption, SessionACL};
use nydus_fs::InodeId;

use self::cache::ChunkCache;
use self::fs::{NydusFs, Trace};
use self::paths::Paths;
use self::reader::Reader;
use self::source::{BlobSource, LayoutSource, RegistrySource};
use crate::location::RegistryArgs;
use crate::source::ImageSource;

/// Options of `nydus-fs mount`.
#[derive(Debug)]
pub(crate) struct MountArgs {
    pub(crate) image: String,
    pub(crate) tag: Option<String>,
    pub(crate) mountpoint: PathBuf,
    pub(crate) cache_dir: Option<PathBuf>,
    pub(crate) memory_cache: u64,
    pub(crate) fetch_size: u64,
    pub(crate) neighbours: u64,
    pub(crate) max_requests: usize,
    pub(crate) record_trace: Option<PathBuf>,
    pub(crate) prefetch: bool,
    pub(crate) registry: RegistryArgs,
}

/// A loaded image ready to mount.
struct Loaded {
    tree: Arc<nydus_fs::Tree>,
    source: Arc<dyn BlobSource>,
    prefetch: Vec<Vec<u8>>,
}

fn load(args: &MountArgs) -> Result<Loaded> {
    let img = crate::image::load(&args.image, args.tag.as_deref(), &args.registry)?;
    let source: Arc<dyn BlobSource> = match img.source {
        ImageSource::Layout(dir) => Arc::new(LayoutSource {
            dir: Arc::new(dir),
            blobs: img.blobs,
            root: PathBuf::from(&args.image),
        }),
        ImageSource::Registry(remote) => {
            let blobs = img
                .tree
                .blobs
                .iter()
                .map(|d| damselfly_common::Digest(d.0))
                .collect();
            Arc::new(RegistrySource {
                client: remote.client,
                reference: remote.reference,
                blobs,
            })
        }
    };
    Ok(Loaded {
        source,
        tree: Arc::new(img.tree),
        prefetch: img.prefetch,
    })
}

pub(crate) fn run(args: &MountArgs) -> Result<()> {
    let meta = std::fs::metadata(&args.mountpoint);
    if let Err(e) = &meta
        && e.raw_os_error() == Some(107)
    {
        // ENOTCONN: a previous nydus-fs died without unmounting. Detach the dead mount.
        tracing::warn!(mountpoint = %args.mountpoint.display(), "detaching a dead FUSE mount left by a previous run");
        detach(&args.mountpoint);
    }
    let meta = std::fs::metadata(&args.mountpoint)
        .with_context(|| format!("mount point {}", args.mountpoint.display()))?;
    if !meta.is_dir() {
        bail!(
            "mount point {} is not a directory",
            args.mountpoint.display()
        );
    }

    let loaded = load(args)?;
    let rt = crate::location::runtime()?;
    let cache = ChunkCache::open(
        args.cache_dir.as_deref(),
        usize::try_from(args.memory_cache).unwrap_or(usize::MAX),
    )
    .with_context(|| {
        format!(
            "opening the chunk cache {}",
            args.cache_dir
                .as_deref()
                .unwrap_or_else(|| Path::new("-"))
                .display()
        )
    })?;
    let reader = Arc::new(Reader::new(
        loaded.tree.clone(),
        loaded.source.clone(),
        Arc::new(cache),
        args.fetch_size,
        args.neighbours,
        args.max_requests,
    ));
    let paths = Arc::new(Paths::new(&loaded.tree));
    let trace = match &args.record_trace {
        Some(p) => {
            Some(Trace::new(std::fs::File::create(p).with_context(|| {
                format!("creating the trace file {}", p.display())
            })?))
        }
        None => None,
    };
    let fs = NydusFs::new(
        loaded.tree.clone(),
        reader.clone(),
        paths,
        rt.handle().clone(),
        trace,
    );

    let root = nix::unistd::geteuid().is_root();
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(format!("nydus-fs:{}", args.image)),
        MountOption::Subtype("nydus-fs".into()),
        MountOption::DefaultPermissions,
    ];
    if root {
        // A container rootfs needs set-user-id binaries and device nodes to behave.
        config
            .mount_options
            .extend([MountOption::Suid, MountOption::Dev, MountOption::Exec]);
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(2);
    let mut session = fuser::Session::new(fs, &args.mountpoint, &config)
        .with_context(|| format!("mounting on {}", args.mountpoint.display()))?;
    let mut unmounter = session.unmount_callable();
    tracing::info!(
        image = %args.image,
        mountpoint = %args.mountpoint.display(),
        inodes = loaded.tree.inodes.len(),
        source = %reader.source_name(),
        "mounted"
    );

    if args.prefetch && !loaded.prefetch.is_empty() {
        let ids: Vec<InodeId> = loaded
            .prefetch
            .iter()
            .filter_map(|p| loaded.tree.lookup(p))
            .collect();
        tracing::info!(
            files = ids.len(),
            listed = loaded.prefetch.len(),
            "prefetching"
        );
        rt.spawn(reader.clone().prefetch(ids));
    }

    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("fuse".into())
        .spawn(move || {
            let _ = done_tx.send(session.run());
        })
        .context("starting the FUSE thread")?;
    let mountpoint = args.mountpoint.clone();
    let result = rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            r = &mut done_rx => {
                // Unmounted from outside (umount, fusermount3 -u).
                return r.unwrap_or(Ok(()));
            }
        }
        tracing::info!(mountpoint = %mountpoint.display(), "signal received; unmounting");
        // A plain unmount fails with EBUSY while anything has a file open or a working
        // directory under the mount; retry for a moment, then detach lazily (users that still
        // hold files then see the mount end when this process exits).
        let mut unmounted = false;
        for _ in 0..10 {
            match unmounter.unmount() {
                Ok(()) => {
                    unmounted = true;
                    break;
                }
                Err(e) => tracing::debug!(error = %e, "unmount refused; retrying"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if !unmounted {
            tracing::warn!(mountpoint = %mountpoint.display(), "mount still busy; detaching it lazily");
            detach(&mountpoint);
        }
        match tokio::time::timeout(std::time::Duration::from_secs(2), done_rx).await {
            Ok(r) => r.unwrap_or(Ok(())),
            Err(_) => {
                tracing::warn!("open files keep the detached mount alive; exiting anyway");
                Ok(())
            }
        }
    });
    let s = &reader.stats;
    tracing::info!(
        requests = s.requests.load(Ordering::Relaxed),
        bytes_fetched = s.bytes_fetched.load(Ordering::Relaxed),
        chunks_fetched = s.chunks_fetched.load(Ordering::Relaxed),
        memory_hits = s.memory_hits.load(Ordering::Relaxed),
        disk_hits = s.disk_hits.load(Ordering::Relaxed),
        failed_reads = s.failures.load(Ordering::Relaxed),
        "unmounted"
    );
    result.context("FUSE session")
}

/// Lazily detaches whatever is mounted at `path` (best effort).
fn detach(path: &Path) {
    let ok = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
}
