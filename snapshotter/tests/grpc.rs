//! The snapshotter served on a real unix socket and driven through containerd's gRPC API, as
//! containerd's proxy plugin drives it (no mounts are performed, so no root is needed).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::api::snapshots::v1::{
    CleanupRequest, CommitSnapshotRequest, Info, Kind, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, UpdateSnapshotRequest, UsageRequest,
    ViewSnapshotRequest,
};
use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::{Code, async_trait, transport::Channel};
use damselfly_snapshotter::remote::{LayerRequest, TARGET_SNAPSHOT_LABEL};
use damselfly_snapshotter::{Error, NoRemote, Record, Remote, RemoteLayer, Server, Snapshotter};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use common::{NAME, connect, walk};

struct Running {
    root: PathBuf,
    client: SnapshotsClient<Channel>,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn start(remote: Arc<dyn Remote>) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), remote).await
    }

    /// Serves the root and socket under `dir` (kept from an earlier run, to restart).
    async fn start_in(dir: tempfile::TempDir, remote: Arc<dyn Remote>) -> Self {
        let root = dir.path().join("root");
        let socket = dir.path().join("run/snapshotter.sock");
        let snapshotter = Arc::new(Snapshotter::open(root.clone(), remote).unwrap());
        let server = Server::bind(&socket, snapshotter).await.unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let server = tokio::spawn(async move { server.run(token).await.unwrap() });
        let client = connect(&socket).await.unwrap();
        Self {
            root,
            client,
            shutdown,
            server,
            _dir: dir,
        }
    }

    /// Stops serving (calls in flight finish) and hands back the directory of the state.
    async fn stop(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        self.server.await.unwrap();
        self._dir
    }

    async fn prepare(
        &mut self,
        key: &str,
        parent: &str,
        labels: &[(&str, &str)],
    ) -> Result<Vec<Mount>, Code> {
        let request = PrepareSnapshotRequest {
            snapshotter: NAME.into(),
            key: key.into(),
            parent: parent.into(),
            labels: map(labels),
        };
        match self.client.prepare(request).await {
            Ok(response) => Ok(response.into_inner().mounts),
            Err(status) => Err(status.code()),
        }
    }

    async fn view(&mut self, key: &str, parent: &str) -> Vec<Mount> {
        let request = ViewSnapshotRequest {
            snapshotter: NAME.into(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        };
        self.client.view(request).await.unwrap().into_inner().mounts
    }

    async fn mounts(&mut self, key: &str) -> Result<Vec<Mount>, Code> {
        let request = MountsRequest {
            snapshotter: NAME.into(),
            key: key.into(),
        };
        match self.client.mounts(request).await {
            Ok(response) => Ok(response.into_inner().mounts),
            Err(status) => Err(status.code()),
        }
    }

    async fn commit(&mut self, name: &str, key: &str) {
        let request = CommitSnapshotRequest {
            snapshotter: NAME.into(),
            name: name.into(),
            key: key.into(),
            labels: map(&[("committed", name)]),
        };
        self.client.commit(request).await.unwrap();
    }

    async fn stat(&mut self, key: &str) -> Result<Info, Code> {
        let request = StatSnapshotRequest {
            snapshotter: NAME.into(),
            key: key.into(),
        };
        match self.client.stat(request).await {
            Ok(response) => Ok(response.into_inner().info.unwrap()),
            Err(status) => Err(status.code()),
        }
    }

    async fn remove(&mut self, key: &str) -> Result<(), Code> {
        let request = RemoveSnapshotRequest {
            snapshotter: NAME.into(),
            key: key.into(),
        };
        self.client
            .remove(request)
            .await
            .map(drop)
            .map_err(|status| status.code())
    }

    async fn names(&mut self, filters: &[&str]) -> Result<Vec<String>, Code> {
        let infos = walk(&mut self.client, filters)
            .await
            .map_err(|status| status.code())?;
        let mut names: Vec<String> = infos.into_iter().map(|info| info.name).collect();
        names.sort();
        Ok(names)
    }
}

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn fs_dir(root: &Path, id: u64) -> String {
    root.join(format!("snapshots/{id}/fs"))
        .display()
        .to_string()
}

/// One layer unpacked as containerd does it: Prepare with the target label, write the files
/// into the bind mount's source, Commit.
async fn unpack(running: &mut Running, key: &str, name: &str, parent: &str, file: &str) {
    let mounts = running
        .prepare(key, parent, &[(TARGET_SNAPSHOT_LABEL, name)])
        .await
        .unwrap();
    let upper = match &mounts[..] {
        [bind] if bind.r#type == "bind" => PathBuf::from(&bind.source),
        [overlay] => PathBuf::from(
            overlay
                .options
                .iter()
                .find_map(|o| o.strip_prefix("upperdir="))
                .unwrap(),
        ),
        other => panic!("{other:?}"),
    };
    fs::write(upper.join(file), vec![7u8; 10_000]).unwrap();
    running.commit(name, key).await;
}

