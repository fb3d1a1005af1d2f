//! `/api/v1/devices`: the device registry.
//!
//! Passwords are hashed (argon2id, tens of milliseconds) on a blocking thread *before* the registry's
//! lock is taken, so that connections checking their rules are not held up by the hashing; only an
//! import hashes under the lock, because the registry imports all or nothing in one batch.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use m2m_access::{Device, NewDevice, RegistryError};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{Body, Json, Path};
use crate::{blocking, now_ms, ApiState};

/// A device as the API shows it: everything but its password hash.
#[derive(Debug, Serialize)]
pub(crate) struct DeviceView {
    id: String,
    has_password: bool,
    groups: Vec<String>,
    attributes: BTreeMap<String, String>,
    enabled: bool,
    created_ms: u64,
    last_seen_ms: Option<u64>,
    rules: Vec<String>,
}

impl From<&Device> for DeviceView {
    fn from(d: &Device) -> Self {
        Self {
            id: d.id.clone(),
            has_password: d.password_hash.is_some(),
            groups: d.groups.clone(),
            attributes: d.attributes.clone(),
            enabled: d.enabled,
            created_ms: d.created_ms,
            last_seen_ms: d.last_seen_ms,
            rules: d.rules.clone(),
        }
    }
}

/// The body of `POST /devices`: the fields of [`NewDevice`], and no others (a misspelt field is an
/// error, not silently ignored).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewDeviceBody {
    id: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    rules: Vec<String>,
}

/// The body of `PATCH /devices/{id}`: what is present changes, what is absent stays.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceChange {
    /// A new password; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    password: Option<Option<String>>,
    /// Replaces the groups.
    #[serde(default)]
    groups: Option<Vec<String>>,
    /// Merged into the attributes; a `null` value removes that attribute.
    #[serde(default)]
    attributes: Option<BTreeMap<String, Option<String>>>,
    /// Replaces the rules.
    #[serde(default)]
    rules: Option<Vec<String>>,
    /// Enables or disables the device.
    #[serde(default)]
    enabled: Option<bool>,
}

/// A field that is present, `null` or not: absent stays `None` (by `#[serde(default)]`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `GET /devices`
#[utoipa::path(
    get,
    path = "/api/v1/devices",
    tag = "devices",
    responses(
        (status = 200, description = "Every device, without password hashes", body = serde_json::Value),
    )
)]
pub(crate) async fn list(State(state): State<ApiState>) -> axum::Json<Vec<DeviceView>> {
    let devices = state.access.registry().devices().map(DeviceView::from).collect();
    axum::Json(devices)
}

/// `GET /devices/{id}`
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}",
    tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "The device", body = serde_json::Value),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
pub(crate) async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    show_device(&state, &id)
}

fn show_device(state: &ApiState, id: &str) -> Result<axum::Json<DeviceView>, ApiError> {
    let registry = state.access.registry();
    let device = registry.device(id).ok_or_else(|| no_device(id))?;
    Ok(axum::Json(DeviceView::from(device)))
}

fn no_device(id: &str) -> ApiError {
    ApiError::from(RegistryError::NotFound { what: "device", id: id.to_owned() })
}

/// Hashes `password` on a blocking thread, at most [`crate::CONCURRENT_HASHES`] at a time (each
/// takes 19 MiB).
async fn hash(state: &ApiState, password: String) -> Result<(String, m2m_access::ScramCredential), ApiError> {
    let permit =
        state.hashing.clone().acquire_owned().await.map_err(|e| ApiError::internal("hashing", &e))?;
    blocking(move || {
        // Held until the hash is done, even if the request is dropped meanwhile.
        let _permit = permit;
        Ok(m2m_access::credentials(&password)?)
    })
    .await
}

