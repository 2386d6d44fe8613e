//! A small `swarm-sim` run, checked the way a user reads its output: every peer that should
//! finish does, nobody beats physics, the supernode sent at least one copy, the liar is
//! banned. Performance targets live in `docs/benchmarks.md`, not here.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use serde_json::Value;

fn f(run: &Value, key: &str) -> f64 {
    run[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {run}"))
}

#[test]
fn every_scenario_completes_within_physics() {
    let out = Command::new(env!("CARGO_BIN_EXE_swarm-sim"))
        .args(["--peers", "200", "--size", "64MiB", "--scenario", "all"])
        .arg("--json")
        .output()
        .expect("run swarm-sim");
    assert!(
        out.status.success(),
        "swarm-sim failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: Value = serde_json::from_slice(&out.stdout).expect("swarm-sim prints JSON");
    let runs = runs.as_array().expect("one object per scenario");
    let names: Vec<&str> = runs.iter().filter_map(|r| r["scenario"].as_str()).collect();
    assert_eq!(names, ["flash", "staggered", "churn", "hetero", "liar"]);
    for run in runs {
        let name = run["scenario"].as_str().unwrap();
        // Every honest peer that stayed finished.
        assert_eq!(run["all_done"], Value::Bool(true), "{name}: {run}");
        assert_eq!(run["done"], run["expected_done"], "{name}");
        // The supernode sent the whole blob at least once, and not much more.
        let file = f(run, "file_size");
        assert!(f(run, "origin_bytes") >= file, "{name}: origin below F");
        assert!(
            f(run, "origin_ratio") < 1.5,
            "{name}: origin {}",
            run["origin_ratio"]
        );
        // Never faster than physics: each peer against its own floor max(F/u_s, F/d_i), and
        // the last one against the Kumar–Ross bound.
        assert!(
            f(run, "min_over_floor") >= 1.0,
            "{name}: {}",
            run["min_over_floor"]
        );
        assert!(
            f(run, "last_finish_secs") >= f(run, "bound_secs"),
            "{name}: last peer done before the bound"
        );
        assert!(f(run, "p50") <= f(run, "p99") && f(run, "p99") <= f(run, "max"));
    }
    let churn = &runs[2];
    assert_eq!(churn["expected_done"], 180, "10% of 200 peers leave");
    let liar = &runs[4];
    assert_eq!(liar["banned"], 1, "the lying peer is banned");
    assert_eq!(liar["done"], 199);
}

#[test]
fn rejects_an_unknown_scenario() {
    let out = Command::new(env!("CARGO_BIN_EXE_swarm-sim"))
        .args(["--peers", "10", "--scenario", "stampede"])
        .output()
        .expect("run swarm-sim");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown scenario \"stampede\""), "{err}");
}
