//! Decode and encode of the hot-path packet: a QoS 1 PUBLISH with a 256-byte payload, for MQTT
//! 3.1.1 and 5.0.

use std::hint::black_box;
use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput};
use m2m_codec::{decode, encode, encoded_len, Packet, ProtocolVersion, Publish, PublishProperties, QoS};

const MAX: usize = 1 << 20;
const VERSIONS: [(ProtocolVersion, &str); 2] = [(ProtocolVersion::V311, "v311"), (ProtocolVersion::V5, "v5")];

fn publish_with_payload(len: usize) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "factory/line-1/press-4/temperature".into(),
        packet_id: NonZeroU16::new(42),
        properties: PublishProperties::default(),
        payload: Bytes::from(vec![0xA5; len]),
    })
}

fn encode_to_vec(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).expect("benchmark packet encodes");
    buf.to_vec()
}

fn decode_publish(c: &mut Criterion) {
    let packet = publish_with_payload(256);
    let mut group = c.benchmark_group("codec/decode");
    for (version, name) in VERSIONS {
        let wire = encode_to_vec(&packet, version);
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_function(format!("publish_256b/{name}"), |b| {
            b.iter_batched(
                || BytesMut::from(&wire[..]),
                |mut buf| decode(black_box(&mut buf), version, MAX),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn encode_publish(c: &mut Criterion) {
    let packet = publish_with_payload(256);
    let mut group = c.benchmark_group("codec/encode");
    for (version, name) in VERSIONS {
        group.throughput(Throughput::Bytes(encoded_len(&packet, version) as u64));
        let mut buf = BytesMut::with_capacity(4096);
        group.bench_function(format!("publish_256b/{name}"), |b| {
            b.iter(|| {
                buf.clear();
                encode(black_box(&packet), version, &mut buf)
            })
        });
    }
    group.finish();
}

// What `criterion_group!`/`criterion_main!` expand to, written out because the macros generate an
// undocumented `pub fn`, which the workspace's `missing_docs` lint refuses.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    decode_publish(&mut c);
    encode_publish(&mut c);
    c.final_summary();
}
