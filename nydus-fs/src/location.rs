//! Where an image lives, as named on the command line: an OCI image layout directory or a
//! registry reference, and the flags that say how to talk to registries.
//!
//! An argument is a **registry reference** if it starts with `docker://`, or if it is not an
//! existing path, does not start with `/` or `.`, and its first component looks like a registry
//! host (contains `.` or `:` or is `localhost`, and is not an existing directory either):
//! `localhost:5000/app:v1`, `registry.example.com/team/app@sha256:…`. Anything else is a
//! **layout directory**; `oci:DIR` forces that reading.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context as _, Result, anyhow, bail};
use damselfly_oci::registry::{Reference, RegistryClient, RegistryOptions, auth_file_credentials};

/// An image location from the command line.
#[derive(Debug, Clone)]
pub(crate) enum Location {
    /// An OCI image layout directory.
    Layout(PathBuf),
    /// An image in a registry.
    Registry(Reference),
}

impl Location {
    /// Classifies a command-line argument (see the module documentation).
    pub(crate) fn parse(arg: &str) -> Result<Self> {
        if let Some(dir) = arg.strip_prefix("oci:") {
            return Ok(Self::Layout(PathBuf::from(dir)));
        }
        if let Some(reference) = arg.strip_prefix("docker://") {
            return Ok(Self::Registry(reference.parse()?));
        }
        let first = arg.split('/').next().unwrap_or_default();
        let registry_like = arg.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost")
            && !arg.starts_with(['/', '.'])
            && !Path::new(arg).exists()
            && !Path::new(first).exists();
        if !registry_like {
            return Ok(Self::Layout(PathBuf::from(arg)));
        }
        let reference = arg.parse::<Reference>().with_context(|| {
            format!(
                "{arg:?} looks like a registry reference; to name a directory instead, write \
                 oci:{arg} or ./{arg}"
            )
        })?;
        Ok(Self::Registry(reference))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Layout(p) => write!(f, "{}", p.display()),
            Self::Registry(r) => write!(f, "{r}"),
        }
    }
}

/// How to talk to registries (for every registry the command names).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct RegistryArgs {
    /// Talk plain http:// to registries instead of https://.
    #[arg(long)]
    pub(crate) plain_http: bool,
    /// Registry credentials `USER:PASSWORD`, sent only when a registry asks (Basic, or to its
    /// token endpoint). Default: the registry's entry in $REGISTRY_AUTH_FILE,
    /// $DOCKER_CONFIG/config.json or ~/.docker/config.json, else anonymous.
    #[arg(
        long,
        env = "DAMSELFLY_REGISTRY_CREDS",
        hide_env_values = true,
        value_name = "USER:PASSWORD"
    )]
    pub(crate) creds: Option<String>,
    /// Read manifests and blobs through this registry mirror (dfdaemon), e.g.
    /// http://127.0.0.1:65001. Pushes always go straight to the registry.
    #[arg(long, value_name = "URL")]
    pub(crate) via: Option<String>,
    /// Also trust the CA certificates in this PEM file.
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_file: Option<PathBuf>,
}

impl RegistryArgs {
    /// A client for `registry`; `reads` decides whether `--via` applies.
    pub(crate) fn client(&self, registry: &str, reads: bool) -> Result<RegistryClient> {
        let (username, password) = match &self.creds {
            Some(creds) => {
                let (user, pass) = creds.split_once(':').ok_or_else(|| {
                    anyhow!("--creds (or DAMSELFLY_REGISTRY_CREDS) must be USER:PASSWORD")
                })?;
                if user.is_empty() {
                    bail!("--creds (or DAMSELFLY_REGISTRY_CREDS) has an empty user name");
                }
                (Some(user.to_owned()), Some(pass.to_owned()))
            }
            None => match auth_file_credentials(registry)? {
                Some((u, p)) => (Some(u), Some(p)),
                None => (None, None),
            },
        };
        let opts = RegistryOptions {
            plain_http: self.plain_http,
            username,
            password,
            via: if reads { self.via.clone() } else { None },
            ca_file: self.ca_file.clone(),
            ..RegistryOptions::default()
        };
        Ok(RegistryClient::new(opts)?)
    }
}

/// The process's async runtime for registry I/O. The CLI's own code is synchronous and calls
/// into it with `block_on` (or through `SyncIoBridge`), so it needs worker threads of its own.
pub(crate) fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("nydus-fs-io")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(RUNTIME.get_or_init(|| rt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_classified() {
        let reg = |s: &str| matches!(Location::parse(s).unwrap(), Location::Registry(_));
        assert!(reg("localhost:5000/app:v1"));
        assert!(reg("registry.example.com/team/app"));
        assert!(reg("docker://localhost/app"));
        assert!(!reg("out"));
        assert!(!reg("./localhost:5000/app"));
        assert!(!reg("/tmp/x.y/z"));
        assert!(!reg("oci:localhost:5000/app"));
        assert!(!reg("dir/sub"));
        // An existing first component means a path (tests run in the crate directory).
        assert!(!reg("Cargo.toml/x"));
        assert!(reg("Cargo.tom/x"));
        let err = Location::parse("localhost:5000/UPPER").unwrap_err();
        assert!(format!("{err:#}").contains("oci:"), "{err:#}");
        assert!(Location::parse("docker://app").is_err());
    }

    #[test]
    fn creds_are_user_colon_password() {
        let args = RegistryArgs {
            creds: Some("alice:pa:ss".into()),
            ..RegistryArgs::default()
        };
        let client = args.client("localhost:5000", true).unwrap();
        assert_eq!(client.options().username.as_deref(), Some("alice"));
        assert_eq!(client.options().password.as_deref(), Some("pa:ss"));
        for bad in ["nocolon", ":pass"] {
            let args = RegistryArgs {
                creds: Some(bad.into()),
                ..RegistryArgs::default()
            };
            assert!(args.client("localhost:5000", true).is_err(), "{bad}");
        }
        let args = RegistryArgs {
            via: Some("http://127.0.0.1:65001".into()),
            creds: Some("a:b".into()),
            ..RegistryArgs::default()
        };
        assert!(args.client("h.io", true).unwrap().options().via.is_some());
        assert!(args.client("h.io", false).unwrap().options().via.is_none());
    }
}
