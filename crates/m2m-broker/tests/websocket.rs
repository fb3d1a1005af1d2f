//! MQTT over WebSocket and secure WebSocket, driven by an independent client (Eclipse Paho for
//! Python, installed by the test command) and checked against a plain TCP subscriber.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use m2m_broker::{Config, Listener, TlsFiles, Transport};
use m2m_codec::QoS;
use m2m_test::{expect_raw_publish, raw_connect_ok, raw_subscribe, v5_connect, TempDir, TestBroker};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A Paho client over WebSocket: subscribes to `ws/#`, publishes `payload` on `ws/<tag>` at QoS 1,
/// and prints what it receives back. Exits non-zero on any failure or after 10 s.
const PAHO: &str = r#"
import ssl, sys, threading
import paho.mqtt.client as mqtt
port, path, tag, payload, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
got = threading.Event()
def on_connect(c, userdata, flags, reason, props):
    if reason.is_failure:
        print("connect refused", reason, flush=True); sys.exit(2)
    c.subscribe("ws/#", qos=1)
def on_subscribe(c, userdata, mid, reasons, props):
    c.publish("ws/" + tag, payload, qos=1)
def on_message(c, userdata, msg):
    print(msg.topic, msg.payload.decode(), flush=True); got.set()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-" + tag, transport="websockets", protocol=mqtt.MQTTv5)
c.ws_set_options(path=path)
if ca != "-":
    c.tls_set(ca_certs=ca)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("localhost", port, keepalive=30)
c.loop_start()
ok = got.wait(10)
c.disconnect(); c.loop_stop()
sys.exit(0 if ok else 1)
"#;

fn tls_files(dir: &Path) -> (TlsFiles, std::path::PathBuf) {
    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_key = KeyPair::generate().unwrap();
    std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server.distinguished_name.push(DnType::CommonName, "m2m node");
    let key = KeyPair::generate().unwrap();
    std::fs::write(dir.join("server.pem"), server.signed_by(&key, &issuer).unwrap().pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    let files = TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: None,
        require_client_cert: false,
    };
    (files, dir.join("ca.pem"))
}

async fn paho(dir: &Path, addr: SocketAddr, path: &str, tag: &str, ca: Option<&Path>) -> String {
    let script = dir.join("paho_ws.py");
    std::fs::write(&script, PAHO).unwrap();
    let ca = ca.map_or("-".to_owned(), |p| p.display().to_string());
    let port = addr.port().to_string();
    let run = tokio::process::Command::new("python3")
        .arg(&script)
        .args([port.as_str(), path, tag, "hello", ca.as_str()])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("paho did not finish in 20 s")
        .expect("run python3 (the test command installs paho-mqtt)");
    assert!(
        out.status.success(),
        "paho over {path} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn paho_over_websocket_and_secure_websocket_talks_with_a_tcp_client() {
    let dir = TempDir::new("websocket");
    let (files, ca) = tls_files(dir.path());
    let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = Config::for_tests();
    config.listeners = vec![
        Listener { addr: localhost, transport: Transport::Ws { path: "/mqtt".into() } },
        Listener { addr: localhost, transport: Transport::Wss { tls: files, path: "/secure".into() } },
    ];
    let broker = TestBroker::start_with(config).await;
    assert_eq!(broker.listeners.iter().map(|l| l.1).collect::<Vec<_>>(), ["tcp", "ws", "wss"]);
    let (ws, wss) = (broker.listeners[1].0, broker.listeners[2].0);
    let mut tcp = raw_connect_ok(broker.addr, v5_connect("tcp-watcher")).await;
    raw_subscribe(&mut tcp, 1, &[("ws/#", QoS::AtLeastOnce)]).await;

    assert_eq!(paho(dir.path(), ws, "/mqtt", "plain", None).await.trim(), "ws/plain hello");
    let p = expect_raw_publish(tcp.recv().await);
    assert_eq!((&*p.topic, &p.payload[..]), ("ws/plain", &b"hello"[..]));
    tcp.send(&m2m_codec::Packet::PubAck(m2m_codec::Ack::new(p.packet_id.unwrap()))).await;

    assert_eq!(paho(dir.path(), wss, "/secure", "secure", Some(&ca)).await.trim(), "ws/secure hello");
    let p = expect_raw_publish(tcp.recv().await);
    assert_eq!((&*p.topic, &p.payload[..]), ("ws/secure", &b"hello"[..]));
    broker.stop().await;
}

#[tokio::test]
async fn a_websocket_request_for_another_path_is_refused() {
    let mut config = Config::for_tests();
    let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
    config.listeners = vec![Listener { addr: localhost, transport: Transport::Ws { path: "/mqtt".into() } }];
    let broker = TestBroker::start_with(config).await;
    let ws = broker.listeners[1].0;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{ws}/other").into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(ws).await.unwrap();
    let err = tokio_tungstenite::client_async(request, tcp).await.unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    // Counted once the node has answered: wait for it.
    let started = std::time::Instant::now();
    while broker.metrics.connections_rejected.load(std::sync::atomic::Ordering::Relaxed) != 1 {
        assert!(started.elapsed() < Duration::from_secs(5), "the refusal was not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.stop().await;
}
