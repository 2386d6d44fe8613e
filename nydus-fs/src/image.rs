//! `nydus-fs inspect` and `nydus-fs check`: loading a converted image and verifying it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use nydus_fs::{ChunkRef, Digest, InodeId, InodeKind, Tree, bootstrap, merkle};

use crate::convert_cmd::FORMAT_VERSION;
use crate::oci::{
    ANN_CHUNK_SIZE, ANN_FORMAT, ANN_ROOT, Descriptor, MT_NYDUS_BLOB, MT_NYDUS_BOOTSTRAP, OciDir,
    parse_digest,
};

/// Largest bootstrap read into memory.
const MAX_BOOTSTRAP: u64 = 4 << 30;

/// A nydus image whose bootstrap has been verified against its annotated root.
pub(crate) struct Image {
    pub(crate) dir: OciDir,
    pub(crate) root: Digest,
    pub(crate) bootstrap: Descriptor,
    /// Data blob descriptors, in [`Tree::blobs`] order.
    pub(crate) blobs: Vec<Descriptor>,
    pub(crate) tree: Tree,
}

pub(crate) fn load(path: &Path, tag: Option<&str>) -> Result<Image> {
    let dir = OciDir::open(path)?;
    let (_, manifest_desc, manifest) = dir.resolve(tag)?;
    let boot: Vec<&Descriptor> = manifest
        .layers
        .iter()
        .filter(|l| l.media_type == MT_NYDUS_BOOTSTRAP)
        .collect();
    let [boot] = boot[..] else {
        bail!(
            "manifest {} has {} bootstrap layers ({MT_NYDUS_BOOTSTRAP}), want exactly 1: \
             not a nydus image",
            manifest_desc.digest,
            boot.len()
        );
    };
    let ann = |key: &str| {
        boot.annotations.get(key).ok_or_else(|| {
            anyhow!(
                "bootstrap {} in manifest {} lacks the annotation {key}",
                boot.digest,
                manifest_desc.digest
            )
        })
    };
    let format = ann(ANN_FORMAT)?;
    ensure!(
        format == FORMAT_VERSION,
        "bootstrap {}: unsupported format {format:?} (this tool reads {FORMAT_VERSION})",
        boot.digest
    );
    let root = parse_digest(ann(ANN_ROOT)?).with_context(|| format!("annotation {ANN_ROOT}"))?;
    let chunk_size: u64 = ann(ANN_CHUNK_SIZE)?
        .parse()
        .with_context(|| format!("annotation {ANN_CHUNK_SIZE}"))?;
    let bytes = dir
        .read_blob(boot, MAX_BOOTSTRAP)
        .context("refusing the bootstrap")?;
    let tree = bootstrap::decode(&bytes, &root).with_context(|| {
        format!(
            "refusing bootstrap {}: it does not decode to the annotated root {root}",
            boot.digest
        )
    })?;
    ensure!(
        u64::from(tree.chunk_size.bytes()) == chunk_size,
        "bootstrap {}: chunk size {} differs from the annotated {chunk_size}",
        boot.digest,
        tree.chunk_size.bytes()
    );
    let data: HashMap<Digest, &Descriptor> = manifest
        .layers
        .iter()
        .filter(|l| l.media_type == MT_NYDUS_BLOB)
        .map(|l| Ok((parse_digest(&l.digest)?, l)))
        .collect::<Result<_>>()?;
    let blobs = tree
        .blobs
        .iter()
        .map(|d| {
            data.get(d).map(|&l| l.clone()).ok_or_else(|| {
                anyhow!(
                    "bootstrap {} refers to blob {d}, which manifest {} does not list",
                    boot.digest,
                    manifest_desc.digest
                )
            })
        })
        .collect::<Result<_>>()?;
    Ok(Image {
        dir,
        root,
        bootstrap: boot.clone(),
        blobs,
        tree,
    })
}

fn kind_name(kind: InodeKind) -> &'static str {
    match kind {
        InodeKind::File => "file",
        InodeKind::Dir => "dir",
        InodeKind::Symlink => "symlink",
        InodeKind::CharDev => "chardev",
        InodeKind::BlockDev => "blockdev",
        InodeKind::Fifo => "fifo",
        InodeKind::Socket => "socket",
    }
}

const KINDS: [InodeKind; 7] = [
    InodeKind::File,
    InodeKind::Dir,
    InodeKind::Symlink,
    InodeKind::CharDev,
    InodeKind::BlockDev,
    InodeKind::Fifo,
    InodeKind::Socket,
];

