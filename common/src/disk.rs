//! Disk space: reserving a file's blocks up front, the free space of a filesystem, and
//! telling a full disk from other I/O failures.
//!
//! Content files used to be sparse (`set_len`): the space for a blob was taken one piece at a
//! time, so a full disk surfaced as a failed write in the middle of a transfer. [`allocate`]
//! takes all of it when the file is created instead (`fallocate(2)`), so a blob that does not
//! fit fails before its first byte is fetched, and a write into an allocated file does not
//! fail for want of space.
//!
//! `rustix` makes the two system calls (`fallocate`, `statvfs`) in safe Rust: the workspace
//! denies `unsafe`, which rules out calling `libc` directly, and rustix is already in the
//! build (through `tempfile`), so it adds no crate.

use std::{fs::File, io, path::Path};

use rustix::{fs::FallocateFlags, io::Errno};

/// Sizes `file` to `len` bytes with every block allocated on disk (`fallocate(2)`, mode 0):
/// afterwards writes inside those bytes do not fail with `ENOSPC`. On a filesystem without
/// `fallocate` (`EOPNOTSUPP`) the file is sized sparse, as `set_len` does.
///
/// # Errors
/// `ENOSPC`/`EDQUOT` when the filesystem cannot hold `len` bytes (nothing is allocated then),
/// or any other I/O error.
pub fn allocate(file: &File, len: u64) -> io::Result<()> {
    if len == 0 {
        return file.set_len(0);
    }
    match rustix::fs::fallocate(file, FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(e) if e == Errno::OPNOTSUPP || e == Errno::NOSYS => file.set_len(len),
        Err(e) => Err(e.into()),
    }
}

/// Bytes an unprivileged writer may still allocate on the filesystem holding `path`
/// (`statvfs`: available blocks × fragment size).
///
/// # Errors
/// `path` does not exist or cannot be queried.
pub fn available(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Total size in bytes of the filesystem holding `path`.
///
/// # Errors
/// `path` does not exist or cannot be queried.
pub fn total(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_blocks.saturating_mul(st.f_frsize))
}

/// True if `e` means the disk (or the user's quota) is full.
#[must_use]
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Writes `contents` to `path` through a temporary file beside it and a rename, so a reader
/// sees either the old file or the whole new one, never a part (a report polled by a script,
/// a runtime's config file). Creates the parent directory.
///
/// # Errors
/// The directory cannot be created or the file cannot be written or renamed; the temporary
/// file is removed then.
pub fn write_replacing(path: &Path, contents: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".damselfly-tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let written = std::fs::write(&tmp, contents).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_sizes_the_file_with_its_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create_new(&path).unwrap();
        allocate(&file, 3 << 20).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 3 << 20);
        use std::os::unix::fs::MetadataExt as _;
        // Not sparse: the blocks are there (512-byte units), unless the filesystem has no
        // fallocate and the file was sized sparse.
        let allocated = meta.blocks() * 512;
        assert!(allocated >= 3 << 20 || allocated == 0, "{allocated}");
        allocate(&file, 0).unwrap();
    }

    #[test]
    fn too_much_is_refused_and_named_as_a_full_disk() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create_new(dir.path().join("f")).unwrap();
        let free = available(dir.path()).unwrap();
        assert!(total(dir.path()).unwrap() >= free);
        // More than the filesystem holds: ENOSPC (or EFBIG beyond the largest file size).
        let e = allocate(&file, free.saturating_mul(4).max(1 << 50)).unwrap_err();
        assert!(
            is_no_space(&e) || e.kind() == io::ErrorKind::FileTooLarge,
            "{e:?}"
        );
        assert!(!is_no_space(&io::Error::from(io::ErrorKind::NotFound)));
    }

    #[test]
    fn write_replacing_leaves_the_whole_new_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("report.json");
        write_replacing(&path, b"old").unwrap();
        write_replacing(&path, b"new contents").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("report.json")]);
    }
}
