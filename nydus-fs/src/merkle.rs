//! Merkle digests of a tree, exactly as specified in `docs/format.md` ("Merkle tree").
//!
//! - chunk: `sha256(uncompressed bytes)` ([`chunk_digest`]);
//! - inode: domain-separated sha256 over every attribute, the chunk list (with locations) of a
//!   file, and the sorted `(name, link id, child digest)` entries of a directory;
//! - root: domain-separated sha256 over the chunk size, the blob table and the root inode's
//!   digest ([`root_digest`]).
//!
//! Every variable-length field is length-prefixed and every hash starts with a length-prefixed
//! type tag, so two different trees never feed the same bytes to sha256.

use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::error::FormatError;
use crate::tree::{Inode, Layout, Tree};

/// Tag of an inode digest.
pub const INODE_TAG: &[u8] = b"damselfly.nydus-fs.inode.v1";
/// Tag of the root digest.
pub const ROOT_TAG: &[u8] = b"damselfly.nydus-fs.root.v1";
/// Link id of an entry whose child is a directory or has a single name.
pub const NO_LINK: u32 = u32::MAX;

/// A sha256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// sha256 of an uncompressed chunk.
pub fn chunk_digest(data: &[u8]) -> Digest {
    Digest(Sha256::digest(data).into())
}

/// The root digest of `tree`, after validating it.
///
/// # Errors
/// Whatever [`Tree::layout`] refuses.
pub fn root_digest(tree: &Tree) -> Result<Digest, FormatError> {
    let layout = tree.layout()?;
    Ok(root_digest_with(tree, &layout))
}

/// The root digest of a tree already validated into `layout`.
pub(crate) fn root_digest_with(tree: &Tree, layout: &Layout) -> Digest {
    let mut digests = vec![Digest::default(); tree.inodes.len()];
    // Breadth-first numbering puts every child after its parent, so walking the canonical
    // order backwards hashes children first.
    for &id in layout.order.iter().rev() {
        let inode = &tree.inodes[id.index()];
        digests[id.index()] = inode_digest(inode, layout, &digests);
    }
    let mut h = Hasher::new(ROOT_TAG);
    h.u8(tree.chunk_size.log2() as u8);
    h.u32(tree.blobs.len() as u32);
    for blob in &tree.blobs {
        h.raw(&blob.0);
    }
    h.raw(&digests[0].0);
    h.finish()
}

fn inode_digest(inode: &Inode, layout: &Layout, digests: &[Digest]) -> Digest {
    let mut h = Hasher::new(INODE_TAG);
    h.u8(inode.kind.code());
    h.u32(inode.mode);
    h.u32(inode.uid);
    h.u32(inode.gid);
    h.i64(inode.mtime.secs);
    h.u32(inode.mtime.nanos);
    h.u64(inode.size);
    h.u64(inode.rdev);
    h.u32(inode.xattrs.len() as u32);
    for (name, value) in &inode.xattrs {
        h.bytes(name);
        h.bytes(value);
    }
    h.bytes(&inode.target);
    h.u64(inode.chunks.len() as u64);
    for c in &inode.chunks {
        h.u64(c.file_offset);
        h.u32(c.uncompressed_size);
        h.raw(&c.digest.0);
        h.u32(c.blob_index);
        h.u64(c.compressed_offset);
        h.u32(c.compressed_size);
    }
    h.u64(inode.entries.len() as u64);
    for (name, &child) in &inode.entries {
        let i = child.index();
        // A valid layout never links a directory twice, so `links > 1` means a hard link.
        let link = if layout.links[i] > 1 {
            layout.position[i]
        } else {
            NO_LINK
        };
        h.bytes(name);
        h.u32(link);
        h.raw(&digests[i].0);
    }
    h.finish()
}

/// sha256 with the field encodings of the spec: integers little-endian at fixed width, byte
/// strings as `u64` length then bytes.
struct Hasher(Sha256);

impl Hasher {
    fn new(tag: &[u8]) -> Self {
        let mut h = Self(Sha256::new());
        h.bytes(tag);
        h
    }
    fn raw(&mut self, b: &[u8]) {
        self.0.update(b);
    }
    fn u8(&mut self, v: u8) {
        self.0.update([v]);
    }
    fn u32(&mut self, v: u32) {
        self.0.update(v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.update(v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.update(v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.update(b);
    }
    fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{ChunkSize, InodeKind};

    fn lp(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }

    /// The spec's byte-for-byte definition, written out independently of `Hasher`.
    #[test]
    fn empty_tree_matches_the_spec() {
        let tree = Tree::new(ChunkSize::DEFAULT, Inode::new(InodeKind::Dir, 0o755));
        let mut inode = lp(INODE_TAG);
        inode.push(2); // kind
        inode.extend_from_slice(&0o755u32.to_le_bytes()); // mode
        inode.extend_from_slice(&[0; 4 + 4 + 8 + 4 + 8 + 8]); // uid gid secs nanos size rdev
        inode.extend_from_slice(&0u32.to_le_bytes()); // xattr count
        inode.extend_from_slice(&lp(b"")); // target
        inode.extend_from_slice(&0u64.to_le_bytes()); // chunk count
        inode.extend_from_slice(&0u64.to_le_bytes()); // entry count
        let inode = Sha256::digest(&inode);
        let mut root = lp(ROOT_TAG);
        root.push(20);
        root.extend_from_slice(&0u32.to_le_bytes());
        root.extend_from_slice(&inode);
        let expected = Digest(Sha256::digest(&root).into());
        assert_eq!(root_digest(&tree).unwrap(), expected);
        assert_eq!(
            expected.to_string(),
            "sha256:19f6ef159c53515241fc22ce1ee2594f54722a9185f575daf53c826aca5d5e4a"
        );
    }
}
