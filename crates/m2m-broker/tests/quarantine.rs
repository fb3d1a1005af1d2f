//! Quarantine against a running node: banned clients are refused at CONNECT, isolated ones reach only
//! their repair namespace (also through a session they resume), expired entries lift themselves and
//! released ones stop applying. Entries are written into the node's store between runs, as
//! `m2m quarantine` does.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use m2m_access::{Mode, Quarantine, Target};
use m2m_broker::Config;
use m2m_codec::{Ack, Connect, Packet, ProtocolVersion, QoS, ReasonCode};
use m2m_store::{Store, StoreConfig};
use m2m_test::{
    expect_raw_publish, persistent_connect, pid, raw_connect, raw_connect_ok, raw_publish, raw_subscribe,
    v5_connect, RawClient, TempDir, TestBroker,
};

fn config(dir: &Path) -> Config {
    let mut c = Config::for_tests();
    c.sys_interval = None;
    c.store = Some(StoreConfig::new(dir.join("store")));
    c
}

/// Opens the quarantine list in the (stopped) node's store and applies `change`.
fn with_quarantine(dir: &Path, change: impl FnOnce(&mut Quarantine)) {
    let (store, _) = Store::open(StoreConfig::new(dir.join("store"))).unwrap();
    change(&mut Quarantine::open(Some(store)).unwrap());
}

fn now_ms() -> u64 {
    m2m_store::unix_ms(std::time::SystemTime::now())
}

