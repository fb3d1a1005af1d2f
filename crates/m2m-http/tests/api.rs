//! The HTTP API over real HTTP on 127.0.0.1, against a real node with a store; what it changes is
//! checked with real MQTT clients.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use m2m_broker::{Broker, Config};
use m2m_codec::ReasonCode;
use m2m_http::{HttpConfig, HttpServer, NodeParts, BODY_LIMIT};
use m2m_test::{raw_connect, v5_connect, within, TempDir};
use serde_json::{json, Value};
use tokio::net::TcpStream;
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

impl Node {
    async fn start() -> Self {
        Self::start_with_token(None).await
    }

    async fn start_with_token(token: Option<&str>) -> Self {
        let dir = TempDir::new("http-api");
        let mut config = Config::for_tests();
        config.store = Some(m2m_store::StoreConfig::new(dir.path().join("store")));
        let broker = Broker::bind(&config).await.expect("bind the broker");
        let (mqtt, access) = (broker.local_addr(), broker.access());
        let http_config = HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: token.map(str::to_owned),
            ..HttpConfig::default()
        };
        let server = HttpServer::bind(&http_config, NodeParts::new(access)).await.expect("bind the HTTP API");
        let http = server.local_addr();
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
        send(self.http, "GET", path, &[], None).await
    }

    async fn delete(&self, path: &str) -> Reply {
        send(self.http, "DELETE", path, &[], None).await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.json("POST", path, body).await
    }

    async fn json(&self, method: &str, path: &str, body: Value) -> Reply {
        let body = Some(("application/json", body.to_string().into_bytes()));
        send(self.http, method, path, &[], body).await
    }

    /// Whether an MQTT v5 client logging in as `username` with `password` is accepted, or its
    /// CONNACK reason code.
    async fn login(&self, username: &str, password: &str) -> ReasonCode {
        let mut connect = v5_connect(username);
        connect.username = Some(Arc::from(username));
        connect.password = Some(Bytes::from(password.to_owned()));
        raw_connect(self.mqtt, connect).await.1.reason_code
    }

    /// The CONNACK reason code of an anonymous MQTT v5 client with `client_id`.
    async fn connect_as(&self, client_id: &str) -> ReasonCode {
        raw_connect(self.mqtt, v5_connect(client_id)).await.1.reason_code
    }
}

/// An HTTP response: its status, content type and body (parsed as JSON when there is one).
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

