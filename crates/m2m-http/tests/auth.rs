//! Operators over real HTTP on 127.0.0.1: console logins with cookies and CSRF tokens, API tokens
//! with roles, loopback trust, and the audit entry of every change.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use m2m_access::{Operators, Role};
use m2m_broker::{Broker, Config};
use m2m_http::{HttpConfig, HttpServer, NodeParts};
use m2m_test::{http, within, HttpReply, TempDir};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const ADMIN_PW: &str = "admin password 1";
const OPERATOR_PW: &str = "operator password";
const VIEWER_PW: &str = "viewer password";

struct Node {
    http: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    _dir: TempDir,
}

impl Node {
    /// A node with users `root` (admin), `olga` (operator) and `vic` (viewer).
    async fn start(config: HttpConfig) -> Self {
        let dir = TempDir::new("http-auth");
        let mut broker_config = Config::for_tests();
        broker_config.store = Some(m2m_store::StoreConfig::new(dir.path().join("store")));
        let broker = Broker::bind(&broker_config).await.expect("bind the broker");
        let operators = Operators::open(broker.store()).expect("operators");
        operators.add_user("root", ADMIN_PW, Role::Admin, 1).unwrap();
        operators.add_user("olga", OPERATOR_PW, Role::Operator, 1).unwrap();
        operators.add_user("vic", VIEWER_PW, Role::Viewer, 1).unwrap();
        let mut parts = NodeParts::new(broker.access());
        parts.operators = Arc::new(operators);
        let config = HttpConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..config };
        let server = HttpServer::bind(&config, parts).await.expect("bind the HTTP API");
        let http = server.local_addr();
        let shutdown = CancellationToken::new();
        let b = tokio::spawn(broker.run(shutdown.clone()));
        let s = tokio::spawn(server.run(shutdown.clone()));
        let tasks = vec![
            tokio::spawn(async move { b.await.unwrap().unwrap() }),
            tokio::spawn(async move { s.await.unwrap().unwrap() }),
        ];
        Self { http, shutdown, tasks, _dir: dir }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            within(t).await.expect("a node task failed");
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> HttpReply {
        let text = body.map(|b| b.to_string());
        http(self.http, method, path, headers, text.as_deref().map(|t| ("application/json", t.as_bytes())))
            .await
    }

    /// Logs in as `user`: the cookie header and the CSRF token.
    async fn login(&self, user: &str, password: &str) -> Session {
        let reply = self
            .call(
                "POST",
                "/api/v1/login",
                &[("origin", "http://console")],
                Some(json!({"user": user, "password": password})),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let set = reply.header("set-cookie").expect("a session cookie").to_owned();
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(set.contains(attribute), "{set}");
        }
        let cookie = set.split(';').next().unwrap().to_owned();
        let body = reply.json();
        assert_eq!(body["user"], user);
        Session { cookie, csrf: body["csrf"].as_str().expect("a CSRF token").to_owned() }
    }

    async fn audit(&self) -> Vec<Value> {
        let reply =
            self.call("GET", "/api/v1/audit?limit=50", &[("authorization", "Bearer s3cret")], None).await;
        reply.json().as_array().cloned().unwrap_or_default()
    }
}

struct Session {
    cookie: String,
    csrf: String,
}

impl Session {
    /// Headers of a browser request in this session (with the CSRF token, or not).
    fn headers(&self, with_csrf: bool) -> Vec<(&str, &str)> {
        let mut h = vec![
            ("cookie", self.cookie.as_str()),
            ("origin", "http://console"),
            ("sec-fetch-site", "same-origin"),
        ];
        if with_csrf {
            h.push(("x-csrf-token", self.csrf.as_str()));
        }
        h
    }
}

fn with_token() -> HttpConfig {
    HttpConfig { token: Some("s3cret".into()), ..HttpConfig::default() }
}

#[tokio::test]
async fn a_console_session_reads_freely_and_changes_only_with_its_csrf_token() {
    let node = Node::start(with_token()).await;
    let olga = node.login("olga", OPERATOR_PW).await;
    let me = node.call("GET", "/api/v1/me", &olga.headers(false), None).await;
    assert_eq!(me.json(), json!({"user": "olga", "role": "operator", "via": "session", "csrf": olga.csrf}));
    assert_eq!(node.call("GET", "/api/v1/devices", &olga.headers(false), None).await.status, 200);

    let device = json!({"id": "press-1", "password": "device secret"});
    let forged = node.call("POST", "/api/v1/devices", &olga.headers(false), Some(device.clone())).await;
    assert_eq!(forged.status, 403, "{}", forged.text());
    assert_eq!(forged.json()["error"], "forbidden");
    assert!(forged.json()["message"].as_str().unwrap().contains("CSRF"));
    let wrong = [("cookie", olga.cookie.as_str()), ("x-csrf-token", "guess")];
    assert_eq!(node.call("POST", "/api/v1/devices", &wrong, Some(device.clone())).await.status, 403);
    let made = node.call("POST", "/api/v1/devices", &olga.headers(true), Some(device)).await;
    assert_eq!(made.status, 201, "{}", made.text());

    // The change is audited under the user's name.
    let audit = node.audit().await;
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "device.add" && e["actor"] == "olga" && e["subject"] == "press-1"),
        "{audit:?}"
    );

    // After logging out the cookie admits nothing.
    assert_eq!(node.call("POST", "/api/v1/logout", &olga.headers(true), None).await.status, 204);
    let after = node.call("GET", "/api/v1/devices", &olga.headers(false), None).await;
    assert_eq!((after.status, after.json()["error"].clone()), (401, json!("unauthorized")));
    node.stop().await;
}

