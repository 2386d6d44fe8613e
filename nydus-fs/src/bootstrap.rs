//! The bootstrap byte layout: [`encode`] a [`Tree`], [`decode`] and verify one.
//!
//! See `docs/format.md` for the specification. In short: a 72-byte header, then seven tables
//! (blobs, chunks, inodes, xattrs, chunk references, directory entries, strings) back to back,
//! all integers little-endian. The encoding of a tree is canonical (one tree, one byte string),
//! and [`decode`] accepts only that encoding, and only if it reproduces the expected merkle root.
//!
//! Decoding is bounded: every count is checked against the limits and the input length before
//! anything is allocated, and every table entry and string byte is used at most once, so the
//! decoded tree is at most a small constant times the input size.

use std::collections::HashMap;

use crate::error::FormatError;
use crate::merkle::{self, Digest};
use crate::tree::{
    self, ChunkRef, ChunkSize, Inode, InodeId, InodeKind, Layout, MAX_BLOBS, MAX_CHUNKS,
    MAX_DIRENTS, MAX_INODES, MAX_XATTRS_PER_INODE, Timestamp, Tree,
};

/// First eight bytes of every bootstrap.
pub const MAGIC: [u8; 8] = *b"DMSFBOOT";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Feature flags this code knows (none yet in version 1).
pub const KNOWN_FLAGS: u64 = 0;
/// Header size in bytes.
pub const HEADER_SIZE: usize = 72;
/// Blob table entry size: the blob's sha256.
pub const BLOB_ENTRY_SIZE: usize = 32;
/// Chunk table entry size.
pub const CHUNK_ENTRY_SIZE: usize = 56;
/// Inode table entry size.
pub const INODE_ENTRY_SIZE: usize = 64;
/// Xattr table entry size.
pub const XATTR_ENTRY_SIZE: usize = 16;
/// Chunk reference table entry size.
pub const CHUNK_REF_ENTRY_SIZE: usize = 16;
/// Directory entry table entry size.
pub const DIRENT_ENTRY_SIZE: usize = 12;
/// Largest string table, in bytes (offsets are `u32`).
pub const MAX_STRINGS_LEN: u64 = u32::MAX as u64;

/// Encodes `tree` canonically.
///
/// # Errors
/// Whatever [`Tree::layout`] refuses, and [`FormatError::LimitExceeded`] if the string table
/// would exceed [`MAX_STRINGS_LEN`].
pub fn encode(tree: &Tree) -> Result<Vec<u8>, FormatError> {
    let layout = tree.layout()?;
    encode_with(tree, &layout)
}

/// Decodes a bootstrap and checks it against the root digest from the image manifest.
///
/// # Errors
/// Any [`FormatError`]: bad magic, version or flags, truncation or trailing bytes, a limit
/// exceeded, an index out of range, an invalid name, inode or chunk list, a tree that is not a
/// tree, bytes that are not the canonical encoding, or [`FormatError::RootMismatch`]. Never panics.
pub fn decode(bytes: &[u8], expected_root: &Digest) -> Result<Tree, FormatError> {
    let (tree, inode_table_offset) = parse(bytes)?;
    let layout = tree.layout()?;
    if let Some(i) = layout
        .order
        .iter()
        .enumerate()
        .position(|(i, id)| id.index() != i)
    {
        return Err(FormatError::NonCanonical {
            offset: (inode_table_offset + i * INODE_ENTRY_SIZE) as u64,
        });
    }
    let canonical = encode_with(&tree, &layout)?;
    if canonical != bytes {
        let offset = canonical
            .iter()
            .zip(bytes)
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| canonical.len().min(bytes.len()));
        return Err(FormatError::NonCanonical {
            offset: offset as u64,
        });
    }
    let actual = merkle::root_digest_with(&tree, &layout);
    if actual != *expected_root {
        return Err(FormatError::RootMismatch {
            expected: *expected_root,
            actual,
        });
    }
    Ok(tree)
}

