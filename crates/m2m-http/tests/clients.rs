//! The node, clients, publish and metrics routes over real HTTP, against a real node with a store,
//! driven by independent MQTT clients (`rumqttc`, 3.1.1 and 5).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use m2m_broker::{Broker, Config};
use m2m_engine::{Engine, EngineConfig};
use m2m_http::{HttpConfig, HttpServer, NodeParts};
use m2m_test::{within, TempDir, STEP_LIMIT};
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A node (MQTT broker with a store) and its HTTP API, both on loopback ports.
struct Node {
    mqtt: SocketAddr,
    http: SocketAddr,
    shutdown: CancellationToken,
    broker: JoinHandle<m2m_broker::Result<()>>,
    api: JoinHandle<m2m_http::Result<()>>,
    _dir: TempDir,
}

/// An HTTP answer: status, content type and body.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    body: Bytes,
}

impl Reply {
    /// The body as JSON, asserting `status`.
    #[track_caller]
    fn json(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        if self.body.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

impl Node {
    async fn start() -> Self {
        Self::start_with(false, |_| {}).await
    }

    /// Starts a node, with a rules engine if `rules`, whose API parts `change` adjusts.
    async fn start_with(rules: bool, change: impl FnOnce(&mut NodeParts)) -> Self {
        let dir = TempDir::new("http-clients");
        let mut config = Config::for_tests();
        config.store = Some(m2m_store::StoreConfig::new(dir.path().join("store")));
        let engine = rules.then(|| Engine::new(EngineConfig::default()).expect("start the engine"));
        if let Some(engine) = &engine {
            config.taps.push(std::sync::Arc::new(engine.clone()));
        }
        let broker = Broker::bind(&config).await.expect("bind the broker");
        if let Some(engine) = &engine {
            engine
                .attach(broker.router(), broker.access(), broker.history(), broker.store())
                .expect("attach the engine");
        }
        let mut parts = NodeParts { engine, ..NodeParts::with_broker(&broker) };
        change(&mut parts);
        let http_config =
            HttpConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..HttpConfig::default() };
        let server = HttpServer::bind(&http_config, parts).await.expect("bind the HTTP API");
        let (mqtt, http) = (broker.local_addr(), server.local_addr());
        let shutdown = CancellationToken::new();
        let broker = tokio::spawn(broker.run(shutdown.clone()));
        let api = tokio::spawn(server.run(shutdown.clone()));
        Self { mqtt, http, shutdown, broker, api, _dir: dir }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        within(self.api).await.expect("HTTP API panicked").expect("HTTP API failed");
        within(self.broker).await.expect("broker panicked").expect("broker failed");
    }

    async fn get(&self, path: &str) -> Reply {
        send(self.http, "GET", path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        send(self.http, "POST", path, Some(body)).await
    }

    /// The client `id` as `GET /clients/{id}` shows it, or `None` on a 404.
    async fn client(&self, id: &str) -> Option<Value> {
        let reply = self.get(&format!("/api/v1/clients/{id}")).await;
        (reply.status != 404).then(|| reply.json(200))
    }

    /// The samples of `GET /metrics`, by name with labels (`m2m_x{qos="1"}`).
    async fn metrics(&self) -> BTreeMap<String, f64> {
        let reply = self.get("/metrics").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        parse_exposition(std::str::from_utf8(&reply.body).unwrap())
    }
}

/// Sends one request on a new connection.
async fn send(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Reply {
    within(async {
        let stream = TcpStream::connect(addr).await.expect("connect to the HTTP API");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("HTTP handshake");
        tokio::spawn(connection);
        let mut request = Request::builder().method(method).uri(path).header("host", addr.to_string());
        let body = match body {
            Some(json) => {
                request = request.header("content-type", "application/json");
                Bytes::from(json.to_string())
            }
            None => Bytes::new(),
        };
        let response = sender.send_request(request.body(Full::new(body)).unwrap()).await.expect("send");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.into_body().collect().await.expect("response body").to_bytes();
        Reply { status, content_type, body }
    })
    .await
}

/// Checks every line of a Prometheus text page (`# HELP`/`# TYPE` comments, each family's before
/// its samples, or `name{labels} value`) and returns the samples.
fn parse_exposition(page: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in page.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let (kind, name) = (words.next().unwrap(), words.next().unwrap());
            assert!(matches!(kind, "HELP" | "TYPE"), "{line}");
            assert!(name.starts_with("m2m_"), "{line}");
            if kind == "TYPE" {
                let t = words.next().unwrap();
                assert!(matches!(t, "counter" | "gauge" | "histogram"), "{line}");
                assert!(typed.insert(name.to_owned()), "two TYPE lines for {name}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.starts_with("m2m_") && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "bad name: {line:?}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "sample before its TYPE: {line:?}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).unwrap();
                for pair in inner.split(',') {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("bad label: {line:?}"));
                    assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{line:?}");
                    assert!(v.starts_with('"') && v.ends_with('"') && v.len() >= 2, "{line:?}");
                }
            }
        }
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line:?}")),
        };
        samples.insert(series.to_owned(), value);
    }
    samples
}

