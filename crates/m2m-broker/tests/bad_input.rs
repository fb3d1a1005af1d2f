//! Bad input on a real socket: hand-written bytes, the node's exact reaction (which packet, which
//! reason code, closed or not), the protocol-error counter, and then proof that the node still serves
//! a fresh client (an independent `rumqttc` client subscribes and receives its own publish).
//!
//! The bytes are written out here rather than encoded by the project's codec, so an encoder bug cannot
//! hide a decoder bug.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use m2m_broker::Config;
use m2m_codec::{
    ConnAck, Connect, ConnectProperties, Disconnect, Packet, ProtocolVersion, QoS as RawQoS, ReasonCode,
    Will, WillProperties,
};
use m2m_test::{within, RawClient, TestBroker};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet as RPacket, QoS};

const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// A frame: the first byte, the remaining length (variable byte integer), the body.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string (or binary) field; the bytes need not be UTF-8.
fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(bytes.len()).expect("short field").to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A CONNECT frame with the given protocol name, level and flags; keep-alive 30 and client id `id`.
/// Level 5 gets an empty property list.
fn connect_frame(name: &[u8], level: u8, flags: u8, id: &str) -> Vec<u8> {
    let mut body = field(name);
    body.extend_from_slice(&[level, flags, 0, 30]);
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(&field(id.as_bytes()));
    frame(0x10, &body)
}

/// A PUBLISH frame; `props` is the v5 property block without its length (`None` for 3.1.1).
fn publish_frame(
    first: u8,
    topic: &[u8],
    packet_id: Option<u16>,
    props: Option<&[u8]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = field(topic);
    if let Some(id) = packet_id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    if let Some(props) = props {
        body.push(u8::try_from(props.len()).expect("short property block"));
        body.extend_from_slice(props);
    }
    body.extend_from_slice(payload);
    frame(first, &body)
}

