//! How one stored message is laid out.
//!
//! Messages are stored in blocks: one stored record holds up to [`BLOCK_POINTS`] consecutive messages
//! of one topic (those of one topic in one batch of the writer), so that ingest costs one write per
//! block, not per message.
//!
//! Key (12 bytes): topic id `u32` BE, then the node's timestamp in microseconds of the block's first
//! message `u64` BE, so a topic's blocks are one contiguous range in time order.
//!
//! Block value: a version byte (2), the number of messages (`u16` BE), then per message its time
//! after the block's first (LEB128), the length of its record (LEB128) and the record.
//!
//! Record (one message):
//! Value: a version byte (1); a flags byte (bits 0–1 QoS, 2 retain, 3 publisher timestamp, 4 client
//! id, 5 content type, 6 user properties, 7 payload declared UTF-8); then, as the flags say, the
//! publisher's timestamp (`u64` BE, µs), the client id and the content type (`u16` BE length and
//! bytes), the user properties (`u16` BE count, then each name and value as a `u16`-prefixed string);
//! the rest is the payload.

use bytes::Bytes;
use m2m_session::Message;

const VERSION: u8 = 1;
const BLOCK_VERSION: u8 = 2;
/// Messages in one block at most.
pub(crate) const BLOCK_POINTS: u16 = 512;
/// Bytes of records in one block at most (a larger message gets a block of its own).
pub(crate) const BLOCK_BYTES: usize = 64 * 1024;
const F_RETAIN: u8 = 1 << 2;
const F_PUBLISHER_TS: u8 = 1 << 3;
const F_CLIENT: u8 = 1 << 4;
const F_CONTENT_TYPE: u8 = 1 << 5;
const F_PROPS: u8 = 1 << 6;
const F_UTF8: u8 = 1 << 7;

/// The key of the record of `topic_id` at `ts_us`.
pub(crate) fn key(topic_id: u32, ts_us: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&topic_id.to_be_bytes());
    k[4..].copy_from_slice(&ts_us.to_be_bytes());
    k
}

/// The topic id and timestamp of a record key.
pub(crate) fn split_key(k: &[u8]) -> Option<(u32, u64)> {
    let id = u32::from_be_bytes(k.get(..4)?.try_into().ok()?);
    let ts = u64::from_be_bytes(k.get(4..12)?.try_into().ok()?);
    Some((id, ts))
}

/// A stored message, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// QoS it was published with (0–2).
    pub qos: u8,
    /// RETAIN flag as published.
    pub retain: bool,
    /// The publisher's own timestamp (µs since the epoch), when one was configured and found.
    pub publisher_ts_us: Option<u64>,
    /// Client id of the publisher; `None` for the node's own messages.
    pub client_id: Option<String>,
    /// MQTT 5 Content Type.
    pub content_type: Option<String>,
    /// MQTT 5 User Properties, in order.
    pub user_properties: Vec<(String, String)>,
    /// Payload Format Indicator 1: the publisher declared the payload UTF-8.
    pub utf8: bool,
    /// The payload.
    pub payload: Bytes,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

/// Appends the value of a record of `message` to `out`.
pub(crate) fn encode(message: &Message, publisher_ts_us: Option<u64>, out: &mut Vec<u8>) {
    let p = &message.properties;
    let mut flags = (message.qos as u8) & 0b11;
    if message.retain {
        flags |= F_RETAIN;
    }
    if publisher_ts_us.is_some() {
        flags |= F_PUBLISHER_TS;
    }
    if message.publisher.is_some() {
        flags |= F_CLIENT;
    }
    if p.content_type.is_some() {
        flags |= F_CONTENT_TYPE;
    }
    if !p.user_properties.is_empty() {
        flags |= F_PROPS;
    }
    if p.payload_format_indicator == Some(true) {
        flags |= F_UTF8;
    }
    out.reserve(2 + message.payload.len() + 16);
    out.push(VERSION);
    out.push(flags);
    if let Some(ts) = publisher_ts_us {
        out.extend_from_slice(&ts.to_be_bytes());
    }
    if let Some(c) = &message.publisher {
        put_str(out, c);
    }
    if let Some(ct) = &p.content_type {
        put_str(out, ct);
    }
    if !p.user_properties.is_empty() {
        let n = u16::try_from(p.user_properties.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        for up in p.user_properties.iter().take(usize::from(n)) {
            put_str(out, &up.0);
            put_str(out, &up.1);
        }
    }
    out.extend_from_slice(&message.payload);
}

/// Why a stored value does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("history record does not decode: {0}")]
pub struct DecodeError(&'static str);

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let s = self.b.get(self.at..self.at + n).ok_or(DecodeError("truncated"))?;
        self.at += n;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().map_err(|_| DecodeError("truncated"))?))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let n = usize::from(self.u16()?);
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError("a string is not UTF-8"))
    }
}

