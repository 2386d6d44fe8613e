//! [`NydusRemote`]: nydus-fs images provided from one lazy mount per image.
//!
//! ```text
//! Prepare(extract-…, parent, {snapshot.ref = chain id, cri.image-ref, cri.manifest-digest,
//!                             cri.layer-digest, …})
//!   └─ labels::CriLayer::from_labels ── no CRI labels (ctr, containers) ─▶ None (unpack)
//!   └─ kind of manifest (cached per digest; else GET <registry>/v2/<repo>/manifests/<digest>,
//!      verified, manifest::classify) ── ordinary, or unknown (registry error) ─▶ None
//!   └─ nydus-fs: layer in the manifest? ── no ─▶ error (the Prepare fails)
//!      └─ image not mounted yet: probe dfdaemon (TCP connect), then
//!         `nydus-fs mount docker://<repo>@<manifest> <root>/mnt/<hex> [--via dfdaemon]`
//!         (mount::LazyMount; waits until the kernel lists it)
//!      └─ Some(RemoteLayer { lower: <root>/mnt/<hex> }): the snapshotter commits the chain id
//!         and answers AlreadyExists, so containerd neither downloads nor unpacks the layer
//! Remove of such a layer ─▶ release: forget it; the image's last layer gone ─▶ SIGTERM the
//!   mount process, which unmounts
//! ```
//!
//! Every layer of a nydus-fs image is provided by the same mount (it holds the merged tree of
//! the whole image), so a container's overlay gets the mount as its one lower directory.
//! Ordinary images, and anything pulled without CRI's labels, are unpacked by containerd as
//! before. Provides are serialised (one lock around deciding and mounting): the first layer of
//! an image mounts it, the following ones find it mounted.
//!
//! A restart of the snapshotter leaves the mounts serving (the `nydus-fs mount` processes are
//! separate; running containers keep their trees). Each mount has a state file beside it,
//! `<root>/mnt/<hex>.mount` (its process id and image). At start ([`Remote::recover`]), for
//! every state file: a mount still served by its process and used by recorded layers is
//! adopted (the records' layers become its targets again, and the last one's removal stops
//! it); a mount whose process is gone but whose layers are recorded is mounted again (after
//! a reboot, say); one no record uses is stopped and its files removed.
//!
//! Not yet: registry credentials come only from the auth file (containerd 1.6 passes none in
//! labels).

pub mod labels;
pub mod manifest;
pub mod mount;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use containerd_snapshots::tonic;
use damselfly_common::Digest;
use damselfly_common::disk::write_replacing;
use damselfly_oci::registry::{
    MT_DOCKER_MANIFEST, MT_OCI_MANIFEST, Reference, RegistryClient, RegistryError, RegistryOptions,
    auth_file_credentials,
};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use self::labels::CriLayer;
use self::manifest::{ImageKind, ManifestError};
use self::mount::{LazyMount, MountError, MountSpec};
use crate::config::{NydusConfig, dfdaemon_authority};
use crate::remote::{LayerRequest, Remote, RemoteLayer};
use crate::store::{Record, Source};

/// Manifests whose kind is remembered; past this the memory is cleared (a re-fetch is cheap).
const MAX_KNOWN_MANIFESTS: usize = 4096;

