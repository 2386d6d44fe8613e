use std::collections::HashMap;
use std::time::Duration;

use super::*;

/// Peer `i`'s address: a host of its own.
fn addr(i: u64) -> SocketAddr {
    SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 1000 + i as u16))
}

fn host(i: u64) -> PeerHost {
    PeerHost::of(addr(i))
}

fn sched(pieces: u32) -> (TaskScheduler, Instant) {
    (
        TaskScheduler::new(pieces, SchedulerConfig::default(), 7),
        Instant::now(),
    )
}

fn join_all(s: &mut TaskScheduler, now: Instant, ids: impl IntoIterator<Item = u64>) {
    for i in ids {
        s.handle_join(now, PeerId(i), addr(i), host(i)).unwrap();
    }
}

fn ids(parents: &[Parent]) -> Vec<PeerId> {
    parents.iter().map(|p| p.id).collect()
}

#[test]
fn never_returns_self_and_respects_k() {
    let (mut s, t) = sched(16);
    join_all(&mut s, t, 1..=20);
    for i in 1..=20 {
        let p = s.parents(t, PeerId(i)).unwrap();
        assert_eq!(p.len(), 6);
        assert!(!ids(&p).contains(&PeerId(i)));
        let mut d = ids(&p);
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 6, "duplicates in {p:?}");
    }
    // A lone peer gets no parents.
    let (mut s, t) = sched(16);
    join_all(&mut s, t, [1]);
    assert!(s.parents(t, PeerId(1)).unwrap().is_empty());
}

#[test]
fn unknown_peer_and_bad_piece_index() {
    let (mut s, t) = sched(4);
    assert_eq!(
        s.parents(t, PeerId(1)),
        Err(SchedError::UnknownPeer(PeerId(1)))
    );
    assert_eq!(
        s.handle_sync(t, PeerId(1), &[0], 0, false),
        Err(SchedError::UnknownPeer(PeerId(1)))
    );
    join_all(&mut s, t, [1]);
    assert_eq!(
        s.handle_sync(t, PeerId(1), &[0, 4], 0, false),
        Err(SchedError::PieceOutOfRange {
            piece: 4,
            piece_count: 4
        })
    );
    // Nothing changed on error.
    assert_eq!(s.holders(0), 0);
    s.handle_sync(t, PeerId(1), &[0, 0, 3], 0, false).unwrap();
    assert_eq!((s.holders(0), s.holders(3), s.holders(1)), (1, 1, 0));
    s.handle_sync(t, PeerId(1), &[], 0, true).unwrap();
    assert_eq!(s.holders(1), 1);
    assert_eq!(s.holders(99), 0);
}

#[test]
fn expired_peers_are_dropped() {
    let (mut s, t0) = sched(4);
    join_all(&mut s, t0, [1, 2]);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(15)));
    let t1 = t0 + Duration::from_secs(10);
    s.handle_sync(t1, PeerId(1), &[0], 0, false).unwrap();
    let t2 = t0 + Duration::from_secs(15);
    s.handle_timeout(t2);
    assert_eq!(s.poll_event(), Some(SchedEvent::PeerExpired(PeerId(2))));
    assert_eq!(s.poll_event(), None);
    assert_eq!(s.peer_count(), 1);
    assert_eq!(s.poll_timeout(), Some(t1 + Duration::from_secs(15)));
    join_all(&mut s, t2, [3]);
    assert_eq!(ids(&s.parents(t2, PeerId(3)).unwrap()), vec![PeerId(1)]);
    s.handle_timeout(t1 + Duration::from_secs(15));
    assert_eq!(s.poll_event(), Some(SchedEvent::PeerExpired(PeerId(1))));
    assert_eq!(s.holders(0), 0);
    assert!(s.parents(t2, PeerId(3)).unwrap().is_empty());
    assert_eq!(
        s.handle_sync(t2, PeerId(2), &[], 0, false),
        Err(SchedError::UnknownPeer(PeerId(2)))
    );
}

#[test]
fn rejoin_updates_addr_and_liveness() {
    let (mut s, t0) = sched(4);
    join_all(&mut s, t0, [1, 2]);
    s.handle_sync(t0, PeerId(1), &[1], 0, false).unwrap();
    let t1 = t0 + Duration::from_secs(10);
    let new_addr = SocketAddr::from(([10, 9, 9, 9], 4242));
    s.handle_join(t1, PeerId(1), new_addr, host(1)).unwrap();
    s.handle_timeout(t0 + Duration::from_secs(16));
    assert_eq!(s.poll_event(), Some(SchedEvent::PeerExpired(PeerId(2))));
    assert_eq!(s.peer_count(), 1);
    assert_eq!(s.holders(1), 1);
    join_all(&mut s, t1, [3]);
    let p = s.parents(t1, PeerId(3)).unwrap();
    assert_eq!(p[0].addr, new_addr);
    assert!(p[0].pieces.get(1));
}

