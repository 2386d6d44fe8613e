use super::*;
use crate::merkle::{chunk_digest, root_digest};

const MIB: u64 = 1 << 20;

fn file(size: u64, chunks: Vec<ChunkRef>) -> Inode {
    let mut inode = Inode::new(InodeKind::File, 0o644);
    inode.size = size;
    inode.chunks = chunks;
    inode
}

fn chunk(file_offset: u64, size: u32, seed: &[u8]) -> ChunkRef {
    ChunkRef {
        file_offset,
        blob_index: 0,
        compressed_offset: file_offset / 2,
        compressed_size: size / 2 + 1,
        uncompressed_size: size,
        digest: chunk_digest(seed),
    }
}

/// A tree with every inode kind, hard links, xattrs, a >4 GiB sparse file, an empty file and
/// non-UTF-8 names.
fn sample() -> Tree {
    let mut root = Inode::new(InodeKind::Dir, 0o755);
    root.mtime = Timestamp {
        secs: -5,
        nanos: 999_999_999,
    };
    let mut tree = Tree::new(ChunkSize::DEFAULT, root);
    tree.blobs = vec![chunk_digest(b"blob0"), chunk_digest(b"blob1")];
    let etc = tree
        .add(InodeId::ROOT, b"etc", Inode::new(InodeKind::Dir, 0o755))
        .unwrap();
    let mut passwd = file(10, vec![chunk(0, 10, b"root:x:0:0")]);
    passwd.xattrs.insert(
        b"security.selinux".to_vec(),
        b"system_u:object_r:etc_t:s0\0".to_vec(),
    );
    passwd.xattrs.insert(b"user.empty".to_vec(), Vec::new());
    passwd.uid = 1000;
    passwd.gid = 1001;
    passwd.mtime = Timestamp {
        secs: 1_700_000_000,
        nanos: 123,
    };
    let passwd = tree.add(etc, b"passwd", passwd).unwrap();
    tree.link(InodeId::ROOT, b"passwd-hardlink", passwd)
        .unwrap();
    tree.link(etc, b"passwd.bak", passwd).unwrap();
    tree.add(etc, b"empty", file(0, Vec::new())).unwrap();
    // 5 GiB + 7 bytes, with only the first, one middle and the last chunk present.
    let size = 5 * 1024 * MIB + 7;
    let mut sparse = file(
        size,
        vec![
            chunk(0, MIB as u32, b"a"),
            chunk(4097 * MIB, MIB as u32, b"b"),
        ],
    );
    let mut last = chunk(5 * 1024 * MIB, 7, b"tail");
    last.blob_index = 1;
    last.compressed_offset = u64::from(u32::MAX) + 10;
    sparse.chunks.push(last);
    tree.add(InodeId::ROOT, b"sparse.img", sparse).unwrap();
    // Same first chunk as sparse.img: deduplicated in the chunk table.
    tree.add(
        InodeId::ROOT,
        b"dup",
        file(MIB, vec![chunk(0, MIB as u32, b"a")]),
    )
    .unwrap();
    tree.add(InodeId::ROOT, b"link", Inode::symlink(b"../\xff/target"))
        .unwrap();
    let dev = tree
        .add(InodeId::ROOT, b"dev", Inode::new(InodeKind::Dir, 0o755))
        .unwrap();
    let mut null = Inode::new(InodeKind::CharDev, 0o666);
    null.rdev = (1 << 8) | 3;
    tree.add(dev, b"null", null).unwrap();
    let mut sda = Inode::new(InodeKind::BlockDev, 0o660);
    sda.rdev = 8 << 8;
    tree.add(dev, b"sda", sda).unwrap();
    tree.add(dev, b"fifo", Inode::new(InodeKind::Fifo, 0o600))
        .unwrap();
    tree.add(dev, b"sock", Inode::new(InodeKind::Socket, 0o7777))
        .unwrap();
    tree.add(
        dev,
        b"\x80\xfe non-utf8 \x01\x7f",
        Inode::new(InodeKind::Fifo, 0),
    )
    .unwrap();
    tree.add(dev, &[b'n'; 255], Inode::new(InodeKind::Fifo, 0))
        .unwrap();
    tree
}

