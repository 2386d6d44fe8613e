//! Applying OCI layers, in order, to one merged [`Tree`].
//!
//! Semantics (OCI image spec, "Applying changesets"):
//!
//! - A later entry replaces whatever is at its path (a file may replace a directory and the other
//!   way round). A directory entry over an existing directory only updates its attributes and
//!   xattrs: its contents are kept. Duplicate paths in one layer behave the same way: the later
//!   entry wins, as when a tar is extracted.
//! - `.wh.<name>` deletes `<name>` as left by the lower layers; an entry of the same layer is not
//!   hidden by it (the spec: a whiteout applies to lower layers only). A whiteout of a missing
//!   name does nothing. Whiteouts never appear in the tree.
//! - `.wh..wh..opq` in a directory hides everything the lower layers put below it; every entry
//!   of the same layer (before or after the marker), and directories traversed by them, stay,
//!   while the lower-layer contents of such directories are hidden as well. Other `.wh..wh.*`
//!   names (aufs metadata) are ignored.
//! - Missing parent directories are created with mode 0755, owner 0:0, mtime 0, and take the
//!   attributes of the tar's own entry when it comes (later). A non-directory in the middle of a
//!   path is an error (symlinks are never followed).
//! - A hard link (tar `Link`) names the same inode as its target, which must exist in the merged
//!   tree at that point (lower layers or earlier in this layer) and not be a directory. Replacing
//!   or deleting one name keeps the inode under its other names. As containerd and Docker do when
//!   they unpack (and unlike GNU tar), the link entry's mode, owner and mtime are applied to the
//!   shared inode: the result is what a runtime would have on disk.
//! - Regular files are cut into chunks of the tree's chunk size. All-zero chunks become holes.
//!   Other chunks are looked up by sha256 among every chunk stored so far (any layer) and
//!   reused, or zstd-compressed and appended to this layer's blob.
//!
//! Paths are normalised by [`super::path::normalize`]; a path that escapes the root, contains
//! NUL or has a component over 255 bytes fails the conversion.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};

use flate2::read::MultiGzDecoder;
use tar::EntryType;

use super::ConvertError;
use super::blob::BlobWriter;
use super::path::normalize;
use crate::merkle::{Digest, chunk_digest};
use crate::tree::{
    ChunkRef, ChunkSize, Inode, InodeId, InodeKind, MAX_SYMLINK_LEN, MAX_XATTR_NAME_LEN,
    MAX_XATTR_VALUE_LEN, MAX_XATTRS_PER_INODE, Timestamp, Tree,
};

/// Default zstd level.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// The data blob written for one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    /// Index of the layer (order of [`Merger::apply_layer`] calls, from 0).
    pub layer: usize,
    /// Index in [`Tree::blobs`], or `None` if the layer stored no new chunk (the blob is empty
    /// and not part of the image).
    pub blob_index: Option<u32>,
    /// sha256 of the blob.
    pub digest: Digest,
    /// Length of the blob in bytes.
    pub len: u64,
}

/// What applying one layer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerStats {
    /// The layer's blob.
    pub blob: LayerBlob,
    /// Tar entries applied, whiteouts included.
    pub entries: u64,
    /// Whiteout and opaque entries among them.
    pub whiteouts: u64,
    /// New chunks compressed into the blob.
    pub chunks_written: u64,
    /// Chunks found already stored (this layer or an earlier one).
    pub chunks_deduplicated: u64,
    /// All-zero chunks stored as holes.
    pub holes: u64,
}

#[derive(Debug, Clone, Copy)]
struct StoredChunk {
    blob_index: u32,
    compressed_offset: u64,
    compressed_size: u32,
}

/// Merges OCI layers into one [`Tree`]; see the module documentation for the semantics.
pub struct Merger {
    tree: Tree,
    level: i32,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    chunks: HashMap<Digest, StoredChunk>,
    blobs: Vec<LayerBlob>,
    next_blob_index: u32,
    poisoned: bool,
    buf: Vec<u8>,
}

/// Per-layer state.
struct Layer<'a, W: Write> {
    index: usize,
    blob: &'a mut BlobWriter<W>,
    blob_index: Option<u32>,
    /// `(directory, name)` of every entry created, replaced or traversed by this layer: what an
    /// opaque marker or a whiteout of this layer must not hide.
    touched: HashSet<(InodeId, Vec<u8>)>,
    stats: LayerStats,
}

