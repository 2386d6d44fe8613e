//! Prometheus metrics of the supernode. Labels are bounded enums, never task ids or URLs.

use damselfly_oci::retry::{FailureAction, FailureReason, OriginFailures, OriginObserver};
use damselfly_store::StorageFailures;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// What kind of origin request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum OriginKind {
    /// A blob GET (the CDN fetch).
    Get,
    /// A credential check.
    Head,
    /// A `Range` GET of one piece found corrupt on disk (self-repair).
    Range,
}

/// Label set for origin requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OriginLabels {
    /// Request kind.
    pub kind: OriginKind,
}

/// Outcome of a registration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum RegisterOutcome {
    /// Joined a task that was new (started an origin fetch).
    New,
    /// Joined a task that was running or cached.
    Joined,
    /// The requester may not read the blob.
    Denied,
    /// The origin refused or failed.
    OriginError,
    /// The request was malformed.
    BadRequest,
    /// A holder (a node serving its cache) asked for a task this supernode does not have.
    NotHere,
    /// No room for the blob in the cache or on the disk, even after GC.
    NoSpace,
    /// Local storage failed otherwise.
    Storage,
    /// A new fetch would pass `cdn.max_fetches`.
    Busy,
}

/// Label set for registrations.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegisterLabels {
    /// Outcome.
    pub outcome: RegisterOutcome,
}

/// Why a later requester of a private blob was not admitted.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum AccessRefusal {
    /// Its registry said no to its credentials.
    RegistryDenied,
    /// Its registry is neither the blob's own nor on `access.allow`: not asked.
    UnlistedRegistry,
    /// A piece request without a valid piece token for its task and requester.
    PieceToken,
    /// A control request (`register`, `sync`, `leave`, `/api/v1/nodes`, `/api/v1/seed`)
    /// without a valid cluster signature.
    ControlCredential,
    /// A Harbor preheat generation-1 request from outside `preheat.v1_sources`.
    PreheatV1Source,
    /// A node announcement under a name another address holds.
    NodeIdentity,
    /// A registration from a host (or under an id) banned from the task for serving corrupt
    /// pieces.
    PeerBanned,
    /// A registration under the id of a live peer of another host.
    PeerIdTaken,
    /// A sync or leave without the session token of the peer it names.
    SessionToken,
}

/// Label set for access refusals.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccessRefusalLabels {
    /// Why.
    pub reason: AccessRefusal,
}

/// Where a served piece was read from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum PieceFrom {
    /// Kept in memory since it was stored (`cdn.hot_pieces_memory`): no read, no re-hash.
    Memory,
    /// Read back from disk and verified against its recorded digest.
    Disk,
}

/// How a repair of a piece found corrupt on disk ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum RepairOutcome {
    /// Fetched again, verified against its digest and stored.
    Repaired,
    /// The origin or the disk failed (or no requester's credentials were known); the next
    /// registration of the blob tries again.
    Failed,
}

/// Label set for piece repairs.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RepairLabels {
    /// How it ended.
    pub outcome: RepairOutcome,
}

/// Label set for piece reads.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PieceFromLabels {
    /// Where from.
    pub from: PieceFrom,
}

/// Label set for preheat job states.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `pending`, `running`, `success`, `failure`.
    pub state: &'static str,
}

