//! `m2m device`, `group`, `quarantine` and `audit` as a user runs them: on a stopped node's data
//! directory, then a node started on it lets the devices in with their passwords (an independent
//! `rumqttc` client); and on a running node, through its HTTP API, whose changes apply at once.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{m2m, run, text, wait_until_listening, RunningNode};
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

    let port = m2m_test::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listen = addr.to_string();
    let mut node =
        m2m(&["node", "--listen", &listen, "--data-dir", d, "--log-level", "warn"]).spawn().unwrap();
    wait_until_listening(&mut node, addr).await;
    assert_eq!(login(addr, "lamp-1", "s3cret").await, Ok(()));
    assert_eq!(login(addr, "lamp-2", "new-pw").await, Ok(()));
    assert_eq!(login(addr, "lamp-2", "pw2").await, Err(ConnectReturnCode::BadUserNamePassword));
    assert_eq!(login(addr, "lamp-3", "pw3").await, Err(ConnectReturnCode::NotAuthorized));
    // The store is the node's while it runs, and its API is not where the configuration says (the
    // tests' nodes pick a port for it).
    let err = fails(&["device", "--data-dir", d, "list"]).await;
    assert!(err.contains("is in use by a running node (stop the node"), "{err}");
    assert!(err.contains("http.listen is 127.0.0.1:0, a port the node picks"), "{err}");
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

    let port = m2m_test::free_port();
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
    let (mqtt, api) = (m2m_test::free_port(), m2m_test::free_port());
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
    // The refused device (400) is audited as a request.
    assert_eq!(actions, ["quarantine.add", "api.request", "device.add"]);
    node.kill().await.unwrap();
}

/// `args` with `--api url` after the command's name.
fn with_api<'a>(url: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec![args[0], "--api", url];
    all.extend_from_slice(&args[1..]);
    all
}

/// Runs the CLI with these environment variables.
async fn run_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = m2m(args);
    cmd.envs(env.iter().copied());
    run(cmd).await
}

async fn ok_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run_env(args, env).await;
    assert!(out.status.success(), "m2m {args:?} with {env:?} failed: {}", text(&out.stderr));
    text(&out.stdout)
}

async fn fails_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run_env(args, env).await;
    assert!(!out.status.success(), "m2m {args:?} with {env:?} succeeded: {}", text(&out.stdout));
    text(&out.stderr)
}

async fn ok_over(url: &str, args: &[&str]) -> String {
    ok(&with_api(url, args)).await
}

async fn fails_over(url: &str, args: &[&str]) -> String {
    fails(&with_api(url, args)).await
}

/// `actor action subject` of each line of `m2m audit list`.
fn audit_actions(audit: &str) -> Vec<String> {
    audit.lines().map(|l| l.split('\t').skip(1).take(3).collect::<Vec<_>>().join(" ")).collect()
}