/// Key of a chunk table entry; identical entries are stored once.
type ChunkKey = (Digest, u64, u32, u32, u32);

#[derive(Default)]
struct Strings(Vec<u8>);

impl Strings {
    fn push(&mut self, s: &[u8]) -> Result<(u32, u32), FormatError> {
        let offset = self.0.len() as u64;
        let end = offset + s.len() as u64;
        if end > MAX_STRINGS_LEN {
            return Err(FormatError::LimitExceeded {
                what: "string table length",
                value: end,
                max: MAX_STRINGS_LEN,
            });
        }
        self.0.extend_from_slice(s);
        // Both fit: end <= u32::MAX.
        Ok((offset as u32, s.len() as u32))
    }
}

fn encode_with(tree: &Tree, layout: &Layout) -> Result<Vec<u8>, FormatError> {
    let n = layout.order.len();
    let inodes = || layout.order.iter().map(|id| &tree.inodes[id.index()]);
    let mut strings = Strings::default();

    let mut xattr_table = Vec::new();
    let mut xattr_first = Vec::with_capacity(n);
    let mut xattr_count = 0u32;
    for inode in inodes() {
        xattr_first.push(xattr_count);
        for (name, value) in &inode.xattrs {
            let (no, nl) = strings.push(name)?;
            let (vo, vl) = strings.push(value)?;
            for v in [no, nl, vo, vl] {
                xattr_table.extend_from_slice(&v.to_le_bytes());
            }
            xattr_count += 1;
        }
    }

    let mut targets = Vec::with_capacity(n);
    for inode in inodes() {
        targets.push(if inode.kind == InodeKind::Symlink {
            strings.push(&inode.target)?
        } else {
            (0, 0)
        });
    }

    let mut chunk_index: HashMap<ChunkKey, u32> = HashMap::new();
    let mut chunk_table = Vec::new();
    let mut ref_table = Vec::new();
    let mut ref_first = Vec::with_capacity(n);
    let mut ref_count = 0u32;
    for inode in inodes() {
        ref_first.push(ref_count);
        for c in &inode.chunks {
            let key = (
                c.digest,
                c.compressed_offset,
                c.blob_index,
                c.compressed_size,
                c.uncompressed_size,
            );
            let next = chunk_index.len() as u32;
            let index = *chunk_index.entry(key).or_insert_with(|| {
                chunk_table.extend_from_slice(&c.digest.0);
                chunk_table.extend_from_slice(&c.compressed_offset.to_le_bytes());
                chunk_table.extend_from_slice(&c.blob_index.to_le_bytes());
                chunk_table.extend_from_slice(&c.compressed_size.to_le_bytes());
                chunk_table.extend_from_slice(&c.uncompressed_size.to_le_bytes());
                chunk_table.extend_from_slice(&0u32.to_le_bytes());
                next
            });
            ref_table.extend_from_slice(&c.file_offset.to_le_bytes());
            ref_table.extend_from_slice(&index.to_le_bytes());
            ref_table.extend_from_slice(&0u32.to_le_bytes());
            ref_count += 1;
        }
    }

    let mut dirent_table = Vec::new();
    let mut dirent_first = Vec::with_capacity(n);
    let mut dirent_count = 0u32;
    for inode in inodes() {
        dirent_first.push(dirent_count);
        for (name, child) in &inode.entries {
            let (no, nl) = strings.push(name)?;
            for v in [no, nl, layout.position[child.index()]] {
                dirent_table.extend_from_slice(&v.to_le_bytes());
            }
            dirent_count += 1;
        }
    }

    let mut inode_table = Vec::with_capacity(n * INODE_ENTRY_SIZE);
    for (p, inode) in inodes().enumerate() {
        let (data_first, data_count) = match inode.kind {
            InodeKind::File => (ref_first[p], inode.chunks.len() as u32),
            InodeKind::Dir => (dirent_first[p], inode.entries.len() as u32),
            InodeKind::Symlink => targets[p],
            _ => (0, 0),
        };
        inode_table.extend_from_slice(&[inode.kind.code(), 0, 0, 0]);
        for v in [inode.mode, inode.uid, inode.gid] {
            inode_table.extend_from_slice(&v.to_le_bytes());
        }
        inode_table.extend_from_slice(&inode.mtime.secs.to_le_bytes());
        inode_table.extend_from_slice(&inode.mtime.nanos.to_le_bytes());
        inode_table.extend_from_slice(&0u32.to_le_bytes());
        inode_table.extend_from_slice(&inode.size.to_le_bytes());
        inode_table.extend_from_slice(&inode.rdev.to_le_bytes());
        for v in [
            data_first,
            data_count,
            xattr_first[p],
            inode.xattrs.len() as u32,
        ] {
            inode_table.extend_from_slice(&v.to_le_bytes());
        }
    }

    let total = HEADER_SIZE
        + tree.blobs.len() * BLOB_ENTRY_SIZE
        + chunk_table.len()
        + inode_table.len()
        + xattr_table.len()
        + ref_table.len()
        + dirent_table.len()
        + strings.0.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    let counts = [
        tree.chunk_size.log2(),
        tree.blobs.len() as u32,
        chunk_index.len() as u32,
        n as u32,
        dirent_count,
        xattr_count,
        ref_count,
        0,
    ];
    for v in counts {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&(strings.0.len() as u64).to_le_bytes());
    out.extend_from_slice(&(total as u64).to_le_bytes());
    for blob in &tree.blobs {
        out.extend_from_slice(&blob.0);
    }
    for table in [
        &chunk_table,
        &inode_table,
        &xattr_table,
        &ref_table,
        &dirent_table,
        &strings.0,
    ] {
        out.extend_from_slice(table);
    }
    debug_assert_eq!(out.len(), total);
    Ok(out)
}