/// All supernode metrics; cheap to clone (each metric is an `Arc` inside).
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Bytes received from origins.
    pub origin_bytes: Counter,
    /// Requests sent to origins, by kind.
    pub origin_requests: Family<OriginLabels, Counter>,
    /// Failed origin attempts, by reason and what followed.
    pub origin_failures: OriginFailures,
    /// Piece bytes served to peers.
    pub served_bytes: Counter,
    /// Pieces served to peers.
    pub served_pieces: Counter,
    /// Pieces read to serve a peer, by where from.
    pub piece_reads: Family<PieceFromLabels, Counter>,
    /// Bytes of pieces kept in memory.
    pub hot_pieces_bytes: Gauge,
    /// Pieces found corrupt on disk when read to serve a peer (dropped, then repaired).
    pub corrupt_pieces: Counter,
    /// Repairs of pieces found corrupt, by outcome.
    pub piece_repairs: Family<RepairLabels, Counter>,
    /// Piece requests refused because every upload slot was busy.
    pub busy_refusals: Counter,
    /// Registrations by outcome.
    pub registrations: Family<RegisterLabels, Counter>,
    /// Later requesters of private blobs refused, by reason.
    pub access_refusals: Family<AccessRefusalLabels, Counter>,
    /// Control requests let through without a valid signature (`cluster.enforce_signatures`
    /// off).
    pub control_unsigned_accepted: Counter,
    /// Piece requests refused because the piece, which no peer holds yet, is offered to
    /// another peer.
    pub seed_offer_conflicts: Counter,
    /// Tasks held in memory (running or cached and recently used).
    pub tasks: Gauge,
    /// Live peers over all tasks.
    pub peers: Gauge,
    /// Corrupt pieces reported by peers.
    pub bad_pieces: Counter,
    /// Parents peers reported they could not reach.
    pub unreachable_parents: Counter,
    /// Origin fetches taken up after a restart from the pieces a previous process stored.
    pub fetch_resumes: Counter,
    /// Tasks taken over from a lost supernode whose copy was filled from the swarm first.
    pub takeover_fills: Counter,
    /// Bytes of pieces such a fill copied from peers (checked against vouched digests)
    /// instead of asking the origin.
    pub takeover_peer_bytes: Counter,
    /// Piece digests sent in sync answers (peers that take vouched digests need none).
    pub sync_digests: Counter,
    /// Piece digests signed and sent with pieces this supernode served.
    pub vouched_digests: Counter,
    /// Peers banned for serving corrupt pieces.
    pub banned_peers: Counter,
    /// Peers demoted for not serving pieces they claimed.
    pub demoted_peers: Counter,
    /// Syncs and leaves let through without a session token
    /// (`cluster.enforce_session_tokens` off).
    pub session_token_missing_accepted: Counter,
    /// Blobs evicted by cache GC.
    pub gc_evictions: Counter,
    /// Local storage failures (a task refused for want of space, a failed write), by reason.
    pub storage_failures: StorageFailures,
    /// Bytes in the cache.
    pub cache_bytes: Gauge,
    /// Time to answer a sync (scheduling parents), in seconds.
    pub schedule_seconds: Histogram,
    /// Preheat jobs per state.
    pub preheat_jobs: Family<StateLabels, Gauge>,
    /// Blob bytes fetched from registries by preheat jobs.
    pub preheat_bytes: Counter,
}

impl Metrics {
    /// Counts a piece read to serve a peer.
    pub fn piece_reads(&self, from: PieceFrom) {
        self.piece_reads
            .get_or_create(&PieceFromLabels { from })
            .inc();
    }

    /// Counts a repair's outcome.
    pub fn piece_repair(&self, outcome: RepairOutcome) {
        self.piece_repairs
            .get_or_create(&RepairLabels { outcome })
            .inc();
    }