/// Why a nydus-fs layer cannot be provided.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The layer is not one of the layers of the manifest its labels name.
    #[error("layer {layer} is not a layer of nydus-fs image manifest {manifest}")]
    NotInManifest {
        /// The layer digest (`cri.layer-digest`).
        layer: Digest,
        /// The manifest digest (`cri.manifest-digest`).
        manifest: Digest,
    },
    /// The mount could not be made.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// The mount directory could not be prepared.
    #[error("cannot create the mount point {path}: {source}")]
    MountPoint {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why an image's kind could not be found out (the layer is then unpacked as usual).
#[derive(Debug, thiserror::Error)]
enum KindError {
    #[error("fetching manifest {image}: {source}")]
    Registry {
        image: String,
        #[source]
        source: RegistryError,
    },
    #[error("manifest {image}: {source}")]
    Manifest {
        image: String,
        #[source]
        source: ManifestError,
    },
}

/// Provides the layers of nydus-fs images pulled through CRI (see the module doc).
pub struct NydusRemote {
    config: NydusConfig,
    mounts_dir: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for NydusRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NydusRemote")
            .field("config", &self.config)
            .field("mounts_dir", &self.mounts_dir)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// Kinds of the manifests seen (by digest: a digest's content never changes).
    kinds: HashMap<Digest, ImageKind>,
    /// Mounted images by manifest digest.
    images: HashMap<Digest, Image>,
}

struct Image {
    mount: LazyMount,
    /// The committed layers (chain ids) provided from this mount and not yet removed.
    targets: BTreeSet<String>,
}

impl NydusRemote {
    /// A provider mounting images under `mounts_dir` (one directory per manifest digest; it
    /// must be free of `:` and `,`, as the snapshotter's root is).
    pub fn new(config: NydusConfig, mounts_dir: PathBuf) -> Self {
        Self {
            config,
            mounts_dir,
            state: Mutex::new(State::default()),
        }
    }

    fn plain_http(&self, registry: &str) -> bool {
        self.config.plain_http.iter().any(|host| host == registry)
    }

    /// The image's kind from its manifest, fetched straight from the registry.
    async fn fetch_kind(&self, layer: &CriLayer) -> Result<ImageKind, KindError> {
        let image = layer.image.to_string();
        let registry_error = |source| KindError::Registry {
            image: image.clone(),
            source,
        };
        let (username, password) = match auth_file_credentials(&layer.image.registry) {
            Ok(Some((user, pass))) => (Some(user), Some(pass)),
            Ok(None) => (None, None),
            Err(source) => return Err(registry_error(source)),
        };
        let client = RegistryClient::new(RegistryOptions {
            plain_http: self.plain_http(&layer.image.registry),
            username,
            password,
            ..RegistryOptions::default()
        })
        .map_err(registry_error)?;
        let fetched = client
            .manifest(&layer.image, &[MT_OCI_MANIFEST, MT_DOCKER_MANIFEST])
            .await
            .map_err(registry_error)?;
        manifest::classify(&fetched.bytes).map_err(|source| KindError::Manifest {
            image: image.clone(),
            source,
        })
    }

    /// The dfdaemon to read through, if configured and accepting connections now.
    async fn via(&self) -> Option<&str> {
        let url = self.config.dfdaemon.as_str();
        let address = dfdaemon_authority(url)?;
        let connect = tokio::net::TcpStream::connect(address.as_str());
        match tokio::time::timeout(self.config.probe_timeout, connect).await {
            Ok(Ok(_)) => Some(url),
            Ok(Err(error)) => {
                warn!(dfdaemon = url, %error, "dfdaemon unreachable; mounting straight from the registry");
                None
            }
            Err(_) => {
                warn!(dfdaemon = url, timeout = ?self.config.probe_timeout, "dfdaemon did not answer; mounting straight from the registry");
                None
            }
        }
    }

    async fn mount(&self, layer: &CriLayer) -> Result<LazyMount, Error> {
        self.mount_image(&layer.image, &layer.manifest).await
    }

    /// The state file of the mount of manifest `hex`.
    fn state_file(&self, hex: &str) -> PathBuf {
        self.mounts_dir.join(format!("{hex}.mount"))
    }

    async fn mount_image(&self, image: &Reference, manifest: &Digest) -> Result<LazyMount, Error> {
        let hex = manifest.hex();
        let mountpoint = self.mounts_dir.join(&hex);
        if mount::is_mounted(&mountpoint).await {
            // Left by an earlier run of the snapshotter (whose process may still serve it, or
            // be dead): detach it and mount afresh, so this process owns the mount.
            warn!(mountpoint = %mountpoint.display(), "detaching a mount left by an earlier run");
            let _ = tokio::process::Command::new("umount")
                .arg("-l")
                .arg(&mountpoint)
                .status()
                .await;
        }
        tokio::fs::create_dir_all(&mountpoint)
            .await
            .map_err(|source| Error::MountPoint {
                path: mountpoint.clone(),
                source,
            })?;
        let log = self.mounts_dir.join(format!("{hex}.log"));
        let via = self.via().await;
        let spec = MountSpec {
            binary: &self.config.binary,
            image,
            mountpoint: &mountpoint,
            log: &log,
            cache_dir: &self.config.cache_dir,
            via,
            plain_http: self.plain_http(&image.registry),
            timeout: self.config.mount_timeout,
        };
        let started = tokio::time::Instant::now();
        let mount = LazyMount::start(&spec).await?;
        // For a restarted snapshotter to adopt (or remount) it.
        let state = format!("pid={}\nimage={image}\n", mount.pid().unwrap_or(0));
        if let Err(error) = write_replacing(&self.state_file(&hex), state.as_bytes()) {
            warn!(mountpoint = %mountpoint.display(), %error, "cannot record the mount; a restart of the snapshotter will not adopt it");
        }
        info!(
            image = %image,
            mountpoint = %mountpoint.display(),
            via = via.unwrap_or("-"),
            elapsed = ?started.elapsed(),
            "lazy image mounted"
        );
        Ok(mount)
    }

    /// The layer's provider decision and, for a nydus-fs layer, its mount's directory.
    async fn provide_layer(
        &self,
        request: &LayerRequest<'_>,
        layer: &CriLayer,
    ) -> Result<Option<PathBuf>, Error> {
        let mut state = self.state.lock().await;
        let kind = match state.kinds.get(&layer.manifest) {
            Some(kind) => kind.clone(),
            None => match self.fetch_kind(layer).await {
                Ok(kind) => {
                    if state.kinds.len() >= MAX_KNOWN_MANIFESTS {
                        state.kinds.clear();
                    }
                    state.kinds.insert(layer.manifest, kind.clone());
                    kind
                }
                Err(error) => {
                    warn!(target = request.target, %error, "cannot tell whether the image is a nydus-fs image; containerd unpacks it");
                    return Ok(None);
                }
            },
        };
        let ImageKind::Nydus { layers } = kind else {
            debug!(target = request.target, image = %layer.image, "ordinary image");
            return Ok(None);
        };
        if !layers.contains(&layer.layer) {
            return Err(Error::NotInManifest {
                layer: layer.layer,
                manifest: layer.manifest,
            });
        }
        let image = match state.images.entry(layer.manifest) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => entry.insert(Image {
                mount: self.mount(layer).await?,
                targets: BTreeSet::new(),
            }),
        };
        image.targets.insert(request.target.to_owned());
        Ok(Some(image.mount.mountpoint().to_owned()))
    }
}

