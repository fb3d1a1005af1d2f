//! The fjall database and its keyspaces, opened as one unit so a failed database can be replaced.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{PoisonError, RwLock};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::config::StoreConfig;
use crate::error::StoreError;

/// The store format this build writes and the highest it reads.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Key of the format version in the meta keyspace (u32 BE).
pub(crate) const META_VERSION: &[u8] = b"version";
/// Key of the last heartbeat in the meta keyspace (unix ms, u64 BE).
pub(crate) const META_ALIVE_AT: &[u8] = b"alive_at";
/// Key of the time of the last tidy compaction in the meta keyspace (unix ms, u64 BE).
pub(crate) const META_TIDIED_AT: &[u8] = b"tidied_at";

/// fjall's background threads (flushes and compactions). Two, so that a long compaction does not
/// hold up the flush of a full memtable, which would stall writers.
const WORKER_THREADS: usize = 2;

/// Bytes of journal at which the engine flushes the memtables that keep the oldest journal alive (the
/// engine's least). Memtables of little-written keyspaces otherwise hold journals full of delivered
/// messages for a long time.
const MAX_JOURNALS: u64 = 64 * 1024 * 1024;

/// The keyspaces of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Ks {
    Meta,
    Sessions,
    Deliveries,
    Flight,
    Incoming,
    Retained,
    Wills,
    Devices,
    Groups,
    Quarantine,
    Audit,
    Rules,
    Outbox,
    Mesh,
    Uplink,
    Operators,
}

