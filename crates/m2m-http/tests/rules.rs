//! The rules routes over real HTTP, against a real node with a store and a rules engine: the
//! routes' answers, and rules changed through the API acting at once on messages published by an
//! independent MQTT client (`rumqttc`).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use m2m_broker::{Broker, Config};
use m2m_engine::{Engine, EngineConfig};
use m2m_http::{HttpConfig, HttpServer, NodeParts};
use m2m_test::{within, TempDir};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A node (MQTT broker with a store, and a rules engine unless it is off) and its HTTP API, both on
/// loopback ports.
struct Node {
    mqtt: SocketAddr,
    http: SocketAddr,
    engine: Option<Engine>,
    shutdown: CancellationToken,
    broker: JoinHandle<m2m_broker::Result<()>>,
    api: JoinHandle<m2m_http::Result<()>>,
    _dir: TempDir,
}

impl Node {
    async fn start() -> Self {
        Self::start_with(true).await
    }

    /// A node with its rules engine on, or off (`rules = false`).
    async fn start_with(rules: bool) -> Self {
        let dir = TempDir::new("http-rules");
        let mut config = Config::for_tests();
        config.store = Some(m2m_store::StoreConfig::new(dir.path().join("store")));
        let engine = rules.then(|| Engine::new(EngineConfig::default()).expect("start the engine"));
        if let Some(engine) = &engine {
            config.taps.push(Arc::new(engine.clone()));
        }
        let broker = Broker::bind(&config).await.expect("bind the broker");
        if let Some(engine) = &engine {
            engine
                .attach(broker.router(), broker.access(), broker.history(), broker.store())
                .expect("attach the engine");
        }
        let mqtt = broker.local_addr();
        let http_config =
            HttpConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..HttpConfig::default() };
        let server = HttpServer::bind(
            &http_config,
            NodeParts {
                history: broker.history(),
                engine: engine.clone(),
                ..NodeParts::new(broker.access())
            },
        )
        .await
        .expect("bind the HTTP API");
        let http = server.local_addr();
        let shutdown = CancellationToken::new();
        let broker = tokio::spawn(broker.run(shutdown.clone()));
        let api = tokio::spawn(server.run(shutdown.clone()));
        Self { mqtt, http, engine, shutdown, broker, api, _dir: dir }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        within(self.api).await.expect("HTTP API panicked").expect("HTTP API failed");
        within(self.broker).await.expect("broker panicked").expect("broker failed");
    }

    /// Waits until the engine has handled every message handed to it so far.
    async fn settle(&self) {
        let engine = self.engine.clone().expect("the node runs rules");
        let done = tokio::task::spawn_blocking(move || engine.flush(Duration::from_secs(10)));
        assert!(within(done).await.unwrap(), "the engine did not settle within 10 s");
    }

    async fn get(&self, path: &str) -> Reply {
        send(self.http, "GET", path, None).await
    }

    async fn delete(&self, path: &str) -> Reply {
        send(self.http, "DELETE", path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        send(self.http, "POST", path, Some(body.to_string())).await
    }

    async fn put(&self, path: &str, body: Value) -> Reply {
        send(self.http, "PUT", path, Some(body.to_string())).await
    }

    /// `actor action subject` of the newest `n` audit events, newest first.
    async fn audit(&self, n: usize) -> Vec<String> {
        let events = self.get(&format!("/api/v1/audit?limit={n}")).await;
        let events = events.ok(200).as_array().unwrap().clone();
        events
            .iter()
            .map(|e| format!("{} {} {}", str_of(&e["actor"]), str_of(&e["action"]), str_of(&e["subject"])))
            .collect()
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// An HTTP answer: its status, content type and body (parsed as JSON when there is one).
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: Option<String>,
    body: Value,
}

impl Reply {
    /// Asserts `status` and a JSON error body, and returns its message.
    #[track_caller]
    fn error(&self, status: u16) -> &str {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.content_type.as_deref(), Some("application/json"), "{self:?}");
        self.body["message"].as_str().unwrap_or_else(|| panic!("no error message in {self:?}"))
    }

    #[track_caller]
    fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "{self:?}");
        &self.body
    }
}

