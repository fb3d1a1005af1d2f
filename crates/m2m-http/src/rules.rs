//! `/api/v1/rules`: the rules of the node's rules engine (`m2m-engine`), changed while it runs, and
//! a route that tries a rule on a sample message.
//!
//! Changes go to the engine, which compiles the rule, keeps it in the store and runs it from the
//! next message on; they run on a blocking thread (they commit to the store) and are audited under
//! the caller's name. A node whose rules engine is off answers every route with 404.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use m2m_engine::{Engine, EngineError, RuleSpec, RuleStatus, Sample};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Path};
use crate::{blocking, ApiState};

/// A rule from its JSON: an object with the members of [`RuleSpec`], and no others (a misspelt
/// member would otherwise be dropped without a word, leaving a rule that does less than it says).
/// With `id`, the rule's id is that one: the object's own `id` must then be the same or absent.
///
/// `m2m rule add --file` reads a rule with it too, so the command and the API accept the same
/// documents.
///
/// # Errors
/// What is wrong, as a message for the user: not an object, another id, a member of the wrong
/// type, or an unknown member.
pub fn rule_from_json(value: Value, id: Option<&str>) -> Result<RuleSpec, String> {
    let Value::Object(mut members) = value else {
        return Err(
            "a rule is a JSON object such as {\"id\": \"...\", \"sql\": \"...\", \"actions\": [...]}".into(),
        );
    };
    if let Some(id) = id {
        match members.get("id") {
            None => drop(members.insert("id".into(), id.into())),
            Some(Value::String(own)) if own == id => {}
            Some(own) => return Err(format!("the rule's id {own} is not {id:?}, the id in the path")),
        }
    }
    let mut unknown = Vec::new();
    let spec: RuleSpec =
        serde_ignored::deserialize(Value::Object(members), |path| unknown.push(path.to_string()))
            .map_err(|e| format!("invalid rule: {e}"))?;
    match unknown.first() {
        Some(member) => Err(format!("unknown member {member:?} in a rule")),
        None => Ok(spec),
    }
}

/// The engine, or 404 when the node runs none.
fn engine(state: &ApiState) -> Result<Engine, ApiError> {
    state.engine.clone().ok_or_else(|| ApiError::not_found("rules are off on this node"))
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        match &error {
            EngineError::Invalid(_) => Self::bad_request(error.to_string()),
            EngineError::NotFound(_) => Self::not_found(error.to_string()),
            EngineError::Exists(_) => Self::new(StatusCode::CONFLICT, error.to_string()),
            EngineError::Store(_) => Self::internal("a rules change", &error),
        }
    }
}

/// `GET /rules`
#[utoipa::path(
    get,
    path = "/api/v1/rules",
    tag = "rules",
    responses(
        (status = 200, description = "Every rule by id: its members, `state` (running, disabled, \
            disabled_failing or invalid) and `metrics`", body = serde_json::Value),
        (status = 404, description = "The rules engine is off on this node", body = ErrorBody),
    )
)]
pub(crate) async fn list(State(state): State<ApiState>) -> Result<axum::Json<Vec<RuleStatus>>, ApiError> {
    let engine = engine(&state)?;
    // The engine's lock is held while a change commits to the store: wait for it off the async threads.
    Ok(axum::Json(blocking(move || Ok(engine.list())).await?))
}

/// `POST /rules`: adds a rule (409 if one has its id).
#[utoipa::path(
    post,
    path = "/api/v1/rules",
    tag = "rules",
    request_body(content = serde_json::Value, content_type = "application/json",
        description = "`{id, sql, actions?, enabled? (true), description?, window?, silence?}`"),
    responses(
        (status = 201, description = "The rule, running from the next message on", body = serde_json::Value),
        (status = 400, description = "An invalid rule: the engine's message", body = ErrorBody),
        (status = 404, description = "The rules engine is off on this node", body = ErrorBody),
        (status = 409, description = "A rule of that id exists", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    State(state): State<ApiState>,
    Json(body): Json<Value>,
) -> Result<impl IntoResponse, ApiError> {
    let engine = engine(&state)?;
    let spec = rule_from_json(body, None).map_err(ApiError::bad_request)?;
    let (id, sql) = (spec.id.clone(), spec.sql.clone());
    let status = blocking(move || {
        engine.put(spec, false)?;
        Ok(engine.get(&id)?)
    })
    .await?;
    crate::auth::audit(&state.access, "rule.add", &status.spec.id, &sql);
    Ok((StatusCode::CREATED, axum::Json(status)))
}

/// `GET /rules/{id}`
#[utoipa::path(
    get,
    path = "/api/v1/rules/{id}",
    tag = "rules",
    params(("id" = String, Path, description = "Rule id")),
    responses(
        (status = 200, description = "The rule, its state and metrics", body = serde_json::Value),
        (status = 404, description = "No such rule, or the rules engine is off", body = ErrorBody),
    )
)]
pub(crate) async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<RuleStatus>, ApiError> {
    show_rule(&state, id).await
}