#[tokio::test]
async fn each_role_gets_what_it_may_and_a_refusal_is_audited() {
    let node = Node::start(with_token()).await;
    let vic = node.login("vic", VIEWER_PW).await;
    assert_eq!(node.call("GET", "/api/v1/quarantine", &vic.headers(false), None).await.status, 200);
    let ban = json!({"target": {"kind": "client_id", "value": "x"}, "mode": "ban", "reason": "r"});
    let refused = node.call("POST", "/api/v1/quarantine", &vic.headers(true), Some(ban.clone())).await;
    assert_eq!(refused.status, 403);
    assert!(refused.json()["message"].as_str().unwrap().contains("operator"), "{}", refused.text());
    // A viewer may still try a rule on a sample: it changes nothing.
    let sample = json!({"sql": "SELECT payload.t AS t FROM \"a/#\"", "topic": "a/b", "payload": {"t": 1}});
    let tried = node.call("POST", "/api/v1/rules/test", &vic.headers(true), Some(sample)).await;
    assert_ne!(tried.status, 403, "{}", tried.text());

    let olga = node.login("olga", OPERATOR_PW).await;
    assert_eq!(node.call("POST", "/api/v1/quarantine", &olga.headers(true), Some(ban)).await.status, 201);
    assert_eq!(node.call("GET", "/api/v1/users", &olga.headers(false), None).await.status, 403);

    let root = node.login("root", ADMIN_PW).await;
    let users = node.call("GET", "/api/v1/users", &root.headers(false), None).await;
    let names: Vec<Value> = users.json().as_array().unwrap().iter().map(|u| u["name"].clone()).collect();
    assert_eq!(names, [json!("olga"), json!("root"), json!("vic")]);

    let audit = node.audit().await;
    let denied = audit
        .iter()
        .find(|e| e["action"] == "api.denied" && e["actor"] == "vic")
        .expect("the refusal is audited");
    assert_eq!(denied["subject"], "POST /api/v1/quarantine");
    node.stop().await;
}

#[tokio::test]
async fn api_tokens_carry_their_role_until_revoked() {
    let node = Node::start(with_token()).await;
    let admin = [("authorization", "Bearer s3cret")];
    let made =
        node.call("POST", "/api/v1/tokens", &admin, Some(json!({"name": "grafana", "role": "viewer"}))).await;
    assert_eq!(made.status, 201, "{}", made.text());
    let made = made.json();
    let secret = made["token"].as_str().expect("the secret, once").to_owned();
    let bearer = format!("Bearer {secret}");
    let grafana = [("authorization", bearer.as_str())];
    let me = node.call("GET", "/api/v1/me", &grafana, None).await.json();
    assert_eq!(me, json!({"user": "token:grafana", "role": "viewer", "via": "token"}));
    assert_eq!(node.call("DELETE", "/api/v1/devices/x", &grafana, None).await.status, 403);

    // Listed without its secret.
    let listed = node.call("GET", "/api/v1/tokens", &admin, None).await.json();
    assert_eq!(listed[0]["name"], "grafana");
    assert!(!listed.to_string().contains(&secret));

    let id = made["id"].as_str().unwrap();
    assert_eq!(node.call("DELETE", &format!("/api/v1/tokens/{id}"), &admin, None).await.status, 204);
    assert_eq!(node.call("GET", "/api/v1/me", &grafana, None).await.status, 401);
    assert_eq!(node.call("DELETE", &format!("/api/v1/tokens/{id}"), &admin, None).await.status, 404);
    let bad = node.call("POST", "/api/v1/tokens", &admin, Some(json!({"name": "x", "role": "root"}))).await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    node.stop().await;
}

#[tokio::test]
async fn wrong_passwords_are_refused_and_then_slowed_down() {
    let node = Node::start(with_token()).await;
    let wrong = |user: &str| json!({"user": user, "password": "not the password"});
    let first = node.call("POST", "/api/v1/login", &[], Some(wrong("root"))).await;
    assert_eq!((first.status, first.json()["error"].clone()), (401, json!("unauthorized")));
    // An unknown user gets the same answer as a wrong password.
    let unknown = node.call("POST", "/api/v1/login", &[], Some(wrong("nobody"))).await;
    assert_eq!(unknown.json()["message"], first.json()["message"]);
    for _ in 2..10 {
        assert_eq!(node.call("POST", "/api/v1/login", &[], Some(wrong("root"))).await.status, 401);
    }
    let limited =
        node.call("POST", "/api/v1/login", &[], Some(json!({"user": "root", "password": ADMIN_PW}))).await;
    assert_eq!(limited.status, 429, "{}", limited.text());
    let audit = node.audit().await;
    assert_eq!(audit.iter().filter(|e| e["action"] == "login.failed").count(), 10);
    node.stop().await;
}

