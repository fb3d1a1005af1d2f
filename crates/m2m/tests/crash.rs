//! A real node process killed with SIGKILL in the middle of a QoS 1 and QoS 2 load from several
//! publishers, then started again on the same data directory: every message the node acknowledged
//! reaches the persistent subscriber, QoS 2 exactly once and QoS 1 at least once.
//!
//! The publishers are `rumqttc` clients (MQTT 3.1.1); a message counts as acknowledged when its PUBACK
//! (QoS 1) or PUBREC (QoS 2) arrived. The subscriber is a [`RawClient`] acting as a compliant QoS 2
//! receiver: it delivers a QoS 2 message when its PUBLISH first arrives and remembers the packet id
//! until PUBREL, across reconnects, so that a resend (DUP) is not delivered twice (MQTT 5.0 §4.3.3,
//! method A). Duplicates are then the node's doing, and are counted.
//!
//! `scripts/crash-loop.sh` runs this test many times in a row.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use m2m_codec::{Ack, Packet, ProtocolVersion, QoS as MqttQoS};
use m2m_test::{free_port, persistent_connect, raw_connect, raw_subscribe, RawClient, TempDir};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet as RPacket, QoS};
use tokio::process::Child;

mod common;
use common::{m2m, wait_until_listening};

const PUBLISHERS: [(&str, QoS); 4] =
    [("p1", QoS::AtLeastOnce), ("p2", QoS::AtLeastOnce), ("p3", QoS::ExactlyOnce), ("p4", QoS::ExactlyOnce)];

async fn start_node(data_dir: &str, addr: SocketAddr) -> Child {
    let listen = addr.to_string();
    let mut node = m2m(&["node", "--listen", &listen, "--data-dir", data_dir, "--log-level", "warn"])
        .spawn()
        .expect("start m2m");
    wait_until_listening(&mut node, addr).await;
    node
}