#[test]
fn two_distinct_reporters_ban() {
    let (mut s, t) = sched(4);
    join_all(&mut s, t, 1..=4);
    s.handle_sync(t, PeerId(4), &[0, 1], 0, false).unwrap();
    // Self-reports, strangers and repeated reports do not count.
    s.handle_bad_piece(t, PeerId(4), PeerId(4), 0);
    s.handle_bad_piece(t, PeerId(99), PeerId(4), 0);
    s.handle_bad_piece(t, PeerId(1), PeerId(4), 0);
    s.handle_bad_piece(t, PeerId(1), PeerId(4), 1);
    assert!(!s.is_banned(PeerId(4)));
    assert_eq!(s.poll_event(), None);
    s.handle_bad_piece(t, PeerId(2), PeerId(4), 0);
    assert!(s.is_banned(PeerId(4)));
    assert_eq!(s.poll_event(), Some(SchedEvent::PeerBanned(PeerId(4))));
    assert_eq!(s.holders(0), 0);
    assert_eq!(s.peer_count(), 3);
    for i in 1..=3 {
        assert!(!ids(&s.parents(t, PeerId(i)).unwrap()).contains(&PeerId(4)));
    }
    // Banned peers cannot come back, under their id or a new one from the same host.
    assert_eq!(
        s.handle_join(t, PeerId(4), addr(4), host(4)),
        Err(SchedError::Banned(PeerId(4)))
    );
    assert_eq!(
        s.handle_join(t, PeerId(44), addr(4), host(4)),
        Err(SchedError::Banned(PeerId(44)))
    );
    assert!(s.is_host_banned(host(4)));
    assert_eq!(s.peer_count(), 3);
    assert_eq!(s.parents(t, PeerId(4)), Err(SchedError::Banned(PeerId(4))));
}

#[test]
fn reports_count_once_per_host_and_a_ban_takes_the_whole_host() {
    let (mut s, t) = sched(4);
    join_all(&mut s, t, 1..=3);
    // Peer 10 lies; peers 11 and 12 are more ids of reporter 1's host, peer 13 another id
    // of the liar's host.
    s.handle_join(t, PeerId(10), addr(10), host(10)).unwrap();
    s.handle_join(t, PeerId(11), addr(1), host(1)).unwrap();
    s.handle_join(t, PeerId(12), addr(1), host(1)).unwrap();
    s.handle_join(t, PeerId(13), addr(10), host(10)).unwrap();
    for reporter in [1, 11, 12] {
        s.handle_bad_piece(t, PeerId(reporter), PeerId(10), 0);
    }
    // Its own host's word against it (or for another of its ids) does not count either.
    s.handle_bad_piece(t, PeerId(13), PeerId(10), 0);
    assert!(
        !s.is_banned(PeerId(10)),
        "one host reported, under three ids"
    );
    assert_eq!(s.poll_event(), None);
    // A second host: banned, with every id of its host.
    s.handle_bad_piece(t, PeerId(2), PeerId(10), 0);
    let mut events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
    events.sort_by_key(|e| match e {
        SchedEvent::PeerBanned(p) | SchedEvent::PeerExpired(p) | SchedEvent::PeerDemoted(p) => p.0,
    });
    assert_eq!(
        events,
        [
            SchedEvent::PeerBanned(PeerId(10)),
            SchedEvent::PeerBanned(PeerId(13))
        ]
    );
    assert!(!s.is_live(PeerId(13)));
    assert!(s.is_live(PeerId(11)), "the reporters stay");
    assert_eq!(
        s.handle_join(t, PeerId(14), addr(10), host(10)),
        Err(SchedError::Banned(PeerId(14)))
    );
}

#[test]
fn an_id_in_use_cannot_be_taken_from_another_host() {
    let (mut s, t) = sched(4);
    join_all(&mut s, t, [1, 2]);
    s.handle_sync(t, PeerId(1), &[0], 0, false).unwrap();
    let seed = Bitmap::full(4);
    // Another host joining, or syncing, as peer 1 is refused, and changes nothing.
    assert_eq!(
        s.handle_join(t, PeerId(1), addr(3), host(3)),
        Err(SchedError::IdTaken(PeerId(1)))
    );
    assert_eq!(
        s.handle_sync_request(
            t,
            PeerId(1),
            addr(3),
            host(3),
            &sync_input(&[1], &[], &seed)
        ),
        Err(SchedError::IdTaken(PeerId(1)))
    );
    assert_eq!(s.holders(1), 0);
    let p = s.parents(t, PeerId(2)).unwrap();
    assert_eq!(p[0].addr, addr(1), "peer 1's address was not redirected");
    // Its own host may re-join (a retried registration), and once it has left the id is free.
    s.handle_join(t, PeerId(1), addr(1), host(1)).unwrap();
    s.handle_leave(t, PeerId(1));
    s.handle_join(t, PeerId(1), addr(3), host(3)).unwrap();
}

