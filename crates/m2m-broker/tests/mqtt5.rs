//! MQTT 5.0 behaviour of a real node on `127.0.0.1:0`.
//!
//! Driven by an independent client (`rumqttc`'s v5 client), so our codec does not test itself, and by
//! [`RawClient`] (our codec over a socket) where rumqttc cannot express a packet: exact reason codes on
//! DISCONNECT, enhanced authentication, topic aliases from the client, flow-control violations.
//!
//! Every step is time-boxed with [`within`]. Absence of a message is shown with a sentinel: a later
//! message that must arrive first, since the node keeps the order of what one publisher sends. Real
//! sleeps remain only where the specification is about wall-clock time (will delay, session and
//! message expiry, keep-alive), with delays of one or two seconds.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use m2m_broker::{AuthExchange, AuthStep, Authenticator, Config};
use m2m_codec as codec;
use m2m_codec::{Packet, ProtocolVersion, ReasonCode};
use m2m_test::{
    expect_disconnect, expect_raw_publish, persistent_connect, pid, raw_connect, raw_connect_ok, raw_publish,
    raw_subscribe, raw_subscribe_with, v5_connect, within, RawClient, TestBroker,
};
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectReturnCode, Filter, LastWill, LastWillProperties, Packet as In, PubAckReason, Publish,
    PublishProperties, RetainForwardRule, SubscribeProperties, SubscribeReasonCode, UnsubAckReason,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------------
// An rumqttc v5 client with its event loop on a task: packets the node sends come out in order.
// ---------------------------------------------------------------------------------------------------

/// A connected rumqttc v5 client. Dropping it closes the socket without DISCONNECT (an abnormal close).
struct Client {
    inner: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<In, ConnectionError>>,
    /// Packets read while waiting for an acknowledgement, handed out first by [`Client::recv`].
    backlog: VecDeque<In>,
    connack: ConnAck,
    task: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    async fn connect(addr: SocketAddr, id: &str) -> Self {
        Self::connect_with(addr, id, |_| {}).await
    }

    /// Connects with options adjusted by `configure`; fails the test unless CONNACK is a success.
    async fn connect_with(addr: SocketAddr, id: &str, configure: impl FnOnce(&mut MqttOptions)) -> Self {
        let mut client = Self::try_connect_with(addr, id, configure).await.expect("connect refused");
        assert_eq!(client.connack.code, ConnectReturnCode::Success);
        client.backlog.clear();
        client
    }

    /// Connects and returns the client, or the connection error (a refused CONNACK among them).
    async fn try_connect_with(
        addr: SocketAddr,
        id: &str,
        configure: impl FnOnce(&mut MqttOptions),
    ) -> Result<Self, ConnectionError> {
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        configure(&mut options);
        let (inner, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, mut events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if tx.send(Ok(packet)).is_err() {
                            break;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        // Stop here: polling again would reconnect.
                        let _ = tx.send(Err(e));
                        break;
                    }
                }
            }
        });
        let connack = match within(events.recv()).await.expect("event loop ended before CONNACK") {
            Ok(In::ConnAck(ack)) => ack,
            Ok(other) => panic!("expected CONNACK, got {other:?}"),
            Err(e) => {
                task.abort();
                return Err(e);
            }
        };
        Ok(Self { inner, events, backlog: VecDeque::new(), connack, task })
    }

    fn connack_properties(&self) -> rumqttc::v5::mqttbytes::v5::ConnAckProperties {
        self.connack.properties.clone().expect("CONNACK without properties")
    }

    /// The next packet from the node, or the error that ended the connection.
    async fn try_recv(&mut self) -> Option<Result<In, ConnectionError>> {
        if let Some(p) = self.backlog.pop_front() {
            return Some(Ok(p));
        }
        within(self.events.recv()).await
    }

    async fn recv(&mut self) -> In {
        match self.try_recv().await {
            Some(Ok(p)) => p,
            Some(Err(e)) => panic!("connection failed: {e:?}"),
            None => panic!("event loop ended"),
        }
    }

    /// The next PUBLISH; PINGRESP and the PUBREL of an incoming QoS 2 flow are skipped.
    async fn next_publish(&mut self) -> Publish {
        loop {
            match self.recv().await {
                In::Publish(p) => return p,
                In::PingResp(_) | In::PubRel(_) => {}
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }

    /// Reads straight from the connection until `pick` accepts a packet; others wait in the backlog.
    async fn until<T>(&mut self, mut pick: impl FnMut(&In) -> Option<T>) -> T {
        loop {
            let packet = match within(self.events.recv()).await {
                Some(Ok(p)) => p,
                Some(Err(e)) => panic!("connection failed: {e:?}"),
                None => panic!("event loop ended"),
            };
            if let Some(t) = pick(&packet) {
                return t;
            }
            self.backlog.push_back(packet);
        }
    }

    /// Subscribes and returns the SUBACK reason codes.
    async fn subscribe_many(&mut self, filters: Vec<Filter>, id: Option<usize>) -> Vec<SubscribeReasonCode> {
        let properties = SubscribeProperties { id, user_properties: Vec::new() };
        self.inner.subscribe_many_with_properties(filters, properties).await.expect("subscribe");
        self.until(|p| match p {
            In::SubAck(ack) => Some(ack.return_codes.clone()),
            _ => None,
        })
        .await
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) {
        let codes = self.subscribe_many(vec![Filter::new(filter, qos)], None).await;
        assert_eq!(codes, [SubscribeReasonCode::Success(qos)], "SUBACK for {filter}");
    }

    async fn subscribe_with_id(&mut self, filter: &str, qos: QoS, id: usize) {
        let codes = self.subscribe_many(vec![Filter::new(filter, qos)], Some(id)).await;
        assert_eq!(codes, [SubscribeReasonCode::Success(qos)], "SUBACK for {filter}");
    }

    async fn subscribe_with_options(&mut self, filter: Filter) {
        let qos = filter.qos;
        let codes = self.subscribe_many(vec![filter], None).await;
        assert_eq!(codes, [SubscribeReasonCode::Success(qos)]);
    }

    /// Publishes; returns after PUBACK (QoS 1) or PUBCOMP (QoS 2), so the node has routed the message.
    async fn publish_with(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: &[u8],
        props: PublishProperties,
    ) {
        let payload = Bytes::copy_from_slice(payload);
        self.inner.publish_with_properties(topic, qos, retain, payload, props).await.expect("publish");
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let reason = self
                    .until(|p| match p {
                        In::PubAck(ack) => Some(ack.reason),
                        _ => None,
                    })
                    .await;
                assert_eq!(reason, PubAckReason::Success, "PUBACK for {topic}");
            }
            QoS::ExactlyOnce => self.until(|p| matches!(p, In::PubComp(_)).then_some(())).await,
        }
    }

    async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
        self.publish_with(topic, qos, retain, payload, PublishProperties::default()).await;
    }

    /// Sends DISCONNECT (normal) and waits until the node has closed the connection.
    async fn disconnect(mut self) {
        self.inner.disconnect().await.expect("disconnect");
        while let Some(Ok(_)) = within(self.events.recv()).await {}
    }
}

fn topic_of(p: &Publish) -> &str {
    std::str::from_utf8(&p.topic).expect("topic is UTF-8")
}

/// Asserts the next PUBLISH the client gets is `topic` with `payload`, and returns it.
async fn expect_publish(client: &mut Client, topic: &str, payload: &[u8]) -> Publish {
    let p = client.next_publish().await;
    assert_eq!((topic_of(&p), &p.payload[..]), (topic, payload), "unexpected PUBLISH");
    p
}

/// Publishes a QoS 1 sentinel and asserts it is the next message `subscriber` receives: nothing the
/// node routed before it is still on its way to that subscriber.
async fn assert_next_is_sentinel(publisher: &mut Client, subscriber: &mut Client, topic: &str) {
    publisher.publish(topic, QoS::AtLeastOnce, false, b"sentinel").await;
    expect_publish(subscriber, topic, b"sentinel").await;
}

fn options(filter: &str, qos: QoS) -> Filter {
    Filter::new(filter, qos)
}

fn retain_handling(filter: &str, rule: RetainForwardRule) -> Filter {
    Filter { retain_forward_rule: rule, ..Filter::new(filter, QoS::AtLeastOnce) }
}

fn props(p: &Publish) -> PublishProperties {
    p.properties.clone().unwrap_or_default()
}

fn persistent(expiry: u32, clean_start: bool) -> impl FnOnce(&mut MqttOptions) {
    move |o| {
        o.set_clean_start(clean_start);
        o.set_session_expiry_interval(Some(expiry));
    }
}

// ---------------------------------------------------------------------------------------------------
// RawClient helpers: exact packets in, exact packets out.
// ---------------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------------
// QoS 0, 1 and 2 end to end
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn qos0_publish_reaches_a_subscriber_at_qos0() {
    let broker = TestBroker::start().await;
    let mut sub = Client::connect(broker.addr, "sub").await;
    sub.subscribe("qos/0", QoS::AtMostOnce).await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("qos/0", QoS::AtMostOnce, false, b"zero").await;
    let p = expect_publish(&mut sub, "qos/0", b"zero").await;
    assert_eq!((p.qos, p.retain, p.dup), (QoS::AtMostOnce, false, false));
    broker.stop().await;
}

#[tokio::test]
async fn qos1_publish_is_acknowledged_and_delivered_at_qos1() {
    let broker = TestBroker::start().await;
    let mut sub = Client::connect(broker.addr, "sub").await;
    sub.subscribe("qos/1", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("qos/1", QoS::AtLeastOnce, false, b"one").await;
    let p = expect_publish(&mut sub, "qos/1", b"one").await;
    assert_eq!((p.qos, p.retain, p.dup), (QoS::AtLeastOnce, false, false));
    assert_ne!(p.pkid, 0);
    broker.stop().await;
}

#[tokio::test]
async fn qos2_publish_completes_the_four_way_handshake_on_both_sides() {
    let broker = TestBroker::start().await;
    let mut sub = raw_connect_ok(broker.addr, v5_connect("sub")).await;
    let ack = raw_subscribe(&mut sub, 1, &[("qos/2", codec::QoS::ExactlyOnce)]).await;
    assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_2]);
    let mut publisher = raw_connect_ok(broker.addr, v5_connect("pub")).await;

    publisher.send(&Packet::Publish(raw_publish("qos/2", codec::QoS::ExactlyOnce, Some(9), b"two"))).await;
    assert_eq!(publisher.recv().await, Some(Packet::PubRec(codec::Ack::new(pid(9)))));
    publisher.send(&Packet::PubRel(codec::Ack::new(pid(9)))).await;
    assert_eq!(publisher.recv().await, Some(Packet::PubComp(codec::Ack::new(pid(9)))));

    let p = expect_raw_publish(sub.recv().await);
    assert_eq!(
        (&*p.topic, &p.payload[..], p.qos, p.dup, p.retain),
        ("qos/2", &b"two"[..], codec::QoS::ExactlyOnce, false, false)
    );
    let id = p.packet_id.expect("QoS 2 has a packet id");
    sub.send(&Packet::PubRec(codec::Ack::new(id))).await;
    assert_eq!(sub.recv().await, Some(Packet::PubRel(codec::Ack::new(id))));
    sub.send(&Packet::PubComp(codec::Ack::new(id))).await;

    // The exchange is complete on both sides: each connection still answers a ping, and nothing else.
    sub.send(&Packet::PingReq).await;
    assert_eq!(sub.recv().await, Some(Packet::PingResp));
    publisher.send(&Packet::PingReq).await;
    assert_eq!(publisher.recv().await, Some(Packet::PingResp));
    broker.stop().await;
}

#[tokio::test]
async fn qos2_publish_reaches_an_rumqttc_subscriber_at_qos2() {
    let broker = TestBroker::start().await;
    let mut sub = Client::connect(broker.addr, "sub").await;
    sub.subscribe("qos/2", QoS::ExactlyOnce).await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("qos/2", QoS::ExactlyOnce, false, b"exactly once").await;
    let p = expect_publish(&mut sub, "qos/2", b"exactly once").await;
    assert_eq!(p.qos, QoS::ExactlyOnce);
    // Sent once: the sentinel comes next.
    assert_next_is_sentinel(&mut publisher, &mut sub, "qos/2").await;
    broker.stop().await;
}

