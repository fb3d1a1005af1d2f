//! Keys and values as they are laid out on disk.
//!
//! Every value starts with a record version byte ([`RECORD_VERSION`]); integers are big-endian,
//! lengths and counts are LEB128 varints. Decoding never panics: bad bytes are a [`Malformed`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use m2m_codec::{PublishProperties, QoS, RetainHandling, SubscriptionOptions};
use m2m_session::{Delivery, Message, SubscriptionEntry};
use m2m_topic::{parse_subscription, TopicName};

use crate::record::{Phase, SessionRecord, WillRecord};

/// The version byte every value starts with.
pub(crate) const RECORD_VERSION: u8 = 1;

/// Why a key or value does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) String);

impl Malformed {
    fn new(what: impl Into<String>) -> Self {
        Self(what.into())
    }
}

type Result<T> = std::result::Result<T, Malformed>;

// ---- keys ----------------------------------------------------------------------------------------

/// `u16 BE length | client id`: the prefix of all keys of one client in the per-client keyspaces.
pub(crate) fn client_prefix(client_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + client_id.len() + 8);
    put_client(&mut key, client_id);
    key
}

fn put_client(key: &mut Vec<u8>, client_id: &str) {
    // MQTT strings are at most 65 535 bytes (MQTT 5.0 §1.5.4), so the length always fits.
    let len = u16::try_from(client_id.len()).unwrap_or(u16::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(client_id.as_bytes());
}

/// Key of a delivery or its flight state: `u16 BE length | client id | seq u64 BE`.
pub(crate) fn seq_key(client_id: &str, seq: u64) -> Vec<u8> {
    let mut key = client_prefix(client_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Key of an incoming QoS 2 packet id: `u16 BE length | client id | packet id u16 BE`.
pub(crate) fn incoming_key(client_id: &str, packet_id: u16) -> Vec<u8> {
    let mut key = client_prefix(client_id);
    key.extend_from_slice(&packet_id.to_be_bytes());
    key
}

/// Splits a per-client key into the client id and the rest.
fn split_client(key: &[u8]) -> Result<(&str, &[u8])> {
    let (len, rest) = key.split_first_chunk::<2>().ok_or_else(|| Malformed::new("key too short"))?;
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() < len {
        return Err(Malformed::new("key shorter than its client id length"));
    }
    let (client, rest) = rest.split_at(len);
    let client = std::str::from_utf8(client).map_err(|_| Malformed::new("client id in key is not UTF-8"))?;
    Ok((client, rest))
}

/// Reads a key made by [`seq_key`].
pub(crate) fn parse_seq_key(key: &[u8]) -> Result<(&str, u64)> {
    let (client, rest) = split_client(key)?;
    let seq: [u8; 8] =
        rest.try_into().map_err(|_| Malformed::new("sequence number in key is not 8 bytes"))?;
    Ok((client, u64::from_be_bytes(seq)))
}

/// Reads a key made by [`incoming_key`].
pub(crate) fn parse_incoming_key(key: &[u8]) -> Result<(&str, u16)> {
    let (client, rest) = split_client(key)?;
    let id: [u8; 2] = rest.try_into().map_err(|_| Malformed::new("packet id in key is not 2 bytes"))?;
    Ok((client, u16::from_be_bytes(id)))
}

/// A key that is a plain UTF-8 string (session and will client ids, retained topics).
pub(crate) fn parse_str_key(key: &[u8]) -> Result<&str> {
    std::str::from_utf8(key).map_err(|_| Malformed::new("key is not UTF-8"))
}

/// A key or value for error messages: as text when it is printable, in hex otherwise.
pub(crate) fn show_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => key.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

// ---- time ----------------------------------------------------------------------------------------

/// Pairs an `Instant` with the wall clock, to store deadlines as unix milliseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) now: Instant,
    pub(crate) wall_ms: u64,
}

impl Clock {
    /// The wall-clock time (unix ms) of `at`, rounded up so a message never expires early.
    fn to_wall(self, at: Instant) -> u64 {
        let left = at.saturating_duration_since(self.now);
        let ms = left.as_millis() + u128::from(!left.subsec_nanos().is_multiple_of(1_000_000));
        self.wall_ms.saturating_add(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// The `Instant` of the wall-clock time `wall_ms`; `now` if it has passed.
    fn to_instant(self, wall_ms: u64) -> Option<Instant> {
        // A deadline too far ahead for `Instant` is as good as none.
        self.now.checked_add(Duration::from_millis(wall_ms.saturating_sub(self.wall_ms)))
    }

    /// Whether the wall-clock deadline `wall_ms` has passed.
    pub(crate) fn has_passed(self, wall_ms: u64) -> bool {
        wall_ms <= self.wall_ms
    }
}

// ---- writer --------------------------------------------------------------------------------------

fn put_var(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_len(buf: &mut Vec<u8>, len: usize) {
    put_var(buf, len as u64);
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_len(buf, b.len());
    buf.extend_from_slice(b);
}

fn put_opt_u64(buf: &mut Vec<u8>, v: Option<u64>) {
    match v {
        None => buf.push(0),
        Some(v) => {
            buf.push(1);
            buf.extend_from_slice(&v.to_be_bytes());
        }
    }
}

// ---- reader --------------------------------------------------------------------------------------

/// Reads a value front to back; every read checks the length first.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Malformed(format!("value ends inside {what}")));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let b = self.take(N, what)?;
        b.try_into().map_err(|_| Malformed(format!("value ends inside {what}")))
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        self.array(what).map(u16::from_be_bytes)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_be_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_be_bytes)
    }

    fn var(&mut self, what: &str) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8(what)?;
            v |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Malformed(format!("{what} is not a valid varint")))
    }

    fn var_u32(&mut self, what: &str) -> Result<u32> {
        u32::try_from(self.var(what)?).map_err(|_| Malformed(format!("{what} out of range")))
    }

    /// A count of items that take at least one byte each, checked against what is left so a
    /// garbled count cannot make the caller reserve a huge vector.
    fn count(&mut self, what: &str) -> Result<usize> {
        let n = self.var(what)?;
        match usize::try_from(n) {
            Ok(n) if n <= self.buf.len() => Ok(n),
            _ => Err(Malformed(format!("{what} {n} exceeds the value's length"))),
        }
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8]> {
        let n = self.var(what)?;
        let n = usize::try_from(n).map_err(|_| Malformed(format!("{what} length out of range")))?;
        self.take(n, what)
    }

    fn str(&mut self, what: &str) -> Result<&'a str> {
        std::str::from_utf8(self.bytes(what)?).map_err(|_| Malformed(format!("{what} is not UTF-8")))
    }

    fn arc_str(&mut self, what: &str) -> Result<Arc<str>> {
        self.str(what).map(Arc::from)
    }

    fn opt_u64(&mut self, what: &str) -> Result<Option<u64>> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => self.u64(what).map(Some),
            t => Err(Malformed(format!("{what} has bad tag {t}"))),
        }
    }

    fn version(&mut self) -> Result<()> {
        match self.u8("record version")? {
            RECORD_VERSION => Ok(()),
            v => Err(Malformed(format!("unknown record version {v}"))),
        }
    }

    fn finish(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Malformed(format!("{} trailing bytes", self.buf.len())))
        }
    }
}

