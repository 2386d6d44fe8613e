//! `nydus-fs mount` over real FUSE (`/dev/fuse`), on OCI layouts built here: contents and
//! metadata, single-flight fetching, corrupt chunks, tampered and truncated bootstraps, the
//! chunk cache across remounts, the access trace and SIGTERM.
//!
//! These need root and `/dev/fuse` (CI has both); elsewhere they say so and pass.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs::{self, File};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{blob_path, header, noise, put_blob, read_json, run, target_manifest, text};
use damselfly_e2e::{NydusMount, fuse_available, is_mounted, mount_stat};
use nydus_fs::{Digest, bootstrap};
use serde_json::json;

const BIG: usize = 3 * 1024 * 1024 + 1234;

fn makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

/// Layer 0 (gzip): /etc/small, /etc/gone, /big, /sparse, /empty, /link -> big, /hard (hard
/// link to /etc/small), /fifo, /null (char 1:3), an xattr on /big. Layer 1: deletes /etc/gone,
/// adds /etc/new. Chunk size 64 KiB.
fn build(dir: &Path) -> (PathBuf, PathBuf) {
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    let mut l0 = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Directory, 0o750, 0);
    l0.append_data(&mut h, "etc/", &[][..]).unwrap();
    let mut h = header(tar::EntryType::Regular, 0o640, 12);
    h.set_uid(1234);
    h.set_gid(5678);
    l0.append_data(&mut h, "etc/small", &b"hello small\n"[..])
        .unwrap();
    common::file(&mut l0, "etc/gone", b"deleted by layer 1");
    l0.append_pax_extensions([("SCHILY.xattr.user.color", &b"blue"[..])])
        .unwrap();
    let big = noise(7, BIG);
    let mut h = header(tar::EntryType::Regular, 0o755, BIG as u64);
    l0.append_data(&mut h, "big", &big[..]).unwrap();
    let mut sparse = vec![0u8; 8 * 65536];
    sparse[3 * 65536 + 17] = 9;
    common::file(&mut l0, "sparse", &sparse);
    common::file(&mut l0, "empty", b"");
    common::special(&mut l0, tar::EntryType::Symlink, "link", "big");
    common::special(&mut l0, tar::EntryType::Link, "hard", "etc/small");
    let mut h = header(tar::EntryType::Fifo, 0o600, 0);
    l0.append_data(&mut h, "fifo", &[][..]).unwrap();
    let mut h = header(tar::EntryType::Char, 0o666, 0);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    l0.append_data(&mut h, "null", &[][..]).unwrap();
    let l0 = l0.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &l0).unwrap();
    let l0 = gz.finish().unwrap();

    let mut l1 = tar::Builder::new(Vec::new());
    common::file(&mut l1, "etc/.wh.gone", b"");
    common::file(&mut l1, "etc/new", b"new in layer 1\n");
    let l1 = l1.into_inner().unwrap();

    common::write_layout(&src, &[(l0, true), (l1, false)], "v1");
    let out = run(&[
        "convert",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--chunk-size",
        "64KiB",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    (src, dst)
}

fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    xattr::get(path, name).unwrap()
}

