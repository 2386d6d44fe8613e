//! Supernode side: who is in a task's swarm, what each peer holds, and which parents each
//! peer gets.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tracing::debug;

use crate::{Bitmap, PeerHost, PeerId};

mod sync;
#[cfg(test)]
mod tests;

pub use sync::{SyncInput, SyncOutput};

/// Knobs for [`TaskScheduler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Parents handed to each peer. Default 6. More parents spread load better and make rare
    /// pieces easier to find, at the cost of bigger replies and more connections per peer.
    pub parents_per_peer: usize,
    /// Concurrent uploads each peer serves; used to normalise the reported `uploading` into a
    /// load in `0.0..=1.0`. Default 4. Must match the peers' own setting.
    pub upload_slots: u32,
    /// A peer that has neither joined nor synced for this long is dropped. Default 15 s; peers
    /// should sync at least three times per timeout.
    pub peer_timeout: Duration,
    /// Distinct reporters of bad pieces needed to ban an offender, counted by host
    /// ([`PeerHost`]). Default 2, so a single lying reporter, under as many peer ids as it
    /// likes, cannot get an honest peer banned.
    pub ban_after_reports: u32,
    /// Pieces the supernode has offered ([`TaskScheduler::seed_pieces`]) and nobody has
    /// reported yet, at most. Default 16. Enough to keep the supernode's uplink busy through
    /// the peers' report delay; more splits its uplink between more transfers, so each fresh
    /// piece takes longer to reach the swarm.
    pub seed_offers: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            parents_per_peer: 6,
            upload_slots: 4,
            peer_timeout: Duration::from_secs(15),
            ban_after_reports: 2,
            seed_offers: 16,
        }
    }
}

/// One parent handed to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    /// The parent's identity.
    pub id: PeerId,
    /// Where the parent serves pieces.
    pub addr: SocketAddr,
    /// Pieces the parent had reported at the time of the call.
    pub pieces: Bitmap,
}

/// Something the scheduler decided on its own, drained with [`TaskScheduler::poll_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedEvent {
    /// The peer missed its sync deadline and was dropped.
    PeerExpired(PeerId),
    /// Enough distinct peers reported bad pieces from this peer; it is dropped for good.
    PeerBanned(PeerId),
    /// Peers on enough distinct hosts asked this peer for pieces it claimed and it did not
    /// serve them: its claims are void and it is no one's parent any more (it may still
    /// download).
    PeerDemoted(PeerId),
}

/// Why a [`TaskScheduler`] call was refused. Nothing changes when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    /// The peer never joined, left, or expired; it should join again.
    #[error("peer {0} is not part of this task")]
    UnknownPeer(PeerId),
    /// The peer (or another on its host) was banned for serving corrupt pieces and may not
    /// rejoin, under this id or another.
    #[error("peer {0} is banned from this task")]
    Banned(PeerId),
    /// The id belongs to a live peer of another host: a peer cannot act under another's id.
    #[error("peer id {0} is in use by another host")]
    IdTaken(PeerId),
    /// The peer reported a piece index that does not exist.
    #[error("piece {piece} out of range (task has {piece_count} pieces)")]
    PieceOutOfRange {
        /// The offending index.
        piece: u32,
        /// Pieces in the task.
        piece_count: u32,
    },
}

#[derive(Debug)]
struct PeerState {
    id: PeerId,
    addr: SocketAddr,
    /// Where it registered from: what bans and reports count by.
    host: PeerHost,
    /// It did not serve pieces it claimed ([`TaskScheduler::handle_unserved`]): its pieces
    /// and completion are no longer believed and it is named to nobody as a parent.
    demoted: bool,
    pieces: Bitmap,
    uploading: u32,
    done: bool,
    last_seen: Instant,
    /// Index into `TaskScheduler::live`.
    live_pos: usize,
    /// Slots of the current parents, with their ids (a slot may be reused by another peer).
    parents: Vec<(u32, PeerId)>,
    /// Peers that currently list this one among their parents (approximate after churn).
    children: u32,
    /// Peers this one reported it could not reach, each until when the report holds: not
    /// named to it as parents, and not counted as holders in its seed offers.
    unreachable: Vec<(PeerId, Instant)>,
}

