//! The snapshotter's config file (TOML, `--config`), every key with a default.
//!
//! ```toml
//! version = 1
//! [nydus]
//! enabled = true                       # provide nydus-fs images lazily
//! binary = "nydus-fs"                  # the mount program (found in PATH)
//! cache_dir = "/var/lib/damselfly/nydus-cache"
//! dfdaemon = "http://127.0.0.1:65001"  # chunks through the node's dfdaemon; "" = registries
//! plain_http = []                      # registries (host[:port]) spoken to over http://
//! mount_timeout = "30s"
//! probe_timeout = "1s"
//! ```
//!
//! The root directory and the socket stay command-line flags (`--root`, `--address`).

use std::path::PathBuf;
use std::time::Duration;

use damselfly_common::config::{CONFIG_VERSION, ConfigError};
use serde::{Deserialize, Serialize};

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Config format version; must be 1.
    pub version: u32,
    /// Lazily mounted nydus-fs images.
    pub nydus: NydusConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            version: CONFIG_VERSION,
            nydus: NydusConfig::default(),
        }
    }
}

/// How nydus-fs images are provided (see [`crate::nydus`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NydusConfig {
    /// Provide nydus-fs images pulled through CRI from a lazy mount instead of letting
    /// containerd unpack them. Default `true`; with `false` every image is unpacked (which a
    /// nydus-fs image's layers cannot be).
    pub enabled: bool,
    /// The `nydus-fs` program that mounts an image (one process per mounted image). Default
    /// `nydus-fs`, looked up in `PATH`.
    pub binary: PathBuf,
    /// The chunk cache shared by every mount (`nydus-fs mount --cache-dir`). Default
    /// `/var/lib/damselfly/nydus-cache`.
    pub cache_dir: PathBuf,
    /// The node's dfdaemon (its registry mirror URL): mounts fetch manifests, the bootstrap and
    /// chunks through it (`nydus-fs mount --via`), so chunks come from the swarm. Asked at
    /// each mount whether it accepts connections; if not, that mount goes straight to the
    /// registry. Default `http://127.0.0.1:65001`; empty: always straight to the registry.
    pub dfdaemon: String,
    /// Registries (`host[:port]`, as in image references) spoken to over plain `http://`.
    /// Default: none (https everywhere).
    pub plain_http: Vec<String>,
    /// Longest wait for a mount to appear before the Prepare fails. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub mount_timeout: Duration,
    /// Longest wait for a TCP connection to `dfdaemon` when probing it. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
}

impl Default for NydusConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            binary: PathBuf::from("nydus-fs"),
            cache_dir: PathBuf::from("/var/lib/damselfly/nydus-cache"),
            dfdaemon: "http://127.0.0.1:65001".to_owned(),
            plain_http: Vec::new(),
            mount_timeout: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(1),
        }
    }
}

impl Config {
    /// Every problem with the values, each naming its key.
    ///
    /// # Errors
    /// The list of problems (never empty).
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errs = Vec::new();
        let nydus = &self.nydus;
        if !nydus.dfdaemon.is_empty() && dfdaemon_authority(&nydus.dfdaemon).is_none() {
            errs.push(ConfigError::new(
                "nydus.dfdaemon",
                format!(
                    "{:?} is not http://host:port or https://host:port",
                    nydus.dfdaemon
                ),
            ));
        }
        if !nydus.cache_dir.is_absolute() {
            errs.push(ConfigError::new(
                "nydus.cache_dir",
                "must be an absolute path",
            ));
        }
        for (key, value) in [
            ("nydus.mount_timeout", nydus.mount_timeout),
            ("nydus.probe_timeout", nydus.probe_timeout),
        ] {
            if value.is_zero() {
                errs.push(ConfigError::new(key, "must be more than 0"));
            }
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }
}

/// `host:port` of a dfdaemon URL (the scheme's port when none is written), for the
/// reachability probe; `None` unless it is `http://` or `https://` with a host.
pub fn dfdaemon_authority(url: &str) -> Option<String> {
    let (rest, port) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, 80)
    } else {
        (url.strip_prefix("https://")?, 443)
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    // `[v6]:port`, `[v6]`, `host:port`, `host`.
    let has_port = match authority.rfind(']') {
        Some(end) => authority[end..].contains(':'),
        None => authority.contains(':'),
    };
    Some(if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{port}")
    })
}

#[cfg(test)]
mod tests {
    use damselfly_common::config::parse;

    use super::*;

    #[test]
    fn defaults_when_the_file_says_only_its_version() {
        let config: Config = parse("version = 1\n").unwrap();
        assert_eq!(config, Config::default());
        assert!(config.validate().is_ok());
        assert!(config.nydus.enabled);
        assert_eq!(config.nydus.dfdaemon, "http://127.0.0.1:65001");
    }

    #[test]
    fn the_nydus_section_deserialises() {
        let text = r#"
            version = 1
            [nydus]
            enabled = false
            binary = "/usr/local/bin/nydus-fs"
            cache_dir = "/srv/cache"
            dfdaemon = ""
            plain_http = ["localhost:5000"]
            mount_timeout = "2m"
            probe_timeout = "250ms"
        "#;
        let config: Config = parse(text).unwrap();
        assert!(!config.nydus.enabled);
        assert_eq!(
            config.nydus.binary,
            PathBuf::from("/usr/local/bin/nydus-fs")
        );
        assert_eq!(config.nydus.plain_http, ["localhost:5000"]);
        assert_eq!(config.nydus.mount_timeout, Duration::from_secs(120));
        assert_eq!(config.nydus.probe_timeout, Duration::from_millis(250));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_together() {
        assert!(parse::<Config>("version = 1\n[nydus]\nvia = \"x\"\n").is_err());
        assert!(parse::<Config>("version = 2\n").is_err());
        let config: Config = parse(
            "version = 1\n[nydus]\ndfdaemon = \"127.0.0.1:65001\"\ncache_dir = \"rel\"\n\
             mount_timeout = \"0s\"\n",
        )
        .unwrap();
        let keys: Vec<String> = config
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(
            keys,
            ["nydus.dfdaemon", "nydus.cache_dir", "nydus.mount_timeout"]
        );
    }

    #[test]
    fn dfdaemon_urls_give_the_address_to_probe() {
        let auth = |url| dfdaemon_authority(url);
        assert_eq!(
            auth("http://127.0.0.1:65001").as_deref(),
            Some("127.0.0.1:65001")
        );
        assert_eq!(auth("http://node.local/").as_deref(), Some("node.local:80"));
        assert_eq!(auth("https://[::1]").as_deref(), Some("[::1]:443"));
        assert_eq!(auth("http://[::1]:65001/x").as_deref(), Some("[::1]:65001"));
        assert_eq!(auth("127.0.0.1:65001"), None);
        assert_eq!(auth("http://"), None);
        assert_eq!(auth("http://user@host:1"), None);
    }
}
