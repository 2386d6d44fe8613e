//! The event loop: peers driven by [`PeerSession`] (as `dfget`'s download loop drives it), a
//! supernode answering syncs with [`TaskScheduler::handle_sync_request`] (as `supernode`'s
//! API does), and the flow network between them. The loop only moves bytes, messages and
//! time: every decision about syncs, requests, stalls and completion is the session's.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::net::{FlowId, Net, NodeIdx, Reschedule, Wake};
use super::{
    Arrivals, CUT_THROUGH_BLOCK, Link, PeerOutcome, PeerTransport, SimConfig, SimReport, kumar_ross,
};
use crate::{
    Bitmap, FailReason, PeerHost, PeerId, PeerSession, SchedEvent, SessionConfig, SessionEvent,
    Source, Subscription, SyncFailure, SyncInput, SyncMsg, SyncReply, TaskScheduler, piece_count,
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
    /// Peer timer: from its session's `poll_timeout`, or its next keep-alive.
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
    /// A transfer whose bytes were moving broke (its source left, or a cut-through relay
    /// lost the piece): the requester learns it, and the piece is no longer arriving.
    Broke {
        by: Node,
        to: u32,
        piece: u32,
        reason: FailReason,
    },
    /// The requester learns its request failed.
    Fail {
        by: Node,
        to: u32,
        piece: u32,
        reason: FailReason,
    },
    /// A child's subscription reaches its parent.
    Subscribe {
        parent: u32,
        child: u32,
    },
    /// A child's unsubscription reaches its parent.
    Unsubscribe {
        parent: u32,
        child: u32,
    },
    /// The parent's bitfield reaches the child (read when it arrives: it then also covers
    /// announcements still on their way).
    Bitfield {
        parent: u32,
        child: u32,
    },
    /// A parent's announcement of a new piece reaches a child.
    Have {
        parent: u32,
        child: u32,
        piece: u32,
    },
    /// The child learns its subscription failed (the parent left).
    SubLost {
        parent: u32,
        child: u32,
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

/// A piece request's end as its requester sees it.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    by: Node,
    piece: u32,
    end: End,
    /// The request's bytes were moving (a flow had started), so the piece stops arriving.
    flowed: bool,
}

#[derive(Debug, Clone, Copy)]
enum End {
    /// Every byte arrived; `corrupt` when they fail verification.
    Bytes { corrupt: bool },
    /// The source refused or the transfer broke.
    Failed(FailReason),
}

/// A sync on its way: what the peer sent, then what the supernode answered.
#[derive(Debug)]
struct SyncTrip {
    msg: SyncMsg,
    /// The peer's uploads when it sent the sync.
    uploading: u32,
    reply: Option<Result<SyncReply, SyncFailure>>,
}

struct Peer {
    session: PeerSession,
    link: Link,
    joined: u64,
    liar: bool,
    leaver: bool,
    left: bool,
    done: Option<u64>,
    /// The session ended without completing (stalled, lost the supernode, refused); `dfget`
    /// would fall back to the origin, the simulation just stops the peer.
    failed: bool,
    sync: Option<Box<SyncTrip>>,
    /// When a finished peer next tells the supernode it is alive (dfdaemon's keep-alive,
    /// outside the download session).
    keepalive_at: Option<u64>,
    /// Outcomes that arrived while the loop waited for a sync ([`SimConfig::sync_waits`]).
    deferred: Vec<Outcome>,
    tick_at: Option<u64>,
    uploads: u32,
    /// Requests waiting for one of this peer's upload slots, oldest first: `(requester,
    /// piece)`, at most [`SimConfig::upload_queue`].
    queue: VecDeque<(u32, u32)>,
    /// Children subscribed to this peer's announcements, in subscription order.
    subscribers: Vec<u32>,
}

/// A child's TCP connection at a parent, as dfget's `serve_tcp` runs it: a reading stage
/// takes the next request only once the writing stage can take its answer, so at most one
/// piece is read ahead (holding a slot, or waiting in the upload queue) of the one being sent.
#[derive(Debug, Default)]
struct Conn {
    /// Pieces asked for and not yet read by the reading stage.
    unread: VecDeque<u32>,
    /// A piece is being sent (its flow runs, holding a slot).
    sending: bool,
    /// The piece read ahead, and whether it holds a slot (else it waits in the queue).
    ahead: Option<(u32, bool)>,
}

struct Transfer {
    by: Node,
    to: u32,
    piece: u32,
    /// When its flow started.
    started: u64,
}

/// What a flow carries.
enum Carried {
    Piece(Transfer),
    /// A control message from `from`: `ev` happens one hop after its last byte leaves.
    Msg {
        from: Node,
        to: Node,
        ev: Ev,
    },
}

/// Wire sizes of control messages, in bytes ([`SimConfig::control_traffic`]).
const SYNC_REQUEST: u64 = 100;
const PER_REPORTED_PIECE: u64 = 4;
const SYNC_REPLY: u64 = 100;
const PER_DIGEST: u64 = 32;
/// A piece answer's digest with the supernode's Ed25519 signature over it
/// (`common::vouch`, `PieceResponse.digest` and `.signature`).
const PER_VOUCHED_DIGEST: u64 = PER_DIGEST + 64;
const PER_PARENT: u64 = 40;
const PIECE_REQUEST: u64 = 60;
const PIECE_HEADER: u64 = 10;
const SUBSCRIBE: u64 = 40;
const UNSUBSCRIBE: u64 = 20;
const BITFIELD_HEADER: u64 = 10;
const HAVE: u64 = 9;
const PER_PARENT_ID: u64 = 9;

pub(super) struct Sim {
    config: SimConfig,
    epoch: Instant,
    now: u64,
    seq: u64,
    events: BinaryHeap<Queued>,
    sched: TaskScheduler,
    net: Net,
    transfers: Vec<Option<Carried>>,
    seed_has: Bitmap,
    /// The supernode's piece digests (the simulation does not hash: any distinct values do).
    digests: Vec<[u8; 32]>,
    seed_sent: Bitmap,
    seed_uploads: u32,
    peers: Vec<Peer>,
    slots: u32,
    /// TCP connections by `(parent, child)`; ordered, so that runs are deterministic.
    conns: BTreeMap<(u32, u32), Conn>,
    remaining: usize,
    resched: Vec<Reschedule>,
    bound: Duration,
    report: SimReport,
    /// `(peer, piece)`: transfers into the peer that started and whose end the peer has
    /// not yet seen ([`SimConfig::cut_through`] relays a piece while this is above 0).
    inflow: BTreeMap<(u32, u32), u32>,
    /// `(parent, piece)`: relayed transfers whose bytes are all sent but the last block,
    /// waiting for the parent to complete the piece: `(child, last block's time in ns)`.
    held: BTreeMap<(u32, u32), Vec<(u32, u64)>>,
    /// `(peer, piece)`: the relays upstream of a piece the peer is receiving, so that
    /// relays never form a cycle (a peer does not relay a piece to one of its own sources).
    upstream: BTreeMap<(u32, u32), Vec<u32>>,
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

fn net_node(n: Node) -> NodeIdx {
    match n {
        Node::Seed => SEED_NODE,
        Node::Peer(i) => i + 1,
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
            digests: (0..pieces)
                .map(|p| {
                    let mut d = [0u8; 32];
                    d[..4].copy_from_slice(&p.to_le_bytes());
                    d
                })
                .collect(),
            seed_sent: Bitmap::new(pieces),
            seed_uploads: 0,
            peers: Vec::with_capacity(n),
            slots: config.scheduler.upload_slots,
            conns: BTreeMap::new(),
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
                seed_offer_conflicts: 0,
                queued: 0,
                cut_through_cycles: 0,
                control_bytes: 0,
                seed_control_sent: 0,
                seed_control_received: 0,
                seed_digest_bytes: 0,
                seed_parent_bytes: 0,
                events: 0,
                elapsed: Duration::ZERO,
                banned: 0,
                injected: None,
                delivered: Vec::new(),
            },
            inflow: BTreeMap::new(),
            held: BTreeMap::new(),
            upstream: BTreeMap::new(),
            config: config.clone(),
        };
        let session_config = SessionConfig {
            sync_interval: config.sync_interval,
            picker: config.picker.clone(),
            announcements: config.announcements,
            vouched_digests: config.vouched_digests,
            ..SessionConfig::default()
        };
        for (i, link) in links.into_iter().enumerate() {
            let window = match config.arrivals {
                Arrivals::Together { within } => within,
                Arrivals::Spread { over } => over,
            };
            let joined = ns(window.mul_f64(rng.random::<f64>()));
            sim.net.add_node(link.up_bps, link.down_bps);
            sim.peers.push(Peer {
                session: PeerSession::new(
                    sim.epoch + Duration::from_nanos(joined),
                    config.file_size,
                    config.piece_size,
                    session_config.clone(),
                    rng.random(),
                ),
                link,
                joined,
                liar: role[i].0,
                leaver: role[i].1,
                left: false,
                done: None,
                failed: false,
                sync: None,
                keepalive_at: None,
                deferred: Vec::new(),
                tick_at: None,
                uploads: 0,
                queue: VecDeque::new(),
                subscribers: Vec::new(),
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
        let broke = matches!(ev, Ev::Broke { .. });
        match ev {
            Ev::Join(i) => {
                // Each simulated peer has a host of its own and a fresh id: a join is refused
                // only after a ban, and then the peer's syncs are refused too (below).
                if let Err(e) = self.sched.handle_join(
                    self.instant(),
                    peer_id(i),
                    addr(i),
                    PeerHost::of(addr(i)),
                ) {
                    tracing::debug!(peer = i, error = %e, "join refused");
                }
                self.drive(i);
            }
            Ev::Tick(i) => {
                if self.peers[i as usize].tick_at == Some(self.now) {
                    self.peers[i as usize].tick_at = None;
                    let now = self.instant();
                    self.peers[i as usize].session.handle_timeout(now);
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
                let end = End::Bytes { corrupt };
                let flowed = true;
                self.outcome(
                    to,
                    Outcome {
                        by,
                        piece,
                        end,
                        flowed,
                    },
                );
            }
            Ev::Fail {
                by,
                to,
                piece,
                reason,
            }
            | Ev::Broke {
                by,
                to,
                piece,
                reason,
            } => self.outcome(
                to,
                Outcome {
                    by,
                    piece,
                    end: End::Failed(reason),
                    flowed: broke,
                },
            ),
            Ev::Subscribe { parent, child } => self.subscribe(parent, child),
            Ev::Unsubscribe { parent, child } => {
                self.peers[parent as usize]
                    .subscribers
                    .retain(|&c| c != child);
            }
            Ev::Bitfield { parent, child } => {
                let now = self.instant();
                let mut bits = self.peers[parent as usize].session.have().clone();
                // A cut-through relay lists the pieces it is receiving too.
                for (&(_, piece), _) in self.inflow.range((parent, 0)..=(parent, u32::MAX)) {
                    bits.set(piece);
                }
                let c = &mut self.peers[child as usize];
                if !c.left {
                    c.session.handle_parent_pieces(now, peer_id(parent), bits);
                    self.drive(child);
                }
            }
            Ev::Have {
                parent,
                child,
                piece,
            } => {
                let now = self.instant();
                let c = &mut self.peers[child as usize];
                if !c.left {
                    c.session.handle_parent_have(now, peer_id(parent), piece);
                    self.drive(child);
                }
            }
            Ev::SubLost { parent, child } => {
                let now = self.instant();
                let c = &mut self.peers[child as usize];
                if !c.left {
                    // The parent left the swarm: nobody answers there any more.
                    c.session.handle_parent_unreachable(now, peer_id(parent));
                    self.drive(child);
                }
            }
        }
    }

    /// A subscription reaches a parent: dfget's piece server records the child and sends
    /// its bitfield, then every new piece.
    fn subscribe(&mut self, parent: u32, child: u32) {
        let (from, to) = (Node::Peer(parent), Node::Peer(child));
        if self.peers[parent as usize].left {
            self.send_msg(from, to, PIECE_HEADER, Ev::SubLost { parent, child });
            return;
        }
        let subs = &mut self.peers[parent as usize].subscribers;
        if !subs.contains(&child) {
            subs.push(child);
        }
        let bitmap = u64::from(self.seed_has.len()).div_ceil(8);
        self.send_msg(
            from,
            to,
            BITFIELD_HEADER + bitmap,
            Ev::Bitfield { parent, child },
        );
    }

    /// Peer `i` verified a new piece: its subscribed children hear of it.
    fn announce(&mut self, i: u32, piece: u32) {
        let subs = std::mem::take(&mut self.peers[i as usize].subscribers);
        for &child in &subs {
            let ev = Ev::Have {
                parent: i,
                child,
                piece,
            };
            self.send_msg(Node::Peer(i), Node::Peer(child), HAVE, ev);
        }
        self.peers[i as usize].subscribers = subs;
    }

    /// After every input, what dfget's loop does: act on the session's events, send the sync
    /// it asks for, start every request it allows, and sleep until its timer.
    fn drive(&mut self, i: u32) {
        let now = self.instant();
        let p = &mut self.peers[i as usize];
        if p.left || p.failed {
            return;
        }
        while let Some(ev) = p.session.poll_event() {
            if ev == SessionEvent::Complete {
                p.done = Some(self.now);
                if !p.liar && !p.leaver {
                    self.remaining -= 1;
                }
            } else {
                p.failed = true;
            }
        }
        let mut subs = Vec::new();
        while let Some(s) = p.session.poll_subscription() {
            subs.push(s);
        }
        let failed = p.failed;
        for s in subs {
            let (parent, bytes, ev) = match s {
                Subscription::Subscribe { parent, .. } => {
                    let j = node_of(parent);
                    let Node::Peer(j) = j else { continue };
                    (
                        j,
                        SUBSCRIBE,
                        Ev::Subscribe {
                            parent: j,
                            child: i,
                        },
                    )
                }
                Subscription::Unsubscribe { parent } => {
                    let Node::Peer(j) = node_of(parent) else {
                        continue;
                    };
                    (
                        j,
                        UNSUBSCRIBE,
                        Ev::Unsubscribe {
                            parent: j,
                            child: i,
                        },
                    )
                }
            };
            self.send_msg(Node::Peer(i), Node::Peer(parent), bytes, ev);
        }
        let p = &mut self.peers[i as usize];
        if failed {
            return;
        }
        if p.sync.is_none() {
            if let Some(msg) = p.session.poll_sync(now) {
                self.send_sync(i, msg);
            } else if p.keepalive_at.is_some_and(|t| t <= self.now) {
                p.keepalive_at = None;
                let msg = SyncMsg {
                    done: true,
                    digests_from: u32::MAX,
                    ..SyncMsg::default()
                };
                self.send_sync(i, msg);
            }
        }
        if self.waiting(i) {
            // dfget's loop is blocked in the sync; the reply drives it again.
            return;
        }
        while let Some(req) = self.peers[i as usize].session.poll_request(now) {
            self.report.requests += 1;
            let to = match req.source {
                Source::Seed => Node::Seed,
                Source::Peer(id) => node_of(id),
            };
            let ev = Ev::Request {
                to,
                from: i,
                piece: req.piece,
            };
            self.send_msg(Node::Peer(i), to, PIECE_REQUEST, ev);
        }
        let p = &self.peers[i as usize];
        let session = p
            .session
            .poll_timeout()
            .map(|t| ns(t.saturating_duration_since(self.epoch)).max(self.now));
        let keepalive = p.keepalive_at.filter(|_| p.sync.is_none());
        let Some(wake) = session.into_iter().chain(keepalive).min() else {
            return;
        };
        let p = &mut self.peers[i as usize];
        if p.tick_at.is_none_or(|t| wake < t || t < self.now) {
            p.tick_at = Some(wake);
            self.push(wake, Ev::Tick(i));
        }
    }

    fn send_sync(&mut self, i: u32, msg: SyncMsg) {
        let reported = msg.new_pieces.len() + msg.bad_pieces.len() + msg.urgent.len();
        let listed =
            (msg.known_parents.as_ref().map_or(0, Vec::len) + msg.unreachable_parents.len()) as u64;
        let bytes = SYNC_REQUEST + PER_REPORTED_PIECE * reported as u64 + PER_PARENT_ID * listed;
        let p = &mut self.peers[i as usize];
        p.sync = Some(Box::new(SyncTrip {
            msg,
            uploading: p.uploads,
            reply: None,
        }));
        self.send_msg(Node::Peer(i), Node::Seed, bytes, Ev::SyncArrive(i));
    }

    /// The supernode's sync handler (`supernode/src/api.rs`): the scheduler's answer plus
    /// the digests the peer lacks.
    fn sync_arrive(&mut self, i: u32) {
        if self.peers[i as usize].left {
            return;
        }
        let now = self.instant();
        let id = peer_id(i);
        let Some(trip) = self.peers[i as usize].sync.as_mut() else {
            return;
        };
        let msg = &trip.msg;
        let input = SyncInput {
            new_pieces: &msg.new_pieces,
            bad_pieces: &msg.bad_pieces,
            urgent: &msg.urgent,
            uploading: trip.uploading,
            done: msg.done,
            seed_has: &self.seed_has,
            known_parents: msg.known_parents.as_deref(),
            unreachable_parents: &msg.unreachable_parents,
            unserved: &msg.unserved,
        };
        let reply =
            match self
                .sched
                .handle_sync_request(now, id, addr(i), PeerHost::of(addr(i)), &input)
            {
                Ok(out) => {
                    if !msg.done {
                        self.report.syncs += 1;
                    }
                    let from = (msg.digests_from as usize).min(self.digests.len());
                    // With vouched digests they come with the pieces instead.
                    let to = if msg.vouched {
                        from
                    } else {
                        self.digests.len()
                    };
                    Ok(SyncReply {
                        failed: None,
                        digests_from: from as u32,
                        digests: self.digests[from..to].to_vec(),
                        stored: self.digests.len() as u32,
                        seed_pieces: out.seed_pieces,
                        parents: out.parents,
                        delta: out.delta,
                        dropped_parents: out.dropped_parents,
                        readmitted: out.readmitted,
                    })
                }
                // The supernode answers BAD_REQUEST (a banned liar, a bad index).
                Err(e) => Err(SyncFailure::Refused(e.to_string())),
            };
        let bitmap = u64::from(self.seed_has.len()).div_ceil(8);
        let (digest_bytes, parent_bytes, offer_bytes) = match &reply {
            Ok(r) if r.delta => (
                PER_DIGEST * r.digests.len() as u64,
                r.parents.len() as u64 * PER_PARENT
                    + r.dropped_parents.len() as u64 * PER_PARENT_ID,
                if r.seed_pieces.count() > 0 { bitmap } else { 0 },
            ),
            Ok(r) => (
                PER_DIGEST * r.digests.len() as u64,
                r.parents.len() as u64 * (bitmap + PER_PARENT),
                if r.seed_pieces.count() > 0 { bitmap } else { 0 },
            ),
            Err(_) => (0, 0, 0),
        };
        let bytes = SYNC_REPLY + digest_bytes + parent_bytes + offer_bytes;
        if self.config.control_traffic {
            self.report.seed_digest_bytes += digest_bytes;
            self.report.seed_parent_bytes += parent_bytes;
        }
        trip.reply = Some(reply);
        self.sched.handle_timeout(now);
        while let Some(ev) = self.sched.poll_event() {
            if let SchedEvent::PeerBanned(_) = ev {
                self.report.banned += 1;
            }
        }
        self.send_msg(Node::Seed, Node::Peer(i), bytes, Ev::SyncReply(i));
    }

    fn sync_reply(&mut self, i: u32) {
        let now = self.instant();
        let keepalive = ns(self.config.keepalive);
        let p = &mut self.peers[i as usize];
        let Some(trip) = p.sync.take() else { return };
        if p.left {
            return;
        }
        if trip.msg.done {
            p.keepalive_at = Some(self.now + keepalive);
        }
        match trip.reply {
            Some(Ok(reply)) => p.session.handle_sync_reply(now, reply),
            Some(Err(failure)) => p.session.handle_sync_failed(now, failure),
            None => p
                .session
                .handle_sync_failed(now, SyncFailure::Unreachable("no reply".into())),
        }
        for o in std::mem::take(&mut p.deferred) {
            self.apply(i, o);
        }
        self.drive(i);
    }

    /// Whether peer `i`'s loop is blocked in a sync.
    fn waiting(&self, i: u32) -> bool {
        self.config.sync_waits && self.peers[i as usize].sync.is_some()
    }

    fn outcome(&mut self, i: u32, o: Outcome) {
        if self.peers[i as usize].left {
            if o.flowed {
                self.inflow_end(i, o.piece);
            }
            return;
        }
        if self.waiting(i) {
            self.peers[i as usize].deferred.push(o);
            return;
        }
        self.apply(i, o);
        self.drive(i);
    }

    /// A request's end reaches the session; received pieces are verified in no time.
    fn apply(&mut self, i: u32, o: Outcome) {
        let now = self.instant();
        let range = piece_range(self.config.file_size, self.config.piece_size, o.piece);
        let from = source(o.by);
        let session = &mut self.peers[i as usize].session;
        match o.end {
            End::Failed(reason) => {
                session.handle_piece_failed(now, o.piece, from, reason);
                if o.flowed {
                    self.inflow_end(i, o.piece);
                }
            }
            End::Bytes { corrupt } => {
                if self.config.vouched_digests {
                    // The answer's digest and signature check out (a liar corrupts bytes;
                    // it cannot forge the supernode's signature).
                    session.handle_vouched_digest(o.piece, self.digests[o.piece as usize]);
                }
                if corrupt {
                    session.handle_piece_received(now, o.piece, from);
                    session.handle_piece_failed(now, o.piece, from, FailReason::Corrupt);
                    self.inflow_end(i, o.piece);
                    return;
                }
                let fresh = !session.have().get(o.piece);
                session.handle_piece_received(now, o.piece, from);
                session.handle_piece_done(now, o.piece, from, range.end - range.start);
                let have = session.have().get(o.piece);
                // A cut-through relay announced the piece when it started to arrive.
                if fresh && have && !self.config.cut_through {
                    self.announce(i, o.piece);
                }
                self.inflow_end(i, o.piece);
                if have {
                    self.release_held(i, o.piece);
                }
            }
        }
    }

    /// A piece request reaches its source: dfget's `PieceServer::prepare` for a peer (a
    /// free slot, else a place in the upload queue, else `Busy`), the supernode's slot check.
    fn request(&mut self, to: Node, from: u32, piece: u32) {
        let refusal = match to {
            // The supernode's piece handler: a piece nobody holds goes only to the peer it
            // is offered to; then the upload slots.
            Node::Seed
                if !self
                    .sched
                    .seed_send_allowed(self.instant(), peer_id(from), piece) =>
            {
                self.report.seed_offer_conflicts += 1;
                Some(FailReason::Unavailable)
            }
            Node::Seed => (self.seed_uploads >= self.config.seed_slots).then_some(FailReason::Busy),
            Node::Peer(j) => {
                // A cut-through relay serves a piece it is still receiving.
                let relaying = self.config.cut_through
                    && !self.peers[j as usize].session.have().get(piece)
                    && self.inflow.contains_key(&(j, piece));
                let p = &mut self.peers[j as usize];
                if p.left {
                    Some(FailReason::Io)
                } else if !p.session.have().get(piece) && !relaying {
                    Some(FailReason::Absent)
                } else if relaying
                    && self
                        .upstream
                        .get(&(j, piece))
                        .is_some_and(|up| up.contains(&from))
                {
                    // The requester is upstream of this relay: its bytes would come back.
                    self.report.cut_through_cycles += 1;
                    Some(FailReason::Withdrawn)
                } else if self.config.transport == PeerTransport::Tcp {
                    self.conns
                        .entry((j, from))
                        .or_default()
                        .unread
                        .push_back(piece);
                    self.advance(j, from);
                    return;
                } else if p.uploads < self.slots {
                    None
                } else if p.queue.len() < self.config.upload_queue as usize {
                    p.queue.push_back((from, piece));
                    self.report.queued += 1;
                    return;
                } else {
                    Some(FailReason::Busy)
                }
            }
        };
        if let Some(reason) = refusal {
            if reason == FailReason::Busy {
                self.report.busy += 1;
            }
            let ev = Ev::Fail {
                by: to,
                to: from,
                piece,
                reason,
            };
            self.send_msg(to, Node::Peer(from), PIECE_HEADER, ev);
            return;
        }
        self.start_upload(to, from, piece);
    }

    /// `by` starts sending `piece` to peer `to`, taking one of its upload slots.
    fn start_upload(&mut self, by: Node, to: u32, piece: u32) {
        match by {
            Node::Seed => self.seed_uploads += 1,
            Node::Peer(j) => self.peers[j as usize].uploads += 1,
        }
        self.start_flow(by, to, piece);
    }

    /// Parent `j`'s connection from child `i` moves on as far as it can: the writer takes
    /// the piece read ahead once it has a slot, and the reader reads the next request and
    /// prepares it (a free slot, else a place in the upload queue, else `Busy`).
    fn advance(&mut self, j: u32, i: u32) {
        loop {
            let slots_free = self.peers[j as usize].uploads < self.slots;
            let queue_room = self.peers[j as usize].queue.len() < self.config.upload_queue as usize;
            let Some(conn) = self.conns.get_mut(&(j, i)) else {
                return;
            };
            if !conn.sending
                && let Some((piece, true)) = conn.ahead
            {
                conn.ahead = None;
                conn.sending = true;
                self.start_flow(Node::Peer(j), i, piece);
                continue;
            }
            if conn.ahead.is_some() {
                return;
            }
            let Some(piece) = conn.unread.pop_front() else {
                return;
            };
            if slots_free {
                conn.ahead = Some((piece, true));
                self.peers[j as usize].uploads += 1;
            } else if queue_room {
                conn.ahead = Some((piece, false));
                self.peers[j as usize].queue.push_back((i, piece));
                self.report.queued += 1;
            } else {
                self.report.busy += 1;
                let ev = Ev::Fail {
                    by: Node::Peer(j),
                    to: i,
                    piece,
                    reason: FailReason::Busy,
                };
                self.send_msg(Node::Peer(j), Node::Peer(i), PIECE_HEADER, ev);
            }
        }
    }

    /// `by` starts sending `piece` to peer `to`, its upload slot already counted.
    fn start_flow(&mut self, by: Node, to: u32, piece: u32) {
        let range = piece_range(self.config.file_size, self.config.piece_size, piece);
        let mut bytes = range.end - range.start;
        if self.config.control_traffic {
            let header = if self.config.vouched_digests {
                PIECE_HEADER + PER_VOUCHED_DIGEST
            } else {
                PIECE_HEADER
            };
            bytes += header;
            self.count_control(by, Node::Peer(to), header);
            if by == Node::Seed {
                self.report.seed_digest_bytes += header - PIECE_HEADER;
            }
        }
        let started = self.now;
        let carried = Carried::Piece(Transfer {
            by,
            to,
            piece,
            started,
        });
        self.open_flow(by, Node::Peer(to), bytes, carried);
        if !self.config.cut_through {
            return;
        }
        if let Node::Peer(s) = by
            && !self.peers[s as usize].session.have().get(piece)
        {
            let mut up = self.upstream.get(&(s, piece)).cloned().unwrap_or_default();
            up.push(s);
            let mine = self.upstream.entry((to, piece)).or_default();
            for u in up {
                if !mine.contains(&u) {
                    mine.push(u);
                }
            }
        }
        let arriving = self.inflow.entry((to, piece)).or_insert(0);
        *arriving += 1;
        if *arriving == 1
            && self.config.announcements
            && !self.peers[to as usize].session.have().get(piece)
        {
            self.announce(to, piece);
        }
    }

    /// A transfer into peer `i` of `piece` ended (delivered, refused or broken). When none
    /// is left and the peer does not hold the piece, the relays it held back fail.
    fn inflow_end(&mut self, i: u32, piece: u32) {
        let key = (i, piece);
        match self.inflow.get_mut(&key) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.inflow.remove(&key);
                self.upstream.remove(&key);
            }
            None => {}
        }
        let lost = !self.inflow.contains_key(&key)
            && (self.peers[i as usize].left || !self.peers[i as usize].session.have().get(piece));
        if lost {
            self.fail_held(i, piece, FailReason::Withdrawn);
            self.abort_relays(i, piece);
        }
    }

    /// Relay `i` lost `piece` it was still sending on: those transfers stop at once.
    fn abort_relays(&mut self, i: u32, piece: u32) {
        if self.peers[i as usize].left {
            return; // `leave` ends its flows.
        }
        let relays: Vec<FlowId> = self
            .net
            .uploads(net_node(Node::Peer(i)))
            .filter(|id| {
                matches!(&self.transfers[id.slot as usize],
                    Some(Carried::Piece(t)) if t.piece == piece)
            })
            .collect();
        let mut out = std::mem::take(&mut self.resched);
        for id in relays {
            self.net.end(self.now, id, &mut out);
            let Some(Carried::Piece(t)) = self.transfers[id.slot as usize].take() else {
                continue;
            };
            let at = self.now + self.hop(t.by, Node::Peer(t.to));
            let ev = Ev::Broke {
                by: t.by,
                to: t.to,
                piece,
                reason: FailReason::Withdrawn,
            };
            self.push(at, ev);
            self.upload_ended(i, t.to);
        }
        self.schedule_flows(&mut out);
        self.resched = out;
    }

    /// Peer `j`'s upload to child `to` ended: its slot frees and the connection moves on.
    fn upload_ended(&mut self, j: u32, to: u32) {
        self.peers[j as usize].uploads -= 1;
        if let Some(conn) = self.conns.get_mut(&(j, to)) {
            conn.sending = false;
        }
        self.start_queued(j);
        self.advance(j, to);
    }

    /// Relay `i` lost `piece` (its transfer broke or failed verification, or it left): the
    /// children it held back the last block from learn their transfer broke.
    fn fail_held(&mut self, i: u32, piece: u32, reason: FailReason) {
        let Some(children) = self.held.remove(&(i, piece)) else {
            return;
        };
        for (child, _) in children {
            self.held_upload_ended(i, child);
            let at = self.now + self.hop(Node::Peer(i), Node::Peer(child));
            let ev = Ev::Broke {
                by: Node::Peer(i),
                to: child,
                piece,
                reason,
            };
            self.push(at, ev);
        }
    }

    /// The streamed answer relay `i` held for `child` ended: its slot and connection free
    /// (a relay that left freed them when it left).
    fn held_upload_ended(&mut self, i: u32, child: u32) {
        if !self.peers[i as usize].left {
            self.upload_ended(i, child);
        }
    }

    /// Relay `i` verified `piece`: the last block goes to each child it held it back from.
    fn release_held(&mut self, i: u32, piece: u32) {
        let Some(children) = self.held.remove(&(i, piece)) else {
            return;
        };
        for (child, block_ns) in children {
            self.held_upload_ended(i, child);
            let at = self.now + block_ns + self.hop(Node::Peer(i), Node::Peer(child));
            let by = Node::Peer(i);
            self.push(
                at,
                Ev::Deliver {
                    by,
                    to: child,
                    piece,
                },
            );
        }
    }

    fn open_flow(&mut self, from: Node, to: Node, bytes: u64, carried: Carried) {
        let mut out = std::mem::take(&mut self.resched);
        let id = self
            .net
            .start(self.now, net_node(from), net_node(to), bytes, &mut out);
        let slot = id.slot as usize;
        if self.transfers.len() <= slot {
            self.transfers.resize_with(slot + 1, || None);
        }
        self.transfers[slot] = Some(carried);
        self.schedule_flows(&mut out);
        self.resched = out;
    }

    /// A control message of `bytes` from `from` to `to`, whose arrival is `ev`: one hop
    /// away, and with [`SimConfig::control_traffic`] after its bytes crossed both links.
    fn send_msg(&mut self, from: Node, to: Node, bytes: u64, ev: Ev) {
        if !self.config.control_traffic {
            let at = self.now + self.hop(from, to);
            self.push(at, ev);
            return;
        }
        self.count_control(from, to, bytes);
        self.open_flow(from, to, bytes, Carried::Msg { from, to, ev });
    }

    fn count_control(&mut self, from: Node, to: Node, bytes: u64) {
        self.report.control_bytes += bytes;
        if from == Node::Seed {
            self.report.seed_control_sent += bytes;
        }
        if to == Node::Seed {
            self.report.seed_control_received += bytes;
        }
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
        let t = match self.transfers[id.slot as usize].take() {
            None => return,
            Some(Carried::Msg { from, to, ev }) => {
                let at = self.now + self.hop(from, to);
                self.push(at, ev);
                return;
            }
            Some(Carried::Piece(t)) => t,
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
                self.report.peer_bytes_sent += bytes;
                // A relayed piece whose last block waits for the relay's check keeps its
                // upload slot and its connection (the streamed answer has not ended, so
                // the answers pipelined behind it wait) until the relay releases or
                // withdraws it.
                let holds = self.config.cut_through
                    && !self.peers[j as usize].session.have().get(t.piece)
                    && self.inflow.contains_key(&(j, t.piece));
                if !holds {
                    self.upload_ended(j, t.to);
                }
            }
        }
        let bucket = (self.now / 100_000_000) as usize;
        if self.report.delivered.len() <= bucket {
            self.report.delivered.resize(bucket + 1, 0);
        }
        self.report.delivered[bucket] += bytes;
        if let Node::Peer(j) = t.by
            && self.config.cut_through
            && !self.peers[j as usize].session.have().get(t.piece)
        {
            if self.inflow.contains_key(&(j, t.piece)) {
                // Relayed while arriving: the last block waits for the parent's check.
                let block = CUT_THROUGH_BLOCK.min(bytes);
                let block_ns = (self.now - t.started) * block / bytes.max(1);
                self.held
                    .entry((j, t.piece))
                    .or_default()
                    .push((t.to, block_ns));
            } else {
                let at = self.now + self.hop(t.by, Node::Peer(t.to));
                let ev = Ev::Broke {
                    by: t.by,
                    to: t.to,
                    piece: t.piece,
                    reason: FailReason::Withdrawn,
                };
                self.push(at, ev);
            }
            return;
        }
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
        let waiting = std::mem::take(&mut p.queue);
        let subscribers = std::mem::take(&mut p.subscribers);
        self.sched.handle_leave(self.instant(), peer_id(i));
        // Its subscribers' connections close.
        for child in subscribers {
            let ev = Ev::SubLost { parent: i, child };
            self.send_msg(Node::Peer(i), Node::Peer(child), 0, ev);
        }
        // Its connections close: requests waiting for its slots fail, and its own requests
        // waiting at its parents are dropped.
        let mut failed: Vec<(u32, u32)> = Vec::new();
        let mut freed = Vec::new();
        if self.config.transport == PeerTransport::Tcp {
            // Its queue holds the pieces read ahead on its connections, failed below.
            let touching: Vec<(u32, u32)> = self
                .conns
                .keys()
                .filter(|&&(j, c)| j == i || c == i)
                .copied()
                .collect();
            for key in touching {
                let Some(conn) = self.conns.remove(&key) else {
                    continue;
                };
                let (j, c) = key;
                if j == i {
                    let ahead = conn.ahead.map(|(piece, _)| piece);
                    failed.extend(ahead.into_iter().chain(conn.unread).map(|p| (c, p)));
                } else if let Some((_, true)) = conn.ahead {
                    self.peers[j as usize].uploads -= 1;
                    freed.push(j);
                }
            }
        } else {
            failed = waiting.into();
        }
        for (to, piece) in failed {
            let at = self.now + self.hop(Node::Peer(i), Node::Peer(to));
            self.push(
                at,
                Ev::Fail {
                    by: Node::Peer(i),
                    to,
                    piece,
                    reason: FailReason::Io,
                },
            );
        }
        for p in &mut self.peers {
            p.queue.retain(|&(from, _)| from != i);
        }
        let node = i + 1;
        let flows: Vec<FlowId> = self
            .net
            .uploads(node)
            .chain(self.net.downloads(node))
            .collect();
        let mut out = std::mem::take(&mut self.resched);
        for id in flows {
            self.net.end(self.now, id, &mut out);
            let t = match self.transfers[id.slot as usize].take() {
                None => continue,
                Some(Carried::Msg { ev, .. }) => {
                    // A request or refusal on a connection that broke: the requester sees
                    // the break; syncs of the leaver just end.
                    let (by, to, piece) = match ev {
                        Ev::Request { to, from, piece } => (to, from, piece),
                        Ev::Fail { by, to, piece, .. } => (by, to, piece),
                        _ => continue,
                    };
                    if to != i {
                        let at = self.now + self.hop(by, Node::Peer(to));
                        let reason = FailReason::Io;
                        self.push(
                            at,
                            Ev::Fail {
                                by,
                                to,
                                piece,
                                reason,
                            },
                        );
                    }
                    continue;
                }
                Some(Carried::Piece(t)) => t,
            };
            match t.by {
                Node::Seed => self.seed_uploads -= 1,
                Node::Peer(j) => {
                    self.peers[j as usize].uploads -= 1;
                    freed.push(j);
                }
            }
            if t.to != i {
                let at = self.now + self.hop(t.by, Node::Peer(t.to));
                self.push(
                    at,
                    Ev::Broke {
                        by: t.by,
                        to: t.to,
                        piece: t.piece,
                        reason: FailReason::Io,
                    },
                );
            } else {
                self.inflow_end(i, t.piece);
            }
        }
        self.schedule_flows(&mut out);
        self.resched = out;
        // The children it held a relayed piece's last block from see the connection break.
        let held: Vec<u32> = self
            .held
            .range((i, 0)..=(i, u32::MAX))
            .map(|(&(_, piece), _)| piece)
            .collect();
        for piece in held {
            self.fail_held(i, piece, FailReason::Io);
        }
        for j in freed {
            self.start_queued(j);
        }
    }

    /// Peer `j` starts the requests waiting in its upload queue while it has free slots.
    fn start_queued(&mut self, j: u32) {
        while self.peers[j as usize].uploads < self.slots {
            let Some((to, piece)) = self.peers[j as usize].queue.pop_front() else {
                break;
            };
            match self.conns.get_mut(&(j, to)) {
                Some(conn) => {
                    conn.ahead = Some((piece, true));
                    self.peers[j as usize].uploads += 1;
                    self.advance(j, to);
                }
                None => self.start_upload(Node::Peer(j), to, piece),
            }
        }
    }
}