/// The scheduler for one task (one blob), run by the supernode.
///
/// ```text
///  peer ──join──────────▶ handle_join      ┐
///  peer ──sync(pieces)──▶ handle_sync      │  TaskScheduler ──▶ poll_event (expired/banned)
///  peer ──get parents───▶ parents ─────────┤
///  peer ──seed offer────▶ seed_pieces      │
///  peer ──bad piece─────▶ handle_bad_piece │
///  timer ───────────────▶ handle_timeout ◀─┘── poll_timeout
/// ```
///
/// Call order: `handle_join` once per peer, then `handle_sync` periodically (it doubles as the
/// keep-alive) and `parents` / `seed_pieces` whenever the peer asks. After every input, drain
/// `poll_event` and re-arm one timer from `poll_timeout`; when it fires call `handle_timeout`.
///
/// Parent selection samples at most `8 * parents_per_peer` random live peers per call, plus
/// holders of the rarest pieces the peer lacks, so its cost does not grow with the swarm
/// (peers live in a slab; a call does a handful of 4-word bitmap operations per candidate).
/// Candidates are ranked by what they can give the asking peer (pieces no chosen parent has,
/// pieces it lacks, or still downloading), minus their reported upload load and the number of
/// children already assigned to them, with a seeded random tie-break so that a flash crowd
/// spreads over the whole swarm. Parents that still hold pieces the peer lacks are kept
/// across calls, so peers do not reconnect needlessly.
#[derive(Debug)]
pub struct TaskScheduler {
    piece_count: u32,
    config: SchedulerConfig,
    rng: SmallRng,
    /// Peer slab; `index` maps ids to slots.
    slots: Vec<Option<PeerState>>,
    free: Vec<u32>,
    index: HashMap<PeerId, u32>,
    /// Live slots, for O(1) random sampling.
    live: Vec<u32>,
    /// `(last_seen, peer)` ordered by time, for expiry.
    expiry: BTreeSet<(Instant, PeerId)>,
    banned: HashSet<PeerId>,
    /// Hosts of banned peers: no id from them may join again.
    banned_hosts: HashSet<PeerHost>,
    /// Offender → the distinct hosts that reported it. Survives the offender leaving so
    /// rejoining does not wipe its record.
    reports: HashMap<PeerId, HashSet<PeerHost>>,
    /// Parent → the distinct hosts whose peers it did not serve a piece it claimed.
    unserved_reports: HashMap<PeerId, HashSet<PeerHost>>,
    holders: Vec<u32>,
    /// Per piece, a few slots of recent holders (validated on use), to seed candidate lists
    /// with peers holding the rarest pieces.
    recent_holders: Vec<Vec<u32>>,
    /// Per piece, the supernode's current offer.
    seed_offers: Vec<Option<SeedOffer>>,
    /// Live peers that have not finished.
    downloading: u32,
    events: VecDeque<SchedEvent>,
    /// Per slot, the call that last saw it as a candidate (deduplication without hashing).
    seen: Vec<u64>,
    call: u64,
}

/// A piece the supernode offered to one peer.
#[derive(Debug, Clone, Copy)]
struct SeedOffer {
    to: PeerId,
    until: Instant,
    /// The supernode has sent it ([`TaskScheduler::handle_seed_sent`]): it stays reserved
    /// (for `SEED_SENT_TTL`) and counts against `seed_offers` until reported.
    sent: bool,
}

/// A parent candidate during one [`TaskScheduler::parents`] call.
#[derive(Debug, Clone, Copy)]
struct Cand {
    slot: u32,
    /// Random tie-break.
    tie: u64,
    /// Pieces it holds that the asking peer lacks.
    offer: u32,
    downloading: bool,
    /// Reported upload load plus half its children per parent slot, minus a bonus for an
    /// existing parent.
    penalty: f64,
}

/// Score floor of a candidate that covers pieces no chosen parent has.
const NEW_COVERAGE: f64 = 2.0;
/// How long a piece offered by [`TaskScheduler::seed_pieces`] stays reserved for one peer
/// that has not fetched it.
pub const SEED_OFFER_TTL: Duration = Duration::from_secs(5);
/// How long a piece the supernode has sent stays reserved for its receiver, from the send,
/// until the receiver reports it. The bytes may take a while to arrive over a slow or shared
/// seed link (16 pieces of 4 MiB over 100 Mbit/s take 5.4 s each); offering the piece to
/// someone else meanwhile made the supernode send it twice (1.5x the image in the 8-host
/// netns run). A receiver that leaves frees it at once.
pub const SEED_SENT_TTL: Duration = Duration::from_secs(60);
/// An old parent is kept only while it holds at least this many pieces the peer lacks (or
/// all of them, when fewer are missing). With 1, parents holding a single useful piece
/// were kept into the end game and the slowest of 1,000 simulated peers took 1.53× the
/// bound; with 8, 1.27×.
const STICKY_MIN_PIECES: u32 = 8;
/// How long a peer's report that it cannot reach a parent holds (see
/// [`TaskScheduler::handle_unreachable`]). A parent that hangs expires from the swarm after
/// `peer_timeout` anyway; one only this peer cannot reach is tried again after this.
pub const UNREACHABLE_PARENT_TTL: Duration = Duration::from_secs(30);
/// Unreachable parents remembered per peer.
const MAX_UNREACHABLE_PER_PEER: usize = 64;
/// How many holder slots are remembered per piece.
const RECENT_HOLDERS: usize = 4;
/// Candidates sampled per parent slot.
const SAMPLE_FACTOR: usize = 8;

