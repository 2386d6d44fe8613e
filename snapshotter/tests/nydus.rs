//! A nydus-fs image provided lazily through a real containerd 1.6: the snapshotter is
//! containerd's proxy plugin, and the test drives containerd's own snapshots service (on
//! containerd's socket, through its metadata layer) with exactly the Prepare calls and labels
//! containerd's unpacker makes during a CRI pull (`containerd.io/snapshot.ref` plus the
//! `containerd.io/snapshot/cri.*` labels of `disable_snapshot_annotations = false`). The CRI
//! plugin itself is not driven: no CRI client is in the workspace yet.
//!
//! Shown: every layer of the converted image is answered "already exists" (containerd never
//! downloads it) from one FUSE mount; a container snapshot on top is an overlay whose lower
//! directory is the mount and serves the image's files; only a small fraction of the image's
//! data-blob bytes left the registry; an ordinary image with the same labels is unpacked as
//! before; removing the image's snapshots unmounts the tree. dfdaemon is configured but not
//! running, so the mount falls back to the registry.
//!
//! Needs root, /dev/fuse, containerd and the `nydus-fs` binary; skipped (saying why) otherwise.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::api::snapshots::v1::{
    Kind, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::codegen::InterceptedService;
use containerd_snapshots::tonic::metadata::MetadataValue;
use containerd_snapshots::tonic::service::Interceptor;
use containerd_snapshots::tonic::transport::Channel;
use containerd_snapshots::tonic::{Code, Request, Status};
use damselfly_e2e::{
    Containerd, Daemon, Dfdaemon, LayeredImage, RICH_LARGE_PATH, RICH_SMALL_PATH, TestRegistry,
    fuse_available, is_mounted, sha256_digest, wait_until,
};
use damselfly_oci::registry::{RegistryClient, RegistryOptions};

const IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
const MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
const LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
const IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
const SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
/// Bytes of the image's large random file.
const LARGE: usize = 64 << 20;

/// The lease the test's snapshots are made under, as containerd's unpacker makes them under
/// one: without it containerd's garbage collector (which also runs shortly after containerd
/// starts) may remove the committed layers before the image would reference them.
const LEASE: &str = "damselfly-e2e-unpack";

/// Adds containerd's namespace and lease headers to every call, as containerd's Go client
/// does.
#[derive(Clone)]
struct Namespace(MetadataValue<containerd_snapshots::tonic::metadata::Ascii>);

impl Interceptor for Namespace {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("containerd-namespace", self.0.clone());
        request
            .metadata_mut()
            .insert("containerd-lease", MetadataValue::from_static(LEASE));
        Ok(request)
    }
}

type Client = SnapshotsClient<InterceptedService<Channel, Namespace>>;

/// containerd's snapshots service for the snapshotter `common::NAME`.
struct Snapshots {
    client: Client,
}

impl Snapshots {
    async fn connect(containerd: &Containerd) -> Self {
        // Made once per containerd (a second create fails: it exists).
        let _ = containerd.ctr_ok(&["leases", "create", "--id", LEASE]);
        let channel = common::channel(containerd.socket()).await.unwrap();
        let namespace = Namespace(containerd.namespace().parse().unwrap());
        Self {
            client: SnapshotsClient::with_interceptor(channel, namespace),
        }
    }

    async fn prepare(
        &mut self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        let request = PrepareSnapshotRequest {
            snapshotter: common::NAME.into(),
            key: key.into(),
            parent: parent.into(),
            labels,
        };
        Ok(self.client.prepare(request).await?.into_inner().mounts)
    }

    async fn stat(&mut self, key: &str) -> Result<(Kind, String), Status> {
        let request = StatSnapshotRequest {
            snapshotter: common::NAME.into(),
            key: key.into(),
        };
        let info = self.client.stat(request).await?.into_inner().info.unwrap();
        Ok((info.kind(), info.parent))
    }

    async fn remove(&mut self, key: &str) -> Result<(), Status> {
        let request = RemoveSnapshotRequest {
            snapshotter: common::NAME.into(),
            key: key.into(),
        };
        self.client.remove(request).await.map(|_| ())
    }
}

