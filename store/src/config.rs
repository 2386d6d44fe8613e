//! Store configuration.

use std::path::PathBuf;

use crate::Error;

/// Default [`StoreConfig::min_free`]: 16 MiB.
pub const DEFAULT_MIN_FREE: u64 = 16 << 20;

/// Where the store lives and how much it may hold.
///
/// Garbage collection runs only when [`Store::gc`](crate::Store::gc) is called. It starts when
/// used bytes exceed `high_watermark * capacity` and evicts until used bytes are at or below
/// `low_watermark * capacity`. A wider gap means fewer, larger GC passes.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    /// Root directory. The store creates `db/` (RocksDB) and `content/` (one file per task)
    /// under it.
    pub dir: PathBuf,
    /// Capacity in bytes, counted as the sum of stored tasks' `content_length`. `0` means
    /// unlimited (GC never evicts).
    pub capacity: u64,
    /// Fraction of `capacity` above which GC starts evicting. Default 0.9.
    pub high_watermark: f64,
    /// Fraction of `capacity` that GC evicts down to. Default 0.7. Must satisfy
    /// `0 < low_watermark <= high_watermark <= 1`.
    pub low_watermark: f64,
    /// Bytes [`Store::reserve`](crate::Store::reserve) keeps free on the filesystem, for
    /// the metadata database and whatever else writes there. Default 16 MiB.
    pub min_free: u64,
    /// Keep tasks a previous process left running (as [`TaskState::Partial`](crate::TaskState::Partial),
    /// with their pieces) instead of removing them on open, for a caller that resumes
    /// downloads. Default false.
    pub keep_partial: bool,
}

impl StoreConfig {
    /// A config for `dir` with unlimited capacity and the default watermarks.
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            capacity: 0,
            high_watermark: 0.9,
            low_watermark: 0.7,
            min_free: DEFAULT_MIN_FREE,
            keep_partial: false,
        }
    }

    /// Checks the watermarks.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first offending field.
    pub fn validate(&self) -> Result<(), Error> {
        let low = self.low_watermark;
        let high = self.high_watermark;
        // Written so that NaN fails every comparison and is rejected.
        if !(low > 0.0 && low <= 1.0) {
            return Err(Error::Config {
                key: "low_watermark",
                reason: "must be in (0, 1]",
            });
        }
        if !(high > 0.0 && high <= 1.0) {
            return Err(Error::Config {
                key: "high_watermark",
                reason: "must be in (0, 1]",
            });
        }
        if low > high {
            return Err(Error::Config {
                key: "low_watermark",
                reason: "must not exceed high_watermark",
            });
        }
        Ok(())
    }
}
