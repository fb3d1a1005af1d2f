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
use std::time::Instant;

use crate::engine::{Engine, Ks};
use crate::store::Shared;

/// Bytes per stored flight state (key and value), for the estimate of what the flight keyspace holds.
const FLIGHT_BYTES: u64 = 48;
/// Bytes per stored delivery before any was written: key, topic and a small payload.
const DELIVERY_BYTES: u64 = 256;

/// Starts the tidy thread.
pub(crate) fn spawn(shared: Arc<Shared>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("m2m-store-tidy".into()).spawn(move || run(&shared))
}

fn run(shared: &Shared) {
    let interval = shared.config.tidy_interval;
    while shared.tidy_wait(interval) {
        let Some(engine) = shared.engine().filter(|_| shared.is_healthy()) else { continue };
        tidy(shared, &engine);
    }
}

/// Compacts the deliveries and flight keyspaces whose tables hold far more than the live estimate.
fn tidy(shared: &Shared, engine: &Engine) {
    let live = shared.deliveries.load(Ordering::Relaxed).max(0) as u64;
    let puts = shared.delivery_puts.load(Ordering::Relaxed);
    let per_delivery =
        shared.delivery_bytes.load(Ordering::Relaxed).checked_div(puts).unwrap_or(DELIVERY_BYTES);
    for (ks, per) in [(Ks::Deliveries, per_delivery), (Ks::Flight, FLIGHT_BYTES)] {
        let keyspace = engine.ks(ks);
        let before = keyspace.disk_space();
        let needed = live.saturating_mul(per);
        if before < shared.config.tidy_min_bytes || before < needed.saturating_mul(2) {
            continue;
        }
        let started = Instant::now();
        // A compaction reads what the engine wrote; a damaged table must not take the node down.
        match catch_unwind(AssertUnwindSafe(|| keyspace.major_compact())) {
            Ok(Ok(())) => tracing::debug!(
                keyspace = ks.name(),
                before,
                after = keyspace.disk_space(),
                live_estimate = needed,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "store compacted"
            ),
            Ok(Err(e)) => tracing::warn!(keyspace = ks.name(), error = %e, "store compaction failed"),
            Err(_) => tracing::error!(keyspace = ks.name(), "store compaction panicked"),
        }
    }
}