async fn show_rule(state: &ApiState, id: String) -> Result<axum::Json<RuleStatus>, ApiError> {
    let engine = engine(state)?;
    Ok(axum::Json(blocking(move || Ok(engine.get(&id)?)).await?))
}

/// `PUT /rules/{id}`: creates the rule (201) or replaces it (200); its counters start again.
#[utoipa::path(
    put,
    path = "/api/v1/rules/{id}",
    tag = "rules",
    params(("id" = String, Path, description = "Rule id")),
    request_body(content = serde_json::Value, content_type = "application/json",
        description = "`{id? (the path's), sql, actions?, enabled? (true), description?, window?, \
            silence?}`"),
    responses(
        (status = 200, description = "The rule, replaced", body = serde_json::Value),
        (status = 201, description = "The rule, created", body = serde_json::Value),
        (status = 400, description = "An invalid rule, or another id in the body", body = ErrorBody),
        (status = 404, description = "The rules engine is off on this node", body = ErrorBody),
    )
)]
pub(crate) async fn put(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<impl IntoResponse, ApiError> {
    put_rule(&state, id, body).await
}

async fn put_rule(state: &ApiState, id: String, body: Value) -> Result<impl IntoResponse, ApiError> {
    let engine = engine(state)?;
    let spec = rule_from_json(body, Some(&id)).map_err(ApiError::bad_request)?;
    let sql = spec.sql.clone();
    let (created, status) = blocking(move || {
        // Adding first tells a new rule from a replaced one without a window between a look and
        // the change.
        let created = match engine.put(spec.clone(), false) {
            Ok(()) => true,
            Err(EngineError::Exists(_)) => {
                engine.put(spec, true)?;
                false
            }
            Err(e) => return Err(e.into()),
        };
        Ok((created, engine.get(&id)?))
    })
    .await?;
    let action = if created { "rule.add" } else { "rule.replace" };
    crate::auth::audit(&state.access, action, &status.spec.id, &sql);
    let code = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((code, axum::Json(status)))
}

/// `DELETE /rules/{id}`
#[utoipa::path(
    delete,
    path = "/api/v1/rules/{id}",
    tag = "rules",
    params(("id" = String, Path, description = "Rule id")),
    responses(
        (status = 204, description = "Removed; it runs no more"),
        (status = 404, description = "No such rule, or the rules engine is off", body = ErrorBody),
    )
)]
pub(crate) async fn remove(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    remove_rule(&state, id).await
}

