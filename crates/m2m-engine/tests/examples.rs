//! The rule sets of `examples/` on a running node, with real MQTT clients playing the machines: the
//! files a user loads are the files tested here.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use m2m_broker::Config;
use m2m_codec::{Packet, QoS};
use m2m_engine::{Engine, EngineConfig, RuleSpec};
use m2m_store::StoreConfig;
use m2m_test::{
    expect_raw_publish, raw_connect_ok, raw_publish, raw_subscribe, v5_connect, RawClient, TempDir,
    TestBroker,
};

async fn node(dir: &TempDir) -> (TestBroker, Engine) {
    let engine = Engine::new(EngineConfig::default()).unwrap();
    let mut c = Config::for_tests();
    c.sys_interval = None;
    c.store = Some(StoreConfig::new(dir.path().join("store")));
    c.taps = vec![Arc::new(engine.clone())];
    let broker = TestBroker::start_with(c).await;
    engine
        .attach(broker.router.clone(), broker.access.clone(), broker.history.clone(), broker.store.clone())
        .unwrap();
    (broker, engine)
}

fn load(json: &str) -> RuleSpec {
    serde_json::from_str(json).unwrap()
}

async fn publish(client: &mut RawClient, topic: &str, payload: &str) {
    let mut p = raw_publish(topic, QoS::AtMostOnce, None, b"");
    p.payload = bytes::Bytes::copy_from_slice(payload.as_bytes());
    client.send(&Packet::Publish(p)).await;
}

/// The next message `client` receives (acknowledged if QoS 1), as topic and text.
async fn next(client: &mut RawClient) -> (String, String) {
    let p = expect_raw_publish(client.recv().await);
    if let Some(id) = p.packet_id {
        client.send(&Packet::PubAck(m2m_codec::Ack::new(id))).await;
    }
    (p.topic.to_string(), String::from_utf8(p.payload.to_vec()).unwrap())
}

async fn nothing_more(client: &mut RawClient, why: &str) {
    client.send(&Packet::PingReq).await;
    assert_eq!(client.recv().await, Some(Packet::PingResp), "{why}");
}

async fn settle(engine: &Engine) {
    let e = engine.clone();
    assert!(tokio::task::spawn_blocking(move || e.flush(Duration::from_secs(10))).await.unwrap());
}