fn roundtrip(tree: &Tree) -> (Vec<u8>, Digest, Tree) {
    let bytes = encode(tree).unwrap();
    let root = root_digest(tree).unwrap();
    let decoded = decode(&bytes, &root).unwrap();
    (bytes, root, decoded)
}

#[test]
fn round_trip_every_kind() {
    let tree = sample();
    let (bytes, root, decoded) = roundtrip(&tree);
    assert_eq!(encode(&decoded).unwrap(), bytes);
    assert_eq!(root_digest(&decoded).unwrap(), root);
    // The sample was built in canonical (breadth-first, sorted) order except where it was not;
    // compare through paths rather than ids.
    for path in [&b"etc/passwd"[..], b"passwd-hardlink", b"etc/passwd.bak"] {
        let id = decoded.lookup(path).unwrap();
        assert_eq!(decoded.inode(id), tree.inode(tree.lookup(path).unwrap()));
    }
    assert_eq!(
        decoded.lookup(b"etc/passwd"),
        decoded.lookup(b"passwd-hardlink")
    );
    assert_eq!(
        decoded.lookup(b"etc/passwd"),
        decoded.lookup(b"etc/passwd.bak")
    );
    for path in [
        &b"sparse.img"[..],
        b"etc/empty",
        b"link",
        b"dev/null",
        b"dev/sda",
        b"dev/fifo",
        b"dev/sock",
        b"dev/\x80\xfe non-utf8 \x01\x7f",
        b"dup",
    ] {
        let a = decoded.inode(decoded.lookup(path).unwrap()).unwrap();
        let b = tree.inode(tree.lookup(path).unwrap()).unwrap();
        assert_eq!(a, b, "{}", String::from_utf8_lossy(path));
    }
    let sparse = decoded
        .inode(decoded.lookup(b"sparse.img").unwrap())
        .unwrap();
    assert_eq!(sparse.size, 5 * 1024 * MIB + 7);
    assert_eq!(sparse.chunks.len(), 3);
    // Two files share one chunk: 4 distinct chunks for 5 references.
    assert_eq!(u32::from_le_bytes(bytes[32..36].try_into().unwrap()), 4);
}

#[test]
fn hard_links_are_in_the_root() {
    // Two identical files vs one file with two names: different roots.
    let mut a = Tree::new(ChunkSize::DEFAULT, Inode::new(InodeKind::Dir, 0o755));
    let mut b = a.clone();
    a.add(InodeId::ROOT, b"x", Inode::new(InodeKind::Fifo, 0))
        .unwrap();
    a.add(InodeId::ROOT, b"y", Inode::new(InodeKind::Fifo, 0))
        .unwrap();
    let x = b
        .add(InodeId::ROOT, b"x", Inode::new(InodeKind::Fifo, 0))
        .unwrap();
    b.link(InodeId::ROOT, b"y", x).unwrap();
    assert_ne!(root_digest(&a).unwrap(), root_digest(&b).unwrap());
}

#[test]
fn one_mode_bit_changes_the_root() {
    let tree = sample();
    let root = root_digest(&tree).unwrap();
    for bit in 0..12 {
        let mut t = tree.clone();
        let id = t.lookup(b"dev/null").unwrap();
        t.inodes[id.index()].mode ^= 1 << bit;
        assert_ne!(root_digest(&t).unwrap(), root);
        let bytes = encode(&t).unwrap();
        assert!(matches!(
            decode(&bytes, &root),
            Err(FormatError::RootMismatch { .. })
        ));
    }
}

