//! `GET /metrics`: the node's counters in the Prometheus text exposition format (version 0.0.4).
//!
//! ```text
//! # HELP m2m_messages_received_total PUBLISH packets received from clients.
//! # TYPE m2m_messages_received_total counter
//! m2m_messages_received_total{qos="0"} 12
//! ```

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use m2m_broker::Metrics;
use m2m_store::Latency;

use crate::node::{quarantined, router_stats};
use crate::ApiState;

/// The content type of the text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metrics page being written. Every family is written whole (its `# HELP`, `# TYPE` and
/// samples together), once.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    out: String,
}

/// A sample value: counters as integers, everything else as a float.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sample {
    Int(u64),
    Float(f64),
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Sample::Int(n) => write!(f, "{n}"),
            Sample::Float(x) if x.is_nan() => f.write_str("NaN"),
            Sample::Float(x) if x.is_infinite() => f.write_str(if x > 0.0 { "+Inf" } else { "-Inf" }),
            Sample::Float(x) => write!(f, "{x}"),
        }
    }
}

impl Exposition {
    /// Writes a family's `# HELP` and `# TYPE` lines.
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// A family of one sample without labels.
    pub(crate) fn single(&mut self, name: &str, kind: &str, help: &str, value: Sample) {
        self.header(name, kind, help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    /// A family of samples with one label each; nothing at all when there are none.
    pub(crate) fn labelled(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (String, Sample)>,
    ) {
        let mut samples = samples.into_iter().peekable();
        if samples.peek().is_none() {
            return;
        }
        self.header(name, kind, help);
        for (value_of_label, value) in samples {
            let _ = writeln!(self.out, "{name}{{{label}=\"{}\"}} {value}", escape_label(&value_of_label));
        }
    }

    /// A histogram in seconds from a latency snapshot in milliseconds.
    pub(crate) fn histogram(&mut self, name: &str, help: &str, latency: &Latency) {
        self.header(name, "histogram", help);
        for (bound_ms, count) in latency.buckets() {
            let _ = writeln!(self.out, "{name}_bucket{{le=\"{}\"}} {count}", seconds(bound_ms));
        }
        let _ = writeln!(self.out, "{name}_bucket{{le=\"+Inf\"}} {}", latency.count);
        let _ = writeln!(self.out, "{name}_sum {}", Sample::Float(latency.sum_ms / 1000.0));
        let _ = writeln!(self.out, "{name}_count {}", latency.count);
    }

    /// The page.
    pub(crate) fn finish(self) -> String {
        self.out
    }
}

/// A bound in milliseconds as seconds, without float noise (`0.1` ms is `0.0001`).
fn seconds(ms: f64) -> String {
    let s = format!("{:.7}", ms / 1000.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_owned()
}

/// A label value with `\`, `"` and line feeds escaped.
fn escape_label(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// A help text with `\` and line feeds escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', r"\\").replace('\n', r"\n")
}

/// The counters of one QoS each, labelled `qos`.
fn by_qos(counters: &[std::sync::atomic::AtomicU64; 3]) -> impl Iterator<Item = (String, Sample)> + '_ {
    counters.iter().enumerate().map(|(qos, c)| (qos.to_string(), Sample::Int(Metrics::get(c))))
}

/// A family of per-item samples: its name, type, help, and how an item gives its value.
type Family<T, V> = (&'static str, &'static str, &'static str, fn(&T) -> V);

/// `GET /metrics`
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "metrics",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4: counters, gauges and the store's commit latency histogram, named `m2m_...`", content_type = "text/plain", body = String))
)]
pub(crate) async fn exposition(State(state): State<ApiState>) -> Response {
    let page = render(&state).await;
    ([(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))], page).into_response()
}

