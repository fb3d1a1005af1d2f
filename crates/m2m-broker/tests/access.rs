//! Identity and access against a running node: devices registered in its store log in with their
//! passwords (an independent `rumqttc` client), and the access rules decide what they may publish and
//! subscribe to (raw clients, so reason codes are checked exactly).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use m2m_access::{Group, NewDevice, Registry};
use m2m_broker::Config;
use m2m_codec::{Ack, Connect, Packet, ProtocolVersion, QoS, ReasonCode};
use m2m_store::{Store, StoreConfig};
use m2m_test::{
    expect_raw_publish, pid, raw_connect, raw_publish, raw_subscribe, v5_connect, within, RawClient, TempDir,
    TestBroker,
};
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet as RPacket};

/// Registers the devices of these tests in the store under `dir`.
fn register(dir: &Path) {
    let (store, _) = Store::open(StoreConfig::new(dir.join("store"))).unwrap();
    let mut registry = Registry::open(Some(store), Vec::new()).unwrap();
    let device = |id: &str, password: &str, rules: &[&str], disabled: bool| NewDevice {
        id: id.into(),
        password: Some(password.into()),
        groups: vec!["line".into()],
        rules: rules.iter().map(|r| (*r).to_owned()).collect(),
        disabled,
        ..NewDevice::default()
    };
    registry.add_device(device("press-1", "pw1", &["allow publish press/%u/#"], false), 0).unwrap();
    registry.add_device(device("press-2", "pw2", &["allow publish press/%u/#"], false), 0).unwrap();
    registry.add_device(device("old-press", "pw3", &[], true), 0).unwrap();
    let rules = vec!["deny subscribe press/+/secret".into(), "allow subscribe press/#".into()];
    registry.set_group(Group { name: "line".into(), rules }).unwrap();
}

async fn node(dir: &TempDir) -> TestBroker {
    register(dir.path());
    let mut config = Config::for_tests();
    config.sys_interval = None;
    config.store = Some(StoreConfig::new(dir.path().join("store")));
    config.access_rules = vec!["allow subscribe broadcast/#".parse().unwrap()];
    TestBroker::start_with(config).await
}

/// What the node answers a `rumqttc` (MQTT 3.1.1) CONNECT with these credentials.
async fn login(broker: &TestBroker, user: &str, password: &str) -> Result<(), ConnectReturnCode> {
    let mut options = MqttOptions::new(format!("login-{user}"), "127.0.0.1", broker.addr.port());
    options.set_credentials(user, password);
    options.set_keep_alive(Duration::from_secs(30));
    let (_client, mut eventloop) = AsyncClient::new(options, 8);
    within(async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(RPacket::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return Err(code),
                Err(e) => panic!("unexpected: {e}"),
            }
        }
    })
    .await
}

fn device_connect(id: &str, password: &str, version: ProtocolVersion) -> Connect {
    let mut c = v5_connect(&format!("{id}-client"));
    c.protocol = version;
    c.username = Some(id.into());
    c.password = Some(bytes::Bytes::copy_from_slice(password.as_bytes()));
    c
}

async fn connect_as(broker: &TestBroker, id: &str, password: &str, version: ProtocolVersion) -> RawClient {
    let mut client = RawClient::connect(broker.addr, version).await;
    client.send(&Packet::Connect(Box::new(device_connect(id, password, version)))).await;
    match client.recv().await {
        Some(Packet::ConnAck(a)) if a.reason_code == ReasonCode::SUCCESS => client,
        other => panic!("{id}: expected CONNACK success, got {other:?}"),
    }
}

