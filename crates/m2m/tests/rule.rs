//! `m2m rule` as a user runs it: over the HTTP API of a running node (the `m2m` binary), where a
//! rule added with the CLI acts at once on real traffic (an independent `rumqttc` client); on a
//! stopped node's data directory, whose rules the node loads and runs when it starts; and `m2m rule
//! test`, which needs no node.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{m2m, run, text, RunningNode};
use m2m_test::TempDir;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;

async fn run_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = m2m(args);
    cmd.envs(env.iter().copied());
    run(cmd).await
}

async fn ok_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run_env(args, env).await;
    assert!(out.status.success(), "m2m {args:?} failed: {}", text(&out.stderr));
    text(&out.stdout)
}

async fn ok(args: &[&str]) -> String {
    ok_env(args, &[]).await
}

async fn fails(args: &[&str]) -> String {
    let out = run(m2m(args)).await;
    assert!(!out.status.success(), "m2m {args:?} succeeded: {}", text(&out.stdout));
    text(&out.stderr)
}

/// `m2m rule --api url args...`
async fn over(url: &str, args: &[&str]) -> String {
    let mut all = vec!["rule", "--api", url];
    all.extend_from_slice(args);
    ok(&all).await
}

async fn fails_over(url: &str, args: &[&str]) -> String {
    let mut all = vec!["rule", "--api", url];
    all.extend_from_slice(args);
    fails(&all).await
}

/// The rows of `m2m rule list` under its header, split into cells.
fn table(list: &str) -> Vec<Vec<String>> {
    let mut lines = list.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with("ID") && header.contains("LAST ERROR"), "{list}");
    lines.map(|l| l.split_whitespace().map(str::to_owned).collect()).collect()
}

/// An MQTT client subscribed to `filter`, and the (topic, payload) of what it receives.
async fn subscriber(
    addr: SocketAddr,
    id: &str,
    filter: &str,
) -> (AsyncClient, mpsc::UnboundedReceiver<(String, String)>) {
    let options = MqttOptions::new(id, "127.0.0.1", addr.port());
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client.subscribe(filter, QoS::AtLeastOnce).await.expect("subscribe");
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(s) = subscribed_tx.take() {
                        let _ = s.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let _ = tx.send((p.topic.clone(), String::from_utf8_lossy(&p.payload).into_owned()));
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed).await.expect("SUBACK within 10 s").unwrap();
    (client, rx)
}

/// Publishes one message at QoS 1 as `id` and waits for its PUBACK.
async fn publish(addr: SocketAddr, id: &str, topic: &str, payload: &str) {
    let options = MqttOptions::new(id, "127.0.0.1", addr.port());
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client.publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec()).await.expect("publish");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.expect("MQTT connection") {
                return;
            }
        }
    })
    .await
    .expect("PUBACK within 10 s");
    let _ = client.disconnect().await;
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(String, String)>) -> (String, String) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a message within 10 s")
        .expect("the subscriber is connected")
}

const HOT: &str = r#"SELECT payload.temp AS t, clientid FROM "kiln/+/temp" WHERE payload.temp > 80"#;
const ALERT: &str = r#"{"type": "republish", "topic": "alerts/${clientid}", "payload": "hot: ${t}"}"#;

