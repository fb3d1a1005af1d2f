//! What the store keeps, as the rest of the node sees it.

use std::sync::Arc;

use m2m_session::{Delivery, Message, SubscriptionEntry};

/// A session that outlives its connection: what is needed to rebuild it after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The client id: the session's key.
    pub client_id: Arc<str>,
    /// Session Expiry Interval, seconds.
    pub expiry_interval: u32,
    /// When the client disconnected (unix milliseconds); `None` while it was online.
    pub disconnected_at: Option<u64>,
    /// The subscriptions, keyed by the filter as the client wrote it (`$share/...` included).
    pub subscriptions: Vec<(Arc<str>, SubscriptionEntry)>,
}

/// How far an outgoing QoS 1/2 message got with its packet id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent,
    /// PUBREL sent, waiting for PUBCOMP (QoS 2).
    Released,
}

/// A will message kept for a client.
#[derive(Debug, Clone, PartialEq)]
pub struct WillRecord {
    /// The message to publish.
    pub message: Message,
    /// Will Delay Interval, seconds.
    pub delay: u32,
    /// When to publish it (unix milliseconds) once the client is gone; `None` while it was connected.
    pub publish_at: Option<u64>,
}

/// Everything read back by [`Store::open`](crate::Store::open).
#[derive(Debug, Default)]
pub struct Recovered {
    /// Stored sessions, in client id order, with their deliveries and incoming packet ids.
    pub sessions: Vec<RecoveredSession>,
    /// Retained messages that have not expired, in topic order.
    pub retained: Vec<Message>,
    /// Wills, by client id (in client id order).
    pub wills: Vec<(Arc<str>, WillRecord)>,
    /// The sequence number to give the next stored delivery: 1 + the highest found, 1 if none.
    pub next_seq: u64,
    /// When the node was last known alive (unix milliseconds), from [`Batch::set_alive`](crate::Batch::set_alive).
    pub alive_at: Option<u64>,
    /// Messages (deliveries and retained) that had expired and were deleted.
    pub dropped_expired: u64,
}

/// One stored session with what belongs to it.
#[derive(Debug)]
pub struct RecoveredSession {
    /// The session itself.
    pub record: SessionRecord,
    /// Its stored deliveries, in sequence order.
    pub deliveries: Vec<StoredDelivery>,
    /// Incoming QoS 2 packet ids received and not yet released, ascending.
    pub incoming: Vec<u16>,
}

/// One stored delivery.
#[derive(Debug)]
pub struct StoredDelivery {
    /// Its sequence number.
    pub seq: u64,
    /// The delivery; `delivery.stored` is `Some(seq)`.
    pub delivery: Delivery,
    /// The packet id and phase, if it was in flight.
    pub flight: Option<(u16, Phase)>,
}
