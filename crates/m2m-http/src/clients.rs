//! `/api/v1/clients`: the clients connected to the node, and those whose session it keeps.

use axum::extract::State;
use axum::http::StatusCode;
use m2m_broker::{ClientInfo, ClientState, Clients};
use m2m_codec::ReasonCode;
use m2m_router::Command;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{Path, Query};
use crate::{blocking, ApiState};

/// How many clients a listing shows by default, and at most.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 100_000;

/// A client as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct ClientView {
    client_id: String,
    online: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    address: String,
    protocol: &'static str,
    transport: &'static str,
    /// RFC 3339; only while connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    connected_at: Option<String>,
    /// RFC 3339: now for a connected client, when it disconnected for an offline one.
    last_seen: String,
    keep_alive: u16,
    clean_start: bool,
    session_expiry: u32,
    subscriptions: Vec<SubscriptionView>,
    messages_in: u64,
    messages_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    in_rate: f64,
    out_rate: f64,
    queued: u64,
    inflight: u64,
}

#[derive(Debug, Serialize)]
struct SubscriptionView {
    filter: String,
    qos: u8,
}

/// RFC 3339 (microseconds) of a wall-clock time.
pub(crate) fn rfc3339(t: std::time::SystemTime) -> String {
    let us = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    m2m_history::time::format_rfc3339(us)
}

/// A rate rounded to two decimals, so that the JSON stays short.
fn round(rate: f64) -> f64 {
    (rate * 100.0).round() / 100.0
}

impl From<ClientInfo> for ClientView {
    fn from(c: ClientInfo) -> Self {
        Self {
            client_id: c.client_id.to_string(),
            online: c.online,
            username: c.username.map(|u| u.to_string()),
            address: c.address.to_string(),
            protocol: c.protocol,
            transport: c.transport.as_str(),
            connected_at: c.connected_at.map(rfc3339),
            last_seen: rfc3339(c.last_seen),
            keep_alive: c.keep_alive,
            clean_start: c.clean_start,
            session_expiry: c.session_expiry,
            subscriptions: c
                .subscriptions
                .into_iter()
                .map(|s| SubscriptionView { filter: s.filter.to_string(), qos: s.qos })
                .collect(),
            messages_in: c.messages_in,
            messages_out: c.messages_out,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            in_rate: round(c.in_rate),
            out_rate: round(c.out_rate),
            queued: c.queued,
            inflight: c.inflight,
        }
    }
}

/// The query of `GET /clients`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// `online`, `offline` or `all` (the default).
    #[serde(default)]
    state: Option<String>,
    /// A substring of the client id or username.
    #[serde(default)]
    search: Option<String>,
    /// How many clients at most (default 1000, at most 100 000).
    #[serde(default)]
    limit: Option<usize>,
}

/// Puts what waits now in the sessions of the offline clients among `clients` in place of what
/// waited when they disconnected, as the router knows it (left as is if it cannot tell).
async fn offline_queues(state: &ApiState, clients: &mut [ClientInfo]) {
    let Some(router) = &state.broker.router else { return };
    let offline: Vec<usize> = (0..clients.len()).filter(|&i| !clients[i].online).collect();
    if offline.is_empty() {
        return;
    }
    let ids = offline.iter().map(|&i| clients[i].client_id.clone()).collect();
    let Ok(queues) = router.offline_queues(ids).await else { return };
    for (i, queue) in offline.into_iter().zip(queues) {
        if let Some((queued, inflight)) = queue {
            clients[i].queued = queued as u64;
            clients[i].inflight = inflight as u64;
        }
    }
}

/// The directory, or the 404 of a node whose API has none.
fn directory(state: &ApiState) -> Result<&Clients, ApiError> {
    state.broker.clients.as_ref().ok_or_else(|| ApiError::not_found("this node does not list its clients"))
}

