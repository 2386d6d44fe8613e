//! Peer side: one download as a sans-IO state machine. It owns the [`Picker`] and decides
//! everything around it: when to sync with the supernode and what the sync carries, which
//! pieces may be requested (those whose digest is known), urgent pieces, bad-piece reports,
//! stalls, supernode loss and completion. dfget's download loop and the simulator drive it
//! through the same calls.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::{Bitmap, FailReason, Parent, PeerId, Picker, PickerConfig, Source};
use crate::{piece_count, piece_range};

#[cfg(test)]
mod tests;

/// Urgent pieces one sync names at most (the wire limit of `SyncRequest.urgent_pieces`).
pub const MAX_URGENT: usize = 64;

/// Unreachable parents one sync names at most (the wire limit of
/// `SyncRequest.unreachable_parents`).
pub const MAX_UNREACHABLE: usize = 64;

/// Knobs for [`PeerSession`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Sync period while downloading, from the end of one sync to the start of the next.
    /// Default 200 ms. A sync is also due `sync_interval / 4` after a new piece (so others
    /// learn of it soon), and at once after urgent pieces, a corrupt piece or the last piece. Shorter means fresher parent bitmaps at the cost of
    /// more supernode work (one parent selection per sync).
    pub sync_interval: Duration,
    /// How long the supernode may stay unreachable (every sync failing as
    /// [`SyncFailure::Unreachable`]) before the download gives up on it. Default 10 s.
    pub supernode_timeout: Duration,
    /// How long the download may go without a verified piece before it is declared stalled.
    /// Default 120 s.
    pub stall_timeout: Duration,
    /// Longest time for one piece transfer before the driver abandons it (reported as
    /// [`FailReason::Timeout`]): this for the supernode, this times the most requests the
    /// picker pipelines to one parent (`per_parent_in_flight`, `lone_parent_in_flight`) for
    /// a parent, where a pipelined request waits behind the ones sent before it. Default 10 s.
    pub piece_timeout: Duration,
    /// The piece picker's knobs.
    pub picker: PickerConfig,
    /// Learn parents' pieces from the parents: subscribe to each parent
    /// ([`PeerSession::poll_subscription`]) and feed its bitfield and announcements in
    /// ([`PeerSession::handle_parent_pieces`], [`PeerSession::handle_parent_have`]); syncs
    /// then list the known parents and the supernode answers with changes only, without
    /// bitmaps, and a new piece does not bring the next sync forward (the parents' children
    /// hear of it from them). Off: the supernode relays every parent's bitmap on every sync.
    /// Default off; dfget turns it on for its TCP transport.
    pub announcements: bool,
    /// Take each piece's digest from the piece answer (signed by the supernode, checked by
    /// the driver) instead of the supernode's syncs: syncs ask for no digests
    /// ([`SyncMsg::vouched`]), pieces are requested before their digest is known
    /// ([`PieceFetch::expected`] is `None`) and the driver reports the digest it accepted
    /// with [`PeerSession::handle_vouched_digest`]. A parent that cannot vouch
    /// ([`PeerSession::handle_unvouched`]) turns it off for the rest of the download. The
    /// driver sets it only when the supernode publishes a key. Default off.
    pub vouched_digests: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            sync_interval: Duration::from_millis(200),
            supernode_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(120),
            piece_timeout: Duration::from_secs(10),
            picker: PickerConfig::default(),
            announcements: false,
            vouched_digests: false,
        }
    }
}

/// Whether a supernode is still to be counted on: unreachable for `timeout` since the first
/// failure in a row, it is lost. The one rule for a download ([`PeerSession`] keeps one of
/// these) and for the keep-alives of a task the peer has finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupernodeWatch {
    timeout: Duration,
    unreachable_since: Option<Instant>,
}

impl SupernodeWatch {
    /// A watch that gives a supernode up after `timeout` (`SessionConfig::supernode_timeout`).
    #[must_use]
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            unreachable_since: None,
        }
    }

    /// The supernode answered.
    pub fn handle_reachable(&mut self) {
        self.unreachable_since = None;
    }

    /// The supernode could not be reached at `now`. Returns true once it has been
    /// unreachable for `timeout`: it is lost, and the caller moves on.
    pub fn handle_unreachable(&mut self, now: Instant) -> bool {
        let since = *self.unreachable_since.get_or_insert(now);
        now.saturating_duration_since(since) >= self.timeout
    }
}

