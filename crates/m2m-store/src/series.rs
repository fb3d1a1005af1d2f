//! Series: keyspaces made and dropped at run time by the layers above (the history of messages), by
//! name. The store keeps their bytes; the owner chooses the names and encodes keys and values.
//!
//! Dropping a whole keyspace is how time-ordered data is retired cheaply: its files go at once, with
//! no tombstones to compact away.

use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fjall::PersistMode;

use crate::engine::Engine;
use crate::error::StoreError;
use crate::store::{Shared, Store};

/// Sealed memtables of a series at which a write waits for the flushes (as [`crate::Batch`] does).
const FLUSH_BACKLOG: usize = 3;

/// One write: series, key, and the value (`None`: remove the key).
type SeriesOp = (Arc<str>, Vec<u8>, Option<Vec<u8>>);

/// Writes to series, committed together atomically with [`Store::write_series`].
#[derive(Debug, Default)]
pub struct SeriesBatch {
    ops: Vec<SeriesOp>,
}

impl SeriesBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `value` under `key` in the series `name` (created if it does not exist).
    pub fn put(&mut self, name: &Arc<str>, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((name.clone(), key, Some(value)));
    }

    /// Removes `key` from the series `name`.
    pub fn remove(&mut self, name: &Arc<str>, key: Vec<u8>) {
        self.ops.push((name.clone(), key, None));
    }

    /// Writes in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch has no writes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Records of a series in key order (or reverse), read from a snapshot taken when it was made.
pub struct SeriesIter {
    inner: Option<fjall::Iter>,
    path: std::path::PathBuf,
}

impl std::fmt::Debug for SeriesIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeriesIter").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SeriesIter {
    /// The next record (the last one first when `back`), handed to `f` as borrowed key and value
    /// bytes, without copying them.
    pub fn next_with<T>(
        &mut self,
        back: bool,
        f: impl FnOnce(&[u8], &[u8]) -> T,
    ) -> Option<Result<T, StoreError>> {
        let inner = self.inner.as_mut()?;
        let item = if back { inner.next_back()? } else { inner.next()? };
        Some(item.into_inner().map(|(k, v)| f(&k, &v)).map_err(|e| StoreError::reading(e, &self.path)))
    }
}

impl Iterator for SeriesIter {
    type Item = Result<(Vec<u8>, Vec<u8>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_with(false, |k, v| (k.to_vec(), v.to_vec()))
    }
}

impl DoubleEndedIterator for SeriesIter {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.next_with(true, |k, v| (k.to_vec(), v.to_vec()))
    }
}

impl Store {
    fn engine_or_unavailable(&self) -> Result<Arc<Engine>, StoreError> {
        self.shared().engine().ok_or(StoreError::Unavailable)
    }

    /// The names of the series that exist, in no particular order.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] while the store is being reopened after a failure.
    pub fn series_names(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.engine_or_unavailable()?.series_names())
    }

    /// Commits `batch` atomically to the journal (not fsynced: see [`Store::on_durable`]).
    ///
    /// # Errors
    /// As [`crate::Batch::commit`].
    pub fn write_series(&self, batch: SeriesBatch) -> Result<(), StoreError> {
        if batch.ops.is_empty() {
            return Ok(());
        }
        let shared = self.shared();
        if !shared.is_healthy() {
            return Err(StoreError::Unavailable);
        }
        let engine = shared.engine().ok_or(StoreError::Unavailable)?;
        let mut keyspaces: Vec<(Arc<str>, fjall::Keyspace)> = Vec::new();
        let mut out = engine.db.batch();
        for (name, key, value) in batch.ops {
            let ks = match keyspaces.iter().find(|(n, _)| *n == name) {
                Some((_, ks)) => ks.clone(),
                None => {
                    let ks = engine.series(&name, true).and_then(|ks| ks.ok_or(StoreError::Unavailable));
                    let ks = ks.inspect_err(|e| shared.fault(e))?;
                    wait_for_flushes(shared, &engine, &ks)?;
                    keyspaces.push((name, ks.clone()));
                    ks
                }
            };
            match value {
                Some(value) => out.insert(&ks, key, value),
                None => out.remove(&ks, key),
            }
        }
        match out.commit() {
            Ok(()) => {
                shared.committed.fetch_add(1, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                let e = StoreError::writing(e);
                shared.fault(&e);
                Err(e)
            }
        }
    }

    /// The records of series `name` with keys in `range`, in key order (`reverse`: the last first).
    /// A series that does not exist has none.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] while the store is being reopened after a failure; a read error.
    pub fn series_range(
        &self,
        name: &str,
        range: (Bound<Vec<u8>>, Bound<Vec<u8>>),
    ) -> Result<SeriesIter, StoreError> {
        let engine = self.engine_or_unavailable()?;
        let Some(ks) = engine.series(name, false)? else {
            return Ok(SeriesIter { inner: None, path: self.path().to_owned() });
        };
        Ok(SeriesIter { inner: Some(ks.range::<Vec<u8>, _>(range)), path: ks.path().to_owned() })
    }

    /// The value of `key` in series `name`, if any.
    ///
    /// # Errors
    /// As [`Store::series_range`].
    pub fn series_get(&self, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let engine = self.engine_or_unavailable()?;
        let Some(ks) = engine.series(name, false)? else { return Ok(None) };
        let value = ks.get(key).map_err(|e| StoreError::reading(e, ks.path()))?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// Bytes the table files of series `name` take (its write buffer and journal not included).
    pub fn series_space(&self, name: &str) -> u64 {
        let Ok(engine) = self.engine_or_unavailable() else { return 0 };
        engine.series(name, false).ok().flatten().map_or(0, |ks| ks.disk_space())
    }

    /// Deletes series `name` and its files (nothing if it does not exist).
    ///
    /// # Errors
    /// As [`Store::write_series`].
    pub fn drop_series(&self, name: &str) -> Result<(), StoreError> {
        let shared = self.shared();
        let engine = shared.engine().ok_or(StoreError::Unavailable)?;
        engine.drop_series(name).inspect_err(|e| shared.fault(e))
    }
}

/// Waits while `ks` has a backlog of memtables to flush, giving up if the store fails meanwhile.
fn wait_for_flushes(shared: &Shared, engine: &Engine, ks: &fjall::Keyspace) -> Result<(), StoreError> {
    while ks.sealed_memtable_count() >= FLUSH_BACKLOG {
        if !shared.is_healthy() {
            return Err(StoreError::Unavailable);
        }
        if let Err(e) = engine.db.persist(PersistMode::Buffer) {
            let e = StoreError::writing(e);
            shared.fault(&e);
            return Err(e);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}
