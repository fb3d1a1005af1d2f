//! The rules front end: arbitrary text parsed and compiled as a rule, and every rule that compiles
//! evaluated against an arbitrary payload, as a message and as each event it names. Nothing may
//! panic; an evaluation may fail only with an [`EvalError`](m2m_rules::EvalError). The text is
//! also parsed as an action [`Template`] and rendered with the rule's output.
//!
//! The input is the rule, a NUL byte, then the payload (the whole input is the rule when there is
//! no NUL).

#![no_main]

use libfuzzer_sys::fuzz_target;
use m2m_rules::{Input, RuleQuery, Source, Template};
use serde_json::{Map, Value};

/// 2026-12-02T00:00:00Z, so that time functions have a realistic clock.
const NOW_MS: u64 = 1_796_169_600_000;

fuzz_target!(|data: &[u8]| {
    let (sql, payload) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let Ok(sql) = std::str::from_utf8(sql) else { return };
    let template = Template::parse(sql).ok();
    let Ok(rule) = RuleQuery::parse(sql) else { return };
    assert_eq!(rule.sql(), sql);
    let _ = rule.columns().count();

    let user_properties = [("unit".into(), "C".into()), ("unit".into(), "F".into())];
    let mut message = Input::message("plant/line1/temp", payload, NOW_MS);
    message.clientid = Some("sensor-7");
    message.username = Some("alice");
    message.peerhost = Some("192.0.2.7");
    message.qos = 1;
    message.retain = true;
    message.user_properties = &user_properties;
    message.content_type = Some("application/json");
    let window: Map<String, Value> = serde_json::from_value(
        serde_json::json!({"count": 3, "avg": 1.5, "min": -1, "max": 4, "sum": 4.5, "secs": 60}),
    )
    .expect("a JSON object");
    message.window = Some(&window);
    let output = rule.evaluate(&message).ok().flatten();
    if let (Some(template), Some(output)) = (&template, &output) {
        let _ = template.render(output);
    }

    // Events read their fields from a JSON object: the payload if it is one.
    let fields = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(fields)) => fields,
        _ => Map::new(),
    };
    for source in rule.sources() {
        if let Source::Event(kind) = source {
            let mut event = Input::event(*kind, &fields, NOW_MS);
            event.clientid = Some("sensor-7");
            event.topic = "plant/line1/temp";
            let _ = rule.evaluate(&event);
        }
    }
});
