//! The packet model: every MQTT 3.1.1 and 5.0 control packet in one set of types.
//!
//! Fields that exist only in MQTT 5.0 (properties, reason codes on acknowledgements) are simply left at
//! their defaults for 3.1.1, and are not encoded for a 3.1.1 peer. Strings are validated UTF-8 (MQTT 5.0
//! §1.5.4: no U+0000, no surrogates); the codec does not know topic wildcard rules, which `m2m-topic`
//! checks one layer up.

use std::sync::Arc;

use bytes::Bytes;

use crate::ReasonCode;

/// The protocol level from CONNECT (MQTT 5.0 §3.1.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1 (protocol name `MQIsdp`, level 3).
    V31,
    /// MQTT 3.1.1 (level 4).
    V311,
    /// MQTT 5.0 (level 5).
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte.
    pub fn level(self) -> u8 {
        match self {
            Self::V31 => 3,
            Self::V311 => 4,
            Self::V5 => 5,
        }
    }

    /// Whether this version carries properties and reason codes.
    pub fn is_v5(self) -> bool {
        self == Self::V5
    }
}

/// Quality of service of a PUBLISH or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for the two-bit value on the wire, `None` for 3 (a malformed packet).
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// A user property: a name/value pair; order and duplicates are kept (MQTT 5.0 §3.3.2.3.7).
pub type UserProperty = (Arc<str>, Arc<str>);

/// Any MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (1).
    Connect(Box<Connect>),
    /// CONNACK (2).
    ConnAck(ConnAck),
    /// PUBLISH (3).
    Publish(Publish),
    /// PUBACK (4).
    PubAck(Ack),
    /// PUBREC (5).
    PubRec(Ack),
    /// PUBREL (6).
    PubRel(Ack),
    /// PUBCOMP (7).
    PubComp(Ack),
    /// SUBSCRIBE (8).
    Subscribe(Subscribe),
    /// SUBACK (9).
    SubAck(SubAck),
    /// UNSUBSCRIBE (10).
    Unsubscribe(Unsubscribe),
    /// UNSUBACK (11).
    UnsubAck(UnsubAck),
    /// PINGREQ (12).
    PingReq,
    /// PINGRESP (13).
    PingResp,
    /// DISCONNECT (14).
    Disconnect(Disconnect),
    /// AUTH (15), MQTT 5.0 only.
    Auth(Auth),
}

impl Packet {
    /// The packet's name as the specification writes it, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// CONNECT (MQTT 5.0 §3.1, 3.1.1 §3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol version requested by the client.
    pub protocol: ProtocolVersion,
    /// Clean Start (v5) / Clean Session (v3.1.1).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// Client identifier; may be empty.
    pub client_id: Arc<str>,
    /// The will message, if the will flag is set.
    pub will: Option<Will>,
    /// User name, if the flag is set.
    pub username: Option<Arc<str>>,
    /// Password, if the flag is set (binary data).
    pub password: Option<Bytes>,
    /// CONNECT properties (v5 only).
    pub properties: ConnectProperties,
}

/// CONNECT properties (MQTT 5.0 §3.1.2.11).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectProperties {
    /// Session Expiry Interval (0x11), seconds.
    pub session_expiry_interval: Option<u32>,
    /// Receive Maximum (0x21); 0 is a protocol error.
    pub receive_maximum: Option<u16>,
    /// Maximum Packet Size (0x27); 0 is a protocol error.
    pub maximum_packet_size: Option<u32>,
    /// Topic Alias Maximum (0x22).
    pub topic_alias_maximum: Option<u16>,
    /// Request Response Information (0x19), 0 or 1.
    pub request_response_information: Option<bool>,
    /// Request Problem Information (0x17), 0 or 1.
    pub request_problem_information: Option<bool>,
    /// User Property (0x26).
    pub user_properties: Vec<UserProperty>,
    /// Authentication Method (0x15).
    pub authentication_method: Option<Arc<str>>,
    /// Authentication Data (0x16).
    pub authentication_data: Option<Bytes>,
}

/// The will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Will topic (a topic name; wildcards are checked by the caller).
    pub topic: Arc<str>,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will retain.
    pub retain: bool,
    /// Will properties (v5 only).
    pub properties: WillProperties,
}

