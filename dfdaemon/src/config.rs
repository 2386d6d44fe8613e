//! dfdaemon configuration: one TOML file, every key also a command-line flag.
//!
//! ```toml
//! version = 1
//! listen = "[::]:65001"        # dual stack: IPv6 and IPv4 (mapped); "0.0.0.0:65001" for IPv4 only
//! peer_listen = "[::]:65000"
//! supernodes = ["supernode.example:8002"]
//! default_upstream = "https://registry-1.docker.io"
//! [[registries]]
//! host = "registry.local:5000"
//! plain_http = true
//! ```
//! `dfdaemon config default` prints the full default file.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
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

/// The whole dfdaemon config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Config format version; must be 1.
    pub version: u32,
    /// The registry mirror (plain HTTP) that runtimes pull through, plus `/healthy` and
    /// `/metrics`. Default `[::]:65001`: dual stack, IPv6 and IPv4 clients (IPv4 mapped), or IPv4 only
    /// (`0.0.0.0:65001`, with a warning) where IPv6 is off on the host; `0.0.0.0:PORT` keeps it
    /// IPv4 only. Port 0 picks a free port (logged at start).
    pub listen: SocketAddr,
    /// Address of the piece server other peers fetch from: TCP and UDP (QUIC) on this port.
    /// Default `[::]:65000`, dual stack like `listen` (IPv4 only where IPv6 is off).
    pub peer_listen: SocketAddr,
    /// IP advertised to other peers. Default: the local address that routes to the supernode.
    pub advertise_ip: Option<IpAddr>,
    /// Node cache (RocksDB metadata and blob files). Default `/var/lib/damselfly/dfdaemon`.
    pub data_dir: PathBuf,
    /// Supernodes (`host:port`). A blob goes to the one its digest hashes to, the others
    /// while it is down. Empty: every blob comes from the origin (a plain caching mirror).
    pub supernodes: Vec<String>,
    /// Upstream for requests that name no registry (Docker's `registry-mirrors` form).
    /// Default `https://registry-1.docker.io`.
    pub default_upstream: String,
    /// Fetch a blob from the origin itself when the swarm cannot serve it. When off, such a
    /// request fails at once (502) so the runtime moves on to its next host. Default on.
    pub back_source: bool,
    /// The node cache.
    pub cache: CacheConfig,
    /// Transfers to and from other peers.
    pub p2p: P2pConfig,
    /// Requests to registries.
    pub upstream: UpstreamConfig,
    /// Per-registry settings.
    pub registries: Vec<RegistryConfig>,
    /// Which registries may approve a requester for a blob this node holds.
    pub access: AccessConfig,
    /// The cluster secret, which checks the piece tokens of other nodes' requests.
    pub cluster: ClusterConfig,
    /// Limits of the mirror's HTTP listener (`listen`): header-read timeout, connection cap.
    pub http: HttpLimits,
    /// Longest wait for requests to drain on SIGTERM. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Name this node announces to the supernodes (`POST /api/v1/nodes`). Default (unset):
    /// the machine's host name, read when dfdaemon starts, so one config file fits every
    /// node.
    pub hostname: Option<String>,
    /// Longest time `POST /api/v1/preheat` waits for its blob before answering 504; the
    /// download itself goes on. Default 30 min.
    #[serde(with = "humantime_serde")]
    pub preheat_timeout: Duration,
    /// Blob downloads this node runs at once. A request that would start another gets 503
    /// with `Retry-After` (a runtime then tries its next host); requests for a blob being
    /// downloaded or cached are always served. Default 64.
    pub max_downloads: u32,
}

/// Node cache limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Cache size limit; `0 B` means unlimited. Default 20 GiB.
    pub capacity: ByteSize,
    /// GC starts above this fraction of `capacity`. Default 0.9.
    pub high_watermark: f64,
    /// GC evicts least recently used blobs down to this fraction. Default 0.7.
    pub low_watermark: f64,
    /// How often GC checks the watermarks. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub gc_interval: Duration,
    /// Free space kept on the volume of `data_dir`: a download starts only if its blob fits
    /// with this much left over (after evicting least recently used blobs if need be), for
    /// the metadata database and logs. Default 16 MiB.
    pub min_free: ByteSize,
}

