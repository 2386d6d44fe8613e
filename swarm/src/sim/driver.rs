//! The event loop: peers that behave like `dfget`'s download loop, a supernode that handles
//! syncs like `supernode`'s API, and the flow network between them.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::net::{FlowId, Net, NodeIdx, Reschedule, Wake};
use super::{Arrivals, Link, PeerOutcome, SimConfig, SimReport, kumar_ross};
use crate::{
    Bitmap, FailReason, PeerId, Picker, SchedError, SchedEvent, Source, TaskScheduler, piece_count,
    piece_range,
};

/// Network node of the supernode; peer `i` is node `i + 1`.
const SEED_NODE: NodeIdx = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Seed,
    Peer(u32),
}

#[derive(Debug)]
enum Ev {
    Join(u32),
    /// Peer timer: its next sync or the end of a picker backoff.
    Tick(u32),
    /// A sync request reaches the supernode.
    SyncArrive(u32),
    /// The supernode's reply reaches the peer.
    SyncReply(u32),
    Leave(u32),
    /// A piece request reaches its source.
    Request {
        to: Node,
        from: u32,
        piece: u32,
    },
    /// The source sent a piece's last byte.
    FlowDone(FlowId),
    /// The requester has the whole piece.
    Deliver {
        by: Node,
        to: u32,
        piece: u32,
    },
    /// The requester learns its request failed.
    Fail {
        by: Node,
        to: u32,
        piece: u32,
        reason: FailReason,
    },
}

struct Queued {
    at: u64,
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
    // Reversed: BinaryHeap is a max-heap and the earliest event comes first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// What a finished piece request came to, as the dfget loop sees it.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Done(u32, Source),
    Failed(u32, Source, FailReason),
}

/// A sync on its way: what the peer sent, then what the supernode answered.
#[derive(Debug, Default)]
struct SyncMsg {
    new_pieces: Vec<u32>,
    bad: Vec<(PeerId, u32)>,
    uploading: u32,
    done: bool,
    parents: Option<Vec<(PeerId, Bitmap)>>,
    seed_offer: Option<Bitmap>,
}

struct Peer {
    picker: Picker,
    link: Link,
    joined: u64,
    liar: bool,
    leaver: bool,
    left: bool,
    done: Option<u64>,
    new_pieces: Vec<u32>,
    bad: Vec<(PeerId, u32)>,
    next_sync: u64,
    sync: Option<Box<SyncMsg>>,
    /// Outcomes that arrived while the loop waited for a sync reply.
    deferred: Vec<Outcome>,
    tick_at: Option<u64>,
    uploads: u32,
}

struct Transfer {
    by: Node,
    to: u32,
    piece: u32,
}

pub(super) struct Sim {
    config: SimConfig,
    epoch: Instant,
    now: u64,
    seq: u64,
    events: BinaryHeap<Queued>,
    sched: TaskScheduler,
    net: Net,
    transfers: Vec<Option<Transfer>>,
    seed_has: Bitmap,
    seed_sent: Bitmap,
    seed_uploads: u32,
    peers: Vec<Peer>,
    slots: u32,
    remaining: usize,
    resched: Vec<Reschedule>,
    bound: Duration,
    report: SimReport,
}

fn peer_id(i: u32) -> PeerId {
    PeerId(u64::from(i) + 1)
}

fn node_of(id: PeerId) -> Node {
    Node::Peer((id.0 - 1) as u32)
}

fn source(n: Node) -> Source {
    match n {
        Node::Seed => Source::Seed,
        Node::Peer(i) => Source::Peer(peer_id(i)),
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn addr(i: u32) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + i), 65000))
}