#[test]
fn never_banned_or_gone() {
    let (mut s, t) = sched(8);
    join_all(&mut s, t, 1..=30);
    s.handle_leave(t, PeerId(5));
    s.handle_leave(t, PeerId(5));
    s.handle_bad_piece(t, PeerId(1), PeerId(6), 0);
    s.handle_bad_piece(t, PeerId(2), PeerId(6), 0);
    for _ in 0..10 {
        for i in (1..=30).filter(|i| ![5, 6].contains(i)) {
            let p = ids(&s.parents(t, PeerId(i)).unwrap());
            assert!(!p.contains(&PeerId(5)) && !p.contains(&PeerId(6)));
            assert!(!p.contains(&PeerId(i)));
        }
    }
}

#[test]
fn sticky_parents() {
    let (mut s, t) = sched(32);
    join_all(&mut s, t, 1..=40);
    // Everyone but peer 1 holds 8 pieces peer 1 lacks, so old parents stay useful.
    let block = |i: u64| -> Vec<u32> {
        let start = (i % 4) as u32 * 8;
        (start..start + 8).collect()
    };
    for i in 2..=40 {
        s.handle_sync(t, PeerId(i), &block(i), 0, false).unwrap();
    }
    let first = ids(&s.parents(t, PeerId(1)).unwrap());
    for _ in 0..5 {
        let again = ids(&s.parents(t, PeerId(1)).unwrap());
        // At most one parent is swapped per call, for coverage.
        let kept = again.iter().filter(|p| first.contains(p)).count();
        assert!(kept >= 5, "{first:?} vs {again:?}");
    }
    // A parent about to run dry (one useful piece left) gives way once others offer more,
    // here a peer holding everything.
    let current = ids(&s.parents(t, PeerId(1)).unwrap());
    let mut got = block(current[1].0);
    got.pop();
    s.handle_sync(t, PeerId(1), &got, 0, false).unwrap();
    join_all(&mut s, t, [99]);
    s.handle_sync(t, PeerId(99), &[], 0, true).unwrap();
    let after = ids(&s.parents(t, PeerId(1)).unwrap());
    assert!(!after.contains(&current[1]), "{current:?} vs {after:?}");
    assert!(after.contains(&PeerId(99)), "{after:?}");
    // A dead parent is replaced.
    s.handle_leave(t, after[0]);
    let later = ids(&s.parents(t, PeerId(1)).unwrap());
    assert_eq!(later.len(), 6);
    assert!(!later.contains(&after[0]));
}

#[test]
fn prefers_parents_with_missing_pieces() {
    let (mut s, t) = sched(8);
    join_all(&mut s, t, 1..=30);
    // Peers 2..=7 are complete; 8..=30 hold nothing and are done-less.
    for i in 2..=7 {
        s.handle_sync(t, PeerId(i), &[], 0, true).unwrap();
    }
    let p = ids(&s.parents(t, PeerId(1)).unwrap());
    assert!(p.iter().all(|id| (2..=7).contains(&id.0)), "{p:?}");
}

#[test]
fn loaded_parents_chosen_less() {
    let mut counts: HashMap<PeerId, u32> = HashMap::new();
    for seed in 0..20 {
        let mut s = TaskScheduler::new(8, SchedulerConfig::default(), seed);
        let t = Instant::now();
        join_all(&mut s, t, 1..=40);
        // 1..=10 are complete parents; half of them are saturated.
        for i in 1..=10 {
            let uploading = if i <= 5 { 4 } else { 0 };
            s.handle_sync(t, PeerId(i), &[], uploading, true).unwrap();
        }
        for child in 11..=40 {
            for p in s.parents(t, PeerId(child)).unwrap() {
                *counts.entry(p.id).or_default() += 1;
            }
        }
    }
    let busy: u32 = (1..=5)
        .map(|i| counts.get(&PeerId(i)).copied().unwrap_or(0))
        .sum();
    let idle: u32 = (6..=10)
        .map(|i| counts.get(&PeerId(i)).copied().unwrap_or(0))
        .sum();
    assert!(busy * 2 < idle, "busy {busy} idle {idle}");
}

#[test]
fn flash_crowd_spreads_children() {
    let (mut s, t) = sched(64);
    let n = 10_000;
    join_all(&mut s, t, 1..=n);
    let mut children: HashMap<PeerId, u32> = HashMap::new();
    for i in 1..=n {
        for p in s.parents(t, PeerId(i)).unwrap() {
            *children.entry(p.id).or_default() += 1;
        }
    }
    let max = children.values().copied().max().unwrap();
    // 60,000 assignments over 10,000 peers: 6 each on average.
    assert!(max <= 15, "max children {max}");
    assert!(children.len() > 9_000);
}

