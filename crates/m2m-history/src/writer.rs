//! The writer thread: takes what the router queued, writes it in one batch, keeps the catalog, and
//! enforces retention.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use m2m_session::Message;
use m2m_store::{SeriesBatch, Store, StoreError};
use m2m_topic::TopicName;

use crate::record::{encode, key, BlockWriter};
use crate::rollup::{self, Minute};
use crate::time::{now_us, parse_time};
use crate::{
    Catalog, Class, FieldPath, Gap, HistoryError, Segment, Shared, TopicEntry, META, SEGMENT_PREFIX, TOPICS,
};

/// How often retention and segment closing are checked.
const MAINTENANCE: Duration = Duration::from_secs(1);
/// The writer takes the queue at most this often (unless it is half full): what a query may miss of
/// the newest messages.
const BATCH_INTERVAL: Duration = Duration::from_millis(50);

const SEG_KEY: &[u8] = b"seg/";
const GAP_KEY: &[u8] = b"gap/";
const FIELD_KEY: &[u8] = b"fld/";

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn encode_topic(id: u32, t: &TopicEntry) -> Vec<u8> {
    let mut v = Vec::with_capacity(28 + t.last.len());
    v.extend_from_slice(&id.to_be_bytes());
    for n in [t.count, t.first_us, t.last_us] {
        v.extend_from_slice(&n.to_be_bytes());
    }
    v.extend_from_slice(&t.last);
    v
}

fn encode_segment(s: &Segment) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 + s.class.len());
    for n in [s.start_us, s.end_us, s.records, s.bytes] {
        v.extend_from_slice(&n.to_be_bytes());
    }
    v.extend_from_slice(s.class.as_bytes());
    v
}

fn segment_key(name: &str) -> Vec<u8> {
    [SEG_KEY, name.as_bytes()].concat()
}

fn gap_key(from_us: u64) -> Vec<u8> {
    [GAP_KEY, &from_us.to_be_bytes()[..]].concat()
}

/// `(class, seq)` of a segment name `history.s.<class>.<seq>`.
fn parse_segment_name(name: &str) -> Option<(String, u64)> {
    let rest = name.strip_prefix(SEGMENT_PREFIX)?;
    let (class, seq) = rest.rsplit_once('.')?;
    Some((class.to_owned(), seq.parse().ok()?))
}

/// Reads the catalog back from the store.
pub(crate) fn load(store: &Store) -> Result<Catalog, HistoryError> {
    use std::ops::Bound::Unbounded;
    let corrupt = |what: &str| {
        HistoryError::Store(StoreError::Corrupt {
            path: store.path().to_owned(),
            detail: format!("history: {what}"),
        })
    };
    let mut catalog = Catalog::default();
    for item in store.series_range(TOPICS, (Unbounded, Unbounded))? {
        let (k, v) = item?;
        let name = std::str::from_utf8(&k)
            .ok()
            .and_then(|s| TopicName::try_from(s).ok())
            .ok_or_else(|| corrupt("a topic record has a bad name"))?;
        let id = v
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| corrupt("a topic record is truncated"))?;
        let (Some(count), Some(first_us), Some(last_us)) = (u64_at(&v, 4), u64_at(&v, 12), u64_at(&v, 20))
        else {
            return Err(corrupt("a topic record is truncated"));
        };
        let entry = TopicEntry { name, count, first_us, last_us, last: Bytes::copy_from_slice(&v[28..]) };
        let at = id as usize;
        if catalog.topics.len() <= at {
            catalog.topics.resize(at + 1, None);
        }
        catalog.topics[at] = Some(entry);
    }
    let existing: Vec<String> =
        store.series_names()?.into_iter().filter(|n| n.starts_with(SEGMENT_PREFIX)).collect();
    let mut spans: HashMap<String, (u64, u64, u64, u64)> = HashMap::new();
    for item in store.series_range(META, (Unbounded, Unbounded))? {
        let (k, v) = item?;
        if let Some(name) = k.strip_prefix(SEG_KEY) {
            let (Some(start), Some(end), Some(records), Some(bytes)) =
                (u64_at(&v, 0), u64_at(&v, 8), u64_at(&v, 16), u64_at(&v, 24))
            else {
                return Err(corrupt("a segment record is truncated"));
            };
            spans.insert(String::from_utf8_lossy(name).into_owned(), (start, end, records, bytes));
        } else if let Some(name) = k.strip_prefix(FIELD_KEY) {
            let id = v.get(..2).and_then(|b| b.try_into().ok()).map(u16::from_be_bytes);
            let (Ok(name), Some(id)) = (std::str::from_utf8(name), id) else {
                return Err(corrupt("a field record is malformed"));
            };
            catalog.fields.insert(name.to_owned(), id);
        } else if let Some(from) = k.strip_prefix(GAP_KEY) {
            let (Some(from_us), Some(to_us), Some(dropped)) = (u64_at(from, 0), u64_at(&v, 0), u64_at(&v, 8))
            else {
                return Err(corrupt("a gap record is truncated"));
            };
            catalog.gaps.push(Gap { from_us, to_us, dropped });
        }
    }
    for name in existing {
        let Some((class, seq)) = parse_segment_name(&name) else { continue };
        // A segment created just before a crash may have no span yet: it may hold anything.
        let (start_us, end_us, records, bytes) = spans.get(&name).copied().unwrap_or((0, u64::MAX, 0, 0));
        catalog.segments.push(Segment {
            name: Arc::from(name.as_str()),
            class,
            seq,
            start_us,
            end_us,
            records,
            bytes,
        });
    }
    catalog.segments.sort_by_key(|s| s.seq);
    Ok(catalog)
}