/// Polls `check` until it gives a value, failing after [`STEP_LIMIT`].
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + STEP_LIMIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What an MQTT 5 client's connection saw.
#[derive(Debug)]
enum Seen {
    ConnAck,
    SubAck,
    Publish(Box<Publish>),
    Disconnect(DisconnectReasonCode),
    /// The connection ended.
    Closed,
}

/// An MQTT 5 client (`rumqttc`) whose connection a task drives, reporting what it sees.
struct Client {
    client: AsyncClient,
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl Client {
    /// Connects as `id`, keeping its session `expiry` seconds (0: a clean session), and waits for
    /// CONNACK.
    async fn connect(addr: SocketAddr, id: &str, expiry: u32) -> Self {
        let mut options = MqttOptions::new(id, "127.0.0.1", addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_start(expiry == 0);
        if expiry > 0 {
            options.set_session_expiry_interval(Some(expiry));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let event = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => Seen::ConnAck,
                    Ok(Event::Incoming(Packet::SubAck(_))) => Seen::SubAck,
                    Ok(Event::Incoming(Packet::Publish(p))) => Seen::Publish(Box::new(p)),
                    Ok(Event::Incoming(Packet::Disconnect(d))) => Seen::Disconnect(d.reason_code),
                    Ok(_) => continue,
                    // rumqttc reports a server's DISCONNECT as the error that ends the connection.
                    Err(ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, .. })) => {
                        let _ = tx.send(Seen::Disconnect(reason_code));
                        let _ = tx.send(Seen::Closed);
                        return;
                    }
                    Err(_) => {
                        // Polling again would reconnect: the connection's end is final here.
                        let _ = tx.send(Seen::Closed);
                        return;
                    }
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        let mut c = Self { client, seen };
        let first = c.next().await;
        assert!(matches!(first, Seen::ConnAck), "{first:?}");
        c
    }

    async fn next(&mut self) -> Seen {
        within(self.seen.recv()).await.expect("the connection task reports until it ends")
    }

    /// Subscribes and waits for the SUBACK.
    async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).await.unwrap();
        loop {
            match self.next().await {
                Seen::SubAck => return,
                Seen::Publish(_) => {}
                other => panic!("{other:?} while subscribing"),
            }
        }
    }

    /// The next message received.
    async fn next_publish(&mut self) -> Publish {
        loop {
            match self.next().await {
                Seen::Publish(p) => return *p,
                Seen::SubAck | Seen::ConnAck => {}
                other => panic!("{other:?} while waiting for a message"),
            }
        }
    }
}

/// An MQTT 3.1.1 client (`rumqttc`) with a clean session, its connection driven by a task.
async fn connect_v311(addr: SocketAddr, id: &str) -> rumqttc::AsyncClient {
    let options = rumqttc::MqttOptions::new(id, "127.0.0.1", addr.port());
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
    let (tx, connected) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    let _ = tx.take().map(|tx| tx.send(()));
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    within(connected).await.expect("CONNACK");
    client
}