/// The chain ids of a layer stack, as containerd's `identity.ChainIDs` computes them from the
/// config's diff ids: the converter writes one per layer, the layer's digest (checked in
/// `e2e/tests/nydus_convert.rs`).
fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::new();
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => sha256_digest(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

/// The labels of layer `i`'s Prepare during a CRI pull of `reference` (manifest `manifest`).
fn cri_labels(
    reference: &str,
    manifest: &str,
    layers: &[String],
    chain: &[String],
    i: usize,
) -> HashMap<String, String> {
    HashMap::from([
        (SNAPSHOT_REF.to_owned(), chain[i].clone()),
        (IMAGE_REF.to_owned(), reference.to_owned()),
        (MANIFEST_DIGEST.to_owned(), manifest.to_owned()),
        (LAYER_DIGEST.to_owned(), layers[i].clone()),
        (IMAGE_LAYERS.to_owned(), layers[i..].join(",")),
    ])
}

/// The manifest of `reference` as the registry stores it: its digest and its layers
/// (digest, media type, size).
async fn manifest_of(reference: &str) -> (String, Vec<(String, String, u64)>) {
    let client = RegistryClient::new(RegistryOptions {
        plain_http: true,
        ..RegistryOptions::default()
    })
    .unwrap();
    let fetched = client
        .manifest(&reference.parse().unwrap(), &[])
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&fetched.bytes).unwrap();
    let layers = json["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| {
            (
                layer["digest"].as_str().unwrap().to_owned(),
                layer["mediaType"].as_str().unwrap().to_owned(),
                layer["size"].as_u64().unwrap(),
            )
        })
        .collect();
    (fetched.digest.to_string(), layers)
}

/// The unpacker's Prepare of each layer of `reference`, bottom first, with CRI's labels: each
/// must be answered "already exists" and leave the layer committed on its parent.
async fn prepare_layers(
    snapshots: &mut Snapshots,
    snapshotter: &Daemon,
    reference: &str,
    manifest: &str,
    digests: &[String],
) -> Vec<String> {
    let chain = chain_ids(digests);
    for i in 0..digests.len() {
        let parent = if i == 0 { "" } else { chain[i - 1].as_str() };
        let labels = cri_labels(reference, manifest, digests, &chain, i);
        let key = format!("extract-{i} {}", chain[i]);
        let status = snapshots.prepare(&key, parent, labels).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::AlreadyExists,
            "layer {i}: {status:?}\n{}",
            snapshotter.log_text()
        );
        let (kind, stat_parent) = snapshots.stat(&chain[i]).await.unwrap();
        assert_eq!((kind, stat_parent.as_str()), (Kind::Committed, parent));
    }
    chain
}

/// Removes the container snapshot and the image's layers through containerd, then makes
/// containerd's garbage collector remove them from the snapshotter now (deleting a lease with
/// `--sync`; snapshot removals alone only schedule a collection). Waits for the unmount.
fn remove_all(
    runtime: &tokio::runtime::Runtime,
    containerd: &Containerd,
    snapshotter: &Daemon,
    socket: &Path,
    mountpoint: &Path,
    keys: &[&str],
) {
    runtime.block_on(async {
        let mut snapshots = Snapshots::connect(containerd).await;
        for key in keys {
            // Unreferenced snapshots (no image, no lease) may already be collected: containerd
            // schedules a collection after any removal, such as the ordinary image's.
            match snapshots.remove(key).await {
                Ok(()) => {}
                Err(status) if status.code() == Code::NotFound => {}
                Err(status) => panic!("remove {key}: {status:?}"),
            }
        }
    });
    // The snapshots are removed: the lease that kept them from the collector goes too.
    containerd.ctr_ok(&["leases", "delete", LEASE]).unwrap();
    containerd
        .ctr_ok(&["leases", "create", "--id", "collect-now"])
        .unwrap();
    containerd
        .ctr_ok(&["leases", "delete", "--sync", "collect-now"])
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || !is_mounted(mountpoint)),
        "still mounted\n{}\n{}",
        snapshotter.log_text(),
        containerd.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(30), || common::walk_blocking(socket)
            .is_ok_and(|infos| infos.is_empty())),
        "snapshots left: {:#?}",
        common::walk_blocking(socket)
    );
    let log = snapshotter.log_text();
    assert!(log.contains("lazy image unmounted"), "{log}");
    assert!(!mountpoint.exists());
    assert!(!log.contains("ERROR"), "{log}");
}

