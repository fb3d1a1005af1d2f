//! `m2m query` as a user runs it: against a running node through its HTTP API in every format
//! (the CSV and JSON lines parsed back and checked against what an independent MQTT 5 client
//! published), an export of every point across pages, last values, topics and aggregates; then
//! on the data directory of the same node once it has stopped.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{m2m, run, text, RunningNode};
use m2m_test::TempDir;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;

async fn ok(args: &[&str]) -> String {
    let out = run(m2m(args)).await;
    assert!(out.status.success(), "m2m {args:?} failed: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Stdout and stderr of a command that must succeed.
async fn ok_both(args: &[&str]) -> (String, String) {
    let out = run(m2m(args)).await;
    assert!(out.status.success(), "m2m {args:?} failed: {}", text(&out.stderr));
    (text(&out.stdout), text(&out.stderr))
}

async fn fails(args: &[&str]) -> String {
    let out = run(m2m(args)).await;
    assert!(!out.status.success(), "m2m {args:?} succeeded: {}", text(&out.stdout));
    text(&out.stderr)
}

/// One message as sent.
struct Sent {
    topic: &'static str,
    payload: Vec<u8>,
    content_type: Option<&'static str>,
}

const PER_TOPIC: usize = 30;

/// Four topics interleaved: JSON objects, bare numbers, text with a comma, quotes and a line break
/// (CSV must quote it), and binary bytes.
fn data_set() -> Vec<Sent> {
    let mut out = Vec::new();
    for i in 0..PER_TOPIC {
        let temp = 18.0 + (i % 7) as f64 * 1.25;
        out.push(Sent {
            topic: "line/1/temp",
            payload: format!(r#"{{"temp":{temp},"i":{i}}}"#).into_bytes(),
            content_type: Some("application/json"),
        });
        out.push(Sent {
            topic: "line/2/temp",
            payload: format!("{}", i * 3).into_bytes(),
            content_type: None,
        });
        out.push(Sent {
            topic: "line/1/note",
            payload: format!("shift {i}, said \"ok\"\nend").into_bytes(),
            content_type: Some("text/plain"),
        });
        out.push(Sent { topic: "raw/bin", payload: vec![0x80, i as u8, 0xff], content_type: None });
    }
    out
}

/// Publishes `messages` at QoS 1 with an rumqttc v5 client and waits for every PUBACK.
async fn publish(addr: SocketAddr, messages: &[Sent]) {
    let options = MqttOptions::new("query-publisher", addr.ip().to_string(), addr.port());
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let expected = messages.len();
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < expected {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.expect("MQTT connection") {
                acked += 1;
            }
        }
    });
    for m in messages {
        let properties = PublishProperties {
            content_type: m.content_type.map(str::to_owned),
            ..PublishProperties::default()
        };
        client
            .publish_with_properties(m.topic, QoS::AtLeastOnce, false, m.payload.clone(), properties)
            .await
            .expect("publish");
    }
    tokio::time::timeout(Duration::from_secs(30), acks).await.expect("PUBACKs within 30 s").unwrap();
    let _ = client.disconnect().await;
}

/// Waits until the node's history holds `n` messages (its writer works in the background).
async fn wait_for_history(url: &str, n: u64) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let topics: Value =
                serde_json::from_str(&ok(&["query", "--api", url, "--topics", "--format", "json"]).await)
                    .unwrap();
            let kept: u64 =
                topics["topics"].as_array().unwrap().iter().map(|t| t["messages"].as_u64().unwrap()).sum();
            if kept >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the history holds every message within 10 s");
}

/// Parses CSV (RFC 4180: quoted fields with doubled quotes and line breaks, CRLF records).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut records, mut record, mut field) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(!quoted && field.is_empty() && record.is_empty(), "CSV ends mid-record: {text:?}");
    records
}