/// Sends one request on a new connection, with a JSON body if there is one.
async fn send(addr: SocketAddr, method: &str, path: &str, body: Option<String>) -> Reply {
    within(async {
        let stream = TcpStream::connect(addr).await.expect("connect to the HTTP API");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("HTTP handshake");
        tokio::spawn(connection);
        let mut request = Request::builder().method(method).uri(path).header("host", addr.to_string());
        let body = match body {
            Some(json) => {
                request = request.header("content-type", "application/json");
                Bytes::from(json)
            }
            None => Bytes::new(),
        };
        let response =
            sender.send_request(request.body(Full::new(body)).expect("request")).await.expect("send");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().expect("ASCII content type").to_owned());
        let bytes = response.into_body().collect().await.expect("response body").to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {bytes:?}"))
        };
        Reply { status, content_type, body }
    })
    .await
}

const HOT: &str = r#"SELECT payload.temp AS t, clientid FROM "kiln/+/temp" WHERE payload.temp > 80"#;

fn republish(topic: &str, payload: &str) -> Value {
    json!({"type": "republish", "topic": topic, "payload": payload, "qos": 1})
}

#[tokio::test]
async fn rules_are_created_read_replaced_and_removed_with_their_status_codes() {
    let node = Node::start().await;
    assert_eq!(node.get("/api/v1/rules").await.ok(200), &json!([]));

    let rule = json!({"id": "hot", "sql": HOT, "actions": [republish("alerts/${clientid}", "${t}")],
        "description": "kiln too hot"});
    let created = node.post("/api/v1/rules", rule.clone()).await;
    let created = created.ok(201);
    assert_eq!(
        (&created["id"], &created["sql"], &created["state"]),
        (&json!("hot"), &json!(HOT), &json!("running"))
    );
    assert_eq!(created["enabled"], true, "enabled by default");
    assert_eq!(created["description"], "kiln too hot");
    assert_eq!(created["actions"][0]["type"], "republish");
    assert_eq!(created["metrics"]["matched"], 0);
    assert_eq!(created["metrics"]["last_error"], Value::Null);

    let again = node.post("/api/v1/rules", rule).await;
    assert_eq!(again.error(409), "a rule \"hot\" exists already");

    let shown = node.get("/api/v1/rules/hot").await;
    assert_eq!(shown.ok(200)["description"], "kiln too hot");
    assert_eq!(node.get("/api/v1/rules/cold").await.error(404), "no rule \"cold\"");

    // PUT: a new rule (201, the id from the path), then a replaced one (200).
    let webhook = json!({"type": "webhook", "url": "http://127.0.0.1:9/hook", "max_retries": 0});
    let cold = json!({"sql": "SELECT * FROM \"kiln/+/temp\" WHERE payload.temp < 5", "actions": [webhook]});
    let put = node.put("/api/v1/rules/cold", cold.clone()).await;
    let put = put.ok(201);
    assert_eq!((&put["id"], &put["actions"][0]["type"]), (&json!("cold"), &json!("webhook")));
    let replaced = node
        .put("/api/v1/rules/cold", json!({"id": "cold", "sql": HOT, "enabled": false, "description": "v2"}))
        .await;
    let replaced = replaced.ok(200);
    assert_eq!((&replaced["state"], &replaced["description"]), (&json!("disabled"), &json!("v2")));
    assert_eq!(replaced["actions"], json!([]));
    let other_id = node.put("/api/v1/rules/cold", json!({"id": "warm", "sql": HOT})).await;
    assert_eq!(other_id.error(400), "the rule's id \"warm\" is not \"cold\", the id in the path");

    let list = node.get("/api/v1/rules").await;
    let ids: Vec<&str> = list.ok(200).as_array().unwrap().iter().map(|r| str_of(&r["id"])).collect();
    assert_eq!(ids, ["cold", "hot"], "by id");

    assert_eq!(node.delete("/api/v1/rules/cold").await.ok(204), &Value::Null);
    assert_eq!(node.delete("/api/v1/rules/cold").await.error(404), "no rule \"cold\"");
    assert_eq!(node.get("/api/v1/rules/cold").await.error(404), "no rule \"cold\"");
    assert_eq!(node.get("/api/v1/rules").await.ok(200).as_array().unwrap().len(), 1);
    node.stop().await;
}

