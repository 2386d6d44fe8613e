use std::collections::HashSet;

use super::*;

fn bits(len: u32, ones: &[u32]) -> Bitmap {
    let mut b = Bitmap::new(len);
    for &i in ones {
        b.set(i);
    }
    b
}

fn picker(n: u32) -> (Picker, Instant) {
    (Picker::new(n, PickerConfig::default(), 3), Instant::now())
}

fn drain(p: &mut Picker, now: Instant) -> Vec<Request> {
    std::iter::from_fn(|| p.poll_request(now)).collect()
}

#[test]
fn rarest_first() {
    let (mut p, t) = picker(4);
    // Piece 3 is held by one parent, 0..=2 by all three.
    p.handle_parents(
        t,
        vec![
            (PeerId(1), bits(4, &[0, 1, 2, 3])),
            (PeerId(2), bits(4, &[0, 1, 2])),
            (PeerId(3), bits(4, &[0, 1, 2])),
        ],
    );
    let first = p.poll_request(t).unwrap();
    assert_eq!(
        first,
        Request {
            piece: 3,
            source: Source::Peer(PeerId(1))
        }
    );
    // The next ones go to the least-loaded holders.
    let next = p.poll_request(t).unwrap();
    assert_ne!(next.source, Source::Peer(PeerId(1)));
}

#[test]
fn random_tie_break_differs_between_peers() {
    let t = Instant::now();
    let firsts: HashSet<u32> = (0..20)
        .map(|seed| {
            let mut p = Picker::new(64, PickerConfig::default(), seed);
            p.handle_parents(
                t,
                vec![(PeerId(1), Bitmap::full(64)), (PeerId(2), Bitmap::full(64))],
            );
            p.poll_request(t).unwrap().piece
        })
        .collect();
    assert!(firsts.len() > 10, "{firsts:?}");
}

/// A peer with one parent takes its pieces in order, whatever its seed: nothing to balance,
/// and a reader streaming the blob gets the first bytes first.
#[test]
fn a_lone_parents_pieces_are_taken_in_order() {
    let t = Instant::now();
    for seed in 0..5 {
        let mut p = Picker::new(64, PickerConfig::default(), seed);
        p.handle_parents(t, vec![(PeerId(1), Bitmap::full(64))]);
        let first: Vec<u32> = drain(&mut p, t).iter().map(|r| r.piece).collect();
        assert_eq!(first, [0, 1, 2, 3], "seed {seed}");
        p.handle_piece_done(t, 1, Source::Peer(PeerId(1)));
        assert_eq!(p.poll_request(t).map(|r| r.piece), Some(4));
    }
}

#[test]
fn limits_and_no_duplicates() {
    let cfg = PickerConfig {
        max_in_flight: 8,
        per_parent_in_flight: 2,
        ..PickerConfig::default()
    };
    let (mut p, t) = (Picker::new(64, cfg, 3), Instant::now());
    p.handle_parents(t, (1..=3).map(|i| (PeerId(i), Bitmap::full(64))).collect());
    p.handle_seed_pieces(Bitmap::full(64));
    let reqs = drain(&mut p, t);
    // Three parents at two each; the seed is not needed while parents hold everything.
    assert_eq!(reqs.len(), 6);
    assert!(reqs.iter().all(|r| r.source != Source::Seed));
    let pieces: HashSet<u32> = reqs.iter().map(|r| r.piece).collect();
    assert_eq!(pieces.len(), 6);
    assert_eq!(p.in_flight(), 6);
    // More parents: capped by max_in_flight, still no duplicates.
    p.handle_parents(t, (1..=10).map(|i| (PeerId(i), Bitmap::full(64))).collect());
    let more = drain(&mut p, t);
    assert_eq!(more.len(), 2);
    assert_eq!(p.in_flight(), 8);
    for r in &more {
        assert!(!pieces.contains(&r.piece));
    }
}

