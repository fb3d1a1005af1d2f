//! The wire format through the public API only: golden bytes from the specifications, decoding at
//! every split point, and a property-based encode/decode round trip for MQTT 3.1.1 and 5.0.

use std::num::NonZeroU16;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use m2m_codec::{
    decode, encode, encoded_len, Ack, AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties,
    Connect, ConnectProperties, Disconnect, DisconnectProperties, Packet, ProtocolVersion, Publish,
    PublishProperties, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck,
    Unsubscribe, UserProperty, Will, WillProperties,
};
use proptest::prelude::*;

const MAX: usize = usize::MAX;

fn id(v: u16) -> NonZeroU16 {
    NonZeroU16::new(v).expect("packet identifiers in tests are not 0")
}

fn encode_to_vec(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).expect("encodable");
    buf.to_vec()
}

/// `packet` encodes to exactly `wire` for `version`, and `wire` decodes back to `packet`.
fn assert_golden(packet: &Packet, version: ProtocolVersion, wire: &[u8]) {
    assert_eq!(encode_to_vec(packet, version), wire, "encoding {}", packet.name());
    assert_eq!(encoded_len(packet, version), wire.len());
    let mut buf = BytesMut::from(wire);
    assert_eq!(decode(&mut buf, version, MAX).expect("decodes").as_ref(), Some(packet));
    assert!(buf.is_empty());
}

fn s(v: &str) -> Arc<str> {
    Arc::from(v)
}

// ---------------------------------------------------------------------------------------------
// Golden bytes
// ---------------------------------------------------------------------------------------------

#[test]
fn pingreq_is_c0_00_as_in_the_spec() {
    // MQTT 3.1.1 §3.12, MQTT 5.0 §3.12.
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        assert_golden(&Packet::PingReq, version, &[0xC0, 0x00]);
        assert_golden(&Packet::PingResp, version, &[0xD0, 0x00]);
    }
}

/// The will/user/password CONNECT whose variable header is MQTT 3.1.1 Figure 3.6 (and, with
/// `properties`, MQTT 5.0 Figure 3-6): connect flags 0xCE, keep alive 10.
fn spec_connect(protocol: ProtocolVersion, properties: ConnectProperties) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: true,
        keep_alive: 10,
        client_id: s("cid"),
        will: Some(Will {
            topic: s("w/t"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
        }),
        username: Some(s("user")),
        password: Some(Bytes::from_static(b"pw")),
        properties,
    }))
}

#[test]
fn v311_connect_matches_the_spec_variable_header() {
    #[rustfmt::skip]
    let wire = [
        0x10, 35,
        // MQTT 3.1.1 Figure 3.6: protocol name, level 4, flags 0xCE, keep alive 10.
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xCE, 0x00, 0x0A,
        0x00, 0x03, b'c', b'i', b'd',
        0x00, 0x03, b'w', b'/', b't',
        0x00, 0x03, b'b', b'y', b'e',
        0x00, 0x04, b'u', b's', b'e', b'r',
        0x00, 0x02, b'p', b'w',
    ];
    assert_golden(&spec_connect(ProtocolVersion::V311, Default::default()), ProtocolVersion::V311, &wire);
}

#[test]
fn v5_connect_with_properties_matches_the_spec_variable_header() {
    #[rustfmt::skip]
    let wire = [
        0x10, 42,
        // MQTT 5.0 Figure 3-6: name, level 5, flags 0xCE, keep alive 10,
        // properties length 5: Session Expiry Interval (17) = 10.
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0xCE, 0x00, 0x0A,
        0x05, 0x11, 0x00, 0x00, 0x00, 0x0A,
        0x00, 0x03, b'c', b'i', b'd',
        0x00, // will properties length
        0x00, 0x03, b'w', b'/', b't',
        0x00, 0x03, b'b', b'y', b'e',
        0x00, 0x04, b'u', b's', b'e', b'r',
        0x00, 0x02, b'p', b'w',
    ];
    let properties = ConnectProperties { session_expiry_interval: Some(10), ..Default::default() };
    // The connection's version is irrelevant for CONNECT, which names its own.
    assert_golden(&spec_connect(ProtocolVersion::V5, properties.clone()), ProtocolVersion::V5, &wire);
    assert_golden(&spec_connect(ProtocolVersion::V5, properties), ProtocolVersion::V311, &wire);
}