fn connect_packet(version: ProtocolVersion, id: &str) -> Connect {
    Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 30,
        client_id: Arc::from(id),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

/// A raw client past a successful CONNECT/CONNACK.
async fn connected_with(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
    let mut raw = RawClient::connect(addr, connect.protocol).await;
    raw.send(&Packet::Connect(Box::new(connect))).await;
    match raw.recv().await {
        Some(Packet::ConnAck(ack)) if ack.reason_code == ReasonCode::SUCCESS => (raw, ack),
        other => panic!("expected a successful CONNACK, got {other:?}"),
    }
}

async fn connected(addr: SocketAddr, version: ProtocolVersion, id: &str) -> RawClient {
    connected_with(addr, connect_packet(version, id)).await.0
}

/// Writes `bytes` on a fresh socket (no CONNECT first) and returns what the node sent before closing.
async fn before_connect(addr: SocketAddr, version: ProtocolVersion, bytes: &[u8]) -> Vec<Packet> {
    let mut raw = RawClient::connect(addr, version).await;
    raw.write_raw(bytes).await;
    raw.until_closed().await
}

/// Connects, writes `bytes`, and returns what the node sent before closing.
async fn after_connect(addr: SocketAddr, version: ProtocolVersion, bytes: &[u8]) -> Vec<Packet> {
    let mut raw = connected(addr, version, "offender").await;
    raw.write_raw(bytes).await;
    raw.until_closed().await
}

/// Asserts that the node sent exactly one DISCONNECT, with `reason`, then closed.
#[track_caller]
fn assert_disconnected_with(packets: &[Packet], reason: ReasonCode) {
    match packets {
        [Packet::Disconnect(Disconnect { reason_code, .. })] => {
            assert_eq!(*reason_code, reason, "DISCONNECT reason; packets: {packets:?}");
        }
        _ => panic!("expected exactly one DISCONNECT {reason}, then close; got {packets:?}"),
    }
}

#[track_caller]
fn assert_closed_silently(packets: &[Packet], what: &str) {
    assert!(
        packets.is_empty(),
        "{what}: expected the node to close without sending anything, got {packets:?}"
    );
}

fn protocol_errors(broker: &TestBroker) -> u64 {
    broker.metrics.protocol_errors.load(Ordering::Relaxed)
}

/// Proves the node still works: a fresh `rumqttc` client subscribes, publishes to itself at QoS 1 and
/// receives the message, then disconnects and waits until the node closed its socket.
async fn assert_node_serves(addr: SocketAddr) {
    let mut options = MqttOptions::new("health-check", addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    within(async {
        let mut subscribed = false;
        loop {
            match eventloop.poll().await.expect("health check: connection failed") {
                Event::Incoming(RPacket::ConnAck(_)) => {
                    client.subscribe("health/check", QoS::AtLeastOnce).await.expect("subscribe");
                }
                Event::Incoming(RPacket::SubAck(_)) if !subscribed => {
                    subscribed = true;
                    client
                        .publish("health/check", QoS::AtLeastOnce, false, &b"alive"[..])
                        .await
                        .expect("publish");
                }
                Event::Incoming(RPacket::Publish(p)) => {
                    assert_eq!((p.topic.as_str(), &p.payload[..]), ("health/check", &b"alive"[..]));
                    break;
                }
                _ => {}
            }
        }
        client.disconnect().await.expect("disconnect");
        // Runs until the node closes the socket after DISCONNECT.
        while eventloop.poll().await.is_ok() {}
    })
    .await;
}

#[tokio::test]
async fn a_garbage_first_byte_closes_the_connection_without_an_answer() {
    let broker = TestBroker::start().await;
    // Packet type 0 is reserved.
    assert_closed_silently(&before_connect(broker.addr, V311, &[0x00, 0x00]).await, "type 0");
    assert_eq!(protocol_errors(&broker), 1);
    // An HTTP client on the MQTT port: 'G' is 0x47, a PUBACK with invalid flags.
    let http = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    assert_closed_silently(&before_connect(broker.addr, V311, http).await, "HTTP request");
    assert_eq!(protocol_errors(&broker), 2);
    assert_node_serves(broker.addr).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_publish_before_connect_closes_the_connection_without_connack() {
    let broker = TestBroker::start().await;
    let packets = before_connect(broker.addr, V311, &publish_frame(0x30, b"early", None, None, b"x")).await;
    assert_closed_silently(&packets, "PUBLISH as the first packet (MQTT-3.1.0-1)");
    assert_eq!(protocol_errors(&broker), 1);
    assert_node_serves(broker.addr).await;
    broker.stop().await;
}

#[tokio::test]
async fn protocol_level_6_gets_a_v5_connack_0x84_then_close() {
    let broker = TestBroker::start().await;
    let packets = before_connect(broker.addr, V5, &connect_frame(b"MQTT", 6, 0x02, "future")).await;
    let expected = ConnAck { reason_code: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION, ..ConnAck::default() };
    assert_eq!(packets, [Packet::ConnAck(expected)], "CONNACK in v5 form, 0x84 (MQTT 5.0 §3.1.2.2)");
    assert_eq!(protocol_errors(&broker), 1);
    assert_node_serves(broker.addr).await;
    broker.stop().await;
}

#[tokio::test]
async fn protocol_level_2_gets_a_3_1_1_connack_with_return_code_1_then_close() {
    let broker = TestBroker::start().await;
    let packets = before_connect(broker.addr, V311, &connect_frame(b"MQTT", 2, 0x02, "ancient")).await;
    // Decoded as 3.1.1: return code 1, "unacceptable protocol version" (MQTT-3.1.2-2).
    let expected = ConnAck { reason_code: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION, ..ConnAck::default() };
    assert_eq!(packets, [Packet::ConnAck(expected)]);
    assert_eq!(protocol_errors(&broker), 1);
    assert_node_serves(broker.addr).await;
    broker.stop().await;
}

#[tokio::test]
async fn an_unknown_protocol_name_closes_the_connection() {
    let broker = TestBroker::start().await;
    let packets = before_connect(broker.addr, V311, &connect_frame(b"MQTX", 4, 0x02, "stranger")).await;
    assert_closed_silently(&packets, "protocol name MQTX (MQTT-3.1.2-1)");
    assert_eq!(protocol_errors(&broker), 1);
    assert_node_serves(broker.addr).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_connect_with_the_reserved_flag_set_closes_the_connection() {
    let broker = TestBroker::start().await;
    for (version, level) in [(V311, 4), (V5, 5)] {
        let packets =
            before_connect(broker.addr, version, &connect_frame(b"MQTT", level, 0x03, "reserved")).await;
        assert_closed_silently(&packets, &format!("reserved flag at level {level} (MQTT-3.1.2-3)"));
    }
    assert_eq!(protocol_errors(&broker), 2);
    assert_node_serves(broker.addr).await;
    broker.stop().await;
}

#[tokio::test]
async fn inconsistent_connect_flags_close_the_connection() {
    let broker = TestBroker::start().await;
    // Will QoS 1 without the will flag (MQTT-3.1.2-13).
    let packets = before_connect(broker.addr, V311, &connect_frame(b"MQTT", 4, 0x0A, "will-qos")).await;
    assert_closed_silently(&packets, "will QoS without a will");
    // Will retain without the will flag (MQTT-3.1.2-15).
    let packets = before_connect(broker.addr, V311, &connect_frame(b"MQTT", 4, 0x22, "will-retain")).await;
    assert_closed_silently(&packets, "will retain without a will");
    // Password without user name in 3.1.1 (MQTT-3.1.2-22); a password field follows the client id.
    let mut body = field(b"MQTT");
    body.extend_from_slice(&[4, 0x42, 0, 30]);
    body.extend_from_slice(&field(b"pw-only"));
    body.extend_from_slice(&field(b"secret"));
    let packets = before_connect(broker.addr, V311, &frame(0x10, &body)).await;
    assert_closed_silently(&packets, "password without user name");
    // The user name flag is set but the payload ends after the client id.
    let packets = before_connect(broker.addr, V311, &connect_frame(b"MQTT", 4, 0x82, "no-user")).await;
    assert_closed_silently(&packets, "user name flag without a user name");
    assert_eq!(protocol_errors(&broker), 4);
    assert_node_serves(broker.addr).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_remaining_length_of_five_bytes_is_malformed() {
    let broker = TestBroker::start().await;
    let packets = before_connect(broker.addr, V311, &[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await;
    assert_closed_silently(&packets, "five-byte remaining length before CONNECT");
    let packets = after_connect(broker.addr, V5, &[0x30, 0x80, 0x80, 0x80, 0x80, 0x01]).await;
    assert_disconnected_with(&packets, ReasonCode::MALFORMED_PACKET);
    assert_eq!(protocol_errors(&broker), 2);
    assert_node_serves(broker.addr).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_v5_publish_over_the_maximum_packet_size_is_refused_from_its_fixed_header() {
    let mut config = Config::for_tests();
    config.limits.max_packet_size = 1024;
    let broker = TestBroker::start_with(config).await;
    let (mut raw, ack) = connected_with(broker.addr, connect_packet(V5, "big")).await;
    assert_eq!(ack.properties.maximum_packet_size, Some(1024), "the limit is announced in CONNACK");

    // Exactly 1024 bytes: 1 + 2 (remaining length 1021) + 2 + 3 ("big") + 1 (no properties) + 1015.
    let at_limit = publish_frame(0x30, b"big", None, Some(&[]), &[b'x'; 1015]);
    assert_eq!(at_limit.len(), 1024);
    raw.write_raw(&at_limit).await;
    raw.write_raw(&[0xC0, 0x00]).await;
    assert_eq!(raw.recv().await, Some(Packet::PingResp), "a packet of exactly the maximum size is accepted");

    // Only the fixed header of a 268 MB PUBLISH: refused before the body is sent.
    raw.write_raw(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]).await;
    assert_disconnected_with(&raw.until_closed().await, ReasonCode::PACKET_TOO_LARGE);

    // One byte over the limit, sent whole.
    let over = publish_frame(0x30, b"big", None, Some(&[]), &[b'x'; 1016]);
    assert_eq!(over.len(), 1025);
    assert_disconnected_with(&after_connect(broker.addr, V5, &over).await, ReasonCode::PACKET_TOO_LARGE);
    assert_eq!(protocol_errors(&broker), 2);
    assert_node_serves(broker.addr).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_second_connect_is_a_protocol_error() {
    let broker = TestBroker::start().await;
    let packets = after_connect(broker.addr, V5, &connect_frame(b"MQTT", 5, 0x02, "again")).await;
    assert_disconnected_with(&packets, ReasonCode::PROTOCOL_ERROR);
    let packets = after_connect(broker.addr, V311, &connect_frame(b"MQTT", 4, 0x02, "again")).await;
    assert_closed_silently(&packets, "second CONNECT over 3.1.1 (MQTT-3.1.0-2)");
    assert_eq!(protocol_errors(&broker), 2);
    assert_node_serves(broker.addr).await;
    broker.stop().await;
}

#[tokio::test]
async fn invalid_utf8_in_a_topic_is_malformed() {
    let broker = TestBroker::start().await;
    // 0xC3 0x28: a two-byte sequence whose second byte is not a continuation byte.
    let bad = b"a/\xC3\x28";
    let packets = after_connect(broker.addr, V5, &publish_frame(0x30, bad, None, Some(&[]), b"x")).await;
    assert_disconnected_with(&packets, ReasonCode::MALFORMED_PACKET);
    let packets = after_connect(broker.addr, V311, &publish_frame(0x30, bad, None, None, b"x")).await;
    assert_closed_silently(&packets, "invalid UTF-8 over 3.1.1 (MQTT-1.5.3-1)");
    // U+0000 is valid UTF-8 but not allowed in an MQTT string (MQTT-1.5.4-2).
    let packets = after_connect(broker.addr, V5, &publish_frame(0x30, b"a/\0", None, Some(&[]), b"x")).await;
    assert_disconnected_with(&packets, ReasonCode::MALFORMED_PACKET);
    // An encoded UTF-16 surrogate, U+D800 (MQTT-1.5.4-1).
    let packets =
        after_connect(broker.addr, V5, &publish_frame(0x30, b"a/\xED\xA0\x80", None, Some(&[]), b"x")).await;
    assert_disconnected_with(&packets, ReasonCode::MALFORMED_PACKET);
    assert_eq!(protocol_errors(&broker), 4);
    assert_node_serves(broker.addr).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_wildcard_in_a_publish_topic_is_refused() {
    let broker = TestBroker::start().await;
    let packets = after_connect(broker.addr, V5, &publish_frame(0x30, b"a/+", None, Some(&[]), b"x")).await;
    assert_disconnected_with(&packets, ReasonCode::TOPIC_NAME_INVALID);
    let packets = after_connect(broker.addr, V311, &publish_frame(0x32, b"a/#", Some(1), None, b"x")).await;
    assert_closed_silently(&packets, "wildcard topic over 3.1.1 (MQTT-3.3.2-2)");
    assert_eq!(protocol_errors(&broker), 2);
    assert_node_serves(broker.addr).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_subscribe_with_wrong_reserved_header_bits_closes_the_connection() {
    let broker = TestBroker::start().await;
    // SUBSCRIBE must have flags 0b0010 (MQTT-3.8.1-1); 0x80 has 0b0000.
    let mut body = vec![0x00, 0x01];
    body.extend_from_slice(&field(b"a/b"));
    body.push(0x01);
    let packets = after_connect(broker.addr, V311, &frame(0x80, &body)).await;
    assert_closed_silently(&packets, "SUBSCRIBE with flags 0000");
    let mut body = vec![0x00, 0x01, 0x00];
    body.extend_from_slice(&field(b"a/b"));
    body.push(0x01);
    let packets = after_connect(broker.addr, V5, &frame(0x80, &body)).await;
    assert_disconnected_with(&packets, ReasonCode::MALFORMED_PACKET);
    assert_eq!(protocol_errors(&broker), 2);
    assert_node_serves(broker.addr).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_publish_with_qos_3_closes_the_connection() {
    let broker = TestBroker::start().await;
    let packets = after_connect(broker.addr, V311, &publish_frame(0x36, b"q/3", Some(1), None, b"x")).await;
    assert_closed_silently(&packets, "QoS 3 (MQTT-3.3.1-4)");
    let packets =
        after_connect(broker.addr, V5, &publish_frame(0x36, b"q/3", Some(1), Some(&[]), b"x")).await;
    assert_disconnected_with(&packets, ReasonCode::MALFORMED_PACKET);
    assert_eq!(protocol_errors(&broker), 2);
    assert_node_serves(broker.addr).await;
    broker.stop().await;
}

#[tokio::test]
async fn topic_alias_0_is_refused_with_0x94() {
    let broker = TestBroker::start().await;
    // Property 0x23 Topic Alias, two bytes: 0.
    let packets =
        after_connect(broker.addr, V5, &publish_frame(0x30, b"t", None, Some(&[0x23, 0, 0]), b"x")).await;
    assert_disconnected_with(&packets, ReasonCode::TOPIC_ALIAS_INVALID);
    assert_eq!(protocol_errors(&broker), 1);
    assert_node_serves(broker.addr).await;
    broker.stop().await;
}

#[tokio::test]
async fn an_auth_packet_on_3_1_1_closes_the_connection() {
    let broker = TestBroker::start().await;
    let packets = after_connect(broker.addr, V311, &[0xF0, 0x00]).await;
    assert_closed_silently(&packets, "AUTH does not exist in 3.1.1");
    assert_eq!(protocol_errors(&broker), 1);
    assert_node_serves(broker.addr).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_connection_closed_in_the_middle_of_a_packet_ends_abnormally_and_sends_the_will() {
    let broker = TestBroker::start().await;
    let mut watcher = connected(broker.addr, V311, "watcher").await;
    let mut body = vec![0x00, 0x01];
    body.extend_from_slice(&field(b"wills/#"));
    body.push(0x00);
    watcher.write_raw(&frame(0x82, &body)).await;
    assert!(matches!(watcher.recv().await, Some(Packet::SubAck(_))));

    let mut connect = connect_packet(V311, "half");
    connect.will = Some(Will {
        topic: Arc::from("wills/half"),
        payload: Bytes::from_static(b"cut off"),
        qos: RawQoS::AtMostOnce,
        retain: false,
        properties: WillProperties::default(),
    });
    let (mut raw, _) = connected_with(broker.addr, connect).await;
    // A PUBLISH announcing 10 bytes, of which 3 arrive.
    raw.write_raw(&[0x30, 0x0A, 0x00, 0x03, b'a']).await;
    drop(raw);

    match watcher.recv().await {
        Some(Packet::Publish(p)) => assert_eq!((&*p.topic, &p.payload[..]), ("wills/half", &b"cut off"[..])),
        other => panic!("expected the will, got {other:?}"),
    }
    assert_node_serves(broker.addr).await;
    broker.stop().await;
}

#[tokio::test]
async fn connections_that_never_send_connect_are_closed_after_the_connect_timeout() {
    let mut config = Config::for_tests();
    config.connect_timeout = Duration::from_secs(1);
    let broker = TestBroker::start_with(config).await;
    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(RawClient::connect(broker.addr, V311).await);
    }
    // A client that connects properly meanwhile is not affected.
    let mut good = connected(broker.addr, V311, "good").await;

    let mut first_close = None;
    for raw in &mut idle {
        assert_closed_silently(&raw.until_closed().await, "no CONNECT");
        first_close.get_or_insert_with(|| started.elapsed());
    }
    let (first, all) = (first_close.expect("at least one"), started.elapsed());
    assert!(first >= Duration::from_millis(900), "closed after {first:?}, before the 1 s connect timeout");
    assert!(all <= Duration::from_millis(3000), "the last idle connection closed only after {all:?}");

    good.write_raw(&[0xC0, 0x00]).await;
    assert_eq!(good.recv().await, Some(Packet::PingResp), "the connected client is still served");
    drop(good);
    assert_node_serves(broker.addr).await;
    broker.stop().await;
}

#[tokio::test]
async fn connections_over_max_connections_are_refused_with_server_busy() {
    let mut config = Config::for_tests();
    config.max_connections = 1;
    let broker = TestBroker::start_with(config).await;
    let mut occupant = connected(broker.addr, V311, "occupant").await;

    let mut raw = RawClient::connect(broker.addr, V5).await;
    raw.write_raw(&connect_frame(b"MQTT", 5, 0x02, "one-too-many-v5")).await;
    match &raw.until_closed().await[..] {
        [Packet::ConnAck(ack)] => {
            assert_eq!(ack.reason_code, ReasonCode::SERVER_BUSY, "v5: CONNACK 0x89");
            assert!(!ack.session_present);
        }
        other => panic!("expected one CONNACK 0x89 then close, got {other:?}"),
    }
    let mut raw = RawClient::connect(broker.addr, V311).await;
    raw.write_raw(&connect_frame(b"MQTT", 4, 0x02, "one-too-many-v3")).await;
    // Return code 3, "server unavailable", decodes as 0x88.
    let expected = ConnAck { reason_code: ReasonCode::SERVER_UNAVAILABLE, ..ConnAck::default() };
    assert_eq!(raw.until_closed().await, [Packet::ConnAck(expected)], "3.1.1: return code 3");
    assert_eq!(broker.metrics.connections_rejected.load(Ordering::Relaxed), 2);

    // Once the occupant leaves, there is room again.
    occupant.write_raw(&[0xE0, 0x00]).await;
    assert_closed_silently(&occupant.until_closed().await, "DISCONNECT");
    assert_node_serves(broker.addr).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_packet_left_half_sent_is_cut_off_at_the_packet_deadline_whatever_the_keep_alive() {
    let config = Config { packet_timeout: Duration::from_secs(1), ..Config::for_tests() };
    let broker = TestBroker::start_with(config).await;
    let mut connect = connect_packet(V5, "trickler");
    connect.keep_alive = 0;
    let (mut raw, _) = connected_with(broker.addr, connect).await;
    // A PUBLISH of 100 bytes, of which 5 come; a byte more now and then does not extend the deadline.
    let started = Instant::now();
    raw.write_raw(&[0x30, 100, 0, 5, b't']).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    raw.write_raw(b"o").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    raw.write_raw(b"p").await;
    let packets = within(raw.until_closed()).await;
    let waited = started.elapsed();
    assert_disconnected_with(&packets, ReasonCode::KEEP_ALIVE_TIMEOUT);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "cut off after {waited:?}"
    );
    assert_eq!(protocol_errors(&broker), 1);

    // Whole packets, however far apart, are not held to it.
    let mut connect = connect_packet(V5, "patient");
    connect.keep_alive = 0;
    let (mut raw, _) = connected_with(broker.addr, connect).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    raw.send(&Packet::PingReq).await;
    assert_eq!(within(raw.recv()).await, Some(Packet::PingResp));
    assert_node_serves(broker.addr).await;
    broker.stop().await;
}