fn qos(v: u8, what: &str) -> Result<QoS> {
    QoS::from_u8(v).ok_or_else(|| Malformed(format!("{what}: invalid QoS {v}")))
}

// ---- message -------------------------------------------------------------------------------------

const MSG_RETAIN: u8 = 1 << 2;
const MSG_EXPIRES: u8 = 1 << 3;
const MSG_PUBLISHER: u8 = 1 << 4;

const PROP_PAYLOAD_FORMAT: u8 = 1 << 0;
const PROP_EXPIRY_INTERVAL: u8 = 1 << 1;
const PROP_TOPIC_ALIAS: u8 = 1 << 2;
const PROP_RESPONSE_TOPIC: u8 = 1 << 3;
const PROP_CORRELATION: u8 = 1 << 4;
const PROP_CONTENT_TYPE: u8 = 1 << 5;
const PROP_UTF8: u8 = 1 << 6;

/// A message:
///
/// ```text
/// flags u8 (QoS bits 0-1, retain, has expiry, has publisher) | [expiry: unix ms u64]
/// | [publisher: len+bytes] | topic: len+bytes | properties | payload: len+bytes
/// properties: present u8 (one bit per optional field) | [format u8] | [expiry interval u32]
/// | [topic alias u16] | [response topic] | [correlation data] | [content type]
/// | user properties: count, (name, value)* | subscription ids: count, varint*
/// ```
fn put_message(buf: &mut Vec<u8>, m: &Message, clock: Clock) {
    let Message { topic, payload, qos, retain, properties, expires_at, publisher, origin: _ } = m;
    let expires = expires_at.map(|at| clock.to_wall(at));
    let mut flags = *qos as u8;
    if *retain {
        flags |= MSG_RETAIN;
    }
    if expires.is_some() {
        flags |= MSG_EXPIRES;
    }
    if publisher.is_some() {
        flags |= MSG_PUBLISHER;
    }
    buf.push(flags);
    if let Some(ms) = expires {
        buf.extend_from_slice(&ms.to_be_bytes());
    }
    if let Some(p) = publisher {
        put_bytes(buf, p.as_bytes());
    }
    put_bytes(buf, topic.as_str().as_bytes());
    put_properties(buf, properties);
    put_bytes(buf, payload);
}

