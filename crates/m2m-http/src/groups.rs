//! `/api/v1/groups`: groups of devices and their access rules.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use m2m_access::{Group, RegistryError};
use serde::Deserialize;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Path};
use crate::{blocking, ApiState};

/// The body of `PUT /groups/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupBody {
    /// Its rules, one per line, in order; they replace the group's.
    rules: Vec<String>,
}

/// `GET /groups`
#[utoipa::path(
    get,
    path = "/api/v1/groups",
    tag = "groups",
    responses(
        (status = 200, description = "Every group and its rules", body = serde_json::Value),
    )
)]
pub(crate) async fn list(State(state): State<ApiState>) -> axum::Json<Vec<Group>> {
    let groups = state.access.registry().groups().cloned().collect();
    axum::Json(groups)
}

/// `GET /groups/{name}`
#[utoipa::path(
    get,
    path = "/api/v1/groups/{name}",
    tag = "groups",
    params(("name" = String, Path, description = "Group name")),
    responses(
        (status = 200, description = "The group", body = serde_json::Value),
        (status = 404, description = "No such group", body = ErrorBody),
    )
)]
pub(crate) async fn show(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let group = state.access.registry().groups().find(|g| g.name == name).cloned();
    group.map(axum::Json).ok_or_else(|| RegistryError::NotFound { what: "group", id: name }.into())
}

/// `PUT /groups/{name}`: creates the group (201) or replaces its rules (200).
#[utoipa::path(
    put,
    path = "/api/v1/groups/{name}",
    tag = "groups",
    params(("name" = String, Path, description = "Group name")),
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses(
        (status = 200, description = "The group, its rules replaced", body = serde_json::Value),
        (status = 201, description = "The group, created", body = serde_json::Value),
        (status = 400, description = "An invalid rule", body = ErrorBody),
    )
)]
pub(crate) async fn put(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Json(body): Json<GroupBody>,
) -> Result<impl IntoResponse, ApiError> {
    let access = state.access.clone();
    let group = Group { name, rules: body.rules };
    let (created, group) = blocking(move || {
        let mut registry = access.registry_mut();
        let created = !registry.groups().any(|g| g.name == group.name);
        registry.set_group(group.clone())?;
        Ok((created, group))
    })
    .await?;
    crate::auth::audit(&state.access, "group.set", &group.name, if created { "created" } else { "replaced" });
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(group)))
}

/// `DELETE /groups/{name}`
#[utoipa::path(
    delete,
    path = "/api/v1/groups/{name}",
    tag = "groups",
    params(("name" = String, Path, description = "Group name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such group", body = ErrorBody),
    )
)]
pub(crate) async fn remove(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let access = state.access.clone();
    let group = blocking(move || Ok(access.registry_mut().remove_group(&name)?)).await?;
    crate::auth::audit(&state.access, "group.remove", &group.name, "");
    Ok(StatusCode::NO_CONTENT)
}
