//! The I/O-free core of Damselfly's P2P distribution: which peers a peer should fetch from,
//! which piece it should fetch next and from whom, and how fast it may send.
//!
//! Nothing here touches a socket, a file, a clock or a global RNG. Time comes in as
//! `now: Instant` parameters and randomness from a seeded [`rand::rngs::SmallRng`], so the
//! daemons and the simulator drive exactly the same state machines (house style §6.3).
//!
//! Layers and main types:
//!
//! - [`Bitmap`], [`piece_size_for`], [`piece_count`], [`piece_range`]: how a blob is cut
//!   into pieces and how a set of pieces is represented and sent on the wire.
//! - [`TaskScheduler`] (supernode, one per task): tracks live peers and what they hold, hands
//!   out [`Parent`]s, expires silent peers and bans peers that serve corrupt pieces.
//! - [`Picker`] (peer, one per download): rarest-first piece selection over the parents and
//!   the supernode ([`Source::Seed`], the parent of last resort).
//! - [`PeerSession`] (peer, one per download): owns the picker and decides the rest of the
//!   download loop: sync cadence and contents, which pieces are requestable (digest known),
//!   urgent pieces, bad-piece reports, stalls, supernode loss, completion.
//!   [`TaskScheduler::handle_sync_request`] is the supernode's side of one sync.
//! - [`TokenBucket`]: rate limiting for whoever writes the bytes.
//! - [`sim`]: a deterministic discrete-event simulation of a whole swarm over these types.
//!
//! How a download flows through them:
//!
//! ```text
//!  dfget / dfdaemon (peer)                           supernode
//!  ───────────────────────                           ─────────
//!  join ───────────────────────────────────────────▶ TaskScheduler::handle_join
//!  sync(new pieces, load) ─────────────────────────▶ TaskScheduler::handle_sync
//!  Picker::handle_parents ◀───── Vec<Parent> ─────── TaskScheduler::parents
//!  Picker::poll_request ──▶ Request{piece, source}
//!        │ fetch from parent (or seed), verify sha256
//!        ├─ ok ────▶ Picker::handle_piece_done, report piece at next sync
//!        └─ fail ──▶ Picker::handle_piece_failed
//!                    (Corrupt) ────────────────────▶ TaskScheduler::handle_bad_piece
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::fmt;

mod bitmap;
mod bucket;
mod host;
mod picker;
mod piece;
mod scheduler;
mod session;
pub mod sim;

pub use bitmap::{Bitmap, BitmapError};
pub use bucket::TokenBucket;
pub use host::PeerHost;
pub use picker::{FailReason, Picker, PickerConfig, Request, Source};
pub use piece::{MAX_PIECE_SIZE, MIN_PIECE_SIZE, piece_count, piece_range, piece_size_for};
pub use scheduler::{
    Parent, SEED_OFFER_TTL, SEED_SENT_TTL, SchedError, SchedEvent, SchedulerConfig, SyncInput,
    SyncOutput, TaskScheduler, UNREACHABLE_PARENT_TTL,
};
pub use session::{
    MAX_UNREACHABLE, MAX_URGENT, PeerSession, PieceFetch, SessionConfig, SessionEvent,
    Subscription, SupernodeWatch, SyncFailure, SyncMsg, SyncReply,
};

/// A peer's identity within the swarm, assigned by the driver (e.g. derived from its node
/// key). Displayed as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::PeerId;

    #[test]
    fn peer_id_display_is_hex() {
        assert_eq!(PeerId(0xab).to_string(), "00000000000000ab");
    }
}