/// Unmounts (lazily) whatever the test mounted, even when it fails half way.
struct Unmount(Vec<PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for path in &self.0 {
            if is_mounted(path) {
                let _ = Command::new("umount").arg("-l").arg(path).status();
            }
        }
    }
}

/// Mounts `mounts` (one overlay, as containerd would) on `target`.
fn mount_overlay(mounts: &[Mount], target: &Path) {
    let [mount] = mounts else {
        panic!("expected one mount: {mounts:?}")
    };
    assert_eq!(mount.r#type, "overlay", "{mount:?}");
    fs::create_dir_all(target).unwrap();
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &mount.options.join(",")])
        .arg(target)
        .status()
        .unwrap();
    assert!(status.success(), "mount {mount:?}");
}

/// A snapshotter providing nydus-fs images lazily (reading through `dfdaemon`), a
/// containerd using it, and what a test needs to know of `reference`'s lazy mount.
struct Lazy {
    snapshotter: Daemon,
    socket: PathBuf,
    containerd: Containerd,
    /// Where a test mounts a container's overlay.
    rootfs: PathBuf,
    runtime: tokio::runtime::Runtime,
    manifest: String,
    /// (digest, media type, size) of the image's layers.
    layers: Vec<(String, String, u64)>,
    digests: Vec<String>,
    mountpoint: PathBuf,
    /// Unmounts the container's overlay, then the lazy mount, if a test fails half way.
    _unmount: Unmount,
}

impl Lazy {
    fn start(dir: &Path, registry: &TestRegistry, dfdaemon: &str, reference: &str) -> Self {
        let (snapshotter, root, socket) = common::spawn_nydus(dir, registry, dfdaemon);
        let containerd = Containerd::builder()
            .proxy_snapshotter(common::NAME, &socket)
            .snapshotter(common::NAME)
            .start()
            .unwrap();
        let rootfs = dir.join("rootfs");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (manifest, layers) = runtime.block_on(manifest_of(reference));
        let digests: Vec<String> = layers.iter().map(|(d, _, _)| d.clone()).collect();
        let mountpoint = root
            .join("mnt")
            .join(manifest.trim_start_matches("sha256:"));
        Self {
            snapshotter,
            socket,
            containerd,
            _unmount: Unmount(vec![rootfs.clone(), mountpoint.clone()]),
            rootfs,
            runtime,
            manifest,
            layers,
            digests,
            mountpoint,
        }
    }
}

