//! The built `m2m` binary, run as a child process: configuration output and errors, and a node that
//! serves MQTT and stops cleanly on SIGTERM.
//!
//! Every child is killed if the test ends early (`kill_on_drop`) and every wait has a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use m2m_codec::{ConnAck, Connect, ConnectProperties, Disconnect, Packet, ProtocolVersion, ReasonCode};
use m2m_test::{free_port, within, RawClient, TempDir};

mod common;
use common::{m2m, run, text, wait_until_listening};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet as RPacket, QoS};

#[tokio::test]
async fn print_config_shows_the_defaults_as_toml() {
    let output = run(m2m(&["node", "--print-config"])).await;
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "exit {}: {}", output.status, text(&output.stderr));
    assert!(stdout.contains(r#"listen = "0.0.0.0:1883""#), "{stdout}");
    let table: toml::Table = stdout.parse().expect("the output is TOML");
    assert_eq!(table["mqtt"]["listen"].as_str(), Some("0.0.0.0:1883"));
    assert_eq!(table["mqtt"]["receive_maximum"].as_integer(), Some(1024));
}

#[tokio::test]
async fn print_config_reflects_flags_and_the_environment() {
    let mut cmd = m2m(&["node", "--print-config", "--listen", "127.0.0.1:1999"]);
    cmd.env("M2M_MQTT_MAX_QUEUED", "42");
    let output = run(cmd).await;
    assert!(output.status.success(), "exit {}: {}", output.status, text(&output.stderr));
    let table: toml::Table = text(&output.stdout).parse().expect("the output is TOML");
    assert_eq!(table["mqtt"]["listen"].as_str(), Some("127.0.0.1:1999"));
    assert_eq!(table["mqtt"]["max_queued"].as_integer(), Some(42));
}

#[tokio::test]
async fn an_unknown_key_in_the_config_file_is_an_error_naming_the_key() {
    let dir = TempDir::new("bad-key");
    let file = dir.path().join("m2m.toml");
    std::fs::write(&file, "[mqtt]\nmax_queue_lenght = 5\n").expect("write config");
    let output = run(m2m(&["node", "--config", file.to_str().expect("UTF-8 path"), "--print-config"])).await;
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "a misspelt key must not be ignored; stdout: {}", text(&output.stdout));
    assert!(stderr.contains("max_queue_lenght"), "stderr does not name the key: {stderr}");
}

#[tokio::test]
async fn receive_maximum_0_from_the_environment_is_an_error_naming_the_setting() {
    let dir = TempDir::new("bad-env");
    // Not --print-config: the node must refuse to start (a node that started anyway is killed at the
    // deadline and fails the test).
    let mut cmd = m2m(&["node", "--listen", "127.0.0.1:0", "--data-dir", dir.as_str()]);
    cmd.env("M2M_MQTT_RECEIVE_MAXIMUM", "0");
    let output = run(cmd).await;
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "receive maximum 0 is a protocol error in MQTT 5 and must be refused");
    assert!(stderr.contains("mqtt.receive_maximum"), "stderr does not name the setting: {stderr}");
}

/// A `rumqttc` subscriber and a publisher exchange one QoS 1 message through the node.
async fn round_trip(addr: SocketAddr) {
    let connect = |id: &str| {
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        AsyncClient::new(options, 16)
    };
    let (sub, mut sub_loop) = connect("cli-sub");
    within(async {
        loop {
            match sub_loop.poll().await.expect("subscriber connection") {
                Event::Incoming(RPacket::ConnAck(_)) => {
                    sub.subscribe("cli/+/temp", QoS::AtLeastOnce).await.expect("subscribe");
                }
                Event::Incoming(RPacket::SubAck(_)) => break,
                _ => {}
            }
        }
    })
    .await;
    let (publisher, mut pub_loop) = connect("cli-pub");
    within(async {
        loop {
            match pub_loop.poll().await.expect("publisher connection") {
                Event::Incoming(RPacket::ConnAck(_)) => {
                    publisher
                        .publish("cli/boiler/temp", QoS::AtLeastOnce, false, &b"81.5"[..])
                        .await
                        .expect("publish");
                }
                Event::Incoming(RPacket::PubAck(_)) => break,
                _ => {}
            }
        }
    })
    .await;
    let got = within(async {
        loop {
            if let Event::Incoming(RPacket::Publish(p)) =
                sub_loop.poll().await.expect("subscriber connection")
            {
                return p;
            }
        }
    })
    .await;
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("cli/boiler/temp", &b"81.5"[..]));
}

#[tokio::test]
async fn a_node_serves_mqtt_and_stops_cleanly_on_sigterm() {
    let dir = TempDir::new("node");
    let data_dir = dir.path().join("data");
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listen = addr.to_string();
    let args = [
        "node",
        "--listen",
        &listen,
        "--data-dir",
        data_dir.to_str().expect("UTF-8 path"),
        "--log-level",
        "info",
    ];
    let mut node = m2m(&args).spawn().expect("start the node");
    wait_until_listening(&mut node, addr).await;
    assert!(data_dir.is_dir(), "the node creates its data directory");

    round_trip(addr).await;

    let mut raw = RawClient::connect(addr, ProtocolVersion::V5).await;
    raw.send(&Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 30,
        client_id: Arc::from("watching-shutdown"),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    })))
    .await;
    match raw.recv().await {
        Some(Packet::ConnAck(ConnAck { reason_code: ReasonCode::SUCCESS, .. })) => {}
        other => panic!("expected a successful CONNACK, got {other:?}"),
    }

    let pid = node.id().expect("the node is running").to_string();
    let kill = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
    assert!(kill.success(), "kill -TERM {pid} failed");

    match &raw.until_closed().await[..] {
        [Packet::Disconnect(Disconnect { reason_code, .. })] => {
            assert_eq!(*reason_code, ReasonCode::SERVER_SHUTTING_DOWN, "v5 clients are told why (0x8B)");
        }
        other => panic!("expected DISCONNECT 0x8B then close, got {other:?}"),
    }
    let output = match tokio::time::timeout(Duration::from_secs(5), node.wait_with_output()).await {
        Ok(output) => output.expect("wait for the node"),
        Err(_) => panic!("the node did not exit within 5 s of SIGTERM; killed"),
    };
    assert_eq!(output.status.code(), Some(0), "clean exit after SIGTERM; stderr: {}", text(&output.stderr));
    let log = text(&output.stderr);
    assert!(
        log.contains("anonymous clients are accepted from loopback addresses only"),
        "the start-up log says who may connect without credentials: {log}"
    );
}

#[tokio::test]
async fn a_node_on_defaults_starts_even_when_the_default_http_port_is_taken() {
    // Taken by this test (or by something else already: either way the node must start).
    let _taken = std::net::TcpListener::bind("127.0.0.1:8080");
    let dir = TempDir::new("http-port-taken");
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd =
        m2m(&["node", "--listen", &addr.to_string(), "--data-dir", dir.as_str(), "--log-level", "warn"]);
    cmd.env_remove("M2M_HTTP_LISTEN");
    let mut node = cmd.spawn().expect("start the node");
    wait_until_listening(&mut node, addr).await;
    round_trip(addr).await;
    node.start_kill().expect("stop the node");
    let output = node.wait_with_output().await.expect("wait for the node");
    let log = text(&output.stderr);
    assert!(log.contains("HTTP API not served: its default address is in use"), "{log}");
}