#[test]
fn seed_offers_each_missing_piece_once() {
    let (mut s, t) = sched(8);
    join_all(&mut s, t, 1..=3);
    let all = Bitmap::full(8);
    // Slow start: nothing is out yet, so one piece at a time.
    let a = s.seed_pieces(t, PeerId(1), &all, &[]).unwrap();
    assert_eq!(a.count(), 1);
    assert_eq!(s.seed_pieces(t, PeerId(2), &all, &[]).unwrap().count(), 0);
    // Sent: still on its way, so it still holds up the next offers (and stays 1's).
    let p = a.iter_ones().next().unwrap();
    s.handle_seed_sent(t, PeerId(2), p); // not peer 2's offer: ignored
    assert_eq!(s.seed_pieces(t, PeerId(2), &all, &[]).unwrap().count(), 0);
    s.handle_seed_sent(t, PeerId(1), p);
    assert_eq!(s.seed_pieces(t, PeerId(2), &all, &[]).unwrap().count(), 0);
    assert_eq!(s.seed_pieces(t, PeerId(1), &all, &[]).unwrap(), a);
    // Reported: held, it comes from peers now, and one piece out allows two offers.
    s.handle_sync(t, PeerId(1), &[p], 0, false).unwrap();
    let b = s.seed_pieces(t, PeerId(2), &all, &[]).unwrap();
    assert_eq!(b.count(), 2);
    assert!(!b.get(p), "{b:?}");
    // Repeated asks get the same reservation back.
    assert_eq!(s.seed_pieces(t, PeerId(2), &all, &[]).unwrap(), b);
    assert_eq!(s.seed_pieces(t, PeerId(1), &all, &[]).unwrap().count(), 0);
    // Expired reservations are re-offered.
    let later = t + SEED_OFFER_TTL;
    s.handle_sync(later, PeerId(3), &[], 0, false).unwrap();
    let c = s.seed_pieces(later, PeerId(3), &all, &[]).unwrap();
    // One piece held: up to two open offers, and b's have expired.
    assert_eq!(c.count(), 2);
    assert!(!c.get(p));
    // Only pieces the seed has are offered.
    assert_eq!(
        s.seed_pieces(later, PeerId(2), &Bitmap::new(8), &[])
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        s.seed_pieces(t, PeerId(9), &all, &[]),
        Err(SchedError::UnknownPeer(PeerId(9)))
    );
}

#[test]
fn the_seed_sends_a_piece_nobody_holds_only_to_the_peer_it_is_offered_to() {
    let (mut s, t) = sched(8);
    join_all(&mut s, t, 1..=2);
    let all = Bitmap::full(8);
    let a = s.seed_pieces(t, PeerId(1), &all, &[]).unwrap();
    let p = a.iter_ones().next().unwrap();
    // Offered to 1: sent to 1, not to 2 (whose request is stale or out of turn).
    assert!(s.seed_send_allowed(t, PeerId(1), p));
    assert!(!s.seed_send_allowed(t, PeerId(2), p));
    // Offered to 2 once 1's offer expired unfetched: now 1 is the late one.
    let later = t + SEED_OFFER_TTL;
    let b = s.seed_pieces(later, PeerId(2), &all, &[]).unwrap();
    assert!(b.get(p), "{b:?}");
    assert!(s.seed_send_allowed(later, PeerId(2), p));
    assert!(!s.seed_send_allowed(later, PeerId(1), p));
    // Sent, it stays 2's until reported; once held, anyone may have it from the seed.
    s.handle_seed_sent(later, PeerId(2), p);
    assert!(!s.seed_send_allowed(later, PeerId(1), p));
    s.handle_sync(later, PeerId(2), &[p], 0, false).unwrap();
    assert!(s.seed_send_allowed(later, PeerId(1), p));
    // A piece never offered, or out of range, is not held back here.
    let q = (0..8).find(|&q| q != p && !a.get(q) && !b.get(q)).unwrap();
    assert!(s.seed_send_allowed(later, PeerId(1), q));
    assert!(s.seed_send_allowed(later, PeerId(1), 99));
}

#[test]
fn seed_offers_are_capped() {
    let cfg = SchedulerConfig {
        seed_offers: 3,
        ..SchedulerConfig::default()
    };
    let (mut s, t) = (TaskScheduler::new(16, cfg, 7), Instant::now());
    join_all(&mut s, t, 1..=3);
    s.handle_sync(t, PeerId(1), &(0..8).collect::<Vec<_>>(), 0, false)
        .unwrap();
    let all = Bitmap::full(16);
    // Eight pieces are out, but at most three offers at once.
    let b = s.seed_pieces(t, PeerId(2), &all, &[]).unwrap();
    assert_eq!(b.count(), 3);
    assert!(b.iter_ones().all(|p| p >= 8));
    assert_eq!(s.seed_pieces(t, PeerId(3), &all, &[]).unwrap().count(), 0);
    // Sent is not delivered: the piece still counts until its receiver reports it.
    let first = b.iter_ones().next().unwrap();
    s.handle_seed_sent(t, PeerId(2), first);
    assert_eq!(s.seed_pieces(t, PeerId(3), &all, &[]).unwrap().count(), 0);
    s.handle_sync(t, PeerId(2), &[first], 0, false).unwrap();
    let c = s.seed_pieces(t, PeerId(3), &all, &[]).unwrap();
    assert_eq!(c.count(), 1);
    assert_eq!(c.count_not_in(&b), 1);
}

