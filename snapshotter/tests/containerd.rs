//! The snapshotter under a real containerd (Debian's 1.6, as a proxy plugin), with a real
//! `docker-registry` and runc: pull an ordinary image, run it, survive a snapshotter restart,
//! remove everything and find the snapshotter empty.
//!
//! Needs root (containerd mounts the snapshots and runs containers); skipped otherwise.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use containerd_snapshots::api::snapshots::v1::Kind;
use damselfly_e2e::{
    Containerd, TestImage, TestRegistry, describe_output as describe, running_as_root, wait_until,
    write_hosts_toml,
};

const HELLO: &str = "hello through the damselfly snapshotter";

/// containerd's own view, through the backend: `ctr snapshots usage` asks the snapshotter.
fn containerd_reaches_snapshotter(containerd: &Containerd) -> bool {
    containerd
        .ctr(&["snapshots", "--snapshotter", common::NAME, "usage"])
        .is_ok_and(|output| output.status.success())
}

fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn containerd_pulls_runs_and_removes_an_ordinary_image_through_the_snapshotter() {
    if !running_as_root("containerd_pulls_runs_and_removes_an_ordinary_image") {
        return;
    }
    let registry = TestRegistry::start();
    let image = TestImage::busybox(HELLO, 256 * 1024, 15).unwrap();
    assert_eq!(image.layers.len(), 3);
    registry
        .push_test_image("e2e/busybox", "1", &image)
        .unwrap();

    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    let socket = state.path().join("snapshotter.sock");
    let mut snapshotter = common::spawn(&root, &socket, None);
    let containerd = Containerd::builder()
        .proxy_snapshotter(common::NAME, &socket)
        .snapshotter(common::NAME)
        .start()
        .unwrap();

    let hosts = tempfile::tempdir().unwrap();
    let host = registry.host();
    write_hosts_toml(hosts.path(), &host, "", Some(&registry.url())).unwrap();
    let reference = format!("{host}/e2e/busybox:1");
    let pull = containerd.pull(&reference, hosts.path()).unwrap();
    assert!(pull.status.success(), "pull failed: {}", describe(&pull));

    // The three layers are committed snapshots of ours, one chain.
    let infos = common::walk_blocking(&socket).unwrap();
    assert_eq!(infos.len(), 3, "{infos:#?}");
    assert!(infos.iter().all(|info| info.kind() == Kind::Committed));
    let roots: Vec<_> = infos.iter().filter(|info| info.parent.is_empty()).collect();
    assert_eq!(roots.len(), 1, "{infos:#?}");
    for info in infos.iter().filter(|info| !info.parent.is_empty()) {
        assert!(
            infos.iter().any(|other| other.name == info.parent),
            "{infos:#?}"
        );
    }

    let run = containerd
        .run(&reference, "hello", &["cat", "/etc/damselfly/hello.txt"])
        .unwrap();
    assert!(run.status.success(), "run failed: {}", describe(&run));
    assert_eq!(String::from_utf8_lossy(&run.stdout), image.hello);
    // The image's own command (from its config) and a write into the container's layer.
    let run = containerd.run(&reference, "default", &[]).unwrap();
    assert!(run.status.success(), "run failed: {}", describe(&run));
    assert_eq!(String::from_utf8_lossy(&run.stdout), HELLO);
    let run = containerd
        .run(
            &reference,
            "write",
            &[
                "sh",
                "-c",
                "echo changed > /etc/damselfly/hello.txt && cat /etc/damselfly/hello.txt",
            ],
        )
        .unwrap();
    assert!(run.status.success(), "run failed: {}", describe(&run));
    assert_eq!(String::from_utf8_lossy(&run.stdout), "changed\n");

    // Killed and started again on the same root: the layers are still there and unchanged.
    snapshotter.kill();
    drop(snapshotter);
    let snapshotter = common::spawn(&root, &socket, None);
    assert!(
        wait_until(Duration::from_secs(20), || containerd_reaches_snapshotter(
            &containerd
        )),
        "containerd did not reconnect:\n{}",
        containerd.log_text()
    );
    // (A removed container's snapshot may still be listed: containerd's garbage collector
    // could not reach the snapshotter while it was down, and removes it on its next run.)
    let committed = common::walk_blocking(&socket)
        .unwrap()
        .into_iter()
        .filter(|info| info.kind() == Kind::Committed)
        .count();
    assert_eq!(committed, 3);
    let run = containerd
        .run(&reference, "again", &["cat", "/etc/damselfly/hello.txt"])
        .unwrap();
    assert!(run.status.success(), "run failed: {}", describe(&run));
    assert_eq!(String::from_utf8_lossy(&run.stdout), image.hello);

    // Image gone (containerd's garbage collector removes the snapshots, children first, then
    // calls Cleanup): nothing is left in the snapshotter, in memory or on disk.
    containerd.remove_image(&reference).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || common::walk_blocking(&socket)
            .is_ok_and(|infos| infos.is_empty())),
        "snapshots left: {:#?}\n{}",
        common::walk_blocking(&socket),
        snapshotter.log_text()
    );
    assert_eq!(entries(&root.join("meta")), Vec::<String>::new());
    assert_eq!(entries(&root.join("snapshots")), Vec::<String>::new());
    assert!(
        !snapshotter.log_text().contains("ERROR"),
        "{}",
        snapshotter.log_text()
    );
}