#[tokio::test]
async fn delivery_qos_is_the_lower_of_the_published_and_the_subscribed_qos() {
    let broker = TestBroker::start().await;
    let mut sub = Client::connect(broker.addr, "sub").await;
    sub.subscribe("down/1", QoS::AtLeastOnce).await;
    sub.subscribe("down/2", QoS::ExactlyOnce).await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("down/1", QoS::ExactlyOnce, false, b"a").await;
    publisher.publish("down/2", QoS::AtMostOnce, false, b"b").await;
    assert_eq!(expect_publish(&mut sub, "down/1", b"a").await.qos, QoS::AtLeastOnce);
    assert_eq!(expect_publish(&mut sub, "down/2", b"b").await.qos, QoS::AtMostOnce);
    broker.stop().await;
}

#[tokio::test]
async fn unacknowledged_deliveries_are_resent_in_order_on_reconnect_publish_with_dup_then_pubrel() {
    let broker = TestBroker::start().await;
    let mut sub = raw_connect_ok(broker.addr, persistent_connect("sub", true)).await;
    raw_subscribe(
        &mut sub,
        1,
        &[("resend/1", codec::QoS::AtLeastOnce), ("resend/2", codec::QoS::ExactlyOnce)],
    )
    .await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("resend/1", QoS::AtLeastOnce, false, b"one").await;
    publisher.publish("resend/2", QoS::ExactlyOnce, false, b"two").await;

    let one = expect_raw_publish(sub.recv().await);
    assert_eq!((&*one.topic, one.dup), ("resend/1", false));
    let two = expect_raw_publish(sub.recv().await);
    assert_eq!((&*two.topic, two.dup), ("resend/2", false));
    let two_id = two.packet_id.expect("QoS 2");
    sub.send(&Packet::PubRec(codec::Ack::new(two_id))).await;
    assert_eq!(sub.recv().await, Some(Packet::PubRel(codec::Ack::new(two_id))));
    // Gone without acknowledging `one` or completing `two`.
    drop(sub);

    let (mut sub, ack) = raw_connect(broker.addr, persistent_connect("sub", false)).await;
    assert!(ack.session_present);
    let again = expect_raw_publish(sub.recv().await);
    assert_eq!(again, codec::Publish { dup: true, ..one.clone() }, "same message, same packet id, DUP set");
    assert_eq!(sub.recv().await, Some(Packet::PubRel(codec::Ack::new(two_id))));
    sub.send(&Packet::PubAck(codec::Ack::new(one.packet_id.expect("QoS 1")))).await;
    sub.send(&Packet::PubComp(codec::Ack::new(two_id))).await;
    // Both flows are complete: nothing more is resent, the next thing is the answer to a ping.
    sub.send(&Packet::PingReq).await;
    assert_eq!(sub.recv().await, Some(Packet::PingResp));
    broker.stop().await;
}

#[tokio::test]
async fn incoming_qos2_stays_exactly_once_across_a_reconnect() {
    let broker = TestBroker::start().await;
    let mut sub = Client::connect(broker.addr, "sub").await;
    sub.subscribe("eo/#", QoS::ExactlyOnce).await;

    let mut publisher = raw_connect_ok(broker.addr, persistent_connect("pub", true)).await;
    for (id, topic) in [(7, "eo/resent"), (8, "eo/released")] {
        publisher.send(&Packet::Publish(raw_publish(topic, codec::QoS::ExactlyOnce, Some(id), b"x"))).await;
        assert_eq!(publisher.recv().await, Some(Packet::PubRec(codec::Ack::new(pid(id)))));
    }
    drop(publisher);

    let (mut publisher, ack) = raw_connect(broker.addr, persistent_connect("pub", false)).await;
    assert!(ack.session_present);
    // Resending PUBLISH 7 (DUP) is acknowledged again but not routed again.
    let mut resent = raw_publish("eo/resent", codec::QoS::ExactlyOnce, Some(7), b"x");
    resent.dup = true;
    publisher.send(&Packet::Publish(resent)).await;
    assert_eq!(publisher.recv().await, Some(Packet::PubRec(codec::Ack::new(pid(7)))));
    // Both packet ids are still known to the session, so both releases succeed.
    for id in [7, 8] {
        publisher.send(&Packet::PubRel(codec::Ack::new(pid(id)))).await;
        assert_eq!(publisher.recv().await, Some(Packet::PubComp(codec::Ack::new(pid(id)))));
    }
    expect_publish(&mut sub, "eo/resent", b"x").await;
    expect_publish(&mut sub, "eo/released", b"x").await;
    let mut other = Client::connect(broker.addr, "other").await;
    assert_next_is_sentinel(&mut other, &mut sub, "eo/sentinel").await;
    broker.stop().await;
}

#[tokio::test]
async fn maximum_qos_is_announced_applied_to_subscriptions_and_enforced_on_publishers() {
    let mut config = Config::for_tests();
    config.limits.max_qos = codec::QoS::AtLeastOnce;
    let broker = TestBroker::start_with(config).await;
    let (mut client, ack) = raw_connect(broker.addr, v5_connect("c")).await;
    assert_eq!(ack.properties.maximum_qos, Some(codec::QoS::AtLeastOnce));
    let sub = raw_subscribe(&mut client, 1, &[("mq/t", codec::QoS::ExactlyOnce)]).await;
    assert_eq!(sub.reason_codes, [ReasonCode::GRANTED_QOS_1]);

    let mut with_will = v5_connect("will");
    with_will.will = Some(codec::Will {
        topic: Arc::from("mq/will"),
        payload: Bytes::from_static(b"w"),
        qos: codec::QoS::ExactlyOnce,
        retain: false,
        properties: codec::WillProperties::default(),
    });
    let (_refused, ack) = raw_connect(broker.addr, with_will).await;
    assert_eq!(ack.reason_code, ReasonCode::QOS_NOT_SUPPORTED);

    client.send(&Packet::Publish(raw_publish("mq/t", codec::QoS::ExactlyOnce, Some(1), b"x"))).await;
    expect_disconnect(&mut client, ReasonCode::QOS_NOT_SUPPORTED).await;
    broker.stop().await;
}

#[tokio::test]
async fn node_without_retain_support_says_so_and_refuses_retained_publishes() {
    let mut config = Config::for_tests();
    config.limits.retain_available = false;
    let broker = TestBroker::start_with(config).await;
    let (mut client, ack) = raw_connect(broker.addr, v5_connect("c")).await;
    assert_eq!(ack.properties.retain_available, Some(false));

    let mut with_will = v5_connect("will");
    with_will.will = Some(codec::Will {
        topic: Arc::from("nr/will"),
        payload: Bytes::from_static(b"w"),
        qos: codec::QoS::AtMostOnce,
        retain: true,
        properties: codec::WillProperties::default(),
    });
    let (_refused, ack) = raw_connect(broker.addr, with_will).await;
    assert_eq!(ack.reason_code, ReasonCode::RETAIN_NOT_SUPPORTED);

    let mut retained = raw_publish("nr/t", codec::QoS::AtMostOnce, None, b"x");
    retained.retain = true;
    client.send(&Packet::Publish(retained)).await;
    expect_disconnect(&mut client, ReasonCode::RETAIN_NOT_SUPPORTED).await;
    broker.stop().await;
}

#[tokio::test]
async fn node_shutdown_sends_disconnect_0x8b_to_v5_clients() {
    let broker = TestBroker::start().await;
    let mut client = raw_connect_ok(broker.addr, v5_connect("c")).await;
    let ((), ()) =
        tokio::join!(broker.stop(), expect_disconnect(&mut client, ReasonCode::SERVER_SHUTTING_DOWN));
}

// ---------------------------------------------------------------------------------------------------
// Retained messages and subscription options
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn retained_message_is_set_then_replaced_then_deleted_by_an_empty_payload() {
    let broker = TestBroker::start().await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("ret/t", QoS::AtLeastOnce, true, b"first").await;
    publisher.publish("ret/t", QoS::AtLeastOnce, true, b"second").await;

    let mut early = Client::connect(broker.addr, "early").await;
    early.subscribe("ret/t", QoS::AtLeastOnce).await;
    let p = expect_publish(&mut early, "ret/t", b"second").await;
    assert!(p.retain, "a retained message sent on subscribe has RETAIN set");
    assert_eq!(p.qos, QoS::AtLeastOnce);

    // An empty retained payload is delivered as usual and removes the retained message.
    publisher.publish("ret/t", QoS::AtLeastOnce, true, b"").await;
    let p = expect_publish(&mut early, "ret/t", b"").await;
    assert!(!p.retain, "a live message has RETAIN cleared unless Retain As Published");

    let mut late = Client::connect(broker.addr, "late").await;
    late.subscribe("ret/#", QoS::AtLeastOnce).await;
    assert_next_is_sentinel(&mut publisher, &mut late, "ret/sentinel").await;
    broker.stop().await;
}

#[tokio::test]
async fn retained_message_keeps_its_qos_capped_by_the_subscription() {
    let broker = TestBroker::start().await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("ret/q0", QoS::AtMostOnce, true, b"q0").await;
    publisher.publish("ret/q2", QoS::ExactlyOnce, true, b"q2").await;
    let mut sub = Client::connect(broker.addr, "sub").await;
    sub.subscribe("ret/q2", QoS::AtLeastOnce).await;
    assert_eq!(expect_publish(&mut sub, "ret/q2", b"q2").await.qos, QoS::AtLeastOnce);
    sub.subscribe("ret/q0", QoS::ExactlyOnce).await;
    assert_eq!(expect_publish(&mut sub, "ret/q0", b"q0").await.qos, QoS::AtMostOnce);
    broker.stop().await;
}

#[tokio::test]
async fn retain_handling_0_sends_retained_messages_on_every_subscribe() {
    let broker = TestBroker::start().await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("rh/0", QoS::AtLeastOnce, true, b"kept").await;
    let mut sub = Client::connect(broker.addr, "sub").await;
    for _ in 0..2 {
        sub.subscribe_with_options(retain_handling("rh/0", RetainForwardRule::OnEverySubscribe)).await;
        assert!(expect_publish(&mut sub, "rh/0", b"kept").await.retain);
    }
    assert_next_is_sentinel(&mut publisher, &mut sub, "rh/0").await;
    broker.stop().await;
}

#[tokio::test]
async fn retain_handling_1_sends_retained_messages_only_for_a_new_subscription() {
    let broker = TestBroker::start().await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("rh/1", QoS::AtLeastOnce, true, b"kept").await;
    let mut sub = Client::connect(broker.addr, "sub").await;
    sub.subscribe_with_options(retain_handling("rh/1", RetainForwardRule::OnNewSubscribe)).await;
    assert!(expect_publish(&mut sub, "rh/1", b"kept").await.retain);
    // The same filter again: the subscription exists, so no retained message this time.
    sub.subscribe_with_options(retain_handling("rh/1", RetainForwardRule::OnNewSubscribe)).await;
    assert_next_is_sentinel(&mut publisher, &mut sub, "rh/1").await;
    broker.stop().await;
}

#[tokio::test]
async fn retain_handling_2_never_sends_retained_messages_on_subscribe() {
    let broker = TestBroker::start().await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("rh/2", QoS::AtLeastOnce, true, b"kept").await;
    let mut sub = Client::connect(broker.addr, "sub").await;
    sub.subscribe_with_options(retain_handling("rh/2", RetainForwardRule::Never)).await;
    assert_next_is_sentinel(&mut publisher, &mut sub, "rh/2").await;
    broker.stop().await;
}

#[tokio::test]
async fn retain_as_published_keeps_the_retain_flag_on_live_messages() {
    let broker = TestBroker::start().await;
    let mut kept = Client::connect(broker.addr, "kept").await;
    kept.subscribe_with_options(Filter { preserve_retain: true, ..options("rap/t", QoS::AtLeastOnce) }).await;
    let mut cleared = Client::connect(broker.addr, "cleared").await;
    cleared.subscribe_with_options(options("rap/t", QoS::AtLeastOnce)).await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("rap/t", QoS::AtLeastOnce, true, b"r").await;
    publisher.publish("rap/t", QoS::AtLeastOnce, false, b"n").await;
    assert!(expect_publish(&mut kept, "rap/t", b"r").await.retain);
    assert!(!expect_publish(&mut kept, "rap/t", b"n").await.retain);
    assert!(!expect_publish(&mut cleared, "rap/t", b"r").await.retain);
    assert!(!expect_publish(&mut cleared, "rap/t", b"n").await.retain);
    broker.stop().await;
}

