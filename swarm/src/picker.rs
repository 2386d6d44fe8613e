//! Peer side: which piece to fetch next, and from whom.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, warn};

use crate::{Bitmap, PeerId};

#[cfg(test)]
mod tests;

/// Where a piece comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// The supernode: the parent of last resort.
    Seed,
    /// Another peer.
    Peer(PeerId),
}

/// Why a piece request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailReason {
    /// The bytes failed the sha256 check: the source misbehaved and is banned locally.
    Corrupt,
    /// The source does not have the piece (or is gone).
    Unavailable,
    /// The source refused: all its upload slots are taken.
    Busy,
    /// The source did not deliver in time.
    Timeout,
    /// A transport or local error; the source is backed off to be safe.
    Io,
}

/// Knobs for [`Picker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickerConfig {
    /// Requests in flight overall. Default 8. Enough to fill the downlink through latency;
    /// more only queues at parents.
    pub max_in_flight: usize,
    /// Requests in flight to one parent. Default 2, so a parent's upload slots are shared
    /// between its children.
    pub per_parent_in_flight: usize,
    /// Requests in flight to the seed. Default 4. The seed is only asked for pieces no usable
    /// parent holds, so this bounds how fast a peer pulls fresh pieces into the swarm.
    pub seed_in_flight: usize,
    /// How long a source that failed with anything but `Corrupt` is skipped. Default 500 ms.
    pub backoff: Duration,
}

impl Default for PickerConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 8,
            per_parent_in_flight: 2,
            seed_in_flight: 4,
            backoff: Duration::from_millis(500),
        }
    }
}

/// A request the driver should start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Piece index.
    pub piece: u32,
    /// Where to fetch it from.
    pub source: Source,
}

/// The piece picker for one download.
///
/// Call order: feed `handle_parents` (from each scheduler reply) and `handle_seed_pieces`,
/// then call `poll_request` until it returns `None`, starting each request. Report every
/// started request exactly once with `handle_piece_done` or `handle_piece_failed`, and call
/// `poll_request` again after each input. When `poll_request` returns `None`, wait for new
/// input or for `poll_timeout` (a backoff ending).
///
/// Policy: rarest-first among pieces not held and not in flight, where rarity is the number of
/// non-banned parents holding the piece; ties are broken at random (seeded) so peers starting
/// together pick different pieces. A piece goes to the holding parent with the fewest of our
/// requests in flight. The seed is only asked for pieces that no parent (banned or backed-off
/// ones aside) holds, so most bytes flow peer-to-peer and the supernode sends each piece about
/// once. A piece is never requested twice at the same time, nor from a source not known to
/// hold it.
#[derive(Debug)]
pub struct Picker {
    config: PickerConfig,
    rng: SmallRng,
    have: Bitmap,
    seed: Bitmap,
    /// Current parents, banned ones excluded.
    parents: Vec<(PeerId, Bitmap)>,
    /// Per piece, how many entries of `parents` hold it.
    rarity: Vec<u32>,
    in_flight: HashMap<u32, Source>,
    per_source: HashMap<Source, usize>,
    backoff: HashMap<Source, Instant>,
    banned: HashSet<PeerId>,
}

impl Picker {
    /// A picker for a task of `piece_count` pieces, holding nothing yet.
    pub fn new(piece_count: u32, config: PickerConfig, rng_seed: u64) -> Self {
        Self {
            config,
            rng: SmallRng::seed_from_u64(rng_seed),
            have: Bitmap::new(piece_count),
            seed: Bitmap::new(piece_count),
            parents: Vec::new(),
            rarity: vec![0; piece_count as usize],
            in_flight: HashMap::new(),
            per_source: HashMap::new(),
            backoff: HashMap::new(),
            banned: HashSet::new(),
        }
    }

    /// Replaces the known parent set. Requests already in flight stay counted until reported.
    /// Parents banned locally, duplicates (last wins) and bitmaps of the wrong length are
    /// dropped.
    pub fn handle_parents(&mut self, _now: Instant, parents: Vec<(PeerId, Bitmap)>) {
        let len = self.have.len();
        let mut by_id: HashMap<PeerId, Bitmap> = HashMap::with_capacity(parents.len());
        let mut order = Vec::with_capacity(parents.len());
        for (id, bits) in parents {
            if bits.len() != len {
                warn!(parent = %id, got = bits.len(), want = len, "parent bitmap has wrong length");
                continue;
            }
            if self.banned.contains(&id) {
                continue;
            }
            if by_id.insert(id, bits).is_none() {
                order.push(id);
            }
        }
        self.parents = order
            .into_iter()
            .filter_map(|id| by_id.remove(&id).map(|b| (id, b)))
            .collect();
        let parents = &self.parents;
        self.backoff.retain(|s, _| {
            matches!(s, Source::Seed) || parents.iter().any(|(id, _)| Source::Peer(*id) == *s)
        });
        self.recount();
    }

    /// What the supernode holds; grows as its origin fetch progresses. Ignored if the length
    /// is wrong.
    pub fn handle_seed_pieces(&mut self, pieces: Bitmap) {
        if pieces.len() != self.have.len() {
            warn!(
                got = pieces.len(),
                want = self.have.len(),
                "seed bitmap has wrong length"
            );
            return;
        }
        self.seed = pieces;
    }

    /// A piece was verified and written.
    pub fn handle_piece_done(&mut self, _now: Instant, piece: u32, from: Source) {
        self.finish(piece, from);
        self.have.set(piece);
    }

