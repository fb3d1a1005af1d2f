//! What a rule is evaluated on: one message or one event, borrowed from the caller.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::EventKind;

/// One message or event, as a rule sees it. Everything is borrowed: building an `Input` costs nothing.
///
/// Build one with [`Input::message`] or [`Input::event`] and set the other fields directly:
///
/// ```
/// use m2m_rules::Input;
///
/// let mut input = Input::message("factory/line1/temp", br#"{"temp": 85}"#, 1_700_000_000_000);
/// input.clientid = Some("sensor-7");
/// input.qos = 1;
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Input<'a> {
    /// The topic the message was published on; for events, the topic the event is about (the filter of
    /// `session_subscribed`, the topic of `message_dropped`), or empty.
    pub topic: &'a str,
    /// The payload as published. Parsed as JSON only if the rule reads `payload`, at most once per
    /// evaluation and only as far as the rule's paths go; a payload that is not JSON is text (UTF-8)
    /// or bytes.
    pub payload: &'a [u8],
    /// Client identifier of the publisher or of the client the event is about.
    pub clientid: Option<&'a str>,
    /// User name the client authenticated with.
    pub username: Option<&'a str>,
    /// The client's IP address, as text.
    pub peerhost: Option<&'a str>,
    /// QoS of the PUBLISH (0, 1 or 2).
    pub qos: u8,
    /// The PUBLISH's retain flag.
    pub retain: bool,
    /// When the message was received or the event happened, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// "Now" for `now_timestamp()` and `now_rfc3339()`, in milliseconds since the Unix epoch. The caller
    /// owns the clock, so evaluation stays deterministic; the constructors set it to `timestamp_ms`.
    pub now_ms: u64,
    /// MQTT 5 user properties, in the order they were sent (a name may repeat).
    pub user_properties: &'a [(Arc<str>, Arc<str>)],
    /// MQTT 5 content type.
    pub content_type: Option<&'a str>,
    /// The event, for rules on `$events/…`; `None` for a published message.
    pub event: Option<EventKind>,
    /// The event's own fields, readable in the rule by name (`reason`, `filter`, …).
    pub event_fields: Option<&'a Map<String, Value>>,
    /// The statistics of the rule's time window over this topic (`count`, `avg`, `min`, `max`,
    /// `sum`, `secs`), read as `win.avg` …; set by an engine that keeps windows, else `None`
    /// (and `win.*` is NULL).
    pub window: Option<&'a Map<String, Value>>,
}

impl<'a> Input<'a> {
    /// A published message with no client information, QoS 0, not retained, no properties.
    pub fn message(topic: &'a str, payload: &'a [u8], timestamp_ms: u64) -> Self {
        Input {
            topic,
            payload,
            clientid: None,
            username: None,
            peerhost: None,
            qos: 0,
            retain: false,
            timestamp_ms,
            now_ms: timestamp_ms,
            user_properties: &[],
            content_type: None,
            event: None,
            event_fields: None,
            window: None,
        }
    }

    /// An event with its fields; topic and payload empty.
    pub fn event(kind: EventKind, fields: &'a Map<String, Value>, timestamp_ms: u64) -> Self {
        Input { event: Some(kind), event_fields: Some(fields), ..Input::message("", &[], timestamp_ms) }
    }
}