/// A bounds-checked little-endian reader over one input.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FormatError> {
        let truncated = || FormatError::Truncated {
            what,
            offset: self.pos as u64,
            needed: n as u64,
            len: self.buf.len() as u64,
        };
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let s = self.buf.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], FormatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, FormatError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, FormatError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }
    /// Reads a field that must be zero.
    fn zero(&mut self, n: usize, field: &'static str) -> Result<(), FormatError> {
        let offset = self.pos as u64;
        let s = self.take(n, field)?;
        if let Some(&b) = s.iter().find(|&&b| b != 0) {
            return Err(FormatError::BadField {
                field,
                offset,
                value: b.into(),
            });
        }
        Ok(())
    }
}

/// The string table, handed out strictly in order so each byte is used once.
struct StringCursor<'a> {
    table: &'a [u8],
    /// Offset of the string table in the input, for errors.
    base: usize,
    next: u32,
}

impl StringCursor<'_> {
    fn take(&mut self, offset: u32, len: u32, field_offset: usize) -> Result<Vec<u8>, FormatError> {
        if offset != self.next {
            return Err(FormatError::BadField {
                field: "string offset",
                offset: field_offset as u64,
                value: offset.into(),
            });
        }
        let end = offset as usize + len as usize;
        let s = self
            .table
            .get(offset as usize..end)
            .ok_or(FormatError::IndexOutOfRange {
                what: "string range end",
                index: end as u64,
                len: self.table.len() as u64,
            })?;
        // Fits: end <= table length <= MAX_STRINGS_LEN.
        self.next = end as u32;
        Ok(s.to_vec())
    }
}

struct Header {
    chunk_size: ChunkSize,
    blobs: usize,
    chunks: usize,
    inodes: usize,
    dirents: usize,
    xattrs: usize,
    refs: usize,
    strings: usize,
}

