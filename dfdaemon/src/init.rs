//! `dfdaemon init containerd|docker|podman`: the runtime's mirror configuration for this
//! node, printed or written.

use std::path::{Path, PathBuf};

use crate::{Config, upstream};

/// One file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    /// Where it goes.
    pub path: PathBuf,
    /// Its full contents.
    pub contents: String,
}

/// The mirror URL runtimes on this node use: the listen address, with a wildcard IP
/// replaced by loopback.
pub fn mirror_url(config: &Config) -> String {
    let addr = config.listen;
    let port = addr.port();
    if addr.ip().is_unspecified() {
        format!("http://127.0.0.1:{port}")
    } else if addr.is_ipv6() {
        format!("http://[{}]:{port}", addr.ip())
    } else {
        format!("http://{}:{port}", addr.ip())
    }
}

/// Registries named in the config plus `docker.io`, in a stable order.
fn registries(config: &Config) -> Vec<String> {
    let mut hosts: Vec<String> = vec!["docker.io".into()];
    for r in &config.registries {
        if !hosts.contains(&r.host) {
            hosts.push(r.host.clone());
        }
    }
    hosts
}

/// The name of containerd's catch-all hosts directory, accepted in `only`.
pub const CONTAINERD_DEFAULT: &str = "_default";

/// The registries `init` configures: `only` without repeats when given, else (`_default`
/// when `with_default`,) `docker.io` and every configured registry.
fn selection(config: &Config, only: &[String], with_default: bool) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    if only.is_empty() {
        if with_default {
            hosts.push(CONTAINERD_DEFAULT.to_owned());
        }
        hosts.extend(registries(config));
        return hosts;
    }
    for h in only {
        if !hosts.contains(h) {
            hosts.push(h.clone());
        }
    }
    hosts
}

/// containerd `hosts.toml` files: by default `_default` for every registry plus one per
/// configured registry and `docker.io` (so their `server` is right); with `only`, exactly
/// the registries named there (`_default` for the catch-all).
pub fn containerd(
    config: &Config,
    mirror: &str,
    hosts_dir: &Path,
    only: &[String],
) -> Vec<ConfigFile> {
    let host_block = format!("[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n");
    let mut files = Vec::new();
    for host in selection(config, only, true) {
        if host == CONTAINERD_DEFAULT {
            files.push(ConfigFile {
                path: hosts_dir.join(CONTAINERD_DEFAULT).join("hosts.toml"),
                contents: format!(
                    "# Written by `dfdaemon init containerd`: every registry is pulled through the \
                     Damselfly mirror,\n# then directly when the mirror cannot help.\n{host_block}"
                ),
            });
            continue;
        }
        let rc = config.registry(&host);
        let server = upstream::base_url(
            &host,
            rc.and_then(|r| r.endpoint.as_deref()),
            rc.is_some_and(|r| r.plain_http),
        );
        files.push(ConfigFile {
            path: hosts_dir.join(&host).join("hosts.toml"),
            contents: format!(
                "# Written by `dfdaemon init containerd`.\nserver = \"{server}\"\n\n{host_block}"
            ),
        });
    }
    files
}

/// Checks the registries named for `init` (`--registry`): each a registry host, or
/// `_default` where the runtime has a catch-all (`allow_default`).
///
/// # Errors
/// The first unusable name, with the reason.
pub fn check_selection(only: &[String], allow_default: bool) -> Result<(), String> {
    for h in only {
        if h == CONTAINERD_DEFAULT {
            if !allow_default {
                return Err(format!(
                    "{CONTAINERD_DEFAULT} is containerd's catch-all; name each registry instead"
                ));
            }
            continue;
        }
        if h.is_empty() || h.contains('/') || h.contains(char::is_whitespace) || h.starts_with('.')
        {
            return Err(format!(
                "--registry {h:?}: expected a registry host such as docker.io or registry.local:5000"
            ));
        }
    }
    Ok(())
}

/// Docker's `daemon.json` with the mirror first in `registry-mirrors`, keeping every other
/// setting of `existing` (Docker only mirrors Docker Hub).
///
/// # Errors
/// `existing` is not a JSON object.
pub fn docker(mirror: &str, existing: Option<&str>, path: &Path) -> Result<ConfigFile, String> {
    let mut doc: serde_json::Value = match existing.map(str::trim).filter(|s| !s.is_empty()) {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?,
        None => serde_json::json!({}),
    };
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| format!("{}: not a JSON object", path.display()))?;
    let mut mirrors: Vec<serde_json::Value> = obj
        .get("registry-mirrors")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    mirrors.retain(|m| m.as_str() != Some(mirror));
    mirrors.insert(0, serde_json::Value::from(mirror));
    obj.insert("registry-mirrors".into(), serde_json::Value::from(mirrors));
    let contents = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())? + "\n";
    Ok(ConfigFile {
        path: path.to_path_buf(),
        contents,
    })
}

