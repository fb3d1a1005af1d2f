//! MQTT 5.0 properties (§2.2.2): a variable byte integer length, then identifier/value pairs.
//!
//! ```text
//! +----------------------+---------+-----------+---------+-----------+-----
//! | property length (VBI)| id (VBI)| value     | id (VBI)| value     | ...
//! +----------------------+---------+-----------+---------+-----------+-----
//! ```
//!
//! Each packet accepts only its own properties (table in §2.2.2.2; another one is a Malformed
//! Packet). A property may appear once, except User Property and, in PUBLISH, Subscription Identifier
//! (a repeat is a Protocol Error). Values outside their domain are Protocol Errors.

use std::sync::Arc;

use bytes::Bytes;

use crate::packet::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, QoS, Subscribe, Unsubscribe, UserProperty, WillProperties,
};
use crate::wire::{Counter, Reader, Sink};
use crate::DecodeError;

const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const RESPONSE_INFORMATION: u8 = 0x1A;
const SERVER_REFERENCE: u8 = 0x1C;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
const SUBSCRIPTION_IDENTIFIERS_AVAILABLE: u8 = 0x29;
const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// Where a property list sits: each accepts its own set of properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PropCtx {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropCtx {
    fn name(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT",
            Self::Will => "will properties",
            Self::ConnAck => "CONNACK",
            Self::Publish => "PUBLISH",
            Self::PubAck => "PUBACK",
            Self::PubRec => "PUBREC",
            Self::PubRel => "PUBREL",
            Self::PubComp => "PUBCOMP",
            Self::Subscribe => "SUBSCRIBE",
            Self::SubAck => "SUBACK",
            Self::Unsubscribe => "UNSUBSCRIBE",
            Self::UnsubAck => "UNSUBACK",
            Self::Disconnect => "DISCONNECT",
            Self::Auth => "AUTH",
        }
    }

    const fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// The packets a property may appear in (MQTT 5.0 §2.2.2.2), `None` for an unknown identifier.
fn allowed_in(id: u8) -> Option<u16> {
    use PropCtx::*;
    const ACKS: u16 =
        PubAck.bit() | PubRec.bit() | PubRel.bit() | PubComp.bit() | SubAck.bit() | UnsubAck.bit();
    const ALL: u16 = u16::MAX;
    Some(match id {
        PAYLOAD_FORMAT_INDICATOR
        | MESSAGE_EXPIRY_INTERVAL
        | CONTENT_TYPE
        | RESPONSE_TOPIC
        | CORRELATION_DATA => Publish.bit() | Will.bit(),
        SUBSCRIPTION_IDENTIFIER => Publish.bit() | Subscribe.bit(),
        SESSION_EXPIRY_INTERVAL => Connect.bit() | ConnAck.bit() | Disconnect.bit(),
        ASSIGNED_CLIENT_IDENTIFIER | SERVER_KEEP_ALIVE | RESPONSE_INFORMATION => ConnAck.bit(),
        AUTHENTICATION_METHOD | AUTHENTICATION_DATA => Connect.bit() | ConnAck.bit() | Auth.bit(),
        REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => Connect.bit(),
        WILL_DELAY_INTERVAL => Will.bit(),
        SERVER_REFERENCE => ConnAck.bit() | Disconnect.bit(),
        REASON_STRING => ConnAck.bit() | ACKS | Disconnect.bit() | Auth.bit(),
        RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | MAXIMUM_PACKET_SIZE => Connect.bit() | ConnAck.bit(),
        TOPIC_ALIAS => Publish.bit(),
        MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIERS_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => ConnAck.bit(),
        USER_PROPERTY => ALL,
        _ => return None,
    })
}

/// One decoded property, its value checked against its domain.
#[derive(Debug)]
enum Prop {
    PayloadFormatIndicator(bool),
    MessageExpiryInterval(u32),
    ContentType(Arc<str>),
    ResponseTopic(Arc<str>),
    CorrelationData(Bytes),
    SubscriptionIdentifier(u32),
    SessionExpiryInterval(u32),
    AssignedClientIdentifier(Arc<str>),
    ServerKeepAlive(u16),
    AuthenticationMethod(Arc<str>),
    AuthenticationData(Bytes),
    RequestProblemInformation(bool),
    WillDelayInterval(u32),
    RequestResponseInformation(bool),
    ResponseInformation(Arc<str>),
    ServerReference(Arc<str>),
    ReasonString(Arc<str>),
    ReceiveMaximum(u16),
    TopicAliasMaximum(u16),
    TopicAlias(u16),
    MaximumQoS(QoS),
    RetainAvailable(bool),
    User(UserProperty),
    MaximumPacketSize(u32),
    WildcardSubscriptionAvailable(bool),
    SubscriptionIdentifiersAvailable(bool),
    SharedSubscriptionAvailable(bool),
}

