//! The chaos suite: one small round of each fault (see `damselfly_e2e::run_round`) with real
//! processes — three supernodes, four peers pulling a 16 MiB blob at 4 MiB/s each, the
//! fault 1.5 s in. Every pull that should complete does, with the right bytes; no output
//! holds other bytes; the registry sends the blob once, or at most twice when a supernode
//! died (once to it, once to its successor or its resumed self). The `chaos` benchmark runs
//! many larger rounds with faults chosen at random.
#![allow(clippy::unwrap_used)]

use std::{sync::Mutex, time::Duration};

use damselfly_e2e::{ChaosFault, ChaosRound, run_round};

/// Each round runs a dozen processes; one at a time on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn round(fault: ChaosFault) {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let shape = ChaosRound {
        peers: 4,
        size: 16 << 20,
        rate: 4 << 20,
        fault_after: Duration::from_millis(1500),
        seed: 60,
        timeout: Duration::from_secs(120),
        supernode_args: Vec::new(),
    };
    let out = run_round(fault, &shape).unwrap();
    println!(
        "{}: {}/{} pulls in {:.1} s, registry {:.2}x, corrupt {}",
        fault.name(),
        out.completed,
        out.expected,
        out.elapsed.as_secs_f64(),
        out.registry_ratio(),
        out.corrupt
    );
    assert_eq!(out.corrupt, 0, "{:#?}", out.failures);
    assert_eq!(out.completed, out.expected, "{:#?}", out.failures);
    let bound = match fault {
        ChaosFault::KillHome | ChaosFault::RestartHome => 2.0,
        _ => 1.0,
    };
    assert!(
        out.registry_ratio() <= bound,
        "the registry sent {:.2}x the blob",
        out.registry_ratio()
    );
}

#[test]
fn no_fault() {
    round(ChaosFault::None);
}

#[test]
fn the_home_supernode_killed() {
    round(ChaosFault::KillHome);
}

#[test]
fn the_home_supernode_killed_and_restarted() {
    round(ChaosFault::RestartHome);
}

#[test]
fn a_peer_killed() {
    round(ChaosFault::KillPeer);
}

#[test]
fn a_peer_frozen_for_five_seconds() {
    round(ChaosFault::FreezePeer);
}

#[test]
fn a_peer_serving_corrupt_bytes() {
    round(ChaosFault::Liar);
}