/// What the next sync must carry, from [`PeerSession::poll_sync`]. The driver adds what only
/// it knows (its identity, address and current upload count) and sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncMsg {
    /// Pieces verified since the last successful sync (including those of failed syncs).
    pub new_pieces: Vec<u32>,
    /// `(offender, piece)`: pieces a parent sent that failed verification.
    pub bad_pieces: Vec<(PeerId, u32)>,
    /// Digests known so far; the supernode sends the ones from here on. `u32::MAX` on the
    /// final sync, which wants none. With `vouched`, the pieces the supernode had stored at
    /// its last answer.
    pub digests_from: u32,
    /// Digests come with the pieces ([`SessionConfig::vouched_digests`]): send none.
    pub vouched: bool,
    /// Pieces a reader is waiting for, lowest first, at most [`MAX_URGENT`].
    pub urgent: Vec<u32>,
    /// Every piece is held: the final sync.
    pub done: bool,
    /// Long poll: the sync reports nothing while the supernode may still store pieces this
    /// peer has no digest for, so the supernode may hold it this long and answer as soon as
    /// its next piece is stored (it decides whether to). `None`: answer at once.
    pub wait: Option<Duration>,
    /// With [`SessionConfig::announcements`]: the parents this peer already knows (the
    /// supernode answers with changes). `None`: send every parent's bitmap.
    pub known_parents: Option<Vec<PeerId>>,
    /// Parents this peer could not reach since the last sync (their announcements could
    /// not be subscribed to or broke, or a piece request found no connection): the
    /// supernode stops naming them to this peer for a while and offers it what only they
    /// hold.
    pub unreachable_parents: Vec<PeerId>,
    /// `(parent, piece)`: parents that said they do not hold a piece this peer asked them
    /// for ([`FailReason::Absent`]), one per parent, at most [`MAX_UNREACHABLE`]. The
    /// supernode demotes a parent that did not serve pieces it had claimed.
    pub unserved: Vec<(PeerId, u32)>,
}

/// The supernode's answer to a sync, validated by the driver (wire types converted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReply {
    /// The task failed at the supernode (its origin fetch broke), with its reason.
    pub failed: Option<String>,
    /// Index of the first digest in `digests`.
    pub digests_from: u32,
    /// sha256 of pieces `digests_from..`, in order.
    pub digests: Vec<[u8; 32]>,
    /// Pieces the supernode has stored from the first (at least `digests_from +
    /// digests.len()`, which the session assumes when this is smaller).
    pub stored: u32,
    /// Pieces the supernode offers this peer.
    pub seed_pieces: Bitmap,
    /// The peer's parents, each with the pieces it holds; with `delta`, only new parents
    /// (their bitmaps are ignored: the parents announce their pieces themselves).
    pub parents: Vec<Parent>,
    /// `parents` and `dropped_parents` are changes to the parents listed in the sync
    /// ([`SyncMsg::known_parents`]).
    pub delta: bool,
    /// With `delta`: listed parents no longer assigned.
    pub dropped_parents: Vec<PeerId>,
    /// The supernode had forgotten this peer and admitted it again: the next sync reports
    /// every piece held, not only the new ones.
    pub readmitted: bool,
}

/// Why a sync got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncFailure {
    /// No answer (connection refused, timeout, 5xx): retried every `sync_interval` until
    /// `supernode_timeout` has passed.
    #[error("supernode unreachable: {0}")]
    Unreachable(String),
    /// The supernode no longer knows the task or this peer (restarted, or the task was
    /// dropped): the swarm is lost at once.
    #[error("supernode forgot the task: {0}")]
    TaskUnknown(String),
    /// Any other refusal (a bad request, access denied): the download cannot go on. The
    /// driver keeps its own typed error to report.
    #[error("supernode refused the sync: {0}")]
    Refused(String),
}

/// A piece the driver should fetch, verify against `expected` and write at `range`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceFetch {
    /// Piece index.
    pub piece: u32,
    /// Where to fetch it from.
    pub source: Source,
    /// The parent's address for a [`Source::Peer`]; `None` for the seed.
    pub addr: Option<SocketAddr>,
    /// sha256 the bytes must have; `None` with [`SessionConfig::vouched_digests`] while it
    /// is not known: the driver takes it from the answer, checks the supernode's signature,
    /// reports it ([`PeerSession::handle_vouched_digest`]) and verifies the bytes against it
    /// (an answer without one: [`PeerSession::handle_unvouched`]).
    pub expected: Option<[u8; 32]>,
    /// The piece's bytes within the blob.
    pub range: Range<u64>,
    /// How long the transfer may take before the driver abandons it (see
    /// [`SessionConfig::piece_timeout`]).
    pub timeout: Duration,
}

/// A change to the parents this peer listens to, from [`PeerSession::poll_subscription`]
/// (with [`SessionConfig::announcements`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// Ask the parent for its bitfield and then its announcements: feed them to
    /// [`PeerSession::handle_parent_pieces`] and [`PeerSession::handle_parent_have`]; if the
    /// subscription cannot be made or breaks, call [`PeerSession::handle_parent_lost`].
    Subscribe {
        /// The parent.
        parent: PeerId,
        /// Where it serves.
        addr: SocketAddr,
    },
    /// Stop listening to the parent.
    Unsubscribe {
        /// The parent.
        parent: PeerId,
    },
}

