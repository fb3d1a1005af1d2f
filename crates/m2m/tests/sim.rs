//! `m2m sim` as a user runs it: the built binary simulates a few machines of each kind against a
//! running node (and once against Mosquitto), and an independent client (`rumqttc`) checks what they
//! publish and that they obey: a vehicle slows down for a speed limit and heads home, a drop-out's
//! backlog arrives in order with its original timestamps, a stopped motor spins down and cools, a
//! lamp switches on (by hand, and by a rule reacting to its presence sensor). The simulator
//! reconnects when the broker comes back, and stops cleanly on Ctrl-C.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{m2m, text, RunningNode};
use m2m_test::Mosquitto;
use m2m_test::TempDir;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long one expected message may take.
const STEP: Duration = Duration::from_secs(15);

/// `m2m node` on `dir`, MQTT on `listen` (`127.0.0.1:0`: a port it picks).
async fn start_node(dir: &TempDir, listen: &str) -> RunningNode {
    let data = dir.path().join("node");
    let args = ["node", "--listen", listen, "--data-dir", data.to_str().unwrap(), "--log-level", "info"];
    RunningNode::start_with(&args, &[]).await
}

/// `m2m sim <args>` against the broker on `port`, summary lines every second.
fn sim(port: u16, args: &[&str]) -> Child {
    let broker = format!("127.0.0.1:{port}");
    let mut all = vec!["sim"];
    all.extend_from_slice(&args[..1]);
    all.extend_from_slice(&["--broker", &broker, "--summary-every", "1"]);
    all.extend_from_slice(&args[1..]);
    m2m(&all).spawn().expect("start m2m sim")
}

/// Stops the simulator as Ctrl-C does and returns its output, which must end with the last summary.
async fn interrupt(child: Child) -> Output {
    let pid = child.id().expect("the simulator runs").to_string();
    let status = Command::new("kill").args(["-INT", &pid]).status().await.unwrap();
    assert!(status.success(), "kill -INT {pid}");
    finished(child).await
}

/// Waits for the simulator to exit by itself, successfully, with a last summary line.
async fn finished(child: Child) -> Output {
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the simulator exits within 20 s")
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "m2m sim failed: {stdout}\n{}", text(&out.stderr));
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.contains("(done)") && last.contains(" 0/"), "not disconnected at the end: {stdout}");
    out
}

/// One message as the subscriber saw it.
#[derive(Debug)]
struct Seen {
    topic: String,
    json: Value,
    retain: bool,
    /// When it arrived, Unix ms.
    at: u64,
}

/// A `rumqttc` (MQTT 3.1.1) subscriber; every payload must be a JSON object.
struct Watch {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<(String, Vec<u8>, bool, u64)>,
}

impl Watch {
    async fn start(port: u16, id: &str, filter: &str) -> Watch {
        let options = MqttOptions::new(id, "127.0.0.1", port);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
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
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec(), p.retain, now_ms()));
                    }
                    _ => {}
                }
            }
        });
        tokio::time::timeout(STEP, subscribed).await.expect("SUBACK").unwrap();
        Watch { client, rx }
    }

    async fn next(&mut self) -> Seen {
        let (topic, payload, retain, at) =
            tokio::time::timeout(STEP, self.rx.recv()).await.expect("a message in time").expect("subscribed");
        let json: Value = serde_json::from_slice(&payload)
            .unwrap_or_else(|e| panic!("{topic}: not JSON ({e}): {}", String::from_utf8_lossy(&payload)));
        assert!(json.is_object(), "{topic}: {json}");
        Seen { topic, json, retain, at }
    }

    /// The next message on `topic` for which `want` holds (others are skipped).
    async fn until(&mut self, topic: &str, want: impl Fn(&Value) -> bool) -> Seen {
        let deadline = Instant::now() + STEP;
        loop {
            assert!(Instant::now() < deadline, "no message on {topic} as wanted in {STEP:?}");
            let seen = self.next().await;
            if seen.topic == topic && want(&seen.json) {
                return seen;
            }
        }
    }

    /// Publishes `payload` on `topic` at QoS 1.
    async fn send(&self, topic: &str, payload: &str) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec()).await.unwrap();
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn number(v: &Value, field: &str) -> f64 {
    v[field].as_f64().unwrap_or_else(|| panic!("{field} is not a number in {v}"))
}

