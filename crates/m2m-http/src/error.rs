//! Errors: [`HttpError`] for starting and running the server, and `ApiError`, the one error type
//! handlers return, which becomes a JSON body `{"error": "<code>", "message": "..."}` with its
//! status.

use std::net::SocketAddr;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use m2m_access::{QuarantineError, RegistryError};

/// What went wrong starting or running the HTTP server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The listening socket could not be bound.
    #[error("cannot listen for HTTP on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configured token is empty (it would admit anyone sending `Bearer `).
    #[error("the HTTP API token is empty")]
    EmptyToken,
    /// The server stopped with an IO error.
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// The body of every error answer (for the OpenAPI document).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct ErrorBody {
    /// The kind of error, from the status: `bad_request`, `unauthorized`, `forbidden`,
    /// `not_found`, `method_not_allowed`, `conflict`, `payload_too_large`,
    /// `unsupported_media_type`, `too_many_requests`, `internal`, `unavailable`.
    error: String,
    /// What went wrong, for a person.
    message: String,
}

/// The `error` code of an answer with `status`.
pub(crate) fn code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    }
}

/// The message shown to a client instead of an internal error's details (which are logged).
const INTERNAL: &str = "internal error; see the node's log";

/// An error answered to an API client: a status and a message, sent as
/// `{"error": code, "message": message}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// A failure of the node, not of the request: logged here with its causes, answered with a
    /// generic message.
    pub(crate) fn internal(what: &str, error: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %Chain(error), "HTTP API: {what} failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, INTERNAL)
    }

    /// One of axum's own rejections (a body that is not JSON, too large, a bad path parameter), as
    /// JSON. A body that parses but does not fit the expected shape (axum says 422) is a 400 here,
    /// like every other invalid input.
    pub(crate) fn rejected(status: StatusCode, text: String) -> Self {
        let status =
            if status == StatusCode::UNPROCESSABLE_ENTITY { StatusCode::BAD_REQUEST } else { status };
        Self::new(status, text)
    }

    /// The status, for tests and logs.
    #[cfg(test)]
    #[allow(dead_code)]
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(serde_json::json!({ "error": code(self.status), "message": self.message }));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        match &error {
            RegistryError::InvalidName { .. } | RegistryError::Rule { .. } => {
                Self::bad_request(error.to_string())
            }
            // An import that does not parse (JSON, or a CSV line) is the client's input.
            RegistryError::Decode { what: "import", .. } => Self::bad_request(error.to_string()),
            RegistryError::Exists(_) => Self::new(StatusCode::CONFLICT, error.to_string()),
            RegistryError::NotFound { .. } => Self::not_found(error.to_string()),
            RegistryError::Hash(_) | RegistryError::Decode { .. } | RegistryError::Store(_) => {
                Self::internal("a registry change", &error)
            }
        }
    }
}

impl From<m2m_access::OperatorError> for ApiError {
    fn from(error: m2m_access::OperatorError) -> Self {
        use m2m_access::OperatorError as E;
        match &error {
            E::Invalid(_) | E::WrongPassword => Self::bad_request(error.to_string()),
            E::Exists(_) | E::LastAdmin(_) => Self::new(StatusCode::CONFLICT, error.to_string()),
            E::NotFound { .. } => Self::not_found(error.to_string()),
            _ => Self::internal("an operator change", &error),
        }
    }
}

impl From<QuarantineError> for ApiError {
    fn from(error: QuarantineError) -> Self {
        match &error {
            QuarantineError::InvalidTarget(_) => Self::bad_request(error.to_string()),
            QuarantineError::NotFound(_) => Self::not_found(error.to_string()),
            QuarantineError::Decode { .. } | QuarantineError::Store(_) => {
                Self::internal("a quarantine change", &error)
            }
        }
    }
}

/// An error and its sources, `: `-separated, for the log.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
