//! Uplinks against a real Mosquitto broker (`/usr/sbin/mosquitto`, started per test on a loopback
//! port): messages out with prefix rewrite, in order and with MQTT 5 properties; messages in; an
//! outage of the remote with 1 000 messages kept in the outbox; no loop between out and in routes;
//! TLS with a CA of the test's own and credentials; bad configurations refused. The remote side is
//! driven by an independent client (`rumqttc`), the node side by the project's raw client. One test
//! uses a scripted remote instead, for a Receive Maximum, malformed input, a dropped connection in
//! the middle of a stream, QoS 2 from the remote and an unanswered PINGREQ.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use m2m_broker::Config;
use m2m_codec::{
    decode, encode, ConnAck, ConnAckProperties, Connect, Packet, ProtocolVersion, PublishProperties, QoS,
    ReasonCode, SubAck,
};
use m2m_mesh::{Route, Uplink, UplinkConfig, UplinkStatus};
use m2m_store::StoreConfig;
use m2m_test::{
    expect_raw_publish, free_port, pid, raw_connect_ok, raw_publish, raw_subscribe, v5_connect, within,
    Mosquitto, RawClient, TempDir, TestBroker,
};
use rumqttc::v5::mqttbytes::v5::{Packet as RPacket, Publish as RPublish, PublishProperties as RProps};
use rumqttc::v5::mqttbytes::QoS as RQoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A node with a store whose tap is `uplink`, the uplink started on it.
async fn node(dir: &TempDir, uplink: &Uplink) -> TestBroker {
    let mut c = Config::for_tests();
    c.sys_interval = None;
    c.store = Some(StoreConfig::new(dir.path().join("store")));
    c.taps = vec![Arc::new(uplink.clone())];
    let broker = TestBroker::start_with(c).await;
    within(uplink.start(broker.router.clone(), broker.store.clone().unwrap())).await.unwrap();
    broker
}

async fn stop(broker: TestBroker, uplink: &Uplink) {
    within(uplink.close()).await;
    assert!(!uplink.status().connected);
    broker.stop().await;
}

fn uplink_config(port: u16, protocol: u8) -> UplinkConfig {
    UplinkConfig {
        name: "cloud".into(),
        url: format!("mqtt://127.0.0.1:{port}"),
        protocol,
        keep_alive: 5,
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(300),
        ..UplinkConfig::default()
    }
}

/// Waits (at most `limit`) until the uplink's status satisfies `done`.
async fn until(uplink: &Uplink, limit: Duration, done: impl Fn(&UplinkStatus) -> bool) -> UplinkStatus {
    let waited = tokio::time::timeout(limit, async {
        loop {
            let status = uplink.status();
            if done(&status) {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("uplink status not reached within {limit:?}: {:?}", uplink.status()))
}

enum Got {
    SubAck,
    PubAck,
    Publish(Box<RPublish>),
}

/// An MQTT 5 client of the remote (rumqttc) that reconnects by itself; what it receives comes out
/// of `rx`.
struct RemoteClient {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Got>,
    task: JoinHandle<()>,
}

impl RemoteClient {
    /// Connects as `id`; `persistent`: Clean Start 0 and a session that outlives the connection.
    async fn connect(port: u16, id: &str, persistent: bool) -> RemoteClient {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        if persistent {
            options.set_clean_start(false);
            options.set_session_expiry_interval(Some(3600));
        }
        let (client, mut events) = AsyncClient::new(options, 4096);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let got = match events.poll().await {
                    Ok(Event::Incoming(RPacket::Publish(p))) => Got::Publish(Box::new(p)),
                    Ok(Event::Incoming(RPacket::SubAck(_))) => Got::SubAck,
                    Ok(Event::Incoming(RPacket::PubAck(_))) => Got::PubAck,
                    Ok(_) => continue,
                    // The broker is away (an outage in the test): the next poll connects again.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.send(got).is_err() {
                    return;
                }
            }
        });
        RemoteClient { client, rx, task }
    }

    /// Subscribes and waits for the SUBACK.
    async fn subscribe(&mut self, filter: &str) {
        self.client.subscribe(filter, RQoS::AtLeastOnce).await.unwrap();
        loop {
            match within(self.rx.recv()).await.expect("remote client stopped") {
                Got::SubAck => return,
                Got::PubAck => {}
                Got::Publish(p) => panic!("unexpected publish before SUBACK: {p:?}"),
            }
        }
    }

    /// Publishes at QoS 1 and waits for the PUBACK (this client subscribes to nothing).
    async fn publish(&mut self, topic: &str, retain: bool, payload: &str, props: RProps) {
        let payload = payload.to_owned();
        self.client.publish_with_properties(topic, RQoS::AtLeastOnce, retain, payload, props).await.unwrap();
        loop {
            if let Got::PubAck = within(self.rx.recv()).await.expect("remote client stopped") {
                return;
            }
        }
    }

    /// The next message, within `limit`.
    async fn next_within(&mut self, limit: Duration) -> RPublish {
        tokio::time::timeout(limit, async {
            loop {
                if let Got::Publish(p) = self.rx.recv().await.expect("remote client stopped") {
                    return *p;
                }
            }
        })
        .await
        .expect("no message from the remote within the limit")
    }

    async fn next(&mut self) -> RPublish {
        self.next_within(m2m_test::STEP_LIMIT).await
    }
}

