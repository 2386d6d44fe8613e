//! Where each blob this node holds came from, and why the registry was used if it was.
//!
//! After every download the node records a [`Provenance`]: the way it took (the swarm and
//! its supernode, or the registry and the reason), the verified bytes from peers (per
//! parent), the supernode and the registry, and how long it took. The record is kept as a
//! small JSON file beside the node cache (`<data_dir>/provenance/<hex>.json`) for as long
//! as the blob stays in the cache, so it survives restarts. It answers three questions:
//!
//! - every blob response carries [`SOURCE_HEADER`] ([`Source::header_value`]): `local`
//!   (with how the cached copy was fetched), `swarm` or `registry` (with the reason);
//! - `GET /api/v1/blobs/<digest>` on the mirror's port (loopback callers only) returns what
//!   the node knows of a blob as JSON ([`Explanation`]);
//! - `dfdaemon explain <digest>` prints that for people ([`Explanation::render`]).

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use damselfly_common::Digest;
use dfget::{ParentBytes, Report, SupernodeCopy, Via};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

/// The response header naming where a blob's bytes come from.
pub const SOURCE_HEADER: &str = "x-damselfly-source";

/// How one blob reached this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Blob size.
    pub size: u64,
    /// When the download finished, seconds since the Unix epoch.
    pub fetched_unix: u64,
    /// How long the download took, in seconds.
    pub secs: f64,
    /// `swarm` or `registry`: the way the download ended on.
    pub via: Way,
    /// The supernode of a swarm download (`host:port`).
    pub supernode: Option<String>,
    /// Where the supernode's copy stood when this node registered: `stored` (no registry
    /// request for this pull), `fetching` (an earlier pull's fetch), `started` (this pull
    /// made the supernode fetch it from the registry).
    #[serde(default)]
    pub supernode_copy: Option<SupernodeCopy>,
    /// Verified bytes from other peers.
    pub from_peers: u64,
    /// Verified bytes from the supernode.
    pub from_supernode: u64,
    /// Bytes fetched from the registry by this node itself.
    pub from_registry: u64,
    /// Why this node went to the registry: the `reason` label of
    /// `damselfly_dfdaemon_p2p_fallbacks_total`.
    pub registry_reason: Option<String>,
    /// The same, for people (e.g. `supernode unreachable (10.0.0.2:8002: connection refused)`).
    pub registry_detail: Option<String>,
    /// Peers whose pieces were kept, with their bytes, most first.
    pub parents: Vec<ParentBytes>,
}

/// The way a download took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Way {
    /// Peers and the supernode.
    Swarm,
    /// The registry, by this node.
    Registry,
}

impl Provenance {
    /// The record of `report`, a finished download of `digest`.
    pub fn of(digest: &Digest, report: &Report, fetched_unix: u64) -> Self {
        let (reason, detail) = match &report.back_source {
            Some(b) => (Some(b.reason.label().to_owned()), Some(b.detail.clone())),
            None => (None, None),
        };
        Self {
            digest: digest.to_string(),
            size: report.bytes,
            fetched_unix,
            secs: report.elapsed.as_secs_f64(),
            via: if report.back_source.is_some() {
                Way::Registry
            } else {
                Way::Swarm
            },
            supernode: report.supernode.clone(),
            supernode_copy: report.supernode_copy,
            from_peers: report.from_peers,
            from_supernode: report.from_supernode,
            from_registry: report.from_origin,
            registry_reason: reason,
            registry_detail: detail,
            parents: report.parents.clone(),
        }
    }
}

