//! The history on a real store on disk: what is captured, queries against a model (a sorted `Vec`),
//! paging, aggregates against values computed here, last values, retention, gaps and a restart.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use m2m_codec::QoS;
use m2m_history::{AggregateQuery, FieldPath, History, HistoryConfig, Order, Query, Retention};
use m2m_router::Tap;
use m2m_session::Message;
use m2m_store::{Store, StoreConfig};
use m2m_test::TempDir;
use m2m_topic::TopicName;
use proptest::prelude::*;

fn open(dir: &TempDir, config: HistoryConfig) -> (Store, History) {
    let (store, _) = Store::open(StoreConfig::new(dir.path().join("store"))).unwrap();
    let history = History::open(store.clone(), config).unwrap();
    (store, history)
}

fn message(topic: &str, payload: impl Into<Bytes>) -> Arc<Message> {
    Arc::new(Message::new(TopicName::try_from(topic).unwrap(), payload, QoS::AtLeastOnce, false))
}

fn all(filter: &str) -> Query {
    Query {
        filter: filter.into(),
        from_us: 0,
        to_us: u64::MAX,
        limit: 100_000,
        order: Order::Asc,
        after: None,
    }
}

fn topics_and_payloads(h: &History, q: &Query) -> Vec<(String, String)> {
    h.query(q)
        .unwrap()
        .map(|p| {
            let p = p.unwrap();
            (p.topic.to_string(), String::from_utf8(p.record.payload.to_vec()).unwrap())
        })
        .collect()
}

#[test]
fn messages_on_the_filters_are_kept_with_everything_and_sys_is_left_out() {
    let dir = TempDir::new("history-capture");
    let config = HistoryConfig {
        filters: vec!["plant/#".into(), "$SYS/broker/uptime".into()],
        ..HistoryConfig::default()
    };
    let (_store, h) = open(&dir, config);
    let mut m = Message::new(TopicName::try_from("plant/a").unwrap(), &b"1"[..], QoS::ExactlyOnce, true);
    m.publisher = Some(Arc::from("press-1"));
    m.properties.content_type = Some(Arc::from("text/plain"));
    m.properties.user_properties = vec![(Arc::from("k"), Arc::from("v"))];
    h.message(&Arc::new(m));
    h.message(&message("office/b", "2"));
    h.message(&message("$SYS/broker/load", "3"));
    h.message(&message("$SYS/broker/uptime", "4"));
    assert!(h.flush(Duration::from_secs(10)));
    let points: Vec<_> = h.query(&all("#")).unwrap().map(Result::unwrap).collect();
    assert_eq!(points.len(), 1, "# does not match $SYS topics");
    let r = &points[0].record;
    assert_eq!(
        (r.qos, r.retain, r.client_id.as_deref(), r.content_type.as_deref()),
        (2, true, Some("press-1"), Some("text/plain"))
    );
    assert_eq!(r.user_properties, [("k".to_owned(), "v".to_owned())]);
    assert_eq!(topics_and_payloads(&h, &all("$SYS/#")), [("$SYS/broker/uptime".to_owned(), "4".to_owned())]);
    assert_eq!(h.stats().stored.load(std::sync::atomic::Ordering::Relaxed), 2);
}

/// A stored point as the model knows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ModelPoint {
    ts: u64,
    topic_id: usize,
    topic: String,
    payload: String,
}

const TOPICS: [&str; 6] = ["a/x", "a/y", "a/y/z", "b/x", "b", "c/d/e"];
const FILTERS: [&str; 9] = ["#", "a/#", "a/+", "+/x", "b", "b/#", "c/+/e", "nothing/here", "+/+/+"];

