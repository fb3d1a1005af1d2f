//! `m2m pub` and `m2m sub` as a user runs them, over real sockets: against a node (the built binary)
//! and against a real Mosquitto (`/usr/sbin/mosquitto`, started per test on a loopback port), and
//! side by side with mosquitto_pub and mosquitto_sub, so that our codec is not only checking itself.
//! QoS 0/1/2, retained messages, MQTT 3.1.1 and 5 with properties (checked in the JSON output),
//! standard input line by line, -C and -W, the exit codes of a refused connection, of a network
//! failure and of bad arguments, a will published when the publisher is killed, TLS with a client
//! certificate, --insecure, and WebSocket (plain and over TLS).
//!
//! The tests fail (they do not skip) when Mosquitto or its clients are not installed.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use common::{m2m, text, RunningNode, EXIT_LIMIT};
use m2m_test::free_port;
use m2m_test::Mosquitto;
use m2m_test::TempDir;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::task::JoinHandle;

/// What a finished command left.
struct Done {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Done {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    #[track_caller]
    fn ok(&self) -> &str {
        assert!(self.status.success(), "exit {}: {}", self.status, self.stderr);
        &self.stdout
    }
}

async fn finish(child: Child) -> Done {
    let output = tokio::time::timeout(EXIT_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the command did not exit within {EXIT_LIMIT:?}"))
        .unwrap();
    Done { status: output.status, stdout: text(&output.stdout), stderr: text(&output.stderr) }
}

/// Runs `m2m pub` with `args` to its end.
async fn publish(args: &[&str]) -> Done {
    finish(m2m(&[&["pub"], args].concat()).spawn().unwrap()).await
}

/// Runs `m2m pub` with `input` on its standard input.
async fn publish_stdin(args: &[&str], input: &[u8]) -> Done {
    let mut child = m2m(&[&["pub"], args].concat()).stdin(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    finish(child).await
}

/// A subscriber (`m2m sub` or mosquitto_sub, run with `-d`) whose subscription is in place.
struct Subscriber {
    child: Child,
    /// Standard error so far, read until the SUBACK; the rest is read by `drain`.
    stderr: String,
    drain: JoinHandle<String>,
}

impl Subscriber {
    /// Starts `program` with `args` and `-d`, and waits until its debug output shows the SUBACK.
    async fn start(mut command: Command) -> Subscriber {
        let mut child = command.arg("-d").spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap());
        let mut stderr = String::new();
        let subscribed = tokio::time::timeout(EXIT_LIMIT, async {
            loop {
                let mut line = String::new();
                if lines.read_line(&mut line).await.unwrap() == 0 {
                    return false;
                }
                stderr.push_str(&line);
                if line.contains("received SUBACK") {
                    return true;
                }
            }
        })
        .await;
        assert_eq!(subscribed, Ok(true), "no SUBACK: {stderr}");
        let drain = tokio::spawn(read_rest(lines));
        Subscriber { child, stderr, drain }
    }

    async fn m2m(args: &[&str]) -> Subscriber {
        Subscriber::start(m2m(&[&["sub"], args].concat())).await
    }

    async fn finish(self) -> Done {
        let mut done = finish(self.child).await;
        done.stderr = self.stderr + &self.drain.await.unwrap() + &done.stderr;
        done
    }
}

/// mosquitto_sub, run with `-d`, whose subscription is in place. Its debug output goes to standard
/// output, between the messages.
///
/// It runs under `stdbuf` (GNU coreutils).
struct MosquittoSub {
    child: Child,
    lines: BufReader<ChildStdout>,
}

impl MosquittoSub {
    async fn start(args: &[&str]) -> MosquittoSub {
        // Its standard output is a pipe, which stdio buffers: line buffering shows the SUBACK at once.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(args)
            .arg("-d")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("run mosquitto_sub (Debian package mosquitto-clients)");
        let mut lines = BufReader::new(child.stdout.take().unwrap());
        let mut seen = String::new();
        tokio::time::timeout(EXIT_LIMIT, async {
            while !seen.contains("received SUBACK") {
                assert!(lines.read_line(&mut seen).await.unwrap() > 0, "mosquitto_sub ended: {seen}");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no SUBACK: {seen}"));
        MosquittoSub { child, lines }
    }

    /// What it printed other than its debug output, once it exits.
    async fn finish(mut self) -> String {
        let mut rest = String::new();
        tokio::time::timeout(EXIT_LIMIT, self.lines.read_to_string(&mut rest)).await.unwrap().unwrap();
        let status = self.child.wait().await.unwrap();
        assert!(status.success(), "mosquitto_sub: {status}: {rest}");
        rest.lines()
            .filter(|l| !l.starts_with("Client ") && !l.starts_with("Subscribed "))
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

async fn read_rest(mut from: BufReader<ChildStderr>) -> String {
    let mut rest = String::new();
    let _ = from.read_to_string(&mut rest).await;
    rest
}

/// Runs mosquitto_pub with `args` to its end.
async fn mosquitto_pub(args: &[&str]) -> Done {
    let child = Command::new("mosquitto_pub")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run mosquitto_pub (Debian package mosquitto-clients)");
    finish(child).await
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))).collect()
}

/// QoS 0, 1 and 2 with MQTT 3.1.1 and 5 on the broker at `port`, then a retained message, shown
/// to a later subscriber but not with -R.
async fn qos_versions_and_retain(port: &str) {
    for version in ["5", "311"] {
        for qos in ["0", "1", "2"] {
            let topic = format!("t/{version}/{qos}");
            let sub =
                Subscriber::m2m(&["-p", port, "-V", version, "-q", qos, "-t", "t/#", "-C", "1", "-v"]).await;
            let payload = format!("m-{version}-{qos}");
            publish(&["-p", port, "-V", version, "-q", qos, "-t", &topic, "-m", &payload]).await.ok();
            let done = sub.finish().await;
            assert_eq!(done.ok(), format!("{topic} {payload}\n"));
            let received = if qos == "0" { "received PUBLISH" } else { "sent PUB" };
            assert!(done.stderr.contains(received), "{}", done.stderr);
        }
    }
    publish(&["-p", port, "-q", "1", "-r", "-t", "r/1", "-m", "{\"on\":true}"]).await.ok();
    let out = publish_then_sub(port, &["-t", "r/#", "--format", "json", "-C", "1", "-q", "1"]).await;
    assert_eq!(
        json_lines(&out),
        [json!({"topic": "r/1", "qos": 1, "retain": true, "payload": {"on": true}})]
    );
    let out = publish_then_sub(port, &["-V", "311", "-t", "r/#", "-C", "1", "-q", "2"]).await;
    assert_eq!(out, "{\"on\":true}\n");
    // -R: the retained message is stale; the subscriber sees only the live one.
    let sub = Subscriber::m2m(&["-p", port, "-t", "r/#", "-R", "-C", "1", "--format", "json"]).await;
    publish(&["-p", port, "-t", "r/1", "-m", "live"]).await.ok();
    let done = sub.finish().await;
    assert_eq!(
        json_lines(done.ok()),
        [json!({"topic": "r/1", "qos": 0, "retain": false, "payload": "live", "encoding": "text"})]
    );
    // --retained-only prints the retained message and stops at the first live one.
    let sub = Subscriber::m2m(&["-p", port, "-t", "r/#", "--retained-only", "-q", "1"]).await;
    publish(&["-p", port, "-t", "r/1", "-m", "live again"]).await.ok();
    assert_eq!(sub.finish().await.ok(), "{\"on\":true}\n");
    // An empty retained message clears it.
    publish(&["-p", port, "-r", "-t", "r/1", "-n"]).await.ok();
    let done = finish(m2m(&["sub", "-p", port, "-t", "r/#", "-W", "1"]).spawn().unwrap()).await;
    assert_eq!((done.code(), done.stdout.as_str()), (Some(27), ""));
}

/// Runs `m2m sub -p port args` to its end (for retained messages, already there).
async fn publish_then_sub(port: &str, args: &[&str]) -> String {
    finish(m2m(&[&["sub", "-p", port], args].concat()).spawn().unwrap()).await.ok().to_owned()
}

#[tokio::test]
async fn qos_0_1_2_retain_and_both_versions_through_a_node() {
    let dir = TempDir::new("pubsub-node");
    let node = RunningNode::with_config(dir.path(), "").await;
    qos_versions_and_retain(&node.mqtt_port()).await;
}

#[tokio::test]
async fn qos_0_1_2_retain_and_both_versions_through_mosquitto() {
    let dir = TempDir::new("pubsub-mosquitto");
    let broker = Mosquitto::start(dir.path(), 0, "").await;
    qos_versions_and_retain(&broker.port.to_string()).await;
}

/// MQTT 5 properties from `m2m pub` come out of `m2m sub --format json` as they went in.
async fn properties_round_trip(port: &str) {
    let sub = Subscriber::m2m(&["-p", port, "-t", "p/#", "--format", "json", "-C", "2", "-q", "2"]).await;
    publish(&[
        "-p",
        port,
        "-t",
        "p/1",
        "-q",
        "1",
        "-m",
        "{\"t\": 21.50}",
        "--prop",
        "unit=C",
        "--prop",
        "unit=F",
        "--prop",
        "site=a=b",
        "--content-type",
        "application/json",
        "--response-topic",
        "p/reply",
        "--correlation-data",
        "req-1",
        "--message-expiry",
        "300",
    ])
    .await
    .ok();
    // Binary payloads come out in base64; without properties, none are printed.
    let file = std::env::temp_dir().join(format!("m2m-pubsub-bin-{}-{port}", std::process::id()));
    std::fs::write(&file, b"\x00\xff\x01").unwrap();
    publish(&["-p", port, "-t", "p/2", "-q", "2", "-f", file.to_str().unwrap()]).await.ok();
    std::fs::remove_file(&file).unwrap();
    let done = sub.finish().await;
    let lines = json_lines(done.ok());
    assert!(
        done.stdout.contains("\"payload\":{\"t\": 21.50}"),
        "the JSON payload as it came: {}",
        done.stdout
    );
    let first = &lines[0];
    let expiry = first["message_expiry"].as_u64().unwrap();
    assert!((290..=300).contains(&expiry), "{first}");
    assert_eq!(
        first,
        &json!({
            "topic": "p/1", "qos": 1, "retain": false, "payload": {"t": 21.5},
            "content_type": "application/json", "response_topic": "p/reply",
            "correlation_data": "cmVxLTE=", "message_expiry": expiry,
            "user_properties": [["unit", "C"], ["unit", "F"], ["site", "a=b"]],
        })
    );
    assert_eq!(
        lines[1],
        json!({"topic": "p/2", "qos": 2, "retain": false, "payload": "AP8B", "encoding": "base64"})
    );
}

#[tokio::test]
async fn mqtt5_properties_round_trip_through_a_node_and_mosquitto() {
    let dir = TempDir::new("pubsub-props");
    let node = RunningNode::with_config(dir.path(), "").await;
    properties_round_trip(&node.mqtt_port()).await;
    let broker = Mosquitto::start(dir.path(), 0, "").await;
    properties_round_trip(&broker.port.to_string()).await;
}

#[tokio::test]
async fn standard_input_line_by_line_count_and_timeout() {
    let dir = TempDir::new("pubsub-lines");
    let node = RunningNode::with_config(dir.path(), "").await;
    let port = node.mqtt_port();
    let sub = Subscriber::m2m(&["-p", &port, "-t", "lines", "-C", "3", "-q", "1"]).await;
    publish_stdin(&["-p", &port, "-t", "lines", "-q", "1", "-l"], b"first\r\nsecond\n\nthird\nfourth")
        .await
        .ok();
    assert_eq!(sub.finish().await.ok(), "first\nsecond\nthird\n", "-C 3: three messages, then exit");

    // -s: all of standard input is one message; -N: no newline after it.
    let sub = Subscriber::m2m(&["-p", &port, "-t", "whole", "-C", "1", "-N"]).await;
    publish_stdin(&["-p", &port, "-t", "whole", "-s"], b"a\nb\n").await.ok();
    assert_eq!(sub.finish().await.ok(), "a\nb\n");

    // --repeat: the same message again.
    let sub = Subscriber::m2m(&["-p", &port, "-t", "again", "-C", "3", "-v"]).await;
    publish(&["-p", &port, "-t", "again", "-m", "x", "--repeat", "3", "--repeat-delay", "0.05", "-q", "2"])
        .await
        .ok();
    assert_eq!(sub.finish().await.ok(), "again x\nagain x\nagain x\n");

    // -W: exit code 27 when the time runs out, with what arrived before printed.
    let sub = Subscriber::m2m(&["-p", &port, "-t", "slow", "-W", "2", "-C", "5"]).await;
    publish(&["-p", &port, "-t", "slow", "-m", "one"]).await.ok();
    let done = sub.finish().await;
    assert_eq!((done.code(), done.stdout.as_str()), (Some(27), "one\n"), "{}", done.stderr);
    assert!(done.stderr.contains("timed out after 2 s"), "{}", done.stderr);
}

#[tokio::test]
async fn exit_codes_tell_refusal_network_failure_and_bad_arguments_apart() {
    let dir = TempDir::new("pubsub-codes");
    let data = dir.path().join("data");
    let added = common::run(m2m(&[
        "device",
        "--data-dir",
        data.to_str().unwrap(),
        "add",
        "lamp-1",
        "--password",
        "s3cret",
    ]))
    .await;
    assert!(added.status.success(), "{}", text(&added.stderr));
    let node = RunningNode::with_config(dir.path(), "").await;
    let port = node.mqtt_port();

    publish(&["-p", &port, "-u", "lamp-1", "-P", "s3cret", "-t", "lamps/lamp-1", "-m", "on"]).await.ok();
    for version in ["5", "311"] {
        let done =
            publish(&["-p", &port, "-V", version, "-u", "lamp-1", "-P", "wrong", "-t", "x", "-m", "on"])
                .await;
        assert_eq!(done.code(), Some(4), "refused: {}", done.stderr);
        assert!(
            done.stderr.contains("refused the connection: 0x86 (Bad User Name or Password)"),
            "{}",
            done.stderr
        );
        let done = finish(
            m2m(&["sub", "-p", &port, "-V", version, "-u", "lamp-1", "-P", "wrong", "-t", "x"])
                .spawn()
                .unwrap(),
        )
        .await;
        assert_eq!(done.code(), Some(4), "{}", done.stderr);
    }
    let closed = free_port().to_string();
    let done = publish(&["-p", &closed, "-t", "x", "-m", "on"]).await;
    assert_eq!(done.code(), Some(3), "network failure: {}", done.stderr);
    assert!(done.stderr.contains(&format!("cannot connect to mqtt://localhost:{closed}")), "{}", done.stderr);

    let bad: [(&[&str], &str); 8] = [
        (&["-t", "x"], "no payload"),
        (&["-t", "x", "-m", "a", "-n"], "two payloads"),
        (&["-t", "x/#", "-m", "a"], "a filter is not a topic"),
        (&["-t", "x", "-m", "a", "-V", "311", "--prop", "k=v"], "properties need MQTT 5"),
        (&["-t", "x", "-m", "a", "-c"], "a kept session needs a client id"),
        (&["-t", "x", "-m", "a", "--url", "http://h"], "not an MQTT URL"),
        (&["-t", "x", "-m", "a", "--cafile", "ca.pem", "--url", "mqtt://h"], "TLS file without TLS"),
        (&["-t", "x", "-m", "a", "-q", "3"], "no such QoS"),
    ];
    for (args, why) in bad {
        let done = publish(args).await;
        assert_eq!(done.code(), Some(2), "{why}: {args:?}: {}", done.stderr);
    }
    let done = finish(m2m(&["sub", "-p", &port, "-t", "a/#/b"]).spawn().unwrap()).await;
    assert_eq!(done.code(), Some(2), "{}", done.stderr);

    for tool in ["pub", "sub"] {
        let help = finish(m2m(&[tool, "--help"]).spawn().unwrap()).await;
        for line in ["Exit codes:", "  3   network failure", "  4   connection refused", "  27  sub -W"] {
            assert!(help.ok().contains(line), "{tool} --help lacks {line:?}: {}", help.stdout);
        }
    }
}

#[tokio::test]
async fn the_will_is_published_when_the_publisher_is_killed() {
    let dir = TempDir::new("pubsub-will");
    let node = RunningNode::with_config(dir.path(), "").await;
    let port = node.mqtt_port();
    let sub = Subscriber::m2m(&["-p", &port, "-t", "status/#", "-C", "2", "-v", "-q", "1"]).await;
    // A publisher waiting for lines on standard input keeps its connection open.
    let mut publisher = m2m(&[
        "pub",
        "-p",
        &port,
        "-d",
        "-t",
        "status/pump",
        "-l",
        "-q",
        "1",
        "--will-topic",
        "status/pump",
        "--will-payload",
        "gone",
        "--will-qos",
        "1",
    ])
    .stdin(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdin = publisher.stdin.take().unwrap();
    stdin.write_all(b"running\n").await.unwrap();
    let mut stderr = BufReader::new(publisher.stderr.take().unwrap());
    let mut seen = String::new();
    tokio::time::timeout(EXIT_LIMIT, async {
        while !seen.contains("received PUBACK") {
            assert!(stderr.read_line(&mut seen).await.unwrap() > 0, "the publisher ended: {seen}");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no PUBACK: {seen}"));
    publisher.kill().await.unwrap();
    assert_eq!(sub.finish().await.ok(), "status/pump running\nstatus/pump gone\n");

    // A publisher that ends normally sends DISCONNECT: no will.
    let sub = Subscriber::m2m(&["-p", &port, "-t", "status/#", "-W", "2", "-v"]).await;
    publish(&[
        "-p",
        &port,
        "-t",
        "status/fan",
        "-m",
        "bye",
        "--will-topic",
        "status/fan",
        "--will-payload",
        "gone",
    ])
    .await
    .ok();
    let done = sub.finish().await;
    assert_eq!((done.code(), done.stdout.as_str()), (Some(27), "status/fan bye\n"));
}

/// `m2m cert dev` in `dir`: a CA, the node's certificate and the device `lamp-1`'s.
async fn certificates(dir: &Path) {
    let out = common::run(m2m(&["cert", "dev", "--out", dir.to_str().unwrap(), "--device", "lamp-1"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[tokio::test]
async fn tls_with_a_client_certificate_and_websocket_plain_and_secure() {
    let dir = TempDir::new("pubsub-tls");
    let certs = dir.path().join("certs");
    certificates(&certs).await;
    let file = |name: &str| certs.join(name).to_str().unwrap().to_owned();
    let (tls, ws, wss) = (free_port(), free_port(), free_port());
    // The TLS listener is on 127.0.0.2, an address its certificate does not name (for --insecure).
    let config = format!(
        "[[listeners]]\nbind = \"127.0.0.2:{tls}\"\ntransport = \"tls\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n\
         tls_client_ca = {ca:?}\nrequire_client_cert = true\n\
         [[listeners]]\nbind = \"127.0.0.1:{ws}\"\ntransport = \"ws\"\n\
         [[listeners]]\nbind = \"127.0.0.1:{wss}\"\ntransport = \"wss\"\npath = \"/ws/mqtt\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n",
        cert = file("server.pem"),
        key = file("server.key"),
        ca = file("ca.pem"),
    );
    let node = RunningNode::with_config(dir.path(), &config).await;
    let wait = |port: u16, ip: &str| {
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        async move {
            tokio::time::timeout(EXIT_LIMIT, async {
                while tokio::net::TcpStream::connect(addr).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .unwrap();
        }
    };
    wait(tls, "127.0.0.2").await;
    wait(ws, "127.0.0.1").await;
    wait(wss, "127.0.0.1").await;

    let mtls_url = format!("mqtts://127.0.0.2:{tls}");
    let (ca, cert, key) = (file("ca.pem"), file("lamp-1.pem"), file("lamp-1.key"));
    let mtls = |url: &str| -> Vec<String> {
        ["--url", url, "--cafile", &ca, "--cert", &cert, "--key", &key, "--insecure"]
            .map(String::from)
            .to_vec()
    };
    let ws_url = format!("ws://127.0.0.1:{ws}");
    let wss_url = format!("wss://localhost:{wss}/ws/mqtt");
    // Every transport publishes once; the subscriber, over mutual TLS, gets each message.
    let sub_args =
        [mtls(&mtls_url), ["-t", "secure/#", "-C", "3", "-v", "-q", "2"].map(String::from).to_vec()].concat();
    let sub = Subscriber::m2m(&sub_args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let pub_args =
        [mtls(&mtls_url), ["-t", "secure/tls", "-m", "1", "-q", "1"].map(String::from).to_vec()].concat();
    publish(&pub_args.iter().map(String::as_str).collect::<Vec<_>>()).await.ok();
    publish(&["--url", &ws_url, "-t", "secure/ws", "-m", "2", "-q", "2", "-V", "311"]).await.ok();
    publish(&["--url", &wss_url, "--cafile", &ca, "-t", "secure/wss", "-m", "3", "-q", "1"]).await.ok();
    assert_eq!(sub.finish().await.ok(), "secure/tls 1\nsecure/ws 2\nsecure/wss 3\n");
    // Over WebSocket the subscriber works as well.
    let sub = Subscriber::m2m(&["--url", &ws_url, "-t", "w", "-C", "1"]).await;
    publish(&["-p", &node.mqtt_port(), "-t", "w", "-m", "over ws"]).await.ok();
    assert_eq!(sub.finish().await.ok(), "over ws\n");

    // Without --insecure the server's certificate does not name 127.0.0.2; without a client
    // certificate the node refuses the handshake; a CA that did not sign the server is refused.
    // All three are network failures.
    let no_insecure =
        publish(&["--url", &mtls_url, "--cafile", &ca, "--cert", &cert, "--key", &key, "-t", "x", "-m", "1"])
            .await;
    assert_eq!(no_insecure.code(), Some(3), "{}", no_insecure.stderr);
    assert!(no_insecure.stderr.contains("TLS handshake"), "{}", no_insecure.stderr);
    let no_cert =
        publish(&["--url", &mtls_url, "--cafile", &ca, "--insecure", "-t", "x", "-m", "1", "-q", "1"]).await;
    assert_eq!(no_cert.code(), Some(3), "{}", no_cert.stderr);
    let other = dir.path().join("other");
    certificates(&other).await;
    let other_ca = other.join("ca.pem");
    let done = publish(&[
        "--url",
        &wss_url,
        "--cafile",
        other_ca.to_str().unwrap(),
        "--insecure",
        "-t",
        "x",
        "-m",
        "1",
    ])
    .await;
    assert_eq!(done.code(), Some(3), "--insecure still verifies the chain: {}", done.stderr);
}

#[tokio::test]
async fn mosquitto_clients_and_ours_understand_each_other() {
    let dir = TempDir::new("pubsub-interop");
    let broker = Mosquitto::start(dir.path(), 0, "").await;
    let port = broker.port.to_string();
    // mosquitto_pub → m2m sub, MQTT 5 properties included.
    let sub = Subscriber::m2m(&["-p", &port, "-t", "i/#", "--format", "json", "-C", "2", "-q", "2"]).await;
    mosquitto_pub(&[
        "-p",
        &port,
        "-V",
        "5",
        "-q",
        "2",
        "-t",
        "i/1",
        "-m",
        "[1,2]",
        "-D",
        "publish",
        "user-property",
        "k",
        "v",
        "-D",
        "publish",
        "content-type",
        "application/json",
        "-D",
        "publish",
        "response-topic",
        "i/reply",
        "-D",
        "publish",
        "correlation-data",
        "c-9",
    ])
    .await
    .ok();
    mosquitto_pub(&["-p", &port, "-V", "311", "-q", "1", "-r", "-t", "i/2", "-m", "plain text"]).await.ok();
    let lines = json_lines(sub.finish().await.ok());
    assert_eq!(
        lines,
        [
            json!({"topic": "i/1", "qos": 2, "retain": false, "payload": [1, 2], "content_type": "application/json",
                   "response_topic": "i/reply", "correlation_data": "Yy05", "user_properties": [["k", "v"]]}),
            json!({"topic": "i/2", "qos": 1, "retain": false, "payload": "plain text", "encoding": "text"}),
        ]
    );

    // m2m pub → mosquitto_sub, with its own format for the properties.
    let sub = MosquittoSub::start(&[
        "-p",
        &port,
        "-V",
        "5",
        "-t",
        "o/#",
        "-q",
        "2",
        "-C",
        "3",
        "-F",
        "%t|%q|%r|%p|%C|%R|%D|%P",
    ])
    .await;
    publish(&[
        "-p",
        &port,
        "-t",
        "o/1",
        "-q",
        "2",
        "-m",
        "hello",
        "--prop",
        "k=v",
        "--content-type",
        "text/plain",
        "--response-topic",
        "o/reply",
        "--correlation-data",
        "c-1",
    ])
    .await
    .ok();
    publish(&["-p", &port, "-V", "311", "-t", "o/2", "-q", "1", "-m", "v3"]).await.ok();
    publish_stdin(&["-p", &port, "-t", "o/3", "-l"], b"line\n").await.ok();
    // libmosquitto hands a QoS 2 message over at its PUBREL, so it may come after later ones.
    let mut lines: Vec<String> = sub.finish().await.lines().map(String::from).collect();
    lines.sort();
    assert_eq!(lines, ["o/1|2|0|hello|text/plain|o/reply|c-1|k:v", "o/2|1|0|v3||||", "o/3|0|0|line||||"]);
    // The retained message of mosquitto_pub reaches m2m sub -V 311 too.
    assert_eq!(publish_then_sub(&port, &["-V", "311", "-t", "i/2", "-C", "1"]).await, "plain text\n");
}

#[tokio::test]
async fn a_kept_session_gets_what_was_published_while_it_was_away() {
    let dir = TempDir::new("pubsub-session");
    let node = RunningNode::with_config(dir.path(), "").await;
    let port = node.mqtt_port();
    for version in ["5", "311"] {
        let id = format!("keeper-{version}");
        let sub = ["-p", &port, "-V", version, "-c", "-i", &id, "-q", "1", "-t", "kept"];
        let away = finish(m2m(&[&["sub"], &sub[..], &["-W", "1"]].concat()).spawn().unwrap()).await;
        assert_eq!(away.code(), Some(27), "{}", away.stderr);
        publish(&["-p", &port, "-t", "kept", "-q", "1", "-m", "while away"]).await.ok();
        let back = finish(m2m(&[&["sub"], &sub[..], &["-C", "1"]].concat()).spawn().unwrap()).await;
        assert_eq!(back.ok(), "while away\n", "MQTT {version}");
    }
}