/// Publishes `<id>-<n>` for n = 0, 1, ... until the connection fails; returns what was acknowledged.
async fn publish_until_killed(addr: SocketAddr, id: &'static str, qos: QoS) -> HashSet<String> {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_inflight(20);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let sender = tokio::spawn(async move {
        for n in 0u64.. {
            if client.publish(format!("load/{id}"), qos, false, format!("{id}-{n}")).await.is_err() {
                break;
            }
        }
    });
    // rumqttc sends publishes in the order they were requested and reports each with its packet id.
    let mut next = 0u64;
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    let mut acked = HashSet::new();
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                in_flight.insert(pkid, next);
                next += 1;
            }
            Ok(Event::Incoming(RPacket::PubAck(a))) => {
                if let Some(n) = in_flight.remove(&a.pkid) {
                    acked.insert(format!("{id}-{n}"));
                }
            }
            Ok(Event::Incoming(RPacket::PubRec(r))) => {
                if let Some(n) = in_flight.remove(&r.pkid) {
                    acked.insert(format!("{id}-{n}"));
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    sender.abort();
    acked
}

/// What the subscriber received, and the QoS 2 packet ids it holds until PUBREL.
#[derive(Default)]
struct Received {
    count: HashMap<String, u32>,
    unreleased: HashSet<u16>,
}

/// Reads and acknowledges until the connection ends, or until nothing arrives for `idle`.
async fn consume(sub: &mut RawClient, received: &Mutex<Received>, idle: Duration) {
    loop {
        let packet = match tokio::time::timeout(idle, sub.recv()).await {
            Ok(Some(p)) => p,
            Ok(None) | Err(_) => return,
        };
        let reply = {
            let mut r = received.lock().expect("lock");
            match packet {
                Packet::Publish(p) => {
                    let id = p.packet_id.expect("QoS 1/2 subscription");
                    let payload = String::from_utf8(p.payload.to_vec()).expect("utf-8 payload");
                    match p.qos {
                        MqttQoS::ExactlyOnce => {
                            if r.unreleased.insert(id.get()) {
                                *r.count.entry(payload).or_default() += 1;
                            }
                            Packet::PubRec(Ack::new(id))
                        }
                        _ => {
                            *r.count.entry(payload).or_default() += 1;
                            Packet::PubAck(Ack::new(id))
                        }
                    }
                }
                Packet::PubRel(rel) => {
                    r.unreleased.remove(&rel.packet_id.get());
                    Packet::PubComp(Ack::new(rel.packet_id))
                }
                other => panic!("unexpected packet {other:?}"),
            }
        };
        // A node killed meanwhile resets the connection: the end, as when the read ends.
        if sub.try_send(&reply).await.is_err() {
            return;
        }
    }
}

async fn connect_subscriber(addr: SocketAddr, clean_start: bool) -> RawClient {
    let mut connect = persistent_connect("durable-sub", clean_start);
    connect.properties.session_expiry_interval = Some(3600);
    connect.properties.receive_maximum = Some(100);
    let (sub, ack) = raw_connect(addr, connect).await;
    assert_eq!(sub.version, ProtocolVersion::V5);
    assert!(!ack.reason_code.is_error(), "CONNACK {ack:?}");
    assert_eq!(ack.session_present, !clean_start, "the session survives the crash");
    sub
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_a_sigkill_mid_load() {
    let dir = TempDir::new("crash");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut node = start_node(dir.as_str(), addr).await;

    let mut sub = connect_subscriber(addr, true).await;
    raw_subscribe(&mut sub, 1, &[("load/#", MqttQoS::ExactlyOnce)]).await;
    let received = Arc::new(Mutex::new(Received::default()));
    let consumer = tokio::spawn({
        let received = received.clone();
        async move {
            consume(&mut sub, &received, Duration::from_secs(30)).await;
        }
    });
    let publishers: Vec<_> =
        PUBLISHERS.iter().map(|&(id, qos)| tokio::spawn(publish_until_killed(addr, id, qos))).collect();

    // Let the load run, then kill the node mid-write.
    let millis = 700 + u64::from(std::process::id() % 600);
    tokio::time::sleep(Duration::from_millis(millis)).await;
    node.start_kill().expect("SIGKILL");
    node.wait().await.expect("reap the killed node");
    let mut acked: HashMap<&str, HashSet<String>> = HashMap::new();
    for (p, (id, _)) in publishers.into_iter().zip(PUBLISHERS) {
        acked.insert(id, p.await.expect("publisher task"));
    }
    consumer.await.expect("consumer task");
    let before_restart: usize = received.lock().expect("lock").count.values().map(|&c| c as usize).sum();

    let mut node = start_node(dir.as_str(), addr).await;
    let mut sub = connect_subscriber(addr, false).await;
    consume(&mut sub, &received, Duration::from_secs(3)).await;
    node.start_kill().expect("stop the node");
    let _ = node.wait().await;

    let received = received.lock().expect("lock");
    let mut lost = Vec::new();
    let mut qos1_duplicates = 0;
    let mut total_acked = 0;
    for (id, qos) in PUBLISHERS {
        let set = &acked[id];
        total_acked += set.len();
        assert!(set.len() > 100, "publisher {id} got only {} acknowledgements before the kill", set.len());
        for payload in set {
            match received.count.get(payload).copied().unwrap_or(0) {
                0 => lost.push(payload.clone()),
                1 => {}
                n if qos == QoS::ExactlyOnce => panic!("QoS 2 message {payload} delivered {n} times"),
                n => qos1_duplicates += n - 1,
            }
        }
    }
    for (payload, &n) in &received.count {
        let qos2 = payload.starts_with("p3-") || payload.starts_with("p4-");
        assert!(!qos2 || n == 1, "QoS 2 message {payload} delivered {n} times");
    }
    let after_restart: usize = received.count.values().map(|&c| c as usize).sum::<usize>() - before_restart;
    println!(
        "acknowledged {total_acked}, received {before_restart} before the kill and {after_restart} after the \
         restart, QoS 1 duplicates {qos1_duplicates}, lost {}",
        lost.len()
    );
    lost.sort();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}
