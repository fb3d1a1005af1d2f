//! History and last values: the messages a node routes, kept as time series in its store, and the
//! queries over them.
//!
//! # Data flow
//! The router hands every message it accepts to [`History`] (a [`Tap`]): a topic matching the
//! configured filters goes into a bounded queue, never blocking the router; a full queue drops the
//! message and counts it as a gap. One writer thread takes everything queued at once and writes it in
//! one batch (group commit): each record keyed by topic id and the node's timestamp, the topic's
//! statistics and last value, and the time span of the segment written to.
//!
//! # Retention
//! Each retention class (a configured filter, or the default) writes into segments: series
//! keyspaces of the store (`history.s.<class>.<seq>`) covering consecutive spans of time. A segment
//! spans at most an eighth of the class's maximum age of its records' time (a day without one), and
//! holds at most an eighth of its maximum size. Once a second the writer drops whole segments: those older than the maximum age, and the
//! oldest while the class takes more than its maximum size. Dropping a keyspace deletes its files at
//! once, with no tombstones for compactions to carry, so retention costs ingest nothing.
//!
//! # Queries
//! A query matches the filter against the known topics (in memory), then reads, for each topic,
//! the range of its records in each segment that overlaps the time range, merged in time order.
//! Aggregates read payloads only as far as the field they extract.
//!
//! # Rollups
//! The writer also keeps, per topic and minute, the count, min, max, sum, first and last of every
//! number at the top level of a payload (the payload itself when it is a number, or each top-level
//! field of a JSON object, at most 16), and the number of messages. They are stored in the same
//! segment as the records (keys with the topic id's top bit set), so retention drops them together.
//! An aggregate of such a field in buckets of whole minutes reads the rollups for the whole minutes
//! of its range and the records only for the partial minutes at its ends.

mod config;
mod field;
mod query;
mod record;
mod rollup;
pub mod time;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use m2m_router::Tap;
use m2m_session::{MemoryBudget, Message};
use m2m_store::{Store, StoreError};
use m2m_topic::{TopicFilter, TopicName};

pub use config::{HistoryConfig, Retention};
pub use field::FieldPath;
pub use query::{
    Agg, AggregateQuery, Bucket, Cursor, Order, Point, Points, Query, TopicSeries, MAX_BUCKETS, MAX_LIMIT,
};
pub use record::Record;

/// The series keyspace of the topics: topic → id, counts, times and last value.
pub(crate) const TOPICS: &str = "history.topics";
/// The series keyspace of segment spans and gaps.
pub(crate) const META: &str = "history.meta";
/// The prefix of segment names.
pub(crate) const SEGMENT_PREFIX: &str = "history.s.";

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// A query or setting that cannot be served as given (an HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record does not decode.
    #[error(transparent)]
    Decode(#[from] record::DecodeError),
}

/// Counters of the history.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages written.
    pub stored: AtomicU64,
    /// Messages dropped because the queue was full (or a write failed).
    pub dropped: AtomicU64,
    /// Batches written.
    pub batches: AtomicU64,
    /// Segments dropped by retention.
    pub segments_dropped: AtomicU64,
}

/// Statistics and the last value of one topic.
#[derive(Debug, Clone)]
pub(crate) struct TopicEntry {
    pub(crate) name: TopicName,
    pub(crate) count: u64,
    pub(crate) first_us: u64,
    pub(crate) last_us: u64,
    /// The stored value of the last message.
    pub(crate) last: Bytes,
}

/// What is known of a topic, for `topics` queries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TopicInfo {
    /// The topic.
    pub topic: String,
    /// Messages kept since it was first seen (older ones may have been deleted by retention).
    pub messages: u64,
    /// The first message's time (µs since the epoch).
    pub first_us: u64,
    /// The last message's time.
    pub last_us: u64,
}

/// A segment: the records of one retention class over a span of time.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub(crate) name: Arc<str>,
    pub(crate) class: String,
    pub(crate) seq: u64,
    pub(crate) start_us: u64,
    pub(crate) end_us: u64,
    pub(crate) records: u64,
    /// Bytes of its keys and values (before compression): what size retention counts.
    pub(crate) bytes: u64,
}

/// Messages dropped because the queue was full, over a span of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    /// When the first was dropped (µs since the epoch).
    pub from_us: u64,
    /// When the writer caught up.
    pub to_us: u64,
    /// How many were dropped.
    pub dropped: u64,
}

/// What queries read: topics by id, segments, gaps. Written by the writer once per batch.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    pub(crate) topics: Vec<Option<TopicEntry>>,
    pub(crate) segments: Vec<Segment>,
    pub(crate) gaps: Vec<Gap>,
    /// Ids of the fields the per-minute rollups know, by name (`""`: the payload itself).
    pub(crate) fields: std::collections::HashMap<String, u16>,
}

/// A retention class.
#[derive(Debug, Clone)]
pub(crate) struct Class {
    pub(crate) name: String,
    pub(crate) filter: Option<TopicFilter>,
    pub(crate) max_age_us: Option<u64>,
    pub(crate) max_bytes: Option<u64>,
    /// A segment is closed after this long...
    pub(crate) period_us: u64,
    /// ...or at this size.
    pub(crate) segment_bytes: Option<u64>,
}