#[tokio::test]
async fn no_local_subscription_does_not_receive_the_clients_own_publishes() {
    let broker = TestBroker::start().await;
    let mut me = Client::connect(broker.addr, "me").await;
    me.subscribe_with_options(Filter { nolocal: true, ..options("nl/t", QoS::AtLeastOnce) }).await;
    let mut other = Client::connect(broker.addr, "other").await;
    other.subscribe("nl/t", QoS::AtLeastOnce).await;

    me.publish("nl/t", QoS::AtLeastOnce, false, b"mine").await;
    expect_publish(&mut other, "nl/t", b"mine").await;
    // What others publish still arrives, and it is the first thing `me` sees.
    assert_next_is_sentinel(&mut other, &mut me, "nl/t").await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// Subscription identifiers
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn subscription_identifier_comes_back_on_matching_messages() {
    let broker = TestBroker::start().await;
    let mut sub = Client::connect(broker.addr, "sub").await;
    sub.subscribe_with_id("sid/+", QoS::AtLeastOnce, 42).await;
    sub.subscribe("plain/t", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("sid/a", QoS::AtLeastOnce, false, b"x").await;
    publisher.publish("plain/t", QoS::AtLeastOnce, false, b"y").await;
    let p = expect_publish(&mut sub, "sid/a", b"x").await;
    assert_eq!(props(&p).subscription_identifiers, [42]);
    let p = expect_publish(&mut sub, "plain/t", b"y").await;
    assert!(props(&p).subscription_identifiers.is_empty(), "no identifier on a subscription without one");
    broker.stop().await;
}

#[tokio::test]
async fn overlapping_subscriptions_give_one_copy_at_the_highest_qos_with_every_identifier() {
    let broker = TestBroker::start().await;
    let mut sub = Client::connect(broker.addr, "sub").await;
    // The highest QoS sits on the widest filter for one topic and on the exact filter for the other,
    // so whatever order the node visits matching filters in, one topic sees a lower QoS first.
    // (At most two identifiers per message: rumqttc 0.25 miscounts the property length from a third on.)
    sub.subscribe_with_id("wide/+/t", QoS::AtMostOnce, 1).await;
    sub.subscribe_with_id("wide/#", QoS::ExactlyOnce, 2).await;
    sub.subscribe("wide/a/t", QoS::AtLeastOnce).await;
    sub.subscribe("exact/+/t", QoS::AtLeastOnce).await;
    sub.subscribe_with_id("exact/#", QoS::AtMostOnce, 3).await;
    sub.subscribe_with_id("exact/a/t", QoS::ExactlyOnce, 4).await;
    sub.subscribe_with_id("other/#", QoS::AtLeastOnce, 5).await;
    let mut publisher = Client::connect(broker.addr, "pub").await;

    for (topic, expected_ids) in [("wide/a/t", [1, 2]), ("exact/a/t", [3, 4])] {
        publisher.publish(topic, QoS::ExactlyOnce, false, b"once").await;
        let p = expect_publish(&mut sub, topic, b"once").await;
        assert_eq!(p.qos, QoS::ExactlyOnce, "highest QoS of the matching subscriptions for {topic}");
        let mut ids = props(&p).subscription_identifiers;
        ids.sort_unstable();
        assert_eq!(ids, expected_ids, "identifiers of every matching subscription for {topic}");
        // One copy only: the sentinel on the same topic is next.
        assert_next_is_sentinel(&mut publisher, &mut sub, topic).await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn every_identifier_arrives_with_many_overlapping_subscriptions() {
    let broker = TestBroker::start().await;
    let mut sub = raw_connect_ok(broker.addr, v5_connect("sub")).await;
    for (i, filter) in ["many/a/b", "many/+/b", "many/#", "+/a/#", "#"].into_iter().enumerate() {
        let n = u16::try_from(i + 1).expect("small");
        let options = codec::SubscriptionOptions { qos: codec::QoS::AtLeastOnce, ..Default::default() };
        let subscribe = codec::Subscribe {
            packet_id: pid(n),
            subscription_identifier: Some(u32::from(n) * 100),
            user_properties: Vec::new(),
            filters: vec![(Arc::from(filter), options)],
        };
        assert_eq!(raw_subscribe_with(&mut sub, subscribe).await.reason_codes, [ReasonCode::GRANTED_QOS_1]);
    }
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("many/a/b", QoS::AtLeastOnce, false, b"m").await;
    publisher.publish("many/sentinel", QoS::AtLeastOnce, false, b"s").await;
    let p = expect_raw_publish(sub.recv().await);
    assert_eq!((&*p.topic, &p.payload[..]), ("many/a/b", &b"m"[..]));
    let mut ids = p.properties.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(ids, [100, 200, 300, 400, 500]);
    sub.send(&Packet::PubAck(codec::Ack::new(p.packet_id.expect("QoS 1")))).await;
    let p = expect_raw_publish(sub.recv().await);
    assert_eq!(&*p.topic, "many/sentinel", "one copy of the first message only");
    let mut ids = p.properties.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(ids, [300, 500]);
    broker.stop().await;
}

#[tokio::test]
async fn subscribing_again_to_a_filter_replaces_its_subscription_identifier() {
    let broker = TestBroker::start().await;
    let mut sub = Client::connect(broker.addr, "sub").await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    sub.subscribe_with_id("rs/#", QoS::AtLeastOnce, 1).await;
    sub.subscribe_with_id("rs/#", QoS::AtLeastOnce, 2).await;
    publisher.publish("rs/t", QoS::AtLeastOnce, false, b"a").await;
    assert_eq!(props(&expect_publish(&mut sub, "rs/t", b"a").await).subscription_identifiers, [2]);
    sub.subscribe("rs/#", QoS::AtLeastOnce).await;
    publisher.publish("rs/t", QoS::AtLeastOnce, false, b"b").await;
    assert!(props(&expect_publish(&mut sub, "rs/t", b"b").await).subscription_identifiers.is_empty());
    broker.stop().await;
}

#[tokio::test]
async fn retained_message_sent_on_subscribe_carries_the_subscription_identifier() {
    let broker = TestBroker::start().await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("sidr/t", QoS::AtLeastOnce, true, b"kept").await;
    let mut sub = Client::connect(broker.addr, "sub").await;
    sub.subscribe_with_id("sidr/#", QoS::AtLeastOnce, 7).await;
    let p = expect_publish(&mut sub, "sidr/t", b"kept").await;
    assert!(p.retain);
    assert_eq!(props(&p).subscription_identifiers, [7]);
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// Shared subscriptions
// ---------------------------------------------------------------------------------------------------

/// Reads publishes until the sentinel `sync/done`, returning the payloads of the others.
async fn payloads_until_done(client: &mut Client) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let p = client.next_publish().await;
        if topic_of(&p) == "sync/done" {
            return got;
        }
        got.push(String::from_utf8(p.payload.to_vec()).expect("UTF-8 payload"));
    }
}

#[tokio::test]
async fn shared_subscription_gives_each_message_to_exactly_one_member() {
    let broker = TestBroker::start().await;
    let mut members = Vec::new();
    for id in ["m1", "m2", "m3"] {
        let mut m = Client::connect(broker.addr, id).await;
        m.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce).await;
        m.subscribe("sync/done", QoS::AtLeastOnce).await;
        members.push(m);
    }
    let mut watcher = Client::connect(broker.addr, "watcher").await;
    watcher.subscribe("jobs/#", QoS::AtLeastOnce).await;
    watcher.subscribe("sync/done", QoS::AtLeastOnce).await;

    let mut publisher = Client::connect(broker.addr, "pub").await;
    let sent: Vec<String> = (0..30).map(|i| format!("job-{i:02}")).collect();
    for (i, payload) in sent.iter().enumerate() {
        publisher.publish(&format!("jobs/{}", i % 4), QoS::AtLeastOnce, false, payload.as_bytes()).await;
    }
    publisher.publish("sync/done", QoS::AtLeastOnce, false, b"").await;

    let mut all = Vec::new();
    for m in &mut members {
        let got = payloads_until_done(m).await;
        assert!(!got.is_empty(), "every member of the group gets a share");
        all.extend(got);
    }
    all.sort();
    assert_eq!(all, sent, "each message reaches exactly one member");
    // A plain subscription next to the group still gets everything.
    assert_eq!(payloads_until_done(&mut watcher).await, sent);
    broker.stop().await;
}

#[tokio::test]
async fn member_that_unsubscribes_from_a_shared_group_gets_no_more_of_its_messages() {
    let broker = TestBroker::start().await;
    let mut stays = Client::connect(broker.addr, "stays").await;
    stays.subscribe("$share/g/work/#", QoS::AtLeastOnce).await;
    let mut leaves = Client::connect(broker.addr, "leaves").await;
    leaves.subscribe("$share/g/work/#", QoS::AtLeastOnce).await;
    leaves.subscribe("sync/done", QoS::AtLeastOnce).await;
    leaves.inner.unsubscribe("$share/g/work/#").await.expect("unsubscribe");
    let reasons = leaves
        .until(|p| match p {
            In::UnsubAck(ack) => Some(ack.reasons.clone()),
            _ => None,
        })
        .await;
    assert_eq!(reasons, [UnsubAckReason::Success]);

    let mut publisher = Client::connect(broker.addr, "pub").await;
    for i in 0..4 {
        publisher.publish(&format!("work/{i}"), QoS::AtLeastOnce, false, format!("w{i}").as_bytes()).await;
    }
    publisher.publish("sync/done", QoS::AtLeastOnce, false, b"").await;
    for i in 0..4 {
        expect_publish(&mut stays, &format!("work/{i}"), format!("w{i}").as_bytes()).await;
    }
    assert_eq!(payloads_until_done(&mut leaves).await, Vec::<String>::new());
    broker.stop().await;
}

#[tokio::test]
async fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let broker = TestBroker::start().await;
    let mut client = raw_connect_ok(broker.addr, v5_connect("c")).await;
    let options =
        codec::SubscriptionOptions { qos: codec::QoS::AtLeastOnce, no_local: true, ..Default::default() };
    let subscribe = codec::Subscribe {
        packet_id: pid(1),
        subscription_identifier: None,
        user_properties: Vec::new(),
        filters: vec![(Arc::from("$share/g/t"), options)],
    };
    client.send(&Packet::Subscribe(subscribe)).await;
    expect_disconnect(&mut client, ReasonCode::PROTOCOL_ERROR).await;
    broker.stop().await;
}

#[tokio::test]
async fn malformed_shared_subscription_filters_are_refused_with_0x8f() {
    let broker = TestBroker::start().await;
    let mut client = raw_connect_ok(broker.addr, v5_connect("c")).await;
    let filters = [
        ("$share/g/ok", codec::QoS::ExactlyOnce),
        ("$share/g", codec::QoS::AtLeastOnce),
        ("$share//t", codec::QoS::AtLeastOnce),
        ("$share/g+/t", codec::QoS::AtLeastOnce),
        ("$share/g/a/#/b", codec::QoS::AtLeastOnce),
    ];
    let ack = raw_subscribe(&mut client, 1, &filters).await;
    let invalid = ReasonCode::TOPIC_FILTER_INVALID;
    assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_2, invalid, invalid, invalid, invalid]);
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// Wills
// ---------------------------------------------------------------------------------------------------

fn will(topic: &str, payload: &'static [u8], delay: Option<u32>) -> LastWill {
    let properties = LastWillProperties {
        delay_interval: delay,
        payload_format_indicator: Some(1),
        message_expiry_interval: None,
        content_type: Some("text/plain".into()),
        response_topic: Some("will/response".into()),
        correlation_data: Some(Bytes::from_static(b"will-corr")),
        user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v0".into())],
    };
    LastWill::new(topic, payload, QoS::AtLeastOnce, false, Some(properties))
}

