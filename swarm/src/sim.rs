//! A small deterministic discrete-event simulation of one task's swarm.
//!
//! It drives one [`TaskScheduler`] and one [`Picker`] per peer through the same public API the
//! daemons use, over a virtual clock, so tests (and the benchmark in `benches/`) can check that
//! every peer finishes, that the supernode sends each piece about once, and how close the
//! distribution time gets to the theoretical minimum.
//!
//! Model:
//! - All peers join within the first 100 ms (a flash crowd). The supernode holds the whole
//!   blob from the start.
//! - A peer syncs with the scheduler (reports new pieces, fetches parents and the pieces
//!   [`TaskScheduler::seed_pieces`] lets it take from the supernode) at most every
//!   100 ms after it gains a piece, and at least every second as a keep-alive.
//! - Every node serves at most `upload_slots` uploads at once, each at a fixed `up / slots`
//!   (not a fair share of whatever is idle), with a wait queue of the same length; beyond that
//!   it answers `Busy`. The supernode gets enough slots to saturate its uplink and a deep
//!   queue (1024). A transfer takes `latency + len / min(up share, down / max_in_flight)`.
//! - Liars download honestly but every piece they serve fails verification. Churned peers leave
//!   at half the theoretical bound; their transfers fail with `Unavailable`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::{
    Bitmap, FailReason, PeerId, Picker, PickerConfig, SchedError, SchedEvent, SchedulerConfig,
    Source, TaskScheduler, piece_count, piece_range,
};

#[cfg(test)]
mod tests;

/// The supernode queues rather than refusing: its pieces are offered to one peer each.
const SEED_QUEUE: usize = 1024;
const JOIN_SPREAD: Duration = Duration::from_millis(100);
const SYNC_GAP: Duration = Duration::from_millis(100);
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Parameters of one simulation run. Rates are in bytes per second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Number of peers (the supernode is extra).
    pub peers: usize,
    /// Blob size in bytes.
    pub file_size: u64,
    /// Piece size in bytes.
    pub piece_size: u32,
    /// Each peer's upload capacity, bytes/s.
    pub peer_up_bps: u64,
    /// Each peer's download capacity, bytes/s.
    pub peer_down_bps: u64,
    /// The supernode's upload capacity, bytes/s.
    pub seed_up_bps: u64,
    /// One-way request latency added to every transfer.
    pub latency: Duration,
    /// Seed for every random choice in the run.
    pub seed: u64,
    /// Peers whose uploads always fail verification.
    pub liars: usize,
    /// Honest peers that leave at half the theoretical bound.
    pub churn_leave: usize,
}

impl Default for SimConfig {
    /// 50 peers, 64 MiB in 1 MiB pieces, 100 Mbit/s up and 1 Gbit/s down per peer, a
    /// 1 Gbit/s supernode, 1 ms latency.
    fn default() -> Self {
        Self {
            peers: 50,
            file_size: 64 << 20,
            piece_size: 1 << 20,
            peer_up_bps: 12_500_000,
            peer_down_bps: 125_000_000,
            seed_up_bps: 125_000_000,
            latency: Duration::from_millis(1),
            seed: 1,
            liars: 0,
            churn_leave: 0,
        }
    }
}

/// What happened to one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerOutcome {
    /// Time from joining to holding every piece; `None` if it never finished.
    pub done: Option<Duration>,
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
    /// Bytes the supernode uploaded.
    pub seed_bytes_sent: u64,
    /// Bytes peers uploaded (including corrupt ones).
    pub peer_bytes_sent: u64,
    /// Kumar–Ross minimum distribution time
    /// `max(F / u_s, F / d_min, N * F / (u_s + sum u_i))`.
    pub bound: Duration,
    /// `poll_request` results plus `parents` calls: a proxy for scheduling CPU cost.
    pub decisions: u64,
    /// Virtual time when the run stopped.
    pub elapsed: Duration,
    /// Peers the scheduler banned.
    pub banned: usize,
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

    fn ratio(&self, q: f64) -> f64 {
        let t = self.completion_times();
        if t.is_empty() || self.bound.is_zero() {
            return f64::NAN;
        }
        let i = ((t.len() as f64 * q).ceil() as usize).clamp(1, t.len()) - 1;
        t[i].as_secs_f64() / self.bound.as_secs_f64()
    }
}