#[test]
fn every_bit_flip_is_refused() {
    let tree = sample();
    let (bytes, root, _) = roundtrip(&tree);
    let mut refused_by_root = 0;
    for pos in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[pos] ^= 1 << bit;
            match decode(&b, &root) {
                Ok(_) => panic!("flip of bit {bit} at {pos} accepted"),
                Err(FormatError::RootMismatch { .. }) => refused_by_root += 1,
                Err(_) => {}
            }
        }
    }
    // Most content bits (names, attributes, digests) get as far as the root check.
    assert!(refused_by_root > bytes.len(), "{refused_by_root}");
}

#[test]
fn every_truncation_is_refused() {
    let (bytes, root, _) = roundtrip(&sample());
    for len in 0..bytes.len() {
        let err = decode(&bytes[..len], &root).unwrap_err();
        assert!(matches!(err, FormatError::Truncated { .. }), "{len}: {err}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(
        matches!(decode(&long, &root), Err(FormatError::TrailingBytes { offset, extra: 1 }) if offset == bytes.len() as u64)
    );
}

#[test]
fn header_checks() {
    let (bytes, root, _) = roundtrip(&sample());
    let with = |at: usize, v: &[u8]| {
        let mut b = bytes.clone();
        b[at..at + v.len()].copy_from_slice(v);
        decode(&b, &root).unwrap_err()
    };
    assert!(matches!(with(0, b"X"), FormatError::BadMagic { .. }));
    assert!(matches!(
        with(8, &2u32.to_le_bytes()),
        FormatError::UnsupportedVersion {
            found: 2,
            supported: 1
        }
    ));
    assert!(matches!(
        with(16, &1u64.to_le_bytes()),
        FormatError::UnknownFlags { flags: 1 }
    ));
    assert!(matches!(
        with(24, &11u32.to_le_bytes()),
        FormatError::InvalidChunkSize { log2: 11 }
    ));
    assert!(matches!(
        with(24, &25u32.to_le_bytes()),
        FormatError::InvalidChunkSize { log2: 25 }
    ));
    assert!(matches!(
        with(36, &u32::MAX.to_le_bytes()),
        FormatError::LimitExceeded { .. }
    ));
    // Huge but in-limit counts are refused by length before anything is allocated.
    assert!(matches!(
        with(32, &(1u32 << 28).to_le_bytes()),
        FormatError::BadField {
            field: "total length",
            ..
        }
    ));
}

/// Builds a bootstrap by hand from a valid one, fixing up nothing: used to show that structural
/// errors are caught even when the total length is consistent.
fn patch(bytes: &[u8], at: usize, v: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at..at + v.len()].copy_from_slice(v);
    b
}

fn small() -> Tree {
    let mut tree = Tree::new(ChunkSize::DEFAULT, Inode::new(InodeKind::Dir, 0o755));
    let d = tree
        .add(InodeId::ROOT, b"d", Inode::new(InodeKind::Dir, 0o755))
        .unwrap();
    tree.add(d, b"a", Inode::new(InodeKind::Fifo, 0)).unwrap();
    tree.add(d, b"b", Inode::new(InodeKind::Fifo, 0)).unwrap();
    tree
}

