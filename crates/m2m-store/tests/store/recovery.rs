//! What `open` does with expired messages, orphans, torn journals, newer formats and damaged files.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use m2m_codec::QoS;
use m2m_store::{Phase, Store, StoreConfig, StoreError};

use crate::support::*;

/// Counts the records of one keyspace, reading the database directly.
fn count(path: &Path, keyspace: &str) -> usize {
    let db = fjall::Database::builder(path).open().unwrap();
    let ks = db.keyspace(keyspace, fjall::KeyspaceCreateOptions::default).unwrap();
    ks.iter().count()
}

#[test]
fn expired_messages_are_dropped_at_recovery_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let now = Instant::now();
    let short = full_message("t/short", now, Duration::from_millis(50));
    let long = full_message("t/long", now, Duration::from_secs(3600));
    let mut batch = store.batch();
    batch.put_session(&session("c"));
    batch.put_delivery("c", 1, &delivery(short.clone(), QoS::AtLeastOnce, vec![]), now);
    batch.set_flight("c", 1, 7, Phase::Sent);
    batch.put_delivery("c", 2, &delivery(long.clone(), QoS::AtLeastOnce, vec![]), now);
    batch.put_retained(&short, now);
    batch.put_retained(&long, now);
    batch.commit().unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let (store, r) = reopen(store);
    assert_eq!(r.dropped_expired, 2);
    assert_eq!(r.sessions[0].deliveries.iter().map(|d| d.seq).collect::<Vec<_>>(), [2]);
    assert_eq!(r.retained.iter().map(|m| m.topic.as_str()).collect::<Vec<_>>(), ["t/long"]);
    let left = r.retained[0].expires_at.unwrap().saturating_duration_since(Instant::now());
    assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3600), "{left:?}");
    // The seq of the dropped delivery still counts: it was found.
    assert_eq!(r.next_seq, 3);

    let (store, r) = reopen(store);
    assert_eq!(r.dropped_expired, 0, "expired records were deleted");
    drop(store);
    assert_eq!(count(dir.path(), "flight"), 0, "the expired delivery's flight state went with it");
}

#[test]
fn orphans_are_removed_at_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let now = Instant::now();
    let mut batch = store.batch();
    batch.put_session(&session("kept"));
    batch.put_delivery("kept", 1, &delivery(plain_message("t", b"x"), QoS::AtLeastOnce, vec![]), now);
    batch.set_flight("kept", 1, 1, Phase::Sent);
    // A flight state without its delivery.
    batch.set_flight("kept", 2, 2, Phase::Released);
    // Records of a client without a session.
    batch.put_delivery("gone", 9, &delivery(plain_message("t", b"y"), QoS::AtLeastOnce, vec![]), now);
    batch.set_flight("gone", 9, 3, Phase::Sent);
    batch.put_incoming("gone", 4);
    batch.commit().unwrap();

    let (store, r) = reopen(store);
    assert_eq!(r.sessions.len(), 1);
    let s = &r.sessions[0];
    assert_eq!(
        s.deliveries.iter().map(|d| (d.seq, d.flight)).collect::<Vec<_>>(),
        [(1, Some((1, Phase::Sent)))]
    );
    assert_eq!(r.next_seq, 10);
    drop(store);
    assert_eq!(count(dir.path(), "deliveries"), 1);
    assert_eq!(count(dir.path(), "flight"), 1);
    assert_eq!(count(dir.path(), "incoming"), 0);
}

/// The newest journal file of the store in `dir`.
fn newest_journal(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
        .max_by_key(|p| p.file_stem().unwrap().to_str().unwrap().parse::<u64>().unwrap())
        .expect("a journal file")
}

#[test]
fn a_torn_journal_tail_loses_only_the_last_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let mut batch = store.batch();
    batch.put_session(&session("first"));
    batch.commit().unwrap();
    // Reopening trims the journal's preallocated tail, so the next batch ends the file.
    let (store, _) = reopen(store);
    let mut batch = store.batch();
    batch.put_session(&session("second"));
    batch.commit().unwrap();
    drop(store);

    let journal = newest_journal(dir.path());
    let len = std::fs::metadata(&journal).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&journal).unwrap().set_len(len - 3).unwrap();

    let (_store, r) = open(dir.path());
    let clients: Vec<_> = r.sessions.iter().map(|s| s.record.client_id.to_string()).collect();
    assert_eq!(clients, ["first"]);
}