#[test]
fn mqtt_31_connect_uses_the_mqisdp_protocol_name() {
    let packet = Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V31,
        clean_start: true,
        keep_alive: 60,
        client_id: s("a"),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }));
    #[rustfmt::skip]
    let wire = [
        0x10, 15,
        0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3C,
        0x00, 0x01, b'a',
    ];
    assert_golden(&packet, ProtocolVersion::V31, &wire);
}

fn spec_publish(properties: PublishProperties) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: s("a/b"),
        packet_id: Some(id(10)),
        properties,
        payload: Bytes::from_static(b"hi"),
    })
}

#[test]
fn qos1_publish_matches_the_spec_variable_header() {
    // MQTT 3.1.1 Figure 3.11: topic "a/b", packet identifier 10.
    let wire = [0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i'];
    assert_golden(&spec_publish(Default::default()), ProtocolVersion::V311, &wire);
    // MQTT 5.0 adds the property length after the packet identifier.
    let wire = [0x32, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, 0x00, b'h', b'i'];
    assert_golden(&spec_publish(Default::default()), ProtocolVersion::V5, &wire);
    // With Message Expiry Interval (0x02) = 60 and Topic Alias (0x23) = 1.
    let properties =
        PublishProperties { message_expiry_interval: Some(60), topic_alias: Some(1), ..Default::default() };
    #[rustfmt::skip]
    let wire = [
        0x32, 0x12, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A,
        0x08, 0x02, 0x00, 0x00, 0x00, 0x3C, 0x23, 0x00, 0x01,
        b'h', b'i',
    ];
    assert_golden(&spec_publish(properties), ProtocolVersion::V5, &wire);
}

fn spec_subscribe() -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: id(10),
        subscription_identifier: None,
        user_properties: Vec::new(),
        filters: vec![
            (s("a/b"), SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() }),
            (s("c/d"), SubscriptionOptions { qos: QoS::ExactlyOnce, ..Default::default() }),
        ],
    })
}

#[test]
fn subscribe_matches_the_spec_payload() {
    // MQTT 3.1.1 Figure 3.21/3.22: packet identifier 10, "a/b" QoS 1, "c/d" QoS 2.
    #[rustfmt::skip]
    let wire = [
        0x82, 0x0E, 0x00, 0x0A,
        0x00, 0x03, b'a', b'/', b'b', 0x01,
        0x00, 0x03, b'c', b'/', b'd', 0x02,
    ];
    assert_golden(&spec_subscribe(), ProtocolVersion::V311, &wire);
    #[rustfmt::skip]
    let wire = [
        0x82, 0x0F, 0x00, 0x0A, 0x00,
        0x00, 0x03, b'a', b'/', b'b', 0x01,
        0x00, 0x03, b'c', b'/', b'd', 0x02,
    ];
    assert_golden(&spec_subscribe(), ProtocolVersion::V5, &wire);
}

#[test]
fn v5_subscribe_options_and_subscription_identifier_are_encoded() {
    let packet = Packet::Subscribe(Subscribe {
        packet_id: id(1),
        subscription_identifier: Some(200),
        user_properties: Vec::new(),
        filters: vec![(
            s("x"),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        )],
    });
    // Subscription Identifier 200 is the two-byte variable byte integer 0xC8 0x01.
    let wire = [0x82, 0x0A, 0x00, 0x01, 0x03, 0x0B, 0xC8, 0x01, 0x00, 0x01, b'x', 0x2D];
    assert_golden(&packet, ProtocolVersion::V5, &wire);
}

