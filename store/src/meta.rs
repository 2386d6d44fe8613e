//! Per-task metadata and piece layout.

use serde::{Deserialize, Serialize};

/// Lifecycle of a stored task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Pieces are still being written. A task found in this state when the store is opened
    /// was abandoned by a previous process: it is removed, or kept as [`TaskState::Partial`]
    /// when [`StoreConfig::keep_partial`](crate::StoreConfig::keep_partial) is set.
    Running,
    /// Left running by a process that died mid-download, kept with the pieces written until
    /// then, so the next fetch can resume after them (each is checked against its recorded
    /// digest when read). Eligible for GC like a complete task; a new fetch sets it back to
    /// [`TaskState::Running`] ([`Store::resume_task`](crate::Store::resume_task)).
    Partial,
    /// Every piece was present when [`Store::complete_task`](crate::Store::complete_task)
    /// ran. Only complete tasks are eligible for GC. A piece may later be dropped as corrupt;
    /// the task stays complete and the piece can be written again.
    Complete,
}

/// What the store knows about a task, persisted as JSON.
///
/// The content is split into `piece_count()` pieces of `piece_size` bytes; the last one may
/// be shorter. Piece `i` lives at byte offset `i * piece_size` of the content file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMeta {
    /// Task ID, e.g. `sha256:<hex>` or `url:<hex>`. Any string; it is hashed for file names.
    pub id: String,
    /// Origin URL the content came from.
    pub url: String,
    /// Total content length in bytes.
    pub content_length: u64,
    /// Piece size in bytes; must be non-zero.
    pub piece_size: u32,
    /// Expected whole-content digest (`sha256:<hex>`) if known.
    pub digest: Option<String>,
    /// The origin served it without credentials.
    pub public: bool,
    /// Lifecycle state.
    pub state: TaskState,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Last access time (seconds since the Unix epoch), the LRU key for GC.
    pub last_access_unix: u64,
}

impl TaskMeta {
    /// Number of pieces: `ceil(content_length / piece_size)`, `0` for empty content.
    /// Saturates at `u32::MAX` for layouts [`Store::create_task`](crate::Store::create_task)
    /// would reject.
    #[must_use]
    pub fn piece_count(&self) -> u32 {
        if self.piece_size == 0 {
            return 0;
        }
        u32::try_from(self.content_length.div_ceil(u64::from(self.piece_size))).unwrap_or(u32::MAX)
    }

    /// Length of piece `index`, or `None` if `index >= piece_count()`.
    #[must_use]
    pub fn piece_len(&self, index: u32) -> Option<u64> {
        if index >= self.piece_count() {
            return None;
        }
        let remaining = self.content_length - self.piece_offset(index);
        Some(remaining.min(u64::from(self.piece_size)))
    }

    /// Byte offset of piece `index` in the content: `index * piece_size`.
    #[must_use]
    pub fn piece_offset(&self, index: u32) -> u64 {
        u64::from(index) * u64::from(self.piece_size)
    }

    /// Why this metadata cannot describe a stored task, if it cannot.
    pub(crate) fn invalid_reason(&self) -> Option<&'static str> {
        if self.id.is_empty() {
            return Some("empty id");
        }
        if self.piece_size == 0 {
            return Some("piece_size is 0");
        }
        if self.content_length.div_ceil(u64::from(self.piece_size)) > u64::from(u32::MAX) {
            return Some("more than u32::MAX pieces");
        }
        None
    }
}

/// A task's metadata plus which pieces are present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRecord {
    /// The task's metadata (with the latest in-memory access time).
    pub meta: TaskMeta,
    /// One entry per piece: its sha256 if present, `None` if absent.
    pub pieces: Vec<Option<[u8; 32]>>,
}

impl TaskRecord {
    /// Number of present pieces.
    #[must_use]
    pub fn present_count(&self) -> usize {
        self.pieces.iter().filter(|p| p.is_some()).count()
    }

    /// True if every piece is present.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.pieces.iter().all(Option::is_some)
    }
}

/// Outcome of one [`Store::gc`](crate::Store::gc) pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// IDs of evicted tasks, in eviction order (least recently accessed first).
    pub removed: Vec<String>,
    /// Sum of the evicted tasks' `content_length`.
    pub freed_bytes: u64,
}

#[cfg(test)]
mod tests;
