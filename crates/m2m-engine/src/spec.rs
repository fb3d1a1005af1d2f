//! Rules as users write and store them: an id, the SQL, the actions, and whether it is enabled.

use serde::{Deserialize, Serialize};

/// A rule as stored and managed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSpec {
    /// Its name: 1 to 64 of `A-Z a-z 0-9 _ - .`.
    pub id: String,
    /// The query (`SELECT ... FROM ... WHERE ...`).
    pub sql: String,
    /// What to do with each output, in order.
    #[serde(default)]
    pub actions: Vec<ActionSpec>,
    /// Whether it runs.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// A time window over the last seconds of one field per topic, read in the SQL as `win.avg`,
    /// `win.count`, `win.min`, `win.max`, `win.sum`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,
    /// A dead-man rule: when nothing arrives on `filter` (from a client, or on a topic) for
    /// `after_secs`, the rule runs on `$events/silent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silence: Option<SilenceSpec>,
}

/// A sliding time window, per topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// The number the window keeps (`payload.temp`).
    pub field: String,
    /// How far back, in seconds (1 to 86 400).
    pub secs: u64,
}

/// What a dead-man rule watches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceSpec {
    /// The messages that keep it quiet.
    pub filter: String,
    /// `clientid` (each publisher must keep publishing) or `topic` (each topic seen).
    #[serde(default = "per_client")]
    pub per: String,
    /// Seconds of silence that make it fire (once, until messages come again).
    pub after_secs: u64,
}

fn per_client() -> String {
    "clientid".into()
}

fn yes() -> bool {
    true
}

fn one() -> u8 {
    1
}

/// One action of a rule. Text fields are templates: `${name}` is replaced by the output column
/// `name` (`${payload.a}` reaches into a JSON column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionSpec {
    /// Publishes a message, as the node.
    Republish {
        /// The topic (a template).
        topic: String,
        /// The payload (a template); absent: the output as a JSON object.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<String>,
        /// QoS 0, 1 or 2.
        #[serde(default = "one")]
        qos: u8,
        /// RETAIN.
        #[serde(default)]
        retain: bool,
        /// User properties (values are templates).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        user_properties: Vec<(String, String)>,
    },
    /// POSTs the output (or `body`) as JSON to a URL.
    Webhook {
        /// `http://host[:port]/path` or `https://…`.
        url: String,
        /// For https: a PEM file of the certificate authorities to trust instead of the public roots.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca: Option<String>,
        /// Extra headers.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        headers: Vec<(String, String)>,
        /// A body template; absent: the output as a JSON object.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
        /// Per attempt, in milliseconds (default 5 000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
        /// Retries after the first attempt (default 5).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_retries: Option<u32>,
    },
    /// Quarantines a client.
    Quarantine {
        /// The client id (a template; default `${clientid}`).
        #[serde(default = "clientid")]
        client_id: String,
        /// `ban` or `isolate`.
        mode: String,
        /// Why (a template).
        reason: String,
        /// Lifts itself after this many seconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_secs: Option<u64>,
    },
    /// Sends the output to an external broker through the node's uplink `uplink`, on `topic` there
    /// (whatever the uplink's routes say), kept in its outbox while the broker is unreachable.
    Forward {
        /// The uplink's name (`[[uplinks]]`).
        uplink: String,
        /// The topic at the remote broker (a template).
        topic: String,
        /// The payload (a template); absent: the output as a JSON object.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<String>,
        /// QoS towards the remote (0 or 1; default 1).
        #[serde(default = "one")]
        qos: u8,
        /// RETAIN at the remote.
        #[serde(default)]
        retain: bool,
    },
    /// Stores the output in the history as a message on `topic` (a derived series).
    History {
        /// The topic (a template).
        topic: String,
        /// The payload (a template); absent: the output as a JSON object.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<String>,
    },
}

fn clientid() -> String {
    "${clientid}".into()
}

impl ActionSpec {
    /// Its type, as written.
    pub fn kind(&self) -> &'static str {
        match self {
            ActionSpec::Republish { .. } => "republish",
            ActionSpec::Webhook { .. } => "webhook",
            ActionSpec::Quarantine { .. } => "quarantine",
            ActionSpec::History { .. } => "history",
            ActionSpec::Forward { .. } => "forward",
        }
    }
}

/// Why an id is not a rule id, if it is not.
pub fn id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() || id.len() > 64 {
        return Some("a rule id has 1 to 64 characters");
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) {
        return Some("a rule id has only letters, digits, '_', '-' and '.'");
    }
    None
}