impl Prop {
    fn id(&self) -> u8 {
        match self {
            Self::PayloadFormatIndicator(_) => PAYLOAD_FORMAT_INDICATOR,
            Self::MessageExpiryInterval(_) => MESSAGE_EXPIRY_INTERVAL,
            Self::ContentType(_) => CONTENT_TYPE,
            Self::ResponseTopic(_) => RESPONSE_TOPIC,
            Self::CorrelationData(_) => CORRELATION_DATA,
            Self::SubscriptionIdentifier(_) => SUBSCRIPTION_IDENTIFIER,
            Self::SessionExpiryInterval(_) => SESSION_EXPIRY_INTERVAL,
            Self::AssignedClientIdentifier(_) => ASSIGNED_CLIENT_IDENTIFIER,
            Self::ServerKeepAlive(_) => SERVER_KEEP_ALIVE,
            Self::AuthenticationMethod(_) => AUTHENTICATION_METHOD,
            Self::AuthenticationData(_) => AUTHENTICATION_DATA,
            Self::RequestProblemInformation(_) => REQUEST_PROBLEM_INFORMATION,
            Self::WillDelayInterval(_) => WILL_DELAY_INTERVAL,
            Self::RequestResponseInformation(_) => REQUEST_RESPONSE_INFORMATION,
            Self::ResponseInformation(_) => RESPONSE_INFORMATION,
            Self::ServerReference(_) => SERVER_REFERENCE,
            Self::ReasonString(_) => REASON_STRING,
            Self::ReceiveMaximum(_) => RECEIVE_MAXIMUM,
            Self::TopicAliasMaximum(_) => TOPIC_ALIAS_MAXIMUM,
            Self::TopicAlias(_) => TOPIC_ALIAS,
            Self::MaximumQoS(_) => MAXIMUM_QOS,
            Self::RetainAvailable(_) => RETAIN_AVAILABLE,
            Self::User(_) => USER_PROPERTY,
            Self::MaximumPacketSize(_) => MAXIMUM_PACKET_SIZE,
            Self::WildcardSubscriptionAvailable(_) => WILDCARD_SUBSCRIPTION_AVAILABLE,
            Self::SubscriptionIdentifiersAvailable(_) => SUBSCRIPTION_IDENTIFIERS_AVAILABLE,
            Self::SharedSubscriptionAvailable(_) => SHARED_SUBSCRIPTION_AVAILABLE,
        }
    }

    /// The error for a property that reached a packet that does not take it. The allowed-table check
    /// in [`read_properties`] normally catches this first.
    fn not_allowed(&self, ctx: PropCtx) -> DecodeError {
        DecodeError::PropertyNotAllowed { id: self.id(), packet: ctx.name() }
    }

