//! `m2m device` and `m2m group` as a user runs them: on a data directory, then a node started on it
//! lets the devices in with their passwords (an independent `rumqttc` client).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{m2m, run, text, wait_until_listening};
use m2m_test::TempDir;
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet};

async fn ok(args: &[&str]) -> String {
    let out = run(m2m(args)).await;
    assert!(out.status.success(), "m2m {args:?} failed: {}", text(&out.stderr));
    text(&out.stdout)
}

async fn fails(args: &[&str]) -> String {
    let out = run(m2m(args)).await;
    assert!(!out.status.success(), "m2m {args:?} succeeded: {}", text(&out.stdout));
    text(&out.stderr)
}

async fn login(addr: SocketAddr, user: &str, password: &str) -> Result<(), ConnectReturnCode> {
    let mut options = MqttOptions::new(format!("cli-{user}"), "127.0.0.1", addr.port());
    options.set_credentials(user, password);
    options.set_keep_alive(Duration::from_secs(30));
    let (_client, mut eventloop) = AsyncClient::new(options, 8);
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return Err(code),
                Err(e) => panic!("unexpected: {e}"),
            }
        }
    })
    .await
    .expect("no CONNACK within 10 s")
}

#[tokio::test]
async fn devices_added_with_the_cli_log_in_to_a_node_started_on_that_data_directory() {
    let dir = TempDir::new("cli-device");
    let d = dir.as_str();
    let out = ok(&[
        "device",
        "--data-dir",
        d,
        "add",
        "lamp-1",
        "--password",
        "s3cret",
        "--group",
        "street",
        "--attr",
        "street=Main",
        "--rule",
        "allow publish lamps/%u/#",
    ])
    .await;
    assert_eq!(out.trim(), "added device lamp-1");
    ok(&["group", "--data-dir", d, "set", "street", "--rule", "allow subscribe lamps/+/cmd"]).await;
    let csv = dir.path().join("fleet.csv");
    std::fs::write(&csv, "id,password,groups,disabled\nlamp-2,pw2,street,\nlamp-3,pw3,street,true\n")
        .unwrap();
    assert_eq!(
        ok(&["device", "--data-dir", d, "import", csv.to_str().unwrap()]).await.trim(),
        "imported 2 devices"
    );
    ok(&["device", "--data-dir", d, "set", "lamp-2", "--disabled"]).await;
    ok(&["device", "--data-dir", d, "set", "lamp-2", "--enabled", "--password", "new-pw"]).await;

    let list = ok(&["device", "--data-dir", d, "list"]).await;
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(lines[2].starts_with("lamp-3\tdisabled"), "{list}");
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&["device", "--data-dir", d, "show", "lamp-1"]).await).unwrap();
    assert_eq!(shown["attributes"]["street"], "Main");
    assert_eq!(shown["has_password"], true);
    assert!(shown.get("password_hash").is_none(), "the hash is not printed");

    // Bad input: a clear error naming the problem, and nothing changed.
    assert!(fails(&["device", "--data-dir", d, "add", "a/b"]).await.contains("invalid device id \"a/b\""));
    assert!(fails(&["device", "--data-dir", d, "add", "x", "--rule", "allow nothing #"])
        .await
        .contains("unknown action"));
    assert!(fails(&["device", "--data-dir", d, "add", "lamp-1"]).await.contains("exists already"));
    assert!(fails(&["device", "--data-dir", d, "rm", "ghost"]).await.contains("no device \"ghost\""));

    let port = common::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listen = addr.to_string();
    let mut node =
        m2m(&["node", "--listen", &listen, "--data-dir", d, "--log-level", "warn"]).spawn().unwrap();
    wait_until_listening(&mut node, addr).await;
    assert_eq!(login(addr, "lamp-1", "s3cret").await, Ok(()));
    assert_eq!(login(addr, "lamp-2", "new-pw").await, Ok(()));
    assert_eq!(login(addr, "lamp-2", "pw2").await, Err(ConnectReturnCode::BadUserNamePassword));
    assert_eq!(login(addr, "lamp-3", "pw3").await, Err(ConnectReturnCode::NotAuthorized));
    // The store is the node's while it runs.
    let err = fails(&["device", "--data-dir", d, "list"]).await;
    assert!(err.contains("stop the node"), "{err}");
    node.kill().await.unwrap();
}

