//! MQTT 3.1.1 and 5.0 control packets: one packet model, sans-IO encode and decode on `bytes`.
//!
//! # Layout
//! - [`packet`]: the types ([`Packet`], [`Publish`], [`Connect`], properties, ...).
//! - [`reason`]: [`ReasonCode`] and the 3.1.1 CONNACK mapping.
//! - [`decode`] / [`encode`]: the wire format, MQTT 5.0 §2–3 and 3.1.1 §2–3.
//!
//! The codec never does IO, never reads a clock and never allocates for a payload: a PUBLISH payload
//! is a slice of the input `Bytes`. It does not know topic wildcard rules (see `m2m-topic`) nor session
//! state (see `m2m-session`).

pub mod packet;
pub mod reason;

pub use packet::{
    Ack, AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, ConnectProperties,
    Disconnect, DisconnectProperties, Packet, PacketId, ProtocolVersion, Publish, PublishProperties,
    QoS, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, UserProperty,
    Will, WillProperties,
};
pub use reason::ReasonCode;