fn jsonl(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

fn b64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// Checks points (as JSON) against the data set: per topic, the payloads in the order sent.
fn check_points(points: &[Value], sent: &[Sent], topics: &[&str]) {
    for topic in topics {
        let got: Vec<&Value> = points.iter().filter(|p| p["topic"] == *topic).collect();
        let expected: Vec<&Sent> = sent.iter().filter(|s| s.topic == *topic).collect();
        assert_eq!(got.len(), expected.len(), "{topic}");
        for (p, s) in got.iter().zip(expected) {
            let bytes = match p["encoding"].as_str().unwrap() {
                "json" => {
                    assert_eq!(p["payload"], serde_json::from_slice::<Value>(&s.payload).unwrap());
                    continue;
                }
                "text" => p["payload"].as_str().unwrap().as_bytes().to_vec(),
                _ => b64(p["payload"].as_str().unwrap()),
            };
            assert_eq!(bytes, s.payload, "{topic}");
        }
    }
    assert!(points.windows(2).all(|w| w[0]["ts_us"].as_u64() <= w[1]["ts_us"].as_u64()), "time order");
}

#[tokio::test]
async fn a_running_node_is_queried_over_its_api_in_every_format_then_its_data_directory_once_stopped() {
    let dir = TempDir::new("cli-query");
    let d = dir.as_str();
    let node = RunningNode::start(d, &[]).await;
    let url = node.url();
    let sent = data_set();
    publish(node.mqtt, &sent).await;
    wait_for_history(&url, sent.len() as u64).await;
    let all_topics = ["line/1/temp", "line/2/temp", "line/1/note", "raw/bin"];

    // JSON: the API's document.
    let json: Value =
        serde_json::from_str(&ok(&["query", "--api", &url, "#", "--format", "json"]).await).unwrap();
    assert_eq!(json["next"], Value::Null);
    assert_eq!(json["gaps"], serde_json::json!([]));
    let points = json["points"].as_array().unwrap().clone();
    assert_eq!(points.len(), sent.len());
    check_points(&points, &sent, &all_topics);

    // JSON lines: the same points, one per line.
    let lines = jsonl(&ok(&["query", "--api", &url, "#", "--format", "jsonl"]).await);
    assert_eq!(lines, points);

    // CSV: header, quoting, text and base64 payloads, and the field's value.
    let csv = ok(&["query", "--api", &url, "#", "--format", "csv", "--field", "payload.temp"]).await;
    let rows = parse_csv(&csv);
    assert_eq!(rows[0], ["ts", "topic", "client_id", "qos", "payload", "value"]);
    assert_eq!(rows.len(), sent.len() + 1);
    for (row, p) in rows[1..].iter().zip(&points) {
        assert_eq!(row[0], p["ts"].as_str().unwrap());
        assert_eq!(row[1], p["topic"].as_str().unwrap());
        assert_eq!((row[2].as_str(), row[3].as_str()), ("query-publisher", "1"));
        match row[1].as_str() {
            "line/1/note" => {
                assert!(row[4].starts_with("shift ") && row[4].contains(", said \"ok\"\nend"), "{row:?}")
            }
            "raw/bin" => assert_eq!(b64(&row[4])[0], 0x80, "{row:?}"),
            "line/1/temp" => {
                assert_eq!(serde_json::from_str::<Value>(&row[4]).unwrap(), p["payload"]);
                assert_eq!(row[5].parse::<f64>().unwrap(), p["payload"]["temp"].as_f64().unwrap());
            }
            _ => assert_eq!((row[4].as_str(), row[5].as_str()), (p["payload"].to_string().as_str(), "")),
        }
    }

    // Table: a header and one aligned line per point; a limit, and a note on what is left.
    let (table, note) = ok_both(&["query", "--api", &url, "line/+/temp", "--limit", "5"]).await;
    let table: Vec<&str> = table.lines().collect();
    assert_eq!(table.len(), 6, "{table:?}");
    assert!(table[0].starts_with("TIME") && table[0].contains("TOPIC") && table[0].contains("PAYLOAD"));
    let topic_at = table[0].find("TOPIC").unwrap();
    for line in &table[1..] {
        assert!(line[topic_at..].starts_with("line/"), "misaligned: {line:?}");
    }
    assert!(note.contains("more points in the range: continue with --cursor"), "{note}");
    let with_value =
        ok(&["query", "--api", &url, "line/1/temp", "--field", "payload.temp", "--limit", "3"]).await;
    assert!(with_value.lines().next().unwrap().ends_with("VALUE"), "{with_value}");
    assert!(with_value.lines().nth(1).unwrap().ends_with(" 18"), "{with_value}");

    // Export across pages: every point once, in order, written page by page.
    let exported =
        jsonl(&ok(&["query", "--api", &url, "#", "--all", "--limit", "7", "--format", "jsonl"]).await);
    assert_eq!(exported, points);
    let exported_csv = ok(&["query", "--api", &url, "#", "--all", "--limit", "11", "--format", "csv"]).await;
    assert_eq!(parse_csv(&exported_csv).len(), sent.len() + 1);
    let desc = jsonl(
        &ok(&["query", "--api", &url, "#", "--all", "--limit", "13", "--order", "desc", "--format", "jsonl"])
            .await,
    );
    let mut reversed = points.clone();
    reversed.reverse();
    let key = |p: &Value| (p["ts_us"].as_u64().unwrap(), p["topic"].as_str().unwrap().to_owned());
    assert_eq!(desc.iter().map(key).collect::<Vec<_>>(), reversed.iter().map(key).collect::<Vec<_>>());

    // Last values and topics.
    let latest = jsonl(&ok(&["query", "--api", &url, "--latest", "--format", "jsonl"]).await);
    let names: Vec<&str> = latest.iter().map(|p| p["topic"].as_str().unwrap()).collect();
    assert_eq!(names, ["line/1/note", "line/1/temp", "line/2/temp", "raw/bin"]);
    for v in &latest {
        let last = points.iter().rev().find(|p| p["topic"] == v["topic"]).unwrap();
        assert_eq!(v, last);
    }
    let topics = parse_csv(&ok(&["query", "--api", &url, "--topics", "line/#", "--format", "csv"]).await);
    assert_eq!(topics[0], ["topic", "messages", "first", "last"]);
    assert_eq!(topics.len(), 4);
    assert!(topics[1..].iter().all(|t| t[1] == PER_TOPIC.to_string()), "{topics:?}");

    // Aggregates, against the values sent.
    let temps: Vec<f64> = sent
        .iter()
        .filter(|s| s.topic == "line/1/temp")
        .map(|s| serde_json::from_slice::<Value>(&s.payload).unwrap()["temp"].as_f64().unwrap())
        .collect();
    let agg_args = [
        "query",
        "--api",
        &url,
        "line/1/temp",
        "--bucket",
        "1d",
        "--agg",
        "avg,max",
        "--field",
        "payload.temp",
    ];
    let agg: Value =
        serde_json::from_str(&ok(&[&agg_args[..], &["--format", "json"]].concat()).await).unwrap();
    let series = agg["series"].as_array().unwrap();
    assert_eq!(series.len(), 1);
    let buckets = series[0]["buckets"].as_array().unwrap();
    let count: u64 = buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert_eq!(count, PER_TOPIC as u64);
    let max = buckets.iter().map(|b| b["max"].as_f64().unwrap()).fold(f64::MIN, f64::max);
    assert_eq!(max, temps.iter().copied().fold(f64::MIN, f64::max));
    if buckets.len() == 1 {
        let avg = temps.iter().sum::<f64>() / temps.len() as f64;
        assert!((buckets[0]["avg"].as_f64().unwrap() - avg).abs() < 1e-9);
    }
    let agg_csv = parse_csv(&ok(&[&agg_args[..], &["--format", "csv"]].concat()).await);
    assert_eq!(agg_csv[0], ["topic", "start", "count", "avg", "max"]);
    let agg_table = ok(&agg_args).await;
    assert!(agg_table.starts_with("TOPIC"), "{agg_table}");

    // Bad input is named.
    let err = fails(&["query", "--api", &url, "a/#/b"]).await;
    assert!(err.contains("answered 400") && err.contains("filter \"a/#/b\""), "{err}");
    let err = fails(&["query", "--api", &url, "#", "--from", "yesterday"]).await;
    assert!(err.contains("\"yesterday\" is not a time"), "{err}");
    let err = fails(&["query", "--api", &url, "#", "--bucket", "1h"]).await;
    assert!(err.contains("--bucket aggregates a field"), "{err}");
    let err = fails(&["query", "--api", &url]).await;
    assert!(err.contains("give a topic filter"), "{err}");

    // The store is the running node's: without --api the CLI says how to reach it.
    let err = fails(&["query", "--data-dir", d, "#"]).await;
    assert!(err.contains("in use by a running node"), "{err}");

    // Stopped: the same answers, read from its data directory.
    node.terminate().await;
    let from_store = jsonl(&ok(&["query", "--data-dir", d, "#", "--format", "jsonl"]).await);
    assert_eq!(from_store, points, "the store gives what the API gave");
    let paged =
        jsonl(&ok(&["query", "--data-dir", d, "#", "--all", "--limit", "9", "--format", "jsonl"]).await);
    assert_eq!(paged, points);
    let csv_store = ok(&["query", "--data-dir", d, "#", "--format", "csv", "--field", "payload.temp"]).await;
    assert_eq!(csv_store, csv, "the same CSV");
    let latest_store = jsonl(&ok(&["query", "--data-dir", d, "--latest", "--format", "jsonl"]).await);
    assert_eq!(latest_store, latest);
    let topics_store =
        parse_csv(&ok(&["query", "--data-dir", d, "--topics", "line/#", "--format", "csv"]).await);
    assert_eq!(topics_store, topics);
    let agg_store: Value = serde_json::from_str(
        &ok(&[
            "query",
            "--data-dir",
            d,
            "line/1/temp",
            "--bucket",
            "1d",
            "--agg",
            "avg,max",
            "--field",
            "payload.temp",
            "--format",
            "json",
        ])
        .await,
    )
    .unwrap();
    assert_eq!(agg_store, agg);
    // Reading wrote nothing that changes what is there.
    let again = jsonl(&ok(&["query", "--data-dir", d, "#", "--format", "jsonl"]).await);
    assert_eq!(again, points);
    let err = fails(&["query", "--data-dir", d, "#", "--cursor", "nonsense"]).await;
    assert!(err.contains("cursor \"nonsense\""), "{err}");
}

#[tokio::test]
async fn a_directory_without_a_store_is_named() {
    let dir = TempDir::new("cli-query-empty");
    let err = fails(&["query", "--data-dir", dir.as_str(), "#"]).await;
    assert!(err.contains("no store in"), "{err}");
}
