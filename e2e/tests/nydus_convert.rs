#![allow(clippy::unwrap_used)]
//! `nydus-fs convert|inspect|check` with registry references, against the real
//! `docker-registry`: registry → registry, registry → layout → registry, token auth, a layer
//! corrupted in the registry's storage, and reads through dfdaemon (`--via`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use damselfly_e2e::{
    Dfdaemon, EntryKind, LayeredImage, Supernode, TestRegistry, http, nydus_convert, nydus_fs,
    registry_blob_path,
};
use nydus_fs::{Digest, InodeId, InodeKind, Tree, bootstrap};

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The image's paths as `nydus-fs inspect --files` prints them, hard-link notes left out.
fn expected_listing(image: &LayeredImage) -> Vec<String> {
    image
        .tree
        .iter()
        .map(|(path, e)| {
            let mut line = format!(
                "{path} {} {:04o} {}:{} {}",
                e.kind.name(),
                e.mode,
                e.uid,
                e.gid,
                e.size
            );
            if let Some(t) = &e.target {
                line += &format!(" -> {t}");
            }
            line
        })
        .collect()
}

/// The path lines of `inspect --files` output, sorted, hard-link notes left out.
fn listing(out: &Output) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('/'))
        .map(|l| match l.split_once(" (hard link to ") {
            Some((before, _)) => before.to_owned(),
            None => l.to_owned(),
        })
        .collect();
    lines.sort();
    lines
}

/// A manifest in the registry, as JSON.
fn registry_manifest(registry: &TestRegistry, repo: &str, tag: &str) -> serde_json::Value {
    registry.manifest_json(repo, tag).unwrap()
}

fn layout_manifest(dir: &Path) -> serde_json::Value {
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let index = read(&dir.join("index.json"));
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    read(&dir.join("blobs/sha256").join(&digest[7..]))
}

