//! Decoding: bytes from the peer into [`Packet`]s (MQTT 5.0 §2–3, 3.1.1 §2–3).
//!
//! Every packet starts with a fixed header (MQTT 5.0 §2.1.1):
//!
//! ```text
//!   bit    7   6   5   4   3   2   1   0
//! byte 1  [ packet type  ][    flags     ]
//! byte 2… [ remaining length, 1–4 bytes  ]   variable byte integer: 7 bits per byte, low first
//! ```
//!
//! The fixed header alone tells the size of the whole frame, so an oversized packet is refused before
//! its body is buffered. The body is then parsed from a frozen slice of the input, so the PUBLISH
//! payload and binary fields share the input's memory instead of being copied.

use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};

use crate::packet::{
    Ack, Auth, ConnAck, Connect, ConnectProperties, Disconnect, Packet, PacketId, ProtocolVersion, Publish,
    PublishProperties, QoS, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
    Will, WillProperties,
};
use crate::properties::{self, PropCtx};
use crate::wire::Reader;
use crate::{DecodeError, ReasonCode};

/// Decodes one packet from the front of `src`.
///
/// `Ok(None)` means more bytes are needed, which is not an error; `src` is then left untouched (apart
/// from reserving room for the rest of the frame). On success the packet's bytes are removed from
/// `src`. `version` is the protocol version of the connection; it is ignored for CONNECT, which
/// carries its own, and MQTT 3.1 and 3.1.1 share one wire format apart from CONNECT.
///
/// # Errors
///
/// Any [`DecodeError`]; the connection cannot continue after one, and
/// [`DecodeError::reason_code`] says what to tell the peer. `max_packet` bounds the whole packet,
/// fixed header included, and is checked from the fixed header alone
/// ([`DecodeError::PacketTooLarge`]).
pub fn decode(
    src: &mut BytesMut,
    version: ProtocolVersion,
    max_packet: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = FixedHeader::peek(src, version)? else {
        return Ok(None);
    };
    let len = header.frame_len();
    if len > max_packet {
        return Err(DecodeError::PacketTooLarge { len, max: max_packet });
    }
    if src.len() < len {
        src.reserve(len - src.len());
        return Ok(None);
    }
    let frame = src.split_to(len).freeze();
    parse(&header, frame.slice(header.header_len..), version).map(Some)
}

/// The fixed header: packet type, flags and the length of the rest of the packet.
#[derive(Debug, Clone, Copy)]
struct FixedHeader {
    packet_type: u8,
    flags: u8,
    /// Bytes taken by the fixed header itself (2 to 5).
    header_len: usize,
    /// The remaining length: bytes of the variable header and payload.
    remaining: usize,
}

impl FixedHeader {
    /// Reads and checks the fixed header at the front of `src` without consuming it; `Ok(None)` if
    /// it is not complete yet.
    fn peek(src: &[u8], version: ProtocolVersion) -> Result<Option<Self>, DecodeError> {
        let Some(&first) = src.first() else {
            return Ok(None);
        };
        let (packet_type, flags) = (first >> 4, first & 0x0F);
        check_flags(packet_type, flags, version)?;
        let mut remaining = 0usize;
        for i in 0..4 {
            let Some(&byte) = src.get(1 + i) else {
                return Ok(None);
            };
            remaining |= usize::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(Some(Self { packet_type, flags, header_len: 2 + i, remaining }));
            }
        }
        Err(DecodeError::VarIntTooLong)
    }

    fn frame_len(&self) -> usize {
        self.header_len + self.remaining
    }
}

/// The packet's name for a packet type nibble (only called with 1..=15).
fn packet_name(packet_type: u8) -> &'static str {
    match packet_type {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        _ => "AUTH",
    }
}

/// Checks the packet type and the fixed header flags (MQTT 5.0 §2.1.2–2.1.3, §3.3.1).
fn check_flags(packet_type: u8, flags: u8, version: ProtocolVersion) -> Result<(), DecodeError> {
    match packet_type {
        0 => Err(DecodeError::UnknownPacketType { packet_type }),
        15 if !version.is_v5() => Err(DecodeError::UnknownPacketType { packet_type }),
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                Err(DecodeError::InvalidQoS { packet: "PUBLISH" })
            } else if qos == 0 && flags & 0b1000 != 0 {
                Err(DecodeError::DupOnQoS0)
            } else {
                Ok(())
            }
        }
        _ => {
            let expected = if matches!(packet_type, 6 | 8 | 10) { 0b0010 } else { 0 };
            if flags == expected {
                Ok(())
            } else {
                Err(DecodeError::InvalidHeaderFlags { packet: packet_name(packet_type), flags })
            }
        }
    }
}

fn parse(header: &FixedHeader, body: Bytes, version: ProtocolVersion) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(body, packet_name(header.packet_type));
    let v5 = version.is_v5();
    let packet = match header.packet_type {
        1 => Packet::Connect(Box::new(connect(&mut r)?)),
        2 => Packet::ConnAck(connack(&mut r, version)?),
        3 => return publish(&mut r, header.flags, v5).map(Packet::Publish),
        4 => Packet::PubAck(ack(&mut r, v5, PropCtx::PubAck, PUBACK_CODES)?),
        5 => Packet::PubRec(ack(&mut r, v5, PropCtx::PubRec, PUBACK_CODES)?),
        6 => Packet::PubRel(ack(&mut r, v5, PropCtx::PubRel, PUBREL_CODES)?),
        7 => Packet::PubComp(ack(&mut r, v5, PropCtx::PubComp, PUBREL_CODES)?),
        8 => Packet::Subscribe(subscribe(&mut r, v5)?),
        9 => Packet::SubAck(suback(&mut r, v5)?),
        10 => Packet::Unsubscribe(unsubscribe(&mut r, v5)?),
        11 => Packet::UnsubAck(unsuback(&mut r, v5)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect(disconnect(&mut r, v5)?),
        _ => Packet::Auth(auth(&mut r)?),
    };
    r.finish()?;
    Ok(packet)
}

/// Reason codes PUBACK and PUBREC may carry (MQTT 5.0 §3.4.2.1, §3.5.2.1).
const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
/// Reason codes PUBREL and PUBCOMP may carry (MQTT 5.0 §3.6.2.1, §3.7.2.1).
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
/// Reason codes SUBACK may carry (MQTT 5.0 §3.9.3).
const SUBACK_CODES: &[u8] = &[0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2];
/// Reason codes UNSUBACK may carry (MQTT 5.0 §3.11.3).
const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
/// Reason codes CONNACK may carry (MQTT 5.0 §3.2.2.2).
const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97, 0x99,
    0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
/// Reason codes DISCONNECT may carry, from either side (MQTT 5.0 §3.14.2.1).
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95, 0x96,
    0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
/// Reason codes AUTH may carry (MQTT 5.0 §3.15.2.1).
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];
/// MQTT 3.1.1 SUBACK return codes (§3.9.3).
const V311_SUBACK_CODES: &[u8] = &[0x00, 0x01, 0x02, 0x80];

