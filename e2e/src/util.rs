//! Small helpers: binaries, ports, blobs, hashing, polling.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Path of a workspace binary (`supernode`, `dfget`, ...) built by `cargo build --workspace`.
///
/// A test executable is `<target>/<profile>/deps/<test>-<hash>` and a workspace binary (the
/// demo) is `<target>/<profile>/<bin>`, so the binaries of the same profile are in the
/// executable's directory or its parent. Panics with instructions if the binary is missing.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("cannot determine the current test executable");
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(&file))
        .collect();
    let found = candidates.iter().find(|p| p.is_file());
    found.cloned().unwrap_or_else(|| {
        panic!(
            "binary `{name}` not found in {candidates:?}; the end-to-end tests need the \
             workspace binaries: run `cargo build --workspace --all-targets` (with the same \
             CARGO_TARGET_DIR and profile) first"
        )
    })
}

/// Whether the machine can bind TCP on the IPv6 loopback `[::1]`.
pub fn ipv6_loopback_available() -> bool {
    TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// A TCP port that was free on `ip` a moment ago (the listener is closed before returning).
///
/// Prefer letting a program bind port 0 and reading the address from its log when it supports it:
/// another process may take the port between this call and the program's bind.
pub fn free_tcp_port(ip: IpAddr) -> u16 {
    TcpListener::bind(SocketAddr::new(ip, 0))
        .and_then(|listener| listener.local_addr())
        .unwrap_or_else(|error| panic!("cannot find a free TCP port on {ip}: {error}"))
        .port()
}

/// A UDP port (e.g. for QUIC) that was free on `ip` a moment ago. See [`free_tcp_port`].
pub fn free_udp_port(ip: IpAddr) -> u16 {
    UdpSocket::bind(SocketAddr::new(ip, 0))
        .and_then(|socket| socket.local_addr())
        .unwrap_or_else(|error| panic!("cannot find a free UDP port on {ip}: {error}"))
        .port()
}

/// `size` pseudo-random, incompressible bytes, the same for the same `seed` (SplitMix64 stream).
pub fn random_blob(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed ^ 0x5DEE_CE66_D1CE_B00C;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut blob = vec![0u8; size];
    let mut chunks = blob.chunks_exact_mut(8);
    for chunk in &mut chunks {
        chunk.copy_from_slice(&next().to_le_bytes());
    }
    let tail = chunks.into_remainder();
    let last = next().to_le_bytes();
    tail.copy_from_slice(&last[..tail.len()]);
    blob
}

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// OCI digest of `data`: `sha256:<hex>`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// Polls `condition` every 20 ms until it returns true; returns false after `timeout`.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The last `max_lines` lines of `text`.
pub(crate) fn tail(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}

/// Sum of the samples of metric `name` in a Prometheus/OpenMetrics text, over the label sets
/// containing `label` (e.g. `source="peer"`), or all label sets.
pub fn metric_sum(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (base, labels) = key.split_once('{').unwrap_or((key, ""));
            (base == name && label.is_none_or(|want| labels.contains(want)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Whether this process runs as root; prints why `test` is skipped if not (containerd
/// mounts snapshots and runs containers, which needs root).
pub fn running_as_root(test: &str) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    // The owner of /proc/self is the process's effective uid.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        eprintln!("skipping {test}: it must run as root");
    }
    root
}

/// A command's status, stdout and stderr, for assertion messages.
pub fn describe_output(output: &std::process::Output) -> String {
    format!(
        "status {}\n---- stdout ----\n{}\n---- stderr ----\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A stub HTTP server (a registry or origin that lies) answering every request, whatever
/// its path, with 200 and `body`; HEAD gets the headers only. For faults a real registry
/// cannot produce: other bytes than the digest in the URL names.
///
/// # Panics
/// Binding a loopback port fails.
pub fn lying_http_server(body: Vec<u8>) -> SocketAddr {
    use crate::stub_http::RequestHead;
    use std::io::{BufReader, Write as _};
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let addr = listener
        .local_addr()
        .expect("a bound socket has an address");
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let body = body.clone();
            thread::spawn(move || {
                let Ok(clone) = conn.try_clone() else { return };
                let mut reader = BufReader::new(clone);
                // One request after another on the connection (keep-alive).
                while let Ok(Some(request)) = RequestHead::read(&mut reader) {
                    let head_only = request.method == "HEAD";
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                        body.len()
                    );
                    if conn.write_all(head.as_bytes()).is_err()
                        || (!head_only && conn.write_all(&body).is_err())
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The cluster secret every supernode, dfdaemon and dfget the harness starts is given
/// (`--cluster-secret-file`), so every test runs with piece tokens issued and checked, as a
/// production cluster should. Tests mint or forge tokens with it.
pub const TEST_CLUSTER_SECRET: &str = "damselfly-e2e-cluster-secret-0123456789abcdef";

/// A file holding [`TEST_CLUSTER_SECRET`] (with a trailing newline, as `echo` writes it),
/// written once per test process.
pub fn cluster_secret_file() -> PathBuf {
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("damselfly-e2e-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the cluster secret directory");
        let path = dir.join("cluster-secret");
        std::fs::write(&path, format!("{TEST_CLUSTER_SECRET}\n"))
            .expect("writing the cluster secret");
        path
    })
    .clone()
}

/// One Ed25519 digest signing key for this test process's supernode fleets (made once), as
/// a fleet's supernodes share `cluster.signing_key_file` so that one can check what another
/// vouched for.
///
/// # Panics
/// The key cannot be made.
pub fn fleet_signing_key_file() -> PathBuf {
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("damselfly-e2e-fleet-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the fleet key directory");
        let path = dir.join("signing.key");
        damselfly_common::vouch::DigestSigner::load_or_create(&path)
            .expect("making the fleet signing key");
        path
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_blob_is_deterministic_and_sized() {
        let a = random_blob(1001, 7);
        assert_eq!(a.len(), 1001);
        assert_eq!(a, random_blob(1001, 7));
        assert_ne!(a, random_blob(1001, 8));
        assert_eq!(random_blob(0, 1).len(), 0);
        // Prefix-stable: a shorter blob is a prefix of a longer one with the same seed.
        assert_eq!(&random_blob(5000, 3)[..1001], &random_blob(1001, 3)[..]);
    }

    #[test]
    fn sha256_of_hello() {
        assert_eq!(
            sha256_digest(b"hello"),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }
}
