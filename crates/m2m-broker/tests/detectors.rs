//! The detectors, each triggered by a real misbehaving client, and none triggered by a well-behaved
//! fleet of 1 000 clients reconnecting after a restart of the node.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use m2m_access::{Mode, NewDevice, Registry};
use m2m_broker::{Config, DetectorConfig, DetectorsConfig};
use m2m_codec::{Connect, Packet, QoS, ReasonCode};
use m2m_store::{Store, StoreConfig};
use m2m_test::{
    expect_disconnect, persistent_connect, raw_connect, raw_connect_ok, raw_publish, v5_connect, RawClient,
    TempDir, TestBroker,
};

fn small(threshold: u32, mode: Mode) -> DetectorConfig {
    DetectorConfig {
        enabled: true,
        threshold,
        window: Duration::from_secs(60),
        mode,
        quarantine_for: Duration::from_secs(60),
    }
}

/// A node whose store holds one device, `dev-1` (password `pw`, may publish under `dev/`).
async fn node(dir: &Path, detectors: DetectorsConfig) -> TestBroker {
    let (store, _) = Store::open(StoreConfig::new(dir.join("store"))).unwrap();
    let mut registry = Registry::open(Some(store), Vec::new()).unwrap();
    if registry.device("dev-1").is_none() {
        let device = NewDevice {
            id: "dev-1".into(),
            password: Some("pw".into()),
            rules: vec!["allow both dev/#".into()],
            ..NewDevice::default()
        };
        registry.add_device(device, 0).unwrap();
    }
    drop(registry);
    let mut config = Config::for_tests();
    config.sys_interval = None;
    config.store = Some(StoreConfig::new(dir.join("store")));
    config.detectors = detectors;
    TestBroker::start_with(config).await
}

fn with_password(id: &str, password: &str) -> Connect {
    let mut c = v5_connect(id);
    c.username = Some("dev-1".into());
    c.password = Some(bytes::Bytes::copy_from_slice(password.as_bytes()));
    c
}

async fn code(broker: &TestBroker, connect: Connect) -> ReasonCode {
    raw_connect(broker.addr, connect).await.1.reason_code
}

/// The actors of the quarantine entries, in order.
fn quarantined_by(broker: &TestBroker) -> Vec<String> {
    broker.access.quarantine().entries().map(|e| e.actor.clone()).collect()
}

#[tokio::test]
async fn repeated_authentication_failures_ban_the_address() {
    let dir = TempDir::new("detect-auth");
    let broker =
        node(dir.path(), DetectorsConfig { auth_failures: small(5, Mode::Ban), ..Default::default() }).await;
    for _ in 0..4 {
        assert_eq!(
            code(&broker, with_password("guess", "wrong")).await,
            ReasonCode::BAD_USER_NAME_OR_PASSWORD
        );
    }
    assert_eq!(
        code(&broker, with_password("ok", "pw")).await,
        ReasonCode::SUCCESS,
        "4 failures are tolerated"
    );
    assert_eq!(code(&broker, with_password("guess", "wrong")).await, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    assert_eq!(
        code(&broker, with_password("ok", "pw")).await,
        ReasonCode::BANNED,
        "the 5th banned the address"
    );
    assert_eq!(quarantined_by(&broker), ["detector:auth_failures"]);
    broker.stop().await;
}

#[tokio::test]
async fn a_client_id_that_connects_over_and_over_is_banned() {
    let dir = TempDir::new("detect-flap");
    let broker =
        node(dir.path(), DetectorsConfig { flapping: small(5, Mode::Ban), ..Default::default() }).await;
    for _ in 0..4 {
        let mut c = raw_connect_ok(broker.addr, v5_connect("flappy")).await;
        c.send(&Packet::Disconnect(Default::default())).await;
        assert_eq!(c.recv().await, None);
    }
    // The 5th connect is accepted and trips the detector, which ends it at once.
    let mut fifth = raw_connect_ok(broker.addr, v5_connect("flappy")).await;
    expect_disconnect(&mut fifth, ReasonCode::ADMINISTRATIVE_ACTION).await;
    assert_eq!(code(&broker, v5_connect("flappy")).await, ReasonCode::BANNED);
    assert_eq!(code(&broker, v5_connect("steady")).await, ReasonCode::SUCCESS, "only that client id");
    assert_eq!(quarantined_by(&broker), ["detector:flapping"]);
    broker.stop().await;
}

#[tokio::test]
async fn two_machines_fighting_over_one_client_id_get_it_banned() {
    let dir = TempDir::new("detect-fight");
    let broker =
        node(dir.path(), DetectorsConfig { takeovers: small(3, Mode::Ban), ..Default::default() }).await;
    let mut live = raw_connect_ok(broker.addr, v5_connect("twin")).await;
    for _ in 0..3 {
        let next = raw_connect_ok(broker.addr, v5_connect("twin")).await;
        expect_disconnect(&mut live, ReasonCode::SESSION_TAKEN_OVER).await;
        live = next;
    }
    expect_disconnect(&mut live, ReasonCode::ADMINISTRATIVE_ACTION).await;
    assert_eq!(code(&broker, v5_connect("twin")).await, ReasonCode::BANNED);
    assert_eq!(quarantined_by(&broker), ["detector:takeovers"]);
    broker.stop().await;
}

#[tokio::test]
async fn repeated_malformed_packets_ban_the_address() {
    let dir = TempDir::new("detect-malformed");
    let broker =
        node(dir.path(), DetectorsConfig { malformed: small(3, Mode::Ban), ..Default::default() }).await;
    for _ in 0..3 {
        let mut c = RawClient::connect(broker.addr, m2m_codec::ProtocolVersion::V5).await;
        c.write_raw(&[0x00, 0x00]).await; // packet type 0 is reserved
        assert_eq!(c.recv().await, None);
    }
    assert_eq!(code(&broker, v5_connect("innocent")).await, ReasonCode::BANNED);
    assert_eq!(quarantined_by(&broker), ["detector:malformed"]);
    broker.stop().await;
}

#[tokio::test]
async fn repeated_access_violations_isolate_the_client() {
    let dir = TempDir::new("detect-acl");
    let broker =
        node(dir.path(), DetectorsConfig { access_denied: small(3, Mode::Isolate), ..Default::default() })
            .await;
    let mut dev = raw_connect_ok(broker.addr, with_password("dev-1", "pw")).await;
    for id in 1..=3 {
        dev.send(&Packet::Publish(raw_publish("plant/secret", QoS::AtLeastOnce, Some(id), b"x"))).await;
    }
    // Three refusals (0x87); the third trips the detector, which isolates the client in place.
    for _ in 1..=3 {
        let Some(Packet::PubAck(a)) = dev.recv().await else { panic!("PUBACK") };
        assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED);
    }
    // Still connected, but isolated: even its own topics are refused now.
    dev.send(&Packet::Publish(raw_publish("dev/ok", QoS::AtLeastOnce, Some(9), b"x"))).await;
    let Some(Packet::PubAck(a)) = dev.recv().await else { panic!("PUBACK") };
    assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED);
    assert_eq!(quarantined_by(&broker), ["detector:access_denied"]);
    broker.stop().await;
}