pub(crate) fn spawn(shared: Arc<Shared>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("m2m-history".into()).spawn(move || Writer::new(shared).run())
}

/// How a topic is kept.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u32,
    class: usize,
    last_us: u64,
}

/// The segment a class writes to now.
#[derive(Debug, Clone)]
struct Current {
    name: Arc<str>,
    start_us: u64,
    /// Bytes of keys and values written to it by this writer (before compression): it is closed
    /// when they reach the class's segment size, so that no segment grows far past it.
    written: u64,
}

struct Writer {
    shared: Arc<Shared>,
    slots: HashMap<Arc<str>, Slot>,
    next_id: u32,
    next_seq: u64,
    current: Vec<Option<Current>>,
    timestamp_field: Option<FieldPath>,
    /// Write failures are logged once until a write succeeds again.
    failing: bool,
    buffer: Vec<u8>,
    /// Each topic's rollups of its current minute.
    rollups: HashMap<u32, Minute>,
    /// Rollup field ids by name, and the next free one.
    fields: HashMap<String, u16>,
    next_field: u16,
    /// Topics' last times when the writer started: a minute up to it may have rollups stored
    /// already (before a restart), to be added to.
    seed: HashMap<u32, u64>,
}

impl Writer {
    fn new(shared: Arc<Shared>) -> Self {
        let (slots, next_id, next_seq, current) = {
            let catalog = shared.catalog();
            let mut slots = HashMap::new();
            for (id, t) in catalog.topics.iter().enumerate() {
                if let Some(t) = t {
                    let class = class_of(&shared.classes, &t.name);
                    slots.insert(t.name.as_arc().clone(), Slot { id: id as u32, class, last_us: t.last_us });
                }
            }
            let next_seq = catalog.segments.iter().map(|s| s.seq + 1).max().unwrap_or(1);
            // Go on writing into the newest segment of each class, if it is still open.
            let current = shared
                .classes
                .iter()
                .map(|c| {
                    catalog.segments.iter().rev().find(|s| s.class == c.name).map(|s| Current {
                        name: s.name.clone(),
                        start_us: s.start_us,
                        written: s.bytes,
                    })
                })
                .collect();
            (slots, u32::try_from(catalog.topics.len()).unwrap_or(u32::MAX), next_seq, current)
        };
        let timestamp_field = shared.config.timestamp_field.as_deref().and_then(|f| FieldPath::parse(f).ok());
        let fields = shared.catalog().fields.clone();
        let seed = slots.values().map(|s| (s.id, s.last_us)).collect();
        let next_field = fields.values().max().map_or(1, |m| m.saturating_add(1));
        Self {
            shared,
            slots,
            next_id,
            next_seq,
            current,
            timestamp_field,
            failing: false,
            buffer: Vec::new(),
            rollups: HashMap::new(),
            fields,
            next_field,
            seed,
        }
    }