/// Peer-to-peer transfer settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pConfig {
    /// Download limit per second; `0 B` = unlimited. Default unlimited.
    pub download_rate: ByteSize,
    /// Upload limit per second to other peers; `0 B` = unlimited. Default unlimited.
    pub upload_rate: ByteSize,
    /// Concurrent uploads to other peers. Default 4.
    pub upload_slots: u32,
    /// Piece requests from other peers that may wait for an upload slot before more are
    /// refused as busy (the requester then asks another parent). Default 32.
    pub upload_queue: u32,
    /// Send pieces to other nodes over TCP straight from the cache file (`sendfile`), with
    /// no copy through dfdaemon. Experimental: on a loopback hop it measured slower than
    /// the buffered path. Default off.
    pub sendfile: bool,
    /// Hash each blob once more at the end of a download even when the supernode vouches
    /// for its piece digests (the supernode's copy matched the blob's digest, and every
    /// piece matched those digests). Only for a supernode that is not trusted; the runtime
    /// checks the digest of what it pulls either way. Default off.
    pub check_whole_file: bool,
    /// Learn which pieces each parent holds from the parent itself (one announcement
    /// connection per parent, TCP transport only) instead of from every sync answer of the
    /// supernode, which then names parent changes only. Default on; turn it off while nodes
    /// that predate announcements still run (they refuse the connection, and this node
    /// would then not fetch from them).
    pub announcements: bool,
    /// Take each piece's digest from the piece itself, signed by the supernode, instead of
    /// from the supernode's sync answers (when the supernode publishes its key). Default
    /// on: the supernode then sends each digest once instead of to every node. A parent
    /// that has no signature for a piece (a node that predates this) makes the download
    /// ask the supernode for digests after all.
    pub vouched_digests: bool,
    /// Relay a piece to other nodes while it arrives here (announce it when its first bytes
    /// come, stream it as they are written, send its last 64 KiB once verified) and take
    /// pieces still arriving at parents likewise. Default off: on 16 real hosts it finished
    /// no sooner (docs/benchmarks.md). Needs `announcements`; nodes that predate it, or run
    /// with it off, simply never ask for or offer an arriving piece.
    pub cut_through: bool,
    /// When an image manifest passes through the mirror, start downloading its tar layers
    /// (those not in the node cache) through the swarm at once, instead of when the runtime
    /// asks for each: runtimes fetch a few layers at a time (containerd 3), which leaves
    /// the supernode's uplink idle between them. Default off: on 16 network-namespace hosts
    /// it did not shorten pulls and the supernode sent 1.20-1.34x the image instead of 1.00x
    /// (docs/benchmarks.md). The registry still sends each blob to the cluster once; the
    /// cost is also any layer the runtime turns out to have already. Nydus blobs and other
    /// lazily read layers are never fetched ahead.
    pub prefetch_layers: bool,
    /// How this node fetches pieces from other nodes: `"tcp"` (one connection per parent,
    /// requests pipelined, no encryption: the cheapest per byte) or `"quic"` (TLS 1.3 over
    /// UDP: encrypted in transit, several times the CPU per byte; for networks where node
    /// traffic must be encrypted). Nodes serve both on `peer_listen`'s port, TCP and UDP, so
    /// a cluster may mix them. Integrity never depends on it: every piece is checked against
    /// its sha256. Default `"tcp"`.
    pub transport: dfget::Transport,
    /// Longest time for one piece transfer before it is retried elsewhere. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub piece_timeout: Duration,
    /// TCP connect timeout to a supernode. A supernode that does not answer delays a pull
    /// by this much before the next supernode, the origin, or (back-to-source off) the
    /// runtime's next host is tried. Default 500 ms: a cluster-local connect takes far less.
    #[serde(with = "humantime_serde")]
    pub supernode_connect_timeout: Duration,
    /// How long the supernode may stay silent mid-download before the blob goes back to the
    /// origin (or fails). Default 10 s.
    #[serde(with = "humantime_serde")]
    pub supernode_timeout: Duration,
    /// How often this node tells the supernode it still serves what it holds, and
    /// announces itself to every supernode (`POST /api/v1/nodes`). Must stay well under the
    /// supernode's `scheduler.peer_timeout`. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
}

/// Registry client settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// TCP/TLS connect timeout. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest silence while reading an answer. Default 60 s. For blob bodies the node
    /// fetches itself (back to source) it is only a backstop under `retry.stall_timeout`.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// How long a registry's "yes, these credentials may read this blob" is trusted before
    /// it is asked again. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub access_cache_ttl: Duration,
    /// Retries, backoff and the stall watchdog of the blobs the node fetches from registries
    /// itself (back to source); `[upstream.retry]`, the keys and defaults of the
    /// supernode's `[origin.retry]` ([`RetryPolicy`]).
    pub retry: RetryPolicy,
    /// Allow registries on loopback addresses. Runtimes name the registry a request goes
    /// to (`?ns=`, `X-Damselfly-Registry`), so the node refuses loopback, link-local and
    /// cloud metadata addresses, for a registry's address, every address its name resolves
    /// to and every redirect (`damselfly_oci::guard`). Loopback is allowed anyway when the
    /// default upstream or a `[[registries]]` entry is on this host (the operator named
    /// it). Link-local and metadata addresses stay refused either way. Default off.
    pub allow_loopback: bool,
}

/// Registries whose access checks the node believes (see [`crate::access`]).
///
/// A blob is served from this node (its cache, a running download, the swarm) only after
/// the registry the request names said the requester's credentials open it, and only if
/// that registry is listed: the default upstream, every `[[registries]]` host, or a
/// pattern here. A request naming any other registry is handled per `unlisted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// More registries to list, as patterns: `host`, `host:port`, `host:*` (any port),
    /// `*.domain` and `*.domain:*` (any host under `domain`). `*` alone is refused. Default
    /// none.
    pub allow: Vec<String>,
    /// What a request naming a registry that is not listed gets: `"proxy"` (passed through
    /// to that registry, blobs too, never from this node: pulls work without P2P) or
    /// `"refuse"` (403; the runtime moves on to its next host). Default `"proxy"`.
    pub unlisted: crate::access::Unlisted,
}