fn put_properties(buf: &mut Vec<u8>, p: &PublishProperties) {
    // Destructured so that a new field fails to compile here rather than being silently dropped.
    let PublishProperties {
        payload_format_indicator,
        message_expiry_interval,
        topic_alias,
        response_topic,
        correlation_data,
        user_properties,
        subscription_identifiers,
        content_type,
    } = p;
    let mut present = 0u8;
    for (set, bit) in [
        (payload_format_indicator.is_some(), PROP_PAYLOAD_FORMAT),
        (message_expiry_interval.is_some(), PROP_EXPIRY_INTERVAL),
        (topic_alias.is_some(), PROP_TOPIC_ALIAS),
        (response_topic.is_some(), PROP_RESPONSE_TOPIC),
        (correlation_data.is_some(), PROP_CORRELATION),
        (content_type.is_some(), PROP_CONTENT_TYPE),
        (*payload_format_indicator == Some(true), PROP_UTF8),
    ] {
        if set {
            present |= bit;
        }
    }
    buf.push(present);
    if let Some(v) = message_expiry_interval {
        buf.extend_from_slice(&v.to_be_bytes());
    }
    if let Some(v) = topic_alias {
        buf.extend_from_slice(&v.to_be_bytes());
    }
    if let Some(v) = response_topic {
        put_bytes(buf, v.as_bytes());
    }
    if let Some(v) = correlation_data {
        put_bytes(buf, v);
    }
    if let Some(v) = content_type {
        put_bytes(buf, v.as_bytes());
    }
    put_len(buf, user_properties.len());
    for (name, value) in user_properties {
        put_bytes(buf, name.as_bytes());
        put_bytes(buf, value.as_bytes());
    }
    put_len(buf, subscription_identifiers.len());
    for id in subscription_identifiers {
        put_var(buf, u64::from(*id));
    }
}

/// A message as read back, with its expiry still in wall-clock time.
struct RawMessage {
    message: Message,
    expires_ms: Option<u64>,
}

fn read_message(r: &mut Reader<'_>) -> Result<RawMessage> {
    let flags = r.u8("message flags")?;
    if flags & !(0b11 | MSG_RETAIN | MSG_EXPIRES | MSG_PUBLISHER) != 0 {
        return Err(Malformed(format!("message flags {flags:#04x} has unknown bits")));
    }
    let qos = qos(flags & 0b11, "message")?;
    let expires_ms = if flags & MSG_EXPIRES != 0 { Some(r.u64("message expiry")?) } else { None };
    let publisher = if flags & MSG_PUBLISHER != 0 { Some(r.arc_str("publisher")?) } else { None };
    let topic = TopicName::try_from(r.str("topic")?).map_err(|e| Malformed(format!("topic: {e}")))?;
    let properties = read_properties(r)?;
    let payload = Bytes::copy_from_slice(r.bytes("payload")?);
    let message = Message {
        topic,
        payload,
        qos,
        retain: flags & MSG_RETAIN != 0,
        properties,
        expires_at: None,
        publisher,
        origin: None,
    };
    Ok(RawMessage { message, expires_ms })
}

