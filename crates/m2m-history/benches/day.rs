//! A day of 1 Hz data for many topics: imports it (the writer's own path, with the data's times),
//! then measures what an operator asks of it: the hourly average of every topic over the day, the
//! 10 000 newest points of one topic, and every topic's last value. Prints one line per figure.
//!
//! `cargo bench -p m2m-history --bench day` — `M2M_DAY_TOPICS` (1000) and `M2M_DAY_HOURS` (24) size
//! it; `M2M_DAY_DIR` keeps the data between runs (imported once).

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use m2m_codec::QoS;
use m2m_history::{AggregateQuery, FieldPath, History, HistoryConfig, Order, Query};
use m2m_session::Message;
use m2m_store::{Store, StoreConfig};
use m2m_topic::TopicName;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; a test run (`cargo test --benches`) passes nothing: do little.
    let bench = std::env::args().any(|a| a == "--bench");
    let topics = if bench { env("M2M_DAY_TOPICS", 1000) } else { 3 };
    let hours = if bench { env("M2M_DAY_HOURS", 24) } else { 1 };
    let kept = std::env::var("M2M_DAY_DIR").ok();
    let temp = tempfile::tempdir().unwrap();
    let dir = kept.map_or_else(|| temp.path().to_owned(), std::path::PathBuf::from);
    let (store, _) = Store::open(StoreConfig::new(dir.join("store"))).unwrap();
    let config =
        HistoryConfig { max_age: None, max_bytes: None, queue_capacity: 200_000, ..HistoryConfig::default() };
    let history = History::open(store.clone(), config).unwrap();
    let start = m2m_history::time::parse_time("2026-06-01T00:00:00Z", 0).unwrap();
    let seconds = hours * 3600;
    let expected = topics * seconds;

    let have: u64 = history.topics("#").unwrap().iter().map(|t| t.messages).sum();
    if have != expected {
        assert_eq!(have, 0, "{} holds other data: use an empty M2M_DAY_DIR", dir.display());
        let names: Vec<TopicName> = (0..topics)
            .map(|i| TopicName::try_from(format!("site/line-{}/sensor-{i}/temp", i % 20).as_str()).unwrap())
            .collect();
        let began = Instant::now();
        for s in 0..seconds {
            for (i, name) in names.iter().enumerate() {
                let v = 20.0 + ((s + i as u64 * 7) % 600) as f64 / 20.0;
                let payload = format!("{{\"temp\":{v:.2},\"unit\":\"C\"}}");
                let m = Arc::new(Message::new(name.clone(), payload.into_bytes(), QoS::AtMostOnce, false));
                while !history.import(&m, start + s * 1_000_000) {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
        assert!(history.flush(Duration::from_secs(600)));
        let secs = began.elapsed().as_secs_f64();
        println!(
            "import: {expected} messages ({topics} topics x {seconds} s) in {secs:.1} s = {:.0} msg/s",
            expected as f64 / secs
        );
    }
    // Flushed tables only: let the engine write its buffers first.
    drop(history);
    drop(store);
    let (store, _) = Store::open(StoreConfig::new(dir.join("store"))).unwrap();
    let history = History::open(
        store.clone(),
        HistoryConfig { max_age: None, max_bytes: None, ..HistoryConfig::default() },
    )
    .unwrap();
    let (tables, all) = (history.disk_bytes(), store.disk_space());
    println!(
        "on disk: {tables} bytes of history tables = {:.1} bytes per message; the whole store {all} bytes",
        tables as f64 / expected as f64
    );

    let field = FieldPath::parse("payload.temp").unwrap();
    let day = AggregateQuery {
        filter: "site/#".into(),
        from_us: start,
        to_us: start + seconds * 1_000_000,
        field,
        bucket_us: 3_600_000_000,
    };
    for run in 1..=3 {
        let began = Instant::now();
        let series = history.aggregate(&day).unwrap();
        let ms = began.elapsed().as_secs_f64() * 1000.0;
        let points: u64 = series.iter().flat_map(|s| &s.buckets).map(|b| b.count).sum();
        assert_eq!(points, expected);
        println!("hourly average, {topics} topics x {hours} h ({points} points), run {run}: {ms:.0} ms");
    }
    let one = Query {
        filter: "site/line-0/sensor-0/temp".into(),
        from_us: 0,
        to_us: u64::MAX,
        limit: 10_000.min(seconds as usize),
        order: Order::Desc,
        after: None,
    };
    for run in 1..=3 {
        let began = Instant::now();
        let n = history.query(&one).unwrap().filter(|p| p.as_ref().unwrap().ts_us > 0).count();
        println!(
            "newest {n} points of one topic, run {run}: {:.2} ms",
            began.elapsed().as_secs_f64() * 1000.0
        );
    }
    let began = Instant::now();
    let latest = history.latest("#").unwrap();
    println!("last values of {} topics: {:.2} ms", latest.len(), began.elapsed().as_secs_f64() * 1000.0);
}
