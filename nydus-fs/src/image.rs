//! `nydus-fs inspect` and `nydus-fs check`: loading a converted image and verifying it.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use nydus_fs::{ChunkRef, Digest, InodeId, InodeKind, Tree, bootstrap};

use crate::convert_cmd::FORMAT_VERSION;
use crate::location::{Location, RegistryArgs};
use crate::oci::{
    ANN_CHUNK_SIZE, ANN_FORMAT, ANN_ROOT, Descriptor, LayerKind, MT_NYDUS_BOOTSTRAP, Platform,
    parse_digest,
};
use crate::source::ImageSource;

/// Largest prefetch list read into memory.
const MAX_PREFETCH_LIST: u64 = 16 << 20;

/// Largest bootstrap read into memory.
const MAX_BOOTSTRAP: u64 = 4 << 30;

/// Largest span of a data blob fetched at once by `check` (neighbouring chunks are read
/// together: one request per window rather than one per chunk).
const CHECK_WINDOW: u64 = 8 << 20;

/// A nydus image whose bootstrap has been verified against its annotated root.
pub(crate) struct Image {
    pub(crate) source: ImageSource,
    pub(crate) root: Digest,
    pub(crate) bootstrap: Descriptor,
    /// Data blob descriptors, in [`Tree::blobs`] order.
    pub(crate) blobs: Vec<Descriptor>,
    pub(crate) tree: Tree,
    /// Paths to fetch in the background after a mount (empty without a prefetch list).
    pub(crate) prefetch: Vec<Vec<u8>>,
}

