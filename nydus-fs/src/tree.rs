//! The in-memory model of a merged image tree, its limits, and its validation.
//!
//! A [`Tree`] is a flat table of [`Inode`]s indexed by [`InodeId`]; [`InodeId::ROOT`] (0) is the
//! root directory. A directory holds its entries as a map from name bytes to child id, so a hard
//! link is simply two entries naming the same (non-directory) id. Build one with [`Tree::new`],
//! [`Tree::add`] and [`Tree::link`]; every rule is checked again by [`Tree::layout`], which
//! [`crate::bootstrap::encode`] and [`crate::merkle::root_digest`] call, so a tree assembled by
//! hand with bad data is refused, never encoded.

use std::collections::{BTreeMap, VecDeque};

use crate::error::FormatError;
use crate::merkle::Digest;

/// Longest directory entry name, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target, in bytes (`PATH_MAX` - 1).
pub const MAX_SYMLINK_LEN: usize = 4095;
/// Deepest directory nesting below the root (a path of that many one-byte components fits in
/// `PATH_MAX`).
pub const MAX_DEPTH: u32 = 2048;
/// Longest xattr name, in bytes (Linux `XATTR_NAME_MAX`).
pub const MAX_XATTR_NAME_LEN: usize = 255;
/// Largest xattr value, in bytes (Linux `XATTR_SIZE_MAX`).
pub const MAX_XATTR_VALUE_LEN: usize = 65536;
/// Most xattrs on one inode.
pub const MAX_XATTRS_PER_INODE: usize = 256;
/// Most inodes in a tree (16 Mi).
pub const MAX_INODES: usize = 1 << 24;
/// Most directory entries in a tree, hard links included (32 Mi).
pub const MAX_DIRENTS: usize = 1 << 25;
/// Most chunk references (file, offset -> chunk) in a tree, and most distinct chunks (256 Mi).
pub const MAX_CHUNKS: usize = 1 << 28;
/// Most data blobs one bootstrap refers to.
pub const MAX_BLOBS: usize = 65536;
/// Largest mode value: permission, setuid/setgid and sticky bits only; the file type is
/// [`InodeKind`].
pub const MAX_MODE: u32 = 0o7777;

/// Index of an inode in [`Tree::inodes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InodeId(pub u32);

impl InodeId {
    /// The root directory.
    pub const ROOT: Self = Self(0);

    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

/// File type of an inode. The numeric value is the on-disk code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum InodeKind {
    /// Regular file: `size` and `chunks`.
    File = 1,
    /// Directory: `entries`.
    Dir = 2,
    /// Symbolic link: `target`.
    Symlink = 3,
    /// Character device: `rdev`.
    CharDev = 4,
    /// Block device: `rdev`.
    BlockDev = 5,
    /// Named pipe.
    Fifo = 6,
    /// Unix socket.
    Socket = 7,
}

impl InodeKind {
    /// The kind with on-disk code `code`, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::File,
            2 => Self::Dir,
            3 => Self::Symlink,
            4 => Self::CharDev,
            5 => Self::BlockDev,
            6 => Self::Fifo,
            7 => Self::Socket,
            _ => return None,
        })
    }

    /// The on-disk code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Modification time: seconds since the Unix epoch (may be negative) plus nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01T00:00:00Z.
    pub secs: i64,
    /// Nanoseconds, `< 1_000_000_000`.
    pub nanos: u32,
}

/// One chunk of a regular file: where it sits in the file, where its compressed bytes are, and
/// the sha256 of its uncompressed bytes.
///
/// Rule (checked): `file_offset` is a multiple of the chunk size and below the file size, chunks
/// are sorted by strictly increasing `file_offset`, and `uncompressed_size ==
/// min(chunk_size, size - file_offset)`. A chunk-sized range with no chunk is a hole (zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    /// Offset of the chunk in the file, in bytes.
    pub file_offset: u64,
    /// Index into [`Tree::blobs`].
    pub blob_index: u32,
    /// Offset of the compressed chunk in its blob, in bytes.
    pub compressed_offset: u64,
    /// Length of the compressed chunk, in bytes (`1..=2 * chunk_size`).
    pub compressed_size: u32,
    /// Length of the uncompressed chunk, in bytes.
    pub uncompressed_size: u32,
    /// sha256 of the uncompressed chunk.
    pub digest: Digest,
}

/// Chunk size of a tree: a power of two from 4 KiB to 16 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkSize(u8);

impl ChunkSize {
    /// Smallest log2 chunk size (4 KiB).
    pub const MIN_LOG2: u32 = 12;
    /// Largest log2 chunk size (16 MiB).
    pub const MAX_LOG2: u32 = 24;
    /// The default, 1 MiB.
    pub const DEFAULT: Self = Self(20);

