//! Application messages as the broker carries them between sessions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use m2m_codec::{PublishProperties, QoS, Will};
use m2m_topic::TopicName;

/// A published application message, shared by every subscriber it is delivered to.
///
/// Invariant: `properties.topic_alias` is `None` and `properties.subscription_identifiers` is empty;
/// both are per-connection and per-subscriber and are set when a copy is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic the message was published to.
    pub topic: TopicName,
    /// Payload, shared without copying.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// RETAIN flag as published.
    pub retain: bool,
    /// Properties to forward (payload format, content type, response topic, user properties, ...).
    pub properties: PublishProperties,
    /// When the message expires, from its Message Expiry Interval at receipt.
    pub expires_at: Option<Instant>,
    /// Client id of the publisher, for No Local; `None` for messages the node makes itself.
    pub publisher: Option<Arc<str>>,
    /// The node it came from through the mesh; `None` when it was published on this node. Not kept in
    /// the store.
    pub origin: Option<Arc<str>>,
}

impl Message {
    /// Builds a message with no properties, as the node publishes its own (`$SYS`) messages.
    pub fn new(topic: TopicName, payload: impl Into<Bytes>, qos: QoS, retain: bool) -> Self {
        Self {
            topic,
            payload: payload.into(),
            qos,
            retain,
            properties: PublishProperties::default(),
            expires_at: None,
            publisher: None,
            origin: None,
        }
    }

    /// Builds the message a will turns into when it is published.
    pub fn from_will(topic: TopicName, will: &Will, publisher: Arc<str>, now: Instant) -> Self {
        let p = &will.properties;
        let properties = PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
            ..PublishProperties::default()
        };
        Self {
            topic,
            payload: will.payload.clone(),
            qos: will.qos,
            retain: will.retain,
            expires_at: expiry_deadline(properties.message_expiry_interval, now),
            properties,
            publisher: Some(publisher),
            origin: None,
        }
    }

    /// What the message counts for in the node's [`crate::MemoryBudget`]: its payload, its topic and
    /// [`crate::MESSAGE_OVERHEAD`].
    pub fn held_bytes(&self) -> usize {
        self.payload.len() + self.topic.as_str().len() + crate::MESSAGE_OVERHEAD
    }

    /// Whether the message has expired at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The Message Expiry Interval to forward at `now`: the time left, rounded up (MQTT 5.0 §3.3.2.3.3).
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX).max(1)
        })
    }
}

/// The deadline for a Message Expiry Interval received at `now`.
pub fn expiry_deadline(interval: Option<u32>, now: Instant) -> Option<Instant> {
    interval.and_then(|secs| now.checked_add(Duration::from_secs(u64::from(secs))))
}

/// One copy of a message for one subscriber, as the router decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The shared message.
    pub message: Arc<Message>,
    /// QoS for this subscriber: the lower of the message's and the subscription's.
    pub qos: QoS,
    /// RETAIN flag to send (Retain As Published, or a retained message sent on subscribe).
    pub retain: bool,
    /// Identifiers of every matching subscription that had one.
    pub subscription_ids: Vec<u32>,
    /// Its sequence number in the store, when it is kept there (QoS 1/2 to a session that outlives its
    /// connection); the session reports what becomes of it by this number.
    pub stored: Option<u64>,
}
