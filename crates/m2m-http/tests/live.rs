//! The live view over real HTTP: the event stream (stats, client and quarantine events, messages
//! of a filter, with its rate limit) and the rates, against a real node and real MQTT clients.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use m2m_broker::{Broker, Config};
use m2m_http::{HttpConfig, HttpServer, Live, NodeParts, STREAM_RATE};
use m2m_test::{http, sse, within, TempDir};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Node {
    mqtt: SocketAddr,
    http: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    _dir: TempDir,
}

impl Node {
    async fn start() -> Self {
        let dir = TempDir::new("http-live");
        let mut config = Config::for_tests();
        config.store = Some(m2m_store::StoreConfig::new(dir.path().join("store")));
        let live = Live::new();
        config.taps.push(Arc::new(live.clone()));
        let broker = Broker::bind(&config).await.expect("bind the broker");
        live.start(broker.metrics());
        let mut parts = NodeParts::new(broker.access());
        parts.live = Some(live);
        let http_config =
            HttpConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..HttpConfig::default() };
        let server = HttpServer::bind(&http_config, parts).await.expect("bind the HTTP API");
        let (mqtt, http) = (broker.local_addr(), server.local_addr());
        let shutdown = CancellationToken::new();
        let b = tokio::spawn(broker.run(shutdown.clone()));
        let s = tokio::spawn(server.run(shutdown.clone()));
        let tasks = vec![
            tokio::spawn(async move { b.await.unwrap().unwrap() }),
            tokio::spawn(async move { s.await.unwrap().unwrap() }),
        ];
        Self { mqtt, http, shutdown, tasks, _dir: dir }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            within(t).await.expect("a node task failed");
        }
    }

    /// A connected rumqttc client `id`, its event loop polled in the background.
    async fn client(&self, id: &str) -> (AsyncClient, JoinHandle<()>) {
        let mut options = MqttOptions::new(id, self.mqtt.ip().to_string(), self.mqtt.port());
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(options, 1000);
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
        let mut connected_tx = Some(connected_tx);
        let task = tokio::spawn(async move {
            while let Ok(event) = events.poll().await {
                if let Event::Incoming(Packet::ConnAck(_)) = event {
                    if let Some(tx) = connected_tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        within(connected_rx).await.expect("connected");
        (client, task)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_shows_stats_clients_quarantine_and_the_messages_of_its_filter() {
    let node = Node::start().await;
    let mut stream = sse(node.http, "/api/v1/stream?filter=factory%2F%2B%2Ftemp", &[]).await;
    assert_eq!(stream.status, 200);
    assert!(stream.headers.iter().any(|(n, v)| n == "content-type" && v.starts_with("text/event-stream")));
    let stats = stream.expect("stats").await;
    for key in
        ["ts", "connections", "messages_in", "messages_out", "dropped", "in_rate", "out_rate", "drop_rate"]
    {
        assert!(stats.get(key).is_some(), "{key} missing from {stats}");
    }

    let (press, press_loop) = node.client("press-7").await;
    let connected = stream.expect("client").await;
    assert_eq!((&connected["event"], &connected["client_id"]), (&json!("connected"), &json!("press-7")));
    assert!(connected["address"].as_str().unwrap().starts_with("127.0.0.1:"));

    press.publish("factory/press-7/temp", QoS::AtLeastOnce, false, r#"{"temp": 81.5}"#).await.unwrap();
    press.publish("factory/press-7/state", QoS::AtLeastOnce, false, "running").await.unwrap();
    press.publish("factory/press-7/temp", QoS::AtMostOnce, false, "not json").await.unwrap();
    let first = stream.expect("message").await;
    assert_eq!(
        (&first["topic"], &first["payload"], &first["encoding"], &first["qos"], &first["client_id"]),
        (
            &json!("factory/press-7/temp"),
            &json!({"temp": 81.5}),
            &json!("json"),
            &json!(1),
            &json!("press-7")
        )
    );
    // The state message does not match the filter: the next one is the text temperature.
    let second = stream.expect("message").await;
    assert_eq!((&second["payload"], &second["encoding"]), (&json!("not json"), &json!("text")));

    // A quarantine (through the API) shows up as it happens, and so does the disconnection.
    let ban =
        json!({"target": {"kind": "client_id", "value": "press-7"}, "mode": "ban", "reason": "overheats"});
    let body = ban.to_string();
    let added =
        http(node.http, "POST", "/api/v1/quarantine", &[], Some(("application/json", body.as_bytes()))).await;
    assert_eq!(added.status, 201, "{}", added.text());
    // The entry and the disconnection it causes, in whichever order they were seen.
    let (mut quarantined, mut gone) = (None, None);
    within(async {
        while quarantined.is_none() || gone.is_none() {
            let (name, data) = stream.next_event().await.expect("the stream goes on");
            match name.as_str() {
                "quarantine" => quarantined = serde_json::from_str::<Value>(&data).ok(),
                "client" => gone = serde_json::from_str::<Value>(&data).ok(),
                _ => {}
            }
        }
    })
    .await;
    let (quarantined, gone) = (quarantined.unwrap(), gone.unwrap());
    assert_eq!((&quarantined["event"], &quarantined["client_id"]), (&json!("added"), &json!("press-7")));
    assert_eq!((&gone["event"], &gone["client_id"]), (&json!("disconnected"), &json!("press-7")));
    let id = quarantined["id"].as_u64().unwrap();
    http(node.http, "DELETE", &format!("/api/v1/quarantine/{id}"), &[], None).await;
    let released = stream.expect("quarantine").await;
    assert_eq!((&released["event"], &released["released"]), (&json!("released"), &json!(id)));
    press_loop.abort();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_sends_at_most_its_rate_and_says_how_many_it_left_out() {
    let node = Node::start().await;
    let mut stream = sse(node.http, "/api/v1/stream?filter=burst%2F%23", &[]).await;
    stream.expect("stats").await;
    let (client, client_loop) = node.client("burst-1").await;
    let burst = 400;
    let started = std::time::Instant::now();
    for i in 0..burst {
        client.publish(format!("burst/{i}"), QoS::AtMostOnce, false, i.to_string()).await.unwrap();
    }
    let mut messages = 0u64;
    let mut dropped = 0u64;
    within(async {
        while messages + dropped < burst {
            let (name, data) = stream.next_event().await.expect("the stream goes on");
            let data: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            match name.as_str() {
                "message" => messages += 1,
                "lagged" => dropped += data["dropped"].as_u64().unwrap_or(0),
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(messages + dropped, burst, "every message is either sent or counted");
    // One budget per second began while the burst was read (and one was there at the start).
    let budgets = started.elapsed().as_secs() + 2;
    assert!(
        messages <= u64::from(STREAM_RATE) * budgets,
        "{messages} messages went out in {budgets} budgets"
    );
    assert!(dropped > 0);
    client_loop.abort();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_keep_the_recent_seconds_and_bad_filters_are_refused() {
    let node = Node::start().await;
    let (client, client_loop) = node.client("counter").await;
    for _ in 0..20 {
        client.publish("a/b", QoS::AtLeastOnce, false, "x").await.unwrap();
    }
    // Wait for two samples after the messages were counted.
    let samples = within(async {
        loop {
            let rates = http(node.http, "GET", "/api/v1/node/rates?seconds=60", &[], None).await.json();
            let samples = rates["samples"].as_array().cloned().unwrap_or_default();
            if samples.last().is_some_and(|s| s["messages_in"].as_u64() >= Some(20)) && samples.len() >= 2 {
                return samples;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let (last, before) = (&samples[samples.len() - 1], &samples[samples.len() - 2]);
    assert!(last["ts"].as_u64() > before["ts"].as_u64());
    assert_eq!(last["connections"], 1);
    let few = http(node.http, "GET", "/api/v1/node/rates?seconds=1", &[], None).await.json();
    assert_eq!(few["samples"].as_array().unwrap().len(), 1);

    let bad = http(node.http, "GET", "/api/v1/stream?filter=a%2F%23%2Fb", &[], None).await;
    assert_eq!((bad.status, bad.json()["error"].clone()), (400, json!("bad_request")));
    client_loop.abort();
    node.stop().await;
}