#[test]
fn suback_and_connack_match_the_spec() {
    let suback = Packet::SubAck(SubAck {
        packet_id: id(10),
        properties: AckProperties::default(),
        reason_codes: vec![ReasonCode::GRANTED_QOS_1, ReasonCode(0x80)],
    });
    assert_golden(&suback, ProtocolVersion::V311, &[0x90, 0x04, 0x00, 0x0A, 0x01, 0x80]);
    let connack = Packet::ConnAck(ConnAck { session_present: true, ..Default::default() });
    assert_golden(&connack, ProtocolVersion::V311, &[0x20, 0x02, 0x01, 0x00]);
    assert_golden(&connack, ProtocolVersion::V5, &[0x20, 0x03, 0x01, 0x00, 0x00]);
}

#[test]
fn v5_disconnect_with_reason_code_matches_the_spec() {
    // MQTT 5.0 §3.14.2.1: reason code 0x04 (Disconnect with Will Message); no properties, so the
    // property length is omitted (§3.14.2.2.1).
    let packet = Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::DISCONNECT_WITH_WILL,
        properties: Default::default(),
    });
    assert_golden(&packet, ProtocolVersion::V5, &[0xE0, 0x01, 0x04]);
    // Reason 0x8E (Session taken over) with Reason String "x".
    let packet = Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::SESSION_TAKEN_OVER,
        properties: DisconnectProperties { reason_string: Some(s("x")), ..Default::default() },
    });
    assert_golden(&packet, ProtocolVersion::V5, &[0xE0, 0x06, 0x8E, 0x04, 0x1F, 0x00, 0x01, b'x']);
    // Normal disconnection: remaining length 0 (§3.14.2.1).
    assert_golden(&Packet::Disconnect(Disconnect::default()), ProtocolVersion::V5, &[0xE0, 0x00]);
    assert_golden(&Packet::Disconnect(Disconnect::default()), ProtocolVersion::V311, &[0xE0, 0x00]);
}

#[test]
fn puback_matches_the_spec() {
    let ack = Packet::PubAck(Ack::new(id(10)));
    assert_golden(&ack, ProtocolVersion::V311, &[0x40, 0x02, 0x00, 0x0A]);
    assert_golden(&ack, ProtocolVersion::V5, &[0x40, 0x02, 0x00, 0x0A]);
    let rel = Packet::PubRel(Ack::new(id(10)));
    assert_golden(&rel, ProtocolVersion::V311, &[0x62, 0x02, 0x00, 0x0A]);
}

// ---------------------------------------------------------------------------------------------
// Split points
// ---------------------------------------------------------------------------------------------

/// One sample of every packet type for `version`, with v5 fields filled in when `version` is 5.
fn samples(version: ProtocolVersion) -> Vec<Packet> {
    let v5 = version.is_v5();
    let user: Vec<UserProperty> = if v5 { vec![(s("k"), s("v"))] } else { Vec::new() };
    let mut ack = Ack::new(id(7));
    if v5 {
        ack.reason_code = ReasonCode::SUCCESS;
        ack.properties = AckProperties { reason_string: Some(s("why")), user_properties: user.clone() };
    }
    let connect_props = if v5 {
        ConnectProperties { receive_maximum: Some(10), user_properties: user.clone(), ..Default::default() }
    } else {
        Default::default()
    };
    let mut packets = vec![
        spec_connect(version, connect_props),
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: ReasonCode::SUCCESS,
            properties: if v5 {
                ConnAckProperties { topic_alias_maximum: Some(5), ..Default::default() }
            } else {
                Default::default()
            },
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: s("sensors/kitchen/temp"),
            packet_id: Some(id(300)),
            properties: PublishProperties { user_properties: user.clone(), ..Default::default() },
            payload: Bytes::from(vec![0x55; 300]),
        }),
        Packet::PubAck(ack.clone()),
        Packet::PubRec(ack.clone()),
        Packet::PubRel(ack.clone()),
        Packet::PubComp(ack),
        spec_subscribe(),
        Packet::SubAck(SubAck {
            packet_id: id(7),
            properties: AckProperties::default(),
            reason_codes: vec![ReasonCode::GRANTED_QOS_0, ReasonCode::GRANTED_QOS_2],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: id(8),
            user_properties: user.clone(),
            filters: vec![s("a/+"), s("b/#")],
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: id(8),
            properties: AckProperties::default(),
            reason_codes: if v5 { vec![ReasonCode::SUCCESS, ReasonCode::SUCCESS] } else { Vec::new() },
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect::default()),
    ];
    if v5 {
        packets.push(Packet::Auth(Auth {
            reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: AuthProperties {
                authentication_method: Some(s("SCRAM-SHA-1")),
                authentication_data: Some(Bytes::from_static(b"client-first")),
                ..Default::default()
            },
        }));
    }
    packets
}

