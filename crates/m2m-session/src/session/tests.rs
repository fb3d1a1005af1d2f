use super::*;
use bytes::Bytes;
use m2m_codec::{Disconnect, DisconnectProperties, PublishProperties};

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn v5_params() -> LinkParams {
    LinkParams {
        version: ProtocolVersion::V5,
        keep_alive: 10,
        receive_maximum: 2,
        max_packet_size: None,
        topic_alias_maximum: 0,
        request_problem_information: true,
    }
}

fn session(params: LinkParams) -> (Session, Instant) {
    let now = Instant::now();
    let mut s = Session::new(Arc::from("c1"), Arc::new(Limits::default()));
    let mut out = Vec::new();
    s.attach(params, 60, now, &mut out);
    assert!(out.is_empty());
    (s, now)
}

fn publish(topic: &str, qos: QoS, id: Option<u16>) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: Arc::from(topic),
        packet_id: id.map(pid),
        properties: PublishProperties::default(),
        payload: Bytes::from_static(b"x"),
    }
}

fn delivery(topic: &str, qos: QoS) -> Delivery {
    let name = TopicName::try_from(topic).unwrap();
    Delivery {
        message: Arc::new(Message::new(name, Bytes::from_static(b"hi"), qos, false)),
        qos,
        retain: false,
        subscription_ids: vec![],
        stored: None,
    }
}

fn sent(out: &[Action]) -> Vec<&Packet> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send(p) | Action::Publish { ack: Some(p), .. } => Some(p),
            _ => None,
        })
        .collect()
}

fn routed(out: &[Action]) -> usize {
    out.iter().filter(|a| matches!(a, Action::Publish { .. })).count()
}

#[test]
fn qos2_publish_is_routed_once_even_when_the_client_resends_it() {
    let (mut s, now) = session(v5_params());
    let mut out = Vec::new();
    s.handle_packet(Packet::Publish(publish("a/b", QoS::ExactlyOnce, Some(7))), now, &mut out).unwrap();
    let mut again = publish("a/b", QoS::ExactlyOnce, Some(7));
    again.dup = true;
    s.handle_packet(Packet::Publish(again), now, &mut out).unwrap();
    assert_eq!(routed(&out), 1);
    assert_eq!(sent(&out), vec![&Packet::PubRec(Ack::new(pid(7))), &Packet::PubRec(Ack::new(pid(7)))]);
    out.clear();
    s.handle_packet(Packet::PubRel(Ack::new(pid(7))), now, &mut out).unwrap();
    assert_eq!(sent(&out), vec![&Packet::PubComp(Ack::new(pid(7)))]);
    out.clear();
    // After release the same id starts a new message.
    s.handle_packet(Packet::Publish(publish("a/b", QoS::ExactlyOnce, Some(7))), now, &mut out).unwrap();
    assert_eq!(routed(&out), 1);
}

