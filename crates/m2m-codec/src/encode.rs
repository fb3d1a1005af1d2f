//! Encoding: [`Packet`]s into bytes for a peer of a given protocol version.
//!
//! Fields the peer's version cannot carry (properties and reason codes before MQTT 5.0) are left
//! out. The body is measured first (which also finds any value the wire format cannot carry), so
//! the fixed header can be written before it and nothing is written when encoding fails.

use bytes::BytesMut;

use crate::packet::{Ack, Connect, Packet, ProtocolVersion, Publish, QoS, SubscriptionOptions, UnsubAck};
use crate::properties::{properties_len, put_properties};
use crate::wire::{var_int_len, Counter, Sink, MAX_VAR_INT};
use crate::{EncodeError, ReasonCode};

/// Encodes `packet` for a peer speaking `version`, appending it to `dst`.
///
/// A CONNECT is encoded for the version it names in [`Connect::protocol`]; `version` is ignored for it.
///
/// # Errors
///
/// [`EncodeError`] when a value cannot be carried by the wire format (a string over 65 535 bytes, a
/// packet over 268 435 455 bytes of remaining length, a QoS > 0 PUBLISH without packet identifier,
/// AUTH for a peer before MQTT 5.0). Nothing is appended to `dst` then.
pub fn encode(packet: &Packet, version: ProtocolVersion, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let version = wire_version(packet, version);
    let mut counter = Counter::default();
    body(&mut counter, packet, version);
    if let Some(error) = counter.error {
        return Err(error);
    }
    let len = counter.len;
    if len > MAX_VAR_INT {
        return Err(EncodeError::PacketTooLarge { len });
    }
    dst.reserve(1 + var_int_len(len) + len);
    Sink::put_u8(dst, first_byte(packet));
    dst.put_var_int(len);
    body(dst, packet, version);
    Ok(())
}

/// The size in bytes `packet` takes on the wire for a peer speaking `version`, fixed header
/// included (to honour a peer's Maximum Packet Size, MQTT 5.0 §3.1.2.11.4).
///
/// For a packet that [`encode()`] would refuse the result is only an estimate.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let mut counter = Counter::default();
    body(&mut counter, packet, wire_version(packet, version));
    1 + var_int_len(counter.len) + counter.len
}

/// CONNECT is written in the version it requests; everything else in the connection's.
fn wire_version(packet: &Packet, version: ProtocolVersion) -> ProtocolVersion {
    match packet {
        Packet::Connect(c) => c.protocol,
        _ => version,
    }
}

/// The first byte of the fixed header: packet type and flags (MQTT 5.0 §2.1.2–2.1.3).
fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => {
            // DUP must be 0 for QoS 0 (MQTT 5.0 §3.3.1.1), so it is only written for QoS 1 and 2.
            let dup = p.dup && p.qos != QoS::AtMostOnce;
            0x30 | u8::from(dup) << 3 | (p.qos as u8) << 1 | u8::from(p.retain)
        }
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

/// Writes everything after the fixed header.
fn body<S: Sink>(s: &mut S, packet: &Packet, version: ProtocolVersion) {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(c) => connect(s, c),
        Packet::ConnAck(c) => {
            // MQTT 3.1 has no Session Present flag: the byte is reserved.
            let flags = u8::from(c.session_present && version != ProtocolVersion::V31);
            s.put_u8(flags);
            if v5 {
                s.put_u8(c.reason_code.0);
                put_properties(s, &c.properties);
            } else {
                s.put_u8(c.reason_code.to_v311_connack());
            }
        }
        Packet::Publish(p) => publish(s, p, v5),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => ack(s, a, v5),
        Packet::Subscribe(sub) => {
            s.put_u16(sub.packet_id.get());
            if v5 {
                put_properties(s, sub);
            }
            for (filter, options) in &sub.filters {
                s.put_str(filter);
                s.put_u8(options_byte(options, v5));
            }
        }
        Packet::SubAck(a) => {
            s.put_u16(a.packet_id.get());
            if v5 {
                put_properties(s, &a.properties);
                for code in &a.reason_codes {
                    s.put_u8(code.0);
                }
            } else {
                for code in &a.reason_codes {
                    // 3.1.1 knows granted QoS 0–2 and 0x80 Failure (§3.9.3).
                    s.put_u8(if code.0 <= 2 { code.0 } else { 0x80 });
                }
            }
        }
        Packet::Unsubscribe(u) => {
            s.put_u16(u.packet_id.get());
            if v5 {
                put_properties(s, u);
            }
            for filter in &u.filters {
                s.put_str(filter);
            }
        }
        Packet::UnsubAck(u) => unsuback(s, u, v5),
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            if v5 {
                // Shortest form: nothing for a normal disconnection, the reason code alone when
                // there are no properties (MQTT 5.0 §3.14.2.1–2).
                if properties_len(&d.properties) > 0 {
                    s.put_u8(d.reason_code.0);
                    put_properties(s, &d.properties);
                } else if d.reason_code != ReasonCode::NORMAL_DISCONNECTION {
                    s.put_u8(d.reason_code.0);
                }
            }
        }
        Packet::Auth(a) => {
            if !v5 {
                s.fail(EncodeError::UnsupportedPacket { packet: "AUTH", version });
            } else if a.reason_code != ReasonCode::SUCCESS || properties_len(&a.properties) > 0 {
                s.put_u8(a.reason_code.0);
                put_properties(s, &a.properties);
            }
        }
    }
}