fn manifest_and_tree(dst: &Path) -> (serde_json::Value, PathBuf, nydus_fs::Tree) {
    let manifest = target_manifest(dst);
    let boot = manifest["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let root = boot["annotations"]["io.damselfly.nydus.root"]
        .as_str()
        .unwrap();
    let root = Digest(hex::decode(&root[7..]).unwrap().try_into().unwrap());
    let path = blob_path(dst, boot["digest"].as_str().unwrap());
    let tree = bootstrap::decode(&fs::read(&path).unwrap(), &root).unwrap();
    (manifest, path, tree)
}

/// Replaces the bootstrap blob with `bytes`, fixing the manifest and index digests so that
/// only the merkle root annotation can tell.
/// The distinct chunks of the file at `path` in the converted image at `dst`.
fn distinct_chunks(dst: &Path, path: &[u8]) -> std::collections::HashSet<Digest> {
    let (_, _, tree) = manifest_and_tree(dst);
    let inode = tree.inode(tree.lookup(path).unwrap()).unwrap();
    inode.chunks.iter().map(|c| c.digest).collect()
}

fn replace_bootstrap(dst: &Path, bytes: &[u8]) {
    let mut manifest = target_manifest(dst);
    let n = manifest["layers"].as_array().unwrap().len();
    manifest["layers"][n - 1]["digest"] = json!(put_blob(dst, bytes));
    manifest["layers"][n - 1]["size"] = json!(bytes.len());
    let m = serde_json::to_vec(&manifest).unwrap();
    let index_path = dst.join("index.json");
    let mut index = read_json(&index_path);
    index["manifests"][0]["digest"] = json!(put_blob(dst, &m));
    index["manifests"][0]["size"] = json!(m.len());
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn mounted_tree_has_the_image_contents_and_metadata() {
    if !fuse_available("mounted_tree_has_the_image_contents_and_metadata") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, dst) = build(tmp.path());
    let mp = tmp.path().join("mnt");
    let m = NydusMount::start(dst.to_str().unwrap(), &mp, &[]).unwrap();

    let mut names: Vec<String> = fs::read_dir(&mp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "big", "empty", "etc", "fifo", "hard", "link", "null", "sparse"
        ]
    );
    let mut etc: Vec<String> = fs::read_dir(mp.join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    etc.sort();
    assert_eq!(etc, ["new", "small"], "the whiteout deleted etc/gone");

    assert_eq!(fs::read(mp.join("big")).unwrap(), noise(7, BIG));
    assert_eq!(fs::read(mp.join("etc/new")).unwrap(), b"new in layer 1\n");
    let sparse = fs::read(mp.join("sparse")).unwrap();
    assert_eq!(sparse.len(), 8 * 65536);
    assert_eq!(sparse.iter().filter(|&&b| b != 0).count(), 1);
    assert_eq!(sparse[3 * 65536 + 17], 9);
    assert!(fs::read(mp.join("empty")).unwrap().is_empty());
    // A read at an offset in the middle of a chunk, spanning two chunks.
    let mut f = File::open(mp.join("big")).unwrap();
    f.seek(SeekFrom::Start(65536 - 10)).unwrap();
    let mut buf = [0u8; 30];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf[..], &noise(7, BIG)[65526..65556]);

    let small = fs::symlink_metadata(mp.join("etc/small")).unwrap();
    // /hard's link entry (0777, 1000:1000) set the shared inode's mode and owner, as containerd
    // does when it unpacks.
    assert_eq!(small.mode() & 0o7777, 0o777);
    assert_eq!((small.uid(), small.gid()), (1000, 1000));
    assert_eq!(small.size(), 12);
    assert_eq!(small.mtime(), 1_700_000_000);
    assert_eq!(small.nlink(), 2);
    let hard = fs::symlink_metadata(mp.join("hard")).unwrap();
    assert_eq!(hard.ino(), small.ino(), "hard links share an inode");
    assert_eq!(fs::read(mp.join("hard")).unwrap(), b"hello small\n");
    assert_eq!(
        fs::read_link(mp.join("link")).unwrap(),
        PathBuf::from("big")
    );
    assert!(
        fs::symlink_metadata(mp.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let null = fs::symlink_metadata(mp.join("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    assert_eq!(
        fs::symlink_metadata(mp.join("etc")).unwrap().mode() & 0o7777,
        0o750
    );
    assert_eq!(
        getxattr(&mp.join("big"), "user.color").as_deref(),
        Some(&b"blue"[..])
    );
    assert_eq!(getxattr(&mp.join("etc/small"), "user.color"), None);

    // Read-only: no writes, no new files.
    assert!(fs::write(mp.join("etc/small"), b"x").is_err());
    assert!(fs::write(mp.join("newfile"), b"x").is_err());

    let (ok, log) = m.stop().unwrap();
    assert!(ok, "{log}");
    assert!(!is_mounted(&mp), "SIGTERM unmounts");
    assert!(log.contains("unmounted"), "{log}");
}

#[test]
fn concurrent_readers_fetch_each_chunk_once() {
    if !fuse_available("concurrent_readers_fetch_each_chunk_once") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, dst) = build(tmp.path());
    let distinct = distinct_chunks(&dst, b"big");
    let mp = tmp.path().join("mnt");
    // One chunk per request, so eight readers race for every chunk (and no other file's chunks
    // come along after the last one).
    let m = NydusMount::start(
        dst.to_str().unwrap(),
        &mp,
        &["--fetch-size", "64KiB", "--fetch-neighbours", "0"],
    )
    .unwrap();
    let expected = noise(7, BIG);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| assert!(fs::read(mp.join("big")).unwrap() == expected));
        }
    });
    let (ok, log) = m.stop().unwrap();
    assert!(ok, "{log}");
    assert_eq!(
        mount_stat(&log, "chunks_fetched").unwrap(),
        distinct.len() as u64,
        "{log}"
    );
    assert_eq!(
        mount_stat(&log, "requests").unwrap(),
        distinct.len() as u64,
        "{log}"
    );
    assert_eq!(mount_stat(&log, "failed_reads").unwrap(), 0);
}