/// Metres between two points near each other (equirectangular).
fn metres(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let x = (lon2 - lon1).to_radians() * lat1.to_radians().cos();
    let y = (lat2 - lat1).to_radians();
    6_371_000.0 * x.hypot(y)
}

const DEPOT: (f64, f64) = (48.137, 11.575);

#[tokio::test]
async fn vehicles_publish_telemetry_slow_down_for_a_speed_limit_and_head_back_to_the_depot() {
    let dir = TempDir::new("sim-telematics");
    let node = start_node(&dir, "127.0.0.1:0").await;
    let port = node.mqtt.port();
    let mut watch = Watch::start(port, "fleet-watch", "fleet/+/telemetry").await;
    let child = sim(port, &["telematics", "--vehicles", "3", "--rate", "10", "--time-scale", "10"]);

    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 3 {
        let s = watch.next().await;
        let vehicle = s.topic.strip_prefix("fleet/").and_then(|t| t.strip_suffix("/telemetry")).unwrap();
        assert!(["truck-0001", "truck-0002", "truck-0003"].contains(&vehicle), "{}", s.topic);
        for field in ["ts", "lat", "lon", "speed_kmh", "heading", "fuel_pct", "engine_temp_c", "odometer_km"]
        {
            number(&s.json, field);
        }
        let (lat, lon) = (number(&s.json, "lat"), number(&s.json, "lon"));
        assert!(metres(DEPOT.0, DEPOT.1, lat, lon) < 10_000.0, "far from the depot: {}", s.json);
        assert!((0.0..=100.0).contains(&number(&s.json, "fuel_pct")));
        assert!((0.0..360.0).contains(&number(&s.json, "heading")));
        assert!(number(&s.json, "ts") as u64 <= s.at && s.at - (number(&s.json, "ts") as u64) < 5_000);
        assert_eq!(s.json["mode"], "route");
        seen.insert(vehicle.to_owned());
    }

    watch.send("fleet/truck-0001/cmd", r#"{"cmd": "limit_speed", "kmh": 20}"#).await;
    let t1 = "fleet/truck-0001/telemetry";
    watch.until(t1, |v| v["speed_limit_kmh"] == 20.0 && v["speed_kmh"].as_f64() <= Some(20.0)).await;
    for _ in 0..10 {
        let s = watch.until(t1, |_| true).await;
        assert!(number(&s.json, "speed_kmh") <= 20.0, "over the limit: {}", s.json);
    }

    watch.send("fleet/truck-0002/cmd", r#"{"cmd": "return_to_depot"}"#).await;
    let t2 = "fleet/truck-0002/telemetry";
    let s = watch.until(t2, |v| v["mode"] == "returning").await;
    let mut last = metres(DEPOT.0, DEPOT.1, number(&s.json, "lat"), number(&s.json, "lon"));
    for _ in 0..10 {
        let s = watch.until(t2, |_| true).await;
        let d = metres(DEPOT.0, DEPOT.1, number(&s.json, "lat"), number(&s.json, "lon"));
        assert!(d <= last + 0.5, "not heading to the depot: {d} m after {last} m: {}", s.json);
        assert!(s.json["mode"] == "returning" || s.json["mode"] == "parked", "{}", s.json);
        last = d;
    }

    let out = interrupt(child).await;
    let stdout = text(&out.stdout);
    assert!(stdout.contains("2 commands"), "{stdout}");
    node.stop().await;
}

#[tokio::test]
async fn a_vehicle_keeps_its_samples_through_a_drop_out_and_publishes_the_backlog_in_order() {
    let dir = TempDir::new("sim-dropout");
    let node = start_node(&dir, "127.0.0.1:0").await;
    let port = node.mqtt.port();
    let mut watch = Watch::start(port, "fleet-watch", "fleet/truck-0001/telemetry").await;
    let child = sim(port, &["telematics", "--vehicles", "1", "--rate", "20", "--qos", "1"]);

    let mut samples = vec![watch.next().await];
    watch.send("fleet/truck-0001/cmd", r#"{"cmd": "simulate_dropout", "secs": 2}"#).await;
    let started = Instant::now();
    // Until well after the drop-out: 2 s offline, then live samples again.
    while started.elapsed() < Duration::from_secs(4) {
        samples.push(watch.next().await);
    }
    let out = interrupt(child).await;
    let stdout = text(&out.stdout);
    assert!(stdout.contains("1 drop-outs") && stdout.contains("1 reconnects"), "{stdout}");

    // In order, no gaps. Samples in flight when the link dropped are sent again (at least once):
    // each new one follows the last new one.
    let seqs: Vec<u64> = samples.iter().map(|s| number(&s.json, "seq") as u64).collect();
    let mut fresh = Vec::new();
    for s in &samples {
        let seq = number(&s.json, "seq") as u64;
        match fresh.last().map(|last: &&Seen| number(&last.json, "seq") as u64) {
            Some(last) if seq <= last => {}
            Some(last) => {
                assert_eq!(seq, last + 1, "a gap: {seqs:?}");
                fresh.push(s);
            }
            None => fresh.push(s),
        }
    }
    let samples = fresh;
    let ts: Vec<u64> = samples.iter().map(|s| number(&s.json, "ts") as u64).collect();
    assert!(ts.windows(2).all(|p| p[0] <= p[1]), "timestamps out of order: {ts:?}");
    // The backlog: samples taken in the first one and a half seconds of the drop-out arrived half a
    // second or more after they were taken, with their own timestamps, 50 ms apart.
    let late: Vec<&Seen> =
        samples.iter().copied().filter(|s| s.at.saturating_sub(number(&s.json, "ts") as u64) > 500).collect();
    assert!(late.len() >= 20, "{} samples came late: {seqs:?}", late.len());
    let spread = number(&late[late.len() - 1].json, "ts") - number(&late[0].json, "ts");
    assert!(spread >= 1000.0, "the backlog spans {spread} ms");
    node.stop().await;
}

#[tokio::test]
async fn random_drop_outs_lose_no_sample_of_a_vehicle_publishing_at_qos_1() {
    let dir = TempDir::new("sim-random-dropouts");
    let node = start_node(&dir, "127.0.0.1:0").await;
    let port = node.mqtt.port();
    let mut watch = Watch::start(port, "fleet-watch", "fleet/truck-0001/telemetry").await;
    // About one drop-out a second, of 0.2 to 0.4 s.
    let args =
        ["--rate", "20", "--qos", "1", "--duration", "4", "--backoff-min", "0.05", "--backoff-max", "0.1"];
    let mut all = vec!["telematics", "--vehicles", "1", "--dropout-rate", "3600", "--dropout-min", "0.2"];
    all.extend_from_slice(&["--dropout-max", "0.4"]);
    all.extend_from_slice(&args);
    let out = finished(sim(port, &all)).await;
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().unwrap();
    assert!(!last.contains(" 0 drop-outs"), "{stdout}");
    // Everything sampled until the end, in order (what was still buffered then is counted as dropped).
    let mut next = 1;
    while let Ok(Some((_, payload, _, _))) =
        tokio::time::timeout(Duration::from_millis(500), watch.rx.recv()).await
    {
        let seq = serde_json::from_slice::<Value>(&payload).unwrap()["seq"].as_u64().unwrap();
        assert!(seq <= next, "a gap before {seq}: expected {next}");
        if seq == next {
            next += 1;
        }
    }
    assert!(next > 40, "only {} samples in 4 s: {stdout}", next - 1);
    node.stop().await;
}

#[tokio::test]
async fn factory_machines_report_their_sensors_and_a_stopped_motor_spins_down_and_cools() {
    let dir = TempDir::new("sim-factory");
    let node = start_node(&dir, "127.0.0.1:0").await;
    let port = node.mqtt.port();
    let mut watch = Watch::start(port, "plant-watch", "factory/#").await;
    let child =
        sim(port, &["factory", "--lines", "1", "--machines", "2", "--rate", "5", "--time-scale", "30"]);

    let base = "factory/line-01/press-1";
    let state = watch.until(&format!("{base}/state"), |_| true).await;
    assert_eq!((&state.json["running"], &state.json["fault"]), (&Value::Bool(true), &Value::Null));
    number(&state.json, "setpoint_rpm");
    for (sensor, unit) in [("temp", "°C"), ("vibration", "mm/s"), ("rpm", "rpm")] {
        let s = watch.until(&format!("{base}/{sensor}"), |_| true).await;
        number(&s.json, "value");
        number(&s.json, "ts");
        assert_eq!(s.json["unit"], unit, "{}", s.json);
    }
    watch.until("factory/line-01/conveyor-2/rpm", |v| v["value"].as_f64() > Some(0.0)).await;

    watch.send(&format!("{base}/cmd"), r#"{"cmd": "stop"}"#).await;
    watch.until(&format!("{base}/state"), |v| v["running"] == false).await;
    watch.until(&format!("{base}/rpm"), |v| v["value"] == 0.0).await;
    let mut temps = Vec::new();
    while temps.len() < 8 {
        temps.push(number(&watch.until(&format!("{base}/temp"), |_| true).await.json, "value"));
    }
    assert!(temps[7] < temps[0] - 2.0, "not cooling: {temps:?}");
    // The other machine runs on.
    watch.until("factory/line-01/conveyor-2/rpm", |v| v["value"].as_f64() > Some(0.0)).await;

    // The state is retained: a newcomer sees the motor stopped.
    let mut late = Watch::start(port, "late-watch", &format!("{base}/state")).await;
    let retained = late.next().await;
    assert!(retained.retain && retained.json["running"] == false, "{retained:?}");

    watch.send(&format!("{base}/cmd"), r#"{"cmd": "set_speed", "rpm": 900}"#).await;
    watch.send(&format!("{base}/cmd"), r#"{"cmd": "start"}"#).await;
    watch.until(&format!("{base}/state"), |v| v["running"] == true && v["setpoint_rpm"] == 900).await;
    watch.until(&format!("{base}/rpm"), |v| (number(v, "value") - 900.0).abs() < 20.0).await;

    let out = interrupt(child).await;
    assert!(text(&out.stdout).contains("3 commands"), "{}", text(&out.stdout));
    node.stop().await;
}

#[tokio::test]
async fn lamps_report_presence_and_obey_commands_and_a_rule_switches_them_on_when_someone_passes() {
    let dir = TempDir::new("sim-lamps");
    let node = start_node(&dir, "127.0.0.1:0").await;
    let port = node.mqtt.port();
    let mut watch = Watch::start(port, "street-watch", "lamps/#").await;
    let child = sim(port, &["lamps", "--lamps", "3", "--pedestrians", "0", "--rate", "5"]);

    let state = watch.until("lamps/lamp-0002/state", |_| true).await;
    assert_eq!((&state.json["on"], &state.json["level"]), (&Value::Bool(false), &Value::from(100)));
    let presence = watch.until("lamps/lamp-0002/presence", |_| true).await;
    assert_eq!(presence.json["present"], false);
    let power = watch.until("lamps/lamp-0002/power", |_| true).await;
    assert_eq!(number(&power.json, "watts"), 0.5);
    number(&power.json, "energy_kwh");

    watch.send("lamps/lamp-0002/cmd", r#"{"on": true, "level": 80}"#).await;
    watch.until("lamps/lamp-0002/state", |v| v["on"] == true && v["level"] == 80).await;
    watch.until("lamps/lamp-0002/power", |v| number(v, "watts") > 40.0).await;
    let mut late = Watch::start(port, "late-watch", "lamps/lamp-0002/state").await;
    let retained = late.next().await;
    assert!(retained.retain && retained.json["on"] == true, "{retained:?}");
    interrupt(child).await;

    // The loop closed by a rule: presence → on.
    let sql = r#"SELECT topic_level(topic, 2) AS lamp FROM "lamps/+/presence" WHERE payload.present = true"#;
    let action =
        r#"{"type": "republish", "topic": "lamps/${lamp}/cmd", "payload": "{\"on\": true, \"level\": 100}"}"#;
    let api = format!("http://{}", node.api);
    let added =
        common::run(m2m(&["rule", "--api", &api, "add", "presence-on", "--sql", sql, "--action", action]))
            .await;
    assert!(added.status.success(), "{}", text(&added.stderr));
    let child = sim(port, &["lamps", "--lamps", "3", "--pedestrians", "1200", "--seed", "7"]);
    let passed = watch.until_topic_suffix("/presence", |v| v["present"] == true).await;
    let lamp = passed.topic.strip_suffix("/presence").unwrap().to_owned();
    watch.until(&format!("{lamp}/state"), |v| v["on"] == true && v["level"] == 100).await;
    interrupt(child).await;
    node.stop().await;
}

impl Watch {
    /// The next message on a topic ending in `suffix` for which `want` holds.
    async fn until_topic_suffix(&mut self, suffix: &str, want: impl Fn(&Value) -> bool) -> Seen {
        let deadline = Instant::now() + STEP;
        loop {
            assert!(Instant::now() < deadline, "no message on *{suffix} as wanted in {STEP:?}");
            let seen = self.next().await;
            if seen.topic.ends_with(suffix) && want(&seen.json) {
                return seen;
            }
        }
    }
}

#[tokio::test]
async fn machines_reconnect_when_the_broker_comes_back_and_stop_after_their_duration() {
    let dir = TempDir::new("sim-reconnect");
    let node = start_node(&dir, "127.0.0.1:0").await;
    let addr = node.mqtt.to_string();
    let port = node.mqtt.port();
    let child = sim(
        port,
        &[
            "lamps",
            "--lamps",
            "4",
            "--rate",
            "5",
            "--duration",
            "10",
            "--backoff-min",
            "0.1",
            "--backoff-max",
            "0.3",
        ],
    );
    let mut watch = Watch::start(port, "street-watch", "lamps/+/power").await;
    let mut lamps = std::collections::BTreeSet::new();
    while lamps.len() < 4 {
        lamps.insert(watch.next().await.topic);
    }
    node.stop().await;
    // The same port again; what the machines say after it reaches the new node.
    let dir = TempDir::new("sim-reconnect-again");
    let node = start_node(&dir, &addr).await;
    let mut watch = Watch::start(port, "street-watch-2", "lamps/+/power").await;
    lamps.clear();
    while lamps.len() < 4 {
        lamps.insert(watch.next().await.topic);
    }
    let out = finished(child).await;
    let stdout = text(&out.stdout);
    assert!(stdout.contains("4 reconnects"), "{stdout}");
    node.stop().await;
}

#[tokio::test]
async fn simulated_machines_work_against_mosquitto() {
    let dir = TempDir::new("sim-mosquitto");
    let mosquitto = Mosquitto::start(dir.path(), 0, "").await;
    let port = mosquitto.port;
    let mut watch = Watch::start(port, "plant-watch", "factory/#").await;
    let child = sim(port, &["factory", "--machines", "1", "--rate", "5", "--qos", "2", "--protocol", "4"]);
    let base = "factory/line-01/press-1";
    watch.until(&format!("{base}/temp"), |v| v["unit"] == "°C").await;
    watch.send(&format!("{base}/cmd"), r#"{"cmd": "stop"}"#).await;
    watch.until(&format!("{base}/state"), |v| v["running"] == false).await;
    interrupt(child).await;

    let mut fleet = Watch::start(port, "fleet-watch", "fleet/+/telemetry").await;
    let child = sim(port, &["telematics", "--vehicles", "2", "--rate", "10", "--duration", "2"]);
    let s = fleet.until("fleet/truck-0002/telemetry", |_| true).await;
    number(&s.json, "speed_kmh");
    let out = finished(child).await;
    assert!(text(&out.stdout).contains("0 reconnects"), "{}", text(&out.stdout));
}
