//! The store handle: opening, durability waits and health.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::batch::Batch;
use crate::committer;
use crate::config::{StoreConfig, SyncMode};
use crate::encoding::Clock;
use crate::engine::{catch_corruption, Engine};
use crate::error::StoreError;
use crate::latency::{Latency, LatencyHistogram};
use crate::record::Recovered;
use crate::recover::recover;
use crate::table::Table;
use crate::tidy;
use crate::unix_ms;

/// How often a store that keeps failing logs it at `error`.
const FAULT_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// One record of a [`Table`]: its key and its value.
pub type Record = (Vec<u8>, Vec<u8>);

/// A callback waiting for durability.
pub(crate) type Waiter = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// What the writers and the committer thread share.
pub(crate) struct Shared {
    pub(crate) config: StoreConfig,
    /// The open database; `None` while it is being replaced after a failure, or after shutdown.
    /// Writers clone the `Arc` and release the lock at once, so the committer can swap it.
    engine: RwLock<Option<Arc<Engine>>>,
    /// `false` from a failed write or sync until the committer has reopened the database.
    healthy: AtomicBool,
    /// Batches committed so far: the committer skips the fsync when nothing was written since the last.
    pub(crate) committed: AtomicU64,
    /// fsyncs done by the committer.
    pub(crate) syncs: AtomicU64,
    /// How long the committer's group commits took (moving the journal to the OS and the fsync).
    pub(crate) commit_latency: LatencyHistogram,
    /// When a fault was last logged at `error`: a disk that stays full makes the store fail again
    /// after each reopen, and the operator needs to hear of it once, not every second.
    fault_logged_at: Mutex<Option<Instant>>,
    /// Waiters for the next sync, and the stop flag. A `std` mutex: held only to push or take, never
    /// across IO.
    pub(crate) queue: Mutex<Queue>,
    /// Wakes the committer.
    pub(crate) wake: Condvar,
    /// Deliveries stored, as counted by commits since the store was opened (an estimate: a removal
    /// counts whether or not the delivery was there).
    pub(crate) deliveries: AtomicI64,
    /// Bytes of delivery records written, and how many: their average size, for the tidy thread.
    pub(crate) delivery_bytes: AtomicU64,
    pub(crate) delivery_puts: AtomicU64,
    /// Set to stop the tidy thread, which waits on `tidy_wake`.
    tidy_stop: Mutex<bool>,
    tidy_wake: Condvar,
}

/// The committer's inbox.
#[derive(Default)]
pub(crate) struct Queue {
    pub(crate) waiters: Vec<Waiter>,
    pub(crate) stop: bool,
}

impl Shared {
    /// The open database, if any.
    pub(crate) fn engine(&self) -> Option<Arc<Engine>> {
        self.engine.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Puts `engine` in place (or takes the database out with `None`), returning the previous one.
    pub(crate) fn set_engine(&self, engine: Option<Arc<Engine>>) -> Option<Arc<Engine>> {
        std::mem::replace(&mut *self.engine.write().unwrap_or_else(PoisonError::into_inner), engine)
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Records a failed write or sync: the store takes no writes until the committer has reopened it.
    pub(crate) fn fault(&self, error: &StoreError) {
        if !self.healthy.swap(false, Ordering::AcqRel) {
            return;
        }
        let path = self.config.path.display();
        let cause = std::error::Error::source(error).map(ToString::to_string);
        let mut logged_at = self.fault_logged_at.lock().unwrap_or_else(PoisonError::into_inner);
        if logged_at.is_some_and(|at| at.elapsed() < FAULT_LOG_INTERVAL) {
            tracing::debug!(%path, %error, ?cause, "store write failed again");
        } else {
            *logged_at = Some(Instant::now());
            tracing::error!(
                %path,
                %error,
                ?cause,
                "store write failed; refusing writes until the store can be reopened (is the disk full?)"
            );
        }
    }

    /// Marks the store healthy again after a reopen.
    pub(crate) fn recovered(&self) {
        if !self.healthy.swap(true, Ordering::AcqRel) {
            tracing::warn!(path = %self.config.path.display(), "store recovered and accepts writes again");
        }
    }

    /// Waits `interval`, or less if the store is stopping; `false` when it is.
    pub(crate) fn tidy_wait(&self, interval: Duration) -> bool {
        let stop = self.tidy_stop.lock().unwrap_or_else(PoisonError::into_inner);
        let (stop, _) = self
            .tidy_wake
            .wait_timeout_while(stop, interval, |stop| !*stop)
            .unwrap_or_else(PoisonError::into_inner);
        !*stop
    }

    pub(crate) fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Stops the committer when the last [`Store`] goes away.
struct Handle {
    shared: Arc<Shared>,
    committer: Option<JoinHandle<()>>,
    tidy: Option<JoinHandle<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        *self.shared.tidy_stop.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.shared.tidy_wake.notify_all();
        if let Some(thread) = self.tidy.take() {
            // The tidy thread holds no handle, so it never drops the last one; the check costs nothing.
            if thread.thread().id() != std::thread::current().id() && thread.join().is_err() {
                tracing::error!("store tidy thread panicked");
            }
        }
        self.shared.lock_queue().stop = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.committer.take() {
            // The last handle may be dropped by a durability callback, on the committer thread itself;
            // it then finishes on its own after the callback returns.
            if thread.thread().id() != std::thread::current().id() && thread.join().is_err() {
                tracing::error!("store committer thread panicked");
            }
        }
    }
}

/// The node's durable state: one fjall database in a directory.
///
/// Cheap to clone; all clones share one database and one committer thread, which stops (after making
/// everything durable) when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path())
            .field("sync", &self.handle.shared.config.sync)
            .field("healthy", &self.is_healthy())
            .finish()
    }
}

