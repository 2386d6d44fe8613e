#![allow(clippy::unwrap_used)]
//! The example configs and systemd units under `deploy/` are what the daemons accept: each
//! daemon is started the way its unit starts it (`ExecStart`), with the example config in
//! place of `/etc/damselfly/<daemon>.toml`, and must report healthy and stop cleanly.
//!
//! Only the listen addresses and the data directory are overridden (by flag, as the daemons
//! allow for every key), so the tests use free ports and a temporary directory instead of
//! `/var/lib/damselfly`.
//!
//! The Grafana dashboard and docs/operations.md must name exactly the metrics the daemons
//! export: a blob goes through a real swarm and a node without a reachable supernode, so
//! every metric family shows up, and the names are compared.

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use damselfly_e2e::{
    Dfdaemon, Supernode, TestRegistry, bin, describe_output, free_tcp_port, http, random_blob,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The arguments of the unit's `ExecStart` after the binary, with the example config file in
/// place of the installed one.
fn unit_args(unit: &str, binary: &str) -> Vec<String> {
    let path = repo().join("deploy/systemd").join(unit);
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("{} has no ExecStart", path.display()));
    let mut words = line.split_whitespace();
    assert_eq!(
        words.next(),
        Some(format!("/usr/local/bin/{binary}").as_str())
    );
    let config = format!("/etc/damselfly/{binary}.toml");
    let example = repo().join("deploy/config").join(format!("{binary}.toml"));
    let args: Vec<String> = words
        .map(|w| {
            if w == config {
                example.display().to_string()
            } else {
                w.to_owned()
            }
        })
        .collect();
    assert!(
        args.iter().any(|a| *a == example.display().to_string()),
        "{unit} does not start {binary} with {config}: {line}"
    );
    args
}

#[test]
fn supernode_starts_with_the_example_config_as_its_unit_runs_it() {
    let sn = Supernode::builder()
        .args(unit_args("damselfly-supernode.service", "supernode"))
        .start();
    let metrics = sn.metrics().unwrap();
    assert!(
        metrics.contains("damselfly_supernode_origin_bytes_total"),
        "{metrics}"
    );
    sn.stop().unwrap();
}

#[test]
fn dfdaemon_starts_with_the_example_config_as_its_unit_runs_it() {
    let d = Dfdaemon::builder()
        .args(unit_args("damselfly-dfdaemon.service", "dfdaemon"))
        .start();
    assert_eq!(
        d.metric("damselfly_dfdaemon_downloads", None).unwrap(),
        0.0,
        "a fresh node has no download running"
    );
    d.stop().unwrap();
}

#[test]
fn the_documented_init_command_works_with_the_example_config() {
    // As the dfdaemon unit's header says: `dfdaemon --config ... init containerd --write`.
    let hosts = tempfile::tempdir().unwrap();
    let example = repo().join("deploy/config/dfdaemon.toml");
    let out = std::process::Command::new(bin("dfdaemon"))
        .arg("--config")
        .arg(&example)
        .args(["init", "containerd", "--write", "--hosts-dir"])
        .arg(hosts.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe_output(&out));
    for dir in ["_default", "docker.io"] {
        let text = std::fs::read_to_string(hosts.path().join(dir).join("hosts.toml")).unwrap();
        assert!(text.contains("[host.\"http://127.0.0.1:65001\"]"), "{text}");
    }
    // A typo in a key is refused (exit 64) with the key named, as the example's header says.
    let bad = hosts.path().join("bad.toml");
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace("back_source =", "back_sourse =");
    assert!(
        text.contains("back_sourse ="),
        "the example must set back_source"
    );
    std::fs::write(&bad, text).unwrap();
    let mut d = damselfly_e2e::Daemon::builder(bin("dfdaemon"))
        .arg("--config")
        .arg(&bad)
        .spawn()
        .unwrap();
    let status = d.wait_exit(Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(64), "{}", d.log_text());
    assert!(d.log_text().contains("back_sourse"), "{}", d.log_text());
}

/// Sample names a query can use and family names, from `# TYPE` lines of /metrics texts.
fn exported(texts: &[String]) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut samples, mut families) = (BTreeSet::new(), BTreeSet::new());
    for line in texts.iter().flat_map(|t| t.lines()) {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        families.insert(name.to_owned());
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        samples.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    (samples, families)
}

/// Every `damselfly_…` metric name in `text` (prefixes such as `damselfly_dfdaemon_` left out).
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("damselfly_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if !tail[..end].ends_with('_') {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn dashboard_and_operations_doc_name_exactly_the_exported_metrics() {
    let registry = TestRegistry::start();
    let data = random_blob(3 << 20, 71);
    let digest = registry.push_blob("deploy/metrics", &data);
    let sn = Supernode::builder().start();
    let node = Dfdaemon::builder().supernode(sn.addr()).start();
    let path = format!("/v2/deploy/metrics/blobs/{digest}?ns={}", registry.host());
    let got = http::get(&format!("{}{path}", node.url()), None).unwrap();
    assert_eq!(got.status, 200);
    assert!(got.body == data, "the blob came back different");
    // A node whose supernode is gone, with back-to-source off: a 502, an error and a
    // fallback are counted.
    let lonely = Dfdaemon::builder()
        .name("lonely")
        .supernode(format!(
            "127.0.0.1:{}",
            free_tcp_port(std::net::Ipv4Addr::LOCALHOST.into())
        ))
        .args(["--back-source", "false"])
        .start();
    let refused = http::get(&format!("{}{path}", lonely.url()), None).unwrap();
    assert_eq!(refused.status, 502, "{}", refused.text());

    let texts: Vec<String> = [
        sn.metrics().unwrap(),
        node.metrics().unwrap(),
        lonely.metrics().unwrap(),
    ]
    .into();
    let (samples, families) = exported(&texts);
    assert!(families.len() >= 20, "{families:?}");

    let dashboard = std::fs::read_to_string(repo().join("deploy/grafana/damselfly.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let queries: Vec<&str> = json["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    assert!(queries.len() >= 20, "{queries:?}");
    let used = names_in(&queries.join("\n"));
    let unknown: Vec<_> = used.difference(&samples).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries unknown metrics: {unknown:?}"
    );

    let doc = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let named = names_in(&doc);
    let unknown: Vec<_> = named
        .iter()
        .filter(|n| !samples.contains(*n) && !families.contains(*n))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/operations.md names unknown metrics: {unknown:?}"
    );
    let undocumented: Vec<_> = families
        .iter()
        .filter(|f| !named.contains(*f) && !named.contains(&format!("{f}_total")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "metrics missing from docs/operations.md: {undocumented:?}"
    );
}