impl Ks {
    /// Every keyspace, in the order they were introduced: the engine numbers its directories in the
    /// order keyspaces are first created, so new ones go at the end.
    pub(crate) const ALL: [Ks; 16] = [
        Ks::Meta,
        Ks::Sessions,
        Ks::Deliveries,
        Ks::Flight,
        Ks::Incoming,
        Ks::Retained,
        Ks::Wills,
        Ks::Devices,
        Ks::Groups,
        Ks::Quarantine,
        Ks::Audit,
        Ks::Rules,
        Ks::Outbox,
        Ks::Mesh,
        Ks::Uplink,
        Ks::Operators,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Ks::Meta => "meta",
            Ks::Sessions => "sessions",
            Ks::Deliveries => "deliveries",
            Ks::Flight => "flight",
            Ks::Incoming => "incoming",
            Ks::Retained => "retained",
            Ks::Wills => "wills",
            Ks::Devices => "devices",
            Ks::Groups => "groups",
            Ks::Quarantine => "quarantine",
            Ks::Audit => "audit",
            Ks::Rules => "rules",
            Ks::Outbox => "outbox",
            Ks::Mesh => "mesh",
            Ks::Uplink => "uplink",
            Ks::Operators => "operators",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// An open database.
pub(crate) struct Engine {
    // Declared before `db` so they are dropped first: every keyspace handle holds the database's lock
    // file, which must be released before the database can be opened again.
    keyspaces: Vec<Keyspace>,
    /// Keyspaces of series (see `series.rs`), opened or created on first use, by name.
    series: RwLock<HashMap<String, Keyspace>>,
    memtable_bytes: u64,
    pub(crate) db: Database,
}

impl Engine {
    /// Opens (or creates) the database in `config.path` and checks its format version.
    ///
    /// A panic inside the engine while it reads damaged files is caught and reported as
    /// [`StoreError::Corrupt`].
    pub(crate) fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let path = config.path.as_path();
        let engine = catch_corruption(path, || Self::open_unchecked(config))?;
        engine.check_version(path)?;
        Ok(engine)
    }

    fn open_unchecked(config: &StoreConfig) -> Result<Self, StoreError> {
        let path = config.path.as_path();
        let db = Database::builder(path)
            .cache_size(config.cache_bytes)
            .worker_threads(WORKER_THREADS)
            .max_journaling_size(MAX_JOURNALS)
            .open()
            .map_err(|e| StoreError::reading(e, path))?;
        let memtable = config.memtable_bytes.max(64 * 1024);
        let keyspaces = Ks::ALL
            .iter()
            .map(|ks| {
                db.keyspace(ks.name(), || KeyspaceCreateOptions::default().max_memtable_size(memtable))
                    .map_err(|e| StoreError::reading(e, path))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keyspaces, series: RwLock::new(HashMap::new()), memtable_bytes: memtable, db })
    }

    /// The series keyspace `name`, created if `create` and missing; `None` if missing otherwise.
    pub(crate) fn series(&self, name: &str, create: bool) -> Result<Option<Keyspace>, StoreError> {
        if let Some(ks) = self.series.read().unwrap_or_else(PoisonError::into_inner).get(name) {
            return Ok(Some(ks.clone()));
        }
        if !create && !self.db.keyspace_exists(name) {
            return Ok(None);
        }
        let memtable = self.memtable_bytes;
        let ks = self.db.keyspace(name, || series_options(memtable)).map_err(StoreError::writing)?;
        let mut series = self.series.write().unwrap_or_else(PoisonError::into_inner);
        Ok(Some(series.entry(name.to_owned()).or_insert(ks).clone()))
    }

    /// The names of the series keyspaces (every keyspace that is not one of [`Ks::ALL`]).
    pub(crate) fn series_names(&self) -> Vec<String> {
        self.db
            .list_keyspace_names()
            .into_iter()
            .map(|n| {
                let name: &str = n.as_ref();
                name.to_owned()
            })
            .filter(|n| !Ks::ALL.iter().any(|ks| ks.name() == n))
            .collect()
    }

    /// Deletes the series keyspace `name` and its files.
    pub(crate) fn drop_series(&self, name: &str) -> Result<(), StoreError> {
        let removed = self.series.write().unwrap_or_else(PoisonError::into_inner).remove(name);
        let ks = match removed {
            Some(ks) => ks,
            None if self.db.keyspace_exists(name) => {
                self.db.keyspace(name, KeyspaceCreateOptions::default).map_err(StoreError::writing)?
            }
            None => return Ok(()),
        };
        self.db.delete_keyspace(ks).map_err(StoreError::writing)
    }

    /// Refuses a store written by a newer format; stamps a new one with [`FORMAT_VERSION`].
    fn check_version(&self, path: &Path) -> Result<(), StoreError> {
        let meta = self.ks(Ks::Meta);
        match meta.get(META_VERSION).map_err(|e| StoreError::reading(e, path))? {
            None => {
                meta.insert(META_VERSION, FORMAT_VERSION.to_be_bytes()).map_err(StoreError::writing)?;
                self.db.persist(PersistMode::SyncAll).map_err(StoreError::writing)?;
                Ok(())
            }
            Some(v) => {
                let found =
                    <[u8; 4]>::try_from(&v[..]).map(u32::from_be_bytes).map_err(|_| StoreError::Corrupt {
                        path: meta.path().to_owned(),
                        detail: format!(
                            "keyspace meta: the format version record has {} bytes, not 4",
                            v.len()
                        ),
                    })?;
                if found > FORMAT_VERSION {
                    return Err(StoreError::FutureVersion { found, supported: FORMAT_VERSION });
                }
                Ok(())
            }
        }
    }

    /// The keyspace `ks`.
    pub(crate) fn ks(&self, ks: Ks) -> &Keyspace {
        // `keyspaces` is built from `Ks::ALL` in order, so every index is present.
        &self.keyspaces[ks.index()]
    }

    /// Bytes in table files, over all keyspaces.
    pub(crate) fn table_space(&self) -> u64 {
        self.keyspaces.iter().map(Keyspace::disk_space).sum()
    }

    /// Writes the version record again and makes it durable: proof that the disk takes writes.
    pub(crate) fn probe_write(&self) -> Result<(), StoreError> {
        let mut batch = self.db.batch();
        batch.insert(self.ks(Ks::Meta), META_VERSION, FORMAT_VERSION.to_be_bytes());
        batch.commit().map_err(StoreError::writing)?;
        self.db.persist(PersistMode::SyncData).map_err(StoreError::writing)
    }
}

/// How series keyspaces are made: written once in key order and read by ranges, so their blocks are
/// compressed at every level (LZ4) and larger than the default, and they carry no Bloom filters
/// (which serve point reads, and would cost a byte or two per record).
fn series_options(memtable: u64) -> KeyspaceCreateOptions {
    use fjall::config::{BlockSizePolicy, CompressionPolicy, FilterPolicy};
    KeyspaceCreateOptions::default()
        .max_memtable_size(memtable)
        .data_block_compression_policy(CompressionPolicy::all(fjall::CompressionType::Lz4))
        .data_block_size_policy(BlockSizePolicy::all(16 * 1024))
        .filter_policy(FilterPolicy::disabled())
}

/// Runs `f`, turning a panic into [`StoreError::Corrupt`] for the store at `path`.
pub(crate) fn catch_corruption<T>(
    path: &Path,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!("the storage engine failed to read it ({what})"),
        })
    })
}