/// The cluster secret. With it, the piece server (`peer_listen`, TCP and QUIC) serves a
/// piece or an announcement subscription only to a request carrying a piece token that the
/// supernode issued to that requester for that task (an HMAC made with this secret); others
/// are refused and counted in `access_refusals_total{reason="piece_token"}`. Without it
/// every request is served and a warning is logged at start. The supernodes must hold the
/// same secret, or they issue no (or other) tokens and this node refuses every peer.
///
/// The same secret signs this node's calls to the supernodes (`register`, `sync`, `leave`,
/// `/api/v1/nodes`), which a supernode with a secret requires, and `POST /api/v1/preheat`
/// on this node then needs the supernodes' signature ([`damselfly_common::control`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// File holding the cluster secret (at least 16 bytes; surrounding whitespace is
    /// ignored). Default empty: piece tokens not checked, calls not signed.
    pub secret_file: PathBuf,
    /// A control signature further from this host's clock than this is refused. Default
    /// 5 min.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            secret_file: PathBuf::new(),
            max_clock_skew: damselfly_common::control::DEFAULT_MAX_CLOCK_SKEW,
        }
    }
}

impl ClusterConfig {
    /// The piece-token key, or `None` when no secret file is set.
    ///
    /// # Errors
    /// The file cannot be read or holds too short a secret.
    pub fn token_key(
        &self,
    ) -> Result<Option<damselfly_common::TokenKey>, damselfly_common::token::SecretError> {
        damselfly_common::TokenKey::from_setting(&self.secret_file)
    }

    /// The control-plane key, or `None` when no secret file is set.
    ///
    /// # Errors
    /// The file cannot be read or holds too short a secret.
    pub fn control_key(
        &self,
    ) -> Result<Option<damselfly_common::ControlKey>, damselfly_common::token::SecretError> {
        damselfly_common::ControlKey::from_setting(&self.secret_file)
    }
}

/// Settings for one registry, matched by the host name runtimes use for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registry host as in image references: `docker.io`, `registry.local:5000`.
    pub host: String,
    /// Where to send its requests, e.g. `https://registry-1.docker.io`. Default:
    /// `https://<host>` (`http://` with `plain_http`; `docker.io` maps to Docker Hub).
    pub endpoint: Option<String>,
    /// The registry speaks plain HTTP. Registries on loopback addresses are assumed plain
    /// HTTP unless an `endpoint` says otherwise.
    pub plain_http: bool,
    /// PEM file with extra CA certificates to trust for this registry.
    pub ca_file: Option<PathBuf>,
    /// Accept any TLS certificate from this registry. For tests only.
    pub skip_verify: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            version: CONFIG_VERSION,
            listen: SocketAddr::from((Ipv6Addr::UNSPECIFIED, 65001)),
            peer_listen: SocketAddr::from((Ipv6Addr::UNSPECIFIED, 65000)),
            advertise_ip: None,
            data_dir: PathBuf::from("/var/lib/damselfly/dfdaemon"),
            supernodes: Vec::new(),
            default_upstream: "https://registry-1.docker.io".into(),
            back_source: true,
            cache: CacheConfig::default(),
            p2p: P2pConfig::default(),
            upstream: UpstreamConfig::default(),
            registries: Vec::new(),
            access: AccessConfig::default(),
            cluster: ClusterConfig::default(),
            http: HttpLimits::default(),
            shutdown_grace: Duration::from_secs(10),
            hostname: None,
            preheat_timeout: Duration::from_secs(30 * 60),
            max_downloads: 64,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            capacity: ByteSize::gib(20),
            high_watermark: 0.9,
            low_watermark: 0.7,
            gc_interval: Duration::from_secs(60),
            min_free: ByteSize::b(damselfly_store::DEFAULT_MIN_FREE),
        }
    }
}

impl Default for P2pConfig {
    fn default() -> Self {
        Self {
            download_rate: ByteSize::b(0),
            upload_rate: ByteSize::b(0),
            upload_slots: 4,
            upload_queue: 32,
            sendfile: false,
            check_whole_file: false,
            announcements: true,
            vouched_digests: true,
            cut_through: false,
            prefetch_layers: false,
            transport: dfget::Transport::Tcp,
            piece_timeout: Duration::from_secs(10),
            supernode_connect_timeout: Duration::from_millis(500),
            supernode_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(5),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            access_cache_ttl: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            allow_loopback: false,
        }
    }
}