/// Something the driver must act on, from [`PeerSession::poll_event`]. Every variant but
/// `Complete` ends the session: it then starts no request and, apart from a final sync
/// after `Complete`, no sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// Every piece is held and verified. The session still has one sync to send (the final
    /// report, `done` set); send it best effort.
    Complete,
    /// No piece was verified for `stall_timeout`.
    Stalled(Duration),
    /// The supernode is gone (unreachable for `supernode_timeout`, or it forgot
    /// the task); the origin may still work.
    SupernodeLost(SyncFailure),
    /// The supernode refused a sync for good.
    SyncRefused(String),
    /// The task failed at the supernode, with its reason.
    TaskFailed(String),
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Downloading,
    /// Every piece held; the final sync is still to be sent.
    Finishing,
    /// Nothing more to do (completed and reported, or failed).
    Closed,
}

/// A sync on its way: what it carried, restored if it fails.
#[derive(Debug)]
struct InFlight {
    new_pieces: Vec<u32>,
    bad_pieces: Vec<(PeerId, u32)>,
    unreachable: Vec<PeerId>,
    unserved: Vec<(PeerId, u32)>,
    done: bool,
    /// When it was sent, if it was a long poll (its wait counts as the sync period).
    long_poll: Option<Instant>,
}

/// One download on a peer: the [`Picker`] plus everything the download loop decides around
/// it.
///
/// ```text
///  supernode ──reply / failure──▶ handle_sync_reply, handle_sync_failed ┐
///  piece jobs ─bytes in─────────▶ handle_piece_received                 │
///  piece jobs ─verified+written─▶ handle_piece_done                     │  PeerSession
///  piece jobs ─failed───────────▶ handle_piece_failed                   │
///  readers ────byte ranges──────▶ handle_urgent                         │
///  timer ───────────────────────▶ handle_timeout ◀── poll_timeout ──────┘
///                                 poll_sync ──▶ send a sync
///                                 poll_request ──▶ start a piece job
///                                 poll_event ──▶ complete / stalled / lost / failed
/// ```
///
/// Call order: create it when the task is registered, then loop. After *every* input drain
/// the outputs: `poll_event` (stop on anything but `Complete`), `poll_sync` (send what it
/// returns; at most one sync is in flight, and the next one comes only after
/// `handle_sync_reply` or `handle_sync_failed` for this one), `poll_request` until `None`
/// (start each fetch; report each exactly once with `handle_piece_done` or
/// `handle_piece_failed`, after `handle_piece_received` if the bytes arrive before they are
/// verified), and finally re-arm one timer from `poll_timeout`; when it fires call
/// `handle_timeout`. A sync and piece jobs run concurrently: inputs may arrive in any order.
/// After `Complete`, send the final sync `poll_sync` returns; the session is then done.
///
/// Decisions: the first sync is due at once. A sync with nothing to report, while digests
/// are still missing, is a long poll ([`SyncMsg::wait`]); a reply offering a piece the
/// supernode had not offered before makes the next sync due at once. Once a sync has ended
/// (reply or failure) the next is due `sync_interval` later (a long poll's wait counts), sooner once a new piece is verified (`sync_interval
/// / 4` after the piece or the end of the last sync, whichever is later), and at once for
/// urgent pieces, a corrupt piece or the last piece. A failed sync's reports go into the
/// next one. Only pieces whose digest is known are requested:
/// digests arrive in order from `digests_from`, and the parents' and the supernode's
/// bitmaps are masked to them; with vouched digests every piece may be requested and its
/// digest comes with it. A parent that sends a corrupt piece is reported at the next
/// sync and banned by the picker for the rest of the download.
#[derive(Debug)]
pub struct PeerSession {
    config: SessionConfig,
    content_length: u64,
    piece_size: u32,
    picker: Picker,
    phase: Phase,
    /// Each piece's digest once known (from syncs, or vouched with a piece).
    digests: Vec<Option<[u8; 32]>>,
    /// Digests known from the first, contiguously (what the syncs have sent so far).
    digests_prefix: u32,
    /// Pieces the supernode had stored at its last answer.
    stored: u32,
    /// Digests come with the pieces (the config's wish, until a parent cannot vouch).
    vouched: bool,
    addrs: HashMap<PeerId, SocketAddr>,
    /// Reports for the next sync.
    new_pieces: Vec<u32>,
    bad_pieces: Vec<(PeerId, u32)>,
    /// Parents found unreachable, for the next sync.
    unreachable: Vec<PeerId>,
    /// Parents that said they lack a piece they were asked for, for the next sync.
    unserved: Vec<(PeerId, u32)>,
    sync: Option<InFlight>,
    /// When the next sync is due (meaningless while one is in flight: it is set again when
    /// that one ends).
    next_sync: Instant,
    /// Something must be told at once (urgent pieces, a corrupt piece, the last piece), even
    /// right after a sync ended.
    sync_now: bool,
    /// Whether the supernode is lost (syncs unanswered for `supernode_timeout`).
    supernode: SupernodeWatch,
    last_progress: Instant,
    events: VecDeque<SessionEvent>,
    liars: HashSet<PeerId>,
    corrupt_pieces: u64,
    from_seed: u64,
    from_peers: u64,
    /// Pieces held from the start, contiguously.
    prefix: u32,
    /// Every piece the supernode has offered this peer so far.
    offered: Bitmap,
    /// With announcements: the parents, each with what it announced (unmasked; `None` until
    /// its bitfield arrives), in the order they were assigned.
    views: Vec<(PeerId, Option<Bitmap>)>,
    subscriptions: VecDeque<Subscription>,
    /// The session closed with [`SessionEvent::SupernodeLost`] (and may be rejoined).
    supernode_lost: bool,
}

