//! How to open a store.

use std::path::PathBuf;
use std::time::Duration;

/// When writes become durable.
///
/// A node configured with `sync = "none"` runs without a [`Store`](crate::Store) at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Every acknowledgement waits for an fsync; concurrent writers share one (group commit).
    Always,
    /// The store syncs every interval; acknowledgements do not wait. A crash of the machine (not of
    /// the process) may lose the writes of the last interval.
    Batch(Duration),
}

/// Where the store lives and how it is tuned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The data directory; created if missing.
    pub path: PathBuf,
    /// When writes become durable.
    pub sync: SyncMode,
    /// Size of a keyspace's in-memory write buffer before it is flushed to a table file.
    ///
    /// Applies to keyspaces when they are created: the engine keeps the value a store was created with.
    pub memtable_bytes: u64,
    /// Size of the block cache, shared by all keyspaces.
    pub cache_bytes: u64,
    /// How often the store checks whether delivered messages left tables worth compacting.
    pub tidy_interval: Duration,
    /// Table space of the deliveries (or flight) keyspace below which it is never compacted fully.
    pub tidy_min_bytes: u64,
}

impl StoreConfig {
    /// Default [`StoreConfig::memtable_bytes`]: 16 MiB.
    pub const DEFAULT_MEMTABLE_BYTES: u64 = 16 * 1024 * 1024;
    /// Default [`StoreConfig::cache_bytes`]: 32 MiB.
    pub const DEFAULT_CACHE_BYTES: u64 = 32 * 1024 * 1024;

    /// Default [`StoreConfig::tidy_interval`]: 10 s.
    pub const DEFAULT_TIDY_INTERVAL: Duration = Duration::from_secs(10);
    /// Default [`StoreConfig::tidy_min_bytes`]: 32 MiB.
    pub const DEFAULT_TIDY_MIN_BYTES: u64 = 32 * 1024 * 1024;

    /// A store in `path` that syncs every write ([`SyncMode::Always`]), with default sizes.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            sync: SyncMode::Always,
            memtable_bytes: Self::DEFAULT_MEMTABLE_BYTES,
            cache_bytes: Self::DEFAULT_CACHE_BYTES,
            tidy_interval: Self::DEFAULT_TIDY_INTERVAL,
            tidy_min_bytes: Self::DEFAULT_TIDY_MIN_BYTES,
        }
    }
}