/// CONNECT (MQTT 5.0 §3.1; 3.1.1 §3.1; 3.1 uses the protocol name `MQIsdp` and level 3).
fn connect<S: Sink>(s: &mut S, c: &Connect) {
    let v5 = c.protocol.is_v5();
    s.put_str(if c.protocol == ProtocolVersion::V31 { "MQIsdp" } else { "MQTT" });
    s.put_u8(c.protocol.level());
    let mut flags = 0u8;
    if c.username.is_some() {
        flags |= 0x80;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if let Some(will) = &c.will {
        flags |= 0x04 | (will.qos as u8) << 3;
        if will.retain {
            flags |= 0x20;
        }
    }
    if c.clean_start {
        flags |= 0x02;
    }
    s.put_u8(flags);
    s.put_u16(c.keep_alive);
    if v5 {
        put_properties(s, &c.properties);
    }
    s.put_str(&c.client_id);
    if let Some(will) = &c.will {
        if v5 {
            put_properties(s, &will.properties);
        }
        s.put_str(&will.topic);
        s.put_binary(&will.payload);
    }
    if let Some(username) = &c.username {
        s.put_str(username);
    }
    if let Some(password) = &c.password {
        s.put_binary(password);
    }
}

/// PUBLISH (MQTT 5.0 §3.3).
fn publish<S: Sink>(s: &mut S, p: &Publish, v5: bool) {
    s.put_str(&p.topic);
    if p.qos != QoS::AtMostOnce {
        match p.packet_id {
            Some(id) => s.put_u16(id.get()),
            None => s.fail(EncodeError::MissingPacketId { qos: p.qos as u8 }),
        }
    }
    if v5 {
        put_properties(s, &p.properties);
    }
    s.put_slice(&p.payload);
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP in their shortest form (MQTT 5.0 §3.4.2): the reason code is left
/// out for Success without properties, the property length when there are no properties.
fn ack<S: Sink>(s: &mut S, a: &Ack, v5: bool) {
    s.put_u16(a.packet_id.get());
    if v5 {
        if properties_len(&a.properties) > 0 {
            s.put_u8(a.reason_code.0);
            put_properties(s, &a.properties);
        } else if a.reason_code != ReasonCode::SUCCESS {
            s.put_u8(a.reason_code.0);
        }
    }
}

/// UNSUBACK (MQTT 5.0 §3.11): 3.1.1 carries the packet identifier only.
fn unsuback<S: Sink>(s: &mut S, u: &UnsubAck, v5: bool) {
    s.put_u16(u.packet_id.get());
    if v5 {
        put_properties(s, &u.properties);
        for code in &u.reason_codes {
            s.put_u8(code.0);
        }
    }
}

/// The subscription options byte (MQTT 5.0 §3.8.3.1); 3.1.1 has only the QoS bits.
fn options_byte(o: &SubscriptionOptions, v5: bool) -> u8 {
    let qos = o.qos as u8;
    if v5 {
        qos | u8::from(o.no_local) << 2
            | u8::from(o.retain_as_published) << 3
            | (o.retain_handling as u8) << 4
    } else {
        qos
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::packet::{
        AckProperties, Auth, ConnAck, Disconnect, DisconnectProperties, PacketId, PublishProperties, SubAck,
        Subscribe,
    };
    use crate::ProtocolVersion::{V31, V311, V5};

    fn id(v: u16) -> PacketId {
        PacketId::new(v).unwrap()
    }

    fn to_vec(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode(packet, version, &mut buf).unwrap();
        assert_eq!(buf.len(), encoded_len(packet, version), "encoded_len agrees with encode");
        buf.to_vec()
    }

    fn publish(qos: QoS, packet_id: Option<PacketId>) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: "t".into(),
            packet_id,
            properties: PublishProperties::default(),
            payload: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn string_longer_than_65535_bytes_is_refused_and_nothing_is_written() {
        let mut p = publish(QoS::AtMostOnce, None);
        p.topic = Arc::from("a".repeat(65_536));
        let mut buf = BytesMut::from(&b"keep"[..]);
        let err = encode(&Packet::Publish(p), V5, &mut buf).unwrap_err();
        assert_eq!(err, EncodeError::FieldTooLong { len: 65_536 });
        assert_eq!(&buf[..], b"keep");
    }

    #[test]
    fn string_of_exactly_65535_bytes_is_encoded() {
        let mut p = publish(QoS::AtMostOnce, None);
        p.topic = Arc::from("a".repeat(65_535));
        assert_eq!(to_vec(&Packet::Publish(p), V311).len(), 1 + 3 + 2 + 65_535 + 1);
    }

    #[test]
    fn packet_over_the_remaining_length_limit_is_refused() {
        let mut p = publish(QoS::AtMostOnce, None);
        // Zeroed pages from the allocator: never touched, because encoding stops after measuring.
        p.payload = Bytes::from(vec![0u8; MAX_VAR_INT]);
        let mut buf = BytesMut::new();
        let err = encode(&Packet::Publish(p), V311, &mut buf).unwrap_err();
        assert_eq!(err, EncodeError::PacketTooLarge { len: MAX_VAR_INT + 3 });
        assert!(buf.is_empty());
    }

    #[test]
    fn auth_cannot_be_sent_to_a_v311_peer() {
        let mut buf = BytesMut::new();
        let err = encode(&Packet::Auth(Auth::default()), V311, &mut buf).unwrap_err();
        assert_eq!(err, EncodeError::UnsupportedPacket { packet: "AUTH", version: V311 });
        assert!(buf.is_empty());
    }

    #[test]
    fn qos_1_publish_without_packet_identifier_is_refused() {
        let mut buf = BytesMut::new();
        let err = encode(&Packet::Publish(publish(QoS::AtLeastOnce, None)), V5, &mut buf).unwrap_err();
        assert_eq!(err, EncodeError::MissingPacketId { qos: 1 });
    }

    #[test]
    fn subscription_identifier_over_the_var_int_limit_is_refused() {
        let s = Subscribe {
            packet_id: id(1),
            subscription_identifier: Some(268_435_456),
            user_properties: Vec::new(),
            filters: vec![("a".into(), SubscriptionOptions::default())],
        };
        let err = encode(&Packet::Subscribe(s), V5, &mut BytesMut::new()).unwrap_err();
        assert_eq!(err, EncodeError::VarIntTooLarge { value: 268_435_456 });
    }

    #[test]
    fn dup_is_not_written_for_qos_0() {
        let mut p = publish(QoS::AtMostOnce, Some(id(5)));
        p.dup = true;
        assert_eq!(to_vec(&Packet::Publish(p), V311), [0x30, 0x04, 0, 1, b't', b'x']);
        let mut p = publish(QoS::ExactlyOnce, Some(id(5)));
        p.dup = true;
        p.retain = true;
        assert_eq!(to_vec(&Packet::Publish(p), V311), [0x3D, 0x06, 0, 1, b't', 0, 5, b'x']);
    }

    #[test]
    fn v5_only_fields_are_left_out_for_a_v311_peer() {
        let mut p = publish(QoS::AtMostOnce, None);
        p.properties.message_expiry_interval = Some(10);
        p.properties.user_properties.push(("k".into(), "v".into()));
        assert_eq!(to_vec(&Packet::Publish(p.clone()), V311), [0x30, 0x04, 0, 1, b't', b'x']);
        assert_eq!(to_vec(&Packet::Publish(p), V5).len(), 2 + 3 + 1 + 5 + 7 + 1);

        let mut ack = Ack::new(id(3));
        ack.reason_code = ReasonCode::NO_MATCHING_SUBSCRIBERS;
        assert_eq!(to_vec(&Packet::PubAck(ack), V311), [0x40, 0x02, 0, 3]);
        let d = Disconnect { reason_code: ReasonCode::SERVER_SHUTTING_DOWN, ..Default::default() };
        assert_eq!(to_vec(&Packet::Disconnect(d), V311), [0xE0, 0x00]);
    }

    #[test]
    fn v5_acks_use_their_shortest_form() {
        assert_eq!(to_vec(&Packet::PubAck(Ack::new(id(10))), V5), [0x40, 0x02, 0, 10]);
        let mut ack = Ack::new(id(10));
        ack.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
        assert_eq!(to_vec(&Packet::PubRel(ack.clone()), V5), [0x62, 0x03, 0, 10, 0x92]);
        ack.properties = AckProperties { reason_string: Some("r".into()), user_properties: Vec::new() };
        assert_eq!(to_vec(&Packet::PubComp(ack), V5), [0x70, 0x08, 0, 10, 0x92, 4, 0x1F, 0, 1, b'r']);
        let mut ack = Ack::new(id(10));
        ack.properties.reason_string = Some("r".into());
        assert_eq!(to_vec(&Packet::PubRec(ack), V5), [0x50, 0x08, 0, 10, 0x00, 4, 0x1F, 0, 1, b'r']);
    }

    #[test]
    fn v5_disconnect_and_auth_use_their_shortest_form() {
        assert_eq!(to_vec(&Packet::Disconnect(Disconnect::default()), V5), [0xE0, 0x00]);
        let d = Disconnect { reason_code: ReasonCode::DISCONNECT_WITH_WILL, ..Default::default() };
        assert_eq!(to_vec(&Packet::Disconnect(d), V5), [0xE0, 0x01, 0x04]);
        let d = Disconnect {
            reason_code: ReasonCode::NORMAL_DISCONNECTION,
            properties: DisconnectProperties { session_expiry_interval: Some(0), ..Default::default() },
        };
        assert_eq!(to_vec(&Packet::Disconnect(d), V5), [0xE0, 0x07, 0x00, 5, 0x11, 0, 0, 0, 0]);
        assert_eq!(to_vec(&Packet::Auth(Auth::default()), V5), [0xF0, 0x00]);
        let a = Auth { reason_code: ReasonCode::RE_AUTHENTICATE, ..Default::default() };
        assert_eq!(to_vec(&Packet::Auth(a), V5), [0xF0, 0x02, 0x19, 0x00]);
    }

    #[test]
    fn v311_suback_reports_any_failure_as_0x80() {
        let s = SubAck {
            packet_id: id(1),
            properties: AckProperties::default(),
            reason_codes: vec![ReasonCode::GRANTED_QOS_2, ReasonCode::NOT_AUTHORIZED, ReasonCode::SUCCESS],
        };
        assert_eq!(to_vec(&Packet::SubAck(s.clone()), V311), [0x90, 0x05, 0, 1, 2, 0x80, 0]);
        assert_eq!(to_vec(&Packet::SubAck(s), V5), [0x90, 0x06, 0, 1, 0, 2, 0x87, 0]);
    }

    #[test]
    fn connack_maps_reason_codes_for_v311_and_drops_session_present_for_v31() {
        let c = ConnAck { session_present: true, reason_code: ReasonCode::BANNED, ..Default::default() };
        assert_eq!(to_vec(&Packet::ConnAck(c.clone()), V311), [0x20, 0x02, 0x01, 5]);
        assert_eq!(to_vec(&Packet::ConnAck(c.clone()), V31), [0x20, 0x02, 0x00, 5]);
        assert_eq!(to_vec(&Packet::ConnAck(c), V5), [0x20, 0x03, 0x01, 0x8A, 0]);
    }

    #[test]
    fn unsuback_carries_only_the_packet_identifier_for_v311() {
        let u = UnsubAck {
            packet_id: id(2),
            properties: AckProperties::default(),
            reason_codes: vec![ReasonCode::SUCCESS],
        };
        assert_eq!(to_vec(&Packet::UnsubAck(u.clone()), V311), [0xB0, 0x02, 0, 2]);
        assert_eq!(to_vec(&Packet::UnsubAck(u), V5), [0xB0, 0x04, 0, 2, 0, 0]);
    }

    #[test]
    fn encoded_len_counts_a_multi_byte_remaining_length() {
        let mut p = publish(QoS::AtMostOnce, None);
        p.payload = Bytes::from(vec![7u8; 200]);
        let packet = Packet::Publish(p);
        assert_eq!(encoded_len(&packet, V311), 1 + 2 + 3 + 200);
        assert_eq!(to_vec(&packet, V311)[..3], [0x30, 0xCB, 0x01]);
    }
}