impl PeerSession {
    /// A session for a blob of `content_length` bytes cut into `piece_size`-byte pieces,
    /// holding nothing yet. `rng_seed` seeds the picker's tie-breaks.
    pub fn new(
        now: Instant,
        content_length: u64,
        piece_size: u32,
        config: SessionConfig,
        rng_seed: u64,
    ) -> Self {
        let pieces = piece_count(content_length, piece_size);
        let vouched = config.vouched_digests;
        let supernode = SupernodeWatch::new(config.supernode_timeout);
        let mut session = Self {
            picker: Picker::new(pieces, config.picker.clone(), rng_seed),
            config,
            content_length,
            piece_size,
            phase: Phase::Downloading,
            digests: vec![None; pieces as usize],
            digests_prefix: 0,
            stored: 0,
            vouched,
            addrs: HashMap::new(),
            new_pieces: Vec::new(),
            bad_pieces: Vec::new(),
            unreachable: Vec::new(),
            unserved: Vec::new(),
            sync: None,
            next_sync: now,
            sync_now: false,
            supernode,
            last_progress: now,
            events: VecDeque::new(),
            liars: HashSet::new(),
            corrupt_pieces: 0,
            from_seed: 0,
            from_peers: 0,
            prefix: 0,
            offered: Bitmap::new(pieces),
            views: Vec::new(),
            subscriptions: VecDeque::new(),
            supernode_lost: false,
        };
        if pieces == 0 {
            session.complete(now);
        }
        session
    }

    /// The supernode answered the sync in flight. A reply with no sync in flight is ignored.
    pub fn handle_sync_reply(&mut self, now: Instant, reply: SyncReply) {
        let Some(sent) = self.sync.take() else {
            debug!("sync reply with no sync in flight");
            return;
        };
        self.supernode.handle_reachable();
        self.schedule_after_sync(now, &sent);
        if sent.done {
            // The final report went through; nothing more to learn.
            self.phase = Phase::Closed;
            return;
        }
        if self.phase != Phase::Downloading {
            return;
        }
        if let Some(reason) = reply.failed {
            self.close(SessionEvent::TaskFailed(reason));
            return;
        }
        if reply.readmitted {
            self.new_pieces = self.picker.have().iter_ones().collect();
        }
        let known_before = self.digests_prefix;
        if reply.digests_from == self.digests_prefix {
            let sent = reply.digests.len();
            for (slot, d) in self.digests[self.digests_prefix as usize..]
                .iter_mut()
                .zip(reply.digests)
            {
                *slot = Some(d);
            }
            self.stored = self
                .stored
                .max(reply.digests_from.saturating_add(sent as u32));
            self.advance_digests_prefix();
        }
        self.stored = self.stored.max(reply.stored).min(self.picker.have().len());
        let known = self.known();
        // Only pieces whose digest is known can be verified, so only those are requested.
        let mask = |mut bits: Bitmap| {
            bits.clear_from(known);
            bits
        };
        let seed = mask(reply.seed_pieces);
        let mut fresh_offer = false;
        for p in seed.iter_ones() {
            if !self.offered.get(p) && !self.picker.have().get(p) {
                self.offered.set(p);
                fresh_offer = true;
            }
        }
        if fresh_offer {
            // The supernode feeds this peer pieces nobody else has: ask for (and wait
            // there for) the next ones at once rather than a period later.
            self.sync_at_once(now);
        }
        self.picker.handle_seed_pieces(seed);
        if reply.delta {
            let mut changed = self.digests_prefix != known_before;
            for id in reply.dropped_parents {
                if let Some(i) = self.views.iter().position(|(p, _)| *p == id) {
                    self.views.remove(i);
                    self.addrs.remove(&id);
                    self.subscriptions
                        .push_back(Subscription::Unsubscribe { parent: id });
                    changed = true;
                }
            }
            for p in reply.parents {
                if self.liars.contains(&p.id) || self.views.iter().any(|(id, _)| *id == p.id) {
                    continue;
                }
                self.addrs.insert(p.id, p.addr);
                self.views.push((p.id, None));
                self.subscriptions.push_back(Subscription::Subscribe {
                    parent: p.id,
                    addr: p.addr,
                });
                changed = true;
            }
            if changed {
                self.push_views(now);
            }
        } else {
            // Every parent with its bitmap, relayed by the supernode (announcements off, or a
            // supernode that does not send changes): nothing to listen to.
            for (id, _) in self.views.drain(..) {
                self.subscriptions
                    .push_back(Subscription::Unsubscribe { parent: id });
            }
            self.addrs.clear();
            let mut views = Vec::with_capacity(reply.parents.len());
            for p in reply.parents {
                self.addrs.insert(p.id, p.addr);
                views.push((p.id, mask(p.pieces)));
            }
            self.picker.handle_parents(now, views);
        }
        if sent.long_poll.is_none()
            && !fresh_offer
            && self.picker.in_flight() == 0
            && self.stored < self.picker.have().len()
        {
            // A report answered with nothing new while the supernode is still fetching:
            // this peer has fetched all it was offered and waits for the next stored
            // piece. Wait for it in a long poll now (the supernode answers when it stores
            // one) rather than idle a whole period: a lone peer that had caught up with
            // the supernode's fetch sat 200 ms here.
            self.next_sync = now;
        }
        self.check_stall(now);
    }