    fn read(r: &mut Reader, id: u8) -> Result<Self, DecodeError> {
        Ok(match id {
            PAYLOAD_FORMAT_INDICATOR => Self::PayloadFormatIndicator(read_flag(r, id)?),
            MESSAGE_EXPIRY_INTERVAL => Self::MessageExpiryInterval(r.u32()?),
            CONTENT_TYPE => Self::ContentType(r.string()?),
            RESPONSE_TOPIC => Self::ResponseTopic(r.string()?),
            CORRELATION_DATA => Self::CorrelationData(r.binary()?),
            SUBSCRIPTION_IDENTIFIER => match r.var_int()? {
                0 => return Err(DecodeError::InvalidPropertyValue { id, value: 0 }),
                v => Self::SubscriptionIdentifier(v),
            },
            SESSION_EXPIRY_INTERVAL => Self::SessionExpiryInterval(r.u32()?),
            ASSIGNED_CLIENT_IDENTIFIER => Self::AssignedClientIdentifier(r.string()?),
            SERVER_KEEP_ALIVE => Self::ServerKeepAlive(r.u16()?),
            AUTHENTICATION_METHOD => Self::AuthenticationMethod(r.string()?),
            AUTHENTICATION_DATA => Self::AuthenticationData(r.binary()?),
            REQUEST_PROBLEM_INFORMATION => Self::RequestProblemInformation(read_flag(r, id)?),
            WILL_DELAY_INTERVAL => Self::WillDelayInterval(r.u32()?),
            REQUEST_RESPONSE_INFORMATION => Self::RequestResponseInformation(read_flag(r, id)?),
            RESPONSE_INFORMATION => Self::ResponseInformation(r.string()?),
            SERVER_REFERENCE => Self::ServerReference(r.string()?),
            REASON_STRING => Self::ReasonString(r.string()?),
            RECEIVE_MAXIMUM => match r.u16()? {
                0 => return Err(DecodeError::InvalidPropertyValue { id, value: 0 }),
                v => Self::ReceiveMaximum(v),
            },
            TOPIC_ALIAS_MAXIMUM => Self::TopicAliasMaximum(r.u16()?),
            TOPIC_ALIAS => match r.u16()? {
                0 => return Err(DecodeError::TopicAliasZero),
                v => Self::TopicAlias(v),
            },
            MAXIMUM_QOS => match r.u8()? {
                0 => Self::MaximumQoS(QoS::AtMostOnce),
                1 => Self::MaximumQoS(QoS::AtLeastOnce),
                v => return Err(DecodeError::InvalidPropertyValue { id, value: u32::from(v) }),
            },
            RETAIN_AVAILABLE => Self::RetainAvailable(read_flag(r, id)?),
            USER_PROPERTY => Self::User((r.string()?, r.string()?)),
            MAXIMUM_PACKET_SIZE => match r.u32()? {
                0 => return Err(DecodeError::InvalidPropertyValue { id, value: 0 }),
                v => Self::MaximumPacketSize(v),
            },
            WILDCARD_SUBSCRIPTION_AVAILABLE => Self::WildcardSubscriptionAvailable(read_flag(r, id)?),
            SUBSCRIPTION_IDENTIFIERS_AVAILABLE => Self::SubscriptionIdentifiersAvailable(read_flag(r, id)?),
            SHARED_SUBSCRIPTION_AVAILABLE => Self::SharedSubscriptionAvailable(read_flag(r, id)?),
            _ => return Err(DecodeError::UnknownProperty { id: u32::from(id) }),
        })
    }
}

fn read_flag(r: &mut Reader, id: u8) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(DecodeError::InvalidPropertyValue { id, value: u32::from(v) }),
    }
}

/// Reads a property list and hands each property to `apply`, after checking that `ctx` accepts it,
/// that it is not a forbidden repeat and that its value is in its domain.
fn read_properties(
    r: &mut Reader,
    ctx: PropCtx,
    mut apply: impl FnMut(Prop) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = r.var_int()?;
    let mut props = r.sub(len as usize)?;
    let mut seen = 0u64;
    while !props.is_empty() {
        let raw_id = props.var_int()?;
        let id = u8::try_from(raw_id).map_err(|_| DecodeError::UnknownProperty { id: raw_id })?;
        let allowed = allowed_in(id).ok_or(DecodeError::UnknownProperty { id: raw_id })?;
        if allowed & ctx.bit() == 0 {
            return Err(DecodeError::PropertyNotAllowed { id, packet: ctx.name() });
        }
        let repeatable = id == USER_PROPERTY || (id == SUBSCRIPTION_IDENTIFIER && ctx == PropCtx::Publish);
        // Known identifiers are all below 64 (checked by `allowed_in`), so one bit each fits.
        let bit = 1u64 << id;
        if seen & bit != 0 && !repeatable {
            return Err(DecodeError::DuplicateProperty { id });
        }
        seen |= bit;
        apply(Prop::read(&mut props, id)?)?;
    }
    Ok(())
}

pub(crate) fn read_connect(r: &mut Reader) -> Result<ConnectProperties, DecodeError> {
    let ctx = PropCtx::Connect;
    let mut p = ConnectProperties::default();
    read_properties(r, ctx, |prop| {
        match prop {
            Prop::SessionExpiryInterval(v) => p.session_expiry_interval = Some(v),
            Prop::ReceiveMaximum(v) => p.receive_maximum = Some(v),
            Prop::MaximumPacketSize(v) => p.maximum_packet_size = Some(v),
            Prop::TopicAliasMaximum(v) => p.topic_alias_maximum = Some(v),
            Prop::RequestResponseInformation(v) => p.request_response_information = Some(v),
            Prop::RequestProblemInformation(v) => p.request_problem_information = Some(v),
            Prop::User(v) => p.user_properties.push(v),
            Prop::AuthenticationMethod(v) => p.authentication_method = Some(v),
            Prop::AuthenticationData(v) => p.authentication_data = Some(v),
            other => return Err(other.not_allowed(ctx)),
        }
        Ok(())
    })?;
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::AuthDataWithoutMethod);
    }
    Ok(p)
}

