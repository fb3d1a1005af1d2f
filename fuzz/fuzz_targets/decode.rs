//! Decodes arbitrary bytes as a stream of packets for each protocol version. Whatever decodes must
//! re-encode and decode again to the same packet.
//!
//! Run with `cargo +nightly fuzz run decode` from the workspace root.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use m2m_codec::{decode, encode, encoded_len, ProtocolVersion};

fuzz_target!(|data: &[u8]| {
    for version in [ProtocolVersion::V31, ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut input = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut input, version, usize::MAX) {
            let mut wire = BytesMut::new();
            encode(&packet, version, &mut wire).expect("a decoded packet re-encodes");
            assert_eq!(wire.len(), encoded_len(&packet, version));
            let again = decode(&mut wire, version, usize::MAX)
                .expect("a re-encoded packet decodes")
                .expect("a re-encoded packet is complete");
            assert_eq!(again, packet);
            assert!(wire.is_empty(), "the re-encoded packet is consumed exactly");
        }
    }
});