    /// A subscribed parent's bitfield: every piece it holds. Ignored for a parent not
    /// assigned (any more) or a bitmap of the wrong length.
    pub fn handle_parent_pieces(&mut self, now: Instant, parent: PeerId, pieces: Bitmap) {
        if pieces.len() != self.picker.have().len() {
            warn!(%parent, got = pieces.len(), "parent bitfield has wrong length");
            return;
        }
        let Some((_, view)) = self.views.iter_mut().find(|(id, _)| *id == parent) else {
            return;
        };
        *view = Some(pieces);
        self.push_views(now);
    }

    /// A subscribed parent announced a piece it now holds. Ignored before its bitfield, for
    /// a parent not assigned, or an index out of range.
    pub fn handle_parent_have(&mut self, _now: Instant, parent: PeerId, piece: u32) {
        if piece >= self.picker.have().len() {
            return;
        }
        let Some((_, Some(bits))) = self.views.iter_mut().find(|(id, _)| *id == parent) else {
            return;
        };
        bits.set(piece);
        if piece < self.known() {
            self.picker.handle_parent_have(parent, piece);
        }
    }

    /// The subscription to `parent` could not be made or broke: it is forgotten, so the
    /// next sync does not list it and the supernode names it again if it is still the
    /// right parent.
    pub fn handle_parent_lost(&mut self, now: Instant, parent: PeerId) {
        self.forget_parent(now, parent);
    }

    /// No connection to `parent` could be made or kept for its announcements (refused, no
    /// handshake within the connect timeout): as [`PeerSession::handle_parent_lost`], and
    /// the next sync reports it unreachable. A parent that refused the subscription (it
    /// did not know the task yet, say) is only lost: reported, a parent that is merely a
    /// moment behind would have its pieces seeded to this peer twice.
    pub fn handle_parent_unreachable(&mut self, now: Instant, parent: PeerId) {
        if self.forget_parent(now, parent) && self.phase == Phase::Downloading {
            self.note_unreachable(parent);
        }
    }

    /// Drops `parent` from the parents listened to; whether it was one.
    fn forget_parent(&mut self, now: Instant, parent: PeerId) -> bool {
        let Some(i) = self.views.iter().position(|(id, _)| *id == parent) else {
            return false;
        };
        self.views.remove(i);
        self.addrs.remove(&parent);
        self.push_views(now);
        true
    }

    /// Reports at the next sync that `parent` said it lacks `piece` (once per parent, and at
    /// most [`MAX_UNREACHABLE`] parents).
    fn note_unserved(&mut self, parent: PeerId, piece: u32) {
        if !self.unserved.iter().any(|(p, _)| *p == parent) && self.unserved.len() < MAX_UNREACHABLE
        {
            self.unserved.push((parent, piece));
        }
    }

    /// Reports `parent` as unreachable at the next sync (once, and at most
    /// `MAX_KNOWN_PARENTS`-many per sync).
    fn note_unreachable(&mut self, parent: PeerId) {
        if !self.unreachable.contains(&parent) && self.unreachable.len() < MAX_UNREACHABLE {
            self.unreachable.push(parent);
        }
    }

    /// The next change to the parents this peer listens to (with announcements).
    pub fn poll_subscription(&mut self) -> Option<Subscription> {
        self.subscriptions.pop_front()
    }

    /// Hands the picker every parent whose bitfield arrived, masked to known digests.
    fn push_views(&mut self, now: Instant) {
        let known = self.known();
        let views = self
            .views
            .iter()
            .filter_map(|(id, bits)| {
                let mut bits = bits.clone()?;
                bits.clear_from(known);
                Some((*id, bits))
            })
            .collect();
        self.picker.handle_parents(now, views);
    }

