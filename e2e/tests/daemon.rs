#![allow(clippy::unwrap_used)]
//! Exercises the generic process wrapper with ordinary shell commands.

use std::time::Duration;

use damselfly_e2e::Daemon;

#[test]
fn waits_for_logs_and_terminates() {
    let mut daemon = Daemon::builder("sh")
        .name("shell")
        .env("GREETING", "hello")
        .args([
            "-c",
            "echo \"$GREETING from stdout\"; echo 'listening on [::1]:4567' >&2; \
             trap 'echo got TERM; exit 3' TERM; while true; do sleep 0.05; done",
        ])
        .spawn()
        .unwrap();
    let line = daemon
        .wait_for_log("from stdout", Duration::from_secs(10))
        .unwrap();
    assert_eq!(line, "hello from stdout");
    let addr = daemon
        .wait_for_listen_addr("listening on ", Duration::from_secs(10))
        .unwrap();
    assert_eq!(addr, "[::1]:4567".parse().unwrap());
    assert!(daemon.is_running());
    let status = daemon.terminate(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(daemon.stdout_text().contains("got TERM"));
}

#[test]
fn reports_early_exit_with_log() {
    let mut daemon = Daemon::builder("sh")
        .args(["-c", "echo boom >&2; exit 1"])
        .spawn()
        .unwrap();
    let error = daemon
        .wait_for_log("never printed", Duration::from_secs(10))
        .unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("exited"), "{message}");
    assert!(message.contains("boom"), "{message}");
}

#[test]
fn killed_on_drop() {
    let daemon = Daemon::builder("sleep").arg("1000").spawn().unwrap();
    let pid = daemon.pid();
    drop(daemon);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn timeout_error() {
    let mut daemon = Daemon::builder("sleep").arg("1000").spawn().unwrap();
    let error = daemon
        .wait_for_log("nothing", Duration::from_millis(200))
        .unwrap_err();
    assert!(format!("{error:#}").contains("timed out"));
    daemon.kill();
    assert!(!daemon.is_running());
}

#[test]
#[should_panic(expected = "cargo build --workspace --all-targets")]
fn missing_binary_explains_how_to_build() {
    let _ = damselfly_e2e::bin("no-such-damselfly-binary");
}
