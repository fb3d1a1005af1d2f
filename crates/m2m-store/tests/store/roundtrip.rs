//! Every kind of record survives a close and a reopen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use m2m_codec::{QoS, RetainHandling, SubscriptionOptions};
use m2m_session::SubscriptionEntry;
use m2m_store::{Phase, SessionRecord, Store, WillRecord};
use m2m_topic::parse_subscription;

use crate::support::*;

fn entry(filter: &str, options: SubscriptionOptions, id: Option<u32>) -> (Arc<str>, SubscriptionEntry) {
    (filter.into(), SubscriptionEntry { subscription: parse_subscription(filter).unwrap(), options, id })
}

fn session(client: &str) -> SessionRecord {
    SessionRecord {
        client_id: client.into(),
        expiry_interval: 3600,
        disconnected_at: Some(1_700_000_000_123),
        subscriptions: vec![
            entry(
                "sensors/+/temp",
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
                Some(268_435_455),
            ),
            entry(
                "$share/workers/jobs/#",
                SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::SendIfNew,
                },
                None,
            ),
            entry("#", SubscriptionOptions::default(), Some(1)),
        ],
    }
}

#[test]
fn every_record_kind_round_trips_through_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, recovered) = open(dir.path());
    assert!(recovered.sessions.is_empty() && recovered.retained.is_empty() && recovered.wills.is_empty());
    assert_eq!((recovered.next_seq, recovered.alive_at, recovered.dropped_expired), (1, None, 0));

    let now = Instant::now();
    let online = SessionRecord { disconnected_at: None, subscriptions: Vec::new(), ..session("online") };
    let d1 = delivery(full_message("a/b", now, Duration::from_secs(3600)), QoS::AtLeastOnce, vec![1, 99]);
    let d2 = delivery(plain_message("c", b""), QoS::ExactlyOnce, Vec::new());
    let d3 = delivery(plain_message("c", b"third"), QoS::AtMostOnce, vec![7]);
    let retained_full = full_message("r/full", now, Duration::from_secs(600));
    let retained_plain = plain_message("r/plain", b"x");
    let will_pending = WillRecord {
        message: full_message("will/a", now, Duration::from_secs(120)),
        delay: 30,
        publish_at: Some(1_700_000_030_000),
    };
    let will_connected = WillRecord { message: plain_message("will/b", b"bye"), delay: 0, publish_at: None };

    let mut batch = store.batch();
    batch.put_session(&session("client-1"));
    batch.put_session(&online);
    batch.put_delivery("client-1", 10, &d1, now);
    batch.put_delivery("client-1", 11, &d2, now);
    batch.put_delivery("client-1", 300, &d3, now);
    batch.set_flight("client-1", 10, 1, Phase::Sent);
    batch.set_flight("client-1", 11, 65535, Phase::Released);
    batch.put_incoming("client-1", 9);
    batch.put_incoming("client-1", 2);
    batch.put_incoming("online", 65535);
    batch.put_retained(&retained_full, now);
    batch.put_retained(&retained_plain, now);
    batch.put_will("client-1", &will_pending, now);
    batch.put_will("online", &will_connected, now);
    batch.set_alive(1_700_000_099_000);
    assert!(!batch.is_empty());
    batch.commit().unwrap();
    wait_durable(&store).unwrap();

    let (store, mut r) = reopen(store);
    assert_eq!(r.next_seq, 301);
    assert_eq!(r.alive_at, Some(1_700_000_099_000));
    assert_eq!(r.dropped_expired, 0);

    assert_eq!(r.sessions.len(), 2);
    let s = &mut r.sessions[0];
    assert_eq!(s.record, session("client-1"));
    assert_eq!(s.incoming, [2, 9]);
    let seqs: Vec<_> = s.deliveries.iter().map(|d| (d.seq, d.flight)).collect();
    assert_eq!(seqs, [(10, Some((1, Phase::Sent))), (11, Some((65535, Phase::Released))), (300, None)]);
    for (stored, mut want) in s.deliveries.iter_mut().zip([d1, d2, d3]) {
        assert_eq!(stored.delivery.stored, Some(stored.seq));
        let got = Arc::make_mut(&mut stored.delivery.message);
        assert_expiry_close(got, Arc::make_mut(&mut want.message));
        want.stored = Some(stored.seq);
        assert_eq!(stored.delivery, want);
    }
    let s = &r.sessions[1];
    assert_eq!(s.record, online);
    assert_eq!(s.incoming, [65535]);
    assert!(s.deliveries.is_empty());

    assert_eq!(r.retained.len(), 2);
    let (mut got, mut want) = (r.retained[0].clone(), retained_full);
    assert_expiry_close(&mut got, &mut want);
    assert_eq!(got, want);
    assert_eq!(r.retained[1], retained_plain);

    assert_eq!(r.wills.len(), 2);
    let (client, mut got) = r.wills[0].clone();
    let mut want = will_pending;
    assert_eq!(&*client, "client-1");
    assert_expiry_close(&mut got.message, &mut want.message);
    assert_eq!(got, want);
    assert_eq!(r.wills[1], ("online".into(), will_connected));
    drop(store);
}

