//! Queries: points of the topics a filter matches over a time range, merged in time order and paged
//! with a cursor; aggregates of a JSON field per time bucket.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::ops::Bound;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use m2m_store::SeriesIter;
use m2m_topic::TopicFilter;

use crate::record::{decode, for_each_in_block, key, payload_of, split_key, Record};
use crate::rollup;
use crate::{FieldPath, History, HistoryError};

/// The most points one query returns.
pub const MAX_LIMIT: usize = 100_000;
/// The most buckets one aggregate returns per topic.
pub const MAX_BUCKETS: u64 = 100_000;

pub(crate) fn parse_filter(filter: &str) -> Result<TopicFilter, HistoryError> {
    TopicFilter::try_from(filter).map_err(|e| HistoryError::BadRequest(format!("filter {filter:?}: {e}")))
}

/// Time order of results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Oldest first.
    #[default]
    Asc,
    /// Newest first.
    Desc,
}

impl FromStr for Order {
    type Err = HistoryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "asc" => Ok(Self::Asc),
            "desc" => Ok(Self::Desc),
            _ => Err(HistoryError::BadRequest(format!("order {s:?}: expected asc or desc"))),
        }
    }
}

/// Where a page of results ended: the next page starts after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// The last point's time.
    pub ts_us: u64,
    /// Its topic's id.
    pub topic_id: u32,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ts_us, self.topic_id)
    }
}

impl FromStr for Cursor {
    type Err = HistoryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || HistoryError::BadRequest(format!("cursor {s:?}: not one this node returned"));
        let (ts, id) = s.split_once('-').ok_or_else(bad)?;
        Ok(Self { ts_us: ts.parse().map_err(|_| bad())?, topic_id: id.parse().map_err(|_| bad())? })
    }
}

/// A query for points.
#[derive(Debug, Clone)]
pub struct Query {
    /// Topics.
    pub filter: String,
    /// From this time (µs, included).
    pub from_us: u64,
    /// Until this time (µs, excluded).
    pub to_us: u64,
    /// At most this many points (at most [`MAX_LIMIT`]).
    pub limit: usize,
    /// Time order.
    pub order: Order,
    /// Continue after the point a previous page ended with.
    pub after: Option<Cursor>,
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// Its topic.
    pub topic: Arc<str>,
    /// When the node received it (µs since the epoch; unique per topic).
    pub ts_us: u64,
    /// What was kept of it.
    pub record: Record,
}

/// One source of a merge: a topic's records in one segment.
struct Source {
    topic: u32,
    iter: SeriesIter,
    reverse: bool,
    from: u64,
    to: u64,
    /// Messages of the block read last that are in range and not yet handed out.
    points: VecDeque<(u64, Bytes)>,
}

impl Source {
    fn next(&mut self) -> Option<Result<(u64, Bytes), HistoryError>> {
        loop {
            let point = if self.reverse { self.points.pop_back() } else { self.points.pop_front() };
            if let Some(p) = point {
                return Some(Ok(p));
            }
            let item = self.iter.next_with(self.reverse, |k, v| (split_key(k), Bytes::copy_from_slice(v)))?;
            let (key, block) = match item {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e.into())),
            };
            let Some((_, first)) = key else { continue };
            let (from, to, points) = (self.from, self.to, &mut self.points);
            let read = for_each_in_block(first, &block, |ts, record| {
                if ts >= from && ts < to {
                    points.push_back((ts, block.slice_ref(record)));
                }
                ts < to
            });
            if let Err(e) = read {
                return Some(Err(e.into()));
            }
        }
    }
}

/// Where a scan of topic `id` from `from` starts in `segment`: the first time of the block that holds
/// `from` (blocks are keyed by their first message), or `from` itself.
fn block_start(store: &m2m_store::Store, segment: &str, id: u32, from: u64) -> Result<u64, HistoryError> {
    let range = (Bound::Included(key(id, 0).to_vec()), Bound::Included(key(id, from).to_vec()));
    let mut before = store.series_range(segment, range)?;
    match before.next_with(true, |k, _| split_key(k)) {
        Some(Ok(Some((_, first)))) => Ok(first),
        Some(Err(e)) => Err(e.into()),
        _ => Ok(from),
    }
}

/// The points of a query, in order; streamed from the store as they are read.
pub struct Points {
    sources: Vec<Source>,
    /// Heads of the sources: `(ts, topic, source)`, ordered for the query's order.
    heap: BinaryHeap<Reverse<(u64, u32, usize)>>,
    heads: Vec<Option<Bytes>>,
    names: Vec<Option<Arc<str>>>,
    order: Order,
    left: usize,
    last: Option<Cursor>,
    failed: bool,
}