#[test]
fn a_departed_peers_offers_are_offered_again_at_once() {
    let (mut s, t) = sched(4);
    join_all(&mut s, t, 1..=2);
    let all = Bitmap::full(4);
    let a = s.seed_pieces(t, PeerId(1), &all, &[]).unwrap();
    let p = a.iter_ones().next().unwrap();
    s.handle_seed_sent(t, PeerId(1), p);
    s.handle_sync(t, PeerId(1), &[p], 0, false).unwrap();
    // Peer 1 leaves with the only copy: the piece is fresh again, for anyone, right away.
    s.handle_leave(t, PeerId(1));
    assert_eq!(s.holders(p), 0);
    let mut offered = Bitmap::new(4);
    for _ in 0..4 {
        let b = s.seed_pieces(t, PeerId(2), &all, &[]).unwrap();
        for q in b.iter_ones() {
            s.handle_seed_sent(t, PeerId(2), q);
            offered.set(q);
        }
    }
    assert!(offered.get(p), "{offered:?}");
}

/// Sends every offered piece and reports it held, as a peer that drains its offers would.
fn drain(s: &mut TaskScheduler, t: Instant, peer: u64, offer: &Bitmap) {
    let pieces: Vec<u32> = offer.iter_ones().collect();
    for &p in &pieces {
        s.handle_seed_sent(t, PeerId(peer), p);
    }
    s.handle_sync(t, PeerId(peer), &pieces, 0, false).unwrap();
}

#[test]
fn a_lone_peer_gets_the_whole_offer_budget_lowest_first() {
    let (mut s, t) = sched(64);
    join_all(&mut s, t, [1]);
    let all = Bitmap::full(64);
    // Slow start, then the whole budget (16) for the only peer downloading, not the 4 of a
    // crowd: it can queue requests behind the ones in flight.
    let mut sizes = Vec::new();
    let mut next = 0;
    for _ in 0..6 {
        let offer = s.seed_pieces(t, PeerId(1), &all, &[]).unwrap();
        let got: Vec<u32> = offer.iter_ones().collect();
        let want: Vec<u32> = (next..next + got.len() as u32).collect();
        assert_eq!(got, want, "lowest index first");
        next += got.len() as u32;
        sizes.push(got.len());
        drain(&mut s, t, 1, &offer);
    }
    assert_eq!(sizes, [1, 2, 4, 8, 16, 16]);
}

#[test]
fn a_crowd_shares_the_offer_budget() {
    let (mut s, t) = sched(64);
    join_all(&mut s, t, 1..=8);
    // Eight pieces out already, so the slow start allows the whole budget of 16.
    s.handle_sync(t, PeerId(1), &(56..64).collect::<Vec<_>>(), 0, false)
        .unwrap();
    let all = Bitmap::full(64);
    // 16 over 7 peers still downloading is 2 each, but never fewer than the upload slots.
    let a = s.seed_pieces(t, PeerId(2), &all, &[]).unwrap();
    assert_eq!(a.count(), 4);
    // Asking again gets the same reservation, nothing more, until some are reported (sent
    // is not enough: the bytes are still on the seed's uplink).
    assert_eq!(s.seed_pieces(t, PeerId(2), &all, &[]).unwrap(), a);
    let first = a.iter_ones().next().unwrap();
    s.handle_seed_sent(t, PeerId(2), first);
    assert_eq!(s.seed_pieces(t, PeerId(2), &all, &[]).unwrap(), a);
    s.handle_sync(t, PeerId(2), &[first], 0, false).unwrap();
    let after = s.seed_pieces(t, PeerId(2), &all, &[]).unwrap();
    assert_eq!(after.count(), 4);
    assert!(!after.get(first));
    // Only peers still downloading count: with peer 1 the only other one, peer 2's share is
    // 8 offers. It holds 4, so it gets 4 more.
    for p in 3..=8 {
        s.handle_leave(t, PeerId(p));
    }
    let b = s.seed_pieces(t, PeerId(2), &all, &[]).unwrap();
    assert_eq!(b.count(), 8, "{b:?}");
    assert_eq!(b.count_not_in(&after), 4);
}

#[test]
fn a_sent_piece_stays_reserved_while_it_travels() {
    let (mut s, t) = sched(8);
    join_all(&mut s, t, 1..=2);
    s.handle_sync(t, PeerId(2), &[7], 0, false).unwrap();
    let all = Bitmap::full(8);
    let a = s.seed_pieces(t, PeerId(1), &all, &[]).unwrap();
    let mut it = a.iter_ones();
    let (sent, unsent) = (it.next().unwrap(), it.next().unwrap());
    // Sent just before its offer would have expired: the bytes are on their way.
    let t1 = t + SEED_OFFER_TTL - Duration::from_millis(1);
    s.handle_seed_sent(t1, PeerId(1), sent);
    let later = t + SEED_OFFER_TTL + Duration::from_secs(10);
    s.handle_sync(later, PeerId(2), &[], 0, false).unwrap();
    let b = s.seed_pieces(later, PeerId(2), &all, &[]).unwrap();
    assert!(!b.get(sent), "a piece on its way was offered again: {b:?}");
    assert!(
        b.get(unsent),
        "an unsent offer past its TTL was not freed: {b:?}"
    );
    // Never reported: free again once the sent reservation is over, too.
    let much_later = t1 + SEED_SENT_TTL;
    s.handle_sync(much_later, PeerId(2), &[], 0, false).unwrap();
    s.handle_sync(much_later, PeerId(1), &[], 0, false).unwrap();
    assert!(
        s.seed_pieces(much_later, PeerId(2), &all, &[])
            .unwrap()
            .get(sent)
    );
}