#[tokio::test]
async fn will_is_published_with_its_properties_when_the_connection_drops() {
    let broker = TestBroker::start().await;
    let mut watcher = Client::connect(broker.addr, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let dying = Client::connect_with(broker.addr, "dying", |o| {
        o.set_last_will(will("wills/dying", b"gone", None));
    })
    .await;
    drop(dying);

    let p = expect_publish(&mut watcher, "wills/dying", b"gone").await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    let props = props(&p);
    assert_eq!(props.payload_format_indicator, Some(1));
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(props.response_topic.as_deref(), Some("will/response"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"will-corr"[..]));
    assert_eq!(
        props.user_properties,
        [("k".to_string(), "v1".to_string()), ("k".to_string(), "v0".to_string())]
    );
    broker.stop().await;
}

#[tokio::test]
async fn will_is_not_published_after_a_normal_disconnect() {
    let broker = TestBroker::start().await;
    let mut watcher = Client::connect(broker.addr, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let polite = Client::connect_with(broker.addr, "polite", |o| {
        o.set_last_will(will("wills/polite", b"gone", None));
    })
    .await;
    polite.disconnect().await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    assert_next_is_sentinel(&mut publisher, &mut watcher, "wills/sentinel").await;
    broker.stop().await;
}

#[tokio::test]
async fn will_is_published_after_disconnect_with_will_message() {
    let broker = TestBroker::start().await;
    let mut watcher = Client::connect(broker.addr, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;

    let mut connect = v5_connect("leaver");
    connect.will = Some(codec::Will {
        topic: Arc::from("wills/leaver"),
        payload: Bytes::from_static(b"asked for it"),
        qos: codec::QoS::AtLeastOnce,
        retain: false,
        properties: codec::WillProperties::default(),
    });
    let mut leaver = raw_connect_ok(broker.addr, connect).await;
    let disconnect =
        codec::Disconnect { reason_code: ReasonCode::DISCONNECT_WITH_WILL, ..Default::default() };
    leaver.send(&Packet::Disconnect(disconnect)).await;
    assert_eq!(leaver.recv().await, None, "the node closes the connection after DISCONNECT");

    expect_publish(&mut watcher, "wills/leaver", b"asked for it").await;
    broker.stop().await;
}

#[tokio::test]
async fn will_delay_cancels_the_will_when_the_client_reconnects_in_time() {
    let broker = TestBroker::start().await;
    let mut watcher = Client::connect(broker.addr, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let flaky = Client::connect_with(broker.addr, "flaky", |o| {
        o.set_last_will(will("wills/flaky", b"gone", Some(1)));
        o.set_session_expiry_interval(Some(60));
    })
    .await;
    drop(flaky);
    let back = Client::connect_with(broker.addr, "flaky", persistent(60, false)).await;
    assert!(back.connack.session_present);
    // Past the delay, and nothing came.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    assert_next_is_sentinel(&mut publisher, &mut watcher, "wills/sentinel").await;
    broker.stop().await;
}

#[tokio::test]
async fn delayed_will_is_published_at_once_when_the_client_returns_with_clean_start() {
    let broker = TestBroker::start().await;
    let mut watcher = Client::connect(broker.addr, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let flaky = Client::connect_with(broker.addr, "flaky", |o| {
        o.set_last_will(will("wills/flaky", b"gone", Some(30)));
        o.set_session_expiry_interval(Some(60));
    })
    .await;
    drop(flaky);
    // Clean Start ends the old session, and a session's end releases its will (MQTT 5.0 §3.1.3.2.2).
    let back = Client::connect_with(broker.addr, "flaky", persistent(60, true)).await;
    assert!(!back.connack.session_present);
    expect_publish(&mut watcher, "wills/flaky", b"gone").await;
    broker.stop().await;
}

/// Drops a connection with the given will delay and session expiry, and checks that the will is
/// published about one second later (whichever of the two is 1 s decides).
async fn assert_will_published_after_one_second(will_delay: u32, session_expiry: u32, what: &str) {
    let broker = TestBroker::start().await;
    let mut watcher = Client::connect(broker.addr, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let flaky = Client::connect_with(broker.addr, "flaky", |o| {
        o.set_last_will(will("wills/flaky", b"gone", Some(will_delay)));
        o.set_session_expiry_interval(Some(session_expiry));
    })
    .await;
    let dropped_at = Instant::now();
    drop(flaky);
    expect_publish(&mut watcher, "wills/flaky", b"gone").await;
    let waited = dropped_at.elapsed();
    assert!(waited >= Duration::from_millis(900), "will sent after {waited:?}, before {what}");
    assert!(waited <= Duration::from_millis(2500), "will sent after {waited:?}");
    broker.stop().await;
}

#[tokio::test]
async fn will_delay_holds_the_will_back_until_the_delay_has_passed() {
    assert_will_published_after_one_second(1, 60, "its 1 s delay").await;
}

#[tokio::test]
async fn will_is_published_when_the_session_expires_before_the_will_delay() {
    assert_will_published_after_one_second(30, 1, "the session ended").await;
}

#[tokio::test]
async fn retained_will_is_kept_for_later_subscribers() {
    let broker = TestBroker::start().await;
    let dying = Client::connect_with(broker.addr, "dying", |o| {
        o.set_last_will(LastWill::new("wills/state", "offline", QoS::AtLeastOnce, true, None));
    })
    .await;
    let mut watcher = Client::connect(broker.addr, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    drop(dying);
    expect_publish(&mut watcher, "wills/state", b"offline").await;

    let mut late = Client::connect(broker.addr, "late").await;
    late.subscribe("wills/#", QoS::AtLeastOnce).await;
    let p = expect_publish(&mut late, "wills/state", b"offline").await;
    assert!(p.retain);
    broker.stop().await;
}

fn connect_with_will(id: &str, delay: Option<u32>) -> codec::Connect {
    let mut c = persistent_connect(id, true);
    c.will = Some(codec::Will {
        topic: Arc::from(format!("wills/{id}")),
        payload: Bytes::from_static(b"taken over"),
        qos: codec::QoS::AtLeastOnce,
        retain: false,
        properties: codec::WillProperties { will_delay_interval: delay, ..Default::default() },
    });
    c
}

#[tokio::test]
async fn will_of_a_connection_that_is_taken_over_is_published() {
    let broker = TestBroker::start().await;
    let mut watcher = Client::connect(broker.addr, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let mut old = raw_connect_ok(broker.addr, connect_with_will("twin", None)).await;
    let _new = Client::connect_with(broker.addr, "twin", persistent(60, false)).await;
    expect_disconnect(&mut old, ReasonCode::SESSION_TAKEN_OVER).await;
    expect_publish(&mut watcher, "wills/twin", b"taken over").await;
    broker.stop().await;
}

#[tokio::test]
async fn delayed_will_of_a_connection_that_is_taken_over_is_dropped_when_the_session_continues() {
    let broker = TestBroker::start().await;
    let mut watcher = Client::connect(broker.addr, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let mut old = raw_connect_ok(broker.addr, connect_with_will("twin", Some(1))).await;
    let new = Client::connect_with(broker.addr, "twin", persistent(60, false)).await;
    assert!(new.connack.session_present);
    expect_disconnect(&mut old, ReasonCode::SESSION_TAKEN_OVER).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    assert_next_is_sentinel(&mut publisher, &mut watcher, "wills/sentinel").await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// Sessions: clean start, expiry, offline queues, take-over, assigned identifiers
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn persistent_session_delivers_qos1_messages_queued_while_the_client_was_away() {
    let broker = TestBroker::start().await;
    let sub = Client::connect_with(broker.addr, "sub", persistent(60, true)).await;
    assert!(!sub.connack.session_present);
    let mut sub = sub;
    sub.subscribe("offline/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publisher = Client::connect(broker.addr, "pub").await;
    for i in 0..3 {
        publisher.publish(&format!("offline/{i}"), QoS::AtLeastOnce, false, format!("m{i}").as_bytes()).await;
    }
    // QoS 0 is not queued for an absent client.
    publisher.publish("offline/q0", QoS::AtMostOnce, false, b"lost").await;

    let mut sub = Client::connect_with(broker.addr, "sub", persistent(60, false)).await;
    assert!(sub.connack.session_present, "the session was kept");
    for i in 0..3 {
        let p = expect_publish(&mut sub, &format!("offline/{i}"), format!("m{i}").as_bytes()).await;
        assert_eq!(p.qos, QoS::AtLeastOnce);
    }
    // The subscription survived too.
    assert_next_is_sentinel(&mut publisher, &mut sub, "offline/after").await;
    broker.stop().await;
}

#[tokio::test]
async fn clean_start_discards_the_previous_session_and_its_queue() {
    let broker = TestBroker::start().await;
    let mut sub = Client::connect_with(broker.addr, "sub", persistent(60, true)).await;
    sub.subscribe("clean/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("clean/queued", QoS::AtLeastOnce, false, b"old").await;

    let mut sub = Client::connect_with(broker.addr, "sub", persistent(60, true)).await;
    assert!(!sub.connack.session_present);
    // Neither the queued message nor the old subscription survives.
    sub.subscribe("sync/#", QoS::AtLeastOnce).await;
    publisher.publish("clean/new", QoS::AtLeastOnce, false, b"new").await;
    assert_next_is_sentinel(&mut publisher, &mut sub, "sync/sentinel").await;
    broker.stop().await;
}

#[tokio::test]
async fn session_with_expiry_zero_ends_when_the_connection_closes() {
    let broker = TestBroker::start().await;
    let mut sub = Client::connect_with(broker.addr, "sub", persistent(0, true)).await;
    sub.subscribe("gone/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let sub = Client::connect_with(broker.addr, "sub", persistent(0, false)).await;
    assert!(!sub.connack.session_present);
    broker.stop().await;
}

#[tokio::test]
async fn session_expires_after_its_expiry_interval() {
    let broker = TestBroker::start().await;
    let mut sub = Client::connect_with(broker.addr, "sub", persistent(1, true)).await;
    sub.subscribe("exp/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    // Still there before the interval ends...
    let sub = Client::connect_with(broker.addr, "sub", persistent(1, false)).await;
    assert!(sub.connack.session_present);
    sub.disconnect().await;
    // ...and gone after it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sub = Client::connect_with(broker.addr, "sub", persistent(1, false)).await;
    assert!(!sub.connack.session_present);
    broker.stop().await;
}

#[tokio::test]
async fn disconnect_may_shorten_the_session_expiry_to_zero() {
    let broker = TestBroker::start().await;
    let mut sub = raw_connect_ok(broker.addr, {
        let mut c = v5_connect("sub");
        c.properties.session_expiry_interval = Some(60);
        c
    })
    .await;
    let disconnect = codec::Disconnect {
        reason_code: ReasonCode::NORMAL_DISCONNECTION,
        properties: codec::DisconnectProperties { session_expiry_interval: Some(0), ..Default::default() },
    };
    sub.send(&Packet::Disconnect(disconnect)).await;
    assert_eq!(sub.recv().await, None);
    let sub = Client::connect_with(broker.addr, "sub", persistent(60, false)).await;
    assert!(!sub.connack.session_present, "DISCONNECT set the expiry to 0, so the session ended");
    broker.stop().await;
}

#[tokio::test]
async fn disconnect_may_not_raise_the_session_expiry_from_zero() {
    let broker = TestBroker::start().await;
    let mut sub = raw_connect_ok(broker.addr, v5_connect("sub")).await;
    let disconnect = codec::Disconnect {
        reason_code: ReasonCode::NORMAL_DISCONNECTION,
        properties: codec::DisconnectProperties { session_expiry_interval: Some(60), ..Default::default() },
    };
    sub.send(&Packet::Disconnect(disconnect)).await;
    expect_disconnect(&mut sub, ReasonCode::PROTOCOL_ERROR).await;
    broker.stop().await;
}

#[tokio::test]
async fn session_expiry_is_capped_by_the_node_at_connect_and_at_disconnect() {
    let mut config = Config::for_tests();
    config.max_session_expiry = 1;
    let broker = TestBroker::start_with(config).await;
    let mut connect = v5_connect("sub");
    connect.properties.session_expiry_interval = Some(3600);
    let (mut sub, ack) = raw_connect(broker.addr, connect).await;
    assert_eq!(ack.properties.session_expiry_interval, Some(1), "CONNACK says which interval is used");
    // Asking again for an hour on DISCONNECT does not get past the node's maximum either.
    let disconnect = codec::Disconnect {
        reason_code: ReasonCode::NORMAL_DISCONNECTION,
        properties: codec::DisconnectProperties { session_expiry_interval: Some(3600), ..Default::default() },
    };
    sub.send(&Packet::Disconnect(disconnect)).await;
    assert_eq!(sub.recv().await, None);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sub = Client::connect_with(broker.addr, "sub", persistent(1, false)).await;
    assert!(!sub.connack.session_present, "the session expired after the node's maximum of 1 s");
    broker.stop().await;
}

#[tokio::test]
async fn second_connection_with_the_same_client_id_takes_the_session_over() {
    let broker = TestBroker::start().await;
    let mut connect = v5_connect("twin");
    connect.properties.session_expiry_interval = Some(60);
    let mut old = raw_connect_ok(broker.addr, connect).await;
    let ack = raw_subscribe(&mut old, 1, &[("takeover/t", codec::QoS::AtLeastOnce)]).await;
    assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_1]);

    let mut new = Client::connect_with(broker.addr, "twin", persistent(60, false)).await;
    assert!(new.connack.session_present, "the new connection resumes the session");
    expect_disconnect(&mut old, ReasonCode::SESSION_TAKEN_OVER).await;

    // The subscription made on the old connection now serves the new one.
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("takeover/t", QoS::AtLeastOnce, false, b"to the new one").await;
    expect_publish(&mut new, "takeover/t", b"to the new one").await;
    broker.stop().await;
}

#[tokio::test]
async fn messages_unacknowledged_on_the_old_connection_are_resent_on_the_one_that_took_over() {
    let broker = TestBroker::start().await;
    let mut old = raw_connect_ok(broker.addr, persistent_connect("twin", true)).await;
    raw_subscribe(&mut old, 1, &[("takeover/t", codec::QoS::AtLeastOnce)]).await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("takeover/t", QoS::AtLeastOnce, false, b"unacked").await;
    let first = expect_raw_publish(old.recv().await);

    let (mut new, ack) = raw_connect(broker.addr, persistent_connect("twin", false)).await;
    assert!(ack.session_present);
    expect_disconnect(&mut old, ReasonCode::SESSION_TAKEN_OVER).await;
    let again = expect_raw_publish(new.recv().await);
    assert_eq!(again, codec::Publish { dup: true, ..first });
    broker.stop().await;
}

#[tokio::test]
async fn take_over_with_clean_start_discards_the_old_session() {
    let broker = TestBroker::start().await;
    let mut old = raw_connect_ok(broker.addr, persistent_connect("twin", true)).await;
    raw_subscribe(&mut old, 1, &[("takeover/t", codec::QoS::AtLeastOnce)]).await;
    let mut new = Client::connect_with(broker.addr, "twin", persistent(60, true)).await;
    assert!(!new.connack.session_present);
    expect_disconnect(&mut old, ReasonCode::SESSION_TAKEN_OVER).await;
    new.subscribe("sync/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("takeover/t", QoS::AtLeastOnce, false, b"old subscription").await;
    assert_next_is_sentinel(&mut publisher, &mut new, "sync/sentinel").await;
    broker.stop().await;
}

#[tokio::test]
async fn take_over_of_a_session_with_expiry_zero_starts_a_new_session() {
    let broker = TestBroker::start().await;
    let mut old = raw_connect_ok(broker.addr, v5_connect("twin")).await;
    raw_subscribe(&mut old, 1, &[("takeover/t", codec::QoS::AtLeastOnce)]).await;

    // The old session ends with its connection (expiry 0), so there is nothing to resume.
    let mut new = Client::connect_with(broker.addr, "twin", persistent(60, false)).await;
    assert!(!new.connack.session_present);
    expect_disconnect(&mut old, ReasonCode::SESSION_TAKEN_OVER).await;
    new.subscribe("sync/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("takeover/t", QoS::AtLeastOnce, false, b"old subscription").await;
    assert_next_is_sentinel(&mut publisher, &mut new, "sync/sentinel").await;
    broker.stop().await;
}

#[tokio::test]
async fn empty_client_id_gets_an_assigned_client_identifier_that_can_resume_its_session() {
    let broker = TestBroker::start().await;
    let mut connect = v5_connect("");
    connect.properties.session_expiry_interval = Some(60);
    let (mut first, ack) = raw_connect(broker.addr, connect.clone()).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let assigned = ack.properties.assigned_client_identifier.expect("Assigned Client Identifier");
    assert!(!assigned.is_empty());
    let (_second, ack) = raw_connect(broker.addr, connect).await;
    let other = ack.properties.assigned_client_identifier.expect("Assigned Client Identifier");
    assert_ne!(assigned, other, "each client gets its own identifier");

    first.send(&Packet::Disconnect(codec::Disconnect::default())).await;
    assert_eq!(first.recv().await, None);
    let resumed = Client::connect_with(broker.addr, &assigned, persistent(60, false)).await;
    assert!(resumed.connack.session_present);
    assert_eq!(
        resumed.connack_properties().assigned_client_identifier,
        None,
        "only assigned for an empty id"
    );
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// Keep-alive
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn silent_client_is_disconnected_with_keep_alive_timeout_after_one_and_a_half_intervals() {
    let broker = TestBroker::start().await;
    let mut connect = v5_connect("silent");
    connect.keep_alive = 1;
    let (mut client, ack) = raw_connect(broker.addr, connect).await;
    assert_eq!(ack.properties.server_keep_alive, None, "the client's keep-alive is accepted as is");
    let connected_at = Instant::now();
    expect_disconnect(&mut client, ReasonCode::KEEP_ALIVE_TIMEOUT).await;
    let waited = connected_at.elapsed();
    assert!(waited >= Duration::from_millis(1400), "disconnected after {waited:?}, before 1.5 × keep-alive");
    assert!(waited <= Duration::from_millis(2500), "disconnected after {waited:?}");
    broker.stop().await;
}

#[tokio::test]
async fn pings_keep_a_connection_with_a_short_keep_alive_open() {
    let broker = TestBroker::start().await;
    let mut connect = v5_connect("pinger");
    connect.keep_alive = 1;
    let mut client = raw_connect_ok(broker.addr, connect).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        client.send(&Packet::PingReq).await;
        assert_eq!(client.recv().await, Some(Packet::PingResp));
    }
    broker.stop().await;
}

#[tokio::test]
async fn server_keep_alive_replaces_a_longer_or_absent_keep_alive_and_is_enforced() {
    let mut config = Config::for_tests();
    config.max_keep_alive = 1;
    let broker = TestBroker::start_with(config).await;

    let (_zero, ack) = raw_connect(broker.addr, {
        let mut c = v5_connect("zero");
        c.keep_alive = 0;
        c
    })
    .await;
    assert_eq!(ack.properties.server_keep_alive, Some(1), "keep-alive 0 is replaced too");

    let (mut long, ack) = raw_connect(broker.addr, v5_connect("long")).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(ack.properties.server_keep_alive, Some(1));
    let connected_at = Instant::now();
    expect_disconnect(&mut long, ReasonCode::KEEP_ALIVE_TIMEOUT).await;
    let waited = connected_at.elapsed();
    assert!(
        (Duration::from_millis(1400)..=Duration::from_millis(2500)).contains(&waited),
        "after {waited:?}"
    );
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// Topic aliases
// ---------------------------------------------------------------------------------------------------

fn aliased(topic: &str, alias: u16, id: u16, payload: &'static [u8]) -> Packet {
    let mut p = raw_publish(topic, codec::QoS::AtLeastOnce, Some(id), payload);
    p.properties.topic_alias = Some(alias);
    Packet::Publish(p)
}

#[tokio::test]
async fn topic_alias_from_the_client_is_resolved_for_subscribers() {
    let broker = TestBroker::start().await;
    let mut sub = Client::connect(broker.addr, "sub").await;
    sub.subscribe("alias/#", QoS::AtLeastOnce).await;
    let (mut publisher, ack) = raw_connect(broker.addr, v5_connect("pub")).await;
    assert_eq!(ack.properties.topic_alias_maximum, Some(64));

    let sends =
        [("alias/one", 1, b"a" as &'static [u8]), ("", 1, b"b"), ("alias/two", 1, b"c"), ("", 1, b"d")];
    for (i, (topic, alias, payload)) in sends.into_iter().enumerate() {
        let id = u16::try_from(i + 1).expect("small");
        publisher.send(&aliased(topic, alias, id, payload)).await;
        assert_eq!(publisher.recv().await, Some(Packet::PubAck(codec::Ack::new(pid(id)))));
    }
    for (topic, payload) in
        [("alias/one", b"a"), ("alias/one", b"b"), ("alias/two", b"c"), ("alias/two", b"d")]
    {
        let p = expect_publish(&mut sub, topic, payload).await;
        assert_eq!(props(&p).topic_alias, None, "the subscriber set no Topic Alias Maximum");
    }
    broker.stop().await;
}

#[tokio::test]
async fn topic_alias_above_our_maximum_ends_the_connection_with_0x94() {
    let broker = TestBroker::start().await;
    let mut publisher = raw_connect_ok(broker.addr, v5_connect("pub")).await;
    publisher.send(&aliased("alias/t", 65, 1, b"x")).await;
    expect_disconnect(&mut publisher, ReasonCode::TOPIC_ALIAS_INVALID).await;
    broker.stop().await;
}

#[tokio::test]
async fn topic_alias_zero_ends_the_connection_with_0x94() {
    let broker = TestBroker::start().await;
    let mut publisher = raw_connect_ok(broker.addr, v5_connect("pub")).await;
    // Topic Alias 0 cannot be encoded by our codec, so the bytes are written by hand: PUBLISH QoS 0,
    // topic "a", properties length 3, Topic Alias (0x23) = 0.
    publisher.write_raw(&[0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x00]).await;
    expect_disconnect(&mut publisher, ReasonCode::TOPIC_ALIAS_INVALID).await;
    broker.stop().await;
}

#[tokio::test]
async fn unknown_topic_alias_is_a_protocol_error() {
    let broker = TestBroker::start().await;
    let mut publisher = raw_connect_ok(broker.addr, v5_connect("pub")).await;
    publisher.send(&aliased("", 3, 1, b"x")).await;
    expect_disconnect(&mut publisher, ReasonCode::PROTOCOL_ERROR).await;
    broker.stop().await;
}

#[tokio::test]
async fn node_sends_topic_aliases_up_to_the_clients_topic_alias_maximum() {
    let broker = TestBroker::start().await;
    let mut sub = Client::connect_with(broker.addr, "sub", |o| {
        o.set_topic_alias_max(Some(2));
    })
    .await;
    sub.subscribe("ta/#", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    for topic in ["ta/1", "ta/2", "ta/3", "ta/1", "ta/2", "ta/3"] {
        publisher.publish(topic, QoS::AtLeastOnce, false, topic.as_bytes()).await;
    }
    // rumqttc reports each PUBLISH as it came off the wire, before resolving its alias.
    let expected: [(&str, Option<u16>, &[u8]); 6] = [
        ("ta/1", Some(1), b"ta/1"),
        ("ta/2", Some(2), b"ta/2"),
        ("ta/3", None, b"ta/3"),
        ("", Some(1), b"ta/1"),
        ("", Some(2), b"ta/2"),
        ("ta/3", None, b"ta/3"),
    ];
    for (topic, alias, payload) in expected {
        let p = sub.next_publish().await;
        assert_eq!((topic_of(&p), props(&p).topic_alias, &p.payload[..]), (topic, alias, payload));
    }
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// Flow control: Receive Maximum both ways
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn exceeding_our_receive_maximum_with_unreleased_qos2_gets_disconnect_0x93() {
    let mut config = Config::for_tests();
    config.limits.receive_maximum = 2;
    let broker = TestBroker::start_with(config).await;
    let (mut client, ack) = raw_connect(broker.addr, v5_connect("greedy")).await;
    assert_eq!(ack.properties.receive_maximum, Some(2));

    for id in [1, 2] {
        client.send(&Packet::Publish(raw_publish("rm/t", codec::QoS::ExactlyOnce, Some(id), b"x"))).await;
        assert_eq!(client.recv().await, Some(Packet::PubRec(codec::Ack::new(pid(id)))));
    }
    // Releasing one frees a slot...
    client.send(&Packet::PubRel(codec::Ack::new(pid(1)))).await;
    assert_eq!(client.recv().await, Some(Packet::PubComp(codec::Ack::new(pid(1)))));
    client.send(&Packet::Publish(raw_publish("rm/t", codec::QoS::ExactlyOnce, Some(3), b"x"))).await;
    assert_eq!(client.recv().await, Some(Packet::PubRec(codec::Ack::new(pid(3)))));
    // ...and a third unreleased one is one too many.
    client.send(&Packet::Publish(raw_publish("rm/t", codec::QoS::ExactlyOnce, Some(4), b"x"))).await;
    expect_disconnect(&mut client, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED).await;
    broker.stop().await;
}

#[tokio::test]
async fn disconnect_0x93_reaches_a_client_that_keeps_releasing_after_the_node_closed() {
    let mut config = Config::for_tests();
    config.limits.receive_maximum = 2;
    let broker = TestBroker::start_with(config).await;
    let mut client = raw_connect_ok(broker.addr, v5_connect("eager")).await;

    // Three unreleased publishes in a row, before reading anything: the third is one too many.
    for id in 1..=3 {
        client.send(&Packet::Publish(raw_publish("rm/t", codec::QoS::ExactlyOnce, Some(id), b"x"))).await;
    }
    // The client answers each PUBREC with PUBREL while the node has already closed its side; these
    // writes must not reset the connection before the DISCONNECT is read.
    for id in 1..=2 {
        assert_eq!(client.recv().await, Some(Packet::PubRec(codec::Ack::new(pid(id)))));
        client.send(&Packet::PubRel(codec::Ack::new(pid(id)))).await;
    }
    expect_disconnect(&mut client, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED).await;
    broker.stop().await;
}

#[tokio::test]
async fn outgoing_window_honours_the_clients_receive_maximum() {
    let broker = TestBroker::start().await;
    let mut connect = v5_connect("slow");
    connect.properties.receive_maximum = Some(2);
    let mut sub = raw_connect_ok(broker.addr, connect).await;
    raw_subscribe(&mut sub, 1, &[("win/#", codec::QoS::AtLeastOnce)]).await;

    let mut publisher = Client::connect(broker.addr, "pub").await;
    for i in 1..=4 {
        publisher.publish(&format!("win/{i}"), QoS::AtLeastOnce, false, b"q1").await;
    }
    // QoS 0 is not counted by Receive Maximum, so it overtakes the held-back QoS 1 messages.
    publisher.publish("win/marker", QoS::AtMostOnce, false, b"q0").await;

    let first = expect_raw_publish(sub.recv().await);
    let second = expect_raw_publish(sub.recv().await);
    let marker = expect_raw_publish(sub.recv().await);
    assert_eq!([&*first.topic, &*second.topic, &*marker.topic], ["win/1", "win/2", "win/marker"]);
    // Each PUBACK opens the window for exactly one more.
    for (acked, next) in [(&first, "win/3"), (&second, "win/4")] {
        sub.send(&Packet::PubAck(codec::Ack::new(acked.packet_id.expect("QoS 1")))).await;
        assert_eq!(&*expect_raw_publish(sub.recv().await).topic, next);
    }
    broker.stop().await;
}

#[tokio::test]
async fn outgoing_qos2_counts_against_receive_maximum_until_pubcomp() {
    let broker = TestBroker::start().await;
    let mut connect = v5_connect("slow");
    connect.properties.receive_maximum = Some(1);
    let mut sub = raw_connect_ok(broker.addr, connect).await;
    raw_subscribe(&mut sub, 1, &[("win2/#", codec::QoS::ExactlyOnce)]).await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("win2/1", QoS::ExactlyOnce, false, b"a").await;
    publisher.publish("win2/2", QoS::ExactlyOnce, false, b"b").await;

    let first = expect_raw_publish(sub.recv().await);
    assert_eq!(&*first.topic, "win2/1");
    let id = first.packet_id.expect("QoS 2");
    sub.send(&Packet::PubRec(codec::Ack::new(id))).await;
    assert_eq!(sub.recv().await, Some(Packet::PubRel(codec::Ack::new(id))));
    // PUBREC alone does not free the slot: a QoS 0 marker published now overtakes `win2/2`.
    publisher.publish("win2/marker", QoS::AtMostOnce, false, b"q0").await;
    assert_eq!(&*expect_raw_publish(sub.recv().await).topic, "win2/marker");
    sub.send(&Packet::PubComp(codec::Ack::new(id))).await;
    assert_eq!(&*expect_raw_publish(sub.recv().await).topic, "win2/2");
    broker.stop().await;
}

#[tokio::test]
async fn offline_queue_is_released_within_the_receive_maximum_of_the_returning_client() {
    let broker = TestBroker::start().await;
    let mut sub = raw_connect_ok(broker.addr, persistent_connect("slow", true)).await;
    raw_subscribe(&mut sub, 1, &[("backlog/#", codec::QoS::AtLeastOnce)]).await;
    sub.send(&Packet::Disconnect(codec::Disconnect::default())).await;
    assert_eq!(sub.recv().await, None);
    let mut publisher = Client::connect(broker.addr, "pub").await;
    for i in 1..=3 {
        publisher.publish(&format!("backlog/{i}"), QoS::AtLeastOnce, false, b"q").await;
    }

    let mut connect = persistent_connect("slow", false);
    connect.properties.receive_maximum = Some(2);
    let mut sub = raw_connect_ok(broker.addr, connect).await;
    let first = expect_raw_publish(sub.recv().await);
    let second = expect_raw_publish(sub.recv().await);
    assert_eq!([&*first.topic, &*second.topic], ["backlog/1", "backlog/2"]);
    publisher.publish("backlog/marker", QoS::AtMostOnce, false, b"q0").await;
    assert_eq!(&*expect_raw_publish(sub.recv().await).topic, "backlog/marker");
    sub.send(&Packet::PubAck(codec::Ack::new(first.packet_id.expect("QoS 1")))).await;
    assert_eq!(&*expect_raw_publish(sub.recv().await).topic, "backlog/3");
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// Maximum Packet Size both ways
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn publish_larger_than_our_maximum_packet_size_gets_disconnect_0x95() {
    let mut config = Config::for_tests();
    config.limits.max_packet_size = 512;
    let broker = TestBroker::start_with(config).await;
    let (mut client, ack) = raw_connect(broker.addr, v5_connect("big")).await;
    assert_eq!(ack.properties.maximum_packet_size, Some(512));
    let mut big = raw_publish("big/t", codec::QoS::AtMostOnce, None, b"");
    big.payload = Bytes::from(vec![b'x'; 600]);
    client.send(&Packet::Publish(big)).await;
    expect_disconnect(&mut client, ReasonCode::PACKET_TOO_LARGE).await;
    broker.stop().await;
}

#[tokio::test]
async fn message_larger_than_a_subscribers_maximum_packet_size_is_not_sent_to_it_but_is_to_others() {
    let broker = TestBroker::start().await;
    let mut small = Client::connect_with(broker.addr, "small", |o| {
        o.set_max_packet_size(Some(256));
    })
    .await;
    small.subscribe("mps/#", QoS::AtLeastOnce).await;
    let mut large = Client::connect(broker.addr, "large").await;
    large.subscribe("mps/#", QoS::AtLeastOnce).await;

    let mut publisher = Client::connect(broker.addr, "pub").await;
    let payload = vec![b'y'; 1000];
    publisher.publish("mps/big", QoS::AtLeastOnce, false, &payload).await;
    publisher.publish("mps/small", QoS::AtLeastOnce, false, b"fits").await;

    expect_publish(&mut large, "mps/big", &payload).await;
    expect_publish(&mut large, "mps/small", b"fits").await;
    expect_publish(&mut small, "mps/small", b"fits").await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// Message expiry
// ---------------------------------------------------------------------------------------------------

fn expiring(secs: u32) -> PublishProperties {
    PublishProperties { message_expiry_interval: Some(secs), ..Default::default() }
}

#[tokio::test]
async fn expired_message_is_dropped_from_an_offline_queue_and_the_rest_carry_the_time_left() {
    let broker = TestBroker::start().await;
    let mut sub = Client::connect_with(broker.addr, "sub", persistent(60, true)).await;
    sub.subscribe("mx/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish_with("mx/short", QoS::AtLeastOnce, false, b"short", expiring(1)).await;
    publisher.publish_with("mx/long", QoS::AtLeastOnce, false, b"long", expiring(60)).await;
    publisher.publish("mx/forever", QoS::AtLeastOnce, false, b"forever").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut sub = Client::connect_with(broker.addr, "sub", persistent(60, false)).await;
    assert!(sub.connack.session_present);
    let long = expect_publish(&mut sub, "mx/long", b"long").await;
    let left = props(&long).message_expiry_interval.expect("Message Expiry Interval forwarded");
    assert!((57..=59).contains(&left), "forwarded interval {left}: the time waited is subtracted");
    let forever = expect_publish(&mut sub, "mx/forever", b"forever").await;
    assert_eq!(props(&forever).message_expiry_interval, None);
    broker.stop().await;
}

#[tokio::test]
async fn expired_retained_message_is_not_sent_to_new_subscribers() {
    let broker = TestBroker::start().await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish_with("mxr/short", QoS::AtLeastOnce, true, b"short", expiring(1)).await;
    publisher.publish_with("mxr/long", QoS::AtLeastOnce, true, b"long", expiring(60)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut sub = Client::connect(broker.addr, "sub").await;
    sub.subscribe("mxr/#", QoS::AtLeastOnce).await;
    let p = expect_publish(&mut sub, "mxr/long", b"long").await;
    let left = props(&p).message_expiry_interval.expect("Message Expiry Interval forwarded");
    assert!((57..=59).contains(&left), "forwarded interval {left}");
    assert_next_is_sentinel(&mut publisher, &mut sub, "mxr/sentinel").await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// Application properties, request/response, problem information
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn publish_properties_are_forwarded_and_user_property_order_is_kept() {
    let broker = TestBroker::start().await;
    let mut sub = Client::connect(broker.addr, "sub").await;
    sub.subscribe("props/t", QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(broker.addr, "pub").await;
    let user_properties: Vec<(String, String)> = [("zeta", "1"), ("alpha", "2"), ("zeta", "3"), ("mid", "")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(300),
        topic_alias: None,
        response_topic: Some("replies/for/pub".into()),
        correlation_data: Some(Bytes::from_static(&[0, 1, 2, 0xff])),
        user_properties: user_properties.clone(),
        subscription_identifiers: Vec::new(),
        content_type: Some("application/json; charset=utf-8".into()),
    };
    publisher.publish_with("props/t", QoS::AtLeastOnce, false, br#"{"t":21.5}"#, sent).await;

    let p = expect_publish(&mut sub, "props/t", br#"{"t":21.5}"#).await;
    let got = props(&p);
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.content_type.as_deref(), Some("application/json; charset=utf-8"));
    assert_eq!(got.response_topic.as_deref(), Some("replies/for/pub"));
    assert_eq!(got.correlation_data.as_deref(), Some(&[0, 1, 2, 0xff][..]));
    assert_eq!(got.user_properties, user_properties);
    let expiry = got.message_expiry_interval.expect("Message Expiry Interval");
    assert!((299..=300).contains(&expiry), "expiry {expiry}");
    assert_eq!(got.topic_alias, None);
    assert!(got.subscription_identifiers.is_empty());
    broker.stop().await;
}

#[tokio::test]
async fn subscription_identifier_in_a_publish_from_a_client_is_a_protocol_error() {
    let broker = TestBroker::start().await;
    let mut publisher = raw_connect_ok(broker.addr, v5_connect("pub")).await;
    let mut p = raw_publish("sid/t", codec::QoS::AtLeastOnce, Some(1), b"x");
    p.properties.subscription_identifiers = vec![1];
    publisher.send(&Packet::Publish(p)).await;
    expect_disconnect(&mut publisher, ReasonCode::PROTOCOL_ERROR).await;
    broker.stop().await;
}

#[tokio::test]
async fn payload_marked_utf8_that_is_not_gets_puback_0x99_and_is_not_forwarded() {
    let broker = TestBroker::start().await;
    let mut sub = Client::connect(broker.addr, "sub").await;
    sub.subscribe("pfi/#", QoS::AtLeastOnce).await;
    let mut publisher = raw_connect_ok(broker.addr, v5_connect("pub")).await;
    let mut bad = raw_publish("pfi/t", codec::QoS::AtLeastOnce, Some(1), b"\xff\xfe");
    bad.properties.payload_format_indicator = Some(true);
    publisher.send(&Packet::Publish(bad)).await;
    match publisher.recv().await {
        Some(Packet::PubAck(ack)) => {
            assert_eq!((ack.packet_id, ack.reason_code), (pid(1), ReasonCode::PAYLOAD_FORMAT_INVALID));
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let mut other = Client::connect(broker.addr, "other").await;
    assert_next_is_sentinel(&mut other, &mut sub, "pfi/sentinel").await;
    // At QoS 0 there is no acknowledgement to carry the reason: the connection ends instead.
    let mut bad = raw_publish("pfi/t", codec::QoS::AtMostOnce, None, b"\xc3\x28");
    bad.properties.payload_format_indicator = Some(true);
    publisher.send(&Packet::Publish(bad)).await;
    expect_disconnect(&mut publisher, ReasonCode::PAYLOAD_FORMAT_INVALID).await;
    assert_next_is_sentinel(&mut other, &mut sub, "pfi/sentinel").await;
    broker.stop().await;
}

#[tokio::test]
async fn response_information_is_returned_only_to_clients_that_request_it() {
    let mut config = Config::for_tests();
    config.response_information = Some("m2m/responses/".into());
    let broker = TestBroker::start_with(config).await;
    let asks = Client::connect_with(broker.addr, "asks", |o| {
        o.set_request_response_info(Some(1));
    })
    .await;
    assert_eq!(asks.connack_properties().response_information.as_deref(), Some("m2m/responses/"));
    let silent = Client::connect(broker.addr, "silent").await;
    assert_eq!(silent.connack_properties().response_information, None);
    let declines = Client::connect_with(broker.addr, "declines", |o| {
        o.set_request_response_info(Some(0));
    })
    .await;
    assert_eq!(declines.connack_properties().response_information, None);
    broker.stop().await;
}

#[tokio::test]
async fn request_problem_information_zero_strips_reason_strings_but_not_publish_properties() {
    let broker = TestBroker::start().await;
    let bad_filters = [("ok/t", codec::QoS::AtLeastOnce), ("bad/#/filter", codec::QoS::AtLeastOnce)];

    // By default the node explains a refused filter...
    let mut chatty = raw_connect_ok(broker.addr, v5_connect("chatty")).await;
    let ack = raw_subscribe(&mut chatty, 1, &bad_filters).await;
    assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_1, ReasonCode::TOPIC_FILTER_INVALID]);
    assert!(ack.properties.reason_string.is_some(), "a refused filter comes with a Reason String");

    // ...but not to a client that asked for no problem information.
    let mut connect = v5_connect("quiet");
    connect.properties.request_problem_information = Some(false);
    let mut quiet = raw_connect_ok(broker.addr, connect).await;
    let ack = raw_subscribe(&mut quiet, 1, &bad_filters).await;
    assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_1, ReasonCode::TOPIC_FILTER_INVALID]);
    assert_eq!(ack.properties, codec::AckProperties::default());

    // User properties of an application message are not problem information: they still arrive.
    let mut publisher = Client::connect(broker.addr, "pub").await;
    let user = PublishProperties { user_properties: vec![("a".into(), "b".into())], ..Default::default() };
    publisher.publish_with("ok/t", QoS::AtLeastOnce, false, b"m", user).await;
    let p = expect_raw_publish(quiet.recv().await);
    assert_eq!(p.properties.user_properties, [(Arc::from("a"), Arc::from("b"))]);
    broker.stop().await;
}

#[tokio::test]
async fn reason_string_is_left_out_when_it_would_exceed_the_clients_maximum_packet_size() {
    let broker = TestBroker::start().await;
    let mut connect = v5_connect("tiny");
    connect.properties.maximum_packet_size = Some(16);
    let mut tiny = raw_connect_ok(broker.addr, connect).await;
    let ack = raw_subscribe(&mut tiny, 1, &[("bad/#/filter", codec::QoS::AtLeastOnce)]).await;
    assert_eq!(ack.reason_codes, [ReasonCode::TOPIC_FILTER_INVALID]);
    assert_eq!(ack.properties, codec::AckProperties::default());
    broker.stop().await;
}

#[tokio::test]
async fn disconnect_reason_string_is_left_out_when_it_would_exceed_the_clients_maximum_packet_size() {
    let broker = TestBroker::start().await;
    for (max, has_reason_string) in [(256, true), (16, false)] {
        let mut connect = v5_connect("c");
        connect.properties.maximum_packet_size = Some(max);
        let mut client = raw_connect_ok(broker.addr, connect).await;
        client.send(&aliased("", 3, 1, b"x")).await;
        match client.recv().await {
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.reason_code, ReasonCode::PROTOCOL_ERROR);
                assert_eq!(
                    d.properties.reason_string.is_some(),
                    has_reason_string,
                    "maximum packet size {max}"
                );
            }
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
    }
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// Enhanced authentication
// ---------------------------------------------------------------------------------------------------

const METHOD: &str = "TEST-CHALLENGE";

/// A two-step challenge/response: the client says "hello", gets a nonce, answers "<nonce>:secret".
struct ChallengeAuth;

struct Challenge {
    nonce: Option<&'static [u8]>,
}

impl Authenticator for ChallengeAuth {
    fn begin(&self, method: &str, _client_id: &str) -> Option<Box<dyn AuthExchange>> {
        (method == METHOD).then(|| Box::new(Challenge { nonce: None }) as Box<dyn AuthExchange>)
    }
}

impl AuthExchange for Challenge {
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep {
        match self.nonce {
            None if data == Some(b"hello") => {
                self.nonce = Some(b"nonce-1");
                AuthStep::Continue(Bytes::from_static(b"nonce-1"))
            }
            Some(_) if data == Some(b"nonce-1:secret") => {
                AuthStep::Success(Some(Bytes::from_static(b"welcome")))
            }
            _ => AuthStep::Fail,
        }
    }
}

async fn auth_broker() -> TestBroker {
    TestBroker::start_with_auth(Config::for_tests(), Some(Arc::new(ChallengeAuth))).await
}

fn auth_connect(id: &str, method: &str) -> codec::Connect {
    let mut c = v5_connect(id);
    c.properties.authentication_method = Some(Arc::from(method));
    c.properties.authentication_data = Some(Bytes::from_static(b"hello"));
    c
}

fn auth(reason_code: ReasonCode, data: &'static [u8]) -> Packet {
    Packet::Auth(codec::Auth {
        reason_code,
        properties: codec::AuthProperties {
            authentication_method: Some(Arc::from(METHOD)),
            authentication_data: Some(Bytes::from_static(data)),
            ..Default::default()
        },
    })
}

async fn expect_challenge(client: &mut RawClient) {
    assert_eq!(client.recv().await, Some(auth(ReasonCode::CONTINUE_AUTHENTICATION, b"nonce-1")));
}

#[tokio::test]
async fn enhanced_authentication_challenge_and_response_succeeds() {
    let broker = auth_broker().await;
    let mut client = RawClient::connect(broker.addr, ProtocolVersion::V5).await;
    client.send(&Packet::Connect(Box::new(auth_connect("authed", METHOD)))).await;
    expect_challenge(&mut client).await;
    client.send(&auth(ReasonCode::CONTINUE_AUTHENTICATION, b"nonce-1:secret")).await;
    match client.recv().await {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
            assert_eq!(ack.properties.authentication_method.as_deref(), Some(METHOD));
            assert_eq!(ack.properties.authentication_data.as_deref(), Some(&b"welcome"[..]));
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    client.send(&Packet::PingReq).await;
    assert_eq!(client.recv().await, Some(Packet::PingResp));
    broker.stop().await;
}

#[tokio::test]
async fn enhanced_authentication_with_a_wrong_answer_is_refused_with_0x87() {
    let broker = auth_broker().await;
    let mut client = RawClient::connect(broker.addr, ProtocolVersion::V5).await;
    client.send(&Packet::Connect(Box::new(auth_connect("intruder", METHOD)))).await;
    expect_challenge(&mut client).await;
    client.send(&auth(ReasonCode::CONTINUE_AUTHENTICATION, b"nonce-1:guess")).await;
    match client.recv().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert_eq!(client.recv().await, None);
    broker.stop().await;
}

#[tokio::test]
async fn enhanced_authentication_with_an_unknown_method_is_refused_with_0x8c() {
    let broker = auth_broker().await;
    let (mut client, ack) = raw_connect(broker.addr, auth_connect("stranger", "SCRAM-SHA-512")).await;
    assert_eq!(ack.reason_code, ReasonCode::BAD_AUTHENTICATION_METHOD);
    assert_eq!(client.recv().await, None);
    broker.stop().await;
}

#[tokio::test]
async fn re_authentication_with_auth_0x19_runs_the_exchange_again() {
    let broker = auth_broker().await;
    let mut client = RawClient::connect(broker.addr, ProtocolVersion::V5).await;
    client.send(&Packet::Connect(Box::new(auth_connect("authed", METHOD)))).await;
    expect_challenge(&mut client).await;
    client.send(&auth(ReasonCode::CONTINUE_AUTHENTICATION, b"nonce-1:secret")).await;
    assert!(matches!(client.recv().await, Some(Packet::ConnAck(a)) if a.reason_code == ReasonCode::SUCCESS));

    client.send(&auth(ReasonCode::RE_AUTHENTICATE, b"hello")).await;
    expect_challenge(&mut client).await;
    client.send(&auth(ReasonCode::CONTINUE_AUTHENTICATION, b"nonce-1:secret")).await;
    assert_eq!(client.recv().await, Some(auth(ReasonCode::SUCCESS, b"welcome")));
    // Still connected and working.
    let ack = raw_subscribe(&mut client, 1, &[("after/reauth", codec::QoS::AtLeastOnce)]).await;
    assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_1]);

    // A failed re-authentication ends the connection.
    client.send(&auth(ReasonCode::RE_AUTHENTICATE, b"hello")).await;
    expect_challenge(&mut client).await;
    client.send(&auth(ReasonCode::CONTINUE_AUTHENTICATION, b"nonce-1:wrong")).await;
    expect_disconnect(&mut client, ReasonCode::NOT_AUTHORIZED).await;
    broker.stop().await;
}

#[tokio::test]
async fn auth_from_a_client_that_did_not_use_enhanced_authentication_is_a_protocol_error() {
    let broker = auth_broker().await;
    let mut client = raw_connect_ok(broker.addr, v5_connect("plain")).await;
    client.send(&auth(ReasonCode::RE_AUTHENTICATE, b"hello")).await;
    expect_disconnect(&mut client, ReasonCode::PROTOCOL_ERROR).await;
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// $SYS
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn sys_topics_are_published_every_interval() {
    let broker = TestBroker::start().await;
    let mut sub = Client::connect(broker.addr, "sys").await;
    sub.subscribe_with_options(Filter {
        retain_forward_rule: RetainForwardRule::Never,
        ..options("$SYS/broker/#", QoS::AtMostOnce)
    })
    .await;
    // A live update comes within about one interval (1 s in tests) and counts this client.
    let mut seen = std::collections::BTreeMap::new();
    while !seen.contains_key("$SYS/broker/clients/connected") || !seen.contains_key("$SYS/broker/version") {
        let p = sub.next_publish().await;
        assert!(!p.retain, "a live $SYS update is not flagged as retained");
        seen.insert(topic_of(&p).to_string(), String::from_utf8(p.payload.to_vec()).expect("UTF-8"));
    }
    let connected: u64 = seen["$SYS/broker/clients/connected"].parse().expect("a number");
    assert!(connected >= 1, "clients/connected = {connected}");
    assert!(seen["$SYS/broker/version"].starts_with("m2m "));
    broker.stop().await;
}

#[tokio::test]
async fn wildcards_at_the_first_level_do_not_match_sys_topics() {
    let broker = TestBroker::start().await;
    let mut sub = Client::connect(broker.addr, "sub").await;
    sub.subscribe_with_id("#", QoS::AtMostOnce, 1).await;
    sub.subscribe_with_id("+/#", QoS::AtMostOnce, 2).await;
    sub.subscribe_with_id("+/broker/uptime", QoS::AtMostOnce, 3).await;
    sub.subscribe_with_id("$share/g/#", QoS::AtMostOnce, 5).await;
    sub.subscribe_with_id("$share/g/+/broker/uptime", QoS::AtMostOnce, 6).await;
    sub.subscribe_with_id("$SYS/broker/uptime", QoS::AtMostOnce, 4).await;
    // The retained uptime (sent on subscribe) and the next live one match only the `$SYS` filter.
    for _ in 0..2 {
        let p = sub.next_publish().await;
        assert_eq!(topic_of(&p), "$SYS/broker/uptime");
        assert_eq!(props(&p).subscription_identifiers, [4]);
    }
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// UNSUBSCRIBE
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn unsubscribe_reports_a_reason_code_per_filter_and_stops_delivery() {
    let broker = TestBroker::start().await;
    let mut sub = raw_connect_ok(broker.addr, v5_connect("sub")).await;
    raw_subscribe(&mut sub, 1, &[("un/a", codec::QoS::AtLeastOnce), ("un/b", codec::QoS::AtLeastOnce)]).await;
    let unsubscribe = codec::Unsubscribe {
        packet_id: pid(2),
        user_properties: Vec::new(),
        filters: vec![Arc::from("un/a"), Arc::from("un/never"), Arc::from("un/#/bad")],
    };
    sub.send(&Packet::Unsubscribe(unsubscribe)).await;
    match sub.recv().await {
        Some(Packet::UnsubAck(ack)) => {
            assert_eq!(ack.packet_id, pid(2));
            assert_eq!(
                ack.reason_codes,
                [ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED, ReasonCode::TOPIC_FILTER_INVALID]
            );
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    let mut publisher = Client::connect(broker.addr, "pub").await;
    publisher.publish("un/a", QoS::AtLeastOnce, false, b"unsubscribed").await;
    publisher.publish("un/b", QoS::AtLeastOnce, false, b"still subscribed").await;
    let p = expect_raw_publish(sub.recv().await);
    assert_eq!((&*p.topic, &p.payload[..]), ("un/b", &b"still subscribed"[..]));
    broker.stop().await;
}

#[tokio::test]
async fn rumqttc_sees_unsuback_reason_codes() {
    let broker = TestBroker::start().await;
    let mut sub = Client::connect(broker.addr, "sub").await;
    sub.subscribe("un/a", QoS::AtLeastOnce).await;
    for (filter, reason) in
        [("un/a", UnsubAckReason::Success), ("un/a", UnsubAckReason::NoSubscriptionExisted)]
    {
        sub.inner.unsubscribe(filter).await.expect("unsubscribe");
        let reasons = sub
            .until(|p| match p {
                In::UnsubAck(ack) => Some(ack.reasons.clone()),
                _ => None,
            })
            .await;
        assert_eq!(reasons, [reason]);
    }
    broker.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Per-client limits and back-pressure
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn subscriptions_over_the_per_client_limit_get_suback_0x97() {
    let mut config = Config::for_tests();
    config.limits.max_subscriptions = 2;
    let broker = TestBroker::start_with(config).await;
    let mut client = raw_connect_ok(broker.addr, v5_connect("many")).await;
    let q0 = codec::QoS::AtMostOnce;
    let ack = raw_subscribe(&mut client, 1, &[("a", q0), ("b", q0), ("c", q0)]).await;
    assert_eq!(
        ack.reason_codes,
        [ReasonCode::GRANTED_QOS_0, ReasonCode::GRANTED_QOS_0, ReasonCode::QUOTA_EXCEEDED]
    );
    // Subscribing again to a filter it holds is a replacement, not a new subscription.
    let ack = raw_subscribe(&mut client, 2, &[("a", codec::QoS::AtLeastOnce)]).await;
    assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_1]);
    broker.stop().await;
}

#[tokio::test]
async fn topics_over_the_level_and_length_limits_are_refused() {
    let mut config = Config::for_tests();
    config.limits.max_topic_levels = 3;
    config.limits.max_topic_len = 16;
    let broker = TestBroker::start_with(config).await;
    let mut client = raw_connect_ok(broker.addr, v5_connect("deep")).await;
    let q0 = codec::QoS::AtMostOnce;
    let ack =
        raw_subscribe(&mut client, 1, &[("a/b/c", q0), ("a/b/c/d", q0), ("abcdefghijklmnopq", q0)]).await;
    assert_eq!(
        ack.reason_codes,
        [ReasonCode::GRANTED_QOS_0, ReasonCode::TOPIC_FILTER_INVALID, ReasonCode::TOPIC_FILTER_INVALID]
    );
    client.send(&Packet::Publish(raw_publish("a/b/c/d", q0, None, b"x"))).await;
    expect_disconnect(&mut client, ReasonCode::TOPIC_NAME_INVALID).await;
    let mut long = raw_connect_ok(broker.addr, v5_connect("long")).await;
    long.send(&Packet::Publish(raw_publish("abcdefghijklmnopq", q0, None, b"x"))).await;
    expect_disconnect(&mut long, ReasonCode::TOPIC_NAME_INVALID).await;
    broker.stop().await;
}

/// A node with very small per-connection buffers, so that one slow subscriber fills them quickly.
fn tight_config() -> Config {
    let mut config = Config::for_tests();
    config.mailbox_capacity = 4;
    config.limits.max_queued = 8;
    config.limits.max_inflight = 2;
    config
}

#[tokio::test]
async fn a_slow_qos1_subscriber_holds_back_the_nodes_own_messages_and_loses_none() {
    // The node's own messages (the mesh, uplinks, the API) come with no connection to throttle:
    // their sources wait for the node's flow instead, as the mesh's receiver does.
    const N: u16 = 6000;
    let broker = TestBroker::start_with(tight_config()).await;
    let mut sub = raw_connect_ok(broker.addr, v5_connect("slow-node-sub")).await;
    raw_subscribe(&mut sub, 1, &[("own/t", codec::QoS::AtLeastOnce)]).await;
    let router = broker.router.clone();
    let source = tokio::spawn(async move {
        for i in 1..=N {
            router.node_flow().wait_unblocked().await;
            let topic = m2m_topic::TopicName::try_from("own/t").unwrap();
            let message =
                m2m_session::Message::new(topic, i.to_be_bytes().to_vec(), codec::QoS::AtLeastOnce, false);
            let cmd = m2m_router::Command::Publish { message: Arc::new(message), from: None, ack: None };
            router.send(cmd).await.unwrap();
        }
    });
    // More than the overflow's room (queue limit and command channel) waits for the subscriber.
    within(async {
        while !broker.router.node_flow().is_blocked() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let mut next = 1u16;
    while next <= N {
        let p = expect_raw_publish(sub.recv().await);
        let id = p.packet_id.expect("QoS 1 has a packet id");
        if p.dup {
            sub.send(&Packet::PubAck(codec::Ack::new(id))).await;
            continue;
        }
        assert_eq!(p.payload[..], next.to_be_bytes(), "messages out of order or lost");
        sub.send(&Packet::PubAck(codec::Ack::new(id))).await;
        next += 1;
    }
    within(source).await.unwrap();
    assert!(!broker.router.node_flow().is_blocked());
    assert_eq!(m2m_broker::Metrics::get(&broker.metrics.messages_dropped), 0);
    broker.stop().await;
}

#[tokio::test]
async fn a_slow_qos1_subscriber_throttles_its_publisher_and_loses_nothing() {
    const N: u16 = 400;
    let broker = TestBroker::start_with(tight_config()).await;
    let mut sub = raw_connect_ok(broker.addr, v5_connect("slow")).await;
    raw_subscribe(&mut sub, 1, &[("bp/t", codec::QoS::AtLeastOnce)]).await;
    let mut publisher = raw_connect_ok(broker.addr, v5_connect("fast")).await;
    for i in 1..=N {
        let mut p = raw_publish("bp/t", codec::QoS::AtLeastOnce, Some(i), b"");
        p.payload = Bytes::from(i.to_be_bytes().to_vec());
        publisher.send(&Packet::Publish(p)).await;
    }

    // While the subscriber acknowledges nothing, the node stops reading the publisher: a PINGREQ
    // queued behind the PUBLISHes gets no answer, and not every PUBLISH has been acknowledged.
    publisher.send(&Packet::PingReq).await;
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(packet) = tokio::time::timeout_at(deadline, publisher.recv()).await {
        assert!(matches!(packet, Some(Packet::PubAck(_))), "expected only PUBACKs, got {packet:?}");
        acked += 1;
    }
    assert!(acked < N, "all {N} PUBLISHes acknowledged while the subscriber read nothing");

    // Once the subscriber acknowledges, every message arrives, in order, and every PUBLISH is acked.
    let mut next = 1u16;
    while next <= N {
        let p = expect_raw_publish(sub.recv().await);
        let id = p.packet_id.expect("QoS 1 has a packet id");
        if p.dup {
            sub.send(&Packet::PubAck(codec::Ack::new(id))).await;
            continue;
        }
        assert_eq!(p.payload[..], next.to_be_bytes(), "messages out of order or lost");
        sub.send(&Packet::PubAck(codec::Ack::new(id))).await;
        next += 1;
    }
    while acked < N {
        assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
        acked += 1;
    }
    assert_eq!(publisher.recv().await, Some(Packet::PingResp), "the publisher is read again");
    assert_eq!(m2m_broker::Metrics::get(&broker.metrics.messages_dropped), 0);
    broker.stop().await;
}

#[tokio::test]
async fn qos0_to_a_congested_subscriber_is_dropped_and_counted_without_slowing_the_publisher() {
    const N: u16 = 200;
    let broker = TestBroker::start_with(tight_config()).await;
    let mut sub = raw_connect_ok(broker.addr, v5_connect("slow")).await;
    raw_subscribe(&mut sub, 1, &[("bp/q0", codec::QoS::AtMostOnce)]).await;
    let mut publisher = raw_connect_ok(broker.addr, v5_connect("fast")).await;
    // A large payload fills the subscriber's socket buffers quickly, so its connection backs up.
    let payload = Bytes::from(vec![b'x'; 64 * 1024]);
    for _ in 0..N {
        let mut p = raw_publish("bp/q0", codec::QoS::AtMostOnce, None, b"");
        p.payload = payload.clone();
        publisher.send(&Packet::Publish(p)).await;
    }
    // The publisher is never throttled for QoS 0: a round trip on its connection completes at once.
    publisher.send(&Packet::PingReq).await;
    assert_eq!(publisher.recv().await, Some(Packet::PingResp));
    within(async {
        while m2m_broker::Metrics::get(&broker.metrics.messages_dropped) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let mut received = 0;
    while let Ok(Some(Packet::Publish(_))) =
        tokio::time::timeout(Duration::from_millis(500), sub.recv()).await
    {
        received += 1;
    }
    let dropped = m2m_broker::Metrics::get(&broker.metrics.messages_dropped);
    assert_eq!(received + dropped, u64::from(N), "every message is either delivered or counted as dropped");
    broker.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
    let mut config = tight_config();
    config.write_timeout = Duration::from_secs(1);
    let broker = TestBroker::start_with(config).await;
    let mut sub = raw_connect_ok(broker.addr, v5_connect("stuck")).await;
    raw_subscribe(&mut sub, 1, &[("wt/t", codec::QoS::AtMostOnce)]).await;
    let mut publisher = raw_connect_ok(broker.addr, v5_connect("fast")).await;
    let payload = Bytes::from(vec![b'x'; 64 * 1024]);
    let started = Instant::now();
    // Keep publishing until the stuck subscriber's session is gone; it never reads its socket.
    within(async {
        loop {
            let mut p = raw_publish("wt/t", codec::QoS::AtMostOnce, None, b"");
            p.payload = payload.clone();
            publisher.send(&Packet::Publish(p)).await;
            if broker.router.stats().await.expect("router stats").online == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(900), "disconnected before the write timeout");
    drop(sub);
    broker.stop().await;
}