impl Merger {
    /// A merger starting from an empty root (mode 0755, owner 0:0, mtime 0) with `chunk_size`.
    pub fn new(chunk_size: ChunkSize) -> Self {
        Self {
            tree: Tree::new(chunk_size, implicit_dir()),
            level: DEFAULT_ZSTD_LEVEL,
            compressor: None,
            chunks: HashMap::new(),
            blobs: Vec::new(),
            next_blob_index: 0,
            poisoned: false,
            buf: Vec::new(),
        }
    }

    /// Sets the zstd compression level for chunks written from now on.
    #[must_use]
    pub fn with_level(mut self, level: i32) -> Self {
        self.level = level;
        self.compressor = None;
        self
    }

    /// Applies one layer: a tar stream, gzip-compressed or not (detected from its first bytes).
    /// New chunks are appended to `blob`, which must be empty (one blob per layer); the caller
    /// finishes it afterwards ([`BlobWriter::finish`] gives the same digest as
    /// [`LayerStats::blob`]) and must not write to it any more.
    ///
    /// # Errors
    /// [`ConvertError`]: I/O, an invalid or hostile entry, a bad hard link. After an error the
    /// merger is poisoned (the layer is partly applied) and every later call fails.
    pub fn apply_layer<R: Read, W: Write>(
        &mut self,
        mut reader: R,
        blob: &mut BlobWriter<W>,
    ) -> Result<LayerStats, ConvertError> {
        if self.poisoned {
            return Err(ConvertError::Poisoned);
        }
        let index = self.blobs.len();
        if !blob.is_empty() {
            return Err(ConvertError::BlobNotEmpty {
                layer: index,
                len: blob.len(),
            });
        }
        self.poisoned = true;
        let io_err = |context: &str, source| ConvertError::Io {
            layer: index,
            context: context.to_owned(),
            source,
        };
        let mut magic = [0u8; 2];
        let mut n = 0;
        while n < magic.len() {
            match reader.read(&mut magic[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("reading the layer", e)),
            }
        }
        let input = io::Cursor::new(magic).take(n as u64).chain(reader);
        let mut layer = Layer {
            index,
            blob,
            blob_index: None,
            touched: HashSet::new(),
            stats: LayerStats {
                blob: LayerBlob {
                    layer: index,
                    blob_index: None,
                    digest: Digest::default(),
                    len: 0,
                },
                entries: 0,
                whiteouts: 0,
                chunks_written: 0,
                chunks_deduplicated: 0,
                holes: 0,
            },
        };
        if magic == [0x1f, 0x8b] && n == 2 {
            self.apply_tar(MultiGzDecoder::new(input), &mut layer)?;
        } else {
            self.apply_tar(input, &mut layer)?;
        }
        let blob = LayerBlob {
            layer: index,
            blob_index: layer.blob_index,
            digest: layer.blob.digest(),
            len: layer.blob.len(),
        };
        self.blobs.push(blob.clone());
        let mut stats = layer.stats;
        stats.blob = blob;
        self.poisoned = false;
        Ok(stats)
    }

    /// The merged tree (unreachable inodes dropped, checked with [`Tree::layout`]) and the blob
    /// of every layer, in layer order. [`Tree::blobs`] holds the digests of the non-empty blobs.
    ///
    /// # Errors
    /// [`ConvertError::Poisoned`] after an earlier error; [`ConvertError::Format`] if the tree
    /// breaks a limit or rule of the format (too deep, too many inodes, ...).
    pub fn finish(self) -> Result<(Tree, Vec<LayerBlob>), ConvertError> {
        if self.poisoned {
            return Err(ConvertError::Poisoned);
        }
        let mut tree = self.tree;
        tree.inodes = compact(std::mem::take(&mut tree.inodes));
        tree.blobs = self
            .blobs
            .iter()
            .filter(|b| b.blob_index.is_some())
            .map(|b| b.digest)
            .collect();
        tree.layout()?;
        Ok((tree, self.blobs))
    }

