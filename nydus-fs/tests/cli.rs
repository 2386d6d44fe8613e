//! End-to-end tests of the `nydus-fs` binary on OCI image layouts built here.

// Test helpers outside `#[test]` functions panic on setup failures by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;

use common::{blob_path, build_source, convert, put_blob, read_json, run, target_manifest, text};
use nydus_fs::{Digest, bootstrap};
use serde_json::json;

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
    assert_eq!(boot["mediaType"], nydus_fs::media::BOOTSTRAP);
    assert_eq!(boot["annotations"]["io.damselfly.nydus.chunk-size"], "4096");
    assert_eq!(boot["annotations"]["io.damselfly.nydus.format"], "1");
    let root = boot["annotations"]["io.damselfly.nydus.root"]
        .as_str()
        .unwrap()
        .to_owned();
    for l in &layers[..layers.len() - 1] {
        assert_eq!(l["mediaType"], nydus_fs::media::BLOB);
    }
    // The config is written (the source's, with one diff id per converted layer).
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
    // The link entry's mode (0777) applies to the shared inode, as containerd unpacks it.
    assert!(listing.contains("/hard file 0777 1000:1000 10000"));
    assert!(listing.contains("(hard link to "));
    assert!(!listing.contains("/etc/gone"));
    assert!(listing.contains("/etc/unique file 0777 1000:1000 10000"));

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
