//! Peer side: which piece to fetch next, and from whom.

use std::collections::HashSet;
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
    /// The source cannot give the piece now: no address or connection for it, our token
    /// refused, the supernode not holding it yet.
    Unavailable,
    /// A parent said it does not hold the piece (or the task) it was asked for. Handled as
    /// [`FailReason::Unavailable`], and reported to the supernode: a parent that had
    /// claimed the piece did not stand by its claim.
    Absent,
    /// The source refused: all its upload slots are taken.
    Busy,
    /// The source did not deliver in time.
    Timeout,
    /// A transport or local error; the source is backed off to be safe.
    Io,
    /// The parent was relaying the piece while receiving it and lost it (its own transfer
    /// broke or failed its check): the piece leaves the parent's list until announced anew,
    /// and the parent is not backed off (its other pieces are fine). Only a cut-through
    /// relay answers this (the simulator's `cut_through`).
    Withdrawn,
}

/// Knobs for [`Picker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickerConfig {
    /// Requests in flight to parents. Default 8. A parent whose upload slots are all taken
    /// queues a request (dfget's `upload_queue`) instead of refusing it, so a request may
    /// wait there; twice the slots keeps the download busy meanwhile. In the 1,000-peer
    /// simulation with the queue, 8 made the flash crowd's median 1.30× the bound against
    /// 1.38× with 4 (16 gave no more); without the queue, 8 mostly earned `Busy` answers.
    pub max_in_flight: usize,
    /// Requests in flight to one parent. Default 1, so a parent's upload slots are shared
    /// between its children and a child's requests spread over as many parents as it
    /// has in flight: with the queue, 2 made the flash crowd's median 1.33× and 4 (with
    /// `max_in_flight` 8) 1.38×, as pipelined requests wait behind each other at one parent
    /// (dfget's TCP connection sends one piece at a time) instead of going elsewhere.
    pub per_parent_in_flight: usize,
    /// Requests in flight to a parent while it is the only one: with nobody to spread
    /// requests over, pipelining them keeps its connection busy between pieces. Default 4
    /// (capped by `max_in_flight`).
    pub lone_parent_in_flight: usize,
    /// Requests in flight to the seed, on top of `max_in_flight`. Default 4. The seed is only
    /// asked for pieces no usable parent holds, and such pieces are asked for first, so this
    /// bounds how fast a peer pulls fresh pieces into the swarm.
    pub seed_in_flight: usize,
    /// How long a source that failed with anything but `Corrupt` or `Busy` is skipped.
    /// Default 500 ms.
    pub backoff: Duration,
    /// How long a source that answered `Busy` is skipped. Default 50 ms: a busy source is
    /// alive and frees a slot within about one piece time, while other parents are tried at
    /// once.
    pub busy_backoff: Duration,
    /// Among equally rare pieces, the tie is broken at random between the `tie_window` lowest
    /// indexes. Default 32: peers starting together still pick different pieces, while the
    /// pieces a peer holds stay close to an in-order prefix, which it can hash for the
    /// whole-file digest (and stream to a reader) as the download goes. A peer whose only
    /// parent holds the whole blob takes its pieces in order instead (a node pulling what
    /// another node has cached): a reader streaming the blob (the mirror's client) then gets
    /// its bytes while the rest arrives rather than once piece 0, picked at random among 32,
    /// is in. Not for a lone parent that is still downloading: in the 1,000-peer flash crowd
    /// that made peers pick the same low pieces (p50 1.222 -> 1.248x, max 1.316 -> 1.367x).
    pub tie_window: u32,
    /// Pieces received and not yet reported done or failed (being verified and written
    /// locally) after [`Picker::handle_piece_received`] freed their source. Default 2. No
    /// new request starts while this many are pending, which bounds the piece buffers held.
    pub max_verifying: usize,
}