impl Config {
    /// Checks every key; returns all problems at once.
    ///
    /// # Errors
    /// One [`ConfigError`] per bad key.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errs = Vec::new();
        if self.version != CONFIG_VERSION {
            errs.push(ConfigError::new(
                "version",
                format!("must be {CONFIG_VERSION}"),
            ));
        }
        for (i, sn) in self.supernodes.iter().enumerate() {
            if sn.is_empty() || sn.contains('/') || !sn.contains(':') {
                errs.push(ConfigError::new(
                    format!("supernodes[{i}]"),
                    "must be HOST:PORT",
                ));
            }
        }
        if crate::upstream::parse_base(&self.default_upstream).is_none() {
            errs.push(ConfigError::new(
                "default_upstream",
                "must be an http:// or https:// URL without a path",
            ));
        }
        let c = &self.cache;
        let (low, high) = (c.low_watermark, c.high_watermark);
        if !(low > 0.0 && low <= high && high <= 1.0) {
            errs.push(ConfigError::new(
                "cache",
                "watermarks must satisfy 0 < low_watermark <= high_watermark <= 1",
            ));
        }
        if c.gc_interval.is_zero() {
            errs.push(ConfigError::new("cache.gc_interval", "must be > 0"));
        }
        if self.p2p.upload_slots == 0 {
            errs.push(ConfigError::new("p2p.upload_slots", "must be > 0"));
        }
        if self.p2p.keepalive_interval.is_zero() {
            errs.push(ConfigError::new("p2p.keepalive_interval", "must be > 0"));
        }
        self.upstream.retry.validate("upstream.retry", &mut errs);
        self.http.validate("http", &mut errs);
        if let Some(h) = &self.hostname
            && !valid_hostname(h)
        {
            errs.push(ConfigError::new(
                "hostname",
                "must be 1 to 253 printable characters without spaces",
            ));
        }
        if self.preheat_timeout.is_zero() {
            errs.push(ConfigError::new("preheat_timeout", "must be > 0"));
        }
        if self.max_downloads == 0 {
            errs.push(ConfigError::new("max_downloads", "must be > 0"));
        }
        for (i, r) in self.registries.iter().enumerate() {
            if r.host.is_empty() || r.host.contains('/') {
                errs.push(ConfigError::new(
                    format!("registries[{i}].host"),
                    "must be a registry host such as registry.local:5000",
                ));
            }
            if let Some(e) = &r.endpoint
                && crate::upstream::parse_base(e).is_none()
            {
                errs.push(ConfigError::new(
                    format!("registries[{i}].endpoint"),
                    "must be an http:// or https:// URL without a path",
                ));
            }
        }
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

    /// The default config as TOML, for `dfdaemon config default`.
    pub fn default_toml() -> String {
        toml::to_string(&Self::default()).unwrap_or_default()
    }

    /// The settings for registry `host`, if configured.
    pub fn registry(&self, host: &str) -> Option<&RegistryConfig> {
        self.registries.iter().find(|r| r.host == host)
    }

    /// Which registry addresses this node fetches from: `upstream.allow_loopback`, or a
    /// configured registry (the default upstream, a `[[registries]]` host or endpoint) on a
    /// loopback address.
    pub fn origin_addresses(&self) -> damselfly_oci::guard::AddressPolicy {
        let url_is_loopback = |url: &str| {
            reqwest::Url::parse(url)
                .ok()
                .and_then(|u| u.host_str().map(crate::upstream::is_loopback))
                .unwrap_or(false)
        };
        let configured_loopback = url_is_loopback(&self.default_upstream)
            || self.registries.iter().any(|r| {
                crate::upstream::is_loopback(&r.host)
                    || r.endpoint.as_deref().is_some_and(url_is_loopback)
            });
        damselfly_oci::guard::AddressPolicy {
            allow_loopback: self.upstream.allow_loopback || configured_loopback,
        }
    }

    /// The name announced to the supernodes: `hostname`, else the machine's.
    pub fn node_name(&self) -> String {
        self.hostname.clone().unwrap_or_else(machine_hostname)
    }
}

