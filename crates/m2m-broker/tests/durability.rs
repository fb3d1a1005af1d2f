//! State kept across restarts: a real node keeps its store in a temporary directory and is stopped and
//! started again on it in the same process. (Killing a real process with SIGKILL mid-load is the crash
//! test of the `m2m` binary.)
//!
//! Clients are [`RawClient`]s, so that packet ids and DUP flags can be checked exactly, and rumqttc
//! where an independent client is enough.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use m2m_broker::Config;
use m2m_codec::{Ack, Disconnect, Packet, ProtocolVersion, Publish, QoS, ReasonCode, Will};
use m2m_store::{StoreConfig, SyncMode};
use m2m_test::{
    expect_raw_publish, persistent_connect, pid, raw_connect, raw_connect_ok, raw_publish, raw_subscribe,
    within, RawClient, TempDir, TestBroker,
};

fn config(dir: &Path) -> Config {
    config_with(dir, SyncMode::Always)
}

fn config_with(dir: &Path, sync: SyncMode) -> Config {
    let mut c = Config::for_tests();
    c.sys_interval = None;
    c.store = Some(StoreConfig { sync, ..StoreConfig::new(dir.join("store")) });
    c
}

fn publish(topic: &str, qos: QoS, id: u16, payload: String) -> Packet {
    Packet::Publish(Publish {
        qos,
        packet_id: Some(pid(id)),
        payload: Bytes::from(payload),
        ..raw_publish(topic, qos, None, b"")
    })
}

/// Publishes `n` QoS 1 then `n` QoS 2 messages on `topic` and waits for each acknowledgement
/// (PUBACK; PUBREC, PUBREL, PUBCOMP).
async fn publish_acknowledged(addr: SocketAddr, topic: &str, n: u16) {
    let mut publisher = raw_connect_ok(addr, m2m_test::v5_connect("publisher")).await;
    for i in 1..=n {
        publisher.send(&publish(topic, QoS::AtLeastOnce, i, format!("q1-{i}"))).await;
        assert_eq!(publisher.recv().await, Some(Packet::PubAck(Ack::new(pid(i)))));
    }
    for i in 1..=n {
        publisher.send(&publish(topic, QoS::ExactlyOnce, 100 + i, format!("q2-{i}"))).await;
        assert_eq!(publisher.recv().await, Some(Packet::PubRec(Ack::new(pid(100 + i)))));
        publisher.send(&Packet::PubRel(Ack::new(pid(100 + i)))).await;
        assert_eq!(publisher.recv().await, Some(Packet::PubComp(Ack::new(pid(100 + i)))));
    }
    publisher.send(&Packet::Disconnect(Disconnect::default())).await;
}

async fn disconnect(mut client: RawClient) {
    client.send(&Packet::Disconnect(Disconnect::default())).await;
    assert_eq!(client.recv().await, None);
}

/// Nothing more is waiting for `client`: the next packet is the answer to a ping.
async fn nothing_more(client: &mut RawClient) {
    client.send(&Packet::PingReq).await;
    assert_eq!(client.recv().await, Some(Packet::PingResp));
}

