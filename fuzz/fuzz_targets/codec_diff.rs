//! Differential fuzzing: our decoder (`m2m-codec`) against an independent one, the `mqttbytes`
//! codecs inside `rumqttc` (a dependency of this fuzz crate only): in full for MQTT 3.1.1 (v4),
//! one-way for MQTT 5.0 (see the last section).
//!
//! Both decode one packet from the same bytes. What must agree:
//!
//! 1. **Framing.** When both decode a packet they consume the same number of bytes, and neither
//!    may ask for more bytes (`Ok(None)` / `InsufficientBytes`) while the other decodes a packet.
//! 2. **Acceptance.** A packet accepted by one and refused by the other is a failure, unless the
//!    difference is one of the known divergences below, each checked by the target from the packet
//!    itself (not just from the error's name), so a new kind of disagreement still fails. (One
//!    exception: for reserved bits of a SUBSCRIBE options byte the target only checks that the
//!    packet is a SUBSCRIBE.)
//! 3. **Content.** When both accept: the packet type, packet id, topic, payload, QoS, retain and
//!    DUP of PUBLISH; the filters and requested QoS of SUBSCRIBE; the filters of UNSUBSCRIBE; the
//!    return codes of SUBACK; session present and return code of CONNACK; client id, keep-alive,
//!    clean session, will (topic, message, QoS, retain), user name and password of CONNECT.
//!
//! # Known divergences (where rumqttc is laxer than the specification)
//! Each is allowed only when our error names the rule and the bytes really break it:
//! - Fixed header flags: rumqttc ignores the reserved flag bits of every packet but PUBLISH, which
//!   MQTT 3.1.1 §2.2.2 fixes (0b0010 for PUBREL, SUBSCRIBE, UNSUBSCRIBE, 0 otherwise), and DUP on
//!   a QoS 0 PUBLISH (§3.3.1.1: "MUST set the DUP flag to 0").
//! - U+0000 in a string: §1.5.3 forbids it; rumqttc accepts it.
//! - Bytes after the last field: rumqttc stops reading PUBACK, PUBREC, PUBREL, PUBCOMP, CONNACK,
//!   CONNECT, PINGREQ, PINGRESP and DISCONNECT at their last field; §3.4.1 and siblings give their
//!   exact remaining length, so trailing bytes are malformed.
//! - Packet id 0 in SUBSCRIBE, UNSUBSCRIBE, PUBACK... (§2.3.1: non-zero), not checked by rumqttc.
//! - CONNECT: the reserved flag (§3.1.2.3), a password without a user name (§3.1.2.9), will QoS or
//!   retain without the will flag (§3.1.2.6–7, rumqttc checks only part of it).
//! - SUBSCRIBE: reserved bits of the options byte (§3.8.3.1); UNSUBSCRIBE without filters
//!   (§3.10.3-2).
//! - CONNACK: reserved bits of the acknowledge flags (§3.2.2.1).
//!
//! # Known divergences (where rumqttc is stricter or reads another format)
//! - CONNECT with protocol name `MQIsdp` level 3 (MQTT 3.1), which we also speak; rumqttc only
//!   knows `MQTT`. Level 5 CONNECT: rumqttc's v4 reader reads it without properties, a different
//!   wire format, so such CONNECTs are not compared.
//! - A password that is not UTF-8: §3.1.3.5 makes it binary data, rumqttc reads it as a string.
//! - A PUBACK/PUBREC/PUBREL/PUBCOMP/SUBACK/UNSUBACK with remaining length 0 is refused by both,
//!   for different reasons; that is agreement.
//!
//! # MQTT 5.0
//! The same bytes are also decoded as MQTT 5.0 by both (rumqttc's `v5` codec). rumqttc's v5 reader
//! checks far fewer of the specification's rules than ours (it takes duplicate properties, a
//! topic that is not UTF-8, topic alias 0, reserved option bits…), so there the check is one-way
//! and on content: a packet rumqttc refuses must be refused by us too, except:
//! - DISCONNECT with remaining length 0 or 1, which §3.14.2.1 and §3.14.2.2.1 allow (reason code
//!   0x00 and no properties, or a reason code and no property length); rumqttc refuses the first
//!   and waits for more bytes on the second (so here, unlike in 3.1.1, framing may differ);
//! - AUTH (§3.15), which rumqttc's reader does not know (packet type 15 is refused as invalid);
//! - a CONNECT of MQTT 3.1 or 3.1.1 (it carries its own version, and we read it as such);
//! - a password that is not UTF-8 (binary data, §3.1.3.5);
//! - a packet written longer than it needs to be, which we accept and re-encode shorter: a
//!   variable byte integer not minimally encoded (`m2m-codec` accepts those on purpose, against
//!   §1.5.5-1; rumqttc reads property identifiers as one byte and refuses one written in two), or
//!   an acknowledgement with a Success reason code and empty properties written out in full.
//!
//! and when both accept, PUBLISH (topic, payload, QoS, retain, DUP, packet id, message expiry,
//! topic alias, content type, response topic, correlation data, user properties, subscription
//! identifiers), SUBSCRIBE (packet id, subscription identifier, user properties, and per filter
//! the filter, QoS, no local, retain as published, retain handling) and UNSUBSCRIBE (packet id,
//! filters) must be equal (for a PUBLISH with subscription identifiers, only its topic, QoS,
//! retain, DUP and packet id: rumqttc counts the identifier byte of each subscription identifier
//! twice, so its property loop may stop early and leave properties in its payload), PUBACK, PUBREC, PUBREL and PUBCOMP carry the same packet id, and every
//! packet is of the same type.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use m2m_codec::{decode, encoded_len, DecodeError, Packet, ProtocolVersion, QoS};
use rumqttc::mqttbytes::v4 as theirs;
use rumqttc::mqttbytes::Error as TheirError;
use rumqttc::v5::mqttbytes::v5 as theirs5;

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    v311(data);
    v5(data);
});