    /// The sync in flight got no reply. Its reports go into the next sync, due
    /// `sync_interval` after this one was sent.
    pub fn handle_sync_failed(&mut self, now: Instant, failure: SyncFailure) {
        let Some(sent) = self.sync.take() else {
            debug!("sync failure with no sync in flight");
            return;
        };
        if sent.done {
            // Best effort: the download is complete either way.
            self.phase = Phase::Closed;
            return;
        }
        // Retry a period later, not sooner: the reports it carried will not make an
        // unreachable supernode answer faster.
        self.next_sync = if self.sync_now {
            now
        } else {
            now + self.config.sync_interval
        };
        let mut new_pieces = sent.new_pieces;
        new_pieces.append(&mut self.new_pieces);
        self.new_pieces = new_pieces;
        let mut bad = sent.bad_pieces;
        bad.append(&mut self.bad_pieces);
        self.bad_pieces = bad;
        for p in sent.unreachable {
            self.note_unreachable(p);
        }
        for (parent, piece) in sent.unserved {
            self.note_unserved(parent, piece);
        }
        if self.phase != Phase::Downloading {
            return;
        }
        match failure {
            SyncFailure::Unreachable(_) => {
                if self.supernode.handle_unreachable(now) {
                    self.close(SessionEvent::SupernodeLost(failure));
                }
            }
            SyncFailure::TaskUnknown(_) => self.close(SessionEvent::SupernodeLost(failure)),
            SyncFailure::Refused(reason) => self.close(SessionEvent::SyncRefused(reason)),
        }
    }

    /// All the bytes of a requested piece have arrived and are being verified: its source
    /// may take the next request. Optional; a stray report is ignored.
    pub fn handle_piece_received(&mut self, now: Instant, piece: u32, source: Source) {
        self.picker.handle_piece_received(piece, source);
        self.check_stall(now);
    }

    /// A requested piece of `bytes` bytes was verified and written.
    pub fn handle_piece_done(&mut self, now: Instant, piece: u32, source: Source, bytes: u64) {
        if self.phase != Phase::Downloading {
            return;
        }
        let fresh = !self.picker.have().get(piece);
        self.picker.handle_piece_done(now, piece, source);
        if !fresh {
            return;
        }
        self.new_pieces.push(piece);
        match source {
            Source::Seed => self.from_seed += bytes,
            Source::Peer(_) => self.from_peers += bytes,
        }
        self.last_progress = now;
        while self.picker.have().get(self.prefix) {
            self.prefix += 1;
        }
        if self.picker.is_complete() {
            self.complete(now);
        } else if self.picker.in_flight() == 0 {
            // Nothing left to fetch from what this peer knows: ask for more (and report what
            // it has) now rather than idle until the next period. A lone peer of a cold blob
            // otherwise sat ~50 ms between its last offered piece and the next offers.
            self.sync_at_once(now);
        } else if source == Source::Seed {
            // The supernode's offer of it counts against its budget of pieces in flight
            // until this peer reports it: report at once, so the next piece can leave.
            self.sync_at_once(now);
        } else if !self.config.announcements {
            // Report new pieces soon so others learn of them through the supernode.
            self.next_sync = self.next_sync.min(now + self.config.sync_interval / 4);
        }
    }

    /// A requested piece failed. A corrupt piece from a parent (or a protocol violation,
    /// which the driver reports as `Corrupt`) is reported to the supernode at once and the
    /// parent is not asked again in this download; any other failure backs the source off.
    pub fn handle_piece_failed(
        &mut self,
        now: Instant,
        piece: u32,
        source: Source,
        reason: FailReason,
    ) {
        if let (FailReason::Corrupt, Source::Peer(offender)) = (reason, source) {
            warn!(peer = %offender, piece, "piece failed verification; avoiding that peer");
            self.corrupt_pieces += 1;
            self.liars.insert(offender);
            self.bad_pieces.push((offender, piece));
            self.sync_at_once(now);
        }
        if let (FailReason::Absent, Source::Peer(parent)) = (reason, source) {
            self.note_unserved(parent, piece);
        }
        if let (FailReason::Io, Source::Peer(parent)) = (reason, source)
            && self.addrs.contains_key(&parent)
        {
            // No connection to it (refused, or no handshake within the connect timeout).
            self.note_unreachable(parent);
        }
        self.picker.handle_piece_failed(now, piece, source, reason);
        self.check_stall(now);
    }

    /// Readers wait for these byte ranges: their pieces (at most [`MAX_URGENT`]) are
    /// requested before any other, and a sync naming them is due at once so the supernode
    /// offers them first. Empty ranges are ignored.
    pub fn handle_urgent(&mut self, now: Instant, ranges: impl IntoIterator<Item = Range<u64>>) {
        let size = u64::from(self.piece_size.max(1));
        let pieces: Vec<u32> = ranges
            .into_iter()
            .filter(|r| r.start < r.end)
            .flat_map(|r| (r.start / size)..r.end.div_ceil(size))
            .filter_map(|p| u32::try_from(p).ok())
            .take(MAX_URGENT)
            .collect();
        if pieces.is_empty() || self.phase != Phase::Downloading {
            return;
        }
        self.picker.add_urgent(pieces);
        self.sync_at_once(now);
    }

