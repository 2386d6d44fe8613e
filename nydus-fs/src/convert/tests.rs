//! Converter tests: layers are tar streams built in memory.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};

use flate2::write::GzEncoder;
use tar::{EntryType, Header};

use super::{BlobWriter, ConvertError, LayerBlob, LayerStats, Merger};
use crate::bootstrap;
use crate::merkle::{self, Digest};
use crate::tree::{ChunkSize, InodeId, InodeKind, Tree};

const MTIME: u64 = 1_700_000_000;

/// A layer under construction.
struct Layer(tar::Builder<Vec<u8>>);

fn header(kind: EntryType, mode: u32) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(0);
    h
}

impl Layer {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }
    fn file(mut self, path: &str, data: &[u8]) -> Self {
        let mut h = header(EntryType::Regular, 0o644);
        h.set_size(data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }
    fn file_as(mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = header(EntryType::Regular, mode);
        h.set_size(data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }
    fn dir(mut self, path: &str, mode: u32, uid: u64) -> Self {
        let mut h = header(EntryType::Directory, mode);
        h.set_uid(uid);
        self.0.append_data(&mut h, path, io::empty()).unwrap();
        self
    }
    fn link(mut self, kind: EntryType, path: &str, target: &str) -> Self {
        let mut h = header(kind, 0o777);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }
    fn special(mut self, kind: EntryType, path: &str, major: u32, minor: u32) -> Self {
        let mut h = header(kind, 0o600);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.0.append_data(&mut h, path, io::empty()).unwrap();
        self
    }
    fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
        self.0
            .append_pax_extensions(records.iter().map(|&(k, v)| (k, v)))
            .unwrap();
        self
    }
    /// An entry whose name and link name are written verbatim (bypassing the builder's checks).
    fn raw(mut self, kind: EntryType, path: &[u8], link: &[u8], data: &[u8]) -> Self {
        let mut h = header(kind, 0o644);
        h.set_size(data.len() as u64);
        h.as_old_mut().name[..path.len()].copy_from_slice(path);
        h.set_link_name_literal(link).unwrap();
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    fn tar(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
    fn gz(self) -> Vec<u8> {
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&self.tar()).unwrap();
        gz.finish().unwrap()
    }
}

struct Converted {
    tree: Tree,
    blobs: HashMap<Digest, Vec<u8>>,
    layers: Vec<LayerBlob>,
    stats: Vec<LayerStats>,
}

fn convert_with(layers: &[Vec<u8>], log2: u32) -> Result<Converted, ConvertError> {
    let mut merger = Merger::new(ChunkSize::from_log2(log2).unwrap());
    let mut blobs = HashMap::new();
    let mut stats = Vec::new();
    for layer in layers {
        let mut bytes = Vec::new();
        let mut blob = BlobWriter::new(&mut bytes);
        let s = merger.apply_layer(&layer[..], &mut blob)?;
        let (digest, len) = blob.finish().unwrap();
        assert_eq!((s.blob.digest, s.blob.len), (digest, len));
        assert_eq!(len, bytes.len() as u64);
        blobs.insert(digest, bytes);
        stats.push(s);
    }
    let (tree, layers) = merger.finish()?;
    // Encodes, and decodes back to the same tree with its root.
    let root = merkle::root_digest(&tree).unwrap();
    let encoded = bootstrap::encode(&tree).unwrap();
    assert_eq!(bootstrap::decode(&encoded, &root).unwrap(), tree);
    Ok(Converted {
        tree,
        blobs,
        layers,
        stats,
    })
}

fn convert(layers: &[Vec<u8>]) -> Converted {
    convert_with(layers, 12).unwrap()
}

impl Converted {
    fn id(&self, path: &str) -> InodeId {
        self.tree
            .lookup(path.as_bytes())
            .unwrap_or_else(|| panic!("{path} missing"))
    }
    fn kind(&self, path: &str) -> InodeKind {
        self.tree.inode(self.id(path)).unwrap().kind
    }
    fn exists(&self, path: &str) -> bool {
        self.tree.lookup(path.as_bytes()).is_some()
    }
    /// A file's data, read back from the blobs (holes as zeros).
    fn data(&self, id: InodeId) -> Vec<u8> {
        let inode = self.tree.inode(id).unwrap();
        assert_eq!(inode.kind, InodeKind::File);
        let mut out = vec![0u8; usize::try_from(inode.size).unwrap()];
        for c in &inode.chunks {
            let blob = &self.blobs[&self.tree.blobs[c.blob_index as usize]];
            let start = usize::try_from(c.compressed_offset).unwrap();
            let range = &blob[start..start + c.compressed_size as usize];
            let data = zstd::bulk::decompress(range, c.uncompressed_size as usize).unwrap();
            assert_eq!(data.len(), c.uncompressed_size as usize);
            assert_eq!(merkle::chunk_digest(&data), c.digest);
            let off = usize::try_from(c.file_offset).unwrap();
            out[off..off + data.len()].copy_from_slice(&data);
        }
        out
    }
    /// Every path of the tree (depth first), with its inode.
    fn paths(&self) -> BTreeMap<String, InodeId> {
        let mut out = BTreeMap::new();
        let mut stack = vec![(String::new(), InodeId::ROOT)];
        while let Some((path, id)) = stack.pop() {
            for (name, &child) in &self.tree.inode(id).unwrap().entries {
                let p = format!("{path}{}", String::from_utf8_lossy(name));
                stack.push((format!("{p}/"), child));
                out.insert(p, child);
            }
        }
        out
    }
    /// Asserts the tree's regular files are exactly `expected`, with that content.
    fn assert_files(&self, expected: &[(&str, &[u8])]) {
        let files: BTreeMap<String, Vec<u8>> = self
            .paths()
            .into_iter()
            .filter(|(_, id)| self.tree.inode(*id).unwrap().kind == InodeKind::File)
            .map(|(p, id)| (p, self.data(id)))
            .collect();
        let expected: BTreeMap<String, Vec<u8>> = expected
            .iter()
            .map(|(p, d)| ((*p).to_owned(), d.to_vec()))
            .collect();
        assert_eq!(files, expected);
    }
}

/// Deterministic incompressible-ish bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn whiteouts_and_opaque_directories() {
    let l1 = Layer::new()
        .dir("etc", 0o755, 0)
        .file("etc/a", b"A")
        .file("etc/b", b"B")
        .file("opt/keep", b"K")
        .file("opt/x/y", b"Y")
        .file("gone/deep/file", b"G")
        .tar();
    let l2 = Layer::new()
        .file("etc/.wh.a", b"")
        .file("etc/c", b"C")
        // A whiteout only hides lower layers: etc/c stays.
        .file("etc/.wh.c", b"")
        .file(".wh.gone", b"")
        .dir("opt", 0o700, 0)
        .file("opt/new", b"N")
        .file("opt/.wh..wh..opq", b"")
        // After the marker, through a lower directory: x stays, its lower content does not.
        .file("opt/x/z", b"Z")
        .file(".wh.never-existed", b"")
        .gz();
    let c = convert(&[l1, l2]);
    c.assert_files(&[
        ("etc/b", b"B"),
        ("etc/c", b"C"),
        ("opt/new", b"N"),
        ("opt/x/z", b"Z"),
    ]);
    assert!(!c.exists("gone"));
    assert!(c.paths().keys().all(|p| !p.contains(".wh.")));
    assert_eq!(c.tree.inode(c.id("opt")).unwrap().mode, 0o700);
    assert_eq!(c.stats[1].whiteouts, 5);
}

