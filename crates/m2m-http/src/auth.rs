//! Who may use the API: with a token, whoever sends `Authorization: Bearer <token>`; without one,
//! only clients on a loopback address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::debug;

use crate::error::ApiError;

/// The admission rule of one server.
#[derive(Clone)]
pub(crate) enum Gate {
    /// Requests must carry the token whose SHA-256 this is. Digests are compared, so that the time a
    /// comparison takes says nothing about the token's length or content.
    Token([u8; 32]),
    /// No token: only loopback clients.
    LoopbackOnly,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gate::Token(_) => f.write_str("Gate::Token(..)"),
            Gate::LoopbackOnly => f.write_str("Gate::LoopbackOnly"),
        }
    }
}

impl Gate {
    /// The gate for `token` (none: loopback only).
    pub(crate) fn new(token: Option<&str>) -> Self {
        match token {
            Some(t) => Gate::Token(Sha256::digest(t.as_bytes()).into()),
            None => Gate::LoopbackOnly,
        }
    }

    /// Whether a request with this `Authorization` header from `peer` (unknown: `None`) is served.
    ///
    /// # Errors
    /// 401 when a token is needed and the header does not carry it; 403 when, without a token,
    /// the client is not on a loopback address (or its address is unknown).
    pub(crate) fn admit(
        &self,
        authorization: Option<&HeaderValue>,
        peer: Option<IpAddr>,
    ) -> Result<(), ApiError> {
        match self {
            Gate::Token(expected) => {
                let presented = authorization.and_then(|v| v.to_str().ok()).and_then(bearer);
                let Some(presented) = presented else {
                    return Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "an `Authorization: Bearer <token>` header is required",
                    ));
                };
                let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
                if bool::from(digest.ct_eq(expected)) {
                    Ok(())
                } else {
                    Err(ApiError::new(StatusCode::UNAUTHORIZED, "the token is not valid"))
                }
            }
            Gate::LoopbackOnly => match peer {
                Some(ip) if ip.to_canonical().is_loopback() => Ok(()),
                _ => Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "no API token is configured: only clients on this machine (loopback) are served",
                )),
            },
        }
    }
}

/// The token of an `Authorization` header value `Bearer <token>` (the scheme is case-insensitive,
/// RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Middleware: refuses requests that the gate does not admit, before their body is read.
pub(crate) async fn check(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
    match gate.admit(request.headers().get(header::AUTHORIZATION), peer) {
        Ok(()) => next.run(request).await,
        Err(refused) => {
            debug!(?peer, method = %request.method(), path = request.uri().path(), "HTTP API request refused");
            refused.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn without_a_token_only_loopback_clients_are_admitted() {
        let gate = Gate::new(None);
        for peer in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert!(gate.admit(None, ip(peer)).is_ok(), "{peer}");
        }
        for peer in
            [ip("192.0.2.7"), ip("10.0.0.1"), ip("2001:db8::1"), ip("::ffff:192.0.2.7"), ip("0.0.0.0"), None]
        {
            let refused = gate.admit(None, peer).unwrap_err();
            assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{peer:?}");
        }
    }

    #[test]
    fn without_a_token_a_bearer_header_does_not_admit_a_remote_client() {
        let gate = Gate::new(None);
        let header = HeaderValue::from_static("Bearer anything");
        assert_eq!(gate.admit(Some(&header), ip("192.0.2.7")).unwrap_err().status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn with_a_token_only_its_bearers_are_admitted_from_anywhere() {
        let gate = Gate::new(Some("s3cret"));
        let good = ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret "];
        for value in good {
            let header = HeaderValue::from_str(value).unwrap();
            assert!(gate.admit(Some(&header), ip("192.0.2.7")).is_ok(), "{value:?}");
        }
        let bad = ["Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret", "Bearer ", "Bearer", ""];
        for value in bad {
            let header = HeaderValue::from_str(value).unwrap();
            let refused = gate.admit(Some(&header), ip("127.0.0.1")).unwrap_err();
            assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{value:?}");
        }
        let not_text = HeaderValue::from_bytes(b"Bearer \xff").unwrap();
        assert_eq!(
            gate.admit(Some(&not_text), ip("127.0.0.1")).unwrap_err().status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(gate.admit(None, ip("127.0.0.1")).unwrap_err().status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn the_token_is_not_shown_in_debug_output() {
        assert!(!format!("{:?}", Gate::new(Some("s3cret"))).contains("s3cret"));
    }
}
