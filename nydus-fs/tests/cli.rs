//! End-to-end tests of the `nydus-fs` binary on OCI image layouts built here.

// Test helpers outside `#[test]` functions panic on setup failures by design.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flate2::Compression;
use flate2::write::GzEncoder;
use nydus_fs::{Digest, bootstrap};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn put_blob(dir: &Path, data: &[u8]) -> String {
    let d = sha(data);
    fs::write(dir.join("blobs/sha256").join(&d[7..]), data).unwrap();
    d
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
    b.append_data(&mut h, path, data).unwrap();
}

fn special(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, target: &str) {
    let mut h = header(kind, 0o777, 0);
    b.append_link(&mut h, path, target).unwrap();
}

/// Pseudo-random bytes (no dedup, poor compression).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A 2-layer OCI layout: layer 0 gzip, layer 1 plain tar with a whiteout, a hard link, a
/// symlink, and a file duplicating layer 0's content. Returns (dir, layer digests).
fn build_source(dir: &Path) -> Vec<String> {
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();

    let mut l0 = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    l0.append_data(&mut h, "etc/", &[][..]).unwrap();
    file(&mut l0, "etc/unique", &noise(1, 10_000));
    file(&mut l0, "etc/gone", b"deleted by layer 1");
    file(&mut l0, "etc/shared", &noise(2, 8192));
    let mut sparse = vec![0u8; 3 * 4096];
    sparse[9000] = 7;
    file(&mut l0, "sparse", &sparse);
    let l0 = l0.into_inner().unwrap();
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&l0).unwrap();
    let l0 = gz.finish().unwrap();

    let mut l1 = tar::Builder::new(Vec::new());
    file(&mut l1, "etc/.wh.gone", b"");
    file(&mut l1, "copy", &noise(2, 8192));
    special(&mut l1, tar::EntryType::Link, "hard", "etc/unique");
    special(&mut l1, tar::EntryType::Symlink, "link", "etc/shared");
    let l1 = l1.into_inner().unwrap();

    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha(&l0), sha(&l1)]}
    }))
    .unwrap();
    let d0 = put_blob(dir, &l0);
    let d1 = put_blob(dir, &l1);
    let dc = put_blob(dir, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": dc, "size": config.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d0, "size": l0.len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d1, "size": l1.len()},
        ]
    }))
    .unwrap();
    let dm = put_blob(dir, &manifest);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": dm, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "v1"}
        }]
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    vec![d0, d1]
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_nydus-fs"))
        .args(args)
        .output()
        .unwrap();
    eprintln!(
        "$ nydus-fs {}\n-- exit {:?}\n-- stdout\n{}-- stderr\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256").join(&digest[7..])
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// The target's manifest.
fn target_manifest(dir: &Path) -> Value {
    let index = read_json(&dir.join("index.json"));
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "v1"
    );
    read_json(&blob_path(
        dir,
        index["manifests"][0]["digest"].as_str().unwrap(),
    ))
}

fn convert(src: &Path, dst: &Path) -> Output {
    run(&[
        "convert",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--chunk-size",
        "4KiB",
    ])
}