#[test]
fn decode_waits_for_the_whole_packet_at_every_split_point() {
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        for packet in samples(version) {
            let wire = encode_to_vec(&packet, version);
            for split in 0..wire.len() {
                let mut buf = BytesMut::from(&wire[..split]);
                assert_eq!(decode(&mut buf, version, MAX), Ok(None), "{} split at {split}", packet.name());
                assert_eq!(buf.len(), split, "nothing consumed before the packet is complete");
                buf.extend_from_slice(&wire[split..]);
                assert_eq!(decode(&mut buf, version, MAX), Ok(Some(packet.clone())), "split at {split}");
                assert!(buf.is_empty());
            }
        }
    }
}

#[test]
fn all_samples_back_to_back_decode_in_order() {
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let packets = samples(version);
        let mut buf = BytesMut::new();
        for p in &packets {
            encode(p, version, &mut buf).unwrap();
        }
        for p in &packets {
            assert_eq!(decode(&mut buf, version, MAX).unwrap().as_ref(), Some(p));
        }
        assert!(buf.is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// Property-based round trip
// ---------------------------------------------------------------------------------------------

const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
const SUBACK_CODES: &[u8] = &[0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2];
const V311_SUBACK_CODES: &[u8] = &[0x00, 0x01, 0x02, 0x80];
const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97, 0x99,
    0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
/// The v5 codes that have a 3.1.1 return code of their own.
const V311_CONNACK_CODES: &[u8] = &[0x00, 0x84, 0x85, 0x88, 0x86, 0x87];
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95, 0x96,
    0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];

fn text() -> impl Strategy<Value = Arc<str>> {
    // Any printable text, multi-byte characters included; U+0000 is never valid.
    "\\PC{0,12}".prop_map(Arc::from)
}

fn binary() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn user_properties() -> impl Strategy<Value = Vec<UserProperty>> {
    prop::collection::vec((text(), text()), 0..3)
}

fn packet_id() -> impl Strategy<Value = NonZeroU16> {
    (1u16..).prop_map(id)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

fn code(codes: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    prop::sample::select(codes).prop_map(ReasonCode)
}

fn opt<T: std::fmt::Debug + Clone>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    prop::option::of(s)
}

/// `strategy` for MQTT 5.0, the default (what 3.1.1 carries) otherwise.
fn v5_only<T: Default + Clone + std::fmt::Debug + 'static>(
    v5: bool,
    strategy: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if v5 {
        strategy.boxed()
    } else {
        Just(T::default()).boxed()
    }
}

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        opt(any::<u32>()),
        opt(1u16..),
        opt(1u32..),
        opt(any::<u16>()),
        opt(any::<bool>()),
        opt(any::<bool>()),
        user_properties(),
        opt(text()),
        opt(binary()),
    )
        .prop_map(|(sei, rm, mps, tam, rri, rpi, user, method, data)| ConnectProperties {
            session_expiry_interval: sei,
            receive_maximum: rm,
            maximum_packet_size: mps,
            topic_alias_maximum: tam,
            request_response_information: rri,
            request_problem_information: rpi,
            user_properties: user,
            // Authentication Data requires an Authentication Method.
            authentication_data: if method.is_some() { data } else { None },
            authentication_method: method,
        })
}

fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        opt(any::<u32>()),
        opt(any::<bool>()),
        opt(any::<u32>()),
        opt(text()),
        opt(text()),
        opt(binary()),
        user_properties(),
    )
        .prop_map(|(delay, pfi, mei, ct, rt, cd, user)| WillProperties {
            will_delay_interval: delay,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: user,
        })
}

fn will(v5: bool) -> impl Strategy<Value = Will> {
    (text(), binary(), qos(), any::<bool>(), v5_only(v5, will_properties())).prop_map(
        |(topic, payload, qos, retain, properties)| Will { topic, payload, qos, retain, properties },
    )
}

fn connect(v5: bool) -> impl Strategy<Value = Packet> {
    let protocol = if v5 {
        Just(ProtocolVersion::V5).boxed()
    } else {
        prop_oneof![Just(ProtocolVersion::V311), Just(ProtocolVersion::V31)].boxed()
    };
    (
        protocol,
        any::<bool>(),
        any::<u16>(),
        text(),
        opt(will(v5)),
        opt(text()),
        opt(binary()),
        v5_only(v5, connect_properties()),
    )
        .prop_map(
            move |(protocol, clean_start, keep_alive, client_id, will, username, password, properties)| {
                // Before MQTT 5.0 a password needs a user name.
                let password = if v5 || username.is_some() { password } else { None };
                Packet::Connect(Box::new(Connect {
                    protocol,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    (
        (
            opt(any::<u32>()),
            opt(1u16..),
            opt(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
            opt(any::<bool>()),
            opt(1u32..),
            opt(text()),
            opt(any::<u16>()),
            opt(text()),
            user_properties(),
        ),
        (
            opt(any::<bool>()),
            opt(any::<bool>()),
            opt(any::<bool>()),
            opt(any::<u16>()),
            opt(text()),
            opt(text()),
            opt(text()),
            opt(binary()),
        ),
    )
        .prop_map(
            |((sei, rm, mq, ra, mps, aci, tam, rs, user), (wsa, sia, ssa, ska, ri, sr, am, ad))| {
                ConnAckProperties {
                    session_expiry_interval: sei,
                    receive_maximum: rm,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size: mps,
                    assigned_client_identifier: aci,
                    topic_alias_maximum: tam,
                    reason_string: rs,
                    user_properties: user,
                    wildcard_subscription_available: wsa,
                    subscription_identifiers_available: sia,
                    shared_subscription_available: ssa,
                    server_keep_alive: ska,
                    response_information: ri,
                    server_reference: sr,
                    authentication_method: am,
                    authentication_data: ad,
                }
            },
        )
}

fn connack(v5: bool) -> impl Strategy<Value = Packet> {
    let codes = if v5 { CONNACK_CODES } else { V311_CONNACK_CODES };
    (any::<bool>(), code(codes), v5_only(v5, connack_properties())).prop_map(
        |(session_present, reason_code, properties)| {
            Packet::ConnAck(ConnAck { session_present, reason_code, properties })
        },
    )
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        opt(any::<bool>()),
        opt(any::<u32>()),
        opt(1u16..),
        opt(text()),
        opt(binary()),
        user_properties(),
        prop::collection::vec(1u32..=268_435_455, 0..3),
        opt(text()),
    )
        .prop_map(|(pfi, mei, ta, rt, cd, user, sids, ct)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            user_properties: user,
            subscription_identifiers: sids,
            content_type: ct,
        })
}

fn publish(v5: bool) -> impl Strategy<Value = Packet> {
    (any::<bool>(), qos(), any::<bool>(), text(), packet_id(), v5_only(v5, publish_properties()), binary())
        .prop_map(|(dup, qos, retain, topic, id, properties, payload)| {
            let at_least_once = qos != QoS::AtMostOnce;
            Packet::Publish(Publish {
                dup: dup && at_least_once,
                qos,
                retain,
                topic,
                packet_id: at_least_once.then_some(id),
                properties,
                payload,
            })
        })
}

fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (opt(text()), user_properties())
        .prop_map(|(reason_string, user_properties)| AckProperties { reason_string, user_properties })
}

fn ack(v5: bool, codes: &'static [u8]) -> impl Strategy<Value = Ack> {
    let reason = if v5 { code(codes).boxed() } else { Just(ReasonCode::SUCCESS).boxed() };
    (packet_id(), reason, v5_only(v5, ack_properties()))
        .prop_map(|(packet_id, reason_code, properties)| Ack { packet_id, reason_code, properties })
}

fn subscription_options(v5: bool) -> impl Strategy<Value = SubscriptionOptions> {
    let retain_handling = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend)
    ];
    (qos(), any::<bool>(), any::<bool>(), retain_handling).prop_map(move |(qos, nl, rap, rh)| {
        if v5 {
            SubscriptionOptions { qos, no_local: nl, retain_as_published: rap, retain_handling: rh }
        } else {
            SubscriptionOptions { qos, ..Default::default() }
        }
    })
}

fn subscribe(v5: bool) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        v5_only(v5, opt(1u32..=268_435_455)),
        v5_only(v5, user_properties()),
        prop::collection::vec((text(), subscription_options(v5)), 1..4),
    )
        .prop_map(|(packet_id, subscription_identifier, user_properties, filters)| {
            Packet::Subscribe(Subscribe { packet_id, subscription_identifier, user_properties, filters })
        })
}