#[test]
fn structural_attacks_are_refused() {
    let (bytes, root, _) = roundtrip(&small());
    let inodes = HEADER_SIZE;
    let dirents = inodes + 4 * INODE_ENTRY_SIZE;
    let strings = dirents + 3 * DIRENT_ENTRY_SIZE;
    assert_eq!(&bytes[strings..], b"dab");
    // Entry "d/a" pointing to its own directory: a cycle.
    let e = patch(&bytes, dirents + DIRENT_ENTRY_SIZE + 8, &1u32.to_le_bytes());
    assert!(
        matches!(decode(&e, &root), Err(FormatError::InvalidStructure { .. })),
        "{:?}",
        decode(&e, &root)
    );
    // Entry pointing to the root.
    let e = patch(&bytes, dirents + DIRENT_ENTRY_SIZE + 8, &0u32.to_le_bytes());
    assert!(matches!(
        decode(&e, &root),
        Err(FormatError::InvalidStructure { .. })
    ));
    // Out-of-range inode.
    let e = patch(&bytes, dirents + 8, &9u32.to_le_bytes());
    assert!(matches!(
        decode(&e, &root),
        Err(FormatError::IndexOutOfRange { .. })
    ));
    // Names with '/', NUL, ".", "..", and a duplicate.
    for (name, ok) in [(&b"/ab"[..], false), (b"d\0b", false), (b"dbb", true)] {
        let e = patch(&bytes, strings, name);
        let err = decode(&e, &root).unwrap_err();
        assert!(
            ok || matches!(err, FormatError::InvalidName { .. }),
            "{err}"
        );
        if ok {
            assert!(matches!(err, FormatError::DuplicateName { .. }), "{err}");
        }
    }
    let e = patch(&bytes, strings, b".ab");
    assert!(matches!(
        decode(&e, &root),
        Err(FormatError::InvalidName { .. })
    ));
    // "d" -> ".." by making the name 2 bytes: the string offsets no longer line up.
    let e = patch(&bytes, dirents + 4, &2u32.to_le_bytes());
    assert!(decode(&e, &root).is_err());
    // Wrong expected root.
    assert!(matches!(
        decode(&bytes, &Digest([7; 32])),
        Err(FormatError::RootMismatch { .. })
    ));
}

#[test]
fn invalid_trees_are_not_encoded() {
    let mut t = small();
    t.inodes[1].entries.insert(b"..".to_vec(), InodeId::ROOT);
    assert!(matches!(encode(&t), Err(FormatError::InvalidName { .. })));
    let mut t = small();
    t.inodes[1].entries.insert(b"loop".to_vec(), InodeId(1));
    assert!(matches!(
        encode(&t),
        Err(FormatError::InvalidStructure { .. })
    ));
    let mut t = small();
    t.inodes.push(Inode::new(InodeKind::Fifo, 0));
    assert!(matches!(
        encode(&t),
        Err(FormatError::InvalidStructure { .. })
    ));
    let mut t = small();
    t.inodes[2].mode = 0o10000;
    assert!(matches!(encode(&t), Err(FormatError::InvalidInode { .. })));
    let mut t = small();
    t.inodes[2].size = 1;
    assert!(matches!(encode(&t), Err(FormatError::InvalidInode { .. })));
    let mut t = small();
    t.inodes[2].xattrs.insert(vec![b'x'; 256], Vec::new());
    assert!(matches!(encode(&t), Err(FormatError::InvalidName { .. })));
    assert!(
        t.add(InodeId::ROOT, &[b'n'; 256], Inode::new(InodeKind::Fifo, 0))
            .is_err()
    );
    assert!(
        t.add(InodeId::ROOT, b"d", Inode::new(InodeKind::Fifo, 0))
            .is_err()
    );
    assert!(
        t.add(InodeId(2), b"x", Inode::new(InodeKind::Fifo, 0))
            .is_err()
    );
    // Deep nesting.
    let mut t = Tree::new(ChunkSize::DEFAULT, Inode::new(InodeKind::Dir, 0o755));
    let mut d = InodeId::ROOT;
    for _ in 0..=tree::MAX_DEPTH {
        d = t.add(d, b"d", Inode::new(InodeKind::Dir, 0o755)).unwrap();
    }
    assert!(matches!(
        encode(&t),
        Err(FormatError::LimitExceeded {
            what: "directory depth",
            ..
        })
    ));
}

