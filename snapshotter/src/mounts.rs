//! The mounts that make a snapshot's tree, as containerd's `overlayfs` snapshotter returns them.
//!
//! containerd (or its shim) performs these mounts; the snapshotter only describes them.
//!
//! | snapshot                 | mount                                                      |
//! |--------------------------|------------------------------------------------------------|
//! | active, no parent        | `bind` of its `fs`, `rw,rbind`                             |
//! | view, no parent          | `bind` of its (empty) `fs`, `ro,rbind`                     |
//! | view, one lower          | `bind` of that lower directory, `ro,rbind`                 |
//! | view, several lowers     | `overlay`, `lowerdir=` only (read-only)                    |
//! | active with parents      | `overlay`, `workdir=`, `upperdir=` its own, `lowerdir=`    |
//!
//! `lowerdir` lists the nearest parent first. `index=off` comes first when the kernel's
//! overlay module has an `index` parameter, as containerd does, so that a lower directory
//! used by several mounts at once is not tied to one of them.

use std::path::{Path, PathBuf};

use containerd_snapshots::api::types::Mount as ApiMount;

use crate::store::Kind;

/// One mount, in containerd's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `bind` or `overlay`.
    pub kind: &'static str,
    /// The bind source, or `overlay`.
    pub source: String,
    /// fstab-style options.
    pub options: Vec<String>,
}

impl From<Mount> for ApiMount {
    fn from(mount: Mount) -> Self {
        Self {
            r#type: mount.kind.to_owned(),
            source: mount.source,
            target: String::new(),
            options: mount.options,
        }
    }
}

/// Where the snapshot itself lives and what it is stacked on.
#[derive(Debug, Clone)]
pub struct Stack<'a> {
    /// Active or view (committed snapshots have no mounts).
    pub kind: Kind,
    /// Its own files (the upper directory).
    pub upper: &'a Path,
    /// Its overlay work directory.
    pub work: &'a Path,
    /// The lower directories, nearest parent first.
    pub lowers: &'a [PathBuf],
}

/// The mounts of `stack`; `index_off` adds `index=off` to overlay mounts (see the module doc).
pub fn mounts(stack: &Stack<'_>, index_off: bool) -> Vec<Mount> {
    let bind = |source: &Path, mode: &str| Mount {
        kind: "bind",
        source: source.display().to_string(),
        options: vec![mode.to_owned(), "rbind".to_owned()],
    };
    let writable = stack.kind == Kind::Active;
    match (stack.lowers, writable) {
        ([], true) => return vec![bind(stack.upper, "rw")],
        ([], false) => return vec![bind(stack.upper, "ro")],
        ([lower], false) => return vec![bind(lower, "ro")],
        _ => {}
    }
    let mut options = Vec::new();
    if index_off {
        options.push("index=off".to_owned());
    }
    if writable {
        options.push(format!("workdir={}", stack.work.display()));
        options.push(format!("upperdir={}", stack.upper.display()));
    }
    let lowers: Vec<String> = stack
        .lowers
        .iter()
        .map(|lower| lower.display().to_string())
        .collect();
    options.push(format!("lowerdir={}", lowers.join(":")));
    vec![Mount {
        kind: "overlay",
        source: "overlay".to_owned(),
        options,
    }]
}

/// Whether the running kernel's overlayfs has the `index` feature (so `index=off` is a valid
/// option), as containerd checks it.
pub fn kernel_has_overlay_index() -> bool {
    Path::new("/sys/module/overlay/parameters/index").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack<'a>(kind: Kind, lowers: &'a [PathBuf]) -> Stack<'a> {
        Stack {
            kind,
            upper: Path::new("/r/snapshots/9/fs"),
            work: Path::new("/r/snapshots/9/work"),
            lowers,
        }
    }

    fn opts(mount: &Mount) -> Vec<&str> {
        mount.options.iter().map(String::as_str).collect()
    }

    #[test]
    fn without_parents_a_bind_of_its_own_directory() {
        let [m] = &mounts(&stack(Kind::Active, &[]), true)[..] else {
            panic!()
        };
        assert_eq!((m.kind, m.source.as_str()), ("bind", "/r/snapshots/9/fs"));
        assert_eq!(opts(m), ["rw", "rbind"]);
        let [m] = &mounts(&stack(Kind::View, &[]), true)[..] else {
            panic!()
        };
        assert_eq!(opts(m), ["ro", "rbind"]);
    }

    #[test]
    fn a_view_of_one_layer_binds_it_read_only() {
        let lowers = [PathBuf::from("/r/snapshots/1/fs")];
        let [m] = &mounts(&stack(Kind::View, &lowers), true)[..] else {
            panic!()
        };
        assert_eq!((m.kind, m.source.as_str()), ("bind", "/r/snapshots/1/fs"));
        assert_eq!(opts(m), ["ro", "rbind"]);
    }

    #[test]
    fn active_and_deep_views_are_overlays_nearest_parent_first() {
        let lowers = [
            PathBuf::from("/r/snapshots/2/fs"),
            PathBuf::from("/r/snapshots/1/fs"),
        ];
        let [m] = &mounts(&stack(Kind::Active, &lowers), true)[..] else {
            panic!()
        };
        assert_eq!((m.kind, m.source.as_str()), ("overlay", "overlay"));
        assert_eq!(
            opts(m),
            [
                "index=off",
                "workdir=/r/snapshots/9/work",
                "upperdir=/r/snapshots/9/fs",
                "lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs",
            ]
        );
        let [m] = &mounts(&stack(Kind::View, &lowers), false)[..] else {
            panic!()
        };
        assert_eq!(opts(m), ["lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs"]);
        // One lower and writable: still an overlay (the upper takes the writes).
        let [m] = &mounts(&stack(Kind::Active, &lowers[..1]), false)[..] else {
            panic!()
        };
        assert_eq!(m.kind, "overlay");
        let api = ApiMount::from(m.clone());
        assert_eq!((api.r#type.as_str(), api.options.len()), ("overlay", 3));
    }
}