fn reason_code(r: &mut Reader, allowed: &[u8]) -> Result<ReasonCode, DecodeError> {
    let code = r.u8()?;
    if allowed.contains(&code) {
        Ok(ReasonCode(code))
    } else {
        Err(DecodeError::InvalidReasonCode { packet: r.packet(), code })
    }
}

fn packet_id(r: &mut Reader) -> Result<PacketId, DecodeError> {
    NonZeroU16::new(r.u16()?).ok_or(DecodeError::ZeroPacketId { packet: r.packet() })
}

/// CONNECT (MQTT 5.0 §3.1): protocol name and level, flags, keep alive, properties, then the payload
/// (client id, will properties, will topic, will payload, user name, password).
fn connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.string()?;
    if &*name != "MQTT" && &*name != "MQIsdp" {
        return Err(DecodeError::BadProtocolName { name: name.to_string() });
    }
    let level = r.u8()?;
    let protocol = match (&*name, level) {
        ("MQIsdp", 3) => ProtocolVersion::V31,
        ("MQTT", 4) => ProtocolVersion::V311,
        ("MQTT", 5) => ProtocolVersion::V5,
        _ => return Err(DecodeError::UnsupportedProtocolVersion { level }),
    };
    let v5 = protocol.is_v5();

    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::WillFlagsWithoutWill);
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidQoS { packet: "CONNECT" })?;
    if !v5 && password_flag && !username_flag {
        return Err(DecodeError::PasswordWithoutUsername);
    }

    let keep_alive = r.u16()?;
    let properties = if v5 { properties::read_connect(r)? } else { ConnectProperties::default() };
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if v5 { properties::read_will(r)? } else { WillProperties::default() };
        let topic = r.string()?;
        let payload = r.binary()?;
        Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties })
    } else {
        None
    };
    let username = if username_flag { Some(r.string()?) } else { None };
    let password = if password_flag { Some(r.binary()?) } else { None };
    Ok(Connect { protocol, clean_start, keep_alive, client_id, will, username, password, properties })
}

/// CONNACK (MQTT 5.0 §3.2): acknowledge flags, reason (3.1.1: return) code, properties.
fn connack(r: &mut Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::ConnAckReservedFlags { flags });
    }
    // MQTT 3.1 has no Session Present flag; its first byte is reserved and not used.
    let session_present = flags & 0x01 != 0 && version != ProtocolVersion::V31;
    if version.is_v5() {
        let reason_code = reason_code(r, CONNACK_CODES)?;
        let properties = properties::read_connack(r)?;
        Ok(ConnAck { session_present, reason_code, properties })
    } else {
        let code = r.u8()?;
        let reason_code = ReasonCode::from_v311_connack(code)
            .ok_or(DecodeError::InvalidReasonCode { packet: "CONNACK", code })?;
        Ok(ConnAck { session_present, reason_code, properties: Default::default() })
    }
}

/// PUBLISH (MQTT 5.0 §3.3): topic, packet id when QoS > 0, properties, payload (the rest).
fn publish(r: &mut Reader, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    let dup = flags & 0b1000 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS { packet: "PUBLISH" })?;
    let retain = flags & 0b0001 != 0;
    let topic = r.string()?;
    let packet_id = if qos == QoS::AtMostOnce { None } else { Some(packet_id(r)?) };
    let properties = if v5 { properties::read_publish(r)? } else { PublishProperties::default() };
    let payload = r.rest();
    Ok(Publish { dup, qos, retain, topic, packet_id, properties, payload })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP (MQTT 5.0 §3.4–3.7). In MQTT 5.0 the reason code may be left out
/// (remaining length 2: Success) and so may the properties (remaining length 3).
fn ack(r: &mut Reader, v5: bool, ctx: PropCtx, codes: &[u8]) -> Result<Ack, DecodeError> {
    let mut ack = Ack::new(packet_id(r)?);
    if v5 && !r.is_empty() {
        ack.reason_code = reason_code(r, codes)?;
        if !r.is_empty() {
            ack.properties = properties::read_ack(r, ctx)?;
        }
    }
    Ok(ack)
}

/// SUBSCRIBE (MQTT 5.0 §3.8): packet id, properties, then filter/options pairs (at least one).
fn subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let (subscription_identifier, user_properties) =
        if v5 { properties::read_subscribe(r)? } else { (None, Vec::new()) };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let options = subscription_options(r.u8()?, v5)?;
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters { packet: "SUBSCRIBE" });
    }
    Ok(Subscribe { packet_id, subscription_identifier, user_properties, filters })
}

/// The subscription options byte (MQTT 5.0 §3.8.3.1; 3.1.1 §3.8.3 has only the QoS bits).
fn subscription_options(options: u8, v5: bool) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = if v5 { 0b1100_0000 } else { 0b1111_1100 };
    if options & reserved != 0 {
        return Err(DecodeError::SubscriptionOptionsReserved { options });
    }
    let Some(qos) = QoS::from_u8(options & 0b11) else {
        return Err(if v5 {
            DecodeError::SubscriptionQoS3
        } else {
            DecodeError::InvalidQoS { packet: "SUBSCRIBE" }
        });
    };
    let retain_handling = match (options >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::RetainHandling3),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: options & 0b0100 != 0,
        retain_as_published: options & 0b1000 != 0,
        retain_handling,
    })
}

/// SUBACK (MQTT 5.0 §3.9): packet id, properties, one code per filter.
fn suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = if v5 { properties::read_ack(r, PropCtx::SubAck)? } else { Default::default() };
    let codes = if v5 { SUBACK_CODES } else { V311_SUBACK_CODES };
    let mut reason_codes = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        reason_codes.push(reason_code(r, codes)?);
    }
    if reason_codes.is_empty() {
        return Err(DecodeError::NoReasonCodes { packet: "SUBACK" });
    }
    Ok(SubAck { packet_id, properties, reason_codes })
}

/// UNSUBSCRIBE (MQTT 5.0 §3.10): packet id, properties, filters (at least one).
fn unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let user_properties = if v5 { properties::read_unsubscribe(r)? } else { Vec::new() };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string()?);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters { packet: "UNSUBSCRIBE" });
    }
    Ok(Unsubscribe { packet_id, user_properties, filters })
}

/// UNSUBACK (MQTT 5.0 §3.11): packet id, then in MQTT 5.0 properties and one code per filter.
fn unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let mut unsuback = UnsubAck { packet_id, properties: Default::default(), reason_codes: Vec::new() };
    if v5 {
        unsuback.properties = properties::read_ack(r, PropCtx::UnsubAck)?;
        while !r.is_empty() {
            unsuback.reason_codes.push(reason_code(r, UNSUBACK_CODES)?);
        }
        if unsuback.reason_codes.is_empty() {
            return Err(DecodeError::NoReasonCodes { packet: "UNSUBACK" });
        }
    }
    Ok(unsuback)
}

/// DISCONNECT (MQTT 5.0 §3.14): empty in 3.1.1; in MQTT 5.0 an empty body is a normal disconnection
/// and one byte is a reason code without properties.
fn disconnect(r: &mut Reader, v5: bool) -> Result<Disconnect, DecodeError> {
    let mut disconnect = Disconnect::default();
    if v5 && !r.is_empty() {
        disconnect.reason_code = reason_code(r, DISCONNECT_CODES)?;
        if !r.is_empty() {
            disconnect.properties = properties::read_disconnect(r)?;
        }
    }
    Ok(disconnect)
}