fn read_properties(r: &mut Reader<'_>) -> Result<PublishProperties> {
    let present = r.u8("properties")?;
    if present & 0x80 != 0 {
        return Err(Malformed(format!("properties {present:#04x} has unknown bits")));
    }
    let has = |bit: u8| present & bit != 0;
    let mut p = PublishProperties::default();
    if has(PROP_PAYLOAD_FORMAT) {
        p.payload_format_indicator = Some(has(PROP_UTF8));
    }
    if has(PROP_EXPIRY_INTERVAL) {
        p.message_expiry_interval = Some(r.u32("message expiry interval")?);
    }
    if has(PROP_TOPIC_ALIAS) {
        p.topic_alias = Some(r.u16("topic alias")?);
    }
    if has(PROP_RESPONSE_TOPIC) {
        p.response_topic = Some(r.arc_str("response topic")?);
    }
    if has(PROP_CORRELATION) {
        p.correlation_data = Some(Bytes::copy_from_slice(r.bytes("correlation data")?));
    }
    if has(PROP_CONTENT_TYPE) {
        p.content_type = Some(r.arc_str("content type")?);
    }
    let n = r.count("user property count")?;
    p.user_properties.reserve(n);
    for _ in 0..n {
        let name = r.arc_str("user property name")?;
        let value = r.arc_str("user property value")?;
        p.user_properties.push((name, value));
    }
    let n = r.count("subscription id count")?;
    p.subscription_identifiers.reserve(n);
    for _ in 0..n {
        p.subscription_identifiers.push(r.var_u32("subscription id")?);
    }
    Ok(p)
}

/// A message read back from a record: `Expired` when its deadline has passed.
pub(crate) enum Decoded<T> {
    Live(T),
    Expired,
}

fn live_message(raw: RawMessage, clock: Clock) -> Decoded<Message> {
    let RawMessage { mut message, expires_ms } = raw;
    match expires_ms {
        Some(ms) if clock.has_passed(ms) => Decoded::Expired,
        Some(ms) => {
            message.expires_at = clock.to_instant(ms);
            Decoded::Live(message)
        }
        None => Decoded::Live(message),
    }
}

// ---- records -------------------------------------------------------------------------------------

/// A delivery: `version | qos u8 | retain u8 | subscription ids: count, varint* | message`.
pub(crate) fn encode_delivery(d: &Delivery, clock: Clock) -> Vec<u8> {
    let Delivery { message, qos, retain, subscription_ids, stored: _ } = d;
    let mut buf = Vec::with_capacity(64 + message.payload.len() + message.topic.len());
    buf.push(RECORD_VERSION);
    buf.push(*qos as u8);
    buf.push(u8::from(*retain));
    put_len(&mut buf, subscription_ids.len());
    for id in subscription_ids {
        put_var(&mut buf, u64::from(*id));
    }
    put_message(&mut buf, message, clock);
    buf
}

/// Reads a delivery stored under `seq`.
pub(crate) fn decode_delivery(value: &[u8], seq: u64, clock: Clock) -> Result<Decoded<Delivery>> {
    let mut r = Reader::new(value);
    r.version()?;
    let qos = qos(r.u8("delivery QoS")?, "delivery")?;
    let retain = match r.u8("delivery retain")? {
        0 => false,
        1 => true,
        v => return Err(Malformed(format!("delivery retain flag {v}"))),
    };
    let n = r.count("subscription id count")?;
    let mut subscription_ids = Vec::with_capacity(n);
    for _ in 0..n {
        subscription_ids.push(r.var_u32("subscription id")?);
    }
    let raw = read_message(&mut r)?;
    r.finish()?;
    Ok(match live_message(raw, clock) {
        Decoded::Live(message) => Decoded::Live(Delivery {
            message: Arc::new(message),
            qos,
            retain,
            subscription_ids,
            stored: Some(seq),
        }),
        Decoded::Expired => Decoded::Expired,
    })
}

/// A retained message: `version | message`.
pub(crate) fn encode_retained(m: &Message, clock: Clock) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64 + m.payload.len() + m.topic.len());
    buf.push(RECORD_VERSION);
    put_message(&mut buf, m, clock);
    buf
}

/// Reads a retained message.
pub(crate) fn decode_retained(value: &[u8], clock: Clock) -> Result<Decoded<Message>> {
    let mut r = Reader::new(value);
    r.version()?;
    let raw = read_message(&mut r)?;
    r.finish()?;
    Ok(live_message(raw, clock))
}