/// Will properties (MQTT 5.0 §3.1.3.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WillProperties {
    /// Will Delay Interval (0x18), seconds.
    pub will_delay_interval: Option<u32>,
    /// Payload Format Indicator (0x01): `true` means UTF-8.
    pub payload_format_indicator: Option<bool>,
    /// Message Expiry Interval (0x02), seconds.
    pub message_expiry_interval: Option<u32>,
    /// Content Type (0x03).
    pub content_type: Option<Arc<str>>,
    /// Response Topic (0x08).
    pub response_topic: Option<Arc<str>>,
    /// Correlation Data (0x09).
    pub correlation_data: Option<Bytes>,
    /// User Property (0x26).
    pub user_properties: Vec<UserProperty>,
}

/// CONNACK (MQTT 5.0 §3.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    /// Session Present flag.
    pub session_present: bool,
    /// Reason code. For 3.1.1 peers the encoder maps it to the 3.1.1 return code
    /// (see [`ReasonCode::to_v311_connack`]).
    pub reason_code: ReasonCode,
    /// CONNACK properties (v5 only).
    pub properties: ConnAckProperties,
}

/// CONNACK properties (MQTT 5.0 §3.2.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAckProperties {
    /// Session Expiry Interval (0x11).
    pub session_expiry_interval: Option<u32>,
    /// Receive Maximum (0x21).
    pub receive_maximum: Option<u16>,
    /// Maximum QoS (0x24): 0 or 1 only.
    pub maximum_qos: Option<QoS>,
    /// Retain Available (0x25).
    pub retain_available: Option<bool>,
    /// Maximum Packet Size (0x27).
    pub maximum_packet_size: Option<u32>,
    /// Assigned Client Identifier (0x12).
    pub assigned_client_identifier: Option<Arc<str>>,
    /// Topic Alias Maximum (0x22).
    pub topic_alias_maximum: Option<u16>,
    /// Reason String (0x1F).
    pub reason_string: Option<Arc<str>>,
    /// User Property (0x26).
    pub user_properties: Vec<UserProperty>,
    /// Wildcard Subscription Available (0x28).
    pub wildcard_subscription_available: Option<bool>,
    /// Subscription Identifiers Available (0x29).
    pub subscription_identifiers_available: Option<bool>,
    /// Shared Subscription Available (0x2A).
    pub shared_subscription_available: Option<bool>,
    /// Server Keep Alive (0x13).
    pub server_keep_alive: Option<u16>,
    /// Response Information (0x1A).
    pub response_information: Option<Arc<str>>,
    /// Server Reference (0x1C).
    pub server_reference: Option<Arc<str>>,
    /// Authentication Method (0x15).
    pub authentication_method: Option<Arc<str>>,
    /// Authentication Data (0x16).
    pub authentication_data: Option<Bytes>,
}

/// PUBLISH (MQTT 5.0 §3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag.
    pub dup: bool,
    /// QoS level.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name; may be empty in v5 when a topic alias is set.
    pub topic: Arc<str>,
    /// Packet identifier; `Some` exactly when `qos > 0`.
    pub packet_id: Option<PacketId>,
    /// PUBLISH properties (v5 only).
    pub properties: PublishProperties,
    /// Application payload, shared without copying.
    pub payload: Bytes,
}

/// PUBLISH properties (MQTT 5.0 §3.3.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishProperties {
    /// Payload Format Indicator (0x01): `true` means UTF-8.
    pub payload_format_indicator: Option<bool>,
    /// Message Expiry Interval (0x02), seconds.
    pub message_expiry_interval: Option<u32>,
    /// Topic Alias (0x23); 0 is a protocol error.
    pub topic_alias: Option<u16>,
    /// Response Topic (0x08).
    pub response_topic: Option<Arc<str>>,
    /// Correlation Data (0x09).
    pub correlation_data: Option<Bytes>,
    /// User Property (0x26), order kept.
    pub user_properties: Vec<UserProperty>,
    /// Subscription Identifier (0x0B), may repeat (server to client only); 0 is a protocol error.
    pub subscription_identifiers: Vec<u32>,
    /// Content Type (0x03).
    pub content_type: Option<Arc<str>>,
}