/// `POST /devices`
#[utoipa::path(
    post,
    path = "/api/v1/devices",
    tag = "devices",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses(
        (status = 201, description = "The device", body = serde_json::Value),
        (status = 400, description = "An invalid id, rule or body", body = ErrorBody),
        (status = 409, description = "The device exists already", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    State(state): State<ApiState>,
    Json(body): Json<NewDeviceBody>,
) -> Result<impl IntoResponse, ApiError> {
    // Refuse what is certainly wrong before paying for a hash; the registry checks again under its lock.
    if let Some(why) = m2m_access::name_problem(&body.id) {
        return Err(RegistryError::InvalidName { what: "device id", id: body.id, why }.into());
    }
    if state.access.registry().device(&body.id).is_some() {
        return Err(RegistryError::Exists(body.id).into());
    }
    let password_hash = match body.password {
        Some(p) => Some(hash(&state, p).await?),
        None => None,
    };
    let new = NewDevice {
        id: body.id,
        password: None,
        groups: body.groups,
        attributes: body.attributes,
        disabled: body.disabled,
        rules: body.rules,
    };
    let access = state.access.clone();
    let device = blocking(move || {
        let mut registry = access.registry_mut();
        let id = new.id.clone();
        let device = registry.add_device(new, now_ms())?;
        // Under the same guard, so no connection sees the device without its password. Should the
        // node stop between the two writes, the device is left without a password: it cannot log in.
        match password_hash {
            Some((hash, scram)) => Ok(registry.update_device(&id, |d| {
                d.password_hash = Some(hash);
                d.scram = Some(scram);
            })?),
            None => Ok(device),
        }
    })
    .await?;
    crate::auth::audit(&state.access, "device.add", &device.id, "");
    Ok((StatusCode::CREATED, axum::Json(DeviceView::from(&device))))
}

/// `PATCH /devices/{id}`
#[utoipa::path(
    patch,
    path = "/api/v1/devices/{id}",
    tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses(
        (status = 200, description = "The device", body = serde_json::Value),
        (status = 400, description = "An invalid rule or body", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
pub(crate) async fn change(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Json(change): Json<DeviceChange>,
) -> Result<impl IntoResponse, ApiError> {
    change_device(state, id, change).await
}

async fn change_device(
    state: ApiState,
    id: String,
    change: DeviceChange,
) -> Result<axum::Json<DeviceView>, ApiError> {
    if state.access.registry().device(&id).is_none() {
        return Err(no_device(&id));
    }
    // A new password, or none, or a disabled device: who is logged in must log in again.
    let relogin = change.password.is_some() || change.enabled == Some(false);
    let password_hash = match change.password {
        Some(Some(p)) => Some(Some(hash(&state, p).await?)),
        Some(None) => Some(None),
        None => None,
    };
    let access = state.access.clone();
    let device = blocking(move || {
        let device = access.registry_mut().update_device(&id, |d| {
            if let Some(credentials) = password_hash {
                let (hash, scram) = credentials.unzip();
                d.password_hash = hash;
                d.scram = scram;
            }
            if let Some(groups) = change.groups {
                d.groups = groups;
            }
            for (key, value) in change.attributes.into_iter().flatten() {
                match value {
                    Some(value) => d.attributes.insert(key, value),
                    None => d.attributes.remove(&key),
                };
            }
            if let Some(rules) = change.rules {
                d.rules = rules;
            }
            if let Some(enabled) = change.enabled {
                d.enabled = enabled;
            }
        })?;
        Ok(device)
    })
    .await?;
    crate::auth::audit(&state.access, "device.set", &device.id, "");
    if relogin {
        state.access.disconnect_device(&device.id);
    }
    Ok(axum::Json(DeviceView::from(&device)))
}

/// `DELETE /devices/{id}`
#[utoipa::path(
    delete,
    path = "/api/v1/devices/{id}",
    tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
pub(crate) async fn remove(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    remove_device(state, id).await
}

async fn remove_device(state: ApiState, id: String) -> Result<StatusCode, ApiError> {
    let access = state.access.clone();
    let device = blocking(move || Ok(access.registry_mut().remove_device(&id)?)).await?;
    crate::auth::audit(&state.access, "device.remove", &device.id, "");
    state.access.disconnect_device(&device.id);
    Ok(StatusCode::NO_CONTENT)
}

/// The formats `POST /devices/import` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

/// The import format named by a `Content-Type` value (its parameters, e.g. `charset`, ignored).
fn format(content_type: Option<&str>) -> Option<Format> {
    let essence = content_type?.split(';').next()?.trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Some(Format::Json)
    } else if essence.eq_ignore_ascii_case("text/csv") {
        Some(Format::Csv)
    } else {
        None
    }
}

/// `POST /devices/import`: a JSON array of devices or CSV lines `id,password,groups,disabled`; all
/// or nothing.
#[utoipa::path(
    post,
    path = "/api/v1/devices/import",
    tag = "devices",
    request_body(content = String, description = "A JSON array of devices (application/json) or CSV lines id,password,groups,disabled (text/csv)"),
    responses(
        (status = 200, description = "{\"imported\": n}", body = serde_json::Value),
        (status = 400, description = "An invalid device; nothing was imported", body = ErrorBody),
        (status = 415, description = "Neither JSON nor CSV", body = ErrorBody),
    )
)]
pub(crate) async fn import(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<impl IntoResponse, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let Some(format) = format(content_type) else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "an import is `Content-Type: application/json` (an array of devices) or `text/csv` \
             (id,password,groups,disabled)",
        ));
    };
    let text =
        String::from_utf8(body.to_vec()).map_err(|_| ApiError::bad_request("the import is not UTF-8"))?;
    let access = state.access.clone();
    let imported = blocking(move || {
        let mut registry = access.registry_mut();
        Ok(match format {
            Format::Json => registry.import_json(&text, now_ms())?,
            Format::Csv => registry.import_csv(&text, now_ms())?,
        })
    })
    .await?;
    crate::auth::audit(&state.access, "device.import", "", &format!("{imported} devices"));
    Ok(axum::Json(serde_json::json!({ "imported": imported })))
}