impl fmt::Debug for Points {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Points")
            .field("sources", &self.sources.len())
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl Points {
    /// For a desc query the heap orders by the complement, so that the newest (and the highest topic
    /// id) comes out first.
    fn heap_key(&self, ts: u64, topic: u32, source: usize) -> Reverse<(u64, u32, usize)> {
        match self.order {
            Order::Asc => Reverse((ts, topic, source)),
            Order::Desc => Reverse((u64::MAX - ts, u32::MAX - topic, source)),
        }
    }

    fn pull(&mut self, source: usize) -> Result<(), HistoryError> {
        if let Some(item) = self.sources[source].next() {
            let (ts, value) = item?;
            let topic = self.sources[source].topic;
            self.heads[source] = Some(value);
            let k = self.heap_key(ts, topic, source);
            self.heap.push(k);
        }
        Ok(())
    }

    /// Where to continue: the last point returned, if the limit stopped the query before the end.
    pub fn next_cursor(&self) -> Option<Cursor> {
        if self.left == 0 && !self.heap.is_empty() {
            self.last
        } else {
            None
        }
    }
}

impl Iterator for Points {
    type Item = Result<Point, HistoryError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 || self.failed {
            return None;
        }
        let Reverse((k_ts, k_topic, source)) = self.heap.pop()?;
        let (ts, topic) = match self.order {
            Order::Asc => (k_ts, k_topic),
            Order::Desc => (u64::MAX - k_ts, u32::MAX - k_topic),
        };
        let value = self.heads[source].take()?;
        if let Err(e) = self.pull(source) {
            self.failed = true;
            return Some(Err(e));
        }
        self.left -= 1;
        self.last = Some(Cursor { ts_us: ts, topic_id: topic });
        let name = self.names.get(topic as usize).cloned().flatten().unwrap_or_else(|| Arc::from("?"));
        Some(decode(value).map(|record| Point { topic: name, ts_us: ts, record }).map_err(HistoryError::from))
    }
}

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    /// Points with a numeric value.
    Count,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Mean.
    Avg,
    /// Sum.
    Sum,
    /// Value of the oldest point.
    First,
    /// Value of the newest point.
    Last,
}

impl Agg {
    /// Every function, in the order results list them.
    pub const ALL: [Agg; 7] = [Agg::Count, Agg::Min, Agg::Max, Agg::Avg, Agg::Sum, Agg::First, Agg::Last];

    /// Its name in queries.
    pub fn name(self) -> &'static str {
        match self {
            Agg::Count => "count",
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::Avg => "avg",
            Agg::Sum => "sum",
            Agg::First => "first",
            Agg::Last => "last",
        }
    }
}

impl FromStr for Agg {
    type Err = HistoryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Agg::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            HistoryError::BadRequest(format!(
                "aggregate {s:?}: expected count, min, max, avg, sum, first or last"
            ))
        })
    }
}

/// A query for aggregates.
#[derive(Debug, Clone)]
pub struct AggregateQuery {
    /// Topics.
    pub filter: String,
    /// From (µs, included).
    pub from_us: u64,
    /// Until (µs, excluded).
    pub to_us: u64,
    /// The value aggregated.
    pub field: FieldPath,
    /// Bucket width (µs); buckets start at multiples of it since the epoch.
    pub bucket_us: u64,
}

/// The aggregates of one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Start of the bucket (µs).
    pub start_us: u64,
    /// Points with a numeric value.
    pub count: u64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Sum.
    pub sum: f64,
    /// Oldest.
    pub first: f64,
    /// Newest.
    pub last: f64,
}

impl Bucket {
    /// The value of one function.
    pub fn get(&self, agg: Agg) -> f64 {
        match agg {
            Agg::Count => self.count as f64,
            Agg::Min => self.min,
            Agg::Max => self.max,
            Agg::Avg => self.sum / self.count as f64,
            Agg::Sum => self.sum,
            Agg::First => self.first,
            Agg::Last => self.last,
        }
    }
}

/// The buckets of one topic.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSeries {
    /// The topic.
    pub topic: Arc<str>,
    /// Buckets that have at least one value, in time order.
    pub buckets: Vec<Bucket>,
    /// Points in range whose payload had no numeric value at the field.
    pub skipped: u64,
}

/// What a query reads: the topics it matches (id, name), the segments overlapping its range, and
/// every topic's name by id.
type Plan = (Vec<(u32, Arc<str>)>, Vec<Arc<str>>, Vec<Option<Arc<str>>>);