fn v311(data: &[u8]) {
    let mut ours_buf = BytesMut::from(data);
    let mut their_buf = BytesMut::from(data);
    let ours = decode(&mut ours_buf, ProtocolVersion::V311, MAX);
    let theirs = theirs::Packet::read(&mut their_buf, MAX);
    match (ours, theirs) {
        (Ok(Some(ours)), Ok(theirs)) => {
            if not_comparable(&theirs) {
                return;
            }
            assert_eq!(ours_buf.len(), their_buf.len(), "consumed bytes differ: {ours:?} / {theirs:?}");
            same_content(&ours, &theirs);
        }
        (Ok(None), Ok(theirs)) => panic!("we wait for more bytes, rumqttc decoded {theirs:?}"),
        (Ok(Some(ours)), Err(TheirError::InsufficientBytes(n))) => {
            panic!("we decoded {ours:?}, rumqttc waits for {n} more bytes")
        }
        (Err(ours), Ok(theirs)) => {
            if !not_comparable(&theirs) {
                assert!(
                    we_are_stricter(data, &ours, &theirs),
                    "we refuse ({ours:?}), rumqttc accepts {theirs:?}"
                );
            }
        }
        (Ok(Some(ours)), Err(theirs)) => {
            assert!(they_are_stricter(&ours, &theirs), "we accept {ours:?}, rumqttc refuses ({theirs:?})")
        }
        _ => {}
    }
}

