//! MQTT 3.1.1 end to end, driven by an independent client (`rumqttc`) so that the node's codec is not
//! testing itself; byte-level cases (wills on a dropped socket, refused CONNECTs, keep-alive, MQTT 3.1)
//! use the raw client. Every test runs its own node on `127.0.0.1:0`.
//!
//! "Nothing else arrives" is shown without sleeping: after the message that must not arrive, a marker
//! goes through the same router, and the marker must be the next thing the subscriber sees.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use m2m_codec::{
    ConnAck, Connect, ConnectProperties, Disconnect, Packet as RawPacket, ProtocolVersion,
    Publish as RawPublish, PublishProperties, QoS as RawQoS, ReasonCode, Subscribe, SubscriptionOptions,
    Will, WillProperties,
};
use m2m_test::{within, RawClient, TestBroker};
use rumqttc::{
    AsyncClient, ConnAck as RConnAck, ConnectReturnCode, Event, MqttOptions, Packet, Publish, QoS,
    SubscribeReasonCode,
};
use tokio::sync::mpsc;

/// A `rumqttc` client whose event loop runs in a task; incoming packets arrive on a channel. The loop
/// stops at the first error (no automatic reconnection), which is how a closed socket shows up.
struct Client {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Packet, String>>,
    /// Publishes that arrived while the test waited for something else (an acknowledgement).
    early: VecDeque<Publish>,
    name: String,
}

impl Client {
    async fn connect(addr: SocketAddr, id: &str, clean_session: bool) -> (Self, RConnAck) {
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_clean_session(clean_session);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let mut this = Self { client, events, early: VecDeque::new(), name: id.to_string() };
        let ack = match this.next().await {
            Ok(Packet::ConnAck(ack)) => ack,
            other => panic!("{id}: expected CONNACK, got {other:?}"),
        };
        assert_eq!(ack.code, ConnectReturnCode::Success, "{id}: connection refused");
        (this, ack)
    }

    async fn next(&mut self) -> Result<Packet, String> {
        within(self.events.recv()).await.unwrap_or_else(|| Err("event loop ended".into()))
    }

    /// Waits for a packet `pick` accepts, keeping publishes seen on the way and skipping the rest.
    async fn expect<T>(&mut self, what: &str, mut pick: impl FnMut(&Packet) -> Option<T>) -> T {
        loop {
            match self.next().await {
                Ok(p) => {
                    if let Some(t) = pick(&p) {
                        return t;
                    }
                    if let Packet::Publish(publish) = p {
                        self.early.push_back(publish);
                    }
                }
                Err(e) => panic!("{}: connection ended while waiting for {what}: {e}", self.name),
            }
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
        within(self.client.subscribe(filter, qos)).await.expect("subscribe request");
        self.expect("SUBACK", |p| match p {
            Packet::SubAck(ack) => Some(ack.return_codes.clone()),
            _ => None,
        })
        .await
    }

    async fn unsubscribe(&mut self, filter: &str) {
        within(self.client.unsubscribe(filter)).await.expect("unsubscribe request");
        self.expect("UNSUBACK", |p| matches!(p, Packet::UnsubAck(_)).then_some(())).await;
    }

    /// Publishes and, for QoS 1 and 2, waits until the node acknowledged (PUBACK / PUBCOMP).
    async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
        within(self.client.publish(topic, qos, retain, payload.to_vec())).await.expect("publish request");
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.expect("PUBACK", |p| matches!(p, Packet::PubAck(_)).then_some(())).await,
            QoS::ExactlyOnce => {
                self.expect("PUBCOMP", |p| matches!(p, Packet::PubComp(_)).then_some(())).await
            }
        }
    }

    async fn next_publish(&mut self) -> Publish {
        if let Some(p) = self.early.pop_front() {
            return p;
        }
        self.expect("PUBLISH", |p| match p {
            Packet::Publish(publish) => Some(publish.clone()),
            _ => None,
        })
        .await
    }

    /// Sends DISCONNECT and waits until the node has closed the socket (so the node is done with the
    /// connection: the session went back to the router).
    async fn disconnect(mut self) {
        within(self.client.disconnect()).await.expect("disconnect request");
        self.closed().await;
    }

    /// Waits until the node closes the connection.
    async fn closed(&mut self) {
        loop {
            if self.next().await.is_err() {
                return;
            }
        }
    }
}