/// Where the bytes of one blob response come from, as [`SOURCE_HEADER`] says it.
#[derive(Debug, Clone, PartialEq)]
pub enum Source<'a> {
    /// This node's cache; how the copy was fetched, if recorded.
    Local(Option<&'a Provenance>),
    /// A download in progress, taking this way.
    Downloading(&'a Via),
}

impl Source<'_> {
    /// The header value: a word (`local`, `swarm`, `registry`) then `; key=value` pairs.
    ///
    /// - `local; fetched=swarm; peers=1048576; supernode=0; registry=0; supernode-copy=stored`
    /// - `local; fetched=registry; peers=0; supernode=0; registry=4096; reason=supernode_unreachable`
    /// - `swarm; supernode=10.0.0.2:8002; supernode-copy=started`
    /// - `registry; reason=supernode_lost`
    pub fn header_value(&self) -> String {
        let mut v = String::new();
        match self {
            Source::Local(None) => v.push_str("local"),
            Source::Local(Some(p)) => {
                let way = match p.via {
                    Way::Swarm => "swarm",
                    Way::Registry => "registry",
                };
                let _ = write!(
                    v,
                    "local; fetched={way}; peers={}; supernode={}; registry={}",
                    p.from_peers, p.from_supernode, p.from_registry
                );
                if let Some(r) = &p.registry_reason {
                    let _ = write!(v, "; reason={r}");
                }
                if let Some(c) = p.supernode_copy {
                    let _ = write!(v, "; supernode-copy={}", c.label());
                }
            }
            Source::Downloading(Via::Swarm { supernode, copy }) => {
                let _ = write!(v, "swarm; supernode={supernode}");
                if let Some(c) = copy {
                    let _ = write!(v, "; supernode-copy={}", c.label());
                }
            }
            Source::Downloading(Via::Origin(why)) => {
                let _ = write!(v, "registry; reason={}", why.reason.label());
            }
        }
        v
    }
}

/// The records of the blobs in the node cache, in memory and under one directory.
#[derive(Debug)]
pub struct Ledger {
    dir: PathBuf,
    records: Mutex<HashMap<Digest, Arc<Provenance>>>,
}

impl Ledger {
    /// Opens (creating) `dir` and loads its records. Unreadable records are removed (a
    /// blob without one is answered as plain `local`).
    ///
    /// # Errors
    /// The directory cannot be created or listed.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut records = HashMap::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let loaded = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Provenance>(&b).map_err(|e| e.to_string()))
                .and_then(|p| {
                    let d = p.digest.parse::<Digest>().map_err(|e| e.to_string())?;
                    if path.file_name() == Some(file_name(&d).as_ref()) {
                        Ok((d, p))
                    } else {
                        Err("file name does not match its digest".to_owned())
                    }
                });
            match loaded {
                Ok((d, p)) => {
                    records.insert(d, Arc::new(p));
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "removing an unreadable provenance record");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            records: Mutex::new(records),
        })
    }

    /// Keeps the record of `p` (replacing any earlier one). A failure to write the file
    /// is logged: the record then lasts until the daemon stops.
    pub fn record(&self, digest: Digest, p: Provenance) {
        let path = self.dir.join(file_name(&digest));
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&p)
            .map_err(io::Error::other)
            .and_then(|bytes| {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                std::fs::rename(&tmp, &path)
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            warn!(%digest, error = %e, "cannot store the blob's provenance record");
        }
        self.records.lock().insert(digest, Arc::new(p));
    }

    /// The record of `digest`, if any.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Provenance>> {
        self.records.lock().get(digest).cloned()
    }

    /// Drops the record of `digest` (the blob left the cache).
    pub fn forget(&self, digest: &Digest) {
        if self.records.lock().remove(digest).is_some() {
            let path = self.dir.join(file_name(digest));
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                debug!(%digest, error = %e, "cannot remove a provenance record");
            }
        }
    }

    /// Drops every record whose blob is not in `held`.
    pub fn retain(&self, held: &[Digest]) {
        let held: std::collections::HashSet<&Digest> = held.iter().collect();
        let gone: Vec<Digest> = self
            .records
            .lock()
            .keys()
            .filter(|d| !held.contains(d))
            .copied()
            .collect();
        for d in gone {
            self.forget(&d);
        }
    }
}

fn file_name(digest: &Digest) -> String {
    format!("{}.json", hex::encode(digest.0))
}

