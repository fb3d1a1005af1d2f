//! Nodes joined into a mesh, each a real `m2m node` process on loopback: a line A–B–C where messages
//! published on A reach a subscriber on C through B with their MQTT 5 properties, exactly once; and a
//! triangle, where no message loops or arrives twice.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use m2m_codec::{Packet, PublishProperties, QoS};
use m2m_test::{free_port, raw_connect_ok, raw_publish, raw_subscribe, v5_connect, RawClient, TempDir};
use tokio::process::Child;

mod common;
use common::{m2m, spawn_drained, wait_until_listening};

/// A node of the test mesh: its process, MQTT address and HTTP API.
struct Node {
    _process: Child,
    mqtt: SocketAddr,
    api: String,
}

async fn node(dir: &TempDir, id: &str, mesh_port: u16, connect: &[u16]) -> Node {
    node_at(dir, id, free_port(), free_port(), mesh_port, connect).await
}

async fn node_at(
    dir: &TempDir,
    id: &str,
    mqtt_port: u16,
    http_port: u16,
    mesh_port: u16,
    connect: &[u16],
) -> Node {
    let mqtt: SocketAddr = format!("127.0.0.1:{mqtt_port}").parse().unwrap();
    let api = format!("127.0.0.1:{http_port}");
    let data = dir.path().join(id);
    let (listen, data) = (mqtt.to_string(), data.to_str().unwrap().to_owned());
    let mesh_listen = format!("tcp/127.0.0.1:{mesh_port}");
    let mut args = vec!["node", "--listen", &listen, "--data-dir", &data, "--log-level", "warn"];
    args.extend(["--node-id", id, "--mesh-listen", &mesh_listen]);
    let connects: Vec<String> = connect.iter().map(|p| format!("tcp/127.0.0.1:{p}")).collect();
    for c in &connects {
        args.extend(["--mesh-connect", c.as_str()]);
    }
    let mut process = spawn_drained(m2m(&args).env("M2M_HTTP_LISTEN", &api));
    wait_until_listening(&mut process, mqtt).await;
    wait_until_listening(&mut process, api.parse().unwrap()).await;
    Node { _process: process, mqtt, api: format!("http://{api}") }
}

