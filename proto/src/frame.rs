//! Length-prefixed frames and bounded decoding.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of protobuf. QUIC streams
//! carry frames; HTTP bodies carry the protobuf alone (HTTP already delimits them).

use prost::Message;

use crate::{DecodeError, MAX_MESSAGE_LEN};

/// Bytes in a frame header.
pub const FRAME_HEADER_LEN: usize = 4;

/// Decodes one protobuf message of at most [`MAX_MESSAGE_LEN`] bytes.
///
/// # Errors
/// [`DecodeError::TooLarge`] before any allocation when `bytes` is over the limit,
/// [`DecodeError::Protobuf`] for malformed input.
pub fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, DecodeError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE_LEN,
        });
    }
    Ok(M::decode(bytes)?)
}

/// Encodes `msg` as a frame: length prefix plus protobuf.
pub fn encode_frame<M: Message>(msg: &M) -> Vec<u8> {
    let len = msg.encoded_len();
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + len);
    // A control message is always far below 4 GiB; MAX_MESSAGE_LEN bounds what we send too.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    msg.encode_raw(&mut out);
    out
}

/// Reads the length of the frame whose header starts `buf`, refusing lengths over the limit.
///
/// # Errors
/// [`DecodeError::Truncated`] if `buf` is shorter than a header, [`DecodeError::TooLarge`] if
/// the declared length is over [`MAX_MESSAGE_LEN`].
pub fn frame_len(buf: &[u8]) -> Result<usize, DecodeError> {
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
        return Err(DecodeError::Truncated {
            need: FRAME_HEADER_LEN,
            have: buf.len(),
        });
    };
    let mut be = [0u8; FRAME_HEADER_LEN];
    be.copy_from_slice(header);
    let len = u32::from_be_bytes(be) as usize;
    if len > MAX_MESSAGE_LEN {
        return Err(DecodeError::TooLarge {
            len,
            max: MAX_MESSAGE_LEN,
        });
    }
    Ok(len)
}

/// A streamed piece's body ([`crate::PieceResponse::streamed`]): the chunk length that ends
/// it, once every byte came.
pub const STREAM_END: u32 = 0;

/// A streamed piece's body: the chunk length that says the rest will not come (the piece
/// failed at the sender); the connection stays usable.
pub const STREAM_WITHDRAWN: u32 = u32::MAX;

/// A streamed piece's body: the largest chunk accepted.
pub const MAX_STREAM_CHUNK: u32 = 1 << 20;

/// Bytes of the preamble each side of a TCP peer connection sends first: the magic
/// [`PREAMBLE_MAGIC`], then the peer-connection protocol version (u32, big endian).
pub const PREAMBLE_LEN: usize = 8;

/// The magic that opens a TCP peer connection.
pub const PREAMBLE_MAGIC: [u8; 4] = *b"DMSF";

/// The magic that opens a TCP announcement connection (a child subscribing to a parent's
/// new pieces), followed by [`PEER_PROTOCOL_VERSION`] like [`PREAMBLE_MAGIC`]. A parent
/// that predates announcements answers with its own [`PREAMBLE_MAGIC`] preamble and closes.
pub const ANNOUNCE_MAGIC: [u8; 4] = *b"DMSA";

/// The version of the TCP peer-connection protocol (the framing and pipelining rules, see
/// `docs/architecture.md`). Version 1 was QUIC only (one stream per request, ALPN
/// `damselfly-piece/1`), which has no preamble.
pub const PEER_PROTOCOL_VERSION: u32 = 2;

/// The preamble this build sends.
pub fn encode_preamble() -> [u8; PREAMBLE_LEN] {
    let mut out = [0u8; PREAMBLE_LEN];
    out[..4].copy_from_slice(&PREAMBLE_MAGIC);
    out[4..].copy_from_slice(&PEER_PROTOCOL_VERSION.to_be_bytes());
    out
}

/// The preamble a child sends to open an announcement connection.
pub fn encode_announce_preamble() -> [u8; PREAMBLE_LEN] {
    let mut out = encode_preamble();
    out[..4].copy_from_slice(&ANNOUNCE_MAGIC);
    out
}

/// What a connection opened with a preamble is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    /// Piece requests and answers ([`PREAMBLE_MAGIC`]).
    Pieces,
    /// A subscription to a parent's announcements ([`ANNOUNCE_MAGIC`]).
    Announcements,
}

/// Checks the preamble a child opened a connection with, and says what the connection is
/// for.
///
/// # Errors
/// As [`check_preamble`].
pub fn check_any_preamble(bytes: &[u8; PREAMBLE_LEN]) -> Result<ConnKind, DecodeError> {
    if bytes[..4] == ANNOUNCE_MAGIC {
        let mut pieces = *bytes;
        pieces[..4].copy_from_slice(&PREAMBLE_MAGIC);
        check_preamble(&pieces)?;
        return Ok(ConnKind::Announcements);
    }
    check_preamble(bytes).map(|_| ConnKind::Pieces)
}

/// Checks a peer's preamble and returns its version.
///
/// # Errors
/// [`DecodeError::Invalid`] when the magic is wrong (not a Damselfly peer),
/// [`DecodeError::Version`] when the version is not [`PEER_PROTOCOL_VERSION`].
pub fn check_preamble(bytes: &[u8; PREAMBLE_LEN]) -> Result<u32, DecodeError> {
    if bytes[..4] != PREAMBLE_MAGIC {
        return Err(DecodeError::Invalid {
            field: "preamble",
            reason: "not a Damselfly peer connection".into(),
        });
    }
    let mut be = [0u8; 4];
    be.copy_from_slice(&bytes[4..]);
    let version = u32::from_be_bytes(be);
    if version != PEER_PROTOCOL_VERSION {
        return Err(DecodeError::Version {
            got: version,
            expected: PEER_PROTOCOL_VERSION,
        });
    }
    Ok(version)
}

#[cfg(test)]
mod preamble_tests {
    use super::*;

    #[test]
    fn announcement_preambles_are_told_apart_from_piece_ones() {
        assert_eq!(check_any_preamble(&encode_preamble()), Ok(ConnKind::Pieces));
        assert_eq!(
            check_any_preamble(&encode_announce_preamble()),
            Ok(ConnKind::Announcements)
        );
        // A parent that predates announcements refuses the preamble outright.
        assert!(check_preamble(&encode_announce_preamble()).is_err());
        let mut other = encode_announce_preamble();
        other[7] = 9;
        assert!(matches!(
            check_any_preamble(&other),
            Err(DecodeError::Version { got: 9, .. })
        ));
    }

    #[test]
    fn preamble_round_trips_and_refuses_strangers() {
        assert_eq!(
            check_preamble(&encode_preamble()),
            Ok(PEER_PROTOCOL_VERSION)
        );
        let mut other = encode_preamble();
        other[7] = 9;
        assert_eq!(
            check_preamble(&other),
            Err(DecodeError::Version {
                got: 0x0000_0009,
                expected: PEER_PROTOCOL_VERSION
            })
        );
        assert!(matches!(
            check_preamble(b"GET / HT"),
            Err(DecodeError::Invalid {
                field: "preamble",
                ..
            })
        ));
    }
}