/// A will: `version | delay u32 | publish at: tag, [unix ms u64] | message`.
pub(crate) fn encode_will(w: &WillRecord, clock: Clock) -> Vec<u8> {
    let WillRecord { message, delay, publish_at } = w;
    let mut buf = Vec::with_capacity(64 + message.payload.len() + message.topic.len());
    buf.push(RECORD_VERSION);
    buf.extend_from_slice(&delay.to_be_bytes());
    put_opt_u64(&mut buf, *publish_at);
    put_message(&mut buf, message, clock);
    buf
}

/// Reads a will. A will is kept even when its message's expiry has passed (it then expires at
/// `clock.now`): what becomes of it is the router's decision.
pub(crate) fn decode_will(value: &[u8], clock: Clock) -> Result<WillRecord> {
    let mut r = Reader::new(value);
    r.version()?;
    let delay = r.u32("will delay")?;
    let publish_at = r.opt_u64("will publish time")?;
    let RawMessage { mut message, expires_ms } = read_message(&mut r)?;
    r.finish()?;
    message.expires_at = expires_ms.and_then(|ms| clock.to_instant(ms));
    Ok(WillRecord { message, delay, publish_at })
}

/// A flight state: `version | packet id u16 | phase u8 (0 sent, 1 released)`.
pub(crate) fn encode_flight(packet_id: u16, phase: Phase) -> Vec<u8> {
    let mut buf = Vec::with_capacity(4);
    buf.push(RECORD_VERSION);
    buf.extend_from_slice(&packet_id.to_be_bytes());
    buf.push(match phase {
        Phase::Sent => 0,
        Phase::Released => 1,
    });
    buf
}

/// Reads a flight state.
pub(crate) fn decode_flight(value: &[u8]) -> Result<(u16, Phase)> {
    let mut r = Reader::new(value);
    r.version()?;
    let id = r.u16("packet id")?;
    let phase = match r.u8("phase")? {
        0 => Phase::Sent,
        1 => Phase::Released,
        v => return Err(Malformed(format!("unknown phase {v}"))),
    };
    r.finish()?;
    Ok((id, phase))
}

/// An incoming packet id: the key says it all; the value is the version byte alone.
pub(crate) fn encode_incoming() -> Vec<u8> {
    vec![RECORD_VERSION]
}

/// Checks an incoming packet id's value.
pub(crate) fn decode_incoming(value: &[u8]) -> Result<()> {
    let r = {
        let mut r = Reader::new(value);
        r.version()?;
        r
    };
    r.finish()
}

/// A session: `version | expiry interval u32 | disconnected at: tag, [unix ms u64]
/// | subscriptions: count, (filter, options u8, id: tag, [varint])*`.
///
/// The options byte is laid out as in SUBSCRIBE (MQTT 5.0 §3.8.3.1).
pub(crate) fn encode_session(s: &SessionRecord) -> Vec<u8> {
    let SessionRecord { client_id: _, expiry_interval, disconnected_at, subscriptions } = s;
    let mut buf = Vec::with_capacity(16 + subscriptions.len() * 24);
    buf.push(RECORD_VERSION);
    buf.extend_from_slice(&expiry_interval.to_be_bytes());
    put_opt_u64(&mut buf, *disconnected_at);
    put_len(&mut buf, subscriptions.len());
    for (filter, entry) in subscriptions {
        let SubscriptionEntry { subscription: _, options, id } = entry;
        put_bytes(&mut buf, filter.as_bytes());
        let SubscriptionOptions { qos, no_local, retain_as_published, retain_handling } = *options;
        buf.push(
            qos as u8
                | u8::from(no_local) << 2
                | u8::from(retain_as_published) << 3
                | (retain_handling as u8) << 4,
        );
        match id {
            None => buf.push(0),
            Some(id) => {
                buf.push(1);
                put_var(&mut buf, u64::from(*id));
            }
        }
    }
    buf
}

