//! The FUSE filesystem: metadata answered from the in-memory tree, file data through the
//! [`Reader`]. Read-only; inode numbers are tree inode ids + 1 (FUSE's root is 1).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use nydus_fs::{Inode, InodeId, InodeKind, Timestamp, Tree};
use parking_lot::Mutex;

use super::paths::Paths;
use super::reader::Reader;

/// The image never changes under a mount, so the kernel may cache entries and attributes for
/// as long as it likes.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// Records regular files in first-open order (`--record-trace`).
pub(crate) struct Trace {
    seen: HashSet<InodeId>,
    out: std::io::BufWriter<std::fs::File>,
}

impl Trace {
    pub(crate) fn new(file: std::fs::File) -> Self {
        Self {
            seen: HashSet::new(),
            out: std::io::BufWriter::new(file),
        }
    }
}

pub(crate) struct NydusFs {
    tree: Arc<Tree>,
    reader: Arc<Reader>,
    paths: Arc<Paths>,
    rt: tokio::runtime::Handle,
    /// Directory entries naming each inode (hard link count); directories get 2 + subdirs.
    nlink: Vec<u32>,
    /// Parent of each directory, for `..`.
    parent: Vec<InodeId>,
    blocks: u64,
    trace: Option<Mutex<Trace>>,
}

impl NydusFs {
    pub(crate) fn new(
        tree: Arc<Tree>,
        reader: Arc<Reader>,
        paths: Arc<Paths>,
        rt: tokio::runtime::Handle,
        trace: Option<Trace>,
    ) -> Self {
        let n = tree.inodes.len();
        let mut nlink = vec![0u32; n];
        let mut parent = vec![InodeId::ROOT; n];
        for (i, inode) in tree.inodes.iter().enumerate() {
            for child in inode.entries.values() {
                let c = child.0 as usize;
                if c < n {
                    nlink[c] += 1;
                    if tree.inodes[c].kind == InodeKind::Dir {
                        parent[c] = InodeId(u32::try_from(i).unwrap_or(0));
                    }
                }
            }
        }
        for (i, inode) in tree.inodes.iter().enumerate() {
            if inode.kind == InodeKind::Dir {
                let subdirs = inode
                    .entries
                    .values()
                    .filter(|c| {
                        tree.inodes
                            .get(c.0 as usize)
                            .is_some_and(|x| x.kind == InodeKind::Dir)
                    })
                    .count();
                nlink[i] = 2 + u32::try_from(subdirs).unwrap_or(u32::MAX - 2);
            }
        }
        let blocks = tree
            .inodes
            .iter()
            .map(|i| i.size.div_ceil(4096))
            .sum::<u64>();
        Self {
            tree,
            reader,
            paths,
            rt,
            nlink,
            parent,
            blocks,
            trace: trace.map(Mutex::new),
        }
    }

    fn id(&self, ino: INodeNo) -> Option<(InodeId, &Inode)> {
        let i = ino.0.checked_sub(1)?;
        let id = InodeId(u32::try_from(i).ok()?);
        self.tree.inode(id).map(|inode| (id, inode))
    }

    fn attr(&self, id: InodeId, inode: &Inode) -> FileAttr {
        let mtime = system_time(inode.mtime);
        let allocated: u64 = inode
            .chunks
            .iter()
            .map(|c| u64::from(c.uncompressed_size))
            .sum();
        FileAttr {
            ino: INodeNo(u64::from(id.0) + 1),
            size: inode.size,
            blocks: allocated.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: file_type(inode.kind),
            perm: u16::try_from(inode.mode & 0o7777).unwrap_or(0),
            nlink: self.nlink.get(id.0 as usize).copied().unwrap_or(1).max(1),
            uid: inode.uid,
            gid: inode.gid,
            rdev: kernel_rdev(inode.rdev),
            blksize: 4096,
            flags: 0,
        }
    }

    fn record(&self, id: InodeId) {
        let Some(trace) = &self.trace else {
            return;
        };
        let mut t = trace.lock();
        if !t.seen.insert(id) {
            return;
        }
        if let Some(path) = self.paths.get(id) {
            let line = nydus_fs::prefetch::escape_path(path);
            if let Err(e) = writeln!(t.out, "{line}").and_then(|()| t.out.flush()) {
                tracing::warn!(error = %e, "cannot write the access trace");
            }
        }
    }
}