    fn apply_tar<R: Read, W: Write>(
        &mut self,
        input: R,
        layer: &mut Layer<'_, W>,
    ) -> Result<(), ConvertError> {
        let index = layer.index;
        let io_err = |context: String, source| ConvertError::Io {
            layer: index,
            context,
            source,
        };
        let mut archive = tar::Archive::new(input);
        let entries = archive
            .entries()
            .map_err(|e| io_err("reading the tar".into(), e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| io_err("reading a tar header".into(), e))?;
            self.apply_entry(&mut entry, layer)?;
        }
        // Read to the end, so that a gzip stream's checksum is verified.
        io::copy(&mut archive.into_inner(), &mut io::sink())
            .map_err(|e| io_err("reading past the end of the tar".into(), e))?;
        Ok(())
    }

    fn apply_entry<R: Read, W: Write>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        layer: &mut Layer<'_, W>,
    ) -> Result<(), ConvertError> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let index = layer.index;
        let invalid = |reason: String| ConvertError::InvalidEntry {
            layer: index,
            path: shown.clone(),
            reason,
        };
        let entry_type = entry.header().entry_type();
        if matches!(entry_type, EntryType::XGlobalHeader) {
            return Ok(());
        }
        layer.stats.entries += 1;
        let parts = normalize(&raw_path).map_err(invalid)?;

        let Some((&name, parents)) = parts.split_last() else {
            // The root itself (`./` or `/`).
            if !entry_type.is_dir() {
                return Err(invalid("the root can only be a directory".into()));
            }
            let attrs = read_attrs(entry, InodeKind::Dir).map_err(invalid)?;
            set_attrs(&mut self.tree.inodes[0], attrs);
            return Ok(());
        };

        if let Some(rest) = name.strip_prefix(b".wh.") {
            layer.stats.whiteouts += 1;
            if rest == b".wh..opq" {
                let dir = self.parents(parents, layer).map_err(invalid)?;
                self.hide_lower(dir, layer);
            } else if rest.starts_with(b".wh.") {
                // aufs metadata (`.wh..wh.plnk`, `.wh..wh.aufs`): ignored, as by Docker.
            } else if rest.is_empty() {
                return Err(invalid("whiteout without a name".into()));
            } else if let Some(dir) = self.find(parents).filter(|&dir| {
                self.tree.inodes[dir.0 as usize].kind == InodeKind::Dir
                    && !layer.touched.contains(&(dir, rest.to_vec()))
            }) {
                self.tree.inodes[dir.0 as usize].entries.remove(rest);
            }
            return Ok(());
        }

        let kind = match entry_type {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => InodeKind::File,
            EntryType::Directory => InodeKind::Dir,
            EntryType::Symlink => InodeKind::Symlink,
            EntryType::Char => InodeKind::CharDev,
            EntryType::Block => InodeKind::BlockDev,
            EntryType::Fifo => InodeKind::Fifo,
            EntryType::Link => {
                return self.hard_link(entry, &shown, parents, name, layer);
            }
            other => {
                return Err(invalid(format!(
                    "unsupported tar entry type {:?}",
                    other.as_byte() as char
                )));
            }
        };
        let mut inode = read_attrs(entry, kind).map_err(invalid)?;
        match kind {
            InodeKind::File => {
                let (size, chunks) = self.read_chunks(entry, &shown, layer)?;
                inode.size = size;
                inode.chunks = chunks;
            }
            InodeKind::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| invalid("symlink without a target".into()))?;
                if target.is_empty() || target.len() > MAX_SYMLINK_LEN || target.contains(&0) {
                    return Err(invalid(
                        "symlink target must be 1..=4095 bytes without NUL".into(),
                    ));
                }
                inode.size = target.len() as u64;
                inode.target = target.into_owned();
            }
            InodeKind::CharDev | InodeKind::BlockDev => {
                let h = entry.header();
                let major = h.device_major().map_err(|e| invalid(e.to_string()))?;
                let minor = h.device_minor().map_err(|e| invalid(e.to_string()))?;
                inode.rdev = makedev(major.unwrap_or(0), minor.unwrap_or(0));
            }
            _ => {}
        }

        let dir = self.parents(parents, layer).map_err(invalid)?;
        let existing = self.tree.inodes[dir.0 as usize].entries.get(name).copied();
        layer.touched.insert((dir, name.to_vec()));
        if let Some(id) = existing {
            let old = &mut self.tree.inodes[id.0 as usize];
            if kind == InodeKind::Dir && old.kind == InodeKind::Dir {
                set_attrs(old, inode);
                return Ok(());
            }
            self.tree.inodes[dir.0 as usize].entries.remove(name);
        }
        self.tree
            .add(dir, name, inode)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(())
    }

    fn hard_link<R: Read, W: Write>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        shown: &str,
        parents: &[&[u8]],
        name: &[u8],
        layer: &mut Layer<'_, W>,
    ) -> Result<(), ConvertError> {
        let raw_target = entry.link_name_bytes().unwrap_or_default().into_owned();
        let index = layer.index;
        let bad = |reason: String| ConvertError::BadHardLink {
            layer: index,
            path: shown.to_owned(),
            target: String::from_utf8_lossy(&raw_target).into_owned(),
            reason,
        };
        let target_parts = normalize(&raw_target).map_err(bad)?;
        if target_parts.is_empty() {
            return Err(bad("target is the root".into()));
        }
        let target = self
            .find(&target_parts)
            .ok_or_else(|| bad("target does not exist (or was deleted)".into()))?;
        let kind = self.tree.inodes[target.0 as usize].kind;
        if kind == InodeKind::Dir {
            return Err(bad("target is a directory".into()));
        }
        let attrs = read_attrs(entry, kind).map_err(|reason| ConvertError::InvalidEntry {
            layer: index,
            path: shown.to_owned(),
            reason,
        })?;
        let dir = self
            .parents(parents, layer)
            .map_err(|reason| ConvertError::InvalidEntry {
                layer: index,
                path: shown.to_owned(),
                reason,
            })?;
        let entries = &mut self.tree.inodes[dir.0 as usize].entries;
        entries.remove(name);
        layer.touched.insert((dir, name.to_vec()));
        self.tree
            .link(dir, name, target)
            .map_err(|e| bad(e.to_string()))?;
        let inode = &mut self.tree.inodes[target.0 as usize];
        inode.mode = attrs.mode;
        inode.uid = attrs.uid;
        inode.gid = attrs.gid;
        inode.mtime = attrs.mtime;
        Ok(())
    }

    /// The directory holding an entry: walks `parents` from the root, creating missing
    /// directories and marking every step as touched by this layer.
    fn parents<W: Write>(
        &mut self,
        parents: &[&[u8]],
        layer: &mut Layer<'_, W>,
    ) -> Result<InodeId, String> {
        let mut dir = InodeId::ROOT;
        for &part in parents {
            let next = match self.tree.inodes[dir.0 as usize].entries.get(part) {
                Some(&id) if self.tree.inodes[id.0 as usize].kind == InodeKind::Dir => id,
                Some(_) => {
                    return Err(format!(
                        "parent {:?} is not a directory",
                        String::from_utf8_lossy(part)
                    ));
                }
                None => self
                    .tree
                    .add(dir, part, implicit_dir())
                    .map_err(|e| e.to_string())?,
            };
            layer.touched.insert((dir, part.to_vec()));
            dir = next;
        }
        Ok(dir)
    }

    /// The inode at `parts`, without creating anything.
    fn find(&self, parts: &[&[u8]]) -> Option<InodeId> {
        let mut id = InodeId::ROOT;
        for &part in parts {
            id = *self.tree.inodes[id.0 as usize].entries.get(part)?;
        }
        Some(id)
    }

    /// Opaque directory: removes everything below `dir` not touched by this layer.
    fn hide_lower<W: Write>(&mut self, dir: InodeId, layer: &Layer<'_, W>) {
        let mut stack = vec![dir];
        while let Some(dir) = stack.pop() {
            let mut keep_dirs = Vec::new();
            let tree = &mut self.tree;
            let entries = std::mem::take(&mut tree.inodes[dir.0 as usize].entries);
            let kept = entries
                .into_iter()
                .filter(|(name, child)| {
                    let keep = layer.touched.contains(&(dir, name.clone()));
                    if keep && tree.inodes[child.0 as usize].kind == InodeKind::Dir {
                        keep_dirs.push(*child);
                    }
                    keep
                })
                .collect();
            tree.inodes[dir.0 as usize].entries = kept;
            stack.extend(keep_dirs);
        }
    }

    /// Reads a regular file's data and stores its chunks; returns its size and chunk list.
    fn read_chunks<R: Read, W: Write>(
        &mut self,
        data: &mut R,
        shown: &str,
        layer: &mut Layer<'_, W>,
    ) -> Result<(u64, Vec<ChunkRef>), ConvertError> {
        let index = layer.index;
        let io_err = |context: &str, source| ConvertError::Io {
            layer: index,
            context: format!("{context} {shown:?}"),
            source,
        };
        let cs = self.tree.chunk_size.bytes() as usize;
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(cs, 0);
        let mut offset = 0u64;
        let mut chunks = Vec::new();
        loop {
            let n = read_full(data, &mut buf).map_err(|e| io_err("reading", e))?;
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            if is_zero(chunk) {
                layer.stats.holes += 1;
            } else {
                let digest = chunk_digest(chunk);
                let stored = if let Some(&stored) = self.chunks.get(&digest) {
                    layer.stats.chunks_deduplicated += 1;
                    stored
                } else {
                    if self.compressor.is_none() {
                        self.compressor = Some(
                            zstd::bulk::Compressor::new(self.level)
                                .map_err(|e| io_err("starting zstd for", e))?,
                        );
                    }
                    let compressor = self.compressor.as_mut().ok_or(ConvertError::Poisoned)?;
                    let compressed = compressor
                        .compress(chunk)
                        .map_err(|e| io_err("compressing", e))?;
                    let compressed_size = u32::try_from(compressed.len())
                        .ok()
                        .filter(|&s| s > 0 && s as usize <= 2 * cs)
                        .ok_or_else(|| ConvertError::ChunkTooLarge {
                            layer: index,
                            path: shown.to_owned(),
                            size: compressed.len(),
                        })?;
                    let blob_index = match layer.blob_index {
                        Some(i) => i,
                        None => {
                            let i = self.next_blob_index;
                            self.next_blob_index += 1;
                            layer.blob_index = Some(i);
                            i
                        }
                    };
                    let compressed_offset = layer
                        .blob
                        .append(&compressed)
                        .map_err(|e| io_err("writing the blob for", e))?;
                    let stored = StoredChunk {
                        blob_index,
                        compressed_offset,
                        compressed_size,
                    };
                    self.chunks.insert(digest, stored);
                    layer.stats.chunks_written += 1;
                    stored
                };
                chunks.push(ChunkRef {
                    file_offset: offset,
                    blob_index: stored.blob_index,
                    compressed_offset: stored.compressed_offset,
                    compressed_size: stored.compressed_size,
                    // Fits: n <= chunk size <= 16 MiB.
                    uncompressed_size: n as u32,
                    digest,
                });
            }
            offset += n as u64;
            if n < cs {
                break;
            }
        }
        self.buf = buf;
        Ok((offset, chunks))
    }
}

