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