fn v5(data: &[u8]) {
    let mut ours_buf = BytesMut::from(data);
    let mut their_buf = BytesMut::from(data);
    let ours = decode(&mut ours_buf, ProtocolVersion::V5, MAX);
    let theirs = theirs5::Packet::read(&mut their_buf, Some(MAX as u32));
    match (ours, theirs) {
        (Ok(Some(ours)), Ok(theirs)) => {
            assert_eq!(ours_buf.len(), their_buf.len(), "v5: consumed bytes differ: {ours:?} / {theirs:?}");
            same_content_v5(&ours, &theirs);
        }
        (Ok(None), Ok(theirs)) => panic!("v5: we wait for more bytes, rumqttc decoded {theirs:?}"),
        (Ok(Some(ours)), Err(theirs)) => {
            let frame_len = data.len() - ours_buf.len();
            let allowed = encoded_len(&ours, ProtocolVersion::V5) < frame_len
                || match &ours {
                    // A DISCONNECT of remaining length 0 or 1 (no properties); rumqttc refuses the
                    // first and waits for more bytes on the second.
                    Packet::Disconnect(_) => matches!(remaining_length(data), Some(0 | 1)),
                    Packet::Auth(_) => true,
                    Packet::Connect(c) => {
                        c.protocol != ProtocolVersion::V5
                            || c.password.as_ref().is_some_and(|p| std::str::from_utf8(p).is_err())
                    }
                    _ => false,
                };
            assert!(allowed, "v5: we accept {ours:?}, rumqttc refuses ({theirs:?})");
        }
        _ => {}
    }
}

fn same_content_v5(ours: &Packet, theirs: &theirs5::Packet) {
    use theirs5::Packet as T;
    fn pairs(v: &[m2m_codec::UserProperty]) -> Vec<(String, String)> {
        v.iter().map(|p| (p.0.to_string(), p.1.to_string())).collect()
    }
    let their_name = match theirs {
        T::Auth(_) => "AUTH",
        T::Connect(..) => "CONNECT",
        T::ConnAck(_) => "CONNACK",
        T::Publish(_) => "PUBLISH",
        T::PubAck(_) => "PUBACK",
        T::PingReq(_) => "PINGREQ",
        T::PingResp(_) => "PINGRESP",
        T::Subscribe(_) => "SUBSCRIBE",
        T::SubAck(_) => "SUBACK",
        T::PubRec(_) => "PUBREC",
        T::PubRel(_) => "PUBREL",
        T::PubComp(_) => "PUBCOMP",
        T::Unsubscribe(_) => "UNSUBSCRIBE",
        T::UnsubAck(_) => "UNSUBACK",
        T::Disconnect(_) => "DISCONNECT",
    };
    assert_eq!(ours.name(), their_name, "v5 packet type: {ours:?} / {theirs:?}");
    match (ours, theirs) {
        (Packet::Publish(o), T::Publish(t)) if !o.properties.subscription_identifiers.is_empty() => {
            assert_eq!(o.topic.as_bytes(), &t.topic[..], "v5 topic");
            assert_eq!((qos(o.qos), o.retain, o.dup), (t.qos as u8, t.retain, t.dup), "v5 qos, retain, dup");
            assert_eq!(o.packet_id.map_or(0, |p| p.get()), t.pkid, "v5 packet id");
        }
        (Packet::Publish(o), T::Publish(t)) => {
            assert_eq!(o.topic.as_bytes(), &t.topic[..], "v5 topic");
            assert_eq!(o.payload, t.payload, "v5 payload");
            assert_eq!((qos(o.qos), o.retain, o.dup), (t.qos as u8, t.retain, t.dup), "v5 qos, retain, dup");
            assert_eq!(o.packet_id.map_or(0, |p| p.get()), t.pkid, "v5 packet id");
            let p = &o.properties;
            let theirs = t.properties.clone().unwrap_or_default();
            assert_eq!(p.message_expiry_interval, theirs.message_expiry_interval, "message expiry");
            assert_eq!(p.topic_alias, theirs.topic_alias, "topic alias");
            assert_eq!(p.content_type.as_deref(), theirs.content_type.as_deref(), "content type");
            assert_eq!(p.response_topic.as_deref(), theirs.response_topic.as_deref(), "response topic");
            assert_eq!(p.correlation_data, theirs.correlation_data, "correlation data");
            assert_eq!(pairs(&p.user_properties), theirs.user_properties, "user properties");
            let ids: Vec<usize> = p.subscription_identifiers.iter().map(|&i| i as usize).collect();
            assert_eq!(ids, theirs.subscription_identifiers, "subscription identifiers");
            assert_eq!(
                p.payload_format_indicator.map(u8::from),
                theirs.payload_format_indicator,
                "payload format"
            );
        }
        (Packet::Subscribe(o), T::Subscribe(t)) => {
            assert_eq!(o.packet_id.get(), t.pkid);
            let (id, user) =
                t.properties.as_ref().map_or((None, Vec::new()), |p| (p.id, p.user_properties.clone()));
            assert_eq!(o.subscription_identifier.map(|i| i as usize), id, "subscription identifier");
            assert_eq!(pairs(&o.user_properties), user, "user properties");
            let ours: Vec<_> = o
                .filters
                .iter()
                .map(|(f, opts)| {
                    let rh = opts.retain_handling as u8;
                    (f.to_string(), qos(opts.qos), opts.no_local, opts.retain_as_published, rh)
                })
                .collect();
            let theirs: Vec<_> = t
                .filters
                .iter()
                .map(|f| {
                    let rh = match f.retain_forward_rule {
                        theirs5::RetainForwardRule::OnEverySubscribe => 0,
                        theirs5::RetainForwardRule::OnNewSubscribe => 1,
                        theirs5::RetainForwardRule::Never => 2,
                    };
                    (f.path.clone(), f.qos as u8, f.nolocal, f.preserve_retain, rh)
                })
                .collect();
            assert_eq!(ours, theirs, "v5 subscription filters");
        }
        (Packet::Unsubscribe(o), T::Unsubscribe(t)) => {
            assert_eq!(o.packet_id.get(), t.pkid);
            let ours: Vec<&str> = o.filters.iter().map(|f| &**f).collect();
            assert_eq!(ours, t.filters, "v5 unsubscribe filters");
        }
        (Packet::PubAck(o), T::PubAck(t)) => assert_eq!(o.packet_id.get(), t.pkid),
        (Packet::PubRec(o), T::PubRec(t)) => assert_eq!(o.packet_id.get(), t.pkid),
        (Packet::PubRel(o), T::PubRel(t)) => assert_eq!(o.packet_id.get(), t.pkid),
        (Packet::PubComp(o), T::PubComp(t)) => assert_eq!(o.packet_id.get(), t.pkid),
        _ => {}
    }
}