#[test]
fn pubrel_for_an_unknown_id_gets_pubcomp_packet_identifier_not_found() {
    let (mut s, now) = session(v5_params());
    let mut out = Vec::new();
    s.handle_packet(Packet::PubRel(Ack::new(pid(9))), now, &mut out).unwrap();
    let Packet::PubComp(comp) = sent(&out)[0] else { panic!("expected PUBCOMP") };
    assert_eq!(comp.reason_code, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
}

#[test]
fn exceeding_our_receive_maximum_is_a_protocol_error_0x93() {
    let now = Instant::now();
    let limits = Limits { receive_maximum: 2, ..Limits::default() };
    let mut s = Session::new(Arc::from("c"), Arc::new(limits));
    let mut out = Vec::new();
    s.attach(v5_params(), 0, now, &mut out);
    for id in 1..=2 {
        s.handle_packet(Packet::Publish(publish("t", QoS::ExactlyOnce, Some(id))), now, &mut out).unwrap();
    }
    let err = s.handle_packet(Packet::Publish(publish("t", QoS::ExactlyOnce, Some(3))), now, &mut out);
    assert_eq!(err.unwrap_err().reason, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
}

#[test]
fn outgoing_window_follows_the_clients_receive_maximum_and_queues_the_rest() {
    let (mut s, now) = session(v5_params());
    let mut out = Vec::new();
    for _ in 0..3 {
        s.deliver(delivery("t", QoS::AtLeastOnce), now, &mut out);
    }
    assert_eq!(sent(&out).len(), 2);
    assert_eq!((s.inflight(), s.queued()), (2, 1));
    let first = match sent(&out)[0] {
        Packet::Publish(p) => p.packet_id.unwrap(),
        other => panic!("unexpected {other:?}"),
    };
    out.clear();
    s.handle_packet(Packet::PubAck(Ack::new(first)), now, &mut out).unwrap();
    assert_eq!(sent(&out).len(), 1, "the queued message goes out when a slot frees");
    assert_eq!((s.inflight(), s.queued()), (2, 0));
}

#[test]
fn unacknowledged_messages_are_resent_with_dup_in_order_on_reattach() {
    let (mut s, now) = session(v5_params());
    let mut out = Vec::new();
    s.deliver(delivery("one", QoS::AtLeastOnce), now, &mut out);
    s.deliver(delivery("two", QoS::ExactlyOnce), now, &mut out);
    let two = match sent(&out)[1] {
        Packet::Publish(p) => p.packet_id.unwrap(),
        other => panic!("unexpected {other:?}"),
    };
    out.clear();
    s.handle_packet(Packet::PubRec(Ack::new(two)), now, &mut out).unwrap();
    assert_eq!(sent(&out), vec![&Packet::PubRel(Ack::new(two))]);
    s.detach();
    out.clear();
    s.attach(v5_params(), 60, now, &mut out);
    let packets = sent(&out);
    assert_eq!(packets.len(), 2);
    match packets[0] {
        Packet::Publish(p) => assert!(p.dup && &*p.topic == "one"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(packets[1], &Packet::PubRel(Ack::new(two)));
}

#[test]
fn offline_sessions_queue_qos1_but_drop_qos0_and_respect_the_queue_limit() {
    let now = Instant::now();
    let limits = Limits { max_queued: 2, ..Limits::default() };
    let mut s = Session::new(Arc::from("c"), Arc::new(limits));
    let mut out = Vec::new();
    assert_eq!(s.deliver(delivery("t", QoS::AtMostOnce), now, &mut out), DeliveryOutcome::Dropped);
    assert_eq!(s.deliver(delivery("t", QoS::AtLeastOnce), now, &mut out), DeliveryOutcome::Queued);
    assert_eq!(s.deliver(delivery("t", QoS::AtLeastOnce), now, &mut out), DeliveryOutcome::Queued);
    assert_eq!(s.deliver(delivery("t", QoS::AtLeastOnce), now, &mut out), DeliveryOutcome::Dropped);
    assert_eq!(s.dropped(), 2);
    s.attach(v5_params(), 60, now, &mut out);
    assert_eq!(sent(&out).len(), 2);
}

#[test]
fn a_message_bigger_than_the_clients_maximum_packet_size_is_not_sent() {
    let (mut s, now) = session(LinkParams { max_packet_size: Some(10), ..v5_params() });
    let mut out = Vec::new();
    let outcome = s.deliver(delivery("a/long/topic/name", QoS::AtLeastOnce), now, &mut out);
    assert_eq!(outcome, DeliveryOutcome::Sent);
    assert!(out.is_empty());
    assert_eq!(s.inflight(), 0);
}

#[test]
fn inbound_topic_alias_is_recorded_then_resolved() {
    let (mut s, now) = session(v5_params());
    let mut out = Vec::new();
    let mut first = publish("sensors/1", QoS::AtMostOnce, None);
    first.properties.topic_alias = Some(3);
    s.handle_packet(Packet::Publish(first), now, &mut out).unwrap();
    let mut second = publish("", QoS::AtMostOnce, None);
    second.properties.topic_alias = Some(3);
    s.handle_packet(Packet::Publish(second), now, &mut out).unwrap();
    let topics: Vec<&str> = out
        .iter()
        .filter_map(
            |a| if let Action::Publish { message: m, .. } = a { Some(m.topic.as_str()) } else { None },
        )
        .collect();
    assert_eq!(topics, ["sensors/1", "sensors/1"]);
    let mut unknown = publish("", QoS::AtMostOnce, None);
    unknown.properties.topic_alias = Some(4);
    assert_eq!(
        s.handle_packet(Packet::Publish(unknown), now, &mut out).unwrap_err().reason,
        ReasonCode::PROTOCOL_ERROR
    );
    let mut too_big = publish("x", QoS::AtMostOnce, None);
    too_big.properties.topic_alias = Some(1000);
    assert_eq!(
        s.handle_packet(Packet::Publish(too_big), now, &mut out).unwrap_err().reason,
        ReasonCode::TOPIC_ALIAS_INVALID
    );
}

#[test]
fn outbound_topic_alias_sends_the_topic_once_then_only_the_alias() {
    let (mut s, now) = session(LinkParams { topic_alias_maximum: 5, ..v5_params() });
    let mut out = Vec::new();
    s.deliver(delivery("a/b", QoS::AtMostOnce), now, &mut out);
    s.deliver(delivery("a/b", QoS::AtMostOnce), now, &mut out);
    let p: Vec<(String, Option<u16>)> = sent(&out)
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => (p.topic.to_string(), p.properties.topic_alias),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(p, vec![("a/b".to_string(), Some(1)), (String::new(), Some(1))]);
}

#[test]
fn wildcards_in_a_published_topic_end_the_connection_with_0x90() {
    let (mut s, now) = session(v5_params());
    let err = s.handle_packet(Packet::Publish(publish("a/+", QoS::AtMostOnce, None)), now, &mut Vec::new());
    assert_eq!(err.unwrap_err().reason, ReasonCode::TOPIC_NAME_INVALID);
}

#[test]
fn subscribe_grants_qos_and_rejects_invalid_filters_per_filter() {
    let (mut s, now) = session(v5_params());
    let mut out = Vec::new();
    let opts = |qos| SubscriptionOptions { qos, ..Default::default() };
    let sub = Subscribe {
        packet_id: pid(1),
        subscription_identifier: Some(5),
        user_properties: vec![],
        filters: vec![
            (Arc::from("a/#"), opts(QoS::ExactlyOnce)),
            (Arc::from("a/#/b"), opts(QoS::AtMostOnce)),
        ],
    };
    s.handle_packet(Packet::Subscribe(sub), now, &mut out).unwrap();
    let Action::Subscribe(reqs) = &out[0] else { panic!("expected Subscribe first, got {out:?}") };
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0].is_new);
    assert_eq!(reqs[0].entry.id, Some(5));
    let Action::Send(Packet::SubAck(ack)) = &out[1] else { panic!("expected SUBACK") };
    assert_eq!(ack.reason_codes, vec![ReasonCode::GRANTED_QOS_2, ReasonCode::TOPIC_FILTER_INVALID]);
}

#[test]
fn shared_subscription_with_no_local_is_a_protocol_error() {
    let (mut s, now) = session(v5_params());
    let options = SubscriptionOptions { no_local: true, ..Default::default() };
    let sub = Subscribe {
        packet_id: pid(1),
        subscription_identifier: None,
        user_properties: vec![],
        filters: vec![(Arc::from("$share/g/a"), options)],
    };
    let err = s.handle_packet(Packet::Subscribe(sub), now, &mut Vec::new()).unwrap_err();
    assert_eq!(err.reason, ReasonCode::PROTOCOL_ERROR);
}

#[test]
fn unsubscribe_reports_which_filters_existed() {
    let (mut s, now) = session(v5_params());
    let mut out = Vec::new();
    let sub = Subscribe {
        packet_id: pid(1),
        subscription_identifier: None,
        user_properties: vec![],
        filters: vec![(Arc::from("a"), SubscriptionOptions::default())],
    };
    s.handle_packet(Packet::Subscribe(sub), now, &mut out).unwrap();
    out.clear();
    let unsub = Unsubscribe {
        packet_id: pid(2),
        user_properties: vec![],
        filters: vec![Arc::from("a"), Arc::from("b")],
    };
    s.handle_packet(Packet::Unsubscribe(unsub), now, &mut out).unwrap();
    assert!(matches!(&out[0], Action::Unsubscribe(v) if v.len() == 1));
    let Action::Send(Packet::UnsubAck(ack)) = &out[1] else { panic!("expected UNSUBACK") };
    assert_eq!(ack.reason_codes, vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]);
}

#[test]
fn keep_alive_deadline_is_one_and_a_half_times_the_interval_after_the_last_packet() {
    let (mut s, now) = session(v5_params());
    assert_eq!(s.keep_alive_deadline(), Some(now + Duration::from_secs(15)));
    let later = now + Duration::from_secs(4);
    s.handle_packet(Packet::PingReq, later, &mut Vec::new()).unwrap();
    assert_eq!(s.keep_alive_deadline(), Some(later + Duration::from_secs(15)));
}

#[test]
fn disconnect_may_not_raise_session_expiry_from_zero() {
    let now = Instant::now();
    let mut s = Session::new(Arc::from("c"), Arc::new(Limits::default()));
    s.attach(v5_params(), 0, now, &mut Vec::new());
    let d = Disconnect {
        reason_code: ReasonCode::NORMAL_DISCONNECTION,
        properties: DisconnectProperties { session_expiry_interval: Some(30), ..Default::default() },
    };
    let err = s.handle_packet(Packet::Disconnect(d), now, &mut Vec::new()).unwrap_err();
    assert_eq!(err.reason, ReasonCode::PROTOCOL_ERROR);
}

#[test]
fn expired_messages_are_dropped_and_the_remaining_interval_is_forwarded() {
    let (mut s, now) = session(v5_params());
    let mut d = delivery("t", QoS::AtMostOnce);
    Arc::make_mut(&mut d.message).expires_at = Some(now + Duration::from_millis(2500));
    let mut out = Vec::new();
    s.deliver(d.clone(), now + Duration::from_secs(1), &mut out);
    match sent(&out)[0] {
        Packet::Publish(p) => assert_eq!(p.properties.message_expiry_interval, Some(2)),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(s.deliver(d, now + Duration::from_secs(3), &mut out), DeliveryOutcome::Dropped);
}

#[test]
fn refused_filters_get_a_reason_string_unless_the_client_declined_problem_information() {
    for (asked, expected) in [(true, Some("Topic Filter invalid")), (false, None)] {
        let (mut s, now) = session(LinkParams { request_problem_information: asked, ..v5_params() });
        let mut out = Vec::new();
        let sub = Subscribe {
            packet_id: pid(1),
            subscription_identifier: None,
            user_properties: vec![],
            filters: vec![(Arc::from("a/#/b"), SubscriptionOptions::default())],
        };
        s.handle_packet(Packet::Subscribe(sub), now, &mut out).unwrap();
        let Some(Action::Send(Packet::SubAck(ack))) = out.last() else {
            panic!("expected SUBACK, got {out:?}")
        };
        assert_eq!(ack.reason_codes, vec![ReasonCode::TOPIC_FILTER_INVALID]);
        assert_eq!(ack.properties.reason_string.as_deref(), expected, "request problem information {asked}");
    }
}

#[test]
fn reason_string_is_left_out_when_it_would_exceed_the_clients_maximum_packet_size() {
    let filters = || vec![(Arc::from("a/#/b"), SubscriptionOptions::default())];
    // A SUBACK with one code is 6 bytes; "Topic Filter invalid" adds 23 more.
    for (max, expected) in [(64, Some("Topic Filter invalid")), (16, None)] {
        let (mut s, now) = session(LinkParams { max_packet_size: Some(max), ..v5_params() });
        let mut out = Vec::new();
        let sub = Subscribe {
            packet_id: pid(1),
            subscription_identifier: None,
            user_properties: vec![],
            filters: filters(),
        };
        s.handle_packet(Packet::Subscribe(sub), now, &mut out).unwrap();
        let Some(Action::Send(Packet::SubAck(ack))) = out.last() else {
            panic!("expected SUBACK, got {out:?}")
        };
        assert_eq!(ack.reason_codes, vec![ReasonCode::TOPIC_FILTER_INVALID]);
        assert_eq!(ack.properties.reason_string.as_deref(), expected, "maximum packet size {max}");
    }
}

fn stored(topic: &str, qos: QoS, seq: u64) -> Delivery {
    Delivery { stored: Some(seq), ..delivery(topic, qos) }
}

fn persisted(out: &[Action]) -> Vec<Persist> {
    out.iter().filter_map(|a| if let Action::Persist(p) = a { Some(*p) } else { None }).collect()
}

#[test]
fn a_stored_qos2_delivery_reports_each_step_before_the_packet_it_allows() {
    let (mut s, now) = session(v5_params());
    let mut out = Vec::new();
    s.deliver(stored("t", QoS::ExactlyOnce, 7), now, &mut out);
    let id = match &out[..] {
        [Action::Persist(Persist::Sent { seq: 7, id, exactly_once: true }), Action::Send(Packet::Publish(p))] =>
        {
            assert_eq!(p.packet_id, Some(*id));
            *id
        }
        other => panic!("unexpected {other:?}"),
    };
    out.clear();
    s.handle_packet(Packet::PubRec(Ack::new(id)), now, &mut out).unwrap();
    assert!(matches!(
        &out[..],
        [Action::Persist(Persist::Released { seq: 7, .. }), Action::Send(Packet::PubRel(_))]
    ));
    out.clear();
    s.handle_packet(Packet::PubComp(Ack::new(id)), now, &mut out).unwrap();
    assert_eq!(persisted(&out), [Persist::Done { seq: 7 }]);
}

#[test]
fn stored_deliveries_report_done_when_acknowledged_expired_or_dropped() {
    let (mut s, now) = session(v5_params());
    let mut out = Vec::new();
    s.deliver(stored("a", QoS::AtLeastOnce, 1), now, &mut out);
    let Some(Packet::Publish(p)) = sent(&out).first().copied().cloned() else { panic!("no publish") };
    out.clear();
    s.handle_packet(Packet::PubAck(Ack::new(p.packet_id.unwrap())), now, &mut out).unwrap();
    assert_eq!(persisted(&out), [Persist::Done { seq: 1 }]);

    let mut expired = stored("b", QoS::AtLeastOnce, 2);
    let mut message = (*expired.message).clone();
    message.expires_at = Some(now);
    expired.message = Arc::new(message);
    out.clear();
    assert_eq!(s.deliver(expired, now, &mut out), DeliveryOutcome::Dropped);
    assert_eq!(persisted(&out), [Persist::Done { seq: 2 }]);

    // Not stored: nothing to report.
    out.clear();
    s.deliver(delivery("c", QoS::AtLeastOnce), now, &mut out);
    assert!(persisted(&out).is_empty());
}

#[test]
fn pubrel_reports_the_released_incoming_id_before_pubcomp() {
    let (mut s, now) = session(v5_params());
    let mut out = Vec::new();
    s.handle_packet(Packet::Publish(publish("t", QoS::ExactlyOnce, Some(9))), now, &mut out).unwrap();
    assert!(matches!(&out[..], [Action::Publish { ack: Some(Packet::PubRec(_)), .. }]));
    out.clear();
    s.handle_packet(Packet::PubRel(Ack::new(pid(9))), now, &mut out).unwrap();
    assert!(matches!(
        &out[..],
        [Action::Persist(Persist::IncomingReleased { .. }), Action::Send(Packet::PubComp(c))]
            if c.reason_code == ReasonCode::SUCCESS
    ));
}

#[test]
fn a_restored_session_resends_in_flight_messages_with_dup_and_keeps_exactly_once_state() {
    let now = Instant::now();
    let entry = SubscriptionEntry {
        subscription: parse_subscription("a/#").unwrap(),
        options: SubscriptionOptions { qos: QoS::ExactlyOnce, ..SubscriptionOptions::default() },
        id: Some(3),
    };
    let mut s = Session::restore(
        Arc::from("c1"),
        Arc::new(Limits::default()),
        300,
        [(Arc::from("a/#"), entry)],
        [
            (pid(5), false, stored("one", QoS::AtLeastOnce, 1)),
            (pid(6), true, stored("two", QoS::ExactlyOnce, 2)),
        ],
        [stored("three", QoS::AtLeastOnce, 3)],
        [11],
    );
    assert_eq!(s.subscriptions().len(), 1);
    assert_eq!((s.inflight(), s.queued()), (2, 1));
    let mut out = Vec::new();
    s.attach(LinkParams { receive_maximum: 10, ..v5_params() }, 300, now, &mut out);
    let packets = sent(&out);
    match packets[..] {
        [Packet::Publish(one), Packet::PubRel(rel), Packet::Publish(three)] => {
            assert!(one.dup && one.packet_id == Some(pid(5)));
            assert_eq!(rel.packet_id, pid(6));
            assert!(!three.dup);
            assert!(three.packet_id.is_some_and(|id| id != pid(5) && id != pid(6)));
        }
        _ => panic!("unexpected {packets:?}"),
    }
    // The unreleased incoming id still deduplicates a resend.
    out.clear();
    s.handle_packet(Packet::Publish(publish("t", QoS::ExactlyOnce, Some(11))), now, &mut out).unwrap();
    assert_eq!(routed(&out), 0);
    assert!(matches!(sent(&out)[..], [Packet::PubRec(_)]));
}

/// Grants topics and filters under `ok/`.
#[derive(Debug)]
struct OnlyOk;

impl Permit for OnlyOk {
    fn may_publish(&self, topic: &TopicName, _size: usize) -> bool {
        topic.as_str().starts_with("ok/")
    }
    fn may_subscribe(&self, subscription: &Subscription) -> bool {
        subscription.filter().starts_with("ok/")
    }
}

#[test]
fn a_refused_publish_is_not_routed_and_mqtt5_hears_0x87() {
    let (mut s, now) = session(v5_params());
    s.set_permit(Some(Arc::new(OnlyOk)));
    let mut out = Vec::new();
    s.handle_packet(Packet::Publish(publish("ok/1", QoS::AtLeastOnce, Some(1))), now, &mut out).unwrap();
    assert_eq!(routed(&out), 1);
    out.clear();
    for (qos, id) in [(QoS::AtMostOnce, None), (QoS::AtLeastOnce, Some(2)), (QoS::ExactlyOnce, Some(3))] {
        s.handle_packet(Packet::Publish(publish("no/1", qos, id)), now, &mut out).unwrap();
    }
    assert_eq!(routed(&out), 0);
    let codes: Vec<_> = sent(&out)
        .into_iter()
        .map(|p| match p {
            Packet::PubAck(a) => ("PUBACK", a.reason_code),
            Packet::PubRec(a) => ("PUBREC", a.reason_code),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(codes, [("PUBACK", ReasonCode::NOT_AUTHORIZED), ("PUBREC", ReasonCode::NOT_AUTHORIZED)]);
    assert_eq!(s.incoming_qos2().count(), 0, "a refused QoS 2 keeps no packet id");
}

#[test]
fn a_refused_publish_from_mqtt311_is_acknowledged_as_usual_but_not_routed() {
    let (mut s, now) = session(LinkParams { version: ProtocolVersion::V311, ..v5_params() });
    s.set_permit(Some(Arc::new(OnlyOk)));
    let mut out = Vec::new();
    s.handle_packet(Packet::Publish(publish("no/1", QoS::AtLeastOnce, Some(2))), now, &mut out).unwrap();
    s.handle_packet(Packet::Publish(publish("no/1", QoS::ExactlyOnce, Some(3))), now, &mut out).unwrap();
    assert_eq!(routed(&out), 0);
    assert_eq!(sent(&out), [&Packet::PubAck(Ack::new(pid(2))), &Packet::PubRec(Ack::new(pid(3)))]);
    out.clear();
    s.handle_packet(Packet::PubRel(Ack::new(pid(3))), now, &mut out).unwrap();
    assert_eq!(sent(&out), [&Packet::PubComp(Ack::new(pid(3)))]);
}

#[test]
fn a_refused_filter_gets_0x87_and_is_not_subscribed() {
    let (mut s, now) = session(v5_params());
    s.set_permit(Some(Arc::new(OnlyOk)));
    let mut out = Vec::new();
    let sub = Subscribe {
        packet_id: pid(1),
        subscription_identifier: None,
        user_properties: vec![],
        filters: vec![("ok/#".into(), Default::default()), ("no/#".into(), Default::default())],
    };
    s.handle_packet(Packet::Subscribe(sub), now, &mut out).unwrap();
    let Some(Packet::SubAck(ack)) = sent(&out).into_iter().next() else { panic!("{out:?}") };
    assert_eq!(ack.reason_codes, [ReasonCode::SUCCESS, ReasonCode::NOT_AUTHORIZED]);
    assert_eq!(s.subscriptions().keys().map(|k| &**k).collect::<Vec<_>>(), ["ok/#"]);
}

fn subscribe_to(s: &mut Session, filters: &[&str], now: Instant) {
    let mut out = Vec::new();
    let filters = filters
        .iter()
        .map(|f| {
            (Arc::from(*f), SubscriptionOptions { qos: QoS::AtLeastOnce, ..SubscriptionOptions::default() })
        })
        .collect();
    let sub =
        Subscribe { packet_id: pid(99), subscription_identifier: None, user_properties: vec![], filters };
    s.handle_packet(Packet::Subscribe(sub), now, &mut out).unwrap();
}

fn published_topics(out: &[Action]) -> Vec<String> {
    sent(out)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.topic.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_isolated_session_holds_what_is_outside_its_namespace_and_release_sends_it_in_order() {
    let (mut s, now) = session(v5_params());
    subscribe_to(&mut s, &["plant/#", "$quarantine/c1/#"], now);
    // Offline: two messages queue up.
    s.detach();
    let mut out = Vec::new();
    s.deliver(delivery("plant/a", QoS::AtLeastOnce), now, &mut out);
    s.deliver(delivery("plant/b", QoS::AtLeastOnce), now, &mut out);
    let removed = s.isolate(Arc::from("$quarantine/c1/"));
    assert_eq!(removed.iter().map(Subscription::filter).collect::<Vec<_>>(), ["plant/#"]);
    assert_eq!(s.subscriptions().keys().map(|k| &**k).collect::<Vec<_>>(), ["$quarantine/c1/#"]);
    assert_eq!(s.suspended().map(|(f, _)| &**f).collect::<Vec<_>>(), ["plant/#"]);
    assert_eq!((s.queued(), s.held()), (0, 2));

    // It comes back while isolated: nothing held is sent; its repair command is.
    s.attach(v5_params(), 60, now, &mut out);
    assert!(published_topics(&out).is_empty(), "held messages must not be sent: {out:?}");
    s.deliver(delivery("plant/c", QoS::AtLeastOnce), now, &mut out);
    s.deliver(delivery("$quarantine/c1/cmd", QoS::AtLeastOnce), now, &mut out);
    assert_eq!(published_topics(&out), ["$quarantine/c1/cmd"]);
    assert_eq!(s.held(), 3);
    out.clear();

    // Released: the subscription comes back without retained messages, held ones go out in order.
    let restored = s.release(now, &mut out);
    assert_eq!(restored.len(), 1);
    assert_eq!(&*restored[0].filter, "plant/#");
    assert_eq!(restored[0].entry.options.retain_handling, RetainHandling::DoNotSend);
    assert!(s.subscriptions().contains_key("plant/#") && !s.is_isolated());
    // The window is 2 and one repair command is in flight: one goes now, the rest as acks come.
    assert_eq!(published_topics(&out), ["plant/a"]);
    assert_eq!(s.queued(), 2);
}

#[test]
fn held_messages_count_against_the_queue_limit() {
    let now = Instant::now();
    let limits = Limits { max_queued: 2, ..Limits::default() };
    let mut s = Session::new(Arc::from("c1"), Arc::new(limits));
    s.isolate(Arc::from("$quarantine/c1/"));
    let mut out = Vec::new();
    for topic in ["a", "b", "c"] {
        s.deliver(delivery(topic, QoS::AtLeastOnce), now, &mut out);
    }
    assert_eq!((s.held(), s.dropped()), (2, 1));
}

fn observed(out: &[Action]) -> Vec<(&str, &str)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Delivered { message, .. } => Some((message.topic.as_str(), "delivered")),
            Action::Dropped { message, reason } => Some((message.topic.as_str(), reason.as_str())),
            _ => None,
        })
        .collect()
}

#[test]
fn an_observed_session_reports_each_first_delivery_and_each_drop_with_its_reason() {
    let (mut s, now) = session(v5_params());
    let mut out = Vec::new();
    s.deliver(delivery("quiet/1", QoS::AtMostOnce), now, &mut out);
    assert!(observed(&out).is_empty(), "nothing is reported unless observed");
    s.observe(true);
    out.clear();
    // The window is 2: the third QoS 1 waits, and is reported when it goes out after a PUBACK.
    for t in ["a/1", "a/2", "a/3"] {
        s.deliver(delivery(t, QoS::AtLeastOnce), now, &mut out);
    }
    assert_eq!(observed(&out), [("a/1", "delivered"), ("a/2", "delivered")]);
    out.clear();
    s.handle_packet(Packet::PubAck(Ack::new(pid(1))), now, &mut out).unwrap();
    assert_eq!(observed(&out), [("a/3", "delivered")]);
    out.clear();
    let mut expired = delivery("old/1", QoS::AtLeastOnce);
    let mut message = (*expired.message).clone();
    message.expires_at = Some(now);
    expired.message = Arc::new(message);
    s.deliver(expired, now + Duration::from_secs(1), &mut out);
    // A resend on reattach is not a new delivery.
    s.detach();
    s.deliver(delivery("off/1", QoS::AtMostOnce), now, &mut out);
    s.attach(v5_params(), 60, now, &mut out);
    assert_eq!(observed(&out), [("old/1", "expired"), ("off/1", "offline")]);
    assert_eq!(sent(&out).len(), 2, "the two unacknowledged messages are resent");
}
