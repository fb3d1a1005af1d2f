//! Errors of the wire format: what went wrong while decoding or encoding one packet.
//!
//! [`DecodeError::reason_code`] is the one place where a decoding failure is mapped to the MQTT reason
//! code the broker answers with (MQTT 5.0 §4.13: 0x81 Malformed Packet, 0x82 Protocol Error, ...).

use std::str::Utf8Error;

use crate::{ProtocolVersion, ReasonCode};

/// Why a packet could not be decoded. Every variant ends the connection; [`DecodeError::reason_code`]
/// says with which reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The whole packet (fixed header included) is larger than the allowed maximum. Detected from the
    /// fixed header alone, before the body is buffered.
    #[error("packet of {len} bytes exceeds the {max}-byte limit")]
    PacketTooLarge {
        /// Size of the whole packet in bytes, fixed header included.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// CONNECT names a protocol level this codec does not speak (MQTT 5.0 §3.1.2.2).
    #[error("unsupported protocol level {level}")]
    UnsupportedProtocolVersion {
        /// The protocol level byte received.
        level: u8,
    },
    /// CONNECT names a protocol other than `MQTT` or `MQIsdp` (MQTT 5.0 §3.1.2.1).
    #[error("unknown protocol name {name:?}")]
    BadProtocolName {
        /// The protocol name received.
        name: String,
    },
    /// The packet type nibble is 0 (reserved) or names a packet that does not exist in this protocol
    /// version (AUTH before MQTT 5.0).
    #[error("unknown packet type {packet_type}")]
    UnknownPacketType {
        /// The packet type nibble.
        packet_type: u8,
    },
    /// The flag bits of the fixed header differ from the ones the specification fixes (MQTT 5.0 §2.1.3).
    #[error("invalid fixed header flags {flags:#06b} for {packet}")]
    InvalidHeaderFlags {
        /// The packet whose header was wrong.
        packet: &'static str,
        /// The four flag bits received.
        flags: u8,
    },
    /// A variable byte integer (remaining length, property length, ...) continues past its fourth byte.
    #[error("variable byte integer longer than four bytes")]
    VarIntTooLong,
    /// The packet ended before a field that must be there.
    #[error("{packet} ends before its last field")]
    Truncated {
        /// The packet being decoded.
        packet: &'static str,
    },
    /// Bytes were left over after the last field of the packet.
    #[error("{extra} unexpected bytes at the end of {packet}")]
    TrailingBytes {
        /// The packet being decoded.
        packet: &'static str,
        /// How many bytes were left over.
        extra: usize,
    },
    /// A UTF-8 encoded string is not valid UTF-8 (MQTT 5.0 §1.5.4).
    #[error("string is not valid UTF-8")]
    InvalidUtf8(#[source] Utf8Error),
    /// A UTF-8 encoded string contains the null character U+0000 (MQTT 5.0 §1.5.4).
    #[error("string contains the null character")]
    NullCharacter,
    /// A QoS field holds the value 3: in PUBLISH, in the will flags, or in a 3.1.1 subscription.
    #[error("qos 3 in {packet}")]
    InvalidQoS {
        /// The packet carrying the QoS.
        packet: &'static str,
    },
    /// A QoS 0 PUBLISH has the DUP flag set (MQTT 5.0 §3.3.1.1).
    #[error("dup flag set on a qos 0 publish")]
    DupOnQoS0,
    /// A packet identifier is 0 (MQTT 5.0 §2.2.1).
    #[error("packet identifier 0 in {packet}")]
    ZeroPacketId {
        /// The packet carrying the identifier.
        packet: &'static str,
    },
    /// The reserved bit 0 of the CONNECT flags is set (MQTT 5.0 §3.1.2.3).
    #[error("reserved connect flag is set")]
    ConnectReservedFlag,
    /// Will QoS or Will Retain is set while the Will Flag is not (MQTT 5.0 §3.1.2.6–7).
    #[error("will qos or will retain set without the will flag")]
    WillFlagsWithoutWill,
    /// A 3.1.x CONNECT has the password flag without the user name flag (MQTT 3.1.1 §3.1.2.9).
    #[error("password without a user name")]
    PasswordWithoutUsername,
    /// CONNECT carries Authentication Data without an Authentication Method (MQTT 5.0 §3.1.2.11.10).
    #[error("authentication data without an authentication method")]
    AuthDataWithoutMethod,
    /// The reserved bits of the CONNACK acknowledge flags are not 0 (MQTT 5.0 §3.2.2.1).
    #[error("reserved connack flags {flags:#04x}")]
    ConnAckReservedFlags {
        /// The acknowledge flags byte received.
        flags: u8,
    },
    /// A reason code (or 3.1.1 return code) that the packet may not carry.
    #[error("invalid reason code {code:#04x} in {packet}")]
    InvalidReasonCode {
        /// The packet carrying the code.
        packet: &'static str,
        /// The code received.
        code: u8,
    },
    /// A property identifier that no version of MQTT defines.
    #[error("unknown property identifier {id:#04x}")]
    UnknownProperty {
        /// The identifier received.
        id: u32,
    },
    /// A property that this packet may not carry (MQTT 5.0 §2.2.2.2).
    #[error("property {id:#04x} is not allowed in {packet}")]
    PropertyNotAllowed {
        /// The property identifier.
        id: u8,
        /// The packet (or "will properties").
        packet: &'static str,
    },
    /// A property that may appear once appears again.
    #[error("property {id:#04x} appears more than once")]
    DuplicateProperty {
        /// The property identifier.
        id: u8,
    },
    /// A property value outside its domain: a 0/1 flag with another value, Receive Maximum 0,
    /// Maximum Packet Size 0, Maximum QoS 2, Subscription Identifier 0.
    #[error("property {id:#04x} has the invalid value {value}")]
    InvalidPropertyValue {
        /// The property identifier.
        id: u8,
        /// The value received.
        value: u32,
    },
    /// A Topic Alias property with the value 0 (MQTT 5.0 §3.3.2.3.4).
    #[error("topic alias 0")]
    TopicAliasZero,
    /// SUBSCRIBE or UNSUBSCRIBE without any topic filter (MQTT 5.0 §3.8.3, §3.10.3).
    #[error("{packet} without topic filters")]
    NoTopicFilters {
        /// The packet.
        packet: &'static str,
    },
    /// SUBACK, or an MQTT 5.0 UNSUBACK, without any reason code: it acknowledges a SUBSCRIBE or
    /// UNSUBSCRIBE, which has at least one filter and gets one code per filter (MQTT 5.0 §3.9.3,
    /// §3.11.3; 3.1.1 §3.9.3).
    #[error("{packet} without reason codes")]
    NoReasonCodes {
        /// The packet.
        packet: &'static str,
    },
    /// Reserved bits of a subscription options byte are set (MQTT 5.0 §3.8.3.1, 3.1.1 §3.8.3).
    #[error("reserved bits set in subscription options {options:#04x}")]
    SubscriptionOptionsReserved {
        /// The options byte received.
        options: u8,
    },
    /// An MQTT 5.0 subscription asks for Maximum QoS 3 (MQTT 5.0 §3.8.3.1).
    #[error("subscription with maximum qos 3")]
    SubscriptionQoS3,
    /// An MQTT 5.0 subscription has Retain Handling 3 (MQTT 5.0 §3.8.3.1).
    #[error("subscription with retain handling 3")]
    RetainHandling3,
}

impl DecodeError {
    /// The reason code to answer with (in CONNACK before the connection is accepted, in DISCONNECT
    /// after): 0x81 Malformed Packet, 0x82 Protocol Error, 0x84 Unsupported Protocol Version,
    /// 0x94 Topic Alias invalid or 0x95 Packet too large (MQTT 5.0 §4.13).
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            Self::UnsupportedProtocolVersion { .. } | Self::BadProtocolName { .. } => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            Self::TopicAliasZero => ReasonCode::TOPIC_ALIAS_INVALID,
            Self::ZeroPacketId { .. }
            | Self::PasswordWithoutUsername
            | Self::AuthDataWithoutMethod
            | Self::DuplicateProperty { .. }
            | Self::InvalidPropertyValue { .. }
            | Self::NoTopicFilters { .. }
            | Self::NoReasonCodes { .. }
            | Self::SubscriptionQoS3
            | Self::RetainHandling3 => ReasonCode::PROTOCOL_ERROR,
            Self::UnknownPacketType { .. }
            | Self::InvalidHeaderFlags { .. }
            | Self::VarIntTooLong
            | Self::Truncated { .. }
            | Self::TrailingBytes { .. }
            | Self::InvalidUtf8(_)
            | Self::NullCharacter
            | Self::InvalidQoS { .. }
            | Self::DupOnQoS0
            | Self::ConnectReservedFlag
            | Self::WillFlagsWithoutWill
            | Self::ConnAckReservedFlags { .. }
            | Self::InvalidReasonCode { .. }
            | Self::UnknownProperty { .. }
            | Self::PropertyNotAllowed { .. }
            | Self::SubscriptionOptionsReserved { .. } => ReasonCode::MALFORMED_PACKET,
        }
    }

    /// Whether the packet was well formed but broke a rule of the protocol (reason codes 0x82 and
    /// 0x94), as opposed to a malformed packet, an oversized one or an unsupported protocol.
    pub fn is_protocol_error(&self) -> bool {
        matches!(self.reason_code(), ReasonCode::PROTOCOL_ERROR | ReasonCode::TOPIC_ALIAS_INVALID)
    }

    /// Whether the packet could not be parsed at all (reason code 0x81).
    pub fn is_malformed(&self) -> bool {
        self.reason_code() == ReasonCode::MALFORMED_PACKET
    }
}

