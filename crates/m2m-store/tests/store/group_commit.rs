//! Many writers waiting for durability share fsyncs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use m2m_codec::QoS;
use m2m_store::{SessionRecord, StoreConfig, SyncMode};

use crate::support::*;

#[test]
fn concurrent_waiters_share_fsyncs() {
    const THREADS: usize = 32;
    const ROUNDS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let barrier = Arc::new(Barrier::new(THREADS));
    let failures = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, barrier, failures) = (store.clone(), barrier.clone(), failures.clone());
            std::thread::spawn(move || {
                let client = format!("client-{t}");
                let record = SessionRecord {
                    client_id: client.as_str().into(),
                    expiry_interval: 60,
                    disconnected_at: None,
                    subscriptions: vec![],
                };
                barrier.wait();
                for round in 0..ROUNDS {
                    let mut batch = store.batch();
                    batch.put_session(&record);
                    let d =
                        delivery(plain_message("load/test", b"0123456789abcdef"), QoS::AtLeastOnce, vec![]);
                    batch.put_delivery(&client, round as u64 + 1, &d, Instant::now());
                    batch.commit().unwrap();
                    if wait_durable(&store).is_err() {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = start.elapsed();
    let waiters = (THREADS * ROUNDS) as u64;
    let syncs = store.syncs();
    println!(
        "{waiters} commits+waits in {elapsed:?} ({:.0}/s) with {syncs} fsyncs ({:.1} waiters per fsync)",
        waiters as f64 / elapsed.as_secs_f64(),
        waiters as f64 / syncs as f64
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(syncs >= 1);
    assert!(syncs * 4 <= waiters, "{syncs} fsyncs for {waiters} waiters: writers do not share them");

    let (_store, r) = reopen(store);
    assert_eq!(r.sessions.len(), THREADS);
    assert!(r.sessions.iter().all(|s| s.deliveries.len() == ROUNDS));
}

#[test]
fn batch_mode_completes_waiters_at_once_and_syncs_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path());
    config.sync = SyncMode::Batch(Duration::from_millis(20));
    let (store, _) = m2m_store::Store::open(config).unwrap();
    assert!(!store.waits_for_sync());
    let mut batch = store.batch();
    batch.set_alive(1);
    batch.commit().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    store.on_durable(move |r| tx.send(r).unwrap());
    // Called on this thread, before `on_durable` returned.
    assert!(rx.try_recv().unwrap().is_ok());
    wait_until(Duration::from_secs(5), "the periodic sync ran", || store.syncs() >= 1);
}

#[test]
fn waiters_are_called_in_the_order_they_queued() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..100 {
        let mut batch = store.batch();
        batch.set_alive(i);
        batch.commit().unwrap();
        let (order, tx) = (order.clone(), tx.clone());
        store.on_durable(move |r| {
            r.unwrap();
            order.lock().unwrap().push(i);
            tx.send(()).unwrap();
        });
    }
    for _ in 0..100 {
        rx.recv_timeout(Duration::from_secs(30)).unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..100).collect::<Vec<_>>());
}