#[tokio::test]
async fn acknowledged_messages_queued_for_an_offline_session_survive_a_restart_and_are_delivered_once() {
    let dir = TempDir::new("queued");
    let broker = TestBroker::start_with(config(dir.path())).await;
    let mut sub = raw_connect_ok(broker.addr, persistent_connect("sub", true)).await;
    raw_subscribe(&mut sub, 1, &[("q/#", QoS::ExactlyOnce)]).await;
    disconnect(sub).await;
    publish_acknowledged(broker.addr, "q/t", 5).await;
    broker.stop().await;

    let broker = TestBroker::start_with(config(dir.path())).await;
    let (mut sub, ack) = raw_connect(broker.addr, persistent_connect("sub", false)).await;
    assert!(ack.session_present, "the session survived the restart");
    // Everything queued is sent at once (the window allows it); acknowledge as it comes.
    let mut payloads = Vec::new();
    let mut open_qos2 = 0;
    while payloads.len() < 10 || open_qos2 > 0 {
        match sub.recv().await {
            Some(Packet::Publish(p)) => {
                assert!(!p.dup, "never sent before the restart");
                let id = p.packet_id.expect("QoS 1/2");
                if p.qos == QoS::ExactlyOnce {
                    open_qos2 += 1;
                    sub.send(&Packet::PubRec(Ack::new(id))).await;
                } else {
                    sub.send(&Packet::PubAck(Ack::new(id))).await;
                }
                payloads.push(String::from_utf8(p.payload.to_vec()).expect("utf-8"));
            }
            Some(Packet::PubRel(rel)) => {
                open_qos2 -= 1;
                sub.send(&Packet::PubComp(Ack::new(rel.packet_id))).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let expected: Vec<String> =
        (1..=5).map(|i| format!("q1-{i}")).chain((1..=5).map(|i| format!("q2-{i}"))).collect();
    assert_eq!(payloads, expected, "all of them, in the order they were published");
    nothing_more(&mut sub).await;
    disconnect(sub).await;
    broker.stop().await;

    // Delivered and acknowledged: a second restart has nothing left to send.
    let broker = TestBroker::start_with(config(dir.path())).await;
    let (mut sub, ack) = raw_connect(broker.addr, persistent_connect("sub", false)).await;
    assert!(ack.session_present);
    nothing_more(&mut sub).await;
    broker.stop().await;
}

#[tokio::test]
async fn messages_in_flight_resume_after_a_restart_with_dup_and_the_same_packet_ids() {
    let dir = TempDir::new("inflight");
    let broker = TestBroker::start_with(config(dir.path())).await;
    let mut sub = raw_connect_ok(broker.addr, persistent_connect("sub", true)).await;
    raw_subscribe(&mut sub, 1, &[("f/#", QoS::ExactlyOnce)]).await;
    let mut publisher = raw_connect_ok(broker.addr, m2m_test::v5_connect("publisher")).await;
    publisher.send(&publish("f/1", QoS::AtLeastOnce, 1, "one".into())).await;
    assert_eq!(publisher.recv().await, Some(Packet::PubAck(Ack::new(pid(1)))));
    publisher.send(&publish("f/2", QoS::ExactlyOnce, 2, "two".into())).await;
    assert_eq!(publisher.recv().await, Some(Packet::PubRec(Ack::new(pid(2)))));

    let one = expect_raw_publish(sub.recv().await);
    let two = expect_raw_publish(sub.recv().await);
    let two_id = two.packet_id.expect("QoS 2");
    sub.send(&Packet::PubRec(Ack::new(two_id))).await;
    assert_eq!(sub.recv().await, Some(Packet::PubRel(Ack::new(two_id))));
    // The node stops with `one` unacknowledged and `two` released but not completed.
    broker.stop().await;
    drop((sub, publisher));

    let broker = TestBroker::start_with(config(dir.path())).await;
    let (mut sub, ack) = raw_connect(broker.addr, persistent_connect("sub", false)).await;
    assert!(ack.session_present);
    let again = expect_raw_publish(sub.recv().await);
    assert_eq!(again, Publish { dup: true, ..one.clone() }, "same message, same packet id, DUP set");
    assert_eq!(sub.recv().await, Some(Packet::PubRel(Ack::new(two_id))), "PUBREL, not the message again");
    sub.send(&Packet::PubAck(Ack::new(one.packet_id.expect("QoS 1")))).await;
    sub.send(&Packet::PubComp(Ack::new(two_id))).await;
    nothing_more(&mut sub).await;
    broker.stop().await;
}

#[tokio::test]
async fn an_unreleased_incoming_qos2_packet_id_is_remembered_across_a_restart() {
    incoming_qos2_packet_id_across_a_restart(SyncMode::Always).await;
}

/// With `sync = "batch"` the connection sends the PUBREC itself and keeps the packet id.
#[tokio::test]
async fn with_batch_sync_an_unreleased_incoming_qos2_packet_id_is_remembered_across_a_restart() {
    incoming_qos2_packet_id_across_a_restart(SyncMode::Batch(Duration::from_millis(20))).await;
}

async fn incoming_qos2_packet_id_across_a_restart(sync: SyncMode) {
    let dir = TempDir::new("incoming");
    let config = |dir: &Path| config_with(dir, sync);
    let broker = TestBroker::start_with(config(dir.path())).await;
    let mut sub = raw_connect_ok(broker.addr, persistent_connect("sub", true)).await;
    raw_subscribe(&mut sub, 1, &[("i/#", QoS::ExactlyOnce)]).await;
    disconnect(sub).await;
    let mut publisher = raw_connect_ok(broker.addr, persistent_connect("publisher", true)).await;
    publisher.send(&publish("i/1", QoS::ExactlyOnce, 9, "once".into())).await;
    assert_eq!(publisher.recv().await, Some(Packet::PubRec(Ack::new(pid(9)))));
    broker.stop().await;
    drop(publisher);

    let broker = TestBroker::start_with(config(dir.path())).await;
    let (mut publisher, ack) = raw_connect(broker.addr, persistent_connect("publisher", false)).await;
    assert!(ack.session_present);
    // The publisher missed the PUBREC and resends: acknowledged again, not routed again.
    let Packet::Publish(mut resent) = publish("i/1", QoS::ExactlyOnce, 9, "once".into()) else {
        unreachable!()
    };
    resent.dup = true;
    publisher.send(&Packet::Publish(resent)).await;
    assert_eq!(publisher.recv().await, Some(Packet::PubRec(Ack::new(pid(9)))));
    publisher.send(&Packet::PubRel(Ack::new(pid(9)))).await;
    assert_eq!(publisher.recv().await, Some(Packet::PubComp(Ack::new(pid(9)))));

    let (mut sub, _) = raw_connect(broker.addr, persistent_connect("sub", false)).await;
    let p = expect_raw_publish(sub.recv().await);
    assert_eq!(&p.payload[..], b"once");
    sub.send(&Packet::PubRec(Ack::new(p.packet_id.expect("QoS 2")))).await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(_))));
    nothing_more(&mut sub).await;
    broker.stop().await;
}