#[tokio::test]
async fn banned_clients_are_refused_and_isolated_ones_reach_only_their_repair_namespace() {
    let dir = TempDir::new("quarantine");
    // Before the quarantine: press-7 keeps a session subscribed to the plant's data.
    let broker = TestBroker::start_with(config(dir.path())).await;
    let mut press = raw_connect_ok(broker.addr, persistent_connect("press-7", true)).await;
    raw_subscribe(&mut press, 1, &[("plant/#", QoS::AtLeastOnce)]).await;
    press.send(&Packet::Disconnect(Default::default())).await;
    broker.stop().await;

    with_quarantine(dir.path(), |q| {
        q.add(Target::ClientId("rogue".into()), Mode::Ban, "sends garbage", "operator", now_ms(), None)
            .unwrap();
        q.add(
            Target::Pattern("press-[0-9]+".into()),
            Mode::Isolate,
            "fights over a client id",
            "operator",
            now_ms(),
            None,
        )
        .unwrap();
        let past = Some(now_ms() - 1);
        q.add(Target::Address("127.0.0.0/8".into()), Mode::Ban, "expired", "operator", 0, past).unwrap();
    });
    let broker = TestBroker::start_with(config(dir.path())).await;

    let (_, ack) = raw_connect(broker.addr, v5_connect("rogue")).await;
    assert_eq!(ack.reason_code, ReasonCode::BANNED);
    let mut old = RawClient::connect(broker.addr, ProtocolVersion::V311).await;
    old.send(&Packet::Connect(Box::new(Connect { protocol: ProtocolVersion::V311, ..v5_connect("rogue") })))
        .await;
    match old.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code.to_v311_connack(), 5, "3.1.1: not authorized"),
        other => panic!("expected CONNACK, got {other:?}"),
    }

    // The isolated press resumes its session: its old subscription is gone, it may only subscribe
    // under $quarantine/press-7/ and may publish nothing.
    let (mut press, ack) = raw_connect(broker.addr, persistent_connect("press-7", false)).await;
    assert_eq!((ack.reason_code, ack.session_present), (ReasonCode::SUCCESS, true));
    let ack = raw_subscribe(
        &mut press,
        2,
        &[("plant/#", QoS::AtLeastOnce), ("$quarantine/press-7/#", QoS::AtLeastOnce)],
    )
    .await;
    assert_eq!(ack.reason_codes, [ReasonCode::NOT_AUTHORIZED, ReasonCode::GRANTED_QOS_1]);
    let ack = raw_subscribe(&mut press, 3, &[("$quarantine/press-8/#", QoS::AtMostOnce)]).await;
    assert_eq!(ack.reason_codes, [ReasonCode::NOT_AUTHORIZED], "another client's namespace");
    press
        .send(&Packet::Publish(raw_publish("plant/press-7/speed", QoS::AtLeastOnce, Some(4), b"9000")))
        .await;
    let Some(Packet::PubAck(a)) = press.recv().await else { panic!("PUBACK") };
    assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED);

    let mut operator = raw_connect_ok(broker.addr, v5_connect("operator")).await;
    for (topic, payload) in [("plant/line-1/speed", &b"12"[..]), ("$quarantine/press-7/cmd", &b"reboot"[..])]
    {
        let mut p = raw_publish(topic, QoS::AtLeastOnce, Some(1), b"");
        p.payload = bytes::Bytes::copy_from_slice(payload);
        operator.send(&Packet::Publish(p)).await;
        assert!(matches!(operator.recv().await, Some(Packet::PubAck(_))));
    }
    let repair = expect_raw_publish(press.recv().await);
    assert_eq!((&*repair.topic, &repair.payload[..]), ("$quarantine/press-7/cmd", &b"reboot"[..]));
    press.send(&Packet::PubAck(Ack::new(repair.packet_id.unwrap()))).await;
    press.send(&Packet::PingReq).await;
    assert_eq!(press.recv().await, Some(Packet::PingResp), "nothing from plant/# reached it");
    assert_eq!(broker.metrics.access_denied.load(std::sync::atomic::Ordering::Relaxed), 3);
    // What they tried is kept for the operator.
    let tried: Vec<_> =
        broker.access.refusals("press-7").into_iter().map(|r| (r.kind, r.topic, r.size)).collect();
    let want = [
        ("SUBSCRIBE", "plant/#", 0),
        ("SUBSCRIBE", "$quarantine/press-8/#", 0),
        ("PUBLISH", "plant/press-7/speed", 4),
    ];
    assert_eq!(tried, want.map(|(k, t, n)| (k.to_owned(), t.to_owned(), n)));
    let rogue: Vec<_> = broker.access.refusals("rogue").into_iter().map(|r| (r.kind, r.reason)).collect();
    assert_eq!(rogue, vec![("CONNECT".to_owned(), "quarantine entry 1".to_owned()); 2]);
    drop(press);
    broker.stop().await;

    // Released: normal service again.
    with_quarantine(dir.path(), |q| {
        let id = q.entries().find(|e| e.mode == Mode::Isolate).unwrap().id;
        q.release(id).unwrap();
    });
    let broker = TestBroker::start_with(config(dir.path())).await;
    let mut press = raw_connect_ok(broker.addr, persistent_connect("press-7", false)).await;
    let ack = raw_subscribe(&mut press, 5, &[("plant/#", QoS::AtLeastOnce)]).await;
    assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_1]);
    press.send(&Packet::Publish(raw_publish("plant/press-7/speed", QoS::AtLeastOnce, Some(6), b"1"))).await;
    // Its PUBACK, and its own message back through plant/#, in either order.
    let (a, b) = (press.recv().await.unwrap(), press.recv().await.unwrap());
    let (ack, echo) = if matches!(a, Packet::PubAck(_)) { (a, b) } else { (b, a) };
    assert_eq!(ack, Packet::PubAck(Ack::new(pid(6))));
    assert_eq!(&*expect_raw_publish(Some(echo)).topic, "plant/press-7/speed");
    broker.stop().await;
}

/// Publishes `payload` on `topic` at QoS 1 and waits for the PUBACK: its reason code.
async fn publish_acked(client: &mut RawClient, topic: &str, id: u16, payload: &'static [u8]) -> ReasonCode {
    let (reason, seen) = publish_seeing(client, topic, id, payload).await;
    assert!(seen.is_empty(), "nothing expected before the PUBACK, got {seen:?}");
    reason
}