#[tokio::test]
async fn loopback_is_trusted_only_for_non_browsers_and_only_without_a_token() {
    let trusting = Node::start(HttpConfig::default()).await;
    let me = trusting.call("GET", "/api/v1/me", &[], None).await;
    assert_eq!(me.json(), json!({"user": "loopback", "role": "admin", "via": "loopback"}));
    // A page in a browser on this machine is not trusted: it must log in.
    for header in [("origin", "http://evil.example"), ("sec-fetch-site", "cross-site")] {
        let reply = trusting.call("POST", "/api/v1/devices", &[header], Some(json!({"id": "d"}))).await;
        assert_eq!(reply.status, 401, "{header:?}: {}", reply.text());
    }
    trusting.stop().await;

    let strict = Node::start(HttpConfig { trust_loopback: false, ..HttpConfig::default() }).await;
    assert_eq!(strict.call("GET", "/api/v1/me", &[], None).await.status, 401);
    strict.stop().await;

    let with_token = Node::start(with_token()).await;
    assert_eq!(with_token.call("GET", "/api/v1/me", &[], None).await.status, 401);
    with_token.stop().await;
}

#[tokio::test]
async fn users_are_managed_by_admins_and_the_last_admin_stays() {
    let node = Node::start(with_token()).await;
    let root = node.login("root", ADMIN_PW).await;
    let h = root.headers(true);
    let made = node
        .call(
            "POST",
            "/api/v1/users",
            &h,
            Some(json!({"name": "ana", "password": "ana password", "role": "operator"})),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text());
    assert_eq!(made.json()["role"], "operator");
    assert_eq!(
        node.call(
            "POST",
            "/api/v1/users",
            &h,
            Some(json!({"name": "ana", "password": "ana password", "role": "viewer"}))
        )
        .await
        .status,
        409
    );
    assert_eq!(
        node.call(
            "POST",
            "/api/v1/users",
            &h,
            Some(json!({"name": "bo", "password": "short", "role": "viewer"}))
        )
        .await
        .status,
        400
    );

    let ana = node.login("ana", "ana password").await;
    let demoted = node.call("PATCH", "/api/v1/users/ana", &h, Some(json!({"role": "viewer"}))).await;
    assert_eq!(demoted.json()["role"], "viewer");
    // A change of role ends the user's sessions.
    assert_eq!(node.call("GET", "/api/v1/me", &ana.headers(false), None).await.status, 401);

    let last = node.call("PATCH", "/api/v1/users/root", &h, Some(json!({"role": "viewer"}))).await;
    assert_eq!(last.status, 409, "{}", last.text());
    assert_eq!(node.call("DELETE", "/api/v1/users/root", &h, None).await.status, 409);
    assert_eq!(node.call("DELETE", "/api/v1/users/ana", &h, None).await.status, 204);
    assert_eq!(node.call("DELETE", "/api/v1/users/ana", &h, None).await.status, 404);

    // Own password: the current one is needed; other sessions end, this one goes on.
    let other = node.login("root", ADMIN_PW).await;
    let change = json!({"current": "wrong one!", "new": "a new admin password"});
    assert_eq!(node.call("POST", "/api/v1/me/password", &h, Some(change)).await.status, 400);
    let change = json!({"current": ADMIN_PW, "new": "a new admin password"});
    assert_eq!(node.call("POST", "/api/v1/me/password", &h, Some(change)).await.status, 204);
    assert_eq!(node.call("GET", "/api/v1/me", &root.headers(false), None).await.status, 200);
    assert_eq!(node.call("GET", "/api/v1/me", &other.headers(false), None).await.status, 401);
    node.login("root", "a new admin password").await;

    let actions: Vec<String> =
        node.audit().await.iter().map(|e| e["action"].as_str().unwrap_or("").to_owned()).collect();
    for action in ["user.add", "user.set", "user.remove", "user.password", "login"] {
        assert!(actions.iter().any(|a| a == action), "{action} missing from {actions:?}");
    }
    node.stop().await;
}

#[tokio::test]
async fn the_openapi_document_is_served_at_both_addresses() {
    let node = Node::start(HttpConfig::default()).await;
    let doc = node.call("GET", "/api/openapi.json", &[], None).await;
    assert_eq!(doc.status, 200);
    assert!(doc.json()["paths"]["/api/v1/login"]["post"].is_object());
    assert_eq!(node.call("GET", "/api/v1/openapi.json", &[], None).await.json(), doc.json());
    node.stop().await;
}