#[test]
fn corrupt_chunk_reads_as_eio_and_check_names_it() {
    if !fuse_available("corrupt_chunk_reads_as_eio_and_check_names_it") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, dst) = build(tmp.path());
    let (_, _, tree) = manifest_and_tree(&dst);
    let big = tree.inode(tree.lookup(b"big").unwrap()).unwrap();
    let bad_chunk = big.chunks[5];
    let blob = blob_path(&dst, &tree.blobs[bad_chunk.blob_index as usize].to_string());
    let mut bytes = fs::read(&blob).unwrap();
    bytes[(bad_chunk.compressed_offset + u64::from(bad_chunk.compressed_size) / 2) as usize] ^=
        0x10;
    fs::write(&blob, &bytes).unwrap();

    let mp = tmp.path().join("mnt");
    let m = NydusMount::start(dst.to_str().unwrap(), &mp, &["--fetch-size", "64KiB"]).unwrap();
    let err = fs::read(mp.join("big")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "EIO, got {err}");
    // The chunks before it are served, and correct.
    let expected = noise(7, BIG);
    let mut f = File::open(mp.join("big")).unwrap();
    let mut head = vec![0u8; 5 * 65536];
    f.read_exact(&mut head).unwrap();
    assert_eq!(head, expected[..5 * 65536]);
    // No byte of the bad chunk, even a read of one byte of it.
    let mut one = [0u8; 1];
    f.seek(SeekFrom::Start(5 * 65536 + 100)).unwrap();
    assert_eq!(f.read(&mut one).unwrap_err().raw_os_error(), Some(5));
    assert_eq!(fs::read(mp.join("etc/small")).unwrap(), b"hello small\n");
    let (_, log) = m.stop().unwrap();
    assert!(log.contains("is corrupt"), "{log}");
    assert!(log.contains(&bad_chunk.digest.to_string()), "{log}");
    assert!(log.contains("path=/big"), "{log}");

    let out = run(&["check", dst.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains(&format!("/big {} ", bad_chunk.file_offset))
            && text(&out).contains(&format!("want {}", bad_chunk.digest)),
        "{}",
        text(&out)
    );
}

#[test]
fn tampered_or_truncated_bootstrap_is_refused_at_mount() {
    if !fuse_available("tampered_or_truncated_bootstrap_is_refused_at_mount") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, dst) = build(tmp.path());
    let (_, _, mut tree) = manifest_and_tree(&dst);
    let id = tree.lookup(b"etc/small").unwrap();
    tree.inodes[id.0 as usize].mode ^= 0o001;
    let tampered = bootstrap::encode(&tree).unwrap();
    replace_bootstrap(&dst, &tampered);
    let mp = tmp.path().join("mnt");
    let err = NydusMount::start(dst.to_str().unwrap(), &mp, &[])
        .expect_err("refused")
        .to_string();
    assert!(err.contains("exit status: 1"), "{err}");
    assert!(
        err.contains("does not decode to the annotated root"),
        "{err}"
    );
    assert!(!is_mounted(&mp));

    let truncated = &tampered[..tampered.len() / 2];
    replace_bootstrap(&dst, truncated);
    let err = NydusMount::start(dst.to_str().unwrap(), &mp, &[])
        .expect_err("refused")
        .to_string();
    assert!(err.contains("truncated"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!is_mounted(&mp));
}