#[tokio::test]
async fn registered_devices_log_in_with_their_password_only() {
    let dir = TempDir::new("access-login");
    let broker = node(&dir).await;
    assert_eq!(login(&broker, "press-1", "pw1").await, Ok(()));
    // Again: served from the cache of verified credentials, same answer.
    assert_eq!(login(&broker, "press-1", "pw1").await, Ok(()));
    assert_eq!(login(&broker, "press-1", "pw2").await, Err(ConnectReturnCode::BadUserNamePassword));
    assert_eq!(login(&broker, "nobody", "pw1").await, Err(ConnectReturnCode::BadUserNamePassword));
    assert_eq!(login(&broker, "old-press", "pw3").await, Err(ConnectReturnCode::NotAuthorized));
    assert_eq!(broker.metrics.auth_failures.load(std::sync::atomic::Ordering::Relaxed), 3);

    // MQTT 5: reason code 0x86.
    let (_, ack) = raw_connect(broker.addr, device_connect("press-1", "wrong", ProtocolVersion::V5)).await;
    assert_eq!(ack.reason_code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    broker.stop().await;
}

#[tokio::test]
async fn the_rules_decide_what_a_device_may_publish_and_subscribe_to() {
    let dir = TempDir::new("access-acl");
    let broker = node(&dir).await;
    let mut watcher = connect_as(&broker, "press-2", "pw2", ProtocolVersion::V5).await;
    let ack =
        raw_subscribe(&mut watcher, 1, &[("press/+/temp", QoS::AtLeastOnce), ("line/#", QoS::AtLeastOnce)])
            .await;
    assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_1, ReasonCode::NOT_AUTHORIZED]);
    // The group's deny comes first: a filter that could deliver a secret is refused.
    let ack =
        raw_subscribe(&mut watcher, 2, &[("press/+/secret", QoS::AtMostOnce), ("press/#", QoS::AtMostOnce)])
            .await;
    assert_eq!(ack.reason_codes, [ReasonCode::NOT_AUTHORIZED, ReasonCode::NOT_AUTHORIZED]);
    let ack = raw_subscribe(&mut watcher, 3, &[("broadcast/all", QoS::AtMostOnce)]).await;
    assert_eq!(ack.reason_codes, [ReasonCode::SUCCESS], "the node's own rules apply to every device");

    let mut press = connect_as(&broker, "press-1", "pw1", ProtocolVersion::V5).await;
    press
        .send(&Packet::Publish(raw_publish("press/press-2/temp", QoS::AtLeastOnce, Some(1), b"forged")))
        .await;
    let Some(Packet::PubAck(a)) = press.recv().await else { panic!("expected PUBACK") };
    assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED, "%u: another device's topic");
    press.send(&Packet::Publish(raw_publish("press/press-1/temp", QoS::AtLeastOnce, Some(2), b"21.5"))).await;
    assert_eq!(press.recv().await, Some(Packet::PubAck(Ack::new(pid(2)))));
    let p = expect_raw_publish(watcher.recv().await);
    assert_eq!(
        (&*p.topic, &p.payload[..]),
        ("press/press-1/temp", &b"21.5"[..]),
        "the forged one never came"
    );

    // MQTT 3.1.1: a refused filter gets 0x80; a refused publish is acknowledged and dropped.
    let mut old = connect_as(&broker, "press-1", "pw1", ProtocolVersion::V311).await;
    let ack = raw_subscribe(&mut old, 1, &[("line/#", QoS::AtLeastOnce)]).await;
    assert_eq!(ack.reason_codes, [ReasonCode::UNSPECIFIED_ERROR]);
    old.send(&Packet::Publish(raw_publish("elsewhere", QoS::AtLeastOnce, Some(5), b"x"))).await;
    assert_eq!(old.recv().await, Some(Packet::PubAck(Ack::new(pid(5)))));
    watcher.send(&Packet::PingReq).await;
    assert_eq!(watcher.recv().await, Some(Packet::PingResp), "nothing else reached the watcher");
    assert_eq!(broker.metrics.access_denied.load(std::sync::atomic::Ordering::Relaxed), 6);

    // A client without credentials (loopback, so anonymous is allowed) gets only the node's rules.
    let mut anonymous = m2m_test::raw_connect_ok(broker.addr, v5_connect("tool")).await;
    let ack = raw_subscribe(
        &mut anonymous,
        1,
        &[("press/+/temp", QoS::AtMostOnce), ("broadcast/#", QoS::AtMostOnce)],
    )
    .await;
    assert_eq!(ack.reason_codes, [ReasonCode::NOT_AUTHORIZED, ReasonCode::SUCCESS]);
    broker.stop().await;
}
