//! Supernode configuration: one TOML file, every key also a command-line flag.
//!
//! ```toml
//! version = 1
//! listen = "[::]:8002"   # dual stack: IPv6 and IPv4 (mapped); "0.0.0.0:8002" for IPv4 only
//! data_dir = "/var/lib/damselfly/supernode"
//! [storage]
//! capacity = "0 B"        # 0 = unlimited
//! ```
//! `supernode config default` prints the full default file.

use std::{
    net::{Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use bytesize::ByteSize;
use damselfly_common::{
    config::{CONFIG_VERSION, ConfigError},
    server::HttpLimits,
};
use damselfly_oci::retry::RetryPolicy;
use serde::{Deserialize, Serialize};

/// The whole supernode config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Config format version; must be 1.
    pub version: u32,
    /// Address of the HTTP API (registration, sync, pieces, `/metrics`, `/healthy`).
    /// Default `[::]:8002`: dual stack, IPv6 and IPv4 clients (IPv4 mapped), or IPv4 only
    /// (`0.0.0.0:8002`, with a warning) where IPv6 is off on the host; `0.0.0.0:PORT` keeps it
    /// IPv4 only. Port 0 picks a free port (logged at start).
    pub listen: SocketAddr,
    /// Directory for content files and the RocksDB metadata. Default
    /// `/var/lib/damselfly/supernode`.
    pub data_dir: PathBuf,
    /// Cache storage.
    pub storage: StorageConfig,
    /// Piece scheduling between peers.
    pub scheduler: SchedulerSection,
    /// The supernode as a source of pieces (the CDN).
    pub cdn: CdnConfig,
    /// Requests to origins.
    pub origin: OriginSection,
    /// Which registries may admit a later requester to a private blob.
    pub access: AccessSection,
    /// The cluster secret, and the piece tokens it signs.
    pub cluster: ClusterSection,
    /// Harbor preheat jobs (`/preheats`, `/oapi/v1/jobs`).
    pub preheat: PreheatConfig,
    /// Limits of the API's HTTP listener (`listen`): header-read timeout, connection cap.
    pub http: HttpLimits,
    /// Longest wait for connections and tasks to drain on SIGTERM. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

/// Cache storage limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Cache size limit in bytes; `0 B` means unlimited. Default unlimited.
    pub capacity: ByteSize,
    /// GC starts when the cache holds more than this fraction of `capacity`. Default 0.9.
    pub high_watermark: f64,
    /// GC evicts least recently used blobs down to this fraction. Default 0.7.
    pub low_watermark: f64,
    /// How often GC checks the watermarks. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub gc_interval: Duration,
    /// Free space kept on the volume of `data_dir`: a new task is admitted only if its blob
    /// fits with this much left over (after evicting least recently used blobs if need be),
    /// for the metadata database and logs. Default 16 MiB.
    pub min_free: ByteSize,
}

/// Parent selection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerSection {
    /// Parents handed to a peer per sync. Default 6.
    pub parents_per_peer: usize,
    /// Concurrent uploads a peer is expected to serve; a peer reporting this many is avoided.
    /// Default 4.
    pub peer_upload_slots: u32,
    /// A peer that has not synced for this long is considered gone. Default 15 s.
    #[serde(with = "humantime_serde")]
    pub peer_timeout: Duration,
    /// Distinct peers that must report a corrupt piece from a peer before it is banned.
    /// Default 2.
    pub ban_after_reports: u32,
    /// Peers one task remembers as admitted (registered with proven access). When the set
    /// is full, peers no longer live in the swarm are forgotten first (one that comes back
    /// registers again); a task whose live peers alone fill it answers further
    /// registrations 503 `BUSY` with `Retry-After`. Bounds the memory a long-lived task
    /// (every restarted node is a new peer) or a flood of registrations can take. Default
    /// 100000.
    pub max_peers_per_task: u32,
}