/// Writes every family the node has.
async fn render(state: &ApiState) -> String {
    use Sample::{Float, Int};
    let mut e = Exposition::default();
    let zero = Metrics::default();
    let m = state.broker.metrics.as_deref().unwrap_or(&zero);
    let get = |c: &std::sync::atomic::AtomicU64| Int(Metrics::get(c));
    let uptime = state.broker.started.elapsed().map_or(0.0, |d| d.as_secs_f64());
    e.single("m2m_uptime_seconds", "gauge", "Seconds since the node started.", Float(uptime.floor()));
    e.single("m2m_connections", "gauge", "Clients connected now.", get(&m.connections_current));
    e.single(
        "m2m_connections_total",
        "counter",
        "Connections accepted (CONNACK success).",
        get(&m.connections_total),
    );
    e.single(
        "m2m_connections_rejected_total",
        "counter",
        "Connections refused or closed for bad input, protocol errors or limits.",
        get(&m.connections_rejected),
    );
    e.labelled(
        "m2m_messages_received_total",
        "counter",
        "PUBLISH packets received from clients, by QoS.",
        "qos",
        by_qos(&m.messages_received_by_qos),
    );
    e.labelled(
        "m2m_messages_sent_total",
        "counter",
        "PUBLISH packets sent to clients, by QoS.",
        "qos",
        by_qos(&m.messages_sent_by_qos),
    );
    e.single(
        "m2m_messages_dropped_total",
        "counter",
        "Deliveries dropped: full queues, expired messages, QoS 0 for offline sessions.",
        get(&m.messages_dropped),
    );
    e.single("m2m_bytes_received_total", "counter", "Bytes read from clients.", get(&m.bytes_received));
    e.single("m2m_bytes_sent_total", "counter", "Bytes written to clients.", get(&m.bytes_sent));
    e.single(
        "m2m_protocol_errors_total",
        "counter",
        "Malformed packets and protocol violations.",
        get(&m.protocol_errors),
    );
    e.single(
        "m2m_publishes_refused_total",
        "counter",
        "QoS 1/2 publishes refused because the store could not keep them.",
        get(&m.publishes_refused),
    );
    e.single(
        "m2m_auth_failures_total",
        "counter",
        "CONNECTs refused for bad credentials.",
        get(&m.auth_failures),
    );
    e.single(
        "m2m_access_denied_total",
        "counter",
        "PUBLISHes and subscription filters refused by the access rules.",
        get(&m.access_denied),
    );
    if let Some(budget) = &state.broker.memory {
        e.single(
            "m2m_memory_budget_bytes",
            "gauge",
            "The memory budget of the node's queues and large packets being read (0: no limit).",
            Int(budget.limit() as u64),
        );
        e.single(
            "m2m_memory_queued_bytes",
            "gauge",
            "Bytes of messages waiting in the node's queues and of large packets being read, counted against the budget.",
            Int(budget.used() as u64),
        );
        e.single(
            "m2m_memory_refused_total",
            "counter",
            "Charges refused because the memory budget was spent (QoS 0 deliveries, history records, large packets being read).",
            Int(budget.refused()),
        );
    }
    let router = router_stats(state).await;
    e.single("m2m_sessions", "gauge", "Sessions known, online and offline.", Int(router.sessions as u64));
    e.single("m2m_subscriptions", "gauge", "Subscriptions.", Int(router.subscriptions as u64));
    e.single("m2m_retained_messages", "gauge", "Retained messages.", Int(router.retained as u64));
    e.single("m2m_quarantined", "gauge", "Quarantine entries in force.", Int(quarantined(state) as u64));
    if let Some(history) = &state.history {
        let s = history.stats();
        e.single("m2m_history_stored_total", "counter", "Messages written to the history.", get(&s.stored));
        e.single(
            "m2m_history_dropped_total",
            "counter",
            "Messages the history dropped: its queue was full or a write failed.",
            get(&s.dropped),
        );
    }
    if let Some(store) = &state.broker.store {
        e.single(
            "m2m_store_healthy",
            "gauge",
            "1 while the store accepts writes.",
            Int(u64::from(store.is_healthy())),
        );
        e.single(
            "m2m_store_syncs_total",
            "counter",
            "Group commits (fsyncs) of the store.",
            Int(store.syncs()),
        );
        e.histogram(
            "m2m_store_commit_seconds",
            "How long the store's group commits took (journal to the OS, then fsync).",
            &store.commit_latency(),
        );
    }
    if let Some(engine) = &state.engine {
        let rules = engine.list();
        let (dropped, loops) = engine.dropped();
        e.single("m2m_rules", "gauge", "Rules defined.", Int(rules.len() as u64));
        e.single(
            "m2m_rules_dropped_total",
            "counter",
            "Inputs the rules engine dropped: its queue was full.",
            Int(dropped),
        );
        e.single(
            "m2m_rules_loops_total",
            "counter",
            "Messages not given to rules because of their republish hop count.",
            Int(loops),
        );
        let per_rule = |f: fn(&m2m_engine::RuleMetrics) -> Sample| {
            rules.iter().map(move |r| (r.spec.id.clone(), f(&r.metrics))).collect::<Vec<_>>()
        };
        let families: [Family<m2m_engine::RuleMetrics, Sample>; 6] = [
            ("m2m_rule_matched_total", "counter", "Inputs the rule's FROM matched.", |r| Int(r.matched)),
            ("m2m_rule_passed_total", "counter", "Inputs the rule's WHERE let through.", |r| Int(r.passed)),
            ("m2m_rule_failed_total", "counter", "Evaluations of the rule that failed.", |r| Int(r.failed)),
            ("m2m_rule_actions_ok_total", "counter", "Actions of the rule carried out.", |r| {
                Int(r.actions_ok)
            }),
            ("m2m_rule_actions_failed_total", "counter", "Actions of the rule that failed.", |r| {
                Int(r.actions_failed)
            }),
            ("m2m_rule_eval_mean_seconds", "gauge", "Mean evaluation time of the rule.", |r| {
                Float(r.eval_mean_ns as f64 / 1e9)
            }),
        ];
        for (name, kind, help, f) in families {
            e.labelled(name, kind, help, "rule", per_rule(f));
        }
    }
    if let Some(mesh) = &state.mesh {
        let s = mesh.stats();
        let load = |c: &std::sync::atomic::AtomicU64| Int(c.load(std::sync::atomic::Ordering::Relaxed));
        e.single("m2m_mesh_sent_total", "counter", "Messages put into the mesh.", load(&s.sent));
        e.single(
            "m2m_mesh_received_total",
            "counter",
            "Messages received from other nodes.",
            load(&s.received),
        );
        let backlogs = mesh.backlogs();
        e.labelled(
            "m2m_mesh_backlog",
            "gauge",
            "QoS 1/2 messages waiting in this node's outbox for another node.",
            "node",
            backlogs.iter().map(|(id, backlog, _)| (id.clone(), Int(*backlog))),
        );
        e.labelled(
            "m2m_mesh_node_alive",
            "gauge",
            "1 while the outbox sees the other node alive.",
            "node",
            backlogs.iter().map(|(id, _, alive)| (id.clone(), Int(u64::from(*alive)))),
        );
    }
    let uplinks: Vec<_> = state.uplinks.iter().map(m2m_mesh::Uplink::status).collect();
    let per_uplink = |f: fn(&m2m_mesh::UplinkStatus) -> u64| {
        uplinks.iter().map(move |u| (u.name.clone(), Int(f(u)))).collect::<Vec<_>>()
    };
    let families: [Family<m2m_mesh::UplinkStatus, u64>; 5] = [
        ("m2m_uplink_backlog", "gauge", "Messages waiting in the uplink's outbox.", |u| u.backlog),
        ("m2m_uplink_connected", "gauge", "1 while the uplink is connected.", |u| u64::from(u.connected)),
        ("m2m_uplink_sent_total", "counter", "PUBLISH packets the uplink wrote to the remote.", |u| u.sent),
        ("m2m_uplink_acknowledged_total", "counter", "Messages the remote acknowledged.", |u| u.acknowledged),
        ("m2m_uplink_dropped_total", "counter", "Messages the uplink's outbox could not keep.", |u| {
            u.dropped
        }),
    ];
    for (name, kind, help, f) in families {
        e.labelled(name, kind, help, "uplink", per_uplink(f));
    }
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_are_written_in_seconds_without_float_noise() {
        let bounds: Vec<String> = m2m_store::LATENCY_BUCKETS_MS.iter().map(|ms| seconds(*ms)).collect();
        assert_eq!(
            bounds,
            [
                "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
                "0.25", "0.5", "1"
            ]
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::default();
        e.labelled("m2m_x", "gauge", "Help.", "rule", [("a\"b\\c\nd".to_owned(), Sample::Int(1))]);
        assert!(e.finish().contains(r#"m2m_x{rule="a\"b\\c\nd"} 1"#));
    }

    #[test]
    fn a_family_without_samples_is_left_out() {
        let mut e = Exposition::default();
        e.labelled("m2m_x", "gauge", "Help.", "rule", Vec::new());
        assert_eq!(e.finish(), "");
    }

    #[test]
    fn special_floats_use_the_format_s_spelling() {
        assert_eq!(Sample::Float(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Sample::Float(f64::NAN).to_string(), "NaN");
        assert_eq!(Sample::Float(0.5).to_string(), "0.5");
    }
}
