//! Where everything lives under the snapshotter's root directory.

use std::path::{Path, PathBuf};

/// The directory layout under `--root`:
///
/// ```text
/// root/meta/<id>.json       one record per snapshot (store::Record)
/// root/snapshots/<id>/fs    the snapshot's files
/// root/snapshots/<id>/work  overlayfs' work directory (active snapshots only)
/// root/mnt/<hex>            lazy mounts of nydus-fs images, by manifest digest
/// ```
///
/// Snapshot ids are decimal numbers, so every path handed to containerd is free of `:` and
/// `,` (which would break an overlay `lowerdir=` option) as long as the root is;
/// [`Layout::new`] checks the root.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// A layout under `root` (an absolute path; nothing is created here).
    ///
    /// # Errors
    /// `root` is relative, not UTF-8, or contains `:` or `,` (overlay option separators).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, crate::Error> {
        let root = root.into();
        let valid =
            root.is_absolute() && root.to_str().is_some_and(|text| !text.contains([':', ',']));
        if !valid {
            return Err(crate::Error::InvalidRoot { root });
        }
        Ok(Self { root })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of the records.
    pub fn meta_dir(&self) -> PathBuf {
        self.root.join("meta")
    }

    /// The directory holding one directory per snapshot.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// The directory of the lazy mounts (one per nydus-fs image, named by manifest digest).
    pub fn mounts_dir(&self) -> PathBuf {
        self.root.join("mnt")
    }

    /// Snapshot `id`'s own directory.
    pub fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.snapshots_dir().join(id.to_string())
    }

    /// Snapshot `id`'s files: the overlay upper directory, or a bind mount's source.
    pub fn fs(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("fs")
    }

    /// Snapshot `id`'s overlayfs work directory.
    pub fn work(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("work")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_roots_that_break_overlay_options() {
        assert!(Layout::new("/var/lib/snap").is_ok());
        assert!(Layout::new("relative/dir").is_err());
        assert!(Layout::new("/var/lib/a:b").is_err());
        assert!(Layout::new("/var/lib/a,b").is_err());
        let layout = Layout::new("/r").unwrap();
        assert_eq!(layout.fs(7), Path::new("/r/snapshots/7/fs"));
        assert_eq!(layout.work(7), Path::new("/r/snapshots/7/work"));
    }
}
