//! Random sequences of writes, with reopens in between, agree with a `BTreeMap` model.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use m2m_codec::{QoS, SubscriptionOptions};
use m2m_session::{Delivery, Message, SubscriptionEntry};
use m2m_store::{Batch, Phase, Recovered, SessionRecord, Store, WillRecord};
use m2m_topic::parse_subscription;
use proptest::prelude::*;

use crate::support::*;

const CLIENTS: [&str; 4] = ["a", "ab", "b", "ü"];
const TOPICS: [&str; 3] = ["t", "t/1", "t/2"];
const FILTERS: [&str; 3] = ["t/#", "$share/g/t/+", "+"];

#[derive(Debug, Clone)]
enum Op {
    PutSession { client: usize, expiry: u32, subs: u8 },
    RemoveSession(usize),
    PutDelivery { client: usize, seq: u64, message: usize, qos: u8, ids: Vec<u32> },
    SetFlight { client: usize, seq: u64, packet_id: u16, released: bool },
    RemoveDelivery { client: usize, seq: u64 },
    PutIncoming { client: usize, packet_id: u16 },
    RemoveIncoming { client: usize, packet_id: u16 },
    PutRetained { message: usize },
    RemoveRetained { topic: usize },
    PutWill { client: usize, message: usize, delay: u32, publish_at: Option<u64> },
    RemoveWill(usize),
    SetAlive(u64),
}

#[derive(Debug, Clone)]
enum Step {
    /// These operations, committed as one batch.
    Commit(Vec<Op>),
    /// Close the store and open it again.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let client = 0..CLIENTS.len();
    let seq = 1u64..6;
    let pid = 1u16..4;
    prop_oneof![
        (client.clone(), any::<u32>(), any::<u8>()).prop_map(|(client, expiry, subs)| Op::PutSession {
            client,
            expiry,
            subs
        }),
        client.clone().prop_map(Op::RemoveSession),
        (client.clone(), seq.clone(), 0..6usize, 0..3u8, prop::collection::vec(1u32..300, 0..3))
            .prop_map(|(client, seq, message, qos, ids)| Op::PutDelivery { client, seq, message, qos, ids }),
        (client.clone(), seq.clone(), pid.clone(), any::<bool>()).prop_map(
            |(client, seq, packet_id, released)| Op::SetFlight { client, seq, packet_id, released }
        ),
        (client.clone(), seq).prop_map(|(client, seq)| Op::RemoveDelivery { client, seq }),
        (client.clone(), pid.clone()).prop_map(|(client, packet_id)| Op::PutIncoming { client, packet_id }),
        (client.clone(), pid).prop_map(|(client, packet_id)| Op::RemoveIncoming { client, packet_id }),
        (0..6usize).prop_map(|message| Op::PutRetained { message }),
        (0..TOPICS.len()).prop_map(|topic| Op::RemoveRetained { topic }),
        (client.clone(), 0..6usize, any::<u32>(), prop::option::of(any::<u64>())).prop_map(
            |(client, message, delay, publish_at)| Op::PutWill { client, message, delay, publish_at }
        ),
        client.prop_map(Op::RemoveWill),
        any::<u64>().prop_map(Op::SetAlive),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        6 => prop::collection::vec(op(), 1..4).prop_map(Step::Commit),
        1 => Just(Step::Reopen),
    ];
    prop::collection::vec(step, 1..40)
}

/// Six messages over the three topics, with and without properties (none expires, so they compare
/// exactly after a reopen).
fn message(i: usize) -> Message {
    let t = TOPICS[i % TOPICS.len()];
    if i < TOPICS.len() {
        plain_message(t, b"plain")
    } else {
        let mut m = full_message(t, Instant::now(), std::time::Duration::ZERO);
        m.expires_at = None;
        m
    }
}

fn session(client: usize, expiry: u32, subs: u8) -> SessionRecord {
    let subscriptions = FILTERS
        .iter()
        .enumerate()
        .filter(|(i, _)| subs & (1 << i) != 0)
        .map(|(i, f)| {
            let options =
                SubscriptionOptions { qos: QoS::from_u8((subs >> 6) & 1).unwrap(), ..Default::default() };
            let id = (subs & 0x20 != 0).then_some(i as u32 + 1);
            (
                Arc::<str>::from(*f),
                SubscriptionEntry { subscription: parse_subscription(f).unwrap(), options, id },
            )
        })
        .collect();
    SessionRecord {
        client_id: CLIENTS[client].into(),
        expiry_interval: expiry,
        disconnected_at: expiry.is_multiple_of(2).then_some(u64::from(expiry) * 1000),
        subscriptions,
    }
}

/// What the store should hold, keyed as on disk.
#[derive(Default)]
struct Model {
    sessions: BTreeMap<String, SessionRecord>,
    deliveries: BTreeMap<(String, u64), Delivery>,
    flight: BTreeMap<(String, u64), (u16, Phase)>,
    incoming: BTreeSet<(String, u16)>,
    retained: BTreeMap<String, Message>,
    wills: BTreeMap<String, WillRecord>,
    alive_at: Option<u64>,
}