/// Decodes a value written by [`encode`]. `value` is shared by the payload without copying when it
/// is already a [`Bytes`].
pub(crate) fn decode(value: Bytes) -> Result<Record, DecodeError> {
    let mut r = Reader { b: &value, at: 0 };
    if r.take(1)?[0] != VERSION {
        return Err(DecodeError("unknown record version"));
    }
    let flags = r.take(1)?[0];
    let publisher_ts_us = if flags & F_PUBLISHER_TS != 0 {
        Some(u64::from_be_bytes(r.take(8)?.try_into().map_err(|_| DecodeError("truncated"))?))
    } else {
        None
    };
    let client_id = if flags & F_CLIENT != 0 { Some(r.string()?) } else { None };
    let content_type = if flags & F_CONTENT_TYPE != 0 { Some(r.string()?) } else { None };
    let mut user_properties = Vec::new();
    if flags & F_PROPS != 0 {
        for _ in 0..r.u16()? {
            user_properties.push((r.string()?, r.string()?));
        }
    }
    let at = r.at;
    Ok(Record {
        qos: flags & 0b11,
        retain: flags & F_RETAIN != 0,
        publisher_ts_us,
        client_id,
        content_type,
        user_properties,
        utf8: flags & F_UTF8 != 0,
        payload: value.slice(at..),
    })
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut n: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// A block being filled: consecutive messages of one topic.
#[derive(Debug)]
pub(crate) struct BlockWriter {
    pub(crate) first_ts: u64,
    buf: Vec<u8>,
    count: u16,
    record: Vec<u8>,
}

impl BlockWriter {
    pub(crate) fn new(first_ts: u64) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[BLOCK_VERSION, 0, 0]);
        Self { first_ts, buf, count: 0, record: Vec::new() }
    }

    /// Whether another message fits.
    pub(crate) fn has_room(&self) -> bool {
        self.count < BLOCK_POINTS && self.buf.len() < BLOCK_BYTES
    }

    /// Adds a message at `ts` (not before the block's first); the bytes it added.
    pub(crate) fn push(&mut self, ts: u64, message: &Message, publisher_ts_us: Option<u64>) -> usize {
        let before = self.buf.len();
        self.record.clear();
        encode(message, publisher_ts_us, &mut self.record);
        put_varint(&mut self.buf, ts - self.first_ts);
        put_varint(&mut self.buf, self.record.len() as u64);
        self.buf.extend_from_slice(&self.record);
        self.count += 1;
        self.buf.len() - before
    }

    /// The stored value.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.buf[1..3].copy_from_slice(&self.count.to_be_bytes());
        self.buf
    }
}

/// Calls `f` with the time and record bytes of each message of the block stored under `first_ts`,
/// in order; stops early when `f` returns `false`.
pub(crate) fn for_each_in_block(
    first_ts: u64,
    value: &[u8],
    mut f: impl FnMut(u64, &[u8]) -> bool,
) -> Result<(), DecodeError> {
    if value.first() != Some(&BLOCK_VERSION) {
        return Err(DecodeError("unknown block version"));
    }
    let count =
        u16::from_be_bytes(value.get(1..3).and_then(|b| b.try_into().ok()).ok_or(DecodeError("truncated"))?);
    let mut at = 3;
    for _ in 0..count {
        let delta = varint(value, &mut at).ok_or(DecodeError("truncated"))?;
        let len = varint(value, &mut at).ok_or(DecodeError("truncated"))? as usize;
        let record = value.get(at..at + len).ok_or(DecodeError("truncated"))?;
        at += len;
        if !f(first_ts.saturating_add(delta), record) {
            break;
        }
    }
    Ok(())
}