#[tokio::test]
async fn a_client_banned_with_the_cli_is_refused_by_the_node_and_released_with_it() {
    let dir = TempDir::new("cli-quarantine");
    let d = dir.as_str();
    let out = ok(&[
        "quarantine",
        "--data-dir",
        d,
        "add",
        "--client-id",
        "cli-rogue",
        "--mode",
        "ban",
        "--reason",
        "sends garbage",
    ])
    .await;
    assert_eq!(out.trim(), "added quarantine entry 1");
    ok(&[
        "quarantine",
        "--data-dir",
        d,
        "add",
        "--pattern",
        "press-[0-9]+",
        "--mode",
        "isolate",
        "--reason",
        "flapping",
        "--expires-in",
        "2h",
    ])
    .await;
    let list = ok(&["quarantine", "--data-dir", d, "list"]).await;
    assert!(list.starts_with("1\tban\tclient id \"cli-rogue\"\tsends garbage\tby operator\n"), "{list}");
    assert!(list.contains("2\tisolate\tclient ids matching \"press-[0-9]+\"\tflapping"), "{list}");
    assert!(fails(&[
        "quarantine",
        "--data-dir",
        d,
        "add",
        "--address",
        "10.0.0.0/33",
        "--mode",
        "ban",
        "--reason",
        "x"
    ])
    .await
    .contains("the prefix length must be 0 to 32"));
    assert!(fails(&["quarantine", "--data-dir", d, "add", "--mode", "ban", "--reason", "x"])
        .await
        .contains("name what"));
    assert!(fails(&[
        "quarantine",
        "--data-dir",
        d,
        "add",
        "--client-id",
        "x",
        "--mode",
        "ban",
        "--reason",
        "x",
        "--expires-in",
        "soon"
    ])
    .await
    .contains("a number and a unit"));

    let port = common::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listen = addr.to_string();
    let start =
        || m2m(&["node", "--listen", &listen, "--data-dir", d, "--log-level", "warn"]).spawn().unwrap();
    let mut node = start();
    wait_until_listening(&mut node, addr).await;
    // `login` names the client `cli-<user>`.
    assert_eq!(login(addr, "rogue", "x").await, Err(ConnectReturnCode::NotAuthorized));
    node.kill().await.unwrap();
    node.wait().await.unwrap();

    assert_eq!(
        ok(&["quarantine", "--data-dir", d, "release", "1"]).await.trim(),
        "released quarantine entry 1"
    );
    assert!(fails(&["quarantine", "--data-dir", d, "release", "1"]).await.contains("no quarantine entry 1"));
    let audit = ok(&["audit", "--data-dir", d, "list"]).await;
    let actions: Vec<Vec<&str>> = audit.lines().map(|l| l.split('\t').skip(1).take(3).collect()).collect();
    assert_eq!(
        actions,
        [["cli", "quarantine.release", "1"], ["cli", "quarantine.add", "2"], ["cli", "quarantine.add", "1"]],
        "{audit}"
    );
    let mut node = start();
    wait_until_listening(&mut node, addr).await;
    assert_eq!(login(addr, "rogue", "x").await, Ok(()));
    node.kill().await.unwrap();
}

/// One HTTP/1.1 request on a fresh connection; the status and the body.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the HTTP API");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send the request");
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut response))
        .await
        .expect("an answer within 10 s")
        .expect("read the answer");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[tokio::test]
async fn a_running_node_is_managed_over_its_http_api() {
    let dir = TempDir::new("cli-http");
    let (mqtt, api) = (common::free_port(), common::free_port());
    let addr: SocketAddr = format!("127.0.0.1:{mqtt}").parse().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{api}").parse().unwrap();
    let mut node =
        m2m(&["node", "--listen", &addr.to_string(), "--data-dir", dir.as_str(), "--log-level", "warn"])
            .env("M2M_HTTP_LISTEN", api.to_string())
            .spawn()
            .unwrap();
    wait_until_listening(&mut node, addr).await;
    wait_until_listening(&mut node, api).await;
    let (status, body) = http(api, "POST", "/api/v1/devices", r#"{"id": "lamp-9", "password": "pw9"}"#).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(login(addr, "lamp-9", "pw9").await, Ok(()));
    assert_eq!(login(addr, "lamp-9", "nope").await, Err(ConnectReturnCode::BadUserNamePassword));
    let (status, body) = http(api, "POST", "/api/v1/devices", r#"{"id": "a/b"}"#).await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid device id"), "{body}");
    let ban = r#"{"target": {"kind": "username", "value": "lamp-9"}, "mode": "ban", "reason": "test"}"#;
    assert_eq!(http(api, "POST", "/api/v1/quarantine", ban).await.0, 201);
    assert_eq!(login(addr, "lamp-9", "pw9").await, Err(ConnectReturnCode::NotAuthorized));
    let (status, audit) = http(api, "GET", "/api/v1/audit", "").await;
    assert_eq!(status, 200);
    let events: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let actions: Vec<&str> =
        events.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["quarantine.add", "device.add"]);
    node.kill().await.unwrap();
}