/// What `GET /api/v1/blobs/<digest>` answers: what this node knows of a blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// `sha256:<hex>`.
    pub digest: String,
    /// `cached`, `downloading` or `unknown` (never seen, or evicted).
    pub state: String,
    /// Blob size, when known.
    pub size: Option<u64>,
    /// The registry URL the cached copy was first fetched from.
    pub url: Option<String>,
    /// A download in progress: verified bytes so far.
    pub downloaded: Option<u64>,
    /// A download in progress: `swarm` or `registry`, once decided.
    pub downloading_via: Option<Way>,
    /// A download in progress through the registry: why.
    pub downloading_reason: Option<String>,
    /// How the cached copy was fetched (absent for blobs cached before this was recorded).
    pub fetch: Option<Provenance>,
}

impl Explanation {
    /// A text for people, as `dfdaemon explain` prints it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let size = self.size.map(human).unwrap_or_default();
        let _ = match self.state.as_str() {
            "cached" => writeln!(out, "{}: in this node's cache ({size})", self.digest),
            "downloading" => writeln!(
                out,
                "{}: downloading ({} of {size} so far){}",
                self.digest,
                human(self.downloaded.unwrap_or(0)),
                match (self.downloading_via, &self.downloading_reason) {
                    (Some(Way::Swarm), _) => " through the swarm".to_owned(),
                    (Some(Way::Registry), Some(r)) => format!(" from the registry ({r})"),
                    _ => String::new(),
                }
            ),
            _ => writeln!(
                out,
                "{}: not on this node (never pulled through it, or evicted from its cache)",
                self.digest
            ),
        };
        if let Some(url) = &self.url {
            let _ = writeln!(out, "  registry URL   {url}");
        }
        if let Some(p) = &self.fetch {
            let when = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(p.fetched_unix),
            );
            let way = match (p.via, &p.supernode) {
                (Way::Swarm, Some(sn)) => format!("through the swarm (supernode {sn})"),
                (Way::Swarm, None) => "through the swarm".to_owned(),
                (Way::Registry, _) => "from the registry, by this node".to_owned(),
            };
            let _ = writeln!(out, "  fetched        {when} in {:.2} s {way}", p.secs);
            let _ = writeln!(out, "  from peers     {}", human(p.from_peers));
            for parent in &p.parents {
                let _ = writeln!(out, "    {:<26} {}", parent.addr, human(parent.bytes));
            }
            let _ = writeln!(out, "  from supernode {}", human(p.from_supernode));
            match p.supernode_copy {
                Some(SupernodeCopy::Stored) => {
                    let _ = writeln!(
                        out,
                        "  supernode copy stored: it held the whole blob, no registry request for this pull"
                    );
                }
                Some(SupernodeCopy::Fetching) => {
                    let _ = writeln!(
                        out,
                        "  supernode copy fetching: its registry fetch, started by an earlier pull, was under way"
                    );
                }
                Some(SupernodeCopy::Started) => {
                    let _ = writeln!(
                        out,
                        "  supernode copy started: this pull made the supernode fetch the blob from the registry (once for the cluster)"
                    );
                }
                None => {}
            }
            let _ = writeln!(out, "  from registry  {}", human(p.from_registry));
            if let Some(reason) = &p.registry_reason {
                let detail = p.registry_detail.as_deref().unwrap_or_default();
                let _ = writeln!(out, "  registry used  because {detail} [{reason}]");
            } else {
                let _ = writeln!(
                    out,
                    "  registry used  no (this node sent the registry no blob request)"
                );
            }
        } else if self.state == "cached" {
            let _ = writeln!(
                out,
                "  (no record of how it was fetched: cached by an older dfdaemon, or its record was lost)"
            );
        }
        out
    }
}

