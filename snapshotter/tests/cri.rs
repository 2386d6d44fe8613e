//! A nydus-fs image pulled through containerd 1.6's CRI plugin, as kubelet pulls it (the CRI
//! `ImageService.PullImage` over containerd's socket), with the snapshotter as the CRI
//! snapshotter and `disable_snapshot_annotations = false`; then a container of it run with
//! `ctr` (no CNI here, so no pod sandbox) and its output checked.
//!
//! Shown: containerd's own unpacker asks the snapshotter about every layer with CRI's labels,
//! every layer is provided from one lazy mount, no byte of the data blobs leaves the registry
//! during the pull, the container runs the image's files and its own command (from the image
//! config), and removing the image unmounts the tree.
//!
//! Needs root, /dev/fuse, containerd, runc and the `nydus-fs` binary; skipped (saying why)
//! otherwise.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use damselfly_e2e::{
    CRI_NAMESPACE, Containerd, TestImage, TestRegistry, describe_output as describe,
    fuse_available, is_mounted, nydus_convert, wait_until, write_hosts_toml,
};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{ImageSpec, PullImageRequest, RemoveImageRequest};
use tonic::transport::Channel;

const HELLO: &str = "hello from a lazily mounted image";

async fn cri_client(socket: &Path) -> ImageServiceClient<Channel> {
    damselfly_e2e::cri_image_client(socket).await.unwrap()
}

#[test]
fn a_nydus_image_pulled_through_cri_runs_from_its_lazy_mount() {
    if !fuse_available("a_nydus_image_pulled_through_cri_runs_from_its_lazy_mount") {
        return;
    }
    let registry = TestRegistry::start();
    let image = TestImage::busybox(HELLO, 4 << 20, 15).unwrap();
    registry
        .push_test_image("e2e/busybox", "1", &image)
        .unwrap();
    let host = registry.host();
    let reference = format!("{host}/e2e/busybox:nydus");
    nydus_convert(&format!("{host}/e2e/busybox:1"), &reference, &[], &[]);
    let manifest = registry.manifest_json("e2e/busybox", "nydus").unwrap();
    let data: Vec<(String, u64)> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["mediaType"] == nydus_fs::media::BLOB)
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_owned(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect();
    let layers = manifest["layers"].as_array().unwrap().len();

    let dir = tempfile::tempdir().unwrap();
    let (snapshotter, root, socket) = common::spawn_nydus(dir.path(), &registry, "");
    let hosts = dir.path().join("hosts");
    write_hosts_toml(&hosts, &host, "", Some(&registry.url())).unwrap();
    let containerd = Containerd::builder()
        .proxy_snapshotter(common::NAME, &socket)
        .snapshotter(common::NAME)
        .cri(&hosts)
        .start()
        .unwrap();
    let mnt = root.join("mnt");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut cri = cri_client(containerd.socket()).await;
        let request = PullImageRequest {
            image: Some(ImageSpec {
                image: reference.clone(),
                ..ImageSpec::default()
            }),
            ..PullImageRequest::default()
        };
        let pulled = cri.pull_image(request).await;
        assert!(
            pulled.is_ok(),
            "{pulled:?}\n{}\n{}",
            containerd.log_text(),
            snapshotter.log_text()
        );
    });
    let log = snapshotter.log_text();
    assert_eq!(log.matches("lazy image mounted").count(), 1, "{log}");
    assert_eq!(
        log.matches("layer provided remotely").count(),
        layers,
        "{log}"
    );
    // containerd fetched no data blob (only the manifest and config); the mount only the
    // bootstrap so far.
    registry.sync_log();
    for (digest, _) in &data {
        assert_eq!(registry.blob_bytes_served(digest), 0, "{digest}");
    }

    // A container of the image: its files, and its own command from the image config.
    let run = containerd
        .run_in(
            CRI_NAMESPACE,
            &reference,
            "lazy-cat",
            &["cat", "/etc/damselfly/hello.txt"],
        )
        .unwrap();
    assert!(run.status.success(), "run failed: {}", describe(&run));
    assert_eq!(String::from_utf8_lossy(&run.stdout), image.hello);
    let run = containerd
        .run_in(CRI_NAMESPACE, &reference, "lazy-default", &[])
        .unwrap();
    assert!(run.status.success(), "run failed: {}", describe(&run));
    assert_eq!(String::from_utf8_lossy(&run.stdout), HELLO);
    registry.sync_log();
    let served: u64 = data
        .iter()
        .map(|(digest, _)| registry.blob_bytes_served(digest))
        .sum();
    let total: u64 = data.iter().map(|(_, size)| size).sum();
    eprintln!("data blobs: {served} of {total} bytes served by the registry");
    assert!(served < total, "{served} of {total}");

    // Removing the image (CRI) and collecting (a lease deleted with --sync) unmounts it.
    runtime.block_on(async {
        let mut cri = cri_client(containerd.socket()).await;
        let request = RemoveImageRequest {
            image: Some(ImageSpec {
                image: reference.clone(),
                ..ImageSpec::default()
            }),
        };
        cri.remove_image(request).await.unwrap();
    });
    containerd
        .ctr_ok(&["leases", "create", "--id", "collect-now"])
        .unwrap();
    containerd
        .ctr_ok(&["leases", "delete", "--sync", "collect-now"])
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || {
            fs::read_dir(&mnt).is_ok_and(|entries| {
                entries
                    .filter_map(Result::ok)
                    .all(|e| !is_mounted(&e.path()))
            })
        }),
        "still mounted\n{}",
        snapshotter.log_text()
    );
    let log = snapshotter.log_text();
    assert!(log.contains("lazy image unmounted"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
    drop(containerd);
    let mut snapshotter = snapshotter;
    snapshotter.terminate(Duration::from_secs(10)).unwrap();
}