#[test]
fn urgent_pieces_are_offered_first_and_only_when_fresh() {
    let (mut s, t) = sched(64);
    join_all(&mut s, t, 1..=3);
    s.handle_sync(t, PeerId(3), &[62], 0, false).unwrap();
    let all = Bitmap::full(64);
    // With one piece out, the slow start allows two new offers (pieces 0 and 1), but a reader
    // waits for pieces 63 and 62: 63 is offered on top (62 comes from peer 3; an index out
    // of range is ignored).
    let a = s.seed_pieces(t, PeerId(1), &all, &[63, 62, 99]).unwrap();
    assert!(a.get(63), "{a:?}");
    assert!(!a.get(62));
    assert_eq!(a.iter_ones().collect::<Vec<_>>(), [0, 1, 63]);
    // Still one peer at a time: peer 2's urgent 63 is peer 1's already.
    let b = s.seed_pieces(t, PeerId(2), &all, &[63]).unwrap();
    assert!(!b.get(63), "{b:?}");
    // The supernode can only offer what it holds.
    let partial = Bitmap::new(64);
    assert_eq!(
        s.seed_pieces(t, PeerId(2), &partial, &[40])
            .unwrap()
            .count(),
        0
    );
}

fn sync_input<'a>(new: &'a [u32], bad: &'a [(PeerId, u32)], seed: &'a Bitmap) -> SyncInput<'a> {
    SyncInput {
        new_pieces: new,
        bad_pieces: bad,
        urgent: &[],
        uploading: 0,
        done: false,
        seed_has: seed,
        known_parents: None,
        unreachable_parents: &[],
        unserved: &[],
    }
}

#[test]
fn sync_request_answers_parents_and_offer_and_files_reports() {
    let (mut s, t) = sched(8);
    join_all(&mut s, t, 1..=4);
    let seed = Bitmap::full(8);
    let first = s
        .handle_sync_request(
            t,
            PeerId(2),
            addr(2),
            host(2),
            &sync_input(&[0, 1], &[], &seed),
        )
        .unwrap();
    // Pieces 0 and 1 are in the swarm now; the supernode offers others.
    assert!(!first.seed_pieces.get(0) && !first.seed_pieces.get(1));
    assert!(first.seed_pieces.count() > 0);
    let out = s
        .handle_sync_request(t, PeerId(1), addr(1), host(1), &sync_input(&[], &[], &seed))
        .unwrap();
    assert!(ids(&out.parents).contains(&PeerId(2)));
    assert!(!out.readmitted);
    // Two distinct reporters get peer 4 banned through their syncs.
    for reporter in [1, 2] {
        s.handle_sync_request(
            t,
            PeerId(reporter),
            addr(reporter),
            host(reporter),
            &sync_input(&[], &[(PeerId(4), 3)], &seed),
        )
        .unwrap();
    }
    assert!(s.is_banned(PeerId(4)));
}

#[test]
fn sync_request_of_a_finished_peer_assigns_no_parents() {
    let (mut s, t) = sched(8);
    join_all(&mut s, t, 1..=3);
    let seed = Bitmap::full(8);
    let mut input = sync_input(&[], &[], &seed);
    input.done = true;
    let out = s
        .handle_sync_request(t, PeerId(1), addr(1), host(1), &input)
        .unwrap();
    assert!(out.parents.is_empty());
    assert_eq!(out.seed_pieces.count(), 0);
    assert_eq!(s.holders(7), 1);
}

#[test]
fn sync_request_readmits_an_expired_peer() {
    let (mut s, t) = sched(8);
    join_all(&mut s, t, 1..=2);
    let later = t + SchedulerConfig::default().peer_timeout + Duration::from_secs(1);
    s.handle_timeout(later);
    assert_eq!(s.peer_count(), 0);
    let seed = Bitmap::full(8);
    let out = s
        .handle_sync_request(
            later,
            PeerId(1),
            addr(1),
            host(1),
            &sync_input(&[5], &[], &seed),
        )
        .unwrap();
    assert!(out.readmitted);
    assert_eq!(s.peer_count(), 1);
    assert_eq!(s.holders(5), 1);
    // A bad index from a stranger is refused before it is admitted.
    assert!(matches!(
        s.handle_sync_request(
            later,
            PeerId(9),
            addr(9),
            host(9),
            &sync_input(&[99], &[], &seed)
        ),
        Err(SchedError::PieceOutOfRange { .. })
    ));
    assert_eq!(s.peer_count(), 1);
}

