//! The history routes over real HTTP, against a real node with a store: messages published by an
//! independent MQTT 5 client (`rumqttc`), then read back and checked against what was sent.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use m2m_broker::{Broker, Config};
use m2m_history::{History, HistoryConfig};
use m2m_http::{HttpConfig, HttpServer, NodeParts};
use m2m_router::Tap;
use m2m_test::{within, TempDir};
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A node (MQTT broker with a store, history on) and its HTTP API, both on loopback ports.
struct Node {
    mqtt: SocketAddr,
    http: SocketAddr,
    history: Option<History>,
    shutdown: CancellationToken,
    broker: JoinHandle<m2m_broker::Result<()>>,
    api: JoinHandle<m2m_http::Result<()>>,
    _dir: TempDir,
}

impl Node {
    /// A node keeping `history` (`None`: off).
    async fn start(history: Option<HistoryConfig>) -> Self {
        let dir = TempDir::new("http-history");
        let mut config = Config::for_tests();
        config.store = Some(m2m_store::StoreConfig::new(dir.path().join("store")));
        config.history = history;
        let broker = Broker::bind(&config).await.expect("bind the broker");
        let (mqtt, access, history) = (broker.local_addr(), broker.access(), broker.history());
        let http_config =
            HttpConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..HttpConfig::default() };
        let server =
            HttpServer::bind(&http_config, NodeParts { history: history.clone(), ..NodeParts::new(access) })
                .await
                .expect("bind the HTTP API");
        let http = server.local_addr();
        let shutdown = CancellationToken::new();
        let broker = tokio::spawn(broker.run(shutdown.clone()));
        let api = tokio::spawn(server.run(shutdown.clone()));
        Self { mqtt, http, history, shutdown, broker, api, _dir: dir }
    }

    fn history(&self) -> &History {
        self.history.as_ref().expect("the node keeps history")
    }

    /// Waits until everything captured so far is written.
    async fn flush(&self) {
        let history = self.history().clone();
        let done = tokio::task::spawn_blocking(move || history.flush(Duration::from_secs(10)));
        assert!(within(done).await.expect("flush"), "history not written within 10 s");
    }

    async fn stop(self) {
        self.shutdown.cancel();
        within(self.api).await.expect("HTTP API panicked").expect("HTTP API failed");
        within(self.broker).await.expect("broker panicked").expect("broker failed");
    }

    async fn get(&self, path: &str) -> Reply {
        get(self.http, path).await
    }

    /// A 200 answer's JSON.
    async fn ok(&self, path: &str) -> Value {
        let reply = self.get(path).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        reply.json()
    }

    /// A 400 answer's message.
    async fn bad(&self, path: &str) -> String {
        let reply = self.get(path).await;
        assert_eq!(reply.status, 400, "{path}: {reply:?}");
        reply.json()["message"].as_str().expect("an error message").to_owned()
    }
}

/// An HTTP answer: status, headers, body, and how many data frames the body came in.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: hyper::HeaderMap,
    body: Bytes,
    frames: usize,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("ASCII header"))
    }
}

/// `GET path` on a new connection, within the step limit.
async fn get(addr: SocketAddr, path: &str) -> Reply {
    within(get_unbounded(addr, path)).await
}

/// `s` percent-encoded for a query string.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One message as sent.
#[derive(Debug, Clone)]
struct Sent {
    topic: &'static str,
    payload: Vec<u8>,
    content_type: Option<&'static str>,
    user_properties: Vec<(String, String)>,
}

const PER_TOPIC: usize = 80;

