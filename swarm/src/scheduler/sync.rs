//! The scheduler's half of one peer sync, in one call, so the supernode's handler and the
//! simulator apply a sync the same way.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Parent, SchedError, TaskScheduler};
use crate::{Bitmap, PeerHost, PeerId};

/// What a peer's sync tells the scheduler (the wire request, validated).
#[derive(Debug, Clone, Copy)]
pub struct SyncInput<'a> {
    /// Pieces the peer verified since its last successful sync.
    pub new_pieces: &'a [u32],
    /// `(offender, piece)`: pieces the peer got from `offender` that failed verification.
    pub bad_pieces: &'a [(PeerId, u32)],
    /// Pieces a reader on the peer is waiting for, offered first (see
    /// [`TaskScheduler::seed_pieces`]).
    pub urgent: &'a [u32],
    /// Uploads the peer is serving right now.
    pub uploading: u32,
    /// The peer holds every piece.
    pub done: bool,
    /// What the supernode itself holds right now.
    pub seed_has: &'a Bitmap,
    /// `Some`: the peer learns its parents' pieces from the parents themselves (their
    /// announcements) and already knows these parents, so the answer names only the changes
    /// ([`SyncOutput::delta`]). `None`: the answer lists every parent with its bitmap.
    pub known_parents: Option<&'a [PeerId]>,
    /// Parents the peer could not reach since its last sync (see
    /// [`TaskScheduler::handle_unreachable`]).
    pub unreachable_parents: &'a [PeerId],
    /// `(parent, piece)`: parents that said they do not hold a piece they were asked for
    /// (see [`TaskScheduler::handle_unserved`]).
    pub unserved: &'a [(PeerId, u32)],
}

/// The scheduler's answer to one sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOutput {
    /// The peer's parents, each with its bitmap. Empty for a peer that is done. With
    /// [`SyncOutput::delta`], only the parents the peer did not list, with empty bitmaps.
    pub parents: Vec<Parent>,
    /// The answer names changes only: `parents` are new, `dropped_parents` gone; the peer
    /// keeps the others and learns every parent's pieces from the parent.
    pub delta: bool,
    /// With [`SyncOutput::delta`], parents the peer listed that are no longer assigned to it.
    pub dropped_parents: Vec<PeerId>,
    /// Pieces the peer may fetch from the supernode. Empty for a peer that is done.
    pub seed_pieces: Bitmap,
    /// The peer had expired (silent for `peer_timeout`) and was admitted again. The
    /// scheduler lost what it had reported before, so it should report every piece it holds
    /// at its next sync.
    pub readmitted: bool,
}

impl TaskScheduler {
    /// Applies one sync from `peer` (serving at `addr`, registered from `host`) and answers it: records its new
    /// pieces, load and completion (re-admitting it if it had expired), files its bad-piece
    /// reports, then picks its parents and the supernode's offer. A finished peer gets
    /// neither: it needs no parents, and assigning some would count it as their child.
    ///
    /// This is the whole scheduler side of a sync; the caller adds what only it knows (the
    /// task's state and piece digests) and afterwards drains [`TaskScheduler::poll_event`].
    ///
    /// # Errors
    ///
    /// [`SchedError::Banned`] for a banned peer, [`SchedError::IdTaken`] for the id of a
    /// peer of another host, and [`SchedError::PieceOutOfRange`] for a bad piece index.
    /// Nothing changes on error.
    pub fn handle_sync_request(
        &mut self,
        now: Instant,
        peer: PeerId,
        addr: SocketAddr,
        host: PeerHost,
        input: &SyncInput<'_>,
    ) -> Result<SyncOutput, SchedError> {
        if let Some(&piece) = input.new_pieces.iter().find(|&&p| p >= self.piece_count) {
            // Checked before a re-admission, so a refused sync changes nothing.
            return Err(SchedError::PieceOutOfRange {
                piece,
                piece_count: self.piece_count,
            });
        }
        self.check_join(peer, host)?;
        let mut readmitted = false;
        let mut result = self.handle_sync(now, peer, input.new_pieces, input.uploading, input.done);
        if result == Err(SchedError::UnknownPeer(peer)) {
            // Expired after a pause; it was admitted before, so admit it again.
            self.handle_join(now, peer, addr, host)?;
            readmitted = true;
            result = self.handle_sync(now, peer, input.new_pieces, input.uploading, input.done);
        }
        result?;
        for &(offender, piece) in input.bad_pieces {
            self.handle_bad_piece(now, peer, offender, piece);
        }
        if !input.unreachable_parents.is_empty() {
            self.handle_unreachable(now, peer, input.unreachable_parents);
        }
        for &(parent, piece) in input.unserved {
            self.handle_unserved(now, peer, parent, piece);
        }
        if input.done {
            return Ok(SyncOutput {
                parents: Vec::new(),
                delta: input.known_parents.is_some(),
                dropped_parents: input.known_parents.map(<[_]>::to_vec).unwrap_or_default(),
                seed_pieces: Bitmap::new(self.piece_count),
                readmitted,
            });
        }
        let mut parents = self.parents(now, peer)?;
        let seed_pieces = self.seed_pieces(now, peer, input.seed_has, input.urgent)?;
        let mut dropped_parents = Vec::new();
        if let Some(known) = input.known_parents {
            dropped_parents = known
                .iter()
                .filter(|k| !parents.iter().any(|p| p.id == **k))
                .copied()
                .collect();
            parents.retain(|p| !known.contains(&p.id));
            for p in &mut parents {
                p.pieces = Bitmap::new(0);
            }
        }
        Ok(SyncOutput {
            parents,
            delta: input.known_parents.is_some(),
            dropped_parents,
            seed_pieces,
            readmitted,
        })
    }

    /// Whether a long-polling sync ([`crate::SyncMsg::wait`]) should be answered as soon as
    /// the supernode stores a new piece (held until then): only while the swarm is small
    /// enough for the supernode to feed its peers directly (at most `seed_offers` peers still
    /// downloading, a cold pull through one node being the common case). In a large swarm a
    /// fresh piece goes to a handful of peers; waking every waiting peer for each piece would
    /// multiply the syncs, so those are answered at once.
    pub fn wakes_on_new_pieces(&self) -> bool {
        self.downloading <= self.config.seed_offers
    }
}