/// A `registries.conf` drop-in: each registry (`docker.io` and the configured ones, or
/// exactly `only` when given) gets the mirror, with the registry as the first path element
/// of the mirror's `location` ([`upstream::prefix`]: `reg.local:5000` is
/// `127.0.0.1:65001/reg.local_5000`, since containers/image allows no `:` there). The registry
/// itself stays the `location`, tried when the mirror fails; it is `insecure` (plain HTTP)
/// where dfdaemon itself uses plain HTTP for it.
///
/// # Errors
/// A registry no path prefix can carry (an IPv6 address, capital letters, ...), with the
/// reason.
pub fn podman(
    config: &Config,
    mirror: &str,
    path: &Path,
    only: &[String],
) -> Result<ConfigFile, upstream::PrefixError> {
    let mirror_host = mirror
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let mut out = String::from(
        "# Written by `dfdaemon init podman`: pulls go through the Damselfly mirror first.\n\
         # The mirror path names the registry, a port after a `_` (reg.local:5000 -> reg.local_5000).\n",
    );
    for host in selection(config, only, false) {
        let prefix = upstream::prefix::encode(&host)?;
        let location = if host == "docker.io" {
            "registry-1.docker.io".to_owned()
        } else {
            host.clone()
        };
        let insecure =
            config.registry(&host).is_some_and(|r| r.plain_http) || upstream::is_loopback(&host);
        out.push_str(&format!(
            "\n[[registry]]\nprefix = \"{host}\"\nlocation = \"{location}\"\n{}\
             [[registry.mirror]]\nlocation = \"{mirror_host}/{prefix}\"\ninsecure = true\n",
            if insecure { "insecure = true\n" } else { "" }
        ));
    }
    Ok(ConfigFile {
        path: path.to_path_buf(),
        contents: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegistryConfig;

    fn config() -> Config {
        Config {
            registries: vec![RegistryConfig {
                host: "reg.local:5000".into(),
                plain_http: true,
                ..RegistryConfig::default()
            }],
            ..Config::default()
        }
    }

    /// Runtimes reach the node's mirror on loopback whatever wildcard it listens on: the
    /// default `[::]` (dual stack) must give `127.0.0.1`, never `[::]`.
    #[test]
    fn the_mirror_url_maps_either_wildcard_to_ipv4_loopback() {
        let at = |listen: &str| {
            mirror_url(&Config {
                listen: listen.parse().unwrap(),
                ..Config::default()
            })
        };
        assert_eq!(mirror_url(&Config::default()), "http://127.0.0.1:65001");
        assert_eq!(at("[::]:65001"), "http://127.0.0.1:65001");
        assert_eq!(at("0.0.0.0:7000"), "http://127.0.0.1:7000");
        assert_eq!(at("[::1]:7000"), "http://[::1]:7000");
        assert_eq!(at("10.0.0.5:7000"), "http://10.0.0.5:7000");
    }

    #[test]
    fn containerd_gets_a_default_and_one_file_per_registry() {
        let c = config();
        let files = containerd(
            &c,
            &mirror_url(&c),
            Path::new("/etc/containerd/certs.d"),
            &[],
        );
        let paths: Vec<_> = files.iter().map(|f| f.path.display().to_string()).collect();
        assert_eq!(
            paths,
            [
                "/etc/containerd/certs.d/_default/hosts.toml",
                "/etc/containerd/certs.d/docker.io/hosts.toml",
                "/etc/containerd/certs.d/reg.local:5000/hosts.toml",
            ]
        );
        for f in &files {
            let parsed: toml::Table = toml::from_str(&f.contents).unwrap();
            let host = parsed["host"]["http://127.0.0.1:65001"].as_table().unwrap();
            assert_eq!(host["capabilities"].as_array().unwrap().len(), 2);
        }
        let reg: toml::Table = toml::from_str(&files[2].contents).unwrap();
        assert_eq!(reg["server"].as_str(), Some("http://reg.local:5000"));
        let hub: toml::Table = toml::from_str(&files[1].contents).unwrap();
        assert_eq!(hub["server"].as_str(), Some("https://registry-1.docker.io"));
    }

    #[test]
    fn docker_keeps_other_settings_and_does_not_duplicate() {
        let p = Path::new("/etc/docker/daemon.json");
        let existing = r#"{"log-driver":"journald","registry-mirrors":["http://other"]}"#;
        let once = docker("http://127.0.0.1:65001", Some(existing), p).unwrap();
        let twice = docker("http://127.0.0.1:65001", Some(&once.contents), p).unwrap();
        assert_eq!(once, twice);
        let v: serde_json::Value = serde_json::from_str(&twice.contents).unwrap();
        assert_eq!(v["log-driver"], "journald");
        assert_eq!(
            v["registry-mirrors"],
            serde_json::json!(["http://127.0.0.1:65001", "http://other"])
        );
        assert!(docker("http://m", Some("[1]"), p).is_err());
        assert!(docker("http://m", Some("{oops"), p).is_err());
    }

    #[test]
    fn podman_uses_the_path_prefix_form() {
        let c = config();
        let f = podman(&c, &mirror_url(&c), Path::new("/x.conf"), &[]).unwrap();
        let parsed: toml::Table = toml::from_str(&f.contents).unwrap();
        let regs = parsed["registry"].as_array().unwrap();
        assert_eq!(regs.len(), 2);
        // Without a port: the host itself, as before.
        assert_eq!(regs[0]["prefix"].as_str(), Some("docker.io"));
        assert_eq!(regs[0]["location"].as_str(), Some("registry-1.docker.io"));
        assert_eq!(
            regs[0]["mirror"][0]["location"].as_str(),
            Some("127.0.0.1:65001/docker.io")
        );
        assert_eq!(regs[0].get("insecure"), None);
        // With a port: `_` instead of `:`, which containers/image refuses in a path.
        assert_eq!(regs[1]["prefix"].as_str(), Some("reg.local:5000"));
        assert_eq!(regs[1]["location"].as_str(), Some("reg.local:5000"));
        assert_eq!(
            regs[1]["mirror"][0]["location"].as_str(),
            Some("127.0.0.1:65001/reg.local_5000")
        );
        assert_eq!(regs[1]["mirror"][0]["insecure"].as_bool(), Some(true));
        assert_eq!(regs[1]["insecure"].as_bool(), Some(true));
        // Every mirror location routes back to its registry.
        for reg in regs {
            let location = reg["mirror"][0]["location"].as_str().unwrap();
            let (_, element) = location.split_once('/').unwrap();
            let route =
                upstream::route(&format!("/v2/{element}/a/manifests/1"), None, None).unwrap();
            assert_eq!(route.registry.as_deref(), reg["prefix"].as_str());
        }
    }

    #[test]
    fn podman_names_the_registry_it_cannot_write() {
        let c = config();
        let only = |h: &str| vec![h.to_owned()];
        let p = Path::new("/x.conf");
        let f = podman(&c, "http://127.0.0.1:65001/", p, &only("127.0.0.1:5000")).unwrap();
        assert!(
            f.contents
                .contains("location = \"127.0.0.1:65001/127.0.0.1_5000\"\ninsecure = true"),
            "{}",
            f.contents
        );
        // A loopback registry is plain HTTP for dfdaemon, so for the direct fallback too.
        assert!(
            f.contents
                .contains("location = \"127.0.0.1:5000\"\ninsecure = true")
        );
        for (bad, why) in [
            ("[::1]:5000", "IPv6"),
            ("Reg.Local:5000", "lowercase"),
            ("myregistry", "Docker Hub namespace"),
        ] {
            let err = podman(&c, "http://127.0.0.1:65001", p, &only(bad)).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn only_the_selected_registries_are_configured() {
        let c = config();
        let only =
            |hosts: &[&str]| -> Vec<String> { hosts.iter().map(|h| (*h).to_owned()).collect() };
        let dir = Path::new("/hosts");
        let files = containerd(
            &c,
            "http://127.0.0.1:65001",
            dir,
            &only(&["reg.local:5000", "ghcr.io", "ghcr.io"]),
        );
        let paths: Vec<_> = files.iter().map(|f| f.path.display().to_string()).collect();
        assert_eq!(
            paths,
            [
                "/hosts/reg.local:5000/hosts.toml",
                "/hosts/ghcr.io/hosts.toml"
            ]
        );
        // A configured registry keeps its settings; another gets its https:// server.
        let reg: toml::Table = toml::from_str(&files[0].contents).unwrap();
        assert_eq!(reg["server"].as_str(), Some("http://reg.local:5000"));
        let ghcr: toml::Table = toml::from_str(&files[1].contents).unwrap();
        assert_eq!(ghcr["server"].as_str(), Some("https://ghcr.io"));

        let files = containerd(&c, "http://127.0.0.1:65001", dir, &only(&["_default"]));
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, dir.join("_default/hosts.toml"));
        let catch_all: toml::Table = toml::from_str(&files[0].contents).unwrap();
        assert!(catch_all.get("server").is_none());

        let f = podman(
            &c,
            "http://127.0.0.1:65001",
            Path::new("/x.conf"),
            &only(&["quay.io"]),
        );
        let parsed: toml::Table = toml::from_str(&f.unwrap().contents).unwrap();
        let regs = parsed["registry"].as_array().unwrap();
        assert_eq!(regs.len(), 1);
        assert_eq!(regs[0]["prefix"].as_str(), Some("quay.io"));

        assert!(check_selection(&only(&["_default", "docker.io", "reg:5000"]), true).is_ok());
        assert!(check_selection(&only(&["_default"]), false).is_err());
        for bad in ["", "a/b", "../etc", "two words"] {
            assert!(check_selection(&only(&[bad]), true).is_err(), "{bad:?}");
        }
    }
}