    /// A request failed. `Corrupt` bans the peer locally for good (the seed is backed off
    /// instead); every other reason backs the source off for `backoff`. The piece can be
    /// picked again right away, from another source.
    pub fn handle_piece_failed(
        &mut self,
        now: Instant,
        piece: u32,
        from: Source,
        reason: FailReason,
    ) {
        self.finish(piece, from);
        match (reason, from) {
            (FailReason::Corrupt, Source::Peer(id)) => {
                debug!(peer = %id, piece, "banning parent for corrupt piece");
                self.banned.insert(id);
                self.parents.retain(|(p, _)| *p != id);
                self.backoff.remove(&from);
                self.recount();
            }
            _ => {
                debug!(source = ?from, piece, ?reason, "backing off source");
                self.backoff.insert(from, now + self.config.backoff);
            }
        }
    }

    /// Marks a piece present without a source (for example after a restart).
    pub fn handle_have(&mut self, piece: u32) {
        self.have.set(piece);
    }

    /// The next request to start, or `None` when nothing can start now.
    pub fn poll_request(&mut self, now: Instant) -> Option<Request> {
        self.backoff.retain(|_, until| *until > now);
        if self.have.is_full() || self.in_flight.len() >= self.config.max_in_flight {
            return None;
        }
        let usable: Vec<usize> = (0..self.parents.len())
            .filter(|&i| {
                let src = Source::Peer(self.parents[i].0);
                !self.backoff.contains_key(&src)
                    && self.load(src) < self.config.per_parent_in_flight
            })
            .collect();
        let req = self
            .pick_from_parents(&usable)
            .or_else(|| self.pick_from_seed())?;
        self.in_flight.insert(req.piece, req.source);
        *self.per_source.entry(req.source).or_default() += 1;
        Some(req)
    }

    /// When the earliest backoff ends; `None` if nothing is backed off or the download is
    /// complete.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.have.is_full() {
            return None;
        }
        self.backoff.values().min().copied()
    }

    /// True once every piece is held.
    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// Pieces held.
    pub fn have(&self) -> &Bitmap {
        &self.have
    }

    /// Requests started and not yet reported.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Peers banned locally for serving corrupt pieces.
    pub fn banned(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.banned.iter().copied()
    }

    fn load(&self, src: Source) -> usize {
        self.per_source.get(&src).copied().unwrap_or(0)
    }

    fn wanted(&self, piece: u32) -> bool {
        !self.have.get(piece) && !self.in_flight.contains_key(&piece)
    }

    /// Rarest piece some usable parent holds, from the least-loaded such parent.
    fn pick_from_parents(&mut self, usable: &[usize]) -> Option<Request> {
        if usable.is_empty() {
            return None;
        }
        let mut best: Option<(u32, u32)> = None; // (rarity, piece)
        let mut ties = 0u32;
        for piece in 0..self.have.len() {
            if !self.wanted(piece) || !usable.iter().any(|&i| self.parents[i].1.get(piece)) {
                continue;
            }
            let r = self.rarity[piece as usize];
            match best {
                Some((br, _)) if r > br => {}
                Some((br, _)) if r == br => {
                    ties += 1;
                    if self.rng.random_range(0..ties) == 0 {
                        best = Some((r, piece));
                    }
                }
                _ => {
                    best = Some((r, piece));
                    ties = 1;
                }
            }
        }
        let (_, piece) = best?;
        let mut chosen: Option<(usize, PeerId)> = None;
        let mut ties = 0u32;
        for &i in usable {
            let (id, bits) = &self.parents[i];
            if !bits.get(piece) {
                continue;
            }
            let load = self.load(Source::Peer(*id));
            match chosen {
                Some((l, _)) if load > l => {}
                Some((l, _)) if load == l => {
                    ties += 1;
                    if self.rng.random_range(0..ties) == 0 {
                        chosen = Some((load, *id));
                    }
                }
                _ => {
                    chosen = Some((load, *id));
                    ties = 1;
                }
            }
        }
        chosen.map(|(_, id)| Request {
            piece,
            source: Source::Peer(id),
        })
    }

    /// A random piece the seed holds and no non-backed-off parent does.
    fn pick_from_seed(&mut self) -> Option<Request> {
        if self.backoff.contains_key(&Source::Seed)
            || self.load(Source::Seed) >= self.config.seed_in_flight
        {
            return None;
        }
        let mut pick = None;
        let mut seen = 0u32;
        for piece in self.seed.iter_ones() {
            if !self.wanted(piece) {
                continue;
            }
            let held = self.parents.iter().any(|(id, bits)| {
                bits.get(piece) && !self.backoff.contains_key(&Source::Peer(*id))
            });
            if held {
                continue;
            }
            seen += 1;
            if self.rng.random_range(0..seen) == 0 {
                pick = Some(piece);
            }
        }
        pick.map(|piece| Request {
            piece,
            source: Source::Seed,
        })
    }

    fn finish(&mut self, piece: u32, from: Source) {
        // Only what was started is counted; a stray report must not skew the limits.
        let Some(src) = self.in_flight.remove(&piece) else {
            return;
        };
        if src != from {
            debug!(piece, started = ?src, reported = ?from, "piece reported from another source");
        }
        if let Some(n) = self.per_source.get_mut(&src) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&src);
            }
        }
    }

    fn recount(&mut self) {
        self.rarity.iter_mut().for_each(|r| *r = 0);
        for (_, bits) in &self.parents {
            for p in bits.iter_ones() {
                self.rarity[p as usize] += 1;
            }
        }
    }
}
