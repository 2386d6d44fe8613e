//! A deterministic discrete-event simulation of one task's swarm: a supernode and N peers over
//! a flow-level network, driving the real [`TaskScheduler`] and one real [`PeerSession`] per
//! peer through the same public calls as the daemons (`supernode`'s sync handler and
//! `dfget`'s download loop). Nothing here decides what to fetch, whom to ask or when to
//! sync; it only moves bytes, messages and time.
//!
//! ```text
//!  peer i (PeerSession)                   supernode                       network
//!  ────────────────────                   ─────────                       ───────
//!  poll_sync ──(l_i + l_s)──▶ TaskScheduler::handle_sync_request (+ digests)
//!       ◀─(l_i + l_s)── parents + bitmaps, seed offer ──▶ handle_sync_reply
//!  poll_request ──(l_i + l_j)──▶ source j: slot free? ──▶ flow j→i (shared links)
//!       ◀──────────── Busy / absent (l_i + l_j)          flow ends ──(l_i + l_j)──▶ piece at i
//!                                                  handle_piece_received + _done / _failed
//! ```
//!
//! # Model
//!
//! - **Links.** Every node has an upload and a download capacity and a one-way latency to the
//!   network core; a message from a to b takes `l_a + l_b`. Capacities are shared between the
//!   flows on a link (see `net`): at least the fair share `min(up / n_up, down / n_down)`, with
//!   spare capacity handed to flows whose other end has room. No uplink or downlink ever
//!   carries more than its capacity, the supernode's included.
//! - **Pieces.** A piece is served only once it has been fully received (store and forward).
//!   A request reaches its source after the latency; a source answers "absent" when it does
//!   not hold the piece. A peer uploads at most 4 pieces at once (its upload slots, as
//!   `dfget`); a request beyond them waits in the peer's upload queue, first come first
//!   served, and starts when a slot frees; only when [`SimConfig::upload_queue`] requests
//!   already wait is it answered `Busy` (dfget's `PieceServer::prepare`). The supernode's
//!   sends are not slot-bound (see [`SimConfig::seed_slots`]; at its limit it answers `Busy`,
//!   with no queue, as the supernode does). The last byte reaches the requester one latency
//!   after the flow ends.
//! - **Peers** are [`PeerSession`]s, driven as `dfget`'s loop drives one: after every input
//!   the driver drains `poll_event`, `poll_sync`, `poll_request` and re-arms one timer from
//!   `poll_timeout`. The session decides the cadence (every `sync_interval`, 200 ms, sooner
//!   after a new piece, at once after a corrupt or the last piece). As in dfget, the sync
//!   runs beside the transfers; [`SimConfig::sync_waits`] = true makes the loop wait for
//!   each sync instead (dfget before its loop drove the session). After
//!   the last piece a peer sends its final `done` sync and keeps serving, with a keep-alive
//!   sync every 5 s (dfdaemon's, outside the session).
//! - **Supernode.** It holds the whole blob from the start (preheated, or its origin is faster
//!   than its uplink). Its CPU is free: scheduler calls take no virtual time. Verification and
//!   disk writes take no time either.
//! - **Faults.** A liar downloads honestly but every piece it serves fails verification. A
//!   leaver leaves cleanly (its transfers break at once and the supernode is told).
//!
//! Completion times are measured from each peer's own join and compared with the Kumar–Ross
//! bound ([`kumar_ross`]) of the configured links.

use std::time::Duration;

#[cfg(doc)]
use crate::{PeerSession, TaskScheduler};
use crate::{PickerConfig, SchedulerConfig, piece_size_for};

mod driver;
mod net;
#[cfg(test)]
mod tests;

/// One node's connection to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Upload capacity, bytes per second.
    pub up_bps: u64,
    /// Download capacity, bytes per second.
    pub down_bps: u64,
    /// One-way latency to the network core; a message between two nodes takes the sum of
    /// theirs.
    pub latency: Duration,
}