/// What the data set publishes, in order: four topics interleaved, a JSON object with a content
/// type, a bare JSON number, text with a content type and user properties, and binary bytes.
fn data_set() -> Vec<Sent> {
    let mut out = Vec::new();
    for i in 0..PER_TOPIC {
        out.push(Sent {
            topic: "plant/a/temp",
            payload: format!(r#"{{"temp": {}, "n": {i}}}"#, 20.0 + (i % 13) as f64 * 0.5).into_bytes(),
            content_type: Some("application/json"),
            user_properties: Vec::new(),
        });
        out.push(Sent {
            topic: "plant/b/temp",
            payload: format!("{}", (i * 7 % 31) as i64 - 10).into_bytes(),
            content_type: None,
            user_properties: Vec::new(),
        });
        out.push(Sent {
            topic: "plant/a/status",
            payload: if i % 2 == 0 { b"1.50".to_vec() } else { b"off".to_vec() },
            content_type: Some("text/plain"),
            user_properties: vec![("line".into(), "A".into()), ("seq".into(), i.to_string())],
        });
        out.push(Sent {
            topic: "bin/blob",
            payload: vec![0xff, 0xfe, i as u8, 0x00],
            content_type: None,
            user_properties: Vec::new(),
        });
    }
    out
}

/// Publishes `messages` at QoS 1 with an rumqttc v5 client and waits for every PUBACK.
async fn publish(addr: SocketAddr, messages: &[Sent]) {
    let options = MqttOptions::new("history-publisher", addr.ip().to_string(), addr.port());
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let expected = messages.len();
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < expected {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.expect("MQTT connection") {
                acked += 1;
            }
        }
        eventloop
    });
    for m in messages {
        let properties = PublishProperties {
            content_type: m.content_type.map(str::to_owned),
            user_properties: m.user_properties.clone(),
            ..PublishProperties::default()
        };
        within(client.publish_with_properties(
            m.topic,
            QoS::AtLeastOnce,
            false,
            m.payload.clone(),
            properties,
        ))
        .await
        .expect("publish");
    }
    tokio::time::timeout(Duration::from_secs(30), acks)
        .await
        .expect("PUBACKs within 30 s")
        .expect("acks task");
    let _ = client.disconnect().await;
}

/// Every point of `filter`, read in pages of `limit` by following `next`, in `order`.
async fn all_pages(node: &Node, filter: &str, extra: &str, limit: usize, order: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let mut path =
            format!("/api/v1/history?filter={}&from=0&limit={limit}&order={order}{extra}", enc(filter));
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", enc(c)));
        }
        let mut page = node.ok(&path).await;
        let points = page["points"].as_array_mut().map(std::mem::take).expect("points");
        assert!(points.len() <= limit, "{} points for limit {limit}", points.len());
        out.extend(points);
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return out,
        }
    }
    panic!("paging did not end");
}

fn key(p: &Value) -> (u64, String) {
    (p["ts_us"].as_u64().expect("ts_us"), p["topic"].as_str().expect("topic").to_owned())
}