/// The digests of a converted manifest's layers (data blobs, then the bootstrap) and its root.
fn layers_and_root(manifest: &serde_json::Value) -> (Vec<String>, String) {
    let layers = manifest["layers"].as_array().unwrap();
    let boot = layers.last().unwrap();
    assert_eq!(boot["mediaType"], nydus_fs::media::BOOTSTRAP);
    (
        layers
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect(),
        boot["annotations"]["io.damselfly.nydus.root"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

/// Every path of `tree`, `/`-rooted, with its inode.
fn paths(tree: &Tree) -> BTreeMap<String, InodeId> {
    let mut out = BTreeMap::from([("/".to_owned(), InodeId::ROOT)]);
    let mut stack = vec![(String::new(), InodeId::ROOT)];
    while let Some((prefix, id)) = stack.pop() {
        for (name, &child) in &tree.inode(id).unwrap().entries {
            let path = format!("{prefix}/{}", String::from_utf8(name.clone()).unwrap());
            if tree.inode(child).unwrap().kind == InodeKind::Dir {
                stack.push((path.clone(), child));
            }
            out.insert(path, child);
        }
    }
    out
}

/// Decodes the converted layout's bootstrap and checks every path against the image's tree:
/// kind, attributes, xattrs, link targets, hard links, and each file's bytes rebuilt from its
/// chunks (holes as zeros).
fn assert_layout_matches(dir: &Path, image: &LayeredImage) {
    let manifest = layout_manifest(dir);
    let (layers, root) = layers_and_root(&manifest);
    let blob = |digest: &str| std::fs::read(dir.join("blobs/sha256").join(&digest[7..])).unwrap();
    let root = Digest(hex::decode(&root[7..]).unwrap().try_into().unwrap());
    let tree = bootstrap::decode(&blob(layers.last().unwrap()), &root).unwrap();
    let found = paths(&tree);
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        image.tree.keys().collect::<Vec<_>>()
    );
    let blobs: Vec<Vec<u8>> = tree.blobs.iter().map(|d| blob(&d.to_string())).collect();
    for (path, want) in &image.tree {
        let inode = tree.inode(found[path]).unwrap();
        let kind = match inode.kind {
            InodeKind::Dir => EntryKind::Dir,
            InodeKind::File => EntryKind::File,
            InodeKind::Symlink => EntryKind::Symlink,
            InodeKind::Fifo => EntryKind::Fifo,
            other => panic!("{path}: unexpected {other:?}"),
        };
        assert_eq!(kind, want.kind, "{path}");
        assert_eq!(
            (inode.mode, inode.uid, inode.gid, inode.size),
            (want.mode, want.uid, want.gid, want.size),
            "{path}"
        );
        assert_eq!(inode.mtime.secs, want.mtime as i64, "{path}");
        let xattrs: BTreeMap<String, Vec<u8>> = inode
            .xattrs
            .iter()
            .map(|(k, v)| (String::from_utf8(k.clone()).unwrap(), v.clone()))
            .collect();
        assert_eq!(xattrs, want.xattrs, "{path}");
        if let Some(target) = &want.target {
            assert_eq!(inode.target, target.as_bytes(), "{path}");
        }
        if let Some(content) = &want.content {
            let mut data = vec![0u8; inode.size as usize];
            for c in &inode.chunks {
                let b = &blobs[c.blob_index as usize];
                let start = c.compressed_offset as usize;
                let chunk = zstd::bulk::decompress(
                    &b[start..start + c.compressed_size as usize],
                    c.uncompressed_size as usize,
                )
                .unwrap();
                let at = c.file_offset as usize;
                data[at..at + chunk.len()].copy_from_slice(&chunk);
            }
            assert!(data == *content, "{path}: content differs");
        }
    }
    // The sparse file's zero chunks are holes, not stored data.
    let sparse = tree.inode(found["/data/sparse"]).unwrap();
    let chunk_size = u64::from(tree.chunk_size.bytes());
    assert!((sparse.chunks.len() as u64) < sparse.size.div_ceil(chunk_size));
    for (a, b) in &image.hard_links {
        assert_eq!(found[a], found[b], "{a} and {b} are one inode");
    }
}

#[test]
fn registry_to_registry_to_layout_and_back() {
    let registry = TestRegistry::start();
    let image = LayeredImage::rich(3 << 20).unwrap();
    let (_, target) = image
        .push_converted(&registry, "rich", &["--chunk-size", "64KiB"])
        .unwrap();
    let host = registry.host();
    let source = format!("{host}/rich:src");

    // The pushed image is a nydus image whose tree is the source image's.
    let out = nydus_fs(&["check", &target, "--plain-http"], &[]);
    assert!(out.status.success());
    assert!(text(&out).contains("ok: "));
    let out = nydus_fs(&["inspect", &target, "--files", "--plain-http"], &[]);
    assert!(out.status.success());
    let mut want = expected_listing(&image);
    want.sort();
    assert_eq!(listing(&out), want);
    assert_eq!(
        text(&out).matches("(hard link to ").count(),
        image.hard_links.len()
    );
    let pushed = registry_manifest(&registry, "rich", "nydus");
    let (pushed_layers, pushed_root) = layers_and_root(&pushed);
    assert_eq!(
        pushed["annotations"]["io.damselfly.nydus.source-manifest"],
        format!("sha256:{}", damselfly_e2e::sha256_hex(&image.manifest()))
    );
    // The config is the source's with one diff id per converted layer (their digests), as
    // containerd's unpacker requires.
    let config_digest = pushed["config"]["digest"].as_str().unwrap();
    let config = http::get(&registry.blob_url("rich", config_digest), None).unwrap();
    let config: serde_json::Value = serde_json::from_slice(&config.body).unwrap();
    let digests: Vec<&str> = pushed["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(digests));
    let mut expected: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
    expected["rootfs"] = config["rootfs"].clone();
    assert_eq!(config, expected);

    // Registry → layout: the same image, byte for byte, and every file as in the source.
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("nydus");
    nydus_convert(
        &source,
        layout.to_str().unwrap(),
        &["--chunk-size", "64KiB"],
        &[],
    );
    // Conversions are reproducible: the same manifest whichever way the image travels.
    let written = layout_manifest(&layout);
    assert_eq!(written, pushed);
    assert_eq!(
        layers_and_root(&written),
        (pushed_layers.clone(), pushed_root.clone())
    );
    assert_layout_matches(&layout, &image);

    // Source as a layout → registry: again the same image.
    let source_layout = tmp.path().join("source");
    image.write_layout(&source_layout, "v1").unwrap();
    let back = format!("{host}/rich:from-layout");
    nydus_convert(
        source_layout.to_str().unwrap(),
        &back,
        &["--chunk-size", "64KiB"],
        &[],
    );
    let again = registry_manifest(&registry, "rich", "from-layout");
    assert_eq!(again, pushed);
    assert_eq!(layers_and_root(&again), (pushed_layers, pushed_root));
    assert!(
        nydus_fs(&["check", &back, "--plain-http"], &[])
            .status
            .success()
    );
}

#[test]
fn corrupt_layer_in_the_registry_fails_and_pushes_no_manifest() {
    let registry = TestRegistry::start();
    let image = LayeredImage::rich(0).unwrap();
    let pushed = image.push(&registry, "src/corrupt", "v1").unwrap();
    let host = registry.host();
    // Layer 1 is gzip (the corruption breaks the deflate stream or its CRC first), layer 2 a
    // plain tar (the content stays a valid tar: only the digest tells).
    for (layer, offset) in [(1, 200), (2, 3 * 512 + 7)] {
        let digest = &pushed.layer_digests[layer];
        let path = registry_blob_path(&registry, digest);
        let original = std::fs::read(&path).unwrap();
        let mut bad = original.clone();
        bad[offset] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();

        let tag = format!("bad{layer}");
        let out = nydus_fs(
            &[
                "convert",
                &format!("{host}/src/corrupt:v1"),
                &format!("{host}/nydus/corrupt:{tag}"),
                "--plain-http",
            ],
            &[],
        );
        assert_eq!(out.status.code(), Some(1));
        let msg = text(&out);
        assert!(
            msg.contains(&format!("layer {layer} ({digest}) is corrupt")),
            "{msg}"
        );
        assert!(msg.contains("does not match its digest"), "{msg}");
        let manifest_puts = registry
            .access_log()
            .iter()
            .filter(|e| e.method == "PUT" && e.path.starts_with("/v2/nydus/corrupt/manifests/"))
            .count();
        assert_eq!(manifest_puts, 0);
        let response = http::get(&registry.manifest_url("nydus/corrupt", &tag), None).unwrap();
        assert_eq!(response.status, 404);
        std::fs::write(&path, &original).unwrap();
    }
    // Repaired, it converts.
    nydus_convert(
        &format!("{host}/src/corrupt:v1"),
        &format!("{host}/nydus/corrupt:good"),
        &[],
        &[],
    );
}

#[test]
fn token_auth_registry() {
    let registry = TestRegistry::builder()
        .token_credentials("carol", "s3cret")
        .start();
    let image = LayeredImage::rich(0).unwrap();
    image.push(&registry, "src/private", "v1").unwrap();
    let host = registry.host();
    let source = format!("{host}/src/private:v1");
    let target = format!("{host}/nydus/private:v1");

    let out = nydus_fs(&["convert", &source, &target, "--plain-http"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let msg = text(&out);
    assert!(msg.contains("401 Unauthorized"), "{msg}");
    assert!(msg.contains("no credentials given"), "{msg}");

    let creds = [("DAMSELFLY_REGISTRY_CREDS", "carol:s3cret")];
    let before = registry.token_requests().len();
    nydus_convert(&source, &target, &[], &creds);
    // One token to read the source, one to push the target, each reused for every request.
    let tokens: Vec<_> = registry.token_requests()[before..].to_vec();
    assert!(
        tokens
            .iter()
            .all(|t| t.status == 200 && t.user.as_deref() == Some("carol"))
    );
    let scopes: Vec<&str> = tokens
        .iter()
        .flat_map(|t| t.scopes.iter().map(String::as_str))
        .collect();
    assert_eq!(
        scopes,
        [
            "repository:src/private:pull",
            "repository:nydus/private:pull,push"
        ],
        "{tokens:?}"
    );
    let out = nydus_fs(&["check", &target, "--plain-http"], &creds);
    assert!(out.status.success());
    // Credentials on the command line work too; wrong ones are refused by the token endpoint.
    let out = nydus_fs(
        &["inspect", &target, "--plain-http", "--creds", "carol:wrong"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("token endpoint refused"),
        "{}",
        text(&out)
    );
}

#[test]
fn reads_through_dfdaemon() {
    let registry = TestRegistry::start();
    let image = LayeredImage::rich(1 << 20).unwrap();
    let pushed = image.push(&registry, "src/mirrored", "v1").unwrap();
    let supernode = Supernode::builder().start();
    let dfdaemon = Dfdaemon::builder().supernode(supernode.addr()).start();
    let host = registry.host();
    let target = format!("{host}/nydus/mirrored:v1");
    let via = dfdaemon.url();

    // Reads (manifest, config, layers) go through the mirror; the push goes to the registry.
    nydus_convert(
        &format!("{host}/src/mirrored:v1"),
        &target,
        &["--via", &via, "--chunk-size", "64KiB"],
        &[],
    );
    let blob_requests = |d: &Dfdaemon| {
        d.metric("damselfly_dfdaemon_requests_total", Some("kind=\"blob\""))
            .unwrap()
    };
    let blobs = blob_requests(&dfdaemon);
    assert!(
        blobs >= 4.0,
        "config and 3 layers through dfdaemon: {blobs}"
    );
    for layer in &pushed.layer_digests {
        assert_eq!(
            registry.blob_get_count(layer),
            1,
            "{layer} fetched once, by the swarm"
        );
    }
    // `check` reads the converted image's chunks through the mirror with Range requests.
    let out = nydus_fs(&["check", &target, "--plain-http", "--via", &via], &[]);
    assert!(out.status.success());
    assert!(blob_requests(&dfdaemon) > blobs);
    let manifests = dfdaemon
        .metric(
            "damselfly_dfdaemon_requests_total",
            Some("kind=\"manifest\""),
        )
        .unwrap();
    assert!(manifests >= 2.0, "{manifests}");
}

#[test]
fn an_index_resolves_to_a_platform() {
    let registry = TestRegistry::start();
    let image = LayeredImage::rich(0).unwrap();
    let pushed = image.push(&registry, "src/multi", "single").unwrap();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    // Both entries name the same manifest: which one is picked does not change the result,
    // only whether one is found.
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": ACCEPT, "digest": pushed.manifest_digest, "size": pushed.manifest.len(),
             "platform": {"os": "linux", "architecture": "riscv64"}},
            {"mediaType": ACCEPT, "digest": pushed.manifest_digest, "size": pushed.manifest.len(),
             "platform": {"os": "linux", "architecture": arch}},
        ],
    }))
    .unwrap();
    let response = registry
        .request(http::Method::PUT, &registry.manifest_url("src/multi", "v1"))
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(index)
        .send()
        .unwrap();
    assert_eq!(response.status, 201, "{}", response.text());
    let host = registry.host();
    let source = format!("{host}/src/multi:v1");
    nydus_convert(&source, &format!("{host}/nydus/multi:host"), &[], &[]);
    nydus_convert(
        &source,
        &format!("{host}/nydus/multi:riscv"),
        &["--platform", "linux/riscv64"],
        &[],
    );
    let out = nydus_fs(
        &[
            "convert",
            &source,
            &format!("{host}/nydus/multi:win"),
            "--plain-http",
            "--platform",
            "windows/amd64",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("no windows/amd64 manifest"),
        "{}",
        text(&out)
    );
    let host_manifest = registry_manifest(&registry, "nydus/multi", "host");
    assert_eq!(
        host_manifest["annotations"]["io.damselfly.nydus.source-manifest"],
        pushed.manifest_digest
    );
    assert_eq!(
        host_manifest,
        registry_manifest(&registry, "nydus/multi", "riscv")
    );
}