fn matches(filter: &str, topic: &str) -> bool {
    m2m_topic::TopicFilter::try_from(filter).unwrap().matches(&TopicName::try_from(topic).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Random messages; then random queries (filter, range, order, page size) read page by page with
    /// the cursor must return exactly what the model (all points sorted by time, then topic) has.
    #[test]
    fn queries_match_a_sorted_model(
        sends in proptest::collection::vec((0..TOPICS.len(), 0u32..1000), 1..400),
        queries in proptest::collection::vec((0..FILTERS.len(), 0.0f64..1.0, 0.0f64..1.0, any::<bool>(), 1usize..50), 1..8),
    ) {
        let dir = TempDir::new("history-model");
        let (_store, h) = open(&dir, HistoryConfig::default());
        for (i, (t, v)) in sends.iter().enumerate() {
            h.message(&message(TOPICS[*t], format!("{i}:{v}")));
            if i % 50 == 49 {
                // Several batches, some topics new in later ones.
                prop_assert!(h.flush(Duration::from_secs(10)));
            }
        }
        prop_assert!(h.flush(Duration::from_secs(10)));
        // The node's timestamps, learned from one full read; each topic's payloads in sent order.
        let stored: Vec<_> = h.query(&all("#")).unwrap().map(Result::unwrap).collect();
        prop_assert_eq!(stored.len(), sends.len());
        for topic in TOPICS {
            let sent: Vec<String> = sends.iter().enumerate().filter(|(_, (t, _))| TOPICS[*t] == topic).map(|(i, (_, v))| format!("{i}:{v}")).collect();
            let got: Vec<String> = stored.iter().filter(|p| &*p.topic == topic).map(|p| String::from_utf8(p.record.payload.to_vec()).unwrap()).collect();
            prop_assert_eq!(got, sent, "topic {}", topic);
        }
        let id_of = |topic: &str| stored.iter().position(|p| &*p.topic == topic).unwrap();
        let mut first_seen: Vec<&str> = Vec::new();
        for p in &stored { if !first_seen.contains(&&*p.topic) { first_seen.push(&p.topic); } }
        let model: Vec<ModelPoint> = stored.iter().map(|p| ModelPoint {
            ts: p.ts_us,
            // Topic ids are given in order of first appearance in time.
            topic_id: first_seen.iter().position(|t| *t == &*p.topic).unwrap(),
            topic: p.topic.to_string(),
            payload: String::from_utf8(p.record.payload.to_vec()).unwrap(),
        }).collect();
        let _ = id_of;
        let (lo, hi) = (model.iter().map(|p| p.ts).min().unwrap(), model.iter().map(|p| p.ts).max().unwrap() + 1);
        for (f, a, b, desc, page) in queries {
            let filter = FILTERS[f];
            let span = (hi - lo) as f64;
            let (x, y) = (lo + (a * span) as u64, lo + (b * span) as u64 + 1);
            // A range is never empty (the node refuses one): at least one microsecond.
            let (from, to) = (x.min(y), x.max(y).max(x.min(y) + 1));
            let order = if desc { Order::Desc } else { Order::Asc };
            let mut want: Vec<&ModelPoint> = model.iter().filter(|p| matches(filter, &p.topic) && p.ts >= from && p.ts < to).collect();
            want.sort_by_key(|p| (p.ts, p.topic_id));
            if desc { want.reverse(); }
            let want: Vec<(String, String)> = want.into_iter().map(|p| (p.topic.clone(), p.payload.clone())).collect();
            let mut got = Vec::new();
            let mut after = None;
            for _ in 0..=want.len() {
                let q = Query { filter: filter.into(), from_us: from, to_us: to, limit: page, order, after };
                let mut points = h.query(&q).unwrap();
                for p in points.by_ref() {
                    let p = p.unwrap();
                    got.push((p.topic.to_string(), String::from_utf8(p.record.payload.to_vec()).unwrap()));
                }
                after = points.next_cursor();
                if after.is_none() { break; }
            }
            prop_assert_eq!(got, want, "filter {} [{}, {}) {:?} pages of {}", filter, from, to, order, page);
        }
    }
}

#[test]
fn aggregates_per_bucket_match_values_computed_here() {
    let dir = TempDir::new("history-agg");
    let (_store, h) = open(&dir, HistoryConfig::default());
    let mut sent: Vec<(String, f64)> = Vec::new();
    for i in 0..300u32 {
        let topic = if i % 3 == 0 { "line/1/temp" } else { "line/2/temp" };
        let v = f64::from((i * 37) % 101) / 4.0 - 5.0;
        let payload = if i % 50 == 7 {
            "{\"engine\":{}}".to_owned()
        } else {
            format!("{{\"engine\":{{\"temp\":{v}}},\"id\":{i}}}")
        };
        if i % 50 != 7 {
            sent.push((topic.to_owned(), v));
        }
        h.message(&message(topic, payload));
    }
    h.message(&message("line/3/temp", "not json"));
    assert!(h.flush(Duration::from_secs(10)));
    // Each point's time, from a plain query, to put the values in buckets here.
    let points: Vec<_> = h.query(&all("line/+/temp")).unwrap().map(Result::unwrap).collect();
    let field = FieldPath::parse("payload.engine.temp").unwrap();
    let (from, to) = (points[0].ts_us, points.last().unwrap().ts_us + 1);
    let bucket = ((to - from) / 7).max(1);
    let got = h
        .aggregate(&AggregateQuery {
            filter: "line/+/temp".into(),
            from_us: from,
            to_us: to,
            field,
            bucket_us: bucket,
        })
        .unwrap();
    assert_eq!(
        got.iter().map(|s| &*s.topic).collect::<Vec<_>>(),
        ["line/1/temp", "line/2/temp", "line/3/temp"]
    );
    for series in &got {
        let mine: Vec<(u64, f64)> = points
            .iter()
            .filter(|p| p.topic == series.topic)
            .filter_map(|p| {
                let v: serde_json::Value = serde_json::from_slice(&p.record.payload).ok()?;
                Some((p.ts_us, v["engine"]["temp"].as_f64()?))
            })
            .collect();
        let mut starts: Vec<u64> = mine.iter().map(|(ts, _)| ts - ts % bucket).collect();
        starts.dedup();
        assert_eq!(series.buckets.iter().map(|b| b.start_us).collect::<Vec<_>>(), starts, "{}", series.topic);
        for b in &series.buckets {
            let values: Vec<f64> =
                mine.iter().filter(|(ts, _)| ts - ts % bucket == b.start_us).map(|(_, v)| *v).collect();
            let sum: f64 = values.iter().sum();
            assert_eq!(b.count, values.len() as u64);
            assert!((b.sum - sum).abs() < 1e-9);
            assert!((b.get(m2m_history::Agg::Avg) - sum / values.len() as f64).abs() < 1e-9);
            assert_eq!(b.min, values.iter().copied().fold(f64::INFINITY, f64::min));
            assert_eq!(b.max, values.iter().copied().fold(f64::NEG_INFINITY, f64::max));
            assert_eq!((b.first, b.last), (values[0], *values.last().unwrap()));
        }
    }
    assert_eq!(got[2].skipped, 1, "the non-JSON payload");
    assert_eq!(got[0].skipped + got[1].skipped, 6, "payloads without the field");
    let total: u64 = got.iter().flat_map(|s| &s.buckets).map(|b| b.count).sum();
    assert_eq!(total, sent.len() as u64);
}

#[test]
fn last_values_topics_and_history_survive_a_restart() {
    let dir = TempDir::new("history-restart");
    {
        let (_store, h) = open(&dir, HistoryConfig::default());
        for i in 0..100 {
            h.message(&message(&format!("dev/{}/state", i % 4), format!("{i}")));
        }
        assert!(h.flush(Duration::from_secs(10)));
    }
    let (_store, h) = open(&dir, HistoryConfig::default());
    let latest: Vec<_> = h
        .latest("dev/+/state")
        .unwrap()
        .into_iter()
        .map(|p| (p.topic.to_string(), String::from_utf8(p.record.payload.to_vec()).unwrap()))
        .collect();
    assert_eq!(
        latest,
        [("dev/0/state", "96"), ("dev/1/state", "97"), ("dev/2/state", "98"), ("dev/3/state", "99")]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    let topics = h.topics("#").unwrap();
    assert_eq!(topics.iter().map(|t| t.messages).collect::<Vec<_>>(), [25, 25, 25, 25]);
    assert_eq!(h.query(&all("#")).unwrap().count(), 100);
    // Writing goes on after the restart, later than everything before it.
    h.message(&message("dev/0/state", "100"));
    assert!(h.flush(Duration::from_secs(10)));
    let newest = h
        .query(&Query { order: Order::Desc, limit: 1, ..all("dev/0/state") })
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(&newest.record.payload[..], b"100");
    assert_eq!(h.topics("dev/0/state").unwrap()[0].messages, 26);
}

#[test]
fn retention_by_age_and_by_size_deletes_whole_segments() {
    let dir = TempDir::new("history-retention");
    let mut store_config = StoreConfig::new(dir.path().join("store"));
    store_config.memtable_bytes = 64 * 1024;
    let (store, _) = Store::open(store_config).unwrap();
    let config = HistoryConfig {
        max_age: Some(Duration::from_secs(2)),
        max_bytes: None,
        retention: vec![Retention { filter: "big/#".into(), max_age: None, max_bytes: Some(400 * 1024) }],
        ..HistoryConfig::default()
    };
    let h = History::open(store, config).unwrap();
    h.message(&message("small/a", "old"));
    let payload = Bytes::from(vec![b'x'; 1000]);
    // 4 MB into a class kept within 400 KiB.
    for i in 0..4000 {
        h.message(&message(&format!("big/{}", i % 10), payload.clone()));
        if i % 500 == 499 {
            assert!(h.flush(Duration::from_secs(10)));
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    assert!(h.flush(Duration::from_secs(10)));
    // Within a few seconds the old small message is gone (2 s) and big/# is back under its limit.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let small = h.query(&all("small/#")).unwrap().count();
        let big = h.query(&all("big/#")).unwrap().count();
        // A record is 12 bytes of key and 1 004 of value: the limit holds about 400 of them, and the
        // newest segment (an eighth of the limit) may come on top.
        if small == 0 && big <= 460 {
            assert!(big >= 300, "the newest stay: {big}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "retention did not act: small {small}, big {big}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(h.stats().segments_dropped.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    // The last value outlives the retention of the history.
    assert_eq!(&h.latest("small/a").unwrap()[0].record.payload[..], b"old");
}

#[test]
fn a_full_queue_drops_and_records_a_gap_instead_of_blocking() {
    let dir = TempDir::new("history-gap");
    let (_store, h) = open(&dir, HistoryConfig { queue_capacity: 10, ..HistoryConfig::default() });
    let started = std::time::Instant::now();
    for i in 0..20_000 {
        h.message(&message("fast/x", format!("{i}")));
    }
    assert!(started.elapsed() < Duration::from_secs(5), "capturing never waits for the writer");
    assert!(h.flush(Duration::from_secs(10)));
    let dropped = h.stats().dropped.load(std::sync::atomic::Ordering::Relaxed);
    let stored = h.query(&all("#")).unwrap().count() as u64;
    assert!(dropped > 0, "a queue of 10 cannot keep up with 20 000 at once");
    assert_eq!(stored + dropped, 20_000);
    // The next batch writes the gap.
    h.message(&message("fast/x", "after"));
    assert!(h.flush(Duration::from_secs(10)));
    let gaps = h.gaps(0, u64::MAX);
    assert_eq!(gaps.iter().map(|g| g.dropped).sum::<u64>(), dropped);
}

#[test]
fn past_the_memory_budget_messages_are_dropped_as_a_gap_and_the_budget_is_given_back() {
    let dir = TempDir::new("history-budget");
    let (_store, h) = open(&dir, HistoryConfig::default());
    let one = message("big/x", vec![0u8; 4096]).held_bytes();
    let budget = Arc::new(m2m_session::MemoryBudget::new(10 * one));
    h.set_budget(budget.clone());
    for _ in 0..5_000 {
        h.message(&message("big/x", vec![0u8; 4096]));
    }
    assert!(h.flush(Duration::from_secs(10)));
    let dropped = h.stats().dropped.load(std::sync::atomic::Ordering::Relaxed);
    let stored = h.query(&all("#")).unwrap().count() as u64;
    assert!(dropped > 0, "10 messages' worth of budget cannot hold 5 000 sent at once");
    assert_eq!(stored + dropped, 5_000);
    assert_eq!(budget.refused(), dropped);
    assert_eq!(budget.used(), 0, "what was written is given back");
    // With the budget free again, the next message is kept and the gap is recorded.
    h.message(&message("big/x", "after"));
    assert!(h.flush(Duration::from_secs(10)));
    assert_eq!(h.gaps(0, u64::MAX).iter().map(|g| g.dropped).sum::<u64>(), dropped);
}

#[test]
fn bad_queries_are_refused_with_the_reason() {
    let dir = TempDir::new("history-bad");
    let (_store, h) = open(&dir, HistoryConfig::default());
    let err = |q: Query| h.query(&q).unwrap_err().to_string();
    assert!(err(all("a/#/b")).contains("filter"), "{}", err(all("a/#/b")));
    assert!(err(Query { from_us: 10, to_us: 10, ..all("#") }).contains("empty time range"));
    assert!(err(Query { limit: 0, ..all("#") }).contains("limit"));
    assert!(err(Query { limit: 1_000_000, ..all("#") }).contains("limit"));
    assert!("12".parse::<m2m_history::Cursor>().is_err());
    let agg = AggregateQuery {
        filter: "#".into(),
        from_us: 0,
        to_us: 1_000_000_000,
        field: FieldPath::parse("payload.t").unwrap(),
        bucket_us: 1,
    };
    assert!(h.aggregate(&agg).unwrap_err().to_string().contains("buckets"));
    assert!(History::open(
        h_store(&dir),
        HistoryConfig { filters: vec!["a/#/b".into()], ..HistoryConfig::default() }
    )
    .is_err());
}

fn h_store(dir: &TempDir) -> Store {
    let (store, _) = Store::open(StoreConfig::new(dir.path().join("other"))).unwrap();
    store
}

#[test]
fn imported_data_keeps_its_own_times_and_is_cut_into_segments_by_them() {
    let dir = TempDir::new("history-import");
    let config = HistoryConfig {
        max_age: Some(Duration::from_secs(8 * 3600)),
        max_bytes: None,
        ..HistoryConfig::default()
    };
    let (store, h) = open(&dir, config);
    let start = m2m_history::time::parse_time("2026-01-01T00:00:00Z", 0).unwrap();
    // A reading a minute for 4 hours, on two topics: segments of an hour (an eighth of 8 h).
    for minute in 0..240u64 {
        for topic in ["a/t", "b/t"] {
            assert!(h.import(&message(topic, format!("{minute}")), start + minute * 60_000_000));
        }
        if minute % 60 == 59 {
            assert!(h.flush(Duration::from_secs(10)));
        }
    }
    assert!(h.flush(Duration::from_secs(10)));
    let segments = store.series_names().unwrap().into_iter().filter(|n| n.starts_with("history.s.")).count();
    assert_eq!(segments, 4, "one segment per hour of data");
    let hour = |n: u64| start + n * 3_600_000_000;
    let q = Query { filter: "a/t".into(), from_us: hour(1), to_us: hour(2), ..all("a/t") };
    let got: Vec<String> = h
        .query(&q)
        .unwrap()
        .map(|p| String::from_utf8(p.unwrap().record.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(got, (60..120).map(|m| m.to_string()).collect::<Vec<_>>());
    let agg = AggregateQuery {
        filter: "+/t".into(),
        from_us: hour(0),
        to_us: hour(4),
        field: FieldPath::parse("payload").unwrap(),
        bucket_us: 3_600_000_000,
    };
    let series = h.aggregate(&agg).unwrap();
    for s in &series {
        let avgs: Vec<f64> = s.buckets.iter().map(|b| b.get(m2m_history::Agg::Avg)).collect();
        assert_eq!(avgs, [29.5, 89.5, 149.5, 209.5], "{}", s.topic);
    }
    // Out of order for a topic: stored just after its last record.
    assert!(h.import(&message("a/t", "late"), start));
    assert!(h.flush(Duration::from_secs(10)));
    let last = h.latest("a/t").unwrap().remove(0);
    assert_eq!((last.ts_us, &last.record.payload[..]), (start + 239 * 60_000_000 + 1, &b"late"[..]));
}

/// Aggregates in whole-minute buckets are served from the writer's per-minute rollups: they must
/// equal what the points say, across a restart in the middle of a minute, segments closed in the
/// middle of a minute, partial minutes at both ends of the range, payloads without the field and
/// numbers written as strings.
#[test]
fn rollup_aggregates_equal_what_the_points_say() {
    let dir = TempDir::new("history-rollup");
    // Segments of about 2 KiB: several close within a minute.
    let config = || HistoryConfig { max_age: None, max_bytes: Some(16 * 1024), ..HistoryConfig::default() };
    let start = m2m_history::time::parse_time("2026-03-01T10:00:00Z", 0).unwrap();
    let mut t = start;
    let mut n = 0u64;
    for part in 0..2 {
        let (_store, h) = open(&dir, config());
        // 20 minutes a part; the restart falls in the middle of minute 20.
        while t < start + (part + 1) * 20 * 60_000_000 + 30_000_000 {
            n += 1;
            let payload = match n % 7 {
                0 => "{\"other\":1}".to_owned(),
                1 => format!("{{\"t\":\"{}\"}}", n % 13),
                _ => format!("{{\"t\":{}.5,\"u\":{n}}}", n % 17),
            };
            assert!(h.import(&message(if n.is_multiple_of(3) { "r/b" } else { "r/a" }, payload), t));
            t += 1_000_000 + (n * 7919) % 3_000_000;
        }
        assert!(h.flush(Duration::from_secs(10)));
    }
    let (_store, h) = open(&dir, config());
    let (from, to) = (start + 17_000_000, t - 23_000_000);
    let points: Vec<_> =
        h.query(&Query { from_us: from, to_us: to, ..all("r/+") }).unwrap().map(Result::unwrap).collect();
    let field = FieldPath::parse("payload.t").unwrap();
    for bucket in [60_000_000u64, 300_000_000, 3_600_000_000] {
        let got = h
            .aggregate(&AggregateQuery {
                filter: "r/+".into(),
                from_us: from,
                to_us: to,
                field: field.clone(),
                bucket_us: bucket,
            })
            .unwrap();
        for s in &got {
            let mine: Vec<(u64, Option<f64>)> = points
                .iter()
                .filter(|p| p.topic == s.topic)
                .map(|p| (p.ts_us, field.number(&p.record.payload)))
                .collect();
            assert_eq!(
                s.skipped,
                mine.iter().filter(|(_, v)| v.is_none()).count() as u64,
                "{} skipped",
                s.topic
            );
            let mut want: Vec<(u64, u64, f64, f64, f64, f64, f64)> = Vec::new();
            for (ts, v) in mine.iter().filter_map(|(ts, v)| v.map(|v| (*ts, v))) {
                let b = ts - ts % bucket;
                match want.last_mut() {
                    Some(w) if w.0 == b => {
                        w.1 += 1;
                        w.2 = w.2.min(v);
                        w.3 = w.3.max(v);
                        w.4 += v;
                        w.6 = v;
                    }
                    _ => want.push((b, 1, v, v, v, v, v)),
                }
            }
            let have: Vec<_> = s
                .buckets
                .iter()
                .map(|b| (b.start_us, b.count, b.min, b.max, b.sum, b.first, b.last))
                .collect();
            assert_eq!(have.len(), want.len(), "{} buckets of {bucket}", s.topic);
            for (h, w) in have.iter().zip(&want) {
                assert_eq!(
                    (h.0, h.1, h.2, h.3, h.5, h.6),
                    (w.0, w.1, w.2, w.3, w.5, w.6),
                    "{} bucket {}",
                    s.topic,
                    h.0
                );
                assert!((h.4 - w.4).abs() < 1e-6, "sum {} vs {}", h.4, w.4);
            }
        }
    }
}
