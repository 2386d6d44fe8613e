//! Prometheus metrics of dfdaemon (prefix `damselfly_dfdaemon_`). Labels are bounded sets,
//! never repositories, digests or URLs.

use std::sync::Arc;

use damselfly_oci::retry::OriginFailures;
use damselfly_store::{Fault, StorageFailures};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Labels of a handled request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `base`, `manifest`, `blob`, `other`, `invalid`, `preheat`.
    pub kind: &'static str,
    /// Status class: `2xx`, `3xx`, `4xx`, `5xx`.
    pub status: &'static str,
}

/// Where blob bytes came from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Source {
    /// The registry, fetched by this node (back to source).
    Origin,
    /// Other peers.
    Peer,
    /// The supernode (which fetched from the registry once for everyone).
    Supernode,
    /// This node's cache.
    Local,
}

impl Source {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Origin => "origin",
            Self::Peer => "peer",
            Self::Supernode => "supernode",
            Self::Local => "local",
        }
    }
}

/// Label set for bytes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `origin`, `peer`, `supernode` or `local`.
    pub source: &'static str,
}

/// Label set for fallbacks and errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A short, fixed reason.
    pub reason: &'static str,
}

/// The `reason`s of `access_refusals_total`.
pub const ACCESS_REFUSALS: [&str; 6] = [
    "registry_denied",
    "unlisted_proxied",
    "unlisted_refused",
    "forbidden_address",
    "piece_token",
    "control_credential",
];
/// All dfdaemon metrics; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Requests answered, by kind and status class.
    pub requests: Family<RequestLabels, Counter>,
    /// Blob bytes obtained, by source. Local bytes count every cache read served.
    pub bytes: Family<SourceLabels, Counter>,
    /// Blobs that went to the origin instead of the swarm, by reason.
    pub fallbacks: Family<ReasonLabels, Counter>,
    /// Failures, by reason.
    pub errors: Family<ReasonLabels, Counter>,
    /// Blob requests not served from this node for want of access, by reason.
    pub access_refusals: Family<ReasonLabels, Counter>,
    /// Failed attempts of the node's own origin fetches (back to source).
    pub origin_failures: OriginFailures,
    /// Blob downloads in progress.
    pub downloads: Gauge,
    /// Bytes held in the node cache.
    pub cache_bytes: Gauge,
    /// Blobs evicted by GC.
    pub evictions: Counter,
    /// Blob downloads started because a manifest passing through listed them.
    pub prefetched_blobs: Counter,
    /// Downloads moved to the next supernode in the blob's placement order because theirs
    /// was lost mid-download.
    pub supernode_takeovers: Counter,
    /// Local storage failures (a download refused for want of space, a failed write), by
    /// reason: the same labels as the supernode's.
    pub storage_failures: StorageFailures,
}

impl Metrics {
    /// Creates the metrics and registers them under `damselfly_dfdaemon_`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("damselfly_dfdaemon");
        r.register(
            "requests",
            "Registry API requests answered",
            m.requests.clone(),
        );
        r.register(
            "blob_bytes",
            "Blob bytes obtained, by source",
            m.bytes.clone(),
        );
        r.register(
            "p2p_fallbacks",
            "Blobs fetched from the origin because the swarm could not serve them",
            m.fallbacks.clone(),
        );
        r.register("errors", "Failures, by reason", m.errors.clone());
        // Every reason exported from the start, at 0: a refusal is rare, and an alert on
        // its rate needs the series before the first one.
        for reason in ACCESS_REFUSALS {
            drop(m.access_refusals.get_or_create(&ReasonLabels { reason }));
        }
        r.register(
            "access_refusals",
            "Requests not served from this node for want of access, by reason",
            m.access_refusals.clone(),
        );
        r.register(
            "origin_failures",
            "Failed origin blob requests of back-to-source fetches, by reason and whether they were retried",
            m.origin_failures.family(),
        );
        r.register(
            "downloads",
            "Blob downloads in progress",
            m.downloads.clone(),
        );
        r.register(
            "cache_bytes",
            "Bytes in the node cache",
            m.cache_bytes.clone(),
        );
        r.register(
            "cache_evictions",
            "Blobs evicted from the node cache",
            m.evictions.clone(),
        );
        r.register(
            "prefetched_blobs",
            "Blob downloads started ahead of the runtime because a manifest listed them (p2p.prefetch_layers)",
            m.prefetched_blobs.clone(),
        );
        r.register(
            "supernode_takeovers",
            "Downloads moved to the next supernode in the blob's placement order because theirs was lost mid-download",
            m.supernode_takeovers.clone(),
        );
        r.register(
            "storage_failures",
            "Local storage failures: downloads refused for want of space, failed writes, by reason",
            m.storage_failures.family(),
        );
        m
    }

    /// Counts one answered request.
    pub fn request(&self, kind: &'static str, status: u16) {
        let status = match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests
            .get_or_create(&RequestLabels { kind, status })
            .inc();
    }

    /// Counts blob bytes from `source`.
    pub fn bytes(&self, source: Source, n: u64) {
        if n > 0 {
            self.bytes
                .get_or_create(&SourceLabels {
                    source: source.label(),
                })
                .inc_by(n);
        }
    }

    /// Counts an error.
    pub fn error(&self, reason: &'static str) {
        self.errors.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts a request not served from this node: `registry_denied` (the listed registry
    /// refused the requester's credentials), `unlisted_proxied` or `unlisted_refused` (it
    /// named a registry outside the allow list), `piece_token` (another peer's piece request
    /// or subscription without a valid piece token).
    pub fn access_refusal(&self, reason: &'static str) {
        self.access_refusals
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a local storage failure under `fault`'s label.
    pub fn storage_failure(&self, fault: Fault) {
        self.storage_failures.record(fault);
    }

    /// Counts a fallback to the origin.
    pub fn fallback(&self, reason: &'static str) {
        self.fallbacks.get_or_create(&ReasonLabels { reason }).inc();
    }
}

impl dfget::server::RefusalObserver for Metrics {
    fn piece_token_refused(&self, _reason: &'static str) {
        self.access_refusal("piece_token");
    }
}

/// The node's piece server as metrics, read at each scrape: bytes uploaded to other nodes
/// and pieces relayed while they arrived (`p2p.cut_through`).
#[derive(Debug)]
pub struct PeerServerCollector(pub Arc<dfget::server::PieceServer>);

impl prometheus_client::collector::Collector for PeerServerCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::{encoding::EncodeMetric as _, metrics::counter::ConstCounter};
        for (name, help, value) in [
            (
                "damselfly_dfdaemon_peer_uploaded_bytes",
                "Piece bytes sent to other nodes",
                self.0.bytes_served(),
            ),
            (
                "damselfly_dfdaemon_peer_relayed_pieces",
                "Piece answers begun while the piece was still arriving here (p2p.cut_through)",
                self.0.relayed_pieces(),
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}
