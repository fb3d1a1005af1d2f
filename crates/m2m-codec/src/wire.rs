//! Data representations of MQTT 5.0 §1.5 (and 3.1.1 §1.5): integers, variable byte integers, UTF-8
//! strings and binary data, read from a frame and written to a [`Sink`].

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{DecodeError, EncodeError};

/// The largest value a variable byte integer can hold (MQTT 5.0 §1.5.5).
pub(crate) const MAX_VAR_INT: usize = 268_435_455;

/// Reads the fields of one packet body. Every read is bounds-checked; running out of bytes is
/// [`DecodeError::Truncated`], because the body length is known before parsing starts.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
    packet: &'static str,
}

impl Reader {
    /// A reader over `buf`, the body of a `packet` (its name, for errors).
    pub(crate) fn new(buf: Bytes, packet: &'static str) -> Self {
        Self { buf, packet }
    }

    /// The packet's name, for errors.
    pub(crate) fn packet(&self) -> &'static str {
        self.packet
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            Err(DecodeError::Truncated { packet: self.packet })
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    /// A variable byte integer (MQTT 5.0 §1.5.5). Non-minimal encodings are accepted.
    pub(crate) fn var_int(&mut self) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarIntTooLong)
    }

    /// The next `n` bytes, shared with the frame (no copy).
    pub(crate) fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    /// A sub-reader over the next `n` bytes (a property list).
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        Ok(Reader { buf: self.bytes(n)?, packet: self.packet })
    }

    /// Binary data: a two-byte length, then that many bytes (MQTT 5.0 §1.5.6).
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.bytes(usize::from(len))
    }

    /// A UTF-8 encoded string (MQTT 5.0 §1.5.4): valid UTF-8 (so no surrogates) without U+0000.
    pub(crate) fn string(&mut self) -> Result<Arc<str>, DecodeError> {
        let raw = self.binary()?;
        let s = std::str::from_utf8(&raw).map_err(DecodeError::InvalidUtf8)?;
        if s.contains('\0') {
            return Err(DecodeError::NullCharacter);
        }
        Ok(Arc::from(s))
    }

    /// Everything left (a PUBLISH payload), shared with the frame.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Checks that the body was consumed exactly.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes { packet: self.packet, extra: self.buf.len() })
        }
    }
}

/// Where an encoder writes: a real buffer, or a [`Counter`] that only measures and validates.
///
/// Encoding runs twice: once into a `Counter`, which records the first value that cannot be encoded,
/// then (only when that pass succeeded) into the buffer. Writers therefore never fail half-way.
pub(crate) trait Sink {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_slice(&mut self, v: &[u8]);
    /// Records a value that cannot be encoded.
    fn fail(&mut self, error: EncodeError);

    /// A variable byte integer (MQTT 5.0 §1.5.5), minimal encoding.
    fn put_var_int(&mut self, value: usize) {
        if value > MAX_VAR_INT {
            self.fail(EncodeError::VarIntTooLarge { value });
            return;
        }
        let mut v = value;
        loop {
            // Masked to 7 bits, so the cast cannot truncate.
            let mut byte = (v & 0x7F) as u8;
            v >>= 7;
            if v > 0 {
                byte |= 0x80;
            }
            self.put_u8(byte);
            if v == 0 {
                break;
            }
        }
    }

    /// Binary data with its two-byte length (MQTT 5.0 §1.5.6).
    fn put_binary(&mut self, v: &[u8]) {
        match u16::try_from(v.len()) {
            Ok(len) => {
                self.put_u16(len);
                self.put_slice(v);
            }
            Err(_) => self.fail(EncodeError::FieldTooLong { len: v.len() }),
        }
    }

    /// A UTF-8 encoded string with its two-byte length (MQTT 5.0 §1.5.4).
    fn put_str(&mut self, v: &str) {
        self.put_binary(v.as_bytes());
    }
}

impl Sink for BytesMut {
    fn put_u8(&mut self, v: u8) {
        BufMut::put_u8(self, v);
    }
    fn put_u16(&mut self, v: u16) {
        BufMut::put_u16(self, v);
    }
    fn put_u32(&mut self, v: u32) {
        BufMut::put_u32(self, v);
    }
    fn put_slice(&mut self, v: &[u8]) {
        self.extend_from_slice(v);
    }
    fn fail(&mut self, _error: EncodeError) {
        // Never reached: `encode` runs a `Counter` pass over the same writer first and stops on its
        // error, so the writing pass only sees values that can be encoded.
    }
}

/// A [`Sink`] that counts bytes and keeps the first error.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    pub(crate) len: usize,
    pub(crate) error: Option<EncodeError>,
}

impl Sink for Counter {
    fn put_u8(&mut self, _: u8) {
        self.len += 1;
    }
    fn put_u16(&mut self, _: u16) {
        self.len += 2;
    }
    fn put_u32(&mut self, _: u32) {
        self.len += 4;
    }
    fn put_slice(&mut self, v: &[u8]) {
        self.len += v.len();
    }
    fn fail(&mut self, error: EncodeError) {
        self.error.get_or_insert(error);
    }
}

/// How many bytes the minimal variable byte integer encoding of `value` takes.
pub(crate) fn var_int_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}
