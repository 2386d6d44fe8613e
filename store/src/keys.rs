//! RocksDB key layout.
//!
//! | key                                   | value                          |
//! |---------------------------------------|--------------------------------|
//! | `m/format`                            | ASCII format version, `1`      |
//! | `t/` + task ID bytes                  | [`TaskMeta`](crate::TaskMeta) JSON |
//! | `p/` + sha256(task ID) + index (u32 BE) | raw 32-byte sha256 of the piece |
//!
//! Piece keys use the hashed ID so they have a fixed-length prefix: an ID that is a prefix of
//! another (or contains NUL) can never make a prefix scan see the other task's pieces, and
//! big-endian indexes make a scan return pieces in order.

use sha2::{Digest, Sha256};

/// Key holding the on-disk format version.
pub(crate) const FORMAT_KEY: &[u8] = b"m/format";
/// The format this code writes and reads.
pub(crate) const FORMAT_VERSION: &[u8] = b"1";
/// Prefix of task metadata keys.
pub(crate) const TASK_PREFIX: &[u8] = b"t/";
/// Prefix of piece digest keys.
pub(crate) const PIECE_PREFIX: &[u8] = b"p/";

const PIECE_KEY_LEN: usize = PIECE_PREFIX.len() + 32 + 4;

/// sha256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub(crate) fn task_key(id: &str) -> Vec<u8> {
    [TASK_PREFIX, id.as_bytes()].concat()
}

/// Prefix shared by all piece keys of `id`.
pub(crate) fn piece_prefix(id: &str) -> Vec<u8> {
    piece_prefix_hashed(&sha256(id.as_bytes()))
}

pub(crate) fn piece_prefix_hashed(id_hash: &[u8; 32]) -> Vec<u8> {
    [PIECE_PREFIX, id_hash].concat()
}

pub(crate) fn piece_key(id: &str, index: u32) -> Vec<u8> {
    let mut key = piece_prefix(id);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// Splits a piece key into (sha256 of task ID, piece index).
pub(crate) fn parse_piece_key(key: &[u8]) -> Option<([u8; 32], u32)> {
    if key.len() != PIECE_KEY_LEN {
        return None;
    }
    let rest = key.strip_prefix(PIECE_PREFIX)?;
    let (hash, index) = rest.split_at(32);
    Some((
        hash.try_into().ok()?,
        u32::from_be_bytes(index.try_into().ok()?),
    ))
}

/// Printable form of a key for logs and errors.
pub(crate) fn display(key: &[u8]) -> String {
    String::from_utf8_lossy(key).escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_key_round_trip() {
        let key = piece_key("sha256:ab", 0x0102_0304);
        let (hash, index) = parse_piece_key(&key).unwrap();
        assert_eq!(hash, sha256(b"sha256:ab"));
        assert_eq!(index, 0x0102_0304);
        assert!(key.starts_with(&piece_prefix("sha256:ab")));
    }

    #[test]
    fn malformed_piece_keys_rejected() {
        assert_eq!(parse_piece_key(b"p/short"), None);
        let mut key = piece_key("x", 1);
        key[0] = b't';
        assert_eq!(parse_piece_key(&key), None);
        key = piece_key("x", 1);
        key.push(0);
        assert_eq!(parse_piece_key(&key), None);
    }

    #[test]
    fn prefix_ids_do_not_share_piece_prefix() {
        assert!(!piece_key("a\0b", 0).starts_with(&piece_prefix("a")));
    }
}
