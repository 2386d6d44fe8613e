//! Flow-level network model: every node has an upload and a download capacity, every transfer
//! is a flow from one node's uplink to another's downlink, and rates are re-shared whenever a
//! flow starts or ends.
//!
//! Sharing rule, applied when a flow from `a` to `b` starts or ends, to the flows on the two
//! links that changed (`a`'s uplink and `b`'s downlink):
//!
//! 1. every such flow gets at least its fair share, `min(up_src / n_src, down_dst / n_dst)`
//!    (first every flow above it is lowered to it, which always leaves room to raise the
//!    others to theirs);
//! 2. capacity either link leaves unused is split among its flows, each limited by what the
//!    link at the other end has left.
//!
//! Other flows keep their rates until one of their own links changes. The invariant
//! checked by [`Net::check_caps`] always holds: no uplink and no downlink ever carries more than
//! its capacity. The rule is not fully work-conserving (spare capacity two hops away is only
//! picked up at that node's next change), so it errs on the slow side of real TCP/QUIC sharing.

use std::fmt;

/// Index of a node (the driver decides what the numbers mean).
pub(crate) type NodeIdx = u32;

/// Handle of a running flow; `version` changes when the slot is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowId {
    pub(crate) slot: u32,
    pub(crate) version: u32,
}

/// A flow that may now finish earlier than its pending wake-up: the driver schedules a call
/// to [`Net::wake`] at `finish_ns`. Flows that slow down keep their wake-up, which then
/// finds bytes left and asks for a later one (fewer events than rescheduling every change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reschedule {
    pub(crate) id: FlowId,
    pub(crate) finish_ns: u64,
}

#[derive(Debug, Clone)]
struct NodeLinks {
    up: f64,
    down: f64,
    ups: Vec<u32>,
    downs: Vec<u32>,
}

#[derive(Debug, Clone)]
struct Flow {
    src: NodeIdx,
    dst: NodeIdx,
    /// Bytes left at `at_ns`.
    left: f64,
    /// Bytes per second.
    rate: f64,
    at_ns: u64,
    /// The earliest wake-up scheduled for this flow.
    due_ns: u64,
    version: u32,
    live: bool,
}

/// What a wake-up found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The flow delivered its last byte and is gone.
    Done,
    /// Not this flow's current wake-up, or bytes are left (a later one was requested).
    NotYet,
}

/// The network: nodes with capacities and the flows between them.
pub(crate) struct Net {
    nodes: Vec<NodeLinks>,
    flows: Vec<Flow>,
    free: Vec<u32>,
    /// Scratch: flows touched by the current rebalance.
    touched: Vec<u32>,
    old_rates: Vec<f64>,
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("nodes", &self.nodes.len())
            .field("flows", &(self.flows.len() - self.free.len()))
            .finish()
    }
}

/// Rates below this (bytes/s) count as equal; keeps float noise from rescheduling flows.
const EPS: f64 = 1e-6;

impl Net {
    pub(crate) fn new() -> Self {
        Self {
            nodes: Vec::new(),
            flows: Vec::new(),
            free: Vec::new(),
            touched: Vec::new(),
            old_rates: Vec::new(),
        }
    }

    /// Adds a node with capacities in bytes per second (at least 1) and returns its index.
    pub(crate) fn add_node(&mut self, up: u64, down: u64) -> NodeIdx {
        self.nodes.push(NodeLinks {
            up: up.max(1) as f64,
            down: down.max(1) as f64,
            ups: Vec::new(),
            downs: Vec::new(),
        });
        (self.nodes.len() - 1) as NodeIdx
    }

