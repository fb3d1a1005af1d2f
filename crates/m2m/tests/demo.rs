//! `m2m demo` as a new user runs it: one command, machines that talk, rules that make them act on
//! each other, a console to log in to, and Ctrl-C that stops everything cleanly.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::m2m;
use m2m_test::{free_port, http, within};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_machines_that_act_on_each_other_and_stops_on_ctrl_c() {
    let (mqtt_port, http_port) = (free_port(), free_port());
    let (mqtt, api) =
        (SocketAddr::from(([127, 0, 0, 1], mqtt_port)), SocketAddr::from(([127, 0, 0, 1], http_port)));
    let mut demo = m2m(&[
        "demo",
        "--mqtt-port",
        &mqtt_port.to_string(),
        "--http-port",
        &http_port.to_string(),
        "--time-scale",
        "100",
    ])
    .spawn()
    .expect("start the demo");
    let stdout = demo.stdout.take().unwrap();
    let out = Arc::new(Mutex::new(Vec::<String>::new()));
    let lines = out.clone();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            lines.lock().unwrap().push(line);
        }
    });
    // The banner: the console's address and the admin's password.
    let password = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let found = out.lock().unwrap().iter().find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("console   http://{api}/"))
                    .and_then(|r| r.split("password: ").nth(1))
                    .map(|p| p.trim().to_owned())
            });
            if let Some(p) = found {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no banner: {:?}", out.lock().unwrap()));

    let body = json!({"user": "admin", "password": password}).to_string();
    let login = http(api, "POST", "/api/v1/login", &[], Some(("application/json", body.as_bytes()))).await;
    assert_eq!(login.status, 200, "{}", login.text());

    // Machines talk, and the rules answer them: lamps are switched, hot motors stopped.
    let mut options = MqttOptions::new("demo-watcher", "127.0.0.1", mqtt_port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 100);
    for filter in ["lamps/+/cmd", "alerts/factory/#", "factory/+/+/cmd", "fleet/+/telemetry"] {
        client.subscribe(filter, QoS::AtMostOnce).await.unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(90), async {
        while seen.len() < 4 {
            if let Ok(Event::Incoming(Packet::Publish(p))) = events.poll().await {
                let payload: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                let kind = match p.topic.split('/').collect::<Vec<_>>()[..] {
                    ["lamps", _, "cmd"] if payload["on"] == true => "lamp command",
                    ["alerts", "factory", _, _] if payload["alert"] == "overheat" => "overheat alert",
                    ["factory", _, _, "cmd"] if payload["cmd"] == "stop" => "motor stopped",
                    ["fleet", _, "telemetry"] if payload["fuel_pct"].is_number() => "telemetry",
                    _ => continue,
                };
                seen.insert(kind);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only saw {seen:?}"));

    let rules = http(api, "GET", "/api/v1/rules", &[], None).await.json();
    let matched = |id: &str| {
        rules
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["metrics"]["matched"].as_u64().unwrap_or(0))
    };
    assert!(matched("lamp-on") > Some(0), "{rules}");
    assert!(matched("motor-overheat") > Some(0), "{rules}");

    // Ctrl-C stops everything, cleanly.
    let pid = demo.id().unwrap().to_string();
    let sent = std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(sent.success());
    let status = within(demo.wait()).await.unwrap();
    assert!(status.success(), "the demo exited with {status}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(out.lock().unwrap().iter().any(|l| l == "demo stopped"), "{:?}", out.lock().unwrap());
    assert!(tokio::net::TcpStream::connect(mqtt).await.is_err(), "the node still listens");
}
