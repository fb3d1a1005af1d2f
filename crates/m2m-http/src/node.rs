//! `/api/v1/node`, `/api/v1/nodes` and `/api/v1/config`: this node, the nodes of its mesh, and its
//! configuration.

use axum::extract::State;
use m2m_broker::{Metrics, RouterStats};
use serde::Serialize;
use serde_json::Value;

use crate::clients::rfc3339;
use crate::error::{ApiError, ErrorBody};
use crate::{now_ms, ApiState};

/// The version of this build.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `GET /node`'s answer.
#[derive(Debug, Serialize)]
pub(crate) struct NodeView {
    node_id: String,
    version: &'static str,
    started: String,
    uptime_secs: u64,
    listeners: Vec<ListenerView>,
    features: Features,
    stats: Stats,
}

#[derive(Debug, Serialize)]
struct ListenerView {
    address: String,
    transport: &'static str,
}

#[derive(Debug, Serialize)]
struct Features {
    history: bool,
    rules: bool,
    mesh: bool,
}

#[derive(Debug, Serialize)]
struct Stats {
    connections: u64,
    sessions: usize,
    subscriptions: usize,
    retained: usize,
    messages_received: u64,
    messages_sent: u64,
    messages_dropped: u64,
    bytes_received: u64,
    bytes_sent: u64,
    rules: usize,
    quarantined: usize,
}

/// The router's counts, or zeros when the API has no router (or it stopped).
pub(crate) async fn router_stats(state: &ApiState) -> RouterStats {
    match &state.broker.router {
        Some(router) => router.stats().await.unwrap_or_default(),
        None => RouterStats::default(),
    }
}

/// Quarantine entries in force now.
pub(crate) fn quarantined(state: &ApiState) -> usize {
    let now = now_ms();
    state.access.quarantine().entries().filter(|e| e.expires_ms.is_none_or(|at| at > now)).count()
}

/// The node's id: the one it was given, else its mesh id.
fn node_id(state: &ApiState) -> String {
    match &state.mesh {
        Some(mesh) if state.broker.node_id == crate::DEFAULT_NODE_ID => mesh.node_id().to_owned(),
        _ => state.broker.node_id.clone(),
    }
}

/// `GET /node`
#[utoipa::path(
    get,
    path = "/api/v1/node",
    tag = "node",
    responses(
        (status = 200, description = "`{node_id, version, started (RFC 3339), uptime_secs, listeners: \
            [{address, transport}], features: {history, rules, mesh}, stats: {connections, sessions, \
            subscriptions, retained, messages_received, messages_sent, messages_dropped, \
            bytes_received, bytes_sent, rules, quarantined}}`", body = serde_json::Value),
    )
)]
pub(crate) async fn show(State(state): State<ApiState>) -> axum::Json<NodeView> {
    let router = router_stats(&state).await;
    let zero = Metrics::default();
    let m = state.broker.metrics.as_deref().unwrap_or(&zero);
    let stats = Stats {
        connections: Metrics::get(&m.connections_current),
        sessions: router.sessions,
        subscriptions: router.subscriptions,
        retained: router.retained,
        messages_received: m.received_total(),
        messages_sent: m.sent_total(),
        messages_dropped: Metrics::get(&m.messages_dropped),
        bytes_received: Metrics::get(&m.bytes_received),
        bytes_sent: Metrics::get(&m.bytes_sent),
        rules: state.engine.as_ref().map_or(0, |e| e.list().len()),
        quarantined: quarantined(&state),
    };
    let started = state.broker.started;
    axum::Json(NodeView {
        node_id: node_id(&state),
        version: VERSION,
        started: rfc3339(started),
        uptime_secs: started.elapsed().map_or(0, |d| d.as_secs()),
        listeners: state
            .broker
            .listeners
            .iter()
            .map(|(address, transport)| ListenerView { address: address.to_string(), transport })
            .collect(),
        features: Features {
            history: state.history.is_some(),
            rules: state.engine.is_some(),
            mesh: state.mesh.is_some(),
        },
        stats,
    })
}

/// One node of `GET /nodes`.
#[derive(Debug, Serialize)]
pub(crate) struct NodeEntry {
    node_id: String,
    local: bool,
    reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    rtt_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backlog: Option<u64>,
}

