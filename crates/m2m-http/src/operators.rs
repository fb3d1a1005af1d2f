//! Logging in and out, who am I, and the management of users and API tokens:
//! `/api/v1/login`, `/logout`, `/me`, `/me/password`, `/users`, `/tokens`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use m2m_access::{Operators, Role, TokenInfo, UserInfo};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{session_cookie, Caller, Via, COOKIE};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Path};
use crate::{blocking, now_ms, ApiState};

/// `POST /login` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Login {
    /// The user's name.
    user: String,
    /// The user's password.
    password: String,
}

/// `POST /login`: checks a user's password and starts a console session.
#[utoipa::path(
    post,
    path = "/api/v1/login",
    tag = "operators",
    request_body = Login,
    responses(
        (status = 200, description = "Logged in: `{user, role, csrf}`, and the session cookie `m2m_session`", body = Value),
        (status = 401, description = "Wrong user or password", body = ErrorBody),
        (status = 429, description = "Too many failed logins from this address; wait five minutes", body = ErrorBody),
    )
)]
pub(crate) async fn login(
    State(state): State<ApiState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Json(login): Json<Login>,
) -> Result<Response, ApiError> {
    let ip = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    let gate = state.gate.clone();
    if !gate.login_allowed(ip) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins from this address: try again in a few minutes",
        ));
    }
    let (user, password) = (login.user, login.password);
    let (role, user) =
        hashing(&state, "a login", move |operators| Ok((operators.verify(&user, &password), user))).await?;
    let shown = short(&user);
    let Some(role) = role else {
        gate.login_failed(ip);
        gate.access.audit(&shown, "login.failed", &shown, &ip.map(|i| i.to_string()).unwrap_or_default());
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong user name or password"));
    };
    gate.login_succeeded(ip);
    let (cookie, csrf) = gate.sessions.start(&user);
    gate.access.audit(&user, "login", &user, &ip.map(|i| i.to_string()).unwrap_or_default());
    let set = format!("{COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict");
    let body = json!({ "user": user, "role": role, "csrf": &*csrf });
    let mut response = axum::Json(body).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&set).map_err(|e| ApiError::internal("a login", &e))?,
    );
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Runs `f` on the operators on a blocking thread, holding one of the permits that bound the
/// password hashes in progress (`what` names it in the log should that fail).
async fn hashing<T, F>(state: &ApiState, what: &'static str, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Operators) -> Result<T, ApiError> + Send + 'static,
{
    let permit = state.hashing.clone().acquire_owned().await.map_err(|e| ApiError::internal(what, &e))?;
    let operators = state.gate.operators.clone();
    blocking(move || {
        let _permit = permit;
        f(&operators)
    })
    .await
}

/// At most 64 characters of a name someone typed, for the audit log.
fn short(name: &str) -> String {
    name.chars().take(64).collect()
}

/// `POST /logout`: ends the console session.
#[utoipa::path(
    post,
    path = "/api/v1/logout",
    tag = "operators",
    responses((status = 204, description = "Logged out; the session cookie is cleared"))
)]
pub(crate) async fn logout(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    if let Some(cookie) = session_cookie(&headers) {
        state.gate.sessions.end(cookie);
    }
    crate::auth::audit(&state.access, "logout", &caller.name, "");
    let clear = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&clear) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `GET /me`: who the caller is.
#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "operators",
    responses(
        (status = 200, description = "`{user, role, via, csrf?}`: `via` is session, token or loopback; `csrf` only for a console session", body = Value),
        (status = 401, description = "Not logged in", body = ErrorBody),
    )
)]
pub(crate) async fn me(Extension(caller): Extension<Caller>) -> axum::Json<Value> {
    let mut body = json!({ "user": &*caller.name, "role": caller.role, "via": caller.via.as_str() });
    if let Some(csrf) = &caller.csrf {
        body["csrf"] = json!(&**csrf);
    }
    axum::Json(body)
}

/// `POST /me/password` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordChange {
    /// The current password.
    current: String,
    /// The new one (at least 8 characters).
    new: String,
}

/// `POST /me/password`: a logged-in user changes their own password; their other sessions end.
#[utoipa::path(
    post,
    path = "/api/v1/me/password",
    tag = "operators",
    request_body = PasswordChange,
    responses(
        (status = 204, description = "Changed"),
        (status = 400, description = "The current password is wrong, or the new one too short", body = ErrorBody),
        (status = 403, description = "The caller is not a user (a token or loopback)", body = ErrorBody),
    )
)]
pub(crate) async fn change_password(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Json(change): Json<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    let Some(user) = caller.user.clone() else {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "only a logged-in user has a password to change"));
    };
    let name = user.clone();
    hashing(&state, "a password change", move |operators| {
        Ok(operators.change_password(&name, &change.current, &change.new)?)
    })
    .await?;
    // The user's other sessions end; this one goes on.
    let current = if caller.via == Via::Session { session_cookie(&headers) } else { None };
    state.gate.sessions.end_user_except(&user, current);
    crate::auth::audit(&state.access, "user.password", &user, "own password");
    Ok(StatusCode::NO_CONTENT)
}

