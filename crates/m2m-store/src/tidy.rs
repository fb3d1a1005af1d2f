//! The tidy thread: gives back the disk space of delivered messages.
//!
//! Every delivered message leaves a tombstone for its delivery and its flight state. The engine's own
//! compactions drop tombstones only once they reach the last level, so a node that queued and
//! delivered a large backlog keeps tables of tombstones long after its queues are empty. Every
//! [`StoreConfig::tidy_interval`](crate::StoreConfig::tidy_interval) the tidy thread compares the
//! table space of those keyspaces with an estimate of the deliveries still stored, and compacts a
//! keyspace fully when the tables are much larger than what lives in them.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use fjall::Keyspace;

use crate::engine::{Engine, Ks, META_TIDIED_AT};
use crate::store::Shared;
use crate::unix_ms;

/// Bytes per stored flight state (key and value), for the estimate of what the flight keyspace holds.
const FLIGHT_BYTES: u64 = 48;
/// Bytes per stored delivery before any was written: key, topic and a small payload.
const DELIVERY_BYTES: u64 = 256;

/// Starts the tidy thread.
pub(crate) fn spawn(shared: Arc<Shared>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("m2m-store-tidy".into()).spawn(move || run(&shared))
}

const TIDIED: [Ks; 2] = [Ks::Deliveries, Ks::Flight];

fn run(shared: &Shared) {
    let interval = shared.config.tidy_interval;
    // Keyspaces compacted on the last tick. The engine deletes the files a compaction replaced only
    // at a later flush or compaction of that keyspace, which an idle node may not have for hours:
    // they are compacted once more (now small, so quickly) on the next tick.
    let mut again = [false; TIDIED.len()];
    while shared.tidy_wait(interval) {
        let Some(engine) = shared.engine().filter(|_| shared.is_healthy()) else { continue };
        again = tidy(shared, &engine, again);
    }
}

/// Compacts the deliveries and flight keyspaces whose tables hold far more than the live estimate,
/// and those in `again`; returns the ones compacted because of their size.
fn tidy(shared: &Shared, engine: &Engine, again: [bool; TIDIED.len()]) -> [bool; TIDIED.len()] {
    let live = shared.deliveries.load(Ordering::Relaxed).max(0) as u64;
    let puts = shared.delivery_puts.load(Ordering::Relaxed);
    let per_delivery =
        shared.delivery_bytes.load(Ordering::Relaxed).checked_div(puts).unwrap_or(DELIVERY_BYTES);
    let mut oversized = [false; TIDIED.len()];
    let mut sizes = [(0, 0); TIDIED.len()];
    for (i, (ks, per)) in TIDIED.into_iter().zip([per_delivery, FLIGHT_BYTES]).enumerate() {
        let size = engine.ks(ks).disk_space();
        let needed = live.saturating_mul(per);
        sizes[i] = (size, needed);
        oversized[i] = size >= shared.config.tidy_min_bytes && size >= needed.saturating_mul(2);
        tracing::trace!(
            keyspace = ks.name(),
            size,
            live_estimate = needed,
            compact = oversized[i],
            "store tidy"
        );
    }
    // Compacting again is for the files of an idle keyspace that is small now; a large one is being
    // written to, and its next flush lets the engine delete them.
    let again: Vec<bool> =
        again.iter().zip(&sizes).map(|(a, (size, _))| *a && *size < shared.config.tidy_min_bytes).collect();
    if oversized.iter().chain(&again).all(|c| !c) {
        return oversized;
    }
    // A compaction reads what the engine wrote; a damaged table must not take the node down.
    let flushed = catch_unwind(AssertUnwindSafe(|| flush_all(shared, engine)));
    if !matches!(flushed, Ok(Ok(()))) {
        tracing::warn!("store tidy: flushing the write buffers failed; will try again");
        return oversized;
    }
    for (i, ks) in TIDIED.into_iter().enumerate().filter(|(i, _)| oversized[*i] || again[*i]) {
        let keyspace = engine.ks(ks);
        let started = Instant::now();
        match catch_unwind(AssertUnwindSafe(|| keyspace.major_compact())) {
            Ok(Ok(())) => tracing::debug!(
                keyspace = ks.name(),
                before = sizes[i].0,
                after = keyspace.disk_space(),
                live_estimate = sizes[i].1,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "store compacted"
            ),
            Ok(Err(e)) => tracing::warn!(keyspace = ks.name(), error = %e, "store compaction failed"),
            Err(_) => tracing::error!(keyspace = ks.name(), "store compaction panicked"),
        }
    }
    oversized
}

/// Writes every keyspace's memtable to a table: the tombstones still in memory go into the
/// compaction, and the journals they kept alive can go. Before that, a small write to the meta
/// keyspace makes sure at least one memtable is rotated, which is when the engine moves up the
/// watermark below which it drops table versions no reader can see (and deletes the files a
/// compaction replaced).
fn flush_all(shared: &Shared, engine: &Engine) -> fjall::Result<()> {
    engine.ks(Ks::Meta).insert(META_TIDIED_AT, unix_ms(SystemTime::now()).to_be_bytes())?;
    for ks in Ks::ALL {
        flush(shared, engine.ks(ks))?;
    }
    Ok(())
}

/// Writes the keyspace's memtable to a table and waits (up to a minute, while the store is healthy)
/// for the flush.
fn flush(shared: &Shared, keyspace: &Keyspace) -> fjall::Result<()> {
    if keyspace.rotate_memtable()? {
        let started = Instant::now();
        while keyspace.sealed_memtable_count() > 0
            && shared.is_healthy()
            && started.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}
