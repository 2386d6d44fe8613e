//! A small real filesystem for disk-full tests: a `tmpfs` of a few MiB mounted on a temp dir,
//! so writes past its size fail with a real `ENOSPC` (and `statvfs` reports its real size).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// A mounted `tmpfs` of a fixed size; unmounted (lazily, so a process still inside does not
/// keep it) and removed on drop.
#[derive(Debug)]
pub struct SmallFs {
    dir: tempfile::TempDir,
    size_mib: u64,
}

impl SmallFs {
    /// Mounts a `tmpfs` of `size_mib` MiB on a new temp dir.
    ///
    /// # Errors
    /// Why it cannot be had (not root, `mount` failed), for the test to print as its reason
    /// to skip.
    pub fn mount(size_mib: u64) -> Result<Self, String> {
        use std::os::unix::fs::MetadataExt as _;
        if !std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
            return Err("mounting a tmpfs needs root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_mib}m,mode=0755"))
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self { dir, size_mib })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A subdirectory of the mount (created).
    ///
    /// # Errors
    /// It cannot be created.
    pub fn subdir(&self, name: &str) -> std::io::Result<PathBuf> {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }

    /// The size it was mounted with, in MiB.
    pub fn size_mib(&self) -> u64 {
        self.size_mib
    }

    /// Regular files under `dir` (recursively) and their sizes, for checking what a
    /// daemon left behind.
    pub fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let Ok(meta) = e.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(e.path());
                } else if meta.is_file() {
                    out.push((e.path(), meta.len()));
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
