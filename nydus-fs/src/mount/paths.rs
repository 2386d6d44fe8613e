//! One path per inode (the first in breadth-first, name order; hard links keep their first
//! name), for log messages, traces and resolving prefetch lists.

use std::collections::VecDeque;

use nydus_fs::{InodeId, InodeKind, Tree};

pub(crate) struct Paths {
    paths: Vec<Option<Vec<u8>>>,
}

impl Paths {
    pub(crate) fn new(tree: &Tree) -> Self {
        let mut paths: Vec<Option<Vec<u8>>> = vec![None; tree.inodes.len()];
        if let Some(p) = paths.first_mut() {
            *p = Some(b"/".to_vec());
        }
        let mut queue = VecDeque::from([InodeId::ROOT]);
        while let Some(dir) = queue.pop_front() {
            let Some(inode) = tree.inode(dir) else {
                continue;
            };
            let base = paths[dir.0 as usize].clone().unwrap_or_default();
            for (name, &child) in &inode.entries {
                let Some(slot) = paths.get_mut(child.0 as usize) else {
                    continue;
                };
                if slot.is_some() {
                    continue;
                }
                let mut p = base.clone();
                if p != b"/" {
                    p.push(b'/');
                }
                p.extend_from_slice(name);
                *slot = Some(p);
                if tree.inode(child).is_some_and(|c| c.kind == InodeKind::Dir) {
                    queue.push_back(child);
                }
            }
        }
        Self { paths }
    }

    pub(crate) fn get(&self, id: InodeId) -> Option<&[u8]> {
        self.paths.get(id.0 as usize)?.as_deref()
    }
}