#[tokio::test]
async fn invalid_rules_are_refused_with_400_and_the_engines_message() {
    let node = Node::start().await;
    let cases = [
        (json!({"id": "a", "sql": "SELECT FROM"}), "rule \"a\": "),
        (json!({"id": "a", "sql": "DELETE FROM \"x\""}), "DELETE"),
        (json!({"id": "a/b", "sql": HOT}), "rule id \"a/b\""),
        (json!({"id": "", "sql": HOT}), "rule id \"\""),
        (json!({"id": "a", "sql": HOT, "actions": [{"type": "explode"}]}), "unknown variant `explode`"),
        (json!({"id": "a", "sql": HOT, "actions": [{"type": "republish", "topic": "x", "qso": 1}]}), "qso"),
        (
            json!({"id": "a", "sql": HOT, "actions": [{"type": "republish", "topic": "x", "qos": 3}]}),
            "republish qos 3: expected 0, 1 or 2",
        ),
        (json!({"id": "a", "sql": HOT, "actions": [republish("x/${", "y")]}), "republish topic"),
        (
            json!({"id": "a", "sql": HOT, "actions": [{"type": "webhook", "url": "ftp://x/"}]}),
            "webhook: invalid webhook URL \"ftp://x/\": the scheme must be http or https",
        ),
        (
            json!({"id": "a", "sql": HOT, "actions": [{"type": "quarantine", "mode": "exile", "reason": "r"}]}),
            "quarantine mode \"exile\": expected ban or isolate",
        ),
        (json!({"id": "a", "sql": HOT, "action": []}), "unknown member \"action\" in a rule"),
        (json!({"id": "a", "sql": 42}), "invalid rule: invalid type"),
        (json!({"sql": HOT}), "missing field `id`"),
        (json!(["not", "an", "object"]), "a rule is a JSON object"),
    ];
    let cases_count = cases.len();
    for (body, expected) in cases {
        let reply = node.post("/api/v1/rules", body.clone()).await;
        let message = reply.error(400);
        assert!(message.contains(expected), "{body}: {message:?} lacks {expected:?}");
    }
    let not_json = send(node.http, "POST", "/api/v1/rules", Some("{".into())).await;
    not_json.error(400);
    assert_eq!(node.get("/api/v1/rules").await.ok(200), &json!([]), "nothing was added");
    // Each refused request is audited as a request, not as a change of the rules.
    let audited = node.audit(20).await;
    assert_eq!(audited.len(), cases_count + 1, "{audited:?}");
    assert!(audited.iter().all(|e| e == "loopback api.request POST /api/v1/rules"), "{audited:?}");
    node.stop().await;
}