fn suback(v5: bool) -> impl Strategy<Value = Packet> {
    let codes = if v5 { SUBACK_CODES } else { V311_SUBACK_CODES };
    (packet_id(), v5_only(v5, ack_properties()), prop::collection::vec(code(codes), 1..4)).prop_map(
        |(packet_id, properties, reason_codes)| {
            Packet::SubAck(SubAck { packet_id, properties, reason_codes })
        },
    )
}

fn unsubscribe(v5: bool) -> impl Strategy<Value = Packet> {
    (packet_id(), v5_only(v5, user_properties()), prop::collection::vec(text(), 1..4)).prop_map(
        |(packet_id, user_properties, filters)| {
            Packet::Unsubscribe(Unsubscribe { packet_id, user_properties, filters })
        },
    )
}

fn unsuback(v5: bool) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        v5_only(v5, ack_properties()),
        v5_only(v5, prop::collection::vec(code(UNSUBACK_CODES), 1..4)),
    )
        .prop_map(|(packet_id, properties, reason_codes)| {
            Packet::UnsubAck(UnsubAck { packet_id, properties, reason_codes })
        })
}

fn disconnect_properties() -> impl Strategy<Value = DisconnectProperties> {
    (opt(any::<u32>()), opt(text()), user_properties(), opt(text())).prop_map(|(sei, rs, user, sr)| {
        DisconnectProperties {
            session_expiry_interval: sei,
            reason_string: rs,
            user_properties: user,
            server_reference: sr,
        }
    })
}

fn disconnect(v5: bool) -> impl Strategy<Value = Packet> {
    let reason = if v5 { code(DISCONNECT_CODES).boxed() } else { Just(ReasonCode::SUCCESS).boxed() };
    (reason, v5_only(v5, disconnect_properties()))
        .prop_map(|(reason_code, properties)| Packet::Disconnect(Disconnect { reason_code, properties }))
}

fn auth() -> impl Strategy<Value = Packet> {
    (code(AUTH_CODES), opt(text()), opt(binary()), opt(text()), user_properties()).prop_map(
        |(reason_code, am, ad, rs, user)| {
            Packet::Auth(Auth {
                reason_code,
                properties: AuthProperties {
                    authentication_method: am,
                    authentication_data: ad,
                    reason_string: rs,
                    user_properties: user,
                },
            })
        },
    )
}