/// The payload alone of a stored value, without decoding the rest (for aggregates).
pub(crate) fn payload_of(value: &[u8]) -> Option<&[u8]> {
    let mut r = Reader { b: value, at: 0 };
    if r.take(1).ok()?[0] != VERSION {
        return None;
    }
    let flags = r.take(1).ok()?[0];
    if flags & F_PUBLISHER_TS != 0 {
        r.take(8).ok()?;
    }
    for flag in [F_CLIENT, F_CONTENT_TYPE] {
        if flags & flag != 0 {
            let n = usize::from(r.u16().ok()?);
            r.take(n).ok()?;
        }
    }
    if flags & F_PROPS != 0 {
        for _ in 0..r.u16().ok()? {
            for _ in 0..2 {
                let n = usize::from(r.u16().ok()?);
                r.take(n).ok()?;
            }
        }
    }
    value.get(r.at..)
}

#[cfg(test)]
mod tests {
    use super::*;
    use m2m_codec::QoS;
    use m2m_topic::TopicName;
    use std::sync::Arc;

    #[test]
    fn a_record_keeps_everything_it_was_given() {
        let mut m =
            Message::new(TopicName::try_from("a/b").unwrap(), &b"{\"t\":1}"[..], QoS::ExactlyOnce, true);
        m.publisher = Some(Arc::from("press-7"));
        m.properties.content_type = Some(Arc::from("application/json"));
        m.properties.payload_format_indicator = Some(true);
        m.properties.user_properties = vec![(Arc::from("ts"), Arc::from("17"))];
        let mut v = Vec::new();
        encode(&m, Some(17_000_000), &mut v);
        let r = decode(Bytes::from(v.clone())).unwrap();
        assert_eq!((r.qos, r.retain, r.utf8, r.publisher_ts_us), (2, true, true, Some(17_000_000)));
        assert_eq!(
            (r.client_id.as_deref(), r.content_type.as_deref()),
            (Some("press-7"), Some("application/json"))
        );
        assert_eq!(r.user_properties, [("ts".to_owned(), "17".to_owned())]);
        assert_eq!(&r.payload[..], b"{\"t\":1}");
        assert_eq!(payload_of(&v), Some(&b"{\"t\":1}"[..]));

        let bare = Message::new(TopicName::try_from("x").unwrap(), &b""[..], QoS::AtMostOnce, false);
        let mut v = Vec::new();
        encode(&bare, None, &mut v);
        assert_eq!(v, [1, 0], "two bytes for an empty QoS 0 message from the node");
        for cut in 0..v.len() {
            assert!(decode(Bytes::copy_from_slice(&v[..cut])).is_err());
        }
        assert_eq!(split_key(&key(7, 42)), Some((7, 42)));
    }

    #[test]
    fn a_block_gives_back_its_messages_in_order() {
        let m =
            |p: &'static [u8]| Message::new(TopicName::try_from("a").unwrap(), p, QoS::AtLeastOnce, false);
        let mut b = BlockWriter::new(1000);
        for (ts, p) in [(1000, &b"x"[..]), (1001, b"yy"), (90_000_000_000, b"")] {
            assert!(b.has_room());
            b.push(ts, &m(p), None);
        }
        let v = b.finish();
        let mut got = Vec::new();
        for_each_in_block(1000, &v, |ts, r| {
            got.push((ts, decode(Bytes::copy_from_slice(r)).unwrap().payload));
            true
        })
        .unwrap();
        assert_eq!(
            got,
            [(1000, Bytes::from("x")), (1001, Bytes::from("yy")), (90_000_000_000, Bytes::new())]
        );
        for cut in 0..v.len() {
            assert!(for_each_in_block(1000, &v[..cut], |_, _| true).is_err(), "cut at {cut}");
        }
    }
}