impl Sim {
    pub(super) fn new(config: &SimConfig) -> Self {
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let pieces = piece_count(config.file_size, config.piece_size);
        let n = config.peers;
        let mut net = Net::new();
        net.add_node(config.seed_link.up_bps, config.seed_link.down_bps);

        let total_weight: u64 = config.links.iter().map(|(w, _)| u64::from(*w)).sum();
        let links: Vec<Link> = (0..n)
            .map(|_| {
                let mut pick = rng.random_range(0..total_weight.max(1));
                for &(w, l) in &config.links {
                    if pick < u64::from(w) {
                        return l;
                    }
                    pick -= u64::from(w);
                }
                Link::symmetric_mbit(1000, Duration::from_millis(1))
            })
            .collect();
        let d_min = links.iter().map(|l| l.down_bps).min().unwrap_or(1);
        let sum_up: f64 = links.iter().map(|l| l.up_bps as f64).sum();
        let bound = kumar_ross(config.file_size, config.seed_link.up_bps, d_min, sum_up, n);

        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let liars = config.liars.min(n);
        let leavers = config.leavers.min(n - liars);
        let mut role = vec![(false, false); n];
        for &i in &order[..liars] {
            role[i].0 = true;
        }
        for &i in &order[liars..liars + leavers] {
            role[i].1 = true;
        }

        let mut sim = Self {
            epoch: Instant::now(),
            now: 0,
            seq: 0,
            events: BinaryHeap::new(),
            sched: TaskScheduler::new(pieces, config.scheduler.clone(), config.seed),
            net,
            transfers: Vec::new(),
            seed_has: Bitmap::full(pieces),
            seed_sent: Bitmap::new(pieces),
            seed_uploads: 0,
            peers: Vec::with_capacity(n),
            slots: config.scheduler.upload_slots,
            remaining: n - liars - leavers,
            resched: Vec::new(),
            bound,
            report: SimReport {
                peers: Vec::new(),
                file_size: config.file_size,
                seed_bytes_sent: 0,
                peer_bytes_sent: 0,
                bound,
                syncs: 0,
                requests: 0,
                busy: 0,
                events: 0,
                elapsed: Duration::ZERO,
                banned: 0,
                injected: None,
                delivered: Vec::new(),
            },
            config: config.clone(),
        };
        for (i, link) in links.into_iter().enumerate() {
            let window = match config.arrivals {
                Arrivals::Together { within } => within,
                Arrivals::Spread { over } => over,
            };
            let joined = ns(window.mul_f64(rng.random::<f64>()));
            sim.net.add_node(link.up_bps, link.down_bps);
            sim.peers.push(Peer {
                picker: Picker::new(pieces, config.picker.clone(), rng.random()),
                link,
                joined,
                liar: role[i].0,
                leaver: role[i].1,
                left: false,
                done: None,
                new_pieces: Vec::new(),
                bad: Vec::new(),
                next_sync: joined,
                sync: None,
                deferred: Vec::new(),
                tick_at: None,
                uploads: 0,
            });
            sim.push(joined, Ev::Join(i as u32));
            if role[i].1 {
                let at = bound.mul_f64(0.25 + 0.5 * rng.random::<f64>());
                sim.push(ns(at), Ev::Leave(i as u32));
            }
        }
        sim
    }

    pub(super) fn run(mut self) -> SimReport {
        let cap = ns(self.bound * 50 + Duration::from_secs(60));
        while self.remaining > 0 {
            let Some(q) = self.events.pop() else { break };
            if q.at > cap {
                break;
            }
            self.now = q.at;
            self.report.events += 1;
            self.step(q.ev);
            #[cfg(test)]
            self.net.check_caps();
        }
        let f = self.config.file_size as f64;
        let us = self.config.seed_link.up_bps.max(1) as f64;
        self.report.peers = self
            .peers
            .iter()
            .map(|p| PeerOutcome {
                joined: Duration::from_nanos(p.joined),
                done: p.done.map(|d| Duration::from_nanos(d - p.joined)),
                floor: Duration::from_secs_f64((f / us).max(f / p.link.down_bps.max(1) as f64)),
                liar: p.liar,
                left: p.left,
            })
            .collect();
        self.report.elapsed = Duration::from_nanos(self.now);
        self.report
    }