/// Any packet whose fields the protocol version can carry, every field in its valid domain.
fn packet(v5: bool) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        connect(v5),
        connack(v5),
        publish(v5),
        ack(v5, PUBACK_CODES).prop_map(Packet::PubAck),
        ack(v5, PUBACK_CODES).prop_map(Packet::PubRec),
        ack(v5, PUBREL_CODES).prop_map(Packet::PubRel),
        ack(v5, PUBREL_CODES).prop_map(Packet::PubComp),
        subscribe(v5),
        suback(v5),
        unsubscribe(v5),
        unsuback(v5),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(v5),
    ];
    if v5 {
        prop_oneof![14 => common, 1 => auth()].boxed()
    } else {
        common.boxed()
    }
}

fn round_trip(packet: &Packet, version: ProtocolVersion) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(buf.len(), encoded_len(packet, version));
    let decoded = decode(&mut buf, version, MAX).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    prop_assert_eq!(decoded.as_ref(), Some(packet));
    prop_assert!(buf.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn any_v311_packet_decodes_to_what_was_encoded(packet in packet(false)) {
        round_trip(&packet, ProtocolVersion::V311)?;
    }

    #[test]
    fn any_v5_packet_decodes_to_what_was_encoded(packet in packet(true)) {
        round_trip(&packet, ProtocolVersion::V5)?;
    }

    #[test]
    fn any_v31_packet_decodes_to_what_was_encoded(packet in packet(false)) {
        // MQTT 3.1 has no Session Present flag in CONNACK.
        let packet = match packet {
            Packet::ConnAck(c) => Packet::ConnAck(ConnAck { session_present: false, ..c }),
            other => other,
        };
        round_trip(&packet, ProtocolVersion::V31)?;
    }

    #[test]
    fn any_v5_packet_decodes_when_split_anywhere(packet in packet(true), split in any::<prop::sample::Index>()) {
        let wire = encode_to_vec(&packet, ProtocolVersion::V5);
        let split = split.index(wire.len());
        let mut buf = BytesMut::from(&wire[..split]);
        prop_assert_eq!(decode(&mut buf, ProtocolVersion::V5, MAX), Ok(None));
        buf.extend_from_slice(&wire[split..]);
        prop_assert_eq!(decode(&mut buf, ProtocolVersion::V5, MAX), Ok(Some(packet)));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_reencode_identically(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
        v5 in any::<bool>(),
    ) {
        let version = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V311 };
        let mut buf = BytesMut::from(&bytes[..]);
        if let Ok(Some(packet)) = decode(&mut buf, version, MAX) {
            round_trip(&packet, version)?;
        }
    }
}

/// The committed seeds of the `decode` and `codec_diff` fuzz targets (`fuzz/corpus/`), without the
/// fuzzer: every packet in them decodes (for every version where its CONNECT allows) and survives
/// encode → decode unchanged. The `decode` seeds start with two bytes of size limit.
#[test]
fn the_fuzz_seed_corpus_decodes_and_round_trips() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut packets = 0;
    for (target, skip) in [("decode", 2), ("codec_diff", 0)] {
        let dir = std::fs::read_dir(corpus.join(target)).expect("the fuzz corpus is in the repository");
        for file in dir {
            let bytes = std::fs::read(file.expect("a corpus entry").path()).expect("a corpus file");
            for version in [ProtocolVersion::V31, ProtocolVersion::V311, ProtocolVersion::V5] {
                let mut input = BytesMut::from(&bytes[skip..]);
                while let Ok(Some(packet)) = decode(&mut input, version, MAX) {
                    let wire = encode_to_vec(&packet, version);
                    assert_eq!(wire.len(), encoded_len(&packet, version));
                    let again = decode(&mut BytesMut::from(&wire[..]), version, MAX);
                    assert_eq!(again, Ok(Some(packet)));
                    packets += 1;
                }
            }
        }
    }
    assert!(packets > 20, "only {packets} packets in the seeds");
}
