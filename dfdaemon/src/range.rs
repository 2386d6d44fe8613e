//! The `Range` header of a blob GET (RFC 9110 §14.1.2), parsed without I/O.
//!
//! Only a single `bytes=` range is honoured; several ranges, another unit or an unparsable
//! header get the whole blob, as the RFC allows. Positions are arbitrary-length decimal in
//! the RFC, so nothing here can overflow: a position too large for a `u64` is read as
//! `u64::MAX` (past any blob), an end past the blob is clamped to it, and a start past it is
//! unsatisfiable.

use std::ops::Range;

/// What a `Range` header asks of a blob of known length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ByteRange {
    /// No usable range: answer 200 with the whole blob.
    Whole,
    /// Answer 206 with these bytes (non-empty, within the blob).
    Part(Range<u64>),
    /// Answer 416 with `Content-Range: bytes */<total>`: the range starts at or past the
    /// end, or is a zero-length suffix.
    Unsatisfiable,
}

impl ByteRange {
    /// Reads `header` (the `Range` value, if any) against a blob of `total` bytes.
    pub fn parse(header: Option<&str>, total: u64) -> Self {
        let Some(spec) = header.and_then(strip_unit) else {
            return Self::Whole;
        };
        if spec.contains(',') {
            return Self::Whole;
        }
        let Some((first, last)) = spec.split_once('-') else {
            return Self::Whole;
        };
        let (first, last) = (first.trim(), last.trim());
        match (position(first), position(last)) {
            // `first-last`: an end past the blob means "to the end".
            (Some(start), Some(last)) if start <= last => {
                Self::part(start, last.saturating_add(1).min(total), total)
            }
            // `last < first` makes the header invalid, and an invalid header is ignored.
            (Some(_), Some(_)) => Self::Whole,
            (Some(start), None) if last.is_empty() => Self::part(start, total, total),
            // `-n`: the last n bytes, all of them if the blob is shorter; `-0` asks for none.
            (None, Some(0)) if first.is_empty() => Self::Unsatisfiable,
            // A zero-length blob has no last bytes to send in a 206 (its Content-Range
            // would be `bytes 0--1/0`), so it is sent whole.
            (None, Some(_)) if first.is_empty() && total == 0 => Self::Whole,
            (None, Some(n)) if first.is_empty() => {
                Self::part(total.saturating_sub(n), total, total)
            }
            _ => Self::Whole,
        }
    }

    /// The bytes a `Range` header asks for first, read before the blob's length is known, so
    /// a download started for this reader can fetch their pieces before any other: all of
    /// `first-last`, the first byte of `first-` (the rest follows in order), nothing for a
    /// suffix (`-n` needs the length) or for whatever [`ByteRange::parse`] ignores.
    pub fn wanted_first(header: Option<&str>) -> Option<Range<u64>> {
        let spec = header.and_then(strip_unit)?;
        if spec.contains(',') {
            return None;
        }
        let (first, last) = spec.split_once('-')?;
        match (position(first.trim()), last.trim()) {
            (Some(start), "") => Some(start..start.saturating_add(1)),
            (Some(start), last) => {
                let last = position(last)?;
                (start <= last).then(|| start..last.saturating_add(1))
            }
            (None, _) => None,
        }
    }

    /// `start..end`, where `end <= total` already holds.
    fn part(start: u64, end: u64, total: u64) -> Self {
        if start < total && start < end {
            Self::Part(start..end)
        } else {
            Self::Unsatisfiable
        }
    }
}

/// The range set after `bytes=` (the unit is case-insensitive, RFC 9110 §14.1).
fn strip_unit(header: &str) -> Option<&str> {
    let header = header.trim();
    let (unit, spec) = header.split_once('=')?;
    unit.trim().eq_ignore_ascii_case("bytes").then_some(spec)
}