#[test]
fn convert_inspect_check_and_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    build_source(&src);
    let out = convert(&src, &dst);
    assert!(out.status.success());
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("files"), "{summary}");
    assert!(summary.contains("deduplicated"), "{summary}");

    let manifest = target_manifest(&dst);
    let layers = manifest["layers"].as_array().unwrap();
    let boot = layers.last().unwrap();
    assert_eq!(
        boot["mediaType"],
        "application/vnd.damselfly.nydus.bootstrap.v1"
    );
    assert_eq!(boot["annotations"]["io.damselfly.nydus.chunk-size"], "4096");
    assert_eq!(boot["annotations"]["io.damselfly.nydus.format"], "1");
    let root = boot["annotations"]["io.damselfly.nydus.root"]
        .as_str()
        .unwrap()
        .to_owned();
    for l in &layers[..layers.len() - 1] {
        assert_eq!(
            l["mediaType"],
            "application/vnd.damselfly.nydus.blob.v1+zstd"
        );
    }
    // The original config is copied.
    let config = manifest["config"]["digest"].as_str().unwrap();
    assert!(blob_path(&dst, config).exists());
    // No temporary files left behind.
    for e in fs::read_dir(dst.join("blobs/sha256")).unwrap() {
        let name = e.unwrap().file_name();
        assert!(!name.to_string_lossy().starts_with('.'), "{name:?}");
    }

    let out = run(&["inspect", dst.to_str().unwrap(), "--files"]);
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(listing.contains(&format!("root: {root}")), "{listing}");
    assert!(listing.contains("/link symlink 0777 1000:1000 10 -> etc/shared"));
    assert!(listing.contains("/hard file 0644 1000:1000 10000"));
    assert!(listing.contains("(hard link to "));
    assert!(!listing.contains("/etc/gone"));
    assert!(listing.contains("/etc/unique file 0644 1000:1000 10000"));

    let out = run(&["check", dst.to_str().unwrap(), "--tag", "v1"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: "));

    // Corrupt one byte inside the first chunk of /etc/unique (content no other file has).
    let boot_bytes = fs::read(blob_path(&dst, boot["digest"].as_str().unwrap())).unwrap();
    let root_digest = Digest(hex::decode(&root[7..]).unwrap().try_into().unwrap());
    let tree = bootstrap::decode(&boot_bytes, &root_digest).unwrap();
    let inode = tree.inode(tree.lookup(b"etc/unique").unwrap()).unwrap();
    let chunk = inode.chunks[0];
    let data_blob = blob_path(&dst, &tree.blobs[chunk.blob_index as usize].to_string());
    let original = fs::read(&data_blob).unwrap();
    let mut bad = original.clone();
    bad[(chunk.compressed_offset + u64::from(chunk.compressed_size) / 2) as usize] ^= 0x40;
    fs::write(&data_blob, &bad).unwrap();
    let out = run(&["check", dst.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out);
    assert!(report.contains("/etc/unique 0 sha256:"), "{report}");
    assert!(!report.contains("ok: "), "{report}");
    fs::write(&data_blob, &original).unwrap();
    assert!(run(&["check", dst.to_str().unwrap()]).status.success());

    // Flip one byte of the bootstrap: inspect (and check) refuse it.
    let boot_path = blob_path(&dst, boot["digest"].as_str().unwrap());
    let mut bad = boot_bytes.clone();
    bad[100] ^= 1;
    fs::write(&boot_path, &bad).unwrap();
    for cmd in ["inspect", "check"] {
        let out = run(&[cmd, dst.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        let msg = text(&out);
        assert!(msg.contains("bootstrap"), "{msg}");
        assert!(msg.contains(boot["digest"].as_str().unwrap()), "{msg}");
    }
}

#[test]
fn bootstrap_not_matching_the_annotated_root_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    build_source(&src);
    assert!(convert(&src, &dst).status.success());
    // Rewrite the manifest with a different root, keeping everything content-addressed.
    let index_path = dst.join("index.json");
    let mut index = read_json(&index_path);
    let mut manifest = target_manifest(&dst);
    let n = manifest["layers"].as_array().unwrap().len();
    let wrong = format!("sha256:{}", "ab".repeat(32));
    manifest["layers"][n - 1]["annotations"]["io.damselfly.nydus.root"] = json!(wrong);
    let bytes = serde_json::to_vec(&manifest).unwrap();
    index["manifests"][0]["digest"] = json!(put_blob(&dst, &bytes));
    index["manifests"][0]["size"] = json!(bytes.len());
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    let out = run(&["inspect", dst.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let msg = text(&out);
    assert!(msg.contains("merkle root mismatch"), "{msg}");
    assert!(msg.contains(&wrong), "{msg}");
}

#[test]
fn corrupt_source_layer_fails_without_index() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let layers = build_source(&src);
    // Same length, different bytes (still a valid tar): only the digest check can catch it.
    let path = blob_path(&src, &layers[1]);
    let mut data = fs::read(&path).unwrap();
    // Entry 0 (the whiteout) is one header; entry 1 ("copy") has its data after its header.
    data[2 * 512 + 10] ^= 1;
    fs::write(&path, &data).unwrap();
    let out = convert(&src, &dst);
    assert_eq!(out.status.code(), Some(1));
    let msg = text(&out);
    assert!(msg.contains(&layers[1]), "{msg}");
    assert!(!dst.join("index.json").exists());
    for e in fs::read_dir(dst.join("blobs/sha256")).unwrap() {
        let name = e.unwrap().file_name();
        assert!(!name.to_string_lossy().starts_with('.'), "{name:?}");
    }
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(run(&["convert"]).status.code(), Some(2));
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        run(&["convert", "a", "b", "--chunk-size", "3MiB"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn missing_tag_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    build_source(&src);
    let out = run(&[
        "convert",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--tag",
        "nope",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("no manifest tagged \"nope\""));
    assert!(!dst.join("index.json").exists());
}