/// A level 5 CONNECT, which rumqttc's v4 reader reads without properties.
fn not_comparable(theirs: &theirs::Packet) -> bool {
    matches!(theirs, theirs::Packet::Connect(c) if c.protocol == rumqttc::mqttbytes::Protocol::V5)
}

fn qos(q: QoS) -> u8 {
    q as u8
}

fn their_qos(q: rumqttc::mqttbytes::QoS) -> u8 {
    q as u8
}

fn same_content(ours: &Packet, theirs: &theirs::Packet) {
    use theirs::Packet as T;
    match (ours, theirs) {
        (Packet::Publish(o), T::Publish(t)) => {
            assert_eq!(&*o.topic, t.topic.as_str(), "topic");
            assert_eq!(o.payload, t.payload, "payload");
            assert_eq!(qos(o.qos), their_qos(t.qos), "qos");
            assert_eq!((o.retain, o.dup), (t.retain, t.dup), "retain, dup");
            assert_eq!(o.packet_id.map_or(0, |p| p.get()), t.pkid, "packet id");
        }
        (Packet::PubAck(o), T::PubAck(t)) => assert_eq!(o.packet_id.get(), t.pkid),
        (Packet::PubRec(o), T::PubRec(t)) => assert_eq!(o.packet_id.get(), t.pkid),
        (Packet::PubRel(o), T::PubRel(t)) => assert_eq!(o.packet_id.get(), t.pkid),
        (Packet::PubComp(o), T::PubComp(t)) => assert_eq!(o.packet_id.get(), t.pkid),
        (Packet::Subscribe(o), T::Subscribe(t)) => {
            assert_eq!(o.packet_id.get(), t.pkid);
            let ours: Vec<_> = o.filters.iter().map(|(f, opts)| (f.to_string(), qos(opts.qos))).collect();
            let theirs: Vec<_> = t.filters.iter().map(|f| (f.path.clone(), their_qos(f.qos))).collect();
            assert_eq!(ours, theirs, "subscription filters");
        }
        (Packet::SubAck(o), T::SubAck(t)) => {
            assert_eq!(o.packet_id.get(), t.pkid);
            let theirs: Vec<u8> = t
                .return_codes
                .iter()
                .map(|c| match c {
                    theirs::SubscribeReasonCode::Success(q) => their_qos(*q),
                    theirs::SubscribeReasonCode::Failure => 0x80,
                })
                .collect();
            let ours: Vec<u8> = o.reason_codes.iter().map(|c| c.0).collect();
            assert_eq!(ours, theirs, "suback return codes");
        }
        (Packet::Unsubscribe(o), T::Unsubscribe(t)) => {
            assert_eq!(o.packet_id.get(), t.pkid);
            let ours: Vec<&str> = o.filters.iter().map(|f| &**f).collect();
            assert_eq!(ours, t.topics, "unsubscribe filters");
        }
        (Packet::UnsubAck(o), T::UnsubAck(t)) => assert_eq!(o.packet_id.get(), t.pkid),
        (Packet::ConnAck(o), T::ConnAck(t)) => {
            assert_eq!(o.session_present, t.session_present);
            assert_eq!(o.reason_code.to_v311_connack(), t.code as u8, "connack return code");
        }
        (Packet::Connect(o), T::Connect(t)) => {
            assert_eq!(&*o.client_id, t.client_id.as_str(), "client id");
            assert_eq!(o.keep_alive, t.keep_alive, "keep alive");
            assert_eq!(o.clean_start, t.clean_session, "clean session");
            let ours_will =
                o.will.as_ref().map(|w| (w.topic.to_string(), w.payload.clone(), qos(w.qos), w.retain));
            let their_will = t
                .last_will
                .as_ref()
                .map(|w| (w.topic.clone(), w.message.clone(), their_qos(w.qos), w.retain));
            assert_eq!(ours_will, their_will, "will");
            // rumqttc keeps no login when both are empty, and reads absent fields as empty.
            let ours_login = (o.username.as_deref().unwrap_or(""), o.password.as_deref().unwrap_or(b""));
            let their_login =
                t.login.as_ref().map_or(("", &b""[..]), |l| (l.username.as_str(), l.password.as_bytes()));
            assert_eq!(ours_login, their_login, "user name and password");
        }
        (Packet::PingReq, T::PingReq)
        | (Packet::PingResp, T::PingResp)
        | (Packet::Disconnect(_), T::Disconnect) => {}
        (ours, theirs) => panic!("different packets: {ours:?} / {theirs:?}"),
    }
}

