//! Matching throughput: one topic name against 10 000 subscriptions, and one filter against 10 000
//! retained topics. The brute-force variants show what the trees save.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput};
use m2m_topic::{parse_subscription, Subscription, SubscriptionTrie, TopicFilter, TopicName, TopicTree};

const FILTERS: usize = 10_000;
const METRICS: [&str; 4] = ["temp", "humidity", "power", "status"];

/// A fleet-like mix: mostly exact per-device filters, some per-device wildcards, some site-wide ones
/// (many clients on few filters) and a few shared groups.
fn subscriptions() -> Vec<(Subscription, Arc<str>)> {
    (0..FILTERS)
        .map(|i| {
            let (site, metric) = (i % 50, METRICS[i % METRICS.len()]);
            let filter = match i % 10 {
                0..=4 => format!("site{site}/device{i}/telemetry/{metric}"),
                5 => format!("site{site}/device{i}/+"),
                6 => format!("site{site}/device{i}/#"),
                7 => format!("site{site}/+/telemetry/{metric}"),
                8 => format!("+/device{i}/status"),
                _ => format!("$share/workers{}/site{site}/+/telemetry/#", i % 3),
            };
            let sub = parse_subscription(&filter).expect("valid benchmark filter");
            (sub, Arc::from(format!("client-{i}")))
        })
        .collect()
}

fn match_topic(c: &mut Criterion) {
    let subs = subscriptions();
    let mut trie = SubscriptionTrie::new();
    for (sub, client) in &subs {
        trie.insert(sub, Arc::clone(client), 1u8);
    }
    let filters: Vec<TopicFilter> = subs.iter().map(|(sub, _)| sub.filter().clone()).collect();
    let hit = TopicName::try_from("site7/device1007/telemetry/power").expect("valid topic");
    let miss = TopicName::try_from("site7/device99999/config").expect("valid topic");

    let mut group = c.benchmark_group("topic/match_10k_filters");
    group.throughput(Throughput::Elements(FILTERS as u64));
    for (label, topic) in [("hit", &hit), ("miss", &miss)] {
        group.bench_function(format!("trie_{label}"), |b| {
            b.iter(|| {
                let (mut plain, mut shared) = (0usize, 0usize);
                trie.match_topic(
                    black_box(topic),
                    |_client, _qos| plain += 1,
                    |_group, members| shared += members.len().min(1),
                );
                plain + shared
            })
        });
        group.bench_function(format!("brute_force_{label}"), |b| {
            b.iter(|| filters.iter().filter(|f| f.matches(black_box(topic))).count())
        });
    }
    group.finish();
}

fn match_retained(c: &mut Criterion) {
    let mut tree = TopicTree::new();
    for i in 0..FILTERS {
        let topic = format!("site{}/device{i}/telemetry/{}", i % 50, METRICS[i % METRICS.len()]);
        tree.insert(&TopicName::try_from(topic).expect("valid topic"), i);
    }
    let filter = TopicFilter::try_from("site7/+/telemetry/temp").expect("valid filter");

    let mut group = c.benchmark_group("topic/retained_10k_topics");
    group.throughput(Throughput::Elements(FILTERS as u64));
    group.bench_function("site_wildcard", |b| {
        b.iter(|| {
            let mut found = 0usize;
            tree.match_filter(black_box(&filter), |_topic, _value| found += 1);
            found
        })
    });
    group.finish();
}

// What `criterion_group!`/`criterion_main!` expand to, minus the undocumented `pub fn` they generate.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    match_topic(&mut c);
    match_retained(&mut c);
    c.final_summary();
}