#[tokio::test]
async fn the_cli_changes_a_running_node_over_its_api_and_prints_what_it_prints_from_the_store() {
    let dir = TempDir::new("cli-api");
    let d = dir.as_str();
    let node = RunningNode::start(d, &[]).await;
    let url = node.url();
    let added = ok_over(
        &url,
        &[
            "device",
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
        ],
    )
    .await;
    assert_eq!(added.trim(), "added device lamp-1");
    assert_eq!(login(node.mqtt, "lamp-1", "s3cret").await, Ok(()), "the running node knows it at once");
    let set = ok_over(&url, &["group", "set", "street", "--rule", "allow subscribe lamps/+/cmd"]).await;
    assert_eq!(set.trim(), "set group street");
    let csv = dir.path().join("fleet.csv");
    std::fs::write(&csv, "id,password,groups,disabled\nlamp-2,pw2,street,\nlamp-3,pw3,street,true\n")
        .unwrap();
    let csv = csv.to_str().unwrap().to_owned();
    let imported = ok(&with_api(&url, &["device", "import", &csv])).await;
    assert_eq!(imported.trim(), "imported 2 devices");
    assert_eq!(
        ok_over(&url, &["device", "set", "lamp-2", "--disabled"]).await.trim(),
        "changed device lamp-2"
    );
    assert_eq!(login(node.mqtt, "lamp-2", "pw2").await, Err(ConnectReturnCode::NotAuthorized));
    ok_over(&url, &["device", "set", "lamp-2", "--enabled", "--password", "new-pw", "--attr", "pole=7"])
        .await;
    assert_eq!(login(node.mqtt, "lamp-2", "new-pw").await, Ok(()));
    assert_eq!(login(node.mqtt, "lamp-2", "pw2").await, Err(ConnectReturnCode::BadUserNamePassword));
    assert_eq!(ok_over(&url, &["device", "rm", "lamp-3"]).await.trim(), "removed device lamp-3");

    // Refused changes: the API's message, and its status.
    let err = fails_over(&url, &["device", "add", "a/b"]).await;
    assert!(err.contains("answered 400 Bad Request: invalid device id \"a/b\""), "{err}");
    assert!(fails_over(&url, &["device", "add", "lamp-1"])
        .await
        .contains("409 Conflict: device \"lamp-1\" exists already"));
    assert!(fails_over(&url, &["device", "rm", "ghost"])
        .await
        .contains("404 Not Found: no device \"ghost\""));
    assert!(fails_over(&url, &["device", "show", "ghost"]).await.contains("no device \"ghost\""));
    assert!(fails_over(&url, &["device", "add", "x", "--rule", "allow nothing #"])
        .await
        .contains("unknown action"));

    let entry = ok_over(
        &url,
        &[
            "quarantine",
            "add",
            "--pattern",
            "press-[0-9]+",
            "--mode",
            "isolate",
            "--reason",
            "flapping",
            "--expires-in",
            "2h",
        ],
    )
    .await;
    assert_eq!(entry.trim(), "added quarantine entry 1");
    let entry = ok_over(
        &url,
        &["quarantine", "add", "--client-id", "cli-rogue", "--mode", "ban", "--reason", "garbage"],
    )
    .await;
    assert_eq!(entry.trim(), "added quarantine entry 2");
    assert!(fails_over(
        &url,
        &["quarantine", "add", "--address", "10.0.0.0/33", "--mode", "ban", "--reason", "x"]
    )
    .await
    .contains("the prefix length must be 0 to 32"));
    let (_, ack) = m2m_test::raw_connect(node.mqtt, m2m_test::v5_connect("cli-rogue")).await;
    assert_eq!(ack.reason_code, m2m_codec::ReasonCode::BANNED);
    let refusals = ok_over(&url, &["quarantine", "refusals", "cli-rogue"]).await;
    let refusal: Vec<&str> = refusals.trim().split('\t').collect();
    assert_eq!(refusal[1..], ["CONNECT", "", "quarantine entry 2"], "{refusals}");
    assert_eq!(ok_over(&url, &["quarantine", "release", "1"]).await.trim(), "released quarantine entry 1");
    assert!(fails_over(&url, &["quarantine", "release", "1"])
        .await
        .contains("404 Not Found: no quarantine entry 1"));

    // The node audited the changes itself, under the caller it admitted (the CLI on loopback), and
    // the refused calls too.
    let audit = ok_over(&url, &["audit", "list"]).await;
    assert_eq!(
        audit_actions(&audit),
        [
            "loopback api.request DELETE /api/v1/quarantine/1",
            "loopback quarantine.release 1",
            "loopback api.request POST /api/v1/quarantine",
            "operator via loopback quarantine.add 2",
            "operator via loopback quarantine.add 1",
            "loopback api.request POST /api/v1/devices",
            "loopback api.request DELETE /api/v1/devices/ghost",
            "loopback api.request POST /api/v1/devices",
            "loopback api.request POST /api/v1/devices",
            "loopback device.remove lamp-3",
            "loopback device.set lamp-2",
            "loopback device.set lamp-2",
            "loopback device.import ",
            "loopback group.set street",
            "loopback device.add lamp-1",
        ],
        "{audit}"
    );
    assert_eq!(ok_over(&url, &["audit", "list", "--limit", "2"]).await.lines().count(), 2);

    let reads: [&[&'static str]; 8] = [
        &["device", "list"],
        &["device", "list", "--json"],
        &["device", "show", "lamp-2"],
        &["group", "list"],
        &["quarantine", "list"],
        &["quarantine", "list", "--json"],
        &["audit", "list"],
        &["audit", "list", "--json"],
    ];
    let mut over_api = Vec::new();
    for args in reads {
        over_api.push(ok_over(&url, args).await);
    }
    assert!(
        over_api[0].starts_with("lamp-1\tenabled\tgroups=street\tpassword\nlamp-2\tenabled"),
        "{}",
        over_api[0]
    );
    let shown: serde_json::Value = serde_json::from_str(&over_api[2]).unwrap();
    assert_eq!((&shown["attributes"]["pole"], &shown["has_password"]), (&"7".into(), &true.into()));
    assert!(over_api[3].starts_with("street\n  allow subscribe lamps/+/cmd\n"), "{}", over_api[3]);
    assert!(
        over_api[4].starts_with("2\tban\tclient id \"cli-rogue\"\tgarbage\tby operator"),
        "{}",
        over_api[4]
    );

    // The same reads from the store of the stopped node print the same.
    node.stop().await;
    for (args, expected) in reads.iter().zip(&over_api) {
        let mut local = vec![args[0], "--data-dir", d];
        local.extend_from_slice(&args[1..]);
        assert_eq!(&ok(&local).await, expected, "m2m {args:?}");
    }
    let err = fails(&["quarantine", "--data-dir", d, "refusals", "cli-rogue"]).await;
    assert!(err.contains("refusals are only known to a running node"), "{err}");
}

#[tokio::test]
async fn a_client_banned_with_the_cli_on_a_running_node_is_disconnected_at_once() {
    use m2m_codec::ReasonCode;
    let dir = TempDir::new("cli-api-ban");
    let node = RunningNode::start(dir.as_str(), &[]).await;
    let mut live = m2m_test::raw_connect_ok(node.mqtt, m2m_test::v5_connect("press-7")).await;
    let url = node.url();
    let added = ok(&with_api(
        &url,
        &["quarantine", "add", "--client-id", "press-7", "--mode", "ban", "--reason", "compromised"],
    ))
    .await;
    assert_eq!(added.trim(), "added quarantine entry 1");
    m2m_test::expect_disconnect(&mut live, ReasonCode::ADMINISTRATIVE_ACTION).await;
    let (_, ack) = m2m_test::raw_connect(node.mqtt, m2m_test::v5_connect("press-7")).await;
    assert_eq!(ack.reason_code, ReasonCode::BANNED);
    node.stop().await;
}

#[tokio::test]
async fn with_the_store_in_use_the_cli_falls_back_to_the_configured_api_of_the_running_node() {
    let dir = TempDir::new("cli-fallback");
    let d = dir.as_str();
    let listen = format!("127.0.0.1:{}", m2m_test::free_port());
    let env = [("M2M_HTTP_LISTEN", listen.as_str())];
    let node = RunningNode::start(d, &env).await;
    assert_eq!(node.api.to_string(), listen);

    let added = ok_env(&["device", "--data-dir", d, "add", "lamp-1", "--password", "pw"], &env).await;
    assert_eq!(added.trim(), "added device lamp-1");
    assert_eq!(login(node.mqtt, "lamp-1", "pw").await, Ok(()));
    ok_env(
        &["quarantine", "--data-dir", d, "add", "--client-id", "x", "--mode", "ban", "--reason", "r"],
        &env,
    )
    .await;
    // Refusals are the running node's; none for this client yet.
    assert_eq!(ok_env(&["quarantine", "--data-dir", d, "refusals", "x"], &env).await, "");
    // The configuration file is read as the node reads it.
    let config = dir.path().join("m2m.toml");
    std::fs::write(&config, format!("[node]\ndata_dir = {d:?}\n\n[http]\nlisten = {listen:?}\n")).unwrap();
    let mut cmd = m2m(&["audit", "--config", config.to_str().unwrap(), "list"]);
    cmd.env_remove("M2M_HTTP_LISTEN");
    let out = run(cmd).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let audit = text(&out.stdout);
    assert_eq!(
        audit_actions(&audit),
        ["operator via loopback quarantine.add 1", "loopback device.add lamp-1"],
        "audited once, by the node: {audit}"
    );

    // No API where the configuration says: both problems named.
    let elsewhere = format!("127.0.0.1:{}", m2m_test::free_port());
    let err = fails_env(&["device", "--data-dir", d, "list"], &[("M2M_HTTP_LISTEN", &elsewhere)]).await;
    assert!(
        err.contains(&format!("the store in {d}")) && err.contains("is in use by a running node"),
        "{err}"
    );
    assert!(err.contains(&format!("cannot connect to the HTTP API at http://{elsewhere}")), "{err}");
    let err = fails_env(&["device", "--data-dir", d, "list"], &[("M2M_HTTP_ENABLED", "false")]).await;
    assert!(err.contains("http.enabled = false"), "{err}");
    node.stop().await;
}

#[tokio::test]
async fn a_node_with_an_api_token_serves_the_cli_only_with_that_token() {
    let dir = TempDir::new("cli-token");
    let d = dir.as_str();
    let listen = format!("127.0.0.1:{}", m2m_test::free_port());
    let node =
        RunningNode::start(d, &[("M2M_HTTP_LISTEN", &listen), ("M2M_HTTP_TOKEN", "s3cret-token")]).await;
    let url = node.url();

    let err = fails(&with_api(&url, &["device", "list"])).await;
    assert!(err.contains(&format!("the HTTP API at {url} answered 401 Unauthorized")), "{err}");
    assert!(err.contains("log in, or send `Authorization: Bearer <token>`"), "{err}");
    assert!(err.contains("--token or M2M_HTTP_TOKEN"), "{err}");
    let err = fails(&with_api(&url, &["device", "--token", "wrong", "list"])).await;
    assert!(err.contains("401 Unauthorized: the token is not valid"), "{err}");

    let added = ok(&with_api(&url, &["device", "--token", "s3cret-token", "add", "lamp-1"])).await;
    assert_eq!(added.trim(), "added device lamp-1");
    // Both from the environment.
    let env = [("M2M_API", url.as_str()), ("M2M_HTTP_TOKEN", "s3cret-token")];
    assert!(ok_env(&["device", "list"], &env).await.starts_with("lamp-1\t"));

    // Found through the configuration, with the configuration's token, unless --token says otherwise.
    let config = [("M2M_HTTP_LISTEN", listen.as_str()), ("M2M_HTTP_TOKEN", "s3cret-token")];
    assert!(ok_env(&["device", "--data-dir", d, "list"], &config).await.starts_with("lamp-1\t"));
    let err = fails_env(&["device", "--data-dir", d, "--token", "wrong", "list"], &config).await;
    assert!(err.contains("is in use by a running node") && err.contains("the token is not valid"), "{err}");
    let err = fails_env(&["device", "--data-dir", d, "list"], &config[..1]).await;
    assert!(err.contains("is in use by a running node") && err.contains("401 Unauthorized"), "{err}");
    node.stop().await;
}

#[tokio::test]
async fn the_api_address_must_be_plain_http_and_reachable() {
    let err = fails(&["device", "--api", "https://127.0.0.1:8443", "list"]).await;
    assert!(err.contains("invalid API URL \"https://127.0.0.1:8443\": https is not supported"), "{err}");
    let err = fails(&["device", "--api", "127.0.0.1:8080", "list"]).await;
    assert!(err.contains("expected an http:// URL"), "{err}");
    let nobody = format!("http://127.0.0.1:{}", m2m_test::free_port());
    let err = fails(&["group", "--api", &nobody, "list"]).await;
    assert!(err.contains(&format!("cannot connect to the HTTP API at {nobody}: ")), "{err}");
    // M2M_API is the CLI's, not a setting of the node's configuration.
    let out = run_env(&["node", "--print-config"], &[("M2M_API", &nobody)]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
}