    /// Creates the metrics and registers them under `damselfly_supernode_`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            origin_bytes: Counter::default(),
            origin_requests: Family::default(),
            origin_failures: OriginFailures::default(),
            served_bytes: Counter::default(),
            served_pieces: Counter::default(),
            piece_reads: Family::default(),
            hot_pieces_bytes: Gauge::default(),
            corrupt_pieces: Counter::default(),
            piece_repairs: Family::default(),
            busy_refusals: Counter::default(),
            registrations: Family::default(),
            access_refusals: Family::default(),
            control_unsigned_accepted: Counter::default(),
            seed_offer_conflicts: Counter::default(),
            tasks: Gauge::default(),
            peers: Gauge::default(),
            bad_pieces: Counter::default(),
            unreachable_parents: Counter::default(),
            fetch_resumes: Counter::default(),
            takeover_fills: Counter::default(),
            takeover_peer_bytes: Counter::default(),
            sync_digests: Counter::default(),
            vouched_digests: Counter::default(),
            banned_peers: Counter::default(),
            demoted_peers: Counter::default(),
            session_token_missing_accepted: Counter::default(),
            gc_evictions: Counter::default(),
            storage_failures: StorageFailures::default(),
            cache_bytes: Gauge::default(),
            schedule_seconds: Histogram::new([
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05,
            ]),
            preheat_jobs: Family::default(),
            preheat_bytes: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("damselfly_supernode");
        r.register(
            "origin_bytes",
            "Bytes received from origins",
            m.origin_bytes.clone(),
        );
        r.register(
            "origin_requests",
            "Requests sent to origins",
            m.origin_requests.clone(),
        );
        r.register(
            "origin_failures",
            "Failed origin blob requests, by reason and whether they were retried",
            m.origin_failures.family(),
        );
        r.register(
            "served_bytes",
            "Piece bytes served to peers",
            m.served_bytes.clone(),
        );
        r.register(
            "served_pieces",
            "Pieces served to peers",
            m.served_pieces.clone(),
        );
        for from in [PieceFrom::Memory, PieceFrom::Disk] {
            drop(m.piece_reads.get_or_create(&PieceFromLabels { from }));
        }
        r.register(
            "piece_reads",
            "Pieces read to serve a peer, from memory (just stored) or from disk (verified)",
            m.piece_reads.clone(),
        );
        r.register(
            "hot_pieces_bytes",
            "Bytes of just-stored pieces kept in memory to serve (cdn.hot_pieces_memory)",
            m.hot_pieces_bytes.clone(),
        );
        r.register(
            "corrupt_pieces",
            "Pieces found corrupt on disk when read to serve a peer (dropped and fetched again)",
            m.corrupt_pieces.clone(),
        );
        for outcome in [RepairOutcome::Repaired, RepairOutcome::Failed] {
            drop(m.piece_repairs.get_or_create(&RepairLabels { outcome }));
        }
        r.register(
            "piece_repairs",
            "Repairs of pieces found corrupt on disk, by outcome",
            m.piece_repairs.clone(),
        );
        r.register(
            "busy_refusals",
            "Piece requests refused because all upload slots were busy",
            m.busy_refusals.clone(),
        );
        r.register(
            "registrations",
            "Task registrations by outcome",
            m.registrations.clone(),
        );
        // Every reason exported from the start, at 0: a refusal is rare, and an alert on
        // its rate needs the series before the first one.
        for reason in [
            AccessRefusal::RegistryDenied,
            AccessRefusal::UnlistedRegistry,
            AccessRefusal::PieceToken,
            AccessRefusal::ControlCredential,
            AccessRefusal::PreheatV1Source,
            AccessRefusal::NodeIdentity,
            AccessRefusal::PeerBanned,
            AccessRefusal::PeerIdTaken,
            AccessRefusal::SessionToken,
        ] {
            drop(
                m.access_refusals
                    .get_or_create(&AccessRefusalLabels { reason }),
            );
        }
        r.register(
            "access_refusals",
            "Requesters refused: later requesters of private blobs at registration, piece requests without a valid token, control requests without a valid cluster signature, preheat generation 1 from outside its networks, registrations from banned hosts or under another host's peer id, syncs and leaves without the peer's session token",
            m.access_refusals.clone(),
        );
        r.register(
            "control_unsigned_accepted",
            "Control requests let through without a valid cluster signature (cluster.enforce_signatures off)",
            m.control_unsigned_accepted.clone(),
        );
        r.register(
            "seed_offer_conflicts",
            "Piece requests refused because the piece, held by no peer yet, is offered to another peer (a late request on an expired offer)",
            m.seed_offer_conflicts.clone(),
        );
        r.register("tasks", "Tasks held in memory", m.tasks.clone());
        r.register("peers", "Live peers over all tasks", m.peers.clone());
        r.register(
            "bad_pieces",
            "Corrupt pieces reported by peers",
            m.bad_pieces.clone(),
        );
        r.register(
            "unreachable_parents",
            "Parents peers reported they could not reach (each then gets the pieces only those parents hold from the supernode)",
            m.unreachable_parents.clone(),
        );
        r.register(
            "fetch_resumes",
            "Origin fetches taken up after a restart with a Range request, from the pieces a previous process stored",
            m.fetch_resumes.clone(),
        );
        r.register(
            "takeover_fills",
            "Tasks taken over from a lost supernode, filled from the peers' pieces before the origin",
            m.takeover_fills.clone(),
        );
        r.register(
            "takeover_peer_bytes",
            "Bytes a takeover copied from peers (checked against vouched digests) instead of fetching them from the origin",
            m.takeover_peer_bytes.clone(),
        );
        r.register(
            "sync_digests",
            "Piece digests sent in sync answers",
            m.sync_digests.clone(),
        );
        r.register(
            "vouched_digests",
            "Piece digests signed and sent with served pieces",
            m.vouched_digests.clone(),
        );
        r.register(
            "banned_peers",
            "Peers banned for serving corrupt pieces",
            m.banned_peers.clone(),
        );
        r.register(
            "demoted_peers",
            "Peers demoted (named to nobody as a parent) for not serving pieces they claimed",
            m.demoted_peers.clone(),
        );
        r.register(
            "session_token_missing_accepted",
            "Syncs and leaves let through without a session token (cluster.enforce_session_tokens off)",
            m.session_token_missing_accepted.clone(),
        );
        r.register(
            "gc_evictions",
            "Blobs evicted by cache GC",
            m.gc_evictions.clone(),
        );
        r.register(
            "storage_failures",
            "Local storage failures: tasks refused for want of space, failed writes, by reason",
            m.storage_failures.family(),
        );
        r.register("cache_bytes", "Bytes in the cache", m.cache_bytes.clone());
        r.register(
            "schedule_duration_seconds",
            "Time to schedule parents for a sync",
            m.schedule_seconds.clone(),
        );
        r.register(
            "preheat_jobs",
            "Preheat jobs by state",
            m.preheat_jobs.clone(),
        );
        r.register(
            "preheat_bytes",
            "Blob bytes fetched from registries by preheat jobs",
            m.preheat_bytes.clone(),
        );
        m
    }

    /// Sets the preheat job gauges from a count per state.
    pub fn preheat_states(
        &self,
        counts: &std::collections::HashMap<crate::preheat::JobState, i64>,
    ) {
        use crate::preheat::JobState;
        for state in [
            JobState::Pending,
            JobState::Running,
            JobState::Success,
            JobState::Failure,
        ] {
            self.preheat_jobs
                .get_or_create(&StateLabels {
                    state: state.label(),
                })
                .set(counts.get(&state).copied().unwrap_or(0));
        }
    }

    /// Counts one origin request of `kind`.
    pub fn origin_request(&self, kind: OriginKind) {
        self.origin_requests
            .get_or_create(&OriginLabels { kind })
            .inc();
    }

    /// Counts one requester refused for `reason`.
    pub fn access_refusal(&self, reason: AccessRefusal) {
        self.access_refusals
            .get_or_create(&AccessRefusalLabels { reason })
            .inc();
    }

    /// Counts a storage error under its fault (nothing if it is not a local failure).
    pub fn storage_failure(&self, e: &damselfly_store::Error) {
        self.storage_failures.record_error(e);
    }

    /// Counts one registration with `outcome`.
    pub fn registration(&self, outcome: RegisterOutcome) {
        self.registrations
            .get_or_create(&RegisterLabels { outcome })
            .inc();
    }
}

impl OriginObserver for Metrics {
    fn failure(&self, reason: FailureReason, action: FailureAction) {
        self.origin_failures.failure(reason, action);
        if action == FailureAction::Retried {
            // The retry is one more GET.
            self.origin_request(OriginKind::Get);
        }
    }
}