#[tokio::test]
async fn street_lamps_follow_the_presence_sensors() {
    let dir = TempDir::new("example-lamps");
    let (broker, engine) = node(&dir).await;
    engine.put(load(include_str!("../../../examples/street-lamps/rules/lamp-on.json")), false).unwrap();
    let mut off = load(include_str!("../../../examples/street-lamps/rules/lamp-off.json"));
    assert_eq!(off.silence.as_ref().unwrap().after_secs, 120);
    // Two minutes are too long for a test: a second.
    off.silence.as_mut().unwrap().after_secs = 1;
    engine.put(off, false).unwrap();
    engine.put(load(include_str!("../../../examples/street-lamps/rules/sensor-down.json")), false).unwrap();

    let mut lamps = raw_connect_ok(broker.addr, v5_connect("lamp-controller")).await;
    raw_subscribe(&mut lamps, 1, &[("lamps/#", QoS::AtLeastOnce)]).await;
    let mut sensor = raw_connect_ok(broker.addr, v5_connect("presence-z1")).await;
    let mut daylight = raw_connect_ok(broker.addr, v5_connect("presence-z2")).await;
    publish(&mut daylight, "street/z2/presence", r#"{"person": true, "lux": 900}"#).await;
    publish(&mut sensor, "street/z1/presence", r#"{"person": true, "lux": 12}"#).await;
    assert_eq!(
        next(&mut lamps).await,
        ("lamps/z1/set".into(), r#"{"state":"on","why":"presence at 12 lux"}"#.into())
    );
    // A second later, nobody reported from either zone: both are switched off (z2 was never on, and
    // its lamps get an explicit off).
    let mut offs = vec![next(&mut lamps).await, next(&mut lamps).await];
    offs.sort();
    assert_eq!(offs[0].0, "lamps/z1/set");
    assert!(offs[0].1.starts_with(r#"{"state":"off","why":"nobody for "#), "{offs:?}");
    assert_eq!(offs[1].0, "lamps/z2/set");
    // The lamp state is retained: a controller that restarts learns it.
    let mut fresh = raw_connect_ok(broker.addr, v5_connect("lamp-controller-2")).await;
    raw_subscribe(&mut fresh, 1, &[("lamps/z1/set", QoS::AtLeastOnce)]).await;
    assert!(next(&mut fresh).await.1.contains("off"));

    // A broken sensor is isolated: its reports no longer reach the rules or anyone.
    let mut broken = raw_connect_ok(broker.addr, v5_connect("presence-z3")).await;
    publish(&mut broken, "street/z3/presence", r#"{"person": true, "lux": 999999}"#).await;
    // The rule acts as soon as the message has gone through the node (within a few seconds here).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while broker.access.quarantine().entries().next().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "not isolated: {:?}",
            engine.get("sensor-down").unwrap().metrics
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let entries: Vec<_> = broker.access.quarantine().entries().map(|e| (e.actor.clone(), e.mode)).collect();
    assert_eq!(entries, [("rule:sensor-down".to_owned(), m2m_access::Mode::Isolate)]);
    broken
        .send(&Packet::Publish(raw_publish(
            "street/z3/presence",
            QoS::AtLeastOnce,
            Some(1),
            br#"{"person": true, "lux": 1}"#,
        )))
        .await;
    let Some(Packet::PubAck(ack)) = broken.recv().await else { panic!("PUBACK") };
    assert_eq!(ack.reason_code, m2m_codec::ReasonCode::NOT_AUTHORIZED);
    broker.stop().await;
}

#[tokio::test]
async fn the_alarm_clock_starts_the_coffee_maker_on_working_days() {
    let dir = TempDir::new("example-coffee");
    let (broker, engine) = node(&dir).await;
    engine.put(load(include_str!("../../../examples/coffee-maker/rules/brew.json")), false).unwrap();
    engine.put(load(include_str!("../../../examples/coffee-maker/rules/coffee-ready.json")), false).unwrap();
    let mut maker = raw_connect_ok(broker.addr, v5_connect("coffee-maker")).await;
    raw_subscribe(&mut maker, 1, &[("home/kitchen/coffee-maker/cmd", QoS::AtLeastOnce)]).await;
    let mut display = raw_connect_ok(broker.addr, v5_connect("bedside-display")).await;
    raw_subscribe(&mut display, 1, &[("home/bedroom/display/text", QoS::AtLeastOnce)]).await;
    let mut clock = raw_connect_ok(broker.addr, v5_connect("alarm-clock")).await;

    publish(&mut clock, "home/bedroom/alarm-clock/ring", r#"{"time": "09:00", "day": "sun"}"#).await;
    publish(&mut clock, "home/bedroom/alarm-clock/ring", r#"{"time": "06:30", "day": "mon"}"#).await;
    let (topic, cmd) = next(&mut maker).await;
    assert_eq!(topic, "home/kitchen/coffee-maker/cmd");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&cmd).unwrap(),
        serde_json::json!({"cmd": "brew", "cups": 2, "reason": "alarm at 06:30"})
    );
    settle(&engine).await;
    nothing_more(&mut maker, "no coffee on Sunday").await;

    publish(&mut maker, "home/kitchen/coffee-maker/state", r#"{"state": "brewing", "cups": 2}"#).await;
    publish(&mut maker, "home/kitchen/coffee-maker/state", r#"{"state": "ready", "cups": 2}"#).await;
    assert_eq!(
        next(&mut display).await,
        ("home/bedroom/display/text".into(), "Coffee is ready (2 cups)".into())
    );
    settle(&engine).await;
    nothing_more(&mut display, "only when ready").await;
    let brew = engine.get("brew").unwrap().metrics;
    assert_eq!((brew.matched, brew.passed, brew.actions_ok), (2, 1, 1));
    broker.stop().await;
}
