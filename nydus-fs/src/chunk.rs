//! Chunk decoding and read planning: the I/O-free arithmetic the mount and `check` share.
//!
//! - [`decode`] turns the compressed bytes of one chunk into its verified uncompressed bytes.
//! - [`plan_read`] maps a byte range of a file onto its chunks and holes.
//! - [`group_fetches`] merges chunks that sit next to each other in one blob into one ranged
//!   request, so a registry sees a few large range requests instead of one per chunk.
//! - [`BlobOrder`] finds the chunks stored right after a chunk in its blob (the next files of
//!   the same layer, usually of the same directory), to fetch along with a small file.

use std::ops::Range;

use crate::{ChunkRef, Digest, Tree, merkle};

/// Why a chunk's bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The compressed bytes have the wrong length.
    #[error("got {got} compressed bytes, the bootstrap says {want}")]
    Length {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        want: u32,
    },
    /// zstd refused the bytes.
    #[error("not a valid zstd frame: {0}")]
    Zstd(String),
    /// The data decompressed to the wrong size.
    #[error("decompressed to {got} bytes, want {want}")]
    Size {
        /// Bytes produced.
        got: usize,
        /// Bytes expected.
        want: u32,
    },
    /// The data does not hash to the chunk's digest.
    #[error("sha256 is {got}, want {want}")]
    Digest {
        /// The digest of the bytes received.
        got: Digest,
        /// The digest in the bootstrap.
        want: Digest,
    },
}

/// Decompresses and verifies one chunk: `Ok` only for bytes whose sha256 is `chunk.digest`.
///
/// # Errors
/// [`ChunkError`] says which check failed; nothing of a refused chunk is returned.
pub fn decode(compressed: &[u8], chunk: &ChunkRef) -> Result<Vec<u8>, ChunkError> {
    if compressed.len() != chunk.compressed_size as usize {
        return Err(ChunkError::Length {
            got: compressed.len(),
            want: chunk.compressed_size,
        });
    }
    // `bulk::decompress` never grows its buffer past the capacity given, so a hostile frame
    // cannot make us allocate more than one chunk.
    let data = zstd::bulk::decompress(compressed, chunk.uncompressed_size as usize)
        .map_err(|e| ChunkError::Zstd(e.to_string()))?;
    if data.len() != chunk.uncompressed_size as usize {
        return Err(ChunkError::Size {
            got: data.len(),
            want: chunk.uncompressed_size,
        });
    }
    let got = merkle::chunk_digest(&data);
    if got != chunk.digest {
        return Err(ChunkError::Digest {
            got,
            want: chunk.digest,
        });
    }
    Ok(data)
}

/// One piece of a planned read, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Bytes `range` (relative to the chunk's start) of `chunks[index]`.
    Chunk {
        /// Index into the file's chunk list.
        index: usize,
        /// The part of the chunk's uncompressed bytes the read covers.
        range: Range<usize>,
    },
    /// `len` zero bytes of a hole.
    Zeros {
        /// Number of zero bytes.
        len: usize,
    },
}

/// Splits the read of `len` bytes at `offset` of a file of `size` bytes, whose chunks are
/// `chunks` (sorted by `file_offset` and each within the file, as a valid tree guarantees),
/// into chunk parts and holes.
///
/// The read is clipped at the end of the file; a read at or past the end plans nothing.
pub fn plan_read(chunks: &[ChunkRef], size: u64, offset: u64, len: u64) -> Vec<Segment> {
    let mut out = Vec::new();
    let end = offset.saturating_add(len).min(size);
    let mut pos = offset;
    // First chunk whose end is past `pos`.
    let mut i = chunks.partition_point(|c| c.file_offset + u64::from(c.uncompressed_size) <= pos);
    while pos < end {
        match chunks.get(i) {
            Some(c) if c.file_offset <= pos => {
                let c_end = (c.file_offset + u64::from(c.uncompressed_size)).min(end);
                let start = usize_of(pos - c.file_offset);
                let stop = usize_of(c_end - c.file_offset);
                out.push(Segment::Chunk {
                    index: i,
                    range: start..stop,
                });
                pos = c_end;
                i += 1;
            }
            next => {
                // A hole runs to the next chunk (which starts after `pos`, or the arm above
                // would have matched) or to the end of the read.
                let hole_end = next.map_or(end, |c| c.file_offset.min(end));
                let len = hole_end - pos;
                match out.last_mut() {
                    Some(Segment::Zeros { len: prev }) => *prev += usize_of(len),
                    _ => out.push(Segment::Zeros { len: usize_of(len) }),
                }
                pos = hole_end;
            }
        }
    }
    out
}

fn usize_of(n: u64) -> usize {
    // Reads are bounded by the kernel's read size and chunk sizes by 16 MiB.
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// One ranged request: consecutive chunks of one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// Index into the tree's blob table.
    pub blob_index: u32,
    /// Byte range of the blob to request.
    pub range: Range<u64>,
    /// The chunks it carries, in blob order.
    pub chunks: Vec<ChunkRef>,
}

