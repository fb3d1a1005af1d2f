//! A message as it travels between nodes: one frame, the payload last.
//!
//! ```text
//! version u8 = 1 | flags u8 (QoS bits 0-1, retain, has expiry, has publisher, has format,
//!   has content type, has response topic, has correlation data)
//! | origin: str | boot u64 | seq u64 | [expiry: seconds left u32] | [publisher: str] | topic: str
//! | [format u8] | [content type: str] | [response topic: str] | [correlation data: bytes]
//! | user properties: count u16, (name: str, value: str)* | payload: the rest
//! str and bytes: length u16 + bytes (UTF-8 for str)
//! ```
//!
//! The node that receives a frame rebuilds the message with the expiry left when it was sent, so the
//! time spent on the way (and in an outbox) counts against it.

use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes};
use m2m_codec::{PublishProperties, QoS};
use m2m_session::{expiry_deadline, Message};
use m2m_topic::TopicName;

pub(crate) const VERSION: u8 = 1;
const RETAIN: u8 = 1 << 2;
const EXPIRY: u8 = 1 << 3;
const PUBLISHER: u8 = 1 << 4;
const FORMAT: u8 = 1 << 5;
const CONTENT_TYPE: u8 = 1 << 6;
const RESPONSE_TOPIC: u8 = 1 << 7;

/// A frame that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed mesh frame: {0}")]
pub struct Malformed(pub &'static str);

/// Where a frame comes from: the node, its run (a new one each start) and the frame's number in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The node id of the origin.
    pub origin: Arc<str>,
    /// Which run of that node (it numbers frames from 1 again after a restart).
    pub boot: u64,
    /// The frame's number in that run.
    pub seq: u64,
}

/// Writes `m` as a frame from `stamp`, its expiry as left at `now`.
pub fn encode(m: &Message, stamp: &Stamp, now: Instant) -> Vec<u8> {
    let p = &m.properties;
    let mut flags = m.qos as u8;
    let expiry = m.remaining_expiry(now);
    for (set, bit) in [
        (m.retain, RETAIN),
        (expiry.is_some(), EXPIRY),
        (m.publisher.is_some(), PUBLISHER),
        (p.payload_format_indicator.is_some(), FORMAT),
        (p.content_type.is_some(), CONTENT_TYPE),
        (p.response_topic.is_some(), RESPONSE_TOPIC),
    ] {
        if set {
            flags |= bit;
        }
    }
    let mut out = Vec::with_capacity(64 + m.topic.as_str().len() + m.payload.len());
    out.push(VERSION);
    out.push(flags);
    put_str(&mut out, &stamp.origin);
    out.put_u64(stamp.boot);
    out.put_u64(stamp.seq);
    if let Some(secs) = expiry {
        out.put_u32(secs);
    }
    if let Some(publisher) = &m.publisher {
        put_str(&mut out, publisher);
    }
    put_str(&mut out, m.topic.as_str());
    if let Some(format) = p.payload_format_indicator {
        out.push(u8::from(format));
    }
    if let Some(ct) = &p.content_type {
        put_str(&mut out, ct);
    }
    if let Some(rt) = &p.response_topic {
        put_str(&mut out, rt);
    }
    // Correlation data is the one optional field without a flag bit left: a u8 presence byte.
    match &p.correlation_data {
        Some(data) => {
            out.push(1);
            put_bytes(&mut out, data);
        }
        None => out.push(0),
    }
    let props = &p.user_properties[..p.user_properties.len().min(usize::from(u16::MAX))];
    out.put_u16(u16::try_from(props.len()).unwrap_or(u16::MAX));
    for (k, v) in props {
        put_str(&mut out, k);
        put_str(&mut out, v);
    }
    out.extend_from_slice(&m.payload);
    out
}

/// Reads a frame: its stamp and the message (expiry counted from `now`, origin set).
///
/// # Errors
/// [`Malformed`] for a frame that is cut short, of another version, or with an invalid topic.
pub fn decode(frame: &[u8], now: Instant) -> Result<(Stamp, Message), Malformed> {
    let mut r = Reader(frame);
    if r.u8()? != VERSION {
        return Err(Malformed("unknown version"));
    }
    let flags = r.u8()?;
    let qos = QoS::from_u8(flags & 0b11).ok_or(Malformed("QoS 3"))?;
    let origin: Arc<str> = r.str()?.into();
    let boot = r.u64()?;
    let seq = r.u64()?;
    let expiry = if flags & EXPIRY != 0 { Some(r.u32()?) } else { None };
    let publisher = if flags & PUBLISHER != 0 { Some(Arc::from(r.str()?)) } else { None };
    let topic = TopicName::try_from(r.str()?).map_err(|_| Malformed("invalid topic"))?;
    let mut properties = PublishProperties::default();
    if flags & FORMAT != 0 {
        properties.payload_format_indicator = Some(r.u8()? != 0);
    }
    if flags & CONTENT_TYPE != 0 {
        properties.content_type = Some(r.str()?.into());
    }
    if flags & RESPONSE_TOPIC != 0 {
        properties.response_topic = Some(r.str()?.into());
    }
    if r.u8()? != 0 {
        properties.correlation_data = Some(Bytes::copy_from_slice(r.bytes()?));
    }
    let count = r.u16()?;
    for _ in 0..count {
        let k: Arc<str> = r.str()?.into();
        let v: Arc<str> = r.str()?.into();
        properties.user_properties.push((k, v));
    }
    properties.message_expiry_interval = expiry;
    let message = Message {
        topic,
        payload: Bytes::copy_from_slice(r.0),
        qos,
        retain: flags & RETAIN != 0,
        expires_at: expiry_deadline(expiry, now),
        properties,
        publisher,
        origin: Some(origin.clone()),
    };
    Ok((Stamp { origin, boot, seq }, message))
}

