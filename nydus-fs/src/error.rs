//! Why a tree or a bootstrap is refused.

use crate::merkle::Digest;

/// Every reason [`crate::bootstrap::decode`] refuses a bootstrap, or [`crate::bootstrap::encode`]
/// and [`crate::merkle::root_digest`] refuse a tree.
///
/// All of them mean "this metadata is not trustworthy": the image must not be mounted. Byte
/// offsets are from the start of the bootstrap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The input ends before a section or field it declares.
    #[error("bootstrap truncated: {what} needs {needed} bytes at offset {offset}, input has {len}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where it starts.
        offset: u64,
        /// How many bytes it needs.
        needed: u64,
        /// Total input length.
        len: u64,
    },
    /// The input is longer than the sections it declares.
    #[error("bootstrap has {extra} trailing bytes after offset {offset}")]
    TrailingBytes {
        /// Where the declared sections end.
        offset: u64,
        /// How many bytes follow.
        extra: u64,
    },
    /// Not a bootstrap at all.
    #[error("bad bootstrap magic {found:02x?}")]
    BadMagic {
        /// The first eight bytes.
        found: [u8; 8],
    },
    /// A format version this reader does not know.
    #[error("unsupported bootstrap format version {found} (this reader supports {supported})")]
    UnsupportedVersion {
        /// Version in the header.
        found: u32,
        /// Version this reader supports.
        supported: u32,
    },
    /// Feature flags this reader does not know.
    #[error("unknown bootstrap feature flags {flags:#x}")]
    UnknownFlags {
        /// The unknown bits.
        flags: u64,
    },
    /// A field that must hold a fixed value does not.
    #[error("bad {field} at offset {offset}: {value}")]
    BadField {
        /// Which field.
        field: &'static str,
        /// Where it is.
        offset: u64,
        /// What was found.
        value: u64,
    },
    /// Chunk size not a power of two in 4 KiB..=16 MiB.
    #[error("invalid chunk size 2^{log2} (must be 2^12..=2^24)")]
    InvalidChunkSize {
        /// log2 of the chunk size.
        log2: u32,
    },
    /// A count or size over one of the documented limits.
    #[error("{what} is {value}, over the limit {max}")]
    LimitExceeded {
        /// Which limit.
        what: &'static str,
        /// The value found.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// A reference to a table entry that does not exist.
    #[error("{what} index {index} out of range (table has {len} entries)")]
    IndexOutOfRange {
        /// Which reference.
        what: &'static str,
        /// The index found.
        index: u64,
        /// Size of the table.
        len: u64,
    },
    /// A directory entry or xattr name that is empty, too long, `.`/`..`, or contains `/` or NUL.
    #[error("invalid name {name:?} in inode {inode}: {reason}")]
    InvalidName {
        /// The directory (or, for xattrs, the inode) holding the name.
        inode: u32,
        /// The name, lossily decoded for display.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two entries of one directory (or two xattrs of one inode) with the same name.
    #[error("duplicate name {name:?} in inode {inode}")]
    DuplicateName {
        /// The directory or inode.
        inode: u32,
        /// The name, lossily decoded.
        name: String,
    },
    /// Inode attributes that break a rule of the format (see the reason).
    #[error("invalid inode {inode}: {reason}")]
    InvalidInode {
        /// The inode.
        inode: u32,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A file's chunk list breaks the chunk rule.
    #[error("invalid chunk {index} of inode {inode}: {reason}")]
    InvalidChunk {
        /// The file inode.
        inode: u32,
        /// Position in the file's chunk list.
        index: u32,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The tree's shape is not a tree: the root or a directory is linked twice (which covers
    /// cycles), or an inode is not reachable from the root.
    #[error("invalid tree structure at inode {inode}: {reason}")]
    InvalidStructure {
        /// The offending inode.
        inode: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// The bytes decode to a valid tree, but are not the canonical encoding of it.
    #[error("bootstrap is not in canonical form (first difference at offset {offset})")]
    NonCanonical {
        /// First byte that differs from the canonical encoding.
        offset: u64,
    },
    /// The tree does not reproduce the root digest from the image manifest.
    #[error("merkle root mismatch: expected {expected}, bootstrap gives {actual}")]
    RootMismatch {
        /// Root from the manifest.
        expected: Digest,
        /// Root the bootstrap hashes to.
        actual: Digest,
    },
}
