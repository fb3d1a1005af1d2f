//! A full disk: the store fails fast, then recovers by itself once there is room again.

use std::time::{Duration, Instant};

use m2m_codec::QoS;
use m2m_store::{Store, StoreConfig, StoreError};
use m2m_test::{fill_disk, noise, Tmpfs};

use crate::support::*;

fn put_big_delivery(store: &Store, seq: u64) -> Result<(), StoreError> {
    let mut message = plain_message("fill/up", b"");
    message.payload = noise(seq, 16 * 1024);
    let mut batch = store.batch();
    batch.put_delivery("c", seq, &delivery(message, QoS::AtLeastOnce, vec![]), Instant::now());
    batch.commit()
}

#[test]
fn a_full_disk_makes_the_store_unhealthy_until_there_is_room_again() {
    let fs = Tmpfs::mount("8m");
    let data = fs.path.join("store");
    let filler = fs.path.join("filler");
    let config = StoreConfig::new(&data);
    let (store, _) = Store::open(config.clone()).unwrap();

    // Data made durable before the fault.
    let mut batch = store.batch();
    batch.put_session(&session("c"));
    batch.commit().unwrap();
    for seq in 1..=4 {
        put_big_delivery(&store, seq).unwrap();
    }
    wait_durable(&store).unwrap();
    assert!(store.is_healthy());

    fill_disk(&filler);
    // Small writes may still land in blocks the journal already has; keep writing until one fails.
    let mut seq = 100;
    let err = loop {
        let started = Instant::now();
        let result = put_big_delivery(&store, seq).and_then(|()| wait_durable(&store));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a write on a full disk took {:?}",
            started.elapsed()
        );
        if let Err(e) = result {
            break e;
        }
        seq += 1;
        assert!(seq < 1000, "writes kept succeeding on a full disk");
    };
    println!("first error on a full disk: {err} ({err:?})");
    assert!(!store.is_healthy());

    // From now on commits fail fast, without writing.
    let started = Instant::now();
    let err = put_big_delivery(&store, 5000).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(matches!(wait_durable(&store), Err(StoreError::Unavailable)));

    std::fs::remove_file(&filler).unwrap();
    wait_until(Duration::from_secs(20), "the store recovered", || store.is_healthy());

    let mut batch = store.batch();
    batch.put_session(&session("after"));
    batch.commit().unwrap();
    wait_durable(&store).unwrap();
    assert!(store.syncs() >= 2);

    drop(store);
    let (_store, r) = Store::open(config).unwrap();
    let c = r.sessions.iter().find(|s| &*s.record.client_id == "c").expect("session from before the fault");
    let seqs: Vec<_> = c.deliveries.iter().map(|d| d.seq).filter(|&s| s <= 4).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(c.deliveries[0].delivery.message.payload, noise(1, 16 * 1024));
    assert!(r.sessions.iter().any(|s| &*s.record.client_id == "after"));
}

/// The engine flushes full memtables to table files in the background. When that fails (here the
/// deliveries' table folder is on a full disk while the journal is not), commits must fail rather than
/// wait forever for the flush, and the store must recover once there is room.
#[test]
fn a_failed_background_flush_fails_commits_instead_of_blocking_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let mut config = StoreConfig::new(&data);
    config.memtable_bytes = 64 * 1024;
    drop(Store::open(config.clone()).unwrap());
    let tables = data.join("keyspaces/3/tables");
    assert!(tables.is_dir(), "the deliveries keyspace is number 3 and has a tables folder");
    let fs = Tmpfs::mount_at(&tables, "256k");
    let filler = fs.path.join("filler");

    let (store, _) = Store::open(config.clone()).unwrap();
    let mut batch = store.batch();
    batch.put_session(&session("c"));
    batch.commit().unwrap();
    for seq in 1..=2 {
        put_big_delivery(&store, seq).unwrap();
    }
    wait_durable(&store).unwrap();

    fill_disk(&filler);
    let mut seq = 3;
    let started = Instant::now();
    let err = loop {
        let t = Instant::now();
        let result = put_big_delivery(&store, seq);
        assert!(t.elapsed() < Duration::from_secs(10), "a commit took {:?}", t.elapsed());
        if let Err(e) = result {
            break e;
        }
        seq += 1;
        assert!(started.elapsed() < Duration::from_secs(60), "commits kept succeeding with flushes failing");
    };
    println!("first error with flushes failing, after {} commits: {err} ({err:?})", seq - 3);
    assert!(!store.is_healthy());
    let t = Instant::now();
    assert!(put_big_delivery(&store, 10_000).is_err());
    assert!(t.elapsed() < Duration::from_secs(1));

    std::fs::remove_file(&filler).unwrap();
    wait_until(Duration::from_secs(30), "the store recovered", || store.is_healthy());
    put_big_delivery(&store, 20_000).unwrap();
    wait_durable(&store).unwrap();

    drop(store);
    let (store, r) = Store::open(config).unwrap();
    let seqs: Vec<_> = r.sessions[0].deliveries.iter().map(|d| d.seq).collect();
    assert!(seqs.starts_with(&[1, 2]) && seqs.ends_with(&[20_000]), "{seqs:?}");
    drop(store);
    drop(fs);
}