#[test]
fn concurrent_readers_load_each_cached_chunk_from_disk_once() {
    if !fuse_available("concurrent_readers_load_each_cached_chunk_from_disk_once") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, dst) = build(tmp.path());
    let distinct = distinct_chunks(&dst, b"big");
    let mp = tmp.path().join("mnt");
    let cache = tmp.path().join("cache");
    let args = ["--cache-dir", cache.to_str().unwrap()];
    let expected = noise(7, BIG);
    let m = NydusMount::start(dst.to_str().unwrap(), &mp, &args).unwrap();
    assert!(fs::read(mp.join("big")).unwrap() == expected);
    m.stop().unwrap();

    // From the disk cache, eight readers (and the kernel's readahead, several reads per chunk
    // at once) race for every chunk: each is read and checked from disk once, then served
    // from memory.
    let m = NydusMount::start(dst.to_str().unwrap(), &mp, &args).unwrap();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| assert!(fs::read(mp.join("big")).unwrap() == expected));
        }
    });
    let (ok, log) = m.stop().unwrap();
    assert!(ok, "{log}");
    assert_eq!(mount_stat(&log, "requests").unwrap(), 0, "{log}");
    assert_eq!(
        mount_stat(&log, "disk_hits").unwrap(),
        distinct.len() as u64,
        "{log}"
    );
}

#[test]
fn remount_reads_from_the_cache_with_zero_fetches() {
    if !fuse_available("remount_reads_from_the_cache_with_zero_fetches") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, dst) = build(tmp.path());
    let mp = tmp.path().join("mnt");
    let cache = tmp.path().join("cache");
    let args = ["--cache-dir", cache.to_str().unwrap()];
    let expected = noise(7, BIG);

    let m = NydusMount::start(dst.to_str().unwrap(), &mp, &args).unwrap();
    assert_eq!(fs::read(mp.join("big")).unwrap(), expected);
    assert_eq!(fs::read(mp.join("etc/small")).unwrap(), b"hello small\n");
    let (_, log) = m.stop().unwrap();
    assert!(mount_stat(&log, "requests").unwrap() > 0, "{log}");

    let m = NydusMount::start(dst.to_str().unwrap(), &mp, &args).unwrap();
    assert_eq!(fs::read(mp.join("big")).unwrap(), expected);
    assert_eq!(fs::read(mp.join("etc/small")).unwrap(), b"hello small\n");
    let (_, log) = m.stop().unwrap();
    assert_eq!(mount_stat(&log, "requests").unwrap(), 0, "{log}");
    assert!(mount_stat(&log, "disk_hits").unwrap() > 0, "{log}");

    // A damaged cache file is detected, dropped and fetched again.
    let (_, _, tree) = manifest_and_tree(&dst);
    let c = tree
        .inode(tree.lookup(b"etc/small").unwrap())
        .unwrap()
        .chunks[0];
    let hex = hex::encode(c.digest.0);
    let cached = cache.join("chunks").join(&hex[..2]).join(&hex);
    fs::write(&cached, b"HELLO SMALL\n").unwrap();
    let m = NydusMount::start(dst.to_str().unwrap(), &mp, &args).unwrap();
    assert_eq!(fs::read(mp.join("etc/small")).unwrap(), b"hello small\n");
    let (_, log) = m.stop().unwrap();
    assert_eq!(mount_stat(&log, "requests").unwrap(), 1, "{log}");
    assert!(log.contains("does not match its digest"), "{log}");
    assert_eq!(fs::read(&cached).unwrap(), b"hello small\n");
}

#[test]
fn trace_records_files_in_first_open_order() {
    if !fuse_available("trace_records_files_in_first_open_order") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, dst) = build(tmp.path());
    let mp = tmp.path().join("mnt");
    let trace = tmp.path().join("trace.txt");
    let m = NydusMount::start(
        dst.to_str().unwrap(),
        &mp,
        &["--record-trace", trace.to_str().unwrap()],
    )
    .unwrap();
    fs::read(mp.join("etc/small")).unwrap();
    fs::read(mp.join("big")).unwrap();
    fs::read(mp.join("hard")).unwrap(); // the same inode as etc/small
    fs::read(mp.join("etc/new")).unwrap();
    fs::read(mp.join("etc/small")).unwrap();
    fs::symlink_metadata(mp.join("sparse")).unwrap(); // a stat is not an open
    let (ok, log) = m.stop().unwrap();
    assert!(ok, "{log}");
    // A hard-linked file is recorded once, under its first name in breadth-first order.
    let text = fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(["/hard", "/etc/small"].contains(&lines[0]), "{text}");
    assert_eq!(lines[1..], ["/big", "/etc/new"]);
}