/// The kernel's host name (`/proc/sys/kernel/hostname`, trimmed), or `localhost` when it
/// cannot be read or is not a usable name.
pub fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| valid_hostname(h))
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A name that fits a DNS host name's length and carries no whitespace or control
/// characters (it ends up in JSON, logs and the supernode's node list).
fn valid_hostname(h: &str) -> bool {
    !h.is_empty() && h.len() <= 253 && !h.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Command-line flags; each overrides the config key it names.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// `listen`: the mirror's address.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// `peer_listen`: the piece server's UDP address.
    #[arg(long, value_name = "ADDR")]
    pub peer_listen: Option<SocketAddr>,
    /// `advertise_ip`.
    #[arg(long, value_name = "IP")]
    pub advertise_ip: Option<IpAddr>,
    /// `data_dir`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// `supernodes` (repeatable; replaces the file's list).
    #[arg(long = "supernode", value_name = "HOST:PORT")]
    pub supernodes: Vec<String>,
    /// `default_upstream`.
    #[arg(long, value_name = "URL")]
    pub default_upstream: Option<String>,
    /// `back_source`.
    #[arg(long, value_name = "BOOL")]
    pub back_source: Option<bool>,
    /// `cache.capacity`, e.g. `50GiB`.
    #[arg(long, value_name = "BYTES")]
    pub cache_capacity: Option<ByteSize>,
    /// `cache.high_watermark`.
    #[arg(long, value_name = "FRACTION")]
    pub cache_high_watermark: Option<f64>,
    /// `cache.low_watermark`.
    #[arg(long, value_name = "FRACTION")]
    pub cache_low_watermark: Option<f64>,
    /// `cache.gc_interval`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub cache_gc_interval: Option<Duration>,
    /// `cache.min_free`, e.g. `1GiB`.
    #[arg(long, value_name = "BYTES")]
    pub cache_min_free: Option<ByteSize>,
    /// `p2p.download_rate` (per second).
    #[arg(long, value_name = "BYTES")]
    pub p2p_download_rate: Option<ByteSize>,
    /// `p2p.upload_rate` (per second).
    #[arg(long, value_name = "BYTES")]
    pub p2p_upload_rate: Option<ByteSize>,
    /// `p2p.upload_slots`.
    #[arg(long, value_name = "N")]
    pub p2p_upload_slots: Option<u32>,
    /// `p2p.upload_queue`.
    #[arg(long, value_name = "N")]
    pub p2p_upload_queue: Option<u32>,
    /// `p2p.sendfile`.
    #[arg(long, value_name = "BOOL")]
    pub p2p_sendfile: Option<bool>,
    /// `p2p.check_whole_file`.
    #[arg(long, value_name = "BOOL")]
    pub p2p_check_whole_file: Option<bool>,
    /// `p2p.announcements`.
    #[arg(long, value_name = "BOOL")]
    pub p2p_announcements: Option<bool>,
    /// `p2p.vouched_digests`.
    #[arg(long, value_name = "BOOL")]
    pub p2p_vouched_digests: Option<bool>,
    /// `p2p.cut_through`.
    #[arg(long, value_name = "BOOL")]
    pub p2p_cut_through: Option<bool>,
    /// `p2p.prefetch_layers`.
    #[arg(long, value_name = "BOOL")]
    pub p2p_prefetch_layers: Option<bool>,
    /// `p2p.transport` (`tcp` or `quic`).
    #[arg(long, value_name = "tcp|quic")]
    pub p2p_transport: Option<dfget::Transport>,
    /// `p2p.piece_timeout`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub p2p_piece_timeout: Option<Duration>,
    /// `p2p.supernode_connect_timeout`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub p2p_supernode_connect_timeout: Option<Duration>,
    /// `p2p.supernode_timeout`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub p2p_supernode_timeout: Option<Duration>,
    /// `p2p.keepalive_interval`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub p2p_keepalive_interval: Option<Duration>,
    /// `upstream.connect_timeout`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub upstream_connect_timeout: Option<Duration>,
    /// `upstream.read_timeout`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub upstream_read_timeout: Option<Duration>,
    /// `upstream.allow_loopback`.
    #[arg(long, value_name = "BOOL")]
    pub upstream_allow_loopback: Option<bool>,
    /// `upstream.retry.retries`: further attempts of a failing back-to-source fetch.
    #[arg(long, value_name = "N")]
    pub upstream_retries: Option<u32>,
    /// `upstream.retry.backoff_base`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub upstream_backoff_base: Option<Duration>,
    /// `upstream.retry.backoff_cap`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub upstream_backoff_cap: Option<Duration>,
    /// `upstream.retry.retry_after_cap`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub upstream_retry_after_cap: Option<Duration>,
    /// `upstream.retry.stall_timeout`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub upstream_stall_timeout: Option<Duration>,
    /// `upstream.retry.min_rate` (bytes per second).
    #[arg(long, value_name = "BYTES")]
    pub upstream_min_rate: Option<ByteSize>,
    /// `upstream.access_cache_ttl`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub upstream_access_cache_ttl: Option<Duration>,
    /// Adds a `[[registries]]` entry with `plain_http = true` for HOST (repeatable).
    #[arg(long = "plain-http-registry", value_name = "HOST")]
    pub plain_http_registries: Vec<String>,
    /// Adds (or updates) a `[[registries]]` entry: requests for HOST go to URL, e.g.
    /// `docker.io=https://mirror.gcr.io` (repeatable).
    #[arg(long = "registry-endpoint", value_name = "HOST=URL", value_parser = parse_endpoint)]
    pub registry_endpoints: Vec<(String, String)>,
    /// Adds a pattern to `access.allow` (repeatable): a registry whose access checks this
    /// node believes, e.g. `registry.local:5000` or `*.corp.example`.
    #[arg(long = "access-allow", value_name = "PATTERN")]
    pub access_allow: Vec<String>,
    /// `access.unlisted` (`proxy` or `refuse`).
    #[arg(long, value_name = "proxy|refuse")]
    pub access_unlisted: Option<crate::access::Unlisted>,
    /// `cluster.secret_file`: the cluster secret that checks other nodes' piece tokens.
    #[arg(long, value_name = "FILE", env = "DAMSELFLY_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// `http.header_read_timeout`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub http_header_read_timeout: Option<Duration>,
    /// `http.max_connections`.
    #[arg(long, value_name = "N")]
    pub http_max_connections: Option<u32>,
    /// `shutdown_grace`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// `hostname`: the name announced to the supernodes.
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// `preheat_timeout`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub preheat_timeout: Option<Duration>,
    /// `max_downloads`.
    #[arg(long, value_name = "N")]
    pub max_downloads: Option<u32>,
}