pub(crate) fn read_will(r: &mut Reader) -> Result<WillProperties, DecodeError> {
    let ctx = PropCtx::Will;
    let mut p = WillProperties::default();
    read_properties(r, ctx, |prop| {
        match prop {
            Prop::WillDelayInterval(v) => p.will_delay_interval = Some(v),
            Prop::PayloadFormatIndicator(v) => p.payload_format_indicator = Some(v),
            Prop::MessageExpiryInterval(v) => p.message_expiry_interval = Some(v),
            Prop::ContentType(v) => p.content_type = Some(v),
            Prop::ResponseTopic(v) => p.response_topic = Some(v),
            Prop::CorrelationData(v) => p.correlation_data = Some(v),
            Prop::User(v) => p.user_properties.push(v),
            other => return Err(other.not_allowed(ctx)),
        }
        Ok(())
    })?;
    Ok(p)
}

pub(crate) fn read_connack(r: &mut Reader) -> Result<ConnAckProperties, DecodeError> {
    let ctx = PropCtx::ConnAck;
    let mut p = ConnAckProperties::default();
    read_properties(r, ctx, |prop| {
        match prop {
            Prop::SessionExpiryInterval(v) => p.session_expiry_interval = Some(v),
            Prop::ReceiveMaximum(v) => p.receive_maximum = Some(v),
            Prop::MaximumQoS(v) => p.maximum_qos = Some(v),
            Prop::RetainAvailable(v) => p.retain_available = Some(v),
            Prop::MaximumPacketSize(v) => p.maximum_packet_size = Some(v),
            Prop::AssignedClientIdentifier(v) => p.assigned_client_identifier = Some(v),
            Prop::TopicAliasMaximum(v) => p.topic_alias_maximum = Some(v),
            Prop::ReasonString(v) => p.reason_string = Some(v),
            Prop::User(v) => p.user_properties.push(v),
            Prop::WildcardSubscriptionAvailable(v) => p.wildcard_subscription_available = Some(v),
            Prop::SubscriptionIdentifiersAvailable(v) => p.subscription_identifiers_available = Some(v),
            Prop::SharedSubscriptionAvailable(v) => p.shared_subscription_available = Some(v),
            Prop::ServerKeepAlive(v) => p.server_keep_alive = Some(v),
            Prop::ResponseInformation(v) => p.response_information = Some(v),
            Prop::ServerReference(v) => p.server_reference = Some(v),
            Prop::AuthenticationMethod(v) => p.authentication_method = Some(v),
            Prop::AuthenticationData(v) => p.authentication_data = Some(v),
            other => return Err(other.not_allowed(ctx)),
        }
        Ok(())
    })?;
    Ok(p)
}

