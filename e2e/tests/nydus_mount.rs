//! `nydus-fs mount` of images in a real `docker-registry`: the mounted tree against the same
//! image unpacked by containerd, the fraction of blob bytes one small read costs, a remount
//! from the chunk cache without data requests, and a recorded trace used as a prefetch list.
//!
//! These need root, `/dev/fuse` and containerd (CI has all three).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use damselfly_e2e::{
    Containerd, LayeredImage, NydusMount, RICH_LARGE_PATH, RICH_SMALL_PATH, TestRegistry,
    fuse_available, mount_stat, nydus_convert, sha256_digest, wait_until, write_hosts_toml,
};

/// Digests and total size of the nydus data blobs of `repo:tag`.
fn data_blobs(registry: &TestRegistry, repo: &str, tag: &str) -> (Vec<String>, u64) {
    let manifest = registry.manifest_json(repo, tag).unwrap();
    let data: Vec<&serde_json::Value> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["mediaType"] == nydus_fs::media::BLOB)
        .collect();
    (
        data.iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect(),
        data.iter().map(|l| l["size"].as_u64().unwrap()).sum(),
    )
}

/// Successful GETs of any of `digests` in the registry's log so far, and their bytes.
fn data_gets(registry: &TestRegistry, digests: &[String]) -> (usize, u64) {
    let log = registry.access_log();
    let gets: Vec<_> = log
        .iter()
        .filter(|e| e.method == "GET" && e.is_success() && digests.iter().any(|d| e.is_blob(d)))
        .collect();
    (gets.len(), gets.iter().map(|e| e.bytes).sum())
}

/// What a user would compare of one path: kind, mode, owner, size, mtime, content digest, link
/// target, xattrs.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    sha256: Option<String>,
    target: Option<PathBuf>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Every path under `root` (relative, `/`-rooted), and the groups of paths sharing an inode.
fn walk(root: &Path) -> (BTreeMap<String, Seen>, Vec<Vec<String>>) {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let rel = format!("/{}", path.strip_prefix(root).unwrap().display());
            let m = fs::symlink_metadata(&path).unwrap();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                stack.push(path.clone());
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_fifo() {
                "fifo"
            } else if ft.is_char_device() {
                "chardev"
            } else {
                "file"
            };
            if kind == "file" {
                inodes.entry(m.ino()).or_default().push(rel.clone());
            }
            let xattrs = xattr::list(&path)
                .unwrap()
                .filter(|n| !n.as_bytes().starts_with(b"trusted.overlay."))
                .map(|n| {
                    let v = xattr::get(&path, &n).unwrap().unwrap_or_default();
                    (n.as_bytes().to_vec(), v)
                })
                .collect();
            out.insert(
                rel,
                Seen {
                    kind,
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    size: if kind == "dir" { 0 } else { m.size() },
                    // Directory times of an unpacked tree record when a later layer's
                    // whiteout was applied, not the image's time: compare them for the rest.
                    mtime: if kind == "dir" { 0 } else { m.mtime() },
                    sha256: (kind == "file").then(|| sha256_digest(&fs::read(&path).unwrap())),
                    target: (kind == "symlink").then(|| fs::read_link(&path).unwrap()),
                    xattrs,
                },
            );
        }
    }
    let links = inodes.into_values().filter(|v| v.len() > 1).collect();
    (out, links)
}

#[test]
fn mounted_image_equals_containerd_unpack_and_one_small_read_fetches_little() {
    if !fuse_available("mounted_image_equals_containerd_unpack") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start();
    let image = LayeredImage::rich(32 << 20).unwrap();
    let (_, nydus) = image
        .push_converted(&registry, "lazy/rich", &["--chunk-size", "64KiB"])
        .unwrap();
    let (data, data_bytes) = data_blobs(&registry, "lazy/rich", "nydus");
    let mp = tmp.path().join("lazy");
    let m = NydusMount::start(&nydus, &mp, &["--plain-http", "--fetch-size", "64KiB"]).unwrap();

    // One small file: a chunk or so of the blobs, not the image.
    assert_eq!(
        fs::read(mp.join(RICH_SMALL_PATH.trim_start_matches('/'))).unwrap(),
        b"nydus\n"
    );
    let (gets, bytes) = data_gets(&registry, &data);
    assert!(gets >= 1, "the read went to the registry");
    assert!(
        bytes * 100 < data_bytes,
        "reading {RICH_SMALL_PATH} fetched {bytes} of {data_bytes} blob bytes"
    );

    // The ordinary way: containerd pulls and unpacks the source image.
    let containerd = Containerd::start().unwrap();
    let hosts = tmp.path().join("hosts");
    write_hosts_toml(&hosts, &registry.host(), "", Some(&registry.url())).unwrap();
    let source = format!("{}/lazy/rich:src", registry.host());
    let out = containerd.pull(&source, &hosts).unwrap();
    assert!(
        out.status.success(),
        "{}",
        damselfly_e2e::describe_output(&out)
    );
    let unpacked = tmp.path().join("unpacked");
    fs::create_dir_all(&unpacked).unwrap();
    containerd
        .ctr_ok(&[
            "images",
            "mount",
            "--snapshotter",
            containerd.snapshotter(),
            &source,
            unpacked.to_str().unwrap(),
        ])
        .unwrap();
    let (expected, expected_links) = walk(&unpacked);
    let _ = containerd.ctr(&["images", "unmount", unpacked.to_str().unwrap()]);
    let (got, got_links) = walk(&mp);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "same paths"
    );
    for (path, want) in &expected {
        assert_eq!(&got[path], want, "{path}");
    }
    assert_eq!(got_links, expected_links, "same hard links");
    assert!(
        got.values().any(|s| !s.xattrs.is_empty()),
        "the image has an xattr"
    );
    assert!(got.values().any(|s| s.kind == "fifo"));
    assert!(got.values().any(|s| s.kind == "symlink"));
    assert!(!got_links.is_empty());

    let (ok, log) = m.stop().unwrap();
    assert!(ok, "{log}");
    assert_eq!(mount_stat(&log, "failed_reads"), Some(0), "{log}");
}

