//! Sans-IO MQTT session state: one [`Session`] per client id, whether the client is connected or not.
//!
//! # Layout
//! - [`Session`]: QoS 1/2 flows in both directions, packet identifiers, the inflight window (Receive
//!   Maximum), the per-session queue, topic aliases both ways, Maximum Packet Size, keep-alive deadline,
//!   and the client's subscriptions as it made them.
//! - [`Message`] and [`Delivery`]: what the router fans out, shared through `Arc`.
//!
//! Inputs are packets, deliveries and the current time; outputs are [`Action`]s for the IO shell.
//! It does no IO, reads no clock and knows nothing of other sessions: matching and fan-out belong to
//! `m2m-router`, sockets to `m2m-broker`.

mod budget;
mod message;
mod session;

pub use budget::{MemoryBudget, MESSAGE_OVERHEAD};
pub use message::{expiry_deadline, Delivery, Message};
pub use session::{
    check_topic_name, Action, DeliveryOutcome, DropReason, Limits, LinkParams, Permit, Persist,
    ProtocolError, Session, SubscribeRequest, SubscriptionEntry,
};
