//! Damselfly wire contracts.
//!
//! Two conversations cross the network:
//!
//! ```text
//!   peer ──HTTP (protobuf bodies)──▶ supernode   register / sync / leave, piece download (raw bytes)
//!   peer ◀──TCP connection──────────▶ peer        preamble each way, then pipelined PieceRequest
//!                                                  frames; PieceResponse frame + raw bytes each, in order
//!   peer ◀──QUIC bi-stream──────────▶ peer        (selectable) PieceRequest frame → PieceResponse frame + raw bytes
//! ```
//!
//! Every message carries [`PROTOCOL_VERSION`]. Everything that arrives from the network goes
//! through [`decode`], which refuses oversize input *before* allocating and never panics, and
//! then through the message's `validate`, which checks counts, lengths and digests. Code behind
//! these two calls may trust the message.
//!
//! Layers: [`messages`] (the prost types), [`frame`] (length-prefixed frames for TCP connections and QUIC streams, and the TCP preamble),
//! [`error`] ([`DecodeError`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod frame;
pub mod messages;

pub use error::DecodeError;
pub use frame::{
    ANNOUNCE_MAGIC, ConnKind, FRAME_HEADER_LEN, MAX_STREAM_CHUNK, PEER_PROTOCOL_VERSION,
    PREAMBLE_LEN, PREAMBLE_MAGIC, STREAM_END, STREAM_WITHDRAWN, check_any_preamble, check_preamble,
    decode, encode_announce_preamble, encode_frame, encode_preamble, frame_len,
};
pub use messages::*;

/// The protocol version spoken by this build. A message with another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest control message (register, sync, piece request/response header) accepted, in bytes.
///
/// A sync response for a 16,384-piece task with 32 parents is about 600 KiB of bitmaps and
/// digests; 4 MiB leaves room without letting a peer make us allocate without bound.
pub const MAX_MESSAGE_LEN: usize = 4 << 20;

/// Largest number of headers a registration may forward to the origin.
pub const MAX_HEADERS: usize = 64;

/// Largest URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 8 << 10;

/// Largest piece count of a task (a 256 GiB blob at 16 MiB pieces).
pub const MAX_PIECES: u32 = 16_384;