#[test]
fn remount_reads_cached_chunks_with_zero_data_requests() {
    if !fuse_available("remount_reads_cached_chunks_with_zero_data_requests") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start();
    let image = LayeredImage::rich(4 << 20).unwrap();
    let (_, nydus) = image.push_converted(&registry, "lazy/cached", &[]).unwrap();
    let (data, _) = data_blobs(&registry, "lazy/cached", "nydus");
    let mp = tmp.path().join("lazy");
    let cache = tmp.path().join("cache");
    let args = ["--plain-http", "--cache-dir", cache.to_str().unwrap()];

    let m = NydusMount::start(&nydus, &mp, &args).unwrap();
    let (first, _) = walk(&mp);
    m.stop().unwrap();
    let (gets_before, _) = data_gets(&registry, &data);
    assert!(gets_before > 0);

    let m = NydusMount::start(&nydus, &mp, &args).unwrap();
    let (second, _) = walk(&mp);
    let (ok, log) = m.stop().unwrap();
    assert!(ok, "{log}");
    assert_eq!(first, second, "same tree and contents from the cache");
    assert_eq!(
        data_gets(&registry, &data).0,
        gets_before,
        "no data blob request on the remount"
    );
    assert_eq!(mount_stat(&log, "requests"), Some(0), "{log}");
}

#[test]
fn recorded_trace_becomes_a_background_prefetch() {
    if !fuse_available("recorded_trace_becomes_a_background_prefetch") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start();
    let image = LayeredImage::rich(8 << 20).unwrap();
    let (_, nydus) = image
        .push_converted(&registry, "lazy/app", &["--chunk-size", "64KiB"])
        .unwrap();
    let mp = tmp.path().join("lazy");
    let trace = tmp.path().join("trace.txt");

    // A "start-up run": the app reads the large file, then the small one.
    let m = NydusMount::start(
        &nydus,
        &mp,
        &["--plain-http", "--record-trace", trace.to_str().unwrap()],
    )
    .unwrap();
    fs::read(mp.join(RICH_LARGE_PATH.trim_start_matches('/'))).unwrap();
    fs::read(mp.join(RICH_SMALL_PATH.trim_start_matches('/'))).unwrap();
    m.stop().unwrap();
    assert_eq!(
        fs::read_to_string(&trace).unwrap(),
        format!("{RICH_LARGE_PATH}\n{RICH_SMALL_PATH}\n")
    );

    // Stored in the image, fetched in the background at the next mount.
    let source = format!("{}/lazy/app:src", registry.host());
    let prefetched = format!("{}/lazy/app:prefetched", registry.host());
    nydus_convert(
        &source,
        &prefetched,
        &[
            "--chunk-size",
            "64KiB",
            "--prefetch",
            trace.to_str().unwrap(),
        ],
        &[],
    );
    let (data, _) = data_blobs(&registry, "lazy/app", "prefetched");
    let cache = tmp.path().join("cache");
    let m = NydusMount::start(
        &prefetched,
        &mp,
        &["--plain-http", "--cache-dir", cache.to_str().unwrap()],
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || m
            .log_text()
            .contains("prefetch finished")),
        "{}",
        m.log_text()
    );
    let (gets, _) = data_gets(&registry, &data);
    assert!(gets > 0, "the prefetch fetched data");
    // Now the start-up reads cost nothing.
    fs::read(mp.join(RICH_LARGE_PATH.trim_start_matches('/'))).unwrap();
    fs::read(mp.join(RICH_SMALL_PATH.trim_start_matches('/'))).unwrap();
    assert_eq!(
        data_gets(&registry, &data).0,
        gets,
        "reads served from the cache"
    );
    let (ok, log) = m.stop().unwrap();
    assert!(ok, "{log}");
    assert!(log.contains("prefetching"), "{log}");
}