#[test]
fn seed_only_for_pieces_no_parent_has() {
    let (mut p, t) = picker(8);
    p.handle_parents(t, vec![(PeerId(1), bits(8, &[0, 1, 2, 3]))]);
    let reqs = drain(&mut p, t);
    assert_eq!(
        reqs.len(),
        4,
        "a lone parent takes lone_parent_in_flight, nothing from the seed yet"
    );
    assert!(reqs.iter().all(|r| r.source == Source::Peer(PeerId(1))));
    p.handle_seed_pieces(Bitmap::full(8));
    let seed = drain(&mut p, t);
    assert_eq!(seed.len(), 4);
    for r in &seed {
        assert_eq!(r.source, Source::Seed);
        assert!(r.piece >= 4, "{r:?}");
    }
    // Seed limit reached and nothing else available.
    assert_eq!(p.poll_request(t), None);
    assert_eq!(p.in_flight(), 8);
}

#[test]
fn seed_pieces_first_and_outside_the_parent_budget() {
    let (mut p, t) = picker(16);
    // Four parents take one request each (per_parent_in_flight 1) ...
    p.handle_parents(
        t,
        (1..=4)
            .map(|i| (PeerId(i), bits(16, &[0, 1, 2, 3, 4, 5])))
            .collect(),
    );
    assert_eq!(drain(&mut p, t).len(), 4);
    // ... and a piece only the seed has is still fetched, on its own budget.
    p.handle_seed_pieces(bits(16, &[9]));
    assert_eq!(
        p.poll_request(t),
        Some(Request {
            piece: 9,
            source: Source::Seed
        })
    );
    assert_eq!(p.in_flight(), 5);
    assert_eq!(p.poll_request(t), None);
}

#[test]
fn never_from_a_source_without_the_piece() {
    let (mut p, t) = picker(8);
    p.handle_parents(
        t,
        vec![(PeerId(1), bits(8, &[0])), (PeerId(2), bits(8, &[1]))],
    );
    p.handle_seed_pieces(bits(8, &[7]));
    let reqs = drain(&mut p, t);
    assert_eq!(reqs.len(), 3);
    for r in reqs {
        let ok = match r.source {
            Source::Peer(PeerId(1)) => r.piece == 0,
            Source::Peer(PeerId(2)) => r.piece == 1,
            Source::Seed => r.piece == 7,
            Source::Peer(_) => false,
        };
        assert!(ok, "{r:?}");
    }
}

#[test]
fn corrupt_bans_parent() {
    let (mut p, t) = picker(2);
    p.handle_parents(
        t,
        vec![(PeerId(1), bits(2, &[0])), (PeerId(2), bits(2, &[1]))],
    );
    let reqs = drain(&mut p, t);
    let bad = reqs.iter().find(|r| r.piece == 0).unwrap();
    p.handle_piece_failed(t, 0, bad.source, FailReason::Corrupt);
    assert_eq!(p.banned().collect::<Vec<_>>(), vec![PeerId(1)]);
    assert_eq!(p.poll_request(t), None);
    // Stays banned when the scheduler hands it out again.
    p.handle_parents(
        t,
        vec![(PeerId(1), bits(2, &[0])), (PeerId(3), bits(2, &[0]))],
    );
    assert_eq!(
        p.poll_request(t),
        Some(Request {
            piece: 0,
            source: Source::Peer(PeerId(3))
        })
    );
}