#[test]
fn opaque_keeps_entries_of_the_same_layer_only() {
    let l1 = Layer::new()
        .file("d/old", b"old")
        .file("d/sub/old", b"o")
        .tar();
    let l2 = Layer::new()
        .file("d/sub/new", b"n")
        .file("d/.wh..wh..opq", b"")
        .tar();
    let c = convert(&[l1, l2]);
    c.assert_files(&[("d/sub/new", b"n")]);
}

#[test]
fn replacement_and_implicit_parents() {
    let l1 = Layer::new()
        .file("a", b"file a")
        .dir("b", 0o755, 0)
        .file("b/x", b"x")
        .file("p/q/r", b"r")
        .tar();
    let l2 = Layer::new()
        .dir("a", 0o750, 0)
        .file("a/f", b"f")
        .file("b", b"now a file")
        .dir("p", 0o700, 5)
        // Duplicate in one layer: the later entry wins.
        .file("dup", b"first")
        .file("dup", b"second")
        .tar();
    let c = convert(&[l1, l2]);
    c.assert_files(&[
        ("a/f", b"f"),
        ("b", b"now a file"),
        ("dup", b"second"),
        ("p/q/r", b"r"),
    ]);
    assert_eq!(c.kind("a"), InodeKind::Dir);
    let q = c.tree.inode(c.id("p/q")).unwrap();
    assert_eq!((q.mode, q.uid, q.mtime.secs), (0o755, 0, 0));
    let p = c.tree.inode(c.id("p")).unwrap();
    assert_eq!((p.mode, p.uid, p.mtime.secs), (0o700, 5, MTIME as i64));
    // Nothing deleted or replaced is left behind.
    assert_eq!(c.tree.inodes.len(), c.paths().len() + 1);
}