#[test]
fn a_store_from_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    {
        let db = fjall::Database::builder(dir.path()).open().unwrap();
        let meta = db.keyspace("meta", fjall::KeyspaceCreateOptions::default).unwrap();
        meta.insert("version", 99u32.to_be_bytes()).unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let err = Store::open(StoreConfig::new(dir.path())).unwrap_err();
    assert!(matches!(err, StoreError::FutureVersion { found: 99, supported: 1 }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("99") && msg.contains('1'), "{msg}");
}

#[test]
fn a_record_that_does_not_decode_is_corruption_naming_keyspace_and_key() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    {
        let db = fjall::Database::builder(dir.path()).open().unwrap();
        let ks = db.keyspace("sessions", fjall::KeyspaceCreateOptions::default).unwrap();
        ks.insert("client-x", [1u8, 0, 0]).unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let err = Store::open(StoreConfig::new(dir.path())).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(
        msg.contains("sessions") && msg.contains("client-x") && msg.contains("move the data directory"),
        "{msg}"
    );
}

/// Fills the deliveries keyspace past several memtables so the engine writes table files, and returns
/// the table files found (largest first).
fn store_with_table_files(dir: &Path) -> Vec<PathBuf> {
    let mut config = StoreConfig::new(dir);
    config.memtable_bytes = 64 * 1024;
    let (store, _) = Store::open(config).unwrap();
    let now = Instant::now();
    let mut batch = store.batch();
    batch.put_session(&session("c"));
    batch.commit().unwrap();
    let payload: &'static [u8] = &[0x5A; 1024];
    for seq in 1..=600u64 {
        let mut batch = store.batch();
        batch.put_delivery("c", seq, &delivery(plain_message("t", payload), QoS::AtLeastOnce, vec![]), now);
        batch.commit().unwrap();
    }
    let keyspaces = dir.join("keyspaces");
    let tables = || files_under(&keyspaces).into_iter().filter(|p| is_table(p)).collect::<Vec<_>>();
    let size = |p: &PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
    wait_until(Duration::from_secs(20), "table files were written", || {
        tables().iter().map(size).sum::<u64>() > 200 * 1024
    });
    // Compactions may replace tables until the database is closed.
    drop(store);
    let mut tables = tables();
    tables.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().len()));
    tables
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Table files live in a `tables` folder of their keyspace.
fn is_table(p: &Path) -> bool {
    p.parent().and_then(Path::file_name).is_some_and(|n| n == "tables")
}

fn assert_open_reports_corruption(dir: &Path) {
    let result = std::panic::catch_unwind(|| Store::open(StoreConfig::new(dir)).map(|_| ()));
    let err = match result {
        Ok(Ok(())) => panic!("a damaged store opened without an error"),
        Ok(Err(e)) => e,
        Err(_) => panic!("opening a damaged store panicked"),
    };
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(msg.contains(&dir.display().to_string()), "names the store's files: {msg}");
    assert!(msg.contains("move the data directory aside") && msg.contains("backup"), "{msg}");
}

#[test]
fn garbled_table_file_is_reported_as_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let tables = store_with_table_files(dir.path());
    let table = &tables[0];
    let mut bytes = std::fs::read(table).unwrap();
    let mid = bytes.len() / 3;
    for b in &mut bytes[mid..mid + 256] {
        *b ^= 0xA5;
    }
    std::fs::write(table, bytes).unwrap();
    assert_open_reports_corruption(dir.path());
}

#[test]
fn truncated_table_file_is_reported_as_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let tables = store_with_table_files(dir.path());
    let table = &tables[0];
    let len = std::fs::metadata(table).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(table).unwrap().set_len(len / 2).unwrap();
    assert_open_reports_corruption(dir.path());
}

#[test]
fn a_panic_in_the_engine_while_opening_is_reported_as_corruption() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    // The engine asserts that journals are files.
    std::fs::create_dir(dir.path().join("999.jnl")).unwrap();
    assert_open_reports_corruption(dir.path());
}

#[test]
fn a_store_open_in_another_handle_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, _) = open(dir.path());
    let err = Store::open(StoreConfig::new(dir.path())).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
}