fn parse_endpoint(s: &str) -> Result<(String, String), String> {
    let (host, url) = s
        .split_once('=')
        .ok_or_else(|| format!("expected HOST=URL, got {s:?}"))?;
    Ok((host.trim().to_owned(), url.trim().to_owned()))
}

impl Overrides {
    /// Applies every flag that was given.
    pub fn apply(self, c: &mut Config) {
        use damselfly_common::config::set;
        set(&mut c.listen, self.listen);
        set(&mut c.peer_listen, self.peer_listen);
        if self.advertise_ip.is_some() {
            c.advertise_ip = self.advertise_ip;
        }
        set(&mut c.data_dir, self.data_dir);
        if !self.supernodes.is_empty() {
            c.supernodes = self.supernodes;
        }
        set(&mut c.default_upstream, self.default_upstream);
        set(&mut c.back_source, self.back_source);
        set(&mut c.cache.capacity, self.cache_capacity);
        set(&mut c.cache.high_watermark, self.cache_high_watermark);
        set(&mut c.cache.low_watermark, self.cache_low_watermark);
        set(&mut c.cache.gc_interval, self.cache_gc_interval);
        set(&mut c.cache.min_free, self.cache_min_free);
        set(&mut c.p2p.download_rate, self.p2p_download_rate);
        set(&mut c.p2p.upload_rate, self.p2p_upload_rate);
        set(&mut c.p2p.upload_slots, self.p2p_upload_slots);
        set(&mut c.p2p.upload_queue, self.p2p_upload_queue);
        set(&mut c.p2p.sendfile, self.p2p_sendfile);
        set(&mut c.p2p.check_whole_file, self.p2p_check_whole_file);
        set(&mut c.p2p.announcements, self.p2p_announcements);
        set(&mut c.p2p.vouched_digests, self.p2p_vouched_digests);
        set(&mut c.p2p.cut_through, self.p2p_cut_through);
        set(&mut c.p2p.prefetch_layers, self.p2p_prefetch_layers);
        set(&mut c.p2p.transport, self.p2p_transport);
        set(&mut c.p2p.piece_timeout, self.p2p_piece_timeout);
        set(
            &mut c.p2p.supernode_connect_timeout,
            self.p2p_supernode_connect_timeout,
        );
        set(&mut c.p2p.supernode_timeout, self.p2p_supernode_timeout);
        set(&mut c.p2p.keepalive_interval, self.p2p_keepalive_interval);
        set(
            &mut c.upstream.connect_timeout,
            self.upstream_connect_timeout,
        );
        set(&mut c.upstream.read_timeout, self.upstream_read_timeout);
        set(&mut c.upstream.allow_loopback, self.upstream_allow_loopback);
        let r = &mut c.upstream.retry;
        set(&mut r.retries, self.upstream_retries);
        set(&mut r.backoff_base, self.upstream_backoff_base);
        set(&mut r.backoff_cap, self.upstream_backoff_cap);
        set(&mut r.retry_after_cap, self.upstream_retry_after_cap);
        set(&mut r.stall_timeout, self.upstream_stall_timeout);
        set(&mut r.min_rate, self.upstream_min_rate);
        set(
            &mut c.upstream.access_cache_ttl,
            self.upstream_access_cache_ttl,
        );
        for host in self.plain_http_registries {
            match c.registries.iter_mut().find(|r| r.host == host) {
                Some(r) => r.plain_http = true,
                None => c.registries.push(RegistryConfig {
                    host,
                    plain_http: true,
                    ..RegistryConfig::default()
                }),
            }
        }
        for (host, url) in self.registry_endpoints {
            match c.registries.iter_mut().find(|r| r.host == host) {
                Some(r) => r.endpoint = Some(url),
                None => c.registries.push(RegistryConfig {
                    host,
                    endpoint: Some(url),
                    ..RegistryConfig::default()
                }),
            }
        }
        c.access.allow.extend(self.access_allow);
        set(&mut c.access.unlisted, self.access_unlisted);
        set(&mut c.cluster.secret_file, self.cluster_secret_file);
        set(
            &mut c.http.header_read_timeout,
            self.http_header_read_timeout,
        );
        set(&mut c.http.max_connections, self.http_max_connections);
        set(&mut c.shutdown_grace, self.shutdown_grace);
        if self.hostname.is_some() {
            c.hostname = self.hostname;
        }
        set(&mut c.preheat_timeout, self.preheat_timeout);
        set(&mut c.max_downloads, self.max_downloads);
    }
}

#[cfg(test)]
mod tests {
    use damselfly_common::config::parse;

    use super::*;

    #[test]
    fn default_file_round_trips_and_matches_the_documented_defaults() {
        let text = Config::default_toml();
        let back: Config = parse(&text).unwrap();
        assert_eq!(back, Config::default());
        back.validate().unwrap();
        // Dual stack by default: `[::]` serves IPv4 clients too (issue 16 part 4).
        assert_eq!(back.listen, "[::]:65001".parse::<SocketAddr>().unwrap());
        assert_eq!(
            back.peer_listen,
            "[::]:65000".parse::<SocketAddr>().unwrap()
        );
        assert!(text.contains("listen = \"[::]:65001\""), "{text}");
        assert!(text.contains("peer_listen = \"[::]:65000\""), "{text}");
        assert_eq!(back.data_dir, PathBuf::from("/var/lib/damselfly/dfdaemon"));
        assert_eq!(back.default_upstream, "https://registry-1.docker.io");
        // No machine's name is baked into the default file.
        assert_eq!(back.hostname, None);
        assert_eq!(back.preheat_timeout, Duration::from_secs(1800));
    }