impl Store {
    /// Opens the store in `config.path`, creating it if needed, and reads everything back.
    ///
    /// Expired messages and orphaned records are deleted on the way (see the crate docs).
    ///
    /// # Errors
    /// [`StoreError::FutureVersion`] for a store written by a newer format, [`StoreError::Corrupt`]
    /// for files that do not read back, [`StoreError::Locked`] if another process has it open,
    /// [`StoreError::Io`] otherwise.
    pub fn open(config: StoreConfig) -> Result<(Store, Recovered), StoreError> {
        let engine = Engine::open(&config)?;
        let clock = Clock { now: Instant::now(), wall_ms: unix_ms(SystemTime::now()) };
        let recovered = catch_corruption(&config.path, || recover(&engine, clock))?;
        tracing::info!(
            path = %config.path.display(),
            sessions = recovered.sessions.len(),
            retained = recovered.retained.len(),
            wills = recovered.wills.len(),
            dropped_expired = recovered.dropped_expired,
            "store opened"
        );
        let shared = Arc::new(Shared {
            config,
            engine: RwLock::new(Some(Arc::new(engine))),
            healthy: AtomicBool::new(true),
            committed: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            commit_latency: LatencyHistogram::default(),
            fault_logged_at: Mutex::new(None),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            deliveries: AtomicI64::new(recovered.sessions.iter().map(|s| s.deliveries.len() as i64).sum()),
            delivery_bytes: AtomicU64::new(0),
            delivery_puts: AtomicU64::new(0),
            tidy_stop: Mutex::new(false),
            tidy_wake: Condvar::new(),
        });
        let committer = committer::spawn(shared.clone())?;
        let tidy = tidy::spawn(shared.clone())?;
        let handle = Handle { shared, committer: Some(committer), tidy: Some(tidy) };
        Ok((Store { handle: Arc::new(handle) }, recovered))
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// A new, empty batch of writes.
    pub fn batch(&self) -> Batch {
        Batch::new(self.shared().clone())
    }

    /// Calls `f` once everything written (by any thread) before this call is durable, or with the
    /// error if that failed.
    ///
    /// With [`SyncMode::Always`], `f` runs on the store's committer thread after the next fsync, which
    /// all waiters queued meanwhile share; waiters are called in the order they were queued. `f` must
    /// be quick (send on a channel, wake a task). With [`SyncMode::Batch`], `f` is called at once on
    /// this thread with `Ok(())`. Either way an unhealthy store calls `f` at once with
    /// [`StoreError::Unavailable`].
    pub fn on_durable(&self, f: impl FnOnce(Result<(), StoreError>) + Send + 'static) {
        let shared = self.shared();
        if !shared.is_healthy() {
            return f(Err(StoreError::Unavailable));
        }
        match shared.config.sync {
            SyncMode::Batch(_) => f(Ok(())),
            SyncMode::Always => {
                shared.lock_queue().waiters.push(Box::new(f));
                shared.wake.notify_one();
            }
        }
    }

    /// Waits until everything written before this call is durable; see [`Store::on_durable`].
    ///
    /// # Errors
    /// The write or sync error, or [`StoreError::Unavailable`] if the store is unhealthy.
    ///
    /// # Cancel safety
    /// Safe to drop: the writes stay committed and the sync still happens; only the wait is abandoned.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.on_durable(move |result| {
            // The receiver is gone only if the caller stopped waiting.
            let _ = tx.send(result);
        });
        rx.await.unwrap_or(Err(StoreError::Unavailable))
    }

    /// Whether acknowledgements wait for durability: `true` for [`SyncMode::Always`].
    pub fn waits_for_sync(&self) -> bool {
        self.shared().config.sync == SyncMode::Always
    }

    /// `false` after a write or sync failed, until the store has recovered by itself.
    pub fn is_healthy(&self) -> bool {
        self.shared().is_healthy()
    }

    /// Bytes the whole database takes on disk (allocated blocks of every file in the directory).
    pub fn disk_space(&self) -> u64 {
        dir_size(self.path())
    }

    /// Bytes in the engine's table files, over all keyspaces: [`Store::disk_space`] without the
    /// journals (whose size the engine bounds at 64 MiB) and without the in-memory write buffers.
    pub fn table_space(&self) -> u64 {
        self.shared().engine().map_or(0, |engine| engine.table_space())
    }

    /// Every record of `table`, in key order.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] while the store is being reopened after a failure; a read error.
    pub fn records(&self, table: Table) -> Result<Vec<Record>, StoreError> {
        self.records_after(table, None, usize::MAX)
    }

    /// Up to `limit` records of `table` whose keys come after `after` (from the first if `None`), in
    /// key order.
    ///
    /// # Errors
    /// As [`Store::records`].
    pub fn records_after(
        &self,
        table: Table,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        use std::ops::Bound;
        let engine = self.shared().engine().ok_or(StoreError::Unavailable)?;
        let keyspace = engine.ks(table.ks());
        let start = after.map_or(Bound::Unbounded, |k| Bound::Excluded(k.to_vec()));
        collect(keyspace, keyspace.range::<Vec<u8>, _>((start, Bound::Unbounded)).take(limit))
    }

    /// Up to `limit` records of `table` whose keys come before `before` (from the last if `None`), in
    /// reverse key order: the newest first, for tables keyed by time.
    ///
    /// # Errors
    /// As [`Store::records`].
    pub fn records_before(
        &self,
        table: Table,
        before: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        use std::ops::Bound;
        let engine = self.shared().engine().ok_or(StoreError::Unavailable)?;
        let keyspace = engine.ks(table.ks());
        let end = before.map_or(Bound::Unbounded, |k| Bound::Excluded(k.to_vec()));
        collect(keyspace, keyspace.range::<Vec<u8>, _>((Bound::Unbounded, end)).rev().take(limit))
    }

    /// The record `key` of `table`, if there is one.
    ///
    /// # Errors
    /// As [`Store::records`].
    pub fn record(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let engine = self.shared().engine().ok_or(StoreError::Unavailable)?;
        let keyspace = engine.ks(table.ks());
        let value = keyspace.get(key).map_err(|e| StoreError::reading(e, keyspace.path()))?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.shared().config.path
    }

    /// The number of fsyncs the committer has done: with group commit, far fewer than the number of
    /// [`Store::on_durable`] waiters.
    pub fn syncs(&self) -> u64 {
        self.shared().syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How long the group commits took: each sync of the committer that had writes to make
    /// durable, from handing the journal to the OS to the end of its fsync (what a durability
    /// waiter waits for, besides its turn).
    pub fn commit_latency(&self) -> Latency {
        self.shared().commit_latency.snapshot()
    }
}

/// The records an iteration over `keyspace` yields, copied out.
fn collect(
    keyspace: &fjall::Keyspace,
    items: impl Iterator<Item = fjall::Guard>,
) -> Result<Vec<Record>, StoreError> {
    items
        .map(|item| {
            let (key, value) = item.into_inner().map_err(|e| StoreError::reading(e, keyspace.path()))?;
            Ok((key.to_vec(), value.to_vec()))
        })
        .collect()
}

/// Bytes allocated on disk for the files under `path`.
fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => dir_size(&entry.path()),
            Ok(m) => allocated(&m),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(unix)]
fn allocated(m: &std::fs::Metadata) -> u64 {
    // Journals are preallocated sparse files: their length says nothing of the space they take.
    std::os::unix::fs::MetadataExt::blocks(m) * 512
}

#[cfg(not(unix))]
fn allocated(m: &std::fs::Metadata) -> u64 {
    m.len()
}