impl TaskScheduler {
    /// A scheduler for a task of `piece_count` pieces. `rng_seed` makes tie-breaks
    /// reproducible.
    pub fn new(piece_count: u32, config: SchedulerConfig, rng_seed: u64) -> Self {
        Self {
            piece_count,
            config,
            rng: SmallRng::seed_from_u64(rng_seed),
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            live: Vec::new(),
            expiry: BTreeSet::new(),
            banned: HashSet::new(),
            banned_hosts: HashSet::new(),
            reports: HashMap::new(),
            unserved_reports: HashMap::new(),
            holders: vec![0; piece_count as usize],
            recent_holders: vec![Vec::new(); piece_count as usize],
            seed_offers: vec![None; piece_count as usize],
            downloading: 0,
            events: VecDeque::new(),
            seen: Vec::new(),
            call: 0,
        }
    }

    /// A peer joins from `host`, or a known peer re-joins (updating its address and
    /// liveness, keeping its pieces).
    ///
    /// # Errors
    ///
    /// [`SchedError::Banned`] for a banned id or any id from a banned host, and
    /// [`SchedError::IdTaken`] for the id of a live peer of another host. Nothing changes on
    /// error.
    pub fn handle_join(
        &mut self,
        now: Instant,
        peer: PeerId,
        addr: SocketAddr,
        host: PeerHost,
    ) -> Result<(), SchedError> {
        self.check_join(peer, host)?;
        if let Some(state) = self.state_mut(peer) {
            state.addr = addr;
            let old = state.last_seen;
            state.last_seen = now;
            self.expiry.remove(&(old, peer));
            self.expiry.insert((now, peer));
            return Ok(());
        }
        let state = PeerState {
            id: peer,
            addr,
            host,
            demoted: false,
            pieces: Bitmap::new(self.piece_count),
            uploading: 0,
            done: false,
            last_seen: now,
            live_pos: self.live.len(),
            parents: Vec::new(),
            children: 0,
            unreachable: Vec::new(),
        };
        self.downloading += 1;
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(state);
                s
            }
            None => {
                self.slots.push(Some(state));
                self.seen.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(peer, slot);
        self.live.push(slot);
        self.expiry.insert((now, peer));
        debug!(%peer, %addr, %host, peers = self.live.len(), "peer joined");
        Ok(())
    }

    /// Whether `peer` may join from `host` (see [`TaskScheduler::handle_join`]), without
    /// joining it: for a caller that has more to check before the join.
    ///
    /// # Errors
    ///
    /// As [`TaskScheduler::handle_join`].
    pub fn check_join(&self, peer: PeerId, host: PeerHost) -> Result<(), SchedError> {
        if self.banned.contains(&peer) || self.banned_hosts.contains(&host) {
            debug!(%peer, %host, "banned peer tried to join");
            return Err(SchedError::Banned(peer));
        }
        match self.index.get(&peer) {
            Some(&slot) if self.state(slot).host != host => Err(SchedError::IdTaken(peer)),
            _ => Ok(()),
        }
    }

    /// A peer's periodic report: pieces it newly holds (verified), how many uploads it is
    /// serving right now, and whether it has finished (which implies holding every piece).
    /// Also refreshes the peer's liveness. Re-reporting a held piece is harmless.
    ///
    /// # Errors
    ///
    /// [`SchedError::UnknownPeer`] or [`SchedError::Banned`] for a peer not in the swarm, and
    /// [`SchedError::PieceOutOfRange`] for a bad index. Nothing changes on error.
    pub fn handle_sync(
        &mut self,
        now: Instant,
        peer: PeerId,
        new_pieces: &[u32],
        uploading: u32,
        done: bool,
    ) -> Result<(), SchedError> {
        let slot = self.check_peer(peer)?;
        if let Some(&piece) = new_pieces.iter().find(|&&p| p >= self.piece_count) {
            return Err(SchedError::PieceOutOfRange {
                piece,
                piece_count: self.piece_count,
            });
        }
        let Some(state) = self.slots[slot as usize].as_mut() else {
            return Err(SchedError::UnknownPeer(peer));
        };
        // A demoted peer's claims are not believed any more.
        let (new_pieces, done) = if state.demoted {
            (&[][..], false)
        } else {
            (new_pieces, done)
        };
        let all: Vec<u32>;
        let pieces = if done && !state.done {
            all = (0..self.piece_count).collect();
            &all[..]
        } else {
            new_pieces
        };
        for &p in pieces {
            if state.pieces.get(p) {
                continue;
            }
            state.pieces.set(p);
            self.holders[p as usize] += 1;
            // The supernode's offer of it is done with: a held piece is not offered (until
            // its holders are unreachable for someone, and then anew).
            self.seed_offers[p as usize] = None;
            let recent = &mut self.recent_holders[p as usize];
            if recent.len() < RECENT_HOLDERS {
                recent.push(slot);
            } else {
                let i = self.rng.random_range(0..recent.len());
                recent[i] = slot;
            }
        }
        state.uploading = uploading;
        let finished = done && !state.done;
        state.done |= done;
        let old = state.last_seen;
        state.last_seen = now;
        let parents = if finished {
            std::mem::take(&mut state.parents)
        } else {
            Vec::new()
        };
        self.expiry.remove(&(old, peer));
        self.expiry.insert((now, peer));
        self.downloading -= u32::from(finished);
        // A finished peer no longer downloads, so it stops counting against its parents.
        self.release_parents(&parents);
        Ok(())
    }

