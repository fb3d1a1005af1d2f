//! Decodes arbitrary bytes as a stream of packets for each protocol version (MQTT 3.1, 3.1.1 and
//! 5.0) and checks what the codec promises:
//!
//! - decode → encode → decode gives the same packet, re-encoded to exactly [`encoded_len`] bytes and
//!   consumed exactly;
//! - under a size limit (taken from the first two input bytes, so that small limits are common), a
//!   packet that decodes is at most that large, a packet refused as too large is larger, and the
//!   limit decides nothing else: the same bytes decode to the same packet without a limit;
//! - the decoder never consumes bytes when it asks for more (`Ok(None)`).
//!
//! Run with `cargo +nightly fuzz run decode` from the workspace root, or `scripts/fuzz.sh`.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use m2m_codec::{decode, encode, encoded_len, DecodeError, ProtocolVersion};

fuzz_target!(|data: &[u8]| {
    let Some((limit, stream)) = data.split_first_chunk::<2>() else { return };
    let limit = usize::from(u16::from_le_bytes(*limit));
    for version in [ProtocolVersion::V31, ProtocolVersion::V311, ProtocolVersion::V5] {
        roundtrip(stream, version);
        limited(stream, version, limit);
    }
});

/// Every packet that decodes without a limit survives encode → decode unchanged.
fn roundtrip(stream: &[u8], version: ProtocolVersion) {
    let mut input = BytesMut::from(stream);
    loop {
        let before = input.len();
        let packet = match decode(&mut input, version, usize::MAX) {
            Ok(Some(packet)) => packet,
            Ok(None) => {
                assert_eq!(input.len(), before, "asking for more bytes consumes none");
                return;
            }
            Err(_) => return,
        };
        let mut wire = BytesMut::new();
        encode(&packet, version, &mut wire).expect("a decoded packet re-encodes");
        assert_eq!(wire.len(), encoded_len(&packet, version), "encoded_len of {packet:?}");
        let again = decode(&mut wire, version, usize::MAX)
            .expect("a re-encoded packet decodes")
            .expect("a re-encoded packet is complete");
        assert_eq!(again, packet);
        assert!(wire.is_empty(), "the re-encoded packet is consumed exactly");
    }
}

/// A size limit refuses exactly the packets larger than it and changes nothing else.
fn limited(stream: &[u8], version: ProtocolVersion, limit: usize) {
    let (mut with_limit, mut without) = (BytesMut::from(stream), BytesMut::from(stream));
    loop {
        let before = with_limit.len();
        match decode(&mut with_limit, version, limit) {
            Ok(Some(packet)) => {
                let consumed = before - with_limit.len();
                assert!(consumed <= limit, "a {consumed}-byte packet passed a {limit}-byte limit");
                let same = decode(&mut without, version, usize::MAX);
                assert_eq!(same, Ok(Some(packet)), "the limit changed the packet");
            }
            Ok(None) => return,
            Err(DecodeError::PacketTooLarge { len, max }) => {
                assert_eq!(max, limit);
                assert!(len > limit, "a {len}-byte packet refused under a {limit}-byte limit");
                return;
            }
            Err(e) => {
                let without_limit = decode(&mut without, version, usize::MAX);
                assert_eq!(without_limit, Err(e), "the limit changed the error");
                return;
            }
        }
    }
}