    /// deploy/config/dfdaemon.toml is the default file with comments: the same keys, each
    /// with its default value, accepted as it is; the keys without a default (optional ones
    /// and a `[[registries]]` entry) are there commented out, and accepted once uncommented.
    #[test]
    fn loopback_registries_are_allowed_only_when_configured() {
        let mut c = Config::default();
        assert!(
            !c.origin_addresses().allow_loopback,
            "Docker Hub only: strict"
        );
        c.default_upstream = "http://127.0.0.1:5000".into();
        assert!(
            c.origin_addresses().allow_loopback,
            "the default upstream is local"
        );
        let mut c = Config::default();
        c.registries.push(RegistryConfig {
            host: "localhost:5000".into(),
            ..RegistryConfig::default()
        });
        assert!(
            c.origin_addresses().allow_loopback,
            "a [[registries]] host is local"
        );
        let mut c = Config::default();
        c.registries.push(RegistryConfig {
            host: "registry.local".into(),
            endpoint: Some("http://[::1]:5000".into()),
            ..RegistryConfig::default()
        });
        assert!(c.origin_addresses().allow_loopback, "an endpoint is local");
        let mut c = Config::default();
        c.upstream.allow_loopback = true;
        assert!(c.origin_addresses().allow_loopback);
        // Whatever is configured, the metadata service stays out of reach.
        assert!(
            c.origin_addresses()
                .check("169.254.169.254".parse().unwrap())
                .is_err()
        );
    }