#[tokio::test]
async fn retained_messages_subscriptions_and_session_expiry_survive_a_restart() {
    let dir = TempDir::new("retained");
    let broker = TestBroker::start_with(config(dir.path())).await;
    let mut publisher = raw_connect_ok(broker.addr, m2m_test::v5_connect("publisher")).await;
    let retained = [("r/kept", "kept"), ("r/gone", "gone"), ("r/gone", ""), ("$app/kept", "app")];
    for (i, (topic, payload)) in retained.iter().enumerate() {
        let Packet::Publish(mut p) = publish(topic, QoS::AtLeastOnce, i as u16 + 1, (*payload).into()) else {
            unreachable!()
        };
        p.retain = true;
        publisher.send(&Packet::Publish(p)).await;
        assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
    }
    disconnect(publisher).await;
    let mut sub = raw_connect_ok(broker.addr, persistent_connect("sub", true)).await;
    raw_subscribe(&mut sub, 1, &[("live/#", QoS::AtLeastOnce)]).await;
    let mut brief = m2m_test::v5_connect("brief");
    brief.clean_start = false;
    brief.properties.session_expiry_interval = Some(1);
    let mut brief = raw_connect_ok(broker.addr, brief).await;
    raw_subscribe(&mut brief, 1, &[("live/#", QoS::AtLeastOnce)]).await;
    disconnect(brief).await;
    broker.stop().await;
    drop(sub);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let broker = TestBroker::start_with(config(dir.path())).await;
    let mut reader = raw_connect_ok(broker.addr, m2m_test::v5_connect("reader")).await;
    raw_subscribe(&mut reader, 1, &[("r/#", QoS::AtLeastOnce)]).await;
    let kept = expect_raw_publish(reader.recv().await);
    assert_eq!((&*kept.topic, &kept.payload[..], kept.retain), ("r/kept", &b"kept"[..], true));
    reader.send(&Packet::PubAck(Ack::new(kept.packet_id.expect("QoS 1")))).await;
    nothing_more(&mut reader).await;
    // A `$` topic outside `$SYS` belongs to clients and is kept like any other.
    raw_subscribe(&mut reader, 2, &[("$app/#", QoS::AtMostOnce)]).await;
    let app = expect_raw_publish(reader.recv().await);
    assert_eq!((&*app.topic, &app.payload[..], app.retain), ("$app/kept", &b"app"[..], true));
    nothing_more(&mut reader).await;

    let (mut sub, ack) = raw_connect(broker.addr, persistent_connect("sub", false)).await;
    assert!(ack.session_present);
    let mut brief = m2m_test::v5_connect("brief");
    brief.clean_start = false;
    let (brief, ack) = raw_connect(broker.addr, brief).await;
    assert!(!ack.session_present, "expired while the node was down");
    drop(brief);
    // The subscription came back with the session: no SUBSCRIBE needed.
    let mut publisher = raw_connect_ok(broker.addr, m2m_test::v5_connect("publisher")).await;
    publisher.send(&publish("live/1", QoS::AtLeastOnce, 1, "hello".into())).await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
    let live = expect_raw_publish(sub.recv().await);
    assert_eq!((&*live.topic, &live.payload[..]), ("live/1", &b"hello"[..]));
    broker.stop().await;
}