#[test]
fn hard_links_share_an_inode() {
    let l1 = Layer::new()
        .file("f", b"hello")
        .link(EntryType::Link, "g", "f")
        .link(EntryType::Link, "dir/h", "./f")
        .tar();
    let l2 = Layer::new().file(".wh.f", b"").tar();
    let c = convert(std::slice::from_ref(&l1));
    assert_eq!(c.id("f"), c.id("g"));
    assert_eq!(c.id("f"), c.id("dir/h"));
    assert_eq!(c.tree.inodes.len(), 3); // root, dir, and one inode for f, g, dir/h
    c.assert_files(&[("dir/h", b"hello"), ("f", b"hello"), ("g", b"hello")]);
    // Deleting one name keeps the others.
    let c = convert(&[l1.clone(), l2.clone()]);
    assert_eq!(c.id("g"), c.id("dir/h"));
    c.assert_files(&[("dir/h", b"hello"), ("g", b"hello")]);
    // A link to the deleted name is an error.
    let l3 = Layer::new().link(EntryType::Link, "k", "f").tar();
    let err = convert_with(&[l1.clone(), l2, l3], 12).err().unwrap();
    assert!(
        matches!(&err, ConvertError::BadHardLink { layer: 2, path, .. } if path == "k"),
        "{err}"
    );
    // So is a link to a directory.
    let l4 = Layer::new().link(EntryType::Link, "k", "dir").tar();
    let err = convert_with(&[l1, l4], 12).err().unwrap();
    assert!(matches!(err, ConvertError::BadHardLink { .. }), "{err}");
}

#[test]
fn special_files_xattrs_and_times() {
    let l1 = Layer::new()
        .link(EntryType::Symlink, "abs", "/etc/passwd")
        .link(EntryType::Symlink, "rel", "../../x")
        .special(EntryType::Fifo, "fifo", 0, 0)
        .special(EntryType::Char, "dev/null", 1, 3)
        .special(EntryType::Block, "dev/sda", 8, 0x1_0000)
        .pax(&[
            ("SCHILY.xattr.user.k", b"v"),
            ("SCHILY.xattr.security.capability", &[1, 0, 0, 2, 0xff]),
            ("mtime", b"1700000001.123456789"),
        ])
        .file("xattr", b"x")
        .file("empty", b"")
        // A setuid file whose header mode also carries file-type bits.
        .file_as("suid", b"s", 0o104_755, 1000, 2000)
        .tar();
    let c = convert(&[l1]);
    let ino = |p: &str| c.tree.inode(c.id(p)).unwrap().clone();
    assert_eq!(ino("abs").target, b"/etc/passwd");
    assert_eq!(ino("abs").size, 11);
    assert_eq!(ino("rel").target, b"../../x");
    assert_eq!(ino("fifo").kind, InodeKind::Fifo);
    assert_eq!(
        (ino("dev/null").kind, ino("dev/null").rdev),
        (InodeKind::CharDev, 0x103)
    );
    assert_eq!(ino("dev/sda").kind, InodeKind::BlockDev);
    assert_eq!(ino("dev/sda").rdev, 0x1000_0800);
    let x = ino("xattr");
    assert_eq!(x.xattrs.len(), 2);
    assert_eq!(x.xattrs[&b"user.k"[..]], b"v");
    assert_eq!(x.xattrs[&b"security.capability"[..]], [1, 0, 0, 2, 0xff]);
    assert_eq!((x.mtime.secs, x.mtime.nanos), (1_700_000_001, 123_456_789));
    assert!(ino("empty").chunks.is_empty());
    assert_eq!(ino("empty").size, 0);
    let s = ino("suid");
    assert_eq!((s.mode, s.uid, s.gid), (0o4755, 1000, 2000));
    assert_eq!(ino("fifo").mtime.secs, MTIME as i64);
    c.assert_files(&[("empty", b""), ("suid", b"s"), ("xattr", b"x")]);
}

