//! Disk use of one directory tree, counted as containerd's `fs.DiskUsage` does.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use crate::store::{Error, Usage};

/// The allocated bytes (`st_blocks` × 512) and the number of distinct inodes under `root`,
/// each inode counted once (hard links), symlinks not followed. Entries that vanish during the
/// walk (a running container deleting files) are skipped.
///
/// # Errors
/// `root` or a directory under it cannot be read.
pub fn disk_usage(root: &Path) -> Result<Usage, Error> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut pending = vec![root.to_owned()];
    while let Some(path) = pending.pop() {
        let metadata = match fs::symlink_metadata(&path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == io::ErrorKind::NotFound && path != root => continue,
            Err(error) => return Err(Error::io("stat", &path)(error)),
        };
        if seen.insert((metadata.dev(), metadata.ino())) {
            usage.size += metadata.blocks() * 512;
            usage.inodes += 1;
        }
        if !metadata.is_dir() {
            continue;
        }
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound && path != root => continue,
            Err(error) => return Err(Error::io("list", &path)(error)),
        };
        for entry in entries {
            pending.push(entry.map_err(Error::io("list", &path))?.path());
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_blocks_and_inodes_once_per_hard_link() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("fs");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("sub/a"), vec![1u8; 64 * 1024]).unwrap();
        fs::hard_link(root.join("sub/a"), root.join("b")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", root.join("link")).unwrap();
        let usage = disk_usage(&root).unwrap();
        // fs, sub, a (= b), link.
        assert_eq!(usage.inodes, 4);
        assert!(usage.size >= 64 * 1024, "{usage:?}");
        assert!(usage.size < 4 * 64 * 1024, "{usage:?}");
        assert!(disk_usage(&dir.path().join("missing")).is_err());
    }
}
