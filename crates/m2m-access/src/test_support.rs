//! Proptest strategies over small alphabets, so that random rules, identities and topics collide often.

use std::sync::Arc;

use m2m_topic::{TopicFilter, TopicName};
use proptest::prelude::*;

use crate::{Action, Permission, Rule, RuleFilter};

/// Topic levels: plain, empty, `$`-prefixed (which matters at the first level), and the values the
/// identities below substitute.
const TOPIC_LEVELS: &[&str] = &["a", "b", "", "$s", "xa"];
/// Subscription filter levels: the topic levels and `+`; `#` is appended separately.
const FILTER_LEVELS: &[&str] = &["a", "b", "", "$s", "+"];
/// Rule filter levels: the filter levels and placeholders alone, after text and before text.
const RULE_LEVELS: &[&str] = &["a", "b", "", "$s", "+", "%c", "x%c", "%u", "%c%u", "$%u"];

pub(crate) fn topic() -> impl Strategy<Value = TopicName> {
    prop::collection::vec(prop::sample::select(TOPIC_LEVELS), 1..=4)
        .prop_filter_map("an empty string is no topic", |levels| TopicName::try_from(levels.join("/")).ok())
}

/// Joins 0 to 3 levels and maybe a final `#` (always one if there is no other level).
fn join_with_hash(mut levels: Vec<&str>, hash: bool) -> String {
    if hash || levels.is_empty() {
        levels.push("#");
    }
    levels.join("/")
}

pub(crate) fn filter() -> impl Strategy<Value = TopicFilter> {
    (prop::collection::vec(prop::sample::select(FILTER_LEVELS), 0..=3), any::<bool>())
        .prop_filter_map("an empty string is no filter", |(levels, hash)| {
            TopicFilter::try_from(join_with_hash(levels, hash)).ok()
        })
}

/// A valid rule filter text, placeholders included.
pub(crate) fn rule_filter_text() -> impl Strategy<Value = String> {
    (prop::collection::vec(prop::sample::select(RULE_LEVELS), 0..=3), any::<bool>())
        .prop_map(|(levels, hash)| join_with_hash(levels, hash))
        .prop_filter("a valid rule filter", |text| RuleFilter::new(text).is_ok())
}

pub(crate) fn permission() -> impl Strategy<Value = Permission> {
    prop_oneof![Just(Permission::Allow), Just(Permission::Deny)]
}

pub(crate) fn action() -> impl Strategy<Value = Action> {
    prop_oneof![Just(Action::Publish), Just(Action::Subscribe), Just(Action::Both)]
}

pub(crate) fn rule() -> impl Strategy<Value = Rule> {
    (permission(), action(), rule_filter_text()).prop_map(|(permission, action, filter)| Rule {
        permission,
        action,
        filter: RuleFilter::new(&filter).expect("strategy yields valid filters"),
    })
}

/// A rule that applies to both publish and subscribe.
pub(crate) fn both_rule() -> impl Strategy<Value = Rule> {
    rule().prop_map(|rule| Rule { action: Action::Both, ..rule })
}

/// Client ids and usernames: safe ones that collide with topic levels, and unsafe ones.
pub(crate) fn value() -> impl Strategy<Value = String> {
    prop::sample::select(&["a", "b", "xa", "$s", "", "a/b", "+", "#"][..]).prop_map(str::to_owned)
}

/// The groups a device may list.
pub(crate) const GROUPS: &[&str] = &["g1", "g2", "g3"];

pub(crate) fn groups() -> impl Strategy<Value = Vec<Arc<str>>> {
    prop::sample::subsequence(GROUPS, 0..=GROUPS.len())
        .prop_shuffle()
        .prop_map(|groups| groups.into_iter().map(Arc::from).collect())
}