    /// Chunk size `2^log2` bytes.
    ///
    /// # Errors
    /// [`FormatError::InvalidChunkSize`] unless `12 <= log2 <= 24`.
    pub fn from_log2(log2: u32) -> Result<Self, FormatError> {
        if !(Self::MIN_LOG2..=Self::MAX_LOG2).contains(&log2) {
            return Err(FormatError::InvalidChunkSize { log2 });
        }
        // Fits: at most 24.
        Ok(Self(log2 as u8))
    }

    /// log2 of the size.
    pub fn log2(self) -> u32 {
        u32::from(self.0)
    }

    /// Size in bytes.
    pub fn bytes(self) -> u32 {
        1 << self.0
    }
}

impl Default for ChunkSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One inode. Fields that do not apply to `kind` must be empty or zero (checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// File type.
    pub kind: InodeKind,
    /// Permission bits, `<= 0o7777`.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: Timestamp,
    /// Size in bytes: any for a file, the target length for a symlink, 0 otherwise.
    pub size: u64,
    /// Device number (Linux `dev_t` encoding) for char and block devices, 0 otherwise.
    pub rdev: u64,
    /// Extended attributes, name -> value.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Symlink target (1..=4095 bytes, no NUL); empty otherwise.
    pub target: Vec<u8>,
    /// Chunks of a regular file; empty otherwise.
    pub chunks: Vec<ChunkRef>,
    /// Entries of a directory, name -> child; empty otherwise.
    pub entries: BTreeMap<Vec<u8>, InodeId>,
}

impl Inode {
    /// An inode of `kind` with permission bits `mode`, owned by 0:0, mtime 0, and every other
    /// field empty.
    pub fn new(kind: InodeKind, mode: u32) -> Self {
        Self {
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: Timestamp::default(),
            size: 0,
            rdev: 0,
            xattrs: BTreeMap::new(),
            target: Vec::new(),
            chunks: Vec::new(),
            entries: BTreeMap::new(),
        }
    }

    /// A symlink to `target`, mode 0o777.
    pub fn symlink(target: &[u8]) -> Self {
        let mut inode = Self::new(InodeKind::Symlink, 0o777);
        inode.size = target.len() as u64;
        inode.target = target.to_vec();
        inode
    }
}

/// A merged image tree: chunk size, data blobs, and inodes (index 0 is the root directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// Chunk size of every file.
    pub chunk_size: ChunkSize,
    /// sha256 digest of each data blob (its OCI layer digest); [`ChunkRef::blob_index`] indexes
    /// this. Distinct.
    pub blobs: Vec<Digest>,
    /// Inodes; [`InodeId`] indexes this.
    pub inodes: Vec<Inode>,
}

/// The canonical numbering of a valid tree, produced by [`Tree::layout`].
///
/// Canonical order is breadth-first from the root, visiting each directory's entries in
/// byte-wise name order and numbering an inode when it is first reached.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Canonical position -> inode id.
    pub order: Vec<InodeId>,
    /// Inode id -> canonical position.
    pub position: Vec<u32>,
    /// Inode id -> number of directory entries naming it (0 for the root).
    pub links: Vec<u32>,
    /// Total directory entries.
    pub dirents: usize,
}

impl Tree {
    /// A tree holding only the root directory `root` (which must be a [`InodeKind::Dir`]; checked
    /// at [`Self::layout`]).
    pub fn new(chunk_size: ChunkSize, root: Inode) -> Self {
        Self {
            chunk_size,
            blobs: Vec::new(),
            inodes: vec![root],
        }
    }

    /// The inode `id`, if it exists.
    pub fn inode(&self, id: InodeId) -> Option<&Inode> {
        self.inodes.get(id.index())
    }

    /// Adds `inode` as `name` in directory `parent` and returns its id.
    ///
    /// # Errors
    /// [`FormatError::IndexOutOfRange`] or [`FormatError::InvalidInode`] if `parent` is not a
    /// directory, [`FormatError::InvalidName`] or [`FormatError::DuplicateName`] for a bad name.
    pub fn add(
        &mut self,
        parent: InodeId,
        name: &[u8],
        inode: Inode,
    ) -> Result<InodeId, FormatError> {
        let id =
            InodeId(
                u32::try_from(self.inodes.len()).map_err(|_| FormatError::LimitExceeded {
                    what: "inode count",
                    value: self.inodes.len() as u64,
                    max: MAX_INODES as u64,
                })?,
            );
        self.inodes.push(inode);
        if let Err(e) = self.link(parent, name, id) {
            self.inodes.pop();
            return Err(e);
        }
        Ok(id)
    }

