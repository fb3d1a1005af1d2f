//! The operator's console, end to end: the real `m2m node` binary serves it, a simulated device
//! (an independent `rumqttc` client) publishes telemetry, and headless Chromium, driven by
//! `tests/e2e/console.mjs` (playwright-core), uses the console as an operator would: logs in, finds
//! the device, charts it, quarantines it (this test checks that the device really was cut off and
//! refused), releases it (and checks that it is back), writes a rule and sees it fire.
//!
//! Needs Node.js, Chromium (`/usr/bin/chromium`, or `CHROMIUM`) and the test's npm packages
//! (`npm ci --prefix crates/m2m/tests/e2e`); `scripts/test.sh` installs them. Screenshots of every
//! page go to `target/e2e-artifacts/` (or `SCREENSHOT_DIR`).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{m2m, run, text, RunningNode};
use m2m_test::TempDir;
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// The whole browser session may take this long (it waits at most 20 s on each of its steps).
const BROWSER_LIMIT: Duration = Duration::from_secs(300);
/// How long the device may take to be cut off, refused, or let back in.
const DEVICE_LIMIT: Duration = Duration::from_secs(20);

const DEVICE: &str = "press-7";
const DEVICE_PASSWORD: &str = "press-7-secret";

/// The directory of the browser test's files.
fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}

/// Fails with what to install when the browser test cannot run here.
fn check_prerequisites() -> PathBuf {
    let dir = e2e_dir();
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "the console test needs its npm packages: run `npm ci --prefix crates/m2m/tests/e2e` \
         (scripts/test.sh does it); {} has none",
        dir.join("node_modules").display()
    );
    let chromium =
        std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        chromium.is_file(),
        "the console test needs Chromium at {} (`apt-get install chromium`, as scripts/test.sh does, \
         or set CHROMIUM)",
        chromium.display()
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(node.is_ok_and(|o| o.status.success()), "the console test needs Node.js (`node`) on the PATH");
    chromium
}

/// What the simulated device saw of its connection.
#[derive(Debug, PartialEq)]
enum Seen {
    /// The node accepted it (CONNACK success).
    Up,
    /// Its connection ended.
    Down(String),
    /// The node refused it at CONNECT.
    Refused(String),
}

/// A device that reconnects by itself and publishes `{"temp": ...}` on `factory/<id>/temp` every
/// 200 ms while it is connected; what happens to its connection comes out of the receiver.
fn device(mqtt: SocketAddr) -> (tokio::task::JoinHandle<()>, mpsc::UnboundedReceiver<Seen>) {
    let mut options = MqttOptions::new(DEVICE, "127.0.0.1", mqtt.port());
    options.set_credentials(DEVICE, DEVICE_PASSWORD);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let topic = format!("factory/{DEVICE}/temp");
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut n: u32 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    n = n.wrapping_add(1);
                    // A slow wave between 21 and 24 degrees: above the rule's threshold of 20.
                    let temp = 22.5 + 1.5 * (f64::from(n) / 8.0).sin();
                    let payload = format!(r#"{{"temp": {temp:.1}}}"#);
                    // While it is offline the request queue fills up; what does not fit is dropped.
                    let _ = client.try_publish(topic.as_str(), QoS::AtMostOnce, false, payload);
                }
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = tx.send(Seen::Up);
                    }
                    Ok(_) => {}
                    Err(ConnectionError::ConnectionRefused(code)) => {
                        let _ = tx.send(Seen::Refused(format!("{code:?}")));
                        // Slowly, so that the flapping detector does not step in.
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Seen::Down(e.to_string()));
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
        }
    });
    (task, rx)
}

/// Waits for what the device sees until `done` says the wanted state is reached.
async fn await_device(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    what: &str,
    mut done: impl FnMut(&Seen) -> bool,
) {
    let mut log = Vec::new();
    let reached = tokio::time::timeout(DEVICE_LIMIT, async {
        while let Some(seen) = rx.recv().await {
            let stop = done(&seen);
            log.push(seen);
            if stop {
                return;
            }
        }
        panic!("the device task ended");
    })
    .await;
    assert!(reached.is_ok(), "{what}: not within {DEVICE_LIMIT:?}; the device saw {log:?}");
}