/// The supernode's own piece uploads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CdnConfig {
    /// Piece size in bytes, a power of two between 64 KiB and 64 MiB; `0 B` picks by content
    /// length (about 256 pieces, 1–16 MiB). Default `0 B`.
    pub piece_size: ByteSize,
    /// Concurrent piece uploads to peers; further requests get 503 and go to other parents.
    /// Default 8.
    pub upload_slots: u32,
    /// Upload bandwidth limit to peers in bytes per second; `0 B` = unlimited. Default unlimited.
    pub upload_rate: ByteSize,
    /// Memory for pieces just fetched from origins, served from there without reading them
    /// back from disk (and hashing them again) while they are recent; oldest out first.
    /// `0 B` serves every piece from disk. Default 128 MiB.
    pub hot_pieces_memory: ByteSize,
    /// Origin fetches running at once. A registration that would start another gets 503
    /// `BUSY` with `Retry-After` (its peer fetches the blob itself or tries again); joining a
    /// running or cached task is never refused. Bounds the memory, descriptors and registry
    /// connections a burst of new blobs (or a caller inventing URLs) can take. Default 64.
    pub max_fetches: u32,
    /// Tasks held in memory (running, or cached blobs registered recently). When a new one
    /// would pass it, finished tasks with no live peer are dropped first, least recently
    /// active first; if none can go, the registration gets 503 `BUSY` with `Retry-After`.
    /// Joining a task already in memory is never refused. Default 10000.
    pub max_tasks: u32,
    /// Taking a task over from a lost supernode (its peers register here with `takeover`):
    /// copy each piece a peer holds from that peer, checked against the digest a fleet
    /// supernode vouched for, and ask the origin only for the pieces nobody holds. Needs the
    /// same `cluster.signing_key_file` on every supernode of the fleet (a vouch this one
    /// cannot check sends the piece to the origin). `false`: fetch the whole blob from the
    /// origin again. Default `true`.
    pub takeover_from_peers: bool,
}

/// Origin (registry) requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginSection {
    /// Connect timeout. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest silence of an origin socket (an answer, a HEAD, a body) before it is dropped.
    /// Only a backstop: a stalled blob body is caught by `retry.stall_timeout`. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// How long a requester's access check (a HEAD to the origin with its credentials) is
    /// remembered. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub auth_cache_ttl: Duration,
    /// PEM files of extra certificate authorities to trust for registries (on top of the
    /// system's roots), e.g. a private registry's internal CA. Default none.
    pub ca_files: Vec<PathBuf>,
    /// Retries, backoff and the stall watchdog of blob fetches (`[origin.retry]`; every key
    /// and default is documented on [`RetryPolicy`]).
    pub retry: RetryPolicy,
    /// Allow origins on loopback addresses (a registry on the supernode's own host). Peers
    /// name the URLs the supernode fetches, so by default it refuses loopback, link-local
    /// and cloud metadata addresses, for the URL, every address its host resolves to and
    /// every redirect (`damselfly_oci::guard`). Link-local and metadata addresses stay
    /// refused either way. Default off.
    pub allow_loopback: bool,
    /// Request headers a peer's registration (or a seed request) may pass on to the origin,
    /// case-insensitive; the others are dropped. Default `["Authorization", "Accept"]`.
    pub forward_headers: Vec<String>,
}

/// Which registries may admit a requester to a private blob first fetched by someone else.
///
/// Tasks are keyed by digest, so one blob is shared by requesters of several registries
/// and repositories. A later requester of a private blob is checked with a `HEAD` of its
/// own URL, with its own credentials (never the first requester's URL, so a registry never
/// sees another registry's token), and only if that URL's registry is the one the blob was
/// fetched from or matches a pattern here; any other requester is refused (403) without a
/// request. Public blobs (fetched without credentials) are handed to anyone.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessSection {
    /// Registries (besides the blob's own) whose yes admits a requester, as patterns:
    /// `host`, `host:port`, `host:*` (any port), `*.domain`, `*.domain:*`. `*` alone is
    /// refused. Default none: only the blob's own registry.
    pub allow: Vec<String>,
}

/// The cluster secret: with it, the supernode hands every peer it admits to a task a piece
/// token for that task (HMAC-SHA256 over task, peer and expiry, see
/// [`damselfly_common::token`]), refreshed in sync answers, and serves its own pieces only
/// against a valid one; peers holding the same secret check it too. Without it no token is
/// issued or checked, and a warning is logged at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// File holding the cluster secret (at least 16 bytes; surrounding whitespace is
    /// ignored), the same file every supernode and dfdaemon of the cluster reads. Empty (the
    /// default): piece tokens off.
    pub secret_file: PathBuf,
    /// How long a piece token is valid. Peers get a fresh one in every sync answer, so it
    /// only needs to outlast a few missed syncs and the clock differences between nodes.
    /// Default 1 h.
    #[serde(with = "humantime_serde")]
    pub piece_token_ttl: Duration,
    /// Sign each piece digest (Ed25519, `damselfly_common::vouch`) and publish the public
    /// key at registration, so peers take digests from the pieces they receive instead of
    /// from every sync answer. Default on.
    pub vouch_digests: bool,
    /// The signing key (PKCS#8), created (mode 0600) on first start if missing. Empty (the
    /// default): `signing.key` in `data_dir`. Keep it across restarts: peers in the middle of
    /// a download keep the key they registered with.
    pub signing_key_file: PathBuf,
    /// With a secret, every control request (`register`, `sync`, `leave`, `/api/v1/nodes`,
    /// `/api/v1/seed`) must be signed with it ([`damselfly_common::control`]); a signature
    /// older or newer than this, by this host's clock, is refused. Default 5 min.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Refuse (401) control requests without a valid signature. Default on. Off only while
    /// a running cluster is switched to a secret: the supernodes then issue piece tokens and
    /// sign their own calls, and count unsigned requests
    /// (`control_unsigned_accepted_total`) instead of refusing them, until every node has
    /// the secret.
    pub enforce_signatures: bool,
    /// Refuse (403 `NOT_ADMITTED`) a sync or leave that carries no session token. Default
    /// on. Off only while a running cluster is upgraded to a release that sends them (peers
    /// of an older one send none): such calls are then let through and counted
    /// (`session_token_missing_accepted_total`); a wrong token is refused either way.
    pub enforce_session_tokens: bool,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            secret_file: PathBuf::new(),
            piece_token_ttl: Duration::from_secs(3600),
            vouch_digests: true,
            signing_key_file: PathBuf::new(),
            max_clock_skew: damselfly_common::control::DEFAULT_MAX_CLOCK_SKEW,
            enforce_signatures: true,
            enforce_session_tokens: true,
        }
    }
}

