//! Who may use the API, and as what.
//!
//! A request is admitted as a [`Caller`] with a [`Role`], found in this order:
//! 1. `Authorization: Bearer <token>`: the node's configured token (`http.token`, role admin) or an
//!    API token of the operators table (its own role). A header that does not carry a known token
//!    is a 401, whatever else the request carries.
//! 2. The `m2m_session` cookie of a console login: the user's current role (a user removed since
//!    is logged out). Every request that changes something must repeat the session's CSRF token in
//!    `X-CSRF-Token`, or it is a 403: another site's page cannot make a logged-in browser act.
//! 3. Loopback trust: a request from a loopback address that carries no credentials and does not
//!    come from a browser (no `Origin`, no `Sec-Fetch-Site`) is admitted as admin, unless the node
//!    has a token or `http.trust_loopback = false`. This is what lets the CLI manage the node it
//!    runs beside; a page in a browser on the same machine never gets it.
//!
//! Then the route's required role ([`required_role`]) is checked (403 when short), and every
//! request that may change something is written to the audit log under the caller's name: by its
//! handler, with what it did, or else here, with its method, path and status.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use m2m_access::{Operators, Role};
use m2m_broker::AccessControl;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::debug;

use crate::error::ApiError;

/// The name of the console's session cookie.
pub(crate) const COOKIE: &str = "m2m_session";
/// The header that carries a session's CSRF token.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// A console session ends after this long without a request.
pub(crate) const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// ... and after this long in any case.
pub(crate) const SESSION_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// Sessions kept at most; the least recently used goes first.
const MAX_SESSIONS: usize = 10_000;
/// Failed logins from one address within [`LOGIN_WINDOW`] before further attempts get 429.
pub(crate) const LOGIN_FAILURES: u32 = 10;
/// The window over which failed logins are counted.
pub(crate) const LOGIN_WINDOW: Duration = Duration::from_secs(300);

/// How a caller was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// A console session (cookie).
    Session,
    /// A bearer token.
    Token,
    /// A loopback client without credentials.
    Loopback,
}

impl Via {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Via::Session => "session",
            Via::Token => "token",
            Via::Loopback => "loopback",
        }
    }
}

/// The admitted caller of one request, for handlers (an `Extension`).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The user's name, `token:<name>`, `token` (the configured one) or `loopback`.
    pub(crate) name: Arc<str>,
    /// What it may do.
    pub(crate) role: Role,
    /// How it was admitted.
    pub(crate) via: Via,
    /// The session's CSRF token, for a console session.
    pub(crate) csrf: Option<Arc<str>>,
    /// The login name, for a console session.
    pub(crate) user: Option<Arc<str>>,
    /// Set once the handler wrote its own audit entry.
    audited: Arc<AtomicBool>,
}

tokio::task_local! {
    /// The caller of the request being handled, for handlers that audit deep in helpers.
    static CALLER: Caller;
}

/// Writes an audit entry under the name of the current request's caller (`api` outside a
/// request), and marks the request audited.
pub(crate) fn audit(access: &AccessControl, action: &str, subject: &str, detail: &str) {
    access.audit(&caller_name(), action, subject, detail);
    mark_audited();
}

/// The name of the current request's caller, `api` outside a request.
pub(crate) fn caller_name() -> Arc<str> {
    CALLER.try_with(|c| c.name.clone()).unwrap_or_else(|_| Arc::from("api"))
}

/// Marks the current request as audited by its handler.
pub(crate) fn mark_audited() {
    let _ = CALLER.try_with(|c| c.audited.store(true, Ordering::Relaxed));
}

#[derive(Debug)]
struct SessionEntry {
    user: Arc<str>,
    csrf: Arc<str>,
    created: Instant,
    used: Instant,
}

/// Console sessions, by the SHA-256 of their cookie value. In memory: a restart logs everyone out.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    entries: Mutex<HashMap<[u8; 32], SessionEntry>>,
}