/// `GET /nodes`
#[utoipa::path(
    get,
    path = "/api/v1/nodes",
    tag = "node",
    responses(
        (status = 200, description = "This node first, then the other nodes of its mesh: `[{node_id, \
            local, reachable, rtt_ms?, backlog?}]` (`backlog`: QoS 1/2 messages waiting here for that \
            node)", body = serde_json::Value),
    )
)]
pub(crate) async fn nodes(State(state): State<ApiState>) -> axum::Json<Vec<NodeEntry>> {
    let mut nodes = vec![NodeEntry {
        node_id: node_id(&state),
        local: true,
        reachable: true,
        rtt_ms: None,
        backlog: None,
    }];
    if let Some(mesh) = &state.mesh {
        let status = mesh.status().await;
        nodes.extend(status.nodes.into_iter().map(|n| NodeEntry {
            node_id: n.id,
            local: false,
            reachable: n.reachable,
            rtt_ms: n.rtt_ms.map(|ms| (ms * 1000.0).round() / 1000.0),
            backlog: Some(n.backlog),
        }));
    }
    axum::Json(nodes)
}

/// `GET /config`
#[utoipa::path(
    get,
    path = "/api/v1/config",
    tag = "node",
    responses(
        (status = 200, description = "The node's effective configuration, its secrets (tokens, \
            passwords, keys) shown as \"<redacted>\"", body = serde_json::Value),
        (status = 404, description = "The node did not give its configuration to the API", body = ErrorBody),
    )
)]
pub(crate) async fn config(State(state): State<ApiState>) -> Result<axum::Json<Value>, ApiError> {
    match &state.broker.config {
        Some(config) => Ok(axum::Json(config.clone())),
        None => Err(ApiError::not_found("this node's configuration is not available")),
    }
}

/// What a redacted secret shows.
pub const REDACTED: &str = "<redacted>";

/// Replaces the secrets in a configuration (as JSON) with `"<redacted>"`: the non-empty values of
/// members whose name says they hold one (containing `password`, `token` or `secret`, or ending in
/// `key`), at any depth, and the password of a URL (`scheme://user:password@host`). Empty strings
/// and `null` stay as they are: they show that no secret is set.
pub fn redact_secrets(value: &mut Value) {
    match value {
        Value::Object(members) => {
            for (name, member) in members.iter_mut() {
                let name = name.to_ascii_lowercase();
                let secret =
                    ["password", "token", "secret"].iter().any(|s| name.contains(s)) || name.ends_with("key");
                let unset = member.is_null() || member.as_str().is_some_and(str::is_empty);
                if secret && !unset {
                    *member = Value::String(REDACTED.to_owned());
                } else {
                    redact_secrets(member);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_secrets),
        Value::String(s) => {
            if let Some(redacted) = redact_url_password(s) {
                *s = redacted;
            }
        }
        _ => {}
    }
}

/// `scheme://user:<redacted>@rest` for a URL with a password in it.
fn redact_url_password(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (userinfo, host) = rest[..authority_end].rsplit_once('@')?;
    let (user, _password) = userinfo.split_once(':')?;
    Some(format!("{scheme}://{user}:{REDACTED}@{host}{}", &rest[authority_end..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_redacted_at_any_depth_and_unset_ones_are_left_alone() {
        let mut config = json!({
            "http": {"listen": "127.0.0.1:8080", "token": "s3cret"},
            "jwt": {"secret": "", "public_key_file": "/etc/key.pem"},
            "mesh": {"tls_key": "node.key", "tls_cert": "node.pem"},
            "uplinks": [{"name": "cloud", "url": "mqtts://dev:pw@cloud.example:8883/x", "password": "pw"}],
            "node": {"admin_password": null}
        });
        redact_secrets(&mut config);
        assert_eq!(config["http"]["token"], REDACTED);
        assert_eq!(config["http"]["listen"], "127.0.0.1:8080");
        assert_eq!(config["jwt"]["secret"], "");
        assert_eq!(config["jwt"]["public_key_file"], "/etc/key.pem");
        assert_eq!(config["mesh"]["tls_key"], REDACTED);
        assert_eq!(config["mesh"]["tls_cert"], "node.pem");
        assert_eq!(config["uplinks"][0]["password"], REDACTED);
        assert_eq!(config["uplinks"][0]["url"], "mqtts://dev:<redacted>@cloud.example:8883/x");
        assert_eq!(config["node"]["admin_password"], Value::Null);
    }

    #[test]
    fn urls_without_a_password_are_kept() {
        assert_eq!(redact_url_password("mqtt://cloud.example:1883"), None);
        assert_eq!(redact_url_password("mqtt://dev@cloud.example"), None);
        assert_eq!(redact_url_password("a@b"), None);
    }
}