    /// The driver registered this download with another supernode after
    /// [`SessionEvent::SupernodeLost`] (the next in the blob's placement order took the task
    /// over): the session goes on from the pieces it holds. The new supernode knows nothing
    /// of this peer, so the first sync, due at once, reports every held piece; what the old
    /// supernode had stored or offered counts for nothing; a sync still out to the old one
    /// is forgotten (drop it; a late answer is ignored). Parents already known stay usable
    /// until the new supernode's answers replace them, and the wait for the takeover does
    /// not count towards a stall. Digests already known stay: the same blob cut into the
    /// same pieces has the same digests (the driver must rejoin only a task of the same
    /// length and piece size). Does nothing to a session that completed, stalled or failed
    /// otherwise.
    pub fn rejoin(&mut self, now: Instant) {
        let open = match self.phase {
            Phase::Downloading => true,
            Phase::Closed => self.supernode_lost,
            Phase::Finishing => false,
        };
        if !open {
            return;
        }
        self.supernode_lost = false;
        self.events.clear();
        self.phase = Phase::Downloading;
        self.sync = None;
        self.new_pieces = self.picker.have().iter_ones().collect();
        self.bad_pieces.clear();
        self.unreachable.clear();
        self.unserved.clear();
        self.stored = 0;
        self.offered = Bitmap::new(self.picker.have().len());
        self.picker.handle_new_seed();
        self.supernode.handle_reachable();
        self.last_progress = now;
        self.sync_at_once(now);
        if self.picker.is_complete() {
            self.complete(now);
        }
    }