#[tonic::async_trait]
impl Remote for NydusRemote {
    async fn provide(
        &self,
        request: LayerRequest<'_>,
    ) -> Result<Option<RemoteLayer>, crate::Error> {
        if !self.config.enabled {
            return Ok(None);
        }
        let layer = match CriLayer::from_labels(request.labels) {
            Ok(Some(layer)) => layer,
            Ok(None) => return Ok(None),
            Err(error) => {
                warn!(target = request.target, %error, "unreadable CRI labels; containerd unpacks the layer");
                return Ok(None);
            }
        };
        match self.provide_layer(&request, &layer).await {
            Ok(lower) => Ok(lower.map(|lower| RemoteLayer { lower })),
            Err(error) => Err(crate::Error::Remote {
                target: request.target.to_owned(),
                source: Box::new(error),
            }),
        }
    }

    async fn recover(&self, records: &[Record]) {
        if !self.config.enabled {
            return;
        }
        // The layers each mount serves, by the mount's directory name (the manifest's hex).
        let mut users: HashMap<String, BTreeSet<String>> = HashMap::new();
        for record in records {
            if let Source::Remote { lower } = &record.source
                && lower.parent() == Some(self.mounts_dir.as_path())
                && let Some(hex) = lower.file_name().and_then(|n| n.to_str())
            {
                users
                    .entry(hex.to_owned())
                    .or_default()
                    .insert(record.key.clone());
            }
        }
        let Ok(mut entries) = tokio::fs::read_dir(&self.mounts_dir).await else {
            return;
        };
        let mut recorded = BTreeSet::new();
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name();
            if let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".mount")) {
                recorded.insert(hex.to_owned());
            }
        }
        for hex in &recorded {
            let targets = users.remove(hex).unwrap_or_default();
            self.recover_mount(hex, targets).await;
        }
        for (hex, keys) in users {
            warn!(mount = %hex, layers = keys.len(), "recorded lazy layers whose mount has no record (made by an older snapshotter); a new pull of the image mounts it again");
        }
    }

    async fn release(&self, record: &Record) -> Result<(), crate::Error> {
        let Source::Remote { lower } = &record.source else {
            return Ok(());
        };
        let mut state = self.state.lock().await;
        let Some(manifest) = owner(&state.images, lower) else {
            debug!(key = %record.key, lower = %lower.display(), "remote layer not mounted by this process");
            return Ok(());
        };
        let Some(image) = state.images.get_mut(&manifest) else {
            return Ok(());
        };
        image.targets.remove(&record.key);
        if !image.targets.is_empty() {
            return Ok(());
        }
        let Some(image) = state.images.remove(&manifest) else {
            return Ok(());
        };
        let mountpoint = image.mount.mountpoint().to_owned();
        let result = image.mount.stop().await;
        // The directory is empty once unmounted; a failure leaves it for the next mount.
        let _ = tokio::fs::remove_dir(&mountpoint).await;
        let _ = tokio::fs::remove_file(self.state_file(&manifest.hex())).await;
        match result {
            Ok(()) => {
                info!(manifest = %manifest, mountpoint = %mountpoint.display(), "last layer removed; lazy image unmounted");
                Ok(())
            }
            Err(error) => Err(crate::Error::Remote {
                target: record.key.clone(),
                source: Box::new(Error::Mount(error)),
            }),
        }
    }
}