/// Reads the session of `client_id`.
pub(crate) fn decode_session(client_id: &str, value: &[u8]) -> Result<SessionRecord> {
    let mut r = Reader::new(value);
    r.version()?;
    let expiry_interval = r.u32("session expiry interval")?;
    let disconnected_at = r.opt_u64("disconnected at")?;
    let n = r.count("subscription count")?;
    let mut subscriptions = Vec::with_capacity(n);
    for _ in 0..n {
        let filter = r.arc_str("subscription filter")?;
        let subscription = parse_subscription(&filter)
            .map_err(|e| Malformed(format!("subscription filter {filter:?}: {e}")))?;
        let o = r.u8("subscription options")?;
        if o & 0b1100_0000 != 0 {
            return Err(Malformed(format!("subscription options {o:#04x} has reserved bits")));
        }
        let retain_handling = match (o >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            v => return Err(Malformed(format!("invalid retain handling {v}"))),
        };
        let options = SubscriptionOptions {
            qos: qos(o & 0b11, "subscription options")?,
            no_local: o & 0b100 != 0,
            retain_as_published: o & 0b1000 != 0,
            retain_handling,
        };
        let id = match r.u8("subscription id tag")? {
            0 => None,
            1 => Some(r.var_u32("subscription id")?),
            t => return Err(Malformed(format!("subscription id has bad tag {t}"))),
        };
        subscriptions.push((filter, SubscriptionEntry { subscription, options, id }));
    }
    r.finish()?;
    Ok(SessionRecord { client_id: Arc::from(client_id), expiry_interval, disconnected_at, subscriptions })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn clock() -> Clock {
        Clock { now: Instant::now(), wall_ms: 1_700_000_000_000 }
    }

    fn full_message(clock: Clock) -> Message {
        Message {
            topic: TopicName::try_from("a/b").unwrap(),
            payload: Bytes::from_static(b"payload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: PublishProperties {
                payload_format_indicator: Some(true),
                message_expiry_interval: Some(60),
                topic_alias: Some(3),
                response_topic: Some("reply/to".into()),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
                subscription_identifiers: vec![1, 268_435_455],
                content_type: Some("text/plain".into()),
            },
            expires_at: Some(clock.now + Duration::from_secs(60)),
            publisher: Some("pub-1".into()),
            origin: None,
        }
    }

    #[test]
    fn seq_keys_of_one_client_share_a_prefix_and_sort_by_seq() {
        let a1 = seq_key("a", 1);
        let a256 = seq_key("a", 256);
        assert!(a1.starts_with(&client_prefix("a")) && a256.starts_with(&client_prefix("a")));
        assert!(a1 < a256);
        assert!(!seq_key("ab", 1).starts_with(&client_prefix("a")));
        assert_eq!(parse_seq_key(&a256).unwrap(), ("a", 256));
        assert_eq!(parse_incoming_key(&incoming_key("xyz", 7)).unwrap(), ("xyz", 7));
    }

    #[test]
    fn malformed_keys_are_errors() {
        for key in [&b""[..], b"\x00", b"\x00\x05ab", b"\x00\x01a\x00"] {
            assert!(parse_seq_key(key).is_err(), "{key:?}");
            assert!(parse_incoming_key(key).is_err(), "{key:?}");
        }
    }

    #[test]
    fn a_delivery_round_trips_with_every_property() {
        let clock = clock();
        let d = Delivery {
            message: Arc::new(full_message(clock)),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![5, 300],
            stored: None,
        };
        let bytes = encode_delivery(&d, clock);
        let Decoded::Live(back) = decode_delivery(&bytes, 9, clock).unwrap() else { panic!("expired") };
        assert_eq!(back, Delivery { stored: Some(9), ..d });
    }

    #[test]
    fn an_expired_message_decodes_as_expired() {
        let clock = clock();
        let mut m = full_message(clock);
        m.expires_at = Some(clock.now);
        let bytes = encode_retained(&m, clock);
        assert!(matches!(decode_retained(&bytes, clock).unwrap(), Decoded::Expired));
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_an_error_or_a_value_never_a_panic() {
        let clock = clock();
        let will = WillRecord { message: full_message(clock), delay: 5, publish_at: Some(42) };
        let bytes = encode_will(&will, clock);
        assert_eq!(decode_will(&bytes, clock).unwrap().delay, 5);
        for len in 0..bytes.len() {
            assert!(decode_will(&bytes[..len], clock).is_err(), "truncated to {len}");
        }
        for i in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xFF] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                let _ = decode_will(&b, clock);
                let _ = decode_delivery(&b, 1, clock);
                let _ = decode_session("c", &b);
            }
        }
    }

    #[test]
    fn a_huge_count_is_an_error_not_an_allocation() {
        let mut bytes = vec![RECORD_VERSION, 0, 0, 0, 0, 0];
        put_var(&mut bytes, u64::MAX >> 1);
        assert!(decode_session("c", &bytes).is_err());
    }
}