#[tokio::test]
async fn rules_are_disabled_and_enabled_and_every_change_is_audited() {
    let node = Node::start().await;
    node.post("/api/v1/rules", json!({"id": "hot", "sql": HOT})).await.ok(201);
    let disabled = node.post("/api/v1/rules/hot/disable", Value::Null).await;
    assert_eq!((&disabled.ok(200)["state"], &disabled.body["enabled"]), (&json!("disabled"), &json!(false)));
    assert_eq!(node.get("/api/v1/rules/hot").await.ok(200)["state"], "disabled");
    let enabled = send(node.http, "POST", "/api/v1/rules/hot/enable", None).await;
    assert_eq!((&enabled.ok(200)["state"], &enabled.body["enabled"]), (&json!("running"), &json!(true)));
    assert_eq!(node.post("/api/v1/rules/cold/enable", json!({})).await.error(404), "no rule \"cold\"");
    assert_eq!(node.post("/api/v1/rules/cold/disable", json!({})).await.error(404), "no rule \"cold\"");
    node.put("/api/v1/rules/hot", json!({"sql": HOT, "description": "v2"})).await.ok(200);
    node.delete("/api/v1/rules/hot").await.ok(204);

    assert_eq!(
        node.audit(10).await,
        [
            "loopback rule.remove hot",
            "loopback rule.replace hot",
            "loopback api.request POST /api/v1/rules/cold/disable",
            "loopback api.request POST /api/v1/rules/cold/enable",
            "loopback rule.enable hot",
            "loopback rule.disable hot",
            "loopback rule.add hot"
        ]
    );
    let events = node.get("/api/v1/audit?limit=10").await;
    let events = events.ok(200).as_array().unwrap();
    assert_eq!(events[1]["detail"], HOT, "an added or replaced rule's SQL is in its audit entry");
    assert_eq!(events[6]["detail"], HOT);
    node.stop().await;
}

