//! How a blob is cut into pieces.

use std::ops::Range;

/// Smallest piece size handed out: 1 MiB.
pub const MIN_PIECE_SIZE: u32 = 1 << 20;
/// Largest piece size handed out: 16 MiB.
pub const MAX_PIECE_SIZE: u32 = 16 << 20;
/// Blobs up to `512 * MAX_PIECE_SIZE` (8 GiB) are cut into at most this many pieces.
pub(crate) const TARGET_PIECES: u64 = 512;

/// Piece size for a blob of `content_length` bytes.
///
/// `next_power_of_two(ceil(len / 512))` clamped to `[1 MiB, 16 MiB]`, so blobs up to 512 MiB
/// use 1 MiB pieces, a 1 GiB blob 2 MiB, and blobs up to 8 GiB have at most 512 pieces
/// (bitmaps of 64 bytes). Larger blobs get more pieces rather than pieces above 16 MiB.
///
/// Chosen in the simulator (docs/benchmarks.md, "Piece size"): a piece is relayed only once
/// complete, so each hop of the 1,000-peer 1 GiB flash crowd adds a piece's time; 2 MiB
/// pieces beat 4 MiB (p50 1.23× against 1.30× `T_min` with control traffic charged) and
/// 1 MiB, whose bigger bitmaps and more frequent syncs take a fifth of the supernode's
/// uplink (1.27×).
pub fn piece_size_for(content_length: u64) -> u32 {
    let per_piece = content_length.div_ceil(TARGET_PIECES).max(1);
    let size = per_piece
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX)
        .clamp(u64::from(MIN_PIECE_SIZE), u64::from(MAX_PIECE_SIZE));
    // Clamped to MAX_PIECE_SIZE above, so it fits.
    u32::try_from(size).unwrap_or(MAX_PIECE_SIZE)
}

/// Number of pieces: `ceil(content_length / piece_size)`, 0 for an empty blob.
///
/// A `piece_size` of 0 is treated as 1 rather than dividing by zero. Counts beyond `u32::MAX`
/// saturate (unreachable with sizes from [`piece_size_for`]).
pub fn piece_count(content_length: u64, piece_size: u32) -> u32 {
    let n = content_length.div_ceil(u64::from(piece_size.max(1)));
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Byte range of piece `index`. Every piece is `piece_size` long except the last, which is short.
///
/// An out-of-range `index` yields the empty range `content_length..content_length`.
pub fn piece_range(content_length: u64, piece_size: u32, index: u32) -> Range<u64> {
    let start = u64::from(index)
        .saturating_mul(u64::from(piece_size))
        .min(content_length);
    let end = start
        .saturating_add(u64::from(piece_size))
        .min(content_length);
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn size_table() {
        let table = [
            (0, MIB),
            (1, MIB),
            (256 * MIB, MIB),
            (512 * MIB, MIB),
            (512 * MIB + 1, 2 * MIB),
            (600 * MIB, 2 * MIB),
            (1024 * MIB, 2 * MIB),
            (1024 * MIB + 1, 4 * MIB),
            (4096 * MIB, 8 * MIB),
            (8192 * MIB, 16 * MIB),
            (100_000 * MIB, 16 * MIB),
            (u64::MAX, 16 * MIB),
        ];
        for (len, want) in table {
            assert_eq!(u64::from(piece_size_for(len)), want, "len {len}");
            assert!(piece_size_for(len).is_power_of_two());
        }
    }

    #[test]
    fn count_and_ranges() {
        assert_eq!(piece_count(0, 1024), 0);
        assert_eq!(piece_count(1, 1024), 1);
        assert_eq!(piece_count(1024, 1024), 1);
        assert_eq!(piece_count(1025, 1024), 2);
        assert_eq!(piece_count(10, 0), 10);
        assert_eq!(piece_range(2500, 1000, 0), 0..1000);
        assert_eq!(piece_range(2500, 1000, 2), 2000..2500);
        assert_eq!(piece_range(2500, 1000, 3), 2500..2500);
        assert_eq!(piece_range(2500, 1000, u32::MAX), 2500..2500);
        let total: u64 = (0..piece_count(2500, 1000))
            .map(|i| {
                let r = piece_range(2500, 1000, i);
                r.end - r.start
            })
            .sum();
        assert_eq!(total, 2500);
    }
}