fn ids(list: &Value) -> Vec<&str> {
    list.as_array().unwrap().iter().map(|c| c["client_id"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn connected_clients_are_listed_with_address_protocol_subscriptions_and_counters() {
    let node = Node::start().await;
    let mut sensor = Client::connect(node.mqtt, "sensor-1", 300).await;
    sensor.subscribe("cmd/sensor-1/#", QoS::AtLeastOnce).await;
    for i in 0..3 {
        sensor.client.publish("data/sensor-1", QoS::AtMostOnce, false, format!("{i}")).await.unwrap();
    }
    let legacy = connect_v311(node.mqtt, "legacy-7").await;

    let sensor_view = until("three messages from sensor-1", || async {
        node.client("sensor-1").await.filter(|c| c["messages_in"] == 3)
    })
    .await;
    assert_eq!(sensor_view["online"], true);
    assert_eq!(sensor_view["protocol"], "5.0");
    assert_eq!(sensor_view["transport"], "tcp");
    assert!(sensor_view["address"].as_str().unwrap().starts_with("127.0.0.1:"), "{sensor_view}");
    assert_eq!(sensor_view["keep_alive"], 30);
    assert_eq!(sensor_view["clean_start"], false);
    assert_eq!(sensor_view["session_expiry"], 300);
    assert_eq!(sensor_view["subscriptions"], json!([{"filter": "cmd/sensor-1/#", "qos": 1}]));
    assert!(sensor_view["bytes_in"].as_u64().unwrap() > 0, "{sensor_view}");
    assert!(sensor_view["bytes_out"].as_u64().unwrap() > 0, "{sensor_view}");
    assert!(sensor_view["connected_at"].as_str().unwrap().ends_with('Z'), "{sensor_view}");
    assert!(sensor_view["last_seen"].is_string(), "{sensor_view}");
    assert!(sensor_view.get("username").is_none(), "{sensor_view}");
    for member in ["messages_out", "in_rate", "out_rate", "queued", "inflight"] {
        assert!(sensor_view[member].is_number(), "{member}: {sensor_view}");
    }

    let all = node.get("/api/v1/clients").await.json(200);
    assert_eq!(ids(&all), ["legacy-7", "sensor-1"]);
    let legacy_view = &all[0];
    assert_eq!(
        (legacy_view["protocol"].as_str(), legacy_view["clean_start"].as_bool()),
        (Some("3.1.1"), Some(true))
    );
    assert_eq!(legacy_view["session_expiry"], 0);
    assert_eq!(ids(&node.get("/api/v1/clients?search=sens").await.json(200)), ["sensor-1"]);
    assert_eq!(ids(&node.get("/api/v1/clients?limit=1").await.json(200)), ["legacy-7"]);
    assert_eq!(ids(&node.get("/api/v1/clients?state=offline").await.json(200)), Vec::<&str>::new());
    node.get("/api/v1/clients?state=gone").await.json(400);
    node.get("/api/v1/clients?limit=0").await.json(400);

    // A session that persists keeps its client listed, offline; a clean one is forgotten.
    sensor.client.disconnect().await.unwrap();
    let offline = until("sensor-1 offline", || async {
        node.client("sensor-1").await.filter(|c| c["online"] == false)
    })
    .await;
    assert!(offline.get("connected_at").is_none(), "{offline}");
    assert_eq!(offline["messages_in"], 3);
    assert_eq!(offline["subscriptions"], json!([{"filter": "cmd/sensor-1/#", "qos": 1}]));
    assert_eq!(ids(&node.get("/api/v1/clients?state=offline").await.json(200)), ["sensor-1"]);
    assert_eq!(ids(&node.get("/api/v1/clients?state=online").await.json(200)), ["legacy-7"]);
    legacy.disconnect().await.unwrap();
    until("legacy-7 forgotten", || async { node.client("legacy-7").await.is_none().then_some(()) }).await;

    // Back again: online, with its subscription from the session.
    let _sensor = Client::connect(node.mqtt, "sensor-1", 300).await;
    let back =
        until("sensor-1 back", || async { node.client("sensor-1").await.filter(|c| c["online"] == true) })
            .await;
    assert_eq!(back["subscriptions"], json!([{"filter": "cmd/sensor-1/#", "qos": 1}]));
    node.stop().await;
}

#[tokio::test]
async fn an_operator_disconnect_ends_the_client_connection() {
    let node = Node::start().await;
    let mut pump = Client::connect(node.mqtt, "pump-2", 60).await;
    until("pump-2 listed", || async { node.client("pump-2").await }).await;

    let reply = node.post("/api/v1/clients/pump-2/disconnect", json!({})).await;
    assert_eq!(reply.status, 204, "{reply:?}");
    // rumqttc 0.25 waits for a properties length after the reason code of a DISCONNECT, which MQTT 5
    // lets a sender leave out (§3.14.2.2.1), so it may see only the connection end; the reason code
    // is checked with a raw client below.
    match pump.next().await {
        Seen::Disconnect(reason) => {
            assert_eq!(reason, DisconnectReasonCode::AdministrativeAction);
            assert!(matches!(pump.next().await, Seen::Closed));
        }
        Seen::Closed => {}
        other => panic!("expected the connection to end, got {other:?}"),
    }
    until("pump-2 offline", || async { node.client("pump-2").await.filter(|c| c["online"] == false) }).await;

    let mut raw = m2m_test::raw_connect_ok(node.mqtt, m2m_test::persistent_connect("valve-9", true)).await;
    until("valve-9 listed", || async { node.client("valve-9").await }).await;
    node.post("/api/v1/clients/valve-9/disconnect", json!({})).await.json(204);
    m2m_test::expect_disconnect(&mut raw, m2m_codec::ReasonCode::ADMINISTRATIVE_ACTION).await;

    // Not connected (any more, or ever): 404.
    node.post("/api/v1/clients/pump-2/disconnect", json!({})).await.json(404);
    node.post("/api/v1/clients/nobody/disconnect", json!({})).await.json(404);
    node.get("/api/v1/clients/nobody").await.json(404);
    // The two disconnections are audited under the caller, and so are the two refused ones.
    let audit = node.get("/api/v1/audit").await.json(200);
    let seen: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["subject"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            "loopback api.request POST /api/v1/clients/nobody/disconnect",
            "loopback api.request POST /api/v1/clients/pump-2/disconnect",
            "loopback client.disconnect valve-9",
            "loopback client.disconnect pump-2"
        ],
        "{audit}"
    );
    node.stop().await;
}

#[tokio::test]
async fn messages_published_through_the_api_reach_real_subscribers() {
    let node = Node::start().await;
    let mut sub = Client::connect(node.mqtt, "watcher", 0).await;
    sub.subscribe("plant/#", QoS::ExactlyOnce).await;

    let reply = node.post("/api/v1/publish", json!({"topic": "plant/a", "payload": "hello"})).await.json(200);
    assert_eq!(reply, json!({"topic": "plant/a", "qos": 0}));
    let m = sub.next_publish().await;
    assert_eq!(
        (&m.topic[..], &m.payload[..], m.qos, m.retain),
        (&b"plant/a"[..], &b"hello"[..], QoS::AtMostOnce, false)
    );

    let body = json!({"topic": "plant/b", "payload": {"on": true}, "qos": 1, "retain": true,
        "user_properties": [["by", "operator"], ["why", "test"]]});
    assert_eq!(node.post("/api/v1/publish", body).await.json(200), json!({"topic": "plant/b", "qos": 1}));
    let m = sub.next_publish().await;
    assert_eq!(
        (&m.topic[..], &m.payload[..], m.qos),
        (&b"plant/b"[..], &br#"{"on":true}"#[..], QoS::AtLeastOnce)
    );
    let props = m.properties.unwrap_or_else(PublishProperties::default);
    assert_eq!(
        props.user_properties,
        [("by".to_owned(), "operator".to_owned()), ("why".to_owned(), "test".to_owned())]
    );

    // Retained: a later subscriber gets it too.
    let mut late = Client::connect(node.mqtt, "late", 0).await;
    late.subscribe("plant/b", QoS::AtLeastOnce).await;
    let m = late.next_publish().await;
    assert_eq!((&m.payload[..], m.retain), (&br#"{"on":true}"#[..], true));

    let body = json!({"topic": "plant/c", "payload": "AAH/", "encoding": "base64", "qos": 2});
    node.post("/api/v1/publish", body).await.json(200);
    let m = sub.next_publish().await;
    assert_eq!(
        (&m.topic[..], &m.payload[..], m.qos),
        (&b"plant/c"[..], &[0u8, 1, 255][..], QoS::ExactlyOnce)
    );

    for bad in [
        json!({"topic": "plant/+", "payload": "x"}),
        json!({"topic": "", "payload": "x"}),
        json!({"topic": "$SYS/fake", "payload": "x"}),
        json!({"topic": "plant/d", "payload": "x", "qos": 3}),
        json!({"topic": "plant/d", "payload": "%%", "encoding": "base64"}),
        json!({"topic": "plant/d", "payload": "x", "encoding": "hex"}),
        json!({"topic": "plant/d", "payload": "x", "colour": "red"}),
        json!({"payload": "x"}),
    ] {
        let reply = node.post("/api/v1/publish", bad.clone()).await;
        let body = reply.json(400);
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    node.stop().await;
}

#[tokio::test]
async fn the_node_reports_its_listeners_features_and_stats() {
    let node = Node::start_with(false, |parts| {
        parts.node_id = "line-4".to_owned();
        let mut config = json!({"http": {"token": "t0ken"}, "mqtt": {"listen": "127.0.0.1:0"}});
        m2m_http::redact_secrets(&mut config);
        parts.config = Some(config);
    })
    .await;
    let mut c = Client::connect(node.mqtt, "meter", 0).await;
    c.subscribe("meters/#", QoS::AtMostOnce).await;

    let view = until("one connection and subscription", || async {
        let v = node.get("/api/v1/node").await.json(200);
        (v["stats"]["connections"] == 1 && v["stats"]["subscriptions"] == 1).then_some(v)
    })
    .await;
    assert_eq!(view["node_id"], "line-4");
    assert!(view["version"].is_string() && view["started"].is_string(), "{view}");
    assert!(view["uptime_secs"].is_u64(), "{view}");
    assert_eq!(view["listeners"], json!([{"address": node.mqtt.to_string(), "transport": "tcp"}]));
    // A node with a store keeps a history by default.
    assert_eq!(view["features"], json!({"history": true, "rules": false, "mesh": false}));
    for stat in [
        "sessions",
        "retained",
        "messages_received",
        "messages_sent",
        "messages_dropped",
        "bytes_received",
        "bytes_sent",
        "rules",
        "quarantined",
    ] {
        assert!(view["stats"][stat].is_u64(), "{stat}: {view}");
    }
    assert_eq!(
        node.get("/api/v1/nodes").await.json(200),
        json!([{"node_id": "line-4", "local": true, "reachable": true}])
    );
    let config = node.get("/api/v1/config").await.json(200);
    assert_eq!(config["http"]["token"], "<redacted>");
    node.stop().await;

    // A node that gives the API no configuration: 404.
    let bare = Node::start().await;
    bare.get("/api/v1/config").await.json(404);
    assert_eq!(bare.get("/api/v1/node").await.json(200)["node_id"], "m2m");
    bare.stop().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_move_with_traffic() {
    let node = Node::start().await;
    let reply = node.get("/metrics").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.content_type, "text/plain; version=0.0.4; charset=utf-8");
    let before = node.metrics().await;
    for name in [
        "m2m_connections",
        "m2m_connections_total",
        "m2m_connections_rejected_total",
        "m2m_messages_received_total{qos=\"1\"}",
        "m2m_messages_sent_total{qos=\"0\"}",
        "m2m_messages_dropped_total",
        "m2m_bytes_received_total",
        "m2m_auth_failures_total",
        "m2m_access_denied_total",
        "m2m_sessions",
        "m2m_subscriptions",
        "m2m_retained_messages",
        "m2m_store_commit_seconds_bucket{le=\"0.0001\"}",
        "m2m_store_commit_seconds_bucket{le=\"+Inf\"}",
        "m2m_store_commit_seconds_sum",
        "m2m_store_commit_seconds_count",
    ] {
        assert!(before.contains_key(name), "no {name} in {before:?}");
    }

    // A persistent session's QoS 1 traffic: received, sent back to it, and committed to the store.
    let mut c = Client::connect(node.mqtt, "counter", 60).await;
    c.subscribe("count/#", QoS::AtLeastOnce).await;
    for i in 0..5 {
        c.client.publish("count/x", QoS::AtLeastOnce, false, format!("{i}")).await.unwrap();
    }
    for _ in 0..5 {
        c.next_publish().await;
    }
    let get = |m: &BTreeMap<String, f64>, name: &str| m.get(name).copied().unwrap_or(0.0);
    let after = until("the counters to move", || async {
        let m = node.metrics().await;
        (get(&m, "m2m_messages_received_total{qos=\"1\"}")
            >= get(&before, "m2m_messages_received_total{qos=\"1\"}") + 5.0
            && get(&m, "m2m_messages_sent_total{qos=\"1\"}")
                >= get(&before, "m2m_messages_sent_total{qos=\"1\"}") + 5.0
            && get(&m, "m2m_store_commit_seconds_count") > get(&before, "m2m_store_commit_seconds_count"))
        .then_some(m)
    })
    .await;
    assert_eq!(get(&after, "m2m_connections"), 1.0);
    assert!(get(&after, "m2m_connections_total") >= 1.0);
    assert!(get(&after, "m2m_bytes_received_total") > get(&before, "m2m_bytes_received_total"));
    assert!(get(&after, "m2m_bytes_sent_total") > get(&before, "m2m_bytes_sent_total"));
    assert_eq!(get(&after, "m2m_subscriptions"), 1.0);
    // The histogram's buckets are cumulative and end at the count.
    let buckets: Vec<f64> = after
        .iter()
        .filter(|(k, _)| k.starts_with("m2m_store_commit_seconds_bucket"))
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(buckets.len(), 14);
    let count = get(&after, "m2m_store_commit_seconds_count");
    assert_eq!(get(&after, "m2m_store_commit_seconds_bucket{le=\"+Inf\"}"), count);
    assert!(buckets.iter().all(|b| *b <= count), "{buckets:?}");
    node.stop().await;
}

#[tokio::test]
async fn an_offline_client_shows_the_messages_its_session_keeps_for_it() {
    let node = Node::start().await;
    let mut valve = Client::connect(node.mqtt, "valve-3", 600).await;
    valve.subscribe("cmd/valve-3/#", QoS::AtLeastOnce).await;
    valve.client.disconnect().await.unwrap();
    until("valve-3 offline", || async { node.client("valve-3").await.filter(|c| c["online"] == false) })
        .await;

    for i in 0..3 {
        let body = json!({"topic": "cmd/valve-3/open", "payload": format!("{i}"), "qos": 1});
        node.post("/api/v1/publish", body).await.json(200);
    }
    let view = until("three queued messages", || async {
        node.client("valve-3").await.filter(|c| c["queued"] == 3)
    })
    .await;
    assert_eq!((view["online"].as_bool(), view["inflight"].as_u64()), (Some(false), Some(0)));
    let listed = node.get("/api/v1/clients?state=offline").await.json(200);
    assert_eq!(listed[0]["queued"], 3, "{listed}");

    // Back online, it gets them.
    let mut valve = Client::connect(node.mqtt, "valve-3", 600).await;
    for _ in 0..3 {
        valve.next_publish().await;
    }
    node.stop().await;
}

#[tokio::test]
async fn each_rule_has_its_own_metrics() {
    let node = Node::start_with(true, |_| {}).await;
    let rule = json!({"id": "hot", "sql": "SELECT payload.t AS t FROM \"oven/+/t\" WHERE payload.t > 100"});
    node.post("/api/v1/rules", rule).await.json(201);
    for t in [50, 150, 200] {
        let body = json!({"topic": "oven/1/t", "payload": {"t": t}});
        node.post("/api/v1/publish", body).await.json(200);
    }
    let m = until("the rule to see three messages", || async {
        let m = node.metrics().await;
        (m.get("m2m_rule_matched_total{rule=\"hot\"}") == Some(&3.0)).then_some(m)
    })
    .await;
    assert_eq!(m.get("m2m_rule_passed_total{rule=\"hot\"}"), Some(&2.0));
    assert_eq!(m.get("m2m_rule_failed_total{rule=\"hot\"}"), Some(&0.0));
    assert_eq!(m.get("m2m_rules"), Some(&1.0));
    assert!(m.contains_key("m2m_rule_eval_mean_seconds{rule=\"hot\"}"), "{m:?}");
    assert_eq!(node.get("/api/v1/node").await.json(200)["stats"]["rules"], 1);
    node.stop().await;
}
