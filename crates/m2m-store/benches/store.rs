//! Commit + durability throughput with four writer threads, each committing a QoS 1 delivery and
//! waiting until it is durable before the next (as a connection waits to acknowledge). Reports
//! commits per second, fsyncs, and the commit latency writers see while fsyncs run.
//!
//! `cargo bench -p m2m-store`; `M2M_STORE_BENCH_DIR` measures another disk than the temp dir,
//! `M2M_STORE_BENCH_SECS` runs each mode longer than 3 s (long enough runs include memtable flushes),
//! `M2M_STORE_BENCH_THREADS` sets the number of writers.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use m2m_codec::QoS;
use m2m_session::{Delivery, Message};
use m2m_store::{SessionRecord, Store, StoreConfig, SyncMode};
use m2m_topic::TopicName;

const THREADS: usize = 4;

/// A setting from the environment, or its default.
fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn main() {
    let base = std::env::var_os("M2M_STORE_BENCH_DIR").map(std::path::PathBuf::from);
    for (name, sync) in
        [("always", SyncMode::Always), ("batch-10ms", SyncMode::Batch(Duration::from_millis(10)))]
    {
        let dir = match &base {
            Some(b) => tempfile::tempdir_in(b),
            None => tempfile::tempdir(),
        }
        .expect("temp dir");
        let mut config = StoreConfig::new(dir.path());
        config.sync = sync;
        let (store, _) = Store::open(config).expect("open store");
        run(name, &store);
    }
}

fn run(name: &str, store: &Store) {
    let run = Duration::from_secs(env_or("M2M_STORE_BENCH_SECS", 3));
    let writers = env_or("M2M_STORE_BENCH_THREADS", THREADS as u64) as usize;
    let message = Arc::new(Message::new(
        TopicName::try_from("factory/line-1/press-4/temperature").expect("topic"),
        Bytes::from(vec![0xA5; 256]),
        QoS::AtLeastOnce,
        false,
    ));
    let start = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|t| {
            let (store, message) = (store.clone(), message.clone());
            std::thread::spawn(move || {
                let client = format!("bench-{t}");
                let mut batch = store.batch();
                batch.put_session(&SessionRecord {
                    client_id: client.as_str().into(),
                    expiry_interval: 3600,
                    disconnected_at: None,
                    subscriptions: Vec::new(),
                });
                batch.commit().expect("commit");
                let delivery = Delivery {
                    message,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    subscription_ids: vec![],
                    stored: None,
                };
                let mut commit_times = Vec::new();
                let mut seq = 0;
                while start.elapsed() < run {
                    seq += 1;
                    let mut batch = store.batch();
                    batch.put_delivery(&client, seq, &delivery, Instant::now());
                    let t0 = Instant::now();
                    batch.commit().expect("commit");
                    commit_times.push(t0.elapsed());
                    let (tx, rx) = mpsc::channel();
                    store.on_durable(move |r| {
                        let _ = tx.send(r);
                    });
                    rx.recv().expect("durability callback").expect("durable");
                }
                commit_times
            })
        })
        .collect();
    let mut commit_times: Vec<Duration> =
        threads.into_iter().flat_map(|t| t.join().expect("writer thread")).collect();
    let elapsed = start.elapsed();
    commit_times.sort();
    let n = commit_times.len();
    let pct = |p: f64| commit_times[((n as f64 * p) as usize).min(n - 1)];
    println!(
        "store/{name}: {n} commit+durable in {elapsed:.2?} = {:.0}/s with {writers} threads, {} fsyncs \
         ({:.1} per fsync); commit latency p50 {:?} p99 {:?} max {:?}",
        n as f64 / elapsed.as_secs_f64(),
        store.syncs(),
        n as f64 / store.syncs().max(1) as f64,
        pct(0.5),
        pct(0.99),
        commit_times[n - 1],
    );
}