fn human(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    format!("{} ({bytes} B)", bytesize::ByteSize(bytes))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use dfget::{BackSource, FallbackReason};

    use super::*;

    fn report(back: Option<BackSource>) -> Report {
        Report {
            task_id: "t".into(),
            bytes: 3 << 20,
            elapsed: Duration::from_millis(420),
            from_peers: 2 << 20,
            from_supernode: 1 << 20,
            supernode: Some("10.0.0.2:8002".into()),
            supernode_copy: Some(SupernodeCopy::Started),
            parents: vec![ParentBytes {
                addr: "10.0.0.5:65002".into(),
                bytes: 2 << 20,
            }],
            back_source: back,
            ..Report::default()
        }
    }

    #[test]
    fn the_header_names_the_way_and_the_bytes() {
        let d = Digest::of(b"blob");
        let p = Provenance::of(&d, &report(None), 1);
        assert_eq!(
            Source::Local(Some(&p)).header_value(),
            "local; fetched=swarm; peers=2097152; supernode=1048576; registry=0; supernode-copy=started"
        );
        assert_eq!(Source::Local(None).header_value(), "local");
        let why = BackSource {
            reason: FallbackReason::SupernodeUnreachable,
            detail: "supernode unreachable (x)".into(),
        };
        let mut r = report(Some(why.clone()));
        r.from_peers = 0;
        r.from_supernode = 0;
        r.from_origin = 3 << 20;
        r.supernode_copy = None;
        let p = Provenance::of(&d, &r, 1);
        assert_eq!(p.via, Way::Registry);
        assert_eq!(
            Source::Local(Some(&p)).header_value(),
            "local; fetched=registry; peers=0; supernode=0; registry=3145728; reason=supernode_unreachable"
        );
        assert_eq!(
            Source::Downloading(&Via::Origin(why)).header_value(),
            "registry; reason=supernode_unreachable"
        );
        assert_eq!(
            Source::Downloading(&Via::Swarm {
                supernode: "[::1]:8002".into(),
                copy: None,
            })
            .header_value(),
            "swarm; supernode=[::1]:8002"
        );
        assert_eq!(
            Source::Downloading(&Via::Swarm {
                supernode: "sn:8002".into(),
                copy: Some(SupernodeCopy::Stored),
            })
            .header_value(),
            "swarm; supernode=sn:8002; supernode-copy=stored"
        );
    }

    #[test]
    fn records_survive_a_reopen_and_leave_with_their_blob() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.record(a, Provenance::of(&a, &report(None), 7));
        ledger.record(b, Provenance::of(&b, &report(None), 8));
        // A stray and a damaged file are dropped on open, not fatal.
        std::fs::write(dir.path().join("junk.json"), b"{").unwrap();
        let reopened = Ledger::open(dir.path()).unwrap();
        assert_eq!(reopened.get(&a).unwrap().fetched_unix, 7);
        assert!(!dir.path().join("junk.json").exists());
        reopened.retain(&[b]);
        assert!(reopened.get(&a).is_none());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        reopened.forget(&b);
        assert!(reopened.get(&b).is_none());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_explanation_reads_for_people() {
        let d = Digest::of(b"a");
        let e = Explanation {
            digest: d.to_string(),
            state: "cached".into(),
            size: Some(3 << 20),
            url: Some("http://reg/v2/x/blobs/sha256:..".into()),
            downloaded: None,
            downloading_via: None,
            downloading_reason: None,
            fetch: Some(Provenance::of(&d, &report(None), 0)),
        };
        let text = e.render();
        assert!(text.contains("in this node's cache (3.0 MiB"), "{text}");
        assert!(
            text.contains("through the swarm (supernode 10.0.0.2:8002)"),
            "{text}"
        );
        assert!(text.contains("10.0.0.5:65002"), "{text}");
        assert!(text.contains("registry used  no"), "{text}");
        assert!(
            text.contains("this pull made the supernode fetch"),
            "{text}"
        );
        // A record written before `supernode_copy` existed still loads.
        let old = r#"{"digest":"sha256:00","size":1,"fetched_unix":0,"secs":0.1,"via":"swarm",
            "supernode":null,"from_peers":0,"from_supernode":1,"from_registry":0,
            "registry_reason":null,"registry_detail":null,"parents":[]}"#;
        let p: Provenance = serde_json::from_str(old).unwrap();
        assert_eq!(p.supernode_copy, None);
        let unknown = Explanation {
            state: "unknown".into(),
            fetch: None,
            size: None,
            url: None,
            ..e
        };
        assert!(unknown.render().contains("not on this node"));
    }
}