    /// Starts a flow of `bytes` from `src` to `dst` at `now_ns`. Every flow whose finish time
    /// changed, the new one included, is appended to `out`.
    pub(crate) fn start(
        &mut self,
        now_ns: u64,
        src: NodeIdx,
        dst: NodeIdx,
        bytes: u64,
        out: &mut Vec<Reschedule>,
    ) -> FlowId {
        let flow = Flow {
            src,
            dst,
            left: bytes as f64,
            rate: 0.0,
            at_ns: now_ns,
            due_ns: u64::MAX,
            version: 0,
            live: true,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                let version = self.flows[s as usize].version.wrapping_add(1);
                self.flows[s as usize] = Flow { version, ..flow };
                s
            }
            None => {
                self.flows.push(flow);
                (self.flows.len() - 1) as u32
            }
        };
        self.nodes[src as usize].ups.push(slot);
        self.nodes[dst as usize].downs.push(slot);
        self.rebalance(now_ns, src, dst, Some(slot), out);
        FlowId {
            slot,
            version: self.flows[slot as usize].version,
        }
    }

    /// Whether `id` is the current version of a running flow.
    pub(crate) fn is_current(&self, id: FlowId) -> bool {
        self.flows
            .get(id.slot as usize)
            .is_some_and(|f| f.live && f.version == id.version)
    }

    /// A wake-up scheduled for `id` at `now_ns` fired: ends the flow if its bytes are all
    /// sent, otherwise asks (through `out`) for a later wake-up.
    pub(crate) fn wake(&mut self, now_ns: u64, id: FlowId, out: &mut Vec<Reschedule>) -> Wake {
        if !self.is_current(id) || self.flows[id.slot as usize].due_ns != now_ns {
            return Wake::NotYet;
        }
        self.settle(id.slot, now_ns);
        let f = &mut self.flows[id.slot as usize];
        if f.left > 0.0 {
            f.due_ns = now_ns + finish_after_ns(f.left, f.rate).max(1);
            out.push(Reschedule {
                id,
                finish_ns: f.due_ns,
            });
            return Wake::NotYet;
        }
        self.end(now_ns, id, out);
        Wake::Done
    }

    /// Ends a flow (finished or aborted) at `now_ns` and re-shares its nodes' capacity.
    /// Returns the flow's endpoints, or `None` for a stale id.
    pub(crate) fn end(
        &mut self,
        now_ns: u64,
        id: FlowId,
        out: &mut Vec<Reschedule>,
    ) -> Option<(NodeIdx, NodeIdx)> {
        if !self.is_current(id) {
            return None;
        }
        let f = &mut self.flows[id.slot as usize];
        f.live = false;
        f.version = f.version.wrapping_add(1);
        let (src, dst) = (f.src, f.dst);
        self.nodes[src as usize].ups.retain(|&s| s != id.slot);
        self.nodes[dst as usize].downs.retain(|&s| s != id.slot);
        self.free.push(id.slot);
        self.rebalance(now_ns, src, dst, None, out);
        Some((src, dst))
    }

    /// Running flows out of `node`.
    pub(crate) fn uploads(&self, node: NodeIdx) -> impl Iterator<Item = FlowId> + '_ {
        self.ids(&self.nodes[node as usize].ups)
    }

    /// Running flows into `node`.
    pub(crate) fn downloads(&self, node: NodeIdx) -> impl Iterator<Item = FlowId> + '_ {
        self.ids(&self.nodes[node as usize].downs)
    }

    fn ids<'a>(&'a self, slots: &'a [u32]) -> impl Iterator<Item = FlowId> + 'a {
        slots.iter().map(|&s| FlowId {
            slot: s,
            version: self.flows[s as usize].version,
        })
    }

    /// Panics if any node's flows exceed its capacity (beyond float rounding). For tests.
    #[cfg(test)]
    pub(crate) fn check_caps(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            let up: f64 = n.ups.iter().map(|&s| self.flows[s as usize].rate).sum();
            let down: f64 = n.downs.iter().map(|&s| self.flows[s as usize].rate).sum();
            assert!(up <= n.up * (1.0 + 1e-9), "node {i} uplink {up} > {}", n.up);
            assert!(
                down <= n.down * (1.0 + 1e-9),
                "node {i} downlink {down} > {}",
                n.down
            );
        }
    }

    fn used_up(&self, node: NodeIdx) -> f64 {
        let n = &self.nodes[node as usize];
        n.ups.iter().map(|&s| self.flows[s as usize].rate).sum()
    }

    fn used_down(&self, node: NodeIdx) -> f64 {
        let n = &self.nodes[node as usize];
        n.downs.iter().map(|&s| self.flows[s as usize].rate).sum()
    }

    fn fair(&self, slot: u32) -> f64 {
        let f = &self.flows[slot as usize];
        let s = &self.nodes[f.src as usize];
        let d = &self.nodes[f.dst as usize];
        (s.up / s.ups.len() as f64).min(d.down / d.downs.len() as f64)
    }

    /// Brings `left` up to `now_ns` at the current rate.
    fn settle(&mut self, slot: u32, now_ns: u64) {
        let f = &mut self.flows[slot as usize];
        let dt = now_ns.saturating_sub(f.at_ns) as f64 * 1e-9;
        f.left = (f.left - f.rate * dt).max(0.0);
        f.at_ns = now_ns;
    }

    fn rebalance(
        &mut self,
        now_ns: u64,
        a: NodeIdx,
        b: NodeIdx,
        new: Option<u32>,
        out: &mut Vec<Reschedule>,
    ) {
        let mut touched = std::mem::take(&mut self.touched);
        touched.clear();
        // Only the uplink of `a` and the downlink of `b` changed.
        touched.extend(&self.nodes[a as usize].ups);
        touched.extend(&self.nodes[b as usize].downs);
        touched.sort_unstable();
        touched.dedup();
        let mut old = std::mem::take(&mut self.old_rates);
        old.clear();
        for &s in &touched {
            self.settle(s, now_ns);
            old.push(self.flows[s as usize].rate);
        }
        // 1. Nobody above its fair share, then everybody up to it (always room: see the
        // module docs).
        for &s in &touched {
            let fair = self.fair(s);
            let f = &mut self.flows[s as usize];
            f.rate = f.rate.min(fair);
        }
        for &s in &touched {
            let fair = self.fair(s);
            let (src, dst, rate) = {
                let f = &self.flows[s as usize];
                (f.src, f.dst, f.rate)
            };
            if fair > rate {
                let room_up = self.nodes[src as usize].up - self.used_up(src);
                let room_down = self.nodes[dst as usize].down - self.used_down(dst);
                self.flows[s as usize].rate =
                    rate + (fair - rate).min(room_up).min(room_down).max(0.0);
            }
        }
        // 2. Spare capacity of the dirty nodes to flows whose other end has room.
        self.fill(a, true);
        self.fill(b, false);
        for (k, &s) in touched.iter().enumerate() {
            let f = &mut self.flows[s as usize];
            let faster = f.rate > old[k] + EPS || Some(s) == new;
            if !faster {
                continue;
            }
            let finish_ns = now_ns + finish_after_ns(f.left, f.rate);
            if finish_ns >= f.due_ns {
                continue;
            }
            f.due_ns = finish_ns;
            out.push(Reschedule {
                id: FlowId {
                    slot: s,
                    version: f.version,
                },
                finish_ns,
            });
        }
        self.touched = touched;
        self.old_rates = old;
    }

    /// Splits `node`'s unused upload (`up`) or download capacity among its flows, each limited
    /// by the room left at its other end.
    fn fill(&mut self, node: NodeIdx, up: bool) {
        let n = &self.nodes[node as usize];
        let (cap, slots) = if up {
            (n.up, &n.ups)
        } else {
            (n.down, &n.downs)
        };
        if slots.is_empty() {
            return;
        }
        let used: f64 = slots.iter().map(|&s| self.flows[s as usize].rate).sum();
        let mut spare = cap - used;
        if spare <= EPS {
            return;
        }
        // (room at the other end, slot), smallest room first: classic water-filling.
        let mut rooms: Vec<(f64, u32)> = slots
            .iter()
            .map(|&s| {
                let f = &self.flows[s as usize];
                let room = if up {
                    self.nodes[f.dst as usize].down - self.used_down(f.dst)
                } else {
                    self.nodes[f.src as usize].up - self.used_up(f.src)
                };
                (room.max(0.0), s)
            })
            .collect();
        rooms.sort_unstable_by(|x, y| x.0.total_cmp(&y.0));
        let mut left = rooms.len();
        for (_, s) in rooms {
            // Room now: two flows may share the other end (several pieces from the seed).
            let f = &self.flows[s as usize];
            let room = if up {
                self.nodes[f.dst as usize].down - self.used_down(f.dst)
            } else {
                self.nodes[f.src as usize].up - self.used_up(f.src)
            };
            let give = room.max(0.0).min(spare / left as f64);
            self.flows[s as usize].rate += give;
            spare -= give;
            left -= 1;
        }
    }
}