impl Link {
    /// `mbit` Mbit/s both ways with `latency`.
    pub fn symmetric_mbit(mbit: u64, latency: Duration) -> Self {
        Self {
            up_bps: mbit * 125_000,
            down_bps: mbit * 125_000,
            latency,
        }
    }
}

/// When peers join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrivals {
    /// Each peer joins at a uniformly random time in `0..within` (a flash crowd).
    Together {
        /// Window of the joins.
        within: Duration,
    },
    /// Each peer joins at a uniformly random time in `0..over`.
    Spread {
        /// Window of the joins.
        over: Duration,
    },
}

/// How a child fetches pieces from a parent (dfget's `transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerTransport {
    /// One TCP connection per parent, requests pipelined and answered in order (dfget's
    /// default): one piece is sent at a time, and the parent reads at most one request
    /// ahead of it, which holds a slot or waits in the upload queue.
    Tcp,
    /// A QUIC stream per request: each waits for a slot on its own, and a child's pieces
    /// from one parent travel side by side.
    Quic,
}

/// Parameters of one simulation run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Number of peers (the supernode is extra).
    pub peers: usize,
    /// Blob size in bytes.
    pub file_size: u64,
    /// Piece size in bytes (the daemons use [`piece_size_for`]).
    pub piece_size: u32,
    /// Peer links as `(weight, link)`: each peer draws one with probability proportional to
    /// its weight. One entry gives every peer the same link.
    pub links: Vec<(u32, Link)>,
    /// The supernode's link (only its upload matters).
    pub seed_link: Link,
    /// When peers join.
    pub arrivals: Arrivals,
    /// Honest peers that leave part-way, each at a random time in 25–75 % of the bound.
    pub leavers: usize,
    /// Peers whose uploads always fail verification.
    pub liars: usize,
    /// Seed for every random choice in the run.
    pub seed: u64,
    /// The supernode's scheduler settings.
    pub scheduler: SchedulerConfig,
    /// Every peer's picker settings.
    pub picker: PickerConfig,
    /// Concurrent uploads of the supernode; beyond them it answers `Busy`. Default unlimited:
    /// the supernode's `cdn.upload_slots` permit covers reading a piece from disk and is
    /// released before the body is sent, so its sends are bounded only by the scheduler's
    /// offers and the peers' `seed_in_flight`.
    pub seed_slots: u32,
    /// Piece requests that may wait, first come first served, for one of a peer's upload
    /// slots before further ones are answered `Busy` (dfget's `upload_queue`, default 32,
    /// across all the peer's children). 0: `Busy` as soon as every slot is taken, as dfget
    /// did before its TCP transport.
    pub upload_queue: u32,
    /// How children fetch from parents. Default [`PeerTransport::Tcp`], as dfget.
    pub transport: PeerTransport,
    /// Control messages cost bytes on the links they cross, as flows like the pieces': a
    /// sync request 100 bytes + 4 per reported piece, a reply 100 + 32 per digest + one
    /// bitmap and 40 bytes per parent (+ the seed offer's bitmap), a piece request 60 and an
    /// answer's header 10. False: they only take the latency.
    pub control_traffic: bool,
    /// Peers' sync period (`dfget`'s `sync_interval`, default 200 ms).
    pub sync_interval: Duration,
    /// Sync period of a finished peer (dfdaemon's `p2p.keepalive_interval`, default 5 s).
    pub keepalive: Duration,
    /// The peer's loop waits for each sync, as dfget's did before it drove
    /// [`PeerSession`] from one `select!`: no request starts, and pieces that finish
    /// meanwhile are handled after the reply. Default false: the sync runs beside the
    /// transfers, as in dfget now. In the 1,000-peer runs, false made the heterogeneous
    /// crowd's slowest peer about 5 % faster (its 20 ms peers stop pausing 80 ms per sync)
    /// and the staggered crowd's slowest about 2 % slower.
    pub sync_waits: bool,
    /// Parents announce their pieces to the children subscribed to them
    /// ([`crate::SessionConfig::announcements`]): a subscription costs 40 bytes, the
    /// parent's bitfield 10 bytes plus the bitmap, each announced piece 9 bytes per
    /// subscribed child; syncs list the known parents (9 bytes each) and replies name new
    /// parents (40 bytes each, no bitmap) and dropped ones (9 bytes each). Default on, as
    /// dfget's TCP transport.
    pub announcements: bool,
    /// Piece digests come with the pieces, signed by the supernode
    /// ([`crate::SessionConfig::vouched_digests`]), instead of in the supernode's sync
    /// answers: 96 bytes (digest and signature) more on every piece answer, the seed's and
    /// the parents'. Default on, as dfget when the supernode publishes its key.
    pub vouched_digests: bool,
    /// What-if (issue 12 part 4): a peer relays a piece while it is still receiving it.
    /// It announces the piece to its children when the piece's first byte starts to arrive
    /// (with [`SimConfig::announcements`]; its bitfield lists such pieces too), serves
    /// requests for it as the bytes come in, and withholds the last 64 KiB block
    /// ([`CUT_THROUGH_BLOCK`]) until it has verified the whole piece itself, so a child
    /// never completes a piece its parent did not verify. When the parent's own transfer
    /// fails or its bytes fail verification, its children's transfers of the piece fail as
    /// [`crate::FailReason::Withdrawn`] (not their parent's fault: no demotion, no back-off),
    /// as does a request from a peer upstream of the relay for that piece. The
    /// network model keeps a relayed flow at its fair share; when it ends before the
    /// parent has the piece, its last block arrives a block's transfer time after the
    /// parent completes. Default off: the daemons relay only verified pieces.
    pub cut_through: bool,
}