/// Whether our refusal of a packet rumqttc accepts is a documented divergence that these bytes
/// really show.
fn we_are_stricter(data: &[u8], ours: &DecodeError, theirs: &theirs::Packet) -> bool {
    use theirs::Packet as T;
    let first = data[0];
    let (packet_type, flags) = (first >> 4, first & 0x0F);
    match ours {
        DecodeError::InvalidHeaderFlags { flags: f, .. } => {
            let expected = if matches!(packet_type, 6 | 8 | 10) { 0b0010 } else { 0 };
            *f == flags && flags != expected
        }
        DecodeError::DupOnQoS0 => packet_type == 3 && flags & 0b0110 == 0 && flags & 0b1000 != 0,
        DecodeError::NullCharacter => strings(theirs).iter().any(|s| s.contains('\0')),
        DecodeError::TrailingBytes { .. } => matches!(
            theirs,
            T::PubAck(_)
                | T::PubRec(_)
                | T::PubRel(_)
                | T::PubComp(_)
                | T::ConnAck(_)
                | T::Connect(_)
                | T::PingReq
                | T::PingResp
                | T::Disconnect
        ),
        DecodeError::ZeroPacketId { .. } => match theirs {
            T::Subscribe(s) => s.pkid == 0,
            T::Unsubscribe(u) => u.pkid == 0,
            T::PubAck(a) => a.pkid == 0,
            T::PubRec(a) => a.pkid == 0,
            T::PubRel(a) => a.pkid == 0,
            T::PubComp(a) => a.pkid == 0,
            T::SubAck(a) => a.pkid == 0,
            T::UnsubAck(a) => a.pkid == 0,
            _ => false,
        },
        DecodeError::ConnectReservedFlag => connect_flags(data).is_some_and(|f| f & 1 != 0),
        DecodeError::PasswordWithoutUsername => connect_flags(data).is_some_and(|f| f & 0xC0 == 0x40),
        DecodeError::WillFlagsWithoutWill => {
            connect_flags(data).is_some_and(|f| f & 0b100 == 0 && f & 0b11_1000 != 0)
        }
        DecodeError::SubscriptionOptionsReserved { .. } => matches!(theirs, T::Subscribe(_)),
        DecodeError::NoTopicFilters { .. } => matches!(theirs, T::Unsubscribe(u) if u.topics.is_empty()),
        DecodeError::ConnAckReservedFlags { .. } => {
            matches!(theirs, T::ConnAck(_))
                && data.len() > 2
                && frame_byte(data, 0).is_some_and(|f| f & 0xFE != 0)
        }
        _ => false,
    }
}

