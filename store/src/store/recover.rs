//! Startup recovery: bring RocksDB and `content/` back to a consistent state.
//!
//! Every crash window of the write paths leaves something this pass cleans up:
//!
//! * `create_task` crashed after creating the file, before the meta => file without a task.
//! * `remove_task` crashed after the metadata batch, before deleting the file => same.
//! * a process died mid-download => task in `Running` state, dropped with its pieces, or kept
//!   as `Partial` (its pieces too) when the caller resumes downloads.
//!
//! Anything that fails a check is treated as absent (style §6.7) and fetched again later.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rocksdb::{DB, WriteBatch};
use tracing::{info, warn};

use super::{content_path, encode_meta, scan};
use crate::keys::{self, sha256};
use crate::{Error, TaskMeta, TaskState};

/// Checks (or, for a fresh database, writes) the format version.
pub(super) fn check_format(db: &DB) -> Result<(), Error> {
    match db.get(keys::FORMAT_KEY)? {
        None => Ok(db.put(keys::FORMAT_KEY, keys::FORMAT_VERSION)?),
        Some(v) if v == keys::FORMAT_VERSION => Ok(()),
        Some(v) => Err(Error::Metadata {
            key: keys::display(keys::FORMAT_KEY),
            reason: format!(
                "unsupported store format version {:?} (this build reads {:?})",
                keys::display(&v),
                keys::display(keys::FORMAT_VERSION)
            ),
        }),
    }
}

/// Loads every usable task, deleting everything else from the database and `content_dir`.
pub(super) fn load(
    db: &DB,
    content_dir: &Path,
    keep_partial: bool,
) -> Result<HashMap<String, TaskMeta>, Error> {
    let mut tasks = HashMap::new();
    let mut batch = WriteBatch::default();
    for item in scan(db, keys::TASK_PREFIX) {
        let (key, value) = item?;
        match check_task(&key, &value, content_dir, keep_partial) {
            Ok(mut meta) => {
                if meta.state == TaskState::Running {
                    info!(task = %meta.id, "keeping the pieces of a task left running by a previous process");
                    meta.state = TaskState::Partial;
                    batch.put(&key, encode_meta(&meta)?);
                }
                tasks.insert(meta.id.clone(), meta);
            }
            Err(Discard::Abandoned(id)) => {
                info!(task = %id, "dropping task left running by a previous process");
                batch.delete(&key);
            }
            Err(Discard::Invalid(reason)) => {
                warn!(key = %keys::display(&key), %reason, "dropping unusable task metadata");
                batch.delete(&key);
            }
        }
    }

    // Piece keys survive only for kept tasks and in-range indexes.
    let kept: HashMap<[u8; 32], u32> = tasks
        .values()
        .map(|m| (sha256(m.id.as_bytes()), m.piece_count()))
        .collect();
    let mut dropped_pieces = 0_u64;
    for item in scan(db, keys::PIECE_PREFIX) {
        let (key, value) = item?;
        let keep = value.len() == 32
            && keys::parse_piece_key(&key)
                .is_some_and(|(hash, index)| kept.get(&hash).is_some_and(|&n| index < n));
        if !keep {
            batch.delete(&key);
            dropped_pieces += 1;
        }
    }
    if dropped_pieces > 0 {
        info!(
            count = dropped_pieces,
            "dropped piece records without a usable task"
        );
    }
    db.write(batch)?;

    let kept_files: HashSet<_> = tasks
        .keys()
        .map(|id| content_path(content_dir, id))
        .collect();
    sweep_content(content_dir, &kept_files)?;
    Ok(tasks)
}

enum Discard {
    /// Left `Running` by a previous process; expected after any restart mid-download.
    Abandoned(String),
    /// Corrupt or inconsistent; worth a warning.
    Invalid(String),
}

fn check_task(
    key: &[u8],
    value: &[u8],
    content_dir: &Path,
    keep_partial: bool,
) -> Result<TaskMeta, Discard> {
    let meta: TaskMeta =
        serde_json::from_slice(value).map_err(|e| Discard::Invalid(format!("bad JSON: {e}")))?;
    if key != keys::task_key(&meta.id) {
        return Err(Discard::Invalid(
            "key does not match the id it holds".into(),
        ));
    }
    if let Some(reason) = meta.invalid_reason() {
        return Err(Discard::Invalid(reason.into()));
    }
    if meta.state == TaskState::Running && !keep_partial {
        return Err(Discard::Abandoned(meta.id));
    }
    let path = content_path(content_dir, &meta.id);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() && m.len() >= meta.content_length => Ok(meta),
        Ok(m) => Err(Discard::Invalid(format!(
            "content file {} is {} bytes, expected {}",
            path.display(),
            m.len(),
            meta.content_length
        ))),
        Err(e) => Err(Discard::Invalid(format!(
            "content file {}: {e}",
            path.display()
        ))),
    }
}

/// Deletes every regular file in `content_dir` that is not in `kept`.
fn sweep_content(content_dir: &Path, kept: &HashSet<PathBuf>) -> Result<(), Error> {
    let entries = std::fs::read_dir(content_dir).map_err(|e| Error::io(content_dir, e))?;
    let mut removed = 0_u64;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(content_dir, e))?;
        let path = entry.path();
        if kept.contains(&path) {
            continue;
        }
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file {
            warn!(path = %path.display(), "unexpected entry in content directory, leaving it");
            continue;
        }
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        removed += 1;
    }
    if removed > 0 {
        info!(
            count = removed,
            "removed content files without a usable task"
        );
    }
    Ok(())
}
