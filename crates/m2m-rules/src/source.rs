//! What a rule listens to: topic filters and client events, named in its FROM clause.

use std::fmt;

use m2m_topic::TopicFilter;

/// One item of a rule's FROM clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Messages published on topics that match the filter.
    Topic(TopicFilter),
    /// A client or broker event, written `"$events/<name>"`.
    Event(EventKind),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Topic(filter) => f.write_str(filter.as_str()),
            Source::Event(kind) => f.write_str(kind.source()),
        }
    }
}

/// The events a rule can listen to. Each is written in FROM as `"$events/<name>"`, e.g.
/// `FROM "$events/client_connected"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// A client completed CONNECT.
    ClientConnected,
    /// A client's connection ended.
    ClientDisconnected,
    /// A session added a subscription.
    SessionSubscribed,
    /// A session removed a subscription.
    SessionUnsubscribed,
    /// A message was dropped (queue full, expired, no route…).
    MessageDropped,
    /// A message was delivered to a subscriber.
    MessageDelivered,
    /// A client was put in quarantine.
    Quarantined,
    /// A client was released from quarantine.
    Released,
    /// Messages on a watched filter stopped for longer than a rule allows (a dead-man rule).
    Silent,
}

/// The prefix of event sources in FROM.
pub(crate) const EVENT_PREFIX: &str = "$events/";

impl EventKind {
    /// Every event, in the order of the documentation.
    pub const ALL: [EventKind; 9] = [
        EventKind::ClientConnected,
        EventKind::ClientDisconnected,
        EventKind::SessionSubscribed,
        EventKind::SessionUnsubscribed,
        EventKind::MessageDropped,
        EventKind::MessageDelivered,
        EventKind::Quarantined,
        EventKind::Released,
        EventKind::Silent,
    ];

    /// The event's name, e.g. `client_connected`; also the value of the `event` field.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ClientConnected => "client_connected",
            EventKind::ClientDisconnected => "client_disconnected",
            EventKind::SessionSubscribed => "session_subscribed",
            EventKind::SessionUnsubscribed => "session_unsubscribed",
            EventKind::MessageDropped => "message_dropped",
            EventKind::MessageDelivered => "message_delivered",
            EventKind::Quarantined => "quarantined",
            EventKind::Released => "released",
            EventKind::Silent => "silent",
        }
    }

    /// The event as written in FROM, e.g. `$events/client_connected`.
    pub fn source(self) -> &'static str {
        match self {
            EventKind::ClientConnected => "$events/client_connected",
            EventKind::ClientDisconnected => "$events/client_disconnected",
            EventKind::SessionSubscribed => "$events/session_subscribed",
            EventKind::SessionUnsubscribed => "$events/session_unsubscribed",
            EventKind::MessageDropped => "$events/message_dropped",
            EventKind::MessageDelivered => "$events/message_delivered",
            EventKind::Quarantined => "$events/quarantined",
            EventKind::Released => "$events/released",
            EventKind::Silent => "$events/silent",
        }
    }

    /// The event named by a FROM source such as `$events/client_connected`; `None` for anything else.
    pub fn from_source(source: &str) -> Option<EventKind> {
        let name = source.strip_prefix(EVENT_PREFIX)?;
        EventKind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// "$events/client_connected, $events/client_disconnected, …" for error messages.
    pub(crate) fn source_list() -> String {
        EventKind::ALL.iter().map(|k| k.source()).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_round_trips_through_its_source_name() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_source(kind.source()), Some(kind));
            assert_eq!(kind.source(), format!("$events/{kind}"));
        }
        assert_eq!(EventKind::from_source("$events/nope"), None);
        assert_eq!(EventKind::from_source("client_connected"), None);
    }
}