impl Model {
    fn apply(&mut self, op: &Op, batch: &mut Batch) {
        let now = Instant::now();
        let c = |i: usize| CLIENTS[i].to_owned();
        match op {
            Op::PutSession { client, expiry, subs } => {
                let record = session(*client, *expiry, *subs);
                batch.put_session(&record);
                self.sessions.insert(c(*client), record);
            }
            Op::RemoveSession(client) => {
                batch.remove_session(CLIENTS[*client]);
                let id = c(*client);
                self.sessions.remove(&id);
                self.wills.remove(&id);
                self.deliveries.retain(|(k, _), _| *k != id);
                self.flight.retain(|(k, _), _| *k != id);
                self.incoming.retain(|(k, _)| *k != id);
            }
            Op::PutDelivery { client, seq, message: m, qos, ids } => {
                let d = Delivery {
                    message: Arc::new(message(*m)),
                    qos: QoS::from_u8(*qos).unwrap(),
                    retain: m % 2 == 0,
                    subscription_ids: ids.clone(),
                    stored: None,
                };
                batch.put_delivery(CLIENTS[*client], *seq, &d, now);
                self.deliveries.insert((c(*client), *seq), Delivery { stored: Some(*seq), ..d });
            }
            Op::SetFlight { client, seq, packet_id, released } => {
                let phase = if *released { Phase::Released } else { Phase::Sent };
                batch.set_flight(CLIENTS[*client], *seq, *packet_id, phase);
                self.flight.insert((c(*client), *seq), (*packet_id, phase));
            }
            Op::RemoveDelivery { client, seq } => {
                batch.remove_delivery(CLIENTS[*client], *seq);
                self.deliveries.remove(&(c(*client), *seq));
                self.flight.remove(&(c(*client), *seq));
            }
            Op::PutIncoming { client, packet_id } => {
                batch.put_incoming(CLIENTS[*client], *packet_id);
                self.incoming.insert((c(*client), *packet_id));
            }
            Op::RemoveIncoming { client, packet_id } => {
                batch.remove_incoming(CLIENTS[*client], *packet_id);
                self.incoming.remove(&(c(*client), *packet_id));
            }
            Op::PutRetained { message: m } => {
                let m = message(*m);
                batch.put_retained(&m, now);
                self.retained.insert(m.topic.as_str().to_owned(), m);
            }
            Op::RemoveRetained { topic } => {
                batch.remove_retained(TOPICS[*topic]);
                self.retained.remove(TOPICS[*topic]);
            }
            Op::PutWill { client, message: m, delay, publish_at } => {
                let will = WillRecord { message: message(*m), delay: *delay, publish_at: *publish_at };
                batch.put_will(CLIENTS[*client], &will, now);
                self.wills.insert(c(*client), will);
            }
            Op::RemoveWill(client) => {
                batch.remove_will(CLIENTS[*client]);
                self.wills.remove(&c(*client));
            }
            Op::SetAlive(ms) => {
                batch.set_alive(*ms);
                self.alive_at = Some(*ms);
            }
        }
    }

    /// What a reopen should report, after which the store has deleted the orphans; the model does too.
    fn reopen(&mut self) -> Expected {
        let next_seq = self.deliveries.keys().map(|(_, seq)| seq + 1).max().unwrap_or(1);
        let sessions = &self.sessions;
        self.deliveries.retain(|(c, _), _| sessions.contains_key(c));
        self.incoming.retain(|(c, _)| sessions.contains_key(c));
        let deliveries = &self.deliveries;
        self.flight.retain(|k, _| deliveries.contains_key(k));
        let sessions = self
            .sessions
            .iter()
            .map(|(c, record)| {
                let deliveries = self
                    .deliveries
                    .range((c.clone(), 0)..=(c.clone(), u64::MAX))
                    .map(|(k, d)| (k.1, d.clone(), self.flight.get(k).copied()))
                    .collect();
                let incoming =
                    self.incoming.range((c.clone(), 0)..=(c.clone(), u16::MAX)).map(|k| k.1).collect();
                (record.clone(), deliveries, incoming)
            })
            .collect();
        Expected {
            sessions,
            retained: self.retained.values().cloned().collect(),
            wills: self.wills.iter().map(|(c, w)| (c.as_str().into(), w.clone())).collect(),
            next_seq,
            alive_at: self.alive_at,
        }
    }
}

type ExpectedSession = (SessionRecord, Vec<(u64, Delivery, Option<(u16, Phase)>)>, Vec<u16>);

#[derive(Debug, PartialEq)]
struct Expected {
    sessions: Vec<ExpectedSession>,
    retained: Vec<Message>,
    wills: Vec<(Arc<str>, WillRecord)>,
    next_seq: u64,
    alive_at: Option<u64>,
}

fn observed(r: Recovered) -> Expected {
    assert_eq!(r.dropped_expired, 0);
    Expected {
        sessions: r
            .sessions
            .into_iter()
            .map(|s| {
                let deliveries = s.deliveries.into_iter().map(|d| (d.seq, d.delivery, d.flight)).collect();
                (s.record, deliveries, s.incoming)
            })
            .collect(),
        retained: r.retained,
        wills: r.wills,
        next_seq: r.next_seq,
        alive_at: r.alive_at,
    }
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::default();
    let (mut store, _): (Store, _) = open(dir.path());
    for step in steps.into_iter().chain([Step::Reopen]) {
        match step {
            Step::Commit(ops) => {
                let mut batch = store.batch();
                for op in &ops {
                    model.apply(op, &mut batch);
                }
                batch.commit().unwrap();
            }
            Step::Reopen => {
                let (reopened, recovered) = reopen(store);
                store = reopened;
                prop_assert_eq!(observed(recovered), model.reopen());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn store_agrees_with_a_btreemap_model_across_reopens(steps in steps()) {
        run(steps)?;
    }
}