#[test]
fn identical_chunks_are_stored_once() {
    let a = noise(1, 3 * 4096);
    let mut b = a.clone();
    b.extend_from_slice(&noise(2, 100));
    let l1 = Layer::new().file("a", &a).file("a-copy", &a).tar();
    let l2 = Layer::new().file("b", &b).gz();
    let l3 = Layer::new().file("c", &a[..4096]).tar();
    let c = convert(&[l1, l2, l3]);
    c.assert_files(&[("a", &a), ("a-copy", &a), ("b", &b), ("c", &a[..4096])]);
    let s = &c.stats;
    assert_eq!((s[0].chunks_written, s[0].chunks_deduplicated), (3, 3));
    assert_eq!((s[1].chunks_written, s[1].chunks_deduplicated), (1, 3));
    assert_eq!((s[2].chunks_written, s[2].chunks_deduplicated), (0, 1));
    // The second blob holds only the new 100-byte tail; the third is empty and not in the tree.
    let tail = &c.tree.inode(c.id("b")).unwrap().chunks[3];
    assert_eq!(c.layers[1].len, u64::from(tail.compressed_size));
    assert!(c.layers[0].len > 3 * 4096);
    assert_eq!(c.layers[2].len, 0);
    assert_eq!(c.layers[2].blob_index, None);
    assert_eq!(c.tree.blobs.len(), 2);
    assert_eq!(c.tree.blobs, [c.layers[0].digest, c.layers[1].digest]);
}

#[test]
fn zero_chunks_are_holes() {
    let mut data = noise(3, 4096);
    data.extend_from_slice(&[0; 2 * 4096]);
    data.extend_from_slice(&noise(4, 10));
    data.extend_from_slice(&[0; 4096]);
    data.extend_from_slice(&[0; 7]);
    let c = convert(&[Layer::new().file("sparse", &data).tar()]);
    let chunks = &c.tree.inode(c.id("sparse")).unwrap().chunks;
    let offsets: Vec<u64> = chunks.iter().map(|c| c.file_offset).collect();
    assert_eq!(offsets, [0, 3 * 4096]);
    assert_eq!(c.stats[0].holes, 3);
    c.assert_files(&[("sparse", &data)]);
}

/// A tar stream of one file: `zeros` zero bytes then `tail`, generated on the fly.
fn big_file_tar(zeros: u64, tail: &[u8]) -> impl Read {
    let size = zeros + tail.len() as u64;
    let mut h = header(EntryType::Regular, 0o644);
    h.set_path("big").unwrap();
    h.set_size(size);
    h.set_cksum();
    let pad = (512 - size % 512) % 512;
    io::Cursor::new(h.as_bytes().to_vec())
        .chain(io::repeat(0).take(zeros))
        .chain(io::Cursor::new(tail.to_vec()))
        .chain(io::repeat(0).take(pad + 1024))
}

#[test]
fn five_gib_sparse_file_streams() {
    let zeros = 5 << 30;
    let tail = noise(6, 100);
    let mut merger = Merger::new(ChunkSize::from_log2(24).unwrap());
    let mut bytes = Vec::new();
    let mut blob = BlobWriter::new(&mut bytes);
    let stats = merger
        .apply_layer(big_file_tar(zeros, &tail), &mut blob)
        .unwrap();
    assert_eq!((stats.holes, stats.chunks_written), (5 * 64, 1));
    let (digest, _) = blob.finish().unwrap();
    let (tree, _) = merger.finish().unwrap();
    let file = tree.inode(tree.lookup(b"big").unwrap()).unwrap();
    assert_eq!(file.size, zeros + 100);
    assert_eq!(file.chunks.len(), 1);
    let chunk = file.chunks[0];
    assert_eq!((chunk.file_offset, chunk.uncompressed_size), (zeros, 100));
    assert_eq!(tree.blobs, [digest]);
    let start = usize::try_from(chunk.compressed_offset).unwrap();
    let range = &bytes[start..start + chunk.compressed_size as usize];
    assert_eq!(zstd::bulk::decompress(range, 100).unwrap(), tail);
    let root = merkle::root_digest(&tree).unwrap();
    let encoded = bootstrap::encode(&tree).unwrap();
    assert_eq!(bootstrap::decode(&encoded, &root).unwrap(), tree);
}

