//! The committer thread: group commit, periodic sync, and reopening the database after a failure.

use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fjall::PersistMode;

use crate::config::SyncMode;
use crate::engine::Engine;
use crate::error::StoreError;
use crate::store::{Shared, Waiter};

/// How often an idle committer checks that the engine still works, and how often an unhealthy
/// store tries to reopen its database.
const TICK: Duration = Duration::from_secs(1);

/// Starts the committer thread.
pub(crate) fn spawn(shared: Arc<Shared>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("m2m-store-sync".into()).spawn(move || Committer::new(shared).run())
}

/// The newest journal file, opened by the committer to fsync it without holding the engine's journal
/// lock.
struct JournalFile {
    id: u64,
    file: File,
}

struct Committer {
    shared: Arc<Shared>,
    /// The value of `shared.committed` covered by the last successful sync.
    synced: u64,
    journal: Option<JournalFile>,
}

impl Committer {
    fn new(shared: Arc<Shared>) -> Self {
        Self { shared, synced: 0, journal: None }
    }

    fn run(mut self) {
        let interval = match self.shared.config.sync {
            SyncMode::Always => TICK,
            SyncMode::Batch(every) => every.max(Duration::from_millis(1)),
        };
        let mut next_tick = Instant::now() + interval;
        let mut next_reopen = Instant::now();
        let mut was_healthy = true;
        loop {
            let (waiters, stop) = {
                let mut queue = self.shared.lock_queue();
                while queue.waiters.is_empty() && !queue.stop {
                    let now = Instant::now();
                    if now >= next_tick {
                        break;
                    }
                    queue = match self.shared.wake.wait_timeout(queue, next_tick - now) {
                        Ok((queue, _)) => queue,
                        Err(poisoned) => poisoned.into_inner().0,
                    };
                }
                (std::mem::take(&mut queue.waiters), queue.stop)
            };
            let now = Instant::now();
            let ticked = now >= next_tick;
            if ticked {
                next_tick = now + interval;
            }

            let healthy = self.shared.is_healthy();
            if was_healthy && !healthy {
                // A writer saw the failure: give the disk a moment before the first reopen.
                next_reopen = now + TICK;
            }
            was_healthy = healthy;
            if !healthy {
                finish(waiters, &Err(StoreError::Unavailable));
                if stop {
                    break;
                }
                if now >= next_reopen {
                    was_healthy = self.reopen();
                    next_reopen = Instant::now() + TICK;
                }
                continue;
            }

            let result = if waiters.is_empty() && !ticked && !stop { Ok(()) } else { self.sync(ticked) };
            if let Err(e) = &result {
                self.shared.fault(e);
                was_healthy = false;
                next_reopen = Instant::now() + TICK;
            }
            finish(waiters, &result);
            if stop {
                break;
            }
        }
        self.shutdown();
    }

    /// Makes everything committed so far durable, unless nothing was committed since the last sync.
    /// With `probe`, an idle store still checks that the engine is not poisoned (a failed flush).
    fn sync(&mut self, probe: bool) -> Result<(), StoreError> {
        let engine = self.shared.engine().ok_or(StoreError::Unavailable)?;
        // Read after the waiters were taken: every batch they wait for is counted.
        let committed = self.shared.committed.load(Ordering::Acquire);
        if committed == self.synced {
            if probe {
                engine.db.persist(PersistMode::Buffer).map_err(StoreError::writing)?;
            }
            return Ok(());
        }
        let started = Instant::now();
        // Moves the journal's user-space buffer to the OS, under the journal lock but briefly;
        // `persist(SyncData)` would hold that lock (and stall every writer) for the whole fsync.
        engine.db.persist(PersistMode::Buffer).map_err(StoreError::writing)?;
        self.fsync_journal(&engine)?;
        self.shared.commit_latency.record(started.elapsed());
        self.synced = committed;
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// fdatasyncs the newest journal through the committer's own file handle.
    ///
    /// Listed after `persist(Buffer)`: a journal rotation syncs the old journal before creating the
    /// next, so the newest file found now holds whatever the old ones did not make durable.
    fn fsync_journal(&mut self, engine: &Engine) -> Result<(), StoreError> {
        let dir = self.shared.config.path.as_path();
        let newest = match &self.journal {
            // A rotation creates `<id + 1>.jnl`: one `stat` notices it.
            Some(j) => Some(successor(dir, j.id)),
            None => newest_journal(dir)?,
        };
        let Some(id) = newest else {
            return engine.db.persist(PersistMode::SyncData).map_err(StoreError::writing);
        };
        let journal = match self.journal.take() {
            Some(j) if j.id == id => j,
            _ => match File::open(dir.join(format!("{id}.jnl"))) {
                Ok(file) => JournalFile { id, file },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return engine.db.persist(PersistMode::SyncData).map_err(StoreError::writing);
                }
                Err(e) => return Err(e.into()),
            },
        };
        journal.file.sync_data()?;
        self.journal = Some(journal);
        Ok(())
    }

    /// Replaces a failed database: drops it (the engine refuses writes once poisoned) and opens it
    /// again, which replays its journal; healthy again once a probe write is durable. Returns whether
    /// that worked.
    fn reopen(&mut self) -> bool {
        self.journal = None;
        drop(self.shared.set_engine(None));
        // A writer that still holds the old database keeps its lock file; the open then fails with
        // `Locked` and is tried again on the next tick.
        let opened =
            Engine::open(&self.shared.config).and_then(|engine| engine.probe_write().map(|()| engine));
        match opened {
            Ok(engine) => {
                self.synced = self.shared.committed.load(Ordering::Acquire);
                self.shared.set_engine(Some(Arc::new(engine)));
                self.shared.recovered();
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "store still unavailable");
                false
            }
        }
    }

    /// Makes everything durable and closes the database.
    fn shutdown(self) {
        if self.shared.is_healthy() {
            if let Some(engine) = self.shared.engine() {
                if let Err(e) = engine.db.persist(PersistMode::SyncAll) {
                    tracing::error!(error = ?e, "store sync at shutdown failed");
                }
            }
        }
        drop(self.shared.set_engine(None));
    }
}

/// Calls every waiter, in order, with `result`. A panicking waiter is logged and does not stop the
/// others or the committer.
fn finish(waiters: Vec<Waiter>, result: &Result<(), StoreError>) {
    for waiter in waiters {
        let r = result.clone();
        if catch_unwind(AssertUnwindSafe(move || waiter(r))).is_err() {
            tracing::error!("a store durability callback panicked");
        }
    }
}

/// The id of the newest journal, starting from journal `id`.
fn successor(dir: &Path, mut id: u64) -> u64 {
    while dir.join(format!("{}.jnl", id + 1)).exists() {
        id += 1;
    }
    id
}

/// The id of the newest journal file (`<id>.jnl`) in `dir`.
fn newest_journal(dir: &Path) -> std::io::Result<Option<u64>> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let id = name.to_str().and_then(|n| n.strip_suffix(".jnl")).and_then(|n| n.parse::<u64>().ok());
        newest = newest.max(id);
    }
    Ok(newest)
}