    /// A peer leaves the task cleanly. Unknown peers are ignored.
    pub fn handle_leave(&mut self, _now: Instant, peer: PeerId) {
        if self.remove(peer) {
            debug!(%peer, "peer left");
        }
    }

    /// `reporter` got a piece from `offender` that failed its sha256 check.
    ///
    /// The offender is banned once live reporters on `ban_after_reports` distinct hosts have
    /// accused it; then its host is banned too: every live peer of it is dropped and no id
    /// from it may join again. Reports from unknown peers, about unknown peers, or from the
    /// offender's own host are ignored, so a stranger cannot get anyone banned, one host
    /// counts once however many ids it uses, and memory stays bounded by the swarm.
    pub fn handle_bad_piece(
        &mut self,
        _now: Instant,
        reporter: PeerId,
        offender: PeerId,
        piece: u32,
    ) {
        let (Some(&r), Some(&o)) = (self.index.get(&reporter), self.index.get(&offender)) else {
            return;
        };
        let (reporter_host, offender_host) = (self.state(r).host, self.state(o).host);
        if reporter_host == offender_host {
            return;
        }
        let reporters = self.reports.entry(offender).or_default();
        reporters.insert(reporter_host);
        debug!(%reporter, %reporter_host, %offender, piece, reports = reporters.len(), "bad piece reported");
        if reporters.len() >= self.config.ban_after_reports as usize {
            self.banned_hosts.insert(offender_host);
            let same_host: Vec<PeerId> = self
                .live
                .iter()
                .map(|&slot| self.state(slot))
                .filter(|s| s.host == offender_host)
                .map(|s| s.id)
                .collect();
            for p in same_host {
                self.remove(p);
                self.banned.insert(p);
                self.events.push_back(SchedEvent::PeerBanned(p));
            }
            debug!(%offender, host = %offender_host, "peer banned");
        }
    }

    /// `reporter` asked `parent` for `piece` and was told it does not hold it (or the task),
    /// while `parent` had reported holding it: a claim it did not stand by.
    ///
    /// Once peers on `ban_after_reports` distinct hosts (other than the parent's) have said
    /// so, the parent is demoted: the pieces it claimed stop counting (the supernode offers
    /// them again), later reports and `done` claims of its own are ignored, and it is named
    /// to nobody as a parent. It is not banned: it may have lost its copy rather than lied,
    /// and it may still download. Reports about pieces the parent never reported, and
    /// reports from or about unknown peers, are ignored.
    pub fn handle_unserved(&mut self, _now: Instant, reporter: PeerId, parent: PeerId, piece: u32) {
        let (Some(&r), Some(&p)) = (self.index.get(&reporter), self.index.get(&parent)) else {
            return;
        };
        let (rs, ps) = (self.state(r), self.state(p));
        if rs.host == ps.host || ps.demoted || piece >= self.piece_count || !ps.pieces.get(piece) {
            return;
        }
        let reporter_host = rs.host;
        let reporters = self.unserved_reports.entry(parent).or_default();
        reporters.insert(reporter_host);
        debug!(%reporter, %parent, piece, reports = reporters.len(), "claimed piece not served");
        if reporters.len() >= self.config.ban_after_reports as usize {
            self.unserved_reports.remove(&parent);
            let Some(s) = self.slots[p as usize].as_mut() else {
                return;
            };
            s.demoted = true;
            let held: Vec<u32> = s.pieces.iter_ones().collect();
            s.pieces = Bitmap::new(self.piece_count);
            let was_done = std::mem::replace(&mut s.done, false);
            for i in held {
                self.holders[i as usize] -= 1;
            }
            self.downloading += u32::from(was_done);
            self.events.push_back(SchedEvent::PeerDemoted(parent));
            debug!(%parent, "peer demoted: it did not serve pieces it claimed");
        }
    }