#[tokio::test]
async fn rules_added_with_the_cli_over_the_api_act_on_the_running_nodes_traffic() {
    let dir = TempDir::new("cli-rule-api");
    let node = RunningNode::start(dir.as_str(), &[]).await;
    let url = node.url();
    let (_watcher, mut alerts) = subscriber(node.mqtt, "watcher", "alerts/#").await;

    let added =
        over(&url, &["add", "hot", "--sql", HOT, "--action", ALERT, "--description", "too hot"]).await;
    assert_eq!(added.trim(), "added rule hot");
    publish(node.mqtt, "kiln-3", "kiln/3/temp", r#"{"temp": 20}"#).await;
    publish(node.mqtt, "kiln-3", "kiln/3/temp", r#"{"temp": 95}"#).await;
    assert_eq!(next(&mut alerts).await, ("alerts/kiln-3".into(), "hot: 95".into()));

    let rows = table(&over(&url, &["list"]).await);
    assert_eq!(rows.len(), 1, "{rows:?}");
    // id, state, matched, passed, failed, actions ok/failed, last error.
    assert_eq!(rows[0][..2], ["hot", "running"]);
    assert_eq!(rows[0][6], "-");
    let shown: Value = serde_json::from_str(&over(&url, &["show", "hot"]).await).unwrap();
    assert_eq!((&shown["description"], &shown["state"]), (&json!("too hot"), &json!("running")));
    assert_eq!(shown["actions"][0]["topic"], "alerts/${clientid}");
    assert_eq!(shown["metrics"]["passed"], 1, "{shown}");
    let listed: Value = serde_json::from_str(&over(&url, &["list", "--json"]).await).unwrap();
    assert_eq!(listed[0]["id"], "hot");

    // Refused: the API's status and the engine's message.
    let err = fails_over(&url, &["add", "hot", "--sql", HOT]).await;
    assert!(err.contains("answered 409 Conflict: a rule \"hot\" exists already"), "{err}");
    let err = fails_over(&url, &["add", "bad", "--sql", "SELECT FROM"]).await;
    assert!(err.contains("answered 400 Bad Request: rule \"bad\": "), "{err}");
    let err = fails_over(&url, &["add", "bad", "--sql", HOT, "--action", r#"{"type": "explode"}"#]).await;
    assert!(err.contains("invalid --action"), "{err}");
    let err = fails_over(&url, &["show", "cold"]).await;
    assert!(err.contains("answered 404 Not Found: no rule \"cold\""), "{err}");

    assert_eq!(over(&url, &["disable", "hot"]).await.trim(), "disabled rule hot");
    assert_eq!(table(&over(&url, &["list"]).await)[0][1], "disabled");
    assert_eq!(over(&url, &["enable", "hot"]).await.trim(), "enabled rule hot");

    // Replaced from a file on standard input: the new action at once.
    let file = dir.path().join("hot.json");
    let v2 = json!({"id": "hot", "sql": HOT, "actions": [{"type": "republish", "topic": "alerts/v2", "payload": "${t}"}]});
    std::fs::write(&file, v2.to_string()).unwrap();
    let replaced = over(&url, &["add", "--file", file.to_str().unwrap(), "--replace"]).await;
    assert_eq!(replaced.trim(), "replaced rule hot");
    publish(node.mqtt, "kiln-4", "kiln/4/temp", r#"{"temp": 99}"#).await;
    assert_eq!(next(&mut alerts).await, ("alerts/v2".into(), "99".into()));

    assert_eq!(over(&url, &["rm", "hot"]).await.trim(), "removed rule hot");
    let err = fails_over(&url, &["rm", "hot"]).await;
    assert!(err.contains("answered 404 Not Found: no rule \"hot\""), "{err}");
    assert_eq!(over(&url, &["list", "--json"]).await.trim(), "[]");

    let audit = ok(&["audit", "--api", &url, "list"]).await;
    let actions: Vec<String> =
        audit.lines().map(|l| l.split('\t').skip(1).take(3).collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(
        actions,
        [
            "loopback api.request DELETE /api/v1/rules/hot",
            "loopback rule.remove hot",
            "loopback rule.replace hot",
            "loopback rule.enable hot",
            "loopback rule.disable hot",
            "loopback api.request POST /api/v1/rules",
            "loopback api.request POST /api/v1/rules",
            "loopback rule.add hot",
        ],
        "{audit}"
    );
    node.stop().await;
}

#[tokio::test]
async fn a_rule_is_tried_on_a_sample_message_without_a_node() {
    let out = ok(&[
        "rule",
        "test",
        "--sql",
        HOT,
        "--topic",
        "kiln/3/temp",
        "--payload",
        r#"{"temp": 90.5}"#,
        "--clientid",
        "kiln-3",
    ])
    .await;
    let output: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(output, json!({"t": 90.5, "clientid": "kiln-3"}));
    let out =
        ok(&["rule", "test", "--sql", HOT, "--topic", "kiln/3/temp", "--payload", r#"{"temp": 20}"#]).await;
    assert_eq!(out.trim(), "no output (WHERE is false)");
    let err = fails(&["rule", "test", "--sql", "SELECT FROM", "--topic", "t"]).await;
    assert!(err.starts_with("error: cannot evaluate the rule: "), "{err}");
    let err = fails(&[
        "rule",
        "test",
        "--sql",
        r#"SELECT payload.a / 0 AS x FROM "t""#,
        "--topic",
        "t",
        "--payload",
        r#"{"a": 1}"#,
    ])
    .await;
    assert!(err.contains("by zero"), "{err}");
    let out = ok(&[
        "rule",
        "test",
        "--sql",
        r#"SELECT clientid, reason FROM "$events/client_disconnected" WHERE reason <> 'normal'"#,
        "--event",
        "$events/client_disconnected",
        "--clientid",
        "van-3",
        "--fields",
        r#"{"reason": "keep_alive_timeout"}"#,
    ])
    .await;
    let output: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(output, json!({"clientid": "van-3", "reason": "keep_alive_timeout"}));
    let window = r#"SELECT win.avg AS avg, win.count AS n FROM "kiln/+/temp" WHERE win.avg > 80"#;
    let out = ok(&[
        "rule",
        "test",
        "--sql",
        window,
        "--topic",
        "kiln/1/temp",
        "--window",
        r#"{"avg": 82.5, "count": 4}"#,
    ])
    .await;
    let output: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(output, json!({"avg": 82.5, "n": 4}));
    let err = fails(&["rule", "test", "--sql", window, "--window", "[1]"]).await;
    assert!(err.contains("--window must be a JSON object"), "{err}");
}

#[tokio::test]
async fn rules_added_on_a_stopped_node_are_loaded_and_run_when_it_starts() {
    let dir = TempDir::new("cli-rule-store");
    let d = dir.as_str();
    let added = ok(&["rule", "--data-dir", d, "add", "hot", "--sql", HOT, "--action", ALERT]).await;
    assert_eq!(added.trim(), "added rule hot");
    let file = dir.path().join("quiet.json");
    let quiet = json!({"id": "quiet", "sql": "SELECT * FROM \"kiln/#\"", "enabled": false,
        "actions": [{"type": "republish", "topic": "alerts/quiet"}]});
    std::fs::write(&file, quiet.to_string()).unwrap();
    ok(&["rule", "--data-dir", d, "add", "--file", file.to_str().unwrap()]).await;
    ok(&["rule", "--data-dir", d, "add", "gone", "--sql", HOT]).await;
    assert_eq!(ok(&["rule", "--data-dir", d, "rm", "gone"]).await.trim(), "removed rule gone");
    assert_eq!(ok(&["rule", "--data-dir", d, "disable", "hot"]).await.trim(), "disabled rule hot");
    assert_eq!(ok(&["rule", "--data-dir", d, "enable", "hot"]).await.trim(), "enabled rule hot");

    let rows = table(&ok(&["rule", "--data-dir", d, "list"]).await);
    let rows: Vec<&[String]> = rows.iter().map(|r| &r[..]).collect();
    assert_eq!(
        rows,
        [
            &["hot", "enabled", "-", "-", "-", "-", "-"][..],
            &["quiet", "disabled", "-", "-", "-", "-", "-"][..]
        ]
    );
    let shown: Value = serde_json::from_str(&ok(&["rule", "--data-dir", d, "show", "quiet"]).await).unwrap();
    assert_eq!((&shown["state"], &shown["enabled"]), (&json!("disabled"), &json!(false)));

    // Refused before anything is written, with the engine's messages.
    let err = fails(&["rule", "--data-dir", d, "add", "hot", "--sql", HOT]).await;
    assert!(err.contains("a rule \"hot\" exists already"), "{err}");
    let bad_qos = r#"{"type": "republish", "topic": "x", "qos": 7}"#;
    let err = fails(&["rule", "--data-dir", d, "add", "bad", "--sql", HOT, "--action", bad_qos]).await;
    assert!(err.contains("rule \"bad\": republish qos 7: expected 0, 1 or 2"), "{err}");
    let err = fails(&["rule", "--data-dir", d, "add", "a/b", "--sql", HOT]).await;
    assert!(err.contains("rule id \"a/b\""), "{err}");
    std::fs::write(&file, r#"{"id": "typo", "sql": "SELECT * FROM \"a\"", "action": []}"#).unwrap();
    let err = fails(&["rule", "--data-dir", d, "add", "--file", file.to_str().unwrap()]).await;
    assert!(err.contains("unknown member \"action\" in a rule"), "{err}");
    let err = fails(&["rule", "--data-dir", d, "enable", "cold"]).await;
    assert!(err.contains("no rule \"cold\""), "{err}");

    let audit = ok(&["audit", "--data-dir", d, "list"]).await;
    let actions: Vec<String> =
        audit.lines().map(|l| l.split('\t').skip(1).take(3).collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(
        actions,
        [
            "cli rule.enable hot",
            "cli rule.disable hot",
            "cli rule.remove gone",
            "cli rule.add gone",
            "cli rule.add quiet",
            "cli rule.add hot"
        ],
        "{audit}"
    );

    // The node loads them; with its store in use, the CLI finds its API from the configuration.
    let listen = format!("127.0.0.1:{}", m2m_test::free_port());
    let env = [("M2M_HTTP_LISTEN", listen.as_str())];
    let node = RunningNode::start(d, &env).await;
    let rows = table(&ok_env(&["rule", "--data-dir", d, "list"], &env).await);
    let states: Vec<(&str, &str)> = rows.iter().map(|r| (r[0].as_str(), r[1].as_str())).collect();
    assert_eq!(states, [("hot", "running"), ("quiet", "disabled")]);
    let (_watcher, mut alerts) = subscriber(node.mqtt, "watcher", "alerts/#").await;
    publish(node.mqtt, "kiln-1", "kiln/1/temp", r#"{"temp": 81}"#).await;
    assert_eq!(
        next(&mut alerts).await,
        ("alerts/kiln-1".into(), "hot: 81".into()),
        "not alerts/quiet: it is off"
    );
    // A change made through the node's API while it runs is the node's, audited by it.
    ok_env(&["rule", "--data-dir", d, "disable", "hot"], &env).await;
    let shown: Value = serde_json::from_str(&over(&node.url(), &["show", "hot"]).await).unwrap();
    assert_eq!(shown["state"], "disabled");
    node.stop().await;

    let rows = table(&ok(&["rule", "--data-dir", d, "list"]).await);
    assert_eq!(rows[0][..2], ["hot", "disabled"], "the node kept the change in its store");
}
