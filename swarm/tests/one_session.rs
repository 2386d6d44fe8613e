//! The engine (dfget) and the simulator drive the same sans-IO peer session, and the
//! supernode and the simulator answer syncs through the same scheduler call: every decision
//! about pieces, parents and timing lives in this crate. This reads the drivers' sources and
//! fails when one of them constructs or steers a `Picker` itself, keeps its own sync or stall
//! clock, or assembles the scheduler's answer from its parts again.

use std::path::Path;

fn source(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Code lines only: comments and doc comments may name anything.
fn code(text: &str) -> String {
    text.lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a driver of a download must not do itself.
const PEER_DECISIONS: &[&str] = &[
    "Picker::new",
    ".handle_parents(",
    ".handle_seed_pieces(",
    ".add_urgent(",
    "next_sync",
    "last_progress",
    "unreachable_since",
    "stall_timeout >",
    "sync_interval /",
];

/// What a driver of a download must call.
const PEER_SESSION_CALLS: &[&str] = &[
    "PeerSession::new",
    ".handle_sync_reply(",
    ".handle_sync_failed(",
    ".handle_piece_done(",
    ".handle_piece_failed(",
    ".handle_piece_received(",
    ".poll_sync(",
    ".poll_request(",
    ".poll_timeout()",
    ".poll_event()",
];

#[test]
fn the_engine_and_the_simulator_drive_one_peer_session() {
    for file in ["../dfget/src/engine.rs", "src/sim/driver.rs"] {
        let text = code(&source(file));
        for banned in PEER_DECISIONS {
            assert!(
                !text.contains(banned),
                "{file} decides for itself ({banned}): move it into PeerSession"
            );
        }
        for call in PEER_SESSION_CALLS {
            assert!(text.contains(call), "{file} does not call {call}");
        }
    }
}

#[test]
fn the_supernode_and_the_simulator_answer_syncs_with_one_call() {
    for file in ["../supernode/src/api.rs", "src/sim/driver.rs"] {
        let text = code(&source(file));
        assert!(
            text.contains(".handle_sync_request("),
            "{file} does not answer syncs with TaskScheduler::handle_sync_request"
        );
        for part in [".seed_pieces(", ".parents(", ".handle_bad_piece("] {
            assert!(
                !text.contains(part),
                "{file} assembles a sync answer itself ({part})"
            );
        }
    }
}