pub(crate) fn read_publish(r: &mut Reader) -> Result<PublishProperties, DecodeError> {
    let ctx = PropCtx::Publish;
    let mut p = PublishProperties::default();
    read_properties(r, ctx, |prop| {
        match prop {
            Prop::PayloadFormatIndicator(v) => p.payload_format_indicator = Some(v),
            Prop::MessageExpiryInterval(v) => p.message_expiry_interval = Some(v),
            Prop::TopicAlias(v) => p.topic_alias = Some(v),
            Prop::ResponseTopic(v) => p.response_topic = Some(v),
            Prop::CorrelationData(v) => p.correlation_data = Some(v),
            Prop::User(v) => p.user_properties.push(v),
            Prop::SubscriptionIdentifier(v) => p.subscription_identifiers.push(v),
            Prop::ContentType(v) => p.content_type = Some(v),
            other => return Err(other.not_allowed(ctx)),
        }
        Ok(())
    })?;
    Ok(p)
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK (`ctx` says which).
pub(crate) fn read_ack(r: &mut Reader, ctx: PropCtx) -> Result<AckProperties, DecodeError> {
    let mut p = AckProperties::default();
    read_properties(r, ctx, |prop| {
        match prop {
            Prop::ReasonString(v) => p.reason_string = Some(v),
            Prop::User(v) => p.user_properties.push(v),
            other => return Err(other.not_allowed(ctx)),
        }
        Ok(())
    })?;
    Ok(p)
}

/// SUBSCRIBE properties: the Subscription Identifier and the user properties.
pub(crate) fn read_subscribe(r: &mut Reader) -> Result<(Option<u32>, Vec<UserProperty>), DecodeError> {
    let ctx = PropCtx::Subscribe;
    let (mut id, mut user) = (None, Vec::new());
    read_properties(r, ctx, |prop| {
        match prop {
            Prop::SubscriptionIdentifier(v) => id = Some(v),
            Prop::User(v) => user.push(v),
            other => return Err(other.not_allowed(ctx)),
        }
        Ok(())
    })?;
    Ok((id, user))
}

/// UNSUBSCRIBE properties: user properties only.
pub(crate) fn read_unsubscribe(r: &mut Reader) -> Result<Vec<UserProperty>, DecodeError> {
    let ctx = PropCtx::Unsubscribe;
    let mut user = Vec::new();
    read_properties(r, ctx, |prop| {
        match prop {
            Prop::User(v) => user.push(v),
            other => return Err(other.not_allowed(ctx)),
        }
        Ok(())
    })?;
    Ok(user)
}

pub(crate) fn read_disconnect(r: &mut Reader) -> Result<DisconnectProperties, DecodeError> {
    let ctx = PropCtx::Disconnect;
    let mut p = DisconnectProperties::default();
    read_properties(r, ctx, |prop| {
        match prop {
            Prop::SessionExpiryInterval(v) => p.session_expiry_interval = Some(v),
            Prop::ReasonString(v) => p.reason_string = Some(v),
            Prop::User(v) => p.user_properties.push(v),
            Prop::ServerReference(v) => p.server_reference = Some(v),
            other => return Err(other.not_allowed(ctx)),
        }
        Ok(())
    })?;
    Ok(p)
}

pub(crate) fn read_auth(r: &mut Reader) -> Result<AuthProperties, DecodeError> {
    let ctx = PropCtx::Auth;
    let mut p = AuthProperties::default();
    read_properties(r, ctx, |prop| {
        match prop {
            Prop::AuthenticationMethod(v) => p.authentication_method = Some(v),
            Prop::AuthenticationData(v) => p.authentication_data = Some(v),
            Prop::ReasonString(v) => p.reason_string = Some(v),
            Prop::User(v) => p.user_properties.push(v),
            other => return Err(other.not_allowed(ctx)),
        }
        Ok(())
    })?;
    Ok(p)
}

/// A property list that can be written: the properties only, without the length prefix.
pub(crate) trait WriteProps {
    fn write_props<S: Sink>(&self, s: &mut S);
}

/// Writes the property length, then the properties.
pub(crate) fn put_properties<S: Sink>(s: &mut S, p: &impl WriteProps) {
    let len = properties_len(p);
    s.put_var_int(len);
    p.write_props(s);
}

/// The length of the properties, without their length prefix.
pub(crate) fn properties_len(p: &impl WriteProps) -> usize {
    let mut c = Counter::default();
    p.write_props(&mut c);
    c.len
}

fn put_flag<S: Sink>(s: &mut S, id: u8, v: Option<bool>) {
    if let Some(v) = v {
        s.put_u8(id);
        s.put_u8(u8::from(v));
    }
}

fn put_u16<S: Sink>(s: &mut S, id: u8, v: Option<u16>) {
    if let Some(v) = v {
        s.put_u8(id);
        s.put_u16(v);
    }
}

fn put_u32<S: Sink>(s: &mut S, id: u8, v: Option<u32>) {
    if let Some(v) = v {
        s.put_u8(id);
        s.put_u32(v);
    }
}

fn put_str<S: Sink>(s: &mut S, id: u8, v: Option<&Arc<str>>) {
    if let Some(v) = v {
        s.put_u8(id);
        s.put_str(v);
    }
}

fn put_bin<S: Sink>(s: &mut S, id: u8, v: Option<&Bytes>) {
    if let Some(v) = v {
        s.put_u8(id);
        s.put_binary(v);
    }
}

fn put_user<S: Sink>(s: &mut S, user: &[UserProperty]) {
    for (name, value) in user {
        s.put_u8(USER_PROPERTY);
        s.put_str(name);
        s.put_str(value);
    }
}

fn put_subscription_identifier<S: Sink>(s: &mut S, v: u32) {
    s.put_u8(SUBSCRIPTION_IDENTIFIER);
    s.put_var_int(v as usize);
}

impl WriteProps for ConnectProperties {
    fn write_props<S: Sink>(&self, s: &mut S) {
        put_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_u16(s, RECEIVE_MAXIMUM, self.receive_maximum);
        put_u32(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        put_u16(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_flag(s, REQUEST_RESPONSE_INFORMATION, self.request_response_information);
        put_flag(s, REQUEST_PROBLEM_INFORMATION, self.request_problem_information);
        put_str(s, AUTHENTICATION_METHOD, self.authentication_method.as_ref());
        put_bin(s, AUTHENTICATION_DATA, self.authentication_data.as_ref());
        put_user(s, &self.user_properties);
    }
}

impl WriteProps for WillProperties {
    fn write_props<S: Sink>(&self, s: &mut S) {
        put_u32(s, WILL_DELAY_INTERVAL, self.will_delay_interval);
        put_flag(s, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        put_u32(s, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_str(s, CONTENT_TYPE, self.content_type.as_ref());
        put_str(s, RESPONSE_TOPIC, self.response_topic.as_ref());
        put_bin(s, CORRELATION_DATA, self.correlation_data.as_ref());
        put_user(s, &self.user_properties);
    }
}

impl WriteProps for ConnAckProperties {
    fn write_props<S: Sink>(&self, s: &mut S) {
        put_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_u16(s, RECEIVE_MAXIMUM, self.receive_maximum);
        if let Some(qos) = self.maximum_qos {
            s.put_u8(MAXIMUM_QOS);
            s.put_u8(qos as u8);
        }
        put_flag(s, RETAIN_AVAILABLE, self.retain_available);
        put_u32(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        put_str(s, ASSIGNED_CLIENT_IDENTIFIER, self.assigned_client_identifier.as_ref());
        put_u16(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_str(s, REASON_STRING, self.reason_string.as_ref());
        put_flag(s, WILDCARD_SUBSCRIPTION_AVAILABLE, self.wildcard_subscription_available);
        put_flag(s, SUBSCRIPTION_IDENTIFIERS_AVAILABLE, self.subscription_identifiers_available);
        put_flag(s, SHARED_SUBSCRIPTION_AVAILABLE, self.shared_subscription_available);
        put_u16(s, SERVER_KEEP_ALIVE, self.server_keep_alive);
        put_str(s, RESPONSE_INFORMATION, self.response_information.as_ref());
        put_str(s, SERVER_REFERENCE, self.server_reference.as_ref());
        put_str(s, AUTHENTICATION_METHOD, self.authentication_method.as_ref());
        put_bin(s, AUTHENTICATION_DATA, self.authentication_data.as_ref());
        put_user(s, &self.user_properties);
    }
}

impl WriteProps for PublishProperties {
    fn write_props<S: Sink>(&self, s: &mut S) {
        put_flag(s, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        put_u32(s, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_u16(s, TOPIC_ALIAS, self.topic_alias);
        put_str(s, RESPONSE_TOPIC, self.response_topic.as_ref());
        put_bin(s, CORRELATION_DATA, self.correlation_data.as_ref());
        put_user(s, &self.user_properties);
        for &id in &self.subscription_identifiers {
            put_subscription_identifier(s, id);
        }
        put_str(s, CONTENT_TYPE, self.content_type.as_ref());
    }
}

impl WriteProps for AckProperties {
    fn write_props<S: Sink>(&self, s: &mut S) {
        put_str(s, REASON_STRING, self.reason_string.as_ref());
        put_user(s, &self.user_properties);
    }
}

impl WriteProps for Subscribe {
    fn write_props<S: Sink>(&self, s: &mut S) {
        if let Some(id) = self.subscription_identifier {
            put_subscription_identifier(s, id);
        }
        put_user(s, &self.user_properties);
    }
}

impl WriteProps for Unsubscribe {
    fn write_props<S: Sink>(&self, s: &mut S) {
        put_user(s, &self.user_properties);
    }
}

impl WriteProps for DisconnectProperties {
    fn write_props<S: Sink>(&self, s: &mut S) {
        put_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_str(s, REASON_STRING, self.reason_string.as_ref());
        put_str(s, SERVER_REFERENCE, self.server_reference.as_ref());
        put_user(s, &self.user_properties);
    }
}

impl WriteProps for AuthProperties {
    fn write_props<S: Sink>(&self, s: &mut S) {
        put_str(s, AUTHENTICATION_METHOD, self.authentication_method.as_ref());
        put_bin(s, AUTHENTICATION_DATA, self.authentication_data.as_ref());
        put_str(s, REASON_STRING, self.reason_string.as_ref());
        put_user(s, &self.user_properties);
    }
}
