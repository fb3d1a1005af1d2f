//! Check latency against a fleet-sized rule set: 10 000 devices with 10 rules each (100 000 rules),
//! 100 groups with 5 rules each, every device in 2 groups, and 4 global rules. A check looks up the
//! device and its groups and scans at most their 20 rules plus the global ones.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use m2m_access::{Acl, Permission, Rule, Who};
use m2m_topic::{parse_subscription, TopicName};

const DEVICES: usize = 10_000;
const GROUPS: usize = 100;

fn rule(line: &str) -> Rule {
    line.parse().expect("valid benchmark rule")
}

fn device_id(i: usize) -> String {
    format!("dev-{i}")
}

fn device_groups(i: usize) -> [Arc<str>; 2] {
    [Arc::from(format!("group-{}", i % GROUPS)), Arc::from(format!("group-{}", (i + 37) % GROUPS))]
}

/// Device rules mix placeholders and per-device literal topics, as a registry would generate them.
fn device_rules(i: usize) -> Vec<Rule> {
    let site = i % 50;
    vec![
        rule("allow publish devices/%c/telemetry/#"),
        rule("allow subscribe devices/%c/commands/#"),
        rule("deny publish devices/%c/config"),
        rule("allow both devices/%c/state/+"),
        rule(&format!("allow publish sites/site{site}/dev-{i}/+")),
        rule(&format!("allow subscribe sites/site{site}/dev-{i}/replies/#")),
        rule(&format!("allow publish fleet/dev-{i}/firmware/status")),
        rule(&format!("deny subscribe fleet/dev-{i}/firmware/keys")),
        rule("allow both users/%u/dev/%c/#"),
        rule(&format!("allow subscribe fleet/dev-{i}/firmware/+")),
    ]
}

fn group_rules(g: usize) -> Vec<Rule> {
    vec![
        rule(&format!("deny publish sites/site{g}/locked/#")),
        rule(&format!("allow subscribe sites/site{g}/+/alerts")),
        rule(&format!("allow publish group-{g}/+/data")),
        rule(&format!("allow subscribe group-{g}/#")),
        rule(&format!("deny subscribe group-{g}/private/#")),
    ]
}

fn fleet() -> Acl {
    let mut acl = Acl::new(Permission::Deny);
    for i in 0..DEVICES {
        acl.set_device_rules(device_id(i), device_rules(i));
    }
    for g in 0..GROUPS {
        acl.set_group_rules(format!("group-{g}"), group_rules(g));
    }
    acl.set_global_rules([
        rule("deny both $SYS/#"),
        rule("allow subscribe broadcast/#"),
        rule("deny publish admin/#"),
        rule("allow subscribe $SYS/broker/uptime"),
    ]);
    acl
}

fn checks(c: &mut Criterion) {
    let acl = fleet();
    assert_eq!(acl.rule_count(), DEVICES * 10 + GROUPS * 5 + 4);

    let i = 4242;
    let (client, groups) = (device_id(i), device_groups(i));
    let who = Who::new(&client).with_username("ops").with_device(&client).with_groups(&groups);
    let topic = |s: &str| TopicName::try_from(s).expect("valid benchmark topic");
    let sub = |s: &str| parse_subscription(s).expect("valid benchmark filter");

    let allowed_topic = topic("devices/dev-4242/telemetry/temp");
    let unmatched_topic = topic("unknown/dev-4242/telemetry/temp");
    let allowed_sub = sub("devices/dev-4242/commands/+");
    let unmatched_sub = sub("devices/+/commands/#");
    assert!(acl.check_publish(&who, &allowed_topic).is_allowed());
    assert_eq!(acl.check_publish(&who, &unmatched_topic).to_string(), "deny by default");
    assert!(acl.check_subscribe(&who, &allowed_sub).is_allowed());
    assert_eq!(acl.check_subscribe(&who, &unmatched_sub).to_string(), "deny by default");

    let mut group = c.benchmark_group("access/check_100k_rules");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    group.bench_function("publish_allowed_by_device_rule", |b| {
        b.iter(|| acl.check_publish(black_box(&who), black_box(&allowed_topic)).permission)
    });
    group.bench_function("publish_denied_by_default", |b| {
        b.iter(|| acl.check_publish(black_box(&who), black_box(&unmatched_topic)).permission)
    });
    group.bench_function("subscribe_allowed_by_device_rule", |b| {
        b.iter(|| acl.check_subscribe(black_box(&who), black_box(&allowed_sub)).permission)
    });
    group.bench_function("subscribe_denied_by_default", |b| {
        b.iter(|| acl.check_subscribe(black_box(&who), black_box(&unmatched_sub)).permission)
    });
    group.finish();
}

// What `criterion_group!`/`criterion_main!` expand to, minus the undocumented `pub fn` they generate.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    checks(&mut c);
    c.final_summary();
}