/// A frame after time spent waiting (in an outbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Aged {
    /// It has no expiry: unchanged.
    Same,
    /// Its expiry, reduced by the time spent.
    Updated(Vec<u8>),
    /// It expired meanwhile.
    Expired,
}

/// `frame` after `spent` waiting: its Message Expiry Interval reduced by that time.
pub fn age(frame: &[u8], spent: std::time::Duration) -> Aged {
    if frame.get(1).is_none_or(|flags| flags & EXPIRY == 0) {
        return Aged::Same;
    }
    let now = Instant::now();
    let Ok((stamp, m)) = decode(frame, now) else { return Aged::Same };
    match m.expires_at {
        Some(at) if at <= now + spent => Aged::Expired,
        _ => Aged::Updated(encode(&m, &stamp, now + spent)),
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // MQTT strings and binary data are at most 65 535 bytes, as are node ids by configuration.
    let b = &b[..b.len().min(usize::from(u16::MAX))];
    out.put_u16(u16::try_from(b.len()).unwrap_or(u16::MAX));
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed("cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let mut a = [0; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn str(&mut self) -> Result<&'a str, Malformed> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Malformed("a string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stamp() -> Stamp {
        Stamp { origin: "node-a".into(), boot: 7, seq: 42 }
    }

    #[test]
    fn a_message_with_every_property_comes_back_whole_with_its_expiry_reduced() {
        let now = Instant::now();
        let mut m = Message::new(
            TopicName::try_from("plant/1/temp").unwrap(),
            &b"\x00{\"t\":1}"[..],
            QoS::ExactlyOnce,
            true,
        );
        m.publisher = Some("sensor-1".into());
        m.expires_at = Some(now + Duration::from_secs(60));
        m.properties = PublishProperties {
            payload_format_indicator: Some(true),
            message_expiry_interval: Some(60),
            content_type: Some("application/json".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x01\x02")),
            user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v2".into())],
            ..PublishProperties::default()
        };
        let frame = encode(&m, &stamp(), now + Duration::from_secs(20));
        let later = now + Duration::from_secs(30);
        let (s, back) = decode(&frame, later).unwrap();
        assert_eq!(s, stamp());
        assert_eq!(back.properties.message_expiry_interval, Some(40), "20 s spent before sending");
        assert_eq!(back.expires_at, Some(later + Duration::from_secs(40)));
        assert_eq!(back.origin.as_deref(), Some("node-a"));
        let mut expected = m.clone();
        expected.properties.message_expiry_interval = Some(40);
        expected.expires_at = back.expires_at;
        expected.origin = back.origin.clone();
        assert_eq!(back, expected);
    }

    #[test]
    fn time_spent_waiting_counts_against_the_expiry() {
        let now = Instant::now();
        let mut m = Message::new(TopicName::try_from("a").unwrap(), &b"x"[..], QoS::AtLeastOnce, false);
        assert_eq!(age(&encode(&m, &stamp(), now), Duration::from_secs(99)), Aged::Same);
        m.expires_at = Some(now + Duration::from_secs(60));
        let frame = encode(&m, &stamp(), now);
        let Aged::Updated(aged) = age(&frame, Duration::from_secs(45)) else { panic!("not updated") };
        assert_eq!(decode(&aged, now).unwrap().1.properties.message_expiry_interval, Some(15));
        assert_eq!(age(&frame, Duration::from_secs(61)), Aged::Expired);
    }

    #[test]
    fn a_plain_message_round_trips_and_a_cut_frame_is_malformed() {
        let now = Instant::now();
        let m = Message::new(TopicName::try_from("a").unwrap(), &b""[..], QoS::AtMostOnce, false);
        let frame = encode(&m, &stamp(), now);
        let (_, back) = decode(&frame, now).unwrap();
        assert_eq!((back.topic.as_str(), back.payload.len(), back.qos), ("a", 0, QoS::AtMostOnce));
        for cut in 0..frame.len() {
            assert!(decode(&frame[..cut], now).is_err(), "cut at {cut}");
        }
        let mut bad = frame.clone();
        bad[0] = 9;
        assert_eq!(decode(&bad, now).unwrap_err(), Malformed("unknown version"));
    }
}