/// Kumar–Ross lower bound on the time to give `config.peers` peers the whole file.
pub fn bound(config: &SimConfig) -> Duration {
    let f = config.file_size as f64;
    let n = config.peers as f64;
    let us = config.seed_up_bps.max(1) as f64;
    let d = config.peer_down_bps.max(1) as f64;
    let total_up = us + n * config.peer_up_bps as f64;
    Duration::from_secs_f64((f / us).max(f / d).max(n * f / total_up))
}

/// Runs the simulation to completion (every honest, staying peer done) or until a generous
/// virtual-time cap of `50 * bound + 60 s`.
pub fn run(config: &SimConfig) -> SimReport {
    Sim::new(config).run()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Seed,
    Peer(usize),
}

#[derive(Debug)]
enum Ev {
    Join(usize),
    Sync(usize),
    Wake(usize),
    Leave(usize),
    /// A request reaches its source.
    Request {
        to: Node,
        from: usize,
        piece: u32,
    },
    /// An upload finished; the bytes reach the requester.
    Delivered {
        by: Node,
        to: usize,
        piece: u32,
    },
    /// The requester learns its request failed.
    Failed {
        by: Node,
        to: usize,
        piece: u32,
        reason: FailReason,
    },
}

struct Queued {
    at: Duration,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    // Reversed: BinaryHeap is a max-heap and we want the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Uploader {
    slots: u32,
    active: u32,
    /// Bytes per second per upload.
    rate: f64,
    queue: VecDeque<(usize, u32)>,
    queue_limit: usize,
}

struct PeerNode {
    picker: Picker,
    up: Uploader,
    joined: Duration,
    liar: bool,
    /// Scheduled to leave; not counted in `Sim::remaining`.
    leaver: bool,
    left: bool,
    done: Option<Duration>,
    new_pieces: Vec<u32>,
    last_sync: Duration,
    sync_at: Option<Duration>,
    wake_at: Option<Duration>,
}

struct Sim {
    config: SimConfig,
    epoch: Instant,
    now: Duration,
    seq: u64,
    events: BinaryHeap<Queued>,
    sched: TaskScheduler,
    seed: Uploader,
    /// The supernode holds the whole blob from the start.
    seed_has: Bitmap,
    nodes: Vec<PeerNode>,
    down_share: f64,
    remaining: usize,
    seed_bytes: u64,
    peer_bytes: u64,
    decisions: u64,
    banned: usize,
}

fn peer_id(i: usize) -> PeerId {
    PeerId(i as u64 + 1)
}

fn source(n: Node) -> Source {
    match n {
        Node::Seed => Source::Seed,
        Node::Peer(i) => Source::Peer(peer_id(i)),
    }
}

impl Sim {
    fn new(config: &SimConfig) -> Self {
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let sched_cfg = SchedulerConfig::default();
        let pick_cfg = PickerConfig::default();
        let piece_count = piece_count(config.file_size, config.piece_size);
        let down_share = config.peer_down_bps.max(1) as f64 / pick_cfg.max_in_flight as f64;
        let seed_slots = (config.seed_up_bps as f64 / down_share)
            .ceil()
            .clamp(4.0, 64.0) as u32;
        let slots = sched_cfg.upload_slots;

        let mut order: Vec<usize> = (0..config.peers).collect();
        order.shuffle(&mut rng);
        let liars = &order[..config.liars.min(order.len())];
        let leavers = &order[liars.len()..(liars.len() + config.churn_leave).min(order.len())];

        let mut sim = Self {
            epoch: Instant::now(),
            now: Duration::ZERO,
            seq: 0,
            events: BinaryHeap::new(),
            sched: TaskScheduler::new(piece_count, sched_cfg, config.seed),
            seed: Uploader {
                slots: seed_slots,
                active: 0,
                rate: config.seed_up_bps as f64 / f64::from(seed_slots),
                queue: VecDeque::new(),
                queue_limit: SEED_QUEUE,
            },
            seed_has: Bitmap::full(piece_count),
            nodes: Vec::with_capacity(config.peers),
            down_share,
            remaining: config.peers - liars.len() - leavers.len(),
            seed_bytes: 0,
            peer_bytes: 0,
            decisions: 0,
            banned: 0,
            config: config.clone(),
        };
        for i in 0..config.peers {
            let joined = JOIN_SPREAD.mul_f64(rng.random::<f64>());
            let picker = Picker::new(piece_count, pick_cfg.clone(), rng.random());
            sim.nodes.push(PeerNode {
                picker,
                up: Uploader {
                    slots,
                    active: 0,
                    rate: config.peer_up_bps as f64 / f64::from(slots),
                    queue: VecDeque::new(),
                    queue_limit: slots as usize,
                },
                joined,
                liar: liars.contains(&i),
                leaver: leavers.contains(&i),
                left: false,
                done: None,
                new_pieces: Vec::new(),
                last_sync: Duration::ZERO,
                sync_at: None,
                wake_at: None,
            });
            sim.push(joined, Ev::Join(i));
        }
        let leave_at = bound(config) / 2;
        for &i in leavers {
            sim.push(leave_at, Ev::Leave(i));
        }
        sim
    }

