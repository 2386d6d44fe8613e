//! Fixed-length bit sets over piece indices.

use std::fmt;

/// Why [`Bitmap::from_bytes`] rejected its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitmapError {
    /// The byte slice is not exactly `ceil(len / 8)` bytes long.
    #[error("bitmap of {len} bits needs {expected} bytes, got {actual}")]
    WrongLength {
        /// Number of bits the caller expected.
        len: u32,
        /// Bytes required for `len` bits.
        expected: usize,
        /// Bytes supplied.
        actual: usize,
    },
    /// A padding bit at or beyond `len` is set.
    #[error("bit {bit} is set but the bitmap has only {len} bits")]
    TrailingBits {
        /// Number of bits the caller expected.
        len: u32,
        /// First offending bit index.
        bit: u32,
    },
}

/// A fixed-length set of piece indices `0..len`.
///
/// The length never changes after construction; [`Bitmap::set`] outside the range is ignored
/// so that a hostile index can never panic the caller. The wire form ([`Bitmap::to_bytes`]) is
/// LSB-first: bit `i` lives in byte `i / 8` at bit position `i % 8`.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Bitmap {
    words: Vec<u64>,
    len: u32,
    ones: u32,
}

impl Bitmap {
    /// An empty set over `len` pieces.
    pub fn new(len: u32) -> Self {
        Self {
            words: vec![0; word_count(len)],
            len,
            ones: 0,
        }
    }

    /// A set holding every piece in `0..len`.
    pub fn full(len: u32) -> Self {
        let mut words = vec![u64::MAX; word_count(len)];
        if let Some(last) = words.last_mut() {
            let tail = len % 64;
            if tail != 0 {
                *last = (1u64 << tail) - 1;
            }
        }
        Self {
            words,
            len,
            ones: len,
        }
    }

    /// Number of piece indices covered (not the number set; see [`Bitmap::count`]).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when the bitmap covers zero pieces.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of pieces set. O(1).
    pub fn count(&self) -> u32 {
        self.ones
    }

    /// Whether piece `i` is set; false for `i >= len`.
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1u64 << (i % 64)) != 0
    }

    /// Sets piece `i`. Indices `>= len` are ignored.
    pub fn set(&mut self, i: u32) {
        if i >= self.len {
            return;
        }
        let word = &mut self.words[(i / 64) as usize];
        let mask = 1u64 << (i % 64);
        if *word & mask == 0 {
            *word |= mask;
            self.ones += 1;
        }
    }

    /// Clears piece `i`. Indices `>= len` are ignored.
    pub fn clear(&mut self, i: u32) {
        if i >= self.len {
            return;
        }
        let word = &mut self.words[(i / 64) as usize];
        let mask = 1u64 << (i % 64);
        if *word & mask != 0 {
            *word &= !mask;
            self.ones -= 1;
        }
    }

    /// True when every piece is set (also true for an empty bitmap).
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// Set indices in ascending order.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let base = w as u32 * 64;
            BitIter(word).map(move |b| base + b)
        })
    }

    /// The 64-bit words, piece `i` at bit `i % 64` of word `i / 64`; bits past `len` are 0.
    pub(crate) fn words(&self) -> &[u64] {
        &self.words
    }

    /// Number of pieces set in `self` but not in `other`.
    ///
    /// Bitmaps of different lengths are compared over the shorter one.
    pub fn count_not_in(&self, other: &Self) -> u32 {
        self.words
            .iter()
            .zip(other.words.iter().chain(std::iter::repeat(&0)))
            .map(|(a, b)| (a & !b).count_ones())
            .sum()
    }

    /// Adds every piece of `other` (bits past `self.len()` are ignored).
    pub fn union_with(&mut self, other: &Self) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
        if let Some(last) = self.words.last_mut() {
            let tail = self.len % 64;
            if tail != 0 {
                *last &= (1u64 << tail) - 1;
            }
        }
        self.ones = self.words.iter().map(|w| w.count_ones()).sum();
    }

    /// Clears every piece at or past index `from` (nothing when `from >= len`).
    pub fn clear_from(&mut self, from: u32) {
        if from >= self.len {
            return;
        }
        let w = (from / 64) as usize;
        let bit = from % 64;
        self.words[w] &= (1u64 << bit) - 1;
        self.words[w + 1..].iter_mut().for_each(|x| *x = 0);
        self.ones = self.words.iter().map(|x| x.count_ones()).sum();
    }

    /// LSB-first wire form, `ceil(len / 8)` bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = byte_count(self.len);
        self.words
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .take(n)
            .collect()
    }

    /// Parses the form written by [`Bitmap::to_bytes`].
    ///
    /// # Errors
    ///
    /// [`BitmapError::WrongLength`] when `bytes` is not exactly `ceil(len / 8)` long and
    /// [`BitmapError::TrailingBits`] when a padding bit past `len` is set.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Result<Self, BitmapError> {
        let expected = byte_count(len);
        if bytes.len() != expected {
            return Err(BitmapError::WrongLength {
                len,
                expected,
                actual: bytes.len(),
            });
        }
        let mut words = vec![0u64; word_count(len)];
        for (i, &b) in bytes.iter().enumerate() {
            words[i / 8] |= u64::from(b) << ((i % 8) * 8);
        }
        let map = Self {
            ones: words.iter().map(|w| w.count_ones()).sum(),
            words,
            len,
        };
        if let Some(last) = map.words.last() {
            let tail = len % 64;
            if tail != 0 && last >> tail != 0 {
                let bit =
                    (map.words.len() as u32 - 1) * 64 + tail + (last >> tail).trailing_zeros();
                return Err(BitmapError::TrailingBits { len, bit });
            }
        }
        Ok(map)
    }
}