impl TopicSeries {
    /// Adds `acc` (values that all came after those added so far) to the bucket starting at `start`.
    fn add(&mut self, start: u64, acc: &rollup::Acc) {
        match self.buckets.last_mut() {
            Some(b) if b.start_us == start => {
                b.count += acc.count;
                b.min = b.min.min(acc.min);
                b.max = b.max.max(acc.max);
                b.sum += acc.sum;
                b.last = acc.last;
            }
            _ => self.buckets.push(Bucket {
                start_us: start,
                count: acc.count,
                min: acc.min,
                max: acc.max,
                sum: acc.sum,
                first: acc.first,
                last: acc.last,
            }),
        }
    }
}

impl History {
    /// The topics matching `filter` (id, name) and the segments overlapping `[from, to)`.
    fn plan(&self, filter: &str, from_us: u64, to_us: u64) -> Result<Plan, HistoryError> {
        let filter = parse_filter(filter)?;
        if from_us >= to_us {
            return Err(HistoryError::BadRequest(format!(
                "empty time range: from ({from_us}) is not before to ({to_us})"
            )));
        }
        let catalog = self.shared().catalog();
        let topics: Vec<(u32, Arc<str>)> = catalog
            .topics
            .iter()
            .enumerate()
            .filter_map(|(id, t)| {
                t.as_ref().filter(|t| filter.matches(&t.name)).map(|t| (id as u32, t.name.as_arc().clone()))
            })
            .collect();
        let segments = catalog
            .segments
            .iter()
            .filter(|s| s.start_us < to_us && s.end_us >= from_us)
            .map(|s| s.name.clone())
            .collect();
        let names = catalog.topics.iter().map(|t| t.as_ref().map(|t| t.name.as_arc().clone())).collect();
        Ok((topics, segments, names))
    }

    /// The points of `query`, read as the iterator is pulled.
    ///
    /// # Errors
    /// A bad filter, range, limit or cursor; a store error.
    pub fn query(&self, query: &Query) -> Result<Points, HistoryError> {
        if query.limit == 0 || query.limit > MAX_LIMIT {
            return Err(HistoryError::BadRequest(format!(
                "limit {}: expected 1 to {MAX_LIMIT}",
                query.limit
            )));
        }
        let (topics, segments, names) = self.plan(&query.filter, query.from_us, query.to_us)?;
        let store = &self.shared().store;
        let reverse = query.order == Order::Desc;
        let mut sources = Vec::new();
        for (id, _) in &topics {
            // Where this topic resumes after the cursor: (ts, id) pairs strictly after it, in order.
            let (mut from, mut to) = (query.from_us, query.to_us);
            if let Some(c) = query.after {
                match query.order {
                    Order::Asc => {
                        from = from.max(if *id <= c.topic_id { c.ts_us.saturating_add(1) } else { c.ts_us })
                    }
                    Order::Desc => {
                        to = to.min(if *id >= c.topic_id { c.ts_us } else { c.ts_us.saturating_add(1) })
                    }
                }
            }
            if from >= to {
                continue;
            }
            for segment in &segments {
                let start = block_start(store, segment, *id, from)?;
                let range =
                    (Bound::Included(key(*id, start).to_vec()), Bound::Excluded(key(*id, to).to_vec()));
                let iter = store.series_range(segment, range)?;
                sources.push(Source { topic: *id, iter, reverse, from, to, points: VecDeque::new() });
            }
        }
        let n = sources.len();
        let mut points = Points {
            sources,
            heap: BinaryHeap::with_capacity(n),
            heads: vec![None; n],
            names,
            order: query.order,
            left: query.limit,
            last: None,
            failed: false,
        };
        for i in 0..n {
            points.pull(i)?;
        }
        Ok(points)
    }

