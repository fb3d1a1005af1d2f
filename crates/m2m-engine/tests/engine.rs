//! The rules engine on a running node, with real MQTT clients: republish with templates, loop
//! protection, quarantine on a client event, a derived series in the history, a rule disabled for
//! failing, rules kept across a restart, and rules changed while messages flow.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use m2m_broker::Config;
use m2m_codec::{Packet, QoS, ReasonCode};
use m2m_engine::{ActionSpec, Engine, EngineConfig, RuleSpec};
use m2m_store::StoreConfig;
use m2m_test::{
    expect_raw_publish, raw_connect, raw_connect_ok, raw_publish, raw_subscribe, v5_connect, RawClient,
    TempDir, TestBroker,
};

async fn node(dir: &TempDir, config: EngineConfig) -> (TestBroker, Engine) {
    let engine = Engine::new(config).unwrap();
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

fn rule(id: &str, sql: &str, actions: Vec<ActionSpec>) -> RuleSpec {
    RuleSpec {
        id: id.into(),
        sql: sql.into(),
        actions,
        enabled: true,
        description: String::new(),
        window: None,
        silence: None,
    }
}

fn republish(topic: &str, payload: Option<&str>) -> ActionSpec {
    ActionSpec::Republish {
        topic: topic.into(),
        payload: payload.map(Into::into),
        qos: 0,
        retain: false,
        user_properties: vec![],
    }
}

async fn publish(client: &mut RawClient, topic: &str, payload: &str) {
    let mut p = raw_publish(topic, QoS::AtMostOnce, None, b"");
    p.payload = bytes::Bytes::copy_from_slice(payload.as_bytes());
    client.send(&Packet::Publish(p)).await;
}

/// Waits for the engine to have handled everything handed to it (on a blocking thread).
async fn settle(engine: &Engine) {
    let e = engine.clone();
    assert!(tokio::task::spawn_blocking(move || e.flush(Duration::from_secs(10))).await.unwrap());
}

#[tokio::test]
async fn a_rule_republishes_what_passes_its_where_with_templates() {
    let dir = TempDir::new("engine-republish");
    let (broker, engine) = node(&dir, EngineConfig::default()).await;
    engine
        .put(
            rule(
                "overheat",
                r#"SELECT payload.temp AS t, clientid FROM "factory/+/temp" WHERE payload.temp > 80"#,
                vec![republish("alarms/${clientid}", Some(r#"{"t":${t}}"#))],
            ),
            false,
        )
        .unwrap();
    let mut watcher = raw_connect_ok(broker.addr, v5_connect("watcher")).await;
    raw_subscribe(&mut watcher, 1, &[("alarms/#", QoS::AtMostOnce)]).await;
    let mut motor = raw_connect_ok(broker.addr, v5_connect("motor-3")).await;
    publish(&mut motor, "factory/line-1/temp", r#"{"temp": 70}"#).await;
    publish(&mut motor, "factory/line-1/temp", r#"{"temp": 85.5}"#).await;
    publish(&mut motor, "factory/line-1/pressure", r#"{"temp": 99}"#).await;
    let alarm = expect_raw_publish(watcher.recv().await);
    assert_eq!((&*alarm.topic, &alarm.payload[..]), ("alarms/motor-3", &br#"{"t":85.5}"#[..]));
    settle(&engine).await;
    watcher.send(&Packet::PingReq).await;
    assert_eq!(watcher.recv().await, Some(Packet::PingResp), "one alarm only");
    let status = engine.get("overheat").unwrap();
    assert_eq!(
        (status.state, status.metrics.matched, status.metrics.passed, status.metrics.actions_ok),
        ("running", 2, 1, 1)
    );
    broker.stop().await;
}

#[tokio::test]
async fn republish_loops_stop_at_the_hop_limit() {
    let dir = TempDir::new("engine-loop");
    let (broker, engine) = node(&dir, EngineConfig { max_hops: 4, ..EngineConfig::default() }).await;
    engine
        .put(rule("echo", r#"SELECT * FROM "loop/#""#, vec![republish("loop/again", Some("x"))]), false)
        .unwrap();
    let mut watcher = raw_connect_ok(broker.addr, v5_connect("watcher")).await;
    raw_subscribe(&mut watcher, 1, &[("loop/#", QoS::AtMostOnce)]).await;
    let mut c = raw_connect_ok(broker.addr, v5_connect("c")).await;
    publish(&mut c, "loop/start", "go").await;
    // The original and 4 republished copies, then the chain stops.
    for _ in 0..5 {
        expect_raw_publish(watcher.recv().await);
    }
    settle(&engine).await;
    watcher.send(&Packet::PingReq).await;
    assert_eq!(watcher.recv().await, Some(Packet::PingResp), "the loop stopped");
    assert_eq!(engine.dropped().1, 1, "one message not given to rules for its hops");
    broker.stop().await;
}

#[tokio::test]
async fn a_rule_on_client_connected_quarantines_a_rogue_client() {
    let dir = TempDir::new("engine-quarantine");
    let (broker, engine) = node(&dir, EngineConfig::default()).await;
    let action = ActionSpec::Quarantine {
        client_id: "${clientid}".into(),
        mode: "ban".into(),
        reason: "rogue ${clientid} from ${peerhost}".into(),
        expires_secs: None,
    };
    engine
        .put(
            rule(
                "no-rogues",
                r#"SELECT clientid, peerhost FROM "$events/client_connected" WHERE clientid LIKE 'rogue%'"#,
                vec![action],
            ),
            false,
        )
        .unwrap();
    let _fine = raw_connect_ok(broker.addr, v5_connect("pump-1")).await;
    let mut rogue = raw_connect_ok(broker.addr, v5_connect("rogue-7")).await;
    m2m_test::expect_disconnect(&mut rogue, ReasonCode::ADMINISTRATIVE_ACTION).await;
    let (_, ack) = raw_connect(broker.addr, v5_connect("rogue-7")).await;
    assert_eq!(ack.reason_code, ReasonCode::BANNED);
    let entries: Vec<_> =
        broker.access.quarantine().entries().map(|e| (e.actor.clone(), e.reason.clone())).collect();
    assert_eq!(entries, [("rule:no-rogues".to_owned(), "rogue rogue-7 from 127.0.0.1".to_owned())]);
    broker.stop().await;
}

#[tokio::test]
async fn a_rule_writes_a_derived_series_into_the_history() {
    let dir = TempDir::new("engine-history");
    let (broker, engine) = node(&dir, EngineConfig::default()).await;
    let action = ActionSpec::History { topic: "derived/${line}/doubled".into(), payload: None };
    engine
        .put(
            rule(
                "double",
                r#"SELECT topic_level(topic, 2) AS line, payload.v * 2 AS v FROM "raw/+/v""#,
                vec![action],
            ),
            false,
        )
        .unwrap();
    let mut c = raw_connect_ok(broker.addr, v5_connect("c")).await;
    for v in [1, 2, 3] {
        publish(&mut c, "raw/l1/v", &format!("{{\"v\":{v}}}")).await;
    }
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));
    settle(&engine).await;
    let history = broker.history.clone().unwrap();
    let h = history.clone();
    assert!(tokio::task::spawn_blocking(move || h.flush(Duration::from_secs(10))).await.unwrap());
    let q = m2m_history::Query {
        filter: "derived/#".into(),
        from_us: 0,
        to_us: u64::MAX,
        limit: 10,
        order: m2m_history::Order::Asc,
        after: None,
    };
    let got: Vec<(String, String)> = history
        .query(&q)
        .unwrap()
        .map(|p| {
            let p = p.unwrap();
            (p.topic.to_string(), String::from_utf8(p.record.payload.to_vec()).unwrap())
        })
        .collect();
    let want: Vec<(String, String)> = [2, 4, 6]
        .iter()
        .map(|v| ("derived/l1/doubled".to_owned(), format!("{{\"line\":\"l1\",\"v\":{v}}}")))
        .collect();
    assert_eq!(got, want);
    broker.stop().await;
}

#[tokio::test]
async fn a_rule_that_keeps_failing_is_disabled_with_an_audit_entry() {
    let dir = TempDir::new("engine-failing");
    let (broker, engine) = node(&dir, EngineConfig { disable_after: 3, ..EngineConfig::default() }).await;
    engine.put(rule("broken", r#"SELECT payload.x / 0 AS y FROM "div/#""#, vec![]), false).unwrap();
    let mut c = raw_connect_ok(broker.addr, v5_connect("c")).await;
    for _ in 0..5 {
        publish(&mut c, "div/x", r#"{"x": 1}"#).await;
    }
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));
    settle(&engine).await;
    let status = engine.get("broken").unwrap();
    assert_eq!((status.state, status.metrics.failed), ("disabled_failing", 3));
    assert!(status.metrics.last_error.unwrap().contains("evaluation"), "the error is kept");
    let audit = broker.access.audit_log().recent(None, 5).unwrap();
    assert!(audit.iter().any(|(_, e)| e.action == "rule.disable" && e.subject == "broken"), "{audit:?}");
    // Enabling it again starts afresh.
    engine.set_enabled("broken", true).unwrap();
    assert_eq!(engine.get("broken").unwrap().state, "running");
    broker.stop().await;
}

#[tokio::test]
async fn rules_are_kept_across_a_restart_and_bad_ones_are_refused() {
    let dir = TempDir::new("engine-restart");
    {
        let (broker, engine) = node(&dir, EngineConfig::default()).await;
        engine.put(rule("a", r#"SELECT * FROM "a/#""#, vec![republish("b/x", None)]), false).unwrap();
        engine.put(rule("off", r#"SELECT * FROM "c/#""#, vec![]), false).unwrap();
        engine.set_enabled("off", false).unwrap();
        let bad = [
            rule("bad id!", r#"SELECT * FROM "a""#, vec![]),
            rule("sql", "SELECT * FROM", vec![]),
            rule("topic", r#"SELECT * FROM "a""#, vec![republish("x/${", None)]),
            rule(
                "qos",
                r#"SELECT * FROM "a""#,
                vec![ActionSpec::Republish {
                    topic: "t".into(),
                    payload: None,
                    qos: 3,
                    retain: false,
                    user_properties: vec![],
                }],
            ),
            rule(
                "mode",
                r#"SELECT * FROM "a""#,
                vec![ActionSpec::Quarantine {
                    client_id: "${clientid}".into(),
                    mode: "jail".into(),
                    reason: "r".into(),
                    expires_secs: None,
                }],
            ),
        ];
        for b in bad {
            let id = b.id.clone();
            assert!(matches!(engine.put(b, false), Err(m2m_engine::EngineError::Invalid(_))), "{id}");
        }
        assert!(matches!(
            engine.put(rule("a", r#"SELECT * FROM "z""#, vec![]), false),
            Err(m2m_engine::EngineError::Exists(_))
        ));
        broker.stop().await;
    }
    let (broker, engine) = node(&dir, EngineConfig::default()).await;
    let states: Vec<_> = engine.list().into_iter().map(|r| (r.spec.id, r.state)).collect();
    assert_eq!(states, [("a".to_owned(), "running"), ("off".to_owned(), "disabled")]);
    engine.remove("a").unwrap();
    assert!(matches!(engine.remove("a"), Err(m2m_engine::EngineError::NotFound(_))));
    broker.stop().await;
}

#[tokio::test]
async fn rules_change_while_messages_flow() {
    let dir = TempDir::new("engine-live");
    let (broker, engine) = node(&dir, EngineConfig::default()).await;
    let mut watcher = raw_connect_ok(broker.addr, v5_connect("watcher")).await;
    raw_subscribe(&mut watcher, 1, &[("out/#", QoS::AtMostOnce)]).await;
    let addr = broker.addr;
    let load = tokio::spawn(async move {
        let mut c = raw_connect_ok(addr, v5_connect("load")).await;
        for i in 0..3000 {
            publish(&mut c, "in/x", &format!("{{\"i\":{i}}}")).await;
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        c.send(&Packet::PingReq).await;
        assert_eq!(c.recv().await, Some(Packet::PingResp));
    });
    for round in 0..20 {
        let id = format!("r{round}");
        engine
            .put(
                rule(
                    &id,
                    r#"SELECT payload.i AS i FROM "in/#" WHERE payload.i % 1000 = 999"#,
                    vec![republish("out/${i}", Some("hit"))],
                ),
                false,
            )
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        if round % 2 == 0 {
            engine.remove(&id).unwrap();
        }
    }
    load.await.unwrap();
    settle(&engine).await;
    // The ten rules left each saw every message after they were added; the node kept serving.
    assert_eq!(engine.list().len(), 10);
    watcher.send(&Packet::PingReq).await;
    let mut outs = 0;
    loop {
        match watcher.recv().await {
            Some(Packet::Publish(_)) => outs += 1,
            Some(Packet::PingResp) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(outs <= 30, "at most 10 rules x 3 hits: {outs}");
    broker.stop().await;
}

#[tokio::test]
async fn a_window_rule_acts_on_the_average_of_the_last_seconds_per_topic() {
    let dir = TempDir::new("engine-window");
    let (broker, engine) = node(&dir, EngineConfig::default()).await;
    let mut spec = rule(
        "hot",
        r#"SELECT topic_level(topic, 2) AS m, win.avg AS avg, win.count AS n FROM "m/+/temp" WHERE win.count >= 3 AND win.avg > 80"#,
        vec![republish("alerts/${m}", Some("${avg} over ${n}"))],
    );
    spec.window = Some(m2m_engine::WindowSpec { field: "payload.t".into(), secs: 60 });
    engine.put(spec, false).unwrap();
    let mut watcher = raw_connect_ok(broker.addr, v5_connect("watcher")).await;
    raw_subscribe(&mut watcher, 1, &[("alerts/#", QoS::AtMostOnce)]).await;
    let mut c = raw_connect_ok(broker.addr, v5_connect("c")).await;
    for (topic, t) in
        [("m/1/temp", 70), ("m/2/temp", 99), ("m/1/temp", 90), ("m/2/temp", 99), ("m/1/temp", 95)]
    {
        publish(&mut c, topic, &format!("{{\"t\":{t}}}")).await;
    }
    let alert = expect_raw_publish(watcher.recv().await);
    assert_eq!(
        (&*alert.topic, &alert.payload[..]),
        ("alerts/1", &b"85.0 over 3"[..]),
        "m/2 has two values only"
    );
    settle(&engine).await;
    watcher.send(&Packet::PingReq).await;
    assert_eq!(watcher.recv().await, Some(Packet::PingResp));
    broker.stop().await;
}

#[tokio::test]
async fn a_dead_man_rule_fires_once_per_silence_of_each_client() {
    let dir = TempDir::new("engine-silence");
    let (broker, engine) = node(&dir, EngineConfig::default()).await;
    let mut spec = rule(
        "deadman",
        r#"SELECT key, silent_ms FROM "$events/silent""#,
        vec![republish("alerts/silent/${key}", Some("${silent_ms}"))],
    );
    spec.silence = Some(m2m_engine::SilenceSpec {
        filter: "trucks/+/pos".into(),
        per: "clientid".into(),
        after_secs: 2,
    });
    engine.put(spec, false).unwrap();
    let mut watcher = raw_connect_ok(broker.addr, v5_connect("watcher")).await;
    raw_subscribe(&mut watcher, 1, &[("alerts/#", QoS::AtMostOnce)]).await;
    let mut t1 = raw_connect_ok(broker.addr, v5_connect("truck-1")).await;
    let mut t2 = raw_connect_ok(broker.addr, v5_connect("truck-2")).await;
    publish(&mut t1, "trucks/1/pos", "{}").await;
    // truck-2 keeps reporting (10 a second) for 4 s; truck-1 falls silent.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        publish(&mut t2, "trucks/2/pos", "{}").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alert = expect_raw_publish(watcher.recv().await);
    assert_eq!(&*alert.topic, "alerts/silent/truck-1");
    let silent: u64 = std::str::from_utf8(&alert.payload).unwrap().parse().unwrap();
    assert!((2000..3500).contains(&silent), "fired about 2 s after: {silent} ms");
    watcher.send(&Packet::PingReq).await;
    assert_eq!(watcher.recv().await, Some(Packet::PingResp), "once, and not for truck-2 while it reports");
    // truck-1 reports again and falls silent again, and truck-2 has stopped: one alert each.
    publish(&mut t1, "trucks/1/pos", "{}").await;
    let mut next = vec![
        expect_raw_publish(watcher.recv().await).topic.to_string(),
        expect_raw_publish(watcher.recv().await).topic.to_string(),
    ];
    next.sort();
    assert_eq!(next, ["alerts/silent/truck-1", "alerts/silent/truck-2"]);
    broker.stop().await;
}

#[tokio::test]
async fn quarantines_and_releases_are_events_for_rules() {
    let dir = TempDir::new("engine-quarantine-events");
    let (broker, engine) = node(&dir, EngineConfig::default()).await;
    engine
        .put(
            rule(
                "tell",
                r#"SELECT event, clientid, mode, actor FROM "$events/quarantined", "$events/released""#,
                vec![republish("ops/${event}/${clientid}", Some("${mode} by ${actor}"))],
            ),
            false,
        )
        .unwrap();
    let mut ops = raw_connect_ok(broker.addr, v5_connect("ops")).await;
    raw_subscribe(&mut ops, 1, &[("ops/#", QoS::AtMostOnce)]).await;
    let entry = broker
        .access
        .add_quarantine(
            m2m_access::Target::ClientId("press-1".into()),
            m2m_access::Mode::Isolate,
            "testing",
            "operator",
            None,
        )
        .unwrap();
    let p = expect_raw_publish(ops.recv().await);
    assert_eq!((&*p.topic, &p.payload[..]), ("ops/quarantined/press-1", &b"isolate by operator"[..]));
    broker.access.release_quarantine(entry.id, "api").unwrap();
    let p = expect_raw_publish(ops.recv().await);
    assert_eq!(
        (&*p.topic, &p.payload[..]),
        ("ops/released/press-1", &b" by api"[..]),
        "no mode on a release"
    );
    broker.stop().await;
}

#[test]
fn a_rule_with_a_webhook_is_checked_outside_a_runtime() {
    let mut spec = rule("hook", r#"SELECT * FROM "a/#""#, vec![]);
    spec.actions.push(ActionSpec::Webhook {
        url: "http://127.0.0.1:9/alerts".into(),
        ca: None,
        headers: vec![],
        body: None,
        timeout_ms: None,
        max_retries: None,
    });
    assert!(Engine::check(&spec).is_ok());
    spec.actions[0] = ActionSpec::Webhook {
        url: "https://127.0.0.1/".into(),
        ca: Some("/nonexistent/ca.pem".into()),
        headers: vec![],
        body: None,
        timeout_ms: None,
        max_retries: None,
    };
    let err = Engine::check(&spec).unwrap_err().to_string();
    assert!(err.contains("webhook") && err.contains("cannot read the CA file"), "{err}");
}

#[tokio::test]
async fn deliveries_and_drops_are_events_for_rules() {
    let dir = TempDir::new("engine-delivery-events");
    let (broker, engine) = node(&dir, EngineConfig::default()).await;
    engine
        .put(
            rule(
                "lost",
                r#"SELECT reason, clientid, from_clientid, topic, payload FROM "$events/message_dropped" WHERE topic NOT LIKE 'ops/%'"#,
                vec![republish("ops/dropped/${reason}/${clientid}", Some("${from_clientid} ${topic} ${payload}"))],
            ),
            false,
        )
        .unwrap();
    engine
        .put(
            rule(
                "seen",
                r#"SELECT clientid, from_clientid, qos FROM "$events/message_delivered" WHERE topic = 'cmd/pump'"#,
                vec![republish("ops/delivered/${clientid}", Some("${from_clientid} q${qos}"))],
            ),
            false,
        )
        .unwrap();
    let mut ops = raw_connect_ok(broker.addr, v5_connect("ops")).await;
    raw_subscribe(&mut ops, 1, &[("ops/#", QoS::AtMostOnce)]).await;
    // A persistent subscriber that goes away: QoS 0 for it is dropped while it is offline.
    let mut cold = raw_connect_ok(broker.addr, m2m_test::persistent_connect("cold", true)).await;
    raw_subscribe(&mut cold, 1, &[("cold/#", QoS::AtMostOnce)]).await;
    cold.send(&Packet::Disconnect(m2m_codec::Disconnect::default())).await;
    assert!(cold.until_closed().await.is_empty());
    let mut pump = raw_connect_ok(broker.addr, v5_connect("pump")).await;
    raw_subscribe(&mut pump, 1, &[("cmd/pump", QoS::AtLeastOnce)]).await;

    let mut controller = raw_connect_ok(broker.addr, v5_connect("controller")).await;
    publish(&mut controller, "nowhere/1", "a").await;
    let p = expect_raw_publish(ops.recv().await);
    assert_eq!(
        (&*p.topic, &p.payload[..]),
        ("ops/dropped/no_subscribers/controller", &b"controller nowhere/1 a"[..])
    );
    publish(&mut controller, "cold/1", "b").await;
    let p = expect_raw_publish(ops.recv().await);
    assert_eq!((&*p.topic, &p.payload[..]), ("ops/dropped/offline/cold", &b"controller cold/1 b"[..]));
    publish(&mut controller, "cmd/pump", "on").await;
    let p = expect_raw_publish(pump.recv().await);
    assert_eq!(&p.payload[..], b"on");
    let p = expect_raw_publish(ops.recv().await);
    assert_eq!((&*p.topic, &p.payload[..]), ("ops/delivered/pump", &b"controller q0"[..]));
    settle(&engine).await;
    let show = engine.get("seen").unwrap();
    assert_eq!(show.metrics.passed, 1, "one delivery of cmd/pump; the others fail WHERE");
    broker.stop().await;
}
