//! MQTT 3.1.1 and 5.0 control packets: one packet model, sans-IO encode and decode on `bytes`.
//!
//! # Layout
//! - [`packet`]: the types ([`Packet`], [`Publish`], [`Connect`], properties, ...).
//! - [`reason`]: [`ReasonCode`] and the 3.1.1 CONNACK mapping.
//! - [`decode()`] / [`encode()`] / [`encoded_len()`]: the wire format of MQTT 3.1 (`MQIsdp`, level 3),
//!   3.1.1 and 5.0 (MQTT 5.0 §1.5 and §2–3, 3.1.1 §1.5 and §2–3).
//! - [`DecodeError`] / [`EncodeError`]: what went wrong; [`DecodeError::reason_code`] maps a decoding
//!   failure to the reason code to answer with, in one place.
//!
//! The codec never does IO, never reads a clock and never allocates for a payload: a PUBLISH payload
//! is a slice of the input `Bytes`. It does not know topic wildcard rules (see `m2m-topic`) nor session
//! state (see `m2m-session`).
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use m2m_codec::{decode, encode, Packet, ProtocolVersion};
//!
//! let mut buf = BytesMut::new();
//! encode(&Packet::PingReq, ProtocolVersion::V5, &mut buf)?;
//! assert_eq!(&buf[..], [0xC0, 0x00]);
//! assert_eq!(decode(&mut buf, ProtocolVersion::V5, 1024)?, Some(Packet::PingReq));
//! assert!(buf.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod decode;
mod encode;
mod error;
pub mod packet;
mod properties;
pub mod reason;
mod wire;

pub use decode::decode;
pub use encode::{encode, encoded_len};
pub use error::{DecodeError, EncodeError};

pub use packet::{
    Ack, AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, ConnectProperties,
    Disconnect, DisconnectProperties, Packet, PacketId, ProtocolVersion, Publish, PublishProperties, QoS,
    RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, UserProperty, Will,
    WillProperties,
};
pub use reason::ReasonCode;