/// `m2m mesh status --json` of `node`.
async fn status(node: &Node) -> serde_json::Value {
    let out = common::run(m2m(&["mesh", "status", "--json", "--api", &node.api])).await;
    assert!(out.status.success(), "m2m mesh status failed: {}", common::text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Whether `node` holds `filters` for node `of` now (after a short pause if it does not), failing
/// the test past `deadline`.
async fn holds(node: &Node, of: &str, filters: serde_json::Value, deadline: Instant, failure: &str) -> bool {
    let held = status(node).await;
    if node_entry(&held, of)["filters"] == filters {
        return true;
    }
    assert!(Instant::now() < deadline, "{failure}: {held}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    false
}

fn node_entry<'a>(status: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    status["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).unwrap_or(&serde_json::Value::Null)
}

async fn client(node: &Node, id: &str) -> RawClient {
    raw_connect_ok(node.mqtt, v5_connect(id)).await
}

async fn publish(c: &mut RawClient, topic: &str, qos: QoS, id: u16, payload: &str, props: PublishProperties) {
    let mut p = raw_publish(topic, qos, (qos != QoS::AtMostOnce).then_some(id), b"");
    p.payload = Bytes::copy_from_slice(payload.as_bytes());
    p.properties = props;
    c.send(&Packet::Publish(p)).await;
    if qos == QoS::AtLeastOnce {
        assert!(matches!(c.recv().await, Some(Packet::PubAck(_))));
    }
}

/// The next PUBLISH on `c` within `wait`, acknowledged if it is QoS 1; `None` if none came.
async fn next(c: &mut RawClient, wait: Duration) -> Option<m2m_codec::Publish> {
    let p = match tokio::time::timeout(wait, c.recv()).await {
        Ok(Some(Packet::Publish(p))) => p,
        Ok(other) => panic!("expected PUBLISH, got {other:?}"),
        Err(_) => return None,
    };
    if let Some(id) = p.packet_id {
        c.send(&Packet::PubAck(m2m_codec::Ack::new(id))).await;
    }
    Some(p)
}

/// Publishes `probe` on `from` until `to` (subscribed to it) receives one: the mesh has propagated
/// the subscription. Then reads what is left of the probes. The probes go at QoS 1, the way of the
/// QoS 1/2 messages that follow: through the outbox, which needs the filters the destination
/// announced, not only the routes zenoh knows (a QoS 0 probe can cross before those arrive).
async fn until_routed(from: &mut RawClient, to: &mut RawClient, probe: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut id = 60_000u16;
    loop {
        id += 1;
        publish(from, probe, QoS::AtLeastOnce, id, "probe", PublishProperties::default()).await;
        if next(to, Duration::from_millis(200)).await.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "{probe} never crossed the mesh");
    }
    while next(to, Duration::from_millis(300)).await.is_some() {}
}

#[tokio::test]
async fn a_message_published_on_a_reaches_c_through_b_once_with_its_properties() {
    let dir = TempDir::new("mesh-line");
    let (pa, pb) = (free_port(), free_port());
    let a = node(&dir, "a", pa, &[]).await;
    let b = node(&dir, "b", pb, &[pa]).await;
    let c = node(&dir, "c", free_port(), &[pb]).await;

    let mut sub_c = client(&c, "sub-c").await;
    raw_subscribe(&mut sub_c, 1, &[("plant/#", QoS::AtLeastOnce), ("probe/c", QoS::AtMostOnce)]).await;
    // An overlapping filter on the same node: still one copy per message.
    raw_subscribe(&mut sub_c, 2, &[("plant/+/temp", QoS::AtLeastOnce)]).await;
    let mut sub_b = client(&b, "sub-b").await;
    raw_subscribe(&mut sub_b, 1, &[("office/#", QoS::AtMostOnce)]).await;
    let mut pub_a = client(&a, "pub-a").await;
    until_routed(&mut pub_a, &mut sub_c, "probe/c").await;

    let props = PublishProperties {
        content_type: Some("application/json".into()),
        response_topic: Some("plant/1/reply".into()),
        correlation_data: Some(Bytes::from_static(b"req-7")),
        user_properties: vec![("site".into(), "north".into()), ("site".into(), "south".into())],
        message_expiry_interval: Some(3600),
        payload_format_indicator: Some(true),
        ..PublishProperties::default()
    };
    publish(&mut pub_a, "plant/1/temp", QoS::AtLeastOnce, 1, "{\"t\":21.5}", props.clone()).await;
    let got = next(&mut sub_c, Duration::from_secs(10)).await.expect("the message reached C");
    assert_eq!(
        (&*got.topic, &got.payload[..], got.qos),
        ("plant/1/temp", &b"{\"t\":21.5}"[..], QoS::AtLeastOnce)
    );
    assert_eq!(got.properties.content_type, props.content_type);
    assert_eq!(got.properties.response_topic, props.response_topic);
    assert_eq!(got.properties.correlation_data, props.correlation_data);
    assert_eq!(got.properties.user_properties, props.user_properties);
    assert_eq!(got.properties.payload_format_indicator, Some(true));
    let left = got.properties.message_expiry_interval.unwrap();
    assert!((3590..=3600).contains(&left), "expiry reduced by the time spent: {left}");

    for i in 0..50 {
        let qos = if i % 2 == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
        publish(
            &mut pub_a,
            &format!("plant/{i}/temp"),
            qos,
            100 + i,
            &i.to_string(),
            PublishProperties::default(),
        )
        .await;
    }
    let mut payloads = Vec::new();
    while let Some(p) = next(&mut sub_c, Duration::from_secs(2)).await {
        payloads.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    // QoS 0 goes by topic, QoS 1 through C's outbox: each in order, not interleaved in order.
    let numbers: Vec<u16> = payloads.iter().map(|p| p.parse().unwrap()).collect();
    let even: Vec<u16> = numbers.iter().copied().filter(|n| n % 2 == 0).collect();
    let odd: Vec<u16> = numbers.iter().copied().filter(|n| n % 2 == 1).collect();
    assert_eq!(even, (0..50).step_by(2).collect::<Vec<_>>(), "each QoS 0 message once, in order");
    assert_eq!(odd, (1..50).step_by(2).collect::<Vec<_>>(), "each QoS 1 message once, in order");
    assert!(next(&mut sub_b, Duration::from_millis(300)).await.is_none(), "B's subscriber wants none of it");
    // Interest, not flooding: B carries A's messages to C but takes none of them in.
    let seen_by_b = status(&b).await;
    assert_eq!(seen_by_b["received"], 0, "{seen_by_b}");
    let seen_by_c = status(&c).await;
    assert!(seen_by_c["received"].as_u64().unwrap() >= 51, "C took them in: {seen_by_c}");
}

#[tokio::test]
async fn in_a_triangle_no_message_loops_or_arrives_twice() {
    let dir = TempDir::new("mesh-triangle");
    let (pa, pb) = (free_port(), free_port());
    let a = node(&dir, "a", pa, &[]).await;
    let b = node(&dir, "b", pb, &[pa]).await;
    let c = node(&dir, "c", free_port(), &[pa, pb]).await;

    let mut subs = Vec::new();
    for (n, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        let mut s = client(n, &format!("sub-{name}")).await;
        raw_subscribe(
            &mut s,
            1,
            &[("line/#", QoS::AtLeastOnce), (&format!("probe/{name}"), QoS::AtMostOnce)],
        )
        .await;
        subs.push(s);
    }
    let mut pub_a = client(&a, "pub-a").await;
    let mut pub_c = client(&c, "pub-c").await;
    // Every way a message goes below: A to B and C, C to A and B.
    for (i, name) in ["b", "c"].into_iter().enumerate() {
        until_routed(&mut pub_a, &mut subs[i + 1], &format!("probe/{name}")).await;
    }
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        until_routed(&mut pub_c, &mut subs[i], &format!("probe/{name}")).await;
    }

    for i in 0..20u16 {
        publish(
            &mut pub_a,
            "line/a",
            QoS::AtLeastOnce,
            i + 1,
            &format!("a{i}"),
            PublishProperties::default(),
        )
        .await;
        publish(
            &mut pub_c,
            "line/c",
            QoS::AtLeastOnce,
            i + 1,
            &format!("c{i}"),
            PublishProperties::default(),
        )
        .await;
    }
    for (name, s) in ["a", "b", "c"].iter().zip(subs.iter_mut()) {
        let mut got = Vec::new();
        while let Some(p) = next(s, Duration::from_secs(2)).await {
            got.push(String::from_utf8(p.payload.to_vec()).unwrap());
        }
        let from_a: Vec<_> = got.iter().filter(|p| p.starts_with('a')).cloned().collect();
        let from_c: Vec<_> = got.iter().filter(|p| p.starts_with('c')).cloned().collect();
        assert_eq!(from_a, (0..20).map(|i| format!("a{i}")).collect::<Vec<_>>(), "on {name}");
        assert_eq!(from_c, (0..20).map(|i| format!("c{i}")).collect::<Vec<_>>(), "on {name}");
    }
}

/// A zenoh peer of no node, connected to the mesh endpoint on `port`.
async fn foreign_peer(port: u16) -> zenoh::Session {
    let config = format!(
        r#"{{"mode": "peer", "connect": {{"endpoints": ["tcp/127.0.0.1:{port}"]}}, "listen": {{"endpoints": []}},
            "scouting": {{"multicast": {{"enabled": false}}, "gossip": {{"enabled": false}}}}}}"#
    );
    zenoh::open(zenoh::Config::from_json5(&config).unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_mesh_key_space_is_dropped_and_the_link_keeps_working() {
    let dir = TempDir::new("mesh-garbage");
    let pa = free_port();
    let a = node(&dir, "a", pa, &[]).await;
    let b = node(&dir, "b", free_port(), &[pa]).await;
    let mut sub_b = client(&b, "sub-b").await;
    raw_subscribe(&mut sub_b, 1, &[("plant/#", QoS::AtMostOnce), ("probe/b", QoS::AtMostOnce)]).await;
    let mut pub_a = client(&a, "pub-a").await;
    until_routed(&mut pub_a, &mut sub_b, "probe/b").await;

    // A foreign zenoh peer puts frames that are not ours on the keys B subscribes to.
    let rogue = foreign_peer(pa).await;
    for garbage in [&b""[..], b"\x01", b"\x09garbage", &[1, 3, 0, 200][..]] {
        rogue.put("m2m/t/plant/1/temp", garbage.to_vec()).await.unwrap();
    }
    publish(&mut pub_a, "plant/1/temp", QoS::AtMostOnce, 0, "real", PublishProperties::default()).await;
    let p = next(&mut sub_b, Duration::from_secs(5)).await.unwrap();
    assert_eq!(&p.payload[..], b"real", "only the real message arrives");
    assert!(next(&mut sub_b, Duration::from_millis(300)).await.is_none());
    rogue.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_announcement_of_a_nodes_filters_is_set_right_by_that_nodes_stamp() {
    let dir = TempDir::new("mesh-stamp");
    let pa = free_port();
    let a = node(&dir, "a", pa, &[]).await;
    let b = node(&dir, "b", free_port(), &[pa]).await;
    let mut sub_b = client(&b, "sub-b").await;
    raw_subscribe(&mut sub_b, 1, &[("plant/#", QoS::AtLeastOnce), ("probe/b", QoS::AtMostOnce)]).await;
    let mut pub_a = client(&a, "pub-a").await;
    until_routed(&mut pub_a, &mut sub_b, "probe/b").await;

    // A foreign peer tells A, in B's name, that B wants nothing: A stops keeping QoS 1 for B.
    let rogue = foreign_peer(pa).await;
    let taken = Instant::now() + Duration::from_secs(10);
    while !holds(&a, "b", serde_json::json!([]), taken, "A never took the false announcement").await {
        rogue.put("m2m/i/b", r#"{"run":1,"version":1000,"filters":[]}"#).await.unwrap();
    }
    let false_at = Instant::now();
    rogue.close().await.unwrap();

    // B's next stamp (every 5 s) does not match what A holds: A asks B again and sends B what it
    // wants.
    let back = false_at + Duration::from_secs(10);
    let filters = serde_json::json!(["plant/#", "probe/b"]);
    while !holds(&a, "b", filters.clone(), back, "A never got B's filters back").await {}
    publish(&mut pub_a, "plant/1/temp", QoS::AtLeastOnce, 1, "kept", PublishProperties::default()).await;
    let p = next(&mut sub_b, Duration::from_secs(5)).await.expect("B gets its QoS 1 message");
    assert_eq!((&p.payload[..], p.qos), (&b"kept"[..], QoS::AtLeastOnce));
}

/// Publishes `count` messages `<tag>-<n>` on `topic` at `rate` per second; returns how many the node
/// acknowledged (PUBACK, or PUBCOMP for QoS 2).
async fn paced_publisher(
    addr: SocketAddr,
    id: &str,
    topic: &str,
    qos: rumqttc::QoS,
    count: u64,
    rate: u64,
) -> u64 {
    let mut options = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 256);
    let (topic, tag) = (topic.to_owned(), id.to_owned());
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        for n in 0..count {
            tick.tick().await;
            client.publish(&topic, qos, false, format!("{tag}-{n}")).await.unwrap();
        }
        client
    });
    let mut acked = 0;
    while acked < count {
        match tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_) | rumqttc::Packet::PubComp(_)))) => {
                acked += 1
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publisher {id}: {e}"),
            Err(_) => break,
        }
    }
    drop(sender.await);
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_the_middle_node_is_down_all_arrive_and_qos2_once() {
    let dir = TempDir::new("mesh-partition");
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let a = node(&dir, "a", pa, &[]).await;
    let mut b = node(&dir, "b", pb, &[pa]).await;
    let c = node(&dir, "c", pc, &[pb]).await;

    // A persistent subscriber on C, counting every copy it receives.
    let mut options = rumqttc::MqttOptions::new("sub-c", c.mqtt.ip().to_string(), c.mqtt.port());
    options.set_clean_session(false);
    options.set_keep_alive(Duration::from_secs(30));
    let (sub, mut events) = rumqttc::AsyncClient::new(options, 1024);
    sub.subscribe("load/#", rumqttc::QoS::ExactlyOnce).await.unwrap();
    let (tx, mut received) = tokio::sync::mpsc::unbounded_channel::<String>();
    let subscriber = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let _ = tx.send(String::from_utf8_lossy(&p.payload).into_owned());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    // Wait until A knows C's filter and the path works.
    let mut probe = client(&a, "probe-a").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    'routed: loop {
        publish(&mut probe, "load/probe", QoS::AtLeastOnce, 1, "probe", PublishProperties::default()).await;
        while let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(300), received.recv()).await {
            if p == "probe" {
                break 'routed;
            }
        }
        assert!(Instant::now() < deadline, "C's subscription never reached A");
    }
    while tokio::time::timeout(Duration::from_millis(500), received.recv()).await.is_ok() {}

    // 16 s of load: QoS 1 at 1 000 msg/s and QoS 2 at 250 msg/s; B is down from 3 s to 13 s.
    let (q1, q2) = (16_000u64, 4_000u64);
    let p1 = tokio::spawn(paced_publisher(a.mqtt, "q1", "load/q1", rumqttc::QoS::AtLeastOnce, q1, 1000));
    let p2 = tokio::spawn(paced_publisher(a.mqtt, "q2", "load/q2", rumqttc::QoS::ExactlyOnce, q2, 250));
    tokio::time::sleep(Duration::from_secs(3)).await;
    b._process.start_kill().unwrap();
    b._process.wait().await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    b = node(&dir, "b", pb, &[pa]).await;
    assert_eq!(p1.await.unwrap(), q1, "A acknowledged every QoS 1 message");
    assert_eq!(p2.await.unwrap(), q2, "A acknowledged every QoS 2 message");

    let mut counts: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    let all = (q1 + q2) as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while counts.len() < all && Instant::now() < deadline {
        if let Ok(Some(p)) = tokio::time::timeout(Duration::from_secs(1), received.recv()).await {
            if p != "probe" {
                *counts.entry(p).or_default() += 1;
            }
        }
    }
    // Anything still on its way would be a duplicate.
    while let Ok(Some(p)) = tokio::time::timeout(Duration::from_secs(2), received.recv()).await {
        *counts.entry(p).or_default() += 1;
    }
    let missing_q1 = (0..q1).filter(|n| !counts.contains_key(&format!("q1-{n}"))).count();
    let missing_q2 = (0..q2).filter(|n| !counts.contains_key(&format!("q2-{n}"))).count();
    let twice_q1 = counts.iter().filter(|(k, n)| k.starts_with("q1-") && **n > 1).count();
    let twice_q2 = counts.iter().filter(|(k, n)| k.starts_with("q2-") && **n > 1).count();
    println!(
        "partition: sent {q1} QoS 1 + {q2} QoS 2; missing {missing_q1} + {missing_q2}; \
         duplicated {twice_q1} + {twice_q2}"
    );
    assert_eq!((missing_q1, missing_q2), (0, 0), "every message arrived");
    assert_eq!(twice_q2, 0, "no QoS 2 message twice");
    subscriber.abort();
    drop(b);
}