fn parse_header(r: &mut Reader<'_>) -> Result<Header, FormatError> {
    let magic: [u8; 8] = r.array("magic")?;
    if magic != MAGIC {
        return Err(FormatError::BadMagic { found: magic });
    }
    let version = r.u32("version")?;
    if version != VERSION {
        return Err(FormatError::UnsupportedVersion {
            found: version,
            supported: VERSION,
        });
    }
    let header_size = r.u32("header size")?;
    if header_size as usize != HEADER_SIZE {
        return Err(FormatError::BadField {
            field: "header size",
            offset: 12,
            value: header_size.into(),
        });
    }
    let flags = r.u64("flags")?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(FormatError::UnknownFlags {
            flags: flags & !KNOWN_FLAGS,
        });
    }
    let chunk_size = ChunkSize::from_log2(r.u32("chunk size")?)?;
    let mut count = |what, max: usize| -> Result<usize, FormatError> {
        let v = r.u32(what)? as usize;
        if v > max {
            return Err(FormatError::LimitExceeded {
                what,
                value: v as u64,
                max: max as u64,
            });
        }
        Ok(v)
    };
    let blobs = count("blob count", MAX_BLOBS)?;
    let chunks = count("chunk count", MAX_CHUNKS)?;
    let inodes = count("inode count", MAX_INODES)?;
    let dirents = count("directory entry count", MAX_DIRENTS)?;
    let xattrs = count(
        "xattr count",
        MAX_INODES.saturating_mul(MAX_XATTRS_PER_INODE),
    )?;
    let refs = count("chunk reference count", MAX_CHUNKS)?;
    r.zero(4, "header reserved")?;
    let strings = r.u64("string table length")?;
    if strings > MAX_STRINGS_LEN {
        return Err(FormatError::LimitExceeded {
            what: "string table length",
            value: strings,
            max: MAX_STRINGS_LEN,
        });
    }
    let header = Header {
        chunk_size,
        blobs,
        chunks,
        inodes,
        dirents,
        xattrs,
        refs,
        strings: strings as usize,
    };
    // Cannot overflow in u64: every count is below 2^32 and every entry below 64 bytes.
    let table = |count: usize, entry: usize| count as u64 * entry as u64;
    let expected = HEADER_SIZE as u64
        + table(blobs, BLOB_ENTRY_SIZE)
        + table(chunks, CHUNK_ENTRY_SIZE)
        + table(inodes, INODE_ENTRY_SIZE)
        + table(xattrs, XATTR_ENTRY_SIZE)
        + table(refs, CHUNK_REF_ENTRY_SIZE)
        + table(dirents, DIRENT_ENTRY_SIZE)
        + strings;
    let total = r.u64("total length")?;
    if total != expected {
        return Err(FormatError::BadField {
            field: "total length",
            offset: 64,
            value: total,
        });
    }
    let len = r.buf.len() as u64;
    if len < total {
        return Err(FormatError::Truncated {
            what: "bootstrap",
            offset: 0,
            needed: total,
            len,
        });
    }
    if len > total {
        return Err(FormatError::TrailingBytes {
            offset: total,
            extra: len - total,
        });
    }
    Ok(header)
}

struct RawInode {
    kind: InodeKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timestamp,
    size: u64,
    rdev: u64,
    data: (u32, u32),
    xattrs: (u32, u32),
    /// Offset of this entry in the input.
    offset: usize,
}

fn parse_inode(r: &mut Reader<'_>, index: usize) -> Result<RawInode, FormatError> {
    let offset = r.pos;
    let code = r.u8("inode kind")?;
    let kind = InodeKind::from_code(code).ok_or(FormatError::InvalidInode {
        inode: index as u32,
        reason: "unknown inode kind",
    })?;
    r.zero(3, "inode reserved")?;
    let mode = r.u32("inode mode")?;
    let uid = r.u32("inode uid")?;
    let gid = r.u32("inode gid")?;
    let secs = r.i64("inode mtime")?;
    let nanos = r.u32("inode mtime nanos")?;
    r.zero(4, "inode reserved")?;
    let size = r.u64("inode size")?;
    let rdev = r.u64("inode rdev")?;
    let data = (r.u32("inode data first")?, r.u32("inode data count")?);
    let xattrs = (r.u32("inode xattr first")?, r.u32("inode xattr count")?);
    Ok(RawInode {
        kind,
        mode,
        uid,
        gid,
        mtime: Timestamp { secs, nanos },
        size,
        rdev,
        data,
        xattrs,
        offset,
    })
}

