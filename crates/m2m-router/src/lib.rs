//! The router: one task that owns subscriptions, retained messages, sessions of absent clients, wills
//! and fan-out.
//!
//! # Layout
//! - [`Router`]: the state and its `run` loop, fed by [`Command`]s over a bounded channel.
//! - [`RouterHandle`]: what connections hold to reach it.
//! - [`Metrics`]: node-wide atomic counters, shared with connections.
//!
//! Connections own their [`m2m_session::Session`] while the client is connected and hand it back with
//! [`Command::Disconnected`]; the router queues into absent sessions, fires will-delay and
//! session-expiry timers, and publishes `$SYS/broker/...` statistics. It does no network IO.
//!
//! A full mailbox is never waited on: QoS 0 and QoS 1/2 deliveries to a connection that cannot keep up
//! are dropped and counted (`messages_dropped`), so one slow subscriber cannot stall the others.

mod metrics;
mod router;

pub use metrics::Metrics;
pub use router::{
    ClientLink, Command, ConnectReply, ConnectRequest, Disconnected, PendingWill, Router, RouterConfig,
    RouterGone, RouterHandle, RouterStats, SessionKey,
};