/// Subscribes a fresh client on `node` to `filter` until a retained message arrives (or `wait`
/// passes); returns its payload.
async fn retained_on(node: &Node, filter: &str, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    let mut n = 0;
    loop {
        n += 1;
        let mut c = client(node, &format!("look-{n}")).await;
        raw_subscribe(&mut c, 1, &[(filter, QoS::AtMostOnce)]).await;
        if let Some(p) = next(&mut c, Duration::from_millis(300)).await {
            assert!(p.retain, "a retained message is sent with RETAIN");
            return Some(String::from_utf8(p.payload.to_vec()).unwrap());
        }
        if Instant::now() >= deadline {
            return None;
        }
    }
}

#[tokio::test]
async fn a_new_subscriber_on_any_node_gets_the_retained_messages_of_the_mesh() {
    let dir = TempDir::new("mesh-retained");
    let pa = free_port();
    let a = node(&dir, "a", pa, &[]).await;
    let b = node(&dir, "b", free_port(), &[pa]).await;
    let mut pub_a = client(&a, "pub-a").await;
    let mut p = raw_publish("state/lamp/1", QoS::AtLeastOnce, Some(1), b"on");
    p.retain = true;
    pub_a.send(&Packet::Publish(p)).await;
    assert!(matches!(pub_a.recv().await, Some(Packet::PubAck(_))));
    assert_eq!(retained_on(&b, "state/#", Duration::from_secs(15)).await.as_deref(), Some("on"));

    // A node joining later gets it too, from the others.
    let c = node(&dir, "c", free_port(), &[pa]).await;
    assert_eq!(retained_on(&c, "state/+/1", Duration::from_secs(15)).await.as_deref(), Some("on"));

    // Cleared on A: cleared everywhere.
    let mut clear = raw_publish("state/lamp/1", QoS::AtLeastOnce, Some(2), b"");
    clear.retain = true;
    pub_a.send(&Packet::Publish(clear)).await;
    assert!(matches!(pub_a.recv().await, Some(Packet::PubAck(_))));
    let deadline = Instant::now() + Duration::from_secs(15);
    for (name, n) in [("B", &b), ("C", &c)] {
        while retained_on(n, "state/#", Duration::ZERO).await.is_some() {
            assert!(Instant::now() < deadline, "the retained message was not cleared on {name}");
        }
    }
}