/// `GET /clients`
#[utoipa::path(
    get,
    path = "/api/v1/clients",
    tag = "clients",
    params(
        ("state" = Option<String>, Query, description = "`online`, `offline` or `all` (default)"),
        ("search" = Option<String>, Query, description = "A substring of the client id or username"),
        ("limit" = Option<usize>, Query, description = "How many clients at most, by client id (default 1000, at most 100000)"),
    ),
    responses(
        (status = 200, description = "Clients ordered by id: `client_id`, `online`, `username`, `address`, \
            `protocol`, `transport`, `connected_at`, `last_seen`, `keep_alive`, `clean_start`, \
            `session_expiry`, `subscriptions` ([{filter, qos}]), `messages_in`, `messages_out`, \
            `bytes_in`, `bytes_out`, `in_rate`, `out_rate`, `queued`, `inflight`", body = serde_json::Value),
        (status = 400, description = "An invalid state or limit", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(state): State<ApiState>,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<Vec<ClientView>>, ApiError> {
    let which = match query.state.as_deref() {
        None | Some("all") => ClientState::All,
        Some("online") => ClientState::Online,
        Some("offline") => ClientState::Offline,
        Some(other) => {
            return Err(ApiError::bad_request(format!("state must be online, offline or all, not {other:?}")))
        }
    };
    let limit = match query.limit {
        None => DEFAULT_LIMIT,
        Some(0) => return Err(ApiError::bad_request("limit must be at least 1")),
        Some(n) => n.min(MAX_LIMIT),
    };
    let search = query.search.as_deref().filter(|s| !s.is_empty());
    let mut clients = directory(&state)?.list(which, search, limit);
    offline_queues(&state, &mut clients).await;
    Ok(axum::Json(clients.into_iter().map(ClientView::from).collect()))
}

/// `GET /clients/{client_id}`
#[utoipa::path(
    get,
    path = "/api/v1/clients/{client_id}",
    tag = "clients",
    params(("client_id" = String, Path, description = "Client id")),
    responses(
        (status = 200, description = "The client, as in the listing", body = serde_json::Value),
        (status = 404, description = "No such client (never connected since the node started, or its \
            session ended)", body = ErrorBody),
    )
)]
pub(crate) async fn show(
    State(state): State<ApiState>,
    Path(client_id): Path<String>,
) -> Result<axum::Json<ClientView>, ApiError> {
    let Some(client) = directory(&state)?.get(&client_id) else {
        return Err(ApiError::not_found(format!("no client {client_id:?}")));
    };
    let mut clients = [client];
    offline_queues(&state, &mut clients).await;
    let [client] = clients;
    Ok(axum::Json(client.into()))
}

/// `POST /clients/{client_id}/disconnect`
#[utoipa::path(
    post,
    path = "/api/v1/clients/{client_id}/disconnect",
    tag = "clients",
    params(("client_id" = String, Path, description = "Client id")),
    responses(
        (status = 204, description = "The connection is being closed (MQTT 5 clients get DISCONNECT \
            0x98 Administrative action); its session stays as its expiry says"),
        (status = 404, description = "The client is not connected", body = ErrorBody),
    )
)]
pub(crate) async fn disconnect(
    State(state): State<ApiState>,
    Path(client_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let online = directory(&state)?.is_online(&client_id);
    let Some(router) = state.broker.router.as_ref().filter(|_| online) else {
        return Err(ApiError::not_found(format!("client {client_id:?} is not connected")));
    };
    let kick =
        Command::Kick { client_id: client_id.as_str().into(), reason: ReasonCode::ADMINISTRATIVE_ACTION };
    if router.send(kick).await.is_err() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down"));
    }
    let access = state.access.clone();
    let actor = crate::auth::caller_name();
    blocking(move || {
        access.audit(&actor, "client.disconnect", &client_id, "");
        Ok(())
    })
    .await?;
    crate::auth::mark_audited();
    Ok(StatusCode::NO_CONTENT)
}
