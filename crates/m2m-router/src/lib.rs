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
//! A full mailbox is never waited on. A QoS 0 delivery to a connection that cannot keep up is dropped
//! and counted (`messages_dropped`); a QoS 1/2 delivery waits in that session's overflow (at most
//! `max_queued`) and the publisher is throttled through its [`LinkFlow`] until the subscriber catches
//! up, so one slow subscriber slows only those who publish to it.

mod interest;
mod mailbox;
mod metrics;
mod router;

pub use interest::Interest;
pub use mailbox::{Mailbox, PushError};
pub use metrics::Metrics;
pub use router::{
    apply_persist, emit_event, observe_reports, session_record, wants_event, ClientLink, Command,
    ConnectReply, ConnectRequest, Disconnected, LinkFlow, NodeEvent, NodeEventKind, PendingWill, Router,
    RouterConfig, RouterGone, RouterHandle, RouterStats, SessionKey, Tap,
};
