//! The embedded durable state of an m2m node: sessions that outlive their connection, their queued
//! and in-flight messages, incoming QoS 2 packet ids, retained messages and wills, in one
//! [fjall](https://docs.rs/fjall) database.
//!
//! # Layout
//! - [`Store`]: opens the database and reads it back ([`Recovered`]), hands out [`Batch`]es, and
//!   tells writers when their writes are durable ([`Store::on_durable`], [`Store::durable`]).
//! - [`Batch`]: writes collected by the caller and committed atomically.
//! - [`SessionRecord`], [`WillRecord`], [`Phase`]: what is stored besides `m2m-session`'s
//!   [`Message`](m2m_session::Message) and [`Delivery`](m2m_session::Delivery).
//! - [`Latency`]: how long group commits take ([`Store::commit_latency`]), in fixed buckets.
//!
//! The store does not decide what to keep: the router says what to write and when. It reads nothing
//! back after [`Store::open`].
//!
//! # On disk
//! One fjall database in [`StoreConfig::path`], with one keyspace per kind of record:
//!
//! ```text
//! keyspace    key                                         value
//! meta        "version"                                   format version, u32 BE (1)
//!             "alive_at"                                  last heartbeat, unix ms u64 BE
//! sessions    client id                                   SessionRecord
//! deliveries  len u16 BE | client id | seq u64 BE         Delivery (message included)
//! flight      len u16 BE | client id | seq u64 BE         packet id u16 BE | phase u8
//! incoming    len u16 BE | client id | packet id u16 BE   (none)
//! retained    topic                                       Message
//! wills       client id                                   WillRecord
//! ```
//!
//! The length prefix makes one client's deliveries a key prefix, in sequence order, that no other
//! client id shares (`"a"` and `"ab"` differ in their first two bytes). Values are a compact binary
//! encoding starting with a record version byte; all message properties are kept. Expiry deadlines
//! (`Instant`s in memory) are stored as unix milliseconds and rebuilt as "now + time left".
//!
//! A store whose `meta/version` is higher than this build's is refused
//! ([`StoreError::FutureVersion`]); files that do not read back, or records that do not decode, are
//! [`StoreError::Corrupt`], never a panic. A torn tail of the journal after a crash is not
//! corruption: the engine recovers up to the last whole batch.
//!
//! # Recovery
//! [`Store::open`] reads every record. It deletes, and reports in [`Recovered::dropped_expired`],
//! deliveries and retained messages whose expiry has passed. It deletes orphans without a word:
//! deliveries, flight states and incoming ids of clients without a session record, and flight states
//! without their delivery. Wills are kept whatever their message's expiry.
//!
//! # Group commit
//! [`Batch::commit`] writes the batch to the engine's journal and hands it to the OS, without an
//! fsync. One committer thread makes writes durable. With [`SyncMode::Always`] it takes every waiter
//! queued by [`Store::on_durable`] while the previous fsync ran, makes everything durable once, and
//! calls them all in order: many connections' writes share one fsync. It skips the fsync when no
//! batch was committed since the last one. The fsync does not hold the engine's journal lock:
//! the committer moves the journal's buffer to the OS (a brief lock), then `fdatasync`s the newest
//! journal file through its own file handle, so writers are not stalled for the length of an fsync.
//! With [`SyncMode::Batch`] the committer syncs every interval instead and `on_durable` completes at
//! once. Dropping the last [`Store`] handle stops the thread after a final full sync.
//!
//! # Engine tuning
//! Memtables are [`StoreConfig::memtable_bytes`] (fixed when a keyspace is created: fjall keeps the
//! value it was created with), flushed by two background workers so that a long compaction does not
//! hold up a flush. fjall halts writers in a sleep loop while a keyspace has four sealed memtables
//! waiting for a flush, which never ends if that flush failed; [`Batch::commit`] waits at three
//! instead, checking that the store is still healthy, and fails rather than blocking for good.
//!
//! # Retention
//! Removing a session removes its deliveries, flight states, incoming ids and will; a delivered
//! message's records are removed when its acknowledgement is handled. The engine keeps at most 64 MiB
//! of journal, flushing the memtables that hold the oldest journal alive. Its compactions drop
//! tombstones only at the last level, so a tidy thread compacts the deliveries and flight keyspaces
//! fully when their tables are more than twice what the deliveries still stored need (estimated from
//! the commits' counts and average record size) and above [`StoreConfig::tidy_min_bytes`]; it checks
//! every [`StoreConfig::tidy_interval`].
//!
//! # Faults
//! A failed write or sync (a full disk, an I/O error) makes the store unhealthy
//! ([`Store::is_healthy`]), logged once at `error`: waiters get the error, and [`Batch::commit`]
//! returns [`StoreError::Unavailable`] without writing. The engine refuses all writes once it has
//! failed, so the committer tries about once a second to reopen the database (which replays its
//! journal) and to make a small write durable; when that works the store is healthy again (logged at
//! `warn`). A batch whose commit failed may or may not be found after a restart; batches reported
//! durable are.

mod batch;
mod committer;
mod config;
mod encoding;
mod engine;
mod error;
mod latency;
mod record;
mod recover;
mod series;
mod store;
mod table;
mod tidy;

use std::time::SystemTime;

pub use batch::Batch;
pub use config::{StoreConfig, SyncMode};
pub use error::StoreError;
pub use latency::{Latency, LATENCY_BUCKETS_MS};
pub use record::{Phase, Recovered, RecoveredSession, SessionRecord, StoredDelivery, WillRecord};
pub use series::{SeriesBatch, SeriesIter};
pub use store::{Record, Store};
pub use table::Table;

/// The error type of this crate.
pub type Error = StoreError;

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

// Handed across threads and tasks.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Store>();
    send_sync::<Batch>();
    send_sync::<StoreError>();
};

/// `t` as milliseconds since the unix epoch; 0 for times before it.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