/// Why a packet could not be encoded: a value the wire format cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The remaining length would exceed 268 435 455 bytes, the largest a variable byte integer holds.
    #[error("remaining length of {len} bytes exceeds 268435455")]
    PacketTooLarge {
        /// The remaining length the packet would need.
        len: usize,
    },
    /// A string or binary field is longer than the 65 535 bytes its two-byte length prefix allows.
    #[error("field of {len} bytes exceeds the 65535-byte limit")]
    FieldTooLong {
        /// The field's length in bytes.
        len: usize,
    },
    /// A variable byte integer value (a Subscription Identifier, a property length) above 268 435 455.
    #[error("variable byte integer {value} exceeds 268435455")]
    VarIntTooLarge {
        /// The value.
        value: usize,
    },
    /// A QoS 1 or 2 PUBLISH without a packet identifier.
    #[error("qos {qos} publish without a packet identifier")]
    MissingPacketId {
        /// The QoS level of the PUBLISH.
        qos: u8,
    },
    /// The packet does not exist in the peer's protocol version (AUTH before MQTT 5.0).
    #[error("{packet} does not exist in protocol level {}", version.level())]
    UnsupportedPacket {
        /// The packet.
        packet: &'static str,
        /// The peer's protocol version.
        version: ProtocolVersion,
    },
}