    #[test]
    fn deploy_example_holds_every_key_with_its_default() {
        let example = include_str!("../../deploy/config/dfdaemon.toml");
        let parsed: Config = parse(example).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
        let keys: toml::Table = toml::from_str(example).unwrap();
        let defaults: toml::Table = toml::from_str(&Config::default_toml()).unwrap();
        assert_eq!(keys, defaults);

        let commented: Vec<&str> = example
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = ") && !l.starts_with('#'))
            .collect();
        let optional = commented
            .iter()
            .filter(|l| l.starts_with("advertise_ip") || l.starts_with("hostname"));
        let mut text = String::from("version = 1\n");
        for line in optional {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("[[registries]]\n");
        let entry_at = example.find("# [[registries]]").unwrap();
        for line in example[entry_at..].lines().skip(1) {
            let line = line.strip_prefix("# ").unwrap();
            if !line.starts_with('#') {
                text.push_str(line);
                text.push('\n');
            }
        }
        let c: Config = parse(&text).unwrap();
        c.validate().unwrap();
        assert!(c.advertise_ip.is_some() && c.hostname.is_some(), "{text}");
        let r = &c.registries[0];
        assert!(r.endpoint.is_some() && r.ca_file.is_some(), "{text}");
        let all_registry_keys = toml::to_string(r).unwrap();
        let written: toml::Table = toml::from_str(&all_registry_keys).unwrap();
        let entry: toml::Table =
            toml::from_str(text.split("[[registries]]\n").nth(1).unwrap()).unwrap();
        let keys = |t: &toml::Table| t.keys().cloned().collect::<std::collections::BTreeSet<_>>();
        assert_eq!(
            keys(&written),
            keys(&entry),
            "every [[registries]] key is in the example"
        );
    }

    #[test]
    fn hostname_and_preheat_timeout_come_from_file_or_flags() {
        let mut c: Config =
            parse("version = 1\nhostname = \"node-a\"\npreheat_timeout = \"5m\"\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.node_name(), "node-a");
        assert_eq!(c.preheat_timeout, Duration::from_secs(300));
        Overrides {
            hostname: Some("node-b".into()),
            preheat_timeout: Some(Duration::from_secs(7)),
            ..Overrides::default()
        }
        .apply(&mut c);
        assert_eq!(c.node_name(), "node-b");
        assert_eq!(c.preheat_timeout, Duration::from_secs(7));
        c.hostname = Some("two words".into());
        c.preheat_timeout = Duration::ZERO;
        let keys: Vec<String> = c
            .validate()
            .unwrap_err()
            .iter()
            .map(|e| e.key.clone())
            .collect();
        assert_eq!(keys, ["hostname", "preheat_timeout"]);
        let machine = Config::default().node_name();
        assert!(!machine.is_empty() && !machine.contains(char::is_whitespace));
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
            http_header_read_timeout: Some(Duration::from_millis(500)),
            http_max_connections: Some(0),
            ..Overrides::default()
        }
        .apply(&mut c);
        assert_eq!(c.http.header_read_timeout, Duration::from_millis(500));
        let keys: Vec<String> = c
            .validate()
            .unwrap_err()
            .iter()
            .map(|e| e.key.clone())
            .collect();
        assert_eq!(keys, ["http.max_connections"]);
        assert!(parse::<Config>("version = 1\n[http]\ntimeout = \"1s\"\n").is_err());
    }

    #[test]
    fn access_comes_from_file_or_flags_and_bad_patterns_are_named() {
        let mut c: Config =
            parse("version = 1\n[access]\nallow = [\"*.corp.example\"]\nunlisted = \"refuse\"\n")
                .unwrap();
        c.validate().unwrap();
        assert_eq!(c.access.allow, ["*.corp.example"]);
        assert_eq!(c.access.unlisted, crate::access::Unlisted::Refuse);
        Overrides {
            access_allow: vec!["reg.local:5000".into(), "*".into()],
            access_unlisted: Some(crate::access::Unlisted::Proxy),
            ..Overrides::default()
        }
        .apply(&mut c);
        assert_eq!(c.access.allow, ["*.corp.example", "reg.local:5000", "*"]);
        assert_eq!(c.access.unlisted, crate::access::Unlisted::Proxy);
        let keys: Vec<String> = c
            .validate()
            .unwrap_err()
            .iter()
            .map(|e| e.key.clone())
            .collect();
        assert_eq!(keys, ["access.allow[2]"]);
        assert!(parse::<Config>("version = 1\n[access]\nunlisted = \"allow\"\n").is_err());
        assert!(parse::<Config>("version = 1\n[access]\ndeny = []\n").is_err());
    }

    #[test]
    fn cluster_secret_comes_from_file_or_flags() {
        let c: Config = parse("version = 1\n[cluster]\nsecret_file = \"\"\n").unwrap();
        assert!(c.cluster.token_key().unwrap().is_none(), "off by default");
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        let mut c = Config::default();
        Overrides {
            cluster_secret_file: Some(secret.clone()),
            ..Overrides::default()
        }
        .apply(&mut c);
        assert_eq!(c.cluster.secret_file, secret);
        assert!(c.cluster.token_key().unwrap().is_some());
        std::fs::write(&secret, "").unwrap();
        assert!(
            c.cluster.token_key().is_err(),
            "an empty secret file is an error"
        );
        assert!(parse::<Config>("version = 1\n[cluster]\nsecret = \"x\"\n").is_err());
    }

    #[test]
    fn upstream_retry_comes_from_file_or_flags() {
        let mut c: Config =
            parse("version = 1\n[upstream.retry]\nretries = 1\nretry_after_cap = \"30s\"\n")
                .unwrap();
        c.validate().unwrap();
        assert_eq!(c.upstream.retry.retries, 1);
        assert_eq!(c.upstream.retry.retry_after_cap, Duration::from_secs(30));
        assert_eq!(c.upstream.retry.stall_timeout, Duration::from_secs(5));
        Overrides {
            upstream_stall_timeout: Some(Duration::from_secs(2)),
            upstream_backoff_base: Some(Duration::from_secs(60)),
            ..Overrides::default()
        }
        .apply(&mut c);
        assert_eq!(c.upstream.retry.stall_timeout, Duration::from_secs(2));
        let keys: Vec<String> = c
            .validate()
            .unwrap_err()
            .iter()
            .map(|e| e.key.clone())
            .collect();
        assert_eq!(keys, ["upstream.retry.backoff_base"]);
        assert!(parse::<Config>("version = 1\n[upstream.retry]\nretry = 1\n").is_err());
    }

    #[test]
    fn registries_and_flags_combine() {
        let mut c: Config = parse(
            "version = 1\nsupernodes = [\"sn:8002\"]\n\
             [[registries]]\nhost = \"reg.local:5000\"\nca_file = \"/etc/ca.pem\"\n",
        )
        .unwrap();
        Overrides {
            supernodes: vec!["a:1".into(), "b:2".into()],
            plain_http_registries: vec!["reg.local:5000".into(), "other:80".into()],
            ..Overrides::default()
        }
        .apply(&mut c);
        c.validate().unwrap();
        assert_eq!(c.supernodes, ["a:1", "b:2"]);
        let r = c.registry("reg.local:5000").unwrap();
        assert!(r.plain_http);
        assert_eq!(
            r.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert!(c.registry("other:80").unwrap().plain_http);
    }

    #[test]
    fn every_bad_key_is_reported() {
        let mut c: Config = parse(
            "version = 1\nsupernodes = [\"no-port\"]\ndefault_upstream = \"ftp://x\"\n\
             [cache]\nlow_watermark = 0.95\n[[registries]]\nhost = \"a/b\"\n",
        )
        .unwrap();
        c.version = 2;
        let keys: Vec<String> = c
            .validate()
            .unwrap_err()
            .iter()
            .map(|e| e.key.clone())
            .collect();
        assert_eq!(
            keys,
            [
                "version",
                "supernodes[0]",
                "default_upstream",
                "cache",
                "registries[0].host"
            ]
        );
        let unknown = parse::<Config>("version = 1\nlisten_addr = \"x\"\n").unwrap_err();
        assert!(
            unknown[0].to_string().contains("listen_addr"),
            "{}",
            unknown[0]
        );
    }
}
