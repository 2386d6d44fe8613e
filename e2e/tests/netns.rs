//! The multi-host harness (`benches/netns/run.sh`) on a small scale: three hosts, each a
//! network namespace with its own address behind a shaped link, pull one image through their
//! dfdaemons from a registry and supernode on a fourth. Needs root (skipped otherwise).
#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Command};

use damselfly_e2e::{bin, running_as_root};

#[test]
fn three_namespaced_hosts_pull_an_image_and_the_registry_sends_it_once() {
    if !running_as_root("three_namespaced_hosts_pull_an_image_and_the_registry_sends_it_once") {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/netns/run.sh");
    let dfdaemon = bin("dfdaemon");
    let bin_dir = dfdaemon.parent().unwrap();
    assert!(
        bin_dir.join("supernode").is_file(),
        "supernode not built next to {}",
        dfdaemon.display()
    );
    // `timeout` sends SIGTERM, on which the script removes its namespaces and processes.
    let out = Command::new("timeout")
        .args(["180", "bash"])
        .arg(&script)
        .args(["--hosts", "3", "--image-mib", "8", "--rate-mbit", "200"])
        .arg("--bin-dir")
        .arg(bin_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // The script itself checks every blob on every host against its digest.
    assert!(out.status.success(), "harness failed: {report}");

    let row = stdout
        .lines()
        .find(|l| l.starts_with("| through dfdaemon"))
        .unwrap_or_else(|| panic!("no swarm row in: {report}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    // | label | p50 | p50/T | p99/T | max/T | registry bytes / image |
    assert_eq!(cells[6], "1.00", "registry bytes / image: {report}");
    let shared = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("swarm: ")?
                .split("; ")
                .nth(1)?
                .split(" %")
                .next()?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no peer share in: {report}"));
    assert!(shared > 0.0, "no host got bytes from another: {report}");
    // Every dfdaemon took its piece digests signed, with the pieces: the supernode sent none
    // in its sync answers.
    assert!(
        stdout.contains(", 0 piece digests in sync answers,"),
        "the supernode sent digests in sync answers: {report}"
    );

    // Nothing of this run left behind (the script logs "namespaces dflyXXXX-*").
    let prefix = report
        .split("namespaces ")
        .nth(1)
        .and_then(|rest| rest.split('*').next())
        .unwrap_or_else(|| panic!("no namespace prefix in: {report}"))
        .to_owned();
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left: Vec<String> = String::from_utf8_lossy(&netns.stdout)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}
