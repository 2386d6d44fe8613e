//! The `dfget` command as a person or a script uses it (issue 16 part 6), the real binary
//! against a real HTTP origin, without a supernode (straight from the origin): a wrong
//! `--digest` fails and leaves nothing, `--quiet` prints nothing, `--progress json` gives
//! lines a script can read, and the progress bar draws on a terminal (a pty made by
//! `script(1)`) and not elsewhere.
#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Command};

use damselfly_e2e::{Fault, FaultyOrigin, bin, random_blob, sha256_hex};

const MIB: usize = 1 << 20;

/// `dfget URL -O out` with `args`, without a supernode; returns (exit success, stderr).
fn dfget(url: &str, out: &Path, args: &[&str]) -> (bool, String) {
    let o = Command::new(bin("dfget"))
        .args([url, "-O", out.to_str().unwrap(), "--keep-serving", "0s"])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_wrong_digest_fails_and_leaves_no_output() {
    let blob = random_blob(MIB, 160);
    let origin = FaultyOrigin::start(blob.clone(), Vec::new());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("blob");
    let other = format!("sha256:{}", sha256_hex(b"something else"));
    let url = format!("http://{}/file", origin.addr());
    let (ok, stderr) = dfget(&url, &out, &["--digest", &other]);
    assert!(
        !ok,
        "a download that does not match --digest succeeded: {stderr}"
    );
    assert!(stderr.contains("digest"), "{stderr}");
    assert!(!out.exists(), "an unverified output was left in place");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "a partial file was left beside it"
    );
    // The right digest: the file is there and whole.
    let right = format!("sha256:{}", sha256_hex(&blob));
    let (ok, stderr) = dfget(&url, &out, &["--digest", &right]);
    assert!(ok, "{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), blob);
}

#[test]
fn quiet_prints_nothing_and_json_progress_counts_up_to_the_total() {
    let blob = random_blob(4 * MIB, 161);
    // 2 MiB/s: two seconds, so several progress lines.
    let origin = FaultyOrigin::always(blob.clone(), Fault::Trickle(2 << 20));
    let url = format!("http://{}/file", origin.addr());
    let dir = tempfile::tempdir().unwrap();

    let (ok, stderr) = dfget(&url, &dir.path().join("quiet"), &["-q"]);
    assert!(ok, "{stderr}");
    assert_eq!(stderr, "", "--quiet printed something");
    assert_eq!(std::fs::read(dir.path().join("quiet")).unwrap(), blob);

    let (ok, stderr) = dfget(&url, &dir.path().join("json"), &["--progress", "json"]);
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 3, "too few progress lines: {stderr}");
    let bytes: Vec<u64> = lines.iter().map(|l| l["bytes"].as_u64().unwrap()).collect();
    assert!(bytes.windows(2).all(|w| w[0] <= w[1]), "{bytes:?}");
    let last = lines.last().unwrap();
    assert_eq!(last["bytes"].as_u64(), Some(blob.len() as u64), "{stderr}");
    assert_eq!(last["total"].as_u64(), Some(blob.len() as u64), "{stderr}");
    // The summary line still comes after them.
    assert!(
        stderr.lines().last().unwrap().starts_with("dfget: "),
        "{stderr}"
    );
}

#[test]
fn the_progress_bar_draws_on_a_terminal_only() {
    let blob = random_blob(2 * MIB, 162);
    let origin = FaultyOrigin::always(blob, Fault::Trickle(1 << 20));
    let url = format!("http://{}/file", origin.addr());
    let dir = tempfile::tempdir().unwrap();
    let on_a_tty = |out: &str, extra: &str| {
        // script(1) runs the command on a pty and copies what it draws to stdout.
        let cmd = format!(
            "{} {url} -O {} --keep-serving 0s {extra}",
            bin("dfget").display(),
            dir.path().join(out).display()
        );
        let o = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let drawn = on_a_tty("tty", "");
    assert!(
        drawn.contains("/2.00 MiB"),
        "no progress bar on a terminal: {drawn:?}"
    );
    let plain = on_a_tty("tty-off", "--no-progress");
    assert!(!plain.contains("/2.00 MiB"), "{plain:?}");
    assert!(plain.contains("dfget: "), "{plain:?}");
    // Not a terminal: no bar either.
    let (ok, stderr) = dfget(&url, &dir.path().join("pipe"), &[]);
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("/2.00 MiB"), "{stderr:?}");
}