/// AUTH (MQTT 5.0 §3.15): an empty body means Success without properties.
fn auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    let mut auth = Auth::default();
    if !r.is_empty() {
        auth.reason_code = reason_code(r, AUTH_CODES)?;
        if !r.is_empty() {
            auth.properties = properties::read_auth(r)?;
        }
    }
    Ok(auth)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ProtocolVersion::{V311, V5};

    const MAX: usize = 1 << 20;

    /// A frame with the given first byte and body; the remaining length is computed.
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

    fn decode_bytes(bytes: &[u8], version: ProtocolVersion) -> Result<Option<Packet>, DecodeError> {
        decode(&mut BytesMut::from(bytes), version, MAX)
    }

    fn decode_ok(bytes: &[u8], version: ProtocolVersion) -> Packet {
        let mut buf = BytesMut::from(bytes);
        let packet = decode(&mut buf, version, MAX).expect("decodes").expect("complete packet");
        assert!(buf.is_empty(), "the whole frame is consumed");
        packet
    }

    fn decode_err(bytes: &[u8], version: ProtocolVersion) -> DecodeError {
        decode_bytes(bytes, version).expect_err("must be refused")
    }

    /// Asserts the error and its reason code.
    fn assert_refused(bytes: &[u8], version: ProtocolVersion, expected: DecodeError, code: ReasonCode) {
        let err = decode_err(bytes, version);
        assert_eq!(err, expected, "bytes {bytes:02X?}");
        assert_eq!(err.reason_code(), code, "{err}");
    }

    fn string(s: &str) -> Vec<u8> {
        let mut out = (s.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(s.as_bytes());
        out
    }

    /// A CONNECT body for `name`/`level` with the given flags, no properties, client id "c".
    fn connect_body(name: &str, level: u8, flags: u8) -> Vec<u8> {
        let mut body = string(name);
        body.extend_from_slice(&[level, flags, 0, 60]);
        if level == 5 {
            body.push(0);
        }
        body.extend(string("c"));
        body
    }

    /// A v5 CONNECT (clean start, client id "c") carrying `props` (without their length).
    fn connect_v5_with(props: &[u8]) -> Vec<u8> {
        let mut body = string("MQTT");
        body.extend_from_slice(&[5, 0x02, 0, 60, props.len() as u8]);
        body.extend_from_slice(props);
        body.extend(string("c"));
        frame(0x10, &body)
    }

    /// A v5 QoS 0 PUBLISH to "t" carrying `props` (without their length) and payload "x".
    fn publish_v5_with(props: &[u8]) -> Vec<u8> {
        let mut body = string("t");
        body.push(props.len() as u8);
        body.extend_from_slice(props);
        body.push(b'x');
        frame(0x30, &body)
    }

    /// A v5 CONNACK (Success) carrying `props`.
    fn connack_v5_with(props: &[u8]) -> Vec<u8> {
        let mut body = vec![0, 0, props.len() as u8];
        body.extend_from_slice(props);
        frame(0x20, &body)
    }

    /// A v5 SUBSCRIBE (id 1, filter "a" at QoS 0) carrying `props`.
    fn subscribe_v5_with(props: &[u8]) -> Vec<u8> {
        let mut body = vec![0, 1, props.len() as u8];
        body.extend_from_slice(props);
        body.extend(string("a"));
        body.push(0);
        frame(0x82, &body)
    }

    #[test]
    fn empty_input_needs_more_bytes() {
        assert_eq!(decode_bytes(&[], V5), Ok(None));
    }

    #[test]
    fn packet_type_zero_is_malformed() {
        let expected = DecodeError::UnknownPacketType { packet_type: 0 };
        assert_refused(&[0x00, 0x00], V5, expected, ReasonCode::MALFORMED_PACKET);
    }

    #[test]
    fn auth_in_a_v311_connection_is_an_unknown_packet_type() {
        let expected = DecodeError::UnknownPacketType { packet_type: 15 };
        assert_refused(&[0xF0, 0x00], V311, expected, ReasonCode::MALFORMED_PACKET);
        assert_eq!(decode_ok(&[0xF0, 0x00], V5), Packet::Auth(Auth::default()));
    }

    #[test]
    fn wrong_reserved_header_flags_are_malformed() {
        let cases: &[(&[u8], &str, u8)] = &[
            (&[0x41, 0x02, 0, 1], "PUBACK", 1),
            (&[0x60, 0x02, 0, 1], "PUBREL", 0),
            (&[0x80, 0x06, 0, 1, 0, 1, b'a', 0], "SUBSCRIBE", 0),
            (&[0xA3, 0x05, 0, 1, 0, 1, b'a'], "UNSUBSCRIBE", 3),
            (&[0xC8, 0x00], "PINGREQ", 8),
            (&[0x12, 0x00], "CONNECT", 2),
            (&[0xE1, 0x00], "DISCONNECT", 1),
            (&[0xF2, 0x00], "AUTH", 2),
        ];
        for &(bytes, packet, flags) in cases {
            let expected = DecodeError::InvalidHeaderFlags { packet, flags };
            assert_refused(bytes, V5, expected, ReasonCode::MALFORMED_PACKET);
        }
    }

    #[test]
    fn header_flags_are_checked_from_the_first_byte_alone() {
        assert_eq!(decode_err(&[0x41], V311), DecodeError::InvalidHeaderFlags { packet: "PUBACK", flags: 1 });
    }

    #[test]
    fn publish_with_qos_3_is_malformed() {
        let bytes = frame(0x36, &[0, 1, b't', 0, 1]);
        let expected = DecodeError::InvalidQoS { packet: "PUBLISH" };
        assert_refused(&bytes, V311, expected, ReasonCode::MALFORMED_PACKET);
    }

    #[test]
    fn publish_with_dup_at_qos_0_is_malformed() {
        let bytes = frame(0x38, &[0, 1, b't']);
        assert_refused(&bytes, V311, DecodeError::DupOnQoS0, ReasonCode::MALFORMED_PACKET);
    }

    #[test]
    fn remaining_length_with_a_fifth_byte_is_malformed() {
        assert_eq!(decode_bytes(&[0x30, 0xFF, 0xFF, 0xFF], V5), Ok(None));
        let bytes = [0x30, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_refused(&bytes, V5, DecodeError::VarIntTooLong, ReasonCode::MALFORMED_PACKET);
        let bytes = [0x30, 0x80, 0x80, 0x80, 0x80, 0x01];
        assert_refused(&bytes, V5, DecodeError::VarIntTooLong, ReasonCode::MALFORMED_PACKET);
    }

    #[test]
    fn non_minimal_remaining_length_is_accepted() {
        assert_eq!(decode_ok(&[0xC0, 0x80, 0x00], V311), Packet::PingReq);
        assert_eq!(decode_ok(&[0xD0, 0x80, 0x80, 0x80, 0x00], V5), Packet::PingResp);
    }

    #[test]
    fn largest_remaining_length_is_read_from_four_bytes() {
        let header = FixedHeader::peek(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], V5).unwrap().unwrap();
        assert_eq!((header.header_len, header.remaining), (5, 268_435_455));
    }

    #[test]
    fn oversized_packet_is_refused_from_the_fixed_header_alone() {
        // 2-, 3-, 4- and 5-byte fixed headers, nothing of the body buffered.
        let cases: &[(&[u8], usize)] = &[
            (&[0x30, 0x7F], 2 + 127),
            (&[0x30, 0xFF, 0x7F], 3 + 16_383),
            (&[0x30, 0xFF, 0xFF, 0x7F], 4 + 2_097_151),
            (&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], 5 + 268_435_455),
        ];
        for &(bytes, len) in cases {
            let mut buf = BytesMut::from(bytes);
            let err = decode(&mut buf, V5, 100).unwrap_err();
            assert_eq!(err, DecodeError::PacketTooLarge { len, max: 100 });
            assert_eq!(err.reason_code(), ReasonCode::PACKET_TOO_LARGE);
            assert_eq!(buf.len(), bytes.len(), "nothing consumed");
        }
    }

    #[test]
    fn packet_of_exactly_the_maximum_size_is_accepted() {
        let bytes = frame(0x30, &[0, 1, b't', b'x']);
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(decode(&mut buf, V311, bytes.len()).unwrap().is_some());
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            decode(&mut buf, V311, bytes.len() - 1),
            Err(DecodeError::PacketTooLarge { len: bytes.len(), max: bytes.len() - 1 })
        );
    }

    #[test]
    fn incomplete_body_reserves_room_for_the_rest_of_the_frame() {
        let mut buf = BytesMut::from(&[0x30u8, 0xE8, 0x07][..]); // remaining length 1000
        assert_eq!(decode(&mut buf, V5, MAX), Ok(None));
        assert!(buf.capacity() >= 1003);
        assert_eq!(buf.len(), 3, "nothing consumed");
    }

    #[test]
    fn two_packets_in_one_buffer_decode_one_at_a_time() {
        let mut buf = BytesMut::from(&[0xC0u8, 0x00, 0xD0, 0x00, 0xC0][..]);
        assert_eq!(decode(&mut buf, V5, MAX), Ok(Some(Packet::PingReq)));
        assert_eq!(decode(&mut buf, V5, MAX), Ok(Some(Packet::PingResp)));
        assert_eq!(decode(&mut buf, V5, MAX), Ok(None));
        assert_eq!(&buf[..], &[0xC0]);
    }

    #[test]
    fn bytes_left_over_inside_the_frame_are_malformed() {
        let cases: &[(&[u8], ProtocolVersion, &str, usize)] = &[
            (&[0xC0, 0x01, 0x00], V5, "PINGREQ", 1),
            (&[0xD0, 0x02, 0x00, 0x00], V311, "PINGRESP", 2),
            (&[0x40, 0x03, 0x00, 0x01, 0x00], V311, "PUBACK", 1),
            (&[0xB0, 0x03, 0x00, 0x01, 0x00], V311, "UNSUBACK", 1),
            (&[0xE0, 0x01, 0x00], V311, "DISCONNECT", 1),
            (&[0x20, 0x03, 0x00, 0x00, 0x00], V311, "CONNACK", 1),
        ];
        for &(bytes, version, packet, extra) in cases {
            let expected = DecodeError::TrailingBytes { packet, extra };
            assert_refused(bytes, version, expected, ReasonCode::MALFORMED_PACKET);
        }
    }

    #[test]
    fn fields_missing_inside_the_frame_are_malformed() {
        let cases: &[(&[u8], ProtocolVersion, &str)] = &[
            (&[0x20, 0x01, 0x00], V311, "CONNACK"),
            (&[0x40, 0x01, 0x00], V5, "PUBACK"),
            // Topic length 5 but only 1 byte in the frame.
            (&[0x30, 0x03, 0x00, 0x05, b't'], V311, "PUBLISH"),
            // QoS 1 without packet identifier.
            (&[0x32, 0x03, 0x00, 0x01, b't'], V311, "PUBLISH"),
            // v5 PUBLISH without property length.
            (&[0x30, 0x03, 0x00, 0x01, b't'], V5, "PUBLISH"),
            // Property length 5 with 1 byte of properties.
            (&[0x30, 0x05, 0x00, 0x01, b't', 0x05, 0x01], V5, "PUBLISH"),
            (&[0x10, 0x02, 0x00, 0x04], V5, "CONNECT"),
        ];
        for &(bytes, version, packet) in cases {
            let expected = DecodeError::Truncated { packet };
            assert_refused(bytes, version, expected, ReasonCode::MALFORMED_PACKET);
        }
    }

    #[test]
    fn pingreq_and_pingresp_decode_from_two_bytes() {
        assert_eq!(decode_ok(&[0xC0, 0x00], V311), Packet::PingReq);
        assert_eq!(decode_ok(&[0xD0, 0x00], V5), Packet::PingResp);
    }

    #[test]
    fn connect_with_an_unknown_protocol_name_is_a_bad_protocol_name() {
        let bytes = frame(0x10, &connect_body("MQTX", 4, 0x02));
        let expected = DecodeError::BadProtocolName { name: "MQTX".into() };
        assert_refused(&bytes, V5, expected, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
    }

    #[test]
    fn connect_with_an_unknown_level_is_an_unsupported_protocol_version() {
        for (name, level) in [("MQTT", 6), ("MQTT", 3), ("MQIsdp", 4), ("MQTT", 0)] {
            let bytes = frame(0x10, &connect_body(name, level, 0x02));
            let expected = DecodeError::UnsupportedProtocolVersion { level };
            assert_refused(&bytes, V5, expected, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
        }
    }

    #[test]
    fn connect_decodes_mqtt_31_311_and_5_whatever_the_connection_version() {
        for (name, level, protocol) in
            [("MQIsdp", 3, ProtocolVersion::V31), ("MQTT", 4, V311), ("MQTT", 5, V5)]
        {
            let bytes = frame(0x10, &connect_body(name, level, 0x02));
            for version in [V311, V5] {
                let Packet::Connect(c) = decode_ok(&bytes, version) else { panic!("not a CONNECT") };
                assert_eq!(c.protocol, protocol);
                assert!(c.clean_start);
                assert_eq!((c.keep_alive, &*c.client_id), (60, "c"));
            }
        }
    }

    #[test]
    fn connect_with_the_reserved_flag_set_is_malformed() {
        let bytes = frame(0x10, &connect_body("MQTT", 4, 0x03));
        assert_refused(&bytes, V311, DecodeError::ConnectReservedFlag, ReasonCode::MALFORMED_PACKET);
    }

    #[test]
    fn will_qos_3_is_malformed() {
        // Will flag and QoS 3; the check comes before the payload is read.
        let bytes = frame(0x10, &connect_body("MQTT", 4, 0x04 | 0x18));
        let expected = DecodeError::InvalidQoS { packet: "CONNECT" };
        assert_refused(&bytes, V311, expected, ReasonCode::MALFORMED_PACKET);
    }

    #[test]
    fn will_qos_or_retain_without_the_will_flag_is_malformed() {
        for flags in [0x08, 0x10, 0x20] {
            let bytes = frame(0x10, &connect_body("MQTT", 5, flags));
            assert_refused(&bytes, V5, DecodeError::WillFlagsWithoutWill, ReasonCode::MALFORMED_PACKET);
        }
    }

    #[test]
    fn password_without_user_name_is_a_protocol_error_in_311_only() {
        let mut body = connect_body("MQTT", 4, 0x40);
        body.extend(string("pw"));
        let expected = DecodeError::PasswordWithoutUsername;
        assert_refused(&frame(0x10, &body), V311, expected, ReasonCode::PROTOCOL_ERROR);

        let mut body = connect_body("MQTT", 5, 0x40);
        body.extend(string("pw"));
        let Packet::Connect(c) = decode_ok(&frame(0x10, &body), V5) else { panic!("not a CONNECT") };
        assert_eq!((c.username, c.password), (None, Some(Bytes::from_static(b"pw"))));
    }

    #[test]
    fn v311_connect_with_will_user_and_password_decodes_every_field() {
        let mut body = connect_body("MQTT", 4, 0x80 | 0x40 | 0x20 | 0x10 | 0x04);
        body.extend(string("w/t"));
        body.extend(string("bye"));
        body.extend(string("u"));
        body.extend(string("p"));
        let Packet::Connect(c) = decode_ok(&frame(0x10, &body), V311) else { panic!("not a CONNECT") };
        let will = c.will.expect("will");
        assert_eq!(
            (&*will.topic, &will.payload[..], will.qos, will.retain),
            ("w/t", &b"bye"[..], QoS::ExactlyOnce, true)
        );
        assert_eq!(will.properties, WillProperties::default());
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password.as_deref(), Some(&b"p"[..]));
        assert!(!c.clean_start);
    }

    #[test]
    fn v5_connect_properties_are_parsed_into_the_struct() {
        let props = [
            0x11, 0, 0, 0, 10, // session expiry 10
            0x21, 0, 20, // receive maximum 20
            0x27, 0, 0, 4, 0, // maximum packet size 1024
            0x22, 0, 5, // topic alias maximum 5
            0x19, 1, // request response information
            0x17, 0, // request problem information
            0x26, 0, 1, b'k', 0, 1, b'v', // user property
            0x26, 0, 1, b'k', 0, 1, b'w', // repeated user property
            0x15, 0, 1, b'm', // authentication method
            0x16, 0, 2, 1, 2, // authentication data
        ];
        let Packet::Connect(c) = decode_ok(&connect_v5_with(&props), V5) else { panic!("not a CONNECT") };
        let p = c.properties;
        assert_eq!(p.session_expiry_interval, Some(10));
        assert_eq!(p.receive_maximum, Some(20));
        assert_eq!(p.maximum_packet_size, Some(1024));
        assert_eq!(p.topic_alias_maximum, Some(5));
        assert_eq!(p.request_response_information, Some(true));
        assert_eq!(p.request_problem_information, Some(false));
        let user: Vec<(Arc<str>, Arc<str>)> = vec![("k".into(), "v".into()), ("k".into(), "w".into())];
        assert_eq!(p.user_properties, user);
        assert_eq!(p.authentication_method.as_deref(), Some("m"));
        assert_eq!(p.authentication_data.as_deref(), Some(&[1u8, 2][..]));
    }

    #[test]
    fn v5_will_properties_are_parsed_into_the_struct() {
        let mut body = string("MQTT");
        body.extend_from_slice(&[5, 0x04 | 0x08, 0, 0, 0]);
        body.extend(string("c"));
        let will_props =
            [0x18, 0, 0, 0, 30, 0x01, 1, 0x02, 0, 0, 0, 9, 0x03, 0, 1, b'j', 0x08, 0, 1, b'r', 0x09, 0, 1, 7];
        body.push(will_props.len() as u8);
        body.extend_from_slice(&will_props);
        body.extend(string("t"));
        body.extend(string("x"));
        let Packet::Connect(c) = decode_ok(&frame(0x10, &body), V5) else { panic!("not a CONNECT") };
        let will = c.will.expect("will");
        assert_eq!(will.qos, QoS::AtLeastOnce);
        let p = will.properties;
        assert_eq!(p.will_delay_interval, Some(30));
        assert_eq!(p.payload_format_indicator, Some(true));
        assert_eq!(p.message_expiry_interval, Some(9));
        assert_eq!(p.content_type.as_deref(), Some("j"));
        assert_eq!(p.response_topic.as_deref(), Some("r"));
        assert_eq!(p.correlation_data.as_deref(), Some(&[7u8][..]));
    }

    #[test]
    fn will_delay_outside_the_will_properties_is_malformed() {
        let expected = DecodeError::PropertyNotAllowed { id: 0x18, packet: "CONNECT" };
        let bytes = connect_v5_with(&[0x18, 0, 0, 0, 1]);
        assert_refused(&bytes, V5, expected, ReasonCode::MALFORMED_PACKET);
    }

    #[test]
    fn duplicated_property_is_a_protocol_error() {
        let bytes = connect_v5_with(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]);
        let expected = DecodeError::DuplicateProperty { id: 0x11 };
        assert_refused(&bytes, V5, expected, ReasonCode::PROTOCOL_ERROR);
        let bytes = publish_v5_with(&[0x23, 0, 1, 0x23, 0, 1]);
        let expected = DecodeError::DuplicateProperty { id: 0x23 };
        assert_refused(&bytes, V5, expected, ReasonCode::PROTOCOL_ERROR);
    }

    #[test]
    fn property_not_allowed_in_the_packet_is_malformed() {
        let cases: Vec<(Vec<u8>, DecodeError)> = vec![
            (connect_v5_with(&[0x23, 0, 1]), DecodeError::PropertyNotAllowed { id: 0x23, packet: "CONNECT" }),
            (
                publish_v5_with(&[0x11, 0, 0, 0, 1]),
                DecodeError::PropertyNotAllowed { id: 0x11, packet: "PUBLISH" },
            ),
            (connack_v5_with(&[0x17, 1]), DecodeError::PropertyNotAllowed { id: 0x17, packet: "CONNACK" }),
            (
                frame(0x40, &[0, 1, 0, 2, 0x11, 0]),
                DecodeError::PropertyNotAllowed { id: 0x11, packet: "PUBACK" },
            ),
            (
                frame(0xE0, &[0, 2, 0x21, 0]),
                DecodeError::PropertyNotAllowed { id: 0x21, packet: "DISCONNECT" },
            ),
            (frame(0xF0, &[0x18, 2, 0x11, 0]), DecodeError::PropertyNotAllowed { id: 0x11, packet: "AUTH" }),
            (
                subscribe_v5_with(&[0x1F, 0, 0]),
                DecodeError::PropertyNotAllowed { id: 0x1F, packet: "SUBSCRIBE" },
            ),
        ];
        for (bytes, expected) in cases {
            assert_refused(&bytes, V5, expected, ReasonCode::MALFORMED_PACKET);
        }
    }

    #[test]
    fn unknown_property_identifier_is_malformed() {
        let expected = DecodeError::UnknownProperty { id: 0x7F };
        assert_refused(&publish_v5_with(&[0x7F, 0]), V5, expected, ReasonCode::MALFORMED_PACKET);
        let expected = DecodeError::UnknownProperty { id: 0x04 };
        assert_refused(&publish_v5_with(&[0x04, 0]), V5, expected, ReasonCode::MALFORMED_PACKET);
    }

    #[test]
    fn property_length_longer_than_four_bytes_is_malformed() {
        let bytes = frame(0x30, &[0, 1, b't', 0x80, 0x80, 0x80, 0x80, 0x01]);
        assert_refused(&bytes, V5, DecodeError::VarIntTooLong, ReasonCode::MALFORMED_PACKET);
    }

    #[test]
    fn zero_values_that_the_spec_forbids_are_protocol_errors() {
        let cases = [
            (connect_v5_with(&[0x21, 0, 0]), 0x21),       // Receive Maximum 0
            (connect_v5_with(&[0x27, 0, 0, 0, 0]), 0x27), // Maximum Packet Size 0
            (connack_v5_with(&[0x21, 0, 0]), 0x21),
            (subscribe_v5_with(&[0x0B, 0]), 0x0B), // Subscription Identifier 0
            (publish_v5_with(&[0x0B, 0]), 0x0B),
        ];
        for (bytes, id) in cases {
            let expected = DecodeError::InvalidPropertyValue { id, value: 0 };
            assert_refused(&bytes, V5, expected, ReasonCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn topic_alias_0_is_topic_alias_invalid() {
        let err = decode_err(&publish_v5_with(&[0x23, 0, 0]), V5);
        assert_eq!(err, DecodeError::TopicAliasZero);
        assert_eq!(err.reason_code(), ReasonCode::TOPIC_ALIAS_INVALID);
        assert!(err.is_protocol_error());
    }

    #[test]
    fn flag_properties_other_than_0_or_1_are_protocol_errors() {
        let cases = [
            (publish_v5_with(&[0x01, 2]), 0x01, 2),
            (connect_v5_with(&[0x17, 2]), 0x17, 2),
            (connect_v5_with(&[0x19, 7]), 0x19, 7),
            (connack_v5_with(&[0x25, 2]), 0x25, 2),
            (connack_v5_with(&[0x28, 2]), 0x28, 2),
            (connack_v5_with(&[0x29, 2]), 0x29, 2),
            (connack_v5_with(&[0x2A, 0xFF]), 0x2A, 0xFF),
            (connack_v5_with(&[0x24, 2]), 0x24, 2), // Maximum QoS 2
        ];
        for (bytes, id, value) in cases {
            let expected = DecodeError::InvalidPropertyValue { id, value };
            assert_refused(&bytes, V5, expected, ReasonCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn authentication_data_without_method_is_a_protocol_error() {
        let bytes = connect_v5_with(&[0x16, 0, 1, 9]);
        assert_refused(&bytes, V5, DecodeError::AuthDataWithoutMethod, ReasonCode::PROTOCOL_ERROR);
    }

    #[test]
    fn subscription_identifier_may_repeat_in_publish_but_not_in_subscribe() {
        let Packet::Publish(p) = decode_ok(&publish_v5_with(&[0x0B, 1, 0x0B, 0x80, 0x01]), V5) else {
            panic!("not a PUBLISH")
        };
        assert_eq!(p.properties.subscription_identifiers, vec![1, 128]);
        let expected = DecodeError::DuplicateProperty { id: 0x0B };
        assert_refused(&subscribe_v5_with(&[0x0B, 1, 0x0B, 2]), V5, expected, ReasonCode::PROTOCOL_ERROR);
    }

    #[test]
    fn v3_connection_never_parses_properties() {
        // A byte 0x00 after the topic of a 3.1.1 PUBLISH is payload, not a property length.
        let bytes = frame(0x30, &[0, 1, b't', 0x00, b'x']);
        let Packet::Publish(p) = decode_ok(&bytes, V311) else { panic!("not a PUBLISH") };
        assert_eq!(&p.payload[..], &[0x00, b'x']);
        let Packet::Publish(p) = decode_ok(&bytes, V5) else { panic!("not a PUBLISH") };
        assert_eq!(&p.payload[..], b"x");
    }

    #[test]
    fn invalid_utf8_in_any_string_is_malformed() {
        let cases = [
            frame(0x30, &[0, 2, 0xC3, 0x28]),           // topic
            frame(0x30, &[0, 3, 0xED, 0xA0, 0x80]),     // topic: an encoded surrogate U+D800
            frame(0xA2, &[0, 1, 0, 0, 1, 0xFF]),        // unsubscribe filter
            connect_v5_with(&[0x26, 0, 1, 0xFE, 0, 0]), // user property name
            publish_v5_with(&[0x03, 0, 2, 0xC0, 0x80]), // content type: overlong NUL
        ];
        for bytes in cases {
            let err = decode_err(&bytes, V5);
            assert!(matches!(err, DecodeError::InvalidUtf8(_)), "{err:?} for {bytes:02X?}");
            assert_eq!(err.reason_code(), ReasonCode::MALFORMED_PACKET);
        }
    }

    #[test]
    fn null_character_in_any_string_is_malformed() {
        let cases = [
            frame(0x30, &[0, 3, b'a', 0, b'b']),
            connect_v5_with(&[0x15, 0, 1, 0]),
            frame(0x82, &[0, 1, 0, 0, 1, 0, 0]),
        ];
        for bytes in cases {
            assert_refused(&bytes, V5, DecodeError::NullCharacter, ReasonCode::MALFORMED_PACKET);
        }
    }

    #[test]
    fn packet_identifier_0_is_a_protocol_error() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x32, 0x05, 0, 1, b't', 0, 0], "PUBLISH"),
            (&[0x40, 0x02, 0, 0], "PUBACK"),
            (&[0x62, 0x02, 0, 0], "PUBREL"),
            (&[0x82, 0x06, 0, 0, 0, 1, b'a', 0], "SUBSCRIBE"),
            (&[0x90, 0x03, 0, 0, 0], "SUBACK"),
            (&[0xB0, 0x02, 0, 0], "UNSUBACK"),
        ];
        for &(bytes, packet) in cases {
            let expected = DecodeError::ZeroPacketId { packet };
            assert_refused(bytes, V311, expected, ReasonCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn publish_with_empty_topic_is_returned_for_the_session_to_judge() {
        let Packet::Publish(p) = decode_ok(&frame(0x30, &[0, 0, 0, b'x']), V5) else {
            panic!("not a PUBLISH")
        };
        assert_eq!((&*p.topic, p.properties.topic_alias), ("", None));
        let Packet::Publish(p) = decode_ok(&frame(0x30, &[0, 0, 3, 0x23, 0, 7, b'x']), V5) else {
            panic!("not a PUBLISH")
        };
        assert_eq!((&*p.topic, p.properties.topic_alias), ("", Some(7)));
    }

    #[test]
    fn publish_payload_shares_the_frame_memory() {
        let mut buf = BytesMut::from(&frame(0x30, &[0, 1, b't', 1, 2, 3])[..]);
        let start = buf.as_ptr() as usize;
        let Some(Packet::Publish(p)) = decode(&mut buf, V311, MAX).unwrap() else { panic!("not a PUBLISH") };
        assert_eq!(p.payload.as_ptr() as usize, start + 5, "payload points into the input buffer");
    }

    #[test]
    fn subscribe_without_filters_is_a_protocol_error() {
        let expected = DecodeError::NoTopicFilters { packet: "SUBSCRIBE" };
        assert_refused(&[0x82, 0x02, 0, 1], V311, expected.clone(), ReasonCode::PROTOCOL_ERROR);
        assert_refused(&[0x82, 0x03, 0, 1, 0], V5, expected, ReasonCode::PROTOCOL_ERROR);
    }

    #[test]
    fn unsubscribe_without_filters_is_a_protocol_error() {
        let expected = DecodeError::NoTopicFilters { packet: "UNSUBSCRIBE" };
        assert_refused(&[0xA2, 0x02, 0, 1], V311, expected.clone(), ReasonCode::PROTOCOL_ERROR);
        assert_refused(&[0xA2, 0x03, 0, 1, 0], V5, expected, ReasonCode::PROTOCOL_ERROR);
    }

    #[test]
    fn v311_subscription_options_allow_only_qos_bits() {
        for options in [0x04, 0x40, 0x80] {
            let bytes = frame(0x82, &[0, 1, 0, 1, b'a', options]);
            let expected = DecodeError::SubscriptionOptionsReserved { options };
            assert_refused(&bytes, V311, expected, ReasonCode::MALFORMED_PACKET);
        }
        let bytes = frame(0x82, &[0, 1, 0, 1, b'a', 3]);
        let expected = DecodeError::InvalidQoS { packet: "SUBSCRIBE" };
        assert_refused(&bytes, V311, expected, ReasonCode::MALFORMED_PACKET);
    }

    #[test]
    fn v5_subscription_options_reserved_bits_are_malformed() {
        for options in [0x40, 0x80] {
            let bytes = frame(0x82, &[0, 1, 0, 0, 1, b'a', options]);
            let expected = DecodeError::SubscriptionOptionsReserved { options };
            assert_refused(&bytes, V5, expected, ReasonCode::MALFORMED_PACKET);
        }
    }

    #[test]
    fn v5_subscription_with_qos_3_or_retain_handling_3_is_a_protocol_error() {
        let bytes = frame(0x82, &[0, 1, 0, 0, 1, b'a', 0x03]);
        assert_refused(&bytes, V5, DecodeError::SubscriptionQoS3, ReasonCode::PROTOCOL_ERROR);
        let bytes = frame(0x82, &[0, 1, 0, 0, 1, b'a', 0x30]);
        assert_refused(&bytes, V5, DecodeError::RetainHandling3, ReasonCode::PROTOCOL_ERROR);
    }

    #[test]
    fn v5_subscription_options_decode_every_field() {
        let bytes = frame(0x82, &[0, 1, 0, 0, 1, b'a', 0x2E, 0, 1, b'b', 0x11]);
        let Packet::Subscribe(s) = decode_ok(&bytes, V5) else { panic!("not a SUBSCRIBE") };
        let expected = SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        };
        assert_eq!(s.filters[0].1, expected);
        let expected = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            retain_handling: RetainHandling::SendIfNew,
            ..Default::default()
        };
        assert_eq!(s.filters[1].1, expected);
    }

    #[test]
    fn suback_return_codes_are_checked_per_version() {
        let bytes = frame(0x90, &[0, 1, 0, 1, 2, 0x80]);
        let Packet::SubAck(s) = decode_ok(&bytes, V311) else { panic!("not a SUBACK") };
        assert_eq!(s.reason_codes, [0, 1, 2, 0x80].map(ReasonCode));
        let expected = DecodeError::InvalidReasonCode { packet: "SUBACK", code: 0x03 };
        assert_refused(&frame(0x90, &[0, 1, 3]), V311, expected, ReasonCode::MALFORMED_PACKET);
        let expected = DecodeError::InvalidReasonCode { packet: "SUBACK", code: 0x8F };
        assert_refused(&frame(0x90, &[0, 1, 0x8F]), V311, expected, ReasonCode::MALFORMED_PACKET);

        let Packet::SubAck(s) = decode_ok(&frame(0x90, &[0, 1, 0, 0x8F, 0xA2]), V5) else {
            panic!("not a SUBACK")
        };
        assert_eq!(s.reason_codes, [0x8F, 0xA2].map(ReasonCode));
        let expected = DecodeError::InvalidReasonCode { packet: "SUBACK", code: 0x10 };
        assert_refused(&frame(0x90, &[0, 1, 0, 0x10]), V5, expected, ReasonCode::MALFORMED_PACKET);
    }

    #[test]
    fn a_suback_or_v5_unsuback_without_reason_codes_is_a_protocol_error() {
        // Found by the `codec_diff` fuzz target: a 3.1.1 SUBACK of packet id 1 and nothing else.
        let expected = DecodeError::NoReasonCodes { packet: "SUBACK" };
        assert_refused(&[0x90, 0x02, 0x00, 0x01], V311, expected.clone(), ReasonCode::PROTOCOL_ERROR);
        assert_refused(&[0x90, 0x03, 0x00, 0x01, 0x00], V5, expected, ReasonCode::PROTOCOL_ERROR);
        let expected = DecodeError::NoReasonCodes { packet: "UNSUBACK" };
        assert_refused(&[0xB0, 0x03, 0x00, 0x01, 0x00], V5, expected, ReasonCode::PROTOCOL_ERROR);
    }

    #[test]
    fn unsuback_carries_codes_in_v5_only() {
        let Packet::UnsubAck(u) = decode_ok(&[0xB0, 0x02, 0, 7], V311) else { panic!("not an UNSUBACK") };
        assert!(u.reason_codes.is_empty());
        let Packet::UnsubAck(u) = decode_ok(&frame(0xB0, &[0, 7, 0, 0x11, 0x00]), V5) else {
            panic!("not an UNSUBACK")
        };
        assert_eq!(u.reason_codes, [ReasonCode::NO_SUBSCRIPTION_EXISTED, ReasonCode::SUCCESS]);
        let expected = DecodeError::InvalidReasonCode { packet: "UNSUBACK", code: 0x01 };
        assert_refused(&frame(0xB0, &[0, 7, 0, 0x01]), V5, expected, ReasonCode::MALFORMED_PACKET);
    }

    #[test]
    fn v5_acks_have_short_forms() {
        let id = PacketId::new(10).unwrap();
        assert_eq!(decode_ok(&[0x40, 0x02, 0, 10], V5), Packet::PubAck(Ack::new(id)));
        let Packet::PubRec(a) = decode_ok(&[0x50, 0x03, 0, 10, 0x10], V5) else { panic!("not a PUBREC") };
        assert_eq!((a.reason_code, a.properties.reason_string), (ReasonCode::NO_MATCHING_SUBSCRIBERS, None));
        let Packet::PubComp(a) = decode_ok(&[0x70, 0x04, 0, 10, 0x92, 0], V5) else {
            panic!("not a PUBCOMP")
        };
        assert_eq!(a.reason_code, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
        let Packet::PubRel(a) = decode_ok(&frame(0x62, &[0, 10, 0, 4, 0x1F, 0, 1, b'r']), V5) else {
            panic!("not a PUBREL")
        };
        assert_eq!(a.properties.reason_string.as_deref(), Some("r"));
    }

    #[test]
    fn ack_reason_codes_not_allowed_for_the_packet_are_malformed() {
        let cases: &[(&[u8], &str, u8)] = &[
            (&[0x40, 0x03, 0, 1, 0x05], "PUBACK", 0x05),
            (&[0x50, 0x03, 0, 1, 0x92], "PUBREC", 0x92),
            (&[0x62, 0x03, 0, 1, 0x10], "PUBREL", 0x10),
            (&[0x70, 0x03, 0, 1, 0x80], "PUBCOMP", 0x80),
            (&[0xE0, 0x01, 0x05], "DISCONNECT", 0x05),
            (&[0xF0, 0x01, 0x01], "AUTH", 0x01),
            (&[0x20, 0x03, 0, 0x01, 0], "CONNACK", 0x01),
        ];
        for &(bytes, packet, code) in cases {
            let expected = DecodeError::InvalidReasonCode { packet, code };
            assert_refused(bytes, V5, expected, ReasonCode::MALFORMED_PACKET);
        }
    }

    #[test]
    fn v311_acks_ignore_v5_fields() {
        let id = PacketId::new(1).unwrap();
        for first in [0x40, 0x50, 0x62, 0x70] {
            let packet = decode_ok(&[first, 0x02, 0, 1], V311);
            let ack = match packet {
                Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => a,
                other => panic!("not an ack: {other:?}"),
            };
            assert_eq!(ack, Ack::new(id));
        }
    }

    #[test]
    fn disconnect_forms_per_version() {
        assert_eq!(decode_ok(&[0xE0, 0x00], V311), Packet::Disconnect(Disconnect::default()));
        assert_eq!(decode_ok(&[0xE0, 0x00], V5), Packet::Disconnect(Disconnect::default()));
        let Packet::Disconnect(d) = decode_ok(&[0xE0, 0x01, 0x04], V5) else { panic!("not a DISCONNECT") };
        assert_eq!(d.reason_code, ReasonCode::DISCONNECT_WITH_WILL);
        let Packet::Disconnect(d) = decode_ok(&frame(0xE0, &[0x8E, 5, 0x11, 0, 0, 0, 9]), V5) else {
            panic!("not a DISCONNECT")
        };
        assert_eq!(
            (d.reason_code, d.properties.session_expiry_interval),
            (ReasonCode::SESSION_TAKEN_OVER, Some(9))
        );
    }

    #[test]
    fn auth_with_remaining_length_0_is_success_without_properties() {
        assert_eq!(decode_ok(&[0xF0, 0x00], V5), Packet::Auth(Auth::default()));
        let Packet::Auth(a) = decode_ok(&frame(0xF0, &[0x18, 4, 0x15, 0, 1, b'm']), V5) else {
            panic!("not an AUTH")
        };
        assert_eq!(a.reason_code, ReasonCode::CONTINUE_AUTHENTICATION);
        assert_eq!(a.properties.authentication_method.as_deref(), Some("m"));
    }

    #[test]
    fn connack_reserved_flags_are_malformed() {
        let expected = DecodeError::ConnAckReservedFlags { flags: 0x02 };
        assert_refused(&[0x20, 0x02, 0x02, 0x00], V311, expected, ReasonCode::MALFORMED_PACKET);
    }

    #[test]
    fn mqtt_31_connack_has_no_session_present_flag() {
        let Packet::ConnAck(c) = decode_ok(&[0x20, 0x02, 0x01, 0x00], ProtocolVersion::V31) else {
            panic!("not a CONNACK")
        };
        assert!(!c.session_present);
    }

    #[test]
    fn v311_connack_return_codes_map_to_reason_codes() {
        let Packet::ConnAck(c) = decode_ok(&[0x20, 0x02, 0x01, 0x00], V311) else { panic!("not a CONNACK") };
        assert!(c.session_present);
        assert_eq!(c.reason_code, ReasonCode::SUCCESS);
        let Packet::ConnAck(c) = decode_ok(&[0x20, 0x02, 0x00, 0x05], V311) else { panic!("not a CONNACK") };
        assert_eq!(c.reason_code, ReasonCode::NOT_AUTHORIZED);
        let expected = DecodeError::InvalidReasonCode { packet: "CONNACK", code: 6 };
        assert_refused(&[0x20, 0x02, 0x00, 0x06], V311, expected, ReasonCode::MALFORMED_PACKET);
    }

    #[test]
    fn v5_connack_properties_are_parsed_into_the_struct() {
        let props = [
            0x24, 1, 0x25, 0, 0x12, 0, 1, b'a', 0x13, 0, 30, 0x1A, 0, 1, b'i', 0x1C, 0, 1, b's', 0x28, 1,
            0x29, 0, 0x2A, 1, 0x22, 0, 9, 0x1F, 0, 1, b'r',
        ];
        let Packet::ConnAck(c) = decode_ok(&connack_v5_with(&props), V5) else { panic!("not a CONNACK") };
        let p = c.properties;
        assert_eq!(p.maximum_qos, Some(QoS::AtLeastOnce));
        assert_eq!(p.retain_available, Some(false));
        assert_eq!(p.assigned_client_identifier.as_deref(), Some("a"));
        assert_eq!(p.server_keep_alive, Some(30));
        assert_eq!(p.response_information.as_deref(), Some("i"));
        assert_eq!(p.server_reference.as_deref(), Some("s"));
        assert_eq!(p.wildcard_subscription_available, Some(true));
        assert_eq!(p.subscription_identifiers_available, Some(false));
        assert_eq!(p.shared_subscription_available, Some(true));
        assert_eq!(p.topic_alias_maximum, Some(9));
        assert_eq!(p.reason_string.as_deref(), Some("r"));
    }

    #[test]
    fn every_error_maps_to_a_failure_reason_code() {
        let errors = [
            DecodeError::PacketTooLarge { len: 10, max: 5 },
            DecodeError::UnsupportedProtocolVersion { level: 9 },
            DecodeError::BadProtocolName { name: "x".into() },
            DecodeError::VarIntTooLong,
            DecodeError::TopicAliasZero,
            DecodeError::DuplicateProperty { id: 1 },
        ];
        for err in errors {
            assert!(err.reason_code().is_error(), "{err}");
            assert!(!err.to_string().is_empty());
        }
        assert!(!DecodeError::PacketTooLarge { len: 10, max: 5 }.is_protocol_error());
        assert!(!DecodeError::PacketTooLarge { len: 10, max: 5 }.is_malformed());
        assert!(DecodeError::VarIntTooLong.is_malformed());
        assert!(DecodeError::NoTopicFilters { packet: "SUBSCRIBE" }.is_protocol_error());
    }
}