/// The block a cut-through relay withholds until it has verified the piece ([`SimConfig::cut_through`]).
pub const CUT_THROUGH_BLOCK: u64 = 64 << 10;

impl SimConfig {
    /// A flash crowd: `peers` peers join within 100 ms to fetch `file_size` bytes cut as the
    /// daemons cut it; every link (the supernode's too) is 1 Gbit/s both ways with 1 ms
    /// latency.
    pub fn flash_crowd(peers: usize, file_size: u64) -> Self {
        let link = Link::symmetric_mbit(1000, Duration::from_millis(1));
        Self {
            peers,
            file_size,
            piece_size: piece_size_for(file_size),
            links: vec![(1, link)],
            seed_link: link,
            arrivals: Arrivals::Together {
                within: Duration::from_millis(100),
            },
            leavers: 0,
            liars: 0,
            seed: 1,
            scheduler: SchedulerConfig::default(),
            picker: PickerConfig::default(),
            seed_slots: u32::MAX,
            upload_queue: 32,
            transport: PeerTransport::Tcp,
            control_traffic: false,
            sync_interval: Duration::from_millis(200),
            keepalive: Duration::from_secs(5),
            sync_waits: false,
            vouched_digests: true,
            announcements: true,
            cut_through: false,
        }
    }

    /// Kumar–Ross bound of this configuration, taking every peer at the slowest download
    /// and the mean upload of the link mix.
    fn expected_bound(&self) -> Duration {
        let total: u64 = self.links.iter().map(|(w, _)| u64::from(*w)).sum();
        let mean_up = self
            .links
            .iter()
            .map(|(w, l)| f64::from(*w) * l.up_bps as f64)
            .sum::<f64>()
            / total.max(1) as f64;
        let d_min = self
            .links
            .iter()
            .map(|(_, l)| l.down_bps)
            .min()
            .unwrap_or(1);
        kumar_ross(
            self.file_size,
            self.seed_link.up_bps,
            d_min,
            self.peers as f64 * mean_up,
            self.peers,
        )
    }
}