impl ClusterSection {
    /// The piece-token key, or `None` when no secret file is set.
    ///
    /// # Errors
    /// The file cannot be read or holds too short a secret.
    pub fn token_key(
        &self,
    ) -> Result<Option<damselfly_common::TokenKey>, damselfly_common::token::SecretError> {
        damselfly_common::TokenKey::from_setting(&self.secret_file)
    }

    /// The control-plane key, or `None` when no secret file is set (control plane open).
    ///
    /// # Errors
    /// The file cannot be read or holds too short a secret.
    pub fn control_key(
        &self,
    ) -> Result<Option<damselfly_common::ControlKey>, damselfly_common::token::SecretError> {
        damselfly_common::ControlKey::from_setting(&self.secret_file)
    }

    /// The digest signing key (`signing_key_file`, else `signing.key` in `data_dir`, made
    /// if missing), or `None` when `vouch_digests` is off.
    ///
    /// # Errors
    /// The file cannot be read or written, or holds something else than a key.
    pub fn digest_signer(
        &self,
        data_dir: &std::path::Path,
    ) -> Result<Option<damselfly_common::vouch::DigestSigner>, damselfly_common::vouch::VouchError>
    {
        if !self.vouch_digests {
            return Ok(None);
        }
        let path = if self.signing_key_file.as_os_str().is_empty() {
            data_dir.join("signing.key")
        } else {
            self.signing_key_file.clone()
        };
        damselfly_common::vouch::DigestSigner::load_or_create(&path).map(Some)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            version: CONFIG_VERSION,
            listen: SocketAddr::from((Ipv6Addr::UNSPECIFIED, 8002)),
            data_dir: PathBuf::from("/var/lib/damselfly/supernode"),
            storage: StorageConfig::default(),
            scheduler: SchedulerSection::default(),
            cdn: CdnConfig::default(),
            origin: OriginSection::default(),
            access: AccessSection::default(),
            cluster: ClusterSection::default(),
            preheat: PreheatConfig::default(),
            http: HttpLimits::default(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Harbor preheat settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreheatConfig {
    /// Bearer token Harbor (2.12+) must send to `/oapi/v1/jobs`: the "personal access token"
    /// of the provider instance. Empty (the default) refuses every generation-2 request.
    pub token: String,
    /// Blobs fetched at once per job when the job does not say. Default 4.
    pub concurrency: usize,
    /// Longest run of one job when the job does not say. Default 30 min (Harbor stops
    /// polling after about that long).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Platform an index is resolved to, `os/arch[/variant]`. Default `linux/amd64`.
    pub platform: String,
    /// Name this supernode reports in job results. Default: the machine's hostname.
    pub hostname: String,
    /// Every supernode of the cluster (`host:port`, this one included), as dfdaemons list
    /// them. Empty (the default): this supernode is the only one and caches every blob
    /// itself. Otherwise each blob is seeded at its home supernode (where the nodes'
    /// downloads of it will go), and `all_seed_peers` seeds it at every one, through their
    /// `/api/v1/seed`.
    pub supernodes: Vec<String>,
    /// Most nodes (dfdaemons announcing themselves on `/api/v1/nodes`) remembered at once;
    /// an announcement of a new host name beyond it is refused with 503 until entries expire
    /// (three `scheduler.peer_timeout`s without an announcement). Bounds the table against
    /// a caller inventing host names. Default 10,000.
    pub max_nodes: usize,
    /// Generation 1 (`/_ping`, `/preheats`), which Harbor sends without any credential, is
    /// served only to callers from these networks (`10.0.0.0/8`, `192.0.2.7/32`, `::1/128`).
    /// Empty (the default): generation 1 is off (403); use generation 2 and `token`.
    pub v1_sources: Vec<String>,
}

impl Default for PreheatConfig {
    fn default() -> Self {
        Self {
            token: String::new(),
            concurrency: 4,
            timeout: Duration::from_secs(30 * 60),
            platform: "linux/amd64".into(),
            hostname: String::new(),
            supernodes: Vec::new(),
            max_nodes: 10_000,
            v1_sources: Vec::new(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            capacity: ByteSize::b(0),
            high_watermark: 0.9,
            low_watermark: 0.7,
            gc_interval: Duration::from_secs(60),
            min_free: ByteSize::b(damselfly_store::DEFAULT_MIN_FREE),
        }
    }
}

impl Default for SchedulerSection {
    fn default() -> Self {
        Self {
            parents_per_peer: 6,
            peer_upload_slots: 4,
            peer_timeout: Duration::from_secs(15),
            ban_after_reports: 2,
            max_peers_per_task: 100_000,
        }
    }
}

impl Default for CdnConfig {
    fn default() -> Self {
        Self {
            piece_size: ByteSize::b(0),
            upload_slots: 8,
            upload_rate: ByteSize::b(0),
            hot_pieces_memory: ByteSize::mib(128),
            max_fetches: 64,
            max_tasks: 10_000,
            takeover_from_peers: true,
        }
    }
}

impl Default for OriginSection {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            auth_cache_ttl: Duration::from_secs(60),
            ca_files: Vec::new(),
            retry: RetryPolicy::default(),
            allow_loopback: false,
            forward_headers: vec!["Authorization".into(), "Accept".into()],
        }
    }
}

impl Config {
    /// Checks values that parse but make no sense, returning every problem.
    ///
    /// # Errors
    /// One [`ConfigError`] per bad key.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errs = Vec::new();
        let s = &self.storage;
        if !(0.0 < s.low_watermark
            && s.low_watermark <= s.high_watermark
            && s.high_watermark <= 1.0)
        {
            errs.push(ConfigError::new(
                "storage.low_watermark",
                format!(
                    "need 0 < low_watermark ({}) <= high_watermark ({}) <= 1",
                    s.low_watermark, s.high_watermark
                ),
            ));
        }
        if s.gc_interval.is_zero() {
            errs.push(ConfigError::new("storage.gc_interval", "must be > 0"));
        }
        if self.scheduler.parents_per_peer == 0 || self.scheduler.parents_per_peer > 64 {
            errs.push(ConfigError::new(
                "scheduler.parents_per_peer",
                "must be 1..=64",
            ));
        }
        if self.scheduler.peer_upload_slots == 0 {
            errs.push(ConfigError::new(
                "scheduler.peer_upload_slots",
                "must be > 0",
            ));
        }
        if self.scheduler.peer_timeout < Duration::from_secs(1) {
            errs.push(ConfigError::new("scheduler.peer_timeout", "must be >= 1s"));
        }
        if self.scheduler.ban_after_reports == 0 {
            errs.push(ConfigError::new(
                "scheduler.ban_after_reports",
                "must be > 0",
            ));
        }
        let ps = self.cdn.piece_size.as_u64();
        if ps != 0 && (!ps.is_power_of_two() || !(64 << 10..=64 << 20).contains(&ps)) {
            errs.push(ConfigError::new(
                "cdn.piece_size",
                "must be 0 (auto) or a power of two from 64 KiB to 64 MiB",
            ));
        }
        if self.preheat.concurrency == 0 || self.preheat.concurrency > 64 {
            errs.push(ConfigError::new("preheat.concurrency", "must be 1..=64"));
        }
        if self.preheat.timeout.is_zero() {
            errs.push(ConfigError::new("preheat.timeout", "must be > 0"));
        }
        if self.preheat.platform.split('/').count() < 2 {
            errs.push(ConfigError::new(
                "preheat.platform",
                "must be os/arch[/variant], e.g. linux/amd64",
            ));
        }
        if self.cluster.max_clock_skew < Duration::from_secs(1) {
            errs.push(ConfigError::new("cluster.max_clock_skew", "must be >= 1s"));
        }
        for (i, net) in self.preheat.v1_sources.iter().enumerate() {
            if let Err(e) = net.parse::<ipnet::IpNet>() {
                errs.push(ConfigError::new(
                    format!("preheat.v1_sources[{i}]"),
                    format!("{net:?} is not a network (address/prefix): {e}"),
                ));
            }
        }
        if self.cluster.piece_token_ttl < Duration::from_secs(60) {
            errs.push(ConfigError::new(
                "cluster.piece_token_ttl",
                "must be >= 60s (tokens are refreshed at each sync; clocks differ)",
            ));
        }
        if self.cdn.upload_slots == 0 {
            errs.push(ConfigError::new("cdn.upload_slots", "must be > 0"));
        }
        if self.cdn.max_fetches == 0 {
            errs.push(ConfigError::new("cdn.max_fetches", "must be > 0"));
        }
        if self.cdn.max_tasks < self.cdn.max_fetches {
            errs.push(ConfigError::new(
                "cdn.max_tasks",
                "must be at least cdn.max_fetches",
            ));
        }
        if self.scheduler.max_peers_per_task == 0 {
            errs.push(ConfigError::new(
                "scheduler.max_peers_per_task",
                "must be > 0",
            ));
        }
        self.origin.retry.validate("origin.retry", &mut errs);
        self.http.validate("http", &mut errs);
        if let Err(bad) = damselfly_common::allow::AllowList::parse(&self.access.allow) {
            for (i, e) in bad {
                errs.push(ConfigError::new(
                    format!("access.allow[{i}]"),
                    e.to_string(),
                ));
            }
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    /// The default config as TOML, for `supernode config default`.
    pub fn default_toml() -> String {
        toml::to_string(&Self::default()).unwrap_or_default()
    }
}

/// Command-line flags; each overrides the config key it names.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// `listen`: API address.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// `data_dir`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// `storage.capacity`, e.g. `50GiB`.
    #[arg(long, value_name = "BYTES")]
    pub storage_capacity: Option<ByteSize>,
    /// `storage.high_watermark`.
    #[arg(long, value_name = "FRACTION")]
    pub storage_high_watermark: Option<f64>,
    /// `storage.low_watermark`.
    #[arg(long, value_name = "FRACTION")]
    pub storage_low_watermark: Option<f64>,
    /// `storage.gc_interval`, e.g. `60s`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub storage_gc_interval: Option<Duration>,
    /// `storage.min_free`, e.g. `1GiB`.
    #[arg(long, value_name = "BYTES")]
    pub storage_min_free: Option<ByteSize>,
    /// `scheduler.parents_per_peer`.
    #[arg(long, value_name = "N")]
    pub scheduler_parents_per_peer: Option<usize>,
    /// `scheduler.peer_upload_slots`.
    #[arg(long, value_name = "N")]
    pub scheduler_peer_upload_slots: Option<u32>,
    /// `scheduler.peer_timeout`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub scheduler_peer_timeout: Option<Duration>,
    /// `scheduler.ban_after_reports`.
    #[arg(long, value_name = "N")]
    pub scheduler_ban_after_reports: Option<u32>,
    /// `cdn.piece_size`.
    #[arg(long, value_name = "BYTES")]
    pub cdn_piece_size: Option<ByteSize>,
    /// `cdn.upload_slots`.
    #[arg(long, value_name = "N")]
    pub cdn_upload_slots: Option<u32>,
    /// `cdn.upload_rate` (bytes per second).
    #[arg(long, value_name = "BYTES")]
    pub cdn_upload_rate: Option<ByteSize>,
    /// `cdn.max_fetches`.
    #[arg(long, value_name = "N")]
    pub cdn_max_fetches: Option<u32>,
    /// `cdn.max_tasks`.
    #[arg(long, value_name = "N")]
    pub cdn_max_tasks: Option<u32>,
    /// `cdn.takeover_from_peers`.
    #[arg(long, value_name = "BOOL")]
    pub cdn_takeover_from_peers: Option<bool>,
    /// `scheduler.max_peers_per_task`.
    #[arg(long, value_name = "N")]
    pub scheduler_max_peers_per_task: Option<u32>,
    /// `cdn.hot_pieces_memory`.
    #[arg(long, value_name = "BYTES")]
    pub cdn_hot_pieces_memory: Option<ByteSize>,
    /// `origin.connect_timeout`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub origin_connect_timeout: Option<Duration>,
    /// `origin.read_timeout`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub origin_read_timeout: Option<Duration>,
    /// `origin.allow_loopback`.
    #[arg(long, value_name = "BOOL")]
    pub origin_allow_loopback: Option<bool>,
    /// `origin.auth_cache_ttl`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub origin_auth_cache_ttl: Option<Duration>,
    /// `origin.retry.retries`: further attempts of a failing blob fetch.
    #[arg(long, value_name = "N")]
    pub origin_retries: Option<u32>,
    /// `origin.retry.backoff_base`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub origin_backoff_base: Option<Duration>,
    /// `origin.retry.backoff_cap`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub origin_backoff_cap: Option<Duration>,
    /// `origin.retry.retry_after_cap`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub origin_retry_after_cap: Option<Duration>,
    /// `origin.retry.stall_timeout`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub origin_stall_timeout: Option<Duration>,
    /// `origin.retry.min_rate` (bytes per second).
    #[arg(long, value_name = "BYTES")]
    pub origin_min_rate: Option<ByteSize>,
    /// `origin.ca_files` (repeat for several; replaces the file's list).
    #[arg(long = "origin-ca-file", value_name = "PEM")]
    pub origin_ca_files: Vec<PathBuf>,
    /// `preheat.token`: the Bearer token Harbor 2.12+ must present.
    #[arg(long, value_name = "TOKEN", env = "DAMSELFLY_PREHEAT_TOKEN")]
    pub preheat_token: Option<String>,
    /// Adds a pattern to `access.allow` (repeatable): a registry whose yes admits a
    /// requester to a private blob fetched from another registry.
    #[arg(long = "access-allow", value_name = "PATTERN")]
    pub access_allow: Vec<String>,
    /// `preheat.concurrency`.
    #[arg(long, value_name = "N")]
    pub preheat_concurrency: Option<usize>,
    /// `preheat.timeout`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub preheat_timeout: Option<Duration>,
    /// `preheat.platform`.
    #[arg(long, value_name = "OS/ARCH")]
    pub preheat_platform: Option<String>,
    /// `preheat.hostname`.
    #[arg(long, value_name = "NAME")]
    pub preheat_hostname: Option<String>,
    /// `preheat.max_nodes`.
    #[arg(long, value_name = "N")]
    pub preheat_max_nodes: Option<usize>,
    /// `preheat.supernodes` (repeatable; replaces the file's list).
    #[arg(long = "preheat-supernode", value_name = "HOST:PORT")]
    pub preheat_supernodes: Vec<String>,
    /// `cluster.secret_file`: the cluster secret that signs piece tokens.
    #[arg(long, value_name = "FILE", env = "DAMSELFLY_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// `cluster.piece_token_ttl`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub cluster_piece_token_ttl: Option<Duration>,
    /// `cluster.max_clock_skew`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub cluster_max_clock_skew: Option<Duration>,
    /// `cluster.enforce_signatures`.
    #[arg(long, value_name = "BOOL")]
    pub cluster_enforce_signatures: Option<bool>,
    /// `cluster.enforce_session_tokens`.
    #[arg(long, value_name = "BOOL")]
    pub cluster_enforce_session_tokens: Option<bool>,
    /// `preheat.v1_sources` (repeatable; replaces the file's list): networks allowed to use
    /// Harbor preheat generation 1.
    #[arg(long = "preheat-v1-source", value_name = "NET")]
    pub preheat_v1_sources: Vec<String>,
    /// `cluster.vouch_digests`.
    #[arg(long, value_name = "BOOL")]
    pub cluster_vouch_digests: Option<bool>,
    /// `cluster.signing_key_file`.
    #[arg(long, value_name = "FILE")]
    pub cluster_signing_key_file: Option<PathBuf>,
    /// `http.header_read_timeout`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub http_header_read_timeout: Option<Duration>,
    /// `http.max_connections`.
    #[arg(long, value_name = "N")]
    pub http_max_connections: Option<u32>,
    /// `shutdown_grace`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
}

impl Overrides {
    /// Applies every flag that was given.
    pub fn apply(self, c: &mut Config) {
        use damselfly_common::config::set;
        set(&mut c.listen, self.listen);
        set(&mut c.data_dir, self.data_dir);
        set(&mut c.storage.capacity, self.storage_capacity);
        set(&mut c.storage.high_watermark, self.storage_high_watermark);
        set(&mut c.storage.low_watermark, self.storage_low_watermark);
        set(&mut c.storage.gc_interval, self.storage_gc_interval);
        set(&mut c.storage.min_free, self.storage_min_free);
        set(
            &mut c.scheduler.parents_per_peer,
            self.scheduler_parents_per_peer,
        );
        set(
            &mut c.scheduler.peer_upload_slots,
            self.scheduler_peer_upload_slots,
        );
        set(&mut c.scheduler.peer_timeout, self.scheduler_peer_timeout);
        set(
            &mut c.scheduler.ban_after_reports,
            self.scheduler_ban_after_reports,
        );
        set(&mut c.cdn.piece_size, self.cdn_piece_size);
        set(&mut c.cdn.upload_slots, self.cdn_upload_slots);
        set(&mut c.cdn.max_fetches, self.cdn_max_fetches);
        set(&mut c.cdn.takeover_from_peers, self.cdn_takeover_from_peers);
        set(&mut c.cdn.max_tasks, self.cdn_max_tasks);
        set(
            &mut c.scheduler.max_peers_per_task,
            self.scheduler_max_peers_per_task,
        );
        set(&mut c.cdn.upload_rate, self.cdn_upload_rate);
        set(&mut c.cdn.hot_pieces_memory, self.cdn_hot_pieces_memory);
        set(&mut c.origin.connect_timeout, self.origin_connect_timeout);
        set(&mut c.origin.read_timeout, self.origin_read_timeout);
        set(&mut c.origin.allow_loopback, self.origin_allow_loopback);
        set(&mut c.origin.auth_cache_ttl, self.origin_auth_cache_ttl);
        let r = &mut c.origin.retry;
        set(&mut r.retries, self.origin_retries);
        set(&mut r.backoff_base, self.origin_backoff_base);
        set(&mut r.backoff_cap, self.origin_backoff_cap);
        set(&mut r.retry_after_cap, self.origin_retry_after_cap);
        set(&mut r.stall_timeout, self.origin_stall_timeout);
        set(&mut r.min_rate, self.origin_min_rate);
        if !self.origin_ca_files.is_empty() {
            c.origin.ca_files.clone_from(&self.origin_ca_files);
        }
        set(&mut c.preheat.token, self.preheat_token);
        c.access.allow.extend(self.access_allow);
        set(&mut c.preheat.concurrency, self.preheat_concurrency);
        set(&mut c.preheat.timeout, self.preheat_timeout);
        set(&mut c.preheat.platform, self.preheat_platform);
        set(&mut c.preheat.hostname, self.preheat_hostname);
        set(&mut c.preheat.max_nodes, self.preheat_max_nodes);
        if !self.preheat_supernodes.is_empty() {
            c.preheat.supernodes = self.preheat_supernodes;
        }
        set(&mut c.cluster.secret_file, self.cluster_secret_file);
        set(&mut c.cluster.piece_token_ttl, self.cluster_piece_token_ttl);
        set(&mut c.cluster.max_clock_skew, self.cluster_max_clock_skew);
        set(
            &mut c.cluster.enforce_signatures,
            self.cluster_enforce_signatures,
        );
        set(
            &mut c.cluster.enforce_session_tokens,
            self.cluster_enforce_session_tokens,
        );
        if !self.preheat_v1_sources.is_empty() {
            c.preheat.v1_sources = self.preheat_v1_sources;
        }
        set(&mut c.cluster.vouch_digests, self.cluster_vouch_digests);
        set(
            &mut c.cluster.signing_key_file,
            self.cluster_signing_key_file,
        );
        set(
            &mut c.http.header_read_timeout,
            self.http_header_read_timeout,
        );
        set(&mut c.http.max_connections, self.http_max_connections);
        set(&mut c.shutdown_grace, self.shutdown_grace);
    }
}

#[cfg(test)]
mod tests {
    use damselfly_common::config::parse;

    use super::*;

    #[test]
    fn default_file_round_trips() {
        let text = Config::default_toml();
        let back: Config = parse(&text).unwrap();
        assert_eq!(back, Config::default());
        back.validate().unwrap();
        // Dual stack by default: `[::]` serves IPv4 clients too (issue 16 part 4).
        assert_eq!(back.listen, "[::]:8002".parse::<SocketAddr>().unwrap());
        assert!(text.contains("listen = \"[::]:8002\""), "{text}");
    }

    #[test]
    fn access_allow_comes_from_file_or_flags_and_bad_patterns_are_named() {
        let mut c: Config = parse("version = 1\n[access]\nallow = [\"*.corp.example\"]\n").unwrap();
        c.validate().unwrap();
        Overrides {
            access_allow: vec!["reg.local:5000".into(), "*".into()],
            ..Overrides::default()
        }
        .apply(&mut c);
        assert_eq!(c.access.allow, ["*.corp.example", "reg.local:5000", "*"]);
        let keys: Vec<String> = c
            .validate()
            .unwrap_err()
            .iter()
            .map(|e| e.key.clone())
            .collect();
        assert_eq!(keys, ["access.allow[2]"]);
        assert!(parse::<Config>("version = 1\n[access]\ndeny = []\n").is_err());
    }

    #[test]
    fn preheat_v1_sources_must_be_networks() {
        let mut c: Config =
            parse("version = 1\n[preheat]\nv1_sources = [\"10.0.0.0/8\", \"::1/128\"]\n").unwrap();
        c.validate().unwrap();
        Overrides {
            preheat_v1_sources: vec!["10.0.0.1".into(), "192.0.2.0/24".into()],
            cluster_max_clock_skew: Some(Duration::ZERO),
            ..Default::default()
        }
        .apply(&mut c);
        assert_eq!(c.preheat.v1_sources, ["10.0.0.1", "192.0.2.0/24"]);
        let errs = c.validate().unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["cluster.max_clock_skew", "preheat.v1_sources[0]"]);
    }

    /// deploy/config/supernode.toml is the default file with comments: the same keys, each
    /// with its default value, and accepted as it is.
    #[test]
    fn deploy_example_holds_every_key_with_its_default() {
        let example = include_str!("../../deploy/config/supernode.toml");
        let parsed: Config = parse(example).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
        let keys: toml::Table = toml::from_str(example).unwrap();
        let defaults: toml::Table = toml::from_str(&Config::default_toml()).unwrap();
        assert_eq!(keys, defaults);
    }

    #[test]
    fn sections_deserialize() {
        let c: Config = parse(
            "version = 1\nlisten = \"[::1]:9000\"\n[storage]\ncapacity = \"10 GiB\"\n\
             [scheduler]\nparents_per_peer = 3\npeer_timeout = \"5s\"\n\
             [cdn]\npiece_size = \"4 MiB\"\n[origin]\nauth_cache_ttl = \"2m\"\n",
        )
        .unwrap();
        assert_eq!(c.listen, "[::1]:9000".parse().unwrap());
        assert_eq!(c.storage.capacity, ByteSize::gib(10));
        assert_eq!(c.scheduler.parents_per_peer, 3);
        assert_eq!(c.scheduler.peer_timeout, Duration::from_secs(5));
        assert_eq!(c.cdn.piece_size, ByteSize::mib(4));
        assert_eq!(c.origin.auth_cache_ttl, Duration::from_secs(120));
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected_in_every_section() {
        for text in [
            "version = 1\nlisen = \"0.0.0.0:1\"\n",
            "version = 1\n[storage]\ncapacty = 1\n",
            "version = 1\n[scheduler]\nparents = 1\n",
            "version = 1\n[cdn]\nslots = 1\n",
            "version = 1\n[origin]\nttl = \"1s\"\n",
            "version = 1\n[origin.retry]\ntries = 3\n",
            "version = 1\n[http]\ntimeout = \"1s\"\n",
        ] {
            assert!(parse::<Config>(text).is_err(), "{text}");
        }
    }

    #[test]
    fn all_problems_are_reported_together() {
        let mut c = Config::default();
        c.storage.low_watermark = 0.95;
        c.scheduler.parents_per_peer = 0;
        c.cdn.piece_size = ByteSize::b(1000);
        let errs = c.validate().unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "storage.low_watermark",
                "scheduler.parents_per_peer",
                "cdn.piece_size"
            ]
        );
    }