#[tokio::test]
async fn a_backlog_waits_on_disk_through_a_restart_of_its_node_and_drains_when_the_destination_returns() {
    let dir = TempDir::new("mesh-backlog");
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let (a_mqtt, a_http, c_mqtt, c_http) = (free_port(), free_port(), free_port(), free_port());
    let mut a = node_at(&dir, "a", a_mqtt, a_http, pa, &[]).await;
    let b = node(&dir, "b", pb, &[pa]).await;
    let mut c = node_at(&dir, "c", c_mqtt, c_http, pc, &[pb]).await;
    let mut sub = raw_connect_ok(c.mqtt, m2m_test::persistent_connect("sub-c", true)).await;
    raw_subscribe(&mut sub, 1, &[("load/#", QoS::AtLeastOnce), ("probe/c", QoS::AtMostOnce)]).await;
    let mut pub_a = client(&a, "pub-a").await;
    until_routed(&mut pub_a, &mut sub, "probe/c").await;
    // A knows C's filters (announced) before C goes.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(&a).await;
        let seen = node_entry(&s, "c");
        if seen["filters"].as_array().is_some_and(|f| f.iter().any(|f| f == "load/#")) {
            assert_eq!(node_entry(&s, "b")["linked"], true, "A has a link of its own to B: {s}");
            assert_eq!(seen["linked"], false, "C is reached through B: {s}");
            assert!(seen["rtt_ms"].as_f64().is_some(), "C answers: {s}");
            break;
        }
        assert!(Instant::now() < deadline, "A never heard C's filters: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(sub);
    c._process.start_kill().unwrap();
    c._process.wait().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while node_entry(&status(&a).await, "c")["reachable"] != false {
        assert!(Instant::now() < deadline, "A still sees C");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..100u16 {
        publish(&mut pub_a, "load/x", QoS::AtLeastOnce, i + 1, &i.to_string(), PublishProperties::default())
            .await;
    }
    assert_eq!(node_entry(&status(&a).await, "c")["backlog"], 100);

    // A restarts: its backlog is on disk.
    drop(pub_a);
    a._process.start_kill().unwrap();
    a._process.wait().await.unwrap();
    let a = node_at(&dir, "a", a_mqtt, a_http, pa, &[]).await;
    assert_eq!(node_entry(&status(&a).await, "c")["backlog"], 100, "the backlog survived the restart");

    // C returns: its persistent subscriber gets every message, once, in order.
    let c = node_at(&dir, "c", c_mqtt, c_http, pc, &[pb]).await;
    let mut sub = raw_connect_ok(c.mqtt, m2m_test::persistent_connect("sub-c", false)).await;
    let mut got = Vec::new();
    while got.len() < 100 {
        let Some(p) = next(&mut sub, Duration::from_secs(15)).await else { break };
        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    assert_eq!(got, (0..100).map(|i| i.to_string()).collect::<Vec<_>>());
    assert!(next(&mut sub, Duration::from_millis(500)).await.is_none(), "nothing twice");
    let deadline = Instant::now() + Duration::from_secs(15);
    while node_entry(&status(&a).await, "c")["backlog"] != 0 {
        assert!(Instant::now() < deadline, "the backlog did not drain");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(b);
}

#[tokio::test]
async fn a_history_query_with_scope_mesh_is_answered_by_every_node_and_merged_in_time_order() {
    let dir = TempDir::new("mesh-query");
    let (pa, pb) = (free_port(), free_port());
    let a = node(&dir, "a", pa, &[]).await;
    let b = node(&dir, "b", pb, &[pa]).await;
    let c = node(&dir, "c", free_port(), &[pb]).await;
    for (n, name) in [(&a, "a"), (&c, "c"), (&a, "a")] {
        let mut p = client(n, &format!("sensor-{name}")).await;
        let payload = format!("{{\"t\": {}}}", name.len());
        publish(
            &mut p,
            &format!("plant/{name}/temp"),
            QoS::AtLeastOnce,
            1,
            &payload,
            PublishProperties::default(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let (points, answered) = loop {
        let out = common::run(m2m(&[
            "query", "plant/#", "--mesh", "--format", "json", "--from", "-1h", "--api", &a.api,
        ]))
        .await;
        assert!(out.status.success(), "{}", common::text(&out.stderr));
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let points: Vec<(String, String)> = body["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["node"].as_str().unwrap().to_owned(), p["topic"].as_str().unwrap().to_owned()))
            .collect();
        let stderr = common::text(&out.stderr);
        if points.len() == 3 && stderr.contains("answered: a, b, c") {
            break (points, stderr);
        }
        assert!(Instant::now() < deadline, "not every node answered: {points:?} {stderr}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let expected = [("a", "plant/a/temp"), ("c", "plant/c/temp"), ("a", "plant/a/temp")];
    assert_eq!(points, expected.map(|(n, t)| (n.to_owned(), t.to_owned())), "in time order");
    assert!(answered.contains("did not answer: -"), "{answered}");

    let out = common::run(m2m(&[
        "query",
        "plant/+/temp",
        "--mesh",
        "--latest",
        "--format",
        "json",
        "--api",
        &c.api,
    ]))
    .await;
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes: Vec<&str> =
        body["points"].as_array().unwrap().iter().map(|p| p["node"].as_str().unwrap()).collect();
    assert_eq!(nodes, ["a", "c"], "the last value of each topic on each node");
    drop(b);
}

#[tokio::test]
async fn an_uplink_in_the_config_file_carries_the_messages_of_the_whole_mesh_to_mosquitto() {
    let dir = TempDir::new("mesh-uplink");
    // A real Mosquitto, the "cloud".
    let mosquitto = m2m_test::Mosquitto::start(dir.path(), 0, "").await;
    let port = mosquitto.port;
    let mut cloud = m2m_test::RawClient::connect(
        format!("127.0.0.1:{port}").parse().unwrap(),
        m2m_codec::ProtocolVersion::V5,
    )
    .await;
    cloud.send(&Packet::Connect(Box::new(v5_connect("cloud-app")))).await;
    assert!(matches!(cloud.recv().await, Some(Packet::ConnAck(_))));
    raw_subscribe(&mut cloud, 1, &[("site-7/#", QoS::AtLeastOnce)]).await;

    // B bridges the mesh's plant/# to the cloud; A publishes.
    std::fs::write(
        dir.path().join("b.toml"),
        format!(
            "[[uplinks]]\nname = \"cloud\"\nurl = \"mqtt://127.0.0.1:{port}\"\nprotocol = 5\n\
             out = [{{ filter = \"plant/#\", remote_prefix = \"site-7/\" }}]\n"
        ),
    )
    .unwrap();
    let pa = free_port();
    let a = node(&dir, "a", pa, &[]).await;
    let b_mqtt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let b_api = format!("127.0.0.1:{}", free_port());
    let listen = b_mqtt.to_string();
    let data = dir.path().join("b").to_str().unwrap().to_owned();
    let config = dir.path().join("b.toml").to_str().unwrap().to_owned();
    let mesh_connect = format!("tcp/127.0.0.1:{pa}");
    let args = ["node", "--config", &config, "--listen", &listen, "--data-dir", &data, "--node-id", "b"];
    let mut b = spawn_drained(
        m2m(&args)
            .args(["--mesh-connect", &mesh_connect, "--log-level", "warn"])
            .env("M2M_HTTP_LISTEN", &b_api),
    );
    wait_until_listening(&mut b, b_mqtt).await;
    let mut pub_a = client(&a, "pub-a").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        publish(&mut pub_a, "plant/1/temp", QoS::AtLeastOnce, 1, "21.5", PublishProperties::default()).await;
        if let Some(p) = next(&mut cloud, Duration::from_millis(500)).await {
            assert_eq!((&*p.topic, &p.payload[..]), ("site-7/plant/1/temp", &b"21.5"[..]));
            break;
        }
        assert!(Instant::now() < deadline, "the message never reached the cloud");
    }
    // A rule on B sends an alert to the cloud through the uplink (a forward action).
    let action =
        r#"{"type": "forward", "uplink": "cloud", "topic": "site-7/alerts/${line}", "payload": "hot: ${t}"}"#;
    let sql =
        r#"SELECT topic_level(topic, 2) AS line, payload.t AS t FROM "plant/+/temp" WHERE payload.t > 80"#;
    let added = common::run(m2m(&[
        "rule",
        "add",
        "hot",
        "--sql",
        sql,
        "--action",
        action,
        "--api",
        &format!("http://{b_api}"),
    ]))
    .await;
    assert!(added.status.success(), "{}", common::text(&added.stderr));
    publish(&mut pub_a, "plant/2/temp", QoS::AtLeastOnce, 2, r#"{"t": 95}"#, PublishProperties::default())
        .await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let p =
            next(&mut cloud, Duration::from_secs(10)).await.expect("the cloud got the message and the alert");
        got.push((p.topic.to_string(), String::from_utf8(p.payload.to_vec()).unwrap()));
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("site-7/alerts/2".to_owned(), "hot: 95".to_owned()),
            ("site-7/plant/2/temp".to_owned(), r#"{"t": 95}"#.to_owned())
        ]
    );
    let out = common::run(m2m(&["mesh", "uplinks", "--json", "--api", &format!("http://{b_api}")])).await;
    let uplinks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&uplinks[0]["name"], &uplinks[0]["connected"]), (&"cloud".into(), &true.into()), "{uplinks}");
    assert!(uplinks[0]["acknowledged"].as_u64().unwrap() >= 1, "{uplinks}");
    drop(b);
}

#[tokio::test]
async fn tls_links_join_nodes_whose_certificates_the_site_ca_signed_and_no_others() {
    let dir = TempDir::new("mesh-tls");
    let certs = dir.path().join("certs");
    let other = dir.path().join("other");
    for d in [&certs, &other] {
        let out = common::run(m2m(&["cert", "dev", "--out", d.to_str().unwrap()])).await;
        assert!(out.status.success(), "{}", common::text(&out.stderr));
    }
    // node NAME with the certificates in DIR, listening on (or connecting to) a tls/ endpoint.
    let start = |name: &'static str, pki: std::path::PathBuf, listen: Option<u16>, connect: Option<u16>| {
        let dir = dir.path().to_owned();
        async move {
            let mqtt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let api = format!("127.0.0.1:{}", free_port());
            let file = |f: &str| pki.join(f).to_str().unwrap().to_owned();
            let mut args: Vec<String> =
                ["node", "--listen", &mqtt.to_string(), "--node-id", name, "--log-level", "error"]
                    .map(str::to_owned)
                    .to_vec();
            args.extend(["--data-dir".to_owned(), dir.join(name).to_str().unwrap().to_owned()]);
            if let Some(p) = listen {
                args.extend(["--mesh-listen".to_owned(), format!("tls/127.0.0.1:{p}")]);
            }
            if let Some(p) = connect {
                args.extend(["--mesh-connect".to_owned(), format!("tls/localhost:{p}")]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut process = spawn_drained(
                m2m(&args)
                    .env("M2M_HTTP_LISTEN", &api)
                    .env("M2M_MESH_TLS_CA", file("ca.pem"))
                    .env("M2M_MESH_TLS_CERT", file("server.pem"))
                    .env("M2M_MESH_TLS_KEY", file("server.key")),
            );
            wait_until_listening(&mut process, mqtt).await;
            Node { _process: process, mqtt, api: format!("http://{api}") }
        }
    };
    let pa = free_port();
    let a = start("a", certs.clone(), Some(pa), None).await;
    let b = start("b", certs.clone(), None, Some(pa)).await;
    let intruder = start("intruder", other.clone(), None, Some(pa)).await;

    let mut sub_b = client(&b, "sub-b").await;
    raw_subscribe(&mut sub_b, 1, &[("probe/b", QoS::AtMostOnce)]).await;
    let mut pub_a = client(&a, "pub-a").await;
    until_routed(&mut pub_a, &mut sub_b, "probe/b").await;

    let mut sub_x = client(&intruder, "sub-x").await;
    raw_subscribe(&mut sub_x, 1, &[("probe/#", QoS::AtMostOnce)]).await;
    for _ in 0..10 {
        publish(&mut pub_a, "probe/x", QoS::AtMostOnce, 0, "secret", PublishProperties::default()).await;
        assert!(next(&mut sub_x, Duration::from_millis(200)).await.is_none(), "a node of another CA got in");
    }
    let seen = status(&a).await;
    let ids: Vec<&str> =
        seen["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["b"], "{seen}");
}

#[tokio::test]
async fn an_outbox_holds_at_most_its_limit_and_counts_what_it_drops() {
    let dir = TempDir::new("mesh-outbox-limit");
    let (pa, pc) = (free_port(), free_port());
    let a_mqtt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let a_api = format!("127.0.0.1:{}", free_port());
    let (listen, data) = (a_mqtt.to_string(), dir.path().join("a").to_str().unwrap().to_owned());
    let mesh_listen = format!("tcp/127.0.0.1:{pa}");
    let mut process = spawn_drained(
        m2m(&["node", "--listen", &listen, "--data-dir", &data, "--node-id", "a"])
            .args(["--mesh-listen", &mesh_listen, "--log-level", "warn"])
            .env("M2M_HTTP_LISTEN", &a_api)
            .env("M2M_MESH_OUTBOX_LIMIT", "10"),
    );
    wait_until_listening(&mut process, a_mqtt).await;
    let a = Node { _process: process, mqtt: a_mqtt, api: format!("http://{a_api}") };
    let mut c = node(&dir, "c", pc, &[pa]).await;
    let mut sub = raw_connect_ok(c.mqtt, m2m_test::persistent_connect("sub-c", true)).await;
    raw_subscribe(&mut sub, 1, &[("load/#", QoS::AtLeastOnce)]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while node_entry(&status(&a).await, "c")["filters"].as_array().is_none_or(|f| f.is_empty()) {
        assert!(Instant::now() < deadline, "A never heard C's filters");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(sub);
    c._process.start_kill().unwrap();
    c._process.wait().await.unwrap();
    let mut pub_a = client(&a, "pub-a").await;
    for i in 0..15u16 {
        publish(&mut pub_a, "load/x", QoS::AtLeastOnce, i + 1, &i.to_string(), PublishProperties::default())
            .await;
    }
    let seen = status(&a).await;
    assert_eq!(node_entry(&seen, "c")["backlog"], 10, "{seen}");
    assert_eq!(seen["dropped"], 5, "{seen}");
}