impl Default for SimConfig {
    /// `flash_crowd(50, 64 MiB)`.
    fn default() -> Self {
        Self::flash_crowd(50, 64 << 20)
    }
}

/// The scenarios of the `swarm-sim` benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// Every peer joins within 100 ms; equal 1 Gbit/s links.
    FlashCrowd,
    /// Peers join uniformly over one bound's time.
    Staggered,
    /// A flash crowd in which 10 % of the peers leave part-way.
    Churn,
    /// A flash crowd over mixed links: 60 % 1 Gbit/s (1 ms), 30 % 10 Gbit/s (0.5 ms), 10 %
    /// 100 Mbit/s up / 250 Mbit/s down (20 ms).
    Heterogeneous,
    /// A flash crowd with one peer that serves corrupt pieces.
    Liar,
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Self; 5] = [
        Self::FlashCrowd,
        Self::Staggered,
        Self::Churn,
        Self::Heterogeneous,
        Self::Liar,
    ];

    /// Short name, as on the `swarm-sim` command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::FlashCrowd => "flash",
            Self::Staggered => "staggered",
            Self::Churn => "churn",
            Self::Heterogeneous => "hetero",
            Self::Liar => "liar",
        }
    }

    /// The scenario called `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// This scenario with `peers` peers and a blob of `file_size` bytes.
    pub fn config(self, peers: usize, file_size: u64) -> SimConfig {
        let mut c = SimConfig::flash_crowd(peers, file_size);
        match self {
            Self::FlashCrowd => {}
            Self::Staggered => {
                c.arrivals = Arrivals::Spread {
                    over: c.expected_bound(),
                };
            }
            Self::Churn => c.leavers = peers / 10,
            Self::Heterogeneous => {
                c.links = vec![
                    (6, Link::symmetric_mbit(1000, Duration::from_millis(1))),
                    (3, Link::symmetric_mbit(10_000, Duration::from_micros(500))),
                    (
                        1,
                        Link {
                            up_bps: 100 * 125_000,
                            down_bps: 250 * 125_000,
                            latency: Duration::from_millis(20),
                        },
                    ),
                ];
            }
            Self::Liar => c.liars = 1.min(peers),
        }
        c
    }
}

/// What happened to one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerOutcome {
    /// When it joined, from the start of the run.
    pub joined: Duration,
    /// Time from joining to holding every piece; `None` if it never finished.
    pub done: Option<Duration>,
    /// Its own physical floor: `max(F / u_s, F / d_i)`. No schedule gets it every byte in
    /// less time after the first peer joined (a later joiner may take less from its own
    /// join, catching up on pieces relayed while it was not there).
    pub floor: Duration,
    /// The peer served corrupt pieces.
    pub liar: bool,
    /// The peer left part-way through.
    pub left: bool,
}

