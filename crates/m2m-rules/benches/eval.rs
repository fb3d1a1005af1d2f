//! Rule evaluation on the message path: what one rule costs per message.

use std::hint::black_box;

use criterion::Criterion;
use m2m_rules::{Input, RuleQuery};

const TOPIC: &str = "factory/line-1/temp";
const HOT: &[u8] = br#"{"temp": 85.2, "humidity": 41, "unit": "C", "sensor": {"id": "t-17", "fw": "1.4.2"}}"#;
const COOL: &[u8] =
    br#"{"temp": 20.1, "humidity": 41, "unit": "C", "sensor": {"id": "t-17", "fw": "1.4.2"}}"#;

fn input(payload: &[u8]) -> Input<'_> {
    let mut input = Input::message(TOPIC, payload, 1_700_000_000_000);
    input.clientid = Some("sensor-17");
    input.username = Some("plant");
    input.qos = 1;
    input
}

fn evaluate(c: &mut Criterion) {
    let typical = RuleQuery::parse(
        r#"SELECT payload.temp AS t, clientid, topic FROM "factory/+/temp" WHERE payload.temp > 80"#,
    )
    .expect("valid rule");
    let no_payload = RuleQuery::parse(r#"SELECT payload.temp AS t FROM "factory/+/temp" WHERE qos = 2"#)
        .expect("valid rule");
    let star = RuleQuery::parse(
        r#"SELECT *, upper(payload.unit) AS unit, topic_level(topic, 2) AS line, round(payload.temp, 1) AS t
           FROM "factory/+/temp""#,
    )
    .expect("valid rule");

    let mut group = c.benchmark_group("rules/evaluate");
    group.bench_function("typical_rule_matching", |b| b.iter(|| typical.evaluate(black_box(&input(HOT)))));
    group
        .bench_function("typical_rule_where_false", |b| b.iter(|| typical.evaluate(black_box(&input(COOL)))));
    group.bench_function("where_false_without_reading_payload", |b| {
        b.iter(|| no_payload.evaluate(black_box(&input(HOT))))
    });
    group
        .bench_function("select_star_with_3_functions", |b| b.iter(|| star.evaluate(black_box(&input(HOT)))));
    group.finish();

    let mut group = c.benchmark_group("rules/parse");
    group.bench_function("typical_rule", |b| {
        b.iter(|| {
            RuleQuery::parse(black_box(
                r#"SELECT payload.temp AS t, clientid, topic FROM "factory/+/temp" WHERE payload.temp > 80"#,
            ))
        })
    });
    group.finish();
}

// What `criterion_group!`/`criterion_main!` expand to, minus the undocumented `pub fn` they generate.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    evaluate(&mut c);
    c.final_summary();
}