/// Sends one request on a new connection.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, Vec<u8>)>,
) -> Reply {
    within(async {
        let stream = TcpStream::connect(addr).await.expect("connect to the HTTP API");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("HTTP handshake");
        tokio::spawn(connection);
        let mut request = Request::builder().method(method).uri(path).header("host", addr.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = match body {
            Some((content_type, bytes)) => {
                request = request.header("content-type", content_type);
                Bytes::from(bytes)
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

#[tokio::test]
async fn devices_are_created_read_changed_and_removed() {
    let node = Node::start().await;
    let body = json!({"id": "press-1", "password": "pw", "groups": ["presses"], "attributes": {"line": "A"},
        "rules": ["allow publish devices/%c/#"]});
    let created = node.post("/api/v1/devices", body.clone()).await;
    let device = created.ok(201);
    assert_eq!(device["id"], "press-1");
    assert_eq!(device["has_password"], true);
    assert_eq!(device["enabled"], true);
    assert_eq!(device["groups"], json!(["presses"]));
    assert!(device.get("password_hash").is_none() && device.get("password").is_none(), "{device}");

    let again = node.post("/api/v1/devices", body).await;
    assert!(again.error(409).contains("press-1"), "{again:?}");

    let shown = node.get("/api/v1/devices/press-1").await;
    assert_eq!(shown.ok(200)["attributes"], json!({"line": "A"}));
    node.post("/api/v1/devices", json!({"id": "lamp-7", "disabled": true})).await.ok(201);
    let list = node.get("/api/v1/devices").await;
    let list = list.ok(200).as_array().expect("an array");
    assert_eq!(list.len(), 2);
    assert_eq!((&list[0]["id"], &list[0]["has_password"]), (&json!("lamp-7"), &json!(false)));
    assert_eq!(list[0]["enabled"], false);
    assert!(list.iter().all(|d| d.get("password_hash").is_none()), "{list:?}");

    let change = json!({"attributes": {"line": null, "room": "2"}, "groups": ["a", "b"], "enabled": false});
    let changed = node.json("PATCH", "/api/v1/devices/press-1", change).await;
    let changed = changed.ok(200);
    assert_eq!(changed["attributes"], json!({"room": "2"}));
    assert_eq!(changed["groups"], json!(["a", "b"]));
    assert_eq!((&changed["enabled"], &changed["has_password"]), (&json!(false), &json!(true)));
    let removed_password = node.json("PATCH", "/api/v1/devices/press-1", json!({"password": null})).await;
    assert_eq!(removed_password.ok(200)["has_password"], false);

    assert_eq!(node.delete("/api/v1/devices/press-1").await.ok(204), &Value::Null);
    assert!(node.get("/api/v1/devices/press-1").await.error(404).contains("press-1"));
    node.delete("/api/v1/devices/press-1").await.error(404);
    node.json("PATCH", "/api/v1/devices/press-1", json!({"enabled": true})).await.error(404);
    node.stop().await;
}

#[tokio::test]
async fn invalid_devices_are_refused_with_400_naming_the_problem() {
    let node = Node::start().await;
    let bad_id = node.post("/api/v1/devices", json!({"id": "a/b"})).await;
    assert!(bad_id.error(400).contains("\"a/b\""), "{bad_id:?}");
    let empty_id = node.post("/api/v1/devices", json!({"id": ""})).await;
    assert!(empty_id.error(400).contains("empty"), "{empty_id:?}");
    let bad_rule = node.post("/api/v1/devices", json!({"id": "d", "rules": ["allow fly x/#"]})).await;
    assert!(bad_rule.error(400).contains("allow fly x/#"), "{bad_rule:?}");
    let bad_group = node.post("/api/v1/devices", json!({"id": "d", "groups": ["a b"]})).await;
    assert!(bad_group.error(400).contains("group name"), "{bad_group:?}");
    let unknown_field = node.post("/api/v1/devices", json!({"id": "d", "enabled": false})).await;
    assert!(unknown_field.error(400).contains("enabled"), "{unknown_field:?}");
    assert_eq!(node.get("/api/v1/devices").await.ok(200), &json!([]), "nothing was added");

    node.post("/api/v1/devices", json!({"id": "d"})).await.ok(201);
    let bad_change = node.json("PATCH", "/api/v1/devices/d", json!({"rules": ["deny"]})).await;
    assert!(bad_change.error(400).contains("deny"), "{bad_change:?}");
    assert_eq!(node.get("/api/v1/devices/d").await.ok(200)["rules"], json!([]), "unchanged");
    node.stop().await;
}

#[tokio::test]
async fn a_changed_password_admits_the_device_and_the_old_one_no_longer_does() {
    let node = Node::start().await;
    node.post("/api/v1/devices", json!({"id": "dev-1", "password": "old"})).await.ok(201);
    assert_eq!(node.login("dev-1", "old").await, ReasonCode::SUCCESS);
    let mut connected = v5_connect("dev-1-live");
    connected.username = Some(Arc::from("dev-1"));
    connected.password = Some(Bytes::from_static(b"old"));
    let (mut live, ack) = raw_connect(node.mqtt, connected).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);

    node.json("PATCH", "/api/v1/devices/dev-1", json!({"password": "new"})).await.ok(200);
    // Logged in with the old password: disconnected, it must log in again.
    m2m_test::expect_disconnect(&mut live, ReasonCode::ADMINISTRATIVE_ACTION).await;
    assert_eq!(node.login("dev-1", "new").await, ReasonCode::SUCCESS);
    assert_eq!(node.login("dev-1", "old").await, ReasonCode::BAD_USER_NAME_OR_PASSWORD);

    node.json("PATCH", "/api/v1/devices/dev-1", json!({"enabled": false})).await.ok(200);
    assert_eq!(node.login("dev-1", "new").await, ReasonCode::NOT_AUTHORIZED);
    // Another device keeps the registry enabled, so that unknown usernames are refused.
    node.post("/api/v1/devices", json!({"id": "dev-2"})).await.ok(201);
    node.delete("/api/v1/devices/dev-1").await.ok(204);
    assert_eq!(node.login("dev-1", "new").await, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    node.stop().await;
}

#[tokio::test]
async fn devices_are_imported_from_json_and_csv() {
    let node = Node::start().await;
    let array = json!([{"id": "j1", "password": "p1", "groups": ["g"]}, {"id": "j2"}]).to_string();
    let imported =
        send(node.http, "POST", "/api/v1/devices/import", &[], Some(("application/json", array.into())))
            .await;
    assert_eq!(imported.ok(200), &json!({"imported": 2}));
    let csv = "id,password,groups,disabled\nc1,secret,g;h,\nc2,,,true\n";
    let imported =
        send(node.http, "POST", "/api/v1/devices/import", &[], Some(("text/csv; charset=utf-8", csv.into())))
            .await;
    assert_eq!(imported.ok(200), &json!({"imported": 2}));

    let c1 = node.get("/api/v1/devices/c1").await;
    assert_eq!((&c1.ok(200)["groups"], &c1.body["has_password"]), (&json!(["g", "h"]), &json!(true)));
    assert_eq!(node.get("/api/v1/devices/c2").await.ok(200)["enabled"], false);
    assert_eq!(node.login("c1", "secret").await, ReasonCode::SUCCESS);

    // All or nothing: one duplicate stops the whole import.
    let csv = "c3,,,\nj1,,,\n";
    let refused =
        send(node.http, "POST", "/api/v1/devices/import", &[], Some(("text/csv", csv.into()))).await;
    assert!(refused.error(409).contains("j1"), "{refused:?}");
    node.get("/api/v1/devices/c3").await.error(404);
    let malformed =
        send(node.http, "POST", "/api/v1/devices/import", &[], Some(("text/csv", "x,,,maybe".into()))).await;
    assert!(malformed.error(400).contains("line 1"), "{malformed:?}");
    let not_json =
        send(node.http, "POST", "/api/v1/devices/import", &[], Some(("application/json", "{".into()))).await;
    not_json.error(400);
    assert_eq!(node.get("/api/v1/devices").await.ok(200).as_array().map(Vec::len), Some(4));
    node.stop().await;
}

#[tokio::test]
async fn an_import_of_another_content_type_is_refused_with_415() {
    let node = Node::start().await;
    let text =
        send(node.http, "POST", "/api/v1/devices/import", &[], Some(("text/plain", "a,,,".into()))).await;
    assert!(text.error(415).contains("text/csv"), "{text:?}");
    let none = send(node.http, "POST", "/api/v1/devices/import", &[], None).await;
    none.error(415);
    let device_body =
        send(node.http, "POST", "/api/v1/devices", &[], Some(("text/plain", "{}".into()))).await;
    device_body.error(415);
    node.stop().await;
}

#[tokio::test]
async fn a_device_named_import_is_reachable() {
    let node = Node::start().await;
    node.post("/api/v1/devices", json!({"id": "import"})).await.ok(201);
    assert_eq!(node.get("/api/v1/devices/import").await.ok(200)["id"], "import");
    let changed = node.json("PATCH", "/api/v1/devices/import", json!({"rules": ["allow both x/#"]})).await;
    assert_eq!(changed.ok(200)["rules"], json!(["allow both x/#"]));
    node.delete("/api/v1/devices/import").await.ok(204);
    node.get("/api/v1/devices/import").await.error(404);
    node.stop().await;
}

#[tokio::test]
async fn groups_are_put_listed_and_removed() {
    let node = Node::start().await;
    let rules = json!({"rules": ["allow publish lines/%c/#", "deny subscribe #"]});
    let created = node.json("PUT", "/api/v1/groups/presses", rules.clone()).await;
    assert_eq!(created.ok(201), &json!({"name": "presses", "rules": rules["rules"]}));
    let replaced = node.json("PUT", "/api/v1/groups/presses", json!({"rules": []})).await;
    assert_eq!(replaced.ok(200)["rules"], json!([]));
    node.json("PUT", "/api/v1/groups/lamps", rules).await.ok(201);
    let list = node.get("/api/v1/groups").await;
    let names: Vec<&str> =
        list.ok(200).as_array().expect("an array").iter().filter_map(|g| g["name"].as_str()).collect();
    assert_eq!(names, ["lamps", "presses"]);
    assert_eq!(node.get("/api/v1/groups/lamps").await.ok(200)["name"], "lamps");

    let bad_rule = node.json("PUT", "/api/v1/groups/lamps", json!({"rules": ["allow publish a/#/b"]})).await;
    assert!(bad_rule.error(400).contains("a/#/b"), "{bad_rule:?}");
    let bad_name = node.json("PUT", "/api/v1/groups/a+b", json!({"rules": []})).await;
    assert!(bad_name.error(400).contains("a+b"), "{bad_name:?}");

    node.delete("/api/v1/groups/lamps").await.ok(204);
    node.delete("/api/v1/groups/lamps").await.error(404);
    node.get("/api/v1/groups/lamps").await.error(404);
    assert_eq!(node.get("/api/v1/groups").await.ok(200).as_array().map(Vec::len), Some(1));
    node.stop().await;
}

#[tokio::test]
async fn a_banned_client_is_refused_until_it_is_released() {
    let node = Node::start().await;
    assert_eq!(node.connect_as("rogue-7").await, ReasonCode::SUCCESS);
    let ban = json!({"target": {"kind": "client_id", "value": "rogue-7"}, "mode": "ban",
        "reason": "floods the line", "actor": "alice"});
    let added = node.post("/api/v1/quarantine", ban).await;
    let entry = added.ok(201).clone();
    assert_eq!(entry["target"], json!({"kind": "client_id", "value": "rogue-7"}));
    assert_eq!(
        (&entry["mode"], &entry["actor"], &entry["expired"]),
        (&json!("ban"), &json!("alice via loopback"), &json!(false))
    );
    let id = entry["id"].as_u64().expect("an id");

    assert_eq!(node.connect_as("rogue-7").await, ReasonCode::BANNED);
    assert_eq!(node.connect_as("good-1").await, ReasonCode::SUCCESS);
    let refusals = node.get("/api/v1/clients/rogue-7/refusals").await;
    let refusals = refusals.ok(200);
    assert_eq!(
        (&refusals[0]["kind"], &refusals[0]["reason"]),
        (&json!("CONNECT"), &json!(format!("quarantine entry {id}")))
    );
    let list = node.get("/api/v1/quarantine").await;
    assert_eq!(list.ok(200), &json!([entry]));

    let released = node.delete(&format!("/api/v1/quarantine/{id}")).await;
    assert_eq!(released.ok(200)["id"], id);
    assert_eq!(node.connect_as("rogue-7").await, ReasonCode::SUCCESS);
    assert_eq!(node.get("/api/v1/quarantine").await.ok(200), &json!([]));
    node.delete(&format!("/api/v1/quarantine/{id}")).await.error(404);
    node.delete("/api/v1/quarantine/x").await.error(400);

    // Both changes are in the audit log, newest first, under the caller (a loopback client here)
    // and, for the ban, the actor the body named.
    let audit = node.get("/api/v1/audit?limit=10").await;
    let events = audit.ok(200).as_array().expect("an array").clone();
    // The two refused deletes are there too: every call that may change something is audited.
    let seen: Vec<_> = events.iter().map(|e| (e["action"].clone(), e["actor"].clone())).collect();
    assert_eq!(
        seen,
        [
            (json!("api.request"), json!("loopback")),
            (json!("api.request"), json!("loopback")),
            (json!("quarantine.release"), json!("loopback")),
            (json!("quarantine.add"), json!("alice via loopback"))
        ]
    );
    assert_eq!(
        (&events[0]["subject"], &events[0]["detail"]),
        (&json!("DELETE /api/v1/quarantine/x"), &json!("status 400"))
    );
    assert_eq!(events[1]["detail"], json!("status 404"));
    node.stop().await;
}

#[tokio::test]
async fn quarantine_entries_show_their_expiry_and_the_caller_as_actor() {
    let node = Node::start().await;
    let isolate = json!({"target": {"kind": "pattern", "value": "cam-[0-9]+"}, "mode": "isolate",
        "reason": "firmware", "expires_in_secs": 3600});
    let entry = node.post("/api/v1/quarantine", isolate).await;
    let entry = entry.ok(201);
    assert_eq!((&entry["actor"], &entry["expired"]), (&json!("loopback"), &json!(false)));
    let (created, expires) = (entry["created_ms"].as_u64(), entry["expires_ms"].as_u64());
    // The expiry is reckoned from the request; the entry's creation a moment later.
    let lasts = expires.zip(created).and_then(|(e, c)| e.checked_sub(c)).expect("an expiry after creation");
    assert!((3_590_000..=3_600_000).contains(&lasts), "{entry}");
    let zero = json!({"target": {"kind": "username", "value": "u"}, "mode": "ban", "reason": "r", "expires_in_secs": 0});
    assert!(node.post("/api/v1/quarantine", zero).await.error(400).contains("expires_in_secs"));
    node.stop().await;
}

#[tokio::test]
async fn a_bad_quarantine_target_is_refused_with_400_naming_it() {
    let node = Node::start().await;
    let entry = |kind: &str, value: &str| json!({"target": {"kind": kind, "value": value}, "mode": "ban", "reason": "test"});
    let address = node.post("/api/v1/quarantine", entry("address", "10.0.0.0/33")).await;
    assert!(address.error(400).contains("10.0.0.0/33"), "{address:?}");
    let pattern = node.post("/api/v1/quarantine", entry("pattern", "(")).await;
    assert!(pattern.error(400).contains("not a regular expression"), "{pattern:?}");
    let empty = node.post("/api/v1/quarantine", entry("client_id", "")).await;
    assert!(empty.error(400).contains("empty client id"), "{empty:?}");
    let kind = node.post("/api/v1/quarantine", entry("mac", "00:11")).await;
    assert!(kind.error(400).contains("mac"), "{kind:?}");
    let mode = json!({"target": {"kind": "username", "value": "u"}, "mode": "exile", "reason": "r"});
    assert!(node.post("/api/v1/quarantine", mode).await.error(400).contains("exile"));
    assert_eq!(node.get("/api/v1/quarantine").await.ok(200), &json!([]));
    node.stop().await;
}

#[tokio::test]
async fn with_a_token_only_its_bearers_are_served() {
    let node = Node::start_with_token(Some("s3cret")).await;
    let none = send(node.http, "GET", "/api/v1/devices", &[], None).await;
    assert!(none.error(401).contains("Bearer"), "{none:?}");
    let wrong = send(node.http, "GET", "/api/v1/devices", &[("authorization", "Bearer s3cre")], None).await;
    wrong.error(401);
    let right = send(node.http, "GET", "/api/v1/devices", &[("authorization", "Bearer s3cret")], None).await;
    assert_eq!(right.ok(200), &json!([]));
    // Refused before the body is looked at: no device is added.
    let body = Some(("application/json", br#"{"id": "d"}"#.to_vec()));
    send(node.http, "POST", "/api/v1/devices", &[("authorization", "Bearer nope")], body).await.error(401);
    let unknown = send(node.http, "GET", "/nowhere", &[], None).await;
    unknown.error(401);
    let list = send(node.http, "GET", "/api/v1/devices", &[("authorization", "Bearer s3cret")], None).await;
    assert_eq!(list.ok(200), &json!([]));
    node.stop().await;
}

#[tokio::test]
async fn an_empty_token_is_refused_at_bind() {
    let dir = TempDir::new("http-empty-token");
    let mut config = Config::for_tests();
    config.store = Some(m2m_store::StoreConfig::new(dir.path().join("store")));
    let broker = Broker::bind(&config).await.expect("bind the broker");
    let http_config = HttpConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        token: Some(String::new()),
        ..HttpConfig::default()
    };
    let refused = HttpServer::bind(&http_config, NodeParts::new(broker.access())).await;
    assert!(matches!(refused, Err(m2m_http::HttpError::EmptyToken)), "{refused:?}");
    assert!(!format!("{:?}", HttpConfig { token: Some("s3cret".into()), ..HttpConfig::default() })
        .contains("s3cret"));
}

#[tokio::test]
async fn without_a_token_loopback_clients_are_served() {
    let node = Node::start().await;
    assert_eq!(node.get("/api/v1/quarantine").await.ok(200), &json!([]));
    node.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_json_errors() {
    let node = Node::start().await;
    let broken =
        send(node.http, "POST", "/api/v1/devices", &[], Some(("application/json", b"{\"id\": ".to_vec())))
            .await;
    broken.error(400);
    let not_utf8 =
        send(node.http, "POST", "/api/v1/devices", &[], Some(("application/json", vec![0xff, 0xfe]))).await;
    not_utf8.error(400);
    let wrong_shape = node.post("/api/v1/devices", json!("id")).await;
    wrong_shape.error(400);
    let missing_id = node.post("/api/v1/devices", json!({"password": "p"})).await;
    assert!(missing_id.error(400).contains("id"), "{missing_id:?}");
    let group = node.json("PUT", "/api/v1/groups/g", json!({"rules": "allow both #"})).await;
    group.error(400);

    assert!(node.get("/nowhere").await.error(404).contains("no such route"));
    node.get("/api/v1/devices/a/b").await.error(404);
    node.delete("/api/v1/devices").await.error(405);

    let huge = vec![b' '; BODY_LIMIT + 1];
    let too_large =
        send(node.http, "POST", "/api/v1/devices/import", &[], Some(("application/json", huge))).await;
    too_large.error(413);
    node.stop().await;
}