/// Handlers for `/devices/import` with the other methods: the path is also the device `import`'s.
pub(crate) mod named_import {
    use super::*;

    const ID: &str = "import";

    /// `GET /devices/import`
    pub(crate) async fn show(State(state): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
        show_device(&state, ID)
    }

    /// `PATCH /devices/import`
    pub(crate) async fn change(
        State(state): State<ApiState>,
        Json(change): Json<DeviceChange>,
    ) -> Result<impl IntoResponse, ApiError> {
        change_device(state, ID.to_owned(), change).await
    }

    /// `DELETE /devices/import`
    pub(crate) async fn remove(State(state): State<ApiState>) -> Result<StatusCode, ApiError> {
        remove_device(state, ID.to_owned()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_formats_are_read_from_the_content_type() {
        assert_eq!(format(Some("application/json")), Some(Format::Json));
        assert_eq!(format(Some("Application/JSON; charset=utf-8")), Some(Format::Json));
        assert_eq!(format(Some("text/csv;charset=utf-8")), Some(Format::Csv));
        assert_eq!(format(Some("text/plain")), None);
        assert_eq!(format(Some("")), None);
        assert_eq!(format(None), None);
    }

    #[test]
    fn a_change_tells_an_absent_password_from_a_null_one() {
        let absent: DeviceChange = serde_json::from_str("{}").unwrap();
        assert_eq!(absent.password, None);
        let null: DeviceChange = serde_json::from_str(r#"{"password": null}"#).unwrap();
        assert_eq!(null.password, Some(None));
        let set: DeviceChange = serde_json::from_str(r#"{"password": "p"}"#).unwrap();
        assert_eq!(set.password, Some(Some("p".to_owned())));
        assert!(serde_json::from_str::<DeviceChange>(r#"{"pasword": "p"}"#).is_err());
    }
}