    /// The timer from [`PeerSession::poll_timeout`] fired (calling it early is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.check_stall(now);
    }

    /// The sync to send now, if one is due and none is in flight.
    pub fn poll_sync(&mut self, now: Instant) -> Option<SyncMsg> {
        if self.sync.is_some() || self.phase == Phase::Closed || now < self.next_sync {
            return None;
        }
        let done = self.phase == Phase::Finishing;
        let urgent = if done {
            Vec::new()
        } else {
            self.picker.urgent(MAX_URGENT)
        };
        let wait = (!done
            && self.new_pieces.is_empty()
            && self.bad_pieces.is_empty()
            && self.unreachable.is_empty()
            && self.unserved.is_empty()
            && urgent.is_empty()
            && self.stored < self.picker.have().len())
        .then_some(self.config.sync_interval);
        let msg = SyncMsg {
            new_pieces: std::mem::take(&mut self.new_pieces),
            bad_pieces: std::mem::take(&mut self.bad_pieces),
            digests_from: if done {
                u32::MAX
            } else if self.vouched {
                self.stored
            } else {
                self.digests_prefix
            },
            vouched: self.vouched,
            urgent,
            done,
            wait,
            known_parents: self
                .config
                .announcements
                .then(|| self.views.iter().map(|(id, _)| *id).collect()),
            unreachable_parents: if done {
                self.unreachable.clear();
                Vec::new()
            } else {
                std::mem::take(&mut self.unreachable)
            },
            // Told even on the final sync: the parent's claim matters to the others.
            unserved: std::mem::take(&mut self.unserved),
        };
        self.sync = Some(InFlight {
            new_pieces: msg.new_pieces.clone(),
            bad_pieces: msg.bad_pieces.clone(),
            unreachable: msg.unreachable_parents.clone(),
            unserved: msg.unserved.clone(),
            done,
            long_poll: wait.map(|_| now),
        });
        self.sync_now = false;
        Some(msg)
    }

    /// The next piece to fetch, if one can start now.
    pub fn poll_request(&mut self, now: Instant) -> Option<PieceFetch> {
        if self.phase != Phase::Downloading {
            return None;
        }
        loop {
            let req = self.picker.poll_request(now)?;
            // The seed needs no address; a parent must have one.
            let addr = match req.source {
                Source::Seed => Some(None),
                Source::Peer(id) => self.addrs.get(&id).map(|&a| Some(a)),
            };
            // Bitmaps are masked to known digests (unless they come with the pieces); never
            // fetch what cannot be verified.
            let expected = self.digests.get(req.piece as usize).copied().flatten();
            let (true, Some(addr)) = (self.vouched || expected.is_some(), addr) else {
                self.picker.handle_piece_failed(
                    now,
                    req.piece,
                    req.source,
                    FailReason::Unavailable,
                );
                continue;
            };
            let timeout = match req.source {
                Source::Seed => self.config.piece_timeout,
                Source::Peer(_) => {
                    let picker = &self.config.picker;
                    let queued = picker
                        .per_parent_in_flight
                        .max(picker.lone_parent_in_flight)
                        .max(1);
                    self.config
                        .piece_timeout
                        .saturating_mul(u32::try_from(queued).unwrap_or(u32::MAX))
                }
            };
            return Some(PieceFetch {
                piece: req.piece,
                source: req.source,
                addr,
                expected,
                range: piece_range(self.content_length, self.piece_size, req.piece),
                timeout,
            });
        }
    }

    /// When [`PeerSession::handle_timeout`] or a `poll_*` call next has something to do:
    /// the next sync (none while one is in flight), a backed-off source's return, or the
    /// stall deadline. `None` once the session has nothing left to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let sync = (self.sync.is_none() && self.phase != Phase::Closed).then_some(self.next_sync);
        if self.phase != Phase::Downloading {
            return sync;
        }
        let stall = self.last_progress + self.config.stall_timeout;
        [sync, self.picker.poll_timeout(), Some(stall)]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Pieces held.
    pub fn have(&self) -> &Bitmap {
        self.picker.have()
    }

    /// Every piece is held and verified.
    pub fn is_complete(&self) -> bool {
        self.picker.is_complete()
    }

    /// Bytes of the blob held from its start, contiguously (what an in-order reader or a
    /// running whole-file hash may consume).
    pub fn verified_prefix(&self) -> u64 {
        match self.prefix.checked_sub(1) {
            None => 0,
            Some(last) => piece_range(self.content_length, self.piece_size, last).end,
        }
    }

    /// The sha256 of each piece from the first whose digest is known so far, in order (all
    /// of them once the session is complete; every held piece matched its digest).
    pub fn digests(&self) -> Vec<[u8; 32]> {
        self.digests.iter().map_while(|d| *d).collect()
    }

    /// The driver accepted `digest` for `piece` from a piece answer, signed by the
    /// supernode: it is the piece's digest from now on. Out-of-range pieces are ignored.
    pub fn handle_vouched_digest(&mut self, piece: u32, digest: [u8; 32]) {
        if let Some(slot) = self.digests.get_mut(piece as usize) {
            *slot = Some(digest);
            self.advance_digests_prefix();
        }
    }

    /// A piece answer came without a vouched digest for a piece whose digest is unknown (a
    /// parent that got its copy before digests were vouched): the source holds the piece, so
    /// it is only backed off briefly (as `Busy`, not dropped from its bitmap: a lone parent
    /// that holds everything would otherwise leave nothing to fetch, and the download
    /// stalled), and from now on the digests come from the syncs.
    pub fn handle_unvouched(&mut self, now: Instant, piece: u32, source: Source) {
        if self.vouched {
            debug!(
                ?source,
                piece, "a source cannot vouch for digests; asking the supernode for them"
            );
            self.vouched = false;
            self.sync_at_once(now);
            self.push_views(now);
        }
        self.picker
            .handle_piece_failed(now, piece, source, FailReason::Busy);
        self.check_stall(now);
    }

    /// Pieces that may be requested: those below this index (every piece when digests come
    /// with the pieces).
    fn known(&self) -> u32 {
        if self.vouched {
            self.picker.have().len()
        } else {
            self.digests_prefix
        }
    }

    fn advance_digests_prefix(&mut self) {
        while self
            .digests
            .get(self.digests_prefix as usize)
            .is_some_and(Option::is_some)
        {
            self.digests_prefix += 1;
        }
    }

    /// Parents that sent a corrupt piece during this download.
    pub fn liars(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.liars.iter().copied()
    }

    /// Pieces that failed verification.
    pub fn corrupt_pieces(&self) -> u64 {
        self.corrupt_pieces
    }

    /// Verified bytes that came from the supernode.
    pub fn bytes_from_seed(&self) -> u64 {
        self.from_seed
    }

    /// Verified bytes that came from other peers.
    pub fn bytes_from_peers(&self) -> u64 {
        self.from_peers
    }

    /// Requests started and not yet reported.
    pub fn in_flight(&self) -> usize {
        self.picker.in_flight()
    }

    fn complete(&mut self, now: Instant) {
        self.phase = Phase::Finishing;
        self.unsubscribe_all();
        // Report completion at once: it makes this peer a full parent.
        self.sync_at_once(now);
        self.events.push_back(SessionEvent::Complete);
    }

    /// The cadence once `sent` got its reply at `now`: a period later (for a long poll, a
    /// period after it was sent: its wait was the period), or a quarter period if pieces
    /// wait to be reported, or at once if something urgent came up meanwhile. Pieces
    /// verified while the sync was out count from its end, not from when they arrived, so a
    /// sync is not followed within a quarter period by another. (In the 1,000-peer flash
    /// crowd, counting from the pieces made the slowest peer 1-2 % slower.)
    fn schedule_after_sync(&mut self, now: Instant, sent: &InFlight) {
        let interval = self.config.sync_interval;
        let period = match sent.long_poll {
            Some(at) => (at + interval).max(now),
            None => now + interval,
        };
        self.next_sync = if self.sync_now {
            now
        } else if !self.new_pieces.is_empty() && !self.config.announcements {
            period.min(now + interval / 4)
        } else {
            period
        };
    }

    /// Nothing more to learn from parents.
    fn unsubscribe_all(&mut self) {
        for (id, _) in self.views.drain(..) {
            self.subscriptions
                .push_back(Subscription::Unsubscribe { parent: id });
        }
    }

    fn sync_at_once(&mut self, now: Instant) {
        self.sync_now = true;
        self.next_sync = now;
    }

    fn check_stall(&mut self, now: Instant) {
        if self.phase == Phase::Downloading && now >= self.last_progress + self.config.stall_timeout
        {
            self.close(SessionEvent::Stalled(self.config.stall_timeout));
        }
    }

    fn close(&mut self, event: SessionEvent) {
        debug!(?event, "download session ends");
        self.phase = Phase::Closed;
        self.supernode_lost = matches!(event, SessionEvent::SupernodeLost(_));
        self.unsubscribe_all();
        self.events.push_back(event);
    }
}