fn invalid_path(err: &ConvertError) -> String {
    match err {
        ConvertError::InvalidEntry { path, .. } => path.clone(),
        other => panic!("expected InvalidEntry, got {other}"),
    }
}

#[test]
fn hostile_entries_are_rejected() {
    for path in [&b"../../etc/passwd"[..], b"a/../../x", b"/../x"] {
        let l = Layer::new()
            .raw(EntryType::Regular, path, b"", b"pwned")
            .tar();
        let err = convert_with(&[l], 12).err().unwrap();
        assert_eq!(invalid_path(&err).as_bytes(), path);
        assert!(err.to_string().contains("escapes the root"), "{err}");
    }
    // Hard link out of the root.
    let l = Layer::new()
        .file("x", b"x")
        .raw(EntryType::Link, b"l", b"../x", b"")
        .tar();
    let err = convert_with(&[l], 12).err().unwrap();
    assert!(
        matches!(&err, ConvertError::BadHardLink { path, target, .. } if path == "l" && target == "../x"),
        "{err}"
    );
    // NUL in a (PAX) path.
    let l = Layer::new()
        .pax(&[("path", b"a\0b")])
        .raw(EntryType::Regular, b"placeholder", b"", b"")
        .tar();
    let err = convert_with(&[l], 12).err().unwrap();
    assert_eq!(invalid_path(&err), "a\0b");
    assert!(err.to_string().contains("NUL"), "{err}");
    // A 256-byte name (GNU long name).
    let long = "n".repeat(256);
    let l = Layer::new().file(&format!("dir/{long}"), b"").tar();
    let err = convert_with(&[l], 12).err().unwrap();
    assert_eq!(invalid_path(&err), format!("dir/{long}"));
    assert!(err.to_string().contains("longer than 255"), "{err}");
    // 255 is fine.
    let ok = "n".repeat(255);
    convert_with(&[Layer::new().file(&ok, b"").tar()], 12).unwrap();
    // A path through a file, and a non-directory root.
    let l = Layer::new().file("f", b"").file("f/x", b"").tar();
    let err = convert_with(&[l], 12).err().unwrap();
    assert_eq!(invalid_path(&err), "f/x");
    let l = Layer::new().raw(EntryType::Regular, b"./", b"", b"").tar();
    assert_eq!(invalid_path(&convert_with(&[l], 12).err().unwrap()), "./");
}

#[test]
fn merger_is_poisoned_after_an_error() {
    let mut merger = Merger::new(ChunkSize::DEFAULT);
    let bad = Layer::new()
        .raw(EntryType::Regular, b"../x", b"", b"")
        .tar();
    let mut blob = BlobWriter::new(Vec::new());
    assert!(merger.apply_layer(&bad[..], &mut blob).is_err());
    let good = Layer::new().file("a", b"a").tar();
    let mut blob = BlobWriter::new(Vec::new());
    assert!(matches!(
        merger.apply_layer(&good[..], &mut blob),
        Err(ConvertError::Poisoned)
    ));
    assert!(matches!(merger.finish(), Err(ConvertError::Poisoned)));
}

#[test]
fn a_used_blob_writer_is_refused() {
    let mut merger = Merger::new(ChunkSize::DEFAULT);
    let mut blob = BlobWriter::new(Vec::new());
    blob.append(b"x").unwrap();
    let l = Layer::new().file("a", b"a").tar();
    assert!(matches!(
        merger.apply_layer(&l[..], &mut blob),
        Err(ConvertError::BlobNotEmpty { len: 1, .. })
    ));
}

#[test]
fn truncated_or_corrupt_layers_fail() {
    let l = Layer::new().file("a", &noise(5, 10_000)).gz();
    let err = convert_with(&[l[..l.len() / 2].to_vec()], 12)
        .err()
        .unwrap();
    assert!(matches!(err, ConvertError::Io { .. }), "{err}");
    let mut l = Layer::new().file("a", b"abc").tar();
    l[0] ^= 1; // checksum mismatch
    let err = convert_with(&[l], 12).err().unwrap();
    assert!(matches!(err, ConvertError::Io { .. }), "{err}");
}
