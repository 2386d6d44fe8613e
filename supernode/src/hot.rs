//! Pieces just stored, kept in memory to serve without a disk read or a second hash.
//!
//! A piece fetched from the origin is hashed once (its digest is what the supernode vouches
//! for) and written. Peers ask for it moments later — in a flash crowd every peer's first
//! pieces come from the supernode while the fetch is still running — and reading it back
//! from disk costs a copy and a sha256 of every byte (`Store::read_piece` re-verifies what it
//! reads). The bytes that were hashed are kept here instead, up to `cdn.hot_pieces_memory`,
//! oldest first out; a piece not here is read from disk and verified as before.
//!
//! Entries are keyed by the task's serial, not its id: a task dropped after a failed fetch
//! and registered again is a new [`crate::task::Task`] with a new serial, so bytes of the
//! failed fetch can never be served for it. A task's entries are dropped with the task.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use parking_lot::Mutex;

/// The hot pieces of every task, bounded in bytes.
#[derive(Debug)]
pub struct HotPieces {
    budget: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    pieces: HashMap<(u64, u32), Bytes>,
    /// Insertion order, oldest first; may name entries already removed.
    order: VecDeque<(u64, u32)>,
    bytes: u64,
}

impl HotPieces {
    /// Keeps at most `budget` bytes; `0` keeps nothing.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Keeps piece `index` of task `serial`, hashed and stored moments ago, evicting the
    /// oldest pieces to stay within the budget. A piece larger than the budget is not kept.
    pub fn insert(&self, serial: u64, index: u32, data: Bytes) {
        let len = data.len() as u64;
        if len > self.budget {
            return;
        }
        let mut inner = self.inner.lock();
        if let Some(old) = inner.pieces.insert((serial, index), data) {
            inner.bytes -= old.len() as u64;
        } else {
            inner.order.push_back((serial, index));
        }
        inner.bytes += len;
        while inner.bytes > self.budget {
            let Some(key) = inner.order.pop_front() else {
                break;
            };
            if let Some(old) = inner.pieces.remove(&key) {
                inner.bytes -= old.len() as u64;
            }
        }
    }

    /// Piece `index` of task `serial`, if it is still in memory (a cheap clone).
    pub fn get(&self, serial: u64, index: u32) -> Option<Bytes> {
        self.inner.lock().pieces.get(&(serial, index)).cloned()
    }

    /// Drops every piece of task `serial` (its fetch failed, or the task is gone).
    pub fn forget_task(&self, serial: u64) {
        let mut inner = self.inner.lock();
        let Inner {
            pieces,
            order,
            bytes,
        } = &mut *inner;
        pieces.retain(|&(s, _), data| {
            let keep = s != serial;
            if !keep {
                *bytes -= data.len() as u64;
            }
            keep
        });
        order.retain(|&(s, _)| s != serial);
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(len: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; len])
    }

    #[test]
    fn keeps_the_newest_pieces_within_the_budget() {
        let hot = HotPieces::new(3 * 1024);
        for i in 0..5 {
            hot.insert(1, i, piece(1024, i as u8));
        }
        assert_eq!(hot.bytes(), 3 * 1024);
        assert!(hot.get(1, 0).is_none());
        assert!(hot.get(1, 1).is_none());
        for i in 2..5 {
            assert_eq!(hot.get(1, i).unwrap(), piece(1024, i as u8));
        }
    }

    #[test]
    fn tasks_are_apart_and_forgetting_one_frees_its_bytes() {
        let hot = HotPieces::new(1 << 20);
        hot.insert(1, 0, piece(100, 1));
        hot.insert(2, 0, piece(200, 2));
        assert_eq!(hot.get(2, 0).unwrap(), piece(200, 2));
        hot.forget_task(1);
        assert!(hot.get(1, 0).is_none());
        assert_eq!(hot.bytes(), 200);
        // Inserting after a forget still evicts correctly (the order holds no stale keys).
        let hot = HotPieces::new(250);
        hot.insert(1, 0, piece(100, 1));
        hot.forget_task(1);
        hot.insert(2, 0, piece(200, 2));
        hot.insert(2, 1, piece(50, 3));
        assert_eq!(hot.bytes(), 250);
        assert!(hot.get(2, 0).is_some());
    }

    #[test]
    fn a_zero_budget_keeps_nothing_and_a_replaced_piece_is_counted_once() {
        let off = HotPieces::new(0);
        off.insert(1, 0, piece(1, 1));
        assert!(off.get(1, 0).is_none());
        assert_eq!(off.bytes(), 0);
        let hot = HotPieces::new(1000);
        hot.insert(1, 0, piece(300, 1));
        hot.insert(1, 0, piece(400, 2));
        assert_eq!(hot.bytes(), 400);
        assert_eq!(hot.get(1, 0).unwrap(), piece(400, 2));
    }
}