#[tokio::test]
async fn a_rule_is_tried_on_a_sample_message_without_being_added() {
    let node = Node::start().await;
    let try_rule = |payload: Value, clientid: Option<&str>| {
        let mut body = json!({"sql": HOT, "topic": "kiln/3/temp", "payload": payload});
        if let Some(c) = clientid {
            body["clientid"] = c.into();
        }
        node.post("/api/v1/rules/test", body)
    };
    let out = try_rule(json!(r#"{"temp": 95.5}"#), Some("kiln-3")).await;
    assert_eq!(
        out.ok(200),
        &json!({"output": {"t": 95.5, "clientid": "kiln-3"}}),
        "a string is the payload's text"
    );
    let out = try_rule(json!({"temp": 81}), None).await;
    assert_eq!(out.ok(200), &json!({"output": {"t": 81, "clientid": null}}), "other JSON is sent as JSON");
    let out = try_rule(json!({"temp": 20}), Some("kiln-3")).await;
    assert_eq!(out.ok(200), &json!({"output": null}), "WHERE is false");
    let out = try_rule(json!("not json"), None).await;
    assert_eq!(out.ok(200), &json!({"output": null}), "no payload.temp: NULL > 80 is not true");
    let topic = node
        .post(
            "/api/v1/rules/test",
            json!({"sql": "SELECT topic_level(topic, 2) AS kiln FROM \"kiln/#\"", "topic": "kiln/7/temp"}),
        )
        .await;
    assert_eq!(topic.ok(200), &json!({"output": {"kiln": "7"}}), "no payload: an empty one");

    let bad =
        node.post("/api/v1/rules/test", json!({"sql": "SELECT FROM", "topic": "t", "payload": ""})).await;
    assert!(!bad.error(400).is_empty());
    let eval = node
        .post(
            "/api/v1/rules/test",
            json!({"sql": "SELECT payload.a / 0 AS x FROM \"t\"", "topic": "t", "payload": {"a": 1}}),
        )
        .await;
    assert!(eval.error(400).contains("by zero"), "{eval:?}");
    let unknown = node.post("/api/v1/rules/test", json!({"sql": HOT, "topic": "t", "colour": 1})).await;
    assert!(unknown.error(400).contains("unknown field `colour`"), "{unknown:?}");
    let qos = node.post("/api/v1/rules/test", json!({"sql": HOT, "topic": "t", "qos": 3})).await;
    assert!(qos.error(400).contains("qos must be 0, 1 or 2"), "{qos:?}");

    // An event, with its fields, and a window rule's statistics.
    let event = node
        .post(
            "/api/v1/rules/test",
            json!({"sql": "SELECT clientid, reason FROM \"$events/client_disconnected\" WHERE reason <> 'normal'",
                "event": "client_disconnected", "clientid": "van-3", "fields": {"reason": "keep_alive_timeout"}}),
        )
        .await;
    assert_eq!(event.ok(200), &json!({"output": {"clientid": "van-3", "reason": "keep_alive_timeout"}}));
    let window = node
        .post(
            "/api/v1/rules/test",
            json!({"sql": "SELECT win.avg AS avg FROM \"kiln/+/temp\" WHERE win.avg > 80 AND win.count >= 3",
                "topic": "kiln/1/temp", "payload": {"temp": 85}, "window": {"avg": 82.5, "count": 4}}),
        )
        .await;
    assert_eq!(window.ok(200), &json!({"output": {"avg": 82.5}}));
    let no_event = node.post("/api/v1/rules/test", json!({"sql": HOT, "event": "client_exploded"})).await;
    assert!(
        no_event.error(400).contains("no event \"client_exploded\"; events: client_connected"),
        "{no_event:?}"
    );
    assert_eq!(node.get("/api/v1/rules").await.ok(200), &json!([]), "nothing was added");
    node.stop().await;
}

#[tokio::test]
async fn a_rule_may_be_called_test() {
    let node = Node::start().await;
    node.post("/api/v1/rules", json!({"id": "test", "sql": HOT})).await.ok(201);
    assert_eq!(node.get("/api/v1/rules/test").await.ok(200)["id"], "test");
    assert_eq!(node.post("/api/v1/rules/test/disable", json!({})).await.ok(200)["state"], "disabled");
    assert_eq!(node.put("/api/v1/rules/test", json!({"sql": HOT})).await.ok(200)["state"], "running");
    node.delete("/api/v1/rules/test").await.ok(204);
    assert_eq!(node.get("/api/v1/rules/test").await.error(404), "no rule \"test\"");
    node.stop().await;
}

#[tokio::test]
async fn a_node_without_rules_answers_404() {
    let node = Node::start_with(false).await;
    for reply in [
        node.get("/api/v1/rules").await,
        node.post("/api/v1/rules", json!({"id": "a", "sql": HOT})).await,
        node.get("/api/v1/rules/a").await,
        node.put("/api/v1/rules/a", json!({"sql": HOT})).await,
        node.delete("/api/v1/rules/a").await,
        node.post("/api/v1/rules/a/enable", json!({})).await,
        node.post("/api/v1/rules/test", json!({"sql": HOT, "topic": "t", "payload": ""})).await,
    ] {
        assert_eq!(reply.error(404), "rules are off on this node");
    }
    node.stop().await;
}

#[tokio::test]
async fn the_openapi_document_lists_the_rules_routes() {
    let node = Node::start().await;
    let doc = node.get("/api/v1/openapi.json").await;
    let paths = &doc.ok(200)["paths"];
    for (path, methods) in [
        ("/api/v1/rules", &["get", "post"][..]),
        ("/api/v1/rules/{id}", &["get", "put", "delete"][..]),
        ("/api/v1/rules/{id}/enable", &["post"][..]),
        ("/api/v1/rules/{id}/disable", &["post"][..]),
        ("/api/v1/rules/test", &["post"][..]),
    ] {
        for method in methods {
            let op = &paths[path][method];
            assert_eq!(op["tags"], json!(["rules"]), "{method} {path}: {op}");
        }
    }
    node.stop().await;
}

/// An MQTT 3.1.1 client (`rumqttc`) subscribed to `filters`, and the messages it receives.
async fn subscriber(
    addr: SocketAddr,
    filters: &[&str],
) -> (AsyncClient, mpsc::UnboundedReceiver<(String, String)>) {
    let options = MqttOptions::new("rules-watcher", "127.0.0.1", addr.port());
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    for f in filters {
        client.subscribe(*f, QoS::AtLeastOnce).await.unwrap();
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let mut waiting = (filters.len(), Some(subscribed_tx));
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    waiting.0 -= 1;
                    if waiting.0 == 0 {
                        let _ = waiting.1.take().map(|s| s.send(()));
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let _ = tx.send((p.topic.clone(), String::from_utf8_lossy(&p.payload).into_owned()));
                }
                _ => {}
            }
        }
    });
    within(subscribed).await.expect("SUBACKs");
    (client, rx)
}