/// Publishes at QoS 1 and waits for the PUBACK: its reason code and the messages (acknowledged)
/// that arrived before it, such as the client's own through its subscription.
async fn publish_seeing(
    client: &mut RawClient,
    topic: &str,
    id: u16,
    payload: &'static [u8],
) -> (ReasonCode, Vec<(String, Vec<u8>)>) {
    client.send(&Packet::Publish(raw_publish(topic, QoS::AtLeastOnce, Some(id), payload))).await;
    let mut seen = Vec::new();
    loop {
        match client.recv().await {
            Some(Packet::PubAck(a)) => return (a.reason_code, seen),
            Some(Packet::Publish(p)) => {
                if let Some(id) = p.packet_id {
                    client.send(&Packet::PubAck(Ack::new(id))).await;
                }
                seen.push((p.topic.to_string(), p.payload.to_vec()));
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

/// The next PUBLISH `client` receives, acknowledged: its topic and payload.
async fn receive(client: &mut RawClient) -> (String, Vec<u8>) {
    let p = expect_raw_publish(client.recv().await);
    if let Some(id) = p.packet_id {
        client.send(&Packet::PubAck(Ack::new(id))).await;
    }
    (p.topic.to_string(), p.payload.to_vec())
}

/// Nothing more is on its way to `client` (a PINGREQ is answered before anything else arrives).
async fn nothing_more(client: &mut RawClient, why: &str) {
    client.send(&Packet::PingReq).await;
    assert_eq!(client.recv().await, Some(Packet::PingResp), "{why}");
}

fn owned(list: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    list.iter().map(|(t, p)| ((*t).to_owned(), p.to_vec())).collect()
}

#[tokio::test]
async fn an_entry_added_while_clients_are_connected_acts_at_once_and_a_release_too() {
    let dir = TempDir::new("quarantine-live");
    let broker = TestBroker::start_with(config(dir.path())).await;
    let mut rogue = raw_connect_ok(broker.addr, v5_connect("rogue-9")).await;
    // press-3 is away with two messages queued for it; press-4 is connected.
    let mut press3 = raw_connect_ok(broker.addr, persistent_connect("press-3", true)).await;
    raw_subscribe(&mut press3, 1, &[("plant/#", QoS::AtLeastOnce)]).await;
    press3.send(&Packet::Disconnect(Default::default())).await;
    drop(press3);
    let mut press4 = raw_connect_ok(broker.addr, persistent_connect("press-4", true)).await;
    raw_subscribe(&mut press4, 1, &[("plant/#", QoS::AtLeastOnce)]).await;
    let mut operator = raw_connect_ok(broker.addr, v5_connect("operator")).await;
    let mut watcher = raw_connect_ok(broker.addr, v5_connect("watcher")).await;
    raw_subscribe(&mut watcher, 1, &[("$SYS/m2m/quarantine/#", QoS::AtMostOnce)]).await;
    assert_eq!(publish_acked(&mut operator, "plant/a", 1, b"1").await, ReasonCode::SUCCESS);
    assert_eq!(publish_acked(&mut operator, "plant/b", 2, b"2").await, ReasonCode::SUCCESS);
    assert_eq!(receive(&mut press4).await.0, "plant/a");
    assert_eq!(receive(&mut press4).await.0, "plant/b");

    let ban = broker
        .access
        .add_quarantine(Target::ClientId("rogue-9".into()), Mode::Ban, "garbage", "test", None)
        .unwrap();
    m2m_test::expect_disconnect(&mut rogue, ReasonCode::ADMINISTRATIVE_ACTION).await;
    let (_, ack) = raw_connect(broker.addr, v5_connect("rogue-9")).await;
    assert_eq!(ack.reason_code, ReasonCode::BANNED);

    // Isolated in place: press-4 stays connected, its publishes are refused, plant/# is cut off, and
    // it may take repair commands in its namespace.
    let iso = broker
        .access
        .add_quarantine(Target::Pattern("press-.*".into()), Mode::Isolate, "flapping", "detector", None)
        .unwrap();
    assert_eq!(publish_acked(&mut press4, "plant/x", 2, b"bad").await, ReasonCode::NOT_AUTHORIZED);
    let ack = raw_subscribe(&mut press4, 3, &[("$quarantine/press-4/#", QoS::AtLeastOnce)]).await;
    assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_1]);
    assert_eq!(publish_acked(&mut operator, "plant/c", 3, b"3").await, ReasonCode::SUCCESS);
    assert_eq!(
        publish_acked(&mut operator, "$quarantine/press-4/fix", 4, b"reset").await,
        ReasonCode::SUCCESS
    );
    assert_eq!(receive(&mut press4).await, ("$quarantine/press-4/fix".to_owned(), b"reset".to_vec()));
    nothing_more(&mut press4, "plant/c must not reach an isolated client").await;

    // press-3 comes back isolated: what was queued for it is held, not delivered.
    let (mut press3, ack) = raw_connect(broker.addr, persistent_connect("press-3", false)).await;
    assert!(ack.session_present);
    nothing_more(&mut press3, "queued messages are held while isolated").await;
    let ack = raw_subscribe(&mut press3, 2, &[("plant/#", QoS::AtLeastOnce)]).await;
    assert_eq!(ack.reason_codes, [ReasonCode::NOT_AUTHORIZED]);

    // Released while connected: the held messages arrive in order (plant/c too: it was queued while
    // press-3 was away, before it came back isolated), the subscriptions are back.
    broker.access.release_quarantine(iso.id, "test").unwrap();
    let held = [receive(&mut press3).await, receive(&mut press3).await, receive(&mut press3).await];
    assert_eq!(held.to_vec(), owned(&[("plant/a", b"1"), ("plant/b", b"2"), ("plant/c", b"3")]));
    let (reason, mut seen3) = publish_seeing(&mut press3, "plant/press-3/ok", 3, b"3").await;
    assert_eq!(reason, ReasonCode::SUCCESS);
    let (reason, mut seen4) = publish_seeing(&mut press4, "plant/press-4/ok", 5, b"4").await;
    assert_eq!(reason, ReasonCode::SUCCESS);
    // Each sees both, without subscribing again (press-3 published first, and its ack came back
    // before press-4 published).
    for (press, seen) in [(&mut press3, &mut seen3), (&mut press4, &mut seen4)] {
        while seen.len() < 2 {
            seen.push(receive(press).await);
        }
        assert_eq!(*seen, owned(&[("plant/press-3/ok", b"3"), ("plant/press-4/ok", b"4")]));
    }
    broker.access.release_quarantine(ban.id, "test").unwrap();
    raw_connect_ok(broker.addr, v5_connect("rogue-9")).await;

    // Every change was published on $SYS and kept in the audit log.
    let mut published = Vec::new();
    for _ in 0..4 {
        let p = expect_raw_publish(watcher.recv().await);
        let event: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
        published.push((p.topic.to_string(), event["subject"].as_str().unwrap().to_owned()));
    }
    let (ban_id, iso_id) = (ban.id.to_string(), iso.id.to_string());
    assert_eq!(
        published,
        [
            ("$SYS/m2m/quarantine/add".to_owned(), ban_id.clone()),
            ("$SYS/m2m/quarantine/add".to_owned(), iso_id.clone()),
            ("$SYS/m2m/quarantine/release".to_owned(), iso_id.clone()),
            ("$SYS/m2m/quarantine/release".to_owned(), ban_id.clone()),
        ]
    );
    let log = broker.access.audit_log().recent(None, 10).unwrap();
    let actions: Vec<_> =
        log.iter().map(|(_, e)| (e.action.as_str(), e.subject.as_str(), e.actor.as_str())).collect();
    assert_eq!(
        actions,
        [
            ("quarantine.release", ban_id.as_str(), "test"),
            ("quarantine.release", iso_id.as_str(), "test"),
            ("quarantine.add", iso_id.as_str(), "detector"),
            ("quarantine.add", ban_id.as_str(), "test"),
        ],
        "newest first"
    );
    let details: Vec<_> = log.iter().map(|(_, e)| e.detail.as_str()).collect();
    assert!(details[3].contains("ban client id \"rogue-9\": garbage (1 disconnected"), "{details:?}");
    assert!(details[2].contains("(0 disconnected, 1 isolated, 0 released)"), "{details:?}");
    assert!(details[1].contains("(0 disconnected, 0 isolated, 2 released)"), "{details:?}");
    broker.stop().await;
}

#[tokio::test]
async fn an_expiring_entry_lifts_itself_from_a_connected_client() {
    let dir = TempDir::new("quarantine-expiry");
    let broker = TestBroker::start_with(config(dir.path())).await;
    let mut valve = raw_connect_ok(broker.addr, v5_connect("valve-2")).await;
    let expires = Some(now_ms() + 1500);
    let entry = broker
        .access
        .add_quarantine(Target::ClientId("valve-2".into()), Mode::Isolate, "testing", "test", expires)
        .unwrap();
    assert_eq!(publish_acked(&mut valve, "plant/valve-2", 1, b"x").await, ReasonCode::NOT_AUTHORIZED);
    // The node checks expiries every second: within 5 s it has lifted the entry.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut id = 2;
    loop {
        if publish_acked(&mut valve, "plant/valve-2", id, b"x").await == ReasonCode::SUCCESS {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the expired entry still applies");
        id += 1;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(broker.access.quarantine().entries().next().is_none(), "the entry is gone");
    let log = broker.access.audit_log().recent(None, 1).unwrap();
    let (action, subject, actor) = (&log[0].1.action, &log[0].1.subject, &log[0].1.actor);
    assert_eq!(
        (action.as_str(), subject.as_str(), actor.as_str()),
        ("quarantine.expire", &*entry.id.to_string(), "node")
    );
    broker.stop().await;
}