    /// Adds a directory entry `name` in `parent` naming the existing inode `target` (a hard link
    /// when `target` already has a name).
    ///
    /// # Errors
    /// As [`Self::add`], and [`FormatError::IndexOutOfRange`] for an unknown `target`.
    pub fn link(
        &mut self,
        parent: InodeId,
        name: &[u8],
        target: InodeId,
    ) -> Result<(), FormatError> {
        check_name(parent.0, name)?;
        let len = self.inodes.len() as u64;
        if target.index() >= self.inodes.len() {
            return Err(FormatError::IndexOutOfRange {
                what: "link target",
                index: target.0.into(),
                len,
            });
        }
        let dir =
            self.inodes
                .get_mut(parent.index())
                .ok_or_else(|| FormatError::IndexOutOfRange {
                    what: "parent",
                    index: parent.0.into(),
                    len,
                })?;
        if dir.kind != InodeKind::Dir {
            return Err(FormatError::InvalidInode {
                inode: parent.0,
                reason: "parent is not a directory",
            });
        }
        if dir.entries.contains_key(name) {
            return Err(FormatError::DuplicateName {
                inode: parent.0,
                name: lossy(name),
            });
        }
        dir.entries.insert(name.to_vec(), target);
        Ok(())
    }

    /// Looks up a `/`-separated path relative to the root (`b""` is the root).
    pub fn lookup(&self, path: &[u8]) -> Option<InodeId> {
        let mut id = InodeId::ROOT;
        for part in path.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
            id = *self.inode(id)?.entries.get(part)?;
        }
        Some(id)
    }

    /// Validates the whole tree and computes its canonical numbering.
    ///
    /// # Errors
    /// The first rule broken: limits, names, inode attributes, chunk lists, and structure (root
    /// not a directory, a directory or the root linked more than once, which also rules out
    /// cycles, an unreachable inode, nesting deeper than [`MAX_DEPTH`]).
    pub fn layout(&self) -> Result<Layout, FormatError> {
        limit("inode count", self.inodes.len(), MAX_INODES)?;
        limit("blob count", self.blobs.len(), MAX_BLOBS)?;
        let mut sorted_blobs = self.blobs.clone();
        sorted_blobs.sort_unstable();
        if sorted_blobs.windows(2).any(|w| w[0] == w[1]) {
            return Err(FormatError::InvalidStructure {
                inode: 0,
                reason: "duplicate blob digest",
            });
        }
        let mut chunk_refs = 0usize;
        for (i, inode) in self.inodes.iter().enumerate() {
            // Fits: checked against MAX_INODES above.
            check_inode(i as u32, inode, self.chunk_size, self.blobs.len())?;
            chunk_refs += inode.chunks.len();
        }
        limit("chunk reference count", chunk_refs, MAX_CHUNKS)?;
        let root = self.inodes.first().ok_or(FormatError::InvalidStructure {
            inode: 0,
            reason: "tree has no root",
        })?;
        if root.kind != InodeKind::Dir {
            return Err(FormatError::InvalidStructure {
                inode: 0,
                reason: "root is not a directory",
            });
        }

        let n = self.inodes.len();
        let mut position = vec![u32::MAX; n];
        let mut links = vec![0u32; n];
        let mut order = vec![InodeId::ROOT];
        position[0] = 0;
        let mut dirents = 0usize;
        let mut queue = VecDeque::from([(InodeId::ROOT, 0u32)]);
        while let Some((dir, depth)) = queue.pop_front() {
            for (name, &child) in &self.inodes[dir.index()].entries {
                check_name(dir.0, name)?;
                dirents += 1;
                limit("directory entry count", dirents, MAX_DIRENTS)?;
                let Some(inode) = self.inodes.get(child.index()) else {
                    return Err(FormatError::IndexOutOfRange {
                        what: "directory entry inode",
                        index: child.0.into(),
                        len: n as u64,
                    });
                };
                if child == InodeId::ROOT {
                    return Err(FormatError::InvalidStructure {
                        inode: 0,
                        reason: "root linked from a directory",
                    });
                }
                links[child.index()] += 1;
                if inode.kind == InodeKind::Dir && links[child.index()] > 1 {
                    return Err(FormatError::InvalidStructure {
                        inode: child.0,
                        reason: "directory linked more than once",
                    });
                }
                if position[child.index()] != u32::MAX {
                    continue;
                }
                // Fits: order.len() < n <= MAX_INODES.
                position[child.index()] = order.len() as u32;
                order.push(child);
                if inode.kind == InodeKind::Dir {
                    if depth + 1 > MAX_DEPTH {
                        return Err(FormatError::LimitExceeded {
                            what: "directory depth",
                            value: u64::from(depth) + 1,
                            max: MAX_DEPTH.into(),
                        });
                    }
                    queue.push_back((child, depth + 1));
                }
            }
        }
        if let Some(i) = position.iter().position(|&p| p == u32::MAX) {
            return Err(FormatError::InvalidStructure {
                inode: i as u32,
                reason: "inode not reachable from the root",
            });
        }
        Ok(Layout {
            order,
            position,
            links,
            dirents,
        })
    }
}