    /// Aggregates of `query.field` per bucket for each topic the filter matches, in topic order.
    /// Topics are read in parallel, one thread per core.
    ///
    /// # Errors
    /// A bad filter, range or bucket; a store error.
    pub fn aggregate(&self, query: &AggregateQuery) -> Result<Vec<TopicSeries>, HistoryError> {
        if query.bucket_us == 0 {
            return Err(HistoryError::BadRequest("bucket must be longer than 0".into()));
        }
        let buckets = (query.to_us.saturating_sub(query.from_us)).div_ceil(query.bucket_us);
        if buckets > MAX_BUCKETS {
            return Err(HistoryError::BadRequest(format!(
                "{buckets} buckets: at most {MAX_BUCKETS} (widen the bucket or narrow the range)"
            )));
        }
        let (mut topics, segments, _) = self.plan(&query.filter, query.from_us, query.to_us)?;
        // Rollups serve a top-level field (`Some(None)`: one no payload has had).
        let rollup_field =
            query.field.rollup_name().map(|name| self.shared().catalog().fields.get(name).copied());
        topics.sort_by(|a, b| a.1.cmp(&b.1));
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(topics.len()).max(1);
        let chunk = topics.len().div_ceil(threads).max(1);
        let results: Vec<Result<Vec<TopicSeries>, HistoryError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = topics
                .chunks(chunk)
                .map(|part| {
                    let segments = &segments;
                    scope.spawn(move || {
                        part.iter()
                            .map(|(id, name)| self.aggregate_topic(*id, name, segments, query, rollup_field))
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(HistoryError::BadRequest("an aggregate thread failed".into()))
                    })
                })
                .collect()
        });
        let mut out = Vec::with_capacity(topics.len());
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    }

    fn aggregate_topic(
        &self,
        id: u32,
        name: &Arc<str>,
        segments: &[Arc<str>],
        q: &AggregateQuery,
        rollup_field: Option<Option<u16>>,
    ) -> Result<TopicSeries, HistoryError> {
        let mut series = TopicSeries { topic: name.clone(), buckets: Vec::new(), skipped: 0 };
        let (inner_from, inner_to) = (
            q.from_us.div_ceil(rollup::MINUTE).saturating_mul(rollup::MINUTE),
            q.to_us - q.to_us % rollup::MINUTE,
        );
        match rollup_field {
            // Whole minutes from the rollups, the partial ones at the ends from the records.
            Some(field) if q.bucket_us.is_multiple_of(rollup::MINUTE) && inner_from < inner_to => {
                self.aggregate_points(&mut series, id, segments, q, q.from_us, inner_from)?;
                self.aggregate_rollups(&mut series, id, segments, q, field, inner_from, inner_to)?;
                self.aggregate_points(&mut series, id, segments, q, inner_to, q.to_us)?;
            }
            _ => self.aggregate_points(&mut series, id, segments, q, q.from_us, q.to_us)?,
        }
        Ok(series)
    }

    /// Adds the records of `[from, to)` to `series`, in time order.
    fn aggregate_points(
        &self,
        series: &mut TopicSeries,
        id: u32,
        segments: &[Arc<str>],
        q: &AggregateQuery,
        from: u64,
        to: u64,
    ) -> Result<(), HistoryError> {
        if from >= to {
            return Ok(());
        }
        let store = &self.shared().store;
        for segment in segments {
            let start = block_start(store, segment, id, from)?;
            let range = (Bound::Included(key(id, start).to_vec()), Bound::Excluded(key(id, to).to_vec()));
            let mut blocks = store.series_range(segment, range)?;
            while let Some(item) = blocks.next_with(false, |k, v| {
                let Some((_, first)) = split_key(k) else { return Ok(()) };
                for_each_in_block(first, v, |ts, record| {
                    if ts >= from && ts < to {
                        match payload_of(record).and_then(|p| q.field.number(p)) {
                            Some(v) => series.add(ts - ts % q.bucket_us, &rollup::Acc::new(v)),
                            None => series.skipped += 1,
                        }
                    }
                    ts < to
                })
            }) {
                item??;
            }
        }
        Ok(())
    }

    /// Adds the rollups of the whole minutes `[from, to)` to `series`; `field` is `None` when no
    /// payload ever had it (every message is then skipped).
    #[allow(clippy::too_many_arguments)]
    fn aggregate_rollups(
        &self,
        series: &mut TopicSeries,
        id: u32,
        segments: &[Arc<str>],
        q: &AggregateQuery,
        field: Option<u16>,
        from: u64,
        to: u64,
    ) -> Result<(), HistoryError> {
        let store = &self.shared().store;
        let (mut messages, mut values) = (0u64, 0u64);
        for segment in segments {
            let range = (
                Bound::Included(rollup::key(id, from).to_vec()),
                Bound::Excluded(rollup::key(id, to).to_vec()),
            );
            let mut records = store.series_range(segment, range)?;
            while let Some(item) = records.next_with(false, |k, v| {
                let Some(minute) = rollup::minute_of(k) else { return };
                rollup::decode(v, |f, acc| {
                    if f == rollup::COUNT {
                        messages += acc.count;
                    } else if Some(f) == field {
                        values += acc.count;
                        series.add(minute - minute % q.bucket_us, &acc);
                    }
                });
            }) {
                item?;
            }
        }
        series.skipped += messages.saturating_sub(values);
        Ok(())
    }
}
