//! The store on a real full disk: a small `tmpfs` (root only; skipped with the reason
//! otherwise). A task too large for the disk is refused at admission and, if it gets past
//! that, at allocation, leaving nothing behind; a metadata write that finds the disk full is
//! a `disk_full` error; and once space is freed the store (RocksDB included) works again.
#![allow(clippy::unwrap_used)]

use std::{
    path::Path,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use damselfly_store::{Error, Fault, SpaceLimit, Store, StoreConfig, TaskMeta, TaskState};

const MIB: u64 = 1 << 20;

/// A tmpfs of `mib` MiB, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(mib: u64) -> Result<Self, String> {
        use std::os::unix::fs::MetadataExt as _;
        if !std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
            return Err("mounting a tmpfs needs root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

fn meta(id: &str, len: u64, piece_size: u32) -> TaskMeta {
    TaskMeta {
        id: id.to_owned(),
        url: format!("https://registry.invalid/{id}"),
        content_length: len,
        piece_size,
        digest: None,
        public: true,
        state: TaskState::Running,
        created_unix: 1,
        last_access_unix: 1,
    }
}

fn content_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("content")).unwrap().count()
}

#[test]
fn a_full_disk_is_refused_cleanly_and_the_store_recovers_when_space_returns() {
    let fs = match Tmpfs::mount(32) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("skipping: no small filesystem to fill ({why})");
            return;
        }
    };
    let config = StoreConfig {
        min_free: 4 * MIB,
        ..StoreConfig::new(fs.path())
    };
    let store = Arc::new(Store::open(config).unwrap());

    // Admission: 64 MiB on a 32 MiB disk.
    let err = store.reserve(64 * MIB, &|_| false, &|_| {}).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NoSpace {
                limit: SpaceLimit::Disk { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.fault(), Some(Fault::DiskFull));

    // Past admission (a caller that did not ask): the allocation itself fails with ENOSPC
    // and leaves no file and no task.
    let err = store
        .create_task(meta("huge", 64 * MIB, 1 << 20))
        .unwrap_err();
    assert_eq!(err.fault(), Some(Fault::DiskFull), "{err:?}");
    assert!(store.task("huge").unwrap().is_none());
    assert_eq!(content_files(fs.path()), 0);

    // A task that fits, then the disk filled to the last byte behind the store's back.
    // 128 Ki pieces: their digests (~10 MiB of WAL) outgrow what RocksDB preallocated.
    let m = meta("small", 8 * MIB, 64);
    store.create_task(m.clone()).unwrap();
    let filler = fs.path().join("filler");
    fill(&filler);
    // Pieces land in the allocated file; their digests go to RocksDB, whose WAL and
    // memtable flushes need new blocks: some write fails, as a disk-full error.
    let piece = vec![7u8; 64];
    let mut failed = None;
    for i in 0..m.piece_count() {
        if let Err(e) = store.write_piece(&m.id, i, &piece, None) {
            failed = Some((i, e));
            break;
        }
    }
    let (at, err) = failed.expect("the full disk never failed a metadata write");
    assert_eq!(err.fault(), Some(Fault::DiskFull), "piece {at}: {err}");
    assert!(err.is_no_space());
    // The failed piece is not present: nothing unwritten is ever served.
    assert!(store.read_piece(&m.id, at).is_err());

    // Space comes back (GC, an operator): the store writes again, RocksDB having left its
    // background-error state on its own.
    eprintln!("piece {at} of {}: {err}", m.piece_count());
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while Instant::now() < deadline {
        match store.write_piece(&m.id, at, &piece, None) {
            Ok(_) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        last.is_none(),
        "still failing after space returned: {last:?}"
    );
    eprintln!("writing again {:?} after space returned", freed.elapsed());
    assert_eq!(store.read_piece(&m.id, at).unwrap(), piece);
    drop(store);
    // And it reopens consistent.
    let store = Store::open(StoreConfig::new(fs.path())).unwrap();
    assert!(
        store.task("small").unwrap().is_none(),
        "a running task is dropped on open"
    );
}

/// Writes `path` until the disk is full.
fn fill(path: &Path) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 1 << 16];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    // The last partial blocks.
    while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
    let _ = f.flush();
}