pub(crate) fn load(image: &str, tag: Option<&str>, registry: &RegistryArgs) -> Result<Image> {
    let source = ImageSource::open(&Location::parse(image)?, registry)?;
    let resolved = source.resolve(tag, &Platform::host())?;
    let (manifest_desc, manifest) = (resolved.desc, resolved.manifest);
    let boot: Vec<&Descriptor> = manifest
        .layers
        .iter()
        .filter(|l| LayerKind::of(&l.media_type) == Some(LayerKind::Bootstrap))
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
    let bytes = source
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
        .filter(|l| LayerKind::of(&l.media_type) == Some(LayerKind::Blob))
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
    let prefetch = match manifest
        .layers
        .iter()
        .find(|l| LayerKind::of(&l.media_type) == Some(LayerKind::Prefetch))
    {
        None => Vec::new(),
        Some(desc) => {
            let bytes = source
                .read_blob(desc, MAX_PREFETCH_LIST)
                .context("reading the prefetch list")?;
            let text = String::from_utf8(bytes)
                .map_err(|_| anyhow!("prefetch list {} is not UTF-8", desc.digest))?;
            nydus_fs::prefetch::parse_list(&text)
                .with_context(|| format!("prefetch list {}", desc.digest))?
        }
    };
    Ok(Image {
        source,
        root,
        bootstrap: boot.clone(),
        blobs,
        tree,
        prefetch,
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

pub(crate) fn inspect(
    image: &str,
    tag: Option<&str>,
    files: bool,
    registry: &RegistryArgs,
) -> Result<()> {
    let img = load(image, tag, registry)?;
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

/// Verifies one chunk, given its compressed bytes; `Err` is the reason it is bad.
fn verify_chunk(compressed: &[u8], c: &ChunkRef) -> Result<(), String> {
    nydus_fs::chunk::decode(compressed, c)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A distinct stored chunk: (blob, offset, size, digest).
type ChunkKey = (u32, u64, u32, Digest);

fn key_of(c: &ChunkRef) -> ChunkKey {
    (
        c.blob_index,
        c.compressed_offset,
        c.compressed_size,
        c.digest,
    )
}

/// Reads and verifies `chunks` (distinct chunks of `blob`, sorted by offset), fetching
/// neighbours together in windows of up to [`CHECK_WINDOW`] bytes: one read (one `Range`
/// request for a registry) per window rather than per chunk.
fn verify_blob_chunks(
    img: &Image,
    blob: &Descriptor,
    blob_len: &Result<u64, String>,
    chunks: &[ChunkRef],
    results: &mut HashMap<ChunkKey, Result<(), String>>,
) {
    let mut i = 0;
    while i < chunks.len() {
        let start = chunks[i].compressed_offset;
        let mut end = start;
        let mut j = i;
        while j < chunks.len() {
            let chunk_end = chunks[j]
                .compressed_offset
                .saturating_add(u64::from(chunks[j].compressed_size));
            if j > i && chunk_end.max(end) - start > CHECK_WINDOW {
                break;
            }
            end = end.max(chunk_end);
            j += 1;
        }
        let window = read_checked(img, blob, blob_len, start..end);
        for c in &chunks[i..j] {
            let result = match &window {
                // A window that failed as a whole is retried chunk by chunk, so that only the
                // chunks really out of range or unreadable are reported.
                Err(_) if j - i > 1 => {
                    let end = c
                        .compressed_offset
                        .saturating_add(u64::from(c.compressed_size));
                    read_checked(img, blob, blob_len, c.compressed_offset..end)
                        .and_then(|bytes| verify_chunk(&bytes, c))
                }
                Err(e) => Err(e.clone()),
                Ok(bytes) => {
                    // In range: the window covers every chunk of [i, j).
                    let from = (c.compressed_offset - start) as usize;
                    verify_chunk(&bytes[from..from + c.compressed_size as usize], c)
                }
            };
            results.insert(key_of(c), result);
        }
        i = j;
    }
}

/// Bytes `range` of `blob`, if the blob is there and long enough.
fn read_checked(
    img: &Image,
    blob: &Descriptor,
    blob_len: &Result<u64, String>,
    range: std::ops::Range<u64>,
) -> Result<Vec<u8>, String> {
    match blob_len {
        Err(e) => Err(e.clone()),
        Ok(len) if range.end > *len => Err(format!("range ends beyond the blob ({len} bytes)")),
        Ok(_) => img
            .source
            .read_range(blob, range)
            .map_err(|e| format!("read error: {e:#}")),
    }
}

/// Returns whether every chunk verified.
pub(crate) fn check(image: &str, tag: Option<&str>, registry: &RegistryArgs) -> Result<bool> {
    let img = load(image, tag, registry)?;
    summarise(&img);
    let mut ok = true;
    // Every distinct chunk, per blob, in offset order.
    let mut per_blob: Vec<BTreeMap<ChunkKey, ChunkRef>> = vec![BTreeMap::new(); img.blobs.len()];
    let paths = walk(&img.tree);
    for (_, id) in &paths {
        let Some(inode) = img.tree.inode(*id) else {
            continue;
        };
        for c in &inode.chunks {
            per_blob[c.blob_index as usize].insert(key_of(c), *c);
        }
    }
    let mut results: HashMap<ChunkKey, Result<(), String>> = HashMap::new();
    for (b, chunks) in img.blobs.iter().zip(&per_blob) {
        let blob_len = match img.source.blob_len(b) {
            Ok(Some(len)) => {
                if len != b.size {
                    println!("blob {}: {len} bytes, descriptor says {}", b.digest, b.size);
                    ok = false;
                }
                Ok(len)
            }
            Ok(None) => Err("cannot open the blob: it is missing".to_owned()),
            Err(e) => Err(format!("cannot open the blob: {e:#}")),
        };
        let chunks: Vec<ChunkRef> = chunks.values().copied().collect();
        verify_blob_chunks(&img, b, &blob_len, &chunks, &mut results);
    }
    for (p, id) in &paths {
        let Some(inode) = img.tree.inode(*id) else {
            continue;
        };
        // A hard-linked file is visited once per name, so a bad chunk is reported under each
        // of its paths; it was read only once.
        if inode.kind != InodeKind::File {
            continue;
        }
        for c in &inode.chunks {
            if let Some(Err(reason)) = results.get(&key_of(c)) {
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
        println!("ok: {} chunks verified", results.len());
    } else {
        let bad = results.values().filter(|r| r.is_err()).count();
        println!("FAILED: {bad} of {} chunks bad", results.len());
    }
    Ok(ok)
}
