//! Router fan-out: one PUBLISH matched and delivered to N subscribers' mailboxes.

use std::hint::black_box;
use std::ops::ControlFlow;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use m2m_codec::{QoS, SubscriptionOptions};
use m2m_router::{ClientLink, Command, ConnectRequest, LinkFlow, Mailbox, Metrics, Router, RouterConfig};
use m2m_session::{Message, SubscribeRequest, SubscriptionEntry};
use m2m_topic::{parse_subscription, TopicName};
use tokio::sync::oneshot;

fn connect(router: &mut Router, id: &str) -> (u64, Arc<Mailbox>) {
    let mailbox = Arc::new(Mailbox::new(1 << 20));
    let (kick, _kick_rx) = oneshot::channel();
    let (reply, mut reply_rx) = oneshot::channel();
    let link = ClientLink { conn_id: 1, mailbox: mailbox.clone(), kick, flow: Arc::new(LinkFlow::default()) };
    let req =
        ConnectRequest { client_id: Arc::from(id), clean_start: true, expiry: 0, v5: false, link, reply };
    assert_eq!(router.handle(Command::Connect(Box::new(req))), ControlFlow::Continue(()));
    let key = reply_rx.try_recv().expect("router replies at once").key;
    (key, mailbox)
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("router/fanout");
    for subscribers in [1usize, 50] {
        let (mut router, _handle) = Router::new(RouterConfig::default(), Arc::new(Metrics::default()));
        let mut mailboxes = Vec::new();
        for i in 0..subscribers {
            let (key, mailbox) = connect(&mut router, &format!("sub-{i}"));
            let entry = SubscriptionEntry {
                subscription: parse_subscription("factory/+/temp").expect("valid filter"),
                options: SubscriptionOptions { qos: QoS::AtMostOnce, ..Default::default() },
                id: None,
            };
            let requests =
                vec![SubscribeRequest { filter: Arc::from("factory/+/temp"), entry, is_new: true }];
            let _ = router.handle(Command::Subscribe { key, requests });
            mailboxes.push(mailbox);
        }
        let topic = TopicName::try_from("factory/line7/temp").expect("valid topic");
        let message = Arc::new(Message::new(topic, Bytes::from_static(&[b'x'; 64]), QoS::AtMostOnce, false));
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(format!("qos0_64b_to_{subscribers}"), |b| {
            b.iter(|| {
                let _ = router.handle(Command::Publish {
                    message: black_box(message.clone()),
                    from: None,
                    ack: None,
                });
                for m in &mailboxes {
                    black_box(m.take(usize::MAX));
                }
            })
        });
    }
    group.finish();
}

// What `criterion_group!`/`criterion_main!` expand to, written out because the macros generate an
// undocumented `pub fn`, which the workspace's `missing_docs` lint refuses.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    fanout(&mut c);
    c.final_summary();
}