#[test]
fn chunk_rule() {
    let base = || {
        let mut t = Tree::new(
            ChunkSize::from_log2(12).unwrap(),
            Inode::new(InodeKind::Dir, 0o755),
        );
        t.blobs.push(Digest([1; 32]));
        t
    };
    let ok = |chunks: Vec<ChunkRef>, size| {
        let mut t = base();
        t.add(InodeId::ROOT, b"f", file(size, chunks)).unwrap();
        encode(&t).map(|_| ())
    };
    assert!(ok(vec![chunk(0, 4096, b"a"), chunk(4096, 1, b"b")], 4097).is_ok());
    assert!(
        ok(vec![chunk(4096, 1, b"b")], 4097).is_ok(),
        "a leading hole"
    );
    assert!(
        ok(vec![chunk(0, 4095, b"a")], 4097).is_err(),
        "short chunk not at the end"
    );
    assert!(ok(vec![chunk(1, 4096, b"a")], 8192).is_err(), "unaligned");
    assert!(
        ok(vec![chunk(4096, 1, b"b"), chunk(0, 4096, b"a")], 4097).is_err(),
        "unsorted"
    );
    assert!(
        ok(vec![chunk(8192, 4096, b"a")], 8192).is_err(),
        "beyond the end"
    );
    let mut c = chunk(0, 1, b"a");
    c.blob_index = 1;
    assert!(matches!(
        ok(vec![c], 1),
        Err(FormatError::IndexOutOfRange { .. })
    ));
    let mut c = chunk(0, 1, b"a");
    c.compressed_size = 0;
    assert!(ok(vec![c], 1).is_err());
}

fn wide(files: usize) -> Tree {
    let mut tree = Tree::new(ChunkSize::DEFAULT, Inode::new(InodeKind::Dir, 0o755));
    tree.blobs.push(Digest([1; 32]));
    let dirs = (files / 1000).max(1);
    for d in 0..dirs {
        let dir = tree
            .add(
                InodeId::ROOT,
                format!("dir{d}").as_bytes(),
                Inode::new(InodeKind::Dir, 0o755),
            )
            .unwrap();
        for f in 0..files / dirs {
            let seed = (d * 1000 + f) as u64;
            let mut c = chunk(0, 100, &seed.to_le_bytes());
            c.compressed_offset = seed * 100;
            tree.add(dir, format!("file-{f:06}").as_bytes(), file(100, vec![c]))
                .unwrap();
        }
    }
    tree
}

#[test]
fn hundred_thousand_files() {
    // Speed belongs in a benchmark, not here: this checks that 100k files round-trip.
    let tree = wide(100_000);
    let (_, _, decoded) = roundtrip(&tree);
    assert_eq!(decoded.inodes.len(), 100_101);
}

#[test]
#[ignore = "slow in debug builds: a million files"]
fn million_files() {
    let tree = wide(1_000_000);
    let (_, _, decoded) = roundtrip(&tree);
    assert_eq!(decoded.inodes.len(), 1_001_001);
}

#[test]
fn random_corruption_never_panics() {
    let (bytes, root, _) = roundtrip(&sample());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..5000 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 8 {
            let at = (next() % b.len() as u64) as usize;
            b[at] = next() as u8;
        }
        let cut = (next() % (b.len() as u64 + 1)) as usize;
        if next() % 4 == 0 {
            b.truncate(cut);
        }
        if b != bytes {
            assert!(decode(&b, &root).is_err());
        }
    }
}

const FIXTURE_V1: &[u8] = include_bytes!("../../tests/fixtures/bootstrap-v1.bin");
const FIXTURE_V1_ROOT: &str = include_str!("../../tests/fixtures/bootstrap-v1.root");

/// Format version 1 stays readable, and encoding stays byte-reproducible.
#[test]
fn fixture_v1() {
    let root = root_digest(&sample()).unwrap();
    assert_eq!(root.to_string(), FIXTURE_V1_ROOT.trim());
    let tree = decode(FIXTURE_V1, &root).unwrap();
    assert_eq!(encode(&tree).unwrap(), FIXTURE_V1);
    assert_eq!(encode(&sample()).unwrap(), FIXTURE_V1);
}

/// Regenerates the fixtures; run only when deliberately changing the format (new version).
#[test]
#[ignore = "writes tests/fixtures"]
fn write_fixture_v1() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    std::fs::create_dir_all(dir).unwrap();
    let tree = sample();
    std::fs::write(format!("{dir}/bootstrap-v1.bin"), encode(&tree).unwrap()).unwrap();
    std::fs::write(
        format!("{dir}/bootstrap-v1.root"),
        format!("{}\n", root_digest(&tree).unwrap()),
    )
    .unwrap();
}
