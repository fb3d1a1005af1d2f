//! The HTTP API's JSON inputs: arbitrary bodies sent to every route that reads one, through the
//! real axum router of `m2m-http` over a real broker (store in memory, rules engine attached), in
//! process with tower's `oneshot`. Nothing may panic, and bad input must never be answered with a
//! 5xx: a 500 means a handler failed on what it should have refused with a 4xx.
//!
//! The first input byte picks the route, the rest is the body. The node is built once and kept
//! between inputs, so state (devices, rules, users) accumulates as it would on a real node.

#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{header, Request};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use m2m_broker::{Broker, Config};
use m2m_engine::{Engine, EngineConfig};
use m2m_http::{HttpConfig, NodeParts};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const TOKEN: &str = "fuzz-token";

/// Every route that reads a JSON body: method and path.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/login"),
    ("POST", "/api/v1/me/password"),
    ("POST", "/api/v1/users"),
    ("PATCH", "/api/v1/users/operator-1"),
    ("POST", "/api/v1/tokens"),
    ("POST", "/api/v1/devices"),
    ("POST", "/api/v1/devices/import"),
    ("PATCH", "/api/v1/devices/import"),
    ("PATCH", "/api/v1/devices/device-1"),
    ("PUT", "/api/v1/groups/group-1"),
    ("POST", "/api/v1/quarantine"),
    ("POST", "/api/v1/publish"),
    ("POST", "/api/v1/clients/client-1/disconnect"),
    ("POST", "/api/v1/rules"),
    ("POST", "/api/v1/rules/test"),
    ("PUT", "/api/v1/rules/test"),
    ("PUT", "/api/v1/rules/rule-1"),
];

struct Node {
    runtime: Runtime,
    router: axum::Router,
}

fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let router = runtime.block_on(async {
            let engine = Engine::new(EngineConfig::default()).expect("start the engine");
            let mut config = Config::for_tests();
            config.taps.push(std::sync::Arc::new(engine.clone()));
            let broker = Broker::bind(&config).await.expect("bind the broker");
            engine
                .attach(broker.router(), broker.access(), broker.history(), broker.store())
                .expect("attach the engine");
            let parts = NodeParts { engine: Some(engine), ..NodeParts::with_broker(&broker) };
            let http =
                HttpConfig { token: Some(TOKEN.to_owned()), trust_loopback: false, ..HttpConfig::default() };
            let router = m2m_http::router(parts, &http);
            // The broker runs for the fuzzer's life: publish and disconnect reach its router task.
            tokio::spawn(broker.run(CancellationToken::new()));
            router
        });
        Node { runtime, router }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let (method, path) = ROUTES[usize::from(pick) % ROUTES.len()];
    let node = node();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a request");
    let (status, answer) = node.runtime.block_on(async {
        let response = node.router.clone().oneshot(request).await.expect("the router is infallible");
        let status = response.status();
        let answer = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        (status, answer)
    });
    assert!(
        !status.is_server_error(),
        "{method} {path} with {:?} answered {status}: {}",
        String::from_utf8_lossy(body),
        String::from_utf8_lossy(&answer)
    );
});