/// Checks that a table range starts where the previous one ended and fits the table.
fn sequential(
    field: &'static str,
    (first, count): (u32, u32),
    next: &mut usize,
    len: usize,
    field_offset: usize,
) -> Result<usize, FormatError> {
    if first as usize != *next {
        return Err(FormatError::BadField {
            field,
            offset: field_offset as u64,
            value: first.into(),
        });
    }
    let end = *next + count as usize;
    if end > len {
        return Err(FormatError::IndexOutOfRange {
            what: field,
            index: end as u64,
            len: len as u64,
        });
    }
    *next = end;
    Ok(count as usize)
}

/// Parses the tables into a tree whose ids are the on-disk inode indexes; returns it with the
/// inode table's offset.
fn parse(bytes: &[u8]) -> Result<(Tree, usize), FormatError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let h = parse_header(&mut r)?;

    let mut blobs = Vec::with_capacity(h.blobs);
    for _ in 0..h.blobs {
        blobs.push(Digest(r.array("blob digest")?));
    }

    let mut chunks = Vec::with_capacity(h.chunks);
    for _ in 0..h.chunks {
        let digest = Digest(r.array("chunk digest")?);
        let compressed_offset = r.u64("chunk compressed offset")?;
        let blob_index = r.u32("chunk blob index")?;
        let compressed_size = r.u32("chunk compressed size")?;
        let uncompressed_size = r.u32("chunk uncompressed size")?;
        r.zero(4, "chunk reserved")?;
        let c = ChunkRef {
            file_offset: 0,
            blob_index,
            compressed_offset,
            compressed_size,
            uncompressed_size,
            digest,
        };
        chunks.push(c);
    }

    let inode_table_offset = r.pos;
    let mut raw_inodes = Vec::with_capacity(h.inodes);
    for i in 0..h.inodes {
        raw_inodes.push(parse_inode(&mut r, i)?);
    }
    let xattr_table = r.take(h.xattrs * XATTR_ENTRY_SIZE, "xattr table")?;
    let ref_table = r.take(h.refs * CHUNK_REF_ENTRY_SIZE, "chunk reference table")?;
    let dirent_table = r.take(h.dirents * DIRENT_ENTRY_SIZE, "directory entry table")?;
    let strings_base = r.pos;
    let mut strings = StringCursor {
        table: r.take(h.strings, "string table")?,
        base: strings_base,
        next: 0,
    };
    let xattr_base = inode_table_offset + h.inodes * INODE_ENTRY_SIZE;
    let mut xr = Reader {
        buf: xattr_table,
        pos: 0,
    };
    let mut rr = Reader {
        buf: ref_table,
        pos: 0,
    };
    let mut dr = Reader {
        buf: dirent_table,
        pos: 0,
    };

    let mut inodes = Vec::with_capacity(h.inodes);
    let (mut next_xattr, mut next_ref, mut next_dirent) = (0usize, 0usize, 0usize);
    // Strings are consumed in the canonical order: xattrs, then symlink targets, then names.
    for (i, raw) in raw_inodes.iter().enumerate() {
        let mut inode = Inode::new(raw.kind, raw.mode);
        let count = sequential(
            "inode xattr first",
            raw.xattrs,
            &mut next_xattr,
            h.xattrs,
            raw.offset + 56,
        )?;
        if count > MAX_XATTRS_PER_INODE {
            return Err(FormatError::LimitExceeded {
                what: "xattrs on one inode",
                value: count as u64,
                max: MAX_XATTRS_PER_INODE as u64,
            });
        }
        for _ in 0..count {
            let at = xattr_base + xr.pos;
            let (no, nl, vo, vl) = (
                xr.u32("xattr")?,
                xr.u32("xattr")?,
                xr.u32("xattr")?,
                xr.u32("xattr")?,
            );
            let name = strings.take(no, nl, at)?;
            let value = strings.take(vo, vl, at + 8)?;
            if let Some((last, _)) = inode.xattrs.last_key_value()
                && *last >= name
            {
                return Err(order_error(i as u32, last, &name, at));
            }
            inode.xattrs.insert(name, value);
        }
        inodes.push(inode);
    }
    for (inode, raw) in inodes.iter_mut().zip(&raw_inodes) {
        if raw.kind == InodeKind::Symlink {
            inode.target = strings.take(raw.data.0, raw.data.1, raw.offset + 48)?;
        }
    }
    let dirent_base = xattr_base + h.xattrs * XATTR_ENTRY_SIZE + h.refs * CHUNK_REF_ENTRY_SIZE;
    for (i, (inode, raw)) in inodes.iter_mut().zip(&raw_inodes).enumerate() {
        inode.uid = raw.uid;
        inode.gid = raw.gid;
        inode.mtime = raw.mtime;
        inode.size = raw.size;
        inode.rdev = raw.rdev;
        match raw.kind {
            InodeKind::File => {
                let count = sequential(
                    "inode chunk first",
                    raw.data,
                    &mut next_ref,
                    h.refs,
                    raw.offset + 48,
                )?;
                inode.chunks.reserve_exact(count);
                for _ in 0..count {
                    let file_offset = rr.u64("chunk reference")?;
                    let index = rr.u32("chunk reference")?;
                    rr.zero(4, "chunk reference reserved")?;
                    let chunk =
                        chunks
                            .get(index as usize)
                            .ok_or_else(|| FormatError::IndexOutOfRange {
                                what: "chunk reference",
                                index: index.into(),
                                len: h.chunks as u64,
                            })?;
                    inode.chunks.push(ChunkRef {
                        file_offset,
                        ..*chunk
                    });
                }
            }
            InodeKind::Dir => {
                let count = sequential(
                    "inode entry first",
                    raw.data,
                    &mut next_dirent,
                    h.dirents,
                    raw.offset + 48,
                )?;
                for _ in 0..count {
                    let at = dirent_base + dr.pos;
                    let (no, nl, child) = (dr.u32("dirent")?, dr.u32("dirent")?, dr.u32("dirent")?);
                    let name = strings.take(no, nl, at)?;
                    tree::check_name(i as u32, &name)?;
                    if child as usize >= h.inodes {
                        return Err(FormatError::IndexOutOfRange {
                            what: "directory entry inode",
                            index: child.into(),
                            len: h.inodes as u64,
                        });
                    }
                    if let Some((last, _)) = inode.entries.last_key_value()
                        && *last >= name
                    {
                        return Err(order_error(i as u32, last, &name, at));
                    }
                    inode.entries.insert(name, InodeId(child));
                }
            }
            InodeKind::Symlink => {}
            _ if raw.data != (0, 0) => {
                return Err(FormatError::BadField {
                    field: "inode data",
                    offset: raw.offset as u64 + 48,
                    value: raw.data.0.into(),
                });
            }
            _ => {}
        }
    }
    let unused = [
        ("unused xattr entries", next_xattr, h.xattrs),
        ("unused chunk references", next_ref, h.refs),
        ("unused directory entries", next_dirent, h.dirents),
        ("unused string bytes", strings.next as usize, h.strings),
    ];
    for (field, used, len) in unused {
        if used != len {
            return Err(FormatError::BadField {
                field,
                offset: strings.base as u64,
                value: (len - used) as u64,
            });
        }
    }
    Ok((
        Tree {
            chunk_size: h.chunk_size,
            blobs,
            inodes,
        },
        inode_table_offset,
    ))
}

fn order_error(inode: u32, last: &[u8], name: &[u8], at: usize) -> FormatError {
    if last == name {
        FormatError::DuplicateName {
            inode,
            name: tree::lossy(name),
        }
    } else {
        FormatError::NonCanonical { offset: at as u64 }
    }
}

#[cfg(test)]
mod tests;