#[test]
fn backoff_then_retry() {
    let (mut p, t) = picker(1);
    p.handle_seed_pieces(Bitmap::full(1));
    let r = p.poll_request(t).unwrap();
    assert_eq!(r.source, Source::Seed);
    assert_eq!(p.poll_request(t), None, "never the same piece twice");
    p.handle_piece_failed(t, 0, Source::Seed, FailReason::Busy);
    assert_eq!(p.in_flight(), 0);
    assert_eq!(p.poll_request(t), None);
    // Busy is skipped briefly, other failures for longer.
    let busy_until = t + Duration::from_millis(50);
    assert_eq!(p.poll_timeout(), Some(busy_until));
    // A parent that has the piece can be used meanwhile.
    p.handle_parents(t, vec![(PeerId(5), Bitmap::full(1))]);
    let r = p.poll_request(t).unwrap();
    assert_eq!(r.source, Source::Peer(PeerId(5)));
    p.handle_piece_failed(t, 0, r.source, FailReason::Timeout);
    assert_eq!(p.poll_request(t + Duration::from_millis(49)), None);
    // The seed is back first; the parent only after 500 ms.
    let r = p.poll_request(busy_until).unwrap();
    assert_eq!(r.source, Source::Seed);
    p.handle_piece_failed(busy_until, 0, r.source, FailReason::Io);
    let until = t + Duration::from_millis(500);
    assert_eq!(p.poll_timeout(), Some(until));
    assert_eq!(p.poll_request(until - Duration::from_millis(1)), None);
    let r = p.poll_request(until).unwrap();
    assert_eq!(
        r,
        Request {
            piece: 0,
            source: Source::Peer(PeerId(5))
        }
    );
    p.handle_piece_done(until, 0, r.source);
    assert!(p.is_complete());
    assert_eq!(p.poll_timeout(), None);
    assert_eq!(p.poll_request(until), None);
}

#[test]
fn completes_and_ignores_stray_reports() {
    let (mut p, t) = picker(20);
    p.handle_have(3);
    p.handle_parents(
        t,
        vec![(PeerId(1), Bitmap::full(20)), (PeerId(2), Bitmap::full(20))],
    );
    p.handle_seed_pieces(Bitmap::full(20));
    // A report for a piece never requested does not free a slot.
    p.handle_piece_done(t, 7, Source::Peer(PeerId(1)));
    let mut rounds = 0;
    while !p.is_complete() {
        let reqs = drain(&mut p, t);
        assert!(!reqs.is_empty());
        assert!(reqs.len() <= 4);
        for r in reqs {
            assert!(r.piece != 3 && r.piece != 7);
            p.handle_piece_done(t, r.piece, r.source);
        }
        rounds += 1;
    }
    assert_eq!(p.have().count(), 20);
    assert_eq!(p.in_flight(), 0);
    assert!(rounds >= 5);
}

#[test]
fn wrong_length_bitmaps_ignored() {
    let (mut p, t) = picker(4);
    p.handle_parents(t, vec![(PeerId(1), Bitmap::full(5))]);
    p.handle_seed_pieces(Bitmap::full(3));
    assert_eq!(p.poll_request(t), None);
}

#[test]
fn ties_go_to_low_indexes() {
    // One parent holds everything: every piece is equally rare, so each pick is one of the
    // `tie_window` lowest pieces still wanted, and the held pieces stay near a prefix.
    let (mut p, t) = picker(256);
    p.handle_parents(t, vec![(PeerId(1), Bitmap::full(256))]);
    let window = PickerConfig::default().tie_window as usize;
    let mut picked = HashSet::new();
    while !p.is_complete() {
        let wanted: Vec<u32> = (0..256).filter(|&i| !p.have().get(i)).collect();
        let r = p.poll_request(t).unwrap();
        assert!(wanted[..window.min(wanted.len())].contains(&r.piece));
        picked.insert(r.piece);
        p.handle_piece_done(t, r.piece, r.source);
    }
    assert_eq!(picked.len(), 256);
    // A rarer piece still wins over a low index.
    let (mut p, t) = picker(256);
    p.handle_parents(
        t,
        vec![
            (PeerId(1), Bitmap::full(256)),
            (PeerId(2), bits(256, &(0..255).collect::<Vec<_>>())),
        ],
    );
    assert_eq!(p.poll_request(t).unwrap().piece, 255);
}

