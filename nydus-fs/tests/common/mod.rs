//! Helpers shared by the `nydus-fs` binary tests: OCI layouts built from tar layers made here,
//! and running the binary.

// Test helpers panic on setup failures by design; not every test file uses every helper.
#![allow(clippy::unwrap_used, dead_code)]

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub(crate) fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub(crate) fn put_blob(dir: &Path, data: &[u8]) -> String {
    let d = sha(data);
    fs::write(dir.join("blobs/sha256").join(&d[7..]), data).unwrap();
    d
}

pub(crate) fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

pub(crate) fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
    b.append_data(&mut h, path, data).unwrap();
}

pub(crate) fn special(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    path: &str,
    target: &str,
) {
    let mut h = header(kind, 0o777, 0);
    b.append_link(&mut h, path, target).unwrap();
}

/// Pseudo-random bytes (no dedup, poor compression).
pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
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
/// symlink, and a file duplicating layer 0's content. Returns the layer digests.
pub(crate) fn build_source(dir: &Path) -> Vec<String> {
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

    write_layout(dir, &[(l0, true), (l1, false)], "v1")
}

/// Writes an OCI layout holding one image tagged `tag` whose layers are `layers`
/// (`(bytes, gzipped)`), with a config listing their diff ids. Returns the layer digests.
pub(crate) fn write_layout(dir: &Path, layers: &[(Vec<u8>, bool)], tag: &str) -> Vec<String> {
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|(bytes, gz)| {
            if *gz {
                let mut plain = Vec::new();
                std::io::Read::read_to_end(
                    &mut flate2::read::GzDecoder::new(&bytes[..]),
                    &mut plain,
                )
                .unwrap();
                sha(&plain)
            } else {
                sha(bytes)
            }
        })
        .collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let mut descs = Vec::new();
    let mut digests = Vec::new();
    for (bytes, gz) in layers {
        let d = put_blob(dir, bytes);
        let media_type = if *gz {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        descs.push(json!({"mediaType": media_type, "digest": d, "size": bytes.len()}));
        digests.push(d);
    }
    let dc = put_blob(dir, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": dc, "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let dm = put_blob(dir, &manifest);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": dm, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }]
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    digests
}

pub(crate) fn run(args: &[&str]) -> Output {
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

pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub(crate) fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256").join(&digest[7..])
}

pub(crate) fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// The target's manifest.
pub(crate) fn target_manifest(dir: &Path) -> Value {
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

pub(crate) fn convert(src: &Path, dst: &Path) -> Output {
    run(&[
        "convert",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--chunk-size",
        "4KiB",
    ])
}
