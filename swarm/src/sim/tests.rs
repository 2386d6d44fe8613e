use super::*;

fn base() -> SimConfig {
    SimConfig {
        peers: 50,
        file_size: 64 << 20,
        piece_size: 1 << 20,
        ..SimConfig::default()
    }
}

fn summary(name: &str, r: &SimReport, cfg: &SimConfig) {
    println!(
        "{name}: bound {:?} p50 {:.2} p99 {:.2} max {:.2} seed {:.2}x file, peer {:.1}x, decisions {}, elapsed {:?}",
        r.bound,
        r.p50(),
        r.p99(),
        r.max(),
        r.seed_bytes_sent as f64 / cfg.file_size as f64,
        r.peer_bytes_sent as f64 / cfg.file_size as f64,
        r.decisions,
        r.elapsed,
    );
}

#[test]
fn fifty_peers_complete() {
    let cfg = base();
    let r = run(&cfg);
    summary("base", &r, &cfg);
    assert!(r.all_done());
    assert_eq!(r.completion_times().len(), 50);
    assert!(
        r.seed_bytes_sent <= cfg.file_size * 3 / 2,
        "seed sent {}",
        r.seed_bytes_sent
    );
    assert!(r.p50().is_finite() && r.p50() >= 1.0);
    assert!(r.p99() >= r.p50() && r.max() >= r.p99());
    assert_eq!(r.banned, 0);
}

#[test]
fn deterministic() {
    let cfg = SimConfig {
        peers: 20,
        ..base()
    };
    assert_eq!(run(&cfg), run(&cfg));
}

#[test]
fn one_liar_still_completes() {
    let cfg = SimConfig { liars: 1, ..base() };
    let r = run(&cfg);
    summary("liar", &r, &cfg);
    assert!(r.all_done());
    assert_eq!(r.completion_times().len(), 49);
    assert_eq!(
        r.banned, 1,
        "two honest reporters should get the liar banned"
    );
    assert!(r.seed_bytes_sent <= cfg.file_size * 3 / 2);
}

#[test]
fn churn_completes_for_remaining_peers() {
    let cfg = SimConfig {
        churn_leave: 10,
        ..base()
    };
    let r = run(&cfg);
    summary("churn", &r, &cfg);
    assert!(r.all_done());
    assert_eq!(r.peers.iter().filter(|p| p.left).count(), 10);
    assert_eq!(r.completion_times().len(), 40);
}

#[test]
fn bound_formula() {
    let cfg = SimConfig {
        peers: 10,
        file_size: 100,
        peer_up_bps: 10,
        peer_down_bps: 50,
        seed_up_bps: 20,
        ..base()
    };
    // max(100/20, 100/50, 10*100/(20+100)) = max(5, 2, 8.33)
    assert!((bound(&cfg).as_secs_f64() - 1000.0 / 120.0).abs() < 1e-6);
}

#[test]
#[ignore = "manual timing: cargo test -p damselfly-swarm --release -- --ignored --nocapture"]
fn thousand_peers() {
    let cfg = SimConfig {
        peers: 1000,
        file_size: 256 << 20,
        piece_size: 1 << 20,
        seed_up_bps: 1_250_000_000,
        ..SimConfig::default()
    };
    let start = Instant::now();
    let r = run(&cfg);
    summary("1000", &r, &cfg);
    println!("wall time {:?}", start.elapsed());
    assert!(r.all_done());
}