#[test]
fn received_frees_the_source_not_the_piece() {
    let cfg = PickerConfig {
        lone_parent_in_flight: 1,
        ..PickerConfig::default()
    };
    let (mut p, t) = (Picker::new(8, cfg, 3), Instant::now());
    p.handle_parents(t, vec![(PeerId(1), Bitmap::full(8))]);
    let a = p.poll_request(t).unwrap();
    // One request per parent.
    assert_eq!(p.poll_request(t), None);
    p.handle_piece_received(a.piece, a.source);
    // The parent takes the next request; the received piece is not asked for again.
    let b = p.poll_request(t).unwrap();
    assert_ne!(b.piece, a.piece);
    assert_eq!(p.in_flight(), 2);
    // A second report, or one naming another source, changes nothing.
    p.handle_piece_received(a.piece, a.source);
    p.handle_piece_received(b.piece, Source::Peer(PeerId(9)));
    assert_eq!(p.poll_request(t), None);
    // Verification failed: the piece can be picked again (from another source: this one is
    // banned for a corrupt piece).
    p.handle_piece_received(b.piece, b.source);
    p.handle_piece_failed(t, a.piece, a.source, FailReason::Corrupt);
    p.handle_parents(
        t,
        vec![(PeerId(1), Bitmap::full(8)), (PeerId(2), Bitmap::full(8))],
    );
    let c = p.poll_request(t).unwrap();
    assert_eq!(c.source, Source::Peer(PeerId(2)));
    p.handle_piece_done(t, b.piece, b.source);
    assert_eq!(p.in_flight(), 1);
    assert!(p.have().get(b.piece));
}

#[test]
fn a_lone_parent_takes_a_pipeline_and_several_share_one_each() {
    let (mut p, t) = picker(64);
    p.handle_parents(t, vec![(PeerId(1), Bitmap::full(64))]);
    // Nobody else to ask: the lone parent gets lone_parent_in_flight requests (4).
    let lone = drain(&mut p, t);
    assert_eq!(lone.len(), 4, "{lone:?}");
    assert!(lone.iter().all(|r| r.source == Source::Peer(PeerId(1))));
    // A second parent: one request each from now on, so the first takes no more and the
    // second takes one.
    p.handle_parents(
        t,
        vec![(PeerId(1), Bitmap::full(64)), (PeerId(2), Bitmap::full(64))],
    );
    let more = drain(&mut p, t);
    assert_eq!(more.len(), 1, "{more:?}");
    assert_eq!(more[0].source, Source::Peer(PeerId(2)));
    // The second parent backed off (it failed): the first is alone again and may take
    // more once its requests drain below the lone limit.
    p.handle_piece_failed(t, more[0].piece, more[0].source, FailReason::Unavailable);
    for r in &lone {
        p.handle_piece_done(t, r.piece, r.source);
    }
    let again = drain(&mut p, t);
    assert_eq!(again.len(), 4, "{again:?}");
    assert!(again.iter().all(|r| r.source == Source::Peer(PeerId(1))));
}

#[test]
fn pieces_being_verified_are_bounded() {
    let cfg = PickerConfig {
        max_in_flight: 8,
        per_parent_in_flight: 1,
        max_verifying: 2,
        ..PickerConfig::default()
    };
    let (mut p, t) = (Picker::new(16, cfg, 3), Instant::now());
    p.handle_parents(t, vec![(PeerId(1), Bitmap::full(16))]);
    let a = p.poll_request(t).unwrap();
    p.handle_piece_received(a.piece, a.source);
    let b = p.poll_request(t).unwrap();
    p.handle_piece_received(b.piece, b.source);
    // Two pieces wait for verification: nothing new starts until one is reported.
    assert_eq!(p.poll_request(t), None);
    p.handle_piece_done(t, a.piece, a.source);
    assert!(p.poll_request(t).is_some());
}