impl Class {
    fn new(
        name: String,
        filter: Option<TopicFilter>,
        max_age: Option<Duration>,
        max_bytes: Option<u64>,
    ) -> Self {
        let max_age_us = max_age.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let period_us = max_age_us.map_or(86_400_000_000, |a| (a / 8).clamp(1_000_000, 86_400_000_000));
        Self {
            name,
            filter,
            max_age_us,
            max_bytes,
            period_us,
            segment_bytes: max_bytes.map(|b| (b / 8).max(1)),
        }
    }
}

/// The name of the retention class of `filter`: stable across restarts and reorderings.
fn class_name(filter: &str) -> String {
    // FNV-1a, 32 bits.
    let mut h: u32 = 0x811c_9dc5;
    for b in filter.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("r{h:08x}")
}

/// The queue between the router and the writer.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub(crate) items: Vec<(Arc<Message>, u64)>,
    /// Dropped since the writer last took the queue, and when the first of them was.
    pub(crate) dropped: u64,
    pub(crate) dropped_since_us: u64,
    /// Messages accepted into the queue, and handled by the writer, since the start.
    pub(crate) accepted: u64,
    pub(crate) handled: u64,
    /// Callers of [`History::flush`] waiting: the writer does not wait to fill a batch.
    pub(crate) flush_wanted: usize,
    pub(crate) stop: bool,
}

/// What the writer, the router's tap and queries share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) config: HistoryConfig,
    pub(crate) filters: Vec<TopicFilter>,
    /// The classes of the retention entries, in order, then the default one.
    pub(crate) classes: Vec<Class>,
    pub(crate) pending: Mutex<Pending>,
    /// Wakes the writer.
    pub(crate) ready: Condvar,
    /// Wakes those waiting in [`History::flush`].
    pub(crate) handled: Condvar,
    pub(crate) catalog: RwLock<Catalog>,
    pub(crate) stats: Stats,
    /// The node's memory budget, charged with every message queued for the writer.
    pub(crate) budget: std::sync::OnceLock<Arc<MemoryBudget>>,
}

impl Shared {
    pub(crate) fn catalog(&self) -> RwLockReadGuard<'_, Catalog> {
        self.catalog.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether messages on `topic` are kept.
    fn captures(&self, topic: &TopicName) -> bool {
        self.filters.iter().any(|f| f.matches(topic))
    }
}

/// Stops the writer (after it wrote what was queued) when the last [`History`] goes away.
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.lock_pending().stop = true;
        self.shared.ready.notify_all();
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("history writer thread panicked");
            }
        }
    }
}

/// The history of a node. Cheap to clone; the writer stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct History {
    handle: Arc<Handle>,
}