/// A packet identifier: never 0 (MQTT 5.0 §2.2.1).
pub type PacketId = std::num::NonZeroU16;

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape (MQTT 5.0 §3.4–3.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Packet identifier being acknowledged.
    pub packet_id: PacketId,
    /// Reason code (v5); `Success` for 3.1.1. Encoded only when not `Success` or when properties exist.
    pub reason_code: ReasonCode,
    /// Reason string and user properties (v5 only).
    pub properties: AckProperties,
}

impl Ack {
    /// A successful acknowledgement without properties.
    pub fn new(packet_id: PacketId) -> Self {
        Self { packet_id, reason_code: ReasonCode::SUCCESS, properties: AckProperties::default() }
    }
}

/// Properties of acknowledgements: PUBACK/PUBREC/PUBREL/PUBCOMP/SUBACK/UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckProperties {
    /// Reason String (0x1F).
    pub reason_string: Option<Arc<str>>,
    /// User Property (0x26).
    pub user_properties: Vec<UserProperty>,
}

/// Retain handling option of a subscription (MQTT 5.0 §3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send retained messages only if the subscription does not already exist.
    SendIfNew = 1,
    /// 2: do not send retained messages.
    DoNotSend = 2,
}

/// Subscription options byte (MQTT 5.0 §3.8.3.1); for 3.1.1 only `qos` is meaningful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// No Local.
    pub no_local: bool,
    /// Retain As Published.
    pub retain_as_published: bool,
    /// Retain Handling.
    pub retain_handling: RetainHandling,
}

/// SUBSCRIBE (MQTT 5.0 §3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// Subscription Identifier (0x0B), 1..=268_435_455.
    pub subscription_identifier: Option<u32>,
    /// User Property (0x26).
    pub user_properties: Vec<UserProperty>,
    /// Topic filters (unvalidated wildcards) with their options; never empty.
    pub filters: Vec<(Arc<str>, SubscriptionOptions)>,
}

/// SUBACK (MQTT 5.0 §3.9). For 3.1.1 the encoder writes granted QoS or 0x80.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// Reason string and user properties (v5 only).
    pub properties: AckProperties,
    /// One reason code per filter.
    pub reason_codes: Vec<ReasonCode>,
}

/// UNSUBSCRIBE (MQTT 5.0 §3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// User Property (0x26).
    pub user_properties: Vec<UserProperty>,
    /// Topic filters; never empty.
    pub filters: Vec<Arc<str>>,
}

/// UNSUBACK (MQTT 5.0 §3.11). 3.1.1 has no payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// Reason string and user properties (v5 only).
    pub properties: AckProperties,
    /// One reason code per filter (v5 only; empty for 3.1.1).
    pub reason_codes: Vec<ReasonCode>,
}

/// DISCONNECT (MQTT 5.0 §3.14). 3.1.1 has no variable header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// Reason code (v5).
    pub reason_code: ReasonCode,
    /// DISCONNECT properties (v5).
    pub properties: DisconnectProperties,
}

/// DISCONNECT properties (MQTT 5.0 §3.14.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DisconnectProperties {
    /// Session Expiry Interval (0x11).
    pub session_expiry_interval: Option<u32>,
    /// Reason String (0x1F).
    pub reason_string: Option<Arc<str>>,
    /// User Property (0x26).
    pub user_properties: Vec<UserProperty>,
    /// Server Reference (0x1C).
    pub server_reference: Option<Arc<str>>,
}

/// AUTH (MQTT 5.0 §3.15).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// Reason code: Success (0x00), Continue authentication (0x18) or Re-authenticate (0x19).
    pub reason_code: ReasonCode,
    /// AUTH properties.
    pub properties: AuthProperties,
}

/// AUTH properties (MQTT 5.0 §3.15.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthProperties {
    /// Authentication Method (0x15).
    pub authentication_method: Option<Arc<str>>,
    /// Authentication Data (0x16).
    pub authentication_data: Option<Bytes>,
    /// Reason String (0x1F).
    pub reason_string: Option<Arc<str>>,
    /// User Property (0x26).
    pub user_properties: Vec<UserProperty>,
}
