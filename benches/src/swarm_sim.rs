//! The `swarm-sim` benchmark: runs simulator scenarios and reports each as a ratio to the
//! Kumar–Ross bound.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use damselfly_swarm::sim::{self, Scenario, SimConfig, SimReport};

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Row {
    /// Scenario name.
    pub scenario: &'static str,
    /// The configuration that ran.
    pub config: SimConfig,
    /// The simulator's report.
    pub report: SimReport,
    /// Wall-clock time of the run.
    pub wall: Duration,
}

impl Row {
    /// Scheduler calls (one sync: `handle_sync`, `parents`, `seed_pieces`) plus picker
    /// requests.
    pub fn decisions(&self) -> u64 {
        self.report.syncs + self.report.requests
    }

    /// Decisions per second of wall time (the whole simulation, network model included).
    pub fn decisions_per_sec(&self) -> f64 {
        self.decisions() as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Syncs per second of simulated time: the rate a real supernode would have to sustain.
    pub fn syncs_per_virtual_sec(&self) -> f64 {
        self.report.syncs as f64 / self.report.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `scenario` with `peers` peers on a `file_size`-byte blob; `adjust` may change the
/// configuration first (seed, piece size).
pub fn run(
    scenario: Scenario,
    peers: usize,
    file_size: u64,
    adjust: impl FnOnce(&mut SimConfig),
) -> Row {
    let mut config = scenario.config(peers, file_size);
    adjust(&mut config);
    let start = Instant::now();
    let report = sim::run(&config);
    Row {
        scenario: scenario.name(),
        wall: start.elapsed(),
        config,
        report,
    }
}

/// A Markdown table of the rows.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| scenario | peers | size | piece | bound | p50 | p99 | max | origin/F | done | \
         decisions | decisions/s (wall) | syncs/s (simulated) | wall |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let rep = &r.report;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2} s | {:.3}× | {:.3}× | {:.3}× | {:.4} | {}/{} | {} | {:.0} | {:.0} | {:.1} s |",
            r.scenario,
            r.config.peers,
            bytesize::ByteSize::b(r.config.file_size).display().iec(),
            bytesize::ByteSize::b(u64::from(r.config.piece_size))
                .display()
                .iec(),
            rep.bound.as_secs_f64(),
            rep.p50(),
            rep.p99(),
            rep.max(),
            rep.origin_ratio(),
            rep.completion_times().len(),
            rep.peers.iter().filter(|p| !p.liar && !p.left).count(),
            r.decisions(),
            r.decisions_per_sec(),
            r.syncs_per_virtual_sec(),
            r.wall.as_secs_f64(),
        );
    }
    s
}

/// The rows as JSON, one object per run, with every figure of the table plus the per-peer
/// checks a user makes (`min_over_floor`: the fastest peer against its own physical floor).
pub fn json(rows: &[Row]) -> serde_json::Value {
    let runs: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let rep = &r.report;
            let min_over_floor = rep
                .peers
                .iter()
                .filter_map(|p| p.done.map(|d| d.as_secs_f64() / p.floor.as_secs_f64()))
                .fold(f64::INFINITY, f64::min);
            serde_json::json!({
                "scenario": r.scenario,
                "peers": r.config.peers,
                "file_size": r.config.file_size,
                "piece_size": r.config.piece_size,
                "bound_secs": rep.bound.as_secs_f64(),
                "p0": rep.ratio(0.0),
                "p10": rep.ratio(0.1),
                "p50": rep.p50(),
                "p90": rep.ratio(0.9),
                "p99": rep.p99(),
                "max": rep.max(),
                "origin_bytes": rep.seed_bytes_sent,
                "origin_ratio": rep.origin_ratio(),
                "peer_bytes": rep.peer_bytes_sent,
                "expected_done": rep.peers.iter().filter(|p| !p.liar && !p.left).count(),
                "done": rep.completion_times().len(),
                "all_done": rep.all_done(),
                "last_finish_secs": rep.last_finish().map(|d| d.as_secs_f64()),
                "min_over_floor": min_over_floor,
                "banned": rep.banned,
                "injected_secs": rep.injected.map(|d| d.as_secs_f64()),
                "delivered_per_100ms": rep.delivered,
                "busy": rep.busy,
                "seed_offer_conflicts": rep.seed_offer_conflicts,
                "cut_through_cycles": rep.cut_through_cycles,
                "seed_bytes_sent": rep.seed_bytes_sent,
                "syncs": rep.syncs,
                "control_bytes": rep.control_bytes,
                "seed_control_sent": rep.seed_control_sent,
                "seed_control_received": rep.seed_control_received,
                "seed_digest_bytes": rep.seed_digest_bytes,
                "seed_parent_bytes": rep.seed_parent_bytes,
                "requests": rep.requests,
                "events": rep.events,
                "decisions_per_sec": r.decisions_per_sec(),
                "syncs_per_virtual_sec": r.syncs_per_virtual_sec(),
                "wall_secs": r.wall.as_secs_f64(),
            })
        })
        .collect();
    serde_json::Value::Array(runs)
}