fn limit(what: &'static str, value: usize, max: usize) -> Result<(), FormatError> {
    if value > max {
        return Err(FormatError::LimitExceeded {
            what,
            value: value as u64,
            max: max as u64,
        });
    }
    Ok(())
}

pub(crate) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Checks a directory entry name: 1..=255 bytes, no `/` or NUL, not `.` or `..`.
pub(crate) fn check_name(inode: u32, name: &[u8]) -> Result<(), FormatError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 255 bytes"
    } else if name.contains(&b'/') {
        "contains '/'"
    } else if name.contains(&0) {
        "contains NUL"
    } else if name == b"." || name == b".." {
        "is '.' or '..'"
    } else {
        return Ok(());
    };
    Err(FormatError::InvalidName {
        inode,
        name: lossy(name),
        reason,
    })
}

fn check_inode(
    id: u32,
    inode: &Inode,
    chunk_size: ChunkSize,
    blobs: usize,
) -> Result<(), FormatError> {
    let bad = |reason| Err(FormatError::InvalidInode { inode: id, reason });
    if inode.mode > MAX_MODE {
        return bad("mode has bits outside 0o7777");
    }
    if inode.mtime.nanos >= 1_000_000_000 {
        return bad("mtime nanoseconds >= 10^9");
    }
    limit(
        "xattrs on one inode",
        inode.xattrs.len(),
        MAX_XATTRS_PER_INODE,
    )?;
    for (name, value) in &inode.xattrs {
        let reason = if name.is_empty() {
            "empty xattr name"
        } else if name.len() > MAX_XATTR_NAME_LEN {
            "xattr name longer than 255 bytes"
        } else if name.contains(&0) {
            "xattr name contains NUL"
        } else {
            ""
        };
        if !reason.is_empty() {
            return Err(FormatError::InvalidName {
                inode: id,
                name: lossy(name),
                reason,
            });
        }
        limit("xattr value length", value.len(), MAX_XATTR_VALUE_LEN)?;
    }
    let kind = inode.kind;
    if kind != InodeKind::Dir && !inode.entries.is_empty() {
        return bad("non-directory with entries");
    }
    if kind != InodeKind::File && !inode.chunks.is_empty() {
        return bad("non-file with chunks");
    }
    if kind != InodeKind::Symlink && !inode.target.is_empty() {
        return bad("non-symlink with a target");
    }
    let is_dev = matches!(kind, InodeKind::CharDev | InodeKind::BlockDev);
    if !is_dev && inode.rdev != 0 {
        return bad("non-device with a device number");
    }
    match kind {
        InodeKind::File => check_chunks(id, inode, chunk_size, blobs),
        InodeKind::Symlink => {
            if inode.target.is_empty() || inode.target.len() > MAX_SYMLINK_LEN {
                return bad("symlink target not 1..=4095 bytes");
            }
            if inode.target.contains(&0) {
                return bad("symlink target contains NUL");
            }
            if inode.size != inode.target.len() as u64 {
                return bad("symlink size differs from its target length");
            }
            Ok(())
        }
        _ if inode.size != 0 => bad("non-file, non-symlink with a non-zero size"),
        _ => Ok(()),
    }
}

fn check_chunks(
    id: u32,
    inode: &Inode,
    chunk_size: ChunkSize,
    blobs: usize,
) -> Result<(), FormatError> {
    let cs = u64::from(chunk_size.bytes());
    let mut next_min = 0u64;
    for (i, c) in inode.chunks.iter().enumerate() {
        let bad = |reason| {
            Err(FormatError::InvalidChunk {
                inode: id,
                index: i as u32,
                reason,
            })
        };
        if c.file_offset % cs != 0 {
            return bad("file offset not a multiple of the chunk size");
        }
        if c.file_offset < next_min {
            return bad("file offsets not strictly increasing");
        }
        if c.file_offset >= inode.size {
            return bad("file offset at or beyond the file size");
        }
        if u64::from(c.uncompressed_size) != cs.min(inode.size - c.file_offset) {
            return bad("uncompressed size is not min(chunk size, file size - offset)");
        }
        if c.compressed_size == 0 || u64::from(c.compressed_size) > 2 * cs {
            return bad("compressed size not 1..=2 * chunk size");
        }
        if c.compressed_offset
            .checked_add(c.compressed_size.into())
            .is_none()
        {
            return bad("compressed range overflows");
        }
        if c.blob_index as usize >= blobs {
            return Err(FormatError::IndexOutOfRange {
                what: "chunk blob",
                index: c.blob_index.into(),
                len: blobs as u64,
            });
        }
        // Cannot overflow: file_offset < size <= u64::MAX and cs divides file_offset; the
        // saturating add only matters for the last possible chunk.
        next_min = c.file_offset.saturating_add(cs);
    }
    Ok(())
}