impl NydusRemote {
    /// [`Remote::recover`] for one state file: the mount of manifest `hex`, used by the
    /// recorded layers `targets` (keys).
    async fn recover_mount(&self, hex: &str, targets: BTreeSet<String>) {
        let mountpoint = self.mounts_dir.join(hex);
        let state_file = self.state_file(hex);
        let log = self.mounts_dir.join(format!("{hex}.log"));
        let text = tokio::fs::read_to_string(&state_file)
            .await
            .unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_owned)
        };
        let pid: i32 = field("pid").and_then(|p| p.parse().ok()).unwrap_or(0);
        let image: Option<Reference> = field("image").and_then(|i| i.parse().ok());
        let manifest: Option<Digest> = format!("sha256:{hex}").parse().ok();
        let adopted = LazyMount::adopt(pid, &mountpoint, &log).await;
        let (Some(image), Some(manifest)) = (image, manifest) else {
            warn!(state = %state_file.display(), "unreadable mount record; leaving the mount alone");
            return;
        };
        if targets.is_empty() {
            // No layer needs it any more (removed while the snapshotter was down).
            match adopted {
                Some(mount) => {
                    if let Err(error) = mount.stop().await {
                        warn!(%error, "cannot stop an unused lazy mount left by an earlier run");
                    }
                }
                None if mount::is_mounted(&mountpoint).await => {
                    let _ = tokio::process::Command::new("umount")
                        .arg("-l")
                        .arg(&mountpoint)
                        .status()
                        .await;
                }
                None => {}
            }
            let _ = tokio::fs::remove_dir(&mountpoint).await;
            let _ = tokio::fs::remove_file(&state_file).await;
            info!(image = %image, "lazy image unmounted: no snapshot uses it any more");
            return;
        }
        let mount = match adopted {
            Some(mount) => {
                info!(image = %image, pid, layers = targets.len(), mountpoint = %mountpoint.display(), "lazy image adopted from an earlier run");
                mount
            }
            None => match self.mount_image(&image, &manifest).await {
                Ok(mount) => {
                    info!(image = %image, layers = targets.len(), "lazy image mounted again after a restart");
                    mount
                }
                Err(error) => {
                    warn!(image = %image, %error, "cannot mount again a lazy image recorded layers use; the next pull of it retries");
                    return;
                }
            },
        };
        self.state
            .lock()
            .await
            .images
            .insert(manifest, Image { mount, targets });
    }
}

/// The manifest whose mount is `lower`.
fn owner(images: &HashMap<Digest, Image>, lower: &Path) -> Option<Digest> {
    images
        .iter()
        .find(|(_, image)| image.mount.mountpoint() == lower)
        .map(|(manifest, _)| *manifest)
}