#[test]
fn a_peer_that_lists_its_parents_gets_only_the_changes_without_bitmaps() {
    let t = Instant::now();
    let mut s = TaskScheduler::new(8, SchedulerConfig::default(), 1);
    let seed = Bitmap::full(8);
    join_all(&mut s, t, 1..=4);
    for i in 2..=4 {
        s.handle_sync(t, PeerId(i), &[i as u32], 0, false).unwrap();
    }
    let mut input = sync_input(&[], &[], &seed);
    input.known_parents = Some(&[]);
    let first = s
        .handle_sync_request(t, PeerId(1), addr(1), host(1), &input)
        .unwrap();
    assert!(first.delta);
    assert_eq!(first.parents.len(), 3);
    assert!(
        first.parents.iter().all(|p| p.pieces.is_empty()),
        "no bitmaps"
    );
    assert!(first.dropped_parents.is_empty());

    // Listing them all (and one it should not have): only that one comes back, dropped.
    let known = [PeerId(2), PeerId(3), PeerId(4), PeerId(9)];
    input.known_parents = Some(&known);
    let next = s
        .handle_sync_request(t, PeerId(1), addr(1), host(1), &input)
        .unwrap();
    assert!(next.parents.is_empty(), "{:?}", next.parents);
    assert_eq!(next.dropped_parents, vec![PeerId(9)]);

    // Without the list: every parent with its bitmap, as before.
    input.known_parents = None;
    let full = s
        .handle_sync_request(t, PeerId(1), addr(1), host(1), &input)
        .unwrap();
    assert!(!full.delta);
    assert_eq!(full.parents.len(), 3);
    assert!(full.parents.iter().all(|p| p.pieces.count() == 1));
}

/// A parent that holds everything and hangs: its child reports it unreachable, and from
/// then on the child is not sent to it and the supernode offers the child what only that
/// parent held. Another peer's view is unchanged, and the report lapses after its TTL.
#[test]
fn a_parent_its_child_cannot_reach_is_not_named_to_it_and_its_pieces_are_seeded() {
    let (mut s, t) = sched(8);
    join_all(&mut s, t, 1..=3);
    let seed = Bitmap::full(8);
    // Peer 1 takes the whole blob from the supernode, piece by piece as offered (the
    // offers, sent, must not outlive the reports); peers 2 and 3 hold nothing.
    let mut held = 0;
    while held < 8 {
        let offer = s.seed_pieces(t, PeerId(1), &seed, &[]).unwrap();
        let got: Vec<u32> = offer.iter_ones().collect();
        assert!(!got.is_empty());
        for &p in &got {
            s.handle_seed_sent(t, PeerId(1), p);
        }
        s.handle_sync_request(
            t,
            PeerId(1),
            addr(1),
            host(1),
            &sync_input(&got, &[], &seed),
        )
        .unwrap();
        held += got.len();
    }
    let mut done = sync_input(&[], &[], &seed);
    done.done = true;
    s.handle_sync_request(t, PeerId(1), addr(1), host(1), &done)
        .unwrap();
    let before = s
        .handle_sync_request(t, PeerId(2), addr(2), host(2), &sync_input(&[], &[], &seed))
        .unwrap();
    assert!(ids(&before.parents).contains(&PeerId(1)));
    assert_eq!(
        before.seed_pieces.count(),
        0,
        "everything is held by a peer"
    );

    let mut report = sync_input(&[], &[], &seed);
    let hung = [PeerId(1)];
    report.unreachable_parents = &hung;
    let after = s
        .handle_sync_request(t, PeerId(2), addr(2), host(2), &report)
        .unwrap();
    assert!(!ids(&after.parents).contains(&PeerId(1)), "{after:?}");
    assert!(after.seed_pieces.count() > 0, "{after:?}");
    // Peer 3 never reported it: it still gets peer 1 and no seed offer of its pieces.
    let other = s
        .handle_sync_request(t, PeerId(3), addr(3), host(3), &sync_input(&[], &[], &seed))
        .unwrap();
    assert!(ids(&other.parents).contains(&PeerId(1)));
    assert!(
        other
            .seed_pieces
            .iter_ones()
            .all(|p| !after.seed_pieces.get(p))
    );
    // After the TTL (and without a new report) peer 1 is named to peer 2 again.
    let later = t + UNREACHABLE_PARENT_TTL + Duration::from_secs(1);
    s.handle_sync_request(later, PeerId(1), addr(1), host(1), &done)
        .unwrap();
    let lapsed = s
        .handle_sync_request(
            later,
            PeerId(2),
            addr(2),
            host(2),
            &sync_input(&[], &[], &seed),
        )
        .unwrap();
    assert!(ids(&lapsed.parents).contains(&PeerId(1)), "{lapsed:?}");
}

