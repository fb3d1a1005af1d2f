//! The language end to end: rule text in, output out. One test per operator, function and error kind.

use std::sync::Arc;

use m2m_topic::TopicName;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::{EvalError, EventKind, Input, RuleError, RuleQuery, Source};

const TOPIC: &str = "plant/line-1/motor";
const PAYLOAD: &str = r#"{"temp": 85.5, "rpm": 1200, "ok": true, "name": "M1", "nothing": null,
    "tags": ["a", "b", "c"], "nested": {"deep": {"x": 7}}, "odd key": 1, "s": " padded ", "num_str": "42"}"#;

fn rule(sql: &str) -> RuleQuery {
    RuleQuery::parse(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn message(payload: &[u8]) -> Input<'_> {
    let mut input = Input::message(TOPIC, payload, 1_700_000_000_123);
    input.clientid = Some("motor-1");
    input.username = Some("plant");
    input.peerhost = Some("10.0.0.7");
    input.qos = 1;
    input
}

/// Evaluates `SELECT <expr> AS v` on `payload` and returns `v`.
fn eval_on(expr: &str, payload: &str) -> Result<Value, EvalError> {
    let q = rule(&format!("SELECT {expr} AS v FROM \"#\""));
    let out = q.evaluate(&message(payload.as_bytes()))?.expect("no WHERE");
    Ok(out["v"].clone())
}

fn eval(expr: &str) -> Result<Value, EvalError> {
    eval_on(expr, PAYLOAD)
}

/// `expr` evaluates to `expected`.
#[track_caller]
fn check(expr: &str, expected: Value) {
    match eval(expr) {
        Ok(v) => assert_eq!(v, expected, "{expr}"),
        Err(e) => panic!("{expr}: {e}"),
    }
}

/// `expr` fails to evaluate, with a message containing `needle`.
#[track_caller]
fn fails(expr: &str, needle: &str) {
    match eval(expr) {
        Ok(v) => panic!("{expr}: expected an error, got {v}"),
        Err(e) => assert!(e.to_string().contains(needle), "{expr}: {e} does not mention {needle:?}"),
    }
}

fn parse_error(sql: &str) -> RuleError {
    match RuleQuery::parse(sql) {
        Ok(_) => panic!("{sql}: parsed"),
        Err(e) => e,
    }
}

/// Parsing `sql` fails with a message containing `needle`.
#[track_caller]
fn rejects(sql: &str, needle: &str) {
    let e = parse_error(sql).to_string();
    assert!(e.contains(needle), "{sql}: {e:?} does not mention {needle:?}");
}

fn topic(s: &str) -> TopicName {
    TopicName::try_from(s).unwrap()
}

// ---- The demo rules and the examples ----

#[test]
fn street_lamp_turns_on_when_a_person_is_present() {
    let q = rule(r#"SELECT 'on' AS state FROM "building/+/presence" WHERE payload.person = true"#);
    assert!(q.matches_topic(&topic("building/lamp-7/presence")));
    assert!(!q.matches_topic(&topic("building/lamp-7/temp")));
    let present = Input::message("building/lamp-7/presence", br#"{"person": true}"#, 0);
    assert_eq!(q.evaluate(&present).unwrap(), Some(json!({"state": "on"}).as_object().unwrap().clone()));
    for payload in [&br#"{"person": false}"#[..], br#"{}"#, b"not json", b"", br#"{"person": "true"}"#] {
        let input = Input::message("building/lamp-7/presence", payload, 0);
        assert_eq!(q.evaluate(&input).unwrap(), None, "{}", String::from_utf8_lossy(payload));
    }
}

#[test]
fn alarm_clock_ring_brews_coffee_at_the_ring_time() {
    let q = rule(r#"SELECT 'brew' AS cmd, payload.time AS at FROM "kitchen/alarm-clock/ring""#);
    assert!(q.matches_topic(&topic("kitchen/alarm-clock/ring")));
    let input = Input::message("kitchen/alarm-clock/ring", br#"{"time": "06:30"}"#, 0);
    let out = q.evaluate(&input).unwrap().unwrap();
    assert_eq!(Value::Object(out), json!({"cmd": "brew", "at": "06:30"}));
}

#[test]
fn the_overheating_motor_rule_selects_fields_and_filters() {
    let q =
        rule(r#"SELECT payload.temp AS t, clientid, topic FROM "factory/+/temp" WHERE payload.temp > 80"#);
    let mut input = Input::message("factory/line1/temp", br#"{"temp": 81}"#, 0);
    input.clientid = Some("m1");
    let out = q.evaluate(&input).unwrap().unwrap();
    assert_eq!(Value::Object(out), json!({"t": 81, "clientid": "m1", "topic": "factory/line1/temp"}));
    let cool = Input::message("factory/line1/temp", br#"{"temp": 80}"#, 0);
    assert_eq!(q.evaluate(&cool).unwrap(), None);
}

#[test]
fn several_filters_and_in_lists() {
    let q = rule(r#"SELECT * FROM "a/#", "b/+/c" WHERE qos = 1 AND payload.x IN (1, 2, 3)"#);
    assert!(q.matches_topic(&topic("a")));
    assert!(q.matches_topic(&topic("a/z/z")));
    assert!(q.matches_topic(&topic("b/q/c")));
    assert!(!q.matches_topic(&topic("b/q/d")));
    let mut input = Input::message("a/1", br#"{"x": 2}"#, 5);
    assert_eq!(q.evaluate(&input).unwrap(), None, "qos 0");
    input.qos = 1;
    let out = q.evaluate(&input).unwrap().unwrap();
    assert_eq!(out["payload"], json!({"x": 2}));
    assert_eq!(out["qos"], 1);
}

#[test]
fn topic_levels_and_case_in_one_rule() {
    let q = rule(
        r#"SELECT topic_level(topic, 2) AS line,
                  CASE WHEN payload.v > 10 THEN 'high' ELSE 'low' END AS level
           FROM "plant/#""#,
    );
    let out = q.evaluate(&Input::message("plant/l2/x", br#"{"v": 11}"#, 0)).unwrap().unwrap();
    assert_eq!(Value::Object(out), json!({"line": "l2", "level": "high"}));
    let out = q.evaluate(&Input::message("plant/l3", br#"{"v": 1}"#, 0)).unwrap().unwrap();
    assert_eq!(Value::Object(out), json!({"line": "l3", "level": "low"}));
}

// ---- Sources ----

#[test]
fn sources_are_listed_in_order_without_duplicates() {
    let q = rule(r#"SELECT * FROM "a/+", "$events/client_connected", "a/+", "$SYS/#""#);
    let sources: Vec<String> = q.sources().iter().map(ToString::to_string).collect();
    assert_eq!(sources, ["a/+", "$events/client_connected", "$SYS/#"]);
    assert!(matches!(q.sources()[1], Source::Event(EventKind::ClientConnected)));
}

#[test]
fn wildcard_filters_do_not_match_dollar_topics() {
    let q = rule(r##"SELECT * FROM "#""##);
    assert!(q.matches_topic(&topic("a/b")));
    assert!(!q.matches_topic(&topic("$SYS/uptime")));
    let q = rule(r#"SELECT * FROM "$SYS/#""#);
    assert!(q.matches_topic(&topic("$SYS/uptime")));
}

#[test]
fn every_event_is_a_source() {
    for kind in EventKind::ALL {
        let q = rule(&format!("SELECT clientid FROM \"{}\"", kind.source()));
        assert!(q.matches_event(kind));
        assert!(!q.matches_topic(&topic("a")));
        for other in EventKind::ALL.into_iter().filter(|k| *k != kind) {
            assert!(!q.matches_event(other));
        }
    }
}

#[test]
fn topic_filters_with_special_characters_parse() {
    for filter in ["#", "+", "+/+", "a//b", "with space/+", "ünï/cödé/#", "$share-like/x", "a/\"\"q\"\"/#"]
    {
        let q = rule(&format!("SELECT * FROM \"{filter}\""));
        assert_eq!(q.sources().len(), 1, "{filter}");
    }
    let q = rule(r#"SELECT * FROM "a/""q""/#""#);
    assert!(q.matches_topic(&topic("a/\"q\"/x")));
    // Single quotes and plain names work too.
    assert!(rule("SELECT * FROM 'a/+'").matches_topic(&topic("a/b")));
    assert!(rule("SELECT * FROM sensors").matches_topic(&topic("sensors")));
}

#[test]
fn invalid_topic_filters_are_rejected_with_the_mqtt_rule() {
    for filter in ["a/#/b", "a+", "a/b#", "#/a", ""] {
        let e = parse_error(&format!("SELECT * FROM \"{filter}\""));
        assert!(matches!(e, RuleError::InvalidTopicFilter { .. }), "{filter}: {e}");
        assert!(e.to_string().contains("invalid topic filter"), "{e}");
    }
    rejects(r#"SELECT * FROM "a/#/b""#, "at line 1, column 15");
}

#[test]
fn unknown_events_are_rejected_with_the_list_of_events() {
    rejects(r#"SELECT * FROM "$events/client_exploded""#, "unknown event \"$events/client_exploded\"");
    rejects(r#"SELECT * FROM "$events/x""#, "$events/client_connected");
}

#[test]
fn unquoted_topic_filters_get_a_hint() {
    rejects("SELECT * FROM a/+/b", "must be in double quotes");
    rejects("SELECT * FROM sensors/#", "syntax error");
}

// ---- Parse errors: each unsupported construct is named ----

#[test]
fn unsupported_sql_is_named() {
    let cases = [
        (r#"SELECT * FROM "a" JOIN "b" ON 1 = 1"#, "JOIN is not supported"),
        (r#"SELECT payload.x FROM "a" GROUP BY payload.x"#, "GROUP BY"),
        (r#"SELECT payload.x FROM "a" WHERE 1 = 1 HAVING 1 = 1"#, "HAVING"),
        (r#"SELECT * FROM "a" ORDER BY qos"#, "ORDER BY"),
        (r#"SELECT * FROM "a" LIMIT 1"#, "LIMIT"),
        (r#"SELECT DISTINCT qos FROM "a""#, "DISTINCT"),
        (r#"SELECT * FROM "a" UNION SELECT * FROM "b""#, "UNION"),
        (r#"WITH x AS (SELECT 1) SELECT * FROM "a""#, "WITH"),
        (r#"SELECT * FROM (SELECT * FROM "a")"#, "subquery in FROM"),
        (r#"SELECT (SELECT 1) AS x FROM "a""#, "subquery"),
        (r#"SELECT * FROM "a" WHERE EXISTS (SELECT 1)"#, "subquery"),
        (r#"SELECT * FROM "a" WHERE qos IN (SELECT 1)"#, "IN with a subquery"),
        (r#"SELECT * FROM "a" AS x"#, "alias in FROM"),
        (r#"SELECT abs(qos) OVER () FROM "a""#, "window function"),
        (r#"SELECT INTERVAL '1' DAY FROM "a""#, "INTERVAL"),
        (r#"SELECT EXTRACT(YEAR FROM timestamp) FROM "a""#, "EXTRACT"),
        (r#"SELECT a.* FROM "a""#, "name.*"),
        (r#"SELECT * EXCEPT (qos) FROM "a""#, "EXCEPT"),
        (r#"SELECT qos -> 'a' FROM "a""#, "operator `->`"),
        (r#"SELECT [1, 2] FROM "a""#, "array literal"),
        (r#"SELECT payload.arr[1:2] FROM "a""#, "slice"),
        (r#"SELECT payload.arr[qos] FROM "a""#, "subscript"),
        ("INSERT INTO t VALUES (1)", "INSERT"),
        ("DELETE FROM t", "DELETE (a rule is a SELECT)"),
        ("  update t set a = 1", "UPDATE"),
        (r#"SELECT TRIM(BOTH 'x' FROM payload.s) FROM "a""#, "TRIM with BOTH"),
        (r#"SELECT TRY_CAST(qos AS INT) FROM "a""#, "TRY_CAST"),
        (r#"SELECT CAST(qos AS DATE) FROM "a""#, "CAST to date"),
        (r#"SELECT payload.a LIKE ANY ('x') FROM "a""#, "LIKE ANY"),
    ];
    for (sql, needle) in cases {
        rejects(sql, needle);
    }
}

#[test]
fn aggregates_are_refused_with_a_reason() {
    rejects(r#"SELECT count(*) FROM "a""#, "aggregate functions are not supported");
    rejects(r#"SELECT max(payload.x) FROM "a""#, "greatest(...)");
    rejects(r#"SELECT avg(payload.x) FROM "a""#, "unknown function `avg`");
}

#[test]
fn unknown_functions_and_argument_counts_are_parse_errors() {
    let e = parse_error(r#"SELECT frobnicate(payload) FROM "a""#);
    assert_eq!(e.to_string(), "unknown function `frobnicate` at line 1, column 8");
    assert_eq!(e.position().map(|p| (p.line, p.column)), Some((1, 8)));
    rejects(r#"SELECT abs(1, 2) FROM "a""#, "function `abs` takes 1 argument, got 2");
    rejects(r#"SELECT round() FROM "a""#, "function `round` takes 1 or 2 arguments, got 0");
    rejects(r#"SELECT coalesce() FROM "a""#, "takes at least 1 argument, got 0");
    rejects(r#"SELECT substr('a') FROM "a""#, "takes 2 or 3 arguments, got 1");
    rejects(r#"SELECT replace('a', 'b') FROM "a""#, "takes 3 arguments, got 2");
    rejects(r#"SELECT ceil(1.5, 1) FROM "a""#, "function `ceil` takes 1 argument, got 2");
    // Names are case-insensitive.
    check("UPPER('a')", json!("A"));
}

#[test]
fn unknown_fields_are_parse_errors_outside_event_rules() {
    rejects(r#"SELECT clientd FROM "a""#, "unknown field `clientd` at line 1, column 8");
    rejects(r#"SELECT * FROM "a" WHERE tmep > 1"#, "unknown field `tmep`");
    rejects(r#"SELECT topic.level FROM "a""#, "field `topic` has no sub-fields");
    rejects(r#"SELECT qos[0] FROM "a""#, "field `qos` has no sub-fields");
    rejects(r#"SELECT user_properties.a.b FROM "a""#, "field `user_properties.a` has no sub-fields");
}

#[test]
fn invalid_literal_arguments_are_parse_errors() {
    rejects(
        r#"SELECT regex_match(topic, '(') FROM "a""#,
        "invalid argument to `regex_match` at line 1, column 8",
    );
    rejects(r#"SELECT regex_replace(topic, '[', 'x') FROM "a""#, "invalid regular expression");
    rejects(r#"SELECT now_timestamp('fortnight') FROM "a""#, "unknown time unit");
    rejects(r#"SELECT unix_ts_to_rfc3339(timestamp, 'hour') FROM "a""#, "unknown time unit");
    rejects(r#"SELECT 1e999 AS x FROM "a""#, "invalid number");
    rejects(r#"SELECT * FROM "a" WHERE topic LIKE 'a' ESCAPE 'xy'"#, "ESCAPE");
}

#[test]
fn statements_other_than_one_select_with_from_are_rejected() {
    assert!(matches!(parse_error("SELECT 1 AS x"), RuleError::MissingFrom));
    assert!(matches!(
        parse_error(r#"SELECT * FROM "a"; SELECT * FROM "b""#),
        RuleError::NotOneStatement { count: 2 }
    ));
    assert!(matches!(parse_error(""), RuleError::NotOneStatement { count: 0 }));
    rejects("SELEC * FROM \"a\"", "syntax error");
    rejects(r#"SELECT * FROM "a" WHERE"#, "syntax error");
    // A trailing semicolon and comments are fine.
    rule("SELECT * -- all of it\nFROM \"a\" /* any */;");
}

#[test]
fn duplicate_column_names_are_rejected() {
    rejects(r#"SELECT payload.a.x, payload.b.x FROM "a""#, "two columns are named `x`");
    rejects(r#"SELECT 1 AS a, 2 AS a FROM "t""#, "two columns are named `a`");
    // Explicit columns may replace members of `*`.
    let q = rule(r#"SELECT *, 'x' AS topic FROM "t""#);
    let out = q.evaluate(&message(b"{}")).unwrap().unwrap();
    assert_eq!(out["topic"], "x");
}

#[test]
fn overlong_and_overdeep_rules_are_rejected_without_crashing() {
    let long = format!("SELECT '{}' AS x FROM \"a\"", "x".repeat(crate::MAX_RULE_LEN));
    assert!(matches!(parse_error(&long), RuleError::TooLong { .. }));

    let longest_chain = (crate::MAX_RULE_LEN - "SELECT 1 AS x FROM \"a\"".len()) / 2;
    let chain = format!("SELECT 1{} AS x FROM \"a\"", "+1".repeat(longest_chain));
    assert!(chain.len() <= crate::MAX_RULE_LEN);
    assert!(matches!(parse_error(&chain), RuleError::TooDeep { .. }), "a long chain");
    let parens = format!("SELECT {}1{} AS x FROM \"a\"", "(".repeat(500), ")".repeat(500));
    rejects(&parens, "syntax error");
    let calls = format!("SELECT {}1{} AS x FROM \"a\"", "abs(".repeat(500), ")".repeat(500));
    rejects(&calls, "syntax error");
    let nots = format!("SELECT * FROM \"a\" WHERE {}true", "NOT ".repeat(500));
    let _ = RuleQuery::parse(&nots).unwrap_err();

    // Within the limits, deep rules work.
    let q = rule(&format!("SELECT 1{} AS x FROM \"a\"", " + 1".repeat(crate::MAX_DEPTH - 2)));
    assert_eq!(q.evaluate(&message(b"")).unwrap().unwrap()["x"], json!(crate::MAX_DEPTH - 1));
    let q = rule(&format!("SELECT {}1{} AS x FROM \"a\"", "abs(".repeat(30), ")".repeat(30)));
    assert_eq!(q.evaluate(&message(b"")).unwrap().unwrap()["x"], 1);
}

#[test]
fn the_deepest_rules_parse_and_evaluate_on_a_small_thread_stack() {
    // Parsing grows its stack on demand; evaluation recurses at most MAX_DEPTH levels, which must fit
    // well within the 2 MiB of a default thread even in a debug build.
    let rules = [
        format!("SELECT 1{} AS x FROM \"a\"", " + 1".repeat(crate::MAX_DEPTH - 2)),
        format!("SELECT {}1{} AS x FROM \"a\"", "abs(".repeat(45), ")".repeat(45)),
        format!("SELECT 1 AS x FROM \"a\" WHERE {}true", "true AND ".repeat(crate::MAX_DEPTH - 2)),
    ];
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || {
            for sql in &rules {
                let out = rule(sql).evaluate(&message(b"")).unwrap();
                assert!(out.is_some(), "{sql}");
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

// ---- Fields ----

#[test]
fn payload_paths_reach_nested_values_and_array_elements() {
    check("payload.temp", json!(85.5));
    check("payload.rpm", json!(1200));
    check("payload.nested.deep.x", json!(7));
    check("payload.tags[0]", json!("a"));
    check("payload.tags[-1]", json!("c"));
    check("payload.tags[3]", Value::Null);
    check("payload.tags[-4]", Value::Null);
    check("payload['odd key']", json!(1));
    check("payload.`odd key`", json!(1));
    check("payload.nested['deep'].x", json!(7));
    check("payload.nested", json!({"deep": {"x": 7}}));
    check("payload.missing", Value::Null);
    check("payload.missing.deeper", Value::Null);
    check("payload.temp.x", Value::Null);
    check("payload.nothing", Value::Null);
}

#[test]
fn a_payload_that_is_not_json_is_text_or_bytes() {
    assert_eq!(eval_on("payload", "hello").unwrap(), json!("hello"));
    assert_eq!(eval_on("payload.x", "hello").unwrap(), Value::Null);
    assert_eq!(eval_on("payload", "").unwrap(), json!(""));
    assert_eq!(eval_on("payload", "21.5").unwrap(), json!(21.5));
    assert_eq!(eval_on("payload", "\"quoted\"").unwrap(), json!("quoted"));
    let q = rule(r#"SELECT payload, byte_size(payload) AS n, is_str(payload) AS s FROM "t""#);
    let out = q.evaluate(&message(&[0xff, 0x00, 0xfe])).unwrap().unwrap();
    assert_eq!(out["payload"], json!("/wD+"), "bytes are output as base64");
    assert_eq!(out["n"], 3);
    assert_eq!(out["s"], false);
}

#[test]
fn message_fields_are_readable() {
    let props: Vec<(Arc<str>, Arc<str>)> =
        vec![("site".into(), "north".into()), ("k".into(), "1".into()), ("k".into(), "2".into())];
    let mut input = message(b"{}");
    input.user_properties = &props;
    input.content_type = Some("application/json");
    input.retain = true;
    let q = rule(
        r#"SELECT topic, clientid, username, peerhost, qos, retain, timestamp, content_type,
                  user_properties.site AS site, user_properties.k AS k, user_properties.none AS none,
                  user_properties, event FROM "t""#,
    );
    let out = q.evaluate(&input).unwrap().unwrap();
    assert_eq!(
        Value::Object(out),
        json!({
            "topic": TOPIC, "clientid": "motor-1", "username": "plant", "peerhost": "10.0.0.7", "qos": 1,
            "retain": true, "timestamp": 1_700_000_000_123_u64, "content_type": "application/json",
            "site": "north", "k": "1", "none": null, "user_properties": {"site": "north", "k": "1"},
            "event": null,
        })
    );
}

#[test]
fn absent_optional_fields_are_null() {
    let q = rule(r#"SELECT clientid, username, peerhost, content_type FROM "t""#);
    let out = q.evaluate(&Input::message("t", b"", 0)).unwrap().unwrap();
    assert_eq!(
        Value::Object(out),
        json!({"clientid": null, "username": null, "peerhost": null, "content_type": null})
    );
}

#[test]
fn field_names_are_case_insensitive_but_paths_are_not() {
    check("PAYLOAD.rpm", json!(1200));
    check("Payload.RPM", Value::Null);
    check("QoS", json!(1));
}

fn connected_fields() -> Map<String, Value> {
    json!({"clientid": "dev-1", "proto_ver": 5, "keepalive": 60, "conn_props": {"session_expiry": 30}})
        .as_object()
        .unwrap()
        .clone()
}

#[test]
fn event_rules_read_the_events_own_fields() {
    let fields = connected_fields();
    let mut input = Input::event(EventKind::ClientConnected, &fields, 42);
    input.peerhost = Some("10.1.1.1");
    let q = rule(
        r#"SELECT clientid, peerhost, proto_ver, conn_props.session_expiry AS expiry, nope, event, timestamp
           FROM "$events/client_connected" WHERE keepalive >= 30"#,
    );
    let out = q.evaluate(&input).unwrap().unwrap();
    assert_eq!(
        Value::Object(out),
        json!({"clientid": "dev-1", "peerhost": "10.1.1.1", "proto_ver": 5, "expiry": 30, "nope": null,
               "event": "client_connected", "timestamp": 42})
    );
}

#[test]
fn select_star_outputs_every_field() {
    let q = rule(r#"SELECT * FROM "t""#);
    let out = q.evaluate(&message(br#"{"a": 1}"#)).unwrap().unwrap();
    assert_eq!(
        Value::Object(out),
        json!({"payload": {"a": 1}, "topic": TOPIC, "clientid": "motor-1", "username": "plant",
               "peerhost": "10.0.0.7", "qos": 1, "retain": false, "timestamp": 1_700_000_000_123_u64,
               "user_properties": {}, "content_type": null})
    );
    let text = q.evaluate(&message(b"plain text")).unwrap().unwrap();
    assert_eq!(text["payload"], "plain text");

    let fields = connected_fields();
    let event = q.evaluate(&Input::event(EventKind::ClientConnected, &fields, 1)).unwrap().unwrap();
    assert_eq!(event["event"], "client_connected");
    assert_eq!(event["clientid"], "dev-1");
    assert_eq!(event["keepalive"], 60);
}

// ---- Output names ----

#[test]
fn unnamed_columns_are_named_after_the_last_path_name_or_the_expression() {
    let q = rule(
        r#"SELECT payload.nested.deep.x, payload.temp, clientid, payload, payload.tags[0],
                  abs(payload.rpm), payload.rpm + 1, 'lit', json_decode('{"k": 1}').k FROM "t""#,
    );
    let names: Vec<&str> = q.columns().collect();
    assert_eq!(
        names,
        [
            "x",
            "temp",
            "clientid",
            "payload",
            "payload.tags[0]",
            "abs(payload.rpm)",
            "payload.rpm + 1",
            "'lit'",
            "k"
        ]
    );
    let out = q.evaluate(&message(PAYLOAD.as_bytes())).unwrap().unwrap();
    assert_eq!(out["x"], 7);
    assert_eq!(out["abs(payload.rpm)"], 1200);
    assert_eq!(out["k"], 1);
    assert_eq!(rule(r#"SELECT *, qos AS q FROM "t""#).columns().collect::<Vec<_>>(), ["*", "q"]);
}

// ---- WHERE ----

#[test]
fn where_null_rejects_and_where_non_boolean_is_an_error() {
    let q = rule(r#"SELECT 1 AS x FROM "t" WHERE payload.missing > 1"#);
    assert_eq!(q.evaluate(&message(PAYLOAD.as_bytes())).unwrap(), None);
    let q = rule(r#"SELECT 1 AS x FROM "t" WHERE payload.rpm"#);
    assert_eq!(
        q.evaluate(&message(PAYLOAD.as_bytes())),
        Err(EvalError::NotBoolean { clause: "WHERE", found: "an integer" })
    );
    let q = rule(r#"SELECT 1 AS x FROM "t" WHERE payload.ok"#);
    assert!(q.evaluate(&message(PAYLOAD.as_bytes())).unwrap().is_some());
}

#[test]
fn a_failing_where_is_an_error_and_the_select_list_is_not_evaluated_when_where_is_false() {
    let q = rule(r#"SELECT 1 / 0 AS x FROM "t" WHERE payload.rpm / 0 > 1"#);
    assert_eq!(q.evaluate(&message(PAYLOAD.as_bytes())), Err(EvalError::DivisionByZero));
    let q = rule(r#"SELECT 1 / 0 AS x FROM "t" WHERE false"#);
    assert_eq!(q.evaluate(&message(b"")), Ok(None));
}

// ---- Literals and operators ----

#[test]
fn literals() {
    check("42", json!(42));
    check("-7", json!(-7));
    check("-9223372036854775808", json!(i64::MIN));
    check("9223372036854775808", json!(9_223_372_036_854_775_808.0_f64));
    check("2.5", json!(2.5));
    check("1e3", json!(1000.0));
    check("'it''s'", json!("it's"));
    check("\"double quoted\"", json!("double quoted"));
    check("true", json!(true));
    check("FALSE", json!(false));
    check("null", Value::Null);
}

#[test]
fn arithmetic_keeps_integers_and_mixes_into_floats() {
    check("7 + 2", json!(9));
    check("7 - 9", json!(-2));
    check("7 * 3", json!(21));
    check("7 / 2", json!(3));
    check("-7 / 2", json!(-3));
    check("7 % 3", json!(1));
    check("-7 % 3", json!(-1));
    check("7 / 2.0", json!(3.5));
    check("0.5 + 1", json!(1.5));
    check("7.5 % 2", json!(1.5));
    check("payload.rpm / 100", json!(12));
    check("payload.temp * 2", json!(171.0));
    check("1 + 2 * 3", json!(7));
    check("(1 + 2) * 3", json!(9));
    check("-payload.rpm", json!(-1200));
    check("- (2.5)", json!(-2.5));
    check("+payload.rpm", json!(1200));
}

#[test]
fn arithmetic_with_null_is_null_and_errors_are_reported() {
    check("payload.missing + 1", Value::Null);
    check("1 - null", Value::Null);
    check("-payload.missing", Value::Null);
    fails("1 / 0", "division by zero");
    fails("1 % 0", "division by zero");
    fails("1.5 / 0", "division by zero");
    fails("payload.rpm / (payload.rpm - 1200)", "division by zero");
    fails("9223372036854775807 + 1", "integer overflow in +");
    fails("-(-9223372036854775808)", "integer overflow");
    fails("'a' + 1", "cannot apply + to a string and an integer");
    fails("payload.tags * 2", "cannot apply * to an array and an integer");
    fails("-'a'", "cannot apply unary -");
}

#[test]
fn operator_precedence() {
    check("1 + 2 * 3 - 4 / 2", json!(5));
    check("2 * 3 || 'x'", json!("6x"));
    check("'a' || 'b' = 'ab'", json!(true));
    check("1 + 1 = 2 AND 2 > 1", json!(true));
    check("true OR false AND false", json!(true));
    check("NOT payload.missing IS NULL", json!(false));
    check("NOT 1 = 2 AND true", json!(true));
    check("payload.rpm BETWEEN 1000 AND 2000 AND true", json!(true));
    check("1 IN (1) = true", json!(true));
    fails("1 + 2 || 'x'", "cannot apply + to an integer and a string");
}

#[test]
fn string_concatenation() {
    check("'a' || 'b'", json!("ab"));
    check("'t=' || payload.temp", json!("t=85.5"));
    check("payload.rpm || ''", json!("1200"));
    check("'x' || true", json!("xtrue"));
    check("'x' || payload.tags", json!("x[\"a\",\"b\",\"c\"]"));
    check("'x' || null", Value::Null);
}

#[test]
fn comparisons() {
    check("1 = 1", json!(true));
    check("1 = 1.0", json!(true));
    check("1 <> 2", json!(true));
    check("1 != 1", json!(false));
    check("1 < 2", json!(true));
    check("2 <= 2", json!(true));
    check("3 > 2.5", json!(true));
    check("2 >= 3", json!(false));
    check("'abc' < 'abd'", json!(true));
    check("'b' > 'abc'", json!(true));
    check("false < true", json!(true));
    check("payload.name = 'M1'", json!(true));
    check("payload.tags = payload.tags", json!(true));
    check("payload.nested = payload.tags", json!(false));
    check("'1' = 1", json!(false));
    check("'1' <> 1", json!(true));
    check("null = null", Value::Null);
    check("payload.missing = 1", Value::Null);
    check("payload.missing <> 1", Value::Null);
    fails("'1' < 1", "cannot apply < to a string and an integer");
    fails("payload.tags > 1", "cannot apply >");
}

#[test]
fn and_or_not_follow_three_valued_logic() {
    let t = [("true", Some(true)), ("false", Some(false)), ("null", None)];
    for (a, av) in t {
        for (b, bv) in t {
            let and = match (av, bv) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            };
            let or = match (av, bv) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            };
            let json = |v: Option<bool>| v.map_or(Value::Null, Value::Bool);
            check(&format!("{a} AND {b}"), json(and));
            check(&format!("{a} OR {b}"), json(or));
        }
        check(&format!("NOT {a}"), av.map_or(Value::Null, |v| Value::Bool(!v)));
    }
    check("1 < 2 AND 'a' = 'a' OR false", json!(true));
    check("NOT 1 > 2", json!(true));
}

#[test]
fn and_or_short_circuit_and_reject_non_booleans() {
    check("false AND 1 / 0 = 1", json!(false));
    check("true OR 1 / 0 = 1", json!(true));
    fails("1 AND true", "cannot apply AND to an integer");
    fails("false OR 'x'", "cannot apply OR to a string");
    fails("NOT 1", "cannot apply NOT to an integer");
}

#[test]
fn in_and_not_in_with_null() {
    check("payload.rpm IN (1, 1200, 3)", json!(true));
    check("payload.rpm IN (1, 2)", json!(false));
    check("payload.rpm NOT IN (1, 2)", json!(true));
    check("payload.rpm NOT IN (1200)", json!(false));
    check("payload.name IN ('M1', 'M2')", json!(true));
    check("1 IN (1.0)", json!(true));
    check("'1' IN (1)", json!(false));
    check("2 IN (1, null)", Value::Null);
    check("1 IN (1, null)", json!(true));
    check("2 NOT IN (1, null)", Value::Null);
    check("null IN (1)", Value::Null);
    check("payload.missing NOT IN (1)", Value::Null);
    check("qos IN (qos + 0)", json!(true));
}

#[test]
fn between() {
    check("5 BETWEEN 1 AND 10", json!(true));
    check("1 BETWEEN 1 AND 10", json!(true));
    check("10 BETWEEN 1 AND 10", json!(true));
    check("11 BETWEEN 1 AND 10", json!(false));
    check("11 NOT BETWEEN 1 AND 10", json!(true));
    check("payload.temp BETWEEN 80 AND 90.5", json!(true));
    check("'b' BETWEEN 'a' AND 'c'", json!(true));
    check("null BETWEEN 1 AND 2", Value::Null);
    check("0 BETWEEN 1 AND null", json!(false));
    check("1 BETWEEN 0 AND null", Value::Null);
    fails("'a' BETWEEN 1 AND 2", "cannot apply >=");
}

#[test]
fn like_and_ilike() {
    check("topic LIKE 'plant/%'", json!(true));
    check("topic LIKE 'plant/line-_/motor'", json!(true));
    check("topic LIKE 'plant'", json!(false));
    check("topic NOT LIKE '%/motor'", json!(false));
    check("payload.name LIKE 'm%'", json!(false));
    check("payload.name ILIKE 'm%'", json!(true));
    check("payload.name NOT ILIKE 'm%'", json!(false));
    check("'100%' LIKE '100!%' ESCAPE '!'", json!(true));
    check("'1000' LIKE '100!%' ESCAPE '!'", json!(false));
    check("payload.missing LIKE '%'", Value::Null);
    check("topic LIKE payload.missing", Value::Null);
    check("payload.name LIKE payload.name", json!(true));
    check("payload.name LIKE 'M' || '%'", json!(true));
    fails("payload.rpm LIKE '1%'", "cannot apply LIKE to an integer");
}

#[test]
fn is_null_and_is_true() {
    check("payload.missing IS NULL", json!(true));
    check("payload.nothing IS NULL", json!(true));
    check("payload.rpm IS NULL", json!(false));
    check("payload.rpm IS NOT NULL", json!(true));
    check("payload.missing IS NOT NULL", json!(false));
    check("payload.ok IS TRUE", json!(true));
    check("payload.ok IS NOT TRUE", json!(false));
    check("payload.ok IS FALSE", json!(false));
    check("payload.ok IS NOT FALSE", json!(true));
    check("null IS TRUE", json!(false));
    check("null IS NOT FALSE", json!(true));
    fails("1 IS TRUE", "cannot apply IS TRUE");
}

#[test]
fn case_searched_and_simple() {
    check(
        "CASE WHEN payload.rpm > 1000 THEN 'fast' WHEN payload.rpm > 0 THEN 'slow' ELSE 'stopped' END",
        json!("fast"),
    );
    check("CASE WHEN payload.rpm > 5000 THEN 'fast' WHEN payload.rpm > 0 THEN 'slow' END", json!("slow"));
    check("CASE WHEN payload.rpm > 5000 THEN 'fast' END", Value::Null);
    check("CASE WHEN null THEN 1 ELSE 2 END", json!(2));
    check("CASE payload.name WHEN 'M2' THEN 2 WHEN 'M1' THEN 1 ELSE 0 END", json!(1));
    check("CASE payload.missing WHEN null THEN 1 ELSE 0 END", json!(0));
    check("CASE qos WHEN 1.0 THEN 'one' END", json!("one"));
    check("CASE WHEN true THEN 1 ELSE 1 / 0 END", json!(1));
    fails("CASE WHEN 1 THEN 1 END", "CASE WHEN must be a boolean or NULL, got an integer");
}

#[test]
fn cast_converts_like_the_conversion_functions() {
    check("CAST(payload.num_str AS INT)", json!(42));
    check("CAST(payload.temp AS INTEGER)", json!(85));
    check("CAST(payload.rpm AS FLOAT)", json!(1200.0));
    check("CAST(payload.rpm AS DOUBLE)", json!(1200.0));
    check("CAST(payload.rpm AS TEXT)", json!("1200"));
    check("CAST(payload.rpm AS VARCHAR(10))", json!("1200"));
    check("CAST('true' AS BOOLEAN)", json!(true));
    check("payload.num_str::int + 1", json!(43));
    fails("CAST('x' AS INT)", "cannot convert \"x\" to an integer");
}

// ---- Functions ----

#[test]
fn math_functions() {
    check("abs(-5)", json!(5));
    check("abs(-2.5)", json!(2.5));
    check("abs(null)", Value::Null);
    fails("abs(-9223372036854775807 - 1)", "integer overflow in abs");
    fails("abs('x')", "abs() cannot take a string as argument 1");
    check("ceil(1.2)", json!(2));
    check("ceil(-1.2)", json!(-1));
    check("ceil(5)", json!(5));
    check("ceiling(1.5)", json!(2));
    check("floor(1.8)", json!(1));
    check("floor(-1.2)", json!(-2));
    check("floor(1e300)", json!(1e300));
    check("round(2.5)", json!(3));
    check("round(-2.5)", json!(-3));
    check("round(2.4)", json!(2));
    check("round(7)", json!(7));
    check("round(2.71828, 2)", json!(2.72));
    check("round(1234.5, -2)", json!(1200.0));
    check("round(1250, -2)", json!(1300));
    check("round(12, 1)", json!(12));
    check("round(null, 1)", Value::Null);
    check("round(1.5, null)", Value::Null);
    check("sqrt(16)", json!(4.0));
    fails("sqrt(-1)", "square root of a negative number");
    check("power(2, 10)", json!(1024));
    check("pow(2, -1)", json!(0.5));
    check("power(2.0, 3)", json!(8.0));
    check("power(10, 30)", json!(1e30));
    fails("power(-8, 0.5)", "not a real number");
    check("exp(0)", json!(1.0));
    check("ln(1)", json!(0.0));
    check("log10(1000)", json!(3.0));
    fails("ln(0)", "logarithm");
    fails("log10(-1)", "logarithm");
    check("mod(7, 3)", json!(1));
    check("mod(-7.5, 2)", json!(-1.5));
    fails("mod(1, 0)", "division by zero");
    check("least(3, 1, 2)", json!(1));
    check("greatest(3, 1, 2)", json!(3));
    check("least(2, 1.5)", json!(1.5));
    check("greatest(null, 1, null)", json!(1));
    check("least(null)", Value::Null);
    check("greatest('a', 'c', 'b')", json!("c"));
    fails("least(1, 'a')", "cannot apply least");
}

#[test]
fn string_functions() {
    check("lower('AbC')", json!("abc"));
    check("upper('straße')", json!("STRASSE"));
    check("lower(null)", Value::Null);
    fails("lower(1)", "lower() cannot take an integer as argument 1");
    check("trim(payload.s)", json!("padded"));
    check("ltrim(payload.s)", json!("padded "));
    check("rtrim(payload.s)", json!(" padded"));
    check("TRIM(' x ')", json!("x"));
    check("length('héllo')", json!(5));
    check("length(payload.tags)", json!(3));
    check("length(payload.nested)", json!(1));
    check("length(null)", Value::Null);
    fails("length(1)", "length() cannot take an integer");
    check("substr('hello', 2)", json!("ello"));
    check("substr('hello', 2, 3)", json!("ell"));
    check("substr('hello', 0, 3)", json!("he"));
    check("substr('hello', -5, 3)", json!(""));
    check("substr('hello', 10)", json!(""));
    check("substr('héllo', 2, 1)", json!("é"));
    check("substring('hello', 1, 1)", json!("h"));
    check("SUBSTRING('hello' FROM 2 FOR 2)", json!("el"));
    check("SUBSTRING('hello' FROM 4)", json!("lo"));
    check("SUBSTRING('hello' FOR 2)", json!("he"));
    check("substr(null, 1)", Value::Null);
    fails("substr('a', 1, -1)", "negative substring length");
    check("concat('a', 1, null, true, 2.5)", json!("a1true2.5"));
    check("concat(null)", json!(""));
    check("replace('a-b-c', '-', '+')", json!("a+b+c"));
    check("replace('abc', '', 'x')", json!("abc"));
    check("replace(null, 'a', 'b')", Value::Null);
    check("split('a/b//c', '/')", json!(["a", "b", "", "c"]));
    check("split(topic, '/')[1]", json!("line-1"));
    fails("split('a', '')", "separator is empty");
    check("contains('hello', 'ell')", json!(true));
    check("contains('hello', 'xyz')", json!(false));
    check("contains(payload.tags, 'b')", json!(true));
    check("contains(payload.tags, 'z')", json!(false));
    check("contains(null, 'a')", Value::Null);
    check("startswith(topic, 'plant/')", json!(true));
    check("startswith(topic, 'x')", json!(false));
    check("endswith(topic, '/motor')", json!(true));
    check("endswith(null, 'x')", Value::Null);
}

#[test]
fn regular_expressions() {
    check("regex_match(topic, '^plant/line-[0-9]+/')", json!(true));
    check("regex_match(topic, 'LINE')", json!(false));
    check("regex_match(topic, '(?i)LINE')", json!(true));
    check("regex_match(payload.missing, 'x')", Value::Null);
    check("regex_match(topic, payload.name)", json!(false));
    check("regex_match(topic, concat('line', '-1'))", json!(true));
    fails("regex_match(topic, concat('(', ''))", "invalid regular expression");
    check("regex_replace(topic, '[0-9]+', '#')", json!("plant/line-#/motor"));
    check("regex_replace('a1b22', '([a-z])([0-9]+)', '$2$1')", json!("1a22b"));
    fails("regex_match(1, 'x')", "regex_match() cannot take an integer as argument 1");
}

#[test]
fn time_functions() {
    // now is the input's now_ms, 1_700_000_000_123 here.
    check("now_timestamp()", json!(1_700_000_000_123_i64));
    check("now_timestamp('second')", json!(1_700_000_000));
    check("now_timestamp('microsecond')", json!(1_700_000_000_123_000_i64));
    check("now_rfc3339()", json!("2023-11-14T22:13:20.123Z"));
    check("now_rfc3339('second')", json!("2023-11-14T22:13:20Z"));
    check("unix_ts_to_rfc3339(0)", json!("1970-01-01T00:00:00Z"));
    check("unix_ts_to_rfc3339(timestamp)", json!("2023-11-14T22:13:20.123Z"));
    check("unix_ts_to_rfc3339(1700000000, 'second')", json!("2023-11-14T22:13:20Z"));
    check("format_time(1500)", json!("1970-01-01T00:00:01.5Z"));
    check("unix_ts_to_rfc3339(null)", Value::Null);
    fails("unix_ts_to_rfc3339(9223372036854775807, 'second')", "outside the years");
    check("rfc3339_to_unix_ts('2023-11-14T22:13:20.123Z')", json!(1_700_000_000_123_i64));
    check("rfc3339_to_unix_ts('2023-11-14T23:13:20+01:00', 'second')", json!(1_700_000_000));
    check("rfc3339_to_unix_ts(unix_ts_to_rfc3339(timestamp))", json!(1_700_000_000_123_i64));
    fails("rfc3339_to_unix_ts('yesterday')", "is not an RFC 3339 time");
    fails("unix_ts_to_rfc3339(1, payload.name)", "unknown time unit \"M1\"");
}

#[test]
fn json_functions() {
    check("json_decode('{\"a\": [1, 2]}')", json!({"a": [1, 2]}));
    check("json_decode('{\"a\": [1, 2]}').a[1]", json!(2));
    check("json_decode('5')", json!(5));
    check("json_decode(null)", Value::Null);
    fails("json_decode('{')", "json_decode(): invalid JSON");
    check("json_encode(payload.nested)", json!("{\"deep\":{\"x\":7}}"));
    check("json_encode('a\"b')", json!("\"a\\\"b\""));
    check("json_encode(1.5)", json!("1.5"));
    check("json_encode(null)", json!("null"));
    check("get(payload, 'nested.deep.x')", json!(7));
    check("get(payload, 'tags.1')", json!("b"));
    check("get(payload, 'tags.-1')", json!("c"));
    check("get(payload, 'nope.x', 'default')", json!("default"));
    check("get(payload, 'nope')", Value::Null);
    check("get(payload, concat('na', 'me'))", json!("M1"));
    check("get(json_decode('{\"k\": {\"v\": 3}}'), 'k.v')", json!(3));
    check("get(payload.rpm, 'x', 0)", json!(0));
    check("map_get('rpm', payload)", json!(1200));
    check("map_get('nope', payload, -1)", json!(-1));
    check("map_get('x', payload.nested.deep)", json!(7));
    check("map_get('x', null)", Value::Null);
}

#[test]
fn topic_functions() {
    check("topic_level(topic, 1)", json!("plant"));
    check("topic_level(topic, 3)", json!("motor"));
    check("topic_level(topic, 4)", Value::Null);
    check("topic_level(topic, 0)", Value::Null);
    check("topic_level(topic, -1)", Value::Null);
    check("topic_level('a//b', 2)", json!(""));
    check("topic_levels(topic)", json!(3));
    check("topic_levels('a')", json!(1));
    check("topic_levels(null)", Value::Null);
}

#[test]
fn byte_functions() {
    check("base64_encode('hello')", json!("aGVsbG8="));
    check("base64_decode('aGVsbG8=')", json!("hello"));
    check("base64_decode('aGVsbG8')", json!("hello"));
    check("base64_decode('/wA=')", json!("/wA=") /* bytes are output as base64 */);
    fails("base64_decode('!!')", "invalid base64");
    check("hex_encode('AB')", json!("4142"));
    check("hex_decode('4142')", json!("AB"));
    check("hex_decode('4a4B')", json!("JK"));
    check("hex_encode(hex_decode('ff00'))", json!("ff00"));
    fails("hex_decode('abc')", "odd number of digits");
    fails("hex_decode('zz')", "not a hex digit");
    check("byte_size('héllo')", json!(6));
    check("byte_size(null)", Value::Null);
    check("base64_encode(null)", Value::Null);
    let raw = r#"{"a":  1}"#;
    assert_eq!(eval_on("byte_size(payload)", raw).unwrap(), json!(raw.len()), "the payload as published");
    assert_eq!(eval_on("base64_encode(payload)", "{}").unwrap(), json!("e30="));
    assert_eq!(eval_on("hex_encode(payload)", "{}").unwrap(), json!("7b7d"));
    fails("base64_encode(1)", "base64_encode() cannot take an integer");
}

#[test]
fn type_functions() {
    check("is_null(payload.missing)", json!(true));
    check("is_null(payload.rpm)", json!(false));
    check("is_not_null(payload.rpm)", json!(true));
    check("is_num(payload.rpm)", json!(true));
    check("is_num(payload.temp)", json!(true));
    check("is_num(payload.num_str)", json!(false));
    check("is_str(payload.name)", json!(true));
    check("is_str(payload.rpm)", json!(false));
    check("is_bool(payload.ok)", json!(true));
    check("is_bool(null)", json!(false));
    check("is_array(payload.tags)", json!(true));
    check("is_array(payload.nested)", json!(false));
    check("is_map(payload.nested)", json!(true));
    check("is_map(payload.tags)", json!(false));
    check("coalesce(payload.missing, payload.nothing, 'fallback', 'x')", json!("fallback"));
    check("coalesce(null)", Value::Null);
    check("coalesce(1, 1 / 0)", json!(1));
}

#[test]
fn conversion_functions() {
    check("str(1200)", json!("1200"));
    check("str(2.0)", json!("2.0"));
    check("str(true)", json!("true"));
    check("str(payload.tags)", json!("[\"a\",\"b\",\"c\"]"));
    check("str('x')", json!("x"));
    check("str(null)", Value::Null);
    check("int('42')", json!(42));
    check("int(' 42 ')", json!(42));
    check("int('4.7')", json!(4));
    check("int(-4.7)", json!(-4));
    check("int(true)", json!(1));
    check("int(null)", Value::Null);
    fails("int('abc')", "cannot convert \"abc\" to an integer");
    fails("int(1e30)", "does not fit in an integer");
    fails("int(payload.tags)", "int() cannot take an array");
    check("float('2.5')", json!(2.5));
    check("float(2)", json!(2.0));
    check("float(false)", json!(0.0));
    fails("float('nan')", "cannot convert");
    fails("float('x')", "cannot convert \"x\" to a float");
    check("bool('TRUE')", json!(true));
    check("bool('0')", json!(false));
    check("bool(1)", json!(true));
    check("bool(0.0)", json!(false));
    check("bool(null)", Value::Null);
    fails("bool(2)", "cannot convert 2 to a boolean");
    fails("bool('yes')", "cannot convert \"yes\" to a boolean");
}

#[test]
fn rules_are_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<RuleQuery>();
    let q = rule(r#"SELECT payload.n * 2 AS d FROM "t/+" WHERE regex_match(topic, '^t/[0-9]+$')"#);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let q = q.clone();
            std::thread::spawn(move || {
                let topic = format!("t/{i}");
                let payload = format!("{{\"n\": {i}}}");
                q.evaluate(&Input::message(&topic, payload.as_bytes(), 0)).unwrap().unwrap()["d"].clone()
            })
        })
        .collect();
    let results: Vec<Value> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results, [json!(0), json!(2), json!(4), json!(6)]);
}

// ---- No input makes evaluation panic ----

/// Rules that touch every part of the language.
const FUZZ_RULES: &[&str] = &[
    r#"SELECT * FROM "fuzz/#""#,
    r#"SELECT payload.a.b[0] AS x, payload.arr[-1] AS y FROM "fuzz/#" WHERE payload.t > 1 OR payload.t IS NULL"#,
    r#"SELECT CASE WHEN payload.v > 10 THEN 'hi' ELSE 'lo' END AS l, topic_level(topic, 2) AS t FROM "fuzz/#""#,
    r#"SELECT payload.x + payload.y AS s, payload.x / payload.y AS q, payload.x % 3 AS m FROM "fuzz/#""#,
    r#"SELECT lower(payload.s) AS a, substr(payload.s, payload.n, 2) AS b, split(topic, '/') AS c FROM "fuzz/#""#,
    r#"SELECT json_decode(payload.j) AS d, json_encode(payload) AS e, get(payload, 'a.b') AS g FROM "fuzz/#""#,
    r#"SELECT base64_decode(payload.b) AS b, hex_decode(payload.h) AS h, byte_size(payload) AS n FROM "fuzz/#""#,
    r#"SELECT int(payload.v) AS i, float(payload.v) AS f, bool(payload.v) AS b, str(payload) AS s FROM "fuzz/#""#,
    r#"SELECT unix_ts_to_rfc3339(payload.ts) AS t, rfc3339_to_unix_ts(payload.s) AS u FROM "fuzz/#""#,
    r#"SELECT * FROM "fuzz/#" WHERE payload LIKE '%a_b%' OR topic LIKE payload.p OR regex_match(payload.s, payload.r)"#,
    r#"SELECT round(payload.v, payload.n) AS r, power(payload.v, payload.n) AS p, sqrt(payload.v) AS q FROM "fuzz/#""#,
    r#"SELECT payload.v IN (1, 'a', null) AS i, payload.v BETWEEN payload.lo AND payload.hi AS b FROM "fuzz/#""#,
    r#"SELECT least(payload.a, payload.b) AS l, coalesce(payload.a, payload) AS c, -payload.v AS n FROM "fuzz/#""#,
    r#"SELECT payload.s || payload.v AS c, concat(payload, topic) AS d, contains(payload.arr, payload.v) AS e FROM "fuzz/#""#,
];

/// JSON-ish payloads that reach deeper into the rules than random bytes do.
fn payload_strategy() -> impl Strategy<Value = Vec<u8>> {
    let scalar = prop_oneof![
        Just("null".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:?}")),
        "[a-z%_/0-9 ]{0,8}".prop_map(|s| format!("{s:?}")),
    ];
    let fields = proptest::collection::vec(
        (
            prop_oneof![
                Just("v"),
                Just("n"),
                Just("s"),
                Just("x"),
                Just("y"),
                Just("a"),
                Just("ts"),
                Just("arr"),
                Just("b"),
                Just("h")
            ],
            scalar,
        ),
        0..6,
    )
    .prop_map(|fields| {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k:?}: {v}")).collect();
        format!("{{{}}}", body.join(", ")).into_bytes()
    });
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..64), fields]
}

proptest! {
    #[test]
    fn random_payloads_and_topics_never_panic(payload in payload_strategy(), topic in "[a-z/+#$ ]{0,20}", qos in 0u8..3) {
        let rules: Vec<RuleQuery> = FUZZ_RULES.iter().map(|sql| rule(sql)).collect();
        let mut input = Input::message(&topic, &payload, 1_700_000_000_000);
        input.qos = qos;
        for q in &rules {
            let _ = q.evaluate(&input);
            if let Ok(name) = TopicName::try_from(topic.as_str()) {
                let _ = q.matches_topic(&name);
            }
        }
    }

    #[test]
    fn random_rule_text_never_panics(sql in "SELECT [a-z0-9_.()'+*/%<>=!| ,-]{0,40} FROM \"[a-z/+#]{0,8}\"( WHERE [a-z0-9_.()'+*/%<>=!| ,-]{0,30})?") {
        if let Ok(q) = RuleQuery::parse(&sql) {
            let _ = q.evaluate(&message(PAYLOAD.as_bytes()));
        }
    }
}

/// Random JSON documents with a few recurring keys, so that paths often hit.
fn json_strategy() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-z ]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec(
                (prop_oneof![Just("a"), Just("b"), Just("arr"), Just("c d")], inner),
                0..4
            )
            .prop_map(|members| Value::Object(members.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

proptest! {
    #[test]
    fn reading_part_of_the_payload_gives_what_reading_all_of_it_gives(doc in json_strategy()) {
        let pruned = rule(r#"SELECT payload.a AS w, payload.a.b AS x, payload.arr[1] AS y, payload.`c d`.a AS z FROM "t""#);
        let full = rule(r#"SELECT get(payload, 'a') AS w, get(payload, 'a.b') AS x, get(payload, 'arr.1') AS y, get(payload, 'c d.a') AS z FROM "t""#);
        let bytes = doc.to_string().into_bytes();
        let input = message(&bytes);
        prop_assert_eq!(pruned.evaluate(&input).unwrap(), full.evaluate(&input).unwrap());
    }
}

#[test]
fn window_fields_read_the_statistics_the_engine_gives_and_are_null_without() {
    let rule = RuleQuery::parse(r#"SELECT win.avg AS avg, win FROM "t/#" WHERE win.count >= 2"#).unwrap();
    let mut stats = serde_json::Map::new();
    stats.insert("count".into(), 3.into());
    stats.insert("avg".into(), serde_json::json!(81.5));
    let mut input = Input::message("t/a", b"{}", 0);
    input.window = Some(&stats);
    let out = rule.evaluate(&input).unwrap().unwrap();
    assert_eq!(out["avg"], serde_json::json!(81.5));
    assert_eq!(out["win"]["count"], serde_json::json!(3));
    input.window = None;
    assert_eq!(rule.evaluate(&input).unwrap(), None, "no window: win.count is NULL, WHERE is not true");
}

#[test]
fn the_silent_event_is_a_source() {
    let rule =
        RuleQuery::parse(r#"SELECT key, silent_ms FROM "$events/silent" WHERE silent_ms > 1000"#).unwrap();
    assert!(rule.matches_event(EventKind::Silent));
    let mut f = serde_json::Map::new();
    f.insert("key".into(), "truck-4".into());
    f.insert("silent_ms".into(), 61_000.into());
    let out = rule.evaluate(&Input::event(EventKind::Silent, &f, 0)).unwrap().unwrap();
    assert_eq!(out["key"], serde_json::json!("truck-4"));
}

/// The committed seeds of the `rules` fuzz target (`fuzz/corpus/rules/`, each a rule, a NUL byte
/// and a payload), without the fuzzer: each compiles and evaluates on its payload.
#[test]
fn the_fuzz_seed_corpus_compiles_and_evaluates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/rules");
    let mut seeds = 0;
    for file in std::fs::read_dir(dir).expect("the fuzz corpus is in the repository") {
        let bytes = std::fs::read(file.expect("a corpus entry").path()).expect("a corpus file");
        let nul = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let sql = std::str::from_utf8(&bytes[..nul]).expect("a seed's rule is UTF-8");
        let payload = bytes.get(nul + 1..).unwrap_or_default();
        rule(sql).evaluate(&message(payload)).unwrap_or_else(|e| panic!("{sql}: {e}"));
        seeds += 1;
    }
    assert!(seeds >= 5, "only {seeds} seeds");
}