/// An MQTT 3.1.1 client (`rumqttc`) that publishes, its connection driven by a task.
fn publisher(addr: SocketAddr, id: &str) -> AsyncClient {
    let options = MqttOptions::new(id, "127.0.0.1", addr.port());
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(String, String)>) -> (String, String) {
    within(rx.recv()).await.expect("the subscriber is connected")
}

#[tokio::test]
async fn a_rule_added_over_http_republishes_real_traffic_until_it_is_disabled() {
    let node = Node::start().await;
    let (_watcher, mut rx) = subscriber(node.mqtt, &["alerts/#", "kiln/#"]).await;
    let kiln = publisher(node.mqtt, "kiln-3");
    let hot = |temp: f64| format!(r#"{{"temp": {temp}}}"#);

    // No rule yet: the message goes through, and nothing more.
    kiln.publish("kiln/3/temp", QoS::AtLeastOnce, false, hot(90.0)).await.unwrap();
    assert_eq!(next(&mut rx).await, ("kiln/3/temp".into(), hot(90.0)));

    let rule = json!({"id": "hot", "sql": HOT,
        "actions": [republish("alerts/${clientid}", r#"{"t": ${t}, "from": "${clientid}"}"#)]});
    node.post("/api/v1/rules", rule).await.ok(201);
    kiln.publish("kiln/3/temp", QoS::AtLeastOnce, false, hot(20.0)).await.unwrap();
    kiln.publish("kiln/3/temp", QoS::AtLeastOnce, false, hot(95.5)).await.unwrap();
    assert_eq!(next(&mut rx).await, ("kiln/3/temp".into(), hot(20.0)));
    assert_eq!(next(&mut rx).await, ("kiln/3/temp".into(), hot(95.5)));
    assert_eq!(next(&mut rx).await, ("alerts/kiln-3".into(), r#"{"t": 95.5, "from": "kiln-3"}"#.into()));
    node.settle().await;
    let status = node.get("/api/v1/rules/hot").await;
    let metrics = &status.ok(200)["metrics"];
    assert_eq!(
        (&metrics["matched"], &metrics["passed"], &metrics["actions_ok"], &metrics["failed"]),
        (&json!(2), &json!(1), &json!(1), &json!(0)),
        "{metrics}"
    );

    // Disabled: the message goes through alone. The marker published after the engine has handled
    // it would come after any republished copy.
    node.post("/api/v1/rules/hot/disable", json!({})).await.ok(200);
    kiln.publish("kiln/3/temp", QoS::AtLeastOnce, false, hot(99.0)).await.unwrap();
    assert_eq!(next(&mut rx).await, ("kiln/3/temp".into(), hot(99.0)));
    node.settle().await;
    kiln.publish("kiln/marker", QoS::AtLeastOnce, false, "m1").await.unwrap();
    assert_eq!(next(&mut rx).await, ("kiln/marker".into(), "m1".into()), "no alert while disabled");

    // Replaced with another topic, enabled again: the new action at once.
    let v2 = json!({"sql": HOT, "actions": [republish("alerts/v2/${clientid}", "${t}")]});
    node.put("/api/v1/rules/hot", v2).await.ok(200);
    kiln.publish("kiln/3/temp", QoS::AtLeastOnce, false, hot(120.0)).await.unwrap();
    assert_eq!(next(&mut rx).await, ("kiln/3/temp".into(), hot(120.0)));
    assert_eq!(next(&mut rx).await, ("alerts/v2/kiln-3".into(), "120".into()));

    // Removed: nothing more.
    node.delete("/api/v1/rules/hot").await.ok(204);
    kiln.publish("kiln/3/temp", QoS::AtLeastOnce, false, hot(130.0)).await.unwrap();
    assert_eq!(next(&mut rx).await, ("kiln/3/temp".into(), hot(130.0)));
    node.settle().await;
    kiln.publish("kiln/marker", QoS::AtLeastOnce, false, "m2").await.unwrap();
    assert_eq!(next(&mut rx).await, ("kiln/marker".into(), "m2".into()), "no alert once removed");
    node.stop().await;
}