/// Pieces the supernode offered (and sent) to a peer that then died are not held for it
/// from a peer that reported it unreachable: they are offered to the reporter, and the
/// supernode may send them to it. Others still wait for the offer to lapse.
#[test]
fn offers_to_a_peer_its_reporter_cannot_reach_go_to_the_reporter() {
    let (mut s, t) = sched(8);
    join_all(&mut s, t, 1..=3);
    let seed = Bitmap::full(8);
    let dead = s.seed_pieces(t, PeerId(1), &seed, &[]).unwrap();
    assert!(dead.count() > 0);
    for p in dead.iter_ones() {
        s.handle_seed_sent(t, PeerId(1), p);
    }
    let p = dead.iter_ones().next().unwrap();
    // Peer 3 never heard of trouble: not offered, and not sent if it asks.
    let other = s
        .handle_sync_request(t, PeerId(3), addr(3), host(3), &sync_input(&[], &[], &seed))
        .unwrap();
    assert!(!other.seed_pieces.get(p));
    assert!(!s.seed_send_allowed(t, PeerId(3), p));
    // Peer 2 reports peer 1 unreachable: peer 1's pieces are offered to it.
    let mut report = sync_input(&[], &[], &seed);
    let gone = [PeerId(1)];
    report.unreachable_parents = &gone;
    let out = s
        .handle_sync_request(t, PeerId(2), addr(2), host(2), &report)
        .unwrap();
    assert!(out.seed_pieces.get(p), "{out:?}");
    assert!(s.seed_send_allowed(t, PeerId(2), p));
}

#[test]
fn a_parent_that_does_not_serve_what_it_claimed_is_demoted_by_two_hosts() {
    let (mut s, t) = sched(4);
    join_all(&mut s, t, 1..=4);
    // Peer 4 claims to be done; 1 and 2 ask it for pieces and are told it has none.
    s.handle_sync(t, PeerId(4), &[], 0, true).unwrap();
    assert_eq!(s.holders(0), 1);
    // A piece the parent never claimed does not count (peer 3 claims only piece 1)...
    s.handle_sync(t, PeerId(3), &[1], 0, false).unwrap();
    s.handle_unserved(t, PeerId(1), PeerId(3), 0);
    s.handle_unserved(t, PeerId(2), PeerId(3), 0);
    assert_eq!(s.poll_event(), None, "a piece it never claimed");
    // ...nor a second id of the same host, nor the claimant's own host.
    s.handle_join(t, PeerId(11), addr(1), host(1)).unwrap();
    s.handle_join(t, PeerId(14), addr(4), host(4)).unwrap();
    for reporter in [1, 11, 14] {
        s.handle_unserved(t, PeerId(reporter), PeerId(4), 2);
    }
    assert_eq!(s.poll_event(), None, "one host's word");
    assert!(ids(&s.parents(t, PeerId(1)).unwrap()).contains(&PeerId(4)));
    s.handle_unserved(t, PeerId(2), PeerId(4), 0);
    assert_eq!(s.poll_event(), Some(SchedEvent::PeerDemoted(PeerId(4))));
    // Its claims are void: the pieces count no holder (the supernode offers them again), it
    // is nobody's parent, and its new claims are not believed. It is not banned.
    assert_eq!(s.holders(0), 0);
    assert_eq!(s.holders(1), 1, "peer 3's claim stands");
    s.handle_sync(t, PeerId(4), &[0, 1, 2, 3], 0, true).unwrap();
    assert_eq!(s.holders(0), 0);
    for i in [1, 2, 3, 11] {
        assert!(!ids(&s.parents(t, PeerId(i)).unwrap()).contains(&PeerId(4)));
    }
    assert!(s.is_live(PeerId(4)) && !s.is_banned(PeerId(4)));
    let seed = Bitmap::full(4);
    let offer = s.seed_pieces(t, PeerId(1), &seed, &[]).unwrap();
    assert!(
        offer.get(0),
        "the piece only the demoted peer claimed is offered again"
    );
}

#[test]
fn copy_sources_are_the_live_holders_least_busy_first() {
    let (mut s, t) = sched(8);
    join_all(&mut s, t, 1..=4);
    // 1 holds piece 2 and uploads 3 pieces, 3 holds it idle, 4 holds it and uploads 1;
    // 2 does not hold it.
    s.handle_sync(t, PeerId(1), &[2], 3, false).unwrap();
    s.handle_sync(t, PeerId(2), &[5], 0, false).unwrap();
    s.handle_sync(t, PeerId(3), &[2, 5], 0, false).unwrap();
    s.handle_sync(t, PeerId(4), &[2], 1, false).unwrap();
    let found: Vec<u64> = s.copy_sources(2, 8).iter().map(|(id, _)| id.0).collect();
    assert_eq!(found, [3, 4, 1]);
    assert_eq!(s.copy_sources(2, 1)[0], (PeerId(3), addr(3)));
    assert!(s.copy_sources(0, 8).is_empty(), "nobody holds piece 0");
    assert!(s.copy_sources_empty(0) && !s.copy_sources_empty(2));
    assert!(s.copy_sources(99, 8).is_empty(), "out of range");
    // A holder that leaves is no source.
    s.handle_leave(t, PeerId(3));
    let found: Vec<u64> = s.copy_sources(2, 8).iter().map(|(id, _)| id.0).collect();
    assert_eq!(found, [4, 1]);
}