    #[test]
    fn http_limits_come_from_file_or_flags() {
        let mut c: Config =
            parse("version = 1\n[http]\nheader_read_timeout = \"3s\"\nmax_connections = 100\n")
                .unwrap();
        c.validate().unwrap();
        assert_eq!(c.http.header_read_timeout, Duration::from_secs(3));
        assert_eq!(c.http.max_connections, 100);
        Overrides {
            http_header_read_timeout: Some(Duration::ZERO),
            http_max_connections: Some(7),
            ..Default::default()
        }
        .apply(&mut c);
        assert_eq!(c.http.max_connections, 7);
        let errs = c.validate().unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["http.header_read_timeout"]);
    }

    #[test]
    fn origin_retry_comes_from_file_or_flags() {
        let mut c: Config = parse(
            "version = 1\n[origin.retry]\nretries = 2\nstall_timeout = \"2s\"\n\
             min_rate = \"1 KiB\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.origin.retry.retries, 2);
        assert_eq!(c.origin.retry.stall_timeout, Duration::from_secs(2));
        assert_eq!(c.origin.retry.min_rate, ByteSize::kib(1));
        assert_eq!(
            c.origin.retry.backoff_cap,
            RetryPolicy::default().backoff_cap
        );
        Overrides {
            origin_retries: Some(0),
            origin_stall_timeout: Some(Duration::ZERO),
            ..Default::default()
        }
        .apply(&mut c);
        assert_eq!(c.origin.retry.retries, 0);
        let errs = c.validate().unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["origin.retry.stall_timeout"]);
    }

    #[test]
    fn cluster_secret_comes_from_file_or_flags_and_is_checked() {
        let mut c: Config = parse("version = 1\n[cluster]\npiece_token_ttl = \"10m\"\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.cluster.piece_token_ttl, Duration::from_secs(600));
        assert!(c.cluster.token_key().unwrap().is_none(), "off by default");
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        Overrides {
            cluster_secret_file: Some(secret.clone()),
            cluster_piece_token_ttl: Some(Duration::from_secs(5)),
            ..Overrides::default()
        }
        .apply(&mut c);
        assert_eq!(c.cluster.secret_file, secret);
        assert!(c.cluster.token_key().unwrap().is_some());
        let keys: Vec<String> = c
            .validate()
            .unwrap_err()
            .iter()
            .map(|e| e.key.clone())
            .collect();
        assert_eq!(keys, ["cluster.piece_token_ttl"]);
        std::fs::write(&secret, "short\n").unwrap();
        let e = c.cluster.token_key().unwrap_err();
        assert!(e.to_string().contains("at least 16"), "{e}");
        assert!(parse::<Config>("version = 1\n[cluster]\nsecret = \"x\"\n").is_err());
    }

    #[test]
    fn flags_override_file_values() {
        let mut c = Config::default();
        Overrides {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            cdn_upload_slots: Some(2),
            ..Default::default()
        }
        .apply(&mut c);
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.cdn.upload_slots, 2);
        assert_eq!(c.scheduler, SchedulerSection::default());
    }
}
