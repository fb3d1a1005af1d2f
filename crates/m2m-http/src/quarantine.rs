//! `/api/v1/quarantine`: machines cut off until they are repaired.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use m2m_access::{Mode, QuarantineEntry, Target};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Path};
use crate::{blocking, now_ms, ApiState};

/// An entry as the API shows it: the stored fields and whether it has expired (at the time of the
/// request).
#[derive(Debug, Serialize)]
pub(crate) struct EntryView {
    #[serde(flatten)]
    entry: QuarantineEntry,
    expired: bool,
}

impl EntryView {
    fn new(entry: QuarantineEntry, now_ms: u64) -> Self {
        let expired = entry.expires_ms.is_some_and(|at| at <= now_ms);
        Self { entry, expired }
    }
}

/// The body of `POST /quarantine`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewEntry {
    /// `{"kind": "client_id" | "username" | "address" | "pattern", "value": "..."}`.
    target: Target,
    mode: Mode,
    reason: String,
    #[serde(default)]
    actor: Option<String>,
    /// The entry lifts itself this many seconds from now (at least 1).
    #[serde(default)]
    expires_in_secs: Option<u64>,
}

/// `GET /quarantine`
#[utoipa::path(
    get,
    path = "/api/v1/quarantine",
    tag = "quarantine",
    responses(
        (status = 200, description = "Every entry, each with `expired`", body = serde_json::Value),
    )
)]
pub(crate) async fn list(State(state): State<ApiState>) -> axum::Json<Vec<EntryView>> {
    let now = now_ms();
    let entries = state.access.quarantine().entries().map(|e| EntryView::new(e.clone(), now)).collect();
    axum::Json(entries)
}

/// `POST /quarantine`
#[utoipa::path(
    post,
    path = "/api/v1/quarantine",
    tag = "quarantine",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses(
        (status = 201, description = "The entry", body = serde_json::Value),
        (status = 400, description = "An invalid target or body", body = ErrorBody),
    )
)]
pub(crate) async fn add(
    State(state): State<ApiState>,
    Json(new): Json<NewEntry>,
) -> Result<impl IntoResponse, ApiError> {
    let expires_ms = match new.expires_in_secs {
        Some(0) => return Err(ApiError::bad_request("expires_in_secs must be at least 1")),
        Some(secs) => Some(now_ms().saturating_add(secs.saturating_mul(1000))),
        None => None,
    };
    // The caller is who acts; an `actor` in the body says on whose behalf.
    let caller = crate::auth::caller_name();
    let actor = match new.actor {
        Some(actor) if *actor != *caller => format!("{actor} via {caller}"),
        _ => caller.to_string(),
    };
    let access = state.access.clone();
    let entry =
        blocking(move || Ok(access.add_quarantine(new.target, new.mode, &new.reason, &actor, expires_ms)?))
            .await?;
    crate::auth::mark_audited();
    Ok((StatusCode::CREATED, axum::Json(EntryView::new(entry, now_ms()))))
}

/// `DELETE /quarantine/{id}`: releases the entry and returns it.
#[utoipa::path(
    delete,
    path = "/api/v1/quarantine/{id}",
    tag = "quarantine",
    params(("id" = u64, Path, description = "Entry id")),
    responses(
        (status = 200, description = "The released entry", body = serde_json::Value),
        (status = 404, description = "No such entry", body = ErrorBody),
    )
)]
pub(crate) async fn release(
    State(state): State<ApiState>,
    Path(id): Path<u64>,
) -> Result<impl IntoResponse, ApiError> {
    let access = state.access.clone();
    let actor = crate::auth::caller_name();
    let entry = blocking(move || Ok(access.release_quarantine(id, &actor)?)).await?;
    crate::auth::mark_audited();
    Ok(axum::Json(EntryView::new(entry, now_ms())))
}

/// The query of `GET /audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    /// How many events, newest first (default 100, at most 10 000).
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /audit?limit=N`: registry and quarantine changes, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "quarantine",
    params(("limit" = Option<usize>, Query, description = "How many events, newest first (default 100, at most 10000)")),
    responses(
        (status = 200, description = "Registry and quarantine changes, newest first", body = serde_json::Value),
    )
)]
pub(crate) async fn audit(
    State(state): State<ApiState>,
    crate::extract::Query(query): crate::extract::Query<AuditQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 10_000);
    let access = state.access.clone();
    let events = blocking(move || {
        access.audit_log().recent(None, limit).map_err(|e| ApiError::internal("reading the audit log", &e))
    })
    .await?;
    Ok(axum::Json(events.into_iter().map(|(_, e)| e).collect::<Vec<_>>()))
}

/// `GET /clients/{client_id}/refusals`: what a quarantined client tried and was refused (the last 50,
/// oldest first; since the node started).
#[utoipa::path(
    get,
    path = "/api/v1/clients/{client_id}/refusals",
    tag = "quarantine",
    params(("client_id" = String, Path, description = "Client id")),
    responses(
        (status = 200, description = "What the client tried and was refused (the last 50)", body = serde_json::Value),
    )
)]
pub(crate) async fn refusals(
    State(state): State<ApiState>,
    Path(client_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(axum::Json(state.access.refusals(&client_id)))
}