async fn remove_rule(state: &ApiState, id: String) -> Result<StatusCode, ApiError> {
    let engine = engine(state)?;
    let removed = blocking(move || Ok(engine.remove(&id)?)).await?;
    crate::auth::audit(&state.access, "rule.remove", &removed.id, "");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /rules/{id}/enable`: runs the rule again (also one the engine disabled for failing; its
/// counters start again).
#[utoipa::path(
    post,
    path = "/api/v1/rules/{id}/enable",
    tag = "rules",
    params(("id" = String, Path, description = "Rule id")),
    responses(
        (status = 200, description = "The rule, running", body = serde_json::Value),
        (status = 404, description = "No such rule, or the rules engine is off", body = ErrorBody),
    )
)]
pub(crate) async fn enable(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<RuleStatus>, ApiError> {
    set_enabled(&state, id, true).await
}

/// `POST /rules/{id}/disable`: stops running the rule, keeping it.
#[utoipa::path(
    post,
    path = "/api/v1/rules/{id}/disable",
    tag = "rules",
    params(("id" = String, Path, description = "Rule id")),
    responses(
        (status = 200, description = "The rule, disabled", body = serde_json::Value),
        (status = 404, description = "No such rule, or the rules engine is off", body = ErrorBody),
    )
)]
pub(crate) async fn disable(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<RuleStatus>, ApiError> {
    set_enabled(&state, id, false).await
}

async fn set_enabled(
    state: &ApiState,
    id: String,
    enabled: bool,
) -> Result<axum::Json<RuleStatus>, ApiError> {
    let engine = engine(state)?;
    let status = blocking(move || {
        engine.set_enabled(&id, enabled)?;
        Ok(engine.get(&id)?)
    })
    .await?;
    let action = if enabled { "rule.enable" } else { "rule.disable" };
    crate::auth::audit(&state.access, action, &status.spec.id, "");
    Ok(axum::Json(status))
}

/// The body of `POST /rules/test`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TestBody {
    /// The rule's query.
    sql: String,
    /// The sample message's topic (for an event, the topic it is about; may be absent).
    #[serde(default)]
    topic: String,
    /// Its payload: a string is sent as its text; any other JSON value as that JSON; absent, an
    /// empty payload.
    #[serde(default)]
    payload: Option<Value>,
    /// The publisher's client id.
    #[serde(default)]
    clientid: Option<String>,
    /// Its user name.
    #[serde(default)]
    username: Option<String>,
    /// QoS of the message.
    #[serde(default)]
    qos: u8,
    /// Its retain flag.
    #[serde(default)]
    retain: bool,
    /// Evaluate as this event (`client_connected`…) instead of a message.
    #[serde(default)]
    event: Option<String>,
    /// The event's fields.
    #[serde(default)]
    fields: Map<String, Value>,
    /// The `win.*` statistics for a window rule.
    #[serde(default)]
    window: Option<Map<String, Value>>,
}

/// `POST /rules/test`: evaluates a query on a sample message; no action runs and nothing changes.
#[utoipa::path(
    post,
    path = "/api/v1/rules/test",
    tag = "rules",
    request_body(content = serde_json::Value, content_type = "application/json",
        description = "`{sql, topic, payload (a string is the payload's text; any other JSON value is \
            sent as JSON; absent, an empty payload), clientid?, username?, qos?, retain?, event? (evaluate \
            as this event: client_connected…), fields? (the event's fields), window? (win.* values: count, \
            avg, min, max, sum, secs)}`"),
    responses(
        (status = 200, description = "`{\"output\": {...}}`, or `{\"output\": null}` when WHERE rejects \
            the message", body = serde_json::Value),
        (status = 400, description = "The query does not parse, or its evaluation failed", body = ErrorBody),
        (status = 404, description = "The rules engine is off on this node", body = ErrorBody),
    )
)]
pub(crate) async fn test(
    State(state): State<ApiState>,
    Json(body): Json<TestBody>,
) -> Result<axum::Json<Value>, ApiError> {
    engine(&state)?;
    let payload = match body.payload {
        None => Vec::new(),
        Some(Value::String(text)) => text.into_bytes(),
        Some(json) => json.to_string().into_bytes(),
    };
    if body.qos > 2 {
        return Err(ApiError::bad_request(format!("qos must be 0, 1 or 2, not {}", body.qos)));
    }
    let sample = Sample {
        topic: body.topic,
        payload,
        clientid: body.clientid,
        username: body.username,
        qos: body.qos,
        retain: body.retain,
        event: body.event,
        fields: body.fields,
        window: body.window,
    };
    // Pure evaluation of one bounded query: no IO, no lock.
    let output: Option<Map<String, Value>> = Engine::test(&body.sql, &sample)?;
    Ok(axum::Json(serde_json::json!({ "output": output })))
}

/// The routes of a rule whose id is `test`: `/rules/test` is also the path of [`test`], whose
/// static segment wins over `{id}`, so these forward the methods it does not have.
pub(crate) mod named_test {
    use super::*;

    const ID: &str = "test";

    pub(crate) async fn show(State(state): State<ApiState>) -> Result<axum::Json<RuleStatus>, ApiError> {
        show_rule(&state, ID.into()).await
    }

    pub(crate) async fn put(
        State(state): State<ApiState>,
        Json(body): Json<Value>,
    ) -> Result<impl IntoResponse, ApiError> {
        put_rule(&state, ID.into(), body).await
    }

    pub(crate) async fn remove(State(state): State<ApiState>) -> Result<StatusCode, ApiError> {
        remove_rule(&state, ID.into()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_rule_is_read_with_its_defaults_and_the_id_of_the_path() {
        let sql = "SELECT * FROM \"a\"";
        let spec = rule_from_json(json!({"id": "a", "sql": sql}), None).unwrap();
        assert_eq!((spec.id.as_str(), spec.sql.as_str(), spec.enabled), ("a", sql, true));
        assert!(spec.actions.is_empty() && spec.description.is_empty());
        let spec = rule_from_json(json!({"sql": sql, "enabled": false}), Some("b")).unwrap();
        assert_eq!((spec.id.as_str(), spec.enabled), ("b", false));
        let again = rule_from_json(serde_json::to_value(&spec).unwrap(), Some("b")).unwrap();
        assert_eq!(again, spec, "what the API shows is what it reads");
    }

    #[test]
    fn a_rule_is_refused_for_an_unknown_member_another_id_or_a_wrong_type() {
        let sql = "SELECT * FROM \"a\"";
        let err = rule_from_json(json!({"id": "a", "sql": sql, "action": []}), None).unwrap_err();
        assert_eq!(err, "unknown member \"action\" in a rule");
        let err = rule_from_json(json!({"id": "b", "sql": sql}), Some("a")).unwrap_err();
        assert!(err.contains("the rule's id \"b\" is not \"a\""), "{err}");
        let err = rule_from_json(json!({"id": "a", "sql": 5}), None).unwrap_err();
        assert!(err.starts_with("invalid rule: invalid type"), "{err}");
        assert!(rule_from_json(json!([]), None).unwrap_err().contains("a JSON object"));
    }
}