#[tokio::test]
async fn a_fleet_of_1000_reconnecting_after_a_restart_triggers_nothing() {
    let dir = TempDir::new("detect-fleet");
    let broker = node(dir.path(), DetectorsConfig::default()).await;
    let mut fleet = Vec::new();
    for i in 0..1000 {
        let connect = if i % 10 == 0 {
            with_password(&format!("dev-{i}"), "pw")
        } else {
            persistent_connect(&format!("dev-{i}"), true)
        };
        fleet.push(raw_connect_ok(broker.addr, connect).await);
    }
    broker.stop().await;
    drop(fleet);
    let broker = node(dir.path(), DetectorsConfig::default()).await;
    let mut fleet = Vec::new();
    for i in 0..1000 {
        let connect = if i % 10 == 0 {
            with_password(&format!("dev-{i}"), "pw")
        } else {
            persistent_connect(&format!("dev-{i}"), false)
        };
        fleet.push(raw_connect_ok(broker.addr, connect).await);
    }
    assert!(quarantined_by(&broker).is_empty(), "{:?}", quarantined_by(&broker));
    broker.stop().await;
}

#[tokio::test]
async fn a_publisher_over_its_budget_is_slowed_then_isolated() {
    let dir = TempDir::new("detect-rate");
    let budget = m2m_broker::PublishBudget {
        enabled: true,
        rate: 200.0,
        burst: 20.0,
        quarantine_after: Duration::from_secs(1),
        mode: Mode::Isolate,
        quarantine_for: Duration::from_secs(60),
    };
    let broker = node(dir.path(), DetectorsConfig { publish_rate: budget, ..Default::default() }).await;
    // Both log in as dev-1, whose rules grant dev/#.
    let mut sub = raw_connect_ok(broker.addr, with_password("watcher", "pw")).await;
    m2m_test::raw_subscribe(&mut sub, 1, &[("dev/#", QoS::AtMostOnce)]).await;
    let mut fast = raw_connect_ok(broker.addr, with_password("fast", "pw")).await;
    // 2 000 QoS 0 PUBLISHes at once: 10 s of budget.
    let mut frames = bytes::BytesMut::new();
    for _ in 0..2000 {
        let p = Packet::Publish(raw_publish("dev/x", QoS::AtMostOnce, None, b"x"));
        m2m_codec::encode(&p, m2m_codec::ProtocolVersion::V5, &mut frames).unwrap();
    }
    let started = std::time::Instant::now();
    fast.write_raw(&frames).await;
    // Over budget for a second: isolated (in place; it stays connected).
    while broker.access.quarantine().entries().next().is_none() {
        assert!(started.elapsed() < Duration::from_secs(10), "not quarantined within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let entries: Vec<_> =
        broker.access.quarantine().entries().map(|e| (e.actor.clone(), e.reason.clone())).collect();
    assert!(elapsed >= 0.9, "quarantined after {elapsed:.2} s, before the budget's second: {entries:?}");
    // What reached the subscriber was held to the budget (the burst, then 200 a second).
    sub.send(&Packet::PingReq).await;
    let mut delivered = 0;
    loop {
        match sub.recv().await {
            Some(Packet::Publish(_)) => delivered += 1,
            Some(Packet::PingResp) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let most = 20.0 + 200.0 * elapsed * 1.5 + 64.0;
    assert!(delivered >= 20 && f64::from(delivered) <= most, "{delivered} delivered in {elapsed:.2} s");
    assert_eq!(quarantined_by(&broker), ["detector:publish_rate"]);
    broker.stop().await;
}