/// The documented way to run a container from a lazily mounted image (README, "Run a
/// container from a lazy image"): the mount as the read-only lower layer of an overlay, and
/// runc with a generated bundle.
#[test]
fn container_runs_from_the_mounted_image() {
    if !fuse_available("container_runs_from_the_mounted_image") {
        return;
    }
    if Command::new("runc").arg("--version").output().is_err() {
        eprintln!("skipping: runc is not installed (scripts/setup.sh installs it)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let busybox = fs::read("/bin/busybox").expect("busybox-static (scripts/setup.sh)");
    let mut layer = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    layer.append_data(&mut h, "bin/", &[][..]).unwrap();
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    h.set_uid(0);
    h.set_gid(0);
    layer
        .append_data(&mut h, "bin/busybox", &busybox[..])
        .unwrap();
    common::special(&mut layer, tar::EntryType::Symlink, "bin/sh", "busybox");
    for d in ["etc/", "tmp/", "proc/", "dev/", "sys/"] {
        let mut h = header(tar::EntryType::Directory, 0o1777, 0);
        layer.append_data(&mut h, d, &[][..]).unwrap();
    }
    common::file(&mut layer, "etc/greeting", b"hello from a lazy image\n");
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    common::write_layout(&src, &[(layer.into_inner().unwrap(), false)], "v1");
    let out = run(&["convert", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

    let lower = tmp.path().join("lower");
    let m = NydusMount::start(dst.to_str().unwrap(), &lower, &[]).unwrap();
    let bundle = tmp.path().join("bundle");
    let (upper, work, rootfs) = (
        tmp.path().join("upper"),
        tmp.path().join("work"),
        bundle.join("rootfs"),
    );
    for d in [&upper, &work, &rootfs] {
        fs::create_dir_all(d).unwrap();
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(st.success(), "overlay mount");
    let st = Command::new("runc")
        .arg("spec")
        .arg("--bundle")
        .arg(&bundle)
        .status()
        .unwrap();
    assert!(st.success(), "runc spec");
    let config_path = bundle.join("config.json");
    let mut config = read_json(&config_path);
    config["process"]["terminal"] = json!(false);
    config["process"]["args"] = json!([
        "/bin/sh",
        "-c",
        "cat /etc/greeting; echo written > /tmp/out; cat /tmp/out"
    ]);
    config["root"]["readonly"] = json!(false);
    fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let id = format!("nydus-test-{}", std::process::id());
    let out = Command::new("runc")
        .arg("run")
        .arg("--bundle")
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = Command::new("runc").args(["delete", "-f", &id]).status();
    let _ = Command::new("umount").arg(&rootfs).status();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "runc: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "hello from a lazy image\nwritten\n");
    // The write went to the overlay's upper layer; the image is untouched.
    assert_eq!(fs::read(upper.join("tmp/out")).unwrap(), b"written\n");
    assert!(!lower.join("tmp/out").exists());
    let (ok, log) = m.stop().unwrap();
    assert!(ok, "{log}");
}

/// Reading many small files one after another (a container start reading its configuration)
/// fetches them in one ranged request, not one per file; `--fetch-neighbours 0` turns that off.
#[test]
fn small_files_read_in_turn_share_one_request() {
    if !fuse_available("small_files_read_in_turn_share_one_request") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut layer = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    layer.append_data(&mut h, "conf/", &[][..]).unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("conf/{i:02}.yaml"), noise(100 + i, 3000)))
        .collect();
    for (path, data) in &files {
        common::file(&mut layer, path, data);
    }
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    common::write_layout(&src, &[(layer.into_inner().unwrap(), false)], "v1");
    let out = run(&["convert", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

    let mp = tmp.path().join("mnt");
    let read_all = |args: &[&str]| {
        let m = NydusMount::start(dst.to_str().unwrap(), &mp, args).unwrap();
        for (path, data) in &files {
            assert_eq!(&fs::read(mp.join(path)).unwrap(), data, "{path}");
        }
        let (ok, log) = m.stop().unwrap();
        assert!(ok, "{log}");
        assert_eq!(mount_stat(&log, "failed_reads"), Some(0), "{log}");
        mount_stat(&log, "requests").unwrap()
    };
    assert_eq!(read_all(&[]), 1, "the first read brings the other 19 files");
    assert_eq!(read_all(&["--fetch-neighbours", "0"]), 20, "one per file");
}