impl Filesystem for NydusFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Let the kernel read ahead up to one chunk (it clamps to what it supports).
        let _ = config.set_max_readahead(self.tree.chunk_size.bytes().min(1 << 20));
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some((_, dir)) = self.id(parent) else {
            return reply.error(Errno::ENOENT);
        };
        if dir.kind != InodeKind::Dir {
            return reply.error(Errno::ENOTDIR);
        }
        match dir
            .entries
            .get(name.as_bytes())
            .and_then(|&c| self.tree.inode(c).map(|i| (c, i)))
        {
            Some((c, inode)) => reply.entry(&TTL, &self.attr(c, inode), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.id(ino) {
            Some((id, inode)) => reply.attr(&TTL, &self.attr(id, inode)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.id(ino) {
            Some((_, inode)) if inode.kind == InodeKind::Symlink => reply.data(&inode.target),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some((id, inode)) = self.id(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        if self.trace.is_none() {
            // Nothing to do at open: ENOSYS tells the kernel (once for the whole mount) to stop
            // sending OPEN and RELEASE, two round trips per open(2)/close(2) of a file. It then
            // keeps the page cache across opens by itself (as FOPEN_KEEP_CACHE below does), and
            // the mount being read-only still refuses writes.
            return reply.error(Errno::ENOSYS);
        }
        if inode.kind == InodeKind::File {
            self.record(id);
        }
        // Nothing under the mount ever changes: keep the page cache across opens.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some((id, inode)) = self.id(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if inode.kind != InodeKind::File {
            return reply.error(Errno::EISDIR);
        }
        let reader = self.reader.clone();
        let paths = self.paths.clone();
        self.rt.spawn(async move {
            match reader.read(id, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => {
                    let path = paths
                        .get(id)
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .unwrap_or_default();
                    tracing::error!(path = %path, offset, size, error = %e, "read failed (EIO)");
                    reply.error(Errno::EIO);
                }
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever written, so there is nothing to flush. ENOSYS tells the kernel so
        // once for the whole mount: it then stops sending a FLUSH (a round trip that close(2)
        // waits for) at every close.
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.id(ino) {
            Some((_, inode)) if inode.kind == InodeKind::Dir => {
                reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
            }
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some((id, dir)) = self.id(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if dir.kind != InodeKind::Dir {
            return reply.error(Errno::ENOTDIR);
        }
        let parent = self
            .parent
            .get(id.0 as usize)
            .copied()
            .unwrap_or(InodeId::ROOT);
        let dots = [
            (id, FileType::Directory, OsStr::new(".")),
            (parent, FileType::Directory, OsStr::new("..")),
        ];
        let children = dir.entries.iter().map(|(name, &c)| {
            let kind = self
                .tree
                .inode(c)
                .map_or(FileType::RegularFile, |i| file_type(i.kind));
            (c, kind, OsStr::from_bytes(name))
        });
        // Offsets are positions in this fixed order, so a listing resumes where it stopped.
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (child, kind, name)) in dots.into_iter().chain(children).enumerate().skip(skip) {
            let next = u64::try_from(i + 1).unwrap_or(u64::MAX);
            if reply.add(INodeNo(u64::from(child.0) + 1), next, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = u64::try_from(self.tree.inodes.len()).unwrap_or(u64::MAX);
        reply.statfs(self.blocks, 0, 0, files, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some((_, inode)) = self.id(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match inode.xattrs.get(name.as_bytes()) {
            None => reply.error(Errno::ENODATA),
            Some(v) => xattr_reply(v, size, reply),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some((_, inode)) = self.id(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let mut list = Vec::new();
        for name in inode.xattrs.keys() {
            list.extend_from_slice(name);
            list.push(0);
        }
        xattr_reply(&list, size, reply);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // `default_permissions` makes the kernel check modes; only existence is ours to say.
        match self.id(ino) {
            Some(_) => reply.ok(),
            None => reply.error(Errno::ENOENT),
        }
    }
}

fn xattr_reply(value: &[u8], size: u32, reply: ReplyXattr) {
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len);
    } else if len <= size {
        reply.data(value);
    } else {
        reply.error(Errno::ERANGE);
    }
}

fn file_type(kind: InodeKind) -> FileType {
    match kind {
        InodeKind::File => FileType::RegularFile,
        InodeKind::Dir => FileType::Directory,
        InodeKind::Symlink => FileType::Symlink,
        InodeKind::CharDev => FileType::CharDevice,
        InodeKind::BlockDev => FileType::BlockDevice,
        InodeKind::Fifo => FileType::NamedPipe,
        InodeKind::Socket => FileType::Socket,
    }
}

fn system_time(t: Timestamp) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(t.nanos));
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(t.secs.unsigned_abs()) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs()) + nanos
    }
}

/// glibc's 64-bit `dev_t` (as stored in the tree) to the kernel's 32-bit `new_encode_dev`
/// form FUSE carries.
fn kernel_rdev(dev: u64) -> u32 {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    let encoded = (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12);
    u32::try_from(encoded & 0xffff_ffff).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn makedev(major: u64, minor: u64) -> u64 {
        ((major & 0xffff_f000) << 32)
            | ((major & 0xfff) << 8)
            | ((minor & 0xffff_ff00) << 12)
            | (minor & 0xff)
    }

    #[test]
    fn device_numbers_reach_the_kernel_encoding() {
        // /dev/null is 1:3, /dev/sda1 8:1, a large minor 4095:1048575.
        assert_eq!(kernel_rdev(makedev(1, 3)), (1 << 8) | 3);
        assert_eq!(kernel_rdev(makedev(8, 1)), (8 << 8) | 1);
        let big = kernel_rdev(makedev(4095, 0xfffff));
        assert_eq!(big & 0xff, 0xff);
        assert_eq!((big >> 8) & 0xfff, 4095);
        assert_eq!(big >> 20, 0xfff);
    }

    #[test]
    fn times_before_the_epoch() {
        let t = Timestamp {
            secs: -1,
            nanos: 500_000_000,
        };
        assert_eq!(
            UNIX_EPOCH
                .duration_since(system_time(t))
                .expect("before epoch"),
            Duration::from_millis(500)
        );
    }
}
