//! History hot paths on a real store: ingesting messages (capture, group commit) and reading 10 000
//! points of one topic back.

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use m2m_codec::QoS;
use m2m_history::{History, HistoryConfig, Order, Query};
use m2m_router::Tap;
use m2m_session::Message;
use m2m_store::{Store, StoreConfig};
use m2m_topic::TopicName;

fn messages(n: usize, topics: usize) -> Vec<Arc<Message>> {
    let names: Vec<TopicName> = (0..topics)
        .map(|i| TopicName::try_from(format!("plant/line-{}/sensor-{i}", i % 10).as_str()).unwrap())
        .collect();
    (0..n)
        .map(|i| {
            let payload = format!("{{\"temp\":{:.2},\"seq\":{i}}}", 20.0 + (i % 100) as f64 / 10.0);
            let mut m = Message::new(names[i % topics].clone(), payload.into_bytes(), QoS::AtMostOnce, false);
            m.publisher = Some(Arc::from("bench-client"));
            Arc::new(m)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(StoreConfig::new(dir.path().join("store"))).unwrap();
    let history =
        History::open(store, HistoryConfig { max_bytes: None, ..HistoryConfig::default() }).unwrap();

    let batch = messages(10_000, 1000);
    let mut group = c.benchmark_group("history");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("ingest 10k messages on 1000 topics", |b| {
        b.iter(|| {
            for m in &batch {
                history.message(m);
            }
            assert!(history.flush(Duration::from_secs(60)));
        });
    });

    // One topic with 10 000 points, among others.
    let one = TopicName::try_from("plant/press-1/temp").unwrap();
    for i in 0..10_000 {
        history.message(&Arc::new(Message::new(
            one.clone(),
            format!("{{\"temp\":{i}}}").into_bytes(),
            QoS::AtMostOnce,
            false,
        )));
    }
    assert!(history.flush(Duration::from_secs(60)));
    let query = Query {
        filter: one.as_str().into(),
        from_us: 0,
        to_us: u64::MAX,
        limit: 10_000,
        order: Order::Asc,
        after: None,
    };
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("query 10k points of one topic", |b| {
        b.iter(|| {
            let bytes: usize = history.query(&query).unwrap().map(|p| p.unwrap().record.payload.len()).sum();
            assert!(bytes > 10_000);
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