impl History {
    /// Opens the history kept in `store` (reading its topics, segments and gaps) and starts the writer.
    ///
    /// # Errors
    /// A bad setting ([`HistoryError::BadRequest`]); a store or decoding error.
    pub fn open(store: Store, config: HistoryConfig) -> Result<Self, HistoryError> {
        config.validate().map_err(HistoryError::BadRequest)?;
        let parse = |f: &str| TopicFilter::try_from(f).map_err(|e| HistoryError::BadRequest(e.to_string()));
        let filters = config.filters.iter().map(|f| parse(f)).collect::<Result<Vec<_>, _>>()?;
        let mut classes = Vec::new();
        for r in &config.retention {
            classes.push(Class::new(class_name(&r.filter), Some(parse(&r.filter)?), r.max_age, r.max_bytes));
        }
        classes.push(Class::new("default".into(), None, config.max_age, config.max_bytes));
        let catalog = writer::load(&store)?;
        tracing::info!(
            topics = catalog.topics.iter().flatten().count(),
            segments = catalog.segments.len(),
            filters = ?config.filters,
            "history opened"
        );
        let shared = Arc::new(Shared {
            store,
            config,
            filters,
            classes,
            pending: Mutex::new(Pending::default()),
            ready: Condvar::new(),
            handled: Condvar::new(),
            catalog: RwLock::new(catalog),
            stats: Stats::default(),
            budget: std::sync::OnceLock::new(),
        });
        let writer = writer::spawn(shared.clone()).map_err(|e| StoreError::Io(Arc::new(e)))?;
        Ok(Self { handle: Arc::new(Handle { shared, writer: Some(writer) }) })
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Waits (at most `timeout`) until every message captured before the call is written; `false` on
    /// timeout. For tests and tools: queries never wait.
    pub fn flush(&self, timeout: Duration) -> bool {
        let shared = self.shared();
        let mut pending = shared.lock_pending();
        let target = pending.accepted;
        let deadline = std::time::Instant::now() + timeout;
        pending.flush_wanted += 1;
        let mut done = true;
        while pending.handled < target {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                done = false;
                break;
            }
            shared.ready.notify_one();
            pending = shared
                .handled
                .wait_timeout(pending, left.min(Duration::from_millis(50)))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        pending.flush_wanted -= 1;
        done
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.shared().stats
    }

    /// Messages waiting to be written.
    pub fn queued(&self) -> usize {
        self.shared().lock_pending().items.len()
    }

    /// Bytes the history's table files take on disk (write buffers not included).
    pub fn disk_bytes(&self) -> u64 {
        let shared = self.shared();
        let names: Vec<Arc<str>> = shared.catalog().segments.iter().map(|s| s.name.clone()).collect();
        names.iter().map(|n| shared.store.series_space(n)).sum::<u64>()
            + shared.store.series_space(TOPICS)
            + shared.store.series_space(META)
    }

    /// The known topics matching `filter`, in topic order.
    ///
    /// # Errors
    /// A bad filter.
    pub fn topics(&self, filter: &str) -> Result<Vec<TopicInfo>, HistoryError> {
        let filter = query::parse_filter(filter)?;
        let catalog = self.shared().catalog();
        let mut out: Vec<TopicInfo> = catalog
            .topics
            .iter()
            .flatten()
            .filter(|t| filter.matches(&t.name))
            .map(|t| TopicInfo {
                topic: t.name.as_str().to_owned(),
                messages: t.count,
                first_us: t.first_us,
                last_us: t.last_us,
            })
            .collect();
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        Ok(out)
    }

    /// The last message of every topic matching `filter`, in topic order.
    ///
    /// # Errors
    /// A bad filter; a stored value that does not decode.
    pub fn latest(&self, filter: &str) -> Result<Vec<Point>, HistoryError> {
        let filter = query::parse_filter(filter)?;
        let found: Vec<(Arc<str>, u64, Bytes)> = {
            let catalog = self.shared().catalog();
            catalog
                .topics
                .iter()
                .flatten()
                .filter(|t| filter.matches(&t.name))
                .map(|t| (t.name.as_arc().clone(), t.last_us, t.last.clone()))
                .collect()
        };
        let mut out = found
            .into_iter()
            .map(|(topic, ts_us, value)| Ok(Point { topic, ts_us, record: record::decode(value)? }))
            .collect::<Result<Vec<_>, HistoryError>>()?;
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        Ok(out)
    }

    /// The gaps (messages dropped because the writer fell behind) overlapping `[from_us, to_us)`.
    pub fn gaps(&self, from_us: u64, to_us: u64) -> Vec<Gap> {
        self.shared()
            .catalog()
            .gaps
            .iter()
            .filter(|g| g.from_us < to_us && g.to_us >= from_us)
            .copied()
            .collect()
    }
}

impl History {
    /// Charges the messages waiting to be written to `budget`; past it, they are dropped and recorded
    /// as a gap, as when the queue is full. Set once; later calls change nothing.
    pub fn set_budget(&self, budget: Arc<MemoryBudget>) {
        let _ = self.shared().budget.set(budget);
    }
}

impl History {
    /// Queues `message` as received at `ts_us` (µs since the epoch), to bring in data recorded
    /// elsewhere. Per topic, records must come in time order: one not after the topic's last record
    /// is stored 1 µs after it. Topics outside the filters are ignored (`true`). `false` when the
    /// queue is full (nothing was taken; [`History::flush`] and try again).
    pub fn import(&self, message: &Arc<Message>, ts_us: u64) -> bool {
        let shared = self.shared();
        if !shared.captures(&message.topic) {
            return true;
        }
        let mut pending = shared.lock_pending();
        if pending.items.len() >= shared.config.queue_capacity {
            return false;
        }
        if let Some(budget) = shared.budget.get() {
            budget.charge(message.held_bytes());
        }
        let was_empty = pending.items.is_empty();
        pending.items.push((message.clone(), ts_us));
        pending.accepted += 1;
        drop(pending);
        if was_empty {
            shared.ready.notify_one();
        }
        true
    }
}

impl Tap for History {
    fn message(&self, message: &Arc<Message>) {
        let shared = self.shared();
        if !shared.captures(&message.topic) {
            return;
        }
        let now = time::now_us();
        let mut pending = shared.lock_pending();
        let fits = || shared.budget.get().is_none_or(|b| b.try_charge(message.held_bytes()));
        if pending.items.len() >= shared.config.queue_capacity || !fits() {
            if pending.dropped == 0 {
                pending.dropped_since_us = now;
            }
            pending.dropped += 1;
            shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was_empty = pending.items.is_empty();
        pending.items.push((message.clone(), now));
        pending.accepted += 1;
        drop(pending);
        if was_empty {
            shared.ready.notify_one();
        }
    }

    fn sys_values(&self, out: &mut Vec<(&'static str, String)>) {
        let stats = self.stats();
        out.push(("history/stored", stats.stored.load(Ordering::Relaxed).to_string()));
        out.push(("history/dropped", stats.dropped.load(Ordering::Relaxed).to_string()));
        out.push(("history/queued", self.queued().to_string()));
        out.push(("history/topics", self.shared().catalog().topics.iter().flatten().count().to_string()));
    }
}