/// Whether rumqttc's refusal of a packet we accept is a documented divergence.
fn they_are_stricter(ours: &Packet, theirs: &TheirError) -> bool {
    match (ours, theirs) {
        (Packet::Connect(c), _) if c.protocol != ProtocolVersion::V311 => true,
        (Packet::Connect(c), TheirError::TopicNotUtf8) => {
            c.password.as_ref().is_some_and(|p| std::str::from_utf8(p).is_err())
        }
        _ => false,
    }
}

/// The strings of a packet rumqttc decoded.
fn strings(p: &theirs::Packet) -> Vec<&str> {
    use theirs::Packet as T;
    match p {
        T::Publish(p) => vec![&p.topic],
        T::Subscribe(s) => s.filters.iter().map(|f| f.path.as_str()).collect(),
        T::Unsubscribe(u) => u.topics.iter().map(String::as_str).collect(),
        T::Connect(c) => {
            let mut v = vec![c.client_id.as_str()];
            if let Some(w) = &c.last_will {
                v.push(&w.topic);
            }
            if let Some(l) = &c.login {
                v.push(&l.username);
                v.push(&l.password);
            }
            v
        }
        _ => Vec::new(),
    }
}

/// The remaining length of the fixed header at the front of `data` (possibly not minimally
/// encoded, which both codecs accept).
fn remaining_length(data: &[u8]) -> Option<usize> {
    let mut value = 0;
    for (i, &b) in data.iter().skip(1).take(4).enumerate() {
        value |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The byte at `offset` of the variable header (after the fixed header), if there.
fn frame_byte(data: &[u8], offset: usize) -> Option<u8> {
    let header_len = 1 + data[1..].iter().position(|b| b & 0x80 == 0)? + 1;
    data.get(header_len + offset).copied()
}

/// The connect flags of a CONNECT whose protocol name is `MQTT` (rumqttc accepts no other).
fn connect_flags(data: &[u8]) -> Option<u8> {
    // protocol name: 2-byte length + "MQTT", then the level, then the flags.
    frame_byte(data, 7)
}