/// Groups `chunks` into ranged requests: chunks of the same blob whose compressed bytes touch
/// (`a.end == b.start`) share a request while it stays within `max_bytes` (a chunk larger than
/// `max_bytes` gets a request of its own). Duplicates (same blob and offset) are fetched once.
pub fn group_fetches(chunks: &[ChunkRef], max_bytes: u64) -> Vec<Fetch> {
    let mut sorted: Vec<ChunkRef> = chunks.to_vec();
    sorted.sort_by_key(|c| (c.blob_index, c.compressed_offset));
    sorted.dedup_by_key(|c| (c.blob_index, c.compressed_offset));
    let mut out: Vec<Fetch> = Vec::new();
    for c in sorted {
        let start = c.compressed_offset;
        let end = start + u64::from(c.compressed_size);
        if let Some(last) = out.last_mut()
            && last.blob_index == c.blob_index
            && last.range.end == start
            && end - last.range.start <= max_bytes
        {
            last.range.end = end;
            last.chunks.push(c);
            continue;
        }
        out.push(Fetch {
            blob_index: c.blob_index,
            range: start..end,
            chunks: vec![c],
        });
    }
    out
}

/// The chunks of a tree in the order they are stored: per blob, every chunk an inode refers
/// to, sorted by compressed offset (each offset once).
///
/// The converter writes a layer's files one after another, so the chunks after the last one of
/// a file belong to the next files of the layer (usually the same directory): a reader of many
/// small files asks for each in turn, and fetching them along with the first saves a request
/// per file.
#[derive(Debug, Clone, Default)]
pub struct BlobOrder {
    blobs: Vec<Vec<ChunkRef>>,
}

impl BlobOrder {
    /// The order of every chunk of `tree`.
    pub fn new(tree: &Tree) -> Self {
        let mut blobs: Vec<Vec<ChunkRef>> = vec![Vec::new(); tree.blobs.len()];
        for c in tree.inodes.iter().flat_map(|i| i.chunks.iter()) {
            if let Some(b) = blobs.get_mut(c.blob_index as usize) {
                b.push(*c);
            }
        }
        for b in &mut blobs {
            b.sort_by_key(|c| c.compressed_offset);
            b.dedup_by_key(|c| c.compressed_offset);
        }
        Self { blobs }
    }

