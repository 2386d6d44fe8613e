//! Admission arithmetic: whether `needed` more bytes fit, and what stops them if not. Pure;
//! [`Store::reserve`](crate::Store::reserve) feeds it the numbers and evicts until it fits.

use std::fmt;

/// What a task did not fit into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceLimit {
    /// The store's configured capacity.
    Capacity {
        /// `StoreConfig::capacity`.
        capacity: u64,
        /// Bytes of stored tasks that could not be evicted (running, or in use).
        pinned: u64,
        /// Bytes promised to tasks admitted but not stored yet.
        reserved: u64,
    },
    /// The filesystem under the store.
    Disk {
        /// Bytes free on the filesystem, counting what evicting every evictable task would
        /// free.
        available: u64,
        /// `StoreConfig::min_free`, kept free for the metadata database and logs.
        min_free: u64,
    },
}

impl fmt::Display for SpaceLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Capacity {
                capacity,
                pinned,
                reserved,
            } => write!(
                f,
                "the store's capacity is {} ({} held by blobs in use or being written, {} \
                 promised to downloads in progress)",
                iec(capacity),
                iec(pinned),
                iec(reserved)
            ),
            Self::Disk {
                available,
                min_free,
            } => write!(
                f,
                "the disk has {} free after evicting what could go, and {} is kept free",
                iec(available),
                iec(min_free)
            ),
        }
    }
}

/// Bytes in binary units with one decimal, for people ("40.0 MiB").
fn iec(bytes: u64) -> bytesize::Display {
    bytesize::ByteSize::b(bytes).display().iec()
}

/// The numbers an admission decides on.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Space {
    /// Configured capacity, `0` for unlimited.
    pub capacity: u64,
    /// Bytes of stored tasks.
    pub used: u64,
    /// Bytes promised to admitted tasks not stored yet.
    pub reserved: u64,
    /// Bytes free on the filesystem.
    pub available: u64,
    /// Bytes to keep free on the filesystem.
    pub min_free: u64,
}

impl Space {
    /// What stops `needed` more bytes, or `None` if they fit. The capacity is checked
    /// first: it is the operator's own limit. `pinned` is what of `used` cannot be evicted
    /// (reported in the limit).
    pub(crate) fn shortfall(&self, needed: u64, pinned: u64) -> Option<SpaceLimit> {
        let promised = self.used.saturating_add(self.reserved);
        if self.capacity > 0 && promised.saturating_add(needed) > self.capacity {
            return Some(SpaceLimit::Capacity {
                capacity: self.capacity,
                pinned,
                reserved: self.reserved,
            });
        }
        if self.available < needed.saturating_add(self.min_free) {
            return Some(SpaceLimit::Disk {
                available: self.available,
                min_free: self.min_free,
            });
        }
        None
    }

    /// The space after evicting `evictable` bytes of stored tasks (assumed to free as much
    /// on disk).
    pub(crate) fn after_evicting(self, evictable: u64) -> Self {
        Self {
            used: self.used.saturating_sub(evictable),
            available: self.available.saturating_add(evictable),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn space() -> Space {
        Space {
            capacity: 100 * MIB,
            used: 50 * MIB,
            reserved: 10 * MIB,
            available: 200 * MIB,
            min_free: 16 * MIB,
        }
    }

    #[test]
    fn fits_within_capacity_and_disk() {
        assert_eq!(space().shortfall(40 * MIB, 0), None);
        // Unlimited capacity: only the disk counts.
        let s = Space {
            capacity: 0,
            ..space()
        };
        assert_eq!(s.shortfall(184 * MIB, 0), None);
        assert!(matches!(
            s.shortfall(185 * MIB, 0),
            Some(SpaceLimit::Disk { .. })
        ));
    }

    #[test]
    fn reservations_count_against_the_capacity() {
        let s = space();
        assert_eq!(
            s.shortfall(41 * MIB, 7),
            Some(SpaceLimit::Capacity {
                capacity: 100 * MIB,
                pinned: 7,
                reserved: 10 * MIB,
            })
        );
        let free = Space {
            reserved: 0,
            ..space()
        };
        assert_eq!(free.shortfall(50 * MIB, 0), None);
    }

    #[test]
    fn the_disk_keeps_min_free() {
        let s = Space {
            capacity: 0,
            available: 64 * MIB,
            ..space()
        };
        assert_eq!(s.shortfall(48 * MIB, 0), None);
        assert_eq!(
            s.shortfall(48 * MIB + 1, 0),
            Some(SpaceLimit::Disk {
                available: 64 * MIB,
                min_free: 16 * MIB,
            })
        );
    }

    #[test]
    fn evicting_frees_capacity_and_disk() {
        let s = Space {
            capacity: 64 * MIB,
            used: 40 * MIB,
            reserved: 0,
            available: 20 * MIB,
            min_free: 4 * MIB,
        };
        assert!(s.shortfall(40 * MIB, 0).is_some());
        assert_eq!(s.after_evicting(40 * MIB).shortfall(40 * MIB, 0), None);
        // A blob larger than the capacity never fits, whatever goes.
        assert!(matches!(
            s.after_evicting(40 * MIB).shortfall(128 * MIB, 0),
            Some(SpaceLimit::Capacity { .. })
        ));
    }

    #[test]
    fn limits_read_well() {
        let c = space().shortfall(99 * MIB, 3 * MIB).unwrap();
        assert_eq!(
            c.to_string(),
            "the store's capacity is 100.0 MiB (3.0 MiB held by blobs in use or being \
             written, 10.0 MiB promised to downloads in progress)"
        );
        let d = SpaceLimit::Disk {
            available: 40 * MIB,
            min_free: 16 * MIB,
        };
        assert!(d.to_string().contains("40.0 MiB free"), "{d}");
    }
}