#[tokio::test]
async fn an_operator_uses_the_console_in_a_real_browser() {
    let chromium = check_prerequisites();
    let dir = TempDir::new("console-e2e");
    let node = RunningNode::start(dir.as_str(), &[]).await;
    let url = node.url();
    // A new node makes its first admin and prints the password at start-up.
    let password = node.admin_password().await.expect("a new node prints `console: ... password:`");

    // The device is registered, with the right to publish under its own id.
    let out = run({
        let mut cmd = m2m(&["device", "--api", &url, "add", DEVICE, "--password", DEVICE_PASSWORD]);
        cmd.args(["--group", "line-1", "--attr", "location=hall 2", "--rule", "allow publish factory/%c/#"]);
        cmd
    })
    .await;
    assert!(out.status.success(), "register the device: {}", text(&out.stderr));
    let (device_task, mut seen) = device(node.mqtt);
    await_device(&mut seen, "the device connects", |s| *s == Seen::Up).await;

    let artifacts = std::env::var_os("SCREENSHOT_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/e2e-artifacts"),
        PathBuf::from,
    );
    let mut browser = tokio::process::Command::new("node")
        .arg(e2e_dir().join("console.mjs"))
        .env("M2M_URL", &url)
        .env("M2M_USER", "admin")
        .env("M2M_PASSWORD", &password)
        .env("M2M_DEVICE", DEVICE)
        .env("SCREENSHOT_DIR", &artifacts)
        .env("CHROMIUM", &chromium)
        .env("M2M_SYNC", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("run node tests/e2e/console.mjs");
    let mut answers = browser.stdin.take().expect("the script's stdin is piped");
    let mut steps = BufReader::new(browser.stdout.take().expect("the script's stdout is piped")).lines();

    let mut checked = Vec::new();
    let session = tokio::time::timeout(BROWSER_LIMIT, async {
        while let Some(line) = steps.next_line().await.expect("read the script's output") {
            let Some(step) = line.strip_prefix("step: ") else {
                println!("{line}");
                continue;
            };
            match step {
                // Banned from the console: the node cut the device off and refuses it since.
                "quarantined" => {
                    // What it saw before the ban (a reconnect) does not count: from its first
                    // refusal on, it stays out.
                    await_device(&mut seen, "the quarantined device is refused", |s| {
                        matches!(s, Seen::Refused(_))
                    })
                    .await;
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
                    while let Ok(Some(s)) = tokio::time::timeout_at(deadline, seen.recv()).await {
                        assert_ne!(s, Seen::Up, "the node let the quarantined device in again");
                    }
                }
                // Released: it gets back in by itself.
                "released" => {
                    await_device(&mut seen, "the released device is back", |s| *s == Seen::Up).await
                }
                other => panic!("unknown step {other:?}"),
            }
            checked.push(step.to_owned());
            answers.write_all(b"ok\n").await.expect("answer the script");
        }
        browser.wait().await.expect("wait for the browser script")
    })
    .await;
    let status = session.unwrap_or_else(|_| panic!("the browser session took longer than {BROWSER_LIMIT:?}"));
    assert!(
        status.success(),
        "the browser script failed ({status}); its log is above, screenshots in {}",
        artifacts.display()
    );
    assert_eq!(checked, ["quarantined", "released"], "the script skipped a checkpoint");

    device_task.abort();
    node.stop().await;
}

#[tokio::test]
async fn the_console_is_served_without_credentials_even_when_the_api_needs_a_token() {
    let dir = TempDir::new("console-token");
    let node = RunningNode::start(dir.as_str(), &[("M2M_HTTP_TOKEN", "s3cret-token")]).await;
    let page = get(node.api, "/console/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let head = page.to_ascii_lowercase();
    assert!(head.contains("content-type: text/html"), "{page}");
    assert!(head.contains("content-security-policy: default-src 'self'"), "{page}");
    assert!(page.contains(r#"<script type="module" src="app.js"></script>"#), "{page}");
    assert!(get(node.api, "/console/app.js").await.starts_with("HTTP/1.1 200"));
    let root = get(node.api, "/").await;
    assert!(
        root.starts_with("HTTP/1.1 303") && root.to_ascii_lowercase().contains("location: /console/"),
        "{root}"
    );
    let api = get(node.api, "/api/v1/devices").await;
    assert!(api.starts_with("HTTP/1.1 401"), "the API still needs the token: {api}");
    node.stop().await;
}

/// A plain HTTP/1.1 GET without credentials; the whole answer as text.
async fn get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the HTTP API");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send the request");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer within 10 s")
        .expect("read the answer");
    String::from_utf8_lossy(&answer).into_owned()
}
