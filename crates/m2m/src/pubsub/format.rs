//! How `m2m sub` prints a message: the payload, `topic payload` (`-v`), or one JSON object per line
//! (`--format json`).
//!
//! A JSON line:
//!
//! ```text
//! {"topic":"plant/1/temp","qos":1,"retain":false,"payload":{"t":21.5},
//!  "content_type":"application/json","response_topic":"plant/1/reply","correlation_data":"cmVxLTE=",
//!  "message_expiry":60,"user_properties":[["unit","C"]]}
//! ```
//!
//! - `payload` is the payload itself when it is a JSON document, written as it came (its numbers
//!   and key order kept) unless it spans several lines; else a string, with `"encoding":"text"`
//!   when it is UTF-8 and `"encoding":"base64"` when not. A JSON string payload (`"on"`) and a text
//!   payload (`on`) both print `"payload":"on"`; `encoding` tells them apart.
//! - MQTT 5 properties appear only when the message has them: `content_type`, `response_topic`,
//!   `correlation_data` (base64), `message_expiry` (the seconds left, as received), `user_properties`
//!   (`[name, value]` pairs in order, duplicates kept).

use base64::Engine as _;
use m2m_codec::Publish;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// The payload only, or `topic payload` with `-v`.
    Text,
    /// One JSON object per message and line.
    Json,
}

/// Writes `publish` to `out` in `format`; `verbose` adds the topic to text, `newline` ends the
/// message with `\n`.
pub(crate) fn write_message(
    out: &mut Vec<u8>,
    publish: &Publish,
    format: Format,
    verbose: bool,
    newline: bool,
) {
    match format {
        Format::Text => {
            if verbose {
                out.extend_from_slice(publish.topic.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(&publish.payload);
        }
        Format::Json => json_line(out, publish),
    }
    if newline {
        out.push(b'\n');
    }
}

fn json_string(out: &mut Vec<u8>, text: &str) {
    // Serializing a string cannot fail.
    serde_json::to_writer(&mut *out, text).expect("a string serializes");
}

fn json_line(out: &mut Vec<u8>, publish: &Publish) {
    out.extend_from_slice(b"{\"topic\":");
    json_string(out, &publish.topic);
    out.extend_from_slice(format!(",\"qos\":{},\"retain\":{}", publish.qos as u8, publish.retain).as_bytes());
    out.extend_from_slice(b",\"payload\":");
    let payload = &publish.payload[..];
    match std::str::from_utf8(payload) {
        Ok(text) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
            if text.contains(['\n', '\r']) {
                // A JSON line holds no line break: the document is written again on one line.
                let value: serde_json::Value = serde_json::from_str(text).expect("parsed just above");
                serde_json::to_writer(&mut *out, &value).expect("a value serializes");
            } else {
                out.extend_from_slice(text.trim().as_bytes());
            }
        }
        Ok(text) => {
            json_string(out, text);
            out.extend_from_slice(b",\"encoding\":\"text\"");
        }
        Err(_) => {
            json_string(out, &base64::engine::general_purpose::STANDARD.encode(payload));
            out.extend_from_slice(b",\"encoding\":\"base64\"");
        }
    }
    let p = &publish.properties;
    if let Some(content_type) = &p.content_type {
        out.extend_from_slice(b",\"content_type\":");
        json_string(out, content_type);
    }
    if let Some(topic) = &p.response_topic {
        out.extend_from_slice(b",\"response_topic\":");
        json_string(out, topic);
    }
    if let Some(data) = &p.correlation_data {
        out.extend_from_slice(b",\"correlation_data\":");
        json_string(out, &base64::engine::general_purpose::STANDARD.encode(data));
    }
    if let Some(expiry) = p.message_expiry_interval {
        out.extend_from_slice(format!(",\"message_expiry\":{expiry}").as_bytes());
    }
    if !p.user_properties.is_empty() {
        out.extend_from_slice(b",\"user_properties\":[");
        for (i, (name, value)) in p.user_properties.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'[');
            json_string(out, name);
            out.push(b',');
            json_string(out, value);
            out.push(b']');
        }
        out.push(b']');
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use m2m_codec::{PublishProperties, QoS};

    fn publish(payload: &'static [u8], properties: PublishProperties) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: None,
            properties,
            payload: Bytes::from_static(payload),
        }
    }

    fn json(p: &Publish) -> String {
        let mut out = Vec::new();
        write_message(&mut out, p, Format::Json, false, true);
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'), "{line:?}");
        serde_json::from_str::<serde_json::Value>(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        line.trim_end().to_owned()
    }

    #[test]
    fn a_json_payload_is_kept_as_it_came() {
        let line = json(&publish(b" {\"t\": 21.50, \"a\": 1} ", PublishProperties::default()));
        assert_eq!(line, r#"{"topic":"a/b","qos":1,"retain":true,"payload":{"t": 21.50, "a": 1}}"#);
    }

    #[test]
    fn a_json_payload_over_several_lines_is_written_on_one() {
        let line = json(&publish(b"[1,\n 2]\n", PublishProperties::default()));
        assert!(line.ends_with(r#""payload":[1,2]}"#), "{line}");
    }

    #[test]
    fn text_and_binary_payloads_say_their_encoding() {
        let line = json(&publish(b"on", PublishProperties::default()));
        assert!(line.ends_with(r#""payload":"on","encoding":"text"}"#), "{line}");
        let line = json(&publish(b"\xff\x00", PublishProperties::default()));
        assert!(line.ends_with(r#""payload":"/wA=","encoding":"base64"}"#), "{line}");
        let line = json(&publish(b"", PublishProperties::default()));
        assert!(line.ends_with(r#""payload":"","encoding":"text"}"#), "{line}");
    }

    #[test]
    fn mqtt5_properties_are_printed_when_present() {
        let properties = PublishProperties {
            content_type: Some("text/plain".into()),
            response_topic: Some("r/1".into()),
            correlation_data: Some(Bytes::from_static(b"id-1")),
            message_expiry_interval: Some(60),
            user_properties: vec![("k".into(), "v\"1".into()), ("k".into(), "v2".into())],
            ..PublishProperties::default()
        };
        let line = json(&publish(b"1", properties));
        assert_eq!(
            line,
            r#"{"topic":"a/b","qos":1,"retain":true,"payload":1,"content_type":"text/plain","response_topic":"r/1","correlation_data":"aWQtMQ==","message_expiry":60,"user_properties":[["k","v\"1"],["k","v2"]]}"#
        );
    }

    #[test]
    fn text_output_is_the_payload_or_the_topic_and_payload() {
        let p = publish(b"hello", PublishProperties::default());
        let mut out = Vec::new();
        write_message(&mut out, &p, Format::Text, false, true);
        write_message(&mut out, &p, Format::Text, true, false);
        assert_eq!(out, b"hello\na/b hello");
    }
}