impl Drop for RemoteClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn text(b: &Bytes) -> &str {
    std::str::from_utf8(b).unwrap()
}

/// Publishes `payload` on the node at QoS 1 with packet id `id` and waits for the PUBACK.
async fn publish_acked(
    client: &mut RawClient,
    topic: &str,
    id: u16,
    payload: &str,
    props: PublishProperties,
) {
    let mut p = raw_publish(topic, QoS::AtLeastOnce, Some(id), b"");
    p.payload = Bytes::copy_from_slice(payload.as_bytes());
    p.properties = props;
    client.send(&Packet::Publish(p)).await;
    match client.recv().await {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.packet_id, pid(id)),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn local_messages_go_out_in_order_under_the_remote_prefix_with_their_properties() {
    let dir = TempDir::new("uplink-out");
    let mosquitto = Mosquitto::start(dir.path(), 0, "").await;
    let mut remote = RemoteClient::connect(mosquitto.port, "cloud-app", false).await;
    remote.subscribe("site-1/#").await;
    let uplink = Uplink::new(UplinkConfig {
        out: vec![Route::new("plant/#", "", "site-1/")],
        ..uplink_config(mosquitto.port, 5)
    })
    .unwrap();
    let broker = node(&dir, &uplink).await;
    let mut sensor = raw_connect_ok(broker.addr, v5_connect("sensor")).await;
    for i in 1..=20u16 {
        let props = PublishProperties {
            content_type: Some("text/plain".into()),
            response_topic: Some("plant/replies".into()),
            correlation_data: Some(Bytes::from(vec![1, 2, 3])),
            message_expiry_interval: Some(3600),
            user_properties: vec![("seq".into(), i.to_string().into()), ("unit".into(), "C".into())],
            ..PublishProperties::default()
        };
        publish_acked(&mut sensor, &format!("plant/line-{}/temp", i % 3), i, &format!("t{i}"), props).await;
    }
    // Not matching the out route: stays on the node.
    publish_acked(&mut sensor, "office/temp", 21, "x", PublishProperties::default()).await;
    // QoS 0 goes out too.
    sensor.send(&Packet::Publish(raw_publish("plant/done", QoS::AtMostOnce, None, b"end"))).await;

    for i in 1..=20u16 {
        let m = remote.next().await;
        assert_eq!(text(&m.topic), format!("site-1/plant/line-{}/temp", i % 3));
        assert_eq!(text(&m.payload), format!("t{i}"), "in order");
        assert_eq!(m.qos, RQoS::AtLeastOnce);
        let props = m.properties.expect("MQTT 5 properties");
        let RProps { content_type, response_topic, correlation_data, message_expiry_interval, .. } = &props;
        assert_eq!(content_type.as_deref(), Some("text/plain"));
        assert_eq!(response_topic.as_deref(), Some("plant/replies"));
        assert_eq!(correlation_data.as_deref(), Some(&[1u8, 2, 3][..]));
        assert!(
            message_expiry_interval.is_some_and(|s| s > 3500 && s <= 3600),
            "{message_expiry_interval:?}"
        );
        assert_eq!(
            props.user_properties,
            vec![("seq".to_owned(), i.to_string()), ("unit".to_owned(), "C".to_owned())]
        );
    }
    let m = remote.next().await;
    assert_eq!((text(&m.topic), text(&m.payload), m.qos), ("site-1/plant/done", "end", RQoS::AtMostOnce));
    let status = until(&uplink, m2m_test::STEP_LIMIT, |s| s.backlog == 0).await;
    assert!(status.connected);
    assert_eq!((status.sent, status.acknowledged, status.dropped, status.reconnects), (21, 21, 0, 0));
    assert_eq!(status.oldest_ms, None);
    stop(broker, &uplink).await;
    mosquitto.stop().await;
}

#[tokio::test]
async fn remote_messages_come_in_under_the_local_prefix() {
    let dir = TempDir::new("uplink-in");
    let mosquitto = Mosquitto::start(dir.path(), 0, "").await;
    let mut ops = RemoteClient::connect(mosquitto.port, "cloud-ops", false).await;
    // Retained before the uplink subscribes: it comes in with the subscription.
    ops.publish("cmd/site-1/mode", true, "auto", RProps::default()).await;
    ops.publish("cmd/site-2/mode", true, "manual", RProps::default()).await;
    let uplink = Uplink::new(UplinkConfig {
        in_: vec![Route::new("cmd/site-1/#", "cmd/", "cmd/site-1/")],
        ..uplink_config(mosquitto.port, 5)
    })
    .unwrap();
    let mut c = Config::for_tests();
    c.sys_interval = None;
    c.store = Some(StoreConfig::new(dir.path().join("store")));
    c.taps = vec![Arc::new(uplink.clone())];
    let broker = TestBroker::start_with(c).await;
    let mut actuator = raw_connect_ok(broker.addr, v5_connect("actuator")).await;
    raw_subscribe(&mut actuator, 1, &[("cmd/#", QoS::AtLeastOnce)]).await;
    within(uplink.start(broker.router.clone(), broker.store.clone().unwrap())).await.unwrap();

    let m = expect_raw_publish(actuator.recv().await);
    assert_eq!((&*m.topic, &m.payload[..]), ("cmd/mode", &b"auto"[..]));
    let props = RProps {
        content_type: Some("application/json".into()),
        user_properties: vec![("by".into(), "operator-7".into())],
        ..RProps::default()
    };
    ops.publish("cmd/site-1/valve/3", false, r#"{"open":true}"#, props).await;
    let m = expect_raw_publish(actuator.recv().await);
    assert_eq!((&*m.topic, &m.payload[..]), ("cmd/valve/3", &br#"{"open":true}"#[..]));
    assert_eq!(m.properties.content_type.as_deref(), Some("application/json"));
    assert_eq!(m.properties.user_properties, vec![("by".into(), "operator-7".into())]);
    let status = uplink.status();
    assert_eq!((status.received, status.unrouted, status.sent), (2, 0, 0));
    stop(broker, &uplink).await;
    mosquitto.stop().await;
}

#[tokio::test]
async fn a_thousand_messages_wait_out_an_outage_of_the_remote_and_all_arrive() {
    let dir = TempDir::new("uplink-outage");
    let mosquitto = Mosquitto::start(dir.path(), 0, "").await;
    let port = mosquitto.port;
    // A persistent subscriber: Mosquitto keeps its session (and queues for it) across the restart.
    let mut remote = RemoteClient::connect(port, "cloud-archive", true).await;
    remote.subscribe("site-1/#").await;
    let uplink = Uplink::new(UplinkConfig {
        out: vec![Route::new("plant/#", "plant/", "site-1/plant/")],
        ..uplink_config(port, 4)
    })
    .unwrap();
    let broker = node(&dir, &uplink).await;
    until(&uplink, m2m_test::STEP_LIMIT, |s| s.connected).await;

    mosquitto.stop().await;
    until(&uplink, m2m_test::STEP_LIMIT, |s| !s.connected).await;
    let mut sensor = raw_connect_ok(broker.addr, v5_connect("sensor")).await;
    const N: u16 = 1000;
    for chunk in (1..=N).collect::<Vec<_>>().chunks(10) {
        for &i in chunk {
            let mut p = raw_publish(&format!("plant/m/{}", i % 7), QoS::AtLeastOnce, Some(i), b"");
            p.payload = Bytes::from(i.to_string());
            sensor.send(&Packet::Publish(p)).await;
        }
        for &i in chunk {
            match sensor.recv().await {
                Some(Packet::PubAck(ack)) => assert_eq!(ack.packet_id, pid(i)),
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    }
    let before = uplink.status();
    assert!(!before.connected);
    assert_eq!(before.backlog, u64::from(N), "{before:?}");
    assert!(before.oldest_ms.is_some(), "{before:?}");
    assert!(before.last_error.is_some(), "{before:?}");

    let mosquitto = Mosquitto::start(dir.path(), port, "").await;
    let mut seen = HashSet::new();
    let mut firsts = Vec::new();
    let mut duplicates = 0;
    while seen.len() < usize::from(N) {
        let m = remote.next_within(Duration::from_secs(30)).await;
        let i: u16 = text(&m.payload).parse().unwrap();
        assert_eq!(text(&m.topic), format!("site-1/plant/m/{}", i % 7));
        if seen.insert(i) {
            firsts.push(i);
        } else {
            duplicates += 1;
        }
    }
    let after = until(&uplink, Duration::from_secs(30), |s| s.backlog == 0).await;
    eprintln!("outage: {N} messages arrived, {duplicates} duplicates; uplink {after:?}");
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "first copies in order");
    assert!(after.connected && after.reconnects >= 1, "{after:?}");
    assert_eq!(after.acknowledged, u64::from(N));
    assert_eq!(after.oldest_ms, None);
    stop(broker, &uplink).await;
    mosquitto.stop().await;
}

#[tokio::test]
async fn what_came_in_through_the_uplink_is_not_sent_back_out() {
    let dir = TempDir::new("uplink-loop");
    let mosquitto = Mosquitto::start(dir.path(), 0, "").await;
    let mut remote = RemoteClient::connect(mosquitto.port, "cloud-app", false).await;
    remote.subscribe("site-1/#").await;
    // Out and in map the same topics: MQTT 3.1.1 has no No Local, so the remote sends the uplink
    // its own messages back; they come in, and must not go out again.
    let uplink = Uplink::new(UplinkConfig {
        out: vec![Route::new("plant/#", "", "site-1/")],
        in_: vec![Route::new("site-1/#", "", "site-1/")],
        ..uplink_config(mosquitto.port, 4)
    })
    .unwrap();
    let broker = node(&dir, &uplink).await;
    let mut watcher = raw_connect_ok(broker.addr, v5_connect("watcher")).await;
    raw_subscribe(&mut watcher, 1, &[("plant/#", QoS::AtLeastOnce)]).await;
    // The uplink is subscribed on the remote once a message from it came in: a retained one, so
    // that it comes whether the uplink subscribes before or after.
    let mut ops = RemoteClient::connect(mosquitto.port, "cloud-ops", false).await;
    ops.publish("site-1/probe", true, "1", RProps::default()).await;
    until(&uplink, m2m_test::STEP_LIMIT, |s| s.received == 1).await;
    let probe = remote.next().await;
    assert_eq!(text(&probe.topic), "site-1/probe");
    let received = 1;

    let mut sensor = raw_connect_ok(broker.addr, v5_connect("sensor")).await;
    publish_acked(&mut sensor, "plant/x", 1, "once", PublishProperties::default()).await;
    let m = remote.next().await;
    assert_eq!((text(&m.topic), text(&m.payload)), ("site-1/plant/x", "once"));
    // It comes back in (and reaches the node's subscribers a second time) ...
    until(&uplink, m2m_test::STEP_LIMIT, |s| s.received == received + 1).await;
    for _ in 0..2 {
        let m = expect_raw_publish(watcher.recv().await);
        assert_eq!(&*m.topic, "plant/x");
    }
    // ... but is not sent out again: the next message out is the next one published.
    publish_acked(&mut sensor, "plant/y", 2, "marker", PublishProperties::default()).await;
    let m = remote.next().await;
    assert_eq!((text(&m.topic), text(&m.payload)), ("site-1/plant/y", "marker"));
    let status = until(&uplink, m2m_test::STEP_LIMIT, |s| s.received == received + 2).await;
    assert_eq!(status.sent, 2, "{status:?}");
    stop(broker, &uplink).await;
    mosquitto.stop().await;
}

/// A CA, and a certificate it signed for 127.0.0.1, as PEM files `ca.pem`, `cert.pem`, `key.pem`.
fn certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "cloud ca");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().unwrap();
    std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

#[tokio::test]
async fn over_tls_with_credentials_only_the_right_ones_and_the_right_ca_get_through() {
    let dir = TempDir::new("uplink-tls");
    certificates(dir.path());
    let passwd = dir.path().join("passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["site-1", "s3cret"])
        .status()
        .await
        .expect("mosquitto_passwd (Debian package mosquitto)");
    assert!(made.success());
    let tls_port = free_port();
    let d = dir.path().display();
    let extra = format!(
        "listener {tls_port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n\
         cafile {d}/ca.pem\ncertfile {d}/cert.pem\nkeyfile {d}/key.pem\n",
        passwd.display()
    );
    let mosquitto = Mosquitto::start(dir.path(), 0, &extra).await;
    let mut remote = RemoteClient::connect(mosquitto.port, "cloud-app", false).await;
    remote.subscribe("site-1/#").await;
    let config = |password: &str, ca: bool| UplinkConfig {
        url: format!("mqtts://127.0.0.1:{tls_port}"),
        username: Some("site-1".into()),
        password: Some(password.into()),
        ca: ca.then(|| dir.path().join("ca.pem")),
        out: vec![Route::new("plant/#", "", "site-1/")],
        ..uplink_config(0, 5)
    };

    // The public roots do not know the test's CA.
    let untrusted = Uplink::new(config("s3cret", false)).unwrap();
    let broker = node(&dir, &untrusted).await;
    let status = until(&untrusted, m2m_test::STEP_LIMIT, |s| s.last_error.is_some()).await;
    assert!(status.last_error.as_deref().unwrap().contains("TLS handshake failed"), "{status:?}");
    stop(broker, &untrusted).await;

    let dir2 = TempDir::new("uplink-tls-node");
    let wrong = Uplink::new(config("guess", true)).unwrap();
    let broker = node(&dir2, &wrong).await;
    let status = until(&wrong, m2m_test::STEP_LIMIT, |s| s.last_error.is_some()).await;
    let error = status.last_error.unwrap();
    assert!(error.contains("refused the connection"), "{error}");
    assert!(!status.connected);
    stop(broker, &wrong).await;

    let dir3 = TempDir::new("uplink-tls-node");
    let right = Uplink::new(config("s3cret", true)).unwrap();
    let broker = node(&dir3, &right).await;
    let mut sensor = raw_connect_ok(broker.addr, v5_connect("sensor")).await;
    publish_acked(&mut sensor, "plant/secure", 1, "over TLS", PublishProperties::default()).await;
    let m = remote.next().await;
    assert_eq!((text(&m.topic), text(&m.payload)), ("site-1/plant/secure", "over TLS"));
    let status = until(&right, m2m_test::STEP_LIMIT, |s| s.backlog == 0).await;
    assert!(status.connected && status.last_error.is_none(), "{status:?}");
    stop(broker, &right).await;
    mosquitto.stop().await;
}

#[test]
fn bad_configurations_are_refused_with_clear_errors() {
    let good = || UplinkConfig {
        name: "cloud".into(),
        url: "mqtt://broker.example.com:1883".into(),
        out: vec![Route::new("plant/#", "", "site-1/")],
        ..UplinkConfig::default()
    };
    assert!(Uplink::new(good()).is_ok());
    let error = |c: UplinkConfig| Uplink::new(c).unwrap_err().to_string();
    assert_eq!(
        error(UplinkConfig { url: "http://broker.example.com".into(), ..good() }),
        "uplink cloud: invalid URL \"http://broker.example.com\": unknown scheme: use mqtt:// or mqtts://"
    );
    assert_eq!(
        error(UplinkConfig { url: "mqtt://broker.example.com:70000".into(), ..good() }),
        "uplink cloud: invalid URL \"mqtt://broker.example.com:70000\": the port is not a number from 1 to 65535"
    );
    assert_eq!(
        error(UplinkConfig { name: "my cloud".into(), ..good() }),
        "invalid uplink name \"my cloud\": use 1 to 64 of A-Z a-z 0-9 - _ ."
    );
    assert_eq!(
        error(UplinkConfig { name: String::new(), ..good() }).split(':').next(),
        Some("invalid uplink name \"\"")
    );
    assert_eq!(
        error(UplinkConfig { protocol: 3, ..good() }),
        "uplink cloud: unsupported MQTT protocol level 3: use 4 (MQTT 3.1.1) or 5 (MQTT 5.0)"
    );
    let bad_filter = error(UplinkConfig { out: vec![Route::new("plant/#/temp", "", "")], ..good() });
    assert!(bad_filter.starts_with("uplink cloud: out route \"plant/#/temp\": "), "{bad_filter}");
    let bad_in = error(UplinkConfig { in_: vec![Route::new("cmd/+x", "", "")], ..good() });
    assert!(bad_in.starts_with("uplink cloud: in route \"cmd/+x\": "), "{bad_in}");
    let bad_prefix = error(UplinkConfig { out: vec![Route::new("a/#", "", "x/#/")], ..good() });
    assert!(bad_prefix.contains("a prefix is not a filter"), "{bad_prefix}");
    assert_eq!(error(UplinkConfig { qos: 2, ..good() }), "uplink cloud: qos 2 is not supported: use 0 or 1");
}

/// One connection accepted by a scripted remote written on the project's codec: for behaviour the
/// real broker cannot be made to show on cue (a Receive Maximum, malformed input, an unanswered
/// PINGREQ).
struct FakeConn {
    stream: TcpStream,
    buf: BytesMut,
    /// Whether a PINGREQ is answered (and skipped) by `recv`.
    answer_pings: bool,
}

impl FakeConn {
    /// Accepts the uplink's connection and reads its CONNECT.
    async fn accept(listener: &TcpListener) -> (FakeConn, Connect) {
        let (stream, _) = within(listener.accept()).await.unwrap();
        let mut conn = FakeConn { stream, buf: BytesMut::new(), answer_pings: true };
        match conn.recv().await {
            Some(Packet::Connect(connect)) => (conn, *connect),
            other => panic!("expected CONNECT, got {other:?}"),
        }
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        encode(&packet, ProtocolVersion::V5, &mut out).unwrap();
        within(self.stream.write_all(&out)).await.unwrap();
    }

    /// The next packet (PINGREQs answered and skipped if `answer_pings`); `None` once closed.
    async fn recv(&mut self) -> Option<Packet> {
        loop {
            let packet = within(async {
                loop {
                    if let Some(p) = decode(&mut self.buf, ProtocolVersion::V5, usize::MAX).unwrap() {
                        return Some(p);
                    }
                    match self.stream.read_buf(&mut self.buf).await {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            match packet {
                Some(Packet::PingReq) if self.answer_pings => self.send(Packet::PingResp).await,
                other => return other,
            }
        }
    }

    async fn publish(&mut self) -> m2m_codec::Publish {
        expect_raw_publish(self.recv().await)
    }

    /// Answers the CONNECT and the SUBSCRIBE that follows it.
    async fn accept_session(&mut self, properties: ConnAckProperties, filters: &[&str]) {
        let connack = ConnAck { session_present: false, reason_code: ReasonCode::SUCCESS, properties };
        self.send(Packet::ConnAck(connack)).await;
        let Some(Packet::Subscribe(subscribe)) = self.recv().await else { panic!("expected SUBSCRIBE") };
        let got: Vec<&str> = subscribe.filters.iter().map(|(f, _)| &**f).collect();
        assert_eq!(got, filters);
        assert!(subscribe.filters.iter().all(|(_, o)| o.no_local && o.qos == QoS::AtLeastOnce));
        let suback = SubAck {
            packet_id: subscribe.packet_id,
            properties: Default::default(),
            reason_codes: vec![ReasonCode::GRANTED_QOS_1; filters.len()],
        };
        self.send(Packet::SubAck(suback)).await;
    }
}

fn remote_publish(topic: &str, qos: QoS, id: u16, payload: &'static [u8]) -> Packet {
    Packet::Publish(raw_publish(topic, qos, Some(id), payload))
}

#[tokio::test]
async fn unacknowledged_messages_go_again_after_a_reconnection_and_bad_input_costs_only_the_connection() {
    let dir = TempDir::new("uplink-scripted");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let uplink = Uplink::new(UplinkConfig {
        out: vec![Route::new("plant/#", "", "")],
        in_: vec![Route::new("cmd/#", "", "")],
        keep_alive: 2,
        ..uplink_config(port, 5)
    })
    .unwrap();
    let broker = node(&dir, &uplink).await;
    let mut actuator = raw_connect_ok(broker.addr, v5_connect("actuator")).await;
    raw_subscribe(&mut actuator, 1, &[("cmd/#", QoS::AtMostOnce)]).await;
    let mut sensor = raw_connect_ok(broker.addr, v5_connect("sensor")).await;
    for i in 1..=30u16 {
        publish_acked(&mut sensor, "plant/p", i, &i.to_string(), PublishProperties::default()).await;
    }
    let payloads = |ps: &[m2m_codec::Publish]| -> Vec<String> {
        ps.iter().map(|p| std::str::from_utf8(&p.payload).unwrap().to_owned()).collect()
    };
    let range = |a: u16, b: u16| -> Vec<String> { (a..=b).map(|i| i.to_string()).collect() };

    // Connection 1: the remote takes 10 unacknowledged messages at most.
    let (mut c1, connect) = FakeConn::accept(&listener).await;
    assert!(!connect.clean_start);
    assert_eq!(connect.properties.session_expiry_interval, Some(m2m_mesh::SESSION_EXPIRY));
    assert_eq!((&*connect.client_id, connect.keep_alive), ("m2m-cloud", 2));
    let limited = ConnAckProperties { receive_maximum: Some(10), ..Default::default() };
    c1.accept_session(limited, &["cmd/#"]).await;
    let mut first = Vec::new();
    for _ in 0..10 {
        first.push(c1.publish().await);
    }
    assert_eq!(payloads(&first), range(1, 10));
    assert!(first.iter().all(|p| p.qos == QoS::AtLeastOnce && !p.dup));
    // Nothing more while none is acknowledged: messages from the remote are answered meanwhile.
    for id in 1..=2u16 {
        c1.send(remote_publish("cmd/ping", QoS::AtLeastOnce, id, b"")).await;
        match c1.recv().await {
            Some(Packet::PubAck(ack)) => assert_eq!(ack.packet_id, pid(id)),
            other => panic!("expected PUBACK {id}, got {other:?}"),
        }
    }
    for p in &first[..5] {
        c1.send(Packet::PubAck(m2m_codec::Ack::new(p.packet_id.unwrap()))).await;
    }
    let mut more = Vec::new();
    for _ in 0..5 {
        more.push(c1.publish().await);
    }
    assert_eq!(payloads(&more), range(11, 15));
    // A reserved packet type: the uplink drops the connection, and comes back.
    within(c1.stream.write_all(&[0x00, 0x00])).await.unwrap();
    while c1.recv().await.is_some() {}

    // Connection 2: everything unacknowledged again, from the oldest, in order.
    let (mut c2, _) = FakeConn::accept(&listener).await;
    c2.accept_session(ConnAckProperties::default(), &["cmd/#"]).await;
    let mut again = Vec::new();
    while again.len() < 25 {
        let p = c2.publish().await;
        c2.send(Packet::PubAck(m2m_codec::Ack::new(p.packet_id.unwrap()))).await;
        again.push(p);
    }
    assert_eq!(payloads(&again), range(6, 30));
    let status = until(&uplink, m2m_test::STEP_LIMIT, |s| s.backlog == 0).await;
    assert_eq!((status.acknowledged, status.sent, status.reconnects, status.received), (30, 40, 1, 2));
    assert!(status.last_error.as_deref().unwrap().contains("malformed packet"), "{status:?}");

    // QoS 2 from the remote: published on the node once, however often it comes before PUBREL.
    c2.send(remote_publish("cmd/valve", QoS::ExactlyOnce, 9, b"open")).await;
    for dup in [false, true] {
        match c2.recv().await {
            Some(Packet::PubRec(ack)) => assert_eq!(ack.packet_id, pid(9)),
            other => panic!("expected PUBREC, got {other:?}"),
        }
        if !dup {
            let Packet::Publish(mut p) = remote_publish("cmd/valve", QoS::ExactlyOnce, 9, b"open") else {
                unreachable!()
            };
            p.dup = true;
            c2.send(Packet::Publish(p)).await;
        }
    }
    c2.send(Packet::PubRel(m2m_codec::Ack::new(pid(9)))).await;
    match c2.recv().await {
        Some(Packet::PubComp(ack)) => assert_eq!(ack.packet_id, pid(9)),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    for (topic, payload) in [("cmd/ping", &b""[..]), ("cmd/ping", b""), ("cmd/valve", b"open")] {
        let m = expect_raw_publish(actuator.recv().await);
        assert_eq!((&*m.topic, &m.payload[..]), (topic, payload));
    }
    actuator.send(&Packet::PingReq).await;
    assert_eq!(actuator.recv().await, Some(Packet::PingResp), "the QoS 2 message came once");

    // Keep-alive: a quiet link gets a PINGREQ; unanswered, the uplink gives up on the connection.
    c2.answer_pings = false;
    assert_eq!(c2.recv().await, Some(Packet::PingReq));
    assert_eq!(c2.recv().await, None, "connection closed after the unanswered PINGREQ");
    let (_c3, _) = FakeConn::accept(&listener).await;
    let status = uplink.status();
    assert!(status.last_error.as_deref().unwrap().contains("PINGREQ"), "{status:?}");
    // Closing while the remote does not answer the CONNECT.
    stop(broker, &uplink).await;
}