impl fmt::Debug for Bitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitmap({}/{} ", self.ones, self.len)?;
        for i in 0..self.len.min(128) {
            f.write_str(if self.get(i) { "1" } else { "0" })?;
        }
        if self.len > 128 {
            f.write_str("…")?;
        }
        f.write_str(")")
    }
}

struct BitIter(u64);

impl Iterator for BitIter {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.0 == 0 {
            return None;
        }
        let b = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        Some(b)
    }
}

fn word_count(len: u32) -> usize {
    len.div_ceil(64) as usize
}

fn byte_count(len: u32) -> usize {
    len.div_ceil(8) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_from_keeps_only_the_prefix() {
        let mut b = Bitmap::full(130);
        b.clear_from(70);
        assert_eq!(b.count(), 70);
        assert!(b.get(69) && !b.get(70) && !b.get(129));
        b.clear_from(0);
        assert_eq!(b.count(), 0);
        let mut c = Bitmap::full(64);
        c.clear_from(64);
        assert!(c.is_full());
    }

    #[test]
    fn set_get_count() {
        let mut b = Bitmap::new(70);
        assert!(!b.is_empty());
        assert_eq!(b.count(), 0);
        b.set(0);
        b.set(69);
        b.set(69);
        b.set(70); // out of range: ignored
        b.set(u32::MAX);
        assert!(b.get(0) && b.get(69) && !b.get(1) && !b.get(70));
        assert_eq!(b.count(), 2);
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![0, 69]);
        assert!(!b.is_full());
    }

    #[test]
    fn full_and_empty() {
        for len in [0, 1, 7, 8, 63, 64, 65, 200] {
            let f = Bitmap::full(len);
            assert!(f.is_full());
            assert_eq!(f.count(), len);
            assert_eq!(f.iter_ones().count() as u32, len);
            assert_eq!(Bitmap::from_bytes(len, &f.to_bytes()).unwrap(), f);
        }
        assert!(Bitmap::new(0).is_empty());
        assert!(Bitmap::new(0).is_full());
    }

    #[test]
    fn round_trip_lsb_first() {
        let mut b = Bitmap::new(20);
        for i in [0, 3, 9, 19] {
            b.set(i);
        }
        let bytes = b.to_bytes();
        assert_eq!(bytes, vec![0b0000_1001, 0b0000_0010, 0b0000_1000]);
        let back = Bitmap::from_bytes(20, &bytes).unwrap();
        assert_eq!(back, b);
        assert_eq!(back.count(), 4);
    }

    #[test]
    fn hostile_from_bytes() {
        assert_eq!(
            Bitmap::from_bytes(20, &[0, 0]),
            Err(BitmapError::WrongLength {
                len: 20,
                expected: 3,
                actual: 2
            })
        );
        assert!(Bitmap::from_bytes(20, &[0, 0, 0, 0]).is_err());
        assert!(Bitmap::from_bytes(0, &[0]).is_err());
        assert_eq!(
            Bitmap::from_bytes(20, &[0, 0, 0b0001_0000]),
            Err(BitmapError::TrailingBits { len: 20, bit: 20 })
        );
        assert!(Bitmap::from_bytes(64, &[0xff; 8]).unwrap().is_full());
        assert!(Bitmap::from_bytes(65, &[0xff; 9]).is_err());
        assert!(Bitmap::from_bytes(0, &[]).unwrap().is_empty());
    }

    #[test]
    fn count_not_in() {
        let mut a = Bitmap::new(100);
        let mut b = Bitmap::new(100);
        for i in [1, 2, 3, 99] {
            a.set(i);
        }
        b.set(2);
        assert_eq!(a.count_not_in(&b), 3);
        assert_eq!(b.count_not_in(&a), 0);
        b.union_with(&a);
        assert_eq!(b.count(), 4);
        let mut short = Bitmap::new(3);
        short.union_with(&a);
        assert_eq!(short.iter_ones().collect::<Vec<_>>(), vec![1, 2]);
    }
}