    fn run(mut self) -> SimReport {
        let cap = bound(&self.config) * 50 + Duration::from_secs(60);
        while self.remaining > 0 {
            let Some(q) = self.events.pop() else { break };
            if q.at > cap {
                break;
            }
            self.now = q.at;
            self.step(q.ev);
        }
        SimReport {
            peers: self
                .nodes
                .iter()
                .map(|n| PeerOutcome {
                    done: n.done,
                    liar: n.liar,
                    left: n.left,
                })
                .collect(),
            seed_bytes_sent: self.seed_bytes,
            peer_bytes_sent: self.peer_bytes,
            bound: bound(&self.config),
            decisions: self.decisions,
            elapsed: self.now,
            banned: self.banned,
        }
    }

    fn instant(&self) -> Instant {
        self.epoch + self.now
    }

    fn push(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.events.push(Queued {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Join(i) => {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 10_000 + i as u16));
                self.sched.handle_join(self.instant(), peer_id(i), addr);
                self.schedule_sync(i, self.now);
            }
            Ev::Sync(i) => {
                if self.nodes[i].sync_at == Some(self.now) && !self.nodes[i].left {
                    self.nodes[i].sync_at = None;
                    self.sync(i);
                }
            }
            Ev::Wake(i) => {
                if self.nodes[i].wake_at == Some(self.now) {
                    self.nodes[i].wake_at = None;
                    self.pump(i);
                }
            }
            Ev::Leave(i) => self.leave(i),
            Ev::Request { to, from, piece } => self.request(to, from, piece),
            Ev::Delivered { by, to, piece } => self.delivered(by, to, piece),
            Ev::Failed {
                by,
                to,
                piece,
                reason,
            } => {
                if !self.nodes[to].left {
                    let now = self.instant();
                    self.nodes[to]
                        .picker
                        .handle_piece_failed(now, piece, source(by), reason);
                    self.pump(to);
                }
            }
        }
    }

    fn schedule_sync(&mut self, i: usize, at: Duration) {
        let node = &mut self.nodes[i];
        if node.sync_at.is_some_and(|t| t <= at) {
            return;
        }
        node.sync_at = Some(at);
        self.push(at, Ev::Sync(i));
    }

    fn sync(&mut self, i: usize) {
        let now = self.instant();
        let id = peer_id(i);
        let node = &mut self.nodes[i];
        let complete = node.picker.is_complete();
        let mut res = self
            .sched
            .handle_sync(now, id, &node.new_pieces, node.up.active, complete);
        if res == Err(SchedError::UnknownPeer(id)) {
            // Expired (e.g. a long stall); rejoin and report everything held.
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 10_000 + i as u16));
            self.sched.handle_join(now, id, addr);
            let all: Vec<u32> = node.picker.have().iter_ones().collect();
            res = self
                .sched
                .handle_sync(now, id, &all, node.up.active, complete);
        }
        if res.is_ok() {
            node.new_pieces.clear();
            if !complete {
                self.decisions += 1;
                if let Ok(parents) = self.sched.parents(now, id) {
                    let list = parents.into_iter().map(|p| (p.id, p.pieces)).collect();
                    self.nodes[i].picker.handle_parents(now, list);
                }
                if let Ok(offer) = self.sched.seed_pieces(now, id, &self.seed_has) {
                    self.nodes[i].picker.handle_seed_pieces(offer);
                }
            }
        }
        self.sched.handle_timeout(now);
        while let Some(ev) = self.sched.poll_event() {
            if let SchedEvent::PeerBanned(_) = ev {
                self.banned += 1;
            }
        }
        self.nodes[i].last_sync = self.now;
        self.schedule_sync(i, self.now + HEARTBEAT);
        self.pump(i);
    }

    fn pump(&mut self, i: usize) {
        if self.nodes[i].left {
            return;
        }
        let now = self.instant();
        while let Some(req) = self.nodes[i].picker.poll_request(now) {
            self.decisions += 1;
            let to = match req.source {
                Source::Seed => Node::Seed,
                Source::Peer(PeerId(id)) => Node::Peer(id as usize - 1),
            };
            self.push(
                self.now + self.config.latency,
                Ev::Request {
                    to,
                    from: i,
                    piece: req.piece,
                },
            );
        }
        if let Some(t) = self.nodes[i].picker.poll_timeout() {
            let at = t.saturating_duration_since(self.epoch).max(self.now);
            if self.nodes[i].wake_at.is_none_or(|w| at < w) {
                self.nodes[i].wake_at = Some(at);
                self.push(at, Ev::Wake(i));
            }
        }
    }

    fn uploader(&mut self, n: Node) -> &mut Uploader {
        match n {
            Node::Seed => &mut self.seed,
            Node::Peer(i) => &mut self.nodes[i].up,
        }
    }

    fn request(&mut self, to: Node, from: usize, piece: u32) {
        let unavailable = match to {
            Node::Seed => false,
            Node::Peer(j) => self.nodes[j].left || !self.nodes[j].picker.have().get(piece),
        };
        let reason = if unavailable {
            Some(FailReason::Unavailable)
        } else {
            let up = self.uploader(to);
            if up.active < up.slots {
                self.start_upload(to, from, piece);
                None
            } else if up.queue.len() < up.queue_limit {
                up.queue.push_back((from, piece));
                None
            } else {
                Some(FailReason::Busy)
            }
        };
        if let Some(reason) = reason {
            self.push(
                self.now + self.config.latency,
                Ev::Failed {
                    by: to,
                    to: from,
                    piece,
                    reason,
                },
            );
        }
    }

    fn start_upload(&mut self, by: Node, to: usize, piece: u32) {
        let range = piece_range(self.config.file_size, self.config.piece_size, piece);
        let down_share = self.down_share;
        let up = self.uploader(by);
        up.active += 1;
        let rate = up.rate.min(down_share).max(1.0);
        let secs = (range.end - range.start) as f64 / rate;
        self.push(
            self.now + Duration::from_secs_f64(secs),
            Ev::Delivered { by, to, piece },
        );
    }

    fn delivered(&mut self, by: Node, to: usize, piece: u32) {
        let now = self.instant();
        if let Node::Peer(j) = by
            && self.nodes[j].left
        {
            let src = source(by);
            if !self.nodes[to].left {
                let picker = &mut self.nodes[to].picker;
                picker.handle_piece_failed(now, piece, src, FailReason::Unavailable);
                self.pump(to);
            }
            return;
        }
        let range = piece_range(self.config.file_size, self.config.piece_size, piece);
        let bytes = range.end - range.start;
        match by {
            Node::Seed => self.seed_bytes += bytes,
            Node::Peer(_) => self.peer_bytes += bytes,
        }
        let up = self.uploader(by);
        up.active -= 1;
        if let Some((next_to, next_piece)) = up.queue.pop_front() {
            self.start_upload(by, next_to, next_piece);
        }
        if self.nodes[to].left {
            return;
        }
        let corrupt = matches!(by, Node::Peer(j) if self.nodes[j].liar);
        if corrupt {
            let src = source(by);
            self.nodes[to]
                .picker
                .handle_piece_failed(now, piece, src, FailReason::Corrupt);
            if let Source::Peer(offender) = src {
                self.sched
                    .handle_bad_piece(now, peer_id(to), offender, piece);
            }
        } else {
            self.piece_done(to, piece, source(by));
        }
        self.pump(to);
    }

    fn piece_done(&mut self, i: usize, piece: u32, from: Source) {
        let now = self.instant();
        let node = &mut self.nodes[i];
        if node.picker.have().get(piece) {
            return;
        }
        node.picker.handle_piece_done(now, piece, from);
        node.new_pieces.push(piece);
        if node.picker.is_complete() && node.done.is_none() {
            node.done = Some(self.now - node.joined);
            if !node.liar && !node.leaver {
                self.remaining -= 1;
            }
        }
        let at = (node.last_sync + SYNC_GAP).max(self.now);
        self.schedule_sync(i, at);
    }

    fn leave(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.left {
            return;
        }
        node.left = true;
        let queued: Vec<(usize, u32)> = node.up.queue.drain(..).collect();
        self.sched.handle_leave(self.instant(), peer_id(i));
        for (to, piece) in queued {
            self.push(
                self.now + self.config.latency,
                Ev::Failed {
                    by: Node::Peer(i),
                    to,
                    piece,
                    reason: FailReason::Unavailable,
                },
            );
        }
    }
}