fn topic_and_payload(p: &Publish) -> (&str, &[u8]) {
    (p.topic.as_str(), &p.payload[..])
}

fn raw_connect(version: ProtocolVersion, client_id: &str, clean_start: bool, keep_alive: u16) -> Connect {
    Connect {
        protocol: version,
        clean_start,
        keep_alive,
        client_id: Arc::from(client_id),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

fn will(topic: &str, payload: &'static [u8], retain: bool) -> Will {
    Will {
        topic: Arc::from(topic),
        payload: Bytes::from_static(payload),
        qos: RawQoS::AtLeastOnce,
        retain,
        properties: WillProperties::default(),
    }
}

/// Connects a raw client and reads a successful CONNACK.
async fn raw_connected(addr: SocketAddr, connect: Connect) -> RawClient {
    let mut raw = RawClient::connect(addr, connect.protocol).await;
    raw.send(&RawPacket::Connect(Box::new(connect))).await;
    match raw.recv().await {
        Some(RawPacket::ConnAck(ack)) => assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "CONNACK {ack:?}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    raw
}

#[tokio::test]
async fn qos0_qos1_and_qos2_publishes_reach_a_subscriber_with_their_payloads() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = Client::connect(broker.addr, "sub", true).await;
    assert_eq!(
        sub.subscribe("qos/+", QoS::ExactlyOnce).await,
        [SubscribeReasonCode::Success(QoS::ExactlyOnce)]
    );
    let (mut publisher, _) = Client::connect(broker.addr, "pub", true).await;
    for (topic, qos) in [("qos/0", QoS::AtMostOnce), ("qos/1", QoS::AtLeastOnce), ("qos/2", QoS::ExactlyOnce)]
    {
        let payload = format!("payload at {qos:?}");
        publisher.publish(topic, qos, false, payload.as_bytes()).await;
        let got = sub.next_publish().await;
        assert_eq!(topic_and_payload(&got), (topic, payload.as_bytes()));
        assert_eq!(got.qos, qos, "delivered at the publish QoS (the subscription allows 2)");
        assert!(!got.retain);
    }
    broker.stop().await;
}

#[tokio::test]
async fn delivery_qos_is_the_lower_of_publish_and_subscription_qos() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = Client::connect(broker.addr, "sub", true).await;
    assert_eq!(
        sub.subscribe("down/grade", QoS::AtLeastOnce).await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let (mut publisher, _) = Client::connect(broker.addr, "pub", true).await;
    publisher.publish("down/grade", QoS::ExactlyOnce, false, b"two").await;
    publisher.publish("down/grade", QoS::AtMostOnce, false, b"zero").await;
    let (first, second) = (sub.next_publish().await, sub.next_publish().await);
    assert_eq!((&first.payload[..], first.qos), (&b"two"[..], QoS::AtLeastOnce));
    assert_eq!((&second.payload[..], second.qos), (&b"zero"[..], QoS::AtMostOnce));
    broker.stop().await;
}

#[tokio::test]
async fn retained_messages_are_set_replaced_and_cleared() {
    let broker = TestBroker::start().await;
    let (mut publisher, _) = Client::connect(broker.addr, "pub", true).await;
    publisher.publish("ret/lamp", QoS::AtLeastOnce, true, b"on").await;

    let (mut first, _) = Client::connect(broker.addr, "first", true).await;
    first.subscribe("ret/#", QoS::AtLeastOnce).await;
    let got = first.next_publish().await;
    assert_eq!(topic_and_payload(&got), ("ret/lamp", &b"on"[..]));
    assert!(got.retain, "a retained message sent because of a new subscription has RETAIN 1 (MQTT-3.3.1-8)");

    publisher.publish("ret/lamp", QoS::AtLeastOnce, true, b"off").await;
    let live = first.next_publish().await;
    assert_eq!(topic_and_payload(&live), ("ret/lamp", &b"off"[..]));
    assert!(!live.retain, "to an established subscription RETAIN is 0 (MQTT-3.3.1-9)");

    let (mut second, _) = Client::connect(broker.addr, "second", true).await;
    second.subscribe("ret/lamp", QoS::AtLeastOnce).await;
    let got = second.next_publish().await;
    assert_eq!(
        topic_and_payload(&got),
        ("ret/lamp", &b"off"[..]),
        "the second retained message replaced the first"
    );
    assert!(got.retain);

    // An empty retained payload clears the topic, and still reaches existing subscribers.
    publisher.publish("ret/lamp", QoS::AtLeastOnce, true, b"").await;
    let cleared = first.next_publish().await;
    assert_eq!(topic_and_payload(&cleared), ("ret/lamp", &b""[..]));

    let (mut third, _) = Client::connect(broker.addr, "third", true).await;
    third.subscribe("ret/#", QoS::AtLeastOnce).await;
    publisher.publish("ret/marker", QoS::AtLeastOnce, false, b"marker").await;
    let got = third.next_publish().await;
    assert_eq!(topic_and_payload(&got), ("ret/marker", &b"marker"[..]), "no retained message is left");
    broker.stop().await;
}

#[tokio::test]
async fn a_will_is_published_when_the_socket_closes_without_disconnect() {
    let broker = TestBroker::start().await;
    let (mut watcher, _) = Client::connect(broker.addr, "watcher", true).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;

    let mut connect = raw_connect(ProtocolVersion::V311, "device-1", true, 30);
    connect.will = Some(will("wills/device-1", b"device-1 is gone", false));
    let raw = raw_connected(broker.addr, connect).await;
    drop(raw);

    let got = watcher.next_publish().await;
    assert_eq!(topic_and_payload(&got), ("wills/device-1", &b"device-1 is gone"[..]));
    assert_eq!(got.qos, QoS::AtLeastOnce);
    broker.stop().await;
}

#[tokio::test]
async fn a_retained_will_is_kept_for_later_subscribers() {
    let broker = TestBroker::start().await;
    let mut connect = raw_connect(ProtocolVersion::V311, "device-2", true, 30);
    connect.will = Some(will("wills/device-2", b"offline", true));
    // A watcher sees the will go out; after that the retained store holds it.
    let (mut watcher, _) = Client::connect(broker.addr, "watcher", true).await;
    watcher.subscribe("wills/+", QoS::AtLeastOnce).await;
    let raw = raw_connected(broker.addr, connect).await;
    drop(raw);
    let live = watcher.next_publish().await;
    assert_eq!(topic_and_payload(&live), ("wills/device-2", &b"offline"[..]));

    let (mut late, _) = Client::connect(broker.addr, "late", true).await;
    late.subscribe("wills/+", QoS::AtLeastOnce).await;
    let got = late.next_publish().await;
    assert_eq!(topic_and_payload(&got), ("wills/device-2", &b"offline"[..]));
    assert!(got.retain);
    broker.stop().await;
}

#[tokio::test]
async fn no_will_is_published_after_a_disconnect_packet() {
    let broker = TestBroker::start().await;
    let (mut watcher, _) = Client::connect(broker.addr, "watcher", true).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;

    let mut connect = raw_connect(ProtocolVersion::V311, "polite", true, 30);
    connect.will = Some(will("wills/polite", b"must not be sent", false));
    let mut raw = raw_connected(broker.addr, connect).await;
    raw.send(&RawPacket::Disconnect(Disconnect::default())).await;
    assert_eq!(raw.until_closed().await, [], "the node closes the socket after DISCONNECT, sending nothing");

    let (mut publisher, _) = Client::connect(broker.addr, "pub", true).await;
    publisher.publish("wills/marker", QoS::AtLeastOnce, false, b"marker").await;
    let got = watcher.next_publish().await;
    assert_eq!(
        topic_and_payload(&got),
        ("wills/marker", &b"marker"[..]),
        "the will must not have been published"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_persistent_session_queues_qos1_messages_while_offline_and_delivers_them_on_reconnect() {
    let broker = TestBroker::start().await;
    let (mut sub, ack) = Client::connect(broker.addr, "persistent", false).await;
    assert!(!ack.session_present, "a new session");
    sub.subscribe("queue/me", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let (mut publisher, _) = Client::connect(broker.addr, "pub", true).await;
    for i in 1..=3 {
        publisher.publish("queue/me", QoS::AtLeastOnce, false, format!("m{i}").as_bytes()).await;
    }

    let (mut sub, ack) = Client::connect(broker.addr, "persistent", false).await;
    assert!(ack.session_present, "the session, with its subscription, was kept");
    for i in 1..=3 {
        let got = sub.next_publish().await;
        assert_eq!(topic_and_payload(&got), ("queue/me", format!("m{i}").as_bytes()), "in publish order");
        assert_eq!(got.qos, QoS::AtLeastOnce);
    }
    // The subscription is still there for live messages too.
    publisher.publish("queue/me", QoS::AtLeastOnce, false, b"live").await;
    assert_eq!(&sub.next_publish().await.payload[..], b"live");
    broker.stop().await;
}

#[tokio::test]
async fn clean_session_discards_the_stored_session_and_its_queue() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = Client::connect(broker.addr, "forgetful", false).await;
    sub.subscribe("clean/data", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let (mut publisher, _) = Client::connect(broker.addr, "pub", true).await;
    publisher.publish("clean/data", QoS::AtLeastOnce, false, b"queued while away").await;

    let (mut sub, ack) = Client::connect(broker.addr, "forgetful", true).await;
    assert!(!ack.session_present, "clean session 1 never resumes a session (MQTT-3.2.2-1)");
    sub.subscribe("clean/marker", QoS::AtLeastOnce).await;
    publisher.publish("clean/data", QoS::AtLeastOnce, false, b"after reconnect").await;
    publisher.publish("clean/marker", QoS::AtLeastOnce, false, b"marker").await;
    let got = sub.next_publish().await;
    assert_eq!(
        topic_and_payload(&got),
        ("clean/marker", &b"marker"[..]),
        "neither the queued message nor the old subscription survived"
    );
    sub.disconnect().await;

    // A clean session also ends at disconnect: reconnecting with clean session 0 finds nothing.
    let (_sub, ack) = Client::connect(broker.addr, "forgetful", false).await;
    assert!(!ack.session_present, "the clean session was not kept after it ended");
    broker.stop().await;
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_takes_the_session_over_and_closes_the_first() {
    let broker = TestBroker::start().await;
    let (mut first, _) = Client::connect(broker.addr, "twin", false).await;
    first.subscribe("takeover/t", QoS::AtLeastOnce).await;

    let (mut second, ack) = Client::connect(broker.addr, "twin", false).await;
    assert!(ack.session_present, "the new connection resumes the session");
    first.closed().await;

    let (mut publisher, _) = Client::connect(broker.addr, "pub", true).await;
    publisher.publish("takeover/t", QoS::AtLeastOnce, false, b"to the new one").await;
    let got = second.next_publish().await;
    assert_eq!(
        topic_and_payload(&got),
        ("takeover/t", &b"to the new one"[..]),
        "the subscription moved over"
    );
    assert_eq!(within(broker.router.stats()).await.expect("stats").online, 2, "twin and pub");
    broker.stop().await;
}

#[tokio::test]
async fn plus_matches_one_level_and_hash_matches_any_number_of_levels() {
    let broker = TestBroker::start().await;
    let (mut plus, _) = Client::connect(broker.addr, "plus", true).await;
    plus.subscribe("sensors/+/temp", QoS::AtLeastOnce).await;
    let (mut hash, _) = Client::connect(broker.addr, "hash", true).await;
    hash.subscribe("sensors/#", QoS::AtLeastOnce).await;

    let (mut publisher, _) = Client::connect(broker.addr, "pub", true).await;
    let topics = [
        "sensors/kitchen/temp",
        "sensors/kitchen/humidity",
        "sensors/a/b/temp",
        "sensors",
        "sensors//temp",
        "sensors/end/temp",
    ];
    for topic in topics {
        publisher.publish(topic, QoS::AtLeastOnce, false, topic.as_bytes()).await;
    }
    for expected in ["sensors/kitchen/temp", "sensors//temp", "sensors/end/temp"] {
        assert_eq!(plus.next_publish().await.topic, expected);
    }
    for expected in topics {
        assert_eq!(
            hash.next_publish().await.topic,
            expected,
            "`#` also matches the parent level (MQTT 4.7.1.2)"
        );
    }
    broker.stop().await;
}

#[tokio::test]
async fn topics_starting_with_dollar_are_not_matched_by_leading_wildcards() {
    let broker = TestBroker::start().await;
    let (mut all, _) = Client::connect(broker.addr, "all", true).await;
    all.subscribe("#", QoS::AtLeastOnce).await;
    let (mut plus, _) = Client::connect(broker.addr, "plus", true).await;
    plus.subscribe("+/status", QoS::AtLeastOnce).await;
    let (mut explicit, _) = Client::connect(broker.addr, "explicit", true).await;
    explicit.subscribe("$app/#", QoS::AtLeastOnce).await;

    let (mut publisher, _) = Client::connect(broker.addr, "pub", true).await;
    publisher.publish("$app/status", QoS::AtLeastOnce, false, b"dollar").await;
    publisher.publish("app/status", QoS::AtLeastOnce, false, b"plain").await;

    assert_eq!(
        all.next_publish().await.topic,
        "app/status",
        "`#` must not match `$app/status` (MQTT-4.7.2-1)"
    );
    assert_eq!(plus.next_publish().await.topic, "app/status", "`+/status` must not match `$app/status`");
    assert_eq!(explicit.next_publish().await.topic, "$app/status", "a filter naming `$app` matches it");
    broker.stop().await;
}

#[tokio::test]
async fn an_empty_client_id_with_clean_session_0_is_refused_with_return_code_2() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.addr, ProtocolVersion::V311).await;
    raw.send(&RawPacket::Connect(Box::new(raw_connect(ProtocolVersion::V311, "", false, 30)))).await;
    let expected = ConnAck { reason_code: ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, ..ConnAck::default() };
    assert_eq!(
        raw.until_closed().await,
        [RawPacket::ConnAck(expected)],
        "CONNACK 0x02 then close (MQTT-3.1.3-8)"
    );

    // With clean session 1 the node assigns an identifier and accepts (MQTT-3.1.3-6).
    raw_connected(broker.addr, raw_connect(ProtocolVersion::V311, "", true, 30)).await;
    broker.stop().await;
}

#[tokio::test]
async fn an_unsubscribed_filter_stops_receiving() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = Client::connect(broker.addr, "sub", true).await;
    sub.subscribe("unsub/data", QoS::AtLeastOnce).await;
    sub.subscribe("unsub/marker", QoS::AtLeastOnce).await;
    let (mut publisher, _) = Client::connect(broker.addr, "pub", true).await;
    publisher.publish("unsub/data", QoS::AtLeastOnce, false, b"before").await;
    assert_eq!(&sub.next_publish().await.payload[..], b"before");

    sub.unsubscribe("unsub/data").await;
    // UNSUBACK is sent even when nothing matched (MQTT-3.10.4-5).
    sub.unsubscribe("unsub/never-subscribed").await;
    publisher.publish("unsub/data", QoS::AtLeastOnce, false, b"after").await;
    publisher.publish("unsub/marker", QoS::AtLeastOnce, false, b"marker").await;
    let got = sub.next_publish().await;
    assert_eq!(topic_and_payload(&got), ("unsub/marker", &b"marker"[..]), "nothing after UNSUBACK");
    broker.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_disconnected_after_one_and_a_half_keep_alive_periods_and_its_will_sent() {
    let broker = TestBroker::start().await;
    let (mut watcher, _) = Client::connect(broker.addr, "watcher", true).await;
    watcher.subscribe("wills/+", QoS::AtLeastOnce).await;
    let mut connect = raw_connect(ProtocolVersion::V311, "silent", true, 1);
    connect.will = Some(will("wills/silent", b"stopped talking", false));
    let mut raw = raw_connected(broker.addr, connect).await;
    let started = Instant::now();
    let packets = raw.until_closed().await;
    let elapsed = started.elapsed();
    assert_eq!(packets, [], "3.1.1 has no server DISCONNECT: the socket just closes");
    assert!(elapsed >= Duration::from_millis(1000), "closed too early, after {elapsed:?} (keep-alive 1 s)");
    assert!(elapsed <= Duration::from_millis(2500), "closed after {elapsed:?}; 1.5 × keep-alive is 1.5 s");
    let got = watcher.next_publish().await;
    assert_eq!(
        topic_and_payload(&got),
        ("wills/silent", &b"stopped talking"[..]),
        "a keep-alive timeout sends the will"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_client_that_pings_stays_connected_past_its_keep_alive() {
    let broker = TestBroker::start().await;
    let mut raw = raw_connected(broker.addr, raw_connect(ProtocolVersion::V311, "pinger", true, 1)).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        raw.send(&RawPacket::PingReq).await;
        assert_eq!(raw.recv().await, Some(RawPacket::PingResp));
    }
    broker.stop().await;
}

#[tokio::test]
async fn an_mqtt_3_1_client_connects_subscribes_and_receives() {
    let broker = TestBroker::start().await;
    let mut raw = raw_connected(broker.addr, raw_connect(ProtocolVersion::V31, "old-device", true, 30)).await;
    let packet_id = std::num::NonZeroU16::new(1).expect("non-zero");
    let options = SubscriptionOptions { qos: RawQoS::AtLeastOnce, ..SubscriptionOptions::default() };
    raw.send(&RawPacket::Subscribe(Subscribe {
        packet_id,
        subscription_identifier: None,
        user_properties: Vec::new(),
        filters: vec![(Arc::from("legacy/+"), options)],
    }))
    .await;
    match raw.recv().await {
        Some(RawPacket::SubAck(ack)) => {
            assert_eq!((ack.packet_id, &ack.reason_codes[..]), (packet_id, &[ReasonCode::GRANTED_QOS_1][..]));
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    let (mut publisher, _) = Client::connect(broker.addr, "pub", true).await;
    publisher.publish("legacy/x", QoS::AtLeastOnce, false, b"for 3.1").await;
    match raw.recv().await {
        Some(RawPacket::Publish(RawPublish { topic, payload, qos: RawQoS::AtLeastOnce, .. })) => {
            assert_eq!((&*topic, &payload[..]), ("legacy/x", &b"for 3.1"[..]));
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }

    // The 3.1 client publishes too.
    let (mut sub, _) = Client::connect(broker.addr, "sub", true).await;
    sub.subscribe("from/legacy", QoS::AtMostOnce).await;
    raw.send(&RawPacket::Publish(RawPublish {
        dup: false,
        qos: RawQoS::AtMostOnce,
        retain: false,
        topic: Arc::from("from/legacy"),
        packet_id: None,
        properties: PublishProperties::default(),
        payload: Bytes::from_static(b"hello from 3.1"),
    }))
    .await;
    assert_eq!(topic_and_payload(&sub.next_publish().await), ("from/legacy", &b"hello from 3.1"[..]));
    broker.stop().await;
}

fn packet_id(n: u16) -> std::num::NonZeroU16 {
    std::num::NonZeroU16::new(n).expect("non-zero packet id")
}

async fn raw_subscribe(raw: &mut RawClient, filter: &str, qos: RawQoS) -> Vec<ReasonCode> {
    let options = SubscriptionOptions { qos, ..SubscriptionOptions::default() };
    raw.send(&RawPacket::Subscribe(Subscribe {
        packet_id: packet_id(1),
        subscription_identifier: None,
        user_properties: Vec::new(),
        filters: vec![(Arc::from(filter), options)],
    }))
    .await;
    match raw.recv().await {
        Some(RawPacket::SubAck(ack)) => ack.reason_codes,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

async fn raw_publish(raw: &mut RawClient) -> RawPublish {
    match raw.recv().await {
        Some(RawPacket::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[tokio::test]
async fn an_invalid_filter_gets_suback_0x80_and_the_connection_stays_open() {
    let broker = TestBroker::start().await;
    let mut raw =
        raw_connected(broker.addr, raw_connect(ProtocolVersion::V311, "bad-filter", true, 30)).await;
    assert_eq!(raw_subscribe(&mut raw, "a/#/b", RawQoS::AtLeastOnce).await, [ReasonCode::UNSPECIFIED_ERROR]);
    assert_eq!(raw_subscribe(&mut raw, "a/b+", RawQoS::AtLeastOnce).await, [ReasonCode::UNSPECIFIED_ERROR]);
    assert_eq!(raw_subscribe(&mut raw, "a/+/b", RawQoS::AtLeastOnce).await, [ReasonCode::GRANTED_QOS_1]);
    raw.send(&RawPacket::PingReq).await;
    assert_eq!(raw.recv().await, Some(RawPacket::PingResp));
    broker.stop().await;
}

#[tokio::test]
async fn a_qos2_publish_sent_twice_before_pubrel_is_delivered_once() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = Client::connect(broker.addr, "sub", true).await;
    sub.subscribe("once/#", QoS::ExactlyOnce).await;

    let mut raw = raw_connected(broker.addr, raw_connect(ProtocolVersion::V311, "retrier", true, 30)).await;
    let mut publish = RawPublish {
        dup: false,
        qos: RawQoS::ExactlyOnce,
        retain: false,
        topic: Arc::from("once/only"),
        packet_id: Some(packet_id(7)),
        properties: PublishProperties::default(),
        payload: Bytes::from_static(b"exactly once"),
    };
    raw.send(&RawPacket::Publish(publish.clone())).await;
    assert!(matches!(raw.recv().await, Some(RawPacket::PubRec(a)) if a.packet_id == packet_id(7)));
    // The PUBREC was "lost": the client resends with DUP, then releases.
    publish.dup = true;
    raw.send(&RawPacket::Publish(publish)).await;
    assert!(matches!(raw.recv().await, Some(RawPacket::PubRec(a)) if a.packet_id == packet_id(7)));
    raw.send(&RawPacket::PubRel(m2m_codec::Ack::new(packet_id(7)))).await;
    assert!(matches!(raw.recv().await, Some(RawPacket::PubComp(a)) if a.packet_id == packet_id(7)));

    let (mut publisher, _) = Client::connect(broker.addr, "pub", true).await;
    publisher.publish("once/marker", QoS::AtLeastOnce, false, b"marker").await;
    assert_eq!(topic_and_payload(&sub.next_publish().await), ("once/only", &b"exactly once"[..]));
    assert_eq!(sub.next_publish().await.topic, "once/marker", "the duplicate was not delivered again");
    broker.stop().await;
}

#[tokio::test]
async fn an_unacknowledged_qos1_delivery_is_resent_with_dup_and_its_packet_id_on_reconnect() {
    let broker = TestBroker::start().await;
    let mut raw =
        raw_connected(broker.addr, raw_connect(ProtocolVersion::V311, "forgets-acks", false, 30)).await;
    raw_subscribe(&mut raw, "redo/x", RawQoS::AtLeastOnce).await;
    let (mut publisher, _) = Client::connect(broker.addr, "pub", true).await;
    publisher.publish("redo/x", QoS::AtLeastOnce, false, b"ack me").await;
    let first = raw_publish(&mut raw).await;
    assert_eq!((first.dup, &first.payload[..]), (false, &b"ack me"[..]));
    drop(raw); // no PUBACK

    let mut raw = RawClient::connect(broker.addr, ProtocolVersion::V311).await;
    raw.send(&RawPacket::Connect(Box::new(raw_connect(ProtocolVersion::V311, "forgets-acks", false, 30))))
        .await;
    match raw.recv().await {
        Some(RawPacket::ConnAck(ack)) => {
            assert!(ack.session_present && ack.reason_code == ReasonCode::SUCCESS)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let again = raw_publish(&mut raw).await;
    assert_eq!(
        (again.dup, again.packet_id, &again.payload[..]),
        (true, first.packet_id, &b"ack me"[..]),
        "re-sent with DUP and the original packet identifier (MQTT-4.4.0-1)"
    );
    raw.send(&RawPacket::PubAck(m2m_codec::Ack::new(again.packet_id.expect("qos 1 has an id")))).await;
    publisher.publish("redo/x", QoS::AtLeastOnce, false, b"next").await;
    let next = raw_publish(&mut raw).await;
    assert_eq!(
        (next.dup, &next.payload[..]),
        (false, &b"next"[..]),
        "the acknowledged message is not sent again"
    );
    broker.stop().await;
}

#[tokio::test]
async fn an_unfinished_qos2_delivery_resends_pubrel_on_reconnect() {
    let broker = TestBroker::start().await;
    let mut raw =
        raw_connected(broker.addr, raw_connect(ProtocolVersion::V311, "half-done", false, 30)).await;
    raw_subscribe(&mut raw, "redo/two", RawQoS::ExactlyOnce).await;
    let (mut publisher, _) = Client::connect(broker.addr, "pub", true).await;
    publisher.publish("redo/two", QoS::ExactlyOnce, false, b"two").await;
    let delivery = raw_publish(&mut raw).await;
    let id = delivery.packet_id.expect("qos 2 has an id");
    raw.send(&RawPacket::PubRec(m2m_codec::Ack::new(id))).await;
    assert_eq!(raw.recv().await, Some(RawPacket::PubRel(m2m_codec::Ack::new(id))));
    drop(raw); // no PUBCOMP

    let mut raw = RawClient::connect(broker.addr, ProtocolVersion::V311).await;
    raw.send(&RawPacket::Connect(Box::new(raw_connect(ProtocolVersion::V311, "half-done", false, 30)))).await;
    assert!(matches!(raw.recv().await, Some(RawPacket::ConnAck(ack)) if ack.session_present));
    assert_eq!(
        raw.recv().await,
        Some(RawPacket::PubRel(m2m_codec::Ack::new(id))),
        "PUBREL re-sent, not the PUBLISH (MQTT-4.4.0-1)"
    );
    raw.send(&RawPacket::PubComp(m2m_codec::Ack::new(id))).await;
    raw.send(&RawPacket::PingReq).await;
    assert_eq!(raw.recv().await, Some(RawPacket::PingResp), "nothing else was pending");
    broker.stop().await;
}

#[tokio::test]
async fn a_retained_message_is_delivered_at_the_lower_of_its_qos_and_the_subscription_qos() {
    let broker = TestBroker::start().await;
    let (mut publisher, _) = Client::connect(broker.addr, "pub", true).await;
    publisher.publish("ret/qos", QoS::ExactlyOnce, true, b"kept at 2").await;
    let (mut low, _) = Client::connect(broker.addr, "low", true).await;
    low.subscribe("ret/qos", QoS::AtMostOnce).await;
    let got = low.next_publish().await;
    assert_eq!((&got.payload[..], got.qos, got.retain), (&b"kept at 2"[..], QoS::AtMostOnce, true));
    let (mut high, _) = Client::connect(broker.addr, "high", true).await;
    high.subscribe("ret/qos", QoS::ExactlyOnce).await;
    let got = high.next_publish().await;
    assert_eq!((&got.payload[..], got.qos, got.retain), (&b"kept at 2"[..], QoS::ExactlyOnce, true));
    broker.stop().await;
}

#[tokio::test]
async fn a_hash_subscription_receives_no_retained_sys_messages() {
    let mut config = m2m_broker::Config::for_tests();
    config.sys_interval = Some(Duration::from_millis(50));
    let broker = TestBroker::start_with(config).await;
    // The node's `$SYS` statistics are retained; wait until they exist.
    within(async {
        while broker.router.stats().await.expect("stats").retained == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let (mut all, _) = Client::connect(broker.addr, "all", true).await;
    all.subscribe("#", QoS::AtLeastOnce).await;
    let (mut publisher, _) = Client::connect(broker.addr, "pub", true).await;
    publisher.publish("marker", QoS::AtLeastOnce, false, b"marker").await;
    assert_eq!(all.next_publish().await.topic, "marker", "no `$SYS` message, retained or live, matches `#`");

    let (mut sys, _) = Client::connect(broker.addr, "sys", true).await;
    sys.subscribe("$SYS/#", QoS::AtMostOnce).await;
    let got = sys.next_publish().await;
    assert!(got.topic.starts_with("$SYS/"), "{}", got.topic);
    broker.stop().await;
}