/// Result of [`run`].
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// One entry per peer, in peer order.
    pub peers: Vec<PeerOutcome>,
    /// Blob size in bytes.
    pub file_size: u64,
    /// Bytes the supernode uploaded.
    pub seed_bytes_sent: u64,
    /// Bytes peers uploaded (including corrupt ones).
    pub peer_bytes_sent: u64,
    /// Kumar–Ross bound of the peers' actual links
    /// (`max(F / u_s, F / d_min, N * F / (u_s + sum u_i))`).
    pub bound: Duration,
    /// Syncs the scheduler handled (each one `handle_sync`, then `parents` and
    /// `seed_pieces` for a peer still downloading).
    pub syncs: u64,
    /// Requests the pickers issued (`poll_request` returning one).
    pub requests: u64,
    /// Piece requests refused because every upload slot of the source was taken.
    pub busy: u64,
    /// Seed requests refused because the piece, held by no peer yet, was offered to another
    /// peer ([`crate::TaskScheduler::seed_send_allowed`]).
    pub seed_offer_conflicts: u64,
    /// Piece requests that waited in a peer's upload queue.
    pub queued: u64,
    /// Requests a cut-through relay refused because the requester was upstream of it for
    /// that piece ([`SimConfig::cut_through`]).
    pub cut_through_cycles: u64,
    /// Bytes of control messages (syncs, piece requests, answer headers), with
    /// [`SimConfig::control_traffic`].
    pub control_bytes: u64,
    /// Of those, bytes the supernode sent (sync replies).
    pub seed_control_sent: u64,
    /// Of those, bytes the supernode received (sync requests).
    pub seed_control_received: u64,
    /// Of the supernode's sync replies and piece answers, bytes of piece digests (with their
    /// signatures, when vouched).
    pub seed_digest_bytes: u64,
    /// Of the supernode's sync replies, bytes naming parents (with their bitmaps, if sent).
    pub seed_parent_bytes: u64,
    /// Events processed.
    pub events: u64,
    /// Virtual time when the run stopped.
    pub elapsed: Duration,
    /// Peers the scheduler banned.
    pub banned: usize,
    /// When the supernode had sent every piece at least once; `None` if it never did.
    pub injected: Option<Duration>,
    /// Bytes delivered to peers (from anyone) in each 100 ms of the run: divided by the
    /// peers' total download capacity it shows how busy the swarm was over time.
    pub delivered: Vec<u64>,
}

impl SimReport {
    /// Completion times of honest peers that stayed and finished, sorted.
    pub fn completion_times(&self) -> Vec<Duration> {
        let mut t: Vec<Duration> = self
            .peers
            .iter()
            .filter(|p| !p.liar && !p.left)
            .filter_map(|p| p.done)
            .collect();
        t.sort();
        t
    }

    /// True when every honest peer that stayed finished.
    pub fn all_done(&self) -> bool {
        self.peers
            .iter()
            .all(|p| p.liar || p.left || p.done.is_some())
    }

    /// Median completion time divided by [`SimReport::bound`].
    pub fn p50(&self) -> f64 {
        self.ratio(0.5)
    }

    /// 99th-percentile completion time divided by the bound.
    pub fn p99(&self) -> f64 {
        self.ratio(0.99)
    }

    /// Slowest completion time divided by the bound.
    pub fn max(&self) -> f64 {
        self.ratio(1.0)
    }

    /// Bytes the supernode sent divided by the blob size.
    pub fn origin_ratio(&self) -> f64 {
        self.seed_bytes_sent as f64 / self.file_size.max(1) as f64
    }

    /// When the last honest, staying peer finished, from the start of the run.
    pub fn last_finish(&self) -> Option<Duration> {
        self.peers
            .iter()
            .filter(|p| !p.liar && !p.left)
            .filter_map(|p| p.done.map(|d| p.joined + d))
            .max()
    }

    /// The `q` quantile (0.0–1.0) of completion times divided by the bound.
    pub fn ratio(&self, q: f64) -> f64 {
        let t = self.completion_times();
        if t.is_empty() || self.bound.is_zero() {
            return f64::NAN;
        }
        let i = ((t.len() as f64 * q).ceil() as usize).clamp(1, t.len()) - 1;
        t[i].as_secs_f64() / self.bound.as_secs_f64()
    }
}

/// Kumar–Ross lower bound on the time to give `peers` peers `file_size` bytes:
/// `max(F / u_s, F / d_min, N * F / (u_s + sum_up))`.
pub fn kumar_ross(file_size: u64, seed_up: u64, d_min: u64, sum_up: f64, peers: usize) -> Duration {
    let f = file_size as f64;
    let us = seed_up.max(1) as f64;
    let t = (f / us)
        .max(f / d_min.max(1) as f64)
        .max(peers as f64 * f / (us + sum_up));
    Duration::from_secs_f64(t)
}

/// Runs the simulation until every honest, staying peer is done, or until a virtual-time cap
/// of `50 * bound + 60 s`.
pub fn run(config: &SimConfig) -> SimReport {
    driver::Sim::new(config).run()
}
