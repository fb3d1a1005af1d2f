//! The built-in sink of `m2m bench sink`: a TCP server inside the tool that answers CONNECT with a
//! CONNACK and then only counts the PUBLISH packets it reads. It costs almost nothing per message,
//! so the rate the bench publishers reach against it is the ceiling of the tool itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::BytesMut;
use m2m_codec::{decode, Packet, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// CONNACK, 3.1.1 §3.2: no session present, return code 0 (accepted).
const CONNACK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

/// Bytes read from a socket at once.
const READ_CHUNK: usize = 1 << 20;

/// A running sink: where it listens and what it counted.
pub(crate) struct Sink {
    pub(crate) addr: SocketAddr,
    /// PUBLISH packets read on every connection so far.
    pub(crate) published: Arc<AtomicU64>,
    /// Connections that ended with an error.
    pub(crate) errors: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl Sink {
    /// Listens on a free loopback port.
    pub(crate) async fn start() -> anyhow::Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("cannot bind the sink")?;
        let addr = listener.local_addr()?;
        let published = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn({
            let (published, errors) = (published.clone(), errors.clone());
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (published, errors) = (published.clone(), errors.clone());
                    tokio::spawn(async move {
                        if serve(stream, &published).await.is_err() {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            }
        });
        Ok(Sink { addr, published, errors, accept })
    }

    /// Stops accepting connections (those open are served until their client closes them).
    pub(crate) fn stop(&self) {
        self.accept.abort();
    }
}

/// One client: CONNECT, CONNACK, then count PUBLISH packets until the client closes.
async fn serve(mut stream: TcpStream, published: &AtomicU64) -> anyhow::Result<()> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        match decode(&mut buf, ProtocolVersion::V311, usize::MAX)? {
            Some(Packet::Connect(_)) => break,
            Some(other) => bail!("expected CONNECT, got {}", other.name()),
            None if stream.read_buf(&mut buf).await? == 0 => return Ok(()),
            None => {}
        }
    }
    stream.write_all(&CONNACK).await?;
    let mut counter = FrameCounter::default();
    published.fetch_add(counter.feed(&buf)?, Ordering::Relaxed);
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        let publishes = counter.feed(&chunk[..n])?;
        if publishes > 0 {
            published.fetch_add(publishes, Ordering::Relaxed);
        }
    }
}

/// Counts PUBLISH packets in a byte stream from their fixed headers alone (3.1.1 §2.2), skipping
/// every body: the stream may be cut anywhere between two calls to [`FrameCounter::feed`].
///
/// ```text
///   byte 1: packet type (bits 7-4, PUBLISH = 3) and flags
///   byte 2…: remaining length, 7 bits a byte, least significant first, bit 7 = more bytes follow
///   then `remaining length` bytes of body
/// ```
#[derive(Debug, Default)]
struct FrameCounter {
    /// Body bytes of the current packet still to skip.
    skip: usize,
    /// The fixed header being read: its packet type, and the remaining length so far.
    header: Option<Header>,
}

#[derive(Debug)]
struct Header {
    kind: u8,
    len: usize,
    shift: u32,
}

impl FrameCounter {
    /// Reads `bytes`, returning how many PUBLISH headers ended in them.
    ///
    /// # Errors
    ///
    /// A remaining length of more than four bytes (§2.2.3).
    fn feed(&mut self, mut bytes: &[u8]) -> anyhow::Result<u64> {
        let mut publishes = 0;
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let b = bytes[0];
            bytes = &bytes[1..];
            match &mut self.header {
                None => self.header = Some(Header { kind: b >> 4, len: 0, shift: 0 }),
                Some(h) => {
                    h.len |= usize::from(b & 0x7f) << h.shift;
                    h.shift += 7;
                    if b & 0x80 == 0 {
                        publishes += u64::from(h.kind == 3);
                        self.skip = h.len;
                        self.header = None;
                    } else if h.shift >= 28 {
                        bail!("malformed remaining length");
                    }
                }
            }
        }
        Ok(publishes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use m2m_codec::{encode, Publish, PublishProperties, QoS};

    use super::*;

    fn stream() -> Vec<u8> {
        let mut out = BytesMut::new();
        for (i, size) in [0usize, 64, 200, 20_000].into_iter().enumerate() {
            let publish = Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: Arc::from(format!("t/{i}")),
                packet_id: None,
                properties: PublishProperties::default(),
                payload: Bytes::from(vec![b'x'; size]),
            };
            encode(&Packet::Publish(publish), ProtocolVersion::V311, &mut out).expect("encode");
            // PINGREQ between publishes: a packet with an empty body that is not counted.
            out.extend_from_slice(&[0xC0, 0x00]);
        }
        out.to_vec()
    }

    #[test]
    fn counts_every_publish_and_nothing_else_at_every_split_point() {
        let wire = stream();
        for split in 0..wire.len() {
            let mut counter = FrameCounter::default();
            let n = counter.feed(&wire[..split]).expect("first part")
                + counter.feed(&wire[split..]).expect("rest");
            assert_eq!(n, 4, "split at {split}");
            assert!(counter.header.is_none() && counter.skip == 0, "split at {split}");
        }
    }

    #[test]
    fn counts_a_byte_at_a_time() {
        let mut counter = FrameCounter::default();
        let n: u64 = stream().iter().map(|b| counter.feed(std::slice::from_ref(b)).expect("byte")).sum();
        assert_eq!(n, 4);
    }

    #[test]
    fn a_remaining_length_of_five_bytes_is_refused() {
        assert!(FrameCounter::default().feed(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
    }
}