    /// Drops every peer whose last join or sync is at least `peer_timeout` old.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(seen, peer)) = self.expiry.first() {
            if seen + self.config.peer_timeout > now {
                break;
            }
            self.remove(peer);
            self.events.push_back(SchedEvent::PeerExpired(peer));
            debug!(%peer, "peer expired");
        }
    }

    /// When the next peer expires, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expiry
            .first()
            .map(|&(seen, _)| seen + self.config.peer_timeout)
    }

    /// Next event the driver should act on (close connections, update metrics).
    pub fn poll_event(&mut self) -> Option<SchedEvent> {
        self.events.pop_front()
    }

    /// Parents for `peer`: up to `parents_per_peer` live, non-banned peers other than `peer`,
    /// each with its current bitmap. See the type docs for the ranking.
    ///
    /// # Errors
    ///
    /// [`SchedError::UnknownPeer`] or [`SchedError::Banned`] when `peer` is not in the swarm.
    pub fn parents(&mut self, now: Instant, peer: PeerId) -> Result<Vec<Parent>, SchedError> {
        let me = self.check_peer(peer)?;
        let blocked = self.blocked(me, now);
        let k = self.config.parents_per_peer;
        let old: Vec<u32> = self
            .state(me)
            .parents
            .iter()
            .filter(|&&(s, id)| self.state_opt(s).is_some_and(|st| st.id == id))
            .map(|&(s, _)| s)
            .collect();
        let my_pieces = self.state(me).pieces.clone();
        // Pieces the peer has or that the chosen parents already cover.
        let mut covered = my_pieces.clone();

        // Sticky: keep old parents that still have enough this peer lacks (all of it, near
        // the end); one about to run dry gives way to a better one.
        let keep_at_least = STICKY_MIN_PIECES
            .min(self.piece_count - my_pieces.count())
            .max(1);
        let mut chosen: Vec<u32> = Vec::with_capacity(k);
        for &p in &old {
            if chosen.len() == k {
                break;
            }
            let s = self.state(p);
            if p != me
                && !s.demoted
                && !blocked.contains(&p)
                && s.pieces.count_not_in(&my_pieces) >= keep_at_least
            {
                chosen.push(p);
                covered.union_with(&s.pieces);
            }
        }
        let sticky = chosen.len();

        let mut cands: Vec<Cand> = self
            .candidates(me, &chosen, &old)
            .into_iter()
            .filter(|c| !blocked.contains(c))
            .map(|c| self.cand(&my_pieces, c, old.contains(&c)))
            .collect();
        let missing = f64::from((self.piece_count - my_pieces.count()).max(1));
        // Greedy fill: each step takes the candidate adding the most, given what is covered.
        while chosen.len() < k {
            let Some((i, _)) = self.best_candidate(&cands, &covered, missing) else {
                break;
            };
            let c = cands.swap_remove(i).slot;
            covered.union_with(&self.state(c).pieces);
            chosen.push(c);
        }
        // Every slot kept: swap the least useful old parent for one candidate that covers pieces
        // none of the parents has, so rare pieces reach this peer without unsettling the rest.
        if sticky == k
            && let Some((i, score)) = self.best_candidate(&cands, &covered, missing)
            && score >= NEW_COVERAGE
        {
            let worst = (0..chosen.len())
                .min_by_key(|&j| self.state(chosen[j]).pieces.count_not_in(&my_pieces));
            if let Some(j) = worst {
                chosen[j] = cands[i].slot;
            }
        }

        // Keep children counts in step with the new assignment.
        for &p in old.iter().filter(|p| !chosen.contains(p)) {
            if let Some(s) = self.slots[p as usize].as_mut() {
                s.children = s.children.saturating_sub(1);
            }
        }
        for &p in chosen.iter().filter(|p| !old.contains(p)) {
            if let Some(s) = self.slots[p as usize].as_mut() {
                s.children += 1;
            }
        }
        let parents = chosen
            .iter()
            .map(|&p| {
                let s = self.state(p);
                Parent {
                    id: s.id,
                    addr: s.addr,
                    pieces: s.pieces.clone(),
                }
            })
            .collect();
        let ids: Vec<(u32, PeerId)> = chosen.iter().map(|&p| (p, self.state(p).id)).collect();
        if let Some(s) = self.slots[me as usize].as_mut() {
            s.parents = ids;
        }
        Ok(parents)
    }

    /// Pieces `peer` may ask the supernode for, out of `seed_has` (what the supernode holds).
    ///
    /// Optional but recommended: pass the result to `Picker::handle_seed_pieces` instead of
    /// the supernode's full bitmap. It offers only pieces no live peer holds yet, each to one
    /// peer at a time (for `SEED_OFFER_TTL`, 5 s, or `SEED_SENT_TTL` once sent, or until
    /// someone reports it), lowest index first, and at most `seed_offers` unsent pieces in the
    /// whole swarm, of which one peer holds at most its share: `seed_offers` split over the
    /// peers still downloading, and at least `upload_slots`. The supernode then sends each
    /// piece about once, to few peers at a time so each arrives quickly, and different peers
    /// pull different pieces into the swarm; everything else flows between peers. A lone peer
    /// gets the whole budget, so it has offers queued behind its requests instead of waiting
    /// for its next sync to learn the next one. Pieces already offered to `peer` and not yet
    /// held are offered again.
    ///
    /// `urgent` names pieces a reader on `peer` is waiting for (a ranged read of a blob still
    /// downloading): those the swarm lacks and the supernode holds are offered first, outside
    /// the slow start and the peer's share (still to one peer at a time), so a read of the
    /// blob's end need not wait for the rest. Out-of-range indexes are ignored.
    ///
    /// # Errors
    ///
    /// [`SchedError::UnknownPeer`] or [`SchedError::Banned`] when `peer` is not in the swarm.
    pub fn seed_pieces(
        &mut self,
        now: Instant,
        peer: PeerId,
        seed_has: &Bitmap,
        urgent: &[u32],
    ) -> Result<Bitmap, SchedError> {
        let me = self.check_peer(peer)?;
        // Holders this peer cannot reach do not count for it, nor do offers to them: a
        // piece offered to a peer that is gone (killed, hung) would otherwise be held for
        // it until it expires from the swarm.
        let blocked = self.blocked(me, now);
        let blocked_ids: Vec<PeerId> = blocked.iter().map(|&b| self.state(b).id).collect();
        let mine = &self.state(me).pieces;
        let mut out = Bitmap::new(self.piece_count);
        let mut open = 0u32;
        let mut my_open = 0u32;
        let mut fresh: Vec<u32> = Vec::new();
        for p in 0..self.piece_count {
            let holders = self.holders[p as usize];
            if holders > 0
                && (blocked.is_empty()
                    || holders as usize
                        > blocked
                            .iter()
                            .filter(|&&b| self.state(b).pieces.get(p))
                            .count())
            {
                continue;
            }
            match self.seed_offers[p as usize] {
                Some(o) if o.until > now && !blocked_ids.contains(&o.to) => {
                    // Sent or not, an offer counts until its receiver reports the piece: a
                    // piece handed to the connection is still on its way over the seed's
                    // uplink, and offers freed at hand-off put every offered piece on
                    // that link at once (16 netns hosts: each piece so slow that some
                    // timed out and were sent twice).
                    open += 1;
                    if o.to == peer && !mine.get(p) && seed_has.get(p) {
                        out.set(p);
                        my_open += 1;
                    }
                }
                _ if seed_has.get(p) && !mine.get(p) => fresh.push(p),
                _ => {}
            }
        }
        // Slow start: while few pieces are out, few concurrent sends get each one out sooner
        // (the first at full rate instead of a sixteenth of it); later, more are needed to
        // keep the uplink busy as the receivers' downlinks fill up.
        let held = self.piece_count - fresh.len() as u32 - open;
        let cap = self.config.seed_offers.min(1 + held);
        let share =
            (self.config.seed_offers / self.downloading.max(1)).max(self.config.upload_slots);
        let room = cap.saturating_sub(open).min(share.saturating_sub(my_open)) as usize;
        for &p in urgent {
            if let Ok(i) = fresh.binary_search(&p) {
                fresh.remove(i);
                self.seed_offers[p as usize] = Some(SeedOffer {
                    to: peer,
                    until: now + SEED_OFFER_TTL,
                    sent: false,
                });
                out.set(p);
            }
        }
        // Lowest index first: offers are exclusive, so concurrent askers get different pieces
        // anyway, and the swarm then holds the start of the blob first, which is what in-order
        // readers (dfdaemon streaming to a runtime) wait for.
        for &p in fresh.iter().take(room) {
            self.seed_offers[p as usize] = Some(SeedOffer {
                to: peer,
                until: now + SEED_OFFER_TTL,
                sent: false,
            });
            out.set(p);
        }
        Ok(out)
    }

    /// The supernode sent `piece` to `peer` (optional; call it when the piece is handed to
    /// the connection). It then stays reserved for `peer` for `SEED_SENT_TTL` while the
    /// bytes travel, instead of `SEED_OFFER_TTL`, and keeps counting against `seed_offers`
    /// until `peer` reports it. Calls that do not match a current offer are ignored.
    pub fn handle_seed_sent(&mut self, now: Instant, peer: PeerId, piece: u32) {
        if let Some(Some(o)) = self.seed_offers.get_mut(piece as usize)
            && o.to == peer
        {
            o.sent = true;
            o.until = now + SEED_SENT_TTL;
        }
    }

    /// Whether the supernode should send `piece` to `peer` when asked: not while no peer
    /// holds it and the supernode's live offer of it is to another peer. A peer whose offer
    /// expired before its request got through (behind its other transfers, or the seed's
    /// queue) would otherwise get the piece as well as the peer it was offered to next: the
    /// seed's uplink, the scarcest link, sending one piece twice (1.02-1.12x the image with
    /// 16 netns hosts). Refused, the late peer takes it from the holder soon after.
    pub fn seed_send_allowed(&self, now: Instant, peer: PeerId, piece: u32) -> bool {
        let p = piece as usize;
        if self.holders.get(p).is_none_or(|&h| h > 0) {
            return true;
        }
        match self.seed_offers.get(p).copied().flatten() {
            Some(o) => o.to == peer || o.until <= now,
            None => true,
        }
    }

    /// Live peers in the task.
    pub fn peer_count(&self) -> usize {
        self.live.len()
    }

    /// Whether `p` is in the swarm now (joined, not expired, left or banned).
    pub fn is_live(&self, p: PeerId) -> bool {
        self.index.contains_key(&p)
    }

    /// Whether `p` has been banned from this task.
    pub fn is_banned(&self, p: PeerId) -> bool {
        self.banned.contains(&p)
    }

    /// Whether peers of `host` have been banned from this task.
    pub fn is_host_banned(&self, host: PeerHost) -> bool {
        self.banned_hosts.contains(&host)
    }

    /// Number of live peers holding `piece` (0 for an out-of-range index).
    pub fn holders(&self, piece: u32) -> u32 {
        self.holders.get(piece as usize).copied().unwrap_or(0)
    }

    /// Live peers holding `piece` that the supernode may copy it from (a supernode taking a
    /// task over from a lost one fills its own copy from them before asking the origin):
    /// not demoted, at most `max`, the least busy first (fewest uploads reported, then
    /// fewest children), ties broken by the scheduler's seeded random order. Empty for an
    /// out-of-range index or a piece nobody holds.
    pub fn copy_sources(&mut self, piece: u32, max: usize) -> Vec<(PeerId, SocketAddr)> {
        let mut found: Vec<(u32, u32, u64, PeerId, SocketAddr)> = self
            .copy_holders(piece)
            .map(|s| (s.uploading, s.children, 0, s.id, s.addr))
            .collect();
        for f in &mut found {
            f.2 = self.rng.random();
        }
        found.sort_unstable_by_key(|&(up, children, tie, _, _)| (up, children, tie));
        found.truncate(max);
        found
            .into_iter()
            .map(|(_, _, _, id, addr)| (id, addr))
            .collect()
    }

    /// Whether [`TaskScheduler::copy_sources`] would find nobody for `piece`.
    pub fn copy_sources_empty(&self, piece: u32) -> bool {
        self.copy_holders(piece).next().is_none()
    }

    /// The live, not demoted peers holding `piece` (none at once when nobody holds it).
    fn copy_holders(&self, piece: u32) -> impl Iterator<Item = &PeerState> {
        // The holder count skips the scan for a piece nobody holds.
        (self.holders(piece) > 0)
            .then(|| self.live.iter().map(|&slot| self.state(slot)))
            .into_iter()
            .flatten()
            .filter(move |s| !s.demoted && s.pieces.get(piece))
    }

    /// Pieces in the task.
    pub fn piece_count(&self) -> u32 {
        self.piece_count
    }

    /// `peer` could not reach these parents (its sync's `unreachable_parents`): for
    /// [`UNREACHABLE_PARENT_TTL`] they are not named to it as parents, and pieces only they
    /// hold are offered to it by the supernode. Only `peer` is affected: one peer's word
    /// does not take a parent from anyone else. Unknown ids and `peer` itself are ignored.
    pub fn handle_unreachable(&mut self, now: Instant, peer: PeerId, parents: &[PeerId]) {
        let live: Vec<PeerId> = parents
            .iter()
            .copied()
            .filter(|p| *p != peer && self.index.contains_key(p))
            .collect();
        let Some(s) = self.state_mut(peer) else {
            return;
        };
        s.unreachable.retain(|(_, until)| *until > now);
        for p in live {
            let until = now + UNREACHABLE_PARENT_TTL;
            match s.unreachable.iter_mut().find(|(id, _)| *id == p) {
                Some(e) => e.1 = until,
                None => {
                    if s.unreachable.len() == MAX_UNREACHABLE_PER_PEER {
                        s.unreachable.remove(0);
                    }
                    s.unreachable.push((p, until));
                }
            }
        }
    }

    /// Live slots of the parents `me` reported unreachable, while the report holds.
    fn blocked(&self, me: u32, now: Instant) -> Vec<u32> {
        self.state(me)
            .unreachable
            .iter()
            .filter(|(_, until)| *until > now)
            .filter_map(|(id, _)| self.index.get(id).copied())
            .collect()
    }

    fn check_peer(&self, peer: PeerId) -> Result<u32, SchedError> {
        if self.banned.contains(&peer) {
            return Err(SchedError::Banned(peer));
        }
        self.index
            .get(&peer)
            .copied()
            .ok_or(SchedError::UnknownPeer(peer))
    }

    fn state_opt(&self, slot: u32) -> Option<&PeerState> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    /// The state in a slot known to be live (from `index`, `live` or a validated list).
    fn state(&self, slot: u32) -> &PeerState {
        self.state_opt(slot)
            .expect("slot comes from index, live or a validated parent list")
    }

    fn state_mut(&mut self, peer: PeerId) -> Option<&mut PeerState> {
        let slot = *self.index.get(&peer)?;
        self.slots[slot as usize].as_mut()
    }

    /// What a candidate is worth apart from coverage (computed once per `parents` call).
    fn cand(&mut self, me: &Bitmap, slot: u32, was_parent: bool) -> Cand {
        let tie = self.rng.random();
        let s = self.state(slot);
        let load = (f64::from(s.uploading) / f64::from(self.config.upload_slots.max(1))).min(1.0);
        let crowd = f64::from(s.children) / self.config.parents_per_peer.max(1) as f64;
        let sticky = if was_parent { 0.25 } else { 0.0 };
        Cand {
            slot,
            tie,
            offer: s.pieces.count_not_in(me),
            downloading: !s.done,
            penalty: load + 0.5 * crowd - sticky,
        }
    }

    /// The best candidate's index and score given the `covered` pieces; higher is better.
    ///
    /// A candidate's score is what it adds beyond `covered`, else what it holds that the peer
    /// lacks, else whether it is still downloading; minus its reported upload load and how
    /// many children it already has.
    fn best_candidate(
        &self,
        cands: &[Cand],
        covered: &Bitmap,
        missing: f64,
    ) -> Option<(usize, f64)> {
        let mut best: Option<(usize, f64, u64)> = None;
        for (i, c) in cands.iter().enumerate() {
            // `covered` includes the peer's own pieces, so nothing offered means nothing new.
            let new = if c.offer > 0 {
                self.state(c.slot).pieces.count_not_in(covered)
            } else {
                0
            };
            let gain = if new > 0 {
                NEW_COVERAGE + f64::from(new) / missing
            } else if c.offer > 0 {
                1.0 + f64::from(c.offer) / missing
            } else if c.downloading {
                0.5
            } else {
                0.0
            };
            let score = gain - c.penalty;
            let better = match best {
                None => true,
                Some((_, bs, bt)) => score > bs || (score == bs && c.tie < bt),
            };
            if better {
                best = Some((i, score, c.tie));
            }
        }
        best.map(|(i, s, _)| (i, s))
    }

    /// Random live peers plus holders of the rarest pieces `me` lacks and its old parents,
    /// excluding `me` and `chosen`. At most about `(SAMPLE_FACTOR + 1) * k + old` slots.
    fn candidates(&mut self, me: u32, chosen: &[u32], old: &[u32]) -> Vec<u32> {
        let k = self.config.parents_per_peer;
        let want = SAMPLE_FACTOR * k;
        self.call += 1;
        let call = self.call;
        self.seen[me as usize] = call;
        for &c in chosen {
            self.seen[c as usize] = call;
        }
        let mut out: Vec<u32> = Vec::with_capacity(want + 2 * k);
        let mut add = |seen: &mut Vec<u64>, s: u32| {
            if seen[s as usize] != call {
                seen[s as usize] = call;
                out.push(s);
            }
        };
        if self.live.len() <= want + 1 {
            for &s in &self.live {
                add(&mut self.seen, s);
            }
        } else {
            for _ in 0..want {
                let s = self.live[self.rng.random_range(0..self.live.len())];
                add(&mut self.seen, s);
            }
        }
        for &s in old {
            add(&mut self.seen, s);
        }
        for s in self.rare_holders(me, k) {
            add(&mut self.seen, s);
        }
        // A demoted peer is nobody's parent.
        out.retain(|&s| !self.state(s).demoted);
        out
    }

    /// Up to `k` live holders of the globally rarest pieces `me` lacks, so a piece held by a
    /// handful of peers (typically fresh from the seed) reaches more of the swarm than random
    /// sampling alone would allow.
    fn rare_holders(&mut self, me: u32, k: usize) -> Vec<u32> {
        let mine = &self.state(me).pieces;
        let mut rare: Vec<(u32, u32)> = (0..self.piece_count)
            .filter(|&p| !mine.get(p) && self.holders[p as usize] > 0)
            .map(|p| (self.holders[p as usize], p))
            .collect();
        if rare.len() > k {
            rare.select_nth_unstable(k);
            rare.truncate(k);
        }
        let mut out = Vec::with_capacity(k);
        for (_, p) in rare {
            let live: Vec<u32> = self.recent_holders[p as usize]
                .iter()
                .copied()
                .filter(|&h| h != me && self.state_opt(h).is_some_and(|s| s.pieces.get(p)))
                .collect();
            if !live.is_empty() {
                out.push(live[self.rng.random_range(0..live.len())]);
            }
        }
        out
    }

    /// Releases a finished or departed peer's parents: they lose one child each.
    fn release_parents(&mut self, parents: &[(u32, PeerId)]) {
        for &(slot, id) in parents {
            if let Some(s) = self.slots.get_mut(slot as usize).and_then(Option::as_mut)
                && s.id == id
            {
                s.children = s.children.saturating_sub(1);
            }
        }
    }

    /// Removes a live peer; false if it was not live.
    fn remove(&mut self, peer: PeerId) -> bool {
        let Some(slot) = self.index.remove(&peer) else {
            return false;
        };
        let Some(state) = self.slots[slot as usize].take() else {
            return false;
        };
        self.free.push(slot);
        self.downloading -= u32::from(!state.done);
        self.live.swap_remove(state.live_pos);
        if let Some(&moved) = self.live.get(state.live_pos)
            && let Some(m) = self.slots[moved as usize].as_mut()
        {
            m.live_pos = state.live_pos;
        }
        self.expiry.remove(&(state.last_seen, peer));
        for p in state.pieces.iter_ones() {
            self.holders[p as usize] -= 1;
        }
        // Its offers go back to the pool at once: a piece it took from the supernode and was
        // the only one to hold must not wait out SEED_OFFER_TTL.
        for offer in &mut self.seed_offers {
            if offer.is_some_and(|o| o.to == peer) {
                *offer = None;
            }
        }
        self.release_parents(&state.parents);
        true
    }
}
