//! The store gives back the disk space of delivered messages.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use m2m_codec::QoS;
use m2m_session::Message;
use m2m_store::{Store, StoreConfig};

use crate::support::{delivery, session, topic};

const DELIVERIES: u64 = 40_000;

/// Waits up to 30 s for `f` to hold, checking every 100 ms.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < Duration::from_secs(30), "not within 30 s: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Bytes in the files under `dir`, journals (`*.jnl`) left out.
fn files_but_journals(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| match e.metadata().unwrap() {
            m if m.is_dir() => files_but_journals(&e.path()),
            _ if e.file_name().to_string_lossy().ends_with(".jnl") => 0,
            m => m.len(),
        })
        .sum()
}

#[test]
fn tables_of_delivered_messages_are_compacted_away_and_live_ones_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        memtable_bytes: 1024 * 1024,
        tidy_interval: Duration::from_millis(100),
        tidy_min_bytes: 1024 * 1024,
        ..StoreConfig::new(dir.path())
    };
    let (store, _) = Store::open(config.clone()).unwrap();
    let message = Message::new(topic("t/tidy"), Bytes::from(vec![7u8; 400]), QoS::AtLeastOnce, false);
    let now = Instant::now();
    let mut batch = store.batch();
    batch.put_session(&session("gone"));
    batch.put_session(&session("kept"));
    batch.commit().unwrap();
    for chunk in 0..DELIVERIES / 1000 {
        let mut batch = store.batch();
        for i in chunk * 1000..(chunk + 1) * 1000 {
            batch.put_delivery("gone", i, &delivery(Message::clone(&message), QoS::AtLeastOnce, vec![]), now);
        }
        batch.commit().unwrap();
    }
    let mut batch = store.batch();
    for i in 0..10 {
        batch.put_delivery("kept", i, &delivery(Message::clone(&message), QoS::AtLeastOnce, vec![]), now);
    }
    batch.commit().unwrap();
    // 40 000 records of about 450 bytes: most of 18 MB reach the tables.
    eventually("the deliveries are flushed to tables", || store.table_space() > 8 * 1024 * 1024);
    let peak = store.table_space();
    let peak_files = files_but_journals(store.path());

    for chunk in 0..DELIVERIES / 1000 {
        let mut batch = store.batch();
        for i in chunk * 1000..(chunk + 1) * 1000 {
            batch.remove_delivery("gone", i);
        }
        batch.commit().unwrap();
    }
    eventually("the tables shrink below a tenth of their peak", || store.table_space() < peak / 10);
    // The files go too, journals included, not only the engine's view of its tables.
    // The files go too, not only the engine's view of its tables (the journal is bounded apart).
    eventually("the files shrink below a tenth of their peak", || {
        files_but_journals(store.path()) < peak_files / 10
    });

    // What was not delivered is still there, also after a reopen.
    let path = store.path().to_owned();
    drop(store);
    let (_store, recovered) =
        Store::open(StoreConfig { tidy_interval: Duration::from_secs(60), ..config }).unwrap();
    let kept: Vec<_> =
        recovered.sessions.iter().map(|s| (&*s.record.client_id, s.deliveries.len())).collect();
    assert!(kept.contains(&("kept", 10)), "{kept:?} in {}", path.display());
    assert!(kept.contains(&("gone", 0)), "{kept:?}");
}