#[tokio::test]
async fn the_snapshot_lifecycle_over_grpc() {
    let mut sn = Running::start(Arc::new(NoRemote)).await;
    let root = sn.root.clone();

    // A first layer: a read-write bind mount of its own directory.
    let mounts = sn
        .prepare("extract-1", "", &[(TARGET_SNAPSHOT_LABEL, "l1")])
        .await
        .unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(
        (mounts[0].r#type.as_str(), mounts[0].source.as_str()),
        ("bind", fs_dir(&root, 1).as_str())
    );
    assert_eq!(mounts[0].options, ["rw", "rbind"]);
    fs::write(Path::new(&mounts[0].source).join("a"), vec![1u8; 10_000]).unwrap();
    sn.commit("l1", "extract-1").await;
    assert_eq!(sn.stat("extract-1").await, Err(Code::NotFound));
    let l1 = sn.stat("l1").await.unwrap();
    assert_eq!((l1.kind(), l1.parent.as_str()), (Kind::Committed, ""));
    assert_eq!(l1.labels, map(&[("committed", "l1")]));
    let usage = sn
        .client
        .usage(UsageRequest {
            snapshotter: NAME.into(),
            key: "l1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(usage.size >= 10_000 && usage.inodes == 2, "{usage:?}");

    unpack(&mut sn, "extract-2", "l2", "l1", "b").await;

    // A container on top: overlay, nearest parent first.
    let mounts = sn.prepare("ctr", "l2", &[]).await.unwrap();
    let [overlay] = &mounts[..] else { panic!() };
    assert_eq!(overlay.r#type, "overlay");
    let lowerdir = format!("lowerdir={}:{}", fs_dir(&root, 2), fs_dir(&root, 1));
    assert!(overlay.options.contains(&lowerdir), "{:?}", overlay.options);
    assert!(
        overlay
            .options
            .contains(&format!("upperdir={}", fs_dir(&root, 3)))
    );
    assert_eq!(sn.mounts("ctr").await.unwrap(), mounts);
    // A view of one layer binds it read-only.
    let view = sn.view("v", "l1").await;
    assert_eq!(view[0].source, fs_dir(&root, 1));
    assert_eq!(view[0].options, ["ro", "rbind"]);

    // containerd's error codes.
    assert_eq!(sn.mounts("l1").await, Err(Code::FailedPrecondition));
    assert_eq!(sn.prepare("ctr", "l2", &[]).await, Err(Code::AlreadyExists));
    assert_eq!(sn.prepare("x", "missing", &[]).await, Err(Code::NotFound));
    assert_eq!(
        sn.prepare("x", "ctr", &[]).await,
        Err(Code::InvalidArgument)
    );
    assert_eq!(sn.remove("l1").await, Err(Code::FailedPrecondition));
    assert_eq!(sn.remove("nope").await, Err(Code::NotFound));

    // Walk, with containerd's filter syntax.
    assert_eq!(sn.names(&[]).await.unwrap(), ["ctr", "l1", "l2", "v"]);
    assert_eq!(sn.names(&["kind==committed"]).await.unwrap(), ["l1", "l2"]);
    assert_eq!(
        sn.names(&["parent==l1", "name==ctr"]).await.unwrap(),
        ["ctr", "l2", "v"]
    );
    assert_eq!(sn.names(&["name~=c"]).await, Err(Code::InvalidArgument));

    // Update: labels only (no mask replaces them all).
    let info = Info {
        labels: map(&[("k", "v")]),
        ..sn.stat("ctr").await.unwrap()
    };
    let request = UpdateSnapshotRequest {
        snapshotter: NAME.into(),
        info: Some(info),
        update_mask: None,
    };
    let updated = sn.client.update(request).await.unwrap().into_inner();
    assert_eq!(updated.info.unwrap().labels, map(&[("k", "v")]));
    assert_eq!(sn.stat("ctr").await.unwrap().labels, map(&[("k", "v")]));

    // Remove children first, then parents: nothing is left, on disk either.
    for key in ["ctr", "v", "l2", "l1"] {
        sn.remove(key).await.unwrap();
    }
    assert!(sn.names(&[]).await.unwrap().is_empty());
    assert_eq!(fs::read_dir(root.join("meta")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(root.join("snapshots")).unwrap().count(), 0);

    // Cleanup removes directories no snapshot owns.
    fs::create_dir_all(root.join("snapshots/77/fs")).unwrap();
    sn.client
        .cleanup(CleanupRequest {
            snapshotter: NAME.into(),
        })
        .await
        .unwrap();
    assert_eq!(fs::read_dir(root.join("snapshots")).unwrap().count(), 0);
    sn.stop().await;
}

#[tokio::test]
async fn snapshots_survive_a_restart_and_stale_sockets_are_replaced() {
    let mut sn = Running::start(Arc::new(NoRemote)).await;
    unpack(&mut sn, "extract-1", "l1", "", "a").await;
    sn.prepare("ctr", "l1", &[]).await.unwrap();
    let dir = sn.stop().await;
    let socket = dir.path().join("run/snapshotter.sock");
    assert!(!socket.exists(), "the socket is removed at shutdown");

    // A socket file left by a killed snapshotter (bound, never served) is replaced.
    let stale = Arc::new(Snapshotter::open(dir.path().join("other"), Arc::new(NoRemote)).unwrap());
    drop(Server::bind(&socket, stale).await.unwrap());
    assert!(socket.exists());

    let mut sn = Running::start_in(dir, Arc::new(NoRemote)).await;
    assert_eq!(sn.names(&[]).await.unwrap(), ["ctr", "l1"]);
    assert_eq!(sn.stat("l1").await.unwrap().kind(), Kind::Committed);
    assert_eq!(sn.stat("ctr").await.unwrap().kind(), Kind::Active);
    let mounts = sn.mounts("ctr").await.unwrap();
    let lowerdir = format!("lowerdir={}", fs_dir(&sn.root, 1));
    assert!(mounts[0].options.contains(&lowerdir), "{mounts:?}");

    // A second server on the live socket is refused.
    let other =
        Arc::new(Snapshotter::open(sn.root.with_file_name("second"), Arc::new(NoRemote)).unwrap());
    let live = sn.root.parent().unwrap().join("run/snapshotter.sock");
    assert!(matches!(
        Server::bind(&live, other).await,
        Err(damselfly_snapshotter::server::ServerError::InUse { .. })
    ));
    sn.stop().await;
}

/// Provides every layer whose Prepare carries `test/remote=yes`, at a fixed directory.
#[derive(Default)]
struct FakeRemote {
    lower: PathBuf,
    released: Mutex<Vec<String>>,
}

#[async_trait]
impl Remote for FakeRemote {
    async fn provide(&self, request: LayerRequest<'_>) -> Result<Option<RemoteLayer>, Error> {
        let remote = request
            .labels
            .get("test/remote")
            .is_some_and(|v| v == "yes");
        Ok(remote.then(|| RemoteLayer {
            lower: self.lower.clone(),
        }))
    }

    async fn release(&self, record: &Record) -> Result<(), Error> {
        self.released.lock().push(record.key.clone());
        Ok(())
    }
}

#[tokio::test]
async fn a_layer_provided_remotely_is_committed_and_answered_already_exists() {
    let remote = Arc::new(FakeRemote {
        lower: PathBuf::from("/run/lazy/image"),
        ..FakeRemote::default()
    });
    let mut sn = Running::start(remote.clone()).await;

    let labels = [(TARGET_SNAPSHOT_LABEL, "lazy"), ("test/remote", "yes")];
    assert_eq!(
        sn.prepare("extract-1", "", &labels).await,
        Err(Code::AlreadyExists)
    );
    assert_eq!(sn.stat("extract-1").await, Err(Code::NotFound));
    let lazy = sn.stat("lazy").await.unwrap();
    assert_eq!(lazy.kind(), Kind::Committed);
    assert_eq!(
        lazy.labels.get("test/remote").map(String::as_str),
        Some("yes")
    );
    // Asked again (a second pull): still already there.
    assert_eq!(
        sn.prepare("extract-2", "", &labels).await,
        Err(Code::AlreadyExists)
    );

    // An ordinary layer above it, then a container: the remote tree is the lowest lower dir.
    unpack(&mut sn, "extract-3", "top", "lazy", "t").await;
    let mounts = sn.prepare("ctr", "top", &[]).await.unwrap();
    let root = sn.root.clone();
    let lowerdir = format!("lowerdir={}:/run/lazy/image", fs_dir(&root, 2));
    assert!(
        mounts[0].options.contains(&lowerdir),
        "{:?}",
        mounts[0].options
    );

    for key in ["ctr", "top", "lazy"] {
        sn.remove(key).await.unwrap();
    }
    assert_eq!(*remote.released.lock(), ["lazy"]);
    sn.stop().await;
}
