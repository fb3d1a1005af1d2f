//! A full disk under a running node (a small tmpfs the test mounts; the tests run as root): QoS 1
//! publishes are refused (MQTT 5: PUBACK 0x97 Quota exceeded; 3.1.1: no PUBACK), QoS 0 and the
//! subscribers are served on, `$SYS` tells, and the node recovers by itself once there is room.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use m2m_broker::Config;
use m2m_codec::{Ack, Connect, Packet, ProtocolVersion, Publish, QoS, ReasonCode};
use m2m_store::StoreConfig;
use m2m_test::{
    expect_raw_publish, fill_disk, noise, persistent_connect, pid, raw_connect_ok, raw_publish,
    raw_subscribe, v5_connect, RawClient, TestBroker, Tmpfs,
};

/// A QoS 1 PUBLISH on `d/<n>` with 16 KiB that do not compress.
fn big(n: u16) -> Packet {
    Packet::Publish(Publish {
        payload: noise(u64::from(n), 16 * 1024),
        ..raw_publish(&format!("d/{n}"), QoS::AtLeastOnce, Some(n), b"")
    })
}

async fn v311_client(addr: std::net::SocketAddr, id: &str) -> RawClient {
    let mut client = RawClient::connect(addr, ProtocolVersion::V311).await;
    let connect = Connect { protocol: ProtocolVersion::V311, ..v5_connect(id) };
    client.send(&Packet::Connect(Box::new(connect))).await;
    assert!(matches!(client.recv().await, Some(Packet::ConnAck(a)) if a.reason_code == ReasonCode::SUCCESS));
    client
}

/// Reads retained `$SYS/broker/store/healthy` updates until one says `want`.
async fn store_healthy_is(sys: &mut RawClient, want: &str) {
    let started = Instant::now();
    loop {
        let p = expect_raw_publish(sys.recv().await);
        if &p.payload[..] == want.as_bytes() {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "$SYS/broker/store/healthy never became {want}");
    }
}

#[tokio::test]
async fn on_a_full_disk_qos1_is_refused_qos0_flows_and_the_node_recovers_by_itself() {
    let fs = Tmpfs::mount("16m");
    let filler = fs.path.join("filler");
    let mut config = Config::for_tests();
    config.sys_interval = Some(Duration::from_millis(200));
    config.store = Some(StoreConfig::new(fs.path.join("store")));
    let broker = TestBroker::start_with(config).await;
    let addr = broker.addr;

    let mut durable = raw_connect_ok(addr, persistent_connect("durable", true)).await;
    raw_subscribe(&mut durable, 1, &[("d/#", QoS::AtLeastOnce)]).await;
    let mut watcher = v311_client(addr, "watcher").await;
    watcher
        .send(&Packet::Subscribe(m2m_codec::Subscribe {
            packet_id: pid(1),
            subscription_identifier: None,
            user_properties: vec![],
            filters: vec![("d/#".into(), Default::default())],
        }))
        .await;
    assert!(matches!(watcher.recv().await, Some(Packet::SubAck(_))));
    let mut sys = raw_connect_ok(addr, v5_connect("sys")).await;
    raw_subscribe(&mut sys, 1, &[("$SYS/broker/store/healthy", QoS::AtMostOnce)]).await;
    store_healthy_is(&mut sys, "1").await;

    let mut publisher = raw_connect_ok(addr, v5_connect("publisher")).await;
    let mut acknowledged = BTreeSet::new();
    publisher.send(&big(1)).await;
    assert_eq!(publisher.recv().await, Some(Packet::PubAck(Ack::new(pid(1)))));
    acknowledged.insert("d/1".to_owned());

    fill_disk(&filler);
    // Writes may still land in blocks the journal already has; the first refusal comes soon after.
    let mut n = 2;
    loop {
        publisher.send(&big(n)).await;
        match publisher.recv().await {
            Some(Packet::PubAck(a)) if a.reason_code == ReasonCode::QUOTA_EXCEEDED => break,
            Some(Packet::PubAck(a)) if a.reason_code == ReasonCode::SUCCESS => {
                acknowledged.insert(format!("d/{n}"));
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
        n += 1;
        assert!(n < 300, "QoS 1 publishes kept being acknowledged on a full disk");
    }
    store_healthy_is(&mut sys, "0").await;

    // While the disk is full: the next QoS 1 publish is refused at once, QoS 0 is delivered.
    n += 1;
    publisher.send(&big(n)).await;
    assert!(
        matches!(publisher.recv().await, Some(Packet::PubAck(a)) if a.reason_code == ReasonCode::QUOTA_EXCEEDED)
    );
    publisher.send(&Packet::Publish(raw_publish("d/q0", QoS::AtMostOnce, None, b"still here"))).await;
    // The watcher first gets the QoS 1 messages acknowledged before (at its QoS 0).
    let q0 = loop {
        let p = expect_raw_publish(watcher.recv().await);
        if &*p.topic == "d/q0" {
            break p;
        }
        assert!(acknowledged.contains(&*p.topic), "the watcher got {}, which was refused", p.topic);
    };
    assert_eq!(&q0.payload[..], b"still here");
    // MQTT 3.1.1 has no negative acknowledgement: no PUBACK (the answer to the ping comes first), and
    // the client sends the message again later.
    let mut old = v311_client(addr, "old-publisher").await;
    old.send(&Packet::Publish(raw_publish("d/v3", QoS::AtLeastOnce, Some(7), b"v3"))).await;
    old.send(&Packet::PingReq).await;
    assert_eq!(old.recv().await, Some(Packet::PingResp));

    std::fs::remove_file(&filler).unwrap();
    let started = Instant::now();
    loop {
        n += 1;
        publisher.send(&big(n)).await;
        match publisher.recv().await {
            Some(Packet::PubAck(a)) if a.reason_code == ReasonCode::SUCCESS => {
                acknowledged.insert(format!("d/{n}"));
                break;
            }
            Some(Packet::PubAck(a)) if a.reason_code == ReasonCode::QUOTA_EXCEEDED => {}
            other => panic!("expected PUBACK, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the node did not recover within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    store_healthy_is(&mut sys, "1").await;

    // The persistent subscriber got every acknowledged QoS 1 message once, and no refused one.
    let mut received = BTreeSet::new();
    while received.len() < acknowledged.len() {
        let p = expect_raw_publish(durable.recv().await);
        if let Some(id) = p.packet_id {
            durable.send(&Packet::PubAck(Ack::new(id))).await;
            assert!(received.insert(p.topic.to_string()), "{} twice", p.topic);
        }
    }
    assert_eq!(received, acknowledged);
    durable.send(&Packet::PingReq).await;
    assert_eq!(durable.recv().await, Some(Packet::PingResp));
    broker.stop().await;
    drop(fs);
}