#[test]
fn a_nydus_image_pulled_with_cri_labels_is_provided_from_one_lazy_mount() {
    if !fuse_available("a_nydus_image_pulled_with_cri_labels_is_provided_from_one_lazy_mount") {
        return;
    }
    let registry = TestRegistry::start();
    // Random data beside the small files: the reads below need a few MiB of it.
    let image = LayeredImage::rich(LARGE).unwrap();
    let (ordinary, reference) = image.push_converted(&registry, "lazy/rich", &[]).unwrap();
    let ordinary_ref = format!("{}/lazy/rich:src", registry.host());

    let dir = tempfile::tempdir().unwrap();
    // Port 9 (discard) on loopback: nothing listens, so the probe fails at once.
    let Lazy {
        snapshotter,
        socket,
        containerd,
        rootfs,
        runtime,
        manifest,
        layers,
        digests,
        mountpoint,
        _unmount,
    } = Lazy::start(dir.path(), &registry, "http://127.0.0.1:9", &reference);
    assert!(
        layers
            .iter()
            .any(|(_, media_type, _)| media_type == nydus_fs::media::BOOTSTRAP)
    );

    let chain = runtime.block_on(async {
        let mut snapshots = Snapshots::connect(&containerd).await;

        // The unpacker's Prepare of each layer, bottom first: "already exists" every time.
        let chain = prepare_layers(
            &mut snapshots,
            &snapshotter,
            &reference,
            &manifest,
            &digests,
        )
        .await;
        // Mounted once for the whole image.
        assert!(is_mounted(&mountpoint), "{}", snapshotter.log_text());
        assert_eq!(
            snapshotter.log_text().matches("lazy image mounted").count(),
            1
        );
        assert!(
            snapshotter.log_text().contains("dfdaemon unreachable"),
            "{}",
            snapshotter.log_text()
        );

        // A container on the image: an overlay on the mount, serving the image's files.
        let top = chain.last().unwrap();
        let mounts = snapshots
            .prepare("container-1", top, HashMap::new())
            .await
            .unwrap();
        let lowerdir = format!("lowerdir={}", mountpoint.display());
        assert!(
            mounts[0].options.contains(&lowerdir),
            "{mounts:?} has no {lowerdir}"
        );
        mount_overlay(&mounts, &rootfs);
        // Every small file (RICH_SMALL_PATH among them).
        let small: Vec<(&String, &Vec<u8>)> = image
            .tree
            .iter()
            .filter_map(|(path, entry)| Some((path, entry.content.as_ref()?)))
            .filter(|(path, content)| path.as_str() != RICH_LARGE_PATH && content.len() < 65536)
            .collect();
        assert!(
            small
                .iter()
                .any(|(path, _)| path.as_str() == RICH_SMALL_PATH)
        );
        for (path, expected) in small {
            let seen = fs::read(rootfs.join(path.trim_start_matches('/'))).unwrap();
            assert_eq!(&seen, expected, "{path}");
        }
        // 4 KiB from the middle of the large file (the mount widens the read to a few MiB).
        let large_path = rootfs.join(RICH_LARGE_PATH.trim_start_matches('/'));
        assert_eq!(fs::metadata(&large_path).unwrap().len(), LARGE as u64);
        let mut slice = vec![0; 4096];
        let mut file = fs::File::open(&large_path).unwrap();
        file.seek(SeekFrom::Start(LARGE as u64 / 2)).unwrap();
        file.read_exact(&mut slice).unwrap();
        drop(file);
        let expected = image.tree[RICH_LARGE_PATH].content.as_ref().unwrap();
        assert!(slice == expected[LARGE / 2..LARGE / 2 + 4096]);
        // Writes land in the container's layer, not in the image.
        fs::write(rootfs.join("written.txt"), b"mine").unwrap();
        assert!(!mountpoint.join("written.txt").exists());
        let status = Command::new("umount").arg(&rootfs).status().unwrap();
        assert!(status.success());

        // Only a small fraction of the data blobs left the registry.
        registry.sync_log();
        let data: Vec<_> = layers
            .iter()
            .filter(|(_, media_type, _)| media_type == nydus_fs::media::BLOB)
            .collect();
        let total: u64 = data.iter().map(|(_, _, size)| size).sum();
        let served: u64 = data
            .iter()
            .map(|(digest, _, _)| registry.blob_bytes_served(digest))
            .sum();
        eprintln!("data blobs: {served} of {total} bytes served by the registry");
        assert!(total > LARGE as u64, "{total}");
        assert!(served * 10 < total, "{served} of {total} bytes");

        // An ordinary image with the same labels: unpacked as before (an empty active snapshot).
        let (ordinary_manifest, ordinary_layers) = manifest_of(&ordinary_ref).await;
        let ordinary_digests: Vec<String> =
            ordinary_layers.iter().map(|(d, _, _)| d.clone()).collect();
        assert_eq!(ordinary_digests, ordinary.layer_digests);
        let ordinary_chain = chain_ids(&ordinary_digests);
        let labels = cri_labels(
            &ordinary_ref,
            &ordinary_manifest,
            &ordinary_digests,
            &ordinary_chain,
            0,
        );
        let key = format!("extract-o {}", ordinary_chain[0]);
        let mounts = snapshots.prepare(&key, "", labels).await.unwrap();
        assert_eq!(mounts[0].r#type, "bind", "{mounts:?}");
        snapshots.remove(&key).await.unwrap();

        chain
    });
    // Removing the image's snapshots (children first) unmounts it, once the last is gone.
    let mut keys = vec!["container-1"];
    keys.extend(chain.iter().rev().map(String::as_str));
    remove_all(
        &runtime,
        &containerd,
        &snapshotter,
        &socket,
        &mountpoint,
        &keys,
    );
    drop(containerd);
    let mut snapshotter = snapshotter;
    snapshotter.terminate(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_lazy_mount_reads_through_dfdaemon_when_it_answers() {
    if !fuse_available("a_lazy_mount_reads_through_dfdaemon_when_it_answers") {
        return;
    }
    let registry = TestRegistry::start();
    let image = LayeredImage::rich(4 << 20).unwrap();
    let (_, reference) = image
        .push_converted(&registry, "lazy/mirrored", &[])
        .unwrap();
    // A plain caching mirror (no supernode): every blob it serves is its own fetch.
    let dfdaemon = Dfdaemon::builder().start();
    let blob_requests = |d: &Dfdaemon| {
        d.metric("damselfly_dfdaemon_requests_total", Some("kind=\"blob\""))
            .unwrap()
    };
    assert_eq!(blob_requests(&dfdaemon), 0.0);

    let dir = tempfile::tempdir().unwrap();
    let Lazy {
        snapshotter,
        socket,
        containerd,
        rootfs,
        runtime,
        manifest,
        layers: _,
        digests,
        mountpoint,
        _unmount,
    } = Lazy::start(dir.path(), &registry, &dfdaemon.url(), &reference);

    let chain = runtime.block_on(async {
        let mut snapshots = Snapshots::connect(&containerd).await;
        let chain = prepare_layers(
            &mut snapshots,
            &snapshotter,
            &reference,
            &manifest,
            &digests,
        )
        .await;
        let log = snapshotter.log_text();
        let via = format!("via=\"{}\"", dfdaemon.url());
        assert!(
            log.lines()
                .any(|line| line.contains("lazy image mounted") && line.contains(&via)),
            "{log}"
        );
        assert!(!log.contains("dfdaemon unreachable"), "{log}");
        let mounts = snapshots
            .prepare("container-1", chain.last().unwrap(), HashMap::new())
            .await
            .unwrap();
        mount_overlay(&mounts, &rootfs);
        let expected = image.tree[RICH_SMALL_PATH].content.as_ref().unwrap();
        let seen = fs::read(rootfs.join(RICH_SMALL_PATH.trim_start_matches('/'))).unwrap();
        assert_eq!(&seen, expected);
        let status = Command::new("umount").arg(&rootfs).status().unwrap();
        assert!(status.success());
        chain
    });
    // The bootstrap and the chunks read came through the mirror.
    assert!(
        blob_requests(&dfdaemon) >= 2.0,
        "{}",
        dfdaemon.metrics().unwrap()
    );

    let mut keys = vec!["container-1"];
    keys.extend(chain.iter().rev().map(String::as_str));
    remove_all(
        &runtime,
        &containerd,
        &snapshotter,
        &socket,
        &mountpoint,
        &keys,
    );
    drop(containerd);
    let mut snapshotter = snapshotter;
    snapshotter.terminate(Duration::from_secs(10)).unwrap();
}

/// The pid recorded in the mount's state file beside `mountpoint` (`<hex>.mount`).
fn recorded_pid(mountpoint: &Path) -> i32 {
    let state = mountpoint.with_extension("mount");
    let text = fs::read_to_string(&state).unwrap_or_else(|e| panic!("{}: {e}", state.display()));
    text.lines()
        .find_map(|line| line.strip_prefix("pid="))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text:?}"))
}

/// The snapshotter is SIGKILLed while a container runs on a lazy image and started again on
/// the same root: the container's tree keeps serving (the mount's process is separate), the
/// new process adopts the mount instead of mounting the image again (a second container gets
/// the same lower directory), and removing the image's snapshots then stops the adopted
/// process and unmounts the tree: nothing is left running or mounted.
#[test]
fn a_restarted_snapshotter_adopts_its_lazy_mount_and_still_unmounts_it() {
    if !fuse_available("a_restarted_snapshotter_adopts_its_lazy_mount_and_still_unmounts_it") {
        return;
    }
    let registry = TestRegistry::start();
    let image = LayeredImage::rich(4 << 20).unwrap();
    let (_, reference) = image
        .push_converted(&registry, "lazy/restart", &[])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let Lazy {
        mut snapshotter,
        socket,
        containerd,
        rootfs,
        runtime,
        manifest,
        layers: _,
        digests,
        mountpoint,
        _unmount,
    } = Lazy::start(dir.path(), &registry, "http://127.0.0.1:9", &reference);
    let small = rootfs.join(RICH_SMALL_PATH.trim_start_matches('/'));
    let expected = image.tree[RICH_SMALL_PATH].content.clone().unwrap();

    let chain = runtime.block_on(async {
        let mut snapshots = Snapshots::connect(&containerd).await;
        let chain = prepare_layers(
            &mut snapshots,
            &snapshotter,
            &reference,
            &manifest,
            &digests,
        )
        .await;
        let mounts = snapshots
            .prepare("container-1", chain.last().unwrap(), HashMap::new())
            .await
            .unwrap();
        mount_overlay(&mounts, &rootfs);
        assert_eq!(fs::read(&small).unwrap(), expected);
        chain
    });
    let pid = recorded_pid(&mountpoint);
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    // The snapshotter dies without a word and comes back on the same root.
    snapshotter.kill();
    let (restarted, _, _) = common::spawn_nydus(dir.path(), &registry, "http://127.0.0.1:9");
    let log = restarted.log_text();
    assert!(
        log.contains("lazy image adopted from an earlier run"),
        "{log}"
    );
    assert!(!log.contains("lazy image mounted"), "mounted again: {log}");
    assert_eq!(recorded_pid(&mountpoint), pid);
    // The running container's tree never stopped serving.
    assert_eq!(fs::read(&small).unwrap(), expected);

    runtime.block_on(async {
        let mut snapshots = Snapshots::connect(&containerd).await;
        // containerd reconnects to the new process (its client backs off after the old
        // connection broke, so the first calls may find it unavailable); a second container
        // shares the mount.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mounts = loop {
            match snapshots
                .prepare("container-2", chain.last().unwrap(), HashMap::new())
                .await
            {
                Err(status)
                    if status.code() == Code::Unavailable
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => break other.unwrap(),
            }
        };
        let lowerdir = format!("lowerdir={}", mountpoint.display());
        assert!(mounts[0].options.contains(&lowerdir), "{mounts:?}");
    });
    assert!(!restarted.log_text().contains("lazy image mounted"));
    let status = Command::new("umount").arg(&rootfs).status().unwrap();
    assert!(status.success());

    let mut keys = vec!["container-2", "container-1"];
    keys.extend(chain.iter().rev().map(String::as_str));
    remove_all(
        &runtime,
        &containerd,
        &restarted,
        &socket,
        &mountpoint,
        &keys,
    );
    // The adopted process was stopped, not left behind.
    assert!(
        wait_until(Duration::from_secs(10), || !Path::new(&format!(
            "/proc/{pid}/cmdline"
        ))
        .exists()
            || fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.is_empty())),
        "nydus-fs {pid} still runs"
    );
    assert!(!mountpoint.with_extension("mount").exists());
    drop(containerd);
    let mut restarted = restarted;
    restarted.terminate(Duration::from_secs(10)).unwrap();
}