impl Sessions {
    /// Starts a session for `user`: its cookie value and CSRF token.
    pub(crate) fn start(&self, user: &str) -> (String, Arc<str>) {
        let cookie = m2m_access::random_text(40);
        let csrf: Arc<str> = Arc::from(m2m_access::random_text(32));
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|_, e| alive(e, now));
        if entries.len() >= MAX_SESSIONS {
            if let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| *k) {
                entries.remove(&oldest);
            }
        }
        let entry = SessionEntry { user: Arc::from(user), csrf: csrf.clone(), created: now, used: now };
        entries.insert(digest(&cookie), entry);
        (cookie, csrf)
    }

    /// The user and CSRF token of the session `cookie`, if it is alive; counts as a use.
    fn find(&self, cookie: &str) -> Option<(Arc<str>, Arc<str>)> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let key = digest(cookie);
        let entry = entries.get_mut(&key)?;
        if !alive(entry, now) {
            entries.remove(&key);
            return None;
        }
        entry.used = now;
        Some((entry.user.clone(), entry.csrf.clone()))
    }

    /// Ends the session `cookie`.
    pub(crate) fn end(&self, cookie: &str) {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).remove(&digest(cookie));
    }

    /// Ends every session of `user` (removed, or its password changed).
    pub(crate) fn end_user(&self, user: &str) {
        self.end_user_except(user, None);
    }

    /// Ends every session of `user` but the one of cookie `keep`.
    pub(crate) fn end_user_except(&self, user: &str, keep: Option<&str>) {
        let keep = keep.map(digest);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|key, e| &*e.user != user || Some(*key) == keep);
    }
}

fn alive(entry: &SessionEntry, now: Instant) -> bool {
    alive_after(now.duration_since(entry.used), now.duration_since(entry.created))
}