#[tokio::test]
async fn a_will_waiting_for_its_delay_is_published_after_a_restart() {
    let dir = TempDir::new("will");
    let broker = TestBroker::start_with(config(dir.path())).await;
    let mut watcher = raw_connect_ok(broker.addr, persistent_connect("watcher", true)).await;
    raw_subscribe(&mut watcher, 1, &[("will/#", QoS::AtLeastOnce)]).await;
    disconnect(watcher).await;

    let mut connect = persistent_connect("mortal", true);
    let mut will = Will {
        topic: Arc::from("will/mortal"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    will.properties.will_delay_interval = Some(2);
    connect.will = Some(will);
    let mortal = raw_connect_ok(broker.addr, connect).await;
    let dropped_at = Instant::now();
    drop(mortal); // no DISCONNECT: the will is due in two seconds
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.stop().await;

    let broker = TestBroker::start_with(config(dir.path())).await;
    let (mut watcher, ack) = raw_connect(broker.addr, persistent_connect("watcher", false)).await;
    assert!(ack.session_present);
    let will = expect_raw_publish(within(watcher.recv()).await);
    assert_eq!((&*will.topic, &will.payload[..]), ("will/mortal", &b"gone"[..]));
    let waited = dropped_at.elapsed();
    assert!(waited >= Duration::from_millis(1900), "published after its delay, not before: {waited:?}");
    broker.stop().await;
}

#[tokio::test]
async fn without_a_store_publishes_are_acknowledged_and_delivered() {
    let broker = TestBroker::start_with(Config::for_tests()).await;
    let mut sub = raw_connect_ok(broker.addr, persistent_connect("sub", true)).await;
    raw_subscribe(&mut sub, 1, &[("m/#", QoS::AtLeastOnce)]).await;
    let mut publisher = RawClient::connect(broker.addr, ProtocolVersion::V5).await;
    publisher.send(&Packet::Connect(Box::new(m2m_test::v5_connect("p")))).await;
    assert!(
        matches!(publisher.recv().await, Some(Packet::ConnAck(a)) if a.reason_code == ReasonCode::SUCCESS)
    );
    publisher.send(&publish("m/1", QoS::AtLeastOnce, 1, "x".into())).await;
    assert_eq!(publisher.recv().await, Some(Packet::PubAck(Ack::new(pid(1)))));
    assert_eq!(&expect_raw_publish(sub.recv().await).payload[..], b"x");
    broker.stop().await;
}