fn user_json(user: &UserInfo) -> Value {
    json!({ "name": user.name, "role": user.role, "created": m2m_history::time::format_rfc3339(user.created_ms.saturating_mul(1000)) })
}

fn token_json(token: &TokenInfo) -> Value {
    json!({ "id": token.id, "name": token.name, "role": token.role, "created": m2m_history::time::format_rfc3339(token.created_ms.saturating_mul(1000)) })
}

/// `GET /users`
#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "operators",
    responses((status = 200, description = "The users: `[{name, role, created}]`", body = Value))
)]
pub(crate) async fn list_users(State(state): State<ApiState>) -> axum::Json<Value> {
    axum::Json(Value::Array(state.gate.operators.users().iter().map(user_json).collect()))
}

/// `POST /users` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewUser {
    /// Login name: 1 to 64 of letters, digits, `-`, `_`, `.`, `@`.
    name: String,
    /// At least 8 characters.
    password: String,
    /// `viewer`, `operator` or `admin`.
    #[schema(value_type = String)]
    role: Role,
}

/// `POST /users`
#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "operators",
    request_body = NewUser,
    responses(
        (status = 201, description = "The user", body = Value),
        (status = 400, description = "A bad name, role or password", body = ErrorBody),
        (status = 409, description = "A user of that name exists", body = ErrorBody),
    )
)]
pub(crate) async fn add_user(
    State(state): State<ApiState>,
    Json(new): Json<NewUser>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let user = hashing(&state, "adding a user", move |operators| {
        Ok(operators.add_user(&new.name, &new.password, new.role, now_ms())?)
    })
    .await?;
    crate::auth::audit(&state.access, "user.add", &user.name, user.role.as_str());
    Ok((StatusCode::CREATED, axum::Json(user_json(&user))))
}

/// `PATCH /users/{name}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserChange {
    /// A new password.
    password: Option<String>,
    /// A new role.
    #[schema(value_type = Option<String>)]
    role: Option<Role>,
}

/// `PATCH /users/{name}`: a new password or role; the user's sessions end.
#[utoipa::path(
    patch,
    path = "/api/v1/users/{name}",
    tag = "operators",
    params(("name" = String, Path, description = "The user")),
    request_body = UserChange,
    responses(
        (status = 200, description = "The user", body = Value),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "It would leave no admin", body = ErrorBody),
    )
)]
pub(crate) async fn change_user(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Json(change): Json<UserChange>,
) -> Result<axum::Json<Value>, ApiError> {
    let detail = m2m_access::change_summary(change.password.is_some(), change.role);
    let user = hashing(&state, "changing a user", move |operators| {
        Ok(operators.update_user(&name, change.password.as_deref(), change.role)?)
    })
    .await?;
    state.gate.sessions.end_user(&user.name);
    crate::auth::audit(&state.access, "user.set", &user.name, &detail);
    Ok(axum::Json(user_json(&user)))
}

/// `DELETE /users/{name}`: removes a user and ends their sessions.
#[utoipa::path(
    delete,
    path = "/api/v1/users/{name}",
    tag = "operators",
    params(("name" = String, Path, description = "The user")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "The last admin", body = ErrorBody),
    )
)]
pub(crate) async fn remove_user(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let operators = state.gate.operators.clone();
    let removed = blocking(move || Ok(operators.remove_user(&name)?)).await?;
    state.gate.sessions.end_user(&removed.name);
    crate::auth::audit(&state.access, "user.remove", &removed.name, "");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /tokens`
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "operators",
    responses((status = 200, description = "The API tokens, without their secrets: `[{id, name, role, created}]`", body = Value))
)]
pub(crate) async fn list_tokens(State(state): State<ApiState>) -> axum::Json<Value> {
    axum::Json(Value::Array(state.gate.operators.tokens().iter().map(token_json).collect()))
}

/// `POST /tokens` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewToken {
    /// What the token is for.
    name: String,
    /// `viewer`, `operator` or `admin`.
    #[schema(value_type = String)]
    role: Role,
}

/// `POST /tokens`: a new API token; its secret is in this answer only.
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "operators",
    request_body = NewToken,
    responses(
        (status = 201, description = "`{id, name, role, created, token}`: `token` is the secret, shown once", body = Value),
        (status = 400, description = "A bad name or role", body = ErrorBody),
    )
)]
pub(crate) async fn create_token(
    State(state): State<ApiState>,
    Json(new): Json<NewToken>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let operators = state.gate.operators.clone();
    let (token, secret) =
        blocking(move || Ok(operators.create_token(&new.name, new.role, now_ms())?)).await?;
    crate::auth::audit(&state.access, "token.create", &token.id, &format!("{} ({})", token.name, token.role));
    let mut body = token_json(&token);
    body["token"] = json!(secret);
    Ok((StatusCode::CREATED, axum::Json(body)))
}

/// `DELETE /tokens/{id}`
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "operators",
    params(("id" = String, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such token", body = ErrorBody),
    )
)]
pub(crate) async fn revoke_token(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let operators = state.gate.operators.clone();
    let revoked = blocking(move || Ok(operators.revoke_token(&id)?)).await?;
    crate::auth::audit(&state.access, "token.revoke", &revoked.id, &revoked.name);
    Ok(StatusCode::NO_CONTENT)
}