/// A byte position: one or more ASCII digits (no sign, unlike `u64::from_str`), saturating
/// at `u64::MAX`, which is past the end of any blob.
fn position(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::{ByteRange::*, *};

    fn parse(h: &str, total: u64) -> ByteRange {
        ByteRange::parse(Some(h), total)
    }

    #[test]
    fn single_ranges_follow_rfc_9110() {
        assert_eq!(parse("bytes=0-9", 100), Part(0..10));
        assert_eq!(parse("bytes=90-", 100), Part(90..100));
        assert_eq!(parse("bytes=-5", 100), Part(95..100));
        assert_eq!(parse("bytes=50-500", 100), Part(50..100));
        assert_eq!(parse("bytes=99-99", 100), Part(99..100));
        assert_eq!(parse("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(ByteRange::parse(None, 7), Whole);
    }

    #[test]
    fn the_first_wanted_bytes_are_known_before_the_length() {
        let first = |h: &str| ByteRange::wanted_first(Some(h));
        assert_eq!(first("bytes=10-19"), Some(10..20));
        assert_eq!(first("bytes=10-"), Some(10..11));
        assert_eq!(first(&format!("bytes=0-{}", u64::MAX)), Some(0..u64::MAX));
        assert_eq!(
            first(&format!("bytes={}-", u64::MAX)),
            Some(u64::MAX..u64::MAX)
        );
        for h in [
            "bytes=-5",
            "bytes=9-3",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=",
            "",
        ] {
            assert_eq!(first(h), None, "{h:?}");
        }
        assert_eq!(ByteRange::wanted_first(None), None);
    }

    #[test]
    fn what_cannot_be_honoured_gets_the_whole_blob() {
        for h in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=9-3",
            "bytes=",
            "bytes=-",
            "bytes=5",
            "bytes=--5",
            "bytes=+5-9",
            "bytes=5-+9",
            "bytes=-+5",
            "bytes=0x10-",
            "bytes=1 2-3",
            "",
            "bytes",
        ] {
            assert_eq!(parse(h, 100), Whole, "{h:?}");
        }
    }

    #[test]
    fn huge_positions_neither_overflow_nor_pass_the_end() {
        let max = u64::MAX;
        // An end past the blob is the rest of the blob (the classic `last + 1` overflow).
        assert_eq!(parse(&format!("bytes=0-{max}"), 100), Part(0..100));
        assert_eq!(parse(&format!("bytes=10-{max}"), 100), Part(10..100));
        assert_eq!(parse(&format!("bytes=0-{}", max - 1), max), Part(0..max));
        assert_eq!(parse(&format!("bytes=0-{max}"), max), Part(0..max));
        // Longer than any u64: still a position past the end.
        let huge = "9".repeat(40);
        assert_eq!(parse(&format!("bytes=0-{huge}"), 100), Part(0..100));
        // A start past the end is unsatisfiable, however large.
        assert_eq!(parse(&format!("bytes={max}-"), 100), Unsatisfiable);
        assert_eq!(parse(&format!("bytes={max}-{max}"), 100), Unsatisfiable);
        assert_eq!(parse(&format!("bytes={huge}-"), 100), Unsatisfiable);
        assert_eq!(parse(&format!("bytes={huge}-{huge}"), 100), Unsatisfiable);
        assert_eq!(
            parse(&format!("bytes={}-", max - 1), max),
            Part(max - 1..max)
        );
        // A suffix longer than the blob is the whole blob, as a 206.
        assert_eq!(parse(&format!("bytes=-{max}"), 100), Part(0..100));
        assert_eq!(parse(&format!("bytes=-{huge}"), 100), Part(0..100));
        assert_eq!(parse("bytes=-101", 100), Part(0..100));
    }

    #[test]
    fn empty_suffixes_and_empty_blobs() {
        assert_eq!(parse("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse("bytes=-000", 100), Unsatisfiable);
        assert_eq!(parse("bytes=-0", 0), Unsatisfiable);
        assert_eq!(parse("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse("bytes=-5", 0), Whole);
    }

    #[test]
    fn whitespace_and_unit_case_are_tolerated() {
        assert_eq!(parse("  bytes=0-9  ", 100), Part(0..10));
        assert_eq!(parse("bytes= 0 - 9 ", 100), Part(0..10));
        assert_eq!(parse("bytes = 10-", 100), Part(10..100));
        assert_eq!(parse("bytes=\t-5", 100), Part(95..100));
        assert_eq!(parse("Bytes=0-9", 100), Part(0..10));
        assert_eq!(parse("BYTES=-5", 100), Part(95..100));
    }
}
