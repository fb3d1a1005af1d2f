//! Series keyspaces on a real store on disk: written in batches, read by range in both directions,
//! listed and kept across a reopen, and dropped with their files.

#![allow(clippy::unwrap_used)]

use std::ops::Bound;
use std::sync::Arc;

use m2m_store::{SeriesBatch, Store, StoreConfig};
use m2m_test::TempDir;

fn key(n: u32) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

#[test]
fn series_are_written_read_by_range_kept_across_a_reopen_and_dropped() {
    let dir = TempDir::new("series");
    let config = StoreConfig::new(dir.path().join("store"));
    let (a, b): (Arc<str>, Arc<str>) = (Arc::from("history.a"), Arc::from("history.b"));
    {
        let (store, _) = Store::open(config.clone()).unwrap();
        assert!(store.series_names().unwrap().is_empty(), "no series in a new store");
        let mut batch = SeriesBatch::new();
        for n in 0..1000u32 {
            batch.put(&a, key(n), format!("a{n}").into_bytes());
        }
        batch.put(&b, key(1), b"b1".to_vec());
        batch.remove(&a, key(500));
        store.write_series(batch).unwrap();

        let range = (Bound::Included(key(10)), Bound::Excluded(key(20)));
        let got: Vec<u32> = store
            .series_range("history.a", range.clone())
            .unwrap()
            .map(|r| u32::from_be_bytes(r.unwrap().0.try_into().unwrap()))
            .collect();
        assert_eq!(got, (10..20).collect::<Vec<_>>());
        let newest: Vec<Vec<u8>> =
            store.series_range("history.a", range).unwrap().rev().take(2).map(|r| r.unwrap().1).collect();
        assert_eq!(newest, [b"a19".to_vec(), b"a18".to_vec()]);
        let all = (Bound::Unbounded, Bound::Unbounded);
        assert_eq!(store.series_range("history.a", all.clone()).unwrap().count(), 999, "500 removed");
        assert_eq!(store.series_range("missing", all).unwrap().count(), 0);
    }
    let (store, _) = Store::open(config.clone()).unwrap();
    let mut names = store.series_names().unwrap();
    names.sort();
    assert_eq!(names, ["history.a", "history.b"]);
    assert_eq!(store.series_get("history.b", &key(1)).unwrap(), Some(b"b1".to_vec()));
    store.drop_series("history.a").unwrap();
    assert_eq!(store.series_names().unwrap(), ["history.b"]);
    assert_eq!(store.series_range("history.a", (Bound::Unbounded, Bound::Unbounded)).unwrap().count(), 0);
    drop(store);
    let (store, _) = Store::open(config).unwrap();
    assert_eq!(store.series_names().unwrap(), ["history.b"], "the drop outlives a reopen");
}
