use super::*;
use bytes::Bytes;

fn retained(topic: &str, expires_at: Option<Instant>) -> Command {
    let mut m =
        Message::new(TopicName::try_from(topic).unwrap(), Bytes::from_static(b"v"), QoS::AtMostOnce, true);
    m.expires_at = expires_at;
    Command::Publish { message: Arc::new(m), from: None, ack: None }
}

#[test]
fn expired_retained_messages_are_swept_and_live_ones_kept() {
    let (mut router, _handle) = Router::new(RouterConfig::default(), Arc::new(Metrics::default()));
    let now = Instant::now();
    let _ = router.handle(retained("a/1", Some(now + Duration::from_secs(1))));
    let _ = router.handle(retained("a/2", Some(now + Duration::from_secs(100))));
    let _ = router.handle(retained("a/3", None));
    assert_eq!(router.stats().retained, 3);
    router.sweep_expired_retained(now + Duration::from_secs(2));
    assert_eq!(router.stats().retained, 2);
    assert!(router.retained.get(&TopicName::try_from("a/1").unwrap()).is_none());
}

#[test]
fn an_empty_retained_payload_deletes_the_retained_message() {
    let (mut router, _handle) = Router::new(RouterConfig::default(), Arc::new(Metrics::default()));
    let _ = router.handle(retained("a/1", None));
    let empty = Message::new(TopicName::try_from("a/1").unwrap(), Bytes::new(), QoS::AtMostOnce, true);
    let _ = router.handle(Command::Publish { message: Arc::new(empty), from: None, ack: None });
    assert_eq!(router.stats().retained, 0);
}