#[test]
fn removals_take_effect_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let now = Instant::now();
    let mut batch = store.batch();
    for client in ["a", "ab"] {
        batch.put_session(&session(client));
        batch.put_delivery(client, 1, &delivery(plain_message("t", b"1"), QoS::AtLeastOnce, vec![]), now);
        batch.put_delivery(client, 2, &delivery(plain_message("t", b"2"), QoS::AtLeastOnce, vec![]), now);
        batch.set_flight(client, 1, 5, Phase::Sent);
        batch.put_incoming(client, 3);
        batch.put_will(
            client,
            &WillRecord { message: plain_message("w", b""), delay: 0, publish_at: None },
            now,
        );
    }
    batch.put_retained(&plain_message("r", b"x"), now);
    batch.commit().unwrap();

    let mut batch = store.batch();
    // "a" is a prefix of "ab" as a string, not as a key: removing "a" must leave "ab" alone.
    batch.remove_session("a");
    batch.remove_delivery("ab", 1);
    batch.remove_incoming("ab", 3);
    batch.remove_will("ab");
    batch.remove_retained("r");
    batch.commit().unwrap();

    let (_store, r) = reopen(store);
    assert_eq!(r.sessions.len(), 1);
    let s = &r.sessions[0];
    assert_eq!(&*s.record.client_id, "ab");
    assert_eq!(s.deliveries.iter().map(|d| (d.seq, d.flight)).collect::<Vec<_>>(), [(2, None)]);
    assert!(s.incoming.is_empty());
    assert!(r.wills.is_empty());
    assert!(r.retained.is_empty());
    assert_eq!(r.next_seq, 3);
}

#[test]
fn later_writes_in_a_batch_win_over_earlier_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let now = Instant::now();
    let d = |p: &'static [u8]| delivery(plain_message("t", p), QoS::AtLeastOnce, vec![]);

    let mut batch = store.batch();
    batch.put_session(&session("c"));
    batch.put_delivery("c", 1, &d(b"old"), now);
    batch.put_delivery("c", 1, &d(b"new"), now);
    batch.put_delivery("c", 2, &d(b"gone"), now);
    batch.remove_delivery("c", 2);
    batch.commit().unwrap();

    let mut batch = store.batch();
    batch.put_delivery("c", 3, &d(b"before"), now);
    batch.remove_session("c");
    batch.put_session(&session("c"));
    batch.put_delivery("c", 4, &d(b"after"), now);
    batch.commit().unwrap();

    let (_store, r) = reopen(store);
    let s = &r.sessions[0];
    let payloads: Vec<_> = s.deliveries.iter().map(|d| (d.seq, d.delivery.message.payload.clone())).collect();
    assert_eq!(payloads, [(4, bytes::Bytes::from_static(b"after"))]);
}

#[tokio::test]
async fn durable_resolves_after_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    assert!(store.waits_for_sync() && store.is_healthy());
    let mut batch = store.batch();
    batch.set_alive(5);
    assert_eq!(batch.len(), 1);
    batch.commit().unwrap();
    store.durable().await.unwrap();
    assert!(store.syncs() >= 1);
    // Nothing written since: no second fsync.
    let syncs = store.syncs();
    store.durable().await.unwrap();
    assert_eq!(store.syncs(), syncs);
    assert!(store.disk_space() > 0);
}

#[test]
fn records_of_the_owners_tables_round_trip_in_key_order_and_page() {
    use m2m_store::Table;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let mut batch = store.batch();
    for key in ["c", "a", "b", "d"] {
        batch.put_record(Table::Devices, key.as_bytes(), format!("device {key}").into_bytes());
    }
    batch.put_record(Table::Groups, b"a", b"group a".to_vec());
    batch.commit().unwrap();
    let mut batch = store.batch();
    batch.remove_record(Table::Devices, b"d");
    batch.put_record(Table::Devices, b"b", b"device b, changed".to_vec());
    batch.commit().unwrap();

    let all = |store: &Store| -> Vec<(String, String)> {
        store
            .records(Table::Devices)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    };
    let want = vec![
        ("a".to_owned(), "device a".to_owned()),
        ("b".to_owned(), "device b, changed".to_owned()),
        ("c".to_owned(), "device c".to_owned()),
    ];
    assert_eq!(all(&store), want);
    assert_eq!(store.record(Table::Devices, b"b").unwrap().as_deref(), Some(&b"device b, changed"[..]));
    assert_eq!(store.record(Table::Devices, b"d").unwrap(), None);
    let page: Vec<_> = store.records_after(Table::Devices, Some(b"a"), 1).unwrap();
    assert_eq!(page, vec![(b"b".to_vec(), b"device b, changed".to_vec())]);
    let newest: Vec<_> =
        store.records_before(Table::Devices, None, 2).unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(newest, [b"c".to_vec(), b"b".to_vec()]);
    let older: Vec<_> =
        store.records_before(Table::Devices, Some(b"b"), 5).unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(older, [b"a".to_vec()]);
    // Tables are apart: the group "a" is not the device "a".
    assert_eq!(store.records(Table::Groups).unwrap(), vec![(b"a".to_vec(), b"group a".to_vec())]);

    let (store, recovered) = reopen(store);
    assert_eq!(all(&store), want);
    assert!(recovered.sessions.is_empty(), "records are not sessions");
}