#[test]
fn urgent_pieces_come_first_from_a_parent_or_the_seed() {
    let (mut p, t) = picker(64);
    p.handle_parents(
        t,
        vec![
            (PeerId(1), bits(64, &[0, 1, 2, 40])),
            (PeerId(2), bits(64, &[0, 1, 2, 3])),
        ],
    );
    p.handle_seed_pieces(bits(64, &[60, 61]));
    // A reader waits for 40 (a parent has it), 61 (only the seed) and 63 (nobody yet).
    p.add_urgent([63, 61, 40, 99]);
    assert_eq!(p.urgent(8), [40, 61, 63]);
    let first = p.poll_request(t).unwrap();
    assert_eq!(
        first,
        Request {
            piece: 40,
            source: Source::Peer(PeerId(1))
        }
    );
    let second = p.poll_request(t).unwrap();
    assert_eq!(
        second,
        Request {
            piece: 61,
            source: Source::Seed
        }
    );
    // 63 is nowhere: the rest follow the usual order.
    let rest = drain(&mut p, t);
    assert!(rest.iter().all(|r| r.piece != 63), "{rest:?}");
    // Once held, a piece is no longer urgent.
    p.handle_piece_done(t, 40, Source::Peer(PeerId(1)));
    assert_eq!(p.urgent(8), [61, 63]);
}

#[test]
fn a_parent_that_does_not_serve_an_announced_piece_is_not_asked_for_it_again() {
    let (mut p, t) = picker(2);
    p.handle_parents(
        t,
        vec![(PeerId(1), bits(2, &[0])), (PeerId(2), bits(2, &[]))],
    );
    let r = p.poll_request(t).unwrap();
    assert_eq!((r.piece, r.source), (0, Source::Peer(PeerId(1))));
    p.handle_piece_failed(t, 0, r.source, FailReason::Unavailable);
    // Long after the back-off, still not asked for that piece.
    let later = t + Duration::from_secs(60);
    assert!(drain(&mut p, later).is_empty());
    // Announced anew (or by another parent), it is requested again.
    p.handle_parent_have(PeerId(2), 0);
    let r = p.poll_request(later).unwrap();
    assert_eq!((r.piece, r.source), (0, Source::Peer(PeerId(2))));
    p.handle_parent_have(PeerId(1), 1);
    let r = p.poll_request(later).unwrap();
    assert_eq!((r.piece, r.source), (1, Source::Peer(PeerId(1))));
    // Unknown parents and bad indexes are ignored.
    p.handle_parent_have(PeerId(7), 1);
    p.handle_parent_have(PeerId(1), 99);
}

#[test]
fn a_relay_that_withdraws_a_piece_is_still_asked_for_its_others_at_once() {
    let (mut p, t) = picker(2);
    p.handle_parents(t, vec![(PeerId(1), bits(2, &[0, 1]))]);
    let r = p.poll_request(t).unwrap();
    assert_eq!(r.source, Source::Peer(PeerId(1)));
    p.handle_piece_failed(t, r.piece, r.source, FailReason::Withdrawn);
    // No back-off: the other piece is asked for at once, from the same parent ...
    let again = drain(&mut p, t);
    let other = 1 - r.piece;
    assert_eq!(
        again,
        vec![Request {
            piece: other,
            source: Source::Peer(PeerId(1))
        }]
    );
    // ... but not the withdrawn one, until it is announced anew.
    p.handle_piece_failed(t, other, Source::Peer(PeerId(1)), FailReason::Busy);
    let later = t + Duration::from_secs(60);
    assert_eq!(
        drain(&mut p, later),
        vec![Request {
            piece: other,
            source: Source::Peer(PeerId(1))
        }]
    );
    p.handle_parent_have(PeerId(1), r.piece);
    let r2 = p.poll_request(later).unwrap();
    assert_eq!((r2.piece, r2.source), (r.piece, Source::Peer(PeerId(1))));
}