#[tokio::test]
async fn published_messages_are_read_back_with_filters_ranges_pages_encodings_and_fields() {
    let config = HistoryConfig { filters: vec!["#".into(), "$SYS/#".into()], ..HistoryConfig::default() };
    let node = Node::start(Some(config)).await;
    let sent = data_set();
    publish(node.mqtt, &sent).await;
    node.flush().await;

    // Everything, oldest first: each topic's payloads in the order they were sent.
    let all = node.ok("/api/v1/history?filter=%23&from=0&limit=100000").await;
    assert_eq!(all["next"], Value::Null);
    assert_eq!(all["gaps"], json!([]));
    let all = all["points"].as_array().expect("points").clone();
    assert_eq!(all.len(), sent.len(), "`#` leaves $SYS out");
    assert!(all.windows(2).all(|w| w[0]["ts_us"].as_u64() <= w[1]["ts_us"].as_u64()), "time order");
    for topic in ["plant/a/temp", "plant/b/temp", "plant/a/status", "bin/blob"] {
        let got: Vec<&Value> = all.iter().filter(|p| p["topic"] == topic).collect();
        let expected: Vec<&Sent> = sent.iter().filter(|s| s.topic == topic).collect();
        assert_eq!(got.len(), expected.len(), "{topic}");
        for (p, s) in got.iter().zip(&expected) {
            assert_eq!(p["qos"], 1);
            assert_eq!(p["retain"], false);
            assert_eq!(p["client_id"], "history-publisher");
            assert_eq!(
                p["ts"].as_str().map(|t| m2m_history::time::parse_time(t, 0).unwrap()),
                p["ts_us"].as_u64()
            );
            match topic {
                "plant/a/temp" => {
                    assert_eq!(p["encoding"], "json");
                    assert_eq!(p["payload"], serde_json::from_slice::<Value>(&s.payload).unwrap());
                    assert_eq!(p["content_type"], "application/json");
                }
                "plant/b/temp" => {
                    assert_eq!(p["encoding"], "json", "a bare number is JSON");
                    assert_eq!(p["payload"], serde_json::from_slice::<Value>(&s.payload).unwrap());
                    assert!(p.get("content_type").is_none() && p.get("user_properties").is_none(), "{p}");
                }
                "plant/a/status" => {
                    assert_eq!(p["encoding"], "text", "text/plain stays text, even `1.50`");
                    assert_eq!(p["payload"].as_str().unwrap().as_bytes(), &s.payload[..]);
                    let props: Vec<(String, String)> =
                        serde_json::from_value(p["user_properties"].clone()).unwrap();
                    assert_eq!(props, s.user_properties);
                }
                _ => {
                    assert_eq!(p["encoding"], "base64");
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(p["payload"].as_str().unwrap())
                        .unwrap();
                    assert_eq!(bytes, s.payload);
                }
            }
        }
    }

    // Wildcards.
    let topics_of = |points: &[Value]| -> Vec<String> {
        let mut t: Vec<String> = points.iter().map(|p| p["topic"].as_str().unwrap().to_owned()).collect();
        t.sort();
        t.dedup();
        t
    };
    for (filter, expected) in [
        ("plant/+/temp", vec!["plant/a/temp", "plant/b/temp"]),
        ("plant/#", vec!["plant/a/status", "plant/a/temp", "plant/b/temp"]),
        ("+/blob", vec!["bin/blob"]),
        ("plant/a/+", vec!["plant/a/status", "plant/a/temp"]),
        ("nothing/#", vec![]),
    ] {
        let points = node.ok(&format!("/api/v1/history?filter={}&from=0&limit=100000", enc(filter))).await;
        let points = points["points"].as_array().unwrap().clone();
        assert_eq!(topics_of(&points), expected, "{filter}");
        let n = expected.len() * PER_TOPIC;
        assert_eq!(points.len(), n, "{filter}");
    }
    // `$SYS/#` is kept here, and only `$SYS/...` filters see it.
    let sys = within(async {
        loop {
            let sys = node.ok("/api/v1/history?filter=%24SYS%2F%23&from=0").await;
            if !sys["points"].as_array().unwrap().is_empty() {
                return sys;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            node.flush().await;
        }
    })
    .await;
    assert!(sys["points"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["topic"].as_str().unwrap().starts_with("$SYS/")));
    let everything = node.ok("/api/v1/history?filter=%23&from=0&limit=100000").await;
    assert_eq!(everything["points"].as_array().unwrap().len(), sent.len(), "`#` still leaves $SYS out");

    // Time range: `from` included, `to` excluded, by the points' own timestamps.
    for (a, b) in [(0, 50), (37, 211), (100, 101), (250, sent.len() - 1)] {
        let (from, to) = (all[a]["ts_us"].as_u64().unwrap(), all[b]["ts_us"].as_u64().unwrap());
        let expected: Vec<(u64, String)> =
            all.iter().filter(|p| (from..to).contains(&p["ts_us"].as_u64().unwrap())).map(key).collect();
        let got = node.ok(&format!("/api/v1/history?filter=%23&from={from}&to={to}&limit=100000")).await;
        let got: Vec<(u64, String)> = got["points"].as_array().unwrap().iter().map(key).collect();
        assert_eq!(got, expected, "[{from}, {to})");
        assert!(got.first().is_some_and(|k| k.0 == from), "from is included");
        assert!(got.iter().all(|k| k.0 < to), "to is excluded");
    }
    let rfc = all[10]["ts"].as_str().unwrap();
    let since = node.ok(&format!("/api/v1/history?filter=%23&from={}&limit=100000", enc(rfc))).await;
    assert_eq!(since["points"][0]["ts_us"], all[10]["ts_us"], "an RFC 3339 time");
    let recent = node.ok("/api/v1/history?filter=%23&limit=100000").await;
    assert_eq!(recent["points"].as_array().unwrap().len(), sent.len(), "by default the last hour");
    let future = node.ok("/api/v1/history?filter=%23&from=now%2B1h&to=now%2B2h").await;
    assert_eq!(future["points"], json!([]));
    let earlier = node.ok("/api/v1/history?filter=%23&to=-2h").await;
    assert_eq!(earlier["points"], json!([]), "without `from`, the hour before `to`");
    let last = all[all.len() - 1]["ts_us"].as_u64().unwrap();
    let before_last = node.ok(&format!("/api/v1/history?filter=%23&to={last}&limit=100000")).await;
    let expected = all.iter().filter(|p| p["ts_us"].as_u64().unwrap() < last).count();
    assert_eq!(before_last["points"].as_array().unwrap().len(), expected);

    // Limit and cursor: every point exactly once, in order, both ways.
    let asc: Vec<(u64, String)> = all.iter().map(key).collect();
    for limit in [1, 7, 100, 320] {
        let paged: Vec<(u64, String)> =
            all_pages(&node, "#", "", limit, "asc").await.iter().map(key).collect();
        assert_eq!(paged, asc, "limit {limit}");
    }
    let mut desc = asc.clone();
    desc.reverse();
    let paged: Vec<(u64, String)> = all_pages(&node, "#", "", 9, "desc").await.iter().map(key).collect();
    assert_eq!(paged, desc, "desc");
    let first = node.ok("/api/v1/history?filter=%23&from=0&limit=5").await;
    assert_eq!(first["points"].as_array().unwrap().len(), 5);
    assert!(first["next"].is_string());

    // A field of the payload, as each point's value.
    let temps = all_pages(&node, "plant/#", "&field=payload.temp", 50, "asc").await;
    for p in &temps {
        match p["topic"].as_str().unwrap() {
            "plant/a/temp" => assert_eq!(p["value"], p["payload"]["temp"], "{p}"),
            _ => assert_eq!(p["value"], Value::Null, "{p}"),
        }
    }
    assert!(all[0].get("value").is_none(), "no value without a field");

    node.stop().await;
}

#[tokio::test]
async fn aggregates_latest_values_and_topics_match_what_was_published() {
    let node = Node::start(Some(HistoryConfig::default())).await;
    let sent = data_set();
    publish(node.mqtt, &sent).await;
    node.flush().await;
    let all =
        node.ok("/api/v1/history?filter=%23&from=0&limit=100000").await["points"].as_array().unwrap().clone();
    let (first, last) = (all[0]["ts_us"].as_u64().unwrap(), all[all.len() - 1]["ts_us"].as_u64().unwrap());

    // Aggregates per 5 ms bucket, against the same computed here from the points and what was sent.
    for (topic, field, number) in [
        (
            "plant/a/temp",
            "payload.temp",
            (|s: &Sent| serde_json::from_slice::<Value>(&s.payload).unwrap()["temp"].as_f64())
                as fn(&Sent) -> Option<f64>,
        ),
        ("plant/b/temp", "payload", |s: &Sent| std::str::from_utf8(&s.payload).unwrap().parse::<f64>().ok()),
    ] {
        let bucket_us = 5_000u64;
        let sent_values: Vec<f64> =
            sent.iter().filter(|s| s.topic == topic).map(|s| number(s).unwrap()).collect();
        let times: Vec<u64> =
            all.iter().filter(|p| p["topic"] == topic).map(|p| p["ts_us"].as_u64().unwrap()).collect();
        let mut expected: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for (ts, v) in times.iter().zip(&sent_values) {
            expected.entry(ts - ts % bucket_us).or_default().push(*v);
        }
        let path = format!(
            "/api/v1/history/aggregate?filter={}&from={first}&to={}&field={field}&bucket=5ms",
            enc(topic),
            last + 1
        );
        let got = node.ok(&path).await;
        let series = got["series"].as_array().unwrap();
        assert_eq!(series.len(), 1, "{got}");
        assert_eq!(series[0]["topic"], topic);
        assert_eq!(series[0]["skipped"], 0);
        let buckets = series[0]["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), expected.len(), "{topic}");
        for (b, (start, values)) in buckets.iter().zip(&expected) {
            let close = |name: &str, want: f64| {
                let have = b[name].as_f64().unwrap_or_else(|| panic!("{name} in {b}"));
                assert!((have - want).abs() < 1e-9, "{topic} {start} {name}: {have} != {want}");
            };
            assert_eq!(b["start_us"].as_u64(), Some(*start));
            assert_eq!(
                b["start"].as_str().map(|t| m2m_history::time::parse_time(t, 0).unwrap()),
                Some(*start)
            );
            assert_eq!(b["count"].as_u64(), Some(values.len() as u64));
            let sum: f64 = values.iter().sum();
            close("sum", sum);
            close("avg", sum / values.len() as f64);
            close("min", values.iter().copied().fold(f64::INFINITY, f64::min));
            close("max", values.iter().copied().fold(f64::NEG_INFINITY, f64::max));
            close("first", values[0]);
            close("last", values[values.len() - 1]);
        }
    }
    // Only the functions asked for (and the count); points without the field are counted as skipped.
    let some = node
        .ok("/api/v1/history/aggregate?filter=plant%2F%23&from=0&field=payload.temp&bucket=1d&agg=max,avg")
        .await;
    let series = some["series"].as_array().unwrap();
    let names: Vec<&str> = series.iter().map(|s| s["topic"].as_str().unwrap()).collect();
    assert_eq!(names, ["plant/a/status", "plant/a/temp", "plant/b/temp"]);
    assert_eq!(series[0]["skipped"], PER_TOPIC, "`1.50`/`off` have no temp");
    let bucket = series[1]["buckets"][0].as_object().unwrap();
    let keys: Vec<&str> = bucket.keys().map(String::as_str).collect();
    let mut expected_keys = vec!["avg", "count", "max", "start", "start_us"];
    expected_keys.sort();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort();
    assert_eq!(keys_sorted, expected_keys);
    assert_eq!(bucket["count"], PER_TOPIC);

    // The last value of each topic, and the topics.
    let latest = node.ok("/api/v1/latest?filter=plant%2F%23&field=payload.temp").await;
    let values = latest["values"].as_array().unwrap();
    let names: Vec<&str> = values.iter().map(|v| v["topic"].as_str().unwrap()).collect();
    assert_eq!(names, ["plant/a/status", "plant/a/temp", "plant/b/temp"]);
    for v in values {
        let topic = v["topic"].as_str().unwrap();
        let last_point = all.iter().rev().find(|p| p["topic"] == topic).unwrap();
        assert_eq!(v["ts_us"], last_point["ts_us"], "{topic}");
        assert_eq!(v["payload"], last_point["payload"], "{topic}");
        assert_eq!(v["encoding"], last_point["encoding"], "{topic}");
    }
    assert_eq!(values[1]["value"], values[1]["payload"]["temp"]);
    let every = node.ok("/api/v1/latest").await;
    assert_eq!(every["values"].as_array().unwrap().len(), 4, "`#` by default");

    let topics = node.ok("/api/v1/topics").await;
    let topics = topics["topics"].as_array().unwrap();
    let names: Vec<&str> = topics.iter().map(|t| t["topic"].as_str().unwrap()).collect();
    assert_eq!(names, ["bin/blob", "plant/a/status", "plant/a/temp", "plant/b/temp"]);
    for t in topics {
        let topic = t["topic"].as_str().unwrap();
        let times: Vec<u64> =
            all.iter().filter(|p| p["topic"] == topic).map(|p| p["ts_us"].as_u64().unwrap()).collect();
        assert_eq!(t["messages"], PER_TOPIC);
        assert_eq!(t["first_us"].as_u64(), times.first().copied());
        assert_eq!(t["last_us"].as_u64(), times.last().copied());
        assert_eq!(
            t["first"].as_str().map(|s| m2m_history::time::parse_time(s, 0).unwrap()),
            times.first().copied()
        );
    }
    let some = node.ok("/api/v1/topics?filter=%2B%2F%2B%2Ftemp").await;
    assert_eq!(some["topics"].as_array().unwrap().len(), 2);
    node.stop().await;
}

#[tokio::test]
async fn bad_parameters_get_400_naming_the_problem() {
    let node = Node::start(Some(HistoryConfig::default())).await;
    let cases: [(&str, &str); 20] = [
        ("/api/v1/history", "`filter` parameter is required"),
        ("/api/v1/history?filter=a%2F%23%2Fb", "filter \"a/#/b\""),
        ("/api/v1/history?filter=%23&from=yesterday", "from: \"yesterday\" is not a time"),
        ("/api/v1/history?filter=%23&to=2026-13-01T00:00:00Z", "to: "),
        ("/api/v1/history?filter=%23&from=now&to=now-1h", "empty time range"),
        ("/api/v1/history?filter=%23&field=payload..a", "field \"payload..a\""),
        ("/api/v1/history?filter=%23&cursor=zz", "cursor \"zz\""),
        ("/api/v1/history?filter=%23&limit=0", "limit 0: expected 1 to 100000"),
        ("/api/v1/history?filter=%23&limit=100001", "limit 100001"),
        ("/api/v1/history?filter=%23&limit=many", "limit \"many\""),
        ("/api/v1/history?filter=%23&order=sideways", "order \"sideways\""),
        ("/api/v1/history?filter=%23&colour=red", "unknown field `colour`"),
        ("/api/v1/history/aggregate?filter=%23", "`field` parameter is required"),
        ("/api/v1/history/aggregate?field=payload", "`filter` parameter is required"),
        (
            "/api/v1/history/aggregate?filter=%23&field=payload&bucket=10x",
            "bucket: \"10x\" is not a duration",
        ),
        ("/api/v1/history/aggregate?filter=%23&field=payload&bucket=0s", "bucket must be longer than 0"),
        ("/api/v1/history/aggregate?filter=%23&field=payload&bucket=1us&from=-1d", "buckets: at most"),
        ("/api/v1/history/aggregate?filter=%23&field=payload&agg=median", "aggregate \"median\""),
        ("/api/v1/latest?filter=%2B%2B", "filter \"++\""),
        ("/api/v1/topics?filter=a%23", "filter \"a#\""),
    ];
    for (path, expected) in cases {
        let message = node.bad(path).await;
        assert!(message.contains(expected), "{path}: {message:?} lacks {expected:?}");
    }
    node.stop().await;
}

#[tokio::test]
async fn without_history_the_routes_answer_404() {
    let node = Node::start(None).await;
    for path in [
        "/api/v1/history?filter=%23",
        "/api/v1/history/aggregate?filter=%23&field=payload",
        "/api/v1/latest",
        "/api/v1/topics",
    ] {
        let reply = node.get(path).await;
        assert_eq!(reply.status, 404, "{path}: {reply:?}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(
            reply.json(),
            json!({"error": "not_found", "message": "history is off on this node"}),
            "{path}"
        );
    }
    node.stop().await;
}

#[tokio::test]
async fn a_large_answer_is_streamed_in_chunks() {
    let node = Node::start(Some(HistoryConfig::default())).await;
    const N: usize = 50_000;
    let history = node.history().clone();
    let feed = tokio::task::spawn_blocking(move || {
        for i in 0..N {
            let topic = m2m_topic::TopicName::try_from(format!("big/{}", i % 10).as_str()).unwrap();
            let payload = Bytes::from(format!(r#"{{"i":{i},"pad":"{}"}}"#, "x".repeat(40)));
            let message = m2m_session::Message::new(topic, payload, m2m_codec::QoS::AtMostOnce, false);
            history.message(&Arc::new(message));
            if i % 10_000 == 9_999 {
                // Stay within the capture queue.
                assert!(history.flush(Duration::from_secs(30)));
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(60), feed).await.expect("feed within 60 s").unwrap();
    node.flush().await;
    let reply = tokio::time::timeout(
        Duration::from_secs(60),
        get_unbounded(node.http, "/api/v1/history?filter=big%2F%23&from=0&limit=100000"),
    )
    .await
    .expect("the answer within 60 s");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("transfer-encoding"), Some("chunked"), "{:?}", reply.headers);
    assert_eq!(reply.header("content-length"), None);
    assert!(reply.frames > 10, "{} frames for {} bytes", reply.frames, reply.body.len());
    let body = reply.json();
    let points = body["points"].as_array().unwrap();
    assert_eq!(points.len(), N);
    assert_eq!(body["next"], Value::Null);
    let mut seen: Vec<u64> = points.iter().map(|p| p["payload"]["i"].as_u64().unwrap()).collect();
    seen.sort_unstable();
    assert!(seen.iter().copied().eq(0..N as u64), "every point once");
    node.stop().await;
}

/// `GET path` on a new connection, however long it takes (a large answer in a debug build).
async fn get_unbounded(addr: SocketAddr, path: &str) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect to the HTTP API");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("HTTP handshake");
    tokio::spawn(connection);
    let request =
        Request::builder().uri(path).header("host", addr.to_string()).body(Full::new(Bytes::new())).unwrap();
    let response = sender.send_request(request).await.expect("send");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = response.into_body();
    let (mut bytes, mut frames) = (Vec::new(), 0);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            frames += 1;
            bytes.extend_from_slice(&data);
        }
    }
    Reply { status, headers, body: Bytes::from(bytes), frames }
}

#[tokio::test]
async fn the_openapi_document_describes_the_history_routes() {
    let node = Node::start(None).await;
    let reply = node.get("/api/v1/openapi.json").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let doc = reply.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    let params = |path: &str| -> Vec<(String, bool)> {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("no parameters for {path}"))
            .iter()
            .map(|p| {
                assert_eq!(p["in"], "query", "{p}");
                (p["name"].as_str().unwrap().to_owned(), p["required"].as_bool().unwrap_or(false))
            })
            .collect()
    };
    let names = |path: &str| params(path).into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    assert_eq!(
        names("/api/v1/history"),
        ["filter", "from", "to", "limit", "order", "cursor", "field", "scope"]
    );
    assert!(params("/api/v1/history").contains(&("filter".to_owned(), true)));
    assert_eq!(names("/api/v1/history/aggregate"), ["filter", "from", "to", "field", "bucket", "agg"]);
    assert_eq!(names("/api/v1/latest"), ["filter", "field", "scope"]);
    assert_eq!(names("/api/v1/topics"), ["filter"]);
    for path in ["/api/v1/history", "/api/v1/history/aggregate", "/api/v1/latest", "/api/v1/topics"] {
        let responses = &doc["paths"][path]["get"]["responses"];
        for status in ["200", "400", "404"] {
            assert!(responses[status].is_object(), "{path} {status}");
        }
    }
    for path in
        ["/api/v1/devices", "/api/v1/devices/{id}", "/api/v1/groups", "/api/v1/quarantine", "/api/v1/audit"]
    {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
    let point = &doc["components"]["schemas"]["PointView"]["properties"];
    for field in ["topic", "ts", "ts_us", "payload", "encoding", "value"] {
        assert!(point[field].is_object(), "PointView.{field}");
    }
    node.stop().await;
}
