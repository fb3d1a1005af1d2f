//! Helpers shared by the store tests.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use m2m_codec::{PublishProperties, QoS};
use m2m_session::{Delivery, Message};
use m2m_store::{Recovered, SessionRecord, Store, StoreConfig};
use m2m_topic::TopicName;

/// Opens the store in `dir` with default settings, panicking on failure.
pub(crate) fn open(dir: &Path) -> (Store, Recovered) {
    Store::open(StoreConfig::new(dir)).expect("open store")
}

/// Drops `store` and opens the same directory again.
pub(crate) fn reopen(store: Store) -> (Store, Recovered) {
    let path = store.path().to_owned();
    drop(store);
    open(&path)
}

/// A connected session with a 60 s expiry and no subscriptions.
pub(crate) fn session(client: &str) -> SessionRecord {
    SessionRecord {
        client_id: client.into(),
        expiry_interval: 60,
        disconnected_at: None,
        subscriptions: vec![],
    }
}

pub(crate) fn topic(s: &str) -> TopicName {
    TopicName::try_from(s).unwrap()
}

/// A message with no properties and no expiry.
pub(crate) fn plain_message(t: &str, payload: &'static [u8]) -> Message {
    Message::new(topic(t), Bytes::from_static(payload), QoS::AtLeastOnce, false)
}

/// A message with every property set, an expiry `expires_in` from `now` and a publisher.
pub(crate) fn full_message(t: &str, now: Instant, expires_in: Duration) -> Message {
    Message {
        topic: topic(t),
        payload: Bytes::from_static(b"\x00\x01 full payload \xff"),
        qos: QoS::ExactlyOnce,
        retain: true,
        properties: PublishProperties {
            payload_format_indicator: Some(false),
            message_expiry_interval: Some(3600),
            topic_alias: None,
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"corr-\x00")),
            user_properties: vec![
                ("k".into(), "v1".into()),
                ("k".into(), "v2".into()),
                ("ü".into(), "".into()),
            ],
            subscription_identifiers: Vec::new(),
            content_type: Some("application/json".into()),
        },
        expires_at: Some(now + expires_in),
        publisher: Some("publisher-1".into()),
        origin: None,
    }
}

pub(crate) fn delivery(message: Message, qos: QoS, ids: Vec<u32>) -> Delivery {
    Delivery { message: Arc::new(message), qos, retain: false, subscription_ids: ids, stored: None }
}

/// Checks that `got` expires about `expected` from now (within two seconds), then clears both
/// deadlines so the messages can be compared whole.
pub(crate) fn assert_expiry_close(got: &mut Message, want: &mut Message) {
    match (got.expires_at, want.expires_at) {
        (None, None) => {}
        (Some(g), Some(w)) => {
            let diff = if g > w { g - w } else { w - g };
            assert!(diff < Duration::from_secs(2), "expiry off by {diff:?}");
        }
        (g, w) => panic!("expiry {g:?}, expected {w:?}"),
    }
    got.expires_at = None;
    want.expires_at = None;
}

/// Polls `f` every 20 ms until it holds, failing the test after `limit`.
pub(crate) fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for durability through the callback API, with a time limit.
pub(crate) fn wait_durable(store: &Store) -> Result<(), m2m_store::StoreError> {
    let (tx, rx) = std::sync::mpsc::channel();
    store.on_durable(move |r| {
        let _ = tx.send(r);
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("durability callback within 30 s")
}