/// A directory created because an entry needs it: 0755, 0:0, mtime 0.
fn implicit_dir() -> Inode {
    Inode::new(InodeKind::Dir, 0o755)
}

/// Copies the attributes of a directory entry onto an existing directory, keeping its entries.
fn set_attrs(dir: &mut Inode, attrs: Inode) {
    dir.mode = attrs.mode;
    dir.uid = attrs.uid;
    dir.gid = attrs.gid;
    dir.mtime = attrs.mtime;
    dir.xattrs = attrs.xattrs;
}

/// Mode, owner, mtime (PAX `mtime` with nanoseconds if present) and xattrs (PAX
/// `SCHILY.xattr.*`) of an entry.
fn read_attrs<R: Read>(entry: &mut tar::Entry<'_, R>, kind: InodeKind) -> Result<Inode, String> {
    let h = entry.header();
    let mode = h.mode().map_err(|e| format!("bad mode: {e}"))? & 0o7777;
    let mut inode = Inode::new(kind, mode);
    let uid = h.uid().map_err(|e| format!("bad uid: {e}"))?;
    let gid = h.gid().map_err(|e| format!("bad gid: {e}"))?;
    inode.uid = u32::try_from(uid).map_err(|_| format!("uid {uid} does not fit in 32 bits"))?;
    inode.gid = u32::try_from(gid).map_err(|_| format!("gid {gid} does not fit in 32 bits"))?;
    let mtime = h.mtime().map_err(|e| format!("bad mtime: {e}"))?;
    inode.mtime.secs = i64::try_from(mtime).map_err(|_| format!("mtime {mtime} out of range"))?;
    if let Some(pax) = entry
        .pax_extensions()
        .map_err(|e| format!("bad PAX header: {e}"))?
    {
        for ext in pax {
            let ext = ext.map_err(|e| format!("bad PAX record: {e}"))?;
            let key = ext.key_bytes();
            if key == b"mtime" {
                inode.mtime =
                    parse_pax_time(ext.value_bytes()).ok_or_else(|| "bad PAX mtime".to_owned())?;
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                let value = ext.value_bytes();
                if name.is_empty() || name.len() > MAX_XATTR_NAME_LEN || name.contains(&0) {
                    return Err("xattr name must be 1..=255 bytes without NUL".into());
                }
                if value.len() > MAX_XATTR_VALUE_LEN {
                    return Err(format!("xattr value over {MAX_XATTR_VALUE_LEN} bytes"));
                }
                inode.xattrs.insert(name.to_vec(), value.to_vec());
                if inode.xattrs.len() > MAX_XATTRS_PER_INODE {
                    return Err(format!("more than {MAX_XATTRS_PER_INODE} xattrs"));
                }
            }
        }
    }
    Ok(inode)
}