    fn run(mut self) {
        let mut next_maintenance = Instant::now() + MAINTENANCE;
        let mut last_batch = Instant::now();
        loop {
            let (items, dropped, stop) = {
                let mut pending = self.shared.lock_pending();
                while pending.items.is_empty() && pending.dropped == 0 && !pending.stop {
                    let left = next_maintenance.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    pending = self
                        .shared
                        .ready
                        .wait_timeout(pending, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                // Batches at most every BATCH_INTERVAL: the more messages of a topic one batch holds,
                // the fewer blocks, topic records and rollups are written for them. A half-full queue,
                // a flush or the stop do not wait.
                let due = last_batch + BATCH_INTERVAL;
                while !pending.items.is_empty()
                    && !pending.stop
                    && pending.flush_wanted == 0
                    && pending.items.len() < self.shared.config.queue_capacity / 2
                {
                    let left = due.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    pending = self
                        .shared
                        .ready
                        .wait_timeout(pending, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                last_batch = Instant::now();
                let dropped = (pending.dropped > 0).then(|| Gap {
                    from_us: pending.dropped_since_us,
                    to_us: now_us(),
                    dropped: pending.dropped,
                });
                pending.dropped = 0;
                (std::mem::take(&mut pending.items), dropped, pending.stop)
            };
            let n = items.len() as u64;
            let held = self
                .shared
                .budget
                .get()
                .cloned()
                .map(|b| (b, items.iter().map(|(m, _)| m.held_bytes()).sum()));
            if n > 0 || dropped.is_some() {
                self.write(items, dropped);
            }
            if let Some((budget, bytes)) = held {
                budget.release(bytes);
            }
            {
                let mut pending = self.shared.lock_pending();
                pending.handled += n;
            }
            self.shared.handled.notify_all();
            if Instant::now() >= next_maintenance {
                self.maintain();
                next_maintenance = Instant::now() + MAINTENANCE;
            }
            if stop && self.shared.lock_pending().items.is_empty() {
                return;
            }
        }
    }

    /// The publisher's timestamp of `message`, as configured, in µs.
    fn publisher_ts(&self, message: &Message, now: u64) -> Option<u64> {
        let parse_number = |n: f64| -> Option<u64> {
            if !(n.is_finite() && n > 0.0) {
                return None;
            }
            // Seconds, milliseconds or microseconds, by magnitude (as for query times).
            Some(if n < 1e11 {
                n * 1e6
            } else if n < 1e14 {
                n * 1e3
            } else {
                n
            } as u64)
        };
        if let Some(name) = &self.shared.config.timestamp_property {
            let value = message.properties.user_properties.iter().find(|p| &*p.0 == name.as_str())?;
            return match value.1.trim().parse::<f64>() {
                Ok(n) => parse_number(n),
                Err(_) => parse_time(&value.1, now).ok(),
            };
        }
        let field = self.timestamp_field.as_ref()?;
        let raw = field.raw(&message.payload)?;
        if raw.first() == Some(&b'"') {
            let s: String = serde_json::from_slice(raw).ok()?;
            return parse_time(&s, now).ok();
        }
        parse_number(std::str::from_utf8(raw).ok()?.parse().ok()?)
    }

    /// The segment of `class` to write a record at `ts` to, opening one if needed: a segment spans
    /// at most the class's period of the records' own time (so that imported old data is cut the
    /// same way as live data).
    fn segment(&mut self, class: usize, ts: u64, opened: &mut Vec<Segment>) -> Arc<str> {
        let period = self.shared.classes[class].period_us;
        if let Some(c) = &self.current[class] {
            if ts.saturating_sub(c.start_us) < period {
                return c.name.clone();
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let name: Arc<str> =
            Arc::from(format!("{SEGMENT_PREFIX}{}.{seq:010}", self.shared.classes[class].name));
        self.current[class] = Some(Current { name: name.clone(), start_us: ts, written: 0 });
        opened.push(Segment {
            name: name.clone(),
            class: self.shared.classes[class].name.clone(),
            seq,
            start_us: ts,
            end_us: ts,
            records: 0,
            bytes: 0,
        });
        name
    }

    /// Adds a record of topic `id` at `ts` to its current minute's rollups (a new minute, or a new
    /// segment, starts them afresh — from what is stored already for a minute that began before a
    /// restart).
    fn roll_up(
        &mut self,
        batch: &mut SeriesBatch,
        id: u32,
        ts: u64,
        segment: &Arc<str>,
        payload: &[u8],
        new_fields: &mut Vec<(String, u16)>,
    ) {
        let minute = ts - ts % rollup::MINUTE;
        let fresh = self.rollups.get(&id).is_none_or(|m| m.minute != minute || m.segment != *segment);
        if fresh {
            // The minute it had is over: written now if it changed since the last batch.
            if let Some(done) = self.rollups.get(&id).filter(|m| m.dirty) {
                put_rollups(batch, id, done);
            }
            let mut m = Minute { segment: segment.clone(), minute, fields: Vec::new(), dirty: false };
            if self.seed.remove(&id).is_some_and(|last| minute <= last) {
                self.seed_minute(id, &mut m);
            }
            self.rollups.insert(id, m);
        }
        let Writer { rollups, fields, next_field, .. } = self;
        let Some(m) = rollups.get_mut(&id) else { return };
        m.dirty = true;
        m.add(rollup::COUNT, 1.0);
        crate::field::top_level_numbers(payload, rollup::MAX_FIELDS, |name, v| {
            let field = match fields.get(name) {
                Some(f) => *f,
                None if *next_field < u16::MAX => {
                    let f = *next_field;
                    *next_field += 1;
                    fields.insert(name.to_owned(), f);
                    new_fields.push((name.to_owned(), f));
                    f
                }
                None => return,
            };
            m.add(field, v);
        });
    }

    /// Reads what was stored of `m`'s minute before a restart.
    fn seed_minute(&self, id: u32, m: &mut Minute) {
        if let Ok(Some(v)) = self.shared.store.series_get(&m.segment, &rollup::key(id, m.minute)) {
            rollup::decode(&v, |field, acc| m.fields.push((field, acc)));
        }
    }

    fn write(&mut self, items: Vec<(Arc<Message>, u64)>, gap: Option<Gap>) {
        let mut batch = SeriesBatch::new();
        // Per topic written: its entry, and its last message (encoded once, at the end).
        let mut touched: HashMap<u32, (TopicEntry, Arc<Message>, Option<u64>)> = HashMap::new();
        let mut spans: HashMap<Arc<str>, (u64, u64, u64, u64)> = HashMap::new();
        let mut opened = Vec::new();
        let mut new_fields: Vec<(String, u16)> = Vec::new();
        let mut blocks: HashMap<u32, (Arc<str>, BlockWriter)> = HashMap::new();
        let stored = items.len() as u64;
        for (message, at) in items {
            let (id, class, ts) = match self.slots.get_mut(message.topic.as_arc()) {
                Some(slot) => {
                    let ts = at.max(slot.last_us + 1);
                    slot.last_us = ts;
                    (slot.id, slot.class, ts)
                }
                None => {
                    let id = self.next_id;
                    self.next_id = self.next_id.saturating_add(1);
                    let class = class_of(&self.shared.classes, &message.topic);
                    self.slots.insert(message.topic.as_arc().clone(), Slot { id, class, last_us: at });
                    (id, class, at)
                }
            };
            let segment = self.segment(class, ts, &mut opened);
            let publisher_ts = self.publisher_ts(&message, at);
            // One block per topic per batch (and segment), of at most BLOCK_POINTS messages.
            let mut written = 0u64;
            let fits = blocks
                .get(&id)
                .is_some_and(|(seg, b): &(Arc<str>, BlockWriter)| *seg == segment && b.has_room());
            if !fits {
                if let Some((seg, b)) = blocks.remove(&id) {
                    batch.put(&seg, key(id, b.first_ts).to_vec(), b.finish());
                }
                blocks.insert(id, (segment.clone(), BlockWriter::new(ts)));
                written += 12;
            }
            if let Some((_, b)) = blocks.get_mut(&id) {
                written += b.push(ts, &message, publisher_ts) as u64;
            }
            if let Some(cur) = &mut self.current[class] {
                cur.written += written;
                if self.shared.classes[class].segment_bytes.is_some_and(|max| cur.written >= max) {
                    self.current[class] = None;
                }
            }
            self.roll_up(&mut batch, id, ts, &segment, &message.payload, &mut new_fields);
            let span = spans.entry(segment).or_insert((ts, ts, 0, 0));
            span.0 = span.0.min(ts);
            span.1 = span.1.max(ts);
            span.2 += 1;
            span.3 += written;
            match touched.get_mut(&id) {
                Some((t, last, last_ts)) => {
                    t.count += 1;
                    t.last_us = ts;
                    *last = message;
                    *last_ts = publisher_ts;
                }
                None => {
                    let known = self.shared.catalog().topics.get(id as usize).and_then(Clone::clone);
                    let entry = match known {
                        Some(mut t) => {
                            t.count += 1;
                            t.last_us = ts;
                            t
                        }
                        None => TopicEntry {
                            name: message.topic.clone(),
                            count: 1,
                            first_us: ts,
                            last_us: ts,
                            last: Bytes::new(),
                        },
                    };
                    touched.insert(id, (entry, message, publisher_ts));
                }
            }
        }
        let touched: HashMap<u32, TopicEntry> = touched
            .into_iter()
            .map(|(id, (mut t, last, publisher_ts))| {
                self.buffer.clear();
                encode(&last, publisher_ts, &mut self.buffer);
                t.last = Bytes::copy_from_slice(&self.buffer);
                (id, t)
            })
            .collect();
        for (id, (segment, block)) in blocks {
            batch.put(&segment, key(id, block.first_ts).to_vec(), block.finish());
        }
        let topics: Arc<str> = Arc::from(TOPICS);
        let meta: Arc<str> = Arc::from(META);
        for (id, t) in &touched {
            batch.put(&topics, t.name.as_str().as_bytes().to_vec(), encode_topic(*id, t));
        }
        for (id, m) in self.rollups.iter_mut().filter(|(_, m)| m.dirty) {
            put_rollups(&mut batch, *id, m);
            m.dirty = false;
        }
        for (name, id) in &new_fields {
            batch.put(&meta, [FIELD_KEY, name.as_bytes()].concat(), id.to_be_bytes().to_vec());
        }
        // The spans of the segments written to, as they will be after this batch.
        let mut segments: Vec<Segment> = {
            let catalog = self.shared.catalog();
            spans
                .iter()
                .map(|(name, &(start, end, n, bytes))| {
                    let mut s = catalog
                        .segments
                        .iter()
                        .chain(opened.iter())
                        .find(|s| &s.name == name)
                        .cloned()
                        .unwrap_or_else(|| Segment {
                            name: name.clone(),
                            class: String::new(),
                            seq: 0,
                            start_us: start,
                            end_us: end,
                            records: 0,
                            bytes: 0,
                        });
                    s.start_us = s.start_us.min(start);
                    s.end_us = s.end_us.max(end);
                    s.records += n;
                    s.bytes += bytes;
                    s
                })
                .collect()
        };
        for s in &segments {
            batch.put(&meta, segment_key(&s.name), encode_segment(s));
        }
        if let Some(g) = gap {
            let mut v = g.to_us.to_be_bytes().to_vec();
            v.extend_from_slice(&g.dropped.to_be_bytes());
            batch.put(&meta, gap_key(g.from_us), v);
        }
        match self.shared.store.write_series(batch) {
            Ok(()) => {
                if self.failing {
                    tracing::warn!("history writes work again");
                    self.failing = false;
                }
                self.shared.stats.stored.fetch_add(stored, Ordering::Relaxed);
                self.shared.stats.batches.fetch_add(1, Ordering::Relaxed);
                let mut catalog = self.shared.catalog.write().unwrap_or_else(PoisonError::into_inner);
                for (id, t) in touched {
                    let at = id as usize;
                    if catalog.topics.len() <= at {
                        catalog.topics.resize(at + 1, None);
                    }
                    catalog.topics[at] = Some(t);
                }
                for s in segments.drain(..) {
                    match catalog.segments.iter_mut().find(|c| c.name == s.name) {
                        Some(c) => *c = s,
                        None => catalog.segments.push(s),
                    }
                }
                catalog.segments.sort_by_key(|s| s.seq);
                if let Some(g) = gap {
                    catalog.gaps.push(g);
                }
                catalog.fields.extend(new_fields);
            }
            Err(e) => {
                if !self.failing {
                    tracing::error!(error = %e, "history records not written; they are counted as dropped until writes work again");
                    self.failing = true;
                }
                self.shared.stats.dropped.fetch_add(stored, Ordering::Relaxed);
                // The segments opened for this batch do not exist: open them again next time.
                for s in opened {
                    for c in self.current.iter_mut() {
                        if c.as_ref().is_some_and(|c| c.name == s.name) {
                            *c = None;
                        }
                    }
                }
            }
        }
    }

    /// Closes segments that are old or large enough, and drops those past their class's retention.
    fn maintain(&mut self) {
        let now = now_us();
        let store = self.shared.store.clone();
        let segments: Vec<Segment> = self.shared.catalog().segments.clone();
        let mut drop: Vec<Segment> = Vec::new();
        for (ci, class) in self.shared.classes.iter().enumerate() {
            // Segments of classes no longer configured fall under the default class.
            let default = ci == self.shared.classes.len() - 1;
            let known = |s: &Segment| self.shared.classes.iter().any(|c| c.name == s.class);
            let mine: Vec<&Segment> =
                segments.iter().filter(|s| s.class == class.name || (default && !known(s))).collect();
            if self.current[ci]
                .as_ref()
                .is_some_and(|cur| now.saturating_sub(cur.start_us) >= class.period_us)
            {
                self.current[ci] = None;
            }
            if let Some(age) = class.max_age_us {
                for s in &mine {
                    if s.end_us != u64::MAX && s.end_us.saturating_add(age) < now {
                        drop.push((*s).clone());
                    }
                }
            }
            if let Some(max) = class.max_bytes {
                let mut sizes: Vec<(&Segment, u64)> = mine
                    .iter()
                    .filter(|s| !drop.iter().any(|d| d.name == s.name))
                    .map(|s| (*s, s.bytes))
                    .collect();
                let mut total: u64 = sizes.iter().map(|(_, n)| n).sum();
                while total > max && sizes.len() > 1 {
                    let (s, n) = sizes.remove(0);
                    total -= n;
                    drop.push(s.clone());
                }
                if total > max {
                    // One segment over the limit: close it, so that it can go once the next exists.
                    self.current[ci] = None;
                }
            }
        }
        if drop.is_empty() {
            self.prune_gaps(now);
            return;
        }
        let meta: Arc<str> = Arc::from(META);
        for s in &drop {
            for c in self.current.iter_mut() {
                if c.as_ref().is_some_and(|c| c.name == s.name) {
                    *c = None;
                }
            }
            self.rollups.retain(|_, m| m.segment != s.name);
            // Out of the catalog first, so that no new query reads it.
            self.shared
                .catalog
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .segments
                .retain(|c| c.name != s.name);
            if let Err(e) = store.drop_series(&s.name) {
                tracing::warn!(segment = %s.name, error = %e, "history segment not dropped");
                continue;
            }
            let mut batch = SeriesBatch::new();
            batch.remove(&meta, segment_key(&s.name));
            if let Err(e) = store.write_series(batch) {
                tracing::debug!(segment = %s.name, error = %e, "history segment record not removed");
            }
            self.shared.stats.segments_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(segment = %s.name, records = s.records, "history segment dropped by retention");
        }
        self.prune_gaps(now);
    }

    /// Forgets gaps older than the longest retention.
    fn prune_gaps(&mut self, now: u64) {
        let Some(age) = self
            .shared
            .classes
            .iter()
            .map(|c| c.max_age_us)
            .collect::<Option<Vec<u64>>>()
            .and_then(|a| a.into_iter().max())
        else {
            return;
        };
        let old: Vec<Gap> = self
            .shared
            .catalog()
            .gaps
            .iter()
            .filter(|g| g.to_us.saturating_add(age) < now)
            .copied()
            .collect();
        if old.is_empty() {
            return;
        }
        let meta: Arc<str> = Arc::from(META);
        let mut batch = SeriesBatch::new();
        for g in &old {
            batch.remove(&meta, gap_key(g.from_us));
        }
        if self.shared.store.write_series(batch).is_ok() {
            self.shared
                .catalog
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .gaps
                .retain(|g| !old.contains(g));
        }
    }
}

/// Writes the rollups of one topic's minute into its segment.
fn put_rollups(batch: &mut SeriesBatch, id: u32, m: &Minute) {
    batch.put(&m.segment, rollup::key(id, m.minute).to_vec(), rollup::encode(&m.fields));
}

/// The index of the class of `topic`: the first retention entry whose filter matches, else the
/// default (the last).
pub(crate) fn class_of(classes: &[Class], topic: &TopicName) -> usize {
    classes
        .iter()
        .position(|c| c.filter.as_ref().is_some_and(|f| f.matches(topic)))
        .unwrap_or(classes.len() - 1)
}
