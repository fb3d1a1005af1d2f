//! Every route of the OpenAPI document, called as each role and as nobody, over real HTTP: who is
//! let in, who is refused (401, 403), and that every call that may change something leaves an
//! audit entry under the caller's name.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use m2m_access::{Operators, Role};
use m2m_broker::{Broker, Config};
use m2m_http::{HttpConfig, HttpServer, NodeParts};
use m2m_test::{http, within, TempDir};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The role a route needs, as the README states the policy.
fn needed(method: &str, path: &str) -> Role {
    let admin = ["/api/v1/users", "/api/v1/tokens", "/api/v1/config"];
    if admin.iter().any(|p| path == *p || path.starts_with(&format!("{p}/"))) {
        return Role::Admin;
    }
    let login_only = ["/api/v1/logout", "/api/v1/me/password", "/api/v1/rules/test"];
    if method == "get" || login_only.contains(&path) {
        return Role::Viewer;
    }
    Role::Operator
}

/// Every `(method, path)` of the document, path parameters filled in.
fn routes(doc: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            let concrete: String = path
                .split('/')
                .map(|level| if level.starts_with('{') { "x1" } else { level })
                .collect::<Vec<_>>()
                .join("/");
            out.push((method.clone(), path.clone(), concrete));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_admits_exactly_the_roles_it_should_and_audits_every_change() {
    let dir = TempDir::new("http-roles");
    let mut config = Config::for_tests();
    config.store = Some(m2m_store::StoreConfig::new(dir.path().join("store")));
    let broker = Broker::bind(&config).await.expect("bind the broker");
    let operators = Operators::open(broker.store()).unwrap();
    let mut tokens = Vec::new();
    for role in [Role::Viewer, Role::Operator, Role::Admin] {
        let (_, secret) = operators.create_token(role.as_str(), role, 0).unwrap();
        tokens.push((role, format!("Bearer {secret}")));
    }
    let mut parts = NodeParts::with_broker(&broker);
    parts.operators = Arc::new(operators);
    let http_config = HttpConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        trust_loopback: false,
        ..HttpConfig::default()
    };
    let server = HttpServer::bind(&http_config, parts).await.unwrap();
    let addr = server.local_addr();
    let shutdown = CancellationToken::new();
    let b = tokio::spawn(broker.run(shutdown.clone()));
    let s = tokio::spawn(server.run(shutdown.clone()));

    let admin = tokens[2].1.clone();
    let doc = http(addr, "GET", "/api/openapi.json", &[("authorization", &admin)], None).await.json();
    let routes = routes(&doc);
    assert!(routes.len() > 50, "{} routes", routes.len());
    let audit_len = || async {
        let all = http(addr, "GET", "/api/v1/audit?limit=10000", &[("authorization", &admin)], None).await;
        all.json().as_array().unwrap().len()
    };

    for (method, template, path) in &routes {
        let verb = method.to_uppercase();
        // An event stream never ends: it is admitted by the same gate as every other route, and
        // tested on its own (tests/live.rs).
        if path == "/api/v1/stream" {
            continue;
        }
        // A body of the right shape where the route's handler checks the caller after reading it.
        let json: &[u8] =
            if path == "/api/v1/me/password" { br#"{"current": "x", "new": "long enough"}"# } else { b"{}" };
        let body = (method != "get").then_some(("application/json", json));
        if path != "/api/v1/login" {
            let nobody = http(addr, &verb, path, &[], body).await;
            assert_eq!(nobody.status, 401, "{verb} {template} without credentials: {}", nobody.text());
        }
        for (role, bearer) in &tokens {
            let before = if method == "get" { 0 } else { audit_len().await };
            let reply = http(addr, &verb, path, &[("authorization", bearer)], body).await;
            let want = needed(method, template);
            if path == "/api/v1/login" {
                // Public: a body without a user is simply a bad login.
                assert_eq!(reply.status, 400, "{verb} {template}: {}", reply.text());
                continue;
            }
            if *role < want {
                assert_eq!(reply.status, 403, "{verb} {template} as {role}: {}", reply.text());
                assert!(
                    reply.json()["message"].as_str().unwrap().contains(want.as_str()),
                    "{}",
                    reply.text()
                );
            } else if path == "/api/v1/me/password" {
                // A token has no password of its own to change.
                assert_eq!(reply.status, 403, "{verb} {template} as {role}: {}", reply.text());
            } else {
                assert!(
                    ![401, 403].contains(&reply.status),
                    "{verb} {template} as {role} was refused: {} {}",
                    reply.status,
                    reply.text()
                );
            }
            if method != "get" {
                assert!(audit_len().await > before, "{verb} {template} as {role} left no audit entry");
            }
        }
    }
    shutdown.cancel();
    within(b).await.unwrap().unwrap();
    within(s).await.unwrap().unwrap();
}