    /// The chunks stored right after `chunk` in its blob, each starting where the one before
    /// ends (one ranged request can carry them all), while their compressed sizes add up to at
    /// most `budget` bytes. Stops at a gap (bytes no inode refers to, e.g. a deleted file).
    pub fn after(&self, chunk: &ChunkRef, budget: u64) -> Vec<ChunkRef> {
        let Some(blob) = self.blobs.get(chunk.blob_index as usize) else {
            return Vec::new();
        };
        let first = blob.partition_point(|c| c.compressed_offset <= chunk.compressed_offset);
        let mut end = chunk.compressed_offset + u64::from(chunk.compressed_size);
        let mut used = 0u64;
        let mut out = Vec::new();
        for c in &blob[first..] {
            used += u64::from(c.compressed_size);
            if c.compressed_offset != end || used > budget {
                break;
            }
            end = c.compressed_offset + u64::from(c.compressed_size);
            out.push(*c);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(file_offset: u64, size: u32, blob_offset: u64, csize: u32) -> ChunkRef {
        ChunkRef {
            file_offset,
            blob_index: 0,
            compressed_offset: blob_offset,
            compressed_size: csize,
            uncompressed_size: size,
            digest: merkle::chunk_digest(&file_offset.to_le_bytes()),
        }
    }

    #[test]
    fn decode_accepts_only_the_right_bytes() {
        let data = b"hello chunk".repeat(100);
        let compressed = zstd::bulk::compress(&data, 3).expect("compress");
        let c = ChunkRef {
            file_offset: 0,
            blob_index: 0,
            compressed_offset: 0,
            compressed_size: u32::try_from(compressed.len()).expect("small"),
            uncompressed_size: u32::try_from(data.len()).expect("small"),
            digest: merkle::chunk_digest(&data),
        };
        assert_eq!(decode(&compressed, &c).expect("good chunk"), data);

        let mut other = b"HELLO chunk".repeat(100);
        let bad = zstd::bulk::compress(&other, 3).expect("compress");
        let c_bad = ChunkRef {
            compressed_size: u32::try_from(bad.len()).expect("small"),
            ..c
        };
        assert!(matches!(
            decode(&bad, &c_bad),
            Err(ChunkError::Digest { .. })
        ));
        assert!(matches!(
            decode(&compressed[1..], &c),
            Err(ChunkError::Length { .. })
        ));
        let mut flipped = compressed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(decode(&flipped, &c).is_err());
        other.truncate(10);
        let short = zstd::bulk::compress(&other, 3).expect("compress");
        let c_short = ChunkRef {
            compressed_size: u32::try_from(short.len()).expect("small"),
            ..c
        };
        assert!(matches!(
            decode(&short, &c_short),
            Err(ChunkError::Size { .. })
        ));
    }

    #[test]
    fn plan_covers_chunks_and_holes_exactly() {
        // 4 KiB chunks; a 14 KiB file whose second chunk is a hole.
        let chunks = [
            chunk(0, 4096, 0, 100),
            chunk(8192, 4096, 100, 100),
            chunk(12288, 2048, 200, 50),
        ];
        let size = 14336;
        assert_eq!(
            plan_read(&chunks, size, 0, 100),
            vec![Segment::Chunk {
                index: 0,
                range: 0..100
            }]
        );
        assert_eq!(
            plan_read(&chunks, size, 4000, 5000),
            vec![
                Segment::Chunk {
                    index: 0,
                    range: 4000..4096
                },
                Segment::Zeros { len: 4096 },
                Segment::Chunk {
                    index: 1,
                    range: 0..808
                },
            ]
        );
        // Clipped at the end of the file.
        assert_eq!(
            plan_read(&chunks, size, 13000, 1 << 20),
            vec![Segment::Chunk {
                index: 2,
                range: 712..2048
            }]
        );
        assert!(plan_read(&chunks, size, size, 10).is_empty());
        assert!(plan_read(&chunks, size, size + 5, 10).is_empty());
        // Every byte of a whole-file read is accounted for once.
        let total: usize = plan_read(&chunks, size, 0, size)
            .iter()
            .map(|s| match s {
                Segment::Chunk { range, .. } => range.len(),
                Segment::Zeros { len } => *len,
            })
            .sum();
        assert_eq!(total as u64, size);
    }

    #[test]
    fn plan_of_all_hole_file_is_zeros() {
        assert_eq!(
            plan_read(&[], 10_000, 5000, 10_000),
            vec![Segment::Zeros { len: 5000 }]
        );
        // A trailing hole after the last chunk.
        let chunks = [chunk(0, 4096, 0, 10)];
        assert_eq!(
            plan_read(&chunks, 8192, 4000, 1000),
            vec![
                Segment::Chunk {
                    index: 0,
                    range: 4000..4096
                },
                Segment::Zeros { len: 904 }
            ]
        );
    }

    #[test]
    fn fetches_group_adjacent_chunks_within_the_limit() {
        let a = chunk(0, 4096, 0, 100);
        let b = chunk(4096, 4096, 100, 100);
        let c = chunk(8192, 4096, 200, 100);
        let far = chunk(12288, 4096, 1000, 100);
        let mut other_blob = chunk(16384, 4096, 300, 100);
        other_blob.blob_index = 1;
        let groups = group_fetches(&[c, a, far, b, other_blob, a], 250);
        let ranges: Vec<(u32, Range<u64>, usize)> = groups
            .iter()
            .map(|g| (g.blob_index, g.range.clone(), g.chunks.len()))
            .collect();
        assert_eq!(
            ranges,
            vec![
                (0, 0..200, 2),
                (0, 200..300, 1),
                (0, 1000..1100, 1),
                (1, 300..400, 1)
            ]
        );
        // A chunk bigger than the limit still gets fetched.
        assert_eq!(group_fetches(&[a], 10).len(), 1);
    }

    #[test]
    fn blob_order_gives_the_contiguous_chunks_after_one_within_a_budget() {
        use crate::tree::{ChunkSize, Inode, InodeKind};
        // Blob 0: a (0..100), b (100..150), c (150..400), gap, d (500..600); blob 1: e (0..10).
        let (a, b, c, d) = (
            chunk(0, 4096, 0, 100),
            chunk(0, 4096, 100, 50),
            chunk(4096, 4096, 150, 250),
            chunk(0, 4096, 500, 100),
        );
        let e = ChunkRef {
            blob_index: 1,
            ..chunk(0, 4096, 0, 10)
        };
        let file = |chunks: Vec<ChunkRef>| Inode {
            size: chunks.len() as u64 * 4096,
            chunks,
            ..Inode::new(InodeKind::File, 0o644)
        };
        let mut tree = Tree::new(ChunkSize::DEFAULT, Inode::new(InodeKind::Dir, 0o755));
        tree.blobs = vec![Digest([1; 32]), Digest([2; 32])];
        // c is listed before b, and a is shared by two files (deduplicated).
        tree.inodes.extend([
            file(vec![a]),
            file(vec![c, b]),
            file(vec![d, e]),
            file(vec![a]),
        ]);
        let order = BlobOrder::new(&tree);
        assert_eq!(
            order.after(&a, 1000),
            vec![b, c],
            "stops at the gap before d"
        );
        assert_eq!(
            order.after(&a, 299),
            vec![b],
            "c does not fit in the budget"
        );
        assert_eq!(order.after(&a, 300), vec![b, c]);
        assert_eq!(order.after(&a, 49), vec![]);
        assert_eq!(order.after(&c, 1000), vec![]);
        assert_eq!(order.after(&d, 1000), vec![], "the last of its blob");
        assert_eq!(order.after(&e, 1000), vec![], "blobs are not mixed");
        let stray = ChunkRef { blob_index: 7, ..a };
        assert_eq!(order.after(&stray, 1000), vec![]);
    }
}