    fn instant(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.now)
    }

    fn push(&mut self, at: u64, ev: Ev) {
        debug_assert!(
            at >= self.now,
            "event in the past: {ev:?} at {at} < {}",
            self.now
        );
        self.seq += 1;
        self.events.push(Queued {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn latency(&self, n: Node) -> u64 {
        ns(match n {
            Node::Seed => self.config.seed_link.latency,
            Node::Peer(i) => self.peers[i as usize].link.latency,
        })
    }

    /// One-way delay between two nodes.
    fn hop(&self, a: Node, b: Node) -> u64 {
        self.latency(a) + self.latency(b)
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Join(i) => {
                self.sched.handle_join(self.instant(), peer_id(i), addr(i));
                self.drive(i);
            }
            Ev::Tick(i) => {
                if self.peers[i as usize].tick_at == Some(self.now) {
                    self.peers[i as usize].tick_at = None;
                    self.drive(i);
                }
            }
            Ev::SyncArrive(i) => self.sync_arrive(i),
            Ev::SyncReply(i) => self.sync_reply(i),
            Ev::Leave(i) => self.leave(i),
            Ev::Request { to, from, piece } => self.request(to, from, piece),
            Ev::FlowDone(id) => self.flow_done(id),
            Ev::Deliver { by, to, piece } => {
                let corrupt = matches!(by, Node::Peer(j) if self.peers[j as usize].liar);
                let outcome = if corrupt {
                    Outcome::Failed(piece, source(by), FailReason::Corrupt)
                } else {
                    Outcome::Done(piece, source(by))
                };
                self.outcome(to, outcome);
            }
            Ev::Fail {
                by,
                to,
                piece,
                reason,
            } => self.outcome(to, Outcome::Failed(piece, source(by), reason)),
        }
    }

    /// One turn of dfget's download loop: sync when due (and wait for it), otherwise start
    /// every request the picker allows and sleep until the next sync or backoff end.
    fn drive(&mut self, i: u32) {
        let now = self.instant();
        let p = &mut self.peers[i as usize];
        if p.left || p.sync.is_some() {
            return;
        }
        if self.now >= p.next_sync {
            self.send_sync(i);
            return;
        }
        let mut wake = p.next_sync;
        if p.done.is_none() {
            while let Some(req) = self.peers[i as usize].picker.poll_request(now) {
                self.report.requests += 1;
                let to = match req.source {
                    Source::Seed => Node::Seed,
                    Source::Peer(id) => node_of(id),
                };
                let at = self.now + self.hop(Node::Peer(i), to);
                self.push(
                    at,
                    Ev::Request {
                        to,
                        from: i,
                        piece: req.piece,
                    },
                );
            }
            if let Some(t) = self.peers[i as usize].picker.poll_timeout() {
                wake = wake.min(ns(t.saturating_duration_since(self.epoch)).max(self.now));
            }
        }
        let p = &mut self.peers[i as usize];
        if p.tick_at.is_none_or(|t| wake < t || t < self.now) {
            p.tick_at = Some(wake);
            self.push(wake, Ev::Tick(i));
        }
    }

    fn send_sync(&mut self, i: u32) {
        let p = &mut self.peers[i as usize];
        let msg = SyncMsg {
            new_pieces: std::mem::take(&mut p.new_pieces),
            bad: std::mem::take(&mut p.bad),
            uploading: p.uploads,
            done: p.done.is_some(),
            ..SyncMsg::default()
        };
        p.sync = Some(Box::new(msg));
        let at = self.now + self.hop(Node::Peer(i), Node::Seed);
        self.push(at, Ev::SyncArrive(i));
    }

    /// The supernode's sync handler (`supernode/src/api.rs`), in the same order.
    fn sync_arrive(&mut self, i: u32) {
        if self.peers[i as usize].left {
            return;
        }
        let now = self.instant();
        let id = peer_id(i);
        let Some(mut msg) = self.peers[i as usize].sync.take() else {
            return;
        };
        let mut res = self
            .sched
            .handle_sync(now, id, &msg.new_pieces, msg.uploading, msg.done);
        if res == Err(SchedError::UnknownPeer(id)) {
            // Expired after a long stall: rejoin, reporting everything held.
            self.sched.handle_join(now, id, addr(i));
            let all: Vec<u32> = self.peers[i as usize].picker.have().iter_ones().collect();
            res = self
                .sched
                .handle_sync(now, id, &all, msg.uploading, msg.done);
        }
        if res.is_ok() {
            for &(offender, piece) in &msg.bad {
                self.sched.handle_bad_piece(now, id, offender, piece);
            }
            if !msg.done {
                self.report.syncs += 1;
                if let Ok(parents) = self.sched.parents(now, id) {
                    msg.parents = Some(parents.into_iter().map(|p| (p.id, p.pieces)).collect());
                }
                msg.seed_offer = self.sched.seed_pieces(now, id, &self.seed_has, &[]).ok();
            }
        }
        self.sched.handle_timeout(now);
        while let Some(ev) = self.sched.poll_event() {
            if let SchedEvent::PeerBanned(_) = ev {
                self.report.banned += 1;
            }
        }
        self.peers[i as usize].sync = Some(msg);
        let at = self.now + self.hop(Node::Peer(i), Node::Seed);
        self.push(at, Ev::SyncReply(i));
    }

    fn sync_reply(&mut self, i: u32) {
        let now = self.instant();
        let interval = ns(self.config.sync_interval);
        let keepalive = ns(self.config.keepalive);
        let p = &mut self.peers[i as usize];
        let Some(msg) = p.sync.take() else { return };
        if p.left {
            return;
        }
        if let Some(offer) = msg.seed_offer {
            p.picker.handle_seed_pieces(offer);
        }
        if let Some(parents) = msg.parents {
            p.picker.handle_parents(now, parents);
        }
        p.next_sync = self.now
            + if p.done.is_some() {
                keepalive
            } else {
                interval
            };
        let deferred = std::mem::take(&mut p.deferred);
        for o in deferred {
            self.apply(i, o);
        }
        self.drive(i);
    }

    fn outcome(&mut self, i: u32, o: Outcome) {
        let p = &mut self.peers[i as usize];
        if p.left {
            return;
        }
        if p.sync.is_some() {
            p.deferred.push(o);
            return;
        }
        self.apply(i, o);
        self.drive(i);
    }

    /// dfget's handling of one finished piece request.
    fn apply(&mut self, i: u32, o: Outcome) {
        let now = self.instant();
        let soon = self.now + ns(self.config.sync_interval / 4);
        let p = &mut self.peers[i as usize];
        match o {
            Outcome::Done(piece, from) => {
                p.picker.handle_piece_done(now, piece, from);
                p.new_pieces.push(piece);
                p.next_sync = p.next_sync.min(soon);
                if p.picker.is_complete() && p.done.is_none() {
                    p.done = Some(self.now);
                    // Report completion at once; it makes this peer a full parent.
                    p.next_sync = self.now;
                    if !p.liar && !p.leaver {
                        self.remaining -= 1;
                    }
                }
            }
            Outcome::Failed(piece, from, reason) => {
                if let (FailReason::Corrupt, Source::Peer(offender)) = (reason, from) {
                    p.bad.push((offender, piece));
                    p.next_sync = self.now;
                }
                p.picker.handle_piece_failed(now, piece, from, reason);
            }
        }
    }

    fn request(&mut self, to: Node, from: u32, piece: u32) {
        let refusal = match to {
            Node::Seed => (self.seed_uploads >= self.config.seed_slots).then_some(FailReason::Busy),
            Node::Peer(j) => {
                let p = &self.peers[j as usize];
                if p.left {
                    Some(FailReason::Io)
                } else if !p.picker.have().get(piece) {
                    Some(FailReason::Unavailable)
                } else if p.uploads >= self.slots {
                    Some(FailReason::Busy)
                } else {
                    None
                }
            }
        };
        if let Some(reason) = refusal {
            if reason == FailReason::Busy {
                self.report.busy += 1;
            }
            let at = self.now + self.hop(to, Node::Peer(from));
            self.push(
                at,
                Ev::Fail {
                    by: to,
                    to: from,
                    piece,
                    reason,
                },
            );
            return;
        }
        let (src, count) = match to {
            Node::Seed => (SEED_NODE, &mut self.seed_uploads),
            Node::Peer(j) => (j + 1, &mut self.peers[j as usize].uploads),
        };
        *count += 1;
        let range = piece_range(self.config.file_size, self.config.piece_size, piece);
        let mut out = std::mem::take(&mut self.resched);
        let id = self
            .net
            .start(self.now, src, from + 1, range.end - range.start, &mut out);
        let slot = id.slot as usize;
        if self.transfers.len() <= slot {
            self.transfers.resize_with(slot + 1, || None);
        }
        self.transfers[slot] = Some(Transfer {
            by: to,
            to: from,
            piece,
        });
        self.schedule_flows(&mut out);
        self.resched = out;
    }

    fn schedule_flows(&mut self, out: &mut Vec<Reschedule>) {
        for r in out.drain(..) {
            self.push(r.finish_ns, Ev::FlowDone(r.id));
        }
    }

    fn flow_done(&mut self, id: FlowId) {
        let mut out = std::mem::take(&mut self.resched);
        let wake = self.net.wake(self.now, id, &mut out);
        self.schedule_flows(&mut out);
        self.resched = out;
        if wake != Wake::Done {
            return;
        }
        let Some(t) = self.transfers[id.slot as usize].take() else {
            return;
        };
        let range = piece_range(self.config.file_size, self.config.piece_size, t.piece);
        let bytes = range.end - range.start;
        match t.by {
            Node::Seed => {
                self.seed_uploads -= 1;
                self.report.seed_bytes_sent += bytes;
                self.sched
                    .handle_seed_sent(self.instant(), peer_id(t.to), t.piece);
                self.seed_sent.set(t.piece);
                if self.seed_sent.is_full() && self.report.injected.is_none() {
                    self.report.injected = Some(Duration::from_nanos(self.now));
                }
            }
            Node::Peer(j) => {
                self.peers[j as usize].uploads -= 1;
                self.report.peer_bytes_sent += bytes;
            }
        }
        let bucket = (self.now / 100_000_000) as usize;
        if self.report.delivered.len() <= bucket {
            self.report.delivered.resize(bucket + 1, 0);
        }
        self.report.delivered[bucket] += bytes;
        let at = self.now + self.hop(t.by, Node::Peer(t.to));
        self.push(
            at,
            Ev::Deliver {
                by: t.by,
                to: t.to,
                piece: t.piece,
            },
        );
    }

    /// A clean exit: the supernode is told, every transfer to or from the peer breaks.
    fn leave(&mut self, i: u32) {
        let p = &mut self.peers[i as usize];
        if p.left {
            return;
        }
        p.left = true;
        self.sched.handle_leave(self.instant(), peer_id(i));
        let node = i + 1;
        let flows: Vec<FlowId> = self
            .net
            .uploads(node)
            .chain(self.net.downloads(node))
            .collect();
        let mut out = std::mem::take(&mut self.resched);
        for id in flows {
            self.net.end(self.now, id, &mut out);
            let Some(t) = self.transfers[id.slot as usize].take() else {
                continue;
            };
            match t.by {
                Node::Seed => self.seed_uploads -= 1,
                Node::Peer(j) => self.peers[j as usize].uploads -= 1,
            }
            if t.to != i {
                let at = self.now + self.hop(t.by, Node::Peer(t.to));
                self.push(
                    at,
                    Ev::Fail {
                        by: t.by,
                        to: t.to,
                        piece: t.piece,
                        reason: FailReason::Io,
                    },
                );
            }
        }
        self.schedule_flows(&mut out);
        self.resched = out;
    }
}