/// A PAX time: `[-]secs[.fraction]`.
fn parse_pax_time(value: &[u8]) -> Option<Timestamp> {
    let s = std::str::from_utf8(value).ok()?;
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nanos = 0u32;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    if !negative {
        return Some(Timestamp { secs, nanos });
    }
    if nanos == 0 {
        Some(Timestamp {
            secs: secs.checked_neg()?,
            nanos: 0,
        })
    } else {
        Some(Timestamp {
            secs: secs.checked_neg()?.checked_sub(1)?,
            nanos: 1_000_000_000 - nanos,
        })
    }
}

/// Linux `makedev`.
fn makedev(major: u32, minor: u32) -> u64 {
    let (major, minor) = (u64::from(major), u64::from(minor));
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn is_zero(data: &[u8]) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    data.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// Drops the inodes no longer reachable from the root (deleted or replaced) and renumbers the
/// rest breadth-first.
fn compact(old: Vec<Inode>) -> Vec<Inode> {
    let mut map = vec![u32::MAX; old.len()];
    let mut order = vec![0usize];
    map[0] = 0;
    let mut i = 0;
    while i < order.len() {
        for child in old[order[i]].entries.values() {
            let c = child.0 as usize;
            if map[c] == u32::MAX {
                // Fits: at most old.len() inodes, which came from u32 ids.
                map[c] = order.len() as u32;
                order.push(c);
            }
        }
        i += 1;
    }
    let mut old: Vec<Option<Inode>> = old.into_iter().map(Some).collect();
    order
        .into_iter()
        .filter_map(|o| old[o].take())
        .map(|mut inode| {
            for child in inode.entries.values_mut() {
                *child = InodeId(map[child.0 as usize]);
            }
            inode
        })
        .collect()
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn pax_times() {
        let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.secs, t.nanos));
        assert_eq!(t("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(t("1700000000.5"), Some((1_700_000_000, 500_000_000)));
        assert_eq!(t("1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(t("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(t("-3"), Some((-3, 0)));
        assert_eq!(t("x"), None);
        assert_eq!(t("1.x"), None);
        assert_eq!(t(""), None);
    }

    #[test]
    fn linux_makedev() {
        assert_eq!(makedev(1, 3), 0x103);
        assert_eq!(makedev(8, 0x1_0000), 0x1000_0800);
        assert_eq!(makedev(0x1000, 0), 0x1000 << 32);
        assert_eq!(makedev(0xfff, 0xff), 0xfffff);
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0; 10_000]));
        let mut v = vec![0; 10_000];
        v[9_999] = 1;
        assert!(!is_zero(&v));
    }
}