/// Nanoseconds to move `bytes` at `rate` bytes/s, rounded up; effectively never for rate 0.
fn finish_after_ns(bytes: f64, rate: f64) -> u64 {
    if bytes <= 0.0 {
        return 0;
    }
    if rate <= EPS {
        return u64::MAX / 4;
    }
    (bytes / rate * 1e9).ceil().min((u64::MAX / 4) as f64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finish(out: &[Reschedule], id: FlowId) -> u64 {
        out.iter()
            .rev()
            .find(|r| r.id.slot == id.slot)
            .map(|r| r.finish_ns)
            .unwrap()
    }

    #[test]
    fn one_flow_runs_at_the_narrower_link() {
        let mut net = Net::new();
        let a = net.add_node(100, 1000);
        let b = net.add_node(1000, 50);
        let mut out = Vec::new();
        let f = net.start(0, a, b, 100, &mut out);
        // 100 bytes at min(100, 50) = 50 B/s: 2 s.
        assert_eq!(finish(&out, f), 2_000_000_000);
        net.check_caps();
    }

    #[test]
    fn uplink_is_shared_and_freed() {
        let mut net = Net::new();
        let s = net.add_node(100, 100);
        let x = net.add_node(100, 1000);
        let y = net.add_node(100, 1000);
        let mut out = Vec::new();
        let f1 = net.start(0, s, x, 100, &mut out);
        assert_eq!(finish(&out, f1), 1_000_000_000);
        out.clear();
        // Half a second later a second flow halves the first one's rate. The first keeps its
        // wake-up at 1 s, which finds 25 bytes left at 50 B/s: a new one at 1.5 s.
        let f2 = net.start(500_000_000, s, y, 100, &mut out);
        assert_eq!(out.len(), 1, "only the new flow is scheduled: {out:?}");
        assert_eq!(finish(&out, f2), 2_500_000_000);
        out.clear();
        assert_eq!(net.wake(1_000_000_000, f1, &mut out), Wake::NotYet);
        assert_eq!(finish(&out, f1), 1_500_000_000);
        net.check_caps();
        out.clear();
        // A stale wake-up is ignored.
        assert_eq!(net.wake(1_200_000_000, f1, &mut out), Wake::NotYet);
        assert!(out.is_empty());
        // When the first ends, the second gets the whole uplink: 50 bytes left at 100 B/s,
        // earlier than its pending wake-up, so it is rescheduled.
        assert_eq!(net.wake(1_500_000_000, f1, &mut out), Wake::Done);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].finish_ns, 2_000_000_000);
        assert_eq!(net.wake(2_000_000_000, f2, &mut out), Wake::Done);
        net.check_caps();
    }

    #[test]
    fn spare_capacity_goes_where_there_is_room() {
        let mut net = Net::new();
        let a = net.add_node(100, 0);
        let busy = net.add_node(100, 0);
        let b = net.add_node(0, 100);
        let c = net.add_node(0, 100);
        let mut out = Vec::new();
        // b downloads from a and from busy; busy also uploads to c.
        net.start(0, busy, c, 1000, &mut out);
        net.start(0, busy, b, 1000, &mut out);
        net.start(0, a, b, 1000, &mut out);
        net.check_caps();
        // b's fair share is 50 per flow; busy's is 50 per flow; a can give b more than 50
        // but b's downlink is full, so nothing exceeds capacity.
        let down_b: f64 = net.used_down(b);
        assert!((down_b - 100.0).abs() < 1e-6, "b receives {down_b}");
    }

    #[test]
    fn random_traffic_never_exceeds_a_link() {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(9);
        let mut net = Net::new();
        for _ in 0..12 {
            net.add_node(rng.random_range(1..1000), rng.random_range(1..1000));
        }
        let mut flows = Vec::new();
        let mut out = Vec::new();
        let mut now = 0;
        for _ in 0..2000 {
            now += rng.random_range(0..1_000_000);
            if flows.is_empty() || rng.random_bool(0.6) {
                let a = rng.random_range(0..12);
                let b = (a + rng.random_range(1..12)) % 12;
                flows.push(net.start(now, a, b, rng.random_range(1..10_000), &mut out));
            } else {
                let f = flows.swap_remove(rng.random_range(0..flows.len()));
                net.end(now, f, &mut out);
            }
            net.check_caps();
        }
    }

    #[test]
    fn stale_ids_are_ignored() {
        let mut net = Net::new();
        let a = net.add_node(10, 10);
        let b = net.add_node(10, 10);
        let mut out = Vec::new();
        let f = net.start(0, a, b, 10, &mut out);
        assert!(net.end(1, f, &mut out).is_some());
        assert!(net.end(2, f, &mut out).is_none());
        assert!(!net.is_current(f));
        assert_eq!(net.uploads(a).count(), 0);
    }
}