/// Whether a session idle for `idle`, started `age` ago, is still alive.
fn alive_after(idle: Duration, age: Duration) -> bool {
    idle < SESSION_IDLE && age < SESSION_MAX
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// The admission rule of one server, and what it needs to apply it.
pub(crate) struct Gate {
    /// SHA-256 of the configured token (role admin), if any.
    token: Option<[u8; 32]>,
    /// Whether loopback clients without credentials are admitted (as admin).
    trust_loopback: bool,
    pub(crate) operators: Arc<Operators>,
    pub(crate) sessions: Sessions,
    pub(crate) access: Arc<AccessControl>,
    /// Failed logins per address: count and the start of the window.
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: never in logs.
        f.debug_struct("Gate")
            .field("token", &self.token.map(|_| "<redacted>"))
            .field("trust_loopback", &self.trust_loopback)
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// The gate for the configured `token`; loopback clients are trusted only if `trust_loopback`
    /// and there is no token.
    pub(crate) fn new(
        token: Option<&str>,
        trust_loopback: bool,
        operators: Arc<Operators>,
        access: Arc<AccessControl>,
    ) -> Self {
        Self {
            token: token.map(digest),
            trust_loopback: trust_loopback && token.is_none(),
            operators,
            sessions: Sessions::default(),
            access,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Who is calling, from the request's headers and peer address.
    ///
    /// # Errors
    /// 401 without acceptable credentials (a bad token, an expired session, none at all where
    /// loopback is not trusted); 403 for a session request that changes something without the
    /// session's CSRF token.
    pub(crate) fn identify(
        &self,
        method: &Method,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Caller, ApiError> {
        let caller = |name: Arc<str>, role, via| Caller {
            name,
            role,
            via,
            csrf: None,
            user: None,
            audited: Arc::new(AtomicBool::new(false)),
        };
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let Some(presented) = value.to_str().ok().and_then(bearer) else {
                return Err(unauthorized("the Authorization header must be `Bearer <token>`"));
            };
            if let Some(expected) = &self.token {
                if bool::from(digest(presented).ct_eq(expected)) {
                    return Ok(caller(Arc::from("token"), Role::Admin, Via::Token));
                }
            }
            return match self.operators.token(presented) {
                Some(t) => Ok(caller(Arc::from(format!("token:{}", t.name)), t.role, Via::Token)),
                None => Err(unauthorized("the token is not valid")),
            };
        }
        if let Some(cookie) = session_cookie(headers) {
            let Some((user, csrf)) = self.sessions.find(cookie) else {
                return Err(unauthorized("the session has ended: log in again"));
            };
            let Some(role) = self.operators.role_of(&user) else {
                self.sessions.end(cookie);
                return Err(unauthorized("the session has ended: log in again"));
            };
            if !is_safe(method) {
                let presented = headers.get(CSRF_HEADER).map(HeaderValue::as_bytes).unwrap_or_default();
                if !bool::from(presented.ct_eq(csrf.as_bytes())) {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "the X-CSRF-Token header does not match the session's CSRF token",
                    ));
                }
            }
            let mut admitted = caller(user.clone(), role, Via::Session);
            admitted.csrf = Some(csrf);
            admitted.user = Some(user);
            return Ok(admitted);
        }
        let from_browser = headers.contains_key(header::ORIGIN) || headers.contains_key("sec-fetch-site");
        match peer {
            Some(ip) if self.trust_loopback && !from_browser && ip.to_canonical().is_loopback() => {
                Ok(caller(Arc::from("loopback"), Role::Admin, Via::Loopback))
            }
            _ => Err(unauthorized("log in, or send `Authorization: Bearer <token>`")),
        }
    }

    /// Whether `ip` may try another login.
    pub(crate) fn login_allowed(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else { return true };
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        failures.get(&ip).is_none_or(|(n, since)| *n < LOGIN_FAILURES || since.elapsed() >= LOGIN_WINDOW)
    }

    /// Counts a failed login from `ip`.
    pub(crate) fn login_failed(&self, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() > 100_000 {
            failures.retain(|_, (_, since)| since.elapsed() < LOGIN_WINDOW);
        }
        let entry = failures.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= LOGIN_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    /// Forgets the failures of `ip` after a successful login.
    pub(crate) fn login_succeeded(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            self.failures.lock().unwrap_or_else(PoisonError::into_inner).remove(&ip);
        }
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The value of the session cookie, if the request carries one.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty())
}

/// The token of an `Authorization` header value `Bearer <token>` (the scheme is case-insensitive,
/// RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The role a request needs: reading needs viewer, changing needs operator, users, tokens and the
/// configuration need admin; logging out and changing one's own password need only a login.
pub(crate) fn required_role(method: &Method, path: &str) -> Role {
    let admin_area = ["/api/v1/users", "/api/v1/tokens", "/api/v1/config"]
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')));
    if admin_area {
        return Role::Admin;
    }
    let evaluation_only = *method == Method::POST && path == "/api/v1/rules/test";
    if is_safe(method) || evaluation_only || matches!(path, "/api/v1/logout" | "/api/v1/me/password") {
        return Role::Viewer;
    }
    Role::Operator
}

/// Routes that need no caller: logging in.
fn is_public(method: &Method, path: &str) -> bool {
    *method == Method::POST && path == "/api/v1/login"
}

/// Middleware: admits the request (or answers 401/403 before its body is read), hands the
/// [`Caller`] to the handler, and audits a change the handler did not.
pub(crate) async fn check(State(gate): State<Arc<Gate>>, mut request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if is_public(&method, &path) {
        return next.run(request).await;
    }
    let caller = match gate.identify(&method, request.headers(), peer) {
        Ok(caller) => caller,
        Err(refused) => {
            debug!(?peer, %method, path, "HTTP API request refused");
            return refused.into_response();
        }
    };
    let needed = required_role(&method, &path);
    if caller.role < needed {
        gate.access.audit(
            &caller.name,
            "api.denied",
            &format!("{method} {path}"),
            &format!("needs {needed}"),
        );
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{method} {path} needs the {needed} role; {} has {}", caller.name, caller.role),
        )
        .into_response();
    }
    request.extensions_mut().insert(caller.clone());
    let response = CALLER.scope(caller.clone(), next.run(request)).await;
    if !is_safe(&method) && !caller.audited.load(Ordering::Relaxed) {
        let status = response.status();
        gate.access.audit(
            &caller.name,
            "api.request",
            &format!("{method} {path}"),
            &format!("status {}", status.as_u16()),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_method_and_the_area() {
        assert_eq!(required_role(&Method::GET, "/api/v1/devices"), Role::Viewer);
        assert_eq!(required_role(&Method::POST, "/api/v1/devices"), Role::Operator);
        assert_eq!(required_role(&Method::DELETE, "/api/v1/quarantine/3"), Role::Operator);
        assert_eq!(required_role(&Method::GET, "/api/v1/users"), Role::Admin);
        assert_eq!(required_role(&Method::DELETE, "/api/v1/tokens/abc"), Role::Admin);
        assert_eq!(required_role(&Method::GET, "/api/v1/config"), Role::Admin);
        assert_eq!(required_role(&Method::GET, "/api/v1/usersx"), Role::Viewer);
        assert_eq!(required_role(&Method::POST, "/api/v1/logout"), Role::Viewer);
        assert_eq!(required_role(&Method::POST, "/api/v1/me/password"), Role::Viewer);
        assert_eq!(required_role(&Method::POST, "/api/v1/rules/test"), Role::Viewer);
        assert_eq!(required_role(&Method::PUT, "/api/v1/rules/test"), Role::Operator);
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; m2m_session=xyz; b=2"));
        assert_eq!(session_cookie(&headers), Some("xyz"));
        headers.insert(header::COOKIE, HeaderValue::from_static("m2m_sessionx=1; m2m_session="));
        assert_eq!(session_cookie(&headers), None);
    }

    #[test]
    fn bearer_takes_the_scheme_case_insensitively() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }

    #[test]
    fn a_session_ends_when_idle_or_old() {
        let minute = Duration::from_secs(60);
        assert!(alive_after(Duration::ZERO, minute));
        assert!(alive_after(SESSION_IDLE - minute, SESSION_MAX - minute));
        assert!(!alive_after(SESSION_IDLE, minute));
        assert!(!alive_after(minute, SESSION_MAX));
    }
}
