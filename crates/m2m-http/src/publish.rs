//! `POST /api/v1/publish`: a message published by the node itself, as an operator asks.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine as _;
use bytes::Bytes;
use m2m_codec::QoS;
use m2m_router::Command;
use m2m_session::Message;
use m2m_topic::TopicName;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorBody};
use crate::extract::Json;
use crate::ApiState;

/// The publisher a message sent through the API carries (its "client id" in the history).
pub(crate) const PUBLISHER: &str = "$api";

/// The body of `POST /publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishBody {
    topic: String,
    /// A string (its text, or base64 with `encoding: "base64"`) or any other JSON value (sent as
    /// JSON).
    payload: serde_json::Value,
    /// `text` (the default) or `base64`.
    #[serde(default)]
    encoding: Option<String>,
    /// 0 (the default), 1 or 2.
    #[serde(default)]
    qos: Option<u8>,
    #[serde(default)]
    retain: bool,
    /// MQTT 5 user properties, as `[name, value]` pairs, in order.
    #[serde(default)]
    user_properties: Vec<(String, String)>,
}

/// The answer of `POST /publish`.
#[derive(Debug, Serialize)]
pub(crate) struct Published {
    topic: String,
    qos: u8,
}

/// The payload's bytes, and whether they are UTF-8 text (the payload format indicator).
fn payload_bytes(payload: serde_json::Value, encoding: Option<&str>) -> Result<(Bytes, bool), ApiError> {
    match (encoding, payload) {
        (None | Some("text"), serde_json::Value::String(text)) => Ok((Bytes::from(text), true)),
        (None | Some("text"), json) => Ok((Bytes::from(json.to_string()), true)),
        (Some("base64"), serde_json::Value::String(text)) => {
            match base64::engine::general_purpose::STANDARD.decode(text.as_bytes()) {
                Ok(bytes) => Ok((Bytes::from(bytes), false)),
                Err(e) => Err(ApiError::bad_request(format!("payload is not valid base64: {e}"))),
            }
        }
        (Some("base64"), _) => Err(ApiError::bad_request("a base64 payload must be a string")),
        (Some(other), _) => {
            Err(ApiError::bad_request(format!("encoding must be text or base64, not {other:?}")))
        }
    }
}

/// `POST /publish`
#[utoipa::path(
    post,
    path = "/api/v1/publish",
    tag = "clients",
    request_body(content = serde_json::Value, content_type = "application/json",
        description = "`{topic, payload: string | JSON, encoding?: text | base64, qos?: 0 | 1 | 2, \
            retain?: bool, user_properties?: [[name, value]]}`"),
    responses(
        (status = 200, description = "The node published the message: `{topic, qos}`", body = serde_json::Value),
        (status = 400, description = "An invalid topic (empty, with a wildcard, under $SYS), QoS, \
            encoding or payload", body = ErrorBody),
        (status = 404, description = "This API is not attached to a broker", body = ErrorBody),
    )
)]
pub(crate) async fn publish(
    State(state): State<ApiState>,
    Json(body): Json<PublishBody>,
) -> Result<axum::Json<Published>, ApiError> {
    let topic = TopicName::try_from(body.topic.as_str())
        .map_err(|e| ApiError::bad_request(format!("invalid topic {:?}: {e}", body.topic)))?;
    if topic.is_sys() {
        return Err(ApiError::bad_request("topics under $SYS are the node's own"));
    }
    let qos_level = body.qos.unwrap_or(0);
    let Some(qos) = QoS::from_u8(qos_level) else {
        return Err(ApiError::bad_request(format!("qos must be 0, 1 or 2, not {qos_level}")));
    };
    let (payload, utf8) = payload_bytes(body.payload, body.encoding.as_deref())?;
    let Some(router) = state.broker.router.as_ref() else {
        return Err(ApiError::not_found("this node does not publish through its API"));
    };
    let mut message = Message::new(topic, payload, qos, body.retain);
    message.publisher = Some(Arc::from(PUBLISHER));
    message.properties.payload_format_indicator = utf8.then_some(true);
    message.properties.user_properties =
        body.user_properties.into_iter().map(|(k, v)| (Arc::from(k), Arc::from(v))).collect();
    let command = Command::Publish { message: Arc::new(message), from: None, ack: None };
    if router.send(command).await.is_err() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down"));
    }
    let detail = format!("qos {qos_level}{}", if body.retain { ", retained" } else { "" });
    crate::auth::audit(&state.access, "message.publish", &body.topic, &detail);
    Ok(axum::Json(Published { topic: body.topic, qos: qos_level }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_are_text_json_or_base64() {
        let (bytes, utf8) = payload_bytes(json!("21.5"), None).unwrap();
        assert_eq!((&bytes[..], utf8), (&b"21.5"[..], true));
        let (bytes, _) = payload_bytes(json!({"t": 1}), Some("text")).unwrap();
        assert_eq!(&bytes[..], br#"{"t":1}"#);
        let (bytes, utf8) = payload_bytes(json!("AAH/"), Some("base64")).unwrap();
        assert_eq!((&bytes[..], utf8), (&[0u8, 1, 255][..], false));
    }

    #[test]
    fn bad_payloads_and_encodings_are_refused() {
        for (payload, encoding) in
            [(json!("not base64!"), Some("base64")), (json!(5), Some("base64")), (json!("x"), Some("hex"))]
        {
            let e = payload_bytes(payload, encoding).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        }
    }
}