impl Default for PickerConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 8,
            per_parent_in_flight: 1,
            lone_parent_in_flight: 4,
            seed_in_flight: 4,
            backoff: Duration::from_millis(500),
            busy_backoff: Duration::from_millis(50),
            tie_window: 32,
            max_verifying: 2,
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
/// once; such pieces are asked for before any parent's (nobody else can spread them) and
/// count against `seed_in_flight`, not `max_in_flight`. A piece is never requested twice at
/// the same time, nor from a source not known to hold it.
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
    /// Per piece, where it is being fetched from, and whether it was received (its source's
    /// slot already freed; it is being verified).
    in_flight: Vec<Option<(Source, bool)>>,
    in_flight_bits: Bitmap,
    /// Requests whose bytes are still on their way (received ones excluded).
    in_flight_count: usize,
    /// Pieces received and not yet reported done or failed.
    verifying: usize,
    /// Pieces a reader waits for right now: picked before any other, from wherever they are.
    urgent: Bitmap,
    /// Requests in flight per source (a handful of entries: linear search beats hashing).
    per_source: Vec<(Source, usize)>,
    backoff: Vec<(Source, Instant)>,
    banned: HashSet<PeerId>,
    /// Scratch words for candidate sets.
    scratch: Vec<u64>,
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
            in_flight: vec![None; piece_count as usize],
            in_flight_bits: Bitmap::new(piece_count),
            in_flight_count: 0,
            verifying: 0,
            urgent: Bitmap::new(piece_count),
            per_source: Vec::new(),
            backoff: Vec::new(),
            banned: HashSet::new(),
            scratch: Vec::new(),
        }
    }

    /// Replaces the known parent set. Requests already in flight stay counted until reported.
    /// Parents banned locally, duplicates (last wins) and bitmaps of the wrong length are
    /// dropped.
    pub fn handle_parents(&mut self, _now: Instant, parents: Vec<(PeerId, Bitmap)>) {
        let len = self.have.len();
        let mut kept: Vec<(PeerId, Bitmap)> = Vec::with_capacity(parents.len());
        for (id, bits) in parents {
            if bits.len() != len {
                warn!(parent = %id, got = bits.len(), want = len, "parent bitmap has wrong length");
                continue;
            }
            if self.banned.contains(&id) {
                continue;
            }
            match kept.iter_mut().find(|(k, _)| *k == id) {
                Some(entry) => entry.1 = bits,
                None => kept.push((id, bits)),
            }
        }
        self.parents = kept;
        let parents = &self.parents;
        self.backoff.retain(|(s, _)| {
            matches!(s, Source::Seed) || parents.iter().any(|(id, _)| Source::Peer(*id) == *s)
        });
        self.recount();
    }

    /// A parent announced that it now holds `piece`. Ignored for a parent not in the set
    /// (or banned) and for an index out of range.
    pub fn handle_parent_have(&mut self, parent: PeerId, piece: u32) {
        if piece >= self.have.len() {
            return;
        }
        if let Some((_, bits)) = self.parents.iter_mut().find(|(id, _)| *id == parent)
            && !bits.get(piece)
        {
            bits.set(piece);
            self.rarity[piece as usize] += 1;
        }
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

    /// The seed is another supernode from now on (the old one was lost): it holds nothing
    /// yet as far as this picker knows, and the old one's back-off does not apply to it.
    pub fn handle_new_seed(&mut self) {
        self.seed = Bitmap::new(self.have.len());
        self.backoff.retain(|(s, _)| *s != Source::Seed);
    }

    /// The bytes of a requested piece have all arrived and are being verified: its source
    /// is free for the next request (the parent's upload slot was released when it sent
    /// them), while the piece stays reserved until `handle_piece_done` or
    /// `handle_piece_failed`. Optional; a stray report is ignored.
    pub fn handle_piece_received(&mut self, piece: u32, from: Source) {
        let Some(entry) = self.in_flight.get_mut(piece as usize) else {
            return;
        };
        let Some((src, received)) = entry else {
            return;
        };
        if *src != from || *received {
            return;
        }
        *received = true;
        let src = *src;
        self.in_flight_count -= 1;
        self.verifying += 1;
        self.release(src);
    }

    /// A reader waits for these pieces (a ranged read of content still downloading): each
    /// one not yet held is picked before any other, from a parent holding it or from the
    /// seed when it offers it, within the usual limits. Out-of-range indexes are ignored.
    pub fn add_urgent(&mut self, pieces: impl IntoIterator<Item = u32>) {
        for p in pieces {
            if p < self.have.len() && !self.have.get(p) {
                self.urgent.set(p);
            }
        }
    }

    /// Up to `limit` urgent pieces not yet held, lowest first (to tell the supernode).
    pub fn urgent(&self, limit: usize) -> Vec<u32> {
        self.urgent.iter_ones().take(limit).collect()
    }

    /// A piece was verified and written.
    pub fn handle_piece_done(&mut self, _now: Instant, piece: u32, from: Source) {
        self.finish(piece, from);
        self.have.set(piece);
        self.urgent.clear(piece);
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
                self.backoff.retain(|(s, _)| *s != from);
                self.recount();
            }
            _ => {
                if let (
                    FailReason::Unavailable | FailReason::Absent | FailReason::Withdrawn,
                    Source::Peer(id),
                ) = (reason, from)
                    && let Some((_, bits)) = self.parents.iter_mut().find(|(p, _)| *p == id)
                    && bits.get(piece)
                {
                    // It claimed the piece and does not serve it: not asked for it again
                    // until it is announced (or reported) anew.
                    bits.clear(piece);
                    self.rarity[piece as usize] -= 1;
                }
                if reason == FailReason::Withdrawn {
                    return;
                }
                debug!(source = ?from, piece, ?reason, "backing off source");
                let wait = if reason == FailReason::Busy {
                    self.config.busy_backoff
                } else {
                    self.config.backoff
                };
                let until = now + wait;
                match self.backoff.iter_mut().find(|(s, _)| *s == from) {
                    Some(entry) => entry.1 = entry.1.max(until),
                    None => self.backoff.push((from, until)),
                }
            }
        }
    }

    /// Marks a piece present without a source (for example after a restart).
    pub fn handle_have(&mut self, piece: u32) {
        self.have.set(piece);
    }

    /// The next request to start, or `None` when nothing can start now.
    pub fn poll_request(&mut self, now: Instant) -> Option<Request> {
        self.backoff.retain(|(_, until)| *until > now);
        if self.have.is_full() || self.verifying >= self.config.max_verifying.max(1) {
            return None;
        }
        // Pieces only the seed has come first (nobody else can spread them) and have their
        // own budget, so a peer busy with parents still pulls fresh pieces into the swarm.
        let from_parents = self.in_flight_count - self.load(Source::Seed);
        let req = match self.pick_urgent(from_parents) {
            Some(r) => r,
            None => match self.pick_from_seed() {
                Some(r) => r,
                None if from_parents < self.config.max_in_flight => self.pick_from_parents()?,
                None => return None,
            },
        };
        self.in_flight[req.piece as usize] = Some((req.source, false));
        self.in_flight_bits.set(req.piece);
        self.in_flight_count += 1;
        match self.per_source.iter_mut().find(|(s, _)| *s == req.source) {
            Some(entry) => entry.1 += 1,
            None => self.per_source.push((req.source, 1)),
        }
        Some(req)
    }

    /// When the earliest backoff ends; `None` if nothing is backed off or the download is
    /// complete.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.have.is_full() {
            return None;
        }
        self.backoff.iter().map(|(_, until)| *until).min()
    }

    /// True once every piece is held.
    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// Pieces held.
    pub fn have(&self) -> &Bitmap {
        &self.have
    }

    /// Requests started and not yet reported (received ones being verified included).
    pub fn in_flight(&self) -> usize {
        self.in_flight_count + self.verifying
    }

    /// Peers banned locally for serving corrupt pieces.
    pub fn banned(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.banned.iter().copied()
    }

    fn load(&self, src: Source) -> usize {
        self.per_source
            .iter()
            .find(|(s, _)| *s == src)
            .map_or(0, |(_, n)| *n)
    }

    fn backed_off(&self, src: Source) -> bool {
        self.backoff.iter().any(|(s, _)| *s == src)
    }

    /// Requests one parent may have in flight now: `lone_parent_in_flight` when it is the
    /// only parent not backed off (nobody else to spread the requests over: a small swarm,
    /// a node pulling what one other node holds), else `per_parent_in_flight`.
    fn per_parent_limit(&self) -> usize {
        let mut live = self
            .parents
            .iter()
            .filter(|(id, _)| !self.backed_off(Source::Peer(*id)));
        let limit = self.config.per_parent_in_flight;
        match (live.next(), live.next()) {
            (Some(_), None) => limit.max(self.config.lone_parent_in_flight),
            _ => limit,
        }
    }

    /// Parents that may take one more request now (`limit` from [`Self::per_parent_limit`]).
    fn usable(&self, i: usize, limit: usize) -> bool {
        let src = Source::Peer(self.parents[i].0);
        !self.backed_off(src) && self.load(src) < limit
    }

    /// Rarest piece some usable parent holds, from the least-loaded such parent.
    fn pick_from_parents(&mut self) -> Option<Request> {
        let limit = self.per_parent_limit();
        let usable: Vec<usize> = (0..self.parents.len())
            .filter(|&i| self.usable(i, limit))
            .collect();
        if usable.is_empty() {
            return None;
        }
        // Wanted pieces some usable parent holds, a word at a time.
        let mut cand = std::mem::take(&mut self.scratch);
        cand.clear();
        cand.resize(self.have.words().len(), 0);
        for &i in &usable {
            for (c, w) in cand.iter_mut().zip(self.parents[i].1.words()) {
                *c |= w;
            }
        }
        for ((c, h), f) in cand
            .iter_mut()
            .zip(self.have.words())
            .zip(self.in_flight_bits.words())
        {
            *c &= !(h | f);
        }
        let window = match self.parents.as_slice() {
            [(_, bits)] if bits.is_full() => 1,
            _ => self.config.tie_window,
        };
        let piece = self.rarest(&cand, window);
        self.scratch = cand;
        let piece = piece?;
        let mut chosen: Option<(usize, PeerId)> = None;
        let mut ties = 0u32;
        for &i in &usable {
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

    /// The lowest urgent piece not held or in flight that a source can serve now: the
    /// least-loaded usable parent holding it (within `max_in_flight`), else the seed if it
    /// offers it (within `seed_in_flight`).
    fn pick_urgent(&mut self, from_parents: usize) -> Option<Request> {
        if self.urgent.count() == 0 {
            return None;
        }
        let seed_ok =
            !self.backed_off(Source::Seed) && self.load(Source::Seed) < self.config.seed_in_flight;
        let parents_ok = from_parents < self.config.max_in_flight;
        let wanted: Vec<u32> = self
            .urgent
            .iter_ones()
            .filter(|&p| !self.have.get(p) && !self.in_flight_bits.get(p))
            .collect();
        let limit = self.per_parent_limit();
        for piece in wanted {
            if parents_ok {
                let parent = (0..self.parents.len())
                    .filter(|&i| self.usable(i, limit) && self.parents[i].1.get(piece))
                    .min_by_key(|&i| self.load(Source::Peer(self.parents[i].0)));
                if let Some(i) = parent {
                    return Some(Request {
                        piece,
                        source: Source::Peer(self.parents[i].0),
                    });
                }
            }
            if seed_ok && self.seed.get(piece) {
                return Some(Request {
                    piece,
                    source: Source::Seed,
                });
            }
        }
        None
    }

    /// The rarest piece in `cand` (by parents holding it), ties broken at random among the
    /// `window` lowest indexes.
    fn rarest(&mut self, cand: &[u64], window: u32) -> Option<u32> {
        let window = window.max(1);
        let mut best: Option<(u32, u32)> = None; // (rarity, piece)
        let mut ties = 0u32;
        for (w, &word) in cand.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let piece = w as u32 * 64 + bits.trailing_zeros();
                bits &= bits - 1;
                let r = self.rarity[piece as usize];
                match best {
                    Some((br, _)) if r > br => {}
                    Some((br, _)) if r == br => {
                        if ties < window {
                            ties += 1;
                            if self.rng.random_range(0..ties) == 0 {
                                best = Some((r, piece));
                            }
                        }
                    }
                    _ => {
                        best = Some((r, piece));
                        ties = 1;
                    }
                }
            }
        }
        best.map(|(_, p)| p)
    }

    /// A random piece the seed holds and no non-backed-off parent does.
    fn pick_from_seed(&mut self) -> Option<Request> {
        if self.backed_off(Source::Seed) || self.load(Source::Seed) >= self.config.seed_in_flight {
            return None;
        }
        let mut cand = std::mem::take(&mut self.scratch);
        cand.clear();
        cand.extend(self.seed.words());
        for ((c, h), f) in cand
            .iter_mut()
            .zip(self.have.words())
            .zip(self.in_flight_bits.words())
        {
            *c &= !(h | f);
        }
        for (id, bits) in &self.parents {
            if self.backed_off(Source::Peer(*id)) {
                continue;
            }
            for (c, w) in cand.iter_mut().zip(bits.words()) {
                *c &= !w;
            }
        }
        let total: u32 = cand.iter().map(|w| w.count_ones()).sum();
        let mut pick = None;
        if total > 0 {
            let mut k = self.rng.random_range(0..total);
            for (w, &word) in cand.iter().enumerate() {
                let n = word.count_ones();
                if k < n {
                    let mut bits = word;
                    for _ in 0..k {
                        bits &= bits - 1;
                    }
                    pick = Some(w as u32 * 64 + bits.trailing_zeros());
                    break;
                }
                k -= n;
            }
        }
        self.scratch = cand;
        pick.map(|piece| Request {
            piece,
            source: Source::Seed,
        })
    }

    fn finish(&mut self, piece: u32, from: Source) {
        // Only what was started is counted; a stray report must not skew the limits.
        let Some((src, received)) = self
            .in_flight
            .get_mut(piece as usize)
            .and_then(Option::take)
        else {
            return;
        };
        self.in_flight_bits.clear(piece);
        if src != from {
            debug!(piece, started = ?src, reported = ?from, "piece reported from another source");
        }
        if received {
            self.verifying -= 1;
        } else {
            self.in_flight_count -= 1;
            self.release(src);
        }
    }

    /// One request fewer counted against `src`.
    fn release(&mut self, src: Source) {
        if let Some(k) = self.per_source.iter().position(|(s, _)| *s == src) {
            self.per_source[k].1 -= 1;
            if self.per_source[k].1 == 0 {
                self.per_source.swap_remove(k);
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