/// Every path of the tree (hard links once per name), depth-first in name order, root first.
fn walk(tree: &Tree) -> Vec<(String, InodeId)> {
    let mut out = vec![("/".to_owned(), InodeId::ROOT)];
    let mut stack = vec![(String::new(), InodeId::ROOT)];
    while let Some((prefix, dir)) = stack.pop() {
        let Some(inode) = tree.inode(dir) else {
            continue;
        };
        let mut subdirs = Vec::new();
        for (name, &child) in &inode.entries {
            let path = format!("{prefix}/{}", String::from_utf8_lossy(name));
            out.push((path.clone(), child));
            if tree.inode(child).is_some_and(|c| c.kind == InodeKind::Dir) {
                subdirs.push((path, child));
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    out
}

fn summarise(img: &Image) {
    let tree = &img.tree;
    println!("root: {}", img.root);
    println!("chunk size: {} bytes", tree.chunk_size.bytes());
    println!(
        "bootstrap: {} ({} bytes)",
        img.bootstrap.digest, img.bootstrap.size
    );
    println!("blobs: {}", img.blobs.len());
    for b in &img.blobs {
        println!("  {} {} bytes", b.digest, b.size);
    }
    let mut counts: BTreeMap<u8, usize> = BTreeMap::new();
    for inode in &tree.inodes {
        *counts.entry(inode.kind.code()).or_default() += 1;
    }
    let per_kind: Vec<String> = KINDS
        .iter()
        .map(|k| format!("{} {}", kind_name(*k), counts.get(&k.code()).unwrap_or(&0)))
        .collect();
    println!("inodes: {} ({})", tree.inodes.len(), per_kind.join(", "));
    let files = tree.inodes.iter().filter(|i| i.kind == InodeKind::File);
    let total: u64 = files.clone().map(|i| i.size).sum();
    let refs: usize = files.clone().map(|i| i.chunks.len()).sum();
    let distinct: HashSet<Digest> = files
        .flat_map(|i| i.chunks.iter().map(|c| c.digest))
        .collect();
    println!("files total size: {total} bytes");
    println!("distinct chunks: {}", distinct.len());
    println!("chunk references: {refs}");
    let ratio = if distinct.is_empty() {
        1.0
    } else {
        refs as f64 / distinct.len() as f64
    };
    println!("dedup ratio: {ratio:.2}");
}

pub(crate) fn inspect(path: &Path, tag: Option<&str>, files: bool) -> Result<()> {
    let img = load(path, tag)?;
    summarise(&img);
    if files {
        let mut first: HashMap<InodeId, String> = HashMap::new();
        for (p, id) in walk(&img.tree) {
            let Some(inode) = img.tree.inode(id) else {
                continue;
            };
            let mut line = format!(
                "{p} {} {:04o} {}:{} {}",
                kind_name(inode.kind),
                inode.mode,
                inode.uid,
                inode.gid,
                inode.size
            );
            if inode.kind == InodeKind::Symlink {
                line += &format!(" -> {}", String::from_utf8_lossy(&inode.target));
            }
            if inode.kind != InodeKind::Dir {
                if let Some(f) = first.get(&id) {
                    line += &format!(" (hard link to {f})");
                } else {
                    first.insert(id, p.clone());
                }
            }
            println!("{line}");
        }
    }
    Ok(())
}

/// Verifies one chunk; `Err` is the reason it is bad.
fn verify_chunk(file: &mut File, blob_len: u64, c: &ChunkRef) -> Result<(), String> {
    let end = c.compressed_offset + u64::from(c.compressed_size);
    if end > blob_len {
        return Err(format!("range ends beyond the blob ({blob_len} bytes)"));
    }
    let mut buf = vec![0u8; c.compressed_size as usize];
    file.seek(SeekFrom::Start(c.compressed_offset))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(|e| format!("read error: {e}"))?;
    let data = zstd::bulk::decompress(&buf, c.uncompressed_size as usize)
        .map_err(|e| format!("zstd error: {e}"))?;
    if data.len() != c.uncompressed_size as usize {
        return Err(format!(
            "decompressed to {} bytes, want {}",
            data.len(),
            c.uncompressed_size
        ));
    }
    let actual = merkle::chunk_digest(&data);
    if actual != c.digest {
        return Err(format!("sha256 is {actual}, want {}", c.digest));
    }
    Ok(())
}

/// Returns whether every chunk verified.
pub(crate) fn check(path: &Path, tag: Option<&str>) -> Result<bool> {
    let img = load(path, tag)?;
    summarise(&img);
    let mut files: Vec<Result<(File, u64), String>> = Vec::new();
    let mut ok = true;
    for b in &img.blobs {
        let opened = img
            .dir
            .open_blob(b)
            .map_err(|e| format!("{e:#}"))
            .and_then(|(f, _)| {
                let len = f.metadata().map_err(|e| e.to_string())?.len();
                Ok((f, len))
            });
        if let Ok((_, len)) = &opened
            && *len != b.size
        {
            println!("blob {}: {len} bytes, descriptor says {}", b.digest, b.size);
            ok = false;
        }
        files.push(opened);
    }
    // (blob, offset, size, digest) -> result, so a shared chunk is read once.
    let mut seen: HashMap<(u32, u64, u32, Digest), Result<(), String>> = HashMap::new();
    for (p, id) in walk(&img.tree) {
        let Some(inode) = img.tree.inode(id) else {
            continue;
        };
        // A hard-linked file is visited once per name, so a bad chunk is reported under each
        // of its paths; the cache reads it only once.
        if inode.kind != InodeKind::File {
            continue;
        }
        for c in &inode.chunks {
            let key = (
                c.blob_index,
                c.compressed_offset,
                c.compressed_size,
                c.digest,
            );
            let result =
                seen.entry(key)
                    .or_insert_with(|| match &mut files[c.blob_index as usize] {
                        Ok((f, len)) => verify_chunk(f, *len, c),
                        Err(e) => Err(format!("cannot open the blob: {e}")),
                    });
            if let Err(reason) = result {
                ok = false;
                println!(
                    "{p} {} {}:{}+{}: {reason}",
                    c.file_offset,
                    img.blobs[c.blob_index as usize].digest,
                    c.compressed_offset,
                    c.compressed_size
                );
            }
        }
    }
    if ok {
        println!("ok: {} chunks verified", seen.len());
    } else {
        let bad = seen.values().filter(|r| r.is_err()).count();
        println!("FAILED: {bad} of {} chunks bad", seen.len());
    }
    Ok(ok)
}
