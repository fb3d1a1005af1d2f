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
    let tried: Vec<_> = broker.access.refusals("press-7").into_iter().map(|r| (r.kind, r.topic)).collect();
    let want = [
        ("SUBSCRIBE", "plant/#"),
        ("SUBSCRIBE", "$quarantine/press-8/#"),
        ("PUBLISH", "plant/press-7/speed"),
    ];
    assert_eq!(tried, want.map(|(k, t)| (k.to_owned(), t.to_owned())));
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

#[tokio::test]
async fn an_entry_added_while_clients_are_connected_acts_at_once_and_a_release_too() {
    let dir = TempDir::new("quarantine-live");
    let broker = TestBroker::start_with(config(dir.path())).await;
    let mut rogue = raw_connect_ok(broker.addr, v5_connect("rogue-9")).await;
    let mut press = raw_connect_ok(broker.addr, persistent_connect("press-3", true)).await;
    raw_subscribe(&mut press, 1, &[("plant/#", QoS::AtLeastOnce)]).await;
    let mut bystander = raw_connect_ok(broker.addr, v5_connect("bystander")).await;
    let mut watcher = raw_connect_ok(broker.addr, v5_connect("watcher")).await;
    raw_subscribe(&mut watcher, 1, &[("$SYS/m2m/quarantine/#", QoS::AtMostOnce)]).await;

    let ban = broker
        .access
        .add_quarantine(Target::ClientId("rogue-9".into()), Mode::Ban, "garbage", "test", None)
        .unwrap();
    m2m_test::expect_disconnect(&mut rogue, ReasonCode::ADMINISTRATIVE_ACTION).await;
    let (_, ack) = raw_connect(broker.addr, v5_connect("rogue-9")).await;
    assert_eq!(ack.reason_code, ReasonCode::BANNED);

    let iso = broker
        .access
        .add_quarantine(Target::Pattern("press-.*".into()), Mode::Isolate, "flapping", "detector", None)
        .unwrap();
    m2m_test::expect_disconnect(&mut press, ReasonCode::ADMINISTRATIVE_ACTION).await;
    let mut press = raw_connect_ok(broker.addr, persistent_connect("press-3", false)).await;
    press.send(&Packet::Publish(raw_publish("plant/x", QoS::AtLeastOnce, Some(2), b"1"))).await;
    let Some(Packet::PubAck(a)) = press.recv().await else { panic!("PUBACK") };
    assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED, "isolated after coming back");
    bystander.send(&Packet::PingReq).await;
    assert_eq!(bystander.recv().await, Some(Packet::PingResp), "others are not touched");

    // Released: the isolated client is disconnected so that it comes back with normal service.
    broker.access.release_quarantine(iso.id, "test").unwrap();
    m2m_test::expect_disconnect(&mut press, ReasonCode::ADMINISTRATIVE_ACTION).await;
    let mut press = raw_connect_ok(broker.addr, persistent_connect("press-3", false)).await;
    let ack = raw_subscribe(&mut press, 3, &[("plant/#", QoS::AtLeastOnce)]).await;
    assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_1]);
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
    assert!(
        log[3].1.detail.contains("ban client id \"rogue-9\": garbage (1 disconnected)"),
        "{:?}",
        log[3].1
    );
    broker.stop().await;
}
